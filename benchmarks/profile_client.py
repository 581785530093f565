"""Where trio_sqs spends CPU on a ReceiveMessage(10) + DeleteMessageBatch(10) pair.

Companion to ``bench_client.py`` (same server, trio_sqs's in-memory SQS in its own process, and
same pinning). It times each stage of our path in isolation, with the same inputs the real loop
uses (requests signed for the server, responses captured from it), so that profiler overhead does
not distort the split:

- serialize (botocore's JSON serializer), sign (``AWSRequest`` + ``SigV4Auth`` + header copy),
- transport (``httpx.AsyncClient.request`` on Trio with a pre-signed request, body read),
- parse (botocore's parser through ``SQSProtocol.parse_response``),
- messages (``message_from_wire`` for 10 messages: MD5 of bodies and attributes, objects),
- the rest (the measured pair minus those stages): client glue, Trio scheduling, cold caches.

It then times cheaper alternatives for the big stages (other HTTP stacks on Trio, a minimal SigV4
signer checked byte for byte against botocore's, a JSON decoder checked against botocore's parser)
and projects what the pair would cost with each. All timings are CPU time of this process
(``time.process_time``), medians over interleaved rounds. ``--cprofile`` adds a cProfile listing
of the real loop (its per-call overhead inflates call-heavy code such as botocore's parser and h11).

The queue has a visibility timeout of 0, so the timers that only receive (and the DeleteMessageBatch
timers, which repeat one batch of receipt handles: a stale handle is deleted successfully, as on
SQS) leave its messages in place; the timers of whole pairs delete what they receive, and the
queue is topped up before each timed batch (``bench_client.Supply``), outside the timed window.

Run: ``python benchmarks/profile_client.py [--rounds R] [--iterations N] [--cprofile]``
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import hashlib
import hmac
import io
import json
import os
import pstats
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import botocore.session
import h11
import httpcore
import httpx
import trio
import urllib3
from bench_client import (
    Supply,
    botocore_pairs,
    choose_pinning,
    clean_aws_environment,
    ours_pairs,
    sqs_server,
)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

import trio_sqs
from trio_sqs._message import md5_of_message_attributes, message_from_wire
from trio_sqs._protocol import HTTPRequest, SQSProtocol

GOAL = 0.6
REGION = "us-east-1"
ACCESS_KEY = "x"
SECRET_KEY = "y"

Timer = Callable[[], Awaitable[None]]


@dataclass
class Bench:
    """Named async thunks, each timed ``iterations`` times per round, rounds interleaved."""

    iterations: int
    #: Called with the number of calls about to be timed, outside the timed window.
    before: Callable[[int], None] = lambda n: None
    timers: dict[str, tuple[Timer, int]] = field(default_factory=dict)
    results: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, thunk: Timer, weight: float = 1.0) -> None:
        self.timers[name] = (thunk, max(1, int(self.iterations * weight)))

    def add_sync(self, name: str, fn: Callable[[], object], weight: float = 1.0) -> None:
        async def thunk() -> None:
            fn()

        self.add(name, thunk, weight)

    async def run(self, rounds: int) -> None:
        for name, (thunk, _) in self.timers.items():
            self.before(1)
            await thunk()  # warm caches and connections
            self.results[name] = []
        for _ in range(rounds):
            for name, (thunk, n) in self.timers.items():
                self.before(n)
                started = time.process_time()
                for _ in range(n):
                    await thunk()
                self.results[name].append((time.process_time() - started) / n * 1e6)

    def __getitem__(self, name: str) -> float:
        return statistics.median(self.results[name])


# -- floors: the least a stage could cost ----------------------------------------------------------


def minimal_sigv4(
    request: HTTPRequest, amz_date: str, host: str, cache: dict[tuple[str, ...], bytes]
) -> str:
    """SigV4 for one JSON-protocol POST to "/", with a cached signing key (a floor, not a proposal
    of API). Returns the Authorization header value; checked against botocore's in main()."""
    headers = {k.lower(): " ".join(v.split()) for k, v in request.headers.items()}
    headers.pop("authorization", None)
    headers["host"] = host
    headers["x-amz-date"] = amz_date
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "POST\n/\n\n{}\n\n{}\n{}".format(
        "\n".join(f"{n}:{headers[n]}" for n in names),
        signed,
        hashlib.sha256(request.body).hexdigest(),
    )
    day = amz_date[:8]
    key_id = (SECRET_KEY, day, REGION)
    key = cache.get(key_id)
    if key is None:
        key = f"AWS4{SECRET_KEY}".encode()
        for part in (day, REGION, "sqs", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        cache[key_id] = key
    scope = f"{day}/{REGION}/sqs/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n" + (
        hashlib.sha256(canonical.encode()).hexdigest()
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )


def json_decode(body: bytes) -> dict[str, Any]:
    """What botocore's parser does for these two outputs: JSON, plus base64 for binary values."""
    parsed: dict[str, Any] = json.loads(body)
    for message in parsed.get("Messages", ()):
        for value in (message.get("MessageAttributes") or {}).values():
            if "BinaryValue" in value:
                value["BinaryValue"] = base64.b64decode(value["BinaryValue"])
    return parsed


class RawHTTP:
    """Requests as pre-built bytes over one Trio stream, framing by Content-Length (a floor)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def request(self, raw: bytes) -> bytes:
        await self.stream.send_all(raw)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await self.stream.receive_some(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await self.stream.receive_some(65536)
        return body


class H11HTTP:
    """h11 over one Trio stream: an HTTP/1.1 client with real parsing and no pool or timeouts."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, headers: list[tuple[str, str]], body: bytes) -> bytes:
        conn = self.conn
        out = conn.send(h11.Request(method="POST", target="/", headers=headers))
        await self.stream.send_all(
            out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        chunks = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                conn.start_next_cycle()
                return b"".join(chunks)


def raw_request(request: HTTPRequest, host: str) -> tuple[list[tuple[str, str]], bytes]:
    headers = [("Host", host), *request.headers.items()]
    headers.append(("Content-Length", str(len(request.body))))
    head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return headers, head.encode() + request.body


def blocking_request(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(raw)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return body


# -- the measurement -------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every per-operation timer uses: our client's pieces and the alternative transports."""

    sqs: trio_sqs.SQSClient
    credentials: Any
    host: str
    port: int
    stack: AsyncExitStack
    pool: httpcore.AsyncConnectionPool
    urllib3_pool: urllib3.HTTPConnectionPool
    signing_keys: dict[tuple[str, ...], bytes] = field(default_factory=dict)


async def add_operation(
    bench: Bench, shared: Shared, key: str, operation: str, params: dict[str, Any]
) -> bytes:
    """Register the stage timers and alternatives for one operation; return its response body."""
    sqs = shared.sqs
    protocol: SQSProtocol = sqs._protocol
    http: httpx.AsyncClient = sqs._http
    serializer = protocol._data.serializer
    credentials = shared.credentials
    model = protocol.operation_model(operation)
    request = protocol.build_request(operation, params, credentials)
    response = await http.request(
        request.method, request.url, headers=request.headers, content=request.body
    )
    status, headers, body = response.status_code, response.headers, response.content
    serialized = serializer.serialize_to_request(dict(params), model)
    amz_date = request.headers["X-Amz-Date"]
    header_list, raw = raw_request(request, shared.host)
    core_headers = [(k.encode(), v.encode()) for k, v in header_list]
    core_url = httpcore.URL(request.url)
    prebuilt_url = httpx.URL(request.url)
    h11_client = H11HTTP(await trio.open_tcp_stream("127.0.0.1", shared.port))
    raw_client = RawHTTP(await trio.open_tcp_stream("127.0.0.1", shared.port))
    for stream in (h11_client.stream, raw_client.stream):
        shared.stack.push_async_callback(stream.aclose)
    sock = socket.create_connection(("127.0.0.1", shared.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    shared.stack.callback(sock.close)

    def serialize() -> None:
        serializer.serialize_to_request(dict(params), model)

    def sign() -> None:
        signed = AWSRequest(
            method="POST", url=protocol._url, data=serialized["body"], headers=serialized["headers"]
        )
        SigV4Auth(credentials, "sqs", REGION).add_auth(signed)
        {k: v.decode() if isinstance(v, bytes) else v for k, v in signed.headers.items()}

    def build() -> None:
        protocol.build_request(operation, params, credentials)

    def parse() -> None:
        protocol.parse_response(operation, status, headers, body)

    async def call() -> None:
        await sqs.call(operation, params, _validate=False)

    async def via_httpx() -> None:
        response = await http.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        _ = response.content

    async def via_httpx_send() -> None:
        built = httpx.Request("POST", prebuilt_url, headers=request.headers, content=request.body)
        _ = (await http.send(built)).content

    async def via_httpcore() -> None:
        response = await shared.pool.request(
            "POST", core_url, headers=core_headers, content=request.body
        )
        _ = response.content

    async def via_h11() -> None:
        await h11_client.request(header_list, request.body)

    async def via_raw() -> None:
        await raw_client.request(raw)

    def via_urllib3() -> None:
        response = shared.urllib3_pool.urlopen(
            "POST", "/", body=request.body, headers=request.headers, retries=False
        )
        _ = response.data

    bench.add_sync(f"{key}: serialize", serialize)
    bench.add_sync(f"{key}: sign", sign)
    bench.add_sync(f"{key}: build_request", build)
    bench.add(f"{key}: transport httpx", via_httpx)
    bench.add_sync(f"{key}: parse", parse)
    bench.add(f"{key}: SQSClient.call", call)
    bench.add_sync(f"{key}: alt serialize json.dumps", lambda: json.dumps(params).encode())
    bench.add_sync(
        f"{key}: alt sign minimal",
        lambda: minimal_sigv4(request, amz_date, shared.host, shared.signing_keys),
    )
    bench.add_sync(f"{key}: alt parse json", lambda: json_decode(body))
    bench.add(f"{key}: alt httpx.send prebuilt URL", via_httpx_send)
    bench.add(f"{key}: alt httpcore pool", via_httpcore)
    bench.add(f"{key}: alt h11 on trio stream", via_h11)
    bench.add(f"{key}: alt raw bytes on trio stream", via_raw)
    bench.add_sync(f"{key}: ref raw bytes, blocking socket", lambda: blocking_request(sock, raw))
    bench.add_sync(f"{key}: ref urllib3 (botocore's transport)", via_urllib3)

    # The floors must do the same work as what they stand in for.
    check = AWSRequest(
        method="POST", url=protocol._url, data=request.body, headers=serialized["headers"]
    )
    SigV4Auth(credentials, "sqs", REGION).add_auth(check)
    date = check.headers["X-Amz-Date"]
    if minimal_sigv4(request, date, shared.host, {}) != check.headers["Authorization"]:
        raise AssertionError("the minimal SigV4 signer differs from botocore's signature")
    if json_decode(body) != protocol.parse_response(operation, status, headers, body):
        raise AssertionError("the JSON decoder differs from botocore's parser")
    return body


async def measure(supply: Supply, rounds: int, iterations: int) -> Bench:
    endpoint = supply.server.endpoint
    queue_url = supply.url
    host = endpoint.removeprefix("http://")
    port = int(host.rsplit(":", 1)[1])
    bench = Bench(iterations, before=supply.ensure)
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            trio_sqs.open_client(
                region=REGION,
                endpoint_url=endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        )
        pool = httpcore.AsyncConnectionPool(max_connections=1)
        stack.push_async_callback(pool.aclose)
        urllib3_pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)
        stack.callback(urllib3_pool.close)
        client = botocore.session.get_session().create_client(
            "sqs",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        stack.callback(client.close)
        shared = Shared(sqs, await sqs._credentials.get(), host, port, stack, pool, urllib3_pool)
        supply.ensure(2)
        first = await sqs.receive_messages(queue_url, wait_time=0)
        handles = [m.receipt_handle for m in first.messages]

        async def pair() -> None:
            await ours_pairs(sqs, queue_url, 1)

        async def receive_only() -> None:
            await sqs.receive_messages(queue_url, wait_time=0)

        async def delete_only() -> None:
            await sqs.delete_message_batch(queue_url, handles)

        bench.add("ours: pair", pair)
        bench.add("ours: receive_messages", receive_only)
        bench.add("ours: delete_message_batch", delete_only)
        bench.add_sync("botocore: pair", lambda: botocore_pairs(client, queue_url, 1))
        receive_body = await add_operation(
            bench,
            shared,
            "receive",
            "ReceiveMessage",
            {
                "QueueUrl": queue_url,
                "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": 0,
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            },
        )
        await add_operation(
            bench,
            shared,
            "delete",
            "DeleteMessageBatch",
            {
                "QueueUrl": queue_url,
                "Entries": [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)],
            },
        )
        messages = sqs._protocol.parse_response("ReceiveMessage", 200, {}, receive_body)["Messages"]
        attributes = [m.message_attributes for m in first.messages]
        bench.add_sync(
            "receive: messages (message_from_wire x10)",
            lambda: [message_from_wire(m, queue_url) for m in messages],
        )
        bench.add_sync(
            "receive: MD5 of 10 bodies",
            lambda: [
                hashlib.md5(m["Body"].encode(), usedforsecurity=False).hexdigest() for m in messages
            ],
        )
        bench.add_sync(
            "receive: MD5 of 10 attribute sets",
            lambda: [md5_of_message_attributes(a) for a in attributes],
        )
        bench.add("trio: checkpoint", trio.lowlevel.checkpoint, weight=10)
        bench.add("trio: credentials.get + gate", lambda: _gate(sqs), weight=10)
        await bench.run(rounds)
    return bench


async def _gate(sqs: trio_sqs.SQSClient) -> None:
    await sqs._credentials.get()
    lane = await sqs._other_gate.acquire()
    sqs._other_gate.release(lane)


def both(bench: Bench, stage: str) -> float:
    return bench[f"receive: {stage}"] + bench[f"delete: {stage}"]


def report(bench: Bench) -> str:
    pair = bench["ours: pair"]
    botocore_pair = bench["botocore: pair"]
    serialize = both(bench, "serialize")
    sign = both(bench, "build_request") - serialize
    transport = both(bench, "transport httpx")
    parse = both(bench, "parse")
    messages = bench["receive: messages (message_from_wire x10)"]
    md5 = bench["receive: MD5 of 10 bodies"] + bench["receive: MD5 of 10 attribute sets"]
    rows = [
        ("serialize (botocore JSON serializer)", serialize),
        ("sign (AWSRequest + SigV4Auth + header copy)", sign),
        ("transport (httpx + httpcore + h11 + Trio I/O + syscalls)", transport),
        ("parse (botocore parser)", parse),
        ("messages: MD5 checks (10 bodies + 10 attribute sets)", md5),
        ("messages: construction (message_from_wire minus MD5)", messages - md5),
    ]
    rest = pair - sum(v for _, v in rows)
    rows.append(("rest: trio_sqs glue, Trio scheduling, cold caches, noise", rest))
    lines = [
        "## Where our CPU goes, per pair (receive + delete)",
        "",
        f"Measured pair: trio_sqs {pair:.0f} µs, botocore client {botocore_pair:.0f} µs "
        f"(ratio {pair / botocore_pair:.2f}; goal {GOAL:.2f} = {GOAL * botocore_pair:.0f} µs).",
        "",
        "| stage | µs / pair | share |",
        "|---|---:|---:|",
        *(f"| {name} | {value:.0f} | {value / pair * 100:.0f} % |" for name, value in rows),
        "",
        "Stages are timed alone (warm caches); the rest row is the pair minus their sum. For "
        f"scale: a Trio checkpoint costs {bench['trio: checkpoint']:.1f} µs, and "
        f"credentials.get + the semaphore {bench['trio: credentials.get + gate']:.1f} µs per call.",
        "",
        "## Alternatives, per pair (receive + delete)",
        "",
        "| stage | today | alternative | alternative µs | saves µs | projected ratio |",
        "|---|---:|---|---:|---:|---:|",
    ]
    alternatives = [
        (
            "serialize",
            serialize,
            "json.dumps of the params",
            both(bench, "alt serialize json.dumps"),
        ),
        ("sign", sign, "minimal SigV4, cached key (same bytes)", both(bench, "alt sign minimal")),
        ("parse", parse, "json.loads + base64 (same result)", both(bench, "alt parse json")),
        (
            "transport",
            transport,
            "httpx.send, prebuilt URL",
            both(bench, "alt httpx.send prebuilt URL"),
        ),
        ("transport", transport, "httpcore pool directly", both(bench, "alt httpcore pool")),
        ("transport", transport, "h11 on a Trio stream", both(bench, "alt h11 on trio stream")),
        (
            "transport",
            transport,
            "raw bytes on a Trio stream",
            both(bench, "alt raw bytes on trio stream"),
        ),
        (
            "transport",
            transport,
            "ref: raw bytes, blocking socket",
            both(bench, "ref raw bytes, blocking socket"),
        ),
        (
            "transport",
            transport,
            "ref: urllib3 (botocore's)",
            both(bench, "ref urllib3 (botocore's transport)"),
        ),
    ]
    for stage, today, name, value in alternatives:
        projected = (pair - today + value) / botocore_pair
        lines.append(
            f"| {stage} | {today:.0f} | {name} | {value:.0f} | {today - value:.0f} "
            f"| {projected:.2f} |"
        )
    combined = (
        pair
        - serialize
        - sign
        - parse
        - transport
        + both(bench, "alt serialize json.dumps")
        + both(bench, "alt sign minimal")
        + both(bench, "alt parse json")
        + both(bench, "alt h11 on trio stream")
    )
    stages_only = combined - rest
    goal = GOAL * botocore_pair
    verdict = "exceeds" if transport > goal else "fits within"
    lines += [
        "",
        f"All four (json.dumps, minimal SigV4, JSON decode, h11 on Trio): about {combined:.0f} µs "
        f"per pair with today's rest row, {stages_only:.0f} µs without it: ratio "
        f"{stages_only / botocore_pair:.2f} to {combined / botocore_pair:.2f}.",
        "",
        f"The httpx transport alone ({transport:.0f} µs per pair) {verdict} the whole budget the "
        f"goal allows ({goal:.0f} µs = {GOAL:.2f} x botocore's pair).",
    ]
    return "\n".join(lines)


def run_cprofile(supply: Supply, pairs: int) -> str:
    async def loop() -> cProfile.Profile:
        async with trio_sqs.open_client(
            region=REGION,
            endpoint_url=supply.server.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ) as sqs:
            url = supply.url
            supply.ensure(100 + pairs)
            await ours_pairs(sqs, url, 100)
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            await ours_pairs(sqs, url, pairs)
            profiler.disable()
        return profiler

    profiler = trio.run(loop)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage-by-stage CPU of trio_sqs's pair.")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--iterations", type=int, default=200, help="calls per stage per round")
    parser.add_argument("--cprofile", action="store_true", help="also print a cProfile listing")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    args = parser.parse_args(argv)
    clean_aws_environment()
    pinning = choose_pinning(not args.no_pin)
    if pinning.client_cpu is not None:
        os.sched_setaffinity(0, {pinning.client_cpu})
    with sqs_server(pinning.server_cpu, {"VisibilityTimeout": "0"}) as supply:
        bench = trio.run(measure, supply, args.rounds, args.iterations)
        print(f"- {pinning.describe()}; {args.rounds} rounds x {args.iterations} calls per stage\n")
        print(report(bench))
        print("\n<details><summary>every timer (median µs per call)</summary>\n")
        for name in bench.results:
            print(f"    {name:48s} {bench[name]:9.1f}")
        print("\n</details>")
        if args.cprofile:
            print("\n## cProfile of 300 pairs (CPU timer; inflates call-heavy code)\n")
            print(run_cprofile(supply, 300))
    return 0


if __name__ == "__main__":
    sys.exit(main())
