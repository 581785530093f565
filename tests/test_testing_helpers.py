"""The user-facing pieces of trio_sqs.testing: transport injection, make_message, the pytest
plugin's fixtures, and the README's example, run as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs._message import message_from_wire
from trio_sqs.testing import FakeSQS, make_message

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_open_client_refuses_a_transport_that_is_not_one() -> None:
    with pytest.raises(trio_sqs.ConfigurationError, match="transport"):
        async with trio_sqs.open_client(
            region="us-east-1",
            transport="http://x",  # type: ignore[arg-type]
        ):
            pass  # pragma: no cover


async def test_any_httpx_transport_is_used_with_signing_and_parsing_above_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"QueueUrl": "https://sqs.example/1/q"},
            headers={"Content-Type": "application/x-amz-json-1.0"},
        )

    async with trio_sqs.open_client(
        region="eu-west-1", transport=httpx.MockTransport(handler)
    ) as client:
        assert await client.get_queue_url("q") == "https://sqs.example/1/q"
    [request] = seen
    assert request.headers["x-amz-target"] == "AmazonSQS.GetQueueUrl"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/sqs/aws4_request" in request.headers["authorization"]
    assert json.loads(request.content) == {"QueueName": "q"}


def test_make_message_is_a_valid_message_with_typed_attributes() -> None:
    message = make_message(
        "héllo",
        message_attributes={"s": "x", "n": 3, "f": 1.5, "b": b"\x00\xff"},
        receive_count=4,
        message_group_id="g",
    )
    assert message.body == "héllo"
    assert message.receive_count == 4
    assert message.message_group_id == "g"
    assert message.message_attributes["n"].data_type == "Number"
    assert message.message_attributes["b"].binary_value == b"\x00\xff"
    # The digests are those SQS would send: the wire form passes the client's own checks.
    wire = {
        "MessageId": message.message_id,
        "ReceiptHandle": message.receipt_handle,
        "Body": message.body,
        "MD5OfBody": message.md5_of_body,
        "MessageAttributes": {k: v.to_wire() for k, v in message.message_attributes.items()},
        "MD5OfMessageAttributes": message.md5_of_message_attributes,
    }
    assert isinstance(message_from_wire(wire, message.queue_url), trio_sqs.Message)


def test_make_message_refuses_what_sqs_cannot_carry() -> None:
    with pytest.raises(TypeError, match="bool"):
        make_message("x", message_attributes={"flag": True})
    with pytest.raises(TypeError, match="list"):
        make_message("x", message_attributes={"l": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="receive_count"):
        make_message("x", receive_count=0)


async def test_plugin_fixtures_give_a_client_and_a_fresh_queue_on_the_fake(
    autojump_clock: trio.abc.Clock,
    fake_sqs: FakeSQS,
    fake_sqs_client: trio_sqs.SQSClient,
    fake_queue_url: str,
) -> None:
    assert fake_queue_url.startswith(fake_sqs.endpoint)
    await fake_sqs_client.send_message(fake_queue_url, "one")
    start = trio.current_time()
    [got] = await fake_sqs_client.receive_messages(fake_queue_url, wait_time=20)
    assert got.body == "one"
    assert trio.current_time() == start  # available at once: no wait
    assert not await fake_sqs_client.receive_messages(fake_queue_url, wait_time=20)
    assert trio.current_time() - start == 20  # an empty long poll takes exactly its wait time
    assert fake_sqs.queue(fake_queue_url).counts().in_flight == 1


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- testing-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its testing example"
    return match.group(1)


def test_the_readme_testing_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    """Copy the README's example into an empty project and run pytest there, as a user would:
    the fixtures come from the installed plugin, not from our conftest."""
    (tmp_path / "test_handlers.py").write_text(_readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout, proc.stdout


def test_the_testing_namespace_exports_a_sorted_all_of_real_names() -> None:
    import trio_sqs.testing as testing

    assert list(testing.__all__) == sorted(testing.__all__)
    for name in testing.__all__:
        assert hasattr(testing, name), name


async def test_the_fake_transport_tells_the_client_when_its_request_is_on_the_wire(
    autojump_clock: trio.abc.Clock, fake_sqs_client: trio_sqs.SQSClient, fake_queue_url: str
) -> None:
    """The consumer knows a long poll is on the wire from ``on_sent``: the fake's transport must
    read the request's stream (as a network transport does), not httpx's cached content."""
    sent: list[float] = []
    await fake_sqs_client.receive_messages(
        fake_queue_url, wait_time=1, on_sent=lambda: sent.append(trio.current_time())
    )
    assert len(sent) == 1
