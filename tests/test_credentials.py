"""Credentials: resolution and refresh happen in worker threads and never stall the event loop.

"Never stalls" is proven without timing: a slow refresh blocks in its worker thread until the
Trio loop has shown it runs meanwhile (other tasks got scheduled, or every task blocked waiting),
so a refresh made on the loop's own thread could never end (it would fail at a bound instead).
Requests go to trio_sqs.testing's in-memory SQS through a transport that records their headers.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import ClientError, CredentialRetrievalError

import trio_sqs
from trio_sqs import CredentialsError, SQSClient
from trio_sqs._credentials import CredentialCache
from trio_sqs.testing import FakeSQS

# A safety net only, never reached when the code is right: how long a blocked refresh waits for
# the loop to show it is alive before it gives up (and the test fails).
LOOP_PROOF_TIMEOUT = 10.0
QUEUE_URL = "http://sqs.fake.invalid/123456789012/q"


def _iso_in(seconds: float) -> str:
    return (
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    ).isoformat()


class Gate:
    """Holds a refresh in its worker thread until the Trio side opens it.

    ``entered`` is set (on the Trio side) when a refresh starts; :meth:`open` lets it finish.
    ``stalled`` records a refresh that gave up waiting: the loop never opened the gate.
    """

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.entered = trio.Event()
        self._opened = threading.Event()
        self.stalled = False

    def wait_in_thread(self) -> None:
        self.token.run_sync_soon(self.entered.set)
        if not self._opened.wait(LOOP_PROOF_TIMEOUT):
            self.stalled = True

    def open(self) -> None:
        self._opened.set()


def gated_refreshable(calls: list[str], gate: Gate) -> RefreshableCredentials:
    """Credentials inside botocore's mandatory refresh window, whose provider blocks until the
    gate opens (a slow STS / IMDS / container endpoint)."""

    def refresh() -> dict[str, str]:
        calls.append(threading.current_thread().name)
        gate.wait_in_thread()
        return {
            "access_key": "AKIDNEW",
            "secret_key": "secret-new",
            "token": "token-new",
            "expiry_time": _iso_in(3600),
        }

    return RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": "AKIDOLD",
            "secret_key": "secret-old",
            "token": "token-old",
            "expiry_time": _iso_in(300),  # 5 min: inside the 10 min mandatory window
        },
        refresh_using=refresh,
        method="sts-assume-role",
    )


async def prove_loop_runs(gate: Gate, ticks: int = 100) -> None:
    """Once a refresh has started, run the loop through ``ticks`` schedule points (other tasks
    run meanwhile), then let the refresh finish."""
    await gate.entered.wait()
    for _ in range(ticks):
        await trio.lowlevel.checkpoint()
    gate.open()


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """Records the headers of every request on its way to the fake."""

    fake: FakeSQS
    requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inner = self.fake.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append({k.lower(): v for k, v in request.headers.items()})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def access_key_of(headers: dict[str, str]) -> str:
    match = re.search(r"Credential=([^/]+)/", headers["authorization"])
    assert match is not None
    return match.group(1)


@pytest.fixture
async def fake(fake_sqs: FakeSQS) -> FakeSQS:
    await fake_sqs.call("CreateQueue", {"QueueName": "q"})
    return fake_sqs


@asynccontextmanager
async def client_on_fake(fake: FakeSQS, **kwargs: Any) -> AsyncIterator[tuple[SQSClient, Recorder]]:
    wire = Recorder(fake)
    async with trio_sqs.open_client(
        region="us-east-1", endpoint_url=fake.endpoint, transport=wire, **kwargs
    ) as client:
        yield client, wire


class FakeSource:
    """A credential provider shaped like botocore's RefreshableCredentials, with a knob for expiry.

    Like botocore's, ``get_frozen_credentials`` refreshes only when a refresh is needed (advisory
    or mandatory window); then it blocks until ``gate`` opens, if there is one (it runs in a
    worker thread), and hands out a new generation of keys. Otherwise it returns the current keys
    at once. ``calls`` counts refreshes.
    """

    def __init__(self, gate: Gate | None = None, fail: Exception | None = None) -> None:
        self.gate = gate
        self.fail = fail
        self.generation = 0
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.mandatory = True  # inside the mandatory window (no snapshot yet)
        self.advisory = False
        self.on_refresh: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def refresh_needed(self, refresh_in: float | None = None) -> bool:
        return self.advisory if refresh_in is None else self.mandatory

    def _current(self) -> ReadOnlyCredentials:
        return ReadOnlyCredentials(f"AKIDGEN{self.generation}", "secret", f"tok{self.generation}")

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        if not (self.mandatory or self.advisory):
            return self._current()
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                self.gate.wait_in_thread()
            if self.fail is not None:
                raise self.fail
            self.generation += 1
            self.mandatory = self.advisory = False
            return self._current()
        finally:
            with self._lock:
                self.in_flight -= 1
            if self.on_refresh is not None:
                self.on_refresh()


# -- a slow refresh never stalls the loop --------------------------------------------------------


async def test_slow_refresh_through_open_client_does_not_stall_the_loop(fake: FakeSQS) -> None:
    calls: list[str] = []
    gate = Gate()
    credentials = gated_refreshable(calls, gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prove_loop_runs, gate)
        async with client_on_fake(fake, credentials=credentials) as (client, wire):
            await client.get_queue_url("q")
    assert not gate.stalled, "the refresh blocked the Trio loop"
    assert calls != [] and threading.main_thread().name not in calls
    assert len(calls) == 1
    [request] = wire.requests
    assert access_key_of(request) == "AKIDNEW"
    assert request["x-amz-security-token"] == "token-new"


async def test_concurrent_gets_share_one_slow_refresh() -> None:
    calls: list[str] = []
    gate = Gate()
    cache = CredentialCache(gated_refreshable(calls, gate))
    results: list[ReadOnlyCredentials] = []

    async def get() -> None:
        results.append(await cache.get())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(get)
        await gate.entered.wait()
        # All five wait now, the loop still running: one of them in the refresh's thread.
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        gate.open()
    assert not gate.stalled
    assert len(calls) == 1
    assert cache.refreshes == 1
    assert [r.access_key for r in results] == ["AKIDNEW"] * 5


async def test_one_refresh_at_a_time() -> None:
    gate = Gate()
    source = FakeSource(gate=gate)
    cache = CredentialCache(source)
    results: list[ReadOnlyCredentials] = []

    async def get() -> None:
        results.append(await cache.get())

    async def refresh_while_all_wait(expected_calls: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(get)
            await gate.entered.wait()
            await trio.testing.wait_all_tasks_blocked()
            # Ten callers wait for the one refresh under way; none started another.
            assert source.in_flight == 1 and source.calls == expected_calls
            gate.open()

    await refresh_while_all_wait(1)
    assert {r.access_key for r in results} == {"AKIDGEN1"}

    # The cached snapshot serves without calling the provider again.
    assert (await cache.get()).access_key == "AKIDGEN1"
    assert source.calls == 1

    source.mandatory = True  # the snapshot is about to expire
    results.clear()
    first_gate, gate = gate, Gate()  # a closed gate again, for the second refresh
    source.gate = gate
    await refresh_while_all_wait(2)
    assert source.calls == 2
    assert source.max_in_flight == 1
    assert {r.access_key for r in results} == {"AKIDGEN2"}
    assert not first_gate.stalled and not gate.stalled


async def test_requests_pick_up_refreshed_credentials(fake: FakeSQS) -> None:
    source = FakeSource()
    async with client_on_fake(fake, credentials=source) as (client, wire):
        await client.get_queue_attributes(QUEUE_URL)
        await client.get_queue_attributes(QUEUE_URL)
        source.mandatory = True
        await client.get_queue_attributes(QUEUE_URL)
    assert [access_key_of(r) for r in wire.requests] == ["AKIDGEN1", "AKIDGEN1", "AKIDGEN2"]
    assert [r["x-amz-security-token"] for r in wire.requests] == ["tok1", "tok1", "tok2"]
    assert source.calls == 2


async def test_background_refresh_in_the_advisory_window() -> None:
    source = FakeSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"
    refreshed = trio.Event()
    token = trio.lowlevel.current_trio_token()
    source.on_refresh = lambda: token.run_sync_soon(refreshed.set)
    source.advisory = True  # advised, not yet mandatory: requests keep the old snapshot
    assert (await cache.get()).access_key == "AKIDGEN1"
    assert source.calls == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: cache.run_refresher(check_interval=0.01))
        with trio.fail_after(5):
            await refreshed.wait()
        nursery.cancel_scope.cancel()
    assert source.calls == 2
    assert (await cache.get()).access_key == "AKIDGEN2"
    assert source.calls == 2


async def test_failed_background_refresh_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource()
    cache = CredentialCache(source)
    await cache.get()
    refreshed = trio.Event()
    token = trio.lowlevel.current_trio_token()
    calls = 0

    def on_refresh() -> None:
        # The second attempt starts only after the first one failed and was logged.
        nonlocal calls
        calls += 1
        if calls == 2:
            token.run_sync_soon(refreshed.set)

    source.on_refresh = on_refresh
    source.fail = CredentialRetrievalError(provider="sts", error_msg="STS is down")
    source.advisory = True
    with caplog.at_level(logging.WARNING, logger="trio_sqs.credentials"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: cache.run_refresher(check_interval=0.01))
            with trio.fail_after(5):
                await refreshed.wait()
            nursery.cancel_scope.cancel()
    assert any("STS is down" in r.getMessage() for r in caplog.records)
    # Outside the mandatory window the old snapshot still serves.
    assert (await cache.get()).access_key == "AKIDGEN1"
    # Inside it, the failure reaches the caller as CredentialsError.
    source.mandatory = True
    with pytest.raises(CredentialsError, match="STS is down") as info:
        await cache.get()
    assert isinstance(info.value.__cause__, CredentialRetrievalError)


async def test_provider_returning_nothing_is_a_credentials_error() -> None:
    class Empty:
        def get_frozen_credentials(self) -> ReadOnlyCredentials:
            return ReadOnlyCredentials("", "", None)

    with pytest.raises(CredentialsError, match="no credentials"):
        await CredentialCache(Empty()).get()


# -- where credentials come from -----------------------------------------------------------------


async def test_explicit_keys_win_over_the_environment(fake: FakeSQS) -> None:
    async with client_on_fake(
        fake,
        aws_access_key_id="AKIDEXPLICIT",
        aws_secret_access_key="secret",
        aws_session_token="explicit-token",
    ) as (client, wire):
        await client.get_queue_url("q")
    [request] = wire.requests
    assert access_key_of(request) == "AKIDEXPLICIT"
    assert request["x-amz-security-token"] == "explicit-token"


async def test_environment_keys(fake: FakeSQS) -> None:
    # The fake checks signatures here: the request was signed with the environment's secret.
    fake.verify_signatures = True
    async with client_on_fake(fake) as (client, wire):
        assert await client.get_queue_url("q") == QUEUE_URL
    [request] = wire.requests
    assert access_key_of(request) == os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert "x-amz-security-token" not in request


def _write_credentials(text: str) -> None:
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(text)


async def test_named_profile_from_the_shared_credentials_file(fake: FakeSQS) -> None:
    _write_credentials(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n\n"
        "[work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = w\n"
        "aws_session_token = work-token\n"
    )
    async with client_on_fake(fake, profile="work") as (client, wire):
        await client.get_queue_url("q")
    [request] = wire.requests
    assert access_key_of(request) == "AKIDWORK"
    assert request["x-amz-security-token"] == "work-token"


async def test_default_profile_when_the_environment_has_no_keys(
    monkeypatch: pytest.MonkeyPatch, fake: FakeSQS
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _write_credentials("[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n")
    async with client_on_fake(fake) as (client, wire):
        await client.get_queue_url("q")
    assert [access_key_of(r) for r in wire.requests] == ["AKIDDEFAULT"]


async def test_unknown_profile(fake: FakeSQS) -> None:
    wire = Recorder(fake)
    with pytest.raises(CredentialsError, match="nope"):
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, profile="nope", transport=wire
        ):
            pytest.fail("opened a client with a profile that does not exist")
    assert wire.requests == []


async def test_no_credentials_at_all(monkeypatch: pytest.MonkeyPatch, fake: FakeSQS) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    wire = Recorder(fake)
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, transport=wire
        ):
            pytest.fail("opened a client without credentials")
    assert wire.requests == []


async def test_failing_provider_at_open(fake: FakeSQS) -> None:
    source = FakeSource(fail=CredentialRetrievalError(provider="sso", error_msg="token expired"))
    wire = Recorder(fake)
    with pytest.raises(CredentialsError, match="token expired") as info:
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, credentials=source, transport=wire
        ):
            pytest.fail("opened a client whose credentials cannot be resolved")
    assert isinstance(info.value.__cause__, CredentialRetrievalError)
    assert wire.requests == []


async def test_sts_error_inside_the_provider_is_a_credentials_error(fake: FakeSQS) -> None:
    """AssumeRole / web-identity providers call STS; its errors are ClientError, not BotoCoreError."""
    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not authorized to assume role"}},
        "AssumeRoleWithWebIdentity",
    )
    wire = Recorder(fake)
    with pytest.raises(CredentialsError, match="not authorized to assume role") as info:
        async with trio_sqs.open_client(
            region="us-east-1",
            endpoint_url=fake.endpoint,
            credentials=FakeSource(fail=denied),
            transport=wire,
        ):
            pytest.fail("opened a client whose role cannot be assumed")
    assert info.value.__cause__ is denied
    assert wire.requests == []
