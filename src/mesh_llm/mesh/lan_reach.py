"""--mdns in the mesh: what we advertise on the LAN, and the LAN's records as dials.

A record of our mesh (its tag, lan.py) from a member we are not linked to is dialled; from
one we are linked to elsewhere (its address changed, or the link is relayed) it is dialled
at the LAN address, and the new link replaces the old one (the newest wins). A member we
lose is looked for on the LAN by its node id, and the reconnect dials its LAN addresses
first. A joiner whose token carries the secret dials the members of its mesh it sees on
the LAN along with the token's addresses (join.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .addresses import remote
from .announcement import Announcement
from .dialler import DialFailed, Dialler
from .lan import LanRecord, mesh_tag, should_move
from .mdns import LanPresence
from .peers import PeerEvent
from .state import MeshState

log = logging.getLogger("mesh_llm.mesh")

RETRY_S = 10.0  # the same addresses of a member are not dialled again sooner
JOIN_WAIT_S = 1.0  # a joiner waits this long for its mesh's members on the LAN


class LanReach:
    """The presence on the LAN of one mesh member; `on_ips(ips)` hears this machine's
    addresses change."""

    def __init__(self, state: MeshState, dialler: Dialler, bind_host: str,
                 announcement: Callable[[], Announcement],
                 on_ips: Callable[[list[str]], None]) -> None:
        self._state = state
        self._dialler = dialler
        self._announcement = announcement
        self.presence = LanPresence(state.node_id, bind_host, self._on_record, on_ips)
        self._tried: dict[str, tuple[tuple[str, ...], float]] = {}
        self._port = 0
        self.found = 0  # links made to members found on the LAN
        dialler.lan_addrs = self.addrs_of
        state.table.add_listener(self._on_peer_event)

    async def start(self, port: int) -> None:
        """Listen on the LAN and advertise our QUIC `port` (once we hold a secret)."""
        self._port = port
        self._state.lan_members = self.members
        await self.presence.start()
        self.refresh()

    async def close(self) -> None:
        await self.presence.close()

    def tag(self) -> str | None:
        secret = self._state.secret
        return None if secret is None else mesh_tag(secret)

    def refresh(self) -> None:
        """Advertise what we are now: our mesh's tag, id, port, its size, our models."""
        tag, port = self.tag(), self._port
        if tag is None or port <= 0 or self._state.stopping:
            return
        ann = self._announcement()
        members = sum(1 for p in self._state.table.values()
                      if p.connected and p.grant == "member")
        self.presence.advertise(LanRecord(tag, self._state.node_id, port,
                                          nodes=1 + members, models=tuple(ann.models)))

    def addrs_of(self, node_id: str) -> list[str]:
        """A member's LAN addresses, when it advertises our mesh's tag here."""
        record = self.presence.records.get(node_id)
        return record.addrs if record is not None and record.tag == self.tag() else []

    async def members(self, secret: bytes) -> list[tuple[str, list[str]]]:
        """The members of the mesh of `secret` on the LAN (a joiner waits a moment for
        them): (node id, addresses)."""
        tag = mesh_tag(secret)
        await self.presence.wait_for(lambda r: r.tag == tag, JOIN_WAIT_S)
        return [(r.node_id, r.addrs) for r in self.presence.records.values() if r.tag == tag]

    def status(self) -> dict[str, object]:
        """The status's `mdns`: our tag, the members of our mesh seen on the LAN, and the
        links made to members found there."""
        tag = self.tag()
        return {"tag": tag, "addresses": list(self.presence.ips),
                "members_seen": sorted(r.node_id for r in self.presence.records.values()
                                       if r.tag == tag),
                "found": self.found}

    # ------------------------------------------------------------------ records

    def _on_record(self, record: LanRecord) -> None:
        state = self._state
        if state.stopping or record.tag != self.tag() or record.node_id == state.node_id:
            return
        links = state.peer_links.get(record.node_id)
        if links and not should_move(remote(links[-1].conn), record):
            return
        loop = asyncio.get_running_loop()
        tried = self._tried.get(record.node_id)
        addrs = tuple(record.addrs)
        if tried is not None and tried[0] == addrs and loop.time() - tried[1] < RETRY_S:
            return
        self._tried[record.node_id] = (addrs, loop.time())
        while len(self._tried) > 256:
            self._tried.pop(next(iter(self._tried)))
        state.spawn(self._dial(record, replace=bool(links)), "mesh-lan-dial")

    async def _dial(self, record: LanRecord, replace: bool) -> None:
        peer = record.node_id
        before = self._state.peer_links.get(peer, [None])[-1]
        try:
            await self._dialler.dial(peer, record.addrs, self._state.settings.dial_timeout_s,
                                     replace=replace)
        except DialFailed as err:
            log.info("a member seen on the LAN (%s) did not answer: %s", peer[:12], err)
            return
        links = self._state.peer_links.get(peer)
        if links and links[-1] is not before and remote(links[-1].conn) in record.addrs:
            self.found += 1
            log.info("found %s on the LAN at %s", peer[:12], remote(links[-1].conn))

    def _on_peer_event(self, event: PeerEvent) -> None:
        if event.kind != "updated":
            self.refresh()  # the mesh's size changed
        if event.kind == "disconnected" and self.tag() is not None:
            self._tried.pop(event.node_id, None)
            self.presence.lookup(event.node_id)  # where is it now?
