"""SQSClient against a real moto server (and, where moto cannot misbehave, a scripted fake)."""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs import (
    ClientClosedError,
    MessageAttributeValue,
    MessageCorruptError,
    QueueDoesNotExist,
    RetryPolicy,
    SendEntry,
    SQSClient,
    TransportError,
)

from .fake_sqs import Request, Response, default_result, serve_fake_sqs


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def _receive_all(
    sqs: SQSClient, queue_url: str, count: int, *, visibility_timeout: int = 30
) -> list[trio_sqs.Message]:
    """Receive until ``count`` messages arrived (each poll returns as soon as any message is there)."""
    got: list[trio_sqs.Message] = []
    for _ in range(count + 5):
        result = await sqs.receive_messages(
            queue_url, wait_time=1, visibility_timeout=visibility_timeout
        )
        assert result.corrupt == ()
        got.extend(result)
        if len(got) >= count:
            break
    assert len(got) == count
    return got


async def _counts(sqs: SQSClient, queue_url: str) -> tuple[int, int]:
    attrs = await sqs.get_queue_attributes(
        queue_url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


async def test_queue_lifecycle(sqs: SQSClient, queue_name: str) -> None:
    url = await sqs.create_queue(
        queue_name, attributes={"VisibilityTimeout": "45"}, tags={"team": "tests"}
    )
    assert url.startswith(sqs.endpoint + "/") and url.endswith("/" + queue_name)
    assert await sqs.get_queue_url(queue_name) == url
    # Creating an identical queue again returns the same URL.
    assert await sqs.create_queue(queue_name, attributes={"VisibilityTimeout": "45"}) == url

    attrs = await sqs.get_queue_attributes(url)
    assert attrs["VisibilityTimeout"] == "45"
    assert attrs["QueueArn"].endswith(":" + queue_name)
    only = await sqs.get_queue_attributes(url, ["VisibilityTimeout"])
    assert only == {"VisibilityTimeout": "45"}

    other = await sqs.create_queue(queue_name + "-other")
    assert sorted(await sqs.list_queues(prefix=queue_name)) == sorted([url, other])
    assert await sqs.list_queues(prefix=queue_name + "-oth") == [other]
    assert url in await sqs.list_queues()

    for i in range(3):
        await sqs.send_message(url, f"m{i}")
    assert await _counts(sqs, url) == (3, 0)
    await sqs.purge_queue(url)
    assert await _counts(sqs, url) == (0, 0)
    assert len(await sqs.receive_messages(url, wait_time=0)) == 0

    await sqs.delete_queue(url)
    await sqs.delete_queue(other)
    assert await sqs.list_queues(prefix=queue_name) == []
    with pytest.raises(QueueDoesNotExist):
        await sqs.get_queue_url(queue_name)


async def test_send_receive_delete_with_attributes(sqs: SQSClient, queue_url: str) -> None:
    attributes = {
        "kind": MessageAttributeValue.string("order \u2713"),
        "amount": MessageAttributeValue.number(12.5),
        "shard": MessageAttributeValue("Number.int", string_value="7"),
        "thumb": MessageAttributeValue.binary(b"\x89PNG\x00\xff"),
    }
    body = 'caf\u00e9 {"id": 1}'
    sent = await sqs.send_message(queue_url, body, message_attributes=attributes)
    assert sent.md5_of_body == _md5(body)
    assert sent.sequence_number is None

    [message] = await _receive_all(sqs, queue_url, 1)
    assert message.message_id == sent.message_id
    assert message.body == body
    assert message.queue_url == queue_url
    # moto computed the attribute digest on its side; our independent check accepted it.
    assert dict(message.message_attributes) == attributes
    assert message.md5_of_message_attributes is not None
    assert message.receive_count == 1
    assert message.sent_at is not None
    assert message.first_received_at is not None
    assert await _counts(sqs, queue_url) == (0, 1)

    await sqs.delete_message(queue_url, message.receipt_handle)
    assert await _counts(sqs, queue_url) == (0, 0)


async def test_send_batch_receive_delete_batch(sqs: SQSClient, queue_url: str) -> None:
    entries = [
        SendEntry(body="first"),
        SendEntry(body="second", id="custom-id"),
        SendEntry(body="third", message_attributes={"n": MessageAttributeValue.number(3)}),
    ]
    sent, outcome = await sqs.send_message_batch(queue_url, entries)
    assert outcome.ok and outcome.failed == ()
    assert sorted(outcome.successful) == ["0", "2", "custom-id"]
    by_id = {s.id: s for s in sent}
    assert set(by_id) == {"0", "custom-id", "2"}
    assert by_id["custom-id"].md5_of_body == _md5("second")

    received = await _receive_all(sqs, queue_url, 3)
    assert {m.body for m in received} == {"first", "second", "third"}
    assert {m.message_id for m in received} == {s.message_id for s in sent}

    result = await sqs.delete_message_batch(
        queue_url, {m.message_id: m.receipt_handle for m in received}
    )
    assert result.ok
    assert sorted(result.successful) == sorted(m.message_id for m in received)
    assert await _counts(sqs, queue_url) == (0, 0)


async def test_change_visibility(sqs: SQSClient, queue_url: str) -> None:
    await sqs.send_message(queue_url, "again")
    [first] = await _receive_all(sqs, queue_url, 1, visibility_timeout=300)
    # Invisible for 300 s: a poll finds nothing.
    assert len(await sqs.receive_messages(queue_url, wait_time=0)) == 0
    await sqs.change_message_visibility(queue_url, first.receipt_handle, 0)
    [second] = await _receive_all(sqs, queue_url, 1, visibility_timeout=300)
    assert second.message_id == first.message_id
    assert second.receive_count == 2


async def test_change_visibility_batch(sqs: SQSClient, queue_url: str) -> None:
    await sqs.send_message_batch(queue_url, [SendEntry(body="a"), SendEntry(body="b")])
    received = await _receive_all(sqs, queue_url, 2, visibility_timeout=300)
    handles = {m.body: m.receipt_handle for m in received}
    # Release "a" at once; keep "b" hidden for a long time (per-entry timeouts).
    result = await sqs.change_message_visibility_batch(queue_url, handles, {"a": 0, "b": 600})
    assert result.ok and sorted(result.successful) == ["a", "b"]
    [again] = await _receive_all(sqs, queue_url, 1)
    assert again.body == "a" and again.receive_count == 2
    assert await _counts(sqs, queue_url) == (0, 2)


async def test_batch_with_one_bad_receipt_handle(sqs: SQSClient, queue_url: str) -> None:
    await sqs.send_message_batch(queue_url, [SendEntry(body="x"), SendEntry(body="y")])
    x, y = await _receive_all(sqs, queue_url, 2, visibility_timeout=300)

    result = await sqs.change_message_visibility_batch(
        queue_url, {"good": x.receipt_handle, "bad": "bogus-receipt-handle"}, 300
    )
    assert result.successful == ("good",)
    [failure] = result.failed
    assert isinstance(failure, trio_sqs.BatchEntryError)
    assert failure.entry_id == "bad"
    assert failure.code == "ReceiptHandleIsInvalid"
    assert failure.sender_fault is True
    assert not result.ok

    result = await sqs.delete_message_batch(
        queue_url, {"good": y.receipt_handle, "bad": "bogus-receipt-handle"}
    )
    assert result.successful == ("good",)
    assert [(f.entry_id, f.code, f.sender_fault) for f in result.failed] == [
        ("bad", "ReceiptHandleIsInvalid", True)
    ]
    assert "bogus-receipt-handle" in result.failed[0].message
    assert await _counts(sqs, queue_url) == (0, 1)  # y deleted, x still in flight


async def test_fifo_queue_keeps_order_within_a_group(sqs: SQSClient, queue_name: str) -> None:
    url = await sqs.create_queue(queue_name + ".fifo", attributes={"FifoQueue": "true"})
    order = [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]
    sent_sequence: dict[str, str] = {}
    for group, n in order[:4]:
        result = await sqs.send_message(
            url, f"{group}{n}", message_group_id=group, message_deduplication_id=f"{group}-{n}"
        )
        assert result.sequence_number is not None and result.sequence_number.isdigit()
        sent_sequence[f"{group}{n}"] = result.sequence_number
    sent, outcome = await sqs.send_message_batch(
        url,
        [
            SendEntry(
                body=f"{group}{n}", message_group_id=group, message_deduplication_id=f"{group}-{n}"
            )
            for group, n in order[4:]
        ],
    )
    assert outcome.ok
    for entry, (group, n) in zip(sent, order[4:], strict=True):
        assert entry.sequence_number is not None
        sent_sequence[f"{group}{n}"] = entry.sequence_number

    received = await _receive_all(sqs, url, len(order))
    for group in ("a", "b"):
        bodies = [m.body for m in received if m.message_group_id == group]
        assert bodies == [f"{group}{n}" for g, n in order if g == group]
    for message in received:
        assert message.sequence_number == sent_sequence[message.body]
        assert message.message_deduplication_id == f"{message.body[0]}-{message.body[1:]}"


async def test_missing_queue_raises_queue_does_not_exist(sqs: SQSClient, queue_name: str) -> None:
    with pytest.raises(QueueDoesNotExist) as info:
        await sqs.get_queue_url(queue_name + "-never-created")
    error = info.value
    assert error.code == "AWS.SimpleQueueService.NonExistentQueue"
    assert error.status_code == 400
    assert error.request_id
    missing_url = f"{sqs.endpoint}/123456789012/{queue_name}-never-created"
    with pytest.raises(QueueDoesNotExist):
        await sqs.send_message(missing_url, "lost")
    with pytest.raises(QueueDoesNotExist):
        await sqs.receive_messages(missing_url, wait_time=0)


async def test_cancelled_long_poll_returns_at_once(
    sqs: SQSClient, queue_url: str, queue_name: str
) -> None:
    # A second queue for the follow-up: moto keeps the abandoned poll running on the first one
    # and would swallow a message sent there (DESIGN 2.2).
    other_url = await sqs.create_queue(queue_name + "-after")
    with trio.move_on_after(0.2) as scope:
        await sqs.receive_messages(queue_url, wait_time=20)
    returned = trio.current_time()
    assert scope.cancelled_caught
    assert returned - scope.deadline < 0.05

    with trio.fail_after(5):
        sent = await sqs.send_message(other_url, "after the cancel")
        [message] = await _receive_all(sqs, other_url, 1)
    assert message.message_id == sent.message_id


async def test_use_after_close(moto_endpoint: str, queue_name: str) -> None:
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=moto_endpoint) as client:
        url = await client.create_queue(queue_name)
        assert not client.closed
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.get_queue_url(queue_name)
    with pytest.raises(ClientClosedError):
        await client.send_message(url, "x")
    with pytest.raises(ClientClosedError):
        await client.receive_messages(url, wait_time=0)


async def test_errors_leave_the_client_block_unwrapped(moto_endpoint: str, queue_name: str) -> None:
    """The client's nursery does not wrap the caller's exception in an ExceptionGroup."""
    with pytest.raises(QueueDoesNotExist):
        async with trio_sqs.open_client(region="us-east-1", endpoint_url=moto_endpoint) as client:
            await client.get_queue_url(queue_name + "-missing")
    with pytest.raises(KeyError, match="mine") as info:
        async with trio_sqs.open_client(region="us-east-1", endpoint_url=moto_endpoint):
            raise KeyError("mine")
    assert info.value.__context__ is None


async def test_transport_error_keeps_its_cause_outside_the_block() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(TransportError) as info:
            async with trio_sqs.open_client(
                region="us-east-1", endpoint_url=endpoint, retry=RetryPolicy(max_attempts=2)
            ) as client:
                await client.get_queue_url("q")
    assert info.value.code == "TransportError"
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.status_code is None and info.value.request_id is None


# -- responses moto would never send ----------------------------------------------------------------


def _wire(message_id: str, body: str, md5: str, **extra: object) -> dict[str, object]:
    return {
        "MessageId": message_id,
        "ReceiptHandle": f"handle-{message_id}",
        "Body": body,
        "MD5OfBody": md5,
        **extra,
    }


async def test_receive_result_reports_corrupt_messages() -> None:
    good_attrs = {"k": {"DataType": "String", "StringValue": "v"}}
    # The digest of {"k": String "v"}, spelled out independently of the package.
    attrs_md5 = hashlib.md5(
        b"\x00\x00\x00\x01k\x00\x00\x00\x06String\x01\x00\x00\x00\x01v"
    ).hexdigest()
    messages = [
        _wire("good", "fine", _md5("fine"), MessageAttributes=good_attrs,
              MD5OfMessageAttributes=attrs_md5),
        _wire("bad-body", "tampered", _md5("original")),
        _wire("bad-attrs", "fine", _md5("fine"),
              MessageAttributes={"k": {"DataType": "String", "StringValue": "w"}},
              MD5OfMessageAttributes=attrs_md5),
    ]  # fmt: skip

    async def handler(request: Request) -> Response:
        if request.operation == "ReceiveMessage":
            return Response(body={"Messages": messages})
        return Response(body=default_result(request))

    async with (
        serve_fake_sqs(handler) as server,
        trio_sqs.open_client(region="us-east-1", endpoint_url=server.endpoint) as client,
    ):
        result = await client.receive_messages(f"{server.endpoint}/1/q", wait_time=0)
    assert [m.message_id for m in result] == ["good"]
    assert len(result) == 1
    assert result.messages[0].message_attributes["k"] == MessageAttributeValue.string("v")
    assert [(c.message_id, c.receipt_handle) for c in result.corrupt] == [
        ("bad-body", "handle-bad-body"),
        ("bad-attrs", "handle-bad-attrs"),
    ]
    for corrupt in result.corrupt:
        assert isinstance(corrupt.error, MessageCorruptError)
        assert corrupt.error.message_id == corrupt.message_id
    assert "body" in str(result.corrupt[0].error)
    assert "attributes" in str(result.corrupt[1].error)


async def test_list_queues_follows_pagination() -> None:
    pages: dict[str | None, dict[str, Any]] = {
        None: {"QueueUrls": ["u1", "u2"], "NextToken": "t1"},
        "t1": {"QueueUrls": ["u3"], "NextToken": "t2"},
        "t2": {"QueueUrls": []},
    }

    async def handler(request: Request) -> Response:
        return Response(body=pages[request.params.get("NextToken")])

    async with (
        serve_fake_sqs(handler) as server,
        trio_sqs.open_client(region="us-east-1", endpoint_url=server.endpoint) as client,
    ):
        assert await client.list_queues(prefix="u") == ["u1", "u2", "u3"]
    assert [r.params.get("NextToken") for r in server.requests] == [None, "t1", "t2"]
    assert all(r.params["QueueNamePrefix"] == "u" for r in server.requests)
    assert all(json.loads(r.body)["MaxResults"] == 1000 for r in server.requests)
