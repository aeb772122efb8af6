"""The mesh facade the node uses: listen, join by token, keep a live peer table, carry streams.

Life of a connection:
  1. QUIC handshake (transport.py).
  2. AUTH stream: the dialer opens it; both sides prove key and mesh secret, or an invite
     derived from it (auth.py). Until that succeeds, other streams are held (a few) and served
     by nobody; the acceptor drops the connection if authentication has not succeeded within
     `auth_timeout_s`. What the dialer proved is its grant: a member, or a lite client
     admitted by a client invite, whose gossip is clamped to "client" and which may open
     only the stream types registered for clients. A node that joined with a client invite
     holds no secret: it dials, and accepts nobody.
  3. Adoption: one connection per pair of nodes. When a second one authenticates (both
     dialled at once, or one end redialled a connection the other has not yet seen die),
     the end with the smaller node id decides: it keeps the newest and closes the others
     as duplicates. The larger end uses its newest and follows those closes (and prunes
     leftovers after `duplicate_grace_s`). Keeping the newest is what makes a restarted or
     reconnecting peer win over a stale connection; letting one end decide keeps the two
     ends from each dropping a different one.
  4. Gossip: each side opens a GOSSIP stream and sends its state (announcement + the peers
     it knows) on connect and on every change; unknown peers are dialled: full mesh.
  5. End: a goodbye (or a GOODBYE close) removes the peer at once; an unexpected loss marks
     it "reconnecting" and we redial its addresses for `reconnect_timeout_s`; success →
     gossip again, failure → the peer is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..identity import Identity
from ..logutil import RateLimitedLog
from ..token import (
    MAX_ADDRS,
    Invite,
    InviteKind,
    InviteToken,
    TokenError,
    decode_token,
    encode_token,
    format_addr,
    mint_invite,
    parse_addr,
)
from .auth import AuthError, AuthResult, Grant, run_acceptor, run_dialer
from .gossip import (
    MAX_GOSSIPED_PEERS,
    GoodbyeMsg,
    GossipError,
    PeerHint,
    PingMsg,
    StateMsg,
    clamp_client,
    goodbye_message,
    make_announcement,
    parse_gossip,
    ping_message,
    state_message,
)
from .peers import PeerInfo, PeerTable, Subscription
from .protocol import FrameError, StreamType, encode_frame, read_frame
from .quic import (
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE,
    CLOSE_GOODBYE,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SHUTDOWN,
    RESET_REFUSED,
    Connection,
    QuicTransport,
    Stream,
    TransportError,
    TransportSettings,
)

log = logging.getLogger("mesh_llm.mesh")

StreamHandler = Callable[[str, Stream], Awaitable[None] | None]

_FINAL_CLOSE_CODES = (CLOSE_GOODBYE, CLOSE_AUTH_FAILED, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN)
_RESERVED_TYPES = (StreamType.AUTH, StreamType.GOSSIP)


class MeshError(Exception):
    """A mesh operation that cannot be done (not started, peer not connected...)."""


class MeshJoinError(MeshError, UserError):
    """No token worked; the message lists every address tried and why it failed."""


class _DialFailed(MeshError):
    def __init__(self, attempts: list[str]) -> None:
        super().__init__("; ".join(attempts))
        self.attempts = attempts


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
    ping_interval_s: float = 2.0  # app-level ping on the gossip stream: RTT and liveness
    silence_timeout_s: float = 8.0  # nothing heard for this long: the connection is lost
    max_pending_streams: int = 8
    duplicate_grace_s: float = 5.0  # larger id: close older duplicates after this long
    probe_timeout_s: float = 1.0  # an older duplicate that cannot answer a PING is dropped


@dataclass(eq=False)
class _Link:
    """Our state for one QUIC connection."""

    conn: Connection
    dialed: bool
    peer_id: str | None = None
    auth: AuthResult | None = None
    auth_started: bool = False
    pending: list[Stream] = field(default_factory=list)
    gossip_out: Stream | None = None
    goodbye: bool = False
    deliberate: bool = False  # we closed it on purpose: no reconnect
    replaced: bool = False  # lost the duplicate tie-break
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    ping_n: int = 0
    pings: dict[int, float] = field(default_factory=dict)
    ping_timer: asyncio.TimerHandle | None = None
    last_heard: float = field(default_factory=time.monotonic)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None

    @property
    def authenticated(self) -> bool:
        return self.auth is not None



class Mesh:
    """A node's membership in a mesh. See the module docstring for the life of a link."""

    def __init__(
        self,
        identity: Identity,
        secret: bytes | None,
        announcement: dict[str, Any],
        *,
        bind_host: str = "0.0.0.0",
        bind_port: int = 0,
        advertise: list[str] | tuple[str, ...] = (),
        settings: MeshSettings | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self._secret = None if secret is None else bytes(secret)
        self._invite: Invite | None = None  # a lite client's credential (it has no secret)
        self.on_secret: Callable[[bytes], None] | None = None  # the mesh secret changed
        self.settings = settings or MeshSettings()
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.advertise = [str(a) for a in advertise]
        for addr in self.advertise:
            parse_addr(addr)  # TokenError (a UserError) for a bad --advertise
        fields = {k: v for k, v in announcement.items() if k not in ("node_id", "addrs")}
        self._announcement = make_announcement(self.node_id, **fields)
        self._addrs: list[str] = []
        self._transport: QuicTransport | None = None
        self._table = PeerTable()
        self._links: dict[Connection, _Link] = {}
        self._peer_links: dict[str, list[_Link]] = {}  # authenticated, oldest first
        self._dial_locks: dict[str, asyncio.Lock] = {}
        self._active_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._handlers: dict[int, StreamHandler] = {}
        self._client_types: set[int] = set()  # stream types a client-invite peer may open
        self._refusals = RateLimitedLog(log)  # what outsiders and unprivileged peers trigger
        self.refused = 0  # connections refused so far (tests wait on it, not on the log)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dialing: dict[str, asyncio.Task[Any]] = {}
        self._reconnecting: dict[str, asyncio.Task[Any]] = {}
        self._dial_failed_at: dict[str, float] = {}
        self._broadcast_handle: asyncio.Handle | None = None
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ public API

    @property
    def peers(self) -> PeerTable:
        """node id → PeerInfo (a read-only Mapping; connected and reconnecting peers)."""
        return self._table

    @property
    def port(self) -> int:
        return 0 if self._transport is None else self._transport.port

    @property
    def addrs(self) -> list[str]:
        """The addresses this node puts in its token and announcement."""
        return list(self._addrs)

    @property
    def secret(self) -> bytes | None:
        """The mesh secret; None on a lite client admitted by a client invite."""
        return self._secret

    @property
    def announcement(self) -> dict[str, Any]:
        return dict(self._announcement)

    @property
    def transport(self) -> QuicTransport | None:
        return self._transport

    def connections_to(self, peer_id: str) -> list[Connection]:
        """Live authenticated connections to `peer_id`, newest (the one in use) last.
        Normally one; two only for the moment a duplicate is being resolved."""
        return [link.conn for link in self._peer_links.get(peer_id, [])]

    async def start(self) -> None:
        """Bind the QUIC port and accept peers; after this `token()` works."""
        if self._started:
            raise MeshError("mesh already started")
        transport = QuicTransport(self.settings.transport, on_connection=self._on_accepted)
        port = await transport.listen(self.bind_host, self.bind_port)
        self._transport = transport
        self._started = True
        self._addrs = _token_addrs(self.bind_host, port, self.advertise)
        self._announcement = {**self._announcement, "addrs": list(self._addrs)}
        log.info("mesh listening on UDP %s:%d as %s (batched UDP I/O: %s)",
                 self.bind_host, port, self.node_id[:12], transport.batched_io)

    def token(self) -> str:
        """The worker invite that never expires: this node's id, addresses and the mesh
        secret ("" on a node that holds no secret: it cannot invite anyone)."""
        if not self._started:
            raise MeshError("start the mesh before asking for its token")
        if self._secret is None:
            return ""
        return encode_token(InviteToken(self.node_id, self._addrs, self._secret))

    def invite(self, kind: InviteKind, expires: int = 0) -> str:
        """A version-2 invite of `kind` through this node ("" without a secret)."""
        if not self._started:
            raise MeshError("start the mesh before asking for an invite")
        if self._secret is None:
            return ""
        return encode_token(mint_invite(self.node_id, self._addrs, self._secret, kind,
                                        expires))

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
        tried: list[str] = []
        usable: list[tuple[str, InviteToken]] = []
        for index, text in enumerate(tokens):
            label = f"token {index + 1}" if len(tokens) > 1 else "token"
            try:
                tok = decode_token(text)
            except TokenError as err:
                tried.append(f"{label}: {err}")
                continue
            if tok.node_id == self.node_id:
                tried.append(f"{label}: that is this node's own token")
                continue
            usable.append((label, tok))
        original = (self._secret, self._invite)
        for index, (label, tok) in enumerate(usable):
            remaining = deadline - loop.time()
            if remaining <= 0:
                tried.append(f"{label}: not tried, out of time")
                continue
            left = len(usable) - index
            budget = remaining if left == 1 else max(remaining / left, min(remaining, 3.0))
            if tok.invite is not None and tok.invite.expired(time.time()):
                tried.append(f"{label}: this {tok.invite.kind} invite has expired; ask for "
                             "a new one (mesh-llm invite)")
                continue
            if tok.invite is None:  # a member's token: its secret is the mesh's
                self._secret, self._invite = tok.secret, None
            elif tok.invite.kind == "client":  # a lite client: the invite, nothing more
                self._secret, self._invite = None, tok.invite
            try:
                peer = await self._dial_addrs(tok.node_id, tok.addrs, budget, tok.invite)
            except _DialFailed as err:
                if tok.node_id in self._peer_links:  # it dialled us meanwhile
                    peer = tok.node_id
                else:
                    tried.extend(err.attempts)
                    self._secret, self._invite = original
                    continue
            if self._secret is not None and self._secret != original[0] \
                    and self.on_secret is not None:
                self.on_secret(self._secret)
            await self._wait_for_announcement(peer, max(0.0, deadline - loop.time()))
            log.info("joined the mesh through %s", peer[:12])
            return peer
        self._secret, self._invite = original
        raise MeshJoinError("could not join the mesh: " + "; ".join(tried))

    def update_announcement(self, **fields: Any) -> None:
        """Change our announcement (role, vram_bytes, models, ready, extras) and gossip it."""
        if "node_id" in fields or "addrs" in fields:
            raise ValueError("node_id and addrs belong to the mesh; they cannot be set")
        merged = {**self._announcement, **fields}
        merged.pop("node_id", None)
        new = make_announcement(self.node_id, **merged)
        if new != self._announcement:
            self._announcement = new
            self._schedule_broadcast()

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        """Async stream of PeerEvents (added/updated/disconnected/reconnected/removed)."""
        return self._table.subscribe(maxsize)

    def add_stream_handler(self, stream_type: int, handler: StreamHandler, *,
                           clients: bool = False) -> None:
        """`handler(peer_id, stream)` (sync or async) serves peer-opened streams of this
        type; it owns the stream (the type byte is already consumed). Only members may open
        it unless `clients` (peers admitted by a client invite) is set."""
        if not 0 < int(stream_type) < 256 or stream_type in _RESERVED_TYPES:
            raise ValueError(f"stream type {stream_type} is reserved or out of range")
        self._handlers[int(stream_type)] = handler
        if clients:
            self._client_types.add(int(stream_type))
        else:
            self._client_types.discard(int(stream_type))

    def dial_known(self, peers: list[tuple[str, list[str]]]) -> None:
        """Dial peers remembered from an earlier run (id, addresses), in the background: a
        restarted node finds its mesh again even when nobody redials it."""
        for node_id, addrs in peers[:MAX_GOSSIPED_PEERS]:
            with contextlib.suppress(TokenError):
                hint = PeerHint(node_id, [a for a in addrs[:MAX_ADDRS] if parse_addr(a)])
                self._maybe_dial(hint)

    def member_hints(self) -> list[tuple[str, list[str]]]:
        """Connected members and their addresses: what a node remembers for its next run."""
        return [(info.node_id, list(info.addrs)) for info in self._table.values()
                if info.connected and info.grant == "member" and info.addrs]

    def grant(self, peer_id: str) -> Grant | None:
        """What `peer_id` proved when it connected (None when not connected)."""
        link = self._active_link(peer_id)
        return None if link is None or link.auth is None else link.auth.grant

    async def open_stream(self, peer_id: str, stream_type: int, timeout: float = 10.0) -> Stream:
        """Open a stream of `stream_type` to a connected peer (its type byte is sent)."""
        if not 0 < int(stream_type) < 256:
            raise ValueError(f"stream type {stream_type} out of range")
        link = self._active_link(peer_id)
        if link is None:
            raise MeshError(f"not connected to peer {peer_id[:12]}")
        stream = await link.conn.open_stream(timeout)
        stream.write_nowait(bytes((int(stream_type),)))
        return stream

    async def stop(self, graceful: bool = True) -> None:
        """Leave: say goodbye to every peer and close everything. `graceful=False` drops
        the socket without a word (what a crash looks like to the others)."""
        if self._stopping:
            return
        self._stopping = True
        transport = self._transport
        for link in list(self._links.values()):
            link.cancel_timers()
        if transport is not None:
            if graceful:
                goodbye = encode_frame(goodbye_message())
                for link in self._all_peer_links():
                    if link.gossip_out is not None:
                        with contextlib.suppress(ConnectionError):
                            link.gossip_out.write_nowait(goodbye)
                    link.conn.flush()
                for link in list(self._links.values()):
                    link.deliberate = True
                    link.conn.close(CLOSE_GOODBYE, "goodbye")
                await transport.close(CLOSE_GOODBYE, "goodbye")
            else:
                transport.abort()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._broadcast_handle is not None:
            self._broadcast_handle.cancel()
        self._table.clear()
        log.info("mesh stopped (%s)", "goodbye sent" if graceful else "dropped")

    # ------------------------------------------------------------------ links

    def _register(self, conn: Connection, dialed: bool) -> _Link:
        link = _Link(conn, dialed)
        self._links[conn] = link
        conn.on_stream = lambda stream: self._on_stream(link, stream)
        conn.add_close_callback(self._on_conn_closed)
        return link

    def _active_link(self, peer: str) -> _Link | None:
        links = self._peer_links.get(peer)
        return links[-1] if links else None

    def _all_peer_links(self) -> list[_Link]:
        return [link for links in self._peer_links.values() for link in links]

    def _on_accepted(self, conn: Connection) -> None:
        if self._stopping:
            conn.close(CLOSE_SHUTDOWN, "shutting down")
            return
        if self._secret is None:  # a client-invite node cannot check anyone: it only dials
            conn.close(CLOSE_AUTH_FAILED, "a lite client accepts no connections")
            return
        link = self._register(conn, dialed=False)
        loop = asyncio.get_running_loop()
        link.timers.append(loop.call_later(self.settings.auth_timeout_s, self._auth_deadline,
                                           link))

    def _auth_deadline(self, link: _Link) -> None:
        if not link.authenticated and not link.conn.is_closed:
            self._refusals.warning(_source(link.conn), "dropping connection from %s: no "
                             "authentication within %g s", _show_addr(link.conn),
                             self.settings.auth_timeout_s)
            self._close_link(link, CLOSE_AUTH_FAILED, "authentication timeout")

    def _close_link(self, link: _Link, code: int, reason: str) -> None:
        link.deliberate = True
        link.conn.close(code, reason)

    def _on_stream(self, link: _Link, stream: Stream) -> None:
        if link.authenticated:
            self._spawn(self._serve_stream(link, stream), "mesh-stream")
        elif not link.dialed and not link.auth_started:
            link.auth_started = True
            self._spawn(self._accept_auth(link, stream), "mesh-auth")
        elif len(link.pending) < self.settings.max_pending_streams:
            link.pending.append(stream)  # held, not served, until auth succeeds
        else:
            stream.abort(RESET_REFUSED)

    async def _accept_auth(self, link: _Link, stream: Stream) -> None:
        conn = link.conn
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                head = await stream.readexactly(1)
            if head[0] != StreamType.AUTH:
                raise AuthError(f"first stream has type {head[0]}, not auth")
            if self._secret is None:
                raise AuthError("this node holds no mesh secret")
            result = await run_acceptor(stream, self.identity, self._secret,
                                        conn.server_cert_fingerprint,
                                        self.settings.auth_timeout_s)
        except (AuthError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as err:
            self.refused += 1
            if not self._stopping:
                self._refusals.warning(_source(conn), "refused connection from %s: %s",
                                 _show_addr(conn), err or type(err).__name__)
            self._close_link(link, CLOSE_AUTH_FAILED, "authentication failed")
            return
        stream.write_eof()
        self._on_authenticated(link, result)

    async def _dial_addrs(self, expected: str, addrs: list[str], timeout: float,
                          invite: Invite | None = None) -> str:
        """Connect to `expected` through any of `addrs`; returns its id once authenticated
        (with `invite`, or else our own credential).

        One dial per peer at a time (a second caller waits, then finds it connected)."""
        lock = self._dial_locks.setdefault(expected, asyncio.Lock())
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
        except TimeoutError:
            raise _DialFailed([f"node {expected[:12]}: another dial is still running"]) \
                from None
        try:
            if expected in self._peer_links:
                return expected
            return await self._dial_locked(expected, addrs, timeout, invite or self._invite)
        finally:
            lock.release()
            if not lock.locked() and self._dial_locks.get(expected) is lock:
                del self._dial_locks[expected]

    async def _dial_locked(self, expected: str, addrs: list[str], timeout: float,
                           invite: Invite | None) -> str:
        """QUIC handshakes to every address at once; authenticate on the first to answer
        (then the next, if that one fails). Never two authentications in flight, so the
        acceptor never adopts a connection we are about to drop."""
        transport = self._transport
        if transport is None or self._stopping:
            raise _DialFailed(["mesh is stopping"])
        unique = list(dict.fromkeys(addrs))
        if not unique:
            raise _DialFailed([f"node {expected[:12]}: no address known"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tasks = {
            asyncio.ensure_future(self._handshake(transport, addr, timeout)): addr
            for addr in unique
        }
        used: set[Connection] = set()
        attempts: list[str] = []
        try:
            pending: set[asyncio.Future[Connection]] = set(tasks)
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    addr = tasks[task]
                    exc = task.exception()
                    if exc is not None:
                        attempts.append(f"{addr} ({_describe(exc)})")
                        continue
                    conn = task.result()
                    used.add(conn)
                    try:
                        return await self._authenticate_dialed(conn, expected, deadline,
                                                               invite)
                    except (AuthError, ConnectionError) as err:
                        self._refusals.warning(f"by {addr}", "refused by %s: %s", addr, err)
                        attempts.append(f"{addr} ({_describe(err)})")
            for task in tasks:
                if not task.done():
                    attempts.append(f"{tasks[task]} (no QUIC answer within {timeout:.1f} s)")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if task.cancelled() or task.exception() is not None:
                    continue
                conn = task.result()
                if conn not in used:
                    conn.close(CLOSE_SHUTDOWN, "not needed")
        raise _DialFailed(attempts)

    @staticmethod
    async def _handshake(transport: QuicTransport, addr: str, timeout: float) -> Connection:
        try:
            host, port = parse_addr(addr)
        except TokenError as err:
            raise TransportError(str(err)) from None
        return await transport.connect(host, port, timeout)

    async def _authenticate_dialed(self, conn: Connection, expected: str,
                                   deadline: float, invite: Invite | None) -> str:
        loop = asyncio.get_running_loop()
        link = self._register(conn, dialed=True)
        try:
            if invite is None and self._secret is None:
                raise AuthError("this node holds neither a mesh secret nor an invite")
            stream = await conn.open_stream(max(0.1, deadline - loop.time()))
            stream.write_nowait(bytes((StreamType.AUTH,)))
            result = await run_dialer(stream, self.identity, self._secret or b"",
                                      conn.server_cert_fingerprint, expected,
                                      max(0.1, deadline - loop.time()), invite=invite)
            stream.write_eof()
        except BaseException:
            self._close_link(link, CLOSE_AUTH_FAILED, "authentication failed")
            raise
        if result.secret is not None:  # a worker invite: we are a member now
            self._secret, self._invite = result.secret, None
        if not self._on_authenticated(link, result):
            raise AuthError("connection closed right after authentication")
        return result.peer_id

    def _on_authenticated(self, link: _Link, result: AuthResult) -> bool:
        """Adopt an authenticated link as the peer's newest (see "Adoption" above)."""
        conn = link.conn
        if conn.is_closed:
            return False
        link.peer_id = result.peer_id
        link.auth = result
        peer = result.peer_id
        link.cancel_timers()
        if self._stopping:
            self._close_link(link, CLOSE_SHUTDOWN, "shutting down")
            return False
        links = self._peer_links.setdefault(peer, [])
        links.append(link)
        if len(links) > 1:
            if self.node_id < peer:  # we decide: the newest stays
                self._retire(peer, keep=link)
            else:  # the peer decides; we only drop what is dead on its side
                self._spawn(self._probe_older(peer, link), "mesh-probe")
                link.timers.append(asyncio.get_running_loop().call_later(
                    self.settings.duplicate_grace_s, self._prune, peer))
        self._dial_failed_at.pop(peer, None)
        if peer in self._table:
            self._table.set_connection(peer, conn, result.grant)
        for waiter in self._active_waiters.pop(peer, []):
            if not waiter.done():
                waiter.set_result(None)
        log.info("connected to %s (%s, %s%s)", peer[:12], _show_addr(conn),
                 "dialled" if link.dialed else "accepted",
                 ", client invite" if result.grant == "client" else "")
        self._spawn(self._start_gossip(link), "mesh-gossip-out")
        pending, link.pending = link.pending, []
        for stream in pending:
            self._spawn(self._serve_stream(link, stream), "mesh-stream")
        return True

    async def _probe_older(self, peer: str, newest: _Link) -> None:
        """Close older links to `peer` whose far end no longer answers a PING (a peer that
        restarted or dropped its end), without waiting for the idle timeout."""
        links = self._peer_links.get(peer, [])
        older = [x for x in links if x is not newest]
        rtt = newest.conn.rtt_ms or 0.0
        timeout = max(self.settings.probe_timeout_s, 4 * rtt / 1000.0)
        alive = await asyncio.gather(*(x.conn.ping(timeout) for x in older))
        for link, ok in zip(older, alive, strict=True):
            current = self._peer_links.get(peer, [])
            if not ok and link in current and len(current) > 1:
                log.info("connection to %s (%s) no longer answers; dropping it", peer[:12],
                         _show_addr(link.conn))
                link.replaced = True
                current.remove(link)
                self._close_link(link, CLOSE_DUPLICATE, "stale connection")
        links = self._peer_links.get(peer)
        if links:
            self._table.set_connection(peer, links[-1].conn)

    def _prune(self, peer: str) -> None:
        links = self._peer_links.get(peer)
        if links and len(links) > 1:
            self._retire(peer, keep=links[-1])

    def _retire(self, peer: str, keep: _Link) -> None:
        """Close every link to `peer` but `keep` (duplicates)."""
        links = self._peer_links.get(peer)
        if not links or keep not in links:
            return
        for old in [x for x in links if x is not keep]:
            log.debug("closing duplicate connection to %s (%s)", peer[:12], _show_addr(old.conn))
            old.replaced = True
            links.remove(old)
            self._close_link(old, CLOSE_DUPLICATE, "duplicate connection")

    def _on_conn_closed(self, conn: Connection) -> None:
        link = self._links.pop(conn, None)
        if link is None:
            return
        link.cancel_timers()
        peer = link.peer_id
        links = self._peer_links.get(peer or "")
        if link.replaced or peer is None or not links or link not in links:
            return
        was_active = links[-1] is link
        links.remove(link)
        if links:  # another link to the same peer carries on
            if was_active:
                self._table.set_connection(peer, links[-1].conn)
            return
        del self._peer_links[peer]
        if self._stopping:
            return
        final = link.goodbye or link.deliberate or (
            conn.closed_by_peer and conn.close_code in _FINAL_CLOSE_CODES
        ) or (link.auth is not None and link.auth.grant == "client")  # it redials us, not we it
        if final:
            self._forget_peer(peer, "left the mesh" if link.goodbye
                              or conn.close_code == CLOSE_GOODBYE else "dropped")
            return
        if peer not in self._table:
            return
        if conn.closed_by_peer and conn.close_code == CLOSE_DUPLICATE:
            # The peer kept another connection whose authentication has not finished on
            # our side yet (its "ok" and this close race on different connections).
            self._spawn(self._await_replacement(peer, conn), "mesh-duplicate")
            return
        self._lost(peer, conn)

    async def _await_replacement(self, peer: str, old: Connection) -> None:
        await self._wait_active(peer, self.settings.auth_timeout_s)
        if peer not in self._peer_links and not self._stopping and peer in self._table:
            self._lost(peer, old)

    def _lost(self, peer: str, conn: Connection) -> None:
        log.info("lost connection to %s (%s); reconnecting for up to %g s", peer[:12],
                 conn.close_reason or f"code {conn.close_code}",
                 self.settings.reconnect_timeout_s)
        self._table.mark_disconnected(peer)
        if peer not in self._reconnecting:
            self._reconnecting[peer] = self._spawn(self._reconnect(peer, conn), "mesh-reconnect")

    async def _reconnect(self, peer: str, old: Connection) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_timeout_s
        backoff = 0.2
        try:
            while not self._stopping and peer not in self._peer_links:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                info = self._table.get(peer)
                addrs = list(info.addrs) if info is not None else []
                observed = format_addr(*old.remote_address)
                if observed not in addrs:
                    addrs.append(observed)
                try:
                    await self._dial_addrs(peer, addrs,
                                           min(remaining, self.settings.reconnect_attempt_s))
                except _DialFailed as err:
                    log.debug("reconnect to %s: %s", peer[:12], err)
                if peer in self._peer_links:
                    break
                # Back off, but wake at once if the peer dials us.
                remaining = deadline - loop.time()
                if remaining > 0:
                    await self._wait_active(peer, min(backoff, remaining))
                backoff = min(backoff * 2, 2.0)
            if peer not in self._peer_links and not self._stopping:
                self._forget_peer(peer, f"unreachable for {self.settings.reconnect_timeout_s:g} s")
        finally:
            self._reconnecting.pop(peer, None)

    async def _wait_active(self, peer: str, timeout: float) -> None:
        """Wait up to `timeout` s for a link to `peer` to be adopted (either direction)."""
        if peer in self._peer_links:
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._active_waiters.setdefault(peer, [])
        waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._active_waiters.get(peer) is waiters:
                del self._active_waiters[peer]

    async def _wait_for_announcement(self, peer: str, timeout: float) -> None:
        if peer in self._table:
            return
        with self._table.subscribe() as sub, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while peer not in self._table:
                    await sub.get()

    def _forget_peer(self, peer: str, reason: str) -> None:
        task = self._reconnecting.get(peer)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._table.remove(peer) is not None:
            log.info("peer %s removed: %s", peer[:12], reason)
            self._schedule_broadcast()

    # ------------------------------------------------------------------ streams

    async def _serve_stream(self, link: _Link, stream: Stream) -> None:
        peer = link.peer_id
        assert peer is not None
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                head = await stream.readexactly(1)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            stream.abort(RESET_REFUSED)
            return
        kind = head[0]
        if kind == StreamType.GOSSIP:
            await self._read_gossip(link, stream)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._refusals.info(f"type {peer}", "peer %s opened a stream of unknown type %d; "
                          "refused", peer[:12], kind)
            stream.abort(RESET_REFUSED)
            return
        if link.auth is not None and link.auth.grant == "client" \
                and kind not in self._client_types:
            self._refusals.warning(f"grant {peer}", "peer %s (client invite) opened a stream of "
                             "type %d, which only members may open; refused", peer[:12], kind)
            stream.abort(RESET_REFUSED)
            return
        try:
            result = handler(peer, stream)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            stream.abort()
            raise
        except ConnectionError as err:
            log.debug("stream type %d from %s ended: %s", kind, peer[:12], err)
            stream.abort()
        except Exception:
            log.exception("handler for stream type %d from %s failed", kind, peer[:12])
            stream.abort()

    # ------------------------------------------------------------------ gossip

    async def _start_gossip(self, link: _Link) -> None:
        try:
            stream = await link.conn.open_stream()
            stream.write_nowait(bytes((StreamType.GOSSIP,)))
        except ConnectionError as err:
            log.debug("no gossip stream to %s: %s", (link.peer_id or "?")[:12], err)
            return
        link.gossip_out = stream
        self._send_state(link)
        # First ping a moment later: right now the peer is busy setting the link up, and
        # that would inflate the first sample. Until then rtt_ms falls back to QUIC's.
        link.ping_timer = asyncio.get_running_loop().call_later(
            min(1.0, self.settings.ping_interval_s), self._send_ping, link
        )

    def _send(self, link: _Link, message: dict[str, Any]) -> None:
        stream = link.gossip_out
        if stream is None or link.conn.is_closed:
            return
        try:
            stream.write_nowait(encode_frame(message))
        except (ConnectionError, FrameError) as err:
            log.debug("gossip to %s failed: %s", (link.peer_id or "?")[:12], err)

    def _send_state(self, link: _Link) -> None:
        hints = [  # client-invite peers accept no connections: nobody should dial them
            PeerHint(info.node_id, info.addrs)
            for info in self._table.values()
            if info.connected and info.node_id != link.peer_id and info.addrs
            and info.grant == "member"
        ]
        self._send(link, state_message(self._announcement, hints))

    def _send_ping(self, link: _Link) -> None:
        if link.conn.is_closed or self._stopping:
            return
        silent = time.monotonic() - link.last_heard
        if silent > self.settings.silence_timeout_s:
            # A killed peer sends nothing, not even a close: QUIC alone would wait for its
            # 120 s idle timeout. Treat the silence as a lost connection (reconnect follows).
            log.info("nothing from %s for %.0f s", (link.peer_id or "?")[:12], silent)
            link.conn.abort()
            return
        loop = asyncio.get_running_loop()
        link.ping_n += 1
        link.pings[link.ping_n] = loop.time()
        while len(link.pings) > 8:
            link.pings.pop(next(iter(link.pings)))
        self._send(link, ping_message(link.ping_n, time.time()))
        link.ping_timer = loop.call_later(self.settings.ping_interval_s, self._send_ping, link)

    def _schedule_broadcast(self) -> None:
        if self._broadcast_handle is None and not self._stopping:
            loop = asyncio.get_running_loop()
            self._broadcast_handle = loop.call_soon(self._broadcast)

    def _broadcast(self) -> None:
        self._broadcast_handle = None
        for link in self._all_peer_links():
            self._send_state(link)

    async def _read_gossip(self, link: _Link, stream: Stream) -> None:
        peer = link.peer_id
        assert peer is not None
        try:
            while True:
                message = await read_frame(stream)
                if message is None:
                    return
                link.last_heard = time.monotonic()
                parsed = parse_gossip(message, peer)
                if isinstance(parsed, StateMsg):
                    self._on_state(link, parsed)
                elif isinstance(parsed, PingMsg):
                    self._on_ping(link, parsed)
                elif isinstance(parsed, GoodbyeMsg):
                    self._on_goodbye(link)
                    return
        except (FrameError, GossipError) as err:
            log.warning("bad gossip from %s: %s; dropping the connection", peer[:12], err)
            self._close_link(link, CLOSE_PROTOCOL_ERROR, "bad gossip")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            stream.close()

    def _on_state(self, link: _Link, msg: StateMsg) -> None:
        peer = link.peer_id
        assert peer is not None
        if self._active_link(peer) is not link:
            return  # a duplicate on its way out; the newest link carries the same state
        grant: Grant = link.auth.grant if link.auth is not None else "member"
        announcement = msg.announcement
        addrs = list(announcement["addrs"])
        if grant == "client":
            # A client invite grants the API tunnel and nothing else: whatever it claims,
            # it is a client with no memory, no model and no say in the election.
            announcement, addrs = clamp_client(announcement), []
        else:
            observed = format_addr(*link.conn.remote_address)
            if observed not in addrs and len(addrs) < MAX_ADDRS:
                addrs.append(observed)
        known = peer in self._table
        self._table.upsert(peer, announcement, link.conn, addrs, grant)
        if not known:
            self._schedule_broadcast()  # everyone else should learn of the newcomer
        if grant == "member":  # a client's hints would make us dial where it says
            for hint in msg.peers:
                self._maybe_dial(hint)

    def _on_ping(self, link: _Link, msg: PingMsg) -> None:
        if not msg.pong:
            self._send(link, ping_message(msg.n, msg.ts, pong=True))
            return
        sent = link.pings.pop(msg.n, None)
        if sent is not None and link.peer_id is not None:
            rtt_ms = (asyncio.get_running_loop().time() - sent) * 1000.0
            self._table.set_rtt(link.peer_id, rtt_ms)

    def _on_goodbye(self, link: _Link) -> None:
        peer = link.peer_id
        assert peer is not None
        for each in self._peer_links.get(peer, [link]):
            each.goodbye = True
        link.goodbye = True
        self._forget_peer(peer, "left the mesh")
        for each in list(self._peer_links.get(peer, [link])):
            self._close_link(each, CLOSE_GOODBYE, "goodbye")

    def _maybe_dial(self, hint: PeerHint) -> None:
        peer = hint.node_id
        if (
            self._stopping
            or peer == self.node_id
            or peer in self._peer_links
            or peer in self._dialing
            or peer in self._reconnecting
            or not hint.addrs
        ):
            return
        loop = asyncio.get_running_loop()
        failed_at = self._dial_failed_at.get(peer)
        if failed_at is not None and loop.time() - failed_at < self.settings.redial_backoff_s:
            return
        # Both ends often learn of each other at once; let the smaller id dial first.
        delay = 0.0 if self.node_id < peer else self.settings.gossip_dial_delay_s
        self._dialing[peer] = self._spawn(self._dial_hint(hint, delay), "mesh-dial")

    async def _dial_hint(self, hint: PeerHint, delay: float) -> None:
        peer = hint.node_id
        try:
            if delay > 0:
                await self._wait_active(peer, delay)
            if peer in self._peer_links or self._stopping:
                return
            await self._dial_addrs(peer, hint.addrs, self.settings.dial_timeout_s)
        except _DialFailed as err:
            if peer not in self._peer_links:
                log.info("could not reach %s (learned by gossip): %s", peer[:12], err)
                self._dial_failed_at[peer] = asyncio.get_running_loop().time()
        finally:
            self._dialing.pop(peer, None)

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("mesh task %s failed", task.get_name(), exc_info=exc)


# ---------------------------------------------------------------------- helpers


def _token_addrs(bind_host: str, port: int, advertise: list[str]) -> list[str]:
    """Addresses for our token: --advertise first, then the bound or local addresses."""
    addrs = list(advertise)
    if bind_host in ("0.0.0.0", "::", ""):
        addrs.extend(format_addr(ip, port) for ip in _local_ips())
        addrs.append(format_addr("127.0.0.1", port))
    else:
        addrs.append(format_addr(bind_host, port))
    return list(dict.fromkeys(addrs))[:MAX_ADDRS]


def _local_ips() -> list[str]:
    """This host's primary IPv4 address, found without sending a packet (connecting a UDP
    socket only picks a route)."""
    ips: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 9))
        ip = s.getsockname()[0]
        if ip and not ip.startswith("127.") and ip != "0.0.0.0":
            ips.append(ip)
    return ips


def _show_addr(conn: Connection) -> str:
    return format_addr(*conn.remote_address)


def _source(conn: Connection) -> str:
    """The remote host (not port): what a flood of refusals is counted by."""
    return str(conn.remote_address[0])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return f"refused: {exc}"
    if isinstance(exc, TransportError):
        text = str(exc)
        return text if len(text) < 200 else text[:197] + "..."
    return str(exc) or type(exc).__name__


__all__ = ["Mesh", "MeshError", "MeshJoinError", "MeshSettings", "PeerInfo", "StreamHandler"]
