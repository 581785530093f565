"""Handler middleware: code that wraps every handler invocation (single or batch).

A middleware is one of two things, told apart when the consumer is opened (before any I/O):

- an **async function** ``async def mw(invocation, call_next) -> None`` that runs code around
  ``await call_next()`` (which calls the next middleware, and the handler last);
- a **function returning an async context manager**, ``mw(invocation)``, entered around the rest
  of the chain (``@contextlib.asynccontextmanager`` turns a generator into one).

The first middleware of the list is the outermost. Every layer sees the same
:class:`Invocation`; once the inner layers are done its :attr:`Invocation.outcome` says how the
call ended. Middleware runs in the handler's task, inside the handler's deadline (the handler
timeout and, once the consumer stops, the end of the grace period) and shielded like the handler.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Union

import trio

from ._exceptions import ConfigurationError
from ._handler import Retry, describe_callable, is_async_callable
from ._message import Message

__all__ = [
    "Invocation",
    "Middleware",
    "Outcome",
    "check_middleware",
    "compose",
    "context_managers",
]

Outcome = Literal["ok", "failed", "retry", "timed_out", "cancelled"]

CallNext = Callable[[], Awaitable[None]]
Middleware = Union[  # noqa: UP007 - a runtime alias, also on Python 3.10
    Callable[["Invocation", CallNext], Awaitable[None]],
    Callable[["Invocation"], AbstractAsyncContextManager[object]],
]


@dataclass(eq=False)
class Invocation:
    """One call of the handler, as middleware sees it.

    Attributes:
        messages: The messages of this call (one for a single-message handler).
        batch: Whether the handler is a batch handler.
        queue_url: The consumer's queue.
        started_at: ``trio.current_time()`` when the outermost middleware was entered.
        outcome: ``None`` until the inner layers are done, then how the call ended: ``"ok"``
            (every message handled: they are deleted), ``"failed"`` (the handler or a middleware
            raised, or a batch handler reported messages as failed: see ``failed``),
            ``"retry"`` (:class:`Retry` was raised), ``"timed_out"`` (cancelled by the handler
            timeout) or ``"cancelled"`` (cancelled at the end of the grace period).
        error: The exception that ended the call (``Retry`` included), if any.
        failed: Ids of the messages that failed (all of them when the call raised; those a
            batch handler reported otherwise).
    """

    messages: list[Message]
    batch: bool
    queue_url: str
    started_at: float
    outcome: Outcome | None = None
    error: BaseException | None = None
    failed: frozenset[str] = field(default_factory=frozenset)

    @property
    def message(self) -> Message:
        """The message of a single-message call (the first one of a batch)."""
        return self.messages[0]


def check_middleware(middleware: object) -> list[Middleware]:
    """The middleware list, or :class:`ConfigurationError` for anything that is not one."""
    if middleware is None:
        return []
    if isinstance(middleware, (str, bytes)) or not isinstance(middleware, Sequence):
        raise ConfigurationError(
            f"middleware must be a list of middleware, got {middleware!r}", code="InvalidOption"
        )
    checked: list[Middleware] = []
    for index, item in enumerate(middleware):
        if not callable(item):
            raise ConfigurationError(
                f"middleware[{index}] must be an async function (invocation, call_next) or a "
                f"function returning an async context manager, got {describe_callable(item)}",
                code="InvalidOption",
            )
        plain = item
        while isinstance(plain, functools.partial):
            plain = plain.func
        if inspect.isasyncgenfunction(plain):
            raise ConfigurationError(
                f"middleware[{index}] {describe_callable(item)} is an async generator function: "
                "decorate it with @contextlib.asynccontextmanager to use it as a middleware",
                code="InvalidOption",
            )
        want = 2 if is_async_callable(item) else 1
        try:
            inspect.signature(item).bind(*([None] * want))
        except TypeError:
            shape = (
                "must take (invocation, call_next)"
                if want == 2
                else "must be an async function (invocation, call_next) or take (invocation) "
                "and return an async context manager"
            )
            raise ConfigurationError(
                f"middleware[{index}] {describe_callable(item)} {shape}", code="InvalidOption"
            ) from None
        except ValueError:
            pass  # no signature to read (some builtins): called as it is
        checked.append(item)
    return checked


def context_managers(middleware: Sequence[Middleware]) -> list[bool]:
    """For each middleware, whether it is an async context manager factory (worked out once,
    when the consumer is built, not per invocation)."""
    return [not is_async_callable(item) for item in middleware]


def compose(
    middleware: Sequence[Middleware],
    invocation: Invocation,
    handler: CallNext,
    cut_short: Callable[[], Outcome],
    kinds: Sequence[bool] | None = None,
) -> CallNext:
    """The chain for one invocation: ``middleware[0]`` outermost, ``handler`` innermost.

    ``handler`` runs the user's handler and fills ``invocation.outcome``/``failed`` from what it
    returned; ``cut_short()`` says whether a cancellation is a time-out or the end of grace.
    Each layer records an exception passing through it (from the handler or a middleware) as
    the outcome its outer layers see; a layer that swallows one turns the outcome into ``"ok"``
    (the messages are then handled: deleted). ``kinds`` is :func:`context_managers` of
    ``middleware``, if the caller has it.
    """
    if kinds is None:
        kinds = context_managers(middleware)
    call = _innermost(invocation, handler, cut_short)
    for item, context_manager in zip(reversed(middleware), reversed(kinds), strict=True):
        call = _layer(item, context_manager, invocation, call, cut_short)
    return call


def _record(invocation: Invocation, exc: BaseException, cut_short: Callable[[], Outcome]) -> None:
    if invocation.error is exc:
        return
    invocation.error = exc
    invocation.failed = frozenset(m.message_id for m in invocation.messages)
    if isinstance(exc, Retry):
        invocation.outcome = "retry"
    elif isinstance(exc, trio.Cancelled):
        invocation.outcome = cut_short()
    else:
        invocation.outcome = "failed"


def _innermost(
    invocation: Invocation, handler: CallNext, cut_short: Callable[[], Outcome]
) -> CallNext:
    async def call() -> None:
        try:
            await handler()
        except BaseException as exc:
            _record(invocation, exc, cut_short)
            raise

    return call


def _layer(
    item: Middleware,
    context_manager: bool,
    invocation: Invocation,
    inner: CallNext,
    cut_short: Callable[[], Outcome],
) -> CallNext:
    async def call() -> None:
        try:
            if context_manager:
                async with item(invocation):  # type: ignore[call-arg, union-attr]
                    await inner()
            else:
                await item(invocation, inner)  # type: ignore[call-arg, misc]
        except BaseException as exc:
            _record(invocation, exc, cut_short)
            raise
        if invocation.error is not None and not isinstance(invocation.error, trio.Cancelled):
            # This layer swallowed an exception: the messages count as handled.
            invocation.error = None
            invocation.outcome = "ok"
            invocation.failed = frozenset()
        elif invocation.outcome is None:
            invocation.outcome = "ok"  # this layer did not call the rest: nothing failed

    return call
