"""The relay's HTTP/1.1 pieces: chunked bodies survive any split, bad bytes are refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.api.http1 import (
    MAX_CHUNK_LINE,
    ChunkedDecoder,
    HttpProtocolError,
    frame_chunk,
    parse_head,
    request_bytes,
)


def decode_all(wire: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    decoder = ChunkedDecoder()
    out = b""
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        out += b"".join(decoder.feed(wire[start:end]))
    return out, decoder.done


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
       st.booleans())
def test_chunked_roundtrip_any_split(pieces: list[bytes], cuts: list[int], trailer: bool) -> None:
    tail = b"0\r\nX-Trailer: 1\r\n\r\n" if trailer else b"0\r\n\r\n"
    wire = b"".join(frame_chunk(p) for p in pieces) + tail
    out, done = decode_all(wire, cuts)
    assert out == b"".join(pieces)
    assert done


def test_chunk_extensions_and_upper_hex() -> None:
    out, done = decode_all(b"A;name=value\r\n0123456789\r\n0\r\n\r\n", [])
    assert out == b"0123456789" and done


def test_incomplete_body_is_not_done() -> None:
    out, done = decode_all(frame_chunk(b"token") + b"5\r\nab", [3, 9])
    assert out == b"tokenab" and not done


@pytest.mark.parametrize("wire", [
    b"zz\r\nhello\r\n",                    # not hex
    b"-5\r\nhello\r\n",                    # sign
    b"0x5\r\nhello\r\n",                   # prefix
    b"5\r\nhelloXX0\r\n\r\n",              # no CRLF after data
    b"1" * (MAX_CHUNK_LINE + 1),           # a size line that never ends
    b"1000000000000000\r\n",               # absurd size (16 hex digits)
])
def test_bad_chunked_bodies_are_refused(wire: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        ChunkedDecoder().feed(wire)


def test_parse_head() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Transfer-Encoding: chunked\r\nX-Empty:")
    assert head.status == 200 and head.reason == "OK"
    assert head.content_type == "text/event-stream" and head.chunked
    assert head.content_length is None and head.headers["x-empty"] == ""
    plain = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 12")
    assert plain.status == 404 and not plain.chunked and plain.content_length == 12


@pytest.mark.parametrize("raw", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"SSH-2.0-OpenSSH", b"",
    b"HTTP/1.1 200 OK\r\nno colon here", b"HTTP/1.1 200 OK\r\n : empty name",
])
def test_bad_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        parse_head(raw)


def test_bad_content_length_is_refused() -> None:
    with pytest.raises(HttpProtocolError):
        _ = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1").content_length


def test_request_bytes() -> None:
    wire = request_bytes("POST", "127.0.0.1", "/v1/completions",
                         {"Content-Type": "application/json"}, b"{}")
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /v1/completions HTTP/1.1"
    assert b"Connection: close" in head and b"Content-Length: 2" in head and body == b"{}"
    assert b"Content-Length" not in request_bytes("GET", "h", "/v1/models", {}, None)
