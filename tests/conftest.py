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
