"""The queue tools (``trio-sqs send``, ``stats``, ``peek``, ``purge``, ``redrive``) run in-process
through ``trio_sqs._cli.main`` (which calls ``trio.run`` itself) against two SQS servers over real
HTTP: trio_sqs's in-memory SQS, served from a thread for this module, and moto's server
(session-wide, global state: every test makes its own queues, ``queue_name``).

This is where the tools' behaviour is checked: their output, exit codes, usage errors, and what
they did to the queues. test_cli_tools.py runs the real executable only where the process is the
subject (help as the script prints it, a real stdin pipe, a prompt on a terminal, signals).
Every test checks what the tool did on the server's side through a client of its own, and which
requests the tool sent (``Result.requests``), not only what it printed. Where moto differs from
real SQS the test says what SQS does and its moto case is a strict xfail naming the difference
(``moto_differs``, as in test_conformance.py). moto has no message move tasks: the redrive tests
run on the in-memory SQS only (``FAKE_ONLY``), except the one checking what redrive says to an
endpoint without them (``MOTO_ONLY``).

Real clock and sockets: nothing here waits long (peeks of an empty queue use ``--wait 0``;
redrive's move tasks run at up to 500 messages/s on the server's real clock).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs import Message, MessageAttributeValue, SendEntry, SQSClient
from trio_sqs._cli import main
from trio_sqs._cli._tools import TOOLS
from trio_sqs._transport import TrioTransport
from trio_sqs.testing import FakeSQS, serve_fake_sqs

from .conftest import main_leaves_no_trace

T = TypeVar("T")

BACKENDS = ["fake-http", "moto"]
# moto 5 has no message move tasks (StartMessageMoveTask answers HTTP 500): redrive's tests run on
# the in-memory SQS, and what redrive says to moto is checked on moto alone.
FAKE_ONLY = pytest.mark.parametrize("backend", ["fake-http"], indirect=True)
MOTO_ONLY = pytest.mark.parametrize("backend", ["moto"], indirect=True)

# -- the two servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_endpoint() -> Iterator[str]:
    """trio_sqs's in-memory SQS over HTTP on 127.0.0.1 (port 0), in a thread for this module."""
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.CancelScope]] = queue.Queue()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(serve_fake_sqs, FakeSQS())
            started.put((endpoint, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(serve,), name="fake-sqs", daemon=True)
    thread.start()
    endpoint, token, scope = started.get(timeout=20)
    try:
        yield endpoint
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)


@dataclass
class Backend:
    kind: str
    endpoint: str

    def sqs(self, operation: Callable[[SQSClient], Awaitable[T]]) -> T:
        """Run ``operation`` with a client of this test's own (the server's side of things)."""

        async def run() -> T:
            # Plain HTTP: no CA bundle to load (httpx's default costs ~20 ms per client).
            transport = httpx.AsyncHTTPTransport(verify=False)
            async with trio_sqs.open_client(
                region="us-east-1", endpoint_url=self.endpoint, transport=transport
            ) as client:
                return await operation(client)

        return trio.run(run)

    def create(self, name: str, attributes: dict[str, str] | None = None) -> str:
        return self.sqs(lambda c: c.create_queue(name, attributes=attributes))

    def make(self, name: str, bodies: list[str]) -> str:
        """Create the queue ``name`` holding ``bodies``; return its URL."""

        async def op(client: SQSClient) -> str:
            url = await client.create_queue(name)
            for body in bodies:
                await client.send_message(url, body)
            return url

        return self.sqs(op)

    def queue(self, name: str) -> tuple[str, dict[str, str]]:
        """The URL and every attribute of the queue ``name``."""

        async def op(client: SQSClient) -> tuple[str, dict[str, str]]:
            url = await client.get_queue_url(name)
            return url, await client.get_queue_attributes(url)

        return self.sqs(op)

    def counts(self, url: str) -> tuple[int, int, int]:
        return self.sqs(lambda c: counts(c, url))

    def state(self, url: str) -> tuple[tuple[int, int, int], list[Message]]:
        """The queue's counts, then every message receivable (each is then hidden for 60 s)."""

        async def op(client: SQSClient) -> tuple[tuple[int, int, int], list[Message]]:
            return await counts(client, url), await receive_all(client, url)

        return self.sqs(op)


async def counts(client: SQSClient, url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed), from GetQueueAttributes."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = await client.get_queue_attributes(url, names)
    visible, in_flight, delayed = (int(attributes[name]) for name in names)
    return visible, in_flight, delayed


async def receive_all(client: SQSClient, url: str) -> list[Message]:
    """Every message receivable now, each hidden for 60 s (so: each once)."""
    out: list[Message] = []
    while True:
        result = await client.receive_messages(url, wait_time=0, visibility_timeout=60)
        if not result.messages:
            return out
        out.extend(result.messages)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """One of the two servers; the tools find it through ``TRIO_SQS_ENDPOINT_URL``."""
    endpoint = request.getfixturevalue(
        "moto_endpoint" if request.param == "moto" else "fake_endpoint"
    )
    monkeypatch.setenv("TRIO_SQS_ENDPOINT_URL", endpoint)
    return Backend(request.param, endpoint)


def moto_differs(request: pytest.FixtureRequest, backend: Backend, reason: str) -> None:
    if backend.kind == "moto":
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"moto differs: {reason}"))


# -- running a tool in this process ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def cli_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``main`` is written for a process of its own: it replaces the root logger's handlers (with
    one on this test's captured stderr), sets logger levels, and freezes the heap on its way
    out. Undo all that after each test, and start from no ``TRIO_SQS_*`` variable."""
    with main_leaves_no_trace(monkeypatch):
        yield


@dataclass
class Result:
    code: int
    out: str
    err: str
    #: The operation of every HTTP request the tool sent (X-Amz-Target), retries included.
    requests: Counter[str]

    def ok(self) -> Result:
        assert self.code == 0, self.err
        return self

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    def error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("trio-sqs: error: "), lines
        assert "Traceback" not in self.err
        return lines[0]


Tool = Callable[..., Result]


class TerminalInput(io.StringIO):
    """Standard input that says it is a terminal (so purge asks)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def tool(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Tool:
    """``tool("send", "--queue", q, ..., stdin="...")``: ``trio-sqs ...`` in this process, with
    ``stdin`` as its standard input (not a terminal unless ``terminal=True``). argparse's exits
    (``--help``, a bad flag or value) are its exit code, as for the process."""
    send = TrioTransport.request

    def run(*args: str, stdin: str = "", terminal: bool = False) -> Result:
        requests: Counter[str] = Counter()

        async def recorded(self: TrioTransport, *args: Any, **kwargs: Any) -> Any:
            head: bytes = args[4]  # method, scheme, host, port, head, ...
            target = re.search(rb"\r\nX-Amz-Target: AmazonSQS\.(\w+)\r\n", head)
            requests[target.group(1).decode() if target else "?"] += 1
            return await send(self, *args, **kwargs)

        monkeypatch.setattr(sys, "stdin", (TerminalInput if terminal else io.StringIO)(stdin))
        # moto's server runs in this process: its log (a traceback for an operation it does not
        # implement) would land on the tool's stderr, through the handler ``main`` installs.
        monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", True)
        capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(TrioTransport, "request", recorded)
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = 0 if exc.code is None else int(exc.code)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err, requests)

    return run


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of entries of every SendMessageBatch any client sends during the test."""
    sizes: list[int] = []
    original = SQSClient.send_message_batch

    async def spy(self: SQSClient, queue_url: str, entries: Any) -> Any:
        sizes.append(len(entries))
        return await original(self, queue_url, entries)

    monkeypatch.setattr(SQSClient, "send_message_batch", spy)
    return sizes


# -- help -----------------------------------------------------------------------------------------


def test_every_tool_s_help_names_the_aws_options_and_the_exit_codes(tool: Tool) -> None:
    # (test_cli_tools.py checks that the installed script lists the tools and prints this help.)
    texts = {}
    for name in TOOLS:
        result = tool(name, "--help")
        assert result.code == 0, result.err
        texts[name] = text = " ".join(result.out.split())
        for flag in ("--queue", "--region", "--endpoint-url", "--profile", "--log-level"):
            assert flag in text, (name, flag)
        assert "TRIO_SQS_QUEUE" in text, name
        assert "3 the queue does not exist" in text, name
        assert result.requests == Counter(), name
    assert "receive count goes up by 1" in texts["peek"]
    for needle in ("--to NAME_OR_URL", "--rate N", "--cancel", "--no-wait", "--json"):
        assert needle in texts["redrive"]
    assert "5 redrive: no move task started or cancelled" in texts["redrive"]
    assert "130 redrive: stopped watching" in texts["redrive"]


# -- send -----------------------------------------------------------------------------------------


def test_send_create_a_body_and_stdin_lines(
    backend: Backend, tool: Tool, queue_name: str, batch_sizes: list[int]
) -> None:
    one = tool("send", "--queue", queue_name, "--create", "hello").ok()
    assert one.err == ""
    ids = one.out.split()
    assert len(ids) == 1
    url, attributes = backend.queue(queue_name)
    assert "FifoQueue" not in attributes  # a standard queue
    assert one.requests["CreateQueue"] == 1

    piped = tool("send", "--queue", queue_name, "-", stdin="x\n\n  \ny\r\n").ok()
    ids += piped.out.split()
    assert len(ids) == 3 == len(set(ids))
    assert batch_sizes == [1, 2]  # blank lines skipped; one request per batch
    for sent in (one, piped):  # never one request per message
        assert sent.requests["SendMessageBatch"] == 1
        assert "SendMessage" not in sent.requests
    assert "CreateQueue" not in piped.requests  # it exists now

    held, messages = backend.state(url)
    assert held == (3, 0, 0)
    assert {m.message_id: m.body for m in messages} == dict(
        zip(ids, ["hello", "x", "y"], strict=True)
    )


def test_send_23_lines_of_a_file_in_batches_of_10_as_json_then_stats(
    backend: Backend, tool: Tool, queue_name: str, batch_sizes: list[int], tmp_path: Path
) -> None:
    url = backend.create(queue_name)
    bodies = [f"body {i}" for i in range(23)]
    path = tmp_path / "bodies.txt"
    path.write_text("\n".join(bodies[:12]) + "\n\n" + "\n".join(bodies[12:]) + "\n")

    sent = tool("send", "--queue", queue_name, "--file", str(path), "--json").ok()
    records = sent.json_lines()
    assert batch_sizes == [10, 10, 3]
    assert sent.requests["SendMessageBatch"] == 3
    assert "SendMessage" not in sent.requests
    assert [sorted(r) for r in records] == [["id", "line"]] * 23  # no sequence number: standard
    assert [r["line"] for r in records] == list(range(1, 24))  # in order, counted without blanks

    # The counts right after the sends.
    text = tool("stats", "--queue", queue_name).ok()
    assert text.out == f"{queue_name}: 23 visible, 0 in flight, 0 delayed\n"
    stats = tool("stats", "--queue", queue_name, "--json").ok().json_lines()
    assert stats == [
        {
            "queue": queue_name,
            "url": url,
            "visible": 23,
            "in_flight": 0,
            "delayed": 0,
            "dead_letter_queue": None,
        }
    ]

    held, messages = backend.state(url)
    assert held == (23, 0, 0)
    assert {m.message_id: m.body for m in messages} == {
        r["id"]: bodies[r["line"] - 1] for r in records
    }


def test_send_attributes_and_delay(backend: Backend, tool: Tool, queue_name: str) -> None:
    url = backend.create(queue_name)
    late = tool("send", "--queue", queue_name, "late", "--delay", "600").ok().out.split()
    tagged = tool(
        "send", "--queue", url, "tagged", "--attribute", "kind=order", "--attribute", "source=cli=1"
    ).ok()  # by URL; the value keeps its "="
    assert len(late) == 1

    (stats,) = tool("stats", "--queue", url, "--json").ok().json_lines()
    assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (1, 0, 1)
    text = tool("stats", "--queue", url).ok()
    assert text.out == f"{url}: 1 visible, 0 in flight, 1 delayed\n"

    held, messages = backend.state(url)
    assert held == (1, 0, 1)
    (message,) = messages  # the delayed one is not receivable yet
    assert message.message_id == tagged.out.strip()
    assert message.body == "tagged"
    assert {k: (v.data_type, v.string_value) for k, v in message.message_attributes.items()} == {
        "kind": ("String", "order"),
        "source": ("String", "cli=1"),
    }


def test_send_create_fifo_with_group_and_dedup_ids(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    name = queue_name + ".fifo"
    args = ["send", "--queue", name, "--group-id", "g1"]
    sent = tool(*args, "--dedup-id", "d", "--create", "--json", "-", stdin="one\ntwo\nthree\n")
    records = sent.ok().json_lines()
    assert [r["line"] for r in records] == [1, 2, 3]  # not deduplicated into one
    assert all(str(r["sequence_number"]).isdigit() for r in records)
    assert sent.requests["CreateQueue"] == 1
    url, attributes = backend.queue(name)
    assert attributes["FifoQueue"] == "true"
    assert attributes.get("ContentBasedDeduplication", "false") == "false"

    # The Nth of several got ID-N: a single message with "d-2" is a duplicate, dropped by SQS.
    again = tool(*args, "--dedup-id", "d-2", "two").ok()
    assert len(again.out.split()) == 1
    # A single message gets the ID itself: "d" is new.
    (single,) = tool(*args, "--dedup-id", "d", "one").ok().out.split()
    assert "CreateQueue" not in again.requests

    held, messages = backend.state(url)
    assert held == (4, 0, 0)
    assert [m.body for m in messages] == ["one", "two", "three", "one"]
    assert [m.message_id for m in messages] == [*(r["id"] for r in records), single]
    assert {m.message_group_id for m in messages} == {"g1"}
    assert [m.message_deduplication_id for m in messages] == ["d-1", "d-2", "d-3", "d"]
    assert [m.sequence_number for m in messages[:3]] == [r["sequence_number"] for r in records]


def test_a_deduplicated_send_prints_the_id_of_the_message_sqs_kept(
    backend: Backend, tool: Tool, queue_name: str, request: pytest.FixtureRequest
) -> None:
    moto_differs(
        request,
        backend,
        "it answers a deduplicated send with a fresh MessageId; SQS answers the id of the "
        "message it kept",
    )
    name = queue_name + ".fifo"
    args = ["send", "--queue", name, "--group-id", "g", "--dedup-id", "same", "body"]
    first = tool(*args, "--create").ok().out.strip()
    again = tool(*args).ok().out.strip()
    url, _ = backend.queue(name)
    held, (kept,) = backend.state(url)
    assert (held, kept.body) == ((1, 0, 0), "body")
    assert kept.message_id == first
    assert again == first


# -- stats ----------------------------------------------------------------------------------------


async def with_dead_letter_queue(
    client: SQSClient, name: str, max_receives: int
) -> tuple[str, str]:
    """Create ``name``-dlq and ``name`` redriving to it; return (main URL, DLQ URL)."""
    dlq = await client.create_queue(name + "-dlq")
    arn = (await client.get_queue_attributes(dlq, ["QueueArn"]))["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
    return await client.create_queue(name, attributes={"RedrivePolicy": policy}), dlq


def test_stats_shows_the_dead_letter_queue_counts(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    async def setup(client: SQSClient) -> tuple[str, str]:
        url, dlq = await with_dead_letter_queue(client, queue_name, 3)
        await client.send_message(url, "m")
        for body in ("d1", "d2", "d3"):
            await client.send_message(dlq, body)
        # One of the DLQ's messages in flight.
        received = await client.receive_messages(dlq, max_messages=1, visibility_timeout=60)
        assert len(received.messages) == 1
        assert await counts(client, dlq) == (2, 1, 0)
        return url, dlq

    url, dlq = backend.sqs(setup)
    dlq_name = queue_name + "-dlq"
    assert tool("stats", "--queue", queue_name).ok().out.splitlines() == [
        f"{queue_name}: 1 visible, 0 in flight, 0 delayed",
        f"  dead-letter queue {dlq_name}: 2 visible, 1 in flight, 0 delayed",
    ]
    (stats,) = tool("stats", "--queue", queue_name, "--json").ok().json_lines()
    assert stats == {
        "queue": queue_name,
        "url": url,
        "visible": 1,
        "in_flight": 0,
        "delayed": 0,
        "dead_letter_queue": {
            "queue": dlq_name,
            "url": dlq,
            "visible": 2,
            "in_flight": 1,
            "delayed": 0,
        },
    }


# -- peek -----------------------------------------------------------------------------------------


def test_peek_json_leaves_messages_visible_with_receive_count_plus_1(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    async def setup(client: SQSClient) -> str:
        url = await client.create_queue(queue_name)
        tag = {"k": MessageAttributeValue.string("v")}
        await client.send_message(url, "first", message_attributes=tag)
        await client.send_message(url, "second")
        return url

    url = backend.sqs(setup)
    peeked = tool("peek", "--queue", queue_name, "-n", "10", "--json").ok()
    records = peeked.json_lines()
    assert "receive count went up by 1" in peeked.err  # the note goes to stderr under --json
    assert [sorted(r) for r in records] == [
        ["attributes", "body", "id", "receive_count", "system_attributes"]
    ] * 2
    by_body = {r["body"]: r for r in records}
    assert sorted(by_body) == ["first", "second"]
    assert by_body["first"]["attributes"] == {"k": "v"}
    assert by_body["second"]["attributes"] == {}
    for record in records:
        assert record["receive_count"] == 1
        system = record["system_attributes"]
        assert system["ApproximateReceiveCount"] == "1"
        assert "SentTimestamp" in system and "ApproximateFirstReceiveTimestamp" in system

    # Released at once: visible, not in flight, never deleted; the next peek is each one's second.
    assert backend.counts(url) == (2, 0, 0)
    again = tool("peek", "--queue", queue_name, "-n", "10", "--json").ok()
    assert {r["id"]: r["receive_count"] for r in again.json_lines()} == {
        r["id"]: 2 for r in records
    }
    for result in (peeked, again):
        assert result.requests["ChangeMessageVisibilityBatch"] == 1
        assert "DeleteMessage" not in result.requests
        assert "DeleteMessageBatch" not in result.requests
    held, messages = backend.state(url)
    assert held == (2, 0, 0)
    assert {m.message_id: m.receive_count for m in messages} == {r["id"]: 3 for r in records}


def test_peek_text_and_an_empty_queue(backend: Backend, tool: Tool, queue_name: str) -> None:
    url = backend.create(queue_name)
    empty = tool("peek", "--queue", queue_name, "--wait", "0").ok()
    assert (empty.out, empty.err) == ("", "no message received\n")

    long_body = "x" * 200
    (message_id,) = tool("send", "--queue", url, long_body, "--attribute", "b=2").ok().out.split()
    short = tool("peek", "--queue", queue_name).ok()
    assert long_body not in short.out
    lines = short.out.splitlines()
    assert lines[:3] == [
        f"{message_id}  receive count 1",
        "  body: " + "x" * 80 + "... (200 characters; --full shows all)",
        "  attributes: b=2",
    ]
    assert "receive count went up by 1" in lines[3]  # on stdout without --json
    full = tool("peek", "--queue", queue_name, "--full").ok()
    assert f"  body: {long_body}\n" in full.out
    assert f"{message_id}  receive count 2" in full.out
    assert backend.counts(url) == (1, 0, 0)


def test_peeking_counts_towards_max_receive_count(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    """As peek's help says: with maxReceiveCount 1, one peek is the message's one receive, and
    the next receive moves it to the dead-letter queue."""

    async def setup(client: SQSClient) -> tuple[str, str]:
        url, dlq = await with_dead_letter_queue(client, queue_name, 1)
        await client.send_message(url, "m")
        return url, dlq

    url, dlq = backend.sqs(setup)
    (peeked,) = tool("peek", "--queue", queue_name, "--json").ok().json_lines()
    assert peeked["receive_count"] == 1
    assert backend.state(url) == ((1, 0, 0), [])  # the next receive moves it, not delivers it
    (stats,) = tool("stats", "--queue", queue_name, "--json").ok().json_lines()
    assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (0, 0, 0)
    assert stats["dead_letter_queue"]["visible"] == 1
    held, (moved,) = backend.state(dlq)
    assert held == (1, 0, 0)
    assert (moved.message_id, moved.body) == (peeked["id"], "m")


# -- purge ----------------------------------------------------------------------------------------


def test_purge_yes_empties_the_queue_without_yes_it_refuses(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    async def setup(client: SQSClient) -> str:
        url = await client.create_queue(queue_name)
        for body in ("a", "b", "c"):
            await client.send_message(url, body)
        await client.send_message(url, "late", delay_seconds=600)
        await client.receive_messages(url, max_messages=1, visibility_timeout=60)
        assert await counts(client, url) == (2, 1, 1)
        return url

    url = backend.sqs(setup)
    refused = tool("purge", "--queue", queue_name)  # stdin is not a terminal
    assert refused.code == 2
    assert "pass --yes" in refused.error_line()
    assert refused.out == ""
    assert refused.requests == Counter()  # refused before asking SQS anything
    assert backend.counts(url) == (2, 1, 1)

    done = tool("purge", "--queue", queue_name, "--yes").ok()
    assert done.out == f"purged {queue_name} (4 messages)\n"  # in flight and delayed too
    assert done.requests["PurgeQueue"] == 1
    assert backend.state(url) == ((0, 0, 0), [])
    assert tool("stats", "--queue", queue_name).ok().out.startswith(f"{queue_name}: 0 visible")


def test_purge_on_a_terminal_asks_first(backend: Backend, tool: Tool, queue_name: str) -> None:
    # (test_cli_tools.py answers the question on a real pseudo-terminal.)
    url = backend.make(queue_name, ["a", "b"])
    question = f"purge 2 messages from {queue_name}? [y/N] "
    no = tool("purge", "--queue", queue_name, stdin="n\n", terminal=True)
    assert no.code == 1, no.err
    assert (no.out, no.err) == (question, "trio-sqs: not purged\n")
    assert "PurgeQueue" not in no.requests
    assert backend.counts(url) == (2, 0, 0)

    yes = tool("purge", "--queue", queue_name, stdin="y\n", terminal=True).ok()
    assert yes.out == f"{question}purged {queue_name} (2 messages)\n"
    assert yes.requests["PurgeQueue"] == 1
    assert backend.state(url) == ((0, 0, 0), [])


def test_a_second_purge_within_60_s_says_to_wait_in_one_line_leaving_the_queue(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    """SQS allows one purge per queue every 60 s (PurgeQueueInProgress, HTTP 400; moto answers
    403, which would read as a credentials error: the tool goes by the code, so both say the
    same). The line said "ServiceError: ... (--log-level DEBUG shows the traceback)"."""
    url = backend.create(queue_name)
    tool("purge", "--queue", queue_name, "--yes").ok()
    backend.sqs(lambda c: c.send_message(url, "after"))
    again = tool("purge", "--queue", queue_name, "--yes")
    assert again.code == 1, again.err
    assert again.out == ""
    line = again.error_line()
    assert line.startswith(f"trio-sqs: error: {queue_name} was purged less than 60 seconds ago")
    assert "wait a minute and try again" in line and "PurgeQueueInProgress" not in line, line
    assert "traceback" not in again.err.lower()
    assert backend.counts(url) == (1, 0, 0)  # refused: the new message stays


# -- redrive --------------------------------------------------------------------------------------


def dead_lettered(backend: Backend, source: str, count: int) -> tuple[str, str]:
    """The queue ``source`` and its dead-letter queue ``source``-dlq, which holds ``count``
    messages that the server dead-lettered from it; returns their URLs."""

    async def op(client: SQSClient) -> tuple[str, str]:
        url, dlq = await with_dead_letter_queue(client, source, 1)
        entries = [SendEntry(id=str(i), body=f"m{i}") for i in range(count)]
        for start in range(0, count, 10):
            await client.send_message_batch(url, entries[start : start + 10])
        for _ in range(count + 1):  # received once, then moved at the next receive
            received = await client.receive_messages(
                url, max_messages=10, wait_time=0, visibility_timeout=0
            )
            if not received.messages:
                break
        assert await counts(client, dlq) == (count, 0, 0)
        assert await counts(client, url) == (0, 0, 0)
        return url, dlq

    return backend.sqs(op)


@FAKE_ONLY
def test_redrive_moves_the_messages_back_and_shows_progress(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    url, dlq_url = dead_lettered(backend, queue_name, 12)
    dlq = queue_name + "-dlq"
    # At 500 messages/s the server (on the real clock) is done in 24 ms.
    result = tool("redrive", "--queue", dlq, "--rate", "500", "--interval", "0.05").ok()
    lines = result.out.splitlines()
    assert lines[0] == f"started moving 12 messages from {dlq} to the queues they came from"
    assert lines[-2].startswith(f"{dlq}: COMPLETED 12/12 moved (100%)")
    assert lines[-1] == f"done: moved 12 of 12 messages from {dlq} to the queues they came from"
    assert result.requests["StartMessageMoveTask"] == 1
    assert backend.counts(url) == (12, 0, 0)
    assert backend.counts(dlq_url) == (0, 0, 0)


@FAKE_ONLY
def test_redrive_json_to_another_queue(backend: Backend, tool: Tool, queue_name: str) -> None:
    url, dlq_url = dead_lettered(backend, queue_name, 5)
    dlq, other = queue_name + "-dlq", queue_name + "-other"
    other_url = backend.create(other)
    result = tool(
        "redrive", "--queue", dlq, "--to", other, "--json", "--rate", "500", "--interval", "0.05"
    ).ok()
    records = result.json_lines()
    assert all(r["queue"] == dlq and r["to_move"] == 5 for r in records)
    assert str(records[-1]["destination"]).endswith(f":{other}")
    assert (records[-1]["status"], records[-1]["moved"]) == ("COMPLETED", 5)
    assert "task_handle" not in records[-1]  # only while running
    assert backend.counts(other_url) == (5, 0, 0)
    assert backend.counts(url) == (0, 0, 0)
    assert backend.counts(dlq_url) == (0, 0, 0)


@FAKE_ONLY
def test_redrive_cancel(backend: Backend, tool: Tool, queue_name: str) -> None:
    # 100 messages at 10/s: the task runs for 10 s unless cancelled, and a cancelled one ends
    # at its next move (0.1 s), on the server's real clock.
    url, dlq_url = dead_lettered(backend, queue_name, 100)
    dlq = queue_name + "-dlq"
    started = tool("redrive", "--queue", dlq, "--rate", "10", "--no-wait").ok()
    assert f"to cancel it: trio-sqs redrive --queue {dlq} --cancel" in started.out
    result = tool("redrive", "--queue", dlq, "--cancel", "--interval", "0.05").ok()
    assert result.requests["CancelMessageMoveTask"] == 1
    last = result.out.splitlines()[-1]
    assert last.startswith("cancelled: ") and last.endswith(" of 100 messages had moved"), last
    moved = int(last.split()[1])
    assert moved < 100
    assert backend.counts(url) == (moved, 0, 0)
    assert backend.counts(dlq_url) == (100 - moved, 0, 0)  # what had not moved stays


@FAKE_ONLY
def test_redrive_of_a_queue_that_is_not_a_dlq_is_exit_5(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    url = backend.make(queue_name, ["a"])
    result = tool("redrive", "--queue", queue_name)
    assert result.code == 5, result.err
    assert f"{queue_name} is not a dead-letter queue" in result.error_line()
    assert result.out == ""
    assert backend.counts(url) == (1, 0, 0)


@MOTO_ONLY
def test_redrive_on_moto_which_has_no_move_tasks_is_exit_5(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    # moto 5 answers the move task operations with an HTTP 500 HTML page (not implemented).
    backend.create(queue_name)
    result = tool("redrive", "--queue", queue_name)
    assert result.code == 5, result.err
    line = result.error_line()
    assert "does not implement message move tasks" in line
    assert "ListMessageMoveTasks answered HTTP 500 without an SQS error" in line
    assert result.out == ""


# -- errors ---------------------------------------------------------------------------------------


def test_a_missing_queue_is_exit_3_in_one_line(
    backend: Backend, tool: Tool, queue_name: str
) -> None:
    extras = {"send": ["hello"], "purge": ["--yes"]}
    for name in TOOLS:
        result = tool(name, "--queue", queue_name, *extras.get(name, []))
        assert result.code == 3, (name, result.err)
        assert f"queue {queue_name!r} does not exist" in result.error_line(), name
        assert result.out == "", name
    assert backend.sqs(lambda c: c.list_queues(queue_name)) == []  # and no tool created it


def test_missing_credentials_is_exit_4(
    backend: Backend, tool: Tool, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.make(queue_name, ["a"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # (and conftest's AWS config files are empty)
    result = tool("stats", "--queue", queue_name)
    assert result.code == 4, result.err
    assert "credentials" in result.error_line()
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "nothing to send"),
        (["x", "--delay", "901"], "--delay=901 is out of range"),
        (["x", "--attribute", "novalue"], "expected NAME=VALUE"),  # argparse's exit 2
        (["--file", "no-such-file.txt"], "cannot read --file"),
    ],
)
def test_send_usage_errors_are_exit_2_in_one_line(
    backend: Backend,
    tool: Tool,
    queue_name: str,
    args: list[str],
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # (no-such-file.txt)
    url = backend.create(queue_name)
    result = tool("send", "--queue", queue_name, *args)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert needle in lines[0]
    assert result.out == ""
    assert result.requests == Counter()  # refused before asking SQS anything
    assert backend.counts(url) == (0, 0, 0)


def test_the_queue_can_come_from_the_environment(
    backend: Backend, tool: Tool, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The endpoint comes from TRIO_SQS_ENDPOINT_URL in every test here: ``backend``.)
    backend.make(queue_name, ["a", "b"])
    monkeypatch.setenv("TRIO_SQS_QUEUE", queue_name)
    (stats,) = tool("stats", "--json").ok().json_lines()
    assert (stats["queue"], stats["visible"]) == (queue_name, 2)


# -- malformed answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"ApproximateNumberOfMessages": "many"},
        {"ApproximateNumberOfMessagesNotVisible": "-1"},
        {"ApproximateNumberOfMessagesDelayed": None},
    ],
)
def test_an_unreadable_count_is_one_clear_error(answer: dict[str, object]) -> None:
    from trio_sqs._cli._settings import CommandError
    from trio_sqs._cli._tools import _counts

    with pytest.raises(CommandError, match="SQS answered an unreadable ApproximateNumber") as info:
        _counts(answer)  # type: ignore[arg-type]
    assert info.value.code == 1


@pytest.mark.parametrize("answer", [{}, {"QueueArn": ""}, {"QueueArn": 7}])
def test_an_answer_without_what_it_must_carry_is_one_clear_error(
    answer: dict[str, object],
) -> None:
    from trio_sqs._cli._settings import CommandError
    from trio_sqs._cli._tools import _answer_text

    with pytest.raises(CommandError, match="answer to GetQueueAttributes has no QueueArn") as info:
        _answer_text(answer, "QueueArn", "GetQueueAttributes")
    assert info.value.code == 1


def test_a_tool_refuses_a_list_of_queues_as_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``TRIO_SQS_QUEUE=a,b`` is right for ``run`` (several queues); a tool takes one queue, and
    acted on one literally named "a,b" (SQS: invalid name, exit 3)."""
    from trio_sqs._cli import main

    monkeypatch.setenv("TRIO_SQS_QUEUE", "orders,refunds")
    assert main(["stats"]) == 2
    err = capsys.readouterr().err
    assert "TRIO_SQS_QUEUE: expected one queue" in err and "orders,refunds" in err
    monkeypatch.delenv("TRIO_SQS_QUEUE")
    with pytest.raises(SystemExit) as info:
        main(["peek", "--queue", "orders,refunds"])
    assert info.value.code == 2
    assert "expected one queue" in capsys.readouterr().err
