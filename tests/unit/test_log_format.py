"""`--log-format json`: one JSON object per log line, with a stable event and its fields."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_llm import logutil
from mesh_llm.cli.logs import JsonLineFormatter
from mesh_llm.logutil import RateLimitedLog, set_log_node
from mesh_llm.models import progress

KEYS = {"time", "level", "node", "event", "fields", "logger", "message"}
NODE = "ab" * 32


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger that writes JSON lines into a string (`written` parses them)."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("mesh_llm.test_log_format")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    logger.handlers[:] = []
    set_log_node("")


def written(logger: logging.Logger) -> list[dict]:
    text = logger.handlers[0].stream.getvalue()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_names_its_template_as_event_and_its_args_as_fields(logger: logging.Logger) -> None:
    logger.info("peer %s %s", "0123456789ab", "joined")
    set_log_node(NODE)
    logger.warning("loading %s (%.1f GB, %d parts)", Path("/m/x.gguf"), 1.25, 2)
    first, second = written(logger)
    assert set(first) == KEYS and first["node"] is None  # before the node has its identity
    assert first["event"] == "peer %s %s" and first["fields"] == ["0123456789ab", "joined"]
    assert first["message"] == "peer 0123456789ab joined" and first["level"] == "info"
    assert first["logger"] == "mesh_llm.test_log_format"
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second["node"] == NODE and second["level"] == "warning"
    assert second["fields"] == ["/m/x.gguf", 1.25, 2]  # a Path as its text, numbers as numbers
    assert second["message"] == "loading /m/x.gguf (1.2 GB, 2 parts)"


def test_a_multi_line_message_is_still_one_line(logger: logging.Logger) -> None:
    logger.info("worker invite (give it with --join):\n%s", "TOKEN")
    text = logger.handlers[0].stream.getvalue()  # type: ignore[attr-defined]
    assert text.count("\n") == 1
    assert json.loads(text)["message"].endswith(":\nTOKEN")


def test_values_json_cannot_carry_become_text(logger: logging.Logger) -> None:
    logger.info("%s %s %s %s %s", b"\xff", float("nan"), {"k": (1, None)}, {2}, ValueError("v"))
    (line,) = written(logger)
    assert line["fields"] == ["b'\\xff'", "nan", {"k": [1, None]}, [2], "v"]


def test_an_exception_is_its_traceback_in_the_line(logger: logging.Logger) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("relay failed for %s", "peer")
    (line,) = written(logger)
    assert line["level"] == "error" and line["event"] == "relay failed for %s"
    assert "Traceback" in line["exception"] and "RuntimeError: boom" in line["exception"]


def test_without_tracebacks_an_exception_is_only_the_error() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling",
                               (), (ValueError, ValueError("bad"), None))
    line = json.loads(JsonLineFormatter(tracebacks=False).format(record))
    assert line["exception"] == "ValueError('bad')" and line["fields"] == []


def test_a_rate_limited_line_keeps_its_event_when_it_counts_repeats(logger: logging.Logger) -> None:
    now = [0.0]
    limited = RateLimitedLog(logger, window_s=60, clock=lambda: now[0])
    limited.warning("k", "refused by %s: %s", "1.2.3.4:5", "bad secret")
    limited.warning("k", "refused by %s: %s", "1.2.3.4:5", "bad secret")
    now[0] = 61.0
    limited.warning("k", "refused by %s: %s", "1.2.3.4:5", "bad secret")
    first, again = written(logger)
    assert first["event"] == again["event"] == "refused by %s: %s"
    assert again["fields"] == ["1.2.3.4:5", "bad secret", 1, 60.0]
    assert again["message"].endswith("(1 more like this in the last 60 s)")


def test_download_progress_lines_become_log_records(logger: logging.Logger) -> None:
    progress.log_lines(logger)
    try:
        bar = progress.Progress("m.gguf", 2_000_000)
        bar.update(2_000_000)
        bar.close()
    finally:
        progress.log_lines(None)
    first, *_, last = written(logger)
    assert first["event"] == "%s: downloading %s%s" and first["fields"] == ["m.gguf", "2.0 MB", ""]
    assert last["message"].startswith("m.gguf: done, 2.0 MB in ")
    assert logutil.log_node() == ""


def run_node_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_refused_start_is_a_json_line_too(tmp_path: Path) -> None:
    proc = run_node_cli("--log-format", "json", "--client", "--model", "m", home=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = [json.loads(text) for text in proc.stderr.splitlines()]
    assert line["level"] == "error" and line["event"] == "mesh-llm: %s"
    assert line["fields"] == ["--client needs --join TOKEN: a lite client joins an existing mesh"]


def test_the_default_stays_human_readable(tmp_path: Path) -> None:
    proc = run_node_cli("--client", home=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "mesh-llm: --client needs --join TOKEN: a lite client joins an " \
                          "existing mesh\n"


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    proc = run_node_cli("--log-format", "xml", home=tmp_path)
    assert proc.returncode == 2 and "--log-format" in proc.stderr and "Traceback" not in proc.stderr
