"""Faults a test scripts on the in-memory SQS (``fake.faults``): errors, throttling, late
answers, stalled bodies, dropped connections and corrupt digests."""

from __future__ import annotations

import collections
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._wire import SQS_OPERATIONS

__all__ = ["Fault", "Faults"]

_CODE = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(eq=False)
class Fault:
    """One scripted fault, applied to the next ``times`` matching requests.

    Kinds: ``"error"`` (answer ``status`` with ``code``; the operation does not run),
    ``"delay"`` (the operation takes effect at once, its answer comes ``seconds`` later),
    ``"stall"`` (the operation takes effect, the answer's headers go out, its body never does),
    ``"drop"`` (the connection is closed without an answer: before the operation runs, or after
    it took effect with ``after=True``), ``"corrupt_md5"`` (a ReceiveMessage answer whose first
    message carries a wrong ``MD5OfBody``).
    """

    kind: str
    operation: str | None
    times: int = 1
    status: int = 500
    code: str = "InternalFailure"
    message: str = "We encountered an internal error. Please try again."
    seconds: float = 0.0
    after: bool = False
    match: Callable[[Mapping[str, Any]], bool] | None = None
    applied: int = 0

    def matches(self, operation: str, params: Mapping[str, Any]) -> bool:
        if self.operation is not None and self.operation != operation:
            return False
        return self.match is None or bool(self.match(params))


@dataclass(eq=False)
class Faults:
    """The faults a test scripts on a :class:`FakeSQS` (``fake.faults``).

    Each request takes at most one fault: the first one added that matches its operation (and
    ``match``, a predicate on the request's parameters) and has uses left. ``operation=None``
    matches every operation.
    """

    pending: list[Fault] = field(default_factory=list)
    #: How many times a fault of each kind was applied, by operation.
    applied: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def _add(self, fault: Fault) -> Fault:
        """Script ``fault``, after checking what a typo would make pass vacuously or fail
        later, in the request that meets it.

        Raises:
            ValueError: for an operation SQS does not have (a typo would never match), a
                ``times`` that is not a positive integer, or a delay that is not a finite
                number of seconds >= 0 (or an ``after`` that is not a bool).
        """
        operation = fault.operation
        if operation is not None and operation not in SQS_OPERATIONS:
            close = difflib.get_close_matches(str(operation), sorted(SQS_OPERATIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"operation must be one of SQS's or None, got {operation!r}{hint}")
        if not _is_int(fault.times) or fault.times < 1:
            raise ValueError(f"times must be an integer of at least 1, got {fault.times!r}")
        if not isinstance(fault.after, bool):
            raise ValueError(f"after must be True or False, got {fault.after!r}")
        seconds = fault.seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 <= seconds < math.inf
        ):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self.pending.append(fault)
        return fault

    def fail(
        self,
        operation: str | None,
        *,
        times: int = 1,
        status: int = 500,
        code: str = "InternalFailure",
        message: str | None = None,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` calls with an error; the operation does not run.

        Raises:
            ValueError: for a status outside 400-599 or a code that cannot travel in a header.
        """
        if not _is_int(status) or not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if not _CODE.match(code):
            raise ValueError(
                f"code must be letters, digits and '._:-' (it travels in a header), got {code!r}"
            )
        return self._add(
            Fault(
                "error",
                operation,
                times=times,
                status=status,
                code=code,
                message=message or f"{code} (scripted by the test)",
                match=match,
            )
        )

    def throttle(self, operation: str | None, *, times: int = 1) -> Fault:
        """Answer with SQS's throttling error (``RequestThrottled``, HTTP 400)."""
        return self.fail(
            operation, times=times, status=400, code="RequestThrottled", message="Rate exceeded"
        )

    def delay(
        self,
        operation: str | None,
        seconds: float,
        *,
        times: int = 1,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Answer ``seconds`` late (the operation itself takes effect at once)."""
        return self._add(Fault("delay", operation, times=times, seconds=seconds, match=match))

    def stall(
        self,
        operation: str | None,
        *,
        times: int = 1,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Take effect, send the answer's headers, never its body."""
        return self._add(Fault("stall", operation, times=times, match=match))

    def drop(
        self,
        operation: str | None,
        *,
        times: int = 1,
        after: bool = False,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Close the connection without an answer: before the operation runs, or (``after``)
        once it took effect, so that the client cannot tell whether it did."""
        return self._add(Fault("drop", operation, times=times, after=after, match=match))

    def corrupt_md5(
        self, *, times: int = 1, match: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> Fault:
        """Give the first message of the next non-empty ReceiveMessage answers a wrong
        ``MD5OfBody`` (an empty answer does not use the fault up)."""
        return self._add(Fault("corrupt_md5", "ReceiveMessage", times=times, match=match))

    def clear(self) -> None:
        self.pending.clear()

    def take(self, operation: str, params: Mapping[str, Any]) -> Fault | None:
        for fault in self.pending:
            if fault.matches(operation, params):
                if fault.kind != "corrupt_md5":
                    self.used(fault, operation)
                return fault
        return None

    def used(self, fault: Fault, operation: str) -> None:
        fault.applied += 1
        self.applied[(fault.kind, operation)] += 1
        if fault.applied >= fault.times:
            self.pending.remove(fault)
