"""The consumer: pollers, handlers, heartbeats and acknowledgements in one nursery, and the shutdown
contract of DESIGN.md section 1.

Shutdown, from the moment ``stop()`` is called (t0):

1. No new receives: the scope around receiving is cancelled at t0. With ``poll_on_stop="land"``
   a poll whose request is already on the wire is left to land while handlers are still inside
   their grace period, and what it returns is released at once. Once no handler runs it is
   aborted, unless we released messages after it was sent: SQS would likely hand those to it, and
   an aborted poll would orphan them, so it gets up to half the flush timeout to land. An idle
   consumer with nothing to release aborts at once and stops in milliseconds.
2. Buffered messages that no handler started are released (visibility 0) right after t0.
3. Running handlers continue in shielded scopes whose deadline becomes t0 + grace; those still
   running then are cancelled and their messages released.
4. Pending deletes and releases are flushed within ``flush_timeout``; what could not be sent is
   logged with counts (those messages reappear after their visibility timeout).
5. The whole shutdown is bounded by grace + flush_timeout + a small margin.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Union

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._batcher import Batcher, Entry
from ._client import SQSClient, open_client
from ._config import Limits
from ._dispatch import Credit, Dispatcher
from ._exceptions import (
    AccessDenied,
    ConfigurationError,
    CredentialsError,
    QueueDoesNotExist,
    SQSError,
)
from ._message import Message
from ._options import ConsumerOptions
from ._stats import ConsumerState, ConsumerStatistics, Counters
from ._util import raise_unwrapped

__all__ = [
    "BatchHandler",
    "Consumer",
    "Handler",
    "Retry",
    "open_consumer",
    "run_consumer",
]

log = logging.getLogger("trio_sqs.consumer")

Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[Union[Iterable[Union[Message, str]], None]]]  # noqa: UP007

# Slack on top of grace + flush_timeout for the hard bound on shutdown.
SHUTDOWN_MARGIN = 0.5
_TWELVE_HOURS = 12 * 3600


class Retry(Exception):
    """Raise from a handler to have its message redelivered after ``delay`` seconds.

    The message is not acknowledged; its visibility timeout is set to ``delay`` (0 to 43,200).
    """

    def __init__(self, delay: float = 0.0, reason: str | None = None) -> None:
        if not 0 <= delay <= 43_200:
            raise ConfigurationError(
                f"Retry(delay={delay!r}) is out of range (allowed: 0 to 43200)",
                code="InvalidOption",
            )
        super().__init__(reason or f"retry in {delay} s")
        self.delay = delay


@dataclass(slots=True)
class _Tracked:
    message: Message
    received_at: float
    extended_at: float
    running: bool = False


class _Poller:
    __slots__ = ("scope", "sent", "sent_at")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.sent = False
        self.sent_at = math.inf

    def mark_sent(self) -> None:
        self.sent = True
        self.sent_at = trio.current_time()


class Consumer:
    """A running consumer of one queue. Get one from :func:`open_consumer` or :func:`run_consumer`.

    Its methods are synchronous and never block; waiting is done by leaving the ``async with``
    block (or by :meth:`wait_stopped`).
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        handler: Handler | BatchHandler,
        options: ConsumerOptions,
        *,
        batch: bool,
        fifo: bool,
    ) -> None:
        self.queue_url = queue_url
        self.options = options
        self.fifo = fifo
        self._client = client
        self._handler = handler
        self._batch = batch
        self._batch_size = options.effective_batch_size(batch)
        self._poll_size = options.poll_size(batch)
        self._hb_interval = options.effective_heartbeat_interval()
        self._counters = Counters()
        self._state: ConsumerState = "starting"
        self._credit = Credit(options.capacity(batch))
        self._dispatcher = Dispatcher(fifo=fifo)
        self._tracked: dict[str, _Tracked] = {}
        self._pollers = [_Poller() for _ in range(options.effective_pollers(batch))]
        self._receive_scope = trio.CancelScope()
        self._outer = trio.CancelScope(shield=True)
        self._handler_scopes: set[trio.CancelScope] = set()
        self._in_flight = 0
        self._workers_alive = 0
        self._stop_requested = trio.Event()
        self._workers_finished = trio.Event()
        self._polling_done = trio.Event()
        self._last_release_at = -math.inf
        self._stopped = trio.Event()
        self._t0: float | None = None
        self._grace_deadline = math.inf
        self._last_poll_at: float | None = None
        self._fatal: BaseException | None = None
        self._deletes = Batcher(
            client, queue_url, "delete", options.ack_interval, self._deleted, self._delete_failed
        )
        self._releases = Batcher(
            client, queue_url, "release", options.ack_interval, self._released, self._release_failed
        )

    # -- public, synchronous --------------------------------------------------------------------

    @property
    def state(self) -> ConsumerState:
        return self._state

    def statistics(self) -> ConsumerStatistics:
        """A frozen snapshot of the consumer's state and counters."""
        return ConsumerStatistics.from_counters(
            self._counters,
            state=self._state,
            in_flight=self._in_flight,
            buffered=self._dispatcher.buffered,
            last_poll_at=self._last_poll_at,
        )

    def stop(self) -> None:
        """Start a graceful shutdown. Synchronous, idempotent, callable from any task.

        From this call on no ReceiveMessage is sent; see the module docstring for the rest.
        Leaving the ``async with open_consumer(...)`` block and cancelling the scope around it take
        this same path.
        """
        if self._stop_requested.is_set():
            return
        now = trio.current_time()
        self._t0 = now
        self._grace_deadline = now + self.options.grace_period
        if self._state != "stopped":
            self._state = "stopping"
        self._outer.deadline = self._grace_deadline + self.options.flush_timeout + SHUTDOWN_MARGIN
        unstarted = self._dispatcher.close()
        # 1. No new receives. A poll already on the wire may land while handlers run ("land");
        # with nothing running and nothing to release, it is aborted at once.
        if self.options.poll_on_stop == "abort" or (self._in_flight == 0 and not unstarted):
            self._receive_scope.cancel()
        else:
            for poller in self._pollers:
                if not poller.sent:
                    poller.scope.cancel()
        # 2. Unstarted messages go back at once.
        for message in unstarted:
            self._release(message, 0)
        self._releases.hurry()
        self._deletes.hurry()
        # 3. Running handlers get the grace period, then are cancelled.
        for scope in self._handler_scopes:
            scope.deadline = min(scope.deadline, self._grace_deadline)
        log.info(
            "stopping: %d handler(s) running, grace %.1f s",
            self._in_flight,
            self.options.grace_period,
        )
        self._stop_requested.set()

    async def wait_stopped(self) -> None:
        """Wait until the consumer has stopped completely (after :meth:`stop` or a fatal error)."""
        await self._stopped.wait()

    # -- the consumer's tasks ---------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped. The outer scope is shielded: outside cancellation does not cut the
        shutdown short; ``stop()`` bounds it (grace + flush_timeout + margin)."""
        try:
            with self._outer:
                async with trio.open_nursery() as services:
                    services.start_soon(self._deletes.run)
                    services.start_soon(self._releases.run)
                    services.start_soon(self._heartbeats)
                    async with trio.open_nursery() as work:
                        work.start_soon(self._polling)
                        workers = self.options.concurrency
                        self._workers_alive = workers
                        for _ in range(workers):
                            work.start_soon(self._worker)
                        self._state = "running"
                        log.info(
                            "consuming %s: concurrency %d, %d poller(s), batch %d, lease %d s",
                            self.queue_url,
                            self.options.concurrency,
                            len(self._pollers),
                            self._batch_size,
                            self.options.visibility_timeout,
                        )
                        task_status.started()
                        await self._stop_requested.wait()
                        await self._workers_finished.wait()
                        flush_deadline = trio.current_time() + self.options.flush_timeout
                        await self._let_polls_land()
                        self._receive_scope.cancel()
                    await self._flush(flush_deadline)
                    services.cancel_scope.cancel()
        finally:
            self._state = "stopped"
            self._stopped.set()
            self._log_summary()
        if self._fatal is not None:
            raise self._fatal

    async def _let_polls_land(self) -> None:
        """No handler runs any more. A poll sent before one of our releases is likely to be handed
        the released messages by SQS: aborting it would orphan them for the whole lease (DESIGN
        2.2). So such a poll gets up to half the flush timeout to land (what it brings is released
        again, with no poll left to swallow it); any other poll is aborted at once."""
        if self.options.poll_on_stop != "land":
            return
        if not any(p.sent and p.sent_at <= self._last_release_at for p in self._pollers):
            return
        with trio.move_on_after(self.options.flush_timeout / 2):
            await self._polling_done.wait()

    async def _flush(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deletes.drain)
                nursery.start_soon(self._releases.drain)
        unflushed = self._deletes.pending + self._releases.pending
        if unflushed:
            self._counters.unflushed += unflushed
            log.error(
                "flush timed out: %d delete(s) and %d release(s) not sent; those messages "
                "reappear after their visibility timeout",
                self._deletes.pending,
                self._releases.pending,
            )

    def _log_summary(self) -> None:
        c = self._counters
        took = f"{trio.current_time() - self._t0:.3f} s" if self._t0 is not None else "n/a"
        log.info(
            "stopped in %s: received %d, completed %d, failed %d, released %d, deleted %d, "
            "aborted polls %d, unflushed %d",
            took,
            c.received,
            c.completed,
            c.failed,
            c.released,
            c.deleted,
            c.aborted_polls,
            c.unflushed,
        )

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.stop()

    # -- polling ----------------------------------------------------------------------------------

    async def _polling(self) -> None:
        try:
            with self._receive_scope:
                async with trio.open_nursery() as nursery:
                    for poller in self._pollers:
                        nursery.start_soon(self._poll_loop, poller)
        finally:
            self._polling_done.set()

    async def _poll_loop(self, poller: _Poller) -> None:
        backoff = self.options.error_backoff
        with poller.scope:
            while not self._stop_requested.is_set():
                await self._credit.acquire(self._poll_size)
                poller.sent = False
                try:
                    result = await self._client.receive_messages(
                        self.queue_url,
                        max_messages=self._poll_size,
                        wait_time=self.options.wait_time,
                        visibility_timeout=self.options.visibility_timeout,
                        attribute_names=self.options.attribute_names,
                        message_attribute_names=self.options.message_attribute_names,
                        on_sent=poller.mark_sent,
                        # One request per attempt: a client-level retry could send a receive
                        # after stop. This loop does its own backoff.
                        retry=False,
                    )
                except trio.Cancelled:
                    self._credit.release(self._poll_size)
                    if poller.sent:
                        self._counters.aborted_polls += 1
                        log.debug("long poll aborted after it was sent")
                    raise
                except SQSError as exc:
                    self._credit.release(self._poll_size)
                    self._counters.poll_errors += 1
                    if isinstance(exc, (QueueDoesNotExist, ConfigurationError)):
                        log.error("cannot poll %s: %s", self.queue_url, exc)
                        self._fail(exc)
                        return
                    if isinstance(exc, (AccessDenied, CredentialsError)):
                        delay = self.options.auth_error_backoff * random.uniform(0.5, 1.0)
                        log.error(
                            "polling %s denied: %s; retrying in %.1f s", self.queue_url, exc, delay
                        )
                    else:
                        delay = random.uniform(0, backoff)
                        backoff = min(self.options.max_error_backoff, backoff * 2)
                        log.warning(
                            "polling %s failed: %s; retrying in %.1f s", self.queue_url, exc, delay
                        )
                    await trio.sleep(delay)
                    continue
                except BaseException as exc:
                    self._credit.release(self._poll_size)
                    if isinstance(exc, Exception):
                        log.exception("poller crashed")
                        self._fail(exc)
                        return
                    raise
                finally:
                    poller.sent = False
                    poller.sent_at = math.inf
                backoff = self.options.error_backoff
                self._accept(result.messages, len(result.corrupt))

    def _accept(self, messages: Sequence[Message], corrupt: int) -> None:
        c = self._counters
        c.polls += 1
        self._last_poll_at = time.time()
        self._credit.release(self._poll_size - len(messages))
        if corrupt:
            # Left alone: they reappear after the lease and end in the dead-letter queue if the
            # corruption persists. They are never handed to a handler.
            c.corrupt += corrupt
        if not messages and not corrupt:
            c.empty_polls += 1
        if self._stop_requested.is_set():
            # A poll that landed after stop: hand everything back at once.
            for message in messages:
                c.received += 1
                self._release(message, 0)
            self._releases.hurry()
            return
        now = trio.current_time()
        for message in messages:
            c.received += 1
            self._tracked[message.receipt_handle] = _Tracked(message, now, now)
            self._dispatcher.put(message)
            log.debug("received %s", message.message_id, extra={"message_id": message.message_id})

    # -- handlers ---------------------------------------------------------------------------------

    async def _worker(self) -> None:
        take = self._batch_size if self._batch else 1
        try:
            while True:
                messages = await self._dispatcher.get(take)
                if not messages:
                    return
                await self._handle(messages)
        finally:
            self._workers_alive -= 1
            if self._workers_alive == 0:
                self._workers_finished.set()

    async def _handle(self, messages: list[Message]) -> None:
        for message in messages:
            tracked = self._tracked.get(message.receipt_handle)
            if tracked is not None:
                tracked.running = True
        self._in_flight += len(messages)
        deadline = math.inf
        if self.options.handler_timeout is not None:
            deadline = trio.current_time() + self.options.handler_timeout
        deadline = min(deadline, self._grace_deadline)
        failed: set[str] = set()
        retry_delay: float | None = None
        finished = False
        try:
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                self._handler_scopes.add(scope)
                try:
                    if self._batch:
                        handler_b: BatchHandler = self._handler  # type: ignore[assignment]
                        reported = await handler_b(list(messages))
                        failed = _failed_ids(reported, messages)
                    else:
                        handler: Handler = self._handler  # type: ignore[assignment]
                        await handler(messages[0])
                    finished = True
                except Retry as exc:
                    retry_delay = exc.delay
                    finished = True
                except Exception:
                    failed = {m.message_id for m in messages}
                    finished = True
                    ids = ", ".join(m.message_id for m in messages)
                    log.exception(
                        "handler failed for message(s) %s", ids, extra={"message_id": ids}
                    )
                finally:
                    self._handler_scopes.discard(scope)
        finally:
            self._in_flight -= len(messages)
        if not finished:
            at_grace = self._stop_requested.is_set() and trio.current_time() >= self._grace_deadline
            for message in messages:
                if at_grace:
                    self._counters.cancelled_at_grace += 1
                    log.warning(
                        "handler cancelled at end of grace: %s",
                        message.message_id,
                        extra={"message_id": message.message_id},
                    )
                    self._settle(message, release=0)
                else:
                    self._counters.timed_out += 1
                    log.warning(
                        "handler timed out: %s",
                        message.message_id,
                        extra={"message_id": message.message_id},
                    )
                    self._settle(
                        message, release=self.options.failure_visibility(message.receive_count)
                    )
            return
        for message in messages:
            if retry_delay is not None:
                self._counters.retried += 1
                self._settle(message, release=math.ceil(retry_delay))
            elif message.message_id in failed:
                self._counters.failed += 1
                self._settle(
                    message, release=self.options.failure_visibility(message.receive_count)
                )
            else:
                self._counters.completed += 1
                self._settle(message, release=None)

    def _settle(self, message: Message, *, release: int | None) -> None:
        """A handler is done with ``message``: acknowledge it (``release=None``) or make it visible
        again after ``release`` seconds. The heartbeat stops covering it first."""
        self._tracked.pop(message.receipt_handle, None)
        if release is None:
            self._deletes.add(Entry(message.message_id, message.receipt_handle))
        else:
            self._releases.add(Entry(message.message_id, message.receipt_handle, release))
            self._last_release_at = trio.current_time()
            if self.fifo:
                # Keep the group's order: the rest of it goes back unprocessed.
                for later in self._dispatcher.drop_group(message):
                    self._release(later, 0)
        self._credit.release(1)
        self._dispatcher.done(message)

    def _release(self, message: Message, visibility: int) -> None:
        """Hand back a message no handler started."""
        self._tracked.pop(message.receipt_handle, None)
        self._releases.add(Entry(message.message_id, message.receipt_handle, visibility))
        self._last_release_at = trio.current_time()
        self._credit.release(1)

    # -- acknowledgement callbacks ------------------------------------------------------------------

    def _deleted(self, entry: Entry) -> None:
        self._counters.deleted += 1

    def _delete_failed(self, entry: Entry, code: str) -> None:
        self._counters.delete_failed += 1
        log.error(
            "could not delete %s (%s); it will be delivered again",
            entry.message_id,
            code,
            extra={"message_id": entry.message_id, "error_code": code},
        )

    def _released(self, entry: Entry) -> None:
        self._counters.released += 1

    def _release_failed(self, entry: Entry, code: str) -> None:
        self._counters.release_failed += 1
        log.warning(
            "could not release %s (%s)",
            entry.message_id,
            code,
            extra={"message_id": entry.message_id, "error_code": code},
        )

    # -- visibility heartbeats ----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self._hb_interval
        lease = self.options.visibility_timeout
        while True:
            await trio.sleep(interval / 2)
            now = trio.current_time()
            due = [
                t.message.receipt_handle
                for t in self._tracked.values()
                if now - t.extended_at >= interval and now - t.received_at + lease < _TWELVE_HOURS
            ]
            for start in range(0, len(due), 10):
                # Re-check right before sending: a message settled meanwhile is never extended.
                chunk = [self._tracked[h] for h in due[start : start + 10] if h in self._tracked]
                if not chunk:
                    continue
                sent_at = trio.current_time()
                handles = {str(i): t.message.receipt_handle for i, t in enumerate(chunk)}
                try:
                    result = await self._client.change_message_visibility_batch(
                        self.queue_url, handles, lease
                    )
                except SQSError as exc:
                    self._counters.heartbeat_errors += 1
                    log.warning("visibility heartbeat failed: %s", exc)
                    continue
                for entry_id in result.successful:
                    chunk[int(entry_id)].extended_at = sent_at
                    self._counters.visibility_extensions += 1
                for failure in result.failed:
                    # An invalid receipt handle means the message was settled or received again
                    # elsewhere meanwhile: nothing to extend.
                    self._counters.heartbeat_errors += 1
                    log.debug("heartbeat entry failed: %s", failure)


def _failed_ids(reported: Iterable[Message | str] | None, messages: Sequence[Message]) -> set[str]:
    if reported is None:
        return set()
    ids = {m.message_id for m in messages}
    failed = {r.message_id if isinstance(r, Message) else str(r) for r in reported}
    unknown = failed - ids
    if unknown:
        raise TypeError(f"batch handler reported unknown message id(s): {sorted(unknown)}")
    return failed


def _make_options(options: ConsumerOptions | None, kwargs: dict[str, Any]) -> ConsumerOptions:
    if options is not None:
        if kwargs:
            raise ConfigurationError(
                "pass either options=ConsumerOptions(...) or option keywords, not both",
                code="InvalidOption",
            )
        return options
    try:
        return ConsumerOptions(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"unknown consumer option: {exc}", code="InvalidOption") from exc


@asynccontextmanager
async def open_consumer(
    queue: str,
    handler: Handler | BatchHandler,
    *,
    batch: bool = False,
    client: SQSClient | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    options: ConsumerOptions | None = None,
    **option_kwargs: Any,
) -> AsyncIterator[Consumer]:
    """Consume ``queue`` with ``handler`` while the block runs; stop gracefully when it ends.

    Args:
        queue: A queue name or URL.
        handler: ``async def handler(message)``; returning acknowledges (deletes) the message,
            raising leaves it to reappear after the failure backoff, raising :class:`Retry`
            after the given delay. With ``batch=True``, ``async def handler(messages)`` that
            may return the messages (or message ids) that failed; the rest are acknowledged.
        batch: Whether ``handler`` takes a list of messages.
        client: An open :class:`SQSClient` to use; by default the consumer opens its own with
            ``region``, ``endpoint_url`` and ``profile``.
        options: A :class:`ConsumerOptions`, or pass its fields as keywords.

    Raises:
        ConfigurationError: for invalid options, before any I/O.
        QueueDoesNotExist: if the queue does not exist, before the block starts.

    Cancellation: leaving the block for any reason (including cancellation of an enclosing
    scope) stops the consumer gracefully: the exit waits for the bounded shutdown
    (grace_period + flush_timeout + 0.5 s at most) inside a shielded scope.
    """
    opts = _make_options(options, option_kwargs)
    if not callable(handler):
        raise ConfigurationError(f"handler must be callable, got {handler!r}", code="InvalidOption")
    async with AsyncExitStack() as stack:
        if client is None:
            pollers = opts.effective_pollers(batch)
            client = await stack.enter_async_context(
                open_client(
                    region=region,
                    endpoint_url=endpoint_url,
                    profile=profile,
                    limits=Limits(max_receive_connections=pollers, max_other_connections=8),
                )
            )
        queue_url, fifo = await _resolve_queue(client, queue)
        consumer = Consumer(client, queue_url, handler, opts, batch=batch, fifo=fifo)
        try:
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
        attributes = await client.get_queue_attributes(url, ["FifoQueue"])
    else:
        url = await client.get_queue_url(queue)
        attributes = await client.get_queue_attributes(url, ["FifoQueue"])
    fifo = attributes.get("FifoQueue", "false").lower() == "true" or url.endswith(".fifo")
    return url, fifo


async def run_consumer(
    queue: str,
    handler: Handler | BatchHandler,
    *,
    task_status: trio.TaskStatus[Consumer] = trio.TASK_STATUS_IGNORED,
    **kwargs: Any,
) -> None:
    """Run a consumer in a nursery you own, until it is stopped or the nursery is cancelled.

    Takes the same arguments as :func:`open_consumer`. ``await nursery.start(run_consumer, ...)``
    returns the :class:`Consumer` once it is polling.

    Cancellation: cancelling the surrounding scope stops the consumer gracefully (bounded by
    grace_period + flush_timeout + 0.5 s) before this returns.
    """
    async with open_consumer(queue, handler, **kwargs) as consumer:
        task_status.started(consumer)
        await consumer.wait_stopped()
