"""What gossip does: our state out to every peer, each peer's state into the peer table
(clamped for a client-invite peer), its hints to the dialler, its goodbye to a removal,
its report of where it sees us to our observed addresses, its introductions to the
puncher. Loopback addresses go only to, and are taken only from, peers on this machine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .addresses import is_loopback, remote, shareable
from .announcement import Announcement, clamp_client
from .auth import Grant
from .dialler import Dialler
from .gossip import Intro, IntroRequest, PeerHint, StateMsg, state_message
from .invites import MAX_ADDRS
from .punch import remember_path
from .quic import CLOSE_GOODBYE, CLOSE_PROTOCOL_ERROR
from .relay import is_virtual
from .session import GossipSession
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")


class Membership:
    """Who is in the mesh, as gossip tells it. `announcement()` is ours, as sent now."""

    def __init__(self, state: MeshState, dialler: Dialler,
                 announcement: Callable[[], Announcement], *,
                 on_observed: Callable[[], None] = lambda: None,
                 on_intro: Callable[[Link, IntroRequest | Intro], None] | None = None) -> None:
        self._state = state
        self._dialler = dialler
        self._announcement = announcement
        self._on_observed = on_observed  # where peers see us changed
        self._on_intro = on_intro
        self._broadcast_handle: asyncio.Handle | None = None

    def session(self, link: Link) -> GossipSession:
        """The gossip session for a newly adopted link."""
        state, peer = self._state, link.peer_id
        assert peer is not None
        session = GossipSession(
            link.conn, peer, state.settings, state=lambda: self._state_message(link),
            on_state=lambda msg: self._on_state(link, msg),
            on_goodbye=lambda: self._on_goodbye(link),
            on_rtt=lambda rtt_ms: state.table.set_rtt(peer, rtt_ms),
            on_bad=lambda reason: state.close_link(link, CLOSE_PROTOCOL_ERROR, reason),
            on_intro=None if self._on_intro is None else (
                lambda msg: self._on_intro(link, msg)))  # type: ignore[misc]
        session.on_stream = link.control.add  # not a stream a replaced link waits for
        return session

    def forget(self, peer: str, reason: str) -> None:
        """Remove `peer` for good (and tell the others)."""
        self._dialler.cancel_reconnect(peer)
        if self._state.table.remove(peer) is not None:
            log.info("peer %s removed: %s", peer[:12], reason)
            self.schedule_broadcast()

    def schedule_broadcast(self) -> None:
        """Send our state to every peer soon (changes in one loop turn go out once)."""
        if self._broadcast_handle is None and not self._state.stopping:
            self._broadcast_handle = asyncio.get_running_loop().call_soon(self.broadcast)

    def broadcast(self) -> None:
        self._broadcast_handle = None
        for link in self._state.adopted_links():
            if link.session is not None:
                link.session.send_state()

    def stop(self) -> None:
        if self._broadcast_handle is not None:
            self._broadcast_handle.cancel()

    def _state_message(self, link: Link) -> dict[str, Any]:
        peer, seen = link.peer_id, remote(link.conn)
        local = is_loopback(seen)  # the peer is on this machine
        hints = [  # client-invite peers accept no connections: nobody should dial them
            PeerHint(info.node_id, shareable(info.addrs, local))
            for info in self._state.table.values()
            if info.connected and info.node_id != peer and info.grant == "member"
            and shareable(info.addrs, local)
        ]
        ours = self._announcement()
        ours = replace(ours, addrs=tuple(shareable(ours.addrs, local)))
        return state_message(ours, hints, seen, link.kind == "punched")

    def _on_state(self, link: Link, msg: StateMsg) -> None:
        state, peer = self._state, link.peer_id
        assert peer is not None
        if state.active_link(peer) is not link:
            return  # a duplicate on its way out; the newest link carries the same state
        grant: Grant = link.grant or "member"
        local = is_loopback(remote(link.conn))
        announcement = msg.announcement
        addrs = shareable(announcement.addrs, local)
        if grant == "client":
            # A client invite grants the API tunnel and nothing else: whatever it claims,
            # it is a client with no memory, no model and no say in the election.
            announcement, addrs = clamp_client(announcement), []
        elif (observed := remote(link.conn)) not in addrs and len(addrs) < MAX_ADDRS \
                and not is_virtual(observed):
            addrs.append(observed)
        if msg.punched and link.kind != "punched":
            link.kind = "punched"
            remember_path(state.punched_paths, peer, remote(link.conn))
        known = peer in state.table
        state.table.upsert(peer, announcement, link.conn, addrs, grant, link.kind)
        if not known:
            self.schedule_broadcast()  # everyone else should learn of the newcomer
        if grant != "member":
            return  # a client's hints would make us dial where it says; its reports do not count
        if msg.seen is not None and state.observed.report(peer, msg.seen):
            self._on_observed()
        for hint in msg.peers:
            self._dialler.maybe_dial(PeerHint(hint.node_id, shareable(hint.addrs, local)),
                                     via=peer)

    def _on_goodbye(self, link: Link) -> None:
        peer = link.peer_id
        assert peer is not None
        for each in [*self._state.peer_links.get(peer, []), link]:
            each.goodbye = True
        self.forget(peer, "left the mesh")
        for each in list(self._state.peer_links.get(peer, [link])):
            self._state.close_link(each, CLOSE_GOODBYE, "goodbye")
