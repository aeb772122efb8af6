"""RPC byte streams and version text for tests: requests as llama-server writes them, and
the version as ggml-rpc.h and ggml-rpc-server state it (the node learns it from HELLO)."""

from __future__ import annotations

import re
import struct

from mesh_llm.inference.rpc_wire import (
    RPC_TENSOR_DATA_OFFSET,
    RPC_TENSOR_NAME_OFFSET,
    RPC_TENSOR_NAME_SIZE,
    RPC_TENSOR_SIZE,
    RpcCmd,
    RpcVersion,
    RpcWireError,
    pack_command,
)

_TENSOR_HEAD = struct.Struct("<QIQ")  # id, type, buffer
_TENSOR_DATA = struct.Struct("<Q")
_SET_TAIL = struct.Struct("<BQ")  # cache_flag, offset (after rpc_tensor)


def pack_rpc_tensor(name: bytes, *, tensor_id: int = 1, type: int = 0, buffer: int = 0,
                    data_ptr: int = 0) -> bytes:
    """A packed ``rpc_tensor`` with the fields the parser reads; the rest zero."""
    if len(name) >= RPC_TENSOR_NAME_SIZE:
        raise ValueError("tensor name too long")
    out = bytearray(RPC_TENSOR_SIZE)
    _TENSOR_HEAD.pack_into(out, 0, tensor_id, type, buffer)
    _TENSOR_DATA.pack_into(out, RPC_TENSOR_DATA_OFFSET, data_ptr)
    out[RPC_TENSOR_NAME_OFFSET:RPC_TENSOR_NAME_OFFSET + len(name)] = name
    return bytes(out)


def pack_set_tensor(name: bytes, offset: int, data: bytes, *, cache_flag: int = 0,
                    tensor_id: int = 1) -> bytes:
    """A whole SET_TENSOR request."""
    payload = (pack_rpc_tensor(name, tensor_id=tensor_id) + _SET_TAIL.pack(cache_flag, offset)
               + data)
    return pack_command(RpcCmd.SET_TENSOR, payload)


def version_from_header(text: str) -> RpcVersion:
    """Parse ``RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION`` out of ggml-rpc.h source text."""
    found = {}
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#define\s+RPC_PROTO_{part}_VERSION\s+(\d+)", text)
        if m is None:
            raise RpcWireError(f"RPC_PROTO_{part}_VERSION not found")
        found[part] = int(m.group(1))
    return RpcVersion(found["MAJOR"], found["MINOR"], found["PATCH"])


def parse_server_banner(text: str) -> RpcVersion | None:
    """``Starting RPC server v7.0.0`` (ggml-rpc-server's first stdout line; block-buffered
    when stdout is a pipe, so it may only appear after the first client connects)."""
    m = re.search(r"Starting RPC server v(\d+)\.(\d+)\.(\d+)", text)
    return RpcVersion(*(int(g) for g in m.groups())) if m else None
