"""The real Claude Code and Codex CLIs (pinned, installed by `scripts/setup --test` into
.agents/) driven by `mesh-llm claude|codex` against a node serving SmolLM2: each exits 0
with the model's answer, and the node counted the request on the agent's route. Node and
agent run together in a network namespace with only loopback, HOME in the test's own
directory, telemetry and update checks off. SmolLM2's answers are poor: these tests check
the protocol, not the quality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTS_BIN = Path(os.environ.get("MESH_LLM_AGENTS_BIN", ROOT / ".agents/node_modules/.bin"))
HELPER = ROOT / "tests" / "netns_agent.py"
ROUTE = {"claude": "/v1/messages", "codex": "/v1/responses"}


def in_netns(agent: str, join: bool, work: Path) -> dict:
    if not (AGENTS_BIN / agent).exists():
        message = f"{agent} is not installed in {AGENTS_BIN}: run scripts/setup --test"
        if os.environ.get("CI"):
            pytest.fail(message)  # setup installs it in CI: missing there is a defect
        pytest.skip(message)
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed for the namespace"
    ns = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    run = subprocess.run([*ns, sys.executable, str(HELPER), agent,
                          "join" if join else "port", str(work), str(AGENTS_BIN)],
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("agent", ["claude", "codex"])
@pytest.mark.parametrize("join", [False, True], ids=["port", "join"])
def test_a_real_agent_answers_through_the_mesh(agent: str, join: bool, tmp_path: Path) -> None:
    result = in_netns(agent, join, tmp_path)
    assert result["interfaces"] == ["lo"], "the namespace must have loopback only"
    assert result["rc"] == 0, result["stderr"]
    assert result["stderr"].startswith(f"mesh-llm: {agent} → http://127.0.0.1:")
    assert result["stdout"].strip(), "the agent printed no answer"
    assert result["served"] >= 1, "the host's llama-server answered nothing"
    if join:
        assert result["peers_after"] == [], "the launcher's lite client outlived the agent"
    else:
        counts = result["api_requests"]["SmolLM2-135M-Instruct"]
        assert counts.get(ROUTE[agent], 0) >= 1, counts
