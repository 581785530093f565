"""The ``trio-sqs`` command, run for real as a subprocess against the session's moto server.

Every test bounds each subprocess with a timeout and kills it on the way out. Output goes to
files, not pipes, so a test can watch a running process without blocking on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio

import trio_sqs

T = TypeVar("T")
# The console script when it is installed (it is, with `pip install -e .`), else the module.
_SCRIPT = Path(sys.executable).with_name("trio-sqs")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trio_sqs"]

HANDLERS = """
import logging
import pathlib

import trio

log = logging.getLogger("handlers")
DONE = pathlib.Path(__file__).with_name("done.txt")
STARTED = pathlib.Path(__file__).with_name("started.txt")


async def handle(message):
    with STARTED.open("a") as f:
        f.write(message.message_id + "\\n")
    log.info("handling", extra={"attempt": message.receive_count})
    if message.body.startswith("sleep:"):
        await trio.sleep(float(message.body.removeprefix("sleep:")))
    with DONE.open("a") as f:
        f.write(message.message_id + "\\n")


def not_async(message):
    pass
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_SQS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _cli(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=workdir,
        env=_env(workdir, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclasses.dataclass
class Running:
    proc: subprocess.Popen[bytes]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@contextmanager
def running(workdir: Path, command: str, **env: str) -> Iterator[Running]:
    """Start ``trio-sqs COMMAND`` (split on spaces); kill it on the way out if still running."""
    out = workdir / "stdout.log"
    err = workdir / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*CLI, *command.split()],
            cwd=workdir,
            env=_env(workdir, **env),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield Running(proc, err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- talking to moto from the test ----------------------------------------------------------------


def sqs(endpoint: str, operation: Callable[[trio_sqs.SQSClient], Awaitable[T]]) -> T:
    """Run one async operation on a fresh client, from a synchronous test."""

    async def main() -> T:
        async with trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as client:
            with trio.fail_after(10):
                return await operation(client)

    return trio.run(main)


def make_queue(endpoint: str, name: str, bodies: list[str]) -> str:
    async def op(client: trio_sqs.SQSClient) -> str:
        url = await client.create_queue(name)
        for body in bodies:
            await client.send_message(url, body)
        return url

    return sqs(endpoint, op)


def send(endpoint: str, url: str, body: str) -> None:
    sqs(endpoint, lambda client: client.send_message(url, body))


def queue_counts(endpoint: str, url: str) -> tuple[int, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs(endpoint, lambda client: client.get_queue_attributes(url, names))
    return int(attrs[names[0]]), int(attrs[names[1]])


def receivable(endpoint: str, url: str) -> int:
    async def op(client: trio_sqs.SQSClient) -> int:
        result = await client.receive_messages(url, wait_time=0, visibility_timeout=60)
        return len(result.messages)

    return sqs(endpoint, op)


# -- help and errors ---------------------------------------------------------------------------------


def test_help_documents_exit_codes_env_prefix_and_every_option(workdir: Path) -> None:
    top = _cli(workdir, "--help")
    assert top.returncode == 0
    for text in ("exit codes:", "  3 ", "  4 ", "130", "TRIO_SQS_"):
        assert text in top.stdout
    run = _cli(workdir, "run", "--help")
    assert run.returncode == 0
    help_text = " ".join(run.stdout.split())
    for field in dataclasses.fields(trio_sqs.ConsumerOptions):
        assert "--" + field.name.replace("_", "-") in help_text
        assert "TRIO_SQS_" + field.name.upper() in help_text
    for flag in ("--region", "--endpoint-url", "--profile", "--batch", "--log-format"):
        assert flag in help_text


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["nosuch_module_xyz:handle"], {}, 2, "no module named 'nosuch_module_xyz'"),
        (["handlers:missing"], {}, 2, "no attribute 'missing'"),
        (["handlers:not_async"], {}, 2, "not an async function"),
        (["handlers"], {}, 2, "package.module:function"),
        (["handlers:handle", "--batch-size", "11"], {}, 2, "batch_size=11 is out of range"),
        (["handlers:handle"], {"TRIO_SQS_BATCH_SIZE": "11"}, 2, "batch_size=11"),
        (["handlers:handle"], {"TRIO_SQS_CONCURRENCY": "many"}, 2, "TRIO_SQS_CONCURRENCY"),
        (["handlers:handle", "--poll-on-stop", "later"], {}, 2, "--poll-on-stop"),
        (["handlers:handle", "--liveness-window", "5"], {}, 2, "must exceed wait_time"),
        (["handlers:handle", "--no-such-flag"], {}, 2, "--no-such-flag"),
        (["handlers:handle"], {}, 3, "does not exist"),
        # The flag wins over the variable: the options are valid, so it gets to the queue lookup.
        (["handlers:handle", "--batch-size", "5"], {"TRIO_SQS_BATCH_SIZE": "11"}, 3, "not exist"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(
    workdir: Path,
    moto_endpoint: str,
    queue_name: str,
    args: list[str],
    env: dict[str, str],
    code: int,
    needle: str,
) -> None:
    result = _cli(
        workdir, "run", *args, "--queue", queue_name, "--endpoint-url", moto_endpoint, env=env
    )
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-sqs"), lines
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_credentials_exit_4(workdir: Path, moto_endpoint: str) -> None:
    env = _env(workdir)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    result = subprocess.run(
        [*CLI, "run", "handlers:handle", "--queue", "q", "--endpoint-url", moto_endpoint],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "credentials" in result.stderr


@pytest.mark.parametrize(
    ("hidden", "args", "needle"),
    [
        ("moto", ["demo"], "pip install 'trio-sqs[demo]'"),
        (
            "prometheus_client",
            ["run", "handlers:handle", "--queue", "q", "--metrics-port", "0"],
            "pip install 'trio-sqs[prometheus]'",
        ),
    ],
)
def test_missing_extra_says_how_to_install_it(
    workdir: Path, hidden: str, args: list[str], needle: str
) -> None:
    shim = workdir / "shim" / hidden
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f"raise ImportError('{hidden} is hidden by the test')\n")
    paths = [str(workdir / "shim"), str(workdir)]
    result = _cli(workdir, *args, env={"PYTHONPATH": os.pathsep.join(paths)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-sqs: error:"), result.stderr
    assert needle in lines[0]


# -- demo ---------------------------------------------------------------------------------------------


def test_demo_stops_gracefully_and_loses_nothing(workdir: Path) -> None:
    result = _cli(workdir, "demo", "--stop-after", "1.5", "--rate", "20", timeout=40)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for event in (
        "signal received",
        "handlers finished or cancelled",
        "messages released",
        "acknowledgements flushed",
        "exit",
    ):
        assert event in out
    assert re.search(r"\+0 ms\s+signal received", out)
    totals = re.search(r"produced (\d+), completed (\d+), released (\d+).*lost (-?\d+)", out)
    assert totals is not None, out
    produced, completed, _, lost = map(int, totals.groups())
    assert produced >= 20 and completed > 0
    assert lost == 0
    # Not a TTY: plain progress lines, no carriage returns.
    assert "\r" not in out and "in flight" in out


# -- run ------------------------------------------------------------------------------------------


def test_run_drains_the_queue_logs_json_and_stops_within_the_bound(
    workdir: Path, moto_endpoint: str, queue_name: str
) -> None:
    bodies = [f"secret-body-{i}" for i in range(10)]
    url = make_queue(moto_endpoint, queue_name, bodies)
    grace, flush = 1.0, 1.0
    command = f"run handlers:handle --queue {queue_name} --log-format json --grace-period {grace}"
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "TRIO_SQS_FLUSH_TIMEOUT": str(flush)}
    with running(workdir, command, **env) as proc:
        wait_for(lambda: len(_lines(workdir / "done.txt")) == 10, 15, "10 messages handled")
        wait_for(lambda: queue_counts(moto_endpoint, url) == (0, 0), 10, "the queue to drain")
        # One handler still running at SIGTERM, past its grace: cancelled, the process exits.
        send(moto_endpoint, url, "sleep:30")
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 11, 10, "the slow handler")
        proc.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait_exit(timeout=grace + flush + 5) == 0, proc.log()
        took = time.monotonic() - start
    assert took <= grace + flush + 1, took
    records = [json.loads(line) for line in proc.log().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    handling = [r for r in records if r["logger"] == "handlers"]
    assert len(handling) == 11
    assert {r["message_id"] for r in handling} == set(_lines(workdir / "started.txt"))
    assert all(r["attempt"] == 1 for r in handling)
    assert any("SIGTERM" in r["message"] for r in records)
    assert "secret-body" not in proc.log()


def test_second_sigint_exits_at_once_with_130(
    workdir: Path, moto_endpoint: str, queue_name: str
) -> None:
    make_queue(moto_endpoint, queue_name, ["sleep:60"])
    command = f"run handlers:handle --queue {queue_name} --endpoint-url {moto_endpoint}"
    with running(workdir, command + " --grace-period 60") as proc:
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 1, 15, "the handler to start")
        proc.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "received SIGINT" in proc.log(), 5, "the first SIGINT to be read")
        time.sleep(0.3)
        assert proc.proc.poll() is None  # still inside its grace period
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit(timeout=5) == 130
    assert "second SIGINT" in proc.log()


def test_message_cancelled_at_grace_is_receivable_after_exit(
    workdir: Path, moto_endpoint: str, queue_name: str
) -> None:
    url = make_queue(moto_endpoint, queue_name, ["sleep:60"])
    command = f"run handlers:handle --queue {queue_name} --endpoint-url {moto_endpoint}"
    with running(workdir, command + " --grace-period 0.5") as proc:
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 1, 15, "the handler to start")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=5) == 0
    time.sleep(1.2)  # moto's abandoned poll re-checks the queue once a second
    assert receivable(moto_endpoint, url) == 1


def test_health_and_metrics_endpoints(workdir: Path, moto_endpoint: str, queue_name: str) -> None:
    url = make_queue(moto_endpoint, queue_name, ["a", "b", "c"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> httpx.Response:
        return httpx.get(base + path, timeout=5)

    def status(path: str) -> int | None:
        try:
            return get(path).status_code
        except httpx.TransportError:
            return None

    def metric(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", get("/metrics").text, re.MULTILINE)
        return float(match.group(1)) if match else -1.0

    command = (
        f"run handlers:handle --queue {url} --endpoint-url {moto_endpoint} --grace-period 5 "
        f"--metrics-port {port} --metrics-host 127.0.0.1"
    )
    with running(workdir, command) as proc:
        wait_for(lambda: status("/readyz") == 200, 15, "/readyz to answer 200")
        health = get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        wait_for(lambda: metric("trio_sqs_messages_deleted_total") == 3, 10, "3 deletes")
        text = get("/metrics").text
        for name in (
            "trio_sqs_messages_received_total 3.0",
            "trio_sqs_messages_completed_total 3.0",
            "trio_sqs_messages_failed_total 0.0",
            "trio_sqs_messages_released_total",
            "trio_sqs_heartbeat_extensions_total",
            "trio_sqs_aborted_polls_total",
            "trio_sqs_in_flight 0.0",
            "trio_sqs_buffered 0.0",
            'trio_sqs_state{state="running"} 1.0',
            'trio_sqs_handler_duration_seconds_count{outcome="ok"} 3.0',
            "trio_sqs_last_poll_timestamp_seconds",
        ):
            assert name in text
        assert get("/nowhere").status_code == 404
        # While stopping (a handler inside its grace period): not ready, still alive.
        send(moto_endpoint, url, "sleep:3")
        wait_for(lambda: metric("trio_sqs_in_flight") == 1, 10, "a handler in flight")
        proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: status("/readyz") == 503, 2, "/readyz to answer 503")
        assert get("/healthz").status_code == 200
        assert proc.wait_exit(timeout=8) == 0, proc.log()
    assert queue_counts(moto_endpoint, url) == (0, 0)
