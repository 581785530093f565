"""Second adversarial pass on the fixes of 36bcf33 and 5231d0f: Leases.cover/rehide (messages
released before or around the stop hidden again from our own abandoned polls), Polling's ``grew``
callback, ``_within_ask``/``hand_back``, Batcher._requeue, the delete window cap
(``effective_max_ack_interval``), releases sent with retry=False, EXTRA_POLL_WAIT and the batch
window growth rule. Everything on the in-memory SQS under MockClock."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import httpx
import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs.testing import FakeSQS, open_fake_client
from trio_sqs.testing._service import RecordedCall

from .test_adversarial import Greedy

GRACE = 10.0
FLUSH = 5.0
BOUND = GRACE + FLUSH + 0.5


def _after(calls: Sequence[RecordedCall], op: str, url: str, t: float) -> list[RecordedCall]:
    return [
        c for c in calls if c.operation == op and c.params.get("QueueUrl") == url and c.time >= t
    ]


def _entries(calls: Sequence[RecordedCall]) -> list[dict[str, object]]:
    return [e for c in calls for e in c.params["Entries"]]


async def _send_n(client: trio_sqs.SQSClient, url: str, n: int, **kw: object) -> list[str]:
    ids: list[str] = []
    entries = [trio_sqs.SendEntry(body=f"m{i}", **kw) for i in range(n)]  # type: ignore[arg-type]
    for start in range(0, n, 10):
        sent, result = await client.send_message_batch(url, entries[start : start + 10])
        assert result.ok
        ids.extend(s.message_id for s in sent)
    return ids


# -- re-hide loops: a teardown with many failed messages and several polls ---------------------------


@pytest.mark.parametrize("latency", [0.0, 0.3])
async def test_teardown_with_many_failures_hides_each_once_and_ends_in_bound(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, latency: float
) -> None:
    """40 messages fail (backoff 2 s) on a consumer with several polls; it stops 1 s later. With
    latency, the releases are still on the wire at t0 and are confirmed after it (rehide from
    _released). Each message is hidden again exactly once, in 4 calls: no release confirmed
    re-queues another; the shutdown is bounded and flushes everything."""
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(f"adv2-many-{int(latency * 10)}")
        ids = await _send_n(client, url, 40)
        failed = 0
        all_failed = trio.Event()

        async def handler(message: Message) -> None:
            nonlocal failed
            failed += 1
            if failed == 40:
                all_failed.set()
            raise RuntimeError("fails")

        if latency:
            for op in ("ReceiveMessage", "ChangeMessageVisibilityBatch", "DeleteMessageBatch"):
                fake_sqs.faults.delay(op, latency, times=10**9)
        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            concurrency=40,
            batch_size=10,
            wait_time=20,
            failure_backoff=2,
            grace_period=GRACE,
            flush_timeout=FLUSH,
        ) as consumer:
            await all_failed.wait()
            await trio.sleep(0.15 if latency else 1.0)
            t0 = trio.current_time()
            before = consumer.statistics()
        took = trio.current_time() - t0
        assert took <= BOUND
        assert before.failed == 40 and before.received == 40
        stats = consumer.statistics()
        assert stats.unflushed == 0 and stats.released == 40 and stats.failed == 40
        changes = _after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, t0)
        entries = _entries(changes)
        # Each of the 40 hidden again once, 10 per call; a release still on the wire at t0 is
        # hidden again at t0 and once more when its own answer comes back (in case SQS applied
        # it last), never more: nothing loops.
        handles = Counter(e["ReceiptHandle"] for e in entries)
        assert len(handles) == 40 and max(handles.values()) <= (2 if latency else 1)
        assert len(changes) <= (8 if latency else 4)
        assert all(int(e["VisibilityTimeout"]) > 2 for e in entries)  # type: ignore[call-overload]
        assert consumer._leases._releases.pending == 0
        assert _after(fake_sqs.calls, "ReceiveMessage", url, t0 + 1e-9) == []
        await trio.sleep(60)
        queue = fake_sqs.queue(url)
        assert queue.orphaned_deliveries == 0
        assert sorted(m.message_id for m in queue.messages()) == sorted(ids)
        assert {m.receive_count for m in queue.messages()} == {1}


# -- rehide never takes a message from anyone -------------------------------------------------------


async def test_rehide_never_takes_the_message_from_a_second_consumer(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """A fails M (backoff 1 s); its release takes effect at +0.1 but its answer comes 1.5 s late.
    A stops, idle, at 0.5: its release is still on the wire, so A hides M again at once, and once
    more when the late answer comes (in case SQS applied the release last), both times with its
    old receipt handle. B, polling from 0.6, gets M only once every poll of A's is over, and
    nothing of A's touches B's lease afterwards: M stays B's until B deletes it."""
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-two-consumers")
        [message_id] = await _send_n(client, url, 1)
        queue = fake_sqs.queue(url)
        b_received: list[float] = []
        b_lease: list[float] = []
        b_done = trio.Event()

        async def fails(message: Message) -> None:
            raise RuntimeError("A fails it")

        async def slow_ok(message: Message) -> None:
            b_received.append(trio.current_time())
            await trio.sleep(5)
            snapshot = queue.message(message_id)
            assert snapshot is not None
            b_lease.append(snapshot.visible_at)
            b_done.set()

        fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 1.5)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            a = await nursery.start(_run_consumer, client, url, fails, {"wait_time": 1})

            async def run_b() -> None:
                await trio.sleep_until(start + 0.6)
                async with trio_sqs.open_consumer(url, slow_ok, client=client, wait_time=20):
                    await b_done.wait()

            nursery.start_soon(run_b)
            await trio.sleep_until(start + 0.5)
            assert a.statistics().failed == 1 and a.statistics().released == 0
            live_until = a._polling.live_until()
            a.stop()
            await a.wait_stopped()
            assert trio.current_time() - start <= 0.5 + BOUND
            changes = _after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, start)
            old = _entries(changes[:1])[0]["ReceiptHandle"]
            assert {e["ReceiptHandle"] for e in _entries(changes)} == {old}
            await b_done.wait()
        # B got M only after A's last poll could no longer take it, and kept its whole lease.
        [t_b] = b_received
        assert t_b >= live_until
        assert b_lease == [pytest.approx(t_b + 30)]
        stats = a.statistics()
        assert stats.unflushed == 0 and stats.released == 1 and stats.release_failed == 0
        assert queue.messages() == []  # B deleted it
        assert queue.orphaned_deliveries == 0 and queue.deliveries == 2


async def _run_consumer(
    client: trio_sqs.SQSClient,
    url: str,
    handler: object,
    options: dict[str, object],
    *,
    task_status: trio.TaskStatus[trio_sqs.Consumer] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio_sqs.open_consumer(url, handler, client=client, **options) as consumer:  # type: ignore[call-overload]
        task_status.started(consumer)
        await consumer.wait_stopped()


async def test_rehide_with_an_old_handle_leaves_our_own_message_in_hand_alone(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """M fails (backoff 1 s), its release answered 1.5 s late; our own live poll receives M again
    at 1.1 (new handle) and a long handler runs with it, kept alive by heartbeats. The stop comes
    at 1.3; the release is confirmed at 1.6 and M is hidden again with its OLD handle: refused,
    the lease of the message in hand is not shortened to the cover."""
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-in-hand")
        [message_id] = await _send_n(client, url, 1)
        queue = fake_sqs.queue(url)
        calls = 0
        second_at: list[float] = []

        async def handler(message: Message) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("fails once")
            second_at.append(trio.current_time())
            await trio.sleep(1000)  # cancelled at grace

        fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 1.5)
        start = trio.current_time()
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, failure_backoff=1, grace_period=GRACE
        ) as consumer:
            await trio.sleep_until(start + 1.3)
            assert second_at == [pytest.approx(start + 1.1, abs=0.05)]
            t0 = trio.current_time()
            consumer.stop()
            await trio.sleep_until(start + 1.7)
            changes = _after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, start)
            old = _entries(changes[:1])[0]["ReceiptHandle"]
            late = _entries([c for c in changes if c.time >= start + 1.5])
            # The rehide with the old handle (refused: up to MAX_ENTRY_ATTEMPTS tries); no
            # heartbeat was due yet for the new one.
            assert 1 <= len(late) <= 3
            assert {e["ReceiptHandle"] for e in late} == {old}
            snapshot = queue.message(message_id)
            assert snapshot is not None and snapshot.state == "in_flight"
            # Still the lease of its receipt at 1.1 (30 s), not the cover (~20.5 s).
            assert snapshot.visible_at == pytest.approx(second_at[0] + 30)
        assert trio.current_time() - t0 <= BOUND
        stats = consumer.statistics()
        assert stats.cancelled_at_grace == 1 and stats.unflushed == 0
        await trio.sleep(60)
        [snapshot] = queue.messages()
        assert snapshot.receive_count == 2
        assert queue.orphaned_deliveries == 0


async def test_release_answered_after_its_visibility_ended_across_an_idle_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-slow-release")
        await _send_n(client, url, 1)
        queue = fake_sqs.queue(url)

        async def handler(message: Message) -> None:
            raise RuntimeError("fails")

        fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 1.5)
        start = trio.current_time()
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, failure_backoff=1
        ) as consumer:
            await trio.sleep_until(start + 0.5)
            assert consumer.statistics().failed == 1
        assert consumer.statistics().unflushed == 0
        await trio.sleep(60)
        [snapshot] = queue.messages()
        assert queue.orphaned_deliveries == 0
        assert snapshot.receive_count == 1


# -- FIFO: a failed group head hidden again at stop keeps the group's order -------------------------


async def test_fifo_group_head_hidden_again_at_stop_keeps_order(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(
            "adv2-fifo.fifo", attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        )
        for i in range(5):
            await client.send_message(url, f"g{i}", message_group_id="g")
        queue = fake_sqs.queue(url)
        first: list[str] = []

        async def fails_head(message: Message) -> None:
            first.append(message.body)
            raise RuntimeError("the group's head fails: the group goes back in order")

        async with trio_sqs.open_consumer(
            url, fails_head, client=client, concurrency=2, failure_backoff=2, wait_time=20
        ) as consumer:
            await trio.sleep(1.0)
            t0 = trio.current_time()
        assert first == ["g0"]
        assert trio.current_time() - t0 <= BOUND
        stats = consumer.statistics()
        assert stats.failed == 1 and stats.unflushed == 0
        # The head (released for 2 s before the stop) was hidden again at t0 past our polls.
        late = _entries(_after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, t0))
        assert late and all(int(e["VisibilityTimeout"]) > 2 for e in late)  # type: ignore[call-overload]
        after: list[str] = []
        got_all = trio.Event()

        async def second(message: Message) -> None:
            after.append(message.body)
            if len(after) == 5:
                got_all.set()

        async with trio_sqs.open_consumer(url, second, client=client, concurrency=2):
            await got_all.wait()
            assert trio.current_time() >= t0 + 19  # not before the cover ended
            await trio.sleep(1)
        assert after == [f"g{i}" for i in range(5)]
        assert queue.orphaned_deliveries == 0 and queue.messages() == []


# -- memory: Leases._hidden under a long run with many failures ----------------------------------------


async def _failing_run(fake: FakeSQS, name: str, seconds: int, then_ok: int) -> trio_sqs.Consumer:
    """One message a second for ``seconds``, each failing once (backoff 5 s) then succeeding;
    then ``then_ok`` seconds of messages that never fail."""
    async with open_fake_client(fake) as client:
        url = await client.create_queue(name)
        sizes: list[int] = []

        async def handler(message: Message) -> None:
            if message.body.startswith("f") and message.receive_count == 1:
                raise RuntimeError("fails once")

        async with trio_sqs.open_consumer(
            url, handler, client=client, failure_backoff=5, wait_time=20
        ) as consumer:
            for i in range(seconds):
                await client.send_message(url, f"f{i}")
                await trio.sleep(1)
                sizes.append(len(consumer._leases._hidden))
            steady = max(sizes)
            for i in range(then_ok):
                await client.send_message(url, f"ok{i}")
                await trio.sleep(1)
            consumer.hidden_steady = steady  # type: ignore[attr-defined]
            consumer.hidden_after = len(consumer._leases._hidden)  # type: ignore[attr-defined]
        assert consumer.statistics().failed == seconds
        return consumer


async def test_hidden_stays_bounded_under_a_long_run_of_failures(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    consumer = await _failing_run(fake_sqs, "adv2-hidden-bound", 300, 0)
    # One release a second, each remembered until its 5 s backoff (+ the 0.1 s window) is over.
    assert consumer.hidden_steady <= 7  # type: ignore[attr-defined]


async def test_hidden_shrinks_once_failures_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    consumer = await _failing_run(fake_sqs, "adv2-hidden-shrink", 30, 60)
    assert consumer.hidden_after == 0  # type: ignore[attr-defined]


# -- hand_back: answers with more than asked for ------------------------------------------------------


class OnceGreedy(Greedy):
    """Greedy for the first ``times`` ReceiveMessage calls only."""

    def __init__(self, fake: FakeSQS, times: int = 1) -> None:
        super().__init__(fake)
        self.left = times

    async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
        if request.headers.get("x-amz-target", "").endswith(".ReceiveMessage") and self.left:
            self.left -= 1
            return await super().handle_async_request(request)
        return await self.inner.handle_async_request(request)


class HeldGreedy(Greedy):
    """The ``nth`` ReceiveMessage is written (on_sent fires) but reaches the fake only ``hold``
    seconds later, asking for 10 whatever the poll asked for."""

    def __init__(self, fake: FakeSQS, hold: float, nth: int) -> None:
        super().__init__(fake)
        self.hold = hold
        self.nth = nth

    async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
        if request.headers.get("x-amz-target", "").endswith(".ReceiveMessage"):
            self.nth -= 1
        if request.headers.get("x-amz-target", "").endswith(".ReceiveMessage") and self.nth == 0:
            body = b"".join([chunk async for chunk in request.stream])
            await trio.sleep(self.hold)
            request = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=body,
                extensions=request.extensions,
            )
            return await super().handle_async_request(request)
        return await self.inner.handle_async_request(request)


async def test_hand_back_of_a_poll_landing_after_stop_gets_the_cover(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """A poll left to land (a handler runs) comes back after t0 with 10 messages for a poll of
    2: the 2 and the 8 handed back are released once it landed, counted once, and none comes
    back to us (no poll of ours is left on the server then)."""
    transport = HeldGreedy(fake_sqs, hold=2, nth=2)
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("adv2-handback-stop")
        await _send_n(client, url, 1)
        queue = fake_sqs.queue(url)
        running = trio.Event()

        async def handler(message: Message) -> None:
            running.set()
            await trio.sleep(5)

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=2, wait_time=20, grace_period=GRACE
        ) as consumer:
            await running.wait()
            start = trio.current_time()
            await trio.sleep(0.5)
            await _send_n(client, url, 10)
            await trio.sleep(0.5)
            assert queue.waiting_polls == 0 and consumer._polling.on_the_wire == 1
            t0 = trio.current_time()
            consumer.stop()
        assert trio.current_time() - t0 <= BOUND
        stats = consumer.statistics()
        assert stats.received == 11 and stats.completed == 1 and stats.released == 10
        assert stats.unflushed == 0 and stats.aborted_polls == 0
        late = _entries(_after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, t0))
        assert len(late) == 10
        # Sent once the poll had landed: no poll of ours was left on the server, so no cover
        # was needed (and none given); had one been left, the floor would apply (first test).
        assert {
            c.time for c in _after(fake_sqs.calls, "ChangeMessageVisibilityBatch", url, t0)
        } == {start + 2}
        assert consumer._polling.live_until() == -math.inf
        await trio.sleep(60)
        assert queue.orphaned_deliveries == 0
        assert {m.receive_count for m in queue.messages()} == {1}


async def _deletes_for_ten_slow_messages(fake: FakeSQS, transport: object, name: str) -> int:
    async with open_fake_client(fake, transport=transport) as client:  # type: ignore[arg-type]
        url = await client.create_queue(name)
        await _send_n(client, url, 10)

        async def handler(message: Message) -> None:
            await trio.sleep(0.3)

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=1, batch_size=1, max_buffered=0
        ) as consumer:
            await trio.sleep(30)
        assert consumer.statistics().deleted == 10
        return len(_after(fake.calls, "DeleteMessageBatch", url, 0))


async def test_deletes_of_slow_messages_are_batched(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """The baseline of the next test: one message every 0.3 s, the delete window grows to 2 s."""
    calls = await _deletes_for_ten_slow_messages(fake_sqs, fake_sqs.transport(), "adv2-batched")
    assert calls <= 4


async def test_one_oversized_answer_does_not_end_delete_batching(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    calls = await _deletes_for_ten_slow_messages(fake_sqs, OnceGreedy(fake_sqs), "adv2-urgent")
    assert calls <= 4


# -- grew: only after the stop -------------------------------------------------------------------------


async def test_grew_and_rehide_do_nothing_before_the_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """Load with failures and several polls for 60 s: no ``grew`` call, no change but the
    failure backoffs and heartbeats, before the stop."""
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-grew")
        await _send_n(client, url, 100)
        grew: list[float] = []

        async def handler(message: Message) -> None:
            await trio.sleep(12)  # gets a heartbeat (lease 30, interval 10)
            if message.receive_count < 3:
                raise RuntimeError("fails")

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=30, failure_backoff=3, wait_time=20
        ) as consumer:
            inner = consumer._polling._grew

            def spy() -> object:
                grew.append(trio.current_time())
                return inner()

            consumer._polling._grew = spy
            await trio.sleep(60)
            assert consumer._polling.max_pollers > 1
            assert grew == []
            t0 = trio.current_time()
        before = [
            int(e["VisibilityTimeout"])  # type: ignore[call-overload]
            for c in fake_sqs.calls
            if c.operation == "ChangeMessageVisibilityBatch" and c.time < t0
            for e in c.params["Entries"]
        ]
        assert set(before) <= {3, 6, 30} and 30 in before and 3 in before
        assert all(t >= t0 for t in grew)
        assert consumer.statistics().unflushed == 0


# -- the delete window cap -----------------------------------------------------------------------------


async def test_delete_window_with_a_large_batch_window_stays_within_the_lease(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """batch_window 20 > lease/4 (lease 8, heartbeat every 7 s): the delete window is capped at
    half of what a lease may have left, and no message settled just before its heartbeat is
    delivered twice."""
    options = trio_sqs.ConsumerOptions(
        visibility_timeout=8, heartbeat_interval=7, batch_window=20, concurrency=5
    )
    assert options.effective_max_ack_interval() <= (8 - 7) / 2
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-window-cap")
        seen: list[str] = []

        async def handler(message: Message) -> None:
            seen.append(message.message_id)
            await trio.sleep(6.97)  # ends just before its first heartbeat: ~1 s of lease left

        async with trio_sqs.open_consumer(url, handler, client=client, options=options) as consumer:
            for i in range(20):
                await trio.sleep(3.01)
                await client.send_message(url, f"m{i}")
            await trio.sleep(20)
        stats = consumer.statistics()
        assert len(seen) == 20 and len(set(seen)) == 20
        assert stats.deleted == 20 and fake_sqs.queue(url).messages() == []


async def test_ack_interval_does_not_outlast_the_lease_left_between_heartbeats(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-ack-interval")
        seen: list[float] = []

        async def handler(message: Message) -> None:
            seen.append(trio.current_time())
            await trio.sleep(28.97)  # ends just before its first heartbeat (at 29 s)

        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            visibility_timeout=30,
            heartbeat_interval=29,
            ack_interval=2,
        ):
            await trio.sleep(0.01)  # just after a heartbeat tick
            await client.send_message(url, "x")
            await trio.sleep(45)
        assert len(seen) == 1


# -- batch window: growth needs two full polls in a row ------------------------------------------------


async def test_a_full_poll_never_retires_a_poller_under_a_backlog(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv2-window-growth")
        await _send_n(client, url, 300)
        shrunk_on_full: list[int] = []

        async def handler(message: Message) -> None:
            await trio.sleep(0.05)

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=50, batch_window=1
        ) as consumer:
            polling = consumer._polling
            adapt = polling._adapt

            def spy(returned: int, full_streak: int) -> None:
                before = polling.active
                adapt(returned, full_streak)
                if returned >= polling._poll_size and polling.active < before:
                    shrunk_on_full.append(full_streak)

            polling._adapt = spy  # type: ignore[method-assign]
            await trio.sleep(5)
        assert shrunk_on_full == []
