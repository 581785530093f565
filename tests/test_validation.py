"""Bad input is refused when a consumer is built, before any I/O (issue 11, item 7): the handler
must be an async callable taking one positional argument, annotated (if at all) for the mode it
is used in; the queue a non-empty string. open_consumer and run_consumer have typed overloads so
mypy sees a batch/single mix-up. The consumer draws its backoff jitter from its own seedable
``random.Random``, never the global one."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.lowlevel

import trio_sqs
from trio_sqs import ConfigurationError, Consumer, ConsumerOptions, Message
from trio_sqs.testing import FakeSQS, open_fake_client

# -- handlers of every kind ----------------------------------------------------------------------

CALLED: list[object] = []


def sync_handler(message):  # type: ignore[no-untyped-def]
    CALLED.append(message)


def sync_returning_coroutine(message):  # type: ignore[no-untyped-def]
    CALLED.append(message)
    return trio.lowlevel.checkpoint()  # noqa: ASYNC105 - the point: a sync def returning one


class SyncCall:
    def __call__(self, message: Message) -> None:
        CALLED.append(message)


class AsyncCall:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, message: Message) -> None:
        self.seen.append(message.body)


class BatchCall:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, messages: list[Message]) -> None:
        self.seen.extend(m.body for m in messages)


async def no_arguments() -> None:
    CALLED.append("no_arguments")


async def two_arguments(message: Message, context: object) -> None:
    CALLED.append(message)


async def required_keyword(message: Message, *, context: object) -> None:
    CALLED.append(message)


async def takes_list(messages: list[Message]) -> None:
    CALLED.extend(messages)


async def takes_sequence(messages: Sequence[Message]) -> None:
    CALLED.extend(messages)


async def takes_message(message: Message) -> None:
    CALLED.append(message)


async def unresolvable_list(messages):  # type: ignore[no-untyped-def]
    CALLED.extend(messages)


# A string annotation naming what only a type checker imports: judged by its text.
unresolvable_list.__annotations__ = {"messages": "list[NotImportedHere]"}


@pytest.fixture(autouse=True)
def _clear_called() -> None:
    CALLED.clear()


NOT_ASYNC = [
    pytest.param(sync_handler, "function sync_handler", id="sync-def"),
    pytest.param(lambda message: None, "<lambda>", id="lambda"),
    pytest.param(sync_returning_coroutine, "sync_returning_coroutine", id="sync-returns-awaitable"),
    pytest.param(SyncCall(), "SyncCall object", id="instance-with-sync-call"),
    pytest.param(AsyncCall, "the class AsyncCall", id="class-not-instance"),
    pytest.param(functools.partial(sync_handler), "functools.partial", id="partial-of-sync"),
    pytest.param(None, "None", id="None"),
    pytest.param("handler", "'handler'", id="a-string"),
]
BAD_SIGNATURE = [
    pytest.param(no_arguments, id="no-arguments"),
    pytest.param(two_arguments, id="two-arguments"),
    pytest.param(required_keyword, id="required-keyword-only"),
    pytest.param(functools.partial(takes_message, None), id="partial-uses-up-the-argument"),
]
BAD_QUEUES = [
    pytest.param(None, id="None"),
    pytest.param(123, id="int"),
    pytest.param(b"q", id="bytes"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
]


async def _refused(
    fake: FakeSQS, queue: object, handler: object, *, how: str, **kwargs: Any
) -> ConfigurationError:
    """Build a consumer of a queue holding one message, ``how`` (open_consumer, run_consumer, or
    Consumer(...)); the build must be refused before any request and before the handler runs."""
    async with open_fake_client(fake) as client:
        url = await client.create_queue(f"validation-{how}-{len(fake.calls)}")
        await client.send_message(url, "hello")
        target: Any = url if queue is ... else queue
        calls = len(fake.calls)
        with pytest.raises(ConfigurationError) as info:
            if how == "open_consumer":
                async with trio_sqs.open_consumer(target, handler, client=client, **kwargs):  # type: ignore[call-overload]
                    await trio.sleep(60)
            elif how == "run_consumer":
                refusal: ConfigurationError | None = None
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(
                            functools.partial(
                                trio_sqs.run_consumer,  # type: ignore[arg-type]
                                target,
                                handler,
                                client=client,
                                **kwargs,
                            )
                        )
                    except ConfigurationError as exc:  # raised by start(), before the nursery
                        refusal = exc
                    else:
                        await trio.sleep(60)
                        nursery.cancel_scope.cancel()
                if refusal is not None:
                    raise refusal
            else:
                batch = kwargs.pop("batch", False)
                options = ConsumerOptions(**kwargs)
                Consumer(client, target, handler, options, batch=batch, fifo=False)
        assert len(fake.calls) == calls, "a request was sent before the refusal"
        assert CALLED == [], "the handler ran"
        assert fake.queue(url).counts().visible == 1
    assert info.value.code == "InvalidOption"
    return info.value


HOW = ["open_consumer", "run_consumer", "Consumer"]


# -- the handler must be an async callable -------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("handler", "named"), NOT_ASYNC)
async def test_a_handler_that_is_not_an_async_callable_is_refused_before_any_io(
    autojump_clock: object, fake_sqs: FakeSQS, handler: object, named: str, how: str
) -> None:
    error = await _refused(fake_sqs, ..., handler, how=how)
    text = error.message
    assert text.startswith("handler must be an async callable (async def handler(message))")
    assert named in text


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("handler", BAD_SIGNATURE)
async def test_a_handler_that_cannot_take_one_positional_argument_is_refused(
    autojump_clock: object, fake_sqs: FakeSQS, handler: object, how: str
) -> None:
    error = await _refused(fake_sqs, ..., handler, how=how)
    assert "handler must take exactly one positional argument" in error.message
    assert "has the signature (" in error.message


@pytest.mark.parametrize("how", HOW)
async def test_a_sync_batch_handler_is_refused_too(
    autojump_clock: object, fake_sqs: FakeSQS, how: str
) -> None:
    error = await _refused(fake_sqs, ..., sync_handler, how=how, batch=True)
    assert "handler must be an async callable (async def handler(messages: list[Message]))" in str(
        error
    )


# -- every kind of async callable is accepted ----------------------------------------------------


async def _consume_one(fake: FakeSQS, handler: Any, *, batch: bool = False) -> None:
    """Run ``handler`` on one message; it must be acknowledged (deleted)."""
    async with open_fake_client(fake) as client:
        url = await client.create_queue(f"accepted-{len(fake.calls)}")
        await client.send_message(url, "hello")
        async with trio_sqs.open_consumer(url, handler, client=client, batch=batch) as consumer:
            await trio.sleep(1)
        assert consumer.statistics().deleted == 1
        counts = fake.queue(url).counts()
        assert (counts.visible, counts.in_flight, counts.delayed) == (0, 0, 0)


class Worker:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, message: Message) -> None:
        self.seen.append(message.body)


async def test_async_callables_of_every_kind_are_accepted(
    autojump_clock: object, fake_sqs: FakeSQS
) -> None:
    seen: list[str] = []

    async def with_context(context: list[str], message: Message) -> None:
        context.append(message.body)

    async def with_default(message: Message, extra: int = 0) -> None:
        seen.append(message.body)

    async def star_args(*args: Message) -> None:
        seen.append(args[0].body)

    async def untyped(message):  # type: ignore[no-untyped-def]
        seen.append(message.body)

    await _consume_one(fake_sqs, functools.partial(with_context, seen))
    await _consume_one(fake_sqs, with_default)
    await _consume_one(fake_sqs, star_args)
    await _consume_one(fake_sqs, untyped)
    assert seen == ["hello"] * 4
    call = AsyncCall()
    await _consume_one(fake_sqs, call)
    await _consume_one(fake_sqs, functools.partial(call))
    assert call.seen == ["hello"] * 2
    worker = Worker()
    await _consume_one(fake_sqs, worker.handle)
    assert worker.seen == ["hello"]
    batch = BatchCall()
    await _consume_one(fake_sqs, batch, batch=True)
    await _consume_one(fake_sqs, takes_list, batch=True)
    await _consume_one(fake_sqs, unresolvable_list, batch=True)
    assert batch.seen == ["hello"]
    assert [m.body for m in CALLED if isinstance(m, Message)] == ["hello"] * 2


# -- a handler annotated for the other mode ------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(
    ("handler", "annotated"),
    [
        pytest.param(takes_list, "list[Message]", id="list"),
        pytest.param(takes_sequence, "Sequence[Message]", id="Sequence"),
        pytest.param(BatchCall(), "list[Message]", id="async-call-object"),
        pytest.param(unresolvable_list, "list[NotImportedHere]", id="unresolvable-string"),
    ],
)
async def test_a_batch_handler_without_batch_true_is_refused(
    autojump_clock: object, fake_sqs: FakeSQS, handler: object, annotated: str, how: str
) -> None:
    error = await _refused(fake_sqs, ..., handler, how=how)
    assert f"takes a list of messages (its argument is annotated {annotated})" in error.message
    assert "pass batch=True" in error.message


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(takes_message, id="function"),
        pytest.param(AsyncCall(), id="async-call-object"),
        pytest.param(Worker().handle, id="method"),
    ],
)
async def test_a_single_message_handler_with_batch_true_is_refused(
    autojump_clock: object, fake_sqs: FakeSQS, handler: object, how: str
) -> None:
    error = await _refused(fake_sqs, ..., handler, how=how, batch=True)
    assert error.message.startswith("batch=True needs a handler that takes a list of messages")
    assert "(its argument is annotated Message)" in error.message


@pytest.mark.parametrize("how", HOW)
async def test_batch_must_be_a_bool(autojump_clock: object, fake_sqs: FakeSQS, how: str) -> None:
    error = await _refused(fake_sqs, ..., takes_list, how=how, batch="yes")
    assert error.message == "batch must be True or False, got 'yes'"


# -- the queue ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("queue", BAD_QUEUES)
async def test_a_queue_that_is_not_a_non_empty_string_is_refused_before_any_io(
    autojump_clock: object, fake_sqs: FakeSQS, queue: object, how: str
) -> None:
    error = await _refused(fake_sqs, queue, takes_message, how=how)
    name = "queue_url" if how == "Consumer" else "queue"
    assert (
        error.message == f"{name} must be a queue name or URL (a non-empty string), got {queue!r}"
    )


async def test_options_must_be_consumer_options(autojump_clock: object, fake_sqs: FakeSQS) -> None:
    error = await _refused(fake_sqs, ..., takes_message, how="open_consumer", options={"x": 1})
    assert error.message == "options must be a ConsumerOptions, got {'x': 1}"


def test_open_consumer_refuses_at_the_call_itself() -> None:
    """No event loop, no client: the call alone raises (nothing was opened to clean up)."""
    with pytest.raises(ConfigurationError, match="queue must be"):
        trio_sqs.open_consumer(None, takes_message)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="handler must be an async callable"):
        trio_sqs.open_consumer("q", sync_handler)  # type: ignore[call-overload]


# -- typed overloads: mypy sees the mix-up ------------------------------------------------------
# tests/typing/overloads.py, checked by scripts/lint (mypy --warn-unused-ignores): each wrong call
# carries the ignore of the error mypy must report, so a regression is an unused ignore.


# -- the consumer's own random generator --------------------------------------------------------


async def _backoff_delays(fake: FakeSQS, seed: int | None, name: str) -> list[float]:
    """The pauses of a single poller between failed receives: three transient errors (error
    backoff 0.5, 1, 2 s, full jitter), then two access errors (30 s scaled by 0.5-1)."""
    async with open_fake_client(fake) as client:
        url = await client.create_queue(name)

        def ours(params: Any) -> bool:
            return bool(params.get("QueueUrl") == url)

        fake.faults.fail("ReceiveMessage", times=3, match=ours)
        fake.faults.fail("ReceiveMessage", times=2, status=403, code="AccessDenied", match=ours)
        seeded = {} if seed is None else {"random_seed": seed}
        async with trio_sqs.open_consumer(
            url, takes_message, client=client, pollers=1, wait_time=20, **seeded
        ) as consumer:
            await trio.sleep(100)
        assert consumer.statistics().poll_errors == 5
    times = [c.time for c in fake.calls if c.operation == "ReceiveMessage" and ours(c.params)]
    assert len(times) >= 6  # five failed, then long polls
    return [b - a for a, b in itertools.pairwise(times[:6])]


async def test_two_consumers_with_the_same_seed_back_off_alike(
    autojump_clock: object, fake_sqs: FakeSQS
) -> None:
    first = await _backoff_delays(fake_sqs, 1234, "seeded-a")
    second = await _backoff_delays(fake_sqs, 1234, "seeded-b")
    other = await _backoff_delays(fake_sqs, 4321, "seeded-c")
    assert second == pytest.approx(first, rel=1e-9, abs=1e-9)
    assert other != pytest.approx(first, rel=1e-6)
    for delays in (first, other):
        for delay, ceiling in zip(delays[:3], (0.5, 1.0, 2.0), strict=True):
            assert 0 <= delay <= ceiling
        for delay in delays[3:]:
            assert 15.0 <= delay <= 30.0


async def test_the_global_random_state_is_untouched(
    autojump_clock: object, fake_sqs: FakeSQS
) -> None:
    saved = random.getstate()
    try:
        random.seed(99)
        before = random.getstate()
        delays = await _backoff_delays(fake_sqs, None, "unseeded")
        assert random.getstate() == before
        assert len(delays) == 5
        # Seeding the global generator does not make an unseeded consumer repeat itself either.
        random.seed(99)
        again = await _backoff_delays(fake_sqs, None, "unseeded-again")
        assert again != pytest.approx(delays, rel=1e-6)
    finally:
        random.setstate(saved)


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_random_seed_must_be_an_integer(seed: object) -> None:
    with pytest.raises(ConfigurationError, match="random_seed must be an integer or None"):
        ConsumerOptions(random_seed=seed)  # type: ignore[arg-type]
    assert ConsumerOptions(random_seed=0).random_seed == 0
