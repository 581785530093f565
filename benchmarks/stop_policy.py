"""Which stop policy: measured on the in-memory SQS (issue "consumer core": "A stop policy decided
by measurement").

Each run is one stop of a consumer ("the first consumer") on trio_sqs's in-memory SQS
(``trio_sqs.testing.FakeSQS``; like SQS, it runs a long poll whose client went away to the end of
its WaitTimeSeconds and hands it messages nobody will see) under
``trio.testing.MockClock(autojump_threshold=0)``: virtual time, so a run is deterministic for its
seed (Trio's own scheduling generator is seeded too) and 60 s of it take a fraction of a second.
A second consumer (default options but a seed, 0.05 s handlers) starts at t0 + 1 s and handles everything
left; the run ends at t0 + 60 s, where it is measured.

Policies (the first consumer's; the second's are the defaults):

- ``land + cover``: ``poll_on_stop="land"`` (the default);
- ``abort + cover``: ``poll_on_stop="abort"``;
- ``land, release at 0`` and ``abort, release at 0``: the release rule before the rewrite, every
  message handed back at stop made visible at once, reproduced by patching ``Leases.cover``
  (on the first consumer only) to return 0;
- ``land + wait for polls`` (emulated): the polls on the wire at t0 are never aborted, even when
  idle: the first consumer's ``Polling.stop`` always leaves them to land and ``Polling.abort`` does
  nothing, with ``flush_timeout=25`` so that the shutdown bound outlasts a 20 s poll.

Scenarios (``--seeds`` seeds each, the same seeds for every policy):

- ``a`` idle stop after a failure: one message, sent 0.5-15 s after the start; its handler runs
  0.1-2 s and fails (``failure_backoff`` 1 s); stop 0.7 s after the failure.
- ``b`` busy stop: 50 messages preloaded, a producer at 5 messages/s from the start to t0 + 40 s;
  handlers 0.1-1 s (90 %) or 1-15 s (10 %), so the consumer catches up after about 20 s;
  concurrency 10, grace 5 s; stop 2-30 s after the start (during the backlog or after it).
- ``c`` stop with a dead-letter queue (``maxReceiveCount`` 3): 30 messages preloaded, then bursts
  of 10 every 5 s to t0 + 40 s; every message's first handler call fails, whichever consumer makes
  it; handlers 0.2-2 s; concurrency 10, grace 5 s; stop 1-25 s after the start.
- ``d`` (not in the issue) busy stop at concurrency 30, so that several polls can be in flight while
  handlers run: 50 messages preloaded, bursts of 10 every 2 s that end at t0 (the producer stops
  with the consumer, as when one service does both), handlers as in ``b``, grace 5 s, a
  dead-letter queue (``maxReceiveCount`` 3, no handler fails); stop 2-30 s after the start. With
  nothing arriving after t0, a poll of ours left running takes what is released.

Run: python benchmarks/stop_policy.py [--seeds 20] [--scenarios a b c d] [--out FILE]
(about 85 s here; ``--quick``: 5 seeds, about 20 s). It prints a Markdown report and writes it to
``benchmarks/results/stop_policy.md``. It is a report, not a test: it exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs._consumer import Consumer
from trio_sqs._polling import Polling
from trio_sqs.testing import FakeSQS, open_fake_client

WINDOW = 60.0  # the run ends (and is measured) at t0 + WINDOW
SECOND_START = 1.0  # the second consumer starts at t0 + SECOND_START
PRODUCE_UNTIL = 40.0  # producers stop at t0 + PRODUCE_UNTIL
SECOND_HANDLER = 0.05
IDLE_STOP_LIMIT = 0.010  # requirement: an idle consumer stops in under 10 ms of its own time
SAMPLE_EVERY = 0.25


# -- policies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    name: str
    poll_on_stop: str
    cover: bool = True
    wait_for_polls: bool = False

    def options(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"poll_on_stop": self.poll_on_stop}
        if self.wait_for_polls:
            extra["flush_timeout"] = 25.0
        return extra

    def patch(self, consumer: Consumer) -> None:
        """Apply the policy to one consumer instance (nothing else is touched)."""
        if not self.cover:
            # The release rule before the rewrite: what is handed back at stop is visible at once
            # (no floor for releases from t0 on, nothing hidden again).
            consumer._leases.cover = lambda live_until: None  # type: ignore[method-assign]
        if self.wait_for_polls:
            polling = consumer._polling

            def stop(*, abort_sent: bool) -> None:
                Polling.stop(polling, abort_sent=False)

            polling.stop = stop  # type: ignore[method-assign]
            polling.abort = lambda: None  # type: ignore[method-assign]


POLICIES = (
    Policy("land + cover", "land"),
    Policy("abort + cover", "abort"),
    Policy("land, release at 0", "land", cover=False),
    Policy("abort, release at 0", "abort", cover=False),
    Policy("land + wait for polls", "land", wait_for_polls=True),
)


# -- what one run records -------------------------------------------------------------------------


class Recorder(httpx.AsyncBaseTransport):
    """The first consumer's transport: the fake's own, watched. Counts its ReceiveMessage calls
    on the wire now and those that reached the wire after ``stopped`` was set (at t0)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.stopped = False
        self.receives = 0
        self.receives_after_stop = 0
        self.receives_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.headers.get("x-amz-target", "").endswith(".ReceiveMessage"):
            return await self.inner.handle_async_request(request)
        self.receives += 1
        if self.stopped:
            self.receives_after_stop += 1
        self.receives_in_flight += 1
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.receives_in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Delivery:
    who: int  # 1 or 2
    at: float
    receive_count: int


@dataclass
class World:
    """Everything one run records, by message index (the body is ``m<index>``)."""

    seed: int
    rng: random.Random
    sent_at: dict[int, float] = field(default_factory=dict)
    deliveries: dict[int, list[Delivery]] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    completed: dict[int, tuple[int, float]] = field(default_factory=dict)
    durations: dict[int, float] = field(default_factory=dict)
    t0: float | None = None
    stop_wall: float = 0.0
    stop_end: float = math.nan
    idle_polls: list[int] = field(default_factory=list)
    polls_at_t0: int | None = None

    def duration(self, index: int, draw: Callable[[random.Random], float]) -> float:
        # Drawn from the message's own generator: the same in every policy for this seed.
        if index not in self.durations:
            self.durations[index] = draw(random.Random(self.seed * 1_000_003 + index))
        return self.durations[index]

    def deliver(self, who: int, message: Message) -> int:
        index = int(message.body[1:])
        self.deliveries.setdefault(index, []).append(
            Delivery(who, trio.current_time(), message.receive_count)
        )
        return index

    def fail(self, index: int) -> None:
        self.failures[index] = self.failures.get(index, 0) + 1

    def first_call(self, index: int) -> bool:
        return len(self.deliveries.get(index, ())) == 1


@dataclass
class RunResult:
    stop_time: float
    stop_wall: float
    receives_after_t0: int
    rises: list[int]  # per message that was ever received
    dlq_unfailed: int
    dlq_total: int
    orphaned: int
    handover_delays: list[float]  # sent before t0, not completed by the first consumer
    late_stranded: int  # sent after t0 and handled more than 5 s after it was sent
    unhandled: int
    idle_polls: list[int]
    polls_at_t0: int | None
    stats: dict[str, int]


# -- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    preload: int
    rate: float  # messages per second after the preload, sent ``burst`` at a time
    burst: int
    produce_after_t0: bool
    options: dict[str, Any]
    dlq: bool
    stop_after: Callable[[random.Random], float] | None  # None: scenario a's own trigger
    handler_time: Callable[[random.Random], float]
    fail_first_call: bool


def _busy_duration(rng: random.Random) -> float:
    return rng.uniform(0.1, 1.0) if rng.random() < 0.9 else rng.uniform(1.0, 15.0)


SCENARIOS = {
    "a": Scenario(
        "a",
        "idle stop after a failure",
        preload=0,
        rate=0.0,
        burst=1,
        produce_after_t0=True,
        options={"failure_backoff": 1.0},
        dlq=False,
        stop_after=None,
        handler_time=lambda rng: rng.uniform(0.1, 2.0),
        fail_first_call=True,
    ),
    "b": Scenario(
        "b",
        "busy stop, producer still sending",
        preload=50,
        rate=5.0,
        burst=1,
        produce_after_t0=True,
        options={"concurrency": 10, "grace_period": 5.0},
        dlq=False,
        stop_after=lambda rng: rng.uniform(2.0, 30.0),
        handler_time=_busy_duration,
        fail_first_call=False,
    ),
    "c": Scenario(
        "c",
        "stop with a dead-letter queue (maxReceiveCount 3), every message failing once",
        preload=30,
        rate=2.0,
        burst=10,
        produce_after_t0=True,
        options={"concurrency": 10, "grace_period": 5.0},
        dlq=True,
        stop_after=lambda rng: rng.uniform(1.0, 25.0),
        handler_time=lambda rng: rng.uniform(0.2, 2.0),
        fail_first_call=True,
    ),
    "d": Scenario(
        "d",
        "busy stop at concurrency 30 (several polls in flight), bursts of 10 that end at t0, "
        "dead-letter queue",
        preload=50,
        rate=5.0,
        burst=10,
        produce_after_t0=False,
        options={"concurrency": 30, "grace_period": 5.0},
        dlq=True,
        stop_after=lambda rng: rng.uniform(2.0, 30.0),
        handler_time=_busy_duration,
        fail_first_call=False,
    ),
}


async def _run(scenario: Scenario, policy: Policy, seed: int) -> RunResult:
    fake = FakeSQS()
    world = World(seed, random.Random(seed))
    rng = world.rng
    recorder = Recorder(fake.transport())
    async with (
        open_fake_client(fake) as producer_client,
        open_fake_client(fake, transport=recorder) as first_client,
        open_fake_client(fake) as second_client,
    ):
        attributes: dict[str, str] = {}
        dlq_url = None
        if scenario.dlq:
            dlq_url = await producer_client.create_queue(f"stop-{scenario.key}-dlq")
            arn = (await producer_client.get_queue_attributes(dlq_url, ["QueueArn"]))["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": "3"}
            )
        url = await producer_client.create_queue(f"stop-{scenario.key}", attributes=attributes)
        queue = fake.queue(url)
        next_index = 0

        async def send() -> int:
            nonlocal next_index
            index = next_index
            next_index += 1
            await producer_client.send_message(url, f"m{index}")
            world.sent_at[index] = trio.current_time()
            return index

        start = trio.current_time()
        for _ in range(scenario.preload):
            await send()
        stop_at = start + scenario.stop_after(rng) if scenario.stop_after else math.inf
        failed_at: list[float] = []
        failure_seen = trio.Event()
        stop_now = trio.Event()
        stopped = trio.Event()
        t0_set = trio.Event()
        first: list[Consumer] = []

        async def first_handler(message: Message) -> None:
            index = world.deliver(1, message)
            await trio.sleep(world.duration(index, scenario.handler_time))
            if scenario.fail_first_call and world.first_call(index):
                world.fail(index)
                failed_at.append(trio.current_time())
                failure_seen.set()
                raise RuntimeError("fails once")
            world.completed.setdefault(index, (1, trio.current_time()))

        async def second_handler(message: Message) -> None:
            index = world.deliver(2, message)
            await trio.sleep(SECOND_HANDLER)
            if scenario.fail_first_call and world.first_call(index):
                world.fail(index)
                raise RuntimeError("fails once")
            world.completed.setdefault(index, (2, trio.current_time()))

        async def run_first(task_status: trio.TaskStatus[None]) -> None:
            options = {
                **scenario.options,
                **policy.options(),
                "random_seed": seed,
            }
            async with trio_sqs.open_consumer(
                url, first_handler, client=first_client, **options
            ) as consumer:
                policy.patch(consumer)
                first.append(consumer)
                task_status.started()
                await stop_now.wait()
                if scenario.key == "a":
                    world.polls_at_t0 = recorder.receives_in_flight
                recorder.stopped = True
                world.t0 = trio.current_time()
                t0_set.set()
                wall = time.perf_counter()
                consumer.stop()
            world.stop_wall = time.perf_counter() - wall
            world.stop_end = trio.current_time()
            stopped.set()

        async def produce() -> None:
            if scenario.rate <= 0:
                return
            until = PRODUCE_UNTIL if scenario.produce_after_t0 else 0.0
            while world.t0 is None or trio.current_time() < world.t0 + until:
                await trio.sleep(scenario.burst / scenario.rate)
                if world.t0 is not None and trio.current_time() >= world.t0 + until:
                    break
                for _ in range(scenario.burst):
                    await send()

        async def sample_idle() -> None:
            # Polls on the wire while the first consumer holds nothing, until t0.
            consumer = first[0]
            offset = 0.0137
            while world.t0 is None:
                await trio.sleep_until(start + offset)
                offset += SAMPLE_EVERY
                s = consumer.statistics()
                if world.t0 is None and s.in_flight == 0 and s.buffered == 0 and offset > 0.5:
                    world.idle_polls.append(recorder.receives_in_flight)

        async with trio.open_nursery() as nursery:
            await nursery.start(run_first)
            nursery.start_soon(produce)
            nursery.start_soon(sample_idle)
            if scenario.key == "a":
                await trio.sleep(rng.uniform(0.5, 15.0))
                await send()
                await failure_seen.wait()
                await trio.sleep_until(failed_at[0] + 0.7)
            else:
                await trio.sleep_until(stop_at)
            stop_now.set()
            await t0_set.wait()
            t0 = world.t0
            assert t0 is not None
            await trio.sleep_until(t0 + SECOND_START)
            async with trio_sqs.open_consumer(
                url, second_handler, client=second_client, random_seed=seed + 1
            ):
                await trio.sleep_until(t0 + WINDOW)
                await stopped.wait()
                result = _measure(world, queue, fake, dlq_url, recorder, first[0])
            nursery.cancel_scope.cancel()
    return result


def _measure(
    world: World,
    queue: Any,
    fake: FakeSQS,
    dlq_url: str | None,
    recorder: Recorder,
    consumer: Consumer,
) -> RunResult:
    assert world.t0 is not None
    t0 = world.t0
    left = {int(m.body[1:]): m for m in queue.messages()}
    in_dlq = {int(m.body[1:]): m for m in fake.queue(dlq_url).messages()} if dlq_url else {}
    rises: list[int] = []
    for index in world.sent_at:
        counts = [d.receive_count for d in world.deliveries.get(index, ())]
        for snapshot in (left.get(index), in_dlq.get(index)):
            if snapshot is not None:
                counts.append(snapshot.receive_count)
        total = max(counts, default=0)
        if total:
            rises.append(total - len(world.deliveries.get(index, ())))
    handover: list[float] = []
    late_stranded = 0
    for index, sent in world.sent_at.items():
        done = world.completed.get(index)
        if done is not None and done[0] == 1:
            continue
        if done is None:
            continue  # counted as unhandled (or dead-lettered)
        delay = done[1] - max(sent, t0)
        if sent < t0:
            handover.append(delay)
        elif delay > 5.0:
            late_stranded += 1
    stats = consumer.statistics()
    return RunResult(
        stop_time=world.stop_end - t0,
        stop_wall=world.stop_wall,
        receives_after_t0=recorder.receives_after_stop,
        rises=rises,
        dlq_unfailed=sum(1 for i in in_dlq if world.failures.get(i, 0) < 3),
        dlq_total=len(in_dlq),
        orphaned=queue.orphaned_deliveries,
        handover_delays=handover,
        late_stranded=late_stranded,
        unhandled=len(left),
        idle_polls=list(world.idle_polls),
        polls_at_t0=world.polls_at_t0,
        stats={
            "aborted_polls": stats.aborted_polls,
            "cancelled_at_grace": stats.cancelled_at_grace,
            "released": stats.released,
            "unflushed": stats.unflushed,
        },
    )


def run_one(scenario: Scenario, policy: Policy, seed: int) -> RunResult:
    # Trio's scheduler shuffles with a module-level generator: seed it for a deterministic run.
    trio_random = getattr(trio._core._run, "_r", None)
    if isinstance(trio_random, random.Random):
        trio_random.seed(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(_run, scenario, policy, seed, clock=clock)


# -- the report -----------------------------------------------------------------------------------


def _p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if values else "-"


def _fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


@dataclass
class Summary:
    policy: Policy
    scenario: Scenario
    runs: list[RunResult]

    @property
    def stop_times(self) -> list[float]:
        return [r.stop_time for r in self.runs]

    @property
    def receives_after_t0(self) -> int:
        return sum(r.receives_after_t0 for r in self.runs)

    @property
    def max_rise(self) -> int:
        return max((max(r.rises, default=0) for r in self.runs), default=0)

    @property
    def rose_by_more_than_one(self) -> int:
        return sum(sum(1 for x in r.rises if x > 1) for r in self.runs)

    @property
    def dlq_unfailed(self) -> int:
        return sum(r.dlq_unfailed for r in self.runs)

    @property
    def orphaned(self) -> int:
        return sum(r.orphaned for r in self.runs)

    @property
    def stops_with_orphans(self) -> int:
        return sum(1 for r in self.runs if r.orphaned)

    @property
    def handover(self) -> list[float]:
        return [d for r in self.runs for d in r.handover_delays]

    @property
    def late_stranded(self) -> int:
        return sum(r.late_stranded for r in self.runs)

    @property
    def unhandled(self) -> int:
        return sum(r.unhandled for r in self.runs)

    @property
    def idle_polls(self) -> list[int]:
        return [p for r in self.runs for p in r.idle_polls]

    def stat(self, name: str) -> int:
        return sum(r.stats[name] for r in self.runs)


def _scenario_table(summaries: list[Summary]) -> list[str]:
    scenario = summaries[0].scenario
    seeds = len(summaries[0].runs)
    lines = [
        f"### {scenario.key}) {scenario.title} ({seeds} seeds)",
        "",
        "| policy | stop s, p50 / max | receives after t0 | rise max | rose > 1 | "
        "DLQ, not failed 3 times | orphaned deliveries (stops) | handover s, p50 / max (n) | "
        "late stranded | unhandled at end | aborted polls | cut at grace | unflushed |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        stops = s.stop_times
        handover = s.handover
        lines.append(
            f"| {s.policy.name} | {_fmt(_p50(stops))} / {_fmt(max(stops))} | "
            f"{s.receives_after_t0} | {s.max_rise} | {s.rose_by_more_than_one} | "
            f"{s.dlq_unfailed} | {s.orphaned} ({s.stops_with_orphans}) | "
            f"{_fmt(_p50(handover), 1)} / {_fmt(max(handover, default=math.nan), 1)} "
            f"({len(handover)}) | {s.late_stranded} | {s.unhandled} | "
            f"{s.stat('aborted_polls')} | {s.stat('cancelled_at_grace')} | {s.stat('unflushed')} |"
        )
    lines += [
        "",
        "| policy | polls in flight while it held nothing, before t0 (min-max) | samples | "
        "polls in flight at t0 (a) | stop, wall ms p50 / max |",
        "|---|---|---:|---|---|",
    ]
    for s in summaries:
        polls = s.idle_polls
        at_t0 = [r.polls_at_t0 for r in s.runs if r.polls_at_t0 is not None]
        walls = [r.stop_wall * 1000 for r in s.runs]
        lines.append(
            f"| {s.policy.name} | {_span(polls)} | {len(polls)} | {_span(at_t0)} | "
            f"{_fmt(_p50(walls))} / {_fmt(max(walls))} |"
        )
    return lines


def _requirements(by_policy: dict[str, list[Summary]]) -> tuple[list[str], dict[str, list[str]]]:
    lines = [
        "### Requirements, per policy (all scenarios run)",
        "",
        "| policy | no receive after t0 | receive count +1 at most per stop | idle stop "
        "< 10 ms (scenario a, virtual) | one poll in flight when idle | no healthy message "
        "dead-lettered | orphaned deliveries, all scenarios | handover s, max |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    failures: dict[str, list[str]] = {}
    for name, summaries in by_policy.items():
        receives = sum(s.receives_after_t0 for s in summaries)
        over = sum(s.rose_by_more_than_one for s in summaries)
        idle = [s for s in summaries if s.scenario.key == "a"]
        idle_max = max((max(s.stop_times) for s in idle), default=math.nan)
        polls = [p for s in summaries for p in s.idle_polls] + [
            r.polls_at_t0 for s in summaries for r in s.runs if r.polls_at_t0 is not None
        ]
        dlq = sum(s.dlq_unfailed for s in summaries)
        orphaned = sum(s.orphaned for s in summaries)
        handover = max((d for s in summaries for d in s.handover), default=math.nan)
        failed: list[str] = []
        if receives:
            failed.append(f"{receives} ReceiveMessage after t0")
        if over:
            failed.append(f"{over} receive counts rose by more than 1")
        if idle and not idle_max < IDLE_STOP_LIMIT:
            failed.append(f"idle stop up to {idle_max:.2f} s")
        if polls and set(polls) != {1}:
            failed.append(f"{min(polls)}-{max(polls)} polls in flight when idle")
        if dlq:
            failed.append(f"{dlq} healthy messages dead-lettered")
        failures[name] = failed

        def mark(ok: bool, detail: str) -> str:
            return ("yes" if ok else "**no**") + (f" ({detail})" if detail else "")

        lines.append(
            f"| {name} | {mark(not receives, str(receives) if receives else '')} | "
            f"{mark(not over, f'{over} rose by >1' if over else '')} | "
            f"{mark(not idle or idle_max < IDLE_STOP_LIMIT, f'max {_fmt(idle_max, 3)} s')} | "
            f"{mark(not polls or set(polls) == {1}, f'{min(polls, default=0)}-{max(polls, default=0)}')} | "
            f"{mark(not dlq, str(dlq) if dlq else '')} | {orphaned} | {_fmt(handover, 1)} |"
        )
    return lines, failures


def _choice(by_policy: dict[str, list[Summary]], failures: dict[str, list[str]]) -> list[str]:
    def key(name: str) -> tuple[int, int, float, float]:
        summaries = by_policy[name]
        orphaned = sum(s.orphaned for s in summaries)
        late = sum(s.late_stranded for s in summaries)
        handover = [d for s in summaries for d in s.handover]
        stops = [t for s in summaries for t in s.stop_times]
        return (orphaned, late, max(handover, default=0.0), _p50(stops))

    meeting = [name for name, failed in failures.items() if not failed]
    keys = [s.scenario.key for s in next(iter(by_policy.values()))]
    lines = [
        "### Chosen default",
        "",
        "Per scenario: orphaned deliveries; handover p50 / max, s; first consumer's stop "
        "p50 / max, s.",
        "",
        "| policy | "
        + " | ".join(f"{k}) orphaned | {k}) handover | {k}) stop" for k in keys)
        + " |",
        "|---|" + "---:|---|---|" * len(keys),
    ]
    for name, summaries in by_policy.items():
        cells = []
        for s in summaries:
            handover = s.handover
            cells.append(
                f"{s.orphaned} | {_fmt(_p50(handover), 1)} / "
                f"{_fmt(max(handover, default=math.nan), 1)} | "
                f"{_fmt(_p50(s.stop_times))} / {_fmt(max(s.stop_times))}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if not meeting:
        lines.append(
            "No policy met every requirement in this run; see the table above for what each missed."
        )
        return lines
    best = min(meeting, key=key)
    o, late, handover, stop = key(best)
    lines.append(
        f"Policies that met every requirement: {', '.join(meeting)}. Ranked by orphaned "
        "deliveries (messages hidden for a whole visibility timeout by a poll of ours that "
        "nobody reads), then messages sent after t0 handled late, then the longest handover, "
        f"then the median stop: **{best}** ({o} orphaned deliveries over all stops, {late} "
        f"late, longest handover {handover:.1f} s, median stop {stop:.2f} s)."
    )
    for name, failed in failures.items():
        if failed:
            lines.append(f"- {name}: fails: {'; '.join(failed)}.")
    for name in meeting:
        if name == best:
            continue
        o2, late2, handover2, stop2 = key(name)
        lines.append(
            f"- {name}: {o2} orphaned deliveries, {late2} late, longest handover "
            f"{handover2:.1f} s, median stop {stop2:.2f} s."
        )
    default = "land + cover"
    lines.append("")
    if best == default:
        lines.append(
            f'The code\'s default (`poll_on_stop="land"` with the cover) is **{default}**: the '
            "figures agree with it."
        )
    else:
        lines.append(
            f'The code\'s default is **{default}** (`poll_on_stop="land"` with the cover); by '
            f"these figures **{best}** is better (ranked by orphaned deliveries, then late "
            "messages, then the longest handover, then the median stop time)."
        )
    return lines


def report(results: dict[tuple[str, str], list[RunResult]], seeds: int, took: float) -> str:
    scenarios = sorted({k[0] for k in results})
    policies = [p for p in POLICIES if any(k[1] == p.name for k in results)]
    lines = [
        "## Stop policy: stranded messages, receive counts and stop time",
        "",
        f"`python benchmarks/stop_policy.py --seeds {seeds} --scenarios {' '.join(scenarios)}` "
        f"({took:.0f} s wall): Python {platform.python_version()}, trio {trio.__version__}, "
        f"trio_sqs {trio_sqs.__version__}, in-memory SQS on `MockClock(autojump_threshold=0)` "
        "(all times virtual unless marked wall).",
        "",
        "- *release at 0* rows: `Leases.cover` patched to do nothing on the first consumer, "
        "i.e. the release rule before the rewrite (everything handed back at stop visible at "
        "once). *wait for polls*: emulated (the first consumer's `Polling.stop` never aborts, "
        "`Polling.abort` does nothing, `flush_timeout=25`).",
        "- **stop s**: from `stop()` (t0) to the end of the `async with` block. **receives "
        "after t0**: ReceiveMessage requests the first consumer put on the wire after t0. "
        "**rise**: a message's receive count at the end (or at its last handler call) minus its "
        "handler calls, both consumers; **rose > 1**: messages whose rise exceeded 1 (one stop "
        "per run). **DLQ, not failed 3 times**: messages dead-lettered that no handler failed 3 "
        "times. **orphaned deliveries**: `queue.orphaned_deliveries` (messages taken by long "
        "polls whose client was gone), in how many stops. **handover**: for messages sent "
        "before t0 and not completed by the first consumer, from t0 to their completion by the "
        "second (which starts at t0 + 1 s: 1 s is the floor). **late stranded**: messages sent "
        "after t0 completed more than 5 s after they were sent. **unhandled at end**: still in "
        "the queue at t0 + 60 s.",
        "",
    ]
    by_policy: dict[str, list[Summary]] = {p.name: [] for p in policies}
    for key in scenarios:
        summaries = [
            Summary(p, SCENARIOS[key], results[(key, p.name)])
            for p in policies
            if (key, p.name) in results
        ]
        for s in summaries:
            by_policy[s.policy.name].append(s)
        lines += _scenario_table(summaries)
        lines.append("")
    requirement_lines, failures = _requirements(by_policy)
    lines += requirement_lines
    lines.append("")
    lines += _choice(by_policy, failures)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per scenario (default 20)")
    parser.add_argument("--quick", action="store_true", help="5 seeds")
    parser.add_argument(
        "--scenarios", nargs="+", choices=sorted(SCENARIOS), default=sorted(SCENARIOS)
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "stop_policy.md",
        help="where the report is written (default benchmarks/results/stop_policy.md)",
    )
    args = parser.parse_args(argv)
    seeds = 5 if args.quick else args.seeds
    # The handlers of these scenarios fail on purpose: keep the consumers' logs quiet.
    logging.getLogger("trio_sqs").setLevel(logging.CRITICAL + 1)
    began = time.perf_counter()
    results: dict[tuple[str, str], list[RunResult]] = {}
    for key in args.scenarios:
        for policy in POLICIES:
            runs = []
            for seed in range(1, seeds + 1):
                runs.append(run_one(SCENARIOS[key], policy, seed))
            results[(key, policy.name)] = runs
            print(f"  {key}: {policy.name}: {seeds} runs", file=sys.stderr)
    text = report(results, seeds, time.perf_counter() - began)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
