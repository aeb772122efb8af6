"""LAN discovery (--mdns) with real nodes on a LAN made of network namespaces
(tests/lanlab.py): every mDNS packet stays on the lab's bridge, and zeroconf inside a
namespace sees only that namespace's interfaces. Each test deletes its namespaces, even
when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanlab import LanLab
from mesh_llm.mesh.invites import InviteToken, decode_token, encode_token
from natlab import LabNode, lab_available, leftover_namespaces

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
REFOUND_S = 5.0


@pytest.fixture
def lab() -> Iterator[LanLab]:
    prefix = f"mdn{os.getpid() % 100000}"
    with LanLab(prefix) as built:
        yield built
    assert leftover_namespaces(prefix) == []


def connected(node: LabNode, peer_id: str) -> dict | None:
    peer = node.peer(peer_id)
    return peer if peer is not None and peer["state"] == "connected" else None


def unreachable_token(token: str) -> str:
    """The same member token, naming an address nobody answers at (TEST-NET-1)."""
    tok = decode_token(token)
    return encode_token(InviteToken(tok.node_id, ["192.0.2.1:9"], tok.secret))


def discover(lab: LanLab, machine: str, timeout: float = 2.0) -> dict:
    out = subprocess.run(["ip", "netns", "exec", lab.ns(machine), sys.executable, "-m",
                          "mesh_llm", "discover", "--timeout", str(timeout), "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def test_members_find_each_other_on_the_lan_and_ignore_another_mesh(
        lab: LanLab, tmp_path: Path) -> None:
    """B's token names no address that answers: B joins through the member it sees on the
    LAN with its mesh's tag. C, another mesh on the same LAN, is neither dialled nor
    listed; `discover` lists both meshes by tag, with no token or secret."""
    for host, machine in enumerate("abcd", start=10):
        lab.machine(machine, host)
    a = lab.node("a", tmp_path / "a", "--mdns").wait_ready()
    token = a.status()["token"]
    b = lab.node("b", tmp_path / "b", "--mdns", "--join", unreachable_token(token))
    c = lab.node("c", tmp_path / "c", "--mdns", "--max-vram", "1").wait_ready()
    id_a, id_c = a.status()["node_id"], c.status()["node_id"]
    id_b = b.wait_for(lambda: b.status()["node_id"], "B's status")
    b.wait_for(lambda: connected(b, id_a), "B joined A through the LAN", 30)
    a.wait_for(lambda: connected(a, id_b), "A linked to B")
    tag = a.status()["mdns"]["tag"]
    assert b.status()["mdns"]["tag"] == tag != c.status()["mdns"]["tag"]
    a.wait_for(lambda: id_b in a.status()["mdns"]["members_seen"], "A sees B on the LAN")
    assert b.status()["mdns"]["members_seen"] == [id_a]
    assert id_c not in a.status()["mdns"]["members_seen"]

    found = discover(lab, "d")
    listed = {m["tag"]: m for m in found["meshes"]}
    assert set(listed) == {tag, c.status()["mdns"]["tag"]}, found
    assert listed[tag]["members"] == 2 and listed[tag]["nodes"] == 2
    assert listed[tag]["models"] == ["SmolLM2-135M-Instruct"]
    text = json.dumps(found)
    secret = decode_token(token).secret.hex()
    assert token not in text and secret not in text
    for node in (a, b):
        assert id_c not in {p["id"] for p in node.status()["peers"]}, "another mesh's member"
    assert not any(p["id"] in (id_a, id_b) for p in c.status()["peers"])


def test_a_member_whose_address_changes_is_found_again_within_5_s(
        lab: LanLab, tmp_path: Path) -> None:
    """The DHCP case: B gets a new address while running; A, whose link to B went to the
    old one, finds it on the LAN by tag and node id and links to the new one."""
    lab.machine("a", 10)
    lab.machine("b", 11)
    b = lab.node("b", tmp_path / "b", "--mdns").wait_ready()
    a = lab.node("a", tmp_path / "a", "--mdns", "--join", b.status()["token"])
    id_b = b.status()["node_id"]
    a.wait_for(lambda: connected(a, id_b), "A linked to B")
    port = b.status()["addresses"]["bound"].rpartition(":")[2]
    found = a.status()["mdns"]["found"]  # 0, or 1 when its dial on the LAN won the join
    changed = time.monotonic()
    lab.readdress("b", 12)
    a.wait_for(lambda: a.status()["mdns"]["found"] > found and connected(a, id_b),
               "A found B again on the LAN", REFOUND_S + 5)
    took = time.monotonic() - changed
    print(f"found again after {took:.2f} s")
    assert took <= REFOUND_S, f"found again after {took:.1f} s"
    a.wait_for(lambda: (p := connected(a, id_b)) and p["addrs"][0] == f"10.53.0.12:{port}",
               "B's new address gossiped")
    assert b.status()["addresses"]["lan"] == [f"10.53.0.12:{port}"]


def test_without_mdns_no_packet_reaches_the_lan(lab: LanLab, tmp_path: Path) -> None:
    lab.machine("a", 10)
    lab.machine("b", 11)
    a = lab.node("a", tmp_path / "a").wait_ready()
    b = lab.node("b", tmp_path / "b", "--join", a.status()["token"])
    id_b = b.wait_for(lambda: b.status()["node_id"], "B's status")
    a.wait_for(lambda: connected(a, id_b), "A linked to B")
    assert a.status()["mdns"] is None
    b.stop()
    a.stop()
    assert lab.mdns_packets() == 0
    with_mdns = lab.node("b", tmp_path / "b2", "--mdns").wait_ready()
    with_mdns.wait_for(lambda: lab.mdns_packets() > 0, "the counter sees an mDNS packet")
