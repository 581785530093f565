"""The boto3 baseline: the usual synchronous consumer with a thread pool.

The main thread receives up to 10 messages (long poll), runs their handlers on a
``ThreadPoolExecutor`` of ``concurrency`` threads, waits for them, deletes the successful ones
with one DeleteMessageBatch, and receives again.

On SIGTERM or SIGINT a signal handler sets a stop flag, as such programs usually do: the loop
finishes what it is doing (a long poll in progress runs to its end, then the batch it brings is
handled), leaves, and the pool is shut down waiting for its threads. SIGUSR1 prints a report and
goes on.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import boto3
from bench_common import REGION, Counts, Reporter, finish, parse_args, receive_params


def main() -> None:
    args = parse_args(__doc__ or "")
    reporter = Reporter()
    counts = Counts()
    lock = threading.Lock()
    stop = threading.Event()

    def handler(message: dict[str, Any]) -> None:
        if args.handler_seconds:
            time.sleep(args.handler_seconds)
        with lock:
            counts.completed += 1

    def on_signal(signum: int, frame: object) -> None:
        reporter.signalled()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reporter.report(counts))
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=args.endpoint)
    url = sqs.get_queue_url(QueueName=args.queue)["QueueUrl"]
    reporter.ready()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        while not stop.is_set():
            response = sqs.receive_message(**receive_params(url, args))
            messages = response.get("Messages", [])
            if not messages:
                continue
            counts.received += len(messages)
            futures = {pool.submit(handler, m): str(i) for i, m in enumerate(messages)}
            entries = [
                {"Id": futures[f], "ReceiptHandle": messages[int(futures[f])]["ReceiptHandle"]}
                for f in as_completed(futures)
                if f.exception() is None
            ]
            if entries:
                result = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                counts.deleted += len(result.get("Successful", []))
            if args.expect and counts.deleted >= args.expect:
                break
    reporter.report(counts)
    finish(args)


if __name__ == "__main__":
    main()
