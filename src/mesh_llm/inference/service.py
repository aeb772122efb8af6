"""What one model's llama-server is started with: the node's choices for one model file,
gathered by the node layer so that hosting needs nothing of the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.resolve import ResolvedModel
from .engine import Engine


@dataclass(frozen=True)
class ServeSpec:
    """One model as this node would serve it when elected."""

    model: ResolvedModel | None
    engine: Engine | None
    vram_bytes: int  # what this node offers (plans and overlap checks read it)
    has_gpu: bool = False  # a CPU host holds new requests while an old server drains
    draft: Path | None = None
    split: bool = False  # --split: always spread over the workers
    draft_max: int = 8
    parallel: int | None = None  # llama-server slots; None: the mode's default
    llama_args: tuple[str, ...] = ()  # --llama-arg, after ours
    api_port: int = 9337  # named in the "ready" line
