"""Candidates from announcements: view_of, elect (host, workers, exclusions), leaving_since."""

from __future__ import annotations

from mesh_llm.inference.candidates import NodeView, elect, leaving_since, view_of
from mesh_llm.mesh.peers import PeerInfo

GB = 10**9


def view(node_id: str, vram_gb: float = 1, **kw) -> NodeView:  # type: ignore[no-untyped-def]
    kw.setdefault("models", ("M",))
    kw.setdefault("fingerprint", "f1")
    kw.setdefault("rpc_version", "3.0.0")
    return NodeView(node_id, kw.pop("role", "worker"), int(vram_gb * GB), **kw)


def test_view_of_reads_what_the_election_needs_from_an_announcement() -> None:
    peer = PeerInfo("bb", {"role": "worker", "vram_bytes": 2 * GB, "models": ["M"],
                           "model_file": False, "model_fingerprint": "f1",
                           "rpc_version": "3.0.0", "leaving": True, "rpc_ready": True})
    assert view_of(peer) == NodeView("bb", "worker", 2 * GB, None, ("M",), False, "f1",
                                     "3.0.0", leaving=True, rpc_ready=True)
    bare = view_of(PeerInfo("cc", {}))
    assert (bare.fingerprint, bare.rpc_version, bare.leaving, bare.rpc_ready, bare.model_file) \
        == ("", "", False, False, True)
    odd = view_of(PeerInfo("dd", {"leaving": "yes", "rpc_ready": 1}))
    assert (odd.leaving, odd.rpc_ready) == (False, False), "only a real true counts"


def test_the_biggest_node_hosts_and_plans_only_workers_whose_rpc_server_is_up() -> None:
    me = view("aa", 1)
    up, down = view("bb", 2, rpc_ready=True), view("cc", 1, rpc_ready=False)
    outcome = elect(me, [up, down])
    assert outcome.host_id == "bb"
    assert outcome.me is not None and outcome.me.node_id == "aa"
    assert [c.node_id for c in outcome.workers] == ["bb"], "cc's ggml-rpc-server is not up"
    assert dict(outcome.excluded) == {}


def test_excluded_peers_are_neither_host_nor_worker() -> None:
    other = view("zz", 9, fingerprint="f2", rpc_ready=True)
    leaving = view("yy", 9, leaving=True, rpc_ready=True)
    outcome = elect(view("aa"), [other, leaving])
    assert outcome.host_id == "aa" and outcome.workers == ()
    assert set(outcome.excluded) == {"zz", "yy"}
    assert outcome.excluded["yy"] == "leaving the mesh"


def test_a_client_takes_part_in_no_plan() -> None:
    outcome = elect(None, [view("bb", rpc_ready=True), view("cc", 2, rpc_ready=True)])
    assert outcome.me is None and outcome.host_id == "cc"


def test_we_are_no_candidate_while_leaving() -> None:
    outcome = elect(view("aa", 9, leaving=True), [view("bb", 1, rpc_ready=True)])
    assert outcome.me is None and outcome.host_id == "bb"


def test_trusted_hosts_decide_the_host_not_the_workers() -> None:
    outcome = elect(view("aa", 1), [view("bb", 8, rpc_ready=True)], frozenset({"aa"}))
    assert outcome.host_id == "aa" and [c.node_id for c in outcome.workers] == ["bb"]


def test_leaving_since_keeps_the_first_sighting_and_forgets_those_back() -> None:
    first = leaving_since({}, [view("bb", leaving=True), view("cc")], now=10.0)
    assert first == {"bb": 10.0}
    later = leaving_since(first, [view("bb", leaving=True), view("cc", leaving=True)], 15.0)
    assert later == {"bb": 10.0, "cc": 15.0}
    assert leaving_since(later, [view("bb")], 20.0) == {}
