"""Message move tasks in trio_sqs.testing.FakeSQS (StartMessageMoveTask, ListMessageMoveTasks,
CancelMessageMoveTask: SQS's dead-letter queue redrive), through the real client on MockClock.

A task moves at its rate on Trio's clock: its Nth move is due exactly N / rate seconds after it
started, so progress is asserted at exact virtual times. The answers SQS gives were taken from
recordings of real SQS where there are some (see the fake's "differs from SQS" notes for what
was not confirmed).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import trio

import trio_sqs
from trio_sqs.testing import FakeError, FakeSQS
from trio_sqs.testing._moves import DEFAULT_MOVE_RATE

ACCOUNT = "123456789012"


def arn_of(name: str) -> str:
    return f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"


class Pipe:
    """A source queue whose RedrivePolicy names a dead-letter queue (maxReceiveCount 1)."""

    def __init__(self, client: trio_sqs.SQSClient, source: str, dlq: str) -> None:
        self.client = client
        self.source, self.dlq = source, dlq
        self.source_arn, self.dlq_arn = arn_of(source), arn_of(dlq)

    @classmethod
    async def create(
        cls, client: trio_sqs.SQSClient, name: str, *, dlq: str | None = None, fifo: bool = False
    ) -> Pipe:
        suffix = ".fifo" if fifo else ""
        extra = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
        dlq = dlq or f"{name}-dlq{suffix}"
        if dlq not in [url.rpartition("/")[2] for url in await client.list_queues()]:
            await client.create_queue(dlq, attributes=extra or None)
        policy = json.dumps({"deadLetterTargetArn": arn_of(dlq), "maxReceiveCount": 1})
        await client.create_queue(name + suffix, attributes={"RedrivePolicy": policy, **extra})
        return cls(client, name + suffix, dlq)

    def url(self, name: str) -> str:
        return f"http://sqs.fake.invalid/{ACCOUNT}/{name}"

    async def dead_letter(self, *bodies: str, **send: Any) -> None:
        """Send ``bodies`` to the source and receive them until the fake moves them to the DLQ."""
        for body in bodies:
            await self.client.send_message(self.url(self.source), body, **send)
        for _ in range(len(bodies) + 1):
            await self.client.receive_messages(
                self.url(self.source), max_messages=10, visibility_timeout=0, wait_time=0
            )

    async def start(self, **params: Any) -> str:
        result = await self.client.call(
            "StartMessageMoveTask", {"SourceArn": self.dlq_arn, **params}
        )
        handle: str = result["TaskHandle"]
        return handle

    async def tasks(self, max_results: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"SourceArn": self.dlq_arn}
        if max_results is not None:
            params["MaxResults"] = max_results
        result = await self.client.call("ListMessageMoveTasks", params)
        return list(result.get("Results", []))

    async def task(self) -> dict[str, Any]:
        (newest,) = await self.tasks()
        return newest


def held(fake: FakeSQS, name: str) -> tuple[int, int, int]:
    counts = fake.queue(name).counts()
    return counts.visible, counts.in_flight, counts.delayed


def bodies(fake: FakeSQS, name: str) -> list[str]:
    return [m.body for m in fake.queue(name).messages()]


async def refused(call: Any) -> trio_sqs.ServiceError:
    with pytest.raises(trio_sqs.ServiceError) as caught:
        await call
    return caught.value


# -- moving -----------------------------------------------------------------------------------


async def test_messages_move_back_to_their_source_as_new_messages(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "orders")
    await pipe.dead_letter("a", "b", "c")
    old_ids = {m.message_id for m in fake_sqs.queue(pipe.dlq).messages()}
    assert held(fake_sqs, pipe.dlq) == (3, 0, 0) and held(fake_sqs, pipe.source) == (0, 0, 0)

    started = trio.current_time()
    started_ms = int(fake_sqs.epoch(started) * 1000)
    handle = await pipe.start()
    decoded = json.loads(base64.b64decode(handle))
    assert decoded["sourceArn"] == pipe.dlq_arn and uuid.UUID(decoded["taskId"])
    assert await pipe.task() == {
        "SourceArn": pipe.dlq_arn,
        "Status": "RUNNING",
        "TaskHandle": handle,
        "StartedTimestamp": started_ms,
        "ApproximateNumberOfMessagesMoved": 0,
        "ApproximateNumberOfMessagesToMove": 3,
    }  # no DestinationArn, no MaxNumberOfMessagesPerSecond: neither was given

    await trio.sleep(3 / DEFAULT_MOVE_RATE)
    assert held(fake_sqs, pipe.source) == (3, 0, 0) and held(fake_sqs, pipe.dlq) == (0, 0, 0)
    assert await pipe.task() == {
        "SourceArn": pipe.dlq_arn,
        "Status": "COMPLETED",
        "StartedTimestamp": started_ms,
        "ApproximateNumberOfMessagesMoved": 3,
        "ApproximateNumberOfMessagesToMove": 3,
    }  # no TaskHandle once it is not running
    result = await fake_sqs_client.receive_messages(pipe.url(pipe.source), wait_time=0)
    assert [m.body for m in result.messages] == ["a", "b", "c"]  # oldest first
    for message in result.messages:
        assert message.message_id not in old_ids  # a redriven message is a new message
        assert message.receive_count == 1  # never received before this receive
        assert "DeadLetterQueueSourceArn" not in message.attributes


async def test_the_rate_is_kept_on_trios_clock(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "paced")
    await pipe.dead_letter(*"abcde")
    start = trio.current_time()
    await pipe.start(MaxNumberOfMessagesPerSecond=2)
    moved = []
    for step in range(6):
        await trio.sleep_until(start + step * 0.5)
        moved.append(held(fake_sqs, pipe.source)[0])
    assert moved == [0, 1, 2, 3, 4, 5]  # the Nth move at N / rate
    task = await pipe.task()
    assert (task["Status"], task["MaxNumberOfMessagesPerSecond"]) == ("COMPLETED", 2)


async def test_the_default_rate(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "fast")
    await pipe.dead_letter(*(str(i) for i in range(10)))
    start = trio.current_time()
    await pipe.start()
    await trio.sleep_until(start + 9 / DEFAULT_MOVE_RATE)
    assert held(fake_sqs, pipe.source)[0] == 9
    await trio.sleep_until(start + 10 / DEFAULT_MOVE_RATE)
    assert held(fake_sqs, pipe.source)[0] == 10
    assert (await pipe.task())["Status"] == "COMPLETED"


async def test_each_message_goes_back_to_the_queue_it_came_from(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    first = await Pipe.create(fake_sqs_client, "first", dlq="shared-dlq")
    second = await Pipe.create(fake_sqs_client, "second", dlq="shared-dlq")
    await first.dead_letter("1a", "1b")
    await second.dead_letter("2a")
    await first.dead_letter("1c")
    await first.start(MaxNumberOfMessagesPerSecond=10)
    await trio.sleep(1)
    assert bodies(fake_sqs, "first") == ["1a", "1b", "1c"]
    assert bodies(fake_sqs, "second") == ["2a"]
    assert bodies(fake_sqs, "shared-dlq") == []
    assert (await first.task())["ApproximateNumberOfMessagesMoved"] == 4


async def test_an_explicit_destination(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "src")
    await fake_sqs_client.create_queue("elsewhere")
    await pipe.dead_letter("x", "y")
    await pipe.start(DestinationArn=arn_of("elsewhere"), MaxNumberOfMessagesPerSecond=4)
    await trio.sleep(0.5)
    assert bodies(fake_sqs, "elsewhere") == ["x", "y"]
    assert bodies(fake_sqs, pipe.source) == []
    task = await pipe.task()
    assert task["DestinationArn"] == arn_of("elsewhere")
    assert task["MaxNumberOfMessagesPerSecond"] == 4


async def test_a_fifo_dlq_moves_back_with_its_group_and_a_new_sequence_number(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "jobs", fifo=True)
    await pipe.dead_letter("j1", message_group_id="g1")
    before = await _peek(fake_sqs_client, pipe.url(pipe.dlq))
    await pipe.start()
    await trio.sleep(1)
    result = await fake_sqs_client.receive_messages(pipe.url(pipe.source), wait_time=0)
    (after,) = result.messages
    assert after.body == "j1" and after.message_group_id == "g1"
    assert after.sequence_number is not None
    assert after.sequence_number != before.sequence_number


async def _peek(client: trio_sqs.SQSClient, url: str) -> trio_sqs.Message:
    result = await client.receive_messages(url, wait_time=0, visibility_timeout=0)
    (message,) = result.messages
    return message


# -- what moves -------------------------------------------------------------------------------


async def test_only_the_messages_visible_at_the_start_are_counted_and_moved(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "partial")
    await pipe.dead_letter("old1", "old2", "held")
    dlq_url = pipe.url(pipe.dlq)
    # "held" is in flight in the DLQ when the task starts (someone is looking at it).
    await _receive_body(fake_sqs_client, dlq_url, "held", visibility=100)
    await pipe.start(MaxNumberOfMessagesPerSecond=1)
    assert (await pipe.task())["ApproximateNumberOfMessagesToMove"] == 2
    await trio.sleep(0.5)
    await pipe.dead_letter("late")  # arrives in the DLQ during the task
    await trio.sleep(10)
    task = await pipe.task()
    assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("COMPLETED", 2)
    assert bodies(fake_sqs, pipe.source) == ["old1", "old2"]
    assert sorted(bodies(fake_sqs, pipe.dlq)) == ["held", "late"]


async def _receive_body(
    client: trio_sqs.SQSClient, url: str, body: str, *, visibility: int
) -> None:
    """Receive every visible message of ``url``: hide ``body`` for ``visibility`` seconds and
    release the others at once."""
    result = await client.receive_messages(url, wait_time=0, visibility_timeout=visibility)
    others = [m.receipt_handle for m in result.messages if m.body != body]
    assert len(others) < len(result.messages)
    if others:
        await client.change_message_visibility_batch(url, others, 0)


async def test_a_task_ends_completed_when_nothing_visible_is_left(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "purged")
    await pipe.dead_letter(*"abcd")
    start = trio.current_time()
    await pipe.start(MaxNumberOfMessagesPerSecond=1)
    await trio.sleep_until(start + 1.5)
    await fake_sqs_client.purge_queue(pipe.url(pipe.dlq))
    await trio.sleep_until(start + 2)
    task = await pipe.task()
    assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("COMPLETED", 1)
    assert task["ApproximateNumberOfMessagesToMove"] == 4


async def test_an_empty_dead_letter_queue_completes_at_once(
    autojump_clock: Any, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "empty")
    await pipe.start()
    task = await pipe.task()
    assert task["Status"] == "COMPLETED"
    assert (
        task["ApproximateNumberOfMessagesMoved"],
        task["ApproximateNumberOfMessagesToMove"],
    ) == (
        0,
        0,
    )


async def test_a_long_poll_on_the_destination_gets_each_message_when_it_moves(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "polled")
    await pipe.dead_letter("first", "second")
    source_url = pipe.url(pipe.source)
    got: list[tuple[float, str]] = []

    async def poll() -> None:
        # Waiting before the task starts: the start pulls its wake-up in.
        result = await fake_sqs_client.receive_messages(source_url, wait_time=20, max_messages=1)
        got.extend((trio.current_time(), m.body) for m in result.messages)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(1)
        start = trio.current_time()
        await pipe.start(MaxNumberOfMessagesPerSecond=1)
        # And one that starts waiting during the task.
        second = await fake_sqs_client.receive_messages(source_url, wait_time=20, max_messages=1)
        got.extend((trio.current_time(), m.body) for m in second.messages)
    assert got == [(start + 1, "first"), (start + 2, "second")]


# -- one task at a time, cancelling ---------------------------------------------------------


async def test_one_active_task_per_source_queue(
    autojump_clock: Any, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "busy")
    await pipe.dead_letter(*"abcdef")
    handle = await pipe.start(MaxNumberOfMessagesPerSecond=1)
    error = await refused(pipe.start())
    assert (error.code, error.status_code) == ("InvalidParameterValue", 400)
    assert error.message == (
        "There is already a task running. Only one active task is allowed for a source queue "
        "arn at a given time."
    )
    await fake_sqs_client.call("CancelMessageMoveTask", {"TaskHandle": handle})
    assert (await pipe.task())["Status"] == "CANCELLING"  # still active
    assert (await refused(pipe.start())).code == "InvalidParameterValue"
    await trio.sleep(1)
    assert (await pipe.task())["Status"] == "CANCELLED"
    await pipe.start()  # allowed again
    assert [t["Status"] for t in await pipe.tasks(10)] == ["RUNNING", "CANCELLED"]


async def test_cancel_stops_the_moves_and_answers_how_many_moved(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "stopme")
    await pipe.dead_letter(*"abcdef")
    start = trio.current_time()
    handle = await pipe.start(MaxNumberOfMessagesPerSecond=2)
    await trio.sleep_until(start + 1.25)
    answer = await fake_sqs_client.call("CancelMessageMoveTask", {"TaskHandle": handle})
    assert answer == {"ApproximateNumberOfMessagesMoved": 2}
    task = await pipe.task()
    assert task["Status"] == "CANCELLING" and "TaskHandle" not in task
    # CANCELLED when the next move was due (start + 1.5), and that move never happens.
    await trio.sleep_until(start + 1.5)
    task = await pipe.task()
    assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("CANCELLED", 2)
    await trio.sleep(10)
    assert held(fake_sqs, pipe.source) == (2, 0, 0)
    assert held(fake_sqs, pipe.dlq) == (4, 0, 0)  # not moved back: cancelling reverts nothing
    # A task that is not running cannot be cancelled (again).
    error = await refused(fake_sqs_client.call("CancelMessageMoveTask", {"TaskHandle": handle}))
    assert (error.code, error.status_code, error.message) == (
        "ResourceNotFoundException",
        404,
        "Task does not exist.",
    )


async def test_a_completed_task_cannot_be_cancelled(
    autojump_clock: Any, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "done")
    await pipe.dead_letter("a")
    handle = await pipe.start()
    await trio.sleep(1)
    error = await refused(fake_sqs_client.call("CancelMessageMoveTask", {"TaskHandle": handle}))
    assert (error.code, error.message) == ("ResourceNotFoundException", "Task does not exist.")


def handle_for(task_id: str, source_arn: str) -> str:
    return base64.b64encode(
        json.dumps({"taskId": task_id, "sourceArn": source_arn}).encode()
    ).decode()


@pytest.mark.parametrize(
    ("handle", "code", "status", "message"),
    [
        ("foobared", "InvalidParameterValue", 400, "Value for parameter TaskHandle is invalid."),
        (
            base64.b64encode(b'{"taskId": 1}').decode(),
            "InvalidParameterValue",
            400,
            "Value for parameter TaskHandle is invalid.",
        ),
        (
            handle_for("6f1c2a4e-0d1b-4c57-9a57-3b2f1f0c9e11", arn_of("no-such-queue")),
            "ResourceNotFoundException",
            404,
            "The resource that you specified for the SourceArn parameter doesn't exist.",
        ),
        (
            handle_for("0b7e4c1d-5a2f-4e8b-8c3d-9f6a2e1b7c40", arn_of("cancel-errors-dlq")),
            "ResourceNotFoundException",
            404,
            "Task does not exist.",
        ),
    ],
    # Fixed ids (a uuid4 in an id made the workers of -n 2 collect different tests).
    ids=["garbage", "no-task-id", "unknown-source", "unknown-task"],
)
async def test_cancel_errors(
    autojump_clock: Any,
    fake_sqs_client: trio_sqs.SQSClient,
    handle: str,
    code: str,
    status: int,
    message: str,
) -> None:
    await Pipe.create(fake_sqs_client, "cancel-errors")
    error = await refused(fake_sqs_client.call("CancelMessageMoveTask", {"TaskHandle": handle}))
    assert (error.code, error.status_code, error.message) == (code, status, message)


# -- failures ---------------------------------------------------------------------------------


async def test_a_message_sent_to_the_dlq_directly_fails_the_task_without_a_destination(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "direct")
    await pipe.dead_letter("a")
    await fake_sqs_client.send_message(pipe.url(pipe.dlq), "sent directly")
    await pipe.dead_letter("b")
    await pipe.start(MaxNumberOfMessagesPerSecond=1)
    await trio.sleep(5)
    task = await pipe.task()
    assert (task["Status"], task["FailureReason"]) == ("FAILED", "CouldNotDetermineMessageSource")
    assert (
        task["ApproximateNumberOfMessagesMoved"],
        task["ApproximateNumberOfMessagesToMove"],
    ) == (
        1,
        3,
    )
    assert bodies(fake_sqs, pipe.source) == ["a"]
    assert bodies(fake_sqs, pipe.dlq) == ["sent directly", "b"]
    # With a destination, the same messages move.
    await pipe.start(DestinationArn=pipe.source_arn)
    await trio.sleep(1)
    assert bodies(fake_sqs, pipe.source) == ["a", "sent directly", "b"]


async def test_a_destination_deleted_while_running_fails_the_task(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "doomed")
    target = await fake_sqs_client.create_queue("doomed-target")
    await pipe.dead_letter(*"abcde")
    start = trio.current_time()
    await pipe.start(DestinationArn=arn_of("doomed-target"), MaxNumberOfMessagesPerSecond=1)
    await trio.sleep_until(start + 3.5)
    await fake_sqs_client.delete_queue(target)
    await trio.sleep(5)
    task = await pipe.task()
    assert task["Status"] == "FAILED"
    assert task["FailureReason"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert task["ApproximateNumberOfMessagesMoved"] == 3
    assert held(fake_sqs, pipe.dlq) == (2, 0, 0)  # the rest stay in the DLQ


# -- validation -------------------------------------------------------------------------------


async def test_start_validation(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "checks")
    await fake_sqs_client.create_queue("checks-fifo.fifo", attributes={"FifoQueue": "true"})

    async def start(**params: Any) -> tuple[str, int | None, str]:
        error = await refused(fake_sqs_client.call("StartMessageMoveTask", params))
        return error.code, error.status_code, error.message

    bad_format = (
        "You must use this format to specify the {}: "
        "arn:<partition>:<service>:<region>:<account-id>:<resource-id>"
    )
    assert await start(SourceArn="checks-dlq") == (
        "InvalidParameterValue",
        400,
        bad_format.format("SourceArn"),
    )
    assert await start(SourceArn=pipe.dlq_arn, DestinationArn="") == (
        "InvalidParameterValue",
        400,
        bad_format.format("DestinationArn"),
    )
    assert await start(SourceArn=arn_of("nothing")) == (
        "ResourceNotFoundException",
        404,
        "The resource that you specified for the SourceArn parameter doesn't exist.",
    )
    assert await start(SourceArn=pipe.source_arn) == (  # no queue's RedrivePolicy names it
        "InvalidParameterValue",
        400,
        "Source queue must be configured as a Dead Letter Queue.",
    )
    assert await start(SourceArn=pipe.dlq_arn, DestinationArn=arn_of("nothing")) == (
        "ResourceNotFoundException",
        404,
        "The resource that you specified for the DestinationArn parameter doesn't exist.",
    )
    assert await start(SourceArn=pipe.dlq_arn, DestinationArn=pipe.dlq_arn) == (
        "InvalidParameterValue",
        400,
        "Source queue arn and destination queue arn cannot be the same.",
    )
    assert await start(SourceArn=pipe.dlq_arn, DestinationArn=arn_of("checks-fifo.fifo")) == (
        "InvalidParameterValue",
        400,
        "The source queue and destination queue must be of the same queue type.",
    )
    for rate in (0, 501):
        assert await start(SourceArn=pipe.dlq_arn, MaxNumberOfMessagesPerSecond=rate) == (
            "InvalidParameterValue",
            400,
            f"Value {rate} for parameter MaxNumberOfMessagesPerSecond is invalid. Reason: Must "
            "be between 1 and 500, if provided.",
        )
    await pipe.start(MaxNumberOfMessagesPerSecond=500)  # the bounds themselves are fine
    # Missing or mistyped parameters (the client's own validation would catch these first).
    with pytest.raises(FakeError) as missing:
        await fake_sqs.call("StartMessageMoveTask", {})
    assert missing.value.type_name == "MissingParameter"
    with pytest.raises(FakeError) as mistyped:
        await fake_sqs.call(
            "StartMessageMoveTask", {"SourceArn": pipe.dlq_arn, "MaxNumberOfMessagesPerSecond": "5"}
        )
    assert mistyped.value.type_name == "SerializationException"


async def test_list_returns_the_newest_first_up_to_max_results(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    pipe = await Pipe.create(fake_sqs_client, "history")
    assert await pipe.tasks() == []  # no Results at all for a queue without tasks
    assert await fake_sqs.call("ListMessageMoveTasks", {"SourceArn": pipe.dlq_arn}) == {}
    for rate in (1, 2, 3):
        await pipe.dead_letter(f"m{rate}")
        await pipe.start(MaxNumberOfMessagesPerSecond=rate)
        await trio.sleep(2)
    assert [t["MaxNumberOfMessagesPerSecond"] for t in await pipe.tasks()] == [3]
    assert [t["MaxNumberOfMessagesPerSecond"] for t in await pipe.tasks(10)] == [3, 2, 1]
    for bad in (0, 11):
        error = await refused(pipe.tasks(bad))
        assert (error.code, error.message) == (
            "InvalidParameterValue",
            f"Value {bad} for parameter MaxResults is invalid. Reason: Must be between 1 and "
            "10, if provided.",
        )
    error = await refused(
        fake_sqs_client.call("ListMessageMoveTasks", {"SourceArn": arn_of("nothing")})
    )
    assert (error.code, error.status_code) == ("ResourceNotFoundException", 404)
    # A queue that is not a DLQ has no tasks, and that is not an error.
    assert await fake_sqs.call("ListMessageMoveTasks", {"SourceArn": pipe.source_arn}) == {}
