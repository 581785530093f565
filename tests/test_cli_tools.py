"""The queue tools (``trio-sqs send``, ``stats``, ``peek``, ``purge``, ``redrive``), run for real as
subprocesses against trio_sqs's in-memory SQS served over HTTP (test_cli.py's server fixture).

Each test makes its own queue (``queue_name``) and checks what the tool did on the server's side
(``GET /stats``), not only what it printed.
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
    cli_without_credentials,
    endpoint,
    held,
    make_queue,
    queue_stats,
    running,
    sqs,
    wait_for,
    workdir,
)
from trio_sqs import SendEntry

# Real processes, one after another in a worker of their own (--dist loadgroup); none of them
# asserts wall-clock bounds, so they may run beside test_cli.py's group.
pytestmark = pytest.mark.xdist_group("cli_tools")

__all__ = ["endpoint", "workdir"]  # fixtures, imported to be used here

TOOLS = ["send", "stats", "peek", "purge", "redrive"]


def tool(
    workdir: Path, endpoint: str, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``trio-sqs ARGS --endpoint-url ENDPOINT``, with ``stdin`` as its input (else none)."""
    if stdin is None:
        return _cli(workdir, *args, "--endpoint-url", endpoint, env=env)
    return subprocess.run(
        [*CLI, *args, "--endpoint-url", endpoint],
        cwd=workdir,
        env=_env(workdir, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-sqs: error: "), lines
    assert "Traceback" not in result.stderr
    return lines[0]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


# -- help and errors ------------------------------------------------------------------------------


def test_every_tool_has_help_with_the_aws_options_and_exit_codes(workdir: Path) -> None:
    top = _cli(workdir, "--help")
    for name in TOOLS:
        assert name in top.stdout
    texts = {}
    for name in TOOLS:
        result = _cli(workdir, name, "--help")
        assert result.returncode == 0, result.stderr
        texts[name] = text = " ".join(result.stdout.split())
        for flag in ("--queue", "--region", "--endpoint-url", "--profile", "--log-level"):
            assert flag in text, (name, flag)
        assert "TRIO_SQS_QUEUE" in text
        assert "3 the queue does not exist" in text
    assert "receive count goes up by 1" in texts["peek"]
    for needle in ("--to NAME_OR_URL", "--rate N", "--cancel", "--no-wait", "--json"):
        assert needle in texts["redrive"]
    assert "5 redrive: no move task started or cancelled" in texts["redrive"]
    assert "130 redrive: stopped watching" in texts["redrive"]


@pytest.mark.parametrize("name", TOOLS)
def test_a_missing_queue_is_exit_3_in_one_line(
    workdir: Path, endpoint: str, queue_name: str, name: str
) -> None:
    extra = {"send": ["hello"], "purge": ["--yes"]}.get(name, [])
    result = tool(workdir, endpoint, name, "--queue", queue_name, *extra)
    assert result.returncode == 3, result.stderr
    assert "does not exist" in one_error_line(result)
    assert result.stdout == ""


def test_missing_credentials_is_exit_4(workdir: Path, endpoint: str, queue_name: str) -> None:
    make_queue(endpoint, queue_name, ["a"])
    result = cli_without_credentials(
        workdir, "stats", "--queue", queue_name, "--endpoint-url", endpoint
    )
    assert result.returncode == 4, result.stderr
    assert "credentials" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "nothing to send"),
        (["x", "--delay", "901"], "--delay=901 is out of range"),
        (["x", "--attribute", "novalue"], "expected NAME=VALUE"),
        (["--file", "no-such-file.txt"], "cannot read --file"),
    ],
)
def test_send_usage_errors_are_exit_2(
    workdir: Path, endpoint: str, queue_name: str, args: list[str], needle: str
) -> None:
    make_queue(endpoint, queue_name, [])
    result = tool(workdir, endpoint, "send", "--queue", queue_name, *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr.strip().splitlines()[-1]
    assert len(result.stderr.strip().splitlines()) == 1
    assert held(endpoint, queue_name) == (0, 0, 0)


def test_the_queue_can_come_from_the_environment(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["a", "b"])
    result = ok(
        _cli(
            workdir,
            "stats",
            "--json",
            env={"TRIO_SQS_QUEUE": queue_name, "TRIO_SQS_ENDPOINT_URL": endpoint},
        )
    )
    assert json.loads(result.stdout)["visible"] == 2


# -- send and stats -------------------------------------------------------------------------------


def test_send_a_body_a_file_and_stdin_in_batches_of_10_then_stats(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, [])
    one = ok(tool(workdir, endpoint, "send", "--queue", queue_name, "hello"))
    ids = one.stdout.split()
    assert len(ids) == 1

    (workdir / "bodies.txt").write_text("".join(f"body {i}\n" for i in range(12)) + "\n\n")
    from_file = ok(
        tool(workdir, endpoint, "send", "--queue", queue_name, "--file", "bodies.txt", "--json")
    )
    records = json_lines(from_file.stdout)
    assert [r["line"] for r in records] == list(range(1, 13))  # blank lines skipped
    ids += [str(r["id"]) for r in records]

    piped = ok(tool(workdir, endpoint, "send", "--queue", queue_name, "-", stdin="x\ny\n"))
    ids += piped.stdout.split()
    assert len(set(ids)) == 15

    stats = queue_stats(endpoint, queue_name)
    # 1 + 2 (12 = 10 + 2) + 1 batches, never one request per message.
    assert stats["requests"].get("SendMessageBatch") == 4
    assert "SendMessage" not in stats["requests"]
    assert held(endpoint, queue_name) == (15, 0, 0)

    text = ok(tool(workdir, endpoint, "stats", "--queue", queue_name))
    assert text.stdout.strip() == f"{queue_name}: 15 visible, 0 in flight, 0 delayed"
    as_json = json.loads(
        ok(tool(workdir, endpoint, "stats", "--queue", queue_name, "--json")).stdout
    )
    assert (as_json["visible"], as_json["in_flight"], as_json["delayed"]) == (15, 0, 0)
    assert as_json["queue"] == queue_name
    assert as_json["dead_letter_queue"] is None

    bodies = sorted(m["body"] for m in _drain(endpoint, str(as_json["url"])))
    assert bodies == sorted(["hello", "x", "y", *(f"body {i}" for i in range(12))])


def _drain(endpoint: str, url: str) -> list[dict[str, object]]:
    async def op(client: trio_sqs.SQSClient) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        while True:
            result = await client.receive_messages(url, wait_time=0, visibility_timeout=60)
            if not result.messages:
                return out
            for m in result.messages:
                out.append(
                    {
                        "body": m.body,
                        "attributes": {k: v.string_value for k, v in m.message_attributes.items()},
                        "group": m.message_group_id,
                    }
                )

    return sqs(endpoint, op)


def test_send_with_attributes_and_delay(workdir: Path, endpoint: str, queue_name: str) -> None:
    url = make_queue(endpoint, queue_name, [])
    ok(tool(workdir, endpoint, "send", "--queue", queue_name, "late", "--delay", "600"))
    ok(
        tool(
            workdir, endpoint, "send", "--queue", url, "tagged",
            "--attribute", "kind=order", "--attribute", "source=cli=1",
        )
    )  # fmt: skip
    assert held(endpoint, queue_name) == (1, 0, 1)
    stats = json.loads(ok(tool(workdir, endpoint, "stats", "--queue", url, "--json")).stdout)
    assert (stats["visible"], stats["delayed"]) == (1, 1)
    (message,) = _drain(endpoint, url)
    assert message["body"] == "tagged"
    assert message["attributes"] == {"kind": "order", "source": "cli=1"}


def test_send_create_makes_a_fifo_queue_with_group_and_dedup_ids(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    name = queue_name + ".fifo"
    args = ["send", "--queue", name, "--group-id", "g1", "--dedup-id", "d"]
    result = ok(tool(workdir, endpoint, *args, "--create", "-", stdin="one\ntwo\nthree\n"))
    assert len(result.stdout.split()) == 3  # d-1, d-2, d-3: not deduplicated into one
    again = ok(tool(workdir, endpoint, *args, "one"))  # dedup id "d": new
    assert len(again.stdout.split()) == 1
    assert held(endpoint, name) == (4, 0, 0)
    assert queue_stats(endpoint, name)["requests"].get("CreateQueue") == 1
    url = json.loads(ok(tool(workdir, endpoint, "stats", "--queue", name, "--json")).stdout)["url"]
    messages = _drain(endpoint, str(url))
    assert {m["group"] for m in messages} == {"g1"}


def test_send_create_makes_a_standard_queue(workdir: Path, endpoint: str, queue_name: str) -> None:
    # (Without --create, a missing queue is exit 3: test_a_missing_queue_is_exit_3_in_one_line.)
    ok(tool(workdir, endpoint, "send", "--queue", queue_name, "x", "--create"))
    assert held(endpoint, queue_name) == (1, 0, 0)
    assert queue_stats(endpoint, queue_name)["requests"].get("CreateQueue") == 1


def test_stats_shows_the_dead_letter_queue(workdir: Path, endpoint: str, queue_name: str) -> None:
    dlq_name = queue_name[:60] + "-dlq"

    async def op(client: trio_sqs.SQSClient) -> None:
        dlq = await client.create_queue(dlq_name)
        arn = (await client.get_queue_attributes(dlq, ["QueueArn"]))["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 3})
        main = await client.create_queue(queue_name, attributes={"RedrivePolicy": policy})
        await client.send_message(main, "m")
        for body in ("d1", "d2"):
            await client.send_message(dlq, body)

    sqs(endpoint, op)
    text = ok(tool(workdir, endpoint, "stats", "--queue", queue_name)).stdout.splitlines()
    assert text == [
        f"{queue_name}: 1 visible, 0 in flight, 0 delayed",
        f"  dead-letter queue {dlq_name}: 2 visible, 0 in flight, 0 delayed",
    ]
    stats = json.loads(ok(tool(workdir, endpoint, "stats", "--queue", queue_name, "--json")).stdout)
    dlq = stats["dead_letter_queue"]
    assert (dlq["queue"], dlq["visible"], dlq["in_flight"], dlq["delayed"]) == (dlq_name, 2, 0, 0)


def test_stats_watch_refreshes_until_ctrl_c_then_exits_0(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["a"])
    out = workdir / "stdout.log"
    command = f"stats --queue {queue_name} --endpoint-url {endpoint} --json --watch 0.05"
    with running(workdir, command) as proc:
        wait_for(lambda: len(out.read_text().splitlines()) >= 2, 15, "two refreshes")
        assert held(endpoint, queue_name) == (1, 0, 0)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit(10) == 0, proc.log()
        assert "Traceback" not in proc.log()
    lines = json_lines(out.read_text())
    assert len(lines) >= 2
    assert all(line["visible"] == 1 for line in lines)


# -- peek -----------------------------------------------------------------------------------------


def test_peek_leaves_messages_visible_with_receive_count_plus_1(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["first", "second"])
    args = ["peek", "--queue", queue_name, "-n", "10", "--json"]
    first = ok(tool(workdir, endpoint, *args))
    records = json_lines(first.stdout)
    assert sorted(str(r["body"]) for r in records) == ["first", "second"]
    assert [r["receive_count"] for r in records] == [1, 1]
    assert "receive count went up by 1" in first.stderr
    assert held(endpoint, queue_name) == (2, 0, 0)

    second = json_lines(ok(tool(workdir, endpoint, *args)).stdout)
    assert {r["id"]: r["receive_count"] for r in second} == {r["id"]: 2 for r in records}
    assert held(endpoint, queue_name) == (2, 0, 0)
    requests = queue_stats(endpoint, queue_name)["requests"]
    assert requests.get("ChangeMessageVisibilityBatch") == 2
    assert "DeleteMessage" not in requests and "DeleteMessageBatch" not in requests


def test_peek_text_truncates_bodies_unless_full_and_shows_attributes(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, [])
    long_body = "x" * 200
    ok(tool(workdir, endpoint, "send", "--queue", queue_name, long_body, "--attribute", "k=v"))
    short = ok(tool(workdir, endpoint, "peek", "--queue", queue_name))
    assert long_body not in short.stdout
    assert "x" * 80 + "... (200 characters; --full shows all)" in short.stdout
    assert "receive count 1" in short.stdout
    assert "attributes: k=v" in short.stdout
    assert "receive count went up by 1" in short.stdout  # the output says so
    full = ok(tool(workdir, endpoint, "peek", "--queue", queue_name, "--full"))
    assert f"body: {long_body}\n" in full.stdout
    assert "receive count 2" in full.stdout
    assert held(endpoint, queue_name) == (1, 0, 0)


def test_peek_on_an_empty_queue_says_so(workdir: Path, endpoint: str, queue_name: str) -> None:
    make_queue(endpoint, queue_name, [])
    result = ok(tool(workdir, endpoint, "peek", "--queue", queue_name, "--wait", "0"))
    assert result.stdout == ""
    assert "no message received" in result.stderr


# -- purge ----------------------------------------------------------------------------------------


def test_purge_refuses_without_a_terminal_unless_yes(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["a", "b", "c"])
    refused = tool(workdir, endpoint, "purge", "--queue", queue_name)
    assert refused.returncode == 2
    assert "--yes" in one_error_line(refused)
    assert held(endpoint, queue_name) == (3, 0, 0)
    assert "PurgeQueue" not in queue_stats(endpoint, queue_name)["requests"]

    done = ok(tool(workdir, endpoint, "purge", "--queue", queue_name, "--yes"))
    assert done.stdout.strip() == f"purged {queue_name} (3 messages)"
    assert held(endpoint, queue_name) == (0, 0, 0)
    assert queue_stats(endpoint, queue_name)["requests"]["PurgeQueue"] == 1


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


def test_purge_asks_on_a_terminal(workdir: Path, endpoint: str, queue_name: str) -> None:
    make_queue(endpoint, queue_name, ["a", "b"])
    code, output = _purge_on_a_terminal(workdir, endpoint, queue_name, b"n\n")
    assert f"purge 2 messages from {queue_name}? [y/N]" in output
    assert code == 1, output
    assert "not purged" in output
    assert held(endpoint, queue_name) == (2, 0, 0)

    code, output = _purge_on_a_terminal(workdir, endpoint, queue_name, b"y\n")
    assert code == 0, output
    assert f"purged {queue_name} (2 messages)" in output
    assert held(endpoint, queue_name) == (0, 0, 0)


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


def test_redrive_moves_the_messages_back_and_shows_progress(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    _dead_lettered(endpoint, queue_name, 12)
    dlq = queue_name[:60] + "-dlq"
    # At 500 messages/s the server (on the real clock) is done in 24 ms.
    result = ok(tool(workdir, endpoint, "redrive", "--queue", dlq, "--rate", "500",
                     "--interval", "0.05"))  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == f"started moving 12 messages from {dlq} to the queues they came from"
    assert lines[-2].startswith(f"{dlq}: COMPLETED 12/12 moved (100%)")
    assert lines[-1] == f"done: moved 12 of 12 messages from {dlq} to the queues they came from"
    assert held(endpoint, queue_name) == (12, 0, 0)
    assert held(endpoint, dlq) == (0, 0, 0)
    assert queue_stats(endpoint, dlq)["requests"]["StartMessageMoveTask"] == 1


def test_redrive_json_to_another_queue(workdir: Path, endpoint: str, queue_name: str) -> None:
    _dead_lettered(endpoint, queue_name, 5)
    dlq, other = queue_name[:60] + "-dlq", queue_name[:60] + "-other"
    make_queue(endpoint, other, [])
    result = ok(tool(workdir, endpoint, "redrive", "--queue", dlq, "--to", other, "--json",
                     "--rate", "500", "--interval", "0.05"))  # fmt: skip
    records = json_lines(result.stdout)
    assert all(r["queue"] == dlq and r["to_move"] == 5 for r in records)
    assert str(records[-1]["destination"]).endswith(f":{other}")
    assert (records[-1]["status"], records[-1]["moved"]) == ("COMPLETED", 5)
    assert "task_handle" not in records[-1]  # only while running
    assert held(endpoint, other) == (5, 0, 0)
    assert held(endpoint, queue_name) == (0, 0, 0)


def test_redrive_cancel(workdir: Path, endpoint: str, queue_name: str) -> None:
    _dead_lettered(endpoint, queue_name, 10)
    dlq = queue_name[:60] + "-dlq"
    started = ok(tool(workdir, endpoint, "redrive", "--queue", dlq, "--rate", "1", "--no-wait"))
    assert f"to cancel it: trio-sqs redrive --queue {dlq} --cancel" in started.stdout
    result = ok(tool(workdir, endpoint, "redrive", "--queue", dlq, "--cancel",
                     "--interval", "0.05"))  # fmt: skip
    last = result.stdout.splitlines()[-1]
    assert last.startswith("cancelled: ") and last.endswith(" of 10 messages had moved"), last
    moved = int(last.split()[1])
    assert moved < 10
    assert held(endpoint, queue_name) == (moved, 0, 0)
    assert held(endpoint, dlq) == (10 - moved, 0, 0)  # what had not moved stays


def test_redrive_of_a_queue_that_is_not_a_dlq_is_exit_5(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    make_queue(endpoint, queue_name, ["a"])
    result = tool(workdir, endpoint, "redrive", "--queue", queue_name)
    assert result.returncode == 5, result.stderr
    assert f"{queue_name} is not a dead-letter queue" in one_error_line(result)
    assert result.stdout == ""
    assert held(endpoint, queue_name) == (1, 0, 0)


def test_redrive_on_moto_which_has_no_move_tasks_is_exit_5(
    workdir: Path, moto_endpoint: str, queue_name: str
) -> None:
    # moto 5 answers StartMessageMoveTask with an HTTP 500 HTML page (not implemented).
    make_queue(moto_endpoint, queue_name, [])
    result = tool(workdir, moto_endpoint, "redrive", "--queue", queue_name)
    assert result.returncode == 5, result.stderr
    line = one_error_line(result)
    assert "does not implement message move tasks" in line
    assert "StartMessageMoveTask answered HTTP 500 without an SQS error" in line


def test_redrive_sigterm_stops_watching_but_not_the_task(
    workdir: Path, endpoint: str, queue_name: str
) -> None:
    _dead_lettered(endpoint, queue_name, 10)
    dlq = queue_name[:60] + "-dlq"
    out = workdir / "stdout.log"
    command = f"redrive --queue {dlq} --rate 1 --interval 0.05 --endpoint-url {endpoint}"
    with running(workdir, command) as proc:
        wait_for(lambda: "RUNNING" in out.read_text(), 15, "a progress line")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 130, proc.log()
        note = proc.log().strip().splitlines()
    assert note == [
        "trio-sqs: stopped watching; the move task goes on in SQS. To cancel it: "
        f"trio-sqs redrive --queue {dlq} --cancel --endpoint-url {endpoint}"
    ]

    async def status(client: trio_sqs.SQSClient) -> str:
        url = await client.get_queue_url(dlq)
        arn = (await client.get_queue_attributes(url, ["QueueArn"]))["QueueArn"]
        result = await client.call("ListMessageMoveTasks", {"SourceArn": arn})
        return str(result["Results"][0]["Status"])

    assert sqs(endpoint, status) == "RUNNING"  # (it ends with this module's server)
