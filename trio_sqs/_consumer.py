"""The consumer: polls, handlers and leases in one nursery, and the shutdown, written once.

**The shutdown contract.** From the moment the consumer stops (t0: :meth:`Consumer.stop`, leaving
the ``async with`` block, cancellation of any enclosing scope, a fatal error, or ``sys.exit`` in a
handler; all take the same path):

1. *Receiving ends.* No ReceiveMessage is sent after t0. A long poll already on the wire lands
   while handlers still run (``poll_on_stop="land"``) or is aborted (``"abort"``); with no handler
   running it is aborted at once, so an idle consumer stops in milliseconds.
2. *Handlers get the grace period.* Running handlers go on until t0 + ``grace_period``, then are
   cancelled. Messages received but not started are handed back at once.
3. *Nothing we hand back can come back to us.* SQS keeps running a long poll whose client went
   away, and hands it any message that becomes visible. So every message released from t0 on gets
   a visibility timeout that outlasts every poll of ours SQS may still be running (at most
   WaitTimeSeconds + 1 s, see ``trio_sqs._polling``; 0 only when none may be); a message released
   before t0 whose visibility would end while such a poll runs is hidden again for as long
   (:meth:`Leases.rehide`). No poll of ours takes any of them: the stop raises no receive count.
4. *Teardown is shielded and bounded.* Heartbeats keep running handlers' leases alive; deletes
   and releases are flushed within ``flush_timeout``. Shutdown takes at most grace_period +
   flush_timeout + 0.5 s, unless a handler shields itself from cancellation. What could not be
   sent is counted (``unflushed``) and logged: those messages reappear after their lease.

No scope is shielded before t0 except a handler's own call and a request already on the wire, each
with its own bound. The task that runs the consumer is never shielded: a cancellation always
reaches it, and it turns that into t0.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from ._client import SQSClient
from ._config import ConsumerOptions
from ._dispatch import Credit, Dispatcher
from ._exceptions import ConfigurationError
from ._handler import BatchHandler, Handler, Retry, check_handler, check_queue, failed_ids
from ._leases import Leases
from ._message import Message
from ._middleware import (
    Invocation,
    Middleware,
    Outcome,
    check_middleware,
    compose,
    context_managers,
)
from ._otel_metrics import attach as attach_otel_metrics
from ._polling import Polling
from ._stats import ConsumerState, ConsumerStatistics, Counters

__all__ = ["BatchHandler", "Consumer", "Handler", "Retry"]

log = logging.getLogger("trio_sqs.consumer")

# Slack on top of grace + flush_timeout for the hard bound on shutdown.
SHUTDOWN_MARGIN = 0.5


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
        middleware: Sequence[Middleware] = (),
        tracing: bool = True,
    ) -> None:
        # Refused here, before any task starts, as open_consumer refuses them (see check_handler).
        if not isinstance(options, ConsumerOptions):
            raise ConfigurationError(
                f"options must be a ConsumerOptions, got {options!r}", code="InvalidOption"
            )
        check_queue(queue_url, "queue_url")
        check_handler(handler, batch=batch)
        self._middleware = check_middleware(middleware)
        if not isinstance(tracing, bool):
            raise ConfigurationError(
                f"tracing must be True or False, got {tracing!r}", code="InvalidOption"
            )
        if tracing:
            # OpenTelemetry, outermost, when opentelemetry-api is installed (see _tracing).
            from ._tracing import consumer_middleware

            traced = consumer_middleware()
            if traced is not None:
                self._middleware.insert(0, traced)
        self._middleware_kinds = context_managers(self._middleware)
        self.queue_url = queue_url
        self.options = options
        self.fifo = fifo
        self._handler = handler
        self._batch = batch
        self._batch_size = options.effective_batch_size(batch)
        self._counters = Counters()
        attach_otel_metrics(self._counters, queue_url)  # a no-op without opentelemetry-api
        self._state: ConsumerState = "starting"
        self._credit = Credit(options.capacity(batch))
        self._dispatcher = Dispatcher(fifo=fifo)
        # The consumer's own generator (options.random_seed), never the global one.
        self._random = random.Random(options.random_seed)
        self._leases = Leases(
            client,
            queue_url,
            lease=options.visibility_timeout,
            heartbeat_interval=options.effective_heartbeat_interval(),
            ack_interval=options.ack_interval,
            max_ack_interval=options.effective_max_ack_interval(),
            counters=self._counters,
        )
        self._polling = Polling(
            client,
            queue_url,
            options,
            poll_size=options.poll_size(batch),
            max_pollers=options.effective_pollers(batch),
            credit=self._credit,
            accept=self._accept,
            fail=self._fail,
            counters=self._counters,
            rng=self._random,
            hand_back=self._hand_back,
            grew=self._leases.rehide,
        )
        self._leases_scope = trio.CancelScope()
        self._handler_scopes: set[trio.CancelScope] = set()
        self._in_flight = 0
        self._workers_alive = 0
        self._stop_requested = trio.Event()
        self._workers_finished = trio.Event()
        self._stopped = trio.Event()
        self._t0: float | None = None
        self._grace_deadline = math.inf
        self._deadline = math.inf
        self._last_poll_at: float | None = None
        self._fatal: BaseException | None = None

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
        """Stop: the moment t0 of the shutdown contract (see the module docstring). Synchronous,
        idempotent, callable from any task of the same Trio run.

        From this call on no ReceiveMessage is sent. Leaving the ``async with open_consumer(...)``
        block and cancelling a scope around it take this same path.
        """
        if self._stop_requested.is_set():
            return
        now = trio.current_time()
        self._t0 = now
        self._grace_deadline = now + self.options.grace_period
        self._deadline = self._grace_deadline + self.options.flush_timeout + SHUTDOWN_MARGIN
        if self._state != "stopped":
            self._state = "stopping"
        # The bounds first: nothing below may leave a handler or a call without one.
        for scope in self._handler_scopes:
            scope.deadline = min(scope.deadline, self._grace_deadline)
        self._leases.bound(self._deadline)
        unstarted = self._dispatcher.close()
        idle = self._in_flight == 0 and not unstarted
        self._polling.stop(abort_sent=idle or self.options.poll_on_stop == "abort")
        # From here on a release outlasts every poll SQS may still run for us, and so does the
        # hiding of what we released before and is about to become visible.
        self._leases.cover(self._polling.live_until)
        for message in unstarted:
            self._release(message, 0)
        self._leases.hurry()
        self._leases_scope.cancel()  # the teardown runs the leases' loops from here
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

    # -- running and the shutdown --------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped, then shut down; raise the error that stopped it, if any.

        Cancellation: cancelling this task is a stop (t0 of the contract): it returns once the
        bounded shutdown is over, then the ``Cancelled`` propagates. Only the teardown is
        shielded, with its own deadline.
        """
        try:
            async with trio.open_nursery() as work:  # everything, until the teardown ends
                try:
                    work.start_soon(self._guard, self._run_leases)
                    work.start_soon(self._guard, self._polling.run)
                    self._workers_alive = self.options.concurrency
                    for _ in range(self.options.concurrency):
                        work.start_soon(self._guard, self._worker)
                    self._state = "running"
                    log.info(
                        "consuming %s: concurrency %d, up to %d poll(s) of %d, lease %d s",
                        self.queue_url,
                        self.options.concurrency,
                        self._polling.max_pollers,
                        self.options.poll_size(self._batch),
                        self.options.visibility_timeout,
                    )
                    task_status.started()
                    await self._stop_requested.wait()
                finally:
                    self.stop()
                    with trio.move_on_at(self._deadline, shield=True):
                        await self._teardown()
                    work.cancel_scope.cancel()
        finally:
            self._account_leftovers()
            self._state = "stopped"
            self._stopped.set()
            self._log_summary()
        if self._fatal is not None:
            raise self._fatal

    async def _run_leases(self) -> None:
        """The leases' loops until t0 (the teardown runs them afresh). Calls they have on the
        wire at t0 finish on their own, shielded and bounded (see ``trio_sqs._leases``)."""
        with self._leases_scope:
            await self._leases.run()

    async def _teardown(self) -> None:
        """After t0, shielded and bounded by the caller: handlers finish within their grace while
        their leases are kept alive; polls left to land are aborted once no handler runs; then
        every delete and release is flushed within ``flush_timeout``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guard, self._leases.run)
            await self._workers_finished.wait()
            self._polling.abort()
            await self._polling.done.wait()
            flush_deadline = trio.current_time() + self.options.flush_timeout
            self._leases.bound(flush_deadline)  # calls on the wire, shielded, end by then too
            with trio.move_on_at(flush_deadline):
                await self._leases.drain()
            nursery.cancel_scope.cancel()

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

    def _account_leftovers(self) -> None:
        """Count and log what shutdown could not hand back: nothing is lost silently."""
        deletes, releases = self._leases.pending_deletes, self._leases.pending_releases
        in_hand = self._leases.in_hand
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

    # -- receiving ------------------------------------------------------------------------------

    def _accept(self, messages: Sequence[Message], corrupt: int) -> None:
        c = self._counters
        c.polls += 1
        self._last_poll_at = time.time()
        if corrupt:
            # Left alone: they reappear after the lease and end in the dead-letter queue if the
            # corruption persists. They are never handed to a handler.
            c.corrupt += corrupt
        if not messages and not corrupt:
            c.empty_polls += 1
        stopping = self._stop_requested.is_set()
        for message in messages:
            c.received += 1
            self._leases.track(message)
            if stopping:
                # Landed after t0: handed back at once (with the cover of the contract).
                self._release(message, 0)
            else:
                self._dispatcher.put(message)
                log.debug(
                    "received %s", message.message_id, extra={"message_id": message.message_id}
                )
        if stopping:
            self._leases.hurry()

    def _hand_back(self, messages: Sequence[Message]) -> None:
        """Messages a poll got beyond what it asked for: no room was reserved for them."""
        for message in messages:
            self._counters.received += 1
            self._leases.track(message)
            self._leases.release(message, 0)

    # -- handlers -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        take = self._batch_size if self._batch else 1
        try:
            while await self._work(take):
                pass
        finally:
            self._workers_alive -= 1
            if self._workers_alive == 0:
                self._workers_finished.set()

    async def _work(self, take: int) -> bool:
        """Take messages from the dispatcher and run the handler on them, call after call, under
        one cancel scope: shielded while a handler runs, open to outside cancellation while
        waiting for work (a scope per call cost ~5 us of CPU a message, near a tenth of a
        consumer's CPU at saturation). Every message taken is settled after its call.

        Returns False once the dispatcher has no more work (the worker ends), True when the
        scope ended with a call (its deadline cut the handler short, or the handler raised past
        the scope): the worker goes on under a new scope.

        Cancellation: the handler is shielded from outside cancellation; its own deadline (the
        handler timeout, and t0 + grace once stopping) cancels it, and its messages are released.
        A cancellation from outside while waiting for work is raised. A ``BaseException`` other
        than that cancellation (``SystemExit``, ``KeyboardInterrupt``) releases the messages,
        stops the consumer, and is raised out of it after the shutdown.
        """
        timeout = self.options.handler_timeout
        scope = trio.CancelScope(deadline=self._grace_deadline)
        messages: list[Message] = []
        started = 0.0
        self._handler_scopes.add(scope)
        try:
            with scope:
                while True:
                    messages = []
                    scope.shield = False
                    messages = await self._dispatcher.get(take)
                    if not messages:
                        return False
                    scope.shield = True
                    self._in_flight += len(messages)
                    started = trio.current_time()
                    if timeout is not None:
                        scope.deadline = min(started + timeout, self._grace_deadline)
                    failed, retry_delay = await self._call_handler(messages, scope)
                    if scope.cancel_called:
                        break  # it swallowed its cancellation and returned: not finished
                    # Settled once: from here on an exception is not the handler's.
                    done, messages = messages, []
                    self._finish(done, started, True, failed, retry_delay)
                    if timeout is not None:
                        scope.deadline = self._grace_deadline
        except Exception:
            if not messages:
                raise  # settling failed: an internal error (the consumer stops on it, once)
            # An exception group that escaped once the scope took its own Cancelled out (a
            # handler whose nursery failed while being cancelled): cut short, not finished.
            self._log_failure(messages)
            failed = {m.message_id for m in messages}
            self._finish(messages, started, not scope.cancel_called, failed, None)
            return True
        except BaseException as exc:
            if not messages:
                raise  # waiting for work: a cancellation from outside ends the worker
            self._counters.handler_duration.observe(trio.current_time() - started)
            self._in_flight -= len(messages)
            ids = ", ".join(m.message_id for m in messages)
            if isinstance(exc, trio.Cancelled):
                # The scope absorbs the cancellations it makes and is shielded from every other
                # one while a handler runs: a Cancelled that leaves it was raised by the handler
                # (or a middleware) outside the scope that made it. A bug there, handled as a
                # failure (re-raised, it ended the consumer silently, as if stopped).
                log.error(
                    "handler raised a trio.Cancelled that none of its own cancel scopes caught "
                    "(a bug in the handler or a middleware): handled as a failure",
                    exc_info=exc,
                    extra={"message_id": ids},
                )
                self._settle_all(messages, True, {m.message_id for m in messages}, None)
                return True
            # SystemExit or KeyboardInterrupt: hand the messages back, stop the consumer.
            for message in messages:
                self._settle(message, release=0)
            log.error("handler raised %r: stopping the consumer", exc)
            self._fail(exc)
            return True
        finally:
            self._handler_scopes.discard(scope)
        # The scope's own deadline cut a call short (or came while waiting for work: the grace
        # period is over, and the worker ends).
        if not messages:
            return False
        self._finish(messages, started, False, set(), None)
        return True

    async def _call_handler(
        self, messages: list[Message], scope: trio.CancelScope
    ) -> tuple[set[str], float | None]:
        """Run the handler (through the middleware) on ``messages``: the ids that failed and the
        delay a :class:`Retry` asked for. A handler's ``Exception`` is caught and logged, a
        failure of every message; a ``BaseException`` is raised."""
        if self._batch:
            self._counters.handler_batch_size.observe(len(messages))
        try:
            if self._middleware:
                return await self._call_through_middleware(messages, scope), None
            if self._batch:
                handler_b: BatchHandler = self._handler  # type: ignore[assignment]
                return failed_ids(await handler_b(list(messages)), messages), None
            handler: Handler = self._handler  # type: ignore[assignment]
            await handler(messages[0])
            return set(), None
        except Retry as exc:
            return set(), exc.delay
        except Exception:
            self._log_failure(messages)
            return {m.message_id for m in messages}, None

    def _log_failure(self, messages: list[Message]) -> None:
        ids = ", ".join(m.message_id for m in messages)
        if len(messages) == 1:
            log.exception("handler failed", extra={"message_id": ids})
        else:
            log.exception("batch handler failed for %s", ids, extra={"message_id": ids})

    def _finish(
        self,
        messages: list[Message],
        started: float,
        finished: bool,
        failed: set[str],
        retry_delay: float | None,
    ) -> None:
        self._counters.handler_duration.observe(trio.current_time() - started)
        self._in_flight -= len(messages)
        self._settle_all(messages, finished, failed, retry_delay)

    async def _call_through_middleware(
        self, messages: list[Message], scope: trio.CancelScope
    ) -> set[str]:
        """The handler call wrapped in the middleware chain; the ids that failed without an
        exception (a batch handler's report, as the middleware left it)."""
        invocation = Invocation(
            messages=list(messages),
            batch=self._batch,
            queue_url=self.queue_url,
            started_at=trio.current_time(),
        )

        async def call_handler() -> None:
            if self._batch:
                handler_b: BatchHandler = self._handler  # type: ignore[assignment]
                failed = failed_ids(await handler_b(list(messages)), messages)
                invocation.failed = frozenset(failed)
                invocation.outcome = "failed" if failed else "ok"
            else:
                handler: Handler = self._handler  # type: ignore[assignment]
                await handler(messages[0])
                invocation.outcome = "ok"
            if scope.cancel_called:
                invocation.outcome = self._cut_short()  # it swallowed its cancellation

        def cut_short() -> Outcome:
            # A Cancelled that our scope did not cause (a middleware's own time-out, say) ended
            # the call without its messages being handled: a failure.
            return self._cut_short() if scope.cancel_called else "failed"

        await compose(
            self._middleware, invocation, call_handler, cut_short, self._middleware_kinds
        )()
        return set(invocation.failed)

    def _cut_short(self) -> Outcome:
        """Why a handler was cancelled: the end of the grace period, or its own time-out."""
        stopping = self._stop_requested.is_set()
        return (
            "cancelled" if stopping and trio.current_time() >= self._grace_deadline else "timed_out"
        )

    def _settle_all(
        self, messages: list[Message], finished: bool, failed: set[str], retry_delay: float | None
    ) -> None:
        if not finished:
            at_grace = self._cut_short() == "cancelled"
            for message in messages:
                if at_grace:
                    self._counters.cancelled_at_grace += 1
                    what, release = "cancelled at end of grace", 0
                else:
                    self._counters.timed_out += 1
                    what = "timed out"
                    release = self.options.failure_visibility(message.receive_count)
                log.warning("handler %s", what, extra={"message_id": message.message_id})
                self._settle(message, release=release)
            return
        if self._batch and failed and retry_delay is None:
            ids = ", ".join(m.message_id for m in messages if m.message_id in failed)
            log.warning(
                "batch handler reported %d of %d message(s) failed: %s",
                len(failed),
                len(messages),
                ids,
                extra={"message_id": ids},
            )
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
            self._leases.ack(message)
            self._credit.release(1)
        else:
            self._release(message, release)
            if self.fifo:
                # Keep the group's order: the rest of it goes back unprocessed.
                for later in self._dispatcher.drop_group(message):
                    self._release(later, 0)
        self._dispatcher.done(message)

    def _release(self, message: Message, visibility: int) -> None:
        """Hand ``message`` back to the queue after ``visibility`` seconds (from t0 on, at least
        the cover of the contract, applied by the leases when the release is sent)."""
        self._leases.release(message, visibility)
        self._credit.release(1)
