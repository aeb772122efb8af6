"""Relaying through a member, the pure parts: datagram framing, the rate bucket, when a
relay refuses, and the virtual path's address (never gossiped, never an observed one)."""

from __future__ import annotations

import pytest

from mesh_llm.mesh.invites import format_addr
from mesh_llm.mesh.observed import valid_observed
from mesh_llm.mesh.punch import path_kind
from mesh_llm.mesh.relay import (
    MAX_DATAGRAM,
    Bucket,
    Framer,
    frame,
    is_virtual,
    parse_relay_limit,
    refusal,
    virtual_addr,
)

A, B, R = "a" * 64, "b" * 64, "c" * 64


def test_framer_cuts_a_stream_into_its_datagrams_whatever_the_chunks() -> None:
    data = frame(b"x" * 10) + frame(b"y") + frame(b"z" * MAX_DATAGRAM)
    framer = Framer()
    out: list[bytes] = []
    for i in range(0, len(data), 7):
        out += framer.feed(data[i:i + 7])
    assert out == [b"x" * 10, b"y", b"z" * MAX_DATAGRAM]


@pytest.mark.parametrize("length", [0, MAX_DATAGRAM + 1, 65535])
def test_framer_refuses_a_bad_length(length: int) -> None:
    with pytest.raises(ValueError):
        Framer().feed(length.to_bytes(2, "big") + b"x")


def test_bucket_allows_a_second_of_burst_then_the_rate() -> None:
    bucket = Bucket(1000)
    assert bucket.take(1000, now=bucket._at)
    assert not bucket.take(1, now=bucket._at)
    assert bucket.take(500, now=bucket._at + 0.5)


def test_refusal_reasons() -> None:
    assert refusal(True, 0, 8, True, True) is None
    assert "--no-relay" in str(refusal(False, 0, 8, True, True))
    assert "to members" in str(refusal(True, 0, 8, True, False))
    assert "limit of 8 pairs" in str(refusal(True, 8, 8, True, True))


def test_a_virtual_path_is_per_pair_and_never_an_address_of_ours() -> None:
    addr = format_addr(*virtual_addr(R, B))
    assert is_virtual(addr) and addr != format_addr(*virtual_addr(R, A))
    assert virtual_addr(R, B) == virtual_addr(R, B)
    assert not is_virtual("198.51.100.2:5") and not is_virtual("nonsense")
    assert valid_observed(addr) is None
    assert path_kind({}, B, addr, None, True, relay=R) == f"relayed (via {R[:12]})"


def test_relay_limit_flag() -> None:
    assert parse_relay_limit("4,2") == (4, 2_000_000)
    assert parse_relay_limit("3") == (3, 8_000_000)
    for bad in ("0", "x", "4,0", "4,y", "2000"):
        with pytest.raises(ValueError):
            parse_relay_limit(bad)
