"""Consumer statistics: counters and histograms kept by the consumer, frozen snapshots handed to
users."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "DURATION_BUCKETS",
    "ConsumerState",
    "ConsumerStatistics",
    "Counters",
    "HistogramSnapshot",
    "Recorder",
]

ConsumerState = Literal["starting", "running", "stopping", "stopped"]

#: Upper bounds (seconds) of the duration and latency histograms: SQS calls take milliseconds,
#: long polls up to 20 s, acknowledgements their batch window (up to a minute).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
#: Upper bounds of the batch size histograms (SQS calls take 10 messages at most; a batch
#: handler's batch is at most ``batch_size``, at most 10).
BATCH_SIZE_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A frozen copy of one of a consumer's histograms (see :class:`ConsumerStatistics`).

    Attributes:
        buckets: The buckets' upper bounds, ascending (seconds, or messages for batch sizes).
        counts: Observations per bucket, not cumulative: ``counts[i]`` counts the values in
            ``(buckets[i-1], buckets[i]]``; one more entry at the end counts those above the
            last bound. ``len(counts) == len(buckets) + 1``.
        sum: The sum of every observed value.
        count: How many values were observed (``sum(counts)``).
    """

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0
    count: int = 0

    @classmethod
    def empty(cls, buckets: Sequence[float]) -> HistogramSnapshot:
        return cls(tuple(buckets), (0,) * (len(buckets) + 1))

    @property
    def mean(self) -> float | None:
        """The mean observed value, ``None`` before any observation."""
        return self.sum / self.count if self.count else None

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, ending with
        ``(math.inf, count)``: Prometheus's ``le`` buckets."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Recorder:
    """A fixed-bucket histogram the consumer observes values into (no dependency).

    ``sink``, when set (OpenTelemetry, see ``trio_sqs._otel_metrics``), is called with each
    observed value as well.
    """

    __slots__ = ("buckets", "count", "counts", "sink", "sum")

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self.sink: Callable[[float], object] | None = None

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1
        if self.sink is not None:
            self.sink(value)

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.buckets, tuple(self.counts), self.sum, self.count)


def _durations() -> Recorder:
    return Recorder(DURATION_BUCKETS)


def _batch_sizes() -> Recorder:
    return Recorder(BATCH_SIZE_BUCKETS)


@dataclass(slots=True)
class Counters:
    """Mutable counters and histograms; only the consumer writes them."""

    received: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    timed_out: int = 0
    cancelled_at_grace: int = 0
    released: int = 0
    release_failed: int = 0
    release_expired: int = 0
    deleted: int = 0
    delete_failed: int = 0
    visibility_extensions: int = 0
    heartbeat_errors: int = 0
    polls: int = 0
    empty_polls: int = 0
    aborted_polls: int = 0
    poll_errors: int = 0
    corrupt: int = 0
    unflushed: int = 0
    # Histograms (Recorder), snapshotted into the statistics' fields of the same names.
    poll_duration_empty: Recorder = field(default_factory=_durations)
    poll_duration_messages: Recorder = field(default_factory=_durations)
    ack_latency: Recorder = field(default_factory=_durations)
    release_latency: Recorder = field(default_factory=_durations)
    delete_call_duration: Recorder = field(default_factory=_durations)
    release_call_duration: Recorder = field(default_factory=_durations)
    heartbeat_call_duration: Recorder = field(default_factory=_durations)
    handler_duration: Recorder = field(default_factory=_durations)
    poll_batch_size: Recorder = field(default_factory=_batch_sizes)
    delete_batch_size: Recorder = field(default_factory=_batch_sizes)
    release_batch_size: Recorder = field(default_factory=_batch_sizes)
    handler_batch_size: Recorder = field(default_factory=_batch_sizes)


_NO_DURATIONS = HistogramSnapshot.empty(DURATION_BUCKETS)
_NO_BATCHES = HistogramSnapshot.empty(BATCH_SIZE_BUCKETS)


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A snapshot of a consumer's state, counters and histograms, from :meth:`Consumer.statistics`.

    The histograms (:class:`HistogramSnapshot`, from ``poll_duration_empty`` on) are measured on
    Trio's clock, in seconds (batch sizes: in messages), since the consumer started; they are
    left out of the ``repr``.

    Attributes:
        state: ``"starting"``, ``"running"``, ``"stopping"`` or ``"stopped"``.
        received: Valid messages received.
        completed: Handler calls that returned (their messages were queued for deletion).
        failed: Handler calls that raised (messages left to reappear after the failure backoff).
        retried: Handler calls that raised :class:`Retry`.
        timed_out: Handler calls cancelled by ``handler_timeout``.
        cancelled_at_grace: Handler calls cancelled at the end of the shutdown grace period.
        released: Messages made visible again early by us (failed, retried, timed out,
            cancelled, or never started before stop), as confirmed by SQS.
        release_failed: Releases SQS refused or that could not be sent.
        release_expired: Releases not sent because our lease on the message may already have
            run out (its heartbeats failed or came late): it is visible again, or another
            consumer holds it and a release with our receipt handle could take it from them.
        deleted: Messages deleted, as confirmed by SQS.
        delete_failed: Deletes SQS refused or that could not be sent (those messages reappear).
        visibility_extensions: Lease extensions confirmed by SQS (heartbeats).
        heartbeat_errors: Heartbeat calls or entries that failed.
        polls: ReceiveMessage calls that returned.
        empty_polls: Of those, the ones that returned no message.
        aborted_polls: Long polls cancelled after their request was sent. Each may orphan
            messages until the receive lease ends (SQS does not notice an abandoned poll).
        poll_errors: ReceiveMessage calls that failed (after the client's retries).
        corrupt: Messages that failed their MD5 check (never handed to a handler).
        unflushed: Deletes and releases still unsent when the flush timeout ended.
        in_flight: Handler calls running now.
        buffered: Messages received and waiting for a handler.
        last_poll_at: Wall-clock time (``time.time()``) of the last successful poll, or ``None``.
        poll_duration_empty: ReceiveMessage calls that came back with no message, from the
            request written to the answer (an idle long poll: its whole ``WaitTimeSeconds``).
            Aborted and failed polls are not observed (see ``aborted_polls``, ``poll_errors``).
        poll_duration_messages: ReceiveMessage calls that came back with messages (corrupt ones
            included), from the request written to the answer.
        ack_latency: Per deleted message, from its handler's return to SQS confirming the
            delete: the batch window (``ack_interval``), the call, and any retries.
        release_latency: Per released message (as counted by ``released``), from the decision
            to release it (its handler failed, raised :class:`Retry`, timed out; or the stop
            handed it back) to SQS confirming the release.
        delete_call_duration: DeleteMessageBatch calls SQS answered (the client's retries
            included); calls that failed are not observed.
        release_call_duration: ChangeMessageVisibilityBatch calls of releases SQS answered.
        heartbeat_call_duration: ChangeMessageVisibilityBatch calls of heartbeats (lease
            extensions) SQS answered.
        handler_duration: Handler invocations, whatever their outcome (the handler with its
            middleware). For a histogram by outcome, see :class:`trio_sqs.prometheus.HandlerDurations`.
        poll_batch_size: Valid messages per answered ReceiveMessage call (0 for an empty poll).
        delete_batch_size: Messages per DeleteMessageBatch call sent.
        release_batch_size: Messages per ChangeMessageVisibilityBatch call of releases sent.
        handler_batch_size: Messages per invocation of a batch handler (empty for a handler of
            single messages).
    """

    state: ConsumerState
    received: int
    completed: int
    failed: int
    retried: int
    timed_out: int
    cancelled_at_grace: int
    released: int
    release_failed: int
    release_expired: int
    deleted: int
    delete_failed: int
    visibility_extensions: int
    heartbeat_errors: int
    polls: int
    empty_polls: int
    aborted_polls: int
    poll_errors: int
    corrupt: int
    unflushed: int
    in_flight: int
    buffered: int
    last_poll_at: float | None
    poll_duration_empty: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    poll_duration_messages: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    ack_latency: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    release_latency: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    delete_call_duration: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    release_call_duration: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    heartbeat_call_duration: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    handler_duration: HistogramSnapshot = field(default=_NO_DURATIONS, repr=False)
    poll_batch_size: HistogramSnapshot = field(default=_NO_BATCHES, repr=False)
    delete_batch_size: HistogramSnapshot = field(default=_NO_BATCHES, repr=False)
    release_batch_size: HistogramSnapshot = field(default=_NO_BATCHES, repr=False)
    handler_batch_size: HistogramSnapshot = field(default=_NO_BATCHES, repr=False)

    @classmethod
    def from_counters(
        cls,
        counters: Counters,
        *,
        state: ConsumerState,
        in_flight: int,
        buffered: int,
        last_poll_at: float | None,
    ) -> ConsumerStatistics:
        values: dict[str, Any] = {}
        for f in fields(Counters):
            value = getattr(counters, f.name)
            values[f.name] = value.snapshot() if isinstance(value, Recorder) else value
        return cls(
            state=state,
            in_flight=in_flight,
            buffered=buffered,
            last_poll_at=last_poll_at,
            **values,
        )
