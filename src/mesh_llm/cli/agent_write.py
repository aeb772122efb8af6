"""`mesh-llm AGENT --write`: keep the mesh's settings in the agent's own config file, so the
agent finds the mesh when started without the launcher. Only on request: by default the
launcher passes everything through the environment and writes nothing.

Each write adds our entries and leaves the user's own untouched: JSON files are merged,
Codex's TOML gets a `[profiles.mesh-llm]` and a `[model_providers.mesh-llm]` table
appended (`codex --profile mesh-llm`), unless a table of that name is already there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from .agent_env import PROVIDER, Launch, toml_string


def write_config(agent: str, home: Path, launch: Launch, model: str) -> Path:
    """Write `launch`'s settings for `agent` under `home`; the file written."""
    if agent == "claude":
        path = home / ".claude" / "settings.json"
        env = {k: v for k, v in launch.env.items() if v is not None}
        _merge_json(path, {"env": env})
        return path
    if agent == "opencode":
        path = home / ".config" / "opencode" / "opencode.json"
        config = json.loads(launch.env["OPENCODE_CONFIG_CONTENT"] or "{}")
        _merge_json(path, {"provider": config["provider"], "model": config["model"]})
        return path
    if agent == "codex":
        path = home / ".codex" / "config.toml"
        text = path.read_text() if path.exists() else ""
        if re.search(rf"^\[(profiles|model_providers)\.{re.escape(PROVIDER)}\]", text, re.M):
            raise UserError(f"{path} already has a {PROVIDER} table: edit it there, or remove "
                            "it and run with --write again")
        table = f"model_providers.{PROVIDER}."
        provider = [o[len(table):].replace("=", " = ", 1) for o in launch.args[1::2]
                    if o.startswith(table)]
        block = (f"\n[profiles.{PROVIDER}]\nmodel_provider = {toml_string(PROVIDER)}\n"
                 f"model = {toml_string(model)}\n\n[model_providers.{PROVIDER}]\n"
                 + "".join(f"{line}\n" for line in provider))
        _write(path, text + ("\n" if text and not text.endswith("\n") else "") + block)
        return path
    raise UserError(f"{agent} takes its settings from the environment: run it through "
                    f"mesh-llm {agent} (--write is not supported for it)")


def _merge_json(path: Path, ours: dict[str, Any]) -> None:
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} to add the mesh's settings: {err}") from None
    if not isinstance(current, dict):
        raise UserError(f"{path} is not a JSON object: not touching it")
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key] = {**current[key], **value}
        else:
            current[key] = value
    _write(path, json.dumps(current, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    """Replace `path` atomically (a crash leaves the old file or the new one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".mesh-llm.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err}") from None
