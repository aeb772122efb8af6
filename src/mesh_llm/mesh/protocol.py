"""Wire format shared by every mesh stream: the stream type byte and control frames.

Each bidirectional stream starts with one byte naming what it carries. Control streams
(auth, gossip) then carry frames: a u32 big-endian length and that many bytes of a JSON
object with a protocol version "v" and a message type "t". The length is checked against
the limit before a single body byte is read or buffered, so a peer cannot make us
allocate more than `max_size`.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Protocol

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024
HEADER = struct.Struct(">I")


class StreamType(IntEnum):
    """First byte of every stream. 5..127 are free for new stream kinds; 128..255 reserved."""

    AUTH = 1
    GOSSIP = 2
    RPC_TUNNEL = 3
    HTTP_TUNNEL = 4
    RELAY = 5  # a member carrying two others' QUIC packets (relay.py)


class FrameError(Exception):
    """A frame that breaks the rules (too big, truncated, not a versioned JSON object)."""


class ByteReader(Protocol):
    """Anything frames can be read from (our QUIC Stream, asyncio.StreamReader)."""

    async def readexactly(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    async def write(self, data: bytes) -> None: ...


def encode_frame(message: Mapping[str, Any], max_size: int = MAX_FRAME) -> bytes:
    """Length-prefixed JSON of `message` plus the protocol version; FrameError if too big."""
    if not isinstance(message.get("t"), str):
        raise FrameError("frame needs a string message type 't'")
    body_obj = dict(message)
    body_obj["v"] = PROTOCOL_VERSION
    try:
        body = json.dumps(body_obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise FrameError(f"frame is not JSON-serializable: {err}") from None
    if len(body) > max_size:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {max_size}-byte limit")
    return HEADER.pack(len(body)) + body


def check_length(length: int, max_size: int = MAX_FRAME) -> None:
    """Reject a declared body length before reading it."""
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    if length < 2:  # the smallest JSON object is "{}"
        raise FrameError(f"frame of {length} bytes is too short")


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame body; FrameError for anything but a versioned JSON object."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise FrameError("frame is not valid UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    version = message.get("v")
    if type(version) is not int:
        raise FrameError("frame has no protocol version")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"frame protocol version {version} is not supported "
                         f"(this node speaks {PROTOCOL_VERSION})")
    if not isinstance(message.get("t"), str):
        raise FrameError("frame has no message type")
    return message


async def read_frame(
    stream: ByteReader, max_size: int = MAX_FRAME
) -> dict[str, Any] | None:
    """Read one frame; None on a clean end of stream before a header, FrameError otherwise.

    Callers bound the wait with `asyncio.timeout`; this only bounds the size.
    """
    try:
        header = await stream.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise FrameError("stream ended inside a frame header") from None
    (length,) = HEADER.unpack(header)
    check_length(length, max_size)
    try:
        body = await stream.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame body") from None
    return decode_body(body)


async def write_frame(
    stream: ByteWriter, message: Mapping[str, Any], max_size: int = MAX_FRAME
) -> None:
    """Encode and write one frame (waits for stream backpressure)."""
    await stream.write(encode_frame(message, max_size))
