"""The link rule: which of a peer's connections we keep, and what losing the last means."""

from __future__ import annotations

import pytest

from mesh_llm.mesh.link_rule import LinkFacts, Resolution, after_close, resolve
from mesh_llm.mesh.quic import (
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE,
    CLOSE_GOODBYE,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SHUTDOWN,
)

SMALL, LARGE = "11" * 32, "ee" * 32
D, A = LinkFacts(dialed=True), LinkFacts(dialed=False)  # dialled / accepted, authenticated
D_, A_ = LinkFacts(True, authenticated=False), LinkFacts(False, authenticated=False)


@pytest.mark.parametrize(
    ("own", "peer", "links", "grace_over", "expected"),
    [
        # nothing authenticated: nothing to use, nothing for this rule to close
        (SMALL, LARGE, [], False, Resolution(None)),
        (SMALL, LARGE, [D_], False, Resolution(None)),
        (LARGE, SMALL, [A_, D_], False, Resolution(None)),
        # one authenticated link, dialled or accepted: use it
        (SMALL, LARGE, [D], False, Resolution(0)),
        (SMALL, LARGE, [A], False, Resolution(0)),
        (LARGE, SMALL, [D], False, Resolution(0)),
        (LARGE, SMALL, [A], False, Resolution(0)),
        # an unauthenticated link is neither used nor closed, older or newer
        (SMALL, LARGE, [D_, A], False, Resolution(1)),
        (SMALL, LARGE, [A, D_], False, Resolution(0)),
        (LARGE, SMALL, [A, D_], False, Resolution(0)),
        # the smaller id decides: the newest stays, the older closes, whoever dialled
        (SMALL, LARGE, [D, A], False, Resolution(1, close=(0,))),
        (SMALL, LARGE, [A, D], False, Resolution(1, close=(0,))),
        (SMALL, LARGE, [D, D], False, Resolution(1, close=(0,))),
        (SMALL, LARGE, [A, A], False, Resolution(1, close=(0,))),
        (SMALL, LARGE, [D, A, D], False, Resolution(2, close=(0, 1))),
        (SMALL, LARGE, [D, A_, A], False, Resolution(2, close=(0,))),
        # the larger id uses the newest too, probes the older, prunes after the grace
        (LARGE, SMALL, [D, A], False, Resolution(1, probe=(0,), prune_later=True)),
        (LARGE, SMALL, [A, D], False, Resolution(1, probe=(0,), prune_later=True)),
        (LARGE, SMALL, [A, D, A], False, Resolution(2, probe=(0, 1), prune_later=True)),
        (LARGE, SMALL, [D, A], True, Resolution(1, close=(0,))),
        (LARGE, SMALL, [A, D_, D], True, Resolution(2, close=(0,))),
        (LARGE, SMALL, [A], True, Resolution(0)),
        # the grace changes nothing for the end that decides anyway
        (SMALL, LARGE, [A, D], True, Resolution(1, close=(0,))),
    ],
)
def test_resolve(own: str, peer: str, links: list[LinkFacts], grace_over: bool,
                 expected: Resolution) -> None:
    assert resolve(own, peer, links, grace_over=grace_over) == expected


def test_the_two_ends_keep_the_same_link() -> None:
    """Given the same connections in the same order, the end that decides and the other
    end after its grace keep the same one (the newest), whoever dialled it."""
    for links in ([D, A], [A, D], [D, A, A]):
        mine = resolve(SMALL, LARGE, links)
        theirs = resolve(LARGE, SMALL, [LinkFacts(not x.dialed) for x in links],
                         grace_over=True)
        assert mine.use == theirs.use == len(links) - 1


@pytest.mark.parametrize(
    ("goodbye", "deliberate", "by_peer", "code", "client", "verdict"),
    [
        (True, False, False, None, False, "left"),  # the peer said goodbye on gossip
        (False, False, True, CLOSE_GOODBYE, False, "left"),  # ... or in its close
        (False, True, False, CLOSE_GOODBYE, False, "left"),  # we closed it after its goodbye
        (False, True, False, CLOSE_PROTOCOL_ERROR, False, "dropped"),  # we dropped it
        (False, True, False, CLOSE_DUPLICATE, False, "dropped"),
        (False, False, True, CLOSE_AUTH_FAILED, False, "dropped"),  # final codes from it
        (False, False, True, CLOSE_PROTOCOL_ERROR, False, "dropped"),
        (False, False, True, CLOSE_SHUTDOWN, False, "dropped"),
        (False, False, False, None, True, "dropped"),  # a client redials us, not we it
        (False, False, True, CLOSE_NORMAL, True, "dropped"),
        (False, False, True, CLOSE_DUPLICATE, False, "await_replacement"),
        (False, False, True, CLOSE_NORMAL, False, "reconnect"),
        (False, False, False, None, False, "reconnect"),  # silence, idle timeout, reset
        (False, False, False, CLOSE_SHUTDOWN, False, "reconnect"),  # not said by the peer
    ],
)
def test_after_close(goodbye: bool, deliberate: bool, by_peer: bool, code: int | None,
                     client: bool, verdict: str) -> None:
    assert after_close(goodbye=goodbye, deliberate=deliberate, closed_by_peer=by_peer,
                       close_code=code, client=client) == verdict
