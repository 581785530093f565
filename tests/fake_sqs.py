"""A small scripted SQS server on Trio for tests: HTTP/1.1 (h11) on 127.0.0.1, a free port.

It answers in SQS's JSON protocol, records every request it sees, and lets a test script each
answer (an error, a delay, a tampered body, a connection reset). It checks no signatures: tests
that care about signing assert on the recorded headers.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import socket
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"


@dataclass(frozen=True)
class Request:
    """One request as the server saw it. Header names are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def operation(self) -> str:
        return self.headers.get("x-amz-target", "").rpartition(".")[2]

    @property
    def params(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body or b"{}")
        return result


@dataclass
class Response:
    """A scripted answer. ``body`` may be raw bytes or a JSON-serialisable dict."""

    status: int = 200
    body: bytes | dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Reset:
    """Answer by resetting the connection (RST) without sending a response."""


RESET = Reset()

Handler = Callable[[Request], Awaitable["Response | Reset"]]


def error(status: int, type_name: str, message: str, *, query_error: str | None = None) -> Response:
    """An SQS JSON-protocol error response (``__type`` plus optional ``x-amzn-query-error``)."""
    headers = {"x-amzn-query-error": query_error} if query_error else {}
    return Response(
        status=status,
        body={"__type": f"com.amazonaws.sqs#{type_name}", "message": message},
        headers=headers,
    )


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def default_result(request: Request) -> dict[str, Any]:
    """A valid, minimal result for each operation the client layer uses."""
    op = request.operation
    params = request.params
    if op in ("GetQueueUrl", "CreateQueue"):
        return {"QueueUrl": f"http://127.0.0.1/123456789012/{params.get('QueueName', 'q')}"}
    if op == "SendMessage":
        return {
            "MessageId": str(uuid.uuid4()),
            "MD5OfMessageBody": md5_hex(params.get("MessageBody", "").encode()),
        }
    if op == "GetQueueAttributes":
        return {"Attributes": {"ApproximateNumberOfMessages": "0"}}
    if op == "ListQueues":
        return {"QueueUrls": []}
    if op in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
        return {"Successful": [{"Id": e["Id"]} for e in params.get("Entries", [])], "Failed": []}
    # ReceiveMessage with no messages, DeleteMessage, ChangeMessageVisibility, PurgeQueue, ...
    return {}


async def answer_ok(request: Request) -> Response:
    return Response(body=default_result(request))


class FakeSQS:
    """The server. ``requests`` lists every complete request received, in arrival order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.connections = 0
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def operations(self) -> list[str]:
        return [r.operation for r in self.requests]

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    method=head.method.decode(),
                    target=head.target.decode(),
                    headers={k.decode().lower(): v.decode() for k, v in head.headers},
                    body=bytes(body),
                )
            else:  # ConnectionClosed or PAUSED after a close
                return None

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, conn)
                if request is None:
                    return
                self.requests.append(request)
                answer = await self.handler(request)
                if isinstance(answer, Reset):
                    # SO_LINGER 0: close() sends RST, the peer sees "connection reset".
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return
                if answer.delay:
                    await trio.sleep(answer.delay)
                body = (
                    answer.body
                    if isinstance(answer.body, bytes)
                    else json.dumps(answer.body).encode()
                )
                headers = {
                    "Content-Type": JSON_CONTENT_TYPE,
                    "x-amzn-RequestId": str(uuid.uuid4()),
                    "Date": email.utils.formatdate(usegmt=True),
                    **answer.headers,
                    "Content-Length": str(len(body)),
                }
                await self._send(
                    stream,
                    conn,
                    h11.Response(status_code=answer.status, headers=list(headers.items())),
                )
                await self._send(stream, conn, h11.Data(data=body))
                await self._send(stream, conn, h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            # The client went away (a cancelled request closes its connection): nothing to do.
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def serve_fake_sqs(handler: Handler = answer_ok) -> AsyncIterator[FakeSQS]:
    """Run a :class:`FakeSQS` for the duration of the block."""
    server = FakeSQS(handler)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, server.serve_connection, 0, host="127.0.0.1")
            )
            server.port = listeners[0].socket.getsockname()[1]
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Let a test's own lone exception out unwrapped, so pytest.raises() sees it.
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        context = inner.__context__
        try:
            raise inner
        finally:
            inner.__context__ = context


def scripted(*answers: Response | Reset, then: Handler = answer_ok) -> Handler:
    """A handler that gives ``answers`` in order, then defers to ``then``."""
    queue = list(answers)

    async def handler(request: Request) -> Response | Reset:
        if queue:
            return queue.pop(0)
        return await then(request)

    return handler
