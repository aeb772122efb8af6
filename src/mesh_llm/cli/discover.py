"""`mesh-llm discover`: the meshes advertised on this machine's LANs (nodes run with
--mdns), listed by tag; joins nothing and advertises nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict

from ..errors import UserError
from .args import Parser

MAX_TIMEOUT_S = 60.0


def cmd_discover(argv: Sequence[str]) -> int:
    from ..mesh.mdns import discover

    p = Parser(prog="mesh-llm discover",
               description="list the meshes on the local network (members run with --mdns); "
                           "joins nothing")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="listen this many seconds (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    args = p.parse_args(argv)
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise UserError(f"--timeout must be between 0 and {MAX_TIMEOUT_S:g} seconds", 2)
    try:
        found = asyncio.run(discover(args.timeout))
    except OSError as err:
        raise UserError(f"cannot listen for mDNS on this machine: {err}") from None
    if args.json:
        print(json.dumps({"meshes": [asdict(m) for m in found]}, indent=2))
        return 0
    if not found:
        print(f"no mesh on the local network within {args.timeout:g} s "
              "(its members advertise only with --mdns)")
        return 0
    print(f"{'tag':<18}{'on LAN':>7}{'nodes':>7}  models")
    for mesh in found:
        print(f"{mesh.tag:<18}{mesh.members:>7}{mesh.nodes:>7}  {', '.join(mesh.models) or '-'}")
    print("\njoin one with a member's token (mesh-llm --join TOKEN --mdns): with --mdns a "
          "joiner dials the members it sees here first")
    return 0
