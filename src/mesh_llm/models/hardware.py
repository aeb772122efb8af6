"""How much memory this node can offer a model ("VRAM"), by the best source available."""

from __future__ import annotations

import shutil
import subprocess
import sys

GB = 10**9


def _nvidia_vram() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
        mib = sum(int(line.strip()) for line in out.splitlines() if line.strip())
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    return mib * 1024 * 1024 if mib > 0 else None


def _rocm_vram() -> int | None:
    if shutil.which("rocm-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["rocm-smi", "--showmeminfo", "vram", "--csv"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    total = 0
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) >= 2 and fields[1].strip().isdigit():
            total += int(fields[1])
    return total or None


def _macos_vram() -> int | None:
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        return int(int(out.strip()) * 0.75)
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def detect_vram() -> tuple[int, str]:
    """(bytes, source): GPU memory if a GPU tool answers, else the CPU's available RAM."""
    for source, probe in (("nvidia-smi", _nvidia_vram), ("rocm-smi", _rocm_vram),
                          ("hw.memsize", _macos_vram)):
        found = probe()
        if found:
            return found, source
    return available_ram(), "available RAM"


def capped(vram: int, max_vram_gb: float | None) -> int:
    """Apply --max-vram, in decimal GB like the console shows."""
    if max_vram_gb is None:
        return vram
    return min(vram, int(max_vram_gb * GB))
