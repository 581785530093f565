"""Opening a client: everything that may block (the service model, config files, the credential
chain) runs in a worker thread, then the client gets its own HTTP connections and credential
refresher."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from botocore.credentials import Credentials
from botocore.session import Session

from . import _json
from ._client import CLOSE_TIMEOUT, DEFAULT_CALL_TIMEOUT, DEFAULT_TIMEOUT, SQSClient
from ._config import Limits, RetryPolicy
from ._credentials import CredentialCache, CredentialSource, is_refreshable, provider_errors
from ._exceptions import ConfigurationError, CredentialsError
from ._protocol import (
    SQSProtocol,
    check_region,
    load_service_data,
    resolve_endpoint,
    service_data_loaded,
)
from ._transport import TrioTransport, ssl_context
from ._util import raise_unwrapped

__all__ = ["open_client"]

log = logging.getLogger("trio_sqs.client")


def proxy_for(endpoint: str) -> str | None:
    """The proxy the environment names for ``endpoint`` (``HTTPS_PROXY``/``HTTP_PROXY``/
    ``ALL_PROXY``, any case), unless ``NO_PROXY`` excludes its host.

    Excluded only where urllib (as curl) and httpx (which routes the requests then) both read
    ``NO_PROXY`` as excluding it: where the two differ (``.example.com`` and ``example.com``,
    say), or for entries not read here (URL patterns, address ranges), the proxy applies, so
    that a proxy is never ignored where httpx would use it.
    """
    url = httpx.URL(endpoint)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    entries = [entry.strip() for entry in proxies.get("no", "").split(",") if entry.strip()]
    if "*" in entries:
        return None  # no proxy for any host, for both
    host = url.host.lower()
    hostport = host if url.port is None else f"{host}:{url.port}"
    by_urllib = urllib.request.proxy_bypass(hostport) or urllib.request.proxy_bypass(host)
    if by_urllib and any(_httpx_excludes(entry, host, url.port) for entry in entries):
        return None
    return proxy


def _httpx_excludes(entry: str, host: str, port: int | None) -> bool:
    """Whether httpx reads the ``NO_PROXY`` entry as excluding ``host`` (and ``port``, None for
    the scheme's default); False for what is not read here (then the proxy applies)."""
    if "://" in entry or "/" in entry:
        return False  # URL patterns, address ranges
    try:
        address = ipaddress.ip_address(entry)
    except ValueError:
        pass
    else:
        return host == str(address)
    if entry.lower() == "localhost":
        return host == "localhost"
    name, colon, entry_port = entry.rpartition(":")
    if colon:
        if not entry_port.isdigit() or int(entry_port) != port:
            return False
        entry = name
    entry = entry.lower()
    if entry.startswith("."):
        return host.endswith(entry) and len(host) > len(entry)  # subdomains only
    return host == entry or host.endswith("." + entry)


def _redacted(proxy: str) -> str:
    try:
        url = httpx.URL(proxy)
    except (httpx.InvalidURL, TypeError):
        return "(unparsable proxy URL)"
    if url.userinfo:
        url = url.copy_with(username="***", password=None)
    return str(url)


# -- opening a client ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resolved:
    region: str
    endpoint: str
    source: CredentialSource
    protocol: SQSProtocol


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _resolve_blocking(
    region: str | None,
    endpoint_url: str | None,
    profile: str | None,
    credentials: CredentialSource | None,
    access_key: tuple[str, str, str | None] | None,
    use_fips: bool | None,
    use_dualstack: bool | None,
) -> _Resolved:
    """Everything that may block: load the model, read config files, walk the credential chain."""
    data = load_service_data()
    # Whatever the config files or the credential chain raise (botocore's errors, a
    # credential_process's malformed answer, ...) is a CredentialsError.
    with provider_errors("cannot load AWS configuration"):
        session = Session(profile=profile)
        if region is None:
            region = session.get_config_variable("region")
        if use_fips is None:
            use_fips = bool(session.get_config_variable("use_fips_endpoint"))
        if use_dualstack is None:
            use_dualstack = bool(session.get_config_variable("use_dualstack_endpoint"))
        source: CredentialSource | None = credentials
        if source is None and access_key is not None:
            source = Credentials(*access_key, method="explicit")
        if source is None:
            source = session.get_credentials()
    if region is None:
        raise ConfigurationError(
            "no region: pass region=..., or set AWS_REGION / AWS_DEFAULT_REGION, "
            "or a region in the AWS config file",
            code="InvalidOption",
        )
    check_region(region, custom_endpoint=endpoint_url is not None)
    if source is None:
        raise CredentialsError(
            "no AWS credentials found (environment, shared files, SSO, web identity, "
            "container or instance metadata)"
        )
    endpoint = resolve_endpoint(
        data,
        region,
        use_fips=bool(use_fips),
        use_dualstack=bool(use_dualstack),
        endpoint_url=endpoint_url,
    )
    return _Resolved(region, endpoint, source, SQSProtocol(data, endpoint, region))


@asynccontextmanager
async def open_client(
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    credentials: CredentialSource | None = None,
    use_fips: bool | None = None,
    use_dualstack: bool | None = None,
    limits: Limits | None = None,
    retry: RetryPolicy | None = None,
    verify: bool | str | ssl.SSLContext = True,
    transport: httpx.AsyncBaseTransport | None = None,
    http_client: httpx.AsyncClient | None = None,
    random_seed: int | None = None,
    trace_calls: bool = False,
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
) -> AsyncIterator[SQSClient]:
    """Open an SQS client that owns its HTTP connections and credential refresher.

    Args:
        region: The AWS region. Default: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the config file.
        endpoint_url: Override the endpoint (a local server). Default: ``AWS_ENDPOINT_URL_SQS``,
            then ``AWS_ENDPOINT_URL`` (ignored if ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``),
            then the endpoint botocore's rules give for the region.
        profile: A profile of the shared config and credentials files.
        aws_access_key_id, aws_secret_access_key, aws_session_token: Explicit static keys.
        credentials: A botocore ``Credentials`` object (refreshable or not) to use instead of the
            chain.
        use_fips, use_dualstack: Select FIPS / dual-stack endpoints. Default: from the config.
        limits: Connection budgets (:class:`Limits`). By default the long-poll budget is sized
            from the consumers sharing the client: the sum of the long polls each open consumer
            may keep in flight (its most pollers), at least 4, growing and shrinking as consumers
            open and close on it, so one client serves any number of consumers without starving
            one of them. ``Limits(max_receive_connections=N)`` fixes it at ``N``; consumers that
            may want more polls than that log a warning naming the size they need.
        retry: Retry policy (:class:`RetryPolicy`).
        verify: TLS verification: ``True`` (default: certifi's CA bundle, as httpx), a CA
            bundle path, an ``ssl.SSLContext`` (a client certificate, say), or ``False`` (no
            verification). A certificate the endpoint's host cannot be verified with fails the
            call at once (a :class:`TransportError` naming why; not retried).
        transport: An ``httpx.AsyncBaseTransport`` to send requests through instead of
            trio_sqs's own (``verify`` then does not apply). Everything above it runs
            unchanged: signing, serialization, parsing, retries, the consumer. Tests pass
            :meth:`trio_sqs.testing.FakeSQS.transport` here. The client closes it (once) on
            exit; if opening fails (an invalid option, no credentials) it is left untouched,
            still yours to reuse or close.
        http_client: An ``httpx.AsyncClient`` of your own to send requests with (its proxies,
            mounts, event hooks, certificates), through ``client.send``: signing and parsing
            stay trio_sqs's. Not closed by trio_sqs. Give its pool at least
            ``Limits.max_connections`` connections (``httpx.Limits(max_connections=None)``), so
            that no request waits inside httpx's pool (README, "Connection budgets"); with a
            smaller pool, requests queue there, and httpcore's pool has leaked a slot when
            such a waiting request is cancelled. Not with ``transport=``.
        random_seed: Seed of the client's own random generator (``random.Random``), which draws
            the jitter of its retry backoffs. Default: seeded from the operating system. The
            global ``random`` is never used.
        trace_calls: With ``opentelemetry-api`` installed, also make an OpenTelemetry CLIENT
            span ``SQS.{Operation}`` for every call other than the sends (each of which always
            gets its PRODUCER span ``send {queue}``; README, "Tracing"). Off by default: a
            consumer's long polls, deletes and heartbeats would each be a trace of its own.
        call_timeout: The most one call may take, in seconds, every attempt and backoff included
            (default 60); a call that takes longer raises :class:`TransportError` naming its last
            failure. A call with a read timeout of its own (a long poll: its wait plus 10 s) gets
            that on top. ``None``: only each attempt's own timeouts bound a call (30 s to
            connect, 30 s for the answer; 5 attempts: minutes).

    Requests go over trio_sqs's own HTTP/1.1 transport on Trio (README, "The HTTP transport"),
    wrapped in an ``httpx.AsyncClient``. When the environment names a proxy for the endpoint
    (``HTTPS_PROXY``, ``HTTP_PROXY`` or ``ALL_PROXY``, and ``NO_PROXY`` does not exclude its
    host), httpx's own transport is used instead, which honours them; this is logged once
    (logger ``trio_sqs.client``, INFO). A transport of your own (``transport=``) is used as
    given, proxies or not.

    Raises:
        ConfigurationError: for an invalid option, before any network I/O.
        CredentialsError: if no credentials can be found, or the provider fails to give them
            (whatever it raised is the ``__cause__``).

    Credentials are refreshed in the background, ahead of expiry, in the windows the credential
    source declares (botocore's defaults otherwise). A refresh that fails later never ends the
    block: it is logged, backed off and retried, and only the requests that need fresh
    credentials meanwhile raise :class:`CredentialsError`.

    Cancellation: leaving the block (normally, by an exception or by cancellation) cancels the
    credential refresher and closes the HTTP connections under a short shielded deadline.
    """
    limits = limits if limits is not None else Limits()
    retry = retry if retry is not None else RetryPolicy()
    if not isinstance(limits, Limits):
        raise ConfigurationError(f"limits must be a Limits, got {limits!r}", code="InvalidOption")
    if random_seed is not None and (
        isinstance(random_seed, bool) or not isinstance(random_seed, int)
    ):
        raise ConfigurationError(
            f"random_seed must be an integer or None, got {random_seed!r}", code="InvalidOption"
        )
    if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
        raise ConfigurationError(
            f"http_client must be an httpx.AsyncClient, got {http_client!r}", code="InvalidOption"
        )
    if http_client is not None and transport is not None:
        raise ConfigurationError(
            "give transport= or http_client=, not both (an httpx.AsyncClient has its transport)",
            code="InvalidOption",
        )
    if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
        raise ConfigurationError(
            f"transport must be an httpx.AsyncBaseTransport, got {transport!r}",
            code="InvalidOption",
        )
    if call_timeout is not None and (
        isinstance(call_timeout, bool)
        or not isinstance(call_timeout, (int, float))
        or not math.isfinite(call_timeout)
        or call_timeout <= 0
    ):
        raise ConfigurationError(
            f"call_timeout must be a positive number of seconds or None, got {call_timeout!r}",
            code="InvalidOption",
        )
    if not isinstance(verify, (bool, str, ssl.SSLContext)):
        raise ConfigurationError(
            f"verify must be True, False, a CA bundle path or an ssl.SSLContext, got {verify!r}",
            code="InvalidOption",
        )
    if not isinstance(trace_calls, bool):
        raise ConfigurationError(
            f"trace_calls must be True or False, got {trace_calls!r}", code="InvalidOption"
        )
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(
            f"retry must be a RetryPolicy, got {retry!r}", code="InvalidOption"
        )
    if (aws_access_key_id is None) != (aws_secret_access_key is None):
        raise ConfigurationError(
            "aws_access_key_id and aws_secret_access_key must be given together",
            code="InvalidOption",
        )
    if region is None:
        # As the AWS CLI v2 and the other SDKs: AWS_REGION first, then AWS_DEFAULT_REGION and the
        # profile's config (botocore reads only those two).
        region = os.environ.get("AWS_REGION", "").strip() or None
    if region is not None:
        check_region(region, custom_endpoint=True)
    if endpoint_url is None and not _env_flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        endpoint_url = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_url is not None:
        try:
            parsed = httpx.URL(endpoint_url)
            valid = (
                parsed.scheme in ("http", "https")
                and bool(parsed.host)
                and (parsed.port is None or 0 < parsed.port < 65536)
            )
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigurationError(
                f"endpoint_url={endpoint_url!r} is not a valid URL: {exc}", code="InvalidOption"
            ) from exc
        if not valid:
            raise ConfigurationError(
                f"endpoint_url={endpoint_url!r} must be an http(s) URL with a host "
                "(and a port from 1 to 65535)",
                code="InvalidOption",
            )
    access_key = (
        (aws_access_key_id, aws_secret_access_key, aws_session_token)
        if aws_access_key_id is not None and aws_secret_access_key is not None
        else None
    )
    args = (region, endpoint_url, profile, credentials, access_key, use_fips, use_dualstack)
    if (
        region is not None
        and endpoint_url is not None
        and profile is None
        and use_fips is not None
        and use_dualstack is not None
        and (
            access_key is not None or (credentials is not None and not is_refreshable(credentials))
        )
        and service_data_loaded()
    ):
        # Everything is given and the model is in memory: nothing to read or fetch, so no worker
        # thread (which would also let trio.testing.MockClock's autojump skip ahead meanwhile).
        resolved = _resolve_blocking(*args)
        await trio.lowlevel.checkpoint()
    else:
        resolved = await trio.to_thread.run_sync(_resolve_blocking, *args, abandon_on_cancel=True)
    cache = CredentialCache(resolved.source)
    credentials = await cache.get()
    protocol = resolved.protocol
    # Our SigV4 signer, compared once with botocore's: any difference and botocore signs.
    mismatch = protocol.check_signer(credentials)
    protocol.fast = mismatch is None
    if mismatch is not None:
        log.warning(
            "trio_sqs's SigV4 signer does not match botocore's on this botocore (%s): every "
            "request is signed by botocore instead (slower; clock skew cannot be corrected). "
            "Please report it with your botocore version.",
            mismatch,
        )
    try:
        _json.configure()
    except ValueError as exc:  # $TRIO_SQS_JSON
        raise ConfigurationError(str(exc), code="InvalidOption") from None
    direct: TrioTransport | None = None
    own_http = http_client is None
    proxy = proxy_for(resolved.endpoint) if transport is None and own_http else None
    tls: ssl.SSLContext | bool | str = verify
    if (
        own_http
        and transport is None
        and (proxy is not None or resolved.endpoint.startswith("https:"))
    ):
        # Built now, so that a CA bundle that cannot be read is an error here, not at the
        # first call.
        try:
            tls = ssl_context(verify)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(
                f"verify={verify!r}: cannot load the CA certificates: {exc}",
                code="InvalidOption",
            ) from exc
    if proxy is not None:
        log.info(
            "the environment names the proxy %s for %s: requests go through it, on httpx's "
            "transport (not trio_sqs's own)",
            _redacted(proxy),
            resolved.endpoint,
        )
    elif transport is None and own_http:
        # Requests wait for their budget's slot before they reach the transport, so it never
        # makes one wait: it is as large as both budgets, or unbounded when the long-poll budget
        # grows with the consumers (the budgets still bound the connections in use).
        try:
            direct = transport = TrioTransport(
                verify=tls,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_connections,
                keepalive_expiry=limits.keepalive_expiry,
            )
        except ValueError as exc:  # $TRIO_SQS_HTTP_PARSER
            raise ConfigurationError(str(exc), code="InvalidOption") from None
    try:
        http = http_client or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_connections,
                keepalive_expiry=limits.keepalive_expiry,
            ),
            timeout=httpx.Timeout(DEFAULT_TIMEOUT),
            # For httpx's own transports (a proxy): a context, as httpx 0.28 wants.
            verify=tls if proxy is not None else True,
            # Only when the environment names a proxy for the endpoint (above) does httpx
            # read it.
            trust_env=proxy is not None,
            follow_redirects=False,
            transport=transport,
        )
    except (ValueError, ImportError, httpx.InvalidURL) as exc:
        # A proxy (or NO_PROXY entry) httpx cannot use: an unknown scheme, socks5:// without
        # socksio, an address it cannot parse.
        raise ConfigurationError(
            f"the proxy settings of the environment cannot be used for {resolved.endpoint} "
            f"({_redacted(proxy or '')}): {type(exc).__name__}: {exc}",
            code="InvalidOption",
        ) from exc
    client = SQSClient(
        resolved.protocol,
        cache,
        http,
        limits=limits,
        retry=retry,
        random_seed=random_seed,
        trace_calls=trace_calls,
        direct=direct,
        call_timeout=float(call_timeout) if call_timeout is not None else None,
    )
    try:
        try:
            async with trio.open_nursery() as nursery:
                if cache.refreshable:
                    nursery.start_soon(cache.run_refresher)
                try:
                    yield client
                finally:
                    client._closed = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The refresher never raises (a failed refresh is logged and retried, and reaches
            # only the requests that need it): the error is the caller's own, let it out as is.
            raise_unwrapped(group)
    finally:
        if own_http:  # (an http_client given is the caller's to close)
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await http.aclose()
