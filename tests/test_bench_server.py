"""The HTTP server of trio_sqs.testing (what the benchmarks run against) serves real clients in
other processes: boto3 against ``python -m trio_sqs.testing`` in a subprocess, and HTTP/1.1 edge
cases (keep-alive, pipelining, requests split across reads, clients closing mid-request, scripted
stalls and drops, requests it refuses) with raw sockets on 127.0.0.1.

Real sockets on a real clock: nothing here asserts on elapsed time.
"""

from __future__ import annotations

import hashlib
import json
import resource
import select
import signal
import socket
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
import trio.testing

import trio_sqs
from trio_sqs.testing import FakeSQS, serve_fake_sqs
from trio_sqs.testing._server import main

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
        # more digits than int() reads (4,300): it raised and the connection got no answer
        (b"POST / HTTP/1.1\r\nContent-Length: 1" + b"0" * 5000 + b"\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: " + b"0" * 4999 + b"9000000\r\n\r\n", 413),
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


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Latin-1 0xB2 is "²": str.isdigit() says yes, int() says no. It used to raise out of
        # the connection's task, and trio.serve_tcp then stopped the whole server.
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", id="length-in-superscript"
        ),
        # Lines ending in a bare LF: the server waited for CRLF CRLF, the client for an answer.
        pytest.param(b"GET /stats HTTP/1.1\nHost: x\n\n", id="bare-LF"),
    ],
)
async def test_the_server_goes_on_serving_after_a_refused_request(request_bytes: bytes) -> None:
    async with served() as (_, url, port):
        async with connect(port) as client:
            await client.stream.send_all(request_bytes)
            status, headers, _ = await client.response()
            assert (status, headers["connection"]) == (400, "close")
            assert await client.closed()
        async with connect(port) as client:
            await client.stream.send_all(raw_request("ListQueues", {}))
            status, _, listed = await client.response()
            assert (status, listed["QueueUrls"]) == (200, [url])


@pytest.mark.parametrize(
    ("head", "body_bytes", "status"),
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n", 5_000_000, 413, id="too-large"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 3_000_000, 501, id="chunked"
        ),
    ],
)
async def test_a_refused_request_is_answered_even_if_the_client_sends_its_body_first(
    head: bytes, body_bytes: int, status: int
) -> None:
    """Many clients write the whole request before they read. A server that closes with
    unread data resets the connection, and the reset destroyed the answer (the client saw
    ECONNRESET, never the 413): the server now reads and drops the rest before closing."""
    async with served() as (_, _, port), connect(port) as client:
        await client.stream.send_all(head + b"x" * body_bytes)
        await client.stream.send_eof()
        answered, headers, body = await client.response()
        assert (answered, headers["connection"]) == (status, "close")
        assert body["message"]
        assert await client.closed()


async def test_connection_close_with_requests_pipelined_after_it_ends_cleanly() -> None:
    """What a client pipelined after ``Connection: close`` is dropped, not left unread: closing
    with unread data reset the connection (the client saw ECONNRESET instead of the end)."""
    async with served() as (_, url, port), connect(port) as client:
        last = raw_request("ListQueues", {}, headers="Connection: close\r\n")
        await client.stream.send_all(last + raw_request("ListQueues", {}) * 3000)
        status, headers, listed = await client.response()
        assert (status, headers["connection"], listed["QueueUrls"]) == (200, "close", [url])
        assert await client.closed()
        assert client.buffer == b""  # none of the pipelined requests was answered


async def test_http_1_0_keep_alive_is_confirmed_and_honoured() -> None:
    """An HTTP/1.0 client keeps a connection only if the answer says ``Connection: keep-alive``
    (without it, it must assume the server closes)."""
    async with served() as (_, url, port), connect(port) as client:
        for _ in range(2):
            await client.stream.send_all(
                raw_request(
                    "ListQueues", {}, headers="Connection: keep-alive\r\n", version="HTTP/1.0"
                )
            )
            status, headers, listed = await client.response()
            assert (status, headers["connection"], listed["QueueUrls"]) == (
                200,
                "keep-alive",
                [url],
            )


async def test_a_bug_while_serving_one_connection_closes_that_one_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """trio.serve_tcp lets a handler's exception out, which ends every connection and the
    server itself: the server catches it per connection, says so on stderr, and goes on."""
    from trio_sqs.testing import _server

    def broken(*args: object) -> dict[str, Any]:
        raise RuntimeError("a bug in the stats")

    async with served() as (_, url, port):
        with monkeypatch.context() as patch:
            patch.setattr(_server, "_stats", broken)
            async with connect(port) as client:
                await client.stream.send_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await client.closed()
                assert client.buffer == b""
        assert "RuntimeError: a bug in the stats" in capsys.readouterr().err
        async with connect(port) as client:
            await client.stream.send_all(raw_request("ListQueues", {}))
            status, _, listed = await client.response()
            assert (status, listed["QueueUrls"]) == (200, [url])


async def test_a_client_sending_one_byte_at_a_time_holds_only_its_own_connection() -> None:
    """Slowloris: a connection whose head never ends is held (a test server has no read
    timeout), but it is one task among others: everyone else is served meanwhile, and the slow
    request, once whole, is answered."""
    async with served() as (fake, url, port), connect(port) as slow:
        request = raw_request("SendMessage", {"QueueUrl": url, "MessageBody": "slow"})
        for i in range(len(request) - 1):
            await slow.stream.send_all(request[i : i + 1])
            if i % 50 == 0:
                async with connect(port) as other:
                    await other.stream.send_all(raw_request("ListQueues", {}))
                    status, _, listed = await other.response()
                    assert (status, listed["QueueUrls"]) == (200, [url])
        assert fake.queue(url).counts().visible == 0
        await slow.stream.send_all(request[-1:])
        status, _, sent = await slow.response()
        assert (status, sent["MD5OfMessageBody"]) == (200, md5("slow"))


async def test_a_client_gone_during_a_long_poll() -> None:
    """The poll stays registered (as on SQS), takes the next message, and its answer goes to a
    closed socket: the server survives it and goes on serving."""
    async with served() as (fake, url, port):
        queue = fake.queue(url)
        async with connect(port) as client:
            await client.stream.send_all(
                raw_request("ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 20})
            )
            while queue.waiting_polls == 0:  # the request is on its way through the loopback
                await trio.testing.wait_all_tasks_blocked()
        await fake.call("SendMessage", {"QueueUrl": url, "MessageBody": "to nobody"})
        assert (queue.waiting_polls, queue.counts().in_flight, queue.deliveries) == (0, 1, 1)
        async with connect(port) as client:
            await client.stream.send_all(raw_request("ListQueues", {}))
            status, _, listed = await client.response()
            assert (status, listed["QueueUrls"]) == (200, [url])


async def test_a_thousand_connections_at_once() -> None:
    """1,000 clients connected at the same time (each waits until all are), then each sends a
    message and reads its answer."""
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * count + 200  # both ends of every connection live in this process
    if needed > soft:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        async with served() as (fake, url, port):
            connected = 0
            everyone_in = trio.Event()
            statuses: list[int] = []

            async def one(i: int) -> None:
                nonlocal connected
                async with connect(port) as client:
                    connected += 1
                    if connected == count:
                        everyone_in.set()
                    await everyone_in.wait()
                    body = f"m{i}"
                    await client.stream.send_all(
                        raw_request("SendMessage", {"QueueUrl": url, "MessageBody": body})
                    )
                    status, _, sent = await client.response()
                    assert sent["MD5OfMessageBody"] == md5(body)
                    statuses.append(status)

            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, i)
            assert statuses == [200] * count
            assert fake.queue(url).counts().visible == count
            assert fake.call_counts["SendMessage"] == count
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- python -m trio_sqs.testing: starting and stopping --------------------------------------------


def test_cli_start_failures_are_one_line_and_exit_non_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A port in use, an address not here or a bad --queue: one line on stderr, exit status 1
    (not a traceback of nested exception groups, nor an endpoint printed first); a port out of
    range is a usage error (2), where it used to wrap around (70000 served on 4464)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--port", str(port)], 1, f"cannot listen on 127.0.0.1:{port}: [Errno 98]"),
            (["--queue", "ok", "--queue", "bad name!"], 1, "--queue 'bad name!': Can only"),
            (["--port", "70000"], 2, "argument --port: 70000 is not a TCP port"),
            (["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
        ]
        for argv, code, message in cases:
            with pytest.raises(SystemExit) as exited:
                main(argv)
            assert exited.value.code == code, argv
            out, err = capsys.readouterr()
            assert out == ""
            assert message in err
            assert err.count("\n") == 1, err  # one line: no usage block


async def test_cli_queue_named_fifo_is_a_fifo_queue() -> None:
    """``--queue jobs.fifo`` failed: the name must end in .fifo, it said, of a name that
    did (the queue was created without FifoQueue)."""
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_sqs.testing", "--queue", "jobs.fifo", "--queue", "std"],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(4096)
            endpoint = line.decode().strip()
            async with trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as client:
                fifo = await client.get_queue_attributes(await client.get_queue_url("jobs.fifo"))
                std = await client.get_queue_attributes(await client.get_queue_url("std"))
            assert fifo["FifoQueue"] == "true" and "FifoQueue" not in std
        finally:
            process.terminate()
            await process.wait()


def test_cli_sigterm_just_after_the_endpoint_exits_cleanly() -> None:
    """A parent that read the endpoint may stop the server at once: the signal handler is in
    place before the endpoint is printed (it used to be installed after the --queue queues were
    created, and SIGTERM then killed the process: exit status -15)."""
    queues = [arg for i in range(30) for arg in ("--queue", f"q{i}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_sqs.testing", *queues],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(b"http://127.0.0.1:"), line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err.decode()
        assert err == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_exit_on_stdin_eof_with_stdin_closed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started with stdin closed (``<&-``; Python's ``sys.stdin`` is None), --exit-on-stdin-eof
    exits at once and cleanly; it used to fail with AttributeError."""
    monkeypatch.setattr(sys, "stdin", None)
    main(["--exit-on-stdin-eof"])
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")
