"""What `mesh-llm models` shows: the catalog, what of it is on disk, and other cached GGUFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import catalog, hfcache
from .resolve import find_local
from .split import model_stem, parse_split_name, set_names


def list_models() -> dict[str, list[dict[str, Any]]]:
    """{"catalog": [...], "other": [...]}: plain JSON values, for the table and for --json."""
    rows = []
    known: set[tuple[str, str]] = set()
    for entry in catalog.CATALOG:
        local = find_local(entry.name)
        known.update((entry.repo, f.name) for f in entry.files)
        rows.append({
            "name": entry.name, "family": entry.family, "repo": entry.repo or None,
            "files": [{"name": f.name, "size_bytes": f.size, "sha256": f.sha256}
                      for f in entry.files],
            "size_bytes": entry.size_bytes, "approx_gb": entry.approx_gb,
            "draft": entry.draft, "source": entry.source,
            "on_disk": local is not None,
            "path": str(local.path) if local is not None else None,
        })
    other = []
    for repo, path in hfcache.gguf_in_cache():
        rel = "/".join(path.relative_to(hfcache.repo_dir(repo) / "snapshots").parts[1:])
        split = parse_split_name(path.name)
        if (repo, rel) in known or (split is not None and split.no != 1):
            continue
        parts = [path.parent / n for n in set_names(path.name)]
        if path.name.lower().startswith("mmproj") or not all(p.is_file() for p in parts):
            continue
        other.append({
            "name": model_stem(path.name), "repo": repo, "path": str(path),
            "parts": len(parts), "size_bytes": sum(Path(p).stat().st_size for p in parts),
            "model": f"hf://{repo}/{rel}",
        })
    return {"catalog": rows, "other": other}
