"""Supervised child processes that never outlive mesh-llm.

Each child is started in its own session (a Ctrl-C in the terminal reaches only
mesh-llm, which then stops the children in order) and asks the kernel to kill it
when its parent dies (PR_SET_PDEATHSIG), so even `kill -9` of mesh-llm leaves no
orphan. Nothing is ever found or killed by name: we hold the pids we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..netutil import free_port

log = logging.getLogger("mesh_llm.processes")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when the process that started it dies. Also ignore
    SIGPIPE in it: ggml-rpc-server writing to a tunnel that was just aborted should get
    EPIPE and drop that client, not die."""

    def preexec() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class Backoff:
    """Restart delays: 1, 2, 4 … up to `cap` seconds; reset after a long enough healthy run."""

    def __init__(self, first: float = 1.0, cap: float = 30.0, healthy_after: float = 60.0) -> None:
        self.first, self.cap, self.healthy_after = first, cap, healthy_after
        self._next = first

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.healthy_after:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


class SupervisedProcess:
    """Runs one command, restarts it with backoff when it dies, stops it on request.

    `make_argv` is called before every (re)start so a restart can pick a fresh port.
    `on_start`/`on_exit` let the owner track readiness.
    """

    def __init__(
        self,
        name: str,
        make_argv: Callable[[], Sequence[str]],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        on_start: Callable[[asyncio.subprocess.Process], Awaitable[None]] | None = None,
        on_exit: Callable[[int], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._make_argv = make_argv
        self._log_path = log_path
        self._env = env
        self._on_start = on_start
        self._on_exit = on_exit
        self._backoff = backoff or Backoff()
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"supervise {self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        argv = list(self._make_argv())
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
            logf.flush()
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **(self._env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    async def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                self._proc = await self._spawn()
            except OSError as err:
                log.error("cannot start %s: %s", self.name, err)
                code = -1
            else:
                log.info("%s started (pid %d)", self.name, self._proc.pid)
                if self._on_start is not None:
                    watcher = asyncio.create_task(self._on_start(self._proc))
                code = await self._proc.wait()
                if self._on_start is not None and not watcher.done():
                    watcher.cancel()
            if self._on_exit is not None:
                self._on_exit(code)
            if self._stopping:
                break
            delay = self._backoff.next_delay(time.monotonic() - started)
            self.restarts += 1
            log.warning(
                "%s exited with code %s; restarting in %.0f s (log: %s)",
                self.name, code, delay, self._log_path,
            )
            await asyncio.sleep(delay)

    async def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the child is gone."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, grace)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class LoopbackServer:
    """A supervised child that serves on a fresh loopback port and has a `ready` flag.

    The owner hears of every change of `ready` through `on_change`. Subclasses say how
    to start the child (`argv`) and how to tell that it is ready (`_await_ready`, which
    calls `_became_ready`). A restart picks a new port.
    """

    def __init__(self, name: str, log_path: Path, on_change: Callable[[], None],
                 env: dict[str, str] | None = None) -> None:
        self.port: int | None = None
        self.ready = False
        self._on_change = on_change
        self._proc = SupervisedProcess(name, self._next_argv, log_path, env=env,
                                       on_start=self._await_ready, on_exit=self._exited)

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _next_argv(self) -> list[str]:
        self.port = free_port()
        return self.argv(self.port)

    def start(self) -> None:
        self._proc.start()

    async def stop(self) -> None:
        await self._proc.stop()
        self.ready = False

    def _became_ready(self) -> None:
        self.ready = True
        self._on_change()

    def _exited(self, _code: int) -> None:
        if self.ready:
            self.ready = False
            self._on_change()
