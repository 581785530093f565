"""trio_sqs: consume Amazon SQS queues from Trio, with shutdown that is correct by construction."""

from __future__ import annotations

from ._client import SendEntry, SQSClient, open_client
from ._config import Limits, RetryPolicy
from ._exceptions import (
    AccessDenied,
    BatchEntryError,
    ClientClosedError,
    ClockSkewError,
    ConfigurationError,
    CredentialsError,
    InvalidReceiptHandle,
    MessageCorruptError,
    QueueDoesNotExist,
    ServiceError,
    SQSError,
    Throttled,
    TransportError,
)
from ._message import (
    BatchResult,
    CorruptMessage,
    Message,
    MessageAttributeValue,
    ReceiveResult,
    SendResult,
)

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BatchEntryError",
    "BatchResult",
    "ClientClosedError",
    "ClockSkewError",
    "ConfigurationError",
    "CorruptMessage",
    "CredentialsError",
    "InvalidReceiptHandle",
    "Limits",
    "Message",
    "MessageAttributeValue",
    "MessageCorruptError",
    "QueueDoesNotExist",
    "ReceiveResult",
    "RetryPolicy",
    "SQSClient",
    "SQSError",
    "SendEntry",
    "SendResult",
    "ServiceError",
    "Throttled",
    "TransportError",
    "open_client",
]
