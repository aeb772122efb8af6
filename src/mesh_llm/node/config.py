"""Everything a node is started with, after the command line has been checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..api.shared import ShareTarget
from ..inference.candidates import DEFAULT_MAX_SPLIT_RTT_MS
from ..mesh.settings import MeshSettings

DEFAULT_API_PORT = 9337
DEFAULT_CONSOLE_PORT = 3131


def default_home() -> Path:
    return Path(os.environ.get("MESH_LLM_HOME") or Path.home() / ".mesh-llm")


@dataclass(frozen=True)
class NodeConfig:
    model: str | None  # the primary model: the first --model
    home: Path
    models: tuple[str, ...] = ()  # every --model, in order (the first is `model`)
    join: tuple[str, ...] = ()
    client: bool = False
    api_port: int = DEFAULT_API_PORT
    console_port: int | None = None
    bind_host: str = "0.0.0.0"
    bind_port: int = 0
    advertise: tuple[str, ...] = ()
    no_relay: bool = False  # carry no other members' packets
    relay_limit: tuple[int, int] = (8, 8_000_000)  # pairs, bytes/s per pair
    split: bool = False
    mdns: bool = False  # LAN discovery (mesh/lan_reach.py); a lite client never uses it
    max_split_rtt_ms: float | None = DEFAULT_MAX_SPLIT_RTT_MS  # None: no limit
    max_vram_gb: float | None = None
    draft: str | None = None
    no_draft: bool = False
    draft_max: int = 8
    parallel: int | None = None  # llama-server slots (--parallel); None: the mode's default
    bin_dir: Path | None = None
    device: str | None = None
    listen_all: bool = False
    api_key: str | None = None
    llama_args: tuple[str, ...] = field(default_factory=tuple)  # --device, --llama-arg
    standalone: bool = False  # serve alone when every --join fails (else exit non-zero)
    new_mesh: bool = False  # a fresh mesh secret instead of the one kept in the home
    trust_hosts: frozenset[str] | None = None  # only these node ids may host (None: any)
    shares: tuple[ShareTarget, ...] = ()  # --share: servers whose models this node shares
    metrics: bool = True  # /metrics on the console and the console's charts (--no-metrics)
    metrics_on_api: bool = False  # /metrics on the API port too

    @property
    def all_models(self) -> tuple[str, ...]:
        """Every model this node serves, the primary first."""
        if self.models:
            return self.models
        return (self.model,) if self.model else ()

    @property
    def listen_host(self) -> str:
        return "0.0.0.0" if self.listen_all else "127.0.0.1"

    def mesh_settings(self) -> MeshSettings:
        """The mesh's timers and limits: the defaults, with this node's relay limits."""
        return MeshSettings(relay_enabled=not self.no_relay,
                            relay_max_pairs=self.relay_limit[0], relay_rate=self.relay_limit[1],
                            mdns=self.mdns and not self.client)
