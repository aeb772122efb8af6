"""The host's HTTP-tunnel gate: the API's routes pass, one request each; nothing else does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpfuzz import API_PATHS, Case, requests
from mesh_llm.api.http1 import request_bytes
from mesh_llm.api.tunnel_gate import (
    MAX_HEAD_BYTES,
    ROUTES,
    ApiRequestGate,
    GateRefusal,
    RequestHead,
    TunnelledRequest,
    check_head,
)


def fed(data: bytes, cuts: list[int] | None = None) -> bytes:
    gate = ApiRequestGate()
    out = b""
    last = 0
    for cut in [*sorted(cuts or []), len(data)]:
        out += gate.feed(data[last:cut])
        last = cut
    gate.finish()
    return out


def test_what_the_relay_sends_passes_unchanged_in_substance() -> None:
    body = b'{"messages": []}'
    raw = request_bytes("POST", "127.0.0.1", "/v1/chat/completions",
                        {"Content-Type": "application/json", "Accept": "*/*"}, body)
    out = fed(raw)
    assert out.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Connection: close\r\n")
    assert out.endswith(b"Content-Length: 16\r\n\r\n" + body)
    assert fed(request_bytes("GET", "x", "/v1/models", {}, None)).startswith(b"GET /v1/models")
    assert fed(request_bytes("GET", "x", "/health", {}, None)).startswith(b"GET /health")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_split_anywhere(cuts: list[int]) -> None:
    raw = request_bytes("POST", "h", "/v1/completions", {"Content-Type": "application/json"},
                        b'{"prompt": "hi", "max_tokens": 3}')
    assert fed(raw, [c for c in cuts if c <= len(raw)]) == fed(raw)


@pytest.mark.parametrize("head", [
    b"GET /props HTTP/1.1\r\n\r\n",
    b"GET /slots HTTP/1.1\r\n\r\n",
    b"POST /slots/0?action=save HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/models/../props HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n\r\n",
    b"DELETE /v1/models HTTP/1.1\r\n\r\n",
    b"GET /v1/models HTTP/1.0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\n folded\r\n\r\n",
    b"garbage\r\n\r\n",
])
def test_refused(head: bytes) -> None:
    with pytest.raises(GateRefusal):
        check_head(head)


def test_a_second_request_on_the_stream_is_refused() -> None:
    one = request_bytes("GET", "h", "/v1/models", {}, None)
    gate = ApiRequestGate()
    with pytest.raises(GateRefusal, match="after the request"):
        gate.feed(one + b"GET /props HTTP/1.1\r\n\r\n")
    gate = ApiRequestGate()
    post = request_bytes("POST", "h", "/v1/completions", {}, b"{}")
    gate.feed(post)
    with pytest.raises(GateRefusal, match="after the request"):
        gate.feed(b"GET /props HTTP/1.1\r\n\r\n")


def test_head_and_body_are_bounded() -> None:
    gate = ApiRequestGate()
    with pytest.raises(GateRefusal, match="too large"):
        gate.feed(b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 20000)
    gate = ApiRequestGate()  # a head too large, even when its end comes in the same read
    with pytest.raises(GateRefusal, match="too large"):
        gate.feed(b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
    gate = ApiRequestGate()
    gate.feed(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(GateRefusal, match="ended before"):
        gate.finish()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens",
                                  "/v1/responses", "/v1/embeddings", "/v1/rerank"])
def test_every_api_family_passes_one_request(path: str) -> None:
    body = b'{"model": "m", "input": "hi"}'
    raw = request_bytes("POST", "h", path + "?beta=true", {"anthropic-version": "2023-06-01"},
                        body)
    out = fed(raw)
    assert out.startswith(f"POST {path}?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    assert out.endswith(body)
    gate = ApiRequestGate()
    with pytest.raises(GateRefusal, match="after the request"):
        gate.feed(raw + b"GET /slots HTTP/1.1\r\n\r\n")  # pipelined: refused


@pytest.mark.parametrize("head", [
    b"GET /v1/messages HTTP/1.1\r\n\r\n",
    b"POST /v1/messages/batches HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/responses/abc HTTP/1.1\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 8388609\r\n\r\n",
    b"POST /embeddings HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
    b"POST /props HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
])
def test_near_misses_of_the_new_routes_are_refused(head: bytes) -> None:
    with pytest.raises(GateRefusal):
        check_head(head)


def test_the_parsed_head_is_kept_for_the_router() -> None:
    body = b'{"model": "x"}'
    raw = (b"POST /v1/chat/completions?a=1 HTTP/1.1\r\nHost: peer:9337\r\n"
           b"X-Mesh-Model:  ab12 \r\nContent-Type: application/json\r\nx-mesh-model: second\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    gate = ApiRequestGate()
    assert gate.head is None
    preface = gate.feed(raw[:40]) + gate.feed(raw[40:])
    head = gate.head
    assert isinstance(head, RequestHead) and gate.complete
    assert (head.method, head.target, head.path) == (
        "POST", "/v1/chat/completions?a=1", "/v1/chat/completions")
    assert head.content_length == len(body)
    assert head.header("x-mesh-MODEL") == "ab12"  # any case, the first one, without OWS
    assert head.header("host") == "peer:9337"  # what was sent, not what is forwarded
    assert head.header("Authorization") is None
    assert preface.startswith(head.forwarded) and b"peer:9337" not in head.forwarded
    request = TunnelledRequest(head, preface)
    assert request.body == body
    got = check_head(request_bytes("GET", "h", "/health", {}, None))
    assert (got.method, got.path, got.content_length, got.header("content-length")) == (
        "GET", "/health", 0, None)
    assert TunnelledRequest(got, got.forwarded).body == b""


@settings(max_examples=300, deadline=None)
@given(requests(API_PATHS, "127.0.0.1:9337"))
def test_fuzzed_requests_are_refused_or_forwarded_well_formed(case: Case) -> None:
    """The live edge's fuzz cases (tests/httpfuzz.py) through the gate: a GateRefusal or a
    request of the API whose forwarded head is the gate's own rewrite."""
    gate = ApiRequestGate()
    try:
        out = gate.feed(case.raw)
    except GateRefusal:
        return
    if gate.head is None:
        return  # still waiting for the rest of a head (bounded above)
    head = gate.head
    assert (head.method, head.path) in ROUTES
    assert out.startswith(head.forwarded)
    assert head.forwarded.count(b"\r\n\r\n") == 1
    assert len(out) - len(head.forwarded) <= head.content_length
