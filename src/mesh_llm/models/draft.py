"""Pick the draft model for speculative decoding: given, paired in the catalog, or found.

A draft only helps when it shares the main model's vocabulary and is much smaller; a
file next to the model that passes both checks is used when nothing else was named.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..errors import UserError
from .gguf_header import GgufError
from .gguf_info import read_metadata
from .modelfiles import check_model_files
from .resolve import ResolvedModel, resolve_model
from .split import parse_split_name, set_names

log = logging.getLogger("mesh_llm.draft")

MAX_DRAFT_FRACTION = 0.5  # a draft at most half the size of the main model


def vocabulary(path: Path) -> tuple[bytes, int, bytes] | None:
    """(tokenizer model, vocabulary size, hash of the token list), or None if unreadable."""
    keys = ("tokenizer.ggml.model", "tokenizer.ggml.tokens")
    try:
        meta = read_metadata(path, keys)
    except (OSError, GgufError):
        return None
    kind, tokens = meta.get(keys[0]), meta.get(keys[1])
    if not isinstance(tokens, list):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for token in tokens:
        digest.update(len(token).to_bytes(4, "little") + token)
    return (kind if isinstance(kind, bytes) else b"", len(tokens), digest.digest())


def find_draft(model: ResolvedModel, draft: str | None, no_draft: bool) -> Path | None:
    """The draft file to load with `model`, or None for no speculative decoding."""
    if no_draft:
        return None
    if draft is not None:
        try:
            path = check_model_files(Path(draft).expanduser()).first
        except UserError as err:
            raise UserError(f"--draft: {err}") from None
        if vocabulary(path) != vocabulary(model.path):
            raise UserError(f"--draft {path} has a different vocabulary from {model.name}: "
                            "a draft must use the same tokenizer")
        return Path(os.path.abspath(path))
    if model.entry is not None and model.entry.draft:
        try:
            return resolve_model(model.entry.draft).path
        except UserError as err:
            log.warning("no draft model: %s", err)
            return None
    return _draft_beside(model)


def _draft_beside(model: ResolvedModel) -> Path | None:
    """The largest smaller GGUF in the model's folder with the same vocabulary (a split
    draft counts as its part 1, sized by all its parts; the model's own parts never count)."""
    limit = model.size_bytes * MAX_DRAFT_FRACTION
    own = {p.name for p in model.paths}
    candidates: list[tuple[int, Path]] = []
    for path in model.path.parent.glob("*.gguf"):
        split = parse_split_name(path.name)
        if path.name in own or not path.is_file() or (split is not None and split.no != 1):
            continue
        parts = [path.parent / name for name in set_names(path.name)]
        if not all(p.is_file() for p in parts):
            continue
        size = sum(p.stat().st_size for p in parts)
        if size <= limit:
            candidates.append((size, path))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0], reverse=True)
    wanted = vocabulary(model.path)
    for _, path in candidates[:8]:
        if wanted is not None and vocabulary(path) == wanted:
            log.info("draft model found beside the model: %s", path.name)
            return Path(os.path.abspath(path))
    return None
