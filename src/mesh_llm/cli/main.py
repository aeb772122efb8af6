"""`mesh-llm`: parse the command line, then run a node (nodeargs.py) or a subcommand
(commands.py).

Every user mistake ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from ..errors import UserError
from .commands import COMMANDS
from .node_args import config_from_args, node_parser


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mesh_llm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # aiohttp's own reports (bad requests from the network are routine for a server): one
    # line each in our format; their tracebacks only with --verbose.
    class OneLine(logging.Formatter):
        def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
            return ""

        def formatStack(self, stack_info: str) -> str:
            return ""

    quiet = logging.StreamHandler(sys.stderr)
    quiet.setFormatter(OneLine("%(asctime)s  %(name)s: %(message)s", "%H:%M:%S")
                       if not verbose else handler.formatter)
    web_logs = logging.getLogger("aiohttp")
    web_logs.handlers[:] = [quiet]
    web_logs.setLevel(logging.DEBUG if verbose else logging.WARNING)
    web_logs.propagate = False


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it exists: it halves what relaying each streamed token costs us."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        asyncio.run(main)
        return
    uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging("-v" in argv or "--verbose" in argv)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        config = config_from_args(node_parser().parse_args(argv))
        from ..node.node import run_node

        run_event_loop(run_node(config))
        return 0
    except UserError as err:
        print(f"mesh-llm: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mesh-llm models --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
