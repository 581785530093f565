"""A shared client does not starve its consumers; the client draws its retry jitter from its own
random generator. On trio_sqs.testing's in-memory SQS under Trio's virtual clock.

The issue: 10 consumers on one client opened with the default ``Limits()`` got 4 long polls at
once, so a message on a starved queue waited for a poll (3.6 s at ``wait_time=2``, about 40 s at
the default 20). Now ``Limits.max_receive_connections`` defaults to ``None``: the long-poll budget
is the sum of the long polls of the consumers registered on the client (``reserve_polls``), at
least 4, and a fixed budget smaller than that logs a warning naming the size it needs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_sqs
import trio_sqs._open
from trio_sqs import ConfigurationError, ConsumerOptions, Limits, Message, RetryPolicy, SQSClient
from trio_sqs._gate import KeptSlotGate, ResizableGate
from trio_sqs.testing import FakeSQS, open_fake_client

CONSUMERS = 10
CLIENT_LOG = "trio_sqs.client"


# -- the resizable gate ----------------------------------------------------------------------------


async def test_gate_is_a_fifo_semaphore(autojump_clock: trio.testing.MockClock) -> None:
    gate = ResizableGate(1)
    order: list[int] = []

    async def take(index: int) -> None:
        async with gate:
            order.append(index)
            await trio.sleep(1)

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(take, index)
            await trio.testing.wait_all_tasks_blocked()
        assert (gate.in_use, gate.value, gate.waiting) == (1, 0, 4)
    assert order == [0, 1, 2, 3, 4]  # in the order they came
    assert trio.current_time() == t0 + 5  # one at a time
    assert (gate.size, gate.in_use, gate.value, gate.waiting) == (1, 0, 1, 0)
    # Two slots: two at a time.
    gate.resize(2)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(take, index)
    assert trio.current_time() == t0 + 3


async def test_a_waiter_cancelled_while_waiting_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = ResizableGate(1)
    got: list[str] = []

    async def waiter(name: str, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await gate.acquire()
            got.append(name)
            return
        got.append(f"{name} cancelled")

    await gate.acquire()  # held by the test
    async with trio.open_nursery() as nursery:
        first = await nursery.start(waiter, "first")
        await nursery.start(waiter, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert (gate.in_use, gate.waiting) == (1, 2)
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # Gone from the queue, holding nothing.
        assert got == ["first cancelled"]
        assert (gate.in_use, gate.waiting, gate.value) == (1, 1, 0)
        gate.release()  # wakes the next waiter, the second one: the slot is handed to it
        assert (gate.in_use, gate.waiting) == (1, 0)
    assert got == ["first cancelled", "second"]
    gate.release()
    assert (gate.in_use, gate.value) == (0, 1)


# -- the other budget's gate, a slot kept for visibility changes ------------------------------------


async def test_kept_slot_gate_keeps_one_slot_for_kept_callers() -> None:
    gate = KeptSlotGate(3)
    lanes = [gate.acquire_nowait(), gate.acquire_nowait()]
    assert lanes == [KeptSlotGate.OTHER] * 2
    with pytest.raises(trio.WouldBlock):
        gate.acquire_nowait()  # one slot free, but kept
    assert gate.value == 1
    assert gate.acquire_nowait(kept=True) == KeptSlotGate.KEPT
    with pytest.raises(trio.WouldBlock):
        gate.acquire_nowait(kept=True)
    for lane in (*lanes, KeptSlotGate.KEPT):
        gate.release(lane)
    assert gate.value == 3
    # A kept caller takes the kept slot first, leaving the others to the others...
    assert gate.acquire_nowait(kept=True) == KeptSlotGate.KEPT
    assert [gate.acquire_nowait(), gate.acquire_nowait()] == [KeptSlotGate.OTHER] * 2
    gate.release(KeptSlotGate.OTHER)
    # ...and one of the others when the kept one is taken.
    assert gate.acquire_nowait(kept=True) == KeptSlotGate.OTHER
    with pytest.raises(RuntimeError):
        KeptSlotGate(1).release(KeptSlotGate.OTHER)
    with pytest.raises(RuntimeError):
        KeptSlotGate(2).release(KeptSlotGate.KEPT)
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            KeptSlotGate(size)  # type: ignore[arg-type]


async def test_kept_slot_gate_of_one_slot_keeps_none() -> None:
    gate = KeptSlotGate(1)
    assert gate.acquire_nowait(kept=True) == KeptSlotGate.OTHER
    with pytest.raises(trio.WouldBlock):
        gate.acquire_nowait(kept=True)
    gate.release(KeptSlotGate.OTHER)
    assert gate.acquire_nowait() == KeptSlotGate.OTHER


async def line_up(
    nursery: trio.Nursery,
    take: Callable[[str, bool], Awaitable[None]],
    *callers: tuple[str, bool],
) -> None:
    """Start ``take(name, kept)`` for each caller, each one blocked before the next starts: they
    wait at the gate in this order."""
    for name, kept in callers:
        nursery.start_soon(take, name, kept)
        await trio.testing.wait_all_tasks_blocked()


async def test_kept_slot_gate_hands_freed_slots_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both kinds wait in one line: a freed slot of the others goes to the first in line,
    whatever its kind (a kept caller then holds a slot of the others); a freed kept slot goes
    to the first kept caller in line. Each waiter wakes holding its slot."""
    gate = KeptSlotGate(2)
    held = [gate.acquire_nowait(), gate.acquire_nowait(kept=True)]
    assert held == [KeptSlotGate.OTHER, KeptSlotGate.KEPT]
    got: list[tuple[str, bool]] = []

    async def take(name: str, kept: bool) -> None:
        got.append((name, await gate.acquire(kept=kept)))

    async with trio.open_nursery() as nursery:
        await line_up(nursery, take, ("ordinary", False), ("kept-1", True), ("kept-2", True))
        assert gate.waiting == 3
        gate.release(KeptSlotGate.OTHER)  # to the first in line, the ordinary caller
        await trio.testing.wait_all_tasks_blocked()
        assert got == [("ordinary", KeptSlotGate.OTHER)]
        gate.release(KeptSlotGate.OTHER)  # to the next in line, the first kept caller
        await trio.testing.wait_all_tasks_blocked()
        gate.release(KeptSlotGate.KEPT)  # the kept slot: to the next kept caller
    assert got == [
        ("ordinary", KeptSlotGate.OTHER),
        ("kept-1", KeptSlotGate.OTHER),
        ("kept-2", KeptSlotGate.KEPT),
    ]
    assert gate.value == 0 and gate.waiting == 0
    gate.release(KeptSlotGate.OTHER)
    gate.release(KeptSlotGate.KEPT)
    assert gate.value == 2


@pytest.mark.parametrize("size", [1, 2])
async def test_kept_slot_gate_serves_a_kept_caller_before_later_ordinary_ones(
    autojump_clock: trio.testing.MockClock, size: int
) -> None:
    """A kept caller waiting for a slot of the others is not passed by ordinary callers that
    came after it. With one slot (no kept slot) an endless stream of ordinary callers starved
    a heartbeat: freed slots went to ordinary callers first."""
    gate = KeptSlotGate(size)
    held = [gate.acquire_nowait(kept=True) for _ in range(size)]
    # (a kept caller takes the kept slot first, when there is one, then the other)
    assert held[-1] == KeptSlotGate.OTHER and held[:-1] == [KeptSlotGate.KEPT] * (size - 1)
    got: list[str] = []

    async def take(name: str, kept: bool) -> None:
        lane = await gate.acquire(kept=kept)
        got.append(name)
        gate.release(lane)

    async with trio.open_nursery() as nursery:
        await line_up(nursery, take, ("ordinary-1", False), ("kept", True), ("ordinary-2", False))
        # Freeing the slot of the others only: the line moves in arrival order.
        gate.release(KeptSlotGate.OTHER)
    assert got == ["ordinary-1", "kept", "ordinary-2"]
    if size == 2:
        gate.release(KeptSlotGate.KEPT)
    assert (gate.value, gate.waiting) == (size, 0)


@pytest.mark.parametrize("kept", [False, True])
async def test_kept_slot_gate_waiter_cancelled_takes_nothing(
    autojump_clock: trio.testing.MockClock, kept: bool
) -> None:
    gate = KeptSlotGate(2)
    lanes = [gate.acquire_nowait(), gate.acquire_nowait(kept=True)]
    with trio.move_on_after(5) as scope:
        await gate.acquire(kept=kept)
    assert scope.cancelled_caught
    assert (gate.value, gate.waiting) == (0, 0)
    for lane in lanes:
        gate.release(lane)
    assert gate.value == 2
    with trio.CancelScope() as scope:
        scope.cancel()
        await gate.acquire(kept=kept)  # free, but cancelled: takes nothing
    assert gate.value == 2


async def test_a_cancelled_acquire_on_a_free_gate_takes_nothing() -> None:
    gate = ResizableGate(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await gate.acquire()
    assert scope.cancelled_caught
    assert (gate.in_use, gate.value) == (0, 1)


async def test_growing_wakes_waiters_and_shrinking_takes_nothing_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = ResizableGate(1)
    holding: set[int] = set()
    releases = [trio.Event() for _ in range(4)]

    async def hold(index: int) -> None:
        async with gate:
            holding.add(index)
            await releases[index].wait()
            holding.remove(index)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(hold, index)
            await trio.testing.wait_all_tasks_blocked()
        assert (holding, gate.waiting) == ({0}, 3)
        gate.resize(3)  # two more slots: the next two waiters in line get them at once
        await trio.testing.wait_all_tasks_blocked()
        assert (holding, gate.in_use, gate.waiting, gate.value) == ({0, 1, 2}, 3, 1, 0)
        gate.resize(1)  # below the slots in use: nobody loses theirs, nothing goes negative
        assert (gate.size, gate.in_use, gate.value, gate.waiting) == (1, 3, 0, 1)
        for index, in_use in ((0, 2), (1, 1)):
            releases[index].set()  # still at or over the new size: the waiter stays waiting
            await trio.testing.wait_all_tasks_blocked()
            assert (holding, gate.in_use, gate.waiting, gate.value) == (
                {2} if index == 1 else {1, 2},
                in_use,
                1,
                0,
            )
        releases[2].set()  # under the size now: the slot goes to the waiter
        await trio.testing.wait_all_tasks_blocked()
        assert (holding, gate.in_use, gate.waiting, gate.value) == ({3}, 1, 0, 0)
        releases[3].set()
    assert (gate.in_use, gate.value, gate.waiting) == (0, 1, 0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        gate.release()
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="an integer >= 0"):
            gate.resize(bad)  # type: ignore[arg-type]
    gate.resize(0)  # a gate of no slots: every acquire waits
    with pytest.raises(trio.WouldBlock):
        gate.acquire_nowait()


# -- sizing the long-poll budget from the consumers ------------------------------------------------


class IdleConsumer:
    """A consumer's queue and the virtual times at which its handler ran."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._send, self.handled = trio.open_memory_channel[float](100)

    async def handler(self, message: Message) -> None:
        self._send.send_nowait(trio.current_time())


@asynccontextmanager
async def idle_consumers(
    client: SQSClient, name: str, wait_time: int, **options: Any
) -> AsyncIterator[list[IdleConsumer]]:
    """Ten consumers on ``client``, each on an empty queue of its own, started in order."""
    consumers: list[IdleConsumer] = []
    async with AsyncExitStack() as stack:
        for index in range(CONSUMERS):
            consumer = IdleConsumer(await client.create_queue(f"{name}-{wait_time}-{index}"))
            await stack.enter_async_context(
                trio_sqs.open_consumer(
                    consumer.url, consumer.handler, client=client, wait_time=wait_time, **options
                )
            )
            consumers.append(consumer)
        yield consumers


def default_pollers() -> int:
    return ConsumerOptions().effective_pollers(False)


@pytest.mark.parametrize("wait_time", [2, 20])
async def test_ten_idle_consumers_on_a_default_client_each_get_their_long_polls(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    caplog: pytest.LogCaptureFixture,
    wait_time: int,
) -> None:
    """The issue's scenario: a message sent to the last of ten idle queues sharing one client
    is handled at the very moment it is sent, right after they start and after their polls
    have come back empty a few times."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)
    async with open_fake_client(fake_sqs) as client:
        assert client.limits.max_receive_connections is None
        assert client.receive_budget == 4
        async with idle_consumers(client, "shared", wait_time) as consumers:
            assert client.receive_budget == CONSUMERS * default_pollers()
            t0 = trio.current_time()
            last = consumers[-1]
            for send_at in (t0 + 0.5, t0 + 2.5 * wait_time):
                await trio.sleep_until(send_at)
                # No queue is starved: each one has at least one long poll at the server.
                assert all(fake_sqs.queue(c.url).waiting_polls >= 1 for c in consumers)
                assert client._receive_gate.waiting == 0
                await client.send_message(last.url, f"sent at {send_at}")
                assert await last.handled.receive() == send_at  # at once, not a wait_time later
        assert client.receive_budget == 4  # every consumer left: back to the floor
    assert not [r for r in caplog.records if r.name == CLIENT_LOG]


@pytest.mark.parametrize("wait_time", [2, 20])
async def test_a_fixed_budget_of_4_starves_the_tenth_consumer_and_says_so(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    caplog: pytest.LogCaptureFixture,
    wait_time: int,
) -> None:
    """The same scenario with the old budget (4, fixed): the last queue's polls wait behind the
    others, so its message waits at least a whole wait_time; the client warns, once for more
    polls than the budget and once for more consumers than the budget."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)
    pollers = 2
    async with open_fake_client(fake_sqs, limits=Limits(max_receive_connections=4)) as client:
        async with idle_consumers(client, "fixed", wait_time, pollers=pollers) as consumers:
            assert client.receive_budget == 4
            t0 = trio.current_time()
            last = consumers[-1]
            await trio.sleep_until(t0 + 0.5)
            assert fake_sqs.queue(last.url).waiting_polls == 0  # its polls wait in the client
            await client.send_message(last.url, "starved")
            handled_at = await last.handled.receive()
            assert handled_at - (t0 + 0.5) >= wait_time
    warnings = [r.getMessage() for r in caplog.records if r.name == CLIENT_LOG]
    # More polls than the budget from the third consumer (6 > 4); more consumers than the
    # budget from the fifth. Once each, not at every registration after.
    assert warnings == [
        "3 consumer(s) on this client may keep up to 6 long polls in flight, but "
        "Limits(max_receive_connections=4): polls queue behind each other and a message on a "
        "starved queue can wait up to a whole wait_time more; raise max_receive_connections to "
        "6 or leave it None to size it from the consumers",
        "5 consumers on this client need at least one long poll in flight each (up to 10 in "
        "all), but Limits(max_receive_connections=4): some queues get no poll at times and a "
        "message on them waits until a poll is free, a whole wait_time or more; raise "
        "max_receive_connections to 10 or leave it None to size it from the consumers",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == CLIENT_LOG)


def assert_polling(fake: FakeSQS, client: SQSClient, urls: list[str]) -> None:
    """Each queue has a long poll at the server, and no poll waits in the client for a slot."""
    assert all(fake.queue(url).waiting_polls >= 1 for url in urls)
    assert client._receive_gate.waiting == 0
    assert 1 <= client._receive_gate.in_use <= client.receive_budget


async def test_the_budget_follows_consumers_as_they_come_and_go(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)

    async def handler(message: Message) -> None:
        pass

    async with open_fake_client(fake_sqs) as client:
        urls = [await client.create_queue(f"come-and-go-{i}") for i in range(3)]
        assert client.receive_budget == 4
        async with trio_sqs.open_consumer(urls[0], handler, client=client, pollers=3):
            assert client.receive_budget == 4  # 3 polls: the floor of 4 covers them
            async with trio_sqs.open_consumer(urls[1], handler, client=client, pollers=5):
                assert client.receive_budget == 8
                async with trio_sqs.open_consumer(urls[2], handler, client=client, pollers=10):
                    assert client.receive_budget == 18
                    await trio.sleep(1)
                    assert_polling(fake_sqs, client, urls)
                assert client.receive_budget == 8
                await trio.sleep(25)
                assert_polling(fake_sqs, client, urls[:2])
            assert client.receive_budget == 4
            await trio.sleep(25)
            assert_polling(fake_sqs, client, urls[:1])
        assert client.receive_budget == 4
        assert client._receive_gate.in_use == 0
        # A registration of one's own (a polling loop outside open_consumer) counts as well.
        with client.reserve_polls(6):
            assert client.receive_budget == 6
            with client.reserve_polls(1):
                assert client.receive_budget == 7
        assert client.receive_budget == 4
        for bad in (0, 1001, 2.0, True):
            with pytest.raises(ConfigurationError, match="polls"):
                with client.reserve_polls(bad):  # type: ignore[arg-type]
                    pass  # pragma: no cover
        assert client.receive_budget == 4
    assert not [r for r in caplog.records if r.name == CLIENT_LOG]


class Halt(BaseException):
    pass


async def test_the_reservation_ends_however_the_consumer_ends(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async def handler(message: Message) -> None:
        raise Halt  # a BaseException: stops the consumer and propagates

    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("ends")
        # Refused before it registers: the queue does not exist.
        with pytest.raises(trio_sqs.QueueDoesNotExist):
            async with trio_sqs.open_consumer(url + "-missing", handler, client=client, pollers=9):
                pass  # pragma: no cover
        assert client.receive_budget == 4
        # Cancelled from outside (run_consumer in a nursery of ours).
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(trio_sqs.run_consumer, url, handler, client=client, pollers=9)
            )
            assert client.receive_budget == 9
            nursery.cancel_scope.cancel()
        assert client.receive_budget == 4
        # Ended by its handler's exception.
        with pytest.raises(Halt):
            async with trio_sqs.open_consumer(url, handler, client=client, pollers=9):
                assert client.receive_budget == 9
                await client.send_message(url, "boom")
                await trio.sleep_forever()
        assert client.receive_budget == 4
        assert client._receive_gate.in_use == 0


async def test_a_fixed_budget_stays_fixed(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOG)
    async with open_fake_client(fake_sqs, limits=Limits(max_receive_connections=12)) as client:
        assert client.receive_budget == 12
        with client.reserve_polls(10):
            assert client.receive_budget == 12
            with client.reserve_polls(2):
                assert client.receive_budget == 12
        assert client.receive_budget == 12
        assert not caplog.records  # 12 polls fit 12: nothing to say
        with client.reserve_polls(10), client.reserve_polls(3):
            pass
        with client.reserve_polls(20):  # warned once per client, not at every registration
            pass
    assert [r.getMessage()[:60] for r in caplog.records if r.name == CLIENT_LOG] == [
        "2 consumer(s) on this client may keep up to 13 long polls in"
    ]


async def test_a_consumer_with_its_own_client_sizes_it_from_its_pollers(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``client=``, the consumer opens a client with the default Limits, and its
    registration sizes it: each of its pollers has a slot, however many it has."""
    opened: list[SQSClient] = []

    @asynccontextmanager
    async def open_client(**kwargs: Any) -> AsyncIterator[SQSClient]:
        assert kwargs["limits"] == Limits()
        async with open_fake_client(fake_sqs, limits=kwargs["limits"]) as client:
            opened.append(client)
            yield client

    monkeypatch.setattr(trio_sqs._open, "open_client", open_client)

    async def handler(message: Message) -> None:
        pass

    url = (await fake_sqs.call("CreateQueue", {"QueueName": "own-client"}))["QueueUrl"]
    async with trio_sqs.open_consumer(url, handler, pollers=7):
        [client] = opened
        assert client.receive_budget == 7
        await trio.sleep(1)
        assert_polling(fake_sqs, client, [url])


def test_limits_default_sizes_the_receive_budget_from_the_consumers() -> None:
    assert Limits().max_receive_connections is None
    assert Limits().max_connections is None  # the httpx pool is unbounded; the budgets bound it
    assert Limits(max_receive_connections=4).max_connections == 12


# -- the client's own random generator -------------------------------------------------------------

JITTER_POLICY = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=3.0)


@pytest.fixture
def global_random_restored() -> Iterator[None]:
    """The tests below seed the global generator: put its state back afterwards."""
    state = random.getstate()
    yield
    random.setstate(state)


@asynccontextmanager
async def open_seeded_client(fake: FakeSQS, seed: int | None) -> AsyncIterator[SQSClient]:
    """As open_fake_client (no worker thread), with a random seed."""
    access_key, secret = next(iter(fake.credentials.items()), ("testing", "testing"))
    async with trio_sqs.open_client(
        region=fake.region,
        endpoint_url=fake.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        retry=JITTER_POLICY,
        use_fips=False,
        use_dualstack=False,
        transport=fake.transport(),
        random_seed=seed,
    ) as client:
        yield client


async def backoffs(fake: FakeSQS, seed: int | None, name: str) -> list[float]:
    """The three backoffs of a call that fails three times (500) and then succeeds."""
    async with open_seeded_client(fake, seed) as client:
        url = await client.create_queue(name)
        mark = len(fake.calls)
        fake.faults.fail("GetQueueAttributes", times=3, status=500)
        await client.get_queue_attributes(url)
    times = [c.time for c in fake.calls[mark:] if c.operation == "GetQueueAttributes"]
    assert len(times) == 4
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_the_same_seed_gives_the_same_retry_delays(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, global_random_restored: None
) -> None:
    expected_rng = random.Random(7)
    expected = [expected_rng.uniform(0.0, JITTER_POLICY.backoff_ceiling(n)) for n in (1, 2, 3)]
    random.seed(1)
    first = await backoffs(fake_sqs, 7, "seeded-a")
    random.seed(2)  # the global generator has no part in the client's draws
    second = await backoffs(fake_sqs, 7, "seeded-b")
    assert first == pytest.approx(expected, rel=0, abs=1e-9)
    assert second == pytest.approx(expected, rel=0, abs=1e-9)
    assert await backoffs(fake_sqs, 8, "seeded-c") != pytest.approx(expected, rel=0, abs=1e-9)


async def test_seeding_the_global_random_does_not_change_the_clients_draws(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, global_random_restored: None
) -> None:
    random.seed(1234)
    state = random.getstate()
    first = await backoffs(fake_sqs, None, "unseeded-a")
    assert random.getstate() == state  # not one draw from the global generator
    random.seed(1234)
    second = await backoffs(fake_sqs, None, "unseeded-b")
    # Unseeded clients draw from generators seeded by the operating system: the same global
    # seed gives different delays.
    assert first != second
    assert all(0.0 <= d <= JITTER_POLICY.backoff_ceiling(n) for n, d in enumerate(first, 1))


@pytest.mark.parametrize("seed", ["7", 1.5, True])
async def test_open_client_refuses_a_random_seed_that_is_not_an_integer(
    fake_sqs: FakeSQS, seed: object
) -> None:
    with pytest.raises(ConfigurationError, match="random_seed must be an integer or None") as info:
        async with open_seeded_client(fake_sqs, seed):  # type: ignore[arg-type]
            pass  # pragma: no cover
    assert info.value.code == "InvalidOption"
