"""The shutdown contract (docs/design.md, 'The shutdown contract'), clause by clause, proven on
the wire.

Most tests run on trio_sqs.testing's in-memory SQS under ``trio.testing.MockClock``: settings are
realistic (20 s long polls, a 30 s lease, 10 s grace, 5 s flush) and every bound is asserted
exactly, in virtual seconds. ``fake.calls`` records every request the server received, in arrival
order with its virtual time: "no ReceiveMessage after stop" is read there, from the index it had
at the moment of ``stop()``. Before stopping, each test brings every poller to rest inside a long
poll that the fake holds (nothing else can run then), so no ReceiveMessage is in transit at t0.

The fake behaves as SQS does where moto does not (docs/design.md, 'Abandoned long polls' and
'moto is not SQS'): a long poll whose client went away runs on server-side and takes the next
message at once. One test keeps the clause on real sockets: through a recording proxy in front of
moto.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs.testing import FakeSQS, QueueCounts, RecordedCall

from .recording_proxy import RecordingProxy

WAIT = 20
LEASE = 30
GRACE = 10.0
FLUSH = 5.0
# Settings shared by the tests on the fake: what a production consumer would use.
REALISTIC = {
    "wait_time": WAIT,
    "visibility_timeout": LEASE,
    "grace_period": GRACE,
    "flush_timeout": FLUSH,
}


def receives(calls: Sequence[RecordedCall]) -> list[RecordedCall]:
    return [c for c in calls if c.operation == "ReceiveMessage"]


def operations(calls: Sequence[RecordedCall]) -> list[str]:
    return [c.operation for c in calls]


async def send_n(sqs: trio_sqs.SQSClient, url: str, n: int) -> list[str]:
    ids: list[str] = []
    entries = [trio_sqs.SendEntry(body=f"m{i}") for i in range(n)]
    for start in range(0, n, 10):
        sent, result = await sqs.send_message_batch(url, entries[start : start + 10])
        assert result.ok
        ids.extend(s.message_id for s in sent)
    return ids


async def park(fake: FakeSQS, url: str, pollers: int) -> None:
    """Let everything run until it blocks: then each poller waits inside a long poll on the
    fake, so no ReceiveMessage is in transit (anything recorded from now on was sent later)."""
    await trio.testing.wait_all_tasks_blocked()
    assert fake.queue(url).waiting_polls == pollers


async def idle_handler(message: Message) -> None:
    raise AssertionError("no message was sent")


# -- clause 1: an idle consumer stops at once ---------------------------------------------------


@pytest.mark.parametrize("mode", ["abort", "land"])
async def test_idle_consumer_stops_at_once(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    mode: str,
) -> None:
    url = await fake_sqs_client.create_queue(f"idle-{mode}")
    queue = fake_sqs.queue(url)
    async with trio_sqs.open_consumer(
        url, idle_handler, client=fake_sqs_client, poll_on_stop=mode, **REALISTIC
    ) as consumer:
        # Idle, the consumer keeps exactly one long poll in flight (of up to two).
        pollers = 1
        assert consumer._polling.max_pollers == 2
        await park(fake_sqs, url, pollers)
        assert consumer._polling.on_the_wire == pollers
        sent_at = trio.current_time()
        await trio.sleep(5)  # well inside the 20 s long polls
        await park(fake_sqs, url, pollers)
        assert [c.time for c in receives(fake_sqs.calls)] == [sent_at] * pollers
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
    assert trio.current_time() == t0  # 0 virtual seconds: nothing holds an idle stop open
    assert fake_sqs.calls[mark:] == []  # no ReceiveMessage, nor anything else, after stop
    stats = consumer.statistics()
    assert stats.state == "stopped"
    assert stats.aborted_polls == pollers  # each one a possible orphan, and counted
    # Server-side the abandoned polls run on until their wait ends, as on SQS.
    assert queue.waiting_polls == pollers
    await trio.sleep_until(sent_at + WAIT)
    assert queue.waiting_polls == 0


# -- clauses 1 and 2: no receive after stop; unstarted messages go back at t0 -------------------


@pytest.mark.parametrize("mode", ["abort", "land"])
async def test_no_receive_after_stop_and_unstarted_go_back(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    mode: str,
) -> None:
    sqs = fake_sqs_client
    url = await sqs.create_queue(f"unstarted-{mode}")
    queue = fake_sqs.queue(url)
    ids = await send_n(sqs, url, 10)
    started = trio.Event()
    release_handler = trio.Event()
    handled: list[str] = []

    async def handler(message: Message) -> None:
        started.set()
        await release_handler.wait()
        handled.append(message.message_id)

    async with trio_sqs.open_consumer(
        url,
        handler,
        client=sqs,
        concurrency=1,
        batch_size=10,
        max_buffered=19,  # room for a second poll, which parks in a long poll on the empty queue
        pollers=1,
        poll_on_stop=mode,
        **REALISTIC,
    ) as consumer:
        await started.wait()
        await park(fake_sqs, url, 1)
        assert consumer.statistics().buffered == 9
        assert consumer._polling.on_the_wire == 1
        [poll] = receives(fake_sqs.calls)[1:]
        await trio.sleep(2)
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
        consumer.stop()
        await trio.testing.wait_all_tasks_blocked()
        after = fake_sqs.calls[mark:]
        # Clause 2: the 9 unstarted messages are released at t0 itself, while the handler is
        # still inside its grace period, each with a visibility that outlasts the poll SQS may
        # still run for us (sent at t0 - 2, waiting 20 s, + 1 s of slack): it cannot take them.
        [release] = after
        assert release.operation == "ChangeMessageVisibilityBatch"
        assert release.time == t0
        cover = poll.time + WAIT + 1 - t0
        assert cover == 19
        assert [e["VisibilityTimeout"] for e in release.params["Entries"]] == [cover] * 9
        assert queue.counts() == QueueCounts(0, 10, 0)
        await trio.sleep(3)
        release_handler.set()
    assert trio.current_time() == t0 + 3  # the handler finished in grace; its delete went at once
    assert receives(fake_sqs.calls[mark:]) == []
    assert operations(fake_sqs.calls[mark:])[-1] == "DeleteMessageBatch"
    assert len(handled) == 1
    stats = consumer.statistics()
    assert stats.completed == 1 and stats.deleted == 1 and stats.unflushed == 0
    # "land" left the poll on the wire while the handler ran, and aborted it once it was done;
    # "abort" aborted it at t0. Either way it took nothing: the released messages were hidden
    # from it for as long as it could run.
    assert stats.received == 10 and stats.released == 9 and stats.aborted_polls == 1
    assert queue.orphaned_deliveries == 0
    await trio.sleep_until(t0 + cover)
    back = queue.messages()
    assert queue.counts() == QueueCounts(9, 0, 0)
    assert {m.message_id for m in back} == set(ids) - set(handled)
    # The stop raised no receive count: each of the 9 was received once, by us, before t0.
    assert [m.receive_count for m in back] == [1] * 9


# -- clause 3: grace for running handlers ------------------------------------------------------


async def test_handler_inside_grace_is_acknowledged_with_heartbeats(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    sqs = fake_sqs_client
    url = await sqs.create_queue("heartbeats-in-grace")
    queue = fake_sqs.queue(url)
    [message_id] = await send_n(sqs, url, 1)
    running = trio.Event()
    seen_by_rival: list[Message] = []

    async def handler(message: Message) -> None:
        running.set()
        await trio.sleep(42)  # past the 30 s lease: only heartbeats keep it invisible

    async def rival() -> None:
        # Another consumer polling all along: it would get the message if it ever were visible.
        while True:
            seen_by_rival.extend(await sqs.receive_messages(url, wait_time=WAIT))

    async with trio.open_nursery() as nursery:
        async with trio_sqs.open_consumer(url, handler, client=sqs, **REALISTIC) as consumer:
            await running.wait()
            started = trio.current_time()
            nursery.start_soon(rival)
            await trio.sleep(35)  # the first lease ended 5 s ago
            mark = len(fake_sqs.calls)
            t0 = trio.current_time()
            consumer.stop()
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert took == 42 - 35  # the handler finished inside grace; nothing else held the stop
    assert took <= GRACE + FLUSH
    assert seen_by_rival == []
    stats = consumer.statistics()
    assert stats.completed == 1 and stats.deleted == 1 and stats.cancelled_at_grace == 0
    # One heartbeat every interval minus a tick (30 / 3 - 2.5 s), before stop and after it.
    heartbeats = [
        c.time - started for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"
    ]
    assert heartbeats == [7.5, 15.0, 22.5, 30.0, 37.5]
    assert stats.visibility_extensions == 5
    assert any(c.operation == "ChangeMessageVisibilityBatch" for c in fake_sqs.calls[mark:])
    # After stop, only the rival polled (the consumer's polls ask for the lease).
    assert [c for c in receives(fake_sqs.calls[mark:]) if "VisibilityTimeout" in c.params] == []
    assert queue.message(message_id) is None  # deleted, never delivered twice
    assert queue.deliveries == 1


async def test_handler_overrunning_grace_is_cancelled_and_released(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    sqs = fake_sqs_client
    url = await sqs.create_queue("overrun-grace")
    queue = fake_sqs.queue(url)
    [message_id] = await send_n(sqs, url, 1)
    running = trio.Event()
    cancelled_at: float | None = None

    async def handler(message: Message) -> None:
        nonlocal cancelled_at
        running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_at = trio.current_time()
            raise

    async with trio_sqs.open_consumer(url, handler, client=sqs, **REALISTIC) as consumer:
        await running.wait()
        received_at = trio.current_time()
        await trio.sleep(5)
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
        consumer.stop()
    took = trio.current_time() - t0
    assert cancelled_at == t0 + GRACE  # the grace ends at t0 + grace, exactly
    assert took == GRACE  # the release and the landing poll took no time after that
    assert took <= GRACE + FLUSH
    stats = consumer.statistics()
    assert stats.cancelled_at_grace == 1 and stats.deleted == 0 and stats.completed == 0
    # "land": the poll sent right after the receive (SQS runs it until received_at + 20) was
    # still waiting at t0 + 10. The message went back with a visibility that outlasts it, so
    # the poll could not take it; the poll was aborted once no handler ran.
    assert receives(fake_sqs.calls[mark:]) == []
    assert stats.received == 1 and stats.released == 1 and stats.aborted_polls == 1
    assert t0 + GRACE < received_at + WAIT
    [entry] = [
        e
        for c in fake_sqs.calls[mark:]
        if c.operation == "ChangeMessageVisibilityBatch"
        for e in c.params["Entries"]
        if e["VisibilityTimeout"] != LEASE  # not a heartbeat
    ]
    assert entry["VisibilityTimeout"] == received_at + WAIT + 1 - (t0 + GRACE) == 6
    [snapshot] = queue.messages()
    assert snapshot.message_id == message_id
    assert snapshot.state == "in_flight" and snapshot.visible_at == received_at + WAIT + 1
    # Visible again 6 s after the stop (not after the 30 s lease), received once: the stop
    # raised its receive count by nothing.
    await trio.sleep_until(received_at + WAIT + 1)
    [snapshot] = queue.messages()
    assert snapshot.state == "visible" and snapshot.receive_count == 1
    assert queue.orphaned_deliveries == 0


async def test_shutdown_is_bounded_by_grace_plus_flush(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clauses 4 and 5 at their bound: a handler overruns its grace, and SQS takes a minute to
    answer the release. The stop ends at t0 + grace + flush, and the unconfirmed release is
    counted and logged."""
    sqs = fake_sqs_client
    url = await sqs.create_queue("bounded")
    [message_id] = await send_n(sqs, url, 1)
    running = trio.Event()

    async def handler(message: Message) -> None:
        running.set()
        await trio.sleep_forever()

    def is_release(params: Any) -> bool:
        return all(e["VisibilityTimeout"] != LEASE for e in params["Entries"])  # no heartbeat

    fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 60, times=10, match=is_release)
    async with trio_sqs.open_consumer(
        url, handler, client=sqs, poll_on_stop="abort", **REALISTIC
    ) as consumer:
        await running.wait()
        await trio.sleep(1)
        t0 = trio.current_time()
        consumer.stop()
    assert trio.current_time() == t0 + GRACE + FLUSH
    stats = consumer.statistics()
    assert stats.cancelled_at_grace == 1 and stats.unflushed == 1 and stats.released == 0
    [release] = [
        c
        for c in fake_sqs.calls
        if c.operation == "ChangeMessageVisibilityBatch" and is_release(c.params)
    ]
    assert release.time == t0 + GRACE  # sent when the grace ended; its answer never came in time
    assert any("shutdown bound reached" in r.getMessage() for r in caplog.records)
    # It took effect all the same (only its answer was late), with a visibility that outlasts
    # the poll aborted at t0 and still waiting server-side: the poll could not take it.
    [entry] = release.params["Entries"]
    [poll] = receives(fake_sqs.calls)[1:]
    assert entry["VisibilityTimeout"] == poll.time + WAIT + 1 - release.time
    assert fake_sqs.queue(url).orphaned_deliveries == 0
    assert fake_sqs.queue(url).message(message_id) is not None


async def test_cancelling_the_enclosing_scope_takes_the_same_path(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    sqs = fake_sqs_client
    url = await sqs.create_queue("enclosing-scope")
    await send_n(sqs, url, 1)
    running = trio.Event()
    finished_at: float | None = None

    async def handler(message: Message) -> None:
        nonlocal finished_at
        running.set()
        await trio.sleep(5)
        finished_at = trio.current_time()

    with trio.CancelScope() as outer:
        async with trio_sqs.open_consumer(url, handler, client=sqs, **REALISTIC) as consumer:
            await running.wait()
            t0 = trio.current_time()
            mark = len(fake_sqs.calls)
            outer.cancel()
            await trio.sleep_forever()
    assert finished_at == t0 + 5, "the handler was cut off instead of getting its grace period"
    assert trio.current_time() == t0 + 5
    assert receives(fake_sqs.calls[mark:]) == []
    stats = consumer.statistics()
    assert stats.state == "stopped" and stats.completed == 1 and stats.deleted == 1
    assert fake_sqs.queue(url).counts().total == 0


async def test_stop_is_synchronous_and_idempotent(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def handler(message: Message) -> None:
        pass

    async with trio_sqs.open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, **REALISTIC
    ) as consumer:
        assert consumer.stop() is None
        consumer.stop()
        assert consumer.state == "stopping"
        await consumer.wait_stopped()
        consumer.stop()
    assert consumer.state == "stopped"


# -- the scenario of the original bug report ---------------------------------------------------


@pytest.mark.parametrize("mode", ["abort", "land"])
async def test_bug_report_scenario(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    mode: str,
) -> None:
    """Producer at 10 messages/s, handlers of 200 ms, stop after a few seconds: no receive after
    stop, every message completed and deleted or visible again at once, bounded shutdown."""
    sqs = fake_sqs_client
    url = await sqs.create_queue(f"bug-report-{mode}")
    queue = fake_sqs.queue(url)
    produced: list[str] = []
    completed: list[str] = []

    async def producer() -> None:
        for i in range(10_000):
            sent = await sqs.send_message(url, f"m{i}")
            produced.append(sent.message_id)
            await trio.sleep(0.1)

    async def handler(message: Message) -> None:
        await trio.sleep(0.2)
        completed.append(message.message_id)

    async with trio.open_nursery() as nursery:
        async with trio_sqs.open_consumer(
            url,
            handler,
            client=sqs,
            concurrency=8,
            pollers=1,
            poll_on_stop=mode,
            **REALISTIC,
        ) as consumer:
            nursery.start_soon(producer)
            # Between two messages: the poller waits in a long poll and the handlers of the
            # last two messages (sent 50 and 150 ms ago) are running.
            await trio.sleep(3.05)
            await park(fake_sqs, url, 1)
            assert consumer.statistics().in_flight == 2
            mark = len(fake_sqs.calls)
            t0 = trio.current_time()
            consumer.stop()
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    # The last handler finished 150 ms after t0 and its delete went out at once.
    assert took == pytest.approx(0.15)
    assert took <= GRACE + FLUSH
    assert receives(fake_sqs.calls[mark:]) == []
    stats = consumer.statistics()
    assert stats.unflushed == 0 and stats.delete_failed == 0 and stats.release_failed == 0
    assert stats.deleted == len(completed) == len(set(completed)) == 31
    state = {m.message_id: m for m in queue.messages()}
    assert not state.keys() & set(completed)  # deleted
    assert set(produced) - set(completed) == state.keys()  # nothing else is gone
    stranded = {i for i, m in state.items() if m.state == "in_flight"}
    if mode == "abort":
        # The message produced 50 ms after t0 went to the abandoned poll (docs/design.md,
        # 'Abandoned long polls'): it is stranded for the lease, then visible again.
        assert stats.aborted_polls == 1 and stats.received == 31
        assert queue.orphaned_deliveries == 1 and len(stranded) == 1
        [orphan] = [state[i] for i in stranded]
        assert orphan.visible_at == pytest.approx(t0 + 0.05 + LEASE)
    else:
        # The poll landed with that message, which went back at once.
        assert stats.aborted_polls == 0 and stats.received == 32 and stats.released == 1
        assert queue.orphaned_deliveries == 0 and stranded == set()


# -- on real sockets: moto behind a recording proxy ---------------------------------------------


@pytest.fixture
async def proxied(proxy: RecordingProxy) -> AsyncIterator[trio_sqs.SQSClient]:
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=proxy.url) as client:
        yield client


async def test_no_receive_after_stop_on_real_sockets(
    sqs: trio_sqs.SQSClient,
    proxied: trio_sqs.SQSClient,
    proxy: RecordingProxy,
    queue_name: str,
) -> None:
    """Clause 1 as a real server sees it: a consumer with a running handler, a poll held open by
    the proxy, buffered messages released at stop; no ReceiveMessage arrives after t0."""
    url = await sqs.create_queue(queue_name)
    await send_n(sqs, url, 10)
    started = trio.Event()
    release_handler = trio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await release_handler.wait()

    async with trio_sqs.open_consumer(
        url,
        handler,
        client=proxied,
        concurrency=1,
        batch_size=10,
        max_buffered=19,
        pollers=1,
        poll_on_stop="land",
        **REALISTIC,
    ) as consumer:
        await started.wait()
        # Hold ReceiveMessage answers until the poller waits in one: a poller has at most one
        # request out, so none is in transit at t0 and any recorded from t0 on was sent later.
        proxy.hold_receives()
        await proxy.wait_for(lambda p: p.open_receives() >= 1)
        await trio.testing.wait_all_tasks_blocked()
        assert consumer._polling.on_the_wire == 1
        parked = [r for r in proxy.requests if r.operation == "ReceiveMessage" and not r.answered]
        t0 = trio.current_time()
        consumer.stop()
        proxy.release_receives()
        await proxy.wait_for(
            lambda p: any(
                r.operation == "ChangeMessageVisibilityBatch" and r.answered
                for r in p.requests
                if r.arrived_at >= t0
            )
        )
        release_handler.set()
    assert len(parked) == 1
    assert proxy.receives_after(t0) == []
    stats = consumer.statistics()
    assert stats.completed == 1 and stats.deleted == 1 and stats.released == 9
    # The poll was left to land while the handler ran (the 9 released messages were hidden from
    # it), then aborted once the handler was done.
    assert stats.aborted_polls == 1 and stats.unflushed == 0


async def test_a_release_made_before_stop_is_hidden_again_from_the_aborted_poll(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    """A handler fails (failure backoff 1 s) and the consumer stops 0.7 s later, idle. Its
    message becomes visible 0.3 s after the stop, while the poll aborted at t0 still runs on the
    server: that poll would take it and hide it for the 30 s lease, receive count raised. The
    stop hides it again until that poll is over, and takes no time for it."""
    sqs = fake_sqs_client
    url = await sqs.create_queue("rehide")
    queue = fake_sqs.queue(url)
    [message_id] = await send_n(sqs, url, 1)
    failed = trio.Event()

    async def handler(message: Message) -> None:
        failed.set()
        raise RuntimeError("fails once")

    async with trio_sqs.open_consumer(
        url, handler, client=sqs, concurrency=1, pollers=1, failure_backoff=1.0, **REALISTIC
    ) as consumer:
        await failed.wait()
        await park(fake_sqs, url, 1)
        [_, poll] = receives(fake_sqs.calls)
        await trio.sleep(0.7)
        t0 = trio.current_time()
    assert trio.current_time() == t0  # idle: the stop took no time
    changes = [
        (c.time, e["VisibilityTimeout"])
        for c in fake_sqs.calls
        if c.operation == "ChangeMessageVisibilityBatch"
        for e in c.params["Entries"]
    ]
    # The failure's release (1 s, sent within ack_interval), then at t0 the same message hidden
    # until the aborted poll, sent at poll.time and running 20 s (+ 1 s of slack), is over.
    cover = poll.time + WAIT + 1 - t0
    assert changes == [(pytest.approx(poll.time + 0.1), 1), (t0, math.ceil(cover))]
    stats = consumer.statistics()
    assert stats.failed == 1 and stats.released == 1 and stats.aborted_polls == 1
    await trio.sleep_until(poll.time + WAIT + 1)
    assert queue.waiting_polls == 0
    await trio.sleep_until(t0 + math.ceil(cover))
    assert queue.orphaned_deliveries == 0
    [snapshot] = queue.messages()
    assert snapshot.message_id == message_id
    assert snapshot.state == "visible" and snapshot.receive_count == 1
