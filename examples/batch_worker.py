"""A batch worker: the handler gets up to 10 messages at once and reports the ones that failed.

Usage: python examples/batch_worker.py QUEUE_NAME_OR_URL [--endpoint-url URL]

Messages the handler returns are not acknowledged (they come back after the failure backoff); the
rest of the batch is deleted, like Lambda's ReportBatchItemFailures.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal

import trio

import trio_sqs


async def handle_batch(messages: list[trio_sqs.Message]) -> list[trio_sqs.Message]:
    failed = []
    for message in messages:
        try:
            record = json.loads(message.body)
        except ValueError:
            failed.append(message)  # redelivered later; a dead-letter queue catches repeats
            continue
        print(f"handled {message.message_id}: {len(record)} field(s)", flush=True)
    return failed


async def main(args: argparse.Namespace) -> None:
    async with trio_sqs.open_consumer(
        args.queue, handle_batch, batch=True, endpoint_url=args.endpoint_url, concurrency=4
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
