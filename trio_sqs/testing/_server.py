"""The in-memory SQS over real HTTP/1.1 on Trio streams, for benchmarks, end-to-end tests and any
SQS client in another process (boto3, aiobotocore, the AWS CLI).

HTTP is read by a small parser of its own rather than h11: requests with ``Content-Length``
bodies (what every SDK sends for SQS's JSON protocol; ``Transfer-Encoding`` is answered 501),
keep-alive and pipelining, requests split across any number of reads, ``Expect: 100-continue``;
each answer goes out in one write with ``Content-Length``. A request it cannot read is answered
4xx/5xx and its connection closed; before closing, the server reads and drops what the client
still sends (for up to ``LINGER_SECONDS``), so that the close is not a reset that destroys the
answer. A connection is one task among others: a client that never finishes its request holds
only its own (no read timeout: this is a test server), and a bug while serving one connection
closes that one only (with a traceback on stderr). The benchmarks run against this
server: with h11 (and an answer in three writes) it spent about 400 µs of CPU per
ReceiveMessage/DeleteMessageBatch request, with this parser about 265 µs.

The server does not watch a connection while the fake works on its request: a client that goes
away during a long poll is noticed only when the answer is written, so over HTTP that poll's
messages count as ``deliveries``, not ``orphaned_deliveries`` (they stay in flight all the same,
as on SQS).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import parse_qsl

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._errors import FakeError
from ._queue import FakeQueue
from ._service import FakeSQS
from ._wire import answer

__all__ = ["main", "serve_fake_sqs"]

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
RECEIVE_BYTES = 65536
# After refusing a request, how long the server goes on reading (and dropping) what the client
# still sends before it closes: closing a socket with unread data resets the connection, and
# the client, still writing its body, would lose the answer.
LINGER_SECONDS = 2.0


def _queue_stats(fake: FakeSQS, queue: FakeQueue) -> dict[str, Any]:
    counts = queue.counts()
    stats: dict[str, Any] = {
        "visible": counts.visible,
        "in_flight": counts.in_flight,
        "delayed": counts.delayed,
        "waiting_polls": queue.waiting_polls,
        "deliveries": queue.deliveries,
        "orphaned_deliveries": queue.orphaned_deliveries,
    }
    stats["requests"] = dict(queue.call_counts)
    return stats


def _stats(fake: FakeSQS, query: str) -> dict[str, Any]:
    """The JSON of ``GET /stats``; see :func:`serve_fake_sqs`."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats: dict[str, Any] = {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "requests": dict(fake.call_counts),
    }
    wanted = dict(parse_qsl(query)).get("queue")
    if wanted is not None:
        try:
            stats["queue"] = _queue_stats(fake, fake.queue(wanted))
        except KeyError:
            stats["queue"] = None
    else:
        stats["queues"] = {name: _queue_stats(fake, q) for name, q in fake.queues.items()}
    return stats


class _BadRequest(Exception):
    """A request this server cannot read: answered with ``status``, then the connection closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body_length: int
    keep_alive: bool
    http_10: bool = False


def _parse_head(head: bytes) -> _Request:
    """The request line and headers of one HTTP/1.1 (or 1.0) request, without the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest(505, "only HTTP/1.1 and HTTP/1.0 are served")
    headers: dict[str, str] = {}
    length: str | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
            raise _BadRequest(400, "malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key == "content-length":
            # isascii: str.isdigit() also takes "²" (0xB2 in Latin-1), which int() refuses.
            if not (text.isascii() and text.isdigit()) or (length is not None and text != length):
                raise _BadRequest(400, "invalid Content-Length")
            length = text
        elif key == "transfer-encoding":
            raise _BadRequest(501, "only Content-Length bodies are served")
        headers[key] = text
    connection = headers.get("connection", "").lower()
    if version == b"HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    # (digits beyond the limit's own are too large whatever they say, and int() refuses more
    # than 4,300 of them)
    digits = length.lstrip("0") if length is not None else ""
    body_length = int(digits) if 0 < len(digits) <= len(str(MAX_REQUEST_BYTES)) else 0
    if len(digits) > len(str(MAX_REQUEST_BYTES)) or body_length > MAX_REQUEST_BYTES:
        raise _BadRequest(413, "request body too large")
    return _Request(
        method.decode("ascii"),
        target.decode("latin-1"),
        headers,
        body_length,
        keep_alive,
        http_10=version == b"HTTP/1.0",
    )


def _response_head(
    status: int, headers: dict[str, str], length: int, *, close: bool, http_10: bool = False
) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length"]
    lines.append(f"Content-Length: {length}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    elif http_10:
        lines.append("Connection: keep-alive\r\n")  # HTTP/1.0 closes unless told otherwise
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _Connection:
    """One client connection: requests read in order from a buffer (keep-alive, pipelining,
    requests split across any number of reads), each answered before the next is read."""

    def __init__(self, fake: FakeSQS, stream: trio.SocketStream) -> None:
        self.fake = fake
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        """Read more; False when the client closed its side."""
        data = await self.stream.receive_some(RECEIVE_BYTES)
        self.buffer += data
        return bool(data)

    async def _read_head(self) -> bytes | None:
        """The next request's head, or None if the client closed between requests."""
        searched = 0
        while True:
            while self.buffer[:2] == b"\r\n":
                del self.buffer[:2]  # empty lines before a request line may be ignored
            end = self.buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            if b"\n\n" in self.buffer:
                # Lines ending in a bare LF: the head would never end (CRLF CRLF) and the
                # client would wait for an answer forever.
                raise _BadRequest(400, "request head lines must end with CRLF")
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            searched = len(self.buffer)
            if not await self._fill():
                return None  # closed, between requests or in the middle of a head

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _linger(self) -> None:
        """Stop sending, then drop what the client still sends (for at most LINGER_SECONDS),
        so that the close that follows is not a reset that destroys the answer before the
        client read it."""
        with trio.move_on_after(LINGER_SECONDS):
            await self.stream.send_eof()
            while await self.stream.receive_some(RECEIVE_BYTES):
                pass

    async def serve(self) -> None:
        while True:
            try:
                head = await self._read_head()
                if head is None:
                    return
                request = _parse_head(head)
            except _BadRequest as exc:
                body = json.dumps({"message": str(exc)}).encode()
                headers = {"Content-Type": "application/json"}
                await self._send(_response_head(exc.status, headers, len(body), close=True) + body)
                await self._linger()
                return
            if request.headers.get("expect", "").lower() == "100-continue" and (
                len(self.buffer) < request.body_length
            ):
                await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(self.buffer) < request.body_length:
                if not await self._fill():
                    return  # closed in the middle of a body: nothing to answer
            body = bytes(self.buffer[: request.body_length])
            del self.buffer[: request.body_length]
            if not await self._answer(request, body):
                return

    async def _answer(self, request: _Request, body: bytes) -> bool:
        """Answer one request; False when the connection must close."""
        path, _, query = request.target.partition("?")
        close = not request.keep_alive
        if request.method == "GET" and path == "/stats":
            payload = json.dumps(_stats(self.fake, query)).encode()
            headers = {"Content-Type": "application/json"}
            status = 200
        else:
            try:
                reply = await answer(
                    self.fake, request.method, request.target, request.headers, body
                )
            except Exception:  # a bug of the fake: say so, and go on serving
                traceback.print_exc()
                payload = json.dumps(
                    {"__type": "InternalFailure", "message": "the fake failed (see its stderr)"}
                ).encode()
                headers = {"Content-Type": "application/x-amz-json-1.0"}
                status, close = 500, True
            else:
                if reply.action == "drop":
                    # SO_LINGER 0: close() sends RST, the client sees "connection reset".
                    self.stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return False
                payload, headers, status = reply.body, reply.headers, reply.status
                if reply.action == "stall":
                    await self._send(
                        _response_head(
                            status, headers, len(payload), close=close, http_10=request.http_10
                        )
                    )
                    while await self.stream.receive_some(RECEIVE_BYTES):
                        pass  # the body never comes; wait until the client gives up and closes
                    return False
        out = _response_head(status, headers, len(payload), close=close, http_10=request.http_10)
        await self._send(out if request.method == "HEAD" else out + payload)
        if close:
            await self._linger()  # whatever the client pipelined after it must not reset the answer
        return not close


async def _serve_connection(fake: FakeSQS, stream: trio.SocketStream) -> None:
    try:
        await _Connection(fake, stream).serve()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away; what it asked for has taken effect
    except Exception:
        # A bug of this server: say so, close this connection, and go on serving the others
        # (trio.serve_tcp lets a handler's exception out, which would stop the whole server).
        traceback.print_exc()
    finally:
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


async def serve_fake_sqs(
    fake: FakeSQS,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` over HTTP/1.1 until cancelled; report the endpoint URL with
    ``task_status.started()`` and make it the base of queue URLs created from then on.

    ``GET /stats`` answers JSON (for benchmarks and end-to-end tests)::

        {"cpu_seconds": 1.25,            # CPU time of this process so far (user + system)
         "requests": {"ReceiveMessage": 12, ...},   # calls that arrived, by operation
         "queues": {"NAME": {"visible": 0, "in_flight": 10, "delayed": 0,
                             "waiting_polls": 1,        # long polls waiting now
                             "deliveries": 10,          # messages handed out, ever
                             "orphaned_deliveries": 0,  # ...to polls cancelled in process
                             "requests": {"ReceiveMessage": 2, ...}}}}

    ``GET /stats?queue=NAME`` answers the same with one queue, ``"queue": {...}`` (``null`` if
    there is none), instead of ``"queues"``. A queue's ``"requests"`` (the calls that named it,
    by operation) are counted by the fake that ``python -m trio_sqs.testing`` serves; a
    :class:`FakeSQS` of your own has no such counts.

    Raises:
        OSError: if it cannot listen on ``host``:``port`` (in use, no such address), as itself
            rather than inside an exception group.

    Cancellation: stops listening and closes every connection.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            trio.serve_listeners, functools.partial(_serve_connection, fake), listeners
        )
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        fake.endpoint = f"http://{shown}:{bound_port}"
        task_status.started(fake.endpoint)


class _StartupError(Exception):
    """A one-line reason ``python -m trio_sqs.testing`` cannot start."""


async def _run(args: argparse.Namespace) -> None:
    fake = FakeSQS(
        region=args.region,
        verify_signatures=args.verify_signatures,
        record=False,
    )
    # Signals are caught from before the endpoint is printed: a parent that read it may send
    # SIGTERM at once and must see a clean exit.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                endpoint = await nursery.start(
                    functools.partial(serve_fake_sqs, fake, host=args.host, port=args.port)
                )
            except OSError as exc:
                raise _StartupError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
            # The queues exist before the endpoint is printed: a parent may use them at once.
            for name in args.queue:
                try:
                    fifo = {"Attributes": {"FifoQueue": "true"}} if name.endswith(".fifo") else {}
                    await fake.call("CreateQueue", {"QueueName": name, **fifo})
                except FakeError as exc:
                    nursery.cancel_scope.cancel()
                    raise _StartupError(f"--queue {name!r}: {exc.message}") from None
            print(endpoint, flush=True)
            if args.exit_on_stdin_eof:
                nursery.start_soon(_wait_for_eof, nursery.cancel_scope)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


async def _wait_for_eof(scope: trio.CancelScope) -> None:
    if sys.stdin is None:  # started with stdin closed: as good as at its end already
        scope.cancel()
        return
    async with trio.lowlevel.FdStream(sys.stdin.fileno()) as stdin:
        while await stdin.receive_some(4096):
            pass
    scope.cancel()


class _OneLineErrors(argparse.ArgumentParser):
    """Bad arguments: one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0 to 65535)")
    return port


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m trio_sqs.testing``: serve an in-memory SQS on 127.0.0.1 until SIGINT/SIGTERM.

    The first line on stdout is the endpoint URL, printed once the server listens, the
    ``--queue`` queues exist and SIGINT/SIGTERM are caught. Credentials: any key, unless
    ``--verify-signatures`` (then the access key ``testing`` with the secret ``testing``).

    Exit status: 0 after SIGINT/SIGTERM (or the end of stdin with ``--exit-on-stdin-eof``); 1
    with a one-line error when it cannot listen or create a ``--queue``; 2 for bad arguments.
    """
    parser = _OneLineErrors(
        prog="python -m trio_sqs.testing",
        description="Serve trio_sqs's in-memory SQS over HTTP (for tests and benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=0, help="0 picks a free port (default)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        help="create this queue at start (repeatable; a name ending in .fifo is a FIFO queue)",
    )
    parser.add_argument(
        "--verify-signatures",
        action="store_true",
        help="check SigV4 signatures (access key 'testing', secret 'testing')",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (a parent process that went away)",
    )
    args = parser.parse_args(argv)
    try:
        trio.run(_run, args)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        startup, rest = group.split(_StartupError)
        if startup is None or rest is not None:
            raise
        reason = startup.exceptions[0]
        while isinstance(reason, BaseExceptionGroup):
            reason = reason.exceptions[0]
        parser.exit(1, f"{parser.prog}: error: {reason}\n")
