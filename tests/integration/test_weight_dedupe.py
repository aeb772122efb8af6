"""Weight dedupe with real llama.cpp: llama-server → codec proxy → ggml-rpc-server.

SmolLM2 with 15 layers on the RPC worker. Greedy output through the dedupe proxy must equal a
plain proxy and llama-server alone; the load must carry < 1% of the worker's weight bytes; a
worker file with different bytes must be caught by the decoder; RAW-only must still work.
"""

from __future__ import annotations

import itertools
import random
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_llm.inference.dedupe import WeightMismatchError
from mesh_llm.inference.rpc_wire import Command, DataPiece, RpcStreamParser
from mesh_llm.models.weights import ModelWeights, _sample_offsets
from ports import free_port
from waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import weight_dedupe as harness  # the bench owns the proxy and the process helpers

THREADS = 1  # ggml's spinning thread pool collapses when other tests share the 2 cores
pytestmark = pytest.mark.skipif(
    not (harness.BIN_DIR / "ggml-rpc-server").exists() or not harness.MODEL.exists(),
    reason="llama.cpp binaries or SmolLM2 not installed")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dedupe")


@pytest.fixture(scope="module")
def rpc_port(workdir: Path) -> Iterator[int]:
    """One ggml-rpc-server for the module: it serves one client at a time, then the next."""
    port = free_port()
    proc = harness.start_rpc_server(port, workdir / "rpc.log", THREADS)
    try:
        def alive() -> None:
            assert proc.poll() is None, f"ggml-rpc-server exited with {proc.returncode}"

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        wait_until(listening, "ggml-rpc-server to listen", 10, check=alive, ignore=(OSError,))
        yield port
    finally:
        harness.stop(proc)


@pytest.fixture(scope="module")
def weights() -> Iterator[ModelWeights]:
    with ModelWeights.open(harness.MODEL) as w:
        yield w


async def serve(workdir: Path, tag: str, rpc_port: int | None,
                proxy: harness.TunnelProxy | None = None) -> tuple[str, harness.ProxyStats | None]:
    """Start llama-server (solo, direct, or through ``proxy``), chat once, stop it."""
    target = rpc_port
    if proxy is not None:
        target = await proxy.start()
    port = free_port()
    proc = harness.start_llama(port, workdir / f"llama-{tag}.log", target, threads=THREADS)
    try:
        async with harness.new_session() as session:
            await harness.wait_ready(session, port, proc)
            load = proxy.stats.copy() if proxy is not None else None
            return await harness.chat(session, port), load
    finally:
        harness.stop(proc)
        if proxy is not None:
            proxy.close()


@pytest.fixture(scope="module")
def solo_text(workdir: Path) -> str:
    import asyncio

    text, _ = asyncio.run(serve(workdir, "solo", None))
    assert "Paris" in text
    return text


def parse_summary(chunks: list[bytes]) -> tuple[list[tuple], int]:
    parser = RpcStreamParser()
    commands, data = [], 0
    for chunk in chunks:
        for ev in parser.feed(chunk):
            if isinstance(ev, Command):
                commands.append(tuple(ev))
            else:
                assert isinstance(ev, DataPiece)
                data += ev.end - ev.start
    return commands, data


async def test_dedupe_carries_references_and_generates_the_same_text(
        workdir: Path, rpc_port: int, weights: ModelWeights, solo_text: str) -> None:
    streams: dict[int, list[bytes]] = {}
    plain = harness.TunnelProxy(rpc_port, "plain",
                                tap=lambda conn, chunk: streams.setdefault(conn, []).append(chunk))
    plain_text, plain_load = await serve(workdir, "plain", rpc_port, plain)
    dedupe = harness.TunnelProxy(rpc_port, "dedupe", weights, weights)
    dedupe_text, load = await serve(workdir, "dedupe", rpc_port, dedupe)

    assert plain_text == solo_text
    assert dedupe_text == solo_text
    assert load is not None and plain_load is not None
    assert not dedupe.stats.errors
    assert load.weight_bytes > 50e6  # 15 layers and the output head live on the worker
    assert load.ref_bytes == load.weight_bytes and load.mismatch_bytes == 0
    assert plain_load.tunnel_bytes > load.weight_bytes
    assert load.tunnel_bytes < 0.01 * load.weight_bytes, load

    # the real stream parses the same at any chunking
    rng = random.Random(7)
    for chunks in streams.values():
        whole = b"".join(chunks)
        expected = parse_summary([whole])
        assert parse_summary(chunks) == expected
        cuts = sorted(rng.sample(range(1, len(whole)), min(len(whole) - 1, 300)))
        bounds = [0, *cuts, len(whole)]
        assert parse_summary([whole[a:b] for a, b in itertools.pairwise(bounds)]) == expected


async def test_raw_mode_generates_the_same_text(workdir: Path, rpc_port: int,
                                               solo_text: str) -> None:
    proxy = harness.TunnelProxy(rpc_port, "raw")
    text, load = await serve(workdir, "raw", rpc_port, proxy)
    assert text == solo_text
    assert not proxy.stats.errors
    assert load is not None and load.ref_bytes == 0 and load.tunnel_bytes > 50e6


async def test_worker_with_different_bytes_is_caught(workdir: Path, rpc_port: int,
                                                     weights: ModelWeights) -> None:
    span = weights.index[b"blk.29.ffn_down.weight"]  # held by the worker with -ngl 15
    samples = _sample_offsets(min(s.offset for s in weights.index.values()), weights.sizes[0])
    at = next(a for a in range(span.offset + 4096, span.offset + span.size, 4096)
              if all(a + 64 <= s or a >= s + 4096 for s in samples))
    bad = workdir / "bad.gguf"
    shutil.copy(harness.MODEL, bad)
    with open(bad, "r+b") as f:
        f.seek(at)
        flipped = bytes(b ^ 0x5A for b in f.read(64))
        f.seek(at)
        f.write(flipped)
    with ModelWeights.open(bad) as worker:
        assert worker.fingerprint == weights.fingerprint  # only the data check can tell
        proxy = harness.TunnelProxy(rpc_port, "dedupe", weights, worker)
        with pytest.raises(RuntimeError):  # the tunnel closes; llama-server cannot load
            await serve(workdir, "bad", rpc_port, proxy)
    assert proxy.stats.errors
    assert all(isinstance(e, WeightMismatchError) for e in proxy.stats.errors)
