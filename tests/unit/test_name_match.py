"""Routing by `model` and the mesh's /v1/models: each row is a behaviour."""

from __future__ import annotations

import json

import pytest

from mesh_llm.api.errors import json_error
from mesh_llm.api.name_match import (
    EXACT,
    SAME_BASE,
    SAME_FILE,
    ApiError,
    NameKey,
    ServedModel,
    find_model,
    match_rank,
    models_listing,
    name_key,
    resolve,
    resolve_in_mesh,
)
from mesh_llm.inference.election import Plan
from mesh_llm.inference.groups import NodeOffer, OfferedModel, model_groups
from mesh_llm.inference.offers import served_model

Q4 = ServedModel("SmolLM2-135M-Instruct.Q4_1", "fp-q4", ready=True, mode="solo",
                 host="aa", nodes=("aa",))
F16 = ServedModel("SmolLM2-135M-Instruct-F16", "fp-f16", ready=True, mode="split",
                  host="bb", nodes=("bb", "cc"))
CODER = ServedModel("Qwen2.5-Coder-7B", "fp-coder", aliases=("qwen2.5-coder-7b-instruct-q4_k_m",),
                    ready=False, why_not_ready="loading the model", mode="solo", host="dd",
                    nodes=("dd",))
QWEN7 = ServedModel("qwen2.5-7b-instruct-q4_k_m", "fp-q7", ready=True)
MESH = [Q4, F16, CODER, QWEN7]

# (behaviour, name, expected key)
KEYS = [
    ("plain name", "SmolLM2-135M-Instruct", NameKey("smollm2-135m-instruct", "")),
    ("quant after a dot", "SmolLM2-135M-Instruct.Q4_1", NameKey("smollm2-135m-instruct", "q4_1")),
    ("quant after a dash, with .gguf", "SmolLM2-135M-Instruct-Q4_1.gguf",
     NameKey("smollm2-135m-instruct", "q4_1")),
    ("k-quant and shard suffix", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
     NameKey("qwen2.5-7b-instruct", "q4_k_m")),
    ("shard suffix typed without .gguf", "qwen2.5-7b-instruct-q4_k_m-00002-of-00002",
     NameKey("qwen2.5-7b-instruct", "q4_k_m")),
    ("i-quant", "Model-IQ2_XXS", NameKey("model", "iq2_xxs")),
    ("float types are quants too", "SmolLM2-135M-Instruct-F16",
     NameKey("smollm2-135m-instruct", "f16")),
    ("a version number is not a quant", "Qwen2.5-0.5B", NameKey("qwen2.5-0.5b", "")),
    ("a name that is only a quant keeps it", "Q8_0", NameKey("q8_0", "")),
]


@pytest.mark.parametrize(("name", "key"), [r[1:] for r in KEYS], ids=[r[0] for r in KEYS])
def test_name_key(name: str, key: NameKey) -> None:
    assert name_key(name) == key


# (behaviour, requested, served, rank)
RANKS = [
    ("the same name in another case is exact", "smollm2-135m-instruct.q4_1",
     "SmolLM2-135M-Instruct.Q4_1", EXACT),
    ("a dash for the dot before the quant", "SmolLM2-135M-Instruct-Q4_1",
     "SmolLM2-135M-Instruct.Q4_1", SAME_FILE),
    ("the file name with .gguf", "SmolLM2-135M-Instruct-Q4_1.gguf",
     "SmolLM2-135M-Instruct.Q4_1", SAME_FILE),
    ("any part of a split set", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
     "qwen2.5-7b-instruct-q4_k_m", SAME_FILE),
    ("without the quant", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1", SAME_BASE),
    ("with a quant the served name does not show", "SmolLM2-135M-Instruct-Q4_1",
     "SmolLM2-135M-Instruct", SAME_BASE),
    ("another quant is another model", "SmolLM2-135M-Instruct-Q8_0",
     "SmolLM2-135M-Instruct.Q4_1", None),
    ("another name", "Qwen2.5-0.5B", "SmolLM2-135M-Instruct.Q4_1", None),
    ("a prefix is not a match", "SmolLM2", "SmolLM2-135M-Instruct.Q4_1", None),
]


@pytest.mark.parametrize(("requested", "served", "rank"), [r[1:] for r in RANKS],
                         ids=[r[0] for r in RANKS])
def test_match_rank(requested: str, served: str, rank: int | None) -> None:
    assert match_rank(requested, served) == rank


# (behaviour, requested, models, expected fingerprint | None)
FINDS = [
    ("an exact name beats a stripped match of another model", "SmolLM2-135M-Instruct-F16",
     [Q4, F16, ServedModel("SmolLM2-135M-Instruct.F16", "fp-other")], "fp-f16"),
    ("the same quant in another spelling beats a quant-less match",
     "smollm2-135m-instruct-q4_1.gguf",
     [ServedModel("SmolLM2-135M-Instruct", "fp-plain"), Q4], "fp-q4"),
    ("two models equally close: the first by name, whatever the order given",
     "smollm2-135m-instruct", [Q4, F16], "fp-f16"),
    ("the same, given in the other order", "smollm2-135m-instruct", [F16, Q4], "fp-f16"),
    ("an alias names the model", "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", MESH, "fp-coder"),
    ("unknown", "llama-3-8b", MESH, None),
]


@pytest.mark.parametrize(("requested", "models", "fingerprint"), [r[1:] for r in FINDS],
                         ids=[r[0] for r in FINDS])
def test_find_model(requested: str, models: list[ServedModel],
                    fingerprint: str | None) -> None:
    found = find_model(requested, models)
    assert (found.key if found else None) == fingerprint


# (behaviour, requested, default, expected: fingerprint or (status, words in message))
RESOLVES = [
    ("a served name goes to its model", "SmolLM2-135M-Instruct.Q4_1", None, "fp-q4"),
    ("case and quant suffix do not matter", "smollm2-135m-instruct-f16", None, "fp-f16"),
    ("no model: the mesh default", None, "fp-f16", "fp-f16"),
    ("a blank model: the mesh default", "  ", "fp-f16", "fp-f16"),
    ("no model and no default given: the first model", None, None, "fp-q4"),
    ("a number is a 400", 7, None, (400, "`model` must be a string naming a model, got int")),
    ("a list is a 400", ["a"], None, (400, "got list")),
    ("an object is a 400", {"name": "x"}, None, (400, "got dict")),
    ("a boolean is a 400", True, None, (400, "got bool")),
    ("an unknown model is a 404 that lists the models served", "gpt-4o", None,
     (404, "model 'gpt-4o' is not served in this mesh; models served: "
           "SmolLM2-135M-Instruct.Q4_1, SmolLM2-135M-Instruct-F16, Qwen2.5-Coder-7B, "
           "qwen2.5-7b-instruct-q4_k_m")),
    ("another quant of a served model is unknown", "SmolLM2-135M-Instruct-Q8_0", None,
     (404, "models served")),
    ("a known model without a ready host is a 503 that says why", "qwen2.5-coder-7b", None,
     (503, "model Qwen2.5-Coder-7B has no ready host: loading the model")),
    ("the default without a ready host is a 503 too", None, "fp-coder",
     (503, "no ready host: loading the model")),
]


@pytest.mark.parametrize(("requested", "default", "want"), [r[1:] for r in RESOLVES],
                         ids=[r[0] for r in RESOLVES])
def test_resolve(requested: object, default: str | None,
                 want: str | tuple[int, str]) -> None:
    got = resolve(requested, MESH, default)
    if isinstance(want, str):
        assert isinstance(got, ServedModel) and got.key == want
    else:
        assert isinstance(got, ApiError)
        assert got.status == want[0] and want[1] in got.message, got.message


def test_with_no_model_in_the_mesh_every_request_says_so() -> None:
    got = resolve(None, [])
    assert isinstance(got, ApiError) and got.status == 503
    assert "no model is served in this mesh yet" in got.message
    got = resolve("SmolLM2", [])
    assert isinstance(got, ApiError) and (got.status, got.message) == (
        404, "model 'SmolLM2' is not served in this mesh; models served: none yet")


def test_a_huge_requested_name_is_cut_in_the_error() -> None:
    got = resolve("x" * 10_000, MESH)
    assert isinstance(got, ApiError) and got.status == 404 and len(got.message) < 400


def test_a_model_not_ready_without_a_reason_still_says_something() -> None:
    got = resolve("m", [ServedModel("m", "fp-m")])
    assert isinstance(got, ApiError) and got.message == (
        "model m has no ready host: its host is not ready yet")


@pytest.mark.parametrize("status", [400, 404, 503])
def test_an_api_error_has_the_json_error_body_of_every_other_error(status: int) -> None:
    err = ApiError(status, "why")
    assert err.body() == json.loads(json_error(status, "why", err.kind).text)
    assert err.body()["error"]["type"] == {400: "invalid_request_error", 404: "not_found",
                                           503: "unavailable"}[status]


def test_models_listing_has_openai_shape_owned_by_mesh_llm_with_meta() -> None:
    listing = models_listing(MESH, default="fp-f16")
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [
        "SmolLM2-135M-Instruct-F16", "SmolLM2-135M-Instruct.Q4_1", "Qwen2.5-Coder-7B",
        "qwen2.5-7b-instruct-q4_k_m"], "the default first, then in the order given"
    for entry in listing["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "mesh-llm"
        assert isinstance(entry["created"], int)
    f16, q4, coder, _ = listing["data"]
    assert f16["meta"] == {"mode": "split", "host": "bb", "nodes": ["bb", "cc"], "ready": True,
                           "fingerprint": "fp-f16", "aliases": [], "default": True,
                           "kind": "gguf"}
    assert (q4["meta"]["default"], q4["meta"]["mode"], q4["meta"]["host"]) == (
        False, "solo", "aa")
    assert coder["meta"]["ready"] is False
    assert coder["meta"]["aliases"] == ["qwen2.5-coder-7b-instruct-q4_k_m"]
    json.dumps(listing)  # plain JSON values only


def test_the_openai_client_parses_the_listing() -> None:
    from openai.types import Model

    for entry in models_listing(MESH)["data"]:
        model = Model.model_validate(entry)
        assert (model.id, model.owned_by) == (entry["id"], "mesh-llm")


def test_a_group_becomes_a_served_model_and_routes_by_any_of_its_names() -> None:
    q4 = OfferedModel("fp-q4", "SmolLM2-135M-Instruct.Q4_1", 98_362_432)
    alias = OfferedModel("fp-q4", "SmolLM2-135M-Instruct", 98_362_432)
    (group,) = model_groups([NodeOffer("aa", 10**9, (q4,)), NodeOffer("bb", 10**8, (alias,))])
    plan = group.plan()
    served = served_model(group, plan, ready=True)
    assert (served.name, served.host, served.mode, served.nodes) == (
        "SmolLM2-135M-Instruct", "aa", "solo", ("aa", "bb"))
    assert resolve("smollm2-135m-instruct.q4_1.gguf", [served]) == served
    waiting = served_model(group, Plan("waiting", "aa", reason="need 1 GB"), False)
    got = resolve(None, [waiting])
    assert isinstance(got, ApiError) and got.message.endswith("no ready host: need 1 GB")


def test_a_single_model_mesh_takes_any_name_but_not_a_departed_ones() -> None:
    assert resolve_in_mesh("x", [Q4]) == Q4, "one model: any name reaches it"
    assert resolve_in_mesh("x", [Q4, F16]).status == 404  # type: ignore[union-attr]
    gone = resolve_in_mesh("smollm2-135m-instruct-f16", [Q4],
                           departed=["SmolLM2-135M-Instruct-F16"])
    assert isinstance(gone, ApiError) and gone.status == 404
    assert resolve_in_mesh(3, [Q4]).status == 400  # type: ignore[union-attr]
    empty = resolve_in_mesh("SmolLM2", [])
    assert isinstance(empty, ApiError) and empty.status == 503 and "no host" in empty.message
    told = resolve_in_mesh("SmolLM2", [], no_model="no host is ready: this node has no file")
    assert told == ApiError(503, "no host is ready: this node has no file")
    assert resolve_in_mesh(3, [], no_model="x").status == 400  # type: ignore[union-attr]
