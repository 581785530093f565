"""Credentials: resolution and refresh happen in worker threads and never stall the event loop.

"Never stalls" is proven without timing: a slow refresh blocks in its worker thread until the
Trio loop has shown it runs meanwhile (other tasks got scheduled, or every task blocked waiting),
so a refresh made on the loop's own thread could never end (it would fail at a bound instead).
Requests go to trio_sqs.testing's in-memory SQS through a transport that records their headers.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import json
import logging
import math
import os
import random
import re
import sys
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
from trio_sqs._credentials import (
    BACKOFF_MAX,
    DEFAULT_ADVISORY_REFRESH_SECONDS,
    DEFAULT_MANDATORY_REFRESH_SECONDS,
    REFETCH_INTERVAL,
    REFRESH_CHECK_INTERVAL,
    CredentialCache,
    RefreshWindows,
)
from trio_sqs.testing import FakeSQS

from .conftest import worker_thread_finished

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


@pytest.fixture
def held_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> trio.testing.MockClock:
    """The autojump clock, held still while a worker thread runs.

    A task waiting for a thread counts as blocked, so autojump would skip to the next deadline
    (the test's own, at worst) while a refresh runs. Held, virtual time passes only when every
    task waits for Trio itself, and a refresh takes no virtual time: its times are exact. The
    threads here never block, so holding the clock cannot hang a test.
    """
    run_sync = trio.to_thread.run_sync
    running = 0

    async def run_sync_held(*args: Any, **kwargs: Any) -> Any:
        nonlocal running
        running += 1
        autojump_clock.autojump_threshold = math.inf
        try:
            return await run_sync(*args, **kwargs)
        finally:
            running -= 1
            if running == 0:
                autojump_clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_held)
    return autojump_clock


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
        self.call_times: list[float] = []  # virtual times of the refreshes, on a MockClock
        try:
            clock = trio.lowlevel.current_clock()
        except RuntimeError:  # made outside Trio
            clock = None
        self._clock = clock if isinstance(clock, trio.testing.MockClock) else None
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
            if self._clock is not None:
                self.call_times.append(self._clock.current_time())
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


async def test_background_refresh_in_the_advisory_window(
    held_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    source = FakeSource()
    cache = CredentialCache(source)
    assert (await cache.get()).access_key == "AKIDGEN1"
    source.advisory = True  # advised, not yet mandatory: requests keep the old snapshot
    assert (await cache.get()).access_key == "AKIDGEN1"
    assert source.calls == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run_refresher)
        await trio.sleep(REFRESH_CHECK_INTERVAL - 0.5)
        assert source.calls == 1
        await trio.sleep(1.0)
        # Its first tick, one interval after it started (a source without windows of its own).
        assert source.call_times == [t0, t0 + REFRESH_CHECK_INTERVAL]
        nursery.cancel_scope.cancel()
    assert source.calls == 2
    assert (await cache.get()).access_key == "AKIDGEN2"
    assert source.calls == 2


async def test_failed_background_refresh_is_not_fatal(
    held_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    cache = CredentialCache(source)
    await cache.get()
    source.fail = CredentialRetrievalError(provider="sts", error_msg="STS is down")
    source.advisory = True
    t0 = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="trio_sqs.credentials"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: cache.run_refresher(check_interval=10.0))
            # Tried at its first tick, failed, tried again within the first back-off (<= 1 s);
            # the second back-off is at least 1 s.
            await trio.sleep_until(t0 + 11.25)
            assert source.calls == 3
            first, second = source.call_times[1:]
            assert first == t0 + 10.0
            assert 0.5 <= second - first <= 1.0
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


# -- a failed refresh never takes the client down (issue 11, item 6) -----------------------------

# botocore's RefreshableCredentials on the MockClock: expiry and refresh windows in virtual time.
EPOCH = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
STILL_EXPIRED = "Credentials were refreshed, but the refreshed credentials are still expired."


def virtual_now(clock: trio.testing.MockClock) -> datetime.datetime:
    return EPOCH + datetime.timedelta(seconds=clock.current_time())


class Provider:
    """The provider behind a ClockedCredentials (botocore's ``refresh_using``): each call takes
    the next scripted answer, keys valid for that many seconds or an exception to raise, and
    records its virtual time."""

    def __init__(self, clock: trio.testing.MockClock, *answers: float | Exception) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.calls: list[float] = []

    def __call__(self) -> dict[str, str]:
        self.calls.append(self.clock.current_time())
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        n = len(self.calls)
        expiry = virtual_now(self.clock) + datetime.timedelta(seconds=answer)
        return {
            "access_key": f"AKIDNEW{n}",
            "secret_key": f"secret-new{n}",
            "token": f"token-new{n}",
            "expiry_time": expiry.isoformat(),
        }


class ClockedCredentials(RefreshableCredentials):
    """botocore's own refreshable credentials (its windows, locks, refresh logic and errors) on
    the MockClock; ``reads`` counts calls of get_frozen_credentials (each one a worker thread)."""

    def __init__(
        self,
        clock: trio.testing.MockClock,
        provider: Provider,
        *,
        expires_in: float,
        advisory: float | None = None,
        mandatory: float | None = None,
    ) -> None:
        super().__init__(
            "AKIDOLD",
            "secret-old",
            "token-old",
            expiry_time=virtual_now(clock) + datetime.timedelta(seconds=expires_in),
            refresh_using=provider,
            method="sts-assume-role",
            time_fetcher=lambda: virtual_now(clock),
            advisory_timeout=advisory,
            mandatory_timeout=mandatory,
        )
        self.reads = 0

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        self.reads += 1
        return super().get_frozen_credentials()


async def test_still_expired_in_the_background_refresher_does_not_tear_down_the_client(
    held_clock: trio.testing.MockClock, fake: FakeSQS, caplog: pytest.LogCaptureFixture
) -> None:
    """(a) botocore's RuntimeError for refreshed credentials that are still expired, raised in the
    background refresher: logged, backed off and retried; the client block lives on, requests
    inside the mandatory window meanwhile get CredentialsError, and the retry's keys are used."""
    t0 = trio.current_time()
    # botocore's default windows: advisory 15 min, mandatory 10 min; expiry 16 min 5 s away. The
    # refresher reads every 30 s: at t0 + 90 the advisory window is open (14 min 35 s left).
    provider = Provider(held_clock, -60.0, 3600.0)  # already expired, then an hour
    source = ClockedCredentials(held_clock, provider, expires_in=16 * 60 + 5)
    with caplog.at_level(logging.WARNING, logger="trio_sqs.credentials"):
        async with client_on_fake(fake, credentials=source) as (client, wire):
            await client.get_queue_attributes(QUEUE_URL)
            await trio.sleep_until(t0 + 90.25)
            assert provider.calls == [t0 + 90.0]
            # botocore now holds the expired keys it was given: this request needs a refresh,
            # and the next attempt is not due yet.
            with pytest.raises(CredentialsError, match="still expired") as info:
                await client.get_queue_attributes(QUEUE_URL)
            assert isinstance(info.value.__cause__, RuntimeError)
            assert str(info.value.__cause__) == STILL_EXPIRED
            await trio.sleep_until(t0 + 92.0)
            # Retried after a back-off of 0.5 to 1 s: these keys are good for an hour.
            assert len(provider.calls) == 2
            assert 0.5 <= provider.calls[1] - provider.calls[0] <= 1.0
            await client.get_queue_attributes(QUEUE_URL)
    assert [access_key_of(r) for r in wire.requests] == ["AKIDOLD", "AKIDNEW2"]
    [record] = [r for r in caplog.records if r.name == "trio_sqs.credentials"]
    assert record.levelno == logging.WARNING
    assert STILL_EXPIRED in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CredentialsError)
    assert isinstance(record.exc_info[1].__cause__, RuntimeError)


PROVIDER_FAILURES = [
    pytest.param(RuntimeError(STILL_EXPIRED), id="still-expired"),
    pytest.param(ValueError("Unknown string format: tomorrow"), id="bad-expiry"),
    pytest.param(KeyError("AccessKeyId"), id="missing-field"),
    pytest.param(
        OSError(errno.ECONNREFUSED, "connection refused (container endpoint)"), id="os-error"
    ),
    pytest.param(AttributeError("'NoneType' object has no attribute 'get'"), id="provider-bug"),
]


@pytest.mark.parametrize("failure", PROVIDER_FAILURES)
async def test_any_provider_exception_is_a_credentials_error_for_the_request(
    held_clock: trio.testing.MockClock, fake: FakeSQS, failure: Exception
) -> None:
    """(c) Whatever the provider raises reaches the request that needed the refresh as
    CredentialsError (the provider's exception its cause); the client stays usable and recovers
    once a refresh succeeds."""
    source = FakeSource()
    async with client_on_fake(fake, credentials=source) as (client, wire):
        await client.get_queue_attributes(QUEUE_URL)
        source.fail = failure
        source.mandatory = True
        with pytest.raises(CredentialsError, match="credential refresh failed") as info:
            await client.get_queue_attributes(QUEUE_URL)
        assert info.value.__cause__ is failure
        assert source.calls == 2
        # The next attempt is backed off: meanwhile requests fail at once, without a thread.
        with pytest.raises(CredentialsError) as again:
            await client.get_queue_attributes(QUEUE_URL)
        assert again.value.__cause__ is failure
        assert source.calls == 2
        source.fail = None
        await trio.sleep(1.0)  # the first back-off is at most 1 s
        await client.get_queue_attributes(QUEUE_URL)
        assert source.calls == 3
    # The failed requests never reached the wire.
    assert [access_key_of(r) for r in wire.requests] == ["AKIDGEN1", "AKIDGEN2"]


@pytest.mark.parametrize("failure", PROVIDER_FAILURES)
async def test_any_provider_exception_at_open_is_a_credentials_error(
    held_clock: trio.testing.MockClock, fake: FakeSQS, failure: Exception
) -> None:
    wire = Recorder(fake)
    with pytest.raises(CredentialsError) as info:
        async with trio_sqs.open_client(
            region="us-east-1",
            endpoint_url=fake.endpoint,
            credentials=FakeSource(fail=failure),
            transport=wire,
        ):
            pytest.fail("opened a client whose credentials cannot be resolved")
    assert info.value.__cause__ is failure
    assert wire.requests == []


def _write_credential_process(script: Path, answer: dict[str, Any]) -> None:
    """A credential_process in the default profile that prints ``answer``."""
    script.write_text(f"print({json.dumps(json.dumps(answer))})\n")
    Path(os.environ["AWS_CONFIG_FILE"]).write_text(
        f"[default]\ncredential_process = {sys.executable} {script}\n"
    )


async def test_credential_process_with_a_malformed_answer_is_a_credentials_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeSQS
) -> None:
    """botocore's own chain raises more than BotoCoreError: a credential_process whose
    Expiration is not a date makes it raise dateutil's ValueError while opening the client."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    answer = {
        "Version": 1,
        "AccessKeyId": "AKIDPROCESS",
        "SecretAccessKey": "secret",
        "SessionToken": "token",
        "Expiration": "tomorrow",
    }
    _write_credential_process(tmp_path / "credential_process.py", answer)
    wire = Recorder(fake)
    with pytest.raises(CredentialsError, match="tomorrow") as info:
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, transport=wire
        ):
            pytest.fail("opened a client whose credential process answers nonsense")
    assert isinstance(info.value.__cause__, ValueError)
    assert wire.requests == []


async def test_a_provider_answer_without_keys_is_a_credentials_error(
    held_clock: trio.testing.MockClock,
) -> None:
    class NoneKeys:
        def refresh_needed(self, refresh_in: float | None = None) -> bool:
            return True

        def get_frozen_credentials(self) -> object:
            return object()  # no access_key attribute at all

    with pytest.raises(CredentialsError, match="access_key") as info:
        await CredentialCache(NoneKeys()).get()
    assert isinstance(info.value.__cause__, AttributeError)


async def test_concurrent_requests_share_one_failed_refresh(
    held_clock: trio.testing.MockClock,
) -> None:
    """Ten requests waiting on one failing refresh get its failure: they do not each call the
    provider in turn (a slow STS timing out once per waiting request)."""
    source = FakeSource()
    cache = CredentialCache(source)
    await cache.get()
    source.fail = CredentialRetrievalError(provider="sts", error_msg="STS is down")
    source.mandatory = True
    failures: list[CredentialsError] = []

    async def get() -> None:
        try:
            await cache.get()
        except CredentialsError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(get)
    assert source.calls == 2
    assert len(failures) == 10
    assert all(isinstance(f.__cause__, CredentialRetrievalError) for f in failures)


async def test_background_backoff_grows_is_capped_jittered_and_seedable(
    held_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    one_worker_thread: trio.CapacityLimiter,
) -> None:
    """The refresher retries a failing source after growing, capped, jittered pauses drawn from
    the cache's own random source, logs every failure with its cause, and goes back to its
    regular reads once a refresh succeeds."""
    failures = 10
    # The pause after the k-th failure in a row: 1, 2, 4, 8, 16, 32, then 60 s.
    ceilings = [min(BACKOFF_MAX, 2.0**k) for k in range(failures)]

    async def gaps(seed: int) -> list[float]:
        source = FakeSource()
        cache = CredentialCache(source, rng=random.Random(seed))
        await cache.get()
        source.fail = CredentialRetrievalError(provider="sts", error_msg=f"STS is down {seed}")
        source.advisory = True
        token = trio.lowlevel.current_trio_token()
        reached = {n: trio.Event() for n in (1 + failures, 2 + failures, 3 + failures)}

        def on_refresh() -> None:  # in the worker thread, after each refresh
            if source.calls in reached:
                token.run_sync_soon(reached[source.calls].set)

        source.on_refresh = on_refresh
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: cache.run_refresher(check_interval=30.0))
            await reached[1 + failures].wait()
            source.fail = None  # the next attempt succeeds
            await reached[2 + failures].wait()
            source.advisory = True  # so that the regular read after it refreshes (and counts)
            await reached[3 + failures].wait()
            # ``reached`` is set from inside the source, before the cache stores the keys: wait
            # for the thread to finish (the clock is held meanwhile), or the cancel abandons it
            # and the cache.get() below may still see the second generation.
            await worker_thread_finished(one_worker_thread)
            nursery.cancel_scope.cancel()
        # Opening, the first tick, the 9 retries after failures, the one that succeeds, and the
        # regular read one check interval after it.
        opened, *attempts, regular = source.call_times
        assert attempts[0] == opened + 30.0
        assert len(attempts) == 1 + failures
        assert regular - attempts[-1] == pytest.approx(30.0, abs=1e-9)
        assert (await cache.get()).access_key == "AKIDGEN3"
        return [b - a for a, b in itertools.pairwise(attempts)]

    with caplog.at_level(logging.WARNING, logger="trio_sqs.credentials"):
        first = await gaps(7)
    records = [r for r in caplog.records if r.name == "trio_sqs.credentials"]
    assert len(records) == failures
    for record in records:
        assert record.levelno == logging.WARNING
        assert "STS is down 7" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], CredentialsError)
        assert isinstance(record.exc_info[1].__cause__, CredentialRetrievalError)

    assert len(first) == len(ceilings)
    for gap, ceiling in zip(first, ceilings, strict=True):
        assert ceiling / 2 <= gap <= ceiling
    assert len(set(first)) == len(first)  # jittered: no two the same
    # Seeded: the same pauses again (measured from a later start, hence the float tolerance).
    assert await gaps(7) == pytest.approx(first, abs=1e-9)
    assert await gaps(8) != pytest.approx(first, abs=1e-3)


# -- refresh windows are the source's own (issue 11, item 6) -------------------------------------


def test_refresh_windows_come_from_the_source() -> None:
    short = RefreshableCredentials(
        "AKID",
        "secret",
        None,
        expiry_time=EPOCH,
        refresh_using=dict,
        method="test",
        advisory_timeout=60,
        mandatory_timeout=30,
    )
    assert RefreshWindows.of(short) == RefreshWindows(60.0, 30.0)
    assert RefreshWindows.of(short).check_interval == 15.0
    # botocore's class defaults, for its own credentials and for a source declaring nothing.
    botocore_default = RefreshableCredentials(
        "AKID", "secret", None, expiry_time=EPOCH, refresh_using=dict, method="test"
    )
    defaults = RefreshWindows(
        float(DEFAULT_ADVISORY_REFRESH_SECONDS), float(DEFAULT_MANDATORY_REFRESH_SECONDS)
    )
    assert RefreshWindows.of(botocore_default) == defaults
    assert RefreshWindows.of(FakeSource()) == defaults
    assert defaults.check_interval == REFRESH_CHECK_INTERVAL
    # A mandatory window wider than the advisory one acts as the advisory one.
    wide = RefreshableCredentials(
        "AKID",
        "secret",
        None,
        expiry_time=EPOCH,
        refresh_using=dict,
        method="test",
        advisory_timeout=60,
        mandatory_timeout=300,
    )
    assert RefreshWindows.of(wide) == RefreshWindows(60.0, 60.0)


async def test_source_with_short_windows_is_not_refreshed_on_every_request(
    held_clock: trio.testing.MockClock, fake: FakeSQS
) -> None:
    """(b) A source whose own windows (advisory 60 s, mandatory 30 s) are shorter than botocore's
    defaults, 5 min from expiry: fresh by its own account, so 30 requests read it not once more;
    the refresher reads it twice per advisory lead (every 15 s) and has it refreshed in its
    advisory window, before any request has to wait."""
    t0 = trio.current_time()
    provider = Provider(held_clock, 3600.0)
    source = ClockedCredentials(held_clock, provider, expires_in=305, advisory=60, mandatory=30)
    async with client_on_fake(fake, credentials=source) as (client, wire):
        assert source.reads == 1  # opening the client
        for _ in range(30):
            await client.get_queue_attributes(QUEUE_URL)
        assert source.reads == 1
        assert trio.current_time() == t0
        # The advisory window opens at t0 + 245: the refresher's reads at t0 + 15, 30, ... 240
        # find nothing due; the one at t0 + 255 refreshes (the mandatory window opens at 275).
        await trio.sleep_until(t0 + 250)
        assert provider.calls == [] and source.reads == 1 + 16
        await trio.sleep_until(t0 + 260)
        assert provider.calls == [t0 + 255] and source.reads == 1 + 17
        await client.get_queue_attributes(QUEUE_URL)
        assert source.reads == 1 + 17
    keys = [access_key_of(r) for r in wire.requests]
    assert keys == ["AKIDOLD"] * 30 + ["AKIDNEW1"]


class Undeclared:
    """A source that keeps its refresh windows to itself (a wrapper around botocore's)."""

    def __init__(self, inner: ClockedCredentials) -> None:
        self.inner = inner

    def refresh_needed(self, refresh_in: float | None = None) -> bool:
        return bool(self.inner.refresh_needed(refresh_in))

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        return self.inner.get_frozen_credentials()


async def test_source_fresh_by_undeclared_windows_is_read_at_most_every_refetch_interval(
    held_clock: trio.testing.MockClock, fake: FakeSQS
) -> None:
    """A source that declares no windows is judged by botocore's (mandatory 10 min), which its
    keys, 5 min from expiry, are inside; but it answers with the same keys, fresh by its own
    windows. Requests then read it at most once every REFETCH_INTERVAL, not once each."""
    t0 = trio.current_time()
    provider = Provider(held_clock, 3600.0)
    inner = ClockedCredentials(held_clock, provider, expires_in=300, advisory=60, mandatory=30)
    async with client_on_fake(fake, credentials=Undeclared(inner)) as (client, wire):
        assert inner.reads == 1
        for second in range(30):  # one request a second
            await trio.sleep_until(t0 + second)
            await client.get_queue_attributes(QUEUE_URL)
        # Read again by the requests at t0 + 10 and t0 + 20 (the refresher's first read is due
        # at t0 + 30).
        assert REFETCH_INTERVAL == 10.0
        assert inner.reads == 3
    assert provider.calls == []
    assert [access_key_of(r) for r in wire.requests] == ["AKIDOLD"] * 30
