"""A SigV4 signer for the hot SQS calls, byte-identical to botocore's ``SigV4Auth.add_auth``.

botocore's signer rebuilds everything per request: an ``HTTPHeaders`` (an ``email.message``),
``urlsplit`` of the URL three times, the four HMACs of the signing key. This one derives what
depends only on the URL once (canonical URI, canonical query string, ``host``), caches the signing
key per (secret key, date, region, service), and takes the time as a parameter, so that a skew
measured from the server's ``Date`` header can be corrected.

What it reproduces from botocore (``botocore/auth.py``, ``SigV4Auth``):

- canonical URI: ``quote(remove_dot_segments(path), safe="/~")`` (``"/"`` for an empty path;
  empty segments, ``.`` and ``..`` removed);
- canonical query string from the URL: pairs split at ``&`` and the first ``=``, sorted, *not*
  re-quoted;
- signed headers: every header but the hop-by-hop and tracing ones
  (``SIGNED_HEADERS_BLACKLIST``), names lowercased, values whitespace-folded
  (``" ".join(value.split())``), repeated names joined with ``,``; ``host`` derived from the URL
  when absent (lowercase, without a default port, IPv6 literals in brackets);
- payload hash: ``X-Amz-Content-SHA256`` when the request carries one, else the body's SHA-256;
- the date header: ``X-Amz-Date``, or ``Date`` in RFC 1123 form when the request has a ``Date``
  header; ``X-Amz-Security-Token`` when the credentials have a token;
- the resulting headers in botocore's order: the request's own headers (without the ones
  replaced), then the date header, the token, ``Authorization``.

The only case it does not cover is the one the SQS client never uses: unsigned payloads and
streaming checksums (``request.context``), which are S3 features.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import hmac
import re
from collections.abc import Mapping
from email.utils import formatdate
from hashlib import sha256
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST as _BOTOCORE_UNSIGNED

__all__ = ["Signer", "canonical_url_parts", "utcnow"]

SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256_HASH = sha256(b"").hexdigest()

# The headers botocore leaves unsigned, read from the installed botocore: the list grew with
# botocore's versions (1.34 signs ``traceparent``, ``tracestate`` and ``baggage``; newer ones
# do not), and the signer must produce exactly what the installed botocore would.
SIGNED_HEADERS_BLACKLIST = frozenset(name.lower() for name in _BOTOCORE_UNSIGNED)

# How many signing keys a Signer keeps: one per (secret, day) is what a client needs; a few more
# cover credentials rotating around midnight. Past it, the oldest is dropped.
KEY_CACHE_SIZE = 8

_DEFAULT_PORTS = {"http": 80, "https": 443}

try:  # the very check botocore makes, so that the ``host`` header agrees on odd hosts
    from botocore.utils import is_valid_ipv6_endpoint_url as _is_ipv6_url
except ImportError:  # pragma: no cover - every botocore the project supports has it
    _IPV6 = re.compile(r"^\[[0-9a-fA-F:.]+(%25[\w.~-]+)?\]$")

    def _is_ipv6_url(url: str) -> bool:
        return _IPV6.match(f"[{urlsplit(url).hostname}]") is not None


def _remove_dot_segments(url: str) -> str:
    # RFC 3986 5.2.4, and consecutive slashes removed, as botocore.utils.remove_dot_segments.
    if not url:
        return ""
    output: list[str] = []
    for segment in url.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if output:
                    output.pop()
            else:
                output.append(segment)
    first = "/" if url[0] == "/" else ""
    last = "/" if url[-1] == "/" and output else ""
    return first + "/".join(output) + last


def _host_from_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _is_ipv6_url(url):
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return host


@functools.lru_cache(maxsize=64)
def canonical_url_parts(url: str) -> tuple[str, str, str]:
    """The canonical URI, the canonical query string and the ``host`` header for ``url``."""
    parts = urlsplit(url)
    path = quote(_remove_dot_segments(parts.path) if parts.path else "/", safe="/~")
    query = ""
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            pairs.append((key, value))
        query = "&".join(f"{key}={value}" for key, value in sorted(pairs))
    return path, query, _host_from_url(url)


def utcnow() -> datetime.datetime:
    """The signing clock: now, in UTC. (Tests replace it, as they replace botocore's.)"""
    return datetime.datetime.now(datetime.timezone.utc)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), sha256).digest()


class Signer:
    """Signs requests for one region and service with SigV4, as botocore does.

    Args:
        region: The signing region.
        service: The signing service name.
    """

    __slots__ = ("_keys", "_scope_tail", "_templates", "region", "service")

    def __init__(self, region: str, service: str = "sqs") -> None:
        self.region = region
        self.service = service
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._templates: dict[tuple[Any, ...], _Template] = {}

    def signing_key(self, secret_key: str, datestamp: str) -> bytes:
        """The derived key for ``secret_key`` on ``datestamp`` (``YYYYMMDD``), cached."""
        cache_key = (secret_key, datestamp, self.region, self.service)
        key = self._keys.get(cache_key)
        if key is None:
            k_date = _hmac(f"AWS4{secret_key}".encode(), datestamp)
            k_region = _hmac(k_date, self.region)
            k_service = _hmac(k_region, self.service)
            key = _hmac(k_service, "aws4_request")
            if len(self._keys) >= KEY_CACHE_SIZE:
                del self._keys[next(iter(self._keys))]
            self._keys[cache_key] = key
        return key

    def sign(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        credentials: Any,
        now: datetime.datetime,
    ) -> dict[str, str]:
        """The request's headers with the SigV4 date, token and ``Authorization`` headers.

        Args:
            method: The HTTP method.
            url: The full request URL.
            headers: The request's headers before signing (not modified).
            body: The request body.
            credentials: Anything with ``access_key``, ``secret_key`` and ``token``
                (botocore's ``ReadOnlyCredentials``).
            now: The signing time: a naive datetime in UTC, or an aware one.
        """
        if now.tzinfo is not None:
            now = now.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        timestamp = now.strftime(SIGV4_TIMESTAMP)
        datestamp = timestamp[:8]
        token = credentials.token
        # What depends only on the method, URL, headers and token is worked out once.
        key = (method, url, token, tuple(headers.items()))
        template = self._templates.get(key)
        if template is None:
            template = _template(method, url, headers, token)
            if len(self._templates) >= TEMPLATE_CACHE_SIZE:
                del self._templates[next(iter(self._templates))]
            self._templates[key] = template
        out = dict(template.headers)
        if template.use_date:
            date = formatdate(int(calendar.timegm(now.timetuple())))
            out["Date"] = date
        else:
            date = timestamp
            out["X-Amz-Date"] = timestamp
        if token:
            out["X-Amz-Security-Token"] = token
        payload_hash = template.payload_hash
        if payload_hash is None:
            payload_hash = sha256(body).hexdigest() if body else EMPTY_SHA256_HASH
        canonical_request = (
            f"{template.before}{date}{template.after}\n\n{template.signed_headers}\n{payload_hash}"
        )
        scope = datestamp + self._scope_tail
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n"
            f"{sha256(canonical_request.encode('utf-8')).hexdigest()}"
        )
        signature = hmac.new(
            self.signing_key(credentials.secret_key, datestamp),
            string_to_sign.encode("utf-8"),
            sha256,
        ).hexdigest()
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={template.signed_headers}, Signature={signature}"
        )
        return out


# How many request templates a Signer keeps: one per operation (and token) is what a client
# needs.
TEMPLATE_CACHE_SIZE = 64


class _Template:
    """What a signature depends on besides the time and the body: the headers to send (before
    the date, token and ``Authorization``), and the canonical request around the date header's
    value (``before`` + the date + ``after``; the date header is always signed)."""

    __slots__ = ("after", "before", "headers", "payload_hash", "signed_headers", "use_date")

    def __init__(
        self,
        headers: dict[str, str],
        use_date: bool,
        payload_hash: str | None,
        before: str,
        after: str,
        signed_headers: str,
    ) -> None:
        self.headers = headers
        self.use_date = use_date
        self.payload_hash = payload_hash
        self.before = before
        self.after = after
        self.signed_headers = signed_headers


def _template(method: str, url: str, headers: Mapping[str, str], token: str | None) -> _Template:
    # What botocore removes before it adds its own, and whether a Date header is used.
    use_date = False
    payload_hash = None
    out: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname == "authorization" or lname == "x-amz-date":
            continue
        if lname == "date":
            use_date = True
            continue
        if lname == "x-amz-security-token" and token:
            continue
        if lname == "x-amz-content-sha256" and payload_hash is None:
            payload_hash = value
        out[name] = value
    date_name = "date" if use_date else "x-amz-date"
    signing = dict(out)
    signing[date_name] = ""  # (its value is the time, filled in per request)
    if token:
        signing["X-Amz-Security-Token"] = token

    path, query, host = canonical_url_parts(url)
    signed: dict[str, list[str]] = {}
    for name, value in signing.items():
        lname = name.lower()
        if lname not in SIGNED_HEADERS_BLACKLIST:
            values = signed.get(lname)
            if values is None:
                signed[lname] = [value]
            else:
                values.append(value)
    if "host" not in signed:
        signed["host"] = [host]
    names = sorted(signed)
    lines = [f"{lname}:{','.join(' '.join(v.split()) for v in signed[lname])}" for lname in names]
    # The date header's line is its name and the time alone (the request's own date headers
    # were removed above): the canonical headers are what comes before the time and after it.
    at = names.index(date_name)
    before = "".join(line + "\n" for line in lines[:at]) + f"{date_name}:"
    after = "".join("\n" + line for line in lines[at + 1 :])
    return _Template(
        headers=out,
        use_date=use_date,
        payload_hash=payload_hash,
        before=f"{method.upper()}\n{path}\n{query}\n{before}",
        after=after,
        signed_headers=";".join(names),
    )
