"""A loopback Hugging Face hub for tests: the subset of the HTTP API a download uses.

`HEAD/GET /{org}/{repo}/resolve/{rev}/{path}` with `ETag`, `X-Repo-Commit`,
`X-Linked-Size`, `X-Linked-Etag` (the file's sha256, as the hub gives for LFS files) and
`Range`; `GET /api/models/{org}/{repo}/tree/{rev}?recursive=true` for the file list. Point
`HF_ENDPOINT` at `LoopbackHub.url`. Faults, per file: cut a transfer after N bytes (once),
stall before the first byte, advertise a wrong size, serve different bytes than the sha256.
Every request is logged as (method, path, Range header).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

COMMIT = "c0ffee" + "0" * 34


@dataclass
class HubFile:
    data: Path
    sha256: str
    size: int


@dataclass
class Faults:
    cut_after: dict[str, int] = field(default_factory=dict)  # once per file
    stall: set[str] = field(default_factory=set)  # no answer at all
    stall_body: set[str] = field(default_factory=set)  # headers, then no byte until release()
    advertise_size: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # right size, wrong bytes


class LoopbackHub:
    """An aiohttp server on 127.0.0.1 in its own thread; start() returns its URL."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, HubFile]] = {}
        self.faults = Faults()
        self.log: list[tuple[str, str, str | None]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def add(self, repo: str, name: str, data: Path) -> None:
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        self.repos.setdefault(repo, {})[name] = HubFile(data, digest, data.stat().st_size)

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every GET of `name` (None: from the start)."""
        return [rng for method, path, rng in self.log if method == "GET" and
                path.endswith("/" + name) and "/resolve/" in path]

    def release(self) -> None:
        """Let every stalled request go on."""
        self._loop.call_soon_threadsafe(self._release.set)

    # --- server ---
    def start(self) -> str:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.url

    def stop(self) -> None:
        async def stop() -> None:
            self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/models/{org}/{repo}/tree/{rev}", self._tree)
        app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{path:.+}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _tree(self, request: web.Request) -> web.Response:
        self.log.append((request.method, request.path, None))
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        files = self.repos.get(repo)
        if files is None:
            return web.json_response({"error": "Repository not found"}, status=404)
        sizes = {name: self.faults.advertise_size.get(name, f.size) for name, f in files.items()}
        return web.json_response([
            {"type": "file", "path": name, "size": sizes[name], "oid": f.sha256[:40],
             "lfs": {"oid": f.sha256, "size": sizes[name], "pointerSize": 134}}
            for name, f in sorted(files.items())])

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        self.log.append((request.method, request.path, rng))
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        name = request.match_info["path"]
        f = self.repos.get(repo, {}).get(name)
        headers = {"X-Repo-Commit": COMMIT}
        if f is None:
            return web.Response(status=404, headers={**headers, "X-Error-Code": "EntryNotFound"})
        if name in self.faults.stall:
            await self._release.wait()  # accepts the connection, never answers
        size = self.faults.advertise_size.get(name, f.size)
        headers.update({"ETag": f'"{f.sha256}"', "X-Linked-Etag": f'"{f.sha256}"',
                        "X-Linked-Size": str(size), "Accept-Ranges": "bytes"})
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
        start = 0
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= f.size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
        body = f.data.read_bytes()[start:]
        if name in self.faults.corrupt:
            body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        resp = web.StreamResponse(status=status, headers={**headers,
                                                          "Content-Length": str(len(body))})
        await resp.prepare(request)
        if name in self.faults.stall_body:
            await self._release.wait()
        cut = self.faults.cut_after.pop(name, None)
        if cut is not None and cut < len(body):
            await resp.write(body[:cut])
            assert request.transport is not None
            request.transport.close()  # a connection lost half way
            return resp
        for at in range(0, len(body), 1 << 20):
            await resp.write(body[at:at + (1 << 20)])
        await resp.write_eof()
        return resp
