"""Shared fixtures: a real moto HTTP server, a clean AWS environment, a deadline on every Trio test."""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import inspect
import logging
import os
import random
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
import trio
import trio.testing

import trio_sqs
import trio_sqs._sigv4
from trio_sqs import SQSClient
from trio_sqs._protocol import load_service_data

from .recording_proxy import RecordingProxy

# Every Trio test fails (instead of hanging CI) if it runs longer than this; override per test
# with @pytest.mark.deadline(seconds). On trio.testing.MockClock (the ``autojump_clock``
# fixture) the deadline is in virtual seconds and defaults to VIRTUAL_DEADLINE: a test there
# may legitimately wait out 20 s polls and 30 s leases in no wall time.
DEFAULT_DEADLINE = 30.0
VIRTUAL_DEADLINE = 3600.0

TEST_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# Property tests run a bounded number of examples by default (the suite's time budget);
# TRIO_SQS_EXAMPLES=1000 (say) runs them thoroughly, on demand.
EXAMPLES = int(os.environ.get("TRIO_SQS_EXAMPLES", "0") or 0)


def examples(default: int) -> int:
    """How many examples a property test runs: ``default``, or $TRIO_SQS_EXAMPLES if set."""
    return EXAMPLES or default


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deadline(seconds): per-test deadline for a Trio test")


def _with_deadline(
    func: Callable[..., Awaitable[None]], seconds: float | None
) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        limit = seconds
        if limit is None:
            virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
            limit = VIRTUAL_DEADLINE if virtual else DEFAULT_DEADLINE
        with trio.fail_after(limit):
            await func(*args, **kwargs)

    return wrapper


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a pytest-xdist worker where ``--dist loadgroup`` does not group: pytest-xdist marks
    a grouped test by appending ``@group`` to its node id, which pytest 9.2 ignores. Without the
    grouping, the tests of the "processes" group (real processes against wall-clock bounds) run
    beside each other, and the suite's timing guarantees are gone without a word."""
    config = session.config
    if not (os.environ.get("PYTEST_XDIST_WORKER") and config.getvalue("loadgroup")):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"pytest-xdist's --dist loadgroup does not group tests with pytest "
                f"{pytest.__version__}: {item.nodeid} has no @group suffix. Install the "
                "versions pyproject.toml's test extra asks for."
            )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every Trio test under a ``trio.fail_after`` so a hang fails instead of stalling CI."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            marker = item.get_closest_marker("deadline")
            seconds = float(marker.args[0]) if marker else None
            item.obj = _with_deadline(item.obj, seconds)


@pytest.fixture(scope="session", autouse=True)
def sqs_model_loaded() -> None:
    """Load botocore's SQS model once per test process, before any test runs.

    open_client only skips its worker thread when the model is already in memory; on
    ``MockClock`` that thread lets autojump skip to the test's deadline. Without this, whether a
    test that opens a client on a transport of its own passes would depend on whether an earlier
    test in the same process (or pytest-xdist worker) happened to load the model.
    """
    load_service_data()


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Strip the developer's AWS_* variables and point config files at empty files."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config = tmp_path / "aws-config"
    creds = tmp_path / "aws-credentials"
    config.write_text("")
    creds.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    # An unreachable instance metadata service costs seconds per lookup.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in TEST_KEYS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto HTTP server on 127.0.0.1 (a free port), shared by the whole session.

    moto's state is global: every test makes its own queue (``queue_name``).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def sqs(moto_endpoint: str) -> AsyncIterator[trio_sqs.SQSClient]:
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=moto_endpoint) as client:
        yield client


@pytest.fixture
async def queue_url(sqs: trio_sqs.SQSClient, queue_name: str) -> str:
    return await sqs.create_queue(queue_name)


@pytest.fixture
async def proxy(moto_endpoint: str, nursery: trio.Nursery) -> RecordingProxy:
    """A recording proxy in front of moto (see tests/recording_proxy.py)."""
    host, _, port = moto_endpoint.removeprefix("http://").partition(":")
    recorder = RecordingProxy(host, int(port))
    await nursery.start(recorder.serve)
    return recorder


class CeilingDraws(random.Random):
    """A generator whose every ``uniform(low, high)`` is ``high``."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every retry backoff is its full ceiling: each client opened in the test gets, in place of
    its own generator, one whose jitter always draws the maximum."""
    init = SQSClient.__init__

    def with_ceiling_draws(self: SQSClient, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._random = CeilingDraws()

    monkeypatch.setattr(SQSClient, "__init__", with_ceiling_draws)


@pytest.fixture
async def one_worker_thread() -> trio.CapacityLimiter:
    """Run one worker thread at a time, so that a thread whose caller was cancelled (abandoned)
    still holds the only token until it has finished: see :func:`worker_thread_finished`.

    Request it as an argument. pytest-trio never runs an async fixture named only in
    ``@pytest.mark.usefixtures`` (python-trio/pytest-trio#124): this one used to be, so it never
    ran, the limiter kept its 40 tokens, and the wait below waited for nothing (a flaky test).
    """
    limiter = trio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    return limiter


async def worker_thread_finished(limiter: trio.CapacityLimiter) -> None:
    """Return once the worker thread in flight, if any, has finished, abandoned or not.

    Trio hands a thread's limiter token back only after its function has returned (for the
    cache, after it stored what it read), even when its caller was cancelled and abandoned it;
    with one token, taking it waits for exactly that. An event the source sets from inside the
    thread comes before the cache stores the keys.
    """
    assert limiter is trio.to_thread.current_default_thread_limiter()
    assert limiter.total_tokens == 1, "the one_worker_thread fixture is not in effect"
    async with limiter:
        pass


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, checking after every task step (so the test wakes at the
    virtual instant it came true)."""
    became_true = trio.Event()

    class Check(trio.abc.Instrument):
        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if predicate():
                became_true.set()

    if predicate():
        return
    check = Check()
    trio.lowlevel.add_instrument(check)
    try:
        await became_true.wait()
    finally:
        trio.lowlevel.remove_instrument(check)


def set_signing_clock(
    monkeypatch: pytest.MonkeyPatch, now: Callable[[], datetime.datetime]
) -> None:
    """Make botocore's SigV4 signer (``botocore.auth``) read the time from ``now()``, a naive UTC
    datetime, on every botocore the project supports (pyproject.toml's floor and up).

    botocore >= 1.40.2 signs with ``botocore.auth.get_current_datetime()`` (from botocore.compat);
    older ones call ``datetime.datetime.utcnow()`` on the ``datetime`` module ``botocore.auth``
    imported, which this replaces, for ``botocore.auth`` alone, with a copy whose ``datetime``
    class answers ``utcnow()`` with ``now()`` (and does the rest, e.g. ``strptime``, as usual).
    """
    # trio_sqs's own signer reads the same clock (an aware datetime).
    monkeypatch.setattr(
        trio_sqs._sigv4, "utcnow", lambda: now().replace(tzinfo=datetime.timezone.utc)
    )
    if hasattr(botocore.auth, "get_current_datetime"):

        def get_current_datetime(remove_tzinfo: bool = True) -> datetime.datetime:
            current = now()
            return current if remove_tzinfo else current.replace(tzinfo=datetime.timezone.utc)

        monkeypatch.setattr(botocore.auth, "get_current_datetime", get_current_datetime)
        return

    # The datetime module, or the copy an earlier call in this test made.
    imported = botocore.auth.datetime
    assert imported.__name__ == "datetime", "botocore.auth no longer signs with datetime.utcnow"

    class SigningDatetime(datetime.datetime):
        @classmethod
        def utcnow(cls) -> datetime.datetime:
            return now()

    module = types.ModuleType("datetime")
    module.__dict__.update(vars(imported))
    module.datetime = SigningDatetime  # type: ignore[attr-defined]
    monkeypatch.setattr(botocore.auth, "datetime", module)


@contextlib.contextmanager
def main_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Around a test that calls ``trio_sqs._cli.main`` in process: ``main`` is written for a
    process of its own (it replaces the root logger's handlers, sets logger levels and freezes
    the heap on its way out). Undo all that afterwards, and start from no ``TRIO_SQS_*``
    variable."""
    from trio_sqs._cli._logsetup import _CHATTY

    for name in list(os.environ):
        if name.startswith("TRIO_SQS_"):
            monkeypatch.delenv(name)
    names = {*logging.root.manager.loggerDict, *_CHATTY}
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in names)]
    saved = [(lg, lg.level, lg.handlers[:]) for lg in loggers if isinstance(lg, logging.Logger)]
    frozen = gc.get_freeze_count()
    try:
        yield
    finally:
        for lg, level, handlers in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
        if frozen == 0:
            gc.unfreeze()
