"""Every option object of the library: keyword-only, frozen, validated at construction (before any
I/O), with messages that name the option, the value and the allowed range: :class:`Limits` and
:class:`RetryPolicy` (a client's), :class:`ConsumerOptions` (a consumer's).

(The command line's settings, which read flags and ``TRIO_SQS_*`` variables into these, live in
``trio_sqs._cli``.)
"""

from __future__ import annotations

import inspect
import math
import textwrap
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from ._exceptions import ConfigurationError

__all__ = [
    "MIN_RECEIVE_CONNECTIONS",
    "Limits",
    "RetryPolicy",
    "check_int_range",
    "check_number",
]


def check_int_range(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise :class:`ConfigurationError` unless ``low <= value <= high`` and value is an int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}", code="InvalidOption")
    if value < low or (high is not None and value > high):
        allowed = f"{low} to {high}" if high is not None else f">= {low}"
        raise ConfigurationError(
            f"{name}={value!r} is out of range (allowed: {allowed})", code="InvalidOption"
        )


def check_number(
    name: str,
    value: object,
    low: float = 0.0,
    high: float | None = None,
    *,
    allow_inf: bool = False,
    strict_low: bool = False,
) -> None:
    """Raise :class:`ConfigurationError` unless value is a real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}", code="InvalidOption")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ConfigurationError(f"{name}={value!r} must be a finite number", code="InvalidOption")
    too_low = value <= low if strict_low else value < low
    if too_low or (high is not None and value > high):
        op = ">" if strict_low else ">="
        allowed = f"{low} to {high}" if high is not None else f"{op} {low}"
        raise ConfigurationError(
            f"{name}={value!r} is out of range (allowed: {allowed})", code="InvalidOption"
        )


# The smallest long-poll budget of a client sized from its consumers: room for plain
# receive_messages calls when no consumer (or only small ones) shares the client.
MIN_RECEIVE_CONNECTIONS = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Connection budgets of a client.

    Requests wait for a budget slot in trio_sqs, never inside httpx's pool: cancelling a request
    that waits in httpcore's pool can leak the pool slot (encode/httpcore#1093). Long polls and the
    other calls have separate budgets, so a 20 s poll never starves a delete.

    The long-poll budget: with ``max_receive_connections=None`` (the default) it is sized from the
    consumers sharing the client: the sum of every open consumer's most pollers
    (``ConsumerOptions.pollers``, by default enough to keep its handlers busy, at most 10), and at
    least 4 for plain :meth:`SQSClient.receive_messages` calls. It grows when a consumer opens on
    the client and shrinks when one closes, so every consumer always has its long polls in flight
    and a message sent to an idle queue is received at once. An integer fixes the budget: if the
    consumers on the client may want more long polls than that, their polls queue behind each
    other, a message on a starved queue can wait up to a whole ``wait_time`` more (or several),
    and the client logs a warning (logger ``trio_sqs.client``) naming the size it needs.

    Attributes:
        max_receive_connections: ReceiveMessage calls in flight at once; ``None`` sizes it from
            the consumers sharing the client (see above).
        max_other_connections: every other call in flight at once. From 2 on, one of these
            slots is kept for visibility changes (releases and heartbeats), so slow deletes
            never hold up a release: the other calls use the rest.
        keepalive_expiry: seconds an idle connection is kept open.
    """

    max_receive_connections: int | None = None
    max_other_connections: int = 8
    keepalive_expiry: float = 30.0

    def __post_init__(self) -> None:
        if self.max_receive_connections is not None:
            check_int_range("max_receive_connections", self.max_receive_connections, 1, 1000)
        check_int_range("max_other_connections", self.max_other_connections, 1, 1000)
        check_number("keepalive_expiry", self.keepalive_expiry, 0.0)

    @property
    def max_connections(self) -> int | None:
        """Connections in use at once at most: both budgets, or ``None`` (no fixed bound) when the
        long-poll budget is sized from the consumers."""
        if self.max_receive_connections is None:
            return None
        return self.max_receive_connections + self.max_other_connections


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How failed requests are retried: exponential backoff with full jitter, bounded attempts.

    Throttling errors, 5xx responses and transport errors are retried; client errors never are.
    Each attempt is signed afresh.

    Attributes:
        max_attempts: attempts in all, the first included (1 disables retries).
        base_delay: the backoff before the second attempt is drawn from ``[0, base_delay]``.
        max_delay: cap on a single backoff.
    """

    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        check_int_range("max_attempts", self.max_attempts, 1, 100)
        check_number("base_delay", self.base_delay, 0.0)
        check_number("max_delay", self.max_delay, 0.0)
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"max_delay={self.max_delay!r} must be >= base_delay={self.base_delay!r}",
                code="InvalidOption",
            )

    def backoff_ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered delay after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


PollOnStop = Literal["abort", "land"]

_T = TypeVar("_T")


def option(default: _T, doc: str) -> _T:
    """A field with its description in its ``doc`` metadata: the one text that both the class's
    docstring (see :func:`document_fields`) and the command line's ``--help`` show."""
    return field(default=default, metadata={"doc": doc})


def document_fields(cls: type[Any]) -> None:
    """Append an ``Attributes:`` section to ``cls``'s docstring, built from its fields' ``doc``
    metadata (so ``help()`` and the API docs show every field, written once)."""
    section = ["Attributes:"]
    for f in fields(cls):
        section += textwrap.wrap(
            f"{f.name}: {f.metadata['doc']}",
            width=96,
            initial_indent="    ",
            subsequent_indent="        ",
        )
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\n" + "\n".join(section)


# SQS caps a message's total visibility at 12 hours from its first receipt.
MAX_VISIBILITY = 43_200
# Deletes wait up to this long to fill a batch when messages come slowly (see the Batcher).
MAX_ACK_WINDOW = 2.0


@dataclass(frozen=True, kw_only=True)
class ConsumerOptions:
    """Everything that tunes a consumer. Every field has a default suited to one worker process.

    Each field's description is in its ``doc`` metadata (the command line's help reads it too);
    the ``Attributes:`` section of this docstring is built from it.
    """

    concurrency: int = option(
        10,
        "Handlers (or batch handlers) running at once. Independent of ``batch_size``.",
    )
    batch_size: int | None = option(
        None,
        "MaxNumberOfMessages per ReceiveMessage (1-10), and the most messages a batch handler gets "
        "at once. Default: ``min(10, concurrency)`` (or 10 for batch handlers). Polls ask for fewer "
        "when ``concurrency + max_buffered`` is smaller.",
    )
    wait_time: int = option(
        20,
        "WaitTimeSeconds of each long poll (0-20).",
    )
    visibility_timeout: int = option(
        30,
        "The receive lease in seconds: the VisibilityTimeout asked for on every ReceiveMessage and "
        "renewed by heartbeats while a message is in hand. Keep it short: a message orphaned by an "
        "aborted long poll comes back after this long.",
    )
    heartbeat_interval: float | None = option(
        None,
        "Seconds between visibility heartbeats. Default: a third of the lease. Must be shorter than "
        "``visibility_timeout``.",
    )
    max_buffered: int | None = option(
        None,
        "Received messages allowed to wait for a free handler (backpressure). Default: "
        "``batch_size``.",
    )
    pollers: int | None = option(
        None,
        "Most long polls in flight at once. Default: enough to keep every handler busy, at most 10. "
        "Polls adapt to the load: one while polls come back short (an idle consumer has exactly one "
        "poll in flight), one more each time a poll comes back full.",
    )
    batch_window: float = option(
        0.0,
        "Seconds a poller waits, after a poll that came back short, from that poll's sending before "
        "it polls again (like Lambda's MaximumBatchingWindowInSeconds): fewer requests per message "
        "at low rates, for up to this much latency. Deletes are batched over at least this window "
        "too. Default 0: poll again at once.",
    )
    grace_period: float = option(
        10.0,
        "Seconds running handlers may go on after stop before they are cancelled.",
    )
    flush_timeout: float = option(
        5.0,
        "Seconds the final flush of deletes and releases may take at stop.",
    )
    poll_on_stop: PollOnStop = option(
        "land",
        'What happens at stop to a long poll already on the wire: ``"abort"`` ends it at once; '
        '``"land"`` lets it land while handlers are still inside their grace period (it never '
        "extends the shutdown: it is aborted once no handler runs). Either way what it brings, like "
        "every message handed back from stop on, is released with a visibility that outlasts every "
        'poll SQS may still be running for us (see the README\'s "Shutdown"). An idle consumer aborts '
        "at once either way.",
    )
    handler_timeout: float | None = option(
        None,
        "Optional deadline per handler call, in seconds. A handler that overruns is cancelled and "
        "its message released with the failure backoff.",
    )
    failure_backoff: float = option(
        1.0,
        "Seconds a failed message stays invisible after its first failed attempt; doubles with each "
        "further receive (``ApproximateReceiveCount``).",
    )
    max_failure_backoff: float = option(
        900.0,
        "Cap of that backoff, in seconds.",
    )
    ack_interval: float = option(
        0.1,
        "Shortest batch window of deletes and releases: a partial batch is sent after this long. For "
        "deletes the window grows (up to 2 s or ``batch_window``, at most a quarter of the lease and "
        "half of ``visibility_timeout - heartbeat_interval``, even below this) while batches go out "
        "partial, so a slow queue costs fewer DeleteMessageBatch calls; it shrinks back as they "
        "fill.",
    )
    error_backoff: float = option(
        0.5,
        "Initial pause of a poller after a transient error (doubles, capped at "
        "``max_error_backoff``, with full jitter).",
    )
    max_error_backoff: float = option(
        20.0,
        "Cap of the poller's error backoff.",
    )
    auth_error_backoff: float = option(
        30.0,
        "Pause of a poller after an access or credentials error.",
    )
    attribute_names: tuple[str, ...] = option(
        ("All",),
        "System attributes to request (default all).",
    )
    message_attribute_names: tuple[str, ...] = option(
        ("All",),
        "Message attributes to request (default all).",
    )
    random_seed: int | None = option(
        None,
        "Seed of the consumer's own random generator (``random.Random``), which draws the jitter of "
        "its pollers' error backoff. Default: seeded from the operating system. These draws never "
        "touch the global ``random`` module: seeding it elsewhere neither changes them nor is "
        "disturbed by them.",
    )

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
        check_number("batch_window", self.batch_window, 0.0, 20.0)
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
        if self.random_seed is not None and (
            isinstance(self.random_seed, bool) or not isinstance(self.random_seed, int)
        ):
            raise ConfigurationError(
                f"random_seed must be an integer or None, got {self.random_seed!r}",
                code="InvalidOption",
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

    def effective_max_ack_interval(self) -> float:
        """The longest a partial batch of deletes may wait: it grows towards this at low rates.
        At most a quarter of the lease and half of what is left of a lease between heartbeats,
        even below ``ack_interval``."""
        # A settled message gets no more heartbeats: the lease it has left can be as short as
        # lease - heartbeat_interval. The delete must go out well within it.
        left = self.visibility_timeout - self.effective_heartbeat_interval()
        return min(max(MAX_ACK_WINDOW, self.batch_window), self.visibility_timeout / 4, left / 2)

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


document_fields(ConsumerOptions)
