"""The client's budgets: a semaphore whose size can change while it is in use (the long-poll
budget, sized from the consumers sharing the client), and one with a slot kept for some callers
(the other calls' budget, a slot kept for visibility changes)."""

from __future__ import annotations

from types import TracebackType

import trio
import trio.lowlevel

__all__ = ["KeptSlotGate", "ResizableGate"]


class ResizableGate:
    """Like ``trio.Semaphore``, plus :meth:`resize`.

    Waiters are served in FIFO order. Cancel-safe exactly like ``trio.Semaphore``: a task
    cancelled while it waits takes nothing; a slot is handed to a waiter when it is woken, so a
    woken waiter always holds it. Shrinking below the slots in use takes nothing back: the holders
    keep theirs, and nobody new gets one until releases bring the use below the new size.
    """

    __slots__ = ("_in_use", "_lot", "_size")

    def __init__(self, size: int) -> None:
        self._check(size)
        self._size = size
        self._in_use = 0
        self._lot = trio.lowlevel.ParkingLot()

    @staticmethod
    def _check(size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"a gate's size must be an integer >= 0, got {size!r}")

    @property
    def size(self) -> int:
        """Slots in all (in use or free)."""
        return self._size

    @property
    def in_use(self) -> int:
        """Slots held now (may exceed :attr:`size` for a while after a shrink)."""
        return self._in_use

    @property
    def value(self) -> int:
        """Free slots now (as ``trio.Semaphore.value``): never negative."""
        return max(0, self._size - self._in_use)

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return len(self._lot)

    def resize(self, size: int) -> None:
        """Change the number of slots; waiters are woken at once if slots became free."""
        self._check(size)
        self._size = size
        self._hand_over()

    def _hand_over(self) -> None:
        free = self._size - self._in_use
        if free > 0 and self._lot:
            self._in_use += len(self._lot.unpark(count=free))

    def acquire_nowait(self) -> None:
        """Take a slot, or raise ``trio.WouldBlock``."""
        # Slots are handed to waiters as soon as they free up: a free slot means no waiter.
        if self._in_use >= self._size or self._lot:
            raise trio.WouldBlock
        self._in_use += 1

    async def acquire(self) -> None:
        """Take a slot, waiting (in FIFO order) until one is free."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.acquire_nowait()
        except trio.WouldBlock:
            # Woken by _hand_over with the slot already counted as ours; cancelled while
            # parked, the task leaves the lot having taken nothing.
            await self._lot.park()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        """Give a slot back (to the longest waiter, if it may have one)."""
        if self._in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_use -= 1
        self._hand_over()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<ResizableGate size={self._size} in_use={self._in_use} waiting={len(self._lot)}>"


class KeptSlotGate:
    """A semaphore of ``size`` slots, one of which (from 2 slots on) is kept for the callers
    that pass ``kept=True``: the others use ``size - 1`` at most.

    Waiters of both kinds queue in one line, in arrival order. A freed slot of the others goes
    to the first in line, whatever its kind; the freed kept slot goes to the first ``kept=True``
    caller in line. So a ``kept=True`` caller takes the kept slot when it is free, else a free
    one of the others, else waits for the kept slot or its turn at the others, whichever comes
    first: never behind a caller that came after it. With one slot there is nothing to keep:
    it is a FIFO semaphore for both kinds.

    Cancel-safe like ``trio.Semaphore``: a task cancelled while it waits takes nothing; a slot
    is handed to a waiter when it is woken, so a woken waiter always holds it. :meth:`acquire`
    returns the lane taken, to give back to :meth:`release`.
    """

    __slots__ = ("_granted", "_in_use", "_kept", "_kept_in_use", "_others", "_waiters")

    KEPT = True
    OTHER = False

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"a gate's size must be an integer >= 1, got {size!r}")
        self._kept = 1 if size > 1 else 0
        self._others = size - self._kept
        self._in_use = 0  # of the others
        self._kept_in_use = 0
        # Waiting tasks in arrival order (dicts keep it), each with whether it may take the
        # kept slot.
        self._waiters: dict[trio.lowlevel.Task, bool] = {}
        # Woken waiters: the lane each was handed.
        self._granted: dict[trio.lowlevel.Task, bool] = {}

    @property
    def size(self) -> int:
        return self._others + self._kept

    @property
    def value(self) -> int:
        """Free slots now, the kept one included."""
        return (self._others - self._in_use) + (self._kept - self._kept_in_use)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def acquire_nowait(self, *, kept: bool = False) -> bool:
        """Take a slot (return the lane taken), or raise ``trio.WouldBlock``."""
        # (A free slot means nobody waits for it: slots are handed over as they free up.)
        if kept and self._kept_in_use < self._kept:
            self._kept_in_use += 1
            return self.KEPT
        if self._in_use < self._others:
            self._in_use += 1
            return self.OTHER
        raise trio.WouldBlock

    async def acquire(self, *, kept: bool = False) -> bool:
        """Take a slot, waiting until one is free; return the lane taken."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            lane = self.acquire_nowait(kept=kept)
        except trio.WouldBlock:
            task = trio.lowlevel.current_task()
            self._waiters[task] = kept

            def abort(_: object) -> trio.lowlevel.Abort:
                # Still in line (a woken waiter has left it and cannot be cancelled any more):
                # leave, holding nothing.
                del self._waiters[task]
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            return self._granted.pop(task)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return lane

    def release(self, lane: bool) -> None:
        """Give back a slot of ``lane``: to the first in line that may have it, if any."""
        if lane == self.KEPT:
            if self._kept_in_use <= 0:
                raise RuntimeError("release() without a matching acquire()")
            for task, kept in self._waiters.items():
                if kept:
                    self._hand(task, self.KEPT)
                    return
            self._kept_in_use -= 1
            return
        if self._in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        if self._waiters:
            self._hand(next(iter(self._waiters)), self.OTHER)
        else:
            self._in_use -= 1

    def _hand(self, task: trio.lowlevel.Task, lane: bool) -> None:
        del self._waiters[task]
        self._granted[task] = lane
        trio.lowlevel.reschedule(task)

    def __repr__(self) -> str:
        return (
            f"<KeptSlotGate size={self.size} in_use={self._in_use}+{self._kept_in_use} "
            f"waiting={self.waiting}>"
        )
