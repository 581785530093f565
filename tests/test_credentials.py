"""Credentials: resolution and refresh happen in worker threads and never stall the event loop."""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import ClientError, CredentialRetrievalError

import trio_sqs
from trio_sqs import CredentialsError, SQSClient
from trio_sqs._credentials import CredentialCache

from .fake_sqs import FakeSQS, Request, serve_fake_sqs

REFRESH_SECONDS = 1.0
MAX_TICK_GAP = 0.2


def _iso_in(seconds: float) -> str:
    return (
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    ).isoformat()


def slow_refreshable(calls: list[float]) -> RefreshableCredentials:
    """Credentials inside botocore's mandatory refresh window, whose provider takes 1 s."""

    def refresh() -> dict[str, str]:
        calls.append(time.monotonic())
        time.sleep(REFRESH_SECONDS)  # a slow STS / IMDS / container endpoint
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


class Ticker:
    """Ticks every 10 ms on the Trio thread and records the gaps between ticks."""

    def __init__(self) -> None:
        self.gaps: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        last = time.perf_counter()
        task_status.started()
        while True:
            await trio.sleep(0.01)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now


@asynccontextmanager
async def ticking() -> AsyncIterator[Ticker]:
    ticker = Ticker()
    async with trio.open_nursery() as nursery:
        await nursery.start(ticker.run)
        yield ticker
        nursery.cancel_scope.cancel()


def access_key_of(request: Request) -> str:
    match = re.search(r"Credential=([^/]+)/", request.headers["authorization"])
    assert match is not None
    return match.group(1)


@asynccontextmanager
async def client_on_fake(**kwargs: Any) -> AsyncIterator[tuple[SQSClient, FakeSQS]]:
    async with (
        serve_fake_sqs() as server,
        trio_sqs.open_client(region="us-east-1", endpoint_url=server.endpoint, **kwargs) as client,
    ):
        yield client, server


class FakeSource:
    """A credential provider shaped like botocore's RefreshableCredentials, with a knob for expiry.

    Like botocore's, ``get_frozen_credentials`` refreshes only when a refresh is needed (advisory
    or mandatory window); then it blocks for ``delay`` seconds (it runs in a worker thread) and
    hands out a new generation of keys. Otherwise it returns the current keys at once.
    ``calls`` counts refreshes.
    """

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.delay = delay
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
            time.sleep(self.delay)
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


async def test_slow_refresh_through_open_client_does_not_stall_the_loop() -> None:
    calls: list[float] = []
    credentials = slow_refreshable(calls)
    async with ticking() as ticker:
        started = time.perf_counter()
        async with client_on_fake(credentials=credentials) as (client, server):
            await client.get_queue_url("q")
        elapsed = time.perf_counter() - started
    assert len(calls) == 1
    assert elapsed >= REFRESH_SECONDS  # the refresh really happened while the ticker ran
    assert len(ticker.gaps) >= 50
    assert max(ticker.gaps) < MAX_TICK_GAP
    [request] = server.requests
    assert access_key_of(request) == "AKIDNEW"
    assert request.headers["x-amz-security-token"] == "token-new"


async def test_concurrent_gets_share_one_slow_refresh() -> None:
    calls: list[float] = []
    cache = CredentialCache(slow_refreshable(calls))
    results: list[ReadOnlyCredentials] = []

    async def get() -> None:
        results.append(await cache.get())

    async with ticking() as ticker:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(get)
    assert len(calls) == 1
    assert cache.refreshes == 1
    assert [r.access_key for r in results] == ["AKIDNEW"] * 5
    assert max(ticker.gaps) < MAX_TICK_GAP


async def test_one_refresh_at_a_time() -> None:
    source = FakeSource(delay=0.1)
    cache = CredentialCache(source)
    results: list[ReadOnlyCredentials] = []

    async def get() -> None:
        results.append(await cache.get())

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(get)
    assert source.calls == 1
    assert {r.access_key for r in results} == {"AKIDGEN1"}

    # The cached snapshot serves without calling the provider again.
    assert (await cache.get()).access_key == "AKIDGEN1"
    assert source.calls == 1

    source.mandatory = True  # the snapshot is about to expire
    results.clear()
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(get)
    assert source.calls == 2
    assert source.max_in_flight == 1
    assert {r.access_key for r in results} == {"AKIDGEN2"}


async def test_requests_pick_up_refreshed_credentials() -> None:
    source = FakeSource()
    async with client_on_fake(credentials=source) as (client, server):
        await client.purge_queue("http://127.0.0.1/1/q")
        await client.purge_queue("http://127.0.0.1/1/q")
        source.mandatory = True
        await client.purge_queue("http://127.0.0.1/1/q")
    assert [access_key_of(r) for r in server.requests] == ["AKIDGEN1", "AKIDGEN1", "AKIDGEN2"]
    assert [r.headers["x-amz-security-token"] for r in server.requests] == ["tok1", "tok1", "tok2"]
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


async def test_explicit_keys_win_over_the_environment() -> None:
    async with client_on_fake(
        aws_access_key_id="AKIDEXPLICIT",
        aws_secret_access_key="secret",
        aws_session_token="explicit-token",
    ) as (client, server):
        await client.get_queue_url("q")
    [request] = server.requests
    assert access_key_of(request) == "AKIDEXPLICIT"
    assert request.headers["x-amz-security-token"] == "explicit-token"


async def test_environment_keys() -> None:
    async with client_on_fake() as (client, server):
        await client.get_queue_url("q")
    [request] = server.requests
    assert access_key_of(request) == os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert "x-amz-security-token" not in request.headers


def _write_credentials(text: str) -> None:
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(text)


async def test_named_profile_from_the_shared_credentials_file() -> None:
    _write_credentials(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n\n"
        "[work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = w\n"
        "aws_session_token = work-token\n"
    )
    async with client_on_fake(profile="work") as (client, server):
        await client.get_queue_url("q")
    [request] = server.requests
    assert access_key_of(request) == "AKIDWORK"
    assert request.headers["x-amz-security-token"] == "work-token"


async def test_default_profile_when_the_environment_has_no_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _write_credentials("[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n")
    async with client_on_fake() as (client, server):
        await client.get_queue_url("q")
    assert [access_key_of(r) for r in server.requests] == ["AKIDDEFAULT"]


async def test_unknown_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_fake_sqs() as server:
        with pytest.raises(CredentialsError, match="nope"):
            async with trio_sqs.open_client(
                region="us-east-1", endpoint_url=server.endpoint, profile="nope"
            ):
                pytest.fail("opened a client with a profile that does not exist")
    assert server.requests == []


async def test_no_credentials_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with serve_fake_sqs() as server:
        with pytest.raises(CredentialsError, match="no AWS credentials found"):
            async with trio_sqs.open_client(region="us-east-1", endpoint_url=server.endpoint):
                pytest.fail("opened a client without credentials")
    assert server.requests == []


async def test_failing_provider_at_open() -> None:
    source = FakeSource(fail=CredentialRetrievalError(provider="sso", error_msg="token expired"))
    async with serve_fake_sqs() as server:
        with pytest.raises(CredentialsError, match="token expired") as info:
            async with trio_sqs.open_client(
                region="us-east-1", endpoint_url=server.endpoint, credentials=source
            ):
                pytest.fail("opened a client whose credentials cannot be resolved")
    assert isinstance(info.value.__cause__, CredentialRetrievalError)
    assert server.requests == []


async def test_sts_error_inside_the_provider_is_a_credentials_error() -> None:
    """AssumeRole / web-identity providers call STS; its errors are ClientError, not BotoCoreError."""
    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not authorized to assume role"}},
        "AssumeRoleWithWebIdentity",
    )
    async with serve_fake_sqs() as server:
        with pytest.raises(CredentialsError, match="not authorized to assume role") as info:
            async with trio_sqs.open_client(
                region="us-east-1",
                endpoint_url=server.endpoint,
                credentials=FakeSource(fail=denied),
            ):
                pytest.fail("opened a client whose role cannot be assumed")
    assert info.value.__cause__ is denied
    assert server.requests == []
