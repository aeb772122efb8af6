"""What a bundle is built for: OS, CPU architecture and Python major.minor (pure)."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    os: str  # `uname -s` in lower case: linux, darwin
    arch: str  # `uname -m`: x86_64, aarch64, arm64
    python: str  # "3.11"

    def describe(self) -> str:
        return f"{self.os} {self.arch} Python {self.python}"


def this_machine() -> Target:
    """The target of the interpreter running now (the wheels it would install)."""
    return Target(platform.system().lower(), platform.machine(),
                  f"{sys.version_info.major}.{sys.version_info.minor}")
