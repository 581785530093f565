"""A fast fake of Amazon SQS's JSON protocol, for client CPU benchmarks. Standard library only.

It answers two operations, over HTTP/1.1 with keep-alive and ``Content-Length`` bodies:

- ``AmazonSQS.ReceiveMessage``: 10 canned messages (or ``MaxNumberOfMessages`` if fewer), with
  correct ``MD5OfBody``, two string message attributes with a correct ``MD5OfMessageAttributes``
  and the usual system attributes, each included only if the request asked for it, as SQS does.
- ``AmazonSQS.DeleteMessageBatch``: every entry successful, echoing the request's entry ids.

Anything else gets a 400 ``UnsupportedOperation`` error. Responses carry the headers real SQS
sends (``Content-Type: application/x-amz-json-1.0``, ``x-amzn-RequestId``, ``Date``). Nothing is
checked about signatures. Responses are built ahead of time and cached, so the server spends
microseconds per request and is never the bottleneck of a client benchmark.

Run: ``python benchmarks/fake_sqs_server.py [--host 127.0.0.1] [--port 0] [--cpu N]``. The first line on
stdout is the port it listens on. It exits when its stdin reaches end of file (its parent went
away) or on SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import hashlib
import json
import os
import resource
import signal
import struct
import sys
import time
import uuid
from typing import Any

MAX_MESSAGES = 10
ACCOUNT = "123456789012"
QUEUE_NAME = "bench"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{QUEUE_NAME}"
# Caps a single request, so a broken client cannot make the server buffer without bound.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_string_attributes(attributes: dict[str, dict[str, str]]) -> str:
    """SQS's digest of message attributes: sorted names, length-prefixed name/type/value."""
    buf = bytearray()
    for name in sorted(attributes):
        value = attributes[name]
        for part in (name.encode(), value["DataType"].encode()):
            buf += struct.pack(">I", len(part)) + part
        raw = value["StringValue"].encode()
        buf += b"\x01" + struct.pack(">I", len(raw)) + raw
    return md5_hex(bytes(buf))


def canned_message(index: int, *, system: bool, user: bool) -> dict[str, Any]:
    """One message shaped like SQS's: a ~250-byte JSON body and a ~350-char receipt handle."""
    message_id = str(uuid.UUID(int=0x5A5A_0000_0000_4000_8000_0000_0000_0000 + index))
    body = json.dumps(
        {
            "event": "order.created",
            "order_id": f"ord-{index:06d}",
            "customer": {"id": f"cus-{index * 7919:08d}", "tier": "gold"},
            "items": [{"sku": f"SKU-{index}-{k}", "qty": k + 1} for k in range(3)],
            "note": "benchmark payload " + "x" * 40,
        },
        separators=(",", ":"),
    )
    # Real receipt handles are opaque base64 of a few hundred bytes.
    handle_seed = hashlib.sha256(f"{message_id}:{index}".encode()).digest() * 8
    receipt_handle = "AQEB" + base64.b64encode(handle_seed[:256]).decode()
    message: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": receipt_handle,
        "MD5OfBody": md5_hex(body.encode()),
        "Body": body,
    }
    if system:
        sent = 1_767_225_600_000 + index
        message["Attributes"] = {
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": str(sent + 250),
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent),
        }
    if user:
        attributes = {
            "trace_id": {"DataType": "String", "StringValue": f"trace-{index:032x}"},
            "tenant": {"DataType": "String", "StringValue": "acme-corp"},
        }
        message["MD5OfMessageAttributes"] = md5_of_string_attributes(attributes)
        message["MessageAttributes"] = attributes
    return message


class Responder:
    """Builds whole HTTP responses; the costly parts are cached across requests."""

    def __init__(self) -> None:
        self._receive_bodies: dict[tuple[int, bool, bool], bytes] = {}
        self._date_second = -1
        self._date = b""
        self.requests = 0

    def _date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    def _receive_body(self, count: int, system: bool, user: bool) -> bytes:
        key = (count, system, user)
        body = self._receive_bodies.get(key)
        if body is None:
            messages = [canned_message(i, system=system, user=user) for i in range(count)]
            body = json.dumps({"Messages": messages}, separators=(",", ":")).encode()
            self._receive_bodies[key] = body
        return body

    def respond(self, target: bytes, body: bytes) -> bytes:
        self.requests += 1
        status = b"200 OK"
        try:
            params = json.loads(body) if body else {}
            if not isinstance(params, dict):
                raise ValueError("the request body is not a JSON object")
        except ValueError:
            params = None
        if params is None:
            status, payload = b"400 Bad Request", self._error("SerializationException")
        elif target == b"AmazonSQS.ReceiveMessage":
            count = params.get("MaxNumberOfMessages", 1)
            count = count if isinstance(count, int) and 1 <= count <= MAX_MESSAGES else 1
            system = bool(params.get("MessageSystemAttributeNames") or params.get("AttributeNames"))
            user = bool(params.get("MessageAttributeNames"))
            payload = self._receive_body(count, system, user)
        elif target == b"AmazonSQS.DeleteMessageBatch":
            entries = params.get("Entries") or []
            ids = [e.get("Id") for e in entries if isinstance(e, dict)]
            payload = json.dumps({"Successful": [{"Id": i} for i in ids]}).encode()
        else:
            status, payload = b"400 Bad Request", self._error("UnsupportedOperation")
        return b"".join(
            (
                b"HTTP/1.1 ",
                status,
                b"\r\nx-amzn-RequestId: ",
                str(uuid.uuid4()).encode(),
                b"\r\nDate: ",
                self._date_header(),
                b"\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: ",
                str(len(payload)).encode(),
                b"\r\nConnection: keep-alive\r\n\r\n",
                payload,
            )
        )

    @staticmethod
    def _error(code: str) -> bytes:
        return json.dumps(
            {"__type": f"com.amazonaws.sqs#{code}", "message": f"{code} (fake SQS server)"}
        ).encode()


class HTTPConnection(asyncio.Protocol):
    """One keep-alive connection: parses pipelined requests out of a byte buffer."""

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_REQUEST_BYTES:
                    self._fail(b"431 Request Header Fields Too Large")
                return
            length = 0
            target = b""
            close = False
            expect_continue = False
            for line in bytes(self._buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-amz-target":
                    target = value.strip()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
                elif name == b"expect":
                    expect_continue = value.strip().lower() == b"100-continue"
                elif name == b"transfer-encoding":
                    self._fail(b"501 Not Implemented")
                    return
            total = end + 4 + length
            if total > MAX_REQUEST_BYTES:
                self._fail(b"413 Content Too Large")
                return
            if len(self._buffer) < total:
                if expect_continue and len(self._buffer) == end + 4:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._transport.write(self._responder.respond(target, body))
            if close:
                self._transport.close()
                return

    def _fail(self, status: bytes) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self._transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    responder = Responder()
    # Build the cached bodies before announcing the port, so no client pays for the first one.
    for with_system in (False, True):
        for with_user in (False, True):
            responder._receive_body(MAX_MESSAGES, with_system, with_user)
    server = await loop.create_server(
        lambda: HTTPConnection(responder), host, port, reuse_address=True, backlog=128
    )
    bound = server.sockets[0].getsockname()[1]
    print(bound, flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        # End of file on stdin means the parent closed the pipe or died: shut down.
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    before = resource.getrusage(resource.RUSAGE_SELF)
    async with server:
        await stop.wait()
    after = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1e6 / max(responder.requests, 1)
    user = (after.ru_utime - before.ru_utime) * scale
    system = (after.ru_stime - before.ru_stime) * scale
    print(
        f"fake SQS server: {responder.requests} requests, CPU per request "
        f"{user + system:.0f} µs ({user:.0f} user + {system:.0f} sys)",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fast fake SQS JSON-protocol server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--cpu", type=int, default=None, help="pin the server to this CPU (Linux only)"
    )
    args = parser.parse_args(argv)
    if args.cpu is not None:
        # Pin before the event loop starts any thread, so every thread inherits it.
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
