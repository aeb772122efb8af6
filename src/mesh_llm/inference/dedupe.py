"""Weight dedupe for the RPC tunnel: send references to model bytes the worker already has.

Why: loading a split model makes llama-server upload every weight the worker holds with
SET_TENSOR, and those bytes are exactly ranges of the GGUF file. When both tunnel ends hold
the same file (``models.weights.ModelWeights``, same fingerprint), the host end replaces each
verified range by a 21-byte REF record and the worker end reads the range from its own copy,
checks its xxh3 and rebuilds the exact byte stream for its ggml-rpc-server. It sits next to
``rpc_wire``, whose parser tells it where each SET_TENSOR's data lies.

- ``DedupeEncoder`` (host): RPC client bytes in, record stream out.
- ``DedupeDecoder`` (worker): record stream in, the original RPC bytes out.

Record stream (little-endian): a 22-byte preamble ``b"MLWD" | version u8 | flags u8 |
fingerprint[16]`` (flags bit 0: REF records may follow, for the model with that
fingerprint), then records ``0x01 | len u32 | bytes`` (RAW) and ``0x02 | addr u64 | len u32 |
xxh3_64 u64`` (REF; addr is an offset into the concatenation of the model's shard files).

Negotiation is in-band: the tunnel always frames RPC tunnel streams with this codec. The host
builds ``DedupeEncoder(weights)`` only when the worker gossiped the same fingerprint, else
``DedupeEncoder(weights, refs=False)`` (RAW only, still counting the weight bytes it carries:
a worker without the model file gets the real bytes this way). The worker's decoder checks
the preamble against its own files before passing on one RPC byte; any
``WeightMismatchError`` means "this worker cannot take references": close the stream and
re-plan that worker without dedupe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import xxhash

from ..models.weights import FINGERPRINT_SIZE, ModelWeights, WeightReadError
from .rpc_wire import CommandCounts, DataPiece, RpcStreamParser, RpcWireError


class DedupeError(ValueError):
    """Base of the codec's own errors: the tunnel closes the stream on any of them."""


class DedupeFormatError(DedupeError):
    """The record stream is malformed (bad tag, bad length, truncated, bad preamble)."""


class WeightMismatchError(DedupeError):
    """The worker lacks the referenced bytes: no such file, or its bytes differ (xxh3)."""


MAGIC = b"MLWD"
CODEC_VERSION = 1
FLAG_REFS = 1
PREAMBLE = struct.Struct(f"<4sBB{FINGERPRINT_SIZE}s")
TAG_RAW, TAG_REF = 1, 2
RAW_HEADER = struct.Struct("<BI")
REF_RECORD = struct.Struct("<BQIQ")
MAX_RAW = 16 << 20
MAX_REF = 64 << 20
DEFAULT_MAX_REF = 4 << 20
_HEADER_SIZES = {TAG_RAW: RAW_HEADER.size, TAG_REF: REF_RECORD.size}


def preamble(weights_fingerprint: bytes | None) -> bytes:
    """The first bytes of every record stream: which model REFs will point into, if any."""
    if weights_fingerprint is None:
        return PREAMBLE.pack(MAGIC, CODEC_VERSION, 0, bytes(FINGERPRINT_SIZE))
    return PREAMBLE.pack(MAGIC, CODEC_VERSION, FLAG_REFS, weights_fingerprint)


@dataclass(slots=True)
class CodecStats:
    """Byte counts of one direction of one tunnel connection."""

    in_bytes: int = 0
    out_bytes: int = 0
    raw_bytes: int = 0  # payload bytes carried in RAW records
    ref_bytes: int = 0  # bytes carried as references
    ref_records: int = 0
    weight_bytes: int = 0  # SET_TENSOR data bytes of tensors in the index
    mismatch_bytes: int = 0  # of those, bytes that differed from the file (sent RAW)
    notes: list[str] = field(default_factory=list)
    # RPC commands by type, bytes each way and round trips (host → worker direction only;
    # the encoder's parser fills it in place, so reading it costs the data path nothing)
    commands: CommandCounts = field(default_factory=CommandCounts)


def _raw(out: list[bytes], data: bytes) -> None:
    n = len(data)
    if n <= MAX_RAW:
        out.append(RAW_HEADER.pack(TAG_RAW, n))
        out.append(data)
        return
    for at in range(0, n, MAX_RAW):
        part = data[at:at + MAX_RAW]
        out.append(RAW_HEADER.pack(TAG_RAW, len(part)))
        out.append(part)


class DedupeEncoder:
    """Host end: feed the bytes llama-server writes; send what ``feed`` returns.

    ``feed`` may return ``b""`` (send nothing): the header of a command whose payload has not
    started is held back until payload bytes arrive, which the client sends without waiting
    for a reply (ggml-rpc writes cmd, size and payload as three ``send()``s), so a command
    costs one tunnel send instead of three. With ``weights=None`` or ``refs=False`` every
    byte goes RAW; ``refs=False`` with weights still counts ``stats.weight_bytes``.
    A stream the RPC parser rejects is not an error here: the encoder notes why in
    ``stats.notes`` and carries the rest RAW, which is always correct.
    """

    def __init__(self, weights: ModelWeights | None, *, refs: bool = True,
                 max_ref: int = DEFAULT_MAX_REF) -> None:
        if not 0 < max_ref <= MAX_REF:
            raise ValueError("max_ref out of range")
        self._index = weights.index if weights is not None else {}  # to count weight bytes
        self._weights = weights if refs else None  # what references may point into
        self._refs = self._weights is not None
        self._max_ref = max_ref
        self._parser = RpcStreamParser(report_commands=False)
        self._passthrough = False
        self._held = b""
        self._preamble: bytes | None = preamble(
            self._weights.fingerprint if self._weights is not None else None)
        self._pend_addr = 0
        self._pend_len = 0
        self._hasher = xxhash.xxh3_64()
        self.stats = CodecStats(commands=self._parser.counts)

    def preamble(self) -> bytes:
        """The preamble, once (``feed`` sends it itself if this was never called)."""
        pre, self._preamble = self._preamble or b"", None
        self.stats.out_bytes += len(pre)
        return pre

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        if type(data) is not bytes:
            data = bytes(data)
        self.stats.in_bytes += len(data)
        out: list[bytes] = []
        if self._preamble is not None:
            out.append(self.preamble())
        if self._passthrough:
            self._emit_raw(out, data)
            return self._join(out)
        try:
            events = self._parser.feed(data)
        except RpcWireError as err:
            self.stats.notes.append(f"RPC parse failed, carrying the rest raw: {err}")
            self._passthrough = True
            self._emit_raw(out, data)
            return self._join(out)
        raw_from = 0
        index = self._index
        for ev in events:
            if type(ev) is not DataPiece:
                continue
            span = index.get(ev.st.name)
            if span is None:
                continue
            n = ev.end - ev.start
            rel = ev.st.offset + ev.pos
            self.stats.weight_bytes += n
            if not self._refs or rel + n > span.size:
                continue
            piece = data if n == len(data) else data[ev.start:ev.end]
            assert self._weights is not None
            if not self._weights.matches(span, rel, piece):
                self.stats.mismatch_bytes += n
                continue
            if ev.start > raw_from or self._held:
                self._emit_raw(out, data[raw_from:ev.start])
            self._add(span.addr + rel, piece, out)
            raw_from = ev.end
            if ev.pos + n == ev.st.size:
                self._flush(out)
        keep = self._parser.unsent_tail
        if keep > len(data) - raw_from:  # no command completed in this chunk: hold it all
            self._held += data
        else:
            end = len(data) - keep
            if end > raw_from:
                self._emit_raw(out, data if raw_from == 0 and end == len(data) else
                               data[raw_from:end])
            if keep:
                self._held = data[end:]
        return self._join(out)

    @property
    def more(self) -> bool:
        """The bytes so far do not end a command the client waits on: more follow at once,
        so what was returned may wait briefly to share a packet with them."""
        return not self._passthrough and not self._parser.awaits_reply

    def finish(self) -> bytes:
        """At client EOF: whatever is still held back (a command cut short), framed."""
        out: list[bytes] = []
        self._emit_raw(out, b"")
        return self._join(out)

    def _join(self, out: list[bytes]) -> bytes:
        if not out:
            return b""
        result = out[0] if len(out) == 1 else b"".join(out)
        self.stats.out_bytes += len(result)
        return result

    def _emit_raw(self, out: list[bytes], data: bytes) -> None:
        self._flush(out)
        if self._held:
            data, self._held = self._held + data, b""
        if data:
            self.stats.raw_bytes += len(data)
            _raw(out, data)

    def _add(self, addr: int, piece: bytes, out: list[bytes]) -> None:
        at, n = 0, len(piece)
        while at < n:
            if self._pend_len and (addr + at != self._pend_addr + self._pend_len
                                   or self._pend_len == self._max_ref):
                self._flush(out)
            if not self._pend_len:
                self._pend_addr = addr + at
            take = min(n - at, self._max_ref - self._pend_len)
            self._hasher.update(piece if take == n else piece[at:at + take])
            self._pend_len += take
            at += take

    def _flush(self, out: list[bytes]) -> None:
        if not self._pend_len:
            return
        out.append(REF_RECORD.pack(TAG_REF, self._pend_addr, self._pend_len,
                                   self._hasher.intdigest()))
        self.stats.ref_bytes += self._pend_len
        self.stats.ref_records += 1
        self._pend_len = 0
        self._hasher.reset()


_PRE, _HDR, _BODY = 0, 1, 2


class DedupeDecoder:
    """Worker end: feed the record stream; write what ``feed`` returns to ggml-rpc-server.

    ``weights`` are the model files this node holds; the preamble picks one by fingerprint.
    Raises only ``DedupeError`` subclasses (and is unusable afterwards). Call ``finish()``
    at end of stream to detect a stream cut mid-record.
    """

    def __init__(self, weights: ModelWeights | Iterable[ModelWeights] | None = None) -> None:
        if weights is None:
            weights = ()
        elif isinstance(weights, ModelWeights):
            weights = (weights,)
        self._by_fp = {w.fingerprint: w for w in weights}
        self._weights: ModelWeights | None = None
        self._refs = False
        self._state = _PRE
        self._buf = bytearray()
        self._left = 0
        self._failed: DedupeError | None = None
        self.stats = CodecStats()

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data if type(data) is bytes else bytes(data))
        except DedupeError as err:
            self._failed = err
            raise
        except struct.error as err:  # defensive: never leak anything else
            self._failed = DedupeFormatError(str(err))
            raise self._failed from None

    def finish(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._buf or self._left:
            raise DedupeFormatError("record stream ended mid-record")

    def _feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        n = len(data)
        self.stats.in_bytes += n
        i = 0
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                out.append(data if take == n else data[i:i + take])
                self._left -= take
                i += take
                continue
            if self._state == _PRE:
                need = PREAMBLE.size
            else:
                tag = self._buf[0] if self._buf else data[i]
                need = _HEADER_SIZES.get(tag, 0)
                if not need:
                    raise DedupeFormatError(f"unknown record tag {tag}")
            if self._buf or n - i < need:
                take = min(need - len(self._buf), n - i)
                self._buf += data[i:i + take]
                i += take
                if len(self._buf) < need:
                    break
                block, at = bytes(self._buf), 0
                self._buf = bytearray()
            else:
                block, at = data, i
                i += need
            if self._state == _PRE:
                self._preamble(block, at)
            else:
                self._record(block, at, out)
        result = out[0] if len(out) == 1 else b"".join(out)
        self.stats.out_bytes += len(result)
        return result

    def _preamble(self, block: bytes, at: int) -> None:
        magic, version, flags, fp = PREAMBLE.unpack_from(block, at)
        if magic != MAGIC or version != CODEC_VERSION or flags & ~FLAG_REFS:
            raise DedupeFormatError("not a weight-dedupe record stream (bad preamble)")
        if flags & FLAG_REFS:
            self._weights = self._by_fp.get(fp)
            if self._weights is None:
                raise WeightMismatchError(f"this node has no model file with fingerprint "
                                          f"{fp.hex()}")
            self._refs = True
        self._state = _HDR

    def _record(self, block: bytes, at: int, out: list[bytes]) -> None:
        if block[at] == TAG_RAW:
            _, length = RAW_HEADER.unpack_from(block, at)
            if not 0 < length <= MAX_RAW:
                raise DedupeFormatError(f"RAW record of {length} bytes")
            self._left = length
            self.stats.raw_bytes += length
            return
        _, addr, length, digest = REF_RECORD.unpack_from(block, at)
        if not self._refs or self._weights is None:
            raise DedupeFormatError("REF record in a stream that announced none")
        if not 0 < length <= MAX_REF:
            raise DedupeFormatError(f"REF record of {length} bytes")
        try:
            data = self._weights.read(addr, length)
        except WeightReadError as err:
            raise WeightMismatchError(str(err)) from None
        if xxhash.xxh3_64_intdigest(data) != digest:
            raise WeightMismatchError(f"model bytes at {addr}+{length} differ from the host's")
        out.append(data)
        self.stats.ref_bytes += length
        self.stats.ref_records += 1
