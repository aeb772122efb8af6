"""Cheap facts about a GGUF file, checked before any process starts."""

from __future__ import annotations

import struct
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


def block_count(path: Path) -> int:
    """The number of repeating layers, from the GGUF metadata (`<arch>.block_count`)."""
    from gguf import GGUFReader  # numpy-heavy: imported only by a host that splits

    reader = GGUFReader(str(path), "r")
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise UserError(f"{path}: GGUF metadata has no general.architecture")
    arch = arch_field.contents()
    count = reader.get_field(f"{arch}.block_count")
    if count is None:
        raise UserError(f"{path}: GGUF metadata has no {arch}.block_count")
    return int(count.contents())
