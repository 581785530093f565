"""The fast signer and request builder (issue 12) against botocore's serializer and SigV4Auth.

The property tests build the same request both ways, botocore's clock frozen at the time the fast
path is given, and require the method, URL, every header (names, values, order) and the body to be
identical.
"""

from __future__ import annotations

import datetime
import functools
import hmac
from hashlib import sha256
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_sqs import _sigv4
from trio_sqs._protocol import (
    FAST_OPERATIONS,
    HTTPRequest,
    ServiceData,
    SQSProtocol,
    load_service_data,
    resolve_endpoint,
)
from trio_sqs._sigv4 import KEY_CACHE_SIZE, Signer

from .conftest import examples, set_signing_clock

SETTINGS = settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@functools.lru_cache(maxsize=1)
def _data() -> ServiceData:
    return load_service_data()


@functools.cache
def _resolved(region: str, fips: bool, dualstack: bool) -> str:
    return resolve_endpoint(_data(), region, use_fips=fips, use_dualstack=dualstack)


# -- strategies ------------------------------------------------------------------------------------

REGIONS = [
    "us-east-1",
    "eu-west-1",
    "ap-southeast-3",
    "cn-north-1",
    "cn-northwest-1",
    "us-gov-west-1",
    "us-gov-east-1",
    "il-central-1",
]

HOSTS = [
    "localhost",
    "127.0.0.1",
    "Elasticmq.Example.COM",
    "vpce-0a1b2c3d4e5f-abcdefgh.sqs.us-east-1.vpce.amazonaws.com",
    "vpce-0a1b2c3d4e5f-abcdefgh-us-east-1a.sqs.us-east-1.vpce.amazonaws.com",
    "sqs.cn-north-1.amazonaws.com.cn",
    "sqs-fips.us-gov-west-1.amazonaws.com",
    "[::1]",
    "[2001:DB8::1]",
    "[fe80::1%25eth0]",
    "[::ffff:127.0.0.1]",
]

_segment = st.one_of(
    st.sampled_from(["", ".", "..", "~user", "a b", "%41", "é", "☃", "q;x", "a+b", "sqs"]),
    st.text(
        alphabet=st.characters(codec="utf-8", blacklist_characters="/?#"),
        max_size=6,
    ),
)


@st.composite
def custom_endpoints(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(
        st.one_of(
            st.sampled_from(HOSTS),
            st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
        )
    )
    port = draw(st.one_of(st.none(), st.sampled_from([80, 443, 9324, 4566]), st.integers(1, 65535)))
    path = "/".join(draw(st.lists(_segment, max_size=4)))
    url = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    if path:
        url += "/" + path
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
        url += "?" + draw(st.sampled_from(["b=2&a=1", "x", "a=1&a=0&c=%20"]))
    return url


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[str, str]:
    """(endpoint URL, signing region)."""
    kind = draw(st.sampled_from(["aws", "custom", "custom-resolved"]))
    region = draw(st.sampled_from(REGIONS))
    if kind == "aws":
        fips = draw(st.booleans()) and region.startswith(("us-", "ca-"))
        dualstack = draw(st.booleans())
        return _resolved(region, fips, dualstack), region
    url = draw(custom_endpoints())
    if kind == "custom-resolved" and "?" not in url:
        try:
            url = resolve_endpoint(_data(), region, endpoint_url=url)
        except Exception:
            pass
    return url, draw(st.one_of(st.just(region), st.sampled_from(["local", "elasticmq"])))


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_ascii_token = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=60
)
credentials = st.builds(
    ReadOnlyCredentials,
    st.from_regex(r"(AKIA|ASIA)[A-Z0-9]{16}", fullmatch=True),
    st.one_of(st.from_regex(r"[A-Za-z0-9/+]{40}", fullmatch=True), _text),
    st.one_of(
        st.none(),
        st.just(""),
        _ascii_token,
        st.sampled_from(["  lead and trail  ", "in  ner\ttabs", "IQoJb3JpZ2luX2VjE//////////"]),
    ),
)

_BOUNDARIES = [
    datetime.datetime(2023, 12, 31, 23, 59, 59, 999999),
    datetime.datetime(2024, 1, 1, 0, 0, 0),
    datetime.datetime(2024, 2, 28, 23, 59, 59),
    datetime.datetime(2024, 2, 29, 0, 0, 0),
    datetime.datetime(2024, 2, 29, 23, 59, 59),
    datetime.datetime(2024, 3, 1, 0, 0, 0),
    datetime.datetime(2099, 12, 31, 23, 59, 59),
    datetime.datetime(2100, 1, 1, 0, 0, 0),
]
times = st.one_of(
    st.sampled_from(_BOUNDARIES),
    st.datetimes(datetime.datetime(2000, 1, 1), datetime.datetime(2199, 12, 31)),
)

_id = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=80)
_handle = st.one_of(_text, st.text(alphabet="AQEBa+/=", min_size=1, max_size=400))
_queue_url = st.one_of(
    st.just("https://sqs.us-east-1.amazonaws.com/123456789012/q"),
    st.builds(lambda t: "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/" + t, _text),
    _text,
)


def _ordered(required: dict[str, Any], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """A params dict with the optional members present or not, members in any order."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        items = [(k, draw(v)) for k, v in required.items()]
        for key, strategy in optional.items():
            if draw(st.booleans()):
                items.append((key, draw(strategy)))
        order = draw(st.permutations(range(len(items))))
        return {items[i][0]: items[i][1] for i in order}

    return build()


_int = st.one_of(st.integers(0, 43200), st.integers(-(2**63), 2**63))
_names = st.lists(st.one_of(st.sampled_from(["All", "SentTimestamp", ".*"]), _text), max_size=4)
_attr_value = st.one_of(
    st.fixed_dictionaries({"DataType": st.just("String"), "StringValue": _text}),
    st.fixed_dictionaries(
        {"StringValue": _text, "DataType": st.sampled_from(["Number", "String.x"])}
    ),
    st.fixed_dictionaries(
        {"DataType": st.just("String"), "StringListValues": st.lists(_text, max_size=2)}
    ),
)

OPERATION_PARAMS: dict[str, Any] = {
    "ReceiveMessage": _ordered(
        {"QueueUrl": _queue_url},
        {
            "MaxNumberOfMessages": _int,
            "WaitTimeSeconds": _int,
            "VisibilityTimeout": _int,
            "AttributeNames": _names,
            "MessageSystemAttributeNames": _names,
            "MessageAttributeNames": _names,
            "ReceiveRequestAttemptId": _text,
        },
    ),
    "DeleteMessageBatch": _ordered(
        {
            "QueueUrl": _queue_url,
            "Entries": st.lists(
                st.fixed_dictionaries({"Id": _id, "ReceiptHandle": _handle}), max_size=10
            ),
        },
        {},
    ),
    "ChangeMessageVisibilityBatch": _ordered(
        {
            "QueueUrl": _queue_url,
            "Entries": st.lists(
                st.fixed_dictionaries(
                    {"Id": _id, "ReceiptHandle": _handle, "VisibilityTimeout": _int}
                ),
                max_size=10,
            ),
        },
        {},
    ),
    "ChangeMessageVisibility": _ordered(
        {"QueueUrl": _queue_url, "ReceiptHandle": _handle, "VisibilityTimeout": _int}, {}
    ),
    "DeleteMessage": _ordered({"QueueUrl": _queue_url, "ReceiptHandle": _handle}, {}),
    "SendMessage": _ordered(
        {"QueueUrl": _queue_url, "MessageBody": _text},
        {
            "DelaySeconds": _int,
            "MessageAttributes": st.dictionaries(_text, _attr_value, max_size=3),
            "MessageGroupId": _id,
            "MessageDeduplicationId": _id,
        },
    ),
}
assert set(OPERATION_PARAMS) == FAST_OPERATIONS

operations = st.sampled_from(sorted(OPERATION_PARAMS)).flatmap(
    lambda op: st.tuples(st.just(op), OPERATION_PARAMS[op])
)


def _botocore(
    protocol: SQSProtocol,
    operation: str,
    params: Any,
    creds: Any,
    now: datetime.datetime,
    **kw: Any,
) -> HTTPRequest:
    with pytest.MonkeyPatch.context() as mp:
        set_signing_clock(mp, lambda: now)
        return protocol.build_request_botocore(operation, params, creds, **kw)


# -- the property tests ----------------------------------------------------------------------------


@SETTINGS
@given(endpoint=endpoints(), creds=credentials, now=times, call=operations)
@example(
    endpoint=("http://[::1]:9324/pre/../fix//", "local"),
    creds=ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "t  o k"),
    now=datetime.datetime(2024, 12, 31, 23, 59, 59),
    call=(
        "DeleteMessageBatch",
        {"QueueUrl": "q☃", "Entries": [{"Id": "0", "ReceiptHandle": 'r\U0001f600"\\'}]},
    ),
)
def test_fast_request_is_botocores(
    endpoint: tuple[str, str], creds: Any, now: datetime.datetime, call: tuple[str, Any]
) -> None:
    url, region = endpoint
    operation, params = call
    protocol = SQSProtocol(_data(), url, region, fast=True)
    fast = protocol.build_request_fast(operation, params, creds, now)
    assert fast is not None, "plain params must take the fast path"
    assert protocol.build_request(operation, params, creds, now=now) == fast
    expected = _botocore(protocol, operation, params, creds, now)
    assert fast.method == expected.method
    assert fast.url == expected.url
    assert list(fast.headers.items()) == list(expected.headers.items())
    assert fast.body == expected.body


_header_names = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "content-type",
            "X-Amz-Target",
            "Host",
            "host",
            "Date",
            "X-Amz-Date",
            "x-amz-date",
            "Authorization",
            "X-Amz-Security-Token",
            "X-Amz-Content-SHA256",
            "User-Agent",
            "traceparent",
            "X-Amzn-Trace-Id",
            "Connection",
            "Expect",
            "x-amzn-query-mode",
            "X-Custom",
        ]
    ),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
)
_header_values = st.one_of(
    st.sampled_from(["", " ", "a  b", "\tx\t y ", "application/x-amz-json-1.0", "v1, v2"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=10),
)


@SETTINGS
@given(
    url=st.one_of(
        custom_endpoints(), st.sampled_from(REGIONS).map(lambda r: _resolved(r, False, False))
    ),
    method=st.sampled_from(["POST", "GET", "put", "DELETE"]),
    headers=st.dictionaries(_header_names, _header_values, max_size=8),
    body=st.one_of(st.just(b""), st.binary(max_size=200), _text.map(str.encode)),
    creds=credentials,
    region=st.sampled_from([*REGIONS, "local"]),
    now=times,
)
def test_signer_is_sigv4auth(
    url: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
    creds: Any,
    region: str,
    now: datetime.datetime,
) -> None:
    """The signer alone, on any headers (Date, a payload hash, hop-by-hop, repeated names)."""
    signed = Signer(region).sign(method, url, headers, body, creds, now)
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    with pytest.MonkeyPatch.context() as mp:
        set_signing_clock(mp, lambda: now)
        SigV4Auth(creds, "sqs", region).add_auth(request)
    assert list(signed.items()) == list(request.headers.items())


def test_aware_times_are_converted_to_utc() -> None:
    creds = ReadOnlyCredentials("AK", "SK", None)
    naive = datetime.datetime(2024, 12, 31, 23, 30)
    aware = datetime.datetime(
        2025, 1, 1, 1, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    signer = Signer("eu-west-1")
    url = "https://sqs.eu-west-1.amazonaws.com/"
    assert signer.sign("POST", url, {}, b"{}", creds, naive) == signer.sign(
        "POST", url, {}, b"{}", creds, aware
    )


# -- what stays on botocore's path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("GetQueueUrl", {"QueueName": "q"}),
        ("SendMessageBatch", {"QueueUrl": "q", "Entries": [{"Id": "0", "MessageBody": "b"}]}),
        (
            "SendMessage",
            {
                "QueueUrl": "q",
                "MessageBody": "b",
                "MessageAttributes": {"a": {"DataType": "Binary", "BinaryValue": b"\x00"}},
            },
        ),
        (
            "SendMessage",
            {
                "QueueUrl": "q",
                "MessageBody": "b",
                "MessageSystemAttributes": {
                    "AWSTraceHeader": {"DataType": "String", "BinaryListValues": [b"x"]}
                },
            },
        ),
        (
            "DeleteMessageBatch",
            {"QueueUrl": "q", "Entries": ({"Id": "0", "ReceiptHandle": "r"} for _ in range(1))},
        ),
        ("ReceiveMessage", {"QueueUrl": "q", "AttributeNames": {"All"}}),
    ],
)
def test_what_botocore_would_transform_is_not_fast(operation: str, params: dict[str, Any]) -> None:
    protocol = SQSProtocol(_data(), "https://sqs.us-east-1.amazonaws.com", "us-east-1", fast=True)
    creds = ReadOnlyCredentials("AK", "SK", None)
    assert protocol.build_request_fast(operation, params, creds) is None


def test_unknown_members_and_validation_keep_botocores_errors() -> None:
    from trio_sqs import ConfigurationError

    protocol = SQSProtocol(_data(), "https://sqs.us-east-1.amazonaws.com", "us-east-1", fast=True)
    creds = ReadOnlyCredentials("AK", "SK", None)
    bad = {"QueueUrl": "q", "Bogus": 1}
    assert protocol.build_request_fast("ReceiveMessage", bad, creds) is None
    with pytest.raises(ConfigurationError):
        protocol.build_request("ReceiveMessage", bad, creds, validate=True)
    # a validated call never takes the fast path, even with plain params
    now = datetime.datetime(2024, 5, 17, 12, 34, 56)
    good = {"QueueUrl": "https://sqs.us-east-1.amazonaws.com/1/q", "MaxNumberOfMessages": 10}
    with pytest.MonkeyPatch.context() as mp:
        set_signing_clock(mp, lambda: now)
        validated = protocol.build_request("ReceiveMessage", good, creds, validate=True)
    assert validated == protocol.build_request_fast("ReceiveMessage", good, creds, now)


def test_tuples_and_mapping_params_are_serialized_as_botocore_does() -> None:
    protocol = SQSProtocol(_data(), "https://sqs.us-east-1.amazonaws.com", "us-east-1", fast=True)
    creds = ReadOnlyCredentials("AK", "SK", "T")
    now = datetime.datetime(2024, 5, 17, 12, 34, 56)
    from types import MappingProxyType

    params = MappingProxyType({"QueueUrl": "q", "Entries": ({"Id": "0", "ReceiptHandle": "r"},)})
    fast = protocol.build_request_fast("DeleteMessageBatch", params, creds, now)
    assert fast is not None
    assert fast == _botocore(protocol, "DeleteMessageBatch", params, creds, now)


def test_fast_is_off_by_default() -> None:
    protocol = SQSProtocol(_data(), "https://sqs.us-east-1.amazonaws.com", "us-east-1")
    assert protocol.fast is False


# -- the signing key cache -----------------------------------------------------------------------


def _derived(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), sha256).digest()
    return key


def test_signing_key_matches_the_documented_derivation() -> None:
    # AWS's documented example ("Examples of how to derive a signing key for Signature Version 4").
    signer = Signer("us-east-1", "iam")
    key = signer.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_signing_key_is_cached_per_secret_and_date(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _sigv4._hmac

    def counting(key: bytes, msg: str) -> bytes:
        calls.append(msg)
        return real(key, msg)

    monkeypatch.setattr(_sigv4, "_hmac", counting)
    signer = Signer("eu-west-1")
    creds = ReadOnlyCredentials("AK", "SK", None)
    url = "https://sqs.eu-west-1.amazonaws.com/"
    morning = datetime.datetime(2024, 12, 31, 0, 0, 1)
    evening = datetime.datetime(2024, 12, 31, 23, 59, 59)
    signer.sign("POST", url, {}, b"{}", creds, morning)
    signer.sign("POST", url, {}, b"{}", creds, evening)
    assert calls == ["20241231", "eu-west-1", "sqs", "aws4_request"], "one derivation per day"
    signer.sign("POST", url, {}, b"{}", creds, evening + datetime.timedelta(seconds=1))
    assert calls[4:] == ["20250101", "eu-west-1", "sqs", "aws4_request"], "a new key at midnight"
    signer.sign("POST", url, {}, b"{}", ReadOnlyCredentials("AK", "SK2", None), evening)
    assert len(calls) == 12, "a new secret gets its own key"
    assert set(signer._keys) == {
        ("SK", "20241231", "eu-west-1", "sqs"),
        ("SK", "20250101", "eu-west-1", "sqs"),
        ("SK2", "20241231", "eu-west-1", "sqs"),
    }
    for (secret, date, region, service), key in signer._keys.items():
        assert key == _derived(secret, date, region, service)


def test_signing_key_cache_is_bounded() -> None:
    signer = Signer("eu-west-1")
    start = datetime.date(2024, 1, 1)
    dates = [(start + datetime.timedelta(days=i)).strftime("%Y%m%d") for i in range(50)]
    for i, date in enumerate(dates):
        key = signer.signing_key(f"secret{i % 3}", date)
        assert key == _derived(f"secret{i % 3}", date, "eu-west-1", "sqs")
        assert len(signer._keys) <= KEY_CACHE_SIZE
    assert len(signer._keys) == KEY_CACHE_SIZE
    # the oldest went first: what is left is the last KEY_CACHE_SIZE keys
    assert [k[1] for k in signer._keys] == dates[-KEY_CACHE_SIZE:]
    # an evicted key is derived again, correctly
    assert signer.signing_key("secret0", dates[0]) == _derived(
        "secret0", dates[0], "eu-west-1", "sqs"
    )


@pytest.mark.parametrize("date_header", [None, "Date"])
def test_a_header_value_like_a_placeholder_is_signed_as_botocore_does(
    date_header: str | None,
) -> None:
    """The cached template has no placeholder a header value could hold (an earlier one raised
    on a value containing it, where botocore signs)."""
    now = datetime.datetime(2025, 3, 1, 12, 0, 0)
    headers = {"X-Custom": "a\0date\0b", "X-Other": "x-amz-date:"}
    if date_header:
        headers[date_header] = "whatever"
    url = "https://sqs.us-east-1.amazonaws.com/"
    creds = ReadOnlyCredentials("AKID", "secret", "token")
    signer = Signer("us-east-1")
    for _ in range(2):  # built, then from the cache
        signed = signer.sign("POST", url, headers, b"{}", creds, now)
        request = AWSRequest(method="POST", url=url, data=b"{}", headers=headers)
        with pytest.MonkeyPatch.context() as mp:
            set_signing_clock(mp, lambda: now)
            SigV4Auth(creds, "sqs", "us-east-1").add_auth(request)
        assert list(signed.items()) == list(request.headers.items())
