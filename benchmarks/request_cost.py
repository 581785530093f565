"""SQS requests per 1,000 messages: trio_sqs (default options, and with a batch window) next to
the aiobotocore and boto3 baselines, at 10 messages/s and at saturation.

Run: ``python benchmarks/request_cost.py [--quick] [--batch-window 1.0] [--rounds N] [--serial]
[--pollers N] [--no-pin] [--out FILE]`` in a virtualenv with the ``bench`` extra (see README.md).
About 2.5 min by default, under a minute with ``--quick``. It prints a Markdown table and writes
it to ``benchmarks/results/request_cost.md``; progress goes to stderr. It is a report, not a test:
it exits 0 whatever the figures, 1 if a run failed.

What runs (the helpers of ``run_all.py`` and ``bench_common.py``, imported, with run_all's
settings: batch 10, WaitTimeSeconds 20, VisibilityTimeout 30, concurrency 10):

- steady: 10 messages/s for 60 s (``--quick``: 15 s), 200 ms handlers: ``run_all.run_steady``.
  The four consumers run at the same time by default, each its own process on its own queue and
  fed by its own producer thread paced as run_all paces (message i at ``start + i / 10``), so
  the whole scenario takes one duration; ``--serial`` runs them one after another instead. At
  this load each consumer uses ~4 % of a core: running them together does not starve them.
- saturation: 2,000 preloaded messages (``--quick``: 1,000), no-op handlers, drained one
  consumer at a time: ``run_all.run_drain``.

The consumers are run_all's three and trio_sqs again with ``batch_window`` (``--batch-window``,
default 1.0 s; ``consumer_trio_sqs.py --batch-window``). If the installed trio_sqs has no such
option, those rows say "option not available yet" and the rest runs.

Requests are counted by the server on each run's own queue (everything but the producer's
CreateQueue and SendMessage), from the consumer's start until its report after the last message
was deleted; long polls still waiting at that moment count as one request each. Ratios against
the baselines are paired by round, as in run_all.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import run_all
from bench_common import BenchError
from run_all import (
    PRODUCER_OPERATIONS,
    Context,
    Plan,
    Results,
    Server,
    child_environment,
    cpu_model,
    fmt,
    log,
    paired_ratios,
    ratio_cell,
    run_drain,
    run_steady,
    spread,
    values,
    versions,
)

HERE = Path(__file__).resolve().parent
DEFAULT = "trio_sqs"
WINDOW = "trio_sqs_window"
BASELINES = ("aiobotocore", "boto3")
VARIANTS = (DEFAULT, WINDOW, *BASELINES)
NOT_AVAILABLE = "option not available yet"
# Goals of the issue: requests per 1,000 messages, at most (saturation: "about 200", read as
# run_all reads it).
STEADY_GOALS = {DEFAULT: 1_100.0, WINDOW: 300.0}
SATURATION_GOAL = 220.0


def label(variant: str, window: float) -> str:
    return {
        DEFAULT: "trio_sqs, default options",
        WINDOW: f"trio_sqs, batch_window={window:g} s",
        "aiobotocore": "aiobotocore (baseline)",
        "boto3": "boto3 + threads (baseline)",
    }[variant]


class SharedServer(Server):
    """run_all's server, usable from several producer threads: one request at a time on its
    single keep-alive connection."""

    def __init__(self, cpu: int | None) -> None:
        self._lock = threading.Lock()
        super().__init__(cpu)

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        with self._lock:
            return super()._request(method, path, body, headers)


def batch_window_available() -> bool:
    """Whether the trio_sqs this interpreter imports has ``ConsumerOptions.batch_window``
    (asked in a child process, which keeps this one small and immune to import errors)."""
    probe = (
        "import dataclasses, trio_sqs; "
        "print('batch_window' in {f.name for f in dataclasses.fields(trio_sqs.ConsumerOptions)})"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"cannot import trio_sqs: {done.stderr.strip()[-500:]}")
    return done.stdout.strip() == "True"


def register(window: float, pollers: int | None) -> None:
    """Teach run_all's Child (which looks consumers up in ``run_all.SCRIPTS``) the two trio_sqs
    variants of this script."""
    extra: tuple[str, ...] = () if pollers is None else ("--pollers", str(pollers))
    run_all.SCRIPTS[DEFAULT] = ("consumer_trio_sqs.py", extra)
    run_all.SCRIPTS[WINDOW] = ("consumer_trio_sqs.py", ("--batch-window", str(window), *extra))


def attempt(
    runner: Callable[[Context, str], dict[str, Any]], ctx: Context, variant: str, where: str
) -> dict[str, Any]:
    started = time.monotonic()
    try:
        figures = runner(ctx, variant)
    except BenchError as exc:
        log(f"[{where}] {variant}: FAILED: {exc}")
        return {"error": str(exc).splitlines()[0]}
    except Exception as exc:  # in a producer thread: reported, not lost with the thread
        log(f"[{where}] {variant}: FAILED: {traceback.format_exc()}")
        return {"error": repr(exc)}
    total = figures.get("requests_per_1000", 0.0)
    log(f"[{where}] {variant} ({time.monotonic() - started:.1f} s): {total:,.1f} requests/1,000")
    return figures


def steady_together(ctx: Context, variants: Sequence[str], where: str) -> dict[str, Any]:
    """``run_steady`` for every variant at once, each in a thread of its own."""
    steady: dict[str, Any] = {}

    def one(variant: str) -> None:
        steady[variant] = attempt(run_steady, ctx, variant, where)

    threads = [threading.Thread(target=one, args=(v,)) for v in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return steady


def run_rounds(ctx: Context, variants: Sequence[str], rounds: int, serial: bool) -> Results:
    results: Results = {
        "steady": {v: [] for v in variants},
        "saturation": {v: [] for v in variants},
    }
    for index in range(rounds):
        shift = index % len(variants)
        order = [*variants[shift:], *variants[:shift]]
        where = f"steady {index + 1}/{rounds}"
        if serial:
            steady = {v: attempt(run_steady, ctx, v, where) for v in order}
        else:
            steady = steady_together(ctx, order, where)
        for variant in variants:
            results["steady"][variant].append({**steady[variant], "round": index})
        where = f"saturation {index + 1}/{rounds}"
        for variant in order:
            figures = attempt(run_drain, ctx, variant, where)
            results["saturation"][variant].append({**figures, "round": index})
    return results


# -- the report ----------------------------------------------------------------------------------


def per_operation(runs: list[dict[str, Any]], messages: int) -> dict[str, list[float]]:
    """Requests per 1,000 messages by operation, one value per successful run (0 when the run
    did not use the operation)."""
    ok = [r for r in runs if "error" not in r]
    operations = {op for r in ok for op in r["requests"]} - PRODUCER_OPERATIONS
    return {op: [r["requests"].get(op, 0) / (messages / 1000) for r in ok] for op in operations}


def operations_seen(results: dict[str, list[dict[str, Any]]], messages: int) -> list[str]:
    seen: set[str] = set()
    for runs in results.values():
        seen |= set(per_operation(runs, messages))
    first = ("ReceiveMessage", "DeleteMessageBatch", "DeleteMessage")
    return [op for op in first if op in seen] + sorted(seen - set(first))


def ratios(results: dict[str, list[dict[str, Any]]], variant: str, baseline: str) -> list[float]:
    """``variant`` over ``baseline``, requests per 1,000 messages, paired by round (run_all's
    pairing, which calls the numerator "trio_sqs")."""
    pair = {"trio_sqs": results[variant], baseline: results[baseline]}
    return paired_ratios(pair, "requests_per_1000", baseline)


def ratio_to(results: dict[str, list[dict[str, Any]]], variant: str, baseline: str) -> str:
    if variant == baseline:
        return "—"
    pair = {"trio_sqs": results[variant], baseline: results[baseline]}
    return ratio_cell(pair, "requests_per_1000", baseline)


@dataclass
class Section:
    title: str
    short: str
    scenario: str
    messages: int
    #: The issue's goal for each trio_sqs variant: at most this many requests per 1,000 messages.
    goals: dict[str, float]
    #: How the goal reads (default: "≤ limit").
    wording: str = ""

    def target(self, variant: str) -> str:
        return self.wording or "≤ " + fmt(self.goals[variant])

    def verdict(self, variant: str, totals: list[float]) -> str:
        if not totals:
            return "n/a"
        return "yes" if statistics.median(totals) <= self.goals[variant] else "**no**"


def table(
    section: Section, results: Results, window: float, available: bool, digits: int
) -> list[str]:
    by_variant = results[section.scenario]
    operations = operations_seen(by_variant, section.messages)
    lines = [
        f"## {section.title}",
        "",
        "| consumer | requests per 1,000 messages | "
        + " | ".join(operations)
        + " | messages per receive | / aiobotocore | / boto3 | goal | met |",
        "|---|---:|" + "---:|" * len(operations) + "---:|---:|---:|---|---|",
    ]
    note = (
        "Per operation: the median over rounds, per 1,000 messages. *Messages per receive*: "
        "1,000 over the ReceiveMessage figure (every message is received once here). "
        "`/ aiobotocore`, `/ boto3`: the row's total over the baseline's, paired by round."
    )
    for variant in VARIANTS:
        name = label(variant, window)
        goal = section.target(variant) if variant in section.goals else ""
        if variant == WINDOW and not available:
            blanks = " | " * len(operations)
            lines.append(f"| {name} | {NOT_AVAILABLE}{blanks} | | | | {goal} | n/a |")
            continue
        runs = by_variant[variant]
        totals = values(runs, "requests_per_1000")
        ops = per_operation(runs, section.messages)
        # Per operation: the median only (the total carries the range); 0 if never used.
        cells = [
            fmt(statistics.median(ops[op]), digits) if op in ops else "0" if totals else "n/a"
            for op in operations
        ]
        met = section.verdict(variant, totals) if variant in section.goals else ""
        receives = ops.get("ReceiveMessage")
        per_receive = fmt(1000 / statistics.median(receives), 1) if receives else "n/a"
        failed = len(runs) - len(totals)
        total_cell = spread(totals, digits) + (f" ({failed} failed)" if failed else "")
        lines.append(
            f"| {name} | {total_cell} | "
            + " | ".join(cells)
            + f" | {per_receive}"
            + f" | {ratio_to(by_variant, variant, 'aiobotocore')}"
            f" | {ratio_to(by_variant, variant, 'boto3')} | {goal} | {met} |"
        )
    return [*lines, "", note]


def goal_lines(
    sections: Sequence[Section], results: Results, window: float, available: bool
) -> list[str]:
    lines = ["| goal | target | trio_sqs, measured | met |", "|---|---|---|---|"]
    for section in sections:
        by_variant = results[section.scenario]
        for variant in section.goals:
            name = f"{section.short}, {label(variant, window)}"
            target = section.target(variant)
            totals = values(by_variant[variant], "requests_per_1000")
            if variant == WINDOW and not available:
                measured = NOT_AVAILABLE
            elif not totals:
                measured = "every run failed"
            else:
                against = [
                    f"{statistics.median(xs):.2f}x {baseline}"
                    for baseline in BASELINES
                    if (xs := ratios(by_variant, variant, baseline))
                ]
                measured = fmt(statistics.median(totals), 1)
                if against:
                    measured += f" ({', '.join(against)})"
            lines.append(f"| {name} | {target} | {measured} | {section.verdict(variant, totals)} |")
    return lines


def markdown(
    results: Results,
    sections: Sequence[Section],
    plan: Plan,
    meta: dict[str, Any],
) -> str:
    window, available = meta["window"], meta["available"]
    lines = [
        "# SQS requests per 1,000 messages: trio_sqs against aiobotocore and boto3",
        "",
        f"`{meta['command']}` on {meta['date']} ({meta['duration_s']:.0f} s).",
        "",
        f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}); load average {meta['load_before']} "
        f"before, {meta['load_after']} after. {meta['pinning']}",
        "- Server: trio_sqs's in-memory SQS (`python -m trio_sqs.testing`), its own process; "
        "requests counted by it on each run's own queue (the producer's CreateQueue and "
        "SendMessage left out).",
        f"- {versions()}.",
        f"- All: batch {plan.batch}, WaitTimeSeconds {plan.wait}, VisibilityTimeout "
        f"{plan.visibility}, concurrency {plan.concurrency}; each run its own process on a fresh "
        f"queue. {meta['rounds']} round(s); figures: median (min-max) over rounds; ratios paired "
        "by round. Steady runs: " + meta["steady_mode"] + ".",
        f"- `batch_window`: {'available' if available else NOT_AVAILABLE + ' in this trio_sqs'}"
        f" (asked for {window:g} s).",
        "",
        "## Goals",
        "",
        *goal_lines(sections, results, window, available),
    ]
    for section in sections:
        lines += [
            "",
            *table(
                section, results, window, available, 1 if section.scenario == "saturation" else 0
            ),
        ]
    notes = run_all.errors_note(results)
    if notes:
        lines += ["", "## Failed runs", "", *notes]
    lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def check_dependencies() -> None:
    missing = [
        n for n in ("trio_sqs", "aiobotocore", "boto3") if importlib.util.find_spec(n) is None
    ]
    if missing:
        sys.exit(
            f"request_cost.py: missing {', '.join(missing)}; install the extra in a virtualenv "
            "of its own: pip install -e '.[bench]'"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s steady, 1,000-message drains")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 2; quick 1)")
    parser.add_argument("--batch-window", type=float, default=1.0, help="seconds (default 1.0)")
    parser.add_argument("--pollers", type=int, default=None, help="pollers of both trio_sqs runs")
    parser.add_argument("--serial", action="store_true", help="steady runs one at a time")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "request_cost.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    check_dependencies()
    rounds = args.rounds or (1 if args.quick else 2)
    messages = 1_000 if args.quick else 2_000
    plan = Plan(
        quick=args.quick,
        drain_messages=messages,
        drain_runs=rounds,
        steady_seconds=15.0 if args.quick else 60.0,
        steady_runs=rounds,
        idle_runs=0,
        loaded_runs=0,
    )
    try:
        available = batch_window_available()
    except BenchError as exc:
        sys.exit(f"request_cost.py: {exc}")
    register(args.batch_window, args.pollers)
    variants = [v for v in VARIANTS if v != WINDOW or available]
    if not available:
        log(f"batch_window: {NOT_AVAILABLE} in this trio_sqs; its rows are left out")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2
    consumer_cpu, server_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    if server_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})
        pinning = (
            f"Consumers pinned to CPU {consumer_cpu}, the server and producers to CPU {server_cpu}."
        )
    else:
        pinning = "Not pinned."
    log(pinning)
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    server = SharedServer(server_cpu)
    try:
        ctx = Context(server, plan, child_environment(), consumer_cpu, random.Random(0))
        results = run_rounds(ctx, variants, rounds, args.serial)
    finally:
        server.close()
    for scenario in results.values():
        scenario.setdefault(WINDOW, [])
    steady_total = round(plan.steady_rate * plan.steady_seconds)
    sections = [
        Section(
            title=f"At {plan.steady_rate:g} messages/s: {steady_total:,} messages over "
            f"{plan.steady_seconds:g} s, {plan.steady_handler * 1000:.0f} ms handlers",
            short=f"{plan.steady_rate:g} messages/s",
            scenario="steady",
            messages=steady_total,
            goals=STEADY_GOALS,
        ),
        Section(
            title=f"At saturation: {messages:,} preloaded messages drained, no-op handlers",
            short="saturation",
            scenario="saturation",
            messages=messages,
            goals={DEFAULT: SATURATION_GOAL, WINDOW: SATURATION_GOAL},
            wording="≈ 200 (≤ 220)",
        ),
    ]
    command = "python benchmarks/request_cost.py" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pinning": pinning,
        "rounds": rounds,
        "steady_mode": "one after another" if args.serial else f"the {len(variants)} at once",
        "window": args.batch_window,
        "available": available,
    }
    text = markdown(results, sections, plan, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")
    failed = any("error" in r for s in results.values() for runs in s.values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
