"""Real QUIC on 127.0.0.1: several Mesh instances in one event loop, each with its own home.

Synchronisation is always an event (peer-table notification, a connection's closed event)
awaited with a timeout; never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mesh_llm.mesh import Mesh, MeshJoinError, MeshSettings, PeerEvent, Stream, StreamType
from mesh_llm.mesh.invites import InviteToken, encode_token, new_secret
from mesh_llm.mesh.protocol import encode_frame
from mesh_llm.mesh.quic import (
    CLOSE_AUTH_FAILED,
    Connection,
    QuicTransport,
    TransportSettings,
)
from waiting import wait_until_async

MakeMesh = Callable[..., Awaitable[Mesh]]


async def wait_until(mesh: Mesh, predicate: Callable[[], bool], timeout: float,
                     what: str) -> None:
    """Wait for `predicate` to hold, re-checking at each of `mesh`'s peer-table events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with mesh.subscribe() as sub:
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            try:
                await sub.get(timeout=remaining)
            except TimeoutError:
                continue


async def next_event(sub: object, node_id: str, kinds: set[str], timeout: float) -> PeerEvent:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no {kinds} event for {node_id[:12]} within {timeout} s")
        event = await sub.get(timeout=remaining)  # type: ignore[attr-defined]
        if event.node_id == node_id and event.kind in kinds:
            return event


def knows(mesh: Mesh, *others: Mesh) -> Callable[[], bool]:
    return lambda: all(
        o.node_id in mesh.peers and mesh.peers[o.node_id].connected for o in others
    )


async def wait_single_connection(a: Mesh, b: Mesh) -> tuple[Connection, Connection]:
    """Let any duplicate close, then return the one connection both ends use."""
    async with asyncio.timeout(8):
        for x, y in ((a, b), (b, a)):
            while len(conns := x.connections_to(y.node_id)) > 1:
                waits = [asyncio.ensure_future(c.wait_closed()) for c in conns]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
    ca, cb = a.connections_to(b.node_id), b.connections_to(a.node_id)
    assert len(ca) == 1 and len(cb) == 1, (ca, cb)
    return ca[0], cb[0]


def same_connection(ca: Connection, cb: Connection) -> bool:
    return ca.is_client != cb.is_client and \
        ca.server_cert_fingerprint == cb.server_cert_fingerprint


# ---------------------------------------------------------------------------- joining


async def test_two_nodes_see_each_other_within_2s(make_mesh: MakeMesh) -> None:
    a = await make_mesh(role="host")
    b = await make_mesh()
    start = time.monotonic()
    joined = await b.join([a.token()])
    assert joined == a.node_id
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    await wait_until(b, knows(b, a), 2.0, "b to see a")
    assert time.monotonic() - start < 2.0
    assert b.secret == a.secret  # joining adopts the token's mesh secret
    peer = a.peers[b.node_id]
    assert peer.announcement.vram_bytes == b.announcement.vram_bytes
    assert peer.role == "worker" and peer.models == ["m"]
    assert b.peers[a.node_id].role == "host"
    assert peer.addrs[0] == f"127.0.0.1:{b.port}"
    status = peer.to_status()
    assert status["id"] == b.node_id and status["rtt_ms"] is not None
    ca, cb = await wait_single_connection(a, b)
    assert same_connection(ca, cb)


async def test_third_node_gets_full_mesh_via_gossip(make_mesh: MakeMesh) -> None:
    a, b, c = await make_mesh(), await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await c.join([b.token()])  # c only knows b; a and c must find each other by gossip
    for mesh, others in ((a, (b, c)), (b, (a, c)), (c, (a, b))):
        await wait_until(mesh, knows(mesh, *others), 5.0, f"full mesh at {mesh.node_id[:8]}")
    for x, y in ((a, b), (a, c), (b, c)):
        ca, cb = await wait_single_connection(x, y)
        assert same_connection(ca, cb)


@pytest.mark.parametrize("round_", range(10))
async def test_simultaneous_dial_keeps_exactly_one(make_mesh: MakeMesh, round_: int) -> None:
    secret = new_secret()
    a, b = await make_mesh(secret=secret), await make_mesh(secret=secret)
    with a.subscribe() as sub_a, b.subscribe() as sub_b:
        await asyncio.gather(a.join([b.token()]), b.join([a.token()]))
        await wait_until(a, knows(a, b), 3.0, "a to see b")
        await wait_until(b, knows(b, a), 3.0, "b to see a")
        ca, cb = await wait_single_connection(a, b)
        assert same_connection(ca, cb)
        for sub in (sub_a, sub_b):  # the duplicate never looked like a lost peer
            kinds = set()
            while (event := sub.get_nowait()) is not None:
                kinds.add(event.kind)
            assert kinds <= {"added", "updated"}, kinds


async def test_update_announcement_is_gossiped(make_mesh: MakeMesh) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    b.update_announcement(replace(b.announcement, ready=True, models=("x", "y")))
    await wait_until(a, lambda: a.peers[b.node_id].announcement.ready is True, 2.0,
                     "b's update to reach a")
    ann = a.peers[b.node_id].announcement
    assert ann.models == ("x", "y")
    with pytest.raises(ValueError):
        b.update_announcement(replace(b.announcement, role="emperor"))
    with pytest.raises(ValueError):
        b.update_announcement(replace(b.announcement, node_id="ab" * 32))


async def test_join_errors_list_addresses(make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        silent_port = s.getsockname()[1]  # bound, never answers
        dead = encode_token(InviteToken("ef" * 32, [f"127.0.0.1:{silent_port}"], new_secret()))
        with pytest.raises(MeshJoinError) as info:
            await a.join([dead, "garbage!"], timeout=1.0)
    message = str(info.value)
    assert f"127.0.0.1:{silent_port}" in message and "no QUIC answer" in message
    assert "token 2" in message and "base64" in message
    with pytest.raises(MeshJoinError, match="own token"):
        await a.join([a.token()], timeout=1.0)
    assert await a.join([]) is None


# ---------------------------------------------------------------------------- leaving


async def test_graceful_stop_is_dropped_promptly(make_mesh: MakeMesh) -> None:
    a, b, c = await make_mesh(), await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await c.join([a.token()])
    for mesh, others in ((a, (b, c)), (b, (a, c))):
        await wait_until(mesh, knows(mesh, *others), 5.0, "full mesh")
    with a.subscribe() as sub_a, b.subscribe() as sub_b:
        start = time.monotonic()
        await c.stop()
        for sub in (sub_a, sub_b):
            event = await next_event(sub, c.node_id, {"removed", "disconnected"}, 2.0)
            assert event.kind == "removed"  # straight out: no reconnect attempts
        assert time.monotonic() - start < 1.0
    assert c.node_id not in a.peers and c.node_id not in b.peers
    assert knows(a, b)() and knows(b, a)()


async def test_abrupt_loss_removed_after_reconnect_budget(make_mesh: MakeMesh) -> None:
    fast_idle = MeshSettings(transport=TransportSettings(idle_timeout_s=1.0, keepalive_s=0.3))
    a = await make_mesh(settings=fast_idle)
    b = await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    with a.subscribe() as sub:
        await b.stop(graceful=False)  # no goodbye, no CONNECTION_CLOSE: a crash
        lost = await next_event(sub, b.node_id, {"disconnected", "removed"}, 5.0)
        assert lost.kind == "disconnected"
        assert a.peers[b.node_id].state == "reconnecting"
        removed = await next_event(sub, b.node_id, {"removed", "reconnected"}, 15.0)
    assert removed.kind == "removed"
    budget = a.settings.reconnect_timeout_s
    assert budget == 10.0
    assert budget - 0.5 <= removed.at - lost.at <= budget + 3.0
    assert b.node_id not in a.peers


@pytest.mark.parametrize("side", ["smaller", "larger"])
async def test_one_sided_drop_reconnects(make_mesh: MakeMesh, side: str) -> None:
    x, y = await make_mesh(), await make_mesh()
    await y.join([x.token()])
    await wait_until(x, knows(x, y), 2.0, "x to see y")
    await wait_until(y, knows(y, x), 2.0, "y to see x")
    small, large = sorted((x, y), key=lambda m: m.node_id)
    dropper, other = (small, large) if side == "smaller" else (large, small)
    with dropper.subscribe() as sub, other.subscribe() as other_sub:
        # Only one end loses the connection (as after a local timeout); the other end
        # still holds a connection that is dead on the far side.
        dropper.connections_to(other.node_id)[0].abort()
        assert (await next_event(sub, other.node_id, {"disconnected"}, 2.0)).kind
        await next_event(sub, other.node_id, {"reconnected", "removed"}, 5.0)
        assert dropper.peers[other.node_id].connected
        ca, cb = await wait_single_connection(dropper, other)
        assert same_connection(ca, cb)
        while (event := other_sub.get_nowait()) is not None:
            assert event.kind != "removed"
    assert other.peers[dropper.node_id].connected


async def test_restarted_peer_replaces_stale_connection(
    make_mesh: MakeMesh, tmp_path: Path
) -> None:
    a = await make_mesh()
    b = await make_mesh(home=tmp_path / "b")
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    await b.stop(graceful=False)  # a keeps a connection that nobody answers
    b2 = await make_mesh(home=tmp_path / "b")  # same identity, new process and port
    assert b2.node_id == b.node_id
    await b2.join([a.token()])
    await wait_until(a, lambda: b2.node_id in a.peers
                     and list(a.peers[b2.node_id].announcement.addrs) == b2.addrs,
                     3.0, "a to see the restarted b")
    ca, cb = await wait_single_connection(a, b2)
    assert same_connection(ca, cb)
    assert a.peers[b2.node_id].connected
    await echo_round_trip(a, b2)


# ---------------------------------------------------------------------------- refusals


async def test_wrong_secret_is_refused(make_mesh: MakeMesh, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    intruder = await make_mesh()
    bad = encode_token(InviteToken(a.node_id, a.addrs, new_secret()))
    with a.subscribe() as sub, caplog.at_level(logging.WARNING, logger="mesh_llm.mesh"):
        with pytest.raises(MeshJoinError, match="secret"):
            await intruder.join([bad], timeout=3.0)
        # The intruder hears "no" before a has logged it: wait for a's side, not the log.
        await wait_until_async(lambda: a.refused > 0, "a to count the refusal", 3)
        assert any("refused connection" in r.getMessage() for r in caplog.records)
        while (event := sub.get_nowait()) is not None:
            assert event.node_id != intruder.node_id
    assert intruder.node_id not in a.peers and not intruder.peers
    # The serving node keeps working: its peer stays and a new node can join.
    assert knows(a, b)()
    c = await make_mesh()
    await c.join([a.token()])
    await wait_until(a, knows(a, b, c), 3.0, "a to accept c after the refusal")


async def raw_client(mesh: Mesh) -> tuple[QuicTransport, Connection]:
    transport = QuicTransport()
    conn = await transport.connect("127.0.0.1", mesh.port, timeout=3)
    return transport, conn


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x07garbage that is not a stream type", id="garbage"),
        pytest.param(bytes((StreamType.GOSSIP,)) + encode_frame({"t": "state"}),
                     id="gossip-before-auth"),
        pytest.param(bytes((StreamType.AUTH,)) + struct.pack(">I", 0xFFFFFFFF) + b"x" * 100,
                     id="oversized-frame"),
        pytest.param(bytes((StreamType.AUTH,)) + struct.pack(">I", 5) + b"{nope",
                     id="bad-json"),
        pytest.param(bytes((StreamType.AUTH,)) + encode_frame({"t": "hello", "id": "x"}),
                     id="bad-hello"),
    ],
)
async def test_raw_client_garbage_is_closed(make_mesh: MakeMesh, payload: bytes) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    transport, conn = await raw_client(a)
    try:
        stream = await conn.open_stream()
        await stream.write(payload)
        async with asyncio.timeout(3):
            await conn.wait_closed()
        assert conn.close_code == CLOSE_AUTH_FAILED
    finally:
        await transport.close()
    assert knows(a, b)() and len(a.peers) == 1
    await echo_round_trip(a, b)


async def test_silent_raw_client_is_dropped_after_auth_timeout(make_mesh: MakeMesh) -> None:
    a = await make_mesh(settings=MeshSettings(auth_timeout_s=0.5))
    transport, conn = await raw_client(a)
    try:
        start = time.monotonic()
        async with asyncio.timeout(3):
            await conn.wait_closed()
        assert 0.4 <= time.monotonic() - start < 2.5
        assert conn.close_code == CLOSE_AUTH_FAILED
    finally:
        await transport.close()
    b = await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to still accept peers")


async def test_random_udp_is_ignored(make_mesh: MakeMesh) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    assert a.transport is not None
    before = len(a.transport.connections)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for size in (1, 7, 50, 1199, 1200, 1350, 1500):
            s.sendto(os.urandom(size), ("127.0.0.1", a.port))
        for _ in range(20):  # parses as a QUIC v1 Initial, decrypts to nothing
            fake = (b"\xc3" + struct.pack(">I", 1) + b"\x08" + os.urandom(8) + b"\x08"
                    + os.urandom(8) + b"\x00" + b"\x44\xd0" + os.urandom(1250))
            s.sendto(fake, ("127.0.0.1", a.port))
        # Our own datagrams are in the socket buffer; a round trip through the node
        # after them proves they were all read and handled.
        await echo_round_trip(b, a)
    assert len(a.transport.connections) == before
    assert knows(a, b)()
    c = await make_mesh()
    await c.join([a.token()])
    await wait_until(a, knows(a, b, c), 3.0, "a to accept a new peer")


# ---------------------------------------------------------------------------- streams


async def echo_handler(peer_id: str, stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)
    stream.close()


async def echo_round_trip(client: Mesh, server: Mesh, payload: bytes = b"ping") -> None:
    server.add_stream_handler(StreamType.RPC_TUNNEL, echo_handler)
    stream = await client.open_stream(server.node_id, StreamType.RPC_TUNNEL)
    await stream.write(payload)
    stream.write_eof()
    received = bytearray()
    async with asyncio.timeout(10):
        while chunk := await stream.read():
            received += chunk
    assert bytes(received) == payload
    stream.close()


async def test_stream_echo_both_directions(make_mesh: MakeMesh) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    await echo_round_trip(a, b)
    await echo_round_trip(b, a)
    big = os.urandom(3 * 1024 * 1024)  # above the 1 MiB high-water mark: backpressure
    await echo_round_trip(a, b, big)


async def test_sync_handler_and_unknown_type(make_mesh: MakeMesh) -> None:
    a, b = await make_mesh(), await make_mesh()
    await b.join([a.token()])
    await wait_until(a, knows(a, b), 2.0, "a to see b")
    seen: list[tuple[str, int]] = []

    def on_http(peer_id: str, stream: Stream) -> None:  # push mode, no task of its own
        def on_data(data: bytes) -> None:
            stream.write_nowait(data.upper())

        def on_end(exc: BaseException | None) -> None:
            seen.append((peer_id, stream.stream_id))
            stream.close()

        stream.set_receiver(on_data, on_end)

    b.add_stream_handler(StreamType.HTTP_TUNNEL, on_http)
    stream = await a.open_stream(b.node_id, StreamType.HTTP_TUNNEL)
    await stream.write(b"hello")
    stream.write_eof()
    async with asyncio.timeout(3):
        assert await stream.readexactly(5) == b"HELLO"
        assert await stream.read() == b""
    assert seen and seen[0][0] == a.node_id
    unknown = await a.open_stream(b.node_id, 99)
    await unknown.write(b"x")
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(3):
            await unknown.read()
    with pytest.raises(ValueError):
        b.add_stream_handler(StreamType.AUTH, on_http)
    with pytest.raises(Exception, match="not connected"):
        await a.open_stream("ab" * 32, StreamType.HTTP_TUNNEL)
