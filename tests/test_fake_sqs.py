"""trio_sqs.testing.FakeSQS, one semantic per test, through the real client on Trio's MockClock.

Times are exact virtual times (``trio.current_time()`` deltas): a long poll answers at the very
moment a message is sent or becomes visible, and not a tick later. MD5 digests are checked
against an oracle written here from SQS's documentation, not against the fake's own function.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio.testing
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_sqs
from trio_sqs import MessageAttributeValue, RetryPolicy, SendEntry
from trio_sqs._protocol import SQSProtocol
from trio_sqs.testing import FakeError, FakeSQS, open_fake_client
from trio_sqs.testing._sigv4 import verify_signature

JSON = "application/x-amz-json-1.0"
NO_RETRY = RetryPolicy(max_attempts=1)


# -- oracles and helpers ---------------------------------------------------------------------


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def attributes_md5(attributes: Mapping[str, tuple[str, str | bytes]]) -> str:
    """SQS's MD5 of message attributes, from the SQS developer guide: for each attribute in
    name order, the 4-byte big-endian length and UTF-8 bytes of the name, the same for the data
    type, one transport byte (1 for String/Number, 2 for Binary), then the length and bytes of
    the value."""
    out = b""
    for name in sorted(attributes):
        data_type, value = attributes[name]
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        for text in (name.encode("utf-8"), data_type.encode("utf-8")):
            out += len(text).to_bytes(4, "big") + text
        out += (b"\x02" if isinstance(value, bytes) else b"\x01") + len(raw).to_bytes(4, "big")
        out += raw
    return md5_hex(out)


def typed(attributes: Mapping[str, tuple[str, str | bytes]]) -> dict[str, MessageAttributeValue]:
    return {
        name: MessageAttributeValue(data_type, binary_value=value)
        if isinstance(value, bytes)
        else MessageAttributeValue(data_type, string_value=value)
        for name, (data_type, value) in attributes.items()
    }


def unique(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now() -> float:
    return trio.current_time()


@asynccontextmanager
async def client_on(
    clock: trio.testing.MockClock, fake: FakeSQS, **kwargs: Any
) -> AsyncIterator[trio_sqs.SQSClient]:
    """``open_fake_client`` inside a test on the autojump clock (it opens without a thread)."""
    async with open_fake_client(fake, **kwargs) as client:
        yield client


@asynccontextmanager
async def signing_client_on(
    clock: trio.testing.MockClock, fake: FakeSQS, access_key: str, secret: str, region: str
) -> AsyncIterator[trio_sqs.SQSClient]:
    async with trio_sqs.open_client(
        region=region,
        endpoint_url=fake.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        use_fips=False,
        use_dualstack=False,
        transport=fake.transport(),
    ) as client:
        yield client


async def test_open_fake_client_inside_a_test_on_the_autojump_clock(
    autojump_clock: Any, fake_sqs: FakeSQS
):
    start = trio.current_time()
    async with open_fake_client(fake_sqs) as client:
        assert await client.list_queues() == []
    # No worker thread: autojump had no reason to move the clock.
    assert trio.current_time() == start


@pytest.fixture
async def client(fake_sqs: FakeSQS) -> AsyncIterator[trio_sqs.SQSClient]:
    async with open_fake_client(fake_sqs) as sqs:
        yield sqs


async def raw(client: trio_sqs.SQSClient, operation: str, **params: Any) -> dict[str, Any]:
    """One call with raw parameters, unvalidated by botocore, never retried."""
    return await client.call(operation, params, retry=False, _validate=False)


async def error_of(client: trio_sqs.SQSClient, operation: str, **params: Any) -> str:
    """The error code (query-compatible, as the client reports it) of a call that must fail."""
    with pytest.raises(trio_sqs.ServiceError) as info:
        await raw(client, operation, **params)
    return info.value.code


async def wire(
    fake: FakeSQS,
    body: bytes,
    *,
    target: str | None = "AmazonSQS.ListQueues",
    content_type: str = JSON,
    method: str = "POST",
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if target is not None:
        headers["X-Amz-Target"] = target
    async with httpx.AsyncClient(transport=fake.transport(), base_url=fake.endpoint) as http:
        return await http.request(method, "/", content=body, headers=headers)


async def receive_one(
    client: trio_sqs.SQSClient, url: str, *, wait: int = 0, **kwargs: Any
) -> trio_sqs.Message:
    result = await client.receive_messages(url, max_messages=1, wait_time=wait, **kwargs)
    assert len(result) == 1, result
    return result.messages[0]


async def nothing(client: trio_sqs.SQSClient, url: str) -> None:
    result = await client.receive_messages(url, wait_time=0)
    assert not result.messages and not result.corrupt


# -- queues ----------------------------------------------------------------------------------


async def test_create_queue_defaults_and_arn(autojump_clock: Any, fake_sqs: FakeSQS, client):
    name = unique()
    url = await client.create_queue(name)
    assert url == f"{fake_sqs.endpoint}/{fake_sqs.account_id}/{name}"
    attributes = await client.get_queue_attributes(url)
    assert attributes["VisibilityTimeout"] == "30"
    assert attributes["DelaySeconds"] == "0"
    assert attributes["ReceiveMessageWaitTimeSeconds"] == "0"
    assert attributes["MaximumMessageSize"] == "1048576"
    assert attributes["MessageRetentionPeriod"] == "345600"
    assert attributes["QueueArn"] == f"arn:aws:sqs:us-east-1:123456789012:{name}"
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert "FifoQueue" not in attributes and "RedrivePolicy" not in attributes
    assert abs(int(attributes["CreatedTimestamp"]) - time.time()) < 60


async def test_create_again_identical_or_different(autojump_clock: Any, fake_sqs: FakeSQS, client):
    name = unique()
    url = await client.create_queue(name, attributes={"VisibilityTimeout": "40"})
    assert await client.create_queue(name, attributes={"VisibilityTimeout": "40"}) == url
    assert await client.create_queue(name) == url  # no attributes named: nothing differs
    code = await error_of(
        client, "CreateQueue", QueueName=name, Attributes={"VisibilityTimeout": "41"}
    )
    assert code == "QueueAlreadyExists"
    # On the wire: the JSON shape name, and the query-compatible code in its header.
    body = json.dumps({"QueueName": name, "Attributes": {"VisibilityTimeout": "41"}}).encode()
    response = await wire(fake_sqs, body, target="AmazonSQS.CreateQueue")
    assert response.status_code == 400
    assert response.json()["__type"] == "com.amazonaws.sqs#QueueNameExists"
    assert response.headers["x-amzn-query-error"] == "QueueAlreadyExists;Sender"
    assert fake_sqs.queue(name).attributes["VisibilityTimeout"] == "40"


async def test_get_queue_url_and_missing_queue(autojump_clock: Any, fake_sqs: FakeSQS, client):
    name = unique()
    url = await client.create_queue(name)
    assert await client.get_queue_url(name) == url
    with pytest.raises(trio_sqs.QueueDoesNotExist) as info:
        await client.get_queue_url(name + "-nope")
    assert info.value.code == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(trio_sqs.QueueDoesNotExist):
        await client.send_message(url + "-nope", "x")


async def test_list_queues_prefix_and_pagination(autojump_clock: Any, fake_sqs: FakeSQS, client):
    a = sorted([await client.create_queue(f"alpha-{i}") for i in range(5)])
    b = [await client.create_queue(f"beta-{i}") for i in range(2)]
    assert sorted(await client.list_queues("alpha-")) == a
    assert sorted(await client.list_queues()) == sorted(a + b)
    # Without MaxResults: everything, no NextToken.
    assert "NextToken" not in await raw(client, "ListQueues", QueueNamePrefix="alpha-")
    pages: list[list[str]] = []
    params: dict[str, Any] = {"QueueNamePrefix": "alpha-", "MaxResults": 2}
    while True:
        page = await raw(client, "ListQueues", **params)
        pages.append(page["QueueUrls"])
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(u for p in pages for u in p) == a
    assert await raw(client, "ListQueues", QueueNamePrefix="gamma") == {}


async def test_delete_queue_and_deleted_recently(autojump_clock: Any, fake_sqs: FakeSQS, client):
    name = unique()
    url = await client.create_queue(name)
    await client.send_message(url, "x")
    await client.delete_queue(url)
    deleted = now()
    with pytest.raises(trio_sqs.QueueDoesNotExist):
        await client.get_queue_url(name)
    with pytest.raises(trio_sqs.QueueDoesNotExist):
        await client.receive_messages(url, wait_time=0)
    with pytest.raises(trio_sqs.QueueDoesNotExist):
        await client.delete_queue(url)
    await trio.sleep(59.5)
    assert await error_of(client, "CreateQueue", QueueName=name) == (
        "AWS.SimpleQueueService.QueueDeletedRecently"
    )
    await trio.sleep_until(deleted + 60)
    assert await client.create_queue(name) == url
    assert fake_sqs.queue(name).counts().total == 0


async def test_delete_queue_ends_waiting_polls_empty(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    start = now()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.delete_queue, url)  # runs once the poll waits
        result = await client.receive_messages(url, wait_time=20)
    assert not result.messages and now() == start


async def test_set_and_get_queue_attributes(autojump_clock: Any, fake_sqs: FakeSQS, client):
    url = await client.create_queue(unique())
    await raw(client, "SetQueueAttributes", QueueUrl=url, Attributes={"VisibilityTimeout": "7"})
    assert await client.get_queue_attributes(url, ["VisibilityTimeout"]) == {
        "VisibilityTimeout": "7"
    }
    await client.send_message(url, "visible")
    await client.send_message(url, "delayed", delay_seconds=60)
    await client.send_message(url, "taken")
    await receive_one(client, url)
    counts = await client.get_queue_attributes(
        url,
        [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )
    assert counts == {
        "ApproximateNumberOfMessages": "1",
        "ApproximateNumberOfMessagesNotVisible": "1",
        "ApproximateNumberOfMessagesDelayed": "1",
    }
    # The receive used the new default visibility: back at exactly +7.
    start = now()
    await receive_one(client, url, wait=20)  # the visible one, at once
    assert now() == start
    assert await raw(client, "GetQueueAttributes", QueueUrl=url) == {}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"QueueName": "x" * 81}, "InvalidParameterValue"),
        ({"QueueName": "bad name"}, "InvalidParameterValue"),
        ({"QueueName": ""}, "InvalidParameterValue"),
        ({"QueueName": "no-flag.fifo"}, "InvalidParameterValue"),
        ({"QueueName": "no-suffix", "Attributes": {"FifoQueue": "true"}}, "InvalidParameterValue"),
        ({"QueueName": "q", "Attributes": {"VisibilityTimeout": "43201"}}, "InvalidAttributeValue"),
        ({"QueueName": "q", "Attributes": {"DelaySeconds": "abc"}}, "InvalidAttributeValue"),
        # int() takes these; SQS wants digits
        ({"QueueName": "q", "Attributes": {"DelaySeconds": "1_0"}}, "InvalidAttributeValue"),
        ({"QueueName": "q", "Attributes": {"DelaySeconds": " 5 "}}, "InvalidAttributeValue"),
        ({"QueueName": "q", "Attributes": {"DelaySeconds": "\u0665"}}, "InvalidAttributeValue"),
        ({"QueueName": "q", "Attributes": {"Policy": "not json"}}, "InvalidAttributeValue"),
        ({"QueueName": "q", "Attributes": {"RedriveAllowPolicy": "[]"}}, "InvalidAttributeValue"),
        (
            {"QueueName": "q", "Attributes": {"RedrivePolicy": "[" * 100_000 + "]" * 100_000}},
            "InvalidAttributeValue",
        ),
        *[
            (
                {"QueueName": "q.fifo", "Attributes": {"FifoQueue": "true", **attributes}},
                "InvalidAttributeValue",
            )
            for attributes in (
                {"DeduplicationScope": "banana"},
                {"FifoThroughputLimit": "kiwi"},
                # a limit per message group needs deduplication per message group
                {"FifoThroughputLimit": "perMessageGroupId"},
                {"DeduplicationScope": "queue", "FifoThroughputLimit": "perMessageGroupId"},
            )
        ],
        ({"QueueName": "q", "Attributes": {"Colour": "blue"}}, "InvalidAttributeName"),
        (
            {"QueueName": "q", "Attributes": {"ContentBasedDeduplication": "true"}},
            "InvalidAttributeName",
        ),
        (
            {
                "QueueName": "q",
                "Attributes": {
                    "RedrivePolicy": json.dumps(
                        {
                            "deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:none",
                            "maxReceiveCount": 3,
                        }
                    )
                },
            },
            "InvalidAttributeValue",
        ),
    ],
)
async def test_invalid_queue_names_and_attributes(
    autojump_clock: Any, fake_sqs: FakeSQS, client, params: dict[str, Any], code: str
):
    assert await error_of(client, "CreateQueue", **params) == code
    assert fake_sqs.queues == {}


@pytest.mark.parametrize("count", [True, 5.9, "5.9", "five", None, 0, 1001])
async def test_redrive_policy_max_receive_count_is_an_integer(
    autojump_clock: Any, fake_sqs: FakeSQS, client, count: Any
):
    """maxReceiveCount: an integer from 1 to 1000, or its digits in a string (as AWS's examples
    write it); a boolean or a fraction was taken (as 1 and 5)."""
    dlq = await client.create_queue(unique("dlq"))
    policy = {"deadLetterTargetArn": fake_sqs.queue(dlq).arn, "maxReceiveCount": count}
    attributes = {"RedrivePolicy": json.dumps(policy)}
    assert await error_of(client, "CreateQueue", QueueName=unique(), Attributes=attributes) == (
        "InvalidAttributeValue"
    )
    policy["maxReceiveCount"] = "7"
    url = await client.create_queue(unique(), attributes={"RedrivePolicy": json.dumps(policy)})
    assert fake_sqs.redrive_policy(fake_sqs.queue(url)) == (policy["deadLetterTargetArn"], 7)


async def test_deduplication_per_message_group(autojump_clock: Any, fake_sqs: FakeSQS, client):
    """High-throughput FIFO (DeduplicationScope messageGroup): one deduplication id in two
    groups is two messages; in one group, one. The fake deduplicated across groups."""
    url = await fifo_queue(
        client, DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId"
    )
    sent = [
        await client.send_message(url, body, message_group_id=group, message_deduplication_id="d")
        for body, group in (("a", "g1"), ("b", "g2"), ("c", "g1"))
    ]
    assert sent[0].message_id != sent[1].message_id
    assert sent[2].message_id == sent[0].message_id
    assert sorted(m.body for m in fake_sqs.queue(url).messages()) == ["a", "b"]
    # Switching the queue back to per-queue deduplication needs the per-queue limit too.
    assert (
        await error_of(
            client, "SetQueueAttributes", QueueUrl=url, Attributes={"DeduplicationScope": "queue"}
        )
        == "InvalidAttributeValue"
    )
    await raw(
        client,
        "SetQueueAttributes",
        QueueUrl=url,
        Attributes={"DeduplicationScope": "queue", "FifoThroughputLimit": "perQueue"},
    )
    again = await client.send_message(url, "x", message_group_id="g3", message_deduplication_id="n")
    other = await client.send_message(url, "y", message_group_id="g4", message_deduplication_id="n")
    assert again.message_id == other.message_id


async def test_queues_of_another_account_do_not_exist_here(autojump_clock: Any, fake_sqs, client):
    """Only the last segment of a QueueUrl was read: another account's URL, or a bare name,
    reached this account's queue, and GetQueueUrl ignored QueueOwnerAWSAccountId."""
    url = await client.create_queue(unique())
    name = url.rpartition("/")[2]
    for other in (url.replace("/123456789012/", "/999999999999/"), name, f"/{name}"):
        code = await error_of(client, "SendMessage", QueueUrl=other, MessageBody="x")
        assert code == "AWS.SimpleQueueService.NonExistentQueue", other
    assert await error_of(
        client, "GetQueueUrl", QueueName=name, QueueOwnerAWSAccountId="999999999999"
    ) == ("AWS.SimpleQueueService.NonExistentQueue")
    assert (
        await raw(client, "GetQueueUrl", QueueName=name, QueueOwnerAWSAccountId="123456789012")
    )["QueueUrl"] == url
    # Nor were those requests counted as naming this queue (the GetQueueUrl of this account was).
    assert fake_sqs.queue(url).call_counts == {"CreateQueue": 1, "GetQueueUrl": 1}
    # Any host: the queue is named by its account and name.
    await raw(
        client, "SendMessage", QueueUrl=f"https://elsewhere/123456789012/{name}", MessageBody="x"
    )
    assert fake_sqs.queue(url).counts().visible == 1
    assert fake_sqs.queue(url).call_counts == {"CreateQueue": 1, "GetQueueUrl": 1, "SendMessage": 1}


async def test_set_queue_attributes_needs_attributes(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    assert await error_of(client, "SetQueueAttributes", QueueUrl=url) == "MissingParameter"


def test_clock_skew_must_be_a_number_of_seconds() -> None:
    """FakeSQS(clock_skew=nan) was taken, then every request failed."""
    for skew in (math.nan, math.inf, 1e20, "5", True):
        with pytest.raises(ValueError, match="clock_skew"):
            FakeSQS(clock_skew=skew)  # type: ignore[arg-type]
    assert FakeSQS(clock_skew=-600).clock_skew == -600


@pytest.mark.parametrize(
    "value",
    ["1" * 39, "1e127", "-1e127", "1e-129", "9.99e126"],
)
async def test_number_attributes_sqs_cannot_hold_are_refused(
    autojump_clock: Any, client, value: str
):
    """SQS's Number: up to 38 significant digits, a magnitude from 1e-128 to 1e126."""
    url = await client.create_queue(unique())
    attributes = {"n": {"DataType": "Number", "StringValue": value}}
    assert (
        await error_of(
            client, "SendMessage", QueueUrl=url, MessageBody="x", MessageAttributes=attributes
        )
        == "InvalidParameterValue"
    )
    for fine in ("1" * 38, "1" + "0" * 100, "1e126", "-1e-128", "0.000", "12.3400000000"):
        attributes = {"n": {"DataType": "Number", "StringValue": fine}}
        await raw(
            client, "SendMessage", QueueUrl=url, MessageBody="x", MessageAttributes=attributes
        )


async def test_aws_trace_header_must_be_a_string(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    system = {"AWSTraceHeader": {"DataType": "Binary", "BinaryValue": b"Root=1"}}
    assert (
        await error_of(
            client, "SendMessage", QueueUrl=url, MessageBody="x", MessageSystemAttributes=system
        )
        == "InvalidParameterValue"
    )


async def test_invalid_queue_attribute_names_on_get_and_set(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    assert await error_of(
        client, "GetQueueAttributes", QueueUrl=url, AttributeNames=["Colour"]
    ) == ("InvalidAttributeName")
    assert await error_of(
        client, "SetQueueAttributes", QueueUrl=url, Attributes={"FifoQueue": "true"}
    ) == ("InvalidAttributeName")
    assert await error_of(
        client, "SetQueueAttributes", QueueUrl=url, Attributes={"MaximumMessageSize": "1023"}
    ) == ("InvalidAttributeValue")


# -- sending with delays ---------------------------------------------------------------------


async def test_delay_seconds_hides_message_until_exactly_then(
    autojump_clock: Any, fake_sqs: FakeSQS, client
):
    url = await client.create_queue(unique())
    start = now()
    sent = await client.send_message(url, "later", delay_seconds=5)
    assert fake_sqs.queue(url).counts().delayed == 1
    assert fake_sqs.queue(url).message(sent.message_id).visible_at == start + 5  # type: ignore[union-attr]
    await trio.sleep(4.999)
    await nothing(client, url)
    message = await receive_one(client, url, wait=20)
    assert now() == start + 5
    assert message.message_id == sent.message_id


async def test_queue_delay_seconds_and_per_message_override(autojump_clock: Any, client):
    url = await client.create_queue(unique(), attributes={"DelaySeconds": "3"})
    start = now()
    await client.send_message(url, "queue delay")
    await client.send_message(url, "no delay", delay_seconds=0)
    assert (await receive_one(client, url)).body == "no delay"
    assert now() == start
    assert (await receive_one(client, url, wait=20)).body == "queue delay"
    assert now() == start + 3


# -- long polls ------------------------------------------------------------------------------


async def test_long_poll_answers_when_a_message_is_sent(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    start = now()

    async def send_later() -> None:
        await trio.sleep(7)
        await client.send_message(url, "now")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        message = await receive_one(client, url, wait=20)
    assert message.body == "now"
    assert now() == start + 7


async def test_long_poll_is_empty_at_exactly_wait_time(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique(), attributes={"ReceiveMessageWaitTimeSeconds": "4"})
    start = now()
    result = await client.receive_messages(url, wait_time=13)
    assert not result.messages and now() == start + 13
    # Without WaitTimeSeconds the queue's ReceiveMessageWaitTimeSeconds applies.
    assert await raw(client, "ReceiveMessage", QueueUrl=url) == {}
    assert now() == start + 17
    assert fake_sqs.queue(url).waiting_polls == 0


async def test_long_poll_answers_when_visibility_ends(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    start = now()
    first = await receive_one(client, url, visibility_timeout=10)
    again = await receive_one(client, url, wait=20)
    assert now() == start + 10
    assert again.message_id == first.message_id
    assert again.receive_count == 2


async def test_long_poll_answers_for_a_delayed_send_made_while_it_waits(
    autojump_clock: Any, client
):
    """A timer scheduled after the poll began (a delayed send) still wakes it on time."""
    url = await client.create_queue(unique())
    start = now()

    async def send_later() -> None:
        await trio.sleep(1)
        await client.send_message(url, "delayed", delay_seconds=2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        message = await receive_one(client, url, wait=20)
    assert message.body == "delayed"
    assert now() == start + 3


async def test_long_poll_answers_when_a_visibility_is_shortened(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    first = await receive_one(client, url, visibility_timeout=100)
    start = now()

    async def shorten() -> None:
        await trio.sleep(1)
        await client.change_message_visibility(url, first.receipt_handle, 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shorten)
        again = await receive_one(client, url, wait=20)
    assert again.message_id == first.message_id
    assert now() == start + 3


# -- visibility ------------------------------------------------------------------------------


async def test_visibility_timeout_and_receive_count(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    sent = await client.send_message(url, "m")
    await trio.sleep(2)
    start = now()
    first = await receive_one(client, url)
    assert first.receive_count == 1
    assert first.sent_at is not None and first.first_received_at is not None
    assert int(first.attributes["ApproximateFirstReceiveTimestamp"]) - int(
        first.attributes["SentTimestamp"]
    ) == pytest.approx(2000, abs=1)
    assert fake_sqs.queue(url).message(sent.message_id).visible_at == start + 30  # type: ignore[union-attr]
    await trio.sleep(29.999)
    await nothing(client, url)
    second = await receive_one(client, url, wait=20)
    assert now() == start + 30
    assert second.receive_count == 2
    assert second.receipt_handle != first.receipt_handle
    assert second.attributes["SentTimestamp"] == first.attributes["SentTimestamp"]
    assert (
        second.attributes["ApproximateFirstReceiveTimestamp"]
        == first.attributes["ApproximateFirstReceiveTimestamp"]
    )
    assert fake_sqs.queue(url).deliveries == 2


# -- attributes and digests ------------------------------------------------------------------

ATTRIBUTES: dict[str, tuple[str, str | bytes]] = {
    "text": ("String", "héllo wörld"),
    "count": ("Number", "-12.5e3"),
    "blob": ("Binary", bytes(range(256))),
    "int": ("Number.int", "42"),
    "gif": ("Binary.gif", b"GIF89a\x00\x01"),
    "custom": ("String.custom-type", "x"),
}


async def test_message_attributes_round_trip_with_md5s(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    body = "body ✓ \U0001f600"
    result = await raw(
        client,
        "SendMessage",
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={k: v.to_wire() for k, v in typed(ATTRIBUTES).items()},
    )
    assert result["MD5OfMessageBody"] == md5_hex(body.encode())
    assert result["MD5OfMessageAttributes"] == attributes_md5(ATTRIBUTES)
    message = await receive_one(client, url)
    assert message.body == body
    assert message.md5_of_body == md5_hex(body.encode())
    assert dict(message.message_attributes) == typed(ATTRIBUTES)
    assert message.md5_of_message_attributes == attributes_md5(ATTRIBUTES)


async def test_message_without_attributes_has_no_attribute_digest(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    result = await raw(client, "SendMessage", QueueUrl=url, MessageBody="plain")
    assert set(result) == {"MessageId", "MD5OfMessageBody"}
    wire_message = (
        await raw(client, "ReceiveMessage", QueueUrl=url, MessageAttributeNames=["All"])
    )["Messages"][0]
    assert "MessageAttributes" not in wire_message
    assert "MD5OfMessageAttributes" not in wire_message


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["All"], {"a.x", "a.y", "b", "c"}),
        ([".*"], {"a.x", "a.y", "b", "c"}),
        (["a.*"], {"a.x", "a.y"}),
        (["b"], {"b"}),
        (["a.*", "c"], {"a.x", "a.y", "c"}),
        (["nothing"], set()),
        ([], set()),
    ],
)
async def test_message_attribute_name_selection(
    autojump_clock: Any, client, names: list[str], expected: set[str]
):
    url = await client.create_queue(unique())
    attributes = {name: ("String", f"value of {name}") for name in ("a.x", "a.y", "b", "c")}
    await client.send_message(url, "m", message_attributes=typed(attributes))
    params: dict[str, Any] = {"QueueUrl": url}
    if names:
        params["MessageAttributeNames"] = names
    entry = (await raw(client, "ReceiveMessage", **params))["Messages"][0]
    assert set(entry.get("MessageAttributes", {})) == expected
    if expected:
        # The digest covers the attributes returned, not all of the message's.
        chosen = {name: attributes[name] for name in expected}
        assert entry["MD5OfMessageAttributes"] == attributes_md5(chosen)
    else:
        assert "MD5OfMessageAttributes" not in entry


@pytest.mark.parametrize(
    ("field", "names", "expected"),
    [
        ("MessageSystemAttributeNames", ["All"], None),
        ("MessageSystemAttributeNames", ["SenderId"], {"SenderId"}),
        (
            "MessageSystemAttributeNames",
            ["ApproximateReceiveCount", "SentTimestamp"],
            {"ApproximateReceiveCount", "SentTimestamp"},
        ),
        ("AttributeNames", ["AWSTraceHeader"], {"AWSTraceHeader"}),
        ("MessageSystemAttributeNames", [], set()),
    ],
)
async def test_system_attributes_selection_and_trace_header(
    autojump_clock: Any, client, field: str, names: list[str], expected: set[str] | None
):
    url = await client.create_queue(unique())
    trace = {"AWSTraceHeader": ("String", "Root=1-5759e988-bd862e3fe1be46a994272793")}
    result = await raw(
        client,
        "SendMessage",
        QueueUrl=url,
        MessageBody="m",
        MessageSystemAttributes={k: v.to_wire() for k, v in typed(trace).items()},
    )
    assert result["MD5OfMessageSystemAttributes"] == attributes_md5(trace)
    params: dict[str, Any] = {"QueueUrl": url}
    if names:
        params[field] = names
    entry = (await raw(client, "ReceiveMessage", **params))["Messages"][0]
    got = entry.get("Attributes", {})
    if expected is None:
        assert set(got) == {
            "SenderId",
            "SentTimestamp",
            "ApproximateReceiveCount",
            "ApproximateFirstReceiveTimestamp",
            "AWSTraceHeader",
        }
        assert got["AWSTraceHeader"] == trace["AWSTraceHeader"][1]
        assert got["ApproximateReceiveCount"] == "1"
    else:
        assert set(got) == expected


# -- delete and change visibility ------------------------------------------------------------


async def test_delete_message_and_delete_twice(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    message = await receive_one(client, url)
    await client.delete_message(url, message.receipt_handle)
    assert fake_sqs.queue(url).counts().total == 0
    await client.delete_message(url, message.receipt_handle)  # deleting twice succeeds
    result = await client.delete_message_batch(url, [message.receipt_handle])
    assert result.ok and result.successful == ("0",)


async def test_stale_receipt_handle(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    sent = await client.send_message(url, "m")
    first = await receive_one(client, url, visibility_timeout=5)
    second = await receive_one(client, url, wait=20, visibility_timeout=5)
    assert second.message_id == first.message_id
    assert await error_of(
        client,
        "ChangeMessageVisibility",
        QueueUrl=url,
        ReceiptHandle=first.receipt_handle,
        VisibilityTimeout=10,
    ) == ("InvalidParameterValue")
    # Deleting with the older handle succeeds but does not delete (only the latest receipt does).
    await client.delete_message(url, first.receipt_handle)
    assert fake_sqs.queue(url).message(sent.message_id).state == "in_flight"  # type: ignore[union-attr]
    await client.delete_message(url, second.receipt_handle)
    assert fake_sqs.queue(url).message(sent.message_id) is None


async def test_receipt_handle_not_ours(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    other = await client.create_queue(unique())
    await client.send_message(other, "m")
    foreign = (await receive_one(client, other)).receipt_handle
    for handle in ("junk", foreign, "AQEB" + base64.b64encode(b"no separators").decode()):
        with pytest.raises(trio_sqs.InvalidReceiptHandle) as info:
            await client.delete_message(url, handle)
        assert info.value.code == "ReceiptHandleIsInvalid"
        with pytest.raises(trio_sqs.InvalidReceiptHandle):
            await client.change_message_visibility(url, handle, 5)


async def test_change_visibility_of_an_expired_receipt_is_not_inflight(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    message = await receive_one(client, url, visibility_timeout=5)
    await trio.sleep(5)
    assert await error_of(
        client,
        "ChangeMessageVisibility",
        QueueUrl=url,
        ReceiptHandle=message.receipt_handle,
        VisibilityTimeout=10,
    ) == ("AWS.SimpleQueueService.MessageNotInflight")
    # A standard queue still deletes with the latest handle after its visibility ended.
    await client.delete_message(url, message.receipt_handle)
    await nothing(client, url)


async def test_change_visibility_extends_and_zero_releases(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    start = now()
    message = await receive_one(client, url, visibility_timeout=10)
    await trio.sleep(3)
    await client.change_message_visibility(url, message.receipt_handle, 15)  # from now
    again = await receive_one(client, url, wait=20, visibility_timeout=10)
    assert now() == start + 18
    released_at = now()
    await client.change_message_visibility(url, again.receipt_handle, 0)
    third = await receive_one(client, url)
    assert now() == released_at and third.receive_count == 3


async def test_total_visibility_is_capped_at_12_hours(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    message = await receive_one(client, url, visibility_timeout=43_200)
    await trio.sleep(100)
    assert await error_of(
        client,
        "ChangeMessageVisibility",
        QueueUrl=url,
        ReceiptHandle=message.receipt_handle,
        VisibilityTimeout=43_101,
    ) == ("InvalidParameterValue")
    await client.change_message_visibility(url, message.receipt_handle, 43_100)  # exactly 12 h


async def test_batch_delete_and_change_visibility_per_entry(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    other = await client.create_queue(unique())
    for i in range(3):
        await client.send_message(url, f"m{i}")
    await client.send_message(other, "o")
    m0, m1, m2 = (await client.receive_messages(url, visibility_timeout=5, wait_time=0)).messages
    stale = m2.receipt_handle
    await client.change_message_visibility(url, m2.receipt_handle, 0)
    m2 = await receive_one(client, url, visibility_timeout=5)
    foreign = (await receive_one(client, other)).receipt_handle

    changed = await client.change_message_visibility_batch(
        url, {"ok": m0.receipt_handle, "stale": stale, "foreign": foreign, "junk": "x"}, 60
    )
    assert changed.successful == ("ok",)
    assert {e.entry_id: e.code for e in changed.failed} == {
        "stale": "InvalidParameterValue",
        "foreign": "ReceiptHandleIsInvalid",
        "junk": "ReceiptHandleIsInvalid",
    }
    assert all(e.sender_fault for e in changed.failed)

    await trio.sleep(5)  # m1's and m2's visibility ended, m0's (extended) did not
    changed = await client.change_message_visibility_batch(
        url, {"expired": m1.receipt_handle, "ok": m0.receipt_handle}, 30
    )
    assert changed.successful == ("ok",)
    assert [(e.entry_id, e.code) for e in changed.failed] == [
        ("expired", "AWS.SimpleQueueService.MessageNotInflight")
    ]

    deleted = await client.delete_message_batch(
        url,
        {"a": m0.receipt_handle, "b": m2.receipt_handle, "again": m0.receipt_handle, "f": foreign},
    )
    assert set(deleted.successful) == {"a", "b", "again"}
    assert [(e.entry_id, e.code) for e in deleted.failed] == [("f", "ReceiptHandleIsInvalid")]
    assert (await receive_one(client, url)).message_id == m1.message_id


@pytest.mark.parametrize(
    "operation", ["SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"]
)
async def test_batch_limits(autojump_clock: Any, client, operation: str):
    url = await client.create_queue(unique())

    def entry(entry_id: str) -> dict[str, Any]:
        if operation == "SendMessageBatch":
            return {"Id": entry_id, "MessageBody": "x"}
        if operation == "DeleteMessageBatch":
            return {"Id": entry_id, "ReceiptHandle": "h"}
        return {"Id": entry_id, "ReceiptHandle": "h", "VisibilityTimeout": 1}

    async def code(entries: list[dict[str, Any]]) -> str:
        return await error_of(client, operation, QueueUrl=url, Entries=entries)

    assert await code([]) == "AWS.SimpleQueueService.EmptyBatchRequest"
    assert await code([entry(str(i)) for i in range(11)]) == (
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    )
    assert await code([entry("a"), entry("a")]) == (
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    )
    for bad in ("a b", "x" * 81, "é", ""):
        assert await code([entry(bad)]) == "AWS.SimpleQueueService.InvalidBatchEntryId"


async def test_batch_size_counts_attributes_against_the_service_limit(autojump_clock: Any, client):
    """SendMessageBatch's limit is the sum of its messages' sizes, each body plus its
    attributes' names, types and values (binary ones decoded), against SQS's 1 MiB: exactly
    the limit is taken, one byte more is BatchRequestTooLong. The fake counted bodies only."""
    url = await client.create_queue(unique())
    limit = 1_048_576
    attributes = {
        "n": {"DataType": "Number", "StringValue": "12"},  # 1 + 6 + 2
        "b": {"DataType": "Binary", "BinaryValue": b"abc"},  # 1 + 6 + 3 (base64 on the wire)
    }
    attributes_size = 9 + 10
    body = "x" * (limit // 4 - attributes_size)

    def entries(extra: int) -> list[dict[str, Any]]:
        sized = [
            {"Id": str(i), "MessageBody": body, "MessageAttributes": attributes} for i in range(4)
        ]
        sized[0]["MessageBody"] += "y" * extra
        return sized

    assert sum(len(e["MessageBody"]) for e in entries(0)) + 4 * attributes_size == limit
    answer = await raw(client, "SendMessageBatch", QueueUrl=url, Entries=entries(0))
    assert [e["Id"] for e in answer["Successful"]] == ["0", "1", "2", "3"]
    assert await error_of(client, "SendMessageBatch", QueueUrl=url, Entries=entries(1)) == (
        "AWS.SimpleQueueService.BatchRequestTooLong"
    )
    # The bodies alone are under the limit: only the attributes take the batch over it.
    assert sum(len(e["MessageBody"]) for e in entries(1)) < limit


async def test_batch_limit_is_the_service_s_not_the_queue_s(autojump_clock: Any, client):
    """A queue's MaximumMessageSize limits each message, not the batch: ten messages of 1,000
    bytes on a queue of 1,024 are taken, and one of 1,025 fails alone."""
    url = await client.create_queue(unique(), attributes={"MaximumMessageSize": "1024"})
    batch = [{"Id": str(i), "MessageBody": "x" * 1000} for i in range(9)]
    batch.append({"Id": "big", "MessageBody": "x" * 1025})
    answer = await raw(client, "SendMessageBatch", QueueUrl=url, Entries=batch)
    assert len(answer["Successful"]) == 9
    assert [(e["Id"], e["Code"]) for e in answer["Failed"]] == [("big", "InvalidParameterValue")]


async def test_send_batch_per_entry_failures(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    sent, outcome = await client.send_message_batch(
        url,
        [
            SendEntry(body="one", id="one"),
            SendEntry(body="bad \x00", id="bad"),
            SendEntry(body="two", id="two", delay_seconds=3),
        ],
    )
    assert [s.id for s in sent] == ["one", "two"]
    assert all(s.md5_of_body == md5_hex(s.id.encode()) for s in sent if s.id)
    assert [(e.entry_id, e.code, e.sender_fault) for e in outcome.failed] == [
        ("bad", "InvalidMessageContents", True)
    ]
    assert fake_sqs.queue(url).counts() == trio_sqs.testing.QueueCounts(1, 0, 1)
    too_long = [SendEntry(body="x" * 600_000, id=str(i)) for i in range(2)]
    with pytest.raises(trio_sqs.ServiceError) as info:
        await client.send_message_batch(url, too_long)
    assert info.value.code == "AWS.SimpleQueueService.BatchRequestTooLong"


# -- dead-letter queues ----------------------------------------------------------------------


async def test_redrive_to_dead_letter_queue(autojump_clock: Any, fake_sqs, client):
    dlq = await client.create_queue(unique("dlq"))
    dlq_arn = fake_sqs.queue(dlq).arn
    src_name = unique("src")
    src = await client.create_queue(
        src_name,
        attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}),
            "VisibilityTimeout": "5",
        },
    )
    policy = json.loads(
        (await client.get_queue_attributes(src, ["RedrivePolicy"]))["RedrivePolicy"]
    )
    assert policy == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}
    sent = await client.send_message(
        src, "poison", message_attributes=typed({"k": ("String", "v")})
    )
    first = await receive_one(client, src)
    second = await receive_one(client, src, wait=20)
    assert (first.receive_count, second.receive_count) == (1, 2)
    start = now()
    # The two receives are used up: at the third attempt the message moves to the DLQ.
    result = await client.receive_messages(src, wait_time=20)
    assert not result.messages and now() == start + 20
    assert fake_sqs.queue(src).counts().total == 0
    moved = await receive_one(client, dlq)
    assert moved.message_id == sent.message_id and moved.body == "poison"
    assert moved.attributes["DeadLetterQueueSourceArn"] == fake_sqs.queue(src).arn
    assert moved.attributes["SentTimestamp"] == first.attributes["SentTimestamp"]
    assert moved.receive_count == 3  # guessed: SQS keeps counting across the move
    assert dict(moved.message_attributes) == typed({"k": ("String", "v")})


# -- FIFO ------------------------------------------------------------------------------------


async def fifo_queue(client: trio_sqs.SQSClient, **attributes: str) -> str:
    return await client.create_queue(
        unique("fifo") + ".fifo", attributes={"FifoQueue": "true", **attributes}
    )


async def send_fifo(client: trio_sqs.SQSClient, url: str, body: str, group: str) -> str:
    sent = await client.send_message(
        url, body, message_group_id=group, message_deduplication_id=uuid.uuid4().hex
    )
    return sent.message_id


async def test_fifo_group_order_and_lock(autojump_clock: Any, client):
    url = await fifo_queue(client)
    for body in ("a1", "a2", "a3"):
        await send_fifo(client, url, body, "A")
    await send_fifo(client, url, "b1", "B")
    a1 = await receive_one(client, url)
    assert a1.body == "a1" and a1.message_group_id == "A"
    b1 = await receive_one(client, url)  # group A is locked while a1 is in flight
    assert b1.body == "b1"
    await nothing(client, url)
    await client.delete_message(url, a1.receipt_handle)
    rest = await client.receive_messages(url, wait_time=0)
    assert [m.body for m in rest] == ["a2", "a3"]
    sequence = [int(m.sequence_number or 0) for m in (a1, *rest)]
    assert sequence == sorted(sequence)


async def test_fifo_released_later_message_does_not_reopen_group(autojump_clock: Any, client):
    url = await fifo_queue(client)
    await send_fifo(client, url, "a1", "A")
    await send_fifo(client, url, "a2", "A")
    a1, a2 = (await client.receive_messages(url, max_messages=2, wait_time=0)).messages
    assert (a1.body, a2.body) == ("a1", "a2")
    await client.change_message_visibility(url, a2.receipt_handle, 0)
    await nothing(client, url)  # a1 is still in flight: the group stays closed
    start = now()

    async def delete_later() -> None:
        await trio.sleep(4)
        await client.delete_message(url, a1.receipt_handle)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(delete_later)
        again = await receive_one(client, url, wait=20)
    assert again.body == "a2" and again.receive_count == 2
    assert now() == start + 4  # the group reopens the moment a1 is deleted


async def test_fifo_group_reopens_when_visibility_ends_in_order(autojump_clock: Any, client):
    url = await fifo_queue(client)
    await send_fifo(client, url, "a1", "A")
    await send_fifo(client, url, "a2", "A")
    start = now()
    a1 = await receive_one(client, url, visibility_timeout=6)
    again = await receive_one(client, url, wait=20)
    assert now() == start + 6
    assert again.message_id == a1.message_id and again.receive_count == 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: h[:-8],
        lambda h: h[:120],
        lambda h: h + "AAAA",
        lambda h: h[:-4] + ("A" if h[-4] != "A" else "B") + h[-3:],
    ],
    ids=["cut-short", "cut-to-120", "lengthened", "one-character-changed"],
)
async def test_a_mangled_receipt_handle_is_invalid(
    autojump_clock: Any, fake_sqs, client, mangle: Callable[[str], str]
):
    """A handle cut short or altered (URL-mangled, say) still named its queue and message, and
    the fake took it for an older receipt: DeleteMessage answered success and deleted nothing.
    SQS's handles are opaque: it is ReceiptHandleIsInvalid, single and in a batch."""
    url = await client.create_queue(unique())
    await client.send_message(url, "m")
    message = await receive_one(client, url)
    bad = mangle(message.receipt_handle)
    assert await error_of(client, "DeleteMessage", QueueUrl=url, ReceiptHandle=bad) == (
        "ReceiptHandleIsInvalid"
    )
    deleted = await client.delete_message_batch(url, {"bad": bad})
    assert [e.code for e in deleted.failed] == ["ReceiptHandleIsInvalid"]
    assert fake_sqs.queue(url).counts().in_flight == 1
    await client.delete_message(url, message.receipt_handle)
    assert fake_sqs.queue(url).messages() == []


async def test_fifo_delete_with_an_expired_receipt_handle_is_refused(
    autojump_clock: Any, fake_sqs, client
):
    """On a FIFO queue, deleting with the receipt of a message whose visibility ended is
    ReceiptHandleIsInvalid and deletes nothing (a standard queue's delete would succeed);
    while it is in flight the same handle deletes it."""
    url = await fifo_queue(client)
    await send_fifo(client, url, "a1", "A")
    first = await receive_one(client, url, visibility_timeout=5)
    await trio.sleep(5)
    with pytest.raises(trio_sqs.ServiceError) as info:
        await client.delete_message(url, first.receipt_handle)
    assert info.value.code == "ReceiptHandleIsInvalid"
    assert [m.body for m in fake_sqs.queue(url).messages()] == ["a1"]
    again = await receive_one(client, url, visibility_timeout=5)
    await client.delete_message(url, again.receipt_handle)
    assert fake_sqs.queue(url).messages() == []


async def test_fifo_deduplication_by_id_for_exactly_5_minutes(
    autojump_clock: Any, fake_sqs, client
):
    url = await fifo_queue(client)
    start = now()
    first = await client.send_message(
        url, "one", message_group_id="g", message_deduplication_id="d"
    )
    await trio.sleep_until(start + 299)
    dup = await client.send_message(url, "two", message_group_id="g", message_deduplication_id="d")
    assert (dup.message_id, dup.sequence_number) == (first.message_id, first.sequence_number)
    assert fake_sqs.queue(url).counts().total == 1
    await trio.sleep_until(start + 300)
    fresh = await client.send_message(
        url, "three", message_group_id="g", message_deduplication_id="d"
    )
    assert fresh.message_id != first.message_id
    assert int(fresh.sequence_number or 0) > int(first.sequence_number or 0)
    assert [m.body for m in fake_sqs.queue(url).messages()] == ["one", "three"]


async def test_fifo_content_based_deduplication(autojump_clock: Any, fake_sqs, client):
    url = await fifo_queue(client, ContentBasedDeduplication="true")
    start = now()
    first = await client.send_message(url, "same", message_group_id="g")
    await client.send_message(url, "other", message_group_id="g")
    await trio.sleep_until(start + 299)
    assert (await client.send_message(url, "same", message_group_id="h")).message_id == (
        first.message_id
    )
    await trio.sleep_until(start + 300)
    assert (await client.send_message(url, "same", message_group_id="g")).message_id != (
        first.message_id
    )
    assert [m.body for m in fake_sqs.queue(url).messages()] == ["same", "other", "same"]
    message = await receive_one(client, url)
    assert message.message_deduplication_id == hashlib.sha256(b"same").hexdigest()


async def test_fifo_send_validation(autojump_clock: Any, client):
    url = await fifo_queue(client)
    assert await error_of(
        client, "SendMessage", QueueUrl=url, MessageBody="x", MessageDeduplicationId="d"
    ) == ("MissingParameter")
    assert await error_of(
        client,
        "SendMessage",
        QueueUrl=url,
        MessageBody="x",
        MessageGroupId="g",
        MessageDeduplicationId="d",
        DelaySeconds=5,
    ) == ("InvalidParameterValue")
    # Neither a deduplication id nor content-based deduplication.
    assert await error_of(
        client, "SendMessage", QueueUrl=url, MessageBody="x", MessageGroupId="g"
    ) == ("InvalidParameterValue")
    standard = await client.create_queue(unique())
    assert await error_of(
        client, "SendMessage", QueueUrl=standard, MessageBody="x", MessageDeduplicationId="d"
    ) == ("InvalidParameterValue")


# -- purge -----------------------------------------------------------------------------------


async def test_purge_and_purge_in_progress(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    for i in range(3):
        await client.send_message(url, str(i))
    await client.send_message(url, "delayed", delay_seconds=10)
    taken = await receive_one(client, url)
    start = now()
    await client.purge_queue(url)
    assert fake_sqs.queue(url).counts().total == 0
    await client.delete_message(url, taken.receipt_handle)  # a purged message's handle: fine
    await trio.sleep(59.9)
    assert await error_of(client, "PurgeQueue", QueueUrl=url) == (
        "AWS.SimpleQueueService.PurgeQueueInProgress"
    )
    await client.send_message(url, "after")
    await trio.sleep_until(start + 60)
    await client.purge_queue(url)
    await nothing(client, url)


# -- long polls whose client went away -------------------------------------------------------


async def abandon_poll(
    client: trio_sqs.SQSClient, url: str, *, after: float, visibility: int, wait: int = 20
) -> None:
    """Start a long poll and cancel it client-side after ``after`` seconds."""
    with trio.move_on_after(after):
        await client.receive_messages(url, wait_time=wait, visibility_timeout=visibility)
        raise AssertionError("the poll was meant to be abandoned")


async def test_abandoned_poll_takes_a_message_sent_later(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    start = now()
    await abandon_poll(client, url, after=2, visibility=7)
    assert queue.waiting_polls == 1  # still running server-side
    await trio.sleep_until(start + 5)
    sent = await client.send_message(url, "lost")
    # Taken at once by the orphan, not on a later re-check.
    assert queue.orphaned_deliveries == 1
    snapshot = queue.message(sent.message_id)
    assert snapshot is not None and snapshot.state == "in_flight"
    assert snapshot.receive_count == 1 and snapshot.visible_at == start + 5 + 7
    assert queue.waiting_polls == 0
    message = await receive_one(client, url, wait=20)
    assert now() == start + 12
    assert message.message_id == sent.message_id and message.receive_count == 2
    assert queue.orphaned_deliveries == 1 and queue.deliveries == 2


async def test_abandoned_poll_expires_at_its_wait_time(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    start = now()
    await abandon_poll(client, url, after=1, visibility=30, wait=10)
    await trio.sleep_until(start + 9.999)
    assert queue.waiting_polls == 1
    await trio.sleep_until(start + 10)
    assert queue.waiting_polls == 0
    await client.send_message(url, "kept")
    assert (await receive_one(client, url)).body == "kept"
    assert queue.orphaned_deliveries == 0


async def test_abandoned_poll_takes_a_released_message(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    await client.send_message(url, "m")
    held = await receive_one(client, url, visibility_timeout=100)
    await abandon_poll(client, url, after=1, visibility=9)
    released_at = now()
    await client.change_message_visibility(url, held.receipt_handle, 0)
    assert queue.orphaned_deliveries == 1
    assert queue.counts().in_flight == 1
    message = await receive_one(client, url, wait=20)
    assert now() == released_at + 9
    assert message.receive_count == 3


async def test_a_poll_cancelled_in_the_instant_it_is_handed_a_message_counts_it_orphaned(
    autojump_clock: Any, fake_sqs
):
    """The message reaches the poll and the poll's client goes away at the same moment (t=5):
    the message is taken for nobody. It was in flight but counted neither delivered to a client
    nor orphaned."""
    url = (await fake_sqs.call("CreateQueue", {"QueueName": unique()}))["QueueUrl"]
    got: list[object] = []

    async def poll() -> None:
        with trio.move_on_after(5):
            got.append(
                await fake_sqs.call("ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 20})
            )

    async def send() -> None:
        await trio.sleep(5)
        await fake_sqs.call("SendMessage", {"QueueUrl": url, "MessageBody": "m"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        nursery.start_soon(send)
    queue = fake_sqs.queue(url)
    assert got == [] and queue.counts().in_flight == 1
    assert (queue.deliveries, queue.orphaned_deliveries) == (1, 1)


async def test_abandoned_poll_takes_a_message_whose_visibility_ends(
    autojump_clock: Any, fake_sqs, client
):
    """The timer path: nobody is awake at the moment the visibility ends, yet the orphan (the
    oldest waiting poll) takes the message at exactly that moment."""
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    await client.send_message(url, "m")
    start = now()
    await receive_one(client, url, visibility_timeout=3)
    await abandon_poll(client, url, after=1, visibility=8)  # an orphan from +1 to +21
    await trio.sleep_until(start + 2)
    # A live poll from +2: younger than the orphan, so the orphan wins the message at +3.
    message = await receive_one(client, url, wait=20)
    assert now() == start + 3 + 8
    assert message.receive_count == 3
    assert queue.orphaned_deliveries == 1


async def test_abandoned_poll_timer_path_seen_lazily(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    sent = await client.send_message(url, "m")
    start = now()
    await receive_one(client, url, visibility_timeout=3)
    await abandon_poll(client, url, after=1, visibility=8)
    await trio.sleep_until(start + 5)  # nobody looked at the queue at +3
    snapshot = queue.message(sent.message_id)
    assert snapshot is not None and snapshot.state == "in_flight"
    assert snapshot.visible_at == start + 3 + 8 and snapshot.receive_count == 2
    assert queue.orphaned_deliveries == 1


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"MaxNumberOfMessages": 11}, "InvalidParameterValue"),
        ({"MaxNumberOfMessages": 0}, "InvalidParameterValue"),
        ({"WaitTimeSeconds": 21}, "InvalidParameterValue"),
        ({"VisibilityTimeout": 43_201}, "InvalidParameterValue"),
        ({"MessageSystemAttributeNames": ["Colour"]}, "InvalidAttributeName"),
    ],
)
async def test_receive_validation(autojump_clock: Any, client, params: dict[str, Any], code: str):
    url = await client.create_queue(unique())
    assert await error_of(client, "ReceiveMessage", QueueUrl=url, **params) == code


def _attrs(count: int) -> dict[str, Any]:
    return {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(count)}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"MessageBody": "nul \x00"}, "InvalidMessageContents"),
        ({"MessageBody": "bell \x07"}, "InvalidMessageContents"),
        ({"MessageBody": "\ufffe"}, "InvalidMessageContents"),
        ({"MessageBody": "x" * (1_048_576 + 1)}, "InvalidParameterValue"),
        ({"MessageBody": ""}, "MissingParameter"),
        ({"MessageBody": "x", "MessageAttributes": _attrs(11)}, "InvalidParameterValue"),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"AWS.x": {"DataType": "String", "StringValue": "v"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "abc"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "nan"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"s": {"DataType": "String", "StringValue": ""}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"s": {"DataType": "Text", "StringValue": "v"}},
            },
            "InvalidParameterValue",
        ),
        ({"MessageBody": "x", "DelaySeconds": 901}, "InvalidParameterValue"),
    ],
)
async def test_send_validation(
    autojump_clock: Any, fake_sqs, client, params: dict[str, Any], code: str
):
    url = await client.create_queue(unique())
    assert await error_of(client, "SendMessage", QueueUrl=url, **params) == code
    assert fake_sqs.queue(url).counts().total == 0


async def test_largest_body_is_accepted(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    body = "\U0001f600" * (1_048_576 // 4)  # exactly 1 MiB of UTF-8
    await client.send_message(url, body)
    assert (await receive_one(client, url)).body == body


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("ReceiveMessage", {"QueueUrl": "URL", "MaxNumberOfMessages": "1"}),
        ("ReceiveMessage", {"QueueUrl": "URL", "WaitTimeSeconds": True}),
        ("SendMessage", {"QueueUrl": "URL", "MessageBody": 5}),
        ("GetQueueUrl", {"QueueName": ["x"]}),
        ("DeleteMessageBatch", {"QueueUrl": "URL", "Entries": "x"}),
        ("DeleteMessageBatch", {"QueueUrl": "URL", "Entries": ["x"]}),
        ("SendMessage", {"QueueUrl": "URL", "MessageBody": "x", "MessageAttributes": []}),
        # inside a batch entry: the whole call fails, nothing is sent (one entry's failure, with
        # the entries before it already sent, it was)
        (
            "SendMessageBatch",
            {
                "QueueUrl": "URL",
                "Entries": [
                    {"Id": "a", "MessageBody": "sent?"},
                    {"Id": "b", "MessageBody": "x", "DelaySeconds": "5"},
                ],
            },
        ),
        ("DeleteMessageBatch", {"QueueUrl": "URL", "Entries": [{"Id": "a", "ReceiptHandle": 1}]}),
        (
            "ChangeMessageVisibilityBatch",
            {
                "QueueUrl": "URL",
                "Entries": [{"Id": "a", "ReceiptHandle": "h", "VisibilityTimeout": 1.5}],
            },
        ),
        (
            "SendMessage",
            {
                "QueueUrl": "URL",
                "MessageBody": "x",
                "MessageAttributes": {"a": {"DataType": "String", "StringValue": 1}},
            },
        ),
        ("CreateQueue", {"QueueName": "q2", "tags": {"k": 1}}),
        ("ListQueues", {"MaxResults": "10"}),
        ("GetQueueAttributes", {"QueueUrl": "URL", "AttributeNames": [1]}),
    ],
)
async def test_wrong_json_types(
    autojump_clock: Any, fake_sqs, client, target: str, body: dict[str, Any]
):
    url = await client.create_queue(unique())
    payload = json.dumps({k: (url if v == "URL" else v) for k, v in body.items()}).encode()
    response = await wire(fake_sqs, payload, target=f"AmazonSQS.{target}")
    assert response.status_code == 400
    assert response.json()["__type"] == "com.amazon.coral.service#SerializationException"
    assert fake_sqs.queue(url).messages() == []
    assert list(fake_sqs.queues) == [url.rpartition("/")[2]]


# -- bad requests on the wire ----------------------------------------------------------------


CORAL = "com.amazon.coral.service#"
NOWHERE = "http://sqs.fake.invalid/123456789012/nowhere"


@pytest.mark.parametrize(
    ("request_", "status", "type_", "query_error", "says"),
    [
        pytest.param(
            {"target": "AmazonSQS.MakeCoffee"},
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "X-Amz-Target='AmazonSQS.MakeCoffee'",
            id="unknown-operation",
        ),
        pytest.param(
            {"target": None},
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "X-Amz-Target=''",
            id="no-target",
        ),
        pytest.param(
            {"method": "GET", "body": b""},
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "(GET)",
            id="get",
        ),
        pytest.param(
            {
                "target": None,
                "body": b"Action=ListQueues&Version=2012-11-05",
                "content_type": "application/x-www-form-urlencoded",
            },
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "serves only SQS's JSON protocol",
            id="query-protocol",
        ),
        pytest.param(
            {"content_type": "application/json"},
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "'application/json'",
            id="json-not-amz",
        ),
        pytest.param(
            {"body": b"Action=ListQueues", "content_type": "text/plain"},
            400,
            CORAL + "UnknownOperationException",
            "UnknownOperationException;Sender",
            "'text/plain'",
            id="text-plain",
        ),
        pytest.param(
            {"body": b"not json"},
            400,
            CORAL + "SerializationException",
            "SerializationException;Sender",
            "not valid JSON",
            id="not-json",
        ),
        pytest.param(
            {"body": b"[]"},
            400,
            CORAL + "SerializationException",
            "SerializationException;Sender",
            "not a JSON object",
            id="not-an-object",
        ),
        pytest.param(
            {"body": b"\xff\xfe"},
            400,
            CORAL + "SerializationException",
            "SerializationException;Sender",
            "not valid JSON",
            id="not-utf8",
        ),
        *[
            pytest.param(
                {"body": body},
                400,
                CORAL + "SerializationException",
                "SerializationException;Sender",
                "not valid JSON",
                id=name,
            )
            for name, body in (
                ("nan", b'{"QueueNamePrefix": "q", "x": NaN}'),
                ("infinity", b'{"x": -Infinity}'),
                ("utf8-bom", b"\xef\xbb\xbf{}"),
                ("utf16", "{}".encode("utf-16")),
                ("utf32", '{"QueueNamePrefix": "q"}'.encode("utf-32-le")),
                ("nested-too-deep", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            )
        ],
        pytest.param(
            {"target": "AmazonSQS.ListQueueTags"},
            400,
            "com.amazonaws.sqs#UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation;Sender",
            "",
            id="unsupported",
        ),
        pytest.param(
            {"target": "AmazonSQS.GetQueueAttributes"},
            400,
            "com.amazonaws.sqs#MissingParameter",
            "MissingParameter;Sender",
            "QueueUrl",
            id="no-queue-url",
        ),
        pytest.param(
            {
                "target": "AmazonSQS.SendMessage",
                "body": json.dumps({"QueueUrl": NOWHERE, "MessageBody": "x"}).encode(),
            },
            400,
            "com.amazonaws.sqs#QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue;Sender",
            "does not exist",
            id="unknown-queue",
        ),
    ],
)
async def test_bad_requests_get_sqs_s_answer(
    autojump_clock: Any,
    fake_sqs,
    request_: dict[str, Any],
    status: int,
    type_: str,
    query_error: str,
    says: str,
):
    """Every request the fake cannot take gets the answer SQS's JSON protocol gives: the
    status, ``__type``, the query-compatible code in ``x-amzn-query-error`` and a message."""
    body = request_.pop("body", b"{}")
    response = await wire(fake_sqs, body, **request_)
    assert response.status_code == status
    assert response.headers["content-type"] == JSON
    assert response.headers["x-amzn-query-error"] == query_error
    answer = response.json()
    assert answer["__type"] == type_
    assert says in answer["message"]
    assert fake_sqs.queues == {}  # nothing took effect


async def test_an_empty_body_is_an_empty_parameter_map(autojump_clock: Any, fake_sqs):
    response = await wire(fake_sqs, b"")
    assert (response.status_code, response.json()) == (200, {})
    assert response.headers["content-type"] == JSON
    assert fake_sqs.call_counts == {"ListQueues": 1}


# -- SigV4 -----------------------------------------------------------------------------------


async def test_signed_client_passes_verification(autojump_clock: Any):
    fake = FakeSQS(verify_signatures=True, credentials={"AKIDEXAMPLE": "s3cr3t/+="})
    async with client_on(autojump_clock, fake) as client:
        url = await client.create_queue(unique())
        await client.send_message(url, "signed ✓", message_attributes=typed(ATTRIBUTES))
        assert (await receive_one(client, url)).body == "signed ✓"


@pytest.mark.parametrize(
    ("access_key", "secret", "code"),
    [
        ("testing", "wrong", "InvalidSignatureException"),
        ("unknown", "testing", "UnrecognizedClientException"),
    ],
)
async def test_bad_credentials_are_refused(
    autojump_clock: Any, access_key: str, secret: str, code: str
):
    fake = FakeSQS(verify_signatures=True)
    async with signing_client_on(autojump_clock, fake, access_key, secret, fake.region) as client:
        with pytest.raises(trio_sqs.AccessDenied) as info:
            await client.list_queues()
    assert info.value.code == code and info.value.status_code == 400
    assert fake.call_counts == {}  # refused before the operation


async def test_wrong_region_scope_is_refused(autojump_clock: Any):
    fake = FakeSQS(verify_signatures=True, region="eu-west-1")
    async with signing_client_on(autojump_clock, fake, "testing", "testing", "us-east-1") as client:
        with pytest.raises(trio_sqs.AccessDenied) as info:
            await client.list_queues()
    assert info.value.code == "InvalidSignatureException"


def signed_request(
    body: bytes,
    *,
    url: str = "http://sqs.fake.invalid/",
    region: str = "us-east-1",
    access_key: str = "testing",
    secret: str = "testing",
    token: str | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """A request signed by botocore: (raw path, lower-case headers with host, body)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": JSON, "X-Amz-Target": "AmazonSQS.ListQueues"},
    )
    SigV4Auth(Credentials(access_key, secret, token), "sqs", region).add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    parts = urlsplit(url)
    headers["host"] = parts.netloc
    return parts.path, headers, body


async def test_missing_or_malformed_authorization(autojump_clock: Any):
    fake = FakeSQS(verify_signatures=True)
    response = await wire(fake, b"{}")  # no Authorization at all
    assert response.status_code == 403
    assert response.json()["__type"] == (
        "com.amazon.coral.service#MissingAuthenticationTokenException"
    )
    _, headers, body = signed_request(b"{}")
    async with httpx.AsyncClient(transport=fake.transport(), base_url=fake.endpoint) as http:
        headers["authorization"] = "AWS4-HMAC-SHA256 Credential=testing/x"
        response = await http.post("/", content=body, headers=headers)
    assert response.json()["__type"] == "com.amazon.coral.service#IncompleteSignatureException"
    assert fake.call_counts == {}


async def test_body_altered_after_signing_is_refused(autojump_clock: Any):
    fake = FakeSQS(verify_signatures=True)
    _, headers, body = signed_request(b'{"QueueNamePrefix": "a"}')
    async with httpx.AsyncClient(transport=fake.transport(), base_url=fake.endpoint) as http:
        response = await http.post("/", content=body, headers=headers)
        assert response.status_code == 200
        response = await http.post("/", content=body.replace(b'"a"', b'"b"'), headers=headers)
    assert response.status_code == 400
    assert response.json()["__type"] == "com.amazon.coral.service#InvalidSignatureException"
    assert "does not match" in response.json()["message"]
    assert fake.call_counts == {"ListQueues": 1}


@pytest.mark.parametrize("signature", ["\u00e9" * 64, "\u00e9", "0" * 63 + "\u00ff"])
async def test_a_signature_with_non_ascii_characters_is_refused(
    autojump_clock: Any, signature: str
):
    """hmac.compare_digest raised TypeError on a non-ASCII str: the request got no answer in
    process (a 500 over HTTP)."""
    fake = FakeSQS(verify_signatures=True)
    _, headers, body = signed_request(b"{}")
    headers["authorization"] = re.sub(
        r"Signature=[0-9a-f]+", "Signature=" + signature, headers["authorization"]
    )
    async with httpx.AsyncClient(transport=fake.transport(), base_url=fake.endpoint) as http:
        response = await http.post(
            "/",
            content=body,
            headers={k: v.encode("latin-1") for k, v in headers.items()},
        )
    assert response.status_code == 400
    assert response.json()["__type"] == "com.amazon.coral.service#InvalidSignatureException"
    assert fake.call_counts == {}


async def test_clock_ten_minutes_off_is_clock_skew(autojump_clock: Any, monkeypatch: Any):
    # botocore signs (the client's own signer would correct the skew: tests/test_retries.py)
    monkeypatch.setattr(SQSProtocol, "check_signer", lambda self, credentials: "botocore signs")
    fake = FakeSQS(verify_signatures=True)
    async with client_on(autojump_clock, fake, retry=NO_RETRY) as client:
        await client.list_queues()
        fake.clock_skew = 600  # the server's clock is now ten minutes ahead of ours
        with pytest.raises(trio_sqs.ClockSkewError) as info:
            await client.list_queues()
    assert info.value.code == "InvalidSignatureException"
    assert "Signature expired" in info.value.message
    assert info.value.skew == pytest.approx(600, abs=5)


async def test_the_client_corrects_a_clock_ten_minutes_off(autojump_clock: Any):
    fake = FakeSQS(verify_signatures=True)
    async with client_on(autojump_clock, fake, retry=NO_RETRY) as client:
        await client.list_queues()
        fake.clock_skew = 600
        await client.list_queues()  # rejected once, signed again at the server's time
        await client.list_queues()
    assert fake.call_counts["ListQueues"] == 3  # the fake counts only requests it accepted


async def test_signatures_stay_valid_through_a_long_virtual_time(autojump_clock: Any):
    """Clients sign with the wall clock; the fake judges freshness by the wall clock too, so a
    test on MockClock may run for virtual hours with signatures verified."""
    fake = FakeSQS(verify_signatures=True)
    async with client_on(autojump_clock, fake, retry=NO_RETRY) as client:
        url = await client.create_queue(unique())
        await trio.sleep(3000)  # fifty virtual minutes: ten times the allowed skew
        await client.send_message(url, "still signed fine")
        [message] = await client.receive_messages(url, wait_time=0)
    assert message.body == "still signed fine"


def test_signature_from_the_future_is_refused() -> None:
    fake = FakeSQS(verify_signatures=True)
    path, headers, body = signed_request(b"{}")
    with pytest.raises(FakeError) as info:
        verify_signature(fake, "POST", path, headers, body, time.time() - 600)
    assert info.value.type_name == "InvalidSignatureException"
    assert info.value.message.startswith("Signature not yet current:")
    verify_signature(fake, "POST", path, headers, body, time.time() - 200)  # within 5 minutes


_segment = st.text(string.ascii_letters + string.digits + "-_.~", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=300),
    region=st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True),
    token=st.none() | st.text(string.ascii_letters + string.digits + "/+=", min_size=1),
    segments=st.lists(_segment | st.sampled_from([".", "..", ""]), max_size=5),
    trailing=st.booleans(),
    secret=st.text(string.ascii_letters + string.digits + "/+", min_size=1, max_size=40),
    flip=st.integers(min_value=0),
)
def test_verifier_agrees_with_botocore(
    body: bytes,
    region: str,
    token: str | None,
    segments: list[str],
    trailing: bool,
    secret: str,
    flip: int,
) -> None:
    fake = FakeSQS(verify_signatures=True, region=region, credentials={"AKIDTEST": secret})
    path = "/" + "/".join(segments) + ("/" if trailing and segments else "")
    raw_path, headers, signed_body = signed_request(
        body,
        url=f"https://sqs.{region}.amazonaws.com{path}",
        region=region,
        access_key="AKIDTEST",
        secret=secret,
        token=token,
    )
    assert raw_path == path
    verify_signature(fake, "POST", raw_path, headers, signed_body, time.time())
    # One byte changed anywhere in the body (or one byte more when it is empty) fails.
    if signed_body:
        index = flip % len(signed_body)
        changed = bytearray(signed_body)
        changed[index] ^= 1 + flip % 255
        altered = bytes(changed)
    else:
        altered = b"\x00"
    with pytest.raises(FakeError) as info:
        verify_signature(fake, "POST", raw_path, headers, altered, time.time())
    assert info.value.type_name == "InvalidSignatureException"
    with pytest.raises(FakeError):
        verify_signature(fake, "POST", raw_path + "x", headers, signed_body, time.time())


# -- scripted faults -------------------------------------------------------------------------


async def test_fault_fail_then_succeed(autojump_clock: Any, fake_sqs):
    async with client_on(
        autojump_clock, fake_sqs, retry=RetryPolicy(max_attempts=4, base_delay=0.1)
    ) as client:
        url = await client.create_queue(unique())
        fake_sqs.faults.fail("SendMessage", times=2)
        await client.send_message(url, "m")
        assert fake_sqs.call_counts["SendMessage"] == 3
        assert fake_sqs.faults.applied[("error", "SendMessage")] == 2
        assert fake_sqs.queue(url).counts().visible == 1
        # Exhausted retries surface the scripted error.
        fake_sqs.faults.fail("SendMessage", times=4, status=503, code="ServiceUnavailable")
        with pytest.raises(trio_sqs.ServiceError) as info:
            await client.send_message(url, "m")
        assert (info.value.code, info.value.status_code) == ("ServiceUnavailable", 503)
        assert fake_sqs.call_counts["SendMessage"] == 7
        fake_sqs.faults.throttle("ReceiveMessage", times=2)
        assert len(await client.receive_messages(url, wait_time=0)) == 1
        assert fake_sqs.call_counts["ReceiveMessage"] == 3
        assert fake_sqs.faults.pending == []


async def test_fault_delay_answers_late_after_applying(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    fake_sqs.faults.delay("SendMessage", 5)
    start = now()
    seen_at: list[float] = []

    async def poll() -> None:
        await receive_one(client, url, wait=20)
        seen_at.append(now())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(1)
        await client.send_message(url, "m")
        assert now() == start + 6
    assert seen_at == [start + 1]  # the message was there at once


async def test_fault_stall_times_out_after_applying(autojump_clock: Any, fake_sqs):
    async with client_on(autojump_clock, fake_sqs, retry=NO_RETRY) as client:
        url = await client.create_queue(unique())
        fake_sqs.faults.stall("SendMessage")
        start = now()
        with pytest.raises(trio_sqs.TransportError):
            await client.send_message(url, "m")
        assert now() == start + 30  # the client's read timeout
        assert fake_sqs.queue(url).counts().visible == 1
        # A stalled long poll: the read timeout is WaitTimeSeconds plus the client's margin.
        fake_sqs.faults.stall("ReceiveMessage")
        start = now()
        with pytest.raises(trio_sqs.TransportError):
            await client.receive_messages(url, wait_time=5)
        assert now() == start + 15
        assert fake_sqs.queue(url).counts().in_flight == 1


@pytest.mark.parametrize("after", [False, True])
async def test_fault_drop(autojump_clock: Any, fake_sqs, after: bool):
    async with client_on(autojump_clock, fake_sqs, retry=NO_RETRY) as client:
        url = await client.create_queue(unique())
        fake_sqs.faults.drop("SendMessage", after=after)
        with pytest.raises(trio_sqs.TransportError) as info:
            await client.send_message(url, "m")
        assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
        assert fake_sqs.call_counts["SendMessage"] == 1
        assert fake_sqs.queue(url).counts().visible == (1 if after else 0)
        assert fake_sqs.faults.applied[("drop", "SendMessage")] == 1


async def test_fault_corrupt_md5(autojump_clock: Any, fake_sqs, client):
    url = await client.create_queue(unique())
    fake_sqs.faults.corrupt_md5()
    await nothing(client, url)  # an empty answer does not use the fault up
    sent = [await client.send_message(url, f"m{i}") for i in range(2)]
    result = await client.receive_messages(url, wait_time=0)
    assert [c.message_id for c in result.corrupt] == [sent[0].message_id]
    assert [m.message_id for m in result.messages] == [sent[1].message_id]
    assert fake_sqs.faults.pending == []
    await client.change_message_visibility(url, result.corrupt[0].receipt_handle, 0)
    assert (await receive_one(client, url)).message_id == sent[0].message_id


async def test_fault_match_predicate(autojump_clock: Any, fake_sqs):
    async with client_on(autojump_clock, fake_sqs, retry=NO_RETRY) as client:
        url = await client.create_queue(unique())
        fault = fake_sqs.faults.fail(
            None,
            status=400,
            code="InvalidParameterValue",
            match=lambda p: p.get("MessageBody") == "bad",
        )
        await client.send_message(url, "good")
        await client.list_queues()
        with pytest.raises(trio_sqs.ServiceError) as info:
            await client.send_message(url, "bad")
        assert info.value.code == "InvalidParameterValue" and "scripted" in info.value.message
        assert fault.applied == 1
        await client.send_message(url, "bad")  # used up
        assert [m.body for m in fake_sqs.queue(url).messages()] == ["good", "bad"]
    with pytest.raises(ValueError):
        fake_sqs.faults.fail("SendMessage", times=0)


async def test_recorded_calls(autojump_clock: Any, fake_sqs, client):
    start = now()
    url = await client.create_queue(unique())
    await trio.sleep(3)
    await client.send_message(url, "m")
    assert fake_sqs.operations_called() == ["CreateQueue", "SendMessage"]
    assert [c.time - start for c in fake_sqs.calls] == [0, 3]
    assert fake_sqs.calls[1].params["MessageBody"] == "m"


# -- adversarial review: hostile input, redrive loops, orphans, scale ------------------------


def _surrogate_json(params: dict[str, Any]) -> bytes:
    """JSON with lone surrogates kept as ``\\udXXX`` escapes (valid JSON text, no valid UTF-8)."""
    return json.dumps(params).encode()


def _redrive(arn: str, count: int | float | str = 1) -> str:
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count})


@pytest.mark.parametrize(
    ("target", "body", "type_name"),
    [
        # int(float("inf")) raised OverflowError out of the transport.
        (
            "CreateQueue",
            {
                "QueueName": "Q2",
                "Attributes": {
                    "RedrivePolicy": '{"deadLetterTargetArn": "x", "maxReceiveCount": Infinity}'
                },
            },
            "com.amazonaws.sqs#InvalidAttributeValue",
        ),
        # A list or a map among AttributeNames: TypeError (unhashable).
        (
            "GetQueueAttributes",
            {"QueueUrl": "URL", "AttributeNames": [{}]},
            "com.amazon.coral.service#SerializationException",
        ),
        (
            "GetQueueAttributes",
            {"QueueUrl": "URL", "AttributeNames": [["All"]]},
            "com.amazon.coral.service#SerializationException",
        ),
        # A number among MessageAttributeNames, with a message that has attributes:
        # AttributeError ('int' object has no attribute 'endswith').
        (
            "ReceiveMessage",
            {"QueueUrl": "URL", "MessageAttributeNames": [5]},
            "com.amazon.coral.service#SerializationException",
        ),
        # A lone surrogate in an attribute's DataType: UnicodeEncodeError.
        (
            "SendMessage",
            {
                "QueueUrl": "URL",
                "MessageBody": "b",
                "MessageAttributes": {"n": {"DataType": "String.\ud800", "StringValue": "v"}},
            },
            "com.amazonaws.sqs#InvalidParameterValue",
        ),
    ],
)
async def test_hostile_json_gets_an_sqs_error_not_a_python_exception(
    autojump_clock: Any, fake_sqs, client, target: str, body: dict[str, Any], type_name: str
):
    url = await client.create_queue(unique())
    await client.send_message(url, "m", message_attributes={"a": MessageAttributeValue.string("v")})
    payload = _surrogate_json({k: (url if v == "URL" else v) for k, v in body.items()})
    response = await wire(fake_sqs, payload, target=f"AmazonSQS.{target}")
    assert response.status_code == 400
    assert response.json()["__type"] == type_name
    assert fake_sqs.queue(url).counts() == trio_sqs.testing.QueueCounts(1, 0, 0)


async def test_batch_with_a_surrogate_in_a_body_fails_that_entry_only(
    autojump_clock: Any, fake_sqs, client
):
    """The batch's total size was computed with str.encode() before the entries were checked:
    a lone surrogate in one body raised UnicodeEncodeError for the whole request."""
    url = await client.create_queue(unique())
    payload = _surrogate_json(
        {
            "QueueUrl": url,
            "Entries": [{"Id": "bad", "MessageBody": "x\ud800"}, {"Id": "ok", "MessageBody": "y"}],
        }
    )
    response = await wire(fake_sqs, payload, target="AmazonSQS.SendMessageBatch")
    assert response.status_code == 200
    answer = response.json()
    assert [e["Id"] for e in answer["Successful"]] == ["ok"]
    assert [(e["Id"], e["Code"]) for e in answer["Failed"]] == [("bad", "InvalidMessageContents")]
    assert [m.body for m in fake_sqs.queue(url).messages()] == ["y"]


@pytest.mark.parametrize("group", ["", "g" * 129, "with space", "é", "\ud800"])
async def test_message_group_id_is_validated(autojump_clock: Any, fake_sqs, client, group: str):
    """MessageGroupId: 1 to 128 alphanumeric or punctuation characters, on FIFO and standard
    queues alike (the fake took any string, the empty one included)."""
    fifo = await client.create_queue(
        unique() + ".fifo", attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )
    standard = await client.create_queue(unique())
    for url in (fifo, standard):
        payload = _surrogate_json({"QueueUrl": url, "MessageBody": "b", "MessageGroupId": group})
        response = await wire(fake_sqs, payload, target="AmazonSQS.SendMessage")
        assert response.status_code == 400
        assert response.json()["__type"] == "com.amazonaws.sqs#InvalidParameterValue"
        assert fake_sqs.queue(url).messages() == []
    # The widest valid id is accepted.
    punctuation = string.punctuation + string.ascii_letters + string.digits
    await raw(
        client, "SendMessage", QueueUrl=fifo, MessageBody="b", MessageGroupId=punctuation[:128]
    )
    assert len(fake_sqs.queue(fifo).messages()) == 1


async def test_receive_request_attempt_id_is_validated(autojump_clock: Any, client):
    url = await client.create_queue(unique())
    assert (
        await error_of(client, "ReceiveMessage", QueueUrl=url, ReceiveRequestAttemptId="a b")
        == "InvalidParameterValue"
    )
    assert await raw(client, "ReceiveMessage", QueueUrl=url, ReceiveRequestAttemptId="a-1") == {}


async def test_list_queues_refuses_a_negative_next_token(autojump_clock: Any, client):
    """A token decoding to -1 sliced from the end of the list and answered a token "0"."""
    await client.create_queue(unique("lq"))
    token = base64.b64encode(b"-1").decode()
    assert (
        await error_of(client, "ListQueues", MaxResults=1, NextToken=token)
        == "InvalidParameterValue"
    )


async def test_dead_letter_queue_must_be_the_same_type(autojump_clock: Any, fake_sqs, client):
    """A standard queue's messages moved into a FIFO DLQ had no group there: never receivable,
    counted visible forever. SQS refuses such a policy."""
    fifo_dlq = await client.create_queue(unique() + ".fifo", attributes={"FifoQueue": "true"})
    standard_dlq = await client.create_queue(unique())
    source = await client.create_queue(unique())
    fifo_arn = fake_sqs.queue(fifo_dlq).arn
    assert (
        await error_of(
            client,
            "SetQueueAttributes",
            QueueUrl=source,
            Attributes={"RedrivePolicy": _redrive(fifo_arn)},
        )
        == "InvalidAttributeValue"
    )
    assert (
        await error_of(
            client,
            "CreateQueue",
            QueueName=unique() + ".fifo",
            Attributes={
                "FifoQueue": "true",
                "RedrivePolicy": _redrive(fake_sqs.queue(standard_dlq).arn),
            },
        )
        == "InvalidAttributeValue"
    )
    assert "RedrivePolicy" not in fake_sqs.queue(source).attributes


@pytest.mark.deadline(5)
async def test_queue_that_is_its_own_dead_letter_queue_does_not_hang(
    autojump_clock: Any, fake_sqs, client
):
    """SQS accepts a queue as its own DLQ. The fake moved the message to itself, found it over
    the limit again, and moved it again, forever, in one synchronous loop (no checkpoint: not
    even the test's deadline could stop it)."""
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    await raw(
        client,
        "SetQueueAttributes",
        QueueUrl=url,
        Attributes={"RedrivePolicy": _redrive(queue.arn)},
    )
    sent = await client.send_message(url, "m")
    first = await receive_one(client, url, visibility_timeout=0)
    assert first.receive_count == 1
    again = await receive_one(client, url, attribute_names=["All"])
    assert again.message_id == sent.message_id and again.receive_count == 2
    assert again.attributes["DeadLetterQueueSourceArn"] == queue.arn
    assert queue.counts() == trio_sqs.testing.QueueCounts(0, 1, 0)


@pytest.mark.deadline(5)
async def test_two_queues_that_are_each_others_dlq_with_waiting_polls(
    autojump_clock: Any, fake_sqs, client
):
    """A -> B -> A with a long poll waiting on A: a receive on B moved the message to A, A's
    poll moved it back to B, B's receive took it up again... forever, at one instant. Now a
    message moved in at an instant is not moved on at that same instant: the poll gets it."""
    a = await client.create_queue(unique("a"))
    b = await client.create_queue(unique("b"))
    qa, qb = fake_sqs.queue(a), fake_sqs.queue(b)
    await raw(
        client, "SetQueueAttributes", QueueUrl=a, Attributes={"RedrivePolicy": _redrive(qb.arn)}
    )
    await raw(
        client, "SetQueueAttributes", QueueUrl=b, Attributes={"RedrivePolicy": _redrive(qa.arn)}
    )
    sent = await client.send_message(b, "m")
    await receive_one(client, b, visibility_timeout=0)  # received once: over the limit of 1
    results: list[trio_sqs.Message] = []

    async def poll_a() -> None:
        results.append(await receive_one(client, a, wait=20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll_a)
        await trio.testing.wait_all_tasks_blocked()
        assert qa.waiting_polls == 1
        start = now()
        assert len(await client.receive_messages(b, wait_time=0)) == 0  # moved to A
    [message] = results
    assert now() == start
    assert message.message_id == sent.message_id and message.receive_count == 2
    assert qa.counts() == trio_sqs.testing.QueueCounts(0, 1, 0)
    assert qb.counts() == trio_sqs.testing.QueueCounts(0, 0, 0)


async def test_short_receive_cancelled_after_taking_counts_orphaned(autojump_clock: Any, fake_sqs):
    """A receive that took messages and was cancelled at its checkpoint, before answering: the
    messages stay in flight for nobody, and orphaned_deliveries said 0."""
    url = (await fake_sqs.call("CreateQueue", {"QueueName": unique()}))["QueueUrl"]
    queue = fake_sqs.queue(url)
    await fake_sqs.call("SendMessage", {"QueueUrl": url, "MessageBody": "m"})
    with trio.CancelScope() as scope:
        scope.cancel()
        await fake_sqs.call("ReceiveMessage", {"QueueUrl": url, "VisibilityTimeout": 30})
    assert scope.cancelled_caught
    assert queue.counts() == trio_sqs.testing.QueueCounts(0, 1, 0)
    assert queue.deliveries == 1 and queue.orphaned_deliveries == 1


async def test_delayed_receive_answer_given_up_counts_orphaned(
    autojump_clock: Any, fake_sqs, client
):
    """faults.delay: the receive takes the message at once; the client times out before the
    answer comes. Nobody saw the message: it is an orphaned delivery."""
    url = await client.create_queue(unique())
    queue = fake_sqs.queue(url)
    await client.send_message(url, "m")
    fake_sqs.faults.delay("ReceiveMessage", 10)
    with trio.move_on_after(3):
        await client.receive_messages(url, wait_time=0, visibility_timeout=30)
    assert queue.counts() == trio_sqs.testing.QueueCounts(0, 1, 0)
    assert queue.deliveries == 1 and queue.orphaned_deliveries == 1


class _CountingGroups(dict[str, Any]):
    """A FakeQueue's FIFO groups, counting every group a scan of all of them looks at."""

    scanned = 0

    def items(self) -> Any:
        for item in super().items():
            self.scanned += 1
            yield item


async def test_fifo_receive_does_not_scan_every_group(autojump_clock: Any, fake_sqs, client):
    """Each FIFO receive sorted every group of the queue: 10,000 messages in 10,000 groups took
    1.5 s to drain 10 at a time, and an empty receive with 10,000 locked groups 0.75 ms. Now the
    receivable groups are kept in a heap (drain 0.12 s, empty receive 8 µs)."""
    url = await client.create_queue(
        unique() + ".fifo", attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )
    queue = fake_sqs.queue(url)
    groups = queue._groups = _CountingGroups()  # type: ignore[assignment]
    for i in range(300):
        await fake_sqs.call(
            "SendMessage", {"QueueUrl": url, "MessageBody": f"m{i}", "MessageGroupId": f"g{i}"}
        )
    bodies: list[str] = []
    while True:
        answer = await fake_sqs.call("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10})
        if not answer:
            break
        bodies += [m["Body"] for m in answer["Messages"]]
    # Oldest group first, each once; then every group is locked and a receive finds nothing.
    assert bodies == [f"m{i}" for i in range(300)]
    assert queue.counts() == trio_sqs.testing.QueueCounts(0, 300, 0)
    assert groups.scanned == 0


# -- a random operation sequence on virtual time, checked against an independent model ---------


@dataclass
class _ModelMessage:
    body: str
    group: str | None
    seq: int
    visible_at: float  # receivable from this time on
    received: bool = False
    receive_count: int = 0
    receipt: str | None = None
    old_receipts: list[str] = field(default_factory=list)


class _Model:
    """What SQS must hold, from the documented semantics alone (not the fake's structures)."""

    def __init__(self, fifo: bool) -> None:
        self.fifo = fifo
        self.messages: dict[str, _ModelMessage] = {}
        self.dedup: dict[str, tuple[float, str]] = {}
        self.seq = 0

    def receivable(self, now: float) -> list[str]:
        """Message ids a receive may return now, in the order SQS must pick them for FIFO."""
        ordered = sorted(self.messages, key=lambda m: self.messages[m].seq)
        if not self.fifo:
            return [m for m in ordered if self.messages[m].visible_at <= now]
        out: list[str] = []
        locked = {
            self.messages[m].group
            for m in ordered
            if self.messages[m].received and self.messages[m].visible_at > now
        }
        heads: dict[str | None, list[str]] = {}
        for m in ordered:
            heads.setdefault(self.messages[m].group, []).append(m)
        for group, ids in sorted(heads.items(), key=lambda kv: self.messages[kv[1][0]].seq):
            if group in locked:
                continue
            for m in ids:
                if self.messages[m].visible_at > now:
                    break
                out.append(m)
        return out

    def counts(self, now: float) -> trio_sqs.testing.QueueCounts:
        visible = sum(1 for m in self.messages.values() if m.visible_at <= now)
        in_flight = sum(1 for m in self.messages.values() if m.visible_at > now and m.received)
        delayed = sum(1 for m in self.messages.values() if m.visible_at > now and not m.received)
        return trio_sqs.testing.QueueCounts(visible, in_flight, delayed)


async def _random_session(data: st.DataObject, clock: trio.testing.MockClock) -> None:
    fake = FakeSQS(record=False)
    urls = {
        False: (await fake.call("CreateQueue", {"QueueName": "std"}))["QueueUrl"],
        True: (
            await fake.call(
                "CreateQueue", {"QueueName": "f.fifo", "Attributes": {"FifoQueue": "true"}}
            )
        )["QueueUrl"],
    }
    models = {False: _Model(False), True: _Model(True)}
    dedup_ids = itertools.count()
    for _ in range(data.draw(st.integers(5, 60), label="steps")):
        fifo = data.draw(st.booleans(), label="fifo")
        url, model = urls[fifo], models[fifo]
        t = trio.current_time()
        op = data.draw(st.sampled_from(["send", "send", "receive", "delete", "change", "advance"]))
        if op == "send":
            body = f"b{model.seq}"
            params: dict[str, Any] = {"QueueUrl": url, "MessageBody": body}
            if fifo:
                group = data.draw(st.sampled_from(["g1", "g2", "g3"]), label="group")
                reuse = model.dedup and data.draw(st.booleans(), label="reuse dedup id")
                dedup = (
                    data.draw(st.sampled_from(sorted(model.dedup)), label="dedup id")
                    if reuse
                    else f"d{next(dedup_ids)}"
                )
                params |= {"MessageGroupId": group, "MessageDeduplicationId": dedup}
                delay = 0
            else:
                group, dedup = None, None
                delay = data.draw(st.integers(0, 5), label="delay")
                params["DelaySeconds"] = delay
            answer = await fake.call("SendMessage", params)
            seen = model.dedup.get(dedup) if dedup is not None else None
            if seen is not None and t < seen[0] + 300:
                assert answer["MessageId"] == seen[1]  # deduplicated: nothing new
            else:
                model.messages[answer["MessageId"]] = _ModelMessage(
                    body, group, model.seq, t + delay
                )
                model.seq += 1
                if dedup is not None:
                    model.dedup[dedup] = (t, answer["MessageId"])
        elif op == "receive":
            n = data.draw(st.integers(1, 10), label="max")
            visibility = data.draw(st.integers(0, 6), label="visibility")
            expected = model.receivable(t)
            answer = await fake.call(
                "ReceiveMessage",
                {
                    "QueueUrl": url,
                    "MaxNumberOfMessages": n,
                    "VisibilityTimeout": visibility,
                    "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
                },
            )
            got = answer.get("Messages", [])
            ids = [m["MessageId"] for m in got]
            assert len(ids) == len(set(ids)) == min(n, len(expected))
            # Never a message in flight to someone else (or delayed, or deleted).
            assert set(ids) <= set(expected)
            if fifo:  # oldest receivable first, per group in order
                assert ids == expected[: len(ids)]
            for m in got:
                mine = model.messages[m["MessageId"]]
                assert m["Body"] == mine.body
                assert int(m["Attributes"]["ApproximateReceiveCount"]) == mine.receive_count + 1
                mine.receive_count += 1
                mine.received = True
                mine.visible_at = t + visibility
                if mine.receipt is not None:
                    mine.old_receipts.append(mine.receipt)
                mine.receipt = m["ReceiptHandle"]
        elif op in ("delete", "change"):
            handles = [
                (mid, h, h == m.receipt)
                for mid, m in model.messages.items()
                for h in [*m.old_receipts, *([m.receipt] if m.receipt else [])]
            ]
            if not handles:
                continue
            mid, handle, latest = data.draw(st.sampled_from(handles), label="handle")
            mine = model.messages[mid]
            in_flight = mine.visible_at > t
            if op == "delete":
                # An older receipt succeeds and deletes nothing (only the latest deletes); on
                # FIFO the latest one is refused once its visibility timeout has ended.
                ok = not (fifo and latest and not in_flight)
                try:
                    await fake.call("DeleteMessage", {"QueueUrl": url, "ReceiptHandle": handle})
                except FakeError as exc:
                    assert not ok and exc.type_name == "ReceiptHandleIsInvalid"
                else:
                    assert ok
                    if latest:
                        del model.messages[mid]
            else:
                timeout = data.draw(st.integers(0, 6), label="timeout")
                try:
                    await fake.call(
                        "ChangeMessageVisibility",
                        {"QueueUrl": url, "ReceiptHandle": handle, "VisibilityTimeout": timeout},
                    )
                except FakeError:
                    assert not (latest and in_flight)
                else:
                    assert latest and in_flight
                    mine.visible_at = t + timeout
        else:
            clock.jump(data.draw(st.sampled_from([0.5, 1, 3, 7, 301]), label="advance"))
        now_ = trio.current_time()
        for is_fifo, m in models.items():
            queue = fake.queue(urls[is_fifo])
            assert queue.counts() == m.counts(now_)
            assert {s.message_id for s in queue.messages()} == set(m.messages)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(st.data())
def test_random_operations_agree_with_an_independent_model(data: st.DataObject) -> None:
    """Sends (delays, FIFO groups, deduplication), receives, deletes and visibility changes with
    current and stale receipts, and time jumps (timers at the same instant, polls on deadlines),
    on a standard and a FIFO queue: after every step the fake's counts and messages match the
    model, no receive returns a message in flight, FIFO groups come oldest first and locked
    while in flight, and every delivery adds one to the receive count."""
    clock = trio.testing.MockClock()
    trio.run(_random_session, data, clock, clock=clock)


async def _random_polls_session(data: st.DataObject, clock: trio.testing.MockClock) -> None:
    """Long polls, live and abandoned, among sends, short receives, deletes and time jumps."""
    fake = FakeSQS(record=False)
    fifo = data.draw(st.booleans(), label="fifo")
    attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    url = (
        await fake.call(
            "CreateQueue", {"QueueName": "p.fifo" if fifo else "p", "Attributes": attributes}
        )
    )["QueueUrl"]
    queue = fake.queue(url)
    sent: set[str] = set()
    deleted_counts: dict[str, int] = {}  # receive count of each message when it was deleted
    # Live deliveries of each message: (its receive count then, time, visibility).
    windows: dict[str, list[tuple[int, float, int]]] = {}
    # Message id -> (receive count, receipt handle) of the latest delivery a live caller saw.
    latest: dict[str, tuple[int, str]] = {}
    order: dict[str, int] = {}  # message id -> send order (ids are random; draws must not be)
    returned = 0
    live: dict[int, tuple[trio.CancelScope, float]] = {}  # poll -> (its scope, its deadline)
    numbers = itertools.count()

    def record(messages: list[dict[str, Any]], visibility: int) -> None:
        nonlocal returned
        returned += len(messages)
        for m in messages:
            count = int(m["Attributes"]["ApproximateReceiveCount"])
            windows.setdefault(m["MessageId"], []).append((count, trio.current_time(), visibility))
            if count > latest.get(m["MessageId"], (0, ""))[0]:
                latest[m["MessageId"]] = (count, m["ReceiptHandle"])

    async def poll(number: int, wait: int, visibility: int, scope: trio.CancelScope) -> None:
        with scope:
            answer = await fake.call(
                "ReceiveMessage",
                {
                    "QueueUrl": url,
                    "MaxNumberOfMessages": 10,
                    "WaitTimeSeconds": wait,
                    "VisibilityTimeout": visibility,
                    "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
                },
            )
            record(answer.get("Messages", []), visibility)
        live.pop(number, None)

    async with trio.open_nursery() as nursery:
        for _ in range(data.draw(st.integers(5, 50), label="steps")):
            op = data.draw(
                st.sampled_from(["send", "receive", "poll", "abandon", "delete", "advance"])
            )
            if op == "send":
                params = {"QueueUrl": url, "MessageBody": f"b{len(sent)}"}
                if fifo:
                    params["MessageGroupId"] = data.draw(st.sampled_from(["g1", "g2"]))
                mid = (await fake.call("SendMessage", params))["MessageId"]
                order[mid] = len(sent)
                sent.add(mid)
            elif op == "receive":
                visibility = data.draw(st.integers(0, 5), label="visibility")
                answer = await fake.call(
                    "ReceiveMessage",
                    {
                        "QueueUrl": url,
                        "MaxNumberOfMessages": 10,
                        "VisibilityTimeout": visibility,
                        "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
                    },
                )
                record(answer.get("Messages", []), visibility)
            elif op == "poll":
                number = next(numbers)
                wait = data.draw(st.integers(1, 20), label="wait")
                scope = trio.CancelScope()
                live[number] = (scope, trio.current_time() + wait)
                nursery.start_soon(poll, number, wait, data.draw(st.integers(0, 5)), scope)
            elif op == "abandon" and live:
                number = data.draw(st.sampled_from(sorted(live)), label="abandon")
                live[number][0].cancel()
            elif op == "delete" and latest:
                mid = data.draw(st.sampled_from(sorted(latest, key=order.__getitem__)))
                snapshot = queue.message(mid)
                try:
                    await fake.call(
                        "DeleteMessage", {"QueueUrl": url, "ReceiptHandle": latest.pop(mid)[1]}
                    )
                except FakeError as exc:  # FIFO: the receipt's visibility ended
                    assert fifo and exc.type_name == "ReceiptHandleIsInvalid"
                else:
                    after = queue.message(mid)
                    if after is None and snapshot is not None:
                        deleted_counts[mid] = snapshot.receive_count
            elif op == "advance":
                # Every time in this session is on a 0.5 s grid: jumping half a second at a
                # time wakes each poll at its own instant, as time passing would.
                for _ in range(int(data.draw(st.sampled_from([1, 2, 4, 10, 42]), label="ticks"))):
                    clock.jump(0.5)
                    await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            now_ = trio.current_time()
            # Every message exactly once: in the queue, or deleted.
            held = {s.message_id: s for s in queue.messages()}
            assert held.keys() | deleted_counts.keys() == sent
            assert not held.keys() & deleted_counts.keys()
            assert queue.counts().total == len(held)
            # Each delivery adds one to a receive count; every delivery went to a caller that
            # had the answer or is counted as orphaned.
            total = sum(s.receive_count for s in held.values()) + sum(deleted_counts.values())
            assert total == queue.deliveries == returned + queue.orphaned_deliveries
            # Never handed to a live caller while in flight to another (in delivery order: by
            # receive count, which only grows).
            for deliveries in windows.values():
                for (c1, t1, v1), (c2, t2, _) in itertools.pairwise(sorted(deliveries)):
                    assert c2 > c1 and t2 >= t1 + v1
            # Live polls past their deadline have returned; none waits beyond it.
            assert all(deadline > now_ for _, deadline in live.values())
            assert queue.waiting_polls >= len(live)
        for _ in range(42):
            clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
        assert not live and queue.waiting_polls == 0


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(st.data())
def test_random_long_polls_and_cancellations_lose_nothing(data: st.DataObject) -> None:
    """Long polls that live or are abandoned (cancelled at once, while waiting, or at the very
    moment they are handed messages), among sends, receives, deletes and time jumps: messages are
    never lost or duplicated, never handed to a live caller while in flight to another, each
    delivery is one receive, seen by its caller or counted orphaned, and every poll, abandoned or
    not, ends at its deadline."""
    clock = trio.testing.MockClock()
    trio.run(_random_polls_session, data, clock, clock=clock)


@pytest.mark.parametrize("point", ["before-with-message", "before", "waiting", "handed-over"])
async def test_cancel_a_receive_at_each_point(autojump_clock: Any, fake_sqs: FakeSQS, point: str):
    """Cancel a receive before it starts (a message waiting, or none), while it waits, or in the
    very step its message is handed to it. Whoever takes the message, it is in the queue exactly
    once, each delivery is seen by its caller or counted orphaned, and an abandoned poll stops
    taking messages at its deadline."""
    url = (await fake_sqs.call("CreateQueue", {"QueueName": unique()}))["QueueUrl"]
    queue = fake_sqs.queue(url)
    start = now()
    if point == "before-with-message":
        await fake_sqs.call("SendMessage", {"QueueUrl": url, "MessageBody": "m"})
    returned: list[dict[str, Any]] = []
    scope = trio.CancelScope()

    async def receive() -> None:
        with scope:
            answer = await fake_sqs.call(
                "ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 20, "VisibilityTimeout": 5}
            )
            returned.extend(answer.get("Messages", []))

    async with trio.open_nursery() as nursery:
        if point.startswith("before"):
            scope.cancel()
        nursery.start_soon(receive)
        await trio.sleep(1)
        if point == "waiting":
            scope.cancel()
            await trio.sleep(1)
        if point != "before-with-message":
            await fake_sqs.call("SendMessage", {"QueueUrl": url, "MessageBody": "m"})
        if point == "handed-over":
            scope.cancel()  # the same step: the answer is already on its way
    sent_at = now()
    assert queue.deliveries == 1 and queue.counts() == trio_sqs.testing.QueueCounts(0, 1, 0)
    assert len(returned) + queue.orphaned_deliveries == 1
    assert len(returned) == (1 if point == "handed-over" else 0)
    # The lease ends 5 s after the delivery; then the message is back, once.
    taken_at = start if point == "before-with-message" else sent_at
    await trio.sleep_until(taken_at + 5)
    assert queue.counts() == trio_sqs.testing.QueueCounts(1, 0, 0)
    # The abandoned poll (if any) ended at its deadline, and took nothing after it.
    await trio.sleep_until(start + 20)
    assert queue.waiting_polls == 0
    await fake_sqs.call("SendMessage", {"QueueUrl": url, "MessageBody": "later"})
    assert queue.deliveries == 1 and queue.counts() == trio_sqs.testing.QueueCounts(2, 0, 0)


async def test_requests_are_counted_per_queue_at_arrival(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: trio_sqs.SQSClient
) -> None:
    url = await fake_sqs_client.create_queue(unique())
    other = await fake_sqs_client.create_queue(unique())
    await fake_sqs_client.get_queue_url(fake_sqs.queue(url).name)
    await fake_sqs_client.send_message(url, "one")
    fake_sqs.faults.fail("ReceiveMessage", status=400, code="InvalidParameterValue")
    with pytest.raises(trio_sqs.ServiceError):
        await fake_sqs_client.receive_messages(url, wait_time=0)
    await fake_sqs_client.send_message(other, "two")
    assert fake_sqs.queue(url).call_counts == {
        "CreateQueue": 1,
        "GetQueueUrl": 1,
        "SendMessage": 1,
        "ReceiveMessage": 1,  # counted although a scripted fault answered it
    }
    assert fake_sqs.queue(other).call_counts == {"CreateQueue": 1, "SendMessage": 1}


def test_scripted_errors_must_be_ones_a_server_could_send() -> None:
    fake = FakeSQS()
    for status in (200, 302, 999):
        with pytest.raises(ValueError, match="status"):
            fake.faults.fail("SendMessage", status=status)
    for code in ("Bad\r\nInjected: 1", "Euro€", ""):
        with pytest.raises(ValueError, match="code"):
            fake.faults.fail("SendMessage", code=code)
    with pytest.raises(ValueError, match="status"):
        fake.faults.fail("SendMessage", status=450.5)  # type: ignore[arg-type]
    assert fake.faults.pending == []


@pytest.mark.parametrize(
    ("script", "says"),
    [
        # a typo matched nothing, and a test built on it passed without its fault
        (lambda f: f.fail("SendMesage"), "did you mean 'SendMessage'"),
        (lambda f: f.delay(123, 1), "operation must be one of SQS's"),
        # these were taken, then raised in the request that met them, after it took effect
        (lambda f: f.delay("SendMessage", -1), "seconds must be a finite number"),
        (lambda f: f.delay("SendMessage", math.nan), "seconds must be a finite number"),
        (lambda f: f.delay("SendMessage", math.inf), "seconds must be a finite number"),
        (lambda f: f.delay("SendMessage", "5"), "seconds must be a finite number"),
        (lambda f: f.delay("SendMessage", True), "seconds must be a finite number"),
        (lambda f: f.stall("SendMessage", times=1.5), "times must be an integer"),
        (lambda f: f.drop("SendMessage", times=0), "times must be an integer"),
        (lambda f: f.drop("SendMessage", after="no"), "after must be True or False"),
    ],
)
def test_faults_refuse_what_would_pass_vacuously_or_fail_later(
    script: Callable[[Any], object], says: str
) -> None:
    fake = FakeSQS()
    with pytest.raises(ValueError, match=re.escape(says)):
        script(fake.faults)
    assert fake.faults.pending == []


async def test_an_empty_binary_attribute_is_refused(
    autojump_clock: Any, fake_sqs_client: trio_sqs.SQSClient, fake_queue_url: str
) -> None:
    with pytest.raises(trio_sqs.ServiceError, match="non-empty value of type 'Binary'"):
        await fake_sqs_client.send_message(
            fake_queue_url,
            "x",
            message_attributes={"blob": trio_sqs.MessageAttributeValue.binary(b"")},
        )
