"""trio_sqs's own HTTP/1.1 transport (``trio_sqs._transport.TrioTransport``) on real sockets.

Every test runs on both response parsers (h11 and httptools) against a tiny server on 127.0.0.1
(a port the OS picks) that runs in the test's nursery and does exactly what the test scripts, when
the test says so: the points of a request (waiting for a slot, connecting, sending, waiting for the
head, reading the body) are reached by events the server or the transport signal, never by
sleeping. Timeouts fire on the real clock, so they are short only where a test is about one
firing; no test bounds the wall time it takes.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

import trio_sqs
from trio_sqs import RetryPolicy
from trio_sqs._transport import (
    ParserName,
    RawResponse,
    Timeouts,
    TrioTransport,
    decode_content,
    head,
)

# Generous limits for every phase a test does not expect to time out: reached only if the test
# already failed (then they end it with an error instead of a hang).
RELAXED = Timeouts(connect=10.0, read=10.0, write=10.0, pool=10.0)
# The limit of the one phase a test is about: short, as it always elapses in full.
SHORT = 0.05
# Larger than the client's largest send buffer (net.ipv4.tcp_wmem's 4 MiB here, typical) plus the
# server's receive buffer (pinned small below): sending it blocks while the server does not read.
LARGE_BODY = 16 * 1024 * 1024

Behaviour = Callable[["Conn"], Awaitable[None]]


# -- a scriptable server ---------------------------------------------------------------------------


class Conn:
    """The server's side of one accepted connection: ``raw`` is the TCP stream, ``stream`` what
    HTTP goes over (TLS on a TLS server, the handshake done on the first byte read)."""

    def __init__(self, index: int, raw: trio.SocketStream, stream: trio.abc.Stream) -> None:
        self.index = index
        self.raw = raw
        self.stream = stream
        # Set once the client closed (end of stream or reset) or the server's stream broke.
        self.closed = trio.Event()
        self.requests: list[tuple[h11.Request, bytes]] = []
        self._h11 = h11.Connection(h11.SERVER)

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its (de-chunked) body, or None once the client closed."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.closed.set()
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.requests.append((request, bytes(body)))
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                self.closed.set()
                return None

    async def answer(
        self, body: bytes = b"ok", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """A 200 answer with a Content-Length, through h11 (which then expects the next request,
        or the end of the connection after ``Connection: close``)."""
        conn = self._h11
        all_headers = [("Content-Length", str(len(body))), *(headers or [])]
        data = conn.send(h11.Response(status_code=200, headers=all_headers, reason=b"OK"))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def wait_closed(self, stream: trio.abc.Stream | None = None) -> None:
        """Read (and drop) everything until the client closes the connection."""
        stream = stream if stream is not None else self.stream
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed.set()


async def serve_requests(conn: Conn) -> None:
    """The ordinary server: answer every request ``ok``, keep the connection alive."""
    while await conn.read_request() is not None:
        await conn.answer()


class Server:
    """``behaviour(conn)`` runs for each accepted connection (``conn.index``: 0, 1, ...)."""

    def __init__(
        self,
        behaviour: Behaviour = serve_requests,
        tls: ssl.SSLContext | None = None,
        small_receive_buffer: bool = False,
    ) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.small_receive_buffer = small_receive_buffer
        self.conns: list[Conn] = []
        self.port = 0
        self.accepted = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Server:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        if self.small_receive_buffer:
            # Inherited by the accepted sockets: a window so small that a client sending a large
            # body blocks as soon as the server stops reading.
            listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, self._handle, listeners)
        return self

    async def _handle(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True, https_compatible=True)
        conn = Conn(len(self.conns), raw, stream)
        self.conns.append(conn)
        self.accepted.set()
        try:
            await self.behaviour(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.closed.set()  # the client reset it, or rejected our certificate
        finally:
            raw.socket.close()


def get_head(port: int, method: str = "GET", length: int = 0) -> bytes:
    return head(method, "/", f"127.0.0.1:{port}", {"X-Test": "1"}, length)


async def fetch(
    transport: TrioTransport,
    port: int,
    *,
    scheme: str = "http",
    timeouts: Timeouts = RELAXED,
    body: bytes = b"",
    on_sent: Callable[[], None] | None = None,
) -> RawResponse:
    method = "POST" if body else "GET"
    return await transport.request(
        method.encode(),
        scheme,
        "127.0.0.1",
        port,
        get_head(port, method, len(body)),
        body,
        timeouts,
        on_sent,
    )


async def wait_idle_readable(transport: TrioTransport) -> None:
    """Wait until every idle connection of ``transport`` is readable (what the server sent or its
    close has reached our socket): the state the pool's check before reuse looks for."""
    for conns in transport._idle.values():
        for conn in conns:
            await trio.lowlevel.wait_readable(conn.socket)


class SpyReader:
    """Wraps the transport's response parser: ``fed`` is set once it was fed response bytes."""

    def __init__(self, inner: Any, fed: trio.Event) -> None:
        self.inner = inner
        self.fed = fed

    def feed(self, data: bytes) -> None:
        self.inner.feed(data)
        self.fed.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest) -> ParserName:
    name: ParserName = request.param
    return name


@pytest.fixture
async def make_transport(parser: ParserName) -> AsyncIterator[Callable[..., TrioTransport]]:
    made: list[TrioTransport] = []

    def make(**kwargs: Any) -> TrioTransport:
        transport = TrioTransport(parser=parser, **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_path(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """Trusts ``ca`` (and only it)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# httpx 0.28 deprecates a CA bundle path (httpx.create_ssl_context(verify=<str>)), which
# TrioTransport._ssl passes on as it is, and open_client's verify= takes only a path.
BUNDLE_PATH_DEPRECATED = "ignore:`verify=<str>` is deprecated:DeprecationWarning"


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca, "127.0.0.1", "localhost")


class Cancellable:
    """Runs one request in a cancel scope of its own, in the background."""

    def __init__(self, nursery: trio.Nursery, request: Callable[[], Awaitable[object]]) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.result: object = None
        nursery.start_soon(self._run, request)

    async def _run(self, request: Callable[[], Awaitable[object]]) -> None:
        with self.scope:
            self.result = await request()
        self.done.set()

    async def cancel(self) -> None:
        self.scope.cancel()
        await self.done.wait()
        assert self.scope.cancelled_caught, f"the request was not cancelled: {self.result!r}"


# -- 1. cancellation at each point: the slot is freed, the connection closed -----------------------


async def test_cancel_while_waiting_for_a_slot(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    held, release = trio.Event(), trio.Event()

    async def behaviour(conn: Conn) -> None:
        while await conn.read_request() is not None:
            held.set()
            await release.wait()
            await conn.answer()

    server = await Server(behaviour).start(nursery)
    transport = make_transport(max_connections=1)
    async with trio.open_nursery() as inner:
        first = Cancellable(inner, lambda: fetch(transport, server.port))
        await held.wait()
        waiting = Cancellable(inner, lambda: fetch(transport, server.port))
        await trio.testing.wait_all_tasks_blocked()
        assert transport._slots is not None
        assert transport._slots.statistics().tasks_waiting == 1
        await waiting.cancel()
        release.set()
        await first.done.wait()
    assert isinstance(first.result, RawResponse) and first.result.content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 1)
    # The cancelled waiter took no slot: the one slot serves the next request.
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 1)


async def test_cancel_while_connecting(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    tls_server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    hello = trio.Event()

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            # Read the ClientHello and never answer it: the client stays in its TLS handshake.
            assert await conn.raw.receive_some(65536)
            hello.set()
            await conn.wait_closed(conn.raw)
        else:
            await serve_requests(conn)

    server = await Server(behaviour, tls=tls_server_context).start(nursery)
    transport = make_transport(max_connections=1, verify=client_context)
    connecting = Cancellable(nursery, lambda: fetch(transport, server.port, scheme="https"))
    await hello.wait()
    assert transport.open_connections == 1  # TCP is up, TLS is not
    await connecting.cancel()
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()
    response = await fetch(transport, server.port, scheme="https")
    assert response.content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)


async def test_cancel_while_sending(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.stream.receive_some(1024)
            started.set()  # and read nothing more until the client gave up
            await cancelled.wait()
            await conn.wait_closed()
        else:
            await serve_requests(conn)

    server = await Server(behaviour, small_receive_buffer=True).start(nursery)
    transport = make_transport(max_connections=1)
    sent: list[bool] = []
    body = b"x" * LARGE_BODY
    sending = Cancellable(
        nursery, lambda: fetch(transport, server.port, body=body, on_sent=lambda: sent.append(True))
    )
    await started.wait()
    await sending.cancel()
    cancelled.set()
    assert sent == []
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)


async def test_cancel_while_waiting_for_the_head(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    received = trio.Event()

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            received.set()  # and never answer
            await conn.wait_closed()
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport(max_connections=1)
    sent = trio.Event()
    waiting = Cancellable(nursery, lambda: fetch(transport, server.port, on_sent=sent.set))
    await received.wait()
    await sent.wait()
    await waiting.cancel()
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)


async def test_cancel_while_reading_the_body(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            await conn.stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            )
            await conn.wait_closed()
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport(max_connections=1)
    fed = trio.Event()
    spies: list[SpyReader] = []
    make_reader = transport._reader

    def spy(method: bytes) -> Any:
        spies.append(SpyReader(make_reader(method), fed))
        return spies[-1]

    transport._reader = spy
    reading = Cancellable(nursery, lambda: fetch(transport, server.port))
    await fed.wait()
    assert spies[0].inner.status == 200 and not spies[0].inner.done
    await reading.cancel()
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)


# -- 2. TLS ------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(BUNDLE_PATH_DEPRECATED)
@pytest.mark.parametrize("how", ["ca_bundle_path", "ssl_context"])
async def test_tls_trusted_certificate(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    tls_server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    ca_path: str,
    how: str,
) -> None:
    server = await Server(tls=tls_server_context).start(nursery)
    transport = make_transport(verify=ca_path if how == "ca_bundle_path" else client_context)
    for _ in range(2):
        response = await fetch(transport, server.port, scheme="https")
        assert (response.status_code, response.content) == (200, b"ok")
    assert (transport.open_connections, transport.opened) == (1, 1)


async def test_tls_ca_bundle_path_is_not_deprecated(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    tls_server_context: ssl.SSLContext,
    ca_path: str,
) -> None:
    server = await Server(tls=tls_server_context).start(nursery)
    transport = make_transport(verify=ca_path)
    assert (await fetch(transport, server.port, scheme="https")).content == b"ok"


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (("example.org",), "IP address mismatch, certificate is not valid for '127.0.0.1'"),
        (None, "unable to get local issuer certificate"),
    ],
    ids=["wrong_host_name", "untrusted"],
)
async def test_tls_certificate_refused(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    ca: trustme.CA,
    client_context: ssl.SSLContext,
    names: tuple[str, ...] | None,
    why: str,
) -> None:
    if names is None:
        context = server_context(trustme.CA(), "127.0.0.1")  # a CA the client does not trust
    else:
        context = server_context(ca, *names)
    server = await Server(tls=context).start(nursery)
    transport = make_transport(verify=client_context)
    with pytest.raises(httpx.ConnectError) as caught:
        await fetch(transport, server.port, scheme="https")
    message = str(caught.value)
    assert f"TLS certificate of 127.0.0.1:{server.port} not accepted" in message
    assert why in message
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()


def _get_queue_url_server(context: ssl.SSLContext) -> Server:
    async def behaviour(conn: Conn) -> None:
        while (received := await conn.read_request()) is not None:
            request, body = received
            assert dict(request.headers)[b"x-amz-target"] == b"AmazonSQS.GetQueueUrl"
            assert json.loads(body)["QueueName"].startswith("transport-tls-")
            await conn.answer(
                json.dumps({"QueueUrl": "https://localhost/q"}).encode(),
                [
                    ("Content-Type", "application/x-amz-json-1.0"),
                    ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
                ],
            )

    return Server(behaviour, tls=context)


def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_client uses httpx's transport, not ours, when the environment names a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.filterwarnings(BUNDLE_PATH_DEPRECATED)
async def test_open_client_over_tls(
    parser: ParserName,
    nursery: trio.Nursery,
    tls_server_context: ssl.SSLContext,
    ca_path: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr("trio_sqs._transport.default_parser", lambda: parser)
    server = await _get_queue_url_server(tls_server_context).start(nursery)
    no_proxy_in_environment(monkeypatch)
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url=f"https://localhost:{server.port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        verify=ca_path,
    ) as client:
        assert client._direct is not None and client._direct.parser == parser
        url = await client.get_queue_url(f"transport-tls-{request.node.name}")
    assert url == "https://localhost/q"


@pytest.mark.filterwarnings(BUNDLE_PATH_DEPRECATED)
async def test_open_client_refuses_an_untrusted_certificate(
    parser: ParserName,
    nursery: trio.Nursery,
    ca_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trio_sqs._transport.default_parser", lambda: parser)
    untrusted = server_context(trustme.CA(), "127.0.0.1", "localhost")
    server = await _get_queue_url_server(untrusted).start(nursery)
    policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.001)
    no_proxy_in_environment(monkeypatch)
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url=f"https://localhost:{server.port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        verify=ca_path,
        retry=policy,
    ) as client:
        with pytest.raises(trio_sqs.TransportError) as caught:
            await client.get_queue_url("transport-tls-untrusted")
    message = str(caught.value)
    assert f"TLS certificate of localhost:{server.port} not accepted" in message
    assert "unable to get local issuer certificate" in message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    # A refused certificate is final (the same certificate is refused next time): one
    # handshake, no retry, no request ever sent.
    assert len(server.conns) == 1
    assert all(not conn.requests for conn in server.conns)


# -- 3. keep-alive and framing ---------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    server = await Server().start(nursery)
    transport = make_transport(keepalive_expiry=60.0)
    for _ in range(3):
        response = await fetch(transport, server.port)
        assert (response.status_code, response.reason_phrase, response.content) == (
            200,
            b"OK",
            b"ok",
        )
        assert response.headers["content-length"] == "2"
        assert transport.idle_connections == 1
    assert (transport.open_connections, transport.opened) == (1, 1)
    assert len(server.conns[0].requests) == 3
    await transport.aclose()
    assert (transport.open_connections, transport.idle_connections) == (0, 0)
    await server.conns[0].closed.wait()


async def test_server_closing_an_idle_connection_is_seen_before_reuse(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            await conn.answer()
            await conn.raw.aclose()  # as SQS does with idle connections
            conn.closed.set()
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport(keepalive_expiry=60.0)
    assert (await fetch(transport, server.port)).content == b"ok"
    assert transport.idle_connections == 1
    await server.conns[0].closed.wait()
    await wait_idle_readable(transport)
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)


async def test_idle_connection_past_keepalive_expiry_is_not_reused(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    server = await Server().start(nursery)
    transport = make_transport(keepalive_expiry=0.05)
    assert (await fetch(transport, server.port)).content == b"ok"
    assert transport.idle_connections == 1
    await trio.sleep(0.1)  # the subject: an idle time past the expiry (on the same clock)
    assert (await fetch(transport, server.port)).content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 2)
    await server.conns[0].closed.wait()


async def test_connection_close_answer_is_not_reused(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        assert await conn.read_request() is not None
        await conn.answer(headers=[("Connection", "close")])
        await conn.wait_closed()  # the client closes it, having read the answer

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    for _ in range(2):
        assert (await fetch(transport, server.port)).content == b"ok"
        assert (transport.open_connections, transport.idle_connections) == (0, 0)
    assert transport.opened == 2
    await server.conns[0].closed.wait()


async def test_answer_delimited_by_the_end_of_the_connection(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    parser: ParserName,
    request: pytest.FixtureRequest,
) -> None:
    async def behaviour(conn: Conn) -> None:
        assert await conn.read_request() is not None
        await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await conn.stream.send_all(b"world")
        await conn.raw.aclose()

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    for _ in range(2):
        response = await fetch(transport, server.port)
        assert (response.status_code, response.content) == (200, b"hello world")
        assert (transport.open_connections, transport.idle_connections) == (0, 0)
    assert transport.opened == 2


async def test_chunked_answer(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.stream.send_all(b"5\r\nhello\r\n")
            await conn.stream.send_all(b"6\r\n world\r\n0\r\n\r\n")
            # h11 tracks our state: tell it what was sent by hand.
            conn._h11.send(
                h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
            )
            conn._h11.send(h11.EndOfMessage())

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    for _ in range(2):
        response = await fetch(transport, server.port)
        assert (response.status_code, response.content) == (200, b"hello world")
    assert (transport.open_connections, transport.opened) == (1, 1)


async def test_informational_answer_is_skipped(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.stream.send_all(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
            await conn.answer(b"final")

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    for _ in range(2):
        response = await fetch(transport, server.port)
        assert (response.status_code, response.reason_phrase) == (200, b"OK")
        assert response.content == b"final"
        assert "x-interim" not in response.headers
    assert transport.opened == 1


async def test_gzip_answer_decoded(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    text = b"compressed " * 100

    async def behaviour(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.answer(gzip.compress(text), [("Content-Encoding", "gzip")])

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == text
    # The direct path leaves the decoding to its caller (the SQS client).
    direct = make_transport()
    raw = await fetch(direct, server.port)
    assert raw.content == gzip.compress(text)
    assert decode_content(raw) == text


# -- 4. hostile and malformed answers --------------------------------------------------------------

HUGE_HEAD = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 100) for i in range(2000))  # ~240 KiB

# (what the server sends after reading the request, whether it then closes the connection)
HOSTILE = {
    "garbage_status_line": (b"garbage garbage\r\n\r\n", False),
    "eof_before_any_byte": (b"", True),
    "eof_in_the_head": (b"HTTP/1.1 200 OK\r\nContent-Len", True),
    "truncated_body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, True),
    "truncated_chunked_body": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        True,
    ),
    "header_line_without_colon": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNoColonHere\r\n\r\nok",
        False,
    ),
    "huge_head": (b"HTTP/1.1 200 OK\r\n" + HUGE_HEAD + b"Content-Length: 2\r\n\r\nok", False),
}

# Known bugs of trio_sqs/_transport.py, per (case, parser).
HOSTILE_BUGS: dict[tuple[str, str], str] = {}  # (case, parser): a known bug, as a strict xfail


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_malformed_answer_fails_and_the_connection_is_dropped(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    parser: ParserName,
    case: str,
    request: pytest.FixtureRequest,
) -> None:
    if (case, parser) in HOSTILE_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=HOSTILE_BUGS[case, parser]))
    answer, close = HOSTILE[case]

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            await conn.stream.send_all(answer)
            if close:
                await conn.raw.aclose()
                conn.closed.set()
            else:
                await conn.wait_closed()
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    with pytest.raises(httpx.HTTPError) as caught:
        await fetch(transport, server.port, timeouts=Timeouts(10.0, 5.0, 10.0, 10.0))
    assert type(caught.value) in (httpx.RemoteProtocolError, httpx.ReadError), repr(caught.value)
    assert (transport.open_connections, transport.idle_connections) == (0, 0)
    await server.conns[0].closed.wait()
    assert (await fetch(transport, server.port)).content == b"ok"
    assert transport.opened == 2


async def test_malformed_answer_through_httpx_is_an_httpx_error(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    parser: ParserName,
    request: pytest.FixtureRequest,
) -> None:
    async def behaviour(conn: Conn) -> None:
        assert await conn.read_request() is not None
        await conn.stream.send_all(HOSTILE["truncated_body"][0])
        await conn.raw.aclose()

    server = await Server(behaviour).start(nursery)
    async with httpx.AsyncClient(transport=make_transport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{server.port}/")


# Bytes the server sends right after a complete answer, in the same write.
TRAILING = {
    "garbage": b"garbage",
    "start_of_an_answer": b"HTTP/1.1 200 OK\r\n",
}

TRAILING_BUGS: dict[tuple[str, str], str] = {}  # (case, parser): a known bug, as a strict xfail


async def answer_if_reused(conn: Conn) -> None:
    """After an answer that leaves the connection out of step: if the client sends another
    request on it anyway, answer it (so that the test fails on its count of connections, not on
    a timeout), then wait until the client closes."""
    if await conn.stream.receive_some(65536):
        await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await conn.wait_closed()


@pytest.mark.parametrize("trailing", list(TRAILING))
async def test_bytes_after_a_complete_answer_in_the_same_write(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    parser: ParserName,
    trailing: str,
    request: pytest.FixtureRequest,
) -> None:
    """The answer may be returned (it is complete) or refused, but never altered, and the
    connection, out of step with the server, is never reused."""
    if (trailing, parser) in TRAILING_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=TRAILING_BUGS[trailing, parser]))

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            await conn.stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-First: 1\r\n\r\nok" + TRAILING[trailing]
            )
            await answer_if_reused(conn)
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    try:
        response = await fetch(transport, server.port)
    except httpx.RemoteProtocolError:
        pass
    else:
        assert (response.status_code, response.reason_phrase) == (200, b"OK")
        assert (response.headers.get("x-first"), response.content) == ("1", b"ok")
    assert (await fetch(transport, server.port)).content == b"ok"
    assert transport.opened == 2
    await server.conns[0].closed.wait()


async def test_bytes_after_a_complete_answer_while_idle(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    answered, extra_sent = trio.Event(), trio.Event()

    async def behaviour(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.read_request() is not None
            await conn.answer()
            await answered.wait()
            await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            extra_sent.set()
            await answer_if_reused(conn)
        else:
            await serve_requests(conn)

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    assert (await fetch(transport, server.port)).content == b"ok"
    answered.set()
    await extra_sent.wait()
    await wait_idle_readable(transport)
    assert (await fetch(transport, server.port)).content == b"ok"
    assert transport.opened == 2
    await server.conns[0].closed.wait()


# -- 5. timeouts -----------------------------------------------------------------------------------
# A connect timeout on TCP alone would need an address that drops SYNs, which is not
# deterministic on every machine; "connect" also covers the TLS handshake, which a server that
# never answers the ClientHello holds deterministically.


async def test_connect_timeout_in_the_tls_handshake(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    tls_server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async def behaviour(conn: Conn) -> None:
        await conn.wait_closed(conn.raw)  # reads the ClientHello, never answers

    server = await Server(behaviour, tls=tls_server_context).start(nursery)
    transport = make_transport(verify=client_context)
    with pytest.raises(httpx.ConnectTimeout, match=f"127.0.0.1:{server.port}"):
        await fetch(
            transport, server.port, scheme="https", timeouts=Timeouts(SHORT, 10.0, 10.0, 10.0)
        )
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()


async def test_write_timeout(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        await conn.closed.wait()  # never reads; the test ends it

    server = await Server(behaviour, small_receive_buffer=True).start(nursery)
    transport = make_transport()
    sent: list[bool] = []
    with pytest.raises(httpx.WriteTimeout):
        await fetch(
            transport,
            server.port,
            body=b"x" * LARGE_BODY,
            timeouts=Timeouts(10.0, 10.0, SHORT, 10.0),
            on_sent=lambda: sent.append(True),
        )
    assert sent == []
    assert transport.open_connections == 0
    await server.conns[0].wait_closed()


@pytest.mark.parametrize("stall", ["before_the_head", "in_the_body"])
async def test_read_timeout(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery, stall: str
) -> None:
    async def behaviour(conn: Conn) -> None:
        assert await conn.read_request() is not None
        if stall == "in_the_body":
            await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await conn.wait_closed()

    server = await Server(behaviour).start(nursery)
    transport = make_transport()
    with pytest.raises(httpx.ReadTimeout):
        await fetch(transport, server.port, timeouts=Timeouts(10.0, SHORT, 10.0, 10.0))
    assert transport.open_connections == 0
    await server.conns[0].closed.wait()


async def test_pool_timeout(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    held, release = trio.Event(), trio.Event()

    async def behaviour(conn: Conn) -> None:
        while await conn.read_request() is not None:
            held.set()
            await release.wait()
            await conn.answer()

    server = await Server(behaviour).start(nursery)
    transport = make_transport(max_connections=1)
    first = Cancellable(nursery, lambda: fetch(transport, server.port))
    await held.wait()
    with pytest.raises(httpx.PoolTimeout, match=f"no connection free within {SHORT} s"):
        await fetch(transport, server.port, timeouts=Timeouts(10.0, 10.0, 10.0, SHORT))
    release.set()
    await first.done.wait()
    assert isinstance(first.result, RawResponse) and first.result.content == b"ok"
    assert (transport.open_connections, transport.opened) == (1, 1)


async def test_pool_timeout_message_names_the_cap(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    server = await Server().start(nursery)
    transport = make_transport(max_connections=3)
    assert transport._slots is not None
    async with transport._slots, transport._slots, transport._slots:  # every slot taken
        with pytest.raises(httpx.PoolTimeout) as caught:
            await fetch(transport, server.port, timeouts=Timeouts(10.0, 10.0, 10.0, 0.01))
    assert "max_connections=3" in str(caught.value)


async def test_max_connections_bounds_requests_in_flight_and_keepalive_the_idle_ones(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    """As documented: a slot per request in flight; idle connections hold none and are bounded
    by max_keepalive_connections (over all hosts)."""
    first = await Server().start(nursery)
    second = await Server().start(nursery)
    transport = make_transport(max_connections=1, max_keepalive_connections=1)
    assert (await fetch(transport, first.port)).content == b"ok"
    assert (await fetch(transport, second.port)).content == b"ok"
    # the second connection was not kept beside the first host's idle one: closed on its return
    assert (transport.open_connections, transport.idle_connections) == (1, 1)
    await second.conns[0].closed.wait()


# -- 6. request bodies through httpx ---------------------------------------------------------------


async def test_post_bodies_through_httpx(
    make_transport: Callable[..., TrioTransport], nursery: trio.Nursery
) -> None:
    async def behaviour(conn: Conn) -> None:
        while (received := await conn.read_request()) is not None:
            await conn.answer(b"got " + received[1])

    server = await Server(behaviour).start(nursery)

    async def pieces() -> AsyncIterator[bytes]:
        yield b"first,"
        yield b""
        yield b"second," * 1000
        yield b"last"

    body = bytes(range(256)) * 64
    async with httpx.AsyncClient(transport=make_transport()) as client:
        plain = await client.post(f"http://127.0.0.1:{server.port}/path?a=1&b=%20", content=body)
        chunked = await client.post(f"http://127.0.0.1:{server.port}/chunked", content=pieces())
    assert (plain.status_code, plain.content) == (200, b"got " + body)
    expected = b"first," + b"second," * 1000 + b"last"
    assert (chunked.status_code, chunked.content) == (200, b"got " + expected)
    (first, first_body), (second, second_body) = server.conns[0].requests
    assert (first.method, first.target, first_body) == (b"POST", b"/path?a=1&b=%20", body)
    assert dict(first.headers)[b"content-length"] == str(len(body)).encode()
    assert dict(first.headers)[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert (second.method, second.target, second_body) == (b"POST", b"/chunked", expected)
    assert dict(second.headers)[b"transfer-encoding"] == b"chunked"
    assert len(server.conns) == 1


# -- 7. header injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [("X-Evil", "a\r\nX-Injected: 1"), ("X-Evil", "a\nb"), ("X-Evil\r\nX-Injected", "1")],
    ids=["crlf_in_value", "lf_in_value", "crlf_in_name"],
)
async def test_header_with_a_line_break_is_refused_before_sending(
    make_transport: Callable[..., TrioTransport],
    nursery: trio.Nursery,
    header: tuple[str, str],
) -> None:
    server = await Server().start(nursery)
    transport = make_transport()
    name, value = header
    with pytest.raises(httpx.LocalProtocolError):
        head("GET", "/", "127.0.0.1", {name: value}, 0)
    request = httpx.Request(
        "GET", f"http://127.0.0.1:{server.port}/", headers=[(name.encode(), value.encode())]
    )
    with pytest.raises(httpx.LocalProtocolError):
        await transport.handle_async_request(request)
    assert (transport.opened, transport.open_connections) == (0, 0)
    # Nothing reached the server: the next request is its first connection.
    assert (await fetch(transport, server.port)).content == b"ok"
    assert len(server.conns) == 1 and len(server.conns[0].requests) == 1
    assert b"X-Injected" not in repr(server.conns[0].requests[0][0]).encode()


def test_an_idle_connection_past_fd_setsize_is_still_checked() -> None:
    """select.select refuses descriptors past FD_SETSIZE (1024): in a process with that many
    open files, every idle connection would look stale and keep-alive would be lost."""
    import os
    import socket as socket_module

    from trio_sqs._transport import _Connection

    a, b = socket_module.socketpair()
    high = os.dup2(a.fileno(), 1500)
    try:
        conn = _Connection(("http", "x", 80), None, socket_module.socket(fileno=high))  # type: ignore[arg-type]
        assert not conn.readable_while_idle()  # quiet: reusable
        b.sendall(b"x")
        assert conn.readable_while_idle()  # the peer wrote: not reusable
        conn.socket.close()
    finally:
        a.close()
        b.close()
