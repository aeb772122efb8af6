"""A model's files on disk: one GGUF file or every part of a split set, checked up front.

Why: llama.cpp is given part 1 and opens the rest itself, failing late (or loading
nonsense) when a part is missing, cut short or from another model. Everything of ours that
sizes, fingerprints or references a model needs all the parts, so they are found and checked
here once, before any process starts: magic and version, `split.count`/`split.no` against
the file names, `split.tensors.count` against the tensors the parts really hold (no tensor
twice, none missing), and every tensor's data inside its file.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .gguf_header import GgufError
from .gguf_info import check_gguf, read_metadata
from .split import model_stem, parse_split_name, set_names
from .weights import parse_gguf_layout

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass(frozen=True)
class ModelFiles:
    paths: tuple[Path, ...]  # part 1 first; a single file is a set of one
    sizes: tuple[int, ...]

    @property
    def first(self) -> Path:
        return self.paths[0]

    @property
    def size_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def name(self) -> str:
        """The model's name: the file name without the shard suffix."""
        return model_stem(self.paths[0].name)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tensor_names(path: Path) -> set[bytes]:
    """The tensors this file holds; a GgufError if its header or data do not fit the file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return set(parse_gguf_layout(buf).tensors)


def check_model_files(path: Path) -> ModelFiles:
    """All files of the model `path` names (any part of a split set names the whole set),
    each checked; a one-line UserError naming the file at fault otherwise."""
    check_gguf(path)
    names = set_names(path.name)
    paths = tuple(path.parent / name for name in names)
    split = parse_split_name(path.name)
    for k, part in enumerate(paths, start=1):
        if not part.exists():
            raise UserError(f"split model {model_stem(path.name)}: part {k} of {len(paths)} is "
                            f"missing: {part} (put every part in the same folder)")
    sizes: list[int] = []
    seen: set[bytes] = set()
    declared: int | None = None
    for k, part in enumerate(paths, start=1):
        info = check_gguf(part)
        if info.version not in (2, 3):
            raise UserError(f"{part}: GGUF version {info.version} is not supported (2 or 3)")
        try:
            meta = read_metadata(part, SPLIT_KEYS)
            tensors = _tensor_names(part)
        except (OSError, GgufError, ValueError) as err:
            raise UserError(f"{part}: damaged GGUF file ({err}); download it again") from None
        count, no = _int(meta.get("split.count")), _int(meta.get("split.no"))
        if split is None:
            if count is not None and count > 1:
                raise UserError(f"{part} is part {(no or 0) + 1} of a {count}-part split model "
                                "but is not named NAME-0000K-of-0000N.gguf: give it its "
                                "original name so llama.cpp finds the other parts")
        else:
            if count != len(paths) or no != k - 1:
                said = f"part {no + 1} of {count}" if no is not None and count else "no part"
                raise UserError(f"{part}: its metadata says {said}, its name says part {k} of "
                                f"{len(paths)}: it belongs to another model")
            total = _int(meta.get("split.tensors.count"))
            if declared is None:
                declared = total
            elif total != declared:
                raise UserError(f"{part}: declares {total} tensors in the set, part 1 declares "
                                f"{declared}: it belongs to another model")
            if seen & tensors:
                raise UserError(f"{part}: holds tensors another part already holds: it "
                                "belongs to another model")
        seen |= tensors
        sizes.append(info.size_bytes)
    if split is not None and declared is not None and len(seen) != declared:
        raise UserError(f"split model {model_stem(path.name)}: its parts hold {len(seen)} "
                        f"tensors, the set declares {declared}: a part belongs to another model")
    # absolute, not resolved: in the Hugging Face cache each part is a symlink to a blob
    # named by its hash, and llama.cpp finds the other parts by the names beside part 1
    return ModelFiles(tuple(Path(os.path.abspath(p)) for p in paths), tuple(sizes))
