"""A release and a heartbeat for one message are never on the wire together, and a release is
never sent once our lease may have run out.

Found by the end-to-end churn runs (tests/test_e2e.py): a handler cancelled at the end of its
grace period while a heartbeat for its message was on the wire. The consumer used to send the
release at once and again after the heartbeat returned (in case the heartbeat had landed last and
hidden the message again). By then another worker had received the message, and the second
release, made with the old receipt handle, took it from under that worker: handled twice. Now the
release waits for the heartbeat, and is dropped (counted in ``release_expired``) if the lease may
have lapsed meanwhile: the message is then visible again already, or someone else's.

The in-memory SQS (``trio_sqs.testing``) holds the heartbeat's answer back (``fake.faults.delay``:
the extension takes effect when it arrives, its answer comes later), on virtual time: the fake's
record of every call and the consumer share one clock, and the times are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs.testing import FakeSQS, RecordedCall

GRACE = 10.0
BODY = "hello"


def is_heartbeat(params: Mapping[str, Any]) -> bool:
    # A heartbeat asks for a whole lease (10 or 30 s here); a release for 0 s, or for the cover
    # of the consumer's polls at stop (none here: no poll is waiting, see consuming()).
    return any(e["VisibilityTimeout"] in (10, 30) for e in params["Entries"])


def releases(fake: FakeSQS) -> list[tuple[float, list[str]]]:
    """Every release the consumer sent: (arrival time, receipt handles)."""
    return [
        (c.time, [e["ReceiptHandle"] for e in c.params["Entries"]])
        for c in fake.calls
        if c.operation == "ChangeMessageVisibilityBatch" and not is_heartbeat(c.params)
    ]


def heartbeats(fake: FakeSQS) -> list[RecordedCall]:
    return [
        c
        for c in fake.calls
        if c.operation == "ChangeMessageVisibilityBatch" and is_heartbeat(c.params)
    ]


async def first_heartbeat(fake: FakeSQS) -> RecordedCall:
    """Wait for the first heartbeat to arrive (woken at the virtual instant it arrived)."""
    arrived = trio.Event()

    class Watch(trio.abc.Instrument):
        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if heartbeats(fake):
                arrived.set()

    watch = Watch()
    trio.lowlevel.add_instrument(watch)
    try:
        await arrived.wait()
    finally:
        trio.lowlevel.remove_instrument(watch)
    return heartbeats(fake)[0]


@asynccontextmanager
async def consuming(
    client: trio_sqs.SQSClient, queue_url: str, *, lease: int
) -> AsyncIterator[trio_sqs.Consumer]:
    """One message, a handler that never returns on its own, default heartbeats (a third of the
    lease), 10 s grace. No room for a second message, so no long poll is waiting meanwhile (one
    would take the released message: another receipt handle, another release)."""
    await client.send_message(queue_url, BODY)

    async def handler(message: Message) -> None:
        await trio.sleep_forever()

    async with trio_sqs.open_consumer(
        queue_url,
        handler,
        client=client,
        concurrency=1,
        max_buffered=0,
        pollers=1,
        visibility_timeout=lease,
        grace_period=GRACE,
        flush_timeout=5.0,
    ) as consumer:
        yield consumer


async def test_release_waits_for_the_heartbeat_on_the_wire(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    hold = GRACE + 2  # the heartbeat's answer comes after the grace period has ended
    fake_sqs.faults.delay("ChangeMessageVisibilityBatch", hold, match=is_heartbeat)
    async with consuming(fake_sqs_client, fake_queue_url, lease=30) as consumer:
        heartbeat = await first_heartbeat(fake_sqs)
        [handle] = fake_sqs.queue(fake_queue_url).receipt_handles()
        consumer.stop()
        t0 = trio.current_time()
        assert t0 == heartbeat.time
        # The grace period ends and the handler is cancelled; its release must wait.
        await trio.sleep_until(t0 + GRACE + 1)
        assert consumer.statistics().cancelled_at_grace == 1
        assert releases(fake_sqs) == [], "a release went out while a heartbeat was on the wire"
    answered_at = heartbeat.time + hold
    # Exactly one release, never a second one, sent the moment the heartbeat's answer came.
    assert releases(fake_sqs) == [(answered_at, [handle])]
    assert len(heartbeats(fake_sqs)) == 1
    assert fake_sqs.queue(fake_queue_url).counts().visible == 1
    stats = consumer.statistics()
    assert (stats.released, stats.release_expired, stats.unflushed) == (1, 0, 0)


async def test_release_is_dropped_once_the_lease_may_have_run_out(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    # The heartbeat's answer must come after the lease it asked for could have ended, and before
    # the client's 30 s read timeout (a heartbeat that times out is another path): a 10 s lease.
    lease = 10
    hold = lease + 1
    fake_sqs.faults.delay("ChangeMessageVisibilityBatch", hold, match=is_heartbeat)
    async with consuming(fake_sqs_client, fake_queue_url, lease=lease) as consumer:
        heartbeat = await first_heartbeat(fake_sqs)
        consumer.stop()
        t0 = trio.current_time()
        await trio.sleep_until(t0 + GRACE + 0.5)
        assert consumer.statistics().cancelled_at_grace == 1
        assert releases(fake_sqs) == []
        # The lease the heartbeat set ran out at heartbeat.time + lease: the message is visible
        # again (or someone else's), and our receipt handle must not touch it.
        assert fake_sqs.queue(fake_queue_url).counts().visible == 1
    assert trio.current_time() >= heartbeat.time + hold
    assert releases(fake_sqs) == []
    stats = consumer.statistics()
    assert (stats.released, stats.release_expired, stats.unflushed) == (0, 1, 0)
