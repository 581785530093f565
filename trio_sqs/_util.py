"""Small helpers shared by the client and the consumer."""

from __future__ import annotations

import sys
from typing import NoReturn

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["leaves", "only_cancelled", "queue_name", "raise_as_is", "raise_unwrapped"]


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception in ``group`` that is not itself a group, nested groups included, in order."""
    found: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        else:
            found.append(exc)
    return found


def only_cancelled(group: BaseExceptionGroup[BaseException]) -> trio.Cancelled | None:
    """The first ``trio.Cancelled`` of a group made of nothing but ``Cancelled`` (at any depth),
    or ``None`` if the group holds anything else.

    Such groups come out of nurseries that third-party code opens inside a cancelled scope (trio's
    happy-eyeballs connect, which httpcore uses, is one): they must reach our code as the plain
    ``Cancelled`` they are, or ``except trio.Cancelled`` misses them.
    """
    found = leaves(group)
    if found and all(isinstance(e, trio.Cancelled) for e in found):
        first = found[0]
        assert isinstance(first, trio.Cancelled)
        return first
    return None


def raise_as_is(exc: BaseException) -> NoReturn:
    """Raise ``exc`` (taken out of a group) keeping its own ``__context__``: raised inside an
    ``except`` block, Python would otherwise chain the group it came from onto it."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context


def raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one error that matters in a nursery's exception group, as itself.

    Users see the exception, not a group (trio-websocket does the same). Its own ``__cause__``
    and ``__context__`` are kept; the group is not chained onto it. Cancellations only matter
    when there is nothing else; a group with several real errors is re-raised whole.
    """
    found = leaves(group)
    errors = [e for e in found if not isinstance(e, trio.Cancelled)]
    if len(errors) == 1:
        chosen = errors[0]
    elif not errors and found:
        chosen = found[0]
    else:
        raise group
    raise_as_is(chosen)


def queue_name(queue_url: str) -> str:
    """A queue's name: the last part of its URL (a name stays itself)."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]
