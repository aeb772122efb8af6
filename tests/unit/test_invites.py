"""Invites: what each kind grants, that one kind cannot be made into another, and expiry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from test_auth import ACCEPTOR, DIALER, FP, SECRET, pipe_pair

from mesh_llm.logutil import RateLimitedLog
from mesh_llm.mesh.announcement import (
    MAX_VRAM_BYTES,
    Announcement,
    AnnouncementError,
    clamp_client,
)
from mesh_llm.mesh.auth import AuthError, run_acceptor, run_dialer
from mesh_llm.mesh.invites import (
    Invite,
    TokenError,
    capability,
    decode_token,
    encode_token,
    mint_invite,
    parse_duration,
)

NODE = "cd" * 32
ADDRS = ["127.0.0.1:4000"]


def test_invite_round_trip_and_kinds() -> None:
    for kind in ("client", "worker"):
        tok = mint_invite(NODE, ADDRS, SECRET, kind, expires=1_900_000_000)
        back = decode_token(encode_token(tok))
        assert back == tok and back.kind == kind and back.secret == b""
        assert back.invite is not None and back.invite.expires == 1_900_000_000
    # a version-1 token (the secret itself) is a worker invite that never expires
    assert decode_token(encode_token(dataclasses.replace(
        mint_invite(NODE, ADDRS, SECRET, "worker"), invite=None, secret=SECRET,
        version=1))).kind == "worker"


def test_capabilities_are_bound_to_kind_and_expiry() -> None:
    caps = {capability(SECRET, k, e) for k in ("client", "worker") for e in (0, 5, 6)}
    assert len(caps) == 6
    assert SECRET not in caps
    assert capability(b"x" * 32, "client", 0) != capability(SECRET, "client", 0)
    with pytest.raises(ValueError):
        capability(SECRET, "host", 0)


def test_malformed_invites_are_one_line_errors() -> None:
    text = encode_token(mint_invite(NODE, ADDRS, SECRET, "client"))
    import base64
    import json

    body = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    for change, message in (({"kind": "host"}, "invite kind"), ({"exp": -1}, "expiry"),
                            ({"exp": "soon"}, "expiry"), ({"cap": "AAAA"}, "capability"),
                            ({"cap": None}, "capability")):
        bad = base64.urlsafe_b64encode(json.dumps({**body, **change}).encode()).decode()
        with pytest.raises(TokenError, match=message):
            decode_token(bad.rstrip("="))


async def handshake(invite: Invite | None, *, now: float | None = None, secret: bytes = SECRET):
    d, a = pipe_pair()

    async def acceptor():  # type: ignore[no-untyped-def]
        try:
            return await run_acceptor(a, ACCEPTOR, SECRET, FP, timeout=1, now=now)
        finally:
            a.close()

    return await asyncio.gather(
        run_dialer(d, DIALER, secret, FP, timeout=1, invite=invite), acceptor(),
        return_exceptions=True)


async def test_client_invite_grants_client_only_and_no_secret() -> None:
    invite = mint_invite(NODE, ADDRS, SECRET, "client").invite
    dialer, acceptor = await handshake(invite, secret=b"")
    assert acceptor.grant == "client" and dialer.secret is None


async def test_worker_invite_makes_a_member_that_learns_the_secret() -> None:
    invite = mint_invite(NODE, ADDRS, SECRET, "worker").invite
    dialer, acceptor = await handshake(invite, secret=b"")
    assert acceptor.grant == "member" and dialer.secret == SECRET


async def test_secret_holder_is_a_member() -> None:
    dialer, acceptor = await handshake(None)
    assert acceptor.grant == "member" and dialer.secret is None


async def test_client_invite_cannot_be_turned_into_a_worker_invite() -> None:
    client = mint_invite(NODE, ADDRS, SECRET, "client").invite
    assert client is not None
    for forged in (dataclasses.replace(client, kind="worker"),  # same capability, other kind
                   dataclasses.replace(client, expires=0 if client.expires else 99)):
        dialer, acceptor = await handshake(forged, secret=b"")
        assert isinstance(dialer, AuthError) and isinstance(acceptor, AuthError)
    # nor used as the secret itself
    dialer, acceptor = await handshake(None, secret=client.cap)
    assert isinstance(dialer, AuthError) and isinstance(acceptor, AuthError)


async def test_expired_invite_is_refused_with_a_reason() -> None:
    invite = mint_invite(NODE, ADDRS, SECRET, "client", expires=1000).invite
    dialer, acceptor = await handshake(invite, now=1000.0, secret=b"")
    assert isinstance(acceptor, AuthError) and "expired" in str(acceptor)
    assert isinstance(dialer, AuthError) and "expired" in str(dialer)
    dialer, acceptor = await handshake(invite, now=999.0, secret=b"")
    assert acceptor.grant == "client"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30m", 1800), ("24h", 86400),
                                                ("7d", 604800), ("2w", 1209600), (" 5s ", 5)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "5y", "h", "1.5h", "9999999999h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(TokenError, match="bad duration"):
        parse_duration(text)


def test_vram_claims_are_bounded() -> None:
    ok = Announcement(NODE, vram_bytes=MAX_VRAM_BYTES).checked()
    assert ok.vram_bytes == MAX_VRAM_BYTES
    for claim in (MAX_VRAM_BYTES + 1, 2**61):
        with pytest.raises(AnnouncementError, match="more than one machine"):
            Announcement.from_wire({**ok.to_wire(), "vram_bytes": claim}, NODE)


def test_a_client_is_clamped_whatever_it_claims() -> None:
    claim = Announcement(NODE, role="host", vram_bytes=10**12, models=("m",), ready=True,
                         model_file=True, version="9").checked()
    clamped = clamp_client(claim).checked()
    assert clamped.role == "client" and clamped.vram_bytes == 0
    assert clamped.models == () and not clamped.ready and not clamped.model_file
    assert clamped.version == "9"


def test_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), window_s=60, clock=lambda: now[0],
                             max_keys=2)
    with caplog.at_level(logging.INFO, "t"):
        assert limited.warning("a", "refused %s", "a")
        for _ in range(5):
            assert not limited.warning("a", "refused %s", "a")
        assert limited.warning("b", "refused %s", "b")  # another source is not held back
        now[0] = 61.0
        assert limited.warning("a", "refused %s", "a")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "refused b", "refused a (5 more like this in the last 60 s)"]
    for key in "cdefg":  # bounded memory
        limited.warning(key, "x")
    assert len(limited._seen) == 2
