"""The queue tools (``trio-sqs send``, ``stats``, ``peek``, ``purge``, ``redrive``) run for real, as
the installed script in a process of its own, where the process is the subject: the help the
script prints, a real stdin pipe, a question on a (pseudo-)terminal, and signals while watching.
Everything else the tools do (output, exit codes, usage errors, what they did to the queues) is
checked in process against both the in-memory SQS and moto: test_cli_tools_backends.py.

The server is trio_sqs's in-memory SQS over HTTP, in a thread of this test process
(test_cli_tools_backends.py's ``fake_endpoint``). Each test makes its own queue (``queue_name``)
and checks what the tool did on the server's side (``GET /stats``), not only what it printed.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

import trio_sqs
from tests.test_cli import (
    CLI,
    _cli,
    _env,
    held,
    make_queue,
    queue_stats,
    running,
    sqs,
    wait_for,
    workdir,
)
from tests.test_cli_tools_backends import fake_endpoint
from trio_sqs import SendEntry

# Real processes, one after another in a worker of their own (--dist loadgroup); none of them
# asserts wall-clock bounds, so they may run beside test_cli.py's group.
pytestmark = pytest.mark.xdist_group("cli_tools")

__all__ = ["fake_endpoint", "workdir"]  # fixtures, imported to be used here

TOOLS = ["send", "stats", "peek", "purge", "redrive"]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


# -- help -----------------------------------------------------------------------------------------


def test_the_script_lists_the_tools_and_prints_their_help(workdir: Path) -> None:
    # Each tool's help, in full, is checked in process (test_cli_tools_backends.py); here one of
    # them as the installed script prints it.
    top = _cli(workdir, "--help")
    assert top.returncode == 0, top.stderr
    for name in TOOLS:
        assert name in top.stdout
    result = _cli(workdir, "redrive", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for flag in ("--queue", "--region", "--endpoint-url", "--profile", "--log-level"):
        assert flag in text, flag
    assert "TRIO_SQS_QUEUE" in text
    assert "3 the queue does not exist" in text
    for needle in ("--to NAME_OR_URL", "--rate N", "--cancel", "--no-wait", "--json"):
        assert needle in text
    assert "5 redrive: no move task started or cancelled" in text
    assert "130 redrive: stopped watching" in text


# -- send from a pipe -----------------------------------------------------------------------------


def test_send_reads_its_lines_from_a_real_stdin_pipe(
    workdir: Path, fake_endpoint: str, queue_name: str
) -> None:
    url = make_queue(fake_endpoint, queue_name, [])
    piped = subprocess.run(
        [*CLI, "send", "--queue", queue_name, "--endpoint-url", fake_endpoint, "-"],
        cwd=workdir,
        env=_env(workdir),
        input="x\n\n  \ny\r\nété\n".encode(),  # blank lines skipped; UTF-8 text
        capture_output=True,
        timeout=20,
    )
    assert piped.returncode == 0, piped.stderr.decode()
    ids = piped.stdout.decode().split()
    assert len(ids) == 3 == len(set(ids))
    assert held(fake_endpoint, queue_name) == (3, 0, 0)
    requests = queue_stats(fake_endpoint, queue_name)["requests"]
    assert requests.get("SendMessageBatch") == 1
    assert "SendMessage" not in requests

    async def bodies(client: trio_sqs.SQSClient) -> dict[str, str]:
        result = await client.receive_messages(url, max_messages=10, wait_time=0)
        return {m.message_id: m.body for m in result.messages}

    assert sqs(fake_endpoint, bodies) == dict(zip(ids, ["x", "y", "été"], strict=True))


# -- stats --watch --------------------------------------------------------------------------------


def test_stats_watch_refreshes_until_ctrl_c_then_exits_0(
    workdir: Path, fake_endpoint: str, queue_name: str
) -> None:
    make_queue(fake_endpoint, queue_name, ["a"])
    out = workdir / "stdout.log"
    command = f"stats --queue {queue_name} --endpoint-url {fake_endpoint} --json --watch 0.05"
    with running(workdir, command) as proc:
        wait_for(lambda: len(out.read_text().splitlines()) >= 2, 15, "two refreshes")
        assert held(fake_endpoint, queue_name) == (1, 0, 0)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit(10) == 0, proc.log()
        assert "Traceback" not in proc.log()
    lines = json_lines(out.read_text())
    assert len(lines) >= 2
    assert all(line["visible"] == 1 for line in lines)


# -- purge ----------------------------------------------------------------------------------------


def _purge_on_a_terminal(
    workdir: Path, endpoint: str, queue: str, answer: bytes
) -> tuple[int, str]:
    """Run ``purge`` with a pseudo-terminal as stdin and stdout; answer its question."""
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "purge", "--queue", queue, "--endpoint-url", endpoint],
        cwd=workdir,
        env=_env(workdir),
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
    )
    os.close(child_fd)
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                seen += os.read(main_fd, 4096)
        os.write(main_fd, answer)
        code = proc.wait(timeout=15)
        while select.select([main_fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)
    return code, seen.decode()


def test_purge_asks_on_a_terminal(workdir: Path, fake_endpoint: str, queue_name: str) -> None:
    # What it does with each answer is checked in process (test_cli_tools_backends.py); here
    # the question on a real terminal, and the process's exit code for "no".
    make_queue(fake_endpoint, queue_name, ["a", "b"])
    code, output = _purge_on_a_terminal(workdir, fake_endpoint, queue_name, b"n\n")
    assert f"purge 2 messages from {queue_name}? [y/N]" in output
    assert code == 1, output
    assert "not purged" in output
    assert held(fake_endpoint, queue_name) == (2, 0, 0)
    assert "PurgeQueue" not in queue_stats(fake_endpoint, queue_name)["requests"]


# -- redrive --------------------------------------------------------------------------------------


def _dead_lettered(endpoint: str, source: str, count: int) -> tuple[str, str]:
    """A queue ``source`` whose dead-letter queue ``source-dlq`` holds ``count`` messages that
    the server dead-lettered from it; returns their URLs."""
    dlq_name = source[:60] + "-dlq"

    async def op(client: trio_sqs.SQSClient) -> tuple[str, str]:
        dlq = await client.create_queue(dlq_name)
        arn = (await client.get_queue_attributes(dlq, ["QueueArn"]))["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 1})
        url = await client.create_queue(source, attributes={"RedrivePolicy": policy})
        entries = [SendEntry(id=str(i), body=f"m{i}") for i in range(count)]
        for start in range(0, count, 10):
            await client.send_message_batch(url, entries[start : start + 10])
        for _ in range(count + 1):  # received once, then moved at the next receive
            await client.receive_messages(url, max_messages=10, wait_time=0, visibility_timeout=0)
        return url, dlq

    urls = sqs(endpoint, op)
    assert held(endpoint, dlq_name) == (count, 0, 0)
    assert held(endpoint, source) == (0, 0, 0)
    return urls


def test_redrive_sigterm_stops_watching_but_not_the_task(
    workdir: Path, fake_endpoint: str, queue_name: str
) -> None:
    _dead_lettered(fake_endpoint, queue_name, 10)
    dlq = queue_name[:60] + "-dlq"
    out = workdir / "stdout.log"
    command = f"redrive --queue {dlq} --rate 1 --interval 0.05 --endpoint-url {fake_endpoint}"
    with running(workdir, command) as proc:
        wait_for(lambda: "RUNNING" in out.read_text(), 15, "a progress line")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 130, proc.log()
        note = proc.log().strip().splitlines()
    assert note == [
        "trio-sqs: stopped watching; the move task goes on in SQS. To cancel it: "
        f"trio-sqs redrive --queue {dlq} --cancel --endpoint-url {fake_endpoint}"
    ]

    async def status(client: trio_sqs.SQSClient) -> str:
        url = await client.get_queue_url(dlq)
        arn = (await client.get_queue_attributes(url, ["QueueArn"]))["QueueArn"]
        result = await client.call("ListMessageMoveTasks", {"SourceArn": arn})
        return str(result["Results"][0]["Status"])

    assert sqs(fake_endpoint, status) == "RUNNING"  # (it ends with this module's server)
