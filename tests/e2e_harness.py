"""End-to-end harness: the in-memory SQS of ``trio_sqs.testing`` served over HTTP in its own
process, the fault proxy, a producer, and real worker processes (``tests/e2e_worker.py``) that are
signalled at chosen moments.

Every worker talks to the queue server through its own port of the
:class:`~tests.fault_proxy.FaultProxy`, so the proxy knows which worker sent each request. Workers
run with ``--trace`` and report on stdout what they handled (see the docstring of
``tests/e2e_worker.py``); the harness stamps nothing itself that the checks rely on, except the
moment it sent a signal and the moment a process exited. All times are ``time.monotonic()``, shared
by every process on a Linux host.

The checks run on the recorded run afterwards: see ``tests/e2e_checks.py``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import trio

import trio_sqs

from .fault_proxy import FaultPlan, FaultProxy

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "e2e_worker.py"

# The queue counts of GET /stats that hold messages.
QUEUED = ("visible", "in_flight", "delayed")

WORKER_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def queue_server() -> Iterator[str]:
    """trio_sqs's in-memory SQS (``python -m trio_sqs.testing``) in a child process on 127.0.0.1;
    yields its endpoint URL.

    Its own process, so that its event loop does not compete with the proxy's and blur the proxy's
    timestamps. It binds port 0 and prints the URL it got as its first line (no free-port race),
    and exits when its stdin closes, so it cannot outlive the test run. One Trio thread serves
    every request, so SQS actions are atomic, and like SQS a long poll takes a message the moment
    it becomes receivable (sent, released, or back after its lease): no re-check interval.
    """
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_sqs.testing", "--port", "0", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        if not url.startswith("http://"):
            proc.wait(5)
            errors.seek(0)
            raise RuntimeError(f"the queue server did not start: {errors.read().decode()[-2000:]}")
        yield url
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        errors.close()


@dataclass(frozen=True)
class WorkerConfig:
    """Command-line options of one worker process (see ``tests/e2e_worker.py --help``)."""

    concurrency: int = 4
    batch_size: int | None = None
    pollers: int | None = None
    wait_time: int = 20
    visibility_timeout: int = 10
    heartbeat_interval: float | None = None
    grace: float = 1.0
    flush_timeout: float = 1.0
    poll_on_stop: str = "land"
    error_backoff: float | None = None
    handler_seconds: str = "0.05-0.3"
    slow_fraction: float = 0.0
    slow_seconds: float = 0.0
    rss_every: float = 0.0
    log_level: str = "INFO"

    def argv(self) -> list[str]:
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                args += [f"--{f.name.replace('_', '-')}", str(value)]
        return args

    def options(self) -> trio_sqs.ConsumerOptions:
        return trio_sqs.ConsumerOptions(
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            pollers=self.pollers,
            wait_time=self.wait_time,
            visibility_timeout=self.visibility_timeout,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace,
            flush_timeout=self.flush_timeout,
            poll_on_stop=self.poll_on_stop,  # type: ignore[arg-type]
            **({} if self.error_backoff is None else {"error_backoff": self.error_backoff}),
        )

    @property
    def pollers_count(self) -> int:
        return self.options().effective_pollers(False)

    @property
    def shutdown_bound(self) -> float:
        """What the contract allows from SIGTERM to exit: grace + flush timeout + 1 s."""
        return self.grace + self.flush_timeout + 1.0


@dataclass
class Worker:
    """One worker process and everything it reported."""

    tag: str
    config: WorkerConfig
    url: str
    process: Any = None
    launched_at: float = 0.0
    ready_at: float | None = None
    pid: int | None = None
    stopping_at: float | None = None  # the worker's own clock, right before consumer.stop()
    signal: str | None = None
    signal_sent_at: float | None = None
    exited_at: float | None = None
    returncode: int | None = None
    started: list[tuple[float, str]] = field(default_factory=list)
    handled: list[tuple[float, str]] = field(default_factory=list)  # stamped on arrival
    cancelled: list[tuple[float, str]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    stderr: list[str] = field(default_factory=list)
    running: int = 0  # handlers running now, as reported
    unread_polls: int = 0  # set by the checks: answers it never read (stopped first)
    unexpected: list[str] = field(default_factory=list)
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    @property
    def killed(self) -> bool:
        return self.signal == "SIGKILL"

    @property
    def accepting(self) -> bool:
        """Running and not yet told to stop."""
        return self.ready_at is not None and self.signal is None and self.alive

    def started_or_gone(self) -> bool:
        return self.ready.is_set() or not self.alive

    def busy(self, handlers: int) -> Callable[[], bool]:
        """A predicate: at least ``handlers`` handlers are running now."""
        return lambda: self.running >= handlers

    def running_handlers(self, at: float) -> int:
        begun = sum(1 for t, _ in self.started if t <= at)
        ended = sum(1 for t, _ in self.handled if t <= at)
        ended += sum(1 for t, _ in self.cancelled if t <= at)
        return begun - ended

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.stderr if needle in line]


class Harness:
    """One end-to-end run. Use :func:`open_harness`."""

    def __init__(
        self, name: str, seed: int, endpoint: str, plan: FaultPlan, nursery: trio.Nursery
    ) -> None:
        self.name = name
        self.seed = seed
        self.rng = random.Random(f"harness-{name}-{seed}")
        self.plan = plan
        host, _, port = endpoint.removeprefix("http://").partition(":")
        self.proxy = FaultProxy(host, int(port), plan)
        self.endpoint = endpoint
        self.nursery = nursery
        self.changed = self.proxy.changed
        self.workers: list[Worker] = []
        self.produced: dict[str, float] = {}
        self.handled: set[str] = set()
        self.queue_url = ""
        self.sqs: trio_sqs.SQSClient | None = None
        self.stats_client: httpx.AsyncClient | None = None
        self.queue_name = f"e2e-{name}-{seed}-{os.urandom(4).hex()}"
        self.final_counts: dict[str, Any] | None = None  # the queue's /stats once settled
        self.settled_at: float | None = None
        self.notes: list[str] = []

    @property
    def label(self) -> str:
        return f"[{self.name} seed={self.seed}]"

    # -- workers --------------------------------------------------------------------------------

    async def start_worker(self, config: WorkerConfig, *, wait_ready: bool = True) -> Worker:
        worker = self._reserve(config)
        await self._launch(worker, wait_ready=wait_ready)
        return worker

    async def start_workers(self, *configs: WorkerConfig) -> list[Worker]:
        """Start several workers side by side (tagged in the order given); return once every one
        of them is ready."""
        workers = [self._reserve(config) for config in configs]
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(self._launch, worker)
        return workers

    def _reserve(self, config: WorkerConfig) -> Worker:
        worker = Worker(f"w{len(self.workers)}", config, url="")
        self.workers.append(worker)
        return worker

    async def _launch(self, worker: Worker, *, wait_ready: bool = True) -> None:
        tag, config = worker.tag, worker.config
        url = worker.url = await self.proxy.listen(tag)
        argv = [
            sys.executable,
            str(WORKER),
            self.queue_url,
            "--endpoint-url",
            url,
            "--trace",
            "--seed",
            str(self.rng.randrange(2**31)),
            *config.argv(),
        ]
        env = {**os.environ, **WORKER_ENV}
        mutant = os.environ.get("TRIO_SQS_E2E_LIBRARY")
        if mutant:
            # Mutation testing: run the workers on another copy of trio_sqs, to see checks fail.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [mutant, env.get("PYTHONPATH")]))
        worker.launched_at = time.monotonic()
        worker.process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
        )
        self.nursery.start_soon(self._read_stdout, worker)
        self.nursery.start_soon(self._read_stderr, worker)
        self.nursery.start_soon(self._wait_exit, worker)
        if wait_ready:
            with trio.fail_after(20):
                await self.changed.wait_until(lambda: worker.ready.is_set() or not worker.alive)
            assert worker.ready.is_set(), f"{self.label} {tag} died at start: {worker.stderr[-5:]}"

    async def _read_stdout(self, worker: Worker) -> None:
        await _read_lines(worker.process.stdout, lambda line: self._on_line(worker, line))

    def _on_line(self, worker: Worker, line: str) -> None:
        try:
            self._parse(worker, line)
        except (IndexError, ValueError):
            worker.unexpected.append(line)
        self.changed.notify()

    def _parse(self, worker: Worker, line: str) -> None:
        now = time.monotonic()
        word, _, rest = line.partition(" ")
        parts = rest.split()
        if word == "handled":
            worker.handled.append((now, parts[0]))
            worker.running -= 1
            self.handled.add(parts[0])
        elif word == "started":
            worker.started.append((float(parts[0]), parts[1]))
            worker.running += 1
        elif word == "cancelled":
            worker.cancelled.append((float(parts[0]), parts[1]))
            worker.running -= 1
        elif word == "ready":
            worker.ready_at, worker.pid = float(parts[0]), int(parts[1])
            worker.ready.set()
        elif word == "stopping":
            worker.stopping_at = float(parts[0])
        elif word == "rss":
            worker.rss.append((float(parts[0]), int(parts[1])))
        elif word == "stats":
            worker.stats = json.loads(rest)
        else:
            worker.unexpected.append(line)

    async def _read_stderr(self, worker: Worker) -> None:
        await _read_lines(worker.process.stderr, worker.stderr.append)

    async def _wait_exit(self, worker: Worker) -> None:
        worker.returncode = await worker.process.wait()
        worker.exited_at = time.monotonic()
        worker.exited.set()
        self.changed.notify()

    def send_signal(self, worker: Worker, sig: signal.Signals = signal.SIGTERM) -> None:
        assert worker.alive, f"{self.label} {worker.tag} is not running"
        if worker.signal is not None and sig != signal.SIGKILL:
            return
        worker.signal = sig.name
        worker.signal_sent_at = time.monotonic()
        worker.process.send_signal(sig)

    async def wait_exit(self, worker: Worker) -> None:
        # Generous: the checks judge the exit time against the contract afterwards.
        with trio.fail_after(worker.config.shutdown_bound + 10):
            await worker.exited.wait()
        # Let the pipe readers take the last lines (the stats line comes last).
        with trio.move_on_after(2):
            await self.changed.wait_until(lambda: worker.stats is not None or worker.killed)

    async def stop_all(self) -> None:
        for worker in self.workers:
            # A worker still starting has no signal handler yet: SIGTERM would kill it outright.
            await self.wait_for(worker.started_or_gone)
            if worker.alive:
                self.send_signal(worker)
        for worker in self.workers:
            await self.wait_exit(worker)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.accepting]

    # -- producing --------------------------------------------------------------------------------

    async def send(self, n: int) -> list[str]:
        """Send ``n`` messages straight to the queue server (not through the proxy)."""
        assert self.sqs is not None
        ids: list[str] = []
        for start in range(0, n, 10):
            count = min(10, n - start)
            base = len(self.produced) + len(ids)
            entries = [
                trio_sqs.SendEntry(body=f"{self.name}-{self.seed}-{base + i}", id=str(i))
                for i in range(count)
            ]
            # Shielded: a producer cancelled mid-call must still record what the server stored.
            with trio.CancelScope(shield=True), trio.fail_after(10):
                sent, result = await self.sqs.send_message_batch(self.queue_url, entries)
            assert result.ok, f"{self.label} send failed: {result.failed}"
            now = time.monotonic()
            for s in sent:
                self.produced[s.message_id] = now
                ids.append(s.message_id)
        return ids

    def handled_ids(self) -> set[str]:
        return self.handled

    def backlog(self) -> int:
        return len(self.produced) - len(self.handled)

    async def produce(self, total: int, window: int, batch: int = 10) -> None:
        """Send ``total`` messages, never more than ``window`` unhandled at once: in step with
        consumption, so that signals fall while messages flow rather than on a drained backlog."""
        goal = len(self.produced) + total
        while len(self.produced) < goal:
            await self.changed.wait_until(lambda: self.backlog() + batch <= window)
            await self.send(min(batch, goal - len(self.produced)))

    async def wait_handled(self, ids: set[str] | None = None) -> None:
        if ids is None:
            await self.changed.wait_until(lambda: self.backlog() == 0)
        else:
            await self.changed.wait_until(lambda: ids <= self.handled)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        await self.changed.wait_until(predicate)

    # -- the end of a run ---------------------------------------------------------------------------

    async def queue_stats(self) -> dict[str, Any]:
        """This run's queue as the server counts it (``GET /stats``): ``visible``, ``in_flight``,
        ``delayed``, ``deliveries`` (every message handed out, to whichever poll)..."""
        assert self.stats_client is not None
        with trio.fail_after(10):
            response = await self.stats_client.get("/stats")
        response.raise_for_status()
        counts: dict[str, Any] = response.json()["queues"][self.queue_name]
        return counts

    async def settle(self, config: WorkerConfig | None = None) -> None:
        """Turn faults off, let a clean worker take whatever is left (messages that come back when
        a lease ends included), then stop every worker and record the queue's final state."""
        self.plan.enabled = False
        if not self.live():
            await self.start_worker(config or WorkerConfig(visibility_timeout=10))

        # Messages stranded by a lease (orphans, lost deletes) come back within the longest lease.
        longest = max(w.config.visibility_timeout for w in self.workers)
        with trio.fail_after(longest + 30):
            while True:
                await self.wait_handled()
                counts = await self.queue_stats()
                if not any(counts[k] for k in QUEUED):
                    break
                # What empties the queue (a delete) and what comes back after a lease (a delivery)
                # both pass through the proxy, which wakes us; the timeout is a backstop only.
                with trio.move_on_after(1.0):
                    await self.changed.wait()
        self.settled_at = time.monotonic()
        await self.stop_all()
        self.final_counts = await self.queue_stats()


@asynccontextmanager
async def open_harness(
    name: str, seed: int, endpoint: str, plan: FaultPlan | None = None
) -> AsyncIterator[Harness]:
    plan = plan if plan is not None else FaultPlan(seed)
    workers: list[Worker] = []
    try:
        async with trio.open_nursery() as nursery:
            h = Harness(name, seed, endpoint, plan, nursery)
            workers = h.workers
            await nursery.start(h.proxy.run)
            try:
                async with (
                    trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as sqs,
                    httpx.AsyncClient(base_url=endpoint) as stats_client,
                ):
                    h.sqs, h.stats_client = sqs, stats_client
                    h.queue_url = await sqs.create_queue(h.queue_name)
                    yield h
            finally:
                # Reap every process here, not through the `exited` events: when the test was
                # cancelled (its deadline), the tasks that set them are cancelled too.
                with trio.move_on_after(10, shield=True):
                    for worker in h.workers:
                        if worker.process is not None and worker.process.returncode is None:
                            worker.process.kill()
                            await worker.process.wait()
                nursery.cancel_scope.cancel()
    finally:
        # The pipe readers are gone: close the pipes (and reap) so no file is left to the GC.
        with trio.move_on_after(10, shield=True):
            for worker in workers:
                if worker.process is not None:
                    for pipe in (worker.process.stdout, worker.process.stderr):
                        if pipe is not None:
                            await pipe.aclose()


async def _read_lines(stream: Any, on_line: Callable[[str], None]) -> None:
    """Call ``on_line`` with each line read from ``stream`` until EOF (no async generator: one
    abandoned at cancellation is reported as a ResourceWarning, an error in this suite)."""
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            # An unterminated last line is what a SIGKILL cut off mid-write: not a report.
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            on_line(line.decode(errors="replace"))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
