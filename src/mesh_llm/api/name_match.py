"""Which served model a request's `model` names, and `/v1/models` for the whole mesh.

For the multi-model API: every node routes a request by its `model` field to
that model's host. Pure functions, no I/O; the relay turns an `ApiError` into a JSON error
body with `api.errors.json_error(err.status, err.message, err.kind)`.

Names match the way users type them: case-insensitively, with or without `.gguf`, a
shard suffix (`-00001-of-00003`) or a quant suffix (`-Q4_1`, `.Q4_K_M`, `-F16`).
`SmolLM2-135M-Instruct-Q4_1`, `smollm2-135m-instruct` and
`SmolLM2-135M-Instruct.Q4_1.gguf` all name a model served as `SmolLM2-135M-Instruct.Q4_1`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..models.split import model_stem
from .errors import error_kind

OWNED_BY = "mesh-llm"
MAX_SHOWN_NAME = 100  # a requested name echoed in an error is cut to this

# A quant suffix as llama.cpp's tools and the hubs name files: Q4_1, Q4_K_M, IQ2_XXS, Q8_0,
# F16, BF16, MXFP4 ..., after a '-', '.' or '_'.
_QUANT = re.compile(r"[-._](?P<quant>i?q\d+(?:_[a-z0-9]+)*|bf16|fp16|f16|f32|mxfp4)$",
                    re.IGNORECASE)
_SHARD = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)  # also typed without `.gguf`


@dataclass(frozen=True)
class NameKey:
    """A name reduced for matching: the base name and its quant, both lower case."""

    base: str
    quant: str  # "" when the name has none


def name_key(name: str) -> NameKey:
    """`NameKey` of a served or requested name: without `.gguf`, shard or quant suffix."""
    stem = _SHARD.sub("", model_stem(name.strip())).casefold()
    m = _QUANT.search(stem)
    if m is None or m.start() == 0:
        return NameKey(stem, "")
    return NameKey(stem[:m.start()], m["quant"])


@dataclass(frozen=True)
class ServedModel:
    """One model of the mesh as the API sees it: a group, its plan and its host's state."""

    name: str
    key: str  # its group key: the weights' fingerprint, or "name:" and its name
    aliases: tuple[str, ...] = ()  # other names it is announced under
    ready: bool = False  # its host's llama-server answers
    why_not_ready: str = ""  # shown in the 503 when not ready
    mode: str = ""  # "solo" | "split" | "waiting"
    host: str | None = None
    nodes: tuple[str, ...] = ()
    kind: str = "gguf"  # "gguf": weights the mesh holds; "shared": a node's server's (shared.py)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(a for a in self.aliases if a != self.name))


@dataclass(frozen=True)
class ApiError:
    """An answer that is not a model: an HTTP status and a sentence for the JSON body."""

    status: int
    message: str

    @property
    def kind(self) -> str:
        return error_kind(self.status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


# How well a served name matches a requested one; lower is better.
EXACT, SAME_FILE, SAME_BASE = 0, 1, 2


def match_rank(requested: str, served: str) -> int | None:
    """How `served` matches `requested`, or None when it does not.

    EXACT: equal ignoring case. SAME_FILE: equal once `.gguf` and a shard suffix are
    dropped and the quant's separator is ignored (`-Q4_1` = `.Q4_1`). SAME_BASE: equal
    base names where one side names no quant (`smollm2-135m-instruct` matches any quant
    of it); two different quants never match.
    """
    if requested.strip().casefold() == served.casefold():
        return EXACT
    want, have = name_key(requested), name_key(served)
    if want.base != have.base:
        return None
    if want.quant == have.quant:
        return SAME_FILE
    return SAME_BASE if not want.quant or not have.quant else None


def find_model(requested: str, models: Sequence[ServedModel]) -> ServedModel | None:
    """The served model `requested` names: the best match by `match_rank` over all its
    names; between equal matches, the first by name (case-insensitively, then by
    group key), so every node picks the same whatever order it lists models in. Shared
    models (api/shared.py) answer only to their exact names, and only when no GGUF model
    answers."""
    best: tuple[int, str, str, str] | None = None
    found: ServedModel | None = None
    for model in (m for m in models if m.kind != "shared"):
        ranks = [r for n in model.names if (r := match_rank(requested, n)) is not None]
        if not ranks:
            continue
        key = (min(ranks), model.name.casefold(), model.name, model.key)
        if best is None or key < best:
            best, found = key, model
    if found is None:  # a shared model answers only to its exact names, after every GGUF
        want = requested.strip().casefold()
        found = next((m for m in models if m.kind == "shared"
                      and any(n.casefold() == want for n in m.names)), None)
    return found


def _shown(name: str) -> str:
    return name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "…"


def resolve(requested: object, models: Sequence[ServedModel],
            default: str | None = None) -> ServedModel | ApiError:
    """The model a request's `model` field sends it to, or the error to answer with.

    Missing (absent, null or blank, as clients without a configured model send it): the
    mesh default (`default`, a group key; else the first model). Not a string: 400.
    No served model by that name: 404 listing the names served. Known but no ready host:
    503 saying why (the relay may wait for readiness before answering it).
    """
    if requested is None or (isinstance(requested, str) and not requested.strip()):
        if not models:
            return ApiError(503, "no host is ready: no model is served in this mesh yet "
                                 "(waiting for a node with a model file)")
        model = next((m for m in models if m.key == default), models[0])
    elif not isinstance(requested, str):
        return ApiError(400, f"`model` must be a string naming a model, got "
                             f"{type(requested).__name__}")
    else:
        found = find_model(requested, models)
        if found is None:
            served = ", ".join(m.name for m in models) or "none yet"
            return ApiError(404, f"model '{_shown(requested.strip())}' is not served in this "
                                 f"mesh; models served: {served}")
        model = found
    if not model.ready:
        why = model.why_not_ready or "its host is not ready yet"
        return ApiError(503, f"model {model.name} has no ready host: {why}")
    return model


def resolve_in_mesh(requested: object, models: Sequence[ServedModel],
                    default: str | None = None, departed: Collection[str] = (),
                    no_model: str | None = None) -> ServedModel | ApiError:
    """`resolve`, except that while the mesh serves a single model any name reaches it,
    as llama-server alone allows (single-model clients send whatever name they were
    configured with); a name of a model that has left the mesh (`departed`) stays a 404.
    With no model at all the node knows nothing to refuse a name by: 503 (the relay
    waits for a host), saying `no_model` when the node knows why there is none."""
    if not models and (requested is None or isinstance(requested, str)):
        return ApiError(503, no_model) if no_model else resolve(None, models, default)
    found = resolve(requested, models, default)
    if isinstance(found, ApiError) and found.status == 404 and len(models) == 1 \
            and isinstance(requested, str) \
            and not any(match_rank(requested, name) is not None for name in departed):
        return resolve(None, models, default)
    return found


def models_listing(models: Sequence[ServedModel], default: str | None = None,
                   created: int = 0) -> dict[str, Any]:
    """`GET /v1/models` for the whole mesh, in OpenAI's shape: the default model first,
    then the others in the order given. `meta` says how each is served, for the console's
    model picker and for scripts."""
    ordered = sorted(models, key=lambda m: m.key != default)
    return {"object": "list", "data": [{
        "id": m.name, "object": "model", "created": created, "owned_by": OWNED_BY,
        "meta": {"mode": m.mode, "host": m.host, "nodes": list(m.nodes), "ready": m.ready,
                 "fingerprint": m.key if m.kind != "shared" else None,
                 "aliases": list(m.names[1:]), "default": m.key == default,
                 "kind": m.kind},
    } for m in ordered]}
