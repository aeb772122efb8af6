"""The gossiped state as groups, and the groups as the API's served models (pure)."""

from __future__ import annotations

from mesh_llm.api.request_counts import RequestCounter
from mesh_llm.inference.groups import model_groups
from mesh_llm.inference.offers import offer_of, ready_host, served_models
from mesh_llm.mesh.announcement import Announcement, Hosted, Offer

A, B, C, W = "aa" * 32, "bb" * 32, "cc" * 32, "dd" * 32
MB = 10**6
PLAN_A = {"mode": "solo", "host": A, "workers": [], "rpc": [], "tensor_split": [1.0],
          "reason": ""}


def ann(node: str, **kw: object) -> Announcement:
    return Announcement(node, **kw)  # type: ignore[arg-type]


def test_offer_of_reads_every_model_and_falls_back_to_the_primary() -> None:
    two = offer_of(ann(A, vram_bytes=1000 * MB, models=("q4",), model_fingerprint="01",
                       offers=(Offer("q4", "01", 100 * MB), Offer("f16", "02", 300 * MB))))
    assert [m.name for m in two.models] == ["q4", "f16"] and not two.file_less
    old = offer_of(ann(B, vram_bytes=1, models=("q4",), model_fingerprint="01"))
    assert [(m.fingerprint, m.name) for m in old.models] == [("01", "q4")]
    worker = offer_of(ann(W, vram_bytes=5, models=("q4",), model_file=False, joined="01"))
    assert worker.file_less and worker.joined == "01" and not worker.models
    client = offer_of(ann(C, role="client", vram_bytes=0, model_file=False,
                          requests_per_min=(("01", 3),)))
    assert client.client and client.requests_per_min == {"01": 3}


def test_served_models_follow_who_announces_ready() -> None:
    offers = [offer_of(ann(A, vram_bytes=1000 * MB, offers=(Offer("q4", "01", 100 * MB),))),
              offer_of(ann(B, vram_bytes=500 * MB, offers=(Offer("f16", "02", 300 * MB),))),
              offer_of(ann(C, vram_bytes=50 * MB, offers=(Offer("big", "03", 900 * MB),)))]
    groups = model_groups(offers)
    hosted = {A: {"01": Hosted("01", PLAN_A, True)}, B: {"02": Hosted("02", None, False)}}
    served = {m.name: m for m in served_models(groups, hosted)}
    assert served["q4"].ready and served["q4"].host == A and served["q4"].mode == "solo"
    assert not served["f16"].ready and "still loading" in served["f16"].why_not_ready
    assert not served["big"].ready and "VRAM" in served["big"].why_not_ready
    assert served["big"].mode == "waiting"
    q4 = next(g for g in groups if g.key == "01")
    assert ready_host(q4, {}) is None
    # A node outside the group that claims to host it gets none of its prompts.
    assert ready_host(q4, {B: {"01": Hosted("01", None, True)}}) is None
    assert not {m.name: m for m in served_models(
        groups, {B: {"01": Hosted("01", PLAN_A, True)}})}["q4"].ready


def test_another_member_that_may_host_serves_while_the_elected_host_does_not() -> None:
    """A re-plan settling: the elected host is still loading, the old host (a member)
    still answers. With --trust-hosts, an untrusted member's claim is ignored."""
    offers = [offer_of(ann(A, vram_bytes=1000 * MB, offers=(Offer("q4", "01", 100 * MB),))),
              offer_of(ann(B, vram_bytes=500 * MB, offers=(Offer("q4", "01", 100 * MB),)))]
    claims = {A: {"01": Hosted("01", PLAN_A, False)}, B: {"01": Hosted("01", None, True)}}
    (q4,) = model_groups(offers)
    assert q4.host == A and ready_host(q4, claims) == B
    (trusted_a,) = model_groups(offers, frozenset({A}))
    assert ready_host(trusted_a, claims) is None


def test_request_counts_cover_the_last_minute_only() -> None:
    now = [0.0]
    counter = RequestCounter(clock=lambda: now[0])
    counter.add("01")
    counter.add("01")
    now[0] = 30.0
    counter.add("02")
    assert counter.counts() == {"01": 2, "02": 1}
    now[0] = 61.0
    assert counter.counts() == {"02": 1}
    for i in range(100):
        counter.add(f"{i:02x}")
    assert len(counter.counts()) == 64
