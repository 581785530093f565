"""The SQS client: the sans-IO protocol layer driven over an ``httpx.AsyncClient`` on Trio."""

from __future__ import annotations

import logging
import math
import random
import ssl
import sys
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import h11
import httpcore
import httpx
import trio

from . import _sigv4
from ._config import MIN_RECEIVE_CONNECTIONS, Limits, RetryPolicy, check_int_range
from ._credentials import CredentialCache
from ._exceptions import (
    BatchEntryError,
    ClientClosedError,
    ClockSkewError,
    ConfigurationError,
    ServiceError,
    SQSError,
    TransportError,
)
from ._gate import KeptSlotGate, ResizableGate
from ._message import (
    BatchResult,
    CorruptMessage,
    Message,
    MessageAttributeValue,
    ReceiveResult,
    SendResult,
    malformed_message,
    message_from_wire,
    receive_result_from_json,
)
from ._protocol import (
    HTTPRequest,
    MalformedEntry,
    SQSProtocol,
    clock_skew,
    is_retryable_error,
)
from ._sigv4 import canonical_url_parts
from ._transport import Timeouts, TrioTransport, decode_content, head
from ._util import leaves, only_cancelled, raise_as_is

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

__all__ = ["SQSClient", "SendEntry"]

log = logging.getLogger("trio_sqs.client")

# A long poll may take WaitTimeSeconds; the read timeout leaves this much room on top.
POLL_READ_MARGIN = 10.0
DEFAULT_TIMEOUT = 30.0
# The most one call may take by default, every attempt and backoff included (open_client's
# ``call_timeout``); a long poll gets its read timeout on top.
DEFAULT_CALL_TIMEOUT = 60.0
CLOSE_TIMEOUT = 2.0
# Traced by their PRODUCER span: no CLIENT span of their own (open_client's trace_calls).
_SEND_OPERATIONS = frozenset({"SendMessage", "SendMessageBatch"})
# Calls that may take the slot of the other budget kept for them (see SQSClient.__init__).
_VISIBILITY_CHANGES = frozenset({"ChangeMessageVisibility", "ChangeMessageVisibilityBatch"})


@dataclass(frozen=True, kw_only=True, slots=True)
class SendEntry:
    """One message for :meth:`SQSClient.send_message_batch`."""

    body: str
    id: str | None = None
    delay_seconds: int | None = None
    message_attributes: Mapping[str, MessageAttributeValue] | None = None
    message_group_id: str | None = None
    message_deduplication_id: str | None = None


def _send_params(
    body: str,
    delay_seconds: int | None,
    message_attributes: Mapping[str, MessageAttributeValue] | None,
    message_group_id: str | None,
    message_deduplication_id: str | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"MessageBody": body}
    if delay_seconds is not None:
        check_int_range("delay_seconds", delay_seconds, 0, 900)
        params["DelaySeconds"] = delay_seconds
    if message_attributes:
        params["MessageAttributes"] = {k: v.to_wire() for k, v in message_attributes.items()}
    if message_group_id is not None:
        params["MessageGroupId"] = message_group_id
    if message_deduplication_id is not None:
        params["MessageDeduplicationId"] = message_deduplication_id
    return params


def _check_batch(name: str, entries: Sequence[object]) -> None:
    if not 1 <= len(entries) <= 10:
        raise ConfigurationError(
            f"{name} takes 1 to 10 entries, got {len(entries)}", code="InvalidOption"
        )


class MalformedAnswer(ValueError):
    """A successful answer that parsed, but lacks a member the call reads or has one of the wrong
    type. The client's boundary reports it as an ``InvalidResponse`` :class:`TransportError`."""


def _required(result: Mapping[str, Any], name: str, kind: type[T], operation: str) -> T:
    value = result.get(name)
    if value is None:
        raise MalformedAnswer(f"{operation} answered without {name}")
    if not isinstance(value, kind):
        raise MalformedAnswer(
            f"{operation}: {name} is a {type(value).__name__}, not a {kind.__name__}"
        )
    return value


def _optional(result: Mapping[str, Any], name: str, kind: type[T], operation: str) -> T | None:
    if result.get(name) is None:
        return None
    return _required(result, name, kind, operation)


def _entries_of(result: Mapping[str, Any], name: str, operation: str) -> list[Mapping[str, Any]]:
    entries = _optional(result, name, list, operation) or []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise MalformedAnswer(f"{operation}: an entry of {name} is a {type(entry).__name__}")
    return entries


def _batch_result(
    operation: str,
    parsed: Mapping[str, Any],
    requested: Collection[str],
    request_id: str | None = None,
) -> BatchResult:
    """The outcome of a batch call, every requested entry accounted for.

    An entry the answer names in neither ``Successful`` nor ``Failed`` is failed with code
    ``MissingFromAnswer`` (nothing is dropped silently). An entry without an ``Id``, an ``Id``
    that was not requested or that appears twice, or a failure without a ``Code`` makes the
    answer malformed (:class:`MalformedAnswer`).
    """
    seen: set[str] = set()

    def entry_id(entry: Mapping[str, Any], where: str) -> str:
        value = _required(entry, "Id", str, f"{operation} ({where} entry)")
        if value not in requested:
            raise MalformedAnswer(f"{operation} answered for entry {value!r}, which was not sent")
        if value in seen:
            raise MalformedAnswer(f"{operation} answered twice for entry {value!r}")
        seen.add(value)
        return value

    successful = tuple(
        entry_id(e, "Successful") for e in _entries_of(parsed, "Successful", operation)
    )
    failed: list[BatchEntryError] = []
    for e in _entries_of(parsed, "Failed", operation):
        failed_id = entry_id(e, "Failed")
        code = _required(e, "Code", str, f"{operation} (Failed entry {failed_id!r})")
        text = _optional(e, "Message", str, f"{operation} (Failed entry {failed_id!r})")
        failed.append(
            BatchEntryError(
                text or code,
                entry_id=failed_id,
                sender_fault=bool(e.get("SenderFault")),
                code=code,
                request_id=request_id,
            )
        )
    for missing in requested:
        if missing not in seen:
            failed.append(
                BatchEntryError(
                    f"{operation} answered without this entry (neither successful nor failed)",
                    entry_id=missing,
                    sender_fault=False,
                    code="MissingFromAnswer",
                    request_id=request_id,
                )
            )
    return BatchResult(successful=successful, failed=tuple(failed))


# Failures on the way (no answer read yet) worth another attempt: the network, timeouts, a
# connection the peer broke. httpx's own errors are retried as they always were; the rest is what
# a user-supplied transport may let through from below httpx.
_TRANSIENT_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    h11.ProtocolError,
    OSError,
)


class Answer(Protocol):
    """What the client reads of a response: an ``httpx.Response`` or our transport's
    :class:`~trio_sqs._transport.RawResponse`."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


def _response_request_id(response: Answer) -> str | None:
    request_id: str | None = response.headers.get("x-amzn-requestid")
    return request_id


class _Failures:
    """A call's deadline (its call_timeout), its attempts so far and its last failure (for the
    message of its overall timeout)."""

    __slots__ = ("attempts", "deadline", "last")

    def __init__(self) -> None:
        self.attempts = 0
        self.deadline = math.inf
        self.last: SQSError | None = None


class _CallExpired(Exception):
    """A call reached its deadline (turned into a TransportError by SQSClient._call_untraced)."""


class _Attempt:
    """How far one attempt got: the boundary words (and classes) a failure by it."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        self.response: Answer | None = None


class map_foreign_exceptions:
    """The one boundary between trio_sqs and what it calls to send a request and read its answer.

    Like httpx's ``map_httpcore_exceptions``: whatever foreign exception is raised inside leaves
    as one of ours, with the original as ``__cause__``:

    - before an answer arrived (httpx, httpcore, h11, ``OSError``, ``httpx.InvalidURL``,
      ``httpx.StreamError``, anything a user-supplied transport raises): a
      :class:`TransportError` with code ``"TransportError"``;
    - once an answer arrived (botocore's parser, builtins raised by an answer with missing or
      mistyped members, :class:`MalformedAnswer`): a :class:`TransportError` with code
      ``"InvalidResponse"``, the answer's status and request id.

    Our own exceptions (:class:`SQSError`: a :class:`ServiceError` parsed from an error answer,
    :class:`ClientClosedError`) pass unchanged. A ``BaseExceptionGroup`` made only of
    ``trio.Cancelled`` (a nursery inside httpcore's connect, cancelled) leaves as one plain
    ``Cancelled``; a group holding errors is mapped like any error; anything else that is not an
    ``Exception`` (``Cancelled``, ``KeyboardInterrupt``) passes unchanged.
    """

    __slots__ = ("_attempt", "_operation")

    def __init__(self, operation: str, attempt: _Attempt) -> None:
        self._operation = operation
        self._attempt = attempt

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        # (A class, not a @contextmanager generator: this runs once per request.)
        if exc is None or isinstance(exc, (SQSError, _CallExpired)):
            return False
        if isinstance(exc, BaseExceptionGroup):
            cancelled = only_cancelled(exc)
            if cancelled is not None:
                raise_as_is(cancelled)
            if any(not isinstance(e, (Exception, trio.Cancelled)) for e in leaves(exc)):
                return False  # KeyboardInterrupt, SystemExit...: never ours to translate
        elif not isinstance(exc, Exception):
            return False
        raise _translate(self._operation, exc, self._attempt) from exc


def _translate(operation: str, exc: BaseException, attempt: _Attempt) -> TransportError:
    response = attempt.response
    if response is None:
        return TransportError(
            f"{operation} failed: {type(exc).__name__}: {exc}", code="TransportError"
        )
    return TransportError(
        f"{operation}: unreadable response (HTTP {response.status_code}): "
        f"{type(exc).__name__}: {exc}",
        code="InvalidResponse",
        status_code=response.status_code,
        request_id=_response_request_id(response),
    )


def _is_retryable(failure: SQSError, receive: bool) -> bool:
    """Whether another attempt may succeed where ``failure`` happened."""
    if isinstance(failure, ServiceError):
        return is_retryable_error(failure)
    if not isinstance(failure, TransportError):
        return False  # ClientClosedError, ConfigurationError: final
    if failure.code == "InvalidResponse":
        return True  # a garbled answer (a proxy, a truncated body) may come right next time
    cause = failure.__cause__
    causes = leaves(cause) if isinstance(cause, BaseExceptionGroup) else [cause]
    causes = [c for c in causes if not isinstance(c, trio.Cancelled)]
    if receive and any(isinstance(c, httpx.ReadTimeout) for c in causes):
        return False  # a long poll that timed out on read: the poller decides
    if any(_certificate_refused(c) for c in causes):
        return False  # the same certificate is refused next time
    return bool(causes) and all(isinstance(c, _TRANSIENT_TRANSPORT_ERRORS) for c in causes)


def _certificate_refused(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _RequestBody(httpx.AsyncByteStream):
    """A request body sent as one chunk, which can tell when that chunk has been written.

    httpcore asks for the next chunk right after the previous one was handed to the socket; that
    second ``__anext__`` is the first moment the sending task runs once the whole request is on the
    wire, with no cancellable checkpoint in between (the trace extension's "complete" event comes
    one checkpoint later). Trio's send ends in a cancel-shielded checkpoint, so other tasks may run
    between the write and this marker: the marker is late by at most that one schedule point.

    It is also not an async generator: httpx's own byte stream is one, and a request cancelled
    while its body is being written abandons it, which Trio reports with a ResourceWarning when it
    is garbage collected (an error under ``-W error``).
    """

    def __init__(self, body: bytes, on_sent: Callable[[], None] | None = None) -> None:
        self._body = body
        self._on_sent = on_sent

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._body, self._on_sent)


class _OneChunk:
    def __init__(self, body: bytes, on_sent: Callable[[], None] | None) -> None:
        self._body: bytes | None = body
        self._on_sent = on_sent

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._body is None:
            if self._on_sent is not None:
                self._on_sent()
                self._on_sent = None
            raise StopAsyncIteration
        body, self._body = self._body, None
        return body


class SQSClient:
    """An SQS client on Trio. Create it with :func:`open_client`.

    Every method is a checkpoint. Cancellation: cancelling a call at any point aborts it (an
    in-flight HTTP request is dropped and its connection closed) and leaves the client usable; no
    request waits inside httpx's connection pool, so a cancelled call never leaks a pool slot.
    """

    def __init__(
        self,
        protocol: SQSProtocol,
        credentials: CredentialCache,
        http: httpx.AsyncClient,
        *,
        limits: Limits,
        retry: RetryPolicy,
        random_seed: int | None = None,
        trace_calls: bool = False,
        direct: TrioTransport | None = None,
        call_timeout: float | None = None,
    ) -> None:
        self._protocol = protocol
        self._credentials = credentials
        self._http = http
        self._retry = retry
        # Our own transport, called directly (no httpx Request/Response objects); None: every
        # request goes through ``http.send`` (a transport of the user's, a proxy).
        self._direct = direct
        url = httpx.URL(protocol.endpoint + "/")
        self._scheme = url.scheme
        self._host = url.host
        self._port = url.port
        self._target = url.raw_path.decode("ascii")
        # The Host header: what the signer signed (lowercase, no default port, IPv6 bracketed).
        self._host_header = canonical_url_parts(protocol.endpoint + "/")[2]
        self._timeouts_cache: dict[float, Timeouts] = {}
        from . import __version__

        self._user_agent = f"trio-sqs/{__version__}"
        # The most one call may take, every attempt and backoff included (a long poll's wait on
        # top); None: no limit beyond the attempts' own timeouts.
        self._call_timeout = call_timeout
        # Server time minus ours, measured from a clock-skew rejection; added to signing times.
        self._skew = 0.0
        # The client's own generator (open_client's random_seed) for the retry jitter, never the
        # global one.
        self._random = random.Random(random_seed)
        # Long polls the consumers sharing this client may keep in flight (reserve_polls).
        self._reserved_polls = 0
        self._reservations = 0
        self._warned_polls = False
        self._warned_consumers = False
        self.limits = limits
        self._receive_gate = ResizableGate(self._receive_budget())
        # Every other call. With two slots or more, one of them is kept for visibility changes
        # (releases and heartbeats): slow deletes filling the budget at a stop must not hold up
        # the release of a message whose handler was cancelled.
        self._other_gate = KeptSlotGate(limits.max_other_connections)
        self._closed = False
        # OpenTelemetry (None without opentelemetry-api: then no tracing work at all).
        from ._tracing import client_tracing

        self._tracing = client_tracing(
            protocol.endpoint, protocol.region, trace_calls=bool(trace_calls)
        )

    @property
    def endpoint(self) -> str:
        """The resolved endpoint URL."""
        return self._protocol.endpoint

    @property
    def region(self) -> str:
        return self._protocol.region

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the long-poll budget ---------------------------------------------------------------------

    @property
    def receive_budget(self) -> int:
        """ReceiveMessage calls that may be in flight at once now: ``Limits.max_receive_connections``
        if it is an integer, else sized from the consumers registered with :meth:`reserve_polls`
        (the sum of their long polls, at least 4)."""
        return self._receive_budget()

    def _receive_budget(self) -> int:
        fixed = self.limits.max_receive_connections
        if fixed is not None:
            return fixed
        return max(MIN_RECEIVE_CONNECTIONS, self._reserved_polls)

    @contextmanager
    def reserve_polls(self, polls: int) -> Iterator[None]:
        """Register a consumer that may keep up to ``polls`` long polls in flight on this client,
        for the duration of the ``with`` block (synchronous: ``with client.reserve_polls(n):``).

        For consumers: :func:`open_consumer` and :func:`run_consumer` register theirs. A loop of
        your own that long-polls through a shared client may register too.

        With ``Limits(max_receive_connections=None)`` (the default) the long-poll budget grows by
        ``polls`` on entry and shrinks back on exit (it never goes below 4). With a fixed budget
        smaller than what the registered consumers may keep in flight, a warning is logged
        (logger ``trio_sqs.client``, once per client for each of: more polls than the budget, more
        consumers than the budget) naming the size to give instead.

        Raises:
            ConfigurationError: if ``polls`` is not an integer from 1 to 1000.
        """
        check_int_range("polls", polls, 1, 1000)
        self._reserved_polls += polls
        self._reservations += 1
        try:
            self._receive_gate.resize(self._receive_budget())
            self._warn_if_starved()
            yield
        finally:
            self._reserved_polls -= polls
            self._reservations -= 1
            self._receive_gate.resize(self._receive_budget())

    def _warn_if_starved(self) -> None:
        fixed = self.limits.max_receive_connections
        if fixed is None:
            return
        consumers, polls = self._reservations, self._reserved_polls
        if consumers > fixed and not self._warned_consumers:
            self._warned_consumers = self._warned_polls = True
            log.warning(
                "%d consumers on this client need at least one long poll in flight each (up to "
                "%d in all), but Limits(max_receive_connections=%d): some queues get no poll at "
                "times and a message on them waits until a poll is free, a whole wait_time or "
                "more; raise max_receive_connections to %d or leave it None to size it from the "
                "consumers",
                consumers,
                polls,
                fixed,
                polls,
            )
        elif polls > fixed and not self._warned_polls:
            self._warned_polls = True
            log.warning(
                "%d consumer(s) on this client may keep up to %d long polls in flight, but "
                "Limits(max_receive_connections=%d): polls queue behind each other and a message "
                "on a starved queue can wait up to a whole wait_time more; raise "
                "max_receive_connections to %d or leave it None to size it from the consumers",
                consumers,
                polls,
                fixed,
                polls,
            )

    # -- the one place where requests are sent --------------------------------------------------

    async def call(
        self,
        operation: str,
        params: Mapping[str, Any],
        *,
        read_timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
        retry: bool = True,
        _validate: bool = True,
    ) -> dict[str, Any]:
        """Call any SQS operation with botocore-style parameters; return the parsed result.

        Retries throttling, 5xx, transport errors and unreadable answers (see
        :class:`RetryPolicy`), signing each attempt afresh. ReceiveMessage calls use the
        long-poll budget, everything else the other budget.

        Args:
            operation: The SQS operation name, e.g. ``"SendMessage"``.
            params: The operation's parameters as botocore names them.
            read_timeout: Seconds to wait for the response (default 30).
            on_sent: Called (synchronously) each time the request has been written to the socket
                in full. From then on the server may act on it even if the call is cancelled.
            retry: Whether to retry failures per the client's :class:`RetryPolicy`; with
                ``False`` exactly one request is sent (callers with their own retry loop).

        Raises:
            ServiceError: (or a subclass) for an error SQS returned, after retries if retryable.
            TransportError: if the request could not be completed after every retry (code
                ``"TransportError"``), or the answer could not be read (``"InvalidResponse"``).
                No exception of httpx, httpcore, h11, botocore or a user-supplied transport
                escapes: each is translated in :func:`map_foreign_exceptions` and kept as
                ``__cause__``.
            ClientClosedError: if the client is closed.

        Cancellation: aborts the call at once, wherever it is (waiting for a budget slot, sending,
        waiting for the response, or sleeping between retries), with a plain ``trio.Cancelled``,
        never one wrapped in an exception group.
        """
        return await self._call(
            operation,
            params,
            self._reader(operation, _as_is),
            read_timeout=read_timeout,
            on_sent=on_sent,
            retry=retry,
            validate=_validate,
        )

    def _reader(self, operation: str, read: Callable[[dict[str, Any]], T]) -> Callable[[Answer], T]:
        """Parse an answer to ``operation``, then read the members a typed call needs."""

        protocol = self._protocol

        def parse(response: Answer) -> T:
            if response.status_code < 300 and protocol.fast:
                parsed = protocol.parse_response_fast(operation, response.content)
                if parsed is not None:
                    return read(parsed)
            return read(
                protocol.parse_response(
                    operation, response.status_code, response.headers, response.content
                )
            )

        return parse

    async def _call(
        self,
        operation: str,
        params: Mapping[str, Any],
        read: Callable[[Answer], T],
        *,
        read_timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
        retry: bool = True,
        validate: bool = True,
    ) -> T:
        """:meth:`call`, with ``read`` turning the answer into the result. ``read`` runs inside
        the boundary: what it raises on a malformed answer is an ``InvalidResponse``."""
        tracing = self._tracing
        if tracing is not None and tracing.trace_calls and operation not in _SEND_OPERATIONS:
            with tracing.call(operation, params):
                return await self._call_untraced(
                    operation, params, read, read_timeout, on_sent, retry, validate
                )
        return await self._call_untraced(
            operation, params, read, read_timeout, on_sent, retry, validate
        )

    async def _call_untraced(
        self,
        operation: str,
        params: Mapping[str, Any],
        read: Callable[[Answer], T],
        read_timeout: float | None,
        on_sent: Callable[[], None] | None,
        retry: bool,
        validate: bool,
    ) -> T:
        if self._closed:
            raise ClientClosedError("the SQS client is closed")
        limit = self._call_timeout
        failures = _Failures()
        if limit is not None:
            if read_timeout is not None:
                limit += read_timeout  # a long poll: its wait on top
            # Not a cancel scope around the call (one per call costs as much as the rest of
            # a small request): each wait of the call is bounded by this deadline instead.
            failures.deadline = trio.current_time() + limit
        try:
            return await self._attempt_loop(
                operation, params, read, read_timeout, on_sent, retry, validate, failures
            )
        except _CallExpired:
            pass
        except BaseExceptionGroup as group:
            # Cancellation met outside one attempt's boundary (fetching credentials).
            cancelled = only_cancelled(group)
            if cancelled is not None:
                raise_as_is(cancelled)
            raise
        last = failures.last
        assert limit is not None
        raise TransportError(
            f"{operation} did not complete within {limit:g} s (the client's call_timeout, "
            f"{self._call_timeout:g} s{' plus the read timeout' if read_timeout else ''}; "
            f"{failures.attempts} attempt(s)"
            + (f", the last failed: {last}" if last is not None else "")
            + ")",
            code="TransportError",
        ) from last

    def _timeouts(self, read_timeout: float) -> Timeouts:
        timeouts = self._timeouts_cache.get(read_timeout)
        if timeouts is None:
            timeouts = Timeouts(DEFAULT_TIMEOUT, read_timeout, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
            self._timeouts_cache[read_timeout] = timeouts
        return timeouts

    async def _send_direct(
        self,
        direct: TrioTransport,
        request: HTTPRequest,
        timeouts: Timeouts,
        on_sent: Callable[[], None] | None,
        deadline: float,
        progress: _Attempt,
    ) -> None:
        headers = request.headers
        headers["User-Agent"] = self._user_agent  # not signed (SigV4 leaves User-Agent out)
        response = await direct.request(
            request.method.encode("ascii"),
            self._scheme,
            self._host,
            self._port,
            head(request.method, self._target, self._host_header, headers, len(request.body)),
            request.body,
            timeouts,
            on_sent,
            deadline=deadline,
        )
        progress.response = response
        if "content-encoding" in response.headers:
            response.content = decode_content(response)  # (failing: an unreadable answer)

    async def _attempt_loop(
        self,
        operation: str,
        params: Mapping[str, Any],
        read: Callable[[Answer], T],
        read_timeout: float | None,
        on_sent: Callable[[], None] | None,
        retry: bool,
        validate: bool,
        failures: _Failures,
    ) -> T:
        receive = operation == "ReceiveMessage"
        # Visibility changes may take the slot of the other budget kept for them.
        kept = operation in _VISIBILITY_CHANGES
        receive_gate, other_gate = self._receive_gate, self._other_gate
        if read_timeout is None:
            read_timeout = DEFAULT_TIMEOUT
        direct = self._direct
        timeouts = self._timeouts(read_timeout)
        attempts = self._retry.max_attempts if retry else 1
        protocol = self._protocol
        corrected = False
        attempt = 0
        while True:
            attempt += 1
            failures.attempts += 1
            # The current snapshot without a checkpoint when no refresh is due (the send and
            # the answer's wait are this call's checkpoints).
            credentials = self._credentials.current()
            if credentials is None:
                with trio.move_on_at(failures.deadline):
                    credentials = await self._credentials.get()
                if credentials is None:
                    raise _CallExpired
            request = protocol.build_request(
                operation, params, credentials, validate=validate, skew=self._skew
            )
            progress = _Attempt()
            try:
                with map_foreign_exceptions(operation, progress):
                    # A free slot is taken without a schedule point; else wait for one.
                    lane = False
                    try:
                        if receive:
                            receive_gate.acquire_nowait()
                        else:
                            lane = other_gate.acquire_nowait(kept=kept)
                    except trio.WouldBlock:
                        with trio.move_on_at(failures.deadline) as waited:
                            if receive:
                                await receive_gate.acquire()
                            else:
                                lane = await other_gate.acquire(kept=kept)
                        if waited.cancelled_caught:
                            raise _CallExpired from None
                    try:
                        # A cancellation that came meanwhile must stop the call here, before
                        # a byte is sent.
                        await trio.lowlevel.checkpoint_if_cancelled()
                        if self._closed:
                            raise ClientClosedError("the SQS client is closed")
                        if direct is not None:
                            await self._send_direct(
                                direct, request, timeouts, on_sent, failures.deadline, progress
                            )
                        else:
                            http_request = self._http.build_request(
                                request.method,
                                request.url,
                                headers=request.headers,
                                content=request.body,
                                timeout=httpx.Timeout(DEFAULT_TIMEOUT, read=read_timeout),
                            )
                            http_request.stream = _RequestBody(request.body, on_sent)
                            with trio.move_on_at(failures.deadline):
                                progress.response = await self._http.send(http_request)
                            if progress.response is None:
                                raise _CallExpired
                    finally:
                        if receive:
                            receive_gate.release()
                        else:
                            other_gate.release(lane)
                    answer = progress.response
                    assert answer is not None
                    return read(answer)
            except ClockSkewError as failure:
                failures.last = failure
                skew = None
                if progress.response is not None:
                    skew = clock_skew(progress.response.headers, now=_sigv4.utcnow().timestamp())
                if corrected or not protocol.fast or skew is None:
                    raise
                # Sign again at the server's time, at once: this attempt does not count.
                corrected = True
                attempt -= 1
                log.warning(
                    "%s was rejected for clock skew: the server's clock is %+.1f s from ours; "
                    "signing with the server's time from now on (fix the machine's clock)",
                    operation,
                    skew,
                    extra={"skew": skew},
                )
                # Measured against our own clock: the skew, whatever was corrected before (a
                # concurrent call, a clock that moved since).
                self._skew = skew
                continue
            except SQSError as failure:
                failures.last = failure
                if trio.current_time() >= failures.deadline:
                    # A wait cut short by the deadline (its phase's timeout error names the
                    # phase's own limit, not the deadline that ended it).
                    raise _CallExpired from None
                if attempt >= attempts or not _is_retryable(failure, receive):
                    raise
                delay = self._random.uniform(0.0, self._retry.backoff_ceiling(attempt))
                log.debug(
                    "retrying %s after %s (attempt %d of %d, in %.3f s)",
                    operation,
                    failure,
                    attempt,
                    attempts,
                    delay,
                )
            if trio.current_time() + delay >= failures.deadline:
                await trio.sleep_until(failures.deadline)
                raise _CallExpired
            await trio.sleep(delay)

    # -- typed operations ------------------------------------------------------------------------

    async def get_queue_url(self, queue_name: str, *, owner_account_id: str | None = None) -> str:
        params: dict[str, Any] = {"QueueName": queue_name}
        if owner_account_id:
            params["QueueOwnerAWSAccountId"] = owner_account_id
        return await self._call(
            "GetQueueUrl",
            params,
            self._reader("GetQueueUrl", _queue_url("GetQueueUrl")),
            validate=False,
        )

    async def create_queue(
        self,
        queue_name: str,
        *,
        attributes: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a queue (or return the URL of an identical existing one)."""
        params: dict[str, Any] = {"QueueName": queue_name}
        if attributes:
            params["Attributes"] = dict(attributes)
        if tags:
            params["tags"] = dict(tags)
        return await self._call(
            "CreateQueue", params, self._reader("CreateQueue", _queue_url("CreateQueue"))
        )

    async def delete_queue(self, queue_url: str) -> None:
        await self.call("DeleteQueue", {"QueueUrl": queue_url}, _validate=False)

    async def purge_queue(self, queue_url: str) -> None:
        await self.call("PurgeQueue", {"QueueUrl": queue_url}, _validate=False)

    async def list_queues(self, prefix: str | None = None) -> list[str]:
        """Every queue URL (following pagination), optionally only those whose name has ``prefix``."""
        urls: list[str] = []
        params: dict[str, Any] = {"MaxResults": 1000}
        if prefix:
            params["QueueNamePrefix"] = prefix
        while True:
            page, token = await self._call(
                "ListQueues", params, self._reader("ListQueues", _queue_page), validate=False
            )
            urls.extend(page)
            if not token:
                return urls
            params["NextToken"] = token

    async def get_queue_attributes(
        self, queue_url: str, names: Iterable[str] = ("All",)
    ) -> dict[str, str]:
        return await self._call(
            "GetQueueAttributes",
            {"QueueUrl": queue_url, "AttributeNames": list(names)},
            self._reader("GetQueueAttributes", _queue_attributes),
            validate=False,
        )

    async def receive_messages(
        self,
        queue_url: str,
        *,
        max_messages: int = 10,
        wait_time: int = 20,
        visibility_timeout: int | None = None,
        attribute_names: Sequence[str] = ("All",),
        message_attribute_names: Sequence[str] = ("All",),
        receive_request_attempt_id: str | None = None,
        on_sent: Callable[[], None] | None = None,
        retry: bool = True,
    ) -> ReceiveResult:
        """Receive up to ``max_messages`` messages, long-polling up to ``wait_time`` seconds.

        Each message's MD5 digests are verified; messages that fail are returned in
        ``ReceiveResult.corrupt`` and never among the valid ones.

        Cancellation: the HTTP request is dropped at once. SQS does not notice: its long poll runs
        on, and messages it takes in that time stay invisible for ``visibility_timeout`` (keep it
        short, see the README on orphaned polls).
        """
        check_int_range("max_messages", max_messages, 1, 10)
        check_int_range("wait_time", wait_time, 0, 20)
        params: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_time,
        }
        if visibility_timeout is not None:
            check_int_range("visibility_timeout", visibility_timeout, 0, 43200)
            params["VisibilityTimeout"] = visibility_timeout
        if attribute_names:
            params["MessageSystemAttributeNames"] = list(attribute_names)
        if message_attribute_names:
            params["MessageAttributeNames"] = list(message_attribute_names)
        if receive_request_attempt_id:
            params["ReceiveRequestAttemptId"] = receive_request_attempt_id

        protocol = self._protocol

        def read(response: Answer) -> ReceiveResult:
            if response.status_code < 300 and protocol.fast:
                result = receive_result_from_json(response.content, queue_url)
                if result is not None:
                    return result
            entries = protocol.parse_receive_response(
                response.status_code, response.headers, response.content
            )
            return _receive_result(entries, queue_url)

        return await self._call(
            "ReceiveMessage",
            params,
            read,
            read_timeout=wait_time + POLL_READ_MARGIN,
            on_sent=on_sent,
            retry=retry,
            validate=False,
        )

    async def delete_message(self, queue_url: str, receipt_handle: str) -> None:
        await self.call(
            "DeleteMessage",
            {"QueueUrl": queue_url, "ReceiptHandle": receipt_handle},
            _validate=False,
        )

    async def delete_message_batch(
        self, queue_url: str, receipt_handles: Sequence[str] | Mapping[str, str]
    ) -> BatchResult:
        """Delete up to 10 messages. ``receipt_handles`` is a list (ids are the list positions) or
        a mapping of entry id to receipt handle. Per-entry failures are in the result, not raised."""
        entries = _entries(receipt_handles)
        _check_batch("delete_message_batch", entries)
        requested = [entry_id for entry_id, _ in entries]
        return await self._call(
            "DeleteMessageBatch",
            {"QueueUrl": queue_url, "Entries": [{"Id": i, "ReceiptHandle": h} for i, h in entries]},
            self._reader(
                "DeleteMessageBatch",
                lambda parsed: _batch_result("DeleteMessageBatch", parsed, requested),
            ),
            validate=False,
        )

    async def change_message_visibility(
        self, queue_url: str, receipt_handle: str, visibility_timeout: int
    ) -> None:
        check_int_range("visibility_timeout", visibility_timeout, 0, 43200)
        await self.call(
            "ChangeMessageVisibility",
            {
                "QueueUrl": queue_url,
                "ReceiptHandle": receipt_handle,
                "VisibilityTimeout": visibility_timeout,
            },
            _validate=False,
        )

    async def change_message_visibility_batch(
        self,
        queue_url: str,
        receipt_handles: Sequence[str] | Mapping[str, str],
        visibility_timeout: int | Mapping[str, int],
        *,
        retry: bool = True,
    ) -> BatchResult:
        """Change the visibility of up to 10 messages; ``visibility_timeout`` may be one value for
        all, or a mapping of entry id to value. Per-entry failures are in the result."""
        entries = _entries(receipt_handles)
        _check_batch("change_message_visibility_batch", entries)
        wire = []
        for entry_id, handle in entries:
            timeout = (
                visibility_timeout[entry_id]
                if isinstance(visibility_timeout, Mapping)
                else visibility_timeout
            )
            check_int_range("visibility_timeout", timeout, 0, 43200)
            wire.append({"Id": entry_id, "ReceiptHandle": handle, "VisibilityTimeout": timeout})
        requested = [entry_id for entry_id, _ in entries]
        return await self._call(
            "ChangeMessageVisibilityBatch",
            {"QueueUrl": queue_url, "Entries": wire},
            self._reader(
                "ChangeMessageVisibilityBatch",
                lambda parsed: _batch_result("ChangeMessageVisibilityBatch", parsed, requested),
            ),
            retry=retry,
            validate=False,
        )

    async def send_message(
        self,
        queue_url: str,
        body: str,
        *,
        delay_seconds: int | None = None,
        message_attributes: Mapping[str, MessageAttributeValue] | None = None,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
    ) -> SendResult:
        params = _send_params(
            body, delay_seconds, message_attributes, message_group_id, message_deduplication_id
        )
        params["QueueUrl"] = queue_url
        read = self._reader("SendMessage", lambda parsed: _send_result("SendMessage", parsed))
        if self._tracing is None:
            return await self._call("SendMessage", params, read)
        # A PRODUCER span; its context goes into the message's attributes (README, "Tracing").
        with self._tracing.producer("SendMessage", queue_url, [params]) as span:
            result = await self._call("SendMessage", params, read)
            if span is not None:
                span.set_attribute("messaging.message.id", result.message_id)
            return result

    async def send_message_batch(
        self, queue_url: str, entries: Sequence[SendEntry]
    ) -> tuple[tuple[SendResult, ...], BatchResult]:
        """Send up to 10 messages. Returns the sent messages and the batch outcome (which
        entries failed, with their error codes). Entry ids default to the list positions."""
        _check_batch("send_message_batch", entries)
        wire = []
        for index, entry in enumerate(entries):
            params = _send_params(
                entry.body,
                entry.delay_seconds,
                entry.message_attributes,
                entry.message_group_id,
                entry.message_deduplication_id,
            )
            params["Id"] = entry.id if entry.id is not None else str(index)
            wire.append(params)
        requested = [str(params["Id"]) for params in wire]
        read = self._reader(
            "SendMessageBatch", lambda parsed: _send_batch_result(parsed, requested)
        )
        call_params = {"QueueUrl": queue_url, "Entries": wire}
        if self._tracing is None:
            return await self._call("SendMessageBatch", call_params, read)
        # One PRODUCER span; its context goes into every entry (README, "Tracing").
        with self._tracing.producer("SendMessageBatch", queue_url, wire) as span:
            sent, outcome = await self._call("SendMessageBatch", call_params, read)
            if span is not None and outcome.failed:
                self._tracing.entries_failed(span, outcome.failed, len(wire))
            return sent, outcome


def _as_is(parsed: dict[str, Any]) -> dict[str, Any]:
    return parsed


def _entries(receipt_handles: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    if isinstance(receipt_handles, Mapping):
        return [(str(k), v) for k, v in receipt_handles.items()]
    return [(str(i), h) for i, h in enumerate(receipt_handles)]


# -- reading the answers of the typed calls: every member read is checked ---------------------------


def _queue_url(operation: str) -> Callable[[Mapping[str, Any]], str]:
    def read(parsed: Mapping[str, Any]) -> str:
        return _required(parsed, "QueueUrl", str, operation)

    return read


def _queue_page(parsed: Mapping[str, Any]) -> tuple[list[str], str | None]:
    urls = _optional(parsed, "QueueUrls", list, "ListQueues") or []
    for url in urls:
        if not isinstance(url, str):
            raise MalformedAnswer(f"ListQueues: a queue URL is a {type(url).__name__}")
    return urls, _optional(parsed, "NextToken", str, "ListQueues")


def _queue_attributes(parsed: Mapping[str, Any]) -> dict[str, str]:
    attributes = _optional(parsed, "Attributes", dict, "GetQueueAttributes") or {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise MalformedAnswer(f"GetQueueAttributes: attribute {name!r} is not a string")
    return dict(attributes)


def _receive_result(entries: Sequence[Any], queue_url: str) -> ReceiveResult:
    messages: list[Message] = []
    corrupt: list[CorruptMessage] = []
    for raw in entries:
        if isinstance(raw, MalformedEntry):
            item: Message | CorruptMessage = malformed_message(raw.raw, raw.reason)
        else:
            item = message_from_wire(raw, queue_url)
        if isinstance(item, CorruptMessage):
            log.error("corrupt message %s: %s", item.message_id, item.error)
            corrupt.append(item)
        else:
            messages.append(item)
    return ReceiveResult(tuple(messages), tuple(corrupt))


def _send_result(
    operation: str, entry: Mapping[str, Any], entry_id: str | None = None
) -> SendResult:
    return SendResult(
        message_id=_required(entry, "MessageId", str, operation),
        md5_of_body=_optional(entry, "MD5OfMessageBody", str, operation) or "",
        sequence_number=_optional(entry, "SequenceNumber", str, operation),
        id=entry_id,
    )


def _send_batch_result(
    parsed: Mapping[str, Any], requested: Collection[str]
) -> tuple[tuple[SendResult, ...], BatchResult]:
    outcome = _batch_result("SendMessageBatch", parsed, requested)
    sent = tuple(
        _send_result("SendMessageBatch", entry, entry_id)
        for entry, entry_id in zip(
            _entries_of(parsed, "Successful", "SendMessageBatch"), outcome.successful, strict=True
        )
    )
    return sent, outcome
