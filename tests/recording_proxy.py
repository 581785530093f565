"""A small recording HTTP proxy (pure Trio) for wire-level assertions.

It sits between a client and an SQS server (moto, or trio_sqs.testing's), records every request
(its SQS operation and the moment its headers arrived, on Trio's clock) and can hold
ReceiveMessage responses back, so a test can bring every poller to rest inside a long poll before
it calls ``stop()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio


@dataclass
class Seen:
    operation: str
    arrived_at: float
    answered: bool = False
    client_gone: bool = False


@dataclass
class RecordingProxy:
    upstream_host: str
    upstream_port: int
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _release: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._release.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_receives(self) -> None:
        """Keep ReceiveMessage responses back until :meth:`release_receives`."""
        if self._release.is_set():
            self._release = trio.Event()

    def release_receives(self) -> None:
        self._release.set()

    def operations(self, since: float = float("-inf")) -> list[str]:
        return [r.operation for r in self.requests if r.arrived_at >= since]

    def receives_after(self, t: float) -> list[Seen]:
        return [r for r in self.requests if r.operation == "ReceiveMessage" and r.arrived_at >= t]

    async def wait_for(self, predicate: Callable[[RecordingProxy], bool]) -> None:
        """Wait until ``predicate(self)`` is true, re-checking on every recorded event."""
        while not predicate(self):
            await self._changed.wait()

    def open_receives(self) -> int:
        """ReceiveMessage requests neither answered nor abandoned by their client."""
        return sum(
            1
            for r in self.requests
            if r.operation == "ReceiveMessage" and not r.answered and not r.client_gone
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        buffer = bytearray()
        async with client:
            while True:
                head = await read_head(client, buffer)
                if head is None:
                    return
                length = content_length(head)
                while len(buffer) < length:
                    chunk = await client.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body = bytes(buffer[:length])
                del buffer[:length]
                operation = target_operation(head)
                seen = Seen(operation, trio.current_time())
                self.requests.append(seen)
                self._notify()
                response = await self._exchange(client, seen, head + body)
                if response is None:
                    return
                try:
                    await client.send_all(response)
                except trio.BrokenResourceError:
                    seen.client_gone = True
                    return
                seen.answered = True
                self._notify()
                if b"connection: close" in response.split(b"\r\n\r\n", 1)[0].lower():
                    return

    async def _exchange(
        self, client: trio.SocketStream, seen: Seen, request: bytes
    ) -> bytes | None:
        """Forward a request and get the response, watching for the client hanging up meanwhile.

        A client that hangs up (an aborted long poll) does not stop the upstream request: like SQS,
        the server side runs on and may swallow messages (docs/design.md, 'Abandoned long polls').
        Returns ``None`` then.
        """
        response: bytes | None = None
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                try:
                    data = await client.receive_some(1)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                assert not data, "client sent data while waiting for a response"
                seen.client_gone = True
                self._notify()

            async def exchange() -> None:
                nonlocal response
                response = await self._forward(request)
                if seen.operation == "ReceiveMessage":
                    while not self._release.is_set() and not seen.client_gone:
                        await self._changed_or_released()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(exchange)
        return None if seen.client_gone else response

    async def _changed_or_released(self) -> None:
        async with trio.open_nursery() as nursery:

            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, self._release)
            nursery.start_soon(wait, self._changed)

    async def _forward(self, request: bytes) -> bytes:
        upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        async with upstream:
            await upstream.send_all(request)
            buffer = bytearray()
            head = await read_head(upstream, buffer)
            assert head is not None, "upstream closed without a response"
            length = content_length(head)
            while len(buffer) < length:
                chunk = await upstream.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
            return head + bytes(buffer[:length])


async def read_head(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """Read an HTTP head (through its blank line) into ``buffer`` and take it out; what follows
    stays in ``buffer``. ``None`` if the peer closed first."""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def content_length(head: bytes, default: int = 0) -> int:
    """The head's Content-Length, or ``default`` without one."""
    value = _header(head, b"content-length")
    return int(value) if value else default


def target_operation(head: bytes) -> str:
    """The SQS operation named by the head's X-Amz-Target, or ``"?"``."""
    value = _header(head, b"x-amz-target")
    if value is None:
        return "?"
    return value.decode().rpartition(".")[2]
