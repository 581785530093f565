"""What the three benchmark consumers share: their command line, CPU pinning, and the JSON lines
they report to ``run_all.py`` on stdout. Standard library only, so that it adds nothing to the
memory or start-up of any consumer.

Every consumer (``consumer_trio_sqs.py``, ``consumer_aiobotocore.py``, ``consumer_boto3.py``)
takes the same settings, prints ``{"event": "ready", ...}`` once it is set up (client created,
queue URL resolved) and about to consume, and ``{"event": "report", ...}`` with its counters,
CPU time and peak RSS (VmHWM):

- when it has deleted ``--expect`` messages (drain), and stops;
- on SIGUSR1 (it goes on consuming);
- at exit after SIGTERM or SIGINT, after its own way of shutting down.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

REGION = "us-east-1"


@dataclass
class Counts:
    """What a consumer did. ``cancelled``: handlers cut off before they finished."""

    received: int = 0
    completed: int = 0
    cancelled: int = 0
    deleted: int = 0


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--endpoint", required=True, help="the SQS endpoint URL")
    parser.add_argument("--queue", required=True, help="the queue name")
    parser.add_argument("--concurrency", type=int, default=10, help="handlers at once")
    parser.add_argument("--batch", type=int, default=10, help="MaxNumberOfMessages")
    parser.add_argument("--wait", type=int, default=20, help="WaitTimeSeconds")
    parser.add_argument("--visibility", type=int, default=30, help="VisibilityTimeout")
    parser.add_argument("--handler-seconds", type=float, default=0.0, help="handler duration")
    parser.add_argument(
        "--expect", type=int, default=0, help="stop after deleting this many (0: run on)"
    )
    parser.add_argument("--grace", type=float, default=10.0, help="grace period (trio_sqs)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (Linux)")
    parser.add_argument(
        "--freeze-at-exit",
        action="store_true",
        help="gc.freeze() after the consumer stopped, so the interpreter's exit skips its final "
        "garbage collection (see finish())",
    )
    args = parser.parse_args()
    if args.cpu is not None:
        # Before any thread exists, so every thread the consumer starts inherits it.
        os.sched_setaffinity(0, {args.cpu})
    return args


def peak_rss_kib() -> int:
    """Peak resident memory of this process, in KiB.

    ``VmHWM`` of /proc/self/status, not ``ru_maxrss``: Linux carries the parent's high-water
    mark across ``exec`` into ``ru_maxrss``, so a small consumer started by a big parent would
    report the parent's peak. ``VmHWM`` belongs to this process's own address space.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def finish(args: argparse.Namespace) -> None:
    """The last call of a consumer's main(). CPython's finalization (module teardown and the
    final garbage collection over every object botocore, httpx and the rest created) takes ~100 ms
    here after the program's last line; with ``--freeze-at-exit`` the objects are moved to the
    permanent generation first, which that collection skips. atexit handlers still run."""
    if args.freeze_at_exit:
        gc.freeze()


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Reporter:
    """Writes the consumer's JSON lines to stdout."""

    def __init__(self) -> None:
        self._ready_cpu = (0.0, 0.0)
        self._ready_wall = 0.0
        self._signalled: float | None = None

    def signalled(self) -> None:
        """Call first thing when SIGTERM or SIGINT arrives: the final report then says how long
        the consumer's own shutdown took (the rest of the exit time is the interpreter's)."""
        if self._signalled is None:
            self._signalled = time.monotonic()

    def _emit(self, payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    def ready(self) -> None:
        self._ready_cpu = cpu_seconds()
        self._ready_wall = time.monotonic()
        self._emit({"event": "ready", "pid": os.getpid()})

    def report(self, counts: Counts, **extra: Any) -> None:
        user, system = cpu_seconds()
        now = time.monotonic()
        stop_ms = None if self._signalled is None else (now - self._signalled) * 1000
        self._emit(
            {
                "event": "report",
                **asdict(counts),
                # From "ready" on: the consumption itself, not imports and client set-up.
                "cpu_user": user - self._ready_cpu[0],
                "cpu_system": system - self._ready_cpu[1],
                "wall": now - self._ready_wall,
                # From the signal handler to this report (None without a signal).
                "stop_ms": stop_ms,
                # The whole process, start-up included.
                "cpu_process": user + system,
                "maxrss_kib": peak_rss_kib(),
                **extra,
            }
        )
