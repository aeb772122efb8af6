"""`mesh-llm download`: fetch catalog models into the Hugging Face cache."""

from __future__ import annotations

from ..errors import UserError
from . import catalog


def download(name: str, *, with_draft: bool = True) -> None:
    """Download `name` (and its draft) with progress bars, resuming partial files."""
    entry = catalog.find(name)
    if entry is None:
        names = ", ".join(e.name for e in catalog.CATALOG)
        raise UserError(f"unknown model {name!r}: choose one of {names}")
    entries = [entry]
    if with_draft and entry.draft and (draft := catalog.find(entry.draft)) is not None:
        entries.append(draft)
    for item in entries:
        if item.package:
            print(f"{item.name} ships in a Python package: {item.source}")
            continue
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        print(f"downloading {item.name} from {item.source}")
        try:
            path = hf_hub_download(item.repo, item.file)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"could not download {item.name} from {item.source}: {first}") \
                from None
        print(f"{item.name}: {path}")
