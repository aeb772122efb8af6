"""The node's home dir: logs, keys, the mesh secret and a lock that says which process owns it.

The mesh secret is kept beside the node key (mode 0600) so that a node started again with
the same home and `--bind-port` has the same token and its old peers can reconnect to it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..mesh.identity import is_node_id
from ..mesh.invites import MAX_VIA

Via = tuple[tuple[str, tuple[str, ...]], ...]  # members an invite names besides us

LOCK_NAME = "mesh-llm.lock"
SECRET_NAME = "mesh.secret"
ADDRS_NAME = "node.json"  # where the running node can be reached: for `mesh-llm invite`
TRUSTED_HOSTS_NAME = "trusted_hosts"
PEERS_NAME = "peers.json"  # the mesh's members at last sight: redialled on the next start
SECRET_LEN = 32
_MAX_SMALL_FILE = 64 * 1024


class HomeDir:
    """Holds an exclusive lock on the home dir for as long as the node runs."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self.logs = self.path / "logs"
        self._lock_fd: int | None = None
        self._reach: dict[str, Any] | None = None  # what node.json says now

    def acquire(self) -> None:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create home dir {self.path}: {err.strerror}") from None
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = running_pid(self.path)
            raise UserError(
                f"another mesh-llm (pid {other}) is using {self.path}: stop it with "
                f"`mesh-llm stop --home {self.path}` or give this node its own --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def mesh_secret(self, fresh: bool = False) -> bytes:
        """The mesh secret kept here, made (and kept) on first use or when `fresh`."""
        if not fresh:
            secret = read_secret(self.path)
            if secret is not None:
                return secret
        secret = secrets.token_bytes(SECRET_LEN)
        self.save_secret(secret)
        return secret

    def save_secret(self, secret: bytes) -> None:
        """Keep `secret` (the mesh this node belongs to now); written whole or not at all."""
        _write_private(self.path / SECRET_NAME, secret.hex() + "\n")

    def save_node_info(self, info: dict[str, Any]) -> None:
        _write_private(self.path / ADDRS_NAME, json.dumps(info) + "\n")

    def save_reach(self, node_id: str, addrs: list[str], via: Via = ()) -> None:
        """Our id, addresses and `via` members as our invites list them (`mesh-llm invite`
        reads them); written only when they change."""
        info = {"node_id": node_id, "addrs": list(addrs),
                "via": [{"id": member, "addrs": list(at)} for member, at in via]}
        if info != self._reach:
            self.save_node_info(info)
            self._reach = info

    def save_peers(self, peers: list[tuple[str, list[str]]]) -> None:
        _write_private(self.path / PEERS_NAME, json.dumps(
            [{"id": node_id, "addrs": addrs} for node_id, addrs in peers]) + "\n")

    def known_peers(self) -> list[tuple[str, list[str]]]:
        """The members saved by the last run (malformed entries are skipped)."""
        text = _read_small(self.path / PEERS_NAME)
        try:
            items = json.loads(text) if text else []
        except ValueError:
            return []
        return [(item["id"], [a for a in item["addrs"] if isinstance(a, str)])
                for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
                and isinstance(item.get("addrs"), list)] if isinstance(items, list) else []

    def release(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None


def _read_small(path: Path) -> str | None:
    try:
        if path.stat().st_size > _MAX_SMALL_FILE:
            raise UserError(f"{path} is too large; move it away")
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def read_secret(home: Path) -> bytes | None:
    """The mesh secret kept in `home`, or None when there is none yet."""
    path = home.expanduser() / SECRET_NAME
    text = _read_small(path)
    if text is None:
        return None
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    if len(secret) != SECRET_LEN:
        raise UserError(f"{path} is corrupt; move it away (or start with --new-mesh)")
    return secret


def read_node_info(home: Path) -> dict[str, Any] | None:
    """What the last node run with `home` said about itself (its addresses), or None."""
    text = _read_small(home.expanduser() / ADDRS_NAME)
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def read_reach(home: Path) -> tuple[list[str], Via] | None:
    """The addresses and via members of the last node run with `home`, as its invites list
    them, or None when it never ran; entries that are not what a node writes are left out."""
    info = read_node_info(home)
    addrs = info.get("addrs") if info is not None else None
    if info is None or not isinstance(addrs, list):
        return None
    raw = info.get("via")
    via = [(item["id"], tuple(item["addrs"])) for item in raw if isinstance(item, dict)
           and is_node_id(item.get("id")) and item["id"] != info.get("node_id")
           and isinstance(item.get("addrs"), list) and item["addrs"]
           and all(isinstance(a, str) for a in item["addrs"])] if isinstance(raw, list) else []
    return [a for a in addrs if isinstance(a, str)], tuple(via[:MAX_VIA])


def read_trusted_hosts(home: Path) -> list[str] | None:
    """Node ids listed in `home/trusted_hosts` (one per line, # comments), or None."""
    path = home.expanduser() / TRUSTED_HOSTS_NAME
    text = _read_small(path)
    if text is None:
        return None
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def running_pid(home: Path) -> int | None:
    """The pid of the node that holds `home`'s lock, or None when no node does."""
    path = home.expanduser() / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
