"""SQSClient on trio_sqs.testing's in-memory SQS (and, for one round trip, on a real moto server
over real sockets: its digests and encodings are a third party's, independent of ours)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

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
from trio_sqs.testing import FakeSQS, QueueCounts, open_fake_client


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


@pytest.fixture
def sqs(fake_sqs_client: SQSClient) -> SQSClient:
    """The client of these tests: on the in-memory SQS (this module's, not conftest's moto)."""
    return fake_sqs_client


@pytest.fixture
def queue_url(fake_queue_url: str) -> str:
    return fake_queue_url


async def test_queue_lifecycle(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_name: str
) -> None:
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


@pytest.fixture(params=["fake", "moto"])
async def any_server(
    request: pytest.FixtureRequest, fake_sqs: FakeSQS, moto_endpoint: str, queue_name: str
) -> AsyncIterator[tuple[SQSClient, str]]:
    """A client and a fresh queue on the in-memory SQS, or on moto over real sockets."""
    if request.param == "fake":
        async with open_fake_client(fake_sqs) as client:
            yield client, await client.create_queue(queue_name)
    else:
        async with trio_sqs.open_client(region="us-east-1", endpoint_url=moto_endpoint) as client:
            yield client, await client.create_queue(queue_name)


async def test_send_receive_delete_with_attributes(any_server: tuple[SQSClient, str]) -> None:
    sqs, queue_url = any_server
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
    # The server computed the attribute digest on its side; our independent check accepted it.
    assert dict(message.message_attributes) == attributes
    assert message.md5_of_message_attributes is not None
    assert message.receive_count == 1
    assert message.sent_at is not None
    assert message.first_received_at is not None
    assert await _counts(sqs, queue_url) == (0, 1)

    await sqs.delete_message(queue_url, message.receipt_handle)
    assert await _counts(sqs, queue_url) == (0, 0)


async def test_send_batch_receive_delete_batch(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_url: str
) -> None:
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


async def test_change_visibility(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_url: str
) -> None:
    await sqs.send_message(queue_url, "again")
    [first] = await _receive_all(sqs, queue_url, 1, visibility_timeout=300)
    # Invisible for 300 s: a 20 s poll finds nothing.
    assert len(await sqs.receive_messages(queue_url, wait_time=20)) == 0
    await sqs.change_message_visibility(queue_url, first.receipt_handle, 0)
    [second] = await _receive_all(sqs, queue_url, 1, visibility_timeout=300)
    assert second.message_id == first.message_id
    assert second.receive_count == 2


async def test_change_visibility_batch(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_url: str
) -> None:
    await sqs.send_message_batch(queue_url, [SendEntry(body="a"), SendEntry(body="b")])
    received = await _receive_all(sqs, queue_url, 2, visibility_timeout=300)
    handles = {m.body: m.receipt_handle for m in received}
    # Release "a" at once; keep "b" hidden for a long time (per-entry timeouts).
    result = await sqs.change_message_visibility_batch(queue_url, handles, {"a": 0, "b": 600})
    assert result.ok and sorted(result.successful) == ["a", "b"]
    released_at = trio.current_time()
    [again] = await _receive_all(sqs, queue_url, 1, visibility_timeout=3600)
    assert again.body == "a" and again.receive_count == 2
    assert await _counts(sqs, queue_url) == (0, 2)
    # "b" comes back exactly 600 s after the change, not after its original 300 s.
    await trio.sleep(590)
    [late] = await sqs.receive_messages(queue_url, wait_time=20)
    assert late.body == "b" and late.receive_count == 2
    assert trio.current_time() == released_at + 600


async def test_batch_with_one_bad_receipt_handle(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_url: str
) -> None:
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


async def test_fifo_queue_keeps_order_within_a_group(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_name: str
) -> None:
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


async def test_missing_queue_raises_queue_does_not_exist(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_name: str
) -> None:
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


async def test_use_after_close(fake_sqs: FakeSQS) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("closed")
        assert not client.closed
    assert client.closed
    arrived = len(fake_sqs.calls)
    with pytest.raises(ClientClosedError):
        await client.get_queue_url("closed")
    with pytest.raises(ClientClosedError):
        await client.send_message(url, "x")
    with pytest.raises(ClientClosedError):
        await client.receive_messages(url, wait_time=0)
    assert len(fake_sqs.calls) == arrived


async def test_errors_leave_the_client_block_unwrapped(fake_sqs: FakeSQS) -> None:
    """The client's nursery does not wrap the caller's exception in an ExceptionGroup."""
    with pytest.raises(QueueDoesNotExist):
        async with open_fake_client(fake_sqs) as client:
            await client.get_queue_url("missing")
    with pytest.raises(KeyError, match="mine") as info:
        async with open_fake_client(fake_sqs):
            raise KeyError("mine")
    assert info.value.__context__ is None


async def test_transport_error_keeps_its_cause_outside_the_block(fake_sqs: FakeSQS) -> None:
    fake_sqs.faults.drop("GetQueueUrl", times=2)  # the connection closes without an answer
    with pytest.raises(TransportError) as info:
        async with open_fake_client(fake_sqs, retry=RetryPolicy(max_attempts=2)) as client:
            await client.get_queue_url("q")
    assert info.value.code == "TransportError"
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert info.value.status_code is None and info.value.request_id is None
    assert fake_sqs.call_counts["GetQueueUrl"] == 2


# -- answers no SQS would give: a transport that alters them on their way -----------------------


class Tamper(httpx.AsyncBaseTransport):
    """Passes requests to the fake and lets ``edit`` change each ReceiveMessage answer (as JSON)
    on its way back, as a corrupting network or proxy would."""

    def __init__(self, fake: FakeSQS, edit: Any) -> None:
        self.inner = fake.transport()
        self.edit = edit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.headers.get("x-amz-target") != "AmazonSQS.ReceiveMessage":
            return response
        answer = json.loads(await response.aread())
        self.edit(answer)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(
            response.status_code, headers=headers, content=json.dumps(answer).encode()
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_receive_result_reports_corrupt_messages(fake_sqs: FakeSQS) -> None:
    def edit(answer: dict[str, Any]) -> None:
        for message in answer.get("Messages", ()):
            if message["Body"] == "original":
                message["Body"] = "tampered"
            if message["Body"] == "bad-attrs":
                message["MessageAttributes"]["k"]["StringValue"] = "w"

    attrs = {"k": MessageAttributeValue.string("v")}
    # The digest of {"k": String "v"}, spelled out independently of the package and the fake.
    attrs_md5 = hashlib.md5(
        b"\x00\x00\x00\x01k\x00\x00\x00\x06String\x01\x00\x00\x00\x01v"
    ).hexdigest()
    async with trio_sqs.open_client(
        region=fake_sqs.region,
        endpoint_url=fake_sqs.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        transport=Tamper(fake_sqs, edit),
    ) as client:
        url = await client.create_queue("corrupt")
        good = await client.send_message(url, "fine", message_attributes=attrs)
        bad_body = await client.send_message(url, "original")
        bad_attrs = await client.send_message(url, "bad-attrs", message_attributes=attrs)
        result = await client.receive_messages(url, wait_time=0)
    assert [m.message_id for m in result] == [good.message_id]
    assert len(result) == 1
    [message] = result.messages
    assert message.message_attributes["k"] == MessageAttributeValue.string("v")
    assert message.md5_of_message_attributes == attrs_md5
    assert [c.message_id for c in result.corrupt] == [bad_body.message_id, bad_attrs.message_id]
    for corrupt in result.corrupt:
        assert isinstance(corrupt.error, MessageCorruptError)
        assert corrupt.error.message_id == corrupt.message_id
        assert corrupt.receipt_handle  # so that it could still be settled
    assert "body" in str(result.corrupt[0].error)
    assert "attributes" in str(result.corrupt[1].error)
    # Left alone by the client: in flight on the server like the good one.
    assert fake_sqs.queue(url).counts() == QueueCounts(0, 3, 0)


async def test_corrupt_body_digest_from_the_server(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, queue_url: str, fake_sqs: FakeSQS
) -> None:
    first = await sqs.send_message(queue_url, "first")
    second = await sqs.send_message(queue_url, "second")
    fake_sqs.faults.corrupt_md5()
    result = await sqs.receive_messages(queue_url, wait_time=0)
    assert [m.message_id for m in result] == [second.message_id]
    assert [c.message_id for c in result.corrupt] == [first.message_id]
    assert isinstance(result.corrupt[0].error, MessageCorruptError)


async def test_list_queues_follows_pagination(
    autojump_clock: trio.testing.MockClock, sqs: SQSClient, fake_sqs: FakeSQS
) -> None:
    names = [f"page-{i:04d}" for i in range(2100)]
    for name in names:  # straight into the fake: 2,100 queues, three pages of at most 1,000
        await fake_sqs.call("CreateQueue", {"QueueName": name})
    await fake_sqs.call("CreateQueue", {"QueueName": "other"})
    mark = len(fake_sqs.calls)
    urls = await sqs.list_queues(prefix="page-")
    assert urls == [fake_sqs.queue(name).url for name in names]
    calls = fake_sqs.calls[mark:]
    assert [c.operation for c in calls] == ["ListQueues"] * 3
    tokens = [c.params.get("NextToken") for c in calls]
    assert tokens[0] is None and tokens[1] and tokens[2] and tokens[1] != tokens[2]
    assert all(c.params["QueueNamePrefix"] == "page-" for c in calls)
    assert all(c.params["MaxResults"] == 1000 for c in calls)
