"""Poll, ack and release latency and batch size metrics: measured by the consumer on Trio's clock
(exact virtual-time values on ``MockClock``), kept in ``statistics()`` as histograms, exported by
:class:`trio_sqs.prometheus.ConsumerCollector` (the CLI's ``/metrics``) and recorded as
OpenTelemetry metrics (with the SDK's in-memory reader, when it is installed).

Every value is checked against what the in-memory SQS saw (``fake.calls``: each request's
arrival on Trio's clock, and its parameters)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import ConsumerStatistics, Message, Retry, open_consumer
from trio_sqs._stats import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS,
    Counters,
    HistogramSnapshot,
    Recorder,
)
from trio_sqs.testing import FakeSQS, RecordedCall

from .conftest import wait_until


def calls(fake: FakeSQS, operation: str) -> list[RecordedCall]:
    return [c for c in fake.calls if c.operation == operation]


def stats_of(consumer: trio_sqs.Consumer) -> ConsumerStatistics:
    return consumer.statistics()


# -- the histogram type ---------------------------------------------------------------------------


def test_a_value_on_a_bound_falls_in_that_bucket_and_cumulative_ends_at_inf() -> None:
    recorder = Recorder((1.0, 5.0))
    for value in (0.0, 1.0, 1.5, 5.0, 7.0):
        recorder.observe(value)
    snapshot = recorder.snapshot()
    assert snapshot == HistogramSnapshot((1.0, 5.0), (2, 2, 1), 14.5, 5)
    assert snapshot.cumulative() == [(1.0, 2), (5.0, 4), (math.inf, 5)]
    assert snapshot.mean == 14.5 / 5
    assert HistogramSnapshot.empty((1.0,)).mean is None
    # A snapshot is a copy: later observations do not change it.
    recorder.observe(2.0)
    assert snapshot.count == 5 and recorder.snapshot().count == 6


def test_statistics_stay_constructible_as_before_with_empty_histograms() -> None:
    """New fields come last with defaults: code that builds statistics keeps working."""
    old_style = ConsumerStatistics.from_counters(
        Counters(received=2), state="running", in_flight=0, buffered=0, last_poll_at=None
    )
    assert old_style.received == 2
    assert old_style.ack_latency == HistogramSnapshot.empty(DURATION_BUCKETS)
    assert old_style.poll_batch_size == HistogramSnapshot.empty(BATCH_SIZE_BUCKETS)
    positional = ConsumerStatistics("running", *([0] * 21), None)
    assert positional.poll_duration_empty.count == 0
    # The repr (printed by the example worker at exit) leaves the histograms out.
    assert "poll_duration" not in repr(old_style)


# -- polls ----------------------------------------------------------------------------------------


async def test_an_empty_long_poll_is_observed_for_its_whole_wait_under_empty(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    async with open_consumer(fake_queue_url, handler, client=fake_sqs_client, wait_time=20) as c:
        await trio.sleep(45)  # two polls answered empty (at 20 s and 40 s), a third waiting
        stats = stats_of(c)
    polls = calls(fake_sqs, "ReceiveMessage")
    assert [p.params["WaitTimeSeconds"] for p in polls] == [20, 20, 20]
    assert polls[1].time - polls[0].time == 20
    empty = stats.poll_duration_empty
    assert (empty.count, empty.sum) == (2, 40.0)
    assert dict(empty.cumulative())[10.0] == 0 and dict(empty.cumulative())[20.0] == 2
    assert stats.poll_duration_messages.count == 0
    # Polls answered with nothing: two batches of 0 messages.
    assert (stats.poll_batch_size.count, stats.poll_batch_size.sum) == (2, 0)
    assert stats.poll_batch_size.counts[0] == 2
    # The third poll was aborted at the stop: counted there, never observed as a latency.
    after = c.statistics()
    assert after.aborted_polls == 1 and after.poll_duration_empty.count == 2


async def test_a_poll_with_messages_is_timed_from_request_to_answer(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for i in range(3):
        await fake_sqs_client.send_message(fake_queue_url, f"m{i}")
    fake_sqs.faults.delay("ReceiveMessage", 0.25)  # the first poll's answer comes 0.25 s late
    done = trio.Event()
    handled = []

    async def handler(message: Message) -> None:
        handled.append(message.body)
        if len(handled) == 3:
            done.set()

    async with open_consumer(fake_queue_url, handler, client=fake_sqs_client, wait_time=20) as c:
        await done.wait()
        stats = stats_of(c)
    first = calls(fake_sqs, "ReceiveMessage")[0]
    assert first.params["MaxNumberOfMessages"] == 10
    got = stats.poll_duration_messages
    assert (got.count, got.sum) == (1, 0.25)
    assert dict(got.cumulative())[0.1] == 0 and dict(got.cumulative())[0.25] == 1
    # The one answered poll brought 3 messages.
    assert (stats.poll_batch_size.count, stats.poll_batch_size.sum) == (1, 3)
    assert stats.poll_batch_size.counts[3] == 1


async def test_failed_polls_are_counted_not_timed(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    fake_sqs.faults.fail("ReceiveMessage", times=2)

    async def handler(message: Message) -> None:
        raise AssertionError("no message was sent")

    async with open_consumer(fake_queue_url, handler, client=fake_sqs_client, wait_time=5) as c:
        # Two failures (with their backoffs, under 2 s), then one poll answered empty.
        await trio.sleep(8)
        stats = stats_of(c)
    assert stats.poll_errors == 2
    assert stats.polls == 1
    assert (stats.poll_duration_empty.count, stats.poll_duration_empty.sum) == (1, 5.0)
    assert stats.poll_duration_messages.count == 0
    assert stats.poll_batch_size.count == 1


# -- acknowledgements and releases ----------------------------------------------------------------


async def test_ack_latency_runs_from_the_handler_s_return_to_the_confirmed_delete(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    """Deletes confirmed after the ack window show that latency: the window (the first delete's
    0.5 s gathers all four) plus the call's own 0.5 s."""
    for i in range(4):
        await fake_sqs_client.send_message(fake_queue_url, f"m{i}")
    fake_sqs.faults.delay("DeleteMessageBatch", 0.5)
    returned_at: dict[str, float] = {}

    async def handler(message: Message) -> None:
        await trio.sleep(1 + int(message.body[1:]) * 0.125)  # back at 1, 1.125, 1.25, 1.375 s
        returned_at[message.body] = trio.current_time()

    start = trio.current_time()
    async with open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, wait_time=20, ack_interval=0.5
    ) as c:
        await wait_until(lambda: c.statistics().deleted == 4)
        stats = stats_of(c)
    assert [t - start for t in returned_at.values()] == [1.0, 1.125, 1.25, 1.375]
    (delete,) = calls(fake_sqs, "DeleteMessageBatch")
    assert delete.time - returned_at["m0"] == 0.5  # the window opened by the first delete
    confirmed_at = delete.time + 0.5
    latency = stats.ack_latency
    assert latency.count == 4
    assert latency.sum == sum(confirmed_at - t for t in returned_at.values()) == 3.25
    # 1.0, 0.875, 0.75 and 0.625 s: all four in (0.5, 1.0].
    assert dict(latency.cumulative())[0.5] == 0 and dict(latency.cumulative())[1.0] == 4
    # The call itself: 0.5 s, four entries, as the fake received them.
    assert len(delete.params["Entries"]) == 4
    assert (stats.delete_call_duration.count, stats.delete_call_duration.sum) == (1, 0.5)
    assert (stats.delete_batch_size.count, stats.delete_batch_size.sum) == (1, 4)
    assert stats.delete_batch_size.counts[4] == 1
    # No release.
    assert stats.release_latency.count == stats.release_call_duration.count == 0
    assert stats.release_batch_size.count == 0


async def test_release_latency_and_call_duration_of_a_retried_message(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for i in range(2):
        await fake_sqs_client.send_message(fake_queue_url, f"m{i}")
    fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 0.25)
    raised: list[float] = []

    async def handler(message: Message) -> None:
        await trio.sleep(1)
        raised.append(trio.current_time())
        raise Retry(300)

    async with open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, wait_time=20, ack_interval=0.5
    ) as c:
        await wait_until(lambda: c.statistics().released == 2)
        stats = stats_of(c)
    (release,) = calls(fake_sqs, "ChangeMessageVisibilityBatch")
    assert [e["VisibilityTimeout"] for e in release.params["Entries"]] == [300, 300]
    assert raised == [raised[0]] * 2 and release.time - raised[0] == 0.5
    assert (stats.release_latency.count, stats.release_latency.sum) == (2, 1.5)
    assert (stats.release_call_duration.count, stats.release_call_duration.sum) == (1, 0.25)
    assert (stats.release_batch_size.count, stats.release_batch_size.sum) == (1, 2)
    assert stats.release_batch_size.counts[2] == 1
    assert stats.ack_latency.count == stats.delete_call_duration.count == 0
    # Heartbeats: none (the handlers were far shorter than the lease).
    assert stats.heartbeat_call_duration.count == 0


async def test_heartbeat_calls_are_timed(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "slow")
    fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 0.125, times=100)

    async def handler(message: Message) -> None:
        await trio.sleep(25)

    async with open_consumer(
        fake_queue_url,
        handler,
        client=fake_sqs_client,
        wait_time=20,
        visibility_timeout=12,
        heartbeat_interval=4,
    ) as c:
        await wait_until(lambda: c.statistics().deleted == 1)
        stats = stats_of(c)
    beats = [
        call
        for call in calls(fake_sqs, "ChangeMessageVisibilityBatch")
        if call.params["Entries"][0]["VisibilityTimeout"] == 12
    ]
    assert len(beats) >= 5
    assert stats.visibility_extensions == len(beats)
    timed = stats.heartbeat_call_duration
    assert timed.count == len(beats)
    assert timed.sum == pytest.approx(0.125 * len(beats), abs=1e-9)
    assert timed.counts[DURATION_BUCKETS.index(0.25)] == len(beats)


# -- handlers -------------------------------------------------------------------------------------


async def test_batch_handler_sizes_and_handler_durations(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for i in range(7):
        await fake_sqs_client.send_message(fake_queue_url, f"m{i}")
    batches: list[int] = []
    done = trio.Event()

    async def handler(messages: list[Message]) -> None:
        batches.append(len(messages))
        await trio.sleep(0.75)
        if sum(batches) == 7:
            done.set()

    async with open_consumer(
        fake_queue_url, handler, client=fake_sqs_client, batch=True, wait_time=20
    ) as c:
        await done.wait()
        await wait_until(lambda: c.statistics().deleted == 7)
        stats = stats_of(c)
    assert stats.handler_batch_size.count == len(batches)
    assert stats.handler_batch_size.sum == 7
    for size in batches:
        assert stats.handler_batch_size.counts[size] >= 1
    assert stats.handler_duration.count == len(batches)
    assert stats.handler_duration.sum == 0.75 * len(batches)
    received = sum(stats.poll_batch_size.counts[i] * i for i in range(len(BATCH_SIZE_BUCKETS)))
    assert received == stats.poll_batch_size.sum == stats.received == 7


async def test_single_handlers_record_durations_but_no_batch_sizes(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    await fake_sqs_client.send_message(fake_queue_url, "m")

    async def handler(message: Message) -> None:
        await trio.sleep(0.5)
        raise ValueError("failed")  # any outcome is observed

    async with open_consumer(fake_queue_url, handler, client=fake_sqs_client, wait_time=20) as c:
        await wait_until(lambda: c.statistics().failed == 1)
        stats = stats_of(c)
    assert (stats.handler_duration.count, stats.handler_duration.sum) == (1, 0.5)
    assert stats.handler_batch_size.count == 0


# -- Prometheus -----------------------------------------------------------------------------------


async def test_prometheus_collector_exports_the_histograms_in_text_format(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from trio_sqs.prometheus import ConsumerCollector

    url = await fake_sqs_client.create_queue("metrics-text")
    await fake_sqs_client.send_message(url, "m")
    fake_sqs.faults.delay("DeleteMessageBatch", 0.25)

    async def handler(message: Message) -> None:
        pass

    registry = CollectorRegistry()
    async with open_consumer(
        url, handler, client=fake_sqs_client, wait_time=20, ack_interval=0.5
    ) as c:
        ConsumerCollector(c, registry=registry)
        await wait_until(lambda: c.statistics().deleted == 1)
        await trio.sleep(25)  # one empty long poll after the message
        text = generate_latest(registry).decode()
    for line in (
        'trio_sqs_consumer_info{queue="metrics-text"} 1.0',
        'trio_sqs_messages_deleted_total{queue="metrics-text"} 1.0',
        # The first poll got the message at once; the next one waited its 20 s.
        'trio_sqs_poll_duration_seconds_bucket{le="0.005",queue="metrics-text",result="messages"} 1.0',
        'trio_sqs_poll_duration_seconds_count{queue="metrics-text",result="messages"} 1.0',
        'trio_sqs_poll_duration_seconds_bucket{le="10.0",queue="metrics-text",result="empty"} 0.0',
        'trio_sqs_poll_duration_seconds_bucket{le="20.0",queue="metrics-text",result="empty"} 1.0',
        'trio_sqs_poll_duration_seconds_bucket{le="+Inf",queue="metrics-text",result="empty"} 1.0',
        'trio_sqs_poll_duration_seconds_sum{queue="metrics-text",result="empty"} 20.0',
        # Ack: the 0.5 s window, then the call's 0.25 s.
        'trio_sqs_ack_latency_seconds_bucket{le="0.5",queue="metrics-text"} 0.0',
        'trio_sqs_ack_latency_seconds_bucket{le="1.0",queue="metrics-text"} 1.0',
        'trio_sqs_ack_latency_seconds_sum{queue="metrics-text"} 0.75',
        'trio_sqs_delete_call_duration_seconds_sum{queue="metrics-text"} 0.25',
        'trio_sqs_delete_batch_size_bucket{le="1.0",queue="metrics-text"} 1.0',
        'trio_sqs_poll_batch_size_bucket{le="0.0",queue="metrics-text"} 1.0',
        'trio_sqs_poll_batch_size_bucket{le="1.0",queue="metrics-text"} 2.0',
        'trio_sqs_poll_batch_size_sum{queue="metrics-text"} 1.0',
        'trio_sqs_release_latency_seconds_count{queue="metrics-text"} 0.0',
        'trio_sqs_heartbeat_call_duration_seconds_count{queue="metrics-text"} 0.0',
        'trio_sqs_handler_batch_size_count{queue="metrics-text"} 0.0',
    ):
        assert line + "\n" in text, line
    assert "# TYPE trio_sqs_poll_duration_seconds histogram" in text
    assert "# TYPE trio_sqs_ack_latency_seconds histogram" in text


def test_prometheus_collector_sources_and_registration() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from trio_sqs.prometheus import ConsumerCollector

    counters = Counters(received=3)
    counters.release_latency.observe(0.2)
    stats = ConsumerStatistics.from_counters(
        counters, state="running", in_flight=1, buffered=0, last_poll_at=None
    )
    each: dict[str, ConsumerStatistics | None] = {
        "https://sqs.eu-west-1.amazonaws.com/123456789012/a": stats,
        "b": None,  # configured, not started: only its info series
    }
    registry = CollectorRegistry(auto_describe=True)
    collector = ConsumerCollector(lambda: each, registry=registry)
    text = generate_latest(registry).decode()
    assert 'trio_sqs_messages_received_total{queue="a"} 3.0\n' in text
    assert 'trio_sqs_release_latency_seconds_bucket{le="0.25",queue="a"} 1.0\n' in text
    assert 'trio_sqs_consumer_info{queue="b"} 1.0\n' in text
    assert 'queue="b",result=' not in text and 'latency_seconds_count{queue="b"}' not in text
    # Registering a second collector of the same series is refused, as for any metric.
    with pytest.raises(ValueError, match="Duplicated"):
        ConsumerCollector(lambda: each, registry=registry)
    # registry=None: not registered anywhere; describe() reads no statistics.
    unregistered = ConsumerCollector(lambda: pytest.fail("read"), registry=None)  # type: ignore[arg-type,return-value]
    names = {family.name for family in unregistered.describe()}
    assert {"trio_sqs_poll_duration_seconds", "trio_sqs_ack_latency_seconds"} <= names
    assert collector is not unregistered


def test_cli_metrics_export_the_histograms_once() -> None:
    """``trio-sqs run --metrics-port``: the library's collector, next to the handler histogram."""
    pytest.importorskip("prometheus_client")
    from trio_sqs._cli._health import Metrics, Probe

    class Running:
        queue_url = "q"

        def statistics(self) -> ConsumerStatistics:
            counters = Counters()
            counters.poll_duration_empty.observe(20.0)
            return ConsumerStatistics.from_counters(
                counters, state="running", in_flight=0, buffered=0, last_poll_at=None
            )

    probe = Probe(liveness_window=60, queues=["q"])
    probe.attach("q", Running())  # type: ignore[arg-type]
    text = Metrics(probe).render().decode()
    assert 'trio_sqs_poll_duration_seconds_sum{queue="q",result="empty"} 20.0\n' in text
    assert text.count("# TYPE trio_sqs_poll_duration_seconds histogram") == 1
    assert "# TYPE trio_sqs_handler_duration_seconds histogram" in text


# -- OpenTelemetry --------------------------------------------------------------------------------


@pytest.fixture
def otel_reader() -> Iterator[Any]:
    """An SDK meter provider with an in-memory reader, used by the consumers created meanwhile
    (not the global provider: it can be set once per process)."""
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from trio_sqs import _otel_metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _otel_metrics.set_meter_provider(provider)
    try:
        yield reader
    finally:
        _otel_metrics.set_meter_provider(None)
        provider.shutdown()


def otel_points(reader: Any, queue: str) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    """Every data point of ``queue``, by (metric name, its attributes other than the queue's)."""
    points = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "trio_sqs"
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes)
                    if attributes.pop("messaging.destination.name") != queue:
                        continue
                    assert attributes.pop("messaging.system") == "aws_sqs"
                    points[(metric.name, tuple(sorted(attributes.items())))] = point
    return points


RECEIVE = (("messaging.operation.name", "ReceiveMessage"), ("messaging.operation.type", "receive"))
DELETE = (
    ("messaging.operation.name", "DeleteMessageBatch"),
    ("messaging.operation.type", "settle"),
)
RELEASE = (
    ("messaging.operation.name", "ChangeMessageVisibilityBatch"),
    ("messaging.operation.type", "settle"),
)
PROCESS = (("messaging.operation.name", "process"), ("messaging.operation.type", "process"))


async def test_opentelemetry_metrics_are_recorded_as_measured(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    otel_reader: Any,
) -> None:
    url = await fake_sqs_client.create_queue("otel-metrics")
    for body in ("ok", "ok", "retry"):
        await fake_sqs_client.send_message(url, body)
    fake_sqs.faults.delay("DeleteMessageBatch", 0.25)

    async def handler(message: Message) -> None:
        await trio.sleep(0.5)
        if message.body == "retry":
            raise Retry(60)

    async with open_consumer(
        url, handler, client=fake_sqs_client, wait_time=20, ack_interval=0.5
    ) as c:
        await wait_until(lambda: c.statistics().deleted == 2 and c.statistics().released == 1)
        await trio.sleep(25)  # one empty long poll
        stats = stats_of(c)

    points = otel_points(otel_reader, "otel-metrics")
    duration = "messaging.client.operation.duration"
    empty = points[(duration, tuple(sorted((*RECEIVE, ("trio_sqs.poll.result", "empty")))))]
    assert (empty.count, empty.sum) == (1, 20.0)
    # The SDK's buckets are the advisory ones, ours: the 20 s poll is in (10, 20].
    assert list(empty.explicit_bounds) == list(DURATION_BUCKETS)
    assert empty.bucket_counts[DURATION_BUCKETS.index(20.0)] == 1
    with_messages = points[
        (duration, tuple(sorted((*RECEIVE, ("trio_sqs.poll.result", "messages")))))
    ]
    assert with_messages.count == stats.poll_duration_messages.count == 1
    delete = points[(duration, DELETE)]
    assert (delete.count, delete.sum) == (
        stats.delete_call_duration.count,
        stats.delete_call_duration.sum,
    )
    assert delete.sum == pytest.approx(0.25, abs=1e-9)
    release = points[(duration, RELEASE)]
    assert release.count == stats.release_call_duration.count == 1
    process = points[("messaging.process.duration", PROCESS)]
    assert (process.count, process.sum) == (3, 1.5)
    ack = points[("trio_sqs.ack.latency", ())]
    assert (ack.count, ack.sum) == (2, stats.ack_latency.sum)
    assert ack.sum == pytest.approx(2 * 0.75, abs=1e-9)  # the window, then the call
    released = points[("trio_sqs.release.latency", ())]
    assert (released.count, released.sum) == (1, stats.release_latency.sum)
    consumed = points[("messaging.client.consumed.messages", RECEIVE)]
    assert consumed.value == 3
    sizes = points[("trio_sqs.batch.size", RECEIVE)]
    assert (sizes.count, sizes.sum) == (stats.poll_batch_size.count, 3)
    assert points[("trio_sqs.batch.size", DELETE)].sum == 2
    assert points[("trio_sqs.batch.size", RELEASE)].sum == 1
    # A single-message handler has no batch size.
    assert ("trio_sqs.batch.size", PROCESS) not in points


def test_without_opentelemetry_attach_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_sqs import _otel_metrics

    monkeypatch.setattr(_otel_metrics, "_otel_metrics", None)
    monkeypatch.setattr(_otel_metrics, "_instruments", None)
    counters = Counters()
    _otel_metrics.attach(counters, "q")
    assert counters.ack_latency.sink is None and counters.poll_batch_size.sink is None
    counters.ack_latency.observe(1.0)
    assert counters.ack_latency.count == 1
