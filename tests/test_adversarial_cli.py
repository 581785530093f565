"""Adversarial tests of issue 13's command line: ``trio-sqs run`` on several queues and
``trio-sqs redrive`` (with the in-memory SQS's message move tasks).

Everything runs in this process through ``trio_sqs._cli.main([...])`` on the in-memory SQS and
``trio.testing.MockClock`` (autojump): ``trio.run`` is wrapped for the test so that the command
runs on virtual time, its client goes over ``FakeSQS.transport()`` (or a test's wrapper of it),
and a ``setup`` coroutine (queues, messages, faults) and a ``during`` coroutine (signals raised
in this process, deletes mid-run) run in the same ``trio.run``. Signals are real
(``signal.raise_signal``) and reach the command's own ``trio.open_signal_receiver``; while no
receiver is installed the fixture's no-op handlers take them, never pytest.

A bug in trio_sqs is a strict xfail whose reason gives the reproduction.
"""

from __future__ import annotations

import io
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message, SQSClient
from trio_sqs._cli import _main as cli_main
from trio_sqs._cli import _tools as cli_tools
from trio_sqs._cli import main
from trio_sqs.testing import FakeSQS, open_fake_client

from .conftest import main_leaves_no_trace

ACCOUNT = "123456789012"
Setup = Callable[[SQSClient], Awaitable[None]]


def arn_of(name: str) -> str:
    return f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"


def url_of(name: str) -> str:
    return f"http://sqs.fake.invalid/{ACCOUNT}/{name}"


# -- running the command in this process on MockClock ---------------------------------------------


@pytest.fixture(autouse=True)
def cli_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``main`` is written for a process of its own: undo its logging setup and heap freeze, start
    from no ``TRIO_SQS_*`` variable, and take stray SIGINT/SIGTERM with no-op handlers."""
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with main_leaves_no_trace(monkeypatch):
            yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Result:
    code: int
    out: str
    err: str
    #: Virtual time at which the command's trio.run ended.
    ended_at: float = 0.0

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("trio-sqs: error: ")]


@dataclass
class Cli:
    """``cli("redrive", "--queue", q, setup=..., during=...)``: ``trio-sqs ...`` in this process
    on MockClock against ``fake``."""

    fake: FakeSQS
    capsys: pytest.CaptureFixture[str]
    #: Wraps the transport of the command's client (a test's own rewriting transport).
    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] = lambda t: t
    handler: Callable[..., Awaitable[Any]] | None = None
    #: Seconds the command's client takes to open.
    open_delay: float = 0.0
    clients: list[dict[str, Any]] = field(default_factory=list)
    #: When the command ended: each queue's (visible, in flight, delayed), and the statuses of
    #: the move tasks of rd-dlq (newest first), as ListMessageMoveTasks shows them.
    held: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)

    async def snapshot(self) -> None:
        if "rd-dlq" in self.fake.queues:
            listed = await self.fake.call(  # not recorded: arrived=True
                "ListMessageMoveTasks", {"SourceArn": arn_of("rd-dlq")}, arrived=True
            )
            self.tasks = [entry["Status"] for entry in listed.get("Results", [])]
        for name, queue in self.fake.queues.items():
            counts = queue.counts()
            self.held[name] = (counts.visible, counts.in_flight, counts.delayed)

    def __call__(
        self, *argv: str, setup: Setup | None = None, during: Setup | None = None
    ) -> Result:
        real_run = trio.run
        fake = self.fake
        ended = [0.0]
        errors: list[Exception] = []

        @asynccontextmanager
        async def fake_open_client(**kwargs: Any) -> AsyncIterator[SQSClient]:
            self.clients.append(dict(kwargs))
            for key in ("region", "endpoint_url", "profile"):
                kwargs.pop(key, None)
            if self.open_delay:
                await trio.sleep(self.open_delay)  # credentials from an instance role, say
            async with trio_sqs.open_client(
                region=fake.region,
                endpoint_url=fake.endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                use_fips=False,
                use_dualstack=False,
                transport=self.wrap(fake.transport()),
                **kwargs,
            ) as client:
                yield client

        def run_on_mock_clock(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            # The command runs as the main task, outside any nursery or context manager of the
            # test (they would wrap or unwrap what it raises); setup and during run in a system
            # task with a client of their own.
            async def wrapper() -> Any:
                ready, closed = trio.Event(), trio.Event()
                scope = trio.CancelScope()

                async def helper() -> None:
                    try:
                        async with open_fake_client(fake) as client:
                            if setup is not None:
                                await setup(client)
                            ready.set()
                            with scope:
                                if during is not None:
                                    await during(client)
                                await trio.sleep_forever()
                    except Exception as exc:  # reported by the test, not as a crash of trio
                        errors.append(exc)
                    finally:
                        ready.set()
                        closed.set()

                trio.lowlevel.spawn_system_task(helper)
                await ready.wait()
                if errors:
                    return None
                try:
                    return await fn(*args)
                finally:
                    ended[0] = trio.current_time()
                    with trio.CancelScope(shield=True):
                        await self.snapshot()
                    scope.cancel()
                    with trio.CancelScope(shield=True):
                        await closed.wait()

            return real_run(wrapper, clock=trio.testing.MockClock(autojump_threshold=0))

        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trio, "run", run_on_mock_clock)
            patch.setattr(cli_main, "open_client", fake_open_client)
            patch.setattr(cli_tools, "open_client", fake_open_client)
            if self.handler is not None:
                handler = self.handler
                patch.setattr(cli_main, "load_handler", lambda path: handler)
            patch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
            try:
                code = main(list(argv))
            except SystemExit as exc:  # a handler's sys.exit(n), as the process would end
                code = exc.code if isinstance(exc.code, int) else -1
        captured = self.capsys.readouterr()
        if errors:
            raise errors[0]
        return Result(code, captured.out, captured.err, ended[0])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(FakeSQS(), capsys)


async def dead_letter(client: SQSClient, source: str, count: int, *, fifo: bool = False) -> None:
    """``source`` and ``source-dlq`` (maxReceiveCount 1), with ``count`` messages dead-lettered
    from ``source``."""
    suffix = ".fifo" if fifo else ""
    extra = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    await client.create_queue(f"{source}-dlq{suffix}", attributes=extra or None)
    policy = json.dumps(
        {"deadLetterTargetArn": arn_of(f"{source}-dlq{suffix}"), "maxReceiveCount": 1}
    )
    url = await client.create_queue(source + suffix, attributes={"RedrivePolicy": policy, **extra})
    for i in range(count):
        await client.send_message(url, f"m{i}", message_group_id="g" if fifo else None)
    for _ in range(count + 1):
        await client.receive_messages(url, max_messages=10, visibility_timeout=0, wait_time=0)


class Rewriting(httpx.AsyncBaseTransport):
    """Wraps the fake's transport: the JSON answer to ``operation`` goes through ``rewrite``
    (the answer as a dict, and how many answers to it were rewritten before) on its way back."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        operation: str,
        rewrite: Callable[[dict[str, Any], int], dict[str, Any]],
    ) -> None:
        self.inner, self.operation, self.rewrite = inner, operation, rewrite
        self.count = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        target = request.headers.get("x-amz-target", "")
        if not target.endswith("." + self.operation) or response.status_code != 200:
            return response
        answer = json.loads(await response.aread())
        answer = self.rewrite(answer, self.count)
        self.count += 1
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(200, headers=headers, content=json.dumps(answer).encode())

    async def aclose(self) -> None:
        await self.inner.aclose()


def rewriting(
    cli: Cli, operation: str, rewrite: Callable[[dict[str, Any], int], dict[str, Any]]
) -> None:
    cli.wrap = lambda inner: Rewriting(inner, operation, rewrite)


class Handler:
    """The handler of ``run``: ``sleep:N`` sleeps N s, ``exit:N`` calls ``sys.exit(N)``; records
    (virtual time, queue name, body) of each message it finished."""

    def __init__(self) -> None:
        self.done: list[tuple[float, str, str]] = []

    async def __call__(self, message: Message) -> None:
        body = message.body
        if body.startswith("sleep:"):
            await trio.sleep(float(body.removeprefix("sleep:")))
        if body.startswith("exit:"):
            sys.exit(int(body.removeprefix("exit:")))
        self.done.append((trio.current_time(), message.queue_url.rpartition("/")[2], body))


def queues(**bodies: list[str]) -> Setup:
    """Create each queue (``name_fifo`` is ``name.fifo``) with these messages."""

    async def setup(client: SQSClient) -> None:
        for key, messages in bodies.items():
            fifo = key.endswith("_fifo")
            name = key.removesuffix("_fifo") + (".fifo" if fifo else "")
            attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
            url = await client.create_queue(name, attributes=attributes if fifo else None)
            for body in messages:
                await client.send_message(url, body, message_group_id="g" if fifo else None)

    return setup


def signal_at(*moments: tuple[float, signal.Signals]) -> Setup:
    async def during(client: SQSClient) -> None:
        start = trio.current_time()
        for at, signum in moments:
            await trio.sleep_until(start + at)
            signal.raise_signal(signum)

    return during


def records(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


# -- run: several queues ----------------------------------------------------------------------


def test_run_a_handlers_sys_exit_on_one_queue_waits_for_the_others_grace(cli: Cli) -> None:
    """rb's handler calls sys.exit(3) at t=1 while ra's handler needs until t=5 (grace 30): ra's
    handler finishes and its message is deleted, then the command exits 3, in one line."""
    cli.handler = handler = Handler()
    setup = queues(ra=["sleep:5"], rb=["sleep:1", "exit:3"])
    result = cli("run", "h:h", "--queue", "ra,rb", "--grace-period", "30", setup=setup)
    assert result.code == 3, result.err
    assert result.ended_at == 5.0
    assert sorted(handler.done) == [(1.0, "rb", "sleep:1"), (5.0, "ra", "sleep:5")]
    assert (
        result.err.splitlines()[-1] == "trio-sqs: a handler called sys.exit(3); stopped gracefully"
    )
    assert "Traceback" not in result.err
    assert cli.held["ra"] == (0, 0, 0)
    # The exit message went back at once: visible for the next consumer or, when a second long
    # poll of rb was already on the wire at the stop (Trio may schedule it before the exiting
    # handler), hidden until that abandoned poll's end, never taken by it.
    rb = cli.fake.queue("rb").url
    polls = [
        c for c in cli.fake.calls if c.operation == "ReceiveMessage" and c.params["QueueUrl"] == rb
    ]
    [release] = [
        c
        for c in cli.fake.calls
        if c.operation == "ChangeMessageVisibilityBatch" and c.params["QueueUrl"] == rb
    ]
    [entry] = release.params["Entries"]
    assert release.time == 0.0
    if len(polls) == 1:
        assert entry["VisibilityTimeout"] == 0 and cli.held["rb"] == (1, 0, 0)
    else:
        assert len(polls) == 2 and [p.time for p in polls] == [0.0, 0.0]
        assert entry["VisibilityTimeout"] >= 20 and cli.held["rb"] == (0, 1, 0)
    assert cli.fake.queue("rb").orphaned_deliveries == 0


def test_run_a_signal_while_one_queue_still_resolves_stops_both_at_once(cli: Cli) -> None:
    cli.handler = handler = Handler()

    async def setup(client: SQSClient) -> None:
        await queues(ra=["a"], rb=["b"])(client)
        cli.fake.faults.delay("GetQueueUrl", 5, match=lambda p: p.get("QueueName") == "rb")

    result = cli(
        "run", "h:h", "--queue", "ra,rb", setup=setup, during=signal_at((1, signal.SIGTERM))
    )
    assert result.code == 0, result.err
    assert result.ended_at == 1.0  # not 5: rb's lookup was cancelled, nothing to drain
    assert handler.done == [(0.0, "ra", "a")]
    assert cli.fake.queue("rb").call_counts["ReceiveMessage"] == 0
    assert cli.held["rb"] == (1, 0, 0)


def test_run_a_signal_before_the_client_opened_exits_0_without_a_request(cli: Cli) -> None:
    """The client takes 10 s to open; SIGINT at t=1 ends the command at once, before any
    request to SQS."""
    cli.handler = handler = Handler()
    cli.open_delay = 10
    before = [0]

    async def setup(client: SQSClient) -> None:
        await queues(ra=["a"], rb=["b"])(client)
        before[0] = len(cli.fake.calls)

    result = cli(
        "run", "h:h", "--queue", "ra,rb", setup=setup, during=signal_at((1, signal.SIGINT))
    )
    assert result.code == 0, result.err
    assert result.ended_at == 1.0
    assert handler.done == []
    assert len(cli.fake.calls) == before[0]  # not one request
    assert "received SIGINT: stopping gracefully" in result.err


def test_run_a_second_sigterm_while_stopping_keeps_the_grace_of_every_queue(cli: Cli) -> None:
    cli.handler = handler = Handler()
    setup = queues(ra=["sleep:5"], rb=["sleep:7"])
    during = signal_at((1, signal.SIGTERM), (2, signal.SIGTERM))
    result = cli(
        "run", "h:h", "--queue", "ra,rb", "--grace-period", "30", setup=setup, during=during
    )
    assert result.code == 0, result.err
    assert result.ended_at == 7.0
    assert sorted(handler.done) == [(5.0, "ra", "sleep:5"), (7.0, "rb", "sleep:7")]
    assert "received SIGTERM again: already stopping" in result.err
    assert cli.held["ra"] == cli.held["rb"] == (0, 0, 0)


def test_run_a_queue_deleted_mid_run_stops_all_with_exit_3_naming_it(cli: Cli) -> None:
    cli.handler = handler = Handler()

    async def during(client: SQSClient) -> None:
        await trio.sleep(3)
        await client.delete_queue(url_of("rb"))

    result = cli(
        "run",
        "h:h",
        "--queue",
        "ra,rb",
        "--wait-time",
        "2",
        setup=queues(ra=["a"], rb=["b"]),
        during=during,
    )
    assert result.code == 3, result.err
    assert result.error_lines()[-1].startswith("trio-sqs: error: queue 'rb' does not exist")
    assert result.ended_at == 3.0  # rb's waiting poll was answered at the delete
    assert sorted(handler.done) == [(0.0, "ra", "a"), (0.0, "rb", "b")]


def test_run_a_fifo_and_a_standard_queue_together(cli: Cli) -> None:
    cli.handler = handler = Handler()
    setup = queues(ra=["a", "b"], rf_fifo=["x", "y", "z"])
    result = cli(
        "run", "h:h", "--queue", "ra,rf.fifo", setup=setup, during=signal_at((3, signal.SIGTERM))
    )
    assert result.code == 0, result.err
    assert sorted(b for _, q, b in handler.done if q == "ra") == ["a", "b"]
    assert [b for _, q, b in handler.done if q == "rf.fifo"] == ["x", "y", "z"]  # in order
    assert cli.held["ra"] == cli.held["rf.fifo"] == (0, 0, 0)


def test_run_on_130_queues_every_message_is_received_the_moment_it_is_sent(cli: Cli) -> None:
    """Past the other-calls budget's cap (8 a queue, at most 1000): the long-poll budget still
    grows with the consumers, so no queue's poll waits behind another's."""
    cli.handler = handler = Handler()
    names = [f"many-{i}" for i in range(130)]

    async def setup(client: SQSClient) -> None:
        for name in names:
            await client.create_queue(name)

    async def during(client: SQSClient) -> None:
        await trio.sleep(25)  # every consumer is in its second long poll
        for name in names:
            await client.send_message(url_of(name), "x")
        await trio.sleep(5)
        signal.raise_signal(signal.SIGTERM)

    result = cli("run", "h:h", "--queue", ",".join(names), setup=setup, during=during)
    assert result.code == 0, result.err[-2000:]
    assert sorted(q for _, q, _ in handler.done) == sorted(names)
    assert {t for t, _, _ in handler.done} == {25.0}
    (opened,) = cli.clients
    assert opened["limits"] == trio_sqs.Limits(max_other_connections=1000)


def test_run_the_same_queue_by_name_and_by_url_is_refused(cli: Cli) -> None:
    """Two consumers on one queue would share one metrics label and double the concurrency."""
    cli.handler = handler = Handler()
    result = cli(
        "run",
        "h:h",
        "--queue",
        "ra",
        "--queue",
        url_of("ra"),
        setup=queues(ra=["a"]),
        during=signal_at((1, signal.SIGTERM)),
    )
    assert result.code == 2, result.err
    assert result.error_lines() == ["trio-sqs: error: --queue ra is given more than once"]
    assert handler.done == []


def test_run_every_stopping_record_names_its_queue(cli: Cli) -> None:
    cli.handler = Handler()
    result = cli(
        "run",
        "h:h",
        "--queue",
        "ra,rb",
        "--log-format",
        "json",
        setup=queues(ra=[], rb=[]),
        during=signal_at((1, signal.SIGTERM)),
    )
    assert result.code == 0, result.err
    stopping = [r for r in records(result.err) if str(r["message"]).startswith("stopping")]
    assert len(stopping) == 2
    assert sorted(str(r.get("queue")) for r in stopping) == ["ra", "rb"]


# -- redrive: the command against hostile answers and signals -----------------------------------


async def five_dead_lettered(client: SQSClient) -> None:
    await dead_letter(client, "rd", 5)


async def start_task(client: SQSClient, rate: int = 1) -> None:
    await client.call(
        "StartMessageMoveTask",
        {"SourceArn": arn_of("rd-dlq"), "MaxNumberOfMessagesPerSecond": rate},
    )


def test_redrive_a_start_whose_answer_was_lost_follows_its_own_task(cli: Cli) -> None:
    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        cli.fake.faults.drop("StartMessageMoveTask", after=True)

    result = cli("redrive", "--queue", "rd-dlq", "--rate", "1", setup=setup)
    assert cli.tasks == ["COMPLETED"]
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("done: moved 5 of 5 messages")
    assert cli.held["rd"] == (5, 0, 0)


def test_redrive_cancel_whose_answer_was_lost_reports_the_cancel(cli: Cli) -> None:
    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        await start_task(client)
        cli.fake.faults.drop("CancelMessageMoveTask", after=True)

    result = cli("redrive", "--queue", "rd-dlq", "--cancel", setup=setup)
    assert cli.tasks == ["CANCELLED"]
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == "cancelled: 0 of 5 messages had moved"


def test_redrive_a_second_sigint_while_the_start_is_stalled_exits_at_once(cli: Cli) -> None:
    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        cli.fake.faults.stall("StartMessageMoveTask", times=10)

    during = signal_at((1, signal.SIGINT), (2, signal.SIGINT))
    result = cli("redrive", "--queue", "rd-dlq", setup=setup, during=during)
    assert result.ended_at == 2.0
    assert result.code == 130, result.err
    assert "--cancel" in result.err


@pytest.mark.parametrize("fails_at", [0.0, 2.5], ids=["right-after-start", "mid-watch"])
def test_redrive_an_error_after_the_start_says_the_task_goes_on(cli: Cli, fails_at: float) -> None:
    async def during(client: SQSClient) -> None:
        await trio.sleep(fails_at)
        cli.fake.faults.fail("ListMessageMoveTasks", times=10)

    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)

    def arm_on_start(answer: dict[str, Any], n: int) -> dict[str, Any]:
        # Every ListMessageMoveTasks fails from the moment the start's answer is on its way.
        cli.fake.faults.fail("ListMessageMoveTasks", times=10)
        return answer

    if fails_at == 0.0:
        rewriting(cli, "StartMessageMoveTask", arm_on_start)

    result = cli(
        "redrive",
        "--queue",
        "rd-dlq",
        "--rate",
        "1",
        setup=setup,
        during=during if fails_at else None,
    )
    assert result.code == 1
    assert cli.tasks == ["RUNNING"]
    assert "trio-sqs redrive --queue rd-dlq --cancel" in result.err, result.err


@pytest.mark.parametrize("empty_from", [0, 2])
def test_redrive_a_task_that_vanishes_from_the_list_is_exit_1(cli: Cli, empty_from: int) -> None:
    rewriting(cli, "ListMessageMoveTasks", lambda answer, n: answer if n < empty_from else {})
    result = cli("redrive", "--queue", "rd-dlq", "--rate", "1", setup=five_dead_lettered)
    assert result.error_lines() == [
        "trio-sqs: error: the move task on rd-dlq is no longer listed by SQS (if it still runs, "
        "to cancel it: trio-sqs redrive --queue rd-dlq --cancel)"
    ]
    assert result.code == 1


def test_redrive_the_dlq_deleted_mid_watch_is_exit_3(cli: Cli) -> None:
    async def during(client: SQSClient) -> None:
        await trio.sleep(2.5)
        await client.delete_queue(url_of("rd-dlq"))

    result = cli(
        "redrive", "--queue", "rd-dlq", "--rate", "1", setup=five_dead_lettered, during=during
    )
    (line,) = result.error_lines()
    assert result.code == 3, line
    assert "rd-dlq" in line and "ServiceError" not in line


def test_redrive_cancel_answer_without_a_count(cli: Cli) -> None:
    rewriting(cli, "CancelMessageMoveTask", lambda answer, n: {})

    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        await start_task(client)

    result = cli("redrive", "--queue", "rd-dlq", "--cancel", setup=setup)
    assert result.code == 0, result.err
    assert "None" not in result.out.splitlines()[0], result.out


@pytest.mark.parametrize("blank", ["", " "])
def test_tools_refuse_a_blank_queue_as_usage(cli: Cli, blank: str) -> None:
    result = cli("stats", "--queue", blank)
    assert result.code == 2, result.err
    assert cli.fake.calls == []


def test_redrive_cancel_when_the_task_ends_between_list_and_cancel(cli: Cli) -> None:
    """The list's answer (delayed 10 s) shows the task RUNNING; it completed at t=5, before the
    cancel: refused (exit 5), saying it may have just ended; the task stays COMPLETED."""

    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        await start_task(client)
        cli.fake.faults.delay("ListMessageMoveTasks", 10)

    result = cli("redrive", "--queue", "rd-dlq", "--cancel", setup=setup)
    assert result.code == 5
    assert result.error_lines() == [
        "trio-sqs: error: SQS refused to cancel the move task on rd-dlq (it may have just "
        "ended): ResourceNotFoundException: Task does not exist."
    ]
    assert result.ended_at == 10.0
    assert cli.tasks == ["COMPLETED"]
    assert cli.held["rd"] == (5, 0, 0)


@pytest.mark.parametrize(
    ("signum", "at", "ended_at", "note", "tasks"),
    [
        # GetQueueUrl answers at t=1: nothing started.
        (signal.SIGINT, 0.5, 0.5, "interrupted; no move task was started or cancelled", 0),
        # StartMessageMoveTask is on the wire from t=1 to t=2: finished, then reported.
        (
            signal.SIGTERM,
            1.5,
            2.0,
            "stopped watching; the move task goes on in SQS. To cancel "
            "it: trio-sqs redrive --queue rd-dlq --cancel",
            1,
        ),
        (
            signal.SIGINT,
            3.5,
            3.5,
            "stopped watching; the move task goes on in SQS. To cancel "
            "it: trio-sqs redrive --queue rd-dlq --cancel",
            1,
        ),
    ],
    ids=["before-start", "start-on-the-wire", "watching"],
)
def test_redrive_a_signal_at_each_step(
    cli: Cli, signum: signal.Signals, at: float, ended_at: float, note: str, tasks: int
) -> None:
    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        cli.fake.faults.delay("GetQueueUrl", 1)
        cli.fake.faults.delay("StartMessageMoveTask", 1)

    result = cli(
        "redrive", "--queue", "rd-dlq", "--rate", "1", setup=setup, during=signal_at((at, signum))
    )
    assert result.code == 130
    assert result.ended_at == ended_at
    assert result.err == f"trio-sqs: {note}\n"
    assert cli.tasks == ["RUNNING"] * tasks  # stopping watching is not cancelling


def test_redrive_a_signal_while_the_cancel_is_on_the_wire(cli: Cli) -> None:
    async def setup(client: SQSClient) -> None:
        await five_dead_lettered(client)
        await start_task(client)
        cli.fake.faults.delay("CancelMessageMoveTask", 1)

    result = cli(
        "redrive",
        "--queue",
        "rd-dlq",
        "--cancel",
        setup=setup,
        during=signal_at((0.5, signal.SIGINT)),
    )
    assert (result.code, result.ended_at) == (130, 1.0)
    assert result.out == "cancelling the move task on rd-dlq (0 messages moved so far)\n"
    assert result.err == "trio-sqs: stopped watching; the move task is cancelled and stops in SQS\n"
    assert cli.tasks == ["CANCELLED"]  # at t=1, when its next move was due


def test_redrive_a_task_that_never_ends_is_watched_until_ctrl_c(cli: Cli) -> None:
    """A server whose entries carry no Status: never final, so the progress goes on (every
    --interval) until Ctrl-C, which still stops it with the note."""
    rewriting(
        cli,
        "ListMessageMoveTasks",
        lambda answer, n: {
            "Results": [
                {k: v for k, v in e.items() if k != "Status"} for e in answer.get("Results", [])
            ]
        },
    )
    result = cli(
        "redrive",
        "--queue",
        "rd-dlq",
        "--rate",
        "1",
        "--interval",
        "10",
        setup=five_dead_lettered,
        during=signal_at((95, signal.SIGINT)),
    )
    assert (result.code, result.ended_at) == (130, 95.0)
    lines = result.out.splitlines()
    assert len(lines) == 1 + 10  # the start, then t=0, 10, ..., 90
    assert all(line.startswith("rd-dlq: ? ") for line in lines[1:])
    assert "To cancel it: trio-sqs redrive --queue rd-dlq --cancel" in result.err


def test_redrive_a_purge_during_the_task_completes_it_early(cli: Cli) -> None:
    async def during(client: SQSClient) -> None:
        await trio.sleep(2.5)
        await client.purge_queue(url_of("rd-dlq"))

    result = cli(
        "redrive", "--queue", "rd-dlq", "--rate", "1", setup=five_dead_lettered, during=during
    )
    assert result.code == 0, result.err
    assert result.ended_at == 3.0
    assert result.out.splitlines()[-1] == (
        "done: moved 2 of 5 messages from rd-dlq to the queues they came from"
    )
    assert cli.held["rd"] == (2, 0, 0)
    assert cli.held["rd-dlq"] == (0, 0, 0)


def test_redrive_the_source_deleted_mid_task_fails_with_the_hint(cli: Cli) -> None:
    async def during(client: SQSClient) -> None:
        await trio.sleep(2.5)
        await client.delete_queue(url_of("rd"))

    result = cli(
        "redrive", "--queue", "rd-dlq", "--rate", "1", setup=five_dead_lettered, during=during
    )
    assert result.code == 1
    assert result.error_lines() == [
        "trio-sqs: error: the move task on rd-dlq failed: AWS.SimpleQueueService.NonExistentQueue "
        "after moving 2 of 5 messages (the dead-letter queue or a destination queue no longer "
        "exists)"
    ]
    assert cli.held["rd-dlq"] == (3, 0, 0)  # the rest stay


@pytest.mark.parametrize(
    ("to", "code", "line"),
    [
        (
            "rd-dlq",
            5,
            "SQS refused the move task: Source queue arn and destination queue arn "
            "cannot be the same.",
        ),
        (
            url_of("rd-dlq"),
            5,
            "SQS refused the move task: Source queue arn and destination "
            "queue arn cannot be the same.",
        ),
        (url_of("nowhere"), 3, f"queue '{url_of('nowhere')}' (--to) does not exist"),
    ],
    ids=["dlq-by-name", "dlq-by-url", "missing-url"],
)
def test_redrive_to_the_dlq_itself_or_a_missing_url(
    cli: Cli, to: str, code: int, line: str
) -> None:
    result = cli("redrive", "--queue", "rd-dlq", "--to", to, setup=five_dead_lettered)
    assert result.code == code
    assert result.error_lines() == [f"trio-sqs: error: {line}"]
    assert cli.tasks == []
    assert cli.held["rd-dlq"] == (5, 0, 0)


def test_redrive_on_mock_clock_is_deterministic(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same redrive on two fresh in-memory SQSs: the same output, and every request at the
    same virtual time."""
    runs = []
    for _ in range(2):
        cli = Cli(FakeSQS(), capsys)
        result = cli(
            "redrive",
            "--queue",
            "rd-dlq",
            "--rate",
            "3",
            "--interval",
            "0.5",
            "--json",
            setup=five_dead_lettered,
        )
        assert result.code == 0, result.err
        calls = [(c.time, c.operation) for c in cli.fake.calls]
        out = [
            {k: v for k, v in r.items() if k != "task_handle"}
            for r in map(json.loads, result.out.splitlines())
        ]
        runs.append((out, calls, result.ended_at))
    assert runs[0] == runs[1]
    out, calls, ended_at = runs[0]
    assert ended_at == 2.0  # 5 moves at 3/s: the 5th at 5/3 s, seen at the refresh of t=2
    assert [r["moved"] for r in out] == [0, 1, 3, 4, 5]
    lists = [t for t, op in calls if op == "ListMessageMoveTasks"]
    assert lists[-5:] == [0.0, 0.5, 1.0, 1.5, 2.0]


# -- the in-memory SQS's move tasks ---------------------------------------------------------------


async def test_fake_a_poll_on_a_source_without_its_policy_wakes_on_the_move(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: SQSClient
) -> None:
    client = fake_sqs_client
    await dead_letter(client, "pa", 1)
    policy = json.dumps({"deadLetterTargetArn": arn_of("pa-dlq"), "maxReceiveCount": 1})
    await client.create_queue("pb", attributes={"RedrivePolicy": policy})
    await client.call(
        "SetQueueAttributes", {"QueueUrl": url_of("pa"), "Attributes": {"RedrivePolicy": ""}}
    )
    start = trio.current_time()
    await client.call(
        "StartMessageMoveTask", {"SourceArn": arn_of("pa-dlq"), "MaxNumberOfMessagesPerSecond": 1}
    )
    result = await client.receive_messages(url_of("pa"), wait_time=20)
    assert [m.body for m in result.messages] == ["m0"]
    assert trio.current_time() - start == 1.0


async def test_fake_a_fifo_destination_keeps_the_group_order_for_a_waiting_poll(
    autojump_clock: Any, fake_sqs: FakeSQS, fake_sqs_client: SQSClient
) -> None:
    """--to a FIFO queue: a long poll waiting on it gets the first message when it moves (t=1);
    the second (moved at t=2) waits behind it in its group until the first is deleted."""
    client = fake_sqs_client
    await dead_letter(client, "pf", 2, fifo=True)
    await client.create_queue(
        "pg.fifo", attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )
    start = trio.current_time()
    await client.call(
        "StartMessageMoveTask",
        {
            "SourceArn": arn_of("pf-dlq.fifo"),
            "DestinationArn": arn_of("pg.fifo"),
            "MaxNumberOfMessagesPerSecond": 1,
        },
    )
    first = await client.receive_messages(url_of("pg.fifo"), wait_time=20)
    assert [(m.body, m.message_group_id) for m in first.messages] == [("m0", "g")]
    assert trio.current_time() - start == 1.0
    blocked = await client.receive_messages(url_of("pg.fifo"), wait_time=5)
    assert list(blocked.messages) == []  # m1 moved at t=2, behind m0 in flight
    await client.delete_message(url_of("pg.fifo"), first.messages[0].receipt_handle)
    second = await client.receive_messages(url_of("pg.fifo"), wait_time=0)
    assert [m.body for m in second.messages] == ["m1"]
