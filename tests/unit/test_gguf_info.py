"""Our GGUF header reader against the `gguf` package's, on generated and real files."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from mesh_llm.errors import UserError
from mesh_llm.models.draft import vocabulary
from mesh_llm.models.gguf_info import GgufError, block_count, read_metadata
from mesh_llm.models.resolve import resolve_model


def write(path: Path, tokens: list[str], blocks: int = 7) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(blocks)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_array("some.floats", [1.5, 2.5])
    writer.add_string("general.name", "t")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_values_match_the_gguf_package(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", ["a", "bb", "\u00e9\u00e9"] * 10)
    reader = gguf.GGUFReader(path)
    meta = read_metadata(path, ["llama.block_count", "tokenizer.ggml.tokens",
                                "general.name", "some.floats", "absent.key"])
    assert meta["llama.block_count"] == int(reader.get_field("llama.block_count").contents())
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert meta["tokenizer.ggml.tokens"] == [t.encode() for t in tokens]
    assert meta["general.name"] == b"t"
    assert meta["some.floats"] is None and "absent.key" not in meta
    assert block_count(path) == 7


def test_the_real_model() -> None:
    path = resolve_model("SmolLM2-135M-Instruct").path
    reader = gguf.GGUFReader(path)
    assert block_count(path) == int(reader.get_field("llama.block_count").contents()) == 30
    kind, size, _ = vocabulary(path)
    assert kind == b"gpt2" and size == len(reader.get_field("tokenizer.ggml.tokens").contents())


def test_vocabulary_tells_token_lists_apart(tmp_path: Path) -> None:
    one = write(tmp_path / "1.gguf", ["a", "bb"])
    same = write(tmp_path / "2.gguf", ["a", "bb"], blocks=3)
    other = write(tmp_path / "3.gguf", ["ab", "b"])
    assert vocabulary(one) == vocabulary(same) != vocabulary(other)


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    whole = write(tmp_path / "m.gguf", ["a"] * 100).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(GgufError):
        read_metadata(cut, ["tokenizer.ggml.tokens", "nothing"])
    assert block_count(cut) == 7  # its key comes before the cut
    cut.write_bytes(whole[:40])
    with pytest.raises(UserError):
        block_count(cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert vocabulary(empty) is None
    with pytest.raises(UserError):
        block_count(empty)
    text = tmp_path / "t.gguf"
    text.write_bytes(b"GGUF but not really" * 4)
    assert vocabulary(text) is None
    with pytest.raises(UserError):
        block_count(text)
