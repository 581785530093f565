"""Prometheus metrics for consumers (needs ``pip install 'trio-sqs[prometheus]'``): a collector
exporting consumers' statistics (counters, gauges, and the poll, ack and release latency and
batch size histograms) at scrape time, and a handler-duration histogram as middleware.

::

    from trio_sqs.prometheus import ConsumerCollector, HandlerDurations

    durations = HandlerDurations()          # registered in prometheus_client's default registry
    async with trio_sqs.open_consumer("orders", handle, middleware=[durations]) as consumer:
        ConsumerCollector(consumer)         # likewise
        ...

``trio-sqs run --metrics-port`` uses both for its ``/metrics``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "trio_sqs.prometheus needs prometheus-client: pip install 'trio-sqs[prometheus]'"
    ) from exc

from ._consumer import Consumer
from ._middleware import Invocation
from ._stats import ConsumerStatistics, HistogramSnapshot
from ._util import queue_name

__all__ = ["COUNTERS", "DEFAULT_BUCKETS", "HISTOGRAMS", "ConsumerCollector", "HandlerDurations"]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class HandlerDurations:
    """Middleware observing every handler invocation in a histogram
    ``trio_sqs_handler_duration_seconds{queue, outcome}``, ``outcome`` being the invocation's
    (``ok``, ``failed``, ``retry``, ``timed_out``, ``cancelled``; see :class:`Invocation`).

    One instance can serve any number of consumers (the ``queue`` label tells them apart);
    put it first in the middleware list to time the other middleware too.

    Args:
        registry: Where the histogram is registered (prometheus_client's default registry).
        name: The metric's name.
        buckets: The histogram's buckets, in seconds.

    Cancellation: a handler cancelled by its time-out or at the end of the grace period is
    observed (``timed_out``, ``cancelled``); the cancellation propagates.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        name: str = "trio_sqs_handler_duration_seconds",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.histogram = Histogram(
            name,
            "Handler invocation duration, by queue and outcome "
            "(ok, failed, retry, timed_out, cancelled).",
            ["queue", "outcome"],
            registry=registry,
            buckets=tuple(buckets),
        )

    async def __call__(
        self, invocation: Invocation, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        start = time.perf_counter()
        try:
            await call_next()
        finally:
            outcome = invocation.outcome or "failed"
            self.histogram.labels(queue=queue_name(invocation.queue_url), outcome=outcome).observe(
                time.perf_counter() - start
            )


#: The counters :class:`ConsumerCollector` exports: (metric name without the ``trio_sqs_`` prefix
#: and the ``_total`` suffix, :class:`ConsumerStatistics` field, help).
COUNTERS = (
    ("messages_received", "received", "Valid messages received."),
    ("messages_completed", "completed", "Handler calls that returned."),
    ("messages_failed", "failed", "Handler calls that raised."),
    ("messages_retried", "retried", "Handler calls that raised Retry."),
    ("messages_timed_out", "timed_out", "Handler calls cancelled by handler_timeout."),
    ("messages_cancelled_at_grace", "cancelled_at_grace", "Handlers cancelled at end of grace."),
    ("messages_released", "released", "Messages made visible again early (confirmed)."),
    ("release_failures", "release_failed", "Releases refused or not sent."),
    ("releases_expired", "release_expired", "Releases dropped: the lease may have run out."),
    ("messages_deleted", "deleted", "Messages deleted (confirmed)."),
    ("delete_failures", "delete_failed", "Deletes refused or not sent."),
    ("heartbeat_extensions", "visibility_extensions", "Visibility extensions confirmed."),
    ("heartbeat_errors", "heartbeat_errors", "Visibility heartbeat calls or entries that failed."),
    ("polls", "polls", "ReceiveMessage calls that returned."),
    ("empty_polls", "empty_polls", "ReceiveMessage calls that returned no message."),
    ("aborted_polls", "aborted_polls", "Long polls cancelled after being sent."),
    ("poll_errors", "poll_errors", "ReceiveMessage calls that failed."),
    ("corrupt_messages", "corrupt", "Messages that failed their MD5 check."),
    ("unflushed", "unflushed", "Deletes and releases unsent when the flush timed out."),
)

#: The histograms :class:`ConsumerCollector` exports: (metric name without the ``trio_sqs_``
#: prefix, help, and the :class:`ConsumerStatistics` field per value of the extra label, if any).
#: ``trio_sqs_poll_duration_seconds`` has the label ``result`` (``empty`` or ``messages``).
HISTOGRAMS: tuple[tuple[str, str, Mapping[str, str]], ...] = (
    (
        "poll_duration_seconds",
        "ReceiveMessage calls answered, from the request written to the answer, by result.",
        {"empty": "poll_duration_empty", "messages": "poll_duration_messages"},
    ),
    (
        "ack_latency_seconds",
        "Per deleted message, from its handler's return to SQS confirming the delete.",
        {"": "ack_latency"},
    ),
    (
        "release_latency_seconds",
        "Per released message, from the decision to release it to SQS confirming it.",
        {"": "release_latency"},
    ),
    (
        "delete_call_duration_seconds",
        "DeleteMessageBatch calls answered (client retries included).",
        {"": "delete_call_duration"},
    ),
    (
        "release_call_duration_seconds",
        "ChangeMessageVisibilityBatch calls answered, of releases.",
        {"": "release_call_duration"},
    ),
    (
        "heartbeat_call_duration_seconds",
        "ChangeMessageVisibilityBatch calls answered, of heartbeats (lease extensions).",
        {"": "heartbeat_call_duration"},
    ),
    (
        "poll_batch_size",
        "Valid messages per ReceiveMessage call answered (0: an empty poll).",
        {"": "poll_batch_size"},
    ),
    ("delete_batch_size", "Messages per DeleteMessageBatch call.", {"": "delete_batch_size"}),
    (
        "release_batch_size",
        "Messages per ChangeMessageVisibilityBatch call of releases.",
        {"": "release_batch_size"},
    ),
    (
        "handler_batch_size",
        "Messages per batch handler invocation.",
        {"": "handler_batch_size"},
    ),
)

_STATES = ("starting", "running", "stopping", "stopped")

#: What :class:`ConsumerCollector` reads: each queue (its name or URL; the ``queue`` label is the
#: name) with its consumer's statistics, ``None`` while that consumer is not created yet.
StatisticsSource = Callable[
    [],
    "Mapping[str, ConsumerStatistics | None] | Iterable[tuple[str, ConsumerStatistics | None]]",
]


def _buckets(snapshot: HistogramSnapshot) -> list[tuple[str, float]]:
    # Prometheus's own spelling of ``le`` (prometheus_client's floatToGoString).
    return [
        ("+Inf" if bound == math.inf else repr(float(bound)), float(n))
        for bound, n in snapshot.cumulative()
    ]


def _added(snapshots: Sequence[HistogramSnapshot]) -> HistogramSnapshot:
    """One histogram of several with the same buckets (the consumer's own, always)."""
    first = snapshots[0]
    if len(snapshots) == 1:
        return first
    counts = [sum(column) for column in zip(*(s.counts for s in snapshots), strict=True)]
    return HistogramSnapshot(
        first.buckets, tuple(counts), sum(s.sum for s in snapshots), sum(counts)
    )


class ConsumerCollector(Collector):
    """A Prometheus collector of consumers' statistics, read from
    :meth:`Consumer.statistics` at each scrape (nothing is measured twice, nothing runs
    between scrapes). Every series has the label ``queue``, the queue's name.

    Exports ``trio_sqs_consumer_info{queue}``, the counters ``trio_sqs_<name>_total`` of
    :data:`COUNTERS`, the gauges ``trio_sqs_in_flight``, ``trio_sqs_buffered``,
    ``trio_sqs_state{state}`` and ``trio_sqs_last_poll_timestamp_seconds``, and the histograms of
    :data:`HISTOGRAMS`: ``trio_sqs_poll_duration_seconds{result="empty|messages"}``,
    ``trio_sqs_ack_latency_seconds``, ``trio_sqs_release_latency_seconds``,
    ``trio_sqs_{delete,release,heartbeat}_call_duration_seconds`` and
    ``trio_sqs_{poll,delete,release,handler}_batch_size``. Handler durations by outcome come from
    the :class:`HandlerDurations` middleware. Consumers of queues with the same name are added
    up under one label (``trio_sqs_state`` then counts the consumers in each state).

    Args:
        consumers: A :class:`Consumer`, a collection of them (read at each scrape: consumers
            added to a list later are exported too), or a callable returning each queue's
            statistics (``None`` for a queue whose consumer is not created yet: only its info
            series is exported).
        registry: Where to register the collector (prometheus_client's default registry);
            ``None`` to register it yourself.
    """

    def __init__(
        self,
        consumers: Consumer | Iterable[Consumer] | StatisticsSource,
        *,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if isinstance(consumers, Consumer):
            consumers = [consumers]
        self._source: StatisticsSource
        if callable(consumers):
            self._source = consumers
        else:
            held = consumers if isinstance(consumers, Collection) else list(consumers)
            self._source = lambda: [(c.queue_url, c.statistics()) for c in held]
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (no statistics are read to register)."""
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        source = self._source()
        return self._families(source.items() if isinstance(source, Mapping) else source)

    def _families(self, each: Iterable[tuple[str, ConsumerStatistics | None]]) -> Iterator[Metric]:
        info = InfoMetricFamily("trio_sqs_consumer", "The consumed queue.", labels=["queue"])
        counters = {
            name: CounterMetricFamily(f"trio_sqs_{name}", text, labels=["queue"])
            for name, _, text in COUNTERS
        }
        in_flight = GaugeMetricFamily(
            "trio_sqs_in_flight", "Handler calls running.", labels=["queue"]
        )
        buffered = GaugeMetricFamily(
            "trio_sqs_buffered", "Messages waiting for a handler.", labels=["queue"]
        )
        state = GaugeMetricFamily(
            "trio_sqs_state", "1 for the current state.", labels=["queue", "state"]
        )
        last_poll = GaugeMetricFamily(
            "trio_sqs_last_poll_timestamp_seconds",
            "Unix time of the last successful poll.",
            labels=["queue"],
        )
        histograms = {
            name: HistogramMetricFamily(
                f"trio_sqs_{name}",
                text,
                labels=["queue", "result"] if "" not in by_label else ["queue"],
            )
            for name, text, by_label in HISTOGRAMS
        }
        # Consumers whose queues share a name (two consumers of one queue, or queues of one
        # name in two accounts or regions) share their labels: they are added up (counters,
        # gauges, histograms; trio_sqs_state counts the consumers in each state), never
        # exported twice under one label set (Prometheus refuses that).
        grouped: dict[str, list[ConsumerStatistics]] = {}
        for given, stats in each:
            group = grouped.setdefault(queue_name(given), [])
            if stats is not None:
                group.append(stats)
        for queue, group in grouped.items():
            info.add_metric([queue], {"queue": queue})
            if not group:
                continue
            for name, field, _ in COUNTERS:
                counters[name].add_metric([queue], sum(getattr(s, field) for s in group))
            in_flight.add_metric([queue], sum(s.in_flight for s in group))
            buffered.add_metric([queue], sum(s.buffered for s in group))
            for name in _STATES:
                state.add_metric([queue, name], float(sum(s.state == name for s in group)))
            polled = [s.last_poll_at for s in group if s.last_poll_at is not None]
            if polled:
                last_poll.add_metric([queue], max(polled))
            for name, _, by_label in HISTOGRAMS:
                for label, field in by_label.items():
                    snapshot = _added([getattr(s, field) for s in group])
                    labels = [queue, label] if label else [queue]
                    histograms[name].add_metric(labels, _buckets(snapshot), snapshot.sum)
        yield info
        yield from counters.values()
        yield from (in_flight, buffered, state, last_poll)
        yield from histograms.values()
