"""Reading and validating SQS's JSON-protocol parameters, as SQS does: wrong JSON types get the
answer AWS's JSON protocol gives (``SerializationException``), bad values SQS's own errors. Also
SQS's digest of message attributes. Pure functions, no state."""

from __future__ import annotations

import base64
import binascii
import decimal
import hashlib
import re
import struct
from collections.abc import Mapping
from typing import Any

from ._errors import FakeError, invalid_parameter, missing_parameter

__all__ = [
    "ATTR_NAME",
    "DEDUP_ID",
    "ENTRY_ID",
    "GROUP_ID",
    "INVALID_BODY_CHAR",
    "NUMBER",
    "check_message_attributes",
    "md5_hex",
    "md5_of_attributes",
    "read_entries",
    "read_int",
    "read_list",
    "read_map",
    "read_required_str",
    "read_str",
    "read_str_list",
    "select_attributes",
    "serialization_error",
]

ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
ATTR_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
INVALID_BODY_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
DEDUP_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
# MessageGroupId and ReceiveRequestAttemptId: 1 to 128 alphanumeric or punctuation characters.
GROUP_ID = DEDUP_ID
# A Number attribute: a decimal number, no NaN, infinity or hex.
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """SQS's digest of message attributes in their wire form (binary values base64-encoded):
    names sorted; each name, type and value length-prefixed; a transport byte 1 (string) or 2
    (binary) before the value."""
    buf = bytearray()
    for name in sorted(attributes):
        value = attributes[name]
        for part in (name.encode(), str(value["DataType"]).encode()):
            buf += struct.pack(">I", len(part)) + part
        if "BinaryValue" in value:
            raw = base64.b64decode(value["BinaryValue"])
            buf += b"\x02"
        else:
            raw = str(value["StringValue"]).encode()
            buf += b"\x01"
        buf += struct.pack(">I", len(raw)) + raw
    return md5_hex(bytes(buf))


# -- parameter readers: wrong JSON types get the answer AWS's JSON protocol gives --------------


def serialization_error(name: str, expected: str) -> FakeError:
    return FakeError(
        "SerializationException",
        f"Parameter {name} could not be read as {expected}.",
        namespace="com.amazon.coral.service",
    )


_EXPECTED = {
    "structure": (dict, "a structure"),
    "map": (dict, "a map"),
    "list": (list, "a list"),
    "string": (str, "a string"),
    "blob": (str, "a string"),
    "integer": (int, "an integer"),
    "long": (int, "an integer"),
    "boolean": (bool, "a boolean"),
}


def check_types(shape: Any, value: Any, path: str = "") -> None:
    """Check a request's parameters against the types of the operation's input shape in SQS's
    model, as AWS's JSON protocol reads the whole request before anything runs: a value of the
    wrong type anywhere (a batch entry's included) fails the whole call. ``null`` is absent."""
    if value is None:
        return
    kind = shape.type_name
    expected = _EXPECTED.get(kind)
    if expected is not None:
        python_type, words = expected
        if not isinstance(value, python_type) or (python_type is int and isinstance(value, bool)):
            raise serialization_error(path, words)
    if kind == "structure":
        for name, member in shape.members.items():
            if name in value:
                check_types(member, value[name], f"{path}.{name}" if path else name)
    elif kind == "list":
        for index, item in enumerate(value, 1):
            check_types(shape.member, item, f"{path}.{index}")
    elif kind == "map":
        for key, item in value.items():
            check_types(shape.value, item, f"{path}.{key}")


def read_str(params: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise missing_parameter(name)
        return None
    if not isinstance(value, str):
        raise serialization_error(name, "a string")
    return value


def read_required_str(params: Mapping[str, Any], name: str) -> str:
    value = read_str(params, name)
    assert value is not None
    return value


def read_int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise serialization_error(name, "an integer")
    if not low <= value <= high:
        raise invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: Must be between {low} and "
            f"{high}, if provided."
        )
    return value


def read_list(params: Mapping[str, Any], name: str) -> list[Any]:
    value = params.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise serialization_error(name, "a list")
    return value


def read_str_list(params: Mapping[str, Any], name: str) -> list[str]:
    values = read_list(params, name)
    if not all(isinstance(value, str) for value in values):
        raise serialization_error(name, "a list of strings")
    return values


def read_map(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise serialization_error(name, "a map")
    return value


def read_entries(params: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
    entries = read_list(params, "Entries")
    if not entries:
        raise FakeError(
            "EmptyBatchRequest",
            f"There should be at least one {what} in the request.",
            query_code="AWS.SimpleQueueService.EmptyBatchRequest",
        )
    if len(entries) > 10:
        raise FakeError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are 10. You have sent {len(entries)}.",
            query_code="AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        )
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise serialization_error("Entries", "a list of structures")
        entry_id = entry.get("Id")
        if not isinstance(entry_id, str):
            raise missing_parameter("Id")
        if not ENTRY_ID.match(entry_id):
            raise FakeError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and "
                "underscores. It can be at most 80 letters long.",
                query_code="AWS.SimpleQueueService.InvalidBatchEntryId",
            )
        if entry_id in seen:
            raise FakeError(
                "BatchEntryIdsNotDistinct",
                f"Id {entry_id} repeated.",
                query_code="AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            )
        seen.add(entry_id)
    return entries


def _is_sqs_number(text: str) -> bool:
    """A Number attribute SQS takes: up to 38 significant digits, 0 or a magnitude from 1e-128
    to 1e+126 (SQS's documented range)."""
    if not NUMBER.match(text) or len(text) > 1000:
        return False
    value = decimal.Decimal(text)
    if value.is_zero():
        return True
    # significant digits: trailing zeros trimmed (normalize() would round to 28 digits)
    digits = "".join(map(str, value.as_tuple().digits)).rstrip("0")
    return len(digits) <= 38 and decimal.Decimal("1e-128") <= abs(value) <= decimal.Decimal("1e126")


def check_message_attributes(attributes: dict[str, Any], *, system: bool = False) -> int:
    """Validate message attributes in wire form; return their size in bytes."""
    if len(attributes) > 10:
        raise invalid_parameter(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [10]."
        )
    size = 0
    for name, value in attributes.items():
        if system:
            if name != "AWSTraceHeader":
                raise invalid_parameter(
                    f"Message system attribute name '{name}' is invalid. Reason: only "
                    "AWSTraceHeader is supported."
                )
            if isinstance(value, dict) and value.get("DataType") != "String":
                raise invalid_parameter(
                    "Message system attribute 'AWSTraceHeader' must be of type String."
                )
        elif (
            not ATTR_NAME.match(name)
            or name.lower().startswith(("aws.", "amazon."))
            or ".." in name
            or name.startswith(".")
            or name.endswith(".")
        ):
            raise invalid_parameter(f"Message attribute name '{name}' is invalid.")
        if not isinstance(value, dict):
            raise serialization_error(f"MessageAttributes.{name}", "a structure")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise invalid_parameter(
                f"The message attribute '{name}' must contain non-empty message attribute type."
            )
        if INVALID_BODY_CHAR.search(data_type):
            raise invalid_parameter(f"The type of message attribute '{name}' is invalid.")
        base = data_type.split(".", 1)[0]
        if base not in ("String", "Number", "Binary") or len(data_type) > 256:
            raise invalid_parameter(
                f"The type of message attribute '{name}' is invalid. You must use only the "
                "following supported type prefixes: Binary, Number, String."
            )
        if base == "Binary":
            raw = value.get("BinaryValue")
            if not isinstance(raw, str):
                raise invalid_parameter(
                    f"The message attribute '{name}' with type 'Binary' must use field 'Binary'."
                )
            try:
                decoded = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise serialization_error(
                    f"MessageAttributes.{name}.BinaryValue", "base64"
                ) from exc
            if not decoded:
                raise invalid_parameter(
                    f"Message (user) attribute '{name}' must contain a non-empty value of type "
                    "'Binary'."
                )
            size += len(decoded)
        else:
            text = value.get("StringValue")
            if not isinstance(text, str):
                raise invalid_parameter(
                    f"The message attribute '{name}' with type '{base}' must use field 'String'."
                )
            if not text:
                raise invalid_parameter(
                    f"Message (user) attribute '{name}' must contain a non-empty value of type "
                    f"'{base}'."
                )
            if base == "Number" and not _is_sqs_number(text):
                raise invalid_parameter(
                    f"Can't cast the value of message (user) attribute '{name}' to a number."
                )
            if INVALID_BODY_CHAR.search(text):
                raise FakeError(
                    "InvalidMessageContents",
                    f"Message attribute '{name}' contains invalid characters.",
                )
            size += len(text.encode())
        size += len(name.encode()) + len(data_type.encode())
    return size


def entry_size(entry: Mapping[str, Any]) -> int:
    """The size SQS counts for one message of a batch, before it is validated: its body and
    its message attributes (name, type and value), as :func:`check_message_attributes` counts
    them. Malformed parts count what they can (the entry fails on its own later)."""

    def utf8(text: object) -> int:
        return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0

    size = utf8(entry.get("MessageBody"))
    attributes = entry.get("MessageAttributes")
    if isinstance(attributes, dict):
        for name, value in attributes.items():
            size += utf8(name)
            if not isinstance(value, dict):
                continue
            size += utf8(value.get("DataType")) + utf8(value.get("StringValue"))
            raw = value.get("BinaryValue")
            if isinstance(raw, str):
                try:
                    size += len(base64.b64decode(raw, validate=True))
                except (binascii.Error, ValueError):
                    pass
    return size


def select_attributes(
    attributes: dict[str, dict[str, Any]], names: list[str]
) -> dict[str, dict[str, Any]]:
    if not names or not attributes:
        return {}
    if "All" in names or ".*" in names:
        return attributes
    prefixes = tuple(n[:-2] for n in names if n.endswith(".*"))
    exact = set(names)
    return {
        k: v for k, v in attributes.items() if k in exact or (prefixes and k.startswith(prefixes))
    }
