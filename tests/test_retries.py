"""Retries, against a scripted local server that records every request it receives."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import botocore.auth
import httpx
import pytest
import trio

import trio_sqs
from trio_sqs import (
    ClockSkewError,
    QueueDoesNotExist,
    RetryPolicy,
    ServiceError,
    SQSClient,
    Throttled,
    TransportError,
)

from .fake_sqs import (
    RESET,
    FakeSQS,
    Handler,
    Request,
    Reset,
    Response,
    answer_ok,
    error,
    scripted,
    serve_fake_sqs,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)
QUEUE_URL = "http://127.0.0.1/123456789012/q"


def throttling() -> Response:
    return error(400, "ThrottlingException", "Rate exceeded", query_error="Throttling;Sender")


def unavailable() -> Response:
    return Response(status=503, body=b"Service Unavailable", headers={"Content-Type": "text/plain"})


def numbered(make: Callable[[], Response]) -> Handler:
    """Always answer ``make()``, with request ids req-1, req-2, ..."""
    counter = itertools.count(1)

    async def handler(request: Request) -> Response:
        response = make()
        response.headers["x-amzn-RequestId"] = f"req-{next(counter)}"
        return response

    return handler


class Served:
    server: FakeSQS
    client: SQSClient


@asynccontextmanager
async def _serve(handler: Handler, retry: RetryPolicy = FAST) -> AsyncIterator[Served]:
    served = Served()
    async with (
        serve_fake_sqs(handler) as server,
        trio_sqs.open_client(
            region="us-east-1", endpoint_url=server.endpoint, retry=retry
        ) as client,
    ):
        served.server, served.client = server, client
        yield served


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each signature sees a clock one second later than the one before."""
    start = datetime.datetime(2024, 5, 17, 12, 0, 0)
    ticks = itertools.count()
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda: start + datetime.timedelta(seconds=next(ticks)),
    )


async def test_503_then_throttling_then_success(ticking_clock: None) -> None:
    handler = scripted(unavailable(), throttling())
    async with _serve(handler) as s:
        sent = await s.client.send_message(QUEUE_URL, "retry me")
    requests = s.server.requests
    assert len(requests) == 3
    assert sent.md5_of_body == hashlib.md5(b"retry me").hexdigest()
    for request in requests:
        assert request.operation == "SendMessage"
        assert request.params == {"QueueUrl": QUEUE_URL, "MessageBody": "retry me"}
        assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["x-amz-date"])
        assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    # Each attempt was signed afresh: its own timestamp, its own signature.
    assert [r.headers["x-amz-date"] for r in requests] == [
        "20240517T120000Z",
        "20240517T120001Z",
        "20240517T120002Z",
    ]
    assert len({r.headers["authorization"] for r in requests}) == 3


async def test_success_result_after_retry() -> None:
    async def ok(request: Request) -> Response:
        return Response(body={"QueueUrl": "http://127.0.0.1/123456789012/found"})

    async with _serve(scripted(throttling(), then=ok)) as s:
        assert await s.client.get_queue_url("found") == "http://127.0.0.1/123456789012/found"
    assert s.server.operations() == ["GetQueueUrl", "GetQueueUrl"]


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (
            error(
                400,
                "QueueDoesNotExist",
                "The specified queue does not exist.",
                query_error="AWS.SimpleQueueService.NonExistentQueue;Sender",
            ),
            QueueDoesNotExist,
        ),
        (error(400, "InvalidParameterValue", "no"), ServiceError),
        (error(400, "ReceiptHandleIsInvalid", "old"), trio_sqs.InvalidReceiptHandle),
        (
            Response(
                status=403,
                body={"__type": "com.amazon.coral.service#AccessDeniedException", "message": "no"},
            ),
            trio_sqs.AccessDenied,
        ),
    ],
    ids=["queue-missing", "invalid-parameter", "receipt-handle", "access-denied"],
)
async def test_client_errors_fail_at_once(response: Response, cls: type[ServiceError]) -> None:
    async def handler(request: Request) -> Response:
        return response

    async with _serve(handler, RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.001)) as s:
        with pytest.raises(cls) as info:
            await s.client.delete_message(QUEUE_URL, "handle")
    assert type(info.value) is cls
    assert len(s.server.requests) == 1
    assert info.value.request_id and info.value.status_code == response.status


async def test_connection_reset_is_retried() -> None:
    async with _serve(scripted(RESET, RESET)) as s:
        await s.client.delete_message(QUEUE_URL, "handle")
    assert s.server.operations() == ["DeleteMessage"] * 3
    assert s.server.connections >= 3  # each reset cost a connection


async def test_throttling_outlasts_every_attempt() -> None:
    async with _serve(numbered(throttling)) as s:
        with pytest.raises(Throttled) as info:
            await s.client.purge_queue(QUEUE_URL)
    assert len(s.server.requests) == FAST.max_attempts
    error_ = info.value
    assert error_.code == "Throttling"
    assert error_.status_code == 400
    assert error_.request_id == f"req-{FAST.max_attempts}"  # the last attempt's


async def test_server_errors_outlast_every_attempt() -> None:
    async with _serve(numbered(unavailable)) as s:
        with pytest.raises(ServiceError) as info:
            await s.client.purge_queue(QUEUE_URL)
    assert len(s.server.requests) == FAST.max_attempts
    assert info.value.status_code == 503
    assert info.value.request_id == f"req-{FAST.max_attempts}"


async def test_transport_errors_outlast_every_attempt() -> None:
    async def reset(request: Request) -> Reset:
        return RESET

    async with _serve(reset) as s:
        with pytest.raises(TransportError) as info:
            await s.client.delete_message(QUEUE_URL, "handle")
    assert len(s.server.requests) == FAST.max_attempts
    error_ = info.value
    assert error_.code == "TransportError"
    assert "DeleteMessage" in error_.message
    assert isinstance(error_.__cause__, httpx.HTTPError)
    assert error_.status_code is None and error_.request_id is None  # no response ever came


async def test_unreadable_responses_outlast_every_attempt() -> None:
    def html() -> Response:
        return Response(body=b"<html>captive portal</html>", headers={"Content-Type": "text/html"})

    async with _serve(numbered(html)) as s:
        with pytest.raises(TransportError) as info:
            await s.client.get_queue_url("q")
    assert len(s.server.requests) == FAST.max_attempts
    error_ = info.value
    assert error_.code == "InvalidResponse"
    assert error_.status_code == 200
    assert error_.request_id == f"req-{FAST.max_attempts}"
    assert isinstance(error_.__cause__, ValueError)


async def test_clock_skew_is_not_retried_and_names_the_skew() -> None:
    async def handler(request: Request) -> Response:
        return Response(
            status=403,
            body={
                "__type": "com.amazon.coral.service#InvalidSignatureException",
                "message": "Signature expired: 20240517T120000Z is now earlier than "
                "20240517T121000Z (20240517T121500Z - 5 min.)",
            },
            headers={"Date": email.utils.formatdate(time.time() + 900, usegmt=True)},
        )

    async with _serve(handler) as s:
        with pytest.raises(ClockSkewError) as info:
            await s.client.get_queue_url("q")
    assert len(s.server.requests) == 1
    error_ = info.value
    assert error_.status_code == 403 and error_.request_id
    assert error_.skew is not None and 898 < error_.skew <= 901
    named = re.search(r"clock is ([+-]\d+\.\d) s from ours", str(error_))
    assert named is not None and abs(float(named.group(1)) - 900) < 2


async def test_cancel_during_backoff_returns_at_once() -> None:
    slow = RetryPolicy(max_attempts=10, base_delay=30.0, max_delay=30.0)
    async with _serve(numbered(unavailable), slow) as s:
        with trio.move_on_after(0.3) as scope:
            await s.client.purge_queue(QUEUE_URL)
        assert scope.cancelled_caught
        assert trio.current_time() - scope.deadline < 0.05
        # The client still works afterwards.
        s.server.handler = answer_ok
        await s.client.purge_queue(QUEUE_URL)
    assert 2 <= len(s.server.requests) <= 10
