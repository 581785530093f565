"""Health and metrics of a process's consumers over plain HTTP/1.1 on Trio (needs ``trio-sqs[prometheus]``).

Endpoints:

- ``/healthz`` (liveness): 200 while the last successful poll (``last_poll_at``) is within the
  liveness window, and also while the consumer is starting, stopping (its shutdown is bounded by
  grace + flush), or saturated (every slot busy, so no poll is due); 503 otherwise.
- ``/readyz`` (readiness): 200 while the consumer is running, 503 before and once stopping.
- ``/metrics``: Prometheus text format: :class:`trio_sqs.prometheus.ConsumerCollector` (counters,
  gauges and the poll, ack and release latency and batch size histograms of
  :meth:`Consumer.statistics`, read at scrape time), the handler duration histogram
  (:class:`trio_sqs.prometheus.HandlerDurations`), and the process metrics.

One request per connection (``Connection: close``), which is what kubelet probes and Prometheus
scrapes need; no threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .._consumer import Consumer
from .._stats import ConsumerStatistics
from ..prometheus import ConsumerCollector, HandlerDurations

__all__ = ["Metrics", "Probe", "serve_health"]

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0


class Probe:
    """Liveness and readiness of the consumers of a process, one per queue (each attached once it
    runs). Alive while every consumer is; ready while every consumer runs.

    Args:
        liveness_window: Seconds without a successful poll after which ``/healthz`` fails.
        batch: Whether the consumers' handler takes batches (for the saturation check).
        queues: The queues, as given on the command line (their names are the ``queue`` label
            of the metrics).
    """

    def __init__(
        self, *, liveness_window: float, batch: bool = False, queues: Sequence[str] = ("",)
    ) -> None:
        self.liveness_window = liveness_window
        self.batch = batch
        self.queues = list(queues)
        self.consumers: dict[str, Consumer] = {}
        self._attached_at: dict[str, float] = {}

    def attach(self, queue: str, consumer: Consumer) -> None:
        self.consumers[queue] = consumer
        self._attached_at[queue] = time.time()

    def statistics(self) -> dict[str, ConsumerStatistics | None]:
        """Each queue's consumer statistics, ``None`` while it starts."""
        return {
            queue: self.consumers[queue].statistics() if queue in self.consumers else None
            for queue in self.queues
        }

    def _liveness(self, queue: str) -> tuple[bool, dict[str, object]]:
        consumer = self.consumers.get(queue)
        if consumer is None:
            return True, {"status": "starting"}
        stats = consumer.statistics()
        body: dict[str, object] = {"state": stats.state, "window_seconds": self.liveness_window}
        if stats.state == "stopped":
            return False, {"status": "stopped", **body}
        if stats.state != "running":
            return True, {"status": stats.state, **body}
        age = time.time() - (stats.last_poll_at or self._attached_at[queue])
        body["last_poll_age_seconds"] = round(age, 3)
        options = consumer.options
        # A poll is only sent when a whole batch fits: a full consumer is busy, not stuck.
        held = stats.in_flight + stats.buffered + options.effective_batch_size(self.batch)
        saturated = held > options.capacity(self.batch)
        if age <= self.liveness_window:
            return True, {"status": "ok", **body}
        if saturated:
            return True, {"status": "saturated", **body}
        return False, {"status": "no recent poll", **body}

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """One consumer: its own status. Several: alive while each is, with each one's status
        under ``queues`` and the first failing one's (else ``ok``) as ``status``; while they
        shut down (one stopping, or some stopped and others not yet), alive and ``stopping``."""
        each = {queue: self._liveness(queue) for queue in self.queues}
        if len(each) == 1:
            return next(iter(each.values()))
        statuses = [str(body["status"]) for _, body in each.values()]
        status: str
        if "stopping" in statuses or ("stopped" in statuses and set(statuses) != {"stopped"}):
            # One shutdown for all: a consumer done draining waits for the others.
            alive, status = True, "stopping"
        else:
            alive = all(ok for ok, _ in each.values())
            failing = [str(body["status"]) for ok, body in each.values() if not ok]
            status = failing[0] if failing else "ok"
        return alive, {"status": status, "queues": {q: body for q, (_, body) in each.items()}}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        states = {
            queue: stats.state if stats is not None else "starting"
            for queue, stats in self.statistics().items()
        }
        ready = all(state == "running" for state in states.values())
        if len(states) == 1:
            (state,) = states.values()
            return ready, {"status": "ready" if ready else state}
        status = "ready" if ready else next(s for s in states.values() if s != "running")
        return ready, {"status": status, "queues": states}


class Metrics:
    """A private Prometheus registry: consumer statistics (the library's
    :class:`~trio_sqs.prometheus.ConsumerCollector` over the probe's consumers, read at scrape
    time, labelled with their ``queue``'s name), a handler duration histogram fed by the
    middleware :attr:`handler_durations`, and process, platform and GC metrics."""

    def __init__(self, probe: Probe) -> None:
        self.registry = CollectorRegistry()
        ConsumerCollector(probe.statistics, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        #: The middleware that feeds the handler histogram (the library's own).
        self.handler_durations = HandlerDurations(registry=self.registry)

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
