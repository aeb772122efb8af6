import asyncio

from mesh_llm.inference.election import Plan
from mesh_llm.inference.generation import Generation, overlap_refusal

GB = 10**9
SOLO = Plan("solo", "h", tensor_split=(1.0,))
SPLIT_B = Plan("split", "h", ("bb",), (0.67, 0.33))
SPLIT_BC = Plan("split", "h", ("bb", "cc"), (0.5, 0.3, 0.2))
SPLIT_C = Plan("split", "h", ("cc",), (0.5, 0.5))


def refusal(old: Plan, new: Plan, vram_gb: float = 100, gpu: bool = False,
            usable: bool = True) -> str | None:
    return overlap_refusal(old=old, old_usable=usable, new=new, host_vram=int(vram_gb * GB),
                           model_bytes=10 * GB, host_has_gpu=gpu)


def test_a_join_and_a_leave_overlap_when_the_host_holds_both() -> None:
    assert refusal(SOLO, SPLIT_B) is None
    assert refusal(SPLIT_B, SOLO) is None
    assert refusal(SPLIT_B, SPLIT_C) is None, "other workers: both can run"


def test_a_worker_in_both_plans_cannot_serve_both() -> None:
    why = refusal(SPLIT_B, SPLIT_BC) or ""
    assert "bb" in why and "one llama-server at a time" in why


def test_a_broken_old_server_is_not_kept() -> None:
    assert "lost a worker" in (refusal(SPLIT_B, SOLO, usable=False) or "")


def test_a_gpu_host_holds_both_shares_a_cpu_host_shares_the_mapped_weights() -> None:
    # solo (1.0) + split (0.67) of 10 GB, plus 2 x 1 GB of buffers: 18.7 GB
    assert refusal(SOLO, SPLIT_B, vram_gb=18.8, gpu=True) is None
    assert "cannot hold both" in (refusal(SOLO, SPLIT_B, vram_gb=18.6, gpu=True) or "")
    # a CPU host maps one file into both: the larger share, plus the buffers
    assert refusal(SOLO, SPLIT_B, vram_gb=12.1, gpu=False) is None
    assert "cannot hold both" in (refusal(SOLO, SPLIT_B, vram_gb=11.9, gpu=False) or "")


def test_a_generation_drains_when_its_last_request_is_done() -> None:
    async def main() -> None:
        gen = Generation(SOLO)
        assert await gen.drained(0.01), "nothing open: drained at once"
        gen.acquire()
        gen.acquire()
        assert not await gen.drained(0.01)
        gen.release()
        assert not await gen.drained(0.01)
        loop = asyncio.get_running_loop()
        loop.call_soon(gen.release)
        assert await gen.drained(5)
        assert gen.open_requests == 0

    asyncio.run(main())
