"""Visibility heartbeats: extend the receive lease of every message in hand, in batches.

A message is in hand from the moment it is received (buffered or running) until it is settled
(acknowledged or released). Settling removes it from the tracked set before anything is sent, so a
heartbeat never starts for a message that was acknowledged. A release and a heartbeat for one
message are never on the wire together: whichever SQS applied last would win, and a heartbeat
landing after the release would hide the message for a whole lease. So a release whose message has
a heartbeat on the wire is held back (:meth:`Heartbeat.on_the_wire`) until that heartbeat has
returned. (Sending the release at once and again after the heartbeat is wrong too: by then another
consumer may have received the message, and the repeated release would take it from under them.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ._batcher import BATCH_LIMIT
from ._client import SQSClient
from ._exceptions import SQSError
from ._message import Message
from ._stats import Counters

__all__ = ["Heartbeat", "Tracked"]

log = logging.getLogger("trio_sqs.consumer")

# SQS caps a message's total visibility at 12 hours from its first receipt.
TWELVE_HOURS = 12 * 3600
# Heartbeats look for due messages this many times per interval, so that no message goes longer
# than one interval between extensions.
TICKS_PER_INTERVAL = 4


@dataclass(slots=True)
class Tracked:
    message: Message
    received_at: float
    extended_at: float


class Heartbeat:
    """Keeps the leases of tracked messages alive.

    Args:
        client: The SQS client.
        queue_url: The queue.
        lease: The visibility timeout each extension sets.
        interval: The longest time between two extensions of one message.
        tracked: The messages in hand, by receipt handle (owned by the consumer).
        counters: Where extensions and errors are counted.
        landed: Called with each receipt handle once the heartbeat that named it has returned
            (or was cancelled), and the earliest time its lease can end now: a release held back
            for it may go.
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        *,
        lease: int,
        interval: float,
        tracked: dict[str, Tracked],
        counters: Counters,
        landed: Callable[[str, float], None],
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._lease = lease
        self._interval = interval
        self._tracked = tracked
        self._counters = counters
        self._landed = landed
        self._on_the_wire: set[str] = set()

    def on_the_wire(self, receipt_handle: str) -> bool:
        """Whether a heartbeat naming ``receipt_handle`` is on the wire now (then a release must
        wait for ``landed``)."""
        return receipt_handle in self._on_the_wire

    async def run(self) -> None:
        """Extend leases until cancelled.

        Cancellation: stops at once; an extension on the wire is dropped (the lease it asked for
        may or may not have been applied).
        """
        tick = self._interval / TICKS_PER_INTERVAL
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            due = [
                handle
                for handle, t in self._tracked.items()
                if now - t.extended_at >= self._interval - tick
                and now - t.received_at + self._lease < TWELVE_HOURS
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
        self._on_the_wire.update(wire.values())
        try:
            try:
                # One attempt: the next tick is the retry, and a late retry could land after a
                # release.
                result = await self._client.change_message_visibility_batch(
                    self._queue_url, wire, self._lease, retry=False
                )
            except SQSError as exc:
                self._counters.heartbeat_errors += 1
                log.warning("visibility heartbeat failed: %s", exc)
                return
            for entry_id in result.successful:
                chunk[int(entry_id)].extended_at = sent_at
                self._counters.visibility_extensions += 1
            for failure in result.failed:
                # An invalid receipt handle means the message was settled or received again
                # elsewhere meanwhile: nothing to extend.
                self._counters.heartbeat_errors += 1
                log.debug("heartbeat entry failed: %s", failure)
        finally:
            # After the extensions are recorded: a release held back for this heartbeat goes out
            # now, knowing how long its lease runs.
            for t in chunk:
                handle = t.message.receipt_handle
                self._on_the_wire.discard(handle)
                self._landed(handle, t.extended_at + self._lease)
