"""Consumer options: keyword-only, frozen, validated at construction (before any I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ._config import check_int_range, check_number
from ._exceptions import ConfigurationError

__all__ = ["ConsumerOptions", "PollOnStop"]

PollOnStop = Literal["abort", "land"]

# SQS caps a message's total visibility at 12 hours from its first receipt.
MAX_VISIBILITY = 43_200


@dataclass(frozen=True, kw_only=True)
class ConsumerOptions:
    """Everything that tunes a consumer. Every field has a default suited to one worker process.

    Attributes:
        concurrency: Handlers (or batch handlers) running at once. Independent of ``batch_size``.
        batch_size: MaxNumberOfMessages per ReceiveMessage (1-10), and the most messages a batch
            handler gets at once. Default: ``min(10, concurrency)`` (or 10 for batch handlers).
            Polls ask for fewer when ``concurrency + max_buffered`` is smaller.
        wait_time: WaitTimeSeconds of each long poll (0-20).
        visibility_timeout: The receive lease in seconds: the VisibilityTimeout asked for on every
            ReceiveMessage and renewed by heartbeats while a message is in hand. Keep it short: a
            message orphaned by an aborted long poll comes back after this long.
        heartbeat_interval: Seconds between visibility heartbeats. Default: a third of the lease.
            Must be shorter than ``visibility_timeout``.
        max_buffered: Received messages allowed to wait for a free handler (backpressure).
            Default: ``batch_size``.
        pollers: Concurrent long polls. Default: enough to keep every handler busy, at most 10.
        grace_period: Seconds running handlers may go on after stop before they are cancelled.
        flush_timeout: Seconds the final flush of deletes and releases may take at stop.
        poll_on_stop: What happens to a long poll in flight at stop: ``"abort"`` drops it at once;
            ``"land"`` lets it complete while handlers are still inside their grace period (never
            extending shutdown) and releases what it returns. An idle consumer aborts either way.
        handler_timeout: Optional deadline per handler call, in seconds. A handler that overruns
            is cancelled and its message released with the failure backoff.
        failure_backoff: Seconds a failed message stays invisible after its first failed attempt;
            doubles with each further receive (``ApproximateReceiveCount``).
        max_failure_backoff: Cap of that backoff, in seconds.
        ack_interval: Longest wait before a partial batch of deletes or releases is sent.
        error_backoff: Initial pause of a poller after a transient error (doubles, capped at
            ``max_error_backoff``, with full jitter).
        max_error_backoff: Cap of the poller's error backoff.
        auth_error_backoff: Pause of a poller after an access or credentials error.
        attribute_names: System attributes to request (default all).
        message_attribute_names: Message attributes to request (default all).
    """

    concurrency: int = 10
    batch_size: int | None = None
    wait_time: int = 20
    visibility_timeout: int = 30
    heartbeat_interval: float | None = None
    max_buffered: int | None = None
    pollers: int | None = None
    grace_period: float = 10.0
    flush_timeout: float = 5.0
    poll_on_stop: PollOnStop = "land"
    handler_timeout: float | None = None
    failure_backoff: float = 1.0
    max_failure_backoff: float = 900.0
    ack_interval: float = 0.1
    error_backoff: float = 0.5
    max_error_backoff: float = 20.0
    auth_error_backoff: float = 30.0
    attribute_names: tuple[str, ...] = ("All",)
    message_attribute_names: tuple[str, ...] = ("All",)

    def __post_init__(self) -> None:
        check_int_range("concurrency", self.concurrency, 1, 10_000)
        if self.batch_size is not None:
            check_int_range("batch_size", self.batch_size, 1, 10)
        check_int_range("wait_time", self.wait_time, 0, 20)
        check_int_range("visibility_timeout", self.visibility_timeout, 1, MAX_VISIBILITY)
        if self.heartbeat_interval is not None:
            check_number("heartbeat_interval", self.heartbeat_interval, 0.0, strict_low=True)
            if self.heartbeat_interval >= self.visibility_timeout:
                raise ConfigurationError(
                    f"heartbeat_interval={self.heartbeat_interval!r} must be shorter than "
                    f"visibility_timeout={self.visibility_timeout!r}",
                    code="InvalidOption",
                )
        if self.max_buffered is not None:
            check_int_range("max_buffered", self.max_buffered, 0, 100_000)
        if self.pollers is not None:
            check_int_range("pollers", self.pollers, 1, 100)
        check_number("grace_period", self.grace_period, 0.0)
        check_number("flush_timeout", self.flush_timeout, 0.0)
        if self.poll_on_stop not in ("abort", "land"):
            raise ConfigurationError(
                f"poll_on_stop={self.poll_on_stop!r} must be 'abort' or 'land'",
                code="InvalidOption",
            )
        if self.handler_timeout is not None:
            check_number("handler_timeout", self.handler_timeout, 0.0, strict_low=True)
        check_number("failure_backoff", self.failure_backoff, 0.0, MAX_VISIBILITY)
        check_number("max_failure_backoff", self.max_failure_backoff, 0.0, MAX_VISIBILITY)
        check_number("ack_interval", self.ack_interval, 0.0, 60.0)
        check_number("error_backoff", self.error_backoff, 0.0)
        check_number("max_error_backoff", self.max_error_backoff, 0.0)
        check_number("auth_error_backoff", self.auth_error_backoff, 0.0)
        for name in ("attribute_names", "message_attribute_names"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigurationError(
                    f"{name} must be a tuple of strings, got {value!r}", code="InvalidOption"
                )

    # -- derived values ----------------------------------------------------------------------

    def effective_batch_size(self, batch_handler: bool) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 10 if batch_handler else min(10, self.concurrency)

    def effective_heartbeat_interval(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.visibility_timeout / 3

    def capacity(self, batch_handler: bool) -> int:
        """Messages the consumer may hold at once: running plus buffered."""
        batch = self.effective_batch_size(batch_handler)
        running = self.concurrency * (batch if batch_handler else 1)
        buffered = self.max_buffered if self.max_buffered is not None else batch
        return running + buffered

    def poll_size(self, batch_handler: bool) -> int:
        """MaxNumberOfMessages of each poll: the batch size, or less if the capacity is smaller
        (a poll is only sent when all it may return fits, so it never exceeds ``max_buffered``)."""
        return min(self.effective_batch_size(batch_handler), self.capacity(batch_handler))

    def effective_pollers(self, batch_handler: bool) -> int:
        if self.pollers is not None:
            return self.pollers
        return max(
            1, min(10, math.ceil(self.capacity(batch_handler) / self.poll_size(batch_handler)))
        )

    def failure_visibility(self, receive_count: int) -> int:
        """Seconds a failed message stays invisible, growing with its receive count."""
        delay = self.failure_backoff * (2 ** max(0, min(receive_count, 40) - 1))
        return int(min(self.max_failure_backoff, math.ceil(delay)))
