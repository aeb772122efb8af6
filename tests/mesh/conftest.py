"""The mesh tests' fixture: Mesh instances on 127.0.0.1, each with its own home, stopped
at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.mesh import Announcement, Mesh, MeshSettings
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import new_secret

MakeMesh = Callable[..., Awaitable[Mesh]]


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MakeMesh]:
    meshes: list[Mesh] = []

    async def factory(
        *,
        secret: bytes | None = None,
        settings: MeshSettings | None = None,
        home: Path | None = None,
        **announcement: object,
    ) -> Mesh:
        home = home or tmp_path / f"node{len(meshes)}"
        identity = Identity.load_or_create(home)
        fields: dict[str, Any] = {"role": "worker", "vram_bytes": 1000 + len(meshes),
                                  "models": ["m"], **announcement}
        fields["models"] = tuple(fields["models"])
        mesh = Mesh(
            identity,
            secret or new_secret(),
            Announcement(identity.node_id, **fields),
            bind_host="127.0.0.1",
            settings=settings,
        )
        await mesh.start()
        meshes.append(mesh)
        return mesh

    yield factory
    for mesh in meshes:
        await mesh.stop()
