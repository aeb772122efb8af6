"""The one walk over a GGUF header: magic and version, the metadata entries, the tensor table.

Why ours and not gguf.GGUFReader: that one maps every tensor into numpy first (2.5 s for
SmolLM2 on a small machine), and both readers here want only the header: the metadata
reader (gguf_info) a few values, the layout parser (weights) the tensor table. Every read
is bounded by the mapped file; anything that does not fit is a ``GgufError``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

GGUF_MAGIC = b"GGUF"
HEADER_SIZE = 24  # magic, version u32, tensor count u64, metadata count u64
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
SCALAR_SIZES = {vtype: struct.calcsize(fmt) for vtype, fmt in SCALARS.items()}
STRING, ARRAY = 8, 9
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
MAX_STRING = 1 << 16
MAX_KV = 1 << 16
MAX_LIST = 1 << 22  # vocabularies are ~10^5 tokens
MAX_TENSORS = 1 << 20
MAX_DIMS = 8

Buffer = bytes | mmap.mmap
MetaValue = int | float | bool | bytes | list[bytes] | None


class GgufError(ValueError):
    """The bytes are not a GGUF header we can read."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor table: ``offset`` is relative to the data section."""

    name: bytes
    ggml_type: int
    offset: int
    elements: int


def read_string(buf: Buffer, pos: int) -> tuple[bytes, int]:
    n = U64.unpack_from(buf, pos)[0]
    if n > MAX_STRING:
        raise GgufError("GGUF string too long")
    return buf[pos + 8:pos + 8 + n], pos + 8 + n


def skip_value(buf: Buffer, pos: int, vtype: int) -> int:
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


def read_value(buf: Buffer, pos: int, vtype: int) -> MetaValue:
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


class GgufHeader:
    """A GGUF v2/v3 header in ``buf``, walked in file order: ``metadata()``, then
    ``tensor_infos()`` (which walks the metadata itself if nobody did)."""

    def __init__(self, buf: Buffer) -> None:
        if len(buf) < HEADER_SIZE:
            raise GgufError("too short for a GGUF header")
        if buf[:4] != GGUF_MAGIC:
            raise GgufError("not a GGUF file")
        version = U32.unpack_from(buf, 4)[0]
        if version not in (2, 3):
            raise GgufError(f"unsupported GGUF version {version}")
        self.buf = buf
        self.version = version
        self.n_tensors, self.n_kv = struct.unpack_from("<QQ", buf, 8)
        if self.n_kv > MAX_KV:
            raise GgufError(f"GGUF declares {self.n_kv} metadata keys")
        self._metadata_end: int | None = None

    def metadata(self) -> Iterator[tuple[bytes, int, int]]:
        """Each entry as (key, value type, where its value starts), in file order; a
        reader may stop early. Read a value with ``read_value``."""
        buf, size, pos = self.buf, len(self.buf), HEADER_SIZE
        try:
            for _ in range(self.n_kv):
                key, pos = read_string(buf, pos)
                vtype = U32.unpack_from(buf, pos)[0]
                pos += 4
                yield key, vtype, pos
                pos = skip_value(buf, pos, vtype)
                if pos > size:
                    raise GgufError("GGUF metadata runs past the end of the file")
        except (struct.error, IndexError) as err:
            raise GgufError(f"truncated GGUF header: {err}") from None
        self._metadata_end = pos

    def tensor_infos(self) -> tuple[list[TensorInfo], int]:
        """The tensor table, and where the header ends (the data section starts at the next
        multiple of the alignment)."""
        if self._metadata_end is None:
            for _ in self.metadata():
                pass
        assert self._metadata_end is not None
        if self.n_tensors > MAX_TENSORS:
            raise GgufError(f"GGUF declares {self.n_tensors} tensors")
        buf, pos = self.buf, self._metadata_end
        infos: list[TensorInfo] = []
        try:
            for _ in range(self.n_tensors):
                name, pos = read_string(buf, pos)
                n_dims = U32.unpack_from(buf, pos)[0]
                if n_dims > MAX_DIMS:
                    raise GgufError(f"tensor {name!r} has {n_dims} dims")
                dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
                ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                elements = 1
                for d in dims:
                    elements *= d
                infos.append(TensorInfo(name, ttype, offset, elements))
        except (struct.error, IndexError) as err:
            raise GgufError(f"truncated GGUF header: {err}") from None
        return infos, pos
