"""Reach on 127.0.0.1: a node recognises its own address and itself when dialling (one
line, not "authentication failed"), peers on this machine may share loopback addresses,
and the status's `addresses` and per-peer `link` are there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from mesh_llm.mesh import Mesh, MeshJoinError
from mesh_llm.mesh.invites import InviteToken, encode_token
from waiting import wait_until_async

MakeMesh = Callable[..., Awaitable[Mesh]]


def token_to(node_id: str, addrs: list[str], secret: bytes) -> str:
    return encode_token(InviteToken(node_id, addrs, secret))


async def test_a_token_that_points_at_this_node_says_so(make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    b = await make_mesh(secret=a.secret)
    assert a.secret is not None
    # Another node's id, but this node's own address: nothing is dialled.
    with pytest.raises(MeshJoinError, match="an address of this node itself") as err:
        await a.join([token_to(b.node_id, a.addrs, a.secret)], timeout=3)
    assert "\n" not in str(err.value)
    assert a.refused == 0, "no connection to ourselves was even attempted"


async def test_an_unlisted_address_of_this_node_is_recognised_by_its_certificate(
        make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    b = await make_mesh(secret=a.secret)
    assert a.secret is not None
    a._state.own_addrs = set()  # an address we could not know is ours (a NAT's hairpin)
    with pytest.raises(MeshJoinError, match="reaches this node itself"):
        await a.join([token_to(b.node_id, a.addrs, a.secret)], timeout=3)


async def test_peers_on_this_machine_share_loopback_and_report_no_observed_address(
        make_mesh: MakeMesh) -> None:
    a = await make_mesh()
    b = await make_mesh(secret=a.secret)
    assert a.secret is not None
    await b.join([token_to(a.node_id, a.addrs, a.secret)], timeout=5)
    await wait_until_async(lambda: a.node_id in b.peers and b.node_id in a.peers,
                           "both know each other", 5)
    assert b.peers[a.node_id].addrs[0] == a.addrs[0] == f"127.0.0.1:{a.port}"
    assert b.peers[a.node_id].to_status()["link"] == "direct"
    assert a.addresses() == {"bound": f"127.0.0.1:{a.port}", "lan": [f"127.0.0.1:{a.port}"],
                             "observed": []}, "a loopback report is never kept"
