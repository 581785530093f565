"""One boundary for foreign errors, and Cancelled never wrapped (issue 11, items 4 and 5).

- Item 5: whatever the client meets while sending a request and reading its answer (httpx,
  httpcore, h11, botocore, a user-supplied transport, builtins raised by an answer with missing or
  mistyped members) leaves a call as a :class:`trio_sqs.TransportError` (``"InvalidResponse"``
  for an answer that arrived but cannot be read) or a :class:`trio_sqs.ServiceError`, with the
  original as ``__cause__``. A received message that is malformed is counted corrupt, never an
  exception out of ``receive_messages``. A batch answer that leaves entries out reports them as
  failed (``MissingFromAnswer``): nothing is dropped silently.
- Item 4: a call cancelled while its connection opens (httpcore connects with trio's
  happy-eyeballs nursery) raises a plain ``trio.Cancelled``, not ``BaseExceptionGroup([Cancelled,
  ...])``, so ``except trio.Cancelled`` (the Batcher's accounting) sees it.

Answers SQS would never give come from small ``httpx`` transports; the consumer-level checks run on
the in-memory SQS with a wrapper in front of its transport, on ``MockClock``. One test uses a real
socket: the connect it cancels is the point.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import h11
import httpcore
import httpx
import pytest
import trio
import trio.testing

import trio_sqs
from trio_sqs import Message
from trio_sqs._batcher import MAX_ENTRY_ATTEMPTS, Batcher, Entry
from trio_sqs._message import BatchResult
from trio_sqs.testing import FakeSQS, QueueCounts, make_message, open_fake_client

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

QUEUE = "http://sqs.fake.invalid/123456789012/q"
JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.0"}


def operation_of(request: httpx.Request) -> str:
    return request.headers.get("x-amz-target", "").rpartition(".")[2]


class Answers(httpx.AsyncBaseTransport):
    """Answers every request with the next of ``answers`` (the last one repeats): a status and
    body, or an exception to raise. Counts the requests."""

    def __init__(self, *answers: tuple[int, bytes] | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(operation_of(request))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        status, body = answer
        return httpx.Response(status, content=body, headers=JSON_HEADERS)


@asynccontextmanager
async def client_over(
    transport: httpx.AsyncBaseTransport, *, attempts: int = 1
) -> AsyncIterator[trio_sqs.SQSClient]:
    async with open_fake_client(
        FakeSQS(), retry=trio_sqs.RetryPolicy(max_attempts=attempts), transport=transport
    ) as client:
        yield client


def ok(document: Any) -> tuple[int, bytes]:
    return 200, json.dumps(document).encode()


# -- item 5: a 200 answer without (or with mistyped) members is an InvalidResponse ----------------

Call = Callable[[trio_sqs.SQSClient], Any]


async def _get_queue_url(client: trio_sqs.SQSClient) -> Any:
    return await client.get_queue_url("q")


async def _create_queue(client: trio_sqs.SQSClient) -> Any:
    return await client.create_queue("q")


async def _send_message(client: trio_sqs.SQSClient) -> Any:
    return await client.send_message(QUEUE, "x")


async def _send_message_batch(client: trio_sqs.SQSClient) -> Any:
    return await client.send_message_batch(QUEUE, [trio_sqs.SendEntry(body="x")])


async def _receive_messages(client: trio_sqs.SQSClient) -> Any:
    return await client.receive_messages(QUEUE, wait_time=0)


async def _list_queues(client: trio_sqs.SQSClient) -> Any:
    return await client.list_queues()


async def _get_queue_attributes(client: trio_sqs.SQSClient) -> Any:
    return await client.get_queue_attributes(QUEUE)


async def _delete_message_batch(client: trio_sqs.SQSClient) -> Any:
    return await client.delete_message_batch(QUEUE, ["h0"])


async def _change_visibility_batch(client: trio_sqs.SQSClient) -> Any:
    return await client.change_message_visibility_batch(QUEUE, ["h0"], 0)


MALFORMED_ANSWERS = [
    pytest.param(_get_queue_url, {}, id="GetQueueUrl-{}"),
    pytest.param(_get_queue_url, {"QueueUrl": 5}, id="GetQueueUrl-url-a-number"),
    pytest.param(_create_queue, {}, id="CreateQueue-{}"),
    pytest.param(_send_message, {}, id="SendMessage-{}"),
    pytest.param(_send_message, {"MessageId": {"a": 1}}, id="SendMessage-id-a-map"),
    pytest.param(_send_message_batch, {"Successful": [{"MessageId": "m"}]}, id="SendBatch-no-Id"),
    pytest.param(_send_message_batch, {"Successful": [{"Id": "0"}]}, id="SendBatch-no-MessageId"),
    pytest.param(_send_message_batch, {"Successful": 5}, id="SendBatch-Successful-a-number"),
    pytest.param(_receive_messages, {"Messages": 5}, id="Receive-Messages-a-number"),
    pytest.param(_receive_messages, {"Messages": "abc"}, id="Receive-Messages-a-string"),
    pytest.param(_receive_messages, {"Messages": {"a": 1}}, id="Receive-Messages-a-map"),
    pytest.param(_list_queues, {"QueueUrls": 5}, id="ListQueues-urls-a-number"),
    pytest.param(_list_queues, {"QueueUrls": [5]}, id="ListQueues-url-a-number"),
    pytest.param(_get_queue_attributes, {"Attributes": [1, 2]}, id="Attributes-a-list"),
    pytest.param(_get_queue_attributes, {"Attributes": 5}, id="Attributes-a-number"),
    pytest.param(_get_queue_attributes, {"Attributes": {"A": 5}}, id="Attributes-value-a-number"),
    pytest.param(_delete_message_batch, {"Successful": [{}]}, id="DeleteBatch-no-Id"),
    pytest.param(_delete_message_batch, {"Failed": [{"Id": "0"}]}, id="DeleteBatch-no-Code"),
    pytest.param(_delete_message_batch, {"Successful": [{"Id": "7"}]}, id="DeleteBatch-unknown-Id"),
    pytest.param(_change_visibility_batch, {"Failed": [{"Code": "X"}]}, id="VisibilityBatch-no-Id"),
]


@pytest.mark.parametrize(("call", "document"), MALFORMED_ANSWERS)
async def test_a_200_answer_with_members_missing_or_mistyped_is_an_invalid_response(
    call: Call, document: Any
) -> None:
    transport = Answers(ok(document))
    async with client_over(transport) as client:
        with pytest.raises(trio_sqs.TransportError) as info:
            await call(client)
    error = info.value
    assert type(error) is trio_sqs.TransportError
    assert error.code == "InvalidResponse"
    assert error.status_code == 200
    assert error.__cause__ is not None  # the original kept for debugging
    assert len(transport.requests) == 1


async def test_a_malformed_answer_is_retried_like_an_unreadable_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = Answers(ok({}), ok({"MessageId": 5}), ok({"MessageId": "m-1"}))
    async with client_over(transport, attempts=3) as client:
        sent = await client.send_message(QUEUE, "x")
    assert sent.message_id == "m-1"
    assert transport.requests == ["SendMessage"] * 3


async def test_a_malformed_answer_on_every_attempt_ends_in_an_invalid_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = Answers(ok({"Messages": 5}))
    async with client_over(transport, attempts=3) as client:
        with pytest.raises(trio_sqs.TransportError) as info:
            await client.receive_messages(QUEUE, wait_time=0)
    assert info.value.code == "InvalidResponse"
    assert transport.requests == ["ReceiveMessage"] * 3


@pytest.mark.parametrize(
    "body",
    [b'{"__type": 5}', b'{"__type": ["x"]}', b"[1, 2]", b"\xff\xfe"],
    ids=["type-a-number", "type-a-list", "a-json-list", "not-utf8"],
)
async def test_an_error_answer_that_cannot_be_read_is_a_service_error_by_its_status(
    body: bytes,
) -> None:
    async with client_over(Answers((400, body))) as client:
        with pytest.raises(trio_sqs.ServiceError) as info:
            await client.send_message(QUEUE, "x")
    assert type(info.value) is trio_sqs.ServiceError
    assert info.value.status_code == 400
    assert info.value.code == "HTTP400"


async def test_an_unreadable_5xx_answer_is_retried_as_a_5xx(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = Answers((503, b'{"__type": 5}'), ok({"MessageId": "m-1"}))
    async with client_over(transport, attempts=3) as client:
        assert (await client.send_message(QUEUE, "x")).message_id == "m-1"
    assert transport.requests == ["SendMessage"] * 2


# -- item 5: every foreign exception on the way out is a TransportError ----------------------------


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        # Transient: retried like httpx's own transport errors.
        (httpcore.ReadError("reset"), 3),
        (h11.RemoteProtocolError("bad status line"), 3),
        (ConnectionResetError("reset by peer"), 3),
        (ExceptionGroup("connect", [httpcore.ConnectError("refused")]), 3),
        # Not transient: one attempt, then the error.
        (httpx.InvalidURL("no host"), 1),
        (httpx.StreamConsumed(), 1),
        (RuntimeError("a bug in a user's transport"), 1),
        (KeyError("x"), 1),
        (ExceptionGroup("several", [ValueError("a"), httpcore.ConnectError("b")]), 1),
    ],
    ids=[
        "httpcore-ReadError",
        "h11-RemoteProtocolError",
        "OSError",
        "group-of-a-connect-error",
        "httpx-InvalidURL",
        "httpx-StreamError",
        "RuntimeError",
        "KeyError",
        "mixed-group",
    ],
)
async def test_whatever_a_transport_raises_is_a_transport_error(
    autojump_clock: trio.testing.MockClock, error: Exception, attempts: int
) -> None:
    transport = Answers(error)
    async with client_over(transport, attempts=3) as client:
        with pytest.raises(trio_sqs.TransportError) as info:
            await client.get_queue_url("q")
    assert type(info.value) is trio_sqs.TransportError
    assert info.value.code == "TransportError"
    assert info.value.status_code is None
    assert info.value.__cause__ is error
    assert len(transport.requests) == attempts


# -- item 5: a malformed received message is corrupt, its neighbours delivered ---------------------


def wire_message(message_id: str, **overrides: Any) -> dict[str, Any]:
    message = make_message("body", message_id=message_id)
    raw: dict[str, Any] = {
        "MessageId": message.message_id,
        "ReceiptHandle": message.receipt_handle,
        "Body": message.body,
        "MD5OfBody": message.md5_of_body,
        "Attributes": dict(message.attributes),
    }
    raw.update(overrides)
    return raw


MALFORMED_MESSAGES = [
    pytest.param({"MessageAttributes": [1]}, id="MessageAttributes-a-list"),
    pytest.param({"MessageAttributes": "abc"}, id="MessageAttributes-a-string"),
    pytest.param({"MessageAttributes": {"a": 5}}, id="attribute-a-number"),
    pytest.param({"MessageAttributes": {"a": [1]}}, id="attribute-a-list"),
    pytest.param({"MessageAttributes": {"a": {"StringValue": "x"}}}, id="DataType-missing"),
    pytest.param(
        {"MessageAttributes": {"a": {"DataType": 5, "StringValue": "x"}}}, id="DataType-a-number"
    ),
    pytest.param(
        {"MessageAttributes": {"a": {"DataType": "String", "StringValue": 5}}},
        id="StringValue-a-number",
    ),
    pytest.param({"Attributes": [1]}, id="Attributes-a-list"),
    pytest.param({"Attributes": {"SenderId": 5}}, id="Attributes-value-a-number"),
    pytest.param(
        {"Attributes": {"ApproximateReceiveCount": "many"}}, id="receive-count-not-a-number"
    ),
    pytest.param({"Attributes": {"SentTimestamp": "1e400"}}, id="timestamp-not-a-number"),
    pytest.param({"Body": 5}, id="Body-a-number"),
]


@pytest.mark.parametrize("overrides", MALFORMED_MESSAGES)
async def test_a_malformed_message_is_corrupt_and_its_neighbours_are_delivered(
    overrides: dict[str, Any],
) -> None:
    good = wire_message("good-1")
    bad = wire_message("bad-1", **overrides)
    async with client_over(Answers(ok({"Messages": [bad, good]}))) as client:
        result = await client.receive_messages(QUEUE, wait_time=0)
    assert [m.message_id for m in result.messages] == ["good-1"]
    [corrupt] = result.corrupt
    assert corrupt.message_id == "bad-1"
    assert corrupt.receipt_handle == bad["ReceiptHandle"]
    assert isinstance(corrupt.error, trio_sqs.MessageCorruptError)
    assert "bad-1 is malformed" in str(corrupt.error)


@pytest.mark.parametrize("entry", [5, "abc", None, [1]], ids=["number", "string", "null", "list"])
async def test_a_received_entry_that_is_not_an_object_is_corrupt(entry: Any) -> None:
    good = wire_message("good-1")
    async with client_over(Answers(ok({"Messages": [entry, good]}))) as client:
        result = await client.receive_messages(QUEUE, wait_time=0)
    assert [m.message_id for m in result.messages] == ["good-1"]
    [corrupt] = result.corrupt
    assert (corrupt.message_id, corrupt.receipt_handle) == ("?", "")


class RewriteReceives(httpx.AsyncBaseTransport):
    """In front of the fake: the first message received gets ``overrides`` (what a broken proxy
    or an SQS bug might send); later ones pass unchanged."""

    def __init__(self, fake: FakeSQS, overrides: dict[str, Any]) -> None:
        self.inner = fake.transport()
        self.overrides = overrides
        self.rewritten: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if operation_of(request) != "ReceiveMessage" or response.status_code != 200:
            return response
        document = json.loads(await response.aread())
        if document.get("Messages") and not self.rewritten:
            first = document["Messages"][0]
            first.update(self.overrides)
            self.rewritten.append(first["MessageId"])
        return httpx.Response(200, json=document, headers=JSON_HEADERS)


async def test_a_consumer_counts_a_malformed_attribute_corrupt_and_keeps_consuming(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    wrapper = RewriteReceives(fake_sqs, {"MessageAttributes": {"trace": 5}})
    handled: list[str] = []
    second = trio.Event()

    async def handler(message: Message) -> None:
        handled.append(message.body)
        second.set()

    async with open_fake_client(fake_sqs, transport=wrapper) as client:
        url = await client.create_queue("malformed-attribute")
        await client.send_message(url, "first")
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, visibility_timeout=30
        ) as consumer:
            await trio.testing.wait_all_tasks_blocked()
            assert len(wrapper.rewritten) == 1
            assert consumer.statistics().corrupt == 1
            assert consumer.state == "running"
            await client.send_message(url, "second")
            await second.wait()
    stats = consumer.statistics()
    assert stats.corrupt == 1
    assert handled == ["second"]
    assert stats.poll_errors == 0


# -- item 5: entries a batch answer leaves out are failed, not dropped -----------------------------


async def test_a_batch_answer_without_its_entries_reports_them_failed() -> None:
    async with client_over(Answers(ok({}))) as client:
        result = await client.delete_message_batch(QUEUE, {"a": "h-a", "b": "h-b"})
        visibility = await client.change_message_visibility_batch(QUEUE, ["h0"], 0)
        sent, outcome = await client.send_message_batch(QUEUE, [trio_sqs.SendEntry(body="x")])
    assert result.successful == ()
    assert [(f.entry_id, f.code, f.sender_fault) for f in result.failed] == [
        ("a", "MissingFromAnswer", False),
        ("b", "MissingFromAnswer", False),
    ]
    assert [(f.entry_id, f.code) for f in visibility.failed] == [("0", "MissingFromAnswer")]
    assert sent == ()
    assert [(f.entry_id, f.code) for f in outcome.failed] == [("0", "MissingFromAnswer")]


async def test_a_batch_answer_with_some_entries_reports_only_the_missing_ones() -> None:
    document = {"Successful": [{"Id": "0"}], "Failed": [{"Id": "2", "Code": "X", "Message": "m"}]}
    async with client_over(Answers(ok(document))) as client:
        result = await client.delete_message_batch(QUEUE, ["h0", "h1", "h2"])
    assert result.successful == ("0",)
    assert [(f.entry_id, f.code) for f in result.failed] == [("2", "X"), ("1", "MissingFromAnswer")]


class EmptyDeleteAnswers(httpx.AsyncBaseTransport):
    """In front of the fake: every DeleteMessageBatch is answered ``200 {}`` without reaching
    it; everything else goes through."""

    def __init__(self, fake: FakeSQS) -> None:
        self.inner = fake.transport()
        self.deletes: list[float] = []
        self.third = trio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if operation_of(request) == "DeleteMessageBatch":
            self.deletes.append(trio.current_time())
            if len(self.deletes) == 3:
                self.third.set()
            return httpx.Response(200, content=b"{}", headers=JSON_HEADERS)
        return await self.inner.handle_async_request(request)


async def test_a_delete_answered_with_an_empty_object_is_retried_then_counted_failed(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    wrapper = EmptyDeleteAnswers(fake_sqs)
    done = trio.Event()

    async def handler(message: Message) -> None:
        done.set()

    async with open_fake_client(fake_sqs, transport=wrapper) as client:
        url = await client.create_queue("empty-delete-answer")
        await client.send_message(url, "x")
        async with trio_sqs.open_consumer(
            url, handler, client=client, wait_time=20, visibility_timeout=30, ack_interval=0.1
        ) as consumer:
            await done.wait()
            t_done = trio.current_time()
            # Three sends (the Batcher's attempts per entry): each partial batch waits out its
            # window, which grows from ack_interval after a partial batch to what would fill a
            # batch at that rate (x10 for a batch of one), at most 2 s.
            await wrapper.third.wait()
            await trio.sleep(5)  # nothing more is sent for it
    assert wrapper.deletes == pytest.approx([t_done + 0.1, t_done + 1.1, t_done + 3.1])
    stats = consumer.statistics()
    assert stats.completed == 1
    assert stats.deleted == 0
    assert stats.delete_failed == 1
    assert stats.unflushed == 0
    # Not deleted: it is in flight until its lease ends, then visible again.
    assert fake_sqs.queue(url).counts() == QueueCounts(visible=0, in_flight=1, delayed=0)


# -- item 4: a call cancelled while it connects raises a plain Cancelled ---------------------------


async def _connect_attempt() -> None:
    await trio.sleep_forever()


class ConnectsForever(httpx.AsyncBaseTransport):
    """Stands in for httpcore's connect: trio's happy-eyeballs nursery with two attempts, which,
    cancelled from outside, raises ``BaseExceptionGroup([Cancelled, Cancelled])``. The first
    ``times`` requests of ``operation`` connect forever; the rest go to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, operation: str, times: int = 1) -> None:
        self.inner = inner
        self.operation = operation
        self.times = times
        self.connecting = 0
        self.connecting_now = trio.Event()
        self.seen: list[BaseException] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if operation_of(request) != self.operation or self.connecting == self.times:
            return await self.inner.handle_async_request(request)
        self.connecting += 1
        self.connecting_now.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_connect_attempt)
                nursery.start_soon(_connect_attempt)
        except BaseException as exc:
            self.seen.append(exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def raised() -> Iterator[list[BaseException]]:
    """Collects what the block raises (and re-raises it)."""
    caught: list[BaseException] = []
    try:
        yield caught
    except BaseException as exc:
        caught.append(exc)
        raise


async def test_a_call_cancelled_while_connecting_raises_a_plain_cancelled(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    transport = ConnectsForever(fake_sqs.transport(), "GetQueueUrl")
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("connect-cancelled")
        with trio.move_on_after(1) as scope:
            with raised() as caught:
                await client.get_queue_url("connect-cancelled")
        assert scope.cancelled_caught
        # The transport raised the group; the caller got the Cancelled alone.
        [group] = transport.seen
        assert isinstance(group, BaseExceptionGroup)
        assert [type(e) for e in group.exceptions] == [trio.Cancelled, trio.Cancelled]
        [exc] = caught
        assert type(exc) is trio.Cancelled
        assert exc.__context__ is not group  # the group is not chained onto it either
        # The client is still usable.
        assert await client.get_queue_url("connect-cancelled") == url


async def test_a_group_of_a_cancelled_and_an_error_goes_through_the_mapping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class CancelledWhileFailing(httpx.AsyncBaseTransport):
        """Two connect attempts: one is cancelled from outside (at t=1), the other fails
        meanwhile (it was shielded until t=2): ``BaseExceptionGroup([ConnectError, Cancelled])``."""

        def __init__(self) -> None:
            self.seen: list[BaseException] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            async def failing() -> None:
                with trio.CancelScope(shield=True):
                    await trio.sleep(2)
                raise httpcore.ConnectError("refused")

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(failing)
                    nursery.start_soon(_connect_attempt)
            except BaseException as exc:
                self.seen.append(exc)
                raise
            raise AssertionError("unreachable")  # pragma: no cover

    transport = CancelledWhileFailing()
    async with client_over(transport) as client:
        with pytest.raises(trio_sqs.TransportError) as info:
            with trio.move_on_after(1):
                await client.get_queue_url("q")
    [group] = transport.seen
    assert isinstance(group, BaseExceptionGroup)
    assert {type(e) for e in group.exceptions} == {httpcore.ConnectError, trio.Cancelled}
    assert info.value.code == "TransportError"
    assert info.value.__cause__ is group


def _full_listener() -> tuple[socket.socket, list[socket.socket], int]:
    """A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    connect to it stays pending (it would complete if the server ever accepted)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    return listener, fillers, port


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's accept-queue behaviour")
async def test_a_call_cancelled_while_its_real_tcp_connection_opens_raises_a_plain_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener, fillers, port = _full_listener()
    try:
        # What trio's connect raises when cancelled: a group, not a Cancelled.
        with trio.move_on_after(1) as probe:
            with raised() as caught_raw:
                await trio.open_tcp_stream("127.0.0.1", port)
        assert probe.cancelled_caught, "the connect completed: the accept queue is not full"
        [raw] = caught_raw
        assert isinstance(raw, BaseExceptionGroup), "trio no longer wraps it: this test is moot"

        async with trio_sqs.open_client(
            region="us-east-1",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            use_fips=False,
            use_dualstack=False,
        ) as client:
            start = trio.current_time()
            with trio.move_on_after(1) as scope:
                with raised() as caught:
                    await client.get_queue_url("q")
            assert scope.cancelled_caught
            assert trio.current_time() == start + 1  # cut off by us, not by a connect timeout
            [exc] = caught
            assert type(exc) is trio.Cancelled
    finally:
        for sock in (listener, *fillers):
            sock.close()


async def test_a_delete_cut_off_while_connecting_is_counted_unflushed(
    autojump_clock: trio.testing.MockClock, fake_sqs: FakeSQS
) -> None:
    transport = ConnectsForever(fake_sqs.transport(), "DeleteMessageBatch")
    done = trio.Event()

    async def handler(message: Message) -> None:
        done.set()

    grace, flush = 10.0, 5.0
    async with open_fake_client(fake_sqs, transport=transport) as client:
        url = await client.create_queue("delete-cut-off")
        await client.send_message(url, "x")
        async with trio_sqs.open_consumer(
            url,
            handler,
            client=client,
            wait_time=20,
            visibility_timeout=30,
            grace_period=grace,
            flush_timeout=flush,
        ) as consumer:
            await done.wait()
            await transport.connecting_now.wait()
            t0 = trio.current_time()
    # The delete hung for the whole flush and was cut off at its end.
    assert trio.current_time() == pytest.approx(t0 + flush)
    [group] = transport.seen
    assert isinstance(group, BaseExceptionGroup)
    stats = consumer.statistics()
    assert stats.completed == 1
    assert (stats.deleted, stats.delete_failed) == (0, 0)
    assert stats.unflushed == 1  # counted, not lost
    assert fake_sqs.queue(url).counts() == QueueCounts(visible=0, in_flight=1, delayed=0)


class AnswersNothing:
    """A client whose batch calls report no entry at all (neither successful nor failed)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def delete_message_batch(self, queue_url: str, handles: dict[str, str]) -> BatchResult:
        self.calls.append(dict(handles))
        return BatchResult(successful=(), failed=())


async def test_the_batcher_counts_entries_left_out_of_a_result_as_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = AnswersNothing()
    confirmed: list[str] = []
    failed: list[tuple[str, str]] = []
    batcher = Batcher(
        client,  # type: ignore[arg-type]
        QUEUE,
        "delete",
        0.1,
        lambda entry: confirmed.append(entry.message_id),
        lambda entry, code: failed.append((entry.message_id, code)),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        batcher.add(Entry("m-1", "h-1"))
        await batcher.drain()
        nursery.cancel_scope.cancel()
    assert client.calls == [{"0": "h-1"}] * MAX_ENTRY_ATTEMPTS  # retried, then failed
    assert confirmed == []
    assert failed == [("m-1", "MissingFromAnswer")]
    assert batcher.pending == 0
