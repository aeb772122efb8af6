"""Applying the link rule (link_rule.py) to the links we hold: adopt an authenticated link,
drain duplicates (link_move.py), probe older ones (a dead one closes at once), and say
what the loss of a link means."""

from __future__ import annotations

import asyncio
import logging

from .addresses import remote
from .link_move import drain
from .link_rule import LinkFacts, Verdict, after_close, resolve
from .quic import CLOSE_DUPLICATE
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")


def adopt(state: MeshState, link: Link) -> None:
    """Add an authenticated `link` as its peer's newest, then resolve duplicates."""
    peer = link.peer_id
    assert peer is not None
    links = state.peer_links.setdefault(peer, [])
    links.append(link)
    _apply(state, peer, grace_over=False)


def _apply(state: MeshState, peer: str, *, grace_over: bool) -> None:
    links = state.peer_links.get(peer)
    if not links:
        return
    rule = resolve(state.node_id, peer, [LinkFacts(x.dialed, x.authenticated) for x in links],
                   grace_over=grace_over)
    if rule.use is None:
        return
    keep = links[rule.use]
    for old in [links[i] for i in rule.close]:
        log.debug("closing duplicate connection to %s (%s)", peer[:12], remote(old.conn))
        links.remove(old)
        drain(state, old)  # its open streams finish first (link_move.py)
    if rule.probe:
        older = [links[i] for i in rule.probe]
        state.spawn(_probe_older(state, peer, older), "mesh-probe")
    if rule.prune_later:
        keep.timers.append(asyncio.get_running_loop().call_later(
            state.settings.duplicate_grace_s, _prune, state, peer))


def _prune(state: MeshState, peer: str) -> None:
    _apply(state, peer, grace_over=True)


async def _probe_older(state: MeshState, peer: str, older: list[Link]) -> None:
    """Close older links to `peer` whose far end no longer answers a PING (a peer that
    restarted or dropped its end), without waiting for the idle timeout."""
    info = state.table.get(peer)
    rtt = (info.rtt_ms if info is not None else None) or 0.0
    timeout = max(state.settings.probe_timeout_s, 4 * rtt / 1000.0)
    alive = await asyncio.gather(*(x.conn.ping(timeout) for x in older))
    for link, ok in zip(older, alive, strict=True):
        current = state.peer_links.get(peer, [])
        if not ok and link in current and len(current) > 1:
            log.info("connection to %s (%s) no longer answers; dropping it", peer[:12],
                     remote(link.conn))
            link.replaced = True
            current.remove(link)
            state.close_link(link, CLOSE_DUPLICATE, "stale connection")
    links = state.peer_links.get(peer)
    if links:
        state.table.set_connection(peer, links[-1].conn)


def release(state: MeshState, link: Link) -> Verdict | None:
    """`link`'s connection closed: drop it. Returns what that means for its peer when it
    was the peer's last link (None: nothing to do; another link carries on)."""
    link.cancel_timers()
    peer = link.peer_id
    links = state.peer_links.get(peer or "")
    if link.replaced or peer is None or not links or link not in links:
        return None
    was_active = links[-1] is link
    links.remove(link)
    if links:  # another link to the same peer carries on
        if was_active:
            state.table.set_connection(peer, links[-1].conn)
        return None
    del state.peer_links[peer]
    if state.stopping:
        return None
    conn = link.conn
    return after_close(goodbye=link.goodbye, deliberate=link.deliberate,
                       closed_by_peer=conn.closed_by_peer, close_code=conn.close_code,
                       client=link.grant == "client")
