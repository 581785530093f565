"""Regression test for the httpcore pool leak under cancellation (encode/httpcore#1093; see
docs/design.md, 'The httpcore pool under cancellation').

Cancelling a request that waits for a free connection inside httpcore's pool can leak the slot
forever; once every slot has leaked, every request fails with PoolTimeout. trio_sqs's own
transport (open_client's default) cannot: a request owns its connection from the pool to the end
of its answer, and any exception, a cancellation included, closes it and frees its slot. On
httpx's transport (passed with ``transport=``), SQSClient never lets requests queue inside the
pool (a semaphore per budget, the budgets adding up to the pool size). The same storm of cancelled
concurrent calls runs on both, and must leak no slot.

This is about pools on real sockets, so it runs on the wall clock against
trio_sqs.testing's in-memory SQS served over HTTP on 127.0.0.1 (a port the OS picks), with small
random delays, not moto: hundreds of rounds take seconds and the timing of each cancel varies.
Capacity is checked without timing: the server holds requests to a "barrier" queue until as many
are in flight at once as the pool has slots, so a single leaked slot makes the check hang (and
fail at its deadline).
"""

from __future__ import annotations

import functools
import gc
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs import Limits, RetryPolicy, SQSClient
from trio_sqs._gate import KeptSlotGate
from trio_sqs._util import raise_unwrapped
from trio_sqs.testing import FakeSQS
from trio_sqs.testing._server import _serve_connection

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

SEED = 20240517
ROUNDS = 300
CALLERS = 8
CHECK_EVERY = 100
# Far longer than any healthy call here, far shorter than httpx's pool timeout (30 s).
HEALTHY_DEADLINE = 5.0
# Measured here: with the semaphore gate removed from SQSClient, this mix leaked the whole pool
# within 300 rounds for every seed tried, while runs with the gate stayed at full capacity.
SHARE_RUN_TO_COMPLETION = 0.2
MAX_CANCEL_AFTER = 0.012
MAX_JITTER = 0.003


class Barrier:
    """Server side: hold requests to the barrier queue until ``parties`` of them are in flight
    at once."""

    def __init__(self) -> None:
        self.parties = 0
        self.arrived = 0
        self.all_in = trio.Event()
        self.held = 0
        self.all_held = trio.Event()

    def reset(self, parties: int, *, hold: int = 0) -> None:
        """Let requests through once ``parties`` are in; with ``hold``, never (``all_held`` is
        set once ``hold`` are in)."""
        self.parties, self.arrived, self.all_in = parties, 0, trio.Event()
        self.held, self.all_held = hold, trio.Event()
        if hold:
            self.parties = hold + 1

    async def wait(self) -> None:
        self.arrived += 1
        if self.held and self.arrived >= self.held:
            self.all_held.set()
        if self.arrived >= self.parties:
            self.all_in.set()
        await self.all_in.wait()


class JitteryFake(FakeSQS):
    """The in-memory SQS, answering each call after a small random delay; calls on the barrier
    queue wait at the barrier instead."""

    def __init__(self, rng: random.Random, barrier: Barrier) -> None:
        super().__init__()
        self.rng = rng
        self.barrier = barrier
        self.connections = 0

    async def call(self, operation: str, params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if str(params.get("QueueUrl", "")).endswith("/barrier"):
            await self.barrier.wait()
        else:
            await trio.sleep(self.rng.uniform(0, MAX_JITTER))
        return await super().call(operation, params, **kwargs)


@asynccontextmanager
async def serve(fake: JitteryFake) -> AsyncIterator[str]:
    """Serve ``fake`` over HTTP/1.1 on 127.0.0.1 (port 0: the OS picks a free one), counting
    the connections it accepts."""

    async def counted(stream: trio.SocketStream) -> None:
        fake.connections += 1
        await _serve_connection(fake, stream)

    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, counted, 0, host="127.0.0.1")
            )
            host, port = listeners[0].socket.getsockname()[:2]
            fake.endpoint = f"http://{host}:{port}"
            try:
                yield fake.endpoint
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)  # the test's own failure, as itself


async def sqs_call(client: SQSClient, index: int, queue: str = "pool") -> None:
    # Mix the two budgets: long polls (here wait_time=0) and everything else.
    url = f"{client.endpoint}/123456789012/{queue}"
    if index % 3 == 0:
        await client.receive_messages(url, wait_time=0)
    elif index % 3 == 1:
        await client.get_queue_attributes(url, ["ApproximateNumberOfMessages"])
    else:
        # Receipt handles SQS never issued: answered with per-entry failures, not an error.
        result = await client.change_message_visibility_batch(url, ["a", "b"], 0)
        assert [f.code for f in result.failed] == ["ReceiptHandleIsInvalid"] * 2


class Outcome:
    def __init__(self) -> None:
        self.completed = 0
        self.cancelled = 0
        self.stuck = 0  # calls that should have completed but did not, within HEALTHY_DEADLINE


async def storm(
    call: Callable[[int], Awaitable[object]],
    rng: random.Random,
    rounds: int,
    callers: int,
    check: Callable[[], Awaitable[None]] | None = None,
) -> Outcome:
    """Run ``callers`` concurrent calls per round; most are cancelled after a random delay.

    Stops early if a call that was left to complete got stuck. ``check`` runs every CHECK_EVERY
    rounds.
    """
    outcome = Outcome()

    async def cancelled_at_random(index: int, after: float) -> None:
        with trio.move_on_after(after) as scope:
            await call(index)
            outcome.completed += 1
        if scope.cancelled_caught:
            outcome.cancelled += 1

    async def to_completion(index: int) -> None:
        with trio.move_on_after(HEALTHY_DEADLINE):
            await call(index)
            outcome.completed += 1
            return
        outcome.stuck += 1

    for round_ in range(1, rounds + 1):
        async with trio.open_nursery() as nursery:
            for index in range(callers):
                # Cancels land anywhere: waiting for a slot, connecting, sending, awaiting the
                # answer. The calls left to complete keep slots busy so that others must wait.
                if rng.random() < SHARE_RUN_TO_COMPLETION:
                    nursery.start_soon(to_completion, index)
                else:
                    nursery.start_soon(cancelled_at_random, index, rng.uniform(0, MAX_CANCEL_AFTER))
        if outcome.stuck:
            break
        if check is not None and round_ % CHECK_EVERY == 0:
            await check()
    return outcome


async def assert_full_capacity(client: SQSClient, barrier: Barrier) -> None:
    """Every connection slot is usable at once, and a burst wider than the pool completes."""
    limits = client.limits
    barrier.reset(limits.max_connections)
    try:
        with trio.fail_after(HEALTHY_DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(limits.max_receive_connections):
                    nursery.start_soon(sqs_call, client, 0, "barrier")
                for index in range(limits.max_other_connections):
                    nursery.start_soon(sqs_call, client, 1 + index % 2, "barrier")
    except trio.TooSlowError:
        pytest.fail(
            f"only {barrier.arrived} of {limits.max_connections} connections could be used at "
            "once: a pool slot leaked"
        )
    with trio.fail_after(HEALTHY_DEADLINE):
        async with trio.open_nursery() as nursery:
            for index in range(4 * limits.max_connections):
                nursery.start_soon(sqs_call, client, index)


@asynccontextmanager
async def pool_client(fake: JitteryFake, *, httpcore: bool) -> AsyncIterator[SQSClient]:
    """A client of a pool of 3 (1 long poll, 2 others) on ``fake`` served over HTTP, its queues
    ("pool" and "barrier") made: on trio_sqs's own transport, or with ``httpcore`` on httpx's
    (httpcore's pool, as large as the budgets) as a user passes it. One attempt per call."""
    limits = Limits(max_receive_connections=1, max_other_connections=2)
    transport = (
        httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_connections,
            )
        )
        if httpcore
        else None
    )
    async with (
        serve(fake) as endpoint,
        trio_sqs.open_client(
            region="us-east-1",
            endpoint_url=endpoint,
            limits=limits,
            retry=RetryPolicy(max_attempts=1),
            transport=transport,
        ) as client,
    ):
        for name in ("pool", "barrier"):
            await fake.call("CreateQueue", {"QueueName": name})
        yield client


async def run_storm(*, gated: bool = True, httpcore: bool = False, rounds: int = ROUNDS) -> None:
    rng = random.Random(SEED)
    barrier = Barrier()
    fake = JitteryFake(rng, barrier)
    async with pool_client(fake, httpcore=httpcore) as client:
        limits = client.limits
        if not gated:
            # Only for the demonstration below: budgets wider than the pool, so that requests
            # queue inside httpcore's pool as they would without trio_sqs's gate.
            client._receive_gate = trio.Semaphore(100)
            client._other_gate = KeptSlotGate(100)
        await assert_full_capacity(client, barrier)
        outcome = await storm(
            lambda i: sqs_call(client, i),
            rng,
            rounds,
            CALLERS,
            check=lambda: assert_full_capacity(client, barrier),
        )
        assert outcome.stuck == 0, f"{outcome.stuck} calls got stuck: a pool slot leaked"
        # The storm must exercise both outcomes heavily, or it proves nothing.
        assert outcome.completed > rounds
        assert outcome.cancelled > rounds
        # Cancelled calls dropped their connections: the server saw many more than the pool.
        assert fake.connections > 10 * limits.max_connections
        await assert_full_capacity(client, barrier)


@pytest.mark.parametrize("transport", ["trio_sqs", "httpx"])
@pytest.mark.deadline(20)
async def test_cancelled_while_every_slot_is_taken_leaks_no_slot(transport: str) -> None:
    """The two points of the httpcore#1093 leak, one after the other and without timing: every
    pool slot is taken by a call the server holds; one more call waits for a slot (in front of
    the pool: the budgets' gate) and is cancelled there; then every held call is cancelled while
    it waits for its answer. Afterwards every slot is usable at once (the barrier).

    On httpx's transport the waiting call must wait at the gate, never inside httpcore's pool:
    the leak itself needs a cancel to land in the instant the pool hands a freed connection to
    a waiting request, which only the seeded storms below reach (opt-in, ``-m slow``)."""
    barrier = Barrier()
    fake = JitteryFake(random.Random(SEED), barrier)
    async with pool_client(fake, httpcore=transport == "httpx") as client:
        limits = client.limits
        barrier.reset(0, hold=limits.max_connections)
        with trio.fail_after(HEALTHY_DEADLINE):
            async with trio.open_nursery() as nursery:
                for index in range(limits.max_connections):
                    # index 0 takes the long-poll budget, 1 and 2 the other one.
                    nursery.start_soon(sqs_call, client, index, "barrier")
                await barrier.all_held.wait()
                assert client._other_gate.value == 0 and client._receive_gate.in_use == 1
                with trio.CancelScope() as waiting:
                    waiting.deadline = trio.current_time() + 0.05
                    await sqs_call(client, 1)  # waits for a slot until cancelled
                assert waiting.cancelled_caught
                nursery.cancel_scope.cancel()
        assert barrier.arrived == limits.max_connections
        await assert_full_capacity(client, barrier)


@pytest.mark.slow
@pytest.mark.deadline(40)
async def test_cancellation_storm_leaks_no_connection() -> None:
    """On trio_sqs's own transport (open_client's default): a cancelled request closes its
    connection and frees its slot, whatever it was doing. Seeded random cancels on the wall
    clock, so opt-in (``-m slow``); the default run has one test per point, above and in
    tests/test_transport.py."""
    await run_storm()


@pytest.mark.slow
@pytest.mark.deadline(40)
async def test_cancellation_storm_on_httpx_transport_leaks_no_connection() -> None:
    """On httpx's transport passed by the user (httpcore's pool): the budgets' gate keeps
    requests from queueing inside the pool, where a cancellation leaks a slot. Opt-in, like the
    storm above."""
    await run_storm(httpcore=True)


@pytest.mark.slow
@pytest.mark.deadline(120)
# Requests cancelled inside httpx's own body stream leave async generators behind (see
# _RequestBody in _client.py); without the gate that path is taken here, and it is not under test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_storm_fails_without_the_semaphore_gate() -> None:
    """The same storm on httpx's transport, with SQSClient's gate opened wide, leaks pool slots
    (encode/httpcore#1093).

    This shows the regression test above can fail. Opt-in (``pytest -m slow``): it reaches into
    private attributes, and it documents an upstream bug: once httpcore fixes it, this test
    starts failing, which is the signal to re-evaluate the gate.
    """
    with pytest.raises(pytest.fail.Exception, match="pool slot leaked"):
        await run_storm(gated=False, httpcore=True)
    gc.collect()  # collect the abandoned generators while the warnings are still ignored
