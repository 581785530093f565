"""Handler middleware (``open_consumer(..., middleware=[...])``): order, every outcome, exceptions
in middleware, and the checks made before any I/O. On ``FakeSQS`` and ``MockClock``; what the
consumer did with each message is read from its statistics and the fake's calls."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import ConfigurationError, Invocation, Message, Retry, open_consumer, run_consumer
from trio_sqs.testing import FakeSQS

CallNext = Callable[[], Awaitable[None]]


class Recorder:
    """The outermost middleware of every test: records what each layer saw, and sets ``done``
    once an invocation has ended (its outcome is then final)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.invocations: list[Invocation] = []
        self.done = trio.Event()

    async def __call__(self, invocation: Invocation, call_next: CallNext) -> None:
        self.events.append("outer in")
        try:
            await call_next()
        finally:
            self.events.append(f"outer out {invocation.outcome}")
            self.invocations.append(invocation)
            self.done.set()


async def consume_one(
    client: trio_sqs.SQSClient,
    queue_url: str,
    handler: Callable[..., Awaitable[Any]],
    middleware: list[Any],
    *,
    stop_after: float | None = None,
    body: str = "m",
    **options: Any,
) -> tuple[Recorder, trio_sqs.ConsumerStatistics]:
    """Send one message, consume it through ``[Recorder(), *middleware]`` until its invocation
    ended (or, with ``stop_after``, stop that long after it started), and stop."""
    await client.send_message(queue_url, body)
    recorder = Recorder()
    async with open_consumer(
        queue_url, handler, client=client, middleware=[recorder, *middleware], **options
    ) as consumer:
        if stop_after is not None:
            await trio.sleep(stop_after)
            consumer.stop()
        await recorder.done.wait()
    return recorder, consumer.statistics()


def deleted_ids(fake: FakeSQS) -> list[str]:
    return [
        entry["Id"]
        for call in fake.calls
        if call.operation == "DeleteMessageBatch"
        for entry in call.params["Entries"]
    ]


# -- order ----------------------------------------------------------------------------------------


async def test_middleware_wraps_the_handler_outermost_first_in_the_handler_s_task(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    events: list[str] = []
    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="")

    async def second(invocation: Invocation, call_next: CallNext) -> None:
        events.append(f"second in {invocation.message.body} {invocation.outcome}")
        tag.set("set by second")
        await call_next()
        events.append(f"second out {invocation.outcome}")

    @asynccontextmanager
    async def third(invocation: Invocation) -> AsyncIterator[None]:
        events.append("third in")
        yield
        events.append(f"third out {invocation.outcome}")

    async def handler(message: Message) -> None:
        events.append(f"handler {tag.get()}")

    recorder, stats = await consume_one(
        fake_sqs_client, fake_queue_url, handler, [second, third], body="hello"
    )
    assert events == [
        "second in hello None",
        "third in",
        "handler set by second",
        "third out ok",
        "second out ok",
    ]
    assert recorder.events == ["outer in", "outer out ok"]
    (invocation,) = recorder.invocations
    assert invocation.batch is False and invocation.queue_url == fake_queue_url
    assert [m.body for m in invocation.messages] == ["hello"]
    assert invocation.error is None and invocation.failed == frozenset()
    assert (stats.completed, stats.deleted, stats.failed) == (1, 1, 0)


# -- outcomes -------------------------------------------------------------------------------------


async def test_outcome_ok_failed_and_retry(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    boom = ValueError("boom")

    async def failing(message: Message) -> None:
        raise boom

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, failing, [])
    (invocation,) = recorder.invocations
    assert (invocation.outcome, invocation.error) == ("failed", boom)
    assert invocation.failed == {invocation.message.message_id}
    assert (stats.failed, stats.released, stats.deleted) == (1, 1, 0)

    async def retrying(message: Message) -> None:
        raise Retry(7)

    url = await fake_sqs_client.create_queue("retrying")
    recorder, stats = await consume_one(fake_sqs_client, url, retrying, [])
    (invocation,) = recorder.invocations
    assert invocation.outcome == "retry" and isinstance(invocation.error, Retry)
    assert (stats.retried, stats.released, stats.deleted) == (1, 1, 0)


async def test_outcome_timed_out(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def slow(message: Message) -> None:
        await trio.sleep(60)

    start = trio.current_time()
    recorder, stats = await consume_one(
        fake_sqs_client, fake_queue_url, slow, [], handler_timeout=2
    )
    (invocation,) = recorder.invocations
    assert invocation.outcome == "timed_out"
    assert isinstance(invocation.error, trio.Cancelled)
    assert invocation.started_at == start
    assert (stats.timed_out, stats.released, stats.deleted) == (1, 1, 0)


async def test_outcome_timed_out_when_the_handler_swallows_its_cancellation(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def stubborn(message: Message) -> None:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            return  # returns as if done: it was not

    recorder, stats = await consume_one(
        fake_sqs_client, fake_queue_url, stubborn, [], handler_timeout=2
    )
    assert recorder.events == ["outer in", "outer out timed_out"]
    assert (stats.timed_out, stats.completed, stats.deleted) == (1, 0, 0)


async def test_outcome_cancelled_at_the_end_of_grace(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def slow(message: Message) -> None:
        await trio.sleep(60)

    recorder, stats = await consume_one(
        fake_sqs_client, fake_queue_url, slow, [], stop_after=1, grace_period=3
    )
    (invocation,) = recorder.invocations
    assert invocation.outcome == "cancelled"
    assert trio.current_time() >= invocation.started_at + 1 + 3
    assert (stats.cancelled_at_grace, stats.released, stats.deleted) == (1, 1, 0)


async def test_batch_outcomes_partial_failure(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    for body in ("a", "bad", "c"):
        await fake_sqs_client.send_message(fake_queue_url, body)
    recorder = Recorder()

    async def handler(messages: list[Message]) -> list[Message]:
        return [m for m in messages if m.body == "bad"]

    async with open_consumer(
        fake_queue_url, handler, batch=True, client=fake_sqs_client, middleware=[recorder]
    ) as consumer:
        await recorder.done.wait()
    (invocation,) = recorder.invocations
    assert invocation.batch and sorted(m.body for m in invocation.messages) == ["a", "bad", "c"]
    bad = next(m.message_id for m in invocation.messages if m.body == "bad")
    assert (invocation.outcome, invocation.failed, invocation.error) == ("failed", {bad}, None)
    stats = consumer.statistics()
    assert (stats.completed, stats.failed, stats.deleted) == (2, 1, 2)
    assert bad not in [m for m in deleted_ids(fake_sqs)]


# -- exceptions in middleware ---------------------------------------------------------------------


async def test_a_middleware_raising_before_the_handler_fails_the_message(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    called = []
    oops = RuntimeError("middleware broke")

    async def broken(invocation: Invocation, call_next: CallNext) -> None:
        raise oops

    async def handler(message: Message) -> None:
        called.append(message)

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, handler, [broken])
    assert called == []
    assert recorder.events == ["outer in", "outer out failed"]
    assert recorder.invocations[0].error is oops
    assert (stats.failed, stats.released, stats.deleted, stats.completed) == (1, 1, 0, 0)


async def test_a_middleware_raising_after_the_handler_fails_the_message(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    @asynccontextmanager
    async def broken_on_exit(invocation: Invocation) -> AsyncIterator[None]:
        yield
        assert invocation.outcome == "ok"  # the handler's own outcome, seen on the way out
        raise RuntimeError("after")

    async def handler(message: Message) -> None:
        pass

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, handler, [broken_on_exit])
    assert recorder.events == ["outer in", "outer out failed"]
    assert (stats.failed, stats.deleted, stats.completed) == (1, 0, 0)


async def test_a_middleware_raising_retry_retries(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def later(invocation: Invocation, call_next: CallNext) -> None:
        raise Retry(30)

    async def handler(message: Message) -> None:
        raise AssertionError("not called")

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, handler, [later])
    assert recorder.events == ["outer in", "outer out retry"]
    assert (stats.retried, stats.released, stats.deleted) == (1, 1, 0)


async def test_a_middleware_that_swallows_the_error_makes_it_handled(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    seen: list[tuple[str | None, BaseException | None]] = []

    async def forgiving(invocation: Invocation, call_next: CallNext) -> None:
        try:
            await call_next()
        except ValueError:
            seen.append((invocation.outcome, invocation.error))

    async def handler(message: Message) -> None:
        raise ValueError("poison")

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, handler, [forgiving])
    ((outcome, error),) = seen
    assert outcome == "failed" and isinstance(error, ValueError)
    # The layer above sees what the swallowing one decided: handled, deleted.
    assert recorder.events == ["outer in", "outer out ok"]
    assert recorder.invocations[0].error is None
    assert (stats.completed, stats.deleted, stats.failed) == (1, 1, 0)
    assert len(deleted_ids(fake_sqs)) == 1


async def test_a_middleware_that_does_not_call_the_handler_completes_the_message(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def skip(invocation: Invocation, call_next: CallNext) -> None:
        pass

    async def handler(message: Message) -> None:
        raise AssertionError("not called")

    recorder, stats = await consume_one(fake_sqs_client, fake_queue_url, handler, [skip])
    assert recorder.events == ["outer in", "outer out ok"]
    assert (stats.completed, stats.deleted) == (1, 1)


async def test_system_exit_in_a_middleware_stops_the_consumer_like_one_in_a_handler(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def leave(invocation: Invocation, call_next: CallNext) -> None:
        raise SystemExit(3)

    async def handler(message: Message) -> None:
        raise AssertionError("not called")

    await fake_sqs_client.send_message(fake_queue_url, "m")
    with pytest.raises(SystemExit) as info:
        async with open_consumer(
            fake_queue_url, handler, client=fake_sqs_client, middleware=[leave]
        ) as consumer:
            await consumer.wait_stopped()
    assert info.value.code == 3
    stats = consumer.statistics()
    assert (stats.released, stats.deleted, stats.state) == (1, 0, "stopped")


# -- checks before any I/O ------------------------------------------------------------------------


async def _two(invocation: Invocation, call_next: CallNext) -> None:
    await call_next()


async def _three(invocation: Invocation, call_next: CallNext, extra: int) -> None:
    await call_next()


def _sync_two(invocation: Invocation, call_next: CallNext) -> None:
    pass


@pytest.mark.parametrize(
    ("middleware", "message"),
    [
        ("not a list", "middleware must be a list of middleware"),
        (_two, "middleware must be a list of middleware"),
        ([42], r"middleware\[0\] must be an async function"),
        ([_two, _three], r"middleware\[1\] .*_three.* must take \(invocation, call_next\)"),
        (
            [_sync_two],
            r"middleware\[0\] .*_sync_two.* must be an async function \(invocation, call_next\) "
            r"or take \(invocation\) and return an async context manager",
        ),
    ],
)
async def test_bad_middleware_is_refused_before_any_io(
    middleware: object, message: str, fake_sqs: FakeSQS
) -> None:
    async def handler(message: Message) -> None:
        pass

    with pytest.raises(ConfigurationError, match=message):
        open_consumer("q", handler, middleware=middleware)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        await run_consumer("q", handler, middleware=middleware)  # type: ignore[arg-type]
    assert fake_sqs.calls == []


async def test_a_middleware_cannot_turn_a_time_out_into_a_success(
    autojump_clock: trio.testing.MockClock,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    async def swallow_cancel(invocation: Invocation, call_next: CallNext) -> None:
        try:
            await call_next()
        except trio.Cancelled:
            return

    async def slow(message: Message) -> None:
        await trio.sleep(60)

    recorder, stats = await consume_one(
        fake_sqs_client, fake_queue_url, slow, [swallow_cancel], handler_timeout=2
    )
    assert recorder.events == ["outer in", "outer out timed_out"]
    assert (stats.timed_out, stats.completed, stats.deleted) == (1, 0, 0)
