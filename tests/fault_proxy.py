"""A fault-injecting HTTP proxy (pure Trio) between trio_sqs worker processes and an SQS server
(the end-to-end runs use ``python -m trio_sqs.testing``, see tests/e2e_harness.py).

Each worker gets its own listening port (:meth:`FaultProxy.listen`), so every request is
attributed to the worker that sent it without trusting anything the worker says. For every request
the proxy records (:class:`Exchange`): the SQS operation (from ``X-Amz-Target``), when its last
byte arrived, the fault it injected, what the server answered (messages delivered, deletes and
visibility changes confirmed) and what the client actually got: the answer intact, a broken or
error answer, or nothing because it hung up first (an aborted long poll).

Faults are chosen per request by a :class:`FaultPlan`: per operation (or the pseudo-operations
``Heartbeat`` and ``Release``, the two uses of ChangeMessageVisibilityBatch), per worker if wanted,
either by probabilities drawn from a seeded RNG or from a scripted sequence.

Like SQS, the proxy never cancels an upstream request because its client went away: the server's
long poll runs on and may take messages that nobody will receive (docs/design.md, 'Abandoned long
polls'). The proxy reads that answer anyway and records the messages as delivered to a client that
was gone, which is how the tests account for orphaned messages.

All times are ``time.monotonic()``: on Linux that clock is shared by every process, so the proxy's
times compare directly with the times worker processes print.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from .recording_proxy import content_length, read_head, target_operation

__all__ = [
    "BREAKING",
    "ERROR_RESPONSES",
    "Exchange",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "Pulse",
    "bad_md5",
    "http_500",
    "hold",
    "http_503",
    "latency",
    "not_json",
    "reset_after",
    "reset_before",
    "reset_mid_response",
    "stall",
    "throttle",
    "trickle",
    "truncated_body",
]


@dataclass(frozen=True)
class Fault:
    """One fault. ``seconds`` is the length of a latency, stall or trickle (``inf``: a stall that
    lasts until the client gives up)."""

    kind: str
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind}({self.seconds:g}s)" if self.seconds else self.kind


def latency(seconds: float) -> Fault:
    """Hold the request ``seconds`` before forwarding it (the server acts late)."""
    return Fault("latency", seconds)


def stall(seconds: float = math.inf) -> Fault:
    """Forward the request, then hold the answer ``seconds`` (the server acted, the client waits)."""
    return Fault("stall", seconds)


# Forward the request, then hold the answer until the test calls FaultProxy.release_held().
hold = Fault("hold")


def trickle(seconds: float) -> Fault:
    """Forward the request, then send the answer a few bytes at a time over ``seconds``."""
    return Fault("trickle", seconds)


reset_before = Fault("reset_before")  # TCP reset after the request arrived, before forwarding
reset_after = Fault("reset_after")  # forwarded (the server acted), then reset, no answer
reset_mid_response = Fault("reset_mid_response")  # headers and half the body, then reset
http_500 = Fault("http_500")  # not forwarded; InternalError
http_503 = Fault("http_503")  # not forwarded; ServiceUnavailable
throttle = Fault("throttle")  # not forwarded; HTTP 400 ThrottlingException
truncated_body = Fault("truncated_body")  # forwarded; JSON cut in half, Content-Length to match
not_json = Fault("not_json")  # forwarded; HTTP 200 with an HTML body
bad_md5 = Fault("bad_md5")  # forwarded; one message of a ReceiveMessage gets a wrong MD5OfBody

# Faults after which the client has nothing usable (the server may have acted, though).
BREAKING = frozenset(
    {
        "reset_before",
        "reset_after",
        "reset_mid_response",
        "http_500",
        "http_503",
        "throttle",
        "truncated_body",
        "not_json",
    }
)

_JSON = "application/x-amz-json-1.0"


def _render(status_line: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [status_line, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def _error_response(status: str, type_: str, message: str, query_error: str) -> bytes:
    body = json.dumps({"__type": f"com.amazonaws.sqs#{type_}", "message": message}).encode()
    return _render(
        f"HTTP/1.1 {status}",
        [
            ("Content-Type", _JSON),
            ("x-amzn-RequestId", "fault-proxy"),
            ("x-amzn-query-error", query_error),
        ],
        body,
    )


ERROR_RESPONSES = {
    "http_500": _error_response(
        "500 Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
        "InternalError;Receiver",
    ),
    "http_503": _error_response(
        "503 Service Unavailable",
        "ServiceUnavailable",
        "Service Unavailable",
        "ServiceUnavailable;Receiver",
    ),
    "throttle": _error_response(
        "400 Bad Request", "ThrottlingException", "Rate exceeded", "ThrottlingException;Sender"
    ),
}


class Pulse:
    """Wakes every waiter whenever something was recorded (no polling with sleep)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Wait for the next notification."""
        await self._event.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class _Rule:
    kind: str
    worker: str | None
    script: deque[Fault | None] | None = None
    weights: tuple[tuple[Fault, float], ...] = ()

    def matches(self, kind: str, operation: str, worker: str) -> bool:
        if self.worker is not None and self.worker != worker:
            return False
        return self.kind in ("*", kind, operation)


class FaultPlan:
    """Which fault, if any, each request gets.

    Rules are tried in the order they were added; the first that matches a request's kind
    (operation name, ``Heartbeat``/``Release``, or ``*``) and worker decides. A scripted rule hands
    out its faults one request at a time (``None`` = no fault) and stops matching once used up.
    Probabilities are drawn from an RNG seeded by the test's seed.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"fault-plan-{seed}")
        self.enabled = True
        self._rules: list[_Rule] = []

    def script(
        self, kind: str, faults: Iterable[Fault | None], *, worker: str | None = None
    ) -> deque[Fault | None]:
        """Play ``faults`` in order; returns the remaining script (empty once played out)."""
        rule = _Rule(kind, worker, script=deque(faults))
        self._rules.append(rule)
        assert rule.script is not None
        return rule.script

    def chance(
        self, kind: str, weights: Mapping[Fault, float], *, worker: str | None = None
    ) -> None:
        total = sum(weights.values())
        assert 0 <= total <= 1, f"probabilities add up to {total}"
        self._rules.append(_Rule(kind, worker, weights=tuple(weights.items())))

    def clear(self) -> None:
        self._rules.clear()

    def choose(self, kind: str, operation: str, worker: str) -> Fault | None:
        if not self.enabled:
            return None
        for rule in self._rules:
            if not rule.matches(kind, operation, worker):
                continue
            if rule.script is not None:
                if not rule.script:
                    continue
                return rule.script.popleft()
            draw = self.rng.random()
            for fault, p in rule.weights:
                if draw < p:
                    return fault
                draw -= p
            return None
        return None

    def give_back(self, kind: str, operation: str, worker: str, fault: Fault) -> None:
        """A scripted fault that could not apply (a bad MD5 for an empty answer) goes back first
        in line, so the script is played out in full."""
        for rule in self._rules:
            if rule.script is not None and rule.matches(kind, operation, worker):
                rule.script.appendleft(fault)
                return


# -- what the proxy records ---------------------------------------------------------------------


@dataclass
class Exchange:
    """One request and what became of it. Times are ``time.monotonic()``."""

    id: int
    worker: str
    conn: int
    operation: str
    kind: str
    arrived: float  # the request's last byte was read
    request: dict[str, Any]
    fault: Fault | None = None
    forwarded: float | None = None  # sent to the server (None: never reached it)
    answered: float | None = None  # the server's answer read in full
    upstream_status: int | None = None
    upstream_error: bytes = b""  # the server's body when it answered with an error
    writing: float | None = None  # the last write of the answer began (it may end later)
    responded: float | None = None  # the answer was written to the client in full
    client_gone: float | None = None  # the client hung up before that
    # ReceiveMessage: every message the server handed out with this request: (message id, handle).
    messages: list[tuple[str, str]] = field(default_factory=list)
    corrupted: str | None = None  # the message id whose MD5OfBody was falsified
    # Delete/ChangeMessageVisibility batches: receipt handles the server confirmed, with visibility.
    confirmed: dict[str, int | None] = field(default_factory=dict)
    # Visibility asked for, per receipt handle (ChangeMessageVisibilityBatch).
    visibility: dict[str, int] = field(default_factory=dict)

    def closed_at(self) -> float | None:
        """When this exchange ended for its client (answer written, broken, or client gone)."""
        ends = [t for t in (self.responded, self.client_gone) if t is not None]
        return min(ends) if ends else None

    def is_open(self, at: float) -> bool:
        end = self.closed_at()
        return self.arrived <= at and (end is None or end > at)

    @property
    def client_view(self) -> str:
        """``ok``: the client got the server's answer intact; ``corrupted``: intact but for one message's
        MD5; ``error``: an error or broken answer; ``gone``: the client hung up first;
        ``pending``: not finished yet."""
        if self.client_gone is not None and (
            self.responded is None or self.client_gone < self.responded
        ):
            return "gone"
        if self.responded is None:
            return "pending"
        if (self.fault is not None and self.fault.kind in BREAKING) or (
            self.upstream_status or 0
        ) >= 300:
            return "error"
        return "corrupted" if self.corrupted else "ok"


def _kind(operation: str, request: Mapping[str, Any], lease: int | None) -> str:
    """A heartbeat asks for exactly the worker's lease (the VisibilityTimeout of its receives);
    anything else is a release (0, a failure backoff, or the cover of its polls at stop)."""
    if operation == "ChangeMessageVisibilityBatch":
        entries = request.get("Entries") or []
        if entries and any(int(e.get("VisibilityTimeout", 0)) == lease for e in entries):
            return "Heartbeat"
        return "Release"
    return operation


class _Watch:
    """What the watcher of one exchange's client has seen."""

    def __init__(self) -> None:
        self.gone = trio.Event()
        self.last_write = False


# -- the proxy -----------------------------------------------------------------------------------


class FaultProxy:
    """The proxy. Run it with ``await nursery.start(proxy.run)``; then :meth:`listen` per worker."""

    def __init__(self, upstream_host: str, upstream_port: int, plan: FaultPlan) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.plan = plan
        self.exchanges: list[Exchange] = []
        self.changed = Pulse()
        # (when, how late) for every time the proxy's event loop woke more than 2 ms late: the
        # proxy can only notice a request that late after its last byte arrived.
        self.lags: list[tuple[float, float]] = []
        self._held = trio.Event()
        self._ids = itertools.count()
        self._conns = itertools.count()
        self._nursery: trio.Nursery | None = None
        self._leases: dict[str, int] = {}  # per worker: the VisibilityTimeout of its receives

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_lag)
            task_status.started()
            await trio.sleep_forever()

    async def listen(self, worker: str) -> str:
        """Open a port for ``worker``; return its URL."""
        assert self._nursery is not None, "run the proxy first"
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def serve(stream: trio.SocketStream) -> None:
            await self._serve_connection(worker, stream)

        self._nursery.start_soon(trio.serve_listeners, serve, listeners)
        return f"http://127.0.0.1:{port}"

    def release_held(self) -> None:
        """Let every answer held by a ``hold`` fault go (and any later one pass at once)."""
        self._held.set()

    async def _held_or_gone(self, gone: trio.Event) -> None:
        async with trio.open_nursery() as nursery:

            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, self._held)
            nursery.start_soon(wait, gone)

    def max_lag(self, start: float, end: float) -> float:
        return max((lag for t, lag in self.lags if start <= t <= end), default=0.0)

    def by_worker(self, worker: str, operation: str | None = None) -> list[Exchange]:
        return [
            e
            for e in self.exchanges
            if e.worker == worker and (operation is None or operation in (e.operation, e.kind))
        ]

    async def _watch_lag(self) -> None:
        while True:
            before = time.monotonic()
            await trio.sleep(0.01)
            now = time.monotonic()
            late = now - before - 0.01
            if late > 0.002:
                self.lags.append((now, late))

    # -- one client connection ---------------------------------------------------------------

    async def _serve_connection(self, worker: str, stream: trio.SocketStream) -> None:
        conn = next(self._conns)
        buffer = bytearray()
        try:
            async with stream:
                while True:
                    head = await read_head(stream, buffer)
                    if head is None:
                        return
                    length = content_length(head)
                    while len(buffer) < length:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    body = bytes(buffer[:length])
                    del buffer[:length]
                    keep = await self._one(worker, conn, stream, head, body, buffer)
                    if not keep:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _one(
        self,
        worker: str,
        conn: int,
        stream: trio.SocketStream,
        head: bytes,
        body: bytes,
        buffer: bytearray,
    ) -> bool:
        """Serve one request. Returns whether the connection stays open."""
        operation = target_operation(head)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        if operation == "ReceiveMessage" and "VisibilityTimeout" in request:
            self._leases[worker] = int(request["VisibilityTimeout"])
        kind = _kind(operation, request, self._leases.get(worker))
        ex = Exchange(
            id=next(self._ids),
            worker=worker,
            conn=conn,
            operation=operation,
            kind=kind,
            arrived=time.monotonic(),
            request=request,
        )
        if operation == "ChangeMessageVisibilityBatch":
            ex.visibility = {
                e["ReceiptHandle"]: int(e.get("VisibilityTimeout", 0))
                for e in request.get("Entries", [])
            }
        ex.fault = fault = self.plan.choose(kind, operation, worker)
        self.exchanges.append(ex)
        self.changed.notify()
        try:
            if fault is not None and fault.kind == "reset_before":
                await _reset(stream)
                ex.responded = time.monotonic()
                return False
            if fault is not None and fault.kind in ERROR_RESPONSES:
                await stream.send_all(ERROR_RESPONSES[fault.kind])
                ex.responded = time.monotonic()
                return True
            return await self._forward_and_answer(ex, stream, head + body, buffer)
        finally:
            self.changed.notify()

    async def _forward_and_answer(
        self, ex: Exchange, stream: trio.SocketStream, request: bytes, buffer: bytearray
    ) -> bool:
        fault = ex.fault
        watch = _Watch()

        async def watch_client() -> None:
            # A well-behaved HTTP/1.1 client sends nothing while it waits for an answer: EOF or a
            # reset means it hung up. Anything else is its next request, kept for the next round.
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                buffer.extend(data)
                return
            if watch.last_write or stream.socket.fileno() == -1:
                # The answer was written (a client may close right after reading it, e.g. on
                # "Connection: close"), or we closed the connection ourselves (a reset fault).
                return
            ex.client_gone = time.monotonic()
            self.changed.notify()
            watch.gone.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client)
            if fault is not None and fault.kind == "latency":
                with trio.move_on_after(fault.seconds):
                    await watch.gone.wait()
                if watch.gone.is_set():
                    # The request never reached the server.
                    nursery.cancel_scope.cancel()
                    return False
            ex.forwarded = time.monotonic()
            status, response = await self._forward(request)
            ex.answered = time.monotonic()
            ex.upstream_status = status
            self._record_answer(ex, response)
            keep = await self._answer(ex, stream, response, watch)
            nursery.cancel_scope.cancel()
        return keep and not watch.gone.is_set()

    def _record_answer(self, ex: Exchange, response: bytes) -> None:
        body = response.partition(b"\r\n\r\n")[2]
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        if ex.upstream_status is None or ex.upstream_status >= 300:
            ex.upstream_error = body[:300]
            return
        if ex.operation == "ReceiveMessage":
            ex.messages = [(m["MessageId"], m["ReceiptHandle"]) for m in parsed.get("Messages", [])]
        elif ex.operation in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
            handles = {e["Id"]: e["ReceiptHandle"] for e in ex.request.get("Entries", [])}
            for ok in parsed.get("Successful", []):
                handle = handles.get(ok["Id"])
                if handle is not None:
                    ex.confirmed[handle] = ex.visibility.get(handle)

    async def _answer(
        self, ex: Exchange, stream: trio.SocketStream, response: bytes, watch: _Watch
    ) -> bool:
        fault = ex.fault
        kind = fault.kind if fault is not None else None
        head, _, body = response.partition(b"\r\n\r\n")
        if kind == "reset_after":
            await _reset(stream)
            ex.responded = time.monotonic()
            return False
        if kind == "truncated_body":
            response = _with_body(head, body[: len(body) // 2])
        elif kind == "not_json":
            response = _with_body(
                head.replace(_JSON.encode(), b"text/html"),
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
        elif kind == "bad_md5":
            assert fault is not None
            corrupted = self._corrupt(ex, body)
            if corrupted is None:
                # Nothing to corrupt in an empty answer: the fault waits for the next one.
                self.plan.give_back(ex.kind, ex.operation, ex.worker, fault)
                ex.fault = None
            else:
                response = _with_body(head, corrupted)
        if kind == "stall":
            assert fault is not None
            with trio.move_on_after(fault.seconds):
                await watch.gone.wait()
        elif kind == "hold":
            await self._held_or_gone(watch.gone)
        if watch.gone.is_set():
            return False
        try:
            if kind == "reset_mid_response":
                cut = len(head) + 4 + len(body) // 2
                await stream.send_all(response[:cut])
                await _reset(stream)
                ex.responded = time.monotonic()
                return False
            if kind == "trickle":
                assert fault is not None
                chunks = [response[i : i + 8] for i in range(0, len(response), 8)]
                pause = fault.seconds / max(1, len(chunks))
                for i, chunk in enumerate(chunks):
                    watch.last_write = i == len(chunks) - 1
                    if watch.last_write:
                        ex.writing = time.monotonic()
                    await stream.send_all(chunk)
                    if watch.gone.is_set():
                        return False
                    if not watch.last_write:
                        await trio.sleep(pause)
            else:
                watch.last_write = True
                ex.writing = time.monotonic()
                await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if ex.client_gone is None:
                ex.client_gone = time.monotonic()
            return False
        ex.responded = time.monotonic()
        return b"connection: close" not in head.lower()

    def _corrupt(self, ex: Exchange, body: bytes) -> bytes | None:
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        messages = parsed.get("Messages") or []
        if not messages:
            return None
        victim = self.plan.rng.choice(messages)
        victim["MD5OfBody"] = hashlib.md5(b"not " + victim["Body"].encode()).hexdigest()
        ex.corrupted = victim["MessageId"]
        return json.dumps(parsed).encode()

    async def _forward(self, request: bytes) -> tuple[int, bytes]:
        """One request to the server on a fresh connection; its full answer (status, bytes)."""
        upstream = await trio.open_tcp_stream(*self.upstream)
        async with upstream:
            await upstream.send_all(request)
            buffer = bytearray()
            head = await read_head(upstream, buffer)
            assert head is not None, "the server closed the connection without an answer"
            length = content_length(head, default=-1)
            while length < 0 or len(buffer) < length:
                chunk = await upstream.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
            body = bytes(buffer if length < 0 else buffer[:length])
            status = int(head.split(b" ", 2)[1])
            return status, _with_body(head[:-4], body)


# -- HTTP/1.1 bits -------------------------------------------------------------------------------


async def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    await stream.aclose()


def _with_body(head: bytes, body: bytes) -> bytes:
    """``head`` (without its final blank line) with ``body`` and a matching Content-Length."""
    head = head.removesuffix(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() not in (b"content-length", b"transfer-encoding")
    ]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
