"""The hot path beyond signing (issue 12): our signer for every operation, its comparison with
botocore's at client start, fast parsing of the hot answers (always botocore's result), the
overall deadline of a call, and which transport ``open_client`` picks (proxies)."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any
from unittest import mock

import httpx
import pytest
import trio
import trio.testing
from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    import orjson
except ImportError:  # pragma: no cover - the test extra installs it
    orjson = None

import trio_sqs
import trio_sqs._json
from trio_sqs import ConfigurationError, RetryPolicy, TransportError
from trio_sqs._client import DEFAULT_CALL_TIMEOUT, _receive_result
from trio_sqs._connect import proxy_for
from trio_sqs._message import (
    MessageAttributeValue,
    ReceiveResult,
    md5_of_message_attributes,
    receive_result_from_json,
)
from trio_sqs._protocol import FAST_PARSED, ServiceData, SQSProtocol, load_service_data
from trio_sqs._transport import TrioTransport
from trio_sqs.testing import FakeSQS, open_fake_client

from .conftest import examples, set_signing_clock

ENDPOINT = "https://sqs.eu-west-1.amazonaws.com"
CREDS = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
NOW = datetime.datetime(2025, 3, 1, 0, 0, 7)
SETTINGS = settings(
    max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@functools.lru_cache(maxsize=1)
def _data() -> ServiceData:
    return load_service_data()


def _protocol(fast: bool = True) -> SQSProtocol:
    return SQSProtocol(_data(), ENDPOINT, "eu-west-1", fast=fast)


# -- our signer for the operations botocore serializes --------------------------------------------

OTHER_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("GetQueueUrl", {"QueueName": "orders", "QueueOwnerAWSAccountId": "123456789012"}),
    (
        "CreateQueue",
        {
            "QueueName": "orders.fifo",
            "Attributes": {"FifoQueue": "true", "VisibilityTimeout": "30"},
            "tags": {"team": "ünïcode"},
        },
    ),
    ("ListQueues", {"MaxResults": 1000, "QueueNamePrefix": "o"}),
    ("GetQueueAttributes", {"QueueUrl": ENDPOINT + "/1/q", "AttributeNames": ["All"]}),
    (
        "SendMessageBatch",
        {
            "QueueUrl": ENDPOINT + "/1/q",
            "Entries": [
                {
                    "Id": "0",
                    "MessageBody": "b",
                    "MessageAttributes": {"k": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
                }
            ],
        },
    ),
    (  # binary: the fast builder declines, botocore serializes, our signer signs
        "SendMessage",
        {
            "QueueUrl": ENDPOINT + "/1/q",
            "MessageBody": "b",
            "MessageAttributes": {"k": {"DataType": "Binary", "BinaryValue": b"\x01"}},
        },
    ),
    ("PurgeQueue", {"QueueUrl": ENDPOINT + "/1/q"}),
]


@pytest.mark.parametrize(("operation", "params"), OTHER_CALLS, ids=[c[0] for c in OTHER_CALLS])
@pytest.mark.parametrize("token", [None, "session/token=="])
def test_every_operation_signed_by_us_is_botocores_request(
    operation: str, params: dict[str, Any], token: str | None
) -> None:
    creds = ReadOnlyCredentials(CREDS.access_key, CREDS.secret_key, token)
    ours = _protocol().build_request(operation, params, creds, now=NOW)
    with pytest.MonkeyPatch.context() as mp:
        set_signing_clock(mp, lambda: NOW)
        expected = _protocol(fast=False).build_request(operation, params, creds)
    assert list(ours.headers.items()) == list(expected.headers.items())
    assert (ours.method, ours.url, ours.body) == (expected.method, expected.url, expected.body)


def test_validation_errors_are_botocores_with_our_signer() -> None:
    with pytest.raises(ConfigurationError, match="invalid parameters for GetQueueUrl"):
        _protocol().build_request("GetQueueUrl", {"QueueNam": "x"}, CREDS, validate=True)


def test_skew_moves_the_signing_time() -> None:
    request = _protocol().build_request(
        "GetQueueUrl", {"QueueName": "q"}, CREDS, now=NOW, skew=-3600.4
    )
    assert request.headers["X-Amz-Date"] == "20250228T230006Z"


def test_the_signer_check_agrees_on_this_botocore() -> None:
    assert _protocol().check_signer(CREDS) is None
    assert _protocol().check_signer(ReadOnlyCredentials("A", "B", "token")) is None


def test_the_signer_check_names_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_sqs import _sigv4

    real = _sigv4.Signer.sign

    def off_by_one(self: Any, *args: Any) -> dict[str, str]:
        headers = real(self, *args)
        headers["Authorization"] += "0"
        return headers

    monkeypatch.setattr(_sigv4.Signer, "sign", off_by_one)
    assert _protocol().check_signer(CREDS) == (
        "ReceiveMessage: Authorization differ(s) from botocore's"
    )


async def test_a_signer_mismatch_at_start_warns_and_botocore_signs(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(SQSProtocol, "check_signer", lambda self, creds: "X differs")
    fast_calls = []
    real = SQSProtocol.build_request_fast

    def spy(self: SQSProtocol, *args: Any) -> Any:
        fast_calls.append(args[0])
        return real(self, *args)

    monkeypatch.setattr(SQSProtocol, "build_request_fast", spy)
    fake_sqs.verify_signatures = True
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("signed-by-botocore")
        await client.send_message(url, "hello")
        [message] = (await client.receive_messages(url, wait_time=0)).messages
        assert not client._protocol.fast
    assert message.body == "hello"
    assert fast_calls == []
    [warning] = [r for r in caplog.records if "SigV4 signer" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "X differs" in warning.getMessage()


# -- fast parsing: botocore's result, or botocore reads it -----------------------------------------

text = st.text(max_size=12)
b64 = st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
wire_value = st.one_of(
    st.fixed_dictionaries(
        {"DataType": st.sampled_from(["String", "Number", "Binary.x"])},
        optional={
            "StringValue": st.one_of(text, st.none(), st.integers()),
            "BinaryValue": st.one_of(b64, st.none(), st.just("not base64!"), st.integers()),
            "StringListValues": st.lists(text, max_size=2),
            "BinaryListValues": st.lists(st.one_of(b64, st.none()), max_size=2),
            "Unknown": text,
        },
    ),
    st.none(),
    st.integers(),
    st.lists(text, max_size=1),
)
wire_message = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "MessageId": st.one_of(text, st.none()),
            "ReceiptHandle": text,
            "Body": st.one_of(text, st.integers()),
            "MD5OfBody": text,
            "MD5OfMessageAttributes": text,
            "Attributes": st.one_of(
                st.dictionaries(text, st.one_of(text, st.none()), max_size=2), st.just([])
            ),
            "MessageAttributes": st.one_of(
                st.dictionaries(text, wire_value, max_size=3), st.none(), st.just("x")
            ),
            "Extra": st.integers(),
        },
    ),
    st.none(),
    st.integers(),
)
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/q"
LOADERS = [trio_sqs._json._standard_loads, *([orjson.loads] if orjson is not None else [])]


def _generic_receive(body: bytes) -> Any:
    """What the client gives without the one-pass reader: botocore's parser, then the messages
    built and checked one by one (or the ValueError of an answer that is not one)."""
    try:
        entries = _protocol().parse_receive_response(200, {}, body)
    except ValueError as exc:
        return exc
    return _receive_result(entries, QUEUE_URL)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _wire_attributes_digest(attributes: dict[str, Any]) -> str:
    values = {
        name: MessageAttributeValue(
            value["DataType"],
            string_value=value.get("StringValue"),
            binary_value=(
                base64.b64decode(value["BinaryValue"]) if "BinaryValue" in value else None
            ),
        )
        for name, value in attributes.items()
    }
    return md5_of_message_attributes(values)


plain_value = st.one_of(
    st.builds(
        lambda t, v: {"DataType": t, "StringValue": v},
        st.sampled_from(["String", "Number", "String.custom"]),
        st.text(max_size=8),
    ),
    st.builds(
        lambda t, v: {"DataType": t, "BinaryValue": base64.b64encode(v).decode()},
        st.sampled_from(["Binary", "Binary.gz"]),
        st.binary(max_size=8),
    ),
)
ODD_NUMBERS = ["-1", " 1", "1_0", "+3", "", "x", "²", "253402300800000"]
MUTATIONS = [
    "body digest",
    "attributes digest",
    "no attributes digest",
    "null member",
    "an empty id or handle",
    "a third member in a value",
    "odd number",
    "a system attribute not a string",
    "empty attribute name",
    "binary not base64",
    "body a number",
    "a list for a map",
]


@st.composite
def sqs_messages(draw: st.DrawFn, clean: bool = False) -> dict[str, Any]:
    """A message as SQS sends it, digests right; unless ``clean``, sometimes with one flaw."""
    body = draw(st.text(max_size=20))
    message: dict[str, Any] = {
        "MessageId": draw(st.text(min_size=1, max_size=6)),
        "ReceiptHandle": draw(st.text(min_size=1, max_size=6)),
        "MD5OfBody": _md5(body.encode()),
        "Body": body,
    }
    number = st.integers(0, 2 * 10**14).map(str)  # (SentTimestamp: before the year 10000)
    system = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "ApproximateReceiveCount": number,
                "SentTimestamp": number,
                "SenderId": st.sampled_from(["SENDER", "AIDAEXAMPLE"]),
                "MessageGroupId": st.text(max_size=4),
            },
        )
    )
    if system or draw(st.booleans()):
        message["Attributes"] = system
    attributes = draw(st.dictionaries(st.text(min_size=1, max_size=5), plain_value, max_size=3))
    if attributes:
        message["MessageAttributes"] = attributes
        message["MD5OfMessageAttributes"] = _wire_attributes_digest(attributes)
    if clean:
        return message
    flaw = draw(st.sampled_from([None, *MUTATIONS]))
    if flaw is None:
        return message
    return _flawed(message, flaw, lambda options: draw(st.sampled_from(options)))


def _flawed(message: dict[str, Any], flaw: str, pick: Callable[[list[Any]], Any]) -> dict[str, Any]:
    """``message`` with one flaw of the kind named, ``pick`` choosing among its variants."""
    message = dict(message)
    attributes = dict(
        message.get("MessageAttributes") or {"a": {"DataType": "String", "StringValue": "v"}}
    )
    if flaw == "body digest":
        message["MD5OfBody"] = _md5(b"another body")
    elif flaw == "attributes digest":
        message["MessageAttributes"] = attributes
        message["MD5OfMessageAttributes"] = _md5(b"other attributes")
    elif flaw == "no attributes digest":
        message["MessageAttributes"] = attributes
        message.pop("MD5OfMessageAttributes", None)
    elif flaw == "null member":
        message[pick(["MessageId", "ReceiptHandle", "Body", "MD5OfBody"])] = None
    elif flaw == "an empty id or handle":
        message[pick(["MessageId", "ReceiptHandle"])] = ""
    elif flaw == "a third member in a value":
        name = sorted(attributes)[0]
        extra = pick(["StringValue", "BinaryValue", "StringListValues"])
        attributes[name] = {**attributes[name], extra: pick([None, "", "AA==", []])}
        message["MessageAttributes"] = attributes
        message["MD5OfMessageAttributes"] = _md5(b"whatever")
    elif flaw == "odd number":
        name = pick(
            ["ApproximateReceiveCount", "SentTimestamp", "ApproximateFirstReceiveTimestamp"]
        )
        message["Attributes"] = {**message.get("Attributes", {}), name: pick(ODD_NUMBERS)}
    elif flaw == "a system attribute not a string":
        message["Attributes"] = {**message.get("Attributes", {}), "SenderId": pick([1, None, []])}
    elif flaw == "empty attribute name":
        attributes[""] = {"DataType": "String", "StringValue": ""}
        message["MessageAttributes"] = attributes
        message["MD5OfMessageAttributes"] = _wire_attributes_digest(attributes)
    elif flaw == "binary not base64":
        attributes["b"] = {"DataType": "Binary", "BinaryValue": "not base64!"}
        message["MessageAttributes"] = attributes
    elif flaw == "body a number":
        message["Body"] = 7
    elif flaw == "a list for a map":
        message[pick(["Attributes", "MessageAttributes"])] = []
    else:  # pragma: no cover
        raise AssertionError(flaw)
    return message


receive_answers = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "Messages": st.one_of(
                st.lists(st.one_of(sqs_messages(), wire_message), max_size=3), st.none()
            )
        },
    ),
    st.just([]),
    st.just("text"),
)


@SETTINGS
@given(answer=receive_answers)
def test_one_pass_receive_reading_is_the_general_paths_or_declines(answer: Any) -> None:
    body = json.dumps(answer).encode()
    for loads in LOADERS:  # (orjson, the speed extra's, and the standard library's)
        with mock.patch.object(trio_sqs._json, "loads", loads):
            fast = receive_result_from_json(body, QUEUE_URL)
        if fast is None:
            continue  # the general path reads it (the client then calls parse_receive_response)
        expected = _generic_receive(body)
        assert not isinstance(expected, Exception), (
            f"one-pass reading accepted what botocore refuses: {expected}"
        )
        assert fast == expected
        assert not expected.corrupt  # a corrupt or malformed message is always declined


@SETTINGS
@given(messages=st.lists(sqs_messages(clean=True), max_size=10))
def test_one_pass_receive_reading_takes_every_answer_as_sqs_sends_it(
    messages: list[dict[str, Any]],
) -> None:
    """The declines above must be the odd answers only."""
    body = json.dumps({"Messages": messages}, ensure_ascii=False).encode()
    for loads in LOADERS:
        with mock.patch.object(trio_sqs._json, "loads", loads):
            fast = receive_result_from_json(body, QUEUE_URL)
        assert fast is not None
        assert fast == _generic_receive(body)
        assert len(fast.messages) == len(messages)


@pytest.mark.parametrize("variant", [0, -1])
@pytest.mark.parametrize("flaw", MUTATIONS)
def test_one_pass_receive_reading_declines_each_flaw(flaw: str, variant: int) -> None:
    """Each flaw sends the answer down the general path, which sets the message apart (or, for
    a number ``int()`` reads, such as ``-1``, delivers it as the one-pass reader never does)."""
    attributes = {"a": {"DataType": "String", "StringValue": "v"}}
    good = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "MD5OfBody": _md5(b"b"),
        "Body": "b",
        "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000"},
        "MessageAttributes": attributes,
        "MD5OfMessageAttributes": _wire_attributes_digest(attributes),
    }
    assert receive_result_from_json(json.dumps({"Messages": [good]}).encode(), QUEUE_URL)
    bad = _flawed(good, flaw, lambda options: options[variant])
    body = json.dumps({"Messages": [good, bad]}).encode()
    assert receive_result_from_json(body, QUEUE_URL) is None
    general = _generic_receive(body)
    assert not isinstance(general, Exception)
    assert general.messages[0].message_id == "m"


@pytest.mark.parametrize("name", ["ApproximateReceiveCount", "SentTimestamp"])
def test_a_number_past_ints_digit_limit_is_declined_and_set_apart(name: str) -> None:
    """int() refuses more than 4300 digits: the general path sets the message apart as
    malformed; the one-pass reader must not deliver it (its receive_count would raise)."""
    message = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "MD5OfBody": _md5(b"b"),
        "Body": "b",
        "Attributes": {name: "1" * 5000},
    }
    body = json.dumps({"Messages": [message]}).encode()
    for loads in LOADERS:
        with mock.patch.object(trio_sqs._json, "loads", loads):
            assert receive_result_from_json(body, QUEUE_URL) is None
    general = _generic_receive(body)
    assert not isinstance(general, Exception)
    assert general.messages == () and len(general.corrupt) == 1


def test_one_pass_receive_reading_of_binary_values_and_empty_answers() -> None:
    attributes = {
        "s": {"DataType": "String", "StringValue": "v"},
        "b": {"DataType": "Binary", "BinaryValue": base64.b64encode(b"\0\1").decode()},
    }
    answer = {
        "Messages": [
            {
                "MessageId": "m",
                "ReceiptHandle": "r",
                "MD5OfBody": _md5(b"b"),
                "Body": "b",
                "Attributes": {"ApproximateReceiveCount": "1"},
                "MD5OfMessageAttributes": _wire_attributes_digest(attributes),
                "MessageAttributes": attributes,
            }
        ]
    }
    fast = receive_result_from_json(json.dumps(answer).encode(), QUEUE_URL)
    assert fast is not None
    [message] = fast.messages
    assert message.message_attributes["b"] == MessageAttributeValue.binary(b"\0\1")
    assert message.receive_count == 1 and message.queue_url == QUEUE_URL
    assert fast == _generic_receive(json.dumps(answer).encode())
    assert receive_result_from_json(b"", QUEUE_URL) == ReceiveResult(())
    assert receive_result_from_json(b"{}", QUEUE_URL) == ReceiveResult(())
    assert receive_result_from_json(b'{"Messages": []}', QUEUE_URL) == ReceiveResult(())


batch_answers = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "Successful": st.lists(
                st.fixed_dictionaries(
                    {"Id": text},
                    optional={"MessageId": text, "MD5OfMessageBody": text, "SequenceNumber": text},
                ),
                max_size=2,
            ),
            "Failed": st.lists(
                st.fixed_dictionaries(
                    {"Id": text, "Code": text},
                    optional={"SenderFault": st.booleans(), "Message": text},
                ),
                max_size=2,
            ),
            "MessageId": text,
            "MD5OfMessageBody": text,
        },
    ),
    st.just({}),
)


@SETTINGS
@given(operation=st.sampled_from(sorted(FAST_PARSED)), answer=batch_answers)
def test_fast_parsing_of_the_other_hot_answers_is_botocores(operation: str, answer: Any) -> None:
    body = json.dumps(answer).encode()
    protocol = _protocol()
    fast = protocol.parse_response_fast(operation, body)
    assert fast is not None
    expected = protocol.parse_response(operation, 200, {}, body)
    # botocore keeps only the members the model knows; the client reads only those.
    assert {k: v for k, v in fast.items() if k in expected} == expected
    shape = protocol.operation_model(operation).output_shape
    known = set(shape.members) if shape is not None else set()
    assert set(fast) - set(expected) <= set(answer) - known


@pytest.mark.parametrize("body", [b"[]", b"nope", b'"x"', b"{"])
def test_fast_parsing_declines_what_is_not_a_json_object(body: bytes) -> None:
    assert _protocol().parse_response_fast("DeleteMessageBatch", body) is None
    assert receive_result_from_json(body, QUEUE_URL) is None


def test_only_the_hot_operations_are_parsed_fast() -> None:
    assert _protocol().parse_response_fast("GetQueueUrl", b'{"QueueUrl": "u"}') is None


# -- the overall deadline of a call ----------------------------------------------------------------


async def test_a_server_that_stalls_after_its_headers_costs_call_timeout_not_150_s(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """Each attempt waits 30 s for the body; 5 attempts would take 150 s and more. The call's
    deadline (60 s by default) ends it, naming the last failure."""
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "stalled"}))["QueueUrl"]
    fake_sqs.faults.stall("SendMessage", times=10)
    async with open_fake_client(fake_sqs, retry=RetryPolicy(max_attempts=5)) as client:
        start = trio.current_time()
        with pytest.raises(TransportError) as info:
            await client.send_message(url, "x")
        assert trio.current_time() - start == pytest.approx(DEFAULT_CALL_TIMEOUT)
    message = str(info.value)
    assert "SendMessage did not complete within 60 s" in message
    assert "2 attempt(s)" in message and "the last failed" in message
    assert isinstance(info.value.__cause__, TransportError)


async def test_a_long_poll_gets_its_read_timeout_on_top(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "stalled-poll"}))["QueueUrl"]
    fake_sqs.faults.stall("ReceiveMessage", times=10)
    async with open_fake_client(fake_sqs, call_timeout=5) as client:
        start = trio.current_time()
        with pytest.raises(TransportError, match="within 35 s"):
            await client.receive_messages(url, wait_time=20)
        # 5 s of the client's own, plus the poll's read timeout (its 20 s wait + 10 s)
        assert trio.current_time() - start == pytest.approx(35)


async def test_without_call_timeout_only_the_attempts_bound_a_call(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    url = (await fake_sqs.call("CreateQueue", {"QueueName": "stalled-long"}))["QueueUrl"]
    fake_sqs.faults.stall("SendMessage", times=3)
    retry = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
    async with open_fake_client(fake_sqs, retry=retry, call_timeout=None) as client:
        start = trio.current_time()
        with pytest.raises(TransportError):
            await client.send_message(url, "x")
        assert trio.current_time() - start == pytest.approx(90)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "5", True])
async def test_call_timeout_must_be_a_positive_number(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="call_timeout"):
        async with trio_sqs.open_client(
            region="us-east-1",
            endpoint_url="http://127.0.0.1:1",
            aws_access_key_id="a",
            aws_secret_access_key="b",
            call_timeout=bad,
        ):
            pass  # pragma: no cover


# -- which transport: ours, or httpx's when a proxy applies ----------------------------------------


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def _transport_of(endpoint: str) -> tuple[Any, httpx.AsyncBaseTransport, list[str]]:
    """What open_client chose: the direct transport (or None), httpx's default transport, and
    the URL patterns httpx mounted a proxy transport on."""
    async with trio_sqs.open_client(
        region="us-east-1", endpoint_url=endpoint, aws_access_key_id="a", aws_secret_access_key="b"
    ) as client:
        mounts = [str(pattern.pattern) for pattern in client._http._mounts]
        return client._direct, client._http._transport, mounts


async def test_our_transport_by_default(no_proxies: pytest.MonkeyPatch) -> None:
    direct, transport, mounts = await _transport_of("http://127.0.0.1:9324")
    assert isinstance(direct, TrioTransport) and transport is direct and mounts == []


@pytest.mark.parametrize(
    ("variable", "endpoint"),
    [
        ("HTTPS_PROXY", "https://sqs.us-east-1.amazonaws.com"),
        ("https_proxy", "https://sqs.us-east-1.amazonaws.com"),
        ("HTTP_PROXY", "http://sqs.local:9324"),
        ("ALL_PROXY", "https://sqs.us-east-1.amazonaws.com"),
    ],
)
async def test_a_proxy_for_the_endpoint_goes_through_httpx_and_is_logged(
    no_proxies: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, endpoint: str
) -> None:
    no_proxies.setenv(variable, "http://user:secret@proxy.corp:3128")
    caplog.set_level(logging.INFO, logger="trio_sqs.client")
    direct, transport, mounts = await _transport_of(endpoint)
    assert direct is None and not isinstance(transport, TrioTransport)
    assert mounts  # httpx read the same variable: it routes through the proxy
    [record] = [r for r in caplog.records if "proxy" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "proxy.corp:3128" in record.getMessage() and endpoint in record.getMessage()
    assert "secret" not in record.getMessage()  # credentials of the proxy never logged


@pytest.mark.parametrize(
    "no_proxy", ["sqs.us-east-1.amazonaws.com", ".amazonaws.com", "amazonaws.com", "*"]
)
async def test_no_proxy_excluding_the_endpoint_keeps_our_transport(
    no_proxies: pytest.MonkeyPatch, no_proxy: str
) -> None:
    no_proxies.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    no_proxies.setenv("NO_PROXY", no_proxy)
    direct, _, _ = await _transport_of("https://sqs.us-east-1.amazonaws.com")
    assert isinstance(direct, TrioTransport)


def test_a_proxy_for_the_other_scheme_does_not_apply(no_proxies: pytest.MonkeyPatch) -> None:
    no_proxies.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    assert proxy_for("https://sqs.us-east-1.amazonaws.com") is None
    assert proxy_for("http://sqs.us-east-1.amazonaws.com") == "http://proxy.corp:3128"


async def test_a_transport_of_ones_own_is_used_as_given(
    no_proxies: pytest.MonkeyPatch, fake_sqs: FakeSQS
) -> None:
    no_proxies.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    transport = fake_sqs.transport()
    async with trio_sqs.open_client(
        region="us-east-1",
        endpoint_url="http://sqs.local",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        transport=transport,
    ) as client:
        assert client._direct is None and client._http._transport is transport


# -- the response parser ---------------------------------------------------------------------------


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_the_parser_can_be_forced_from_the_environment(
    no_proxies: pytest.MonkeyPatch, parser: str
) -> None:
    no_proxies.setenv("TRIO_SQS_HTTP_PARSER", parser)
    direct, _, _ = await _transport_of("http://127.0.0.1:9324")
    assert direct.parser == parser


async def test_an_unknown_parser_in_the_environment_is_a_configuration_error(
    no_proxies: pytest.MonkeyPatch,
) -> None:
    no_proxies.setenv("TRIO_SQS_HTTP_PARSER", "llhttp")
    with pytest.raises(ConfigurationError, match="TRIO_SQS_HTTP_PARSER must be h11 or httptools"):
        await _transport_of("http://127.0.0.1:9324")


def test_httptools_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from trio_sqs import _transport

    monkeypatch.setattr(_transport, "_HTTPTOOLS", None)
    monkeypatch.setitem(sys.modules, "httptools", None)  # import fails
    with pytest.raises(ValueError, match=r"pip install 'trio-sqs\[speed\]'"):
        TrioTransport(parser="httptools")
    monkeypatch.delenv("TRIO_SQS_HTTP_PARSER", raising=False)
    assert _transport.default_parser() == "h11"


async def test_call_timeout_bounds_a_call_on_our_transport_over_a_real_socket(
    nursery: trio.Nursery, no_proxies: pytest.MonkeyPatch
) -> None:
    """The direct path has no cancel scope around the call: each wait (the connection's phases,
    the backoff) is bounded by the call's deadline instead; the connection cut short is closed."""
    from trio_sqs.testing import serve_fake_sqs

    fake = FakeSQS()
    endpoint = await nursery.start(serve_fake_sqs, fake)
    url = (await fake.call("CreateQueue", {"QueueName": "stall-direct"}))["QueueUrl"]
    fake.faults.stall("SendMessage", times=10)
    async with trio_sqs.open_client(
        region=fake.region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        call_timeout=0.3,
    ) as client:
        assert client._direct is not None
        start = trio.current_time()
        with pytest.raises(TransportError, match=r"SendMessage did not complete within 0\.3 s"):
            await client.send_message(url, "x")
        assert trio.current_time() - start >= 0.3
        assert client._direct.open_connections == 0  # the stalled connection was closed
        fake.faults.clear()
        await client.send_message(url, "after")  # the client is still usable


# -- a client of the user's own ---------------------------------------------------------------------


async def test_an_http_client_of_ones_own_is_used_with_the_fast_signing_and_parsing(
    autojump_clock: trio.testing.MockClock,
    fake_sqs: FakeSQS,
    no_proxies: pytest.MonkeyPatch,
) -> None:
    """Event hooks (or proxies, mounts, certificates) of the user's client apply; trio_sqs still
    signs and parses, and leaves the client open."""
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers["x-amz-target"].removeprefix("AmazonSQS."))

    fast_built: list[str] = []
    real = SQSProtocol.build_request_fast

    def spy(self: SQSProtocol, operation: str, *args: Any) -> Any:
        request = real(self, operation, *args)
        if request is not None:
            fast_built.append(operation)
        return request

    no_proxies.setattr(SQSProtocol, "build_request_fast", spy)
    http = httpx.AsyncClient(transport=fake_sqs.transport(), event_hooks={"request": [hook]})
    fake_sqs.verify_signatures = True
    async with trio_sqs.open_client(
        region=fake_sqs.region,
        endpoint_url=fake_sqs.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_fips=False,
        use_dualstack=False,
        http_client=http,
    ) as client:
        assert client._direct is None and client._http is http
        fast_built.clear()  # (the signer check at open builds one)
        url = await client.create_queue("own-http-client")
        await client.send_message(url, "hello")
        [message] = (await client.receive_messages(url, wait_time=0)).messages
        await client.delete_message_batch(url, [message.receipt_handle])
    assert message.body == "hello"
    assert seen == ["CreateQueue", "SendMessage", "ReceiveMessage", "DeleteMessageBatch"]
    # (send_message validates its parameters: botocore's validating serializer, our signer)
    assert fast_built == ["ReceiveMessage", "DeleteMessageBatch"]
    assert not http.is_closed  # the caller's to close
    await http.aclose()


@pytest.mark.parametrize("bad", ["http://x", object()])
async def test_http_client_must_be_an_httpx_async_client(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"http_client must be an httpx\.AsyncClient"):
        async with trio_sqs.open_client(region="us-east-1", http_client=bad):
            pass  # pragma: no cover


async def test_http_client_and_transport_are_exclusive(fake_sqs: FakeSQS) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ConfigurationError, match="not both"):
            async with trio_sqs.open_client(
                region="us-east-1", http_client=http, transport=fake_sqs.transport()
            ):
                pass  # pragma: no cover
