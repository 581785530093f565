"""``trio-sqs demo``: the shutdown contract, live and offline.

An embedded moto server (``pip install 'trio-sqs[demo]'``) holds a fresh queue; a producer sends
``--rate`` messages a second; a consumer runs handlers that take ``--handler-seconds``. After
``--stop-after`` seconds the process sends itself SIGTERM, which takes the same path as in
``trio-sqs run`` (:class:`ShutdownSignals`), and the demo prints the shutdown timeline and the
totals. ``lost`` counts messages that were produced, not completed, and not receivable by a
fresh receive just after the stop (for example swallowed by an abandoned long poll; the receive
waits ``ORPHAN_SETTLE`` so that such a poll has had its chance): it must be 0.

The timeline is derived from :meth:`Consumer.statistics` snapshots taken every 5 ms once the
signal is in (so each time is exact to about 5 ms), and from the signal time recorded by
:class:`ShutdownSignals`; the consumer needs no hook for it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio

from .._client import SQSClient
from .._config import ConsumerOptions
from .._connect import open_client
from .._consumer import Consumer
from .._message import Message
from .._open import open_consumer
from .._stats import ConsumerStatistics
from ._common import EXIT_ERROR, EXIT_OK, ShutdownSignals, classify
from ._logsetup import setup_logging
from ._settings import LOG_SETTINGS, CommandError, add_setting, make_options, resolve

__all__ = ["add_demo_parser", "cmd_demo"]

RUNNING_SAMPLE = 0.1
STOPPING_SAMPLE = 0.005
TTY_REFRESH = 0.1
PLAIN_REFRESH = 1.0
# An abandoned long poll lives on in the server and takes what becomes visible (docs/design.md,
# 'Abandoned long polls'); moto's re-checks the queue every second, so the count waits that long
# to see what it took.
ORPHAN_SETTLE = 1.2
Sample = tuple[float, ConsumerStatistics]


DESCRIPTION = """\
Watch a graceful shutdown, offline: an embedded moto server holds a fresh queue, a producer sends
RATE messages a second, a consumer runs handlers that take HANDLER_SECONDS, and after STOP_AFTER
seconds the process sends itself SIGTERM (the same path as in 'trio-sqs run'). Then it prints the
shutdown timeline and the totals; 'lost' (produced, not completed, not receivable right after the
stop) must be 0. Needs moto: pip install 'trio-sqs[demo]'."""

EPILOG = """exit codes:
  0    no message lost
  1    messages lost, or the demo failed
  2    usage error, or moto not installed
  130  a second SIGINT (Ctrl-C) during shutdown: exited at once
"""


def add_demo_parser(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``demo`` subcommand to ``commands`` (a subparsers action)."""
    demo = commands.add_parser(
        "demo",
        help="watch a graceful shutdown, offline (needs trio-sqs[demo])",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
    )
    add = demo.add_argument
    add("--rate", type=float, default=10.0, help="messages produced a second (default: 10)")
    add(
        "--handler-seconds",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="how long each handler takes (default: 0.2)",
    )
    add("--grace", type=float, default=5.0, metavar="SECONDS", help="grace period (default: 5)")
    add(
        "--stop-after",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds before the SIGTERM (default: 5)",
    )
    add("--concurrency", type=int, default=10, metavar="N", help="handlers at once (default: 10)")
    for setting in LOG_SETTINGS:
        add_setting(demo, setting)


@dataclass
class _Run:
    """What the producer, the progress display and the signal handler share."""

    rate: float
    stop: trio.Event = field(default_factory=trio.Event)
    producer_done: trio.Event = field(default_factory=trio.Event)
    produced: int = 0
    consumer: Consumer | None = None
    at_signal: ConsumerStatistics | None = None

    def on_signal(self) -> None:
        if self.consumer is not None:
            self.at_signal = self.consumer.statistics()
            self.consumer.stop()
        self.stop.set()


async def _produce(client: SQSClient, queue_url: str, run: _Run) -> None:
    """Send at ``run.rate`` until the stop; a send in progress then is finished, not cancelled,
    so that ``produced`` is exact."""
    next_at = trio.current_time()
    try:
        while not run.stop.is_set():
            await client.send_message(queue_url, f"demo message {run.produced}")
            run.produced += 1
            next_at += 1 / run.rate
            with trio.move_on_at(next_at):
                await run.stop.wait()
    finally:
        run.producer_done.set()


async def _signal_self(after: float, stop: trio.Event) -> None:
    with trio.move_on_after(after):
        await stop.wait()
        return  # stopped by a real signal first
    os.kill(os.getpid(), signal.SIGTERM)


async def _progress(consumer: Consumer, run: _Run, out: TextIO) -> list[Sample]:
    """Show progress until the consumer has stopped; return the snapshots taken after the stop.

    Cancellation: returns nothing on cancellation (it propagates).
    """
    tty = out.isatty()
    samples: list[Sample] = []
    printed_at = -math.inf
    while True:
        now, stats = trio.current_time(), consumer.statistics()
        if run.stop.is_set():
            samples.append((now, stats))
        done = stats.state == "stopped"
        line = (
            f"produced {run.produced:5d}   received {stats.received:5d}   "
            f"in flight {stats.in_flight:3d}   done {stats.completed:5d}"
        )
        if tty and (done or now - printed_at >= TTY_REFRESH):
            out.write("\r" + line + ("\n" if done else ""))
            out.flush()
            printed_at = now
        elif not tty and (done or now - printed_at >= PLAIN_REFRESH):
            out.write(line + "\n")
            out.flush()
            printed_at = now
        if done:
            return samples
        if run.stop.is_set():
            with trio.move_on_after(STOPPING_SAMPLE):
                await consumer.wait_stopped()
        else:
            with trio.move_on_after(RUNNING_SAMPLE):
                await run.stop.wait()


async def _count_receivable(client: SQSClient, queue_url: str) -> int:
    """Messages a fresh consumer could receive now (taken with a long lease, never deleted)."""
    seen: set[str] = set()
    empty = 0
    while empty < 2:
        result = await client.receive_messages(
            queue_url,
            max_messages=10,
            wait_time=0,
            visibility_timeout=300,
            attribute_names=(),
            message_attribute_names=(),
        )
        empty = 0 if result.messages else empty + 1
        seen.update(m.message_id for m in result.messages)
    return len(seen)


def _first(samples: Iterable[Sample], test: Callable[[ConsumerStatistics], bool]) -> float | None:
    return next((t for t, stats in samples if test(stats)), None)


def timeline(
    t0: float, base: ConsumerStatistics, samples: list[Sample], exited: float
) -> list[tuple[float | None, str]]:
    """The shutdown events as (seconds after the signal or None, description)."""
    final = samples[-1][1]

    def at(test: Callable[[ConsumerStatistics], bool]) -> float | None:
        t = _first(samples, test)
        return None if t is None else max(0.0, t - t0)

    events: list[tuple[float | None, str]] = [(0.0, "signal received")]
    aborted = final.aborted_polls - base.aborted_polls
    landed = final.polls - base.polls
    if aborted:
        when = at(lambda s: s.aborted_polls > base.aborted_polls)
        events.append((when, f"long poll aborted ({aborted} poll(s))"))
    if landed:
        when = at(lambda s: s.polls > base.polls)
        events.append((when, f"long poll landed ({landed}), what it brought released"))
    if not aborted and not landed:
        events.append((None, "long poll aborted: none was in flight"))
    finished = final.completed - base.completed
    cancelled = final.cancelled_at_grace - base.cancelled_at_grace
    text = f"handlers finished or cancelled ({finished} finished, {cancelled} cancelled)"
    events.append((at(lambda s: s.in_flight == 0), text))
    released = final.released - base.released
    when = at(lambda s: s.released == final.released) if released else None
    events.append((when, f"messages released ({released})"))
    acks = (final.deleted, final.delete_failed, final.released, final.release_failed)
    when = at(lambda s: (s.deleted, s.delete_failed, s.released, s.release_failed) == acks)
    deleted = final.deleted - base.deleted
    text = f"acknowledgements flushed ({deleted} deleted, {final.unflushed} unflushed)"
    events.append((when, text))
    events.append((exited - t0, "exit"))
    # Chronological; an event that did not happen stays where the contract lists it.
    keys, last = [], 0.0
    for offset, _ in events:
        last = offset if offset is not None else last
        keys.append(last)
    return [event for _, event in sorted(zip(keys, events, strict=True), key=lambda pair: pair[0])]


async def _demo(
    endpoint: str, args: argparse.Namespace, options: ConsumerOptions, out: TextIO
) -> int:
    signals = ShutdownSignals()
    run = _Run(rate=args.rate)

    async def handle(message: Message) -> None:
        await trio.sleep(args.handler_seconds)

    async with open_client(
        region="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",
    ) as client:
        queue_url = await client.create_queue(f"trio-sqs-demo-{uuid.uuid4().hex[:8]}")
        out.write(
            f"moto at {endpoint}, queue {queue_url.rsplit('/', 1)[-1]}\n"
            f"producing {args.rate:g} msg/s, handlers take {args.handler_seconds * 1000:.0f} ms, "
            f"concurrency {options.concurrency}, grace {options.grace_period:g} s; "
            f"SIGTERM to self in {args.stop_after:g} s\n\n"
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(signals.watch, run.on_signal)
            async with open_consumer(queue_url, handle, client=client, options=options) as consumer:
                run.consumer = consumer
                if run.stop.is_set():  # a signal came while the consumer was starting
                    run.on_signal()
                nursery.start_soon(_produce, client, queue_url, run)
                nursery.start_soon(_signal_self, args.stop_after, run.stop)
                samples = await _progress(consumer, run, out)
            exited = trio.current_time()
            await run.producer_done.wait()
            await trio.sleep(ORPHAN_SETTLE)
            receivable = await _count_receivable(client, queue_url)
            nursery.cancel_scope.cancel()
    assert signals.received_at is not None and run.at_signal is not None
    out.write(
        f"\nshutdown timeline ({signals.name}; times after the signal, sampled every 5 ms):\n"
    )
    for offset, text in timeline(signals.received_at, run.at_signal, samples, exited):
        shown = "-" if offset is None else f"+{offset * 1000:.0f} ms"
        out.write(f"  {shown:>9}  {text}\n")
    final = samples[-1][1]
    lost = run.produced - final.completed - receivable
    out.write(
        f"\ntotals: produced {run.produced}, completed {final.completed}, "
        f"released {final.released}, still in queue {receivable}, lost {lost}\n"
    )
    out.flush()
    return EXIT_OK if lost == 0 else EXIT_ERROR


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    values = resolve(args, LOG_SETTINGS, environ)
    for name in ("rate", "stop_after"):
        if not getattr(args, name) > 0:
            raise CommandError(f"--{name.replace('_', '-')} must be positive")
    if not args.handler_seconds >= 0:
        raise CommandError("--handler-seconds must not be negative")
    options = make_options({"concurrency": args.concurrency, "grace_period": args.grace})
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise CommandError("trio-sqs demo needs moto: pip install 'trio-sqs[demo]'") from None
    setup_logging(values.get("log_level", "WARNING"), values.get("log_format", "text"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        code: int = trio.run(_demo, f"http://{host}:{port}", args, options, sys.stdout)
    except Exception as exc:
        code, message = classify(exc, "demo")
        raise CommandError(message, code) from None
    finally:
        server.stop()
    if code != EXIT_OK:
        raise CommandError(
            f"messages were lost: not completed and not receivable after the stop (they "
            f"reappear once their {options.visibility_timeout} s lease ends)",
            code,
        )
    return code
