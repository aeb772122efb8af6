"""Reach, the pure parts: which addresses a node hands out and to whom, what peers report
seeing it at, and the decisions of hole punching."""

from __future__ import annotations

import base64
import json

import pytest

from mesh_llm.mesh.addresses import (
    is_loopback,
    lan_addrs,
    own_addrs,
    shareable,
    token_addrs,
)
from mesh_llm.mesh.announcement import Announcement
from mesh_llm.mesh.gossip import (
    GossipError,
    Intro,
    IntroRequest,
    intro_message,
    intro_request,
    parse_gossip,
    state_message,
)
from mesh_llm.mesh.invites import (
    InviteToken,
    TokenError,
    decode_token,
    encode_token,
    mint_invite,
)
from mesh_llm.mesh.observed import ObservedAddrs, valid_observed
from mesh_llm.mesh.punch import (
    introductions,
    link_kind,
    path_kind,
    punch_targets,
    recent,
    remember_path,
)

A, B = "a" * 64, "b" * 64


# ---------------------------------------------------------------- addresses handed out


def test_wildcard_bind_without_a_route_lists_interfaces_not_loopback() -> None:
    # The found bug: no default route, so no "primary" address; only 127.0.0.1 was listed.
    assert token_addrs("0.0.0.0", 7842, [], ["10.9.0.2"]) == ["10.9.0.2:7842"]
    assert token_addrs("0.0.0.0", 7842, [], ["127.0.0.1", "10.9.0.2"]) == ["10.9.0.2:7842"]


def test_wildcard_bind_with_only_loopback_falls_back_to_it() -> None:
    assert token_addrs("0.0.0.0", 7842, [], []) == ["127.0.0.1:7842"]


def test_loopback_bind_keeps_its_address() -> None:
    assert token_addrs("127.0.0.1", 7842, [], ["10.9.0.2"]) == ["127.0.0.1:7842"]


def test_token_order_is_advertised_then_observed_then_lan() -> None:
    addrs = token_addrs("0.0.0.0", 5, ["example.org:9"], ["10.0.0.2"], ["198.51.100.2:40000"])
    assert addrs == ["example.org:9", "198.51.100.2:40000", "10.0.0.2:5"]


def test_own_addresses_cover_every_way_to_reach_this_socket() -> None:
    own = own_addrs("0.0.0.0", 5, ["10.0.0.2"], ["198.51.100.2:40000"])
    assert {"127.0.0.1:5", "localhost:5", "10.0.0.2:5", "198.51.100.2:40000"} <= own
    assert own_addrs("10.0.0.2", 5, []) == {"10.0.0.2:5"}
    assert "127.0.0.1:5" in own_addrs("127.0.0.1", 5, [])


def test_loopback_is_shared_only_with_a_peer_on_this_machine() -> None:
    addrs = ["127.0.0.1:5", "[::1]:5", "localhost:5", "10.0.0.2:5", "bad"]
    assert shareable(addrs, to_loopback=False) == ["10.0.0.2:5", "bad"]
    assert shareable(addrs, to_loopback=True) == addrs
    assert is_loopback("127.8.8.8:1") and not is_loopback("10.0.0.1:1")
    assert lan_addrs("::", 5, ["10.0.0.2", "10.0.0.2"]) == ["10.0.0.2:5"]


# ---------------------------------------------------------------- observed addresses


@pytest.mark.parametrize("addr", ["127.0.0.1:5", "0.0.0.0:5", "224.0.0.1:5", "host.example:5",
                                  "10.0.0.1", "10.0.0.1:0", 5, None, "[::1]:5", "x" * 300])
def test_an_observed_address_must_be_an_ip_that_can_be_ours(addr: object) -> None:
    assert valid_observed(addr) is None


def test_observed_addresses_one_report_per_peer_most_recent_first() -> None:
    seen = ObservedAddrs(max_reporters=3, max_addrs=2)
    assert seen.report(A, "198.51.100.2:1000")
    assert not seen.report(A, "198.51.100.2:1000"), "the same report changes nothing"
    assert seen.report(B, "10.0.0.2:5")
    assert seen.addrs() == ["10.0.0.2:5", "198.51.100.2:1000"]
    assert seen.public(["10.0.0.2:5"]) == ["198.51.100.2:1000"]
    assert not seen.report("c" * 64, "127.0.0.1:5"), "loopback is never an observed address"
    for n in range(5):  # bounded: the oldest reporters are forgotten
        seen.report(f"{n}" * 64, f"198.51.100.{n + 10}:5")
    assert seen.addrs() == ["198.51.100.14:5", "198.51.100.13:5"]


# ---------------------------------------------------------------- gossip messages


def test_state_carries_where_the_sender_sees_us_and_the_path() -> None:
    ann = Announcement(A)
    msg = parse_gossip(state_message(ann, [], "198.51.100.2:1000", punched=True), A)
    assert msg.seen == "198.51.100.2:1000" and msg.punched  # type: ignore[union-attr]
    plain = parse_gossip(state_message(ann, []), A)
    assert plain.seen is None and not plain.punched  # type: ignore[union-attr]
    with pytest.raises(GossipError):
        parse_gossip({**state_message(ann, []), "seen": ["x"]}, A)


def test_introduction_messages_round_trip_and_are_bounded() -> None:
    assert parse_gossip(intro_request(B), A) == IntroRequest(B)
    intro = Intro(B, ["198.51.100.3:7"], True, 300)
    assert parse_gossip(intro_message(intro), A) == intro
    bad = [{"t": "intro?", "id": "x"},
           {**intro_message(intro), "in_ms": 10**6},
           {**intro_message(intro), "addrs": []},
           {**intro_message(intro), "addrs": ["198.51.100.3:7"] * 5},
           {**intro_message(intro), "dial": 1}]
    for message in bad:
        with pytest.raises(GossipError):
            parse_gossip(message, A)


# ---------------------------------------------------------------- punching decisions


def test_introductions_give_each_the_other_and_the_smaller_id_dials() -> None:
    to_a, to_b = introductions(A, ["198.51.100.2:1"], B, ["198.51.100.3:2"], 300)
    assert to_a == Intro(B, ["198.51.100.3:2"], True, 300)
    assert to_b == Intro(A, ["198.51.100.2:1"], False, 300)


def test_punch_targets_drop_names_loopback_and_our_own() -> None:
    addrs = ["peer.example:1", "127.0.0.1:1", "198.51.100.2:1", "198.51.100.3:2",
             "198.51.100.3:2"]
    assert punch_targets(addrs, {"198.51.100.2:1"}) == ["198.51.100.3:2"]


def test_link_kind() -> None:
    assert link_kind("intro", dialed=True) == "punched"
    assert link_kind("dial", dialed=False) == "punched", "accepted while we dialled it"
    assert link_kind("dial", dialed=True) == "direct"
    assert link_kind(None, dialed=False) == "direct"


def test_recent_is_a_bounded_rate_limit() -> None:
    last: dict[str, float] = {}
    assert not recent(last, "x", 0.0, 5.0, 2)
    assert recent(last, "x", 4.0, 5.0, 2)
    assert not recent(last, "x", 6.0, 5.0, 2)
    recent(last, "y", 6.0, 5.0, 2)
    recent(last, "z", 6.0, 5.0, 2)
    assert len(last) == 2 and "x" not in last


def test_a_later_link_on_a_punched_path_is_punched_too() -> None:
    paths: dict[str, str] = {}
    remember_path(paths, A, "198.51.100.2:1", limit=1)
    assert path_kind(paths, A, "198.51.100.2:1", None, dialed=True) == "punched"
    assert path_kind(paths, A, "10.0.0.2:1", None, dialed=True) == "direct"
    assert path_kind(paths, A, "127.0.0.1:1", "intro", dialed=True) == "direct"
    remember_path(paths, B, "198.51.100.3:1", limit=1)
    assert paths == {B: "198.51.100.3:1"}


def test_a_lite_client_always_dials() -> None:
    to_b, to_a = introductions(B, ["198.51.100.3:2"], A, ["198.51.100.2:1"], 300,
                               asker_is_client=True)
    assert to_b.dial and not to_a.dial, "the client B dials though its id is larger"


def test_a_token_may_name_a_few_other_members_to_join_through() -> None:
    via = ((B, ("198.51.100.10:7842",)),)
    text = encode_token(InviteToken(A, ["198.51.100.11:5"], b"s" * 32, via=via))
    assert decode_token(text).via == via
    invite = decode_token(encode_token(mint_invite(A, ["198.51.100.11:5"], b"s" * 32, "client",
                                                   via=via)))
    assert invite.via == via and invite.kind == "client"
    body = {"v": 1, "id": A, "addrs": ["198.51.100.11:5"],
            "secret": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")}
    for bad in ([{"id": A, "addrs": ["198.51.100.10:1"]}],  # the token's own node
                [{"id": B, "addrs": []}], [{"id": "x", "addrs": ["198.51.100.10:1"]}],
                [{"id": B, "addrs": ["nope"]}], [{"id": B, "addrs": ["198.51.100.10:1"]}] * 4,
                "x"):
        raw = base64.urlsafe_b64encode(json.dumps({**body, "via": bad}).encode()).decode()
        with pytest.raises(TokenError):
            decode_token(raw)
