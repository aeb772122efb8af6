"""LAN discovery's pure part (mesh/lan.py): the mesh tag, the record as advertised and as
read back (untrusted: bounded and checked), when a linked member is dialled at its LAN
address, and the meshes `discover` lists."""

from __future__ import annotations

from mesh_llm.mesh.lan import (
    MAX_ADDRESSES,
    MAX_MODELS,
    LanMesh,
    LanRecord,
    instance_name,
    mesh_tag,
    meshes,
    parse,
    properties,
    should_move,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64
SECRET = bytes(range(32))


def test_the_tag_is_a_keyed_hash_one_per_mesh() -> None:
    tag = mesh_tag(SECRET)
    assert len(tag) == 16 and tag == mesh_tag(SECRET)
    assert tag != mesh_tag(bytes(32)), "another mesh, another tag"
    assert SECRET.hex()[:16] not in tag and tag not in SECRET.hex()
    assert len(instance_name(A).split(".")[0]) <= 63


def test_a_record_reads_back_as_advertised() -> None:
    record = LanRecord(mesh_tag(SECRET), A, 4433, ("10.0.0.2",), nodes=3,
                       models=("SmolLM2-135M-Instruct", "Qwen,2"))
    props = {k.encode(): v.encode() for k, v in properties(record).items()}
    back = parse(props, ["10.0.0.2"], 4433)
    assert back == LanRecord(record.tag, A, 4433, ("10.0.0.2",), 3,
                             ("SmolLM2-135M-Instruct", "Qwen 2"))
    assert back is not None and back.addrs == ["10.0.0.2:4433"]
    long = properties(LanRecord(record.tag, A, 1, models=tuple("é" * 100 for _ in range(8))))
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in long.items()), "one TXT string"


def test_a_record_that_fails_a_check_is_ignored() -> None:
    good = properties(LanRecord(mesh_tag(SECRET), A, 1))
    assert parse(good, ["10.0.0.2"], 4433) is not None
    bad = [
        ({**good, "v": "2"}, ["10.0.0.2"], 4433),  # another record version
        ({**good, "tag": "xyz"}, ["10.0.0.2"], 4433),
        ({**good, "tag": "G" * 16}, ["10.0.0.2"], 4433),
        ({**good, "id": "not-an-id"}, ["10.0.0.2"], 4433),
        ({**good, "nodes": "-1"}, ["10.0.0.2"], 4433),
        ({**good, "nodes": "9" * 50}, ["10.0.0.2"], 4433),
        ({**good, "models": "m" * 10_000}, ["10.0.0.2"], 4433),
        ({b"tag": b"\xff\xfe"}, ["10.0.0.2"], 4433),
        (good, ["10.0.0.2"], 0),
        (good, ["10.0.0.2"], 70000),
        (good, ["10.0.0.2"], None),
        (good, ["127.0.0.1", "0.0.0.0", "224.0.0.251", "nonsense"], 4433),  # no usable address
        ({}, ["10.0.0.2"], 4433),
    ]
    for props, ips, port in bad:
        assert parse(props, ips, port) is None, (props, ips, port)
    many = parse({**good, "nodes": "999999", "models": ",".join(f"m{i}" for i in range(50))},
                 [f"10.0.0.{i}" for i in range(1, 40)], 4433)
    assert many is not None and len(many.ips) == MAX_ADDRESSES
    assert len(many.models) == MAX_MODELS and many.nodes == 100_000


def test_a_linked_member_is_dialled_on_the_lan_only_when_the_link_goes_elsewhere() -> None:
    record = LanRecord("0" * 16, B, 4433, ("10.0.0.3",))
    assert not should_move("10.0.0.3:4433", record), "already linked there"
    assert should_move("10.0.0.9:4433", record), "its address changed (DHCP)"
    assert should_move("198.51.100.7:60001", record), "linked through a NAT's public side"
    assert should_move(None, record)


def test_discover_groups_the_records_by_tag() -> None:
    records = [LanRecord("1" * 16, A, 1, ("10.0.0.2",), nodes=5, models=("M",)),
               LanRecord("1" * 16, B, 1, ("10.0.0.3",), nodes=4, models=("M", "N")),
               LanRecord("2" * 16, C, 1, ("10.0.0.4",))]
    assert meshes(records) == [LanMesh("1" * 16, 2, 5, ("M", "N")),
                               LanMesh("2" * 16, 1, 1, ())]
