"""The QUIC layer's timers and limits, and the constants both ends must agree on."""

from __future__ import annotations

from dataclasses import dataclass

ALPN = "mesh-llm/1"
MiB = 1024 * 1024
CID_LENGTH = 8  # every connection id we issue; the router parses headers with it
MIN_INITIAL_DATAGRAM = 1200  # RFC 9000: a client's Initial is padded to at least this
# A lone packet's ACK may wait this long for a second packet to share it (qh3 would send
# it after 1 ms, so a token stream costs both ends one extra packet per token). Below the
# 25 ms max_ack_delay that qh3 advertises, so the peer's loss timers are unaffected.
ACK_HOLD_S = 0.02


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
