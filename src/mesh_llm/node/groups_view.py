"""The mesh's models as this node sees them: the groups (inference/groups.py, recomputed
from every node's offer on each change), the mesh's default model, the group a file-less
worker joined, and the names of models that have left the mesh (a request naming one
stays a 404 rather than reaching whatever model is left)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import replace

from ..api.shared import shared_key
from ..inference.groups import (
    Group,
    NodeOffer,
    OfferedModel,
    choose_group,
    group_key,
    mesh_default,
    model_groups,
)

log = logging.getLogger("mesh_llm.node")

MAX_DEPARTED = 256  # names of models that left the mesh, kept for their 404s


class MeshModels:
    """The groups and what follows from them; `regroup` on every change."""

    def __init__(self, trusted_hosts: frozenset[str] | None) -> None:
        self._trusted_hosts = trusted_hosts
        self.groups: list[Group] = []
        self.default_key: str | None = None
        self.joined = ""  # a file-less worker's group key
        self.joined_reason = ""
        self.departed: dict[str, str] = {}  # group key → name
        self.shared: set[str] = set()  # names of the shared models in the mesh now

    def group(self, key: str | None) -> Group | None:
        return next((g for g in self.groups if g.key == key), None) if key else None

    def regroup(self, offers: Sequence[NodeOffer], file_less: bool) -> None:
        """The mesh's models as groups from every node's offer (ours first); a file-less
        worker (re)picks its group, and its choice is part of our offer."""
        offers = list(offers)
        before = {g.key: g.name for g in self.groups}
        self.groups = model_groups(offers, self._trusted_hosts)
        if file_less:
            key, why = choose_group(offers[0], self.groups, current=self.joined)
            if (key or "") != self.joined:
                log.info("%s", why, extra={"event": "file-less worker joins a model"})
                self.joined = key or ""
                offers[0] = replace(offers[0], joined=self.joined)
                self.groups = model_groups(offers, self._trusted_hosts)
            self.joined_reason = why if key else ""
        self.default_key = mesh_default(offers, self.groups)
        now = {g.key for g in self.groups}
        for key, name in before.items():
            if key not in now:
                log.info("model %s left the mesh", name)
                self.departed[key] = name
        for key in now:
            self.departed.pop(key, None)
        while len(self.departed) > MAX_DEPARTED:
            del self.departed[next(iter(self.departed))]

    def reshare(self, names: Collection[str]) -> None:
        """The mesh's shared models now: one that has gone is remembered as departed
        (a request naming it stays a 404), one that is back is forgotten there."""
        now = set(names)
        for name in sorted(self.shared - now):
            log.info("shared model %s left the mesh", name)
            self.departed[shared_key(name)] = name
        for name in now:
            self.departed.pop(shared_key(name), None)
        self.shared = now
        while len(self.departed) > MAX_DEPARTED:
            del self.departed[next(iter(self.departed))]

    def group_of(self, offer: OfferedModel, node_id: str) -> Group | None:
        """The group a model of ours is in: by its key, or (its fingerprint failed) the
        group that counts us under its name."""
        group = self.group(group_key(offer))
        if group is not None or offer.fingerprint:
            return group
        name = offer.name.casefold()
        return next((g for g in self.groups if node_id in g.nodes
                     and name in (a.casefold() for a in g.aliases)), None)
