"""Invalid settings fail at once, with a message naming the option, the value and the allowed range.

"Before any I/O" is checked on trio_sqs.testing's in-memory SQS, through a transport that records
every request leaving the client: it must see none.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trio_sqs
from trio_sqs import ConfigurationError, Limits, RetryPolicy, SendEntry, SQSClient
from trio_sqs.testing import FakeSQS

QUEUE_URL = "http://sqs.fake.invalid/123456789012/q"


class Recorder(httpx.AsyncBaseTransport):
    """Records every request on its way to the fake."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.requests: list[httpx.Request] = []

    def operations(self) -> list[str]:
        return [r.headers["x-amz-target"].rpartition(".")[2] for r in self.requests]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def fake(fake_sqs: FakeSQS) -> FakeSQS:
    await fake_sqs.call("CreateQueue", {"QueueName": "q"})
    assert fake_sqs.queue("q").url == QUEUE_URL
    return fake_sqs


@pytest.fixture
def wire(fake: FakeSQS) -> Recorder:
    return Recorder(fake)


@pytest.fixture
async def client(fake: FakeSQS, wire: Recorder) -> AsyncIterator[SQSClient]:
    async with trio_sqs.open_client(
        region="us-east-1", endpoint_url=fake.endpoint, transport=wire
    ) as client:
        yield client


CALL_CASES: list[Any] = [
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, wait_time=21),
        "wait_time=21 is out of range (allowed: 0 to 20)",
        id="wait_time-21",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, wait_time=-1),
        "wait_time=-1 is out of range (allowed: 0 to 20)",
        id="wait_time-negative",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, wait_time=2.5),
        "wait_time must be an integer, got 2.5",
        id="wait_time-float",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, max_messages=11),
        "max_messages=11 is out of range (allowed: 1 to 10)",
        id="max_messages-11",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, max_messages=0),
        "max_messages=0 is out of range (allowed: 1 to 10)",
        id="max_messages-0",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, max_messages=True),
        "max_messages must be an integer, got True",
        id="max_messages-bool",
    ),
    pytest.param(
        lambda c: c.receive_messages(QUEUE_URL, visibility_timeout=-1),
        "visibility_timeout=-1 is out of range (allowed: 0 to 43200)",
        id="receive-visibility_timeout-negative",
    ),
    pytest.param(
        lambda c: c.change_message_visibility(QUEUE_URL, "h", 43201),
        "visibility_timeout=43201 is out of range (allowed: 0 to 43200)",
        id="change-visibility_timeout-too-long",
    ),
    pytest.param(
        lambda c: c.change_message_visibility_batch(
            QUEUE_URL, {"a": "h1", "b": "h2"}, {"a": 5, "b": -1}
        ),
        "visibility_timeout=-1 is out of range (allowed: 0 to 43200)",
        id="change-batch-visibility_timeout-negative",
    ),
    pytest.param(
        lambda c: c.send_message(QUEUE_URL, "x", delay_seconds=901),
        "delay_seconds=901 is out of range (allowed: 0 to 900)",
        id="delay_seconds-901",
    ),
    pytest.param(
        lambda c: c.send_message_batch(QUEUE_URL, [SendEntry(body=str(i)) for i in range(11)]),
        "send_message_batch takes 1 to 10 entries, got 11",
        id="send-batch-11",
    ),
    pytest.param(
        lambda c: c.send_message_batch(QUEUE_URL, []),
        "send_message_batch takes 1 to 10 entries, got 0",
        id="send-batch-empty",
    ),
    pytest.param(
        lambda c: c.send_message_batch(
            QUEUE_URL, [SendEntry(body="a"), SendEntry(body="b", delay_seconds=1000)]
        ),
        "delay_seconds=1000 is out of range (allowed: 0 to 900)",
        id="send-batch-entry-delay",
    ),
    pytest.param(
        lambda c: c.delete_message_batch(QUEUE_URL, [f"h{i}" for i in range(11)]),
        "delete_message_batch takes 1 to 10 entries, got 11",
        id="delete-batch-11",
    ),
    pytest.param(
        lambda c: c.change_message_visibility_batch(QUEUE_URL, [f"h{i}" for i in range(11)], 0),
        "change_message_visibility_batch takes 1 to 10 entries, got 11",
        id="change-batch-11",
    ),
    pytest.param(
        lambda c: c.call("ReceiveMessage", {"QueueUrl": QUEUE_URL, "MaxNumberOfMessages": "ten"}),
        "invalid parameters for ReceiveMessage",
        id="call-validates-params",
    ),
    pytest.param(
        lambda c: c.call("SendMessage", {"QueueUrl": QUEUE_URL}),
        "invalid parameters for SendMessage",
        id="call-missing-param",
    ),
    pytest.param(
        lambda c: c.call("TeleportMessage", {}),
        "unknown SQS operation 'TeleportMessage'",
        id="call-unknown-operation",
    ),
]


@pytest.mark.parametrize(("invoke", "message"), CALL_CASES)
async def test_invalid_call_fails_before_any_io(
    client: SQSClient,
    wire: Recorder,
    invoke: Callable[[SQSClient], Awaitable[object]],
    message: str,
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        await invoke(client)
    assert isinstance(info.value, ValueError)
    assert info.value.code in ("InvalidOption", "InvalidParameter")
    assert wire.requests == []
    # The client is still fine afterwards.
    await client.purge_queue(QUEUE_URL)
    assert wire.operations() == ["PurgeQueue"]


# -- option objects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Limits(max_receive_connections=0), "max_receive_connections=0 is out of range (allowed: 1 to 1000)"),
        (lambda: Limits(max_receive_connections=1001), "max_receive_connections=1001 is out of range (allowed: 1 to 1000)"),
        (lambda: Limits(max_other_connections=0), "max_other_connections=0 is out of range (allowed: 1 to 1000)"),
        (lambda: Limits(max_other_connections=2.0),  # type: ignore[arg-type]
         "max_other_connections must be an integer, got 2.0"),
        (lambda: Limits(max_receive_connections=True), "max_receive_connections must be an integer, got True"),
        (lambda: Limits(keepalive_expiry=-1), "keepalive_expiry=-1 is out of range (allowed: >= 0.0)"),
        (lambda: Limits(keepalive_expiry=float("nan")), "keepalive_expiry=nan must be a finite number"),
        (lambda: Limits(keepalive_expiry=float("inf")), "keepalive_expiry=inf must be a finite number"),
        (lambda: Limits(keepalive_expiry="30"),  # type: ignore[arg-type]
         "keepalive_expiry must be a number, got '30'"),
        (lambda: RetryPolicy(max_attempts=0), "max_attempts=0 is out of range (allowed: 1 to 100)"),
        (lambda: RetryPolicy(max_attempts=101), "max_attempts=101 is out of range (allowed: 1 to 100)"),
        (lambda: RetryPolicy(base_delay=-0.5), "base_delay=-0.5 is out of range (allowed: >= 0.0)"),
        (lambda: RetryPolicy(max_delay=float("inf")), "max_delay=inf must be a finite number"),
        (lambda: RetryPolicy(base_delay=1.0, max_delay=0.5), "max_delay=0.5 must be >= base_delay=1.0"),
    ],
)  # fmt: skip
def test_invalid_options(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        make()
    assert info.value.code == "InvalidOption"
    assert isinstance(info.value, ValueError)


def test_options_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Limits(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]
    limits = Limits(max_receive_connections=2, max_other_connections=3)
    assert limits.max_connections == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_other_connections = 4  # type: ignore[misc]
    policy = RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=0.3)
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 4  # type: ignore[misc]


# -- open_client -----------------------------------------------------------------------------------


OPEN_CASES: list[Any] = [
    pytest.param({"region": "not a region!"}, "region='not a region!'", id="region-garbage"),
    pytest.param({"region": ""}, "region must be a non-empty string", id="region-empty"),
    pytest.param({"region": "US-EAST-1"}, "region='US-EAST-1'", id="region-uppercase"),
    pytest.param(
        {"endpoint_url": "ftp://127.0.0.1:21"},
        "endpoint_url='ftp://127.0.0.1:21' must be an http(s) URL",
        id="endpoint-scheme",
    ),
    pytest.param(
        {"endpoint_url": "localhost:4566"},
        "endpoint_url='localhost:4566' must be an http(s) URL",
        id="endpoint-no-scheme",
    ),
    pytest.param(
        {"endpoint_url": "http://"}, "endpoint_url='http://' must be an http(s) URL with a host",
        id="endpoint-no-host",
    ),
    pytest.param(
        {"endpoint_url": "http://127.0.0.1:abc"},
        "endpoint_url='http://127.0.0.1:abc' is not a valid URL",
        id="endpoint-bad-port",
    ),
    pytest.param(
        {"endpoint_url": "http://127.0.0.1:99999"},
        "endpoint_url='http://127.0.0.1:99999' must be an http(s) URL with a host (and a port from 1 to 65535)",
        id="endpoint-port-out-of-range",
    ),
    pytest.param({"limits": {"max_receive_connections": 2}}, "limits must be a Limits", id="limits-type"),
    pytest.param({"retry": 3}, "retry must be a RetryPolicy", id="retry-type"),
    pytest.param(
        {"aws_access_key_id": "AKID"},
        "aws_access_key_id and aws_secret_access_key must be given together",
        id="half-a-key",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("options", "message"), OPEN_CASES)
async def test_open_client_rejects_invalid_options(
    fake: FakeSQS, wire: Recorder, options: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {
        "region": "us-east-1",
        "endpoint_url": fake.endpoint,
        "transport": wire,
        **options,
    }
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        async with trio_sqs.open_client(**kwargs):
            pytest.fail("open_client accepted an invalid option")
    assert info.value.code == "InvalidOption"
    assert wire.requests == []


@pytest.mark.parametrize("region", ["local", "elasticmq", "mars-1"])
async def test_region_that_is_no_aws_region_needs_an_endpoint(
    fake: FakeSQS, wire: Recorder, region: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"region='{region}' is not an AWS region name"):
        async with trio_sqs.open_client(region=region, transport=wire):
            pytest.fail("opened a client for a region AWS does not have")
    assert wire.requests == []
    # With an explicit endpoint (a local server), any DNS label will do.
    async with trio_sqs.open_client(
        region=region, endpoint_url=fake.endpoint, transport=wire
    ) as client:
        assert client.region == region
        await client.purge_queue(QUEUE_URL)
    [request] = wire.requests
    assert request.headers["authorization"].split("/")[2] == region


async def test_no_region(monkeypatch: pytest.MonkeyPatch, fake: FakeSQS, wire: Recorder) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigurationError, match="no region: pass region="):
        async with trio_sqs.open_client(endpoint_url=fake.endpoint, transport=wire):
            pytest.fail("opened a client without a region")
    assert wire.requests == []


@pytest.mark.parametrize(
    ("aws_region", "aws_default_region", "config_region", "expected"),
    [
        ("eu-west-1", None, None, "eu-west-1"),  # AWS_REGION alone (the Kubernetes example)
        ("eu-west-1", "us-east-1", "ap-south-1", "eu-west-1"),  # AWS_REGION first
        (None, "us-east-2", "ap-south-1", "us-east-2"),  # then AWS_DEFAULT_REGION
        (None, None, "ap-south-1", "ap-south-1"),  # then the profile's config
    ],
)
async def test_region_sources_in_the_aws_cli_s_order(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake: FakeSQS,
    wire: Recorder,
    aws_region: str | None,
    aws_default_region: str | None,
    config_region: str | None,
    expected: str,
) -> None:
    """As the AWS CLI v2 and the other SDKs: AWS_REGION, then AWS_DEFAULT_REGION, then the
    profile's config file. botocore alone ignores AWS_REGION (the Kubernetes example, which sets
    only AWS_REGION, exited 2 with "no region")."""
    for name, value in (("AWS_REGION", aws_region), ("AWS_DEFAULT_REGION", aws_default_region)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if config_region is not None:
        config = tmp_path / "config"
        config.write_text(f"[default]\nregion = {config_region}\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    async with trio_sqs.open_client(endpoint_url=fake.endpoint, transport=wire) as client:
        assert client.region == expected
        await client.purge_queue(QUEUE_URL)
    [request] = wire.requests
    assert request.headers["authorization"].split("/")[2] == expected


async def test_fips_with_explicit_endpoint(fake: FakeSQS, wire: Recorder) -> None:
    with pytest.raises(ConfigurationError, match="FIPS and custom endpoint are not supported"):
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, use_fips=True, transport=wire
        ):
            pytest.fail("opened a FIPS client on a custom endpoint")
    assert wire.requests == []


async def test_invalid_calls_never_reach_a_dead_server(fake: FakeSQS, wire: Recorder) -> None:
    """With every connection dropped, I/O ends in TransportError; validation errors come first."""
    fake.faults.drop(None, times=100)
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url=fake.endpoint,
        retry=RetryPolicy(max_attempts=1),
        transport=wire,
    ) as client:
        assert client.endpoint == fake.endpoint
        with pytest.raises(ConfigurationError, match=re.escape("wait_time=21")):
            await client.receive_messages(QUEUE_URL, wait_time=21)
        assert wire.requests == []
        with pytest.raises(trio_sqs.TransportError):
            await client.receive_messages(QUEUE_URL, wait_time=0)
        assert wire.operations() == ["ReceiveMessage"]


async def test_environment_endpoint_is_validated_too(
    monkeypatch: pytest.MonkeyPatch, fake: FakeSQS, wire: Recorder
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "ftp://127.0.0.1:21")
    with pytest.raises(ConfigurationError, match=re.escape("endpoint_url='ftp://127.0.0.1:21'")):
        async with trio_sqs.open_client(region="us-east-1", transport=wire):
            pytest.fail("accepted an invalid endpoint from the environment")
    assert wire.requests == []
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", fake.endpoint)
    async with trio_sqs.open_client(region="us-east-1", transport=wire) as client:
        assert client.endpoint == fake.endpoint
        await client.purge_queue(QUEUE_URL)
    assert wire.operations() == ["PurgeQueue"]
    assert str(wire.requests[0].url).startswith(fake.endpoint + "/")


async def test_cancelled_open_does_not_hang(fake: FakeSQS, wire: Recorder) -> None:
    with trio.move_on_after(0) as scope:
        async with trio_sqs.open_client(
            region="us-east-1", endpoint_url=fake.endpoint, transport=wire
        ):
            pytest.fail("the block ran inside a cancelled scope")
    assert scope.cancelled_caught
    assert wire.requests == []


# -- the public namespace --------------------------------------------------------------------------


def test_each_option_is_described_once_in_its_field_metadata() -> None:
    """One text per ConsumerOptions field (its ``doc`` metadata) is what the docstring's
    ``Attributes:`` section and the command line's help both show (help was parsed out of the
    docstring)."""
    from trio_sqs._cli._settings import CONSUMER_SETTINGS

    doc = inspect.getdoc(trio_sqs.ConsumerOptions) or ""
    attributes = doc.split("\nAttributes:\n", 1)[1]
    helps = {setting.dest: setting.help for setting in CONSUMER_SETTINGS}
    fields = dataclasses.fields(trio_sqs.ConsumerOptions)
    assert [s.dest for s in CONSUMER_SETTINGS] == [f.name for f in fields]
    for f in fields:
        text: str = f.metadata["doc"]
        assert len(text) > 20, f.name
        words = " ".join(attributes.split())
        assert f"{f.name}: {text}" in words, f.name
        assert helps[f.name].startswith(text.replace("``", "").replace("%", "%%")), f.name


def test_all_is_sorted_and_complete() -> None:
    names = trio_sqs.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(trio_sqs, name), name
    public = {
        name
        for name, value in vars(trio_sqs).items()
        if not name.startswith("_") and not isinstance(value, type(trio_sqs))
    }
    assert public - {"annotations"} == set(names)


def test_exceptions_share_one_root() -> None:
    from trio_sqs import _exceptions

    for name in _exceptions.__all__:
        value = getattr(_exceptions, name)
        assert issubclass(value, trio_sqs.SQSError), name
        assert getattr(trio_sqs, name) is value, name  # re-exported
        assert name in _exceptions.__doc__, f"{name} is missing from the tree in the docstring"
