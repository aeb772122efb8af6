"""Reach in a NAT lab (tests/natlab.py): real nodes in network namespaces.

Every packet stays inside namespaces the test creates; each test deletes them, even when
it fails."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_llm.mesh.invites import decode_token
from mesh_llm.node.home import read_reach
from natlab import LabNode, NatLab, lab_available, leftover_namespaces

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@pytest.fixture
def lab() -> Iterator[NatLab]:
    prefix = f"mlt{os.getpid() % 100000}"
    with NatLab(prefix) as built:
        yield built
    assert leftover_namespaces(prefix) == []


def token_addrs(token: str) -> list[str]:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["addrs"]


def linked(node: LabNode, peer_id: str, kind: str) -> dict | None:
    peer = node.peer(peer_id)
    return peer if peer is not None and peer["state"] == "connected" \
        and peer["link"] == kind else None


def test_a_machine_without_a_default_route_invites_with_its_lan_address(
        lab: NatLab, tmp_path: Path) -> None:
    # The found bug: no default route, so the invite held only 127.0.0.1 and a joiner on
    # another machine dialled itself ("authentication failed").
    ip_x, ip_y = lab.pair("X", "Y")
    x = lab.node("X", tmp_path / "x").wait_ready()
    token = x.status()["token"]
    addrs = token_addrs(token)
    assert addrs and all(not a.startswith("127.") for a in addrs), addrs
    assert addrs[0].startswith(f"{ip_x}:")
    assert x.status()["addresses"]["lan"] == addrs
    y = lab.node("Y", tmp_path / "y", "--join", token)
    id_x, id_y = x.status()["node_id"], y.wait_for(lambda: y.status()["node_id"], "status")
    y.wait_for(lambda: linked(y, id_x, "direct"), "Y linked to X")
    x.wait_for(lambda: linked(x, id_y, "direct"), "X linked to Y")
    for node, other in ((x, id_y), (y, id_x)):
        peer = node.peer(other)
        assert peer is not None and not any(a.startswith("127.") for a in peer["addrs"])
    assert y.peer(id_x)["addrs"][0].startswith(f"{ip_x}:")  # type: ignore[index]
    assert x.peer(id_y)["addrs"][-1].startswith(f"{ip_y}:")  # type: ignore[index]


def test_two_homes_behind_nat_punch_a_direct_link_that_outlives_the_public_member(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    ip_p = lab.public("P")
    public_a = lab.home("A", 1)
    lab.home("B", 2)
    p = lab.node("P", tmp_path / "p").wait_ready()
    token = p.status()["token"]
    assert token_addrs(token)[0].startswith(f"{ip_p}:")
    a = lab.node("A", tmp_path / "a", "--join", token)
    b = lab.node("B", tmp_path / "b", "--join", token)
    id_p = p.status()["node_id"]
    id_a = a.wait_for(lambda: a.status()["node_id"], "A's status")
    id_b = b.wait_for(lambda: b.status()["node_id"], "B's status")
    # A learns its public address from P, shows it and puts it first in its invites.
    a.wait_for(lambda: a.status()["addresses"]["observed"], "A's observed address", 30)
    observed = a.status()["addresses"]["observed"][0]
    assert observed.startswith(f"{public_a}:"), observed
    assert token_addrs(a.status()["token"])[0] == observed
    assert a.status()["addresses"]["lan"][0].startswith("10.1.0.2:")
    # Neither home can be dialled, yet A and B end up linked directly, through their NATs.
    a.wait_for(lambda: linked(a, id_b, "punched"), "A–B punched (A's view)", 40)
    b.wait_for(lambda: linked(b, id_a, "punched"), "A–B punched (B's view)", 20)
    assert a.peer(id_p)["link"] == "direct"  # type: ignore[index]
    # The public member dies without a word: the punched link does not need it.
    p.kill()
    a.wait_for(lambda: (a.peer(id_p) or {}).get("state") != "connected", "P's loss noticed",
               30)
    assert linked(a, id_b, "punched") and linked(b, id_a, "punched")
    rtt = a.peer(id_b)["rtt_ms"]  # type: ignore[index]
    assert rtt is not None and rtt < 1000


def relay_lab(lab: NatLab, tmp_path: Path, *p_args: str) -> tuple[LabNode, LabNode, LabNode]:
    """P public, A behind a NAT that keeps ports, C behind one that randomises them."""
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("C", 3, fully_random=True)
    p = lab.node("P", tmp_path / "p", *p_args).wait_ready()
    token = p.status()["token"]
    return p, lab.node("A", tmp_path / "a", "--join", token), \
        lab.node("C", tmp_path / "c", "--join", token)


def test_where_punching_fails_a_member_relays_and_counts_it(lab: NatLab,
                                                            tmp_path: Path) -> None:
    p, a, c = relay_lab(lab, tmp_path)
    id_p = p.status()["node_id"]
    id_a = a.wait_for(lambda: a.status()["node_id"], "A's status")
    id_c = c.wait_for(lambda: c.status()["node_id"], "C's status")
    via = f"relayed (via {id_p[:12]})"
    a.wait_for(lambda: linked(a, id_c, via), "A–C relayed (A's view)", 60)
    c.wait_for(lambda: linked(c, id_a, via), "A–C relayed (C's view)", 20)
    relay = p.wait_for(lambda: (s := p.status()["relay"])["forwarded_bytes"] > 0 and s,
                       "relayed bytes counted", 20)
    assert relay["pairs"] == 1 and relay["enabled"]
    assert c.peer(id_a)["rtt_ms"] is not None  # type: ignore[index]


def test_a_member_with_no_relay_refuses_and_the_pair_says_why(lab: NatLab,
                                                              tmp_path: Path) -> None:
    p, a, c = relay_lab(lab, tmp_path, "--no-relay")

    def reason() -> str | None:
        for node in (a, c):
            why = node.status()["relay"]["unreachable"]
            if why:
                return next(iter(why.values()))
        return None

    why = a.wait_for(reason, "a reason", 60)
    assert "does not relay (--no-relay)" in why, why
    assert p.status()["relay"]["refused"] >= 1 and p.status()["relay"]["pairs"] == 0


def test_the_invite_command_names_the_via_members_the_node_s_invites_name(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    p = lab.node("P", tmp_path / "p").wait_ready()
    id_p = p.status()["node_id"]
    a = lab.node("A", tmp_path / "a", "--join", p.status()["token"])
    # behind its NAT, A's invites name P, which it reached by dialling it
    via = a.wait_for(lambda: decode_token(a.status()["token"]).via, "via in A's invites", 30)
    assert [member for member, _ in via] == [id_p]
    assert decode_token(a.status()["invites"]["client"]).via == via
    a.wait_for(lambda: (read_reach(a.home) or ([], ()))[1] == via, "A's home names P", 10)
    for kind in ("--client", "--worker"):
        minted = subprocess.run([sys.executable, "-m", "mesh_llm", "invite", kind, "--home",
                                 str(a.home)], capture_output=True, text=True, timeout=60)
        assert minted.returncode == 0, minted.stderr
        token = decode_token(minted.stdout.strip())
        assert token.via == via and token.addrs == token_addrs(a.status()["token"])
        assert f" or {id_p[:12]}" in minted.stderr
