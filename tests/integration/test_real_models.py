"""A real user's path with a real model: split GGUF sets, download on demand, true sizes.

SmolLM2 is re-written as a 3-part split set (gguf's GGUFWriter(split_max_tensors=N)) and
served by a loopback Hugging Face hub (tests/hub.py) through HF_ENDPOINT; the Hugging Face
cache is a folder under tmp (HF_HOME). Nodes and `mesh-llm download` run as real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGUFReader

from hub import LoopbackHub
from modelgen import smollm2_path, split_gguf
from nodes import NodeProcess, greedy
from ports import free_port
from waiting import wait_until

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
STEM = "SmolLM2-135M-Instruct-Q4_1"
PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]
CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """SmolLM2 as three parts, the way the official Qwen repositories publish big models."""
    src = smollm2_path()
    n = len(GGUFReader(str(src), "r").tensors)
    folder = tmp_path_factory.mktemp("split")
    made = split_gguf(src, folder / f"{STEM}.gguf", max_tensors=-(-n // 3))
    assert [p.name for p in made] == [f"{STEM}-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    return made


@pytest.fixture(scope="module")
def solo_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    node = NodeProcess(tmp_path_factory.mktemp("solo") / "home", "--no-draft").start()
    try:
        return greedy(node.wait_ready(), PROMPT, 40)
    finally:
        node.stop()


@pytest.fixture
def hub(parts: list[Path]) -> Iterator[LoopbackHub]:
    server = LoopbackHub()
    for part in parts:
        server.add(REPO, part.name, part)
    readme = parts[0].parent / "README.md"
    readme.write_text("# SmolLM2 split in three\n")
    server.add(REPO, "README.md", readme)  # not a model: never fetched
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hf_env(tmp_path: Path, hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of every process of the test: the loopback hub and a fresh cache."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return dict(os.environ)


def mesh_llm(*args: str, env: dict[str, str] | None = None,
             timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", *args], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=timeout,
                          stdin=subprocess.DEVNULL)


def failed_in_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a run that must fail cleanly: non-zero, no traceback, and the error
    is one `mesh-llm:` line (progress lines may come before it)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mesh-llm:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    return errors[0]


def node_args(home: Path, *args: str) -> list[str]:
    return ["--home", str(home), "--port", str(free_port()), "--bind-host", "127.0.0.1",
            "--no-draft", *args]


# --- download on demand, then serve ------------------------------------------------------------

def test_quant_download_resumes_and_answers_like_the_unsplit_file(
        make_node, hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path],
        solo_text: str) -> None:
    cut = parts[1].stat().st_size // 2
    hub.faults.cut_after[parts[1].name] = cut  # the connection drops half way through part 2

    node = make_node("q", "--model", f"{REPO}:Q4_1", "--no-draft").wait_ready()

    assert hub.gets(parts[1].name) == [None, f"bytes={cut}-"], "resumed where it was cut"
    assert all(len(hub.gets(p.name)) == 1 for p in (parts[0], parts[2]))
    status = node.status()
    assert status["model"] == STEM, "the name without the shard suffix"
    assert status["model_bytes"] == sum(p.stat().st_size for p in parts)
    files = [Path(f) for f in status["model_files"]]
    assert [f.name for f in files] == [p.name for p in parts]
    assert all(str(f).startswith(hf_env["HF_HOME"]) for f in files), "in the HF cache"
    assert [f.read_bytes() == p.read_bytes() for f, p in zip(files, parts, strict=True)] == \
        [True] * 3
    out = node.output()
    for p in parts:  # plain progress lines: the node's output is not a terminal
        assert f"{p.name}: downloading" in out and f"{p.name}: done" in out
    assert "resuming" in out
    assert greedy(node, PROMPT, 40) == solo_text

    # the next start finds it in the cache: not a request to the hub
    node.stop()
    before = len(hub.log)
    again = make_node("q2", "--model", f"{REPO}:Q4_1", "--no-draft").wait_ready()
    assert len(hub.log) == before
    assert again.status()["model_bytes"] == status["model_bytes"]


def test_a_split_host_and_a_worker_with_the_split_file_take_references(
        make_node, parts: list[Path], solo_text: str) -> None:
    host = make_node("h", "--model", str(parts[0]), "--split", "--max-vram", "2",
                     "--no-draft").wait_ready()
    # the worker names the set by its second part: any part names the whole set
    worker = make_node("w", "--model", str(parts[1]), "--max-vram", "1", "--no-draft",
                       "--join", host.status()["token"]).wait_ready()

    def split_loaded() -> bool:
        s = host.status()
        return bool(s["llama_ready"] and s["plan"] and s["plan"]["mode"] == "split")

    host.wait_for(split_loaded, "the split plan to be loaded", 120)
    hs, ws = host.status(), worker.status()
    assert hs["model"] == ws["model"] == STEM
    assert hs["model_files"] == ws["model_files"] == [str(p) for p in parts]
    tunnel = hs["rpc_tunnel"]
    assert tunnel["weight_bytes"] > 10e6
    assert tunnel["weight_bytes_sent"] <= 0.01 * tunnel["weight_bytes"], tunnel
    assert tunnel["weight_bytes_referenced"] >= 0.99 * tunnel["weight_bytes"], tunnel
    assert greedy(worker, PROMPT, 40) == solo_text


def test_solo_or_split_is_decided_on_all_parts(make_node, parts: list[Path]) -> None:
    total = sum(p.stat().st_size for p in parts)
    first = parts[0].stat().st_size
    vram_gb = (first * 1.1 + total * 1.1) / 2 / 1e9  # part 1 would fit, the model does not
    assert first * 1.1 < vram_gb * 1e9 < total * 1.1
    node = make_node("v", "--model", str(parts[0]), "--max-vram", f"{vram_gb:.4f}",
                     "--no-draft")
    status = node.wait_for(lambda: (s := node.status())["state"] == "waiting" and s, "waiting")
    assert status["model_bytes"] == total
    assert "waiting for more VRAM" in status["reason"]
    assert status["llama_server"] is None, "nothing loads a model that does not fit"


# --- what fails, fails in one line with nothing started -----------------------------------------

def broken_copy(parts: list[Path], dst: Path, how: str) -> Path:
    dst.mkdir()
    for p in parts:
        shutil.copy(p, dst / p.name)
    copies = [dst / p.name for p in parts]
    if how == "missing":
        copies[2].unlink()
    elif how == "truncated":
        with open(copies[2], "r+b") as f:
            f.truncate(copies[2].stat().st_size - 4096)
    elif how == "foreign":  # part 2 of another split of the same weights
        src = smollm2_path()
        n = len(GGUFReader(str(src), "r").tensors)
        other = dst / "other"
        other.mkdir()
        made = split_gguf(src, other / f"{STEM}.gguf", max_tensors=-(-n // 3) + 7)
        shutil.copy(made[1], copies[1])
    return copies[0]


@pytest.mark.parametrize(("how", "says"), [("missing", "part 3 of 3 is missing"),
                                           ("foreign", "another model"),
                                           ("truncated", "damaged GGUF file")])
def test_a_bad_split_set_is_one_line_with_nothing_started(
        tmp_path: Path, parts: list[Path], how: str, says: str) -> None:
    first = broken_copy(parts, tmp_path / how, how)
    home = tmp_path / "home"
    line = failed_in_one_line(mesh_llm(*node_args(home, "--model", str(first))))
    assert says in line
    assert not (home / "logs" / "llama-server.log").exists()
    assert not (home / "logs" / "ggml-rpc-server.log").exists()


def test_a_wrong_size_from_the_hub_is_refused(
        tmp_path: Path, hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    real = parts[2].stat().st_size
    hub.faults.advertise_size[parts[2].name] = real + 1000
    home = tmp_path / "home"
    line = failed_in_one_line(mesh_llm(*node_args(home, "--model", f"{REPO}:Q4_1")))
    assert f"came as {real} bytes, the hub says {real + 1000}" in line
    assert not (home / "logs" / "llama-server.log").exists()
    blobs = Path(hf_env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not any(b.name.endswith(".incomplete") for b in blobs.iterdir()), "deleted"


def test_bytes_that_do_not_match_the_sha256_are_refused(
        hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    hub.faults.corrupt.add(parts[0].name)
    line = failed_in_one_line(mesh_llm("download", f"{REPO}:Q4_1"))
    assert f"{parts[0].name} does not match its sha256" in line
    assert hub.gets(parts[1].name) == [], "stops at the first bad part"


def test_offline_is_one_line_within_15_s(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HOME": str(tmp_path / "hf")}
    home = tmp_path / "home"
    line = failed_in_one_line(mesh_llm(*node_args(home, "--model", "Qwen2.5-3B"), env=env,
                                       timeout=15))
    url = (f"http://127.0.0.1:{port}/Qwen/Qwen2.5-3B-Instruct-GGUF/resolve/main/"
           "qwen2.5-3b-instruct-q4_k_m.gguf")
    assert "cannot reach" in line and url in line and "by hand" in line
    assert "--model /path/to/qwen2.5-3b-instruct-q4_k_m.gguf" in line
    line = failed_in_one_line(mesh_llm("download", f"{REPO}:Q4_1", env=env, timeout=15))
    assert f"http://127.0.0.1:{port}/{REPO}/tree/main by hand" in line


def test_a_hub_that_never_answers_is_one_line_within_15_s(
        hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    hub.faults.stall.add(parts[0].name)
    line = failed_in_one_line(mesh_llm("download", f"hf://{REPO}/{parts[0].name}",
                                       timeout=15))
    assert "no answer within" in line and "by hand" in line


def test_not_enough_disk_is_refused_before_the_first_byte(
        hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    hub.faults.advertise_size[parts[1].name] = 10**16  # 10 PB
    line = failed_in_one_line(mesh_llm("download", f"{REPO}:Q4_1"))
    assert "not enough disk space" in line and "is needed" in line
    assert all(hub.gets(p.name) == [] for p in parts), "not one byte was asked for"


# --- the other ways to name a hub file, and `mesh-llm models` ----------------------------------

def test_hf_urls_and_the_models_listing(hub: LoopbackHub, hf_env: dict[str, str],
                                        parts: list[Path]) -> None:
    got = mesh_llm("download", f"hf://{REPO}/{parts[1].name}")  # any part: the whole set
    assert got.returncode == 0, got.stderr
    assert all(len(hub.gets(p.name)) == 1 for p in parts)
    url = f"{hub.url}/{REPO}/resolve/main/{parts[0].name}"
    again = mesh_llm("download", url)
    assert again.returncode == 0, again.stderr
    assert all(len(hub.gets(p.name)) == 1 for p in parts), "already in the cache"

    listing = mesh_llm("models", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    other = [r for r in rows["other"] if r["repo"] == REPO]
    assert len(other) == 1 and other[0]["parts"] == 3 and other[0]["name"] == STEM
    assert other[0]["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert other[0]["model"] == f"hf://{REPO}/{parts[0].name}"
    by_name = {r["name"]: r for r in rows["catalog"]}
    assert by_name["SmolLM2-135M-Instruct"]["on_disk"]
    assert not by_name["Qwen2.5-32B"]["on_disk"]
    assert len(by_name["Qwen2.5-32B"]["files"]) == 5
    table = mesh_llm("models")
    assert table.returncode == 0 and STEM in table.stdout and "Qwen3-32B" in table.stdout


def test_a_partial_file_from_an_earlier_run_is_resumed(
        hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    """An interrupted run (Ctrl-C, a crash) leaves `blobs/SHA.incomplete`; the next run asks
    only for the rest."""
    blob = hub.repos[REPO][parts[0].name]
    blobs = Path(hf_env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    have = blob.size // 3
    (blobs / f"{blob.sha256}.incomplete").write_bytes(parts[0].read_bytes()[:have])
    got = mesh_llm("download", f"hf://{REPO}/{parts[0].name}")
    assert got.returncode == 0, got.stderr
    assert hub.gets(parts[0].name) == [f"bytes={have}-"]
    assert "resuming at" in got.stderr
    assert (blobs / blob.sha256).read_bytes() == parts[0].read_bytes()


def test_ctrl_c_stops_a_download_at_once_in_one_line(
        make_node, hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    """Inside the node the event loop owns SIGINT; a download must still stop on Ctrl-C."""
    hub.faults.stall.add(parts[0].name)
    node = make_node("i", "--model", f"hf://{REPO}/{parts[0].name}", "--no-draft")
    node.wait_for(lambda: any(parts[0].name in path for _, path, _ in hub.log),
                  "the download to start")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(10) == 130
    out = node.output()
    assert "Traceback" not in out
    assert out.rstrip().splitlines()[-1] == (
        f"mesh-llm: download of hf://{REPO}/{parts[0].name} interrupted: run the same command "
        "again to resume where it stopped")


def test_two_downloads_of_one_file_take_turns(
        hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    """Two nodes sharing a cache start together: one downloads, the other waits for it and
    then uses the same file (one GET), instead of both writing one partial file."""
    name = parts[2].name
    hub.faults.stall_body.add(name)
    ref = f"hf://{REPO}/{name.replace('00003-of', '00001-of')}"
    cmd = [sys.executable, "-m", "mesh_llm", "download", ref]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        def first_alive() -> None:
            assert first.poll() is None, first.communicate()

        # the first holds the lock, stalled in part 3's body
        wait_until(lambda: hub.gets(name), f"the first download to ask for {name}",
                   CLI_TIMEOUT_S, check=first_alive)
        second = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        lines: list[str] = []
        assert second.stderr is not None
        for line in second.stderr:  # until it says it waits for the other download
            lines.append(line)
            if "another process is downloading it" in line:
                break
        assert "another process is downloading it" in lines[-1], "".join(lines)
        hub.release()
        out2, err2 = second.communicate(timeout=CLI_TIMEOUT_S)
        out1, err1 = first.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0, err1
    assert second.returncode == 0, "".join(lines) + err2
    assert len(hub.gets(name)) == 1
    assert out1.splitlines()[-1] == out2.splitlines()[-1], "both name the same files"


def test_a_catalog_name_is_downloaded_before_the_node_starts(
        make_node, hub: LoopbackHub, hf_env: dict[str, str], parts: list[Path]) -> None:
    """`--model Gemma-3-27B` fetches the catalog's file (SmolLM2's bytes stand in for it: its
    exact size is not in the catalog), then its draft, whose size the catalog does know: a
    draft of another size is refused, and the node serves without one."""
    hub.add("ggml-org/gemma-3-27b-it-GGUF", "gemma-3-27b-it-Q4_K_M.gguf", smollm2_path())
    hub.add("ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf", parts[2])
    node = make_node("g", "--model", "Gemma-3-27B").wait_ready()
    status = node.status()
    assert status["model"] == "Gemma-3-27B" and status["draft"] is None
    assert status["model_bytes"] == smollm2_path().stat().st_size
    assert len(hub.gets("gemma-3-27b-it-Q4_K_M.gguf")) == 1
    assert hub.gets("gemma-3-1b-it-Q4_K_M.gguf") == [], "refused before the first byte"
    out = node.output()
    assert "no draft model" in out and "the catalog says 806058240" in out
