"""Test models made from the real SmolLM2 file with the `gguf` package (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

from mesh_llm.models.resolve import resolve_model

SKIP_KEYS = ("GGUF.", "general.file_type")


def smollm2_path() -> Path:
    return resolve_model("SmolLM2-135M-Instruct").path


def dequantize_to_f16(src: Path, dst: Path) -> Path:
    """Same model, same vocabulary, F16 weights: a main model the Q4_1 file can draft for."""
    reader = GGUFReader(str(src), "r")
    arch = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith(SKIP_KEYS) or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(1)  # mostly F16
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))  # numpy order
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = np.asarray(tensor.data).reshape(shape)
        else:
            data = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
            data = data.astype(np.float16)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def split_gguf(src: Path, dst: Path, max_tensors: int) -> list[Path]:
    """`src` rewritten as a split set `DST-0000K-of-0000N.gguf` beside `dst` (same bytes per
    tensor, same metadata in part 1), as llama.cpp's gguf-split and the Qwen repos write it."""
    reader = GGUFReader(str(src), "r")
    arch = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(str(dst), arch, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_shape=tensor.data.shape,
                          raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parts = sorted(dst.parent.glob(f"{dst.stem}-*-of-*.gguf"))
    assert len(parts) > 1, "not split: too few tensors for max_tensors"
    return parts


def tiny_gguf(path: Path, tensors: int = 6, max_tensors: int = 0, seed: int = 0,
              tokens: tuple[str, ...] = ("a", "bb", "ccc")) -> list[Path]:
    """A small GGUF (F32 tensors) in one file or split every `max_tensors` tensors."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama", split_max_tensors=max_tensors)
    writer.add_block_count(tensors)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(list(tokens) * 10)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.w", rng.standard_normal((8, 32)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if not max_tensors:
        return [path]
    return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))
