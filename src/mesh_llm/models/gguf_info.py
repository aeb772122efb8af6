"""Cheap facts about a GGUF file, checked before any process starts."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GgufFile:
    path: Path
    size_bytes: int
    version: int


def check_gguf(path: Path) -> GgufFile:
    """Raise a one-line UserError unless `path` is a readable GGUF file."""
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if not path.is_file():
        raise UserError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise UserError(f"cannot read model file {path}: {err.strerror}") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise UserError(f"not a GGUF model file: {path} (expected a .gguf file from llama.cpp)")
    (version,) = struct.unpack("<I", head[4:8])
    return GgufFile(path=path, size_bytes=path.stat().st_size, version=version)


class GgufError(ValueError):
    """The bytes are not a GGUF header we can read."""


# The header is read here, not with gguf.GGUFReader: that one maps every tensor into numpy
# first, 2.5 s for SmolLM2 on a small machine, and we only want a few values.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
SCALAR_SIZES = {vtype: struct.calcsize(fmt) for vtype, fmt in SCALARS.items()}
STRING, ARRAY = 8, 9
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
MAX_STRING = 1 << 16
MAX_KV = 1 << 16
MAX_LIST = 1 << 22  # vocabularies are ~10^5 tokens

MetaValue = int | float | bool | bytes | list[bytes] | None


def read_string(buf: bytes | mmap.mmap, pos: int) -> tuple[bytes, int]:
    n = U64.unpack_from(buf, pos)[0]
    if n > MAX_STRING:
        raise GgufError("GGUF string too long")
    return buf[pos + 8:pos + 8 + n], pos + 8 + n


def skip_value(buf: bytes | mmap.mmap, pos: int, vtype: int) -> int:
    if vtype == STRING:
        return pos + 8 + U64.unpack_from(buf, pos)[0]
    if vtype == ARRAY:
        etype = U32.unpack_from(buf, pos)[0]
        count = U64.unpack_from(buf, pos + 4)[0]
        pos += 12
        if etype in SCALAR_SIZES:
            return pos + count * SCALAR_SIZES[etype]
        if etype == STRING:
            unpack = U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            return pos
        for _ in range(count):  # arrays of arrays: rare, recurse
            pos = skip_value(buf, pos, etype)
        return pos
    if vtype in SCALAR_SIZES:
        return pos + SCALAR_SIZES[vtype]
    raise GgufError(f"unknown GGUF value type {vtype}")


def _value(buf: mmap.mmap, pos: int, vtype: int) -> MetaValue:
    """A scalar, a string, or an array of strings; None for other arrays."""
    if vtype in SCALARS:
        return struct.unpack_from(SCALARS[vtype], buf, pos)[0]  # type: ignore[no-any-return]
    if vtype == STRING:
        return read_string(buf, pos)[0]
    if vtype == ARRAY and U32.unpack_from(buf, pos)[0] == STRING:
        count = U64.unpack_from(buf, pos + 4)[0]
        if count > MAX_LIST:
            raise GgufError(f"GGUF string list of {count} items")
        items, pos = [], pos + 12
        for _ in range(count):
            item, pos = read_string(buf, pos)
            items.append(item)
        return items
    return None


def read_metadata(path: Path, keys: Collection[str]) -> dict[str, MetaValue]:
    """The values of `keys` that the GGUF header at `path` holds (OSError, GgufError)."""
    wanted = {key.encode() for key in keys}
    found: dict[str, MetaValue] = {}
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise GgufError("too short for a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        try:
            if buf[:4] != GGUF_MAGIC or U32.unpack_from(buf, 4)[0] not in (2, 3):
                raise GgufError("not a GGUF v2/v3 file")
            n_kv = U64.unpack_from(buf, 16)[0]
            if n_kv > MAX_KV:
                raise GgufError(f"GGUF declares {n_kv} metadata keys")
            pos = 24
            for _ in range(n_kv):
                key, pos = read_string(buf, pos)
                vtype = U32.unpack_from(buf, pos)[0]
                pos += 4
                if key in wanted:
                    found[key.decode()] = _value(buf, pos, vtype)
                    if len(found) == len(wanted):
                        break
                pos = skip_value(buf, pos, vtype)
        except (struct.error, IndexError) as err:
            raise GgufError(f"truncated GGUF header: {err}") from None
    return found


def block_count(path: Path) -> int:
    """The number of repeating layers, from the GGUF metadata (`<arch>.block_count`)."""
    try:
        arch = read_metadata(path, ["general.architecture"]).get("general.architecture")
        if not isinstance(arch, bytes):
            raise UserError(f"{path}: GGUF metadata has no general.architecture")
        key = f"{arch.decode(errors='replace')}.block_count"
        count = read_metadata(path, [key]).get(key)
    except (OSError, GgufError) as err:
        raise UserError(f"{path}: cannot read the GGUF metadata: {err}") from None
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise UserError(f"{path}: GGUF metadata has no {key}")
    return count
