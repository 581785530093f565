"""The ``trio-sqs`` command: ``run`` a handler on a queue, or ``demo`` the shutdown offline.

Every :class:`ConsumerOptions` field is a flag (``--batch-size``) and an environment variable
(``TRIO_SQS_BATCH_SIZE``); a flag wins over the variable. The exit codes are in ``EXIT_CODES``.
Errors are one line on stderr (``trio-sqs: error: ...``), never a traceback; ``--log-level
DEBUG`` logs the traceback of unexpected ones.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if sys.version_info < (3, 11):  # pragma: no cover
    pass

from .. import __version__
from .._client import SQSClient
from .._config import ConsumerOptions, Limits
from .._connect import open_client
from .._consumer import Consumer
from .._exceptions import QueueDoesNotExist
from .._json import JSON_VARIABLE
from .._middleware import Middleware
from .._open import open_consumer
from .._transport import PARSER_VARIABLE
from .._util import leaves, queue_name
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_NO_QUEUE,
    EXIT_OK,
    EXIT_USAGE,
    ShutdownSignals,
    classify,
)
from ._demo import add_demo_parser, cmd_demo
from ._logsetup import bind_log_context, log_context, log_fields, setup_logging
from ._settings import (
    CONSUMER_SETTINGS,
    ENV_PREFIX,
    LOG_SETTINGS,
    RUN_SETTINGS,
    CommandError,
    add_setting,
    check_environment,
    make_options,
    resolve,
)
from ._tools import TOOLS, add_tool_parsers, run_tool

if TYPE_CHECKING:
    from ._health import Metrics, Probe

__all__ = ["EXIT_CODES", "main"]

log = logging.getLogger("trio_sqs.cli")

DEFAULT_LIVENESS_WINDOW = 60.0
EXIT_CODES = """exit codes:
  0    stopped cleanly (after SIGTERM or SIGINT)
  1    unexpected error while running (e.g. SQS unreachable after retries)
  2    usage: bad flag, unknown TRIO_SQS_* variable or bad value, invalid option,
       handler not importable,
       optional extra not installed, metrics port not available
  3    the queue does not exist
  4    AWS credentials missing or rejected (access denied, bad signature, clock skew)
  130  a second SIGINT (Ctrl-C) during shutdown: exited at once, without waiting
(trio-sqs demo has its own: see trio-sqs demo --help)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: errors must be easy to read in a pod's log.
        # One prefix for every error of the command, subcommands' included.
        self.exit(EXIT_USAGE, f"trio-sqs: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    env_note = f"Every option can also be set with an environment variable {ENV_PREFIX}<OPTION>"
    parser = _Parser(
        prog="trio-sqs",
        description="Consume Amazon SQS from Trio. " + env_note + "; flags win.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"trio-sqs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run an async handler on a queue until SIGTERM or SIGINT",
        description="Run HANDLER on every message of a queue. SIGTERM or SIGINT starts the "
        "graceful shutdown; a second SIGINT exits at once (130). " + env_note + "; flags win.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    run.add_argument("handler", metavar="HANDLER", help="'package.module:function' (async)")
    for setting in [*RUN_SETTINGS, *LOG_SETTINGS]:
        add_setting(run, setting)
    options = run.add_argument_group("consumer options (ConsumerOptions fields)")
    for setting in CONSUMER_SETTINGS:
        add_setting(options, setting)

    add_demo_parser(commands, fmt)
    add_tool_parsers(commands, fmt)
    return parser


# -- run ------------------------------------------------------------------------------------------


def load_handler(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (the current directory is importable)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise CommandError(f"handler must look like 'package.module:function', got {path!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise CommandError(
                f"cannot import handler {path!r}: no module named {exc.name!r}"
            ) from None
        raise CommandError(f"cannot import handler {path!r}: {exc}") from None
    except Exception as exc:
        where = ""
        if isinstance(exc, SyntaxError):
            where = f" at {exc.filename}:{exc.lineno}"
        elif exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" at {frame.filename}:{frame.lineno}"
        raise CommandError(
            f"cannot import handler {path!r}: importing {module_name} raised "
            f"{type(exc).__name__}: {exc}{where}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"cannot import handler {path!r}: no attribute {part!r}") from None
    if not callable(obj):
        raise CommandError(f"handler {path!r} is not callable")
    if (inspect.isfunction(obj) or inspect.ismethod(obj)) and not inspect.iscoroutinefunction(obj):
        raise CommandError(f"handler {path!r} is not an async function (use 'async def')")
    return obj  # type: ignore[no-any-return]


async def _run(
    values: Mapping[str, Any], options: ConsumerOptions, handler: Callable[..., Any]
) -> None:
    """Consume every queue of ``values["queue"]`` until the first SIGTERM or SIGINT has been
    drained, serving health and metrics (in the same nursery, for the consumers' whole life,
    shutdown included) if asked to.

    One consumer per queue, each in its own task, all on one client (sized for them: the
    long-poll budget follows their pollers, the other budget is 8 connections per queue) and
    all stopped by the same signal, at the same moment, so the shutdown takes as long as the
    slowest one (each is bounded by grace + flush). A consumer that fails (a queue that does
    not exist, say) cancels the others, which is their graceful stop too.

    Cancellation: the signal task stops running consumers with :meth:`Consumer.stop`, never by
    cancellation; a consumer still starting (queue lookup) has its startup cancelled, which is
    safe because it received nothing yet.
    """
    queues: list[str] = values["queue"]
    signals = ShutdownSignals()
    consumers: list[tuple[str, Consumer]] = []
    startups: set[trio.CancelScope] = set()
    batch = bool(values.get("batch"))
    probe: Probe | None = None
    metrics: Metrics | None = None

    def on_first() -> None:
        for queue, consumer in consumers:
            # stop() logs what is still running: name the queue as the consumer's own records do.
            with log_fields(**({"queue": queue} if len(queues) > 1 else {})):
                consumer.stop()
        for startup in startups:
            startup.cancel()  # still starting: nothing to drain

    async def consume(client: SQSClient, queue: str) -> None:
        if len(queues) > 1:
            # Every record of this consumer's tasks (they inherit it) names its queue.
            bind_log_context(queue=queue)
        middleware: list[Middleware] = [log_context]
        if metrics is not None:
            middleware.insert(0, metrics.handler_durations)
        startup = trio.CancelScope()
        startups.add(startup)
        if signals.received_at is not None:
            startup.cancel()  # the signal came before this task started
        try:
            with startup:
                # batch is known at run time only: open_consumer checks the handler.
                async with open_consumer(  # type: ignore[call-overload]
                    queue,
                    handler,
                    batch=batch,
                    client=client,
                    options=options,
                    middleware=middleware,
                ) as consumer:
                    # Running: a signal stops it with stop() from now on (a cancel that came
                    # in between is its graceful stop too).
                    startups.discard(startup)
                    consumers.append((queue, consumer))
                    if probe is not None:
                        probe.attach(queue, consumer)
                    await consumer.wait_stopped()
        except QueueDoesNotExist as exc:
            raise CommandError(f"queue {queue!r} does not exist ({exc})", EXIT_NO_QUEUE) from None

    async with trio.open_nursery() as nursery:
        await nursery.start(signals.watch, on_first)
        if "metrics_port" in values:
            from ._health import Metrics, Probe, serve_health

            probe = Probe(
                liveness_window=values.get("liveness_window", DEFAULT_LIVENESS_WINDOW),
                batch=batch,
                queues=queues,
            )
            metrics = Metrics(probe)
            host = values.get("metrics_host", "0.0.0.0")
            try:
                port = await nursery.start(
                    serve_health, probe, metrics, host, values["metrics_port"]
                )
            except OSError as exc:
                raise CommandError(
                    f"cannot listen on {host}:{values['metrics_port']}: {exc}"
                ) from None
            log.info("health and metrics on http://%s:%d (/healthz /readyz /metrics)", host, port)

        opening = trio.CancelScope()
        startups.add(opening)
        # A signal while the client opens (credentials) cancels it: nothing to drain yet.
        with opening:
            async with open_client(
                region=values.get("region"),
                endpoint_url=values.get("endpoint_url"),
                profile=values.get("profile"),
                limits=Limits(max_other_connections=min(1000, 8 * len(queues))),
            ) as client:
                startups.discard(opening)
                async with trio.open_nursery() as fleet:
                    for queue in queues:
                        fleet.start_soon(consume, client, queue, name=f"consume {queue}")
        nursery.cancel_scope.cancel()


def _cmd_run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    values = resolve(args, [*RUN_SETTINGS, *LOG_SETTINGS, *CONSUMER_SETTINGS], environ)
    if "queue" not in values:
        raise CommandError(f"--queue (or {ENV_PREFIX}QUEUE) is required")
    # By name: a name and a URL of the same queue, or two queues of one name (in two accounts
    # or regions), would share their metrics' label.
    names = [queue_name(q) for q in values["queue"]]
    duplicates = sorted({q for q in names if names.count(q) > 1})
    if duplicates:
        raise CommandError(f"--queue {duplicates[0]} is given more than once")
    options = make_options(values)
    window = values.get("liveness_window", DEFAULT_LIVENESS_WINDOW)
    if window <= options.wait_time:
        raise CommandError(f"--liveness-window={window} must exceed wait_time={options.wait_time}")
    if not 0 <= values.get("metrics_port", 0) <= 65535:
        raise CommandError(f"--metrics-port={values['metrics_port']} is not a TCP port")
    if "metrics_port" in values:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise CommandError(
                "--metrics-port needs prometheus-client: pip install 'trio-sqs[prometheus]'"
            ) from None
    setup_logging(values.get("log_level", "INFO"), values.get("log_format", "text"))
    handler = load_handler(args.handler)
    try:
        trio.run(_run, values, options, handler)
    except Exception as exc:
        code, message = classify(exc, ", ".join(values["queue"]))
        raise CommandError(message, code) from None
    except BaseExceptionGroup as group:
        # A handler's sys.exit() (or a KeyboardInterrupt in one): the consumer stopped gracefully
        # and raised it; this command's own nursery wrapped it. Leave as the handler asked, in
        # one line, without a traceback.
        ending = next(
            (e for e in leaves(group) if isinstance(e, (SystemExit, KeyboardInterrupt))), None
        )
        if ending is None:
            raise
        if isinstance(ending, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        print(
            f"trio-sqs: a handler called sys.exit({ending.code!r}); stopped gracefully",
            file=sys.stderr,
        )
        raise SystemExit(ending.code) from None
    return EXIT_OK


def _report_error(message: str, code: int, args: argparse.Namespace) -> None:
    """The one error line: text, or under JSON logs a JSON record like the log lines."""
    log_format = getattr(args, "log_format", None) or os.environ.get(f"{ENV_PREFIX}LOG_FORMAT")
    if log_format == "json":
        moment = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        record = {
            "time": moment.replace("+00:00", "Z"),
            "level": "ERROR",
            "logger": "trio_sqs.cli",
            "message": f"trio-sqs: error: {message}",
            "exit_code": code,
        }
        print(json.dumps(record), file=sys.stderr)
    else:
        print(f"trio-sqs: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``trio-sqs`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        known = [*RUN_SETTINGS, *LOG_SETTINGS, *CONSUMER_SETTINGS]
        # (and the library's own: the HTTP transport's parser)
        check_environment(
            os.environ, [*(setting.env for setting in known), PARSER_VARIABLE, JSON_VARIABLE]
        )
        if args.command == "demo":
            return cmd_demo(args, os.environ)
        if args.command in TOOLS:
            return run_tool(args, os.environ)
        return _cmd_run(args, os.environ)
    except CommandError as exc:
        _report_error(str(exc), exc.code, args)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        # The process is about to exit. The consumer stops in ~2 ms, but CPython's final garbage
        # collection then took ~100 ms of the time from SIGTERM to exit (benchmarks/README.md);
        # a frozen heap is skipped by it.
        gc.freeze()
