"""SigV4 verification for the in-memory SQS, written from AWS's Signature Version 4 specification,
independently of botocore's signer (the tests hold the two against each other)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Protocol
from urllib.parse import quote, unquote

from ._errors import coral_error

__all__ = ["MAX_SIGNATURE_SKEW", "verify_signature"]

MAX_SIGNATURE_SKEW = 300.0


class SigningKeys(Protocol):
    """Whom the server accepts (a :class:`FakeSQS`): access key id -> secret, and its region."""

    @property
    def credentials(self) -> Mapping[str, str]: ...

    @property
    def region(self) -> str: ...


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


def verify_signature(
    fake: SigningKeys,
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
        raise coral_error(
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
        raise coral_error(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'. "
            f"Authorization={authorization}",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise coral_error("IncompleteSignatureException", "Malformed credential scope.")
    access_key, day, region, service = scope[:4]
    secret = fake.credentials.get(access_key)
    if secret is None:
        raise coral_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise coral_error(
            "IncompleteSignatureException", "Missing or malformed X-Amz-Date header."
        ) from None
    if abs(signed_at.timestamp() - now) > MAX_SIGNATURE_SKEW:

        def stamp(at: float) -> str:
            return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")

        raise coral_error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{stamp(now - MAX_SIGNATURE_SKEW)} ({stamp(now)} - 5 min.)"
            if signed_at.timestamp() < now
            else f"Signature not yet current: {amz_date} is still later than "
            f"{stamp(now + MAX_SIGNATURE_SKEW)} ({stamp(now)} + 5 min.)",
        )
    if region != fake.region or service != "sqs" or day != amz_date[:8]:
        raise coral_error(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region and service 'sqs', "
            f"not '{region}'/'{service}'.",
        )
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        raise coral_error(
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
    # (compare_digest refuses str with non-ASCII characters: compare bytes)
    given = fields["Signature"].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode(), given):
        raise coral_error(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
