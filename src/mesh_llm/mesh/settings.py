"""The mesh's timers and limits, in one place: defaults follow the seed; tests shorten them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .quic import TransportSettings


@dataclass(frozen=True)
class MeshSettings:
    """Timers. Defaults follow the seed; tests shorten them."""

    transport: TransportSettings = field(default_factory=TransportSettings)
    auth_timeout_s: float = 5.0
    first_byte_timeout_s: float = 5.0  # a peer-opened stream must name its type by then
    reconnect_timeout_s: float = 10.0
    reconnect_attempt_s: float = 3.0
    dial_timeout_s: float = 10.0  # dialling a peer learned by gossip
    gossip_dial_delay_s: float = 1.0  # the larger id waits this long: fewer duplicate dials
    redial_backoff_s: float = 5.0  # after a failed gossip dial of a peer
    punch_after_s: float = 3.0  # a gossiped peer not dialled by then: ask for an introduction
    punch_window_s: float = 6.0  # how long an introduced pair tries to reach each other
    punch_delay_ms: int = 300  # an introduction's start, from when it is sent
    punch_retry_s: float = 60.0  # a relayed link asks to punch again after this (0: never)
    punch_retry_max_s: float = 600.0  # the retry interval doubles up to this
    punch_retries: int = 8  # retries of one relayed link, at most
    # A replaced link with streams open is closed after this at most; 0: as long as its far
    # end answers pings. A split's RPC tunnel lives as long as the split, and cutting it
    # restarts the split, so no time bound by default.
    drain_s: float = 0.0
    relay_enabled: bool = True  # carry other members' packets where they cannot punch
    relay_max_pairs: int = 8  # relay.DEFAULT_PAIRS
    mdns: bool = False  # --mdns: advertise on the LAN and find members there (lan_reach.py)
    relay_rate: int = 8_000_000  # bytes per second, each way, per pair (relay.DEFAULT_RATE)
    ping_interval_s: float = 2.0  # app-level ping on the gossip stream: RTT and liveness
    silence_timeout_s: float = 8.0  # nothing heard for this long: the connection is lost
    max_pending_streams: int = 8
    duplicate_grace_s: float = 5.0  # larger id: close older duplicates after this long
    probe_timeout_s: float = 1.0  # an older duplicate that cannot answer a PING is dropped
