"""Prometheus metrics for consumers: a handler-duration histogram as middleware (needs
``pip install 'trio-sqs[prometheus]'``).

::

    from trio_sqs.prometheus import HandlerDurations

    durations = HandlerDurations()          # registered in prometheus_client's default registry
    async with trio_sqs.open_consumer("orders", handle, middleware=[durations]): ...

``trio-sqs run --metrics-port`` uses the same middleware for its ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "trio_sqs.prometheus needs prometheus-client: pip install 'trio-sqs[prometheus]'"
    ) from exc

from ._middleware import Invocation
from ._util import queue_name

__all__ = ["DEFAULT_BUCKETS", "HandlerDurations"]

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
