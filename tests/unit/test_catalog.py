"""The catalog is consistent: every entry is a whole file set with sizes, drafts make sense."""

from __future__ import annotations

import re

import pytest

from mesh_llm.models import catalog
from mesh_llm.models.split import is_complete_set, parse_split_name

ENTRIES = catalog.CATALOG
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def test_names_are_unique_and_found_case_insensitively() -> None:
    names = [e.name.lower() for e in ENTRIES]
    assert len(names) == len(set(names))
    for entry in ENTRIES:
        assert catalog.find(entry.name.upper()) is entry


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_files_are_one_file_or_a_complete_split_set(entry: catalog.CatalogEntry) -> None:
    names = [f.name for f in entry.files]
    assert all(n.endswith(".gguf") for n in names)
    assert is_complete_set(names), names
    if len(names) > 1:
        assert all(parse_split_name(n) is not None for n in names)
    assert entry.file == names[0]
    assert bool(entry.repo) != bool(entry.package), "a hub repository or a package, not both"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_size_is_the_sum_of_the_parts(entry: catalog.CatalogEntry) -> None:
    sizes = [f.size for f in entry.files]
    if any(s is None for s in sizes):
        assert entry.size_bytes is None  # unknown digits are never invented
        assert entry.size_gb == entry.approx_gb
        return
    assert entry.size_bytes == sum(s for s in sizes if s is not None)
    assert all(s is not None and s > 1_000_000 for s in sizes)
    assert abs(entry.size_gb - entry.approx_gb) <= 0.1 * entry.approx_gb + 0.05, \
        "approx_gb must agree with the exact sizes"
    for f in entry.files:
        assert f.sha256 is None or SHA256.match(f.sha256)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.draft], ids=lambda e: e.name)
def test_drafts_are_in_the_catalog_share_the_family_and_are_smaller(
        entry: catalog.CatalogEntry) -> None:
    assert entry.draft is not None
    draft = catalog.find(entry.draft)
    assert draft is not None, f"{entry.name}'s draft {entry.draft} is not in the catalog"
    assert draft.family == entry.family
    assert draft.draft is None, "a draft has no draft of its own"
    assert draft.size_gb < 0.5 * entry.size_gb


def test_the_models_the_task_names_are_there() -> None:
    for name, draft in [("Qwen3-32B", "Qwen3-0.6B"), ("Gemma-3-27B", "Gemma-3-1B"),
                        ("GLM-4.7-Flash", None), ("Qwen2.5-32B", "Qwen2.5-0.5B")]:
        entry = catalog.find(name)
        assert entry is not None and entry.draft == draft
    # the official Qwen2.5 Q4_K_M repos publish these as split sets of 2/3/5/12 parts
    for name, parts in [("Qwen2.5-7B", 2), ("Qwen2.5-14B", 3), ("Qwen2.5-32B", 5),
                        ("Qwen2.5-72B", 12)]:
        entry = catalog.find(name)
        assert entry is not None and len(entry.files) == parts
