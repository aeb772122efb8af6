"""The web console in a real Chromium: roles, links, live updates over SSE, and chat.

Two kinds of server: real mesh-llm nodes (the real model, chat, restarts), and the real
Console app fed a status the test controls, which shows every mode of the status contract
(split, worker, client) whatever the rest of the mesh can do today.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from nodes import NodeProcess, http_json
from waiting import wait_until

pytestmark = pytest.mark.browser

GB = 10**9
HOST, WORKER_A, WORKER_B, CLIENT = ("a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32)
TOKEN = "eyJ2IjoxLCJpZCI6ImExYTEiLCJhZGRycyI6WyIxMjcuMC4wLjE6Nzg0MiJdLCJzIjoiLi4uIn0"
CLIENT_INVITE = "eyJ2IjoyLCJpZCI6ImExYTEiLCJraW5kIjoiY2xpZW50In0"
MODEL = "SmolLM2-135M-Instruct"
PHONE = {"width": 375, "height": 812}
LAPTOP = {"width": 1280, "height": 860}
NODE_S = 120  # generous bounds for real processes: not timing assertions
ANSWER_MS = 90_000


def status(**fields: Any) -> dict[str, Any]:
    """A status as the node builds it: this node hosts SmolLM2 solo unless told otherwise."""
    base: dict[str, Any] = {
        "node_id": HOST, "token": TOKEN, "role": "host", "is_host": True, "is_client": False,
        "host": HOST, "llama_ready": True, "model": MODEL, "draft": None, "api_port": 9337,
        "console_port": 3131, "vram_bytes": 16 * GB, "mesh_vram_bytes": 16 * GB, "peers": [],
        "plan": {"mode": "solo", "host": HOST, "workers": [], "rpc": [], "tensor_split": [1.0],
                 "reason": ""},
        "state": "running", "version": "0.1.0",
        "invites": {"worker": TOKEN, "client": CLIENT_INVITE},
    }
    return {**base, **fields}


def peer(node_id: str, role: str, vram_gb: float, rtt_ms: float | None = 1.5) -> dict[str, Any]:
    return {"id": node_id, "role": role, "vram_bytes": int(vram_gb * GB),
            "models": [] if role == "client" else [MODEL], "rtt_ms": rtt_ms}


SPLIT_PLAN = {"mode": "split", "host": HOST, "workers": [WORKER_A, WORKER_B],
              "rpc": ["127.0.0.1:40001", "127.0.0.1:40002"], "tensor_split": [0.5, 0.3, 0.2],
              "reason": ""}
SPLIT_PEERS = [peer(WORKER_A, "worker", 9.6), peer(WORKER_B, "worker", 6.4),
               peer(CLIENT, "client", 0)]


def split_status_from(me: str, role: str) -> dict[str, Any]:
    """The same 4-node mesh (host, 2 workers, a client) seen from one of its nodes."""
    everyone = [peer(HOST, "host", 16), *SPLIT_PEERS]
    mine = next(p for p in everyone if p["id"] == me)
    return status(node_id=me, role=role, is_host=role == "host", is_client=role == "client",
                  vram_bytes=0 if role == "client" else mine["vram_bytes"],
                  mesh_vram_bytes=32 * GB, llama_ready=role == "host",
                  model=None if role == "client" else MODEL,
                  draft="SmolLM2-135M-draft" if role != "client" else None,
                  peers=[p for p in everyone if p["id"] != me],
                  plan=SPLIT_PLAN)


def card(page: Page, node_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#diagram .node[data-id="{node_id}"]')


def link(page: Page, node_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#diagram .link[data-from="{node_id}"], '
                        f'#diagram .link[data-to="{node_id}"]')


def eventually(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """For conditions outside the page (a server's counters): poll until true."""
    wait_until(predicate, what, timeout, 0.02)


def expect_only_same_origin(requests, origin: str) -> None:  # type: ignore[no-untyped-def]
    foreign = [u for u in requests.urls if not u.startswith(origin)]
    assert not foreign, f"the page reached outside its node: {foreign}"


# ---------- every mode of the contract, from a status we control ----------

def test_split_mesh_shows_roles_links_and_shares(page: Page, fake_console, requests,
                                                 shoot) -> None:
    console = fake_console(split_status_from(HOST, "host"))
    page.goto(console.url)

    expect(page.locator("#status-line")).to_have_text("Running · 4 nodes · 32.0 GB")
    expect(card(page, HOST).locator(".badge")).to_have_text("HOST")
    expect(card(page, HOST)).to_contain_text("this node")
    expect(card(page, HOST)).to_contain_text("16.0 GB")
    expect(card(page, HOST)).to_contain_text("50% of the model")
    for worker, share in ((WORKER_A, "30%"), (WORKER_B, "20%")):
        expect(card(page, worker).locator(".badge")).to_have_text("WORKER")
        expect(card(page, worker)).to_contain_text(f"{share} of the model")
        expect(link(page, worker).locator(".link-label")).to_have_text("QUIC · RPC")
        expect(link(page, worker)).to_have_attribute("data-from", HOST)
    expect(card(page, CLIENT).locator(".badge")).to_have_text("CLIENT")
    expect(card(page, CLIENT)).not_to_contain_text("of the model")
    expect(link(page, CLIENT).locator(".link-label")).to_have_text("QUIC · HTTP")
    expect(link(page, CLIENT).locator(".link-note")).to_have_text("API tunnel")
    expect(link(page, CLIENT)).to_have_attribute("data-to", HOST)

    expect(page.locator("#model")).to_have_text(MODEL)
    expect(page.locator("#draft")).to_have_text("SmolLM2-135M-draft")
    expect(page.locator("#plan")).to_have_text("split over 3 nodes (50% / 30% / 20%)")
    expect(page.locator("#api")).to_have_text("http://127.0.0.1:9337/v1")
    expect(page.locator("#token")).to_have_value(TOKEN)
    expect(page.locator("#cmd-node")).to_have_text(f"mesh-llm --model {MODEL} --join {TOKEN}")
    expect(page.locator("#client-invite")).to_have_value(CLIENT_INVITE)
    expect(page.locator("#cmd-client")).to_have_text(
        f"mesh-llm --client --join {CLIENT_INVITE}")

    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.locator("#copy-note")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == TOKEN

    shoot(page, "split")
    page.emulate_media(color_scheme="dark")
    shoot(page, "split-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shoot(page, "split-phone")
    assert not requests.to("/api/status"), "the page polled /api/status"
    expect_only_same_origin(requests, console.url.rstrip("/"))


def test_worker_and_client_see_the_same_mesh(page: Page, fake_console, shoot) -> None:
    console = fake_console(split_status_from(WORKER_A, "worker"))
    page.goto(console.url)
    expect(card(page, WORKER_A)).to_contain_text("this node")
    expect(card(page, WORKER_A).locator(".badge")).to_have_text("WORKER")
    expect(card(page, HOST).locator(".badge")).to_have_text("HOST")
    expect(page.locator("#diagram .link-rpc .link-label")).to_have_text(["QUIC · RPC"] * 2)
    expect(page.locator("#diagram .link-http .link-note")).to_have_text(["API tunnel"])
    shoot(page, "worker")

    console.status = split_status_from(CLIENT, "client")
    console.set()
    expect(card(page, CLIENT)).to_contain_text("this node")
    expect(card(page, CLIENT).locator(".badge")).to_have_text("CLIENT")
    expect(card(page, CLIENT)).to_contain_text("API only")
    expect(page.locator("#model")).to_have_text(MODEL)  # as the host announces it
    expect(card(page, HOST).locator(".badge")).to_have_text("HOST")
    expect(card(page, HOST)).to_contain_text("50% of the model")
    expect(page.locator("#cmd-node")).to_have_text(f"mesh-llm --model {MODEL} --join {TOKEN}")
    expect(page.locator("#status-line")).to_have_text("Running · 4 nodes · 32.0 GB")
    shoot(page, "client")

    alone = status(node_id=CLIENT, role="client", is_host=False, is_client=True, host=None,
                   model=None, vram_bytes=0, mesh_vram_bytes=0, plan=None, state="starting",
                   llama_ready=False)
    console.status = alone
    console.set()
    expect(page.locator("#status-line")).to_have_text("Waiting for host")
    expect(page.locator("#diagram .placeholder")).to_have_text("Waiting for host")
    expect(link(page, CLIENT).locator(".link-label")).to_have_text("QUIC · HTTP")


def test_changes_arrive_over_sse_without_polling(page: Page, fake_console, requests) -> None:
    console = fake_console(status(state="loading", llama_ready=False))
    page.goto(console.url)
    expect(page.locator("#status-line")).to_have_text(f"Loading {MODEL}…")

    console.set(state="running", llama_ready=True)  # the model becomes ready
    expect(page.locator("#status-line")).to_have_text("Running · 1 node · 16.0 GB")

    console.set(peers=[peer(WORKER_A, "worker", 8)], mesh_vram_bytes=24 * GB)  # a peer joins
    expect(card(page, WORKER_A).locator(".badge")).to_have_text("WORKER")
    expect(link(page, WORKER_A).locator(".link-note")).to_have_text("standby")
    expect(page.locator("#status-line")).to_have_text("Running · 2 nodes · 24.0 GB")

    console.set(plan={**SPLIT_PLAN, "workers": [WORKER_A], "tensor_split": [0.67, 0.33]})
    expect(link(page, WORKER_A).locator(".link-note")).to_have_text("layers 33%")
    expect(card(page, HOST)).to_contain_text("67% of the model")

    # a role change: the worker has more VRAM now and hosts; this node becomes its worker
    console.set(role="worker", is_host=False, host=WORKER_A,
                peers=[peer(WORKER_A, "host", 32)], mesh_vram_bytes=48 * GB,
                plan={**SPLIT_PLAN, "host": WORKER_A, "workers": [HOST],
                      "tensor_split": [0.67, 0.33]})
    expect(card(page, HOST).locator(".badge")).to_have_text("WORKER")
    expect(card(page, WORKER_A).locator(".badge")).to_have_text("HOST")
    expect(card(page, HOST)).to_contain_text("33% of the model")

    console.set(peers=[], host=None, plan=None, state="waiting", role="worker")  # host leaves
    expect(card(page, WORKER_A)).to_have_count(0)
    expect(page.locator("#status-line")).to_have_text("Waiting for host")

    console.set(plan={"mode": "waiting", "host": HOST, "workers": [], "rpc": [],
                      "tensor_split": [], "reason": "waiting for more VRAM: need 35.2 GB, "
                                                    "mesh has 16.0 GB"})
    expect(page.locator("#status-line")).to_have_text(
        "Waiting for more VRAM: need 35.2 GB, mesh has 16.0 GB")
    assert len(requests.to("/api/events")) == 1, requests.urls
    assert not requests.to("/api/status"), "the page polled /api/status"


def test_page_reconnects_when_the_server_comes_back(page: Page, fake_console) -> None:
    console = fake_console(status())
    page.goto(console.url)
    expect(page.locator("#live")).to_have_text("live")
    console.stop()
    expect(page.locator("#status-line")).to_have_text("Reconnecting…")
    expect(page.locator("#live")).to_have_text("reconnecting")
    console.status = status(peers=[peer(CLIENT, "client", 0)])
    console.start()
    expect(page.locator("#live")).to_have_text("live")
    expect(card(page, CLIENT).locator(".badge")).to_have_text("CLIENT")
    expect(page.locator("#status-line")).to_have_text("Running · 2 nodes · 16.0 GB")


def test_view_functions_accept_partial_status(page: Page, fake_console) -> None:
    console = fake_console({"node_id": HOST})
    page.goto(console.url)
    expect(card(page, HOST)).to_be_visible()
    results = page.evaluate("""() => {
      const c = window.meshConsole, out = {};
      for (const [name, s] of Object.entries({
          nothing: null, empty: {}, noPeers: {peers: null, plan: {}},
          oddPeers: {node_id: "me", role: "?", peers: [null, 3, {}, {id: "x", role: "client"}],
                     plan: {mode: "split", host: "me", workers: "x", tensor_split: null}},
          noSplit: {node_id: "h", role: "host", plan: {mode: "solo", host: "h"}}})) {
        const v = c.meshView(s);
        out[name] = {status: c.statusLine(s), plan: c.planText(s),
                     commands: c.joinCommands(s), host: v.host && v.host.share,
                     roles: [v.host, ...v.workers, ...v.clients].filter(Boolean)
                              .map((n) => n.role)};
      }
      out.sse = c.sseData("data: {\\"a\\":1}\\r\\n\\r\\n: ping\\n\\ndata: [DONE]\\n\\ndata: {");
      return out;
    }""")
    assert results["nothing"]["status"] == "Connecting…"
    assert results["empty"]["roles"] == ["worker"]
    assert results["empty"]["commands"]["client"] == "mesh-llm --client --join TOKEN"
    assert results["oddPeers"]["roles"] == ["host", "client"]
    assert results["noSplit"]["host"] == 1
    assert results["noSplit"]["plan"] == "solo: the whole model on the host"
    assert results["sse"] == {"data": ['{"a":1}', "[DONE]"], "rest": "data: {"}
    expect(page.locator("#token")).to_have_value("")
    expect(page.locator("button.copy").first).to_be_disabled()


def test_chat_by_keyboard_alone(page: Page, fake_console) -> None:
    """Tab to the skip link, Enter, type, Enter sends, Escape stops; errors show as messages."""
    console = fake_console(status())  # its API has no upstream yet: "no host is ready"
    page.goto(console.url)
    expect(page.locator("#live")).to_have_text("live")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to chat")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("hello?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.error .text")).to_have_text("no host is ready")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()

    console.start_upstream()
    page.keyboard.type("Count for ever")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("please")
    expect(page.locator("#prompt")).to_have_value("Count for ever\nplease")
    page.keyboard.press("Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".text")).to_contain_text("tok5 ")
    assert console.in_flight() == 1
    page.keyboard.press("Escape")
    expect(answer.locator(".meta")).to_have_text("stopped")
    expect(page.locator("#stop")).to_be_disabled()
    eventually(lambda: console.in_flight() == 0, "the relay to end with the browser's request")

    page.keyboard.type("now fail")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.error .text").last).to_have_text("the host's stream broke off")
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#send")).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"


def test_a_networked_console_logs_in_with_the_key(page: Page, fake_console, requests,
                                                  shoot) -> None:
    """--listen-all: the console binds 0.0.0.0 and needs the API key. Seen from 127.0.0.2
    (a stand-in for a LAN address): the login form, a wrong key, the right one, the page
    with its live status and chat, and the form again once the node restarts."""
    key = "browser-test-key-42"
    console = fake_console(status(), api_key=key, bind="0.0.0.0", url_host="127.0.0.2")
    page.goto(console.url)
    expect(page.get_by_label("API key")).to_be_visible()
    assert TOKEN not in page.content()
    shoot(page, "login")

    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong key: try again.")
    assert not page.context.cookies()

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("live")  # SSE carries the cookie
    expect(page.locator("#token")).to_have_value(TOKEN)
    expect(page.locator("#status-line")).to_have_text("Running · 1 node · 16.0 GB")
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert key not in cookie["value"]
    assert key not in page.url and not [u for u in requests.urls if key in u]

    console.start_upstream()  # the chat's fetch carries the cookie too
    page.locator("#prompt").fill("Count for ever")
    page.locator("#send").click()
    expect(page.locator(".msg.assistant").last.locator(".text")).to_contain_text("tok3 ")
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_disabled()

    console.restart()  # a new node process: the old session no longer opens it
    expect(page.get_by_label("API key")).to_be_visible(timeout=30_000)
    expect_only_same_origin(requests, console.url.rstrip("/"))


# ---------- a multi-model mesh: a group per model, and the chat's model picker ----------

CODER = "Coder-F16"


def group(page: Page, model: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#diagram .group[data-model="{model}"]')


def two_model_status(default: str = MODEL) -> dict[str, Any]:
    """Four nodes, two models: SmolLM2 split host+worker A, Coder solo on worker B (which
    loads it still) with this node (HOST) a standby member of both groups; a client."""
    return split_status_from(HOST, "host") | {
        "plan": {**SPLIT_PLAN, "workers": [WORKER_A], "tensor_split": [0.6, 0.4]},
        "models": [
            {"name": MODEL, "fingerprint": "f" * 16, "host": HOST, "ready": True,
             "plan": {**SPLIT_PLAN, "workers": [WORKER_A], "tensor_split": [0.6, 0.4]},
             "nodes": [HOST, WORKER_A], "requests_per_min": 12},
            {"name": CODER, "fingerprint": "e" * 16, "host": WORKER_B, "ready": False,
             "plan": {"mode": "solo", "host": WORKER_B, "workers": [], "rpc": [],
                      "tensor_split": [1.0], "reason": ""},
             "nodes": [WORKER_B, HOST], "requests_per_min": 0},
        ],
        "default_model": default,
    }


def mesh_listing(*names: str, ready: tuple[bool, ...] = ()) -> dict[str, Any]:
    """GET /v1/models of a multi-model mesh, as the contract gives it."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "mesh-llm",
         "meta": {"mode": "solo", "host": HOST, "nodes": [HOST],
                  "ready": ready[i] if i < len(ready) else True}}
        for i, name in enumerate(names)]}


def test_a_multi_model_mesh_shows_a_group_per_model(page: Page, fake_console, shoot) -> None:
    console = fake_console(two_model_status())
    page.goto(console.url)

    expect(page.locator("#diagram .group")).to_have_count(2)
    smol, coder = group(page, MODEL), group(page, CODER)
    expect(smol.locator(".group-name")).to_have_text(MODEL)
    expect(smol.locator(".group-default")).to_have_text("default")
    expect(smol.locator(".group-state")).to_have_text("ready")
    expect(smol.locator(".group-plan")).to_have_text("split over 2 nodes (60% / 40%)")
    expect(smol.locator(".group-rpm")).to_have_text("12 req/min")
    expect(smol.locator(f'.node[data-id="{HOST}"] .badge')).to_have_text("HOST")
    expect(smol.locator(f'.node[data-id="{HOST}"]')).to_contain_text("60% of the model")
    expect(smol.locator(f'.node[data-id="{WORKER_A}"] .badge')).to_have_text("WORKER")
    expect(smol.locator(f'.link[data-to="{WORKER_A}"]')).to_have_attribute("data-from", HOST)
    expect(smol.locator(f'.link[data-to="{WORKER_A}"] .link-note')).to_have_text("layers 40%")
    expect(smol.locator(f'.node[data-id="{WORKER_B}"]')).to_have_count(0)

    expect(coder.locator(".group-state")).to_have_text("not ready")
    expect(coder.locator(".group-default")).to_have_count(0)
    expect(coder.locator(".group-plan")).to_have_text("solo: the whole model on the host")
    expect(coder.locator(f'.node[data-id="{WORKER_B}"] .badge')).to_have_text("HOST")
    expect(coder.locator(f'.node[data-id="{HOST}"] .badge')).to_have_text("WORKER")
    expect(coder.locator(f'.node[data-id="{HOST}"]')).to_contain_text("this node")
    expect(coder.locator(f'.link[data-to="{HOST}"]')).to_have_attribute("data-from", WORKER_B)
    expect(coder.locator(f'.link[data-to="{HOST}"] .link-note')).to_have_text("standby")
    expect(coder.locator(f'.node[data-id="{WORKER_A}"]')).to_have_count(0)

    client = page.locator(f'#diagram .tier-clients .node[data-id="{CLIENT}"]')
    expect(client.locator(".badge")).to_have_text("CLIENT")
    expect(link(page, CLIENT).locator(".link-label")).to_have_text("QUIC · HTTP")
    expect(page.locator("#status-line")).to_have_text("Running · 4 nodes · 32.0 GB")
    shoot(page, "models")
    page.emulate_media(color_scheme="dark")
    shoot(page, "models-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shoot(page, "models-phone")
    page.set_viewport_size(LAPTOP)

    # Coder's node leaves: one model again, and the diagram is today's single-model one
    console.set(models=two_model_status()["models"][:1], peers=SPLIT_PEERS[:1] + SPLIT_PEERS[2:])
    expect(page.locator("#diagram .group")).to_have_count(0)
    expect(card(page, HOST).locator(".badge")).to_have_text("HOST")
    expect(link(page, WORKER_A).locator(".link-note")).to_have_text("layers 40%")
    expect(page.locator("#diagram").get_by_text(CODER)).to_have_count(0)


def test_shared_models_are_boxes_of_their_own(page: Page, fake_console, shoot) -> None:
    console = fake_console(status(mesh_shared=[{"name": "qwen2.5-coder:7b",
                                                "nodes": [WORKER_A]}]))
    page.goto(console.url)
    shared = page.locator('#diagram .group.shared[data-model="qwen2.5-coder:7b"]')
    expect(shared.locator(".group-name")).to_have_text("qwen2.5-coder:7b")
    expect(shared.locator(".group-state")).to_have_text("shared")
    expect(shared.locator(".group-plan")).to_contain_text(WORKER_A[:8])
    expect(card(page, HOST).locator(".badge")).to_have_text("HOST")  # the diagram stays
    shoot(page, "shared")
    console.set(mesh_shared=[])
    expect(page.locator("#diagram .group.shared")).to_have_count(0)


def test_the_model_picker_follows_the_mesh_and_names_the_model(page: Page,
                                                               fake_console) -> None:
    console = fake_console(two_model_status(default=CODER.lower()))
    console.start_upstream(mesh_listing(MODEL, CODER, ready=(True, False)))
    page.goto(console.url)
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator("option")).to_have_text([MODEL, f"{CODER} (not ready)"])
    expect(picker).to_have_value(CODER)  # the mesh's default, whatever its case

    page.locator("#prompt").fill("Count")
    page.locator("#send").click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".text")).to_contain_text(f"[{CODER}] tok0 tok1 ")
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_disabled()

    picker.select_option(MODEL)
    console.start_upstream(mesh_listing(MODEL, CODER))  # Coder is ready now
    console.set(models=[{**m, "ready": True} for m in two_model_status()["models"]],
                default_model=CODER)
    expect(picker.locator("option")).to_have_text([MODEL, CODER])  # refetched on the change
    expect(picker).to_have_value(MODEL)  # which does not undo the viewer's choice
    page.locator("#prompt").fill("Count again")
    page.locator("#send").click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".text")).to_contain_text(f"[{MODEL}] tok0 tok1 ")
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_disabled()

    # a model leaves the mesh: the next status change refetches the list, the pick goes
    console.start_upstream(mesh_listing(CODER))
    console.set(models=two_model_status()["models"][1:])
    expect(picker.locator("option")).to_have_text([CODER])
    expect(picker).to_have_value(CODER)


def test_model_view_functions_accept_any_listing(page: Page, fake_console) -> None:
    console = fake_console({"node_id": HOST})
    page.goto(console.url)
    expect(card(page, HOST)).to_be_visible()
    got = page.evaluate("""() => {
      const c = window.meshConsole;
      const llama = {object: "list", data: [{id: "SmolLM2-135M-Instruct", object: "model",
                                             owned_by: "llamacpp", meta: {n_params: 1}}]};
      const mesh = {object: "list", data: [
        {id: "A", meta: {ready: true, fingerprint: "fa"}},
        {id: "B", meta: {ready: false, fingerprint: "fb", default: true}}, {id: "A"}, null,
        {id: 3}, {}]};
      const ids = (x) => c.modelChoices(x).map((m) => m.label);
      const choices = c.modelChoices(mesh);
      return {
        llama: ids(llama), mesh: ids(mesh),
        junk: [null, 3, "x", {data: "x"}, {data: [null]}].map(ids),
        picked: c.chosenModel(choices, "A", "B"), gone: c.chosenModel(choices, "Z", "b"),
        byPrint: c.chosenModel(choices, "", "FA"), flagged: c.chosenModel(choices, "", null),
        none: c.chosenModel([], "A", "B"),
        groups: [null, {}, {models: "x"}, {models: [{name: "one"}]},
                 {models: [null, {name: "only"}]}].map((s) => c.groupsView(s).groups.length),
        odd: c.groupsView({node_id: "me", peers: [{id: "p", role: "client"}],
                           models: [{}, {name: "m", host: 5, nodes: [null, {id: "me"}, 7],
                                         plan: {mode: "split", workers: "x"}}]}),
      };
    }""")
    assert got["llama"] == [MODEL]
    assert got["mesh"] == ["A", "B (not ready)"]
    assert got["junk"] == [[], [], [], [], []]
    assert (got["picked"], got["gone"], got["byPrint"], got["flagged"], got["none"]) == (
        "A", "B", "A", "B", "")
    assert got["groups"] == [0, 0, 0, 0, 0]  # one model or none: today's diagram
    odd = got["odd"]
    assert [g["name"] for g in odd["groups"]] == ["?", "m"]
    assert odd["groups"][1]["view"]["host"] is None
    assert [w["id"] for w in odd["groups"][1]["view"]["workers"]] == ["me"]
    assert [n["id"] for n in odd["clients"]] == ["p"] and odd["others"] == []


# ---------- real nodes: the real model, chat, stop, restart, bad input ----------

def start_solo(make_node, *args: str) -> NodeProcess:  # type: ignore[no-untyped-def]
    return make_node("node", *args).wait_ready(NODE_S)


def bound_answers(page: Page, max_tokens: int = 64) -> None:
    """Keep SmolLM2 brief: the page's own request, plus temperature 0 and a token cap."""
    def handle(route) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "temperature": 0,
                                              "max_tokens": max_tokens}))
    page.route("**/api/chat", handle)


def expect_streamed_answer(page: Page, prompt: str) -> str:
    """Send by keyboard, and check the answer grew in several steps, not all at once."""
    page.evaluate("""() => {
      window.answerSteps = 0;
      new MutationObserver(() => { window.answerSteps += 1; })
        .observe(document.getElementById("messages"),
                 {subtree: true, characterData: true, childList: true});
    }""")
    page.locator("#prompt").focus()
    page.keyboard.type(prompt)
    page.keyboard.press("Enter")
    expect(page.locator("#stop")).to_be_enabled()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".meta")).to_contain_text("tok/s", timeout=ANSWER_MS)
    assert page.evaluate("window.answerSteps") > 4, "the answer did not stream"
    expect(page.locator("#send")).to_be_enabled()
    return answer.locator(".text").inner_text()


def test_host_console_shows_the_node_and_streams_chat(page: Page, make_node,
                                                      requests, shoot) -> None:
    node = start_solo(make_node)
    bound_answers(page)
    page.goto(node.console)
    me = node.status()["node_id"]
    expect(card(page, me).locator(".badge")).to_have_text("HOST")
    expect(card(page, me)).to_contain_text("this node")
    expect(card(page, me)).to_contain_text("100% of the model")
    expect(page.locator("#status-line")).to_have_text(re.compile(r"^Running · 1 node · \d"))
    expect(page.locator("#model")).to_have_text(MODEL)
    expect(page.locator("#plan")).to_have_text("solo: the whole model on the host")
    expect(page.locator("#api")).to_have_text(f"http://127.0.0.1:{node.api_port}/v1")

    assert expect_streamed_answer(page, "What is the capital of France?").strip()
    assert expect_streamed_answer(page, "And of Italy? One word.").strip()  # a second turn
    expect(page.locator(".msg.user")).to_have_count(2)
    shoot(page, "host")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shoot(page, "host-phone")
    assert not requests.to("/api/status"), "the page polled /api/status"
    expect_only_same_origin(requests, node.console)


def test_the_model_picker_lists_the_nodes_model_and_chat_uses_it(page: Page,
                                                                 make_node) -> None:
    """Today's single-model node: llama-server's own /v1/models fills the picker, and the
    chat names the model picked."""
    node = start_solo(make_node)
    sent: list[dict[str, Any]] = []

    def handle(route) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(route.request.post_data or "{}")
        sent.append(body)
        route.continue_(post_data=json.dumps({**body, "temperature": 0, "max_tokens": 32}))
    page.route("**/api/chat", handle)
    page.goto(node.console)
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator("option")).to_have_text([MODEL], timeout=NODE_S * 1000)
    expect(picker).to_have_value(MODEL)
    code, listing = http_json(node.api + "/v1/models")
    assert code == 200 and [m["id"] for m in listing["data"]] == [MODEL]

    assert expect_streamed_answer(page, "What is the capital of France?").strip()
    assert [body.get("model") for body in sent] == [MODEL]
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-model", MODEL)


def test_stop_ends_the_answer_and_the_generation(page: Page, make_node) -> None:
    node = start_solo(make_node)
    page.goto(node.console)
    page.locator("#prompt").fill("Write a very long story about a lighthouse keeper.")
    page.locator("#send").click()
    answer = page.locator(".msg.assistant").last.locator(".text")
    expect(answer).to_have_text(re.compile(r"\S.{40}", re.S), timeout=ANSWER_MS)
    assert node.status()["api_in_flight"] == 1
    page.locator("#stop").click()
    expect(page.locator(".msg.assistant.stopped .meta")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#prompt")).to_be_focused()
    node.wait_for(lambda: node.status()["api_in_flight"] == 0, "the relay to end", 30)
    assert http_json(node.api + "/health")[0] == 200


def test_waiting_node_says_why_and_chat_shows_the_api_error(page: Page, make_node,
                                                            shoot) -> None:
    node = make_node("node", "--max-vram", "0.05")
    node.wait_for(lambda: node.status()["state"] == "waiting", "the waiting state", NODE_S)
    code, body = http_json(node.api + "/health")
    assert code == 503
    page.goto(node.console)
    expect(page.locator("#status-line")).to_have_text(
        re.compile(r"^Waiting for more VRAM: need \d+\.\d GB"))
    page.locator("#prompt").fill("Anyone there?")
    page.locator("#send").click()
    # The request waits in the node's queue (30 s) for a model to get ready, then fails.
    expect(page.locator(".msg.error .text")).to_have_text(body["error"]["message"],
                                                          timeout=ANSWER_MS)
    shoot(page, "waiting")


def test_page_reconnects_when_the_node_restarts(page: Page, make_node) -> None:
    node = start_solo(make_node)
    page.goto(node.console)
    expect(page.locator("#status-line")).to_have_text(re.compile("^Running"))
    assert node.stop() == 0  # within 10 s, though the page holds an event stream open
    expect(page.locator("#status-line")).to_have_text("Reconnecting…")
    node.start().wait_ready(NODE_S)
    expect(page.locator("#status-line")).to_have_text(re.compile("^Running"), timeout=30_000)
    expect(page.locator("#live")).to_have_text("live")


def open_sse(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    seen = b""
    while b"event: status" not in seen:
        chunk = sock.recv(65536)
        assert chunk, "the SSE stream closed before its first event"
        seen += chunk
    return sock


def test_dropped_event_streams_do_not_leak(make_node) -> None:
    node = make_node("node")
    node.wait_for(lambda: node.status(), "/api/status", NODE_S)
    port = node.console_port
    assert port is not None
    socks = [open_sse(port) for _ in range(100)]
    assert node.status()["console_streams"] == 100
    for sock in socks:
        sock.close()
    node.wait_for(lambda: node.status()["console_streams"] == 0, "streams to close", 30)


def post_chat(node: NodeProcess, body: bytes,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(node.console + "/api/chat", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_chat_input_gets_4xx_json_and_the_node_carries_on(make_node) -> None:
    node = start_solo(make_node)
    message = {"role": "user", "content": "Say hi."}
    cases = [
        (b"{not json", 400), (b"[]", 400), (b"{}", 400), (b'{"messages": []}', 400),
        (b'{"messages": "hi"}', 400), (b'{"messages": [1]}', 400),
        (json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(),
         413),
        # fits the console's limit, not the model's context: llama-server's own 400, relayed
        (json.dumps({"messages": [{"role": "user", "content": "hello " * 60_000}]}).encode(),
         400),
    ]
    for body, code in cases:
        got, error = post_chat(node, body)
        assert got == code, (body[:40], got, error)
        assert error["error"]["message"], error
    got, error = post_chat(node, json.dumps({"messages": [message]}).encode(),
                           {"Origin": "http://evil.example"})
    assert got == 403 and "cross-origin" in error["error"]["message"]

    assert http_json(node.api + "/health")[0] == 200
    got, stream = post_chat(node, json.dumps({"messages": [message], "max_tokens": 8}).encode())
    assert got == 200 and stream.startswith(b"data: "), stream[:200]
    assert node.status()["state"] == "running"


def test_a_real_mesh_shows_every_role(context, make_node, shoot) -> None:  # type: ignore[no-untyped-def]
    """Host, worker and lite client as real processes: each console shows the same mesh,
    and the host's page follows a node joining and leaving over SSE."""
    host = make_node("host", "--split", "--max-vram", "2").wait_ready(NODE_S)
    token = host.status()["token"]
    watching = context.new_page()
    watching.goto(host.console)
    worker = make_node("worker", "--max-vram", "1", "--join", token)
    client = make_node("client", "--client", "--join", token)
    ids = {}
    for node, role in ((host, "host"), (worker, "worker"), (client, "client")):
        ids[role] = node.wait_for(lambda n=node: n.status()["node_id"], "a node id", NODE_S)
    host.wait_for(lambda: len(host.status()["peers"]) == 2, "both peers", NODE_S)
    expect(card(watching, ids["worker"])).to_be_visible(timeout=2000)  # pushed, not polled
    expect(card(watching, ids["client"])).to_be_visible(timeout=2000)
    host.wait_for(lambda: (host.status()["plan"] or {}).get("mode") == "split"
                  and host.status()["llama_ready"], "the split plan", NODE_S)
    for node, name in ((host, "mesh-host"), (worker, "mesh-worker"), (client, "mesh-client")):
        page = context.new_page()
        page.goto(node.console)
        for role, node_id in ids.items():
            expect(card(page, node_id).locator(".badge")).to_have_text(
                role.upper(), timeout=NODE_S * 1000)
        expect(link(page, ids["worker"]).locator(".link-label")).to_have_text("QUIC · RPC")
        expect(link(page, ids["worker"]).locator(".link-note")).to_have_text(
            re.compile(r"^layers 3\d%$"), timeout=NODE_S * 1000)
        expect(link(page, ids["client"]).locator(".link-label")).to_have_text("QUIC · HTTP")
        expect(link(page, ids["client"]).locator(".link-note")).to_have_text("API tunnel")
        if node is client:  # chat from a node without a model: through the API tunnel
            client.wait_ready(NODE_S)
            bound_answers(page)
            assert expect_streamed_answer(page, "What is the capital of France?").strip()
        shoot(page, name)
        page.close()
    assert client.stop() == 0
    host.wait_for(lambda: len(host.status()["peers"]) == 1, "the client's goodbye", NODE_S)
    expect(card(watching, ids["client"])).to_have_count(0, timeout=2000)
