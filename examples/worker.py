"""A worker process, the pattern of the README's "Consuming a queue": consume a queue until SIGTERM
or SIGINT, then stop gracefully.

Usage: python examples/worker.py QUEUE_NAME_OR_URL [--endpoint-url URL]

Before you run it: credentials and a region as for any AWS tool (`AWS_PROFILE`, or
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, and `AWS_REGION`), and a queue (`trio-sqs send
--create --queue NAME hello` creates one and sends a message). To try it without AWS, start the
in-memory SQS in another terminal (`python -m trio_sqs.testing --port 9324 --queue demo`) and run
`AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 python examples/worker.py demo
--endpoint-url http://127.0.0.1:9324`.

On SIGTERM (Kubernetes) or Ctrl-C: no new receive is sent, running handlers get the grace period,
what was received but not finished goes back to the queue, deletes are flushed, then it exits.
"""

from __future__ import annotations

import argparse
import logging
import signal

import trio

import trio_sqs


async def handle(message: trio_sqs.Message) -> None:
    # Returning acknowledges (deletes) the message; raising leaves it to come back after the
    # failure backoff; `raise trio_sqs.Retry(delay=30)` asks for it again in 30 s.
    print(f"handled {message.message_id}: {message.body[:60]!r}", flush=True)


async def main(queue: str, endpoint_url: str | None) -> None:
    async with trio_sqs.open_consumer(
        queue, handle, endpoint_url=endpoint_url, concurrency=16
    ) as consumer:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            print(f"consuming {consumer.queue_url}; Ctrl-C or SIGTERM to stop", flush=True)
            async for _ in signals:
                break  # leaving the block stops the consumer gracefully
    print(f"stopped: {consumer.statistics()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("queue", help="queue name or URL")
    parser.add_argument("--endpoint-url", help="a local SQS, e.g. http://127.0.0.1:9324")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trio.run(main, args.queue, args.endpoint_url)
