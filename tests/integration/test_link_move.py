"""A relayed link moves to a punched one when the NAT that defeated punching changes, and a
stream open across the move finishes intact: in-process meshes on NAT lab machines
(tests/natlab.py), each on an event loop inside its machine's namespace.

Home C's NAT first randomises ports, so A and C end up relayed through the public member
P. Then C's router is reconfigured to keep ports (and restarts: its mappings are gone);
the relayed link's punch retry (every few seconds here) is introduced by P again, punches,
and the peer moves to the punched link while the relayed one drains."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from mesh_llm.mesh import Announcement, Mesh, MeshSettings
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import InviteToken, encode_token, new_secret
from mesh_llm.mesh.peers import PeerEvent, Subscription
from mesh_llm.mesh.quic import Connection, Stream
from natlab import LabLoop, NatLab, lab_available, leftover_namespaces
from waiting import wait_until

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# The larger id waits 30 s before dialling what gossip told it (so only introductions link
# the homes); a relayed link asks to punch again every 3 s; a draining link may live 60 s.
SETTINGS = MeshSettings(gossip_dial_delay_s=30.0, punch_after_s=1.0, redial_backoff_s=30.0,
                        punch_window_s=2.0, punch_retry_s=3.0, punch_retry_max_s=3.0,
                        punch_retries=40, drain_s=60.0)
ECHO = 77  # a stream type of this test: the far end echoes what it reads
CHUNK = 4096


@pytest.fixture
def lab() -> Iterator[NatLab]:
    prefix = f"mlm{os.getpid() % 100000}"
    with NatLab(prefix) as built:
        yield built
    assert leftover_namespaces(prefix) == []


class Machine:
    """A lab machine's loop and the member running on it."""

    def __init__(self, lab: NatLab, name: str, home: Path, secret: bytes) -> None:
        self.loop = LabLoop(lab, name)
        identity = Identity.load_or_create(home)
        self.mesh = Mesh(identity, secret, Announcement(identity.node_id, models=("m",)),
                         bind_host="0.0.0.0", settings=SETTINGS)
        self.loop.run(self.mesh.start())
        self.events: Subscription = self.loop.call(self.mesh.subscribe)

    def link(self, peer: str) -> str | None:
        """The kind of our connected link to `peer` (None without one)."""
        def read() -> str | None:
            info = self.mesh.peers.get(peer)
            return info.link if info is not None and info.connected else None

        return self.loop.call(read)

    def connection(self, peer: str) -> Connection:
        return self.loop.call(lambda: self.mesh.connections_to(peer)[-1])

    def events_about(self, peer: str) -> list[str]:
        def drain() -> list[PeerEvent]:
            out = []
            while (event := self.events.get_nowait()) is not None:
                out.append(event)
            return out

        return [e.kind for e in self.loop.call(drain) if e.node_id == peer]

    def close(self) -> None:
        self.loop.run(self.mesh.stop())
        self.loop.close()


async def echo(peer: str, stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    stream.write_eof()


async def talk(mesh: Mesh, peer: str, stop: asyncio.Event, done: list[int]) -> int:
    """Send numbered chunks over one stream and check each echo, until `stop` (and a few
    more after it); returns how many went through intact."""
    stream = await mesh.open_stream(peer, ECHO)
    n = after = 0
    while after < 5:
        chunk = n.to_bytes(4, "big") * (CHUNK // 4)
        await stream.write(chunk)
        assert await asyncio.wait_for(stream.readexactly(CHUNK), 20) == chunk, n
        n += 1
        done[0] = n
        after += stop.is_set()
        await asyncio.sleep(0.05)  # pacing: a steady trickle across the move
    stream.write_eof()
    assert await asyncio.wait_for(stream.read(), 20) == b""
    return n


def test_a_relayed_link_moves_to_a_punched_one_without_breaking_its_stream(
        lab: NatLab, tmp_path: Path) -> None:
    lab.internet()
    lab.public("P")
    lab.home("A", 1)
    lab.home("C", 3, fully_random=True)
    secret = new_secret()
    machines: list[Machine] = []
    try:
        for name in ("P", "A", "C"):
            machines.append(Machine(lab, name, tmp_path / name.lower(), secret))
        p, a, c = machines
        token = encode_token(InviteToken(p.mesh.node_id, p.mesh.addrs, secret))
        a.loop.call(lambda: a.mesh.add_stream_handler(ECHO, echo))
        c.loop.call(lambda: c.mesh.add_stream_handler(ECHO, echo))
        a.loop.run(a.mesh.join([token], timeout=10))
        c.loop.run(c.mesh.join([token], timeout=10))
        id_a, id_c = a.mesh.node_id, c.mesh.node_id
        via = f"relayed (via {p.mesh.node_id[:12]})"
        wait_until(lambda: a.link(id_c) == via, "A–C relayed", 40)
        wait_until(lambda: c.link(id_a) == via, "C–A relayed", 10)
        relayed = c.connection(id_a)
        assert p.loop.call(p.mesh.relay_stats)["pairs"] == 1
        a.events_about(id_c), c.events_about(id_a)  # what came before the move

        # A stream open on the relayed link, carrying a chunk every 50 ms.
        stop, done = c.loop.call(asyncio.Event), [0]
        talking: Future[int] = asyncio.run_coroutine_threadsafe(
            talk(c.mesh, id_a, stop, done), c.loop.loop)
        wait_until(lambda: done[0] >= 5 or talking.done(), "the stream under way", 20)

        lab.renat("C", fully_random=False)
        wait_until(lambda: c.link(id_a) == "punched", "C–A punched", 60)
        wait_until(lambda: a.link(id_c) == "punched", "A–C punched", 10)
        assert not talking.done(), talking.result()
        assert c.connection(id_a) is not relayed
        assert not relayed.is_closed  # draining: its stream is still open

        # New streams take the punched link at once.
        async def one_echo() -> bytes:
            stream = await c.mesh.open_stream(id_a, ECHO)
            await stream.write(b"new")
            stream.write_eof()
            return await asyncio.wait_for(stream.read(), 10)

        assert c.loop.run(one_echo()) == b"new"
        before = done[0]
        wait_until(lambda: done[0] >= before + 5, "the old stream still moving", 20)
        c.loop.loop.call_soon_threadsafe(stop.set)
        assert talking.result(30) == done[0] > before
        # Its stream done, the relayed link closes (long before the 60 s drain bound).
        wait_until(lambda: relayed.is_closed, "the relayed link closed", 10)
        assert c.connection(id_a) is not relayed
        wait_until(lambda: p.loop.call(p.mesh.relay_stats)["pairs"] == 0,
                   "the relay freeing the pair", 10)
        # Nobody saw the peer go: the move is an update, not a loss.
        for machine, peer in ((a, id_c), (c, id_a)):
            kinds = machine.events_about(peer)
            assert "updated" in kinds and not {"disconnected", "removed"} & set(kinds), kinds
            assert machine.link(peer) == "punched"
    finally:
        for machine in machines:
            machine.close()
