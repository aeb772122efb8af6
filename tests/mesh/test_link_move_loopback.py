"""A peer moving to a newer link (what a LAN address found by --mdns, or a punch out of a
relay, brings) on 127.0.0.1: new streams take the new link at once, a stream open on the old
one finishes on it, and the old one closes when its streams are done, or at its bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from mesh_llm.mesh import Mesh, MeshSettings, Stream
from waiting import wait_until_async

MakeMesh = Callable[..., Awaitable[Mesh]]
ECHO = 78


async def echo(peer: str, stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    stream.write_eof()


async def round_trip(stream: Stream, data: bytes) -> None:
    await stream.write(data)
    assert await asyncio.wait_for(stream.readexactly(len(data)), 5) == data


async def linked(make_mesh: MakeMesh, settings: MeshSettings) -> tuple[Mesh, Mesh]:
    a = await make_mesh(settings=settings)
    b = await make_mesh(settings=settings, secret=a.secret)
    a.add_stream_handler(ECHO, echo)
    await b.join([a.token()])
    await wait_until_async(lambda: len(a.connections_to(b.node_id)) == 1
                           and a.peers.get(b.node_id) is not None, "a to see b", 5)
    return a, b


async def move(b: Mesh, a: Mesh) -> None:
    """b dials a again though linked, as the LAN finder does: the new link wins."""
    await b._dialler.dial(a.node_id, a.addrs, 5.0, replace=True)


async def test_a_stream_open_across_a_move_finishes_on_the_old_link(
        make_mesh: MakeMesh) -> None:
    a, b = await linked(make_mesh, MeshSettings(drain_s=60.0))
    old = b.connections_to(a.node_id)[-1]
    stream = await b.open_stream(a.node_id, ECHO)
    await round_trip(stream, b"before")
    with a.subscribe() as sub_a, b.subscribe() as sub_b:
        await move(b, a)
        new = b.connections_to(a.node_id)[-1]
        assert new is not old  # the one in use (the larger id keeps the old one listed a
        # moment: link_rule.py), and both drain it alike
        fresh = await b.open_stream(a.node_id, ECHO)
        await round_trip(fresh, b"on the new link")
        assert not old.is_closed  # draining: a stream is still open on it
        for i in range(20):
            await round_trip(stream, i.to_bytes(2, "big") * 512)
        stream.write_eof()
        assert await asyncio.wait_for(stream.read(), 5) == b""
        await asyncio.wait_for(old.wait_closed(), 5)  # done long before the 60 s bound
        await round_trip(fresh, b"still")
        for sub, peer in ((sub_a, b.node_id), (sub_b, a.node_id)):
            kinds = []
            while (event := sub.get_nowait()) is not None:
                kinds.append(event.kind if event.node_id == peer else "")
            assert not {"disconnected", "removed", "reconnected"} & set(kinds), kinds
    assert b.peers[a.node_id].connected and a.peers[b.node_id].connected


async def test_a_stream_that_outlives_the_drain_bound_ends_with_the_old_link(
        make_mesh: MakeMesh) -> None:
    a, b = await linked(make_mesh, MeshSettings(drain_s=1.0))
    old = b.connections_to(a.node_id)[-1]
    stream = await b.open_stream(a.node_id, ECHO)
    await round_trip(stream, b"held open")
    loop = asyncio.get_running_loop()
    await move(b, a)
    start = loop.time()
    await asyncio.wait_for(old.wait_closed(), 10)
    assert 0.5 < loop.time() - start < 5.0  # the bound, not the stream, closed it
    fresh = await b.open_stream(a.node_id, ECHO)
    await round_trip(fresh, b"the peer is still there")
    assert b.peers[a.node_id].connected


async def test_a_replaced_link_whose_far_end_is_gone_closes_without_waiting_for_its_streams(
        make_mesh: MakeMesh, tmp_path: Path) -> None:
    # b restarts (same identity, new port) while a's stream to it is open: the old
    # connection answers no ping, so its drain ends after the silence timeout (1.5 s
    # here), not at the 60 s bound.
    settings = MeshSettings(drain_s=60.0, ping_interval_s=0.3, silence_timeout_s=1.5)
    a = await make_mesh(settings=settings)
    b = await make_mesh(settings=settings, secret=a.secret, home=tmp_path / "b")
    b.add_stream_handler(ECHO, echo)
    await b.join([a.token()])
    await wait_until_async(lambda: b.node_id in a.peers, "a to see b", 5)
    old = a.connections_to(b.node_id)[-1]
    stream = await a.open_stream(b.node_id, ECHO)
    await round_trip(stream, b"to the first b")
    await b.stop(graceful=False)
    b2 = await make_mesh(settings=settings, secret=a.secret, home=tmp_path / "b")
    b2.add_stream_handler(ECHO, echo)
    await b2.join([a.token()])
    await asyncio.wait_for(old.wait_closed(), 5)
    fresh = await a.open_stream(b2.node_id, ECHO)
    await round_trip(fresh, b"to the restarted b")
