"""trio_sqs.testing: an in-memory Amazon SQS on Trio's clock, for your tests and ours.

- :class:`FakeSQS` answers SQS's JSON protocol as SQS does (queues, visibility, long polls,
  FIFO groups and deduplication, dead-letter redrive, batch calls with per-entry failures, SQS's
  errors and validation). It runs on Trio's clock: under ``trio.testing.MockClock`` a 20 s long
  poll or a 30 s visibility timeout takes no wall time.
- :meth:`FakeSQS.transport` serves it to a client in process (``open_client(transport=...)``);
  :func:`open_fake_client` does that for you. :func:`serve_fake_sqs` (and
  ``python -m trio_sqs.testing``) serves it over HTTP on 127.0.0.1.
- ``fake.faults`` scripts errors, delays, stalls, dropped connections and corrupt digests.
- :func:`make_message` builds a valid :class:`trio_sqs.Message` for unit tests of a handler.
- With pytest-trio, the fixtures ``fake_sqs``, ``fake_sqs_client`` and ``fake_queue_url`` come
  with the package (a pytest plugin, registered on install).

Where it differs from SQS (documented in the README, "Testing your handlers"): no message
retention period, no IAM or KMS, no throughput limits, counts are exact (SQS's are approximate).
"""

from __future__ import annotations

from ._errors import FakeError
from ._faults import Fault, Faults
from ._helpers import make_message, open_fake_client
from ._queue import FakeQueue, MessageSnapshot, QueueCounts
from ._server import serve_fake_sqs
from ._service import FakeSQS, RecordedCall
from ._transport import FakeSQSTransport

__all__ = [
    "FakeError",
    "FakeQueue",
    "FakeSQS",
    "FakeSQSTransport",
    "Fault",
    "Faults",
    "MessageSnapshot",
    "QueueCounts",
    "RecordedCall",
    "make_message",
    "open_fake_client",
    "serve_fake_sqs",
]
