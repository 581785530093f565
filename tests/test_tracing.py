"""OpenTelemetry tracing across the queue (README, "Tracing"): a trace started where a message is
sent continues in the handler that takes it (W3C ``traceparent`` attributes, or the
``AWSTraceHeader`` system attribute), every outcome marks the consumer's span, malformed headers
are ignored, injection respects the sender's attributes and SQS's limit, and without
``opentelemetry`` nothing changes.

On ``FakeSQS`` and ``MockClock``. Spans go to the SDK's in-memory exporter through a tracer
provider set for one test at a time (the ``spans`` fixture), never left behind for other tests:
without it, the API has no SDK, as in a program that configured none.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

import trio_sqs
from trio_sqs import ConfigurationError, Message, MessageAttributeValue, Retry, SendEntry
from trio_sqs._message import md5_of_message_attributes
from trio_sqs.testing import FakeSQS, make_message, open_fake_client
from trio_sqs.tracing import TracingMiddleware, extract_context

XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
XRAY_TRACE_ID = 0x5759E988BD862E3FE1BE46A994272793
XRAY_SPAN_ID = 0x53995C3F42CD8AD8
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def set_global_provider(provider: trace.TracerProvider | None) -> None:
    # The API lets a program set its provider once; tests swap it as OpenTelemetry's own test
    # utilities do (opentelemetry.test.globals_test), through its private global.
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider with an in-memory exporter, global for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_global_provider(provider)
    try:
        yield exporter
    finally:
        set_global_provider(None)
        provider.shutdown()


@pytest.fixture(autouse=True)
def no_sdk_left_behind() -> Iterator[None]:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    yield
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def finished(exporter: InMemorySpanExporter, kind: SpanKind | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if kind is None or s.kind == kind]


def only(exporter: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    (span,) = finished(exporter, kind)
    return span


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def consume(
    client: trio_sqs.SQSClient,
    queue_url: str,
    handler: Callable[[Any], Awaitable[Any]],
    *,
    invocations: int = 1,
    stop_after: float | None = None,
    **options: Any,
) -> trio_sqs.ConsumerStatistics:
    """Run a consumer until ``invocations`` handler calls have ended (or stop it ``stop_after``
    seconds in), then stop it; its statistics."""
    ended = 0
    all_ended = trio.Event()

    async def counting(invocation: trio_sqs.Invocation, call_next: Any) -> None:
        nonlocal ended
        try:
            await call_next()
        finally:
            ended += 1
            if ended == invocations:
                all_ended.set()

    async with trio_sqs.open_consumer(
        queue_url, handler, client=client, middleware=[counting], **options
    ) as consumer:
        if stop_after is not None:
            await trio.sleep(stop_after)
            consumer.stop()
        await all_ended.wait()
    return consumer.statistics()


async def noop(message: Message) -> None:
    pass


# -- one trace from the producer to the handler ----------------------------------------------------


async def test_a_trace_started_at_send_message_continues_in_the_handler(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        sent = await fake_sqs_client.send_message(fake_queue_url, "hi")
    seen: list[trace.Span] = []
    received: list[Message] = []

    async def handler(message: Message) -> None:
        seen.append(trace.get_current_span())
        received.append(message)

    stats = await consume(fake_sqs_client, fake_queue_url, handler)
    assert (stats.completed, stats.deleted, stats.corrupt) == (1, 1, 0)

    producer = only(spans, SpanKind.PRODUCER)
    consumer = only(spans, SpanKind.CONSUMER)
    trace_id = request.get_span_context().trace_id
    assert producer.name == "send " + fake_queue_url.rsplit("/", 1)[1]
    assert producer.context.trace_id == trace_id
    assert parent_id(producer) == request.get_span_context().span_id
    assert dict(producer.attributes or {}) == {
        "messaging.system": "aws_sqs",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": fake_queue_url.rsplit("/", 1)[1],
        "messaging.message.id": sent.message_id,
        "aws.sqs.queue.url": fake_queue_url,
        "rpc.system": "aws-api",
        "rpc.service": "SQS",
        "rpc.method": "SendMessage",
        "cloud.region": fake_sqs.region,
        "server.address": "sqs.fake.invalid",
        "server.port": 80,
    }
    # The handler's span: a child of the PRODUCER span, across the queue, current in the handler.
    assert consumer.name == "process " + fake_queue_url.rsplit("/", 1)[1]
    assert consumer.context.trace_id == trace_id
    assert parent_id(consumer) == producer.context.span_id
    assert consumer.parent is not None and consumer.parent.is_remote
    assert seen[0].get_span_context() == consumer.context
    assert dict(consumer.attributes or {}) == {
        "messaging.system": "aws_sqs",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": fake_queue_url.rsplit("/", 1)[1],
        "messaging.message.id": sent.message_id,
        "aws.sqs.queue.url": fake_queue_url,
        "aws.sqs.message.receive_count": 1,
        "trio_sqs.outcome": "ok",
    }
    assert consumer.status.status_code == StatusCode.UNSET
    # What was sent: the PRODUCER span's context, and a digest of the attributes SQS agreed with
    # (the message passed the client's MD5 checks on receive: not counted corrupt above).
    (call,) = [c for c in fake_sqs.calls if c.operation == "SendMessage"]
    attributes = call.params["MessageAttributes"]
    assert set(attributes) == {"traceparent"}
    span_id = f"{producer.context.span_id:016x}"
    assert attributes["traceparent"]["StringValue"].split("-")[1:3] == [f"{trace_id:032x}", span_id]
    injected = MessageAttributeValue.string(attributes["traceparent"]["StringValue"])
    assert dict(received[0].message_attributes) == {"traceparent": injected}
    assert received[0].md5_of_message_attributes == md5_of_message_attributes(
        {"traceparent": injected}
    )


async def test_a_trace_started_at_send_message_batch_continues_in_each_handler(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):
        sent, outcome = await fake_sqs_client.send_message_batch(
            fake_queue_url,
            [
                SendEntry(body="a"),
                SendEntry(body="b", message_attributes={"k": MessageAttributeValue.string("v")}),
                SendEntry(body="c"),
            ],
        )
    assert outcome.ok
    stats = await consume(fake_sqs_client, fake_queue_url, noop, invocations=3)
    assert (stats.completed, stats.corrupt) == (3, 0)

    producer = only(spans, SpanKind.PRODUCER)
    assert producer.attributes is not None
    assert producer.attributes["messaging.batch.message_count"] == 3
    assert producer.attributes["rpc.method"] == "SendMessageBatch"
    assert "messaging.message.id" not in producer.attributes
    consumers = finished(spans, SpanKind.CONSUMER)
    assert sorted(
        s.attributes["messaging.message.id"] for s in consumers if s.attributes
    ) == sorted(r.message_id for r in sent)
    for span in consumers:
        assert span.context.trace_id == producer.context.trace_id
        assert parent_id(span) == producer.context.span_id
    (call,) = [c for c in fake_sqs.calls if c.operation == "SendMessageBatch"]
    assert [set(e["MessageAttributes"]) for e in call.params["Entries"]] == [
        {"traceparent"},
        {"k", "traceparent"},
        {"traceparent"},
    ]


async def test_a_trace_continues_from_the_aws_trace_header_alone(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    # As an X-Ray-instrumented producer sends: SQS keeps the header as the AWSTraceHeader system
    # attribute. client.call() is not traced: no traceparent goes with it.
    await fake_sqs_client.call(
        "SendMessage",
        {
            "QueueUrl": fake_queue_url,
            "MessageBody": "from x-ray",
            "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}
            },
        },
    )
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    await consume(fake_sqs_client, fake_queue_url, handler)
    assert received[0].aws_trace_header == XRAY
    assert not received[0].message_attributes
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.context.trace_id == XRAY_TRACE_ID
    assert parent_id(consumer) == XRAY_SPAN_ID
    assert consumer.parent is not None and consumer.parent.trace_flags.sampled


async def test_traceparent_wins_over_the_aws_trace_header_and_tracestate_and_baggage_pass(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.call(
        "SendMessage",
        {
            "QueueUrl": fake_queue_url,
            "MessageBody": "both",
            "MessageAttributes": {
                "traceparent": {"DataType": "String", "StringValue": TRACEPARENT},
                "tracestate": {"DataType": "String", "StringValue": "vendor=abc"},
                "baggage": {"DataType": "String", "StringValue": "tenant=t1"},
            },
            "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}
            },
        },
    )
    tenants: list[object] = []

    async def handler(message: Message) -> None:
        tenants.append(baggage.get_baggage("tenant"))

    await consume(fake_sqs_client, fake_queue_url, handler)
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert parent_id(consumer) == 0xB7AD6B7169203331
    assert consumer.context.trace_state == TraceState([("vendor", "abc")])
    assert tenants == ["t1"]


async def test_a_batch_handler_gets_one_span_linked_to_every_message_s_context(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    tracer = trace.get_tracer("test")
    producers = {}
    for body in ("a", "b", "c"):
        with tracer.start_as_current_span(f"request {body}"):  # three traces
            sent = await fake_sqs_client.send_message(fake_queue_url, body)
        producers[sent.message_id] = finished(spans, SpanKind.PRODUCER)[-1]
    await fake_sqs_client.send_message(fake_queue_url, "untraced")  # outside any span: a root
    producers_before = len(finished(spans, SpanKind.PRODUCER))
    # A message without any context: no link for it.
    await fake_sqs_client.call("SendMessage", {"QueueUrl": fake_queue_url, "MessageBody": "bare"})
    batches: list[list[Message]] = []

    async def handler(messages: list[Message]) -> None:
        batches.append(messages)

    outer = tracer.start_span("consumer's owner")
    with trace.use_span(outer, end_on_exit=True):
        await consume(fake_sqs_client, fake_queue_url, handler, batch=True)
    assert [len(b) for b in batches] == [5]
    assert len(finished(spans, SpanKind.PRODUCER)) == producers_before
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.batch.message_count"] == 5
    assert "messaging.message.id" not in consumer.attributes
    # A root: not a child of a message's context (those are links), nor of the span around the
    # code that opened the consumer (every batch of its life would join that one trace).
    assert consumer.parent is None
    assert consumer.context.trace_id != outer.get_span_context().trace_id
    linked = {
        link.attributes["messaging.message.id"]: link.context
        for link in consumer.links
        if link.attributes
    }
    assert len(consumer.links) == 4  # a, b, c and the untraced send's root PRODUCER span
    for message_id, producer in producers.items():
        assert linked[message_id].trace_id == producer.context.trace_id
        assert linked[message_id].span_id == producer.context.span_id
    assert len({c.trace_id for c in linked.values()}) == 4


# -- outcomes ------------------------------------------------------------------------------------


async def test_every_outcome_marks_the_consumer_span(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    async def failing(message: Message) -> None:
        raise ValueError("boom")

    async def retrying(message: Message) -> None:
        raise Retry(7)

    async def slow(message: Message) -> None:
        await trio.sleep(60)

    cases: list[tuple[str, Callable[[Message], Awaitable[None]], dict[str, Any]]] = [
        ("ok", noop, {}),
        ("failed", failing, {}),
        ("retry", retrying, {}),
        ("timed_out", slow, {"handler_timeout": 2}),
        ("cancelled", slow, {"stop_after": 1, "grace_period": 3}),
    ]
    outcomes: dict[str, ReadableSpan] = {}
    for outcome, handler, options in cases:
        url = await fake_sqs_client.create_queue(f"outcome-{outcome.replace('_', '-')}")
        await fake_sqs_client.send_message(url, outcome)
        spans.clear()
        await consume(fake_sqs_client, url, handler, **options)
        outcomes[outcome] = only(spans, SpanKind.CONSUMER)

    def summary(span: ReadableSpan) -> tuple[object, ...]:
        attributes = span.attributes or {}
        return (
            attributes["trio_sqs.outcome"],
            span.status.status_code,
            attributes.get("error.type"),
            [e.name for e in span.events],
        )

    assert {k: summary(v) for k, v in outcomes.items()} == {
        "ok": ("ok", StatusCode.UNSET, None, []),
        "failed": ("failed", StatusCode.ERROR, "ValueError", ["exception"]),
        "retry": ("retry", StatusCode.UNSET, None, []),
        "timed_out": ("timed_out", StatusCode.ERROR, "timeout", []),
        "cancelled": ("cancelled", StatusCode.ERROR, "cancelled", []),
    }
    failed = outcomes["failed"]
    assert failed.status.description == "ValueError: boom"
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.message"] == "boom"
    assert outcomes["retry"].attributes is not None
    assert outcomes["retry"].attributes["trio_sqs.retry.delay"] == 7


async def test_a_batch_handler_reporting_failures_marks_its_span_failed(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for body in ("a", "bad", "c"):
        await fake_sqs_client.send_message(fake_queue_url, body)

    async def handler(messages: list[Message]) -> list[Message]:
        return [m for m in messages if m.body == "bad"]

    stats = await consume(fake_sqs_client, fake_queue_url, handler, batch=True)
    assert (stats.completed, stats.failed) == (2, 1)
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.attributes is not None
    assert consumer.attributes["trio_sqs.outcome"] == "failed"
    assert consumer.attributes["trio_sqs.failed_message_count"] == 1
    assert consumer.attributes["error.type"] == "partial_failure"
    assert (consumer.status.status_code, consumer.status.description) == (
        StatusCode.ERROR,
        "1 of 3 message(s) failed",
    )
    assert len(consumer.links) == 3


# -- malformed headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (XRAY, (XRAY_TRACE_ID, XRAY_SPAN_ID, True)),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0", "unsampled"),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8", "unsampled"),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=?", "unsampled"),
        # X-Ray's other fields are no reason to drop the context; nor spaces, nor key case.
        (XRAY + ";Lineage=a87bd80c:1|68fd508a:5;Self=1-67891233-abcdef012345678912345678", "ok"),
        (" root=1-5759e988-bd862e3fe1be46a994272793 ; PARENT=53995c3f42cd8ad8 ; sampled=1 ;", "ok"),
        ("Root=1-5759E988-BD862E3FE1BE46A994272793;Parent=53995C3F42CD8AD8;Sampled=1", "ok"),
        ("Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1", "ok"),
        # Malformed: ignored.
        ("garbage", None),
        ("", None),
        (";;;", None),
        ("Root=1-5759e988-bd862e3fe1be46a994272793", None),  # no Parent
        ("Parent=53995c3f42cd8ad8;Sampled=1", None),  # no Root
        ("Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8", None),  # truncated
        ("Root=1-5759e98-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8", None),  # short epoch
        ("Root=1-5759e988-bd862e3fe1be46a9942727931;Parent=53995c3f42cd8ad8", None),  # too long
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad", None),  # short parent
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8a", None),
        ("Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8", None),  # zero trace
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000", None),  # zero span
        ("Root=1-5759e988-bd862e3fe1be46a99427279g;Parent=53995c3f42cd8ad8", None),  # non-hex
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8adz", None),
        ("Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8", None),  # version
        ("Root=5759e988bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8", None),  # W3C-style id
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=yes", None),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272794", None),
        (XRAY + ";Parent=53995c3f42cd8ad9", None),  # twice: which one?
        (XRAY + ";junk", None),  # a field without "="
        ("Root=1-5759e988-bd862e3fe1be46a994272793;=53995c3f42cd8ad8", None),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=" + "5" * 2000, None),
    ],
)
def test_aws_trace_header_conversion(header: str, expected: object) -> None:
    from trio_sqs._tracing import span_context_from_aws_trace_header

    span_context = span_context_from_aws_trace_header(header)
    if expected is None:
        assert span_context is None
        return
    assert span_context is not None and span_context.is_remote and span_context.is_valid
    assert (span_context.trace_id, span_context.span_id) == (XRAY_TRACE_ID, XRAY_SPAN_ID)
    if expected == "unsampled":
        assert not span_context.trace_flags.sampled
    else:
        assert span_context.trace_flags.sampled


def context_of(message: Message) -> SpanContext:
    return trace.get_current_span(extract_context(message)).get_span_context()


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # truncated
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",  # non-hex
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case: W3C says no
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # extra field, v00
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        TRACEPARENT + "x" * 600,
    ],
)
def test_a_malformed_traceparent_is_ignored_and_logged_at_debug(
    traceparent: str, caplog: pytest.LogCaptureFixture
) -> None:
    attributes = {"traceparent": traceparent} if traceparent else {"traceparent": " "}
    with caplog.at_level(logging.DEBUG, logger="trio_sqs.tracing"):
        assert not context_of(make_message("x", message_attributes=attributes)).is_valid
    said = [r for r in caplog.records if r.name == "trio_sqs.tracing"]
    assert said and all(r.levelno == logging.DEBUG for r in said)
    assert any(
        "malformed trace context" in r.getMessage()  # read, and found wanting
        or "for its trace context" in r.getMessage()  # too long to be read
        for r in said
    )
    # ... and the AWSTraceHeader is read instead, when there is one.
    message = make_message("x", message_attributes=attributes, attributes={"AWSTraceHeader": XRAY})
    assert context_of(message).trace_id == XRAY_TRACE_ID


def test_extract_context_keys_types_and_the_aws_trace_header_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Attribute names matched whatever their case (a sender's "TraceParent").
    found = context_of(make_message("x", message_attributes={"TraceParent": TRACEPARENT}))
    assert (found.trace_id, found.span_id, found.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
    )
    # A custom String type counts; a Binary or Number attribute of that name does not.
    custom = MessageAttributeValue("String.w3c", string_value=TRACEPARENT)
    assert context_of(make_message("x", message_attributes={"traceparent": custom})).is_valid
    binary = MessageAttributeValue.binary(TRACEPARENT.encode())
    assert not context_of(make_message("x", message_attributes={"traceparent": binary})).is_valid
    # No context at all: an empty one, nothing logged.
    with caplog.at_level(logging.DEBUG, logger="trio_sqs.tracing"):
        assert not context_of(make_message("x")).is_valid
        assert not context_of(make_message("x", message_attributes={"other": "v"})).is_valid
    assert not [r for r in caplog.records if r.name == "trio_sqs.tracing"]
    # A malformed AWSTraceHeader: ignored, logged at DEBUG.
    with caplog.at_level(logging.DEBUG, logger="trio_sqs.tracing"):
        bad = make_message("x", attributes={"AWSTraceHeader": "Root=1-nope"})
        assert not context_of(bad).is_valid
    assert [r.levelno for r in caplog.records if "AWSTraceHeader" in r.getMessage()] == [
        logging.DEBUG
    ]


async def test_a_message_with_malformed_headers_is_handled_in_a_span_of_its_own(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.call(
        "SendMessage",
        {
            "QueueUrl": fake_queue_url,
            "MessageBody": "bad headers",
            "MessageAttributes": {"traceparent": {"DataType": "String", "StringValue": "00-x"}},
            "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-x;Parent=y"}
            },
        },
    )
    stats = await consume(fake_sqs_client, fake_queue_url, noop)
    assert (stats.completed, stats.failed) == (1, 0)
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.parent is None  # a new trace
    assert consumer.attributes is not None and consumer.attributes["trio_sqs.outcome"] == "ok"


# -- injection -----------------------------------------------------------------------------------


async def test_injection_never_overwrites_an_attribute_of_the_sender(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    tracer = trace.get_tracer("test")
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    with tracer.start_as_current_span("request"):
        await fake_sqs_client.send_message(
            fake_queue_url,
            "own context",
            message_attributes={"TraceParent": MessageAttributeValue.string(own)},
        )
    (call,) = [c for c in fake_sqs.calls if c.operation == "SendMessage"]
    assert call.params["MessageAttributes"] == {
        "TraceParent": {"DataType": "String", "StringValue": own}
    }
    await consume(fake_sqs_client, fake_queue_url, noop)
    consumer = only(spans, SpanKind.CONSUMER)
    assert (consumer.context.trace_id, parent_id(consumer)) == (
        0x11111111111111111111111111111111,
        0x2222222222222222,
    )


async def test_a_message_with_ten_attributes_is_sent_unchanged(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ten = {f"a{i}": MessageAttributeValue.string(str(i)) for i in range(10)}
    nine = {f"a{i}": MessageAttributeValue.string(str(i)) for i in range(9)}
    tracer = trace.get_tracer("test")
    with caplog.at_level(logging.DEBUG, logger="trio_sqs.tracing"):
        with tracer.start_as_current_span("request"):
            await fake_sqs_client.send_message(fake_queue_url, "ten", message_attributes=ten)
            await fake_sqs_client.send_message(fake_queue_url, "nine", message_attributes=nine)
            _, outcome = await fake_sqs_client.send_message_batch(
                fake_queue_url,
                [SendEntry(body="ten", message_attributes=ten), SendEntry(body="none")],
            )
    assert outcome.ok
    wire = [
        call.params["MessageAttributes"]
        for call in fake_sqs.calls
        if call.operation == "SendMessage"
    ] + [
        entry.get("MessageAttributes", {})
        for call in fake_sqs.calls
        if call.operation == "SendMessageBatch"
        for entry in call.params["Entries"]
    ]
    assert [sorted(w) for w in wire] == [
        sorted(ten),
        sorted([*nine, "traceparent"]),
        sorted(ten),
        ["traceparent"],
    ]
    assert [r.levelno for r in caplog.records if "pass SQS's limit of 10" in r.getMessage()] == [
        logging.DEBUG,
        logging.DEBUG,
    ]
    # All four arrive and are handled (their digests agree with what was sent).
    stats = await consume(fake_sqs_client, fake_queue_url, noop, invocations=4)
    assert (stats.completed, stats.corrupt) == (4, 0)


async def test_tracestate_is_injected_when_not_empty(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    upstream = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "abc")]),
    )
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(upstream)))
    try:
        await fake_sqs_client.send_message(fake_queue_url, "with state")
    finally:
        otel_context.detach(token)
    (call,) = [c for c in fake_sqs.calls if c.operation == "SendMessage"]
    assert call.params["MessageAttributes"]["tracestate"] == {
        "DataType": "String",
        "StringValue": "vendor=abc",
    }
    await consume(fake_sqs_client, fake_queue_url, noop)
    consumer = only(spans, SpanKind.CONSUMER)
    assert consumer.context.trace_id == upstream.trace_id
    assert consumer.context.trace_state == upstream.trace_state


async def test_a_failed_send_marks_its_producer_span(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    missing = fake_queue_url + "-missing"
    with pytest.raises(trio_sqs.QueueDoesNotExist) as raised:
        await fake_sqs_client.send_message(missing, "nowhere")
    producer = only(spans, SpanKind.PRODUCER)
    assert producer.status.status_code == StatusCode.ERROR
    assert producer.attributes is not None
    assert producer.attributes["error.type"] == raised.value.code
    assert producer.attributes["aws.request_id"] == raised.value.request_id
    assert [e.name for e in producer.events] == ["exception"]
    # A batch whose entries fail (an invalid attribute): the span says how many.
    spans.clear()
    bad = {"": MessageAttributeValue.string("v")}
    sent, outcome = await fake_sqs_client.send_message_batch(
        fake_queue_url, [SendEntry(body="ok"), SendEntry(body="bad", message_attributes=bad)]
    )
    assert (len(sent), len(outcome.failed)) == (1, 1)
    producer = only(spans, SpanKind.PRODUCER)
    assert producer.attributes is not None
    assert producer.attributes["trio_sqs.failed_message_count"] == 1
    assert (producer.status.status_code, producer.status.description) == (
        StatusCode.ERROR,
        "1 of 2 entries failed",
    )


# -- client spans (trace_calls) ------------------------------------------------------------------


async def test_trace_calls_makes_a_client_span_per_call_but_the_sends(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("untraced-calls")
        await client.send_message(url, "m")
    assert finished(spans, SpanKind.CLIENT) == []  # off by default
    async with trio_sqs.open_client(
        region=fake_sqs.region,
        endpoint_url=fake_sqs.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_fips=False,
        use_dualstack=False,
        transport=fake_sqs.transport(),
        trace_calls=True,
    ) as client:
        spans.clear()
        await client.get_queue_attributes(url)
        await client.send_message(url, "m2")
        with pytest.raises(trio_sqs.QueueDoesNotExist) as raised:
            await client.get_queue_url("no-such-queue")
    calls = finished(spans, SpanKind.CLIENT)
    assert [s.name for s in calls] == ["SQS.GetQueueAttributes", "SQS.GetQueueUrl"]
    assert [s.name for s in finished(spans, SpanKind.PRODUCER)] == ["send untraced-calls"]
    attributes = dict(calls[0].attributes or {})
    assert attributes == {
        "rpc.system": "aws-api",
        "rpc.service": "SQS",
        "rpc.method": "GetQueueAttributes",
        "aws.sqs.queue.url": url,
        "cloud.region": fake_sqs.region,
        "server.address": "sqs.fake.invalid",
        "server.port": 80,
    }
    assert calls[0].status.status_code == StatusCode.UNSET
    failed = calls[1]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == raised.value.code
    with pytest.raises(ConfigurationError, match="trace_calls"):
        async with trio_sqs.open_client(region="us-east-1", trace_calls="yes"):  # type: ignore[arg-type]
            pass  # pragma: no cover


# -- turning it off, and no SDK ------------------------------------------------------------------


async def test_tracing_false_makes_no_consumer_span(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "m")
    seen: list[trace.Span] = []

    async def handler(message: Message) -> None:
        seen.append(trace.get_current_span())

    stats = await consume(fake_sqs_client, fake_queue_url, handler, tracing=False)
    assert stats.completed == 1
    assert finished(spans, SpanKind.CONSUMER) == []
    assert not seen[0].get_span_context().is_valid
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigurationError, match="tracing must be True or False"):
            trio_sqs.open_consumer(fake_queue_url, noop, client=fake_sqs_client, tracing=bad)  # type: ignore[call-overload]


async def test_a_tracing_middleware_of_one_s_own_with_its_own_provider(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    await fake_sqs_client.send_message(fake_queue_url, "m")
    order: list[str] = []
    handled = trio.Event()

    async def first(invocation: trio_sqs.Invocation, call_next: Any) -> None:
        order.append("first")
        assert not trace.get_current_span().get_span_context().is_valid
        await call_next()

    async def handler(message: Message) -> None:
        order.append("handler")
        assert trace.get_current_span().get_span_context().is_valid
        handled.set()

    async with trio_sqs.open_consumer(
        fake_queue_url,
        handler,
        client=fake_sqs_client,
        tracing=False,
        middleware=[first, TracingMiddleware(tracer_provider=provider)],
    ):
        await handled.wait()
    # The consumer stopped after its handler was done: the span has ended.
    assert order == ["first", "handler"]
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.CONSUMER
    provider.shutdown()


async def test_without_an_sdk_nothing_is_added_and_a_handled_context_is_passed_on(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    # No SDK, no current span: a send adds nothing (other tests' messages stay as they were).
    await fake_sqs_client.send_message(fake_queue_url, "plain")
    (call,) = [c for c in fake_sqs.calls if c.operation == "SendMessage"]
    assert "MessageAttributes" not in call.params
    # A handled message's context goes on to what its handler sends, as the API's no-op tracer
    # would have it, and nothing else is added.
    downstream = await fake_sqs_client.create_queue("downstream")
    await fake_sqs_client.send_message(
        fake_queue_url,
        "traced upstream",
        message_attributes={"traceparent": MessageAttributeValue.string(TRACEPARENT)},
    )

    async def forward(message: Message) -> None:
        await fake_sqs_client.send_message(downstream, message.body)

    await consume(fake_sqs_client, fake_queue_url, forward, invocations=2)
    forwarded = [
        c.params.get("MessageAttributes")
        for c in fake_sqs.calls
        if c.operation == "SendMessage" and c.params["QueueUrl"] == downstream
    ]
    assert sorted(forwarded, key=str) == sorted(
        [None, {"traceparent": {"DataType": "String", "StringValue": TRACEPARENT}}], key=str
    )


def test_without_opentelemetry_trio_sqs_runs_untraced() -> None:
    """In a subprocess with every ``opentelemetry`` import blocked: ``trio_sqs`` imports, a
    consumer and a client run untraced, and ``trio_sqs.tracing`` says what to install. (Tracing
    is loaded only when a consumer or client is built.)"""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # blocks every opentelemetry import
        import trio, trio.testing
        import trio_sqs
        from trio_sqs.testing import FakeSQS, open_fake_client
        assert "trio_sqs._tracing" not in sys.modules, "imported before a consumer or client"
        try:
            import trio_sqs.tracing
        except ImportError as exc:
            assert "pip install 'trio-sqs[otel]'" in str(exc), exc
        else:
            raise AssertionError("trio_sqs.tracing imported without opentelemetry")
        from trio_sqs import _tracing
        assert _tracing.AVAILABLE is False

        async def main():
            fake = FakeSQS()
            async with open_fake_client(fake) as client:
                assert client._tracing is None
                url = await client.create_queue("q")
                await client.send_message(url, "m")
                handled = trio.Event()

                async def handler(message):
                    handled.set()

                async with trio_sqs.open_consumer(url, handler, client=client) as consumer:
                    assert consumer._middleware == []
                    await handled.wait()
                (call,) = [c for c in fake.calls if c.operation == "SendMessage"]
                assert "MessageAttributes" not in call.params
            print("ok")

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
