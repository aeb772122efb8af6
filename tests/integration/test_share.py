"""Bring your own server: a node shares the models of an OpenAI-compatible server it runs
beside it (`--share URL`). The "existing server" is a second llama-server the test starts
(the engine we ship, an F16 copy of SmolLM2 under another alias); real nodes, real QUIC,
on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mesh_llm.inference.engine import find_engine
from modelgen import dequantize_to_f16, smollm2_path
from nodes import NodeProcess, http_json, listed, openai_client, post_json
from ports import free_port
from waiting import wait_until

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]
GGUF = "SmolLM2-135M-Instruct"
SHARED = "Sea-Shared-F16"  # the external server's alias for its model
LEAVE_S = 30.0  # the contract: a stopped server's models leave every node's list within this


class ExternalServer:
    """llama-server as a user's own server: its own process, port and log."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.log = model, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ExternalServer:
        engine = find_engine(None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(engine.llama_server), "-m", str(self.model), "--alias", SHARED,
                 "--host", "127.0.0.1", "--port", str(self.port), "--metrics", "-c", "2048",
                 "-t", "1"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: http_json(f"http://127.0.0.1:{self.port}/health", 2)[0] == 200,
                   "the external llama-server to answer", 60, ignore=(OSError, ValueError),
                   check=self._alive)
        return self

    def _alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def predicted_tokens(self) -> float:
        """Tokens this server generated since it started (its own /metrics)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.MULTILINE)
        assert found is not None, text[:500]
        return float(found[1])


@pytest.fixture(scope="module")
def f16_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dequantize_to_f16(smollm2_path(), tmp_path_factory.mktemp("f16") / "sea-f16.gguf")


@pytest.fixture
def external(f16_path: Path, tmp_path: Path) -> Iterator[ExternalServer]:
    server = ExternalServer(f16_path, tmp_path / "external.log").start()
    yield server
    server.stop()


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": PROMPT, "temperature": 0, "max_tokens": 24}


def served_requests(home: Path) -> int:
    """Requests A's llama-server finished, from its own log (one timing line each)."""
    path = home / "logs" / "llama-server.log"
    return path.read_text(errors="replace").count("prompt eval time") if path.exists() else 0


def share_node(tmp_path: Path, *args: str) -> NodeProcess:
    """`mesh-llm share URL ...`: the subcommand form, for a node that only shares."""
    node = NodeProcess(tmp_path / "b", *args[1:])
    node.args = ["share", args[0], *node.args]
    return node.start()


def test_a_shared_server_serves_the_mesh_leaves_when_stopped_and_returns(
        make_node, external: ExternalServer, tmp_path: Path) -> None:
    a = make_node("a").wait_ready()
    b = share_node(tmp_path, external.url, "--join", a.status()["token"])
    try:
        c = make_node("c", "--client", "--join", a.status()["invites"]["client"]).wait_ready()
        both = {GGUF, SHARED}
        for node in (a, c):
            node.wait_for(lambda n=node: set(listed(n)) == both, "both models listed", 60)
        models = listed(c)
        shared_meta, gguf_meta = models[SHARED]["meta"], models[GGUF]["meta"]
        b_id = b.status()["node_id"]
        assert (shared_meta["kind"], shared_meta["host"], shared_meta["fingerprint"],
                shared_meta["ready"], shared_meta["default"]) == ("shared", b_id, None, True, False)
        assert (gguf_meta["kind"], gguf_meta["default"]) == ("gguf", True)

        code, direct = post_json(external.url + "/chat/completions", chat_body(SHARED))
        assert code == 200, direct
        expected = direct["choices"][0]["message"]["content"]
        tokens, a_served = external.predicted_tokens(), served_requests(a.home)
        api = openai_client(c)
        reply = api.chat.completions.create(**chat_body(SHARED))
        assert reply.choices[0].message.content == expected
        chunks = api.chat.completions.create(stream=True, **chat_body(SHARED))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks
                       if ch.choices) == expected
        assert external.predicted_tokens() > tokens, "the external server served them"
        assert served_requests(a.home) == a_served, "A's llama-server served none of them"

        bs = b.status()
        assert bs["shared"] == [{"url": external.url, "models": [SHARED], "ok": True,
                                 "last_error": None}]
        assert bs["role"] == "client" and bs["llama_server"] is None
        assert a.status()["mesh_shared"] == [{"name": SHARED, "nodes": [b_id]}]
        pid = a.status()["llama_server"]["pid"]

        # The server stops: its model leaves A's and C's lists within the contract.
        external.stop()
        stopped = time.monotonic()
        for node in (a, c):
            node.wait_for(lambda n=node: SHARED not in listed(n), "the shared model to leave",
                          max(0.1, LEAVE_S - (time.monotonic() - stopped)))
        code, body = post_json(c.api + "/v1/chat/completions", chat_body(SHARED))
        assert code == 404 and f"model '{SHARED}' is not served" in body["error"]["message"]
        assert b.proc is not None and b.proc.poll() is None, "B keeps running"
        shared = b.status()["shared"][0]
        assert shared["ok"] is False and shared["models"] == []
        assert str(external.port) in shared["last_error"]

        # The server returns: so does its model, and requests reach it again.
        external.start()
        c.wait_for(lambda: SHARED in listed(c), "the shared model back", LEAVE_S)
        reply = api.chat.completions.create(**chat_body(SHARED))
        assert reply.choices[0].message.content == expected
        assert a.status()["llama_server"]["pid"] == pid, "no llama-server restart on A"
    finally:
        b.stop()


class KeyRecorder:
    """A tiny OpenAI-compatible server that records what each request carried."""

    NAME = "keyed-model"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, Any]] = []  # method, path, auth, body
        self.port = free_port()
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: Any = None

    async def _models(self, request: web.Request) -> web.Response:
        self.seen.append(("GET", request.path, request.headers.get("Authorization"), None))
        return web.json_response({"object": "list", "data": [{"id": self.NAME}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(("POST", request.path, request.headers.get("Authorization"), body))
        return web.json_response({"object": "chat.completion", "model": body.get("model"),
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": "recorded"}}]})

    def _run(self) -> None:
        import asyncio

        async def main() -> None:
            app = web.Application()
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/chat/completions", self._chat)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            self._loop_ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())

    def __enter__(self) -> KeyRecorder:
        self._thread.start()
        assert self._loop_ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_the_share_key_reaches_the_server_and_nowhere_else(make_node, tmp_path: Path) -> None:
    key = "sk-share-" + "7f3a9c" * 4
    with KeyRecorder() as server:
        url = f"http://localhost:{server.port}/v1"
        b = make_node("b", "--share", url, "--share-key", key)  # alone: starts a mesh
        b.wait_for(lambda: b.status()["shared"][0]["ok"], "the server read", 30)
        c = make_node("c", "--client", "--join", b.status()["invites"]["client"])
        c.wait_for(lambda: KeyRecorder.NAME in listed(c), "the shared model on C", 60)
        code, body = post_json(c.api + "/v1/chat/completions",
                          {"model": "keyed-model@shared", "messages": PROMPT})
        assert code == 200 and body["choices"][0]["message"]["content"] == "recorded", body
        posts = [s for s in server.seen if s[0] == "POST"]
        assert posts == [("POST", "/v1/chat/completions", f"Bearer {key}",
                          {"model": KeyRecorder.NAME, "messages": PROMPT})]
        assert all(auth == f"Bearer {key}" for _, _, auth, _ in server.seen)
        statuses = json.dumps([b.status(), c.status(), listed(b), listed(c)])
        assert key not in statuses and url in statuses
        b.stop()
        c.stop()
    for node in (b, c):  # logs (its own and its children's) and every file in its home
        assert key not in node.output()
        for path in node.home.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


def test_a_share_url_off_this_machine_needs_share_remote(tmp_path: Path) -> None:
    for argv in (["share", "http://192.0.2.7:11434/v1"],
                 ["--share", "http://example.invalid/v1", "--home", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "mesh_llm", *argv], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--share-remote" in lines[0], done.stderr
