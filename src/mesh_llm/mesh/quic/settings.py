"""The QUIC layer's timers and limits, and the constants both ends must agree on."""

from __future__ import annotations

from dataclasses import dataclass

ALPN = "mesh-llm/1"
MiB = 1024 * 1024
CID_LENGTH = 8  # every connection id we issue; the router parses headers with it
MIN_INITIAL_DATAGRAM = 1200  # RFC 9000: a client's Initial is padded to at least this
# The ACK of up to ACK_HOLD_PACKETS packets may wait ACK_HOLD_S for a packet of ours to
# carry it: qh3 would send an ACK-only packet at once (or after 1 ms for a lone one), so a
# token stream, or a split's request and reply per token, would cost both ends, and every
# hop between, an extra packet and wake-up per token. Below the 25 ms max_ack_delay that qh3
# advertises, so the peer's loss timers are unaffected; a bulk transfer (more packets) is
# acknowledged as qh3 decides, which keeps its congestion window growing.
ACK_HOLD_S = 0.02
ACK_HOLD_PACKETS = 8


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
    # Bytes written as part of a message still being written (`write_nowait(more=True)`)
    # wait up to cork_s, or until cork_max_bytes are unsent, for the rest: a message the
    # writer hands over in pieces then leaves in one transmit instead of one per piece.
    cork_s: float = 0.001
    cork_max_bytes: int = 64 * 1024
