"""Message move tasks (StartMessageMoveTask, ListMessageMoveTasks, CancelMessageMoveTask):
dead-letter queue redrive on Trio's clock, for :class:`~trio_sqs.testing.FakeSQS`."""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._errors import FakeError, invalid_parameter
from ._validate import read_int, read_required_str

if TYPE_CHECKING:
    from ._queue import FakeQueue

__all__ = ["DEFAULT_MOVE_RATE", "MAX_MOVE_RATE", "MoveTasks"]

#: Messages a move task moves per second when StartMessageMoveTask gives no
#: MaxNumberOfMessagesPerSecond (SQS then picks a "system optimized" rate of its own).
DEFAULT_MOVE_RATE = 100
MAX_MOVE_RATE = 500
RUNNING, COMPLETED, CANCELLING, CANCELLED, FAILED = (
    "RUNNING",
    "COMPLETED",
    "CANCELLING",
    "CANCELLED",
    "FAILED",
)
NON_EXISTENT_QUEUE = "AWS.SimpleQueueService.NonExistentQueue"


@dataclass(eq=False, slots=True)
class _MoveTask:
    """One message move task (StartMessageMoveTask): its Nth move is due ``N / rate`` seconds
    (Trio's clock) after it started; each move takes the source's oldest visible message. It
    ends when it has moved ``to_move`` (the source's visible count when it started) or finds
    no visible message."""

    task_id: str
    handle: str
    source_arn: str
    destination_arn: str | None
    rate: int | None  # as requested; None: DEFAULT_MOVE_RATE
    started: float
    started_ms: int
    to_move: int
    next_at: float
    moved: int = 0
    status: str = RUNNING
    failure: str | None = None

    def move_time(self, number: int) -> float:
        """When the ``number``-th move (1-based) is due: ``number / rate`` after the start."""
        return self.started + number / (self.rate or DEFAULT_MOVE_RATE)

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, CANCELLING)

    def entry(self) -> dict[str, Any]:
        """The task as ListMessageMoveTasks shows it."""
        entry: dict[str, Any] = {
            "SourceArn": self.source_arn,
            "Status": self.status,
            "StartedTimestamp": self.started_ms,
            "ApproximateNumberOfMessagesMoved": self.moved,
            "ApproximateNumberOfMessagesToMove": self.to_move,
        }
        if self.status == RUNNING:
            entry["TaskHandle"] = self.handle
        if self.destination_arn is not None:
            entry["DestinationArn"] = self.destination_arn
        if self.rate is not None:
            entry["MaxNumberOfMessagesPerSecond"] = self.rate
        if self.failure is not None:
            entry["FailureReason"] = self.failure
        return entry


def _resource_not_found(message: str) -> FakeError:
    return FakeError("ResourceNotFoundException", message, status=404)


def _not_found(parameter: str) -> FakeError:
    return _resource_not_found(
        f"The resource that you specified for the {parameter} parameter doesn't exist."
    )


class _Service(Protocol):
    """What the move tasks need from the service that holds the queues."""

    @property
    def queues(self) -> dict[str, FakeQueue]: ...

    def queue_by_arn(self, arn: str) -> FakeQueue | None: ...

    def redrive_policy(self, queue: FakeQueue) -> tuple[str, int] | None: ...

    def epoch_ms(self, at: float) -> int: ...

    def next_sequence_number(self) -> str: ...


class MoveTasks:
    """Every message move task of one service, oldest first, and the moves they make. A task's
    moves happen when something looks at the queues (:meth:`run`, called before every
    operation and by a queue before it answers), each at its own time."""

    def __init__(self, service: _Service) -> None:
        self._service = service
        self._tasks: list[_MoveTask] = []  # every task, oldest first
        self._active: list[_MoveTask] = []  # the RUNNING or CANCELLING ones
        self._running = False

    @staticmethod
    def _check_arn(params: Mapping[str, Any], name: str) -> str:
        arn = read_required_str(params, name)
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or not all(parts[1:3]) or not parts[5]:
            raise invalid_parameter(
                f"You must use this format to specify the {name}: "
                "arn:<partition>:<service>:<region>:<account-id>:<resource-id>"
            )
        return arn

    def _dead_letter_sources(self, dlq_arn: str) -> list[FakeQueue]:
        """The queues whose RedrivePolicy names ``dlq_arn`` as their dead-letter queue."""
        sources = []
        for queue in self._service.queues.values():
            policy = self._service.redrive_policy(queue)
            if policy is not None and policy[0] == dlq_arn:
                sources.append(queue)
        return sources

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        now = trio.current_time()
        source_arn = self._check_arn(params, "SourceArn")
        destination_arn = (
            None
            if params.get("DestinationArn") is None
            else self._check_arn(params, "DestinationArn")
        )
        rate = (
            None
            if params.get("MaxNumberOfMessagesPerSecond") is None
            else read_int(params, "MaxNumberOfMessagesPerSecond", 0, 1, MAX_MOVE_RATE)
        )
        source = self._service.queue_by_arn(source_arn)
        if source is None:
            raise _not_found("SourceArn")
        sources = self._dead_letter_sources(source_arn)
        if not sources:
            raise invalid_parameter("Source queue must be configured as a Dead Letter Queue.")
        destination = None
        if destination_arn is not None:
            destination = self._service.queue_by_arn(destination_arn)
            if destination is None:
                raise _not_found("DestinationArn")
            if destination is source:
                raise invalid_parameter(
                    "Source queue arn and destination queue arn cannot be the same."
                )
            if destination.fifo != source.fifo:
                raise invalid_parameter(
                    "The source queue and destination queue must be of the same queue type."
                )
        if any(t.source_arn == source_arn for t in self._active):
            raise invalid_parameter(
                "There is already a task running. Only one active task is allowed for a source "
                "queue arn at a given time."
            )
        task_id = str(uuid.uuid4())
        handle = base64.b64encode(
            json.dumps({"taskId": task_id, "sourceArn": source_arn}, separators=(",", ":")).encode()
        ).decode()
        task = _MoveTask(
            task_id=task_id,
            handle=handle,
            source_arn=source_arn,
            destination_arn=destination_arn,
            rate=rate,
            started=now,
            started_ms=self._service.epoch_ms(now),
            to_move=source.counts().visible,
            next_at=now,
        )
        task.next_at = task.move_time(1)
        if task.to_move == 0:
            task.status = COMPLETED
        self._tasks.append(task)
        if task.active:
            self._active.append(task)
            for queue in [source, *([destination] if destination else sources)]:
                queue.wake_polls_by(task.next_at)
        return {"TaskHandle": handle}

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        source_arn = self._check_arn(params, "SourceArn")
        limit = read_int(params, "MaxResults", 1, 1, 10)
        if self._service.queue_by_arn(source_arn) is None:
            raise _not_found("SourceArn")
        tasks = [t for t in reversed(self._tasks) if t.source_arn == source_arn]
        return {"Results": [t.entry() for t in tasks[:limit]]} if tasks else {}

    def cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        handle = read_required_str(params, "TaskHandle")
        try:
            decoded = json.loads(base64.b64decode(handle, validate=True))
            task_id, source_arn = decoded["taskId"], decoded["sourceArn"]
            if not isinstance(task_id, str) or not isinstance(source_arn, str):
                raise TypeError(task_id, source_arn)
        except (binascii.Error, ValueError, TypeError, KeyError):
            raise invalid_parameter("Value for parameter TaskHandle is invalid.") from None
        if self._service.queue_by_arn(source_arn) is None:
            raise _not_found("SourceArn")
        for task in self._tasks:
            if task.task_id == task_id and task.source_arn == source_arn:
                break
        else:
            raise _resource_not_found("Task does not exist.")
        if task.status != RUNNING:
            # Not confirmed against SQS (documented: "can only be cancelled when the current
            # status is RUNNING"); the same answer as an unknown task.
            raise _resource_not_found("Task does not exist.")
        task.status = CANCELLING  # CANCELLED when its next move was due
        return {"ApproximateNumberOfMessagesMoved": task.moved}

    def next_move(self, queue: FakeQueue) -> float:
        """When the next move of a running task takes a message out of or into ``queue``."""
        soonest = math.inf
        for task in self._active:
            if task.next_at >= soonest:
                continue
            # Without a destination a message goes back to the queue its
            # DeadLetterQueueSourceArn names, whatever RedrivePolicy says now: any queue may be
            # the one (a waiter woken for nothing looks again and waits on).
            if task.destination_arn is None or queue.arn in (
                task.source_arn,
                task.destination_arn,
            ):
                soonest = task.next_at
        return soonest

    def run(self, now: float) -> None:
        """Apply every move of the message move tasks due by ``now``, each at its own time and
        in time order (as ``FakeQueue.advance`` applies timers)."""
        if self._running or not self._active:
            return
        self._running = True
        try:
            while True:
                due = [t for t in self._active if t.next_at <= now]
                if not due:
                    return
                task = min(due, key=lambda t: t.next_at)
                self._move_one(task)
                if not task.active:
                    self._active.remove(task)
        finally:
            self._running = False

    def _move_one(self, task: _MoveTask) -> None:
        at = task.next_at
        if task.status == CANCELLING:
            task.status = CANCELLED
            return
        source = self._service.queue_by_arn(task.source_arn)
        if source is None:
            task.status, task.failure = FAILED, NON_EXISTENT_QUEUE
            return
        source.advance(at)
        message = source.oldest_visible()
        if message is None:
            task.status = COMPLETED
            return
        target_arn = task.destination_arn or message.system.get("DeadLetterQueueSourceArn")
        if target_arn is None:
            task.status, task.failure = FAILED, "CouldNotDetermineMessageSource"
            return
        target = self._service.queue_by_arn(target_arn)
        if target is None:
            task.status, task.failure = FAILED, NON_EXISTENT_QUEUE
            return
        source.move_out(message, at)
        target.move_in(
            message,
            at,
            str(uuid.uuid4()),
            self._service.next_sequence_number() if target.fifo else None,
        )
        task.moved += 1
        if task.moved >= task.to_move:
            task.status = COMPLETED
        else:
            task.next_at = task.move_time(task.moved + 1)
