"""The in-memory SQS served to an ``httpx.AsyncClient`` in process, without sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import trio

from ._wire import answer

if TYPE_CHECKING:
    from ._service import FakeSQS

__all__ = ["FakeSQSTransport"]


class _Stalled(httpx.AsyncByteStream):
    """A response body that never comes (the read timeout, if any, ends the wait).

    Not an async generator: one abandoned by a cancelled read would be reported by Trio with a
    ResourceWarning when garbage collected.
    """

    def __init__(self, request: httpx.Request, read_timeout: float | None) -> None:
        self._request = request
        self._read_timeout = read_timeout

    def __aiter__(self) -> _Stalled:
        return self

    async def __anext__(self) -> bytes:
        if self._read_timeout is None:
            await trio.sleep_forever()
        await trio.sleep(self._read_timeout)
        raise httpx.ReadTimeout("the response body never came (stalled)", request=self._request)


class FakeSQSTransport(httpx.AsyncBaseTransport):
    """Serves a :class:`FakeSQS` to an ``httpx.AsyncClient``, in process, without sockets.

    Honours the request's read timeout (``httpx.ReadTimeout``) on Trio's clock. A dropped
    connection raises ``httpx.RemoteProtocolError``, as a server closing without an answer does.

    Cancellation: cancelling a request drops its answer; what reached the fake has taken
    effect (a long poll goes on server-side, as on SQS).
    """

    def __init__(self, fake: FakeSQS) -> None:
        self.fake = fake
        #: Requests whose answer was given up by the client (cancelled or timed out).
        self.abandoned = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Read the stream itself, not request.aread(): that returns the content httpx cached
        # when the request was built and never iterates the stream, and the client learns
        # that its request is on the wire (on_sent) from that iteration.
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            with trio.fail_after(read_timeout if read_timeout is not None else float("inf")):
                reply = await answer(
                    self.fake, request.method, request.url.raw_path.decode("ascii"), headers, body
                )
        except trio.TooSlowError:
            self.abandoned += 1
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from None
        except trio.Cancelled:
            self.abandoned += 1
            raise
        if reply.action == "drop":
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        reply.headers["Content-Length"] = str(len(reply.body))
        if reply.action == "stall":
            return httpx.Response(
                reply.status,
                headers=reply.headers,
                stream=_Stalled(request, read_timeout),
                request=request,
            )
        return httpx.Response(
            reply.status, headers=reply.headers, content=reply.body, request=request
        )
