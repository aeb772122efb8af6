"""What each coding agent needs to talk to the mesh, as pure functions: the environment
variables and command-line config overrides each one documents, and which model to use.

Why no config files: every agent here reads its endpoint from the environment or from a
command-line override, so pointing it at the mesh for one run leaves the user's home as
it was (`--write` is the explicit exception, in agents.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROVIDER = "mesh-llm"  # the provider name we register in agents that take one
NO_KEY = "mesh-llm"  # agents that insist on some key get this when the mesh has none


@dataclass(frozen=True)
class Agent:
    """A coding agent we can launch: its command and how a user installs it."""

    name: str
    command: str
    install: str


AGENTS: dict[str, Agent] = {a.name: a for a in (
    Agent("claude", "claude", "npm install -g @anthropic-ai/claude-code"),
    Agent("codex", "codex", "npm install -g @openai/codex"),
    Agent("opencode", "opencode", "npm install -g opencode-ai"),
    Agent("goose", "goose", "brew install block-goose-cli, or the goose CLI from "
                            "https://github.com/block/goose/releases"),
)}


@dataclass(frozen=True)
class Launch:
    """How to start an agent: environment changes (None: remove the variable), arguments
    placed before the user's, and the names of what was set (for the one-line summary)."""

    env: dict[str, str | None] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with our changes applied."""
        out = dict(base)
        for name, value in self.env.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out


def choose_model(listing: Mapping[str, Any], wanted: str | None) -> str:
    """The model to point the agent at, from `GET /v1/models`: `wanted` when given (the
    mesh matches names itself), else the first model whose name says coder, else the
    mesh's default, else the first listed. ValueError when the mesh lists none."""
    data = listing.get("data")
    models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] \
        if isinstance(data, list) else []
    if wanted:
        return wanted
    if not models:
        raise ValueError("the mesh serves no model yet")
    coder = next((m["id"] for m in models if "coder" in m["id"].casefold()), None)
    if coder is not None:
        return coder
    default = next((m["id"] for m in models
                    if isinstance(m.get("meta"), dict) and m["meta"].get("default")), None)
    return default or models[0]["id"]


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for the characters json emits)."""
    return json.dumps(value)


def launch_for(agent: str, base_url: str, model: str, api_key: str | None) -> Launch:
    """How to point `agent` at the mesh API at `base_url` (no trailing slash)."""
    key = api_key or NO_KEY
    if agent == "claude":
        env: dict[str, str | None] = {
            "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_AUTH_TOKEN": None,  # it would be sent instead of our key
            "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "CLAUDE_CODE_SUBAGENT_MODEL": model}
        return Launch(env, (), tuple(n for n, v in env.items() if v is not None))
    if agent == "codex":
        table = f"model_providers.{PROVIDER}"
        overrides = [("model_provider", PROVIDER), ("model", model),
                     (f"{table}.name", PROVIDER), (f"{table}.base_url", base_url + "/v1"),
                     (f"{table}.wire_api", "responses")]
        env = {}
        if api_key:
            overrides.append((f"{table}.env_key", "MESH_LLM_API_KEY"))
            env["MESH_LLM_API_KEY"] = api_key
        args = tuple(a for name, value in overrides for a in ("-c", f"{name}={toml_string(value)}"))
        return Launch(env, args, (f"-c {table} (wire_api responses)", "-c model_provider",
                                  "-c model", *env))
    if agent == "opencode":
        ref = f"{PROVIDER}/{model}"
        config = {"$schema": "https://opencode.ai/config.json", "model": ref,
                  "small_model": ref, "provider": {PROVIDER: {
                      "npm": "@ai-sdk/openai-compatible", "name": PROVIDER,
                      "options": {"baseURL": base_url + "/v1", "apiKey": key},
                      "models": {model: {"name": model}}}}}
        return Launch({"OPENCODE_CONFIG_CONTENT": json.dumps(config)}, (),
                      ("OPENCODE_CONFIG_CONTENT",))
    if agent == "goose":
        env = {"GOOSE_PROVIDER": "openai", "GOOSE_MODEL": model, "OPENAI_HOST": base_url,
               "OPENAI_BASE_PATH": "v1/chat/completions", "OPENAI_API_KEY": key}
        return Launch(env, (), tuple(env))
    raise ValueError(f"unknown agent {agent!r}")


def summary(agent: str, base_url: str, model: str, launch: Launch,
            user_args: Sequence[str]) -> str:
    """The one line the launcher prints before the agent starts."""
    extra = f", then your {len(user_args)} argument(s)" if user_args else ""
    return (f"mesh-llm: {agent} → {base_url}, model {model} (set {', '.join(launch.shown)}"
            f"{extra})")
