"""Start-up checks: everything that can fail fast, before any process starts.

The engine (a missing llama.cpp is a one-line error before any download), the memory this
node offers, and the model: downloaded if missing, its parts checked, its draft found and
its weights indexed for the RPC tunnel's dedupe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..inference.backend import Device, backend_of, list_devices, offered_memory
from ..inference.engine import Engine, find_engine
from ..inference.service import ServeSpec
from ..models import hardware
from ..models.download import ensure as ensure_downloaded
from ..models.draft import find_draft
from ..models.resolve import ResolvedModel, resolve_model
from ..models.weights import ModelWeights
from .config import NodeConfig

log = logging.getLogger("mesh_llm.node")


@dataclass(frozen=True)
class Setup:
    """What this machine brings: an engine and memory (not a lite client), a model file."""

    engine: Engine | None = None
    devices: list[Device] = field(default_factory=list)  # llama-server --list-devices
    backend: str = "none"  # the engine's: cpu, cuda, rocm, metal, vulkan ("none": client)
    vram_bytes: int = 0
    has_gpu: bool = False
    model: ResolvedModel | None = None
    draft: Path | None = None
    weights: ModelWeights | None = None  # our model file, indexed for RPC dedupe
    # The second and later --model: each the same machine with another model
    # (no draft: --draft belongs to the first).
    extras: tuple[Setup, ...] = ()


def check_setup(cfg: NodeConfig) -> Setup:
    """The engine, the memory offered and the model, or a UserError naming what is wrong."""
    if cfg.client:
        return Setup()
    engine = find_engine(cfg.bin_dir)  # before any download: a missing engine fails now
    devices = list_devices(engine.llama_server)
    backend = backend_of(devices)
    shown = ", ".join(f"{d.name} {d.description}" for d in devices) or "CPU only"
    log.info("engine: %s (%s build: %s)", engine.bin_dir, backend, shown)
    detected, source = hardware.detect_vram()
    offered, source, warning = offered_memory(detected, source, devices,
                                              hardware.available_ram())
    if warning is not None:
        log.warning("%s", warning, extra={"event": "memory offered: warning"})
    vram_bytes = hardware.capped(offered, cfg.max_vram_gb)
    capped = " (capped by --max-vram)" if vram_bytes < offered else ""
    log.info("memory for models: %.1f GB from %s%s", vram_bytes / 1e9, source, capped)
    machine = Setup(engine, devices, backend, vram_bytes, has_gpu=source != "available RAM")
    if not cfg.model:
        log.info("no --model: a worker without a model file; it serves the model of the "
                 "mesh's host, whose weights come over the mesh")
        return machine
    # a model not on this machine is fetched first (and its draft, if we may use one)
    ensure_downloaded(cfg.model, with_draft=not cfg.no_draft and cfg.draft is None)
    model = resolve_model(cfg.model)
    parts = f", {len(model.paths)} parts" if len(model.paths) > 1 else ""
    log.info("model: %s (%s, %.0f MB%s)", model.name, model.path, model.size_bytes / 1e6, parts)
    draft = find_draft(model, cfg.draft, cfg.no_draft)
    if draft is not None:
        log.info("draft: %s (speculative decoding, up to %d tokens)", draft.name, cfg.draft_max)
    extras: list[Setup] = []
    paths = {model.path}
    for name in cfg.all_models[1:]:
        ensure_downloaded(name, with_draft=False)
        other = resolve_model(name)
        if other.path in paths:
            log.warning("--model %s given twice: served once", name)
            continue
        paths.add(other.path)
        log.info("model: %s (%s, %.0f MB)", other.name, other.path, other.size_bytes / 1e6)
        extras.append(replace(machine, model=other, weights=ModelWeights.open(other.paths)))
    return Setup(engine, devices, backend, vram_bytes, machine.has_gpu, model, draft,
                 ModelWeights.open(model.paths), tuple(extras))


def serve_spec(cfg: NodeConfig, setup: Setup) -> ServeSpec:
    """How this node serves `setup`'s model when elected: the machine's facts and the
    command line's llama-server choices."""
    return ServeSpec(model=setup.model, engine=setup.engine, vram_bytes=setup.vram_bytes,
                     has_gpu=setup.has_gpu, draft=setup.draft, split=cfg.split,
                     draft_max=cfg.draft_max, parallel=cfg.parallel,
                     llama_args=cfg.llama_args, api_port=cfg.api_port)
