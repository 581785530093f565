"""Adversarial tests of the client on trio_sqs's own HTTP/1.1 transport (issue 12), over real
sockets on 127.0.0.1 (ports the OS picks): tiny scripted servers in the test's nursery, and the
in-memory fake served over HTTP (``serve_fake_sqs``).

Every point of a request is reached by an event (the server saw the request, sent part of the
answer, ...), never by sleeping. Known bugs are ``xfail(strict=True)`` with the line at fault.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trio_sqs
import trio_sqs._transport
from trio_sqs import (
    ClockSkewError,
    ConfigurationError,
    Limits,
    MessageAttributeValue,
    QueueDoesNotExist,
    RetryPolicy,
    ServiceError,
    SQSClient,
    TransportError,
)
from trio_sqs._connect import proxy_for
from trio_sqs._transport import TrioTransport
from trio_sqs.testing import FakeSQS, serve_fake_sqs

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")
NO_RETRY = RetryPolicy(max_attempts=1)
QUICK_RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The machine's proxy variables would send the tests' requests elsewhere."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


# -- a scripted server -----------------------------------------------------------------------------


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, index: int, stream: trio.SocketStream) -> None:
        self.index = index
        self.stream = stream
        self.buffer = bytearray()
        self.requests: list[tuple[bytes, bytes]] = []
        self.got_request = trio.Event()
        self.closed = trio.Event()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed.set()
        self.buffer += data
        return bool(data)

    async def read_head(self) -> bytes | None:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if not await self._fill():
                return None
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def read_request(self) -> tuple[bytes, bytes] | None:
        """The next request's head and body, or None once the client closed."""
        head = await self.read_head()
        if head is None:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            if not await self._fill():
                return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self.requests.append((head, body))
        self.got_request.set()
        return head, body

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_closed(self) -> None:
        while await self._fill():
            self.buffer.clear()


Behaviour = Callable[[Peer], Awaitable[None]]


class Server:
    """Runs ``behaviour(peer)`` for every connection; counts connections open at once."""

    def __init__(self, behaviour: Behaviour, small_receive_buffer: bool = False) -> None:
        self.behaviour = behaviour
        self.small_receive_buffer = small_receive_buffer
        self.peers: list[Peer] = []
        self.open = 0
        self.max_open = 0
        self.port = 0
        self.accepted = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> Server:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        if self.small_receive_buffer:
            listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, self._handle, listeners)
        return self

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = Peer(len(self.peers), stream)
        self.peers.append(peer)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self.accepted.set()
        try:
            await self.behaviour(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # Counted closed once the client closed its side (or the script ended it).
            if not peer.closed.is_set():
                with trio.move_on_after(5):
                    await peer.wait_closed()
            self.open -= 1
            stream.socket.close()


def answer(
    body: bytes = b"{}",
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    length: int | None = None,
    reason: str = "OK",
) -> bytes:
    """A response: Content-Length ``length`` (default: the body's; -1: none) and ``headers``."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    lines.append(b"Content-Type: application/x-amz-json-1.0\r\n")
    lines.append(b"x-amzn-RequestId: req-1\r\n")
    if length != -1:
        lines.append(b"Content-Length: %d\r\n" % (len(body) if length is None else length))
    for name, value in headers or []:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines) + b"\r\n" + body


def send_answer(body: str = "x") -> bytes:
    md5 = hashlib.md5(body.encode()).hexdigest()
    return json.dumps({"MessageId": "m-1", "MD5OfMessageBody": md5}).encode()


def scripted(*answers: bytes) -> Behaviour:
    """Answer the requests of each connection with ``answers`` in turn (the last one repeats)."""

    async def behaviour(peer: Peer) -> None:
        n = 0
        while await peer.read_request() is not None:
            await peer.send(answers[min(n, len(answers) - 1)])
            n += 1

    return behaviour


@asynccontextmanager
async def client_for(url: str, **kwargs: Any) -> AsyncIterator[SQSClient]:
    kwargs.setdefault("retry", NO_RETRY)
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_fips=False,
        use_dualstack=False,
        **kwargs,
    ) as client:
        yield client


def direct_of(client: SQSClient) -> TrioTransport:
    direct = client._direct
    assert isinstance(direct, TrioTransport)
    return direct


def queue_of(server: Server) -> str:
    return f"{server.url}/123456789012/q"


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The response parser of the client's transport (open_client takes the default one)."""
    name: str = request.param
    monkeypatch.setenv("TRIO_SQS_HTTP_PARSER", name)
    return name


# -- 1. cancellation at every point of a call -------------------------------------------------------


async def test_cancel_while_waiting_for_a_budget_slot(parser: str) -> None:
    release = trio.Event()

    async def behaviour(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await release.wait()
            await peer.send(answer())

    async with trio.open_nursery() as nursery:
        server = await Server(behaviour).start(nursery)
        async with client_for(server.url, limits=Limits(max_other_connections=1)) as client:
            direct = direct_of(client)
            nursery.start_soon(client.delete_message, queue_of(server), "h-0")
            await server.accepted.wait()
            await server.peers[0].got_request.wait()
            with trio.CancelScope() as scope:
                scope.cancel()  # cancelled before it even waits: it must not take a slot
                await client.delete_message(queue_of(server), "h-1")
            with trio.move_on_after(0.05) as waited:  # it waits for the slot, then gives up
                await client.delete_message(queue_of(server), "h-2")
            assert waited.cancelled_caught
            assert direct.open_connections == 1 and len(server.peers) == 1
            release.set()
            await client.delete_message(queue_of(server), "h-3")
            assert direct.open_connections == 1 == direct.opened
        nursery.cancel_scope.cancel()
    assert [len(p.requests) for p in server.peers] == [2]


async def _cancel_at(
    parser: str,
    behaviour: Behaviour,
    reached: Callable[[Server], Awaitable[None]],
    call: Callable[[SQSClient, str], Awaitable[object]],
    small_receive_buffer: bool = False,
) -> Server:
    """Cancel ``call`` once the server ``reached`` its point, then check the connection was closed
    and the client still works (a second connection, answered normally)."""
    async with trio.open_nursery() as nursery:
        server = await Server(behaviour, small_receive_buffer).start(nursery)
        async with client_for(server.url) as client:
            direct = direct_of(client)
            with trio.CancelScope() as scope:

                async def cancel_when_reached() -> None:
                    await reached(server)
                    scope.cancel()

                nursery.start_soon(cancel_when_reached)
                await call(client, queue_of(server))
                pytest.fail("the call was not cancelled")  # pragma: no cover
            assert scope.cancelled_caught
            assert direct.open_connections == 0 and direct.idle_connections == 0
            await server.peers[0].closed.wait()  # the server sees the close
            # The client is usable: a fresh connection, answered normally.
            await client.delete_message(queue_of(server), "h-after")
            assert direct.opened == 2 and direct.open_connections == 1
        assert direct.open_connections == 0
        nursery.cancel_scope.cancel()
    return server


def second_connection_answers(first: Behaviour) -> Behaviour:
    async def behaviour(peer: Peer) -> None:
        if peer.index == 0:
            await first(peer)
            await peer.wait_closed()
        else:
            await scripted(answer())(peer)

    return behaviour


async def test_cancel_while_sending_a_large_body(parser: str) -> None:
    sent: list[bool] = []
    cancelled = trio.Event()

    async def stall(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_head()  # then stop reading: the client's send blocks
            await cancelled.wait()
            await peer.wait_closed()
        else:
            await scripted(answer())(peer)

    async def reached(server: Server) -> None:
        await server.accepted.wait()
        await trio.testing.wait_all_tasks_blocked()  # the client waits to write
        cancelled.set()  # (the server drains once the cancellation, next, is done)

    async def call(client: SQSClient, url: str) -> object:
        # Larger than any send buffer plus the server's (small) receive window.
        return await client.call(
            "SendMessage",
            {"QueueUrl": url, "MessageBody": "x" * 16 * 1024 * 1024},
            on_sent=lambda: sent.append(True),
        )

    server = await _cancel_at(parser, stall, reached, call, small_receive_buffer=True)
    assert server.peers[0].requests == [] and sent == []  # never sent in full


async def test_cancel_while_waiting_for_the_answer(parser: str) -> None:
    async def hold(peer: Peer) -> None:
        await peer.read_request()

    async def reached(server: Server) -> None:
        await server.accepted.wait()
        await server.peers[0].got_request.wait()

    async def call(client: SQSClient, url: str) -> object:
        return await client.receive_messages(url, wait_time=20)

    await _cancel_at(parser, second_connection_answers(hold), reached, call)


async def test_cancel_while_reading_the_body(parser: str) -> None:
    sent_half = trio.Event()

    async def half(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(b'{"Messages": [', length=1000))
        sent_half.set()

    async def reached(server: Server) -> None:
        await sent_half.wait()
        await trio.testing.wait_all_tasks_blocked()

    async def call(client: SQSClient, url: str) -> object:
        return await client.receive_messages(url, wait_time=1)

    await _cancel_at(parser, second_connection_answers(half), reached, call)


async def test_cancel_during_the_backoff_between_attempts(parser: str) -> None:
    failed = trio.Event()

    async def behaviour(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if failed.is_set():
                await peer.send(answer())
            else:
                await peer.send(answer(b'{"__type": "InternalError"}', status=500))
                failed.set()

    async with trio.open_nursery() as nursery:
        server = await Server(behaviour).start(nursery)
        retry = RetryPolicy(max_attempts=3, base_delay=3600.0, max_delay=3600.0)
        async with client_for(server.url, retry=retry, random_seed=1) as client:
            direct = direct_of(client)
            with trio.CancelScope() as scope:

                async def cancel() -> None:
                    await failed.wait()
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

                nursery.start_soon(cancel)
                await client.delete_message(queue_of(server), "h")
            assert scope.cancelled_caught
            # The 500's connection went back to the pool, complete and reusable.
            assert direct.open_connections == 1 == direct.idle_connections
            await client.delete_message(queue_of(server), "h")
            assert direct.opened == 1
        nursery.cancel_scope.cancel()


# -- a consumer on a real socket -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["leave the block", "cancel the scope"])
async def test_consumer_stops_promptly_with_polls_in_flight_and_loses_nothing(how: str) -> None:
    fake = FakeSQS()
    handled: list[str] = []
    all_handled = trio.Event()
    count = 25

    async def handler(message: trio_sqs.Message) -> None:
        handled.append(message.body)
        if len(handled) == count:
            all_handled.set()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_fake_sqs, fake)
        async with client_for(endpoint, retry=QUICK_RETRY) as client:
            url = await client.create_queue(f"consumer-{how.replace(' ', '-')}")
            for i in range(count):
                await client.send_message(url, f"m{i}")
            direct = direct_of(client)
            with trio.CancelScope() as outer:
                async with trio_sqs.open_consumer(url, handler, client=client, pollers=3):
                    await all_handled.wait()
                    # Every poller is now in a long poll the server holds (the queue is empty).
                    queue = fake.queue(url)
                    await trio.testing.wait_all_tasks_blocked()
                    assert queue.waiting_polls >= 1
                    with trio.fail_after(5):  # a hang guard: stopping takes no poll's wait
                        if how == "cancel the scope":
                            outer.cancel()
                            await trio.sleep_forever()
            assert outer.cancelled_caught == (how == "cancel the scope")
            assert sorted(handled) == sorted(f"m{i}" for i in range(count))
            counts = fake.queue(url).counts()
            assert counts.visible == 0 and counts.in_flight == 0  # every one deleted
            # The cancelled polls' connections are closed; only idle ones remain.
            assert direct.open_connections == direct.idle_connections
            assert await client.get_queue_url(url.rpartition("/")[2]) == url
        nursery.cancel_scope.cancel()


# -- 2. hostile servers ----------------------------------------------------------------------------


async def _outcome(server_answer: bytes, operation: str, close: bool = False) -> Any:
    """What ``operation`` gives (or raises) against a server answering ``server_answer`` to
    every request (``close``: then closing the connection)."""

    async def behaviour(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(server_answer)
            if close:
                await peer.stream.send_eof()

    async with trio.open_nursery() as nursery:
        server = await Server(behaviour).start(nursery)
        # The call's deadline bounds any answer that never ends (a hang fails the test).
        async with client_for(server.url, call_timeout=5) as client:
            url = queue_of(server)
            try:
                if operation == "SendMessage":
                    return await client.send_message(url, "x")
                if operation == "ReceiveMessage":
                    return await client.receive_messages(url, wait_time=0)
                if operation == "DeleteMessage":
                    return await client.delete_message(url, "h")
                return await client.get_queue_url("q")
            except (TransportError, ServiceError) as exc:
                return exc
            finally:
                nursery.cancel_scope.cancel()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


HOSTILE: dict[str, tuple[bytes, str, type[Exception] | None]] = {
    "garbage JSON": (answer(b"{nope"), "SendMessage", TransportError),
    "JSON null": (answer(b"null"), "SendMessage", TransportError),
    "JSON list": (answer(b"[1, 2]"), "ReceiveMessage", TransportError),
    "Messages a string": (answer(b'{"Messages": "x"}'), "ReceiveMessage", TransportError),
    "Messages a list of strings": (answer(b'{"Messages": ["x"]}'), "ReceiveMessage", None),
    "Messages with a null": (answer(b'{"Messages": [null]}'), "ReceiveMessage", None),
    "a binary attribute not base64": (
        answer(
            json.dumps(
                {
                    "Messages": [
                        {
                            "MessageId": "1",
                            "ReceiptHandle": "h",
                            "Body": "x",
                            "MD5OfBody": hashlib.md5(b"x").hexdigest(),
                            "MessageAttributes": {
                                "b": {"DataType": "Binary", "BinaryValue": "!!not base64!!"}
                            },
                        }
                    ]
                }
            ).encode()
        ),
        "ReceiveMessage",
        None,
    ),
    "MessageId a number": (answer(b'{"MessageId": 5}'), "SendMessage", TransportError),
    "empty body": (answer(b""), "SendMessage", TransportError),
    "HTML": (
        answer(b"<html>oops</html>", headers=[("Content-Type", "text/html")]),
        "SendMessage",
        TransportError,
    ),
    "huge body": (
        answer(json.dumps({"QueueUrl": "u", "Pad": "x" * (8 * 1024 * 1024)}).encode()),
        "GetQueueUrl",
        None,
    ),
    "gzip": (
        answer(_gzip(send_answer()), headers=[("Content-Encoding", "gzip")]),
        "SendMessage",
        None,
    ),
    "gzip, corrupt": (
        answer(b"\x1f\x8b not gzip at all", headers=[("Content-Encoding", "gzip")]),
        "SendMessage",
        TransportError,
    ),
    "deflate": (
        answer(
            __import__("zlib").compress(send_answer()), headers=[("Content-Encoding", "deflate")]
        ),
        "SendMessage",
        None,
    ),
    "br": (
        answer(send_answer(), headers=[("Content-Encoding", "br")]),
        "SendMessage",
        TransportError,
    ),
    "Content-Length too long, then close": (
        answer(send_answer(), length=10_000),
        "SendMessage",
        TransportError,
    ),
    "two different Content-Lengths": (
        answer(send_answer(), headers=[("Content-Length", "3")]),
        "SendMessage",
        TransportError,
    ),
    "duplicate headers": (
        answer(
            send_answer(),
            headers=[("x-amzn-RequestId", "req-2"), ("Content-Type", "text/plain"), ("Date", "x")],
        ),
        "SendMessage",
        None,
    ),
    "non-ASCII header values": (
        answer(send_answer(), headers=[("x-amzn-RequestId", "caf\xe9"), ("X-Odd", "\xff\xfe")]),
        "SendMessage",
        None,
    ),
    "Connection: close": (
        answer(send_answer(), headers=[("Connection", "close")]),
        "SendMessage",
        None,
    ),
    "close-delimited body": (
        answer(send_answer(), length=-1, headers=[("Connection", "close")]),
        "SendMessage",
        None,
    ),
    "100 Continue first": (b"HTTP/1.1 100 Continue\r\n\r\n" + answer(), "DeleteMessage", None),
    "204 No Content": (
        b"HTTP/1.1 204 No Content\r\nx-amzn-RequestId: r\r\n\r\n",
        "DeleteMessage",
        None,
    ),
    "status line garbage": (b"HTTP/1.1 two hundred OK\r\n\r\n", "DeleteMessage", TransportError),
    "not HTTP at all, then close": (b"SSH-2.0-OpenSSH_9.6\r\n", "DeleteMessage", TransportError),
    "header without a colon": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nbroken header\r\n\r\n{}",
        "DeleteMessage",
        TransportError,
    ),
    "bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "DeleteMessage",
        TransportError,
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
        "DeleteMessage",
        None,
    ),
    "400 JSON error": (
        answer(
            b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no"}',
            status=400,
            headers=[("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender")],
        ),
        "SendMessage",
        QueueDoesNotExist,
    ),
    "400 garbage": (answer(b"\x00\xff{{", status=400), "SendMessage", ServiceError),
    "500 HTML": (
        answer(b"<html>", status=500, headers=[("Content-Type", "text/html")]),
        "SendMessage",
        ServiceError,
    ),
    "skew error with a garbage Date": (
        answer(
            b'{"__type": "com.amazon.coral.service#RequestExpired", "message": "expired"}',
            status=400,
            headers=[("Date", "not a date \xff")],
        ),
        "SendMessage",
        ClockSkewError,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_answers_are_ours_to_raise(parser: str, case: str) -> None:
    server_answer, operation, expected = HOSTILE[case]
    outcome = await _outcome(
        server_answer, operation, close=b"Connection: close" in server_answer or "close" in case
    )
    assert "did not complete" not in str(outcome)
    if expected is None:
        assert not isinstance(outcome, BaseException), outcome
    else:
        assert isinstance(outcome, expected), outcome
        assert outcome.__cause__ is None or not isinstance(outcome.__cause__, KeyError)
    if case in ("gzip", "deflate", "duplicate headers", "non-ASCII header values"):
        assert outcome.message_id == "m-1"
    if case == "huge body":
        assert outcome == "u"
    if case == "Messages a list of strings" or case == "Messages with a null":
        assert outcome.messages == () and len(outcome.corrupt) == 1


async def test_bytes_past_the_content_length(parser: str) -> None:
    """Answered with more bytes than its Content-Length: h11 takes the answer (and drops the
    connection), httptools refuses it; either way nothing foreign escapes."""
    outcome = await _outcome(
        answer(send_answer() + b"junk", length=len(send_answer())), "SendMessage"
    )
    if parser == "h11":
        assert outcome.message_id == "m-1"
    else:
        assert isinstance(outcome, TransportError)


async def test_binary_attributes_round_trip_through_the_fast_parser(parser: str) -> None:
    fake = FakeSQS(verify_signatures=True)
    blob = bytes(range(256)) * 3
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_fake_sqs, fake)
        async with client_for(endpoint) as client:
            url = await client.create_queue("binary-attributes")
            await client.send_message(
                url,
                "body",
                message_attributes={
                    "blob": MessageAttributeValue.binary(blob),
                    "custom": MessageAttributeValue("Binary.gz", binary_value=b"\x00"),
                    "s": MessageAttributeValue.string("caf\xe9 \u2603"),
                },
            )
            result = await client.receive_messages(url, wait_time=0)
        nursery.cancel_scope.cancel()
    [message] = result.messages
    assert message.message_attributes["blob"].binary_value == blob
    assert message.message_attributes["custom"].binary_value == b"\x00"
    assert message.message_attributes["s"].string_value == "caf\xe9 \u2603"


async def test_connection_close_answers_are_not_reused(parser: str) -> None:
    async with trio.open_nursery() as nursery:
        server = await Server(
            scripted(answer(send_answer(), headers=[("Connection", "close")]))
        ).start(nursery)
        async with client_for(server.url) as client:
            direct = direct_of(client)
            for _ in range(3):
                await client.send_message(queue_of(server), "x")
                assert direct.open_connections == 0
            assert direct.opened == 3
        nursery.cancel_scope.cancel()


async def test_a_server_that_closes_after_each_answer_is_seen_before_reuse(parser: str) -> None:
    """The server closes its keep-alive connection right after answering; once that close has
    reached us, the next call takes a new connection without a failed attempt."""

    async def answer_once(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(send_answer()))
        await peer.stream.send_eof()

    async with trio.open_nursery() as nursery:
        server = await Server(answer_once).start(nursery)
        async with client_for(server.url) as client:  # no retries
            direct = direct_of(client)
            for _ in range(3):
                await client.send_message(queue_of(server), "x")
                for conns in direct._idle.values():
                    for conn in conns:
                        await trio.lowlevel.wait_readable(conn.socket)
            assert direct.opened == 3
        nursery.cancel_scope.cancel()
    assert [len(p.requests) for p in server.peers] == [1, 1, 1]


async def test_the_stale_connection_race_costs_one_retry(parser: str) -> None:
    """The server closes an idle connection just as we reuse it (our request crossed its close):
    the attempt fails on the dead connection and the retry succeeds on a fresh one."""

    async def close_on_reuse(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(send_answer()))
        await peer.read_request()  # the reuse: close without answering
        peer.stream.socket.close()

    async with trio.open_nursery() as nursery:
        server = await Server(close_on_reuse).start(nursery)
        async with client_for(server.url, retry=QUICK_RETRY) as client:
            direct = direct_of(client)
            await client.send_message(queue_of(server), "x")
            result = await client.send_message(queue_of(server), "x")
            assert result.message_id == "m-1"
            assert direct.opened == 2 and direct.open_connections == 1
        nursery.cancel_scope.cancel()


async def test_a_slow_drip_ends_at_the_call_timeout(parser: str) -> None:
    async def drip(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(b"", length=1000))
        while True:
            await peer.send(b" ")
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        server = await Server(drip).start(nursery)
        async with client_for(server.url, call_timeout=0.3) as client:
            with pytest.raises(TransportError, match=r"did not complete within 0\.3 s"):
                await client.delete_message(queue_of(server), "h")
            assert direct_of(client).open_connections == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "name",
    [
        "h11",
        "httptools",
    ],
)
async def test_a_response_head_over_64_kib_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("TRIO_SQS_HTTP_PARSER", name)
    head = answer(headers=[(f"X-Pad-{i}", "p" * 1000) for i in range(66)])
    split = head.index(b"X-Pad-60")

    async def in_two_writes(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head[:split])  # under 64 KiB: read whole, incomplete
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(head[split:])  # the rest, ending the head past 64 KiB

    async with trio.open_nursery() as nursery:
        server = await Server(in_two_writes).start(nursery)
        async with client_for(server.url, call_timeout=5) as client:
            with pytest.raises(TransportError, match=r"larger than|too long"):
                await client.delete_message(queue_of(server), "h")
        nursery.cancel_scope.cancel()
    assert len(head) > 65536 > split


# -- 3. bad input at the new entry points ----------------------------------------------------------


@pytest.mark.parametrize("bad", [1, 0, None, b"/etc/ssl", ["x"], 1.5])
async def test_verify_must_be_a_bool_a_path_or_a_context(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="verify"):
        async with client_for("https://127.0.0.1:1", verify=bad):
            pass  # pragma: no cover


async def test_a_missing_ca_bundle_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="verify"):
        async with client_for("https://127.0.0.1:1", verify="/nonexistent/ca.pem"):
            pass


async def test_a_missing_ca_bundle_with_a_proxy_is_a_configuration_error(
    no_proxies: pytest.MonkeyPatch,
) -> None:
    no_proxies.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="verify"):
        async with client_for("https://sqs.us-east-1.amazonaws.com", verify="/nonexistent/ca.pem"):
            pass


def test_transport_parser_must_be_known() -> None:
    with pytest.raises(ValueError, match="parser"):
        TrioTransport(parser="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1e-300, 1, 2.5])
async def test_small_call_timeouts_are_taken(bad: float) -> None:
    async with client_for("http://127.0.0.1:1", call_timeout=bad) as client:
        assert client._call_timeout == float(bad)


@pytest.mark.parametrize(
    "suffix",
    ["/prefix", "/a/b/", "/a%20b", "/caf%C3%A9", "/x/../y", "//double"],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_endpoint_paths_and_ipv6_are_signed_as_sent(
    parser: str, host: str, suffix: str
) -> None:
    """The fake checks every signature against the request target and Host header it got."""
    fake = FakeSQS(verify_signatures=True)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            lambda task_status: serve_fake_sqs(fake, host=host, task_status=task_status)
        )
        async with client_for(endpoint + suffix) as client:
            url = await client.create_queue("paths")  # botocore serializes, we sign
            await client.send_message(url, "x")  # the fast path
            [message] = (await client.receive_messages(url, wait_time=0)).messages
            await client.delete_message(url, message.receipt_handle)
        nursery.cancel_scope.cancel()
    assert fake.call_counts["DeleteMessage"] == 1


# -- 4. clock skew ---------------------------------------------------------------------------------


@asynccontextmanager
async def skewed(skew: float) -> AsyncIterator[tuple[FakeSQS, SQSClient, str]]:
    fake = FakeSQS(verify_signatures=True, clock_skew=skew)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_fake_sqs, fake)
        async with client_for(endpoint) as client:  # no retries: only the skew correction
            fake.clock_skew = 0.0
            url = await client.create_queue("skewed")
            fake.clock_skew = skew
            yield fake, client, url
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("skew", [900.0, -900.0])
async def test_a_skew_is_corrected_once_over_http(skew: float) -> None:
    async with skewed(skew) as (fake, client, url):
        await client.send_message(url, "x")
        assert abs(client._skew - skew) < 2
        await client.send_message(url, "y")
        assert fake.call_counts["SendMessage"] == 2


async def test_concurrent_calls_rejected_for_skew_are_all_corrected() -> None:
    async with skewed(900.0) as (_, client, url):
        outcomes: list[object] = []

        async def send(i: int) -> None:
            try:
                outcomes.append(await client.send_message(url, f"m{i}"))
            except ClockSkewError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(send, i)
        assert abs(client._skew - 900) < 2, client._skew
        assert not [o for o in outcomes if isinstance(o, Exception)], outcomes


async def test_a_skew_that_changes_sign_is_corrected_at_once() -> None:
    async with skewed(900.0) as (fake, client, url):
        await client.send_message(url, "x")
        fake.clock_skew = -900.0
        await client.send_message(url, "y")
        assert abs(client._skew + 900) < 2


# -- 5. load ---------------------------------------------------------------------------------------


async def test_two_hundred_calls_through_three_connections(parser: str) -> None:
    async def behaviour(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await trio.lowlevel.checkpoint()  # let the other connections' requests in
            await peer.send(answer())

    async with trio.open_nursery() as nursery:
        server = await Server(behaviour).start(nursery)
        async with client_for(server.url, limits=Limits(max_other_connections=3)) as client:
            done: list[int] = []

            async def settle(i: int) -> None:
                # Deletes take two of the three slots; the third is kept for visibility changes.
                if i % 5 == 0:
                    await client.change_message_visibility(queue_of(server), f"h{i}", 0)
                else:
                    await client.delete_message(queue_of(server), f"h{i}")
                done.append(i)

            async with trio.open_nursery() as calls:
                for i in range(200):
                    calls.start_soon(settle, i)
            assert sorted(done) == list(range(200))
            direct = direct_of(client)
            assert direct.opened == 3 and direct.open_connections == 3
        nursery.cancel_scope.cancel()
    assert server.max_open == 3
    assert sum(len(p.requests) for p in server.peers) == 200


# -- 6. proxies: ours against httpx's decision -----------------------------------------------------

PROXY_CASES = [
    ("", "https://sqs.us-east-1.amazonaws.com"),
    ("amazonaws.com", "https://sqs.us-east-1.amazonaws.com"),
    (".amazonaws.com", "https://sqs.us-east-1.amazonaws.com"),
    ("sqs.us-east-1.amazonaws.com", "https://sqs.us-east-1.amazonaws.com"),
    ("*", "https://sqs.us-east-1.amazonaws.com"),
    ("amazonaws.com:443", "https://sqs.us-east-1.amazonaws.com"),
    ("notamazonaws.com", "https://sqs.us-east-1.amazonaws.com"),
    ("127.0.0.1", "http://127.0.0.1:9324"),
    ("localhost", "http://localhost:9324"),
    ("::1", "http://[::1]:9324"),
    ("example.com:9324", "http://example.com:9324"),
    ("example.com:9999", "http://example.com:9324"),
    ("EXAMPLE.COM", "https://example.com"),
    (" example.com , other", "https://example.com"),
]
PROXY_DISAGREEMENTS = [
    (".example.com", "https://example.com"),
    (".example.com:9324", "http://example.com:9324"),
    ("localhost", "http://sqs.localhost:9324"),
    (".localhost", "http://localhost:9324"),
]


def _httpx_proxies(endpoint: str) -> bool:
    client = httpx.AsyncClient(trust_env=True, verify=False)  # (no CA bundle to load)
    return client._transport_for_url(httpx.URL(endpoint)) is not client._transport


def _set_proxy(monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)


@pytest.mark.parametrize(("no_proxy", "endpoint"), PROXY_CASES)
def test_proxy_choice_agrees_with_httpx(
    no_proxies: pytest.MonkeyPatch, no_proxy: str, endpoint: str
) -> None:
    _set_proxy(no_proxies, no_proxy)
    assert (proxy_for(endpoint) is not None) == _httpx_proxies(endpoint)


@pytest.mark.parametrize(("no_proxy", "endpoint"), PROXY_DISAGREEMENTS)
def test_proxy_never_ignored_where_httpx_would_proxy(
    no_proxies: pytest.MonkeyPatch, no_proxy: str, endpoint: str
) -> None:
    _set_proxy(no_proxies, no_proxy)
    assert _httpx_proxies(endpoint)
    assert proxy_for(endpoint) is not None


def _socksio_installed() -> bool:
    try:
        import socksio  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NO_PROXY", "[::1]"),
        ("HTTPS_PROXY", "ftp://proxy.corp:21"),
        pytest.param(
            "HTTPS_PROXY",
            "socks5://proxy.corp:1080",
            marks=pytest.mark.skipif(_socksio_installed(), reason="socksio is installed"),
        ),
    ],
)
async def test_proxy_variables_httpx_cannot_use_are_a_configuration_error(
    no_proxies: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    _set_proxy(no_proxies, "")
    no_proxies.setenv(variable, value)
    with pytest.raises(ConfigurationError):
        async with client_for("https://sqs.us-east-1.amazonaws.com"):
            pass
