"""Adversarial review of the consumer core (_consumer, _polling, _leases, _batcher, _dispatch):
attacks on the shutdown contract, on the in-memory SQS under MockClock (and one over real
sockets). Six of them found bugs, fixed with them: a release on the wire at t0, or retried after
it, missed the cover; a poll reporting itself sent just after the stop grew the cover without
hiding again what it now reached; an answer with more messages than asked overdrew the credit; a
batch cut short by its bound stalled later deletes; the delete window outlasted the lease with a
late heartbeat interval."""

from __future__ import annotations

import json
import math
import random

import httpx
import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs.testing import FakeSQS, open_fake_client, serve_fake_sqs


def _receives_after(fake: FakeSQS, url: str, t0: float) -> list[float]:
    return [
        c.time
        for c in fake.calls
        if c.operation == "ReceiveMessage" and c.params.get("QueueUrl") == url and c.time > t0
    ]


async def test_release_on_the_wire_at_stop_is_hidden_from_our_orphaned_poll(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-release-in-flight")
        await client.send_message(url, "x")
        failed = trio.Event()

        async def handler(message: Message) -> None:
            failed.set()
            raise RuntimeError("fails once")

        # The release (failure backoff 1 s) takes effect at once; its answer comes 0.5 s late.
        fake_sqs.faults.delay("ChangeMessageVisibilityBatch", 0.5)
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, failure_backoff=1.0, ack_interval=0.1
        ) as consumer:
            await failed.wait()
            await trio.sleep(0.3)  # the release went out at +0.1 and is still on the wire
            released = [c for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"]
            assert len(released) == 1
            t0 = trio.current_time()
        assert _receives_after(fake_sqs, url, t0) == []
        stats = consumer.statistics()
        assert stats.failed == 1 and stats.received == 1
        await trio.sleep(30)  # every poll of ours is over server-side
        queue = fake_sqs.queue(url)
        (message,) = queue.messages()
        # The stop raised no receive count: no poll of ours took the message again.
        assert message.receive_count == 1
        assert queue.orphaned_deliveries == 0


# -- hostile answers: a transport that rewrites the fake's answers --------------------------------


class Rewriting(httpx.AsyncBaseTransport):
    """Wraps ``fake.transport()``: the answer to ``operation`` (which took effect on the fake) is
    replaced by ``body`` (a JSON document) for the next ``times`` calls."""

    def __init__(self, fake: FakeSQS, operation: str, body: object, times: int = 1000) -> None:
        self.inner = fake.transport()
        self.operation = operation
        self.body = body
        self.times = times
        self.rewritten = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = request.headers.get("x-amz-target", "")
        response = await self.inner.handle_async_request(request)
        if not target.endswith("." + self.operation) or self.rewritten >= self.times:
            return response
        await response.aread()
        self.rewritten += 1
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length",)
        }
        return httpx.Response(200, headers=headers, content=json.dumps(self.body).encode())


MALFORMED_BATCH_ANSWERS = [
    {},
    {"Successful": "oops"},
    {"Successful": [{"Id": "999"}]},
    {"Successful": [{"Id": "0"}, {"Id": "0"}]},
    {"Successful": [{}]},
    {"Failed": [{"Id": "0"}]},
    {"Successful": None, "Failed": 7},
    [],
    "nope",
]


@pytest.mark.parametrize("answer", MALFORMED_BATCH_ANSWERS, ids=repr)
async def test_malformed_delete_answers_are_counted_never_dropped(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, answer: object
) -> None:
    transport = Rewriting(fake_sqs, "DeleteMessageBatch", answer)
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("adv-bad-delete")
        for i in range(3):
            await client.send_message(url, f"m{i}")
        done = 0
        all_done = trio.Event()

        async def handler(message: Message) -> None:
            nonlocal done
            done += 1
            if done == 3:
                all_done.set()

        async with trio_sqs.open_consumer(url, handler, client=client, wait_time=1) as consumer:
            await all_done.wait()
            await trio.sleep(10)
            t0 = trio.current_time()
        assert trio.current_time() - t0 <= consumer.options.flush_timeout + 0.5 + 10
        stats = consumer.statistics()
        assert stats.completed == 3
        assert transport.rewritten >= 1
        # Every acknowledgement is accounted for: confirmed, failed (logged), or unflushed.
        assert stats.deleted + stats.delete_failed + stats.unflushed == 3
        assert stats.deleted == 0


@pytest.mark.parametrize("answer", MALFORMED_BATCH_ANSWERS, ids=repr)
async def test_malformed_visibility_answers_count_heartbeat_and_release_failures(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, answer: object
) -> None:
    transport = Rewriting(fake_sqs, "ChangeMessageVisibilityBatch", answer)
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("adv-bad-cmvb")
        await client.send_message(url, "slow")
        await client.send_message(url, "fails")

        async def handler(message: Message) -> None:
            if message.body == "fails":
                if message.receive_count == 1:
                    raise RuntimeError("boom")
                return
            await trio.sleep(12)  # heartbeats at 10 s (lease 30)

        async with trio_sqs.open_consumer(url, handler, client=client, wait_time=1) as consumer:
            await trio.sleep(15)
        stats = consumer.statistics()
        # The release took effect (only its answer was garbled): the message came back once.
        assert stats.completed == 2 and stats.failed == 1
        assert stats.heartbeat_errors >= 1 and stats.visibility_extensions == 0
        assert stats.released == 0
        assert stats.release_failed + stats.release_expired + stats.unflushed >= 1
        assert stats.deleted == 2


MALFORMED_RECEIVE_ANSWERS = [
    {},
    {"Messages": "oops"},
    {"Messages": [{}]},
    {"Messages": [{"MessageId": 5, "ReceiptHandle": None, "Body": 3}]},
    {"Messages": [{"MessageId": "a", "ReceiptHandle": "h", "Body": "b"}]},
    {"Messages": [None]},
    [],
]


@pytest.mark.parametrize("answer", MALFORMED_RECEIVE_ANSWERS, ids=repr)
async def test_malformed_receive_answers_never_reach_a_handler_nor_kill_the_consumer(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, answer: object
) -> None:
    transport = Rewriting(fake_sqs, "ReceiveMessage", answer, times=3)
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("adv-bad-receive")
        handled: list[str] = []
        got_one = trio.Event()

        async def handler(message: Message) -> None:
            handled.append(message.body)
            got_one.set()

        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=1, visibility_timeout=5
        ) as consumer:
            await trio.sleep(30)
            await client.send_message(url, "real")
            await got_one.wait()
        assert handled == ["real"]
        assert transport.rewritten == 3
        stats = consumer.statistics()
        assert stats.received == 1 and stats.completed == 1 and stats.deleted == 1


# -- cancellation and stop, at every point ---------------------------------------------------------

GRACE = 10.0
FLUSH = 5.0
BOUND = GRACE + FLUSH + 0.5


async def test_cancel_twice_while_a_handler_runs_stops_at_grace(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-cancel-twice")
        await client.send_message(url, "long")
        started = trio.Event()
        cancelled_at: list[float] = []

        async def handler(message: Message) -> None:
            started.set()
            try:
                await trio.sleep(1000)
            except trio.Cancelled:
                cancelled_at.append(trio.current_time())
                raise

        box: list[trio_sqs.Consumer] = []
        with trio.CancelScope() as outer:
            async with trio_sqs.open_consumer(
                url, handler, client=client, grace_period=GRACE, flush_timeout=FLUSH
            ) as consumer:
                box.append(consumer)
                await started.wait()
                await trio.sleep(5)
                t0 = trio.current_time()
                outer.cancel()
                await trio.sleep(1)  # never returns: cancelled
        assert outer.cancelled_caught
        # A second cancel while the teardown runs changes nothing (already shielded, bounded).
        (consumer,) = box
        assert cancelled_at == [pytest.approx(t0 + GRACE)]
        assert trio.current_time() - t0 <= BOUND
        assert _receives_after(fake_sqs, url, t0) == []
        stats = consumer.statistics()
        assert stats.cancelled_at_grace == 1 and stats.released == 1 and stats.unflushed == 0
        await trio.sleep(40)
        (message,) = fake_sqs.queue(url).messages()
        assert message.receive_count == 1


async def test_cancel_again_during_the_teardown(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-cancel-in-teardown")
        await client.send_message(url, "long")
        started = trio.Event()

        async def handler(message: Message) -> None:
            started.set()
            await trio.sleep(1000)

        async def canceller(scope: trio.CancelScope, at: list[float]) -> None:
            await started.wait()
            await trio.sleep(2)
            at.append(trio.current_time())
            scope.cancel()
            await trio.sleep(3)
            scope.cancel()  # again, mid-teardown
            scope.deadline = -math.inf

        at: list[float] = []
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(canceller, scope, at)
                async with trio_sqs.open_consumer(
                    url, handler, client=client, grace_period=GRACE, flush_timeout=FLUSH
                ) as consumer:
                    await trio.sleep_forever()
        (t0,) = at
        assert trio.current_time() - t0 == pytest.approx(GRACE, abs=0.2)
        assert consumer.statistics().cancelled_at_grace == 1


@pytest.mark.parametrize("where", ["inside-handler", "other-task", "twice"])
async def test_stop_from_anywhere_ends_receiving_at_once(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, where: str
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(f"adv-stop-{where}")
        for i in range(30):
            await client.send_message(url, f"m{i}")
        box: list[trio_sqs.Consumer] = []
        stopped_at: list[float] = []
        handled = 0

        async def handler(message: Message) -> None:
            nonlocal handled
            handled += 1
            if where == "inside-handler" and handled == 5:
                stopped_at.append(trio.current_time())
                box[0].stop()
                box[0].stop()
            await trio.sleep(1)

        async with trio_sqs.open_consumer(url, handler, client=client, concurrency=4) as consumer:
            box.append(consumer)
            if where == "inside-handler":
                await consumer.wait_stopped()
            else:
                await trio.sleep(2.5)
                stopped_at.append(trio.current_time())
                consumer.stop()
                if where == "twice":
                    await trio.sleep(0.5)
                    consumer.stop()
                await consumer.wait_stopped()
        (t0,) = stopped_at
        assert _receives_after(fake_sqs, url, t0) == []
        assert trio.current_time() - t0 <= 1.0 + 0.2  # the running handlers take 1 s
        stats = consumer.statistics()
        assert stats.unflushed == 0
        await trio.sleep(40)
        queue = fake_sqs.queue(url)
        assert all(m.receive_count <= 1 for m in queue.messages())
        assert len(queue.messages()) + stats.deleted == 30
        assert stats.completed == stats.deleted


async def test_handler_that_swallows_cancellation(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-swallow")
        await client.send_message(url, "x")
        started = trio.Event()
        swallowed = 0

        async def handler(message: Message) -> None:
            nonlocal swallowed
            started.set()
            for _ in range(3):
                try:
                    await trio.sleep(1000)
                except trio.Cancelled:
                    swallowed += 1
            # returns normally: it did not finish its work

        async with trio_sqs.open_consumer(
            url, handler, client=client, grace_period=GRACE, flush_timeout=FLUSH
        ) as consumer:
            await started.wait()
            t0 = trio.current_time()
        assert swallowed == 3
        assert trio.current_time() - t0 == pytest.approx(GRACE, abs=0.2)
        stats = consumer.statistics()
        assert stats.completed == 0 and stats.cancelled_at_grace == 1 and stats.deleted == 0
        (message,) = fake_sqs.queue(url).messages()
        assert message.receive_count == 1


class Custom(BaseException):
    pass


@pytest.mark.parametrize("exc", [Custom, KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_handler_raising_a_base_exception_stops_gracefully_then_raises_it(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, exc: type[BaseException]
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-base-exc")
        for i in range(3):
            await client.send_message(url, f"m{i}")
        calls = 0

        async def handler(message: Message) -> None:
            nonlocal calls
            calls += 1
            if message.body == "m1":
                raise exc()
            await trio.sleep(3)

        box: list[trio_sqs.Consumer] = []
        with pytest.raises(exc):
            async with trio_sqs.open_consumer(
                url, handler, client=client, concurrency=1, grace_period=GRACE
            ) as consumer:
                box.append(consumer)
                await trio.sleep_forever()
        stats = box[0].statistics()
        assert stats.state == "stopped" and stats.unflushed == 0
        await trio.sleep(40)
        queue = fake_sqs.queue(url)
        assert stats.deleted + len(queue.messages()) == 3
        assert all(m.receive_count <= 1 for m in queue.messages())


async def test_cancelled_before_start_up_sends_nothing(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-precancel")
        await client.send_message(url, "x")

        async def handler(message: Message) -> None:
            raise AssertionError("never called")

        before = len(fake_sqs.calls)
        with trio.CancelScope() as scope:
            scope.cancel()
            async with trio_sqs.open_consumer(url, handler, client=client):
                raise AssertionError("the body never runs")
        assert scope.cancelled_caught
        assert [c.operation for c in fake_sqs.calls[before:]] == []


@pytest.mark.parametrize("op", ["GetQueueAttributes", "ReceiveMessage"])
async def test_cancel_during_start_up_or_first_poll(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, op: str
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(f"adv-startup-{op}")
        fake_sqs.faults.delay(op, 3)

        async def handler(message: Message) -> None:
            raise AssertionError("never called")

        start = trio.current_time()
        with trio.move_on_after(1) as scope:
            async with trio_sqs.open_consumer(url, handler, client=client) as consumer:
                await trio.sleep_forever()
        assert scope.cancelled_caught
        # Cancelled at +1 s: an idle consumer (or one still starting) stops at once.
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)
        assert _receives_after(fake_sqs, url, start + 1.0) == []
        if op == "ReceiveMessage":
            assert consumer.statistics().state == "stopped"
            assert consumer.statistics().aborted_polls == 1


# -- requests that never end, during the teardown ---------------------------------------------------


@pytest.mark.parametrize("fault", ["stall", "delay"])
async def test_stalled_flush_keeps_the_bound_and_counts_unflushed(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, fault: str
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(f"adv-stall-flush-{fault}")
        for i in range(4):
            await client.send_message(url, f"m{i}")
        done = 0
        all_done = trio.Event()

        async def handler(message: Message) -> None:
            nonlocal done
            done += 1
            if done == 4:
                all_done.set()

        async with trio_sqs.open_consumer(
            url, handler, client=client, grace_period=GRACE, flush_timeout=FLUSH, ack_interval=1
        ) as consumer:
            await all_done.wait()
            if fault == "stall":
                fake_sqs.faults.stall("DeleteMessageBatch", times=100)
            else:
                fake_sqs.faults.delay("DeleteMessageBatch", 100, times=100)
            t0 = trio.current_time()
        assert trio.current_time() - t0 <= FLUSH + 0.5
        stats = consumer.statistics()
        assert stats.completed == 4 and stats.deleted == 0
        assert stats.unflushed == 4


async def test_heartbeat_stalled_across_the_grace_end(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    # A heartbeat stalls on the wire; the handler is cancelled at grace; its release is held
    # for the heartbeat (the module's one rule) and the heartbeat is bounded by the shutdown.
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-stall-heartbeat")
        await client.send_message(url, "x")
        started = trio.Event()

        async def handler(message: Message) -> None:
            started.set()
            await trio.sleep(1000)

        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            visibility_timeout=30,
            grace_period=GRACE,
            flush_timeout=FLUSH,
        ) as consumer:
            await started.wait()
            fake_sqs.faults.stall("ChangeMessageVisibilityBatch", times=100)
            await trio.sleep(12)  # the first heartbeat (at 10 s) is on the wire, stalled
            assert consumer.statistics().visibility_extensions == 0
            t0 = trio.current_time()
        assert trio.current_time() - t0 <= BOUND
        stats = consumer.statistics()
        assert stats.cancelled_at_grace == 1
        assert stats.released + stats.unflushed + stats.release_expired + stats.release_failed == 1


async def test_receive_stalled_after_headers_at_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-stall-receive")
        await client.send_message(url, "x")
        started = trio.Event()

        async def handler(message: Message) -> None:
            started.set()
            await trio.sleep(4)

        async with trio_sqs.open_consumer(
            url, handler, client=client, grace_period=GRACE, poll_on_stop="land"
        ) as consumer:
            await started.wait()
            await trio.sleep(0.1)
            fake_sqs.faults.stall("ReceiveMessage", times=100)
            await client.send_message(url, "y")  # taken by the next poll, which stalls
            await trio.sleep(0.5)
            t0 = trio.current_time()
        # The stalled poll is left to land while the handler runs, then aborted.
        assert trio.current_time() - t0 == pytest.approx(4 - 0.6, abs=0.2)
        assert _receives_after(fake_sqs, url, t0) == []
        assert consumer.statistics().unflushed == 0


# -- the poller between error and stop ---------------------------------------------------------------


async def test_stop_during_poll_error_backoff_sends_no_receive(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-backoff-stop")

        async def handler(message: Message) -> None:
            pass

        fake_sqs.faults.fail("ReceiveMessage", times=1000, status=500)
        async with trio_sqs.open_consumer(
            url, handler, client=client, error_backoff=5, max_error_backoff=5, random_seed=1
        ) as consumer:
            await trio.sleep(7)
            t0 = trio.current_time()
        assert _receives_after(fake_sqs, url, t0) == []
        assert trio.current_time() - t0 < 0.1
        assert consumer.statistics().poll_errors >= 1


async def test_queue_deleted_while_consuming_raises_after_a_bounded_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-gone")

        async def handler(message: Message) -> None:
            pass

        with pytest.raises(trio_sqs.QueueDoesNotExist):
            async with trio_sqs.open_consumer(url, handler, client=client, wait_time=1):
                await trio.sleep(2)
                await client.delete_queue(url)
                await trio.sleep_forever()


class Greedy(httpx.AsyncBaseTransport):
    """A server that answers every ReceiveMessage with up to 10 messages, whatever
    MaxNumberOfMessages asked for (the request is rewritten on its way to the fake)."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.extra = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-amz-target", "").endswith(".ReceiveMessage"):
            body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
            params = json.loads(body)
            params["MaxNumberOfMessages"] = 10
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            rewritten = httpx.Request(
                request.method,
                request.url,
                headers=headers,
                content=json.dumps(params).encode(),
                extensions=request.extensions,
            )
            response = await self.inner.handle_async_request(rewritten)
            return response
        return await self.inner.handle_async_request(request)


async def test_more_messages_than_asked_for(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs, transport=Greedy(fake_sqs)) as client:
        url = await client.create_queue("adv-greedy")
        for i in range(5):
            await client.send_message(url, f"m{i}")
        seen: list[str] = []

        async def handler(message: Message) -> None:
            seen.append(message.body)
            await trio.sleep(0.5)

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=1, batch_size=1, max_buffered=0
        ) as consumer:
            await trio.sleep(60)
        # Each message handled once (extras are refused or handed back, never double-counted).
        assert sorted(seen) == sorted(set(seen))
        stats = consumer.statistics()
        assert stats.deleted == len(seen)


# -- FIFO: failures and stop, order kept -------------------------------------------------------------


async def test_fifo_group_stopped_mid_group_keeps_its_order(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue(
            "adv-fifo.fifo", attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        )
        for group in ("a", "b"):
            for i in range(5):
                await client.send_message(url, f"{group}{i}", message_group_id=group)
        started: list[str] = []
        both = trio.Event()

        async def handler(message: Message) -> None:
            started.append(message.body)
            if "a1" in started and "b1" in started:
                both.set()
            if message.body == "b1":
                raise RuntimeError("b1 fails: the rest of b goes back unprocessed")
            if message.body == "a1":
                await trio.sleep(1000)  # cancelled at grace
            await trio.sleep(0.1)

        async with trio_sqs.open_consumer(
            url, handler, client=client, concurrency=4, grace_period=GRACE, flush_timeout=FLUSH
        ) as consumer:
            await both.wait()
            await trio.sleep(0.5)
            t0 = trio.current_time()
        assert trio.current_time() - t0 <= BOUND
        assert _receives_after(fake_sqs, url, t0) == []
        first = list(started)
        # In each group one at a time, in order: a1 blocks a, b1's failure sends b's rest back.
        assert [b for b in first if b.startswith("a")] == ["a0", "a1"]
        assert [b for b in first if b.startswith("b")] == ["b0", "b1"]
        stats = consumer.statistics()
        assert stats.cancelled_at_grace == 1 and stats.unflushed == 0
        # A second consumer later gets what is left of each group, in order.
        await trio.sleep(60)
        after: list[str] = []

        async def second(message: Message) -> None:
            after.append(message.body)

        async with trio_sqs.open_consumer(url, second, client=client, concurrency=4):
            await trio.sleep(30)
        for group in ("a", "b"):
            rest = [b for b in after if b.startswith(group)]
            assert rest == sorted(rest)
            done = [b for b in first if b.startswith(group) and b not in ("a1", "b1")]
            assert sorted(set(done) | set(rest)) == [f"{group}{i}" for i in range(5)]
        assert fake_sqs.queue(url).messages() == []


# -- load: many messages, random handler times and outcomes, a stop at a random instant -------------


async def _load_and_stop(
    fake: FakeSQS, seed: int, n: int, concurrency: int, latency: float = 0.0
) -> None:
    rng = random.Random(seed)
    async with open_fake_client(fake) as client:
        url = await client.create_queue(f"adv-load-{seed}")
        entries = [trio_sqs.SendEntry(body=f"m{i}") for i in range(n)]
        for start in range(0, n, 10):
            await client.send_message_batch(url, entries[start : start + 10])
        if latency:
            # Every answer comes back late (the operation takes effect on arrival), like a
            # network between us and SQS.
            for op in ("ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
                fake.faults.delay(op, latency, times=10**9)
        running: set[str] = set()
        completed_ids: set[str] = set()
        violations: list[str] = []
        stop_at = rng.uniform(1, 40)
        grace = rng.choice([0.0, 1.0, 5.0])
        flush = rng.choice([0.5, 5.0])

        async def handler(message: Message) -> None:
            if message.message_id in running:
                violations.append(f"{message.message_id} handled twice at once")
            if message.message_id in completed_ids:
                violations.append(f"{message.message_id} received again after it completed")
            running.add(message.message_id)
            try:
                await trio.sleep(rng.expovariate(1.0))
                roll = rng.random()
                if roll < 0.1:
                    raise RuntimeError("fails")
                if roll < 0.15:
                    raise trio_sqs.Retry(rng.choice([0, 1, 3]))
                if roll < 0.17:
                    await trio.sleep(100)
                completed_ids.add(message.message_id)
            finally:
                running.discard(message.message_id)

        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            concurrency=concurrency,
            grace_period=grace,
            flush_timeout=flush,
            failure_backoff=rng.choice([1.0, 2.0]),
            poll_on_stop=rng.choice(["land", "abort"]),
            random_seed=seed,
        ) as consumer:
            await trio.sleep(stop_at)
            t0 = trio.current_time()
            counts_at_stop = {m.message_id: m.receive_count for m in fake.queue(url).messages()}
            delivered_at_stop = fake.queue(url).deliveries
            received_at_stop = consumer.statistics().received
        took = trio.current_time() - t0
        assert took <= grace + flush + 0.5
        assert _receives_after(fake, url, t0) == []
        assert violations == []
        await trio.sleep(60)  # every poll of ours and every cover is over
        queue = fake.queue(url)
        stats = consumer.statistics()
        # The stop took nothing again: whatever was delivered after t0 came to us (a poll left
        # to land), none went to an abandoned poll ...
        assert queue.deliveries - delivered_at_stop == stats.received - received_at_stop
        assert queue.orphaned_deliveries == 0
        # ... and no receive count rose after t0.
        for m in queue.messages():
            assert m.receive_count == counts_at_stop[m.message_id]
            assert m.state == "visible"
        # Every receipt settled exactly once, nothing lost.
        assert stats.unflushed == 0 and stats.delete_failed == 0 and stats.release_failed == 0
        assert stats.completed == stats.deleted == len(completed_ids)
        assert stats.received == stats.deleted + stats.released + stats.release_expired
        assert n - len(queue.messages()) == stats.deleted


@pytest.mark.parametrize("seed", range(4))
async def test_load_random_stop_small(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, seed: int
) -> None:
    await _load_and_stop(fake_sqs, seed, n=300, concurrency=20)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
async def test_load_random_stop_5000(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, seed: int
) -> None:
    await _load_and_stop(fake_sqs, 100 + seed, n=5000, concurrency=200)


@pytest.mark.parametrize("seed", range(6))
async def test_load_random_stop_with_latency(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, seed: int
) -> None:
    await _load_and_stop(fake_sqs, 200 + seed, n=300, concurrency=20, latency=0.05)


# -- a delete call cut short by its shield's bound while running -------------------------------------


async def test_delete_cut_short_by_its_bound_does_not_stall_later_deletes(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-delete-bound")
        handled: list[str] = []

        async def handler(message: Message) -> None:
            handled.append(message.body)

        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, visibility_timeout=30
        ) as consumer:
            # Both attempts of the first delete stall (30 s read timeout each): the call's
            # shielded bound (35 s) cuts it short during the second.
            fake_sqs.faults.stall("DeleteMessageBatch", times=2)
            await client.send_message(url, "first")
            await trio.sleep(40)
            assert handled == ["first"]
            await client.send_message(url, "second")
            await trio.sleep(60)
            stats = consumer.statistics()
            # "second" was handled once and deleted within its lease.
            assert handled.count("second") == 1
            assert stats.deleted >= 1


# -- a heartbeat interval close to the lease, and the adaptive delete window -------------------------


async def test_late_heartbeat_interval_and_grown_delete_window_do_not_redeliver(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-hb-window")
        handled: list[str] = []

        async def handler(message: Message) -> None:
            handled.append(message.body)
            if message.body.startswith("slow"):
                await trio.sleep(28.5)

        async with trio_sqs.open_consumer(
            url, handler, client=client, visibility_timeout=30, heartbeat_interval=29
        ):
            for i in range(3):  # low rate: the delete window grows to 2 s
                await client.send_message(url, f"warm{i}")
                await trio.sleep(5)
            for i in range(8):
                await client.send_message(url, f"slow{i}")
                await trio.sleep(30.9)
            await trio.sleep(40)
        assert sorted(handled) == sorted(set(handled))
        assert fake_sqs.queue(url).messages() == []


# -- over real sockets: the fake served over HTTP/1.1, on the real clock ----------------------------


@pytest.mark.parametrize("poll_on_stop", [pytest.param("land", marks=pytest.mark.slow), "abort"])
async def test_over_real_sockets_stop_under_load_takes_nothing_again(poll_on_stop: str) -> None:
    fake = FakeSQS()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_fake_sqs, fake)
        async with trio_sqs.open_client(
            endpoint_url=endpoint,
            region=fake.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ) as client:
            url = await client.create_queue(f"adv-net-{poll_on_stop}")
            for start in range(0, 200, 10):
                await client.send_message_batch(
                    url, [trio_sqs.SendEntry(body=f"m{i}") for i in range(start, start + 10)]
                )
            rng = random.Random(7)

            async def handler(message: Message) -> None:
                await trio.sleep(rng.uniform(0, 0.02))
                if rng.random() < 0.3:
                    raise RuntimeError("fails")

            async with trio_sqs.open_consumer(
                url,
                handler,
                client=client,
                concurrency=10,
                wait_time=1,
                visibility_timeout=5,
                grace_period=0.3,
                flush_timeout=1.0,
                failure_backoff=1.0,
                poll_on_stop=poll_on_stop,
            ) as consumer:
                await trio.sleep(0.5)
                t0 = trio.current_time()
            took = trio.current_time() - t0
            # The bound is a Trio deadline; the scheduler may only add a little to it.
            assert took <= 0.3 + 1.0 + 0.5 + 0.5
            stats = consumer.statistics()
            queue = fake.queue(url)
            # Until our last poll (1 s) is over on the server: then no poll of ours can take a
            # message any more (the fake runs on this clock). First a moment for the server to
            # read a request that was on the wire when the consumer hung up.
            await trio.sleep(0.2)
            with trio.fail_after(5):
                while queue.waiting_polls:  # noqa: ASYNC110 (the fake has no event for it)
                    await trio.sleep(0.05)
            # Every delivery went to a poll whose answer we read: none to an abandoned one.
            assert queue.deliveries == stats.received
            assert stats.unflushed == 0
            assert stats.received == stats.deleted + stats.released + stats.release_expired
            assert 200 - len(queue.messages()) == stats.deleted
        nursery.cancel_scope.cancel()


# -- batch handlers returning garbage -----------------------------------------------------------------


class _Weird:
    def __iter__(self) -> object:
        raise ValueError("cannot iterate")

    def __repr__(self) -> str:  # a stable test id (pytest-xdist workers must agree on ids)
        return "<an iterable that raises>"


GARBAGE = [42, "abc", [None], [3.5], _Weird(), ["not-an-id"], {"x": 1}]


@pytest.mark.parametrize("garbage", GARBAGE, ids=repr)
async def test_batch_handler_returning_garbage_fails_its_batch(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, garbage: object
) -> None:
    async with open_fake_client(fake_sqs) as client:
        url = await client.create_queue("adv-garbage")
        for i in range(3):
            await client.send_message(url, f"m{i}")
        called = trio.Event()

        async def handler(messages: list[Message]) -> object:
            called.set()
            return garbage

        async with trio_sqs.open_consumer(
            url, handler, batch=True, client=client, failure_backoff=100
        ) as consumer:
            await called.wait()
            await trio.sleep(1)
        stats = consumer.statistics()
        assert stats.completed == 0 and stats.deleted == 0
        assert stats.failed == stats.received == 3
        assert stats.state == "stopped"
        assert all(m.receive_count == 1 for m in fake_sqs.queue(url).messages())


# -- a shared client whose long-poll budget is one: a stop while our poll waits for the gate ---------


async def test_stop_while_the_poll_waits_for_the_shared_gate(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    limits = trio_sqs.Limits(max_receive_connections=1)
    async with open_fake_client(fake_sqs, limits=limits) as client:
        url_a = await client.create_queue("adv-gate-a")
        url_b = await client.create_queue("adv-gate-b")

        async def handler(message: Message) -> None:
            pass

        async with trio_sqs.open_consumer(url_a, handler, client=client, wait_time=20):
            await trio.sleep(1)  # A's poll holds the only slot
            async with trio_sqs.open_consumer(url_b, handler, client=client) as b:
                await trio.sleep(5)
                assert b.statistics().polls == 0
                t0 = trio.current_time()
            assert trio.current_time() - t0 < 0.01
            await trio.sleep(40)  # A's polls come and go; B's never goes out
        # B's only poll waited for the gate the whole time: cancelled there, never sent.
        assert _receives_after(fake_sqs, url_b, -math.inf) == []
        assert _receives_after(fake_sqs, url_b, t0) == []


# -- options: bad values refused before any I/O ----------------------------------------------------


BAD_OPTIONS = [
    {"concurrency": True},
    {"concurrency": 0},
    {"concurrency": 1.0},
    {"wait_time": 21},
    {"visibility_timeout": 0},
    {"heartbeat_interval": math.nan},
    {"heartbeat_interval": 30},
    {"heartbeat_interval": -1.0},
    {"grace_period": math.inf},
    {"grace_period": math.nan},
    {"grace_period": -0.1},
    {"flush_timeout": math.inf},
    {"batch_window": 20.5},
    {"batch_window": math.nan},
    {"handler_timeout": 0},
    {"handler_timeout": math.inf},
    {"failure_backoff": 43_201},
    {"ack_interval": math.inf},
    {"pollers": 0},
    {"pollers": True},
    {"max_buffered": -1},
    {"poll_on_stop": "drop"},
    {"attribute_names": "All"},
    {"random_seed": 1.5},
    {"batch_size": 11},
]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=repr)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    async def handler(message: Message) -> None:
        pass

    with pytest.raises(trio_sqs.ConfigurationError):
        trio_sqs.open_consumer("q", handler, **bad)


# -- stop() in the schedule point between a poll's bytes leaving and on_sent ---------------------------


class StopAfterWrite(httpx.AsyncBaseTransport):
    """Once armed, the next ReceiveMessage reaches the fake (its long poll is registered there),
    then, in a cancel-shielded schedule point like the one that ends Trio's socket send, the test's
    ``stop`` runs; only then does the client learn that its request is out (``on_sent``)."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.armed = False
        self.stop: object = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not (self.armed and request.headers.get("x-amz-target", "").endswith(".ReceiveMessage")):
            return await self.inner.handle_async_request(request)
        self.armed = False
        stream = request.stream.__aiter__()  # type: ignore[union-attr]
        body = await stream.__anext__()
        copy = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            content=body,
            extensions=request.extensions,
        )
        async with trio.open_nursery() as nursery:
            answer: list[httpx.Response] = []

            async def forward() -> None:
                answer.append(await self.inner.handle_async_request(copy))

            nursery.start_soon(forward)
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()  # the fake has the poll now
                assert callable(self.stop)
                self.stop()  # another task's stop() runs here
            async for _ in stream:  # the body is done: on_sent
                pass
        return answer[0]


async def test_stop_between_the_poll_write_and_on_sent(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    transport = StopAfterWrite(fake_sqs)
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("adv-on-sent-race")
        await client.send_message(url, "x")
        failed = trio.Event()

        async def handler(message: Message) -> None:
            failed.set()
            raise RuntimeError("fails: released for 30 s")

        stopped_at: list[float] = []
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, failure_backoff=30
        ) as consumer:

            def stop() -> None:
                stopped_at.append(trio.current_time())
                consumer.stop()

            transport.stop = stop
            await failed.wait()
            await trio.sleep(1)  # the release is confirmed (visible again at ~30.1)
            assert consumer.statistics().released == 1
            transport.armed = True  # the poll after the one on the wire now (sent at ~20)
            await consumer.wait_stopped()
        (t0,) = stopped_at
        assert t0 == pytest.approx(20, abs=0.5)
        assert _receives_after(fake_sqs, url, t0) == []
        assert consumer.statistics().aborted_polls == 1
        await trio.sleep(60)
        (message,) = fake_sqs.queue(url).messages()
        assert message.receive_count == 1
        assert fake_sqs.queue(url).orphaned_deliveries == 0


class AfterFirstAnswer(httpx.AsyncBaseTransport):
    """Calls ``hook`` right after the first answer to ``operation`` came back."""

    def __init__(self, fake: FakeSQS, operation: str) -> None:
        self.inner = fake.transport()
        self.operation = operation
        self.hook: object = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.headers.get("x-amz-target", "").endswith("." + self.operation):
            hook, self.hook = self.hook, None
            if callable(hook):
                hook()
        return response


async def test_release_retried_by_the_client_across_stop(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    transport = AfterFirstAnswer(fake_sqs, "ChangeMessageVisibilityBatch")
    retry = trio_sqs.RetryPolicy(base_delay=0.5, max_delay=0.5)
    async with open_fake_client(fake_sqs, transport=transport, retry=retry) as client:
        url = await client.create_queue("adv-release-retry")
        await client.send_message(url, "x")
        stopped_at: list[float] = []

        async def handler(message: Message) -> None:
            raise RuntimeError("fails: released for 1 s")

        fake_sqs.faults.fail("ChangeMessageVisibilityBatch", status=500)
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, failure_backoff=1
        ) as consumer:

            def stop() -> None:  # between the failed attempt and the retry
                stopped_at.append(trio.current_time())
                consumer.stop()

            transport.hook = stop
            await consumer.wait_stopped()
        (t0,) = stopped_at
        calls = [c for c in fake_sqs.calls if c.operation == "ChangeMessageVisibilityBatch"]
        # The retry went out from t0 on (the Batcher retries releases itself, never through a
        # client-level retry), with the cover read afresh: it outlasts the poll aborted at t0.
        assert len(calls) == 2 and calls[1].time >= t0
        [entry] = calls[1].params["Entries"]
        assert entry["VisibilityTimeout"] > 1
        assert consumer.statistics().released == 1
        await trio.sleep(60)
        (message,) = fake_sqs.queue(url).messages()
        assert message.receive_count == 1
