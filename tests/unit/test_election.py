from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.inference.election import (
    OUTPUT_ON_HOST,
    Candidate,
    Placement,
    elect_host,
    incompatibility,
    make_plan,
    placement,
    tensor_split,
)

GB = 10**9


def c(node_id: str, vram_gb: float, role: str = "worker", rtt: float | None = None) -> Candidate:
    return Candidate(node_id, role, int(vram_gb * GB), rtt)


def test_most_vram_hosts_and_ties_go_to_the_larger_id() -> None:
    assert elect_host([c("aa", 8), c("bb", 16), c("cc", 4)]) == "bb"
    assert elect_host([c("aa", 8), c("ff", 8), c("bb", 8)]) == "ff"


def test_clients_never_host() -> None:
    assert elect_host([c("zz", 0, "client"), c("aa", 1)]) == "aa"
    assert elect_host([c("zz", 100, "client")]) is None


def test_a_worker_without_the_model_file_never_hosts_but_serves_in_the_split() -> None:
    fileless = Candidate("zz", "worker", 100 * GB, can_host=False)
    assert elect_host([fileless, c("aa", 1)]) == "aa"
    assert elect_host([fileless]) is None, "no node with the file: no host, it waits"
    plan = make_plan(c("aa", 2, "host"), [fileless], GB // 10, force_split=True)
    assert (plan.mode, plan.workers) == ("split", ("zz",))


def test_seed_split_shares() -> None:
    assert tensor_split([103 * GB, 51 * GB]) == (0.67, 0.33)
    assert tensor_split([2 * GB, 1 * GB]) == (0.67, 0.33)
    assert tensor_split([0, 0, 0]) == (0.33, 0.33, 0.34), "no VRAM known: equal, summing to 1"


@given(st.lists(st.integers(min_value=0, max_value=10**13), min_size=1, max_size=8))
def test_tensor_split_sums_to_one(vrams: list[int]) -> None:
    shares = tensor_split(vrams)
    assert len(shares) == len(vrams)
    assert abs(sum(shares) - 1) < 1e-9


def test_solo_when_the_model_fits() -> None:
    plan = make_plan(c("h", 10, "host"), [c("w", 10)], 5 * GB)
    assert (plan.mode, plan.workers, plan.tensor_split) == ("solo", (), (1.0,))


def test_split_when_forced_uses_every_worker_but_clients() -> None:
    plan = make_plan(c("h", 2, "host"), [c("w", 1), c("x", 9, "client")], GB // 10,
                     force_split=True)
    assert (plan.mode, plan.workers, plan.tensor_split) == ("split", ("w",), (0.67, 0.33))


def test_split_takes_nearest_workers_until_the_model_fits() -> None:
    workers = [c("far", 10, rtt=50), c("near", 10, rtt=1), c("mid", 10, rtt=10)]
    plan = make_plan(c("h", 10, "host"), workers, 25 * GB)
    assert plan.mode == "split" and plan.workers == ("near", "mid")


def test_waiting_when_the_mesh_is_too_small() -> None:
    plan = make_plan(c("h", 1, "host"), [c("w", 1)], 10 * GB)
    assert plan.mode == "waiting" and "need 11.0 GB" in plan.reason


def test_incompatible_peers_are_named_with_a_reason() -> None:
    assert incompatibility("M", "3.0.0", ["M"], "3.1.0") is None
    assert "serves N, not M" in (incompatibility("M", "3.0.0", ["N"], "3.0.0") or "")
    assert "RPC protocol 4.0.0" in (incompatibility("M", "3.0.0", ["M"], "4.0.0") or "")


def test_cpu_host_sends_the_workers_share_of_layers_and_keeps_the_output_head() -> None:
    where = placement((0.67, 0.33), 30, host_has_gpu=False)
    assert where.gpu_layers == 10 + 1, "10 repeating layers plus the output layer, pinned back"
    assert where.tensor_split == () and where.overrides == (OUTPUT_ON_HOST,)
    three = placement((0.5, 0.3, 0.2), 30, host_has_gpu=False)
    assert three.gpu_layers == 16 and three.tensor_split == (0.6, 0.4)


def test_gpu_host_is_the_last_device_of_the_split() -> None:
    where = placement((0.67, 0.33), 30, host_has_gpu=True)
    assert where == Placement(999, (0.33, 0.67), ())


def test_tensor_split_never_has_a_negative_share() -> None:
    """150 equal workers round to 0.01 each, which sums past 1 before the last one."""
    shares = tensor_split([1] * 150)
    assert len(shares) == 150
    assert min(shares) >= 0.0
