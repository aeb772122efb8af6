"""The mesh as an attacker sees it: real nodes on 127.0.0.1, and an intruder that is a real
Mesh in the test's own event loop, holding an invite it was given (or a member's token).

Every check here failed before invites and least privilege existed: any token holder could
talk to a worker's ggml-rpc-server, reach llama-server's other endpoints through the HTTP
tunnel, and win the election by announcing more memory than exists.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mesh_llm.mesh import Announcement, Mesh, Stream, StreamType
from mesh_llm.mesh.announcement import Hosted
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import decode_token
from nodes import NodeProcess, greedy, http_json

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


async def intruder(tmp_path: Path, token: str, **announcement: object) -> Mesh:
    identity = Identity.generate()
    fields: dict[str, Any] = {"role": "worker", "vram_bytes": 1000, **announcement}
    fields["models"] = tuple(fields.get("models", ()))
    mesh = Mesh(identity, None, Announcement(identity.node_id, **fields),
                bind_host="127.0.0.1")
    await mesh.start()
    await mesh.join([token], timeout=10)
    return mesh


async def reply_to(mesh: Mesh, peer: str, kind: int, payload: bytes, limit: int = 4096,
                   timeout: float = 10.0) -> bytes:
    """What `peer` sends back on a stream of `kind` after `payload` (b"" when refused)."""
    stream: Stream = await mesh.open_stream(peer, kind)
    stream.write_nowait(payload)
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while len(got) < limit:
                chunk = await stream.read(limit)
                if not chunk:
                    break
                got += chunk
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        pass
    return got


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def wait_status(node: NodeProcess, check, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(node.wait_for, lambda: check(node.status()), what, timeout)


async def test_a_client_invite_reaches_the_api_and_nothing_else(make_node, tmp_path) -> None:
    host = make_node("host").wait_ready()
    invites = host.status()["invites"]
    assert decode_token(invites["client"]).kind == "client"
    assert invites["worker"] == host.status()["token"]
    # The intruder claims far more memory than the host, and to be a host with the model.
    mesh = await intruder(tmp_path, invites["client"], role="host", vram_bytes=10**12,
                          models=["SmolLM2-135M-Instruct"], ready=True)
    try:
        hid = host.status()["node_id"]
        seen = await wait_status(host, lambda s: [p for p in s["peers"]
                                                  if p["id"] == mesh.node_id], "the intruder")
        assert seen[0]["role"] == "client" and seen[0]["vram_bytes"] == 0
        assert seen[0]["grant"] == "client"
        assert host.status()["host"] == hid and host.status()["role"] == "host"
        # The API's routes answer through the tunnel...
        models = await reply_to(mesh, hid, StreamType.HTTP_TUNNEL, get("/v1/models"))
        assert models.startswith(b"HTTP/1.1 200") and b"SmolLM2" in models
        # ...llama-server's other endpoints, a second request and the RPC server do not.
        for path in ("/props", "/slots", "/metrics"):
            assert await reply_to(mesh, hid, StreamType.HTTP_TUNNEL, get(path)) == b""
        assert await reply_to(mesh, hid, StreamType.HTTP_TUNNEL,
                              get("/v1/models") + get("/props")) == b""
        hello = bytes([14]) + (4).to_bytes(8, "little") + bytes(4)  # ggml-rpc HELLO
        assert await reply_to(mesh, hid, StreamType.RPC_TUNNEL, hello) == b""
        assert "Paris" in greedy(host, PROMPT, 16)  # the host is unharmed
    finally:
        await mesh.stop()


async def test_a_member_may_not_use_a_workers_rpc_server_nor_claim_huge_memory(
        make_node, tmp_path) -> None:
    host = make_node("host", "--max-vram", "2").wait_ready()
    worker = make_node("worker", "--max-vram", "1", "--join", host.status()["token"])
    worker.wait_for(lambda: worker.status()["host"] == host.status()["node_id"], "a host")
    hid, wid = host.status()["node_id"], worker.status()["node_id"]
    mesh = await intruder(tmp_path, host.status()["token"])
    try:
        await wait_status(worker, lambda s: any(p["id"] == mesh.node_id for p in s["peers"]),
                          "the worker to see the member")
        hello = bytes([14]) + (4).to_bytes(8, "little") + bytes(4)
        # The worker's ggml-rpc-server is for the host of its plan, not for any member.
        assert await reply_to(mesh, wid, StreamType.RPC_TUNNEL, hello, timeout=15) == b""
        # The API tunnel is served by the host only.
        assert await reply_to(mesh, wid, StreamType.HTTP_TUNNEL, get("/v1/models")) == b""
        assert (await reply_to(mesh, hid, StreamType.HTTP_TUNNEL, get("/health"))
                ).startswith(b"HTTP/1.1 200")
        out = worker.output() + host.output()
        assert "refused an RPC tunnel from " + mesh.node_id[:12] in out
        # A claim of more memory than one machine has drops the liar; it is never elected.
        mesh._announcement = replace(mesh._announcement, vram_bytes=2**61)
        mesh._membership.broadcast()
        await wait_status(host, lambda s: all(p["id"] != mesh.node_id for p in s["peers"]),
                          "the host to drop the liar")
        assert host.status()["host"] == hid and worker.status()["host"] == hid
    finally:
        await mesh.stop()


async def test_a_member_that_claims_to_host_a_model_gets_none_of_its_requests(
        make_node, tmp_path) -> None:
    """The node waits for VRAM, so its model has no ready host; a member that announces it
    hosts that model, ready, is not one of the model's nodes: no request goes to it."""
    node = make_node("node", "--max-vram", "0.05")
    node.wait_for(lambda: node.status()["state"] == "waiting", "the waiting state")
    key = node.status()["models"][0]["fingerprint"]
    mesh = await intruder(tmp_path, node.status()["token"], models=[],
                          model_file=False, hosted=(Hosted(key, None, True),))
    try:
        await wait_status(node, lambda s: any(p["id"] == mesh.node_id for p in s["peers"]),
                          "the node to see the member")
        (model,) = node.status()["models"]
        assert model["ready"] is False and model["host"] != mesh.node_id
        code, body = http_json(node.api + "/health")
        assert code == 503 and "VRAM" in body["error"]["message"]
        listed = http_json(node.api + "/v1/models")[1]["data"]
        assert [m["meta"]["ready"] for m in listed] == [False]
    finally:
        await mesh.stop()


def test_trusted_hosts_limit_who_hosts(make_node) -> None:
    small = make_node("small", "--max-vram", "1").wait_ready()
    sid = small.status()["node_id"]
    big = make_node("big", "--max-vram", "2", "--trust-hosts", sid, "--join",
                    small.status()["token"])
    big.wait_for(lambda: big.status()["host"] == sid and big.status()["peers"], "a host")
    # Without the rule the bigger node would host; with it, the small one keeps hosting.
    assert big.status()["role"] == "worker" and big.status()["trusted_hosts"] == [sid]
    assert "Paris" in greedy(big, PROMPT, 16)


def test_a_restarted_node_has_the_same_token_and_finds_its_mesh(make_node) -> None:
    port = free_udp_port()
    first = make_node("first", "--bind-port", str(port)).wait_ready()
    token = first.status()["token"]
    second = make_node("second", "--join", token).wait_ready()
    first.wait_for(lambda: first.status()["peers"], "the second node")
    assert first.stop() == 0
    second.wait_for(lambda: not second.status()["peers"], "the goodbye")
    again = NodeProcess(first.home, "--bind-port", str(port)).start()
    try:
        again.wait_ready()
        assert again.status()["token"] == token
        for node in (again, second):
            node.wait_for(lambda n=node: n.status()["peers"], "the two to meet again", 15)
        hosts = {again.status()["host"], second.status()["host"]}
        assert len(hosts) == 1 and None not in hosts
    finally:
        again.stop()


def test_new_mesh_changes_the_secret(make_node) -> None:
    node = make_node("n").wait_ready()
    token = node.status()["token"]
    node.stop()
    again = NodeProcess(node.home, "--new-mesh").start()
    try:
        again.wait_ready()
        assert decode_token(again.status()["token"]).secret != decode_token(token).secret
    finally:
        again.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("mesh-llm:")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_lines_for_bind_problems(tmp_path) -> None:
    line = one_line(run_cli("--home", str(tmp_path / "a"), "--port", "0", "--bind-host",
                            "203.0.113.7"))
    assert "not an address of this machine" in line
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        line = one_line(run_cli("--home", str(tmp_path / "b"), "--port", "0", "--bind-host",
                                "127.0.0.1", "--bind-port", str(port)))
    assert f"UDP port {port}" in line and "already in use" in line


def test_a_refused_join_exits_unless_standalone(make_node, tmp_path) -> None:
    host = make_node("host").wait_ready()
    good = decode_token(host.status()["token"])
    from mesh_llm.mesh.invites import InviteToken, encode_token, new_secret

    wrong = encode_token(InviteToken(good.node_id, good.addrs, new_secret()))
    result = run_cli("--home", str(tmp_path / "w"), "--port", "0", "--bind-host", "127.0.0.1",
                     "--join", wrong)
    line = one_line(result)
    assert "could not join" in line and "--standalone" in line
    alone = make_node("alone", "--model", "SmolLM2-135M-Instruct", "--join", wrong,
                      "--standalone").wait_ready()
    assert "serving alone" in (alone.status()["reason"] or "")


def test_invite_subcommand_mints_invites_that_expire(make_node, tmp_path) -> None:
    host = make_node("host").wait_ready()
    minted = run_cli("invite", "--client", "--home", str(host.home))
    assert minted.returncode == 0, minted.stderr
    text = minted.stdout.strip()
    assert decode_token(text).kind == "client"
    client = make_node("client", "--client", "--join", text).wait_ready()
    assert client.status()["token"] == "" and client.status()["invites"]["client"] is None
    assert "Paris" in greedy(client, PROMPT, 16)
    short = run_cli("invite", "--worker", "--expires", "1s", "--home", str(host.home))
    tok = decode_token(short.stdout.strip())
    assert tok.kind == "worker" and tok.invite is not None and tok.invite.expires > 0
    while time.time() < tok.invite.expires:  # the expiry is wall-clock time itself
        time.sleep(0.05)
    line = one_line(run_cli("--home", str(tmp_path / "late"), "--port", "0", "--bind-host",
                            "127.0.0.1", "--join", short.stdout.strip()))
    assert "expired" in line
    assert "--worker" in one_line(run_cli("invite", "--home", str(tmp_path / "x")))
    assert "no mesh in" in one_line(run_cli("invite", "--client", "--home",
                                            str(tmp_path / "none")))
    assert "client invite" in one_line(run_cli("--home", str(tmp_path / "y"), "--join", text))
    json.dumps(http_json(host.api + "/health"))
