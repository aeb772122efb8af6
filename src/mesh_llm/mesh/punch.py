"""Hole punching: two members that cannot dial each other meet through one linked to both.

A member that cannot dial a peer it learned of asks the members that told it of the peer
for an introduction ("intro?"). The introducer sends each of the two the other's address
as it sees it (the NAT's outside) and a start a moment later; at the start the one with
the smaller id dials, the other sends small datagrams from its mesh socket to the dialler's
address, which opens its NAT's mapping for the dialler's QUIC packets. The handshake and
authentication are the ordinary ones; the link is labelled "punched".

A relayed link asks again on a timer (link_move.py): an introduction for a peer we reach
only through a relay punches as above, and the punched link replaces the relayed one.

A link also counts as punched when it is accepted while we dial its peer ourselves (both
ends sending at once open both NATs); the label is gossiped, so both ends agree.

Every introduction is untrusted: only members may ask for or give one, addresses must be IP
literals that are not ours, and punches are bounded in number, rate and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .addresses import current, is_loopback, shareable
from .dialler import DialFailed
from .gossip import MAX_INTRO_ADDRS, Intro, IntroRequest, intro_message, intro_request
from .invites import parse_addr
from .observed import valid_observed
from .relay import is_virtual
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")

PUNCH_PAYLOAD = b"\x00"  # not a QUIC packet: every endpoint drops it unread
PUNCH_INTERVAL_S = 0.1
MAX_PUNCHES = 4  # introductions acted on at once
MAX_INTRODUCERS = 2  # members asked for one introduction
MAX_PAIRS = 256  # pairs remembered by an introducer (rate limit)

Dial = Callable[..., Awaitable[str]]  # (peer, addrs, timeout, replace=) → its id
OpenPath = Callable[[str, str, float], Awaitable[str]]  # (relay, peer, timeout) → address


# ------------------------------------------------------------------ pure decisions


def introductions(asker: str, asker_addrs: list[str], target: str, target_addrs: list[str],
                  delay_ms: int, asker_is_client: bool = False) -> tuple[Intro, Intro]:
    """(what the asker is told, what the target is told): each the other's addresses, the
    one the introducer sees first; the smaller id dials, or a lite client (which accepts
    no connection) always."""
    asker_dials = asker_is_client or asker < target
    to_asker = Intro(target, target_addrs[:MAX_INTRO_ADDRS], asker_dials, delay_ms)
    to_target = Intro(asker, asker_addrs[:MAX_INTRO_ADDRS], not asker_dials, delay_ms)
    return to_asker, to_target


def punch_targets(addrs: list[str], own: set[str]) -> list[str]:
    """The introduced addresses worth sending to: IP literals, not loopback, not ours."""
    out = []
    for addr in addrs:
        checked = valid_observed(addr)
        if checked is not None and checked not in own and checked not in out:
            out.append(checked)
    return out[:MAX_INTRO_ADDRS]


def link_kind(mode: str | None, dialed: bool) -> str:
    """How a newly adopted link's path was found, from what we were doing towards its peer
    (`mode`: "intro" while acting on an introduction, "dial" while dialling it ourselves)."""
    if mode == "intro" or (mode == "dial" and not dialed):
        return "punched"
    return "direct"


def remember_path(paths: dict[str, str], peer: str, addr: str, limit: int = MAX_PAIRS) -> None:
    """Note that the path to `peer` at `addr` was punched (bounded: oldest forgotten)."""
    paths.pop(peer, None)
    paths[peer] = addr
    while len(paths) > limit:
        paths.pop(next(iter(paths)))


def path_kind(paths: dict[str, str], peer: str, addr: str, mode: str | None,
              dialed: bool, relay: str | None = None) -> str:
    """A new link's kind: relayed when it runs over a relay's virtual path; punched when
    found by punching now (`link_kind`), or when it runs on a path to that peer that was
    punched before. Nothing on this machine is."""
    if relay is not None:
        return f"relayed (via {relay[:12]})"
    if is_loopback(addr):
        return "direct"
    kind = link_kind(mode, dialed)
    if kind == "direct" and paths.get(peer) == addr:
        return "punched"
    return kind


def recent(last: dict[Any, float], key: Any, now: float, window: float, limit: int) -> bool:
    """Whether `key` was seen within `window` s (if not, it is recorded now)."""
    seen = last.get(key)
    if seen is not None and now - seen < window:
        return True
    last.pop(key, None)
    last[key] = now
    while len(last) > limit:
        last.pop(next(iter(last)))
    return False


# ------------------------------------------------------------------ I/O


class Puncher:
    """Asks for, makes and acts on introductions. `dial(peer, addrs, timeout)` is the
    dialler's; each link's gossip session carries the messages."""

    def __init__(self, state: MeshState, dial: Dial, open_path: OpenPath | None = None) -> None:
        self._state = state
        self._dial = dial
        self._open_path = open_path
        self._asked: dict[str, float] = {}  # peer → when we last asked about it
        self._introduced: dict[frozenset[str], float] = {}  # pair → when introduced
        self.introductions = 0  # made for others (tests and status read it)
        self.unrelayed: dict[str, str] = {}  # peer → why neither punching nor a relay worked

    def unreachable(self, peer: str, told_by: list[str]) -> None:
        """We could not dial `peer`: ask the members that told us of it to introduce us."""
        state = self._state
        window = state.settings.punch_window_s
        if recent(self._asked, peer, time.monotonic(), window, MAX_PAIRS):
            return
        for member in told_by[:MAX_INTRODUCERS]:
            if self._send(member, intro_request(peer)):
                log.info("asking %s to introduce us to %s", member[:12], peer[:12])

    def on_message(self, link: Link, msg: IntroRequest | Intro) -> None:
        """A lite client may ask to be introduced to a member; only members introduce."""
        if link.peer_id is None or link.grant not in ("member", "client"):
            return
        if isinstance(msg, IntroRequest):
            self._introduce(link, msg.target)
        elif link.grant == "member":
            self._on_intro(link.peer_id, msg)

    def _introduce(self, asker_link: Link, target: str) -> None:
        state, asker = self._state, asker_link.peer_id
        assert asker is not None
        target_link = state.active_link(target)
        if target_link is None or target_link.grant != "member" or target in (asker,
                                                                              state.node_id):
            return
        pair = frozenset((asker, target))
        if recent(self._introduced, pair, time.monotonic(), state.settings.punch_window_s,
                  MAX_PAIRS):
            return
        info_a, info_t = state.table.get(asker), state.table.get(target)
        asker_addrs = [a for a in [current(asker_link.conn),
                                   *shareable(info_a.addrs if info_a else [], False)]
                       if not is_virtual(a)] or ["0.0.0.0:1"]
        target_addrs = [a for a in [current(target_link.conn),
                                    *shareable(info_t.addrs if info_t else [], False)]
                        if not is_virtual(a)] or ["0.0.0.0:1"]
        to_asker, to_target = introductions(asker, list(dict.fromkeys(asker_addrs)), target,
                                            list(dict.fromkeys(target_addrs)),
                                            state.settings.punch_delay_ms,
                                            asker_link.grant == "client")
        if self._send(asker, intro_message(to_asker)) and \
                self._send(target, intro_message(to_target)):
            self.introductions += 1
            log.info("introduced %s and %s", asker[:12], target[:12])

    def _on_intro(self, introducer: str, msg: Intro) -> None:
        state, peer = self._state, msg.peer
        if peer == state.node_id or state.linked_directly(peer) \
                or state.punching.get(peer) == "intro":
            return  # (a gossip dial of it may run: the introduction takes over; a relayed
            # link is moved to the punched one, link_move.py)
        if sum(1 for mode in state.punching.values() if mode == "intro") >= MAX_PUNCHES:
            return
        addrs = punch_targets(msg.addrs, state.own_addrs)
        relayed = peer in state.peer_links
        if not addrs and (relayed or not (msg.dial and self._open_path is not None)):
            return
        log.info("punching through to %s at %s (introduced by %s)", peer[:12],
                 ", ".join(addrs), introducer[:12])
        state.punching[peer] = "intro"
        state.spawn(self._punch(peer, addrs, msg.dial, msg.in_ms / 1000.0, introducer),
                    "mesh-punch")

    async def _punch(self, peer: str, addrs: list[str], dial: bool, delay: float,
                     introducer: str) -> None:
        state = self._state
        loop = asyncio.get_running_loop()
        try:
            relayed = peer in state.peer_links  # a retry: the new link replaces that one
            await state.wait_active(peer, delay, direct=True)
            end = loop.time() + state.settings.punch_window_s
            if dial:
                # The other end's first datagrams open its NAT; ours follow a moment later.
                await state.wait_active(peer, PUNCH_INTERVAL_S * 2, direct=True)
                if not state.linked_directly(peer) and addrs:
                    with contextlib.suppress(DialFailed):
                        await self._dial(peer, addrs, max(0.1, end - loop.time()),
                                         replace=relayed)
                if peer not in state.peer_links and self._open_path is not None:
                    await self._relay(peer, introducer)
                return
            targets = [parse_addr(a) for a in addrs]
            while not state.linked_directly(peer) and not state.stopping \
                    and loop.time() < end:
                transport = state.transport
                if transport is None:
                    return
                for host, port in targets:
                    transport.send_raw(PUNCH_PAYLOAD, (host, port))
                await state.wait_active(peer, PUNCH_INTERVAL_S, direct=True)
        except Exception as err:  # a failed punch is an outcome, not an error
            log.info("punching through to %s failed: %s", peer[:12], err)
        finally:
            if state.punching.get(peer) == "intro":
                del state.punching[peer]
            if not state.linked_directly(peer) and not state.stopping:
                log.info("no direct link to %s after punching", peer[:12])

    async def _relay(self, peer: str, relay: str) -> None:
        """Punching failed: ask the introducer to carry our packets to `peer`."""
        assert self._open_path is not None
        timeout = self._state.settings.dial_timeout_s
        try:
            addr = await self._open_path(relay, peer, timeout)
            await self._dial(peer, [addr], timeout)
        except (ConnectionError, DialFailed) as err:
            self.unrelayed[peer] = str(err)[:300]
            log.info("no relay to %s through %s: %s", peer[:12], relay[:12], err)
        else:
            self.unrelayed.pop(peer, None)

    def retry(self, peer: str, relay: str) -> bool:
        """Our link to `peer` runs through `relay`: ask it to introduce us again (a NAT
        that changed since may let a punch through now; link_move.py times it)."""
        return self._send(relay, intro_request(peer))

    def _send(self, peer: str, message: dict[str, Any]) -> bool:
        link = self._state.active_link(peer)
        if link is None or link.session is None:
            return False
        link.session.send(message)
        return True
