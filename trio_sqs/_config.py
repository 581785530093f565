"""Option objects: keyword-only, frozen, validated at construction (before any I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        max_other_connections: every other call in flight at once.
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
