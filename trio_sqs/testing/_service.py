"""The in-memory SQS: queues and the operations of SQS's API, with SQS's validation and errors.

This layer takes and returns the JSON-protocol parameters and results as dictionaries; the wire
(HTTP, signatures, faults) is in ``_wire.py``; reading and validating parameters in
``_validate.py``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .._protocol import load_service_data
from ._errors import FakeError, invalid_parameter, missing_parameter
from ._faults import Faults
from ._moves import MoveTasks
from ._queue import SYSTEM_ATTRIBUTES, FakeQueue, _Message
from ._transport import FakeSQSTransport
from ._validate import (
    DEDUP_ID,
    GROUP_ID,
    INVALID_BODY_CHAR,
    check_message_attributes,
    check_types,
    entry_size,
    md5_hex,
    md5_of_attributes,
    read_entries,
    read_int,
    read_map,
    read_required_str,
    read_str,
    read_str_list,
    select_attributes,
    serialization_error,
)

__all__ = ["FakeSQS", "RecordedCall"]

DEFAULT_ENDPOINT = "http://sqs.fake.invalid"
SENDER_ID = "AIDAIENQZJOLO23YVJ4VO"
MAX_MESSAGE_SIZE = 1_048_576
QUEUE_RECREATE_DELAY = 60.0
PURGE_INTERVAL = 60.0

_STD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_FIFO_NAME = re.compile(r"^[A-Za-z0-9_-]{1,75}\.fifo$")

# Attribute name -> (low, high) for integers, or None for strings checked elsewhere.
_SETTABLE: dict[str, tuple[int, int] | None] = {
    "DelaySeconds": (0, 900),
    "MaximumMessageSize": (1024, MAX_MESSAGE_SIZE),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 20),
    "VisibilityTimeout": (0, 43_200),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400),
    "RedrivePolicy": None,
    "RedriveAllowPolicy": None,
    "Policy": None,
    "KmsMasterKeyId": None,
    "SqsManagedSseEnabled": None,
    "FifoQueue": None,
    "ContentBasedDeduplication": None,
    "DeduplicationScope": None,
    "FifoThroughputLimit": None,
}
_FIFO_ONLY = ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit")
_READ_ONLY = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
)
_DEFAULTS = {
    "DelaySeconds": "0",
    "MaximumMessageSize": str(MAX_MESSAGE_SIZE),
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "0",
    "VisibilityTimeout": "30",
    "SqsManagedSseEnabled": "true",
}
_FIFO_DEFAULTS = {
    "FifoQueue": "true",
    "ContentBasedDeduplication": "false",
    "DeduplicationScope": "queue",
    "FifoThroughputLimit": "perQueue",
}


# Operation -> its input shape in SQS's model (botocore's, loaded once per process).
_INPUT_SHAPES: dict[str, Any] = {}
_CHOICES = {
    "DeduplicationScope": ("messageGroup", "queue"),
    "FifoThroughputLimit": ("perQueue", "perMessageGroupId"),
}
_DIGITS = re.compile(r"[0-9]{1,12}")


def _json_or_none(text: str) -> Any:
    """``text`` parsed as JSON, or None where it is not JSON (or nested too deeply to read)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _no_such_queue() -> FakeError:
    return FakeError(
        "QueueDoesNotExist",
        "The specified queue does not exist.",
        query_code="AWS.SimpleQueueService.NonExistentQueue",
    )


def _check_throughput(attributes: Mapping[str, str]) -> None:
    """High-throughput FIFO: a limit per message group needs deduplication per message group."""
    if (
        attributes.get("FifoThroughputLimit") == "perMessageGroupId"
        and attributes.get("DeduplicationScope") != "messageGroup"
    ):
        raise FakeError(
            "InvalidAttributeValue",
            "Invalid value for the parameter FifoThroughputLimit. Reason: perMessageGroupId is "
            "only available when DeduplicationScope is messageGroup.",
        )


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request that reached the fake, in arrival order: ``time`` is its arrival on Trio's
    clock; ``fault`` names the scripted fault it met (``"error"``, ``"drop"``, ...), if any."""

    time: float
    operation: str
    params: Mapping[str, Any]
    fault: str | None = None


class FakeSQS:
    """An in-memory Amazon SQS that runs on Trio's clock.

    Serve it to a client with :meth:`transport` (an ``httpx`` transport, no sockets) or over
    HTTP with :func:`serve_fake_sqs`. It answers SQS's JSON protocol with SQS's results, errors
    and validation. Queue URLs are ``{endpoint}/{account_id}/{name}``.

    Args:
        region: The region in queue ARNs (and, with ``verify_signatures``, the signing scope).
        account_id: The account in queue URLs and ARNs.
        endpoint: The base of queue URLs.
        verify_signatures: Check every request's SigV4 signature against ``credentials``.
        credentials: Access key id -> secret key accepted when verifying signatures.
        record: Keep every call in :attr:`calls` (turn off for long benchmark runs).
        clock_skew: Seconds the server's wall clock is ahead of this machine's (negative:
            behind). It dates answers (``Date``) and judges signatures' freshness, as SQS's own
            clock does, so a test can provoke a clock-skew rejection. Message timestamps follow
            Trio's clock instead (see :meth:`epoch`).

    Every operation must run inside ``trio.run``: times are ``trio.current_time()``.

    Raises:
        ValueError: for a ``clock_skew`` that is not a number of seconds under ten years.
    """

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        endpoint: str = DEFAULT_ENDPOINT,
        verify_signatures: bool = False,
        credentials: Mapping[str, str] | None = None,
        record: bool = True,
        clock_skew: float = 0.0,
    ) -> None:
        if (
            isinstance(clock_skew, bool)
            or not isinstance(clock_skew, (int, float))
            or not abs(clock_skew) < 10 * 365 * 86400
        ):
            raise ValueError(
                f"clock_skew must be a number of seconds (under ten years), got {clock_skew!r}"
            )
        self.region = region
        self.account_id = account_id
        self.endpoint = endpoint.rstrip("/")
        self.verify_signatures = verify_signatures
        self.credentials: dict[str, str] = dict(
            credentials if credentials is not None else {"testing": "testing"}
        )
        self.record = record
        self.clock_skew = clock_skew
        self.faults = Faults()
        #: Every call answered or refused, in arrival order (when ``record`` is true).
        self.calls: list[RecordedCall] = []
        #: How many calls of each operation arrived.
        self.call_counts: collections.Counter[str] = collections.Counter()
        self._queues: dict[str, FakeQueue] = {}
        self._deleted_at: dict[str, float] = {}
        self._seq = itertools.count(1)
        self._sequence_numbers = itertools.count(10_000_000_000_000_000_000)
        self._clock_base: tuple[float, float] | None = None
        self._moves = MoveTasks(self)
        self._operations: dict[str, Callable[[dict[str, Any]], Any]] = {
            "CreateQueue": self._create_queue,
            "GetQueueUrl": self._get_queue_url,
            "GetQueueAttributes": self._get_queue_attributes,
            "SetQueueAttributes": self._set_queue_attributes,
            "ListQueues": self._list_queues,
            "DeleteQueue": self._delete_queue,
            "PurgeQueue": self._purge_queue,
            "SendMessage": self._send_message,
            "SendMessageBatch": self._send_message_batch,
            "ReceiveMessage": self._receive_message,
            "DeleteMessage": self._delete_message,
            "DeleteMessageBatch": self._delete_message_batch,
            "ChangeMessageVisibility": self._change_message_visibility,
            "ChangeMessageVisibilityBatch": self._change_message_visibility_batch,
            "StartMessageMoveTask": self._moves.start,
            "ListMessageMoveTasks": self._moves.list,
            "CancelMessageMoveTask": self._moves.cancel,
        }

    # -- for tests -----------------------------------------------------------------------------

    @property
    def operations(self) -> tuple[str, ...]:
        """The operations this fake implements."""
        return tuple(self._operations)

    def queue(self, name_or_url: str) -> FakeQueue:
        """The queue with this name or URL (``KeyError`` if there is none)."""
        return self._queues[name_or_url.rstrip("/").rpartition("/")[2]]

    @property
    def queues(self) -> dict[str, FakeQueue]:
        return dict(self._queues)

    def transport(self) -> FakeSQSTransport:
        """An ``httpx.AsyncBaseTransport`` serving this fake (pass it to ``open_client``).

        It also loads botocore's SQS model now, synchronously, if this process has not yet: then
        an ``open_client`` with region, ``endpoint_url``, keys, ``use_fips`` and
        ``use_dualstack`` given needs no worker thread, which matters on ``MockClock``.
        """
        load_service_data()
        return FakeSQSTransport(self)

    def operations_called(self) -> list[str]:
        """The operation names of :attr:`calls`, in order."""
        return [c.operation for c in self.calls]

    # -- shared with the queues ----------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def next_sequence_number(self) -> str:
        """A FIFO message's SequenceNumber: increasing across the service, as SQS's are."""
        return str(next(self._sequence_numbers))

    def next_move(self, queue: FakeQueue) -> float:
        """When the next move of a running message move task takes a message out of or into
        ``queue``."""
        return self._moves.next_move(queue)

    def run_moves(self, now: float) -> None:
        """Apply every move of the message move tasks due by ``now``, each at its own time."""
        self._moves.run(now)

    def epoch(self, at: float | None = None) -> float:
        """Seconds since the epoch at Trio time ``at`` (now by default): the wall clock when the
        fake was first used, moved on by Trio's clock (virtual under ``MockClock``)."""
        now = trio.current_time()
        if self._clock_base is None:
            self._clock_base = (time.time(), now)
        wall, base = self._clock_base
        return wall + ((now if at is None else at) - base)

    def wall_clock(self) -> float:
        """The server's wall clock: this machine's, plus :attr:`clock_skew`. Clients sign with
        the real wall clock whatever Trio's clock says, so signatures are judged by this one."""
        return time.time() + self.clock_skew

    def epoch_ms(self, at: float) -> int:
        return int(self.epoch(at) * 1000)

    def queue_by_arn(self, arn: str) -> FakeQueue | None:
        prefix = f"arn:aws:sqs:{self.region}:{self.account_id}:"
        if not arn.startswith(prefix):
            return None
        return self._queues.get(arn[len(prefix) :])

    def redrive_policy(self, queue: FakeQueue) -> tuple[str, int] | None:
        raw = queue.attributes.get("RedrivePolicy")
        if not raw:
            return None
        policy = json.loads(raw)
        return str(policy["deadLetterTargetArn"]), int(policy["maxReceiveCount"])

    # -- dispatch ------------------------------------------------------------------------------

    def arrived(self, operation: str, params: dict[str, Any], fault: str | None = None) -> None:
        """Count and record one request (the wire layer does it before any fault applies)."""
        self.call_counts[operation] += 1
        url, name = params.get("QueueUrl"), params.get("QueueName")
        queue = None
        if isinstance(url, str):
            queue = self._queue_at(url)
        elif isinstance(name, str) and params.get("QueueOwnerAWSAccountId") in (
            None,
            self.account_id,
        ):
            queue = self._queues.get(name)
        elif isinstance(params.get("SourceArn"), str):  # the message move tasks' operations
            queue = self.queue_by_arn(params["SourceArn"])
        if queue is not None:
            queue.call_counts[operation] += 1
        if self.record:
            self.calls.append(RecordedCall(trio.current_time(), operation, params, fault))

    async def call(
        self, operation: str, params: dict[str, Any], *, arrived: bool = False
    ) -> dict[str, Any]:
        """Run one operation with JSON-protocol parameters; return its result or raise
        :class:`FakeError` with the error SQS would answer. ``arrived``: the caller already
        recorded the request."""
        if not arrived:
            self.arrived(operation, params)
        handler = self._operations.get(operation)
        if handler is None:
            raise FakeError(
                "UnsupportedOperation",
                f"{operation} is not supported by trio_sqs.testing.FakeSQS.",
                query_code="AWS.SimpleQueueService.UnsupportedOperation",
            )
        shape = _INPUT_SHAPES.get(operation)
        if shape is None:
            shape = load_service_data().model.operation_model(operation).input_shape
            _INPUT_SHAPES[operation] = shape
        check_types(shape, params)
        # Moves of message move tasks due by now happen before this operation sees the queues.
        self.run_moves(trio.current_time())
        result = handler(params)
        if isinstance(result, Awaitable):
            awaited: dict[str, Any] = await result
            return awaited
        await trio.lowlevel.checkpoint()
        return dict(result)

    def answer_abandoned(self, operation: str, params: Mapping[str, Any], result: Any) -> None:
        """The client went away after ``operation`` took effect and before its answer reached it
        (a delayed answer cancelled or timed out): messages it received count as orphaned."""
        if operation != "ReceiveMessage" or not isinstance(result, dict):
            return
        messages = result.get("Messages")
        url = params.get("QueueUrl")
        if not messages or not isinstance(url, str):
            return
        queue = self._queue_at(url)
        if queue is not None:
            queue.orphaned_deliveries += len(messages)

    def _queue_at(self, url: str) -> FakeQueue | None:
        """The queue a QueueUrl names: ``.../{account}/{name}`` (any host) with this fake's
        account; a queue of another account does not exist here."""
        account, _, name = url.rstrip("/").rpartition("/")
        if account.rpartition("/")[2] != self.account_id:
            return None
        return self._queues.get(name)

    def _queue(self, params: Mapping[str, Any]) -> FakeQueue:
        queue = self._queue_at(read_required_str(params, "QueueUrl"))
        if queue is None:
            raise _no_such_queue()
        return queue

    # -- queues --------------------------------------------------------------------------------

    def _check_attributes(
        self, attributes: dict[str, Any], *, fifo: bool, creating: bool
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in attributes.items():
            if name not in _SETTABLE or (name == "FifoQueue" and not creating):
                raise FakeError("InvalidAttributeName", f"Unknown Attribute {name}.")
            if not isinstance(value, str):
                raise serialization_error(f"Attributes.{name}", "a string")
            if name in _FIFO_ONLY and not fifo:
                raise FakeError(
                    "InvalidAttributeName",
                    f"Unknown Attribute {name}.",
                )
            bounds = _SETTABLE[name]
            if bounds is not None:
                # ASCII digits only (int() also takes "1_0", " 5 " and other scripts' digits)
                number = int(value) if _DIGITS.fullmatch(value) else bounds[0] - 1
                if not bounds[0] <= number <= bounds[1]:
                    raise FakeError(
                        "InvalidAttributeValue", f"Invalid value for the parameter {name}."
                    )
                value = str(number)
            elif name == "RedrivePolicy":
                value = self._check_redrive(value, fifo=fifo)
            elif name in ("Policy", "RedriveAllowPolicy"):
                if value and not isinstance(_json_or_none(value), dict):
                    raise FakeError(
                        "InvalidAttributeValue",
                        f"Invalid value for the parameter {name}. Reason: not a JSON object.",
                    )
            elif name in _CHOICES:
                if value not in _CHOICES[name]:
                    raise FakeError(
                        "InvalidAttributeValue", f"Invalid value for the parameter {name}."
                    )
            elif name in ("SqsManagedSseEnabled", "ContentBasedDeduplication", "FifoQueue"):
                if value.lower() not in ("true", "false"):
                    raise FakeError(
                        "InvalidAttributeValue", f"Invalid value for the parameter {name}."
                    )
                value = value.lower()
            out[name] = value
        return out

    def _check_redrive(self, raw: str, *, fifo: bool) -> str:
        if raw == "":
            return ""
        try:
            policy = _json_or_none(raw)
            if not isinstance(policy, dict):
                raise TypeError(policy)
            arn = policy["deadLetterTargetArn"]
            count = policy["maxReceiveCount"]
            # an integer, or its digits in a string (as AWS's own examples write it)
            if isinstance(count, str) and _DIGITS.fullmatch(count):
                count = int(count)
            if type(count) is not int:
                raise TypeError(count)
        except (KeyError, TypeError):
            raise FakeError(
                "InvalidAttributeValue",
                "Invalid value for the parameter RedrivePolicy. Reason: Redrive policy is not "
                "a valid JSON map with deadLetterTargetArn and maxReceiveCount.",
            ) from None
        if not 1 <= count <= 1000:
            raise FakeError(
                "InvalidAttributeValue",
                "Invalid value for the parameter RedrivePolicy. Reason: maxReceiveCount must be "
                "between 1 and 1000.",
            )
        target = self.queue_by_arn(arn) if isinstance(arn, str) else None
        if target is None:
            raise FakeError(
                "InvalidAttributeValue",
                "Invalid value for the parameter RedrivePolicy. Reason: Dead letter target "
                "does not exist.",
            )
        if target.fifo != fifo:
            raise FakeError(
                "InvalidAttributeValue",
                "Invalid value for the parameter RedrivePolicy. Reason: Dead-letter queue must "
                "be same type of queue as the source.",
            )
        return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count})

    def _create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = read_required_str(params, "QueueName")
        requested = read_map(params, "Attributes")
        fifo = str(requested.get("FifoQueue", "false")).lower() == "true"
        if not (_FIFO_NAME if fifo else _STD_NAME).match(name):
            raise invalid_parameter(
                "The name of a FIFO queue can only include alphanumeric characters, hyphens, or "
                "underscores, must end with .fifo suffix and be 1 to 80 in length."
                if fifo or name.endswith(".fifo")
                else "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 "
                "in length"
            )
        attributes = self._check_attributes(requested, fifo=fifo, creating=True)
        existing = self._queues.get(name)
        if existing is not None:
            for key, value in attributes.items():
                if existing.attributes.get(key) != value:
                    raise FakeError(
                        "QueueNameExists",
                        f"A queue already exists with the same name and a different value for "
                        f"attribute {key}",
                        query_code="QueueAlreadyExists",
                    )
            return {"QueueUrl": existing.url}
        now = trio.current_time()
        deleted = self._deleted_at.get(name)
        if deleted is not None and now - deleted < QUEUE_RECREATE_DELAY:
            raise FakeError(
                "QueueDeletedRecently",
                "You must wait 60 seconds after deleting a queue before you can create another "
                "with the same name.",
                query_code="AWS.SimpleQueueService.QueueDeletedRecently",
            )
        full = dict(_DEFAULTS)
        if fifo:
            full.update(_FIFO_DEFAULTS)
        full.update(attributes)
        _check_throughput(full)
        url = f"{self.endpoint}/{self.account_id}/{name}"
        queue = FakeQueue(self, name, url, full, self.epoch())
        queue.call_counts["CreateQueue"] += 1  # the call that created it
        self._queues[name] = queue
        return {"QueueUrl": url}

    def _get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        name = read_required_str(params, "QueueName")
        owner = read_str(params, "QueueOwnerAWSAccountId", required=False)
        queue = self._queues.get(name)
        if queue is None or owner not in (None, self.account_id):
            raise _no_such_queue()
        return {"QueueUrl": queue.url}

    def _get_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        names = read_str_list(params, "AttributeNames")
        known = set(_SETTABLE) | set(_READ_ONLY) | {"All"}
        for name in names:
            if name not in known:
                raise FakeError("InvalidAttributeName", f"Unknown Attribute {name}.")
        if not names:
            return {}
        counts = queue.counts()
        values = dict(queue.attributes)
        values.update(
            {
                "ApproximateNumberOfMessages": str(counts.visible),
                "ApproximateNumberOfMessagesNotVisible": str(counts.in_flight),
                "ApproximateNumberOfMessagesDelayed": str(counts.delayed),
                "CreatedTimestamp": str(queue.created_ms // 1000),
                "LastModifiedTimestamp": str(queue.modified_ms // 1000),
                "QueueArn": queue.arn,
            }
        )
        if not values.get("RedrivePolicy"):
            values.pop("RedrivePolicy", None)
        wanted = values if "All" in names else {n: values[n] for n in names if n in values}
        return {"Attributes": dict(wanted)} if wanted else {}

    def _set_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        if params.get("Attributes") is None:
            raise missing_parameter("Attributes")
        changes = self._check_attributes(
            read_map(params, "Attributes"), fifo=queue.fifo, creating=False
        )
        _check_throughput({**queue.attributes, **changes})
        queue.attributes.update(changes)
        queue.modified_ms = int(self.epoch() * 1000)
        return {}

    def _list_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = read_str(params, "QueueNamePrefix", required=False) or ""
        limit = read_int(params, "MaxResults", 1000, 1, 1000)
        token = read_str(params, "NextToken", required=False)
        names = sorted(n for n in self._queues if n.startswith(prefix))
        start = 0
        if token:
            try:
                start = int(base64.b64decode(token).decode())
            except (binascii.Error, ValueError):
                start = -1
            if start < 0:
                raise invalid_parameter("Invalid NextToken value.")
        page = names[start : start + limit]
        result: dict[str, Any] = {}
        if page:
            result["QueueUrls"] = [self._queues[n].url for n in page]
        if "MaxResults" in params and start + limit < len(names):
            result["NextToken"] = base64.b64encode(str(start + limit).encode()).decode()
        return result

    def _delete_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        queue.close()
        del self._queues[queue.name]
        self._deleted_at[queue.name] = trio.current_time()
        return {}

    def _purge_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        now = trio.current_time()
        if queue.last_purge is not None and now - queue.last_purge < PURGE_INTERVAL:
            raise FakeError(
                "PurgeQueueInProgress",
                f"Only one PurgeQueue operation on {queue.name} is allowed every 60 seconds.",
                query_code="AWS.SimpleQueueService.PurgeQueueInProgress",
            )
        queue.last_purge = now
        queue.purge()
        return {}

    # -- sending -------------------------------------------------------------------------------

    def _send_one(self, queue: FakeQueue, params: Mapping[str, Any]) -> dict[str, Any]:
        body = read_str(params, "MessageBody", required=False)
        if not body:
            raise missing_parameter("MessageBody")
        bad = INVALID_BODY_CHAR.search(body)
        if bad is not None:
            raise FakeError(
                "InvalidMessageContents",
                f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message "
                "body, the set of allowed characters is #x9 | #xA | #xD | #x20 to #xD7FF | "
                "#xE000 to #xFFFD | #x10000 to #x10FFFF",
            )
        attributes = read_map(params, "MessageAttributes")
        system_attributes = read_map(params, "MessageSystemAttributes")
        size = len(body.encode()) + check_message_attributes(attributes)
        check_message_attributes(system_attributes, system=True)
        limit = int(queue.attributes["MaximumMessageSize"])
        if size > limit:
            raise invalid_parameter(
                f"One or more parameters are invalid. Reason: Message must be shorter than "
                f"{limit} bytes."
            )
        group = read_str(params, "MessageGroupId", required=False)
        if group is not None and not GROUP_ID.match(group):
            raise invalid_parameter(
                f"Value {group} for parameter MessageGroupId is invalid. Reason: MessageGroupId "
                "can only include alphanumeric and punctuation characters. 1 to 128 in length."
            )
        dedup = read_str(params, "MessageDeduplicationId", required=False)
        delay = read_int(params, "DelaySeconds", queue.delay_seconds, 0, 900)
        now = trio.current_time()
        if queue.fifo:
            if "DelaySeconds" in params:
                raise invalid_parameter(
                    f"Value {params['DelaySeconds']} for parameter DelaySeconds is invalid. "
                    "Reason: The request include parameter that is not valid for this queue type."
                )
            if group is None:
                raise missing_parameter("MessageGroupId")
            if dedup is None:
                if queue.attributes.get("ContentBasedDeduplication") != "true":
                    raise invalid_parameter(
                        "The queue should either have ContentBasedDeduplication enabled or "
                        "MessageDeduplicationId provided explicitly"
                    )
                dedup = hashlib.sha256(body.encode()).hexdigest()
            elif not DEDUP_ID.match(dedup):
                raise invalid_parameter(
                    f"Value {dedup} for parameter MessageDeduplicationId is invalid."
                )
        elif dedup is not None:
            raise invalid_parameter(
                f"Value {dedup} for parameter MessageDeduplicationId is invalid. Reason: The "
                "request include parameter that is not valid for this queue type."
            )
        md5_body = md5_hex(body.encode())
        result: dict[str, Any] = {"MD5OfMessageBody": md5_body}
        md5_attrs = md5_of_attributes(attributes) if attributes else None
        if md5_attrs is not None:
            result["MD5OfMessageAttributes"] = md5_attrs
        if system_attributes:
            result["MD5OfMessageSystemAttributes"] = md5_of_attributes(system_attributes)
        if queue.fifo and dedup is not None:
            seen = queue.deduplicated(dedup, group, now)
            if seen is not None:
                result["MessageId"] = seen[0]
                if seen[1] is not None:
                    result["SequenceNumber"] = seen[1]
                return result
        message_id = str(uuid.uuid4())
        sequence = self.next_sequence_number() if queue.fifo else None
        system = {"SenderId": SENDER_ID}
        if group is not None:
            system["MessageGroupId"] = group
        if queue.fifo:
            assert dedup is not None and sequence is not None
            system["MessageDeduplicationId"] = dedup
            system["SequenceNumber"] = sequence
        trace = system_attributes.get("AWSTraceHeader")
        if trace is not None:
            system["AWSTraceHeader"] = str(trace.get("StringValue", ""))
        queue.add(
            message_id=message_id,
            body=body,
            md5_of_body=md5_body,
            attributes=attributes,
            md5_of_attributes=md5_attrs,
            system=system,
            delay=delay,
            group=group,
            dedup_id=dedup if queue.fifo else None,
            sequence_number=sequence,
        )
        result["MessageId"] = message_id
        if sequence is not None:
            result["SequenceNumber"] = sequence
        return result

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._send_one(self._queue(params), params)

    def _send_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        entries = read_entries(params, "SendMessageBatchRequestEntry")
        # SQS's limit on a batch is the service's (the sum of the messages' sizes, attributes
        # included), whatever the queue's MaximumMessageSize.
        total = sum(entry_size(e) for e in entries)
        limit = MAX_MESSAGE_SIZE
        if total > limit:
            raise FakeError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {limit} bytes. You have sent {total} bytes.",
                query_code="AWS.SimpleQueueService.BatchRequestTooLong",
            )
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                sent = self._send_one(queue, entry)
            except FakeError as exc:
                failed.append(exc.entry(entry["Id"]))
            else:
                successful.append({"Id": entry["Id"], **sent})
        return {"Successful": successful, "Failed": failed}

    # -- receiving -----------------------------------------------------------------------------

    def _receive_message(self, params: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        queue = self._queue(params)
        max_messages = read_int(params, "MaxNumberOfMessages", 1, 1, 10)
        wait = read_int(params, "WaitTimeSeconds", queue.receive_wait_time, 0, 20)
        visibility = read_int(params, "VisibilityTimeout", queue.visibility_timeout, 0, 43_200)
        system_names = read_str_list(params, "MessageSystemAttributeNames") or read_str_list(
            params, "AttributeNames"
        )
        user_names = read_str_list(params, "MessageAttributeNames")
        attempt = read_str(params, "ReceiveRequestAttemptId", required=False)
        if attempt is not None and not GROUP_ID.match(attempt):
            raise invalid_parameter(
                f"Value {attempt} for parameter ReceiveRequestAttemptId is invalid. Reason: "
                "ReceiveRequestAttemptId can only include alphanumeric and punctuation "
                "characters. 1 to 128 in length."
            )
        for name in system_names:
            if name not in SYSTEM_ATTRIBUTES and name != "All":
                raise FakeError("InvalidAttributeName", f"Unknown Attribute {name}.")
        wanted = SYSTEM_ATTRIBUTES if "All" in system_names else tuple(system_names)

        def render(message: _Message, receipt: str) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "MessageId": message.message_id,
                "ReceiptHandle": receipt,
                "MD5OfBody": message.md5_of_body,
                "Body": message.body,
            }
            if wanted:
                system = {
                    "SentTimestamp": str(message.sent_ms),
                    "ApproximateReceiveCount": str(message.receive_count),
                    "ApproximateFirstReceiveTimestamp": str(message.first_receive_ms),
                    **message.system,
                }
                chosen = {k: system[k] for k in wanted if k in system}
                if chosen:
                    entry["Attributes"] = chosen
            selected = select_attributes(message.attributes, user_names)
            if selected:
                entry["MessageAttributes"] = selected
                entry["MD5OfMessageAttributes"] = (
                    message.md5_of_attributes
                    if len(selected) == len(message.attributes)
                    else md5_of_attributes(selected)
                )
            return entry

        async def receive() -> dict[str, Any]:
            messages = await queue.receive(
                max_messages=max_messages, visibility=visibility, wait=wait, render=render
            )
            return {"Messages": messages} if messages else {}

        return receive()

    # -- acting on received messages -----------------------------------------------------------

    def _delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        queue.delete(read_required_str(params, "ReceiptHandle"))
        return {}

    def _delete_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in read_entries(params, "DeleteMessageBatchRequestEntry"):
            try:
                handle = entry.get("ReceiptHandle")
                if not isinstance(handle, str):
                    raise missing_parameter("ReceiptHandle")
                queue.delete(handle)
            except FakeError as exc:
                failed.append(exc.entry(entry["Id"]))
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}

    def _change_message_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        handle = read_required_str(params, "ReceiptHandle")
        if "VisibilityTimeout" not in params:
            raise missing_parameter("VisibilityTimeout")
        timeout = read_int(params, "VisibilityTimeout", 0, 0, 43_200)
        queue.change_visibility(handle, timeout)
        return {}

    def _change_message_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(params)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in read_entries(params, "ChangeMessageVisibilityBatchRequestEntry"):
            try:
                handle = read_required_str(entry, "ReceiptHandle")
                if "VisibilityTimeout" not in entry:
                    raise missing_parameter("VisibilityTimeout")
                timeout = read_int(entry, "VisibilityTimeout", 0, 0, 43_200)
                queue.change_visibility(handle, timeout)
            except FakeError as exc:
                failed.append(exc.entry(entry["Id"]))
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}
