"""Our HTTP/1.1 transport on Trio streams: an ``httpx.AsyncBaseTransport`` with a lean direct path.

Why our own: on the consumer's hot path httpx's default stack (httpx → httpcore → h11, with
httpcore's pool and its locks) costs several times the CPU the work needs, and httpcore's pool
has had bugs under cancellation (a cancelled request leaking a pool slot). This transport is
small and cancel-safe by construction:

- a connection belongs to exactly one request from the moment it is taken from the pool (or
  opened) until it is put back; there is no shared connection state a cancellation could leave
  half-updated;
- any exception in a request, ``trio.Cancelled`` included, closes that request's connection at
  once (synchronously: no checkpoint, so it cannot be interrupted) and frees its slot;
- an idle connection is put back only after a complete response on a connection both sides keep
  alive, and is checked before reuse: past ``keepalive_expiry``, or readable while idle (the
  server closed it, as SQS does with idle connections), it is closed instead.

Requests are written by us (one ``send_all`` for head and body); responses are parsed by h11
(always installed with httpx) or by httptools (``pip install 'trio-sqs[speed]'``, the C parser
uvicorn uses), chosen by ``parser=``. TLS is ``trio.SSLStream`` with the context httpx would
build (verification on by default, certifi's CA bundle, or the bundle or context given).

:meth:`TrioTransport.request` is the direct path the SQS client uses: bytes in, a
:class:`RawResponse` out, no ``httpx.Request``/``httpx.Response`` objects. Through httpx
(``httpx.AsyncClient(transport=TrioTransport())``) it behaves as any httpx transport, with
httpx's exception classes (``httpx.ConnectError``, ``httpx.ReadTimeout``, ...).
"""

from __future__ import annotations

import math
import os
import select
import socket
import ssl
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import h11
import httpx
import trio

from ._util import only_cancelled

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "PARSERS",
    "RawResponse",
    "ResponseHeaders",
    "Timeouts",
    "TrioTransport",
    "default_parser",
]

ParserName = Literal["h11", "httptools"]
PARSERS: tuple[ParserName, ...] = ("h11", "httptools")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_SIZE = 65536
# A response head larger than this is refused (h11's own default limit).
_MAX_HEAD = 64 * 1024


# Forces the response parser of every TrioTransport made without ``parser=`` (an escape hatch,
# and how the test suite runs on h11 with httptools installed).
PARSER_VARIABLE = "TRIO_SQS_HTTP_PARSER"


def default_parser() -> ParserName:
    """``$TRIO_SQS_HTTP_PARSER`` if set (``h11`` or ``httptools``), else ``"httptools"`` when it
    is installed (the ``speed`` extra), else ``"h11"``."""
    forced = os.environ.get(PARSER_VARIABLE, "").strip().lower()
    if forced:
        if forced not in PARSERS:
            raise ValueError(f"{PARSER_VARIABLE} must be h11 or httptools, not {forced!r}")
        return forced
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


class Timeouts:
    """Seconds allowed for each phase of one request (``None``: no limit).

    ``connect`` covers TCP and the TLS handshake, ``write`` sending the request, ``read`` the
    whole response from the moment the request is sent to its last byte, ``pool`` waiting for a
    connection slot (when the transport caps its connections).
    """

    __slots__ = ("connect", "pool", "read", "write")

    def __init__(
        self,
        connect: float | None = 30.0,
        read: float | None = 30.0,
        write: float | None = 30.0,
        pool: float | None = 30.0,
    ) -> None:
        self.connect = connect
        self.read = read
        self.write = write
        self.pool = pool

    @classmethod
    def from_extension(cls, timeout: Mapping[str, float | None] | None) -> Timeouts:
        """From an ``httpx.Request``'s ``extensions["timeout"]``."""
        if not timeout:
            return cls()
        return cls(
            connect=timeout.get("connect", 30.0),
            read=timeout.get("read", 30.0),
            write=timeout.get("write", 30.0),
            pool=timeout.get("pool", 30.0),
        )


class ResponseHeaders(dict[str, str]):
    """A response's headers: names lowercased, repeated ones joined with ``", "``; ``get``,
    ``[]`` and ``in`` take a name in any case."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class RawResponse:
    """A complete response: status, headers, the whole (decoded) body."""

    __slots__ = ("content", "headers", "raw_headers", "reason_phrase", "status_code")

    def __init__(
        self,
        status_code: int,
        reason_phrase: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        content: bytes,
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.raw_headers = raw_headers
        self.content = content
        headers = ResponseHeaders()
        for name, value in raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            previous = dict.get(headers, key)
            dict.__setitem__(headers, key, text if previous is None else f"{previous}, {text}")
        self.headers = headers


# -- response parsers: bytes in, a response out -----------------------------------------------------


class _H11Reader:
    """Parses one response with h11. The request head is written by us; h11 is told only what
    frames the response (the method, and that the request is complete)."""

    __slots__ = ("_body", "_conn", "done", "headers", "keep_alive", "reason", "status")

    def __init__(self, method: bytes) -> None:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        self._conn = conn
        self._body: list[bytes] = []
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False
        self.keep_alive = False

    def feed(self, data: bytes | bytearray) -> None:
        self._conn.receive_data(data if type(data) is bytes else bytes(data))
        self._drain()

    def eof(self) -> None:
        self._conn.receive_data(b"")
        self._drain()

    def _drain(self) -> None:
        conn = self._conn
        try:
            while not self.done:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Response):
                    headers = list(event.headers.raw_items())
                    # h11's own limit only bounds a head still incomplete after a read: one
                    # that ends in the next read gets through.
                    size = 15 + len(event.reason) + sum(len(n) + len(v) + 4 for n, v in headers)
                    if size > _MAX_HEAD:
                        raise httpx.RemoteProtocolError(
                            f"the response head is larger than {_MAX_HEAD} bytes"
                        )
                    self.status = event.status_code
                    self.reason = event.reason
                    self.headers = headers
                elif isinstance(event, h11.Data):
                    self._body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self.done = True
                    # Reusable only if both sides are done, nothing was read past the answer
                    # and the server did not close (a body delimited by the close ends DONE too).
                    self.keep_alive = (
                        conn.our_state is h11.DONE
                        and conn.their_state is h11.DONE
                        and conn.trailing_data == (b"", False)
                    )
                elif isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without sending a complete response"
                    )
                # h11.InformationalResponse (1xx): skipped, the final response follows.
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"malformed response: {exc}") from None

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    @property
    def started(self) -> bool:
        return self.status != 0


class _HttptoolsReader:
    """Parses one response with httptools (llhttp)."""

    __slots__ = (
        "_body",
        "_head_only",
        "_head_size",
        "_overflow",
        "_parser",
        "_unparsed",
        "_until_close",
        "done",
        "headers",
        "keep_alive",
        "reason",
        "started",
        "status",
    )

    def __init__(self, method: bytes) -> None:
        self._parser = _httptools().HttpResponseParser(self)
        self._head_only = method == b"HEAD"
        self._body: list[bytes] = []
        self._until_close = False
        self._overflow = False
        self._head_size = 0
        self._unparsed = 0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False
        self.keep_alive = False
        self.started = False

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self.done:  # a second message after ours, in the same bytes
            self._overflow = True
            return
        self.started = True
        self.headers = []
        self._body = []

    def on_status(self, status: bytes) -> None:
        if not self.done:
            self._head_size += len(status)
            self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:
            self._head_size += len(name) + len(value) + 4
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        parser = self._parser
        self.status = parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.reason = b""  # an informational response: the final one follows
            return
        framed = False
        for name, _ in self.headers:
            lname = name.lower()
            if lname == b"content-length" or lname == b"transfer-encoding":
                framed = True
        no_body = self._head_only or self.status in (204, 304)
        self._until_close = not framed and not no_body
        if no_body:
            # llhttp would wait for a body the server does not send after HEAD.
            self.done = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.done:
            return
        if 100 <= self.status < 200 and self.status != 101:
            self.status = 0
            return
        self.done = True
        self.keep_alive = bool(self._parser.should_keep_alive()) and not self._until_close

    def feed(self, data: bytes | bytearray) -> None:
        httptools = _httptools()
        if self.done:
            raise httpx.RemoteProtocolError("the server sent data after its response")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise httpx.RemoteProtocolError(f"unexpected protocol upgrade: {exc}") from None
        except httptools.HttpParserError as exc:
            raise httpx.RemoteProtocolError(f"malformed response: {exc}") from None
        if self._overflow:
            raise httpx.RemoteProtocolError("the server sent data after its response")
        if self.status == 0:
            self._unparsed += len(data)  # bytes of a head not complete yet
        else:
            self._unparsed = 0
        if self._head_size > _MAX_HEAD or self._unparsed > _MAX_HEAD:
            raise httpx.RemoteProtocolError(f"the response head is larger than {_MAX_HEAD} bytes")

    def eof(self) -> None:
        if self.done:
            return
        if self._until_close and self.status:
            self.done = True  # a body delimited by the end of the connection
            self.keep_alive = False
            return
        raise httpx.RemoteProtocolError(
            "the server closed the connection without sending a complete response"
        )

    @property
    def body(self) -> bytes:
        return b"".join(self._body)


_Reader = _H11Reader | _HttptoolsReader


_HTTPTOOLS: Any = None


def _httptools() -> Any:
    global _HTTPTOOLS
    if _HTTPTOOLS is None:
        import httptools

        _HTTPTOOLS = httptools
    return _HTTPTOOLS


def _reader_class(parser: ParserName) -> Callable[[bytes], _Reader]:
    if parser == "httptools":
        try:
            _httptools()  # fail here, at start, if it is not installed
        except ImportError:
            raise ValueError(
                "the httptools parser is not installed: pip install 'trio-sqs[speed]'"
            ) from None
        return _HttptoolsReader
    return _H11Reader


# -- connections ----------------------------------------------------------------------------------


_POLL = getattr(select, "poll", None)  # not on Windows


class _RawStream:
    """Plain TCP on a non-blocking standard socket, driven by Trio's I/O waits: what
    ``trio.SocketStream`` does for us, without its layers (a conflict detector, a socket wrapper,
    and a schedule point after every send), which cost more than the rest of a small request.

    ``receive_some`` always waits for the socket first (a schedule point; an answer is never
    there the instant its request is sent), so every request through it has a checkpoint.
    """

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock

    async def send_all(self, data: bytes) -> None:
        sock = self._socket
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]

    async def receive_some(self, max_bytes: int) -> bytes:
        sock = self._socket
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                continue

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._socket)
        self._socket.close()

    def fileno(self) -> int:
        return self._socket.fileno()


class _Connection:
    __slots__ = ("idle_since", "key", "socket", "stream")

    def __init__(
        self, key: tuple[str, str, int], stream: trio.SSLStream[Any] | _RawStream, sock: Any
    ) -> None:
        self.key = key
        self.stream = stream
        self.socket = sock  # what to close: the _RawStream, or the trio socket under TLS
        self.idle_since = 0.0

    def close(self) -> None:
        """Close at once, synchronously: no checkpoint, safe in any ``finally`` or handler."""
        self.socket.close()

    def readable_while_idle(self) -> bool:
        """Whether the server wrote or closed while no request was in flight (then the
        connection cannot be reused)."""
        try:
            fd = self.socket.fileno()
            if _POLL is not None:  # (select.select refuses descriptors past FD_SETSIZE)
                poller = _POLL()
                poller.register(fd, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


def _send_error(exc: BaseException, what: str) -> httpx.TransportError:
    return httpx.WriteError(f"{what}: {type(exc).__name__}: {exc}")


def _tls_error(exc: BaseException, host: str, port: int) -> httpx.ConnectError:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = cause.verify_message or str(cause)
        return httpx.ConnectError(
            f"TLS certificate of {host}:{port} not accepted: {reason} ({cause.reason or cause})"
        )
    return httpx.ConnectError(f"TLS handshake with {host}:{port} failed: {cause or exc}")


class TrioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over Trio streams with a keep-alive pool; usable as any httpx transport.

    Args:
        verify: TLS verification: ``True`` (default: certifi's CA bundle, as httpx), a CA bundle
            path, an ``ssl.SSLContext``, or ``False`` (no verification).
        max_connections: The most requests in flight at once, i.e. connections in use (a
            request waits for a slot up to its ``pool`` timeout); ``None``: no cap. Idle
            connections hold no slot: they are bounded by ``max_keepalive_connections``.
        max_keepalive_connections: The most idle connections kept for reuse (all hosts).
        keepalive_expiry: Seconds an idle connection is kept; an older one is closed instead of
            reused.
        parser: ``"h11"`` or ``"httptools"`` (must be installed); default: httptools when
            installed.

    Cancellation: cancelling a request at any point (waiting for a slot, connecting, sending,
    waiting for the response, reading its body) closes that request's connection at once and
    frees its slot; the transport stays usable.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        max_connections: int | None = None,
        max_keepalive_connections: int | None = None,
        keepalive_expiry: float | None = 5.0,
        parser: ParserName | None = None,
    ) -> None:
        if parser is None:
            parser = default_parser()
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
        self.parser: ParserName = parser
        self._reader = _reader_class(parser)
        self._verify = verify
        self._ssl_context: ssl.SSLContext | None = None
        self._slots = (
            trio.Semaphore(max_connections, max_value=max_connections)
            if max_connections is not None
            else None
        )
        self._max_idle = max_keepalive_connections
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._closed = False
        # Connections open now (idle or serving a request), and the ones ever opened.
        self.open_connections = 0
        self.opened = 0

    # -- pool --------------------------------------------------------------------------------

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    def _ssl(self) -> ssl.SSLContext:
        context = self._ssl_context
        if context is None:
            context = self._ssl_context = ssl_context(self._verify)
        return context

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(key)
        if not pool:
            return None
        expiry = self._keepalive_expiry
        now = trio.current_time()
        while pool:
            conn = pool.pop()
            self._idle_count -= 1
            if (expiry is not None and now - conn.idle_since > expiry) or (
                conn.readable_while_idle()
            ):
                self._discard(conn)
                continue
            return conn
        return None

    def _put_idle(self, conn: _Connection) -> None:
        if self._closed or (self._max_idle is not None and self._idle_count >= self._max_idle):
            self._discard(conn)
            return
        conn.idle_since = trio.current_time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self.open_connections -= 1

    async def _connect(
        self, key: tuple[str, str, int], timeouts: Timeouts, deadline: float = math.inf
    ) -> _Connection:
        scheme, host, port = key
        ssl_context = self._ssl() if scheme == "https" else None
        limit = min(trio.current_time() + _seconds(timeouts.connect), deadline)
        with trio.move_on_at(limit) as scope:
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except BaseExceptionGroup as group:
                cancelled = only_cancelled(group)
                if cancelled is not None:
                    raise cancelled from None
                raise httpx.ConnectError(f"cannot connect to {host}:{port}: {group}") from group
            except OSError as exc:
                raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
            sock = tcp.socket
            self.open_connections += 1
            self.opened += 1
            try:
                if ssl_context is None:
                    # The file descriptor leaves the trio socket for a standard one.
                    raw = _RawStream(
                        socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
                    )
                    return _Connection(key, raw, raw)
                tls = trio.SSLStream(tcp, ssl_context, server_hostname=host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError) as exc:
                    raise _tls_error(exc, host, port) from exc
                return _Connection(key, tls, sock)
            except BaseException:
                sock.close()
                self.open_connections -= 1
                raise
        assert scope.cancelled_caught
        raise httpx.ConnectTimeout(
            f"connecting to {host}:{port} took more than {timeouts.connect} s"
        )

    # -- the direct path -------------------------------------------------------------------------

    async def request(
        self,
        method: bytes,
        scheme: str,
        host: str,
        port: int | None,
        head: bytes,
        body: bytes,
        timeouts: Timeouts,
        on_sent: Callable[[], None] | None = None,
        *,
        deadline: float = math.inf,
        _more: _Chunks | None = None,
    ) -> RawResponse:
        """Send one request and read its whole response.

        Args:
            method: The method (``b"POST"``), for framing the response.
            scheme, host, port: Where to connect (``port`` None: the scheme's default).
            head: The request line and headers, ``\\r\\n\\r\\n`` included (see :func:`head`).
            body: The body (its ``Content-Length`` is in ``head``).
            timeouts: The request's :class:`Timeouts`.
            on_sent: Called once the whole request has been written to the connection.
            deadline: No phase runs past this time (Trio's clock): a phase it cuts short raises
                that phase's timeout error.

        Raises:
            httpx.TransportError: a subclass naming the phase (``ConnectError``,
                ``ConnectTimeout``, ``WriteError``, ``ReadError``, ``ReadTimeout``,
                ``RemoteProtocolError``, ``PoolTimeout``).
        """
        if self._closed:
            raise httpx.TransportError("the transport is closed")
        key = (scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])
        slots = self._slots
        if slots is not None:
            limit = min(trio.current_time() + _seconds(timeouts.pool), deadline)
            with trio.move_on_at(limit) as waited:
                await slots.acquire()
            if waited.cancelled_caught:
                raise httpx.PoolTimeout(
                    f"no connection free within {timeouts.pool} s "
                    f"(max_connections={slots.max_value})"
                )
        try:
            conn = self._take_idle(key)
            if conn is None:
                conn = await self._connect(key, timeouts, deadline)
            try:
                response = await self._exchange(
                    conn, method, head, body, timeouts, on_sent, deadline, _more
                )
            except BaseException:
                self._discard(conn)
                raise
            return response
        finally:
            if slots is not None:
                slots.release()

    async def _exchange(
        self,
        conn: _Connection,
        method: bytes,
        head: bytes,
        body: bytes,
        timeouts: Timeouts,
        on_sent: Callable[[], None] | None,
        deadline: float = math.inf,
        more: _Chunks | None = None,
    ) -> RawResponse:
        stream = conn.stream
        reader = self._reader(method)
        # One cancel scope for both phases (a scope costs more than the rest of a small
        # exchange): its deadline is the write timeout's, then, once sent, the read timeout's.
        sending = True
        now = trio.current_time()
        with trio.CancelScope(deadline=min(now + _seconds(timeouts.write), deadline)) as scope:
            try:
                await stream.send_all(head + body if body else head)
                if more is not None:
                    while (chunk := await more.next_framed()) is not None:
                        await stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _send_error(exc, "sending the request failed") from exc
            sending = False
            scope.deadline = min(trio.current_time() + _seconds(timeouts.read), deadline)
            if on_sent is not None:
                on_sent()
            while not reader.done:
                try:
                    data = await stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise httpx.ReadError(
                        f"reading the response failed: {type(exc).__name__}: {exc}"
                    ) from exc
                if not data:
                    if not reader.started:
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection without sending a response"
                        )
                    reader.eof()
                    break
                reader.feed(data)
        if scope.cancelled_caught:
            if sending:
                raise httpx.WriteTimeout(f"sending the request took more than {timeouts.write} s")
            raise httpx.ReadTimeout(f"no complete response within {timeouts.read} s")
        response = RawResponse(reader.status, reader.reason, reader.headers, reader.body)
        if reader.keep_alive:
            self._put_idle(conn)
        else:
            self._discard(conn)
        return response

    # -- through httpx ---------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        target = url.raw_path
        headers = list(request.headers.raw)
        if not any(name.lower() == b"host" for name, _ in headers):
            headers.insert(0, (b"Host", url.netloc))
        chunked = any(
            name.lower() == b"transfer-encoding" and value.lower() == b"chunked"
            for name, value in headers
        )
        head = b"".join(
            [
                request.method.encode("ascii"),
                b" ",
                target,
                b" HTTP/1.1\r\n",
                *(_header_line(name, value) for name, value in headers),
                b"\r\n",
            ]
        )
        # The body is read chunk by chunk as it is sent: a stream that signals "all sent" when
        # asked for the chunk after the last one (the client's on_sent marker) stays exact.
        chunks = _Chunks(request.stream, chunked)
        response = await self.request(
            request.method.encode("ascii"),
            scheme,
            url.host,
            url.port,
            head,
            await chunks.first(),
            Timeouts.from_extension(request.extensions.get("timeout")),
            _more=chunks,
        )
        return httpx.Response(
            response.status_code,
            headers=response.raw_headers,
            content=response.content,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason_phrase},
        )

    async def aclose(self) -> None:
        """Close every idle connection; requests in flight close theirs when they end."""
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                self._discard(conn)
        self._idle.clear()
        self._idle_count = 0
        await trio.lowlevel.checkpoint()


class _Chunks:
    """An httpx request stream, framed for the wire (chunked when the request says so)."""

    __slots__ = ("_chunked", "_done", "_iterator")

    def __init__(self, stream: Any, chunked: bool) -> None:
        self._iterator = stream.__aiter__()
        self._chunked = chunked
        self._done = False

    async def first(self) -> bytes:
        return await self.next_framed() or b""

    async def next_framed(self) -> bytes | None:
        """The next piece to write, or None once everything was written."""
        if self._done:
            return None
        while True:
            try:
                chunk: bytes = await self._iterator.__anext__()
            except StopAsyncIteration:
                self._done = True
                return b"0\r\n\r\n" if self._chunked else None
            if not chunk:
                continue
            return b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk


def ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The TLS context for ``verify``: itself if a context; ``True``: httpx's default (certifi's
    CA bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``); a path: that CA bundle (a file) or
    directory; ``False``: no verification at all."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return httpx.create_ssl_context()
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    raise TypeError(f"verify must be True, False, a CA bundle path or an SSLContext: {verify!r}")


def _seconds(value: float | None) -> float:
    return float("inf") if value is None else value


def _header_line(name: bytes, value: bytes) -> bytes:
    if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
        raise httpx.LocalProtocolError(f"invalid header {name!r}")
    return b"%b: %b\r\n" % (name, value)


def head(method: str, target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    """A request head for :meth:`TrioTransport.request`: the request line, ``Host``, the
    headers, ``Content-Length``.

    Raises:
        httpx.LocalProtocolError: if a header name or value holds a line break (which would
            split the head) or is not latin-1.
    """
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise httpx.LocalProtocolError("a header name or value holds a line break")
    try:
        return (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {length}\r\n\r\n"
        ).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(f"a header is not latin-1: {exc}") from None


def decode_content(response: RawResponse) -> bytes:
    """The body with its ``Content-Encoding`` (gzip, deflate) undone, as httpx would."""
    encoding = response.headers.get("content-encoding")
    if not encoding or encoding.strip().lower() == "identity":
        return response.content
    data = response.content
    for coding in reversed([c.strip().lower() for c in encoding.split(",")]):
        if coding == "gzip":
            data = zlib.decompress(data, zlib.MAX_WBITS | 16)
        elif coding == "deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        elif coding != "identity":
            raise httpx.DecodingError(f"unsupported Content-Encoding {coding!r}")
    return data
