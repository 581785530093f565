"""The sans-IO protocol layer: botocore's SQS model, serializer, parser, endpoint rules and SigV4.

Everything here is a plain function of data and bytes. Nothing does network I/O, and nothing here
knows about Trio. Loading the service model reads JSON files from disk and costs CPU, so
:func:`load_service_data` is meant to run once, in a worker thread (``_connect.py`` does that).

This is the only module that imports botocore's request machinery; botocore exceptions raised
here are translated into trio_sqs exceptions before they leave it.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import functools
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.endpoint_provider import EndpointProvider
from botocore.exceptions import BotoCoreError
from botocore.model import OperationNotFoundError
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.session import Session

from . import _sigv4
from ._exceptions import (
    AccessDenied,
    ClockSkewError,
    ConfigurationError,
    InvalidReceiptHandle,
    QueueDoesNotExist,
    ServiceError,
    Throttled,
)
from ._sigv4 import Signer

__all__ = [
    "HTTPRequest",
    "MalformedEntry",
    "ServiceData",
    "SQSProtocol",
    "check_region",
    "is_retryable_error",
    "load_service_data",
    "resolve_endpoint",
    "service_data_loaded",
]

SERVICE_NAME = "sqs"

# Error codes as SQS sends them in the JSON protocol (the model's shape names) and in the
# query-compatible form (``x-amzn-query-error``), plus the generic AWS authentication codes.
_QUEUE_MISSING = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
_ACCESS = {
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "InvalidSecurity",
    "InvalidSignatureException",
    "KmsAccessDenied",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}
_THROTTLING = {
    "KmsThrottled",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "Throttled",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "AWS.SimpleQueueService.RequestThrottled",
}
_RECEIPT = {
    "ReceiptHandleIsInvalid",
    "InvalidReceiptHandle",
    "AWS.SimpleQueueService.InvalidReceiptHandle",
}
_SKEW = {"RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture"}
_TRANSIENT = {
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "PriorRequestNotComplete",
}

# The operations whose requests may be built without botocore (``SQSProtocol.build_request``).
FAST_OPERATIONS = frozenset(
    {
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "ChangeMessageVisibility",
        "DeleteMessage",
        "SendMessage",
    }
)

# The operations whose successful answers may be read without botocore's parser
# (``SQSProtocol.parse_response_fast``; ReceiveMessage is read in one pass by ``_message.receive_result_from_json``).
FAST_PARSED = frozenset(
    {
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "ChangeMessageVisibility",
        "DeleteMessage",
        "SendMessage",
        "SendMessageBatch",
    }
)

_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_region(region: str, *, custom_endpoint: bool) -> None:
    """Reject region names that cannot be right, before any I/O.

    With AWS endpoints the region must look like an AWS region (``eu-west-1``). With an explicit
    endpoint URL (a local server) any DNS label is accepted (``local``, ``elasticmq``).
    """
    if not isinstance(region, str) or not region:
        raise ConfigurationError(
            f"region must be a non-empty string, got {region!r}", code="InvalidOption"
        )
    pattern = _HOST_LABEL if custom_endpoint else _AWS_REGION
    if not pattern.match(region):
        expected = "a DNS label" if custom_endpoint else "an AWS region name like 'us-east-1'"
        raise ConfigurationError(f"region={region!r} is not {expected}", code="InvalidOption")


@dataclass(frozen=True)
class ServiceData:
    """What botocore knows about SQS, loaded once per process."""

    model: Any
    serializer: Any
    validating_serializer: Any
    parser: Any
    endpoint_provider: EndpointProvider


_load_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _load_service_data_cached() -> ServiceData:
    session = Session()
    loader = session.get_component("data_loader")
    model = session.get_service_model(SERVICE_NAME)
    ruleset = loader.load_service_model(SERVICE_NAME, "endpoint-rule-set-1")
    partitions = loader.load_data("partitions")
    return ServiceData(
        model=model,
        serializer=create_serializer(model.protocol, include_validation=False),
        validating_serializer=create_serializer(model.protocol, include_validation=True),
        parser=create_parser(model.protocol),
        endpoint_provider=EndpointProvider(ruleset_data=ruleset, partition_data=partitions),
    )


def service_data_loaded() -> bool:
    """Whether :func:`load_service_data` would return at once (the model is in memory)."""
    return _load_service_data_cached.cache_info().currsize > 0


def load_service_data() -> ServiceData:
    """Load the SQS model (blocking; run it in a worker thread). Cached for the process."""
    with _load_lock:
        return _load_service_data_cached()


def resolve_endpoint(
    data: ServiceData,
    region: str,
    *,
    use_fips: bool = False,
    use_dualstack: bool = False,
    endpoint_url: str | None = None,
) -> str:
    """Resolve the SQS endpoint URL with botocore's endpoint rule set."""
    params: dict[str, Any] = {"Region": region, "UseFIPS": use_fips, "UseDualStack": use_dualstack}
    if endpoint_url:
        params["Endpoint"] = endpoint_url
    try:
        endpoint = data.endpoint_provider.resolve_endpoint(**params)
    except BotoCoreError as exc:
        raise ConfigurationError(
            f"cannot resolve an SQS endpoint for region={region!r}, use_fips={use_fips}, "
            f"use_dualstack={use_dualstack}, endpoint_url={endpoint_url!r}: {exc}",
            code="InvalidOption",
        ) from exc
    return str(endpoint.url).rstrip("/")


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """A signed request, ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                return val
    return value


def clock_skew(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Server time minus local time, in seconds, from a response's ``Date`` header."""
    date = _header(headers, "date")
    if not date:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    return server - (time.time() if now is None else now)


class SQSProtocol:
    """Builds signed requests and parses responses for one endpoint and region. No I/O.

    Args:
        data: The loaded service data (:func:`load_service_data`).
        endpoint: The resolved endpoint URL (:func:`resolve_endpoint`).
        region: The signing region.
    """

    def __init__(
        self, data: ServiceData, endpoint: str, region: str, *, fast: bool = False
    ) -> None:
        self._data = data
        self.endpoint = endpoint
        self.region = region
        self.fast = fast
        self._url = endpoint + "/"
        self._ops: dict[str, Any] = {}
        self._signer = Signer(region, SERVICE_NAME)
        self._fast_ops: dict[str, _FastOperation | None] = {}
        self._output_schemas: dict[str, Any] = {}

    def operation_model(self, operation: str) -> Any:
        op = self._ops.get(operation)
        if op is None:
            try:
                op = self._data.model.operation_model(operation)
            except (BotoCoreError, OperationNotFoundError) as exc:
                raise ConfigurationError(
                    f"unknown SQS operation {operation!r}", code="InvalidOption"
                ) from exc
            self._ops[operation] = op
        return op

    def build_request(
        self,
        operation: str,
        params: Mapping[str, Any],
        credentials: ReadOnlyCredentials,
        *,
        validate: bool = False,
        now: datetime.datetime | None = None,
        skew: float = 0.0,
    ) -> HTTPRequest:
        """Serialize and sign one request.

        With ``fast`` set, the hot operations (:data:`FAST_OPERATIONS`) without validation are
        built by :meth:`build_request_fast` when their parameters allow it, and everything else
        is serialized by botocore and signed by our :class:`~trio_sqs._sigv4.Signer` (the same
        headers as botocore's ``SigV4Auth``): either way the signing time is ours to choose.
        Without ``fast``, botocore serializes and signs (:meth:`build_request_botocore`).

        Args:
            operation: The SQS operation name (``"ReceiveMessage"``).
            params: The operation's parameters, as botocore names them.
            credentials: A frozen credentials snapshot.
            validate: Check params against the model (slower; for untyped callers).
            now: The signing time (UTC; default: the clock). Only with ``fast``: botocore's
                signer always reads its own clock.
            skew: Seconds added to the signing time (a clock skew measured from the server's
                ``Date``). Only with ``fast``.
        """
        if not self.fast:
            return self.build_request_botocore(operation, params, credentials, validate=validate)
        if now is None:
            now = _sigv4.utcnow()
        if skew:
            now = now + datetime.timedelta(seconds=skew)
        return self._build_signed(operation, params, credentials, validate, now)

    def _build_signed(
        self,
        operation: str,
        params: Mapping[str, Any],
        credentials: ReadOnlyCredentials,
        validate: bool,
        now: datetime.datetime,
    ) -> HTTPRequest:
        """Our serialization when the parameters allow it (else botocore's), signed by our
        signer at ``now``."""
        if not validate:
            request = self.build_request_fast(operation, params, credentials, now)
            if request is not None:
                return request
        method, headers, body = self._serialize(operation, params, validate)
        signed = self._signer.sign(method, self._url, headers, body, credentials, now)
        return HTTPRequest(method=method, url=self._url, headers=signed, body=body)

    def check_signer(self, credentials: ReadOnlyCredentials) -> str | None:
        """Compare our signer with botocore's ``SigV4Auth`` on two requests (a hot operation and
        one botocore serializes), at the time botocore signed them. None when they agree, else
        what differs (the client then signs with botocore only)."""
        samples: tuple[tuple[str, dict[str, Any]], ...] = (
            (
                "ReceiveMessage",
                {"QueueUrl": self._url + "123456789012/q", "MaxNumberOfMessages": 10},
            ),
            ("GetQueueUrl", {"QueueName": "q"}),
        )
        for operation, params in samples:
            try:
                expected = self.build_request_botocore(operation, params, credentials)
                when = expected.headers.get("X-Amz-Date")
                if when is None:
                    return f"{operation}: botocore's request has no X-Amz-Date"
                now = datetime.datetime.strptime(when, _sigv4.SIGV4_TIMESTAMP)
                fast = self._build_signed(operation, params, credentials, False, now)
            except Exception as exc:  # any surprise means: do not trust the fast path
                return f"{operation}: {type(exc).__name__}: {exc}"
            if fast != expected:
                differing = sorted(
                    name
                    for name in set(fast.headers) | set(expected.headers)
                    if fast.headers.get(name) != expected.headers.get(name)
                )
                what = ", ".join(differing) or ("the body" if fast.body != expected.body else "")
                return f"{operation}: {what or 'the header order'} differ(s) from botocore's"
        return None

    def build_request_fast(
        self,
        operation: str,
        params: Mapping[str, Any],
        credentials: ReadOnlyCredentials,
        now: datetime.datetime | None = None,
    ) -> HTTPRequest | None:
        """The request :meth:`build_request_botocore` would build, without botocore, or None.

        None when the operation is not one of :data:`FAST_OPERATIONS` or the parameters hold
        anything botocore's serializer would transform rather than copy (binary or timestamp
        values, a member the model does not know, a container that is not a dict, list or
        tuple): those must go through botocore, errors included.
        """
        fast = self._fast_ops.get(operation, _UNSET)
        if fast is _UNSET:
            fast = self._fast_operation(operation)
            self._fast_ops[operation] = fast
        if fast is None:
            return None
        if type(params) is not dict:
            params = dict(params)
        if not _plain(params, fast.schema):
            return None
        body = json.dumps(params).encode("utf-8")
        if now is None:
            now = _sigv4.utcnow()
        headers = self._signer.sign(fast.method, self._url, fast.headers, body, credentials, now)
        return HTTPRequest(method=fast.method, url=self._url, headers=headers, body=body)

    def _fast_operation(self, operation: str) -> _FastOperation | None:
        if operation not in FAST_OPERATIONS or self._data.model.protocol != "json":
            return None
        op = self.operation_model(operation)
        endpoint = getattr(op, "endpoint", None)
        if op.input_shape is None or (endpoint and "hostPrefix" in endpoint):
            return None
        # The method and headers botocore's serializer gives this operation: the same for any
        # parameters in the JSON protocol (X-Amz-Target, Content-Type and, for SQS's
        # awsQueryCompatible trait, x-amzn-query-mode on the botocores that send it).
        template = self._data.serializer.serialize_to_request({}, op)
        if template.get("url_path", "/") != "/" or template.get("query_string"):
            return None
        if template.get("body") != b"{}" or "host_prefix" in template:
            return None
        headers = template["headers"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            return None
        return _FastOperation(
            method=template["method"], headers=dict(headers), schema=_schema(op.input_shape)
        )

    def _serialize(
        self, operation: str, params: Mapping[str, Any], validate: bool
    ) -> tuple[str, dict[str, str], bytes]:
        op = self.operation_model(operation)
        serializer = self._data.validating_serializer if validate else self._data.serializer
        try:
            serialized = serializer.serialize_to_request(dict(params), op)
        except BotoCoreError as exc:
            raise ConfigurationError(
                f"invalid parameters for {operation}: {exc}", code="InvalidParameter"
            ) from exc
        body = serialized["body"]
        if isinstance(body, str):
            body = body.encode()
        headers = {
            k: v.decode() if isinstance(v, bytes) else v for k, v in serialized["headers"].items()
        }
        return serialized["method"], headers, body or b""

    def build_request_botocore(
        self,
        operation: str,
        params: Mapping[str, Any],
        credentials: ReadOnlyCredentials,
        *,
        validate: bool = False,
    ) -> HTTPRequest:
        """Serialize and sign one request with botocore's serializer and ``SigV4Auth``."""
        method, headers, body = self._serialize(operation, params, validate)
        request = AWSRequest(method=method, url=self._url, data=body, headers=headers)
        SigV4Auth(credentials, SERVICE_NAME, self.region).add_auth(request)
        signed_body = request.body
        if isinstance(signed_body, str):
            signed_body = signed_body.encode()
        return HTTPRequest(
            method=request.method,
            url=self._url,
            headers={
                k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
            },
            body=signed_body or b"",
        )

    def parse_response(
        self, operation: str, status_code: int, headers: Mapping[str, str], body: bytes
    ) -> dict[str, Any]:
        """Parse a response into the operation's result, or raise a :class:`ServiceError`.

        An error response (status 300 or more) always becomes a :class:`ServiceError`, however
        garbled its body: what the status says is known even when the body cannot be read.

        Raises:
            ServiceError: or a subclass, for an error response.
            ValueError: if a successful response has a body that is not a JSON object.
            Exception: whatever botocore's parser raises on a successful response it cannot read
                (the client's boundary turns it into an ``InvalidResponse`` TransportError).
        """
        op = self.operation_model(operation)
        if status_code < 300 and body:
            stripped = body.strip()
            if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
                raise ValueError(
                    f"{operation} answered HTTP {status_code} with a body that is not JSON"
                )
        if status_code >= 300:
            try:
                parsed_error: Mapping[str, Any] = self._data.parser.parse(
                    {"status_code": status_code, "headers": headers, "body": body},
                    op.output_shape,
                )
            except Exception:
                # E.g. a JSON error whose ``__type`` is not a string (botocore raises TypeError).
                parsed_error = {}
            if not isinstance(parsed_error, Mapping):
                parsed_error = {}
            raise error_from_response(parsed_error, status_code, headers)
        parsed: dict[str, Any] = self._data.parser.parse(
            {"status_code": status_code, "headers": headers, "body": body}, op.output_shape
        )
        parsed.pop("ResponseMetadata", None)
        return parsed

    def parse_response_fast(self, operation: str, body: bytes) -> dict[str, Any] | None:
        """A successful answer of one of :data:`FAST_PARSED` read with
        ``json.loads`` and a walk over the operation's output shape compiled once, giving what
        botocore's parser gives (members the model knows, null members dropped, binary values
        base64-decoded); None when anything in it is not as SQS sends it (a null in a list, a
        member of the wrong kind, a value that is not base64...): then botocore reads it, with
        its own results and errors (:meth:`parse_response`).
        """
        schema = self._output_schemas.get(operation, _UNSET)
        if schema is _UNSET:
            schema = None
            if operation in FAST_PARSED:
                shape = self.operation_model(operation).output_shape
                schema = _output_schema(shape) if shape is not None else ("s", {})
            self._output_schemas[operation] = schema
        if schema is None:
            return None
        if not body:
            return {}
        try:
            parsed = json.loads(body)
            result: dict[str, Any] = _read(parsed, schema)
        except (ValueError, _Decline):  # (binascii.Error is a ValueError)
            return None
        return result

    def parse_receive_response(
        self, status_code: int, headers: Mapping[str, str], body: bytes
    ) -> list[Any]:
        """Parse a ReceiveMessage response into its messages, one malformed message at a time.

        Returns the ``Messages`` list as :meth:`parse_response` would, except that a message
        botocore cannot parse (``MessageAttributes`` a list, an attribute value that is not a
        map...) does not fail the whole answer: it is returned as a :class:`MalformedEntry`, to
        be counted corrupt, while the valid messages beside it are delivered.

        Raises:
            ServiceError: for an error response.
            ValueError: if the answer itself is malformed (not a JSON object, ``Messages`` not
                a list).
        """
        try:
            parsed = self.parse_response("ReceiveMessage", status_code, headers, body)
        except ServiceError:
            raise
        except Exception:
            if status_code >= 300:  # pragma: no cover - parse_response raises ServiceError
                raise
            return self._parse_messages_one_by_one(status_code, headers, body)
        messages = parsed.get("Messages")
        if messages is None:
            return []
        if not isinstance(messages, list):  # pragma: no cover - botocore makes it a list
            raise ValueError(f"ReceiveMessage: Messages is a {type(messages).__name__}, not a list")
        return messages

    def _parse_messages_one_by_one(
        self, status_code: int, headers: Mapping[str, str], body: bytes
    ) -> list[Any]:
        document = json.loads(body.decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError("ReceiveMessage answered with a body that is not a JSON object")
        raw_messages = document.get("Messages")
        if raw_messages is None:
            return []
        if not isinstance(raw_messages, list):
            raise ValueError(
                f"ReceiveMessage: Messages is a {type(raw_messages).__name__}, not a list"
            )
        op = self.operation_model("ReceiveMessage")
        out: list[Any] = []
        for raw in raw_messages:
            alone = json.dumps({"Messages": [raw]}).encode()
            try:
                parsed = self._data.parser.parse(
                    {"status_code": status_code, "headers": headers, "body": alone},
                    op.output_shape,
                )
                [message] = parsed["Messages"]
            except Exception as exc:
                out.append(MalformedEntry(raw, f"{type(exc).__name__}: {exc}"))
            else:
                out.append(message)
        return out


_UNSET: Any = object()

# A compiled input shape: _LEAF for what botocore's JSON serializer copies as it is (strings,
# integers, booleans), None for what it transforms (blobs to base64, timestamps, floats, documents,
# renamed members), ("s", {member: schema}) for a structure, ("l", schema) a list, ("m", schema) a
# map's values.
_LEAF: Any = "leaf"
_COPIED = frozenset({"string", "integer", "long", "boolean"})


def _schema(shape: Any) -> Any:
    kind = shape.type_name
    if kind in _COPIED:
        return _LEAF
    if kind == "structure":
        if shape.is_document_type:
            return None
        members: dict[str, Any] = {}
        for name, member in shape.members.items():
            if "name" in member.serialization:
                members[name] = None
            else:
                members[name] = _schema(member)
        return ("s", members)
    if kind == "list":
        return ("l", _schema(shape.member))
    if kind == "map":
        return ("m", _schema(shape.value))
    return None


_BLOB: Any = "blob"


class _Decline(Exception):
    """An answer the fast parser leaves to botocore's."""


def _output_schema(shape: Any) -> Any:
    """As :func:`_schema`, for reading answers: blobs are read (base64), not declined."""
    kind = shape.type_name
    if kind in _COPIED:
        return _LEAF
    if kind == "blob":
        return _BLOB
    if kind == "structure":
        if shape.is_document_type:
            return None
        return (
            "s",
            {
                name: None if "name" in member.serialization else _output_schema(member)
                for name, member in shape.members.items()
            },
        )
    if kind == "list":
        return ("l", _output_schema(shape.member))
    if kind == "map":
        return ("m", _output_schema(shape.value))
    return None


def _read(value: Any, schema: Any) -> Any:
    """``value`` (from ``json.loads``, not None) as botocore's JSON parser reads it for
    ``schema``; raises :class:`_Decline` where the two might differ."""
    if schema is _LEAF:
        return value
    if schema is _BLOB:
        if type(value) is not str:
            raise _Decline
        return base64.b64decode(value)  # botocore's _default_blob_parser
    if schema is None:
        raise _Decline
    kind, sub = schema
    if kind == "s":
        if type(value) is not dict:
            raise _Decline
        out = {}
        for name, item in value.items():
            if item is not None:
                member = sub.get(name, _UNSET)
                if member is _LEAF:
                    out[name] = item  # (the common case, without a call)
                elif member is not _UNSET:
                    out[name] = _read(item, member)
        return out
    if kind == "l":
        if type(value) is not list or None in value:
            raise _Decline  # (botocores differ on nulls in lists)
        return list(value) if sub is _LEAF else [_read(item, sub) for item in value]
    if type(value) is not dict or None in value.values():
        raise _Decline
    return dict(value) if sub is _LEAF else {key: _read(item, sub) for key, item in value.items()}


def _plain(value: Any, schema: Any) -> bool:
    """Whether botocore's JSON serializer would reproduce ``value`` as it is (json.dumps-equal)."""
    if schema is _LEAF:
        return True
    if schema is None:
        return False
    kind, sub = schema
    if kind == "s":
        if type(value) is not dict:
            return False
        for key, item in value.items():
            member = sub.get(key, _UNSET) if type(key) is str else _UNSET
            if member is _LEAF:
                continue
            if member is _UNSET or not _plain(item, member):
                return False
        return True
    if kind == "l":
        if type(value) is not list and type(value) is not tuple:
            return False
        if sub is _LEAF:
            return True
        return all(_plain(item, sub) for item in value)
    # a map
    if type(value) is not dict:
        return False
    if sub is _LEAF:
        return True
    return all(_plain(item, sub) for item in value.values())


@dataclass(frozen=True, slots=True)
class _FastOperation:
    method: str
    headers: dict[str, str]
    schema: Any


@dataclass(frozen=True, slots=True)
class MalformedEntry:
    """A message of a ReceiveMessage answer that could not be parsed: the raw JSON value and why."""

    raw: Any
    reason: str


def error_from_response(
    parsed: Mapping[str, Any], status_code: int, headers: Mapping[str, str]
) -> ServiceError:
    """Translate a parsed error response into the matching trio_sqs exception."""
    error = parsed.get("Error")
    if not isinstance(error, Mapping):
        error = {}
    code = _text(error.get("Code")) or f"HTTP{status_code}"
    query_code = _text(error.get("QueryErrorCode"))
    message = _text(error.get("Message")) or f"HTTP {status_code} from SQS"
    request_id = _header(headers, "x-amzn-requestid")
    metadata = parsed.get("ResponseMetadata")
    if not request_id and isinstance(metadata, Mapping):
        request_id = _text(metadata.get("RequestId")) or None
    codes = {code, query_code}
    kwargs: dict[str, Any] = {"code": code, "status_code": status_code, "request_id": request_id}
    lowered = message.lower()
    if (
        codes & _SKEW
        or ("signature expired" in lowered)
        or ("signature not yet current" in lowered)
    ):
        skew = clock_skew(headers)
        where = f"; the server's clock is {skew:+.1f} s from ours" if skew is not None else ""
        return ClockSkewError(
            f"request rejected for clock skew: {message}{where}. Fix the machine's clock (NTP)",
            skew=skew,
            **kwargs,
        )
    if codes & _QUEUE_MISSING:
        return QueueDoesNotExist(message, **kwargs)
    if codes & _ACCESS or status_code == 403:
        return AccessDenied(message, **kwargs)
    if codes & _THROTTLING or status_code == 429:
        return Throttled(message, **kwargs)
    if codes & _RECEIPT:
        return InvalidReceiptHandle(message, **kwargs)
    return ServiceError(message, **kwargs)


def _text(value: object) -> str:
    """A member of an error answer that should be a string: itself, or "" if it is not one."""
    return value if isinstance(value, str) else ""


def is_retryable_error(error: ServiceError) -> bool:
    """Throttling, 5xx and transient server errors are retried; client errors never are."""
    if isinstance(error, Throttled):
        return True
    if isinstance(error, (AccessDenied, QueueDoesNotExist, InvalidReceiptHandle, ClockSkewError)):
        return False
    status = error.status_code or 0
    return status >= 500 or error.code in _TRANSIENT
