"""A FIFO worker: messages of one MessageGroupId run one at a time and in order; groups run in
parallel. If a message fails, the rest of its group already in hand goes back unprocessed, so the
failed message is retried before them and the group's order holds.

Usage: python examples/fifo_worker.py QUEUE_URL_ENDING_IN_.fifo [--endpoint-url URL]
"""

from __future__ import annotations

import argparse
import logging
import signal

import trio

import trio_sqs


async def handle(message: trio_sqs.Message) -> None:
    if message.body == "poison" and message.receive_count < 3:
        # Ask for redelivery in 5 s; later messages of this group wait for it.
        raise trio_sqs.Retry(delay=5)
    print(f"group {message.message_group_id} seq {message.sequence_number}: {message.body}")


async def main(args: argparse.Namespace) -> None:
    async with trio_sqs.open_consumer(
        args.queue, handle, endpoint_url=args.endpoint_url, concurrency=16
    ):
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("queue")
    parser.add_argument("--endpoint-url", default=None)
    logging.basicConfig(level=logging.INFO)
    trio.run(main, parser.parse_args())
