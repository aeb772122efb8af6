"""The seam: what the rest of mesh-llm may use of a QUIC stream and connection.

Everything outside this package (the mesh, tunnels, the node, tests) types against these
two protocols; only the mesh's dial/accept code holds a `QuicTransport`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Stream(Protocol):
    """One bidirectional stream.

    Pull mode: `read`/`readexactly` (b"" / IncompleteReadError at the peer's FIN). Push mode
    for relays: `set_receiver`. Writes queue at once; `write` and `drain` wait while too much
    is unsent, `write_nowait` returns False instead (resume from `on_writable`); its `more`
    says the rest of the message follows at once (the bytes may wait a moment to share
    packets). A reset or a lost connection raises StreamReset / ConnectionClosed."""

    @property
    def stream_id(self) -> int: ...

    async def read(self, n: int = 65536) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    def set_receiver(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[BaseException | None], None] | None = None,
    ) -> None: ...

    def write_nowait(self, data: bytes | bytearray | memoryview, *,
                     more: bool = False) -> bool: ...

    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def drain(self) -> None: ...

    def on_writable(self, callback: Callable[[], None]) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    def abort(self, code: int = ...) -> None: ...


class Connection(Protocol):
    """One QUIC connection to a peer. Peer-opened streams go to `on_stream`; its
    end is reported by `close_code`/`close_reason`/`closed_by_peer` and close callbacks."""

    on_stream: Callable[[Stream], None] | None

    @property
    def remote_address(self) -> tuple[str, int]: ...

    @property
    def is_client(self) -> bool: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str: ...

    @property
    def closed_by_peer(self) -> bool: ...

    @property
    def rtt_ms(self) -> float | None: ...

    @property
    def server_cert_fingerprint(self) -> bytes: ...

    @property
    def path_address(self) -> tuple[str, int]: ...

    def stream_ids(self) -> list[int]: ...

    def add_close_callback(self, callback: Callable[[Connection], None]) -> None: ...

    async def wait_closed(self) -> None: ...

    async def open_stream(self, timeout: float = 10.0) -> Stream: ...

    async def ping(self, timeout: float) -> bool: ...

    def flush(self) -> None: ...

    def close(self, code: int = ..., reason: str = "") -> None: ...

    def abort(self) -> None: ...
