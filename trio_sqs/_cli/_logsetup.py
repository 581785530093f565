"""Logging for the ``trio-sqs`` command: text or JSON lines on stderr, with the id of the message
being handled attached to every record a handler emits.

JSON records are one object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, then any extra fields (``message_id`` while a handler runs, whatever a caller passes
with ``extra=``), and ``exception`` when there is one. Message bodies are never logged by
trio_sqs (``Message.__repr__`` leaves them out too).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone

from .._middleware import Invocation

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "bind_log_context",
    "log_context",
    "log_fields",
    "setup_logging",
]

log = logging.getLogger("trio_sqs.handler")

# Fields added to every log record emitted while a handler runs (in its task).
_CONTEXT: ContextVar[dict[str, object] | None] = ContextVar("trio_sqs_log_context", default=None)

_STANDARD = {
    *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
    "message",
    "asctime",
    "taskName",
}

# The libraries below trio_sqs log every request at INFO/DEBUG: keep them at WARNING or above.
_CHATTY = ("httpx", "httpcore", "botocore", "urllib3", "werkzeug")


@contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    """Attach ``fields`` to every record logged by the calling task inside the block."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_log_context(**fields: object) -> None:
    """Attach ``fields`` to every record logged from now on by the calling task and by the tasks
    it starts from now on (they inherit its context), e.g. ``queue=...`` for one consumer of
    several."""
    _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, fmt: str) -> None:
    """Send every log record at ``level`` or above to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


async def log_context(invocation: Invocation, call_next: Callable[[], Awaitable[None]]) -> None:
    """Middleware: every record logged while a handler runs (in its task, the handler's own
    included) carries ``message_id`` (``message_ids`` for a batch); each call's outcome and
    duration are logged at DEBUG."""
    if invocation.batch:
        context: dict[str, object] = {"message_ids": [m.message_id for m in invocation.messages]}
    else:
        context = {"message_id": invocation.message.message_id}
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **context})
    start = time.perf_counter()
    try:
        await call_next()
    finally:
        took = (time.perf_counter() - start) * 1000
        log.debug("handler %s in %.1f ms", invocation.outcome or "failed", took)
        _CONTEXT.reset(token)
