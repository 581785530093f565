"""CPU cost of one ReceiveMessage(10) + DeleteMessageBatch(10) pair: trio_sqs against botocore.

Both clients talk to the same SQS server, trio_sqs's in-memory SQS (``python -m
trio_sqs.testing``), which runs as a separate process so that its CPU time is not counted. It is
stateful: a pair deletes the 10 messages it received, so the script keeps the queue stocked
(``Supply``: topped up between timed chunks, never inside one) and every receive gets 10. In this
one process, the script runs:

(a) trio_sqs: ``open_client(...)``, then ``receive_messages(url, max_messages=10, wait_time=0)``
    and ``delete_message_batch(url, [10 receipt handles])``, sequentially;
(b) botocore's own client: ``receive_message(MaxNumberOfMessages=10, WaitTimeSeconds=0,
    MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])`` and
    ``delete_message_batch`` with 10 entries.

Both send the same requests (same attributes asked for) and get the same 10 messages back. Our
path does a little more with them: it checks MD5OfBody and MD5OfMessageAttributes and builds
``Message`` objects; botocore's client checks no digest and returns dicts.

After a warm-up, it measures the CPU time of this process (``time.process_time``, user + system)
over rounds in which the two clients alternate every ``--chunk`` pairs (a b, b a, ...), and
reports microseconds per pair, the spread across rounds, and the ratio ours / botocore against
the goal of 0.3 (issue 12; it was 0.6), and the server's own CPU per request (from its ``GET /stats``) over the timed
chunks. It is a report, not a test: it exits 0 whatever the ratio.

Run: ``python benchmarks/bench_client.py [--pairs N] [--rounds R] [--warmup W] [--chunk C]
[--no-pin]``
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore
import botocore.session
import httpx
import trio
from bench_common import FakeSQSServer

import trio_sqs
import trio_sqs._json
from trio_sqs._transport import default_parser

GOAL = 0.3
MESSAGES = 10
QUEUE_NAME = "bench"

OURS = "trio_sqs (its own transport on Trio)"
BOTOCORE = "botocore client (urllib3)"


@dataclass
class Samples:
    """Per-round measurements for one client, in microseconds per pair."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    user: list[float] = field(default_factory=list)
    system: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Pinning:
    client_cpu: int | None
    server_cpu: int | None

    def describe(self) -> str:
        if self.client_cpu is None or self.server_cpu is None:
            return "not pinned (os.sched_setaffinity unavailable, fewer than 2 CPUs, or --no-pin)"
        return (
            f"client pinned to CPU {self.client_cpu}, server pinned to CPU {self.server_cpu} "
            "(os.sched_setaffinity)"
        )


def choose_pinning(enabled: bool) -> Pinning:
    if not enabled or not hasattr(os, "sched_setaffinity"):
        return Pinning(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None)
    return Pinning(cpus[0], cpus[1])


def clean_aws_environment() -> None:
    """Keep the developer's AWS configuration out of both clients (this process only)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


class Supply:
    """The benchmark queue on the server, kept stocked so that every receive gets 10 messages.

    ``ensure(pairs)`` tops it up (SendMessageBatch from this process, outside any timed window)
    to at least ``pairs`` receives' worth. ``measured()`` brackets a timed window and adds the
    server's CPU and the requests it answered in it (from ``GET /stats``).
    """

    def __init__(self, server: FakeSQSServer, attributes: dict[str, str] | None = None) -> None:
        self.server = server
        self.url = server.create_queue(QUEUE_NAME, attributes)
        self.sent = 0
        self.server_cpu = 0.0
        self.server_requests = 0

    def ensure(self, pairs: int) -> None:
        missing = (pairs + 1) * MESSAGES - self.server.queue_stats(QUEUE_NAME)["visible"]
        if missing > 0:
            count = -(-missing // MESSAGES) * MESSAGES
            self.server.send(self.url, self.sent, count)
            self.sent += count

    def _snapshot(self) -> tuple[float, int]:
        stats = self.server.server_stats()
        requests = stats["requests"]
        return stats["cpu_seconds"], requests.get("ReceiveMessage", 0) + requests.get(
            "DeleteMessageBatch", 0
        )

    @contextmanager
    def measured(self) -> Iterator[None]:
        cpu, requests = self._snapshot()
        yield
        cpu_after, requests_after = self._snapshot()
        self.server_cpu += cpu_after - cpu
        self.server_requests += requests_after - requests

    def describe(self) -> str:
        if not self.server_requests:
            return "server CPU per request: n/a"
        return (
            f"server CPU per request: {self.server_cpu * 1e6 / self.server_requests:.0f} µs "
            f"(its own process; {self.server_requests:,} timed requests)"
        )


@contextmanager
def sqs_server(
    server_cpu: int | None, attributes: dict[str, str] | None = None
) -> Iterator[Supply]:
    """Start ``python -m trio_sqs.testing`` (pinned to ``server_cpu``) with the benchmark queue;
    stop it afterwards."""
    with FakeSQSServer(server_cpu) as server:
        yield Supply(server, attributes)


class Tally:
    """Sums CPU (total, user, system) and wall time over the chunks of one round."""

    def __init__(self) -> None:
        self.cpu = self.wall = self.user = self.system = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        gc.collect()  # outside the timed window: each chunk starts with the same collector state
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        cpu = time.process_time()
        yield
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        self.user += after.ru_utime - usage.ru_utime
        self.system += after.ru_stime - usage.ru_stime

    def record(self, samples: Samples, pairs: int) -> None:
        scale = 1e6 / pairs
        samples.cpu.append(self.cpu * scale)
        samples.wall.append(self.wall * scale)
        samples.user.append(self.user * scale)
        samples.system.append(self.system * scale)


def check_pair(received: int, deleted: int, failed: int) -> None:
    if received != MESSAGES or deleted != MESSAGES or failed:
        raise RuntimeError(
            f"unexpected answer: {received} received, {deleted} deleted, {failed} failed"
        )


async def ours_pairs(sqs: trio_sqs.SQSClient, queue_url: str, pairs: int) -> None:
    for _ in range(pairs):
        received = await sqs.receive_messages(
            queue_url,
            max_messages=MESSAGES,
            wait_time=0,
            attribute_names=("All",),
            message_attribute_names=("All",),
        )
        result = await sqs.delete_message_batch(
            queue_url, [m.receipt_handle for m in received.messages]
        )
        check_pair(len(received.messages), len(result.successful), len(result.failed))


def botocore_pairs(client: Any, queue_url: str, pairs: int) -> None:
    for _ in range(pairs):
        received = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=MESSAGES,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = received.get("Messages", [])
        result = client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        check_pair(len(messages), len(result.get("Successful", [])), len(result.get("Failed", [])))


async def run_benchmark(
    supply: Supply, *, pairs: int, rounds: int, warmup: int, chunk: int
) -> tuple[Samples, Samples]:
    endpoint = supply.server.endpoint
    queue_url = supply.url
    ours = Samples()
    theirs = Samples()
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="x",
        aws_secret_access_key="y",
    ) as sqs:
        client = botocore.session.get_session().create_client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        try:
            # botocore's client blocks; inside trio.run that only pauses the (idle) event loop, and
            # keeps both clients and their keep-alive connections open across all rounds.
            async def run_ours(n: int) -> None:
                await ours_pairs(sqs, queue_url, n)

            async def run_botocore(n: int) -> None:
                botocore_pairs(client, queue_url, n)

            runners: list[tuple[Callable[[int], Awaitable[None]], Samples]] = [
                (run_ours, ours),
                (run_botocore, theirs),
            ]
            for run, _ in runners:
                supply.ensure(warmup)
                await run(warmup)
            # Each round alternates the clients chunk by chunk (a b, b a, a b, ...), so that slow
            # drifts of the machine's speed hit both alike.
            chunks = [chunk] * (pairs // chunk) + ([pairs % chunk] if pairs % chunk else [])
            for round_index in range(rounds):
                tallies = (Tally(), Tally())
                for chunk_index, size in enumerate(chunks):
                    order = (0, 1) if (round_index + chunk_index) % 2 == 0 else (1, 0)
                    for which in order:
                        run, _ = runners[which]
                        supply.ensure(size)
                        with supply.measured(), tallies[which].timed():
                            await run(size)
                for (_, samples), tally in zip(runners, tallies, strict=True):
                    tally.record(samples, pairs)
                print(
                    f"round {round_index + 1}/{rounds}: trio_sqs {ours.cpu[-1]:.0f} µs, "
                    f"botocore {theirs.cpu[-1]:.0f} µs CPU per pair",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            client.close()
    return ours, theirs


def spread(values: list[float]) -> str:
    median = statistics.median(values)
    return f"±{(max(values) - min(values)) / 2 / median * 100:.1f} %"


def report(
    ours: Samples,
    theirs: Samples,
    *,
    pairs: int,
    rounds: int,
    warmup: int,
    chunk: int,
    pinning: Pinning,
    server: str,
) -> str:
    ratio = statistics.median(ours.cpu) / statistics.median(theirs.cpu)
    per_round = [a / b for a, b in zip(ours.cpu, theirs.cpu, strict=True)]
    paired = statistics.median(per_round)
    verdict = "PASS" if ratio <= GOAL else "FAIL"
    lines = [
        "## CPU per ReceiveMessage(10) + DeleteMessageBatch(10) pair",
        "",
        f"- {rounds} rounds x {pairs} pairs per client, interleaved in chunks of {chunk} pairs, "
        f"after {warmup} warm-up pairs each; CPU = time.process_time() of this process "
        "(user + system)",
        f"- {pinning.describe()}",
        "- Server: trio_sqs's in-memory SQS (`python -m trio_sqs.testing`), its own process; "
        f"{server}",
        f"- Python {platform.python_version()}, trio {trio.__version__}, httpx {httpx.__version__}, "
        f"botocore {botocore.__version__}, {os.cpu_count()} CPUs; trio_sqs's response parser: "
        f"{default_parser()} (TRIO_SQS_HTTP_PARSER chooses), its decoder of ReceiveMessage "
        f"answers: {trio_sqs._json.LOADS_NAME} (TRIO_SQS_JSON chooses)",
        "",
        "| client | CPU µs/pair (median) | min | max | spread (half range) "
        "| user / sys µs | wall µs/pair |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, samples in ((OURS, ours), (BOTOCORE, theirs)):
        lines.append(
            f"| {name} | {statistics.median(samples.cpu):.0f} | {min(samples.cpu):.0f} "
            f"| {max(samples.cpu):.0f} | {spread(samples.cpu)} "
            f"| {statistics.median(samples.user):.0f} / {statistics.median(samples.system):.0f} "
            f"| {statistics.median(samples.wall):.0f} |"
        )
    lines += [
        "",
        f"**Ratio ours / botocore: {ratio:.2f}** (median µs of each); paired by round: median "
        f"{paired:.2f}, range {min(per_round):.2f} to {max(per_round):.2f}",
        "",
        f"**{verdict}**: goal is a ratio <= {GOAL:.2f}; "
        + (
            f"met with {(GOAL - ratio) / GOAL * 100:.0f} % to spare."
            if ratio <= GOAL
            else f"our path needs {(1 - GOAL / ratio) * 100:.0f} % less CPU to meet it."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU per ReceiveMessage(10)+DeleteMessageBatch(10): trio_sqs vs botocore."
    )
    parser.add_argument("--pairs", type=int, default=500, help="pairs per round (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=200, help="warm-up pairs per client (default 200)"
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=50,
        help="pairs per client before switching to the other within a round (default 50)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin client and server to separate CPUs"
    )
    args = parser.parse_args(argv)
    for name in ("pairs", "rounds", "chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clean_aws_environment()
    pinning = choose_pinning(not args.no_pin)
    if pinning.client_cpu is not None:
        # Before any thread exists (Trio's worker threads inherit the main thread's mask).
        os.sched_setaffinity(0, {pinning.client_cpu})
    with sqs_server(pinning.server_cpu) as supply:
        ours, theirs = trio.run(
            lambda: run_benchmark(
                supply,
                pairs=args.pairs,
                rounds=args.rounds,
                warmup=args.warmup,
                chunk=min(args.chunk, args.pairs),
            )
        )
    print(
        report(
            ours,
            theirs,
            pairs=args.pairs,
            rounds=args.rounds,
            warmup=args.warmup,
            chunk=min(args.chunk, args.pairs),
            pinning=pinning,
            server=supply.describe(),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
