"""Joining through invite tokens: try each usable token in turn, within one time budget;
within a token, its node and the members it names ("via") are dialled at once and the
first to answer wins.

A member's token carries the mesh secret, which becomes ours; a client invite carries a
credential for the API tunnel only (no secret). A token that fails leaves our credential
as it was.
"""

from __future__ import annotations

import asyncio
import time

from .dialler import DialFailed, Dialler
from .invites import InviteToken, TokenError, decode_token
from .state import MeshState

MIN_SHARE_S = 3.0  # each token but the last gets at least this long (or what is left)


def usable_tokens(tokens: list[str], own_id: str) -> tuple[list[tuple[str, InviteToken]],
                                                            list[str]]:
    """(label, token) for each token worth dialling, and why the others are not."""
    tried: list[str] = []
    usable: list[tuple[str, InviteToken]] = []
    for index, text in enumerate(tokens):
        label = f"token {index + 1}" if len(tokens) > 1 else "token"
        try:
            tok = decode_token(text)
        except TokenError as err:
            tried.append(f"{label}: {err}")
            continue
        if tok.node_id == own_id:
            tried.append(f"{label}: that is this node's own token")
            continue
        usable.append((label, tok))
    return usable, tried


def share(remaining: float, left: int) -> float:
    """The time one of `left` tokens may take out of `remaining` seconds."""
    return remaining if left == 1 else max(remaining / left, min(remaining, MIN_SHARE_S))


async def join_through(state: MeshState, dialler: Dialler, tokens: list[str],
                       deadline: float) -> str:
    """The node id joined through the first token that works by `deadline` (loop time);
    DialFailed listing every token and address tried otherwise."""
    loop = asyncio.get_running_loop()
    usable, tried = usable_tokens(tokens, state.node_id)
    original = (state.secret, state.invite)
    for index, (label, tok) in enumerate(usable):
        remaining = deadline - loop.time()
        if remaining <= 0:
            tried.append(f"{label}: not tried, out of time")
            continue
        if tok.invite is not None and tok.invite.expired(time.time()):
            tried.append(f"{label}: this {tok.invite.kind} invite has expired; ask for "
                         "a new one (mesh-llm invite)")
            continue
        if tok.invite is None:  # a member's token: its secret is the mesh's
            state.secret, state.invite = tok.secret, None
        elif tok.invite.kind == "client":  # a lite client: the invite, nothing more
            state.secret, state.invite = None, tok.invite
        try:
            return await _first(state, dialler, tok, share(remaining, len(usable) - index))
        except DialFailed as err:
            if tok.node_id in state.peer_links:  # it dialled us meanwhile
                return tok.node_id
            tried.extend(err.attempts)
            state.secret, state.invite = original
    state.secret, state.invite = original
    raise DialFailed(tried)


async def _targets(state: MeshState, tok: InviteToken) -> list[tuple[str, list[str]]]:
    """Whom to dial for `tok`, with which addresses: its node and via members, and (with
    --mdns, for a token that carries the secret) the members of its mesh on the LAN, whose
    LAN addresses go first."""
    targets: dict[str, list[str]] = {tok.node_id: list(tok.addrs)}
    for node, addrs in tok.via:
        targets.setdefault(node, list(addrs))
    if state.lan_members is not None and tok.secret:
        for node, addrs in await state.lan_members(tok.secret):
            if node != state.node_id:
                targets[node] = list(dict.fromkeys([*addrs, *targets.get(node, [])]))
    return list(targets.items())


async def _first(state: MeshState, dialler: Dialler, tok: InviteToken, timeout: float) -> str:
    """Dial the token's node and its via members at once; the first that answers wins.
    While we dial them, a connection they open to us is a punched one (punch.py)."""
    targets = await _targets(state, tok)
    marked = [node for node, _ in targets if state.punching.setdefault(node, "dial") == "dial"]
    tasks = [asyncio.ensure_future(dialler.dial(node, addrs, timeout, tok.invite))
             for node, addrs in targets]
    attempts: list[str] = []
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                return await next_done
            except DialFailed as err:
                attempts.extend(err.attempts)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in marked:
            if state.punching.get(node) == "dial":
                del state.punching[node]
    raise DialFailed(attempts)
