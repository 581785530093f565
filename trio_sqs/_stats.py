"""Consumer statistics: counters kept by the consumer, frozen snapshots handed to users."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["ConsumerState", "ConsumerStatistics", "Counters"]

ConsumerState = Literal["starting", "running", "stopping", "stopped"]


@dataclass(slots=True)
class Counters:
    """Mutable counters; only the consumer writes them."""

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


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A snapshot of a consumer's state and counters, from :meth:`Consumer.statistics`.

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
        values = {f.name: getattr(counters, f.name) for f in fields(Counters)}
        return cls(
            state=state,
            in_flight=in_flight,
            buffered=buffered,
            last_poll_at=last_poll_at,
            **values,
        )
