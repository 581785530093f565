"""trio_sqs: consume Amazon SQS queues from Trio, with shutdown that is correct by construction."""

from __future__ import annotations

from ._client import SendEntry, SQSClient
from ._config import ConsumerOptions, Limits, RetryPolicy
from ._connect import open_client
from ._consumer import Consumer
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
from ._handler import BatchHandler, Handler, Retry
from ._message import (
    BatchResult,
    CorruptMessage,
    Message,
    MessageAttributeValue,
    ReceiveResult,
    SendResult,
)
from ._middleware import Invocation, Middleware, Outcome
from ._open import open_consumer, run_consumer
from ._stats import ConsumerStatistics, HistogramSnapshot

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BatchEntryError",
    "BatchHandler",
    "BatchResult",
    "ClientClosedError",
    "ClockSkewError",
    "ConfigurationError",
    "Consumer",
    "ConsumerOptions",
    "ConsumerStatistics",
    "CorruptMessage",
    "CredentialsError",
    "Handler",
    "HistogramSnapshot",
    "InvalidReceiptHandle",
    "Invocation",
    "Limits",
    "Message",
    "MessageAttributeValue",
    "MessageCorruptError",
    "Middleware",
    "Outcome",
    "QueueDoesNotExist",
    "ReceiveResult",
    "Retry",
    "RetryPolicy",
    "SQSClient",
    "SQSError",
    "SendEntry",
    "SendResult",
    "ServiceError",
    "Throttled",
    "TransportError",
    "open_client",
    "open_consumer",
    "run_consumer",
]
