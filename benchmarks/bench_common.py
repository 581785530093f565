"""What the benchmarks share: the three consumers' command line, CPU pinning and the JSON lines
they report to ``run_all.py`` on stdout; the SQS server every benchmark runs against
(:class:`FakeSQSServer`: ``python -m trio_sqs.testing`` in a child process) and the messages
they send it. Standard library only, and what only the parent scripts use is imported lazily,
so that it adds nothing to the memory or start-up of any consumer.

Every consumer (``consumer_trio_sqs.py``, ``consumer_aiobotocore.py``, ``consumer_boto3.py``)
takes the same settings, prints ``{"event": "ready", ...}`` once it is set up (client created,
queue URL resolved) and about to consume, and ``{"event": "report", ...}`` with its counters,
CPU time and peak RSS (VmHWM):

- when it has deleted ``--expect`` messages (drain), and stops;
- on SIGUSR1 (it goes on consuming);
- at exit after SIGTERM or SIGINT, after its own way of shutting down.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

REGION = "us-east-1"
SERVER_START_TIMEOUT = 30.0


class BenchError(Exception):
    """One run went wrong (a consumer crashed, hung, or left the queue inconsistent; the server
    refused a request)."""


def message_body(index: int) -> str:
    """A ~250-byte JSON body."""
    return json.dumps(
        {
            "event": "order.created",
            "order_id": f"ord-{index:06d}",
            "customer": {"id": f"cus-{index * 7919:08d}", "tier": "gold"},
            "items": [{"sku": f"SKU-{index}-{k}", "qty": k + 1} for k in range(3)],
            "note": "benchmark payload " + "x" * 40,
        },
        separators=(",", ":"),
    )


def message_entry(index: int) -> dict[str, Any]:
    """SendMessage parameters (less QueueUrl), or a SendMessageBatch entry with ``Id`` added:
    the body above and two string message attributes."""
    return {
        "MessageBody": message_body(index),
        "MessageAttributes": {
            "trace_id": {"DataType": "String", "StringValue": f"trace-{index:032x}"},
            "tenant": {"DataType": "String", "StringValue": "acme-corp"},
        },
    }


class FakeSQSServer:
    """trio_sqs's in-memory SQS (``python -m trio_sqs.testing``) as a child process, pinned to
    ``cpu`` when given, and a small blocking client for it (unsigned JSON-protocol calls and
    ``GET /stats``, on one keep-alive connection).

    The server exits when its stdin closes (``close()``, or this process dying). Its queues
    behave as SQS's (long polls, visibility timeouts, a poll whose client went away takes
    messages); ``stats()`` gives its own CPU time and the requests counted per operation, overall
    and per queue (see ``trio_sqs.testing.serve_fake_sqs``).
    """

    def __init__(self, cpu: int | None, python: str = sys.executable) -> None:
        import http.client
        import select
        import subprocess

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        command = [python, "-m", "trio_sqs.testing", "--port", "0", "--exit-on-stdin-eof"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pin
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_TIMEOUT)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"python -m trio_sqs.testing did not start (got {line!r})")
        #: ``http://127.0.0.1:PORT``; queue URLs are ``{endpoint}/123456789012/{name}``.
        self.endpoint = line
        self.port = int(line.rsplit(":", 1)[1])
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        self._conn.request(method, path, body, headers)
        response = self._conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise BenchError(f"server answered {response.status}: {payload[:300]!r}")
        return json.loads(payload) if payload else {}

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "POST",
            "/",
            json.dumps(params).encode(),
            {
                "X-Amz-Target": f"AmazonSQS.{operation}",
                "Content-Type": "application/x-amz-json-1.0",
            },
        )
        return result

    def stats(self) -> dict[str, Any]:
        """The server's CPU seconds and requests by operation, and every queue's counts."""
        result: dict[str, Any] = self._request("GET", "/stats", None, {})
        return result

    def server_stats(self) -> dict[str, Any]:
        """CPU seconds and requests by operation, without the queues (it asks for the queue
        ``.``, a name no queue can have)."""
        result: dict[str, Any] = self._request("GET", "/stats?queue=.", None, {})
        return result

    def queue_stats(self, name: str) -> dict[str, Any]:
        """One queue: visible, in_flight, delayed, waiting_polls, deliveries, requests (by
        operation, on this queue)."""
        result: dict[str, Any] = self._request("GET", f"/stats?queue={name}", None, {})
        if result["queue"] is None:
            raise BenchError(f"no queue {name!r} on the server")
        queue: dict[str, Any] = result["queue"]
        return queue

    def create_queue(self, name: str, attributes: dict[str, str] | None = None) -> str:
        params: dict[str, Any] = {"QueueName": name}
        if attributes:
            params["Attributes"] = attributes
        return str(self.call("CreateQueue", params)["QueueUrl"])

    def send(self, url: str, first: int, count: int) -> None:
        """Send messages ``first`` to ``first + count - 1`` (``message_entry``), 10 a batch."""
        for start in range(first, first + count, 10):
            entries = [
                {"Id": str(i - start), **message_entry(i)}
                for i in range(start, min(start + 10, first + count))
            ]
            result = self.call("SendMessageBatch", {"QueueUrl": url, "Entries": entries})
            if result.get("Failed"):
                raise BenchError(f"SendMessageBatch failed: {result['Failed'][:1]}")

    def close(self) -> None:
        import subprocess

        self._conn_close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the server exits at end of file on its stdin
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _conn_close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> FakeSQSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Counts:
    """What a consumer did. ``cancelled``: handlers cut off before they finished."""

    received: int = 0
    completed: int = 0
    cancelled: int = 0
    deleted: int = 0


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--endpoint", required=True, help="the SQS endpoint URL")
    parser.add_argument("--queue", required=True, help="the queue name")
    parser.add_argument("--concurrency", type=int, default=10, help="handlers at once")
    parser.add_argument("--batch", type=int, default=10, help="MaxNumberOfMessages")
    parser.add_argument("--wait", type=int, default=20, help="WaitTimeSeconds")
    parser.add_argument("--visibility", type=int, default=30, help="VisibilityTimeout")
    parser.add_argument("--handler-seconds", type=float, default=0.0, help="handler duration")
    parser.add_argument(
        "--expect", type=int, default=0, help="stop after deleting this many (0: run on)"
    )
    parser.add_argument("--grace", type=float, default=10.0, help="grace period (trio_sqs)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (Linux)")
    parser.add_argument(
        "--freeze-at-exit",
        action="store_true",
        help="gc.freeze() after the consumer stopped, so the interpreter's exit skips its final "
        "garbage collection (see finish())",
    )
    args = parser.parse_args()
    if args.cpu is not None:
        # Before any thread exists, so every thread the consumer starts inherits it.
        os.sched_setaffinity(0, {args.cpu})
    return args


def receive_params(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ReceiveMessage every baseline consumer sends: the shared settings, all attributes."""
    return {
        "QueueUrl": url,
        "MaxNumberOfMessages": args.batch,
        "WaitTimeSeconds": args.wait,
        "VisibilityTimeout": args.visibility,
        "MessageSystemAttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
    }


def peak_rss_kib() -> int:
    """Peak resident memory of this process, in KiB.

    ``VmHWM`` of /proc/self/status, not ``ru_maxrss``: Linux carries the parent's high-water
    mark across ``exec`` into ``ru_maxrss``, so a small consumer started by a big parent would
    report the parent's peak. ``VmHWM`` belongs to this process's own address space.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def finish(args: argparse.Namespace) -> None:
    """The last call of a consumer's main(). CPython's finalization (module teardown and the
    final garbage collection over every object botocore, httpx and the rest created) takes ~100 ms
    here after the program's last line; with ``--freeze-at-exit`` the objects are moved to the
    permanent generation first, which that collection skips. atexit handlers still run."""
    if args.freeze_at_exit:
        gc.freeze()


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Reporter:
    """Writes the consumer's JSON lines to stdout."""

    def __init__(self) -> None:
        self._ready_cpu = (0.0, 0.0)
        self._ready_wall = 0.0
        self._signalled: float | None = None

    def signalled(self) -> None:
        """Call first thing when SIGTERM or SIGINT arrives: the final report then says how long
        the consumer's own shutdown took (the rest of the exit time is the interpreter's)."""
        if self._signalled is None:
            self._signalled = time.monotonic()

    def _emit(self, payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    def ready(self) -> None:
        self._ready_cpu = cpu_seconds()
        self._ready_wall = time.monotonic()
        self._emit({"event": "ready", "pid": os.getpid()})

    def report(self, counts: Counts, **extra: Any) -> None:
        user, system = cpu_seconds()
        now = time.monotonic()
        stop_ms = None if self._signalled is None else (now - self._signalled) * 1000
        self._emit(
            {
                "event": "report",
                **asdict(counts),
                # From "ready" on: the consumption itself, not imports and client set-up.
                "cpu_user": user - self._ready_cpu[0],
                "cpu_system": system - self._ready_cpu[1],
                "wall": now - self._ready_wall,
                # From the signal handler to this report (None without a signal).
                "stop_ms": stop_ms,
                # The whole process, start-up included.
                "cpu_process": user + system,
                "maxrss_kib": peak_rss_kib(),
                **extra,
            }
        )
