"""Unit tests of the consumer's building blocks, without a server: Credit (backpressure), Dispatcher
(per-group order), ConsumerOptions (validation and derived values). Time is trio's MockClock."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sqs import ConfigurationError, ConsumerOptions, Message
from trio_sqs._dispatch import Credit, Dispatcher


def make_message(n: int, group: str | None = None) -> Message:
    attributes = {"MessageGroupId": group} if group is not None else {}
    return Message(
        message_id=f"id-{n}",
        receipt_handle=f"handle-{n}",
        body=str(n),
        md5_of_body="",
        queue_url="http://127.0.0.1:1/123456789012/q",
        attributes=attributes,
    )


def run_with_mock_clock(main: object) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


class _Check(trio.abc.Instrument):
    """Run ``check`` after every task step; keep the first failure (trio would only log it)."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.failure: AssertionError | None = None

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.failure is None:
            try:
                self.check()
            except AssertionError as exc:
                self.failure = exc

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


# -- Credit ---------------------------------------------------------------------------------------


async def test_credit_acquire_waits_until_enough_is_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credit = Credit(5)
    await credit.acquire(3)
    assert (credit.free, credit.in_use) == (2, 3)
    got: list[float] = []

    async def wants_three() -> None:
        await credit.acquire(3)
        got.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wants_three)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        credit.release(1)  # 3 free: enough
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
    assert (credit.free, credit.in_use) == (0, 5)


async def test_credit_partial_release_does_not_wake_a_bigger_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credit = Credit(10)
    await credit.acquire(10)
    done = trio.Event()

    async def wants_ten() -> None:
        await credit.acquire(10)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wants_ten)
        for _ in range(9):
            credit.release(1)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
        credit.release(1)
    assert done.is_set() and credit.free == 0


async def test_cancelled_acquire_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    credit = Credit(4)
    await credit.acquire(3)
    with trio.move_on_after(1) as scope:
        await credit.acquire(2)
    assert scope.cancelled_caught
    assert credit.free == 1
    # A cancelled scope cancels even an acquire that would succeed at once: it is a checkpoint.
    with trio.CancelScope() as scope:
        scope.cancel()
        await credit.acquire(1)
    assert scope.cancelled_caught
    assert credit.free == 1


def test_credit_release_beyond_total_is_a_bug() -> None:
    credit = Credit(2)
    credit.release(0)
    credit.release(-3)  # nothing to release: ignored
    assert credit.free == 2
    with pytest.raises(AssertionError, match="released twice"):
        credit.release(1)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 12),
    tasks=st.lists(
        st.tuples(
            st.integers(0, 5),  # start delay
            st.integers(1, 12),  # how many to acquire (capped at total)
            st.integers(0, 5),  # how long to hold
            st.one_of(st.none(), st.integers(0, 6)),  # give up waiting after this long
            st.booleans(),  # release one by one (as handlers do) or all at once
            st.one_of(st.none(), st.integers(0, 24)),  # right after releasing, cancel this task
        ),
        max_size=25,
    ),
)
def test_credit_never_goes_negative_or_over_total(
    total: int, tasks: list[tuple[int, int, int, int | None, bool, int | None]]
) -> None:
    credit = Credit(total)
    held = 0
    outcome: dict[int, bool] = {}  # task -> whether it got its slots
    scopes: dict[int, trio.CancelScope] = {}
    cancelled: set[int] = set()

    def check() -> None:
        assert 0 <= credit.free <= total
        # acquire() takes, then checkpoints before its caller holds: for a moment slots are
        # taken but not yet counted as held by the test.
        assert credit.free <= total - held

    async def task(index: int) -> None:
        nonlocal held
        start, n, hold, patience, piecewise, victim = tasks[index]
        n = min(n, total)
        await trio.sleep(start)
        scope = scopes[index] = trio.CancelScope(
            deadline=trio.current_time() + (math.inf if patience is None else patience)
        )
        outcome[index] = False
        with scope:
            await credit.acquire(n)
            outcome[index] = True
            held += n
            check()
        del scopes[index]
        if not outcome[index]:
            check()  # a cancelled wait took nothing
            return
        await trio.sleep(hold)
        if piecewise:
            for _ in range(n):
                held -= 1
                credit.release(1)
                check()
                await trio.lowlevel.checkpoint()
        else:
            held -= n
            credit.release(n)
            check()
        # Cancel a waiter that this release may just have woken: its acquire must either
        # hand it the slots or leave them free, never lose them.
        if victim is not None and victim in scopes:
            cancelled.add(victim)
            scopes[victim].cancel()

    checker = _Check(check)

    async def main() -> None:
        trio.lowlevel.add_instrument(checker)
        # Every task ends: a lost wake-up would hang, and the mock clock would jump to this.
        with trio.fail_after(10_000):
            async with trio.open_nursery() as nursery:
                for index in range(len(tasks)):
                    nursery.start_soon(task, index)

    run_with_mock_clock(main)
    checker.raise_failure()
    # Nothing leaked, not even by an acquire cancelled right after it took its slots.
    assert credit.free == total
    # Without a time limit or a cancellation, every acquire is granted eventually.
    for index, spec in enumerate(tasks):
        if spec[3] is None and index not in cancelled:
            assert outcome[index], f"task {index} never got its slots"


# -- Dispatcher -----------------------------------------------------------------------------------


async def test_standard_queue_messages_are_independent() -> None:
    dispatcher = Dispatcher(fifo=False)
    messages = [make_message(i, group="same") for i in range(3)]
    for message in messages:
        dispatcher.put(message)
    assert dispatcher.buffered == 3
    # On a standard queue, even messages with the same group id run concurrently.
    assert await dispatcher.get(10) == messages
    assert dispatcher.buffered == 0


async def test_fifo_group_runs_one_at_a_time_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dispatcher = Dispatcher(fifo=True)
    a1, a2, b1, a3 = (
        make_message(1, "a"),
        make_message(2, "a"),
        make_message(3, "b"),
        make_message(4, "a"),
    )
    for message in (a1, a2, b1, a3):
        dispatcher.put(message)
    assert await dispatcher.get(10) == [a1, b1]  # one per group
    assert dispatcher.buffered == 2
    start = trio.current_time()
    with trio.move_on_after(60) as scope:
        await dispatcher.get(10)  # a2 waits for a1, however long (virtual time)
    assert scope.cancelled_caught and trio.current_time() - start == 60
    assert dispatcher.buffered == 2  # a cancelled get takes nothing
    dispatcher.done(b1)
    dispatcher.done(a1)
    assert await dispatcher.get(10) == [a2]
    dispatcher.done(a2)
    assert await dispatcher.get(10) == [a3]
    dispatcher.done(a3)
    assert dispatcher.buffered == 0


async def test_get_waits_for_a_put() -> None:
    dispatcher = Dispatcher(fifo=True)
    got: list[list[Message]] = []

    async def getter() -> None:
        got.append(await dispatcher.get(1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        dispatcher.put(make_message(1, "a"))
        dispatcher.put(make_message(2, "b"))
    assert sorted(m.body for [m] in got) == ["1", "2"]


async def test_done_wakes_a_handler_waiting_for_the_group() -> None:
    dispatcher = Dispatcher(fifo=True)
    a1, a2 = make_message(1, "a"), make_message(2, "a")
    dispatcher.put(a1)
    dispatcher.put(a2)
    assert await dispatcher.get(1) == [a1]
    got: list[list[Message]] = []

    async def waiter() -> None:
        got.append(await dispatcher.get(1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # a2 waits while a1 runs
        dispatcher.done(a1)
        with trio.fail_after(1):
            await trio.testing.wait_all_tasks_blocked()
    assert got == [[a2]]


async def test_drop_group_returns_the_rest_of_the_group_in_order() -> None:
    dispatcher = Dispatcher(fifo=True)
    a = [make_message(i, "a") for i in range(4)]
    b = make_message(10, "b")
    for message in [*a, b]:
        dispatcher.put(message)
    assert await dispatcher.get(1) == [a[0]]
    assert dispatcher.drop_group(a[0]) == a[1:]
    assert dispatcher.buffered == 1
    dispatcher.done(a[0])
    assert await dispatcher.get(10) == [b]
    assert dispatcher.drop_group(b) == []
    dispatcher.done(b)
    # The group works again afterwards.
    later = make_message(20, "a")
    dispatcher.put(later)
    assert await dispatcher.get(10) == [later]


async def test_close_returns_leftovers_and_releases_waiters() -> None:
    dispatcher = Dispatcher(fifo=True)
    a1, a2 = make_message(1, "a"), make_message(2, "a")
    dispatcher.put(a1)
    dispatcher.put(a2)
    assert await dispatcher.get(1) == [a1]
    results: list[list[Message]] = []

    async def getter() -> None:
        results.append(await dispatcher.get(1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.close() == [a2]
    assert results == [[], []]
    assert dispatcher.buffered == 0
    assert await dispatcher.get(5) == []
    dispatcher.done(a1)  # a handler finishing after close is fine
    with pytest.raises(RuntimeError, match="closed"):
        dispatcher.put(make_message(3, "a"))


@settings(max_examples=150, deadline=None)
@given(
    fifo=st.booleans(),
    messages=st.lists(
        st.tuples(
            st.sampled_from("abc"),  # group
            st.integers(0, 3),  # gap before it is put
            st.integers(0, 4),  # handling time
            st.booleans(),  # fails on its first attempt
        ),
        min_size=1,
        max_size=30,
    ),
    workers=st.integers(1, 5),
    take=st.integers(1, 3),
)
def test_dispatcher_keeps_group_order_under_random_interleavings(
    fifo: bool, messages: list[tuple[str, int, int, bool]], workers: int, take: int
) -> None:
    dispatcher = Dispatcher(fifo=fifo)
    all_messages = [make_message(i, group) for i, (group, _, _, _) in enumerate(messages)]
    # What the test expects to be buffered, per group, in put order.
    pending: dict[Hashable, list[int]] = defaultdict(list)
    running: set[Hashable] = set()
    handled: list[int] = []
    dropped: list[int] = []
    put_count = 0
    settled = 0
    finished = trio.Event()

    def check() -> None:
        # get() takes messages, then checkpoints before its caller sees them: for a moment they
        # are out of the dispatcher but not yet in the test's hands.
        assert 0 <= dispatcher.buffered <= sum(len(v) for v in pending.values())

    def settle(n: int) -> None:
        nonlocal settled
        settled += n
        if settled == len(messages):
            finished.set()

    async def producer() -> None:
        nonlocal put_count
        for i, (_, gap, _, _) in enumerate(messages):
            await trio.sleep(gap)
            message = all_messages[i]
            pending[dispatcher.group_of(message)].append(i)
            dispatcher.put(message)
            put_count += 1

    async def worker() -> None:
        while True:
            batch = await dispatcher.get(take)
            if not batch:
                return
            assert 1 <= len(batch) <= take
            groups = [dispatcher.group_of(m) for m in batch]
            assert len(set(groups)) == len(groups), "two messages of one group in one batch"
            for message, group in zip(batch, groups, strict=True):
                i = int(message.body)
                assert group not in running, "a group ran two messages at once"
                # The next message of its group in put order.
                assert pending[group][0] == i
                pending[group].pop(0)
                running.add(group)
                handled.append(i)
            check()
            await trio.sleep(max(messages[int(m.body)][2] for m in batch))
            for message, group in zip(batch, groups, strict=True):
                i = int(message.body)
                running.discard(group)
                if fifo and messages[i][3]:
                    # A failure drops the buffered rest of the group, in order.
                    rest = dispatcher.drop_group(message)
                    assert [int(m.body) for m in rest] == pending[group]
                    dropped.extend(pending[group])
                    settle(len(pending[group]))
                    pending[group].clear()
                    check()
                dispatcher.done(message)
                settle(1)

    checker = _Check(check)

    async def main() -> None:
        trio.lowlevel.add_instrument(checker)
        with trio.fail_after(10_000):  # a lost wake-up hangs; the mock clock jumps here
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                for _ in range(workers):
                    nursery.start_soon(worker)
                await finished.wait()
                assert dispatcher.close() == []
        assert put_count == len(messages)

    run_with_mock_clock(main)
    checker.raise_failure()
    assert dispatcher.buffered == 0
    assert sorted(handled + dropped) == list(range(len(messages)))
    assert len(handled) == len(set(handled))
    # Within a group, handling follows put order (dropped messages are skipped, never reordered).
    by_group: dict[str, list[int]] = defaultdict(list)
    for i in handled:
        by_group[messages[i][0]].append(i)
    if fifo:
        for order in by_group.values():
            assert order == sorted(order)
    else:
        assert dropped == []


# -- ConsumerOptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concurrency", 0),
        ("concurrency", 10_001),
        ("concurrency", 2.5),
        ("concurrency", True),
        ("batch_size", 0),
        ("batch_size", 11),
        ("wait_time", -1),
        ("wait_time", 21),
        ("visibility_timeout", 0),
        ("visibility_timeout", 43_201),
        ("heartbeat_interval", 0),
        ("heartbeat_interval", -1.0),
        ("heartbeat_interval", math.nan),
        ("max_buffered", -1),
        ("pollers", 0),
        ("pollers", 101),
        ("grace_period", -1),
        ("grace_period", math.inf),
        ("flush_timeout", -0.5),
        ("poll_on_stop", "later"),
        ("handler_timeout", 0),
        ("failure_backoff", -1),
        ("failure_backoff", 43_201),
        ("max_failure_backoff", 43_201),
        ("ack_interval", 61),
        ("error_backoff", -1),
        ("attribute_names", "All"),
        ("message_attribute_names", ("All", 3)),
    ],
)
def test_invalid_option_names_the_option_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        ConsumerOptions(**{field: value})  # type: ignore[arg-type]
    text = str(excinfo.value)
    assert field in text
    assert repr(value) in text or str(value) in text


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ConfigurationError, match=r"heartbeat_interval=10.*visibility_timeout=10"):
        ConsumerOptions(visibility_timeout=10, heartbeat_interval=10)
    assert ConsumerOptions(visibility_timeout=10, heartbeat_interval=9.9).heartbeat_interval == 9.9


def test_options_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        ConsumerOptions(5)  # type: ignore[misc]
    options = ConsumerOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.concurrency = 3  # type: ignore[misc]


def test_derived_values() -> None:
    default = ConsumerOptions()
    assert default.effective_batch_size(False) == 10
    assert default.effective_heartbeat_interval() == 10.0  # a third of the 30 s lease
    few = ConsumerOptions(concurrency=3)
    assert few.effective_batch_size(False) == 3
    assert few.effective_batch_size(True) == 10
    assert few.capacity(False) == 3 + 3
    # Concurrency is independent of batch size: enough pollers to keep 25 handlers busy.
    many = ConsumerOptions(concurrency=25, batch_size=10)
    assert many.capacity(False) == 25 + 10
    assert many.effective_pollers(False) == 4
    assert ConsumerOptions(concurrency=1000).effective_pollers(False) == 10
    assert ConsumerOptions(concurrency=1, batch_size=1, max_buffered=0).capacity(False) == 1
    batch = ConsumerOptions(concurrency=2, batch_size=5)
    assert batch.capacity(True) == 2 * 5 + 5


def test_failure_visibility_doubles_per_receive_and_is_capped() -> None:
    options = ConsumerOptions(failure_backoff=1, max_failure_backoff=10)
    assert [options.failure_visibility(n) for n in range(0, 7)] == [1, 1, 2, 4, 8, 10, 10]
    assert ConsumerOptions(failure_backoff=0.4).failure_visibility(1) == 1  # whole seconds
    assert ConsumerOptions(failure_backoff=0).failure_visibility(5) == 0
    huge = ConsumerOptions(failure_backoff=43_200, max_failure_backoff=43_200)
    assert huge.failure_visibility(10_000) == 43_200


async def test_credit_wakes_a_waiter_only_when_it_can_go_on() -> None:
    """A poller waiting for 10 slots is not woken by each of 10 messages settled one by one
    (nine wake-ups for nothing, at saturation, per poll)."""
    credit = Credit(10)
    await credit.acquire(10)
    wakes = 0

    class CountingLot:  # (trio's ParkingLot cannot be subclassed)
        def __init__(self) -> None:
            self.inner = trio.lowlevel.ParkingLot()

        async def park(self) -> None:
            await self.inner.park()

        def unpark_all(self) -> Any:
            nonlocal wakes
            wakes += 1
            return self.inner.unpark_all()

    credit._lot = CountingLot()  # type: ignore[assignment]
    got = trio.Event()

    async def poller() -> None:
        await credit.acquire(10)
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(9):
            credit.release(1)
            await trio.testing.wait_all_tasks_blocked()
        assert wakes == 0 and not got.is_set()
        credit.release(1)
        await got.wait()
    assert wakes == 1 and credit.free == 0


async def test_a_cancelled_credit_wait_takes_nothing_and_wants_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credit = Credit(2)
    await credit.acquire(2)
    with trio.move_on_after(1):
        await credit.acquire(1)
    assert credit.free == 0 and credit._wanted == []
    credit.release(2)
    assert credit.free == 2
