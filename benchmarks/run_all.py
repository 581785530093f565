"""Every consumer benchmark in one go: trio_sqs against aiobotocore and boto3 baselines.

Run: ``python benchmarks/run_all.py [--quick] [--out DIR] [--only SCENARIO ...] [--no-pin]``
(with the ``bench`` extra installed: ``pip install -e '.[bench]'``). It writes ``results.md``
(the tables), ``results.png`` (the chart) and ``results.json`` (every run's raw figures) into
``benchmarks/results/`` and prints the Markdown on stdout; progress goes to stderr.

One SQS server, trio_sqs's in-memory SQS (``python -m trio_sqs.testing``, see
``bench_common.FakeSQSServer``), runs for the whole invocation as its own process.
Each consumer run is a fresh subprocess (``consumer_<name>.py``) on a fresh queue, so CPU time,
peak RSS and exit time are per process. The consumers are pinned to CPU 0, the server and this
script to CPU 1 (``os.sched_setaffinity``), so the server never competes with the consumer it
serves. Within each scenario the consumers are interleaved (a b c, b c a, c a b, ...) so
that drifts of a shared, noisy machine hit all alike; figures are medians with the range over
runs, and ratios are paired by round.

The consumers: trio_sqs (``consumer_trio_sqs.py``); aiobotocore on asyncio twice, the naive
consumer that cancels everything on SIGTERM (``consumer_aiobotocore.py``, the baseline the
goals name) and a graceful one that stops receiving, lets its handlers finish and releases what
it holds (``consumer_aiobotocore_graceful.py``); aiobotocore on Trio through its httpx session,
graceful too (``consumer_aiobotocore_trio.py``; left out when httpx is not installed); boto3 with
a thread pool (``consumer_boto3.py``).

Scenarios (every consumer uses batch 10, WaitTimeSeconds 20, VisibilityTimeout 30,
concurrency 10 and the same handler):

- drain: N preloaded messages (20,000; --quick 5,000), no-op handler. Messages/s and consumer CPU
  from "ready" (set up, about to consume) to "all N deleted"; SQS requests per 1,000 messages
  from the server's counters (``GET /stats``, per queue); peak RSS (VmHWM: see bench_common.py);
  the server's own CPU per request.
- steady: 10 messages/s produced for 60 s (--quick 15 s), 200 ms handlers. Requests and CPU per
  1,000 messages: the cost of being idle most of the time.
- idle shutdown: an empty queue; SIGTERM while the consumer waits in a 20 s long poll; the time
  from ``os.kill`` to the process's exit, measured by this script (pidfd), 20 runs (--quick 5).
- loaded shutdown: 200 preloaded messages, 2 s handlers (grace 10 s for trio_sqs and the
  graceful aiobotocore consumers); SIGTERM while handlers run; time to exit, and the messages the
  server still holds invisible right after.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_common import BenchError, FakeSQSServer, message_entry

HERE = Path(__file__).resolve().parent
CONSUMERS = ("trio_sqs", "aiobotocore", "aiobotocore_graceful", "aiobotocore_trio", "boto3")
# What trio_sqs's ratios are computed against, in the tables' order; the goals name the naive
# aiobotocore consumer ("aiobotocore").
RATIO_BASES = ("aiobotocore", "aiobotocore_graceful", "aiobotocore_trio", "boto3")
# The idle-shutdown scenario also runs trio_sqs's consumer with gc.freeze() before the
# interpreter exits (bench_common.finish): what one line in an application changes.
FREEZE = "trio_sqs_freeze"
# The drain also runs trio_sqs's consumer as without the speed extra: on h11 (not httptools) and
# the standard library's json (not orjson); "trio_sqs" uses both of the extra's when they are
# installed (check_dependencies says).
H11 = "trio_sqs_h11"
SCRIPTS = {
    "trio_sqs": ("consumer_trio_sqs.py", ()),
    "aiobotocore": ("consumer_aiobotocore.py", ()),
    "aiobotocore_graceful": ("consumer_aiobotocore_graceful.py", ()),
    "aiobotocore_trio": ("consumer_aiobotocore_trio.py", ()),
    "boto3": ("consumer_boto3.py", ()),
    FREEZE: ("consumer_trio_sqs.py", ("--freeze-at-exit",)),
    H11: ("consumer_trio_sqs.py", ("--http-parser", "h11", "--json", "json")),
}
LABELS = {
    "trio_sqs": "trio_sqs",
    "aiobotocore": "aiobotocore\n(naive)",
    "aiobotocore_graceful": "aiobotocore\n(graceful)",
    "aiobotocore_trio": "aiobotocore\nhttpx, Trio",
    "boto3": "boto3 +\nthreads",
    FREEZE: "trio_sqs +\ngc.freeze()",
    H11: "trio_sqs\n(h11)",
}
#: Column headers of the tables.
DETAILS = {
    "trio_sqs": "trio_sqs open_consumer (Trio, its own HTTP/1.1 transport)",
    "aiobotocore": "aiobotocore (naive): asyncio tasks + semaphore (aiohttp), cancels on stop",
    "aiobotocore_graceful": "aiobotocore (graceful): the same, graceful stop and release",
    "aiobotocore_trio": "aiobotocore + httpx session on Trio (graceful)",
    "boto3": "boto3, ThreadPoolExecutor (urllib3)",
    FREEZE: "trio_sqs, gc.freeze() before exit",
    H11: "trio_sqs on h11 and json (without the speed extra)",
}
#: Short names, for the ratio columns.
SHORT = {
    "aiobotocore": "aiobotocore (naive)",
    "aiobotocore_graceful": "aiobotocore (graceful)",
    "aiobotocore_trio": "aiobotocore on Trio",
    "boto3": "boto3",
}
COLORS = {
    "trio_sqs": "#2a7ab9",
    "aiobotocore": "#e08a1e",
    "aiobotocore_graceful": "#c0392b",
    "aiobotocore_trio": "#8e5fb0",
    "boto3": "#5a9e4b",
    FREEZE: "#7fb3de",
    H11: "#5b8fc7",
}
PRODUCER_OPERATIONS = {"CreateQueue", "SendMessage", "SendMessageBatch"}
SCENARIOS = ("drain", "steady", "idle", "loaded")
CONSUMER_CPU, SERVER_CPU = 0, 1


@dataclass(frozen=True)
class Plan:
    quick: bool
    drain_messages: int
    drain_runs: int
    steady_seconds: float
    steady_runs: int
    idle_runs: int
    loaded_runs: int
    steady_rate: float = 10.0
    steady_handler: float = 0.2
    loaded_handler: float = 2.0
    loaded_preload: int = 200
    grace: float = 10.0
    concurrency: int = 10
    batch: int = 10
    wait: int = 20
    visibility: int = 30


def make_plan(quick: bool) -> Plan:
    if quick:
        return Plan(True, 5_000, 2, 15.0, 2, 5, 2)
    return Plan(False, 20_000, 5, 60.0, 3, 20, 5)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the server ----------------------------------------------------------------------------------


class Server(FakeSQSServer):
    """The SQS server of the whole run (``python -m trio_sqs.testing``) and its queues."""

    def __init__(self, cpu: int | None) -> None:
        super().__init__(cpu)
        #: Messages this script sent to each queue (messages leave a queue only when deleted).
        self.sent: dict[str, int] = {}

    def new_queue(self, scenario: str, consumer: str) -> tuple[str, str]:
        name = f"{scenario}-{consumer}-{uuid.uuid4().hex[:10]}"
        self.sent[name] = 0
        return name, self.create_queue(name)

    def preload(self, name: str, url: str, count: int) -> None:
        self.send(url, 0, count)
        self.sent[name] += count

    def send_one(self, name: str, url: str, index: int) -> None:
        self.call("SendMessage", {"QueueUrl": url, **message_entry(index)})
        self.sent[name] += 1

    def remaining(self, queue: dict[str, Any]) -> int:
        return int(queue["visible"] + queue["in_flight"] + queue["delayed"])

    def deleted(self, name: str, queue: dict[str, Any] | None = None) -> int:
        """Messages deleted from the queue: those sent less those still there (no retention
        period, purge or redrive in these runs)."""
        if queue is None:
            queue = self.queue_stats(name)
        return self.sent[name] - self.remaining(queue)


def consumer_requests(queue: dict[str, Any]) -> int:
    """Requests the consumer made on its queue (this script only creates and sends)."""
    return sum(n for op, n in queue["requests"].items() if op not in PRODUCER_OPERATIONS)


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- a consumer process ----------------------------------------------------------------------------


class Child:
    """One consumer process: its JSON events on stdout, its exit observed through a pidfd."""

    def __init__(
        self,
        consumer: str,
        server: Server,
        queue: str,
        plan: Plan,
        *,
        handler_seconds: float = 0.0,
        expect: int = 0,
        cpu: int | None,
        env: dict[str, str],
    ) -> None:
        command = [
            sys.executable,
            str(HERE / SCRIPTS[consumer][0]),
            *SCRIPTS[consumer][1],
            "--endpoint",
            server.endpoint,
            "--queue",
            queue,
            "--concurrency",
            str(plan.concurrency),
            "--batch",
            str(plan.batch),
            "--wait",
            str(plan.wait),
            "--visibility",
            str(plan.visibility),
            "--handler-seconds",
            str(handler_seconds),
            "--expect",
            str(expect),
            "--grace",
            str(plan.grace),
        ]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self.consumer = consumer
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd=HERE
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._pidfd = os.pidfd_open(self.proc.pid)
        self._buffer = b""
        self._eof = False

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-1500:]

    def _fail(self, message: str) -> BenchError:
        return BenchError(f"{self.consumer}: {message}\n--- its stderr ---\n{self.stderr_tail()}")

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next JSON line on the consumer's stdout whose event is ``name``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                payload: dict[str, Any] = json.loads(line)
                if payload.get("event") == name:
                    return payload
            if self._eof:
                raise self._fail(f"exited (code {self.proc.poll()}) before reporting {name!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"no {name!r} within {timeout:.0f} s")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                data = os.read(self._fd, 65536)
                self._eof = not data
                self._buffer += data

    def signal_and_time_exit(self, signum: int, timeout: float) -> float:
        """Send ``signum``; return the seconds until the process exited."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        start = time.perf_counter()
        os.kill(self.proc.pid, signum)
        exited = poller.poll(timeout * 1000)
        took = time.perf_counter() - start
        if not exited:
            raise self._fail(f"still running {timeout:.0f} s after signal {signum}")
        return took

    def wait_exit(self, timeout: float) -> bool:
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self._pidfd)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def check_exit_code(self) -> None:
        code = self.proc.wait()
        if code != 0:
            raise self._fail(f"exited with code {code}")


@contextmanager
def child(*args: Any, **kwargs: Any) -> Iterator[Child]:
    process = Child(*args, **kwargs)
    try:
        yield process
    finally:
        process.close()


# -- the scenarios -------------------------------------------------------------------------------


@dataclass
class Context:
    server: Server
    plan: Plan
    env: dict[str, str]
    cpu: int | None
    rng: random.Random
    #: The consumers of this invocation (CONSUMERS less those whose dependencies are missing).
    consumers: tuple[str, ...] = CONSUMERS


def run_drain(ctx: Context, consumer: str) -> dict[str, Any]:
    n = ctx.plan.drain_messages
    name, url = ctx.server.new_queue("drain", consumer)
    ctx.server.preload(name, url, n)
    before = ctx.server.server_stats()["cpu_seconds"]
    with child(consumer, ctx.server, name, ctx.plan, expect=n, cpu=ctx.cpu, env=ctx.env) as c:
        c.event("ready", 60)
        report = c.event("report", 60 + n / 100)
        if not c.wait_exit(5):
            c.proc.kill()  # done and reported; nothing more to measure
        server_cpu = ctx.server.server_stats()["cpu_seconds"] - before
    queue = ctx.server.queue_stats(name)
    if ctx.server.deleted(name, queue) != n or queue["deliveries"] < n:
        raise BenchError(f"{consumer}: drain left the queue inconsistent: {queue}")
    cpu = report["cpu_user"] + report["cpu_system"]
    requests = consumer_requests(queue)
    return {
        "messages_per_s": n / report["wall"],
        "cpu_ms_per_1000": cpu * 1000 / (n / 1000),
        "requests_per_1000": requests / (n / 1000),
        "peak_rss_mib": report["maxrss_kib"] / 1024,
        "server_us_per_request": server_cpu * 1e6 / max(1, requests),
        "server_busy": server_cpu / report["wall"],
        "wall_s": report["wall"],
        "cpu_s": cpu,
        "cpu_process_s": report["cpu_process"],
        "requests": queue["requests"],
    }


def run_steady(ctx: Context, consumer: str) -> dict[str, Any]:
    plan = ctx.plan
    name, url = ctx.server.new_queue("steady", consumer)
    total = round(plan.steady_rate * plan.steady_seconds)
    with child(
        consumer,
        ctx.server,
        name,
        plan,
        handler_seconds=plan.steady_handler,
        cpu=ctx.cpu,
        env=ctx.env,
    ) as c:
        c.event("ready", 60)
        start = time.monotonic()
        for i in range(total):
            pause = start + i / plan.steady_rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            ctx.server.send_one(name, url, i)
        wait_until(
            lambda: ctx.server.deleted(name) >= total,
            15,
            "every produced message to be deleted",
            every=0.1,
        )
        c.proc.send_signal(signal.SIGUSR1)
        report = c.event("report", 10)
    queue = ctx.server.queue_stats(name)
    cpu = report["cpu_user"] + report["cpu_system"]
    return {
        "messages": total,
        "requests_per_1000": consumer_requests(queue) / (total / 1000),
        "receives_per_1000": queue["requests"].get("ReceiveMessage", 0) / (total / 1000),
        "cpu_ms_per_1000": cpu * 1000 / (total / 1000),
        "cpu_percent": 100 * cpu / report["wall"],
        "peak_rss_mib": report["maxrss_kib"] / 1024,
        "requests": queue["requests"],
    }


def run_idle(ctx: Context, consumer: str) -> dict[str, Any]:
    name, _ = ctx.server.new_queue("idle", consumer)
    with child(consumer, ctx.server, name, ctx.plan, cpu=ctx.cpu, env=ctx.env) as c:
        c.event("ready", 60)
        wait_until(lambda: ctx.server.queue_stats(name)["waiting_polls"] >= 1, 20, "a long poll")
        time.sleep(ctx.rng.uniform(0.5, 1.5))  # well inside the 20 s poll
        took = c.signal_and_time_exit(signal.SIGTERM, ctx.plan.wait + 15)
        c.check_exit_code()
        report = c.event("report", 5)
    stop_ms = report["stop_ms"]
    return {
        "exit_ms": took * 1000,
        "stop_ms": stop_ms,
        "after_ms": took * 1000 - stop_ms,
        "received": report["received"],
    }


def run_loaded(ctx: Context, consumer: str) -> dict[str, Any]:
    plan = ctx.plan
    name, url = ctx.server.new_queue("loaded", consumer)
    ctx.server.preload(name, url, plan.loaded_preload)
    with child(
        consumer,
        ctx.server,
        name,
        plan,
        handler_seconds=plan.loaded_handler,
        cpu=ctx.cpu,
        env=ctx.env,
    ) as c:
        c.event("ready", 60)
        wait_until(
            lambda: ctx.server.queue_stats(name)["in_flight"] >= plan.concurrency,
            20,
            "handlers to run",
        )
        time.sleep(ctx.rng.uniform(0.2, 1.0))  # handlers are mid-way
        took = c.signal_and_time_exit(signal.SIGTERM, plan.grace + plan.wait + 15)
        queue = ctx.server.queue_stats(name)  # right after exit
        c.check_exit_code()
        report = c.event("report", 5)
    return {
        "exit_ms": took * 1000,
        "stop_ms": report["stop_ms"],
        "left_invisible": queue["in_flight"],
        "completed": report["completed"],
        "cancelled": report["cancelled"],
        "deleted": ctx.server.deleted(name, queue),
        # Made visible again at the stop (ChangeMessageVisibility 0), as the consumer counted
        # them; None for the consumers that release nothing.
        "released": report.get("released"),
    }


RUNNERS: dict[str, Callable[[Context, str], dict[str, Any]]] = {
    "drain": run_drain,
    "steady": run_steady,
    "idle": run_idle,
    "loaded": run_loaded,
}


def runs_of(plan: Plan, scenario: str) -> int:
    return {
        "drain": plan.drain_runs,
        "steady": plan.steady_runs,
        "idle": plan.idle_runs,
        "loaded": plan.loaded_runs,
    }[scenario]


def consumers_of(ctx: Context, scenario: str) -> tuple[str, ...]:
    if scenario == "idle":
        return (*ctx.consumers, FREEZE)
    if scenario == "drain":
        return (*ctx.consumers, H11)
    return ctx.consumers


Results = dict[str, dict[str, list[dict[str, Any]]]]


def run_scenarios(ctx: Context, scenarios: Sequence[str]) -> Results:
    results: Results = {s: {c: [] for c in consumers_of(ctx, s)} for s in scenarios}
    for scenario in scenarios:
        runs = runs_of(ctx.plan, scenario)
        consumers = consumers_of(ctx, scenario)
        for round_index in range(runs):
            shift = round_index % len(consumers)
            for consumer in consumers[shift:] + consumers[:shift]:
                started = time.monotonic()
                try:
                    figures = RUNNERS[scenario](ctx, consumer)
                    figures["round"] = round_index
                except BenchError as exc:
                    log(f"[{scenario} {round_index + 1}/{runs}] {consumer}: FAILED: {exc}")
                    figures = {"round": round_index, "error": str(exc).splitlines()[0]}
                results[scenario][consumer].append(figures)
                shown = {
                    k: round(v, 2) if isinstance(v, float) else v
                    for k, v in figures.items()
                    if not isinstance(v, dict)
                }
                log(
                    f"[{scenario} {round_index + 1}/{runs}] {consumer} "
                    f"({time.monotonic() - started:.1f} s): {shown}"
                )
    return results


# -- summaries -----------------------------------------------------------------------------------


def values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The figure ``key`` of every run that did not fail and has it (not None)."""
    return [float(r[key]) for r in runs if "error" not in r and r.get(key) is not None]


def fmt(number: float, digits: int = 0) -> str:
    return f"{number:,.{digits}f}"


def spread(xs: list[float], digits: int = 0) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(statistics.median(xs), digits)} ({fmt(min(xs), digits)}-{fmt(max(xs), digits)})"


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (with 20 runs, p99 is the slowest run)."""
    ordered = sorted(xs)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def paired_ratios(
    results: dict[str, list[dict[str, Any]]], key: str, other: str, ours_name: str = "trio_sqs"
) -> list[float]:
    ours = {r["round"]: r[key] for r in results[ours_name] if "error" not in r}
    theirs = {r["round"]: r[key] for r in results[other] if "error" not in r}
    return [ours[k] / theirs[k] for k in sorted(ours.keys() & theirs.keys()) if theirs[k]]


def ratio_cell(results: dict[str, list[dict[str, Any]]], key: str, other: str) -> str:
    ratios = paired_ratios(results, key, other)
    return spread(ratios, 2) if ratios else "n/a"


def errors_note(results: Results) -> list[str]:
    notes = []
    for scenario, by_consumer in results.items():
        for consumer, runs in by_consumer.items():
            failed = [r for r in runs if "error" in r]
            if failed:
                notes.append(
                    f"- {scenario}, {consumer}: {len(failed)} of {len(runs)} runs failed "
                    f"(first: {failed[0]['error']}); they are left out of the figures."
                )
    return notes


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: str


def goals(results: Results, plan: Plan) -> list[Goal]:
    out: list[Goal] = []
    if "drain" in results:
        drain = results["drain"]
        for name, ours_name, key, target, met in (
            (
                "consumer CPU per message at saturation (drain), speed extra (httptools)",
                "trio_sqs",
                "cpu_ms_per_1000",
                "≤ 0.4x aiobotocore",
                lambda x: x <= 0.4,
            ),
            (
                "consumer CPU per message at saturation (drain), without it (h11)",
                H11,
                "cpu_ms_per_1000",
                "≤ 0.5x aiobotocore",
                lambda x: x <= 0.5,
            ),
            (
                "drain throughput, messages/s",
                "trio_sqs",
                "messages_per_s",
                "≥ 1.3x aiobotocore",
                lambda x: x >= 1.3,
            ),
        ):
            if ours_name not in drain:
                continue
            ratios = paired_ratios(drain, key, "aiobotocore", ours_name)
            if not ratios:
                continue
            median = statistics.median(ratios)
            measured = (
                f"{median:.2f}x aiobotocore (naive; rounds {min(ratios):.2f}-{max(ratios):.2f})"
            )
            for other in ("aiobotocore_graceful", "aiobotocore_trio"):
                if other in drain and (others := paired_ratios(drain, key, other, ours_name)):
                    measured += f"; {statistics.median(others):.2f}x {SHORT[other]}"
            out.append(Goal(name, target, measured, "yes" if met(median) else "**no**"))
        requests = values(drain["trio_sqs"], "requests_per_1000")
        if requests:
            median = statistics.median(requests)
            out.append(
                Goal(
                    "SQS requests per 1,000 messages at saturation (drain)",
                    "≈ 200",
                    f"{median:.1f}",
                    "yes" if median <= 220 else "**no**",
                )
            )
    if "idle" in results:
        idle = results["idle"]
        exits = values(idle["trio_sqs"], "exit_ms")
        if exits:
            p50, p99 = percentile(exits, 50), percentile(exits, 99)
            measured = f"p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(exits)} runs)"
            stops = values(idle["trio_sqs"], "stop_ms")
            if stops:
                measured += f"; own stop p50 {percentile(stops, 50):.1f} ms"
            frozen = values(idle.get(FREEZE, []), "exit_ms")
            if frozen:
                measured += (
                    f"; with gc.freeze() at exit p50 {percentile(frozen, 50):.0f} ms, "
                    f"p99 {percentile(frozen, 99):.0f} ms"
                )
            out.append(
                Goal(
                    "idle shutdown, SIGTERM to process exit",
                    "< 50 ms",
                    measured,
                    "yes" if p99 < 50 else ("p50 only" if p50 < 50 else "**no**"),
                )
            )
    if "loaded" in results:
        loaded = results["loaded"]
        left = values(loaded["trio_sqs"], "left_invisible")
        if left:
            measured = f"max {max(left):.0f} over {len(left)} runs"
            others = [
                f"{SHORT[c]}: max {max(xs):.0f}"
                for c in RATIO_BASES
                if c in loaded and (xs := values(loaded[c], "left_invisible"))
            ]
            if others:
                measured += f" ({'; '.join(others)})"
            out.append(
                Goal(
                    "messages left invisible after a graceful stop (loaded)",
                    "0",
                    measured,
                    "yes" if max(left) == 0 else "**no**",
                )
            )
    out.append(
        Goal(
            "flat memory over a million messages",
            "flat RSS",
            "not part of run_all: `python benchmarks/soak_memory.py`",
            "see README",
        )
    )
    return out


def versions() -> str:
    names = (
        "trio",
        "h11",
        "httptools",
        "orjson",
        "httpx",
        "httpcore",
        "anyio",
        "botocore",
        "aiobotocore",
        "aiohttp",
        "boto3",
        "urllib3",
    )
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join(found)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(results: Results, plan: Plan, meta: dict[str, Any]) -> str:
    lines = [
        "# Consumer benchmarks: trio_sqs against aiobotocore and boto3",
        "",
        f"`{meta['command']}` on {meta['date']} ({meta['duration_min']:.0f} min"
        f"{', quick' if plan.quick else ''}).",
        "",
        f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after (other work shares these CPUs: absolute figures are "
        "indicative, the ratios of one run are what to compare).",
        f"- {meta['pinning']}",
        "- Server: trio_sqs's in-memory SQS (`python -m trio_sqs.testing`), its own process; "
        "requests counted by it, per queue (`GET /stats`).",
        f"- {versions()}.",
        f"- Every consumer: batch {plan.batch}, WaitTimeSeconds {plan.wait}, VisibilityTimeout "
        f"{plan.visibility}, concurrency {plan.concurrency}, the same handler; each run is its "
        "own process on a fresh queue; consumers interleaved round by round. Figures: median "
        "(min-max) over runs; ratios paired by round.",
        "",
        "## Goals",
        "",
        "| goal | target | trio_sqs | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {g.name} | {g.target} | {g.measured} | {g.met} |" for g in goals(results, plan)]
    lines += [
        "",
        "The goals' ratios are against the naive aiobotocore consumer (it cancels everything on "
        "SIGTERM), the baseline the goals were set against; the tables also give them against "
        "the graceful one (same consumption, graceful stop and release) and aiobotocore on Trio "
        "(its httpx session).",
    ]

    def shown(scenario: str) -> list[str]:
        extra = [H11] if H11 in results[scenario] else []
        return [*(c for c in CONSUMERS if c in results[scenario]), *extra]

    def bases(scenario: str) -> list[str]:
        return [c for c in RATIO_BASES if c in results[scenario]]

    def head(scenario: str, ratios: bool = True) -> list[str]:
        columns = [DETAILS[c] for c in shown(scenario)]
        if ratios:
            columns += [f"trio_sqs / {SHORT[c]}" for c in bases(scenario)]
        return ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]

    def row(scenario: str, title: str, key: str, digits: int = 0) -> str:
        by_consumer = results[scenario]
        cells = [spread(values(by_consumer[c], key), digits) for c in shown(scenario)]
        cells += [ratio_cell(by_consumer, key, c) for c in bases(scenario)]
        return f"| {title} | " + " | ".join(cells) + " |"

    if "drain" in results:
        drain = results["drain"]
        lines += [
            "",
            f"## Drain: {plan.drain_messages:,} preloaded messages, no-op handler "
            f"({plan.drain_runs} runs each)",
            "",
            *head("drain"),
        ]
        rows = [
            ("messages/s", "messages_per_s", 0),
            ("consumer CPU, ms per 1,000 messages", "cpu_ms_per_1000", 0),
            ("SQS requests per 1,000 messages", "requests_per_1000", 1),
            ("peak RSS, MiB", "peak_rss_mib", 1),
            ("server CPU per consumer request, µs", "server_us_per_request", 0),
        ]
        lines += [row("drain", title, key, digits) for title, key, digits in rows]
        busy = [v * 100 for c in shown("drain") for v in values(drain[c], "server_busy")]
        if busy:
            verdict = (
                "it was not the bottleneck"
                if max(busy) < 80
                else "**it may have been the bottleneck**: compare with care"
            )
            lines += [
                "",
                f"The server was busy {min(busy):.0f}-{max(busy):.0f} % of one CPU during the "
                f"drains (its own process and CPU): {verdict}.",
            ]
    if "steady" in results:
        lines += [
            "",
            f"## Steady: {plan.steady_rate:.0f} messages/s for {plan.steady_seconds:.0f} s, "
            f"{plan.steady_handler * 1000:.0f} ms handlers ({plan.steady_runs} runs each)",
            "",
            *head("steady"),
        ]
        lines += [
            row("steady", title, key, digits)
            for title, key, digits in (
                ("SQS requests per 1,000 messages", "requests_per_1000", 0),
                ("of which ReceiveMessage", "receives_per_1000", 0),
                ("consumer CPU, ms per 1,000 messages", "cpu_ms_per_1000", 0),
                ("consumer CPU, % of one core", "cpu_percent", 2),
                ("peak RSS, MiB", "peak_rss_mib", 1),
            )
        ]
    if "idle" in results:
        idle = results["idle"]
        lines += [
            "",
            f"## Idle shutdown: SIGTERM during a {plan.wait} s long poll, to process exit "
            f"({plan.idle_runs} runs each)",
            "",
            "Measured by the parent: `os.kill` to the exit seen on a pidfd. p99 is "
            "nearest-rank (with 20 runs, the slowest). *Own stop*: from the consumer's signal "
            "handler to its last line (reported by the consumer); *interpreter exit*: the rest, "
            "CPython's finalization after the last line (module teardown, final garbage "
            "collection). The last column is the trio_sqs consumer again with `gc.freeze()` as "
            "its last line.",
            "",
            "| | " + " | ".join(DETAILS[c] for c in idle) + " |",
            "|---|" + "---:|" * len(idle),
        ]
        for title, key, p in (
            ("SIGTERM to exit, p50, ms", "exit_ms", 50),
            ("SIGTERM to exit, p99, ms", "exit_ms", 99),
            ("own stop, p50, ms", "stop_ms", 50),
            ("interpreter exit, p50, ms", "after_ms", 50),
        ):
            cells = []
            for c in idle:
                xs = values(idle[c], key)
                cells.append(fmt(percentile(xs, p), 1 if key == "stop_ms" else 0) if xs else "n/a")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        lines.append(
            "| SIGTERM to exit, min-max, ms | "
            + " | ".join(
                f"{fmt(min(xs))}-{fmt(max(xs))}" if (xs := values(idle[c], "exit_ms")) else "n/a"
                for c in idle
            )
            + " |"
        )
    if "loaded" in results:
        loaded = results["loaded"]
        lines += [
            "",
            f"## Loaded shutdown: SIGTERM while {plan.loaded_handler:.0f} s handlers run "
            f"({plan.loaded_runs} runs each)",
            "",
            f"{plan.loaded_preload} preloaded messages; SIGTERM 0.2-1 s after "
            f"{plan.concurrency} handlers are running. trio_sqs: grace {plan.grace:.0f} s. "
            "aiobotocore (naive): cancels its tasks. aiobotocore (graceful) and aiobotocore on "
            f"Trio: stop receiving, grace {plan.grace:.0f} s for the running handlers, delete "
            "what finished, release the rest (ChangeMessageVisibilityBatch 0). boto3: stop "
            "flag, waits for its pool. *Left invisible*: messages the server still holds in "
            "flight right after the process exited; they come back only when their "
            f"{plan.visibility} s visibility timeout ends. *Released*: as the consumer "
            "counted them (n/a: it releases nothing).",
            "",
            *head("loaded", ratios=False),
        ]
        for title, key in (
            ("time to exit, ms", "exit_ms"),
            ("of which the consumer's own stop, ms", "stop_ms"),
            ("messages left invisible", "left_invisible"),
            ("messages released", "released"),
            ("handlers finished", "completed"),
            ("handlers cut off", "cancelled"),
        ):
            cells = [spread(values(loaded[c], key)) for c in shown("loaded")]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    notes = errors_note(results)
    if notes:
        lines += ["", "## Failed runs", "", *notes]
    lines += ["", "![chart](results.png)", ""]
    return "\n".join(lines)


def chart(results: Results, plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str, str, bool]] = []  # scenario, key, title, log scale
    if "drain" in results:
        panels += [
            ("drain", "messages_per_s", "drain: messages/s (higher is better)", False),
            ("drain", "cpu_ms_per_1000", "drain: CPU ms per 1,000 messages", False),
            ("drain", "requests_per_1000", "drain: SQS requests per 1,000 messages", False),
            ("drain", "peak_rss_mib", "drain: peak RSS, MiB", False),
        ]
    if "steady" in results:
        panels += [
            ("steady", "requests_per_1000", "steady 10/s: requests per 1,000 messages", False),
            ("steady", "cpu_ms_per_1000", "steady 10/s: CPU ms per 1,000 messages", False),
        ]
    if "idle" in results:
        panels.append(("idle", "exit_ms", "idle shutdown: ms to exit (log)", True))
    if "loaded" in results:
        panels += [
            ("loaded", "exit_ms", "loaded shutdown: ms to exit", False),
            ("loaded", "left_invisible", "loaded shutdown: messages left invisible", False),
        ]
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(16, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (scenario, key, title, logscale) in zip(axes.flat, panels, strict=False):
        shown = list(results[scenario])
        for i, consumer in enumerate(shown):
            xs = values(results[scenario][consumer], key)
            if not xs:
                continue
            median = statistics.median(xs)
            ax.bar(
                i,
                median,
                color=COLORS[consumer],
                alpha=0.75,
                yerr=[[median - min(xs)], [max(xs) - median]],
                capsize=6,
            )
            jitter = [i + (k - (len(xs) - 1) / 2) * 0.04 for k in range(len(xs))]
            ax.scatter(jitter, xs, color="black", s=8, zorder=3)
            ax.annotate(
                f"{median:,.0f}" if median >= 10 else f"{median:.1f}",
                (i, median),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=8,
            )
        if logscale:
            ax.set_yscale("log")
            ax.set_ylim(bottom=1)
        ax.set_xticks(range(len(shown)), [LABELS[c] for c in shown], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "trio_sqs vs aiobotocore (naive, graceful, on Trio) vs boto3 "
        "(bars: median; whiskers: min-max; dots: runs)" + (" [quick]" if plan.quick else ""),
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------


def child_environment() -> dict[str, str]:
    """The consumers get fake keys and no AWS configuration of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def check_dependencies() -> tuple[str, ...]:
    """The consumers this environment can run (exits if a required package is missing)."""
    # find_spec, not import: this process forks every consumer and should stay small.
    names = ("trio_sqs", "aiobotocore", "boto3", "matplotlib")
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"run_all.py: missing {', '.join(missing)}; install the extra: "
            "pip install -e '.[bench]' (in a virtualenv of its own if your botocore is newer "
            "than aiobotocore supports)"
        )
    for name, instead in (("httptools", "h11"), ("orjson", "the standard library's json")):
        if importlib.util.find_spec(name) is None:
            log(
                f"{name} is not installed (pip install 'trio-sqs[speed]'): the trio_sqs consumer "
                f"runs on {instead} like trio_sqs_h11"
            )
    if importlib.util.find_spec("httpx") is None:
        log("httpx is not installed: aiobotocore on Trio (its httpx session) is left out")
        return tuple(c for c in CONSUMERS if c != "aiobotocore_trio")
    return CONSUMERS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs (~6 min)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--seed", type=int, default=6, help="seed of the signal timings")
    args = parser.parse_args(argv)
    consumers = check_dependencies()
    plan = make_plan(args.quick)
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    consumer_cpu, server_cpu = (cpus[CONSUMER_CPU], cpus[SERVER_CPU]) if pin else (None, None)
    if server_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})  # this script shares the server's CPU
        pinning = (
            f"Consumers pinned to CPU {consumer_cpu}; the SQS server (and this script, which "
            f"only produces and reads counters) to CPU {server_cpu} (os.sched_setaffinity)."
        )
    else:
        pinning = "Not pinned (--no-pin, or fewer than 2 CPUs)."
    log(pinning)
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    server = Server(server_cpu)
    try:
        ctx = Context(
            server, plan, child_environment(), consumer_cpu, random.Random(args.seed), consumers
        )
        results = run_scenarios(ctx, scenarios)
    finally:
        server.close()
    meta = {
        "command": "python benchmarks/run_all.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration_min": (time.monotonic() - started) / 60,
        "load_before": load_before,
        "load_after": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pinning": pinning,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, plan, meta)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps({"plan": asdict(plan), "meta": meta, "results": results}, indent=1) + "\n"
    )
    chart(results, plan, args.out / "results.png")
    print(text)
    log(f"wrote {args.out / 'results.md'}, results.png and results.json")


if __name__ == "__main__":
    main()
