"""Download progress: a bar on a terminal, plain lines when stderr is a file or a pipe."""

from __future__ import annotations

import io

import pytest

from mesh_llm.models import progress
from mesh_llm.models.progress import Progress, human


def test_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line on every update
    out = io.StringIO()
    p = Progress("m-00001-of-00002.gguf", 4_000_000, 1_000_000, stream=out)
    p.update(1_000_000)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "m-00001-of-00002.gguf: downloading 4.0 MB, resuming at 1.0 MB"
    assert lines[1].startswith("m-00001-of-00002.gguf: 50% 2.0 MB of 4.0 MB, ")
    assert "/s, ETA " in lines[1]
    assert lines[-1].startswith("m-00001-of-00002.gguf: done, 2.0 MB in ")
    assert "\r" not in out.getvalue()


def test_a_bar_with_bytes_rate_and_eta_on_a_terminal() -> None:
    out = io.StringIO()
    p = Progress("m.gguf", 4_000_000, stream=out, tty=True)
    p.update(2_000_000)
    p.close()
    text = out.getvalue()
    assert "\r" in text and "m.gguf" in text and "2.00M/4.00M" in text
    assert "B/s" in text and "<" in text  # rate, and the ETA tqdm shows as elapsed<left


def test_human_sizes() -> None:
    assert [human(n) for n in (999, 1000, 19_851_336_384)] == ["999 B", "1.0 kB", "19.9 GB"]
