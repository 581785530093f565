"""Send, receive and delete through trio_sqs's client, against an embedded local moto server.

Run: python examples/client_roundtrip.py   (needs the `demo` or `test` extra for moto)
"""

from __future__ import annotations

import os

import trio

import trio_sqs


async def main(endpoint: str) -> None:
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as sqs:
        url = await sqs.create_queue("trio-sqs-roundtrip")
        for i in range(3):
            await sqs.send_message(url, f"message {i}")
        received = await sqs.receive_messages(url, max_messages=10, wait_time=1)
        for message in received:
            print(f"received {message.message_id}: {message.body!r}")
        result = await sqs.delete_message_batch(url, [m.receipt_handle for m in received])
        print(f"deleted {len(result.successful)}, failed {len(result.failed)}")


if __name__ == "__main__":
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        trio.run(main, f"http://{host}:{port}")
    finally:
        server.stop()
