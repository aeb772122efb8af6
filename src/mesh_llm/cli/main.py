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
from .logs import setup_logging
from .node_args import config_from_args, node_parser
from .share_args import share_argv


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
    structured = False
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        if argv and argv[0] == "share":  # a node that only shares: `--share URL ...`
            argv = share_argv(argv[1:])
        args = node_parser().parse_args(argv)
        structured = args.log_format == "json"
        setup_logging(args.verbose, args.log_format)
        config = config_from_args(args)
        from ..node.node import run_node

        run_event_loop(run_node(config))
        return 0
    except UserError as err:
        if structured:  # the node's last line, in the format of the others
            logging.getLogger("mesh_llm").error("mesh-llm: %s", err)
        else:
            print(f"mesh-llm: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mesh-llm models --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
