"""One model this node serves: its file, what it offers the mesh, the group it is elected
in, that group's host, and the llama-server(s) it runs when elected.

A node holds one `Slot` per --model, in --model order; a worker without a model file and a
lite client hold none. Every slot is elected and converged the same way (reconcile.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..inference.groups import Group, OfferedModel, group_key
from ..inference.hosting import Hosting
from ..inference.worker import FileClaim
from ..mesh.announcement import Hosted
from ..models.resolve import ResolvedModel
from .route import Route, route_here
from .startup import Setup


@dataclass
class Slot:
    """One --model of this node and what the mesh decided about it."""

    setup: Setup
    file: FileClaim
    hosting: Hosting
    offer: OfferedModel
    group: Group | None = None  # its group in the mesh as of the last reconcile
    host_id: str | None = None  # that group's elected host

    @property
    def key(self) -> str:
        """The group key this node announces the model under."""
        return group_key(self.offer)

    @property
    def name(self) -> str:
        return self.offer.name

    @property
    def model(self) -> ResolvedModel:
        assert self.setup.model is not None
        return self.setup.model

    def hosted(self) -> Hosted | None:
        """What we announce while we host this model: its plan and whether it answers."""
        if not self.hosting.active:
            return None
        return Hosted(self.key, self.hosting.plan_json(), self.answers())

    def answers(self) -> bool:
        """Whether our llama-server for it takes requests now (ready, and not held while
        an old one finishes on a CPU host)."""
        llama = self.hosting.llama
        return bool(llama and llama.ready and not self.hosting.held)

    def route_here(self) -> Route:
        """Where a request for this model goes while we host it."""
        hosting = self.hosting
        return route_here(llama_port=hosting.serving_port(), held=hosting.held,
                          plan=hosting.plan, model=self.name)


def offered(setup: Setup) -> OfferedModel:
    """What a --model of ours offers the mesh: its weights, name and size."""
    assert setup.model is not None
    fingerprint = setup.weights.fingerprint.hex() if setup.weights is not None else ""
    return OfferedModel(fingerprint, setup.model.name, setup.model.size_bytes)
