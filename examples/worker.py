"""A worker process: consume a queue until SIGTERM or SIGINT, then stop gracefully.

Usage: python examples/worker.py QUEUE_NAME_OR_URL [--endpoint-url URL] [--handler-seconds S]

On SIGTERM (Kubernetes) or Ctrl-C: no new receive is sent, running handlers get the grace period,
unstarted messages go straight back to the queue, deletes are flushed, then the process exits.
Each handled message id is printed on stdout as ``handled <id>``.
"""

from __future__ import annotations

import argparse
import logging
import signal

import trio

import trio_sqs


async def main(args: argparse.Namespace) -> None:
    async def handle(message: trio_sqs.Message) -> None:
        await trio.sleep(args.handler_seconds)  # the real work goes here
        print(f"handled {message.message_id}", flush=True)

    async with trio_sqs.open_consumer(
        args.queue,
        handle,
        endpoint_url=args.endpoint_url,
        concurrency=args.concurrency,
        grace_period=args.grace,
    ) as consumer:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logging.info("got %s, stopping", signal.Signals(signum).name)
                break  # leaving the block stops the consumer gracefully
    logging.info("stopped: %s", consumer.statistics())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("queue")
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--handler-seconds", type=float, default=0.2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio.run(main, parser.parse_args())
