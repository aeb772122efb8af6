"""One request to llama-server on a fresh connection, its answer passed on as it arrives.

Why not aiohttp's client: for a streamed completion every token would cross a parser, a
StreamReader, a task wake-up and a writer before reaching the client, about 0.2 ms of CPU
per token, which on a small machine comes straight out of generation. Here the socket
callback that receives a chunk writes it to the client's transport; nothing else runs.
A fresh connection per request also means no stale keep-alive connection to trip over
(llama-server closes its connection after a stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .http1 import (
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    HttpProtocolError,
    ResponseHead,
    frame_chunk,
    parse_head,
)

CONNECT_TIMEOUT_S = 10.0
# The head of a non-streamed answer comes only when generation ends, hence the long wait.
READ_TIMEOUT_S = 600.0
_HIGH_WATER = 256 * 1024  # client write buffer above which upstream reading pauses
_RECHECK_S = 0.01


class UpstreamClosed(ConnectionError):
    """The upstream closed or broke the connection before its answer was complete."""


class UpstreamSilent(UpstreamClosed):
    """The connection closed before a single byte of answer: no server answered this
    request (a connection closed under us just as we sent it), so it may be sent again."""


class Exchange(asyncio.Protocol):
    """The client side of one HTTP/1.1 exchange; body pieces go to a sink once one is set."""

    def __init__(self, request: bytes, max_body: int) -> None:
        self._request = request
        self._max_body = max_body
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._decoder: ChunkedDecoder | None = None
        self._remaining: int | None = None  # Content-Length left; None: chunked or to close
        self._received = 0
        self._answered = False  # any byte at all came back
        self._pending: list[bytes] = []
        self._sink: Callable[[bytes], None] | None = None
        self.head: asyncio.Future[ResponseHead] = self._loop.create_future()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.last_activity = self._loop.time()

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        self._answered = True
        try:
            if not self.head.done():
                data = self._read_head(data)
            if data and not self.done.done():
                self._read_body(data)
        except HttpProtocolError as err:
            self._fail(UpstreamClosed(f"bad answer from upstream: {err}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.head.done() and not self.head.cancelled() and self._decoder is None \
                and self._remaining is None:
            self._finish()  # a body delimited by the close
        closed = UpstreamClosed if self._answered else UpstreamSilent
        self._fail(closed(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    # --- parsing ---
    def _read_head(self, data: bytes) -> bytes:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise HttpProtocolError("response head too large")
            return b""
        head = parse_head(self._buf[:end])
        rest, self._buf = self._buf[end + 4:], b""
        if head.chunked:
            self._decoder = ChunkedDecoder()
        else:
            self._remaining = head.content_length
            if self._remaining == 0:
                self._finish()
        self.head.set_result(head)
        return rest

    def _read_body(self, data: bytes) -> None:
        if self._decoder is not None:
            pieces = self._decoder.feed(data)
            for piece in pieces:
                self._deliver(piece)
            if self._decoder.done:
                self._finish()
            return
        if self._remaining is not None:
            data = data[:self._remaining]
            self._remaining -= len(data)
        self._deliver(data)
        if self._remaining == 0:
            self._finish()

    def _deliver(self, piece: bytes) -> None:
        self._received += len(piece)
        if self._received > self._max_body:
            raise HttpProtocolError(f"answer larger than {self._max_body} bytes")
        if self._sink is not None:
            self._sink(piece)
        else:
            self._pending.append(piece)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.close()

    def _fail(self, exc: Exception) -> None:
        for fut in (self.head, self.done):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: whoever awaits sees it; nobody else warns
        self.close()

    # --- use ---
    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def body(self) -> bytes:
        """The whole body (after the head), for answers that are not streamed."""
        await self.wait_done()
        return b"".join(self._pending)

    async def wait_done(self) -> None:
        """Until the body is complete; UpstreamClosed if the upstream stops sending for
        READ_TIMEOUT_S or breaks off."""
        while not self.done.done():
            idle = self._loop.time() - self.last_activity
            if idle >= READ_TIMEOUT_S:
                self._fail(UpstreamClosed(f"upstream sent nothing for {READ_TIMEOUT_S:.0f} s"))
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done), READ_TIMEOUT_S - idle)
        await self.done

    def splice_chunked(self, client: asyncio.Transport,
                       watch: Callable[[bytes], None] | None = None) -> None:
        """From now on write each body piece to `client` as an HTTP chunk, straight from the
        socket callback (and show it to `watch`, the API's metrics, after it is written).
        The client's response head must already be sent, chunked."""
        def sink(piece: bytes) -> None:
            if client.is_closing():
                self._fail(UpstreamClosed("the client went away"))
                return
            client.write(frame_chunk(piece))
            if watch is not None:
                watch(piece)
            if client.get_write_buffer_size() > _HIGH_WATER and self._transport is not None:
                self._transport.pause_reading()
                self._loop.call_later(_RECHECK_S, self._resume_when_drained, client)

        for piece in self._pending:
            sink(piece)
        self._pending.clear()
        self._sink = sink

    def _resume_when_drained(self, client: asyncio.Transport) -> None:
        """A client reading slower than tokens arrive: poll its buffer rather than
        hook into the server's own flow control, which is not ours to take over."""
        if self._transport is None or client.is_closing():
            return
        if client.get_write_buffer_size() > _HIGH_WATER // 4:
            self._loop.call_later(_RECHECK_S, self._resume_when_drained, client)
        else:
            self.last_activity = self._loop.time()
            self._transport.resume_reading()


Connect = Callable[[asyncio.Protocol], Awaitable[None]]
"""Opens a new connection to the upstream and runs `protocol` on it: the transport interface,
so the same exchange runs over loopback TCP or straight over a mesh stream."""


async def open_exchange(connect: Connect, request: bytes, max_body: int) -> Exchange:
    """Connect and send `request`; OSError/TimeoutError if the upstream is not there."""
    exchange = Exchange(request, max_body)
    await asyncio.wait_for(connect(exchange), CONNECT_TIMEOUT_S)
    return exchange
