"""Queue tools: ``trio-sqs send``, ``stats``, ``peek`` and ``purge``.

Each takes ``--queue`` (a name or URL), ``--region``, ``--endpoint-url`` and ``--profile`` like
``run`` (the same flags and ``TRIO_SQS_*`` variables), and reports errors as one line on stderr
with ``run``'s exit codes (3: no such queue, 4: credentials).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import trio

from .._client import SendEntry, SQSClient
from .._connect import open_client
from .._exceptions import QueueDoesNotExist
from .._message import Message, MessageAttributeValue
from ._common import EXIT_ERROR, EXIT_OK, classify
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

TOOLS = ("send", "stats", "peek", "purge")

_BY_NAME = {setting.dest: setting for setting in RUN_SETTINGS}
TOOL_SETTINGS: list[Setting] = [
    QUEUE_SETTING,
    _BY_NAME["region"],
    _BY_NAME["endpoint_url"],
    _BY_NAME["profile"],
    *LOG_SETTINGS,
]

TOOL_EXIT_CODES = """exit codes:
  0    done (stats --watch: stopped with Ctrl-C)
  1    unexpected error (e.g. SQS unreachable after retries), a message not sent or not
       released, purge answered with no
  2    usage: bad flag or value; purge without --yes and without a terminal
  3    the queue does not exist
  4    AWS credentials missing or rejected
"""

BODY_PREVIEW = 80
_COUNTS = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


# -- parsers --------------------------------------------------------------------------------------


# The longest peek's release may hold a Ctrl-C back.
RELEASE_BOUND = 10.0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def add_tool_parsers(commands: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """Add ``send``, ``stats``, ``peek`` and ``purge`` to the ``trio-sqs`` subcommands."""
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
    send.add_argument("--delay", type=_non_negative_int, metavar="N", help="DelaySeconds, 0-900")
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


def _counts(attributes: Mapping[str, str]) -> dict[str, int]:
    return {key: int(attributes.get(name, "0")) for key, name in _COUNTS.items()}


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
        await client.purge_queue(url)
        _emit(f"purged {queue} ({total} messages)")
    return EXIT_OK


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        return ""
