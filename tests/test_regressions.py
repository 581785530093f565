"""Regression tests for the findings of the consumer review (fixed in "Consumer hardening from
review"), one test per finding.

Each test names the finding it guards. The consumer's own shutdown contract is in
tests/test_shutdown.py and its features in tests/test_consumer.py; these tests pin the corner
cases the review found: errors escaping handlers, the heartbeat schedule, idle stops next to a
release, the hard bound, abandoned credential refreshes, closed clients, short polls and malformed
messages.

The consumer's tests run on the in-memory SQS (``trio_sqs.testing``) and virtual time
(``autojump_clock``), with exact times; the credential tests run worker threads and stay on the
real clock (a thread's work takes no virtual time, and the autojumping clock would not wait for
it).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import sys
import threading
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from botocore.credentials import ReadOnlyCredentials

import trio_sqs
from trio_sqs import ClientClosedError, Message, MessageCorruptError, Retry
from trio_sqs._consumer import SHUTDOWN_MARGIN
from trio_sqs._credentials import CredentialCache
from trio_sqs._message import CorruptMessage, message_from_wire
from trio_sqs._polling import EMPTY_SHORT_POLL_PAUSE
from trio_sqs.testing import FakeSQS, QueueCounts

from .conftest import wait_until, worker_thread_finished

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

# The consumer's default long poll.
WAIT_TIME = 20


class Boom(BaseException):
    """Not an Exception: like SystemExit or a KeyboardInterrupt delivered into handler code."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, with exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def visible(fake: FakeSQS, url: str) -> list[str]:
    """The bodies of the messages visible right now (read from the fake, taking nothing)."""
    return [m.body for m in fake.queue(url).messages() if m.state == "visible"]


def receive_times(fake: FakeSQS) -> list[float]:
    return [c.time for c in fake.calls if c.operation == "ReceiveMessage"]


# -- r2: a BaseException in a handler --------------------------------------------------------------


async def _stop_by_a_base_exception(
    sqs: trio_sqs.SQSClient, queue_url: str, *, grace: float, slow: float
) -> tuple[BaseException, float, bool, trio_sqs.ConsumerStatistics]:
    """Two messages: "slow" is handled in ``slow`` seconds, "boom"'s handler raises Boom as soon
    as "slow" runs. Return what came out of open_consumer, the time from Boom to the end of
    the block, whether "slow" finished, and the final statistics."""
    for body in ("slow", "boom"):
        await sqs.send_message(queue_url, body)
    slow_running = trio.Event()
    slow_finished = False
    boom_at = 0.0

    async def handler(message: Message) -> None:
        nonlocal slow_finished, boom_at
        if message.body == "slow":
            slow_running.set()
            await trio.sleep(slow)  # well inside the grace period
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
            grace_period=grace,
            flush_timeout=5.0,
        ) as consumer:
            await trio.sleep_forever()
    return caught.value, trio.current_time() - boom_at, slow_finished, consumer.statistics()


async def test_base_exception_in_handler_stops_gracefully_and_propagates(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    slow = 3.0
    caught, took, slow_finished, stats = await _stop_by_a_base_exception(
        fake_sqs_client, fake_queue_url, grace=10.0, slow=slow
    )

    # Boom itself, or a group whose only error is Boom.
    errors = [e for e in leaves(caught) if not isinstance(e, trio.Cancelled)]
    assert len(errors) == 1 and isinstance(errors[0], Boom), repr(caught)
    # Both handlers started together: the consumer stopped the moment the slow one was done and
    # the flush was sent (well within grace + flush + margin).
    assert took == slow
    assert stats.state == "stopped"
    # The slow handler got its grace, and the flush ran: its delete was sent.
    assert slow_finished
    assert stats.completed == stats.deleted == 1
    assert stats.in_flight == 0 and stats.unflushed == 0
    # The message whose handler raised Boom was released at once, not left to wait out its 30 s
    # lease, with a visibility that outlasts the poll on the wire (sent at 0, 20 s, + 1 s), if
    # the poller had sent one before the stop (Trio's scheduling order decides).
    cover = 21 if len(receive_times(fake_sqs)) == 2 else 0
    releases = [
        e["VisibilityTimeout"]
        for c in fake_sqs.calls
        if c.operation == "ChangeMessageVisibilityBatch"
        for e in c.params["Entries"]
    ]
    assert releases == [cover]
    assert stats.released == 1


async def test_base_exception_in_handler_leaves_its_message_visible_not_orphaned(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await _stop_by_a_base_exception(fake_sqs_client, fake_queue_url, grace=10.0, slow=3.0)
    # The poll sent at 0 was aborted at 3 s; SQS ran it on until 20 s, but the released message
    # was hidden from it until 21 s: it took nothing, and the message is visible from then on.
    queue = fake_sqs.queue(fake_queue_url)
    assert queue.orphaned_deliveries == 0
    await trio.sleep_until(21)
    assert queue.waiting_polls == 0
    assert visible(fake_sqs, fake_queue_url) == ["boom"]
    assert queue.counts() == QueueCounts(visible=1, in_flight=0, delayed=0)


# -- r1: an exception group escaping a handler while it is being cancelled ---------------------------


async def test_handler_group_raised_while_timed_out_is_a_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    handler_timeout = 5.0
    failing = trio.Event()
    good_done = trio.Event()
    bad_back = trio.Event()
    attempts: list[tuple[int, float]] = []
    failed_at = math.nan

    async def child() -> None:
        nonlocal failed_at
        try:
            await trio.sleep_forever()
        finally:
            failed_at = trio.current_time()
            failing.set()
            raise ValueError("cleanup failed while cancelled")

    async def handler(message: Message) -> None:
        if message.body == "good":
            good_done.set()
            return
        attempts.append((message.receive_count, trio.current_time()))
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
        handler_timeout=handler_timeout,
        failure_backoff=0,  # a failed message comes back at once
        concurrency=2,
        pollers=1,
    ) as consumer:
        await failing.wait()
        # The consumer goes on: a message sent after the failure is handled...
        await sqs.send_message(queue_url, "good")
        await good_done.wait()
        # ...and the failed one comes back.
        await bad_back.wait()
        running = consumer.statistics()

    assert running.state == "running"
    assert [count for count, _ in attempts] == [1, 2]
    # The timeout fired exactly handler_timeout after the handler started; the message was
    # released (visibility 0) and taken again by the consumer's waiting poll when that landed.
    assert failed_at == attempts[0][1] + handler_timeout
    [release] = [c for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"]
    assert [e["VisibilityTimeout"] for e in release.params["Entries"]] == [0]
    assert attempts[1][1] == release.time
    assert running.timed_out + running.failed == 1
    stats = consumer.statistics()
    assert stats.completed == stats.deleted == 2
    assert fake_sqs.queue(queue_url).counts() == QueueCounts(visible=0, in_flight=0, delayed=0)


# -- r3: the heartbeat schedule --------------------------------------------------------------------


@pytest.mark.parametrize("interval", [1.0, 2.5, 2.9])
async def test_heartbeats_keep_a_short_lease_alive_at_any_accepted_interval(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    interval: float,
) -> None:
    sqs, queue_url = fake_sqs_client, fake_queue_url
    lease, work = 3, 60.0
    await sqs.send_message(queue_url, "long job")
    calls: list[float] = []
    done = trio.Event()

    async def handler(message: Message) -> None:
        calls.append(trio.current_time())
        if len(calls) > 1:
            done.set()  # delivered again while the first call runs: the lease lapsed
            return
        await trio.sleep(work)
        done.set()

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=sqs,
        visibility_timeout=lease,
        heartbeat_interval=interval,  # accepted: shorter than the lease
        # A second handler slot and a waiting poller: the consumer itself takes the message
        # again the moment its lease lapses.
        concurrency=2,
        pollers=1,
        grace_period=0,
        flush_timeout=1.0,
    ) as consumer:
        await done.wait()

    assert len(calls) == 1, f"handler called at {[round(t - calls[0], 2) for t in calls]}"
    # Every extension came at most one interval after the receipt or the one before.
    beats = [
        c.time
        for c in fake_sqs.calls
        if c.operation == "ChangeMessageVisibilityBatch"
        and c.params["Entries"][0]["VisibilityTimeout"] == lease
    ]
    gaps = [b - a for a, b in itertools.pairwise([calls[0], *beats])]
    assert gaps and all(0 < gap <= interval for gap in gaps), gaps
    stats = consumer.statistics()
    assert stats.visibility_extensions == len(beats) >= work // interval
    assert stats.heartbeat_errors == 0
    assert stats.received == stats.completed == stats.deleted == 1


# -- r9: idle stop right after a release -----------------------------------------------------------


async def test_idle_stop_right_after_a_release_is_immediate_and_hides_the_release(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """Issue items 2 and 3: a stop right after a release, with no handler running, takes no
    time (it used to wait up to flush_timeout / 2 for the poll to land), and the poll it aborts
    cannot take the released message (it used to be swallowed, or re-received and released
    again)."""
    sqs, queue_url = fake_sqs_client, fake_queue_url
    await sqs.send_message(queue_url, "again")
    released_at: list[float] = []

    async def handler(message: Message) -> None:
        released_at.append(trio.current_time())
        raise Retry(0)

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=sqs,
        poll_on_stop="land",
        pollers=1,
        concurrency=1,
        max_buffered=0,
        visibility_timeout=30,
        grace_period=10.0,
        flush_timeout=20.0,
    ) as consumer:
        await wait_until(
            lambda: bool(released_at) and any(t >= released_at[0] for t in receive_times(fake_sqs))
        )
        # The poller is parked in its long poll and knows it is on the wire; the release is still
        # queued (the batcher waits ack_interval), and no handler runs: an "idle" stop.
        await trio.testing.wait_all_tasks_blocked()
        assert consumer.statistics().in_flight == 0
        assert fake_sqs.queue(queue_url).waiting_polls == 1
        assert [c for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"] == []
        poll_sent_at = receive_times(fake_sqs)[-1]
        stopped_at = trio.current_time()
        consumer.stop()

    assert trio.current_time() == stopped_at  # nothing held the idle stop open
    queue = fake_sqs.queue(queue_url)
    assert all(t <= stopped_at for t in receive_times(fake_sqs))
    # The release went out at stop with a visibility that outlasts the aborted poll, which SQS
    # runs on until poll_sent_at + 20 (+ 1 s of slack): it took nothing.
    [release] = [c for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"]
    [entry] = release.params["Entries"]
    assert release.time == stopped_at
    assert entry["VisibilityTimeout"] == poll_sent_at + 20 + 1 - stopped_at == 21
    stats = consumer.statistics()
    assert stats.aborted_polls == 1 and stats.retried == 1
    assert stats.received == stats.released == 1
    assert queue.orphaned_deliveries == 0
    await trio.sleep_until(stopped_at + 21)
    assert queue.waiting_polls == 0
    assert visible(fake_sqs, queue_url) == ["again"]
    # Received once, by the handler: the stop raised its receive count by nothing.
    [message] = queue.messages()
    assert message.receive_count == 1
    assert stats.unflushed == 0


# -- r5: the hard bound ----------------------------------------------------------------------------

HARD_BOUND_GRACE = 10.0
HARD_BOUND_FLUSH = 5.0
# The handler's own shielded cleanup ends this long after the hard bound.
CLEANUP_OVERRUN = 5.0


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
        grace_period=HARD_BOUND_GRACE,
        flush_timeout=HARD_BOUND_FLUSH,
    ) as consumer:
        await running.wait()
        t0 = trio.current_time()
        consumer.stop()
    return consumer.statistics(), cleanup_ended, trio.current_time() - t0


async def test_hard_bound_counts_what_it_leaves_behind(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sqs.consumer")
    stats, cleanup_ended, took = await _stop_under_a_self_shielding_handler(
        fake_sqs_client, fake_queue_url
    )

    assert stats.state == "stopped"
    assert stats.cancelled_at_grace == 1
    # The release queued when the handler finally returned was never sent: counted and logged,
    # not silently lost.
    assert stats.released == 0
    assert stats.unflushed >= 1
    assert [
        e
        for c in fake_sqs.calls
        if c.operation == "ChangeMessageVisibilityBatch"
        for e in c.params["Entries"]
        if e["VisibilityTimeout"] == 0
    ] == []
    assert [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "trio_sqs.consumer"
    ]
    # The handler's cleanup ran to its own end, past the bound...
    bound = HARD_BOUND_GRACE + HARD_BOUND_FLUSH + SHUTDOWN_MARGIN
    assert cleanup_ended == bound + CLEANUP_OVERRUN
    # ...and nothing of the consumer's own runs past it: it is done as soon as the handler is.
    assert took == cleanup_ended


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
                # A slow STS / IMDS round trip. No timeout: the test sets ``proceed`` in a
                # ``finally``, and a timeout would only let a slow machine change the scenario.
                self.proceed.wait()
                self.generation += 1
                self.expiring = False
            return ReadOnlyCredentials(self.access_key, "secret", f"token{self.generation}")


async def test_abandoned_credential_refresh_still_updates_the_snapshot(
    one_worker_thread: trio.CapacityLimiter,
) -> None:
    source = RotatingSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"
    assert cache.refreshes == 1

    source.expiring = True  # the mandatory window: the next get() refreshes
    source.proceed.clear()
    source.entered = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.get)
                await source.entered.wait()
                scope.cancel()  # e.g. a request under the caller's timeout
        assert scope.cancelled_caught
        # The refresh is still in its thread (blocked on ``proceed``): nothing read yet.
        assert source.generation == 1 and cache.refreshes == 1
    finally:
        source.proceed.set()
    await worker_thread_finished(one_worker_thread)

    # The abandoned thread refreshed the source and stored the new keys itself...
    assert source.generation == 2 and not source.refresh_needed()
    assert cache.refreshes == 2
    # ...and they serve the next request, which does not read the source again.
    assert (await cache.get()).access_key == "AKIDGEN2"
    assert cache.refreshes == 2 and source.generation == 2


async def test_refresher_picks_up_a_source_refreshed_behind_its_back(
    one_worker_thread: trio.CapacityLimiter,
) -> None:
    source = RotatingSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"

    source.rotate()
    source.entered = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(cache.run_refresher, check_interval=0.01))
        # No timeout of its own: the test's deadline (conftest) fails it if the refresher never
        # reads the source.
        await source.entered.wait()
        # ``entered`` is set as the read starts: let it finish before stopping the refresher
        # (an abandoned read is the test above's business).
        await worker_thread_finished(one_worker_thread)
        nursery.cancel_scope.cancel()

    assert cache.refreshes == 2  # the refresher's one read stored what it got
    assert (await cache.get()).access_key == "AKIDGEN2"
    assert source.generation == 2


# -- r7: a closed client ---------------------------------------------------------------------------


async def test_closed_client_stops_the_consumer_with_client_closed_error(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    client, url = fake_sqs_client, fake_queue_url

    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    with pytest.raises(ClientClosedError):
        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            pollers=1,
            error_backoff=0.2,
            max_error_backoff=0.4,
        ) as consumer:
            await trio.sleep(5)  # the long poll waits
            closed_at = trio.current_time()
            client._closed = True  # what leaving the client's `async with` does
            with trio.move_on_after(3 * WAIT_TIME):
                await consumer.wait_stopped()
    stopped_after = trio.current_time() - closed_at

    stats = consumer.statistics()
    # It stops when the poll in flight comes back (20 s after it was sent, at 0), instead of
    # retrying forever: the next poll finds the client closed, and that is final.
    assert stats.state == "stopped", f"still {stats.state} with {stats.poll_errors} poll errors"
    assert stopped_after == WAIT_TIME - 5
    assert stats.poll_errors == 1
    assert receive_times(fake_sqs) == [closed_at - 5]


# -- r8: short polls on an idle queue --------------------------------------------------------------


async def test_short_polls_on_an_idle_queue_pause(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    pollers = 2
    window = 10.5  # the measurement window
    async with trio_sqs.open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, wait_time=0, pollers=pollers
    ) as consumer:
        start = trio.current_time()
        await trio.sleep(window)
        stats = consumer.statistics()

    # Polls that come back short leave one poller of the two polling: it sends one short poll,
    # finds the queue empty, and pauses a second: one poll at each whole second of the window,
    # and none in between.
    assert EMPTY_SHORT_POLL_PAUSE == 1.0
    polls = math.floor(window / EMPTY_SHORT_POLL_PAUSE) + 1
    assert Counter(receive_times(fake_sqs)) == {
        start + k * EMPTY_SHORT_POLL_PAUSE: 1 for k in range(polls)
    }
    assert stats.empty_polls == stats.polls == polls


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
