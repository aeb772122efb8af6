"""A mesh of many models: which nodes serve which model, pure functions.

Each model in the mesh (identified by its weight fingerprint) is a *group*: the nodes that
offer it. A group elects its own host with election.py's rule and makes its own plan with
election.py's `make_plan`, so a one-model mesh decides exactly what it decides today.

What is here, for the node's wiring to call on every gossip change:

- `NodeOffer` / `OfferedModel`: what one node offers, independent of the gossip format
  (the wiring converts an announcement into one);
- `local_allocation`: how a node with several `--model`s shares its VRAM between them;
- `model_groups`: the groups of the whole mesh, each with its host and plan inputs;
- `choose_group`: which group a file-less worker (`--join` without `--model`) lends its
  device to, with a sentence saying why;
- `mesh_default`: the model a request without `model` goes to.

Every node runs these on the same announcements and gets the same answer without a vote.
A node's allocation depends only on its own offer, so a change in one group (a peer joining,
a host dying) never moves memory in another group and never restarts its llama-server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .election import HEADROOM, Candidate, Plan, elect_host, make_plan

MAX_REQUESTS_PER_MIN = 10**9  # a gossiped count is a claim from the network: bounded


@dataclass(frozen=True)
class OfferedModel:
    """One model a node holds the file of."""

    fingerprint: str  # weight fingerprint; "" when it could not be computed
    name: str  # its catalog or file name, as the node announces it
    size_bytes: int  # all parts of a split GGUF set together


@dataclass(frozen=True)
class NodeOffer:
    """What one node (ourselves or a peer) brings to the mesh.

    `models` is in `--model` order: that order decides which models a node hosts when
    they do not all fit. A file-less worker has no models and lends its whole VRAM to the
    group it has `joined` (its own `choose_group` answer, gossiped so that every node
    plans with it). A lite client serves nothing; its request counts still count.
    """

    node_id: str
    vram_bytes: int
    models: tuple[OfferedModel, ...] = ()
    file_less: bool = False  # --join without --model: serves another node's model over RPC
    client: bool = False  # --client: serves nothing, only routes requests
    leaving: bool = False  # stopping gracefully: planned without
    joined: str = ""  # a file-less worker's group (its key), "" until it has chosen
    requests_per_min: Mapping[str, int] = field(default_factory=dict)  # by group key
    rtt_ms: float | None = None  # from the node that plans, for make_plan's nearest workers
    started_at: float = 0.0  # when it started (unix s): the oldest node names the default


def group_key(model: OfferedModel) -> str:
    """What identifies a model in the mesh: its bytes. A model whose fingerprinting
    failed is known by its name instead (see `_keys_by_name`)."""
    return model.fingerprint or f"name:{model.name.casefold()}"


def _keys_by_name(offers: Sequence[NodeOffer]) -> Callable[[OfferedModel], str]:
    """`group_key`, except that a model without a fingerprint joins the group whose
    weights are announced under its name, when exactly one is: election.py matches such a
    node by name, so a one-model mesh keeps one group when one node's check failed."""
    fingerprints: dict[str, set[str]] = {}
    for offer in offers:
        for model in offer.models:
            if model.fingerprint:
                fingerprints.setdefault(model.name.casefold(), set()).add(model.fingerprint)

    def key(model: OfferedModel) -> str:
        known = fingerprints.get(model.name.casefold(), set())
        if not model.fingerprint and len(known) == 1:
            return next(iter(known))
        return group_key(model)
    return key


class Budget(NamedTuple):
    """VRAM a node gives one of its models (never counted again for another)."""

    model: OfferedModel
    vram_bytes: int


class Allocation(NamedTuple):
    """A node's models sorted into those it can host, the one it offers a split share
    of, and those it leaves out (each with a reason for the status)."""

    hosted: tuple[Budget, ...]
    share: Budget | None
    left_out: tuple[tuple[OfferedModel, str], ...]


def need_bytes(size_bytes: int) -> int:
    """VRAM a model needs to run on its own: its size × 1.1 (election.py's headroom)."""
    return int(size_bytes * HEADROOM)


def human_bytes(n: int) -> str:
    """Sizes in sentences: GB for models, MB for the small ones tests use."""
    return f"{n / 1e9:.1f} GB" if n >= 10**9 else f"{n / 1e6:.0f} MB"


def local_allocation(vram_bytes: int, models: Sequence[OfferedModel],
                     key: Callable[[OfferedModel], str] = group_key) -> Allocation:
    """Share one node's VRAM between its `--model`s, in `--model` order.

    Each model that fits beside the ones before it (sizes × 1.1 together within the VRAM)
    is hosted and gets its size × 1.1. What is left goes to the first model that did not
    fit, as this node's share of a split; with none, it stays with the first hosted model
    (room for its KV cache), so a one-model node offers its whole VRAM as it does today.
    The other models are left out with a reason. A second name for the same weights is
    left out too: it is one model (`key` says which are one; model_groups passes its own).
    """
    hosted: list[Budget] = []
    share: OfferedModel | None = None
    left_out: list[tuple[OfferedModel, str]] = []
    seen: dict[str, OfferedModel] = {}
    free = max(0, vram_bytes)
    for model in models:
        same = key(model)
        if same in seen:
            left_out.append((model, f"same weights as {seen[same].name}, offered once"))
            continue
        seen[same] = model
        need = need_bytes(model.size_bytes)
        if need <= free:
            hosted.append(Budget(model, need))
            free -= need
        elif share is None:
            share = model
        else:
            beside = ", ".join(b.model.name for b in hosted) or "nothing"
            left_out.append((model, (
                f"does not fit beside {beside} (needs {human_bytes(need)}) and the VRAM "
                f"left over is offered to {share.name} as a split share")))
    if share is not None:
        if free > 0 or not hosted:
            return Allocation(tuple(hosted), Budget(share, free), tuple(left_out))
        beside = ", ".join(b.model.name for b in hosted)
        left_out.insert(0, (share, f"no VRAM left beside {beside} "
                                   f"(needs {human_bytes(need_bytes(share.size_bytes))})"))
        return Allocation(tuple(hosted), None, tuple(left_out))
    if hosted:
        first = hosted[0]
        hosted[0] = Budget(first.model, first.vram_bytes + free)
    return Allocation(tuple(hosted), None, tuple(left_out))


@dataclass(frozen=True)
class Group:
    """One model of the mesh and the nodes that serve it."""

    key: str  # the weight fingerprint (group_key)
    name: str  # the name most nodes announce it under (ties: the first by name)
    aliases: tuple[str, ...]  # every name it is announced under, `name` first
    size_bytes: int
    nodes: tuple[str, ...]  # serving nodes (file holders and joined workers), by id
    host: str | None  # elected by election.elect_host; None when no node may host it
    candidates: tuple[Candidate, ...]  # plan inputs: each node with the VRAM it gives
    requests_per_min: int  # summed over every node's API
    left_out: tuple[tuple[str, str], ...] = ()  # (node id, why) holders that give it nothing

    @property
    def fingerprint(self) -> str:
        return self.key

    @property
    def need_bytes(self) -> int:
        return need_bytes(self.size_bytes)

    def vram_bytes(self, without: str = "") -> int:
        """VRAM the group's nodes give it, leaving out node `without` (a worker that asks
        whether the group needs it)."""
        return sum(c.vram_bytes for c in self.candidates if c.node_id != without)

    def plan(self, force_split: bool = False) -> Plan:
        """The group's plan by election.make_plan: solo if the host fits it, else split."""
        if self.host is None:
            why = "; ".join(f"{node[:12]} {reason}" for node, reason in self.left_out)
            return Plan("waiting", "", reason=(
                f"no node may host {self.name}" + (f": {why}" if why else "")))
        host = next(c for c in self.candidates if c.node_id == self.host)
        return make_plan(host, self.candidates, self.size_bytes, force_split)


def _group_name(names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The name most nodes use, ties to the first case-insensitively; then the others."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    ordered = sorted(counts, key=lambda n: (-counts[n], n.casefold(), n))
    return ordered[0], tuple(ordered)


def _requests(offers: Iterable[NodeOffer]) -> dict[str, int]:
    """Requests in the last minute per group, summed over the nodes that received them.
    Each node counts what its own API received, so a relayed request counts once."""
    total: dict[str, int] = {}
    for offer in offers:
        for key, count in offer.requests_per_min.items():
            n = min(max(0, int(count)), MAX_REQUESTS_PER_MIN)
            total[key] = total.get(key, 0) + n
    return total


def model_groups(nodes: Iterable[NodeOffer],
                 trusted_hosts: frozenset[str] | None = None) -> list[Group]:
    """One group per model in the mesh, sorted by name.

    A file holder takes part with the VRAM its `local_allocation` gives the model (and
    may host it); a file-less worker with its whole VRAM in the group it joined (and never
    hosts: it has no file). Clients and leaving nodes serve nothing. With `trusted_hosts`
    (--trust-hosts) only those nodes may host. A model only leaving nodes hold is gone.
    """
    offers = list(nodes)
    requests = _requests(offers)
    serving = [o for o in offers if not o.client and not o.leaving]
    key_of = _keys_by_name(serving)
    names: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    members: dict[str, list[Candidate]] = {}
    left_out: dict[str, list[tuple[str, str]]] = {}
    workers: list[NodeOffer] = []
    for offer in sorted(offers, key=lambda o: o.node_id):
        if offer.client or offer.leaving:
            continue
        if offer.file_less or not offer.models:
            workers.append(offer)
            continue
        may_host = trusted_hosts is None or offer.node_id in trusted_hosts
        for model in offer.models:
            key = key_of(model)
            names.setdefault(key, []).append(model.name)
            sizes[key] = max(sizes.get(key, 0), max(0, model.size_bytes))
            members.setdefault(key, [])
            left_out.setdefault(key, [])
        allocation = local_allocation(offer.vram_bytes, offer.models, key_of)
        given = [*allocation.hosted, *([allocation.share] if allocation.share else [])]
        for model, vram in given:
            members[key_of(model)].append(
                Candidate(offer.node_id, "worker", vram, offer.rtt_ms, can_host=may_host))
        for model, why in allocation.left_out:
            if not any(c.node_id == offer.node_id for c in members[key_of(model)]):
                left_out[key_of(model)].append((offer.node_id, why))
    for worker in workers:
        if worker.joined in members:
            members[worker.joined].append(Candidate(
                worker.node_id, "worker", worker.vram_bytes, worker.rtt_ms, can_host=False))
    groups = []
    for key, candidates in members.items():
        name, aliases = _group_name(names[key])
        groups.append(Group(
            key=key, name=name, aliases=aliases, size_bytes=sizes[key],
            nodes=tuple(sorted(c.node_id for c in candidates)),
            host=elect_host(candidates), candidates=tuple(candidates),
            requests_per_min=requests.get(key, 0), left_out=tuple(left_out[key])))
    return sorted(groups, key=lambda g: (g.name.casefold(), g.name, g.key))


def choose_group(worker: NodeOffer, groups: Sequence[Group],
                 current: str = "") -> tuple[str | None, str]:
    """The group a file-less worker lends its device to, and a sentence saying why.

    In order: a model that cannot be served without it (its group's VRAM without this
    worker < size × 1.1), one the worker completes before one it only brings closer, then
    the most requested, then the largest; else the group with the most requests in the
    last minute; else the largest model (ties: the first by name). A worker already in a
    group (`current`) stays unless that group can do without it and another cannot: a
    move restarts a llama-server, and request counts alone are not worth one. A group no
    node may host (every holder left it out, or none is trusted) gains nothing from it.
    """
    if not groups:
        return None, "no model in the mesh yet: waiting for a node with a model file"
    groups = [g for g in groups if g.host is not None]
    if not groups:
        return None, "no model in the mesh has a node that may host it: waiting"
    me = worker.node_id
    vram = max(0, worker.vram_bytes)

    def short(g: Group) -> bool:
        return g.vram_bytes(without=me) < g.need_bytes

    def completes(g: Group) -> bool:
        return g.vram_bytes(without=me) + vram >= g.need_bytes

    def by_name(g: Group) -> tuple[str, str, str]:
        return (g.name.casefold(), g.name, g.key)

    here = next((g for g in groups if g.key == current), None)
    needy = [g for g in groups if short(g)]
    if here is not None and (short(here) or not needy):
        why = "it cannot be served without this node" if short(here) else \
            "no other model needs this node to be served"
        return here.key, f"staying with {here.name}: {why}"
    if needy:
        best = min(needy, key=lambda g: (not completes(g), -g.requests_per_min,
                                         -g.size_bytes, *by_name(g)))
        have = best.vram_bytes(without=me)
        how = "now it can run" if completes(best) else "it is still short of VRAM"
        return best.key, (
            f"joined {best.name}: it cannot be served without this node (needs "
            f"{human_bytes(best.need_bytes)}, its nodes have {human_bytes(have)}; {how})")
    busiest = min(groups, key=lambda g: (-g.requests_per_min, *by_name(g)))
    if busiest.requests_per_min > 0:
        return busiest.key, (f"joined {busiest.name}: every model can be served, and it "
                             f"has the most requests ({busiest.requests_per_min} in the "
                             f"last minute)")
    largest = min(groups, key=lambda g: (-g.size_bytes, *by_name(g)))
    return largest.key, (f"joined {largest.name}: every model can be served and none has "
                         f"requests, so the largest ({human_bytes(largest.size_bytes)})")


def mesh_default(nodes: Iterable[NodeOffer], groups: Sequence[Group]) -> str | None:
    """The group a request without `model` goes to: the first `--model` of the oldest
    serving node (ties: the smaller id) that is still a group; else the first group."""
    keys = {g.key for g in groups}
    serving = [n for n in nodes if n.models and not n.client and not n.leaving]
    key_of = _keys_by_name(serving)
    for node in sorted(serving, key=lambda n: (n.started_at, n.node_id)):
        key = key_of(node.models[0])
        if key in keys:
            return key
    return groups[0].key if groups else None
