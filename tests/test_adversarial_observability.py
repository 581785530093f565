"""What an adversarial review of issue 14 (middleware, tracing, metrics) found, each with its test.

A trio_sqs bug is a strict xfail whose reason gives the exact reproduction; behaviour that held
under attack (and was not tested elsewhere) is a plain test. On ``FakeSQS`` and ``MockClock``;
what the consumer did is read from its statistics and the fake's calls. Tracing tests set an SDK
tracer provider for one test at a time (the ``spans`` fixture) and leave none behind.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import ClassVar

import pytest
import trio
import trio.testing
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import trio_sqs
from trio_sqs import (
    ConfigurationError,
    Invocation,
    Message,
    MessageAttributeValue,
    Retry,
    open_consumer,
)
from trio_sqs.testing import FakeSQS, make_message

CallNext = Callable[[], Awaitable[None]]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


def settle_calls(fake: FakeSQS) -> list[tuple[float, str, list[object]]]:
    """(time, operation, each entry's VisibilityTimeout) of every delete and visibility call."""
    return [
        (call.time, call.operation, [e.get("VisibilityTimeout") for e in call.params["Entries"]])
        for call in fake.calls
        if call.operation in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch")
    ]


class Last:
    """An outermost middleware: records each invocation once it ended; ``done`` after ``n``."""

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.invocations: list[Invocation] = []
        self.done = trio.Event()

    async def __call__(self, invocation: Invocation, call_next: CallNext) -> None:
        try:
            await call_next()
        finally:
            self.invocations.append(invocation)
            if len(self.invocations) >= self.n:
                self.done.set()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider with an in-memory exporter, global for this test only (swapped
    through the API's private global, as OpenTelemetry's own test utilities do)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
        provider.shutdown()


# -- middleware: what holds ------------------------------------------------------------------------


async def test_shutdown_bound_holds_with_a_middleware_that_sleeps_and_swallows_its_cancellation(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """A middleware that sleeps before call_next, swallows the end of grace, then awaits again
    (not shielded): the stop still ends at t0 + grace exactly, the message released once with
    the contract's cover, the handler never run."""
    await fake_sqs_client.send_message(fake_queue_url, "m")
    entered = trio.Event()
    handled = []

    async def stubborn(invocation: Invocation, call_next: CallNext) -> None:
        entered.set()
        try:
            await trio.sleep(100)
            await call_next()
        finally:
            try:
                await trio.sleep(100)
            except trio.Cancelled:
                pass
            await trio.sleep(100)  # cancelled again at once: the deadline has passed

    async def handler(message: Message) -> None:
        handled.append(message)

    async with open_consumer(
        fake_queue_url,
        handler,
        client=fake_sqs_client,
        middleware=[stubborn],
        grace_period=2,
        flush_timeout=3,
    ) as consumer:
        await entered.wait()
        t0 = trio.current_time()
        consumer.stop()
    assert trio.current_time() - t0 == 2.0
    stats = consumer.statistics()
    assert (stats.cancelled_at_grace, stats.released, stats.deleted, stats.unflushed) == (
        1,
        1,
        0,
        0,
    )
    ((when, operation, visibility),) = settle_calls(fake_sqs)
    assert (when - t0, operation) == (2.0, "ChangeMessageVisibilityBatch")
    # No poll after t0. Whether a second long poll (20 s) went out at 0 depends on Trio's
    # scheduling; if it did, it was aborted, and SQS may run it until 20 + 1 s: the release
    # covers that; if not, no poll of ours can take the message and 0 is right.
    polls = [c.time for c in fake_sqs.calls if c.operation == "ReceiveMessage"]
    assert set(polls) == {0.0} and len(polls) == 1 + stats.aborted_polls
    assert visibility == ([21 - 2] if stats.aborted_polls else [0])
    assert handled == []


async def test_a_middleware_calling_call_next_again_after_a_failure_is_one_settle(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """call_next twice (a retry in the middleware): the second call's success is the outcome;
    the message is deleted once and never released; the invocation carries no stale error."""
    await fake_sqs_client.send_message(fake_queue_url, "m")
    calls = 0

    async def retry_once(invocation: Invocation, call_next: CallNext) -> None:
        try:
            await call_next()
        except ValueError:
            await call_next()

    async def flaky(message: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first try")

    last = Last()
    async with open_consumer(
        fake_queue_url, flaky, client=fake_sqs_client, middleware=[last, retry_once]
    ) as consumer:
        await last.done.wait()
    (invocation,) = last.invocations
    assert (invocation.outcome, invocation.error, invocation.failed) == ("ok", None, frozenset())
    stats = consumer.statistics()
    assert (calls, stats.completed, stats.failed, stats.deleted, stats.released) == (2, 1, 0, 1, 0)
    assert [op for _, op, _ in settle_calls(fake_sqs)] == ["DeleteMessageBatch"]


class _AsyncCallable:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(self, invocation: Invocation, call_next: CallNext) -> None:
        self.log.append("object")
        await call_next()


class _ContextManagerClass:
    """A class whose instances are async context managers: ``mw(invocation)`` builds one."""

    log: ClassVar[list[str]] = []

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation

    async def __aenter__(self) -> None:
        self.log.append("class")

    async def __aexit__(self, *exc: object) -> None:
        self.log.append(f"class out {self.invocation.outcome}")


async def _tagged(log: list[str], tag: str, invocation: Invocation, call_next: CallNext) -> None:
    log.append(tag)
    await call_next()


async def test_middleware_as_partial_async_callable_object_and_context_manager_class(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    log: ClassVar[list[str]] = []
    _ContextManagerClass.log = log
    await fake_sqs_client.send_message(fake_queue_url, "m")

    async def handler(message: Message) -> None:
        log.append("handler")

    last = Last()
    async with open_consumer(
        fake_queue_url,
        handler,
        client=fake_sqs_client,
        middleware=[
            last,
            functools.partial(_tagged, log, "partial"),
            _AsyncCallable(log),
            _ContextManagerClass,
        ],
    ) as consumer:
        await last.done.wait()
    assert log == ["partial", "object", "class", "handler", "class out ok"]
    assert consumer.statistics().deleted == 1


# -- middleware: what broke ------------------------------------------------------------------------


async def test_a_middleware_s_own_time_out_is_reported_one_way(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "m")

    async def own_timeout(invocation: Invocation, call_next: CallNext) -> None:
        with trio.move_on_after(1):
            await call_next()

    async def slow(message: Message) -> None:
        await trio.sleep(60)

    last = Last()
    async with open_consumer(
        fake_queue_url, slow, client=fake_sqs_client, middleware=[last, own_timeout]
    ) as consumer:
        await last.done.wait()
    (invocation,) = last.invocations
    stats = consumer.statistics()
    counted = {"failed": stats.failed, "timed_out": stats.timed_out}
    assert invocation.outcome in counted and counted[invocation.outcome] == 1


async def test_an_undecorated_async_generator_middleware_is_refused_before_any_io(
    fake_sqs: FakeSQS,
) -> None:
    async def forgot_the_decorator(invocation: Invocation) -> AsyncIterator[None]:
        yield

    async def handler(message: Message) -> None:
        pass

    with pytest.raises(ConfigurationError, match="asynccontextmanager"):
        open_consumer("q", handler, middleware=[forgot_the_decorator])
    assert fake_sqs.calls == []


async def test_a_stray_cancelled_from_a_middleware_is_a_failure_not_a_silent_stop(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Cancelled a middleware (or handler) raises outside the scope that made it (caught in
    ``with CancelScope() as cs: cs.cancel(); await sleep(1)``, re-raised after the block) stopped
    the consumer silently: run_consumer returned None at once, nothing logged above INFO, the
    queue unconsumed. The handler's scope is shielded and absorbs its own cancellations, so such
    a Cancelled is a bug in the handler or middleware: handled as a failure, logged, and the
    consumer goes on."""
    await fake_sqs_client.send_message(fake_queue_url, "m")

    async def leaks_a_cancelled(invocation: Invocation, call_next: CallNext) -> None:
        saved: BaseException | None = None
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                saved = exc
                raise
        assert saved is not None
        raise saved

    async def handler(message: Message) -> None:
        pass

    outcomes: list[str | None] = []

    async def outer(invocation: Invocation, call_next: CallNext) -> None:
        try:
            await call_next()
        finally:
            outcomes.append(invocation.outcome)

    with caplog.at_level(logging.WARNING, logger="trio_sqs"):
        async with open_consumer(
            fake_queue_url,
            handler,
            client=fake_sqs_client,
            middleware=[outer, leaks_a_cancelled],
        ) as consumer:
            # Received, failed, released for the failure backoff, received again...
            await trio.sleep(2.5)
            stats = consumer.statistics()
    assert stats.state == "running"  # it went on
    assert stats.failed == stats.received >= 2 and stats.completed == 0
    assert outcomes == ["failed"] * stats.failed
    settles = settle_calls(fake_sqs)[: stats.failed]
    # The failure backoff: 1 s, doubling with each receive.
    assert [(op, visibility) for _, op, visibility in settles] == [
        ("ChangeMessageVisibilityBatch", [2**i]) for i in range(stats.failed)
    ]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "handler raised a trio.Cancelled" in errors[0].getMessage()


async def test_a_keyboard_interrupt_in_a_middleware_is_still_timed(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "m")

    async def interrupt(invocation: Invocation, call_next: CallNext) -> None:
        await call_next()
        raise KeyboardInterrupt

    async def handler(message: Message) -> None:
        await trio.sleep(1)

    with pytest.raises(KeyboardInterrupt):
        async with open_consumer(
            fake_queue_url, handler, client=fake_sqs_client, middleware=[interrupt]
        ) as consumer:
            await consumer.wait_stopped()
    stats = consumer.statistics()
    # What holds: the consumer stopped, the message went back, nothing deleted.
    assert (stats.state, stats.released, stats.deleted) == ("stopped", 1, 0)
    # What does not: the invocation is not in the duration histogram.
    assert stats.handler_duration.count == 1


# -- tracing: what holds ---------------------------------------------------------------------------


async def _forward_two(
    fake: FakeSQS, client: trio_sqs.SQSClient, queue_url: str, *, leak: bool
) -> dict[str, object]:
    """One worker task (concurrency=1): a message carrying a traceparent, then one carrying
    none, each forwarded to another queue by its handler; what each forward carried. With
    ``leak``, the first handler also attaches a context of its own and never detaches it."""
    downstream = await client.create_queue(f"downstream-{leak}")
    await client.send_message(
        queue_url,
        "traced",
        message_attributes={"traceparent": MessageAttributeValue.string(TRACEPARENT)},
    )
    await client.send_message(queue_url, "plain")
    leaked = SpanContext(0x1111, 0x2222, is_remote=True, trace_flags=TraceFlags(1))

    async def forward(message: Message) -> None:
        await client.send_message(downstream, message.body)
        if leak and message.body == "traced":
            otel_context.attach(trace.set_span_in_context(NonRecordingSpan(leaked)))

    last = Last(2)
    async with open_consumer(queue_url, forward, client=client, middleware=[last], concurrency=1):
        await last.done.wait()
    return {
        c.params["MessageBody"]: c.params.get("MessageAttributes")
        for c in fake.calls
        if c.operation == "SendMessage" and c.params["QueueUrl"] == downstream
    }


async def test_a_handled_message_s_context_does_not_leak_into_the_next_invocation_of_its_worker(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """No SDK: the handled message remembered for the first invocation is forgotten for the
    second, in the same worker task."""
    forwarded = await _forward_two(fake_sqs, fake_sqs_client, fake_queue_url, leak=False)
    assert forwarded == {
        "traced": {"traceparent": {"DataType": "String", "StringValue": TRACEPARENT}},
        "plain": None,
    }


async def test_a_context_a_handler_leaks_does_not_reach_the_next_invocation_without_an_sdk(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    forwarded = await _forward_two(fake_sqs, fake_sqs_client, fake_queue_url, leak=True)
    assert forwarded["plain"] is None


async def test_with_an_sdk_a_context_a_handler_leaks_is_undone_after_its_invocation(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    forwarded = await _forward_two(fake_sqs, fake_sqs_client, fake_queue_url, leak=True)
    plain = forwarded["plain"]
    assert isinstance(plain, dict)
    carried = plain["traceparent"]["StringValue"]
    assert "0000000000001111" not in carried and TRACE_ID.to_bytes(16).hex() not in carried


async def test_with_an_sdk_each_invocation_of_one_worker_is_its_own_trace(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """SDK configured, one worker task: a message carrying a trace then one carrying none. The
    second's span is a new root (not a child of the first's), and what its handler sends
    carries the second's span, not the first's."""
    downstream = await fake_sqs_client.create_queue("sdk-downstream")
    await fake_sqs_client.send_message(
        fake_queue_url,
        "traced",
        message_attributes={"traceparent": MessageAttributeValue.string(TRACEPARENT)},
    )
    # A traceparent of its own (malformed) keeps the PRODUCER span's out of it: it carries none.
    await fake_sqs_client.send_message(
        fake_queue_url,
        "plain",
        message_attributes={"traceparent": MessageAttributeValue.string("not a traceparent")},
    )

    async def forward(message: Message) -> None:
        await fake_sqs_client.send_message(downstream, message.body)

    last = Last(2)
    async with open_consumer(
        fake_queue_url, forward, client=fake_sqs_client, middleware=[last], concurrency=1
    ):
        await last.done.wait()
    process = {
        s.attributes["messaging.message.id"]: s  # type: ignore[index]
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.CONSUMER
    }
    by_body = {i.message.body: process[i.message.message_id] for i in last.invocations}
    assert by_body["traced"].context.trace_id == TRACE_ID
    assert by_body["plain"].parent is None
    assert by_body["plain"].context.trace_id != TRACE_ID
    sends = {
        s.attributes["messaging.message.id"]: s  # type: ignore[index]
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.PRODUCER and s.name == "send sdk-downstream"
    }
    assert {s.parent.span_id for s in sends.values() if s.parent} == {
        by_body["traced"].context.span_id,
        by_body["plain"].context.span_id,
    }


# -- tracing: what broke ---------------------------------------------------------------------------


async def test_injection_never_pushes_a_message_over_the_size_limit(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "x" * 1_048_576)


async def test_a_batch_span_does_not_join_the_trace_of_the_code_that_opened_the_consumer(
    autojump_clock: trio.testing.MockClock,
    spans: InMemorySpanExporter,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for i in range(3):
        await fake_sqs_client.send_message(fake_queue_url, f"m{i}")
    last = Last()

    async def handler(messages: list[Message]) -> None:
        pass

    tracer = trace.get_tracer("adversarial")
    with tracer.start_as_current_span("startup") as startup:
        async with open_consumer(
            fake_queue_url, handler, client=fake_sqs_client, batch=True, middleware=[last]
        ):
            await last.done.wait()
    consumer_spans = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert consumer_spans
    for span in consumer_spans:
        assert span.context.trace_id != startup.get_span_context().trace_id
        assert span.parent is None


async def test_without_an_sdk_a_forward_carries_the_handled_message_s_context_not_the_opener_s(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    downstream = await fake_sqs_client.create_queue("opener-downstream")
    await fake_sqs_client.send_message(
        fake_queue_url,
        "m",
        message_attributes={"traceparent": MessageAttributeValue.string(TRACEPARENT)},
    )

    async def forward(message: Message) -> None:
        await fake_sqs_client.send_message(downstream, "fwd")

    opener = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    last = Last()
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(opener)))
    try:
        async with open_consumer(
            fake_queue_url, forward, client=fake_sqs_client, middleware=[last]
        ):
            await last.done.wait()
    finally:
        otel_context.detach(token)
    (sent,) = [
        c.params.get("MessageAttributes")
        for c in fake_sqs.calls
        if c.operation == "SendMessage" and c.params["QueueUrl"] == downstream
    ]
    assert sent == {"traceparent": {"DataType": "String", "StringValue": TRACEPARENT}}


def test_a_hostile_trace_attribute_is_not_logged_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trio_sqs.tracing import extract_context

    message = make_message(
        "x",
        message_attributes={
            "traceparent": TRACEPARENT,
            "baggage": "k=" + "a" * 100_000,
        },
    )
    with caplog.at_level(logging.DEBUG):
        context = extract_context(message)
    assert trace.get_current_span(context).get_span_context().trace_id == TRACE_ID
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud == [], [(r.name, r.levelname, len(r.getMessage())) for r in loud]


# -- metrics: what holds ---------------------------------------------------------------------------


async def test_counters_histograms_and_the_fake_agree_after_a_run_with_faults(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """30 messages through failures, retries, time-outs, a failed and a corrupt poll, failed,
    dropped (after taking effect), throttled and slow delete and visibility calls: every
    counter agrees with its histogram's count, and the queue ends empty."""
    for i in range(30):
        await fake_sqs_client.send_message(fake_queue_url, str(i % 5))
    faults = fake_sqs.faults
    faults.fail("ReceiveMessage")
    faults.corrupt_md5()
    faults.fail("DeleteMessageBatch", times=2)
    faults.drop("DeleteMessageBatch", after=True)
    faults.throttle("ChangeMessageVisibilityBatch")
    faults.drop("ChangeMessageVisibilityBatch", after=True)
    faults.delay("DeleteMessageBatch", 0.3, times=2)

    async def handler(message: Message) -> None:
        await trio.sleep(0.1)
        first = message.receive_count == 1
        if message.body == "1" and first:
            raise ValueError("fails once")
        if message.body == "2" and first:
            raise Retry(1)
        if message.body == "3" and first:
            await trio.sleep(100)  # times out once

    async with open_consumer(
        fake_queue_url,
        handler,
        client=fake_sqs_client,
        handler_timeout=5,
        concurrency=4,
        wait_time=2,
    ) as consumer:
        await trio.sleep(300)
    s = consumer.statistics()
    assert fake_sqs.queue(fake_queue_url).messages() == []
    assert (s.completed, s.failed, s.retried, s.timed_out, s.corrupt) == (30, 6, 6, 6, 1)
    assert (s.deleted, s.released, s.unflushed, s.delete_failed, s.release_failed) == (
        30, 18, 0, 0, 0,
    )  # fmt: skip
    # Histograms against counters.
    assert s.handler_duration.count == s.completed + s.failed + s.retried + s.timed_out
    assert s.handler_duration.count == s.received
    assert s.poll_duration_empty.count + s.poll_duration_messages.count == s.polls
    assert s.poll_duration_empty.count == s.empty_polls
    assert s.poll_batch_size.count == s.polls and s.poll_batch_size.sum == s.received
    assert s.ack_latency.count == s.deleted
    assert s.release_latency.count == s.released
    assert s.delete_batch_size.sum >= s.deleted
    assert s.delete_call_duration.count <= s.delete_batch_size.count
    assert s.release_call_duration.count <= s.release_batch_size.count
    # ... and against what SQS saw (each attempt of the client's retries is a call there).
    seen = Counter(c.operation for c in fake_sqs.calls)
    assert seen["ReceiveMessage"] == s.polls + s.poll_errors + s.aborted_polls
    assert seen["DeleteMessageBatch"] >= s.delete_batch_size.count
    assert seen["ChangeMessageVisibilityBatch"] == s.release_batch_size.count
    for snapshot in (s.ack_latency, s.release_latency, s.handler_duration, s.poll_batch_size):
        assert sum(snapshot.counts) == snapshot.count


async def test_opentelemetry_metrics_flow_once_an_sdk_is_configured_mid_run(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A consumer built before the program sets its global meter provider (the API's proxy):
    what it measures after ``metrics.set_meter_provider`` reaches the SDK."""
    from opentelemetry import metrics
    from opentelemetry.metrics import _internal as metrics_globals
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.util._once import Once

    from trio_sqs import _otel_metrics

    # A fresh API global for this test (it can be set once per process), and no cached
    # instruments of other tests'.
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER", None)
    monkeypatch.setattr(
        metrics_globals, "_PROXY_METER_PROVIDER", metrics_globals._ProxyMeterProvider()
    )
    monkeypatch.setattr(_otel_metrics, "_provider", None)
    monkeypatch.setattr(_otel_metrics, "_instruments", None)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    await fake_sqs_client.send_message(fake_queue_url, "before")
    last = Last(2)

    async def handler(message: Message) -> None:
        await trio.sleep(0.5 if message.body == "before" else 2.0)

    try:
        async with open_consumer(
            fake_queue_url, handler, client=fake_sqs_client, middleware=[last]
        ):
            await trio.sleep(1)
            metrics.set_meter_provider(provider)
            await fake_sqs_client.send_message(fake_queue_url, "after")
            await last.done.wait()
        points = [
            point
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "messaging.process.duration"
            for point in metric.data.data_points
        ]
    finally:
        provider.shutdown()
    (point,) = points
    assert (point.count, point.sum) == (1, 2.0)  # the invocation after, not the one before


async def test_the_prometheus_collector_with_no_consumer_and_with_a_stopped_one(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from trio_sqs.prometheus import ConsumerCollector

    empty = CollectorRegistry()
    ConsumerCollector([], registry=empty)
    text = generate_latest(empty).decode()
    assert "# TYPE trio_sqs_poll_duration_seconds histogram" in text
    assert "{" not in text  # the families, no series

    await fake_sqs_client.send_message(fake_queue_url, "m")
    last = Last()

    async def handler(message: Message) -> None:
        pass

    async with open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, middleware=[last], wait_time=20
    ) as consumer:
        await last.done.wait()
    registry = CollectorRegistry()
    ConsumerCollector(consumer, registry=registry)
    queue = fake_queue_url.rsplit("/", 1)[1]

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": queue, **labels})

    # Stopped: still scraped, its final counts, state "stopped", nothing in flight.
    assert value("trio_sqs_state", state="stopped") == 1.0
    assert value("trio_sqs_state", state="running") == 0.0
    assert (value("trio_sqs_messages_received_total"), value("trio_sqs_in_flight")) == (1.0, 0.0)
    assert value("trio_sqs_messages_deleted_total") == 1.0
    assert value("trio_sqs_ack_latency_seconds_count") == 1.0
    stats = consumer.statistics()
    assert value("trio_sqs_poll_duration_seconds_count", result="messages") == float(
        stats.poll_duration_messages.count
    )
    assert value("trio_sqs_poll_batch_size_sum") == 1.0


# -- metrics: what broke ---------------------------------------------------------------------------


async def test_the_prometheus_collector_counts_every_consumer_of_a_queue(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    from prometheus_client import CollectorRegistry

    from trio_sqs.prometheus import ConsumerCollector

    async def handler(message: Message) -> None:
        pass

    consumers = []
    for _ in range(2):  # one after the other, so that each surely gets two of the four
        for i in range(2):
            await fake_sqs_client.send_message(fake_queue_url, str(i))
        last = Last(2)
        async with open_consumer(
            fake_queue_url, handler, client=fake_sqs_client, middleware=[last]
        ) as consumer:
            await last.done.wait()
        consumers.append(consumer)
    c1, c2 = consumers
    assert (c1.statistics().received, c2.statistics().received) == (2, 2)
    registry = CollectorRegistry()
    ConsumerCollector([c1, c2], registry=registry)
    queue = fake_queue_url.rsplit("/", 1)[1]
    assert registry.get_sample_value("trio_sqs_messages_received_total", {"queue": queue}) == 4
