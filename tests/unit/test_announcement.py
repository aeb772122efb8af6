"""The typed announcement: one round trip, and from_wire refusing whatever breaks a bound."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.mesh.announcement import (
    MAX_MODELS,
    MAX_PLAN_WORKERS,
    MAX_REASON_LEN,
    MAX_REQUEST_COUNTS,
    Announcement,
    AnnouncementError,
    Hosted,
    Offer,
    clamp_client,
)

NODE, OTHER = "cd" * 32, "ef" * 32
PLAN = {"mode": "split", "host": NODE, "workers": [OTHER], "rpc": ["127.0.0.1:5000"],
        "tensor_split": [0.6, 0.4], "reason": ""}
FULL = Announcement(NODE, addrs=("127.0.0.1:7842", "[::1]:7842"), role="host",
                    vram_bytes=8 << 30, models=("Qwen2.5-32B",), model_file=True,
                    rpc_version="3.0.0", version="0.9.0", ready=True, rpc_ready=True,
                    model_fingerprint="ab" * 16, leaving=False, plan=PLAN, draft="Qwen2.5-0.5B")


def test_round_trip_through_json() -> None:
    wire = json.loads(json.dumps(FULL.to_wire()))
    assert Announcement.from_wire(wire, NODE) == FULL
    assert FULL.checked() == FULL
    assert Announcement.from_wire({}, NODE) == Announcement(NODE)  # every field defaults


def test_unknown_keys_are_ignored() -> None:
    ann = Announcement.from_wire({**FULL.to_wire(), "from_the_future": {"x": [1] * 10},
                                  "plan": {**PLAN, "extra": "y"}}, NODE)
    assert ann == FULL and "extra" not in (ann.plan or {})
    assert "from_the_future" not in ann.to_wire()


def test_node_id_mismatch_is_refused() -> None:
    with pytest.raises(AnnouncementError, match="claims node id"):
        Announcement.from_wire(FULL.to_wire(), OTHER)


HUGE = "x" * 100_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": ["host"]}, "role"),
        ({"vram_bytes": "8"}, "vram_bytes"),
        ({"models": ["m" * 257]}, "models"),
        ({"models": [HUGE]}, "models"),
        ({"models": ("m",)}, "models"),
        ({"model_file": "yes"}, "model_file"),
        ({"rpc_ready": 1}, "rpc_ready"),
        ({"leaving": None}, "leaving"),
        ({"rpc_version": HUGE}, "rpc_version"),
        ({"version": ["1"]}, "version"),
        ({"model_fingerprint": HUGE}, "model_fingerprint"),
        ({"model_fingerprint": "not hex!"}, "model_fingerprint"),
        ({"model_fingerprint": 7}, "model_fingerprint"),
        ({"draft": HUGE}, "draft"),
        ({"draft": 3}, "draft"),
        ({"addrs": ["127.0.0.1:1"] * 17}, "addrs"),
        ({"addrs": [HUGE]}, "addrs"),
        ({"plan": "split"}, "plan"),
        ({"plan": []}, "plan"),
        ({"plan": {**PLAN, "mode": "party"}}, "plan mode"),
        ({"plan": {**PLAN, "host": "me"}}, "plan host"),
        ({"plan": {k: v for k, v in PLAN.items() if k != "host"}}, "plan host"),
        ({"plan": {**PLAN, "workers": [OTHER] * (MAX_PLAN_WORKERS + 1)}}, "plan workers"),
        ({"plan": {**PLAN, "workers": ["short"]}}, "plan workers"),
        ({"plan": {**PLAN, "workers": OTHER}}, "plan workers"),
        ({"plan": {**PLAN, "rpc": [HUGE]}}, "plan rpc"),
        ({"plan": {**PLAN, "rpc": ["h:1"] * (MAX_PLAN_WORKERS + 1)}}, "plan rpc"),
        ({"plan": {**PLAN, "tensor_split": [0.5] * (MAX_PLAN_WORKERS + 2)}}, "tensor_split"),
        ({"plan": {**PLAN, "tensor_split": [float("nan")]}}, "tensor_split"),
        ({"plan": {**PLAN, "tensor_split": [2.0]}}, "tensor_split"),
        ({"plan": {**PLAN, "tensor_split": [True]}}, "tensor_split"),
        ({"plan": {**PLAN, "reason": "r" * (MAX_REASON_LEN + 1)}}, "plan reason"),
        ({"plan": {**PLAN, "reason": None}}, "plan reason"),
    ],
)
def test_hostile_fields_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(AnnouncementError, match=message):
        Announcement.from_wire({**FULL.to_wire(), **change}, NODE)


def test_our_own_announcement_meets_the_same_bounds() -> None:
    with pytest.raises(ValueError, match="models"):
        replace(FULL, models=("m",) * 65).checked()
    with pytest.raises(ValueError, match="plan"):
        replace(FULL, plan={"mode": "solo"}).checked()


def test_a_client_keeps_only_its_version() -> None:
    clamped = clamp_client(FULL)
    assert clamped == Announcement(NODE, role="client", model_file=False, version="0.9.0")
    assert clamped.checked() == clamped


def test_the_wire_copy_does_not_share_the_plan() -> None:
    wire = FULL.to_wire()
    wire["plan"]["workers"].append("x")
    assert FULL.plan is not None and FULL.plan["workers"] == [OTHER]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
KEYS = [*FULL.to_wire(), "x"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
def test_any_json_gives_an_announcement_or_one_error(raw: dict[str, object]) -> None:
    try:
        ann = Announcement.from_wire({**FULL.to_wire(), **raw}, NODE)
    except AnnouncementError:
        return
    assert Announcement.from_wire(ann.to_wire(), NODE) == ann


# ---------- many models in one mesh ----------

MULTI = replace(FULL, offers=(Offer("Qwen2.5-32B", "ab" * 16, 20 << 30),
                              Offer("coder.Q4_K_M", "", 9 << 30)),
                hosted=(Hosted("ab" * 16, PLAN, True), Hosted("name:coder.q4_k_m", None, False)),
                joined="", requests_per_min=(("ab" * 16, 12), ("name:coder.q4_k_m", 0)),
                started_at=1_700_000_000.5)


def test_the_multi_model_fields_round_trip() -> None:
    wire = json.loads(json.dumps(MULTI.to_wire()))
    assert Announcement.from_wire(wire, NODE) == MULTI
    worker = replace(Announcement(NODE), model_file=False, joined="ab" * 16)
    assert worker.checked() == worker


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"offers": {"name": "m"}}, "offers"),
        ({"offers": [{"name": "m"}] * (MAX_MODELS + 1)}, "offers"),
        ({"offers": ["m"]}, "offers"),
        ({"offers": [{"name": HUGE}]}, "offer name"),
        ({"offers": [{"name": ""}]}, "offer name"),
        ({"offers": [{"name": "m", "size_bytes": -1}]}, "size_bytes"),
        ({"offers": [{"name": "m", "size_bytes": 1.5}]}, "size_bytes"),
        ({"offers": [{"name": "m", "fingerprint": "zz"}]}, "offer fingerprint"),
        ({"hosted": [{"fingerprint": "ab"}] * (MAX_MODELS + 1)}, "hosted"),
        ({"hosted": [{"fingerprint": HUGE}]}, "hosted fingerprint"),
        ({"hosted": [{"fingerprint": "ab", "ready": "yes"}]}, "ready"),
        ({"hosted": [{"fingerprint": "ab", "plan": {"mode": "party"}}]}, "plan mode"),
        ({"joined": 3}, "joined"),
        ({"joined": "name:" + HUGE}, "joined"),
        ({"requests_per_min": [1]}, "requests_per_min"),
        ({"requests_per_min": {f"{i:02x}": 1 for i in range(MAX_REQUEST_COUNTS + 1)}},
         "requests_per_min"),
        ({"requests_per_min": {"ab": -1}}, "counts"),
        ({"requests_per_min": {"ab": 10**12}}, "counts"),
        ({"requests_per_min": {"ab": True}}, "counts"),
        ({"requests_per_min": {"not hex": 1}}, "requests_per_min key"),
        ({"started_at": float("inf")}, "started_at"),
        ({"started_at": -1}, "started_at"),
        ({"started_at": "now"}, "started_at"),
    ],
)
def test_hostile_multi_model_fields_are_refused(change: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(AnnouncementError, match=message):
        Announcement.from_wire({**MULTI.to_wire(), **change}, NODE)


def test_a_client_offers_and_hosts_nothing_but_its_counts_count() -> None:
    clamped = clamp_client(MULTI)
    assert (clamped.offers, clamped.hosted, clamped.joined) == ((), (), "")
    assert clamped.requests_per_min == MULTI.requests_per_min
