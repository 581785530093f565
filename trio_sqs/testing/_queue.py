"""One queue of the in-memory SQS: messages, visibility, long polls, FIFO groups, redrive.

Time is Trio's clock (``trio.current_time()``), so under ``trio.testing.MockClock`` a 20 s long
poll or a 30 s visibility timeout passes in no wall time at all.

Nothing here runs in the background. A timer (a delay or a visibility timeout that ends) is
applied lazily, in time order, by :meth:`FakeQueue.advance` whenever anything looks at the queue;
a message that becomes receivable at time *t* goes at *t* to the oldest long poll that was still
waiting then, whether or not the client behind that poll is still there. That is what SQS does
with a poll whose client went away: it runs on for its WaitTimeSeconds and takes messages that
nobody will ever see, until their visibility timeout ends.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ._errors import FakeError, invalid_parameter

__all__ = ["FakeQueue", "MessageSnapshot", "QueueCounts"]

DELAYED, VISIBLE, IN_FLIGHT, DELETED = "delayed", "visible", "in_flight", "deleted"

SYSTEM_ATTRIBUTES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)
MAX_TOTAL_VISIBILITY = 43_200
DEDUP_WINDOW = 300.0

_HANDLE_PREFIX = "AQEB"
# Real receipt handles are opaque base64 of a few hundred bytes; ours carry what the fake needs
# (queue, message id, receive number) and filler of a realistic length.
_HANDLE_FILLER = hashlib.sha512(b"trio-sqs-fake-receipt").digest() * 2


class QueueHost(Protocol):
    """What a queue needs from the service that holds it (:class:`FakeSQS`)."""

    region: str
    account_id: str

    def redrive_policy(self, queue: FakeQueue) -> tuple[str, int] | None: ...

    def queue_by_arn(self, arn: str) -> FakeQueue | None: ...

    def epoch_ms(self, at: float) -> int: ...

    def next_seq(self) -> int: ...

    def run_moves(self, now: float) -> None: ...

    def next_move(self, queue: FakeQueue) -> float: ...


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many messages a queue holds, by state (what GetQueueAttributes' approximate counts say,
    but exact)."""

    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


@dataclass(frozen=True, slots=True)
class MessageSnapshot:
    """A message as the fake holds it, for assertions in tests."""

    message_id: str
    body: str
    state: str
    receive_count: int
    message_group_id: str | None
    visible_at: float | None


@dataclass(eq=False, slots=True)
class _Message:
    message_id: str
    body: str
    md5_of_body: str
    attributes: dict[str, dict[str, Any]]
    md5_of_attributes: str | None
    system: dict[str, str]
    seq: int
    sent_ms: int
    group: str | None
    state: str = VISIBLE
    due: float = 0.0
    version: int = 0
    receive_count: int = 0
    first_receive_ms: int | None = None
    receipt: str | None = None
    received_at: float = 0.0
    # When a dead-letter move brought it into this queue: it is not moved on again at that same
    # instant (a queue that is its own DLQ, or two queues that are each other's, would otherwise
    # pass it back and forth forever without time moving).
    moved_in_at: float | None = None


@dataclass(eq=False, slots=True)
class _Poll:
    max_messages: int
    visibility: int
    deadline: float
    render: Callable[[_Message, str], dict[str, Any]]
    result: list[dict[str, Any]] | None = None
    abandoned: bool = False
    event: trio.Event = field(default_factory=trio.Event)
    # The scope a live poll sleeps in until its deadline or the next timer: a timer scheduled
    # earlier than that (a delayed send, a shorter visibility) pulls its deadline in.
    wake: trio.CancelScope | None = None


def encode_receipt(queue_name: str, message_id: str, number: int) -> str:
    """The receipt handle of the ``number``-th receive of a message (opaque to clients, as
    SQS's are; about as long as theirs)."""
    raw = f"{queue_name}\x1f{message_id}\x1f{number}\x1f".encode() + _HANDLE_FILLER
    return _HANDLE_PREFIX + base64.b64encode(raw[:300]).decode()


def decode_receipt(handle: object) -> tuple[str, str, int] | None:
    """(queue name, message id, receive number) of one of our receipt handles, or None (for
    anything we did not issue: a truncated or altered handle too)."""
    if not isinstance(handle, str) or not handle.startswith(_HANDLE_PREFIX):
        return None
    try:
        raw = base64.b64decode(handle[len(_HANDLE_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    parts = raw.split(b"\x1f", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    try:
        decoded = parts[0].decode(), parts[1].decode(), int(parts[2])
    except UnicodeDecodeError:
        return None
    return decoded if encode_receipt(*decoded) == handle else None


def _not_available(handle: str) -> FakeError:
    return invalid_parameter(
        f"Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does not exist "
        "or is not available for visibility timeout change."
    )


def _invalid_handle(handle: object) -> FakeError:
    return FakeError(
        "ReceiptHandleIsInvalid",
        f'The input receipt handle "{handle}" is not a valid receipt handle.',
        query_code="ReceiptHandleIsInvalid",
    )


class FakeQueue:
    """One queue of a :class:`FakeSQS`. Tests read its state; they change it through the API."""

    def __init__(
        self, service: QueueHost, name: str, url: str, attributes: dict[str, str], created: float
    ) -> None:
        self._service = service
        self.name = name
        self.url = url
        self.attributes = attributes
        self.created_ms = int(created * 1000)
        self.modified_ms = self.created_ms
        self.fifo = name.endswith(".fifo")
        self._messages: dict[str, _Message] = {}
        self._timers: list[tuple[float, int, int, _Message]] = []
        self._visible: list[tuple[int, int, _Message]] = []
        self._groups: dict[str, collections.deque[_Message]] = {}
        self._group_in_flight: collections.Counter[str] = collections.Counter()
        # FIFO: (head's seq, group) of groups that may be receivable (checked when popped), so
        # that a receive does not look at every group of the queue.
        self._ready: list[tuple[int, str]] = []
        self._handing_out = False
        self._polls: collections.deque[_Poll] = collections.deque()
        self._dedup: dict[tuple[str | None, str], tuple[float, str, str | None]] = {}
        self._tick = itertools.count()
        self._receipts = itertools.count(1)
        self.last_purge: float | None = None
        #: Deliveries nobody saw because the receive's client went away inside the fake: a long
        #: poll abandoned before the messages came, a receive cancelled after it took them, a
        #: delayed answer (``faults.delay``) given up. Not counted: answers lost by a scripted
        #: ``stall`` or ``drop(after=True)``, or dropped by the client once the transport had
        #: returned them.
        self.orphaned_deliveries = 0
        #: Requests that named this queue (``QueueUrl``, ``QueueName`` once it existed, or
        #: ``SourceArn``), by operation, counted at arrival like :attr:`FakeSQS.call_counts`.
        self.call_counts: collections.Counter[str] = collections.Counter()
        #: Every delivery, whoever took it.
        self.deliveries = 0

    # -- attributes ----------------------------------------------------------------------------

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{self._service.region}:{self._service.account_id}:{self.name}"

    def _int_attribute(self, name: str) -> int:
        return int(self.attributes[name])

    @property
    def visibility_timeout(self) -> int:
        return self._int_attribute("VisibilityTimeout")

    @property
    def receive_wait_time(self) -> int:
        return self._int_attribute("ReceiveMessageWaitTimeSeconds")

    @property
    def delay_seconds(self) -> int:
        return self._int_attribute("DelaySeconds")

    def _redrive(self) -> tuple[FakeQueue, int] | None:
        policy = self._service.redrive_policy(self)
        if policy is None:
            return None
        target = self._service.queue_by_arn(policy[0])
        return (target, policy[1]) if target is not None else None

    # -- inspection ----------------------------------------------------------------------------

    def counts(self) -> QueueCounts:
        """Exact counts of visible, in-flight and delayed messages, now."""
        self.advance(trio.current_time())
        visible = in_flight = delayed = 0
        for message in self._messages.values():
            if message.state == VISIBLE:
                visible += 1
            elif message.state == IN_FLIGHT:
                in_flight += 1
            else:
                delayed += 1
        return QueueCounts(visible, in_flight, delayed)

    def messages(self) -> list[MessageSnapshot]:
        """Every message still in the queue, oldest first."""
        self.advance(trio.current_time())
        return [
            MessageSnapshot(
                message_id=m.message_id,
                body=m.body,
                state=m.state,
                receive_count=m.receive_count,
                message_group_id=m.group,
                visible_at=m.due if m.state != VISIBLE else None,
            )
            for m in sorted(self._messages.values(), key=lambda m: m.seq)
        ]

    def message(self, message_id: str) -> MessageSnapshot | None:
        for snapshot in self.messages():
            if snapshot.message_id == message_id:
                return snapshot
        return None

    @property
    def waiting_polls(self) -> int:
        """Long polls waiting server-side now (including those whose client went away)."""
        now = trio.current_time()
        self.advance(now)
        return sum(1 for p in self._polls if p.result is None and p.deadline > now)

    # -- time ----------------------------------------------------------------------------------

    def _schedule(self, message: _Message, state: str, due: float) -> None:
        if message.state == IN_FLIGHT and message.group is not None:
            self._group_in_flight[message.group] -= 1
        message.state = state
        message.version += 1
        message.due = due
        if state == IN_FLIGHT and message.group is not None:
            self._group_in_flight[message.group] += 1
        heapq.heappush(self._timers, (due, next(self._tick), message.version, message))
        for poll in self._polls:
            if poll.wake is not None and due < poll.wake.deadline:
                poll.wake.deadline = due

    def _make_visible(self, message: _Message) -> None:
        if message.state == IN_FLIGHT and message.group is not None:
            self._group_in_flight[message.group] -= 1
        message.state = VISIBLE
        message.version += 1
        message.due = 0.0
        if not self.fifo:
            heapq.heappush(self._visible, (message.seq, message.version, message))
        elif message.group is not None:
            self._maybe_ready(message.group)

    def _maybe_ready(self, name: str) -> None:
        """Note a FIFO group as receivable if it is: not locked and its head is visible."""
        group = self._groups.get(name)
        if group and self._group_in_flight[name] == 0 and group[0].state == VISIBLE:
            heapq.heappush(self._ready, (group[0].seq, name))

    def next_timer(self) -> float:
        """When this queue changes next by itself: a delay or visibility timeout ending, or a
        message move task moving a message out of or into it."""
        own = self._timers[0][0] if self._timers else math.inf
        return min(own, self._service.next_move(self))

    def wake_polls_by(self, at: float) -> None:
        """Long polls asleep past ``at`` wake then (a move task will move a message at ``at``)."""
        for poll in self._polls:
            if poll.wake is not None and at < poll.wake.deadline:
                poll.wake.deadline = at

    def advance(self, now: float) -> None:
        """Apply every timer due by ``now`` in time order, handing what becomes receivable to
        the long polls that were waiting at that moment. Message move tasks' moves due by ``now``
        are applied first (each one at its own time, see ``FakeSQS.run_moves``)."""
        self._service.run_moves(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, version, message = heapq.heappop(timers)
            if message.version != version or message.state not in (DELAYED, IN_FLIGHT):
                continue
            self._make_visible(message)
            self._hand_out(due)
        self._hand_out(now)

    def _hand_out(self, at: float) -> None:
        # Not re-entered: a dead-letter move out of this queue during a take can come back into
        # it (a cycle of redrive policies) while the poll at the head is being served; the outer
        # loop goes on handing out what arrived.
        if self._handing_out:
            return
        self._handing_out = True
        try:
            polls = self._polls
            while polls:
                poll = polls[0]
                if poll.result is not None or poll.deadline <= at:
                    polls.popleft()
                    continue
                taken = self._take(poll.max_messages, poll.visibility, at, poll.render)
                if not taken:
                    return
                polls.popleft()
                poll.result = taken
                if poll.abandoned:
                    self.orphaned_deliveries += len(taken)
                poll.event.set()
        finally:
            self._handing_out = False

    # -- receiving -----------------------------------------------------------------------------

    def _candidates(self, limit: int) -> list[_Message]:
        out: list[_Message] = []
        if not self.fifo:
            visible = self._visible
            while visible and len(out) < limit:
                _, version, message = heapq.heappop(visible)
                if message.version == version and message.state == VISIBLE:
                    out.append(message)
            return out
        ready = self._ready
        chosen: set[str] = set()  # a group may be noted more than once
        while ready and len(out) < limit:
            seq, name = heapq.heappop(ready)
            group = self._groups.get(name)
            if (
                name in chosen
                or not group
                or group[0].seq != seq
                or group[0].state != VISIBLE
                or self._group_in_flight[name] != 0
            ):
                continue  # stale: the group changed since it was noted
            chosen.add(name)
            for message in group:
                if message.state != VISIBLE or len(out) >= limit:
                    break
                out.append(message)
        return out

    def _take(
        self,
        limit: int,
        visibility: int,
        at: float,
        render: Callable[[_Message, str], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        taken: list[dict[str, Any]] = []
        redrive = self._redrive()
        while len(taken) < limit:
            candidates = self._candidates(limit - len(taken))
            if not candidates:
                break
            moved = False
            for message in candidates:
                if (
                    redrive is not None
                    and message.receive_count >= redrive[1]
                    and message.moved_in_at != at
                ):
                    self._move_to(redrive[0], message, at)
                    moved = True
                    continue
                taken.append(render(message, self._receive(message, visibility, at)))
            if not moved:
                break
        self.deliveries += len(taken)
        return taken

    def _receive(self, message: _Message, visibility: int, at: float) -> str:
        message.receive_count += 1
        if message.first_receive_ms is None:
            message.first_receive_ms = self._service.epoch_ms(at)
        message.receipt = encode_receipt(self.name, message.message_id, next(self._receipts))
        message.received_at = at
        self._schedule(message, IN_FLIGHT, at + visibility)
        return message.receipt

    def _move_to(self, target: FakeQueue, message: _Message, at: float) -> None:
        self._remove(message)
        message.system["DeadLetterQueueSourceArn"] = self.arn
        target._adopt(message, at)

    def _adopt(self, message: _Message, at: float) -> None:
        moved = _Message(
            message_id=message.message_id,
            body=message.body,
            md5_of_body=message.md5_of_body,
            attributes=message.attributes,
            md5_of_attributes=message.md5_of_attributes,
            system=dict(message.system),
            seq=self._service.next_seq(),
            sent_ms=message.sent_ms,
            group=message.group if self.fifo else None,
            receive_count=message.receive_count,
            first_receive_ms=message.first_receive_ms,
            moved_in_at=at,
        )
        self._insert(moved, 0, at)

    async def receive(
        self,
        *,
        max_messages: int,
        visibility: int,
        wait: int,
        render: Callable[[_Message, str], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Receive up to ``max_messages``, long-polling up to ``wait`` seconds.

        Cancellation: the poll stays registered until its deadline, as SQS keeps a poll whose
        client went away, and the messages it takes then stay invisible for ``visibility``.
        """
        now = trio.current_time()
        self.advance(now)
        taken = self._take(max_messages, visibility, now, render)
        if taken or wait == 0:
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                # Taken for a client that went away before it could have the answer.
                self.orphaned_deliveries += len(taken)
                raise
            return taken
        poll = _Poll(max_messages, visibility, now + wait, render)
        self._polls.append(poll)
        try:
            while True:
                with trio.CancelScope(deadline=min(poll.deadline, self.next_timer())) as wake:
                    poll.wake = wake
                    await poll.event.wait()
                poll.wake = None
                if poll.result is None:
                    self.advance(trio.current_time())
                if poll.result is not None:
                    return poll.result
                if trio.current_time() >= poll.deadline:
                    return []
        except trio.Cancelled:
            poll.wake = None
            poll.abandoned = True
            if poll.result is not None:
                # Handed messages in the instant its client went away: they are taken for
                # nobody, like those an abandoned poll takes later.
                self.orphaned_deliveries += len(poll.result)
            raise

    # -- sending -------------------------------------------------------------------------------

    def _insert(self, message: _Message, delay: int, at: float) -> None:
        self._messages[message.message_id] = message
        if message.group is not None and self.fifo:
            self._groups.setdefault(message.group, collections.deque()).append(message)
        if delay > 0:
            self._schedule(message, DELAYED, at + delay)
        else:
            message.state = DELAYED  # so that _make_visible sees a transition
            self._make_visible(message)
        self.advance(at)

    def _dedup_key(self, dedup_id: str, group: str | None) -> tuple[str | None, str]:
        """Deduplication is per queue, or per message group with ``DeduplicationScope``
        ``messageGroup`` (high-throughput FIFO)."""
        per_group = self.attributes.get("DeduplicationScope") == "messageGroup"
        return (group if per_group else None, dedup_id)

    def deduplicated(
        self, dedup_id: str, group: str | None, now: float
    ) -> tuple[str, str | None] | None:
        """(message id, sequence number) of a message sent with this id (in this group, with
        ``DeduplicationScope`` ``messageGroup``) in the last 5 minutes."""
        seen = self._dedup.get(self._dedup_key(dedup_id, group))
        if seen is None or seen[0] + DEDUP_WINDOW <= now:
            return None
        return seen[1], seen[2]

    def add(
        self,
        *,
        message_id: str,
        body: str,
        md5_of_body: str,
        attributes: dict[str, dict[str, Any]],
        md5_of_attributes: str | None,
        system: dict[str, str],
        delay: int,
        group: str | None,
        dedup_id: str | None,
        sequence_number: str | None,
    ) -> None:
        now = trio.current_time()
        self.advance(now)
        if dedup_id is not None:
            self._dedup[self._dedup_key(dedup_id, group)] = (now, message_id, sequence_number)
        message = _Message(
            message_id=message_id,
            body=body,
            md5_of_body=md5_of_body,
            attributes=attributes,
            md5_of_attributes=md5_of_attributes,
            system=system,
            seq=self._service.next_seq(),
            sent_ms=self._service.epoch_ms(now),
            group=group,
        )
        self._insert(message, delay, now)

    # -- message move tasks (StartMessageMoveTask) ---------------------------------------------

    def oldest_visible(self) -> _Message | None:
        """The oldest visible message (the next one a move task moves), or None."""
        if not self.fifo:
            visible = self._visible
            while visible:
                _, version, message = visible[0]
                if message.version == version and message.state == VISIBLE:
                    return message
                heapq.heappop(visible)
            return None
        candidates = [m for m in self._messages.values() if m.state == VISIBLE]
        return min(candidates, key=lambda m: m.seq) if candidates else None

    def move_out(self, message: _Message, at: float) -> None:
        """A move task took ``message`` (visible) out of this queue at ``at``."""
        self._remove(message)
        self.advance(at)  # a FIFO group may be open again

    def move_in(self, message: _Message, at: float, message_id: str, sequence: str | None) -> None:
        """A move task put ``message`` into this queue at ``at``: as SQS does, a new message
        (new id, sent now, never received) with the body and attributes of the old one; a FIFO
        queue keeps its group and gives it a new sequence number."""
        system = {
            k: v
            for k, v in message.system.items()
            if k not in ("DeadLetterQueueSourceArn", "SequenceNumber")
        }
        if self.fifo and sequence is not None:
            system["SequenceNumber"] = sequence
        elif not self.fifo:
            system.pop("MessageGroupId", None)
            system.pop("MessageDeduplicationId", None)
        moved = _Message(
            message_id=message_id,
            body=message.body,
            md5_of_body=message.md5_of_body,
            attributes=message.attributes,
            md5_of_attributes=message.md5_of_attributes,
            system=system,
            seq=self._service.next_seq(),
            sent_ms=self._service.epoch_ms(at),
            group=message.group if self.fifo else None,
        )
        self._insert(moved, 0, at)

    # -- acting on received messages -----------------------------------------------------------

    def _by_handle(self, handle: object) -> tuple[_Message | None, bool]:
        """(the message, whether ``handle`` is its current receipt); raise for a foreign handle."""
        decoded = decode_receipt(handle)
        if decoded is None or decoded[0] != self.name:
            raise _invalid_handle(handle)
        message = self._messages.get(decoded[1])
        if message is None:
            return None, False
        return message, message.receipt == handle

    def _remove(self, message: _Message) -> None:
        if message.state == IN_FLIGHT and message.group is not None:
            self._group_in_flight[message.group] -= 1
        message.state = DELETED
        message.version += 1
        del self._messages[message.message_id]
        if message.group is not None and self.fifo:
            group = self._groups[message.group]
            group.remove(message)
            if not group:
                del self._groups[message.group]
                del self._group_in_flight[message.group]
            else:
                self._maybe_ready(message.group)

    def delete(self, handle: object) -> None:
        """DeleteMessage. A handle of a message already deleted succeeds, as in SQS; so does an
        older handle of a message received again since, which then is not deleted (SQS's
        documented behaviour: only the latest receipt deletes). On a FIFO queue a handle whose
        visibility timeout has ended is refused."""
        now = trio.current_time()
        self.advance(now)
        message, current = self._by_handle(handle)
        if message is None or not current:
            return
        if self.fifo and message.state != IN_FLIGHT:
            raise FakeError(
                "ReceiptHandleIsInvalid",
                f"Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt "
                "handle has expired.",
                query_code="ReceiptHandleIsInvalid",
            )
        self._remove(message)
        self.advance(now)  # a FIFO group may be open again

    def change_visibility(self, handle: object, timeout: int) -> None:
        """ChangeMessageVisibility: only the latest receipt of a message in flight may change it."""
        now = trio.current_time()
        self.advance(now)
        message, current = self._by_handle(handle)
        if message is None or not current:
            raise _not_available(str(handle))
        if message.state != IN_FLIGHT:
            raise FakeError(
                "MessageNotInflight",
                "The message referred to isn't in flight.",
                query_code="AWS.SimpleQueueService.MessageNotInflight",
            )
        if now - message.received_at + timeout > MAX_TOTAL_VISIBILITY:
            raise invalid_parameter(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                f"VisibilityTimeout for the message is beyond the limit [{MAX_TOTAL_VISIBILITY} "
                "seconds]."
            )
        if timeout == 0:
            self._make_visible(message)
            self.advance(now)
        else:
            self._schedule(message, IN_FLIGHT, now + timeout)

    def purge(self) -> None:
        for message in list(self._messages.values()):
            self._remove(message)
        self._timers.clear()
        self._visible.clear()
        self._ready.clear()

    def close(self) -> None:
        """The queue was deleted: waiting polls end empty."""
        self.purge()
        for poll in self._polls:
            if poll.result is None:
                poll.result = []
                poll.event.set()
        self._polls.clear()

    def receipt_handles(self) -> Sequence[str]:
        """The current receipt handles of the messages in flight (for tests)."""
        self.advance(trio.current_time())
        return [
            m.receipt
            for m in self._messages.values()
            if m.state == IN_FLIGHT and m.receipt is not None
        ]
