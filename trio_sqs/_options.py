"""Consumer options: keyword-only, frozen, validated at construction (before any I/O)."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_origin

from ._config import check_int_range, check_number
from ._exceptions import ConfigurationError
from ._message import Message

__all__ = ["ConsumerOptions", "PollOnStop", "check_handler", "check_queue"]

PollOnStop = Literal["abort", "land"]

# SQS caps a message's total visibility at 12 hours from its first receipt.
MAX_VISIBILITY = 43_200
# Deletes wait up to this long to fill a batch when messages come slowly (see the Batcher).
MAX_ACK_WINDOW = 2.0


@dataclass(frozen=True, kw_only=True)
class ConsumerOptions:
    """Everything that tunes a consumer. Every field has a default suited to one worker process.

    Attributes:
        concurrency: Handlers (or batch handlers) running at once. Independent of ``batch_size``.
        batch_size: MaxNumberOfMessages per ReceiveMessage (1-10), and the most messages a batch
            handler gets at once. Default: ``min(10, concurrency)`` (or 10 for batch handlers).
            Polls ask for fewer when ``concurrency + max_buffered`` is smaller.
        wait_time: WaitTimeSeconds of each long poll (0-20).
        visibility_timeout: The receive lease in seconds: the VisibilityTimeout asked for on every
            ReceiveMessage and renewed by heartbeats while a message is in hand. Keep it short: a
            message orphaned by an aborted long poll comes back after this long.
        heartbeat_interval: Seconds between visibility heartbeats. Default: a third of the lease.
            Must be shorter than ``visibility_timeout``.
        max_buffered: Received messages allowed to wait for a free handler (backpressure).
            Default: ``batch_size``.
        pollers: Most long polls in flight at once. Default: enough to keep every handler busy, at
            most 10. Polls adapt to the load: one while polls come back short (an idle consumer
            has exactly one poll in flight), one more each time a poll comes back full.
        batch_window: Seconds a poller waits, after a poll that came back short, from that poll's
            sending before it polls again (like Lambda's MaximumBatchingWindowInSeconds): fewer
            requests per message at low rates, for up to this much latency. Deletes are batched
            over at least this window too. Default 0: poll again at once.
        grace_period: Seconds running handlers may go on after stop before they are cancelled.
        flush_timeout: Seconds the final flush of deletes and releases may take at stop.
        poll_on_stop: What happens at stop to a long poll already on the wire: ``"abort"`` ends it
            at once; ``"land"`` lets it land while handlers are still inside their grace period
            (it never extends the shutdown: it is aborted once no handler runs). Either way what
            it brings, like every message handed back from stop on, is released with a visibility
            that outlasts every poll SQS may still be running for us (see the README's "Shutdown").
            An idle consumer aborts at once either way.
        handler_timeout: Optional deadline per handler call, in seconds. A handler that overruns
            is cancelled and its message released with the failure backoff.
        failure_backoff: Seconds a failed message stays invisible after its first failed attempt;
            doubles with each further receive (``ApproximateReceiveCount``).
        max_failure_backoff: Cap of that backoff, in seconds.
        ack_interval: Shortest batch window of deletes and releases: a partial batch is sent
            after this long. For deletes the window grows (up to 2 s or ``batch_window``, at most
            a quarter of the lease) while batches go out partial, so a slow queue costs fewer
            DeleteMessageBatch calls; it shrinks back as they fill.
        error_backoff: Initial pause of a poller after a transient error (doubles, capped at
            ``max_error_backoff``, with full jitter).
        max_error_backoff: Cap of the poller's error backoff.
        auth_error_backoff: Pause of a poller after an access or credentials error.
        attribute_names: System attributes to request (default all).
        message_attribute_names: Message attributes to request (default all).
        random_seed: Seed of the consumer's own random generator (``random.Random``), which draws
            the jitter of its pollers' error backoff. Default: seeded from the operating system.
            These draws never touch the global ``random`` module: seeding it elsewhere neither
            changes them nor is disturbed by them.
    """

    concurrency: int = 10
    batch_size: int | None = None
    wait_time: int = 20
    visibility_timeout: int = 30
    heartbeat_interval: float | None = None
    max_buffered: int | None = None
    pollers: int | None = None
    batch_window: float = 0.0
    grace_period: float = 10.0
    flush_timeout: float = 5.0
    poll_on_stop: PollOnStop = "land"
    handler_timeout: float | None = None
    failure_backoff: float = 1.0
    max_failure_backoff: float = 900.0
    ack_interval: float = 0.1
    error_backoff: float = 0.5
    max_error_backoff: float = 20.0
    auth_error_backoff: float = 30.0
    attribute_names: tuple[str, ...] = ("All",)
    message_attribute_names: tuple[str, ...] = ("All",)
    random_seed: int | None = None

    def __post_init__(self) -> None:
        check_int_range("concurrency", self.concurrency, 1, 10_000)
        if self.batch_size is not None:
            check_int_range("batch_size", self.batch_size, 1, 10)
        check_int_range("wait_time", self.wait_time, 0, 20)
        check_int_range("visibility_timeout", self.visibility_timeout, 1, MAX_VISIBILITY)
        if self.heartbeat_interval is not None:
            check_number("heartbeat_interval", self.heartbeat_interval, 0.0, strict_low=True)
            if self.heartbeat_interval >= self.visibility_timeout:
                raise ConfigurationError(
                    f"heartbeat_interval={self.heartbeat_interval!r} must be shorter than "
                    f"visibility_timeout={self.visibility_timeout!r}",
                    code="InvalidOption",
                )
        if self.max_buffered is not None:
            check_int_range("max_buffered", self.max_buffered, 0, 100_000)
        if self.pollers is not None:
            check_int_range("pollers", self.pollers, 1, 100)
        check_number("batch_window", self.batch_window, 0.0, 20.0)
        check_number("grace_period", self.grace_period, 0.0)
        check_number("flush_timeout", self.flush_timeout, 0.0)
        if self.poll_on_stop not in ("abort", "land"):
            raise ConfigurationError(
                f"poll_on_stop={self.poll_on_stop!r} must be 'abort' or 'land'",
                code="InvalidOption",
            )
        if self.handler_timeout is not None:
            check_number("handler_timeout", self.handler_timeout, 0.0, strict_low=True)
        check_number("failure_backoff", self.failure_backoff, 0.0, MAX_VISIBILITY)
        check_number("max_failure_backoff", self.max_failure_backoff, 0.0, MAX_VISIBILITY)
        check_number("ack_interval", self.ack_interval, 0.0, 60.0)
        check_number("error_backoff", self.error_backoff, 0.0)
        check_number("max_error_backoff", self.max_error_backoff, 0.0)
        check_number("auth_error_backoff", self.auth_error_backoff, 0.0)
        for name in ("attribute_names", "message_attribute_names"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigurationError(
                    f"{name} must be a tuple of strings, got {value!r}", code="InvalidOption"
                )
        if self.random_seed is not None and (
            isinstance(self.random_seed, bool) or not isinstance(self.random_seed, int)
        ):
            raise ConfigurationError(
                f"random_seed must be an integer or None, got {self.random_seed!r}",
                code="InvalidOption",
            )

    # -- derived values ----------------------------------------------------------------------

    def effective_batch_size(self, batch_handler: bool) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 10 if batch_handler else min(10, self.concurrency)

    def effective_heartbeat_interval(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.visibility_timeout / 3

    def effective_max_ack_interval(self) -> float:
        """The longest a partial batch of deletes may wait: it grows towards this at low rates.
        At most a quarter of the lease (a settled message gets no more heartbeats)."""
        return max(
            self.ack_interval,
            min(max(MAX_ACK_WINDOW, self.batch_window), self.visibility_timeout / 4),
        )

    def capacity(self, batch_handler: bool) -> int:
        """Messages the consumer may hold at once: running plus buffered."""
        batch = self.effective_batch_size(batch_handler)
        running = self.concurrency * (batch if batch_handler else 1)
        buffered = self.max_buffered if self.max_buffered is not None else batch
        return running + buffered

    def poll_size(self, batch_handler: bool) -> int:
        """MaxNumberOfMessages of each poll: the batch size, or less if the capacity is smaller
        (a poll is only sent when all it may return fits, so it never exceeds ``max_buffered``)."""
        return min(self.effective_batch_size(batch_handler), self.capacity(batch_handler))

    def effective_pollers(self, batch_handler: bool) -> int:
        if self.pollers is not None:
            return self.pollers
        return max(
            1, min(10, math.ceil(self.capacity(batch_handler) / self.poll_size(batch_handler)))
        )

    def failure_visibility(self, receive_count: int) -> int:
        """Seconds a failed message stays invisible, growing with its receive count."""
        delay = self.failure_backoff * (2 ** max(0, min(receive_count, 40) - 1))
        return int(min(self.max_failure_backoff, math.ceil(delay)))


# -- the other arguments of a consumer, checked before any I/O --------------------------------------


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
    if not _is_async_callable(handler):
        raise ConfigurationError(
            f"handler must be an async callable ({expected}), got {_describe(handler)}",
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
            f"{_describe(handler)} has the signature {written}",
            code="InvalidOption",
        ) from None
    first = next(iter(evaluated.parameters.values()), None)
    if first is None or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        return
    takes = _annotated_as(first.annotation)
    annotated = _annotation_text(written.parameters[first.name].annotation)
    if takes == "list" and not batch:
        raise ConfigurationError(
            f"handler {_describe(handler)} takes a list of messages (its argument is annotated "
            f"{annotated}): pass batch=True for a batch handler",
            code="InvalidOption",
        )
    if takes == "message" and batch:
        raise ConfigurationError(
            f"batch=True needs a handler that takes a list of messages ({expected}), but "
            f"{_describe(handler)} takes one (its argument is annotated {annotated})",
            code="InvalidOption",
        )


def _is_async_callable(obj: object) -> bool:
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


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None)
    if isinstance(obj, functools.partial):
        return f"functools.partial({_describe(obj.func)}, ...)"
    if inspect.isroutine(obj) and isinstance(name, str):
        kind = "async function" if inspect.iscoroutinefunction(obj) else "function"
        return f"{kind} {name}"
    if isinstance(obj, type):
        return f"the class {obj.__qualname__}"
    return repr(obj)
