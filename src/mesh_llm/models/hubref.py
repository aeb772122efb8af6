"""`--model` forms that name a file on a Hugging Face hub, and picking a quant's files.

Pure: `hf://ORG/REPO/FILE.gguf`, `https://HOST/ORG/REPO/resolve/REV/FILE.gguf` and
`ORG/REPO:QUANT` become a `HubRef`; a repository's file list plus a quant become the one
file or split set to fetch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .split import is_complete_set, parse_split_name, set_names

_HF_SCHEME = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>.+\.gguf)$", re.IGNORECASE)
_HF_URL = re.compile(r"^https?://[^/]+/(?P<repo>[\w.-]+/[\w.-]+)/(?:resolve|blob)/"
                     r"(?P<rev>[^/]+)/(?P<file>[^?#]+\.gguf)(?:[?#].*)?$", re.IGNORECASE)
_REPO_QUANT = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<quant>[\w.-]+)$")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str = "main"
    file: str | None = None  # a file (any part of a split set names the set) ...
    quant: str | None = None  # ... or a quant to pick from the repository's file list

    def __str__(self) -> str:
        if self.quant:
            return f"{self.repo}:{self.quant}"
        return f"hf://{self.repo}/{self.file}"


def parse_hub_ref(text: str) -> HubRef | None:
    """The hub reference `text` is, or None (a catalog name or a local path)."""
    if m := _HF_SCHEME.match(text):
        return HubRef(m["repo"], "main", m["file"])
    if m := _HF_URL.match(text):
        return HubRef(m["repo"], unquote(m["rev"]), unquote(m["file"]))
    if m := _REPO_QUANT.match(text):
        return HubRef(m["repo"], "main", None, m["quant"])
    return None


def _quant_pattern(quant: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[-_.]){re.escape(quant)}(?:[-_.]|$)", re.IGNORECASE)


def quant_sets(names: list[str], quant: str) -> list[list[str]]:
    """Every complete file set in `names` (repository paths) whose file name carries the
    quant as a whole token (`Q4_1` matches `m-Q4_1.gguf`, not `m-Q4_1_XL.gguf`); projector
    files (`mmproj*`) are not models."""
    pattern = _quant_pattern(quant)
    present = set(names)
    found: list[list[str]] = []
    for name in sorted(names):
        folder, _, base = name.rpartition("/")
        if not base.lower().endswith(".gguf") or base.lower().startswith("mmproj"):
            continue
        if not pattern.search(base[:-5]):
            continue
        split = parse_split_name(base)
        if split is not None and split.no != 1:
            continue
        prefix = f"{folder}/" if folder else ""
        group = [prefix + n for n in set_names(base)]
        if all(g in present for g in group) and is_complete_set([g.rpartition("/")[2]
                                                                  for g in group]):
            found.append(group)
    return found


def pick_quant(names: list[str], quant: str) -> list[str] | None:
    """The file set for `quant`: the first complete set by name, or None."""
    sets = quant_sets(names, quant)
    return sets[0] if sets else None
