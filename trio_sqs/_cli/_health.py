"""Health and metrics of a consumer over plain HTTP/1.1 on Trio (needs ``trio-sqs[prometheus]``).

Endpoints:

- ``/healthz`` (liveness): 200 while the last successful poll (``last_poll_at``) is within the
  liveness window, and also while the consumer is starting, stopping (its shutdown is bounded by
  grace + flush), or saturated (every slot busy, so no poll is due); 503 otherwise.
- ``/readyz`` (readiness): 200 while the consumer is running, 503 before and once stopping.
- ``/metrics``: Prometheus text format, read from :meth:`Consumer.statistics` at scrape time, plus
  a handler duration histogram and the process metrics.

One request per connection (``Connection: close``), which is what kubelet probes and Prometheus
scrapes need; no threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import partial

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .._consumer import Consumer
from .._stats import ConsumerStatistics

__all__ = ["Metrics", "Probe", "serve_health"]

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0

# (metric name without _total, statistics field, help)
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


class Probe:
    """Liveness and readiness of one consumer (attached once it runs).

    Args:
        liveness_window: Seconds without a successful poll after which ``/healthz`` fails.
        batch: Whether the consumer's handler takes batches (for the saturation check).
    """

    def __init__(self, *, liveness_window: float, batch: bool = False) -> None:
        self.liveness_window = liveness_window
        self.batch = batch
        self.consumer: Consumer | None = None
        self._attached_at = time.time()

    def attach(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._attached_at = time.time()

    def statistics(self) -> ConsumerStatistics | None:
        return self.consumer.statistics() if self.consumer is not None else None

    def liveness(self) -> tuple[bool, dict[str, object]]:
        stats = self.statistics()
        if stats is None or self.consumer is None:
            return True, {"status": "starting"}
        body: dict[str, object] = {"state": stats.state, "window_seconds": self.liveness_window}
        if stats.state == "stopped":
            return False, {"status": "stopped", **body}
        if stats.state != "running":
            return True, {"status": stats.state, **body}
        age = time.time() - (stats.last_poll_at or self._attached_at)
        body["last_poll_age_seconds"] = round(age, 3)
        options = self.consumer.options
        # A poll is only sent when a whole batch fits: a full consumer is busy, not stuck.
        held = stats.in_flight + stats.buffered + options.effective_batch_size(self.batch)
        saturated = held > options.capacity(self.batch)
        if age <= self.liveness_window:
            return True, {"status": "ok", **body}
        if saturated:
            return True, {"status": "saturated", **body}
        return False, {"status": "no recent poll", **body}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        stats = self.statistics()
        state = stats.state if stats is not None else "starting"
        return state == "running", {"status": "ready" if state == "running" else state}


class _StatisticsCollector(Collector):
    def __init__(self, probe: Probe, queue: str) -> None:
        self._probe = probe
        self._queue = queue

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("trio_sqs_consumer", "The consumed queue.")
        info.add_metric([], {"queue": self._queue})
        yield info
        stats = self._probe.statistics()
        if stats is None:
            return
        for name, field, text in COUNTERS:
            yield CounterMetricFamily(f"trio_sqs_{name}", text, value=getattr(stats, field))
        yield GaugeMetricFamily("trio_sqs_in_flight", "Handler calls running.", stats.in_flight)
        yield GaugeMetricFamily(
            "trio_sqs_buffered", "Messages waiting for a handler.", stats.buffered
        )
        state = GaugeMetricFamily("trio_sqs_state", "1 for the current state.", labels=["state"])
        for name in ("starting", "running", "stopping", "stopped"):
            state.add_metric([name], 1.0 if stats.state == name else 0.0)
        yield state
        if stats.last_poll_at is not None:
            yield GaugeMetricFamily(
                "trio_sqs_last_poll_timestamp_seconds",
                "Unix time of the last successful poll.",
                stats.last_poll_at,
            )


class Metrics:
    """A private Prometheus registry: consumer statistics (read at scrape time), a handler
    duration histogram fed by :meth:`observe_handler`, and process, platform and GC metrics."""

    def __init__(self, probe: Probe, *, queue: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatisticsCollector(probe, queue))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._durations = Histogram(
            "trio_sqs_handler_duration_seconds",
            "Handler call duration, by outcome (ok, error, retry, cancelled).",
            ["outcome"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    def observe_handler(self, seconds: float, outcome: str) -> None:
        self._durations.labels(outcome=outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _respond(probe: Probe, metrics: Metrics, method: str, path: str) -> tuple[int, str, bytes]:
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, metrics.render()
    if path in ("/healthz", "/readyz"):
        ok, body = probe.liveness() if path == "/healthz" else probe.readiness()
        return (200 if ok else 503), "application/json", json.dumps(body).encode() + b"\n"
    return 404, "text/plain", b"not found (try /healthz, /readyz or /metrics)\n"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_REQUEST_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        head += chunk
    return head


async def _serve_one(probe: Probe, metrics: Metrics, stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            head = await _read_head(stream)
            parts = head.split(b"\r\n", 1)[0].split() if head else []
            if len(parts) == 3 and parts[2].startswith(b"HTTP/1."):
                method, path = parts[0].decode("latin-1"), parts[1].decode("latin-1")
                status, ctype, body = _respond(probe, metrics, method, path)
            else:
                method, status, ctype, body = "GET", 400, "text/plain", b"bad request\n"
            headers = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away: nothing to answer


async def serve_health(
    probe: Probe,
    metrics: Metrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` until cancelled.

    ``await nursery.start(serve_health, ...)`` returns the bound port (useful with port 0) once
    the socket listens; binding errors (``OSError``) are raised from ``start``.

    Cancellation: cancelling stops listening and drops connections being served.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(partial(_serve_one, probe, metrics), listeners)
