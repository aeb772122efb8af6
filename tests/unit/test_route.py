"""route(): where an API request goes, for every role and readiness, as one table."""

from __future__ import annotations

from typing import Any

import pytest

from mesh_llm.inference.election import Plan
from mesh_llm.mesh.announcement import Announcement
from mesh_llm.mesh.peers import PeerInfo
from mesh_llm.node.route import WAITING_FOR_A_HOST, Route, route

ME, HOST = "me" * 32, "ab" * 32
READY_HOST = PeerInfo(HOST, Announcement(HOST, ready=True))
LOADING_HOST = PeerInfo(HOST, Announcement(HOST, ready=False))
WAITING = Plan("waiting", ME, reason="waiting for more VRAM: need 2.2 GB, mesh has 1.0 GB")
SOLO = Plan("solo", ME, tensor_split=(1.0,))
NO_HOST = "no host is ready: waiting for a node that serves a model"

BASE: dict[str, Any] = dict(node_id=ME, host_id=None, host=None, llama_port=None, held=False,
                            plan=None, model="SmolLM2", file_less=False)

CASES = [
    # we host
    ("host, llama-server answers", dict(host_id=ME, llama_port=4100, plan=SOLO),
     Route(port=4100)),
    ("host, still loading", dict(host_id=ME, plan=SOLO),
     Route(reason="the model SmolLM2 is still loading")),
    ("host, waiting for memory", dict(host_id=ME, plan=WAITING), Route(reason=WAITING.reason)),
    ("host, CPU switch holds requests", dict(host_id=ME, llama_port=4100, held=True, plan=SOLO),
     Route(reason="switching to the new llama-server: the old one finishes its streams first")),
    # another node hosts
    ("worker, host ready", dict(host_id=HOST, host=READY_HOST), Route(peer=HOST)),
    ("worker, host loading", dict(host_id=HOST, host=LOADING_HOST),
     Route(reason=f"the host {HOST[:12]} is still loading its model")),
    ("worker, host out of reach", dict(host_id=HOST), Route(reason=NO_HOST)),
    ("no host at all", {}, Route(reason=NO_HOST)),
    ("worker without a file, no host", dict(file_less=True), Route(reason=WAITING_FOR_A_HOST)),
    ("worker without a file, host ready", dict(file_less=True, host_id=HOST, host=READY_HOST),
     Route(peer=HOST)),
    ("a local port left from hosting is not used by a worker",
     dict(host_id=HOST, host=READY_HOST, llama_port=4100), Route(peer=HOST)),
]


@pytest.mark.parametrize(("what", "given", "expected"), CASES, ids=[c[0] for c in CASES])
def test_route(what: str, given: dict[str, Any], expected: Route) -> None:
    got = route(**{**BASE, **given})
    assert got == expected, what
    assert got.ready == (expected.port is not None or expected.peer is not None)
    assert got.ready != bool(got.reason), "a reason exactly when there is nowhere to go"
