"""A release and a heartbeat for one message are never on the wire together, and a release is
never sent once our lease may have run out.

Found by the end-to-end churn runs (tests/test_e2e.py): a handler cancelled at the end of its
grace period while a heartbeat for its message was on the wire. The consumer used to send the
release at once and again after the heartbeat returned (in case the heartbeat had landed last and
hidden the message again). By then another worker had received the message, and the second
release, made with the old receipt handle, took it from under that worker: handled twice. Now the
release waits for the heartbeat, and is dropped (counted in ``release_expired``) if the lease may
have lapsed meanwhile: the message is then visible again already, or someone else's.

A scripted server (tests/fake_sqs.py) holds the heartbeat's answer; the consumer runs in this
process, so server-side times and the consumer's clock are one clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

import trio_sqs
from trio_sqs import Message

from .fake_sqs import Request, Response, default_result, serve_fake_sqs

QUEUE_URL = "http://127.0.0.1/123456789012/q"
BODY = "hello"
HANDLE = "handle-1"


@dataclass
class HeartbeatHoldingServer:
    """Hands out one message, then empty long polls; holds the answer to the first heartbeat
    until ``let_go`` is set; records when things happened (trio clock)."""

    heartbeat_arrived: trio.Event = field(default_factory=trio.Event)
    let_go: trio.Event = field(default_factory=trio.Event)
    heartbeat_sent_at: float | None = None
    heartbeat_answered_at: float | None = None
    releases: list[tuple[float, list[str]]] = field(default_factory=list)
    receives: int = 0

    async def __call__(self, request: Request) -> Response:
        params = request.params
        if request.operation == "ReceiveMessage":
            self.receives += 1
            if self.receives == 1:
                message = {
                    "MessageId": "m-1",
                    "ReceiptHandle": HANDLE,
                    "Body": BODY,
                    "MD5OfBody": hashlib.md5(BODY.encode()).hexdigest(),
                }
                return Response(body={"Messages": [message]})
            return Response(body={}, delay=0.3)
        if request.operation == "ChangeMessageVisibilityBatch":
            entries = params["Entries"]
            if all(e["VisibilityTimeout"] == 0 for e in entries):
                self.releases.append((trio.current_time(), [e["ReceiptHandle"] for e in entries]))
            elif self.heartbeat_sent_at is None:
                self.heartbeat_sent_at = trio.current_time()
                self.heartbeat_arrived.set()
                await self.let_go.wait()
                self.heartbeat_answered_at = trio.current_time()
        return Response(body=default_result(request))


@asynccontextmanager
async def consuming(
    server: HeartbeatHoldingServer, *, lease: int
) -> AsyncIterator[trio_sqs.Consumer]:
    async def handler(message: Message) -> None:
        await trio.sleep_forever()

    async with (
        serve_fake_sqs(server) as fake,
        trio_sqs.open_client(region="us-east-1", endpoint_url=fake.endpoint) as client,
        trio_sqs.open_consumer(
            QUEUE_URL,
            handler,
            client=client,
            concurrency=1,
            pollers=1,
            wait_time=1,
            visibility_timeout=lease,
            heartbeat_interval=0.5,
            grace_period=0.2,
            flush_timeout=5.0,
        ) as consumer,
    ):
        yield consumer


async def test_release_waits_for_the_heartbeat_on_the_wire() -> None:
    server = HeartbeatHoldingServer()
    async with consuming(server, lease=30) as consumer:
        await server.heartbeat_arrived.wait()
        consumer.stop()
        # The grace period (0.2 s) ends and the handler is cancelled; its release must wait.
        await trio.sleep(0.6)
        assert consumer.statistics().cancelled_at_grace == 1
        assert server.releases == [], "a release went out while a heartbeat was on the wire"
        server.let_go.set()
    assert server.heartbeat_answered_at is not None
    [(released_at, handles)] = server.releases  # exactly one release, never a second one
    assert handles == [HANDLE]
    assert released_at >= server.heartbeat_answered_at
    stats = consumer.statistics()
    assert (stats.released, stats.release_expired, stats.unflushed) == (1, 0, 0)


async def test_release_is_dropped_once_the_lease_may_have_run_out() -> None:
    lease = 2
    server = HeartbeatHoldingServer()
    async with consuming(server, lease=lease) as consumer:
        await server.heartbeat_arrived.wait()
        consumer.stop()
        await trio.sleep(0.6)
        assert server.releases == []
        # Answer the heartbeat only after the lease it asked for could have ended: the message
        # may be visible again or someone else's, and our receipt handle must not touch it.
        assert server.heartbeat_sent_at is not None
        await trio.sleep_until(server.heartbeat_sent_at + lease + 0.1)
        server.let_go.set()
    assert server.releases == []
    stats = consumer.statistics()
    assert (stats.released, stats.release_expired, stats.unflushed) == (0, 1, 0)
