"""Speculative decoding: an F16 SmolLM2 drafted by the Q4_1 file of the same model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from modelgen import dequantize_to_f16, smollm2_path


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    main = dequantize_to_f16(smollm2_path(), folder / "smollm2-f16.gguf")
    draft = shutil.copy(smollm2_path(), folder / "smollm2-q4_1.gguf")
    return main, Path(draft)


def timings(node) -> dict:  # type: ignore[no-untyped-def]
    api = openai.OpenAI(base_url=node.api + "/v1", api_key="unused", max_retries=0, timeout=300)
    reply = api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Count from 1 to 20."}],
        temperature=0, max_tokens=24)
    return reply.model_extra["timings"]


def test_a_draft_beside_the_model_is_found_and_accepted(make_node, model_pair) -> None:
    main, _ = model_pair
    node = make_node("n", "--model", str(main), "--draft-max", "6").wait_ready()
    assert node.status()["draft"] == "smollm2-q4_1"
    t = timings(node)
    assert t["draft_n"] > 0 and t["draft_n_accepted"] > 0
    assert "draft model found beside the model" in node.output()


def test_no_draft_turns_speculation_off(make_node, model_pair) -> None:
    main, _ = model_pair
    node = make_node("n", "--model", str(main), "--no-draft").wait_ready()
    assert node.status()["draft"] is None
    assert "draft_n" not in timings(node)


def test_a_draft_with_another_vocabulary_is_refused(tmp_path: Path, model_pair) -> None:
    main, _ = model_pair
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    result = subprocess.run(
        [sys.executable, "-m", "mesh_llm", "--home", str(tmp_path / "h"), "--model", str(main),
         "--draft", str(other)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("mesh-llm: --draft")
