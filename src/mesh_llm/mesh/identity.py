"""The node's Ed25519 identity: a key kept in the home dir; the node id is its public key in hex.

The id is self-certifying: whoever proves possession of the private key *is* that node, so
no registry or certificate authority is needed (see mesh/auth.py).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import UserError

KEY_FILE = "node.key"
SIGNATURE_LEN = 64
_MAX_KEY_FILE = 4096
_NODE_ID_RE = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("mesh_llm.identity")


class IdentityError(UserError):
    """The key file exists but cannot be used (unreadable, corrupt, not Ed25519)."""


@dataclass(frozen=True)
class Identity:
    """A loaded node key. `node_id` is the hex of the 32-byte raw public key."""

    private_key: Ed25519PrivateKey
    node_id: str

    @classmethod
    def generate(cls) -> Identity:
        """A fresh in-memory identity (tests, throwaway clients)."""
        return cls._from_key(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, home: Path) -> Identity:
        """Load `home/node.key`, creating it (mode 0600) on first run so the id stays stable."""
        home = Path(home).expanduser()
        path = home / KEY_FILE
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise IdentityError(f"cannot create home dir {home}: {err.strerror}") from None
        if not path.exists():
            created = cls._create(path)
            if created is not None:
                return created
            # Another process created it between exists() and open(): load theirs.
        return cls._load(path)

    @classmethod
    def _from_key(cls, key: Ed25519PrivateKey) -> Identity:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key=key, node_id=raw.hex())

    @classmethod
    def _create(cls, path: Path) -> Identity | None:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # O_EXCL: never overwrite a key that appeared meanwhile; 0600 from birth.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        except OSError as err:
            raise IdentityError(f"cannot create key file {path}: {err.strerror}") from None
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("created node key %s", path)
        return cls._from_key(key)

    @classmethod
    def _load(cls, path: Path) -> Identity:
        try:
            st = path.stat()
            if st.st_size > _MAX_KEY_FILE:
                raise IdentityError(f"key file {path} is too large to be a node key")
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("key file %s was readable by others; setting mode 0600", path)
                path.chmod(0o600)
            data = path.read_bytes()
        except OSError as err:
            raise IdentityError(f"cannot read key file {path}: {err.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise IdentityError(
                f"key file {path} is corrupt; move it away to make a new identity"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"key file {path} is not an Ed25519 key")
        return cls._from_key(key)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over `data`."""
        return self.private_key.sign(data)


def is_node_id(value: object) -> bool:
    """True for a canonical node id: exactly 64 lowercase hex characters."""
    return isinstance(value, str) and _NODE_ID_RE.fullmatch(value) is not None


def verify(node_id: str, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `node_id`'s signature over `data`; False for any bad input."""
    if not is_node_id(node_id):
        return False
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_LEN:
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(node_id))
        public.verify(bytes(signature), data)
    except (ValueError, InvalidSignature):
        return False
    return True
