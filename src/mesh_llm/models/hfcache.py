"""The Hugging Face cache layout, read and written the way huggingface_hub does.

`$HF_HUB_CACHE/models--ORG--REPO/{blobs/ETAG, snapshots/COMMIT/FILE -> ../../blobs/ETAG,
refs/REVISION}`: files we download are found by huggingface_hub (and `hf cache`) and vice
versa. A partial download lives in `blobs/ETAG.incomplete` and is resumed from there, also by
a later run.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, as they are now (huggingface_hub reads them once)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_dir(repo: str) -> Path:
    return cache_root() / ("models--" + repo.replace("/", "--"))


def commit_for(repo: str, revision: str) -> str | None:
    """The commit a revision pointed to when we last asked the hub (or the commit itself)."""
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    ref = repo_dir(repo) / "refs" / revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def cached_file(repo: str, name: str, revision: str = "main") -> Path | None:
    """The file at `revision` in the cache, if complete (a snapshot link to a blob)."""
    commit = commit_for(repo, revision)
    if commit is None:
        return None
    path = repo_dir(repo) / "snapshots" / commit / name
    return path if path.is_file() else None


def cached_set(repo: str, names: list[str], revision: str = "main") -> list[Path] | None:
    """Every file of `names` from the cache, or None unless all are there."""
    found = [cached_file(repo, name, revision) for name in names]
    return None if any(p is None for p in found) else [p for p in found if p is not None]


def snapshot_files(repo: str, revision: str = "main") -> list[str]:
    """The .gguf files (repository paths) of the cached snapshot of `revision`."""
    commit = commit_for(repo, revision)
    if commit is None:
        return []
    root = repo_dir(repo) / "snapshots" / commit
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.gguf") if p.is_file())


def blob_path(repo: str, etag: str) -> Path:
    return repo_dir(repo) / "blobs" / etag


def partial_path(repo: str, etag: str) -> Path:
    return repo_dir(repo) / "blobs" / f"{etag}.incomplete"


def lock_path(repo: str, etag: str) -> Path:
    """Where huggingface_hub locks a blob while it downloads it (a flock, as ours)."""
    return cache_root() / ".locks" / ("models--" + repo.replace("/", "--")) / f"{etag}.lock"


def place(repo: str, revision: str, commit: str, name: str, etag: str) -> Path:
    """Link the finished blob into the snapshot and record what `revision` points to."""
    blob = blob_path(repo, etag)
    link = repo_dir(repo) / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), tmp)
    os.replace(tmp, link)  # atomic: another process may link the same file right now
    if revision != commit:
        ref = repo_dir(repo) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp_ref = ref.with_name(f".{ref.name}.{os.getpid()}")
        tmp_ref.write_text(commit)
        os.replace(tmp_ref, ref)
    return link


def gguf_in_cache() -> list[tuple[str, Path]]:
    """(repo, file) for every .gguf in every cached snapshot: what `mesh-llm models` lists."""
    root = cache_root()
    found: list[tuple[str, Path]] = []
    if not root.is_dir():
        return found
    for repo in sorted(root.glob("models--*")):
        name = repo.name[len("models--"):].replace("--", "/", 1)
        for path in sorted((repo / "snapshots").glob("*/**/*.gguf")):
            if path.is_file():
                found.append((name, path))
    return found
