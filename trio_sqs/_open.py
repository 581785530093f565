"""The entry points: :func:`open_consumer` (an async context manager that owns its nursery) and
:func:`run_consumer` (for callers who bring their own nursery)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal, overload

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._client import SQSClient
from ._config import ConsumerOptions, Limits
from ._connect import open_client
from ._consumer import Consumer
from ._exceptions import ConfigurationError
from ._handler import BatchHandler, Handler, check_handler, check_queue
from ._middleware import Middleware, check_middleware
from ._util import raise_unwrapped

__all__ = ["open_consumer", "run_consumer"]


def _make_options(options: ConsumerOptions | None, kwargs: dict[str, Any]) -> ConsumerOptions:
    if options is not None:
        if kwargs:
            raise ConfigurationError(
                "pass either options=ConsumerOptions(...) or option keywords, not both",
                code="InvalidOption",
            )
        if not isinstance(options, ConsumerOptions):
            raise ConfigurationError(
                f"options must be a ConsumerOptions, got {options!r}", code="InvalidOption"
            )
        return options
    try:
        return ConsumerOptions(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"unknown consumer option: {exc}", code="InvalidOption") from exc


@overload
def open_consumer(
    queue: str,
    handler: Handler,
    *,
    batch: Literal[False] = ...,
    client: SQSClient | None = ...,
    region: str | None = ...,
    endpoint_url: str | None = ...,
    profile: str | None = ...,
    options: ConsumerOptions | None = ...,
    middleware: Sequence[Middleware] | None = ...,
    tracing: bool = ...,
    **option_kwargs: Any,
) -> AbstractAsyncContextManager[Consumer]: ...


@overload
def open_consumer(
    queue: str,
    handler: BatchHandler,
    *,
    batch: Literal[True],
    client: SQSClient | None = ...,
    region: str | None = ...,
    endpoint_url: str | None = ...,
    profile: str | None = ...,
    options: ConsumerOptions | None = ...,
    middleware: Sequence[Middleware] | None = ...,
    tracing: bool = ...,
    **option_kwargs: Any,
) -> AbstractAsyncContextManager[Consumer]: ...


def open_consumer(
    queue: str,
    handler: Handler | BatchHandler,
    *,
    batch: bool = False,
    client: SQSClient | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    options: ConsumerOptions | None = None,
    middleware: Sequence[Middleware] | None = None,
    tracing: bool = True,
    **option_kwargs: Any,
) -> AbstractAsyncContextManager[Consumer]:
    """Consume ``queue`` with ``handler`` while the block runs; stop gracefully when it ends.

    Args:
        queue: A queue name or URL (a non-empty string).
        handler: ``async def handler(message)``; returning acknowledges (deletes) the message,
            raising leaves it to reappear after the failure backoff, raising :class:`Retry`
            after the given delay. With ``batch=True``, ``async def handler(messages)`` that
            may return the messages (or message ids) that failed; the rest are acknowledged.
            Any async callable that takes one positional argument will do: an ``async def``
            function or method, a ``functools.partial`` of one, an object with an
            ``async def __call__``. A synchronous function is refused (even one that returns
            an awaitable: make it ``async def``).
        batch: Whether ``handler`` takes a list of messages. Type checkers see the mix-up (two
            overloads); at run time a handler whose argument is annotated for the other mode
            (``list[Message]`` without ``batch=True``, ``Message`` with it) is refused.
        client: An open :class:`SQSClient` to use; by default the consumer opens its own with
            ``region``, ``endpoint_url`` and ``profile``.
        options: A :class:`ConsumerOptions`, or pass its fields as keywords (``random_seed``
            seeds the consumer's own random generator).
        middleware: Code wrapped around every handler invocation, outermost first: async
            functions ``async def mw(invocation, call_next)`` or functions returning an async
            context manager ``mw(invocation)`` (see :class:`Invocation`; README, "Middleware").
            An exception a middleware raises is handled like one from the handler.
        tracing: With ``opentelemetry-api`` installed (``pip install 'trio-sqs[otel]'``), every
            handler invocation gets an OpenTelemetry CONSUMER span (a child of the trace the
            message carries), through a middleware put before the others; ``False`` turns it
            off. Without the package there is no tracing either way (README, "Tracing").

    Raises:
        ConfigurationError: for an invalid queue, handler or option, naming the argument and
            what was expected. Raised by this call itself, before any I/O.
        QueueDoesNotExist: if the queue does not exist, before the block starts.

    Cancellation: leaving the block for any reason (including cancellation of an enclosing
    scope) stops the consumer gracefully: the exit waits for the bounded shutdown
    (grace_period + flush_timeout + 0.5 s at most, unless a handler shields itself from
    cancellation) inside a shielded scope.
    """
    opts = _make_options(options, option_kwargs)
    check_queue(queue)
    check_handler(handler, batch=batch)
    chain = check_middleware(middleware)
    _check_tracing(tracing)
    return _open_consumer(
        queue, handler, opts, batch, client, region, endpoint_url, profile, chain, tracing
    )


def _check_tracing(tracing: object) -> None:
    if not isinstance(tracing, bool):
        raise ConfigurationError(
            f"tracing must be True or False, got {tracing!r}", code="InvalidOption"
        )


@asynccontextmanager
async def _open_consumer(
    queue: str,
    handler: Handler | BatchHandler,
    opts: ConsumerOptions,
    batch: bool,
    client: SQSClient | None,
    region: str | None,
    endpoint_url: str | None,
    profile: str | None,
    middleware: Sequence[Middleware],
    tracing: bool = True,
) -> AsyncIterator[Consumer]:
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(
                open_client(
                    region=region,
                    endpoint_url=endpoint_url,
                    profile=profile,
                    limits=Limits(),
                )
            )
        queue_url, fifo = await _resolve_queue(client, queue)
        consumer = Consumer(
            client,
            queue_url,
            handler,
            opts,
            batch=batch,
            fifo=fifo,
            middleware=middleware,
            tracing=tracing,
        )
        try:
            with client.reserve_polls(opts.effective_pollers(batch)):
                async with trio.open_nursery() as nursery:
                    await nursery.start(consumer._run)
                    try:
                        yield consumer
                    finally:
                        consumer.stop()
        except BaseExceptionGroup as group:
            raise_unwrapped(group)


async def _resolve_queue(client: SQSClient, queue: str) -> tuple[str, bool]:
    if queue.startswith(("https://", "http://")):
        url = queue
    else:
        url = await client.get_queue_url(queue)
    # Also proves that a queue given by URL exists, before the consumer starts.
    attributes = await client.get_queue_attributes(url, ["FifoQueue"])
    fifo = attributes.get("FifoQueue", "false").lower() == "true" or url.endswith(".fifo")
    return url, fifo


@overload
async def run_consumer(
    queue: str,
    handler: Handler,
    *,
    batch: Literal[False] = ...,
    task_status: trio.TaskStatus[Consumer] = ...,
    client: SQSClient | None = ...,
    region: str | None = ...,
    endpoint_url: str | None = ...,
    profile: str | None = ...,
    options: ConsumerOptions | None = ...,
    middleware: Sequence[Middleware] | None = ...,
    tracing: bool = ...,
    **option_kwargs: Any,
) -> None: ...


@overload
async def run_consumer(
    queue: str,
    handler: BatchHandler,
    *,
    batch: Literal[True],
    task_status: trio.TaskStatus[Consumer] = ...,
    client: SQSClient | None = ...,
    region: str | None = ...,
    endpoint_url: str | None = ...,
    profile: str | None = ...,
    options: ConsumerOptions | None = ...,
    middleware: Sequence[Middleware] | None = ...,
    tracing: bool = ...,
    **option_kwargs: Any,
) -> None: ...


async def run_consumer(
    queue: str,
    handler: Handler | BatchHandler,
    *,
    batch: bool = False,
    task_status: trio.TaskStatus[Consumer] = trio.TASK_STATUS_IGNORED,
    client: SQSClient | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    options: ConsumerOptions | None = None,
    middleware: Sequence[Middleware] | None = None,
    tracing: bool = True,
    **option_kwargs: Any,
) -> None:
    """Run a consumer in a nursery you own, until it is stopped or the nursery is cancelled.

    Takes the same arguments as :func:`open_consumer` (and refuses the same bad ones with
    :class:`ConfigurationError` before any I/O). ``await nursery.start(run_consumer, ...)``
    returns the :class:`Consumer` once it is polling.

    Cancellation: cancelling the surrounding scope stops the consumer gracefully (bounded by
    grace_period + flush_timeout + 0.5 s) before this returns.
    """
    opts = _make_options(options, option_kwargs)
    check_queue(queue)
    check_handler(handler, batch=batch)
    chain = check_middleware(middleware)
    _check_tracing(tracing)
    async with _open_consumer(
        queue, handler, opts, batch, client, region, endpoint_url, profile, chain, tracing
    ) as consumer:
        task_status.started(consumer)
        await consumer.wait_stopped()
