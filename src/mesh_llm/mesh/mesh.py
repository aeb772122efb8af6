"""The mesh facade the node uses: listen, join by token, keep a live peer table, carry streams.

Life of a connection, and the module that does each step:
  1. QUIC handshake (quic/); dialling an address list (dialler.py), the addresses of
     invite tokens first (join.py).
  2. AUTH stream: the dialer opens it; both sides prove key and mesh secret, or an invite
     derived from it (auth.py); the acceptor drops a connection that has not authenticated
     within `auth_timeout_s` and serves a peer's streams by type (inbound.py). What the
     dialer proved is its grant: a member, or a lite client admitted by a client invite.
  3. Adoption: one connection per pair of nodes (the rule: link_rule.py; applied by
     adoption.py).
  4. Gossip: each side opens a GOSSIP stream and sends its state (its `Announcement`,
     announcement.py, and the peers it knows) on connect and on every change, and pings
     (session.py); what a peer says goes into the peer table, and the peers it knows
     that we do not are dialled: full mesh (membership.py, peers.py).
  5. End: a goodbye (or a GOODBYE close) removes the peer at once; an unexpected loss marks
     it "reconnecting" and the dialler redials its addresses for `reconnect_timeout_s`;
     success → gossip again, failure → the peer is removed.
  6. Reach: each peer's gossip says where it sees us (observed.py), which puts a NAT's
     public address first in our token; two members that cannot dial each other are
     introduced by one linked to both and punch through their NATs (punch.py), or else
     talk through it (relay.py); a relayed link retries punching on a timer, and a peer
     that gets a better link moves to it while the old one drains (link_move.py).
Our addresses (token, announcement): addresses.py. Shared state: state.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from ..errors import UserError
from . import adoption
from .addresses import (
    WILDCARDS,
    advertised,
    lan_addrs,
    local_ips,
    own_addrs,
    remote,
    shareable,
    token_addrs,
)
from .announcement import Announcement
from .auth import AuthResult, Grant
from .dialler import DialFailed, Dialler
from .identity import Identity
from .inbound import Inbound, StreamHandler
from .invites import MAX_VIA, InviteKind, InviteToken, encode_token, mint_invite
from .join import join_through
from .lan_reach import LanReach
from .link_move import PunchRetry
from .membership import Membership
from .peers import PeerTable, Subscription
from .protocol import StreamType
from .punch import Puncher, path_kind, remember_path
from .quic import CLOSE_GOODBYE, CLOSE_SHUTDOWN, Connection, QuicTransport, Stream
from .relay import Relays, is_virtual
from .settings import MeshSettings
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")


class MeshError(Exception):
    """A mesh operation that cannot be done (not started, peer not connected...)."""


class MeshJoinError(MeshError, UserError):
    """No token worked; the message lists every address tried and why it failed."""


class Mesh:
    """A node's membership in a mesh. See the module docstring for the life of a link."""

    def __init__(self, identity: Identity, secret: bytes | None, announcement: Announcement,
                 *, bind_host: str = "0.0.0.0", bind_port: int = 0,
                 advertise: list[str] | tuple[str, ...] = (),
                 settings: MeshSettings | None = None) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self._state = MeshState(identity, None if secret is None else bytes(secret),
                                settings or MeshSettings())
        self.settings = self._state.settings
        self.on_secret: Callable[[bytes], None] | None = None  # the mesh secret changed
        self.on_addrs: Callable[[list[str]], None] | None = None  # our addresses changed
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.advertise = advertised(advertise)
        self._addrs: list[str] = []
        self._ips: list[str] = []  # this machine's interface addresses (wildcard bind)
        self._announcement = self._own(announcement)
        self._inbound = Inbound(self._state, register=self._register, adopt=self._adopt)
        self._dialler = Dialler(self._state, register=self._register, adopt=self._adopt,
                                forget=self._forget_peer)
        self._relays = Relays(self._state, self.open_stream)
        self._inbound.add_handler(StreamType.RELAY, self._relays.serve, True)  # it checks
        self._puncher = Puncher(self._state, self._dialler.dial, self._relays.open_path)
        self._dialler.on_unreachable = self._puncher.unreachable
        self._retry = PunchRetry(self._state, self._puncher.retry)
        self._membership = Membership(self._state, self._dialler, lambda: self._announcement,
                                      on_observed=self._refresh_addrs,
                                      on_intro=self._puncher.on_message)
        self._lan = LanReach(self._state, self._dialler, bind_host, lambda: self._announcement,
                             self._on_ips) if self.settings.mdns else None
        self._started = False

    # ------------------------------------------------------------------ public API

    @property
    def peers(self) -> PeerTable:
        """node id → PeerInfo (a read-only Mapping; connected and reconnecting peers)."""
        return self._state.table

    @property
    def port(self) -> int:
        transport = self._state.transport
        return 0 if transport is None else transport.port

    @property
    def addrs(self) -> list[str]:
        """The addresses this node puts in its token and announcement."""
        return list(self._addrs)

    def addresses(self) -> dict[str, object]:
        """Where this node is: the bound socket, this machine's own addresses for it, and
        where peers see it (most recent first): the status's `addresses`."""
        return {"bound": f"{self.bind_host}:{self.port}",
                "lan": lan_addrs(self.bind_host, self.port, self._ips),
                "observed": self._state.observed.addrs()}

    def relay_stats(self) -> dict[str, object]:
        """What this node relays for others (pairs, bytes) and the pairs it could reach
        neither by punching nor through a relay, with why."""
        return {**self._relays.stats(), "unreachable": dict(self._puncher.unrelayed)}

    def lan_status(self) -> dict[str, object] | None:
        """--mdns: our tag, our mesh's members seen on the LAN, links found there (None:
        LAN discovery is off)."""
        return None if self._lan is None else self._lan.status()

    @property
    def introductions(self) -> int:
        """Introductions this node made for others (hole punching)."""
        return self._puncher.introductions

    @property
    def secret(self) -> bytes | None:
        """The mesh secret; None on a lite client admitted by a client invite."""
        return self._state.secret

    @property
    def refused(self) -> int:
        """Connections refused so far (tests wait on it, not on the log)."""
        return self._state.refused

    @property
    def announcement(self) -> Announcement:
        return self._announcement

    @property
    def transport(self) -> QuicTransport | None:
        return self._state.transport

    def connections_to(self, peer_id: str) -> list[Connection]:
        """Live authenticated connections to `peer_id`, newest (the one in use) last.
        Normally one; two only for the moment a duplicate is being resolved."""
        return [link.conn for link in self._state.peer_links.get(peer_id, [])]

    async def start(self) -> None:
        """Bind the QUIC port and accept peers; after this `token()` works."""
        if self._started:
            raise MeshError("mesh already started")
        transport = QuicTransport(self.settings.transport,
                                  on_connection=self._inbound.on_accepted)
        port = await transport.listen(self.bind_host, self.bind_port)
        self._state.transport = transport
        self._started = True
        self._ips = local_ips() if self.bind_host in WILDCARDS else []
        self._refresh_addrs()
        if self.bind_host in WILDCARDS and not self._ips:
            log.warning("this machine has no address but loopback: invites work on this "
                        "machine only (--advertise HOST:PORT names one others can reach)")
        log.info("mesh listening on UDP %s:%d as %s (batched UDP I/O: %s)",
                 self.bind_host, port, self.node_id[:12], transport.batched_io)
        if self._lan is not None:
            await self._lan.start(port)

    def token(self) -> str:
        """The worker invite that never expires: this node's id, addresses and the mesh
        secret ("" on a node that holds no secret: it cannot invite anyone)."""
        if not self._started:
            raise MeshError("start the mesh before asking for its token")
        secret = self._state.secret
        return "" if secret is None else encode_token(InviteToken(self.node_id, self._addrs,
                                                                  secret, via=self.invite_via()))

    def invite(self, kind: InviteKind, expires: int = 0) -> str:
        """A version-2 invite of `kind` through this node ("" without a secret)."""
        if not self._started:
            raise MeshError("start the mesh before asking for an invite")
        secret = self._state.secret
        return "" if secret is None else encode_token(
            mint_invite(self.node_id, self._addrs, secret, kind, expires, self.invite_via()))

    async def join(self, tokens: list[str], timeout: float = 15.0) -> str | None:
        """Join via the first token that works (its mesh secret becomes ours).

        Returns the node id joined (None for no tokens). Raises MeshJoinError naming every
        address tried when none works within `timeout` seconds in total."""
        if not self._started:
            raise MeshError("start the mesh before joining")
        if not tokens:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        before = self._state.secret
        try:
            peer = await join_through(self._state, self._dialler, tokens, deadline)
        except DialFailed as err:
            raise MeshJoinError("could not join the mesh: " + "; ".join(err.attempts)) \
                from None
        secret = self._state.secret
        if secret is not None and secret != before and self.on_secret is not None:
            self.on_secret(secret)
        if self._lan is not None:
            self._lan.refresh()  # our mesh's tag now
        await self._wait_for_announcement(peer, max(0.0, deadline - loop.time()))
        log.info("joined the mesh through %s", peer[:12])
        return peer

    def update_announcement(self, announcement: Announcement) -> None:
        """Gossip `announcement` as ours from now on (ValueError when out of bounds). Its
        node id must be ours; its addresses are the mesh's, whatever it says."""
        new = self._own(announcement)
        if new != self._announcement:
            self._announcement = new
            self._membership.schedule_broadcast()
            if self._lan is not None:
                self._lan.refresh()

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        """Async stream of PeerEvents (added/updated/disconnected/reconnected/removed)."""
        return self._state.table.subscribe(maxsize)

    def add_stream_handler(self, stream_type: int, handler: StreamHandler, *,
                           clients: bool = False) -> None:
        """`handler(peer_id, stream)` (sync or async) serves peer-opened streams of this
        type; it owns the stream (the type byte is already consumed). Only members may open
        it unless `clients` (peers admitted by a client invite) is set."""
        self._inbound.add_handler(stream_type, handler, clients)

    def dial_known(self, peers: list[tuple[str, list[str]]]) -> None:
        """Dial peers remembered from an earlier run (id, addresses), in the background: a
        restarted node finds its mesh again even when nobody redials it."""
        self._dialler.dial_known(peers)

    def member_hints(self) -> list[tuple[str, list[str]]]:
        """Connected members and their addresses: what a node remembers for its next run."""
        return [(info.node_id, list(info.addrs)) for info in self._state.table.values()
                if info.connected and info.grant == "member" and info.addrs]

    def grant(self, peer_id: str) -> Grant | None:
        """What `peer_id` proved when it connected (None when not connected)."""
        link = self._state.active_link(peer_id)
        return None if link is None else link.grant

    async def open_stream(self, peer_id: str, stream_type: int, timeout: float = 10.0) -> Stream:
        """Open a stream of `stream_type` to a connected peer (its type byte is sent)."""
        if not 0 < int(stream_type) < 256:
            raise ValueError(f"stream type {stream_type} out of range")
        link = self._state.active_link(peer_id)
        if link is None:
            raise MeshError(f"not connected to peer {peer_id[:12]}")
        stream = await link.conn.open_stream(timeout)
        stream.write_nowait(bytes((int(stream_type),)))
        return stream

    async def stop(self, graceful: bool = True) -> None:
        """Leave: say goodbye to every peer and close everything. `graceful=False` drops
        the socket without a word (what a crash looks like to the others)."""
        state = self._state
        if state.stopping:
            return
        state.stopping = True
        if self._lan is not None:
            await self._lan.close()
        for link in list(state.links.values()):
            link.cancel_timers()
        if state.transport is not None:
            if graceful:
                for link in state.adopted_links():
                    if link.session is not None:
                        link.session.say_goodbye()
                    link.conn.flush()
                for link in list(state.links.values()):
                    state.close_link(link, CLOSE_GOODBYE, "goodbye")
                await state.transport.close(CLOSE_GOODBYE, "goodbye")
            else:
                state.transport.abort()
        await state.cancel_tasks()
        self._membership.stop()
        state.table.clear()
        log.info("mesh stopped (%s)", "goodbye sent" if graceful else "dropped")

    # ------------------------------------------------------------------ wiring

    def _on_ips(self, ips: list[str]) -> None:
        """This machine's addresses changed (--mdns watches them): hand out the new ones."""
        if self.bind_host in WILDCARDS:
            self._ips = ips
            self._refresh_addrs()

    def _refresh_addrs(self) -> None:
        """Recompute our addresses (start, and when peers see us somewhere new): a NAT's
        public address goes first in the invites printed from then on, and is gossiped."""
        port, observed = self.port, self._state.observed
        lan = lan_addrs(self.bind_host, port, self._ips)
        public = observed.public(lan)
        addrs = token_addrs(self.bind_host, port, self.advertise, self._ips, public)
        self._state.own_addrs = own_addrs(self.bind_host, port, self._ips, observed.addrs())
        if addrs == self._addrs:
            return
        new_public = [a for a in public if a not in self._addrs]
        self._addrs = addrs
        if self._started and new_public:
            log.info("peers see this node at %s: invites list it first from now on",
                     ", ".join(new_public))
        if self._started and self.on_addrs is not None:
            self.on_addrs(list(addrs))
        self._announcement = replace(self._announcement, addrs=tuple(addrs))
        if self._started:
            self._membership.schedule_broadcast()

    def invite_via(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Behind a NAT, our invites also name members we reached by dialling them (a
        stranger can join through one of them); a reachable node's invites stay as they
        were. (member id, its addresses), at most MAX_VIA."""
        state = self._state
        if not state.observed.public(lan_addrs(self.bind_host, self.port, self._ips)):
            return ()
        via = []
        for peer, links in state.peer_links.items():
            link, info = links[-1], state.table.get(peer)
            if not (link.dialed and link.kind == "direct" and link.grant == "member"
                    and info is not None):
                continue
            addrs = tuple(a for a in shareable(info.addrs, False) if not is_virtual(a))[:4]
            if addrs:
                via.append((peer, addrs))
        return tuple(via[:MAX_VIA])

    def _own(self, announcement: Announcement) -> Announcement:
        """Our announcement, stamped with our addresses and checked as a peer would."""
        if announcement.node_id != self.node_id:
            raise ValueError("the announcement's node_id belongs to the mesh; it cannot be set")
        return replace(announcement, addrs=tuple(self._addrs)).checked()

    def _register(self, conn: Connection, dialed: bool) -> Link:
        link = Link(conn, dialed)
        self._state.links[conn] = link
        conn.on_stream = lambda stream: self._inbound.on_stream(link, stream)
        conn.add_close_callback(self._on_conn_closed)
        return link

    def _adopt(self, link: Link, result: AuthResult) -> bool:
        """Take an authenticated link into use as the peer's newest (False: it closed)."""
        state, conn, peer = self._state, link.conn, result.peer_id
        if conn.is_closed:
            return False
        link.peer_id, link.auth = peer, result
        link.cancel_timers()
        if state.stopping:
            state.close_link(link, CLOSE_SHUTDOWN, "shutting down")
            return False
        link.via = self._relays.paths.get(remote(conn))
        link.kind = path_kind(state.punched_paths, peer, remote(conn),
                              state.punching.get(peer), link.dialed, link.via)
        if link.kind == "punched":
            remember_path(state.punched_paths, peer, remote(conn))
        adoption.adopt(state, link)
        self._dialler.connected(peer)
        if peer in state.table:
            state.table.set_connection(peer, conn, result.grant, link.kind)
        state.notify_active(peer)
        log.info("connected to %s (%s, %s, %s%s)", peer[:12], remote(conn), link.kind,
                 "dialled" if link.dialed else "accepted",
                 ", client invite" if result.grant == "client" else "")
        link.session = self._membership.session(link)
        state.spawn(link.session.start(), "mesh-gossip-out")
        self._retry.adopted(link)
        pending, link.pending = link.pending, []
        for stream in pending:
            self._inbound.serve_soon(link, stream)
        return True

    def _on_conn_closed(self, conn: Connection) -> None:
        link = self._state.links.pop(conn, None)
        if link is not None and link.via is not None:
            self._relays.release(remote(conn))  # the relay frees the pair
        verdict = None if link is None else adoption.release(self._state, link)
        if link is None or verdict is None:
            return
        peer = link.peer_id
        assert peer is not None
        if verdict in ("left", "dropped"):
            self._forget_peer(peer, "left the mesh" if verdict == "left" else "dropped")
        elif peer not in self._state.table:
            return
        elif verdict == "await_replacement":
            self._state.spawn(self._dialler.await_replacement(peer, conn), "mesh-duplicate")
        else:
            self._dialler.lost(peer, conn)

    def _forget_peer(self, peer: str, reason: str) -> None:
        self._membership.forget(peer, reason)

    async def _wait_for_announcement(self, peer: str, timeout: float) -> None:
        table = self._state.table
        if peer in table:
            return
        with table.subscribe() as sub, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while peer not in table:
                    await sub.get()


__all__ = ["Mesh", "MeshError", "MeshJoinError"]
