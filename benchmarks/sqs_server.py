"""A stateful SQS server speaking the JSON protocol, for consumer benchmarks. Standard library only.

Unlike ``fake_sqs_server.py`` (canned answers), this one keeps real queues, so that consumers can
be measured end to end: messages are sent, received, hidden, deleted, released and redelivered
with SQS's semantics, and every request is counted per operation and per queue.

Operations (``X-Amz-Target: AmazonSQS.<Operation>``, ``application/x-amz-json-1.0``):
CreateQueue, GetQueueUrl, GetQueueAttributes, ListQueues, DeleteQueue, PurgeQueue, SendMessage,
SendMessageBatch, ReceiveMessage, DeleteMessage, DeleteMessageBatch, ChangeMessageVisibility and
ChangeMessageVisibilityBatch. Standard queues only (a ``.fifo`` name is refused).

Semantics, as SQS has them:

- ReceiveMessage honours MaxNumberOfMessages (1-10), WaitTimeSeconds (long polling: the answer
  comes as soon as at least one message is available, or empty when the wait ends; default the
  queue's ReceiveMessageWaitTimeSeconds), VisibilityTimeout (default the queue's) and the
  attributes asked for (``MessageSystemAttributeNames`` or the older ``AttributeNames``: SenderId,
  SentTimestamp, ApproximateReceiveCount, ApproximateFirstReceiveTimestamp; ``MessageAttributeNames``
  with ``All``, ``.*``, exact names or ``prefix.*``). Every message carries a correct MD5OfBody;
  MD5OfMessageAttributes is the digest of the attributes returned.
- Each receive hands out a new receipt handle (about 350 characters, like SQS's). A message stays
  invisible for its visibility timeout, then becomes receivable again with a higher
  ApproximateReceiveCount. ChangeMessageVisibility(Batch) changes the timeout of an in-flight
  message (0 makes it visible at once); on a message no longer in flight it fails with
  ``AWS.SimpleQueueService.MessageNotInflight``. Deleting an already deleted message succeeds.
  A handle that is not one of ours fails with ``ReceiptHandleIsInvalid``.
- A long poll whose client went away (connection closed) runs on for the rest of its
  WaitTimeSeconds, and the messages it takes stay invisible for their visibility timeout: this is
  what SQS does (DESIGN.md 2.2), so consumers that abort polls pay for it here as they would there.
- SendMessage(Batch) honour DelaySeconds and message attributes (String, Number, Binary).
- Errors are JSON-protocol errors with SQS's ``__type`` and ``x-amzn-query-error`` header.

Queue operations are O(1): a deque of visible messages, a dict of in-flight messages by receipt
handle, and a heap of visibility (and delay) deadlines that is consulted lazily. No signatures
are checked.

Non-SQS endpoints: ``GET /stats`` returns JSON with the requests counted per operation (overall
and per queue), each queue's visible / in-flight / delayed counts and waiting polls, and the
server's own CPU time; ``GET /stats?queue=NAME`` returns one queue.

Run: ``python benchmarks/sqs_server.py [--host 127.0.0.1] [--port 0] [--cpu N]``. The first line on
stdout is the port. It exits when its stdin reaches end of file (its parent went away) or on
SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import email.utils
import hashlib
import heapq
import itertools
import json
import os
import resource
import signal
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

ACCOUNT = "123456789012"
REGION = "us-east-1"
SENDER_ID = "AIDAIENQZJOLO23YVJ4VO"
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_BODY_BYTES = 1024 * 1024
SYSTEM_ATTRIBUTES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
)
QUEUE_ATTRIBUTE_NAMES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "DelaySeconds",
    "LastModifiedTimestamp",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "QueueArn",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "SqsManagedSseEnabled",
)
SETTABLE_ATTRIBUTES = {
    "DelaySeconds": (0, 900),
    "MaximumMessageSize": (1024, MAX_BODY_BYTES),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 20),
    "VisibilityTimeout": (0, 43_200),
}
# Real receipt handles are opaque base64 of a few hundred bytes; ours carry what we need to
# recognise one (queue, message id, receive number) followed by filler of a realistic length.
_HANDLE_PREFIX = "AQEB"
_HANDLE_FILLER = hashlib.sha512(b"sqs-bench-receipt").digest() * 3

VISIBLE, IN_FLIGHT, DELAYED, DELETED = range(4)


class SQSError(Exception):
    """An error answered in SQS's JSON protocol: ``__type`` plus the legacy query code."""

    def __init__(self, type_name: str, query_code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.query_code = query_code
        self.message = message
        self.status = status


def invalid_parameter(message: str) -> SQSError:
    return SQSError("InvalidParameterValue", "InvalidParameterValue", message)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: dict[str, dict[str, Any]]) -> str:
    """SQS's digest of message attributes: sorted names, length-prefixed name, type and value."""
    buf = bytearray()
    for name in sorted(attributes):
        value = attributes[name]
        data_type = value["DataType"].encode()
        encoded = name.encode()
        buf += struct.pack(">I", len(encoded)) + encoded
        buf += struct.pack(">I", len(data_type)) + data_type
        if "BinaryValue" in value:
            raw = base64.b64decode(value["BinaryValue"])
            buf += b"\x02"
        else:
            raw = str(value["StringValue"]).encode()
            buf += b"\x01"
        buf += struct.pack(">I", len(raw)) + raw
    return md5_hex(bytes(buf))


@dataclass(slots=True, eq=False)
class StoredMessage:
    message_id: str
    body: str
    md5_of_body: str
    attributes: dict[str, dict[str, Any]] | None
    md5_of_attributes: str | None
    sent_ms: int
    state: int = VISIBLE
    receive_count: int = 0
    first_receive_ms: int = 0
    receipt: str | None = None
    due: float = 0.0  # monotonic deadline while in flight or delayed


@dataclass(slots=True)
class WaitingPoll:
    future: asyncio.Future[None]


@dataclass(eq=False)
class Queue:
    name: str
    url: str
    attributes: dict[str, int]
    created: float = field(default_factory=time.time)
    visible: collections.deque[StoredMessage] = field(default_factory=collections.deque)
    in_flight: dict[str, StoredMessage] = field(default_factory=dict)
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    # (deadline, sequence, message): an entry is stale when the message moved on since.
    timers: list[tuple[float, int, StoredMessage]] = field(default_factory=list)
    delayed: int = 0
    # Messages deleted (by an old receipt handle) while waiting in ``visible``: skipped lazily.
    stale_visible: int = 0
    waiters: collections.deque[WaitingPoll] = field(default_factory=collections.deque)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    sent: int = 0
    deliveries: int = 0
    deleted: int = 0
    empty_receives: int = 0
    receives_since: int = 0
    receipts: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.name}"

    # -- the heap of deadlines ---------------------------------------------------------------

    def _schedule(self, message: StoredMessage, due: float, seq: int) -> None:
        message.due = due
        heapq.heappush(self.timers, (due, seq, message))

    def expire(self, now: float) -> int:
        """Make visible every in-flight or delayed message whose deadline passed; return how many."""
        woken = 0
        timers = self.timers
        while timers and timers[0][0] <= now:
            due, _, message = heapq.heappop(timers)
            if message.due != due or message.state not in (IN_FLIGHT, DELAYED):
                continue  # stale: the message was deleted, or its deadline moved
            if message.state == IN_FLIGHT:
                assert message.receipt is not None
                del self.in_flight[message.receipt]
                message.receipt = None
                # Redelivered first: it is older than what is queued behind it.
                self.visible.appendleft(message)
            else:
                self.delayed -= 1
                self.visible.append(message)
            message.state = VISIBLE
            woken += 1
        return woken

    @property
    def visible_count(self) -> int:
        return len(self.visible) - self.stale_visible

    def next_deadline(self) -> float | None:
        return self.timers[0][0] if self.timers else None

    # -- operations --------------------------------------------------------------------------

    def add(self, message: StoredMessage, delay: int, now: float, seq: int) -> None:
        self.messages[message.message_id] = message
        self.sent += 1
        if delay > 0:
            message.state = DELAYED
            self.delayed += 1
            self._schedule(message, now + delay, seq)
        else:
            self.visible.append(message)

    def take(self, count: int, visibility: int, now: float, seq: Callable[[], int]) -> list[str]:
        """Receive up to ``count`` messages; return their new receipt handles."""
        self.expire(now)
        handles: list[str] = []
        visible = self.visible
        now_ms = int(time.time() * 1000)
        while visible and len(handles) < count:
            message = visible.popleft()
            if message.state != VISIBLE:
                self.stale_visible -= 1  # deleted while visible (a late delete, old handle)
                continue
            message.state = IN_FLIGHT
            message.receive_count += 1
            if message.receive_count == 1:
                message.first_receive_ms = now_ms
            number = next(self.receipts)
            raw = f"{self.name}\x1f{message.message_id}\x1f{number}\x1f".encode() + _HANDLE_FILLER
            receipt = _HANDLE_PREFIX + base64.b64encode(raw[:256]).decode()
            message.receipt = receipt
            self.in_flight[receipt] = message
            self._schedule(message, now + visibility, seq())
            handles.append(receipt)
        self.deliveries += len(handles)
        return handles

    def lookup(self, receipt: str) -> StoredMessage | None:
        """The in-flight message of a handle, or None for a valid handle of a message that is
        gone or no longer in flight; raise for a handle that is not one of ours."""
        message = self.in_flight.get(receipt)
        if message is not None:
            return message
        decoded = decode_receipt(receipt)
        if decoded is None or decoded[0] != self.name:
            raise SQSError(
                "ReceiptHandleIsInvalid",
                "ReceiptHandleIsInvalid",
                f'The input receipt handle "{receipt}" is not a valid receipt handle.',
            )
        return None

    def delete(self, receipt: str) -> None:
        message = self.in_flight.pop(receipt, None)
        if message is None:
            self.lookup(receipt)  # raises for a foreign handle
            decoded = decode_receipt(receipt)
            assert decoded is not None
            # An old handle of a message that is still around: SQS deletes it all the same.
            message = self.messages.get(decoded[1])
            if message is None:
                return  # already deleted: success, as in SQS
            if message.state == IN_FLIGHT:
                assert message.receipt is not None
                del self.in_flight[message.receipt]
            elif message.state == DELAYED:
                self.delayed -= 1
            elif message.state == VISIBLE:
                self.stale_visible += 1
        del self.messages[message.message_id]
        message.state = DELETED
        message.receipt = None
        self.deleted += 1

    def change_visibility(self, receipt: str, timeout: int, now: float, seq: int) -> bool:
        """Return True when the message became visible at once (a waiting poll may take it)."""
        message = self.lookup(receipt)
        if message is None:
            decoded = decode_receipt(receipt)
            assert decoded is not None
            if decoded[1] not in self.messages:
                raise SQSError(
                    "ReceiptHandleIsInvalid",
                    "ReceiptHandleIsInvalid",
                    "The input receipt handle is invalid.",
                )
            raise SQSError(
                "MessageNotInflight",
                "AWS.SimpleQueueService.MessageNotInflight",
                f"Value {receipt} for parameter ReceiptHandle is invalid. Reason: Message does "
                "not exist or is not available for visibility timeout change.",
            )
        if timeout == 0:
            del self.in_flight[receipt]
            message.receipt = None
            message.state = VISIBLE
            message.due = 0.0
            self.visible.appendleft(message)
            return True
        self._schedule(message, now + timeout, seq)
        return False

    def purge(self) -> None:
        for message in self.messages.values():
            message.state = DELETED
        self.messages.clear()
        self.visible.clear()
        self.in_flight.clear()
        self.timers.clear()
        self.delayed = 0
        self.stale_visible = 0

    def wake(self, count: int) -> None:
        """Wake up to ``count`` waiting long polls (each re-checks the queue)."""
        while count > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                count -= 1

    def snapshot(self, now: float) -> dict[str, Any]:
        self.expire(now)
        return {
            "visible": self.visible_count,
            "in_flight": len(self.in_flight),
            "delayed": self.delayed,
            "waiting_polls": sum(1 for w in self.waiters if not w.future.done()),
            "sent": self.sent,
            "deliveries": self.deliveries,
            "deleted": self.deleted,
            "empty_receives": self.empty_receives,
            "requests": dict(self.requests),
        }


def decode_receipt(receipt: str) -> tuple[str, str] | None:
    """(queue name, message id) of one of our receipt handles, or None."""
    if not receipt.startswith(_HANDLE_PREFIX):
        return None
    try:
        raw = base64.b64decode(receipt[len(_HANDLE_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    parts = raw.split(b"\x1f", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    try:
        return parts[0].decode(), parts[1].decode()
    except UnicodeDecodeError:
        return None


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: must be between {low} "
            f"and {high}, if provided."
        )
    return value


def _check_entries(params: dict[str, Any], entry_name: str) -> list[dict[str, Any]]:
    entries = params.get("Entries")
    if not isinstance(entries, list) or not entries:
        raise SQSError(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            f"There should be at least one {entry_name} in the request.",
        )
    if len(entries) > 10:
        raise SQSError(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are 10. You have sent {len(entries)}.",
        )
    ids = [e.get("Id") for e in entries]
    if len(set(ids)) != len(ids):
        raise SQSError(
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            "Two or more batch entries in the request have the same Id.",
        )
    return entries


def _failure(entry_id: str, exc: SQSError) -> dict[str, Any]:
    return {"Id": entry_id, "SenderFault": True, "Code": exc.query_code, "Message": exc.message}


def _wanted_attributes(names: list[str] | None) -> tuple[str, ...]:
    if not names:
        return ()
    if "All" in names:
        return SYSTEM_ATTRIBUTES
    return tuple(n for n in SYSTEM_ATTRIBUTES if n in names)


def _select_user_attributes(
    attributes: dict[str, dict[str, Any]], names: list[str]
) -> dict[str, dict[str, Any]]:
    if "All" in names or ".*" in names:
        return attributes
    prefixes = tuple(n[:-2] for n in names if n.endswith(".*"))
    exact = set(names)
    return {
        k: v for k, v in attributes.items() if k in exact or (prefixes and k.startswith(prefixes))
    }


class SQSState:
    """Every queue, the counters, and the operations' logic (independent of HTTP)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.queues: dict[str, Queue] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.started = time.monotonic()
        self._seq = itertools.count()
        self.loop = asyncio.get_running_loop()
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "CreateQueue": self.create_queue,
            "GetQueueUrl": self.get_queue_url,
            "GetQueueAttributes": self.get_queue_attributes,
            "ListQueues": self.list_queues,
            "DeleteQueue": self.delete_queue,
            "PurgeQueue": self.purge_queue,
            "SendMessage": self.send_message,
            "SendMessageBatch": self.send_message_batch,
            "ReceiveMessage": self.receive_message,
            "DeleteMessage": self.delete_message,
            "DeleteMessageBatch": self.delete_message_batch,
            "ChangeMessageVisibility": self.change_message_visibility,
            "ChangeMessageVisibilityBatch": self.change_message_visibility_batch,
        }

    def seq(self) -> int:
        return next(self._seq)

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, operation: str, params: dict[str, Any]) -> Any:
        """The result dict of an operation, or an awaitable of it (a long poll that waits)."""
        self.requests[operation] += 1
        handler = self.handlers.get(operation)
        if handler is None:
            raise SQSError(
                "UnsupportedOperation",
                "AWS.SimpleQueueService.UnsupportedOperation",
                f"{operation} is not supported by this benchmark server.",
            )
        name = params.get("QueueName") if operation in ("CreateQueue", "GetQueueUrl") else None
        if name is None and isinstance(params.get("QueueUrl"), str):
            name = params["QueueUrl"].rstrip("/").rpartition("/")[2]
        if isinstance(name, str) and name in self.queues:
            self.queues[name].requests[operation] += 1
        return handler(params)

    def queue(self, params: dict[str, Any]) -> Queue:
        url = params.get("QueueUrl")
        if not isinstance(url, str):
            raise SQSError("MissingParameter", "MissingParameter", "QueueUrl is required.")
        queue = self.queues.get(url.rstrip("/").rpartition("/")[2])
        if queue is None:
            raise SQSError(
                "QueueDoesNotExist",
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
            )
        return queue

    # -- queues ------------------------------------------------------------------------------

    def create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("QueueName")
        if not isinstance(name, str) or not name or len(name) > 80:
            raise invalid_parameter("Queue name must be 1 to 80 characters.")
        if name.endswith(".fifo") or params.get("Attributes", {}).get("FifoQueue") == "true":
            raise invalid_parameter("FIFO queues are not supported by this benchmark server.")
        if not all(c.isalnum() or c in "-_" for c in name):
            raise invalid_parameter(
                "Can only include alphanumeric characters, hyphens, or underscores. "
                "1 to 80 in length"
            )
        queue = self.queues.get(name)
        if queue is None:
            attributes = {"DelaySeconds": 0, "MaximumMessageSize": MAX_BODY_BYTES}
            attributes |= {"MessageRetentionPeriod": 345_600, "ReceiveMessageWaitTimeSeconds": 0}
            attributes["VisibilityTimeout"] = 30
            for key, raw in (params.get("Attributes") or {}).items():
                if key not in SETTABLE_ATTRIBUTES:
                    raise SQSError(
                        "InvalidAttributeName", "InvalidAttributeName", f"Unknown Attribute {key}."
                    )
                low, high = SETTABLE_ATTRIBUTES[key]
                try:
                    value = int(raw)
                except ValueError:
                    value = -1
                if not low <= value <= high:
                    raise SQSError(
                        "InvalidAttributeValue",
                        "InvalidAttributeValue",
                        f"Invalid value for the parameter {key}.",
                    )
                attributes[key] = value
            queue = Queue(name, f"{self.endpoint}/{ACCOUNT}/{name}", attributes)
            self.queues[name] = queue
            queue.requests["CreateQueue"] += 1
        return {"QueueUrl": queue.url}

    def get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queues.get(str(params.get("QueueName")))
        if queue is None:
            raise SQSError(
                "QueueDoesNotExist",
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
            )
        return {"QueueUrl": queue.url}

    def get_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        names = params.get("AttributeNames") or []
        queue.expire(self.loop.time())
        values = {
            "ApproximateNumberOfMessages": queue.visible_count,
            "ApproximateNumberOfMessagesNotVisible": len(queue.in_flight),
            "ApproximateNumberOfMessagesDelayed": queue.delayed,
            "CreatedTimestamp": int(queue.created),
            "LastModifiedTimestamp": int(queue.created),
            "QueueArn": queue.arn,
            "SqsManagedSseEnabled": "true",
        } | queue.attributes
        wanted: tuple[str, ...]
        if "All" in names:
            wanted = QUEUE_ATTRIBUTE_NAMES
        else:
            # FifoQueue, ContentBasedDeduplication...: standard queues have none of these.
            wanted = tuple(n for n in QUEUE_ATTRIBUTE_NAMES if n in names)
        attributes = {n: str(values[n]) for n in wanted}
        return {"Attributes": attributes} if attributes else {}

    def list_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("QueueNamePrefix") or ""
        urls = [q.url for name, q in sorted(self.queues.items()) if name.startswith(prefix)]
        return {"QueueUrls": urls[:1000]} if urls else {}

    def delete_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        queue.purge()
        queue.wake(len(queue.waiters))
        del self.queues[queue.name]
        return {}

    def purge_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        self.queue(params).purge()
        return {}

    # -- sending -----------------------------------------------------------------------------

    def _store(self, queue: Queue, entry: dict[str, Any]) -> dict[str, Any]:
        body = entry.get("MessageBody")
        if not isinstance(body, str) or not body:
            raise SQSError(
                "MissingParameter",
                "MissingParameter",
                "The request must contain the parameter MessageBody.",
            )
        encoded = body.encode()
        if len(encoded) > queue.attributes["MaximumMessageSize"]:
            raise invalid_parameter(
                f"One or more parameters are invalid. Reason: Message must be shorter than "
                f"{queue.attributes['MaximumMessageSize']} bytes."
            )
        delay = _int_param(entry, "DelaySeconds", queue.attributes["DelaySeconds"], 0, 900)
        attributes = entry.get("MessageAttributes") or None
        digest = None
        if attributes:
            for name, value in attributes.items():
                if not isinstance(value, dict) or "DataType" not in value:
                    raise invalid_parameter(f"The message attribute '{name}' must have a type.")
                if ("StringValue" in value) == ("BinaryValue" in value):
                    raise invalid_parameter(
                        f"The message attribute '{name}' must contain exactly one value."
                    )
            digest = md5_of_attributes(attributes)
        message = StoredMessage(
            message_id=str(uuid.uuid4()),
            body=body,
            md5_of_body=md5_hex(encoded),
            attributes=attributes,
            md5_of_attributes=digest,
            sent_ms=int(time.time() * 1000),
        )
        queue.add(message, delay, self.loop.time(), self.seq())
        result = {"MessageId": message.message_id, "MD5OfMessageBody": message.md5_of_body}
        if digest is not None:
            result["MD5OfMessageAttributes"] = digest
        return result

    def send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        result = self._store(queue, params)
        queue.wake(1)
        return result

    def send_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        entries = _check_entries(params, "SendMessageBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                successful.append({"Id": entry["Id"]} | self._store(queue, entry))
            except SQSError as exc:
                failed.append(_failure(entry["Id"], exc))
        queue.wake(len(successful))
        return {"Successful": successful, "Failed": failed}

    # -- receiving ---------------------------------------------------------------------------

    def receive_message(self, params: dict[str, Any]) -> Any:
        queue = self.queue(params)
        count = _int_param(params, "MaxNumberOfMessages", 1, 1, 10)
        wait = _int_param(
            params, "WaitTimeSeconds", queue.attributes["ReceiveMessageWaitTimeSeconds"], 0, 20
        )
        visibility = _int_param(
            params, "VisibilityTimeout", queue.attributes["VisibilityTimeout"], 0, 43_200
        )
        system = _wanted_attributes(
            params.get("MessageSystemAttributeNames") or params.get("AttributeNames")
        )
        user = params.get("MessageAttributeNames") or []
        handles = queue.take(count, visibility, self.loop.time(), self.seq)
        if handles or wait == 0:
            return self._received(queue, handles, system, user)
        return self._long_poll(queue, count, visibility, wait, system, user)

    async def _long_poll(
        self,
        queue: Queue,
        count: int,
        visibility: int,
        wait: int,
        system: tuple[str, ...],
        user: list[str],
    ) -> dict[str, Any]:
        loop = self.loop
        deadline = loop.time() + wait
        while True:
            now = loop.time()
            handles = queue.take(count, visibility, now, self.seq)
            if handles or now >= deadline or self.queues.get(queue.name) is not queue:
                return self._received(queue, handles, system, user)
            timeout = deadline - now
            next_due = queue.next_deadline()
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - now))
            waiter = WaitingPoll(loop.create_future())
            queue.waiters.append(waiter)
            timer = loop.call_later(timeout, _resolve, waiter.future)
            try:
                await waiter.future
            finally:
                timer.cancel()
                if not waiter.future.done():
                    waiter.future.cancel()
                try:
                    queue.waiters.remove(waiter)
                except ValueError:
                    pass  # already taken off by wake()

    def _received(
        self, queue: Queue, handles: list[str], system: tuple[str, ...], user: list[str]
    ) -> dict[str, Any]:
        if not handles:
            queue.empty_receives += 1
            return {}
        messages = []
        for receipt in handles:
            stored = queue.in_flight.get(receipt)
            if stored is None:  # deleted between take and answer: impossible here, but be safe
                continue
            message: dict[str, Any] = {
                "MessageId": stored.message_id,
                "ReceiptHandle": receipt,
                "MD5OfBody": stored.md5_of_body,
                "Body": stored.body,
            }
            if system:
                values = {
                    "SenderId": SENDER_ID,
                    "SentTimestamp": str(stored.sent_ms),
                    "ApproximateReceiveCount": str(stored.receive_count),
                    "ApproximateFirstReceiveTimestamp": str(stored.first_receive_ms),
                }
                message["Attributes"] = {n: values[n] for n in system}
            if user and stored.attributes:
                chosen = _select_user_attributes(stored.attributes, user)
                if chosen:
                    message["MD5OfMessageAttributes"] = (
                        stored.md5_of_attributes
                        if chosen is stored.attributes
                        else md5_of_attributes(chosen)
                    )
                    message["MessageAttributes"] = chosen
            messages.append(message)
        return {"Messages": messages}

    # -- deleting and changing visibility ----------------------------------------------------

    def delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        self.queue(params).delete(str(params.get("ReceiptHandle")))
        return {}

    def delete_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        entries = _check_entries(params, "DeleteMessageBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                queue.delete(str(entry.get("ReceiptHandle")))
                successful.append({"Id": entry["Id"]})
            except SQSError as exc:
                failed.append(_failure(entry["Id"], exc))
        return {"Successful": successful, "Failed": failed}

    def change_message_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        timeout = _int_param(params, "VisibilityTimeout", -1, 0, 43_200)
        if queue.change_visibility(
            str(params.get("ReceiptHandle")), timeout, self.loop.time(), self.seq()
        ):
            queue.wake(1)
        return {}

    def change_message_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(params)
        entries = _check_entries(params, "ChangeMessageVisibilityBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        now = self.loop.time()
        visible = 0
        for entry in entries:
            try:
                timeout = _int_param(entry, "VisibilityTimeout", -1, 0, 43_200)
                if queue.change_visibility(
                    str(entry.get("ReceiptHandle")), timeout, now, self.seq()
                ):
                    visible += 1
                successful.append({"Id": entry["Id"]})
            except SQSError as exc:
                failed.append(_failure(entry["Id"], exc))
        queue.wake(visible)
        return {"Successful": successful, "Failed": failed}

    # -- statistics --------------------------------------------------------------------------

    def stats(self, queue_name: str | None) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = self.loop.time()
        result: dict[str, Any] = {
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "uptime": time.monotonic() - self.started,
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
        }
        if queue_name is not None:
            queue = self.queues.get(queue_name)
            result["queue"] = queue.snapshot(now) if queue is not None else None
        else:
            result["queues"] = {name: q.snapshot(now) for name, q in self.queues.items()}
        return result


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class HTTPServer:
    """HTTP/1.1 framing, headers and error bodies around :class:`SQSState`."""

    def __init__(self, state: SQSState) -> None:
        self.state = state
        self.tasks: set[asyncio.Task[None]] = set()
        self._date_second = -1
        self._date = b""

    def _date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    def response(
        self,
        status: bytes,
        payload: bytes,
        content_type: bytes = b"application/x-amz-json-1.0",
        extra: bytes = b"",
    ) -> bytes:
        return b"".join(
            (
                b"HTTP/1.1 ",
                status,
                b"\r\nx-amzn-RequestId: ",
                str(uuid.uuid4()).encode(),
                b"\r\nDate: ",
                self._date_header(),
                b"\r\nContent-Type: ",
                content_type,
                b"\r\nContent-Length: ",
                str(len(payload)).encode(),
                b"\r\n",
                extra,
                b"Connection: keep-alive\r\n\r\n",
                payload,
            )
        )

    def ok(self, result: dict[str, Any]) -> bytes:
        return self.response(b"200 OK", json.dumps(result, separators=(",", ":")).encode())

    def error(self, exc: SQSError) -> bytes:
        payload = json.dumps(
            {"__type": f"com.amazonaws.sqs#{exc.type_name}", "message": exc.message}
        ).encode()
        status = b"400 Bad Request" if exc.status == 400 else f"{exc.status} Error".encode()
        extra = b"x-amzn-query-error: " + exc.query_code.encode() + b";Sender\r\n"
        return self.response(status, payload, extra=extra)

    def handle(self, method: bytes, path: bytes, target: bytes, body: bytes) -> Any:
        """Whole response bytes, or an awaitable of them."""
        if method == b"GET" and path.split(b"?")[0] == b"/stats":
            query = parse_qs(path.partition(b"?")[2].decode())
            name = query.get("queue", [None])[0]
            payload = json.dumps(self.state.stats(name)).encode()
            return self.response(b"200 OK", payload, b"application/json")
        if method != b"POST" or not target.startswith(b"AmazonSQS."):
            return self.response(b"404 Not Found", b"{}", b"application/json")
        try:
            params = json.loads(body) if body else {}
            if not isinstance(params, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            return self.error(
                SQSError("SerializationException", "SerializationException", "Bad JSON.")
            )
        try:
            result = self.state.dispatch(target[10:].decode(), params)
        except SQSError as exc:
            return self.error(exc)
        if isinstance(result, dict):
            return self.ok(result)
        return self._later(result)

    async def _later(self, awaitable: Awaitable[dict[str, Any]]) -> bytes:
        try:
            return self.ok(await awaitable)
        except SQSError as exc:
            return self.error(exc)


class HTTPConnection(asyncio.Protocol):
    """One keep-alive connection. Requests are answered in order; a long poll holds the
    connection until it completes (its task runs on even if the connection closes)."""

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        while self._transport is not None and not self._busy:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_REQUEST_BYTES:
                    self._fail(b"431 Request Header Fields Too Large")
                return
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            path = rest.partition(b" ")[0]
            length = 0
            target = b""
            close = False
            expect_continue = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-amz-target":
                    target = value.strip()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
                elif name == b"expect":
                    expect_continue = value.strip().lower() == b"100-continue"
                elif name == b"transfer-encoding":
                    self._fail(b"501 Not Implemented")
                    return
            total = end + 4 + length
            if total > MAX_REQUEST_BYTES:
                self._fail(b"413 Content Too Large")
                return
            if len(self._buffer) < total:
                if expect_continue and len(self._buffer) == end + 4:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            answer = self._server.handle(method, path, target, body)
            if isinstance(answer, bytes):
                self._transport.write(answer)
                if close:
                    self._transport.close()
                    return
            else:
                self._busy = True
                task = asyncio.get_running_loop().create_task(self._finish(answer, close))
                self._server.tasks.add(task)
                task.add_done_callback(self._server.tasks.discard)

    async def _finish(self, answer: Awaitable[bytes], close: bool) -> None:
        response = await answer
        self._busy = False
        if self._transport is None:
            return  # the client went away; what the poll took stays in flight, as in SQS
        self._transport.write(response)
        if close:
            self._transport.close()
        else:
            self._process()

    def _fail(self, status: bytes) -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self._transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    holder: list[HTTPServer] = []
    server = await loop.create_server(
        lambda: HTTPConnection(holder[0]), host, port, reuse_address=True, backlog=256
    )
    bound = server.sockets[0].getsockname()[1]
    holder.append(HTTPServer(SQSState(f"http://{host}:{bound}")))
    print(bound, flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        # End of file on stdin means the parent closed the pipe or died: shut down.
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with server:
        await stop.wait()
    state = holder[0].state
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = max(sum(state.requests.values()), 1)
    print(
        f"sqs_server: {total} requests, CPU {usage.ru_utime + usage.ru_stime:.2f} s "
        f"({(usage.ru_utime + usage.ru_stime) * 1e6 / total:.0f} µs per request)",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stateful SQS JSON-protocol server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (Linux only)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
