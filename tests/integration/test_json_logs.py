"""`--log-format json` on real nodes: every line a host and a joining worker write through a
start, a join, a tunnelled request and a stop is one JSON object with the documented keys."""

from __future__ import annotations

import json

from nodes import NodeProcess, greedy

KEYS = {"time", "level", "node", "event", "fields", "logger", "message"}


def json_lines(node: NodeProcess) -> list[dict]:
    out = []
    for number, text in enumerate(node.output().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {text!r}") from None
        assert isinstance(line, dict) and set(line) >= KEYS, text
        assert isinstance(line["fields"], list | dict), text
        assert isinstance(line["event"], str) and line["event"] != "%s", text  # says what
        out.append(line)
    return out


def test_every_line_of_a_mesh_s_life_is_a_json_object(make_node) -> None:
    host = make_node("host", "--max-vram", "3", "--log-format", "json").wait_ready()
    host_id, token = host.status()["node_id"], host.status()["token"]
    worker = make_node("worker", "--max-vram", "2", "--join", token,
                       "--log-format", "json").wait_ready()
    worker_id = worker.status()["node_id"]
    host.wait_for(lambda: [p["id"] for p in host.status()["peers"]] == [worker_id],
                  "the worker in the host's peers")
    # through the worker: its API tunnels the request to the host's llama-server
    assert greedy(worker, [{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert worker.stop() == 0
    host.wait_for(lambda: host.status()["peers"] == [], "the worker's goodbye")
    assert host.stop() == 0

    for node, node_id in ((host, host_id), (worker, worker_id)):
        lines = json_lines(node)
        assert len(lines) >= 5
        # from the line that names it on, every line names the node that wrote it
        named = next(i for i, line in enumerate(lines) if line["event"] == "node id: %s")
        assert lines[named]["fields"] == [node_id]
        assert all(line["node"] == node_id for line in lines[named:])
        assert all(line["node"] is None for line in lines[:named])
        assert {line["level"] for line in lines} <= {"debug", "info", "warning", "error"}
    joined = [line for line in json_lines(host) if line["event"] == "peer %s %s"]
    assert [line["fields"] for line in joined][:1] == [[worker_id[:12], "added"]]
    assert any(line["event"] == "file-less worker joins a model" for line in json_lines(worker))
    invite = next(line for line in json_lines(host) if line["event"].startswith("worker invite"))
    assert invite["fields"] == [token] and invite["message"].endswith("\n" + token)
