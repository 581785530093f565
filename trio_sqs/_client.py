"""The SQS client: the sans-IO protocol layer driven over an ``httpx.AsyncClient`` on Trio."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from botocore.exceptions import BotoCoreError

from ._config import Limits, RetryPolicy, check_int_range
from ._credentials import CredentialCache
from ._exceptions import (
    BatchEntryError,
    ClientClosedError,
    ConfigurationError,
    ServiceError,
    SQSError,
    TransportError,
)
from ._message import (
    BatchResult,
    CorruptMessage,
    Message,
    MessageAttributeValue,
    ReceiveResult,
    SendResult,
    message_from_wire,
)
from ._protocol import (
    SQSProtocol,
    is_retryable_error,
)

__all__ = ["SQSClient", "SendEntry"]

log = logging.getLogger("trio_sqs.client")

# A long poll may take WaitTimeSeconds; the read timeout leaves this much room on top.
POLL_READ_MARGIN = 10.0
DEFAULT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class SendEntry:
    """One message for :meth:`SQSClient.send_message_batch`."""

    body: str
    id: str | None = None
    delay_seconds: int | None = None
    message_attributes: Mapping[str, MessageAttributeValue] | None = None
    message_group_id: str | None = None
    message_deduplication_id: str | None = None


def _send_params(
    body: str,
    delay_seconds: int | None,
    message_attributes: Mapping[str, MessageAttributeValue] | None,
    message_group_id: str | None,
    message_deduplication_id: str | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"MessageBody": body}
    if delay_seconds is not None:
        check_int_range("delay_seconds", delay_seconds, 0, 900)
        params["DelaySeconds"] = delay_seconds
    if message_attributes:
        params["MessageAttributes"] = {k: v.to_wire() for k, v in message_attributes.items()}
    if message_group_id is not None:
        params["MessageGroupId"] = message_group_id
    if message_deduplication_id is not None:
        params["MessageDeduplicationId"] = message_deduplication_id
    return params


def _check_batch(name: str, entries: Sequence[object]) -> None:
    if not 1 <= len(entries) <= 10:
        raise ConfigurationError(
            f"{name} takes 1 to 10 entries, got {len(entries)}", code="InvalidOption"
        )


def _batch_result(parsed: Mapping[str, Any], request_id: str | None = None) -> BatchResult:
    return BatchResult(
        successful=tuple(str(e["Id"]) for e in parsed.get("Successful", ())),
        failed=tuple(
            BatchEntryError(
                str(e.get("Message") or e.get("Code")),
                entry_id=str(e["Id"]),
                sender_fault=bool(e.get("SenderFault")),
                code=str(e.get("Code")),
                request_id=request_id,
            )
            for e in parsed.get("Failed", ())
        ),
    )


class _RequestBody(httpx.AsyncByteStream):
    """A request body sent as one chunk, which can tell when that chunk has been written.

    httpcore asks for the next chunk right after the previous one was handed to the socket; that
    second ``__anext__`` is the first moment the sending task runs once the whole request is on the
    wire, with no cancellable checkpoint in between (the trace extension's "complete" event comes
    one checkpoint later). Trio's send ends in a cancel-shielded checkpoint, so other tasks may run
    between the write and this marker: the marker is late by at most that one schedule point.

    It is also not an async generator: httpx's own byte stream is one, and a request cancelled
    while its body is being written abandons it, which Trio reports with a ResourceWarning when it
    is garbage collected (an error under ``-W error``).
    """

    def __init__(self, body: bytes, on_sent: Callable[[], None] | None = None) -> None:
        self._body = body
        self._on_sent = on_sent

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._body, self._on_sent)


class _OneChunk:
    def __init__(self, body: bytes, on_sent: Callable[[], None] | None) -> None:
        self._body: bytes | None = body
        self._on_sent = on_sent

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._body is None:
            if self._on_sent is not None:
                self._on_sent()
                self._on_sent = None
            raise StopAsyncIteration
        body, self._body = self._body, None
        return body


class SQSClient:
    """An SQS client on Trio. Create it with :func:`open_client`.

    Every method is a checkpoint. Cancellation: cancelling a call at any point aborts it (an
    in-flight HTTP request is dropped and its connection closed) and leaves the client usable; no
    request waits inside httpx's connection pool, so a cancelled call never leaks a pool slot.
    """

    def __init__(
        self,
        protocol: SQSProtocol,
        credentials: CredentialCache,
        http: httpx.AsyncClient,
        *,
        limits: Limits,
        retry: RetryPolicy,
    ) -> None:
        self._protocol = protocol
        self._credentials = credentials
        self._http = http
        self._retry = retry
        self._receive_gate = trio.Semaphore(limits.max_receive_connections)
        self._other_gate = trio.Semaphore(limits.max_other_connections)
        self._closed = False
        self.limits = limits

    @property
    def endpoint(self) -> str:
        """The resolved endpoint URL."""
        return self._protocol.endpoint

    @property
    def region(self) -> str:
        return self._protocol.region

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the one place where requests are sent --------------------------------------------------

    async def call(
        self,
        operation: str,
        params: Mapping[str, Any],
        *,
        read_timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
        retry: bool = True,
        _validate: bool = True,
    ) -> dict[str, Any]:
        """Call any SQS operation with botocore-style parameters; return the parsed result.

        Retries throttling, 5xx and transport errors (see :class:`RetryPolicy`), signing each attempt
        afresh. ReceiveMessage calls use the long-poll budget, everything else the other budget.

        Args:
            operation: The SQS operation name, e.g. ``"SendMessage"``.
            params: The operation's parameters as botocore names them.
            read_timeout: Seconds to wait for the response (default 30).
            on_sent: Called (synchronously) each time the request has been written to the socket
                in full. From then on the server may act on it even if the call is cancelled.
            retry: Whether to retry failures per the client's :class:`RetryPolicy`; with
                ``False`` exactly one request is sent (callers with their own retry loop).

        Raises:
            ServiceError: (or a subclass) for an error SQS returned, after retries if retryable.
            TransportError: if the request could not be completed after every retry.
            ClientClosedError: if the client is closed.

        Cancellation: aborts the call at once, wherever it is (waiting for a budget slot, sending,
        waiting for the response, or sleeping between retries).
        """
        if self._closed:
            raise ClientClosedError("the SQS client is closed")
        receive = operation == "ReceiveMessage"
        gate = self._receive_gate if receive else self._other_gate
        if read_timeout is None:
            read_timeout = DEFAULT_TIMEOUT
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=read_timeout)
        attempts = self._retry.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            credentials = await self._credentials.get()
            request = self._protocol.build_request(
                operation, params, credentials, validate=_validate
            )
            failure: SQSError | None = None
            try:
                async with gate:
                    if self._closed:
                        raise ClientClosedError("the SQS client is closed")
                    http_request = self._http.build_request(
                        request.method,
                        request.url,
                        headers=request.headers,
                        content=request.body,
                        timeout=timeout,
                    )
                    http_request.stream = _RequestBody(request.body, on_sent)
                    response = await self._http.send(http_request)
            except httpx.HTTPError as exc:
                # A long poll that times out on read is not retried here: the poller decides.
                retryable = not (receive and isinstance(exc, httpx.ReadTimeout))
                failure = TransportError(
                    f"{operation} failed: {type(exc).__name__}: {exc}", code="TransportError"
                )
                failure.__cause__ = exc
                if not retryable or attempt == attempts:
                    raise failure from exc
            else:
                try:
                    return self._protocol.parse_response(
                        operation, response.status_code, response.headers, response.content
                    )
                except ServiceError as exc:
                    if not is_retryable_error(exc) or attempt == attempts:
                        raise
                    failure = exc
                except (ValueError, BotoCoreError) as exc:
                    failure = TransportError(
                        f"{operation}: unreadable response (HTTP {response.status_code}): {exc}",
                        code="InvalidResponse",
                        status_code=response.status_code,
                        request_id=response.headers.get("x-amzn-requestid"),
                    )
                    if attempt == attempts:
                        raise failure from exc
            delay = random.uniform(0.0, self._retry.backoff_ceiling(attempt))
            log.debug(
                "retrying %s after %s (attempt %d of %d, in %.3f s)",
                operation,
                failure,
                attempt,
                attempts,
                delay,
            )
            await trio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- typed operations ------------------------------------------------------------------------

    async def get_queue_url(self, queue_name: str, *, owner_account_id: str | None = None) -> str:
        params: dict[str, Any] = {"QueueName": queue_name}
        if owner_account_id:
            params["QueueOwnerAWSAccountId"] = owner_account_id
        result = await self.call("GetQueueUrl", params, _validate=False)
        return str(result["QueueUrl"])

    async def create_queue(
        self,
        queue_name: str,
        *,
        attributes: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a queue (or return the URL of an identical existing one)."""
        params: dict[str, Any] = {"QueueName": queue_name}
        if attributes:
            params["Attributes"] = dict(attributes)
        if tags:
            params["tags"] = dict(tags)
        result = await self.call("CreateQueue", params)
        return str(result["QueueUrl"])

    async def delete_queue(self, queue_url: str) -> None:
        await self.call("DeleteQueue", {"QueueUrl": queue_url}, _validate=False)

    async def purge_queue(self, queue_url: str) -> None:
        await self.call("PurgeQueue", {"QueueUrl": queue_url}, _validate=False)

    async def list_queues(self, prefix: str | None = None) -> list[str]:
        """Every queue URL (following pagination), optionally only those whose name has ``prefix``."""
        urls: list[str] = []
        params: dict[str, Any] = {"MaxResults": 1000}
        if prefix:
            params["QueueNamePrefix"] = prefix
        while True:
            result = await self.call("ListQueues", params, _validate=False)
            urls.extend(result.get("QueueUrls", ()))
            token = result.get("NextToken")
            if not token:
                return urls
            params["NextToken"] = token

    async def get_queue_attributes(
        self, queue_url: str, names: Iterable[str] = ("All",)
    ) -> dict[str, str]:
        result = await self.call(
            "GetQueueAttributes",
            {"QueueUrl": queue_url, "AttributeNames": list(names)},
            _validate=False,
        )
        return dict(result.get("Attributes", {}))

    async def receive_messages(
        self,
        queue_url: str,
        *,
        max_messages: int = 10,
        wait_time: int = 20,
        visibility_timeout: int | None = None,
        attribute_names: Sequence[str] = ("All",),
        message_attribute_names: Sequence[str] = ("All",),
        receive_request_attempt_id: str | None = None,
        on_sent: Callable[[], None] | None = None,
        retry: bool = True,
    ) -> ReceiveResult:
        """Receive up to ``max_messages`` messages, long-polling up to ``wait_time`` seconds.

        Each message's MD5 digests are verified; messages that fail are returned in
        ``ReceiveResult.corrupt`` and never among the valid ones.

        Cancellation: the HTTP request is dropped at once. SQS does not notice: its long poll runs
        on, and messages it takes in that time stay invisible for ``visibility_timeout`` (keep it
        short, see the README on orphaned polls).
        """
        check_int_range("max_messages", max_messages, 1, 10)
        check_int_range("wait_time", wait_time, 0, 20)
        params: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_time,
        }
        if visibility_timeout is not None:
            check_int_range("visibility_timeout", visibility_timeout, 0, 43200)
            params["VisibilityTimeout"] = visibility_timeout
        if attribute_names:
            params["MessageSystemAttributeNames"] = list(attribute_names)
        if message_attribute_names:
            params["MessageAttributeNames"] = list(message_attribute_names)
        if receive_request_attempt_id:
            params["ReceiveRequestAttemptId"] = receive_request_attempt_id
        result = await self.call(
            "ReceiveMessage",
            params,
            read_timeout=wait_time + POLL_READ_MARGIN,
            on_sent=on_sent,
            retry=retry,
            _validate=False,
        )
        messages: list[Message] = []
        corrupt: list[CorruptMessage] = []
        for raw in result.get("Messages", ()):
            item = message_from_wire(raw, queue_url)
            if isinstance(item, CorruptMessage):
                log.error("corrupt message %s: %s", item.message_id, item.error)
                corrupt.append(item)
            else:
                messages.append(item)
        return ReceiveResult(tuple(messages), tuple(corrupt))

    async def delete_message(self, queue_url: str, receipt_handle: str) -> None:
        await self.call(
            "DeleteMessage",
            {"QueueUrl": queue_url, "ReceiptHandle": receipt_handle},
            _validate=False,
        )

    async def delete_message_batch(
        self, queue_url: str, receipt_handles: Sequence[str] | Mapping[str, str]
    ) -> BatchResult:
        """Delete up to 10 messages. ``receipt_handles`` is a list (ids are the list positions) or
        a mapping of entry id to receipt handle. Per-entry failures are in the result, not raised."""
        entries = _entries(receipt_handles)
        _check_batch("delete_message_batch", entries)
        result = await self.call(
            "DeleteMessageBatch",
            {"QueueUrl": queue_url, "Entries": [{"Id": i, "ReceiptHandle": h} for i, h in entries]},
            _validate=False,
        )
        return _batch_result(result)

    async def change_message_visibility(
        self, queue_url: str, receipt_handle: str, visibility_timeout: int
    ) -> None:
        check_int_range("visibility_timeout", visibility_timeout, 0, 43200)
        await self.call(
            "ChangeMessageVisibility",
            {
                "QueueUrl": queue_url,
                "ReceiptHandle": receipt_handle,
                "VisibilityTimeout": visibility_timeout,
            },
            _validate=False,
        )

    async def change_message_visibility_batch(
        self,
        queue_url: str,
        receipt_handles: Sequence[str] | Mapping[str, str],
        visibility_timeout: int | Mapping[str, int],
        *,
        retry: bool = True,
    ) -> BatchResult:
        """Change the visibility of up to 10 messages; ``visibility_timeout`` may be one value for
        all, or a mapping of entry id to value. Per-entry failures are in the result."""
        entries = _entries(receipt_handles)
        _check_batch("change_message_visibility_batch", entries)
        wire = []
        for entry_id, handle in entries:
            timeout = (
                visibility_timeout[entry_id]
                if isinstance(visibility_timeout, Mapping)
                else visibility_timeout
            )
            check_int_range("visibility_timeout", timeout, 0, 43200)
            wire.append({"Id": entry_id, "ReceiptHandle": handle, "VisibilityTimeout": timeout})
        result = await self.call(
            "ChangeMessageVisibilityBatch",
            {"QueueUrl": queue_url, "Entries": wire},
            retry=retry,
            _validate=False,
        )
        return _batch_result(result)

    async def send_message(
        self,
        queue_url: str,
        body: str,
        *,
        delay_seconds: int | None = None,
        message_attributes: Mapping[str, MessageAttributeValue] | None = None,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
    ) -> SendResult:
        params = _send_params(
            body, delay_seconds, message_attributes, message_group_id, message_deduplication_id
        )
        params["QueueUrl"] = queue_url
        result = await self.call("SendMessage", params)
        return SendResult(
            message_id=str(result["MessageId"]),
            md5_of_body=str(result.get("MD5OfMessageBody", "")),
            sequence_number=result.get("SequenceNumber"),
        )

    async def send_message_batch(
        self, queue_url: str, entries: Sequence[SendEntry]
    ) -> tuple[tuple[SendResult, ...], BatchResult]:
        """Send up to 10 messages. Returns the sent messages and the batch outcome (which
        entries failed, with their error codes). Entry ids default to the list positions."""
        _check_batch("send_message_batch", entries)
        wire = []
        for index, entry in enumerate(entries):
            params = _send_params(
                entry.body,
                entry.delay_seconds,
                entry.message_attributes,
                entry.message_group_id,
                entry.message_deduplication_id,
            )
            params["Id"] = entry.id if entry.id is not None else str(index)
            wire.append(params)
        result = await self.call("SendMessageBatch", {"QueueUrl": queue_url, "Entries": wire})
        sent = tuple(
            SendResult(
                message_id=str(e["MessageId"]),
                md5_of_body=str(e.get("MD5OfMessageBody", "")),
                sequence_number=e.get("SequenceNumber"),
                id=str(e["Id"]),
            )
            for e in result.get("Successful", ())
        )
        return sent, _batch_result(result)


def _entries(receipt_handles: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    if isinstance(receipt_handles, Mapping):
        return [(str(k), v) for k, v in receipt_handles.items()]
    return [(str(i), h) for i, h in enumerate(receipt_handles)]
