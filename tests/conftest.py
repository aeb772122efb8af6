"""Shared fixtures: real nodes on 127.0.0.1, cleaned up even when a test fails."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Tests never reach the real model hub, and never touch the user's Hugging Face cache: every
# node a test starts inherits a hub at a closed loopback port (tests that need a hub run
# their own, tests/hub.py) and a cache of the session's own.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mesh-llm-test-hf-")

from nodes import NodeProcess

TESTS = Path(__file__).parent
SLOW = (TESTS / "integration", TESTS / "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that starts real llama.cpp processes or a browser (all of
    tests/integration and tests/browser: seconds each), so that the dev loop can skip them
    with `-m "not slow"`."""
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    """Factory for NodeProcess objects; every node started is stopped at teardown."""
    started: list[NodeProcess] = []

    def make(name: str = "node", *args: str, console: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path / name, *args, console=console)
        started.append(node)
        return node.start()

    yield make
    for node in started:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
