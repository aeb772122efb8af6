"""Moving a peer to a better link without breaking the streams open on the old one.

A relayed link keeps asking its relay for an introduction on a timer (`retry_delays`: from
`punch_retry_s`, doubling up to `punch_retry_max_s`, `punch_retries` times at most); a
punch that succeeds adopts a direct ("punched") link, as a LAN address found by --mdns
does. Whichever link the one-connection-per-pair rule (link_rule.py) keeps takes new
streams at once; the loser is not closed but drained: out of the peer's links (so nothing
sees the peer lost or relinked), it keeps carrying the streams open on it and closes when
they are done, or after `drain_s` at the most (`drain_over`), or as soon as its far end
stops answering pings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .addresses import remote
from .quic import CLOSE_DUPLICATE
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")

DRAIN_CHECK_S = 0.25  # how often a draining link looks at its streams

Ask = Callable[[str, str], bool]  # (peer, relay) → whether the request went out


# ------------------------------------------------------------------ pure decisions


def retry_delays(first_s: float, max_s: float, count: int) -> list[float]:
    """The waits between a relayed link's punch retries: `first_s`, doubling up to
    `max_s`, `count` of them (none when `first_s` is 0)."""
    if first_s <= 0 or count <= 0:
        return []
    return [min(first_s * 2 ** i, max(first_s, max_s)) for i in range(count)]


def drain_over(busy_streams: int, elapsed_s: float, bound_s: float) -> bool:
    """Whether a replaced link may close now: its streams are done, or it had its time."""
    return busy_streams <= 0 or elapsed_s >= bound_s


def busy_streams(link: Link) -> int:
    """The streams open on `link` that carry something (its gossip streams do not)."""
    return sum(1 for sid in link.conn.stream_ids() if sid not in link.control)


# ------------------------------------------------------------------ I/O


def drain(state: MeshState, link: Link) -> None:
    """`link` lost to a newer link to its peer (taken out of its links already): close it
    once its streams are done or after `drain_s`."""
    link.replaced = True
    link.cancel_timers()  # no more pings on it; the peer's are still answered
    if drain_over(busy_streams(link), 0.0, state.settings.drain_s):
        state.close_link(link, CLOSE_DUPLICATE, "duplicate connection")
        return
    log.info("moving %s off %s (%s): draining its open streams",
             (link.peer_id or "?")[:12], remote(link.conn), link.kind)
    state.spawn(_drain(state, link), "mesh-drain")


async def _drain(state: MeshState, link: Link) -> None:
    """Close `link` when `drain_over` says so, or at once when its far end stops answering
    a PING (a restarted peer, a relay gone): its streams would only hang."""
    loop = asyncio.get_running_loop()
    start = next_ping = loop.time()
    peer = link.peer_id or "?"
    while not link.conn.is_closed:
        elapsed = loop.time() - start
        if drain_over(busy_streams(link), elapsed, state.settings.drain_s):
            log.info("closing the old link to %s (%s) after %.1f s of draining", peer[:12],
                     link.kind, elapsed)
            state.close_link(link, CLOSE_DUPLICATE, "moved to a newer connection")
            return
        if loop.time() < next_ping:
            await asyncio.sleep(DRAIN_CHECK_S)
            continue
        info = state.table.get(peer)
        rtt_s = ((info.rtt_ms if info is not None else None) or 0.0) / 1000.0
        if not await link.conn.ping(max(state.settings.probe_timeout_s, 4 * rtt_s)):
            log.info("the old link to %s (%s) no longer answers; closing it", peer[:12],
                     link.kind)
            state.close_link(link, CLOSE_DUPLICATE, "stale connection")
            return
        next_ping = loop.time() + state.settings.ping_interval_s


class PunchRetry:
    """Asks again, on a timer, for the introduction a relayed link's punch came from.
    `ask(peer, relay)` sends the request (the puncher's)."""

    def __init__(self, state: MeshState, ask: Ask) -> None:
        self._state = state
        self._ask = ask

    def adopted(self, link: Link) -> None:
        """A link was adopted: if a relay carries it and we dialled it, retry punching."""
        settings = self._state.settings
        delays = retry_delays(settings.punch_retry_s, settings.punch_retry_max_s,
                              settings.punch_retries)
        if link.via is not None and link.dialed and delays:
            self._state.spawn(self._retry(link, delays), "mesh-punch-retry")

    async def _retry(self, link: Link, delays: list[float]) -> None:
        state, peer, via = self._state, link.peer_id, link.via
        assert peer is not None and via is not None
        for delay in delays:
            await asyncio.sleep(delay)
            if link.conn.is_closed or state.active_link(peer) is not link or state.stopping:
                return  # gone, or moved already
            if self._ask(peer, via):
                log.info("asking %s again to introduce us to %s (the link is relayed)",
                         via[:12], peer[:12])
