"""Node identity: a stable Ed25519 key in the home dir, private to its owner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mesh_llm.mesh.identity import KEY_FILE, Identity, IdentityError, is_node_id, verify


def test_created_with_0600(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path / "home")
    path = tmp_path / "home" / KEY_FILE
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert is_node_id(ident.node_id)


def test_reload_gives_same_id(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path)
    second = Identity.load_or_create(tmp_path)
    assert first.node_id == second.node_id


def test_different_homes_different_ids(tmp_path: Path) -> None:
    a = Identity.load_or_create(tmp_path / "a")
    b = Identity.load_or_create(tmp_path / "b")
    assert a.node_id != b.node_id


def test_sign_and_verify(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path)
    sig = ident.sign(b"data")
    assert verify(ident.node_id, sig, b"data")
    assert not verify(ident.node_id, sig, b"other")
    assert not verify(Identity.generate().node_id, sig, b"data")
    assert not verify(ident.node_id, sig[:-1], b"data")
    assert not verify(ident.node_id.upper(), sig, b"data")
    assert not verify("zz" * 32, sig, b"data")
    assert not verify(None, sig, b"data")  # type: ignore[arg-type]


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(0o644)
    assert Identity.load_or_create(tmp_path).node_id == ident.node_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"garbage")
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        Identity.load_or_create(tmp_path)
