"""The multi-model mesh's pure decisions: each row is one behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.inference.election import Candidate, elect_host, make_plan
from mesh_llm.inference.groups import (
    Group,
    NodeOffer,
    OfferedModel,
    choose_group,
    group_key,
    local_allocation,
    mesh_default,
    model_groups,
    need_bytes,
)

GB = 10**9
CODER = OfferedModel("fp-coder", "Qwen2.5-Coder-7B", 5 * GB)
CHAT = OfferedModel("fp-chat", "Llama-3.2-3B", 2 * GB)
SMALL = OfferedModel("fp-small", "SmolLM2-135M-Instruct", GB // 10)
BIG = OfferedModel("fp-big", "Qwen2.5-32B", 20 * GB)


def node(node_id: str, vram_gb: float, *models: OfferedModel, **kw: object) -> NodeOffer:
    return NodeOffer(node_id, int(vram_gb * GB), tuple(models), **kw)  # type: ignore[arg-type]


def by_key(groups: list[Group]) -> dict[str, Group]:
    return {g.key: g for g in groups}


# ---- local_allocation: several --model on one node -------------------------------------

# (behaviour, vram GB, models, hosted [(name, GB)], share (name, GB) | None, left out names)
ALLOCATIONS = [
    ("one model that fits gets the whole VRAM, as a one-model node today",
     10, [CODER], [("Qwen2.5-Coder-7B", 10)], None, []),
    ("one model too big is offered whole as a split share (it may still host the split)",
     4, [CODER], [], ("Qwen2.5-Coder-7B", 4), []),
    ("two that fit side by side are both hosted; the leftover stays with the first",
     10, [CODER, CHAT], [("Qwen2.5-Coder-7B", 7.8), ("Llama-3.2-3B", 2.2)], None, []),
    ("the one that does not fit beside the others gets the leftover as a split share",
     6, [CODER, CHAT], [("Qwen2.5-Coder-7B", 5.5)], ("Llama-3.2-3B", 0.5), []),
    ("--model order decides: the first that does not fit waits for a split",
     6, [CHAT, CODER], [("Llama-3.2-3B", 2.2)], ("Qwen2.5-Coder-7B", 3.8), []),
    ("a later model that fits is hosted although an earlier one does not",
     3, [CODER, CHAT], [("Llama-3.2-3B", 2.2)], ("Qwen2.5-Coder-7B", 0.8), []),
    ("with no VRAM left over, the model that does not fit is left out",
     5.5, [CODER, CHAT], [("Qwen2.5-Coder-7B", 5.5)], None, ["Llama-3.2-3B"]),
    ("only one split share: memory given to one is not counted again for another",
     6, [CODER, CHAT, BIG], [("Qwen2.5-Coder-7B", 5.5)], ("Llama-3.2-3B", 0.5),
     ["Qwen2.5-32B"]),
    ("the same weights under a second name are one model, offered once",
     10, [CODER, OfferedModel("fp-coder", "coder-copy", 5 * GB)],
     [("Qwen2.5-Coder-7B", 10)], None, ["coder-copy"]),
    ("a node with no VRAM still offers its only model (the plan then waits for workers)",
     0, [SMALL], [], ("SmolLM2-135M-Instruct", 0), []),
]


@pytest.mark.parametrize(("vram", "models", "hosted", "share", "left_out"),
                         [row[1:] for row in ALLOCATIONS], ids=[row[0] for row in ALLOCATIONS])
def test_local_allocation(vram: float, models: list[OfferedModel],
                          hosted: list[tuple[str, float]], share: tuple[str, float] | None,
                          left_out: list[str]) -> None:
    got = local_allocation(int(vram * GB), models)
    assert [(b.model.name, round(b.vram_bytes / GB, 2)) for b in got.hosted] == hosted
    assert (None if got.share is None else
            (got.share.model.name, round(got.share.vram_bytes / GB, 2))) == share
    assert [m.name for m, _ in got.left_out] == left_out
    assert all(why for _, why in got.left_out), "every model left out says why"
    given_out = sum(b.vram_bytes for b in got.hosted) + (got.share.vram_bytes if got.share else 0)
    assert given_out <= max(0, int(vram * GB)), "no byte of VRAM is given twice"


def test_a_model_left_out_says_what_it_needs_and_beside_what() -> None:
    (_, why), = local_allocation(int(5.5 * GB), [CODER, CHAT]).left_out
    assert "Qwen2.5-Coder-7B" in why and "2.2 GB" in why


@given(st.integers(0, 100 * GB),
       st.lists(st.sampled_from([CODER, CHAT, SMALL, BIG]), min_size=1, max_size=4, unique=True))
def test_every_model_is_hosted_shared_or_left_out_and_vram_is_never_overspent(
        vram: int, models: list[OfferedModel]) -> None:
    got = local_allocation(vram, models)
    placed = [b.model for b in got.hosted] + ([got.share.model] if got.share else []) + \
        [m for m, _ in got.left_out]
    assert sorted(m.name for m in placed) == sorted(m.name for m in models)
    assert sum(b.vram_bytes for b in got.hosted) + \
        (got.share.vram_bytes if got.share else 0) <= vram
    assert all(b.vram_bytes >= need_bytes(b.model.size_bytes) for b in got.hosted)
    hosted = [b.model.name for b in got.hosted]
    assert hosted == [m.name for m in models if m.name in hosted], "in --model order"


# ---- model_groups ------------------------------------------------------------------------

def test_each_model_is_a_group_with_its_own_host() -> None:
    groups = by_key(model_groups([node("aa", 8, CODER), node("bb", 4, CHAT),
                                  node("cc", 6, CODER)]))
    assert set(groups) == {"fp-coder", "fp-chat"}
    assert (groups["fp-coder"].host, groups["fp-coder"].nodes) == ("aa", ("aa", "cc"))
    assert (groups["fp-chat"].host, groups["fp-chat"].nodes) == ("bb", ("bb",))
    assert groups["fp-coder"].size_bytes == 5 * GB


# (behaviour, nodes, group key, expected host)
ELECTIONS = [
    ("most VRAM among nodes with the file hosts",
     [node("aa", 8, CODER), node("bb", 16, CODER), node("cc", 32, CHAT)], "fp-coder", "bb"),
    ("ties go to the larger id",
     [node("aa", 8, CODER), node("ff", 8, CODER), node("bb", 8, CODER)], "fp-coder", "ff"),
    ("a file-less worker never hosts, even with the most VRAM",
     [node("aa", 8, CODER), node("zz", 80, file_less=True, joined="fp-coder")],
     "fp-coder", "aa"),
    ("a client never hosts nor serves",
     [node("aa", 8, CODER), node("zz", 80, CODER, client=True)], "fp-coder", "aa"),
    ("a leaving node is planned without",
     [node("aa", 8, CODER), node("zz", 80, CODER, leaving=True)], "fp-coder", "aa"),
    ("a node's VRAM for a model is what its allocation gives it, not its whole VRAM",
     # zz has 12 GB but gives 5.5 of them to the coder: 6.5 left for chat < aa's 7
     [node("aa", 7, CHAT), node("zz", 12, CODER, CHAT)], "fp-chat", "aa"),
]


@pytest.mark.parametrize(("nodes", "key", "host"), [r[1:] for r in ELECTIONS],
                         ids=[r[0] for r in ELECTIONS])
def test_group_election(nodes: list[NodeOffer], key: str, host: str) -> None:
    assert by_key(model_groups(nodes))[key].host == host


def test_the_same_weights_under_two_names_are_one_group_named_by_most_nodes() -> None:
    copy = OfferedModel("fp-coder", "my-coder", 5 * GB)
    groups = model_groups([node("aa", 8, CODER), node("bb", 8, copy), node("cc", 8, copy)])
    (group,) = groups
    assert (group.name, group.aliases) == ("my-coder", ("my-coder", "Qwen2.5-Coder-7B"))
    assert group.nodes == ("aa", "bb", "cc")


def test_two_files_under_one_name_are_two_groups() -> None:
    other = OfferedModel("fp-other", "Qwen2.5-Coder-7B", 5 * GB)
    groups = model_groups([node("aa", 8, CODER), node("bb", 8, other)])
    assert sorted(g.key for g in groups) == ["fp-coder", "fp-other"]
    assert all(len(g.nodes) == 1 for g in groups)


def test_nodes_without_a_fingerprint_are_grouped_by_name() -> None:
    unknown = OfferedModel("", "SmolLM2-135M-Instruct", GB // 10)
    (group,) = model_groups([node("aa", 1, unknown), node("bb", 1, unknown)])
    assert group.key == group_key(unknown) == "name:smollm2-135m-instruct"
    assert group.nodes == ("aa", "bb")


def test_a_node_without_a_fingerprint_joins_the_one_group_its_name_is_announced_in() -> None:
    unknown = OfferedModel("", "smollm2-135m-instruct", GB // 10)
    nodes = [node("aa", 1, unknown, started_at=1), node("bb", 1, SMALL, started_at=2)]
    (group,) = model_groups(nodes)
    assert (group.key, group.nodes) == ("fp-small", ("aa", "bb"))
    assert mesh_default(nodes, [group]) == "fp-small"


def test_a_name_two_weights_are_announced_under_leaves_a_node_without_one_apart() -> None:
    unknown = OfferedModel("", "SmolLM2-135M-Instruct", GB // 10)
    other = OfferedModel("fp-other", "SmolLM2-135M-Instruct", GB // 10)
    groups = by_key(model_groups([node("aa", 1, unknown), node("bb", 1, SMALL),
                                  node("cc", 1, other)]))
    assert sorted(groups) == ["fp-other", "fp-small", "name:smollm2-135m-instruct"]


def test_a_model_only_a_leaving_node_holds_leaves_the_mesh() -> None:
    groups = model_groups([node("aa", 8, CODER), node("bb", 8, CHAT, leaving=True)])
    assert [g.key for g in groups] == ["fp-coder"]


def test_groups_are_listed_by_name() -> None:
    groups = model_groups([node("aa", 8, CODER), node("bb", 8, CHAT), node("cc", 1, SMALL)])
    assert [g.name for g in groups] == ["Llama-3.2-3B", "Qwen2.5-Coder-7B",
                                        "SmolLM2-135M-Instruct"]


def test_memory_given_to_one_model_is_not_counted_again_for_another() -> None:
    groups = by_key(model_groups([node("zz", 6, CODER, CHAT)]))
    assert groups["fp-coder"].vram_bytes() == int(5.5 * GB)
    assert groups["fp-chat"].vram_bytes() == int(0.5 * GB)
    assert groups["fp-coder"].plan().mode == "solo"
    assert groups["fp-chat"].plan().mode == "waiting", "0.5 GB cannot run a 2 GB model"


def test_a_node_that_leaves_a_model_out_says_why_and_the_model_waits() -> None:
    groups = by_key(model_groups([node("zz", 5.5, CODER, CHAT)]))
    chat = groups["fp-chat"]
    assert (chat.host, chat.nodes) == (None, ())
    (who, why), = chat.left_out
    assert who == "zz" and "no VRAM left" in why
    plan = chat.plan()
    assert plan.mode == "waiting" and "no node may host Llama-3.2-3B" in plan.reason
    assert "no VRAM left" in plan.reason


def test_only_trusted_nodes_host() -> None:
    groups = by_key(model_groups([node("aa", 4, CODER), node("bb", 16, CODER)],
                                 trusted_hosts=frozenset({"aa"})))
    assert groups["fp-coder"].host == "aa"
    assert groups["fp-coder"].nodes == ("aa", "bb"), "an untrusted node still serves"


def test_a_file_less_worker_serves_only_the_group_it_joined() -> None:
    worker = node("ww", 30, file_less=True, joined="fp-big")
    groups = by_key(model_groups([node("aa", 8, BIG), node("bb", 8, CHAT), worker]))
    assert groups["fp-big"].nodes == ("aa", "ww")
    assert groups["fp-chat"].nodes == ("bb",)
    plan = groups["fp-big"].plan()
    assert (plan.mode, plan.host, plan.workers) == ("split", "aa", ("ww",))


def test_a_file_less_worker_that_has_not_chosen_serves_nothing_yet() -> None:
    groups = model_groups([node("aa", 8, CODER), node("ww", 30, file_less=True)])
    assert groups[0].nodes == ("aa",)


# (behaviour, nodes, key, force_split, expected (mode, host, workers))
PLANS = [
    ("solo when the host fits the model", [node("aa", 8, CODER), node("bb", 8, CODER)],
     "fp-coder", False, ("solo", "bb", ())),
    ("split over the group's nodes when it does not fit",
     [node("aa", 3, CODER), node("bb", 4, CODER)], "fp-coder", False, ("split", "bb", ("aa",))),
    ("--split spreads over every node of the group, not over other groups' nodes",
     [node("aa", 8, CODER), node("bb", 8, CODER), node("cc", 8, CHAT)], "fp-coder", True,
     ("split", "bb", ("aa",))),
    ("too little VRAM in the group: waiting", [node("aa", 3, CODER), node("cc", 30, CHAT)],
     "fp-coder", False, ("waiting", "aa", ())),
]


@pytest.mark.parametrize(("nodes", "key", "force", "want"), [r[1:] for r in PLANS],
                         ids=[r[0] for r in PLANS])
def test_group_plan(nodes: list[NodeOffer], key: str, force: bool,
                    want: tuple[str, str, tuple[str, ...]]) -> None:
    plan = by_key(model_groups(nodes))[key].plan(force_split=force)
    assert (plan.mode, plan.host, plan.workers) == want


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 40)),
                min_size=1, max_size=6, unique_by=lambda t: t[0]),
       st.booleans())
def test_a_one_model_mesh_decides_exactly_what_it_decides_today(
        nodes: list[tuple[str, int]], force: bool) -> None:
    offers = [node(n, v, CODER) for n, v in nodes]
    (group,) = model_groups(offers)
    old = [Candidate(n, "worker", v * GB) for n, v in nodes]
    host = elect_host(old)
    assert group.host == host
    old_host = next(c for c in old if c.node_id == host)
    assert group.plan(force) == make_plan(old_host, old, CODER.size_bytes, force)


def test_requests_are_summed_over_every_node_clients_included_and_bounded() -> None:
    groups = by_key(model_groups([
        node("aa", 8, CODER, requests_per_min={"fp-coder": 3, "fp-chat": 1}),
        node("bb", 8, CHAT, requests_per_min={"fp-chat": 4}),
        node("cc", 0, client=True, requests_per_min={"fp-coder": 5, "fp-chat": -7}),
    ]))
    assert groups["fp-coder"].requests_per_min == 8
    assert groups["fp-chat"].requests_per_min == 5, "a negative claim counts as 0"


# ---- choose_group: where a file-less worker goes -----------------------------------------

def mesh(*offers: NodeOffer) -> list[Group]:
    return model_groups(offers)


BUSY_CHAT = node("bb", 8, CHAT, requests_per_min={"fp-chat": 50})
WORKER = node("ww", 16, file_less=True)

# (behaviour, worker, groups, current, expected key, words in the reason)
CHOICES = [
    ("a model that cannot be served without it comes first, before a busier one",
     WORKER, mesh(node("aa", 8, BIG), BUSY_CHAT), "", "fp-big", "cannot be served"),
    ("among the needy, one it completes before one it only brings closer",
     WORKER, mesh(node("aa", 1, BIG), node("bb", 1, CODER), node("cc", 4, CHAT)), "",
     "fp-coder", "now it can run"),
    ("one it only brings closer is still joined when no other needs it",
     WORKER, mesh(node("aa", 1, BIG), node("cc", 4, CHAT)), "", "fp-big",
     "still short"),
    ("among the needy it completes, the most requested",
     WORKER, mesh(node("aa", 1, CODER), node("bb", 1, CHAT, requests_per_min={"fp-chat": 2})),
     "", "fp-chat", "cannot be served"),
    ("every model served: the one with most requests in the last minute",
     WORKER, mesh(node("aa", 8, CODER, requests_per_min={"fp-coder": 1}), BUSY_CHAT), "",
     "fp-chat", "most requests (50"),
    ("no requests anywhere: the largest model",
     WORKER, mesh(node("aa", 8, CODER), node("bb", 8, CHAT)), "", "fp-coder",
     "the largest"),
    ("a worker needed where it is stays, even when another group needs it too",
     node("ww", 16, file_less=True, joined="fp-big"),
     mesh(node("aa", 8, BIG), node("bb", 1, CODER),
          node("ww", 16, file_less=True, joined="fp-big")), "fp-big", "fp-big",
     "staying with Qwen2.5-32B: it cannot be served without this node"),
    ("requests alone never move a worker: a move restarts a llama-server",
     node("ww", 16, file_less=True, joined="fp-coder"),
     mesh(node("aa", 8, CODER), BUSY_CHAT, node("ww", 16, file_less=True, joined="fp-coder")),
     "fp-coder", "fp-coder", "no other model needs this node"),
    ("a worker its group can do without moves to a group that cannot run without it",
     node("ww", 16, file_less=True, joined="fp-coder"),
     mesh(node("aa", 8, CODER), node("bb", 8, BIG),
          node("ww", 16, file_less=True, joined="fp-coder")), "fp-coder", "fp-big",
     "joined Qwen2.5-32B"),
    ("its own VRAM does not count when it asks whether its group needs it",
     node("ww", 16, file_less=True, joined="fp-big"),
     mesh(node("aa", 8, BIG), node("ww", 16, file_less=True, joined="fp-big")), "fp-big",
     "fp-big", "cannot be served without this node"),
    ("a group no node may host gains nothing from a worker",
     WORKER, mesh(node("aa", 5.5, CODER, BIG), node("bb", 8, CHAT)), "", "fp-coder",
     "the largest"),
    ("its group gone, it chooses again",
     WORKER, mesh(node("bb", 8, CHAT)), "fp-gone", "fp-chat", "joined Llama-3.2-3B"),
]


@pytest.mark.parametrize(("worker", "groups", "current", "key", "words"),
                         [r[1:] for r in CHOICES], ids=[r[0] for r in CHOICES])
def test_choose_group(worker: NodeOffer, groups: list[Group], current: str, key: str,
                      words: str) -> None:
    got, reason = choose_group(worker, groups, current)
    assert got == key
    assert words in reason, reason


def test_with_no_model_in_the_mesh_a_worker_waits_and_says_so() -> None:
    assert choose_group(WORKER, []) == (
        None, "no model in the mesh yet: waiting for a node with a model file")


def test_with_no_group_that_may_be_hosted_a_worker_waits() -> None:
    groups = model_groups([node("aa", 8, CODER)], trusted_hosts=frozenset())
    assert choose_group(WORKER, groups) == (
        None, "no model in the mesh has a node that may host it: waiting")


def test_the_worker_it_joins_makes_its_group_servable() -> None:
    offers = [node("aa", 8, BIG), BUSY_CHAT, WORKER]
    key, _ = choose_group(WORKER, model_groups(offers))
    worker = NodeOffer("ww", 16 * GB, file_less=True, joined=key or "")
    groups = by_key(model_groups([*offers[:2], worker]))
    plan = groups["fp-big"].plan()
    assert (plan.mode, plan.workers) == ("split", ("ww",))


# ---- the mesh default --------------------------------------------------------------------

# (behaviour, nodes, expected key)
DEFAULTS = [
    ("the first --model of the oldest node",
     [node("aa", 8, CHAT, started_at=20), node("bb", 8, CODER, CHAT, started_at=10)],
     "fp-coder"),
    ("equal ages: the smaller id",
     [node("bb", 8, CHAT, started_at=5), node("aa", 8, CODER, started_at=5)], "fp-coder"),
    ("the oldest is leaving: the next oldest",
     [node("aa", 8, CHAT, started_at=1, leaving=True), node("bb", 8, CODER, started_at=2)],
     "fp-coder"),
    ("clients and file-less workers name no default",
     [node("cc", 0, client=True, started_at=0), node("ww", 9, file_less=True, started_at=0),
      node("bb", 8, CHAT, started_at=9)], "fp-chat"),
]


@pytest.mark.parametrize(("nodes", "key"), [r[1:] for r in DEFAULTS],
                         ids=[r[0] for r in DEFAULTS])
def test_mesh_default(nodes: list[NodeOffer], key: str) -> None:
    assert mesh_default(nodes, model_groups(nodes)) == key


def test_no_model_no_default() -> None:
    assert mesh_default([], []) is None
