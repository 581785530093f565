"""Cancellation points of SQSClient, one test each (modelled on httpcore's
tests/test_cancellations.py), deterministic on trio_sqs.testing's in-memory SQS and Trio's
virtual clock.

A call is cancelled while it waits for a budget slot, while its request is being sent, while it
waits for the answer, while it reads a body that never comes, and while it sleeps between two
attempts. After each: the call returned at the very moment it was cancelled, the client still
works, every budget slot is free again, and the test says what the server saw. A cancelled long
poll is the one cancellation the server does not notice: it leaves an orphan behind that takes
the next message (docs/design.md, 'Abandoned long polls').
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trio.testing

from trio_sqs import Limits, RetryPolicy, SQSClient
from trio_sqs.testing import FakeSQS, QueueCounts, open_fake_client

CANCEL_AFTER = 5.0


class Wire(httpx.AsyncBaseTransport):
    """Between the client and the fake. :meth:`hold` makes the next request of an operation
    stop after the first chunk of its body, as a send blocked on a full socket buffer does;
    every other request goes to the fake as it is (which reads its body as a network transport
    writes it, so ``on_sent`` fires once the whole body is out)."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self._hold: set[str] = set()
        self.holding = trio.Event()

    def hold(self, operation: str) -> None:
        self._hold.add(operation)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        operation = request.headers.get("x-amz-target", "").rpartition(".")[2]
        if operation in self._hold:
            self._hold.discard(operation)
            async for _chunk in request.stream:  # type: ignore[union-attr]
                self.holding.set()
                await trio.sleep_forever()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def open_wired_client(
    fake: FakeSQS, *, limits: Limits | None = None, retry: RetryPolicy | None = None
) -> AsyncIterator[tuple[SQSClient, Wire]]:
    """A real client on ``fake`` through a :class:`Wire` (as open_fake_client, with nothing to
    read: no worker thread, so MockClock's autojump has nothing to jump over)."""
    wire = Wire(fake)
    async with open_fake_client(
        fake,
        limits=limits,
        retry=retry,
        transport=wire,
    ) as client:
        yield client, wire


def assert_budgets_free(client: SQSClient) -> None:
    # No consumer shares these clients: a long-poll budget sized from the consumers is its floor.
    fixed = client.limits.max_receive_connections
    assert client.receive_budget == (fixed if fixed is not None else 4)
    assert client._receive_gate.in_use == 0
    assert client._receive_gate.value == client.receive_budget
    assert client._other_gate.value == client.limits.max_other_connections
    assert client._other_gate.waiting == 0


async def assert_still_works(client: SQSClient, url: str) -> None:
    """A next call of each budget succeeds at once (on a queue of its own)."""
    before = trio.current_time()
    url = await client.create_queue(url.rpartition("/")[2] + "-after")
    sent = await client.send_message(url, "after the cancel")
    [message] = await client.receive_messages(url, wait_time=0)
    assert message.message_id == sent.message_id
    await client.delete_message(url, message.receipt_handle)
    assert trio.current_time() == before
    assert_budgets_free(client)


def ops(fake: FakeSQS, since: int = 0) -> list[tuple[float, str]]:
    return [(c.time, c.operation) for c in fake.calls[since:]]


# -- waiting for a budget slot -------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["receive", "other"])
async def test_cancel_while_waiting_for_a_budget_slot(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, budget: str
) -> None:
    limits = Limits(max_receive_connections=1, max_other_connections=1)
    async with open_wired_client(fake_sqs, limits=limits) as (client, _):
        url = await client.create_queue(f"slot-{budget}")
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
        if budget == "receive":
            operation = "ReceiveMessage"

            async def occupy() -> None:  # a long poll on the empty queue holds the one slot
                assert len(await client.receive_messages(url, wait_time=20)) == 0

            async def wait_for_slot() -> object:
                return await client.receive_messages(url, wait_time=20)

            frees_at = t0 + 20
        else:
            operation = "GetQueueAttributes"
            fake_sqs.faults.delay("SendMessage", 25)

            async def occupy() -> None:  # a send whose answer takes 25 s holds the one slot
                await client.send_message(url, "slow")

            async def wait_for_slot() -> object:
                return await client.get_queue_attributes(url)

            frees_at = t0 + 25
        async with trio.open_nursery() as nursery:
            nursery.start_soon(occupy)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(CANCEL_AFTER) as scope:
                await wait_for_slot()
            assert scope.cancelled_caught
            assert trio.current_time() == t0 + CANCEL_AFTER
            gate = client._receive_gate if budget == "receive" else client._other_gate
            assert gate.value == 0  # still held by the first call, not by the cancelled one
        assert trio.current_time() == frees_at
        assert_budgets_free(client)
        # The server saw the first call only: the cancelled one never left the process.
        assert [op for _, op in ops(fake_sqs, mark)] == [
            "ReceiveMessage" if budget == "receive" else "SendMessage"
        ]
        assert fake_sqs.call_counts[operation] == (1 if budget == "receive" else 0)
        await assert_still_works(client, url)


@pytest.mark.parametrize("other", [1, 3])
async def test_a_visibility_change_does_not_wait_behind_other_calls(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, other: int
) -> None:
    """Of two slots or more in the other budget, one is kept for visibility changes (a release
    at the end of a stop's grace period must not wait behind slow deletes): deletes the server
    answers 25 s late take every other slot and one more waits, yet a ChangeMessageVisibility
    goes at once. With one slot there is none to keep: it waits for the first delete."""
    limits = Limits(max_receive_connections=1, max_other_connections=other)
    async with open_wired_client(fake_sqs, limits=limits) as (client, _):
        url = await client.create_queue(f"kept-slot-{other}")
        for i in range(other + 1):
            await client.send_message(url, str(i))
        received = await client.receive_messages(url, max_messages=10, wait_time=0)
        assert len(received) == other + 1
        release, *deleted = received.messages
        fake_sqs.faults.delay("DeleteMessage", 25, times=other)
        t0 = trio.current_time()
        answered: list[float] = []
        async with trio.open_nursery() as nursery:
            for message in deleted:  # other - 1 take the slots, one more waits for one
                nursery.start_soon(client.delete_message, url, message.receipt_handle)
            await trio.testing.wait_all_tasks_blocked()
            await client.change_message_visibility(url, release.receipt_handle, 0)
            answered.append(trio.current_time())
        assert answered == [t0 if other > 1 else t0 + 25]
        assert trio.current_time() == t0 + (50 if other > 1 else 25)
        assert_budgets_free(client)


async def test_cancel_while_waiting_for_the_kept_slot(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    """A visibility change that finds the other budget full and the kept slot taken waits for
    the kept slot or its turn at the others; cancelled there, it takes nothing and sends nothing."""
    limits = Limits(max_receive_connections=1, max_other_connections=2)
    async with open_wired_client(fake_sqs, limits=limits) as (client, _):
        url = await client.create_queue("kept-slot-cancel")
        await client.send_message(url, "m")
        [message] = await client.receive_messages(url, wait_time=0)
        fake_sqs.faults.delay("GetQueueAttributes", 25)
        fake_sqs.faults.delay("ChangeMessageVisibility", 25)
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get_queue_attributes, url)  # the other slot
            nursery.start_soon(client.change_message_visibility, url, message.receipt_handle, 60)
            await trio.testing.wait_all_tasks_blocked()
            assert client._other_gate.value == 0  # the kept slot and the other one
            with trio.move_on_after(CANCEL_AFTER) as scope:
                await client.change_message_visibility(url, message.receipt_handle, 0)
            assert scope.cancelled_caught and trio.current_time() == t0 + CANCEL_AFTER
        assert trio.current_time() == t0 + 25
        # (the two held calls in either order: Trio starts tasks in no fixed order)
        assert sorted(op for _, op in ops(fake_sqs, mark)) == [
            "ChangeMessageVisibility",
            "GetQueueAttributes",
        ]
        assert_budgets_free(client)
        await assert_still_works(client, url)


# -- while the request is being sent -------------------------------------------------------------


async def test_cancel_while_the_request_is_being_sent(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_wired_client(fake_sqs) as (client, wire):
        url = await client.create_queue("sending")
        mark = len(fake_sqs.calls)
        sent: list[float] = []
        wire.hold("SendMessage")
        t0 = trio.current_time()
        with trio.move_on_after(CANCEL_AFTER) as scope:
            await client.call(
                "SendMessage",
                {"QueueUrl": url, "MessageBody": "half-sent"},
                on_sent=lambda: sent.append(trio.current_time()),
            )
        assert scope.cancelled_caught
        assert wire.holding.is_set()  # it was cancelled mid-body
        assert trio.current_time() == t0 + CANCEL_AFTER
        assert sent == []  # the body never went out in full
        # The server never saw it: nothing arrived, nothing was enqueued.
        assert ops(fake_sqs, mark) == []
        assert fake_sqs.queue(url).counts() == QueueCounts(0, 0, 0)
        assert_budgets_free(client)
        await assert_still_works(client, url)


# -- while waiting for the answer -----------------------------------------------------------------


async def test_cancel_while_waiting_for_the_answer(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_wired_client(fake_sqs) as (client, wire):
        url = await client.create_queue("answer")
        mark = len(fake_sqs.calls)
        fake_sqs.faults.delay("SendMessage", 30)
        sent: list[float] = []
        t0 = trio.current_time()
        with trio.move_on_after(CANCEL_AFTER) as scope:
            await client.call(
                "SendMessage",
                {"QueueUrl": url, "MessageBody": "answer lost"},
                on_sent=lambda: sent.append(trio.current_time()),
            )
        assert scope.cancelled_caught
        assert trio.current_time() == t0 + CANCEL_AFTER
        assert sent == [t0]
        # The server got it at t0 and acted on it: the send took effect, only its answer was
        # dropped (a cancelled call may have happened; callers must assume it did).
        assert ops(fake_sqs, mark) == [(t0, "SendMessage")]
        assert wire.inner.abandoned == 1
        [message] = fake_sqs.queue(url).messages()
        assert message.body == "answer lost" and message.state == "visible"
        assert_budgets_free(client)
        [received] = await client.receive_messages(url, wait_time=0)
        assert received.message_id == message.message_id
        await client.delete_message(url, received.receipt_handle)
        await assert_still_works(client, url)


# -- while reading a body that never comes ----------------------------------------------------


async def test_cancel_while_reading_a_stalled_body(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_wired_client(fake_sqs) as (client, wire):
        url = await client.create_queue("stalled")
        mark = len(fake_sqs.calls)
        fake_sqs.faults.stall("GetQueueAttributes")
        t0 = trio.current_time()
        with trio.move_on_after(CANCEL_AFTER) as scope:
            await client.get_queue_attributes(url)
        assert scope.cancelled_caught
        # Cancelled at once, well before the 30 s read timeout would have ended the wait.
        assert trio.current_time() == t0 + CANCEL_AFTER
        # The server answered at t0 (the headers went out); the body was what never came.
        assert ops(fake_sqs, mark) == [(t0, "GetQueueAttributes")]
        assert wire.inner.abandoned == 0
        assert fake_sqs.faults.applied[("stall", "GetQueueAttributes")] == 1
        assert_budgets_free(client)
        await assert_still_works(client, url)


# -- while sleeping between two attempts ------------------------------------------------------


async def test_cancel_during_the_retry_backoff(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS, no_jitter: None
) -> None:
    retry = RetryPolicy(max_attempts=3, base_delay=10.0, max_delay=10.0)
    async with open_wired_client(fake_sqs, retry=retry) as (client, _):
        url = await client.create_queue("backoff")
        mark = len(fake_sqs.calls)
        fake_sqs.faults.fail("GetQueueAttributes", status=500)
        t0 = trio.current_time()
        with trio.move_on_after(CANCEL_AFTER) as scope:
            await client.get_queue_attributes(url)
        assert scope.cancelled_caught
        # The first attempt failed at t0; the cancel came halfway through the 10 s backoff.
        assert trio.current_time() == t0 + CANCEL_AFTER
        assert ops(fake_sqs, mark) == [(t0, "GetQueueAttributes")]
        assert fake_sqs.faults.applied[("error", "GetQueueAttributes")] == 1
        # No second attempt ever goes out, even after the backoff would have ended.
        await trio.sleep(2 * retry.max_delay)
        assert ops(fake_sqs, mark) == [(t0, "GetQueueAttributes")]
        assert_budgets_free(client)
        await assert_still_works(client, url)


# -- a long poll: the one cancellation the server does not notice --------------------------------


async def test_cancelled_long_poll_leaves_an_orphan_that_takes_the_next_message(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    async with open_wired_client(fake_sqs) as (client, _):
        url = await client.create_queue("orphan")
        queue = fake_sqs.queue(url)
        mark = len(fake_sqs.calls)
        t0 = trio.current_time()
        with trio.move_on_after(CANCEL_AFTER) as scope:
            await client.receive_messages(url, wait_time=20, visibility_timeout=30)
        assert scope.cancelled_caught
        assert trio.current_time() == t0 + CANCEL_AFTER  # the call returned at once
        assert_budgets_free(client)
        # Server-side, the poll runs on until t0 + 20.
        assert queue.waiting_polls == 1
        await trio.sleep(1)
        sent = await client.send_message(url, "swallowed")
        sent_at = trio.current_time()
        assert queue.orphaned_deliveries == 1 and queue.waiting_polls == 0
        assert queue.counts() == QueueCounts(0, 1, 0)
        # Nobody sees it until the lease the orphan asked for ends.
        assert len(await client.receive_messages(url, wait_time=0)) == 0
        await trio.sleep(15)
        [message] = await client.receive_messages(url, wait_time=20)
        assert trio.current_time() == sent_at + 30
        assert message.message_id == sent.message_id and message.receive_count == 2
        assert ops(fake_sqs, mark) == [
            (t0, "ReceiveMessage"),
            (sent_at, "SendMessage"),
            (sent_at, "ReceiveMessage"),
            (sent_at + 15, "ReceiveMessage"),
        ]
        await client.delete_message(url, message.receipt_handle)
        await assert_still_works(client, url)
