"""The node's view of the mesh's models across changes: a file-less worker's choice stays
part of its offer, and a model that leaves is remembered (its name stays a 404)."""

from __future__ import annotations

from mesh_llm.inference.groups import NodeOffer, OfferedModel
from mesh_llm.node.groups_view import MAX_DEPARTED, MeshModels

GB = 10**9
X = OfferedModel("fx", "X", GB)
Y = OfferedModel("fy", "Y", GB)


def test_a_model_that_leaves_is_remembered_until_it_comes_back() -> None:
    seen = MeshModels(None)
    seen.regroup([NodeOffer("aa", 2 * GB, (X,)), NodeOffer("bb", 2 * GB, (Y,))], False)
    assert {g.key for g in seen.groups} == {"fx", "fy"} and seen.departed == {}
    seen.regroup([NodeOffer("aa", 2 * GB, (X,))], False)
    assert seen.departed == {"fy": "Y"} and seen.group("fy") is None
    seen.regroup([NodeOffer("aa", 2 * GB, (X,)), NodeOffer("cc", 2 * GB, (Y,))], False)
    assert seen.departed == {} and seen.group("fy") is not None


def test_departed_names_are_bounded() -> None:
    seen = MeshModels(None)
    for i in range(MAX_DEPARTED + 10):
        model = OfferedModel(f"f{i}", f"M{i}", GB)
        seen.regroup([NodeOffer("aa", 2 * GB, (model,))], False)
    assert len(seen.departed) == MAX_DEPARTED
    assert "f0" not in seen.departed, "the oldest departed name goes first"


def test_a_file_less_worker_counts_in_the_group_it_chose_and_moves_when_it_leaves() -> None:
    seen = MeshModels(None)
    big_y = OfferedModel("fy", "Y", 3 * GB)  # 3.3 GB needed, bb has 2: only with the worker
    worker = NodeOffer("ww", 4 * GB, file_less=True)
    seen.regroup([worker, NodeOffer("aa", 2 * GB, (X,)), NodeOffer("bb", 2 * GB, (big_y,))],
                 file_less=True)
    assert seen.joined == "fy" and "cannot be served without this node" in seen.joined_reason
    assert [(g.key, g.nodes) for g in seen.groups] == [("fx", ("aa",)), ("fy", ("bb", "ww"))]
    seen.regroup([worker, NodeOffer("aa", 2 * GB, (X,))], file_less=True)  # bb left
    assert seen.joined == "fx" and seen.departed == {"fy": "Y"}
    assert [(g.key, g.nodes) for g in seen.groups] == [("fx", ("aa", "ww"))]
