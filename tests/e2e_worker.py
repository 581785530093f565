"""The end-to-end tests' worker process: consume a queue until SIGTERM or SIGINT, then stop
gracefully, reporting what it does (for a worker to start from, see ``examples/worker.py``).

Usage: python tests/e2e_worker.py QUEUE_NAME_OR_URL [--endpoint-url URL] [options]
(``--help`` lists every option; they map one to one onto ``trio_sqs.ConsumerOptions``.)

On SIGTERM (Kubernetes) or Ctrl-C: no new receive is sent, running handlers get the grace period,
unstarted messages go straight back to the queue, deletes are flushed, then the process exits.

Output on stdout, one line per event, flushed at once so a supervisor can follow it:

    handled <message_id>          a handler finished; the message is acknowledged (deleted)
    stats {...}                   at exit: the consumer's final statistics as one JSON object,
                                  plus the process's memory (vm_rss_kb, max_rss_kb)

With ``--trace``, also these (``<t>`` is ``time.monotonic()``, which on Linux every process on the
host shares, so a test harness can line them up with its own clock):

    ready <t> <pid>               consuming; signals are handled from now on
    started <t> <message_id>      a handler started
    cancelled <t> <message_id>    a handler was cancelled (the grace period ended)
    stopping <t> <signal>         a signal arrived; ``consumer.stop()`` is called right after <t>
    rss <t> <kB>                  resident memory, every ``--rss-every`` seconds

Logs (trio_sqs's warnings about failed polls, retries at DEBUG, the shutdown summary) go to stderr.

The handler only sleeps: ``--handler-seconds 0.2`` (fixed) or ``0.1-0.5`` (uniform), and with
``--slow-fraction P --slow-seconds S`` a share of them take longer (to outlast the grace period).
``--seed`` makes those draws, and trio_sqs's own backoff jitter, reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import resource
import signal
import sys
import time

import trio

import trio_sqs


def vm_rss_kb() -> int:
    """Resident memory now, in kB (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def emit(*fields: object) -> None:
    print(*fields, flush=True)


def handler_seconds(spec: str) -> tuple[float, float]:
    low, _, high = spec.partition("-")
    return float(low), float(high or low)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    low, high = args.handler_seconds
    trace = emit if args.trace else (lambda *fields: None)

    async def handle(message: trio_sqs.Message) -> None:
        trace("started", f"{time.monotonic():.6f}", message.message_id)
        seconds = rng.uniform(low, high)
        if rng.random() < args.slow_fraction:
            seconds = args.slow_seconds
        try:
            await trio.sleep(seconds)  # the real work goes here
        except trio.Cancelled:
            trace("cancelled", f"{time.monotonic():.6f}", message.message_id)
            raise
        emit("handled", message.message_id)

    async def report_rss() -> None:
        while True:
            trace("rss", f"{time.monotonic():.6f}", vm_rss_kb())
            await trio.sleep(args.rss_every)

    options = trio_sqs.ConsumerOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        pollers=args.pollers,
        wait_time=args.wait_time,
        visibility_timeout=args.visibility_timeout,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace,
        flush_timeout=args.flush_timeout,
        poll_on_stop=args.poll_on_stop,
        **({} if args.error_backoff is None else {"error_backoff": args.error_backoff}),
    )
    rss_ready = 0
    # Listen for signals before connecting: one that arrives during start-up stops the worker as
    # soon as it runs instead of killing it with the default action.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio_sqs.open_consumer(
            args.queue, handle, endpoint_url=args.endpoint_url, options=options
        ) as consumer:
            rss_ready = vm_rss_kb()
            trace("ready", f"{time.monotonic():.6f}", os.getpid())
            async with trio.open_nursery() as nursery:
                if args.trace and args.rss_every > 0:
                    nursery.start_soon(report_rss)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    # No checkpoint between this timestamp and stop(): every request this process
                    # writes after <t> was written after stop().
                    trace("stopping", f"{time.monotonic():.6f}", name)
                    consumer.stop()
                    logging.info("got %s, stopping", name)
                    nursery.cancel_scope.cancel()
                    break
        # Leaving the block waited for the bounded shutdown.
    stats = dataclasses.asdict(consumer.statistics())
    stats.update(
        pid=os.getpid(),
        rss_ready_kb=rss_ready,
        vm_rss_kb=vm_rss_kb(),
        max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )
    emit("stats", json.dumps(stats, sort_keys=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("queue", help="queue name or URL")
    parser.add_argument(
        "--endpoint-url", default=None, help="e.g. a local server: python -m trio_sqs.testing"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="messages per receive")
    parser.add_argument("--pollers", type=int, default=None, help="concurrent long polls")
    parser.add_argument("--wait-time", type=int, default=20, help="long-poll seconds (0-20)")
    parser.add_argument(
        "--visibility-timeout", type=int, default=30, help="receive lease in seconds"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument("--grace", type=float, default=10.0, help="grace period at stop")
    parser.add_argument("--flush-timeout", type=float, default=5.0)
    parser.add_argument("--poll-on-stop", choices=["land", "abort"], default="land")
    parser.add_argument(
        "--error-backoff",
        type=float,
        default=None,
        help="first pause after a failed poll, doubling while failures go on (default: 0.5)",
    )
    parser.add_argument(
        "--handler-seconds",
        type=handler_seconds,
        default=(0.2, 0.2),
        help="handler duration: S, or LOW-HIGH (uniform)",
    )
    parser.add_argument("--slow-fraction", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="for reproducible runs")
    parser.add_argument("--trace", action="store_true", help="print the events listed above")
    parser.add_argument("--rss-every", type=float, default=0.0, help="with --trace: seconds")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.seed is not None:
        random.seed(arguments.seed)  # trio_sqs's backoff jitter draws from the global RNG
    logging.basicConfig(
        level=arguments.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for chatty in ("httpx", "httpcore", "botocore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    trio.run(main, arguments)
