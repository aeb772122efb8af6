"""Dialling peers: an address list (join, hints), redialling after a loss, gossip hints.

QUIC handshakes go to every address of a peer at once; authentication runs on the first to
answer (then the next, if that one fails). Never two authentications in flight to the same
peer, so the acceptor never adopts a connection we are about to drop. An address of our
own is not dialled, and a server that shows our own certificate is this node itself: both
are said in one line instead of a failed authentication. A peer learned by gossip that
does not answer within `punch_after_s` is handed to `on_unreachable` (hole punching),
with the members that told us of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .addresses import remote
from .auth import AuthError, AuthResult, run_dialer
from .gossip import MAX_GOSSIPED_PEERS, PeerHint
from .invites import MAX_ADDRS, Invite, TokenError, parse_addr
from .protocol import StreamType
from .quic import CLOSE_AUTH_FAILED, CLOSE_SHUTDOWN, Connection, QuicTransport, TransportError
from .relay import is_virtual
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")

MAX_BACKOFF_S = 2.0


class DialFailed(Exception):
    """No address of a peer worked; `attempts` says why for each."""

    def __init__(self, attempts: list[str]) -> None:
        super().__init__("; ".join(attempts))
        self.attempts = attempts


class Dialler:
    """Outgoing connections. `register(conn, dialed)` makes a Link, `adopt(link, result)`
    takes an authenticated one into use (False: it closed meanwhile), `forget(peer,
    reason)` removes a peer for good."""

    def __init__(self, state: MeshState, *,
                 register: Callable[[Connection, bool], Link],
                 adopt: Callable[[Link, AuthResult], bool],
                 forget: Callable[[str, str], None]) -> None:
        self._state = state
        self._register = register
        self._adopt = adopt
        self._forget = forget
        self._locks: dict[str, asyncio.Lock] = {}
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._reconnecting: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._told_by: dict[str, list[str]] = {}  # peer → members whose gossip named it
        self.on_unreachable: Callable[[str, list[str]], None] | None = None
        self.lan_addrs: Callable[[str], list[str]] | None = None  # --mdns: a member's, there

    # ---------------------------------------------------------------- an address list

    async def dial(self, expected: str, addrs: list[str], timeout: float,
                   invite: Invite | None = None, replace: bool = False) -> str:
        """Connect to `expected` through any of `addrs`; returns its id once authenticated
        (with `invite`, or else our own credential). DialFailed if none works.

        One dial per peer at a time (a second caller waits, then finds it connected).
        `replace`: dial even though connected (a path found on the LAN); the new link
        replaces the old one (link_rule.py: the newest wins)."""
        lock = self._locks.setdefault(expected, asyncio.Lock())
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
        except TimeoutError:
            raise DialFailed([f"node {expected[:12]}: another dial is still running"]) \
                from None
        try:
            if expected in self._state.peer_links and not replace:
                return expected
            if expected == self._state.node_id:
                raise DialFailed([f"node {expected[:12]} is this node itself"])
            return await self._dial_locked(expected, addrs, timeout,
                                           invite or self._state.invite)
        finally:
            lock.release()
            if not lock.locked() and self._locks.get(expected) is lock:
                del self._locks[expected]

    async def _dial_locked(self, expected: str, addrs: list[str], timeout: float,
                           invite: Invite | None) -> str:
        transport = self._state.transport
        if transport is None or self._state.stopping:
            raise DialFailed(["mesh is stopping"])
        attempts: list[str] = []
        unique = []
        for addr in dict.fromkeys(addrs):
            if addr in self._state.own_addrs:
                attempts.append(f"{addr} (an address of this node itself)")
            else:
                unique.append(addr)
        if not unique:
            raise DialFailed(attempts or [f"node {expected[:12]}: no address known"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tasks = {
            asyncio.ensure_future(_handshake(transport, addr, timeout)): addr
            for addr in unique
        }
        used: set[Connection] = set()
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
                        attempts.append(f"{addr} ({describe(exc)})")
                        continue
                    conn = task.result()
                    used.add(conn)
                    try:
                        return await self._authenticate(conn, expected, deadline, invite)
                    except (AuthError, ConnectionError) as err:
                        self._state.refusals.warning(f"by {addr}", "refused by %s: %s", addr,
                                                     err)
                        attempts.append(f"{addr} ({describe(err)})")
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
        raise DialFailed(attempts)

    async def _authenticate(self, conn: Connection, expected: str, deadline: float,
                            invite: Invite | None) -> str:
        state = self._state
        loop = asyncio.get_running_loop()
        link = self._register(conn, True)
        try:
            if invite is None and state.secret is None:
                raise AuthError("this node holds neither a mesh secret nor an invite")
            if conn.server_cert_fingerprint == state.transport_fingerprint():
                raise AuthError("that address reaches this node itself")
            stream = await conn.open_stream(max(0.1, deadline - loop.time()))
            stream.write_nowait(bytes((StreamType.AUTH,)))
            result = await run_dialer(stream, state.identity, state.secret or b"",
                                      conn.server_cert_fingerprint, expected,
                                      max(0.1, deadline - loop.time()), invite=invite)
            stream.write_eof()
        except BaseException:
            state.close_link(link, CLOSE_AUTH_FAILED, "authentication failed")
            raise
        if result.secret is not None:  # a worker invite: we are a member now
            state.secret, state.invite = result.secret, None
        if not self._adopt(link, result):
            raise AuthError("connection closed right after authentication")
        return result.peer_id

    # ---------------------------------------------------------------- after a loss

    def lost(self, peer: str, conn: Connection) -> None:
        """The last connection to `peer` died unexpectedly: redial it for a while."""
        log.info("lost connection to %s (%s); reconnecting for up to %g s", peer[:12],
                 conn.close_reason or f"code {conn.close_code}",
                 self._state.settings.reconnect_timeout_s)
        self._state.table.mark_disconnected(peer)
        if peer not in self._reconnecting:
            self._reconnecting[peer] = self._state.spawn(self._reconnect(peer, conn),
                                                         "mesh-reconnect")

    def cancel_reconnect(self, peer: str) -> None:
        task = self._reconnecting.get(peer)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def await_replacement(self, peer: str, old: Connection) -> None:
        """The peer closed `old` as a duplicate: the one it kept should authenticate here
        soon; if it does not, treat `old` as lost."""
        state = self._state
        await state.wait_active(peer, state.settings.auth_timeout_s)
        if peer not in state.peer_links and not state.stopping and peer in state.table:
            self.lost(peer, old)

    async def _reconnect(self, peer: str, old: Connection) -> None:
        state = self._state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + state.settings.reconnect_timeout_s
        backoff = 0.2
        try:
            while not state.stopping and peer not in state.peer_links:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                info = state.table.get(peer)
                addrs = list(info.addrs) if info is not None else []
                if self.lan_addrs is not None:  # where the LAN says it is now, first
                    addrs = list(dict.fromkeys([*self.lan_addrs(peer), *addrs]))
                observed = remote(old)
                if observed not in addrs:
                    addrs.append(observed)
                try:
                    await self.dial(peer, addrs,
                                    min(remaining, state.settings.reconnect_attempt_s))
                except DialFailed as err:
                    log.debug("reconnect to %s: %s", peer[:12], err)
                if peer in state.peer_links:
                    break
                # Back off, but wake at once if the peer dials us.
                remaining = deadline - loop.time()
                if remaining > 0:
                    await state.wait_active(peer, min(backoff, remaining))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            if peer not in state.peer_links and not state.stopping:
                self._forget(peer, f"unreachable for {state.settings.reconnect_timeout_s:g} s")
        finally:
            self._reconnecting.pop(peer, None)

    # ---------------------------------------------------------------- hints

    def dial_known(self, peers: list[tuple[str, list[str]]]) -> None:
        """Dial (id, addresses) pairs in the background, skipping bad addresses."""
        for node_id, addrs in peers[:MAX_GOSSIPED_PEERS]:
            with contextlib.suppress(TokenError):
                self.maybe_dial(PeerHint(node_id,
                                         [a for a in addrs[:MAX_ADDRS] if parse_addr(a)]))

    def maybe_dial(self, hint: PeerHint, via: str | None = None) -> None:
        """Dial a peer someone (`via`) told us of, unless we have it, dial it, or failed
        lately."""
        state = self._state
        peer = hint.node_id
        if via is not None and peer != state.node_id:
            told = self._told_by.setdefault(peer, [])
            if via not in told:
                told.insert(0, via)
                del told[4:]
            while len(self._told_by) > MAX_GOSSIPED_PEERS:
                self._told_by.pop(next(iter(self._told_by)))
        if (
            state.stopping
            or peer == state.node_id
            or peer in state.peer_links
            or peer in self._dialing
            or peer in self._reconnecting
            or not hint.addrs
        ):
            return
        loop = asyncio.get_running_loop()
        failed_at = self._failed_at.get(peer)
        if failed_at is not None and loop.time() - failed_at < state.settings.redial_backoff_s:
            return
        # Both ends often learn of each other at once; let the smaller id dial first. A
        # lite client (no secret) is never dialled: it dials at once.
        delay = 0.0 if state.node_id < peer or state.secret is None \
            else state.settings.gossip_dial_delay_s
        self._dialing[peer] = state.spawn(self._dial_hint(hint, delay), "mesh-dial")

    def connected(self, peer: str) -> None:
        """A link to `peer` was adopted: a later hint may dial it again at once."""
        self._failed_at.pop(peer, None)

    async def _dial_hint(self, hint: PeerHint, delay: float) -> None:
        state = self._state
        peer = hint.node_id
        try:
            if delay > 0:
                await state.wait_active(peer, delay)
            if peer in state.peer_links or state.stopping:
                return
            timeout = state.settings.dial_timeout_s
            if self.on_unreachable is not None and self._told_by.get(peer):
                timeout = min(timeout, state.settings.punch_after_s)
            state.punching.setdefault(peer, "dial")
            await self.dial(peer, hint.addrs, timeout)
        except DialFailed as err:
            if peer not in state.peer_links:
                log.info("could not reach %s (learned by gossip): %s", peer[:12], err)
                self._failed_at[peer] = asyncio.get_running_loop().time()
                told = [p for p in self._told_by.get(peer, []) if p in state.peer_links]
                if told and self.on_unreachable is not None and not state.stopping:
                    self.on_unreachable(peer, told)
        finally:
            if state.punching.get(peer) == "dial":
                del state.punching[peer]
            self._dialing.pop(peer, None)


async def _handshake(transport: QuicTransport, addr: str, timeout: float) -> Connection:
    if is_virtual(addr):
        return await transport.connect_virtual(parse_addr(addr), timeout)
    try:
        host, port = parse_addr(addr)
    except TokenError as err:
        raise TransportError(str(err)) from None
    return await transport.connect(host, port, timeout)


def describe(exc: BaseException) -> str:
    """One short reason for a failed attempt, for the join error's list."""
    if isinstance(exc, AuthError):
        return f"refused: {exc}"
    if isinstance(exc, TransportError):
        text = str(exc)
        return text if len(text) < 200 else text[:197] + "..."
    return str(exc) or type(exc).__name__
