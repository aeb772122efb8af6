"""Frame codec, stream types, and the gossip messages that ride in frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frames import FrameDecoder
from mesh_llm.mesh.announcement import Announcement, AnnouncementError
from mesh_llm.mesh.gossip import (
    GoodbyeMsg,
    GossipError,
    PeerHint,
    PingMsg,
    StateMsg,
    goodbye_message,
    parse_gossip,
    ping_message,
    state_message,
)
from mesh_llm.mesh.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    FrameError,
    StreamType,
    decode_body,
    encode_frame,
    read_frame,
)

NODE = "cd" * 32


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


class ChunkReader:
    """A byte source that counts what was read, to show the body is never touched."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_total = 0

    async def readexactly(self, n: int) -> bytes:
        if len(self.data) < n:
            partial, self.data = self.data, b""
            raise asyncio.IncompleteReadError(partial, n)
        out, self.data = self.data[:n], self.data[n:]
        self.read_total += n
        return out


def test_stream_types_are_stable() -> None:
    assert (StreamType.AUTH, StreamType.GOSSIP, StreamType.RPC_TUNNEL,
            StreamType.HTTP_TUNNEL) == (1, 2, 3, 4)


def test_encode_adds_version_and_length() -> None:
    data = encode_frame({"t": "x", "a": 1})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"t": "x", "a": 1, "v": PROTOCOL_VERSION}


def test_encode_refuses_big_or_untyped() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame({"t": "x", "pad": "a" * MAX_FRAME})
    with pytest.raises(FrameError, match="message type"):
        encode_frame({"a": 1})
    with pytest.raises(FrameError, match="serializable"):
        encode_frame({"t": "x", "bad": object()})
    with pytest.raises(FrameError, match="serializable"):
        encode_frame({"t": "x", "nan": float("nan")})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xff", "not valid UTF-8 JSON"),
        (b"nope", "not valid UTF-8 JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"t": "x"}', "no protocol version"),
        (b'{"t": "x", "v": "1"}', "no protocol version"),
        (b'{"t": "x", "v": 99}', "version 99 is not supported"),
        (b'{"v": 1}', "no message type"),
        (b"[" * 5000, "not valid UTF-8 JSON"),
    ],
)
def test_decode_body_rejects(body: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_body(body)


def test_incremental_decoder_byte_by_byte() -> None:
    stream = encode_frame({"t": "a"}) + encode_frame({"t": "b", "n": 2})
    dec = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(dec.feed(stream[i : i + 1]))
    assert [m["t"] for m in out] == ["a", "b"]
    assert dec.pending == 0


def test_decoder_rejects_oversize_from_header_alone() -> None:
    dec = FrameDecoder(max_size=100)
    with pytest.raises(FrameError, match="exceeds"):
        dec.feed(struct.pack(">I", 101))
    with pytest.raises(FrameError):  # poisoned: the stream must be dropped
        dec.feed(encode_frame({"t": "a"}))


def test_decoder_rejects_tiny_length() -> None:
    with pytest.raises(FrameError, match="too short"):
        FrameDecoder().feed(struct.pack(">I", 0))


async def test_read_frame_checks_size_before_body() -> None:
    reader = ChunkReader(struct.pack(">I", MAX_FRAME + 1) + b"x" * 10)
    with pytest.raises(FrameError, match="exceeds"):
        await read_frame(reader)
    assert reader.read_total == 4  # only the header was consumed


async def test_read_frame_eof_and_truncation() -> None:
    assert await read_frame(ChunkReader(b"")) is None
    with pytest.raises(FrameError, match="header"):
        await read_frame(ChunkReader(b"\x00\x00"))
    with pytest.raises(FrameError, match="body"):
        await read_frame(ChunkReader(frame_of(b'{"t":"x","v":1}')[:-2]))
    reader = ChunkReader(encode_frame({"t": "x"}) + encode_frame({"t": "y"}))
    assert (await read_frame(reader))["t"] == "x"  # type: ignore[index]
    assert (await read_frame(reader))["t"] == "y"  # type: ignore[index]
    assert await read_frame(reader) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
messages = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("t", "v")),
                           json_values, max_size=6).flatmap(
    lambda d: st.text(min_size=1, max_size=10).map(lambda t: {**d, "t": t}))


@settings(deadline=None)
@given(messages)
def test_round_trip_property(message: dict) -> None:
    frames = FrameDecoder().feed(encode_frame(message))
    assert frames == [{**message, "v": PROTOCOL_VERSION}]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_decoder_raises_only_frame_error(data: bytes, chunk: int) -> None:
    dec = FrameDecoder(max_size=1024)
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i : i + chunk])
    except FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
async def test_framed_garbage_raises_only_frame_error(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        await read_frame(ChunkReader(frame_of(body)))


# ---------------------------------------------------------------------------- gossip


def test_announcement_fills_defaults() -> None:
    ann = Announcement.from_wire({"role": "host", "vram_bytes": 5, "extra": {"any": "thing"}},
                                 NODE)
    assert ann.node_id == NODE and ann.role == "host" and ann.vram_bytes == 5
    assert ann.models == () and ann.ready is False
    with pytest.raises(ValueError, match="role"):
        Announcement(NODE, role="boss").checked()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "not an object"),
        ({"node_id": "ef" * 32}, "claims node id"),
        ({"role": 3}, "role"),
        ({"vram_bytes": -1}, "vram_bytes"),
        ({"vram_bytes": True}, "vram_bytes"),
        ({"vram_bytes": 1.5}, "vram_bytes"),
        ({"models": "m"}, "models"),
        ({"models": [1]}, "models"),
        ({"models": ["m"] * 65}, "models"),
        ({"rpc_version": 7}, "rpc_version"),
        ({"version": "x" * 65}, "version"),
        ({"ready": "yes"}, "ready"),
        ({"model_file": 0}, "model_file"),
        ({"addrs": ["nope"]}, "addrs"),
        ({"addrs": "h:1"}, "addrs"),
    ],
)
def test_announcement_from_wire_rejects(raw: object, message: str) -> None:
    with pytest.raises(AnnouncementError, match=message):
        Announcement.from_wire(raw, NODE)


def test_parse_gossip_messages() -> None:
    ann = Announcement(NODE, models=("m",))
    hint = PeerHint("ef" * 32, ["127.0.0.1:5"])
    state = parse_gossip(state_message(ann, [hint]), NODE)
    assert state == StateMsg(ann, [hint])
    assert parse_gossip(ping_message(3, 1.5), NODE) == PingMsg(3, 1.5, False)
    assert parse_gossip(ping_message(3, 1.5, pong=True), NODE) == PingMsg(3, 1.5, True)
    assert isinstance(parse_gossip(goodbye_message(), NODE), GoodbyeMsg)
    assert parse_gossip({"t": "from-the-future"}, NODE) is None


@pytest.mark.parametrize(
    "message",
    [
        {"t": "state", "ann": "x"},
        {"t": "state", "ann": {}, "peers": "x"},
        {"t": "state", "ann": {}, "peers": [{"id": "short"}]},
        {"t": "state", "ann": {}, "peers": [{"id": "ef" * 32, "addrs": ["bad"]}]},
        {"t": "state", "ann": {}, "peers": [{"id": "ef" * 32}] * 257},
        {"t": "ping", "n": "1", "ts": 0},
        {"t": "ping", "n": 1, "ts": True},
        {"t": "pong", "n": 1, "ts": float("inf")},
    ],
)
def test_parse_gossip_rejects(message: dict) -> None:
    with pytest.raises(GossipError):
        parse_gossip(message, NODE)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "ann", "peers", "n", "ts", "x"]), json_values,
                       max_size=5).map(lambda d: {**d, "t": d.get("t", "state")}))
def test_parse_gossip_raises_only_gossip_error(message: dict) -> None:
    with contextlib.suppress(GossipError):
        parse_gossip(message, NODE)
