"""llama-server's answers read by llhttp: any split, our bounds, bad bytes refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.api.http1 import (
    MAX_CHUNK_LINE,
    MAX_HEAD_BYTES,
    MAX_TRAILER_LINES,
    HttpProtocolError,
    ResponseHead,
    frame_chunk,
)
from mesh_llm.api.llhttp import ResponseReader

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


def read(wire: bytes, cuts: list[int] | None = None) -> tuple[ResponseHead | None, bytes, bool]:
    heads: list[ResponseHead] = []
    pieces: list[bytes] = []
    done: list[bool] = []
    reader = ResponseReader(heads.append, pieces.append, lambda: done.append(True))
    points = sorted({min(c, len(wire)) for c in cuts or []} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        reader.feed(wire[start:end])
    assert len(heads) <= 1 and len(done) <= 1 and reader.done == bool(done)
    return (heads[0] if heads else None), b"".join(pieces), reader.done


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
       st.booleans())
def test_chunked_roundtrip_any_split(pieces: list[bytes], cuts: list[int], trailer: bool) -> None:
    tail = b"0\r\nX-Trailer: 1\r\n\r\n" if trailer else b"0\r\n\r\n"
    head, body, done = read(CHUNKED + b"".join(frame_chunk(p) for p in pieces) + tail, cuts)
    assert head is not None and head.chunked and head.content_type == "text/event-stream"
    assert body == b"".join(pieces) and done


def test_lengths_extensions_and_the_close() -> None:
    assert read(CHUNKED + b"A;name=value\r\n0123456789\r\n0\r\n\r\n")[1:] == (b"0123456789", True)
    head, body, done = read(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nabcEXTRA")
    assert head is not None and (head.status, head.reason, head.content_length) == (
        404, "Not Found", 3)
    assert (body, done) == (b"abc", True)  # what follows the answer is not read
    head, body, done = read(b"HTTP/1.1 200 OK\r\n\r\nto the close")
    assert head is not None and head.content_length is None and not head.chunked
    assert (body, done) == (b"to the close", False)  # the caller ends it at the close
    assert read(CHUNKED + frame_chunk(b"token") + b"5\r\nab", [90, 96])[1:] == (b"tokenab", False)


@pytest.mark.parametrize("wire", [
    b"zz\r\nhello\r\n",                    # not hex
    b"-5\r\nhello\r\n",                    # sign
    b"0x5\r\nhello\r\n",                   # prefix
    b"5\r\nhelloXX0\r\n\r\n",              # no CRLF after data
    b"1" * (MAX_CHUNK_LINE + 1),           # a size line that never ends
    b"5;" + b"e" * 100_000,                # an extension that never ends
    b"0\r\n" + b"X-T: 1\r\n" * (MAX_TRAILER_LINES + 1) + b"\r\n",
    b"0\r\nX: " + b"v" * MAX_CHUNK_LINE + b"\r\n\r\n",
    b"0\r\nX: " + b"v" * 300_000,          # a trailer that never ends
])
@pytest.mark.parametrize("split", [False, True])
def test_bad_chunked_bodies_are_refused(wire: bytes, split: bool) -> None:
    with pytest.raises(HttpProtocolError):
        read(CHUNKED + wire, list(range(len(CHUNKED), len(CHUNKED) + len(wire), 7)) if split
             else None)


@pytest.mark.parametrize("raw", [
    b"HTTP/2 200 OK\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 600 No\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n : empty name\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES,  # a head that never ends
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",  # ends, too large
])
def test_bad_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        read(raw, [10, 5000])
