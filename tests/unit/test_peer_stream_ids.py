"""Which stream ids a peer may open: the pure bookkeeping behind a connection's streams."""

from __future__ import annotations

from mesh_llm.mesh.quic.streams import PeerStreamIds


def test_a_servers_peer_opens_client_bidi_ids_once_each() -> None:
    ids = PeerStreamIds(is_client=False)  # the peer is a client: ids 0, 4, 8, ...
    assert ids.is_new(0)
    assert not ids.is_new(0)  # seen: a late packet of a closed stream opens nothing
    assert not ids.is_new(1)  # our own (server-initiated) id
    assert not ids.is_new(2)  # unidirectional: not part of the protocol
    assert ids.is_new(4)


def test_skipped_ids_stay_openable_out_of_order() -> None:
    ids = PeerStreamIds(is_client=True)  # the peer is a server: ids 1, 5, 9, ...
    assert ids.is_new(13)
    assert [ids.is_new(i) for i in (5, 1, 9)] == [True, True, True]
    assert not any(ids.is_new(i) for i in (1, 5, 9, 13))


def test_an_id_too_far_ahead_is_refused() -> None:
    ids = PeerStreamIds(is_client=False)
    assert not ids.is_new(4 * 5000)
    assert ids.is_new(4 * 4096)  # within the bound
