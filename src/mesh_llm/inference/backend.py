"""Which llama.cpp backend to build for this machine, and what the built engine can use.

Two questions with pure answers, kept apart from the probing around them:

* before the build: from what the machine has (a CUDA toolkit, ROCm, macOS, a Vulkan SDK),
  which backend and which CMake flags (`choose_backend`, `cmake_args`); scripts/setup asks
  `python -m mesh_llm.inference.backend`, and `MESH_LLM_BACKEND` overrides the choice;
* after it: which devices the engine lists (`llama-server --list-devices`), what backend that
  means, and how much memory the node may offer (`offered_memory`): GPU memory that a CPU
  build cannot use is not offered.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("cpu", "cuda", "rocm", "metal", "vulkan")
_FLAGS = {
    "cpu": [],
    "cuda": ["-DGGML_CUDA=ON"],
    "rocm": ["-DGGML_HIP=ON"],
    "metal": ["-DGGML_METAL=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
}
# llama.cpp's device names start with the backend's name: CUDA0, ROCm0, Metal, Vulkan0, ...
_DEVICE_PREFIX = (("cuda", "cuda"), ("rocm", "rocm"), ("hip", "rocm"), ("metal", "metal"),
                  ("vulkan", "vulkan"))
_DEVICE_LINE = re.compile(r"\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*")
GPU_TOOLS = ("nvidia-smi", "rocm-smi", "hw.memsize")  # hardware.detect_vram's GPU sources
MiB = 1024 * 1024


@dataclass(frozen=True)
class MachineFacts:
    """What decides the backend; gathered by `machine_facts`, or written out in tests."""

    system: str  # platform.system(): Linux, Darwin, ...
    nvcc: bool  # a CUDA toolkit's compiler
    hipcc: bool  # ROCm's compiler
    vulkan_sdk: bool  # glslc and the Vulkan loader's headers
    nvidia_gpu: bool = False  # an NVIDIA device node or a working nvidia-smi
    amd_gpu: bool = False  # the ROCm kernel driver's device node


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    total_bytes: int
    free_bytes: int


class BackendError(ValueError):
    """An override that names no backend."""


def choose_backend(facts: MachineFacts, override: str | None = None) -> str:
    """The backend to build: the override, else CUDA or ROCm where both the GPU and its
    compiler are present (a toolkit on a machine with no GPU builds nothing it can use),
    Metal on macOS, Vulkan where its SDK is, else the CPU."""
    if override:
        choice = override.strip().lower()
        if choice not in BACKENDS:
            raise BackendError(f"MESH_LLM_BACKEND={override!r} is not one of "
                               f"{', '.join(BACKENDS)}")
        return choice
    if facts.nvcc and facts.nvidia_gpu:
        return "cuda"
    if facts.hipcc and facts.amd_gpu:
        return "rocm"
    if facts.system == "Darwin":
        return "metal"
    if facts.vulkan_sdk:
        return "vulkan"
    return "cpu"


def backend_note(facts: MachineFacts, backend: str) -> str | None:
    """What the user should know about the choice (a GPU the build will not use)."""
    if backend != "cuda" and facts.nvidia_gpu and not facts.nvcc:
        return ("an NVIDIA GPU is present but no CUDA toolkit (nvcc): building for "
                f"{backend}; install the toolkit and run setup again to use the GPU")
    if backend != "rocm" and facts.amd_gpu and not facts.hipcc:
        return (f"an AMD GPU is present but no ROCm compiler (hipcc): building for {backend}")
    return None


def cmake_args(backend: str) -> list[str]:
    if backend not in _FLAGS:
        raise BackendError(f"unknown backend {backend!r}")
    return list(_FLAGS[backend])


def parse_devices(text: str) -> list[Device]:
    """Devices from `llama-server --list-devices` (it lists no CPU device; "(none)" on a
    CPU-only build)."""
    devices = []
    for line in text.splitlines():
        match = _DEVICE_LINE.fullmatch(line)
        if match is not None:
            name, description, total, free = match.groups()
            devices.append(Device(name, description, int(total) * MiB, int(free) * MiB))
    return devices


def backend_of(devices: list[Device]) -> str:
    """The backend a build was made with, read off the devices it lists."""
    for device in devices:
        lowered = device.name.lower()
        for prefix, backend in _DEVICE_PREFIX:
            if lowered.startswith(prefix):
                return backend
    return "cpu"


def offered_memory(detected: int, source: str, devices: list[Device],
                   ram: int) -> tuple[int, str, str | None]:
    """(bytes, source, warning) a node may offer for models.

    GPU memory that a GPU tool reports counts only if the engine lists a GPU device; else the
    node offers RAM and says why. Where no GPU tool answered but the engine lists GPU devices
    (e.g. Vulkan), their memory is what it offers."""
    gpus = [d for d in devices if backend_of([d]) != "cpu"]
    if source in GPU_TOOLS and source != "hw.memsize" and not gpus:
        return ram, "available RAM", (
            f"{source} reports {detected / 1e9:.1f} GB of GPU memory, but this llama.cpp build "
            "lists no GPU device, so it cannot use it: offering RAM instead (rebuild the engine "
            "for the GPU with scripts/setup, or point --bin-dir at a GPU build)")
    if source not in GPU_TOOLS and gpus:
        return sum(d.total_bytes for d in gpus), f"llama.cpp devices ({gpus[0].name})", None
    return detected, source, None


def list_devices(llama_server: Path, timeout: float = 15.0) -> list[Device]:
    """Ask the engine which devices it can use ([] when it cannot say)."""
    try:
        out = subprocess.run([str(llama_server), "--list-devices"], capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_devices(out.stdout + out.stderr)


def machine_facts() -> MachineFacts:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = shutil.which("nvcc") is not None or (Path(cuda_home) / "bin" / "nvcc").is_file()
    vulkan = shutil.which("glslc") is not None and any(
        Path(d, "vulkan", "vulkan.h").is_file() for d in ("/usr/include", "/usr/local/include"))
    nvidia = Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
    return MachineFacts(platform.system(), nvcc, shutil.which("hipcc") is not None, vulkan,
                        nvidia_gpu=nvidia, amd_gpu=Path("/dev/kfd").exists())


def main(argv: list[str]) -> int:
    """`python -m mesh_llm.inference.backend`: print "BACKEND<TAB>CMAKE FLAGS" for setup."""
    facts = machine_facts()
    try:
        backend = choose_backend(facts, os.environ.get("MESH_LLM_BACKEND"))
    except BackendError as err:
        print(f"setup: {err}", file=sys.stderr)
        return 2
    note = backend_note(facts, backend)
    if note is not None:
        print(f"[setup] {note}", file=sys.stderr)
    print(f"{backend}\t{' '.join(cmake_args(backend))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
