"""Real mesh-llm processes for tests: each with its own home and ports on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ports import free_port
from waiting import wait_until

READY_TIMEOUT_S = 120.0
POLL_S = 0.05


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET url → (status, parsed JSON body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class NodeProcess:
    """`python -m mesh_llm ...` with its output in a log file under its home."""

    def __init__(self, home: Path, *args: str, console: bool = True) -> None:
        self.home = home
        self.api_port = free_port()
        self.console_port = free_port() if console else None
        self.args = ["--home", str(home), "--port", str(self.api_port), "--bind-host",
                     "127.0.0.1", *args]
        if self.console_port is not None:
            self.args += ["--console", str(self.console_port)]
        self.log_path = home.parent / f"{home.name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command_prefix: list[str] = []  # e.g. `ip netns exec NAME` (tests/natlab.py)

    def start(self) -> NodeProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "mesh_llm", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        return self

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mesh-llm exited with {self.proc.returncode}:\n{self.output()}")

    def wait_for(self, predicate, what: str, timeout: float = READY_TIMEOUT_S):  # type: ignore[no-untyped-def]
        """Poll `predicate()` until it returns something truthy, the node dies, or time runs out."""
        return wait_until(predicate, what, timeout, POLL_S, check=self._check_alive,
                          ignore=(OSError, ValueError), detail=lambda: self.output()[-3000:])

    def status(self) -> dict[str, Any]:
        code, body = http_json(self.console + "/api/status")
        assert code == 200, body
        return body

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> NodeProcess:
        self.wait_for(lambda: http_json(self.api + "/health", 2)[0] == 200, "/health 200",
                      timeout)
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"mesh-llm ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode


def openai_client(node: NodeProcess, timeout: float = 120) -> Any:
    import openai

    return openai.OpenAI(base_url=node.api + "/v1", api_key="unused", max_retries=0,
                         timeout=timeout)


def greedy(node: NodeProcess, messages: list[dict[str, str]], max_tokens: int,
           stream: bool = False) -> str:
    """The temperature-0 answer through `node`'s API (the official openai client)."""
    kw = {"model": "SmolLM2-135M-Instruct", "messages": messages, "temperature": 0,
          "max_tokens": max_tokens}
    api = openai_client(node)
    if not stream:
        return api.chat.completions.create(**kw).choices[0].message.content or ""
    chunks = api.chat.completions.create(stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def post_json(url: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, Any]:
    """POST `body` as JSON with urllib: (status, JSON body), error statuses included."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def post_chat(node: NodeProcess, messages: list[dict[str, str]],
              max_tokens: int) -> tuple[int, Any]:
    """A greedy chat completion of the node's default model, by urllib."""
    return post_json(node.api + "/v1/chat/completions",
                     {"messages": messages, "max_tokens": max_tokens, "temperature": 0})


def listed(node: NodeProcess) -> dict[str, dict[str, Any]]:
    """The node's /v1/models, by id."""
    code, body = http_json(node.api + "/v1/models")
    assert code == 200, body
    return {m["id"]: m for m in body["data"]}
