"""QUIC transport on qh3, behind a small interface: QuicTransport → Connection → Stream.

Why not qh3's `serve()`/`connect()`: `serve()` reads one datagram per callback through a
plain asyncio endpoint, and `connect()` gives each dial its own socket. Here one UDP socket
per node does both (the address peers see us dial from is the one we listen on), read and
written through qh3's batched transport (quinn-udp recvmmsg/GRO and GSO sends), with
datagrams routed to connections by destination connection id.

The data path is callback-driven (no task per stream): QUIC events are turned into stream
buffers or `Stream.set_receiver` callbacks, and sends are coalesced into one transmit per
event-loop pass. Writers are paused by the stream's not-yet-sent byte count
(`QuicConnection.get_send_buffer_size`), since qh3's own StreamWriter.drain() never waits.

TLS uses a throwaway self-signed certificate per transport and no certificate validation:
nodes authenticate each other above this layer (auth.py), binding that proof to the
server certificate's fingerprint so a relay in the middle cannot splice two TLS sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicPacketType, QuicProtocolVersion

try:  # the header parser qh3's own server uses; private, so keep a fallback
    from qh3._hazmat import pull_quic_header as _pull_quic_header
except ImportError:  # pragma: no cover - depends on the qh3 build
    _pull_quic_header = None

try:  # batched UDP I/O (recvmmsg/GRO, GSO) that qh3's connect() uses
    from qh3.asyncio._transport import create_optimized_datagram_transport
except ImportError:  # pragma: no cover - depends on the qh3 build
    create_optimized_datagram_transport = None

log = logging.getLogger("mesh_llm.mesh")


class _QuietPeerClose(logging.Filter):
    """qh3 logs every CONNECTION_CLOSE from a peer as a warning; for us that is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Native peer close")


logging.getLogger("quic").addFilter(_QuietPeerClose())

ALPN = "mesh-llm/1"
MiB = 1024 * 1024
CID_LENGTH = 8
_MIN_INITIAL_DATAGRAM = 1200
_MAX_PEER_STREAM_GAP = 4 * 1024
# A lone packet's ACK may wait this long for a second packet to share it (qh3 would send
# it after 1 ms, so a token stream costs both ends one extra packet per token). Below the
# 25 ms max_ack_delay that qh3 advertises, so the peer's loss timers are unaffected.
ACK_HOLD_S = 0.02

# Application error codes carried by CONNECTION_CLOSE / RESET_STREAM. qh3 reports transport
# errors (an idle timeout is code 1) in the same field, so ours live apart, at 0x4D00+.
CLOSE_NORMAL = 0
CLOSE_GOODBYE = 0x4D01
CLOSE_DUPLICATE = 0x4D02
CLOSE_AUTH_FAILED = 0x4D03
CLOSE_PROTOCOL_ERROR = 0x4D04
CLOSE_SHUTDOWN = 0x4D05
RESET_CANCELLED = 0x4D10
RESET_OVERFLOW = 0x4D11
RESET_REFUSED = 0x4D12


@dataclass(frozen=True)
class TransportSettings:
    """Timers and limits. Defaults are the seed's: keepalive 10 s, idle timeout 120 s."""

    keepalive_s: float = 10.0
    idle_timeout_s: float = 120.0
    handshake_timeout_s: float = 10.0
    stream_window: int = 4 * MiB  # per-stream receive flow-control window
    connection_window: int = 16 * MiB  # connection-wide receive window
    send_high_water: int = 1 * MiB  # writers pause above this many unsent bytes
    send_low_water: int = 256 * 1024  # ... and resume at or below this
    max_recv_buffer: int = 32 * MiB  # unread bytes per stream before it is reset
    max_connections: int = 512
    closing_linger_s: float = 3.0  # keep a closed connection's ids to answer stragglers
    socket_buffer: int = 4 * MiB


class TransportError(ConnectionError):
    """Dial, bind or stream-open failures."""


class StreamReset(ConnectionError):
    """The peer reset the stream (or stopped reading it); `code` is its error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(ConnectionError):
    """The connection under a stream is gone."""


# ---------------------------------------------------------------------------- TLS


def make_self_signed_cert(common_name: str = "mesh-llm") -> tuple[bytes, bytes]:
    """A throwaway (PEM certificate, PEM PKCS#8 key) pair on P-256 for the QUIC handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _base_config(settings: TransportSettings, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=settings.idle_timeout_s,
        max_data=settings.connection_window,
        max_stream_data=settings.stream_window,
        connection_id_length=CID_LENGTH,
        verify_mode=ssl.CERT_NONE,
        verify_hostname=False,
    )


# ---------------------------------------------------------------------------- Stream


class Stream:
    """One bidirectional QUIC stream.

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
        "_conn",
        "_drain_waiters",
        "_eof",
        "_on_data",
        "_on_end",
        "_rbuf",
        "_read_closed",
        "_rexc",
        "_rwaiter",
        "_wexc",
        "_writable_cbs",
        "_write_closed",
        "stream_id",
    )

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
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
        return f"<Stream {self.stream_id} of {self._conn!r}>"

    @property
    def connection(self) -> Connection:
        return self._conn

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

    def at_eof(self) -> bool:
        """True once the peer finished and every byte was read."""
        return (self._eof or self._read_closed) and not self._rbuf

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
        self._rwaiter = self._conn._loop.create_future()
        try:
            await self._rwaiter
        finally:
            self._rwaiter = None

    def _wake_reader(self) -> None:
        waiter = self._rwaiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes, fin: bool) -> None:
        if self._read_closed or self._eof or self._rexc is not None:
            return
        if data:
            if self._on_data is not None:
                self._on_data(data)
            else:
                self._rbuf += data
                if len(self._rbuf) > self._conn._settings.max_recv_buffer:
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

    def _fire_end(self, exc: BaseException | None) -> None:
        cb, self._on_end = self._on_end, None
        if cb is not None:
            cb(exc)

    def _on_reset(self, code: int) -> None:
        if self._read_closed or self._eof or self._rexc is not None:
            return
        self._rexc = StreamReset(f"stream {self.stream_id} reset by peer (code {code})", code)
        self._fire_end(self._rexc)
        self._wake_reader()
        self._maybe_forget()

    def _on_stop_sending(self, code: int) -> None:
        if self._write_closed:
            return
        self._wexc = StreamReset(f"peer stopped reading stream {self.stream_id} "
                                 f"(code {code})", code)
        self._write_closed = True
        self._conn._reset_stream(self.stream_id, code)
        self._release_writers()
        self._maybe_forget()

    def _on_connection_lost(self, exc: BaseException) -> None:
        if self._rexc is None and not self._eof and not self._read_closed:
            self._rexc = exc
            self._fire_end(exc)
        if self._wexc is None:
            self._wexc = exc
        self._write_closed = True
        self._wake_reader()
        self._release_writers()

    # ---- writing

    def write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue `data` now; False means above the high-water mark: pause the source."""
        if self._wexc is not None:
            raise self._wexc
        if self._write_closed:
            raise ConnectionError(f"stream {self.stream_id} is closed for writing")
        conn = self._conn
        if data:
            conn._send(self.stream_id, data, False)
        return conn._unsent(self.stream_id) <= conn._settings.send_high_water

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`, then wait while the stream has too much unsent data."""
        if not self.write_nowait(data):
            await self.drain()

    async def drain(self) -> None:
        """Wait until unsent bytes fall to the low-water mark (raises if the stream died)."""
        conn = self._conn
        while True:
            if self._wexc is not None:
                raise self._wexc
            if conn._unsent(self.stream_id) <= conn._settings.send_low_water:
                return
            waiter = conn._loop.create_future()
            self._drain_waiters.append(waiter)
            conn._blocked.add(self)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._drain_waiters.remove(waiter)

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when unsent bytes fall to the low-water mark (or the
        stream dies: then writes raise)."""
        self._writable_cbs.append(callback)
        self._conn._blocked.add(self)
        self._conn._check_blocked()

    def _release_writers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        cbs, self._writable_cbs = self._writable_cbs, []
        for cb in cbs:
            self._conn._run_callback(cb)
        self._conn._blocked.discard(self)

    def write_eof(self) -> None:
        """Half-close: send FIN after the queued bytes."""
        if self._write_closed:
            return
        self._write_closed = True
        self._conn._send(self.stream_id, b"", True)
        self._maybe_forget()

    def close(self) -> None:
        """FIN our side (queued bytes still go out) and stop reading the peer's side."""
        self.write_eof()
        if not (self._eof or self._read_closed or self._rexc is not None):
            self._read_closed = True
            self._conn._stop_stream(self.stream_id, RESET_CANCELLED)
        self._rbuf.clear()
        self._on_data = None
        self._on_end = None
        self._wake_reader()
        self._maybe_forget()

    def abort(self, code: int = RESET_CANCELLED) -> None:
        """Reset both directions at once; queued bytes are dropped."""
        if not self._write_closed:
            self._write_closed = True
            self._conn._reset_stream(self.stream_id, code)
        self._wexc = self._wexc or StreamReset(f"stream {self.stream_id} aborted", code)
        if not (self._eof or self._read_closed or self._rexc is not None):
            self._read_closed = True
            self._conn._stop_stream(self.stream_id, code)
        self._rbuf.clear()
        self._on_data = None
        self._on_end = None
        self._wake_reader()
        self._release_writers()
        self._maybe_forget()

    @property
    def closed(self) -> bool:
        """Both directions are finished."""
        return self._write_closed and (self._eof or self._read_closed or self._rexc is not None)

    def _maybe_forget(self) -> None:
        if self.closed:
            self._conn._forget(self)


# ---------------------------------------------------------------------------- Connection


class Connection:
    """One QUIC connection. Peer-opened streams go to `on_stream(stream)`; the closed event,
    `close_code`/`close_reason` and `on_close` callbacks report its end."""

    def __init__(
        self,
        endpoint: _Endpoint,
        quic: QuicConnection,
        addr: Any,
        *,
        is_client: bool,
        server_cert_der: bytes | None,
    ) -> None:
        self._endpoint = endpoint
        self._quic = quic
        self._settings = endpoint.settings
        self._loop = asyncio.get_running_loop()
        self.remote_address: tuple[str, int] = (str(addr[0]), int(addr[1]))
        self.is_client = is_client
        self._server_cert_der = server_cert_der
        self.on_stream: Callable[[Stream], None] | None = None
        self._close_callbacks: list[Callable[[Connection], None]] = []
        self._streams: dict[int, Stream] = {}
        self._peer_next = 1 if is_client else 0  # next peer-initiated bidi stream id
        self._peer_gap: set[int] = set()
        self._blocked: set[Stream] = set()
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._cids: set[bytes] = set()
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._closed = asyncio.Event()
        self._finalized = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_peer = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._unacked = 0  # datagrams received since we last sent one
        self._unacked_since = 0.0
        self._transmit_handle: asyncio.Handle | None = None
        self._aux_timers: list[asyncio.TimerHandle] = []
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._ping_ids = itertools.count(1)
        self._pings: dict[int, float] = {}
        self._ping_waiters: dict[int, asyncio.Future[bool]] = {}
        self._ping_rtt: float | None = None
        self.created_at = self._loop.time()

    def __repr__(self) -> str:
        host, port = self.remote_address
        side = "to" if self.is_client else "from"
        return f"<Connection {side} {host}:{port}>"

    # ---- public

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
        """Smoothed round-trip time from QUIC's recovery, else from our keepalive pings."""
        core = getattr(self._quic, "_core", None)
        srtt = getattr(core, "smoothed_rtt", None) if core is not None else None
        if isinstance(srtt, float) and srtt > 0:
            return srtt * 1000.0
        return None if self._ping_rtt is None else self._ping_rtt * 1000.0

    @property
    def server_cert_fingerprint(self) -> bytes:
        """SHA-256 of the server-side TLS certificate (ours or the peer's) for auth binding."""
        der = self._server_cert_der
        if der is None:
            peer = self._quic.get_peercert()
            der = peer.public_bytes() if peer is not None else b""
        return hashlib.sha256(der).digest()

    async def open_stream(self, timeout: float = 10.0) -> Stream:
        """A new bidirectional stream; the peer learns of it with the first byte written.

        Waits (up to `timeout`) while the peer's concurrent-stream limit is reached."""
        await self.wait_connected()
        try:
            async with asyncio.timeout(timeout):
                while not self._can_open_stream():
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
            stream_id = self._quic._open_stream(is_unidirectional=False)
        except (QuicConnectionError, ValueError) as err:
            raise TransportError(f"{self!r}: cannot open a stream: {err}") from None
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    async def ping(self, timeout: float) -> bool:
        """True if the peer acknowledges a PING within `timeout` s: its end of this
        connection is alive (a peer that lost the connection drops the packet)."""
        if self._closed.is_set() or not self._connected.done():
            return False
        uid = next(self._ping_ids)
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._ping_waiters[uid] = waiter
        self._pings[uid] = self._loop.time()
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
        self._aux_timers.append(
            self._loop.call_later(self._settings.closing_linger_s, self._finalize)
        )

    def abort(self) -> None:
        """Drop the connection without telling the peer (for tests of abrupt loss)."""
        self._mark_closed(CLOSE_NORMAL, "aborted", by_peer=False)
        self._finalize()

    def _can_open_stream(self) -> bool:
        # (peer's bidi limit, peer's uni limit, bidi opened, uni opened) in qh3 2.1's core.
        # Asking first matters: a refused open_stream leaves qh3's stream ids out of sync.
        core = getattr(self._quic, "_core", None)
        limits = getattr(core, "stream_limits", None)
        if not isinstance(limits, tuple) or len(limits) < 3:
            return True
        return bool(limits[2] < limits[0])

    def _wake_credit_waiters(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _stillborn(self) -> bool:
        if self.is_client or self._connected.done():
            return False
        core = getattr(self._quic, "_core", None)
        return core is None or not getattr(core, "received_authenticated_packet", True)

    # ---- called by the endpoint

    def _start_client(self, addr: Any) -> None:
        self._quic.connect(addr, now=self._loop.time())
        self._transmit()

    def _datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        if self._finalized:
            return
        now = self._loop.time()
        if not self._unacked:
            self._unacked_since = now
        self._unacked += len(datagrams)
        try:
            if len(datagrams) == 1:
                self._quic.receive_datagram(datagrams[0], addr, now=now)
            else:
                self._quic.receive_many_datagrams(datagrams, addr, now=now)
        except QuicConnectionError as err:
            log.info("%r: QUIC error: %s", self, err)
            self._mark_closed(CLOSE_PROTOCOL_ERROR, str(err), by_peer=False)
            self._finalize()
            return
        self._process_events()
        if not self._closed.is_set():
            self._check_peer_close()
        if self._credit_waiters:
            self._wake_credit_waiters()
        self._transmit()

    def _check_peer_close(self) -> None:
        # qh3 reports a peer's CONNECTION_CLOSE as an event only after the draining period
        # (3 PTO); the close itself is known at once. Report it now: goodbyes and
        # duplicate resolution should not wait.
        close_event = getattr(self._quic, "_close_event", None)
        if isinstance(close_event, events.ConnectionTerminated):
            self._mark_closed(close_event.error_code, close_event.reason_phrase, by_peer=True)
            self._aux_timers.append(
                self._loop.call_later(self._settings.closing_linger_s, self._finalize)
            )

    # ---- QUIC plumbing

    def _process_events(self) -> None:
        quic = self._quic
        event = quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is events.StreamDataReceived:
                self._on_stream_data(event)
            elif kind is events.StreamReset:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_reset(event.error_code)
            elif kind is events.StopSendingReceived:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_stop_sending(event.error_code)
            elif kind is events.HandshakeCompleted:
                self._on_handshake(event)
            elif kind is events.ConnectionIdIssued:
                self._cids.add(event.connection_id)
                self._endpoint.register(event.connection_id, self)
            elif kind is events.ConnectionIdRetired:
                self._cids.discard(event.connection_id)
                self._endpoint.unregister(event.connection_id, self)
            elif kind is events.PingAcknowledged:
                sent = self._pings.pop(event.uid, None)
                if sent is not None:
                    self._ping_rtt = self._loop.time() - sent
                waiter = self._ping_waiters.pop(event.uid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(True)
            elif kind is events.ConnectionTerminated:
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
        self._schedule_keepalive()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if not self._closed.is_set():
            log.debug("%r: terminated by peer: code %s %r", self, event.error_code,
                      event.reason_phrase)
            self._mark_closed(event.error_code, event.reason_phrase, by_peer=True)
        self._finalize()

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        if self._closed.is_set():
            return
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            if not self._is_new_peer_stream(stream_id):
                return  # a stream we already closed, or one we never use (unidirectional)
            stream = Stream(self, stream_id)
            self._streams[stream_id] = stream
            handler = self.on_stream
            if handler is None:
                stream.abort(RESET_REFUSED)
                return
            try:
                handler(stream)
            except Exception:
                log.exception("%r: stream handler failed", self)
                stream.abort(RESET_REFUSED)
                return
        try:
            stream._feed(event.data, event.end_stream)
        except Exception:
            log.exception("%r: stream %d receiver failed; resetting it", self, stream_id)
            stream.abort(RESET_CANCELLED)

    def _is_new_peer_stream(self, stream_id: int) -> bool:
        if stream_id & 2:  # unidirectional: not part of our protocol
            return False
        peer_bit = 1 if self.is_client else 0
        if stream_id & 1 != peer_bit:
            return False  # ours, already forgotten
        if stream_id >= self._peer_next:
            gap = (stream_id - self._peer_next) // 4
            if gap > _MAX_PEER_STREAM_GAP:
                return False
            self._peer_gap.update(range(self._peer_next, stream_id, 4))
            self._peer_next = stream_id + 4
            return True
        if stream_id in self._peer_gap:
            self._peer_gap.discard(stream_id)
            return True
        return False

    def _send(self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool) -> None:
        if self._closed.is_set():
            raise ConnectionClosed(f"{self!r} is closed")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=fin)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            raise StreamReset(f"stream {stream_id}: cannot send: {err}") from None
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def _unsent(self, stream_id: int) -> int:
        if self._closed.is_set():
            return 0
        try:
            return self._quic.get_send_buffer_size(stream_id)
        except (QuicConnectionError, ValueError):
            return 0

    def _reset_stream(self, stream_id: int, code: int) -> None:
        if self._closed.is_set():
            return
        try:
            self._quic.reset_stream(stream_id, code)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            log.debug("%r: reset of stream %d skipped: %s", self, stream_id, err)
        self._transmit_soon()

    def _stop_stream(self, stream_id: int, code: int) -> None:
        if self._closed.is_set():
            return
        try:
            self._quic.stop_stream(stream_id, code)
        except (QuicConnectionError, ValueError, AssertionError) as err:
            log.debug("%r: stop of stream %d skipped: %s", self, stream_id, err)
        self._transmit_soon()

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        self._blocked.discard(stream)

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None and not self._finalized:
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        handle, self._transmit_handle = self._transmit_handle, None
        if handle is not None:
            handle.cancel()  # no-op when we are that handle; avoids a second pass otherwise
        if self._finalized:
            return
        try:
            datagrams = self._quic.datagrams_to_send(now=self._loop.time())
        except QuicConnectionError as err:
            log.info("%r: QUIC error while sending: %s", self, err)
            self._mark_closed(CLOSE_PROTOCOL_ERROR, str(err), by_peer=False)
            self._finalize()
            return
        if datagrams:
            self._unacked = 0  # whatever we send carries the pending ACK
            batch: list[bytes] = []
            batch_addr: Any = None
            for data, addr in datagrams:
                if batch and addr != batch_addr:
                    self._endpoint.send_many(batch, batch_addr)
                    batch = []
                batch.append(data)
                batch_addr = addr
            self._endpoint.send_many(batch, batch_addr)
        timer_at = self._next_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at
        if self._blocked:
            self._check_blocked()

    def _next_timer(self) -> float | None:
        """qh3's next deadline, except that a lone packet's ACK is held (ACK_HOLD_S)."""
        core = getattr(self._quic, "_core", None)
        timer = core.get_timer() if core is not None else None
        if not isinstance(timer, tuple):
            return self._quic.get_timer()
        kind, at = timer
        if kind == "ack_application" and self._unacked == 1:
            return max(at, self._unacked_since + ACK_HOLD_S)
        return at

    def _handle_timer(self) -> None:
        self._timer = None
        if self._finalized:
            return
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer_at = None
        try:
            self._quic.handle_timer(now=now)
        except QuicConnectionError as err:
            log.info("%r: QUIC timer error: %s", self, err)
            self._mark_closed(CLOSE_PROTOCOL_ERROR, str(err), by_peer=False)
            self._finalize()
            return
        self._process_events()
        self._transmit()

    def _check_blocked(self) -> None:
        low = self._settings.send_low_water
        for stream in list(self._blocked):
            if stream._wexc is not None or self._unsent(stream.stream_id) <= low:
                stream._release_writers()

    def _schedule_keepalive(self) -> None:
        if self._settings.keepalive_s > 0 and not self._closed.is_set():
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            self._keepalive_handle = self._loop.call_later(
                self._settings.keepalive_s, self._keepalive
            )

    def _keepalive(self) -> None:
        if self._closed.is_set():
            return
        uid = next(self._ping_ids)
        if len(self._pings) > 8:
            self._pings.pop(next(iter(self._pings)))
        self._pings[uid] = self._loop.time()
        try:
            self._quic.send_ping(uid)
        except (QuicConnectionError, AssertionError) as err:
            log.debug("%r: keepalive skipped: %s", self, err)
        self._transmit()
        self._schedule_keepalive()

    def _run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("%r: writable callback failed", self)

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
        for stream in list(self._streams.values()):
            stream._on_connection_lost(exc)
        self._streams.clear()
        self._blocked.clear()
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

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        for handle in self._aux_timers:
            handle.cancel()
        self._aux_timers.clear()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        self._endpoint.forget(self)


# ---------------------------------------------------------------------------- Endpoint


class _Endpoint(asyncio.DatagramProtocol):
    """The UDP socket's protocol: routes datagrams to connections by destination CID."""

    def __init__(self, owner: QuicTransport) -> None:
        self.owner = owner
        self.settings = owner.settings
        self.transport: asyncio.DatagramTransport | None = None
        self._sendto_many: Callable[[list[bytes], Any], None] | None = None
        self._by_cid: dict[bytes, Connection] = {}
        self.connections: set[Connection] = set()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sendto_many = getattr(transport, "sendto_many", None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        current: Connection | None = None
        batch: list[bytes] = []
        for data in datagrams:
            conn = self._route(data, addr)
            if conn is not current:
                if current is not None and batch:
                    self._deliver(current, batch, addr)
                current, batch = conn, []
            if conn is not None:
                batch.append(data)
        if current is not None and batch:
            self._deliver(current, batch, addr)

    def _deliver(self, conn: Connection, batch: list[bytes], addr: Any) -> None:
        conn._datagrams_received(batch, addr)
        if conn._stillborn():
            # An "Initial" that did not decrypt (random bytes that happen to parse):
            # forget it now rather than hold state until the handshake timeout.
            conn.abort()

    def _route(self, data: bytes, addr: Any) -> Connection | None:
        try:
            header = _pull_quic_header(data, 0, CID_LENGTH)
        except ValueError:
            return None  # not QUIC: ignore
        conn = self._by_cid.get(header[3])
        if conn is not None:
            return conn
        # Unknown connection: only a full-size QUIC v1 Initial may open one. Other versions
        # are dropped rather than answered with version negotiation (every node speaks v1).
        if (
            header[1] == QuicPacketType.INITIAL
            and len(data) >= _MIN_INITIAL_DATAGRAM
            and header[0] == QuicProtocolVersion.VERSION_1
        ):
            return self.owner._accept(header[3], addr)
        return None

    def send_many(self, datagrams: list[bytes], addr: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._sendto_many is not None:
            self._sendto_many(datagrams, addr)
        else:
            for data in datagrams:
                transport.sendto(data, addr)

    def register(self, cid: bytes, conn: Connection) -> None:
        self._by_cid[cid] = conn

    def unregister(self, cid: bytes, conn: Connection) -> None:
        if self._by_cid.get(cid) is conn:
            del self._by_cid[cid]

    def forget(self, conn: Connection) -> None:
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]
        self.connections.discard(conn)


# ---------------------------------------------------------------------------- Transport


class QuicTransport:
    """A node's QUIC endpoint: one UDP socket that accepts and dials."""

    def __init__(
        self,
        settings: TransportSettings | None = None,
        *,
        on_connection: Callable[[Connection], None] | None = None,
    ) -> None:
        self.settings = settings or TransportSettings()
        self.on_connection = on_connection
        self._endpoint: _Endpoint | None = None
        self._server_config: QuicConfiguration | None = None
        self._cert_der = b""
        self._family = socket.AF_INET
        self.host = ""
        self.port = 0
        self.batched_io = False

    @property
    def connections(self) -> list[Connection]:
        return [] if self._endpoint is None else list(self._endpoint.connections)

    async def listen(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Bind the UDP socket and accept connections; returns the bound port."""
        if self._endpoint is not None:
            raise TransportError("transport is already bound")
        cert_pem, key_pem = make_self_signed_cert()
        config = _base_config(self.settings, is_client=False)
        config.load_cert_chain(cert_pem, key_pem)
        self._server_config = config
        self._cert_der = x509.load_pem_x509_certificate(cert_pem).public_bytes(
            serialization.Encoding.DER
        )
        await self._bind(host, port)
        return self.port

    async def _bind(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, self.settings.socket_buffer)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            failure = TransportError(f"cannot bind UDP {host}:{port}: {err.strerror or err}")
            failure.errno = err.errno  # so the caller can tell "in use" from "not ours"
            raise failure from None
        loop = asyncio.get_running_loop()
        endpoint = _Endpoint(self)
        if create_optimized_datagram_transport is not None and _pull_quic_header is not None:
            await create_optimized_datagram_transport(loop, lambda: endpoint, sock=sock)
            self.batched_io = True
        else:  # pragma: no cover - older qh3
            await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        self._endpoint = endpoint
        self._family = family
        self.host = host
        self.port = int(sock.getsockname()[1])

    def _accept(self, original_dcid: bytes, addr: Any) -> Connection | None:
        endpoint = self._endpoint
        if self._server_config is None or endpoint is None:
            return None
        if len(endpoint.connections) >= self.settings.max_connections:
            log.warning("refusing a QUIC connection from %s: %d connections open",
                        addr, len(endpoint.connections))
            return None
        quic = QuicConnection(
            configuration=self._server_config,
            original_destination_connection_id=original_dcid,
        )
        conn = Connection(endpoint, quic, addr, is_client=False, server_cert_der=self._cert_der)
        endpoint.connections.add(conn)
        endpoint.register(original_dcid, conn)
        endpoint.register(quic.host_cid, conn)
        conn._cids.update((original_dcid, quic.host_cid))
        self._arm_handshake_timeout(conn)
        if self.on_connection is not None:
            try:
                self.on_connection(conn)
            except Exception:
                log.exception("connection handler failed; dropping %r", conn)
                conn.close(CLOSE_PROTOCOL_ERROR, "internal error")
        return conn

    def _arm_handshake_timeout(self, conn: Connection) -> None:
        def expire() -> None:
            if not conn.is_connected and not conn.is_closed:
                log.info("%r: QUIC handshake timed out", conn)
                conn.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")

        conn._aux_timers.append(
            conn._loop.call_later(self.settings.handshake_timeout_s, expire)
        )

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> Connection:
        """Dial host:port and finish the QUIC handshake within `timeout` seconds."""
        if self._endpoint is None:
            await self._bind("127.0.0.1" if _is_loopback(host) else "0.0.0.0", 0)
        endpoint = self._endpoint
        assert endpoint is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, family=self._family,
                                               type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as err:
            raise TransportError(f"cannot resolve {host}:{port}: {err}") from None
        if not infos:
            raise TransportError(f"cannot resolve {host}:{port}")
        addr = infos[0][4]
        if self._family == socket.AF_INET6 and len(addr) == 2:  # pragma: no cover
            addr = ("::ffff:" + addr[0], addr[1], 0, 0)
        quic = QuicConnection(configuration=_base_config(self.settings, is_client=True))
        conn = Connection(endpoint, quic, addr, is_client=True, server_cert_der=None)
        endpoint.connections.add(conn)
        endpoint.register(quic.host_cid, conn)
        conn._cids.add(quic.host_cid)
        try:
            conn._start_client(addr)
            async with asyncio.timeout(timeout):
                await conn.wait_connected()
        except TimeoutError:
            conn.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")
            raise TransportError(f"no QUIC answer from {host}:{port} within {timeout:.1f} s") \
                from None
        except ConnectionError as err:
            conn.close(CLOSE_PROTOCOL_ERROR, "handshake failed")
            raise TransportError(f"QUIC handshake with {host}:{port} failed: {err}") from None
        except BaseException:
            conn.close(CLOSE_PROTOCOL_ERROR, "dial cancelled")
            raise
        return conn

    async def close(self, code: int = CLOSE_SHUTDOWN, reason: str = "shutdown") -> None:
        """Close every connection (CONNECTION_CLOSE is sent) and then the socket."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        for conn in list(endpoint.connections):
            conn.close(code, reason)  # sends CONNECTION_CLOSE right away
        self._shutdown()  # the UDP transport still flushes anything queued before closing
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(endpoint.lost)

    def abort(self) -> None:
        """Drop the socket and every connection without a word to peers (crash simulation)."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        for conn in list(endpoint.connections):
            conn.abort()
        self._shutdown()

    def _shutdown(self) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            return
        for conn in list(endpoint.connections):
            conn._finalize()
        if endpoint.transport is not None:
            endpoint.transport.close()
        self._endpoint = None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
