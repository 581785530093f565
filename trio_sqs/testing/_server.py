"""The in-memory SQS over real HTTP/1.1 (h11 on Trio streams), for benchmarks, end-to-end tests
and any SQS client in another process (boto3, aiobotocore, the AWS CLI)."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

import h11
import trio

from ._service import FakeSQS
from ._wire import answer

__all__ = ["main", "serve_fake_sqs"]

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _stats(fake: FakeSQS) -> dict[str, Any]:
    queues = {}
    for name, queue in fake.queues.items():
        counts = queue.counts()
        queues[name] = {
            "visible": counts.visible,
            "in_flight": counts.in_flight,
            "delayed": counts.delayed,
            "waiting_polls": queue.waiting_polls,
            "deliveries": queue.deliveries,
            "orphaned_deliveries": queue.orphaned_deliveries,
        }
    return {"requests": dict(fake.call_counts), "queues": queues}


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _serve_connection(fake: FakeSQS, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        while True:
            head: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return
                elif isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_REQUEST_BYTES:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed
                    return
            assert head is not None
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            target = head.target.decode("latin-1")
            if head.method == b"GET" and target == "/stats":
                payload = json.dumps(_stats(fake)).encode()
                reply_headers = {"Content-Type": "application/json"}
                status = 200
            else:
                reply = await answer(fake, head.method.decode(), target, headers, bytes(body))
                if reply.action == "drop":
                    # SO_LINGER 0: close() sends RST, the client sees "connection reset".
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return
                payload, reply_headers, status = reply.body, reply.headers, reply.status
                if reply.action == "stall":
                    reply_headers["Content-Length"] = str(len(payload))
                    await _send(
                        stream,
                        conn,
                        h11.Response(status_code=status, headers=list(reply_headers.items())),
                    )
                    while await stream.receive_some(65536):
                        pass  # until the client gives up and closes
                    return
            reply_headers["Content-Length"] = str(len(payload))
            await _send(
                stream, conn, h11.Response(status_code=status, headers=list(reply_headers.items()))
            )
            await _send(stream, conn, h11.Data(data=payload))
            await _send(stream, conn, h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return  # the client went away; what it asked for has taken effect
    finally:
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


async def serve_fake_sqs(
    fake: FakeSQS,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` over HTTP/1.1 until cancelled; report the endpoint URL with
    ``task_status.started()`` and make it the base of queue URLs created from then on.

    ``GET /stats`` answers JSON with the calls counted per operation and each queue's counts.

    Cancellation: stops listening and closes every connection.
    """
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(_serve_connection, fake), port, host=host
            )
        )
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        fake.endpoint = f"http://{shown}:{bound_port}"
        task_status.started(fake.endpoint)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeSQS(
        region=args.region,
        verify_signatures=args.verify_signatures,
        record=False,
    )
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            functools.partial(serve_fake_sqs, fake, host=args.host, port=args.port)
        )
        print(endpoint, flush=True)
        for name in args.queue:
            await fake.call("CreateQueue", {"QueueName": name})
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if args.exit_on_stdin_eof:
                nursery.start_soon(_wait_for_eof, nursery.cancel_scope)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


async def _wait_for_eof(scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(4096):
        pass
    scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m trio_sqs.testing``: serve an in-memory SQS on 127.0.0.1 until SIGINT/SIGTERM.

    The first line on stdout is the endpoint URL. Credentials: any key, unless
    ``--verify-signatures`` (then the access key ``testing`` with the secret ``testing``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m trio_sqs.testing",
        description="Serve trio_sqs's in-memory SQS over HTTP (for tests and benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--queue", action="append", default=[], help="create this queue at start (repeatable)"
    )
    parser.add_argument(
        "--verify-signatures",
        action="store_true",
        help="check SigV4 signatures (access key 'testing', secret 'testing')",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (a parent process that went away)",
    )
    args = parser.parse_args(argv)
    try:
        trio.run(_run, args)
    except KeyboardInterrupt:
        pass
