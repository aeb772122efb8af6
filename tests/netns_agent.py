"""Run inside a network namespace with only loopback (tests/integration/test_agents_real.py
starts it with `unshare`): a node serving SmolLM2, then `mesh-llm AGENT` with a real
coding agent; prints one JSON line with what happened. Nothing here can reach any address
but 127.0.0.1: the namespace has no other interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from nodes import NodeProcess

PROMPTS = {"claude": ["-p", "Reply with one word.", "--max-turns", "1", "--tools", ""],
           "codex": ["exec", "--skip-git-repo-check", "Reply with one word."]}
QUIET = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_UPDATE_NOTIFIER": "1",
         "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64"}  # a bound, should the grammar not apply


def served_requests(home: Path) -> int:
    """Requests the host's llama-server finished, from its own log (one timing line each)."""
    path = home / "logs" / "llama-server.log"
    return path.read_text(errors="replace").count("prompt eval time") if path.exists() else 0


def main(agent: str, join: bool, work: Path, agents_bin: str) -> dict[str, object]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    interfaces = sorted(line.split(":")[1].strip().split("@")[0] for line in links)
    # Codex names no max_output_tokens: llama-server's own default caps its answers. Claude
    # Code asks for 32k tokens, sampled, and fails on an answer cut at its limit: a grammar
    # (llama-server's default for requests that name none) makes SmolLM2 end after a word.
    args = ["--llama-arg=--n-predict", "--llama-arg=64"]
    if agent == "claude":
        grammar = work / "one-word.gbnf"
        grammar.write_text('root ::= [A-Z] [a-z]{1,10} "."\n')
        args += ["--llama-arg=--grammar-file", f"--llama-arg={grammar}"]
    node = NodeProcess(work / "node", *args).start()
    try:
        node.wait_ready()
        before = served_requests(node.home)
        where = ["--join", node.status()["token"]] if join else ["--port", str(node.api_port)]
        env = {**os.environ, **QUIET, "HOME": str(work / "home"),
               "PATH": f"{agents_bin}:{os.environ['PATH']}"}
        (work / "home").mkdir()
        run = subprocess.run([sys.executable, "-m", "mesh_llm", agent, *where, "--",
                              *PROMPTS[agent]], env=env, cwd=work, capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL)
        status = node.status()
        peers_after = status["peers"]
        if join:
            node.wait_for(lambda: node.status()["peers"] == [], "the lite client's goodbye",
                          20)
            peers_after = node.status()["peers"]
        return {"rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr[-4000:],
                "interfaces": interfaces, "api_requests": status["api_requests"],
                "served": served_requests(node.home) - before, "peers_after": peers_after}
    finally:
        node.stop()


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2] == "join", Path(sys.argv[3]), sys.argv[4])
    print(json.dumps(result))
