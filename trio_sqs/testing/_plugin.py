"""pytest plugin (registered on install): fixtures for tests on the in-memory SQS.

Needs pytest-trio (async fixtures). Fixtures:

- ``fake_sqs``: a fresh :class:`FakeSQS` per test.
- ``fake_sqs_client``: an :class:`trio_sqs.SQSClient` on it, in process.
- ``fake_queue_url``: the URL of a fresh standard queue on it, named after the test.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from .._client import SQSClient
from ._helpers import open_fake_client
from ._service import FakeSQS


@pytest.fixture
def fake_sqs() -> FakeSQS:
    """A fresh in-memory SQS for one test."""
    return FakeSQS()


@pytest.fixture
async def fake_sqs_client(fake_sqs: FakeSQS) -> AsyncIterator[SQSClient]:
    """A real :class:`SQSClient` talking to ``fake_sqs`` in process."""
    async with open_fake_client(fake_sqs) as client:
        yield client


@pytest.fixture
async def fake_queue_url(fake_sqs_client: SQSClient, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh standard queue on ``fake_sqs``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:80]
    return await fake_sqs_client.create_queue(name)
