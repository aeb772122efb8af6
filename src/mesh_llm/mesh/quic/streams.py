"""A connection's streams: the calls its streams make (`stream.StreamOwner`), the routing
of QUIC stream events to them, which peer stream ids are new, and the writers waiting for
room to send."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qh3.quic import events
from qh3.quic.connection import QuicConnection as Qh3Connection
from qh3.quic.connection import QuicConnectionError

from .errors import RESET_CANCELLED, RESET_REFUSED, ConnectionClosed, StreamReset
from .interface import Stream
from .settings import TransportSettings
from .stream import QuicStream

log = logging.getLogger("mesh_llm.mesh")

_MAX_PEER_STREAM_GAP = 4 * 1024  # how many peer stream ids a new one may skip


class PeerStreamIds:
    """Which bidirectional stream ids the peer may still open (pure bookkeeping).

    A peer's streams open in id order, but their first bytes may arrive out of order: ids
    skipped over stay openable (up to a bound), an id seen before never is again."""

    def __init__(self, is_client: bool) -> None:
        self._peer_bit = 1 if is_client else 0
        self._next = self._peer_bit  # next peer-initiated bidi stream id
        self._gap: set[int] = set()

    def is_new(self, stream_id: int) -> bool:
        """True once for each id the peer may open; False for ours, unidirectional ones,
        reused ones and ones too far ahead."""
        if stream_id & 2:  # unidirectional: not part of our protocol
            return False
        if stream_id & 1 != self._peer_bit:
            return False  # ours, already forgotten
        if stream_id >= self._next:
            if (stream_id - self._next) // 4 > _MAX_PEER_STREAM_GAP:
                return False
            self._gap.update(range(self._next, stream_id, 4))
            self._next = stream_id + 4
            return True
        if stream_id in self._gap:
            self._gap.discard(stream_id)
            return True
        return False


class StreamSet:
    """The open streams of one connection, and what they call on it."""

    def __init__(
        self,
        quic: Qh3Connection,
        settings: TransportSettings,
        loop: asyncio.AbstractEventLoop,
        *,
        is_client: bool,
        transmit_soon: Callable[[], None],
        transmit_corked: Callable[[], None],
        label: str,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self._quic = quic
        self._transmit_soon = transmit_soon
        self._transmit_corked = transmit_corked
        self._label = label
        self._streams: dict[int, QuicStream] = {}
        self._blocked: set[QuicStream] = set()
        self._peer_ids = PeerStreamIds(is_client)
        self._closed = False

    def __repr__(self) -> str:
        return self._label

    def ids(self) -> list[int]:
        return list(self._streams)

    def open(self, stream_id: int) -> QuicStream:
        """The stream for an id we just opened."""
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    def handle(self, event: events.QuicEvent,
               on_stream: Callable[[Stream], None] | None) -> None:
        """A stream event from qh3; a new peer stream goes to `on_stream` first."""
        if isinstance(event, events.StreamDataReceived):
            self._data_received(event, on_stream)
        elif isinstance(event, events.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.peer_reset(event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.peer_stopped_reading(event.error_code)

    def _data_received(self, event: events.StreamDataReceived,
                       on_stream: Callable[[Stream], None] | None) -> None:
        if self._closed:
            return
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            if not self._peer_ids.is_new(stream_id):
                return  # a stream we already closed, or one we never use (unidirectional)
            stream = self.open(stream_id)
            if on_stream is None:
                stream.abort(RESET_REFUSED)
                return
            try:
                on_stream(stream)
            except Exception:
                log.exception("%r: stream handler failed", self)
                stream.abort(RESET_REFUSED)
                return
        try:
            stream.feed(event.data, event.end_stream)
        except Exception:
            log.exception("%r: stream %d receiver failed; resetting it", self, stream_id)
            stream.abort(RESET_CANCELLED)

    def connection_lost(self, exc: BaseException) -> None:
        """Every stream fails with `exc`; later calls are no-ops (sends raise)."""
        self._closed = True
        for stream in list(self._streams.values()):
            stream.connection_lost(exc)
        self._streams.clear()
        self._blocked.clear()

    def check_blocked(self) -> None:
        """Release writers whose stream has room again (or has died)."""
        low = self.settings.send_low_water
        for stream in list(self._blocked):
            if stream.write_failed or self.unsent(stream.stream_id) <= low:
                stream.release_writers()

    @property
    def any_blocked(self) -> bool:
        return bool(self._blocked)

    # ---- stream.StreamOwner

    def send(self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool,
             more: bool = False) -> None:
        if self._closed:
            raise ConnectionClosed(f"{self!r} is closed")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=fin)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            raise StreamReset(f"stream {stream_id}: cannot send: {err}") from None
        if more and not fin and self.unsent(stream_id) < self.settings.cork_max_bytes:
            self._transmit_corked()
        else:
            self._transmit_soon()

    def unsent(self, stream_id: int) -> int:
        if self._closed:
            return 0
        try:
            return self._quic.get_send_buffer_size(stream_id)
        except (QuicConnectionError, ValueError):
            return 0

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self._closed:
            return
        try:
            self._quic.reset_stream(stream_id, code)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            log.debug("%r: reset of stream %d skipped: %s", self, stream_id, err)
        self._transmit_soon()

    def stop_stream(self, stream_id: int, code: int) -> None:
        if self._closed:
            return
        try:
            self._quic.stop_stream(stream_id, code)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            log.debug("%r: stop of stream %d skipped: %s", self, stream_id, err)
        self._transmit_soon()

    def watch_writable(self, stream: QuicStream, check_now: bool) -> None:
        self._blocked.add(stream)
        if check_now:
            self.check_blocked()

    def unwatch_writable(self, stream: QuicStream) -> None:
        self._blocked.discard(stream)

    def forget(self, stream: QuicStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        self._blocked.discard(stream)

    def run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("%r: writable callback failed", self)
