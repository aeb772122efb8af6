"""TCP ↔ mesh stream relays: how llama.cpp's RPC and the HTTP API cross the mesh.

One TCP connection is carried by one QUIC stream, except on the API's calling side, where
the stream itself is the HTTP exchange's transport (StreamTransport: no loopback hop).
The data path is callbacks only (asyncio.Protocol on the TCP side, push mode on the stream
side): no task per message, and whatever arrives in one loop pass leaves in one QUIC
transmit.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Protocol

from .quic import Stream

log = logging.getLogger("mesh_llm.tunnel")

CONNECT_TIMEOUT_S = 10.0
# What a paused reader of a StreamTransport may leave waiting before the stream is reset.
MAX_HELD_BYTES = 64 * 1024 * 1024

OpenStream = Callable[[], Awaitable[Stream]]


class Encoder(Protocol):
    """Rewrites what the TCP side sends before it enters the stream (one per connection),
    and knows the protocol well enough to say when the other end has a whole message to act
    on: until then (`more`) the stream may hold the bytes a moment to send them together."""

    @property
    def more(self) -> bool: ...
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class Decoder(Protocol):
    """Restores what arrives from the stream before the TCP side sees it; raises to abort."""

    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> None: ...


class _Bridge(asyncio.Protocol):
    """Relays one TCP connection and one stream, with backpressure from the stream side."""

    def __init__(self, encoder: Encoder | None = None, decoder: Decoder | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self._pending = bytearray()
        self._tcp_eof = False  # the TCP side ended before the stream was attached
        self._tcp_done = False  # the TCP side has sent everything it will send
        self._stream_done = False  # the stream has ended and the TCP side has its EOF
        self._encoder = encoder
        self._decoder = decoder
        self.on_decode_error: Callable[[ValueError], None] | None = None
        self.on_closed: Callable[[], None] | None = None

    # --- wiring
    def attach(self, stream: Stream) -> None:
        """Start relaying over `stream` (TCP bytes that arrived before are sent first)."""
        self.stream = stream
        stream.set_receiver(self._from_stream, self._stream_ended)
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._to_stream(data)
        if self._tcp_eof:
            self._finish_outbound()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- TCP side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if self.stream is None:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.stream is None:
            self._pending += data
        else:
            self._to_stream(data)

    def eof_received(self) -> bool:
        self._tcp_done = True
        if self.stream is None:
            self._tcp_eof = True
        else:
            self._finish_outbound()
        # Keep our sending side open until the stream ends too; once both ends are done,
        # close, or the connection (and whoever counts it) would stay open for ever.
        return not self._stream_done

    def connection_lost(self, exc: Exception | None) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort() if exc is not None else stream.close()
        closed, self.on_closed = self.on_closed, None
        if closed is not None:
            closed()

    # --- stream side
    def _finish_outbound(self) -> None:
        assert self.stream is not None
        if self._encoder is not None:
            tail = self._encoder.finish()
            if tail:
                self._send(tail)
        self.stream.write_eof()

    def _to_stream(self, data: bytes) -> None:
        encoder = self._encoder
        if encoder is None:
            self._send(data)
            return
        data = encoder.feed(data)
        if data:
            self._send(data, more=encoder.more)

    def _send(self, data: bytes, more: bool = False) -> None:
        assert self.stream is not None and self.transport is not None
        try:
            if not self.stream.write_nowait(data, more=more):
                self.transport.pause_reading()
                self.stream.on_writable(self._resume)
        except ConnectionError as err:
            log.debug("tunnel stream failed: %s", err)
            self.transport.abort()

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _from_stream(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._decoder is not None:
            try:
                data = self._decoder.feed(data)
            except ValueError as err:
                self._decode_failed(err)
                return
        self.transport.write(data)

    def _decode_failed(self, err: ValueError) -> None:
        log.warning("tunnel: dropping a connection whose stream cannot be decoded: %s", err)
        if self.on_decode_error is not None:
            self.on_decode_error(err)
        if self.stream is not None:
            self.stream.abort()
        if self.transport is not None:
            self.transport.abort()

    def _stream_ended(self, exc: BaseException | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if exc is None and self._decoder is not None:
            try:
                self._decoder.finish()
            except ValueError as err:
                self._decode_failed(err)
                return
        if exc is None and transport.can_write_eof():
            transport.write_eof()
            self._stream_done = True
            if self._tcp_done:
                transport.close()
        else:
            transport.abort()


class TunnelListener:
    """A loopback TCP port whose every connection becomes a new stream from `open_stream`."""

    def __init__(self, open_stream: OpenStream, name: str,
                 make_encoder: Callable[[], Encoder] | None = None) -> None:
        self._open_stream = open_stream
        self.name = name
        self._make_encoder = make_encoder
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def _accept(self) -> _Bridge:
        encoder = self._make_encoder() if self._make_encoder is not None else None
        bridge = _Bridge(encoder=encoder)
        task = asyncio.create_task(self._connect(bridge), name=f"tunnel {self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return bridge

    async def _connect(self, bridge: _Bridge) -> None:
        try:
            stream = await asyncio.wait_for(self._open_stream(), CONNECT_TIMEOUT_S)
        except Exception as err:  # the mesh's errors too (peer gone): one line
            log.warning("%s: cannot open a mesh stream: %s", self.name[:12], err)
            if bridge.transport is not None:
                bridge.transport.abort()
            return
        if bridge.transport is None or bridge.transport.is_closing():
            stream.abort()
            return
        bridge.attach(stream)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()


async def relay_to_tcp(stream: Stream, host: str, port: int, *,
                       decoder: Decoder | None = None,
                       encoder: Encoder | None = None,
                       on_decode_error: Callable[[ValueError], None] | None = None,
                       on_closed: Callable[[], None] | None = None,
                       preface: bytes = b"",
                       ssl: ssl_module.SSLContext | None = None,
                       server_hostname: str | None = None) -> asyncio.Transport | None:
    """The accepting end: connect `stream` to a local TCP service and relay until both close.

    `decoder` restores what the stream carries, `encoder` rewrites (or only follows) what
    the service answers. A `decoder` failure (its ValueError) drops the connection and is
    reported to `on_decode_error`; `on_closed` hears once that the relay is over (or never
    began). `ssl` makes it a TLS connection (a shared server on https). Returns the TCP
    side's transport (None if the service could not be reached)."""
    loop = asyncio.get_running_loop()
    bridge = _Bridge(encoder=encoder, decoder=decoder)
    bridge.on_decode_error = on_decode_error
    bridge.on_closed = on_closed
    try:
        await asyncio.wait_for(loop.create_connection(lambda: bridge, host, port, ssl=ssl,
                                                      server_hostname=server_hostname),
                               CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as err:
        log.warning("tunnel: cannot reach %s:%d: %s", host, port, err)
        stream.abort()
        closed, bridge.on_closed = bridge.on_closed, None
        if closed is not None:
            closed()
        return None
    if preface and bridge.transport is not None:
        bridge.transport.write(preface)
    bridge.attach(stream)
    return bridge.transport


class StreamTransport(asyncio.Transport):
    """A mesh stream as the transport of an asyncio.Protocol (the API relay's exchange), so
    a node without llama-server talks HTTP to the host's straight over the stream. It has
    what the exchange uses: write, close, pause and resume reading."""

    def __init__(self, stream: Stream, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._paused = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._end: tuple[BaseException | None] | None = None
        self._closing = False
        protocol.connection_made(self)
        stream.set_receiver(self._on_data, self._on_end)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        try:
            self._stream.write_nowait(data)  # requests are bounded by the API's body limit
        except ConnectionError as err:
            self._lost(err)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._stream.close()
            self._lost(None)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            self._protocol.data_received(data)
        if self._end is not None and not self._paused:
            self._lost(self._end[0])

    def _on_data(self, data: bytes) -> None:
        if self._paused:
            self._held_bytes += len(data)
            if self._held_bytes > MAX_HELD_BYTES:
                self._stream.abort()
                self._lost(ConnectionError(f"peer sent over {MAX_HELD_BYTES} bytes that "
                                           "nobody read"))
                return
            self._held.append(data)
        else:
            self._protocol.data_received(data)

    def _on_end(self, exc: BaseException | None) -> None:
        if self._paused:
            self._end = (exc,)
        else:
            self._lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._closing = True
        asyncio.get_running_loop().call_soon(
            self._protocol.connection_lost, exc if isinstance(exc, Exception) else None)


def stream_connect(open_stream: OpenStream) -> Callable[[asyncio.Protocol], Awaitable[None]]:
    """The API relay's connector for an upstream across the mesh: one stream per request."""
    async def connect(protocol: asyncio.Protocol) -> None:
        stream = await open_stream()
        StreamTransport(stream, protocol)
    return connect
