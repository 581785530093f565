"""Backpressure and ordering between pollers and handlers.

:class:`Credit` bounds the messages in hand (buffered plus running): a poller reserves a whole batch
before it polls, so no poll is ever sent without room for what it may return.

:class:`Dispatcher` hands buffered messages to handlers. Messages of one group (a FIFO queue's
MessageGroupId) run one at a time, in arrival order; different groups run concurrently. On standard
queues every message is its own group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import trio

from ._message import Message

__all__ = ["Credit", "Dispatcher"]


class Credit:
    """A counter of free message slots that tasks can wait on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._lot = trio.lowlevel.ParkingLot()
        # How many slots each waiting task wants: a release wakes them only when one of them
        # can go on (a poller waiting for 10 is not woken by each of 10 messages settled).
        self._wanted: list[int] = []

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` slots are free, then take them.

        Cancellation: safe; nothing is taken if the wait is cancelled.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.free >= n:
            self.free -= n
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._wanted.append(n)
        try:
            while self.free < n:
                await self._lot.park()  # (this call's schedule point)
        finally:
            self._wanted.remove(n)
        self.free -= n

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.free += n
        assert self.free <= self.total, "credit released twice"
        if self._wanted and self.free >= min(self._wanted):
            self._lot.unpark_all()

    @property
    def in_use(self) -> int:
        return self.total - self.free


class Dispatcher:
    """Buffered messages, released to handler tasks respecting per-group order."""

    def __init__(self, *, fifo: bool) -> None:
        self._fifo = fifo
        self._groups: dict[Hashable, deque[Message]] = {}
        self._runnable: deque[Hashable] = deque()
        self._busy: set[Hashable] = set()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self.buffered = 0

    def group_of(self, message: Message) -> Hashable:
        if self._fifo:
            return message.message_group_id or ""
        return message.receipt_handle

    def put(self, message: Message) -> None:
        """Buffer a message (synchronous; never blocks: credit was reserved before polling)."""
        if self._closed:
            raise RuntimeError("dispatcher is closed")
        group = self.group_of(message)
        queue = self._groups.get(group)
        if queue is None:
            queue = self._groups[group] = deque()
        queue.append(message)
        self.buffered += 1
        if group not in self._busy and len(queue) == 1:
            self._runnable.append(group)
            self._lot.unpark()

    async def get(self, max_messages: int = 1) -> list[Message]:
        """Wait for runnable messages; return 1 to ``max_messages`` of them (``[]`` once closed).

        The groups of the returned messages are busy until :meth:`done` is called for each.

        Cancellation: safe; nothing is taken if the wait is cancelled.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._runnable and not self._closed:
            await self._lot.park()
            parked = True
        taken: list[Message] = []
        while self._runnable and len(taken) < max_messages and not self._closed:
            group = self._runnable.popleft()
            queue = self._groups[group]
            taken.append(queue.popleft())
            self.buffered -= 1
            self._busy.add(group)
        if self._runnable and not self._closed:
            # More is runnable than we took: let another handler task have it.
            self._lot.unpark()
        if not parked:  # (waiting was this call's schedule point; else it needs one)
            await trio.lowlevel.cancel_shielded_checkpoint()
        return taken

    def done(self, message: Message) -> None:
        """Mark a taken message finished; its group's next message becomes runnable."""
        group = self.group_of(message)
        self._busy.discard(group)
        queue = self._groups.get(group)
        if queue:
            if not self._closed:
                self._runnable.append(group)
                self._lot.unpark()
        elif queue is not None:
            del self._groups[group]

    def drop_group(self, message: Message) -> list[Message]:
        """Remove and return the buffered messages of ``message``'s group (to keep FIFO order
        after a failure, the rest of the group is released unprocessed)."""
        group = self.group_of(message)
        queue = self._groups.get(group)
        if not queue:
            return []
        dropped = list(queue)
        queue.clear()
        self.buffered -= len(dropped)
        try:
            self._runnable.remove(group)
        except ValueError:
            pass
        return dropped

    def close(self) -> list[Message]:
        """Stop handing out messages; return every buffered one (to be released)."""
        self._closed = True
        leftover = [m for queue in self._groups.values() for m in queue]
        self._groups.clear()
        self._runnable.clear()
        self.buffered = 0
        self._lot.unpark_all()
        return leftover
