"""Download on demand, like Ollama: what `--model` names and is not here is fetched first.

Catalog names, `hf://ORG/REPO/FILE.gguf`, hub URLs and `ORG/REPO:QUANT` all become one
`RemoteSet` (one file or every part of a split set, at one commit). Before the first byte:
every part's size from the hub, and a refusal when the disk cannot hold what is missing.
Then each part is fetched into the Hugging Face cache, resumed from its partial file after a
cut or in a later run, and checked (size, and sha256 where the catalog or the hub gives one)
before it is linked where huggingface_hub and llama.cpp find it.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import catalog, hfcache, hub
from .hubref import HubRef, parse_hub_ref, pick_quant
from .progress import Progress, human
from .split import set_names

log = logging.getLogger("mesh_llm.download")

RESUME_TRIES = 5  # reconnects in a row that bring no new byte before we give up
RETRY_PAUSE_S = 1.0


@dataclass
class RemoteSet:
    label: str  # what the user named
    repo: str
    revision: str
    names: list[str]  # repository paths, part 1 first
    sizes: list[int | None]
    sha256s: list[str | None]


def _unreachable(rs: RemoteSet, err: hub.HubError) -> UserError:
    url = hub.file_url(rs.repo, rs.revision, rs.names[0])
    by_hand = (f"download {url} by hand and run with --model /path/to/{Path(rs.names[0]).name}"
               if len(rs.names) == 1 else
               f"download the {len(rs.names)} parts from {url.rsplit('/', 1)[0]}/ by hand into "
               f"one folder and run with --model /path/to/{Path(rs.names[0]).name}")
    return UserError(f"cannot download {rs.label}: {err}. Check the network (or HF_ENDPOINT), "
                     f"or {by_hand}")


def remote_set(model: str) -> RemoteSet | None:
    """What to fetch for `model`; None for a local path or a model shipped in a package."""
    ref = parse_hub_ref(model)
    if ref is not None:
        return _for_ref(model, ref)
    entry = catalog.find(model)
    if entry is None or entry.package:
        return None
    return RemoteSet(entry.name, entry.repo, "main", [f.name for f in entry.files],
                     [f.size for f in entry.files], [f.sha256 for f in entry.files])


def _for_ref(label: str, ref: HubRef) -> RemoteSet:
    if ref.file is not None:
        folder, _, base = ref.file.rpartition("/")
        prefix = f"{folder}/" if folder else ""
        names = [prefix + n for n in set_names(base)]
        return RemoteSet(label, ref.repo, ref.revision, names, [None] * len(names),
                         [None] * len(names))
    assert ref.quant is not None
    cached = pick_quant(hfcache.snapshot_files(ref.repo, ref.revision), ref.quant)
    if cached is not None and hfcache.cached_set(ref.repo, cached, ref.revision) is not None:
        return RemoteSet(label, ref.repo, ref.revision, cached, [None] * len(cached),
                         [None] * len(cached))
    try:
        listing = hub.list_files(ref.repo, ref.revision)
    except hub.HubUnreachable as err:
        page = f"{hub.endpoint()}/{ref.repo}/tree/{ref.revision}"
        raise UserError(f"cannot download {label}: {err}. Check the network (or HF_ENDPOINT), "
                        f"or download the {ref.quant} file (all its parts, if split) from {page} "
                        "by hand into one folder and run with --model /path/to/FILE.gguf") \
            from None
    except hub.HubError as err:
        raise UserError(f"cannot download {label}: {err}") from None
    chosen = pick_quant([name for name, _, _ in listing], ref.quant)
    if chosen is None:
        ggufs = sorted({Path(n).name for n, _, _ in listing if n.lower().endswith(".gguf")})
        shown = ", ".join(ggufs[:12]) + (" ..." if len(ggufs) > 12 else "")
        raise UserError(f"{ref.repo} has no {ref.quant} GGUF file (it has: {shown or 'none'})")
    info = {name: (size, sha) for name, size, sha in listing}
    return RemoteSet(label, ref.repo, ref.revision, chosen,
                     [info[n][0] if isinstance(info[n][0], int) else None for n in chosen],
                     [info[n][1] if isinstance(info[n][1], str) else None for n in chosen])


def missing(rs: RemoteSet) -> bool:
    return hfcache.cached_set(rs.repo, rs.names, rs.revision) is None


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 0


def fetch(rs: RemoteSet) -> list[Path]:
    """Every file of `rs` in the cache (downloading what is missing); UserError on failure."""
    cached = hfcache.cached_set(rs.repo, rs.names, rs.revision)
    if cached is not None:
        return cached
    metas: list[hub.FileMeta] = []
    commit: str | None = None
    for name in rs.names:
        try:
            # every part at the commit of part 1, so the parts share one snapshot folder
            meta = hub.head(rs.repo, commit or rs.revision, name)
        except hub.HubUnreachable as err:
            raise _unreachable(rs, err) from None
        except hub.HubError as err:
            raise UserError(f"cannot download {rs.label}: {err}") from None
        commit = commit or meta.commit
        metas.append(meta)
    assert commit is not None
    for i, meta in enumerate(metas):
        known = rs.sizes[i]
        if known is not None and meta.size is not None and known != meta.size:
            raise UserError(f"{rs.label}: the hub says {meta.name} has {meta.size} bytes, the "
                            f"catalog says {known}: refusing a file that is not the expected one")
    need = 0
    for meta in metas:
        if hfcache.blob_path(rs.repo, meta.etag).exists():
            continue
        size = meta.size if meta.size is not None else 0
        partial = hfcache.partial_path(rs.repo, meta.etag)
        need += max(0, size - (partial.stat().st_size if partial.exists() else 0))
    root = hfcache.repo_dir(rs.repo)
    free = _free_bytes(root)
    if need > free:
        raise UserError(f"not enough disk space for {rs.label}: {human(need)} more is needed "
                        f"in {hfcache.cache_root()}, only {human(free)} is free (free some "
                        "space, or set HF_HOME to a bigger disk)")
    paths = []
    for i, meta in enumerate(metas):
        sha = rs.sha256s[i] or meta.sha256
        expected = meta.size if meta.size is not None else rs.sizes[i]
        paths.append(_fetch_one(rs, meta, commit, expected, sha))
    return paths


def _hash_file(path: Path, digest: hashlib._Hash) -> None:  # type: ignore[name-defined]
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)


@contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """One download of a file at a time on this machine (two nodes sharing a cache, or
    huggingface_hub itself, which takes the same flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is downloading it; waiting for it", what)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch_one(rs: RemoteSet, meta: hub.FileMeta, commit: str, size: int | None,
               sha256: str | None) -> Path:
    blob = hfcache.blob_path(rs.repo, meta.etag)
    if not blob.exists():
        with _locked(hfcache.lock_path(rs.repo, meta.etag), Path(meta.name).name):
            if not blob.exists():  # the other process may have finished it meanwhile
                partial = hfcache.partial_path(rs.repo, meta.etag)
                partial.parent.mkdir(parents=True, exist_ok=True)
                _download(rs, meta, partial, size, sha256)
                os.replace(partial, blob)
    return hfcache.place(rs.repo, rs.revision, commit, meta.name, meta.etag)


def _download(rs: RemoteSet, meta: hub.FileMeta, partial: Path, size: int | None,
              sha256: str | None) -> None:
    """Fill `partial` up to `size`, resuming, then check it; a bad file is deleted."""
    digest = hashlib.sha256()
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        have = 0
    if have and sha256:
        _hash_file(partial, digest)
    name = Path(meta.name).name
    progress = Progress(name, size or 0, have)
    fruitless = 0
    try:
        with open(partial, "ab") as out:
            while size is None or have < size:
                before = have
                try:
                    got = hub.get_from(meta.url, have)
                    if got is None:  # 416: nothing past `have`
                        break
                    if got.start != have:  # the server ignored the range: start over
                        out.seek(0)
                        out.truncate()
                        digest = hashlib.sha256()
                        have = 0
                        progress.rewind(0)
                    try:
                        for chunk in got.chunks():
                            out.write(chunk)
                            if sha256:
                                digest.update(chunk)
                            have += len(chunk)
                            progress.update(len(chunk))
                    finally:
                        got.close()
                    if size is None:
                        break
                    if have < size:
                        log.info("%s: the connection ended at %s of %s; resuming", name,
                                 human(have), human(size))
                except (hub.HubUnreachable, OSError, http.client.HTTPException) as err:
                    fruitless = 0 if have > before else fruitless + 1
                    if fruitless >= RESUME_TRIES:
                        out.flush()
                        raise _unreachable(rs, hub.HubError(str(err))) from None
                    log.info("%s: connection lost at %s (%s); resuming", name, human(have),
                             err)
                    time.sleep(RETRY_PAUSE_S)
                    continue
                except hub.HubError as err:
                    raise UserError(f"cannot download {rs.label}: {err}") from None
                if have == before:
                    fruitless += 1
                    if fruitless >= RESUME_TRIES:
                        break
    finally:
        progress.close()
    if size is not None and have != size:
        partial.unlink(missing_ok=True)
        raise UserError(f"{rs.label}: {name} came as {have} bytes, the hub says {size}: "
                        "deleted it; run the same command again")
    if sha256 and digest.hexdigest() != sha256.lower():
        partial.unlink(missing_ok=True)
        raise UserError(f"{rs.label}: {name} does not match its sha256 ({digest.hexdigest()[:16]}"
                        f"... instead of {sha256[:16]}...): deleted it; run the same command "
                        "again")


@contextmanager
def _interruptible(label: str) -> Iterator[None]:
    """Ctrl-C stops a download at once, even inside the node's event loop (whose own SIGINT
    handler would wait for the loop to get control back: after the whole download)."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        yield
    except KeyboardInterrupt:
        raise UserError(f"download of {label} interrupted: run the same command again to "
                        "resume where it stopped", 130) from None
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def ensure(model: str, *, with_draft: bool) -> None:
    """Before a node starts: fetch what `model` names (and its catalog draft) if missing.
    A draft that cannot be fetched only costs speculative decoding, so it is a warning."""
    with _interruptible(model):
        rs = remote_set(model)
        if rs is not None and missing(rs):
            fetch(rs)
        entry = catalog.find(model)
        if with_draft and entry is not None and entry.draft:
            draft = remote_set(entry.draft)
            if draft is not None and missing(draft):
                try:
                    fetch(draft)
                except UserError as err:
                    if err.exit_code == 130:
                        raise
                    log.warning("no draft model: %s", err)


def download(model: str, *, with_draft: bool = True) -> list[Path]:
    """`mesh-llm download`: fetch `model` (and its draft) without starting a node."""
    entry = catalog.find(model)
    with _interruptible(model):
        rs = remote_set(model)
        if rs is None:
            if entry is not None and entry.package:
                print(f"{entry.name} ships in a Python package: {entry.source}")
                return []
            raise UserError(f"unknown model {model!r}: give a catalog name ({catalog.names()}), "
                            "hf://ORG/REPO/FILE.gguf, a huggingface.co URL, or ORG/REPO:QUANT")
        paths = fetch(rs)
    print(f"{rs.label}: {paths[0]}" + (f" (+{len(paths) - 1} parts)" if len(paths) > 1 else ""))
    if with_draft and entry is not None and entry.draft:
        download(entry.draft, with_draft=False)
    return paths
