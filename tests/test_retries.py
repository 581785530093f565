"""Retries, on trio_sqs.testing's in-memory SQS under Trio's virtual clock.

Errors come from the fake (``fake.faults``: SQS's own throttling and 5xx answers, dropped
connections, stalled bodies, signature checks) or, for answers SQS itself never gives (a load
balancer's plain-text 503, a captive portal's HTML), from a transport in front of it. Every
request is recorded on its way with its virtual time and headers, so backoffs are asserted to
the exact second and each attempt is seen to be signed afresh.
"""

from __future__ import annotations

import datetime
import email.utils
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing

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
from trio_sqs._client import DEFAULT_TIMEOUT, POLL_READ_MARGIN
from trio_sqs._protocol import SQSProtocol
from trio_sqs.testing import FakeSQS, open_fake_client

from .conftest import set_signing_clock

# Backoff ceilings 1, 2, 3, 3, ... s; with no_jitter each backoff is its ceiling.
POLICY = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=3.0)
BACKOFFS = [1.0, 2.0, 3.0]


@dataclass
class Sent:
    """One request as it left the client."""

    time: float
    operation: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # of the answer it got, if any
    request_id: str | None = None


Canned = Callable[[int], httpx.Response]


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """Records every request on its way to the fake; :meth:`answer_next` puts canned answers
    in front of the fake (a proxy or load balancer answering instead of SQS)."""

    fake: FakeSQS
    requests: list[Sent] = field(default_factory=list)
    canned: list[Canned] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inner = self.fake.transport()

    def answer_next(self, make: Canned, times: int = 1) -> None:
        self.canned.extend([make] * times)

    def times(self) -> list[float]:
        return [r.time for r in self.requests]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = Sent(
            trio.current_time(),
            request.headers.get("x-amz-target", "").rpartition(".")[2],
            {k.lower(): v for k, v in request.headers.items()},
            await request.aread(),
        )
        self.requests.append(sent)
        if self.canned:
            await trio.lowlevel.checkpoint()
            response = self.canned.pop(0)(len(self.requests))
        else:
            response = await self.inner.handle_async_request(request)
        sent.status = response.status_code
        sent.request_id = response.headers.get("x-amzn-requestid")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def unavailable(n: int) -> httpx.Response:
    """A load balancer's 503: plain text, not SQS's JSON."""
    return httpx.Response(
        503,
        headers={"Content-Type": "text/plain", "x-amzn-RequestId": f"req-{n}"},
        content=b"Service Unavailable",
    )


def captive_portal(n: int) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"Content-Type": "text/html", "x-amzn-RequestId": f"req-{n}"},
        content=b"<html>captive portal</html>",
    )


@asynccontextmanager
async def serve(
    fake: FakeSQS, retry: RetryPolicy = POLICY
) -> AsyncIterator[tuple[SQSClient, Recorder]]:
    """A client on ``fake`` through a :class:`Recorder` (as open_fake_client: nothing to read,
    no worker thread for MockClock's autojump to jump over)."""
    recorder = Recorder(fake)
    async with open_fake_client(
        fake,
        retry=retry,
        transport=recorder,
    ) as client:
        yield client, recorder


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each signature sees a clock one second later than the one before."""
    start = datetime.datetime(2024, 5, 17, 12, 0, 0)
    ticks = itertools.count()
    set_signing_clock(monkeypatch, lambda: start + datetime.timedelta(seconds=next(ticks)))


def spaced_by(times: list[float], gaps: list[float]) -> list[float]:
    return list(itertools.accumulate(gaps, initial=times[0]))


async def test_503_then_throttling_then_success(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    no_jitter: None,
    ticking_clock: None,
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    async with serve(fake_sqs) as (client, recorder):
        recorder.answer_next(unavailable)
        fake_sqs.faults.throttle("SendMessage")
        sent = await client.send_message(url, "retry me")
    requests = recorder.requests
    assert len(requests) == 3
    assert recorder.times() == spaced_by(recorder.times(), BACKOFFS[:2])
    [message] = fake_sqs.queue(url).messages()  # sent once, by the third attempt
    assert message.message_id == sent.message_id and message.body == "retry me"
    assert fake_sqs.call_counts["SendMessage"] == 2  # the first attempt never reached SQS
    for request in requests:
        assert request.operation == "SendMessage"
        assert request.body == requests[0].body
        assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["x-amz-date"])
        assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    # Each attempt was signed afresh: its own timestamp (the clock ticks a second per reading;
    # opening the client read it too, to compare our signer with botocore's), its own signature.
    stamps = [
        datetime.datetime.strptime(r.headers["x-amz-date"], "%Y%m%dT%H%M%SZ") for r in requests
    ]
    assert stamps[0] >= datetime.datetime(2024, 5, 17, 12, 0, 0)
    assert stamps == [stamps[0] + datetime.timedelta(seconds=n) for n in range(3)]
    assert len({r.headers["authorization"] for r in requests}) == 3


async def test_success_result_after_retry(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "found"}))["QueueUrl"]
    mark = len(fake_sqs.calls)
    fake_sqs.faults.throttle("GetQueueUrl")
    async with serve(fake_sqs) as (client, recorder):
        assert await client.get_queue_url("found") == url
    assert [r.operation for r in recorder.requests] == ["GetQueueUrl", "GetQueueUrl"]
    assert fake_sqs.call_counts["GetQueueUrl"] == 2
    assert [c.operation for c in fake_sqs.calls[mark:]][-1] == "GetQueueUrl"
    # The one backoff drawn lies within its ceiling.
    first, second = recorder.times()
    assert 0 <= second - first <= POLICY.backoff_ceiling(1)


CLIENT_ERRORS: list[Any] = [
    # SQS's own answers, for a missing queue and a receipt handle it never issued.
    pytest.param("missing-queue", QueueDoesNotExist, 400, id="queue-missing"),
    pytest.param("bogus-handle", trio_sqs.InvalidReceiptHandle, 400, id="receipt-handle"),
    # Scripted ones.
    pytest.param("InvalidParameterValue", ServiceError, 400, id="invalid-parameter"),
    pytest.param("AccessDenied", trio_sqs.AccessDenied, 403, id="access-denied"),
]


@pytest.mark.parametrize(("case", "cls", "status"), CLIENT_ERRORS)
async def test_client_errors_fail_at_once(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    case: str,
    cls: type[ServiceError],
    status: int,
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    if case == "missing-queue":
        url = url.replace("/q", "/never-created")
    elif case != "bogus-handle":
        fake_sqs.faults.fail("DeleteMessage", status=status, code=case, times=10)
    retry = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=1.0)
    async with serve(fake_sqs, retry) as (client, recorder):
        t0 = trio.current_time()
        with pytest.raises(cls) as info:
            await client.delete_message(url, "handle")
        assert trio.current_time() == t0  # no backoff: nothing was retried
    assert type(info.value) is cls
    assert len(recorder.requests) == 1
    assert info.value.status_code == status
    assert info.value.request_id == recorder.requests[0].request_id is not None


async def test_connection_reset_is_retried(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    fake_sqs.faults.drop("GetQueueUrl", times=2)  # closed without an answer, twice
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    async with serve(fake_sqs) as (client, recorder):
        assert await client.get_queue_url("q") == url
    assert [r.operation for r in recorder.requests] == ["GetQueueUrl"] * 3
    assert fake_sqs.faults.applied[("drop", "GetQueueUrl")] == 2
    assert recorder.times() == spaced_by(recorder.times(), BACKOFFS[:2])


async def test_throttling_outlasts_every_attempt(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    fake_sqs.faults.throttle("PurgeQueue", times=POLICY.max_attempts)
    async with serve(fake_sqs) as (client, recorder):
        t0 = trio.current_time()
        with pytest.raises(Throttled) as info:
            await client.purge_queue(url)
        assert trio.current_time() == t0 + sum(BACKOFFS)
    assert len(recorder.requests) == POLICY.max_attempts
    assert recorder.times() == spaced_by([t0], BACKOFFS)
    error_ = info.value
    assert error_.code == "RequestThrottled"
    assert error_.status_code == 400
    assert error_.request_id == recorder.requests[-1].request_id  # the last attempt's
    assert len({r.request_id for r in recorder.requests}) == POLICY.max_attempts
    assert fake_sqs.queue(url).last_purge is None  # never purged


@pytest.mark.parametrize("source", ["sqs-500", "proxy-503"])
async def test_server_errors_outlast_every_attempt(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None, source: str
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    async with serve(fake_sqs) as (client, recorder):
        if source == "sqs-500":
            fake_sqs.faults.fail("PurgeQueue", times=POLICY.max_attempts)
        else:
            recorder.answer_next(unavailable, times=POLICY.max_attempts)
        with pytest.raises(ServiceError) as info:
            await client.purge_queue(url)
    assert len(recorder.requests) == POLICY.max_attempts
    assert recorder.times() == spaced_by(recorder.times(), BACKOFFS)
    assert info.value.status_code == (500 if source == "sqs-500" else 503)
    assert info.value.request_id == recorder.requests[-1].request_id is not None
    if source == "proxy-503":
        assert info.value.request_id == f"req-{POLICY.max_attempts}"


async def test_transport_errors_outlast_every_attempt(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    fake_sqs.faults.drop("DeleteMessage", times=POLICY.max_attempts)
    async with serve(fake_sqs) as (client, recorder):
        with pytest.raises(TransportError) as info:
            await client.delete_message(url, "handle")
    assert len(recorder.requests) == POLICY.max_attempts
    assert recorder.times() == spaced_by(recorder.times(), BACKOFFS)
    error_ = info.value
    assert error_.code == "TransportError"
    assert "DeleteMessage" in error_.message
    assert isinstance(error_.__cause__, httpx.HTTPError)
    assert error_.status_code is None and error_.request_id is None  # no response ever came


async def test_unreadable_responses_outlast_every_attempt(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    async with serve(fake_sqs) as (client, recorder):
        recorder.answer_next(captive_portal, times=POLICY.max_attempts)
        with pytest.raises(TransportError) as info:
            await client.get_queue_url("q")
    assert len(recorder.requests) == POLICY.max_attempts
    assert recorder.times() == spaced_by(recorder.times(), BACKOFFS)
    error_ = info.value
    assert error_.code == "InvalidResponse"
    assert error_.status_code == 200
    assert error_.request_id == f"req-{POLICY.max_attempts}"
    assert isinstance(error_.__cause__, ValueError)


async def test_a_stalled_answer_is_retried_after_the_read_timeout(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    fake_sqs.faults.stall("GetQueueAttributes")  # headers, then a body that never comes
    async with serve(fake_sqs) as (client, recorder):
        t0 = trio.current_time()
        attributes = await client.get_queue_attributes(url)
    assert attributes["QueueArn"].endswith(":q")
    assert recorder.times() == [t0, t0 + DEFAULT_TIMEOUT + BACKOFFS[0]]


async def test_a_stalled_long_poll_is_not_retried(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    """A long poll's read timeout is its wait time plus a margin; the poller, not the client,
    decides what comes next."""
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "q"}))["QueueUrl"]
    fake_sqs.faults.stall("ReceiveMessage")
    async with serve(fake_sqs) as (client, recorder):
        t0 = trio.current_time()
        with pytest.raises(TransportError) as info:
            await client.receive_messages(url, wait_time=20)
        # The answer's headers came when the 20 s poll ended; the read timeout (wait time plus
        # margin) then bounded the wait for its body, as httpx bounds each read.
        assert trio.current_time() == t0 + 20 + (20 + POLL_READ_MARGIN)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert len(recorder.requests) == 1


def _stamp(request: Sent) -> float:
    when = datetime.datetime.strptime(request.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


async def test_clock_skew_is_corrected_from_the_date_header_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's clock 15 minutes ahead of ours: SQS (the fake, checking signatures) refuses
    the signature as expired; its Date header tells how far off we are, and the request is
    signed again at the server's time at once (no backoff, not counted as an attempt). Later
    calls are signed at the server's time from the start."""
    fake = FakeSQS(verify_signatures=True, clock_skew=900)
    await fake.call("CreateQueue", {"QueueName": "q"})
    async with serve(fake) as (client, recorder):
        start = trio.current_time()
        url = await client.get_queue_url("q")
        assert trio.current_time() == start  # retried at once
        assert url.endswith("/q")
        rejected, accepted = recorder.requests
        assert rejected.status in (400, 403) and accepted.status == 200
        # Date headers have whole seconds: corrected by 900 s give or take one.
        assert 898 <= _stamp(accepted) - _stamp(rejected) <= 902
        await client.get_queue_url("q")
        assert len(recorder.requests) == 3 and recorder.requests[2].status == 200
    [warning] = [r for r in caplog.records if "clock skew" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    named = re.search(r"clock is ([+-]\d+\.\d) s from ours", warning.getMessage())
    assert named is not None and abs(float(named.group(1)) - 900) < 2


def skew_rejection(n: int) -> httpx.Response:
    """SQS refusing a signature as expired while its Date header says our clock is right (a
    skew we cannot correct: signing again at the server's time changes nothing)."""
    return httpx.Response(
        400,
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-RequestId": f"req-{n}",
            "Date": email.utils.formatdate(time.time(), usegmt=True),
        },
        content=json.dumps(
            {
                "__type": "com.amazon.coral.service#RequestExpired",
                "message": "Signature expired: is now earlier than (now - 5 min.)",
            }
        ).encode(),
    )


async def test_a_skew_that_correction_does_not_fix_raises_clock_skew_error(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with serve(fake_sqs) as (client, recorder):
        recorder.answer_next(skew_rejection, times=3)
        with pytest.raises(ClockSkewError) as info:
            await client.get_queue_url("q")
    # One request, one corrected (by the measured skew, here about 0 s), then final.
    assert len(recorder.requests) == 2
    assert len(recorder.canned) == 1
    error_ = info.value
    assert error_.status_code == 400 and error_.request_id == "req-2"
    assert error_.skew is not None and abs(error_.skew) < 2
    assert "Signature expired" in error_.message


async def test_clock_skew_is_not_corrected_when_botocore_signs(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With our signer off (it disagreed with botocore's at start), botocore signs at its own
    clock: a skew cannot be corrected, ClockSkewError names it after one request."""
    monkeypatch.setattr(SQSProtocol, "check_signer", lambda self, credentials: "made to differ")
    fake = FakeSQS(verify_signatures=True, clock_skew=900)
    async with serve(fake) as (client, recorder):
        with pytest.raises(ClockSkewError) as info:
            await client.get_queue_url("q")
    [request] = recorder.requests
    error_ = info.value
    assert error_.status_code == request.status and error_.status_code in (400, 403)
    assert error_.request_id == request.request_id is not None
    assert "Signature expired" in error_.message
    assert error_.skew is not None and 898 < error_.skew <= 901
    named = re.search(r"clock is ([+-]\d+\.\d) s from ours", str(error_))
    assert named is not None and abs(float(named.group(1)) - 900) < 2
