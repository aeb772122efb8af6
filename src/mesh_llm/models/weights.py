"""A model's weights as the RPC dedupe needs them: a fingerprint, a tensor index, byte access.

Why: loading a split model makes llama-server upload every weight the worker holds with
SET_TENSOR, and those bytes are exactly ranges of the GGUF file (``tensor data offset +
SET_TENSOR offset``). The codec (``inference/dedupe.py``) replaces such ranges by
references when both tunnel ends hold the same file; this module says what that file is.

``ModelWeights.open(path | shards)``: a cheap fingerprint (GGUF header + tensor infos + size
+ 16 sampled 4 KiB data blocks: a few ms even for 40 GB) for gossip, and an index tensor
name → span of its data, from the header walk in ``gguf_header`` (GGUFReader takes seconds
on a big vocab). Pure except for reading the model file itself.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .gguf_header import U32, U64, GgufError, GgufHeader


class WeightReadError(ValueError):
    """These files do not hold the asked bytes: outside them, closed, or unreadable."""


# (elements per block, bytes per block) per ggml type, as GGML_QUANT_SIZES in gguf 0.19.
# A type missing here is sized by the gap to the next tensor (an upper bound: every
# reference is still verified byte for byte on the host).
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}
FINGERPRINT_SIZE = 16
_SAMPLES, _SAMPLE_SIZE = 16, 4096


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """Where one tensor's data lies: in shard ``shard`` at ``offset``; ``addr`` is the same
    place in the concatenation of all shards (what REF records carry)."""

    shard: int
    offset: int
    size: int
    addr: int


@dataclass(frozen=True, slots=True)
class GgufLayout:
    """What the header says: where data starts and each tensor's (offset, size) there."""

    data_offset: int
    tensors: dict[bytes, tuple[int, int]]


def parse_gguf_layout(buf: mmap.mmap) -> GgufLayout:
    """Parse a GGUF v2/v3 header from a mapped file; raise ``GgufError`` if it is not one."""
    size = len(buf)
    header = GgufHeader(buf)
    alignment = 32
    try:
        for key, vtype, pos in header.metadata():
            if key == b"general.alignment" and vtype == 4:
                alignment = U32.unpack_from(buf, pos)[0]
    except struct.error as err:
        raise GgufError(f"truncated GGUF header: {err}") from None
    infos, end = header.tensor_infos()
    if alignment <= 0 or alignment & (alignment - 1):
        raise GgufError(f"bad GGUF alignment {alignment}")
    data_offset = -(-end // alignment) * alignment
    data_size = size - data_offset
    if data_size < 0:
        raise GgufError("GGUF header runs past the end of the file")
    ends = [*sorted(info.offset for info in infos), data_size]
    tensors: dict[bytes, tuple[int, int]] = {}
    for info in infos:
        offset = info.offset
        if info.ggml_type in GGML_TYPE_SIZES:
            block, type_size = GGML_TYPE_SIZES[info.ggml_type]
            nbytes = info.elements // block * type_size
        else:
            nbytes = ends[bisect.bisect_right(ends, offset)] - offset
        if offset + nbytes > data_size:
            raise GgufError(f"tensor {info.name!r} runs past the end of the file")
        tensors[info.name] = (offset, nbytes)
    return GgufLayout(data_offset, tensors)


class ModelWeights:
    """A model's GGUF file(s), open read-only: fingerprint, tensor index, byte access.

    One instance per model per node, shared by every encoder/decoder; ``close()`` at the end.
    The host compares against an mmap; the worker reads with pread, so a file that shrinks
    underneath gives a ``WeightReadError``, not a SIGBUS.
    """

    def __init__(self, paths: Sequence[Path], fds: list[int], sizes: list[int],
                 fingerprint: bytes, index: dict[bytes, TensorSpan]) -> None:
        self.paths = list(paths)
        self.sizes = sizes
        self.fingerprint = fingerprint
        self.index = index
        self._fds = fds
        self._bases = [sum(sizes[:i]) for i in range(len(sizes))]
        self._maps: list[mmap.mmap | None] = [None] * len(fds)
        self.total_size = sum(sizes)

    @classmethod
    def open(cls, paths: Path | str | Sequence[Path | str]) -> ModelWeights:
        """Open one GGUF file, or all shards of a split model in order."""
        shard_paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not shard_paths:
            raise GgufError("no model files given")
        fds: list[int] = []
        try:
            sizes: list[int] = []
            digest = hashlib.blake2b(digest_size=FINGERPRINT_SIZE, person=b"mesh-llm-wts-v1")
            digest.update(U64.pack(len(shard_paths)))
            index: dict[bytes, TensorSpan] = {}
            base = 0
            for shard, path in enumerate(shard_paths):
                fd = os.open(path, os.O_RDONLY)
                fds.append(fd)
                size = os.fstat(fd).st_size
                if size < 24:
                    raise GgufError(f"{path}: too small to be GGUF")
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
                    layout = parse_gguf_layout(buf)
                    digest.update(U64.pack(size))
                    digest.update(U64.pack(layout.data_offset))
                    digest.update(memoryview(buf)[:layout.data_offset])
                    for at in _sample_offsets(layout.data_offset, size):
                        digest.update(buf[at:at + _SAMPLE_SIZE])
                for name, (off, nbytes) in layout.tensors.items():
                    start = layout.data_offset + off
                    index.setdefault(name, TensorSpan(shard, start, nbytes, base + start))
                sizes.append(size)
                base += size
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(shard_paths, fds, sizes, digest.digest(), index)

    def __enter__(self) -> ModelWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = [None] * len(self._fds)
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def matches(self, span: TensorSpan, offset: int, data: bytes) -> bool:
        """Whether ``data`` equals the file bytes at ``offset`` inside ``span``: a copy out of
        the mmap and a memcmp (memoryview == memoryview compares item by item, 70x slower)."""
        if not self._fds:
            return False  # closed: the encoder then sends the bytes themselves
        m = self._maps[span.shard]
        if m is None:
            m = self._maps[span.shard] = mmap.mmap(self._fds[span.shard], 0,
                                                   access=mmap.ACCESS_READ)
        at = span.offset + offset
        return m[at:at + len(data)] == data

    def read(self, addr: int, length: int) -> bytes:
        """``length`` bytes at ``addr`` of the shard concatenation; never past a shard."""
        if not self._fds:
            raise WeightReadError("model files are closed")
        shard = bisect.bisect_right(self._bases, addr) - 1
        local = addr - self._bases[shard]
        if local + length > self.sizes[shard]:
            raise WeightReadError(f"reference {addr}+{length} is outside the model files")
        try:
            data = os.pread(self._fds[shard], length, local)
        except OSError as err:
            raise WeightReadError(f"cannot read {self.paths[shard]}: {err}") from None
        if len(data) != length:
            raise WeightReadError(f"{self.paths[shard]} is shorter than expected")
        return data


def _sample_offsets(data_offset: int, size: int) -> list[int]:
    span = size - data_offset - _SAMPLE_SIZE
    if span <= 0:
        return [data_offset]
    return [data_offset + span * k // (_SAMPLES - 1) for k in range(_SAMPLES)]


def fingerprint(paths: Path | str | Sequence[Path | str]) -> str:
    """The gossip value for a model: hex of ``ModelWeights.fingerprint``."""
    with ModelWeights.open(paths) as weights:
        return weights.fingerprint.hex()
