"""Split GGUF names (`NAME-0000K-of-0000N.gguf`): pure string logic, no I/O.

llama.cpp loads a split set when given part 1 and finds the others by these names in the
same folder, so the names are the contract: any part names the whole set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class SplitName:
    stem: str  # the name without the shard suffix and extension
    no: int  # 1-based, as in the file name
    count: int


def parse_split_name(name: str) -> SplitName | None:
    """The shard facts of a file name, or None for a file that is not a split part."""
    m = SPLIT_NAME.match(name)
    if m is None:
        return None
    no, count = int(m["no"]), int(m["count"])
    if not 1 <= no <= count:
        return None
    return SplitName(m["stem"], no, count)


def part_name(stem: str, no: int, count: int) -> str:
    return f"{stem}-{no:05d}-of-{count:05d}.gguf"


def set_names(name: str) -> list[str]:
    """Every file name of the set `name` belongs to, in order ([name] for a single file)."""
    split = parse_split_name(name)
    if split is None:
        return [name]
    return [part_name(split.stem, k, split.count) for k in range(1, split.count + 1)]


def model_stem(name: str) -> str:
    """What a model is called: the file name without `.gguf` and without a shard suffix."""
    split = parse_split_name(name)
    if split is not None:
        return split.stem
    return name[:-5] if name.lower().endswith(".gguf") else name


def is_complete_set(names: list[str]) -> bool:
    """Whether `names` is exactly one whole split set 1..N (or one plain file), in order."""
    return bool(names) and names == set_names(names[0]) and \
        (len(names) == 1 or ((s := parse_split_name(names[0])) is not None and s.no == 1))
