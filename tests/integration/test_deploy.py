"""`mesh-llm deploy` against a real sshd on a loopback port: the worker joins, then stops.

sshd runs as root from a config the test writes (its own host key, the test's user key,
127.0.0.1 only). The "remote" is this machine reached through ssh: the deployed node runs
from the bundle's venv with the clean environment sshd gives a session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_bundle import session_bundle

from mesh_llm.node.home import running_pid
from ports import free_port
from waiting import wait_until

SSHD = Path("/usr/sbin/sshd")
DEADLINE_S = 20.0


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path

    @property
    def options(self) -> str:
        """What the client needs for a throwaway host key and the test's user key."""
        return (f"-i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                "-o LogLevel=ERROR")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if os.geteuid() != 0 or not SSHD.exists():
        pytest.skip("needs root and openssh-server (scripts/setup --test installs it)")
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "host_key")
    _keygen(root / "user_key")
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nPidFile none\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    with open(root / "sshd.log", "wb") as log:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def alive() -> None:
            assert proc.poll() is None, (root / "sshd.log").read_text()

        wait_until(lambda: _listening(port), "sshd to listen", DEADLINE_S, check=alive)
        yield Sshd(port, root / "user_key")
    finally:
        proc.terminate()
        proc.wait(10)


def deploy(*args: str, ssh_opts: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", "deploy", *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "MESH_LLM_SSH_OPTS": ssh_opts})


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_without_a_local_node_or_a_token_deploy_says_so_in_one_line() -> None:
    proc = deploy("root@127.0.0.1", "--console", str(free_port()))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no local node answers" in proc.stderr, proc.stderr


def test_deploy_starts_a_worker_that_joins_and_stop_over_ssh_removes_it(
        sshd: Sshd, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        make_node) -> None:  # type: ignore[no-untyped-def]
    bundle = session_bundle(tmp_path_factory)
    host = make_node("host").wait_ready()
    common = ["--bundle", str(bundle), "--console", str(host.console_port)]

    refused = deploy("root@127.0.0.1", "--port", str(free_port()), *common,
                     ssh_opts=sshd.options)
    assert refused.returncode == 1
    assert refused.stderr.startswith("mesh-llm: ssh root@127.0.0.1 failed:"), refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr

    opt, home = tmp_path / "remote-opt", tmp_path / "remote-home"
    proc = deploy("root@127.0.0.1", "--port", str(sshd.port), *common, "--dir", str(opt),
                  "--remote-home", str(home), "--wait", "120",
                  "--", "--bind-host", "127.0.0.1", "--port", str(free_port()),
                  ssh_opts=sshd.options)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("worker started on root@127.0.0.1: ") for line in lines), lines
    assert "joined the mesh" in lines[-1] and f"mesh-llm stop --home {home}" in lines[-1], lines

    # ssh is gone; the worker stays, runs from the installed venv, and is the host's peer
    node_id = json.loads((home / "node.json").read_text())["node_id"]
    pid = running_pid(home)  # the node's own lock: nohup'd or under systemd-run --user
    assert pid is not None
    assert _alive(pid)
    assert str(opt / "venv") in Path(f"/proc/{pid}/cmdline").read_text()
    assert node_id in {p["id"] for p in host.status()["peers"]}

    stop = subprocess.run(
        ["ssh", *sshd.options.split(), "-p", str(sshd.port), "-o", "BatchMode=yes",
         "root@127.0.0.1", f"{opt}/venv/bin/mesh-llm stop --home {home}"],
        capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    host.wait_for(lambda: node_id not in {p["id"] for p in host.status()["peers"]},
                  "the stopped worker to leave the host's peers", timeout=30)
    host.wait_for(lambda: not _alive(pid), "the worker process to exit", timeout=30)
