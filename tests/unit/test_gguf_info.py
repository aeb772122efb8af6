"""Our GGUF header reader against the `gguf` package's, on generated and real files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gguf
import pytest

from mesh_llm.errors import UserError
from mesh_llm.models.draft import find_draft, vocabulary
from mesh_llm.models.gguf_header import GgufError
from mesh_llm.models.gguf_info import block_count, read_metadata
from mesh_llm.models.hubref import HubRef, parse_hub_ref, pick_quant
from mesh_llm.models.modelfiles import check_model_files
from mesh_llm.models.resolve import resolve_model
from mesh_llm.models.split import (
    SplitName,
    is_complete_set,
    model_stem,
    parse_split_name,
    set_names,
)


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


# --- split GGUF sets -------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelgen import tiny_gguf  # noqa: E402


def test_split_names() -> None:
    s = parse_split_name("qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf")
    assert s == SplitName("qwen2.5-7b-instruct-q4_k_m", 2, 2)
    assert parse_split_name("m-00003-of-00002.gguf") is None
    assert parse_split_name("m-00000-of-00002.gguf") is None
    assert parse_split_name("m.gguf") is None
    assert set_names("a-00002-of-00003.gguf") == [
        "a-00001-of-00003.gguf", "a-00002-of-00003.gguf", "a-00003-of-00003.gguf"]
    assert set_names("m.gguf") == ["m.gguf"]
    assert model_stem("a-00002-of-00003.gguf") == "a" and model_stem("m.gguf") == "m"
    assert is_complete_set(["a-00001-of-00002.gguf", "a-00002-of-00002.gguf"])
    assert not is_complete_set(["a-00001-of-00002.gguf"])
    assert not is_complete_set(["a-00002-of-00002.gguf", "a-00001-of-00002.gguf"])
    assert is_complete_set(["m.gguf"]) and not is_complete_set([])


def test_hub_references() -> None:
    assert parse_hub_ref("hf://org/repo/sub/m-00002-of-00003.gguf") == HubRef(
        "org/repo", "main", "sub/m-00002-of-00003.gguf")
    assert parse_hub_ref("https://huggingface.co/Qwen/Qwen2.5-7B-Instruct-GGUF/resolve/"
                         "main/qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf?download=true") \
        == HubRef("Qwen/Qwen2.5-7B-Instruct-GGUF", "main",
                  "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf")
    assert parse_hub_ref("bartowski/Qwen_Qwen3-32B-GGUF:Q4_K_M") == HubRef(
        "bartowski/Qwen_Qwen3-32B-GGUF", "main", None, "Q4_K_M")
    for local in ("Qwen2.5-3B", "models/m.gguf", "./m.gguf", "/abs/m.gguf"):
        assert parse_hub_ref(local) is None


def test_picking_a_quant_from_a_file_list() -> None:
    names = ["README.md", "m-Q4_1.gguf", "m-Q4_K_M-00001-of-00002.gguf",
             "m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M_XL.gguf", "mmproj-m-Q4_K_M.gguf",
             "Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf",
             "m-Q6_K-00001-of-00002.gguf"]
    assert pick_quant(names, "q4_k_m") == ["m-Q4_K_M-00001-of-00002.gguf",
                                           "m-Q4_K_M-00002-of-00002.gguf"]
    assert pick_quant(names, "Q4_1") == ["m-Q4_1.gguf"]
    assert pick_quant(names, "Q8_0") == ["Q8_0/m-Q8_0-00001-of-00002.gguf",
                                         "Q8_0/m-Q8_0-00002-of-00002.gguf"]
    assert pick_quant(names, "Q6_K") is None  # part 2 is missing
    assert pick_quant(names, "Q5_K_M") is None


def test_any_part_names_the_whole_checked_set(tmp_path: Path) -> None:
    parts = tiny_gguf(tmp_path / "m.gguf", tensors=6, max_tensors=2)
    assert [p.name for p in parts] == set_names("m-00001-of-00003.gguf")
    for part in parts:
        files = check_model_files(part)
        assert files.paths == tuple(parts) and files.name == "m"
        assert files.size_bytes == sum(p.stat().st_size for p in parts)
    single = tiny_gguf(tmp_path / "one.gguf", tensors=6)[0]
    assert check_model_files(single).paths == (single,)


def one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as err:
        check_model_files(path)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_split_sets_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    parts = tiny_gguf(good / "m.gguf", tensors=6, max_tensors=2)

    def copy_set(name: str) -> list[Path]:
        folder = tmp_path / name
        folder.mkdir()
        for p in parts:
            shutil.copy(p, folder / p.name)
        return [folder / p.name for p in parts]

    missing = copy_set("missing")
    missing[2].unlink()
    assert "part 3 of 3 is missing" in one_line_error(missing[0])
    assert str(missing[2]) in one_line_error(missing[1])

    swapped = copy_set("swapped")  # part 2 and 3 under each other's names
    swapped[1].rename(tmp_path / "tmp.gguf")
    swapped[2].rename(swapped[1])
    (tmp_path / "tmp.gguf").rename(swapped[2])
    assert "belongs to another model" in one_line_error(swapped[0])

    # part 2 of another model's set: same name, same count, but other tensors
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = tiny_gguf(other_dir / "m.gguf", tensors=9, max_tensors=3, seed=1)
    foreign = copy_set("foreign")
    shutil.copy(other[1], foreign[1])
    assert "another model" in one_line_error(foreign[0])

    truncated = copy_set("truncated")
    data = truncated[2].read_bytes()
    truncated[2].write_bytes(data[: len(data) - 100])
    text = one_line_error(truncated[0])
    assert str(truncated[2]) in text and "damaged" in text

    renamed = tmp_path / "renamed.gguf"  # a part without its split name
    shutil.copy(parts[0], renamed)
    assert "NAME-0000K-of-0000N.gguf" in one_line_error(renamed)


def test_a_draft_beside_a_split_model_is_found_by_its_whole_set(tmp_path: Path) -> None:
    """The model's own parts are never its draft; a split draft is its part 1, sized by all
    its parts; a smaller file with another vocabulary is not a draft."""
    parts = tiny_gguf(tmp_path / "main.gguf", tensors=24, max_tensors=8)
    draft = tiny_gguf(tmp_path / "small.gguf", tensors=2, max_tensors=1, seed=2)
    tiny_gguf(tmp_path / "alien.gguf", tensors=3, tokens=("x", "yy", "zzz"))
    model = resolve_model(str(parts[1]))
    assert model.paths == tuple(parts) and model.path == parts[0]
    assert model.size_bytes == sum(p.stat().st_size for p in parts)
    assert find_draft(model, None, no_draft=False) == draft[0]
    assert find_draft(model, str(draft[1]), no_draft=False) == draft[0]
    for p in draft:
        p.unlink()
    assert find_draft(model, None, no_draft=False) is None
