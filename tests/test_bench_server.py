"""The benchmark server (benchmarks/sqs_server.py) must answer like SQS, or the benchmarks measure
consumers against a protocol that does not exist. The same requests go, through trio_sqs's own
client, to it and to moto (itself checked against SQS by its maintainers), concurrently; what each
answers is reduced to its shape and semantics (fields present, MD5 digests valid, batch outcomes
and error codes, visibility, delay and long-poll behaviour) and the two must agree.
"""

from __future__ import annotations

import hashlib
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_sqs
from trio_sqs import MessageAttributeValue, SendEntry

SERVER = Path(__file__).resolve().parent.parent / "benchmarks" / "sqs_server.py"
# Visibility and delay checks sleep for real: keep the steps short but clear of timer jitter.
STEP = 1.0


@pytest.fixture(scope="module")
def bench_endpoint() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else b""
        assert line.strip().isdigit(), f"the benchmark server did not start ({line!r})"
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # it exits at end of file on stdin
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: dict[str, dict[str, str]]) -> str:
    """SQS's digest of (string-typed) message attributes, written out here independently of both
    servers and of trio_sqs: sorted names; length-prefixed name, type, then 1 and the value."""
    buf = b""
    for name in sorted(attributes):
        parts = (name, attributes[name]["DataType"])
        for part in parts:
            buf += len(part.encode()).to_bytes(4, "big") + part.encode()
        value = attributes[name]["StringValue"].encode()
        buf += b"\x01" + len(value).to_bytes(4, "big") + value
    return hashlib.md5(buf, usedforsecurity=False).hexdigest()


WIRE_ATTRIBUTES = {"trace_id": {"DataType": "String", "StringValue": "trace-0001"}}
WIRE_ATTRIBUTES["priority"] = {"DataType": "Number", "StringValue": "7"}


ATTRIBUTES = {
    "trace_id": MessageAttributeValue.string("trace-0001"),
    "priority": MessageAttributeValue.number(7),
}


async def exchange(endpoint: str) -> dict[str, Any]:
    """Run one fixed conversation with a server; return what it answered, reduced to what must
    not differ between servers (no ids, handles or timestamps, only their presence and validity)."""
    seen: dict[str, Any] = {}
    async with trio_sqs.open_client(region="us-east-1", endpoint_url=endpoint) as sqs:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        url = await sqs.create_queue(name)
        seen["url_ends_with_name"] = url.endswith("/" + name)
        seen["get_queue_url"] = (await sqs.get_queue_url(name)) == url
        attributes = await sqs.get_queue_attributes(url, ["All"])
        seen["queue_attributes"] = {
            k: attributes.get(k)
            for k in (
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
                "VisibilityTimeout",
                "DelaySeconds",
                "ReceiveMessageWaitTimeSeconds",
            )
        }
        seen["queue_arn"] = attributes.get("QueueArn", "").endswith(":" + name)
        seen["fifo_attribute"] = await sqs.get_queue_attributes(url, ["FifoQueue"])
        try:
            await sqs.get_queue_url("no-such-queue-" + uuid.uuid4().hex[:8])
        except trio_sqs.QueueDoesNotExist as exc:
            seen["missing_queue"] = (exc.code, exc.status_code)

        # Sending: single and batch, with attributes; digests as SQS computes them.
        single = await sqs.send_message(url, "single body", message_attributes=ATTRIBUTES)
        raw_single = await sqs.call(
            "SendMessage",
            {
                "QueueUrl": url,
                "MessageBody": "raw body",
                "MessageAttributes": {k: v.to_wire() for k, v in ATTRIBUTES.items()},
            },
        )
        seen["send_keys"] = sorted(raw_single)
        seen["send_md5_body"] = single.md5_of_body == md5("single body")
        seen["send_md5_attributes"] = raw_single["MD5OfMessageAttributes"] == md5_of_attributes(
            WIRE_ATTRIBUTES
        )
        bodies = [f"batch body {i}" for i in range(8)]
        sent, outcome = await sqs.send_message_batch(
            url, [SendEntry(id=f"e{i}", body=b) for i, b in enumerate(bodies)]
        )
        seen["send_batch"] = (sorted(s.id or "" for s in sent), len(outcome.failed))
        seen["send_batch_md5"] = all(
            s.md5_of_body == md5(b) for s, b in zip(sent, bodies, strict=True)
        )
        seen["unique_ids"] = len({s.message_id for s in sent} | {single.message_id}) == 9

        # Receiving: 10 messages, all attributes, a short lease.
        raw = await sqs.call(
            "ReceiveMessage",
            {
                "QueueUrl": url,
                "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": 0,
                "VisibilityTimeout": 1,
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            },
        )
        messages = raw["Messages"]
        seen["received"] = len(messages)
        seen["message_keys"] = sorted({tuple(sorted(m)) for m in messages})
        seen["system_attributes"] = sorted({tuple(sorted(m["Attributes"])) for m in messages})
        seen["receive_counts"] = sorted(
            {m["Attributes"]["ApproximateReceiveCount"] for m in messages}
        )
        seen["md5_of_body_valid"] = all(m["MD5OfBody"] == md5(m["Body"]) for m in messages)
        seen["bodies"] = sorted(m["Body"] for m in messages)
        with_attributes = [m for m in messages if "MessageAttributes" in m]
        seen["with_attributes"] = len(with_attributes)
        seen["md5_of_attributes_valid"] = all(
            m["MD5OfMessageAttributes"] == md5_of_attributes(m["MessageAttributes"])
            for m in with_attributes
        )
        seen["attribute_values"] = sorted(
            {
                (k, v["DataType"], v["StringValue"])
                for m in with_attributes
                for k, v in m["MessageAttributes"].items()
            }
        )
        # Only some attributes asked for: only those come back (none of the messages is visible
        # now, so this looks at an empty receive's shape too).
        seen["hidden_receive"] = await sqs.call(
            "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
        )
        counts = await sqs.get_queue_attributes(
            url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
        seen["counts_in_flight"] = counts

        # The lease ends: the same messages come back, with new handles and a higher count.
        await trio.sleep(STEP + 0.3)
        again = await sqs.receive_messages(
            url, max_messages=10, wait_time=0, visibility_timeout=30, message_attribute_names=()
        )
        seen["redelivered"] = sorted(m.body for m in again) == seen["bodies"]
        seen["redelivered_count"] = sorted({m.receive_count for m in again})
        old_handles = {m["ReceiptHandle"] for m in messages}
        seen["new_handles"] = not old_handles & {m.receipt_handle for m in again}
        seen["no_attributes_unasked"] = all(not m.message_attributes for m in again)
        handles = [m.receipt_handle for m in again]

        # Releasing (visibility 0) part of them, with a foreign handle in the batch.
        released = await sqs.change_message_visibility_batch(
            url, {"a": handles[0], "b": handles[1], "bad": "not-a-receipt-handle"}, 0
        )
        seen["release"] = (sorted(released.successful), sorted(f.code for f in released.failed))
        back = await sqs.receive_messages(url, max_messages=10, wait_time=0, visibility_timeout=30)
        seen["released_back"] = len(back)
        handles = handles[2:] + [m.receipt_handle for m in back]

        # Deleting: a batch with a foreign handle, a single delete, and a delete repeated.
        deleted = await sqs.delete_message_batch(
            url, {**{str(i): h for i, h in enumerate(handles[:-1])}, "bad": "garbage"}
        )
        seen["delete_batch"] = (len(deleted.successful), sorted(f.code for f in deleted.failed))
        await sqs.delete_message(url, handles[-1])
        await sqs.delete_message(url, handles[-1])  # deleting twice is not an error
        try:
            await sqs.change_message_visibility(url, handles[-1], 10)
        except trio_sqs.SQSError as exc:
            seen["change_deleted"] = exc.code
        try:
            await sqs.delete_message(url, "garbage")
        except trio_sqs.InvalidReceiptHandle as exc:
            seen["delete_garbage"] = exc.code
        seen["empty_after"] = len(await sqs.receive_messages(url, wait_time=0))
        seen["counts_after"] = await sqs.get_queue_attributes(
            url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
        try:
            await sqs.call("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 11})
        except trio_sqs.SQSError as exc:
            seen["max_11"] = (exc.code, exc.status_code)

        # Delayed messages are invisible, then arrive.
        await sqs.send_message(url, "delayed", delay_seconds=1)
        seen["delayed_hidden"] = len(await sqs.receive_messages(url, wait_time=0))
        seen["delayed_count"] = (await sqs.get_queue_attributes(url, ["All"]))[
            "ApproximateNumberOfMessagesDelayed"
        ]
        await trio.sleep(STEP + 0.3)
        late = await sqs.receive_messages(url, wait_time=0)
        seen["delayed_arrives"] = [m.body for m in late]
        await sqs.delete_message(url, late.messages[0].receipt_handle)

        # A long poll returns as soon as a message is sent, not at the end of its wait.
        async def send_soon() -> None:
            await trio.sleep(0.3)
            await sqs.send_message(url, "wake up")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_soon)
            start = trio.current_time()
            woke = await sqs.receive_messages(url, wait_time=5)
            took = trio.current_time() - start
        seen["long_poll"] = ([m.body for m in woke], 0.2 < took < 2.0)
        await sqs.delete_message_batch(url, [m.receipt_handle for m in woke])
        start = trio.current_time()
        empty = await sqs.receive_messages(url, wait_time=1)
        took = trio.current_time() - start
        seen["long_poll_empty"] = (len(empty), 0.9 < took < 2.0)

        # A long poll abandoned by its client runs on at the server and swallows what arrives
        # (DESIGN.md 2.2): the loaded-shutdown benchmark counts such messages.
        with trio.move_on_after(0.3):
            await sqs.receive_messages(url, wait_time=3, visibility_timeout=30)
        await sqs.send_message(url, "orphan")
        await trio.sleep(0.2)
        swallowed = await sqs.receive_messages(url, wait_time=0)
        counts = await sqs.get_queue_attributes(url, ["ApproximateNumberOfMessagesNotVisible"])
        seen["orphaned_poll"] = (len(swallowed), counts["ApproximateNumberOfMessagesNotVisible"])
    return seen


@pytest.mark.deadline(40)
async def test_same_answers_as_moto(moto_endpoint: str, bench_endpoint: str) -> None:
    results: dict[str, dict[str, Any]] = {}

    async def run(label: str, endpoint: str) -> None:
        results[label] = await exchange(endpoint)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "moto", moto_endpoint)
        nursery.start_soon(run, "bench", bench_endpoint)
    moto, bench = results["moto"], results["bench"]
    differing = {
        k: (moto.get(k), bench.get(k))
        for k in moto.keys() | bench.keys()
        if moto.get(k) != bench.get(k)
    }
    assert not differing, f"(moto, benchmark server) disagree: {differing}"
    # And both are right, not merely alike.
    assert bench["received"] == 10
    assert bench["md5_of_body_valid"] and bench["md5_of_attributes_valid"]
    assert bench["with_attributes"] == 2
    assert bench["redelivered"] and bench["redelivered_count"] == [2] and bench["new_handles"]
    assert bench["release"] == (["a", "b"], ["ReceiptHandleIsInvalid"])
    assert bench["released_back"] == 2
    assert bench["delete_batch"] == (9, ["ReceiptHandleIsInvalid"])
    assert bench["empty_after"] == 0
    assert bench["delayed_hidden"] == 0 and bench["delayed_arrives"] == ["delayed"]
    assert bench["long_poll"] == (["wake up"], True)
    assert bench["long_poll_empty"] == (0, True)
    assert bench["orphaned_poll"] == (0, "1")


async def test_counts_requests_and_messages(bench_endpoint: str) -> None:
    """GET /stats: requests per operation and queue, and the queue's visible / in-flight counts
    (what run_all.py reads)."""
    import httpx

    async with trio_sqs.open_client(region="us-east-1", endpoint_url=bench_endpoint) as sqs:
        name = f"stats-{uuid.uuid4().hex[:12]}"
        url = await sqs.create_queue(name)
        await sqs.send_message_batch(url, [SendEntry(body=f"m{i}") for i in range(5)])
        got = await sqs.receive_messages(url, max_messages=3, wait_time=0)
        await sqs.delete_message_batch(url, [got.messages[0].receipt_handle])
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{bench_endpoint}/stats", params={"queue": name})
    queue = response.json()["queue"]
    assert queue["requests"] == {
        "CreateQueue": 1,
        "SendMessageBatch": 1,
        "ReceiveMessage": 1,
        "DeleteMessageBatch": 1,
    }
    assert (queue["visible"], queue["in_flight"], queue["deleted"]) == (2, 2, 1)
    assert response.json()["cpu_seconds"] > 0
