"""Invites over real QUIC on 127.0.0.1: what a client invite can and cannot reach, a worker
invite that makes a member, and expiry. Each wait is on an event, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from test_mesh_loopback import knows, wait_until

from mesh_llm.mesh import Mesh, MeshJoinError, Stream, StreamType
from mesh_llm.mesh.invites import encode_token, mint_invite
from waiting import wait_until_async

MakeMesh = Callable[..., Awaitable[Mesh]]


def invite(mesh: Mesh, kind: str, expires: int = 0) -> str:
    assert mesh.secret is not None
    return encode_token(mint_invite(mesh.node_id, mesh.addrs, mesh.secret, kind, expires))


def serve(mesh: Mesh) -> list[tuple[int, str]]:
    """Register echo handlers: the API tunnel for clients too, the RPC tunnel for members."""
    served: list[tuple[int, str]] = []

    def handler(kind: int):  # type: ignore[no-untyped-def]
        async def handle(peer: str, stream: Stream) -> None:
            served.append((kind, peer))
            stream.write_nowait(b"ok")
            stream.write_eof()
        return handle

    mesh.add_stream_handler(StreamType.HTTP_TUNNEL, handler(StreamType.HTTP_TUNNEL),
                            clients=True)
    mesh.add_stream_handler(StreamType.RPC_TUNNEL, handler(StreamType.RPC_TUNNEL))
    return served


async def answer(mesh: Mesh, peer: str, kind: int) -> bytes | None:
    stream = await mesh.open_stream(peer, kind)
    try:
        async with asyncio.timeout(3):
            return await stream.readexactly(2)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None


async def test_client_invite_grants_the_api_tunnel_and_nothing_more(make_mesh: MakeMesh) -> None:
    host = await make_mesh(vram_bytes=1000)
    served = serve(host)
    # The client claims to be a big worker that hosts a model: none of it may count.
    client = await make_mesh(role="host", vram_bytes=10**12, models=["m"], ready=True)
    await client.join([invite(host, "client")], timeout=5)
    assert client.secret is None and client.token() == "" and client.invite("client") == ""
    await wait_until(host, knows(host, client), 5, "the host to see the client")
    seen = host.peers[client.node_id]
    assert seen.grant == "client" and seen.role == "client"
    assert seen.vram_bytes == 0 and seen.models == [] and not seen.model_file
    assert await answer(client, host.node_id, StreamType.HTTP_TUNNEL) == b"ok"
    assert await answer(client, host.node_id, StreamType.RPC_TUNNEL) is None
    assert served == [(StreamType.HTTP_TUNNEL, client.node_id)]


async def test_client_reaches_other_members_but_nobody_dials_it(make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    b = await make_mesh()
    await b.join([a.token()])
    client = await make_mesh()
    await client.join([invite(a, "client")], timeout=5)
    # a tells the client about b; the client dials b with its invite
    await wait_until(client, knows(client, a, b), 8, "the client to reach a and b")
    await wait_until(b, knows(b, client), 5, "b to see the client")
    assert b.peers[client.node_id].grant == "client"
    assert a.peers[client.node_id].addrs == []  # nobody is told where to dial it
    # a client-invite node accepts no connections at all
    outsider = await make_mesh()
    forged = mint_invite(client.node_id, client.addrs, b"x" * 32, "worker")
    with pytest.raises(MeshJoinError):
        await outsider.join([encode_token(forged)], timeout=2)


async def test_worker_invite_makes_a_member_that_keeps_the_secret(make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    served = serve(a)
    worker = await make_mesh()
    kept: list[bytes] = []
    worker.on_secret = kept.append
    await worker.join([invite(a, "worker", int(time.time()) + 3600)], timeout=5)
    assert worker.secret == a.secret and kept == [a.secret]
    await wait_until(a, knows(a, worker), 5, "a to see the worker")
    assert a.peers[worker.node_id].grant == "member"
    assert await answer(worker, a.node_id, StreamType.RPC_TUNNEL) == b"ok"
    assert served == [(StreamType.RPC_TUNNEL, worker.node_id)]
    # a member that holds the secret can now accept others itself
    c = await make_mesh()
    await c.join([worker.token()], timeout=5)
    await wait_until(a, knows(a, worker, c), 8, "a to see c through the worker")


async def test_expired_invites_are_refused(make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    late = await make_mesh()
    with pytest.raises(MeshJoinError, match="expired"):
        await late.join([invite(a, "client", int(time.time()) - 1)], timeout=3)
    assert late.node_id not in a.peers


async def test_a_claim_of_more_memory_than_a_machine_has_drops_the_peer(
        make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    liar = await make_mesh()
    await liar.join([a.token()])
    await wait_until(a, knows(a, liar), 5, "a to see the peer")
    with a.subscribe() as sub:
        liar._announcement = replace(liar._announcement, vram_bytes=2**61)  # what a forged
        liar._membership.broadcast()  # build would send; our own validation would refuse to make it
        async with asyncio.timeout(5):
            while liar.node_id in a.peers and a.peers[liar.node_id].vram_bytes != 2**61:
                await sub.get()
    assert liar.node_id not in a.peers


async def test_a_flood_of_refused_handshakes_writes_one_line(
        make_mesh: MakeMesh, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from mesh_llm.mesh.invites import InviteToken, new_secret

    a = await make_mesh()
    wrong = encode_token(InviteToken(a.node_id, a.addrs, new_secret()))
    with caplog.at_level(logging.INFO, logger="mesh_llm.mesh"):
        for _ in range(40):
            intruder = await make_mesh()
            with pytest.raises(MeshJoinError):
                await intruder.join([wrong], timeout=3)
        await wait_until_async(lambda: a.refused >= 40, "a to count 40 refusals", 5)
    refused_lines = [r for r in caplog.records if r.name == "mesh_llm.mesh"
                     and r.getMessage().startswith("refused connection from")]
    assert a.refused == 40 and len(refused_lines) == 1
