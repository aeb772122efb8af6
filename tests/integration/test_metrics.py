"""GET /metrics on real nodes: a known sequence of requests through a host and through a
lite client, counted exactly; RTT per peer; a split's RPC round trips; the key and the
Host check in front of the page."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodes import NodeProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

KEY = "metr1cs-key"
MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "Count to twenty."}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def call(url: str, *, key: str | None = KEY, body: dict[str, Any] | None = None,
         host: str | None = None, timeout: float = 120) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if host is not None:
        headers["Host"] = host
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(base: str, key: str | None = KEY) -> Samples:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser."""
    status, body = call(base + "/metrics", key=key)
    assert status == 200, body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def chat(node: NodeProcess, tokens: int, stream: bool = False) -> bytes:
    status, body = call(node.api + CHAT, body={
        "model": MODEL, "messages": ASK, "max_tokens": tokens, "temperature": 0,
        "ignore_eos": True, "stream": stream})
    assert status == 200, body
    return body


def wait_keyed(node: NodeProcess) -> NodeProcess:
    node.wait_for(lambda: call(node.api + "/health")[0] == 200, "/health 200 with the key")
    return node


@pytest.fixture(scope="module")
def keyed_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """A host (/metrics on its API too) and a lite client, both with --api-key."""
    tmp = tmp_path_factory.mktemp("metrics")
    host = NodeProcess(tmp / "host", "--api-key", KEY, "--metrics-on-api").start()
    nodes = [host]
    try:
        wait_keyed(host)
        token = json.loads(call(host.console + "/api/status")[1])["token"]
        client = NodeProcess(tmp / "client", "--client", "--join", token, "--api-key",
                             KEY).start()
        nodes.append(client)
        wait_keyed(client)
        yield {"host": host, "client": client}
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize("via", ["host", "client"])
def test_metrics_count_exactly_what_was_sent(keyed_mesh: dict[str, NodeProcess],
                                             via: str) -> None:
    node = keyed_mesh[via]
    before = scrape(node.console)
    chat(node, 4)
    chat(node, 5)
    streamed = chat(node, 6, stream=True)
    assert streamed.rstrip().endswith(b"data: [DONE]")
    for path, body in (("/v1/messages", {"max_tokens": 3, "messages": ASK}),
                       ("/v1/responses", {"max_output_tokens": 2, "input": "Count."})):
        status, answer = call(node.api + path, body={"model": MODEL, "stream": True,
                                                     "ignore_eos": True, **body})
        assert status == 200 and answer.startswith(b"event: "), answer[:200]
    assert call(node.api + "/v1/nothing")[0] == 404
    assert call(node.api + CHAT, key=None, body={"messages": ASK})[0] == 401
    after = scrape(node.console)

    requests = "mesh_llm_api_requests_total"
    assert delta(before, after, requests, route=CHAT, code="200", model=MODEL) == 3
    assert delta(before, after, requests, route="unmatched", code="404", model="") == 1
    assert delta(before, after, requests, route=CHAT, code="401", model="") == 1
    for path in ("/v1/messages", "/v1/responses"):
        assert delta(before, after, requests, route=path, code="200", model=MODEL) == 1
    assert delta(before, after, "mesh_llm_relayed_requests_total", model=MODEL) == 5
    assert delta(before, after, "mesh_llm_generated_tokens_total", model=MODEL) == \
        4 + 5 + 6 + 3 + 2
    assert delta(before, after, "mesh_llm_prompt_tokens_total", model=MODEL) >= 5 * 5
    ttft = "mesh_llm_time_to_first_token_seconds"
    assert delta(before, after, f"{ttft}_count", model=MODEL) == 3  # the streamed ones
    assert delta(before, after, f"{ttft}_bucket", model=MODEL, le="+Inf") == 3
    assert delta(before, after, f"{ttft}_sum", model=MODEL) > 0
    gaps = "mesh_llm_inter_token_latency_seconds_count"
    assert delta(before, after, gaps, model=MODEL) >= 5  # six tokens: at least five gaps
    assert value(after, "mesh_llm_api_requests_in_flight") == 0
    assert value(after, "mesh_llm_api_requests_queued") == 0
    assert value(after, "mesh_llm_process_resident_memory_bytes") > 10 * 2**20
    assert value(after, "mesh_llm_process_cpu_seconds_total") > 0
    if via == "client":  # a lite client hosts nothing: no hosting metrics of its own
        assert not any(name == "mesh_llm_llama_server_ready" for name, _ in after)
    else:
        assert value(after, "mesh_llm_llama_server_ready", model=MODEL) == 1
        assert value(after, "mesh_llm_llama_server_restarts_total", model=MODEL) == 0


def test_each_node_has_an_rtt_gauge_for_its_peer(keyed_mesh: dict[str, NodeProcess]) -> None:
    host, client = keyed_mesh["host"], keyed_mesh["client"]
    ids = {name: json.loads(call(n.console + "/api/status")[1])["node_id"]
           for name, n in keyed_mesh.items()}
    for node, peer, role in ((host, ids["client"], "client"), (client, ids["host"], "host")):
        rtt = node.wait_for(lambda n=node, p=peer, r=role: value(
            scrape(n.console), "mesh_llm_peer_rtt_seconds", peer=p, role=r, link="direct"),
            "an RTT gauge for the peer", 30)
        assert 0 < rtt < 1
        assert value(scrape(node.console), "mesh_llm_peers", role=role, link="direct") == 1


def test_the_page_needs_the_key_and_refuses_a_foreign_host(
        keyed_mesh: dict[str, NodeProcess]) -> None:
    host, client = keyed_mesh["host"], keyed_mesh["client"]
    for base in (host.console, host.api, client.console):
        assert call(base + "/metrics", key=None)[0] == 401, base
        assert call(base + "/metrics", key="wrong")[0] == 401, base
        status, body = call(base + "/metrics", host="metrics.example.com")
        assert status == 403 and b"Host" in body, base
        assert any(name == "mesh_llm_node_info" for name, _ in scrape(base)), base
    info = [dict(labels) for name, labels in scrape(client.console)
            if name == "mesh_llm_node_info"]
    assert [i["client"] for i in info] == ["true"]
    # Without --metrics-on-api the API port has no such route.
    assert call(client.api + "/metrics")[0] == 404


def test_a_splits_rpc_round_trips_grow_with_generated_tokens(make_node) -> None:  # type: ignore[no-untyped-def]
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--model", MODEL, "--max-vram", "1", "--join",
                       host.status()["token"]).wait_ready()
    host.wait_for(lambda: host.status()["plan"]["mode"] == "split" and
                  host.status()["llama_ready"], "the split plan to be loaded", 120)
    worker_id = worker.status()["node_id"]
    trips = "mesh_llm_rpc_round_trips_total"
    start = scrape(host.console, key=None)
    assert value(start, "mesh_llm_weight_bytes_deduplicated_total", model=MODEL) > 0
    assert value(start, "mesh_llm_rpc_tunnel_written_bytes_total", model=MODEL) > 0
    assert value(start, "mesh_llm_peers", role="worker", link="direct") == 1
    chat(host, 4)
    few = scrape(host.console, key=None)
    chat(host, 24)
    more = scrape(host.console, key=None)
    grew_few, grew_more = delta(start, few, trips, model=MODEL), delta(few, more, trips,
                                                                        model=MODEL)
    assert grew_few >= 4, "one decode step is at least one round trip"
    assert grew_more >= 24 and grew_more > grew_few
    assert delta(start, more, "mesh_llm_generated_tokens_total", model=MODEL) == 28
    # the gauge is there from the link's start (QUIC's estimate, 0 on loopback at first);
    # the first gossip ping's answer makes it a measured round trip
    assert ("mesh_llm_peer_rtt_seconds", frozenset(
        {"peer": worker_id, "role": "worker", "link": "direct"}.items())) in more
    host.wait_for(lambda: value(scrape(host.console, key=None), "mesh_llm_peer_rtt_seconds",
                                peer=worker_id, role="worker", link="direct") > 0,
                  "a measured RTT to the worker", 30)
    dashboard = DASHBOARD.read_text()
    names = set(re.findall(r"mesh_llm_[a-z_]+", dashboard))
    assert names and names <= {name for name, _ in more}, "the dashboard reads what we serve"
