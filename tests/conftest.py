"""Shared fixtures: real nodes on 127.0.0.1, cleaned up even when a test fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
