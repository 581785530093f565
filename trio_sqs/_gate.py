"""A semaphore whose size can change while it is in use: the client's long-poll budget, sized
from the consumers sharing the client."""

from __future__ import annotations

from types import TracebackType

import trio
import trio.lowlevel

__all__ = ["ResizableGate"]


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
