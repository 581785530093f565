"""The user-facing pieces of trio_sqs.testing: transport injection, make_message, the pytest
plugin's fixtures, and the README's example, run as a user would run it."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from botocore.credentials import Credentials, RefreshableCredentials

import trio_sqs
from trio_sqs._message import md5_of_message_attributes, message_from_wire
from trio_sqs.testing import FakeSQS, make_message, open_fake_client

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


def run_pytest_in(project: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest in ``project`` as a user would (no AWS_* or PYTEST_* variables of ours, warnings
    as errors); fail with its output unless it passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- testing-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its testing example"
    return match.group(1)


def test_the_readme_testing_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    """Copy the README's example into an empty project and run pytest there, as a user would:
    the fixtures come from the installed plugin, not from our conftest."""
    (tmp_path / "test_handlers.py").write_text(_readme_example())
    proc = run_pytest_in(tmp_path)
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


# -- open_client(transport=...): what any transport may do ----------------------------------------


class Counting(httpx.AsyncBaseTransport):
    """The fake's transport, counting how often the client closes it."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.closes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closes += 1


async def test_the_client_closes_its_transport_once_on_exit_and_leaves_it_after_a_failed_open(
    fake_sqs: FakeSQS,
) -> None:
    wire = Counting(fake_sqs)
    async with open_fake_client(fake_sqs, transport=wire) as client:
        assert await client.list_queues() == []
        assert wire.closes == 0
    assert wire.closes == 1
    with pytest.raises(ZeroDivisionError):
        async with open_fake_client(fake_sqs, transport=wire):
            raise ZeroDivisionError
    assert wire.closes == 2
    # Opening failed: the client never owned it, the caller may reuse it (documented).
    with pytest.raises(trio_sqs.ConfigurationError, match="not an AWS region"):
        async with trio_sqs.open_client(region="mars-1", transport=wire):
            pytest.fail("opened a client for a region AWS does not have")  # pragma: no cover
    assert wire.closes == 2


class _SyncOnly(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:  # pragma: no cover
        return httpx.Response(200)


@pytest.mark.parametrize(
    "make", [httpx.HTTPTransport, _SyncOnly, object], ids=["httpx-sync", "sync-subclass", "object"]
)
async def test_open_client_refuses_a_sync_transport_or_any_other_object(make: Any) -> None:
    transport = make()
    try:
        with pytest.raises(
            trio_sqs.ConfigurationError, match=re.escape("httpx.AsyncBaseTransport")
        ) as info:
            async with trio_sqs.open_client(region="us-east-1", transport=transport):
                pytest.fail("accepted a transport it cannot await")  # pragma: no cover
        assert info.value.code == "InvalidOption"
    finally:
        if isinstance(transport, httpx.BaseTransport):
            transport.close()


class Scripted(httpx.AsyncBaseTransport):
    """Raises ``error`` or answers ``status`` with ``body``, whatever was asked."""

    def __init__(
        self,
        *,
        error: Exception | None = None,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.error, self.status, self.body, self.headers = error, status, body, headers or {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, content=self.body, headers=self.headers)


@asynccontextmanager
async def client_over(transport: httpx.AsyncBaseTransport) -> AsyncIterator[trio_sqs.SQSClient]:
    async with open_fake_client(
        FakeSQS(), retry=trio_sqs.RetryPolicy(max_attempts=1), transport=transport
    ) as client:
        yield client


QUEUE = "http://sqs.fake.invalid/123456789012/q"


@pytest.mark.parametrize(
    ("transport", "expected", "code"),
    [
        (Scripted(error=httpx.ConnectError("refused")), trio_sqs.TransportError, "TransportError"),
        (Scripted(error=httpx.ReadError("reset")), trio_sqs.TransportError, "TransportError"),
        (Scripted(body=b"<html>proxy</html>"), trio_sqs.TransportError, "InvalidResponse"),
        (Scripted(body=b"[1, 2]"), trio_sqs.TransportError, "InvalidResponse"),
        (
            Scripted(body=b"{}", headers={"Content-Encoding": "gzip"}),
            trio_sqs.TransportError,
            "TransportError",
        ),
        (Scripted(status=500), trio_sqs.ServiceError, "500"),
        (Scripted(status=404, body=b"<html>"), trio_sqs.ServiceError, "404"),
        (Scripted(status=302, headers={"Location": "http://x/"}), trio_sqs.ServiceError, "302"),
    ],
    ids=[
        "connect-error",
        "read-error",
        "html",
        "json-list",
        "bad-gzip",
        "500-empty",
        "404-html",
        "302-redirect",
    ],
)
async def test_a_transport_that_fails_or_answers_garbage_surfaces_as_a_trio_sqs_error(
    transport: Scripted, expected: type[trio_sqs.SQSError], code: str
) -> None:
    async with client_over(transport) as client:
        with pytest.raises(expected) as info:
            await client.send_message(QUEUE, "x")
    assert type(info.value) is expected
    assert info.value.code == code


@pytest.mark.parametrize("body", [b"", b"{}"], ids=["empty", "empty-object"])
async def test_a_200_answer_without_the_expected_members_is_an_invalid_response(
    body: bytes,
) -> None:
    async with client_over(Scripted(body=body)) as client:
        with pytest.raises(trio_sqs.TransportError) as info:
            await client.send_message(QUEUE, "x")
    assert info.value.code == "InvalidResponse"


async def test_an_error_answer_with_a_non_string_type_is_a_service_error() -> None:
    async with client_over(Scripted(status=400, body=b'{"__type": 5}')) as client:
        with pytest.raises(trio_sqs.ServiceError) as info:
            await client.send_message(QUEUE, "x")
    assert info.value.status_code == 400


# -- opening without a worker thread ---------------------------------------------------------------


def _refreshable() -> RefreshableCredentials:
    def metadata() -> dict[str, str]:
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return {
            "access_key": "testing",
            "secret_key": "testing",
            "token": "token",
            "expiry_time": expiry.isoformat(),
        }

    return RefreshableCredentials.create_from_metadata(
        metadata(), refresh_using=metadata, method="test"
    )


EVERYTHING_GIVEN: dict[str, Any] = {
    "region": "us-east-1",
    "endpoint_url": "http://sqs.fake.invalid",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "use_fips": False,
    "use_dualstack": False,
}


def _without(*names: str, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in EVERYTHING_GIVEN.items() if k not in names} | extra


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions open_client (and its credential cache) ran in worker threads."""
    calls: list[str] = []
    run_sync = trio.to_thread.run_sync

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", spy)
    return calls


async def test_opening_with_everything_given_takes_no_thread_and_no_virtual_time(
    autojump_clock: trio.abc.Clock, fake_sqs: FakeSQS, thread_calls: list[str]
) -> None:
    """On the autojump clock a worker thread lets the clock jump to the next deadline; the
    inline way has nothing to wait for."""
    fake_sqs.transport()  # the service model in memory
    for options in (
        EVERYTHING_GIVEN,
        _without("aws_access_key_id", "aws_secret_access_key", credentials=Credentials("a", "b")),
    ):
        start = trio.current_time()
        with trio.move_on_after(5) as scope:
            async with trio_sqs.open_client(transport=fake_sqs.transport(), **options) as client:
                assert await client.list_queues() == []
        assert not scope.cancelled_caught
        assert trio.current_time() == start
    assert thread_calls == []


@pytest.mark.parametrize(
    "options",
    [
        _without("region"),  # from AWS_DEFAULT_REGION
        _without("endpoint_url"),  # from the endpoint rules
        _without("use_fips"),
        _without("use_dualstack"),
        _without(profile="default"),
        _without("aws_access_key_id", "aws_secret_access_key"),  # the credential chain
        _without("aws_access_key_id", "aws_secret_access_key", credentials=_refreshable()),
    ],
    ids=["region", "endpoint", "use_fips", "use_dualstack", "profile", "chain", "refreshable"],
)
async def test_opening_with_something_to_read_runs_in_a_worker_thread(
    fake_sqs: FakeSQS, thread_calls: list[str], options: dict[str, Any]
) -> None:
    fake_sqs.transport()
    async with trio_sqs.open_client(transport=fake_sqs.transport(), **options):
        pass
    assert thread_calls[0] == "_resolve_blocking"


# -- open_fake_client and the fake's keys ------------------------------------------------------------


class Signatures(httpx.AsyncBaseTransport):
    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.keys: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers["authorization"].split("Credential=")[1].split("/")[0])
        return await self.inner.handle_async_request(request)


async def test_open_fake_client_signs_with_the_fakes_first_key(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeSQS(verify_signatures=True, credentials={"AKIDFIRST": "one", "AKIDOTHER": "two"})
    wire = Signatures(fake)
    async with open_fake_client(fake, transport=wire) as client:
        assert await client.list_queues() == []
    assert wire.keys == ["AKIDFIRST"]


async def test_a_verifying_fake_that_accepts_no_key_refuses_every_call(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``credentials={}`` with verification: no key is good (a test of the refusal path);
    open_fake_client signs with the default test key and every call is AccessDenied."""
    fake = FakeSQS(verify_signatures=True, credentials={})
    async with open_fake_client(fake) as client:
        with pytest.raises(trio_sqs.AccessDenied):
            await client.list_queues()
    # Without verification, any key is good.
    async with open_fake_client(FakeSQS(credentials={})) as client:
        assert await client.list_queues() == []


# -- make_message --------------------------------------------------------------------------------


def test_make_message_with_every_argument() -> None:
    message = make_message(
        "body",
        message_id="mid-1",
        receipt_handle="rh-1",
        queue_url="http://sqs.fake.invalid/123456789012/orders.fifo",
        receive_count=3,
        message_attributes={
            "typed": trio_sqs.MessageAttributeValue.string("t"),
            "s": "x",
            "n": -0.5,
            "b": b"\x01",
        },
        attributes={"SentTimestamp": "1700000000000", "SequenceNumber": "18"},
        message_group_id="group",
    )
    assert (message.message_id, message.receipt_handle) == ("mid-1", "rh-1")
    assert message.queue_url.endswith("/orders.fifo")
    assert (message.receive_count, message.message_group_id) == (3, "group")
    assert message.sequence_number == "18"
    assert message.attributes["SentTimestamp"] == "1700000000000"
    assert message.attributes["SenderId"]  # the defaults stay
    assert message.message_attributes["typed"].string_value == "t"
    assert message.message_attributes["n"].string_value == "-0.5"
    assert message.md5_of_message_attributes == md5_of_message_attributes(
        message.message_attributes
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"message_attributes": {"n": float("nan")}}, "to a number"),
        ({"message_attributes": {"n": float("inf")}}, "to a number"),
        ({"message_attributes": {"s": ""}}, "non-empty value"),
        ({"message_attributes": {"": "x"}}, "name '' is invalid"),
        ({"message_attributes": {"AWS.x": "x"}}, "name 'AWS.x' is invalid"),
        ({"message_attributes": {f"a{i}": i for i in range(11)}}, "exceeds the allowed maximum"),
        ({"body": "nul \x00"}, "characters SQS refuses"),
        ({"body": "lone surrogate \ud800"}, "characters SQS refuses"),
        ({"message_id": ""}, "must not be empty"),
        ({"receipt_handle": ""}, "must not be empty"),
        ({"body": ""}, "must not be empty"),
        ({"body": "x" * (1_048_576 - 6), "message_attributes": {"a": "b"}}, "SQS takes 1 MiB"),
        ({"message_attributes": {"n": 1e300}}, "to a number"),
        ({"message_attributes": {"n": 10**38 + 1}}, "to a number"),  # 39 significant digits
        ({"receive_count": 3, "attributes": {"ApproximateReceiveCount": "1"}}, "receive_count"),
        ({"message_group_id": ""}, "message_group_id must be"),
        ({"message_group_id": "g" * 129}, "message_group_id must be"),
    ],
    ids=[
        "nan",
        "inf",
        "empty-value",
        "empty-name",
        "reserved-name",
        "11-attributes",
        "nul-in-body",
        "surrogate-in-body",
        "empty-id",
        "empty-handle",
        "empty-body",
        "over-1-MiB-with-attributes",
        "number-out-of-range",
        "number-of-39-digits",
        "receive-counts-disagree",
        "empty-group",
        "group-of-129",
    ],
)
def test_make_message_refuses_what_sqs_would_never_deliver(
    kwargs: dict[str, Any], message: str
) -> None:
    """ "A valid message" as SQS would hand it over: it used to build messages with NaN or empty
    attributes, unencodable bodies, and replaced an empty message_id with a random one."""
    arguments: dict[str, Any] = {"body": "x", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        make_message(**arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": None},
        {"body": b"x"},
        {"message_id": 5},
        {"queue_url": None},
        {"receive_count": 1.5},
        {"receive_count": "2"},
        {"attributes": {"ApproximateReceiveCount": 5}},
        {"message_attributes": {1: "v"}},
    ],
    ids=lambda kwargs: repr(kwargs)[:40],
)
def test_make_message_refuses_arguments_of_the_wrong_type(kwargs: dict[str, Any]) -> None:
    """These built messages whose fields had the wrong types (receive_count 1.5 became "1.5")."""
    with pytest.raises(TypeError):
        make_message(**{"body": "x", **kwargs})


# -- the plugin's fixtures in a project of their own -----------------------------------------------

PLUGIN_PROJECT_TESTS = """
import pytest
import trio

from trio_sqs.testing import FakeSQS, open_fake_client


def queue_name(url):
    return url.rsplit("/", 1)[1]


def test_a_plain_test_gets_a_plain_fake(fake_sqs):
    assert isinstance(fake_sqs, FakeSQS) and fake_sqs.queues == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a[b]", "test_param-a-b--"), ("x/y?z", "test_param-x-y-z-")],
    ids=["a[b]", "x/y?z"],
)
async def test_param(fake_queue_url, value, expected):
    assert queue_name(fake_queue_url) == expected


@pytest.mark.parametrize("value", ["é ü"], ids=["ünïcode"])
async def test_unicode_ids(fake_queue_url, value):
    assert queue_name(fake_queue_url) == "test_unicode_ids--xfcn-xefcode-"


async def test_a_name_longer_than_the_eighty_characters_sqs_allows_for_a_queue_name_is_cut(
    fake_queue_url, request
):
    assert queue_name(fake_queue_url) == request.node.name[:80]


async def test_two_clients_on_one_fake(autojump_clock, fake_sqs, fake_sqs_client, fake_queue_url):
    async with open_fake_client(fake_sqs) as other:
        await other.send_message(fake_queue_url, "from the other")
    start = trio.current_time()
    result = await fake_sqs_client.receive_messages(fake_queue_url, wait_time=20)
    assert [m.body for m in result] == ["from the other"]
    assert not await fake_sqs_client.receive_messages(fake_queue_url, wait_time=20)
    assert trio.current_time() - start == 20
"""


def test_the_plugin_fixtures_in_a_trio_mode_project(tmp_path: Path) -> None:
    """As a user meets them: ``trio_mode = true``, no marks, a plain (not async) test asking for
    ``fake_sqs``, queue names from parametrized, unicode and over-long test names, two
    clients on one fake. (The README example covers a project with ``pytest.mark.trio``.)"""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_plugin.py").write_text(PLUGIN_PROJECT_TESTS)
    proc = run_pytest_in(tmp_path)
    assert "6 passed" in proc.stdout, proc.stdout
