"""CPU per ``SQSProtocol.build_request``: botocore's serializer and ``SigV4Auth`` next to the fast
path (``json.dumps`` and ``trio_sqs._sigv4.Signer``), per hot operation and per
ReceiveMessage(10) + DeleteMessageBatch(10) pair.

Run: ``python benchmarks/sign_cost.py [--rounds N] [--calls N]`` (a few seconds). It prints a
Markdown table. It is a report, not a test: it exits 0 whatever the figures, 1 only if the two
paths do not build the same request (checked first, botocore's clock frozen).

Rounds alternate the two paths, each round timing ``--calls`` consecutive calls with
``time.perf_counter``; the table gives the median µs per call over the rounds and the ratio of the
medians (fast / botocore). Single process, one thread: pin it (``taskset -c 2``) for steadier
figures.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import botocore
import botocore.auth
from botocore.credentials import ReadOnlyCredentials

import trio_sqs
from trio_sqs._protocol import SQSProtocol, load_service_data, resolve_endpoint

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"
HANDLE = "AQEB" + "x" * 360  # real receipt handles are ~380 characters
CASES: dict[str, dict[str, Any]] = {
    "ReceiveMessage(10)": {
        "QueueUrl": QUEUE,
        "MaxNumberOfMessages": 10,
        "WaitTimeSeconds": 20,
        "VisibilityTimeout": 30,
        "AttributeNames": ["All"],
        "MessageSystemAttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
    },
    "DeleteMessageBatch(10)": {
        "QueueUrl": QUEUE,
        "Entries": [{"Id": str(i), "ReceiptHandle": f"{HANDLE}{i}"} for i in range(10)],
    },
    "ChangeMessageVisibilityBatch(10)": {
        "QueueUrl": QUEUE,
        "Entries": [
            {"Id": str(i), "ReceiptHandle": f"{HANDLE}{i}", "VisibilityTimeout": 0}
            for i in range(10)
        ],
    },
    "SendMessage": {
        "QueueUrl": QUEUE,
        "MessageBody": '{"order": 42, "items": ["a", "b"]}',
        "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "created"}},
    },
}
OPERATION = {
    "ReceiveMessage(10)": "ReceiveMessage",
    "DeleteMessageBatch(10)": "DeleteMessageBatch",
    "ChangeMessageVisibilityBatch(10)": "ChangeMessageVisibilityBatch",
    "SendMessage": "SendMessage",
}


def _check(protocol: SQSProtocol, creds: ReadOnlyCredentials) -> None:
    now = datetime.datetime(2024, 12, 31, 23, 59, 59)
    real = getattr(botocore.auth, "get_current_datetime", None)
    if real is None:
        sys.exit("this botocore has no botocore.auth.get_current_datetime; use the tests instead")
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: now  # type: ignore[attr-defined]
    try:
        for name, params in CASES.items():
            slow = protocol.build_request_botocore(OPERATION[name], params, creds)
            fast = protocol.build_request_fast(OPERATION[name], params, creds, now)
            if fast != slow:
                print(f"MISMATCH for {name}:\n{slow}\n{fast}", file=sys.stderr)
                sys.exit(1)
    finally:
        botocore.auth.get_current_datetime = real  # type: ignore[attr-defined]


def _time(fn: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    data = load_service_data()
    endpoint = resolve_endpoint(data, "eu-west-1")
    slow_protocol = SQSProtocol(data, endpoint, "eu-west-1")
    fast_protocol = SQSProtocol(data, endpoint, "eu-west-1", fast=True)
    creds = ReadOnlyCredentials("ASIAEXAMPLEEXAMPLE00", "s" * 40, "IQoJb3JpZ2luX2Vj" + "t" * 700)
    _check(fast_protocol, creds)

    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in CASES}
    for _ in range(args.rounds):
        for name, params in CASES.items():
            op = OPERATION[name]
            slow, fast = results[name]
            for protocol, out in ((slow_protocol, slow), (fast_protocol, fast)):
                build = protocol.build_request
                out.append(_time(lambda b=build, o=op, p=params: b(o, p, creds), args.calls))

    print(
        f"trio_sqs {trio_sqs.__version__} from {Path(trio_sqs.__file__).parent}, botocore "
        f"{botocore.__version__}, Python {platform.python_version()}, {platform.machine()}; "
        f"{args.rounds} rounds x {args.calls} calls, session token, 380-character handles\n"
    )
    print("| build_request | botocore µs | fast µs | fast / botocore |")
    print("|---|---:|---:|---:|")
    medians: dict[str, tuple[float, float]] = {}
    for name, (slow, fast) in results.items():
        s, f = statistics.median(slow), statistics.median(fast)
        medians[name] = (s, f)
        print(f"| {name} | {s:.1f} | {f:.1f} | {f / s:.3f} |")
    s = medians["ReceiveMessage(10)"][0] + medians["DeleteMessageBatch(10)"][0]
    f = medians["ReceiveMessage(10)"][1] + medians["DeleteMessageBatch(10)"][1]
    print(f"| **Receive(10) + DeleteBatch(10) pair** | {s:.1f} | {f:.1f} | {f / s:.3f} |")


if __name__ == "__main__":
    main()
