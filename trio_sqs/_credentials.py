"""Credentials that never block the event loop.

botocore's credential chain does blocking I/O (IMDS, STS for web identity / IRSA, the container
endpoint for EKS Pod Identity, SSO). Calling it on the Trio thread during a refresh stalls every task,
so resolution and refresh always run in a worker thread, and requests read a cached frozen snapshot.

A background task refreshes ahead of expiry (in botocore's advisory window); requests wait for a
refresh only inside the mandatory window, and one refresh runs at a time.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import trio
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError

from ._exceptions import CredentialsError

__all__ = ["CredentialCache", "CredentialSource"]

log = logging.getLogger("trio_sqs.credentials")

# botocore's own defaults for RefreshableCredentials (credentials.py): refresh is advised 15 min
# before expiry and mandatory 10 min before.
MANDATORY_REFRESH_SECONDS = 10 * 60
# How often the background task asks whether the advisory window has opened. The check is a cheap
# comparison of timestamps on the Trio thread; only the refresh itself goes to a thread.
REFRESH_CHECK_INTERVAL = 30.0


class CredentialSource(Protocol):
    """Anything shaped like botocore's ``Credentials``: gives a frozen snapshot (may block)."""

    def get_frozen_credentials(self) -> Any: ...


def _refresh_needed(source: CredentialSource, refresh_in: float | None) -> bool:
    check = getattr(source, "refresh_needed", None)
    if check is None:
        return False
    return bool(check(refresh_in) if refresh_in is not None else check())


class CredentialCache:
    """A cached snapshot of credentials from a (possibly blocking) botocore credential source.

    Args:
        source: A botocore ``Credentials`` object, refreshable or not.
    """

    def __init__(self, source: CredentialSource) -> None:
        self._source = source
        self._snapshot: ReadOnlyCredentials | None = None
        self._lock = trio.Lock()
        self.refreshes = 0

    @property
    def refreshable(self) -> bool:
        return hasattr(self._source, "refresh_needed")

    async def get(self) -> ReadOnlyCredentials:
        """Return the current snapshot, refreshing first only if it is missing or about to expire.

        Cancellation: safe at any point; an abandoned refresh thread finishes on its own and its
        result is discarded.
        """
        if self._snapshot is None or _refresh_needed(self._source, MANDATORY_REFRESH_SECONDS):
            async with self._lock:
                if self._snapshot is None or _refresh_needed(
                    self._source, MANDATORY_REFRESH_SECONDS
                ):
                    await self._refresh()
        else:
            await trio.lowlevel.checkpoint()
        assert self._snapshot is not None
        return self._snapshot

    async def _refresh(self) -> None:
        if not self.refreshable:
            # Static keys: freezing them is a copy, no I/O, so no worker thread (a thread would
            # also let trio.testing.MockClock's autojump skip ahead while it runs).
            self._refresh_blocking()
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.to_thread.run_sync(self._refresh_blocking, abandon_on_cancel=True)
        except BotoCoreError as exc:
            raise CredentialsError(f"credential refresh failed: {exc}") from exc
        except ClientError as exc:  # STS errors inside assume-role / web-identity providers
            raise CredentialsError(f"credential refresh failed: {exc}") from exc

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

    async def run_refresher(self, *, check_interval: float = REFRESH_CHECK_INTERVAL) -> None:
        """Re-read the source in a worker thread every ``check_interval`` seconds, so botocore
        refreshes in its advisory window, ahead of expiry, and the snapshot follows any refresh
        made elsewhere. Runs until cancelled.

        A failed background refresh is not fatal: requests will retry inside the mandatory window
        and raise :class:`CredentialsError` there.

        Cancellation: stops at once; a refresh already in its thread finishes there and its
        result is still stored.
        """
        if not self.refreshable:
            await trio.sleep(math.inf)
        while True:
            # Read the source even when botocore does not ask for a refresh: it may have been
            # refreshed behind our back (a refresh we abandoned, or a boto3 client sharing it),
            # and the snapshot must follow. When nothing is due, botocore answers at once with the
            # current keys; in its advisory window it refreshes them first.
            if not self._lock.locked():
                async with self._lock:
                    try:
                        await self._refresh()
                    except CredentialsError as exc:
                        log.warning("background credential refresh failed: %s", exc)
            await trio.sleep(check_interval)
