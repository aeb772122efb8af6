"""Mutual authentication on the first stream of every connection.

Both sides contribute a fresh 32-byte nonce. The transcript binds this one connection: both
node ids, both nonces and the fingerprint of the QUIC server's TLS certificate (a relay in
the middle would have to present its own certificate, so the two ends would sign different
transcripts). Each side then proves, for its role:

  * its key:   an Ed25519 signature over ("sig", role, transcript)
  * the mesh:  HMAC-SHA256 over ("mac", role, transcript), keyed with the mesh secret, or,
               when the dialer holds an invite, with that invite's capability (which the
               acceptor derives from the secret, see token.py)

Messages (frames on the AUTH stream):

    dialer   -> acceptor  {"t": "hello", "id", "nonce"[, "inv": {"k": kind, "exp": int}]}
    acceptor -> dialer    {"t": "hello", "id", "nonce", "sig", "mac"}   (acceptor's proof)
                          or {"t": "error", "reason"} (an expired invite)
    dialer   -> acceptor  {"t": "proof", "sig", "mac"}                  (dialer's proof)
    acceptor -> dialer    {"t": "ok"[, "secret"]}

What the dialer is granted follows from what it proved: the secret or a worker invite make
it a member (a worker invite's holder is then given the secret, inside the authenticated
QUIC connection, so that it can accept other members); a client invite grants only what a
lite client needs. The secret never crosses the wire otherwise.

Everything that decides is a pure function below; `run_dialer` / `run_acceptor` are the
thin I/O shells, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from .identity import Identity, is_node_id, verify
from .invites import INVITE_KINDS, MAX_EXPIRY, SECRET_LEN, Invite, capability
from .protocol import FrameError, read_frame, write_frame

AUTH_TIMEOUT_S = 5.0
NONCE_LEN = 32
FINGERPRINT_LEN = 32
AUTH_MAX_FRAME = 2048
_DOMAIN = b"mesh-llm/1 auth\x00"

Role = Literal["dialer", "acceptor"]
Grant = Literal["member", "client"]


class AuthError(Exception):
    """Authentication failed; the message says why in one line."""


@dataclass(frozen=True)
class Hello:
    node_id: str
    nonce: bytes
    invite_kind: str | None = None  # the dialer authenticates with an invite of this kind
    invite_expires: int = 0


@dataclass(frozen=True)
class Proof:
    sig: bytes
    mac: bytes


@dataclass(frozen=True)
class AuthResult:
    """Who is on the other end, and a digest that names this connection (both ends agree
    on it; used to pick one of two duplicate connections deterministically)."""

    peer_id: str
    dialer_id: str
    transcript_digest: bytes
    grant: Grant = "member"  # what the peer may do here (always "member" for who we dialled)
    secret: bytes | None = None  # dialer with a worker invite: the mesh secret it was given


# ---------------------------------------------------------------------------- pure logic


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_LEN)


def build_transcript(
    dialer_id: str,
    acceptor_id: str,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
    cert_fingerprint: bytes,
) -> bytes:
    """Fixed-layout transcript: no field can bleed into another."""
    if not (is_node_id(dialer_id) and is_node_id(acceptor_id)):
        raise AuthError("transcript needs two valid node ids")
    if len(dialer_nonce) != NONCE_LEN or len(acceptor_nonce) != NONCE_LEN:
        raise AuthError("transcript needs two 32-byte nonces")
    if len(cert_fingerprint) != FINGERPRINT_LEN:
        raise AuthError("transcript needs a 32-byte certificate fingerprint")
    return b"".join((
        _DOMAIN,
        bytes.fromhex(dialer_id),
        bytes.fromhex(acceptor_id),
        dialer_nonce,
        acceptor_nonce,
        cert_fingerprint,
    ))


def _labelled(kind: bytes, role: Role, transcript: bytes) -> bytes:
    return kind + b":" + role.encode() + b":" + transcript


def make_proof(identity: Identity, secret: bytes, role: Role, transcript: bytes) -> Proof:
    """This side's proof for `role`: key possession and mesh-secret knowledge."""
    return Proof(
        sig=identity.sign(_labelled(b"sig", role, transcript)),
        mac=hmac.new(secret, _labelled(b"mac", role, transcript), hashlib.sha256).digest(),
    )


def check_proof(
    peer_id: str, secret: bytes, role: Role, transcript: bytes, proof: Proof
) -> None:
    """Raise AuthError unless `proof` is `peer_id`'s valid proof for `role`."""
    if not verify(peer_id, proof.sig, _labelled(b"sig", role, transcript)):
        raise AuthError(f"node {peer_id[:12]} failed to prove its key")
    expected = hmac.new(secret, _labelled(b"mac", role, transcript), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, proof.mac):
        raise AuthError(f"node {peer_id[:12]} does not hold this mesh's secret "
                        "(a token from another mesh?)")


def transcript_digest(transcript: bytes) -> bytes:
    return hashlib.sha256(transcript).digest()


def hello_message(node_id: str, nonce: bytes, proof: Proof | None = None,
                  invite: Invite | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"t": "hello", "id": node_id, "nonce": nonce.hex()}
    if invite is not None:
        message["inv"] = {"k": invite.kind, "exp": invite.expires}
    if proof is not None:
        message["sig"] = proof.sig.hex()
        message["mac"] = proof.mac.hex()
    return message


def proof_message(proof: Proof) -> dict[str, Any]:
    return {"t": "proof", "sig": proof.sig.hex(), "mac": proof.mac.hex()}


def parse_hello(message: dict[str, Any] | None, own_id: str) -> Hello:
    """Validate a hello; refuses a connection to ourselves."""
    if message is None:
        raise AuthError("peer closed the auth stream before saying hello")
    if message.get("t") != "hello":
        raise AuthError(f"expected hello, got {_kind(message)}")
    node_id = message.get("id")
    if not is_node_id(node_id):
        raise AuthError("hello carries no valid node id")
    assert isinstance(node_id, str)
    nonce = _hex_field(message, "nonce", NONCE_LEN)
    if node_id == own_id:
        raise AuthError("connected to this node itself")
    inv = message.get("inv")
    if inv is None:
        return Hello(node_id=node_id, nonce=nonce)
    kind = inv.get("k") if isinstance(inv, dict) else None
    expires = inv.get("exp") if isinstance(inv, dict) else None
    if kind not in INVITE_KINDS or type(expires) is not int or not 0 <= expires < MAX_EXPIRY:
        raise AuthError("hello carries a malformed invite")
    return Hello(node_id=node_id, nonce=nonce, invite_kind=kind, invite_expires=expires)


def check_invite_time(hello: Hello, now: float) -> None:
    """Refuse an invite whose expiry has passed (the reason goes back to the dialer)."""
    if hello.invite_kind is not None and hello.invite_expires and now >= hello.invite_expires:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(hello.invite_expires))
        raise AuthError(f"this {hello.invite_kind} invite expired at {when}; ask for a new one "
                        "(mesh-llm invite)")


def acceptor_key(secret: bytes, hello: Hello) -> bytes:
    """The MAC key for this dialer: the secret, or the capability of the invite it claims."""
    if hello.invite_kind is None:
        return secret
    return capability(secret, hello.invite_kind, hello.invite_expires)


def grant_for(hello: Hello) -> Grant:
    return "client" if hello.invite_kind == "client" else "member"


def ok_message(secret: bytes, hello: Hello) -> dict[str, Any]:
    """Admission; a worker invite's holder becomes a member and gets the secret."""
    if hello.invite_kind == "worker":
        return {"t": "ok", "secret": secret.hex()}
    return {"t": "ok"}


def handed_secret(verdict: dict[str, Any], invite: Invite) -> bytes | None:
    """The secret a worker invite's holder was given, checked against its capability (a
    member could not hand a wrong one by mistake without this being caught)."""
    if invite.kind != "worker":
        return None
    secret = _hex_field(verdict, "secret", SECRET_LEN)
    if not hmac.compare_digest(capability(secret, invite.kind, invite.expires), invite.cap):
        raise AuthError("the mesh secret handed over does not match the invite")
    return secret


def parse_proof(message: dict[str, Any] | None) -> Proof:
    """Pull sig/mac out of a hello (acceptor) or proof (dialer) message."""
    if message is None:
        raise AuthError("peer closed the auth stream before its proof")
    return Proof(sig=_hex_field(message, "sig", 64), mac=_hex_field(message, "mac", 32))


def _hex_field(message: dict[str, Any], name: str, length: int) -> bytes:
    value = message.get(name)
    if not isinstance(value, str) or len(value) != 2 * length:
        raise AuthError(f"auth message field {name!r} must be {length} bytes of hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AuthError(f"auth message field {name!r} is not hex") from None


def _kind(message: dict[str, Any]) -> str:
    kind = message.get("t")
    if kind == "error":
        reason = message.get("reason")
        return f"a refusal: {reason[:120]}" if isinstance(reason, str) else "a refusal"
    return repr(kind)[:40]


# ---------------------------------------------------------------------------- I/O shells

_IO_ERRORS = (TimeoutError, FrameError, ConnectionError, asyncio.IncompleteReadError)


def _io_failure(err: BaseException, timeout: float, peer: str | None = None) -> AuthError:
    """One line for what went wrong on the auth stream; `peer` is named on the accepting
    side (the dialer's own messages name the peer it expected)."""
    if isinstance(err, TimeoutError):
        who = f"{peer} did not authenticate" if peer else "authentication did not finish"
        return AuthError(f"{who} within {timeout:g} s")
    if isinstance(err, FrameError):
        return AuthError(f"bad auth frame{f' from {peer}' if peer else ''}: {err}")
    if isinstance(err, asyncio.IncompleteReadError):
        return AuthError("auth stream ended early")
    return AuthError(f"connection lost during authentication: {err}")


async def run_dialer(
    stream: Any,
    identity: Identity,
    secret: bytes,
    cert_fingerprint: bytes,
    expected_peer: str | None = None,
    timeout: float = AUTH_TIMEOUT_S,
    *,
    invite: Invite | None = None,
) -> AuthResult:
    """Dialer side, on a stream whose type byte was already written. With `invite`, the
    proof is keyed with its capability instead of `secret`."""
    key = invite.cap if invite is not None else secret
    handed: bytes | None = None
    try:
        async with asyncio.timeout(timeout):
            nonce = new_nonce()
            await write_frame(stream, hello_message(identity.node_id, nonce, invite=invite),
                              AUTH_MAX_FRAME)
            reply = await read_frame(stream, AUTH_MAX_FRAME)
            hello = parse_hello(reply, identity.node_id)
            if expected_peer is not None and hello.node_id != expected_peer:
                raise AuthError(f"expected node {expected_peer[:12]}, "
                                f"found node {hello.node_id[:12]}")
            transcript = build_transcript(
                identity.node_id, hello.node_id, nonce, hello.nonce, cert_fingerprint
            )
            check_proof(hello.node_id, key, "acceptor", transcript, parse_proof(reply))
            proof = make_proof(identity, key, "dialer", transcript)
            await write_frame(stream, proof_message(proof), AUTH_MAX_FRAME)
            verdict = await read_frame(stream, AUTH_MAX_FRAME)
            if verdict is None or verdict.get("t") != "ok":
                what = "no answer" if verdict is None else _kind(verdict)
                raise AuthError(f"node {hello.node_id[:12]} refused us ({what})")
            if invite is not None:
                handed = handed_secret(verdict, invite)
    except _IO_ERRORS as err:
        raise _io_failure(err, timeout) from None
    return AuthResult(hello.node_id, identity.node_id, transcript_digest(transcript),
                      secret=handed)


async def run_acceptor(
    stream: Any,
    identity: Identity,
    secret: bytes,
    cert_fingerprint: bytes,
    timeout: float = AUTH_TIMEOUT_S,
    *,
    now: float | None = None,
) -> AuthResult:
    """Acceptor side, on a stream whose type byte (AUTH) was already read."""
    peer = "peer"
    try:
        async with asyncio.timeout(timeout):
            hello = parse_hello(await read_frame(stream, AUTH_MAX_FRAME), identity.node_id)
            peer = hello.node_id[:12]
            try:
                check_invite_time(hello, time.time() if now is None else now)
            except AuthError as err:
                await write_frame(stream, {"t": "error", "reason": str(err)}, AUTH_MAX_FRAME)
                raise
            key = acceptor_key(secret, hello)
            nonce = new_nonce()
            transcript = build_transcript(
                hello.node_id, identity.node_id, hello.nonce, nonce, cert_fingerprint
            )
            own = make_proof(identity, key, "acceptor", transcript)
            await write_frame(stream, hello_message(identity.node_id, nonce, own),
                              AUTH_MAX_FRAME)
            message = await read_frame(stream, AUTH_MAX_FRAME)
            if message is not None and message.get("t") != "proof":
                raise AuthError(f"expected proof from {peer}, got {_kind(message)}")
            check_proof(hello.node_id, key, "dialer", transcript, parse_proof(message))
            await write_frame(stream, ok_message(secret, hello), AUTH_MAX_FRAME)
    except _IO_ERRORS as err:
        raise _io_failure(err, timeout, peer) from None
    return AuthResult(hello.node_id, hello.node_id, transcript_digest(transcript),
                      grant=grant_for(hello))
