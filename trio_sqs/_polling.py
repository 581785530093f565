"""The consumer's long polls: how many are in flight, how they end, and how long SQS may still act on
them after they ended on our side.

**Adaptive.** Up to ``max_pollers`` poll loops exist; only the first ``active`` of them poll. One
poll is always active (it waits the whole ``wait_time``; the others wait at most
:data:`EXTRA_POLL_WAIT` seconds, so that they are gone soon after the load drops); a poll that comes back full (as many messages as it asked for) activates one
more (with a batch window: a second full poll in a row), a poll that comes back short retires the
last active one after its poll. An idle consumer has
exactly one long poll in flight; a saturated one has all of them.

**Batch window.** With ``batch_window > 0``, a poller whose poll came back short waits until
``batch_window`` seconds after that poll was sent before it polls again, so that the next poll
finds several messages waiting (fewer requests per message, for up to that much latency).

**Ending.** :meth:`Polling.stop` ends receiving: no ReceiveMessage is sent after it. A poll not yet
on the wire is cancelled. A poll already on the wire is either aborted (``abort_sent=True``) or left
to land (shielded, bounded by its WaitTimeSeconds plus :data:`POLL_SLACK`) until :meth:`abort`.

**Orphans.** SQS does not notice that the client of a long poll went away: an aborted poll keeps
running server-side until its WaitTimeSeconds end, and takes any message that becomes visible
meanwhile, hiding it for a whole visibility timeout. :meth:`Polling.live_until` is the latest time
any poll of ours may still take a message (sent and unanswered, aborted, or failed after it was
sent), so that the consumer can release messages at stop with a visibility that outlasts them.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

import trio

from ._client import SQSClient
from ._config import ConsumerOptions
from ._dispatch import Credit
from ._exceptions import (
    AccessDenied,
    ClientClosedError,
    ConfigurationError,
    CredentialsError,
    QueueDoesNotExist,
    SQSError,
)
from ._message import Message, ReceiveResult
from ._stats import Counters

__all__ = ["POLL_SLACK", "Polling"]

log = logging.getLogger("trio_sqs.consumer")

# A poll may start on the server up to this long after we sent it, and end this long after its
# WaitTimeSeconds (network delay, SQS's own rounding).
POLL_SLACK = 1.0
# A poll left to land after stop is aborted at the latest this long after its WaitTimeSeconds.
LAND_BOUND = 5.0
# WaitTimeSeconds of the polls beyond the first (at most the consumer's wait_time).
EXTRA_POLL_WAIT = 2
# Pause after an empty short poll (wait_time=0), so an idle consumer does not spin on requests.
EMPTY_SHORT_POLL_PAUSE = 1.0
_FATAL_POLL_ERRORS = (QueueDoesNotExist, ConfigurationError, ClientClosedError)

Accept = Callable[[Sequence[Message], int], None]


class _Poll:
    """One poll loop's current request."""

    __slots__ = ("scope", "sent", "sent_at", "wait_time")

    def __init__(self, wait_time: int) -> None:
        self.scope = trio.CancelScope()
        self.sent = False
        self.sent_at = math.inf
        self.wait_time = wait_time

    @property
    def ends_at(self) -> float:
        """The latest time SQS may still hand this poll a message."""
        return self.sent_at + self.wait_time + POLL_SLACK


class Polling:
    """The poll loops of one consumer.

    Args:
        client: The SQS client.
        queue_url: The queue.
        options: The consumer's options (wait time, lease, attribute names, backoffs).
        poll_size: MaxNumberOfMessages of each poll.
        max_pollers: Most polls in flight at once.
        credit: Room for received messages; a poll reserves ``poll_size`` before it is sent.
        accept: Called with each poll's messages and its count of corrupt ones (which it took no
            credit for). Unused credit is returned here, before ``accept`` runs.
        fail: Called with an error that makes polling impossible (the queue is gone...).
        counters: Where polls are counted and timed.
        rng: The consumer's random generator (jitter of the error backoff).
        hand_back: Called with messages of an answer beyond what the poll asked for (no credit
            was reserved for them; SQS never sends them, a broken server might).
        grew: Called when :meth:`live_until` grew after :meth:`stop` (a poll whose request was
            written just as the stop came reported itself sent).
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        options: ConsumerOptions,
        *,
        poll_size: int,
        max_pollers: int,
        credit: Credit,
        accept: Accept,
        fail: Callable[[BaseException], None],
        counters: Counters,
        rng: random.Random,
        hand_back: Callable[[Sequence[Message]], None],
        grew: Callable[[], object],
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._options = options
        self._poll_size = poll_size
        self._credit = credit
        self._accept = accept
        self._fail = fail
        self._counters = counters
        self._random = rng
        self._hand_back = hand_back
        self._grew = grew
        # The first poll waits the whole wait_time; the others, which only run while polls come
        # back full, wait at most EXTRA_POLL_WAIT: when the load drops they are back within
        # that long, and an idle consumer has one poll in flight, not several.
        self._polls = [
            _Poll(options.wait_time if i == 0 else min(options.wait_time, EXTRA_POLL_WAIT))
            for i in range(max_pollers)
        ]
        self._active = 1
        self._active_changed = trio.lowlevel.ParkingLot()
        self._scope = trio.CancelScope()
        self._stopping = False
        self._land = False
        self._orphans_until = -math.inf
        self.done = trio.Event()

    @property
    def max_pollers(self) -> int:
        return len(self._polls)

    @property
    def active(self) -> int:
        """Poll loops allowed to poll now (1 to ``max_pollers``)."""
        return self._active

    @property
    def on_the_wire(self) -> int:
        """Polls sent and not yet answered (or aborted)."""
        return sum(1 for p in self._polls if p.sent)

    def live_until(self) -> float:
        """The latest time (Trio's clock) at which any poll we sent may still take a message on
        the server: polls on the wire, and polls that ended on our side without an answer."""
        ends = [p.ends_at for p in self._polls if p.sent]
        return max([*ends, self._orphans_until])

    # -- ending ---------------------------------------------------------------------------------

    def stop(self, *, abort_sent: bool) -> None:
        """End receiving now: no ReceiveMessage is sent from here on. Polls on the wire are
        aborted too if ``abort_sent``, else left to land until :meth:`abort`. Synchronous."""
        self._stopping = True
        self._land = not abort_sent
        self._scope.cancel()  # everything not shielded: waits, backoffs, unsent polls
        if abort_sent:
            self.abort()

    def abort(self) -> None:
        """Abort every poll still on the wire (those left to land by :meth:`stop`)."""
        self._land = False
        for poll in self._polls:
            poll.scope.cancel()

    # -- the loops --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until :meth:`stop` (and, for polls left to land, :meth:`abort`).

        Cancellation: ends receiving like ``stop(abort_sent=True)``.
        """
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for index, poll in enumerate(self._polls):
                        nursery.start_soon(self._loop, index, poll)
        finally:
            self._stopping = True
            self.done.set()

    async def _loop(self, index: int, poll: _Poll) -> None:
        backoff = self._options.error_backoff
        full_streak = 0
        while not self._stopping:
            while index >= self._active:
                await self._active_changed.park()
            await self._credit.acquire(self._poll_size)
            if self._stopping:  # stop() ran while we waited without a checkpoint after
                self._credit.release(self._poll_size)
                return
            got: list[Message] = []
            corrupt = 0
            answered = False
            poll.scope = trio.CancelScope()
            sent_at = answered_at = math.inf
            try:
                with poll.scope:
                    result = await self._receive(poll)
                    answered_at = trio.current_time()
                    answered = True
                    got, corrupt = self._within_ask(result.messages), len(result.corrupt)
            except SQSError as exc:
                self._counters.poll_errors += 1
                if isinstance(exc, _FATAL_POLL_ERRORS):
                    log.error("cannot poll %s: %s", self._queue_url, exc)
                    self._fail(exc)
                    return
                delay, backoff = self._error_delay(exc, backoff)
                await trio.sleep(delay)
                continue
            finally:
                sent_at = poll.sent_at
                if poll.sent and not answered:
                    # It ended on our side only: SQS may run it to its end.
                    self._orphans_until = max(self._orphans_until, poll.ends_at)
                    if poll.scope.cancelled_caught or self._stopping:
                        self._counters.aborted_polls += 1
                        log.debug("long poll aborted after it was sent")
                poll.sent = False
                poll.sent_at = math.inf
                if not got:
                    # Every path that took no message returns the whole reservation here.
                    self._credit.release(self._poll_size)
            if not answered:
                return  # aborted at stop
            self._observe(got, corrupt, answered_at - sent_at)
            backoff = self._options.error_backoff
            if got:
                self._credit.release(self._poll_size - len(got))
            self._accept(got, corrupt)
            returned = len(got) + corrupt
            full_streak = full_streak + 1 if returned >= self._poll_size else 0
            self._adapt(returned, full_streak)
            if self._stopping:
                return
            if len(got) + corrupt < self._poll_size:
                pause_until = sent_at + self._options.batch_window
                if not got and poll.wait_time == 0:
                    pause_until = max(pause_until, trio.current_time() + EMPTY_SHORT_POLL_PAUSE)
                if pause_until > trio.current_time():
                    await trio.sleep_until(pause_until)

    async def _receive(self, poll: _Poll) -> ReceiveResult:
        def sent() -> None:
            poll.sent = True
            poll.sent_at = trio.current_time()
            # Once on the wire, a poll is ended by abort() (or its own bound), not by the end of
            # receiving: a stop may leave it to land.
            poll.scope.shield = True
            poll.scope.deadline = poll.sent_at + poll.wait_time + LAND_BOUND
            if self._stopping:
                self._grew()
                if not self._land:
                    poll.scope.cancel()

        return await self._client.receive_messages(
            self._queue_url,
            max_messages=self._poll_size,
            wait_time=poll.wait_time,
            visibility_timeout=self._options.visibility_timeout,
            attribute_names=self._options.attribute_names,
            message_attribute_names=self._options.message_attribute_names,
            on_sent=sent,
            # One request per attempt: a client-level retry could send a receive after stop.
            # This loop does its own backoff.
            retry=False,
        )

    def _observe(self, got: Sequence[Message], corrupt: int, duration: float) -> None:
        """An answered poll's duration (from the request written to the answer) and size."""
        c = self._counters
        if duration < math.inf:  # else the transport never reported the request written
            (c.poll_duration_messages if got or corrupt else c.poll_duration_empty).observe(
                duration
            )
        c.poll_batch_size.observe(len(got))

    def _within_ask(self, messages: Sequence[Message]) -> list[Message]:
        """The messages of an answer, each once and no more than the poll asked for (credit was
        reserved for that many); anything beyond goes to ``hand_back``."""
        unique = list({m.receipt_handle: m for m in messages}.values())
        if len(unique) < len(messages):
            log.warning("ReceiveMessage answer named a receipt handle twice; taken once")
        if len(unique) <= self._poll_size:
            return unique
        log.warning(
            "ReceiveMessage answer had %d messages for a poll of %d; handing the rest back",
            len(unique),
            self._poll_size,
        )
        self._hand_back(unique[self._poll_size :])
        return unique[: self._poll_size]

    def _adapt(self, returned: int, full_streak: int) -> None:
        # With a batch window, a full poll after a pause may only mean that the window gathered
        # a batch; two full polls in a row (the second sent at once) mean a backlog.
        needed = 2 if self._options.batch_window > 0 else 1
        if full_streak >= needed:
            if self._active < len(self._polls):
                self._active += 1
                self._active_changed.unpark_all()
        elif returned < self._poll_size and self._active > 1:
            self._active -= 1

    def _error_delay(self, exc: SQSError, backoff: float) -> tuple[float, float]:
        options = self._options
        if isinstance(exc, (AccessDenied, CredentialsError)):
            delay = options.auth_error_backoff * self._random.uniform(0.5, 1.0)
            log.error("polling %s denied: %s; retrying in %.1f s", self._queue_url, exc, delay)
            return delay, backoff
        delay = self._random.uniform(0, backoff)
        log.warning("polling %s failed: %s; retrying in %.1f s", self._queue_url, exc, delay)
        return delay, min(options.max_error_backoff, backoff * 2)
