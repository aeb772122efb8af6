"""A model split across two homes behind NAT routers, in the NAT lab (tests/natlab.py):
real nodes, real llama.cpp, real QUIC between network namespaces.

One lab serves every test of this module (pytest runs them in file order): P on the
internet serves another model (an F16 copy of SmolLM2, so it never joins the split), A in a
home behind an endpoint-independent NAT hosts SmolLM2 with `--split`, B in another such
home is its worker over their punched link, and C's home has a NAT that randomises ports.
The last test kills P. Every packet stays inside the lab's namespaces, which are deleted
even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelgen import dequantize_to_f16, smollm2_path
from natlab import LabNode, NatLab, lab_available, leftover_namespaces
from nodes import greedy

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]
TOKENS = 40
MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"


@dataclass
class SplitLab:
    lab: NatLab
    tmp: Path
    p: LabNode
    a: LabNode
    b: LabNode
    ids: dict[str, str]
    solo_text: str  # A's greedy answer while it served alone


def ask(node: LabNode) -> str:
    """The greedy answer through `node`'s API, asked from inside its machine."""
    return node.lab.call(node.machine, lambda: greedy(node, PROMPT, TOKENS))


def link(node: LabNode, peer_id: str) -> str | None:
    """How `node` is linked to `peer_id` now, or None without a connected link."""
    peer = node.peer(peer_id)
    return peer["link"] if peer is not None and peer["state"] == "connected" else None


def serving(node: LabNode, mode: str, workers: list[str]) -> dict[str, Any] | None:
    """`node`'s status once it hosts SmolLM2, its llama-server ready on a `mode` plan with
    `workers`."""
    status = node.status()
    plan = status["plan"] or {}
    ready = status["model"] == MODEL and status["host"] == status["node_id"] \
        and status["llama_ready"] and plan.get("mode") == mode \
        and plan.get("workers", []) == workers
    return status if ready else None


def tunnelled_chats(status: dict[str, Any]) -> int:
    return sum(routes.get(CHAT, 0) for routes in status["api_requests_tunnelled"].values())


@pytest.fixture(scope="module")
def split_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitLab]:
    tmp = tmp_path_factory.mktemp("natsplit")
    other_model = dequantize_to_f16(smollm2_path(), tmp / "relay-copy-f16.gguf")
    prefix = f"natsplit{os.getpid() % 100000}"
    with NatLab(prefix) as lab:
        lab.internet()
        lab.public("P")
        lab.home("A", 1)
        lab.home("B", 2)
        lab.home("C", 3, fully_random=True)
        p = lab.node("P", tmp / "p", "--model", str(other_model)).wait_ready()
        token = p.status()["token"]
        a = lab.node("A", tmp / "a", "--model", MODEL, "--split", "--max-vram", "2",
                     "--join", token)
        a.wait_for(lambda: serving(a, "solo", []), "A serving alone", 120)
        solo_text = ask(a)
        assert solo_text
        b = lab.node("B", tmp / "b", "--model", MODEL, "--max-vram", "1", "--join", token)
        ids = {"P": p.status()["node_id"], "A": a.status()["node_id"],
               "B": b.wait_for(lambda: b.status()["node_id"], "B's status")}
        yield SplitLab(lab, tmp, p, a, b, ids, solo_text)
    assert leftover_namespaces(prefix) == []


def test_a_split_over_a_punched_link_gives_the_solo_text(split_lab: SplitLab) -> None:
    a, b, ids = split_lab.a, split_lab.b, split_lab.ids
    a.wait_for(lambda: link(a, ids["B"]) == "punched", "A–B punched (A's view)", 60)
    b.wait_for(lambda: link(b, ids["A"]) == "punched", "A–B punched (B's view)", 20)
    status = a.wait_for(lambda: serving(a, "split", [ids["B"]]), "A's split with B", 120)
    assert status["role"] == "host" and b.status()["role"] == "worker"
    assert status["plan"]["tensor_split"] == [0.67, 0.33]
    assert ids["P"] not in status["plan"]["workers"], "P serves another model"
    assert ask(a) == split_lab.solo_text
    assert ask(b) == split_lab.solo_text, "B's API reaches its host over the punched link"
    # every decode step crossed the NATs: the worker holds a third of the layers
    assert status["rpc_tunnel"]["bytes_in"] > 0


def test_a_lite_client_behind_a_randomising_nat_gets_answers_through_the_relay(
        split_lab: SplitLab) -> None:
    lab, a, p, ids = split_lab.lab, split_lab.a, split_lab.p, split_lab.ids
    a.wait_for(lambda: serving(a, "split", [ids["B"]]), "A's split with B", 120)
    # an invite printed in A's home: A cannot be dialled, P (named as via) can
    client = lab.node("C", split_lab.tmp / "c", "--client", "--join",
                      a.status()["invites"]["client"])
    client.wait_ready(120)
    via = f"relayed (via {ids['P'][:12]})"
    client.wait_for(lambda: link(client, ids["A"]) == via, "C's client relayed to A", 60)
    forwarded = p.status()["relay"]["forwarded_bytes"]
    asked = tunnelled_chats(a.status())
    assert ask(client) == split_lab.solo_text
    assert tunnelled_chats(a.status()) == asked + 1, "A answered the client's request"
    relay = p.status()["relay"]
    assert relay["forwarded_bytes"] > forwarded + 1000, relay
    assert link(client, ids["A"]) == via, "the answer came through P"


def test_the_split_keeps_serving_with_one_percent_loss_on_the_internet(
        split_lab: SplitLab) -> None:
    lab, a, b, ids = split_lab.lab, split_lab.a, split_lab.b, split_lab.ids
    before = a.wait_for(lambda: serving(a, "split", [ids["B"]]), "A's split with B", 120)
    lab.loss(1)
    try:
        answers = 0
        # until a few of the split's own datagrams were dropped (each answer crosses the
        # A–B link hundreds of times), alternating the host's API and the worker's
        while answers < 3 or lab.lost()[1] < 3:
            assert answers < 20, f"only {lab.lost()} datagrams (passed, dropped) so far"
            assert ask(a if answers % 2 == 0 else b) == split_lab.solo_text
            answers += 1
        passed, dropped = lab.lost()
        assert dropped <= passed * 0.05, (passed, dropped)
    finally:
        lab.loss(0)
    after = serving(a, "split", [ids["B"]])
    assert after is not None and link(a, ids["B"]) == "punched"
    assert after["llama_servers"][0]["pid"] == before["llama_servers"][0]["pid"], \
        "the split did not restart"


def test_the_split_and_its_punched_link_outlive_the_public_member(
        split_lab: SplitLab) -> None:
    a, b, p, ids = split_lab.a, split_lab.b, split_lab.p, split_lab.ids
    before = a.wait_for(lambda: serving(a, "split", [ids["B"]]), "A's split with B", 120)
    p.kill()  # kill -9: no goodbye
    a.wait_for(lambda: link(a, ids["P"]) is None, "A notices P is gone", 30)
    b.wait_for(lambda: link(b, ids["P"]) is None, "B notices P is gone", 30)
    assert link(a, ids["B"]) == "punched" and link(b, ids["A"]) == "punched"
    assert ask(a) == split_lab.solo_text
    assert ask(b) == split_lab.solo_text
    after = serving(a, "split", [ids["B"]])
    assert after is not None
    assert after["llama_servers"][0]["pid"] == before["llama_servers"][0]["pid"], \
        "P's model leaving did not restart A's split"
