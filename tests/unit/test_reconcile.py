"""reconcile.decide: per model of ours, who hosts and whether we serve it (as whom, with
which workers, without which peers), as one table over small meshes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from mesh_llm.inference.candidates import NodeView
from mesh_llm.inference.groups import Group, NodeOffer, OfferedModel, model_groups
from mesh_llm.node.reconcile import Decision, SlotFacts, decide

GB = 10**9
ME, BIG, SMALL, FREE, CLIENT = "m" * 64, "b" * 64, "a" * 64, "f" * 64, "c" * 64
CHAT = OfferedModel("fp-chat", "Chat", GB)
CODER = OfferedModel("fp-coder", "Coder", GB)


@dataclass(frozen=True)
class Peer:
    """One peer: what it offers the groups and what it announces to the election."""

    node_id: str
    vram_gb: float
    models: tuple[OfferedModel, ...] = ()
    rpc: str = "3.0.0"
    rpc_ready: bool = True
    leaving: bool = False
    joined: str = ""
    client: bool = False

    def offer(self) -> NodeOffer:
        return NodeOffer(self.node_id, 0 if self.client else int(self.vram_gb * GB),
                         self.models, file_less=not self.models and not self.client,
                         client=self.client, leaving=self.leaving, joined=self.joined)

    def view(self) -> NodeView:
        return NodeView(self.node_id, "client" if self.client else "worker",
                        0 if self.client else int(self.vram_gb * GB),
                        models=tuple(m.name for m in self.models),
                        file_less=not self.models,
                        fingerprint=self.models[0].fingerprint if self.models else "",
                        rpc_version=self.rpc, leaving=self.leaving, rpc_ready=self.rpc_ready)


@dataclass(frozen=True)
class Case:
    what: str
    mine: tuple[OfferedModel, ...]  # our --models ((): a file-less worker, or a client)
    peers: tuple[Peer, ...]
    hosts: tuple[str | None, ...]  # per slot (or the followed group's host without slots)
    serve: tuple[bool, ...] = ()
    workers: tuple[tuple[str, ...], ...] = ()
    excluded: dict[str, str] = field(default_factory=dict)  # the first election's, by prefix
    vram_gb: float = 4
    active: tuple[bool, ...] = ()
    leaving: bool = False
    client: bool = False
    joined: str = ""


CASES = [
    Case("alone: we host our model", (CHAT,), (), (ME,), (True,), ((),)),
    Case("a bigger peer with our model hosts it", (CHAT,), (Peer(BIG, 8, (CHAT,)),), (BIG,),
         (False,)),
    Case("we host with the peers whose rpc server is up as workers", (CHAT,),
         (Peer(SMALL, 1, (CHAT,)), Peer("d" * 64, 1, (CHAT,), rpc_ready=False)), (ME,),
         (True,), ((SMALL,),)),
    Case("two models: a peer hosts one, we host the other", (CHAT, CODER),
         (Peer(BIG, 8, (CHAT,)),), (BIG, ME), (False, True), ((), ())),
    Case("a peer of another model is no worker of ours", (CHAT,), (Peer(BIG, 8, (CODER,)),),
         (ME,), (True,), ((),), {BIG: "serves Coder from another file"}),
    Case("a peer with another RPC protocol is left out", (CHAT,),
         (Peer(BIG, 8, (CHAT,), rpc="4.0.0"),), (ME,), (True,), ((),),
         {BIG: "llama.cpp RPC protocol 4.0.0 differs"}),
    Case("a leaving peer is left out", (CHAT,), (Peer(BIG, 8, (CHAT,), leaving=True),),
         (ME,), (True,), ((),), {BIG: "leaving the mesh"}),
    Case("leaving, we keep serving what we serve", (CHAT,), (), (ME,), (True,), ((),),
         active=(True,), leaving=True),
    Case("leaving, we never start to serve", (CHAT,), (), (ME,), (False,), ((),),
         leaving=True),
    Case("a file-less worker follows its joined group's host", (),
         (Peer(BIG, 2, (CHAT,)), Peer(SMALL, 2, (CODER,))), (BIG,), excluded={
             SMALL: "serves another model"}, vram_gb=1, joined="fp-chat"),
    Case("a file-less worker without a group has no host", (), (Peer(BIG, 2, (CHAT,)),),
         (None,), excluded={BIG: "serves another model"}, vram_gb=1),
    Case("a lite client follows the default model's host", (),
         (Peer(BIG, 2, (CHAT,)), Peer(CLIENT, 0, client=True)), (BIG,), client=True),
]


def run(case: Case) -> Decision:
    """The mesh's groups from every node's offer (ours first), then our decision."""
    me = Peer(ME, case.vram_gb, case.mine, joined=case.joined, client=case.client)
    groups = {g.key: g for g in model_groups([me.offer(), *(p.offer() for p in case.peers)])}
    active = case.active or (False,) * len(case.mine)
    slots = [SlotFacts(m.name, m.fingerprint, groups.get(m.fingerprint), a)
             for m, a in zip(case.mine, active, strict=True)]
    # a file-less worker follows the group it joined, a lite client the mesh default
    followed: Group | None = groups.get(CHAT.fingerprint if case.client else case.joined)
    view = None if case.client else NodeView(ME, "worker", int(case.vram_gb * GB),
                                             rpc_version="3.0.0")
    return decide(view, [p.view() for p in case.peers], slots, followed, case.leaving)


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_decide(case: Case) -> None:
    got = run(case)
    if case.mine:
        assert got.follow is None
        assert tuple(a.host_id for a in got.slots) == case.hosts
        assert tuple(a.serve for a in got.slots) == case.serve
        for action, workers in zip(got.slots, case.workers, strict=False):
            assert tuple(w.node_id for w in action.workers) == workers
            assert (action.me is not None) == action.serve
            assert action.me is None or action.me.node_id == ME
    else:
        assert got.slots == () and got.follow is not None
        assert (got.first.host_id,) == case.hosts and not got.first.serve
    excluded = dict(got.first.excluded)
    assert set(excluded) == set(case.excluded)
    for peer, why in case.excluded.items():
        assert excluded[peer].startswith(why), excluded[peer]


def test_a_slot_in_no_group_has_no_host_and_serves_nothing() -> None:
    got = decide(NodeView(ME, "worker", 4 * GB), [], [SlotFacts("Chat", "fp-chat", None)],
                 None, False)
    assert got.first.host_id is None and not got.first.serve and got.first.me is None


def test_a_node_without_slots_or_group_follows_no_one() -> None:
    assert decide(None, [], [], None, False).first.host_id is None


def test_decide_keeps_a_worker_behind_a_slow_link_out_of_every_slot() -> None:
    """--max-split-rtt reaches each model's election: our host plan leaves the far peer out
    and the status's excluded names it with its RTT; the near one serves."""
    far = Peer(BIG, 1, (CHAT,))
    near = Peer(SMALL, 1, (CHAT,))
    groups = {g.key: g for g in model_groups([Peer(ME, 4, (CHAT,)).offer(), far.offer(),
                                              near.offer()])}
    views = [replace(far.view(), rtt_ms=95.0), replace(near.view(), rtt_ms=5.0)]
    got = decide(NodeView(ME, "worker", 4 * GB, rpc_version="3.0.0"), views,
                 [SlotFacts("Chat", "fp-chat", groups["fp-chat"])], None, False, 80.0)
    assert got.first.serve and [w.node_id for w in got.first.workers] == [SMALL]
    assert dict(got.first.excluded) == {BIG: "rtt 95 ms: over --max-split-rtt 80 ms"}
