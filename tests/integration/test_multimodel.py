"""Many models in one mesh: every node serves what it has, and each request
goes where its `model` runs. Real nodes, real llama.cpp, on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelgen import dequantize_to_f16, smollm2_path
from nodes import NodeProcess, listed, openai_client, post_json

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]
Q4 = "SmolLM2-135M-Instruct"
F16 = "Sea-Copy-F16"  # the same weights dequantized: other bytes, another name


@pytest.fixture(scope="module")
def f16_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dequantize_to_f16(smollm2_path(), tmp_path_factory.mktemp("f16") / f"{F16}.gguf")


def chat(node: NodeProcess, model: str, tokens: int = 24) -> str:
    reply = openai_client(node).chat.completions.create(
        model=model, messages=PROMPT, temperature=0, max_tokens=tokens)
    return reply.choices[0].message.content or ""


def post(node: NodeProcess, body: dict[str, Any]) -> tuple[int, Any]:
    return post_json(node.api + "/v1/chat/completions", body)


def all_ready(node: NodeProcess, names: set[str]) -> bool:
    models = listed(node)
    return set(models) == names and all(m["meta"]["ready"] for m in models.values())


def served_requests(home: Path, log_name: str) -> int:
    """Requests a llama-server finished, from its own log (one timing line each)."""
    path = home / "logs" / log_name
    return path.read_text(errors="replace").count("prompt eval time") if path.exists() else 0


def model_status(node: NodeProcess, name: str) -> dict[str, Any]:
    return next(m for m in node.status()["models"] if m["name"] == name)


def test_two_models_two_nodes_routed_by_model_from_a_client(make_node, f16_path: Path) -> None:
    a = make_node("a", "--model", Q4).wait_ready()
    b = make_node("b", "--model", str(f16_path), "--join", a.status()["token"]).wait_ready()
    c = make_node("c", "--client", "--join", a.status()["invites"]["client"]).wait_ready()
    ida, idb = a.status()["node_id"], b.status()["node_id"]
    for node in (a, b, c):
        node.wait_for(lambda n=node: all_ready(n, {Q4, F16}), "both models listed, ready", 60)
    models = listed(c)
    assert {m["owned_by"] for m in models.values()} == {"mesh-llm"}
    assert models[Q4]["meta"]["host"] == ida and models[F16]["meta"]["host"] == idb
    assert models[Q4]["meta"]["mode"] == models[F16]["meta"]["mode"] == "solo"
    assert models[Q4]["meta"]["default"], "the oldest node's first model is the default"
    cs = c.status()
    assert cs["default_model"] == Q4
    assert {m["name"]: m["host"] for m in cs["models"]} == {Q4: ida, F16: idb}
    assert a.status()["llama_server"]["pid"] != b.status()["llama_server"]["pid"]
    pid_a = a.status()["llama_server"]["pid"]

    # Each request goes to its model's host: the same greedy text as asking that host.
    for name, host, home in ((Q4, a, a.home), (F16, b, b.home)):
        other = b.home if home == a.home else a.home
        before, other_before = (served_requests(home, "llama-server.log"),
                                served_requests(other, "llama-server.log"))
        via_client = chat(c, name)
        assert via_client and via_client == chat(host, name), name
        a.wait_for(lambda h=home, n=before: served_requests(h, "llama-server.log") >= n + 2,
                   f"{name}'s llama-server counted both requests", 10)
        assert served_requests(other, "llama-server.log") == other_before, \
            f"{name} must not reach the other model's llama-server"
    # Names match the way users type them; a request without `model` takes the default.
    assert chat(c, "sea-copy-f16.gguf") == chat(c, F16)
    assert chat(c, "smollm2-135m-instruct-q4_1") == chat(c, Q4)
    code, body = post(c, {"messages": PROMPT, "temperature": 0, "max_tokens": 24})
    assert code == 200 and body["choices"][0]["message"]["content"] == chat(c, Q4)

    # An unknown model: a 404 that lists the models served; a `model` not a string: 400.
    code, body = post(c, {"model": "no-such-model", "messages": PROMPT})
    assert code == 404 and body["error"]["type"] == "not_found"
    assert Q4 in body["error"]["message"] and F16 in body["error"]["message"]
    for bad in (3, ["x"], {"name": Q4}, True):
        code, body = post(c, {"model": bad, "messages": PROMPT})
        assert code == 400 and body["error"]["type"] == "invalid_request_error", bad

    # Request counts are gossiped: every node sees them per model (the last minute's).
    for _ in range(3):
        chat(c, F16, 1)
    for node in (a, c):
        node.wait_for(lambda n=node: model_status(n, F16)["requests_per_min"] >= 3,
                      "counts gossiped", 30)

    # B dies: its model leaves the mesh everywhere and is a 404; A's llama-server stays.
    assert b.proc is not None
    b.proc.kill()
    b.proc.wait()
    for node in (a, c):
        node.wait_for(lambda n=node: set(listed(n)) == {Q4}, "the F16 model gone", 30)
        assert a.status()["llama_server"]["pid"] == pid_a
    code, body = post(c, {"model": F16, "messages": PROMPT, "max_tokens": 4})
    assert code == 404 and Q4 in body["error"]["message"]
    assert chat(c, Q4)
    assert a.status()["llama_server"]["pid"] == pid_a, "another group's change restarts nothing"


def test_one_node_hosts_two_models(make_node, f16_path: Path) -> None:
    a = make_node("a", "--model", Q4, "--model", str(f16_path)).wait_ready()
    a.wait_for(lambda: all_ready(a, {Q4, F16}), "both models ready", 120)
    s = a.status()
    servers = {m["name"]: m["llama_server"] for m in s["models"]}
    assert servers[Q4]["pid"] != servers[F16]["pid"], "one llama-server per model"
    assert servers[Q4]["port"] != servers[F16]["port"]
    assert s["model"] == Q4 and s["default_model"] == Q4, "the first --model is the primary"
    assert (a.home / "logs" / f"llama-server-{F16}.log").exists()
    n_q4 = served_requests(a.home, "llama-server.log")
    n_f16 = served_requests(a.home, f"llama-server-{F16}.log")
    assert chat(a, F16) and chat(a, Q4)
    a.wait_for(lambda: served_requests(a.home, "llama-server.log") == n_q4 + 1
               and served_requests(a.home, f"llama-server-{F16}.log") == n_f16 + 1,
               "each llama-server answered its own model once", 10)
    reply = openai_client(a).chat.completions.create(model=F16, messages=PROMPT, max_tokens=2)
    assert reply.model.lower().startswith("sea-copy"), "the F16 server answered"
    # Through the API tunnel the host picks the llama-server by the request's model.
    c = make_node("c", "--client", "--join", a.status()["invites"]["client"]).wait_ready()
    c.wait_for(lambda: all_ready(c, {Q4, F16}), "both models seen by the client", 30)
    n_q4 = served_requests(a.home, "llama-server.log")
    n_f16 = served_requests(a.home, f"llama-server-{F16}.log")
    assert chat(c, F16) == chat(a, F16)
    a.wait_for(lambda: served_requests(a.home, f"llama-server-{F16}.log") == n_f16 + 2,
               "the F16 server answered both", 10)
    assert served_requests(a.home, "llama-server.log") == n_q4
    assert chat(c, Q4) == chat(a, Q4)
    assert served_requests(a.home, f"llama-server-{F16}.log") == n_f16 + 2


def plan_of(node: NodeProcess, name: str) -> dict[str, Any]:
    return model_status(node, name)["plan"] or {}


def test_one_model_split_while_the_other_runs_solo(make_node, f16_path: Path) -> None:
    a = make_node("a", "--model", Q4, "--split", "--max-vram", "2").wait_ready()
    solo_text = chat(a, Q4, 40)  # --split with no worker yet: the host alone
    token = a.status()["token"]
    w = make_node("w", "--model", Q4, "--max-vram", "1", "--join", token).wait_ready()
    b = make_node("b", "--model", str(f16_path), "--join", token).wait_ready()
    idw = w.status()["node_id"]
    a.wait_for(lambda: plan_of(a, Q4).get("workers") == [idw] and all_ready(a, {Q4, F16}),
               "Q4 split over w, F16 ready", 120)
    assert plan_of(a, F16)["mode"] == "solo" and plan_of(a, F16)["host"] == \
        b.status()["node_id"]
    assert plan_of(a, Q4)["mode"] == "split" and len(plan_of(a, Q4)["rpc"]) == 1
    assert chat(b, Q4, 40) == chat(w, Q4, 40) == solo_text
    assert chat(w, F16)


def test_a_file_less_worker_joins_the_model_that_cannot_run_without_it(
        make_node, f16_path: Path) -> None:
    a = make_node("a", "--model", Q4, "--max-vram", "0.1")  # needs 0.108 GB: waits
    a.wait_for(lambda: model_status(a, Q4)["plan"] is not None
               and model_status(a, Q4)["plan"]["mode"] == "waiting", "Q4 waiting for VRAM")
    b = make_node("b", "--model", str(f16_path), "--join", a.status()["token"]).wait_ready()
    b.wait_for(lambda: model_status(b, F16)["ready"], "F16 served")
    code, body = post(b, {"model": Q4, "messages": PROMPT, "max_tokens": 4})
    assert code == 503 and "VRAM" in body["error"]["message"]
    w = make_node("w", "--max-vram", "1", "--join", a.status()["token"])
    w.wait_for(lambda: (w.status()["joined"] or {}).get("model") == Q4, "w joins Q4")
    assert "cannot be served without this node" in w.status()["joined"]["reason"]
    assert "joined SmolLM2-135M-Instruct" in w.output()
    b.wait_for(lambda: model_status(b, Q4)["ready"], "Q4 served over a and w", 120)
    assert plan_of(b, Q4)["mode"] == "split"
    assert plan_of(b, Q4)["workers"] == [w.status()["node_id"]]
    assert chat(b, Q4) and chat(w, Q4) == chat(a, Q4)
