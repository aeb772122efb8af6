"""No request lost when the mesh changes: a graceful join or leave re-plans make-before-break
(the old llama-server answers until the new one is ready, then finishes its streams), and a
request that finds no llama-server ready waits for one instead of a 503 at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from nodes import NodeProcess, openai_client, post_chat

TOKENS = 16
STREAMS = 8


@dataclass
class StreamResult:
    started: float
    ended: float
    tokens: int | None = None  # completion tokens the usage chunk reports
    finish: str | None = None
    chunks: int = 0
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.tokens == TOKENS and self.finish == "length"


def one_stream(node: NodeProcess, i: int, tokens: int = TOKENS,
               on_first: threading.Semaphore | None = None) -> StreamResult:
    """One streamed chat completion of exactly `tokens` tokens through the real openai client."""
    result = StreamResult(time.monotonic(), 0.0)
    try:
        chunks = openai_client(node, timeout=180).chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": f"Tell me a story about the number {i}."}],
            max_tokens=tokens, temperature=0, stream=True, extra_body={"ignore_eos": True},
            stream_options={"include_usage": True})
        for chunk in chunks:
            result.chunks += 1
            if result.chunks == 1 and on_first is not None:
                on_first.release()
            if chunk.choices and chunk.choices[0].finish_reason:
                result.finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                result.tokens = chunk.usage.completion_tokens
    except Exception as err:  # every failure is a result to report
        result.error = f"{type(err).__name__}: {err}"
    result.ended = time.monotonic()
    return result


class Load:
    """STREAMS threads that each stream one completion after another until stopped."""

    def __init__(self, node: NodeProcess, tokens: int = TOKENS) -> None:
        self.node, self.tokens = node, tokens
        self.results: list[StreamResult] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(STREAMS)
        self._futures = [self._pool.submit(self._run, i) for i in range(STREAMS)]

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            self.results.append(one_stream(self.node, i * 1000 + n, self.tokens))
            n += 1

    def finish(self) -> list[StreamResult]:
        self._stop.set()
        for future in self._futures:
            future.result(timeout=300)
        self._pool.shutdown()
        return self.results


def serving(node: NodeProcess, mode: str, workers: int) -> float | None:
    """When `node` serves `mode` over `workers` workers with no other llama-server of its
    own left (none loading, none draining): the time seen, else None."""
    s = node.status()
    plan = s["plan"] or {}
    settled = [g["state"] for g in s["llama_servers"]] == ["serving"]
    if s["llama_ready"] and plan.get("mode") == mode and len(plan.get("rpc", [])) == workers \
            and settled:
        return time.monotonic()
    return None


def straddles(results: list[StreamResult], moment: float) -> list[StreamResult]:
    return [r for r in results if r.started < moment < r.ended]


@pytest.mark.parametrize("through", ["client", "host"])
def test_streams_survive_a_worker_joining_and_leaving(make_node, through: str) -> None:
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    token = host.status()["token"]
    target = host
    if through == "client":
        target = make_node("c", "--client", "--join", token).wait_ready()
    load = Load(target)
    try:
        target.wait_for(lambda: len(load.results) >= STREAMS, "a first round of streams", 120)
        worker = make_node("b", "--max-vram", "1", "--join", token)
        joined = host.wait_for(lambda: serving(host, "split", 1), "the split serving", 180)
        target.wait_for(lambda: any(r.started > joined for r in load.results),
                        "streams on the split", 120)
        assert worker.stop(timeout=60) == 0, "the worker leaves gracefully"
        left = host.wait_for(lambda: serving(host, "solo", 0), "solo again", 60)
        target.wait_for(lambda: any(r.started > left for r in load.results),
                        "streams on the solo server", 120)
    finally:
        results = load.finish()
    bad = [r for r in results if not r.complete]
    assert not bad, f"{len(bad)} of {len(results)} streams failed or were cut: {bad[:3]}"
    assert straddles(results, joined) and straddles(results, left), \
        "streams were running through both switches"
    out = worker.output()
    assert "leaving: the host serves without this node" in out, out[-2000:]
    log = host.output()
    assert "the new llama-server loads while the old one serves" in log
    assert "ignored SIGTERM" not in log, "llama-server stops promptly"
    llama_log = (host.home / "logs" / "llama-server.log").read_text(errors="replace")
    assert "Remote RPC server crashed" not in llama_log


def test_a_killed_worker_fails_its_streams_with_an_error(make_node) -> None:
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--max-vram", "1", "--join", host.status()["token"])
    host.wait_for(lambda: serving(host, "split", 1), "the split serving", 180)
    streaming = threading.Semaphore(0)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one_stream, host, i, 1000, streaming) for i in range(4)]
        for _ in range(4):  # each has its first chunk: none can be retried elsewhere
            assert streaming.acquire(timeout=120), "four streams running"
        worker.proc.kill()
        results = [f.result(timeout=120) for f in futures]
    assert all(r.error is not None for r in results), results
    assert all(r.tokens is None for r in results), "none of them claims to be complete"
    host.wait_for(lambda: serving(host, "solo", 0), "the host alone serves solo", 60)
    assert one_stream(host, 99).complete


def test_a_request_waits_for_a_host_and_then_succeeds(make_node) -> None:
    first = make_node("a").wait_ready()
    client = make_node("c", "--client", "--join", first.status()["token"]).wait_ready()
    assert first.stop() == 0
    client.wait_for(lambda: client.status()["host"] is None, "no host", 30)
    answers: list[tuple[int, object]] = []
    asking = threading.Thread(target=lambda: answers.append(post_chat(client, [
        {"role": "user", "content": "What is the capital of France?"}], 8)))
    asking.start()
    try:
        client.wait_for(lambda: client.status()["api_queued"] == 1, "the request queued", 10)
        make_node("b", "--model", "SmolLM2-135M-Instruct", "--join",
                  client.status()["token"]).wait_ready()
    finally:
        asking.join(60)
    assert answers and answers[0][0] == 200, answers
    assert client.status()["api_queued"] == 0


def test_a_client_hanging_up_is_no_upstream_failure(make_node) -> None:
    host = make_node("a").wait_ready()
    client = make_node("c", "--client", "--join", host.status()["token"]).wait_ready()
    for node in (client, host):
        for i in range(3):
            chunks = openai_client(node).chat.completions.create(
                model="x", messages=[{"role": "user", "content": f"Count to {i + 50}."}],
                max_tokens=500, stream=True, extra_body={"ignore_eos": True})
            next(iter(chunks))
            chunks.close()  # hang up mid-stream
        node.wait_for(lambda n=node: n.status()["api_in_flight"] == 0, "the relays over", 30)
    for node in (client, host):
        out = node.output()
        assert "failed" not in out and "Cannot write to closing transport" not in out, out
        assert "upstream" not in out and "broke off" not in out, out
    assert one_stream(client, 1).complete
