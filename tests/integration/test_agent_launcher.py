"""`mesh-llm claude|codex` end to end with stand-in agents: small scripts under the agents'
command names that read only what the launcher set (Claude Code's variables, Codex's `-c`
overrides) and make one real request with the official SDKs. A real node, real llama.cpp;
the lite client of `--join` must be gone when the agent exits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nodes import http_json

CLAUDE = """
import os, sys, anthropic
client = anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"],
                             api_key=os.environ["ANTHROPIC_API_KEY"], max_retries=0)
reply = client.messages.create(model=os.environ["ANTHROPIC_MODEL"], max_tokens=8,
                               messages=[{"role": "user", "content": sys.argv[-1]}])
print("ANSWER", reply.content[0].text)
open(os.environ["STANDIN_SEEN"], "w").write(os.environ["ANTHROPIC_BASE_URL"])
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
"""

CODEX = """
import os, sys, tomllib, openai
args = sys.argv[1:]
config = tomllib.loads("\\n".join(args[i + 1] for i, a in enumerate(args) if a == "-c"))
provider = config["model_providers"][config["model_provider"]]
assert provider["wire_api"] == "responses"
key = os.environ[provider["env_key"]] if "env_key" in provider else "none"
client = openai.OpenAI(base_url=provider["base_url"], api_key=key, max_retries=0)
reply = client.responses.create(model=config["model"], input=args[-1], max_output_tokens=8)
print("ANSWER", reply.output_text, "ARGS", args[-2:])
open(os.environ["STANDIN_SEEN"], "w").write(provider["base_url"])
"""


@pytest.fixture
def standins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in (("claude", CLAUDE), ("codex", CODEX)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{code}")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STANDIN_SEEN": str(tmp_path / "seen"), "HOME": str(tmp_path / "home")}


def launch(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", *argv], env=env,
                          capture_output=True, text=True, timeout=180)


def test_launchers_point_agents_at_a_running_node(make_node, standins, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = make_node("host").wait_ready()
    port = str(node.api_port)
    run = launch({**standins, "STANDIN_EXIT": "3"}, "claude", "--port", port, "--", "-p",
                 "Say hi.")
    assert run.returncode == 3, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mesh-llm: claude → http://127.0.0.1:{port}, model SmolLM2")
    assert "ANTHROPIC_BASE_URL" in line and "ANSWER" in run.stdout
    run = launch(standins, "codex", "--port", port, "--", "exec", "Say hi.")
    assert run.returncode == 0 and "ANSWER" in run.stdout, run.stderr
    assert "['exec', 'Say hi.']" in run.stdout
    counts = node.status()["api_requests"]["SmolLM2-135M-Instruct"]
    assert counts["/v1/messages"] == 1 and counts["/v1/responses"] == 1
    assert not (tmp_path / "home").exists(), "the launcher wrote in HOME"


def test_launcher_with_join_runs_a_lite_client_for_the_agents_lifetime(
        make_node, standins) -> None:  # type: ignore[no-untyped-def]
    host = make_node("host").wait_ready()
    token = host.status()["token"]
    run = launch(standins, "claude", "--join", token, "--", "-p", "Say hi.")
    assert run.returncode == 0 and "ANSWER" in run.stdout, run.stderr
    url = Path(standins["STANDIN_SEEN"]).read_text()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the lite client is gone with the agent
    host.wait_for(lambda: host.status()["peers"] == [], "the lite client's goodbye", 15)
    assert http_json(host.api + "/health")[0] == 200


def test_no_node_is_one_line(standins) -> None:  # type: ignore[no-untyped-def]
    run = launch(standins, "claude", "--port", "9", "--", "-p", "hi")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(
        "mesh-llm: no mesh-llm node answers at http://127.0.0.1:9")
    assert "Traceback" not in run.stderr
