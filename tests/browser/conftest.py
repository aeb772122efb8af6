"""A real Chromium (Debian's, driven by Playwright) and a console fed by a status we control."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from mesh_llm.api.proxy import ApiProxy, Upstream
from mesh_llm.api.serving import EdgeRunner
from mesh_llm.changes import ChangeFeed
from mesh_llm.console.server import Console
from ports import free_port
from upstreams import OneUpstream, tcp_upstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAPTOP = {"width": 1280, "height": 860}
NO_HOST = Upstream(None, "no host is ready")


@pytest.fixture(scope="module")  # a live sync_playwright loop breaks asyncio tests
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def context(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh Chromium profile per test; the clipboard is allowed for the copy buttons."""
    ctx = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
        args=CHROMIUM_ARGS, viewport=LAPTOP,
        permissions=["clipboard-read", "clipboard-write"])
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


class Requests:
    """Every URL a page asked for, to prove there is no polling and nothing external."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))

    def to(self, path: str) -> list[str]:
        return [u for u in self.urls if u.split("?")[0].endswith(path)]


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.pages[0] if context.pages else context.new_page()


@pytest.fixture
def requests(page: Page) -> Requests:
    return Requests(page)


@pytest.fixture
def shoot() -> Callable[[Page, str], Path]:
    """Save a full-page screenshot as test-artifacts/console-<name>.png."""
    def screenshot(page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"console-{name}.png"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=True)
        return path
    return screenshot


class FakeConsole:
    """The real Console app on 127.0.0.1 (or `bind`, seen at `url_host`), in its own
    thread, serving a status the test sets."""

    def __init__(self, status: dict[str, Any], upstream: Upstream, api_key: str | None = None,
                 bind: str = "127.0.0.1", url_host: str = "127.0.0.1") -> None:
        self.status = copy.deepcopy(status)
        self.upstream = upstream
        self.port = free_port()
        self.bind = bind
        self.url_host = url_host
        self.api_key = api_key
        self.changes = ChangeFeed()
        self.models: dict[str, Any] | None = None  # GET /v1/models (None: the one model)
        self.api = ApiProxy(OneUpstream(lambda: self.upstream, listing=lambda: self.models))
        self.console = self._new_console()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.upstream_runner: web.AppRunner | None = None

    def _new_console(self) -> Console:
        return Console(lambda: self.status, self.changes, self.api, heartbeat_s=1.0,
                       api_key=self.api_key)

    @property
    def url(self) -> str:
        return f"http://{self.url_host}:{self.port}/"

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def start_upstream(self, models: dict[str, Any] | None = None) -> None:
        """A scripted llama-server: a token every 20 ms, for ever, or an error after three
        tokens when the last message contains "fail". A request naming a `model` hears
        "[that model]" first. The API's GET /v1/models answers `models` (without: the one
        model the router serves)."""
        async def completions(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            if "model" in body:
                chunk = {"choices": [{"delta": {"content": f"[{body['model']}] "}}]}
                await out.write(f"data: {json.dumps(chunk)}\n\n".encode())
            for i in range(3 if "fail" in prompt else 100_000):
                chunk = {"choices": [{"delta": {"content": f"tok{i} "}}]}
                await out.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(0.02)
            error = {"error": {"message": "the host's stream broke off", "type": "unavailable"}}
            await out.write(f"data: {json.dumps(error)}\n\n".encode())
            return out

        async def start() -> None:
            if self.upstream_runner is not None:  # a new llama-server replaces the last
                await self.upstream_runner.cleanup()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", completions)
            runner = web.AppRunner(app, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.upstream_runner = runner
            self.upstream = tcp_upstream("127.0.0.1", runner.addresses[0][1])
            self.models = models
        self._call(start)

    def in_flight(self) -> int:
        return self._call(lambda: self.api.in_flight)

    def start(self) -> FakeConsole:
        async def start() -> None:
            self.runner = EdgeRunner(self.console.app(), handler_cancellation=True,
                                     access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, self.bind, self.port).start()
        self._call(start)
        return self

    def restart(self) -> None:
        """As a node restarts: a new Console (so a new login salt) on the same port."""
        self.stop()
        self.console = self._new_console()
        self.start()

    def stop(self) -> None:
        if self.runner is not None:
            self._call(self.runner.cleanup)
            self.runner = None

    def set(self, **fields: Any) -> None:
        """Change the status the way the node does: new facts, then one bump."""
        def change() -> None:
            self.status = {**self.status, **copy.deepcopy(fields)}
            self.changes.bump()
        self._call(change)

    def close(self) -> None:
        self.stop()
        if self.upstream_runner is not None:
            self._call(self.upstream_runner.cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def fake_console() -> Iterator[Callable[..., FakeConsole]]:
    made: list[FakeConsole] = []

    def make(status: dict[str, Any], upstream: Upstream | None = None,
             **options: Any) -> FakeConsole:
        made.append(FakeConsole(status, upstream or NO_HOST, **options).start())
        return made[-1]

    yield make
    for console in made:
        console.close()
