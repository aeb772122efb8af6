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
