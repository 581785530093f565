"""Batching of acknowledgements (DeleteMessageBatch) and releases (ChangeMessageVisibilityBatch).

Entries are grouped up to 10 per call and sent when a batch is full or ``interval`` has passed since
the oldest pending entry. Entries that fail are retried a few times, then reported (logged and
counted); an invalid receipt handle is final at once (the message was received again elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ._client import SQSClient
from ._exceptions import SQSError

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
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._kind = kind
        self._interval = interval
        self._on_success = on_success
        self._on_failure = on_failure
        self._on_expired = on_expired
        self._pending: list[Entry] = []
        # Entries kept back until :meth:`unhold` (a release waits for a heartbeat on the wire).
        self._held: dict[str, Entry] = {}
        self._wakeup = trio.Event()
        self._urgent = False
        self.in_flight = 0
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def pending(self) -> int:
        """Entries not yet confirmed: waiting, held back, or on the wire."""
        return len(self._pending) + self.in_flight + len(self._held)

    def add(self, entry: Entry) -> None:
        self._pending.append(entry)
        if len(self._pending) >= BATCH_LIMIT or self._urgent or len(self._pending) == 1:
            self._wakeup.set()

    def hold(self, entry: Entry) -> None:
        """Keep ``entry`` back until :meth:`unhold` is called with its receipt handle. It counts
        as pending meanwhile, so :meth:`drain` waits for it."""
        self._held[entry.receipt_handle] = entry

    def unhold(self, receipt_handle: str, lease_end: float | None) -> None:
        """Send the entry held for ``receipt_handle``, if any, like :meth:`add`, with its lease
        now ending at ``lease_end``."""
        entry = self._held.pop(receipt_handle, None)
        if entry is not None:
            entry.lease_end = lease_end
            self.add(entry)
            self._changed.unpark_all()

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
                if len(self._pending) < BATCH_LIMIT and not self._urgent:
                    with trio.move_on_after(self._interval):
                        while len(self._pending) < BATCH_LIMIT and not self._urgent:
                            await self._wakeup.wait()
                            self._wakeup = trio.Event()
                for chunk in self._take_all():
                    nursery.start_soon(self._send, chunk)

    async def drain(self) -> None:
        """Send everything pending now and wait until nothing is pending or in flight.

        Entries that fail are retried up to a few times first. Must be called while :meth:`run`
        is running.

        Held entries are waited for too (see :meth:`hold`).

        Cancellation: unsent entries stay pending and are counted by :attr:`pending`.
        """
        self.hurry()
        while self._pending or self.in_flight or self._held:
            await self._changed.park()

    def _take_all(self) -> list[list[Entry]]:
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
        # Counted as in flight from here, not from when the send task starts: in between, the
        # entries would be in neither count and `pending` would wrongly read 0.
        self.in_flight += len(entries)
        return [entries[i : i + BATCH_LIMIT] for i in range(0, len(entries), BATCH_LIMIT)]

    async def _send(self, chunk: list[Entry]) -> None:
        ids = {str(i): entry for i, entry in enumerate(chunk)}
        try:
            handles = {i: e.receipt_handle for i, e in ids.items()}
            if self._kind == "delete":
                result = await self._client.delete_message_batch(self._queue_url, handles)
            else:
                result = await self._client.change_message_visibility_batch(
                    self._queue_url,
                    handles,
                    {i: e.visibility or 0 for i, e in ids.items()},
                )
        except SQSError as exc:
            # The client already retried transient errors; try these entries again later.
            log.warning("%s batch of %d failed: %s", self._kind, len(chunk), exc)
            for entry in chunk:
                self._retry_or_fail(entry, exc.code)
            return
        except trio.Cancelled:
            # Fate unknown (the call may or may not have reached SQS): keep the entries counted,
            # so a shutdown cut short reports them instead of losing them silently.
            self._pending.extend(chunk)
            raise
        finally:
            self.in_flight -= len(chunk)
            self._changed.unpark_all()
        # Each entry once: the client reports an entry SQS's answer left out as failed
        # (MissingFromAnswer); one left out of the result anyway counts as failed the same way,
        # never as dropped.
        for entry_id in result.successful:
            confirmed = ids.pop(entry_id, None)
            if confirmed is not None:
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

    def _retry_or_fail(self, entry: Entry, code: str) -> None:
        entry.attempts += 1
        if entry.attempts >= MAX_ENTRY_ATTEMPTS:
            self._on_failure(entry, code)
        else:
            self.add(entry)
