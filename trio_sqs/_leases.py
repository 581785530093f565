"""Messages in hand: the tracked set, their heartbeats, and the deletes and releases that settle them.

A message is in hand from the moment it is received (buffered or running) until a handler is done
with it. Then it is settled: acknowledged (a batched DeleteMessageBatch) or released (a batched
ChangeMessageVisibilityBatch that makes it visible again after some seconds). Settling removes it
from the tracked set before anything is sent, so a heartbeat never starts for a settled message.

**The one rule between heartbeats and releases.** A heartbeat (which extends a lease by a whole
visibility timeout) and a release (which shortens it) for one message are never on the wire
together: SQS applies whichever arrives last, and a heartbeat landing after the release would hide
the message for a whole lease. So a release whose message has a heartbeat on the wire is held back
until that heartbeat has returned, and is then sent with the lease end the heartbeat left. (Sending
it at once and again later is wrong too: meanwhile another consumer may have received the message,
and the repeated release would take it from under them.) The rule lives in :meth:`Leases.release`
and :meth:`Leases._extend`, nowhere else.

**Requests on the wire finish.** Each heartbeat, delete and release call runs in a shielded scope
bounded by :data:`REQUEST_BOUND` and by the consumer's shutdown deadline (:meth:`Leases.bound`), so
stopping the loops that send them never leaves a call whose effect on SQS is unknown.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from ._batcher import BATCH_LIMIT, Batcher, Entry
from ._client import SQSClient
from ._exceptions import SQSError
from ._message import Message
from ._stats import Counters

__all__ = ["REQUEST_BOUND", "Leases", "Tracked"]

log = logging.getLogger("trio_sqs.consumer")

# SQS caps a message's total visibility at 12 hours from its first receipt.
TWELVE_HOURS = 12 * 3600
# Heartbeats look for due messages this many times per interval, so that no message goes longer
# than one interval between extensions.
TICKS_PER_INTERVAL = 4
# The longest a heartbeat, delete or release call may run on, shielded: longer than the client's
# own timeout for such a call (30 s), which therefore ends it first.
REQUEST_BOUND = 35.0


@dataclass(slots=True)
class Tracked:
    message: Message
    received_at: float
    extended_at: float


class Leases:
    """The messages a consumer holds, and everything sent to SQS about them.

    Args:
        client: The SQS client.
        queue_url: The queue.
        lease: The visibility timeout asked for on receive and set by each heartbeat.
        heartbeat_interval: The longest time between two extensions of one message.
        ack_interval: Shortest wait before a partial batch of deletes or releases is sent.
        max_ack_interval: Longest wait before a partial batch of deletes is sent (also when it is
            below ``ack_interval``): the wait grows towards it while batches go out partial (a
            low message rate) and shrinks back when they fill up.
        counters: Where outcomes are counted, and calls and latencies timed.
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        *,
        lease: int,
        heartbeat_interval: float,
        ack_interval: float,
        max_ack_interval: float,
        counters: Counters,
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._lease = lease
        self._interval = heartbeat_interval
        self._counters = counters
        self._tracked: dict[str, Tracked] = {}
        self._beating: set[str] = set()  # receipt handles named by a heartbeat on the wire
        self._held: dict[str, Entry] = {}  # releases waiting for that heartbeat to return
        self._held_changed = trio.lowlevel.ParkingLot()
        self._deadline = math.inf
        self._scopes: set[trio.CancelScope] = set()
        self._live_until: Callable[[], float] | None = None
        # Releases SQS confirmed whose message may still be hidden: (visible again at the
        # earliest, at the latest, message id, receipt handle), soonest first. See rehide().
        self._hidden: list[tuple[float, float, str, str]] = []
        self._deletes = Batcher(
            client,
            queue_url,
            "delete",
            min(ack_interval, max_ack_interval),
            self._deleted,
            self._delete_failed,
            max_interval=max_ack_interval,
            shield=self._shielded,
            latency=counters.ack_latency,
            call_duration=counters.delete_call_duration,
            batch_size=counters.delete_batch_size,
        )
        self._releases = Batcher(
            client,
            queue_url,
            "release",
            ack_interval,
            self._released,
            self._release_failed,
            self._release_expired,
            shield=self._shielded,
            visibility_floor=self._floor,
            latency=counters.release_latency,
            call_duration=counters.release_call_duration,
            batch_size=counters.release_batch_size,
        )

    # -- state ------------------------------------------------------------------------------------

    @property
    def in_hand(self) -> int:
        """Messages received and not yet settled."""
        return len(self._tracked)

    @property
    def pending(self) -> int:
        """Deletes and releases not yet confirmed by SQS (waiting, held back, or on the wire)."""
        return self._deletes.pending + self._releases.pending + len(self._held)

    @property
    def pending_deletes(self) -> int:
        return self._deletes.pending

    @property
    def pending_releases(self) -> int:
        return self._releases.pending + len(self._held)

    # -- what the consumer does with a message ------------------------------------------------------

    def track(self, message: Message) -> None:
        """``message`` was just received: keep its lease alive until it is settled."""
        now = trio.current_time()
        self._tracked[message.receipt_handle] = Tracked(message, now, now)

    def ack(self, message: Message) -> None:
        """Delete ``message`` (in a batch)."""
        self._tracked.pop(message.receipt_handle, None)
        self._deletes.add(
            Entry(message.message_id, message.receipt_handle, created_at=trio.current_time())
        )

    def release(self, message: Message, visibility: int) -> None:
        """Make ``message`` visible again after ``visibility`` seconds (in a batch).

        The release is only sent while our lease surely runs (see :class:`Entry`), and never while
        a heartbeat naming the message is on the wire (the module's rule).
        """
        handle = message.receipt_handle
        now = trio.current_time()
        tracked = self._tracked.pop(handle, None)
        if tracked is None:  # landed after stop, never tracked: its lease has just begun
            tracked = Tracked(message, now, now)
        entry = Entry(
            message.message_id,
            handle,
            visibility,
            lease_end=tracked.extended_at + self._lease,
            created_at=now,
        )
        if handle in self._beating:
            self._held[handle] = entry
        else:
            self._releases.add(entry)

    def cover(self, live_until: Callable[[], float]) -> None:
        """From now on (the consumer's stop) no message of ours may become visible before
        ``live_until()``, the moment the last poll SQS may still run for us is over: every
        release is sent with at least the seconds left until then (read when its batch is
        sent), and a message released earlier is hidden again when its visibility would end
        sooner (:meth:`rehide`, now and whenever a release is confirmed)."""
        self._live_until = live_until
        self.rehide()
        # A release on the wire now went out with less: by the time SQS confirms it (and
        # rehide() sees it), its visibility may have ended already. Hide it again now too; if
        # SQS applies the two in the other order, the confirmation hides it again.
        floor = self._floor()
        for entry in list(self._releases.on_the_wire.values()):
            if (entry.visibility or 0) < floor:
                self._releases.add(Entry(entry.message_id, entry.receipt_handle, 0, counted=False))

    def _floor(self) -> int:
        if self._live_until is None:
            return 0
        left = self._live_until() - trio.current_time()
        return math.ceil(left) if left > 0 else 0

    def rehide(self) -> int:
        """Hide again, until the cover allows, every message we released whose visibility may
        end before ``live_until()``: such a message (a failure backoff ending a second after the
        stop) would otherwise be handed to one of our abandoned polls and hidden for a whole
        lease, its receive count raised. Its receipt handle is still the latest (nobody can have
        received it while hidden); if it has become visible meanwhile, SQS refuses the change
        and nothing happens. Returns how many were queued. Does nothing before :meth:`cover`."""
        if self._live_until is None:
            return 0
        until = self._live_until()
        now = trio.current_time()
        queued = 0
        while self._hidden and self._hidden[0][0] < until:
            _, visible_by, message_id, handle = heapq.heappop(self._hidden)
            if visible_by <= now:
                continue  # visible already: a poll on the wire would have taken it by now
            # No lease_end: sent late, the change finds the message visible (SQS refuses it)
            # or already taken by someone else's poll (then the receipt handle is stale and SQS
            # refuses it too). It can never take a message from anyone.
            self._releases.add(Entry(message_id, handle, 0, counted=False))
            queued += 1
        return queued

    def hurry(self) -> None:
        """Send pending deletes and releases now instead of waiting for their batch window."""
        self._deletes.hurry()
        self._releases.hurry()

    def bound(self, deadline: float) -> None:
        """No call of ours may run past ``deadline`` (the consumer's shutdown bound), shielded or
        not: calls on the wire now get it too."""
        self._deadline = min(self._deadline, deadline)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._deadline)

    # -- the loops ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send heartbeats, deletes and releases until cancelled.

        Cancellation: the loops stop at once; a call already on the wire runs to its end
        (shielded, within :data:`REQUEST_BOUND` and the :meth:`bound` deadline), so its outcome is
        known. Unsent entries stay pending: :meth:`run` may be called again later (the consumer
        does, for its shutdown) and sends them.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deletes.run)
            nursery.start_soon(self._releases.run)
            nursery.start_soon(self._heartbeats)

    async def drain(self) -> None:
        """Send every pending delete and release now and wait until SQS answered each (retrying
        failed entries a few times). Must be called while :meth:`run` is running.

        Cancellation: what is unsent stays counted in :attr:`pending`.
        """
        self.hurry()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deletes.drain)
            while True:
                await self._releases.drain()
                if not self._held:
                    break
                await self._held_changed.park()

    # -- heartbeats ---------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        tick = self._interval / TICKS_PER_INTERVAL
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            self._prune_hidden(now)
            due = [
                handle
                for handle, t in self._tracked.items()
                if now - t.extended_at >= self._interval - tick
                and now - t.received_at + self._lease < TWELVE_HOURS
                # One heartbeat per message at a time (the one on the wire may be a previous
                # loop's, still running after a stop): a release waits for exactly that one.
                and handle not in self._beating
            ]
            if not due:
                continue
            async with trio.open_nursery() as nursery:
                for start in range(0, len(due), BATCH_LIMIT):
                    nursery.start_soon(self._extend, due[start : start + BATCH_LIMIT])

    async def _extend(self, handles: list[str]) -> None:
        # Re-check right before sending: a message settled meanwhile is never extended.
        chunk = [self._tracked[h] for h in handles if h in self._tracked]
        if not chunk:
            return
        sent_at = trio.current_time()
        wire = {str(i): t.message.receipt_handle for i, t in enumerate(chunk)}
        self._beating.update(wire.values())
        try:
            with self._shielded():
                try:
                    # One attempt: the next tick is the retry, and a late retry could land after
                    # a release.
                    result = await self._client.change_message_visibility_batch(
                        self._queue_url, wire, self._lease, retry=False
                    )
                except SQSError as exc:
                    self._counters.heartbeat_errors += 1
                    log.warning("visibility heartbeat failed: %s", exc)
                    return
                self._counters.heartbeat_call_duration.observe(trio.current_time() - sent_at)
                for entry_id in result.successful:
                    chunk[int(entry_id)].extended_at = sent_at
                    self._counters.visibility_extensions += 1
                for failure in result.failed:
                    # An invalid receipt handle means the message was settled or received
                    # again elsewhere meanwhile: nothing to extend.
                    self._counters.heartbeat_errors += 1
                    log.debug("heartbeat entry failed: %s", failure)
        finally:
            # After the extensions are recorded: a release held back for this heartbeat goes
            # out now, knowing how long its lease runs.
            for t in chunk:
                handle = t.message.receipt_handle
                self._beating.discard(handle)
                entry = self._held.pop(handle, None)
                if entry is not None:
                    entry.lease_end = t.extended_at + self._lease
                    self._releases.add(entry)
            self._held_changed.unpark_all()

    @contextlib.contextmanager
    def _shielded(self) -> Iterator[None]:
        """A shielded scope for one call on the wire, bounded by :data:`REQUEST_BOUND` and the
        shutdown deadline (which :meth:`bound` may bring forward while the call runs)."""
        scope = trio.CancelScope(
            shield=True, deadline=min(trio.current_time() + REQUEST_BOUND, self._deadline)
        )
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)

    # -- outcomes -----------------------------------------------------------------------------------

    def _deleted(self, entry: Entry) -> None:
        self._counters.deleted += 1

    def _delete_failed(self, entry: Entry, code: str) -> None:
        self._counters.delete_failed += 1
        log.error(
            "could not delete %s (%s); it will be delivered again",
            entry.message_id,
            code,
            extra={"message_id": entry.message_id, "error_code": code},
        )

    def _released(self, entry: Entry) -> None:
        now = trio.current_time()
        self._prune_hidden(now)
        if entry.visibility:
            # SQS applied it between sending and now: visible again in between these two.
            earliest, latest = entry.sent_at + entry.visibility, now + entry.visibility
            heapq.heappush(self._hidden, (earliest, latest, entry.message_id, entry.receipt_handle))
            # Stopping: a release sent before the stop may end before our last poll does.
            self.rehide()
        if entry.counted:
            self._counters.released += 1

    def _prune_hidden(self, now: float) -> None:
        """Forget releases whose message is surely visible again (kept in order of the earliest
        such time, so a stale entry can wait behind a later one until a heartbeat tick)."""
        while self._hidden and self._hidden[0][0] <= now and self._hidden[0][1] <= now:
            heapq.heappop(self._hidden)

    def _release_expired(self, entry: Entry) -> None:
        self._counters.release_expired += 1
        log.warning(
            "not releasing %s: its lease may have run out (heartbeats failed or were late), so it "
            "is visible again or held by another consumer",
            entry.message_id,
            extra={"message_id": entry.message_id},
        )

    def _release_failed(self, entry: Entry, code: str) -> None:
        if not entry.counted:
            log.debug("could not hide %s again (%s)", entry.message_id, code)
            return
        self._counters.release_failed += 1
        log.warning(
            "could not release %s (%s)",
            entry.message_id,
            code,
            extra={"message_id": entry.message_id, "error_code": code},
        )
