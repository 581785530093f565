"""OpenTelemetry metrics of consumers, recorded as they are measured (when ``opentelemetry-api``
is importable; without it everything here is a no-op).

A consumer's histograms (``trio_sqs._stats.Recorder``) get a ``sink`` that records each observed
value into an instrument of the meter ``trio_sqs``, with the attributes of OpenTelemetry's
messaging semantic conventions (``messaging.system="aws_sqs"``,
``messaging.destination.name``, ``messaging.operation.name``, ``messaging.operation.type``):

==========================================  =====================================================
instrument                                  what
==========================================  =====================================================
``messaging.client.operation.duration`` s   ReceiveMessage (``receive``; ``trio_sqs.poll.result``
                                            ``empty`` or ``messages``), DeleteMessageBatch
                                            (``settle``), ChangeMessageVisibilityBatch: releases
                                            (``settle``) and heartbeats (``trio_sqs.heartbeat``,
                                            no operation type)
``messaging.process.duration`` s            handler invocations (``process``)
``messaging.client.consumed.messages``      messages received (counter, per ReceiveMessage)
``trio_sqs.ack.latency`` s                  handler done to delete confirmed, per message
``trio_sqs.release.latency`` s              release decided to release confirmed, per message
``trio_sqs.batch.size`` {message}           messages per ReceiveMessage, DeleteMessageBatch,
                                            ChangeMessageVisibilityBatch (releases) call, and
                                            per batch handler invocation (``process``)
==========================================  =====================================================

The global meter provider is used (``opentelemetry.metrics.set_meter_provider``); with the API
and no SDK, each record is a call into a no-op proxy instrument (a fraction of a microsecond).
The instruments are created once per process, when the first consumer is created.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from ._stats import DURATION_BUCKETS, Counters
from ._util import queue_name

try:
    from opentelemetry import metrics as _otel_metrics
except ImportError:  # pragma: no cover - exercised without the extra
    _otel_metrics = None  # type: ignore[assignment]

__all__ = ["METER_NAME", "attach", "set_meter_provider"]

METER_NAME = "trio_sqs"
SYSTEM = "aws_sqs"
BATCH_SIZE_BOUNDARIES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)

Attributes = Mapping[str, str]


class _Instruments:
    def __init__(self, meter: Any) -> None:
        def histogram(name: str, unit: str, description: str, bounds: Any) -> Any:
            try:
                return meter.create_histogram(
                    name, unit, description, explicit_bucket_boundaries_advisory=bounds
                )
            except TypeError:  # an API older than 1.30 has no advisory boundaries
                return meter.create_histogram(name, unit, description)

        durations = list(DURATION_BUCKETS)
        self.operation_duration = histogram(
            "messaging.client.operation.duration",
            "s",
            "Duration of messaging operation initiated by a producer or consumer client.",
            durations,
        )
        self.process_duration = histogram(
            "messaging.process.duration", "s", "Duration of processing operation.", durations
        )
        self.ack_latency = histogram(
            "trio_sqs.ack.latency",
            "s",
            "From a handler's return to SQS confirming its message's delete.",
            durations,
        )
        self.release_latency = histogram(
            "trio_sqs.release.latency",
            "s",
            "From the decision to release a message to SQS confirming the release.",
            durations,
        )
        self.batch_size = histogram(
            "trio_sqs.batch.size",
            "{message}",
            "Messages per SQS call or batch handler invocation.",
            list(BATCH_SIZE_BOUNDARIES),
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            "{message}",
            "Number of messages that were delivered to the application.",
        )


_provider: Any = None
_instruments: _Instruments | None = None


def set_meter_provider(provider: Any) -> None:
    """Use ``provider`` (an OpenTelemetry ``MeterProvider``) instead of the global one for the
    consumers created from now on; ``None`` goes back to the global one. For tests, which cannot
    set the global provider more than once per process."""
    global _provider, _instruments
    _provider = provider
    _instruments = None


def _get_instruments() -> _Instruments | None:
    global _instruments
    if _otel_metrics is None:
        return None
    if _instruments is None:
        # Imported lazily: trio_sqs's version only when the first consumer is created.
        from importlib.metadata import PackageNotFoundError, version

        try:
            own_version = version("trio-sqs")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            own_version = ""
        provider = _provider if _provider is not None else _otel_metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME, own_version or None)
        _instruments = _Instruments(meter)
    return _instruments


def _recorder(record: Callable[..., Any], attributes: Attributes) -> Callable[[float], object]:
    return partial(record, attributes=attributes)


def attach(counters: Counters, queue_url: str) -> None:
    """Have the histograms of ``counters`` (one consumer's, of ``queue_url``) record each value
    into the OpenTelemetry instruments as well. Does nothing without ``opentelemetry-api``."""
    instruments = _get_instruments()
    if instruments is None:
        return
    base = {"messaging.system": SYSTEM, "messaging.destination.name": queue_name(queue_url)}
    receive = {
        **base,
        "messaging.operation.name": "ReceiveMessage",
        "messaging.operation.type": "receive",
    }
    delete = {
        **base,
        "messaging.operation.name": "DeleteMessageBatch",
        "messaging.operation.type": "settle",
    }
    release = {
        **base,
        "messaging.operation.name": "ChangeMessageVisibilityBatch",
        "messaging.operation.type": "settle",
    }
    heartbeat = {
        **base,
        "messaging.operation.name": "ChangeMessageVisibilityBatch",
        "trio_sqs.heartbeat": "true",
    }
    process = {**base, "messaging.operation.name": "process", "messaging.operation.type": "process"}
    duration = instruments.operation_duration.record
    size = instruments.batch_size.record
    c = counters
    c.poll_duration_empty.sink = _recorder(duration, {**receive, "trio_sqs.poll.result": "empty"})
    c.poll_duration_messages.sink = _recorder(
        duration, {**receive, "trio_sqs.poll.result": "messages"}
    )
    c.delete_call_duration.sink = _recorder(duration, delete)
    c.release_call_duration.sink = _recorder(duration, release)
    c.heartbeat_call_duration.sink = _recorder(duration, heartbeat)
    c.handler_duration.sink = _recorder(instruments.process_duration.record, process)
    c.ack_latency.sink = _recorder(instruments.ack_latency.record, base)
    c.release_latency.sink = _recorder(instruments.release_latency.record, base)
    c.delete_batch_size.sink = _recorder(size, delete)
    c.release_batch_size.sink = _recorder(size, release)
    c.handler_batch_size.sink = _recorder(size, process)
    consumed = instruments.consumed.add

    def received(n: float) -> None:
        size(n, attributes=receive)
        if n:
            consumed(int(n), attributes=receive)

    c.poll_batch_size.sink = received
