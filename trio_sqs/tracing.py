"""OpenTelemetry tracing across the queue (needs ``pip install 'trio-sqs[otel]'``).

Nothing here is needed to get traces: with ``opentelemetry-api`` installed and an SDK configured,
``SQSClient.send_message``/``send_message_batch`` make a PRODUCER span and put its context into
the message (``traceparent``/``tracestate`` String attributes, by the global propagator), and
every consumer makes a CONSUMER span ``process {queue}`` per handler invocation, a child of the
context the message carries. ``open_consumer(..., tracing=False)`` turns the consumer's off;
README, "Tracing", says what is recorded.

What this module offers on top:

- :func:`extract_context` for code that reads messages itself (``client.receive_messages``);
- :class:`TracingMiddleware` to place the consumer's span elsewhere in the middleware chain, or
  to use a tracer provider other than the global one (pass ``tracing=False`` then).
"""

from __future__ import annotations

from ._tracing import AVAILABLE, TracingMiddleware, extract_context

if not AVAILABLE:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "trio_sqs.tracing needs opentelemetry-api: pip install 'trio-sqs[otel]'",
        name="opentelemetry",
    )

__all__ = ["TracingMiddleware", "extract_context"]
