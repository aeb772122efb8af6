"""qh3_adapter against the installed qh3: two real qh3 connections exchange their datagrams
in memory, and every accessor must read what the QUIC layer relies on. A qh3 release that
moves one of the private parts fails here rather than degrading the mesh silently."""

from __future__ import annotations

from qh3.quic import events
from qh3.quic.connection import QuicConnection as Qh3Connection
from qh3.quic.packet import QuicPacketType, QuicProtocolVersion

from mesh_llm.mesh.quic import CLOSE_GOODBYE, TransportSettings, qh3_adapter
from mesh_llm.mesh.quic.certificate import base_config, make_self_signed_cert
from mesh_llm.mesh.quic.settings import CID_LENGTH

CLIENT = ("127.0.0.1", 40001)
SERVER = ("127.0.0.1", 40002)


class Pair:
    """A client and a server qh3 connection on a simulated clock."""

    def __init__(self) -> None:
        settings = TransportSettings()
        server_config = base_config(settings, is_client=False)
        server_config.load_cert_chain(*make_self_signed_cert())
        self.now = 1000.0
        self.client = Qh3Connection(configuration=base_config(settings, is_client=True))
        self.client.connect(SERVER, now=self.now)
        self.initial = [data for data, _ in self.client.datagrams_to_send(self.now)]
        header = qh3_adapter.parse_header(self.initial[0], CID_LENGTH)
        assert header is not None
        self.header = header
        self.server = Qh3Connection(configuration=server_config,
                                    original_destination_connection_id=header.destination_cid)

    def send(self, sender: Qh3Connection) -> int:
        """Deliver what `sender` has queued to the other side; the number of datagrams."""
        self.now += 0.001
        receiver, source = ((self.server, CLIENT) if sender is self.client
                            else (self.client, SERVER))
        datagrams = sender.datagrams_to_send(self.now)
        for data, _ in datagrams:
            receiver.receive_datagram(data, source, now=self.now)
        return len(datagrams)

    def handshake(self) -> None:
        for data in self.initial:
            self.server.receive_datagram(data, CLIENT, now=self.now)
        for _ in range(10):
            self.send(self.server)
            self.send(self.client)
        drain(self.client)
        drain(self.server)


def drain(quic: Qh3Connection) -> list[str]:
    names = []
    while (event := quic.next_event()) is not None:
        names.append(type(event).__name__)
    return names


def test_parse_header_reads_a_real_initial_and_rejects_non_quic() -> None:
    pair = Pair()
    assert pair.header.version == QuicProtocolVersion.VERSION_1
    assert pair.header.packet_type == QuicPacketType.INITIAL
    assert len(pair.header.destination_cid) == CID_LENGTH
    assert all(qh3_adapter.parse_header(data, CID_LENGTH) is not None for data in pair.initial)
    assert qh3_adapter.parse_header(b"", CID_LENGTH) is None
    assert qh3_adapter.parse_header(bytes(50), CID_LENGTH) is None


def test_connection_internals_read_after_a_handshake() -> None:
    pair = Pair()
    assert qh3_adapter.smoothed_rtt(pair.client) is None  # nothing measured yet
    assert not qh3_adapter.authenticated_packet_seen(pair.server)
    pair.handshake()
    assert qh3_adapter.authenticated_packet_seen(pair.server)
    rtt = qh3_adapter.smoothed_rtt(pair.client)
    assert rtt is not None and 0 < rtt < 1.0
    timer = qh3_adapter.next_timer(pair.client)
    assert timer is not None and timer[0] != "" and timer[1] > pair.now


def test_a_lone_packet_leaves_an_application_ack_pending() -> None:
    """The ACK hold recognises this timer kind by name, and holds only while nothing of
    ours is in flight."""
    pair = Pair()
    pair.handshake()
    stream_id = qh3_adapter.open_bidi_stream(pair.client)
    pair.client.send_stream_data(stream_id, b"x", end_stream=False)
    assert pair.send(pair.client) == 1
    timer = qh3_adapter.next_timer(pair.server)
    assert timer is not None and timer[0] == "ack_application"
    assert qh3_adapter.bytes_in_flight(pair.client) > 0  # the packet, not yet acknowledged
    pair.send(pair.server)
    assert qh3_adapter.bytes_in_flight(pair.client) == 0


def test_stream_credit_follows_the_peers_limit() -> None:
    pair = Pair()
    pair.handshake()
    limit = pair.client.max_concurrent_bidi_streams  # qh3's public view of the same limit
    assert limit > 0
    ids = []
    while qh3_adapter.can_open_bidi_stream(pair.client):
        ids.append(qh3_adapter.open_bidi_stream(pair.client))
        assert len(ids) <= limit
    assert ids == list(range(0, 4 * limit, 4))


def test_a_peer_close_is_seen_before_qh3_reports_it() -> None:
    pair = Pair()
    pair.handshake()
    assert qh3_adapter.pending_close(pair.server) is None
    pair.client.close(error_code=CLOSE_GOODBYE, frame_type=None, reason_phrase="bye")
    pair.send(pair.client)
    ended = qh3_adapter.pending_close(pair.server)
    assert ended is not None
    assert (ended.error_code, ended.reason_phrase) == (CLOSE_GOODBYE, "bye")
    assert "ConnectionTerminated" not in drain(pair.server)  # why the adapter reads it


def test_an_initial_that_does_not_decrypt_is_not_authenticated() -> None:
    pair = Pair()
    forged = bytearray(pair.initial[0])
    for i in range(60, 200):  # the header parses, the payload is garbage
        forged[i] ^= 0x55
    assert qh3_adapter.parse_header(bytes(forged), CID_LENGTH) is not None
    pair.server.receive_datagram(bytes(forged), CLIENT, now=pair.now)
    assert not qh3_adapter.authenticated_packet_seen(pair.server)


def test_datagrams_come_straight_from_the_core_and_carry_a_burst() -> None:
    """The send path skips qh3's per-packet logger work: that needs the native core's
    poll_transmit and a connection without a QUIC logger (ours never set one)."""
    pair = Pair()
    pair.handshake()
    core = getattr(pair.client, "_core", None)
    assert callable(getattr(core, "poll_transmit", None))
    assert getattr(pair.client, "_quic_logger", True) is None  # else qh3's method runs
    stream_id = qh3_adapter.open_bidi_stream(pair.client)
    payload = bytes(range(256)) * 40  # 10 KiB: several datagrams
    pair.client.send_stream_data(stream_id, payload, end_stream=True)
    received = b""
    for _ in range(10):
        pair.now += 0.001
        datagrams = qh3_adapter.datagrams_to_send(pair.client, pair.now)
        for data, addr in datagrams:
            assert addr == SERVER
            pair.server.receive_datagram(data, CLIENT, now=pair.now)
        while (event := pair.server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                received += event.data
        pair.send(pair.server)  # ACKs
    assert received == payload
    assert qh3_adapter.datagrams_to_send(pair.client, pair.now + 1) == []
