"""The engine's backend: what to build for a machine, and what a build can use (pure)."""

from __future__ import annotations

import pytest

from mesh_llm.inference.backend import (
    BackendError,
    Device,
    MachineFacts,
    backend_note,
    backend_of,
    choose_backend,
    cmake_args,
    offered_memory,
    parse_devices,
)

GB = 10**9


def facts(system: str = "Linux", **kw: bool) -> MachineFacts:
    base = {"nvcc": False, "hipcc": False, "vulkan_sdk": False, "nvidia_gpu": False,
            "amd_gpu": False}
    return MachineFacts(system, **{**base, **kw})


@pytest.mark.parametrize(("machine", "expected"), [
    (facts(), "cpu"),
    (facts(nvcc=True, nvidia_gpu=True), "cuda"),
    (facts(nvcc=True), "cpu"),  # a toolkit with no GPU (a CI image) builds for the CPU
    (facts(nvidia_gpu=True), "cpu"),  # a GPU with no toolkit: nothing to build CUDA with
    (facts(hipcc=True, amd_gpu=True), "rocm"),
    (facts(hipcc=True), "cpu"),
    (facts("Darwin"), "metal"),
    (facts(vulkan_sdk=True), "vulkan"),
    (facts(nvcc=True, nvidia_gpu=True, vulkan_sdk=True), "cuda"),
    (facts("Darwin", vulkan_sdk=True), "metal"),
])
def test_choice_follows_the_machine(machine: MachineFacts, expected: str) -> None:
    assert choose_backend(machine) == expected


def test_override_wins_and_is_checked() -> None:
    assert choose_backend(facts(nvcc=True, nvidia_gpu=True), "CPU") == "cpu"
    assert choose_backend(facts(), " vulkan ") == "vulkan"
    with pytest.raises(BackendError, match="not one of"):
        choose_backend(facts(), "opencl")


def test_flags_and_notes() -> None:
    assert cmake_args("cpu") == []
    assert cmake_args("cuda") == ["-DGGML_CUDA=ON"]
    assert cmake_args("rocm") == ["-DGGML_HIP=ON"]
    assert "no CUDA toolkit" in (backend_note(facts(nvidia_gpu=True), "cpu") or "")
    assert backend_note(facts(nvcc=True, nvidia_gpu=True), "cuda") is None
    assert backend_note(facts(), "cpu") is None


LISTING = """Available devices:
  CUDA0: NVIDIA H200 (143771 MiB, 142000 MiB free)
  CUDA1: NVIDIA H200 (143771 MiB, 143000 MiB free)
"""


def test_devices_are_read_off_the_listing() -> None:
    devices = parse_devices(LISTING)
    assert [d.name for d in devices] == ["CUDA0", "CUDA1"]
    assert devices[0].description == "NVIDIA H200"
    assert devices[0].total_bytes == 143771 * 1024 * 1024
    assert backend_of(devices) == "cuda"
    assert parse_devices("Available devices:\n  (none)\n") == []
    assert backend_of([]) == "cpu"
    for name, backend in (("Vulkan0", "vulkan"), ("ROCm0", "rocm"), ("Metal", "metal")):
        assert backend_of([Device(name, "x", 1, 1)]) == backend


def test_gpu_memory_a_cpu_build_cannot_use_is_not_offered() -> None:
    offered, source, warning = offered_memory(80 * GB, "nvidia-smi", [], 20 * GB)
    assert (offered, source) == (20 * GB, "available RAM")
    assert warning is not None and "cannot use it" in warning
    cuda = parse_devices(LISTING)
    assert offered_memory(80 * GB, "nvidia-smi", cuda, 20 * GB) == (80 * GB, "nvidia-smi",
                                                                     None)
    # no GPU tool answered, but the engine lists GPUs (e.g. Vulkan): their memory counts
    vulkan = [Device("Vulkan0", "GPU", 8 * GB, 8 * GB)]
    offered, source, warning = offered_memory(20 * GB, "available RAM", vulkan, 20 * GB)
    assert offered == 8 * GB and "Vulkan0" in source and warning is None
    assert offered_memory(20 * GB, "available RAM", [], 20 * GB) == (20 * GB, "available RAM",
                                                                     None)
