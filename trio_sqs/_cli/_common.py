"""What ``run`` and ``demo`` share: exit codes, the signals that stop them, and the one-line
message and exit code for an error that ended a command."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._exceptions import (
    AccessDenied,
    ClockSkewError,
    ConfigurationError,
    CredentialsError,
    QueueDoesNotExist,
)
from ._settings import CommandError

__all__ = [
    "EXIT_CREDENTIALS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_QUEUE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ShutdownSignals",
    "classify",
]

log = logging.getLogger("trio_sqs.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # also CommandError's default
EXIT_NO_QUEUE = 3
EXIT_CREDENTIALS = 4
EXIT_INTERRUPTED = 130

# -- signals: the one shutdown path of run and demo -----------------------------------------------


class ShutdownSignals:
    """SIGTERM or SIGINT starts the graceful shutdown; a second SIGINT exits at once (130).

    Attributes:
        received_at: ``trio.current_time()`` when the first signal was read, or ``None``.
        name: That signal's name.
    """

    def __init__(self) -> None:
        self.received_at: float | None = None
        self.name: str | None = None

    async def watch(
        self,
        on_first: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handle the signals until cancelled; ``on_first`` is called for the first one.

        Cancellation: cancel it to restore the previous signal handlers.
        """
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.received_at is None:
                    self.received_at, self.name = trio.current_time(), name
                    log.info(
                        "received %s: stopping gracefully (a second SIGINT exits at once)", name
                    )
                    on_first()
                elif signum == signal.SIGINT:
                    _exit_now()
                else:
                    log.info("received %s again: already stopping", name)


def _exit_now() -> NoReturn:
    # The consumer's shutdown runs in shielded scopes bounded by grace + flush: no cancellation
    # can cut it short, by design. Leaving at once means leaving the process.
    print(
        "trio-sqs: second SIGINT: exiting at once; messages in hand reappear after their "
        "visibility timeout",
        file=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def classify(exc: BaseException, queue: str) -> tuple[int, str]:
    """The exit code and one-line message for an error that ended a command."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        elif not isinstance(e, trio.Cancelled):
            leaves.append(e)

    walk(exc)
    first = leaves[0] if leaves else exc
    if isinstance(first, CommandError):
        return first.code, str(first)
    if isinstance(first, QueueDoesNotExist):
        return EXIT_NO_QUEUE, f"queue {queue!r} does not exist ({first})"
    if isinstance(first, (CredentialsError, AccessDenied, ClockSkewError)):
        return EXIT_CREDENTIALS, f"AWS credentials missing or rejected: {first}"
    if isinstance(first, ConfigurationError):
        return EXIT_USAGE, f"invalid configuration: {first.message}"
    log.debug("command failed", exc_info=first)
    return EXIT_ERROR, f"{type(first).__name__}: {first} (--log-level DEBUG shows the traceback)"
