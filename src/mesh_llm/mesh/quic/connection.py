"""One QUIC connection: events in, state out.

QUIC events (from datagrams the router delivers, or from a timer) become stream buffers,
stream callbacks and the connection's own state (connected, closed and why); application
calls (open a stream, write, close) become qh3 calls plus a transmit. When it wakes on its
own is `timers.ConnectionTimers`; what qh3 does not expose publicly goes through
`qh3_adapter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from qh3.quic import events
from qh3.quic.connection import QuicConnection as Qh3Connection
from qh3.quic.connection import QuicConnectionError

from . import qh3_adapter
from .errors import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    ConnectionClosed,
    TransportError,
)
from .interface import Connection, Stream
from .settings import ALPN, TransportSettings
from .streams import StreamSet
from .timers import ConnectionTimers

log = logging.getLogger("mesh_llm.mesh")

_STREAM_EVENTS = (events.StreamDataReceived, events.StreamReset, events.StopSendingReceived)


class Router(Protocol):
    """The endpoint, as a connection sees it: where its datagrams and ids go."""

    def register(self, cid: bytes, conn: QuicConnection) -> None: ...

    def unregister(self, cid: bytes, conn: QuicConnection) -> None: ...

    def send_many(self, datagrams: list[bytes], addr: Any) -> None: ...

    def forget(self, conn: QuicConnection) -> None: ...


class QuicConnection:
    """One QUIC connection (see `interface.Connection` for the contract)."""

    def __init__(
        self,
        router: Router,
        settings: TransportSettings,
        quic: Qh3Connection,
        addr: Any,
        *,
        is_client: bool,
        server_cert_der: bytes | None,
    ) -> None:
        self._router = router
        self._quic = quic
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self.remote_address: tuple[str, int] = (str(addr[0]), int(addr[1]))
        self.path_address = self.remote_address  # where the peer is now (`_follow`)
        self.is_client = is_client
        self._server_cert_der = server_cert_der
        self.on_stream: Callable[[Stream], None] | None = None
        self._close_callbacks: list[Callable[[Connection], None]] = []
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._closed = asyncio.Event()
        self._finalized = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_peer = False
        self._ping_ids = itertools.count(1)
        self._ping_waiters: dict[int, asyncio.Future[bool]] = {}
        self._timers = ConnectionTimers(
            self._loop, transmit=self._transmit, on_deadline=self._deadline,
            keepalive=self._keepalive, keepalive_s=settings.keepalive_s,
            cork_s=settings.cork_s,
        )
        self._streams = StreamSet(quic, settings, self._loop, is_client=is_client,
                                  transmit_soon=self._timers.transmit_soon,
                                  transmit_corked=self._timers.transmit_corked,
                                  label=repr(self))
        if not is_client:
            self._timers.later(settings.handshake_timeout_s, self._handshake_expired)

    def __repr__(self) -> str:
        host, port = self.remote_address
        side = "to" if self.is_client else "from"
        return f"<Connection {side} {host}:{port}>"

    # ---- state

    @property
    def is_connected(self) -> bool:
        return self._connected.done() and not self._connected.cancelled() \
            and self._connected.exception() is None and not self._closed.is_set()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_connected(self) -> None:
        await asyncio.shield(self._connected)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def add_close_callback(self, callback: Callable[[Connection], None]) -> None:
        """`callback(conn)` once the connection is closed (now, if it already is)."""
        if self._closed.is_set():
            self._loop.call_soon(callback, self)
        else:
            self._close_callbacks.append(callback)

    @property
    def rtt_ms(self) -> float | None:
        """QUIC's smoothed round-trip time (from its loss recovery), once it has one."""
        srtt = qh3_adapter.smoothed_rtt(self._quic)
        return None if srtt is None else srtt * 1000.0

    @property
    def server_cert_fingerprint(self) -> bytes:
        """SHA-256 of the server-side TLS certificate (ours or the peer's) for auth binding."""
        der = self._server_cert_der
        if der is None:
            peer = self._quic.get_peercert()
            der = peer.public_bytes() if peer is not None else b""
        return hashlib.sha256(der).digest()

    def stream_ids(self) -> list[int]:
        """The ids of the streams still open on this connection (either direction)."""
        return self._streams.ids()

    # ---- application calls

    async def open_stream(self, timeout: float = 10.0) -> Stream:
        """A new bidirectional stream; the peer learns of it with the first byte written.

        Waits (up to `timeout`) while the peer's concurrent-stream limit is reached."""
        await self.wait_connected()
        try:
            async with asyncio.timeout(timeout):
                while not qh3_adapter.can_open_bidi_stream(self._quic):
                    if self._closed.is_set():
                        break
                    waiter = self._loop.create_future()
                    self._credit_waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TransportError(f"{self!r}: peer allowed no new stream within "
                                 f"{timeout:g} s") from None
        if self._closed.is_set():
            raise ConnectionClosed(f"{self!r} is closed")
        try:
            stream_id = qh3_adapter.open_bidi_stream(self._quic)
        except (QuicConnectionError, ValueError) as err:
            raise TransportError(f"{self!r}: cannot open a stream: {err}") from None
        return self._streams.open(stream_id)

    async def ping(self, timeout: float) -> bool:
        """True if the peer acknowledges a PING within `timeout` s: its end of this
        connection is alive (a peer that lost the connection drops the packet)."""
        if self._closed.is_set() or not self._connected.done():
            return False
        uid = next(self._ping_ids)
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._ping_waiters[uid] = waiter
        try:
            self._quic.send_ping(uid)
            self._transmit()
            async with asyncio.timeout(timeout):
                return await waiter
        except (TimeoutError, QuicConnectionError, AssertionError):
            return False
        finally:
            self._ping_waiters.pop(uid, None)

    def flush(self) -> None:
        """Send whatever is queued now instead of at the end of this loop pass."""
        if not self._closed.is_set():
            self._transmit()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send CONNECTION_CLOSE with an application `code`; streams fail right away."""
        if self._closed.is_set():
            return
        with contextlib.suppress(QuicConnectionError):
            self._quic.close(error_code=code, frame_type=None, reason_phrase=reason[:200])
        self._transmit()
        self._mark_closed(code, reason, by_peer=False)
        self._timers.later(self._settings.closing_linger_s, self.finalize)

    def abort(self) -> None:
        """Drop the connection without telling the peer (for tests of abrupt loss)."""
        self._mark_closed(CLOSE_NORMAL, "aborted", by_peer=False)
        self.finalize()

    # ---- events in: from the router, the timers and qh3

    def start_client(self, addr: Any) -> None:
        """Send the client's Initial."""
        self._quic.connect(addr, now=self._loop.time())
        self._transmit()

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        if self._finalized:
            return
        now = self._loop.time()
        self._timers.received(len(datagrams), now)
        try:
            if len(datagrams) == 1:
                self._quic.receive_datagram(datagrams[0], addr, now=now)
            else:
                self._quic.receive_many_datagrams(datagrams, addr, now=now)
        except QuicConnectionError as err:
            self._fail("QUIC error", err)
            return
        self._process_events()
        if not self._closed.is_set():
            self._check_ended()
        if self._credit_waiters:
            self._wake_credit_waiters()
        held = self._waiting_ack()
        if held is not None:
            self._timers.rearm(held)
        else:
            self._transmit()

    def _follow(self, addr: Any) -> None:
        """QUIC follows a peer whose NAT moved it to a new address (same connection ids):
        `path_address` names where our packets go now (`remote_address` stays the one the
        connection began with)."""
        if isinstance(addr, tuple) and len(addr) >= 2:
            now = (str(addr[0]), int(addr[1]))
            if now != self.path_address:
                self.path_address = now

    def _waiting_ack(self) -> tuple[str, float] | None:
        """qh3's next deadline, when it is an ACK that may wait instead of being sent now.

        After a few packets, with nothing of ours to send, qh3 would send an ACK-only
        packet at once. In a request/response exchange (a split's decode step) the reply or
        the next request carries it a few milliseconds later instead: without the extra
        packet neither end, nor anything between, wakes up while llama.cpp computes."""
        if not self.is_connected or not self._timers.ack_may_wait():
            return None
        if self._quic.get_send_buffer_size() != 0:  # stream data queued: send it now
            return None
        if qh3_adapter.bytes_in_flight(self._quic) != 0:  # a loss to repair: no waiting
            return None
        timer = qh3_adapter.next_timer(self._quic)
        return timer if timer is not None and timer[0] == "ack_application" else None

    def stillborn(self) -> bool:
        """An accepted "Initial" that did not decrypt (random bytes that happen to parse):
        worth forgetting now rather than holding until the handshake timeout."""
        if self.is_client or self._connected.done():
            return False
        return not qh3_adapter.authenticated_packet_seen(self._quic)

    def _deadline(self, now: float) -> None:
        try:
            self._quic.handle_timer(now=now)
        except QuicConnectionError as err:
            self._fail("QUIC timer error", err)
            return
        self._process_events()
        self._transmit()

    def _keepalive(self) -> None:
        if self._closed.is_set():
            return
        try:
            self._quic.send_ping(next(self._ping_ids))
        except (QuicConnectionError, AssertionError) as err:
            log.debug("%r: keepalive skipped: %s", self, err)
        self._transmit()
        self._timers.restart_keepalive()

    def _handshake_expired(self) -> None:
        if not self.is_connected and not self.is_closed:
            log.info("%r: QUIC handshake timed out", self)
            self.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")

    def _check_ended(self) -> None:
        # qh3 reports a peer's CONNECTION_CLOSE as an event only after the draining period
        # (3 PTO); the close itself is known at once. Report it now: goodbyes and
        # duplicate resolution should not wait.
        close_event = qh3_adapter.pending_close(self._quic)
        if close_event is not None:
            self._mark_closed(close_event.error_code, close_event.reason_phrase, by_peer=True)
            self._timers.later(self._settings.closing_linger_s, self.finalize)

    def _process_events(self) -> None:
        quic = self._quic
        event = quic.next_event()
        while event is not None:
            if isinstance(event, _STREAM_EVENTS):
                self._streams.handle(event, self.on_stream)
            elif isinstance(event, events.HandshakeCompleted):
                self._on_handshake(event)
            elif isinstance(event, events.ConnectionIdIssued):
                self._router.register(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self._router.unregister(event.connection_id, self)
            elif isinstance(event, events.PingAcknowledged):
                waiter = self._ping_waiters.pop(event.uid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(True)
            elif isinstance(event, events.ConnectionTerminated):
                self._on_terminated(event)
                return
            event = quic.next_event()

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        if event.alpn_protocol != ALPN:
            log.info("%r: peer speaks %r, not %r", self, event.alpn_protocol, ALPN)
            self.close(CLOSE_PROTOCOL_ERROR, "wrong ALPN")
            return
        if not self._connected.done():
            self._connected.set_result(None)
        if not self._closed.is_set():
            self._timers.restart_keepalive()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if not self._closed.is_set():
            log.debug("%r: terminated by peer: code %s %r", self, event.error_code,
                      event.reason_phrase)
            self._mark_closed(event.error_code, event.reason_phrase, by_peer=True)
        self.finalize()

    # ---- state out

    def _transmit(self) -> None:
        self._timers.transmitting()
        if self._finalized:
            return
        try:
            datagrams = qh3_adapter.datagrams_to_send(self._quic, self._loop.time())
        except QuicConnectionError as err:
            self._fail("QUIC error while sending", err)
            return
        if datagrams:
            self._timers.sent()
            batch: list[bytes] = []
            batch_addr: Any = None
            for data, addr in datagrams:
                if batch and addr != batch_addr:
                    self._router.send_many(batch, batch_addr)
                    batch = []
                batch.append(data)
                batch_addr = addr
            self._router.send_many(batch, batch_addr)
            self._follow(batch_addr)
        self._timers.rearm(qh3_adapter.next_timer(self._quic))
        if self._streams.any_blocked:
            self._streams.check_blocked()

    def _wake_credit_waiters(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, what: str, err: QuicConnectionError) -> None:
        log.info("%r: %s: %s", self, what, err)
        self._mark_closed(CLOSE_PROTOCOL_ERROR, str(err), by_peer=False)
        self.finalize()

    def _mark_closed(self, code: int, reason: str, *, by_peer: bool) -> None:
        if self._closed.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self.closed_by_peer = by_peer
        self._closed.set()
        if not self._connected.done():
            self._connected.set_exception(
                ConnectionClosed(f"{self!r} closed during handshake: {reason or code}")
            )
            self._connected.exception()  # mark retrieved: nobody may be waiting
        exc = ConnectionClosed(f"{self!r} closed ({reason or code})")
        self._streams.connection_lost(exc)
        self._wake_credit_waiters()
        for waiter in self._ping_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("%r: close callback failed", self)

    def finalize(self) -> None:
        """Forget the connection: timers off, ids out of the router."""
        if self._finalized:
            return
        self._finalized = True
        self._timers.stop()
        self._router.forget(self)
