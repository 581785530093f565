"""Small helpers shared by the client and the consumer."""

from __future__ import annotations

import sys
from typing import NoReturn

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["raise_unwrapped"]


def raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one error that matters in a nursery's exception group, as itself.

    Users see the exception, not a group (trio-websocket does the same). Its own ``__cause__``
    and ``__context__`` are kept; the group is not chained onto it. Cancellations only matter
    when there is nothing else; a group with several real errors is re-raised whole.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(errors) == 1:
        chosen = errors[0]
    elif not errors and leaves:
        chosen = leaves[0]
    else:
        raise group
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
