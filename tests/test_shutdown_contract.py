"""The consumer's shutdown contract (trio_sqs/_consumer.py, module docstring), proven on the
in-memory SQS under ``trio.testing.MockClock``: every bound is asserted in virtual seconds.

- A cancellation swept over every scheduling point of start-up, running and stop.
- The dead-letter scenario: a stop right after a failure raises no receive count, sends nothing
  to the DLQ, and takes no time.
- One long poll in flight when idle, more under load, back to one after.
- The receive count of a message rises by at most one per stop, under load.
- ``SystemExit`` in a handler: a graceful stop, then the ``SystemExit`` itself.
- ``batch_window``: about one ReceiveMessage per window at a steady low rate.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs.testing import FakeSQS, RecordedCall

WAIT = 20
LEASE = 30
GRACE = 10.0
FLUSH = 5.0
MARGIN = 0.5  # the contract's slack on top of grace + flush
BOUND = GRACE + FLUSH + MARGIN
REALISTIC = {
    "wait_time": WAIT,
    "visibility_timeout": LEASE,
    "grace_period": GRACE,
    "flush_timeout": FLUSH,
}


def receives(calls: Sequence[RecordedCall], url: str | None = None) -> list[RecordedCall]:
    return [
        c
        for c in calls
        if c.operation == "ReceiveMessage" and (url is None or c.params.get("QueueUrl") == url)
    ]


def for_queue(calls: Sequence[RecordedCall], url: str) -> list[RecordedCall]:
    return [c for c in calls if c.params.get("QueueUrl") == url]


async def send_n(sqs: trio_sqs.SQSClient, url: str, n: int, prefix: str = "m") -> list[str]:
    ids: list[str] = []
    entries = [trio_sqs.SendEntry(body=f"{prefix}{i}") for i in range(n)]
    for start in range(0, n, 10):
        sent, result = await sqs.send_message_batch(url, entries[start : start + 10])
        assert result.ok
        ids.extend(s.message_id for s in sent)
    return ids


# -- 1. a cancel swept over every scheduling point ------------------------------------------------


class CancelAtStep(trio.abc.Instrument):
    """Counts task steps (any task's) and cancels ``scope`` right before step ``at``: a
    cancellation that arrives between two scheduling points of the run. From that moment the run
    has the contract's bound (and a little) to end: ``watch`` (a watchdog's scope, in virtual
    time) gets that deadline."""

    def __init__(self, fake: FakeSQS, at: int | None) -> None:
        self.fake = fake
        self.at = at
        self.steps = 0
        self.scope: trio.CancelScope | None = None
        self.watch: trio.CancelScope | None = None
        self.cancelled_at: float | None = None
        self.calls_at_cancel: int | None = None
        self.marks: dict[str, int] = {}
        self.phase = ""  # where the cancel came: "start-up", "running" or "stopping"
        self.consumer: trio_sqs.Consumer | None = None

    def mark(self, name: str) -> None:
        self.marks[name] = self.steps

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        # The consumer, even if the cancel comes before open_consumer could hand it to us: the
        # watchdog stops it by hand if it hangs.
        if task.name.endswith("Consumer._run") and self.consumer is None:
            frame = task.coro.cr_frame
            if frame is not None:
                self.consumer = frame.f_locals.get("self")

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.steps == self.at and self.scope is not None and self.cancelled_at is None:
            self.cancelled_at = trio.current_time()
            self.calls_at_cancel = len(self.fake.calls)
            self.phase = (
                "stopping"
                if "stopping" in self.marks
                else "running"
                if "started" in self.marks
                else "start-up"
            )
            self.scope.cancel()
            assert self.watch is not None
            self.watch.deadline = self.cancelled_at + BOUND + 1.0
        self.steps += 1


@dataclass
class SweepRun:
    at: int | None
    phase: str
    steps: int
    marks: dict[str, int]
    cancelled_at: float | None
    took: float | None  # virtual seconds from the cancel to open_consumer's exit
    state: str | None
    completed: int


SWEEP_MESSAGES = 4


async def sweep_run(
    sqs: trio_sqs.SQSClient,
    fake: FakeSQS,
    monkeypatch: pytest.MonkeyPatch,
    run: int,
    at: int | None,
    *,
    stop_when: str = "all_handled",
    poll_on_stop: str = "land",
) -> SweepRun:
    """One run: a consumer on a queue of 4 messages (one fails once), stopped once
    ``stop_when`` ("all_handled" or "first_handled"), cancelled from outside before step ``at``
    (None: never). Asserts the contract for that run."""
    # Trio shuffles each batch of runnable tasks with trio._core._run._r (a random.Random):
    # seeded per run, the same ``at`` cancels at the same scheduling point every time.
    monkeypatch.setattr(trio._core._run, "_r", random.Random(1234))
    url = await sqs.create_queue(f"sweep-{run}")
    queue = fake.queue(url)
    ids = await send_n(sqs, url, SWEEP_MESSAGES)
    completed: set[str] = set()
    failed_once: set[str] = set()
    enough = trio.Event()
    wanted = SWEEP_MESSAGES if stop_when == "all_handled" else 1

    async def handler(message: Message) -> None:
        await trio.sleep(1)
        if message.body == "m0" and not failed_once:
            failed_once.add(message.message_id)
            raise RuntimeError("fails once")
        completed.add(message.message_id)
        if len(completed) >= wanted:
            enough.set()

    instrument = CancelAtStep(fake, at)
    consumer: trio_sqs.Consumer | None = None
    start = trio.current_time()
    exited_at: float | None = None
    hung = False
    watch = trio.CancelScope(deadline=start + 120)
    instrument.watch = watch

    async def watchdog() -> None:
        # The per-run bound, in virtual time. A consumer hung in a shielded scope cannot be
        # cancelled from here: it is stopped by hand, so that a hang fails the test.
        nonlocal hung
        with watch:
            await trio.sleep_forever()
        hung = True
        if instrument.consumer is not None:
            instrument.consumer.stop()
        if instrument.scope is not None:
            instrument.scope.cancel()

    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            with trio.CancelScope() as scope:
                instrument.scope = scope
                async with trio_sqs.open_consumer(
                    url,
                    handler,
                    client=sqs,
                    concurrency=2,
                    failure_backoff=1.0,
                    poll_on_stop=poll_on_stop,
                    **REALISTIC,
                ) as consumer:
                    instrument.mark("started")
                    await enough.wait()
                    instrument.mark("stopping")
                    consumer.stop()
            exited_at = trio.current_time()
            instrument.mark("exited")
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    where = f"cancel before step {at} (marks {instrument.marks})"
    assert not hung, f"open_consumer hung: {where}"
    assert exited_at is not None
    took = None
    if instrument.cancelled_at is not None:
        took = exited_at - instrument.cancelled_at
        assert took <= BOUND, where
        assert instrument.calls_at_cancel is not None
        late = receives(fake.calls[instrument.calls_at_cancel :], url)
        assert late == [], f"ReceiveMessage after the cancel: {where}"
    else:
        assert len(completed) >= wanted
    calls_at_exit = len(fake.calls)
    state = None
    if consumer is not None:
        stats = consumer.statistics()
        state = stats.state
        assert state == "stopped", where
        assert stats.unflushed == 0, where
    if instrument.consumer is not None:
        assert instrument.consumer.statistics().state == "stopped", where
    # Nothing of ours reaches SQS once open_consumer has returned; every message is accounted
    # for: deleted iff a handler completed it, every other one back in the queue and visible
    # once any cover or lease has run out.
    await trio.sleep(WAIT + LEASE + 2)
    assert for_queue(fake.calls[calls_at_exit:], url) == [], where
    left = {m.message_id: m for m in queue.messages()}
    assert set(left) == set(ids) - completed, where
    assert all(m.state == "visible" for m in left.values()), where
    return SweepRun(
        at=at,
        phase=instrument.phase,
        steps=instrument.steps,
        marks=dict(instrument.marks),
        cancelled_at=instrument.cancelled_at,
        took=took,
        state=state,
        completed=len(completed),
    )


SWEEPS = [
    ("all_handled", "land"),  # the scenario: an idle consumer stopped after its work
    ("first_handled", "land"),  # stopped busy: handlers in grace, buffered messages, a poll
    ("first_handled", "abort"),
]


@pytest.mark.deadline(3 * 200 * 60.0)  # virtual: each run waits out a cover and a lease
@pytest.mark.parametrize(("stop_when", "poll_on_stop"), SWEEPS)
async def test_cancel_swept_over_every_scheduling_point(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    monkeypatch: pytest.MonkeyPatch,
    stop_when: str,
    poll_on_stop: str,
) -> None:
    """The issue's acceptance test: a cancel before each scheduling point of start-up, running
    and stop (every one of them); every run leaves open_consumer within grace + flush + 0.5 s,
    sends no ReceiveMessage after the cancel, and loses no message. One client serves every run
    (a cancelled start must hand back what it took from it)."""
    sqs = fake_sqs_client
    kw = {"stop_when": stop_when, "poll_on_stop": poll_on_stop}
    plain = await sweep_run(sqs, fake_sqs, monkeypatch, 0, None, **kw)
    again = await sweep_run(sqs, fake_sqs, monkeypatch, 1, None, **kw)
    # Seeded, the run is the same sequence of scheduling points each time.
    assert (again.steps, again.marks) == (plain.steps, plain.marks)
    assert 0 < plain.marks["started"] < plain.marks["stopping"] < plain.steps
    runs = [
        await sweep_run(sqs, fake_sqs, monkeypatch, 2 + k, k, **kw) for k in range(plain.steps + 1)
    ]
    cancelled = [r for r in runs if r.cancelled_at is not None]
    # Every step of the run was a cancel point (the last ``at`` is past the run's end)...
    assert [r.at for r in cancelled] == list(range(plain.steps))
    # ... in start-up (before open_consumer handed the consumer over), while running, and while
    # stopping. Only a cancel in start-up may keep the consumer from the caller.
    phases = [r.phase for r in cancelled]
    order = ["start-up", "running", "stopping"]
    assert phases == sorted(phases, key=order.index)
    assert set(phases) == set(order)
    assert any(r.state is None for r in cancelled)
    assert all(r.state == "stopped" for r in cancelled if r.phase != "start-up")
    took = [r.took for r in cancelled if r.took is not None]
    print(
        f"{stop_when}/{poll_on_stop}: {plain.steps} steps, marks {plain.marks}, "
        f"cancels by phase { {p: phases.count(p) for p in order} }, "
        f"cancel-to-exit max {max(took):.3f} s, values {sorted(set(round(t, 3) for t in took))}"
    )


class CancelOnSpawn(trio.abc.Instrument):
    """The issue's repro: cancel the enclosing scope the moment the consumer's task is spawned,
    before its first step."""

    def __init__(self, scope: trio.CancelScope, fake: FakeSQS) -> None:
        self.scope = scope
        self.fake = fake
        self.calls_at_cancel: int | None = None
        self.cancelled_at: float | None = None
        self.consumer: trio_sqs.Consumer | None = None

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if "_run" in task.name.rpartition(".")[2] and self.cancelled_at is None:
            frame = task.coro.cr_frame
            if frame is not None:
                self.consumer = frame.f_locals.get("self")
            self.cancelled_at = trio.current_time()
            self.calls_at_cancel = len(self.fake.calls)
            self.scope.cancel()


async def test_cancel_when_the_consumer_task_is_spawned(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    """The issue's repro: the enclosing scope is cancelled when the consumer's task is spawned
    (between ``nursery.start(consumer._run)`` and the task's first step). open_consumer returns
    within the bound, nothing is sent after the cancel, and the client serves a consumer after."""
    sqs = fake_sqs_client
    url = await sqs.create_queue("cancel-at-spawn")
    queue = fake_sqs.queue(url)
    ids = await send_n(sqs, url, 3)
    handled: list[str] = []
    all_handled = trio.Event()

    async def handler(message: Message) -> None:
        handled.append(message.message_id)
        if len(handled) == 3:
            all_handled.set()

    hung = False
    entered = False
    scope = trio.CancelScope()
    instrument = CancelOnSpawn(scope, fake_sqs)
    watch = trio.CancelScope(deadline=trio.current_time() + BOUND + 1.0)

    async def watchdog() -> None:
        nonlocal hung
        with watch:
            await trio.sleep_forever()
        hung = True  # a hang in a shielded scope: stop the consumer by hand
        if instrument.consumer is not None:
            instrument.consumer.stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        trio.lowlevel.add_instrument(instrument)
        try:
            with scope:
                async with trio_sqs.open_consumer(url, handler, client=sqs, **REALISTIC):
                    entered = True
                    await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(instrument)
        exited_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert not hung, "open_consumer hung after a cancel at the spawn of the consumer's task"
    assert instrument.cancelled_at is not None and instrument.calls_at_cancel is not None
    assert instrument.consumer is not None
    assert not entered
    assert exited_at - instrument.cancelled_at <= BOUND
    # It never got to poll: nothing at all went out after the cancel, then or later.
    await trio.sleep(WAIT + LEASE + 2)
    assert fake_sqs.calls[instrument.calls_at_cancel :] == []
    assert instrument.consumer.statistics().state == "stopped"
    assert [(m.state, m.receive_count) for m in queue.messages()] == [("visible", 0)] * 3
    # The client is whole: a consumer opened on it afterwards handles the messages.
    async with trio_sqs.open_consumer(url, handler, client=sqs, **REALISTIC) as consumer:
        await all_handled.wait()
    assert sorted(handled) == sorted(ids)
    assert consumer.statistics().deleted == 3


# -- 2. the dead-letter scenario: a stop right after a failure -----------------------------------


async def make_queue_with_dlq(
    sqs: trio_sqs.SQSClient, name: str, max_receive_count: int = 3
) -> tuple[str, str]:
    dlq = await sqs.create_queue(f"{name}-dlq")
    arn = (await sqs.get_queue_attributes(dlq, ["QueueArn"]))["QueueArn"]
    policy = {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)}
    url = await sqs.create_queue(name, attributes={"RedrivePolicy": json.dumps(policy)})
    return url, dlq


@pytest.mark.parametrize("restart", ["at once", "later"])
@pytest.mark.parametrize("flush_timeout", [FLUSH, 20.0])
@pytest.mark.parametrize("poll_on_stop", ["land", "abort"])
@pytest.mark.parametrize(("messages", "concurrency"), [(1, 1), (5, 10)])
async def test_stop_after_a_failure_raises_no_receive_count_and_takes_no_time(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    messages: int,
    concurrency: int,
    poll_on_stop: str,
    flush_timeout: float,
    restart: str,
) -> None:
    """Issue items 2 and 3: a handler fails once (failure backoff 1 s), the consumer is stopped
    0.7 s later, while the released message is still hidden and the long poll SQS runs for us
    (aborted on our side) has 19 s to go. The stop takes no time (the consumer is idle); the
    message's receive count never exceeds the deliveries to our handler (the issue allowed one
    more; the contract in HEAD promises none: a message released before t0 whose visibility
    would end while that poll runs is hidden again); nothing goes to the dead-letter queue
    (maxReceiveCount 3); a consumer started after the stop (at once, or once that poll is over)
    handles it."""
    sqs = fake_sqs_client
    name = f"dlq-{messages}-{poll_on_stop}-{int(flush_timeout)}-{restart.replace(' ', '-')}"
    url, dlq = await make_queue_with_dlq(sqs, name)
    queue = fake_sqs.queue(url)
    ids = await send_n(sqs, url, messages)
    calls: dict[str, list[int]] = {i: [] for i in ids}  # receive count seen by each call
    failures = trio.Event()
    done = trio.Event()

    def worst_excess() -> int:
        # Receive count beyond the deliveries our handler saw, for each message still there.
        return max(
            (m.receive_count - len(calls[m.message_id]) for m in queue.messages()), default=0
        )

    async def handler(message: Message) -> None:
        seen = calls[message.message_id]
        seen.append(message.receive_count)
        if len(seen) == 1:
            if sum(len(c) for c in calls.values()) == messages:
                failures.set()
            raise RuntimeError("fails once")
        if all(len(c) == 2 for c in calls.values()):
            done.set()

    options = {**REALISTIC, "flush_timeout": flush_timeout}
    async with trio_sqs.open_consumer(
        url,
        handler,
        client=sqs,
        concurrency=concurrency,
        failure_backoff=1.0,
        poll_on_stop=poll_on_stop,
        **options,
    ) as first:
        await failures.wait()
        failed_at = trio.current_time()
        await trio.sleep(0.7)
        t0 = trio.current_time()
    # Issue item 3: an idle stop after a failure takes milliseconds (here: no virtual time).
    assert trio.current_time() == t0
    assert first.statistics().state == "stopped"
    assert first.statistics().failed == messages
    assert all(len(c) == 1 for c in calls.values())  # the handler ran once each, before stop
    assert worst_excess() == 0
    if restart == "later":
        # The poll SQS may still run for us ends within WaitTimeSeconds (+ 1 s) of its
        # sending; watch the receive counts meanwhile.
        while trio.current_time() < failed_at + WAIT + 2:
            await trio.sleep(0.5)
            assert worst_excess() == 0
        assert queue.orphaned_deliveries == 0
    async with trio_sqs.open_consumer(
        url, handler, client=sqs, concurrency=concurrency, poll_on_stop=poll_on_stop, **options
    ):
        with trio.move_on_after(2 * LEASE + WAIT) as wait:
            await done.wait()
        assert not wait.cancelled_caught, f"not handled after the stop: {calls}"
    # Each handled by the second consumer, at its second receive: no receive was not ours.
    assert list(calls.values()) == [[1, 2]] * messages
    assert queue.orphaned_deliveries == 0
    assert queue.messages() == []
    assert fake_sqs.queue(dlq).messages() == []


# -- 3. one long poll when idle, more under load -------------------------------------------------


class PollMeter(httpx.AsyncBaseTransport):
    """Wraps the fake's transport and counts the ReceiveMessage requests on the wire: now, and
    the most at once since :meth:`reset`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.now = 0
        self.most = 0

    def reset(self) -> None:
        self.most = self.now

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        poll = request.headers.get("x-amz-target", "").endswith(".ReceiveMessage")
        if poll:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            if poll:
                self.now -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_one_poll_when_idle_more_under_load_one_again_after(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """pollers=4: an idle consumer keeps exactly one long poll in flight (the old consumer kept
    four); 200 messages at once make polls come back full and more go out together (at most
    four); once the queue is drained, one long poll again."""
    meter = PollMeter(fake_sqs.transport())
    # 20 ms of network latency on every receive, so that polls sent together overlap in time.
    fake_sqs.faults.delay("ReceiveMessage", 0.02, times=10**6)
    handled: set[str] = set()
    total = 200
    drained = trio.Event()

    async def handler(message: Message) -> None:
        await trio.sleep(0.01)
        handled.add(message.message_id)
        if len(handled) == total:
            drained.set()

    async with trio_sqs.testing.open_fake_client(fake_sqs, transport=meter) as sqs:
        url = await sqs.create_queue("adaptive-polls")
        queue = fake_sqs.queue(url)
        async with trio_sqs.open_consumer(
            url,
            handler,
            client=sqs,
            concurrency=10,
            pollers=4,
            max_buffered=30,  # room for all four polls of 10
            **REALISTIC,
        ):
            # Idle: exactly one long poll, over several rounds of 20 s polls.
            await trio.sleep(1)
            assert queue.waiting_polls == 1 and meter.now == 1
            meter.reset()
            idle_from = len(fake_sqs.calls)
            await trio.sleep(3 * WAIT + 5)
            assert meter.most == 1 and queue.waiting_polls == 1
            idle_polls = len(receives(fake_sqs.calls[idle_from:]))
            assert idle_polls == 3  # one per 20 s
            # Load: 200 messages at once. Polls come back full: more go out together.
            meter.reset()
            load_from = len(fake_sqs.calls)
            sent_at = trio.current_time()
            ids = await send_n(sqs, url, total)
            await drained.wait()
            drained_at = trio.current_time()
            busy = meter.most
            assert 1 < busy <= 4
            load_polls = len(receives(fake_sqs.calls[load_from:]))
            # Drained: back to one long poll (the others retire after a short poll).
            await trio.sleep(WAIT + 5)
            assert queue.waiting_polls == 1 and meter.now == 1
            meter.reset()
            await trio.sleep(3 * WAIT)
            assert meter.most == 1 and queue.waiting_polls == 1
    assert handled == set(ids)
    print(
        f"idle: {idle_polls} polls in 65 s, at most 1 at once; load: {total} messages in "
        f"{drained_at - sent_at:.2f} s, {load_polls} polls, at most {busy} at once"
    )


# -- 4. the receive count rises by at most one per stop -----------------------------------------


@pytest.mark.parametrize("max_buffered", [None, 50])
@pytest.mark.parametrize("poll_on_stop", ["land", "abort"])
@pytest.mark.parametrize("stop_after", [0.3, 1.0, 2.5, 4.2, 7.7])
async def test_receive_count_rises_by_at_most_one_per_stop_under_load(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    stop_after: float,
    poll_on_stop: str,
    max_buffered: int | None,
) -> None:
    """50 messages, handlers of random length (seeded) up to 6 s, concurrency 10, a grace of
    1 s: each stop finds handlers running (some cancelled at grace) and messages buffered; with
    ``max_buffered=50`` every message is in hand early and a long poll waits on the emptied
    queue at the stop (landing or aborted, SQS runs it on). Twice (two consumers one after the other): once every cover has run out, every
    message not deleted is visible, and in that round its receive count rose by the handler
    starts it had plus at most one (received, never started, handed back at stop). No receive
    went to a poll we had abandoned."""
    sqs = fake_sqs_client
    name = f"per-stop-{poll_on_stop}-{stop_after}-{max_buffered}".replace(".", "-")
    url = await sqs.create_queue(name)
    queue = fake_sqs.queue(url)
    ids = await send_n(sqs, url, 50)
    rng = random.Random(7)
    length = {f"m{i}": rng.uniform(0.2, 6.0) for i in range(50)}
    grace = 1.0
    completed: set[str] = set()
    report = []
    for round_ in range(2):
        before = {m.message_id: m.receive_count for m in queue.messages()}
        deliveries_before = queue.deliveries
        starts: dict[str, int] = dict.fromkeys(ids, 0)

        async def handler(message: Message) -> None:
            starts[message.message_id] += 1  # noqa: B023 - this round's
            await trio.sleep(length[message.body])
            completed.add(message.message_id)

        async with trio_sqs.open_consumer(
            url,
            handler,
            client=sqs,
            concurrency=10,
            max_buffered=max_buffered,
            poll_on_stop=poll_on_stop,
            **{**REALISTIC, "grace_period": grace},
        ) as consumer:
            await trio.sleep(stop_after)
            t0 = trio.current_time()
            polls_at_stop = queue.waiting_polls
            if max_buffered == 50:
                assert polls_at_stop >= 1  # a long poll of ours waits on the emptied queue
        assert trio.current_time() - t0 <= grace + FLUSH + MARGIN
        stats = consumer.statistics()
        assert stats.unflushed == 0
        assert stats.cancelled_at_grace > 0  # the grace was short enough
        # Every cover has run out 25 s after the stop (a poll of ours lives at most 21 s).
        await trio.sleep(25)
        left = queue.messages()
        assert {m.message_id for m in left} == set(ids) - completed
        assert all(m.state == "visible" for m in left)
        for m in left:
            rose = m.receive_count - before[m.message_id]
            assert starts[m.message_id] <= rose <= starts[m.message_id] + 1, (round_, m)
        # Every delivery of the round reached this consumer: none went to an abandoned poll.
        assert queue.orphaned_deliveries == 0
        assert stats.received == queue.deliveries - deliveries_before
        report.append(
            (
                stats.received,
                stats.completed,
                stats.cancelled_at_grace,
                stats.released,
                polls_at_stop,
                stats.aborted_polls,
            )
        )
    print(
        f"stop after {stop_after} s ({poll_on_stop}, max_buffered {max_buffered}): (received, "
        f"completed, cancelled, released, polls waiting at stop, aborted) per round {report}"
    )


# -- 5. SystemExit / KeyboardInterrupt in a handler ---------------------------------------------


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
async def test_exit_in_a_handler_stops_gracefully_then_raises_itself(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    exc_type: type[BaseException],
) -> None:
    """Issue item 7: a handler raises SystemExit (or KeyboardInterrupt) at t = 1 s. That is t0:
    the other handler, 4 s from its end, gets its grace and its message is deleted; the
    raising handler's message is released (with the cover: visible once no poll of ours can
    take it); then open_consumer raises the exception itself, not an exception group."""
    sqs = fake_sqs_client
    url = await sqs.create_queue(f"exit-{exc_type.__name__}")
    queue = fake_sqs.queue(url)
    [exit_id, slow_id] = await send_n(sqs, url, 2)
    finished: list[str] = []

    async def handler(message: Message) -> None:
        if message.message_id == exit_id:
            await trio.sleep(1)
            raise exc_type(3) if exc_type is SystemExit else exc_type()
        await trio.sleep(5)
        finished.append(message.message_id)

    start = trio.current_time()
    with pytest.raises(exc_type) as raised:
        async with trio_sqs.open_consumer(
            url, handler, client=sqs, concurrency=2, **REALISTIC
        ) as c:
            await trio.sleep_forever()
    assert type(raised.value) is exc_type
    if exc_type is SystemExit:
        assert raised.value.code == 3
    # t0 was the raise, at 1 s; the other handler ended inside its grace, at 5 s, and its
    # delete went out at once: the exit came then.
    assert trio.current_time() == start + 5
    assert finished == [slow_id]
    stats = c.statistics()
    assert stats.state == "stopped"
    assert (stats.completed, stats.deleted, stats.released, stats.unflushed) == (1, 1, 1, 0)
    assert queue.message(slow_id) is None  # deleted
    # Released, hidden from the poll SQS still runs for us (sent at 0 or later, 20 s), then
    # visible, received once.
    held = queue.message(exit_id)
    last_poll = max(c.time for c in receives(fake_sqs.calls, url))
    assert held is not None and held.state == "in_flight"
    assert held.visible_at is not None
    assert last_poll + WAIT <= held.visible_at <= last_poll + WAIT + 2
    await trio.sleep(WAIT + 2)
    back = queue.message(exit_id)
    assert back is not None
    assert (back.state, back.receive_count) == ("visible", 1)
    assert queue.orphaned_deliveries == 0


# -- 6. batch_window ------------------------------------------------------------------------------


async def produce_and_consume(
    fake: FakeSQS, sqs: trio_sqs.SQSClient, name: str, *, rate: float, batch_window: float
) -> tuple[int, list[float]]:
    """A producer at ``rate`` messages/s for 20 s to a consumer with ``batch_window``: the
    ReceiveMessage calls made meanwhile, and each message's latency (send to handler)."""
    url = await sqs.create_queue(name)
    total = round(20 * rate)
    sent_at: dict[str, float] = {}
    latency: list[float] = []
    done = trio.Event()

    async def handler(message: Message) -> None:
        latency.append(trio.current_time() - sent_at[message.body])
        if len(latency) == total:
            done.set()

    async with trio_sqs.open_consumer(
        url, handler, client=sqs, batch_window=batch_window, **REALISTIC
    ):
        await trio.sleep(0.05)  # the first long poll is waiting
        start = trio.current_time()
        first = len(fake.calls)
        for i in range(total):
            await trio.sleep_until(start + i / rate)
            sent_at[f"b{i}"] = trio.current_time()
            await sqs.send_message(url, f"b{i}")
        with trio.move_on_after(5) as late:
            await done.wait()
        assert not late.cancelled_caught, f"{len(latency)} of {total} handled"
        polls = len(receives(fake.calls[first:], url))
    print(
        f"{name}: {polls} ReceiveMessage for {total} messages over 20 s, latency max "
        f"{max(latency):.2f} s, mean {sum(latency) / total:.3f} s"
    )
    return polls, latency


async def test_without_batch_window_one_receive_per_message(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    polls, latency = await produce_and_consume(
        fake_sqs, fake_sqs_client, "window-0", rate=10, batch_window=0.0
    )
    assert len(latency) == 200
    assert polls >= 0.9 * 200  # about one per message
    assert max(latency) == 0.0  # each taken at once by the waiting long poll


@pytest.mark.parametrize("rate", [5, 10])
async def test_batch_window_makes_few_receives(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    rate: int,
) -> None:
    """With batch_window=1.0, a poll that came back short waits out the window from its sending:
    far fewer receives than messages, each message handled within the window. At 5 msg/s
    (polls come back half full) that is one receive per window."""
    polls, latency = await produce_and_consume(
        fake_sqs, fake_sqs_client, f"window-1-rate-{rate}", rate=rate, batch_window=1.0
    )
    assert len(latency) == 20 * rate
    assert max(latency) <= 1.0
    assert polls <= 20 * rate / 5  # at least five messages per receive on average
    if rate == 5:
        assert polls <= 20 + 1 + 2  # one per window


@pytest.mark.xfail(
    strict=True,
    reason="at exactly poll_size messages per window (10/s, window 1 s, polls of 10) every "
    "other window adds a second poller for one short poll: 29 receives, not about 21",
)
async def test_batch_window_one_receive_per_window_at_poll_size_rate(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
) -> None:
    """The issue's numbers: 10 msg/s for 20 s with batch_window=1.0: about one receive per
    window (<= 21 + 3)."""
    polls, latency = await produce_and_consume(
        fake_sqs, fake_sqs_client, "window-1-exact", rate=10, batch_window=1.0
    )
    assert len(latency) == 200
    assert polls <= 20 + 1 + 3
