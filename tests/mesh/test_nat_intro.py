"""Hole punching by introduction, with in-process meshes on NAT lab machines
(tests/natlab.py): each mesh runs on an event loop inside its machine's namespace.

The timers make the two homes' own dials miss each other (the larger id waits 30 s before
dialling what gossip told it), so only an introduction by the public member links them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mesh_llm.mesh import Announcement, Mesh, MeshSettings
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import (
    InviteToken,
    decode_token,
    encode_token,
    mint_invite,
    new_secret,
)
from natlab import LabLoop, NatLab, lab_available, leftover_namespaces
from waiting import wait_until

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

SETTINGS = MeshSettings(gossip_dial_delay_s=30.0, punch_after_s=1.0, redial_backoff_s=30.0,
                        punch_window_s=5.0)


@pytest.fixture
def lab() -> Iterator[NatLab]:
    prefix = f"mli{os.getpid() % 100000}"
    with NatLab(prefix) as built:
        yield built
    assert leftover_namespaces(prefix) == []


class Machine:
    """A lab machine's loop and the mesh on it."""

    def __init__(self, lab: NatLab, name: str) -> None:
        self.loop = LabLoop(lab, name)
        self.mesh: Mesh | None = None

    def start(self, home: Path, secret: bytes | None,
              settings: MeshSettings = SETTINGS) -> Mesh:
        """A member (with the secret) or a lite client (without: it joins by invite)."""
        identity = Identity.load_or_create(home)
        ann = Announcement(identity.node_id, models=("m",)) if secret is not None else \
            Announcement(identity.node_id, role="client")
        mesh = Mesh(identity, secret, ann, bind_host="0.0.0.0", settings=settings)
        self.loop.run(mesh.start())
        self.mesh = mesh
        return mesh

    def link(self, peer: str) -> str | None:
        """The kind of our connected link to `peer` (None without one)."""
        assert self.mesh is not None
        mesh = self.mesh

        def read() -> str | None:
            info = mesh.peers.get(peer)
            return info.link if info is not None and info.connected else None

        return self.loop.call(read)

    def close(self) -> None:
        if self.mesh is not None:
            self.loop.run(self.mesh.stop())
        self.loop.close()


@contextlib.contextmanager
def machines_of(lab: NatLab, *names: str) -> Iterator[dict[str, Machine]]:
    """A Machine per named lab machine, each closed (its mesh stopped) however the test ends."""
    machines = {name: Machine(lab, name) for name in names}
    try:
        yield machines
    finally:
        for machine in machines.values():
            machine.close()


def member_token(mesh: Mesh, secret: bytes) -> str:
    """A member's token for `mesh` (what `mesh-llm` prints), naming its addresses."""
    return encode_token(InviteToken(mesh.node_id, mesh.addrs, secret))


def test_two_homes_that_cannot_dial_each_other_are_introduced_and_punch(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("B", 2)
    with machines_of(lab, "P", "A", "B") as machines:
        secret = new_secret()
        p = machines["P"].start(tmp_path / "p", secret)
        token = member_token(p, secret)
        a = machines["A"].start(tmp_path / "a", secret)
        b = machines["B"].start(tmp_path / "b", secret)
        machines["A"].loop.run(a.join([token], timeout=10))
        machines["B"].loop.run(b.join([token], timeout=10))
        wait_until(lambda: machines["A"].link(b.node_id) == "punched", "A–B punched", 20)
        wait_until(lambda: machines["B"].link(a.node_id) == "punched", "B–A punched", 5)
        assert machines["P"].loop.call(lambda: p.introductions) == 1
        observed = machines["A"].loop.call(a.addresses)["observed"]
        assert observed and observed[0].startswith("198.51.100."), observed


def test_a_nat_that_randomises_ports_defeats_punching_and_without_a_relay_nothing_links(
        lab: NatLab, tmp_path: Path) -> None:
    # Home C's NAT maps each destination to a new port: the address P saw is not the one
    # A's packets would have to reach. The introduction is made, punching fails, and P
    # does not relay: the two stay unlinked, and the one that asked says why.
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("C", 3, fully_random=True)
    with machines_of(lab, "P", "A", "C") as machines:
        secret = new_secret()
        p = machines["P"].start(tmp_path / "p", secret, replace(SETTINGS, relay_enabled=False))
        token = member_token(p, secret)
        a = machines["A"].start(tmp_path / "a", secret)
        c = machines["C"].start(tmp_path / "c", secret)
        machines["A"].loop.run(a.join([token], timeout=10))
        machines["C"].loop.run(c.join([token], timeout=10))
        wait_until(lambda: machines["P"].loop.call(lambda: p.introductions) == 1,
                   "the introduction", 15)
        punching = {a.node_id: machines["C"], c.node_id: machines["A"]}
        for peer, machine in punching.items():
            mesh = machine.mesh
            assert mesh is not None
            wait_until(lambda m=machine, me=mesh: not m.loop.call(  # type: ignore[misc]
                lambda: me._state.punching), "punching over", 15)
            assert machine.link(peer) is None
        asker = machines["A"] if a.node_id < c.node_id else machines["C"]
        assert asker.mesh is not None
        mesh = asker.mesh
        reasons = wait_until(lambda: asker.loop.call(lambda: mesh.relay_stats()["unreachable"]),
                             "the reason", 15)
        assert "does not relay" in next(iter(reasons.values())), reasons
        assert machines["P"].loop.call(p.relay_stats)["refused"] == 1


def test_where_punching_fails_the_introducer_relays_end_to_end(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("C", 3, fully_random=True)
    with machines_of(lab, "P", "A", "C") as machines:
        secret = new_secret()
        p = machines["P"].start(tmp_path / "p", secret)
        token = member_token(p, secret)
        a = machines["A"].start(tmp_path / "a", secret)
        c = machines["C"].start(tmp_path / "c", secret)
        machines["A"].loop.run(a.join([token], timeout=10))
        machines["C"].loop.run(c.join([token], timeout=10))
        via = f"relayed (via {p.node_id[:12]})"
        wait_until(lambda: machines["A"].link(c.node_id) == via, "A–C relayed", 30)
        wait_until(lambda: machines["C"].link(a.node_id) == via, "C–A relayed", 5)
        stats = machines["P"].loop.call(p.relay_stats)
        assert stats["pairs"] == 1 and stats["forwarded_bytes"] > 0, stats


def test_a_lite_client_behind_a_port_randomising_nat_reaches_a_member_through_a_relay(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("C", 3, fully_random=True)
    with machines_of(lab, "P", "A", "C") as machines:
        secret = new_secret()
        p = machines["P"].start(tmp_path / "p", secret)
        token = member_token(p, secret)
        client_invite = encode_token(mint_invite(p.node_id, p.addrs, secret, "client"))
        a = machines["A"].start(tmp_path / "a", secret)
        k = machines["C"].start(tmp_path / "k", None)
        machines["A"].loop.run(a.join([token], timeout=10))
        machines["C"].loop.run(k.join([client_invite], timeout=10))
        via = f"relayed (via {p.node_id[:12]})"
        wait_until(lambda: machines["C"].link(a.node_id) == via, "client–A relayed", 30)
        wait_until(lambda: machines["A"].link(k.node_id) == via, "A–client relayed", 5)
        assert machines["A"].loop.call(lambda: a.grant(k.node_id)) == "client"


def test_an_invite_printed_behind_a_nat_lets_a_stranger_in_through_a_reachable_member(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("D", 4)
    with machines_of(lab, "P", "A", "D") as machines:
        secret = new_secret()
        p = machines["P"].start(tmp_path / "p", secret)
        a = machines["A"].start(tmp_path / "a", secret)
        machines["A"].loop.run(a.join([member_token(p, secret)],
                                      timeout=10))
        wait_until(lambda: machines["A"].loop.call(a.addresses)["observed"], "A observed", 10)
        token = machines["A"].loop.call(a.token)
        assert decode_token(token).via == ((p.node_id, tuple(p.addrs)),)
        d = machines["D"].start(tmp_path / "d", new_secret())  # a stranger: another mesh
        joined = machines["D"].loop.run(d.join([token], timeout=10))
        assert joined == p.node_id, "A cannot be dialled from outside its home; P can"
        # Then D and A link through their NATs: by an introduction ("punched"), or at once
        # when A's dial meets the NAT mapping D's own join attempt left open (a simultaneous
        # open outside any dial D still tracks, which it labels "direct").
        wait_until(lambda: machines["D"].link(a.node_id) in ("punched", "direct"), "D–A", 20)
