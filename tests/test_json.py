"""The decoder of ReceiveMessage answers (``trio_sqs._json``): orjson when the speed extra
installed it, else the standard library's. The one-pass reader declines to botocore on any
``ValueError`` and takes no number from the document, so the two must agree on everything but
numbers wherever orjson accepts a document (and do on numbers within 64 bits)."""

from __future__ import annotations

import json
import math
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_sqs
from trio_sqs import ConfigurationError, _json
from trio_sqs._message import receive_result_from_json

from .conftest import examples

orjson = pytest.importorskip("orjson")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _documents(value: Any) -> list[bytes]:
    return [
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
    ]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isinf(a) and a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=examples(300), deadline=None)
@given(value=json_values)
def test_orjson_reads_what_it_accepts_as_the_standard_library_does(value: Any) -> None:
    for document in _documents(value):
        try:
            theirs = orjson.loads(document)
        except ValueError:  # declined: the fast paths leave it to botocore
            continue
        assert _same(theirs, json.loads(document)), document


@pytest.mark.parametrize(
    "document",
    [
        b'{"a": 1, "a": 2}',  # a repeated member: the last one wins in both
        b'{"Messages": [{"Body": "x", "Body": "y"}]}',
        b'{"a": 1e400}',  # past a double
        b'"\\ud800"',  # a lone surrogate escape
        b'{"a": NaN}',
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'{"a": "\\u00e9\\n"} ',
    ],
)
def test_odd_documents_are_read_alike_or_declined(document: bytes) -> None:
    try:
        theirs = orjson.loads(document)
    except ValueError:
        return
    assert _same(theirs, json.loads(document))


@pytest.mark.parametrize("number", ["18446744073709551616", "-9223372036854775809"])
def test_integers_past_64_bits_differ_and_the_one_pass_reader_takes_no_number(number: str) -> None:
    """orjson reads an integer past 64 bits as a float: the reader must never take a number."""
    document = f'{{"a": {number}}}'.encode()
    assert json.loads(document)["a"] == int(number)
    assert isinstance(orjson.loads(document)["a"], float)
    digest = "9dd4e461268c8034f5c8564e155c67a6"  # MD5 of "x"
    for member in ("Body", "MessageId", "ReceiptHandle", "MD5OfBody"):
        message = {"MessageId": "m", "ReceiptHandle": "r", "Body": "x", "MD5OfBody": digest}
        body = json.dumps({"Messages": [message]}).encode()
        assert receive_result_from_json(body, "q") is not None
        body = body.replace(json.dumps(message[member]).encode(), number.encode(), 1)
        assert receive_result_from_json(body, "q") is None, member


def test_the_decoder_is_orjson_when_installed_and_can_be_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_json.JSON_VARIABLE, raising=False)
    assert _json.default_loads() == ("orjson", orjson.loads)
    monkeypatch.setenv(_json.JSON_VARIABLE, " JSON ")
    assert _json.default_loads() == ("json", _json._standard_loads)
    monkeypatch.setenv(_json.JSON_VARIABLE, "orjson")
    assert _json.default_loads() == ("orjson", orjson.loads)
    monkeypatch.setitem(sys.modules, "orjson", None)  # not installed
    with pytest.raises(
        ValueError, match=r"orjson is not installed: pip install 'trio-sqs\[speed\]'"
    ):
        _json.default_loads()
    monkeypatch.delenv(_json.JSON_VARIABLE)
    assert _json.default_loads() == ("json", _json._standard_loads)


def local_client() -> AbstractAsyncContextManager[trio_sqs.SQSClient]:
    """A client that needs nothing to open (no request is sent): opening reads the variable."""
    return trio_sqs.open_client(
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9324",
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )


async def test_an_unknown_decoder_in_the_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_json.JSON_VARIABLE, "simplejson")
    with pytest.raises(ConfigurationError, match="TRIO_SQS_JSON must be json or orjson"):
        async with local_client():
            pass  # pragma: no cover


async def test_opening_a_client_reads_the_variable_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # (monkeypatch puts the module's choice back afterwards)
    monkeypatch.setattr(_json, "loads", _json.loads)
    monkeypatch.setattr(_json, "LOADS_NAME", _json.LOADS_NAME)
    monkeypatch.setenv(_json.JSON_VARIABLE, "json")
    async with local_client():
        assert (_json.LOADS_NAME, _json.loads) == ("json", _json._standard_loads)
    monkeypatch.setenv(_json.JSON_VARIABLE, "orjson")
    async with local_client():
        assert (_json.LOADS_NAME, _json.loads) == ("orjson", orjson.loads)


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # a UTF-8 byte order mark
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-16-le"),
        lambda text: text.encode("utf-32-be"),
        lambda text: text.replace('"m"', '"m\ud800"').encode("utf-8", "surrogatepass"),
    ],
    ids=["bom", "utf-16", "utf-16-le", "utf-32-be", "encoded surrogate"],
)
@pytest.mark.parametrize("loads", ["json", "orjson"])
def test_only_strict_utf8_is_read_by_either_decoder(
    monkeypatch: pytest.MonkeyPatch, encode: Any, loads: str
) -> None:
    """botocore decodes answers as strict UTF-8 and refuses the rest; json.loads on bytes would
    take other encodings and encoded surrogates (a MessageId no one can encode again)."""
    message = {"MessageId": "m", "ReceiptHandle": "r", "Body": "x"}
    message["MD5OfBody"] = "9dd4e461268c8034f5c8564e155c67a6"  # MD5 of "x"
    text = json.dumps({"Messages": [message]})
    assert receive_result_from_json(text.encode(), "q") is not None
    monkeypatch.setattr(_json, "loads", dict(_json_loaders())[loads])
    assert receive_result_from_json(encode(text), "q") is None


def _json_loaders() -> list[tuple[str, Any]]:
    return [("json", _json._standard_loads), ("orjson", orjson.loads)]
