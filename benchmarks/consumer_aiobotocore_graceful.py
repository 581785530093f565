"""The aiobotocore baseline with a graceful stop, as a careful asyncio user would write it.

Consumption is that of ``consumer_aiobotocore.py`` (the naive one): one loop receives up to 10
messages (long poll), takes a slot of an ``asyncio.Semaphore`` per message, and hands the batch
to a task that runs its handlers as concurrent asyncio tasks and then deletes the successful ones
with one DeleteMessageBatch, while the loop goes on receiving.

It also keeps every message it received and has neither deleted nor released. On SIGTERM or
SIGINT it stops receiving (cancels the receive loop, and with it the long poll in flight), waits
``--grace`` seconds (10, trio_sqs's default) for the running batches, cancels those still running
after that, deletes the messages whose handlers finished but were not deleted yet, and releases
every other one it holds (received but not started, or cut off) with ChangeMessageVisibilityBatch
``VisibilityTimeout=0``, so that nothing stays invisible after it exits. Then it closes the
client. SIGUSR1 prints a report and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiobotocore.session import get_session
from bench_common import REGION, Counts, Reporter, finish, parse_args, receive_params


class Held:
    """Messages received and neither deleted nor released, by receipt handle; ``finished``: those
    whose handler completed (their delete is pending)."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()
        self.released = 0

    def forget(self, handles: list[str]) -> None:
        for handle in handles:
            self.messages.pop(handle, None)
            self.finished.discard(handle)


async def process_batch(
    sqs: Any,
    url: str,
    messages: list[dict[str, Any]],
    slots: asyncio.Semaphore,
    held: Held,
    counts: Counts,
    args: argparse.Namespace,
    done: asyncio.Event,
) -> None:
    async def handle(message: dict[str, Any]) -> None:
        try:
            if args.handler_seconds:
                await asyncio.sleep(args.handler_seconds)
            counts.completed += 1
            held.finished.add(message["ReceiptHandle"])
        except asyncio.CancelledError:
            counts.cancelled += 1
            raise
        finally:
            slots.release()

    handlers = [asyncio.create_task(handle(m)) for m in messages]
    try:
        await asyncio.gather(*handlers)
    except asyncio.CancelledError:
        # Cut off at the end of the grace period: gather cancelled the handlers; wait for them
        # to unwind so that the stop sees which finished.
        await asyncio.gather(*handlers, return_exceptions=True)
        raise
    finished = [m["ReceiptHandle"] for m in messages if m["ReceiptHandle"] in held.finished]
    if finished:
        await delete(sqs, url, finished, held, counts)
        if args.expect and counts.deleted >= args.expect:
            done.set()


async def delete(sqs: Any, url: str, handles: list[str], held: Held, counts: Counts) -> None:
    for start in range(0, len(handles), 10):
        chunk = handles[start : start + 10]
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
        response = await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        counts.deleted += len(response.get("Successful", []))
        held.forget(chunk)


async def release(sqs: Any, url: str, handles: list[str], held: Held) -> None:
    for start in range(0, len(handles), 10):
        chunk = handles[start : start + 10]
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(chunk)
        ]
        response = await sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        held.released += len(response.get("Successful", []))
        held.forget(chunk)


async def receive_loop(
    sqs: Any,
    url: str,
    slots: asyncio.Semaphore,
    batches: set[asyncio.Task[None]],
    held: Held,
    counts: Counts,
    args: argparse.Namespace,
    done: asyncio.Event,
) -> None:
    while True:
        response = await sqs.receive_message(**receive_params(url, args))
        messages = response.get("Messages", [])
        if not messages:
            continue
        counts.received += len(messages)
        for message in messages:
            held.messages[message["ReceiptHandle"]] = message
        for _ in messages:
            await slots.acquire()  # a stop here leaves the batch held: it is released
        task = asyncio.create_task(
            process_batch(sqs, url, messages, slots, held, counts, args, done)
        )
        batches.add(task)
        task.add_done_callback(batches.discard)


async def consume(args: argparse.Namespace, reporter: Reporter) -> None:
    counts = Counts()
    held = Held()
    done = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    session = get_session()
    async with session.create_client("sqs", region_name=REGION, endpoint_url=args.endpoint) as sqs:
        url = (await sqs.get_queue_url(QueueName=args.queue))["QueueUrl"]

        def on_signal() -> None:
            reporter.signalled()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: reporter.report(counts, released=held.released)
        )
        reporter.ready()
        slots = asyncio.Semaphore(args.concurrency)
        batches: set[asyncio.Task[None]] = set()
        receiving = asyncio.create_task(
            receive_loop(sqs, url, slots, batches, held, counts, args, done)
        )
        waits = [asyncio.create_task(done.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait({receiving, *waits}, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done():
                receiving.result()  # the loop failed: let its error out
        finally:
            # Stop receiving: cancel the loop and the long poll it may be in.
            for task in (receiving, *waits):
                task.cancel()
            await asyncio.gather(receiving, *waits, return_exceptions=True)
            # Let the running batches finish within the grace period; cut off the rest.
            if batches:
                _, late = await asyncio.wait(set(batches), timeout=args.grace)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            # Delete what finished, release everything else still held.
            finished = [h for h in held.messages if h in held.finished]
            if finished:
                await delete(sqs, url, finished, held, counts)
            if held.messages:
                await release(sqs, url, list(held.messages), held)
    reporter.report(counts, released=held.released)


def main() -> None:
    args = parse_args(__doc__ or "")
    asyncio.run(consume(args, Reporter()))
    finish(args)


if __name__ == "__main__":
    main()
