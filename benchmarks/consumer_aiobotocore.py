"""The aiobotocore baseline, "aiobotocore (naive)" in run_all.py's tables: the obvious asyncio
consumer a user would write. (``consumer_aiobotocore_graceful.py`` is the same consumer with a
graceful stop.)

One loop receives up to 10 messages (long poll), takes a slot of an ``asyncio.Semaphore`` per
message (so at most ``concurrency`` handlers run and at most one received batch waits for slots),
and hands the batch to a task that runs its handlers concurrently as asyncio tasks and then
deletes the successful ones with one DeleteMessageBatch. The loop goes on receiving meanwhile.

On SIGTERM or SIGINT it does what asyncio programs usually do: cancel the main task. The
cancellation reaches the receive and every handler task; the client is closed on the way out.
Messages whose handlers were cut off stay invisible until their visibility timeout ends.
SIGUSR1 prints a report and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiobotocore.session import get_session
from bench_common import REGION, Counts, Reporter, finish, parse_args, receive_params


async def process_batch(
    sqs: Any,
    url: str,
    messages: list[dict[str, Any]],
    slots: asyncio.Semaphore,
    counts: Counts,
    args: argparse.Namespace,
    done: asyncio.Event,
) -> None:
    async def handle(message: dict[str, Any]) -> bool:
        try:
            if args.handler_seconds:
                await asyncio.sleep(args.handler_seconds)
            counts.completed += 1
            return True
        except asyncio.CancelledError:
            counts.cancelled += 1
            raise
        finally:
            slots.release()

    results = await asyncio.gather(*(handle(m) for m in messages))
    entries = [
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
        for i, (m, ok) in enumerate(zip(messages, results, strict=True))
        if ok
    ]
    if entries:
        response = await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        counts.deleted += len(response.get("Successful", []))
        if args.expect and counts.deleted >= args.expect:
            done.set()


async def receive_loop(
    sqs: Any, url: str, counts: Counts, args: argparse.Namespace, done: asyncio.Event
) -> None:
    slots = asyncio.Semaphore(args.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            response = await sqs.receive_message(**receive_params(url, args))
            messages = response.get("Messages", [])
            if not messages:
                continue
            counts.received += len(messages)
            for _ in messages:
                await slots.acquire()
            task = asyncio.create_task(process_batch(sqs, url, messages, slots, counts, args, done))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def consume(args: argparse.Namespace, reporter: Reporter) -> None:
    counts = Counts()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    session = get_session()
    async with session.create_client("sqs", region_name=REGION, endpoint_url=args.endpoint) as sqs:
        url = (await sqs.get_queue_url(QueueName=args.queue))["QueueUrl"]

        def on_signal() -> None:
            reporter.signalled()
            main_task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        loop.add_signal_handler(signal.SIGUSR1, lambda: reporter.report(counts))
        reporter.ready()
        receiving = asyncio.create_task(receive_loop(sqs, url, counts, args, done))
        finished = asyncio.create_task(done.wait())
        try:
            await asyncio.wait({receiving, finished}, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done():
                receiving.result()  # the loop failed: let its error out
        except asyncio.CancelledError:
            pass  # SIGTERM: fall through, cancel everything and close the client
        finally:
            finished.cancel()
            receiving.cancel()
            await asyncio.gather(receiving, finished, return_exceptions=True)
    reporter.report(counts)


def main() -> None:
    args = parse_args(__doc__ or "")
    asyncio.run(consume(args, Reporter()))
    finish(args)


if __name__ == "__main__":
    main()
