"""The exceptions trio_sqs raises.

Every exception the library raises on purpose derives from :class:`SQSError`::

    SQSError
    ├── ConfigurationError        invalid option, caught before any I/O (also a ValueError)
    ├── ClientClosedError         the client was used after it was closed
    ├── CredentialsError          no credentials, or the provider chain failed
    ├── TransportError            the request failed on the network after every retry
    ├── MessageCorruptError       a received message failed its MD5 check
    └── ServiceError              SQS answered with an error
        ├── QueueDoesNotExist
        ├── AccessDenied          access denied, bad or expired credentials, bad signature
        ├── Throttled             throttling that outlasted every retry
        ├── InvalidReceiptHandle
        ├── ClockSkewError        the request time differs too much from the server's clock
        └── BatchEntryError       one entry of a batch call failed (see ``BatchResult``)

Every error carries ``code``, ``message``, ``status_code`` and ``request_id`` (``None`` where the error
never reached a server). Exceptions of httpx, httpcore, h11, botocore, of a user-supplied transport,
and the builtins a malformed answer makes Python raise (``KeyError``, ``TypeError``...) never
escape a call: they are translated at one boundary, ``map_foreign_exceptions`` in ``_client.py``
(and ``_protocol.py`` / ``_connect.py`` for configuration), and kept as ``__cause__``.

``trio.Cancelled`` is never wrapped or swallowed: an exception group made only of ``Cancelled``
(a nursery inside a connect, cancelled) reaches the caller as one plain ``Cancelled``.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BatchEntryError",
    "ClientClosedError",
    "ClockSkewError",
    "ConfigurationError",
    "CredentialsError",
    "InvalidReceiptHandle",
    "MessageCorruptError",
    "QueueDoesNotExist",
    "SQSError",
    "ServiceError",
    "Throttled",
    "TransportError",
]


class SQSError(Exception):
    """Base class of every exception trio_sqs raises.

    Attributes:
        code: The SQS error code (``"AWS.SimpleQueueService.NonExistentQueue"``), or a trio_sqs code
            such as ``"TransportError"`` for errors that did not come from SQS.
        message: A human-readable description.
        status_code: The HTTP status of the response, or ``None``.
        request_id: The SQS request id (``x-amzn-RequestId``), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else type(self).__name__
        self.status_code = status_code
        self.request_id = request_id

    def __str__(self) -> str:
        extra = []
        if self.status_code is not None:
            extra.append(f"HTTP {self.status_code}")
        if self.request_id:
            extra.append(f"request id {self.request_id}")
        tail = f" ({', '.join(extra)})" if extra else ""
        if self.code and self.code != type(self).__name__:
            return f"{self.code}: {self.message}{tail}"
        return f"{self.message}{tail}"


class ConfigurationError(SQSError, ValueError):
    """An option has an invalid value. Raised at construction, before any I/O."""


class ClientClosedError(SQSError, RuntimeError):
    """The client (or consumer) was used after it was closed."""


class CredentialsError(SQSError):
    """No credentials could be found, or the credential provider failed."""


class TransportError(SQSError):
    """The request could not be completed, even after retries.

    ``code`` is ``"TransportError"`` when no answer was read (the network, a timeout, the
    transport failed), ``"InvalidResponse"`` when an answer arrived but could not be read (not
    JSON, or a member the call reads missing or of the wrong type). The last underlying exception
    is the ``__cause__``.
    """


class MessageCorruptError(SQSError):
    """A received message's body or attributes do not match the MD5 digest SQS sent with it.

    Attributes:
        message_id: The id of the corrupt message.
        receipt_handle: Its receipt handle (it may still be released or deleted).
    """

    def __init__(self, message: str, *, message_id: str, receipt_handle: str) -> None:
        super().__init__(message, code="MessageCorrupt")
        self.message_id = message_id
        self.receipt_handle = receipt_handle


class ServiceError(SQSError):
    """SQS answered a request with an error response."""


class QueueDoesNotExist(ServiceError):
    """The queue named in the request does not exist (or is not visible to these credentials)."""


class AccessDenied(ServiceError):
    """Access was denied: missing permission, bad or expired credentials, or a bad signature."""


class Throttled(ServiceError):
    """SQS throttled the request and kept throttling it through every retry."""


class InvalidReceiptHandle(ServiceError):
    """The receipt handle is invalid or expired (the message was received again by someone else)."""


class ClockSkewError(ServiceError):
    """The request was signed with a clock too far from the server's.

    Attributes:
        skew: Server time minus local time in seconds, measured from the response's ``Date`` header,
            or ``None`` if the server did not send one.
    """

    def __init__(
        self,
        message: str,
        *,
        skew: float | None = None,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=status_code, request_id=request_id)
        self.skew = skew


class BatchEntryError(ServiceError):
    """One entry of a batch call failed.

    Instances are found in ``BatchResult.failed``; they are not raised by the batch calls themselves.

    Attributes:
        entry_id: The ``Id`` of the failed entry.
        sender_fault: Whether SQS blames the request (``True``) or itself (``False``).
    """

    def __init__(
        self,
        message: str,
        *,
        entry_id: str,
        sender_fault: bool,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=200, request_id=request_id)
        self.entry_id = entry_id
        self.sender_fault = sender_fault
