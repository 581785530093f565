"""Memory soak: does a consumer's resident memory stay flat over a million messages?

On demand, not part of ``run_all.py`` (a million messages take 6-10 minutes here).

Run: ``python benchmarks/soak_memory.py [--messages 1000000] [--consumer trio_sqs]
[--backlog 5000] [--interval 2] [--out FILE] [--no-pin]``

It starts the SQS server (trio_sqs's in-memory SQS, ``python -m trio_sqs.testing``) and one
consumer process (the same ``consumer_<name>.py`` as ``run_all.py``: batch 10, long polls,
concurrency 10, no-op handler), and keeps a backlog of ``--backlog`` messages in the queue
(topped up in batches by this script) until ``--messages`` have been sent. Every ``--interval``
seconds it samples the consumer's resident memory (``VmRSS`` of /proc/PID/status) against the
number of messages deleted so far.

It prints a Markdown table of RSS at every tenth of the run and a verdict: the growth of RSS from
10 % of the run (after start-up and warm-up: caches, connection pools, the allocator's arenas)
to the end, in MiB and per 100,000 messages (least-squares slope over those samples). "Flat"
means less than ``--tolerance`` MiB (default 2) of growth. Consumer pinned to CPU 0, server and
this script to CPU 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from run_all import (
    CONSUMER_CPU,
    CONSUMERS,
    SERVER_CPU,
    BenchError,
    Server,
    child,
    child_environment,
    log,
    make_plan,
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def slope_per_100k(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (KiB) against messages, in MiB per 100,000 messages."""
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    if len(points) < 2 or max(xs) == min(xs):
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return slope * 100_000 / 1024


def soak(args: argparse.Namespace) -> str:
    plan = make_plan(quick=False)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    consumer_cpu = cpus[CONSUMER_CPU] if pin else None
    server_cpu = cpus[SERVER_CPU] if pin else None
    if server_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})
    total = args.messages
    samples: list[tuple[int, int]] = []  # (messages deleted, RSS KiB)
    server = Server(server_cpu)
    started = time.monotonic()
    try:
        name, url = server.new_queue("soak", args.consumer)

        def top_up() -> None:
            visible = server.queue_stats(name)["visible"]
            while visible < args.backlog and server.sent[name] < total:
                count = min(10, total - server.sent[name])
                server.send(url, server.sent[name], count)
                server.sent[name] += count
                visible += count

        top_up()
        with child(
            args.consumer,
            server,
            name,
            plan,
            expect=total,
            cpu=consumer_cpu,
            env=child_environment(),
        ) as consumer:
            consumer.event("ready", 60)
            next_sample = time.monotonic()
            next_log = 0.1
            while True:
                if consumer.proc.poll() is not None:
                    break
                top_up()
                now = time.monotonic()
                if now >= next_sample:
                    deleted = server.deleted(name)
                    try:
                        samples.append((deleted, rss_kib(consumer.proc.pid)))
                    except (OSError, BenchError):
                        break  # it just exited
                    next_sample = now + args.interval
                    if deleted >= next_log * total:
                        log(
                            f"{deleted:,} messages, RSS {samples[-1][1] / 1024:.1f} MiB "
                            f"({now - started:.0f} s)"
                        )
                        next_log += 0.1
                time.sleep(0.05)
            report = consumer.event("report", 10)
    finally:
        server.close()
    elapsed = time.monotonic() - started
    if report["deleted"] < total:
        raise BenchError(f"the consumer deleted only {report['deleted']} of {total}")
    return summary(args, samples, report, elapsed)


def summary(
    args: argparse.Namespace,
    samples: list[tuple[int, int]],
    report: dict[str, float],
    elapsed: float,
) -> str:
    total = args.messages
    steady = [(m, r) for m, r in samples if m >= total // 10]
    base = steady[0][1] if steady else samples[0][1]
    end = samples[-1][1]
    growth = (end - base) / 1024
    slope = slope_per_100k(steady)
    lines = [
        f"## Memory soak: {args.consumer}, {total:,} messages",
        "",
        f"`python benchmarks/soak_memory.py --messages {total} --consumer {args.consumer}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {elapsed / 60:.1f} min, "
        f"{total / report['wall']:,.0f} messages/s, backlog {args.backlog:,}, no-op handler, "
        "batch 10, concurrency 10.",
        "",
        "| messages done | RSS, MiB |",
        "|---:|---:|",
    ]
    for tenth in range(0, 11):
        target = total * tenth // 10
        nearest = min(samples, key=lambda s: abs(s[0] - target))
        lines.append(f"| {nearest[0]:,} | {nearest[1] / 1024:.1f} |")
    verdict = "flat" if abs(growth) < args.tolerance else "**not flat**"
    lines += [
        "",
        f"From 10 % of the run to the end: {growth:+.2f} MiB (slope {slope:+.3f} MiB per "
        f"100,000 messages, {len(steady)} samples); peak RSS (VmHWM) "
        f"{report['maxrss_kib'] / 1024:.1f} MiB. Verdict: {verdict} "
        f"(tolerance {args.tolerance} MiB).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--consumer", choices=CONSUMERS, default="trio_sqs")
    parser.add_argument("--backlog", type=int, default=5_000, help="messages kept queued")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--tolerance", type=float, default=2.0, help="MiB of growth for 'flat'")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.messages < 1000:
        sys.exit("soak_memory.py: --messages must be at least 1000")
    text = soak(args)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
