"""The coding-agent launchers' pure parts: which model, and what each agent is given."""

from __future__ import annotations

import json
import tomllib

import pytest

from mesh_llm.cli.agent_env import AGENTS, Launch, choose_model, launch_for, summary
from mesh_llm.cli.agents import _split_argv, agent_command
from mesh_llm.errors import UserError

BASE = "http://127.0.0.1:9337"


def listing(*names: str, default: str | None = None) -> dict:
    return {"object": "list", "data": [
        {"id": n, "meta": {"default": n == default, "ready": True}} for n in names]}


def test_model_choice() -> None:
    assert choose_model(listing("A", "Qwen2.5-Coder-7B", default="A"), None) == \
        "Qwen2.5-Coder-7B"
    assert choose_model(listing("A", "B", default="B"), None) == "B"
    assert choose_model(listing("A", "B"), None) == "A"
    assert choose_model(listing("A"), "whatever-I-typed") == "whatever-I-typed"
    for bad in ({}, {"data": "x"}, {"data": [{"id": 3}, "y"]}):
        with pytest.raises(ValueError, match="no model"):
            choose_model(bad, None)


def test_claude_gets_anthropics_variables_and_no_auth_token() -> None:
    launch = launch_for("claude", BASE, "M", None)
    env = launch.environ({"ANTHROPIC_AUTH_TOKEN": "theirs", "PATH": "/bin"})
    assert env["ANTHROPIC_BASE_URL"] == BASE and env["ANTHROPIC_API_KEY"] == "mesh-llm"
    assert env["PATH"] == "/bin" and "ANTHROPIC_AUTH_TOKEN" not in env
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
                 "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                 "ANTHROPIC_DEFAULT_OPUS_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[name] == "M"
    assert launch.args == ()
    assert launch_for("claude", BASE, "M", "k").env["ANTHROPIC_API_KEY"] == "k"


def overrides(launch: Launch) -> dict:
    """Codex's `-c key=value` pairs read back as TOML, as Codex reads them."""
    pairs = launch.args[1::2]
    assert launch.args[0::2] == ("-c",) * len(pairs)
    return tomllib.loads("\n".join(pairs))


def test_codex_gets_a_responses_provider_by_config_overrides() -> None:
    tricky = 'Mo"del\\ü'
    config = overrides(launch_for("codex", BASE, tricky, None))
    assert config["model_provider"] == "mesh-llm" and config["model"] == tricky
    assert config["model_providers"]["mesh-llm"] == {
        "name": "mesh-llm", "base_url": BASE + "/v1", "wire_api": "responses"}
    keyed = launch_for("codex", BASE, "M", "k3y")
    assert overrides(keyed)["model_providers"]["mesh-llm"]["env_key"] == "MESH_LLM_API_KEY"
    assert keyed.env == {"MESH_LLM_API_KEY": "k3y"}


def test_opencode_gets_inline_config_and_goose_openai_variables() -> None:
    env = launch_for("opencode", BASE, "M", None).env
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"] or "")
    assert config["model"] == "mesh-llm/M"
    provider = config["provider"]["mesh-llm"]
    assert provider["options"]["baseURL"] == BASE + "/v1" and "M" in provider["models"]
    goose = launch_for("goose", BASE, "M", "k").env
    assert goose == {"GOOSE_PROVIDER": "openai", "GOOSE_MODEL": "M", "OPENAI_HOST": BASE,
                     "OPENAI_BASE_PATH": "v1/chat/completions", "OPENAI_API_KEY": "k"}


def test_summary_is_one_line_naming_what_was_set() -> None:
    for agent in AGENTS:
        launch = launch_for(agent, BASE, "M", None)
        line = summary(agent, BASE, "M", launch, ["-p", "hi"])
        assert "\n" not in line and BASE in line and "model M" in line
        assert all(name in line for name in launch.shown)


def test_argv_split_and_a_missing_agent_is_one_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert _split_argv(["--model", "M", "--", "-p", "--", "x"]) == (
        ["--model", "M"], ["-p", "--", "x"])
    assert _split_argv(["--port", "1"]) == (["--port", "1"], [])
    monkeypatch.setenv("PATH", "/nonexistent")
    for agent, package in (("claude", "@anthropic-ai/claude-code"), ("codex", "@openai/codex"),
                           ("opencode", "opencode-ai"), ("goose", "goose")):
        with pytest.raises(UserError, match=f"{agent} is not installed: .*{package}"):
            agent_command(agent, ["--", "-p", "hi"])


def test_write_merges_into_the_agents_own_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import tomllib

    from mesh_llm.cli.agent_write import write_config

    settings = tmp_path / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{"theme": "dark", "env": {"MINE": "1"}}')
    write_config("claude", tmp_path, launch_for("claude", BASE, "M", None), "M")
    merged = json.loads(settings.read_text())
    assert merged["theme"] == "dark" and merged["env"]["MINE"] == "1"
    assert merged["env"]["ANTHROPIC_BASE_URL"] == BASE
    assert "ANTHROPIC_AUTH_TOKEN" not in merged["env"]

    toml = tmp_path / ".codex" / "config.toml"
    toml.parent.mkdir()
    toml.write_text('model = "gpt-5"\n[tui]\nnotifications = true')
    write_config("codex", tmp_path, launch_for("codex", BASE, "M", None), "M")
    config = tomllib.loads(toml.read_text())
    assert config["model"] == "gpt-5" and config["tui"]["notifications"] is True
    assert config["profiles"]["mesh-llm"] == {"model_provider": "mesh-llm", "model": "M"}
    assert config["model_providers"]["mesh-llm"]["wire_api"] == "responses"
    with pytest.raises(UserError, match="already has a mesh-llm table"):
        write_config("codex", tmp_path, launch_for("codex", BASE, "M", None), "M")

    write_config("opencode", tmp_path, launch_for("opencode", BASE, "M", None), "M")
    opencode = json.loads((tmp_path / ".config/opencode/opencode.json").read_text())
    assert opencode["model"] == "mesh-llm/M" and "mesh-llm" in opencode["provider"]
    with pytest.raises(UserError, match="not supported"):
        write_config("goose", tmp_path, launch_for("goose", BASE, "M", None), "M")
    with pytest.raises(UserError, match="not with --join"):
        agent_command("claude", ["--write", "--join", "T"])
