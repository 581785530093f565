"""The ``trio-sqs`` command, run for real as a subprocess against trio_sqs's in-memory SQS served
over HTTP (``python -m trio_sqs.testing``, one server process for the module).

Like SQS, and unlike moto, that server hands a message to a waiting long poll the moment it
becomes receivable, so a test can check the queue right after an event instead of sleeping
through a re-check interval. Each test makes its own queue (``queue_name``).

Every test bounds each subprocess with a timeout and kills it on the way out. Output goes to
files, not pipes, so a test can watch a running process without blocking on it; waits are on
conditions (``wait_for``) with a deadline, never fixed sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs._cli import main

from .conftest import main_leaves_no_trace

# Real processes against wall-clock bounds (marked PROCESSES): with pytest-xdist these run in one
# worker, one after another, beside the rest of the suite (README's test command: -n 2 --dist
# loadgroup). The tests of what a command prints or exits with, whatever the timing, run
# anywhere.
PROCESSES = pytest.mark.xdist_group("processes")

T = TypeVar("T")
# The console script when it is installed (it is, with `pip install -e .`), else the module.
_SCRIPT = Path(sys.executable).with_name("trio-sqs")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trio_sqs"]

HANDLERS = """
import logging
import pathlib

import trio

log = logging.getLogger("handlers")
HERE = pathlib.Path(__file__).parent
DONE = HERE / "done.txt"
STARTED = HERE / "started.txt"


async def handle(message):
    with STARTED.open("a") as f:
        f.write(message.message_id + "\\n")
    log.info("handling", extra={"attempt": message.receive_count})
    if message.body.startswith("sleep:"):
        await trio.sleep(float(message.body.removeprefix("sleep:")))
    if message.body.startswith("exit:"):
        import sys

        sys.exit(int(message.body.removeprefix("exit:")))
    if message.body.startswith("gate:"):
        # Runs until the test creates the file named after the colon.
        gate = HERE / message.body.removeprefix("gate:")
        while not gate.exists():
            await trio.sleep(0.01)
    with DONE.open("a") as f:
        f.write(message.message_id + "\\n")


def not_async(message):
    pass
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """``python -m trio_sqs.testing`` in a child process for this module; yields its endpoint.

    It binds port 0 and prints the URL it got as its first stdout line (no free-port race), and
    exits when its stdin closes, so it cannot outlive the test run.
    """
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trio_sqs.testing", "--port", "0", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            url = proc.stdout.readline().decode().strip() if ready else ""
            if not url.startswith("http://127.0.0.1:"):
                proc.kill()
                proc.wait()
                errors.seek(0)
                pytest.fail(f"the SQS server did not start ({url!r}): {errors.read().decode()}")
            yield url
        finally:
            proc.stdin.close()  # --exit-on-stdin-eof
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


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


@pytest.fixture
def in_process(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``trio-sqs ARGS`` as ``main`` in this process (a process of its own takes 0.3-0.9 s):
    the same exit code, stdout and stderr, in ``workdir`` with its ``handlers`` module;
    ``env`` adds variables. The tests that check the installed script itself use ``_cli``."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch, main_leaves_no_trace(patch):
            patch.chdir(workdir)
            patch.syspath_prepend(str(workdir))
            patch.delitem(sys.modules, "handlers", raising=False)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else -1
            patch.delitem(sys.modules, "handlers", raising=False)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["trio-sqs", *args], code, captured.out, captured.err)

    return run


def cli_without_credentials(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``trio-sqs ARGS`` with no AWS credentials in its environment."""
    env = _env(workdir)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    return subprocess.run(
        [*CLI, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds (a bound, not a pace)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclasses.dataclass
class Running:
    proc: subprocess.Popen[bytes]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def metrics_base(self) -> str:
        """The health and metrics address the child logged once listening (``--metrics-port 0``)."""
        found: list[str] = []

        def logged() -> bool:
            match = re.search(r"health and metrics on (http://\S+:\d+)", self.log())
            if match:
                found.append(match.group(1))
            assert self.proc.poll() is None, self.log()
            return bool(match)

        wait_for(logged, 15, "the health and metrics address in the log")
        return found[0]


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


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- talking to the SQS server from the test ----------------------------------------------------


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


def queue_stats(endpoint: str, name: str) -> dict[str, Any]:
    """The server's view of one queue (``GET /stats``): visible, in_flight, delayed, deliveries
    (messages handed out by ReceiveMessage, ever), waiting_polls, requests by operation."""
    stats = httpx.get(f"{endpoint}/stats", params={"queue": name}, timeout=5).json()["queue"]
    assert stats is not None, f"no queue {name!r}"
    return stats  # type: ignore[no-any-return]


def held(endpoint: str, name: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed) on the server."""
    stats = queue_stats(endpoint, name)
    return stats["visible"], stats["in_flight"], stats["delayed"]


def polls_waiting(endpoint: str, name: str) -> int:
    waiting: int = queue_stats(endpoint, name)["waiting_polls"]
    return waiting


def receivable(endpoint: str, url: str) -> int:
    async def op(client: trio_sqs.SQSClient) -> int:
        result = await client.receive_messages(url, wait_time=0, visibility_timeout=60)
        return len(result.messages)

    return sqs(endpoint, op)


# -- help and errors ---------------------------------------------------------------------------------


def test_help_documents_exit_codes_env_prefix_and_every_option(
    in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    top = in_process("--help")
    assert top.returncode == 0
    for text in ("exit codes:", "  3 ", "  4 ", "130", "TRIO_SQS_"):
        assert text in top.stdout
    run = in_process("run", "--help")
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
    in_process: Callable[..., subprocess.CompletedProcess[str]],
    endpoint: str,
    queue_name: str,
    args: list[str],
    env: dict[str, str],
    code: int,
    needle: str,
) -> None:
    result = in_process("run", *args, "--queue", queue_name, "--endpoint-url", endpoint, env=env)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-sqs"), lines
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["handlers:not_async"], 2, "not an async function"),
        (["handlers:handle", "--no-such-flag"], 2, "--no-such-flag"),
    ],
)
def test_bad_input_in_a_process_of_its_own(
    workdir: Path, queue_name: str, args: list[str], code: int, needle: str
) -> None:
    result = _cli(workdir, "run", *args, "--queue", queue_name)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-sqs") and needle in lines[0], lines
    assert "Traceback" not in result.stderr


def test_missing_credentials_exit_4(workdir: Path, endpoint: str, queue_name: str) -> None:
    make_queue(endpoint, queue_name, [])
    result = cli_without_credentials(
        workdir, "run", "handlers:handle", "--queue", queue_name, "--endpoint-url", endpoint
    )
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "credentials" in result.stderr
    # Refused before any request: the queue exists, and nothing but its creation named it.
    assert queue_stats(endpoint, queue_name)["requests"] == {"CreateQueue": 1}


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


# -- demo (its own embedded moto server, as shipped) -------------------------------------------------


@PROCESSES
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


@PROCESSES
def test_run_drains_the_queue_logs_json_and_stops_within_the_bound(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    bodies = [f"secret-body-{i}" for i in range(10)]
    url = make_queue(endpoint, queue_name, bodies)
    grace, flush = 0.25, 1.0
    command = (
        f"run handlers:handle --queue {queue_name} --log-format json --grace-period {grace}"
        " --wait-time 2"
    )
    env = {"AWS_ENDPOINT_URL": endpoint, "TRIO_SQS_FLUSH_TIMEOUT": str(flush)}
    with running(workdir, command, **env) as proc:
        wait_for(lambda: len(_lines(workdir / "done.txt")) == 10, 15, "10 messages handled")
        # Every one deleted: nothing visible, in flight or delayed on the server.
        wait_for(lambda: held(endpoint, queue_name) == (0, 0, 0), 10, "the queue to drain")
        # One handler still running at SIGTERM, past its grace: cancelled, the process exits.
        send(endpoint, url, "sleep:30")
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 11, 10, "the slow handler")
        proc.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait_exit(timeout=grace + flush + 5) == 0, proc.log()
        took = time.monotonic() - start
    # The handler had its whole grace period (the signal arrived after `start`), and the exit
    # came within grace + flush timeout + 1 s for reading the signal and leaving the interpreter.
    assert grace <= took <= grace + flush + 1, took
    # The cancelled message went back, not deleted: hidden for as long as the consumer's poll
    # aborted at exit may run on the server (2 s + 1 s), then visible again.
    wait_for(lambda: held(endpoint, queue_name) == (1, 0, 0), 5, "the message to be visible")
    records = [json.loads(line) for line in proc.log().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    handling = [r for r in records if r["logger"] == "handlers"]
    assert len(handling) == 11
    assert {r["message_id"] for r in handling} == set(_lines(workdir / "started.txt"))
    assert all(r["attempt"] == 1 for r in handling)
    assert any("SIGTERM" in r["message"] for r in records)
    assert "secret-body" not in proc.log()


@PROCESSES
def test_second_sigint_exits_at_once_with_130(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["sleep:60"])
    command = (
        f"run handlers:handle --queue {queue_name} --endpoint-url {endpoint} --grace-period 60 "
        "--metrics-port 0 --metrics-host 127.0.0.1"
    )
    with running(workdir, command) as proc:
        base = proc.metrics_base()
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 1, 15, "the handler to start")
        proc.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "received SIGINT" in proc.log(), 5, "the first SIGINT to be read")
        # The first SIGINT started the graceful shutdown: still alive and answering, stopping,
        # with the handler running inside its 60 s grace period.
        health = httpx.get(base + "/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "stopping", health.text
        metrics = httpx.get(base + "/metrics", timeout=5).text
        assert f'trio_sqs_in_flight{{queue="{queue_name}"}} 1.0' in metrics
        assert f'trio_sqs_messages_cancelled_at_grace_total{{queue="{queue_name}"}} 0.0' in metrics
        assert proc.proc.poll() is None
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit(timeout=5) == 130
    assert "second SIGINT" in proc.log()
    # Exited without finishing, releasing or deleting: the message stays in flight on the
    # server until its visibility timeout, as the exit message says.
    assert not (workdir / "done.txt").exists()
    assert held(endpoint, queue_name) == (0, 1, 0)


@PROCESSES
def test_sys_exit_in_a_handler_stops_gracefully_and_exits_with_its_code(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    """A handler calling sys.exit(3) ended in a 44-line exception-group traceback with exit
    code 1. Now: the consumer stops gracefully (the message is handed back), one line on stderr,
    exit code 3."""
    make_queue(endpoint, queue_name, ["exit:3"])
    command = f"run handlers:handle --queue {queue_name} --endpoint-url {endpoint} --wait-time 2"
    with running(workdir, command) as proc:
        assert proc.wait_exit(timeout=15) == 3, proc.log()
    err = (workdir / "stderr.log").read_text()
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert "trio-sqs: a handler called sys.exit(3); stopped gracefully" in err
    assert re.search(r"received 1, .* released 1, .* unflushed 0", proc.log())
    # Handed back, hidden only until the consumer's last poll (2 s + 1 s) is over.
    wait_for(lambda: held(endpoint, queue_name) == (1, 0, 0), 5, "the message to be visible")


def test_an_unknown_trio_sqs_variable_is_an_error_naming_the_closest(
    in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A misspelt variable used to be ignored: TRIO_SQS_CONCURENCY=3 started with the default."""
    result = in_process("run", "handlers:handle", "--queue", "q", env={"TRIO_SQS_CONCURENCY": "3"})
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "trio-sqs: error: unknown variable TRIO_SQS_CONCURENCY (did you mean TRIO_SQS_CONCURRENCY?)"
    ]
    result = in_process("demo", env={"TRIO_SQS_NOTHING_LIKE_IT": "1"})
    assert result.returncode == 2, result
    assert "unknown variable TRIO_SQS_NOTHING_LIKE_IT (see 'trio-sqs run --help')" in result.stderr


def test_help_says_each_default_once(
    in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """The help of --attribute-names read "(default all). (default: All)"."""
    result = in_process("run", "--help")
    assert result.returncode == 0, result
    text = " ".join(result.stdout.split())
    assert "(default all). (default: All)" not in text
    assert text.count("System attributes to request (default all).") == 1
    for entry in re.split(r"\s(?=--[a-z])", text):
        assert entry.lower().count("default") <= 2, entry  # its docstring's, or ours: not both


def test_every_error_has_one_prefix_and_is_json_under_json_logs(
    in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Usage errors of a subcommand said "trio-sqs run: error:", others "trio-sqs: error:"; under
    --log-format json the last line was not JSON."""
    usage = in_process("run")
    assert usage.returncode == 2
    assert usage.stderr.startswith("trio-sqs: error: the following arguments are required")
    bad = in_process("run", "handlers:handle", "--queue", "q", "--batch-size", "11")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "trio-sqs: error: invalid option: batch_size=11 is out of range (allowed: 1 to 10)"
    ]
    as_json = in_process(
        "run",
        "handlers:handle",
        "--queue",
        "q",
        "--batch-size",
        "11",
        env={"TRIO_SQS_LOG_FORMAT": "json"},
    )
    assert as_json.returncode == 2
    [line] = as_json.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["exit_code"] == 2
    assert record["message"] == bad.stderr.strip()
    assert {"time", "level", "logger", "message"} <= record.keys()


def test_version(workdir: Path) -> None:
    result = _cli(workdir, "--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"trio-sqs {trio_sqs.__version__}"


def _kubernetes_env() -> dict[str, str]:
    """The container environment of examples/kubernetes/deployment.yaml, read from the file."""
    text = (Path(__file__).parent.parent / "examples/kubernetes/deployment.yaml").read_text()
    pairs = re.findall(r"- name: (\w+)\n\s+value: \"?([^\"\n]+)\"?", text)
    assert pairs, "no env in the Kubernetes example"
    return dict(pairs)


@PROCESSES
def test_the_kubernetes_example_s_environment_runs(
    workdir: Path, endpoint: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example sets only AWS_REGION, which botocore ignores: the pod crash-looped with "no
    region" (exit 2). Run with exactly its variables (the queue and the metrics port pointed at
    this test's server and a free port), credentials and endpoint as a pod would get them."""
    env = _kubernetes_env()
    assert env["AWS_REGION"] and "AWS_DEFAULT_REGION" not in env
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    env.update(TRIO_SQS_QUEUE=queue_name, TRIO_SQS_METRICS_PORT="0", AWS_ENDPOINT_URL=endpoint)
    url = make_queue(endpoint, queue_name, ["hello"])
    with running(workdir, "run handlers:handle", **env) as proc:
        wait_for(lambda: len(_lines(workdir / "done.txt")) == 1, 15, "the message handled")
        wait_for(lambda: held(endpoint, queue_name) == (0, 0, 0), 10, "its delete")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=40) == 0, proc.log()
    records = [json.loads(line) for line in proc.log().splitlines()]  # TRIO_SQS_LOG_FORMAT=json
    assert any("consuming" in r["message"] for r in records)
    assert url.endswith(queue_name)


EXAMPLES = Path(__file__).parent.parent / "examples"


@PROCESSES
def test_the_example_handlers_run_under_trio_sqs_run(
    tmp_path: Path, endpoint: str, queue_name: str
) -> None:
    """examples/handlers.py, copied as a user would, runs under `trio-sqs run`."""
    (tmp_path / "handlers.py").write_text((EXAMPLES / "handlers.py").read_text())
    make_queue(endpoint, queue_name, ['{"order_id": "o-1"}', '{"order_id": "o-2"}'])
    command = f"run handlers:handle --queue {queue_name} --endpoint-url {endpoint} --wait-time 1"
    with running(tmp_path, command) as proc:
        wait_for(lambda: queue_stats(endpoint, queue_name)["deliveries"] == 2, 15, "2 receives")
        wait_for(lambda: held(endpoint, queue_name) == (0, 0, 0), 10, "both deleted")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=10) == 0, proc.log()
    assert proc.log().count("handled") >= 2, proc.log()


@PROCESSES
def test_the_example_worker_runs_and_stops_on_sigterm(
    tmp_path: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["hello"])
    out = tmp_path / "out.log"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "worker.py"), queue_name, "--endpoint-url", endpoint],
            env=_env(tmp_path),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: "handled" in out.read_text(), 15, "the message handled")
        wait_for(lambda: held(endpoint, queue_name) == (0, 0, 0), 10, "its delete")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped: ConsumerStatistics(state='stopped'" in out.read_text()


@PROCESSES
def test_message_cancelled_at_grace_is_receivable_after_exit(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    url = make_queue(endpoint, queue_name, ["sleep:60"])
    command = f"run handlers:handle --queue {queue_name} --endpoint-url {endpoint}"
    with running(workdir, command + " --grace-period 0.2 --wait-time 2") as proc:
        wait_for(lambda: len(_lines(workdir / "started.txt")) == 1, 15, "the handler to start")
        # The consumer's next poll (which gets nothing) is waiting on the server.
        wait_for(lambda: polls_waiting(endpoint, queue_name) == 1, 10, "a long poll waiting")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=5) == 0, proc.log()
        gone = time.monotonic()
    # On SQS a long poll still open takes a released message at once, even after its client
    # went away. The consumer released the message cancelled at grace with a visibility that
    # outlasts its own poll (2 s WaitTimeSeconds + 1 s), so that poll, aborted at exit, could not
    # take it: one delivery, hidden now, visible within 3 s of the exit, then receivable.
    stats = queue_stats(endpoint, queue_name)
    assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (0, 1, 0), stats
    assert stats["deliveries"] == 1, stats
    assert re.search(r"received 1, .* released 1, .* aborted polls 1, unflushed 0", proc.log())
    wait_for(lambda: held(endpoint, queue_name) == (1, 0, 0), 5, "the message to be visible")
    assert time.monotonic() - gone < 3.5
    assert queue_stats(endpoint, queue_name)["deliveries"] == 1
    assert receivable(endpoint, url) == 1


@PROCESSES
def test_run_on_two_queues_with_health_and_metrics(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    """``--queue`` twice (a URL and a name): one consumer per queue in one process, their health
    and metrics (each series labelled with its queue's name), their log lines naming their
    queue, one shutdown."""
    other = queue_name + "-b"
    url = make_queue(endpoint, queue_name, ["a", "b", "c"])
    make_queue(endpoint, other, ["d"])
    command = (
        f"run handlers:handle --queue {url} --queue {other} --endpoint-url {endpoint} "
        "--grace-period 30 --metrics-port 0 --metrics-host 127.0.0.1 --log-format json"
    )
    with running(workdir, command) as proc:
        # Port 0: the child binds a free port and logs the address it got (no free-port race).
        base = proc.metrics_base()

        def get(path: str) -> httpx.Response:
            return httpx.get(base + path, timeout=5)

        def metric(name: str, queue: str) -> float:
            series = re.escape(f'{name}{{queue="{queue}"}}')
            match = re.search(rf"^{series} (\S+)$", get("/metrics").text, re.MULTILINE)
            return float(match.group(1)) if match else -1.0

        wait_for(lambda: get("/readyz").status_code == 200, 15, "/readyz to answer 200")
        health = get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        assert set(health.json()["queues"]) == {url, other}
        deleted = "trio_sqs_messages_deleted_total"
        first = queue_name  # the label is the queue's name, whether --queue gave it or its URL
        wait_for(lambda: metric(deleted, first) == 3 and metric(deleted, other) == 1, 10, "deletes")
        text = get("/metrics").text
        for line in (
            f'trio_sqs_consumer_info{{queue="{first}"}} 1.0',
            f'trio_sqs_consumer_info{{queue="{other}"}} 1.0',
            f'trio_sqs_messages_received_total{{queue="{first}"}} 3.0',
            f'trio_sqs_messages_received_total{{queue="{other}"}} 1.0',
            f'trio_sqs_messages_completed_total{{queue="{first}"}} 3.0',
            f'trio_sqs_messages_failed_total{{queue="{other}"}} 0.0',
            f'trio_sqs_in_flight{{queue="{first}"}} 0.0',
            f'trio_sqs_buffered{{queue="{other}"}} 0.0',
            f'trio_sqs_state{{queue="{first}",state="running"}} 1.0',
            f'trio_sqs_handler_duration_seconds_count{{outcome="ok",queue="{first}"}} 3.0',
            f'trio_sqs_handler_duration_seconds_count{{outcome="ok",queue="{other}"}} 1.0',
            f'trio_sqs_last_poll_timestamp_seconds{{queue="{other}"}}',
            "trio_sqs_aborted_polls_total",
            "trio_sqs_heartbeat_extensions_total",
        ):
            assert line in text, line
        assert get("/nowhere").status_code == 404
        # While stopping (a handler inside its grace period, held there until the test opens
        # its gate): not ready, still alive, on both queues (one shutdown).
        send(endpoint, url, "gate:open")
        wait_for(lambda: metric("trio_sqs_in_flight", first) == 1, 10, "a handler in flight")
        proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: get("/readyz").status_code == 503, 5, "/readyz to answer 503")
        health = get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "stopping", health.text
        assert metric("trio_sqs_in_flight", first) == 1
        (workdir / "open").touch()  # the handler finishes inside its grace period
        assert proc.wait_exit(timeout=10) == 0, proc.log()
    # All five handled once and deleted, on both queues.
    assert len(_lines(workdir / "done.txt")) == 5
    for name, deliveries in ((queue_name, 4), (other, 1)):
        stats = queue_stats(endpoint, name)
        assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (0, 0, 0), stats
        assert stats["deliveries"] == deliveries, stats
        assert stats["requests"].get("GetQueueUrl", 0) == (0 if name == queue_name else 1)
    # Each consumer's log lines name its queue; each one stopped.
    records = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    stopped = [r for r in records if str(r["message"]).startswith("stopped")]
    assert sorted(str(r.get("queue")) for r in stopped) == sorted([url, other]), stopped


def test_queues_from_repeated_flags_commas_or_the_variable() -> None:
    from trio_sqs._cli._main import build_parser
    from trio_sqs._cli._settings import RUN_SETTINGS, resolve

    def queues(argv: list[str], **environ: str) -> object:
        args = build_parser().parse_args(["run", "m:h", *argv])
        return resolve(args, RUN_SETTINGS, environ).get("queue")

    assert queues(["--queue", "a"]) == ["a"]
    assert queues(["--queue", "a", "--queue", "b,c"]) == ["a", "b", "c"]
    assert queues([], TRIO_SQS_QUEUE="a, b,") == ["a", "b"]
    assert queues(["--queue", "x"], TRIO_SQS_QUEUE="a,b") == ["x"]  # the flag wins
    assert queues([], TRIO_SQS_QUEUE=" ") is None
    # The tools take one queue: a list is a usage error (exit 2).
    assert build_parser().parse_args(["stats", "--queue", " a "]).queue == "a"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["stats", "--queue", "a,b"])
    assert info.value.code == 2


def test_run_on_queues_where_one_does_not_exist_is_exit_3_naming_it(
    in_process: Callable[..., subprocess.CompletedProcess[str]], endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, [])
    missing = queue_name + "-missing"
    result = in_process(
        "run",
        "handlers:handle",
        "--queue",
        f"{queue_name},{missing}",
        "--endpoint-url",
        endpoint,
    )
    assert result.returncode == 3, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"trio-sqs: error: queue '{missing}' does not exist")
    ), result.stderr
    assert "Traceback" not in result.stderr
    # The same queue twice (by name, or by name and URL) is a usage error.
    url = f"{endpoint}/000000000000/{queue_name}"
    for twice in ([queue_name, queue_name], [url, queue_name]):
        again = in_process("run", "handlers:handle", "--queue", twice[0], "--queue", twice[1])
        assert again.returncode == 2
        assert f"--queue {queue_name} is given more than once" in again.stderr
