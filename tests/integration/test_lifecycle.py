"""Children never outlive the node; crashes are restarted; bad input fails fast in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from nodes import NodeProcess

QUICK_EXIT_S = 20  # generous bound for a process that must not hang; not a timing assertion


def llama_pid(node: NodeProcess) -> int:
    return node.wait_for(lambda: (node.status().get("llama_server") or {}).get("pid"),
                         "llama-server pid")


def gone(pid: int, timeout: float = 10) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_sigkill_of_mesh_llm_takes_llama_server_with_it(make_node) -> None:
    node = make_node("n").wait_ready()
    pid = llama_pid(node)
    rpc = node.wait_for(lambda: (node.status().get("rpc_server") or {}).get("pid"),
                        "ggml-rpc-server pid")
    assert psutil.Process(pid).ppid() == psutil.Process(rpc).ppid() == node.proc.pid
    node.proc.kill()
    node.proc.wait()
    assert gone(pid), "llama-server outlived a SIGKILLed mesh-llm"
    assert gone(rpc), "ggml-rpc-server outlived a SIGKILLed mesh-llm"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_everything(make_node, sig: signal.Signals) -> None:
    node = make_node("n").wait_ready()
    pid = llama_pid(node)
    node.proc.send_signal(sig)
    assert node.proc.wait(QUICK_EXIT_S) == 0
    assert gone(pid, 1)
    assert not (node.home / "mesh-llm.lock").read_text().strip(), "lock not released"


def test_a_leaving_worker_whose_host_vanishes_starts_no_llama_server(make_node) -> None:
    """B, asked to stop, waits for its host to serve without it; the host goes silent
    (SIGSTOP) meanwhile, so B becomes the only candidate: it must not start hosting on its
    way out (it once started a llama-server for the moment before its shutdown stopped it)."""
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--model", "SmolLM2-135M-Instruct", "--max-vram", "1", "--join",
                       host.status()["token"]).wait_ready()
    bid = worker.status()["node_id"]
    host.wait_for(lambda: bid in (host.status()["plan"] or {}).get("workers", []),
                  "a split over B")
    assert host.proc is not None and worker.proc is not None
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(60) == 0
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    log = worker.output()
    leaving = log.index("leaving: waiting for the host")
    assert "host: this node" in log[leaving:], "B saw its host go"
    assert "llama-server started" not in log[leaving:], log[leaving:]


def test_crashed_llama_server_is_restarted(make_node) -> None:
    node = make_node("n").wait_ready()
    first = llama_pid(node)
    os.kill(first, signal.SIGKILL)
    node.wait_for(lambda: node.status()["llama_server"]["pid"] not in (None, first)
                  and node.status()["llama_ready"], "a restarted, ready llama-server", 60)
    assert "restarting" in node.output()


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=QUICK_EXIT_S)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("mesh-llm:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0], "the error must be the last line"
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_missing_model_file(tmp_path: Path) -> None:
    result = run_cli("--model", str(tmp_path / "nope.gguf"), home=tmp_path / "h")
    assert_one_line_error(result, "model file not found", "nope.gguf")


def test_text_file_as_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a model\n")
    result = run_cli("--model", str(text), home=tmp_path / "h")
    assert_one_line_error(result, "not a GGUF model file")


def test_unknown_model_name(tmp_path: Path) -> None:
    result = run_cli("--model", "NoSuchModel-9B", home=tmp_path / "h")
    assert_one_line_error(result, "unknown model", "SmolLM2-135M-Instruct")


def test_catalog_model_not_downloaded_and_no_hub(tmp_path: Path) -> None:
    # the hub is a closed loopback port (tests/conftest.py): one line that says what to do
    result = run_cli("--model", "Qwen2.5-3B", home=tmp_path / "h")
    assert_one_line_error(result, "cannot download Qwen2.5-3B", "by hand", "--model")


def test_api_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--port", str(port), home=tmp_path / "h")
    assert_one_line_error(result, f"port {port} is already in use", "--port")


def test_missing_engine(tmp_path: Path) -> None:
    result = run_cli("--bin-dir", str(tmp_path), home=tmp_path / "h")
    assert_one_line_error(result, "no llama-server", "scripts/setup")


def test_two_nodes_cannot_share_a_home(make_node, tmp_path: Path) -> None:
    node = make_node("shared").wait_ready()
    result = run_cli("--port", "0", home=node.home)
    assert_one_line_error(result, "another mesh-llm", str(node.proc.pid), "--home")


@pytest.mark.parametrize("args, needle", [
    (["--port", "99999"], "port out of range"),
    (["--client"], "--client needs --join"),
    (["--listen-all"], "--api-key"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, home=tmp_path / "h")
    assert result.returncode == 2
    assert_one_line_error(result, needle)
