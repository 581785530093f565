"""OpenTelemetry tracing: a CONSUMER span per handler invocation, a PRODUCER span per send, and
the trace context carried across the queue in message attributes.

Only the OpenTelemetry *API* is used (``pip install 'trio-sqs[otel]'``); whoever runs the program
configures an SDK, or nothing is recorded. The consumer and the client import this module only
when they are built (``import trio_sqs`` does not), and without the package (:data:`AVAILABLE`
false) do no tracing work at all.

What crosses the queue:

- on send (:meth:`ClientTracing.producer`): the context of the PRODUCER span (without an SDK:
  the current one, or the handled message's, passed through) is injected by the globally configured propagator (W3C
  ``traceparent``/``tracestate`` by default) as String message attributes, never replacing an
  attribute the caller set, never beyond SQS's 10 attributes a message;
- on receive (:func:`extract_context`): the same propagator reads those attributes back; failing
  that, the ``AWSTraceHeader`` system attribute (X-Ray's ``Root=1-...;Parent=...;Sampled=1``,
  which SQS sets from the sender's X-Ray header) is converted. A malformed one of either kind is
  ignored (logged at DEBUG).

Semantic conventions: OpenTelemetry's messaging conventions (``messaging.*``, span names
``process {queue}`` and ``send {queue}``) and the AWS SDK ones (``SQS.{Operation}`` CLIENT spans,
``rpc.*``, ``aws.*``) as of semantic conventions 1.27 and later.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import httpx

from ._handler import Retry
from ._middleware import CallNext, Invocation, Middleware
from ._util import queue_name

if TYPE_CHECKING:
    from ._exceptions import BatchEntryError
    from ._message import Message

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        Span,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError as exc:  # without the otel extra: no tracing at all
    if not (exc.name or "").startswith("opentelemetry"):
        raise
    AVAILABLE = False
else:
    AVAILABLE = True
    _PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
    _EMPTY = Context()

__all__ = [
    "AVAILABLE",
    "ClientTracing",
    "TracingMiddleware",
    "client_tracing",
    "consumer_middleware",
    "extract_context",
    "span_context_from_aws_trace_header",
]

log = logging.getLogger("trio_sqs.tracing")

INSTRUMENTATION_NAME = "trio_sqs"

# Attribute names (semantic conventions; the trio_sqs.* ones are ours).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
AWS_SQS_QUEUE_URL = "aws.sqs.queue.url"
# No general attribute for a delivery count exists (Service Bus and Pub/Sub have their own, in
# their system's namespace): SQS's ApproximateReceiveCount goes next to aws.sqs.queue.url.
AWS_SQS_RECEIVE_COUNT = "aws.sqs.message.receive_count"
AWS_REQUEST_ID = "aws.request_id"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLOUD_REGION = "cloud.region"
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
OUTCOME = "trio_sqs.outcome"
FAILED_COUNT = "trio_sqs.failed_message_count"
RETRY_DELAY = "trio_sqs.retry.delay"

SYSTEM = "aws_sqs"
AWS_TRACE_HEADER = "AWSTraceHeader"
MAX_ATTRIBUTES = 10

# What SQS accepts as an attribute name (the propagator's field names are checked against it).
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.\-]{1,256}")
_RESERVED_PREFIX = re.compile(r"(?i)(aws\.|amazon\.)")

# -- the tracer ----------------------------------------------------------------------------------

_cached_provider: object = None
_cached_tracer: trace.Tracer | None = None


def _version() -> str:
    from . import __version__

    return __version__


_MISSING = object()


def _global_provider() -> trace.TracerProvider | None:
    """The global tracer provider, or ``None`` while none is set (no SDK).

    While none is set, ``trace.get_tracer_provider()`` looks the environment up at every call
    (``OTEL_PYTHON_TRACER_PROVIDER``): 0.6 µs, a third of what tracing costs a message without an
    SDK. So the API's global is read first (as OpenTelemetry's own test utilities do), and the
    public function called only once one is set, or if the environment names one (read when
    this module is imported), or if a future API keeps its global elsewhere.
    """
    if getattr(trace, "_TRACER_PROVIDER", _MISSING) is None and not _PROVIDER_FROM_ENVIRONMENT:
        return None
    return trace.get_tracer_provider()


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer | None:
    """Our tracer from ``provider`` (default: the global one), or ``None`` if that provider is
    the API's (no SDK configured): then there is nothing to record and no span is made.

    Resolved again whenever the global provider changes (it is set once in a program, but may be
    set after a consumer or client was built), and cached otherwise: one call and an identity
    check an invocation.
    """
    global _cached_provider, _cached_tracer
    if provider is None:
        provider = _global_provider()
        if provider is None:
            return None
    if provider is _cached_provider:
        return _cached_tracer
    tracer = _tracer_of(provider)
    _cached_provider, _cached_tracer = provider, tracer
    return tracer


def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer | None:
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider.get_tracer(INSTRUMENTATION_NAME, _version())


# -- extraction ----------------------------------------------------------------------------------


# The longest value a propagator is handed: W3C's traceparent is 55 characters, tracestate and
# baggage at most 8192 (W3C Baggage's limit). Anything longer is hostile or broken: dropped
# here, at DEBUG, before a propagator logs it whole at WARNING for every message.
_CARRIER_LIMITS = {"traceparent": 512}
_CARRIER_LIMIT = 8192


def _string_attributes(message: Message) -> dict[str, str]:
    """The message's String attributes keyed by lower-case name (propagators ask for
    ``traceparent``; a sender may have written ``TraceParent``), without oversized values."""
    carrier: dict[str, str] = {}
    for name, value in message.message_attributes.items():
        if value.string_value is not None and value.data_type.startswith("String"):
            key = name.lower()
            if len(value.string_value) > _CARRIER_LIMITS.get(key, _CARRIER_LIMIT):
                log.debug(
                    "message %s: ignoring attribute %s (%d characters) for its trace context",
                    message.message_id,
                    name,
                    len(value.string_value),
                )
                continue
            carrier.setdefault(key, value.string_value)
    return carrier


def extract_context(message: Message) -> Context:
    """The trace context ``message`` carries, as an OpenTelemetry ``Context``: what the global
    propagator (W3C ``traceparent``/``tracestate`` and ``baggage`` by default) reads from its
    String message attributes (names matched case-insensitively), else the ``AWSTraceHeader``
    system attribute (X-Ray format) converted. An empty context if it carries none, or only a
    malformed one (logged at DEBUG, never raised).

    The trace it names is ``trace.get_current_span(ctx).get_span_context()``; use the context as
    a parent (``tracer.start_span(..., context=ctx)``) or a link.
    """
    root = Context()
    carrier = _string_attributes(message) if message.message_attributes else None
    if carrier:
        try:
            extracted = propagate.extract(carrier, context=root)
        except Exception as exc:  # a propagator of the user's that chokes on garbage
            log.debug(
                "message %s: trace context in its attributes not read: %r",
                message.message_id,
                exc,
            )
            extracted = root
        if trace.get_current_span(extracted).get_span_context().is_valid:
            return extracted
        fields = propagate.get_global_textmap().fields
        present = sorted(name for name in carrier if name in fields)
        if present:
            log.debug(
                "message %s: ignoring malformed trace context in attribute(s) %s",
                message.message_id,
                ", ".join(present),
            )
        root = extracted  # baggage, if any, is kept
    header = message.attributes.get(AWS_TRACE_HEADER)
    if header:
        span_context = span_context_from_aws_trace_header(header)
        if span_context is None:
            log.debug(
                "message %s: ignoring malformed AWSTraceHeader %r", message.message_id, header
            )
        else:
            return trace.set_span_in_context(NonRecordingSpan(span_context), root)
    return root


_XRAY_ROOT = re.compile(r"1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})")
_XRAY_PARENT = re.compile(r"[0-9a-fA-F]{16}")


def span_context_from_aws_trace_header(header: str) -> SpanContext | None:
    """The remote span context of an X-Ray trace header
    (``Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1``: trace id
    ``5759e988bd862e3fe1be46a994272793``, span id ``53995c3f42cd8ad8``, sampled), or ``None``
    if it is malformed.

    Keys are matched case-insensitively and other keys (``Lineage``, ``Self``) are ignored;
    ``Root`` and ``Parent`` are required, each once, non-zero and of the exact length;
    ``Sampled=1`` sets the sampled flag (``0``, ``?`` or none leave it unset).
    """
    if not isinstance(header, str) or len(header) > 1024:
        return None
    fields: dict[str, str] = {}
    for part in header.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key or key in fields:
            return None
        fields[key] = value.strip()
    root = _XRAY_ROOT.fullmatch(fields.get("root", ""))
    parent = fields.get("parent", "")
    if root is None or _XRAY_PARENT.fullmatch(parent) is None:
        return None
    trace_id = int(root.group(1) + root.group(2), 16)
    span_id = int(parent, 16)
    sampled = fields.get("sampled")
    if trace_id == 0 or span_id == 0 or sampled not in (None, "0", "1", "?"):
        return None
    return SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled == "1" else TraceFlags.DEFAULT),
    )


def _may_carry_context(message: Message) -> bool:
    return bool(message.message_attributes) or AWS_TRACE_HEADER in message.attributes


# The message a handler is handling, when no SDK is configured (TracingMiddleware._pass_through).
_handled_message: ContextVar[Message | None] = ContextVar("trio_sqs_handled_message", default=None)


def _pass_on(entries: Sequence[MutableMapping[str, Any]]) -> None:
    """No SDK: the entries carry the current context if it is valid (a span of someone else's,
    or a context attached by hand), else that of the message being handled, if any."""
    if trace.get_current_span().get_span_context().is_valid:
        inject(entries, None)
        return
    message = _handled_message.get()
    if message is not None:
        carried = extract_context(message)
        if trace.get_current_span(carried).get_span_context().is_valid:
            inject(entries, carried)


# -- the consumer's span -------------------------------------------------------------------------


class TracingMiddleware:
    """Middleware making a CONSUMER span ``process {queue}`` around every handler invocation.

    Every consumer puts one outermost by itself when ``opentelemetry-api`` is installed (unless
    ``tracing=False``); build one yourself only to place it elsewhere in the chain or to give it
    a ``tracer_provider`` other than the global one (and then pass ``tracing=False``).

    A single message's span is a child of the context the message carries (see
    :func:`extract_context`; a root if it carries none), so the producer's trace continues in the
    handler; a batch's span is a root with a link to each message's context. The span is current
    while the handler runs: spans it starts are its children, and messages it sends carry it.

    With no SDK configured no span is made and no context is read: a single message is only
    remembered, so that a message its handler sends with trio_sqs's client carries its context
    on (the API's no-op tracer would make it current for that; reading it for every message
    would cost 8 µs each); any context current where the consumer was opened is hidden from
    handlers, and one a handler attaches and leaves is undone after its invocation.
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._static: dict[str, dict[str, Any]] = {}
        self.function = self._function()

    async def __call__(self, invocation: Invocation, call_next: CallNext) -> None:
        await self.function(invocation, call_next)

    def _function(self) -> Callable[[Invocation, CallNext], Awaitable[None]]:
        """The middleware as a plain async function (what consumers put in their chain: the
        chain tells a function from an object with an async ``__call__`` at every invocation,
        1 µs cheaper for a function, a third of what tracing costs a message without an SDK)."""
        traced = self._traced
        # A provider of its own: its tracer, once (the global one's is looked up each time: it
        # may be set after the consumer was built).
        own_provider = self._provider is not None
        own = _tracer_of(self._provider) if self._provider is not None else None

        async def tracing(invocation: Invocation, call_next: CallNext) -> None:
            tracer = own if own_provider else get_tracer()
            if tracer is not None:
                await traced(tracer, invocation, call_next)
                return
            # As the consumer span would with an SDK: hide any context current here (the one the
            # consumer was opened in: its tasks inherit it; almost always there is none, and
            # nothing to pay for), and undo one the handler attaches and leaves in this worker
            # task (reading the context twice is cheaper than attaching one every time).
            before = otel_context.get_current()
            hidden = otel_context.attach(_EMPTY) if before else None
            message = invocation.messages[0]
            remember = not invocation.batch and _may_carry_context(message)
            # The message, for ClientTracing.producer (_pass_on) to carry its context on.
            token = _handled_message.set(message) if remember else None
            try:
                await call_next()
            finally:
                if token is not None:
                    _handled_message.reset(token)
                if hidden is not None:
                    otel_context.detach(hidden)
                elif otel_context.get_current() is not before:
                    otel_context.attach(before)

        return tracing

    async def _traced(
        self, tracer: trace.Tracer, invocation: Invocation, call_next: CallNext
    ) -> None:
        attributes = dict(self._attributes(invocation.queue_url))
        messages = invocation.messages
        links: list[Link] = []
        if invocation.batch:
            attributes[MESSAGING_BATCH_MESSAGE_COUNT] = len(messages)
            # A root: the context the consumer was opened in (its tasks inherit it) is no parent
            # of a batch's work; the messages' contexts are its links.
            parent = _EMPTY
            for message in messages:
                if not _may_carry_context(message):
                    continue
                linked = trace.get_current_span(extract_context(message)).get_span_context()
                if linked.is_valid:
                    links.append(Link(linked, {MESSAGING_MESSAGE_ID: message.message_id}))
        else:
            message = messages[0]
            attributes[MESSAGING_MESSAGE_ID] = message.message_id
            attributes[AWS_SQS_RECEIVE_COUNT] = message.receive_count
            parent = extract_context(message)
        span = tracer.start_span(
            f"process {attributes[MESSAGING_DESTINATION_NAME]}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await call_next()
        finally:
            try:
                if span.is_recording():
                    _record_outcome(span, invocation)
            finally:
                otel_context.detach(token)
                span.end()

    def _attributes(self, queue_url: str) -> dict[str, Any]:
        static = self._static.get(queue_url)
        if static is None:
            static = {
                MESSAGING_SYSTEM: SYSTEM,
                MESSAGING_OPERATION_TYPE: "process",
                MESSAGING_OPERATION_NAME: "process",
                MESSAGING_DESTINATION_NAME: queue_name(queue_url),
                AWS_SQS_QUEUE_URL: queue_url,
            }
            if len(self._static) < 1000:
                self._static[queue_url] = static
        return static


def _record_outcome(span: Span, invocation: Invocation) -> None:
    error = invocation.error
    outcome = invocation.outcome or ("ok" if error is None else "failed")
    span.set_attribute(OUTCOME, outcome)
    if outcome == "failed":
        if error is not None:
            span.record_exception(error)
            span.set_attribute(ERROR_TYPE, _error_type(error))
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        else:  # a batch handler reported some of its messages as failed
            failed = len(invocation.failed)
            span.set_attribute(ERROR_TYPE, "partial_failure")
            span.set_attribute(FAILED_COUNT, failed)
            span.set_status(
                Status(
                    StatusCode.ERROR,
                    f"{failed} of {len(invocation.messages)} message(s) failed",
                )
            )
    elif outcome == "timed_out":
        span.set_attribute(ERROR_TYPE, "timeout")
        span.set_status(Status(StatusCode.ERROR, "handler timed out"))
    elif outcome == "cancelled":
        span.set_attribute(ERROR_TYPE, "cancelled")
        span.set_status(
            Status(StatusCode.ERROR, "handler cancelled at the end of the grace period")
        )
    elif outcome == "retry" and isinstance(error, Retry):
        span.set_attribute(RETRY_DELAY, error.delay)


def _error_type(error: BaseException) -> str:
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# -- the client's spans and injection ------------------------------------------------------------


class ClientTracing:
    """The client's side: PRODUCER spans around sends with the context injected into each
    message, and (``trace_calls``) a CLIENT span ``SQS.{Operation}`` around every other call."""

    def __init__(self, endpoint: str, region: str, *, trace_calls: bool) -> None:
        self.trace_calls = trace_calls
        self._common: dict[str, Any] = {CLOUD_REGION: region}
        try:
            url = httpx.URL(endpoint)
        except Exception:  # pragma: no cover - the endpoint was checked when the client opened
            url = None
        if url is not None and url.host:
            self._common[SERVER_ADDRESS] = url.host
            port = url.port or (443 if url.scheme == "https" else 80)
            self._common[SERVER_PORT] = port

    @contextmanager
    def producer(
        self, operation: str, queue_url: str, entries: Sequence[MutableMapping[str, Any]]
    ) -> Iterator[Span | None]:
        """A PRODUCER span ``send {queue}`` around a send, whose context goes into every entry
        (their ``MessageAttributes`` in botocore's form). Without an SDK: no span, and the
        current context, if there is a valid one, goes into the entries (passed through).
        Yields the span, or ``None``."""
        tracer = get_tracer()
        if tracer is None:
            _pass_on(entries)
            yield None
            return
        name = queue_name(queue_url)
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: SYSTEM,
            MESSAGING_OPERATION_TYPE: "send",
            MESSAGING_OPERATION_NAME: "send",
            MESSAGING_DESTINATION_NAME: name,
            AWS_SQS_QUEUE_URL: queue_url,
            RPC_SYSTEM: "aws-api",
            RPC_SERVICE: "SQS",
            RPC_METHOD: operation,
            **self._common,
        }
        if operation == "SendMessageBatch":
            attributes[MESSAGING_BATCH_MESSAGE_COUNT] = len(entries)
        span = tracer.start_span(f"send {name}", kind=SpanKind.PRODUCER, attributes=attributes)
        with _current(span) as ctx:
            if span.get_span_context().is_valid:
                inject(entries, ctx)
            yield span

    @staticmethod
    def entries_failed(span: Span, failed: Sequence[BatchEntryError], total: int) -> None:
        """A batch send answered with failed entries: the span says how many, and is an error
        (those messages were not sent)."""
        span.set_attribute(FAILED_COUNT, len(failed))
        span.set_attribute(ERROR_TYPE, failed[0].code or "partial_failure")
        span.set_status(Status(StatusCode.ERROR, f"{len(failed)} of {total} entries failed"))

    @contextmanager
    def call(self, operation: str, params: Mapping[str, Any]) -> Iterator[None]:
        """A CLIENT span ``SQS.{operation}`` around one call (with its retries)."""
        tracer = get_tracer()
        if tracer is None:
            yield
            return
        attributes: dict[str, Any] = {
            RPC_SYSTEM: "aws-api",
            RPC_SERVICE: "SQS",
            RPC_METHOD: operation,
            **self._common,
        }
        queue_url = params.get("QueueUrl")
        if isinstance(queue_url, str):
            attributes[AWS_SQS_QUEUE_URL] = queue_url
        span = tracer.start_span(f"SQS.{operation}", kind=SpanKind.CLIENT, attributes=attributes)
        with _current(span):
            yield


@contextmanager
def _current(span: Span) -> Iterator[Context]:
    """``span`` current for the block and ended after it; an error leaving the block is recorded
    on it (a cancellation is not an error of the call: it ends the span unmarked)."""
    ctx = trace.set_span_in_context(span)
    token = otel_context.attach(ctx)
    try:
        yield ctx
    except Exception as exc:
        if span.is_recording():
            span.record_exception(exc)
            code = getattr(exc, "code", None)
            span.set_attribute(ERROR_TYPE, code if isinstance(code, str) else _error_type(exc))
            request_id = getattr(exc, "request_id", None)
            if isinstance(request_id, str):
                span.set_attribute(AWS_REQUEST_ID, request_id)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


# SQS's largest message: its body and its attributes (names, types and values), in bytes.
MAX_MESSAGE_SIZE = 1_048_576


def _message_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as SQS counts it (what it can tell from the parameters)."""

    def size(value: object) -> int:
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, (bytes, bytearray)):
            return len(value)
        return 0

    total = size(entry.get("MessageBody"))
    for name, value in (entry.get("MessageAttributes") or {}).items():
        total += size(name)
        if isinstance(value, Mapping):
            total += size(value.get("DataType"))
            total += size(value.get("StringValue")) + size(value.get("BinaryValue"))
    return total


def inject(entries: Sequence[MutableMapping[str, Any]], ctx: Context | None) -> None:
    """Add the context's fields (global propagator) to each entry's ``MessageAttributes`` as
    String attributes. An entry that already has one of those attributes (any case: the
    sender's own context, left as it is) or that would go beyond 10 attributes is left
    unchanged (logged at DEBUG), as is one they would push past SQS's size limit."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    fields = {
        name: value
        for name, value in carrier.items()
        if isinstance(value, str)
        and value
        and _ATTRIBUTE_NAME.fullmatch(name)
        and not _RESERVED_PREFIX.match(name)
    }
    if not fields:
        return
    added = sum(len(n.encode()) + len("String") + len(v.encode()) for n, v in fields.items())
    for entry in entries:
        size = _message_size(entry)
        if size + added > MAX_MESSAGE_SIZE:
            log.debug(
                "not injecting the trace context: the message is %d bytes, %d more would pass "
                "SQS's limit of %d",
                size,
                added,
                MAX_MESSAGE_SIZE,
            )
            continue
        attributes = entry.get("MessageAttributes")
        if attributes:
            taken = {name.lower() for name in attributes}
            clash = sorted(name for name in fields if name.lower() in taken)
            if clash:
                log.debug(
                    "not injecting the trace context: the message has its own %s",
                    ", ".join(clash),
                )
                continue
            if len(attributes) + len(fields) > MAX_ATTRIBUTES:
                log.debug(
                    "not injecting the trace context: the message has %d attribute(s), "
                    "%d more would pass SQS's limit of %d",
                    len(attributes),
                    len(fields),
                    MAX_ATTRIBUTES,
                )
                continue
            attributes = dict(attributes)
        else:
            attributes = {}
        for name, value in fields.items():
            attributes[name] = {"DataType": "String", "StringValue": value}
        entry["MessageAttributes"] = attributes


# -- what the consumer and the client build ------------------------------------------------------


def consumer_middleware() -> Middleware | None:
    """The middleware every consumer puts outermost, or ``None`` without ``opentelemetry``."""
    return TracingMiddleware().function if AVAILABLE else None


def client_tracing(endpoint: str, region: str, *, trace_calls: bool) -> ClientTracing | None:
    """The client's tracing, or ``None`` without ``opentelemetry``."""
    return ClientTracing(endpoint, region, trace_calls=trace_calls) if AVAILABLE else None
