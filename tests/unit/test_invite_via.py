"""`mesh-llm invite` names the same `via` members as the invites the node prints: it reads
them from the home, where the node keeps its addresses and via members as they change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_llm.cli.commands import cmd_invite
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import decode_token, new_secret
from mesh_llm.node.home import ADDRS_NAME, HomeDir, read_reach

P, Q = "1" * 64, "2" * 64
VIA = ((P, ("198.51.100.10:7842",)), (Q, ("198.51.100.20:7842", "10.0.0.2:7842")))


def a_home(tmp_path: Path) -> tuple[HomeDir, str]:
    home = HomeDir(tmp_path / "home")
    home.acquire()
    home.save_secret(new_secret())
    return home, Identity.load_or_create(home.path).node_id


def invite(home: HomeDir, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert cmd_invite([*args, "--home", str(home.path)]) == 0
    out = capsys.readouterr()
    return out.out.strip(), out.err


def test_the_invite_command_lists_the_via_members_the_node_saved(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home, node_id = a_home(tmp_path)
    home.save_reach(node_id, ["203.0.113.5:40000", "192.168.1.4:40000"], VIA)
    token, note = invite(home, capsys, "--client")
    decoded = decode_token(token)
    assert decoded.via == VIA and decoded.kind == "client"
    assert decoded.addrs == ["203.0.113.5:40000", "192.168.1.4:40000"]
    assert f"through node {node_id[:12]} or {P[:12]} or {Q[:12]}" in note
    home.save_reach(node_id, ["192.168.1.4:40000"])  # reachable now: no via any more
    token, note = invite(home, capsys, "--worker")
    assert decode_token(token).via == () and " or " not in note
    home.release()


def test_a_home_written_before_via_or_with_bad_entries_still_mints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home, node_id = a_home(tmp_path)
    (home.path / ADDRS_NAME).write_text(json.dumps({"node_id": node_id,
                                                    "addrs": ["192.168.1.4:1"]}))
    token, _ = invite(home, capsys, "--client")
    assert decode_token(token).via == ()
    bad = [{"id": "x", "addrs": ["1.2.3.4:5"]}, {"id": node_id, "addrs": ["1.2.3.4:5"]},
           {"id": P, "addrs": []}, {"id": Q, "addrs": [5]}, "junk",
           {"id": Q, "addrs": ["198.51.100.20:7842"]}]
    (home.path / ADDRS_NAME).write_text(json.dumps({"node_id": node_id,
                                                    "addrs": ["192.168.1.4:1"], "via": bad}))
    assert read_reach(home.path) == (["192.168.1.4:1"], ((Q, ("198.51.100.20:7842",)),))
    token, _ = invite(home, capsys, "--client")
    assert decode_token(token).via == ((Q, ("198.51.100.20:7842",)),)
    home.release()


def test_the_home_writes_node_json_only_when_it_changes(tmp_path: Path) -> None:
    home, node_id = a_home(tmp_path)
    home.save_reach(node_id, ["192.168.1.4:1"], VIA)
    path = home.path / ADDRS_NAME
    path.write_text("{}")  # a rewrite with the same content would restore it
    home.save_reach(node_id, ["192.168.1.4:1"], VIA)
    assert path.read_text() == "{}"
    home.save_reach(node_id, ["192.168.1.4:1"])
    assert read_reach(home.path) == (["192.168.1.4:1"], ())
    home.release()
