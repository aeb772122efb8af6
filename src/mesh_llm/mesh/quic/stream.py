"""One bidirectional QUIC stream: buffers and waiters over its connection's send calls.

The stream holds no QUIC state of its own: the connection feeds it (`feed`, `peer_reset`,
...) from QUIC events, and it sends through the connection's `StreamOwner` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from .errors import RESET_CANCELLED, RESET_OVERFLOW, StreamReset
from .settings import TransportSettings

log = logging.getLogger("mesh_llm.mesh")


class StreamOwner(Protocol):
    """What a stream needs of its connection."""

    loop: asyncio.AbstractEventLoop
    settings: TransportSettings

    def send(self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool,
             more: bool = False) -> None: ...

    def unsent(self, stream_id: int) -> int: ...

    def reset_stream(self, stream_id: int, code: int) -> None: ...

    def stop_stream(self, stream_id: int, code: int) -> None: ...

    def watch_writable(self, stream: QuicStream, check_now: bool) -> None: ...

    def unwatch_writable(self, stream: QuicStream) -> None: ...

    def forget(self, stream: QuicStream) -> None: ...

    def run_callback(self, callback: Callable[[], None]) -> None: ...


class QuicStream:
    """One bidirectional QUIC stream (see `interface.Stream` for the contract).

    Reading: `await read(n)` returns up to n bytes, b"" at the peer's end of stream;
    `readexactly(n)` raises asyncio.IncompleteReadError on a short stream. A reset or a lost
    connection raises StreamReset / ConnectionClosed (after any bytes already received).
    Alternatively `set_receiver(on_data, on_end)` switches to push mode for relays.

    Writing: `await write(data)` queues and then waits while more than the high-water mark
    is unsent; `write_nowait(data)` never waits and returns False when the caller should
    pause its source (resume from `on_writable`). `write_eof()` half-closes (FIN);
    `close()` sends FIN and stops reading; `abort()` resets both directions.
    """

    __slots__ = (
        "_drain_waiters",
        "_eof",
        "_on_data",
        "_on_end",
        "_owner",
        "_rbuf",
        "_read_closed",
        "_rexc",
        "_rwaiter",
        "_wexc",
        "_writable_cbs",
        "_write_closed",
        "stream_id",
    )

    def __init__(self, owner: StreamOwner, stream_id: int) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self._rbuf = bytearray()
        self._rwaiter: asyncio.Future[None] | None = None
        self._eof = False
        self._rexc: BaseException | None = None
        self._read_closed = False
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[BaseException | None], None] | None = None
        self._write_closed = False
        self._wexc: BaseException | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writable_cbs: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} of {self._owner!r}>"

    # ---- reading

    async def read(self, n: int = 65536) -> bytes:
        """Up to `n` bytes (all buffered bytes if n < 0); b"" at end of stream."""
        while not self._rbuf:
            if self._rexc is not None:
                raise self._rexc
            if self._eof or self._read_closed:
                return b""
            await self._wait_readable()
        if n < 0 or n >= len(self._rbuf):
            data = bytes(self._rbuf)
            self._rbuf.clear()
        else:
            data = bytes(self._rbuf[:n])
            del self._rbuf[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes, or asyncio.IncompleteReadError if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._rbuf) < n:
            if self._rexc is not None:
                raise self._rexc
            if self._eof or self._read_closed:
                partial = bytes(self._rbuf)
                self._rbuf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait_readable()
        data = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return data

    def set_receiver(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        """Push mode: bytes go to `on_data` as they arrive (buffered ones first); `on_end`
        gets None at the peer's FIN or the exception that ended the stream."""
        self._on_data = on_data
        self._on_end = on_end
        if self._rbuf:
            data = bytes(self._rbuf)
            self._rbuf.clear()
            on_data(data)
        if self._rexc is not None or self._eof:
            self._fire_end(self._rexc)

    async def _wait_readable(self) -> None:
        if self._rwaiter is not None:
            raise RuntimeError("another task is already reading this stream")
        self._rwaiter = self._owner.loop.create_future()
        try:
            await self._rwaiter
        finally:
            self._rwaiter = None

    def _wake_reader(self) -> None:
        waiter = self._rwaiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fire_end(self, exc: BaseException | None) -> None:
        cb, self._on_end = self._on_end, None
        if cb is not None:
            cb(exc)

    # ---- events from the connection

    def feed(self, data: bytes, fin: bool) -> None:
        """Bytes (and maybe the FIN) from the peer."""
        if self._read_closed or self._eof or self._rexc is not None:
            return
        if data:
            if self._on_data is not None:
                self._on_data(data)
            else:
                self._rbuf += data
                if len(self._rbuf) > self._owner.settings.max_recv_buffer:
                    log.warning("%r: peer sent %d unread bytes; resetting the stream",
                                self, len(self._rbuf))
                    self._rbuf.clear()
                    self.abort(RESET_OVERFLOW)
                    self._rexc = StreamReset("receive buffer overflow", RESET_OVERFLOW)
                    self._wake_reader()
                    return
        if fin:
            self._eof = True
            self._fire_end(None)
            self._maybe_forget()
        self._wake_reader()

    def peer_reset(self, code: int) -> None:
        """The peer reset its sending side (RESET_STREAM)."""
        if self._read_closed or self._eof or self._rexc is not None:
            return
        self._rexc = StreamReset(f"stream {self.stream_id} reset by peer (code {code})", code)
        self._fire_end(self._rexc)
        self._wake_reader()
        self._maybe_forget()

    def peer_stopped_reading(self, code: int) -> None:
        """The peer asked us to stop sending (STOP_SENDING): our side is reset in turn."""
        if self._write_closed:
            return
        self._wexc = StreamReset(f"peer stopped reading stream {self.stream_id} "
                                 f"(code {code})", code)
        self._write_closed = True
        self._owner.reset_stream(self.stream_id, code)
        self.release_writers()
        self._maybe_forget()

    def connection_lost(self, exc: BaseException) -> None:
        """The connection is gone: both directions fail with `exc`."""
        if self._rexc is None and not self._eof and not self._read_closed:
            self._rexc = exc
            self._fire_end(exc)
        if self._wexc is None:
            self._wexc = exc
        self._write_closed = True
        self._wake_reader()
        self.release_writers()

    # ---- writing

    def write_nowait(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> bool:
        """Queue `data` now; False means above the high-water mark: pause the source.

        `more`: the writer knows the rest of this message follows at once, so these bytes
        may wait a moment (settings.cork_s) to leave in the same packets as the rest."""
        if self._wexc is not None:
            raise self._wexc
        if self._write_closed:
            raise ConnectionError(f"stream {self.stream_id} is closed for writing")
        owner = self._owner
        if data:
            owner.send(self.stream_id, data, False, more)
        return owner.unsent(self.stream_id) <= owner.settings.send_high_water

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`, then wait while the stream has too much unsent data."""
        if not self.write_nowait(data):
            await self.drain()

    async def drain(self) -> None:
        """Wait until unsent bytes fall to the low-water mark (raises if the stream died)."""
        owner = self._owner
        while True:
            if self._wexc is not None:
                raise self._wexc
            if owner.unsent(self.stream_id) <= owner.settings.send_low_water:
                return
            waiter = owner.loop.create_future()
            self._drain_waiters.append(waiter)
            owner.watch_writable(self, check_now=False)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._drain_waiters.remove(waiter)

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when unsent bytes fall to the low-water mark (or the
        stream dies: then writes raise)."""
        self._writable_cbs.append(callback)
        self._owner.watch_writable(self, check_now=True)

    @property
    def write_failed(self) -> bool:
        """Writes would raise: waiting writers should be released to see it."""
        return self._wexc is not None

    def release_writers(self) -> None:
        """Wake `drain` waiters and run `on_writable` callbacks (room, or a dead stream)."""
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        cbs, self._writable_cbs = self._writable_cbs, []
        for cb in cbs:
            self._owner.run_callback(cb)
        self._owner.unwatch_writable(self)

    def write_eof(self) -> None:
        """Half-close: send FIN after the queued bytes."""
        if self._write_closed:
            return
        self._write_closed = True
        self._owner.send(self.stream_id, b"", True)
        self._maybe_forget()

    # ---- ending

    def close(self) -> None:
        """FIN our side (queued bytes still go out) and stop reading the peer's side."""
        self.write_eof()
        if not (self._eof or self._read_closed or self._rexc is not None):
            self._read_closed = True
            self._owner.stop_stream(self.stream_id, RESET_CANCELLED)
        self._rbuf.clear()
        self._on_data = None
        self._on_end = None
        self._wake_reader()
        self._maybe_forget()

    def abort(self, code: int = RESET_CANCELLED) -> None:
        """Reset both directions at once; queued bytes are dropped."""
        if not self._write_closed:
            self._write_closed = True
            self._owner.reset_stream(self.stream_id, code)
        self._wexc = self._wexc or StreamReset(f"stream {self.stream_id} aborted", code)
        if not (self._eof or self._read_closed or self._rexc is not None):
            self._read_closed = True
            self._owner.stop_stream(self.stream_id, code)
        self._rbuf.clear()
        self._on_data = None
        self._on_end = None
        self._wake_reader()
        self.release_writers()
        self._maybe_forget()

    @property
    def closed(self) -> bool:
        """Both directions are finished."""
        return self._write_closed and (self._eof or self._read_closed or self._rexc is not None)

    def _maybe_forget(self) -> None:
        if self.closed:
            self._owner.forget(self)
