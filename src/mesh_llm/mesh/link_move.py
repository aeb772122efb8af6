"""Moving a peer to a better link without breaking the streams open on the old one.

A relayed link keeps asking its relay for an introduction on a timer (`retry_delays`: from
`punch_retry_s`, doubling up to `punch_retry_max_s`, `punch_retries` times at most); a
punch that succeeds adopts a direct ("punched") link, as a LAN address found by --mdns
does. Whichever link the one-connection-per-pair rule (link_rule.py) keeps takes new
streams at once; the loser is not closed but drained: out of the peer's links (so nothing
sees the peer lost or relinked), it keeps carrying the streams open on it and closes when
they are done, or after `drain_s` where one is set, or once its far end has not answered a
ping for `silence_timeout_s` (`drain_end`).
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


def drain_end(busy_streams: int, elapsed_s: float, silent_s: float, bound_s: float,
              silence_s: float) -> str | None:
    """Why a replaced link may close now (None: keep draining): its streams are done, it
    had its time (`bound_s`; 0: no bound), or its far end has not answered a ping for
    `silence_s` (gone: its streams would only hang)."""
    if busy_streams <= 0:
        return "streams done"
    if 0 < bound_s <= elapsed_s:
        return "drain bound"
    if silent_s > silence_s:
        return "no answer"
    return None


def busy_streams(link: Link) -> int:
    """The streams open on `link` that carry something (its gossip streams do not)."""
    return sum(1 for sid in link.conn.stream_ids() if sid not in link.control)


# ------------------------------------------------------------------ I/O


def drain(state: MeshState, link: Link) -> None:
    """`link` lost to a newer link to its peer (taken out of its links already): close it
    once `drain_end` says so."""
    link.replaced = True
    link.cancel_timers()  # no more gossip pings on it; the peer's are still answered
    if busy_streams(link) == 0:
        state.close_link(link, CLOSE_DUPLICATE, "duplicate connection")
        return
    log.info("moving %s off %s (%s): draining its open streams",
             (link.peer_id or "?")[:12], remote(link.conn), link.kind)
    state.spawn(_drain(state, link), "mesh-drain")


async def _drain(state: MeshState, link: Link) -> None:
    """Check `drain_end` every DRAIN_CHECK_S; ping the far end every `ping_interval_s`."""
    settings, loop = state.settings, asyncio.get_running_loop()
    start = answered = next_ping = loop.time()
    peer = link.peer_id or "?"
    while not link.conn.is_closed:
        now = loop.time()
        why = drain_end(busy_streams(link), now - start, now - answered, settings.drain_s,
                        settings.silence_timeout_s)
        if why is not None:
            log.info("closing the old link to %s (%s) after %.1f s of draining: %s",
                     peer[:12], link.kind, now - start, why)
            state.close_link(link, CLOSE_DUPLICATE, "moved to a newer connection")
            return
        if now < next_ping:
            await asyncio.sleep(DRAIN_CHECK_S)
            continue
        info = state.table.get(peer)
        rtt_s = ((info.rtt_ms if info is not None else None) or 0.0) / 1000.0
        if await link.conn.ping(max(settings.probe_timeout_s, 4 * rtt_s)):
            answered = loop.time()
        next_ping = loop.time() + settings.ping_interval_s


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
