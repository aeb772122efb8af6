"""What this node does about each of its models after a change: a pure function of the
gossiped views and the mesh's groups.

Every model is elected inside its group (inference/groups.py, the same on every node) by
candidates.elect_group, so all nodes agree on one host per model. For each slot the
answer is its host and whether we serve it (and with which workers); a node without a
model file (or a lite client) elects in the group it joined (or the mesh's default), which
gives it a host to follow and nothing to serve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..inference.candidates import NodeView, elect_group
from ..inference.election import Candidate
from ..inference.groups import Group


@dataclass(frozen=True)
class SlotFacts:
    """What the decision needs about one model of ours."""

    name: str
    fingerprint: str  # our file's, "" once it failed a check
    group: Group | None  # its group now (None: in none, nothing to serve)
    active: bool = False  # we serve it now


@dataclass(frozen=True)
class SlotAction:
    """The outcome for one model: its host, and whether we serve it, as whom, with whom."""

    host_id: str | None
    serve: bool = False  # converge on a plan (else stand down)
    me: Candidate | None = None  # ourselves as a candidate, when we serve
    workers: tuple[Candidate, ...] = ()
    excluded: Mapping[str, str] = field(default_factory=dict)  # peer id → why not with us


@dataclass(frozen=True)
class Decision:
    """One action per slot, in slot order; `follow` is the election of a node without
    slots (None when it has some). The first model's election is the node's own: its
    host and excluded peers are what the status and the announcement show."""

    slots: tuple[SlotAction, ...]
    follow: SlotAction | None = None

    @property
    def first(self) -> SlotAction:
        if self.slots:
            return self.slots[0]
        return self.follow if self.follow is not None else SlotAction(None)


def decide(me: NodeView | None, peers: Sequence[NodeView], slots: Sequence[SlotFacts],
           joined: Group | None, leaving: bool, max_rtt_ms: float | None = None,
           far_before: frozenset[str] = frozenset()) -> Decision:
    """Per slot: elect its group's host; serve it when that is us and we may (a host that
    is leaving keeps serving until it stops, but one that does not serve yet never starts
    on its way out). `me` is None on a lite client; `joined` is the group a node without
    slots follows (a file-less worker's joined group, a client's mesh default)."""
    actions = []
    for slot in slots:
        view = None if me is None else replace(
            me, models=(slot.name,), fingerprint=slot.fingerprint, file_less=False)
        outcome = elect_group(view, peers, slot.group, max_rtt_ms, far_before)
        serve = (view is not None and outcome.me is not None
                 and outcome.host_id == view.node_id and (slot.active or not leaving))
        actions.append(SlotAction(outcome.host_id, serve, outcome.me if serve else None,
                                  outcome.workers if serve else (), dict(outcome.excluded)))
    if slots:
        return Decision(tuple(actions))
    view = None if me is None else replace(
        me, models=(joined.name,) if joined is not None and joined.host else (),
        fingerprint="", file_less=True)
    outcome = elect_group(view, peers, joined, max_rtt_ms, far_before)
    return Decision((), SlotAction(outcome.host_id, excluded=dict(outcome.excluded)))
