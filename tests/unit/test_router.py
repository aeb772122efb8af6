"""The API's router over a node (tests/fakenode.py): which model a request names, where it
goes (our llama-server, a peer through the API tunnel, or a 4xx/503 saying why), the
health answer, the model listing, and which of our llama-servers a tunnelled request is
for."""

from __future__ import annotations

import json
from pathlib import Path

from fakenode import GB, ME, FakeNode
from mesh_llm.api.name_match import ApiError, ServedModel
from mesh_llm.api.tunnel_gate import ApiRequestGate, TunnelledRequest
from mesh_llm.inference.election import Plan
from mesh_llm.inference.groups import OfferedModel
from mesh_llm.mesh.announcement import Announcement, Hosted, Offer
from mesh_llm.node.route import WAITING_FOR_A_HOST
from mesh_llm.node.router import MODEL_HEADER, MeshRouter

BIG = "b" * 64
CHAT = OfferedModel("c1" * 8, "Chat-Q4_1", GB)
CODER = OfferedModel("d2" * 8, "Coder", GB)


def peer(node_id: str, *models: OfferedModel, hosts: tuple[str, ...] = (),
         ready: bool = True, vram_gb: int = 8) -> Announcement:
    """A peer holding `models`, hosting those keyed in `hosts`."""
    return Announcement(node_id, role="host" if hosts else "worker", vram_bytes=vram_gb * GB,
                        models=tuple(m.name for m in models[:1]), ready=ready and bool(hosts),
                        offers=tuple(Offer(m.name, m.fingerprint, m.size_bytes) for m in models),
                        hosted=tuple(Hosted(k, Plan("solo", node_id).to_json(), ready)
                                     for k in hosts))


def model(router: MeshRouter, requested: object = None) -> ServedModel:
    found = router.resolve(requested)
    assert isinstance(found, ServedModel), found
    return found


def test_a_model_we_host_goes_to_our_llama_server(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    node.host(0, port=4100)
    router = MeshRouter(node)
    chat = model(router)
    assert chat.name == "Chat-Q4_1" and chat.key == CHAT.fingerprint and chat.host == ME
    assert model(router, "chat-q4_1.gguf") == chat
    assert model(router, "whatever a one-model client sends") == chat
    upstream = router.upstream_for(chat)
    assert upstream.connect is not None and upstream.key == "tcp 127.0.0.1:4100"
    assert router.unhealthy() is None
    assert [m["id"] for m in router.listing()["data"]] == ["Chat-Q4_1"]


def test_a_model_still_loading_here_is_a_503_that_says_so(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    node.host(0, port=None)
    router = MeshRouter(node)
    found = router.resolve(None)
    assert isinstance(found, ApiError) and found.status == 503
    assert "still loading" in found.message
    assert router.unhealthy() == found
    chat = router.served()[0]
    assert router.upstream_for(chat).reason == "the model Chat-Q4_1 is still loading"


def test_a_cpu_host_switching_llama_servers_holds_requests(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    node.host(0, port=4100, held=True)
    router = MeshRouter(node)
    upstream = router.upstream_for(router.served()[0])
    assert upstream.connect is None and upstream.reason.startswith("switching to the new")


def test_a_host_waiting_for_memory_says_how_much(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT)
    waiting = Plan("waiting", ME, reason="waiting for more VRAM: need 1.1 GB, mesh has 0.5 GB")
    node.host(0, plan=waiting)
    router = MeshRouter(node)
    assert router.upstream_for(router.served()[0]).reason == waiting.reason


def test_a_model_a_peer_hosts_goes_through_the_api_tunnel_with_its_key(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(peer(BIG, CHAT, hosts=(CHAT.fingerprint,)),))
    router = MeshRouter(node)
    chat = model(router, "Chat")
    assert chat.host == BIG
    upstream = router.upstream_for(chat)
    assert upstream.connect is not None
    assert upstream.key == f"mesh {BIG} {CHAT.fingerprint}"
    assert dict(upstream.headers) == {MODEL_HEADER: CHAT.fingerprint}


def test_a_peer_still_loading_is_a_503_naming_it(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(peer(BIG, CHAT, hosts=(CHAT.fingerprint,),
                                                ready=False),))
    router = MeshRouter(node)
    found = router.resolve("Chat")
    assert isinstance(found, ApiError) and found.status == 503
    assert found.message == f"model Chat-Q4_1 has no ready host: its host {BIG[:12]} is " \
                            "still loading it"


def test_two_models_each_go_to_their_own_host(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(peer(BIG, CODER, hosts=(CODER.fingerprint,)),))
    node.host(0, port=4100)
    router = MeshRouter(node)
    assert router.upstream_for(model(router, "Chat")).key == "tcp 127.0.0.1:4100"
    assert router.upstream_for(model(router, "coder")).key == f"mesh {BIG} {CODER.fingerprint}"
    missing = router.resolve("Llama-70B")
    assert isinstance(missing, ApiError) and missing.status == 404
    assert "models served: " in missing.message and "Coder" in missing.message
    wrong = router.resolve(5)
    assert isinstance(wrong, ApiError) and wrong.status == 400
    router.count(model(router, "coder"))
    assert router.requests.counts() == {CODER.fingerprint: 1}


def test_a_model_that_left_the_mesh_stays_a_404(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(peer(BIG, CODER, hosts=(CODER.fingerprint,)),))
    node.host(0, port=4100)
    node.peers.clear()
    node.regroup()
    router = MeshRouter(node)
    gone = router.resolve("Coder")
    assert isinstance(gone, ApiError) and gone.status == 404
    assert model(router, "anything else").name == "Chat-Q4_1"  # one model left: any name


def test_without_any_model_a_file_less_worker_says_it_waits_for_a_host(tmp_path: Path) -> None:
    router = MeshRouter(FakeNode(tmp_path))
    assert router.resolve(None) == ApiError(503, WAITING_FOR_A_HOST)
    assert router.unhealthy() == ApiError(503, WAITING_FOR_A_HOST)
    assert router.listing()["data"] == []


def test_a_lite_client_routes_to_the_default_models_host(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, client=True, peers=(peer(BIG, CHAT, hosts=(CHAT.fingerprint,)),))
    router = MeshRouter(node)
    assert router.upstream_for(model(router)).key == f"mesh {BIG} {CHAT.fingerprint}"


class Aborted:
    """A tunnel stream that records being refused."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_a_node_that_hosts_nothing_refuses_the_api_tunnel(tmp_path: Path) -> None:
    router = MeshRouter(FakeNode(tmp_path, CHAT))
    stream = Aborted()
    await router.serve_http_tunnel(BIG, stream)  # type: ignore[arg-type]
    assert stream.aborted


def request(body: dict[str, object], key: str | None = None) -> TunnelledRequest:
    """A tunnelled request as the gate lets it through (and parses it)."""
    data = json.dumps(body).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(data)}\r\n")
    if key is not None:
        head += f"{MODEL_HEADER.lower()}:  {key} \r\n"
    gate = ApiRequestGate()
    preface = gate.feed(f"{head}\r\n".encode() + data)
    assert gate.complete and gate.head is not None
    return TunnelledRequest(gate.head, preface)


def test_a_tunnelled_request_reaches_the_llama_server_of_its_model(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, CODER, vram_bytes=8 * GB)
    chat, coder = node.host(0, port=4100), node.host(1, port=4200)
    router = MeshRouter(node)
    hosting = [chat, coder]
    assert router._slot_for(request({}, CODER.fingerprint), hosting) is coder
    assert router._slot_for(request({}, "ff" * 8), hosting) is None  # not ours any more
    assert router._slot_for(request({"model": "coder"}), hosting) is coder
    assert router._slot_for(request({"model": "Chat-Q4_1"}), hosting) is chat
    assert router._slot_for(request({}), hosting) is chat  # no model: our first
