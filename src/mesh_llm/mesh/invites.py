"""Invite tokens: URL-safe base64 (no padding) of a small versioned JSON.

A token names a node (its id) and where to reach it (host:port list), optionally a few
other members that others have reached ("via": so an invite printed behind a NAT still
lets a stranger in through a reachable member), and carries a credential; holding one is
the right to join:

* version 1 carries the mesh secret itself: a full member (what `token` prints; such a
  token never expires and is how a node restarted with the same home rejoins);
* version 2 is an *invite*: a capability derived from the secret for one kind of member
  (`worker`: may serve, and learns the secret once admitted; `client`: the API tunnel only)
  and an optional expiry. HMAC is one-way, so a client invite cannot be turned into a worker
  invite or into the secret, and changing the kind or the expiry breaks the capability.

Pure functions: no I/O, every input bounded and checked, and `decode_token` raises nothing
but `TokenError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import UserError
from .identity import is_node_id

TOKEN_VERSION = 1  # carries the mesh secret
INVITE_VERSION = 2  # carries a capability for one kind of member
SECRET_LEN = 32
CAP_LEN = 32
INVITE_KINDS = ("worker", "client")
MAX_EXPIRY = 2**40  # unix seconds; far beyond any real date, small enough for JSON ints
_CAP_DOMAIN = b"mesh-llm/1 invite\x00"
MAX_TOKEN_LEN = 4096
MAX_ADDRS = 16
MAX_VIA = 3  # other members a token names
MAX_ADDR_LEN = 262  # "[" + 253-char host + "]:" + 5 digits, rounded

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class TokenError(UserError):
    """A token that cannot be used; the message is one precise line."""


InviteKind = Literal["worker", "client"]


@dataclass(frozen=True)
class Invite:
    """A capability for one kind of member; `expires` is unix seconds, 0 for never."""

    kind: InviteKind
    expires: int
    cap: bytes

    def expired(self, now: float) -> bool:
        return self.expires != 0 and now >= self.expires


@dataclass(frozen=True)
class InviteToken:
    """What a token carries. `addrs` are "host:port" strings, most preferred first.
    Either `secret` (version 1, a full member) or `invite` (version 2) is set."""

    node_id: str
    addrs: list[str] = field(default_factory=list)
    secret: bytes = b""
    version: int = TOKEN_VERSION
    invite: Invite | None = None
    via: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (member id, its addresses)

    @property
    def kind(self) -> InviteKind:
        """What holding this token grants: a v1 token is a worker invite that never expires."""
        return "worker" if self.invite is None else self.invite.kind


def capability(secret: bytes, kind: str, expires: int) -> bytes:
    """The invite capability for (kind, expires): only a holder of the secret can make it."""
    if kind not in INVITE_KINDS:
        raise ValueError(f"invite kind must be one of {', '.join(INVITE_KINDS)}")
    if type(expires) is not int or not 0 <= expires < MAX_EXPIRY:
        raise ValueError("invite expiry must be unix seconds (0 for never)")
    message = _CAP_DOMAIN + kind.encode() + b"\x00" + expires.to_bytes(8, "big")
    return hmac.new(secret, message, hashlib.sha256).digest()


def mint_invite(node_id: str, addrs: list[str], secret: bytes, kind: InviteKind,
                expires: int = 0,
                via: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> InviteToken:
    """A version-2 invite to the mesh whose secret is `secret`, reached through `node_id`
    (or one of the `via` members)."""
    invite = Invite(kind, expires, capability(secret, kind, expires))
    return InviteToken(node_id, list(addrs), version=INVITE_VERSION, invite=invite, via=via)


_DURATION_RE = re.compile(r"(\d{1,9})\s*([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """"90", "30m", "24h", "7d", "2w" → seconds (TokenError for anything else)."""
    match = _DURATION_RE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise TokenError(f"bad duration {_show(text)}: use a positive number with s, m, h, d "
                         "or w (e.g. 24h)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def new_secret() -> bytes:
    """A fresh random mesh secret (a node that starts a mesh makes one)."""
    return secrets.token_bytes(SECRET_LEN)


def parse_addr(addr: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into (host, port); TokenError when malformed."""
    if not isinstance(addr, str) or not addr or len(addr) > MAX_ADDR_LEN:
        raise TokenError(f"bad address {_show(addr)}: expected HOST:PORT")
    if addr.startswith("["):
        close = addr.find("]")
        if close < 0 or addr[close + 1 : close + 2] != ":":
            raise TokenError(f"bad address {_show(addr)}: expected [IPv6]:PORT")
        host, port_text = addr[1:close], addr[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TokenError(
                f"bad address {_show(addr)}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = addr.rpartition(":")
        if not sep or not host:
            raise TokenError(f"bad address {_show(addr)}: expected HOST:PORT")
        if ":" in host:
            raise TokenError(f"bad address {_show(addr)}: write IPv6 hosts as [ADDR]:PORT")
        if not _HOSTNAME_RE.fullmatch(host):
            raise TokenError(f"bad address {_show(addr)}: {host!r} is not a host name or IP")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise TokenError(f"bad address {_show(addr)}: port must be a number 1-65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise TokenError(f"bad address {_show(addr)}: port must be a number 1-65535")
    return host, port


def format_addr(host: str, port: int) -> str:
    """The inverse of `parse_addr` (brackets IPv6 hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode_token(token: InviteToken) -> str:
    """Serialize a token; validates it first so a bad token is never printed."""
    body: dict[str, object] = {"v": token.version, "id": token.node_id,
                               "addrs": list(token.addrs)}
    if token.via:
        _check_via(token.via, token.node_id)
        body["via"] = [{"id": node, "addrs": list(addrs)} for node, addrs in token.via]
    if token.invite is None:
        _check_fields(token.node_id, token.addrs, token.secret)
        body["secret"] = _b64encode(token.secret)
    else:
        invite = token.invite
        _check_fields(token.node_id, token.addrs, None)
        _check_invite(invite.kind, invite.expires, invite.cap)
        body.update(v=INVITE_VERSION, kind=invite.kind, exp=invite.expires,
                    cap=_b64encode(invite.cap))
    text = _b64encode(json.dumps(body, separators=(",", ":")).encode())
    if len(text) > MAX_TOKEN_LEN:
        raise TokenError(f"token would be {len(text)} characters; the limit is {MAX_TOKEN_LEN}")
    return text


def decode_token(text: str) -> InviteToken:
    """Parse and validate a token; raises only `TokenError` with a one-line reason."""
    if not isinstance(text, str):
        raise TokenError("token must be a string")
    text = text.strip()
    if not text:
        raise TokenError("token is empty")
    if len(text) > MAX_TOKEN_LEN:
        raise TokenError(f"token is too long ({len(text)} characters; the limit is "
                         f"{MAX_TOKEN_LEN})")
    raw = _b64decode(text, what="token")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TokenError("token is not valid: its content is not JSON") from None
    if not isinstance(body, dict):
        raise TokenError("token is not valid: its content is not a JSON object")
    version = body.get("v")
    if type(version) is not int:
        raise TokenError("token has no version number")
    if version not in (TOKEN_VERSION, INVITE_VERSION):
        raise TokenError(f"token version {version} is not supported (this mesh-llm reads "
                         f"versions {TOKEN_VERSION} and {INVITE_VERSION}); update mesh-llm or "
                         "ask for a new token")
    node_id = body.get("id")
    addrs = body.get("addrs")
    if node_id is None:
        raise TokenError("token has no node id")
    if not isinstance(node_id, str):
        raise TokenError("token node id must be a string")
    if addrs is None:
        raise TokenError("token has no addresses")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise TokenError("token addresses must be a list of strings")
    via = _parse_via(body.get("via", []), node_id)
    if version == INVITE_VERSION:
        return replace(_decode_invite(body, node_id, addrs), via=via)
    secret_text = body.get("secret")
    if secret_text is None:
        raise TokenError("token has no mesh secret")
    if not isinstance(secret_text, str):
        raise TokenError("token mesh secret must be a string")
    if len(secret_text) > 2 * SECRET_LEN:
        raise TokenError(f"token mesh secret must be {SECRET_LEN} bytes")
    secret = _b64decode(secret_text, what="token mesh secret")
    _check_fields(node_id, addrs, secret)
    return InviteToken(node_id=node_id, addrs=list(addrs), secret=secret, version=version,
                       via=via)


def _parse_via(raw: object, node_id: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The token's other members: at most MAX_VIA {"id", "addrs"} objects, all checked."""
    if not isinstance(raw, list) or len(raw) > MAX_VIA or not all(
            isinstance(item, dict) for item in raw):
        raise TokenError(f"token via must list at most {MAX_VIA} members")
    via = tuple((item.get("id"), item.get("addrs")) for item in raw)
    _check_via(via, node_id)
    return tuple((str(node), tuple(addrs)) for node, addrs in via)  # type: ignore[arg-type]


def _check_via(via: tuple[tuple[object, object], ...], node_id: object) -> None:
    if len(via) > MAX_VIA:
        raise TokenError(f"token via must list at most {MAX_VIA} members")
    for node, addrs in via:
        if node == node_id:
            raise TokenError("token via names the token's own node")
        _check_fields(node, list(addrs) if isinstance(addrs, list | tuple) else addrs, None)


def _decode_invite(body: dict[str, object], node_id: str, addrs: list[str]) -> InviteToken:
    kind, expires, cap_text = body.get("kind"), body.get("exp", 0), body.get("cap")
    if not isinstance(cap_text, str) or len(cap_text) > 2 * CAP_LEN:
        raise TokenError("invite has no valid capability")
    cap = _b64decode(cap_text, what="invite capability")
    _check_fields(node_id, addrs, None)
    _check_invite(kind, expires, cap)
    invite = Invite(kind, expires, cap)  # type: ignore[arg-type]  # checked just above
    return InviteToken(node_id=node_id, addrs=list(addrs), version=INVITE_VERSION,
                       invite=invite)


def _check_invite(kind: object, expires: object, cap: object) -> None:
    if kind not in INVITE_KINDS:
        raise TokenError(f"invite kind must be one of {', '.join(INVITE_KINDS)}")
    if type(expires) is not int or not 0 <= expires < MAX_EXPIRY:
        raise TokenError("invite expiry must be unix seconds (0 for never)")
    if not isinstance(cap, bytes) or len(cap) != CAP_LEN:
        raise TokenError(f"invite capability must be {CAP_LEN} bytes")


def _check_fields(node_id: object, addrs: object, secret: object) -> None:
    """Checks the common fields, and `secret` unless it is None (an invite has none)."""
    if not is_node_id(node_id):
        raise TokenError(f"bad node id {_show(node_id)}: expected 64 lowercase hex characters")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise TokenError("token addresses must be a list of strings")
    if not addrs:
        raise TokenError("token lists no address to reach the node")
    if len(addrs) > MAX_ADDRS:
        raise TokenError(f"token lists {len(addrs)} addresses; the limit is {MAX_ADDRS}")
    for addr in addrs:
        parse_addr(addr)
    if secret is None:
        return
    if not isinstance(secret, bytes):
        raise TokenError("token mesh secret must be bytes")
    if len(secret) != SECRET_LEN:
        raise TokenError(f"token mesh secret is {len(secret)} bytes; expected {SECRET_LEN}")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, *, what: str) -> bytes:
    text = text.rstrip("=")
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(f"{what} is not valid URL-safe base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"{what} is not valid URL-safe base64") from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
