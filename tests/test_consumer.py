"""Feature tests of the consumer against a real moto server (and the recording proxy in front of it).

The shutdown contract (no receive after stop, grace, release on stop, idle stop) is covered in
tests/test_shutdown.py; these tests cover what a running consumer does.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

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

from .recording_proxy import RecordingProxy

REGION = "us-east-1"

# Small grace so that a failing test (a handler left blocked) still stops quickly.
FAST_STOP: dict[str, Any] = {"grace_period": 1.0, "flush_timeout": 2.0}

# moto's ReceiveMessage is not thread-safe: two polls served at once can both take the same
# message (seen here under CPU load: 101-103 deliveries of 100 messages, with two receipt handles
# for one message id, well within the lease). Real SQS does not do that. Tests that count
# deliveries exactly use one poller; the tests about polling capacity keep the default pollers and
# count unique messages, and check that every received message was deleted.
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
    """Nothing visible, nothing in flight: every message was deleted."""
    leftover = await sqs.receive_messages(queue_url, wait_time=0, visibility_timeout=0)
    assert list(leftover) == []
    attributes = await sqs.get_queue_attributes(
        queue_url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


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


# -- basics -----------------------------------------------------------------------------------------


async def test_messages_are_handled_once_and_deleted(
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
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
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
    async with open_consumer(
        queue_url, handler, **FAST_STOP, **ONE_POLLER, **via(moto_endpoint)
    ) as consumer:
        states.append(consumer.state)
        before = consumer.statistics()
        with trio.fail_after(5):
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
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
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
        queue_url, handler, concurrency=25, batch_size=10, **FAST_STOP, **via(moto_endpoint)
    ) as consumer:
        with after_every_task_step(sample), trio.fail_after(10):
            await all_in.wait()
            await all_done.wait()

    assert max_running == 25
    assert max_in_flight == 25
    stats = consumer.statistics()
    assert stats.deleted == stats.received >= 40  # see ONE_POLLER
    await assert_queue_empty(sqs, queue_url)


async def _run_bounded_consumer(
    sqs: trio_sqs.SQSClient, queue_url: str, endpoint: str, *, max_buffered: int
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
        concurrency=3,
        batch_size=10,
        max_buffered=max_buffered,
        **FAST_STOP,
        **via(endpoint),
    ) as consumer:
        with after_every_task_step(sample), trio.fail_after(10):
            await all_done.wait()
    stats = consumer.statistics()
    assert stats.deleted == stats.received >= 40  # see ONE_POLLER
    await assert_queue_empty(sqs, queue_url)
    return maxima


async def test_concurrency_below_batch_size_is_never_exceeded_and_buffer_is_bounded(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    maxima = await _run_bounded_consumer(sqs, queue_url, moto_endpoint, max_buffered=10)
    assert maxima["running"] == 3
    assert 0 < maxima["buffered"] <= 10
    assert maxima["unstarted"] <= 10
    assert maxima["in_hand"] <= 3 + 10


async def test_max_buffered_below_batch_size_bounds_unstarted_messages(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    maxima = await _run_bounded_consumer(sqs, queue_url, moto_endpoint, max_buffered=2)
    assert maxima["running"] == 3
    assert maxima["buffered"] <= 2
    assert maxima["unstarted"] <= 2
    assert maxima["in_hand"] <= 3 + 2


async def test_no_poll_is_sent_without_capacity(
    sqs: trio_sqs.SQSClient, queue_url: str, proxy: RecordingProxy
) -> None:
    await send_bodies(sqs, queue_url, ["first", "second"])
    started = trio.Event()
    proceed = trio.Event()
    handled: list[str] = []
    second_done = trio.Event()

    async def handler(message: Message) -> None:
        handled.append(message.body)
        if len(handled) == 1:
            started.set()
            await proceed.wait()
        else:
            second_done.set()

    async with open_consumer(
        queue_url,
        handler,
        concurrency=1,
        batch_size=1,
        max_buffered=0,
        wait_time=1,
        **FAST_STOP,
        **via(proxy.url),
    ) as consumer:
        with trio.fail_after(10):
            await started.wait()
            polls_at_start = len(proxy.receives_after(float("-inf")))
            stats = consumer.statistics()
            assert (stats.in_flight, stats.buffered, stats.received) == (1, 0, 1)
            # Let time pass: a consumer that polls without room would send one now (wait_time
            # is 1 s, so even a poll already open would have come back and been renewed).
            await trio.sleep(1.5)
            assert len(proxy.receives_after(float("-inf"))) == polls_at_start
            assert proxy.open_receives() == 0
            assert consumer.statistics().received == 1
            # Room again: polling resumes.
            t = trio.current_time()
            proceed.set()
            await proxy.wait_for(lambda p: len(p.receives_after(t)) >= 1)
            await second_done.wait()
    assert handled == ["first", "second"]


# -- acknowledgements -----------------------------------------------------------------------------


async def test_deletes_are_batched_and_requests_per_message_are_few(
    sqs: trio_sqs.SQSClient, queue_url: str, proxy: RecordingProxy
) -> None:
    total = 100
    sent = set(await send_bodies(sqs, queue_url, [f"m{i}" for i in range(total)]))
    done: set[str] = set()
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        done.add(message.message_id)
        if done == sent:
            all_done.set()

    async with open_consumer(queue_url, handler, **FAST_STOP, **via(proxy.url)) as consumer:
        with trio.fail_after(15):
            await all_done.wait()
    stats = consumer.statistics()
    assert stats.deleted == stats.received >= total  # see ONE_POLLER
    await assert_queue_empty(sqs, queue_url)

    operations = Counter(proxy.operations())
    deletes = operations["DeleteMessageBatch"]
    requests = sum(operations.values())
    ratio = requests / total
    print(f"\n{total} messages: {dict(operations)}; {ratio:.2f} requests per message")
    assert operations["DeleteMessage"] == 0
    assert total // 10 <= deletes < total // 2
    assert ratio < 0.5


# -- visibility heartbeats ------------------------------------------------------------------------


@pytest.mark.deadline(20)
async def test_heartbeats_keep_a_long_handler_s_message_invisible(
    sqs: trio_sqs.SQSClient, queue_url: str, proxy: RecordingProxy
) -> None:
    [message_id] = await send_bodies(sqs, queue_url, ["slow"])
    started = trio.Event()
    calls: list[str] = []

    async def handler(message: Message) -> None:
        calls.append(message.message_id)
        started.set()
        await trio.sleep(4)

    async with open_consumer(
        queue_url,
        handler,
        visibility_timeout=2,
        heartbeat_interval=0.5,
        **FAST_STOP,
        **ONE_POLLER,
        **via(proxy.url),
    ) as consumer:
        with trio.fail_after(5):
            await started.wait()
        # Without heartbeats the lease ends 2 s after receipt. This long poll looks until the
        # handler is about to finish (moto re-checks expired visibility about once a second).
        with trio.fail_after(7):
            seen = await sqs.receive_messages(queue_url, wait_time=4, visibility_timeout=0)
        assert list(seen) == []
        with trio.fail_after(5):
            t = trio.current_time()
            await proxy.wait_for(
                lambda p: any(
                    r.operation == "DeleteMessageBatch" and r.arrived_at >= t for r in p.requests
                )
            )
        # Time for a heartbeat that was wrongly still due to show up.
        await trio.sleep(1.0)

    assert calls == [message_id]
    stats = consumer.statistics()
    assert stats.visibility_extensions >= 2
    assert stats.heartbeat_errors == 0
    assert stats.deleted == 1
    operations = proxy.operations()
    delete_at = operations.index("DeleteMessageBatch")
    assert operations.count("ChangeMessageVisibilityBatch") >= 2
    assert "ChangeMessageVisibilityBatch" not in operations[delete_at:]
    await assert_queue_empty(sqs, queue_url)


# -- handler timeout, failures, Retry -------------------------------------------------------------


async def test_handler_timeout_cancels_the_handler_and_releases_with_failure_backoff(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    [message_id] = await send_bodies(sqs, queue_url, ["sleepy"])
    attempts: list[tuple[int, float]] = []
    cancelled_at: list[float] = []
    redelivered = trio.Event()

    async def handler(message: Message) -> None:
        assert message.message_id == message_id
        attempts.append((message.receive_count, trio.current_time()))
        if message.receive_count == 1:
            try:
                await trio.sleep(10)
            except trio.Cancelled:
                cancelled_at.append(trio.current_time())
                raise
        else:
            redelivered.set()

    async with open_consumer(
        queue_url,
        handler,
        handler_timeout=0.3,
        failure_backoff=1,
        visibility_timeout=10,
        **FAST_STOP,
        **ONE_POLLER,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
            await redelivered.wait()

    assert [count for count, _ in attempts] == [1, 2]
    assert len(cancelled_at) == 1
    first_start, second_start = attempts[0][1], attempts[1][1]
    assert 0.25 <= cancelled_at[0] - first_start < 1.0
    gap = second_start - cancelled_at[0]
    # Released with the 1 s failure backoff, not left to the 10 s lease (moto looks at expired
    # visibility about once a second during a long poll).
    assert 0.9 <= gap < 4.0, gap
    stats = consumer.statistics()
    assert (stats.timed_out, stats.completed, stats.failed) == (1, 1, 0)
    assert stats.released == 1
    assert stats.deleted == 1
    await assert_queue_empty(sqs, queue_url)


async def test_failed_message_comes_back_after_backoff_and_consumer_keeps_going(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
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
        queue_url,
        handler,
        failure_backoff=1,
        visibility_timeout=10,
        **FAST_STOP,
        **ONE_POLLER,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
            await failed_once.wait()
            failed_at = trio.current_time()
            # The consumer keeps running after a failure: new messages are handled.
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
    gap = by_body["bad"][1][1] - failed_at
    assert 0.9 <= gap < 4.0, gap
    # "late" was sent after the failure and handled before the failed message came back.
    assert by_body["late"][0][1] < by_body["bad"][1][1]
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (1, 5, 5)
    assert stats.released == 1
    await assert_queue_empty(sqs, queue_url)


async def test_retry_exception_redelivers_after_its_delay(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    await send_bodies(sqs, queue_url, ["later"])
    seen: list[tuple[int, float]] = []
    redelivered = trio.Event()

    async def handler(message: Message) -> None:
        seen.append((message.receive_count, trio.current_time()))
        if message.receive_count == 1:
            raise Retry(delay=1, reason="not yet")
        redelivered.set()

    async with open_consumer(
        queue_url,
        handler,
        failure_backoff=30,  # Retry's delay, not the failure backoff, applies
        visibility_timeout=10,
        **FAST_STOP,
        **ONE_POLLER,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
            await redelivered.wait()

    assert [count for count, _ in seen] == [1, 2]
    gap = seen[1][1] - seen[0][1]
    assert 0.9 <= gap < 4.0, gap
    stats = consumer.statistics()
    assert (stats.retried, stats.failed, stats.completed, stats.deleted) == (1, 0, 1, 1)
    await assert_queue_empty(sqs, queue_url)


@pytest.mark.parametrize("delay", [-1, -0.001, 43_201, float("inf")])
def test_retry_rejects_out_of_range_delay(delay: float) -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        Retry(delay=delay)


# -- batch handlers -------------------------------------------------------------------------------


async def test_batch_handler_failed_messages_are_not_acknowledged(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    bodies = [f"m{i}" for i in range(10)]
    await send_bodies(sqs, queue_url, bodies)
    deliveries: Counter[str] = Counter()
    redelivered_counts: dict[str, int] = {}
    done: set[str] = set()
    all_done = trio.Event()

    async def handler(messages: list[Message]) -> list[Message | str]:
        assert isinstance(messages, list)
        assert 1 <= len(messages) <= 10
        assert all(isinstance(m, Message) for m in messages)
        failed: list[Message | str] = []
        for message in messages:
            deliveries[message.body] += 1
            if message.receive_count > 1:
                redelivered_counts[message.body] = message.receive_count
            if message.receive_count == 1 and message.body == "m3":
                failed.append(message)  # a Message...
            elif message.receive_count == 1 and message.body == "m7":
                failed.append(message.message_id)  # ...or its id
            else:
                done.add(message.body)
        if len(done) == len(bodies):
            all_done.set()
        return failed

    async with open_consumer(
        queue_url,
        handler,
        batch=True,
        concurrency=1,
        failure_backoff=1,
        **FAST_STOP,
        **ONE_POLLER,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
            await all_done.wait()

    assert deliveries == Counter({b: 2 if b in ("m3", "m7") else 1 for b in bodies})
    assert redelivered_counts == {"m3": 2, "m7": 2}
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (2, 10, 10)
    await assert_queue_empty(sqs, queue_url)


async def test_batch_handler_that_raises_fails_the_whole_batch(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
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
        queue_url,
        handler,
        batch=True,
        concurrency=1,
        failure_backoff=1,
        **FAST_STOP,
        **ONE_POLLER,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
            await all_done.wait()

    first_round = [item for call in calls if call[0][1] == 1 for item in call]
    second_round = [item for call in calls if call[0][1] == 2 for item in call]
    # Nothing of a failed batch was deleted: every message came back exactly once more.
    assert sorted(b for b, _ in first_round) == bodies
    assert sorted(b for b, _ in second_round) == bodies
    assert all(count == 2 for _, count in second_round)
    stats = consumer.statistics()
    assert (stats.failed, stats.completed, stats.deleted) == (6, 6, 6)
    await assert_queue_empty(sqs, queue_url)


# -- FIFO -----------------------------------------------------------------------------------------
#
# One poller: moto's ReceiveMessage is not thread-safe on FIFO queues. Two concurrent polls each
# take a snapshot of the groups in flight and can split a group between them, out of order, or
# even hand out the same message twice (observed here: C1-C3 to one poll, C0 and C4 to the other).
# Real SQS never does that; with one poller moto holds a group back while it is in flight.
# batch_size=10 makes a whole group arrive in one poll, so that the dispatcher, not the server,
# has to keep the order of several messages of one group in hand.


async def test_fifo_groups_run_in_order_one_at_a_time_and_concurrently_across_groups(
    sqs: trio_sqs.SQSClient, queue_name: str, moto_endpoint: str
) -> None:
    url = await create_fifo_queue(sqs, queue_name)
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
        await trio.sleep(0.1)
        spans[group].append((int(message.body[1:]), start, trio.current_time()))
        done += 1
        if done == 15:
            all_done.set()

    async with open_consumer(
        url, handler, concurrency=10, batch_size=10, pollers=1, **FAST_STOP, **via(moto_endpoint)
    ) as c:
        assert c.fifo
        with trio.fail_after(8):
            await all_done.wait()

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
    assert c.statistics().deleted == 15


async def test_fifo_failure_releases_rest_of_group_and_keeps_order(
    sqs: trio_sqs.SQSClient, queue_name: str, moto_endpoint: str
) -> None:
    url = await create_fifo_queue(sqs, queue_name)
    await send_bodies(sqs, url, [f"G{i}" for i in range(6)], group="G")
    await send_bodies(sqs, url, [f"H{i}" for i in range(3)], group="H")
    attempts: dict[str, list[tuple[str, int]]] = {"G": [], "H": []}
    succeeded: set[str] = set()
    all_done = trio.Event()

    async def handler(message: Message) -> None:
        group = message.message_group_id
        assert group is not None
        attempts[group].append((message.body, message.receive_count))
        await trio.sleep(0.02)
        if message.body == "G1" and message.receive_count == 1:
            raise RuntimeError("G1 fails once")
        succeeded.add(message.body)
        if len(succeeded) == 9:
            all_done.set()

    async with open_consumer(
        url,
        handler,
        concurrency=5,
        batch_size=10,
        pollers=1,
        failure_backoff=1,
        **FAST_STOP,
        **via(moto_endpoint),
    ) as consumer:
        with trio.fail_after(8):
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
    stats = consumer.statistics()
    assert stats.failed == 1
    assert stats.released == 5  # G1 with the failure backoff, G2..G5 at once
    assert stats.deleted == 9
    await assert_queue_empty(sqs, url)


# -- resilience -----------------------------------------------------------------------------------


async def _never(message: Message) -> None:
    raise AssertionError("no message expected")


# The consumer either opens its own client (the usual way) or uses the caller's. Both paths must let
# the one error out as is: when the consumer opened the client itself, the error also passes
# through the client's nursery.
CLIENTS = ["own", "shared"]


def client_kwargs(which: str, sqs: trio_sqs.SQSClient, endpoint: str) -> dict[str, Any]:
    return via(endpoint) if which == "own" else {"client": sqs}


@pytest.mark.parametrize("which_client", CLIENTS)
@pytest.mark.parametrize("by", ["name", "url"])
async def test_missing_queue_fails_open_consumer_before_the_block(
    sqs: trio_sqs.SQSClient, moto_endpoint: str, queue_name: str, by: str, which_client: str
) -> None:
    queue = queue_name if by == "name" else f"{moto_endpoint}/123456789012/{queue_name}"
    body_ran = False
    with trio.fail_after(5), pytest.raises(QueueDoesNotExist) as excinfo:
        async with open_consumer(queue, _never, **client_kwargs(which_client, sqs, moto_endpoint)):
            body_ran = True
    assert excinfo.type is QueueDoesNotExist
    assert not body_ran


@pytest.mark.parametrize("which_client", CLIENTS)
async def test_queue_deleted_while_consuming_stops_and_raises_out_of_the_block(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str, which_client: str
) -> None:
    consumer: Consumer | None = None
    with trio.fail_after(10), pytest.raises(QueueDoesNotExist) as excinfo:
        async with open_consumer(
            queue_url,
            _never,
            wait_time=1,
            **FAST_STOP,
            **client_kwargs(which_client, sqs, moto_endpoint),
        ) as consumer:
            await sqs.delete_queue(queue_url)
            await trio.sleep_forever()
    assert excinfo.type is QueueDoesNotExist  # not an ExceptionGroup, not a timeout
    assert consumer is not None
    assert consumer.state == "stopped"
    assert consumer.statistics().poll_errors >= 1


# -- run_consumer ---------------------------------------------------------------------------------


async def test_run_consumer_started_in_a_nursery_and_stopped_by_cancelling_it(
    sqs: trio_sqs.SQSClient, queue_url: str, moto_endpoint: str
) -> None:
    await send_bodies(sqs, queue_url, ["a", "b", "c", "slow"])
    handled: list[str] = []
    slow_started = trio.Event()
    finished_slow = False
    three_done = trio.Event()

    async def handler(message: Message) -> None:
        nonlocal finished_slow
        if message.body == "slow":
            slow_started.set()
            await trio.sleep(0.3)
            finished_slow = True
        handled.append(message.body)
        if len(handled) == 3 and not finished_slow:
            three_done.set()

    async with trio.open_nursery() as nursery:
        consumer = await nursery.start(
            functools.partial(
                run_consumer, queue_url, handler, **FAST_STOP, **ONE_POLLER, **via(moto_endpoint)
            )
        )
        assert isinstance(consumer, Consumer)
        assert consumer.state == "running"
        with trio.fail_after(5):
            await three_done.wait()
            await slow_started.wait()
        # Cancelled while the slow handler runs: a graceful stop lets it finish and be deleted.
        nursery.cancel_scope.cancel()

    assert consumer.state == "stopped"
    assert finished_slow
    assert sorted(handled) == ["a", "b", "c", "slow"]
    stats = consumer.statistics()
    assert (stats.completed, stats.deleted, stats.cancelled_at_grace) == (4, 4, 0)
    await assert_queue_empty(sqs, queue_url)


async def test_two_consumers_on_two_queues_in_one_program(
    sqs: trio_sqs.SQSClient, queue_name: str, moto_endpoint: str
) -> None:
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
            seen[side].append(message.body)
            if len(seen[side]) == 5:
                done[side].set()

        return handler

    async with trio.open_nursery() as nursery:
        consumers = {
            side: await nursery.start(
                functools.partial(
                    run_consumer,
                    url,
                    handler_for(side),
                    **FAST_STOP,
                    **ONE_POLLER,
                    **via(moto_endpoint),
                )
            )
            for side, url in urls.items()
        }
        with trio.fail_after(5):
            for event in done.values():
                await event.wait()
        for consumer in consumers.values():
            consumer.stop()

    for side, url in urls.items():
        assert sorted(seen[side]) == [f"{side}-{i}" for i in range(5)]
        assert consumers[side].state == "stopped"
        assert consumers[side].statistics().deleted == 5
        await assert_queue_empty(sqs, url)


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
    queue_url: str, proxy: RecordingProxy, options: dict[str, Any], named: str
) -> None:
    body_ran = False
    with trio.fail_after(5), pytest.raises(ConfigurationError, match=named):
        async with open_consumer(queue_url, _never, **options, **via(proxy.url)):
            body_ran = True
    assert not body_ran
    assert proxy.requests == []


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
    queue_url: str, proxy: RecordingProxy
) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        async with open_consumer(
            queue_url, _never, options=ConsumerOptions(), concurrency=2, **via(proxy.url)
        ):
            pass
    assert proxy.requests == []
