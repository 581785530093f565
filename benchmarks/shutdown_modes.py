"""Measure the two ways of treating the in-flight long poll at stop (``poll_on_stop``; see
docs/design.md, 'No receive after stop').

Scenario of the original bug report, against trio_sqs's in-memory SQS in a process of its own
(``python -m trio_sqs.testing``; like SQS, it keeps a long poll whose client went away running for
its WaitTimeSeconds, and that poll takes messages): a producer sends 10 messages/s, handlers take 200 ms, the consumer is stopped after a few seconds while the producer
goes on (as it would for the other replicas). For each ``poll_on_stop`` mode it reports:

- shutdown time: from ``stop()`` to the end of the ``async with`` block;
- stranded: messages produced before the check that were neither completed by the stopped
  consumer nor receivable by a fresh receiver right after it, i.e. swallowed by a long poll that
  was abandoned (SQS keeps such a poll running for its WaitTimeSeconds, and so does the server)
  and invisible for the whole receive lease;
- aborted polls, as the consumer's statistics count them.

Run: python benchmarks/shutdown_modes.py [--runs 5] [--stop-after 3] [--no-pin]
(this process on the first allowed CPU, the server on the second, when there are two).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

import trio
from bench_common import FakeSQSServer

import trio_sqs

RATE = 10.0
HANDLER_SECONDS = 0.2


async def one_run(endpoint: str, mode: str, stop_after: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as sqs:
        url = await sqs.create_queue(f"modes-{uuid.uuid4().hex[:12]}")
        produced: list[str] = []
        completed: list[str] = []

        async def producer() -> None:
            while True:
                sent = await sqs.send_message(url, "x")
                produced.append(sent.message_id)
                await trio.sleep(1 / RATE)

        async def handler(message: trio_sqs.Message) -> None:
            await trio.sleep(HANDLER_SECONDS)
            completed.append(message.message_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            async with trio_sqs.open_consumer(
                url,
                handler,
                client=sqs,
                concurrency=8,
                visibility_timeout=30,
                wait_time=20,
                poll_on_stop=mode,
                grace_period=5.0,
                flush_timeout=5.0,
            ) as consumer:
                await trio.sleep(stop_after + rng.uniform(0, 1))
                t0 = time.perf_counter()
                consumer.stop()
            shutdown = time.perf_counter() - t0
            # Producer keeps going for a while, as it would for the other replicas.
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
        seen: set[str] = set()
        while True:
            batch = await sqs.receive_messages(url, wait_time=1, visibility_timeout=60)
            if not batch:
                break
            seen.update(m.message_id for m in batch)
        stranded = set(produced) - set(completed) - seen
        stats = consumer.statistics()
        return {
            "shutdown_ms": shutdown * 1000,
            "stranded": float(len(stranded)),
            "aborted_polls": float(stats.aborted_polls),
            "completed": float(len(completed)),
            "produced": float(len(produced)),
        }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


async def main(endpoint: str, runs: int, stop_after: float) -> None:
    results: dict[str, list[dict[str, float]]] = {"abort": [], "land": []}
    for run in range(runs):
        for mode in ("abort", "land") if run % 2 == 0 else ("land", "abort"):
            result = await one_run(endpoint, mode, stop_after, seed=run)
            results[mode].append(result)
            print(f"run {run} {mode}: {result}", flush=True)
    print()
    print(f"{runs} runs per mode, producer {RATE:.0f}/s, handlers {HANDLER_SECONDS * 1000:.0f} ms,")
    print("concurrency 8, stop after a few seconds, producer going on 2 s after stop")
    print()
    print("| poll_on_stop | shutdown ms, median (min, max) | stranded per stop | aborted polls |")
    print("|---|---|---|---|")
    for mode, rows in results.items():
        print(
            f"| {mode} | {summary([r['shutdown_ms'] for r in rows])} "
            f"| {summary([r['stranded'] for r in rows])} "
            f"| {summary([r['aborted_polls'] for r in rows])} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stop-after", type=float, default=3.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    with FakeSQSServer(cpus[1] if pin else None) as server:
        if pin:
            os.sched_setaffinity(0, {cpus[0]})
        trio.run(main, server.endpoint, args.runs, args.stop_after)
