"""The trio_sqs consumer of the benchmarks: ``open_consumer`` as the README shows it.

Settings from the command line (see ``bench_common.py``): ``concurrency``, ``batch_size``,
``wait_time``, ``visibility_timeout`` (the receive lease, with heartbeats) and ``grace_period``;
every other option at its default (``poll_on_stop="land"``, ``max_buffered`` = batch size, enough
pollers to keep the handlers busy). SIGTERM or SIGINT leaves the ``async with`` block, which is
the library's graceful stop; SIGUSR1 prints a report and goes on.

Two options of this consumer only, passed to ``open_consumer`` only when given (so the script
runs with a trio_sqs that has no such option, as long as it is not asked for):
``--batch-window SECONDS`` (``batch_window``) and ``--pollers N`` (``pollers``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import trio
from bench_common import REGION, Counts, Reporter, finish, parse_args

import trio_sqs


def parse_all_args() -> tuple[argparse.Namespace, dict[str, Any]]:
    """The shared command line (``bench_common.parse_args``) and this consumer's own options,
    returned as ``open_consumer`` keywords (only those given)."""
    # No abbreviations: the shared --batch must not be taken for --batch-window.
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--batch-window", type=float, default=None, help="batch_window, seconds")
    own.add_argument("--pollers", type=int, default=None, help="pollers")
    own.add_argument(
        "--http-parser",
        choices=("h11", "httptools"),
        default=None,
        help="the transport's response parser (default: httptools when installed)",
    )
    own.add_argument(
        "--json",
        choices=("json", "orjson"),
        default=None,
        help="the decoder of ReceiveMessage answers (default: orjson when installed)",
    )
    extra, rest = own.parse_known_args()
    if extra.http_parser is not None:
        os.environ["TRIO_SQS_HTTP_PARSER"] = extra.http_parser
    if extra.json is not None:
        os.environ["TRIO_SQS_JSON"] = extra.json  # (read when the client opens)
    sys.argv[1:] = rest
    args = parse_args(__doc__ or "")
    options = {"batch_window": extra.batch_window, "pollers": extra.pollers}
    return args, {k: v for k, v in options.items() if v is not None}


async def consume(args: argparse.Namespace, options: dict[str, Any], reporter: Reporter) -> None:
    counts = Counts()
    done = trio.Event()
    seconds = args.handler_seconds

    async def handler(message: trio_sqs.Message) -> None:
        if seconds:
            try:
                await trio.sleep(seconds)
            except trio.Cancelled:
                counts.cancelled += 1
                raise
        counts.completed += 1
        if counts.completed == args.expect:
            done.set()

    def report() -> None:
        stats = consumer.statistics()
        counts.received, counts.deleted = stats.received, stats.deleted
        reporter.report(counts, released=stats.released, aborted_polls=stats.aborted_polls)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with trio_sqs.open_consumer(
            args.queue,
            handler,
            endpoint_url=args.endpoint,
            region=REGION,
            concurrency=args.concurrency,
            batch_size=args.batch,
            wait_time=args.wait,
            visibility_timeout=args.visibility,
            grace_period=args.grace,
            **options,
        ) as consumer:
            reporter.ready()
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            report()
                        else:
                            reporter.signalled()
                            done.set()

                nursery.start_soon(watch_signals)
                await done.wait()
                nursery.cancel_scope.cancel()
        # Leaving the block: stopped, handlers finished, releases and deletes flushed.
    report()


def main() -> None:
    args, options = parse_all_args()
    trio.run(consume, args, options, Reporter())
    finish(args)


if __name__ == "__main__":
    main()
