"""Helpers for tests of handlers and consumers: a client on a fake, and messages built by hand."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import httpx

from .._client import DEFAULT_CALL_TIMEOUT, SQSClient
from .._config import Limits, RetryPolicy
from .._connect import open_client
from .._message import Message, MessageAttributeValue, md5_of_message_attributes
from ._errors import FakeError
from ._service import MAX_MESSAGE_SIZE, FakeSQS
from ._validate import GROUP_ID, INVALID_BODY_CHAR, check_message_attributes

__all__ = ["make_message", "open_fake_client"]

FAKE_ACCESS_KEY = "testing"
FAKE_SECRET_KEY = "testing"


@asynccontextmanager
async def open_fake_client(
    fake: FakeSQS,
    *,
    limits: Limits | None = None,
    retry: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
) -> AsyncIterator[SQSClient]:
    """An :class:`SQSClient` on ``fake``, in process: the real client (signing, serialization,
    parsing, retries) over the fake's transport, in the fake's region, signing with the first
    key of ``fake.credentials`` (``testing``/``testing`` if it has none: a fake that verifies
    signatures with no key then refuses every call, which is how to test that path).

    It opens without a worker thread (nothing to read: region, endpoint and keys are given), so
    it works inside a test on ``trio.testing.MockClock`` with autojump.

    ``transport`` replaces ``fake.transport()``: a test's own wrapper around it (to watch or
    hold requests on their way) goes here. ``call_timeout`` is :func:`trio_sqs.open_client`'s.

    Cancellation: as :func:`trio_sqs.open_client`.
    """
    access_key, secret = next(iter(fake.credentials.items()), (FAKE_ACCESS_KEY, FAKE_SECRET_KEY))
    async with open_client(
        region=fake.region,
        endpoint_url=fake.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        limits=limits,
        retry=retry,
        use_fips=False,
        use_dualstack=False,
        transport=transport if transport is not None else fake.transport(),
        call_timeout=call_timeout,
    ) as client:
        yield client


def make_message(
    body: str,
    *,
    message_id: str | None = None,
    receipt_handle: str | None = None,
    queue_url: str = "http://sqs.fake.invalid/123456789012/test-queue",
    receive_count: int = 1,
    message_attributes: Mapping[str, MessageAttributeValue | str | int | float | bytes]
    | None = None,
    attributes: Mapping[str, str] | None = None,
    message_group_id: str | None = None,
) -> Message:
    """A :class:`trio_sqs.Message` as a consumer would hand it to a handler, for unit tests of
    handlers that need no queue at all. Digests are computed, so the message is valid.

    ``message_attributes`` values may be plain ``str``, ``int``/``float`` (Number) or ``bytes``
    (Binary). ``attributes`` adds or overrides system attributes.

    Raises:
        TypeError: for an argument of the wrong type (a body, id or handle that is not a
            ``str``, a ``receive_count`` that is not an ``int``, a system attribute that is not
            a ``str``), or an attribute value of a type SQS has no attribute type for.
        ValueError: for what SQS would never deliver, as the in-memory SQS judges it: an empty
            body, one with characters SQS refuses, or over 1 MiB with its attributes;
            attributes SQS refuses (an invalid name, an empty value, a Number SQS cannot hold,
            more than 10); an empty ``message_id`` or ``receipt_handle``; a ``receive_count``
            below 1, or ``attributes`` saying another; a ``message_group_id`` that is not 1 to
            128 letters, digits or punctuation.
    """
    typed: dict[str, MessageAttributeValue] = {}
    for name, value in (message_attributes or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"message attribute names must be str, got {name!r}")
        if isinstance(value, MessageAttributeValue):
            typed[name] = value
        elif isinstance(value, bytes):
            typed[name] = MessageAttributeValue.binary(value)
        elif isinstance(value, bool):
            raise TypeError(f"message attribute {name!r}: bool is not an SQS attribute type")
        elif isinstance(value, (int, float)):
            typed[name] = MessageAttributeValue.number(value)
        elif isinstance(value, str):
            typed[name] = MessageAttributeValue.string(value)
        else:
            raise TypeError(
                f"message attribute {name!r}: expected str, int, float, bytes or "
                f"MessageAttributeValue, got {type(value).__name__}"
            )
    if not isinstance(body, str):
        raise TypeError(f"body must be a str, got {type(body).__name__}")
    for label, text in (
        ("queue_url", queue_url),
        ("message_id", message_id),
        ("receipt_handle", receipt_handle),
        ("message_group_id", message_group_id),
        *((f"attributes[{name!r}]", value) for name, value in (attributes or {}).items()),
    ):
        if (text is not None or label == "queue_url") and not isinstance(text, str):
            raise TypeError(f"{label} must be a str, got {type(text).__name__}")
    if isinstance(receive_count, bool) or not isinstance(receive_count, int):
        raise TypeError(f"receive_count must be an int, got {type(receive_count).__name__}")
    if receive_count < 1:
        raise ValueError(f"receive_count must be at least 1, got {receive_count}")
    said = (attributes or {}).get("ApproximateReceiveCount")
    if said is not None and said != str(receive_count):
        raise ValueError(
            f"attributes say ApproximateReceiveCount {said!r}, receive_count says {receive_count}"
        )
    if not body:
        raise ValueError("the body must not be empty (SQS refuses an empty message)")
    if INVALID_BODY_CHAR.search(body):
        raise ValueError("the body has characters SQS refuses in a message")
    size = len(body.encode()) + _check_attributes(typed)
    if size > MAX_MESSAGE_SIZE:
        raise ValueError(f"the message is {size} bytes with its attributes; SQS takes 1 MiB")
    if message_id == "" or receipt_handle == "":
        raise ValueError("message_id and receipt_handle must not be empty")
    if message_group_id is not None and not GROUP_ID.match(message_group_id):
        raise ValueError(
            "message_group_id must be 1 to 128 letters, digits or punctuation, got "
            f"{message_group_id!r}"
        )
    message_id = message_id if message_id is not None else str(uuid.uuid4())
    system: dict[str, Any] = {
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "SentTimestamp": "1767225600000",
        "ApproximateReceiveCount": str(receive_count),
        "ApproximateFirstReceiveTimestamp": "1767225600000",
    }
    if message_group_id is not None:
        system["MessageGroupId"] = message_group_id
    system.update(attributes or {})
    return Message(
        message_id=message_id,
        receipt_handle=receipt_handle
        if receipt_handle is not None
        else f"fake-receipt-{message_id}",
        body=body,
        md5_of_body=hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        queue_url=queue_url,
        attributes=MappingProxyType(system),
        message_attributes=MappingProxyType(typed),
        md5_of_message_attributes=md5_of_message_attributes(typed) if typed else None,
    )


def _check_attributes(attributes: Mapping[str, MessageAttributeValue]) -> int:
    """Refuse attributes SQS would refuse on send (so never delivers), by the fake's rules;
    return their size as SQS counts it."""
    wire: dict[str, Any] = {}
    for name, value in attributes.items():
        entry: dict[str, Any] = {"DataType": value.data_type}
        if value.binary_value is not None:
            entry["BinaryValue"] = base64.b64encode(value.binary_value).decode("ascii")
        else:
            entry["StringValue"] = value.string_value
        wire[name] = entry
    try:
        return check_message_attributes(wire)
    except FakeError as exc:
        raise ValueError(f"SQS would refuse these message attributes: {exc.message}") from None
