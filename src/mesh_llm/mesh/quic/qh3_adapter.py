"""Every use of qh3's private or undocumented parts, in one place.

Checked against qh3 2.1.0 (`pip show qh3`). On a qh3 upgrade, read this module against the
new release and run tests/mesh/test_quic_adapter.py, which fails when one of these stops
reading what it should. Outside this module the QUIC layer uses only qh3's public API
(QuicConnection's methods, QuicConfiguration, the event classes, qh3.quic.packet).

Where a private attribute may be missing, the accessors below degrade to what qh3's public
API alone would give (no ACK hold, no stream-credit wait, no RTT), never to an exception
in the datagram path. The two imports are required: without them there is no router.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from qh3.quic import events
from qh3.quic.connection import QuicConnection as Qh3Connection
from qh3.quic.connection import QuicConnectionError
from qh3.quic.packet import QuicErrorCode

try:
    # The header parser qh3's own server routes with (qh3/asyncio/server.py), and the
    # batched UDP transport (recvmmsg/GRO receives, GSO sends) its connect() uses.
    from qh3._hazmat import pull_quic_header
    from qh3.asyncio._transport import create_optimized_datagram_transport
except ImportError as err:  # pragma: no cover - depends on the installed qh3
    raise ImportError(
        f"mesh-llm needs qh3 2.1 (pull_quic_header and the batched UDP transport): {err}; "
        "install it with `pip install 'qh3>=2.1'`"
    ) from err

__all__ = [
    "BatchedDatagramProtocol",
    "QuicHeader",
    "authenticated_packet_seen",
    "bytes_in_flight",
    "can_open_bidi_stream",
    "datagrams_to_send",
    "next_timer",
    "open_bidi_stream",
    "open_udp",
    "parse_header",
    "pending_close",
    "smoothed_rtt",
]


class _QuietPeerClose(logging.Filter):
    """qh3 logs every CONNECTION_CLOSE from a peer as a warning; for us that is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Native peer close")


logging.getLogger("quic").addFilter(_QuietPeerClose())  # qh3's logger name, and its text


class QuicHeader(NamedTuple):
    version: int | None
    packet_type: int  # a qh3.quic.packet.QuicPacketType value
    destination_cid: bytes


def parse_header(data: bytes, cid_length: int) -> QuicHeader | None:
    """The routing fields of a datagram's first packet; None if it is not QUIC."""
    try:
        header = pull_quic_header(data, 0, cid_length)
    except ValueError:
        return None
    return QuicHeader(header[0], header[1], header[3])


class BatchedDatagramProtocol(asyncio.DatagramProtocol):
    """A datagram protocol that takes qh3's batched callbacks.

    qh3's transport calls `datagrams_received(list, addr)` when the protocol has one (an
    undocumented hook) and offers `sendto_many` (GSO); a plain asyncio transport (qh3 falls
    back to one off Linux) gives neither, and `send_many` loops over `sendto` instead."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._sendto_many: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sendto_many = getattr(transport, "sendto_many", None)

    @property
    def batched_sends(self) -> bool:
        return self._sendto_many is not None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        raise NotImplementedError

    def send_many(self, datagrams: list[bytes], addr: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._sendto_many is not None:
            self._sendto_many(datagrams, addr)
        else:
            for data in datagrams:
                transport.sendto(data, addr)


async def open_udp(protocol: BatchedDatagramProtocol, sock: Any) -> None:
    """Run `protocol` on the bound, non-blocking UDP socket `sock` with batched I/O."""
    await create_optimized_datagram_transport(
        asyncio.get_running_loop(), lambda: protocol, sock=sock
    )


def _core(quic: Qh3Connection) -> Any:
    return getattr(quic, "_core", None)  # the native connection; None before the handshake


def smoothed_rtt(quic: Qh3Connection) -> float | None:
    """QUIC's smoothed round-trip time in seconds (its loss recovery's), if measured yet."""
    srtt = getattr(_core(quic), "smoothed_rtt", None)
    return srtt if isinstance(srtt, float) and srtt > 0 else None


def bytes_in_flight(quic: Qh3Connection) -> int | None:
    """Bytes we sent that the peer has not acknowledged (its loss recovery's count), or None
    when this qh3 does not say."""
    value = getattr(_core(quic), "bytes_in_flight", None)
    return value if isinstance(value, int) else None


def can_open_bidi_stream(quic: Qh3Connection) -> bool:
    """Whether the peer's concurrent-stream limit allows one more bidirectional stream.

    Asking first matters: a refused open leaves qh3's stream ids out of sync."""
    # (peer's bidi limit, peer's uni limit, bidi opened, uni opened) in the native core.
    limits = getattr(_core(quic), "stream_limits", None)
    if not isinstance(limits, tuple) or len(limits) < 3:
        return True
    return bool(limits[2] < limits[0])


def open_bidi_stream(quic: Qh3Connection) -> int:
    """Open a bidirectional stream now and return its id (qh3 only opens one implicitly,
    at the first send, which is too late to learn its id)."""
    return int(quic._open_stream(is_unidirectional=False))


def datagrams_to_send(quic: Qh3Connection, now: float) -> list[tuple[bytes, Any]]:
    """What qh3's `datagrams_to_send` returns, straight from the native core.

    qh3's method re-parses every packet header it just built and copies each packet out
    (for a QUIC logger, even when there is none): ~4 µs a datagram, a quarter of a
    millisecond for each 73 KiB decode step a split sends. Without a logger that work is
    skipped; with one, or a core that is not there, qh3's own method runs."""
    core = _core(quic)
    poll = getattr(core, "poll_transmit", None)
    if poll is None or getattr(quic, "_quic_logger", True) is not None:
        return quic.datagrams_to_send(now=now)
    datagrams: list[tuple[bytes, Any]] = []
    try:
        while (transmit := poll(now)) is not None:
            datagrams.append((transmit[0], transmit[1]))
    except RuntimeError as err:  # as qh3's facade maps the core's errors
        raise QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(err)) from err
    return datagrams


def authenticated_packet_seen(quic: Qh3Connection) -> bool:
    """Whether any packet on this connection decrypted (False for random bytes that
    happened to parse as an Initial)."""
    core = _core(quic)
    return core is not None and bool(getattr(core, "received_authenticated_packet", True))


def next_timer(quic: Qh3Connection) -> tuple[str, float] | None:
    """qh3's next deadline as (kind, loop time); kind is "ack_application" for a pending
    ACK of application data, "" when this qh3 does not say."""
    core = _core(quic)
    timer = core.get_timer() if core is not None else None
    if isinstance(timer, tuple):
        return str(timer[0]), float(timer[1])
    at = quic.get_timer()
    return None if at is None else ("", at)


def pending_close(quic: Qh3Connection) -> events.ConnectionTerminated | None:
    """The connection's end as soon as qh3 knows it (a peer's CONNECTION_CLOSE, a protocol
    error); qh3 queues the ConnectionTerminated event only after the draining period."""
    close_event = getattr(quic, "_close_event", None)
    return close_event if isinstance(close_event, events.ConnectionTerminated) else None
