"""Batching of acknowledgements (DeleteMessageBatch) and releases (ChangeMessageVisibilityBatch).

Entries are grouped up to 10 per call and sent when a batch is full or the batch window has passed
since the oldest pending entry. The window starts at ``interval`` and, with ``max_interval`` above
it, adapts to the rate: each time a batch goes out partial because the window ran out, it grows to
what would have filled it at that rate (at least doubling, up to ``max_interval``), and halves (down to ``interval``) each time a batch fills within half
of it.
At a low rate that is fewer, fuller calls; at a high rate batches fill at once anyway. Entries that
fail are retried a few times, then reported (logged and counted); an invalid receipt handle is final
at once (the message was received again elsewhere).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import trio

from ._client import SQSClient
from ._exceptions import SQSError
from ._message import BatchResult
from ._stats import Recorder

__all__ = ["Batcher", "Entry"]

log = logging.getLogger("trio_sqs.consumer")

BATCH_LIMIT = 10
MAX_ENTRY_ATTEMPTS = 3
# A release is only sent while at least this much of its lease is left (its trip to SQS included).
LEASE_MARGIN = 0.5
_FINAL_CODES = {"ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight"}


@dataclass(slots=True)
class Entry:
    message_id: str
    receipt_handle: str
    visibility: int | None = None  # None: delete; otherwise the new visibility timeout
    attempts: int = 0
    # Releases: when our receive lease ends at the earliest (trio clock). Past it (less a margin
    # for the trip), the message may be visible again or held by another consumer, and a release
    # with our receipt handle could take it from them: it is dropped instead of sent.
    lease_end: float | None = None
    # False for a release that only hides again a message released earlier (see
    # Leases.rehide): its outcome is not counted a second time.
    counted: bool = True
    # Releases: when the last attempt was sent (trio clock), with ``visibility`` as sent.
    sent_at: float = 0.0
    # When the consumer settled the message (trio clock): the start of its ack or release
    # latency, observed when SQS confirms the entry (counted entries only).
    created_at: float = 0.0


class Batcher:
    """Collects entries and sends them in batches of up to 10.

    Args:
        client: The SQS client.
        queue_url: The queue.
        kind: ``"delete"`` or ``"release"``.
        interval: Longest wait before a partial batch is sent.
        on_success: Called with each entry once SQS confirmed it.
        on_failure: Called with each entry that finally failed, and the error code.
        on_expired: Called with each entry dropped unsent because its ``lease_end`` had passed.
        max_interval: Longest batch window (default: ``interval``, a fixed window).
        shield: Each call runs inside ``with shield():`` (the consumer's leases pass a bounded,
            shielded scope, so a call on the wire finishes when :meth:`run` is cancelled).
        visibility_floor: Releases: read when a batch is sent; no entry goes out with a shorter
            visibility timeout.
        latency: Observes, per counted entry SQS confirmed, the time since its ``created_at``.
        call_duration: Observes the duration of each call SQS answered.
        batch_size: Observes the entries of each call sent.
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        kind: str,
        interval: float,
        on_success: Callable[[Entry], None],
        on_failure: Callable[[Entry, str], None],
        on_expired: Callable[[Entry], None] | None = None,
        *,
        max_interval: float | None = None,
        shield: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        visibility_floor: Callable[[], int] | None = None,
        latency: Recorder | None = None,
        call_duration: Recorder | None = None,
        batch_size: Recorder | None = None,
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._kind = kind
        self._interval = interval
        self._on_success = on_success
        self._on_failure = on_failure
        self._on_expired = on_expired
        self._max_interval = max(interval, max_interval if max_interval is not None else interval)
        self.window = interval
        self._shield = shield
        self._visibility_floor = visibility_floor
        self._latency = latency
        self._call_duration = call_duration
        self._batch_size = batch_size
        self._pending: list[Entry] = []
        self._wakeup = trio.Event()
        self._urgent = False
        self.in_flight = 0
        # Entries of the calls on the wire now, by receipt handle.
        self.on_the_wire: dict[str, Entry] = {}
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def pending(self) -> int:
        """Entries not yet confirmed: waiting or on the wire."""
        return len(self._pending) + self.in_flight

    def add(self, entry: Entry) -> None:
        self._pending.append(entry)
        if len(self._pending) >= BATCH_LIMIT or self._urgent or len(self._pending) == 1:
            self._wakeup.set()

    def hurry(self) -> None:
        """Send pending entries now instead of waiting for ``interval`` (used at shutdown)."""
        self._urgent = True
        self._wakeup.set()

    async def run(self) -> None:
        """Send batches until cancelled.

        Cancellation: entries not yet sent stay pending (see :meth:`drain`); entries of a call
        cancelled on the wire stay counted in :attr:`pending` (the call may or may not have
        reached SQS).
        """
        async with trio.open_nursery() as nursery:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if not self._pending:
                    continue
                expired = False
                if len(self._pending) < BATCH_LIMIT and not self._urgent:
                    opened = trio.current_time()
                    with trio.move_on_after(self.window) as window:
                        while len(self._pending) < BATCH_LIMIT and not self._urgent:
                            await self._wakeup.wait()
                            self._wakeup = trio.Event()
                    expired = window.cancelled_caught
                    if expired:
                        # Long enough to fill a batch at the rate this one filled (at least
                        # twice as long), within max_interval.
                        grow = max(2.0, BATCH_LIMIT / max(1, len(self._pending)))
                        self.window = min(self._max_interval, self.window * grow)
                    elif not self._urgent and trio.current_time() - opened < self.window / 2:
                        self.window = max(self._interval, self.window / 2)
                # Sent because a batch filled: full batches only; the rest (fewer than 10,
                # which arrived meanwhile) waits for a window of its own.
                for chunk in self._take_all(full_only=not (expired or self._urgent)):
                    nursery.start_soon(self._send, chunk)
                if self._pending:
                    self._wakeup.set()

    async def drain(self) -> None:
        """Send everything pending now and wait until nothing is pending or in flight.

        Entries that fail are retried up to a few times first. Must be called while :meth:`run`
        is running.

        Held entries are waited for too (see :meth:`hold`).

        Cancellation: unsent entries stay pending and are counted by :attr:`pending`.
        """
        self.hurry()
        while self._pending or self.in_flight:
            await self._changed.park()

    def _take_all(self, *, full_only: bool = False) -> list[list[Entry]]:
        pending, self._pending = self._pending, []
        # Several entries for one receipt handle (e.g. a retried entry and a newer one): one call
        # may not name a handle twice, and the last entry wins.
        by_handle: dict[str, Entry] = {}
        for entry in pending:
            by_handle[entry.receipt_handle] = entry
        now = trio.current_time()
        entries = []
        for entry in by_handle.values():
            if entry.lease_end is not None and now > entry.lease_end - LEASE_MARGIN:
                if self._on_expired is not None:
                    self._on_expired(entry)
            else:
                entries.append(entry)
        if len(entries) < len(by_handle):
            self._changed.unpark_all()
        if full_only:
            cut = len(entries) - len(entries) % BATCH_LIMIT
            entries, self._pending = entries[:cut], entries[cut:]
        # Counted as in flight from here, not from when the send task starts: in between, the
        # entries would be in neither count and `pending` would wrongly read 0.
        self.in_flight += len(entries)
        return [entries[i : i + BATCH_LIMIT] for i in range(0, len(entries), BATCH_LIMIT)]

    async def _send(self, chunk: list[Entry]) -> None:
        ids = {str(i): entry for i, entry in enumerate(chunk)}
        for entry in chunk:
            self.on_the_wire[entry.receipt_handle] = entry
        result: BatchResult | None = None
        if self._batch_size is not None:
            self._batch_size.observe(len(chunk))
        sent_at = answered_at = trio.current_time()
        try:
            handles = {i: e.receipt_handle for i, e in ids.items()}
            with self._shield():
                if self._kind == "delete":
                    result = await self._client.delete_message_batch(self._queue_url, handles)
                    answered_at = trio.current_time()
                else:
                    floor = self._visibility_floor() if self._visibility_floor else 0
                    for entry in chunk:
                        entry.visibility = max(entry.visibility or 0, floor)
                        entry.sent_at = sent_at
                    result = await self._client.change_message_visibility_batch(
                        self._queue_url,
                        handles,
                        {i: e.visibility or 0 for i, e in ids.items()},
                        # Retried here, entry by entry, reading the floor afresh each time: a
                        # client-level retry would resend the visibility read before a stop.
                        retry=False,
                    )
                    answered_at = trio.current_time()
        except SQSError as exc:
            # The client already retried transient errors; try these entries again later.
            log.warning("%s batch of %d failed: %s", self._kind, len(chunk), exc)
            for entry in chunk:
                self._retry_or_fail(entry, exc.code)
            return
        except trio.Cancelled:
            # Fate unknown (the call may or may not have reached SQS): keep the entries counted,
            # so a shutdown cut short reports them instead of losing them silently.
            self._requeue(chunk)
            raise
        finally:
            self.in_flight -= len(chunk)
            for entry in chunk:
                if self.on_the_wire.get(entry.receipt_handle) is entry:
                    del self.on_the_wire[entry.receipt_handle]
            self._changed.unpark_all()
        if result is None:
            # The shield's bound cut the call short: fate unknown, as above.
            self._requeue(chunk)
            return
        # Each entry once: the client reports an entry SQS's answer left out as failed
        # (MissingFromAnswer); one left out of the result anyway counts as failed the same way,
        # never as dropped.
        if self._call_duration is not None:
            self._call_duration.observe(answered_at - sent_at)
        latency = self._latency
        for entry_id in result.successful:
            confirmed = ids.pop(entry_id, None)
            if confirmed is not None:
                if latency is not None and confirmed.counted:
                    latency.observe(answered_at - confirmed.created_at)
                self._on_success(confirmed)
        for failure in result.failed:
            refused = ids.pop(failure.entry_id, None)
            if refused is None:
                continue
            if failure.code in _FINAL_CODES:
                self._on_failure(refused, failure.code)
            else:
                self._retry_or_fail(refused, failure.code)
        for left_out in ids.values():
            self._retry_or_fail(left_out, "MissingFromAnswer")

    def _requeue(self, chunk: list[Entry]) -> None:
        """Put entries of a call whose outcome is unknown back, and wake the loop for them (and
        for what was added meanwhile: add() only wakes it on the first and the tenth entry)."""
        self._pending.extend(chunk)
        self._wakeup.set()

    def _retry_or_fail(self, entry: Entry, code: str) -> None:
        entry.attempts += 1
        if entry.attempts >= MAX_ENTRY_ATTEMPTS:
            self._on_failure(entry, code)
        else:
            self.add(entry)
