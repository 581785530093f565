"""Liveness and readiness decisions of the health endpoints, and the demo's timeline, without I/O.

The endpoints themselves are exercised over HTTP in test_cli.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from trio_sqs import ConsumerOptions, ConsumerStatistics
from trio_sqs._cli._demo import timeline
from trio_sqs._cli._health import Probe
from trio_sqs._stats import ConsumerState, Counters


def stats(
    state: ConsumerState = "running",
    *,
    in_flight: int = 0,
    buffered: int = 0,
    last_poll_at: float | None = None,
    **counters: int,
) -> ConsumerStatistics:
    return ConsumerStatistics.from_counters(
        Counters(**counters),
        state=state,
        in_flight=in_flight,
        buffered=buffered,
        last_poll_at=last_poll_at,
    )


@dataclass
class FakeConsumer:
    options: ConsumerOptions
    snapshot: ConsumerStatistics

    def statistics(self) -> ConsumerStatistics:
        return self.snapshot


def probe_for(snapshot: ConsumerStatistics, window: float = 60.0) -> Probe:
    probe = Probe(liveness_window=window, queues=["q"])
    probe.attach("q", FakeConsumer(ConsumerOptions(concurrency=10), snapshot))  # type: ignore[arg-type]
    return probe


def test_before_the_consumer_runs_alive_but_not_ready() -> None:
    probe = Probe(liveness_window=60)
    assert probe.liveness()[0] is True
    assert probe.readiness() == (False, {"status": "starting"})


def test_recent_poll_is_alive_and_ready() -> None:
    probe = probe_for(stats(last_poll_at=time.time() - 5))
    alive, body = probe.liveness()
    assert alive and body["status"] == "ok"
    assert probe.readiness()[0] is True


def test_stale_poll_fails_liveness_unless_saturated() -> None:
    old = time.time() - 120
    alive, body = probe_for(stats(last_poll_at=old, in_flight=3)).liveness()
    assert not alive and body["status"] == "no recent poll"
    # 10 running + 10 buffered = capacity 20: no room for a batch of 10, so no poll is due.
    alive, body = probe_for(stats(last_poll_at=old, in_flight=10, buffered=1)).liveness()
    assert alive and body["status"] == "saturated"


def test_no_poll_yet_counts_from_the_start() -> None:
    alive, _ = probe_for(stats(last_poll_at=None)).liveness()
    assert alive


@pytest.mark.parametrize(("state", "alive"), [("stopping", True), ("stopped", False)])
def test_stopping_is_alive_but_never_ready(state: ConsumerState, alive: bool) -> None:
    probe = probe_for(stats(state, last_poll_at=time.time() - 600))
    assert probe.liveness()[0] is alive
    assert probe.readiness()[0] is False


def test_several_queues_alive_while_each_is_and_ready_when_all_run() -> None:
    """``trio-sqs run`` with several queues: one probe for them all."""
    recent, old = time.time() - 5, time.time() - 600
    probe = Probe(liveness_window=60, queues=["a", "b"])
    options = ConsumerOptions(concurrency=10)
    # b still starting: alive (starting), not ready.
    probe.attach("a", FakeConsumer(options, stats(last_poll_at=recent)))  # type: ignore[arg-type]
    alive, body = probe.liveness()
    # The age is read from the wall clock at each call: compared with a tolerance, not exactly.
    a_body = {"status": "ok", "state": "running", "window_seconds": 60}
    assert (alive, body) == (
        True,
        {
            "status": "ok",
            "queues": {
                "a": {**a_body, "last_poll_age_seconds": pytest.approx(5, abs=1)},
                "b": {"status": "starting"},
            },
        },
    )
    assert probe.readiness() == (
        False,
        {"status": "starting", "queues": {"a": "running", "b": "starting"}},
    )
    # Both running, b stuck: not alive, and the body says which.
    probe.attach("b", FakeConsumer(options, stats(last_poll_at=old)))  # type: ignore[arg-type]
    alive, body = probe.liveness()
    assert not alive and body["status"] == "no recent poll"
    queues = body["queues"]
    assert isinstance(queues, dict)
    assert queues["a"]["status"] == "ok" and queues["b"]["status"] == "no recent poll"
    assert probe.readiness() == (
        True,
        {"status": "ready", "queues": {"a": "running", "b": "running"}},
    )


def test_several_queues_shutting_down_stay_alive_until_all_stopped() -> None:
    options = ConsumerOptions(concurrency=10)
    probe = Probe(liveness_window=60, queues=["a", "b"])
    probe.attach("a", FakeConsumer(options, stats("stopped")))  # type: ignore[arg-type]
    probe.attach("b", FakeConsumer(options, stats("stopping")))  # type: ignore[arg-type]
    alive, body = probe.liveness()
    assert alive and body["status"] == "stopping"
    assert probe.readiness()[0] is False
    probe.attach("b", FakeConsumer(options, stats("stopped")))  # type: ignore[arg-type]
    alive, body = probe.liveness()
    assert not alive and body["status"] == "stopped"


def test_metrics_carry_a_queue_label_per_consumer() -> None:
    pytest.importorskip("prometheus_client")
    from trio_sqs._cli._health import Metrics

    probe = Probe(liveness_window=60, queues=["a", "b"])
    options = ConsumerOptions(concurrency=10)
    probe.attach("a", FakeConsumer(options, stats(received=3, deleted=2, last_poll_at=1.5)))  # type: ignore[arg-type]
    metrics = Metrics(probe)
    metrics.handler_durations.histogram.labels(queue="a", outcome="ok").observe(0.02)
    text = metrics.render().decode()
    for line in (
        'trio_sqs_consumer_info{queue="a"} 1.0',
        'trio_sqs_consumer_info{queue="b"} 1.0',
        'trio_sqs_messages_received_total{queue="a"} 3.0',
        'trio_sqs_messages_deleted_total{queue="a"} 2.0',
        'trio_sqs_state{queue="a",state="running"} 1.0',
        'trio_sqs_last_poll_timestamp_seconds{queue="a"} 1.5',
        'trio_sqs_handler_duration_seconds_count{outcome="ok",queue="a"} 1.0',
    ):
        assert line + "\n" in text, line
    # b has not started: no counters for it yet (its info line says it is configured).
    assert 'received_total{queue="b"}' not in text


def test_timeline_times_each_event_from_the_first_snapshot_showing_it() -> None:
    base = stats(in_flight=2, received=10, completed=8, deleted=8)

    def later(state: ConsumerState = "stopping", **changes: int) -> ConsumerStatistics:
        values = {"in_flight": 2, "received": 10, "completed": 8, "deleted": 8, **changes}
        return stats(state, **values)

    samples = [
        (1000.005, later()),
        (1000.050, later(aborted_polls=1)),
        (1000.200, later(aborted_polls=1, in_flight=0, completed=10)),
        (1000.210, later("stopped", aborted_polls=1, in_flight=0, completed=10, deleted=10)),
    ]
    events = timeline(1000.0, base, samples, exited=1000.215)
    shown = [(None if t is None else round(t * 1000), text.split(" (")[0]) for t, text in events]
    assert shown == [
        (0, "signal received"),
        (50, "long poll aborted"),
        (200, "handlers finished or cancelled"),
        (None, "messages released"),
        (210, "acknowledgements flushed"),
        (215, "exit"),
    ]
