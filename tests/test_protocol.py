"""Unit tests of the sans-IO protocol layer and the message digests. No server, no event loop."""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sqs import (
    AccessDenied,
    ClockSkewError,
    ConfigurationError,
    CorruptMessage,
    InvalidReceiptHandle,
    Message,
    MessageAttributeValue,
    MessageCorruptError,
    QueueDoesNotExist,
    ServiceError,
    Throttled,
)
from trio_sqs._message import md5_of_message_attributes, message_from_wire
from trio_sqs._protocol import (
    ServiceData,
    SQSProtocol,
    check_region,
    is_retryable_error,
    load_service_data,
    resolve_endpoint,
)

from .conftest import set_signing_clock

ENDPOINT = "http://127.0.0.1:9324"
QUEUE_URL = f"{ENDPOINT}/123456789012/orders"
KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken//////////"
FROZEN = datetime.datetime(2024, 5, 17, 12, 34, 56)  # naive UTC, as botocore uses it

# One realistic parameter set per operation the client layer uses.
OPERATIONS: dict[str, dict[str, Any]] = {
    "ReceiveMessage": {
        "QueueUrl": QUEUE_URL,
        "MaxNumberOfMessages": 10,
        "WaitTimeSeconds": 20,
        "VisibilityTimeout": 30,
        "MessageSystemAttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
    },
    "DeleteMessage": {"QueueUrl": QUEUE_URL, "ReceiptHandle": "AQEB+handle/=="},
    "DeleteMessageBatch": {
        "QueueUrl": QUEUE_URL,
        "Entries": [{"Id": "0", "ReceiptHandle": "h0"}, {"Id": "1", "ReceiptHandle": "h1"}],
    },
    "ChangeMessageVisibility": {
        "QueueUrl": QUEUE_URL,
        "ReceiptHandle": "h0",
        "VisibilityTimeout": 0,
    },
    "ChangeMessageVisibilityBatch": {
        "QueueUrl": QUEUE_URL,
        "Entries": [
            {"Id": "a", "ReceiptHandle": "h0", "VisibilityTimeout": 60},
            {"Id": "b", "ReceiptHandle": "h1", "VisibilityTimeout": 0},
        ],
    },
    "SendMessage": {
        "QueueUrl": QUEUE_URL,
        "MessageBody": "h\u00e9llo \u2713 {json}",
        "DelaySeconds": 5,
        "MessageAttributes": {
            "kind": {"DataType": "String", "StringValue": "order"},
            "count": {"DataType": "Number", "StringValue": "42"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffraw"},
        },
    },
    "SendMessageBatch": {
        "QueueUrl": QUEUE_URL,
        "Entries": [
            {"Id": "0", "MessageBody": "one"},
            {
                "Id": "1",
                "MessageBody": "two",
                "MessageGroupId": "g",
                "MessageDeduplicationId": "d",
            },
        ],
    },
    "GetQueueUrl": {"QueueName": "orders"},
    "GetQueueAttributes": {"QueueUrl": QUEUE_URL, "AttributeNames": ["All"]},
    "CreateQueue": {
        "QueueName": "orders.fifo",
        "Attributes": {"FifoQueue": "true", "VisibilityTimeout": "30"},
        "tags": {"team": "payments"},
    },
    "DeleteQueue": {"QueueUrl": QUEUE_URL},
    "PurgeQueue": {"QueueUrl": QUEUE_URL},
    "ListQueues": {"QueueNamePrefix": "ord", "MaxResults": 1000},
}


def _json_expected(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body SQS expects: like the params, with blobs base64-encoded."""

    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    result: dict[str, Any] = convert(params)
    return result


@pytest.fixture(scope="module")
def data() -> ServiceData:
    return load_service_data()


@pytest.fixture
def protocol(data: ServiceData) -> SQSProtocol:
    return SQSProtocol(data, ENDPOINT, "us-east-1")


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime.datetime:
    set_signing_clock(monkeypatch, lambda: FROZEN)
    return FROZEN


# -- build_request ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_build_request_shape(protocol: SQSProtocol, operation: str) -> None:
    params = OPERATIONS[operation]
    request = protocol.build_request(operation, params, ReadOnlyCredentials(KEY_ID, SECRET, None))
    assert request.method == "POST"
    assert request.url == ENDPOINT + "/"
    assert request.headers["X-Amz-Target"] == f"AmazonSQS.{operation}"
    assert request.headers["Content-Type"] == "application/x-amz-json-1.0"
    assert json.loads(request.body) == _json_expected(params)
    assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["X-Amz-Date"])
    auth = request.headers["Authorization"]
    date = request.headers["X-Amz-Date"][:8]
    assert auth.startswith(
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{date}/us-east-1/sqs/aws4_request, "
    )
    signed = re.search(r"SignedHeaders=([^,]+)", auth)
    assert signed is not None
    assert {"content-type", "host", "x-amz-date", "x-amz-target"} <= set(signed.group(1).split(";"))
    assert re.search(r"Signature=[0-9a-f]{64}$", auth)
    assert "X-Amz-Security-Token" not in request.headers


def test_build_request_with_session_token_signs_the_token(
    protocol: SQSProtocol, frozen_clock: datetime.datetime
) -> None:
    params = OPERATIONS["GetQueueUrl"]
    with_token = protocol.build_request(
        "GetQueueUrl", params, ReadOnlyCredentials(KEY_ID, SECRET, TOKEN)
    )
    without = protocol.build_request(
        "GetQueueUrl", params, ReadOnlyCredentials(KEY_ID, SECRET, None)
    )
    assert with_token.headers["X-Amz-Security-Token"] == TOKEN
    assert "x-amz-security-token" in with_token.headers["Authorization"]
    assert with_token.headers["Authorization"] != without.headers["Authorization"]


def test_build_request_signs_with_the_current_time(
    protocol: SQSProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = ReadOnlyCredentials(KEY_ID, SECRET, None)
    set_signing_clock(monkeypatch, lambda: FROZEN)
    first = protocol.build_request("PurgeQueue", OPERATIONS["PurgeQueue"], creds)
    later = FROZEN + datetime.timedelta(seconds=1)
    set_signing_clock(monkeypatch, lambda: later)
    second = protocol.build_request("PurgeQueue", OPERATIONS["PurgeQueue"], creds)
    assert first.headers["X-Amz-Date"] == "20240517T123456Z"
    assert second.headers["X-Amz-Date"] == "20240517T123457Z"
    assert first.headers["Authorization"] != second.headers["Authorization"]


def test_build_request_validation(protocol: SQSProtocol) -> None:
    creds = ReadOnlyCredentials(KEY_ID, SECRET, None)
    with pytest.raises(ConfigurationError, match="ReceiveMessage") as info:
        protocol.build_request(
            "ReceiveMessage", {"QueueUrl": QUEUE_URL, "MaxNumberOfMessages": "ten"}, creds,
            validate=True,
        )  # fmt: skip
    assert info.value.code == "InvalidParameter"
    with pytest.raises(ConfigurationError, match="GetQueueUrl"):
        protocol.build_request("GetQueueUrl", {}, creds, validate=True)
    with pytest.raises(ConfigurationError, match="'NoSuchOperation'"):
        protocol.build_request("NoSuchOperation", {}, creds)


# -- signature equality with botocore's own client -----------------------------------------------


class _EmptyBody:
    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield b"{}"


class BotocoreCapture:
    """botocore's real client, with the network replaced by a recorder (a ``before-send`` hook)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.sent: list[AWSRequest] = []
        self.client = botocore.session.get_session().create_client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=ENDPOINT,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            aws_session_token=token,
        )
        self.client.meta.events.register("before-send.sqs.*", self._record)

    def _record(self, request: AWSRequest, **kwargs: Any) -> AWSResponse:
        self.sent.append(request)
        return AWSResponse(request.url, 200, {"x-amzn-RequestId": "fake"}, _EmptyBody())

    def send(self, operation: str, params: dict[str, Any]) -> AWSRequest:
        method = self.client.meta.method_to_api_mapping
        name = {api: py for py, api in method.items()}[operation]
        getattr(self.client, name)(**params)
        assert len(self.sent) == 1
        return self.sent.pop()


@pytest.fixture(scope="module", params=[None, TOKEN], ids=["keys", "session-token"])
def botocore_client(request: pytest.FixtureRequest) -> Iterator[BotocoreCapture]:
    capture = BotocoreCapture(request.param)
    yield capture
    capture.client.close()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_signature_equals_botocore_client(
    protocol: SQSProtocol,
    botocore_client: BotocoreCapture,
    frozen_clock: datetime.datetime,
    operation: str,
) -> None:
    params = OPERATIONS[operation]
    theirs = botocore_client.send(operation, params)
    token = botocore_client.token
    ours = protocol.build_request(operation, params, ReadOnlyCredentials(KEY_ID, SECRET, token))

    their_auth = _text(theirs.headers["Authorization"])
    assert f"Credential={KEY_ID}/20240517/us-east-1/sqs/aws4_request" in their_auth
    assert ours.headers["Authorization"] == their_auth
    assert ours.headers["X-Amz-Date"] == _text(theirs.headers["X-Amz-Date"]) == "20240517T123456Z"
    assert ours.body == theirs.body
    assert ours.url == theirs.url
    if token is None:
        assert "X-Amz-Security-Token" not in theirs.headers
        assert "X-Amz-Security-Token" not in ours.headers
    else:
        assert ours.headers["X-Amz-Security-Token"] == _text(theirs.headers["X-Amz-Security-Token"])


# -- endpoint resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "options", "expected"),
    [
        ("us-east-1", {}, "https://sqs.us-east-1.amazonaws.com"),
        ("eu-west-1", {}, "https://sqs.eu-west-1.amazonaws.com"),
        ("us-east-1", {"use_fips": True}, "https://sqs-fips.us-east-1.amazonaws.com"),
        ("us-east-1", {"use_dualstack": True}, "https://sqs.us-east-1.api.aws"),
        (
            "us-east-1",
            {"use_fips": True, "use_dualstack": True},
            "https://sqs-fips.us-east-1.api.aws",
        ),
        ("cn-north-1", {}, "https://sqs.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", {}, "https://sqs.us-gov-west-1.amazonaws.com"),
    ],
)
def test_resolve_endpoint(
    data: ServiceData, region: str, options: dict[str, bool], expected: str
) -> None:
    use_fips, use_dualstack = options.get("use_fips", False), options.get("use_dualstack", False)
    assert (
        resolve_endpoint(data, region, use_fips=use_fips, use_dualstack=use_dualstack) == expected
    )
    # botocore's own client resolves the same URL.
    config = Config(use_fips_endpoint=use_fips, use_dualstack_endpoint=use_dualstack)
    client = botocore.session.get_session().create_client(
        "sqs",
        region_name=region,
        config=config,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    try:
        prepared: list[AWSRequest] = []

        def record(request: AWSRequest, **kwargs: Any) -> AWSResponse:
            prepared.append(request)
            return AWSResponse(request.url, 200, {}, _EmptyBody())

        client.meta.events.register("before-send.sqs.*", record)
        client.list_queues()
        assert prepared[0].url.rstrip("/") == expected
    finally:
        client.close()


def test_resolve_explicit_endpoint(data: ServiceData) -> None:
    assert resolve_endpoint(data, "us-east-1", endpoint_url=ENDPOINT + "/") == ENDPOINT
    assert (
        resolve_endpoint(data, "local", endpoint_url="https://sqs.internal:8443")
        == "https://sqs.internal:8443"
    )


def test_resolve_endpoint_rejects_fips_with_explicit_url(data: ServiceData) -> None:
    with pytest.raises(ConfigurationError, match="FIPS") as info:
        resolve_endpoint(data, "us-east-1", use_fips=True, endpoint_url=ENDPOINT)
    assert "use_fips=True" in str(info.value)
    assert info.value.code == "InvalidOption"


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2", "cn-north-1"])
def test_check_region_accepts_aws_regions(region: str) -> None:
    check_region(region, custom_endpoint=False)
    check_region(region, custom_endpoint=True)


@pytest.mark.parametrize("region", ["local", "elasticmq", "my-region"])
def test_check_region_accepts_labels_only_with_custom_endpoint(region: str) -> None:
    check_region(region, custom_endpoint=True)
    with pytest.raises(ConfigurationError, match=f"region='{region}'.*AWS region name"):
        check_region(region, custom_endpoint=False)


@pytest.mark.parametrize("region", ["", "not a region!", "US-EAST-1", "-x", "a/b"])
def test_check_region_rejects_garbage(region: str) -> None:
    with pytest.raises(ConfigurationError, match="region"):
        check_region(region, custom_endpoint=True)


# -- parse_response --------------------------------------------------------------------------------


def test_parse_success(protocol: SQSProtocol) -> None:
    body = json.dumps(
        {
            "Messages": [
                {
                    "MessageId": "m1",
                    "ReceiptHandle": "h1",
                    "Body": "hi",
                    "MD5OfBody": hashlib.md5(b"hi").hexdigest(),
                    "MessageAttributes": {
                        "b": {
                            "DataType": "Binary",
                            "BinaryValue": base64.b64encode(b"\x01").decode(),
                        }
                    },
                }
            ]
        }
    ).encode()
    parsed = protocol.parse_response("ReceiveMessage", 200, {"x-amzn-RequestId": "req-1"}, body)
    assert "ResponseMetadata" not in parsed
    [message] = parsed["Messages"]
    assert message["Body"] == "hi"
    assert message["MessageAttributes"]["b"]["BinaryValue"] == b"\x01"  # blobs are decoded
    assert protocol.parse_response("GetQueueUrl", 200, {}, b'{"QueueUrl": "u"}') == {
        "QueueUrl": "u"
    }
    assert protocol.parse_response("DeleteMessage", 200, {}, b"") == {}


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"OK", b"[1, 2]"])
def test_parse_success_status_with_non_json_body(protocol: SQSProtocol, body: bytes) -> None:
    with pytest.raises(ValueError, match="not JSON"):
        protocol.parse_response("GetQueueUrl", 200, {}, body)


def _error_body(type_name: str, message: str) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.sqs#{type_name}", "message": message}).encode()


ERROR_CASES = [
    pytest.param(
        400,
        {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"},
        _error_body("QueueDoesNotExist", "The specified queue does not exist."),
        QueueDoesNotExist,
        "AWS.SimpleQueueService.NonExistentQueue",
        id="queue-missing-query-compatible",
    ),
    pytest.param(
        400,
        {},
        _error_body("QueueDoesNotExist", "The specified queue does not exist."),
        QueueDoesNotExist,
        "QueueDoesNotExist",
        id="queue-missing-json",
    ),
    pytest.param(
        403,
        {},
        json.dumps(
            {"__type": "com.amazon.coral.service#AccessDeniedException", "Message": "denied"}
        ).encode(),
        AccessDenied,
        "AccessDeniedException",
        id="access-denied",
    ),
    pytest.param(
        400,
        {},
        json.dumps(
            {"__type": "com.amazon.coral.service#UnrecognizedClientException", "message": "key?"}
        ).encode(),
        AccessDenied,
        "UnrecognizedClientException",
        id="unknown-key",
    ),
    pytest.param(
        400,
        {"x-amzn-query-error": "Throttling;Sender"},
        _error_body("ThrottlingException", "Rate exceeded"),
        Throttled,
        "Throttling",
        id="throttling-query-compatible",
    ),
    pytest.param(
        400,
        {},
        _error_body("ThrottlingException", "Rate exceeded"),
        Throttled,
        "ThrottlingException",
        id="throttling-json",
    ),
    pytest.param(
        400,
        {"x-amzn-query-error": "ReceiptHandleIsInvalid;Sender"},
        _error_body("ReceiptHandleIsInvalid", "The input receipt handle is invalid."),
        InvalidReceiptHandle,
        "ReceiptHandleIsInvalid",
        id="receipt-handle",
    ),
    pytest.param(
        400,
        {"x-amzn-query-error": "InvalidParameterValue;Sender"},
        _error_body("InvalidParameterValue", "bad value"),
        ServiceError,
        "InvalidParameterValue",
        id="generic-client-error",
    ),
    pytest.param(
        500,
        {},
        _error_body("InternalError", "boom"),
        ServiceError,
        "InternalError",
        id="generic-server-error",
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "cls", "code"), ERROR_CASES)
def test_parse_error_mapping(
    protocol: SQSProtocol,
    status: int,
    headers: dict[str, str],
    body: bytes,
    cls: type[ServiceError],
    code: str,
) -> None:
    with pytest.raises(ServiceError) as info:
        protocol.parse_response(
            "GetQueueUrl", status, {"x-amzn-RequestId": "req-42", **headers}, body
        )
    error = info.value
    assert type(error) is cls
    assert error.code == code
    assert error.message == json.loads(body).get("message", json.loads(body).get("Message"))
    assert error.status_code == status
    assert error.request_id == "req-42"
    text = str(error)
    assert error.message in text and "req-42" in text and f"HTTP {status}" in text
    if code != cls.__name__:  # a code equal to the class name is not repeated
        assert text.startswith(f"{code}: ")


def test_parse_error_without_json_body(protocol: SQSProtocol) -> None:
    with pytest.raises(ServiceError) as info:
        protocol.parse_response("GetQueueUrl", 503, {}, b"Service Unavailable")
    assert type(info.value) is ServiceError
    assert info.value.status_code == 503
    assert info.value.request_id is None
    assert is_retryable_error(info.value)


@pytest.mark.parametrize(
    ("status", "type_name", "message"),
    [
        (
            400,
            "RequestTimeTooSkewed",
            "The difference between the request time and now is too large.",
        ),
        (
            403,
            "InvalidSignatureException",
            "Signature expired: 20240517T120000Z is now earlier than 20240517T121000Z "
            "(20240517T121500Z - 5 min.)",
        ),
        (
            403,
            "InvalidSignatureException",
            "Signature not yet current: 20240517T123000Z is still later than 20240517T121500Z",
        ),
    ],
)
def test_parse_clock_skew(protocol: SQSProtocol, status: int, type_name: str, message: str) -> None:
    server_time = time.time() + 900
    headers = {
        "x-amzn-RequestId": "req-skew",
        "Date": email.utils.formatdate(server_time, usegmt=True),
    }
    with pytest.raises(ClockSkewError) as info:
        protocol.parse_response("GetQueueUrl", status, headers, _error_body(type_name, message))
    error = info.value
    assert error.code == type_name
    assert error.status_code == status
    assert error.request_id == "req-skew"
    assert error.skew is not None and 898 < error.skew <= 901
    named = re.search(r"clock is ([+-]\d+\.\d) s from ours", str(error))
    assert named is not None and abs(float(named.group(1)) - 900) < 2
    assert message in error.message
    assert not is_retryable_error(error)


def test_parse_clock_skew_without_date(protocol: SQSProtocol) -> None:
    with pytest.raises(ClockSkewError) as info:
        protocol.parse_response(
            "GetQueueUrl", 400, {}, _error_body("RequestTimeTooSkewed", "too skewed")
        )
    assert info.value.skew is None
    assert "too skewed" in info.value.message


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (Throttled("slow down", code="Throttling", status_code=400), True),
        (Throttled("slow down", code="ThrottlingException", status_code=429), True),
        (ServiceError("boom", code="InternalError", status_code=500), True),
        (ServiceError("unavailable", code="ServiceUnavailable", status_code=503), True),
        (ServiceError("gateway", code="502", status_code=502), True),
        (ServiceError("timeout", code="RequestTimeout", status_code=400), True),
        (ServiceError("bad", code="InvalidParameterValue", status_code=400), False),
        (ServiceError("no status", code="Weird"), False),
        (AccessDenied("no", code="AccessDenied", status_code=403), False),
        (AccessDenied("odd", code="AccessDenied", status_code=500), False),
        (QueueDoesNotExist("gone", code="QueueDoesNotExist", status_code=400), False),
        (InvalidReceiptHandle("old", code="ReceiptHandleIsInvalid", status_code=400), False),
        (ClockSkewError("skew", code="RequestTimeTooSkewed", status_code=400), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, ServiceError) else str(v),
)
def test_is_retryable_error(error: ServiceError, retryable: bool) -> None:
    assert is_retryable_error(error) is retryable


# -- MD5 checks ------------------------------------------------------------------------------------


def reference_md5_of_attributes(attributes: dict[str, dict[str, Any]]) -> str:
    """SQS's attribute digest, written from the AWS documentation independently of _message.py.

    For each attribute in name order: name, data type (each as 4-byte big-endian length + UTF-8),
    a transport byte (1 string/number, 2 binary), then the value, length-prefixed.
    """

    def field(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw

    digest = hashlib.md5()
    for name in sorted(attributes, key=lambda n: n.encode("utf-8")):
        attr = attributes[name]
        digest.update(field(name.encode("utf-8")))
        digest.update(field(attr["DataType"].encode("utf-8")))
        if "BinaryValue" in attr:
            digest.update(b"\x02" + field(attr["BinaryValue"]))
        else:
            digest.update(b"\x01" + field(attr["StringValue"].encode("utf-8")))
    return digest.hexdigest()


WIRE_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "trace": {"DataType": "String", "StringValue": "r\u00e9sum\u00e9 \u2603"},
    "count": {"DataType": "Number", "StringValue": "-12.5e3"},
    "shard": {"DataType": "Number.int", "StringValue": "7"},
    "thumb": {"DataType": "Binary", "BinaryValue": b"\x89PNG\x00\xff"},
    "avatar": {"DataType": "Binary.gif", "BinaryValue": b""},
}


def _wire_message(body: str = "payload \u2713", **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "MessageId": "0d8a2c3c-0000-4000-8000-000000000001",
        "ReceiptHandle": "AQEB-receipt",
        "Body": body,
        "MD5OfBody": hashlib.md5(body.encode("utf-8")).hexdigest(),
        "MessageAttributes": {k: dict(v) for k, v in WIRE_ATTRIBUTES.items()},
        "MD5OfMessageAttributes": reference_md5_of_attributes(WIRE_ATTRIBUTES),
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1715949296000"},
    }
    raw.update(overrides)
    return raw


def test_message_from_wire_valid() -> None:
    raw = _wire_message()
    message = message_from_wire(raw, QUEUE_URL)
    assert isinstance(message, Message)
    assert message.body == "payload \u2713"
    assert message.queue_url == QUEUE_URL
    assert message.receive_count == 3
    assert message.sent_at == datetime.datetime(
        2024, 5, 17, 12, 34, 56, tzinfo=datetime.timezone.utc
    )
    assert message.message_attributes["thumb"] == MessageAttributeValue.binary(b"\x89PNG\x00\xff")
    assert message.message_attributes["count"] == MessageAttributeValue.number("-12.5e3")
    assert message.message_attributes["trace"].string_value == "r\u00e9sum\u00e9 \u2603"
    assert message.md5_of_message_attributes == raw["MD5OfMessageAttributes"]
    assert "payload" not in repr(message)


def test_message_from_wire_without_attributes() -> None:
    raw = _wire_message(MessageAttributes=None, MD5OfMessageAttributes=None, Attributes=None)
    message = message_from_wire(raw, QUEUE_URL)
    assert isinstance(message, Message)
    assert dict(message.message_attributes) == {}
    assert message.receive_count == 1


def test_message_from_wire_tampered_body() -> None:
    raw = _wire_message()
    raw["Body"] = "payload \u2713!"  # the digest is of the original body
    result = message_from_wire(raw, QUEUE_URL)
    assert isinstance(result, CorruptMessage)
    assert result.message_id == raw["MessageId"]
    assert result.receipt_handle == "AQEB-receipt"
    assert isinstance(result.error, MessageCorruptError)
    assert "body" in str(result.error)
    assert result.error.receipt_handle == "AQEB-receipt"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: a["trace"].update(StringValue="resume"),
        lambda a: a["count"].update(DataType="String"),
        lambda a: a["thumb"].update(BinaryValue=b"\x89PNG\x00\xfe"),
        lambda a: a.update(extra={"DataType": "String", "StringValue": "x"}),
        lambda a: a.pop("avatar"),
    ],
    ids=["string-value", "data-type", "binary-value", "added", "removed"],
)
def test_message_from_wire_tampered_attributes(tamper: Any) -> None:
    raw = _wire_message()
    tamper(raw["MessageAttributes"])
    result = message_from_wire(raw, QUEUE_URL)
    assert isinstance(result, CorruptMessage)
    assert "attributes" in str(result.error)


def test_message_from_wire_attributes_without_digest() -> None:
    raw = _wire_message(MD5OfMessageAttributes=None)
    assert isinstance(message_from_wire(raw, QUEUE_URL), CorruptMessage)


def test_md5_known_answer() -> None:
    # A single String attribute, spelled out byte by byte.
    raw = b"\x00\x00\x00\x04name" + b"\x00\x00\x00\x06String" + b"\x01" + b"\x00\x00\x00\x05value"
    assert md5_of_message_attributes({"name": MessageAttributeValue.string("value")}) == (
        hashlib.md5(raw).hexdigest()
    )


_NAME = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.",
    min_size=1,
    max_size=30,
)
_SUFFIX = st.one_of(st.just(""), _NAME.map(lambda s: "." + s))
_STRING_ATTR = st.builds(
    lambda suffix, value: {"DataType": "String" + suffix, "StringValue": value},
    _SUFFIX,
    st.text(max_size=50),
)
_NUMBER_ATTR = st.builds(
    lambda suffix, value: {"DataType": "Number" + suffix, "StringValue": str(value)},
    _SUFFIX,
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
)
_BINARY_ATTR = st.builds(
    lambda suffix, value: {"DataType": "Binary" + suffix, "BinaryValue": value},
    _SUFFIX,
    st.binary(max_size=50),
)
_ATTRIBUTES = st.dictionaries(
    _NAME, st.one_of(_STRING_ATTR, _NUMBER_ATTR, _BINARY_ATTR), min_size=1, max_size=10
)


def _typed(attributes: dict[str, dict[str, Any]]) -> dict[str, MessageAttributeValue]:
    return {
        name: MessageAttributeValue(
            a["DataType"], string_value=a.get("StringValue"), binary_value=a.get("BinaryValue")
        )
        for name, a in attributes.items()
    }


# Derandomized and without the example database: the suite stays deterministic and writes nothing.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100)


@PROPERTY
@given(_ATTRIBUTES)
def test_md5_of_message_attributes_matches_reference(attributes: dict[str, Any]) -> None:
    assert md5_of_message_attributes(_typed(attributes)) == reference_md5_of_attributes(attributes)


@PROPERTY
@given(_ATTRIBUTES, st.text(max_size=100))
def test_message_from_wire_accepts_every_correct_digest(
    attributes: dict[str, Any], body: str
) -> None:
    raw = _wire_message(
        body,
        MessageAttributes=attributes,
        MD5OfMessageAttributes=reference_md5_of_attributes(attributes),
    )
    message = message_from_wire(raw, QUEUE_URL)
    assert isinstance(message, Message)
    assert dict(message.message_attributes) == _typed(attributes)
    assert message.body == body
