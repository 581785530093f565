"""Regression tests for the findings of the consumer review (fixed in "Consumer hardening from
review"), one test per finding, against a real moto server.

Each test names the finding it guards. The consumer's own shutdown contract is in
tests/test_shutdown.py and its features in tests/test_consumer.py; these tests pin the corner
cases the review found: errors escaping handlers, the heartbeat schedule, idle stops next to a
release, the hard bound, abandoned credential refreshes, closed clients, short polls and malformed
messages.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from botocore.credentials import ReadOnlyCredentials

import trio_sqs
from trio_sqs import ClientClosedError, Message, MessageCorruptError, Retry
from trio_sqs._credentials import CredentialCache
from trio_sqs._message import CorruptMessage, message_from_wire

from .recording_proxy import RecordingProxy

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

REGION = "us-east-1"
# The documented slack on top of grace_period + flush_timeout (open_consumer's docstring).
SHUTDOWN_MARGIN = 0.5


class Boom(BaseException):
    """Not an Exception: like SystemExit or a KeyboardInterrupt delivered into handler code."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, with exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@dataclass
class ServerSideProxy(RecordingProxy):
    """A recording proxy that also counts requests the server is still working on, including
    those whose client hung up: like SQS, the server goes on serving an aborted long poll (and may
    hand it messages nobody will ever see)."""

    upstream_open: int = 0

    async def _forward(self, request: bytes) -> bytes:
        self.upstream_open += 1
        try:
            return await super()._forward(request)
        finally:
            self.upstream_open -= 1
            self._notify()


@pytest.fixture
async def server_side_proxy(moto_endpoint: str, nursery: trio.Nursery) -> ServerSideProxy:
    host, _, port = moto_endpoint.removeprefix("http://").partition(":")
    recorder = ServerSideProxy(host, int(port))
    await nursery.start(recorder.serve)
    return recorder


async def visible(sqs: trio_sqs.SQSClient, url: str) -> list[Message]:
    """The messages visible right now (taken for 30 s by the test)."""
    return list(await sqs.receive_messages(url, wait_time=0, visibility_timeout=30))


# -- r2: a BaseException in a handler --------------------------------------------------------------


async def test_base_exception_in_handler_stops_gracefully_and_propagates(
    sqs: trio_sqs.SQSClient, queue_url: str
) -> None:
    grace, flush = 2.0, 1.0
    for body in ("slow", "boom"):
        await sqs.send_message(queue_url, body)
    slow_running = trio.Event()
    slow_finished = False
    boom_at = 0.0

    async def handler(message: Message) -> None:
        nonlocal slow_finished, boom_at
        if message.body == "slow":
            slow_running.set()
            await trio.sleep(1.0)  # well inside the grace period
            slow_finished = True
            return
        await slow_running.wait()
        boom_at = trio.current_time()
        raise Boom

    with pytest.raises(BaseException) as caught:
        async with trio_sqs.open_consumer(
            queue_url,
            handler,
            client=sqs,
            concurrency=2,
            pollers=1,
            wait_time=1,
            visibility_timeout=30,
            grace_period=grace,
            flush_timeout=flush,
        ) as consumer:
            await trio.sleep_forever()
    took = trio.current_time() - boom_at

    # Boom itself, or a group whose only error is Boom.
    errors = [e for e in leaves(caught.value) if not isinstance(e, trio.Cancelled)]
    assert len(errors) == 1 and isinstance(errors[0], Boom), repr(caught.value)
    assert took <= grace + flush + 1.0, f"shutdown took {took:.2f} s"
    stats = consumer.statistics()
    assert stats.state == "stopped"
    # The slow handler got its grace, and the flush ran: its delete was sent.
    assert slow_finished
    assert stats.completed == stats.deleted == 1
    assert stats.in_flight == 0 and stats.unflushed == 0
    # The message whose handler raised Boom was released, not left to wait out its 30 s lease.
    assert [m.body for m in await visible(sqs, queue_url)] == ["boom"]


# -- r1: an exception group escaping a handler while it is being cancelled ---------------------------


async def test_handler_group_raised_while_timed_out_is_a_failure_not_a_crash(
    sqs: trio_sqs.SQSClient, queue_url: str
) -> None:
    failing = trio.Event()
    good_done = trio.Event()
    bad_back = trio.Event()
    attempts: list[int] = []

    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            failing.set()
            raise ValueError("cleanup failed while cancelled")

    async def handler(message: Message) -> None:
        if message.body == "good":
            good_done.set()
            return
        attempts.append(message.receive_count)
        if message.receive_count > 1:
            bad_back.set()
            return
        # The handler timeout cancels this nursery, and its child raises while being cancelled:
        # the handler raises a group of [Cancelled, ValueError].
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.sleep_forever()

    await sqs.send_message(queue_url, "bad")
    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=sqs,
        handler_timeout=0.5,
        failure_backoff=0,  # a failed message comes back at once
        concurrency=2,
        pollers=1,
        wait_time=1,
        grace_period=1.0,
        flush_timeout=2.0,
    ) as consumer:
        with trio.fail_after(3):
            await failing.wait()
        # The consumer goes on: a message sent after the failure is handled...
        await sqs.send_message(queue_url, "good")
        with trio.fail_after(3):
            await good_done.wait()
            # ...and the failed one comes back.
            await bad_back.wait()
        running = consumer.statistics()

    assert running.state == "running"
    assert attempts == [1, 2]
    assert running.timed_out + running.failed == 1
    stats = consumer.statistics()
    assert stats.completed == stats.deleted == 2
    assert await visible(sqs, queue_url) == []


# -- r3: the heartbeat schedule --------------------------------------------------------------------


@pytest.mark.deadline(10)
async def test_heartbeats_keep_a_short_lease_alive_at_any_accepted_interval(
    sqs: trio_sqs.SQSClient, queue_url: str
) -> None:
    await sqs.send_message(queue_url, "long job")
    calls: list[float] = []
    done = trio.Event()

    async def handler(message: Message) -> None:
        calls.append(trio.current_time())
        if len(calls) > 1:
            done.set()  # delivered again while the first call runs: the lease lapsed
            return
        await trio.sleep(5.0)
        done.set()

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=sqs,
        visibility_timeout=3,
        heartbeat_interval=2.5,  # accepted: shorter than the lease
        # A second handler slot and a waiting poller: the consumer itself takes the message
        # again as soon as its lease lapses.
        concurrency=2,
        pollers=1,
        wait_time=1,
        grace_period=0,
        flush_timeout=1.0,
    ) as consumer:
        await done.wait()

    assert len(calls) == 1, f"handler called at {[round(t - calls[0], 2) for t in calls]}"
    stats = consumer.statistics()
    assert stats.visibility_extensions >= 2
    assert stats.received == stats.completed == stats.deleted == 1


# -- r9: idle stop right after a release -----------------------------------------------------------


async def test_idle_stop_right_after_a_release_lets_the_poll_land(
    sqs: trio_sqs.SQSClient, queue_url: str, server_side_proxy: ServerSideProxy
) -> None:
    proxy = server_side_proxy
    await sqs.send_message(queue_url, "again")
    released_at: list[float] = []

    async def handler(message: Message) -> None:
        released_at.append(trio.current_time())
        raise Retry(0)

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        endpoint_url=proxy.url,
        region=REGION,
        poll_on_stop="land",
        pollers=1,
        concurrency=1,
        max_buffered=0,
        wait_time=5,
        visibility_timeout=30,
        grace_period=1.0,
        # moto looks at a waiting poll's queue once a second: the landing window (half the flush
        # timeout) must be longer than that, as it is against SQS.
        flush_timeout=3.0,
    ) as consumer:
        await proxy.wait_for(lambda p: bool(released_at) and bool(p.receives_after(released_at[0])))
        # The poller is parked in its long poll and knows it is on the wire; the release is still
        # queued (the batcher waits ack_interval), and no handler runs: the review's "idle" stop.
        await trio.testing.wait_all_tasks_blocked()
        assert consumer.statistics().in_flight == 0
        consumer.stop()

    # Wait until the server is done with every poll, including any the consumer aborted: an
    # aborted poll would have taken the released message with it.
    await proxy.wait_for(lambda p: p.upstream_open == 0)
    assert [m.body for m in await visible(sqs, queue_url)] == ["again"]
    stats = consumer.statistics()
    assert stats.aborted_polls == 0
    # The poll landed with the released message and the consumer gave it back again.
    assert stats.retried == 1 and stats.received == stats.released == 2
    assert stats.unflushed == 0


# -- r5: the hard bound ----------------------------------------------------------------------------

HARD_BOUND_GRACE = 0.3
HARD_BOUND_FLUSH = 0.3
# The handler's own shielded cleanup ends this long after the hard bound.
CLEANUP_OVERRUN = 0.5


async def _stop_under_a_self_shielding_handler(
    sqs: trio_sqs.SQSClient, queue_url: str
) -> tuple[trio_sqs.ConsumerStatistics, float, float]:
    """Stop a consumer whose handler shields its cleanup past the hard bound.

    Returns the final statistics, and the times (after stop) when the handler's cleanup ended
    and when the consumer had stopped.
    """
    await sqs.send_message(queue_url, "stubborn")
    running = trio.Event()
    bound = HARD_BOUND_GRACE + HARD_BOUND_FLUSH + SHUTDOWN_MARGIN
    t0 = 0.0
    cleanup_ended = 0.0

    async def handler(message: Message) -> None:
        nonlocal cleanup_ended
        running.set()
        try:
            await trio.sleep_forever()
        finally:
            # A "graceful" cleanup that ignores the grace period (bounded, but past the bound).
            with trio.move_on_at(t0 + bound + CLEANUP_OVERRUN, shield=True):
                await trio.sleep_forever()
            cleanup_ended = trio.current_time() - t0

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=sqs,
        pollers=1,
        wait_time=1,
        visibility_timeout=30,
        grace_period=HARD_BOUND_GRACE,
        flush_timeout=HARD_BOUND_FLUSH,
    ) as consumer:
        await running.wait()
        t0 = trio.current_time()
        consumer.stop()
    return consumer.statistics(), cleanup_ended, trio.current_time() - t0


async def test_hard_bound_counts_what_it_leaves_behind(
    sqs: trio_sqs.SQSClient, queue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sqs.consumer")
    stats, cleanup_ended, took = await _stop_under_a_self_shielding_handler(sqs, queue_url)

    assert stats.state == "stopped"
    assert stats.cancelled_at_grace == 1
    # The release queued when the handler finally returned was never sent: counted and logged,
    # not silently lost.
    assert stats.released == 0
    assert stats.unflushed >= 1
    assert [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "trio_sqs.consumer"
    ]
    # Nothing of the consumer's own runs past the bound: it is done as soon as the handler is.
    assert took - cleanup_ended < 0.2, f"stopped {took - cleanup_ended:.2f} s after the handler"


# -- r10: credentials ------------------------------------------------------------------------------


class RotatingSource:
    """A credential source shaped like botocore's RefreshableCredentials.

    ``get_frozen_credentials`` refreshes (in the worker thread) when the keys are about to expire,
    blocking until ``proceed`` is set, and hands out the next generation of keys; like botocore,
    it counts itself refreshed whether or not anybody is still waiting for the answer.
    """

    def __init__(self) -> None:
        self.generation = 1
        self.expiring = False
        self.proceed = threading.Event()
        self.proceed.set()
        self.entered: trio.Event | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()

    @property
    def access_key(self) -> str:
        return f"AKIDGEN{self.generation}"

    def refresh_needed(self, refresh_in: float | None = None) -> bool:
        return self.expiring

    def rotate(self) -> None:
        """A refresh behind the cache's back (another user of the same source)."""
        with self._lock:
            self.generation += 1
            self.expiring = False

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        if self.entered is not None:
            self._token.run_sync_soon(self.entered.set)
        with self._lock:
            if self.expiring:
                self.proceed.wait(timeout=5)  # a slow STS / IMDS round trip
                self.generation += 1
                self.expiring = False
            return ReadOnlyCredentials(self.access_key, "secret", f"token{self.generation}")


@pytest.fixture
async def one_worker_thread() -> None:
    """Run one worker thread at a time, so that ``to_thread.run_sync`` also waits for a thread
    whose caller was cancelled (it holds its token until it has finished)."""
    trio.to_thread.current_default_thread_limiter().total_tokens = 1


async def after_abandoned_threads() -> None:
    await trio.to_thread.run_sync(lambda: None)


@pytest.mark.usefixtures("one_worker_thread")
async def test_abandoned_credential_refresh_still_updates_the_snapshot() -> None:
    source = RotatingSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"

    source.expiring = True  # the mandatory window: the next get() refreshes
    source.proceed.clear()
    source.entered = trio.Event()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.get)
            await source.entered.wait()
            scope.cancel()  # e.g. a request under the caller's timeout
    assert scope.cancelled_caught
    source.proceed.set()
    await after_abandoned_threads()

    assert source.generation == 2 and not source.refresh_needed()
    assert (await cache.get()).access_key == "AKIDGEN2"


@pytest.mark.usefixtures("one_worker_thread")
async def test_refresher_picks_up_a_source_refreshed_behind_its_back() -> None:
    source = RotatingSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"

    source.rotate()
    source.entered = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(cache.run_refresher, check_interval=0.01))
        with trio.move_on_after(1.0):
            await source.entered.wait()
        nursery.cancel_scope.cancel()
    await after_abandoned_threads()

    assert source.entered.is_set(), "the refresher never read the source"
    assert (await cache.get()).access_key == "AKIDGEN2"


# -- r7: a closed client ---------------------------------------------------------------------------


async def test_closed_client_stops_the_consumer_with_client_closed_error(
    moto_endpoint: str, queue_name: str
) -> None:
    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    async with trio_sqs.open_client(region=REGION, endpoint_url=moto_endpoint) as client:
        url = await client.create_queue(queue_name)
        with pytest.raises(ClientClosedError):
            async with trio_sqs.open_consumer(
                url,
                handler,
                client=client,
                pollers=1,
                wait_time=1,
                error_backoff=0.2,
                max_error_backoff=0.4,
                grace_period=1.0,
                flush_timeout=1.0,
            ) as consumer:
                closed_at = trio.current_time()
                client._closed = True  # what leaving the client's `async with` does
                with trio.move_on_after(3.0):
                    await consumer.wait_stopped()
        stopped_after = trio.current_time() - closed_at

    stats = consumer.statistics()
    # It stops after the poll in flight (wait_time 1 s) comes back, instead of retrying forever.
    assert stats.state == "stopped", f"still {stats.state} with {stats.poll_errors} poll errors"
    assert stopped_after < 2.0
    assert stats.poll_errors <= 2


# -- r8: short polls on an idle queue --------------------------------------------------------------


async def test_short_polls_on_an_idle_queue_pause(
    sqs: trio_sqs.SQSClient, queue_url: str, proxy: RecordingProxy
) -> None:
    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    pollers = 2
    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        endpoint_url=proxy.url,
        region=REGION,
        wait_time=0,
        pollers=pollers,
        grace_period=1.0,
        flush_timeout=1.0,
    ) as consumer:
        await trio.sleep(1.5)  # the measurement window
        stats = consumer.statistics()

    receives = proxy.operations().count("ReceiveMessage")
    assert pollers <= receives <= 3 * pollers, f"{receives} ReceiveMessage in 1.5 s"
    assert stats.empty_polls >= pollers


# -- malformed ReceiveMessage entries ----------------------------------------------------------------


def _wire_entry(**overrides: Any) -> dict[str, Any]:
    body = "payload"
    raw: dict[str, Any] = {
        "MessageId": "0d8a2c3c-0000-4000-8000-000000000009",
        "ReceiptHandle": "AQEB-malformed",
        "Body": body,
        "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "MD5OfMessageAttributes": "0" * 32,
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize(
    "attributes",
    [
        {"empty": {"DataType": "String"}},  # neither StringValue nor BinaryValue
        {"both": {"DataType": "String", "StringValue": "a", "BinaryValue": b"a"}},
        {"untyped": {"StringValue": "a"}},
        {"not-a-mapping": "a"},
    ],
    ids=["no-value", "two-values", "no-data-type", "not-a-mapping"],
)
def test_malformed_message_is_corrupt_not_an_exception(attributes: dict[str, Any]) -> None:
    raw = _wire_entry(MessageAttributes=attributes)
    result = message_from_wire(raw, "https://sqs.us-east-1.amazonaws.com/123456789012/q")
    assert isinstance(result, CorruptMessage)
    assert result.message_id == raw["MessageId"]
    assert result.receipt_handle == "AQEB-malformed"
    assert isinstance(result.error, MessageCorruptError)
    assert result.error.receipt_handle == "AQEB-malformed"
    assert raw["MessageId"] in str(result.error)
