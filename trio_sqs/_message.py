"""The message model: what a ReceiveMessage call hands to a handler, and the MD5 checks on it."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from . import _json
from ._exceptions import BatchEntryError, MessageCorruptError

__all__ = [
    "BatchResult",
    "CorruptMessage",
    "Message",
    "MessageAttributeValue",
    "ReceiveResult",
    "SendResult",
    "malformed_message",
    "md5_of_message_attributes",
    "message_from_wire",
    "receive_result_from_json",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MessageAttributeValue:
    """A typed message attribute.

    ``data_type`` is ``"String"``, ``"Number"`` or ``"Binary"``, optionally followed by a custom
    suffix (``"Number.int"``). Exactly one of ``string_value`` and ``binary_value`` is set.
    """

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None

    def __post_init__(self) -> None:
        if (self.string_value is None) == (self.binary_value is None):
            raise ValueError("exactly one of string_value and binary_value must be set")

    @classmethod
    def string(cls, value: str) -> MessageAttributeValue:
        return cls("String", string_value=value)

    @classmethod
    def number(cls, value: int | float | str) -> MessageAttributeValue:
        return cls("Number", string_value=str(value))

    @classmethod
    def binary(cls, value: bytes) -> MessageAttributeValue:
        return cls("Binary", binary_value=value)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"DataType": self.data_type}
        if self.binary_value is not None:
            out["BinaryValue"] = self.binary_value
        else:
            out["StringValue"] = self.string_value
        return out


def _ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class Message:
    """One received SQS message. Its body and attributes passed their MD5 checks.

    Attributes:
        message_id: The message id SQS assigned.
        receipt_handle: The handle to delete or change the visibility of this receipt.
        body: The message body.
        md5_of_body: The MD5 digest SQS sent with the body (verified).
        queue_url: The URL of the queue it was received from.
        attributes: System attributes as sent by SQS (strings), e.g. ``ApproximateReceiveCount``.
        message_attributes: User message attributes.
        md5_of_message_attributes: The digest of the message attributes (verified), or ``None``.
    """

    message_id: str
    receipt_handle: str
    body: str
    md5_of_body: str
    queue_url: str
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    message_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=lambda: _EMPTY)
    md5_of_message_attributes: str | None = None

    @property
    def receive_count(self) -> int:
        """``ApproximateReceiveCount`` (1 on the first delivery; 1 if SQS did not send it)."""
        return int(self.attributes.get("ApproximateReceiveCount", "1"))

    @property
    def sent_at(self) -> datetime | None:
        """``SentTimestamp`` as an aware UTC datetime."""
        return _ts(self.attributes.get("SentTimestamp"))

    @property
    def first_received_at(self) -> datetime | None:
        """``ApproximateFirstReceiveTimestamp`` as an aware UTC datetime."""
        return _ts(self.attributes.get("ApproximateFirstReceiveTimestamp"))

    @property
    def message_group_id(self) -> str | None:
        """``MessageGroupId`` (FIFO queues and fair queues)."""
        return self.attributes.get("MessageGroupId")

    @property
    def message_deduplication_id(self) -> str | None:
        return self.attributes.get("MessageDeduplicationId")

    @property
    def sequence_number(self) -> str | None:
        return self.attributes.get("SequenceNumber")

    @property
    def aws_trace_header(self) -> str | None:
        return self.attributes.get("AWSTraceHeader")

    @property
    def sender_id(self) -> str | None:
        return self.attributes.get("SenderId")

    def __repr__(self) -> str:
        # Never put bodies in reprs: they end up in logs.
        return f"Message(message_id={self.message_id!r}, receive_count={self.receive_count})"


@dataclass(frozen=True, slots=True)
class CorruptMessage:
    """A received message that failed its MD5 check. It is never handed to a handler."""

    message_id: str
    receipt_handle: str
    error: MessageCorruptError


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """The outcome of one ReceiveMessage call: the valid messages, and any that were corrupt.

    Iterating over it (or ``len()``) covers only the valid messages.
    """

    messages: tuple[Message, ...]
    corrupt: tuple[CorruptMessage, ...] = ()

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of a batch call: the ids of the entries that succeeded and those that failed."""

    successful: tuple[str, ...]
    failed: tuple[BatchEntryError, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of a SendMessage call (or of one SendMessageBatch entry)."""

    message_id: str
    md5_of_body: str
    sequence_number: str | None = None
    id: str | None = None


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


_length = struct.Struct(">I").pack


def md5_of_message_attributes(attributes: Mapping[str, MessageAttributeValue]) -> str:
    """The digest SQS computes over message attributes (names sorted, length-prefixed fields)."""
    fields = []
    for name in sorted(attributes):
        value = attributes[name]
        if value.binary_value is not None:
            fields.append(_digested(name, value.data_type, True, value.binary_value))
        else:
            raw = (value.string_value or "").encode()
            fields.append(_digested(name, value.data_type, False, raw))
    return _md5_hex(b"".join(fields))


def _digested(name: str, data_type: str, binary: bool, raw: bytes) -> bytes:
    """One attribute as SQS's attribute digest reads it: the name, the type and the value, each
    length-prefixed, the value after a byte saying String (1) or Binary (2)."""
    name_bytes = name.encode()
    type_bytes = data_type.encode()
    return b"".join(
        (
            _length(len(name_bytes)),
            name_bytes,
            _length(len(type_bytes)),
            type_bytes,
            b"\x02" if binary else b"\x01",
            _length(len(raw)),
            raw,
        )
    )


def _corrupt(message_id: str, receipt_handle: str, reason: str) -> CorruptMessage:
    error = MessageCorruptError(reason, message_id=message_id, receipt_handle=receipt_handle)
    return CorruptMessage(message_id, receipt_handle, error)


def malformed_message(raw: object, reason: str) -> CorruptMessage:
    """A :class:`CorruptMessage` for a received entry that is malformed, identified as far as its
    ``MessageId`` and ``ReceiptHandle`` can be read (``"?"`` and ``""`` where they cannot)."""
    message_id, receipt_handle = "?", ""
    if isinstance(raw, Mapping):
        if isinstance(raw.get("MessageId"), str) and raw["MessageId"]:
            message_id = raw["MessageId"]
        if isinstance(raw.get("ReceiptHandle"), str):
            receipt_handle = raw["ReceiptHandle"]
    return _corrupt(message_id, receipt_handle, f"message {message_id} is malformed: {reason}")


class _Malformed(ValueError):
    """A member of a received message is missing or has the wrong shape."""


def message_from_wire(raw: object, queue_url: str) -> Message | CorruptMessage:
    """Build a :class:`Message` from a parsed ReceiveMessage entry, verifying its MD5 digests.

    Returns a :class:`CorruptMessage` instead when a digest does not match or the entry is
    malformed: not a map, an id, handle or body that is not a string, attributes that are not a
    map of strings, a message attribute that is not a map with a ``DataType`` and exactly one
    value of the right type, or a timestamp or receive count that is not a number (one bad
    message must not take a consumer down: every replica would die on it).
    """
    if not isinstance(raw, Mapping):
        return malformed_message(raw, f"a {type(raw).__name__}, not a JSON object")
    try:
        return _from_wire(raw, queue_url)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        reason = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"
        return malformed_message(raw, reason)


def _string(raw: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise _Malformed(f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{name} is a {type(value).__name__}, not a string")
    return value


# System attributes a Message property turns into a number: checked here, so that reading
# ``receive_count`` or ``sent_at`` never raises in a handler.
_NUMERIC_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "ApproximateFirstReceiveTimestamp",
)
_MAX_TIMESTAMP_MS = 253_402_300_800_000  # 10000-01-01 UTC, past what a datetime holds


def _system_attributes(raw: Mapping[str, Any]) -> Mapping[str, str]:
    system = raw.get("Attributes")
    if not system:
        return _EMPTY
    if not isinstance(system, Mapping):
        raise _Malformed(f"Attributes is a {type(system).__name__}, not a map")
    for name, value in system.items():
        if type(value) is not str or type(name) is not str:
            if not isinstance(name, str) or not isinstance(value, str):
                raise _Malformed(f"attribute {name!r} is not a string")
    for name in _NUMERIC_ATTRIBUTES:
        value = system.get(name)
        if value is None:
            continue
        try:
            number = int(value)
        except ValueError as exc:
            raise _Malformed(f"attribute {name} is not a number: {value!r}") from exc
        if name != "ApproximateReceiveCount" and not 0 <= number < _MAX_TIMESTAMP_MS:
            raise _Malformed(f"attribute {name} is not a time: {value!r}")
    return MappingProxyType(dict(system))


def _message_attributes(raw: Mapping[str, Any]) -> Mapping[str, MessageAttributeValue]:
    wire_attrs = raw.get("MessageAttributes")
    if not wire_attrs:
        return _EMPTY
    if not isinstance(wire_attrs, Mapping):
        raise _Malformed(f"MessageAttributes is a {type(wire_attrs).__name__}, not a map")
    attrs: dict[str, MessageAttributeValue] = {}
    for name, value in wire_attrs.items():
        if not isinstance(name, str) or not name:
            raise _Malformed(f"message attribute name {name!r} is not a string")
        if not isinstance(value, Mapping):
            raise _Malformed(f"message attribute {name!r} is a {type(value).__name__}, not a map")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise _Malformed(f"message attribute {name!r} has no DataType")
        string_value = value.get("StringValue")
        binary_value = value.get("BinaryValue")
        if string_value is not None and not isinstance(string_value, str):
            raise _Malformed(f"message attribute {name!r}: StringValue is not a string")
        if binary_value is not None and not isinstance(binary_value, bytes):
            raise _Malformed(f"message attribute {name!r}: BinaryValue is not bytes")
        if (string_value is None) == (binary_value is None):
            raise _Malformed(
                f"message attribute {name!r} needs exactly one of StringValue and BinaryValue"
            )
        attrs[name] = MessageAttributeValue(
            data_type, string_value=string_value, binary_value=binary_value
        )
    return MappingProxyType(attrs)


def _from_wire(raw: Mapping[str, Any], queue_url: str) -> Message | CorruptMessage:
    get = raw.get
    message_id = get("MessageId")
    receipt_handle = get("ReceiptHandle")
    body = get("Body")
    md5_body = get("MD5OfBody")
    md5_attrs = get("MD5OfMessageAttributes")
    if not (  # the usual message: every member a string (else checked one by one, named)
        type(message_id) is str
        and type(receipt_handle) is str
        and type(body) is str
        and type(md5_body) is str
        and (md5_attrs is None or type(md5_attrs) is str)
    ):
        message_id = _string(raw, "MessageId", required=True)
        receipt_handle = _string(raw, "ReceiptHandle", required=True)
        body = _string(raw, "Body", required=False) or ""
        md5_body = _string(raw, "MD5OfBody", required=False) or ""
        md5_attrs = _string(raw, "MD5OfMessageAttributes", required=False)
    assert message_id is not None and receipt_handle is not None
    if not message_id or not receipt_handle:
        raise _Malformed("MessageId and ReceiptHandle must not be empty")
    attrs = _message_attributes(raw)
    system = _system_attributes(raw)
    if _md5_hex(body.encode()) != md5_body:
        return _corrupt(
            message_id, receipt_handle, f"body of message {message_id} does not match its MD5OfBody"
        )
    if attrs and (md5_attrs is None or md5_of_message_attributes(attrs) != md5_attrs):
        return _corrupt(
            message_id,
            receipt_handle,
            f"attributes of message {message_id} do not match MD5OfMessageAttributes",
        )
    return Message(
        message_id=message_id,
        receipt_handle=receipt_handle,
        body=body,
        md5_of_body=md5_body,
        queue_url=queue_url,
        attributes=system,
        message_attributes=attrs,
        md5_of_message_attributes=md5_attrs,
    )


def receive_result_from_json(body: bytes, queue_url: str) -> ReceiveResult | None:
    """The :class:`ReceiveResult` of a successful ReceiveMessage answer, read in one pass.

    It gives exactly what botocore's parser followed by :func:`message_from_wire` gives, for
    answers as SQS sends them: every message a JSON object whose members have the right kinds,
    every digest matching. For anything else (a member of the wrong kind, a null, a digest that
    does not match, a number that is not plain digits, a value that is not base64, a body that is
    not JSON) it returns None, and the caller takes the general path, which sets malformed and
    corrupt messages apart one by one and logs them.
    """
    if not body:
        return ReceiveResult(())
    try:
        document = _json.loads(body)
        if type(document) is not dict:
            return None
        raw_messages = document.get("Messages")
        if raw_messages is None:
            return ReceiveResult(())
        if type(raw_messages) is not list:
            return None
        messages = []
        for raw in raw_messages:
            message = _plain_message(raw, queue_url)
            if message is None:
                return None
            messages.append(message)
    except ValueError:  # (not JSON, not base64: binascii.Error, orjson.JSONDecodeError)
        return None
    return ReceiveResult(tuple(messages))


def _plain_message(raw: Any, queue_url: str) -> Message | None:
    if type(raw) is not dict:
        return None
    get = raw.get
    message_id = get("MessageId")
    receipt_handle = get("ReceiptHandle")
    body = get("Body")
    md5_body = get("MD5OfBody")
    md5_attrs = get("MD5OfMessageAttributes")
    if not (
        type(message_id) is str
        and message_id
        and type(receipt_handle) is str
        and receipt_handle
        and type(body) is str
        and type(md5_body) is str
        and (md5_attrs is None or type(md5_attrs) is str)
    ):
        return None
    if _md5_hex(body.encode()) != md5_body:
        return None
    system: Any = get("Attributes")
    if system:
        if type(system) is not dict:
            return None
        for value in system.values():
            if type(value) is not str:
                return None
        for name in _NUMERIC_ATTRIBUTES:
            value = system.get(name)
            if value is not None:
                if not (value.isascii() and value.isdigit()):
                    return None
                # (int() also refuses more digits than sys.get_int_max_str_digits(): a
                # ValueError, declined, as the general path refuses it)
                number = int(value)
                if name != "ApproximateReceiveCount" and number >= _MAX_TIMESTAMP_MS:
                    return None
        system = MappingProxyType(system)  # (a dict of its own, straight from json.loads)
    elif system is None or type(system) is dict:
        system = _EMPTY
    else:
        return None
    wire: Any = get("MessageAttributes")
    if wire:
        if type(wire) is not dict or md5_attrs is None:
            return None
        attributes: dict[str, MessageAttributeValue] = {}
        fields: list[bytes] = []
        for name in sorted(wire):
            value = wire[name]
            # DataType and exactly one of StringValue and BinaryValue, nothing else
            if type(value) is not dict or len(value) != 2 or not name:
                return None
            data_type = value.get("DataType")
            if type(data_type) is not str or not data_type:
                return None
            string_value = value.get("StringValue")
            binary_value = None
            if string_value is not None:
                if type(string_value) is not str:
                    return None
                fields.append(_digested(name, data_type, False, string_value.encode()))
            else:
                encoded = value.get("BinaryValue")
                if type(encoded) is not str:
                    return None
                binary_value = base64.b64decode(encoded)
                fields.append(_digested(name, data_type, True, binary_value))
            attributes[name] = MessageAttributeValue(data_type, string_value, binary_value)
        if _md5_hex(b"".join(fields)) != md5_attrs:
            return None
        message_attributes: Mapping[str, MessageAttributeValue] = MappingProxyType(attributes)
    elif wire is None or type(wire) is dict:
        message_attributes = _EMPTY
    else:
        return None
    return Message(
        message_id=message_id,
        receipt_handle=receipt_handle,
        body=body,
        md5_of_body=md5_body,
        queue_url=queue_url,
        attributes=system,
        message_attributes=message_attributes,
        md5_of_message_attributes=md5_attrs,
    )
