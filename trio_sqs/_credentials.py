"""Credentials that never block the event loop, and never take the client down.

botocore's credential chain does blocking I/O (IMDS, STS for web identity / IRSA, the container
endpoint for EKS Pod Identity, SSO). Calling it on the Trio thread during a refresh stalls every task,
so resolution and refresh always run in a worker thread, and requests read a cached frozen snapshot.

A background task re-reads the source every few seconds, so botocore refreshes it in its advisory
window, ahead of expiry; requests wait for a refresh only inside the source's mandatory window, and
one refresh runs at a time. Both windows are the source's own (botocore's defaults when it declares
none), so a source that considers itself fresh is not refreshed on every request.

Whatever a refresh raises (botocore's errors, STS's ``ClientError``, botocore's ``RuntimeError``
for refreshed credentials that are still expired, any other exception from a provider) becomes a
:class:`CredentialsError` in one place, :func:`provider_errors`. The background refresher logs it,
backs off (growing, capped, jittered) and retries; it never raises. A request that needs a refresh
while one is backing off gets the last failure as a ``CredentialsError`` at once (concurrent
requests share one attempt), and the client recovers as soon as a later refresh succeeds.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from botocore.credentials import ReadOnlyCredentials

from ._exceptions import CredentialsError

__all__ = [
    "CredentialCache",
    "CredentialSource",
    "RefreshWindows",
    "is_refreshable",
    "provider_errors",
]

log = logging.getLogger("trio_sqs.credentials")

# botocore's own defaults for RefreshableCredentials (credentials.py): refresh is advised 15 min
# before expiry and mandatory 10 min before. Used for a source that does not declare its windows.
DEFAULT_ADVISORY_REFRESH_SECONDS = 15 * 60
DEFAULT_MANDATORY_REFRESH_SECONDS = 10 * 60
# How often, at most, the background task re-reads the source. The read goes to a worker thread;
# botocore answers at once with its current keys unless its advisory window is open. For a source
# whose advisory window is short, the task reads twice per window (never more than once a second).
REFRESH_CHECK_INTERVAL = 30.0
MIN_CHECK_INTERVAL = 1.0
# A request inside the mandatory window re-reads the source at most this often while the keys it
# was last given have not expired: a source whose own (undeclared) windows say it is fresh answers
# with the same keys, and must not cost a worker thread per request.
REFETCH_INTERVAL = 10.0
# Back-off after a failed refresh: the n-th consecutive failure waits a random time between half
# and all of min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (n - 1)) seconds before the next attempt.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0


class CredentialSource(Protocol):
    """Anything shaped like botocore's ``Credentials``: gives a frozen snapshot (may block)."""

    def get_frozen_credentials(self) -> Any: ...


@contextmanager
def provider_errors(what: str) -> Iterator[None]:
    """Map whatever a credential provider (or botocore around it) raises to CredentialsError.

    ``CredentialsError`` passes as is; ``BaseException``\\ s that are not ``Exception``\\ s
    (``trio.Cancelled``, ``KeyboardInterrupt``) are never touched.
    """
    try:
        yield
    except CredentialsError:
        raise
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise CredentialsError(f"{what}: {detail}") from exc


def _window(source: object, name: str, default: float) -> float:
    value = getattr(source, name, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if not math.isfinite(value) or value < 0:
        return default
    return float(value)


@dataclass(frozen=True, slots=True)
class RefreshWindows:
    """How long before expiry a source advises a refresh, and when it makes one mandatory."""

    advisory: float
    mandatory: float

    @classmethod
    def of(cls, source: object) -> RefreshWindows:
        """The source's own windows, or botocore's defaults when it does not declare them.

        botocore has no public accessor for them: ``RefreshableCredentials`` (and every provider's
        credentials, which are its subclasses) keep them in ``_advisory_refresh_timeout`` and
        ``_mandatory_refresh_timeout``, class defaults that ``advisory_timeout=`` /
        ``mandatory_timeout=`` override per instance. A mandatory window wider than the advisory
        one acts as the advisory one (botocore only looks at it once the advisory one is open).
        """
        advisory = _window(source, "_advisory_refresh_timeout", DEFAULT_ADVISORY_REFRESH_SECONDS)
        mandatory = _window(source, "_mandatory_refresh_timeout", DEFAULT_MANDATORY_REFRESH_SECONDS)
        return cls(advisory, min(mandatory, advisory))

    @property
    def check_interval(self) -> float:
        """How often the background task reads the source: twice inside the advisory window's
        lead over the mandatory one, between MIN_CHECK_INTERVAL and REFRESH_CHECK_INTERVAL."""
        lead = self.advisory - self.mandatory
        if lead <= 0:
            return REFRESH_CHECK_INTERVAL
        return max(MIN_CHECK_INTERVAL, min(REFRESH_CHECK_INTERVAL, lead / 2))


def backoff_delay(failures: int, rng: random.Random) -> float:
    """The pause after the ``failures``-th consecutive failed refresh (1, 2, ...): growing,
    capped at BACKOFF_MAX, jittered over the upper half of its ceiling."""
    ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** min(max(failures, 1) - 1, 64))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def _refresh_needed(source: CredentialSource, refresh_in: float) -> bool:
    check = getattr(source, "refresh_needed", None)
    if check is None:
        return False
    return bool(check(refresh_in))


def is_refreshable(source: CredentialSource) -> bool:
    """Whether ``source`` refreshes itself (botocore's RefreshableCredentials and the like):
    reading it may then do I/O, so it is read in a worker thread."""
    return hasattr(source, "refresh_needed")


class CredentialCache:
    """A cached snapshot of credentials from a (possibly blocking) botocore credential source.

    Args:
        source: A botocore ``Credentials`` object, refreshable or not.
        rng: The random source for the back-off's jitter (seed it for reproducible runs).
            Default: a ``random.Random`` of the cache's own, never the global one.
    """

    def __init__(self, source: CredentialSource, *, rng: random.Random | None = None) -> None:
        self._source = source
        self._windows = RefreshWindows.of(source)
        self._rng = rng if rng is not None else random.Random()
        self._snapshot: ReadOnlyCredentials | None = None
        self._lock = trio.Lock()
        self._fetched_at: float | None = None  # Trio time of the last successful refresh
        self._failure: CredentialsError | None = None  # the last refresh's, until one succeeds
        self._failures = 0  # consecutive failed refreshes
        self._retry_at = -math.inf  # no refresh is attempted before this (Trio time)
        self._attempts = 0  # refreshes that ran to their end (succeeded or failed)
        self.refreshes = 0  # successful ones

    @property
    def refreshable(self) -> bool:
        return is_refreshable(self._source)

    @property
    def windows(self) -> RefreshWindows:
        """The source's refresh windows (read once: botocore fixes them when it makes it)."""
        return self._windows

    @property
    def last_failure(self) -> CredentialsError | None:
        """The last refresh's failure, or ``None`` once a refresh has succeeded."""
        return self._failure

    async def get(self) -> ReadOnlyCredentials:
        """Return the current snapshot, refreshing first only if it is missing or inside the
        source's mandatory window.

        Raises:
            CredentialsError: if that refresh fails, or the last one failed and the next attempt
                is not due yet (the snapshot is then not handed out).

        Cancellation: safe at any point; an abandoned refresh thread finishes on its own and its
        result is still stored.
        """
        if self._must_refresh():
            async with self._lock:
                if self._must_refresh():
                    self._raise_if_backing_off()
                    await self._refresh()
        else:
            await trio.lowlevel.checkpoint()
        snapshot = self._snapshot
        assert snapshot is not None
        return snapshot

    def current(self) -> ReadOnlyCredentials | None:
        """The current snapshot when no refresh is due (no checkpoint), else None: then
        :meth:`get`, which refreshes (or raises what the last refresh failed with)."""
        if self._must_refresh():
            return None
        return self._snapshot

    def _must_refresh(self) -> bool:
        if self._snapshot is None:
            return True
        if not self.refreshable:
            return False
        with provider_errors("cannot ask the credential source whether to refresh"):
            if not _refresh_needed(self._source, self._windows.mandatory):
                return False
            recent = (
                self._fetched_at is not None
                and trio.current_time() - self._fetched_at < REFETCH_INTERVAL
            )
            # Read again soon after a refresh only if the keys it gave have expired.
            return not recent or _refresh_needed(self._source, 0)

    def _raise_if_backing_off(self) -> None:
        failure = self._failure
        if failure is not None and trio.current_time() < self._retry_at:
            raise CredentialsError(failure.message) from failure.__cause__

    async def _refresh(self) -> None:
        """One refresh attempt; records its outcome (and the back-off after a failure)."""
        try:
            with provider_errors("credential refresh failed"):
                if self.refreshable:
                    await trio.to_thread.run_sync(self._refresh_blocking, abandon_on_cancel=True)
                else:
                    # Static keys: freezing them is a copy, no I/O, so no worker thread (a thread
                    # would also let trio.testing.MockClock's autojump skip ahead while it runs).
                    self._refresh_blocking()
                    await trio.lowlevel.checkpoint()
        except CredentialsError as exc:
            self._attempts += 1
            self._failures += 1
            self._failure = exc
            self._retry_at = trio.current_time() + backoff_delay(self._failures, self._rng)
            raise
        self._attempts += 1
        self._failures = 0
        self._failure = None
        self._retry_at = -math.inf
        self._fetched_at = trio.current_time()

    def _refresh_blocking(self) -> None:
        """Refresh and store the snapshot (in a worker thread).

        The snapshot is stored by the thread itself, so a refresh whose waiting task was cancelled
        (and abandoned the thread) still lands: botocore's source counts itself refreshed either
        way, and the cache must not keep serving the expired keys.
        """
        frozen = self._source.get_frozen_credentials()
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise CredentialsError("the credential provider returned no credentials")
        # A single reference assignment: atomic, safe to read from the Trio thread.
        self._snapshot = ReadOnlyCredentials(frozen.access_key, frozen.secret_key, frozen.token)
        self.refreshes += 1

    async def run_refresher(self, *, check_interval: float | None = None) -> None:
        """Re-read the source in a worker thread every ``check_interval`` seconds (default: from
        the source's windows, see :attr:`RefreshWindows.check_interval`), so botocore refreshes
        in its advisory window, ahead of expiry, and the snapshot follows any refresh made
        elsewhere. Runs until cancelled, and never raises.

        A failed refresh is logged (a warning, with its cause) and retried after a back-off
        (:func:`backoff_delay`); meanwhile requests keep the old snapshot until the mandatory
        window, and get the failure as :class:`CredentialsError` inside it.

        Cancellation: stops at once; a refresh already in its thread finishes there and its
        result is still stored.
        """
        if not self.refreshable:
            await trio.sleep_forever()
        interval = check_interval if check_interval is not None else self._windows.check_interval
        # The snapshot was just read (open_client reads it before starting this task).
        wake = trio.current_time() + interval
        while True:
            await trio.sleep_until(wake)
            # Read the source even when botocore does not ask for a refresh: it may have been
            # refreshed behind our back (a refresh we abandoned, or a boto3 client sharing it),
            # and the snapshot must follow. When nothing is due, botocore answers at once with the
            # current keys; in its advisory window it refreshes them first.
            seen = self._attempts
            async with self._lock:
                # A request refreshed while this task waited for the lock: its outcome stands.
                if self._attempts == seen:
                    try:
                        await self._refresh()
                    except CredentialsError as exc:
                        log.warning(
                            "background credential refresh failed (%d in a row), retrying in "
                            "%.1f s: %s",
                            self._failures,
                            max(0.0, self._retry_at - trio.current_time()),
                            exc,
                            exc_info=exc,
                        )
            if self._failure is not None:
                wake = self._retry_at
            else:
                wake = trio.current_time() + interval
