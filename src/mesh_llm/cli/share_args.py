"""`--share URL [--share-key KEY]` (repeatable), `--share-remote`, and `mesh-llm share URL`:
the servers whose models a node shares with the mesh (api/shared.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..api.shared import ShareTarget, ShareUrlError, parse_share_url
from ..errors import UserError

SHARE_USAGE = "mesh-llm share URL [--share-key KEY] [--join TOKEN] [other node options]"


class _Share(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        namespace.shares = [*getattr(namespace, "shares", []), [values, None]]


class _ShareKey(argparse.Action):
    """A key belongs to the --share just before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        shares = [list(each) for each in getattr(namespace, "shares", [])]
        if not shares or shares[-1][1] is not None:
            parser.error("--share-key KEY goes right after the --share URL it is for")
        shares[-1][1] = values
        namespace.shares = shares


def add_share_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--share", metavar="URL", action=_Share, dest="shares", default=[],
                   help="repeatable: share the models of an OpenAI-compatible server on this "
                        "machine (Ollama http://127.0.0.1:11434/v1, LM Studio, vLLM, "
                        "llama-server): its base URL. Beside --model, or instead of it (then "
                        "this node runs no llama.cpp). Loopback URLs only unless "
                        "--share-remote")
    p.add_argument("--share-key", metavar="KEY", action=_ShareKey, dest="shares",
                   help="the API key of the server of the --share just before (sent only to "
                        "that server, by this node)")
    p.add_argument("--share-remote", action="store_true",
                   help="allow --share URLs off this machine (this node then relays the "
                        "mesh's requests into its network)")


def share_targets(args: argparse.Namespace) -> tuple[ShareTarget, ...]:
    """Every --share checked (a one-line error, exit 2, for a URL not allowed)."""
    out = []
    for url, key in args.shares:
        try:
            out.append(parse_share_url(url, key, allow_remote=args.share_remote))
        except ShareUrlError as err:
            raise UserError(str(err), 2) from None
    if len({t.url for t in out}) != len(out):
        raise UserError("--share: the same URL is given twice", 2)
    return tuple(out)


def share_argv(argv: Sequence[str]) -> list[str]:
    """`mesh-llm share URL REST...` as the node's command line: `--share URL REST...`."""
    if not argv or argv[0] in ("-h", "--help"):
        raise UserError(f"usage: {SHARE_USAGE}\nshare the models of an OpenAI-compatible "
                        "server on this machine with a mesh (this node runs no llama.cpp); "
                        "mesh-llm --help lists the node options", 0 if argv else 2)
    if argv[0].startswith("-"):
        raise UserError(f"usage: {SHARE_USAGE}", 2)
    return ["--share", argv[0], *argv[1:]]
