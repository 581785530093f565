"""Queue tools: ``trio-sqs send``, ``stats``, ``peek``, ``purge`` and ``redrive``.

Each takes ``--queue`` (a name or URL), ``--region``, ``--endpoint-url`` and ``--profile`` like
``run`` (the same flags and ``TRIO_SQS_*`` variables), and reports errors as one line on stderr
with ``run``'s exit codes (3: no such queue, 4: credentials) and their own (see
``TOOL_EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import trio

from .._client import SendEntry, SQSClient
from .._connect import open_client
from .._exceptions import QueueDoesNotExist, ServiceError, TransportError
from .._message import Message, MessageAttributeValue
from .._protocol import is_retryable_error
from ._common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NO_QUEUE, EXIT_OK, classify
from ._settings import (
    ENV_PREFIX,
    LOG_SETTINGS,
    QUEUE_SETTING,
    RUN_SETTINGS,
    CommandError,
    Setting,
    add_setting,
)
from ._settings import resolve as resolve_settings

__all__ = ["TOOLS", "add_tool_parsers", "run_tool"]

TOOLS = ("send", "stats", "peek", "purge", "redrive")

_BY_NAME = {setting.dest: setting for setting in RUN_SETTINGS}
TOOL_SETTINGS: list[Setting] = [
    QUEUE_SETTING,
    _BY_NAME["region"],
    _BY_NAME["endpoint_url"],
    _BY_NAME["profile"],
    *LOG_SETTINGS,
]

TOOL_EXIT_CODES = """exit codes:
  0    done (stats --watch: stopped with Ctrl-C; redrive: the move task completed, or
       was cancelled by --cancel)
  1    unexpected error (e.g. SQS unreachable after retries), a message not sent or not
       released, purge answered with no or refused (one purge per minute); redrive: the move task failed (its
       FailureReason is shown) or someone else cancelled it
  2    usage: bad flag or value; purge without --yes and without a terminal
  3    the queue does not exist
  4    AWS credentials missing or rejected
  5    redrive: no move task started or cancelled: the queue is not a dead-letter queue,
       a task is already running on it (--cancel: none is), SQS refused the request,
       or the endpoint does not implement message move tasks
  130  redrive: stopped watching (Ctrl-C or SIGTERM); the move task goes on in SQS
"""

EXIT_REFUSED = 5

BODY_PREVIEW = 80
_COUNTS = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


# -- parsers --------------------------------------------------------------------------------------


# The longest peek's release may hold a Ctrl-C back.
RELEASE_BOUND = 10.0


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` (to ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low} or more" if high is None else f"{low} to {high}"
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


MAX_MOVE_RATE = 500


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def add_tool_parsers(commands: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """Add the queue tools (:data:`TOOLS`) to the ``trio-sqs`` subcommands."""
    # argparse's sub-parsers take the class of their parent (trio-sqs's one-line errors).
    env_note = f"--queue and the AWS options can also be set with {ENV_PREFIX}<OPTION>; flags win."

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name,
            help=help_text,
            description=description + " " + env_note,
            epilog=TOOL_EXIT_CODES,
            formatter_class=fmt,
        )
        for setting in TOOL_SETTINGS:
            add_setting(parser, setting)
        return parser

    send = add(
        "send",
        "send messages to a queue",
        "Send BODY, or one message per line of --file (or of stdin with '-'), in batches of 10. "
        "Prints each message id, one a line.",
    )
    source = send.add_mutually_exclusive_group()
    source.add_argument(
        "body", nargs="?", metavar="BODY", help="the message body; '-' reads stdin, one per line"
    )
    source.add_argument(
        "--file",
        metavar="PATH",
        help="one message per line of PATH ('-': stdin); blank lines are skipped",
    )
    send.add_argument(
        "--attribute",
        action="append",
        type=_attribute,
        default=[],
        metavar="NAME=VALUE",
        help="a String message attribute (repeatable)",
    )
    send.add_argument("--delay", type=_int_range(0), metavar="N", help="DelaySeconds, 0-900")
    send.add_argument("--group-id", metavar="ID", help="MessageGroupId (FIFO queues)")
    send.add_argument(
        "--dedup-id",
        metavar="ID",
        help="MessageDeduplicationId (FIFO queues); with several messages, the Nth gets ID-N",
    )
    send.add_argument(
        "--create", action="store_true", help="create the queue if it does not exist (by name)"
    )
    send.add_argument("--json", action="store_true", help="one JSON object per message sent")

    stats = add(
        "stats",
        "show a queue's message counts (and its dead-letter queue's)",
        "Show the approximate number of messages visible, in flight and delayed, and the same "
        "for the dead-letter queue its RedrivePolicy names.",
    )
    stats.add_argument("--json", action="store_true", help="one JSON object (per refresh)")
    stats.add_argument(
        "--watch",
        type=_positive_float,
        metavar="SECONDS",
        help="refresh every SECONDS until Ctrl-C (which exits 0)",
    )

    peek = add(
        "peek",
        "show messages without consuming them (raises their receive count)",
        "Receive up to N messages, print them, and release them at once (visibility 0): they "
        "stay in the queue, but peeking IS a receive: each one's receive count goes up by 1, "
        "which counts towards the maxReceiveCount of a redrive policy.",
    )
    peek.add_argument(
        "-n", type=int, default=1, choices=range(1, 11), metavar="N", help="1-10 (default: 1)"
    )
    peek.add_argument("--full", action="store_true", help=f"bodies not cut at {BODY_PREVIEW}")
    peek.add_argument(
        "--wait",
        type=int,
        default=1,
        choices=range(0, 21),
        metavar="SECONDS",
        help="long-poll up to SECONDS for a message (0-20, default: 1)",
    )
    peek.add_argument("--json", action="store_true", help="one JSON object per message")

    purge = add(
        "purge",
        "delete every message of a queue (asks first)",
        "Delete every message of the queue. Asks for confirmation on a terminal; without one, "
        "refuses unless --yes.",
    )
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask")

    redrive = add(
        "redrive",
        "move messages from a dead-letter queue back to their source queues",
        "Start an SQS message move task (StartMessageMoveTask) that moves the messages of the "
        "dead-letter queue --queue back to the queues they were dead-lettered from (or to --to), "
        "and show its progress until it ends. The task runs in SQS: Ctrl-C (or SIGTERM) stops "
        "watching, not the task, and prints the command that cancels it. --cancel cancels the "
        "task running on --queue. Messages sent to the dead-letter queue directly have no "
        "source queue: the task fails on them (CouldNotDetermineMessageSource) unless --to is "
        "given.",
    )
    redrive.add_argument(
        "--to",
        metavar="NAME_OR_URL",
        help="move every message to this queue (default: each back to the queue it came from)",
    )
    redrive.add_argument(
        "--rate",
        type=_int_range(1, MAX_MOVE_RATE),
        metavar="N",
        help=f"move at most N messages per second, 1-{MAX_MOVE_RATE} (default: SQS picks)",
    )
    redrive.add_argument(
        "--cancel", action="store_true", help="cancel the move task running on --queue"
    )
    redrive.add_argument(
        "--no-wait", action="store_true", help="start (or cancel) the task and return at once"
    )
    redrive.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="refresh the progress every SECONDS (default: 1)",
    )
    redrive.add_argument(
        "--json", action="store_true", help="one JSON object per refresh (the task's state)"
    )


# -- running --------------------------------------------------------------------------------------


def run_tool(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the tool ``args.command``; returns the exit code (raises CommandError)."""
    from ._logsetup import setup_logging

    values = resolve_settings(args, TOOL_SETTINGS, environ)
    if "queue" not in values:
        raise CommandError(f"--queue (or {ENV_PREFIX}QUEUE) is required")
    setup_logging(values.get("log_level", "WARNING"), values.get("log_format", "text"))
    tool: Callable[[argparse.Namespace, dict[str, Any]], Awaitable[int]]
    if args.command == "send":
        _check_send(args)
        tool = _send
    elif args.command == "stats":
        tool = _stats
    elif args.command == "peek":
        tool = _peek
    elif args.command == "redrive":
        if args.cancel and (args.to is not None or args.rate is not None):
            raise CommandError("--cancel takes no --to or --rate")
        tool = _redrive
    else:
        if not args.yes and not sys.stdin.isatty():
            raise CommandError(
                f"refusing to purge {values['queue']!r} without a terminal to confirm on: "
                "pass --yes"
            )
        tool = _purge
    try:
        return trio.run(tool, args, values)
    except KeyboardInterrupt:
        if args.command == "stats" and args.watch is not None:
            return EXIT_OK
        raise
    except Exception as exc:
        code, message = classify(exc, values["queue"])
        raise CommandError(message, code) from None


@asynccontextmanager
async def _client(values: Mapping[str, Any]) -> AsyncIterator[SQSClient]:
    async with open_client(
        region=values.get("region"),
        endpoint_url=values.get("endpoint_url"),
        profile=values.get("profile"),
    ) as client:
        yield client


async def _queue_url(client: SQSClient, queue: str) -> str:
    if queue.startswith(("https://", "http://")):
        # Proves that it exists (a missing queue is exit 3, before anything else).
        await client.get_queue_attributes(queue, ["QueueArn"])
        return queue
    return await client.get_queue_url(queue)


def _emit(line: str, out: TextIO | None = None) -> None:
    print(line, file=out or sys.stdout, flush=True)


# -- send -----------------------------------------------------------------------------------------


def _check_send(args: argparse.Namespace) -> None:
    if args.body is None and args.file is None:
        raise CommandError("nothing to send: give BODY, --file PATH, or '-' for stdin")
    if args.delay is not None and args.delay > 900:
        raise CommandError(f"--delay={args.delay} is out of range (0-900)")


def _bodies(args: argparse.Namespace) -> Iterator[str]:
    if args.file is None and args.body != "-":
        yield args.body
        return
    path = args.file if args.file is not None else "-"
    if path == "-":
        lines: Iterator[str] = iter(sys.stdin)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = iter(f.readlines())
        except OSError as exc:
            raise CommandError(f"cannot read --file {path!r}: {exc.strerror}") from None
    for line in lines:
        body = line.rstrip("\r\n")
        if body.strip():
            yield body


async def _send(args: argparse.Namespace, values: dict[str, Any]) -> int:
    bodies = list(_bodies(args))
    if not bodies:
        raise CommandError("nothing to send: the input has no non-blank line")
    attributes = {name: MessageAttributeValue.string(value) for name, value in args.attribute}
    entries = [
        SendEntry(
            id=str(index),
            body=body,
            delay_seconds=args.delay,
            message_attributes=attributes or None,
            message_group_id=args.group_id,
            message_deduplication_id=(
                None
                if args.dedup_id is None
                else args.dedup_id
                if len(bodies) == 1
                else f"{args.dedup_id}-{index}"
            ),
        )
        for index, body in enumerate(bodies, 1)
    ]
    queue = values["queue"]
    failures = 0
    async with _client(values) as client:
        try:
            url = await _queue_url(client, queue)
        except QueueDoesNotExist:
            if not args.create or queue.startswith(("https://", "http://")):
                raise
            fifo = {"FifoQueue": "true"} if queue.endswith(".fifo") else None
            url = await client.create_queue(queue, attributes=fifo)
        for start in range(0, len(entries), 10):
            batch = entries[start : start + 10]
            sent, outcome = await client.send_message_batch(url, batch)
            for result in sent:
                if args.json:
                    record: dict[str, Any] = {"id": result.message_id, "line": int(result.id or 0)}
                    if result.sequence_number is not None:
                        record["sequence_number"] = result.sequence_number
                    _emit(json.dumps(record))
                else:
                    _emit(result.message_id)
            for error in outcome.failed:
                failures += 1
                _emit(
                    f"trio-sqs: error: message {error.entry_id} not sent: {error.code}: {error}",
                    sys.stderr,
                )
    return EXIT_ERROR if failures else EXIT_OK


# -- stats ----------------------------------------------------------------------------------------


def _answer_int(value: object, what: str) -> int:
    """A count in SQS's answer (a number, or digits in a string as GetQueueAttributes gives
    them); anything else is one clear error line, not a traceback."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise CommandError(f"SQS answered an unreadable {what}: {value!r}", EXIT_ERROR)


def _answer_text(answer: Mapping[str, Any], key: str, operation: str) -> str:
    """A string SQS's answer must carry; its absence is one clear error line."""
    value = answer.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"SQS's answer to {operation} has no {key}: {answer!r}", EXIT_ERROR)
    return value


def _counts(attributes: Mapping[str, str]) -> dict[str, int]:
    return {key: _answer_int(attributes.get(name, "0"), name) for key, name in _COUNTS.items()}


async def _dead_letter(client: SQSClient, policy: str | None) -> dict[str, Any] | None:
    if not policy:
        return None
    try:
        arn = json.loads(policy)["deadLetterTargetArn"]
        _, _, _, _region, account, name = arn.split(":", 5)
    except (ValueError, KeyError, TypeError):
        return {"error": f"unreadable RedrivePolicy: {policy}"}
    try:
        url = await client.get_queue_url(name, owner_account_id=account or None)
    except QueueDoesNotExist:
        return {"queue": name, "error": "does not exist"}
    attributes = await client.get_queue_attributes(url, list(_COUNTS.values()))
    return {"queue": name, "url": url, **_counts(attributes)}


def _stats_text(name: str, stats: Mapping[str, Any]) -> str:
    def counts(s: Mapping[str, Any]) -> str:
        return f"{s['visible']} visible, {s['in_flight']} in flight, {s['delayed']} delayed"

    text = f"{name}: {counts(stats)}"
    dlq = stats.get("dead_letter_queue")
    if dlq is not None:
        where = dlq.get("queue", "?")
        text += f"\n  dead-letter queue {where}: " + (
            dlq["error"] if "error" in dlq else counts(dlq)
        )
    return text


async def _stats(args: argparse.Namespace, values: dict[str, Any]) -> int:
    queue = values["queue"]
    async with _client(values) as client:
        url = await _queue_url(client, queue)

        async def show() -> None:
            attributes = await client.get_queue_attributes(
                url, [*_COUNTS.values(), "RedrivePolicy"]
            )
            stats: dict[str, Any] = {"queue": queue, "url": url, **_counts(attributes)}
            stats["dead_letter_queue"] = await _dead_letter(client, attributes.get("RedrivePolicy"))
            _emit(json.dumps(stats) if args.json else _stats_text(queue, stats))

        if args.watch is None:
            await show()
            return EXIT_OK
        # --watch: until SIGINT or SIGTERM, read as signals (not as a KeyboardInterrupt that
        # may land anywhere), which end the loop at once.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                while True:
                    await show()
                    await trio.sleep(args.watch)
        return EXIT_OK


# -- peek -----------------------------------------------------------------------------------------


def _attribute_text(value: MessageAttributeValue) -> str:
    if value.string_value is not None:
        return value.string_value
    return f"<{len(value.binary_value or b'')} bytes>"


def _peek_record(message: Message) -> dict[str, Any]:
    return {
        "id": message.message_id,
        "receive_count": message.receive_count,
        "body": message.body,
        "attributes": {k: _attribute_text(v) for k, v in message.message_attributes.items()},
        "system_attributes": dict(message.attributes),
    }


def _peek_text(message: Message, full: bool) -> str:
    body = message.body
    if not full and len(body) > BODY_PREVIEW:
        body = body[:BODY_PREVIEW] + f"... ({len(message.body)} characters; --full shows all)"
    lines = [f"{message.message_id}  receive count {message.receive_count}", f"  body: {body}"]
    if message.message_attributes:
        shown = ", ".join(
            f"{k}={_attribute_text(v)}" for k, v in sorted(message.message_attributes.items())
        )
        lines.append(f"  attributes: {shown}")
    return "\n".join(lines)


async def _peek(args: argparse.Namespace, values: dict[str, Any]) -> int:
    note = (
        "note: peeking received these messages and released them at once: they are still in "
        "the queue, but each one's receive count went up by 1"
    )
    async with _client(values) as client:
        url = await _queue_url(client, values["queue"])
        result = await client.receive_messages(
            url, max_messages=args.n, wait_time=args.wait, visibility_timeout=30
        )
        handles = [m.receipt_handle for m in result.messages]
        handles += [c.receipt_handle for c in result.corrupt]
        outcome = None
        if handles:
            # A Ctrl-C right now must not leave them hidden for 30 s: bounded, shielded.
            with trio.move_on_after(RELEASE_BOUND, shield=True):
                outcome = await client.change_message_visibility_batch(url, handles, 0)
        for message in result.messages:
            _emit(
                json.dumps(_peek_record(message)) if args.json else _peek_text(message, args.full)
            )
        for corrupt in result.corrupt:
            _emit(f"trio-sqs: corrupt message {corrupt.message_id}: {corrupt.error}", sys.stderr)
        if not handles:
            _emit("no message received", sys.stderr)
            return EXIT_OK
        _emit(note, sys.stderr if args.json else sys.stdout)
        if outcome is not None and outcome.failed:
            for error in outcome.failed:
                _emit(
                    f"trio-sqs: error: could not release message {error.entry_id} "
                    f"({error.code}): it reappears after 30 s",
                    sys.stderr,
                )
            return EXIT_ERROR
    return EXIT_OK


# -- purge ----------------------------------------------------------------------------------------


async def _purge(args: argparse.Namespace, values: dict[str, Any]) -> int:
    queue = values["queue"]
    async with _client(values) as client:
        url = await _queue_url(client, queue)
        counts = _counts(await client.get_queue_attributes(url, list(_COUNTS.values())))
        total = sum(counts.values())
        if not args.yes:
            answer = await trio.to_thread.run_sync(
                _ask, f"purge {total} messages from {queue}? [y/N] ", abandon_on_cancel=True
            )
            if answer.strip().lower() not in ("y", "yes"):
                _emit("trio-sqs: not purged", sys.stderr)
                return EXIT_ERROR
        try:
            await client.purge_queue(url)
        except ServiceError as exc:
            # (moto answers it with HTTP 403, which maps to AccessDenied: the code decides.)
            if "PurgeQueueInProgress" not in exc.code:
                raise
            raise CommandError(
                f"{queue} was purged less than 60 seconds ago and SQS allows one purge per "
                f"queue every 60 seconds: wait a minute and try again ({exc.message})",
                EXIT_ERROR,
            ) from None
        _emit(f"purged {queue} ({total} messages)")
    return EXIT_OK


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        return ""


# -- redrive --------------------------------------------------------------------------------------

_FINAL = ("COMPLETED", "CANCELLED", "FAILED")
_BAR = 30
_NOT_IMPLEMENTED = (
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "UnknownOperationException",
)
_SOURCE_HINT = {
    "CouldNotDetermineMessageSource": (
        " (a message in the dead-letter queue was not dead-lettered from a queue, e.g. it was "
        "sent there directly: give --to QUEUE)"
    ),
    "AWS.SimpleQueueService.NonExistentQueue": (
        " (the dead-letter queue or a destination queue no longer exists)"
    ),
}


def _endpoint_refusal(exc: ServiceError, operation: str) -> CommandError | None:
    """The error for an endpoint without message move tasks (an emulator), or None."""
    if exc.code in _NOT_IMPLEMENTED:
        detail = f"{exc.code}: {exc.message}"
    elif exc.status_code in (404, 500, 501) and exc.code == str(exc.status_code):
        # An answer that is no SQS error at all (moto: HTTP 500 with an HTML page).
        detail = f"HTTP {exc.status_code} without an SQS error"
    else:
        return None
    return CommandError(
        f"this SQS endpoint does not implement message move tasks ({operation} answered "
        f"{detail}); redrive needs them (Amazon SQS has them; some emulators do not)",
        EXIT_REFUSED,
    )


def _cancel_command(values: Mapping[str, Any]) -> str:
    words = ["trio-sqs", "redrive", "--queue", values["queue"], "--cancel"]
    for dest, flag in (
        ("endpoint_url", "--endpoint-url"),
        ("region", "--region"),
        ("profile", "--profile"),
    ):
        if values.get(dest):
            words += [flag, str(values[dest])]
    return shlex.join(words)


class _MoveTask:
    """The move task this command started or cancels, found again in ListMessageMoveTasks: by
    its handle while it runs (only running tasks show one), then by its start time."""

    def __init__(self, handle: str | None, started: int | None = None) -> None:
        self.handle = handle
        self.started = started

    def pick(self, results: list[dict[str, Any]]) -> dict[str, Any] | None:
        for entry in results:
            if self.handle is not None and entry.get("TaskHandle") == self.handle:
                self.started = entry.get("StartedTimestamp")
                return entry
        for entry in results:
            if self.started is not None and entry.get("StartedTimestamp") == self.started:
                return entry
        if self.started is None and results and "TaskHandle" not in results[0]:
            # Ended before we first looked: the newest task is ours.
            self.started = results[0].get("StartedTimestamp")
            return results[0]
        return None


async def _move_tasks(client: SQSClient, queue: str, source_arn: str) -> list[dict[str, Any]]:
    try:
        result = await client.call(
            "ListMessageMoveTasks", {"SourceArn": source_arn, "MaxResults": 10}
        )
    except ServiceError as exc:
        if exc.code == "ResourceNotFoundException":
            raise CommandError(
                f"the dead-letter queue {queue} no longer exists ({exc.message})", EXIT_NO_QUEUE
            ) from None
        raise _endpoint_refusal(exc, "ListMessageMoveTasks") or exc from None
    results = result.get("Results") or []
    return [entry for entry in results if isinstance(entry, dict)]


class _Progress:
    """Shows a move task's state: a bar rewritten in place on a terminal, else one line (or
    one JSON object) per refresh."""

    def __init__(self, queue: str, destination: str, *, as_json: bool) -> None:
        self.queue = queue
        self.destination = destination
        self.as_json = as_json
        self.in_place = not as_json and sys.stdout.isatty()
        self.first: tuple[float, int] | None = None
        self.pending_newline = False

    def rate(self, moved: int) -> float:
        now = trio.current_time()
        if self.first is None:
            self.first = (now, moved)
        elapsed = now - self.first[0]
        return (moved - self.first[1]) / elapsed if elapsed > 0 else 0.0

    def show(self, task: Mapping[str, Any]) -> None:
        status = str(task.get("Status", "?"))
        moved = _answer_int(task.get("ApproximateNumberOfMessagesMoved") or 0, "messages moved")
        total = task.get("ApproximateNumberOfMessagesToMove")
        if total is not None:
            total = _answer_int(total, "messages to move")
        rate = self.rate(moved)
        if self.as_json:
            record: dict[str, Any] = {
                "queue": self.queue,
                "status": status,
                "moved": moved,
                "to_move": total,
                "rate": round(rate, 1),
                "destination": task.get("DestinationArn"),
            }
            for key, name in (("TaskHandle", "task_handle"), ("FailureReason", "failure_reason")):
                if key in task:
                    record[name] = task[key]
            _emit(json.dumps(record))
            return
        done = f"{moved}/{total}" if total is not None else f"{moved}"
        percent = f" ({100 * moved // total}%)" if total else ""
        line = f"{self.queue}: {status} {done} moved{percent}, {rate:.1f} messages/s"
        if self.in_place:
            filled = _BAR * moved // total if total else (_BAR if status == "COMPLETED" else 0)
            bar = "#" * filled + "." * (_BAR - filled)
            sys.stdout.write(f"\r\x1b[K[{bar}] {line}")
            sys.stdout.flush()
            self.pending_newline = True
        else:
            _emit(line)

    def end_line(self) -> None:
        if self.pending_newline:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.pending_newline = False

    def say(self, text: str) -> None:
        self.end_line()
        if not self.as_json:
            _emit(text)


class _Stop:
    """SIGINT or SIGTERM: stop what we are doing, except a start or cancel request in flight
    (it may have reached SQS: we finish it, to say what happened, for at most its own bound of
    REQUEST_BOUND seconds); a second signal stops that wait too."""

    def __init__(self) -> None:
        self.requested = False
        self.interruptible = True
        self.scope = trio.CancelScope()
        #: What this command did in SQS before it was stopped: "started", "cancelled" or None.
        self.done: str | None = None
        #: The request on the wire now ("StartMessageMoveTask"...), if any.
        self.in_flight: str | None = None
        #: The request whose answer we did not wait for (a second signal), if any.
        self.abandoned: str | None = None

    async def listen(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            if self.requested and not self.interruptible:
                self.abandoned = self.in_flight
            self.requested = True
            if self.interruptible or self.abandoned is not None:
                self.scope.cancel()

    def check(self) -> None:
        self.interruptible = True
        if self.requested:
            self.scope.cancel()


async def _redrive(args: argparse.Namespace, values: dict[str, Any]) -> int:
    # SIGINT and SIGTERM are read as signals (not a KeyboardInterrupt that may land anywhere,
    # and not at all in a background process started with SIGINT ignored): see stats --watch.
    stop = _Stop()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop.listen, signals)
            try:
                return await _redrive_until_stopped(args, values, stop)
            finally:
                nursery.cancel_scope.cancel()


async def _redrive_until_stopped(
    args: argparse.Namespace, values: dict[str, Any], stop: _Stop
) -> int:
    queue = values["queue"]
    destination = args.to or "the queues they came from"
    progress = _Progress(queue, destination, as_json=args.json)
    with stop.scope:
        async with _client(values) as client:
            url = await _queue_url(client, queue)
            attributes = await client.get_queue_attributes(url, ["QueueArn"])
            source_arn = _answer_text(attributes, "QueueArn", "GetQueueAttributes")
            try:
                if args.cancel:
                    task = await _cancel_task(client, queue, source_arn, progress, stop)
                else:
                    task = await _start_task(
                        client, args, queue, source_arn, progress, stop, _cancel_command(values)
                    )
                if args.no_wait:
                    if args.json:
                        entry = task.pick(await _move_tasks(client, queue, source_arn))
                        if entry is not None:
                            progress.show(entry)
                    elif not args.cancel:
                        progress.say(f"to cancel it: {_cancel_command(values)}")
                    return EXIT_OK
                return await _watch(
                    client, queue, source_arn, task, progress, args, _cancel_command(values)
                )
            except _TaskEnded:
                raise
            except Exception as exc:
                if stop.done is None:
                    raise  # nothing started or cancelled: the error says it all
                # The task runs on in SQS whatever went wrong here: say so, and how to stop it.
                progress.end_line()
                code, message = classify(exc, queue)
                if stop.done == "started":
                    note = "the move task goes on in SQS. To cancel it: " + _cancel_command(values)
                else:
                    note = "the move task was cancelled and stops in SQS"
                raise CommandError(f"{message}; {note}", code) from None
    # Cancelled by SIGINT or SIGTERM.
    progress.end_line()
    if stop.abandoned is not None:
        print(
            f"trio-sqs: stopped waiting for the answer to {stop.abandoned}: it may have taken "
            "effect. To cancel a move task that started: " + _cancel_command(values),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    if stop.done == "started":
        note = "the move task goes on in SQS. To cancel it: " + _cancel_command(values)
    elif stop.done == "cancelled":
        note = "the move task is cancelled and stops in SQS"
    else:
        print("trio-sqs: interrupted; no move task was started or cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"trio-sqs: stopped watching; {note}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


# The longest a start or cancel request may take (each attempt), and attempts in all.
REQUEST_BOUND = 10.0
REQUEST_ATTEMPTS = 3


class _TaskEnded(CommandError):
    """The end of watching a move task whose message says all there is to say about the task
    (it failed, was cancelled by someone else, or is no longer listed)."""


async def _once(
    client: SQSClient, operation: str, params: Mapping[str, Any], stop: _Stop
) -> dict[str, Any] | None:
    """Send a start or cancel request exactly once (its effect is not idempotent: a retry after
    a lost answer would be refused); ``None`` when its answer was lost (a transport error or a
    5xx/throttle: it may or may not have taken effect). A first signal waits for the answer, a
    second one does not (see :class:`_Stop`)."""
    stop.interruptible, stop.in_flight = False, operation
    try:
        return await client.call(operation, params, read_timeout=REQUEST_BOUND, retry=False)
    except TransportError:
        return None
    except ServiceError as exc:
        if is_retryable_error(exc) and _endpoint_refusal(exc, operation) is None:
            return None
        raise
    finally:
        stop.in_flight = None
        stop.check()


async def _start_task(
    client: SQSClient,
    args: argparse.Namespace,
    queue: str,
    source_arn: str,
    progress: _Progress,
    stop: _Stop,
    cancel_command: str,
) -> _MoveTask:
    params: dict[str, Any] = {"SourceArn": source_arn}
    if args.to is not None:
        try:
            to_url = await _queue_url(client, args.to)
        except QueueDoesNotExist:
            raise CommandError(f"queue {args.to!r} (--to) does not exist", EXIT_NO_QUEUE) from None
        attributes = await client.get_queue_attributes(to_url, ["QueueArn"])
        params["DestinationArn"] = _answer_text(attributes, "QueueArn", "GetQueueAttributes")
    if args.rate is not None:
        params["MaxNumberOfMessagesPerSecond"] = args.rate
    if _running(await _move_tasks(client, queue, source_arn)):
        raise CommandError(
            f"a move task is already running on {queue} (only one at a time); to cancel it: "
            + cancel_command,
            EXIT_REFUSED,
        )
    task: _MoveTask | None = None
    for attempt in range(REQUEST_ATTEMPTS):
        if attempt:
            await trio.sleep(attempt)  # 1 s, 2 s: the answer was lost, not refused
        try:
            result = await _once(client, "StartMessageMoveTask", params, stop)
        except ServiceError as exc:
            refusal = _start_refusal(exc, queue, cancel_command)
            if attempt and "already running" in str(refusal):
                result = None  # our lost attempt started it: found below
            else:
                raise refusal from None
        if result is not None:
            task = _MoveTask(_answer_text(result, "TaskHandle", "StartMessageMoveTask"))
            break
        # Lost: the task may have started. There was none before, so a running one is ours.
        running = _running(await _move_tasks(client, queue, source_arn))
        if running:
            task = _MoveTask(str(running[0]["TaskHandle"]), running[0].get("StartedTimestamp"))
            break
    if task is None:
        raise CommandError(
            f"StartMessageMoveTask got no answer after {REQUEST_ATTEMPTS} attempts and no move "
            f"task runs on {queue}: nothing was started",
            EXIT_ERROR,
        )
    stop.done = "started"
    progress.rate(0)  # the rate counts from the start
    entry = task.pick(await _move_tasks(client, queue, source_arn))
    total = entry.get("ApproximateNumberOfMessagesToMove") if entry else None
    progress.say(
        f"started moving {'?' if total is None else total} messages from {queue} to "
        f"{progress.destination}"
    )
    return task


def _running(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in results if t.get("Status") == "RUNNING" and t.get("TaskHandle")]


def _start_refusal(exc: ServiceError, queue: str, cancel_command: str) -> Exception:
    unsupported = _endpoint_refusal(exc, "StartMessageMoveTask")
    if unsupported is not None:
        return unsupported
    if exc.code == "InvalidParameterValue" and "Dead Letter Queue" in exc.message:
        return CommandError(
            f"{queue} is not a dead-letter queue: no queue's RedrivePolicy names it "
            f"(SQS: {exc.message})",
            EXIT_REFUSED,
        )
    if exc.code == "InvalidParameterValue" and "already a task running" in exc.message:
        return CommandError(
            f"a move task is already running on {queue} (only one at a time); to cancel it: "
            + cancel_command,
            EXIT_REFUSED,
        )
    if exc.code == "ResourceNotFoundException":
        return CommandError(f"SQS: {exc.message}", EXIT_NO_QUEUE)
    if exc.code == "InvalidParameterValue":
        return CommandError(f"SQS refused the move task: {exc.message}", EXIT_REFUSED)
    return exc


async def _cancel_task(
    client: SQSClient, queue: str, source_arn: str, progress: _Progress, stop: _Stop
) -> _MoveTask:
    results = await _move_tasks(client, queue, source_arn)
    running = _running(results)
    if not running:
        cancelling = [t for t in results if t.get("Status") == "CANCELLING"]
        if cancelling:
            progress.say(f"the move task on {queue} is already being cancelled")
            return _MoveTask(None, cancelling[0].get("StartedTimestamp"))
        raise CommandError(f"no move task is running on {queue}: nothing to cancel", EXIT_REFUSED)
    entry = running[0]
    task = _MoveTask(str(entry["TaskHandle"]), entry.get("StartedTimestamp"))
    answer: dict[str, Any] | None = None
    for attempt in range(REQUEST_ATTEMPTS):
        if attempt:
            await trio.sleep(attempt)
        try:
            answer = await _once(client, "CancelMessageMoveTask", {"TaskHandle": task.handle}, stop)
        except ServiceError as exc:
            unsupported = _endpoint_refusal(exc, "CancelMessageMoveTask")
            if unsupported is not None:
                raise unsupported from None
            if not attempt:
                raise CommandError(
                    f"SQS refused to cancel the move task on {queue} (it may have just ended): "
                    f"{exc.code}: {exc.message}",
                    EXIT_REFUSED,
                ) from None
            answer = None  # refused after a lost attempt: that attempt may have cancelled it
        if answer is not None:
            break
        # Lost: the cancel may have taken effect; the task's status says.
        entry_now = task.pick(await _move_tasks(client, queue, source_arn))
        if entry_now is not None and entry_now.get("Status") in ("CANCELLING", "CANCELLED"):
            answer = {
                "ApproximateNumberOfMessagesMoved": entry_now.get(
                    "ApproximateNumberOfMessagesMoved"
                )
            }
            break
        if entry_now is None or entry_now.get("Status") != "RUNNING":
            status = entry_now.get("Status") if entry_now else "no longer listed"
            raise CommandError(
                f"the move task on {queue} ended ({status}) before it could be cancelled",
                EXIT_REFUSED,
            )
    if answer is None:
        raise CommandError(
            f"CancelMessageMoveTask got no answer after {REQUEST_ATTEMPTS} attempts and the move "
            f"task on {queue} still runs: it was not cancelled",
            EXIT_ERROR,
        )
    stop.done = "cancelled"
    moved = answer.get("ApproximateNumberOfMessagesMoved")
    so_far = f" ({moved} messages moved so far)" if isinstance(moved, int) else ""
    progress.say(f"cancelling the move task on {queue}{so_far}")
    return task


async def _watch(
    client: SQSClient,
    queue: str,
    source_arn: str,
    task: _MoveTask,
    progress: _Progress,
    args: argparse.Namespace,
    cancel_command: str,
) -> int:
    while True:
        entry = task.pick(await _move_tasks(client, queue, source_arn))
        if entry is None:
            raise _TaskEnded(
                f"the move task on {queue} is no longer listed by SQS (if it still runs, to "
                f"cancel it: {cancel_command})",
                EXIT_ERROR,
            )
        progress.show(entry)
        status = entry.get("Status")
        if status in _FINAL:
            break
        await trio.sleep(args.interval)
    progress.end_line()
    moved = entry.get("ApproximateNumberOfMessagesMoved", 0)
    total = entry.get("ApproximateNumberOfMessagesToMove", "?")
    if status == "COMPLETED":
        progress.say(
            f"done: moved {moved} of {total} messages from {queue} to {progress.destination}"
        )
        return EXIT_OK
    if status == "CANCELLED" and args.cancel:
        progress.say(f"cancelled: {moved} of {total} messages had moved")
        return EXIT_OK
    if status == "CANCELLED":
        raise _TaskEnded(
            f"the move task on {queue} was cancelled (not by this command) after moving {moved} "
            f"of {total} messages",
            EXIT_ERROR,
        )
    reason = str(entry.get("FailureReason", "no reason given"))
    raise _TaskEnded(
        f"the move task on {queue} failed: {reason} after moving {moved} of {total} messages"
        + _SOURCE_HINT.get(reason, ""),
        EXIT_ERROR,
    )
