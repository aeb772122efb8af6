"""Who may serve with whom: view_of, elect_group (host, workers, exclusions, inside one
model's group; the groups themselves are test_groups.py's) and leaving_since."""

from __future__ import annotations

from dataclasses import replace

from mesh_llm.inference.candidates import (
    Electorate,
    NodeView,
    elect_group,
    far_peers,
    leaving_since,
    too_far,
    view_of,
)
from mesh_llm.inference.election import Candidate
from mesh_llm.inference.groups import NodeOffer, OfferedModel, model_groups
from mesh_llm.mesh.announcement import Announcement
from mesh_llm.mesh.peers import PeerInfo

GB = 10**9


def view(node_id: str, models: tuple[str, ...] = ("M",), fp: str = "f1", vram_gb: float = 1,
         **kw) -> NodeView:  # type: ignore[no-untyped-def]
    return NodeView(node_id, kw.pop("role", "worker"), int(vram_gb * GB), models=models,
                    fingerprint=fp, rpc_version=kw.pop("rpc", "3.0.0"), **kw)


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.node_id for c in candidates]


def node(node_id: str, vram_gb: float = 1, **kw) -> NodeView:  # type: ignore[no-untyped-def]
    kw.setdefault("models", ("M",))
    kw.setdefault("fingerprint", "f1")
    kw.setdefault("rpc_version", "3.0.0")
    return NodeView(node_id, kw.pop("role", "worker"), int(vram_gb * GB), **kw)


def elect(me: NodeView | None, peers: list[NodeView],
          trusted_hosts: frozenset[str] | None = None) -> Electorate:
    """The node's election for one model: the mesh's groups from every node's offer
    (each view's model, 0.1 GB), then our model's group (a client: model M's)."""
    offers = [NodeOffer(v.node_id, v.vram_bytes,
                        (OfferedModel(v.fingerprint, v.models[0], GB // 10),),
                        leaving=v.leaving)
              for v in ([me] if me is not None else []) + peers if v.role != "client"]
    groups = {g.key: g for g in model_groups(offers, trusted_hosts)}
    return elect_group(me, peers, groups.get(me.fingerprint if me is not None else "f1"))


def test_view_of_reads_what_the_election_needs_from_an_announcement() -> None:
    peer = PeerInfo("bb", Announcement("bb", role="worker", vram_bytes=2 * GB, models=("M",),
                                       model_file=False, model_fingerprint="f1",
                                       rpc_version="3.0.0", leaving=True, rpc_ready=True))
    assert view_of(peer) == NodeView("bb", "worker", 2 * GB, None, ("M",), True, "f1",
                                     "3.0.0", leaving=True, rpc_ready=True)
    bare = view_of(PeerInfo("cc", Announcement("cc")))
    assert (bare.fingerprint, bare.rpc_version, bare.leaving, bare.rpc_ready, bare.file_less) \
        == ("", "", False, False, False)


def test_the_biggest_node_hosts_and_plans_only_workers_whose_rpc_server_is_up() -> None:
    me = node("aa", 1)
    up, down = node("bb", 2, rpc_ready=True), node("cc", 1, rpc_ready=False)
    outcome = elect(me, [up, down])
    assert outcome.host_id == "bb"
    assert outcome.me is not None and outcome.me.node_id == "aa"
    assert [c.node_id for c in outcome.workers] == ["bb"], "cc's ggml-rpc-server is not up"
    assert dict(outcome.excluded) == {}


def test_excluded_peers_are_neither_host_nor_worker() -> None:
    other = node("zz", 9, fingerprint="f2", rpc_ready=True)
    leaving = node("yy", 9, leaving=True, rpc_ready=True)
    outcome = elect(node("aa"), [other, leaving])
    assert outcome.host_id == "aa" and outcome.workers == ()
    assert set(outcome.excluded) == {"zz", "yy"}
    assert outcome.excluded["yy"] == "leaving the mesh"


def test_a_client_takes_part_in_no_plan() -> None:
    outcome = elect(None, [node("bb", rpc_ready=True), node("cc", 2, rpc_ready=True)])
    assert outcome.me is None and outcome.host_id == "cc"


def test_we_are_no_candidate_while_leaving() -> None:
    outcome = elect(node("aa", 9, leaving=True), [node("bb", 1, rpc_ready=True)])
    assert outcome.me is None and outcome.host_id == "bb"


def test_trusted_hosts_decide_the_host_not_the_workers() -> None:
    outcome = elect(node("aa", 1), [node("bb", 8, rpc_ready=True)], frozenset({"aa"}))
    assert outcome.host_id == "aa" and [c.node_id for c in outcome.workers] == ["bb"]


def test_leaving_since_keeps_the_first_sighting_and_forgets_those_back() -> None:
    first = leaving_since({}, [node("bb", leaving=True), node("cc")], now=10.0)
    assert first == {"bb": 10.0}
    later = leaving_since(first, [node("bb", leaving=True), node("cc", leaving=True)], 15.0)
    assert later == {"bb": 10.0, "cc": 15.0}
    assert leaving_since(later, [node("bb")], 20.0) == {}


def test_a_model_held_second_has_one_host_on_every_node() -> None:
    """A holds X only; B holds Y first and X second and is bigger: X is one group, so A and
    B elect the same host for it (the primary's election once left B out of A's, and both
    hosted X)."""
    x, y = OfferedModel("fx", "X", GB), OfferedModel("fy", "Y", GB)
    a_offer = NodeOffer("aa", int(1.1 * GB), (x,))
    b_offer = NodeOffer("bb", int(2.2 * GB) + GB, (y, x))
    a = NodeView("aa", "worker", a_offer.vram_bytes, models=("X",), fingerprint="fx",
                 rpc_version="3.0.0", rpc_ready=True)
    b = NodeView("bb", "worker", b_offer.vram_bytes, models=("Y",), fingerprint="fy",
                 rpc_version="3.0.0", rpc_ready=True)
    groups = {g.key: g for g in model_groups([a_offer, b_offer])}
    on_a = elect_group(a, [b], groups["fx"])
    on_b = elect_group(b, [a], groups["fx"])
    assert on_a.host_id == on_b.host_id == "bb"
    assert "bb" not in on_a.excluded, "B serves X too: it is no other model for A"
    assert on_a.me is not None and on_a.me.node_id == "aa"
    assert [c.node_id for c in on_a.workers] == ["bb"]


def test_a_group_election_keeps_the_exclusion_rules() -> None:
    """Inside a group, a peer with another RPC protocol or leaving is out (with its
    reason), a peer of another model is named with why, and none of them may host."""
    x, y = OfferedModel("f1", "M", GB), OfferedModel("f2", "Other", GB)
    offers = [NodeOffer("aa", 2 * GB, (x,)), NodeOffer("bb", 9 * GB, (x,)),
              NodeOffer("cc", 9 * GB, (y,)), NodeOffer("dd", 9 * GB, (x,))]
    group = next(g for g in model_groups(offers) if g.key == "f1")
    me = view("aa", fp="f1", vram_gb=2)
    peers = [view("bb", rpc="4.0.0", vram_gb=9, rpc_ready=True),
             view("cc", ("Other",), fp="f2", vram_gb=9, rpc_ready=True),
             view("dd", vram_gb=9, leaving=True, rpc_ready=True)]
    outcome = elect_group(me, peers, group)
    assert outcome.host_id == "aa" and outcome.workers == ()
    assert "RPC protocol 4.0.0 differs from ours (3.0.0)" in outcome.excluded["bb"]
    assert "another file" in outcome.excluded["cc"]
    assert outcome.excluded["dd"] == "leaving the mesh"


def test_a_client_follows_the_group_it_is_given() -> None:
    x = OfferedModel("f1", "M", GB)
    group = model_groups([NodeOffer("bb", 2 * GB, (x,)), NodeOffer("cc", 3 * GB, (x,))])[0]
    outcome = elect_group(None, [view("bb", vram_gb=2), view("cc", vram_gb=3)], group)
    assert outcome.host_id == "cc" and outcome.me is None
    assert elect_group(view("aa"), [], None).host_id is None


def test_too_far_holds_a_link_over_the_limit_out_and_readmits_it_well_under() -> None:
    assert too_far(81.0, 80.0, held=False) == "rtt 81 ms: over --max-split-rtt 80 ms"
    assert too_far(80.0, 80.0, held=False) is None, "at the limit is allowed"
    assert too_far(None, 80.0, held=False) is None, "not measured yet: nothing to say"
    assert too_far(500.0, None, held=False) is None, "no limit (--max-split-rtt 0)"
    # once held out, it takes an RTT under READMIT x the limit to come back
    assert too_far(75.0, 80.0, held=True) is not None
    assert too_far(71.0, 80.0, held=True) is None
    assert far_peers([node("bb", rtt_ms=100.0), node("cc", rtt_ms=75.0),
                      node("dd", rtt_ms=75.0), node("ee")], 80.0,
                     frozenset({"cc"})) == {"bb", "cc"}


def test_a_worker_behind_a_slow_link_is_excluded_with_its_rtt() -> None:
    """A split never places a worker behind a link over --max-split-rtt; the status names
    the peer and its RTT, and a near worker still serves."""
    far, near = node("bb", 1, rpc_ready=True, rtt_ms=120.0), node("cc", 1, rpc_ready=True,
                                                                   rtt_ms=20.0)
    outcome = elect(node("aa", 2), [far, near])
    assert ids(list(outcome.workers)) == ["bb", "cc"], "no limit given: everyone"
    me, peers = node("aa", 2), [far, near]
    groups = {g.key: g for g in model_groups(
        [NodeOffer(v.node_id, v.vram_bytes, (OfferedModel("f1", "M", GB // 10),))
         for v in [me, *peers]])}
    limited = elect_group(me, peers, groups["f1"], max_rtt_ms=80.0)
    assert ids(list(limited.workers)) == ["cc"]
    assert limited.excluded == {"bb": "rtt 120 ms: over --max-split-rtt 80 ms"}
    assert limited.far == {"bb"}
    held = elect_group(me, [replace(far, rtt_ms=75.0), near], groups["f1"], 80.0,
                       far_before=frozenset({"bb"}))
    assert ids(list(held.workers)) == ["cc"], "75 ms is not under 72: still held out"
    back = elect_group(me, [replace(far, rtt_ms=30.0), near], groups["f1"], 80.0,
                       far_before=frozenset({"bb"}))
    assert ids(list(back.workers)) == ["bb", "cc"] and back.excluded == {}


def test_a_far_peer_still_counts_for_the_host_so_every_node_elects_the_same() -> None:
    """B is biggest and far from A: A does not plan B as a worker, but B is still the host
    on A as on every node (a node's own RTT must not give the mesh two hosts)."""
    me, far = node("aa", 1), node("bb", 9, rpc_ready=True, rtt_ms=200.0)
    groups = {g.key: g for g in model_groups(
        [NodeOffer(v.node_id, v.vram_bytes, (OfferedModel("f1", "M", GB // 10),))
         for v in (me, far)])}
    outcome = elect_group(me, [far], groups["f1"], max_rtt_ms=80.0)
    assert outcome.host_id == "bb" and outcome.workers == ()
    assert outcome.excluded["bb"].startswith("rtt 200 ms")
    client = elect_group(None, [far], groups["f1"], max_rtt_ms=80.0)
    assert client.host_id == "bb" and client.excluded == {}, "a client splits nothing"
