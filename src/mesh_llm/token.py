"""Invite tokens: URL-safe base64 (no padding) of a small versioned JSON.

A token names a node (its id), where to reach it (host:port list) and the mesh secret;
holding one is the right to join. Pure functions: no I/O, every input bounded and checked,
and `decode_token` raises nothing but `TokenError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field

from .errors import UserError
from .identity import is_node_id

TOKEN_VERSION = 1
SECRET_LEN = 32
MAX_TOKEN_LEN = 4096
MAX_ADDRS = 16
MAX_ADDR_LEN = 262  # "[" + 253-char host + "]:" + 5 digits, rounded

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class TokenError(UserError):
    """A token that cannot be used; the message is one precise line."""


@dataclass(frozen=True)
class InviteToken:
    """What a token carries. `addrs` are "host:port" strings, most preferred first."""

    node_id: str
    addrs: list[str] = field(default_factory=list)
    secret: bytes = b""
    version: int = TOKEN_VERSION


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
    _check_fields(token.node_id, token.addrs, token.secret)
    body = {
        "v": token.version,
        "id": token.node_id,
        "addrs": list(token.addrs),
        "secret": _b64encode(token.secret),
    }
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
    if version != TOKEN_VERSION:
        raise TokenError(f"token version {version} is not supported (this mesh-llm reads "
                         f"version {TOKEN_VERSION}); update mesh-llm or ask for a new token")
    node_id = body.get("id")
    addrs = body.get("addrs")
    secret_text = body.get("secret")
    if node_id is None:
        raise TokenError("token has no node id")
    if not isinstance(node_id, str):
        raise TokenError("token node id must be a string")
    if addrs is None:
        raise TokenError("token has no addresses")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise TokenError("token addresses must be a list of strings")
    if secret_text is None:
        raise TokenError("token has no mesh secret")
    if not isinstance(secret_text, str):
        raise TokenError("token mesh secret must be a string")
    if len(secret_text) > 2 * SECRET_LEN:
        raise TokenError(f"token mesh secret must be {SECRET_LEN} bytes")
    secret = _b64decode(secret_text, what="token mesh secret")
    _check_fields(node_id, addrs, secret)
    return InviteToken(node_id=node_id, addrs=list(addrs), secret=secret, version=version)


def _check_fields(node_id: object, addrs: object, secret: object) -> None:
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
