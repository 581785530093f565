"""The in-memory SQS on the wire: one HTTP request in, one answer out. Decodes SQS's JSON
protocol, checks signatures (optional), applies the scripted faults, and dates and shapes the
answer. Shared by the in-process transport and the HTTP server."""

from __future__ import annotations

import email.utils
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ._errors import FakeError, coral_error
from ._sigv4 import verify_signature

if TYPE_CHECKING:
    from ._service import FakeSQS

__all__ = ["SQS_OPERATIONS", "WireAnswer", "answer"]

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
TARGET_PREFIX = "AmazonSQS."

# Every operation of SQS's API. One the fake does not implement answers UnsupportedOperation;
# a name outside this list answers UnknownOperationException, as AWS's JSON protocol does.
SQS_OPERATIONS = frozenset(
    {
        "AddPermission",
        "CancelMessageMoveTask",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
        "CreateQueue",
        "DeleteMessage",
        "DeleteMessageBatch",
        "DeleteQueue",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "ListMessageMoveTasks",
        "ListQueueTags",
        "ListQueues",
        "PurgeQueue",
        "ReceiveMessage",
        "RemovePermission",
        "SendMessage",
        "SendMessageBatch",
        "SetQueueAttributes",
        "StartMessageMoveTask",
        "TagQueue",
        "UntagQueue",
    }
)


# -- one request, one answer -----------------------------------------------------------------


@dataclass
class WireAnswer:
    """What the server does with one request: answer it, stall after the headers, or drop the
    connection."""

    status: int
    headers: dict[str, str]
    body: bytes
    action: str = "answer"  # "answer", "stall" or "drop"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _is_query_protocol(raw_path: str, content_type: str, body: bytes) -> bool:
    """Whether a request names its action as SQS's query protocol does (``Action=...`` in the
    query string or a form-encoded body)."""
    fields = raw_path.partition("?")[2].split("&")
    if content_type == FORM_CONTENT_TYPE:
        fields += body.decode("latin-1").split("&")
    return any(field.startswith("Action=") for field in fields)


def _decode(
    method: str, raw_path: str, headers: Mapping[str, str], body: bytes
) -> tuple[str, dict[str, Any]]:
    target = headers.get("x-amz-target", "")
    operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if not target and _is_query_protocol(raw_path, content_type, body):
        # SQS would answer this in its query protocol (XML), which the fake does not speak.
        raise coral_error(
            "UnknownOperationException",
            "A query-protocol request (Action=...): this in-memory SQS serves only SQS's JSON "
            f"protocol (POST, X-Amz-Target: {TARGET_PREFIX}<Operation>, Content-Type: "
            f"{JSON_CONTENT_TYPE}).",
        )
    if method != "POST" or operation not in SQS_OPERATIONS:
        raise coral_error(
            "UnknownOperationException",
            f"Unknown operation: X-Amz-Target={target!r} ({method}).",
        )
    if content_type != JSON_CONTENT_TYPE:
        raise coral_error(
            "UnknownOperationException",
            f"Content-Type {content_type!r} is not {JSON_CONTENT_TYPE}: only SQS's JSON protocol "
            "is served.",
        )
    try:
        # Strict UTF-8 (json.loads on bytes also takes UTF-16, UTF-32 and a byte order mark),
        # no NaN or Infinity, and nothing nested too deeply to read.
        params = json.loads(body.decode() if body else "{}", parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise coral_error("SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(params, dict):
        raise coral_error("SerializationException", "The request body is not a JSON object.")
    return operation, params


def _base_headers(fake: FakeSQS) -> dict[str, str]:
    return {
        "Content-Type": JSON_CONTENT_TYPE,
        "x-amzn-RequestId": str(uuid.uuid4()),
        "Date": email.utils.formatdate(fake.wall_clock(), usegmt=True),
    }


def _error_answer(fake: FakeSQS, exc: FakeError) -> WireAnswer:
    headers = _base_headers(fake) | exc.headers()
    return WireAnswer(exc.status, headers, json.dumps(exc.body()).encode())


async def answer(
    fake: FakeSQS, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
) -> WireAnswer:
    """Answer one HTTP request. ``headers`` must have lower-case names.

    Cancellation: an operation that arrived has taken effect (a long poll goes on without its
    client, see :class:`FakeQueue`); cancelling only drops the answer.
    """
    try:
        operation, params = _decode(method, raw_path, headers, body)
        if fake.verify_signatures:
            verify_signature(fake, method, raw_path, headers, body, fake.wall_clock())
    except FakeError as exc:
        await trio.lowlevel.checkpoint()
        return _error_answer(fake, exc)
    fault = fake.faults.take(operation, params)
    fake.arrived(operation, params, fault.kind if fault is not None else None)
    if fault is not None and fault.kind == "drop" and not fault.after:
        await trio.lowlevel.checkpoint()
        return WireAnswer(0, {}, b"", action="drop")
    if fault is not None and fault.kind == "error":
        await trio.lowlevel.checkpoint()
        return _error_answer(
            fake,
            FakeError(
                fault.code,
                fault.message,
                status=fault.status,
                sender_fault=fault.status < 500,
            ),
        )
    try:
        result = await fake.call(operation, params, arrived=True)
    except FakeError as exc:
        return _error_answer(fake, exc)
    if fault is not None and fault.kind == "corrupt_md5" and result.get("Messages"):
        fake.faults.used(fault, operation)
        first = result["Messages"][0]
        result["Messages"][0] = {**first, "MD5OfBody": "0" * 32}
    if fault is not None and fault.kind == "delay":
        try:
            await trio.sleep(fault.seconds)
        except trio.Cancelled:
            fake.answer_abandoned(operation, params, result)
            raise
    if fault is not None and fault.kind == "drop":
        return WireAnswer(0, {}, b"", action="drop")
    answer = WireAnswer(200, _base_headers(fake), json.dumps(result).encode())
    if fault is not None and fault.kind == "stall":
        answer.action = "stall"
    return answer
