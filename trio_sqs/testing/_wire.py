"""The in-memory SQS on the wire: decoding JSON-protocol requests, SigV4 verification, scripted
faults, and the ``httpx`` transport that serves a :class:`FakeSQS` without sockets."""

from __future__ import annotations

import collections
import email.utils
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httpx
import trio

from ._errors import FakeError

if TYPE_CHECKING:
    from ._service import FakeSQS

__all__ = ["Fault", "FakeSQSTransport", "Faults", "WireAnswer", "answer"]

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "AmazonSQS."
MAX_SIGNATURE_SKEW = 300.0

# Every operation of SQS's API. One the fake does not implement answers UnsupportedOperation;
# a name outside this list answers UnknownOperationException, as AWS's JSON protocol does.
SQS_OPERATIONS = frozenset(
    {
        "AddPermission",
        "CancelMessageMoveTask",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
        "CreateQueue",
        "DeleteMessage",
        "DeleteMessageBatch",
        "DeleteQueue",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "ListMessageMoveTasks",
        "ListQueueTags",
        "ListQueues",
        "PurgeQueue",
        "ReceiveMessage",
        "RemovePermission",
        "SendMessage",
        "SendMessageBatch",
        "SetQueueAttributes",
        "StartMessageMoveTask",
        "TagQueue",
        "UntagQueue",
    }
)


# -- faults ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Fault:
    """One scripted fault, applied to the next ``times`` matching requests.

    Kinds: ``"error"`` (answer ``status`` with ``code``; the operation does not run),
    ``"delay"`` (the operation takes effect at once, its answer comes ``seconds`` later),
    ``"stall"`` (the operation takes effect, the answer's headers go out, its body never does),
    ``"drop"`` (the connection is closed without an answer: before the operation runs, or after
    it took effect with ``after=True``), ``"corrupt_md5"`` (a ReceiveMessage answer whose first
    message carries a wrong ``MD5OfBody``).
    """

    kind: str
    operation: str | None
    times: int = 1
    status: int = 500
    code: str = "InternalFailure"
    message: str = "We encountered an internal error. Please try again."
    seconds: float = 0.0
    after: bool = False
    match: Callable[[Mapping[str, Any]], bool] | None = None
    applied: int = 0

    def matches(self, operation: str, params: Mapping[str, Any]) -> bool:
        if self.operation is not None and self.operation != operation:
            return False
        return self.match is None or bool(self.match(params))


@dataclass(eq=False)
class Faults:
    """The faults a test scripts on a :class:`FakeSQS` (``fake.faults``).

    Each request takes at most one fault: the first one added that matches its operation (and
    ``match``, a predicate on the request's parameters) and has uses left. ``operation=None``
    matches every operation.
    """

    pending: list[Fault] = field(default_factory=list)
    #: How many times a fault of each kind was applied, by operation.
    applied: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def _add(self, fault: Fault) -> Fault:
        if fault.times < 1:
            raise ValueError(f"times must be at least 1, got {fault.times}")
        self.pending.append(fault)
        return fault

    def fail(
        self,
        operation: str | None,
        *,
        times: int = 1,
        status: int = 500,
        code: str = "InternalFailure",
        message: str | None = None,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` calls with an error; the operation does not run."""
        return self._add(
            Fault(
                "error",
                operation,
                times=times,
                status=status,
                code=code,
                message=message or f"{code} (scripted by the test)",
                match=match,
            )
        )

    def throttle(self, operation: str | None, *, times: int = 1) -> Fault:
        """Answer with SQS's throttling error (``RequestThrottled``, HTTP 400)."""
        return self.fail(
            operation, times=times, status=400, code="RequestThrottled", message="Rate exceeded"
        )

    def delay(
        self,
        operation: str | None,
        seconds: float,
        *,
        times: int = 1,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Answer ``seconds`` late (the operation itself takes effect at once)."""
        return self._add(Fault("delay", operation, times=times, seconds=seconds, match=match))

    def stall(
        self,
        operation: str | None,
        *,
        times: int = 1,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Take effect, send the answer's headers, never its body."""
        return self._add(Fault("stall", operation, times=times, match=match))

    def drop(
        self,
        operation: str | None,
        *,
        times: int = 1,
        after: bool = False,
        match: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Fault:
        """Close the connection without an answer: before the operation runs, or (``after``)
        once it took effect, so that the client cannot tell whether it did."""
        return self._add(Fault("drop", operation, times=times, after=after, match=match))

    def corrupt_md5(
        self, *, times: int = 1, match: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> Fault:
        """Give the first message of the next non-empty ReceiveMessage answers a wrong
        ``MD5OfBody`` (an empty answer does not use the fault up)."""
        return self._add(Fault("corrupt_md5", "ReceiveMessage", times=times, match=match))

    def clear(self) -> None:
        self.pending.clear()

    def take(self, operation: str, params: Mapping[str, Any]) -> Fault | None:
        for fault in self.pending:
            if fault.matches(operation, params):
                if fault.kind != "corrupt_md5":
                    self.used(fault, operation)
                return fault
        return None

    def used(self, fault: Fault, operation: str) -> None:
        fault.applied += 1
        self.applied[(fault.kind, operation)] += 1
        if fault.applied >= fault.times:
            self.pending.remove(fault)


# -- signatures ------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _remove_dot_segments(path: str) -> str:
    """SigV4's path normalization (RFC 3986 dot segments; consecutive slashes collapse)."""
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and kept else ""
    return first + "/".join(kept) + last


def _auth_error(type_name: str, message: str, status: int = 400) -> FakeError:
    return FakeError(type_name, message, status=status, namespace="com.amazon.coral.service")


def verify_signature(
    fake: FakeSQS,
    method: str,
    raw_path: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> None:
    """Check a request's SigV4 signature (written from the SigV4 specification, independently
    of botocore's signer); raise the error SQS would answer."""
    authorization = headers.get("authorization", "")
    if not authorization:
        raise _auth_error(
            "MissingAuthenticationTokenException", "Missing Authentication Token", 403
        )
    algorithm, _, rest = authorization.partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, _, value = part.strip().partition("=")
        fields[key] = value
    if algorithm != "AWS4-HMAC-SHA256" or not {
        "Credential",
        "SignedHeaders",
        "Signature",
    } <= set(fields):
        raise _auth_error(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'. "
            f"Authorization={authorization}",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _auth_error("IncompleteSignatureException", "Malformed credential scope.")
    access_key, day, region, service = scope[:4]
    secret = fake.credentials.get(access_key)
    if secret is None:
        raise _auth_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _auth_error(
            "IncompleteSignatureException", "Missing or malformed X-Amz-Date header."
        ) from None
    if abs(signed_at.timestamp() - now) > MAX_SIGNATURE_SKEW:

        def stamp(at: float) -> str:
            return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")

        raise _auth_error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{stamp(now - MAX_SIGNATURE_SKEW)} ({stamp(now)} - 5 min.)"
            if signed_at.timestamp() < now
            else f"Signature not yet current: {amz_date} is still later than "
            f"{stamp(now + MAX_SIGNATURE_SKEW)} ({stamp(now)} + 5 min.)",
        )
    if region != fake.region or service != "sqs" or day != amz_date[:8]:
        raise _auth_error(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region and service 'sqs', "
            f"not '{region}'/'{service}'.",
        )
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        raise _auth_error(
            "InvalidSignatureException", "The host header and every signed header must be sent."
        )
    path, _, query = raw_path.partition("?")
    canonical_query = "&".join(
        f"{k}={v}"
        for k, v in sorted(
            (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
            for k, _, v in (pair.partition("=") for pair in query.split("&") if pair)
        )
    )
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed)
    # SQS signs the payload itself: the hash is always of the body that arrived (a signed
    # x-amz-content-sha256 header cannot vouch for a body altered after signing).
    payload = hashlib.sha256(body).hexdigest()
    canonical = "\n".join(
        [
            method,
            quote(_remove_dot_segments(path), safe="/~"),
            canonical_query,
            canonical_headers,
            fields["SignedHeaders"],
            payload,
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            "/".join(scope[1:]),
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    signing_key = _hmac(("AWS4" + secret).encode(), day)
    for part in (region, service, "aws4_request"):
        signing_key = _hmac(signing_key, part)
    expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise _auth_error(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )


# -- one request, one answer -----------------------------------------------------------------


@dataclass
class WireAnswer:
    """What the server does with one request: answer it, stall after the headers, or drop the
    connection."""

    status: int
    headers: dict[str, str]
    body: bytes
    action: str = "answer"  # "answer", "stall" or "drop"


def _decode(method: str, headers: Mapping[str, str], body: bytes) -> tuple[str, dict[str, Any]]:
    target = headers.get("x-amz-target", "")
    operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    if method != "POST" or operation not in SQS_OPERATIONS:
        raise _auth_error(
            "UnknownOperationException",
            f"Unknown operation: X-Amz-Target={target!r} ({method}).",
        )
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_CONTENT_TYPE:
        raise _auth_error(
            "UnknownOperationException",
            f"Content-Type {content_type!r} is not {JSON_CONTENT_TYPE}: only SQS's JSON protocol "
            "is served.",
        )
    try:
        params = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _auth_error("SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(params, dict):
        raise _auth_error("SerializationException", "The request body is not a JSON object.")
    return operation, params


def _base_headers(fake: FakeSQS) -> dict[str, str]:
    return {
        "Content-Type": JSON_CONTENT_TYPE,
        "x-amzn-RequestId": str(uuid.uuid4()),
        "Date": email.utils.formatdate(fake.wall_clock(), usegmt=True),
    }


def _error_answer(fake: FakeSQS, exc: FakeError) -> WireAnswer:
    headers = _base_headers(fake) | exc.headers()
    return WireAnswer(exc.status, headers, json.dumps(exc.body()).encode())


async def answer(
    fake: FakeSQS, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
) -> WireAnswer:
    """Answer one HTTP request. ``headers`` must have lower-case names.

    Cancellation: an operation that arrived has taken effect (a long poll goes on without its
    client, see :class:`FakeQueue`); cancelling only drops the answer.
    """
    try:
        operation, params = _decode(method, headers, body)
        if fake.verify_signatures:
            verify_signature(fake, method, raw_path, headers, body, fake.wall_clock())
    except FakeError as exc:
        await trio.lowlevel.checkpoint()
        return _error_answer(fake, exc)
    fault = fake.faults.take(operation, params)
    fake.arrived(operation, params, fault.kind if fault is not None else None)
    if fault is not None and fault.kind == "drop" and not fault.after:
        await trio.lowlevel.checkpoint()
        return WireAnswer(0, {}, b"", action="drop")
    if fault is not None and fault.kind == "error":
        await trio.lowlevel.checkpoint()
        return _error_answer(
            fake,
            FakeError(
                fault.code,
                fault.message,
                status=fault.status,
                sender_fault=fault.status < 500,
            ),
        )
    try:
        result = await fake.call(operation, params, arrived=True)
    except FakeError as exc:
        return _error_answer(fake, exc)
    if fault is not None and fault.kind == "corrupt_md5" and result.get("Messages"):
        fake.faults.used(fault, operation)
        first = result["Messages"][0]
        result["Messages"][0] = {**first, "MD5OfBody": "0" * 32}
    if fault is not None and fault.kind == "delay":
        try:
            await trio.sleep(fault.seconds)
        except trio.Cancelled:
            fake.answer_abandoned(operation, params, result)
            raise
    if fault is not None and fault.kind == "drop":
        return WireAnswer(0, {}, b"", action="drop")
    answer = WireAnswer(200, _base_headers(fake), json.dumps(result).encode())
    if fault is not None and fault.kind == "stall":
        answer.action = "stall"
    return answer


# -- the httpx transport ---------------------------------------------------------------------


class _Stalled(httpx.AsyncByteStream):
    """A response body that never comes (the read timeout, if any, ends the wait).

    Not an async generator: one abandoned by a cancelled read would be reported by Trio with a
    ResourceWarning when garbage collected.
    """

    def __init__(self, request: httpx.Request, read_timeout: float | None) -> None:
        self._request = request
        self._read_timeout = read_timeout

    def __aiter__(self) -> _Stalled:
        return self

    async def __anext__(self) -> bytes:
        if self._read_timeout is None:
            await trio.sleep_forever()
        await trio.sleep(self._read_timeout)
        raise httpx.ReadTimeout("the response body never came (stalled)", request=self._request)


class FakeSQSTransport(httpx.AsyncBaseTransport):
    """Serves a :class:`FakeSQS` to an ``httpx.AsyncClient``, in process, without sockets.

    Honours the request's read timeout (``httpx.ReadTimeout``) on Trio's clock. A dropped
    connection raises ``httpx.RemoteProtocolError``, as a server closing without an answer does.

    Cancellation: cancelling a request drops its answer; what reached the fake has taken
    effect (a long poll goes on server-side, as on SQS).
    """

    def __init__(self, fake: FakeSQS) -> None:
        self.fake = fake
        #: Requests whose answer was given up by the client (cancelled or timed out).
        self.abandoned = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Read the stream itself, not request.aread(): that returns the content httpx cached
        # when the request was built and never iterates the stream, and the client learns
        # that its request is on the wire (on_sent) from that iteration.
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            with trio.fail_after(read_timeout if read_timeout is not None else float("inf")):
                reply = await answer(
                    self.fake, request.method, request.url.raw_path.decode("ascii"), headers, body
                )
        except trio.TooSlowError:
            self.abandoned += 1
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from None
        except trio.Cancelled:
            self.abandoned += 1
            raise
        if reply.action == "drop":
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        reply.headers["Content-Length"] = str(len(reply.body))
        if reply.action == "stall":
            return httpx.Response(
                reply.status,
                headers=reply.headers,
                stream=_Stalled(request, read_timeout),
                request=request,
            )
        return httpx.Response(
            reply.status, headers=reply.headers, content=reply.body, request=request
        )
