"""The ssh side of `mesh-llm deploy`: argv for the system ssh and the remote scripts.

The script builders are pure (strings in, a shell command out); `Remote` runs them with
`-o BatchMode=yes`, so ssh never prompts for a password: keys, an agent or the user's ssh
config must already let the user in.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

BASE_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15")
UNIT = "mesh-llm-worker"
SSH_FAILED = 255  # what ssh exits with when it, rather than the remote command, failed


def ssh_options(options: list[str], env_options: str) -> list[str]:
    """BatchMode, then each `--ssh-option OPT` as `-o OPT`, then $MESH_LLM_SSH_OPTS verbatim."""
    argv = list(BASE_OPTIONS)
    for option in options:
        argv += ["-o", option]
    return argv + shlex.split(env_options)


def ssh_argv(target: str, port: int | None, options: list[str], command: str) -> list[str]:
    return ["ssh", *options, *(["-p", str(port)] if port else []), target, command]


def install_script(tmp: str, install_dir: str | None) -> str:
    """Unpack the copied bundle, run its install.sh, remove the copy; exit as install.sh did."""
    where = f" {shlex.quote(install_dir)}" if install_dir else ""
    q = shlex.quote(tmp)
    return (f"cd {q} && tar xzf bundle.tar.gz && sh mesh-llm-bundle/install.sh{where}; "
            f"rc=$?; rm -rf {q}; exit $rc")


def home_expr(remote_home: str | None) -> str:
    """The remote node's home as a shell word the remote shell expands."""
    return shlex.quote(remote_home) if remote_home else '"${MESH_LLM_HOME:-$HOME/.mesh-llm}"'


@dataclass(frozen=True)
class Worker:
    """Where the remote worker's launcher, log and pid file are."""

    mesh_llm: str  # absolute path of the installed mesh-llm
    argv: tuple[str, ...]  # the node's arguments
    log: str
    pid_file: str

    @classmethod
    def at(cls, mesh_llm: str, argv: list[str]) -> Worker:
        root = str(Path(mesh_llm).parents[2])  # DIR of DIR/venv/bin/mesh-llm
        return cls(mesh_llm, tuple(argv), f"{root}/worker.log", f"{root}/worker.pid")


def start_script(worker: Worker) -> str:
    """Start the worker so that it outlives ssh: systemd-run --user, else nohup + pid file."""
    cmd = " ".join(shlex.quote(w) for w in (worker.mesh_llm, *worker.argv))
    log, pid = shlex.quote(worker.log), shlex.quote(worker.pid_file)
    return (
        f"rm -f {pid}; "
        "if command -v systemd-run >/dev/null 2>&1 && "
        f"systemd-run --user --quiet --collect --unit={UNIT} -- {cmd} >/dev/null 2>&1; then "
        f"echo 'systemd-run --user unit {UNIT} (journalctl --user -u {UNIT})'; "
        "else "
        f"nohup $(command -v setsid) {cmd} >{log} 2>&1 </dev/null & echo $! >{pid}; "
        f"echo \"nohup, pid $(cat {pid}), log {worker.log}\"; fi"
    )


def probe_script(worker: Worker, remote_home: str | None) -> str:
    """Print the node's node.json; then DEAD and the log's tail if a nohup'd worker died."""
    pid = shlex.quote(worker.pid_file)
    return (f"cat {home_expr(remote_home)}/node.json 2>/dev/null; echo; "
            f"if [ -f {pid} ] && ! kill -0 \"$(cat {pid})\" 2>/dev/null; then "
            f"echo DEAD; tail -n 5 {shlex.quote(worker.log)}; fi")


def stop_command(worker: Worker, remote_home: str | None) -> str:
    home = f" --home {shlex.quote(remote_home)}" if remote_home else ""
    return f"{shlex.quote(worker.mesh_llm)} stop{home}"


@dataclass
class Remote:
    """One ssh destination with its options."""

    target: str
    port: int | None
    options: list[str] = field(default_factory=list)

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `command` remotely; ssh's own failure is a UserError, the command's is not."""
        try:
            proc = subprocess.run(ssh_argv(self.target, self.port, self.options, command),
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout)
        except FileNotFoundError:
            raise UserError("deploy needs the ssh client (ssh) on this machine") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"ssh {self.target}: no answer within {timeout:.0f} s") from None
        if proc.returncode == SSH_FAILED:
            raise UserError(f"ssh {self.target} failed: {last_line(proc.stderr)}")
        return proc

    def copy(self, local: Path, remote: str) -> None:
        """Stream the file through ssh (`cat >`): works where sshd has no sftp for scp."""
        argv = ssh_argv(self.target, self.port, self.options, f"cat > {shlex.quote(remote)}")
        with open(local, "rb") as data:
            proc = subprocess.run(argv, stdin=data, capture_output=True, text=False)
        if proc.returncode != 0:
            raise UserError(f"copying to {self.target} failed: "
                            f"{last_line(proc.stderr.decode(errors='replace'))}")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
