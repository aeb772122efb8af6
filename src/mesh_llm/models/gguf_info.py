"""Cheap facts about a GGUF file, checked before any process starts."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .gguf_header import GGUF_MAGIC, HEADER_SIZE, GgufError, GgufHeader, MetaValue, read_value


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


def read_metadata(path: Path, keys: Collection[str]) -> dict[str, MetaValue]:
    """The values of `keys` that the GGUF header at `path` holds (OSError, GgufError)."""
    wanted = {key.encode() for key in keys}
    found: dict[str, MetaValue] = {}
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < HEADER_SIZE:
            raise GgufError("too short for a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        try:
            for key, vtype, pos in GgufHeader(buf).metadata():
                if key in wanted:
                    found[key.decode()] = read_value(buf, pos, vtype)
                    if len(found) == len(wanted):
                        break
        except (struct.error, IndexError) as err:
            raise GgufError(f"truncated GGUF header: {err}") from None
    return found


def _arch_value(path: Path, name: str) -> MetaValue | None:
    """`<arch>.<name>` from the GGUF metadata (None when absent; UserError when unreadable)."""
    try:
        arch = read_metadata(path, ["general.architecture"]).get("general.architecture")
        if not isinstance(arch, bytes):
            raise UserError(f"{path}: GGUF metadata has no general.architecture")
        key = f"{arch.decode(errors='replace')}.{name}"
        return read_metadata(path, [key]).get(key)
    except (OSError, GgufError) as err:
        raise UserError(f"{path}: cannot read the GGUF metadata: {err}") from None


def _positive(value: MetaValue | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def block_count(path: Path) -> int:
    """The number of repeating layers, from the GGUF metadata (`<arch>.block_count`)."""
    count = _positive(_arch_value(path, "block_count"))
    if count is None:
        raise UserError(f"{path}: GGUF metadata has no block_count")
    return count


def trained_context(path: Path) -> int | None:
    """The context the model was trained for (`<arch>.context_length`); None if unstated."""
    return _positive(_arch_value(path, "context_length"))
