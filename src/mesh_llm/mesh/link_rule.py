"""Which connection to a peer we keep, and what a closed one means: pure decisions.

One connection per pair of nodes. A second one appears when both ends dial at once, or when
one end redials a connection the other has not yet seen die. The end with the smaller node
id decides: it keeps the newest and closes the others as duplicates. The larger end uses
its newest too, probes the older ones (a PING: a dead one is dropped at once) and, after a
grace period, closes whatever is left as the smaller end would. Keeping the newest makes a
restarted or reconnecting peer win over a stale connection; letting one end decide keeps
the two ends from each dropping a different one. Who dialled plays no part. "Close" means
drain: a closed duplicate finishes the streams open on it first (link_move.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .quic import (
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE,
    CLOSE_GOODBYE,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SHUTDOWN,
)

FINAL_CLOSE_CODES = (CLOSE_GOODBYE, CLOSE_AUTH_FAILED, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN)


@dataclass(frozen=True)
class LinkFacts:
    """What the rule looks at in one connection to the peer (listed oldest first)."""

    dialed: bool
    authenticated: bool = True


@dataclass(frozen=True)
class Resolution:
    """`use`: index of the connection that carries traffic (None: none can); `close`: close
    these now as duplicates; `probe`: ping these and close the ones that do not answer;
    `prune_later`: after the grace period, resolve again with `grace_over`."""

    use: int | None
    close: tuple[int, ...] = ()
    probe: tuple[int, ...] = ()
    prune_later: bool = False


def resolve(own_id: str, peer_id: str, links: Sequence[LinkFacts], *,
            grace_over: bool = False) -> Resolution:
    """The rule above. Unauthenticated connections are neither used nor closed here (the
    authentication deadline deals with them)."""
    authed = [i for i, link in enumerate(links) if link.authenticated]
    if not authed:
        return Resolution(None)
    use, older = authed[-1], tuple(authed[:-1])
    if not older:
        return Resolution(use)
    if own_id < peer_id or grace_over:
        return Resolution(use, close=older)
    return Resolution(use, probe=older, prune_later=True)


Verdict = Literal["left", "dropped", "await_replacement", "reconnect"]


def after_close(*, goodbye: bool, deliberate: bool, closed_by_peer: bool, close_code: int | None,
                client: bool) -> Verdict:
    """What the loss of a peer's last connection means. "left"/"dropped": forget the peer;
    "await_replacement": the peer closed it as a duplicate, so the one it kept is about to
    finish authenticating here; "reconnect": an unexpected loss, redial it."""
    # A client-invite peer redials us, not we it.
    if goodbye or deliberate or client or (closed_by_peer and close_code in FINAL_CLOSE_CODES):
        return "left" if goodbye or close_code == CLOSE_GOODBYE else "dropped"
    if closed_by_peer and close_code == CLOSE_DUPLICATE:
        return "await_replacement"
    return "reconnect"
