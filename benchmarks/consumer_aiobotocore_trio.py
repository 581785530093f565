"""aiobotocore on Trio, through its httpx backend, with a graceful stop.

aiobotocore (3.10 here) runs on Trio when its client uses the httpx session
(``AioConfig(http_session_cls=HttpxSession)``): it then takes its locks, sleeps and threads from
anyio instead of asyncio. This is the same stack as trio_sqs's (Trio, httpx, botocore), but
with botocore's whole client (hooks, validation, endpoint resolution, retries) as aiobotocore
drives it, and a consumer loop written the way a Trio user would:

One task receives up to 10 messages (long poll), takes a slot of a ``trio.Semaphore`` per
message, and starts a batch task that runs the handlers in a nursery and then deletes the
successful ones with one DeleteMessageBatch, while the loop goes on receiving. Every message
received and neither deleted nor released is kept. On SIGTERM or SIGINT the receive loop's cancel
scope is cancelled (and with it the long poll in flight); the running batches get ``--grace``
seconds (10, trio_sqs's default) to finish and are cancelled after that; then the messages whose
handlers finished are deleted and every other one is released with ChangeMessageVisibilityBatch
``VisibilityTimeout=0``, and the client is closed. SIGUSR1 prints a report and goes on.
"""

from __future__ import annotations

import argparse
import signal
import warnings
from typing import Any

import trio
from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from aiobotocore.session import get_session
from bench_common import REGION, Counts, Reporter, finish, parse_args, receive_params

# aiobotocore prefers httpx2 (a fork) and warns when it falls back to httpx, which is what this
# project (and trio_sqs) uses.
warnings.filterwarnings("ignore", message=".*httpx backend now prefers httpx2", category=Warning)


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


async def consume(args: argparse.Namespace, reporter: Reporter) -> None:
    counts = Counts()
    held = Held()
    done = trio.Event()
    slots = trio.Semaphore(args.concurrency)

    async def handle(message: dict[str, Any]) -> None:
        try:
            if args.handler_seconds:
                await trio.sleep(args.handler_seconds)
            counts.completed += 1
            held.finished.add(message["ReceiptHandle"])
        except trio.Cancelled:
            counts.cancelled += 1
            raise
        finally:
            slots.release()

    async def process_batch(messages: list[dict[str, Any]]) -> None:
        async with trio.open_nursery() as handlers:
            for message in messages:
                handlers.start_soon(handle, message)
        finished = [m["ReceiptHandle"] for m in messages if m["ReceiptHandle"] in held.finished]
        if finished:
            await delete(sqs, url, finished, held, counts)
            if args.expect and counts.deleted >= args.expect:
                done.set()

    async def receive_loop(batches: trio.Nursery) -> None:
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
            batches.start_soon(process_batch, messages)

    config = AioConfig(http_session_cls=HttpxSession)
    session = get_session()
    session.set_default_client_config(config)  # anyio primitives for the session's own parts
    async with session.create_client(
        "sqs", region_name=REGION, endpoint_url=args.endpoint, config=config
    ) as sqs:
        url = (await sqs.get_queue_url(QueueName=args.queue))["QueueUrl"]
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            receiving = trio.CancelScope()
            working = trio.CancelScope()
            async with trio.open_nursery() as top:

                async def watch() -> None:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            reporter.report(counts, released=held.released)
                        else:
                            reporter.signalled()
                            receiving.cancel()

                async def watch_done() -> None:
                    await done.wait()
                    receiving.cancel()

                top.start_soon(watch)
                top.start_soon(watch_done)
                reporter.ready()
                with working:
                    async with trio.open_nursery() as batches:
                        with receiving:
                            await receive_loop(batches)
                        # Stopped receiving: the running batches get the grace period.
                        working.deadline = trio.current_time() + args.grace
                top.cancel_scope.cancel()
        # Delete what finished, release everything else still held.
        finished = [h for h in held.messages if h in held.finished]
        if finished:
            await delete(sqs, url, finished, held, counts)
        if held.messages:
            await release(sqs, url, list(held.messages), held)
    reporter.report(counts, released=held.released)


def main() -> None:
    args = parse_args(__doc__ or "")
    trio.run(consume, args, Reporter())
    finish(args)


if __name__ == "__main__":
    main()
