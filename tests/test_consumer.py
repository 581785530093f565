"""Feature tests of the consumer, on the in-memory SQS (``trio_sqs.testing``) and virtual time.

Every test here runs on ``trio.testing.MockClock`` (pytest-trio's ``autojump_clock``) against
``FakeSQS``, with realistic settings (20 s long polls, 30 s leases, 10 s grace): what the consumer
sent is read from ``fake_sqs.calls`` (each call with its virtual arrival time), and the times it
keeps are asserted exactly. A few tests, marked "real sockets", run the consumer against moto's
real HTTP server (or the fake served over HTTP) on the wall clock: a bounded check that the same
features hold over a real network stack.

The shutdown contract (no receive after stop, grace, release on stop, idle stop) is covered in
tests/test_shutdown.py; these tests cover what a running consumer does.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import (
    ConfigurationError,
    Consumer,
    ConsumerOptions,
    Message,
    QueueDoesNotExist,
    Retry,
    SendEntry,
    open_consumer,
    run_consumer,
)
from trio_sqs._leases import TICKS_PER_INTERVAL
from trio_sqs.testing import FakeSQS, QueueCounts, RecordedCall, serve_fake_sqs

from .recording_proxy import RecordingProxy

REGION = "us-east-1"

# The consumer's defaults, spelled out where a test computes times from them.
WAIT_TIME = 20  # ReceiveMessage's WaitTimeSeconds
LEASE = 30  # visibility_timeout
GRACE = 10.0  # grace_period
ACK_INTERVAL = 0.1  # longest wait before a partial batch of deletes or releases goes out
DEFAULTS = ConsumerOptions()
assert (DEFAULTS.wait_time, DEFAULTS.visibility_timeout, DEFAULTS.grace_period) == (
    WAIT_TIME,
    LEASE,
    GRACE,
)
assert DEFAULTS.ack_interval == ACK_INTERVAL

# Real sockets: a small grace so that a failing test (a handler left blocked) still stops quickly
# on the wall clock.
FAST_STOP: dict[str, Any] = {"grace_period": 1.0, "flush_timeout": 2.0}

# Real sockets: moto's ReceiveMessage is not thread-safe: two polls served at once can both take
# the same message, and on FIFO queues split a group between them. Real SQS (and the in-memory
# fake) does not do that; the moto tests use one poller.
ONE_POLLER: dict[str, Any] = {"pollers": 1}


def via(url: str) -> dict[str, Any]:
    """Keywords that make a consumer open its own client against ``url``."""
    return {"endpoint_url": url, "region": REGION}


async def send_bodies(
    sqs: trio_sqs.SQSClient, queue_url: str, bodies: list[str], *, group: str | None = None
) -> list[str]:
    """Send ``bodies`` in order (batches of 10); return their message ids."""
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        entries = [SendEntry(body=b, message_group_id=group) for b in bodies[start : start + 10]]
        sent, result = await sqs.send_message_batch(queue_url, entries)
        assert result.ok, result
        ids.extend(s.message_id for s in sent)
    return ids


async def assert_queue_empty(sqs: trio_sqs.SQSClient, queue_url: str) -> None:
    """Nothing visible, nothing in flight: every message was deleted (asked through the API)."""
    leftover = await sqs.receive_messages(queue_url, wait_time=0, visibility_timeout=0)
    assert list(leftover) == []
    attributes = await sqs.get_queue_attributes(
        queue_url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def assert_fake_queue_empty(fake: FakeSQS, queue_url: str) -> None:
    """Every message was deleted: the fake's exact counts, and nothing taken by a long poll whose
    client went away."""
    queue = fake.queue(queue_url)
    assert queue.counts() == QueueCounts(visible=0, in_flight=0, delayed=0)
    assert queue.messages() == []
    assert queue.orphaned_deliveries == 0


async def create_fifo_queue(sqs: trio_sqs.SQSClient, queue_name: str) -> str:
    return await sqs.create_queue(
        f"{queue_name}.fifo",
        attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )


class _StepHook(trio.abc.Instrument):
    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self._hook()


@contextmanager
def after_every_task_step(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` after every step of every task: samples state without polling in a loop."""
    instrument = _StepHook(hook)
    trio.lowlevel.add_instrument(instrument)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(instrument)


# -- what the consumer sent, from the fake's record ------------------------------------------------


def calls_to(fake: FakeSQS, operation: str, *, since: float = -math.inf) -> list[RecordedCall]:
    """The calls of ``operation`` that arrived at or after ``since`` (virtual time)."""
    return [c for c in fake.calls if c.operation == operation and c.time >= since]


def receive_times(fake: FakeSQS, *, since: float = -math.inf) -> list[float]:
    return [c.time for c in calls_to(fake, "ReceiveMessage", since=since)]


def visibility_changes(fake: FakeSQS, timeout: int | None = None) -> list[tuple[float, int, str]]:
    """Every ChangeMessageVisibilityBatch entry as (time, VisibilityTimeout, ReceiptHandle),
    only those setting ``timeout`` if given: heartbeats set the lease, releases a backoff (or 0)."""
    return [
        (c.time, e["VisibilityTimeout"], e["ReceiptHandle"])
        for c in calls_to(fake, "ChangeMessageVisibilityBatch")
        for e in c.params["Entries"]
        if timeout is None or e["VisibilityTimeout"] == timeout
    ]


async def wait_for_call(fake: FakeSQS, predicate: Callable[[RecordedCall], bool]) -> RecordedCall:
    """Wait until a call that satisfies ``predicate`` has arrived (looking at every new call after
    each task step, so the test wakes at the virtual instant it arrived); return it."""
    found: list[RecordedCall] = []
    arrived = trio.Event()
    looked = 0

    def look() -> None:
        nonlocal looked
        while looked < len(fake.calls) and not found:
            call = fake.calls[looked]
            looked += 1
            if predicate(call):
                found.append(call)
                arrived.set()

    look()
    if not found:
        with after_every_task_step(look):
            await arrived.wait()
    return found[0]


def is_receive(call: RecordedCall) -> bool:
    return call.operation == "ReceiveMessage"


# -- basics -----------------------------------------------------------------------------------------


async def test_messages_are_handled_once_and_deleted(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    bodies = [f"message-{i}" for i in range(25)]
    await send_bodies(sqs, queue_url, bodies)
    handled: Counter[str] = Counter()
    handled_at: set[float] = set()
    all_handled = trio.Event()

    async def handler(message: Message) -> None:
        assert isinstance(message, Message)
        handled[message.body] += 1
        handled_at.add(trio.current_time())
        if len(handled) == len(bodies):
            all_handled.set()

    async with open_consumer(queue_url, handler, client=sqs, pollers=1) as consumer:
        started = trio.current_time()
        await all_handled.wait()
        done = trio.current_time()
        # The poll sent once the queue was drained finds it empty after exactly WaitTimeSeconds,
        # and is accounted before the next one goes out.
        await wait_for_call(fake_sqs, lambda c: is_receive(c) and c.time > done)
        running = consumer.statistics()
        stopped_at = trio.current_time()

    assert handled == Counter(dict.fromkeys(bodies, 1))
    # Every message was handled the moment it was there: no poll waited, no handler queued.
    assert handled_at == {started} and done == started
    # 10 + 10 + 5 messages, then a long poll that came back empty 20 s later, then one more.
    assert receive_times(fake_sqs) == [started] * 4 + [started + WAIT_TIME]
    assert stopped_at == started + WAIT_TIME
    assert running.state == "running"
    assert running.received == 25
    assert running.completed == 25
    assert (running.polls, running.empty_polls) == (4, 1)
    assert running.last_poll_at is not None
    # Deletes: one full batch as soon as it is full, the rest within ack_interval.
    deletes = calls_to(fake_sqs, "DeleteMessageBatch")
    assert [len(c.params["Entries"]) for c in deletes] == [10, 10, 5]
    assert [c.time for c in deletes] == [started, started, started + ACK_INTERVAL]
    assert calls_to(fake_sqs, "DeleteMessage") == []

    final = consumer.statistics()
    assert final.state == "stopped"
    assert (final.received, final.completed, final.deleted) == (25, 25, 25)
    assert (final.failed, final.released, final.delete_failed, final.unflushed) == (0, 0, 0, 0)
    assert (final.in_flight, final.buffered) == (0, 0)
    assert final.polls == 4
    assert_fake_queue_empty(fake_sqs, queue_url)


# Real sockets: the same over moto's HTTP server, through the recording proxy (wall clock).
async def test_real_sockets_messages_are_handled_once_and_deleted(
    sqs: trio_sqs.SQSClient, queue_url: str, proxy: RecordingProxy
) -> None:
    bodies = [f"message-{i}" for i in range(25)]
    await send_bodies(sqs, queue_url, bodies)
    handled: Counter[str] = Counter()
    all_handled = trio.Event()

    async def handler(message: Message) -> None:
        assert isinstance(message, Message)
        handled[message.body] += 1
        if len(handled) == len(bodies):
            all_handled.set()

    async with open_consumer(
        queue_url, handler, wait_time=1, pollers=1, **FAST_STOP, **via(proxy.url)
    ) as consumer:
        with trio.fail_after(10):
            await all_handled.wait()
            # With a single poller, two polls arriving after every message was handled mean
            # that at least one poll that found the queue empty has been accounted.
            t = trio.current_time()
            await proxy.wait_for(lambda p: len(p.receives_after(t)) >= 2)
        running = consumer.statistics()

    assert handled == Counter(dict.fromkeys(bodies, 1))
    assert running.state == "running"
    assert running.received == 25
    assert running.completed == 25
    assert running.polls >= 3  # at most 10 messages per poll
    assert 1 <= running.empty_polls < running.polls
    assert running.last_poll_at is not None

    final = consumer.statistics()
    assert final.state == "stopped"
    assert (final.received, final.completed, final.deleted) == (25, 25, 25)
    assert (final.failed, final.released, final.delete_failed, final.unflushed) == (0, 0, 0, 0)
    assert (final.in_flight, final.buffered) == (0, 0)
    assert final.polls <= len(proxy.receives_after(float("-inf")))
    await assert_queue_empty(sqs, queue_url)


async def test_statistics_is_a_frozen_snapshot_and_state_goes_starting_running_stopped(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    started = trio.Event()
    proceed = trio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await proceed.wait()

    # A Consumer that was built but not run yet is "starting" (open_consumer hands it out only
    # once it is running).
    idle = Consumer(sqs, queue_url, handler, ConsumerOptions(), batch=False, fifo=False)
    assert idle.state == "starting"
    assert idle.statistics().state == "starting"
    assert idle.statistics().received == 0

    await send_bodies(sqs, queue_url, ["only"])
    states = []
    async with open_consumer(queue_url, handler, client=sqs) as consumer:
        states.append(consumer.state)
        before = consumer.statistics()
        await started.wait()
        during = consumer.statistics()
        with pytest.raises(dataclasses.FrozenInstanceError):
            during.received = 99  # type: ignore[misc]
        consumer.stop()
        states.append(consumer.state)
        proceed.set()
    states.append(consumer.state)

    assert states == ["running", "stopping", "stopped"]
    assert isinstance(during, trio_sqs.ConsumerStatistics)
    # Snapshots do not move with the consumer.
    assert before.state == "running" and before.completed == 0
    assert during.state == "running"
    assert (during.received, during.in_flight, during.completed, during.deleted) == (1, 1, 0, 0)
    after = consumer.statistics()
    assert (after.state, after.completed, after.deleted, after.in_flight) == ("stopped", 1, 1, 0)
    assert during.completed == 0 and during.in_flight == 1


# -- concurrency, independent of batch size -------------------------------------------------------


async def test_concurrency_above_batch_size_runs_that_many_handlers_at_once(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    sent = set(await send_bodies(sqs, queue_url, [f"m{i}" for i in range(40)]))
    running = 0
    max_running = 0
    done: set[str] = set()
    all_in = trio.Event()
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        nonlocal running, max_running
        running += 1
        max_running = max(max_running, running)
        if running == 25:
            all_in.set()
        try:
            await all_in.wait()
            await trio.sleep(0.01)
        finally:
            running -= 1
        done.add(message.message_id)
        if done == sent:
            all_done.set()

    max_in_flight = 0

    def sample() -> None:
        nonlocal max_in_flight
        max_in_flight = max(max_in_flight, consumer.statistics().in_flight)

    async with open_consumer(
        queue_url, handler, client=sqs, concurrency=25, batch_size=10
    ) as consumer:
        with after_every_task_step(sample):
            await all_in.wait()
            await all_done.wait()

    assert max_running == 25
    assert max_in_flight == 25
    stats = consumer.statistics()
    assert stats.deleted == stats.received == 40
    assert_fake_queue_empty(fake_sqs, queue_url)


async def _run_bounded_consumer(
    fake: FakeSQS, sqs: trio_sqs.SQSClient, queue_url: str, *, max_buffered: int
) -> dict[str, int]:
    """40 messages, concurrency 3, batch 10: return the maxima seen after every task step of
    handlers running, messages in hand (buffered + running), and messages waiting while every
    handler is busy (the consumer's ``buffered``, and received minus started as the test counts)."""
    sent = set(await send_bodies(sqs, queue_url, [f"m{i}" for i in range(40)]))
    running = 0
    started = 0
    maxima = {"running": 0, "buffered": 0, "unstarted": 0, "in_hand": 0}
    all_done = trio.Event()
    done: set[str] = set()

    async def handler(message: Message) -> None:
        nonlocal running, started
        running += 1
        started += 1
        try:
            await trio.sleep(0.02)
        finally:
            running -= 1
        done.add(message.message_id)
        if done == sent:
            all_done.set()

    def sample() -> None:
        stats = consumer.statistics()
        maxima["running"] = max(maxima["running"], running)
        maxima["in_hand"] = max(maxima["in_hand"], stats.buffered + stats.in_flight)
        if running == 3:
            # Every handler is busy: what is buffered now waits for a free handler. (Right
            # after a poll lands, messages sit in the buffer for a moment while idle handlers
            # pick them up; those do not wait for a handler.)
            maxima["buffered"] = max(maxima["buffered"], stats.buffered)
            # Counted by the test, not by the consumer: received but not handed to a handler.
            maxima["unstarted"] = max(maxima["unstarted"], stats.received - started)

    async with open_consumer(
        queue_url,
        handler,
        client=sqs,
        concurrency=3,
        batch_size=10,
        max_buffered=max_buffered,
    ) as consumer:
        with after_every_task_step(sample):
            await all_done.wait()
    stats = consumer.statistics()
    assert stats.deleted == stats.received == 40
    assert_fake_queue_empty(fake, queue_url)
    return maxima


async def test_concurrency_below_batch_size_is_never_exceeded_and_buffer_is_bounded(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    maxima = await _run_bounded_consumer(fake_sqs, fake_sqs_client, fake_queue_url, max_buffered=10)
    assert maxima["running"] == 3
    assert 0 < maxima["buffered"] <= 10
    assert maxima["unstarted"] <= 10
    assert maxima["in_hand"] <= 3 + 10


async def test_max_buffered_below_batch_size_bounds_unstarted_messages(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    maxima = await _run_bounded_consumer(fake_sqs, fake_sqs_client, fake_queue_url, max_buffered=2)
    assert maxima["running"] == 3
    assert maxima["buffered"] <= 2
    assert maxima["unstarted"] <= 2
    assert maxima["in_hand"] <= 3 + 2


async def test_no_poll_is_sent_without_capacity(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    await send_bodies(sqs, queue_url, ["first", "second"])
    started = trio.Event()
    proceed = trio.Event()
    handled: list[tuple[str, float]] = []
    second_done = trio.Event()

    async def handler(message: Message) -> None:
        handled.append((message.body, trio.current_time()))
        if len(handled) == 1:
            started.set()
            await proceed.wait()
        else:
            second_done.set()

    async with open_consumer(
        queue_url, handler, client=sqs, concurrency=1, batch_size=1, max_buffered=0
    ) as consumer:
        await started.wait()
        polls_at_start = len(receive_times(fake_sqs))
        stats = consumer.statistics()
        assert (stats.in_flight, stats.buffered, stats.received) == (1, 0, 1)
        # Let three long polls' worth of time pass: a consumer that polls without room would
        # have sent one by now (and "second" is visible all along: any poll would take it).
        await trio.sleep(3 * WAIT_TIME)
        assert len(receive_times(fake_sqs)) == polls_at_start == 1
        assert fake_sqs.queue(queue_url).waiting_polls == 0
        assert consumer.statistics().received == 1
        # Room again: polling resumes at once, and the waiting message is handled at once.
        t = trio.current_time()
        proceed.set()
        await second_done.wait()
        # The poll that took "second" went out at once; the next one (room again once "second"
        # is done) may be sent at the same instant, before or after this task runs again.
        assert receive_times(fake_sqs, since=t) in ([t], [t, t])
    assert [body for body, _ in handled] == ["first", "second"]
    assert handled[1][1] == t


# -- acknowledgements -----------------------------------------------------------------------------


async def test_deletes_are_batched_and_requests_per_message_are_few(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    total = 100
    sent = set(await send_bodies(sqs, queue_url, [f"m{i}" for i in range(total)]))
    done: set[str] = set()
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        done.add(message.message_id)
        if done == sent:
            all_done.set()

    setup = len(fake_sqs.calls)
    async with open_consumer(queue_url, handler, client=sqs) as consumer:
        await all_done.wait()
    stats = consumer.statistics()
    assert stats.deleted == stats.received == total
    # Only what the consumer sent (not the test's setup).
    operations = Counter(c.operation for c in fake_sqs.calls[setup:])
    assert_fake_queue_empty(fake_sqs, queue_url)

    deletes = operations["DeleteMessageBatch"]
    requests = sum(operations.values())
    ratio = requests / total
    print(f"\n{total} messages: {dict(operations)}; {ratio:.2f} requests per message")
    assert operations["DeleteMessage"] == 0
    assert total // 10 <= deletes < total // 2
    assert ratio < 0.5


async def test_requests_per_message_at_a_low_rate(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """Issue item 9: at 10 messages/s with 200 ms handlers the consumer sent 1,563 requests per
    1,000 messages (a poller per message, a delete call every 0.1 s). With one poll while polls
    come back short and a delete window that grows to fill batches: one receive per message (a
    long poll returns with the first message there is) and a delete per ten."""
    sqs, queue_url = fake_sqs_client, fake_queue_url
    total = 300
    handled = 0
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        nonlocal handled
        await trio.sleep(0.2)
        handled += 1
        if handled == total:
            all_done.set()

    async with open_consumer(queue_url, handler, client=sqs) as consumer:
        await trio.testing.wait_all_tasks_blocked()
        mark = len(fake_sqs.calls)
        for i in range(total):
            await sqs.send_message(queue_url, f"m{i}")
            await trio.sleep(0.1)
        await all_done.wait()
    assert consumer.statistics().deleted == total  # the stop flushed the last batch
    operations = Counter(c.operation for c in fake_sqs.calls[mark:] if c.operation != "SendMessage")
    print(f"\n{total} messages at 10/s: {dict(operations)}")
    assert operations["ReceiveMessage"] <= total + 1  # the poll waiting when the stop came
    assert operations["DeleteMessageBatch"] <= total // 10 + 2  # the window's first steps
    assert set(operations) == {"ReceiveMessage", "DeleteMessageBatch"}
    assert sum(operations.values()) / total <= 1.12


# -- visibility heartbeats ------------------------------------------------------------------------


async def test_heartbeats_keep_a_long_handler_s_message_invisible(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    interval = DEFAULTS.effective_heartbeat_interval()  # a third of the 30 s lease
    assert interval == 10
    work = 100.0  # more than three leases
    [message_id] = await send_bodies(sqs, queue_url, ["slow"])
    started = trio.Event()
    finished = trio.Event()
    calls: list[str] = []
    leaked: list[Message] = []

    async def handler(message: Message) -> None:
        calls.append(message.message_id)
        started.set()
        await trio.sleep(work)
        finished.set()

    async def look_for_the_message() -> None:
        # Long polls that would take the message the moment its lease lapsed (and leave it
        # visible, so that the consumer's own waiting poll could take it too).
        while True:
            leaked.extend(await sqs.receive_messages(queue_url, wait_time=20, visibility_timeout=0))

    async with open_consumer(queue_url, handler, client=sqs, pollers=1) as consumer:
        await started.wait()
        received_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(look_for_the_message)
            await finished.wait()
            nursery.cancel_scope.cancel()
        delete = await wait_for_call(fake_sqs, lambda c: c.operation == "DeleteMessageBatch")
        # Two intervals for a heartbeat that was wrongly still due to show up.
        await trio.sleep(2 * interval)

    assert calls == [message_id]
    assert leaked == []
    assert delete.time == received_at + work + ACK_INTERVAL
    beats = [t for t, _, _ in visibility_changes(fake_sqs, LEASE)]
    # One extension at least every interval from the receipt to the end of the handler (each
    # renews the 30 s lease; the lease never came near its end), and none after.
    # (The heartbeat looks for due messages TICKS_PER_INTERVAL times an interval: an extension
    # goes out at most one tick early, here every 7.5 s.)
    gaps = [b - a for a, b in itertools.pairwise([received_at, *beats])]
    assert all(interval - interval / TICKS_PER_INTERVAL <= gap <= interval for gap in gaps), gaps
    assert beats[-1] + interval > received_at + work
    assert all(t < delete.time for t in beats)
    assert all(e[1] == LEASE for e in visibility_changes(fake_sqs))  # no release was sent
    stats = consumer.statistics()
    assert stats.visibility_extensions == len(beats) >= work // interval
    assert stats.heartbeat_errors == 0
    assert stats.deleted == 1
    assert_fake_queue_empty(fake_sqs, queue_url)


# -- handler timeout, failures, Retry -------------------------------------------------------------


async def test_handler_timeout_cancels_the_handler_and_releases_with_failure_backoff(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    handler_timeout, failure_backoff = 5.0, 10
    [message_id] = await send_bodies(sqs, queue_url, ["sleepy"])
    attempts: list[tuple[int, float]] = []
    cancelled_at: list[float] = []
    redelivered = trio.Event()

    async def handler(message: Message) -> None:
        assert message.message_id == message_id
        attempts.append((message.receive_count, trio.current_time()))
        if message.receive_count == 1:
            try:
                await trio.sleep(60)
            except trio.Cancelled:
                cancelled_at.append(trio.current_time())
                raise
        else:
            redelivered.set()

    async with open_consumer(
        queue_url,
        handler,
        client=sqs,
        handler_timeout=handler_timeout,
        failure_backoff=failure_backoff,
    ) as consumer:
        await redelivered.wait()

    assert [count for count, _ in attempts] == [1, 2]
    first_start, second_start = attempts[0][1], attempts[1][1]
    assert cancelled_at == [first_start + handler_timeout]
    # Released with the failure backoff (within ack_interval), not left to the 30 s lease...
    [(released_at, visibility, _)] = visibility_changes(fake_sqs)
    assert visibility == failure_backoff
    assert cancelled_at[0] <= released_at <= cancelled_at[0] + ACK_INTERVAL
    # ...and back exactly failure_backoff seconds after the release, to the consumer's waiting poll.
    assert second_start == released_at + failure_backoff
    stats = consumer.statistics()
    assert (stats.timed_out, stats.completed, stats.failed) == (1, 1, 0)
    assert stats.released == 1
    assert stats.deleted == 1
    assert_fake_queue_empty(fake_sqs, queue_url)


async def test_one_handler_task_goes_on_after_a_timeout_and_after_idling_past_the_timeout(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """With concurrency 1 every call runs on the one handler task, under one cancel scope until a
    call is cut short: the cut does not end the task, each call gets its whole handler_timeout
    from its own start, and an idle wait longer than the timeout after a call is not cut by that
    call's deadline (the task would end and the consumer take no more work)."""
    sqs, queue_url = fake_sqs_client, fake_queue_url
    timeout = 5.0
    await send_bodies(sqs, queue_url, ["slow"])
    calls: list[tuple[str, int, str, float]] = []
    slow_done, late_done = trio.Event(), trio.Event()

    async def handler(message: Message) -> None:
        start = trio.current_time()
        outcome = "done"
        try:
            if message.body == "slow" and message.receive_count == 1:
                await trio.sleep(60)
            else:
                await trio.sleep(timeout - 0.5)
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        finally:
            calls.append(
                (message.body, message.receive_count, outcome, trio.current_time() - start)
            )
        (late_done if message.body == "late" else slow_done).set()

    async with open_consumer(
        queue_url,
        handler,
        client=sqs,
        concurrency=1,
        handler_timeout=timeout,
        failure_backoff=1,
    ) as consumer:
        await slow_done.wait()
        await trio.sleep(3 * timeout)  # idle, three timeouts long
        await send_bodies(sqs, queue_url, ["late"])
        await late_done.wait()

    assert calls == [
        ("slow", 1, "cancelled", timeout),
        ("slow", 2, "done", timeout - 0.5),
        ("late", 1, "done", timeout - 0.5),
    ]
    stats = consumer.statistics()
    assert (stats.timed_out, stats.completed, stats.failed) == (1, 2, 0)
    assert_fake_queue_empty(fake_sqs, queue_url)


async def test_an_error_while_settling_stops_the_consumer_once_and_is_not_a_handler_failure(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Settling runs under the handler task's scope but after the handler: an exception there
    is an internal error (the consumer stops, raising it), never taken for the handler's own and
    settled a second time."""
    sqs, queue_url = fake_sqs_client, fake_queue_url
    await send_bodies(sqs, queue_url, ["one"])
    calls = 0

    async def handler(message: Message) -> None:
        nonlocal calls
        calls += 1

    def broken_settle(self: Any, *args: Any) -> None:
        raise RuntimeError("settling broke")

    monkeypatch.setattr(Consumer, "_settle_all", broken_settle)
    with pytest.raises(RuntimeError, match="settling broke"):
        async with open_consumer(queue_url, handler, client=sqs, concurrency=1) as consumer:
            await trio.sleep_forever()
    stats = consumer.statistics()
    assert calls == 1
    assert stats.in_flight == 0
    assert (stats.completed, stats.failed) == (0, 0)
    assert not [r for r in caplog.records if r.getMessage() == "handler failed"]


async def test_failed_message_comes_back_after_backoff_and_consumer_keeps_going(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    failure_backoff = 10
    bodies = ["ok-1", "bad", "ok-2", "ok-3"]
    await send_bodies(sqs, queue_url, bodies)
    seen: list[tuple[str, int, float]] = []
    failed_once = trio.Event()
    late_handled = trio.Event()
    bad_redelivered = trio.Event()

    async def handler(message: Message) -> None:
        seen.append((message.body, message.receive_count, trio.current_time()))
        if message.body == "bad" and message.receive_count == 1:
            failed_once.set()
            raise RuntimeError("boom")
        if message.body == "bad":
            bad_redelivered.set()
        if message.body == "late":
            late_handled.set()

    async with open_consumer(
        queue_url, handler, client=sqs, failure_backoff=failure_backoff
    ) as consumer:
        await failed_once.wait()
        failed_at = trio.current_time()
        # The consumer keeps running after a failure: new messages are handled.
        await trio.sleep(1)
        await send_bodies(sqs, queue_url, ["late"])
        await late_handled.wait()
        await bad_redelivered.wait()

    by_body: dict[str, list[tuple[int, float]]] = {}
    for body, count, at in seen:
        by_body.setdefault(body, []).append((count, at))
    assert {b: [c for c, _ in v] for b, v in by_body.items()} == {
        "ok-1": [1],
        "ok-2": [1],
        "ok-3": [1],
        "late": [1],
        "bad": [1, 2],
    }
    [(released_at, visibility, _)] = visibility_changes(fake_sqs)
    assert visibility == failure_backoff
    assert failed_at <= released_at <= failed_at + ACK_INTERVAL
    assert by_body["bad"][1][1] == released_at + failure_backoff
    # "late" was sent after the failure and handled at once, before the failed message came back.
    assert by_body["late"][0][1] == failed_at + 1
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (1, 5, 5)
    assert stats.released == 1
    assert_fake_queue_empty(fake_sqs, queue_url)


async def test_retry_exception_redelivers_after_its_delay(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    delay = 5
    await send_bodies(sqs, queue_url, ["later"])
    seen: list[tuple[int, float]] = []
    redelivered = trio.Event()

    async def handler(message: Message) -> None:
        seen.append((message.receive_count, trio.current_time()))
        if message.receive_count == 1:
            raise Retry(delay=delay, reason="not yet")
        redelivered.set()

    async with open_consumer(
        queue_url,
        handler,
        client=sqs,
        failure_backoff=30,  # Retry's delay, not the failure backoff, applies
    ) as consumer:
        await redelivered.wait()

    assert [count for count, _ in seen] == [1, 2]
    [(released_at, visibility, _)] = visibility_changes(fake_sqs)
    assert visibility == delay
    assert seen[0][1] <= released_at <= seen[0][1] + ACK_INTERVAL
    assert seen[1][1] == released_at + delay
    stats = consumer.statistics()
    assert (stats.retried, stats.failed, stats.completed, stats.deleted) == (1, 0, 1, 1)
    assert_fake_queue_empty(fake_sqs, queue_url)


@pytest.mark.parametrize("delay", [-1, -0.001, 43_201, float("inf")])
def test_retry_rejects_out_of_range_delay(delay: float) -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        Retry(delay=delay)


# -- batch handlers -------------------------------------------------------------------------------


async def test_batch_handler_failed_messages_are_not_acknowledged(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    failure_backoff = 10
    bodies = [f"m{i}" for i in range(10)]
    await send_bodies(sqs, queue_url, bodies)
    deliveries: Counter[str] = Counter()
    redelivered_at: dict[str, tuple[int, float]] = {}
    done: set[str] = set()
    reported: list[str] = []
    all_done = trio.Event()

    async def handler(messages: list[Message]) -> list[Message | str]:
        assert isinstance(messages, list)
        assert 1 <= len(messages) <= 10
        assert all(isinstance(m, Message) for m in messages)
        failed: list[Message | str] = []
        for message in messages:
            deliveries[message.body] += 1
            if message.receive_count > 1:
                redelivered_at[message.body] = (message.receive_count, trio.current_time())
            if message.receive_count == 1 and message.body == "m3":
                failed.append(message)  # a Message...
                reported.append(message.message_id)
            elif message.receive_count == 1 and message.body == "m7":
                failed.append(message.message_id)  # ...or its id
                reported.append(message.message_id)
            else:
                done.add(message.body)
        if len(done) == len(bodies):
            all_done.set()
        return failed

    async with open_consumer(
        queue_url,
        handler,
        client=sqs,
        batch=True,
        concurrency=1,
        failure_backoff=failure_backoff,
    ) as consumer:
        await all_done.wait()

    assert deliveries == Counter({b: 2 if b in ("m3", "m7") else 1 for b in bodies})
    # Both released in one call with the failure backoff, and back exactly that much later.
    [(released_at, _, _), (also_at, _, _)] = visibility_changes(fake_sqs, failure_backoff)
    assert also_at == released_at
    assert redelivered_at == {
        "m3": (2, released_at + failure_backoff),
        "m7": (2, released_at + failure_backoff),
    }
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (2, 10, 10)
    assert_fake_queue_empty(fake_sqs, queue_url)
    # The ids the handler reported failed are logged (they were not logged at all).
    [record] = [r for r in caplog.records if "batch handler reported" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.getMessage().endswith(", ".join(reported))


async def test_batch_handler_that_raises_fails_the_whole_batch(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    bodies = [f"m{i}" for i in range(6)]
    await send_bodies(sqs, queue_url, bodies)
    calls: list[list[tuple[str, int]]] = []
    done: set[str] = set()
    all_done = trio.Event()

    async def handler(messages: list[Message]) -> None:
        calls.append([(m.body, m.receive_count) for m in messages])
        if any(m.receive_count == 1 for m in messages):
            raise ValueError("the whole batch fails")
        done.update(m.body for m in messages)
        if len(done) == len(bodies):
            all_done.set()

    async with open_consumer(
        queue_url, handler, client=sqs, batch=True, concurrency=1, failure_backoff=10
    ) as consumer:
        await all_done.wait()

    first_round = [item for call in calls if call[0][1] == 1 for item in call]
    second_round = [item for call in calls if call[0][1] == 2 for item in call]
    # Nothing of a failed batch was deleted: every message came back exactly once more.
    assert sorted(b for b, _ in first_round) == bodies
    assert sorted(b for b, _ in second_round) == bodies
    assert all(count == 2 for _, count in second_round)
    assert len(visibility_changes(fake_sqs, 10)) == 6
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (6, 6, 6)
    assert_fake_queue_empty(fake_sqs, queue_url)


# -- FIFO -----------------------------------------------------------------------------------------
#
# batch_size=10 makes a whole group arrive in one poll, so that the dispatcher, not the server,
# has to keep the order of several messages of one group in hand.


async def _run_fifo_groups(
    sqs: trio_sqs.SQSClient, url: str, *, step: float, **consumer_kwargs: Any
) -> tuple[Consumer, dict[str, list[tuple[int, float, float]]]]:
    """Groups A, B, C of 5 messages each, handled in ``step`` seconds each with concurrency 10:
    return the consumer and each group's (index, start, end) in the order they ran."""
    groups = ["A", "B", "C"]
    for group in groups:
        await send_bodies(sqs, url, [f"{group}{i}" for i in range(5)], group=group)
    spans: dict[str, list[tuple[int, float, float]]] = {g: [] for g in groups}
    done = 0
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        nonlocal done
        group = message.message_group_id
        assert group is not None and message.body.startswith(group)
        start = trio.current_time()
        await trio.sleep(step)
        spans[group].append((int(message.body[1:]), start, trio.current_time()))
        done += 1
        if done == 15:
            all_done.set()

    async with open_consumer(url, handler, concurrency=10, batch_size=10, **consumer_kwargs) as c:
        assert c.fifo
        with trio.fail_after(8):
            await all_done.wait()
    return c, spans


def _assert_groups_in_order_and_concurrent(
    spans: dict[str, list[tuple[int, float, float]]],
) -> None:
    groups = sorted(spans)
    for group in groups:
        assert [index for index, _, _ in spans[group]] == [0, 1, 2, 3, 4]
        for (_, _, end), (_, next_start, _) in itertools.pairwise(spans[group]):
            assert end <= next_start, f"group {group} ran two messages at once"
    overlaps = [
        (a, b)
        for a in groups
        for b in groups
        if a < b
        for (_, s1, e1) in spans[a]
        for (_, s2, e2) in spans[b]
        if s1 < e2 and s2 < e1
    ]
    assert overlaps, "different groups never ran concurrently"


async def test_fifo_groups_run_in_order_one_at_a_time_and_concurrently_across_groups(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    queue_name: str,
) -> None:
    url = await create_fifo_queue(fake_sqs_client, queue_name)
    step = 1.0
    start = trio.current_time()
    c, spans = await _run_fifo_groups(fake_sqs_client, url, step=step, client=fake_sqs_client)
    _assert_groups_in_order_and_concurrent(spans)
    # Exactly: the three groups ran side by side from the start, each message of a group right
    # after the one before it.
    for group in spans:
        assert [(s, e) for _, s, e in spans[group]] == [
            (start + i * step, start + (i + 1) * step) for i in range(5)
        ]
    assert c.statistics().deleted == 15
    assert_fake_queue_empty(fake_sqs, url)


# Real sockets: FIFO order over moto's HTTP server (wall clock). One poller: moto's ReceiveMessage
# is not thread-safe on FIFO queues; two concurrent polls can split a group between them, out of
# order, or hand out the same message twice. Real SQS never does that.
async def test_real_sockets_fifo_groups_run_in_order_one_at_a_time(
    sqs: trio_sqs.SQSClient, queue_name: str, moto_endpoint: str
) -> None:
    url = await create_fifo_queue(sqs, queue_name)
    c, spans = await _run_fifo_groups(
        sqs, url, step=0.1, pollers=1, **FAST_STOP, **via(moto_endpoint)
    )
    _assert_groups_in_order_and_concurrent(spans)
    assert c.statistics().deleted == 15


async def test_fifo_failure_releases_rest_of_group_and_keeps_order(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    queue_name: str,
) -> None:
    sqs = fake_sqs_client
    failure_backoff = 10
    url = await create_fifo_queue(sqs, queue_name)
    await send_bodies(sqs, url, [f"G{i}" for i in range(6)], group="G")
    await send_bodies(sqs, url, [f"H{i}" for i in range(3)], group="H")
    attempts: dict[str, list[tuple[str, int]]] = {"G": [], "H": []}
    g1_runs: list[float] = []
    succeeded: set[str] = set()
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        group = message.message_group_id
        assert group is not None
        attempts[group].append((message.body, message.receive_count))
        if message.body == "G1":
            g1_runs.append(trio.current_time())
        await trio.sleep(1)
        if message.body == "G1" and message.receive_count == 1:
            raise RuntimeError("G1 fails once")
        succeeded.add(message.body)
        if len(succeeded) == 9:
            all_done.set()

    async with open_consumer(
        url,
        handler,
        client=sqs,
        concurrency=5,
        batch_size=10,
        failure_backoff=failure_backoff,
    ) as consumer:
        await all_done.wait()

    # G2..G5 were in hand when G1 failed: released unhandled (their receive count says they were
    # received once already), and the failed G1 ran again before any of them.
    assert attempts["G"] == [
        ("G0", 1),
        ("G1", 1),
        ("G1", 2),
        ("G2", 2),
        ("G3", 2),
        ("G4", 2),
        ("G5", 2),
    ]
    assert attempts["H"] == [("H0", 1), ("H1", 1), ("H2", 1)]
    # G1 failed after its 1 s of work; G2..G5 went back at once, G1 with the failure backoff,
    # and the group came back exactly when G1's backoff ended.
    failed_at = g1_runs[0] + 1
    releases = visibility_changes(fake_sqs)
    assert sorted(v for _, v, _ in releases) == [0, 0, 0, 0, failure_backoff]
    assert all(failed_at <= t <= failed_at + ACK_INTERVAL for t, _, _ in releases)
    [g1_released_at] = [t for t, v, _ in releases if v == failure_backoff]
    assert g1_runs[1] == g1_released_at + failure_backoff
    stats = consumer.statistics()
    assert stats.failed == 1
    assert stats.released == 5  # G1 with the failure backoff, G2..G5 at once
    assert stats.deleted == 9
    assert_fake_queue_empty(fake_sqs, url)


# -- resilience -----------------------------------------------------------------------------------


async def _never(message: Message) -> None:
    raise AssertionError("no message expected")


@pytest.fixture
async def fake_over_http(nursery: trio.Nursery) -> tuple[FakeSQS, str]:
    """The in-memory SQS served over HTTP on 127.0.0.1 (real sockets, wall clock), for consumers
    that open their own client from an endpoint URL."""
    fake = FakeSQS()
    endpoint = await nursery.start(serve_fake_sqs, fake)
    return fake, endpoint


# The consumer either opens its own client (the usual way) or uses the caller's. Both paths must let
# the one error out as is: when the consumer opened the client itself, the error also passes
# through the client's nursery. The caller's client is the fake in process (virtual time); a client
# of the consumer's own needs an endpoint URL: real sockets, to the fake served over HTTP.


@pytest.mark.parametrize("by", ["name", "url"])
async def test_missing_queue_fails_open_consumer_before_the_block(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    queue_name: str,
    by: str,
) -> None:
    queue = queue_name if by == "name" else f"{fake_sqs.endpoint}/123456789012/{queue_name}"
    body_ran = False
    with pytest.raises(QueueDoesNotExist) as excinfo:
        async with open_consumer(queue, _never, client=fake_sqs_client):
            body_ran = True
    assert excinfo.type is QueueDoesNotExist
    assert not body_ran
    assert calls_to(fake_sqs, "ReceiveMessage") == []


# Real sockets: the consumer opens its own client from the endpoint URL.
@pytest.mark.parametrize("by", ["name", "url"])
async def test_real_sockets_missing_queue_fails_open_consumer_with_its_own_client(
    fake_over_http: tuple[FakeSQS, str], queue_name: str, by: str
) -> None:
    fake, endpoint = fake_over_http
    queue = queue_name if by == "name" else f"{endpoint}/123456789012/{queue_name}"
    body_ran = False
    with trio.fail_after(5), pytest.raises(QueueDoesNotExist) as excinfo:
        async with open_consumer(queue, _never, **via(endpoint)):
            body_ran = True
    assert excinfo.type is QueueDoesNotExist
    assert not body_ran
    assert calls_to(fake, "ReceiveMessage") == []


async def test_queue_deleted_while_consuming_stops_and_raises_out_of_the_block(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    consumer: Consumer | None = None
    deleted_at = math.nan
    with pytest.raises(QueueDoesNotExist) as excinfo:
        async with open_consumer(queue_url, _never, client=sqs) as consumer:
            await trio.sleep(5)  # the consumer's long poll waits
            deleted_at = trio.current_time()
            await sqs.delete_queue(queue_url)
            await trio.sleep_forever()
    assert excinfo.type is QueueDoesNotExist  # not an ExceptionGroup, not a timeout
    # Stopped within the long poll that was waiting (no retries of a fatal error).
    assert trio.current_time() <= deleted_at + WAIT_TIME
    assert consumer is not None
    assert consumer.state == "stopped"
    # One failed poll per poller at most: QueueDoesNotExist is fatal, never retried.
    assert 1 <= consumer.statistics().poll_errors <= DEFAULTS.effective_pollers(False) == 2


# Real sockets: the consumer opens its own client from the endpoint URL.
async def test_real_sockets_queue_deleted_while_consuming_with_its_own_client(
    fake_over_http: tuple[FakeSQS, str], queue_name: str
) -> None:
    fake, endpoint = fake_over_http
    consumer: Consumer | None = None
    async with trio_sqs.open_client(region=REGION, endpoint_url=endpoint) as sqs:
        queue_url = await sqs.create_queue(queue_name)
        with trio.fail_after(10), pytest.raises(QueueDoesNotExist) as excinfo:
            async with open_consumer(
                queue_url, _never, wait_time=1, **FAST_STOP, **via(endpoint)
            ) as consumer:
                await sqs.delete_queue(queue_url)
                await trio.sleep_forever()
    assert excinfo.type is QueueDoesNotExist  # not an ExceptionGroup, not a timeout
    assert consumer is not None
    assert consumer.state == "stopped"
    assert consumer.statistics().poll_errors >= 1
    assert queue_name not in fake.queues


# -- run_consumer ---------------------------------------------------------------------------------


async def test_run_consumer_started_in_a_nursery_and_stopped_by_cancelling_it(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    slow = 3.0  # well inside the 10 s grace period
    await send_bodies(sqs, queue_url, ["a", "b", "c", "slow"])
    handled: list[str] = []
    slow_started_at = math.nan
    finished_slow = False
    three_done = trio.Event()

    async def handler(message: Message) -> None:
        nonlocal finished_slow, slow_started_at
        if message.body == "slow":
            slow_started_at = trio.current_time()
            await trio.sleep(slow)
            finished_slow = True
        handled.append(message.body)
        if len(handled) == 3 and not finished_slow:
            three_done.set()

    async with trio.open_nursery() as nursery:
        consumer = await nursery.start(
            functools.partial(run_consumer, queue_url, handler, client=sqs)
        )
        assert isinstance(consumer, Consumer)
        assert consumer.state == "running"
        await three_done.wait()
        assert not math.isnan(slow_started_at)
        # Cancelled while the slow handler runs: a graceful stop lets it finish and be deleted.
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()

    # Stopped as soon as the slow handler was done and its delete flushed; no poll after the
    # cancellation.
    assert trio.current_time() == slow_started_at + slow
    assert all(t <= cancelled_at for t in receive_times(fake_sqs))
    assert consumer.state == "stopped"
    assert finished_slow
    assert sorted(handled) == ["a", "b", "c", "slow"]
    stats = consumer.statistics()
    assert (stats.completed, stats.deleted, stats.cancelled_at_grace) == (4, 4, 0)
    assert_fake_queue_empty(fake_sqs, queue_url)


async def test_two_consumers_on_two_queues_in_one_program(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    queue_name: str,
) -> None:
    sqs = fake_sqs_client
    urls = {
        "left": await sqs.create_queue(f"{queue_name}-l"),
        "right": await sqs.create_queue(f"{queue_name}-r"),
    }
    for side, url in urls.items():
        await send_bodies(sqs, url, [f"{side}-{i}" for i in range(5)])
    seen: dict[str, list[str]] = {"left": [], "right": []}
    done = {side: trio.Event() for side in urls}

    def handler_for(side: str) -> Callable[[Message], Any]:
        async def handler(message: Message) -> None:
            assert message.queue_url == urls[side]
            seen[side].append(message.body)
            if len(seen[side]) == 5:
                done[side].set()

        return handler

    async with trio.open_nursery() as nursery:
        consumers = {
            side: await nursery.start(
                functools.partial(run_consumer, url, handler_for(side), client=sqs)
            )
            for side, url in urls.items()
        }
        for event in done.values():
            await event.wait()
        for consumer in consumers.values():
            consumer.stop()

    for side, url in urls.items():
        assert sorted(seen[side]) == [f"{side}-{i}" for i in range(5)]
        assert consumers[side].state == "stopped"
        assert consumers[side].statistics().deleted == 5
        assert_fake_queue_empty(fake_sqs, url)


# -- option validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"batch_size": 11}, "batch_size"),
        ({"wait_time": 21}, "wait_time"),
        ({"visibility_timeout": 5, "heartbeat_interval": 5}, "heartbeat_interval"),
        ({"visibility_timeout": 5, "heartbeat_interval": 7.5}, "heartbeat_interval"),
        ({"concurrency": 0}, "concurrency"),
        ({"grace_period": -1}, "grace_period"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
async def test_invalid_options_fail_before_any_io(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    options: dict[str, Any],
    named: str,
) -> None:
    before = len(fake_sqs.calls)  # the fixture's CreateQueue
    body_ran = False
    with pytest.raises(ConfigurationError, match=named):
        async with open_consumer(fake_queue_url, _never, client=fake_sqs_client, **options):
            body_ran = True
    assert not body_ran
    assert fake_sqs.calls[before:] == []


async def test_invalid_option_fails_without_a_server() -> None:
    # Nothing listens on this port: any request would fail with a TransportError (after retries).
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(5), pytest.raises(ConfigurationError, match="batch_size"):
        async with open_consumer(
            "orders", _never, batch_size=11, **via(f"http://127.0.0.1:{port}")
        ):
            pass


async def test_options_object_and_option_keywords_are_exclusive(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    before = len(fake_sqs.calls)
    with pytest.raises(ConfigurationError, match="not both"):
        async with open_consumer(
            fake_queue_url,
            _never,
            client=fake_sqs_client,
            options=ConsumerOptions(),
            concurrency=2,
        ):
            pass
    assert fake_sqs.calls[before:] == []
