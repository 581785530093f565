"""The HTTP server of trio_sqs.testing (what the benchmarks run against) serves real clients in
other processes: boto3 against ``python -m trio_sqs.testing`` in a subprocess, and HTTP/1.1 edge
cases (keep-alive, pipelining, requests split across reads, clients closing mid-request, scripted
stalls and drops, requests it refuses) with raw sockets on 127.0.0.1.

Real sockets on a real clock: nothing here asserts on elapsed time.
"""

from __future__ import annotations

import hashlib
import json
import select
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
import botocore.exceptions
import pytest
import trio

from trio_sqs.testing import FakeSQS, serve_fake_sqs

TARGET = "AmazonSQS."
JSON = "application/x-amz-json-1.0"


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


# -- boto3 against the server in its own process --------------------------------------------------


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_sqs.testing", "--port", "0", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline().decode().strip() if ready else ""
        assert line.startswith("http://127.0.0.1:"), f"no endpoint on stdout ({line!r})"
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_boto3_in_another_process(server_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, endpoint = server_process
    sqs = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = f"bench-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    assert url == f"{endpoint}/123456789012/{name}"
    attributes = {"tenant": {"DataType": "String", "StringValue": "acme"}}
    sent = sqs.send_message(QueueUrl=url, MessageBody="héllo", MessageAttributes=attributes)
    assert sent["MD5OfMessageBody"] == md5("héllo")

    received = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )["Messages"]
    assert len(received) == 1
    message = received[0]
    assert (message["MessageId"], message["Body"]) == (sent["MessageId"], "héllo")
    assert message["MD5OfBody"] == md5("héllo")
    assert message["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert message["MessageAttributes"] == attributes
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    in_flight = get_json(f"{endpoint}/stats?queue={name}")["queue"]
    assert (in_flight["visible"], in_flight["in_flight"]) == (0, 1)

    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        sqs.receive_message(QueueUrl=f"{endpoint}/123456789012/nope-{name}")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "NonExistentQueue" in missing.value.response["Error"]["Code"]

    stats = get_json(f"{endpoint}/stats")
    assert stats["cpu_seconds"] > 0
    assert stats["requests"] == {
        "CreateQueue": 1,
        "SendMessage": 1,
        "ReceiveMessage": 2,
        "DeleteMessage": 1,
    }
    assert stats["queues"] == {
        name: {
            "visible": 0,
            "in_flight": 0,
            "delayed": 0,
            "waiting_polls": 0,
            "deliveries": 1,
            "orphaned_deliveries": 0,
            # The calls that named this queue (not the receive from the missing one).
            "requests": {
                "CreateQueue": 1,
                "SendMessage": 1,
                "ReceiveMessage": 1,
                "DeleteMessage": 1,
            },
        }
    }
    assert get_json(f"{endpoint}/stats?queue=nope")["queue"] is None

    assert proc.stdin is not None
    proc.stdin.close()  # --exit-on-stdin-eof
    assert proc.wait(timeout=15) == 0


# -- raw HTTP/1.1 against the server in this process ----------------------------------------------


def raw_request(
    operation: str, params: dict[str, Any], *, headers: str = "", version: str = "HTTP/1.1"
) -> bytes:
    body = json.dumps(params).encode()
    head = (
        f"POST / {version}\r\nHost: 127.0.0.1\r\nX-Amz-Target: {TARGET}{operation}\r\n"
        f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    )
    return head.encode() + body


class RawClient:
    """One TCP connection; responses read by Content-Length, leftovers kept for the next."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    async def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            await self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status), headers

    async def response(self) -> tuple[int, dict[str, str], Any]:
        status, headers = await self.head()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            await self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, json.loads(body) if body else None

    async def closed(self) -> bool:
        """True if the server closed the connection (after whatever it still had to say)."""
        try:
            while True:
                await self._more()
        except EOFError:
            return True


@asynccontextmanager
async def served() -> AsyncIterator[tuple[FakeSQS, str, int]]:
    """A FakeSQS served on 127.0.0.1 (a free port), with a fresh queue: (fake, queue URL, port)."""
    fake = FakeSQS()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_fake_sqs, fake)
        created = await fake.call("CreateQueue", {"QueueName": f"raw-{uuid.uuid4().hex[:8]}"})
        try:
            yield fake, created["QueueUrl"], int(endpoint.rsplit(":", 1)[1])
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield RawClient(stream)


async def test_keep_alive_pipelining_and_requests_split_across_reads() -> None:
    async with served() as (fake, url, port), connect(port) as client:
        send = raw_request("SendMessage", {"QueueUrl": url, "MessageBody": "split"})
        cuts = [0, 7, send.index(b"\r\n\r\n") + 1, send.index(b"\r\n\r\n") + 3, len(send) - 4]
        for start, end in zip(cuts, [*cuts[1:], len(send)], strict=True):
            await client.stream.send_all(send[start:end])
            await trio.sleep(0.02)  # separate reads, most likely (correct either way)
        status, headers, sent = await client.response()
        assert (status, headers["content-type"]) == (200, JSON)
        assert sent["MD5OfMessageBody"] == md5("split")

        # Two requests in one write, answered in order on the same connection.
        receive = raw_request("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10})
        attributes = raw_request("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["All"]})
        await client.stream.send_all(receive + attributes)
        status, _, received = await client.response()
        assert status == 200 and [m["Body"] for m in received["Messages"]] == ["split"]
        status, _, attrs = await client.response()
        assert status == 200
        assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"

        # A stats request in the middle of the conversation, then SQS again: still keep-alive.
        await client.stream.send_all(b"GET /stats?queue=nope HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, stats = await client.response()
        assert (status, headers["content-type"], stats["queue"]) == (200, "application/json", None)
        handle = received["Messages"][0]["ReceiptHandle"]
        await client.stream.send_all(
            raw_request("DeleteMessage", {"QueueUrl": url, "ReceiptHandle": handle})
        )
        status, _, _ = await client.response()
        assert status == 200
        assert fake.queue(url).counts().total == 0


async def test_a_client_closing_mid_request_changes_nothing() -> None:
    async with served() as (fake, url, port):
        send = raw_request("SendMessage", {"QueueUrl": url, "MessageBody": "never whole"})
        for cut in (20, send.index(b"\r\n\r\n") + 4, len(send) - 1):  # in the head, the body
            async with connect(port) as client:
                await client.stream.send_all(send[:cut])
        async with connect(port) as client:  # the server goes on serving
            await client.stream.send_all(raw_request("ListQueues", {}))
            status, _, listed = await client.response()
            assert (status, listed["QueueUrls"]) == (200, [url])
        assert fake.queue(url).counts().total == 0
        assert fake.call_counts["SendMessage"] == 0


async def test_stall_sends_the_head_and_never_the_body() -> None:
    async with served() as (fake, url, port), connect(port) as client:
        await fake.call("SendMessage", {"QueueUrl": url, "MessageBody": "taken"})
        fake.faults.stall("ReceiveMessage")
        await client.stream.send_all(raw_request("ReceiveMessage", {"QueueUrl": url}))
        status, headers = await client.head()
        assert status == 200 and int(headers["content-length"]) > 0
        with trio.move_on_after(0.2):
            await client._more()
        assert client.buffer == b""  # no body came (however slow the machine, none would)
        assert fake.queue(url).counts().in_flight == 1  # the receive took effect


@pytest.mark.parametrize("after", [False, True])
async def test_drop_resets_the_connection(after: bool) -> None:
    async with served() as (fake, url, port), connect(port) as client:
        fake.faults.drop("SendMessage", after=after)
        await client.stream.send_all(
            raw_request("SendMessage", {"QueueUrl": url, "MessageBody": "x"})
        )
        with pytest.raises(trio.BrokenResourceError) as reset:
            await client._more()
        assert isinstance(reset.value.__cause__, ConnectionResetError)  # RST, not FIN
        assert fake.queue(url).counts().visible == (1 if after else 0)


async def test_expect_continue_connection_close_and_http_1_0() -> None:
    async with served() as (_, url, port):
        async with connect(port) as client:
            request = raw_request("ListQueues", {}, headers="Expect: 100-continue\r\n")
            head, _, body = request.partition(b"\r\n\r\n")
            await client.stream.send_all(head + b"\r\n\r\n")
            status, _ = await client.head()
            assert status == 100
            await client.stream.send_all(body)
            status, _, listed = await client.response()
            assert (status, listed["QueueUrls"]) == (200, [url])
        async with connect(port) as client:
            await client.stream.send_all(
                raw_request("ListQueues", {}, headers="Connection: close\r\n")
            )
            status, headers, _ = await client.response()
            assert (status, headers["connection"]) == (200, "close")
            assert await client.closed()
        async with connect(port) as client:
            await client.stream.send_all(raw_request("ListQueues", {}, version="HTTP/1.0"))
            status, _, _ = await client.response()
            assert status == 200 and await client.closed()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: nine\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n folded: header\r\n\r\n", 400),
        (b"POST / HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ],
)
async def test_requests_it_cannot_read_are_refused_and_closed(
    request_bytes: bytes, status: int
) -> None:
    async with served() as (_, _, port), connect(port) as client:
        await client.stream.send_all(request_bytes)
        answered, headers, _ = await client.response()
        assert (answered, headers["connection"]) == (status, "close")
        assert await client.closed()
