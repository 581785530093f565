"""The checks run after every end-to-end run, from three independent records: the proxy's log of
what went over the wire (tests/fault_proxy.py), the workers' own reports (stdout of
tests/e2e_worker.py), and the queue server's own counts (``GET /stats``: the queue's final state,
and how many deliveries it made).

Every SQS delivery of every message is followed to its fate (handled and deleted, released,
cancelled at the end of the grace period, lost with a SIGKILLed worker, taken by a long poll its
client had abandoned, dropped by an injected fault, corrupt...). A message delivered more than once
is a duplicate, and each earlier delivery must have a fate that explains the next one and is
backed by evidence (a worker's statistics, a fault the proxy injected, a signal the harness sent).
What is left is reported as unaccounted and fails the run.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .e2e_harness import QUEUED, Harness, Worker
from .fault_proxy import BREAKING, Exchange

# A request written before stop() can reach the proxy after the worker's "stopping" timestamp:
# the bytes cross the loopback (microseconds) and wait until the proxy's event loop reads them.
# The allowance is that constant plus the worst lateness of the proxy's loop measured around the
# moment (see FaultProxy.lags). Per-connection state is not enough on its own here: a poller
# reuses a kept-alive connection, so a request on an old connection may still be a new request.
TRANSIT = 0.02
# How promptly a message that becomes receivable (released at shutdown, or back when its lease
# ended) must reach a long poll that is waiting for it: the queue server, like SQS, hands it over
# at once (no re-check interval), so this only covers the hops (server -> proxy) and a loaded
# 2-core box. Measured here: at most 16 ms in 115 runs of the full matrix (moto needed 1.3 s).
HANDOFF = 0.25
# Releases at shutdown go out "at once" (docs/design.md, 'Unstarted messages go back at once'):
# right after stop() for messages no handler started, right after the grace period for handlers
# cancelled then ('Bounded grace for running handlers'), right after a poll that landed after
# stop. The acknowledgement batcher is hurried at stop; this bounds its latency.
RELEASE_LATENCY = 0.5
EPS = 0.005
EARLY_SLACK = 0.5

ACCOUNTED = {
    "released",  # handed back at stop, unstarted: another worker takes it (not a duplicate run)
    "cancelled_at_grace",  # the handler outlasted the grace period
    "killed",  # the worker was SIGKILLed holding it
    "orphaned",  # taken by a poll its client had left (docs/design.md, 'Abandoned long polls')
    "unread",  # the answer reached the socket, the worker stopped before reading it
    "fault_dropped",  # the proxy broke the answer that carried it
    "corrupt",  # the proxy falsified its MD5; the worker must leave it to come back
    "ack_lost",  # handled, but the delete never reached SQS (counted as delete_failed/unflushed)
    "release_lost",  # the release never reached SQS (release_failed/release_expired/unflushed)
    "lease_lapsed",  # redelivered while a handler ran: heartbeats failed (faults injected)
    "ack_late",  # handled, but its delete (retried after faults) came after the lease ran out
}


@dataclass
class Delivery:
    mid: str
    handle: str
    worker: Worker
    ex: Exchange
    got: bool  # the worker could have read it intact
    start: float | None = None
    end: float | None = None
    end_kind: str | None = None
    fate: str = "?"

    @property
    def at(self) -> float:
        assert self.ex.answered is not None
        return self.ex.answered


@dataclass
class Report:
    scenario: str
    seed: int
    messages: int = 0
    deliveries: int = 0
    lost: list[str] = field(default_factory=list)
    causes: Counter[str] = field(default_factory=Counter)
    reruns: int = 0
    unaccounted: list[str] = field(default_factory=list)
    shutdowns: list[float] = field(default_factory=list)
    redeliveries: list[float] = field(default_factory=list)  # released, a peer was polling
    redeliveries_other: list[float] = field(default_factory=list)  # no peer polling / swallowed
    swallowed: list[float] = field(default_factory=list)  # released, then taken by an orphan
    self_swallowed: int = 0  # ... by the releasing worker's own abandoned poll
    in_transit: int = 0
    moments: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def check(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:40])
            more = f"\n  ... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
            # pytest names the running test in this variable: "path::name[id] (call)".
            node = os.environ.get("PYTEST_CURRENT_TEST", "tests/test_e2e.py").rpartition(" ")[0]
            raise AssertionError(
                f"[{self.scenario} seed={self.seed}] {len(self.problems)} failed check(s) "
                f"(run it again: pytest -m '' '{node}'):\n  {shown}{more}"
            )

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "messages": self.messages,
            "deliveries": self.deliveries,
            "lost": len(self.lost),
            "duplicates": dict(self.causes),
            "reruns": self.reruns,
            "unaccounted": len(self.unaccounted),
            "max_shutdown": max(self.shutdowns, default=0.0),
            "max_redelivery": max(self.redeliveries, default=0.0),
            "max_redelivery_other": max(self.redeliveries_other, default=0.0),
            "swallowed": len(self.swallowed),
            "max_swallowed_delay": max(self.swallowed, default=0.0),
            "self_swallowed": self.self_swallowed,
            "in_transit": self.in_transit,
            "moments": self.moments,
            "problems": len(self.problems),
        }

    def save(self) -> None:
        """Append this run's row to ``$TRIO_SQS_E2E_REPORT`` (JSON lines), if set."""
        path = os.environ.get("TRIO_SQS_E2E_REPORT")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(self.row()) + "\n")


def analyze(h: Harness, *, redelivery_checked: bool = True) -> Report:
    """Check a finished run (after :meth:`Harness.settle`)."""
    r = Report(h.name, h.seed, messages=len(h.produced))
    workers = {w.tag: w for w in h.workers}
    exchanges = h.proxy.exchanges

    _reclassify_releases(h)
    _check_processes(h, r)
    _check_no_receive_after_stop(h, r)
    deliveries = _deliveries(h, r, workers)
    _follow(h, r, deliveries)
    _check_redeliveries(h, r, deliveries, checked=redelivery_checked)
    _check_statistics(h, r, deliveries, exchanges)
    if h.final_counts is None:
        r.fail("the run did not settle (no final queue state)")
    else:
        if any(h.final_counts[k] for k in QUEUED):
            r.fail(f"the queue did not end empty: {h.final_counts}")
        # Every message the server handed out went through the proxy and was followed above.
        # Counted on both sides after the run, when no poll can take anything any more.
        if h.final_counts["deliveries"] != r.deliveries:
            r.fail(
                f"the server made {h.final_counts['deliveries']} deliveries, the proxy saw "
                f"{r.deliveries}"
            )
    for w in h.workers:
        if w.signal_sent_at is not None and w.signal_sent_at < (h.settled_at or float("inf")):
            r.moments[w.tag] = sorted(moments(h, w, w.signal_sent_at))
    return r


# -- processes and the wire -----------------------------------------------------------------------


def _check_processes(h: Harness, r: Report) -> None:
    for w in h.workers:
        if w.unexpected:
            r.fail(f"{w.tag} printed unexpected lines: {w.unexpected[:3]}")
        if w.alive:
            r.fail(f"{w.tag} still running after the run")
            continue
        if w.signal_sent_at is None or (w.exited_at or 0) < w.signal_sent_at:
            r.fail(f"{w.tag} exited by itself (rc {w.returncode}): {w.stderr[-5:]}")
            continue
        if w.killed:
            continue
        took = (w.exited_at or 0) - w.signal_sent_at
        r.shutdowns.append(took)
        if took > w.config.shutdown_bound:
            r.fail(
                f"{w.tag} took {took:.3f} s to exit after {w.signal} "
                f"(bound grace + flush + 1 s = {w.config.shutdown_bound:.1f} s)"
            )
        if w.returncode != 0:
            r.fail(f"{w.tag} exited with {w.returncode} after {w.signal}: {w.stderr[-5:]}")
        if w.stats is None:
            r.fail(f"{w.tag} printed no final statistics")
        elif w.stats["unflushed"] and w.stopping_at is not None:
            # Leaving deletes, releases or messages in hand unflushed is allowed only when the
            # flush ran out of time: it starts once no handler runs and lasts flush_timeout.
            ends = [t for t, _ in w.handled + w.cancelled if t >= w.stopping_at]
            flushed_from = max([w.stopping_at, *ends])
            if (w.exited_at or 0) - flushed_from < w.config.flush_timeout - 0.1:
                r.fail(
                    f"{w.tag} left unflushed={w.stats['unflushed']} but exited "
                    f"{(w.exited_at or 0) - flushed_from:.3f} s after its last handler ended, "
                    f"before its {w.config.flush_timeout} s flush timeout ran out"
                )
        if w.stopping_at is None:
            r.fail(f"{w.tag} never reported stopping")
            continue
        # Handlers are cancelled at the end of their grace period, not before (docs/design.md,
        # 'Bounded grace for running handlers').
        for t, mid in w.cancelled:
            if t < w.stopping_at + w.config.grace - 0.05:
                r.fail(
                    f"{w.tag} cancelled the handler of {mid} {t - w.stopping_at:.3f} s after "
                    f"stop, before its {w.config.grace} s grace period ended"
                )


def _check_no_receive_after_stop(h: Harness, r: Report) -> None:
    """No ReceiveMessage leaves a worker after its stop() (docs/design.md, 'No receive after stop'),
    judged by the proxy.

    The worker prints ``stopping <t>`` right before calling stop(), with no checkpoint in between:
    a request written after that moment was written after stop(). A request written just before
    can still be read by the proxy a little later; those within TRANSIT plus the proxy's measured
    loop lateness are counted as in transit (at most one per poller: a poller has one request out
    at a time), anything later is a violation.
    """
    for w in h.workers:
        if w.stopping_at is None:
            continue
        t0 = w.stopping_at
        allowance = TRANSIT + h.proxy.max_lag(t0 - 0.5, t0 + 1.0)
        late = [e for e in h.proxy.by_worker(w.tag, "ReceiveMessage") if e.arrived > t0 + allowance]
        transit = [
            e
            for e in h.proxy.by_worker(w.tag, "ReceiveMessage")
            if t0 < e.arrived <= t0 + allowance
        ]
        r.in_transit += len(transit)
        for e in late:
            r.fail(
                f"{w.tag} sent ReceiveMessage #{e.id} {e.arrived - t0:.3f} s after stop() "
                f"(allowance {allowance:.3f} s)"
            )
        if len(transit) > w.config.pollers_count:
            r.fail(
                f"{w.tag}: {len(transit)} ReceiveMessage in transit at stop, more than its "
                f"{w.config.pollers_count} poller(s)"
            )


# -- following every delivery -------------------------------------------------------------------


def _deliveries(h: Harness, r: Report, workers: dict[str, Worker]) -> list[Delivery]:
    out: list[Delivery] = []
    for ex in h.proxy.exchanges:
        if ex.operation != "ReceiveMessage" or not ex.messages:
            continue
        view = ex.client_view
        for mid, handle in ex.messages:
            got = view in ("ok", "corrupted") and ex.corrupted != mid
            out.append(Delivery(mid, handle, workers[ex.worker], ex, got))
    out.sort(key=lambda d: d.at)
    r.deliveries = len(out)
    # Pair each handler start with the delivery that brought the message to that worker.
    by_key: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for d in out:
        if d.got:
            by_key[d.worker.tag, d.mid].append(d)
    for w in h.workers:
        ends: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for t, mid in w.handled:
            ends[mid].append((t, "handled"))
        for t, mid in w.cancelled:
            ends[mid].append((t, "cancelled"))
        for mid in ends:
            ends[mid].sort()
        for t, mid in w.started:
            candidates = [
                d
                for d in by_key.get((w.tag, mid), [])
                if d.start is None and (d.ex.writing or 0) <= t + EPS
            ]
            if not candidates:
                r.fail(
                    f"{w.tag} started {mid} at {t:.3f} but the proxy never delivered it intact "
                    "to that worker (a corrupt message reached a handler?)"
                )
                continue
            d = candidates[-1]
            d.start = t
            later = [e for e in ends.get(mid, []) if e[0] >= t - EPS]
            if later:
                d.end, d.end_kind = later[0]
                ends[mid].remove(later[0])
    return out


def _follow(h: Harness, r: Report, deliveries: list[Delivery]) -> None:
    deleted: dict[str, float] = {}  # receipt handle -> when its confirmed delete arrived
    released: set[str] = set()
    # Confirmed visibility changes per message: (when sent, visible again at, receipt handle).
    # Keyed by message, whichever of its receipt handles the change named: a server that honoured
    # a stale handle (moto did) would show up below as "made visible again ... older receipt".
    mid_of = {d.handle: d.mid for d in deliveries}
    changes: dict[str, list[tuple[float, float, str, Exchange]]] = defaultdict(list)
    for ex in h.proxy.exchanges:
        if ex.operation == "DeleteMessageBatch":
            for handle in ex.confirmed:
                deleted.setdefault(handle, ex.arrived)
        elif ex.operation == "ChangeMessageVisibilityBatch" and ex.confirmed:
            assert ex.forwarded is not None
            for handle, seconds in ex.confirmed.items():
                if ex.kind == "Release":
                    released.add(handle)
                if handle in mid_of:
                    changes[mid_of[handle]].append(
                        (ex.forwarded, ex.forwarded + (seconds or 0), handle, ex)
                    )
    for d in deliveries:
        w = d.worker
        if not d.got:
            if d.ex.corrupted == d.mid:
                d.fate = "corrupt"
            elif d.ex.client_view == "gone":
                d.fate = "orphaned"
            else:
                d.fate = "fault_dropped"
        elif d.start is not None:
            if d.end_kind == "handled":
                d.fate = "done" if d.handle in deleted else "ack_lost"
            elif d.end_kind == "cancelled":
                d.fate = "cancelled_at_grace"
            elif w.killed:
                d.fate = "killed"
            else:
                d.fate = "unaccounted: its handler started and never finished"
        elif d.handle in released:
            d.fate = "released"
        elif w.killed:
            d.fate = "killed"
        else:
            d.fate = "held"  # resolved per worker below: unread or release_lost
    _resolve_held(h, r, deliveries)

    by_message: dict[str, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_message[d.mid].append(d)
    handled = h.handled_ids()
    r.lost = sorted(set(h.produced) - handled)
    for mid in r.lost:
        r.fail(f"message {mid} was never handled ({len(by_message.get(mid, []))} deliveries)")
    # Heartbeats that failed (or stalled) can let a lease lapse; mere latency must not.
    heartbeat_trouble = {
        w.tag
        for w in h.workers
        if (w.stats or {}).get("heartbeat_errors")
        or any(
            e.fault is not None and (e.fault.kind in BREAKING or e.fault.kind == "stall")
            for e in h.proxy.by_worker(w.tag, "Heartbeat")
        )
    }
    delete_trouble = {
        w.tag
        for w in h.workers
        if any(e.fault is not None for e in h.proxy.by_worker(w.tag, "DeleteMessageBatch"))
    }
    for mid, chain in by_message.items():
        if mid not in h.produced:
            r.fail(f"a message nobody produced was delivered: {mid}")
        for d, nxt in itertools.pairwise(chain):
            cause = d.fate
            running = d.start is not None and (d.end is None or d.end > nxt.at)
            lease = float(d.ex.request.get("VisibilityTimeout", 30))
            early = [
                (handle, ex)
                for sent, visible, handle, ex in changes.get(mid, [])
                if sent >= d.at - EPS and visible <= nxt.at + EARLY_SLACK
            ]
            if nxt.at - d.at < lease - EARLY_SLACK and d.handle not in {h for h, _ in early}:
                # Received again while this receipt was still invisible and its holder had not
                # released it. Either someone changed the visibility with an older receipt handle
                # of the message (SQS, and the queue server, refuse that), or the server raced
                # (it serves one request at a time); named to tell them apart.
                if early:
                    stale = ", ".join(
                        f"#{ex.id} {ex.kind} by {ex.worker} at {ex.forwarded:.3f}"
                        for _, ex in early
                    )
                    cause = (
                        f"unaccounted: made visible again while {d.worker.tag} held it, by a "
                        f"visibility change with an older receipt handle ({stale})"
                    )
                else:
                    race = " by a concurrent poll (server race)" if _overlap(d.ex, nxt.ex) else ""
                    cause = f"unaccounted: received again{race} before its lease ended"
            elif running and not d.worker.killed and d.fate != "cancelled_at_grace":
                cause = "lease_lapsed"
                if d.worker.tag not in heartbeat_trouble:
                    cause = (
                        "unaccounted: its lease lapsed while the handler ran (no heartbeat fault)"
                    )
            if cause == "done" and deleted[d.handle] > nxt.at:
                # Handled in time, but its delete reached SQS only after the lease had run out
                # (heartbeats stop once a handler returns): acceptable when the worker's deletes
                # were being broken by injected faults, a defect otherwise.
                cause = (
                    "ack_late"
                    if d.worker.tag in delete_trouble
                    else "unaccounted: its delete came after the lease ran out, no delete fault"
                )
            if cause not in ACCOUNTED:
                if cause == "done":
                    cause = "unaccounted: delivered again after its delete was confirmed"
                r.unaccounted.append(
                    f"{mid} delivery to {d.worker.tag} at {d.at:.3f}: {cause}; "
                    f"history: {describe(chain)}"
                )
                continue
            r.causes[cause] += 1
        if mid in handled and not any(d.fate == "done" for d in chain):
            r.fail(f"{mid} was handled but never deleted: {describe(chain)}")
    # Lost acknowledgements and releases must show in the statistics of a worker that exited.
    for w in h.workers:
        if w.killed or w.stats is None:
            continue
        mine = [d for d in deliveries if d.worker is w]
        acks = sum(1 for d in mine if d.fate == "ack_lost")
        if acks > w.stats["delete_failed"] + w.stats["unflushed"]:
            r.fail(
                f"{w.tag}: {acks} handled messages never deleted, but delete_failed="
                f"{w.stats['delete_failed']} unflushed={w.stats['unflushed']}"
            )
    starts = Counter(mid for w in h.workers for _, mid in w.started)
    r.reruns = sum(n - 1 for n in starts.values())
    for line in r.unaccounted:
        r.fail(f"unaccounted duplicate: {line}")


def _overlap(a: Exchange, b: Exchange) -> bool:
    """Whether the server was working on both requests at one moment."""
    assert a.forwarded is not None and b.forwarded is not None
    return a.forwarded <= (b.answered or 0) and b.forwarded <= (a.answered or 0)


def describe(chain: list[Delivery]) -> str:
    def t(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    return "; ".join(
        f"#{d.ex.id} {d.worker.tag} answered {t(d.at)} view {d.ex.client_view} "
        f"start {t(d.start)} end {t(d.end)} {d.end_kind or ''} fate {d.fate}"
        for d in chain
    )


def _resolve_held(h: Harness, r: Report, deliveries: list[Delivery]) -> None:
    """Deliveries a worker got but neither started nor released: either the worker stopped before
    reading the answer (an aborted poll, counted in aborted_polls) or its release never reached
    SQS (counted in release_failed, release_expired or unflushed). Check both against the worker's statistics."""
    for w in h.workers:
        mine = [d for d in deliveries if d.worker is w]
        held = [d for d in mine if d.fate == "held"]
        if not held:
            continue
        stats = w.stats or {}
        got = sum(1 for d in mine if d.got)
        unread = got - stats.get("received", 0)
        lost_releases = (
            stats.get("release_failed", 0)
            + stats.get("release_expired", 0)
            + stats.get("unflushed", 0)
        )
        if unread < 0 or len(held) > unread + lost_releases:
            for d in held:
                d.fate = (
                    f"unaccounted: delivered to {w.tag}, neither started nor released "
                    f"(received {stats.get('received')}, got {got}, lost releases {lost_releases})"
                )
            continue
        for d in held[:unread]:
            d.fate = "unread"
        for d in held[unread:]:
            d.fate = "release_lost"
        w.unread_polls = len({d.ex.id for d in held[:unread]})


def _check_redeliveries(
    h: Harness, r: Report, deliveries: list[Delivery], *, checked: bool
) -> None:
    """A message released at shutdown must reach another worker as soon as its release lets it
    (at once, or once the stopping worker's last poll is over), not after a lease."""
    releases: dict[str, Exchange] = {}
    for ex in h.proxy.exchanges:
        if ex.kind == "Release":
            for handle in ex.confirmed:
                releases.setdefault(handle, ex)
    chains: dict[str, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        chains[d.mid].append(d)
    for chain in chains.values():
        for d in chain[:-1]:
            rel = releases.get(d.handle)
            if d.fate not in ("released", "cancelled_at_grace") or rel is None:
                continue
            assert rel.forwarded is not None
            w = d.worker
            if w.stopping_at is not None and not any(
                e.fault for e in h.proxy.by_worker(w.tag, "Release")
            ):
                due = max(w.stopping_at, d.at)
                if d.fate == "cancelled_at_grace":
                    due = w.stopping_at + w.config.grace
                # A release waits for a heartbeat of its message that is on the wire (so the
                # heartbeat cannot land last and hide the message again).
                for beat in h.proxy.by_worker(w.tag, "Heartbeat"):
                    if d.handle in beat.visibility and beat.is_open(due):
                        due = max(due, beat.closed_at() or due)
                if rel.arrived - due > RELEASE_LATENCY:
                    r.fail(
                        f"{d.mid} ({d.fate}) released by {w.tag} {rel.arrived - due:.3f} s late "
                        f"(bound {RELEASE_LATENCY} s)"
                    )
            # The delay until a worker really got it. Deliveries in between went to nobody: to
            # a long poll its client had abandoned (docs/design.md, 'Abandoned long polls'), or
            # broken by a fault.
            later = chain[chain.index(d) + 1 :]
            got = next((x for x in later if x.got), None)
            between = later[: later.index(got)] if got is not None else later
            orphans = [x for x in between if x.fate == "orphaned"]
            if got is None:
                continue  # never handled: reported as lost
            delay = got.at - rel.forwarded
            assert rel.answered is not None
            # Released at stop, a message is hidden for as long as a poll of the stopping worker
            # may still run on the server (the cover): it is due to others only after that.
            hidden = rel.visibility.get(d.handle) or 0
            waiting = [
                e
                for e in h.proxy.exchanges
                if e.operation == "ReceiveMessage"
                and e.worker != d.worker.tag
                and _had_room(e, rel.answered + hidden)
                and (e.fault is None or e.fault.kind not in BREAKING)
                and _accepting(h, e.worker, rel.forwarded + hidden)
            ]
            if orphans:
                r.swallowed.append(delay)
                if orphans[0].worker is d.worker:
                    r.self_swallowed += 1
            elif waiting and not between:
                r.redeliveries.append(delay - hidden)
                bound = HANDOFF + hidden
                if checked and delay > bound:
                    r.fail(
                        f"{d.mid} released by {d.worker.tag} at {rel.forwarded:.3f} was received "
                        f"again only {delay:.3f} s later (bound {bound} s) although "
                        f"{len(waiting)} long poll(s) of other workers were waiting: "
                        + ", ".join(_poll(e) for e in waiting)
                        + f"; received again by {_poll(got.ex)}"
                    )
            else:
                r.redeliveries_other.append(delay)


def _reclassify_releases(h: Harness) -> None:
    """The proxy tells a heartbeat from a release by its value (a heartbeat asks for exactly the
    worker's lease). A release at stop asks for as long as the worker's last poll may still run on
    the server, which can happen to equal the lease. After the worker was signalled, the last
    change or delete naming a receipt handle is a release if it is a change: a heartbeat there is
    always followed by the delete or the release of its handler."""
    last: dict[tuple[str, str], Exchange] = {}
    for ex in h.proxy.exchanges:  # in arrival order
        if ex.operation == "ChangeMessageVisibilityBatch":
            handles = list(ex.visibility)
        elif ex.operation == "DeleteMessageBatch":
            handles = [str(e.get("ReceiptHandle")) for e in ex.request.get("Entries", [])]
        else:
            continue
        for handle in handles:
            last[(ex.worker, handle)] = ex
    signalled = {w.tag: w.signal_sent_at for w in h.workers}
    for (tag, _), ex in last.items():
        at = signalled.get(tag)
        if ex.kind == "Heartbeat" and at is not None and ex.arrived >= at:
            ex.kind = "Release"


def _had_room(e: Exchange, visible: float) -> bool:
    """Whether poll ``e`` was waiting at the server when a message became visible (at ``visible``
    at the latest) and could still take it: it was answered later, with room to spare."""
    if e.forwarded is None or e.forwarded > visible:
        return False
    if e.answered is None:
        return True
    return e.answered > visible + 0.02 and len(e.messages) < int(
        e.request.get("MaxNumberOfMessages", 1)
    )


def _poll(e: Exchange) -> str:
    def t(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    return (
        f"#{e.id} {e.worker} arrived {t(e.arrived)} forwarded {t(e.forwarded)} answered "
        f"{t(e.answered)} with {len(e.messages)} view {e.client_view}"
    )


def _accepting(h: Harness, tag: str, at: float) -> bool:
    w = next(w for w in h.workers if w.tag == tag)
    return w.ready_at is not None and (w.signal_sent_at is None or w.signal_sent_at > at)


def lease_end(h: Harness, ex: Exchange, handle: str) -> float:
    """When the lease of the delivery ``handle`` (brought by ``ex``) ended at the latest: at the end
    of the poll's visibility timeout, or as set by the last confirmed visibility change of that
    receipt (a heartbeat, a release). Upper bounds: a change took effect before its answer."""
    assert ex.answered is not None
    end = ex.answered + float(ex.request.get("VisibilityTimeout", 30))
    changes = [
        e
        for e in h.proxy.exchanges
        if e.operation == "ChangeMessageVisibilityBatch"
        and handle in e.confirmed
        and e.answered is not None
    ]
    if changes:
        last = max(changes, key=lambda e: e.forwarded or 0)
        assert last.answered is not None
        end = last.answered + (last.confirmed[handle] or 0)
    return end


def first_waiting_poll(h: Harness, since: float, *, besides: str) -> float | None:
    """The first moment from ``since`` on when a ReceiveMessage of a worker other than ``besides``
    was waiting at the server (a message that is receivable then goes to it at once)."""
    return min(
        (
            max(e.forwarded, since)
            for e in h.proxy.exchanges
            if e.operation == "ReceiveMessage"
            and e.worker != besides
            and e.forwarded is not None
            and (e.answered is None or e.answered >= since)
        ),
        default=None,
    )


# -- statistics against the wire ---------------------------------------------------------------


def _check_statistics(
    h: Harness, r: Report, deliveries: list[Delivery], exchanges: list[Exchange]
) -> None:
    for w in h.workers:
        s = w.stats
        if s is None:
            continue
        receives = h.proxy.by_worker(w.tag, "ReceiveMessage")
        if s["completed"] != len(w.handled):
            r.fail(
                f"{w.tag}: statistics say completed={s['completed']}, it printed {len(w.handled)}"
            )
        if s["cancelled_at_grace"] != len(w.cancelled):
            r.fail(
                f"{w.tag}: cancelled_at_grace={s['cancelled_at_grace']} but "
                f"{len(w.cancelled)} handlers saw Cancelled"
            )
        corrupt = sum(1 for e in receives if e.client_view == "corrupted")
        if s["corrupt"] != corrupt:
            r.fail(f"{w.tag}: corrupt={s['corrupt']} but the proxy corrupted {corrupt} answers")
        # Every poll the worker abandoned (the proxy saw it hang up, or it left an answer
        # unread) must be counted: as an aborted poll, or as a poll error (a read timeout).
        gone = sum(1 for e in receives if e.client_view == "gone")
        abandoned = gone + w.unread_polls
        if abandoned > s["aborted_polls"] + s["poll_errors"]:
            r.fail(
                f"{w.tag}: {abandoned} abandoned polls but aborted_polls={s['aborted_polls']} "
                f"poll_errors={s['poll_errors']}"
            )
        errors = [e for e in receives if e.client_view == "error"]
        timeouts = [
            e for e in receives if e.client_view == "gone" and e.fault and e.fault.kind == "stall"
        ]
        # A broken answer to a poll that was on the wire at stop may have met a poll the worker
        # had just aborted: then it is counted as an aborted poll instead.
        t0 = w.stopping_at if w.stopping_at is not None else float("inf")
        at_stop = [e for e in errors if e.arrived <= t0 + TRANSIT and (e.closed_at() or 0) >= t0]
        if not len(errors) - len(at_stop) <= s["poll_errors"] <= len(errors) + len(timeouts):
            r.fail(
                f"{w.tag}: poll_errors={s['poll_errors']} but the proxy broke {len(errors)} "
                f"ReceiveMessage answers ({len(timeouts)} more stalled): "
                + ", ".join(
                    f"#{e.id} {e.fault} {e.upstream_status} {e.upstream_error!r}" for e in errors
                )
            )


# -- where was the worker when it got its signal? -------------------------------------------------


def moments(h: Harness, w: Worker, at: float) -> set[str]:
    """What the worker was doing at ``at``, from the wire and its own report."""
    found: set[str] = set()
    running = w.running_handlers(at)
    mine = h.proxy.by_worker(w.tag)
    polls = [e for e in mine if e.operation == "ReceiveMessage"]
    if running:
        found.add("handlers")
    if any(e.is_open(at) for e in polls):
        found.add("long_poll" if not running else "poll")
    if not running and not any(e.is_open(at) for e in mine if e.operation != "ReceiveMessage"):
        found.add("idle")
    for kind, name in (
        ("DeleteMessageBatch", "ack"),
        ("Heartbeat", "heartbeat"),
        ("Release", "release"),
    ):
        if any(e.kind == kind and e.is_open(at) for e in mine):
            found.add(name)
    # A poller in backoff: its last request failed and it has not sent the next one yet.
    backoff = 0
    for e in sorted(polls, key=lambda e: e.arrived):
        if e.arrived > at:
            break
        if backoff:
            backoff -= 1
        end = e.closed_at()
        if end is not None and end <= at and e.client_view == "error":
            backoff += 1
    if backoff:
        found.add("poll_backoff")
    # The client retrying an acknowledgement or heartbeat after a failed attempt.
    for kind in ("DeleteMessageBatch", "Heartbeat", "Release"):
        tries = sorted(
            (e for e in mine if e.kind == kind and e.arrived <= at), key=lambda e: e.arrived
        )
        if tries and tries[-1].client_view == "error" and (tries[-1].closed_at() or at + 1) <= at:
            found.add("client_retry_backoff")
    return found


# -- the table ---------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    """Summarise report rows per scenario (a markdown table)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["scenario"]].append(row)
    lines = [
        "| scenario | runs | messages | lost | duplicates (accounted, by cause) | unaccounted "
        "| max shutdown s | max redelivery s (peer polling) | other redeliveries s (max) "
        "| released, swallowed by an orphan (own; max delay s) | moments hit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group in sorted(groups.items()):
        causes: Counter[str] = Counter()
        hit: Counter[str] = Counter()
        for row in group:
            causes.update(row["duplicates"])
            for found in row["moments"].values():
                hit.update(found)
        lines.append(
            f"| {name} | {len(group)} | {sum(g['messages'] for g in group)} "
            f"| {sum(g['lost'] for g in group)} "
            f"| {sum(causes.values())}: {', '.join(f'{k} {v}' for k, v in sorted(causes.items()))} "
            f"| {sum(g['unaccounted'] for g in group)} "
            f"| {max(g['max_shutdown'] for g in group):.3f} "
            f"| {max(g['max_redelivery'] for g in group):.3f} "
            f"| {max(g['max_redelivery_other'] for g in group):.3f} "
            f"| {sum(g['swallowed'] for g in group)} ({sum(g['self_swallowed'] for g in group)}; "
            f"{max(g['max_swallowed_delay'] for g in group):.3f}) "
            f"| {', '.join(f'{k} {v}' for k, v in sorted(hit.items()))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m tests.e2e_checks report.jsonl: print the table of a TRIO_SQS_E2E_REPORT file.
    print(table([json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines()]))
