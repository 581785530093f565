"""What a handler is: the two signatures (:data:`Handler`, :data:`BatchHandler`), :class:`Retry`,
and the checks :func:`open_consumer` makes of a handler and a queue before any I/O."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Union, get_origin

from ._config import MAX_VISIBILITY
from ._exceptions import ConfigurationError
from ._message import Message

__all__ = [
    "BatchHandler",
    "Handler",
    "Retry",
    "check_handler",
    "check_queue",
    "describe_callable",
    "failed_ids",
    "is_async_callable",
]

Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[Union[Iterable[Union[Message, str]], None]]]  # noqa: UP007


class Retry(Exception):
    """Raise from a handler to have its message redelivered after ``delay`` seconds.

    The message is not acknowledged; its visibility timeout is set to ``delay`` (0 to 43,200).
    """

    def __init__(self, delay: float = 0.0, reason: str | None = None) -> None:
        if not 0 <= delay <= MAX_VISIBILITY:
            raise ConfigurationError(
                f"Retry(delay={delay!r}) is out of range (allowed: 0 to {MAX_VISIBILITY})",
                code="InvalidOption",
            )
        super().__init__(reason or f"retry in {delay} s")
        self.delay = delay


def check_queue(queue: object, name: str = "queue") -> None:
    """Raise :class:`ConfigurationError` unless ``queue`` is a non-empty string (a name or URL)."""
    if not isinstance(queue, str) or not queue.strip():
        raise ConfigurationError(
            f"{name} must be a queue name or URL (a non-empty string), got {queue!r}",
            code="InvalidOption",
        )


def check_handler(handler: object, *, batch: object) -> None:
    """Raise :class:`ConfigurationError` unless ``handler`` fits ``batch``.

    A handler is an async callable (an ``async def`` function or method, a ``functools.partial``
    of one, or an object whose ``__call__`` is ``async def``) that can be called with exactly one
    positional argument: a :class:`Message`, or with ``batch=True`` a ``list[Message]``. Where the
    handler's signature can be read, its parameters are checked, and an argument annotated for the
    other mode (``list[Message]`` without ``batch=True``, ``Message`` with it) is refused.
    """
    if not isinstance(batch, bool):
        raise ConfigurationError(
            f"batch must be True or False, got {batch!r}", code="InvalidOption"
        )
    expected = (
        "async def handler(messages: list[Message])" if batch else "async def handler(message)"
    )
    if not is_async_callable(handler):
        raise ConfigurationError(
            f"handler must be an async callable ({expected}), got {describe_callable(handler)}",
            code="InvalidOption",
        )
    signatures = _signatures(handler)
    if signatures is None:
        return
    written, evaluated = signatures
    try:
        written.bind(None)
    except TypeError:
        raise ConfigurationError(
            f"handler must take exactly one positional argument ({expected}), but "
            f"{describe_callable(handler)} has the signature {written}",
            code="InvalidOption",
        ) from None
    first = next(iter(evaluated.parameters.values()), None)
    if first is None or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        return
    takes = _annotated_as(first.annotation)
    annotated = _annotation_text(written.parameters[first.name].annotation)
    if takes == "list" and not batch:
        raise ConfigurationError(
            f"handler {describe_callable(handler)} takes a list of messages (its argument is annotated "
            f"{annotated}): pass batch=True for a batch handler",
            code="InvalidOption",
        )
    if takes == "message" and batch:
        raise ConfigurationError(
            f"batch=True needs a handler that takes a list of messages ({expected}), but "
            f"{describe_callable(handler)} takes one (its argument is annotated {annotated})",
            code="InvalidOption",
        )


def is_async_callable(obj: object) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    if isinstance(obj, type) or inspect.isroutine(obj):
        # A class (calling it builds an instance), or a plain function or method: not async.
        return False
    call = getattr(type(obj), "__call__", None)  # noqa: B004 - the type's, not the instance's
    return call is not None and inspect.iscoroutinefunction(call)


def _signatures(handler: object) -> tuple[inspect.Signature, inspect.Signature] | None:
    """The handler's signature as written and with its string annotations evaluated (as written
    if they cannot be); None if it has none that can be read (some builtins, C extensions)."""
    assert callable(handler)
    try:
        written = inspect.signature(handler)
    except (ValueError, TypeError):
        return None
    try:
        return written, inspect.signature(handler, eval_str=True)
    except Exception:  # an annotation names what only a type checker sees: judge its text
        return written, written


_SEQUENCES: frozenset[Any] = frozenset(
    {
        list,
        tuple,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Collection,
        collections.abc.Iterable,
    }
)
_LIST_TEXT = re.compile(
    r"(?:[A-Za-z_][\w.]*\.)?(?:list|List|Sequence|MutableSequence|Collection|Iterable|tuple|Tuple)"
    r"(?:\[.*\])?"
)
_MESSAGE_TEXT = re.compile(r"(?:[A-Za-z_][\w.]*\.)?Message")


def _annotated_as(annotation: object) -> Literal["list", "message"] | None:
    """What an annotation says the argument is: a list of messages, one message, or unknown."""
    if isinstance(annotation, str):  # not evaluated: judge by its text
        text = annotation.strip().strip("'\"").strip()
        if _LIST_TEXT.fullmatch(text):
            return "list"
        if _MESSAGE_TEXT.fullmatch(text):
            return "message"
        return None
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return "message"
    for candidate in (annotation, get_origin(annotation)):
        try:
            if candidate in _SEQUENCES:
                return "list"
        except TypeError:  # an unhashable annotation object: not one of ours
            pass
    return None


def _annotation_text(annotation: object) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not get_origin(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("trio_sqs._message.", "")


def describe_callable(obj: object) -> str:
    name = getattr(obj, "__qualname__", None)
    if isinstance(obj, functools.partial):
        return f"functools.partial({describe_callable(obj.func)}, ...)"
    if inspect.isroutine(obj) and isinstance(name, str):
        kind = "async function" if inspect.iscoroutinefunction(obj) else "function"
        return f"{kind} {name}"
    if isinstance(obj, type):
        return f"the class {obj.__qualname__}"
    return repr(obj)


def failed_ids(reported: Iterable[Message | str] | None, messages: Sequence[Message]) -> set[str]:
    if reported is None:
        return set()
    ids = {m.message_id for m in messages}
    failed = {r.message_id if isinstance(r, Message) else str(r) for r in reported}
    unknown = failed - ids
    if unknown:
        raise TypeError(f"batch handler reported unknown message id(s): {sorted(unknown)}")
    return failed
