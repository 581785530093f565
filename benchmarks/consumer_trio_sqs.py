"""The trio_sqs consumer of the benchmarks: ``open_consumer`` as the README shows it.

Settings from the command line (see ``bench_common.py``): ``concurrency``, ``batch_size``,
``wait_time``, ``visibility_timeout`` (the receive lease, with heartbeats) and ``grace_period``;
every other option at its default (``poll_on_stop="land"``, ``max_buffered`` = batch size, enough
pollers to keep the handlers busy). SIGTERM or SIGINT leaves the ``async with`` block, which is
the library's graceful stop; SIGUSR1 prints a report and goes on.
"""

from __future__ import annotations

import argparse
import signal

import trio
from bench_common import REGION, Counts, Reporter, finish, parse_args

import trio_sqs


async def consume(args: argparse.Namespace, reporter: Reporter) -> None:
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
    args = parse_args(__doc__ or "")
    trio.run(consume, args, Reporter())
    finish(args)


if __name__ == "__main__":
    main()
