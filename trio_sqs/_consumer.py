"""The consumer: pollers, handlers, heartbeats and acknowledgements in one nursery, and the shutdown
contract of docs/design.md, 'The shutdown contract'.

Shutdown, from the moment ``stop()`` is called (t0):

1. No new receives: the scope around receiving is cancelled at t0. With ``poll_on_stop="land"``
   a poll whose request is already on the wire is left to land while handlers are still inside
   their grace period, and what it returns is released at once. Once no handler runs it is
   aborted, unless a release of ours may not have reached SQS before it was sent: SQS would likely
   hand those messages to it, and an aborted poll would orphan them (docs/design.md, 'Abandoned
   long polls'), so it gets up to half the flush timeout to land. An idle consumer with nothing to release aborts at once and
   stops in milliseconds.
2. Buffered messages that no handler started are released (visibility 0) right after t0.
3. Running handlers continue in shielded scopes whose deadline becomes t0 + grace; those still
   running then are cancelled and their messages released.
4. Pending deletes and releases are flushed within ``flush_timeout``; what could not be sent is
   logged with counts (those messages reappear after their visibility timeout).
5. The whole shutdown is bounded by grace + flush_timeout + a small margin, provided handlers do
   not shield themselves from cancellation (Trio cannot preempt a shielded scope; what such a
   handler holds when the bound is reached is counted as unflushed and logged).

An internal error takes the same path: the consumer stops gracefully, then raises the error.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Union

import trio

from ._batcher import Batcher, Entry
from ._client import SQSClient
from ._dispatch import Credit, Dispatcher
from ._exceptions import (
    AccessDenied,
    ClientClosedError,
    ConfigurationError,
    CredentialsError,
    QueueDoesNotExist,
    SQSError,
)
from ._heartbeat import Heartbeat, Tracked
from ._message import Message
from ._options import MAX_VISIBILITY, ConsumerOptions, check_handler, check_queue
from ._stats import ConsumerState, ConsumerStatistics, Counters

__all__ = ["BatchHandler", "Consumer", "Handler", "Retry"]

log = logging.getLogger("trio_sqs.consumer")

Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[Union[Iterable[Union[Message, str]], None]]]  # noqa: UP007

# Slack on top of grace + flush_timeout for the hard bound on shutdown.
SHUTDOWN_MARGIN = 0.5
# Pause after an empty short poll (wait_time=0), so an idle consumer does not spin on requests.
EMPTY_SHORT_POLL_PAUSE = 1.0
_FATAL_POLL_ERRORS = (QueueDoesNotExist, ConfigurationError, ClientClosedError)


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


class _Poller:
    __slots__ = ("scope", "sent", "sent_at")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.sent = False
        self.sent_at = math.inf

    def mark_sent(self) -> None:
        self.sent = True
        self.sent_at = trio.current_time()

    def clear(self) -> None:
        self.sent = False
        self.sent_at = math.inf


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
        # Refused here, before any task starts, as open_consumer refuses them (see check_handler).
        if not isinstance(options, ConsumerOptions):
            raise ConfigurationError(
                f"options must be a ConsumerOptions, got {options!r}", code="InvalidOption"
            )
        check_queue(queue_url, "queue_url")
        check_handler(handler, batch=batch)
        self.queue_url = queue_url
        self.options = options
        self.fifo = fifo
        self._client = client
        self._handler = handler
        self._batch = batch
        self._batch_size = options.effective_batch_size(batch)
        self._poll_size = options.poll_size(batch)
        self._counters = Counters()
        self._state: ConsumerState = "starting"
        self._credit = Credit(options.capacity(batch))
        self._dispatcher = Dispatcher(fifo=fifo)
        self._tracked: dict[str, Tracked] = {}
        self._pollers = [_Poller() for _ in range(options.effective_pollers(batch))]
        self._receive_scope = trio.CancelScope()
        self._outer = trio.CancelScope(shield=True)
        self._handler_scopes: set[trio.CancelScope] = set()
        self._in_flight = 0
        self._workers_alive = 0
        self._stop_requested = trio.Event()
        self._workers_finished = trio.Event()
        self._polling_done = trio.Event()
        self._stopped = trio.Event()
        self._last_release_applied = -math.inf
        self._t0: float | None = None
        self._grace_deadline = math.inf
        self._last_poll_at: float | None = None
        self._fatal: BaseException | None = None
        # The consumer's own generator (options.random_seed), never the global one.
        self._random = random.Random(options.random_seed)
        self._deletes = Batcher(
            client, queue_url, "delete", options.ack_interval, self._deleted, self._delete_failed
        )
        self._releases = Batcher(
            client,
            queue_url,
            "release",
            options.ack_interval,
            self._released,
            self._release_failed,
            self._release_expired,
        )
        self._heartbeat = Heartbeat(
            client,
            queue_url,
            lease=options.visibility_timeout,
            interval=options.effective_heartbeat_interval(),
            tracked=self._tracked,
            counters=self._counters,
            landed=self._releases.unhold,
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
        idle = self._in_flight == 0 and not unstarted and not self._poll_may_swallow_release()
        if self.options.poll_on_stop == "abort" or idle:
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
        """Wait until the consumer has stopped completely (after :meth:`stop` or a fatal error).

        Cancellation: cancelling the wait does not stop the consumer.
        """
        await self._stopped.wait()

    # -- the consumer's tasks ---------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped, then shut down; raise the error that stopped it, if any.

        Cancellation: the outer scope is shielded, so outside cancellation does not cut the
        shutdown short; ``stop()`` (which leaving ``open_consumer`` always calls) bounds it to
        grace + flush_timeout + margin.
        """
        flush_deadline: float | None = None
        try:
            with self._outer:
                async with trio.open_nursery() as services:
                    services.start_soon(self._guard, self._deletes.run)
                    services.start_soon(self._guard, self._releases.run)
                    services.start_soon(self._guard, self._heartbeat.run)
                    try:
                        async with trio.open_nursery() as work:
                            work.start_soon(self._guard, self._polling)
                            self._workers_alive = self.options.concurrency
                            for _ in range(self.options.concurrency):
                                work.start_soon(self._guard, self._worker)
                            self._state = "running"
                            log.info(
                                "consuming %s: concurrency %d, %d poller(s), batch %d, lease %d s",
                                self.queue_url,
                                self.options.concurrency,
                                len(self._pollers),
                                self._poll_size,
                                self.options.visibility_timeout,
                            )
                            task_status.started()
                            await self._stop_requested.wait()
                            await self._workers_finished.wait()
                            flush_deadline = trio.current_time() + self.options.flush_timeout
                            await self._let_polls_land()
                            self._receive_scope.cancel()
                    finally:
                        # Reached after an internal error too: stop() makes every deadline
                        # finite, and the batchers are still running for the flush.
                        self.stop()
                        if flush_deadline is None:
                            flush_deadline = trio.current_time() + self.options.flush_timeout
                        await self._flush(flush_deadline)
                        services.cancel_scope.cancel()
        finally:
            self._account_leftovers()
            self._state = "stopped"
            self._stopped.set()
            self._log_summary()
        if self._fatal is not None:
            raise self._fatal

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the consumer's own tasks. An error in it stops the consumer gracefully (and
        is raised out of it afterwards) instead of tearing the nurseries down mid-shutdown."""
        try:
            await task()
        except Exception as exc:
            log.exception("trio_sqs internal task %s failed", getattr(task, "__name__", task))
            self._fail(exc)
        except BaseException:
            self.stop()
            raise

    def _poll_may_swallow_release(self) -> bool:
        """Whether a poll on the wire may be handed messages we released (so aborting it could
        orphan them): a release is still unanswered, or was answered after the poll was sent."""
        return any(
            p.sent and (self._releases.pending > 0 or p.sent_at <= self._last_release_applied)
            for p in self._pollers
        )

    async def _let_polls_land(self) -> None:
        """No handler runs any more. A poll that may be handed our released messages gets up to
        half the flush timeout to land (what it brings is released again, with no poll left to
        swallow it); any other poll is aborted at once."""
        if self.options.poll_on_stop != "land" or not self._poll_may_swallow_release():
            return
        with trio.move_on_after(self.options.flush_timeout / 2):
            await self._polling_done.wait()

    async def _flush(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deletes.drain)
                nursery.start_soon(self._releases.drain)

    def _account_leftovers(self) -> None:
        """Count and log what shutdown could not hand back: nothing is lost silently."""
        deletes, releases = self._deletes.pending, self._releases.pending
        in_hand = len(self._tracked)
        unflushed = deletes + releases + in_hand
        if unflushed:
            self._counters.unflushed += unflushed
            log.error(
                "shutdown bound reached: %d delete(s) and %d release(s) not sent, %d message(s) "
                "still in hand; those messages reappear after their visibility timeout",
                deletes,
                releases,
                in_hand,
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
                poller.clear()
                got: list[Message] = []
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
                    got = list(result.messages)
                except trio.Cancelled:
                    if poller.sent:
                        self._counters.aborted_polls += 1
                        log.debug("long poll aborted after it was sent")
                    raise
                except SQSError as exc:
                    self._counters.poll_errors += 1
                    if isinstance(exc, _FATAL_POLL_ERRORS):
                        log.error("cannot poll %s: %s", self.queue_url, exc)
                        self._fail(exc)
                        return
                    if isinstance(exc, (AccessDenied, CredentialsError)):
                        delay = self.options.auth_error_backoff * self._random.uniform(0.5, 1.0)
                        log.error(
                            "polling %s denied: %s; retrying in %.1f s", self.queue_url, exc, delay
                        )
                    else:
                        delay = self._random.uniform(0, backoff)
                        backoff = min(self.options.max_error_backoff, backoff * 2)
                        log.warning(
                            "polling %s failed: %s; retrying in %.1f s", self.queue_url, exc, delay
                        )
                    await trio.sleep(delay)
                    continue
                finally:
                    poller.clear()
                    if not got:
                        # Every path that took no message returns the whole reservation here
                        # (with messages, _accept returns the unused part).
                        self._credit.release(self._poll_size)
                backoff = self.options.error_backoff
                self._accept(got, len(result.corrupt))
                if not got and self.options.wait_time == 0:
                    await trio.sleep(EMPTY_SHORT_POLL_PAUSE)

    def _accept(self, messages: Sequence[Message], corrupt: int) -> None:
        c = self._counters
        c.polls += 1
        self._last_poll_at = time.time()
        if messages:
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
            self._tracked[message.receipt_handle] = Tracked(message, now, now)
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
        """Run the handler on ``messages`` in a shielded scope and settle every message after.

        Cancellation: the handler is shielded from outside cancellation; its own deadline (the
        handler timeout, and t0 + grace once stopping) cancels it, and its messages are released.
        """
        self._in_flight += len(messages)
        deadline = math.inf
        if self.options.handler_timeout is not None:
            deadline = trio.current_time() + self.options.handler_timeout
        deadline = min(deadline, self._grace_deadline)
        failed: set[str] = set()
        retry_delay: float | None = None
        finished = False
        settled = False
        ids = ", ".join(m.message_id for m in messages)
        scope = trio.CancelScope(shield=True, deadline=deadline)
        try:
            try:
                with scope:
                    self._handler_scopes.add(scope)
                    try:
                        if self._batch:
                            handler_b: BatchHandler = self._handler  # type: ignore[assignment]
                            failed = _failed_ids(await handler_b(list(messages)), messages)
                        else:
                            handler: Handler = self._handler  # type: ignore[assignment]
                            await handler(messages[0])
                        finished = True
                    except Retry as exc:
                        retry_delay = exc.delay
                        finished = True
                    finally:
                        self._handler_scopes.discard(scope)
            except Exception:
                # Also an exception group that escaped once the scope took its own Cancelled out
                # (a handler whose nursery failed while being cancelled).
                failed = {m.message_id for m in messages}
                finished = True
                log.exception("handler failed for message(s) %s", ids, extra={"message_id": ids})
            # A handler that swallowed its cancellation and returned did not finish its work.
            finished = finished and not scope.cancel_called
            self._in_flight -= len(messages)
            settled = True
            self._settle_all(messages, finished, failed, retry_delay)
        finally:
            if not settled:
                # KeyboardInterrupt or the like: hand the messages back and stop.
                self._in_flight -= len(messages)
                for message in messages:
                    self._settle(message, release=0)
                self.stop()

    def _settle_all(
        self, messages: list[Message], finished: bool, failed: set[str], retry_delay: float | None
    ) -> None:
        if not finished:
            at_grace = self._stop_requested.is_set() and trio.current_time() >= self._grace_deadline
            for message in messages:
                if at_grace:
                    self._counters.cancelled_at_grace += 1
                    what, release = "cancelled at end of grace", 0
                else:
                    self._counters.timed_out += 1
                    what = "timed out"
                    release = self.options.failure_visibility(message.receive_count)
                log.warning(
                    "handler %s: %s",
                    what,
                    message.message_id,
                    extra={"message_id": message.message_id},
                )
                self._settle(message, release=release)
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
        again after ``release`` seconds."""
        if release is None:
            self._tracked.pop(message.receipt_handle, None)
            self._deletes.add(Entry(message.message_id, message.receipt_handle))
            self._credit.release(1)
        else:
            self._release(message, release)
            if self.fifo:
                # Keep the group's order: the rest of it goes back unprocessed.
                for later in self._dispatcher.drop_group(message):
                    self._release(later, 0)
        self._dispatcher.done(message)

    def _release(self, message: Message, visibility: int) -> None:
        """Make ``message`` visible again after ``visibility`` seconds. The heartbeat stops
        covering it first. The release is only sent while our lease surely runs (see
        :class:`Entry`), and never while a heartbeat for the message is on the wire: SQS might
        apply the heartbeat last and hide the message for a whole lease."""
        handle = message.receipt_handle
        tracked = self._tracked.pop(handle, None)
        if tracked is None:  # landed after stop, never tracked: its lease has just begun
            now = trio.current_time()
            tracked = Tracked(message, now, now)
        entry = Entry(message.message_id, handle, visibility, lease_end=self._lease_end(tracked))
        if self._heartbeat.on_the_wire(handle):
            # Sent when the heartbeat has returned, with the lease end it leaves.
            self._releases.hold(entry)
        else:
            self._releases.add(entry)
        self._credit.release(1)

    def _lease_end(self, tracked: Tracked) -> float:
        """The earliest our lease on ``tracked`` can end: the last extension SQS confirmed counts
        from when it was sent."""
        return tracked.extended_at + self.options.visibility_timeout

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
        self._last_release_applied = trio.current_time()

    def _release_expired(self, entry: Entry) -> None:
        self._counters.release_expired += 1
        log.warning(
            "not releasing %s: its lease may have run out (heartbeats failed or were late), so it "
            "is visible again or held by another consumer",
            entry.message_id,
            extra={"message_id": entry.message_id},
        )

    def _release_failed(self, entry: Entry, code: str) -> None:
        self._counters.release_failed += 1
        log.warning(
            "could not release %s (%s)",
            entry.message_id,
            code,
            extra={"message_id": entry.message_id, "error_code": code},
        )


def _failed_ids(reported: Iterable[Message | str] | None, messages: Sequence[Message]) -> set[str]:
    if reported is None:
        return set()
    ids = {m.message_id for m in messages}
    failed = {r.message_id if isinstance(r, Message) else str(r) for r in reported}
    unknown = failed - ids
    if unknown:
        raise TypeError(f"batch handler reported unknown message id(s): {sorted(unknown)}")
    return failed
