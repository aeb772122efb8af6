"""node_status over a node (tests/fakenode.py) in each role: the console contract's fields
(DESIGN §8), the first model's host, plan and readiness, the models of the mesh, and why
nothing is served when nothing is."""

from __future__ import annotations

from pathlib import Path

from fakenode import GB, ME, FakeNode
from mesh_llm.inference.election import Plan
from mesh_llm.inference.groups import OfferedModel
from mesh_llm.mesh.announcement import Announcement, Hosted, Offer
from mesh_llm.node.route import WAITING_FOR_A_HOST
from mesh_llm.node.status import node_status

BIG, CLIENT = "b" * 64, "c" * 64
CHAT = OfferedModel("c1" * 8, "Chat-Q4_1", GB)
CODER = OfferedModel("d2" * 8, "Coder", GB)
CONTRACT = {"node_id", "token", "role", "is_host", "is_client", "llama_ready", "model", "draft",
            "api_port", "vram_bytes", "mesh_vram_bytes", "peers", "plan", "version"}


def host_peer(*models: OfferedModel, ready: bool = True, draft: str | None = None,
              vram_gb: int = 8) -> Announcement:
    plan = Plan("solo", BIG, tensor_split=(1.0,)).to_json()
    return Announcement(BIG, role="host", vram_bytes=vram_gb * GB, models=(models[0].name,),
                        ready=ready, plan=plan, draft=draft,
                        offers=tuple(Offer(m.name, m.fingerprint, m.size_bytes)
                                     for m in models),
                        hosted=tuple(Hosted(m.fingerprint, plan, ready) for m in models))


def test_a_host_shows_its_own_model_plan_and_llama_server(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    node.host(0, port=4100)
    status = node_status(node)
    assert set(status) >= CONTRACT
    assert (status["role"], status["is_host"], status["is_client"]) == ("host", True, False)
    assert status["host"] == ME and status["llama_ready"] and status["reason"] is None
    assert status["model"] == "Chat-Q4_1" and status["draft"] is None
    assert status["plan"]["mode"] == "solo" and status["plan"]["host"] == ME
    assert status["model_file"] == str(tmp_path / "Chat-Q4_1.gguf")
    assert status["model_bytes"] == GB
    assert status["llama_server"] == {"pid": 4242, "port": 4100, "load_seconds": 1.5}
    assert status["api_tunnel"] is None and status["state"] == "running"
    assert status["invites"] == {"worker": "worker-token", "client": "client-invite"}
    assert status["token"] == "worker-token"
    assert (status["api_in_flight"], status["console_streams"]) == (1, 2)
    [entry] = status["models"]
    assert (entry["name"], entry["fingerprint"], entry["host"], entry["ready"]) == (
        "Chat-Q4_1", CHAT.fingerprint, ME, True)
    assert entry["llama_server"]["port"] == 4100
    assert status["default_model"] == "Chat-Q4_1" and status["joined"] is None


def test_a_worker_shows_its_hosts_model_plan_and_tunnel(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(host_peer(CHAT, draft="Chat-draft"),),
                    vram_bytes=GB // 2)
    status = node_status(node)
    assert status["role"] == "worker" and not status["is_host"]
    assert status["host"] == BIG and status["llama_ready"]
    assert status["model"] == "Chat-Q4_1" and status["draft"] == "Chat-draft"
    assert status["plan"]["host"] == BIG
    assert status["api_tunnel"] == {"host": BIG, "label": "QUIC · HTTP",
                                    "description": "API tunnel"}
    assert status["llama_server"] is None and status["llama_servers"] == []
    assert status["mesh_vram_bytes"] == GB // 2 + 8 * GB
    assert [p["id"] for p in status["peers"]] == [BIG]


def test_a_worker_whose_host_is_loading_says_so(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(host_peer(CHAT, ready=False),), vram_bytes=GB // 2)
    status = node_status(node)
    assert not status["llama_ready"]
    assert status["reason"] == f"the host {BIG[:12]} is still loading its model"
    assert status["models"][0]["ready"] is False and "still loading" in \
        status["models"][0]["reason"]


def test_a_file_less_worker_alone_waits_for_a_host(tmp_path: Path) -> None:
    status = node_status(FakeNode(tmp_path))
    assert status["role"] == "worker" and status["host"] is None
    assert status["reason"] == WAITING_FOR_A_HOST and not status["llama_ready"]
    assert status["model"] is None and status["model_file"] is None
    assert status["model_files"] == [] and status["plan"] is None
    assert status["rpc_tunnel"]["bytes_in"] == 0 and status["rpc_tunnel"]["connections"] == 0
    assert status["models"] == [] and status["joined"] is None


def test_a_file_less_worker_shows_the_group_it_joined(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, peers=(host_peer(CHAT),), vram_bytes=GB)
    status = node_status(node)
    assert status["host"] == BIG and status["llama_ready"]
    assert status["model"] == "Chat-Q4_1"
    assert status["joined"]["model"] == "Chat-Q4_1"
    assert status["joined"]["fingerprint"] == CHAT.fingerprint
    assert status["joined"]["reason"]
    assert ME in status["models"][0]["nodes"]


def test_a_lite_client_offers_nothing_and_routes_to_the_default_host(tmp_path: Path) -> None:
    client = Announcement(CLIENT, role="client", vram_bytes=0)
    node = FakeNode(tmp_path, client=True, peers=(host_peer(CHAT), client))
    status = node_status(node)
    assert (status["role"], status["is_client"], status["is_host"]) == ("client", True, False)
    assert status["host"] == BIG and status["llama_ready"]
    assert status["vram_bytes"] == 0 and status["mesh_vram_bytes"] == 8 * GB


def test_two_models_one_here_one_on_a_peer(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, CODER, peers=(host_peer(CODER),))
    node.host(0, port=4100)
    node.left_out = {"Other": "does not fit"}
    status = node_status(node)
    by_name = {m["name"]: m for m in status["models"]}
    assert by_name["Chat-Q4_1"]["host"] == ME and by_name["Chat-Q4_1"]["llama_server"]
    assert by_name["Coder"]["host"] == BIG and by_name["Coder"]["llama_server"] is None
    assert status["model"] == "Chat-Q4_1" and status["host"] == ME  # the first model's
    assert status["models_left_out"] == {"Other": "does not fit"}


def test_a_failed_join_is_the_reason_shown(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    node.host(0, port=4100)
    node.join_error = "no address answered"
    assert node_status(node)["reason"] == "serving alone (--standalone): no address answered"
