"""The Host/Origin rule against DNS rebinding (api/guard.py): pure functions, every form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.api.guard import (
    LOOPBACK,
    allowed_hosts,
    host_allowed,
    origin_allowed,
    split_host,
)

LAN = allowed_hosts(listen_all=True, advertise=["mesh.example.org:7842", "203.0.113.7:7842"],
                    local_addresses=["192.168.1.20", "fd00::2", "fe80::1"],
                    hostnames=["Box", "box.local"])


@pytest.mark.parametrize(("authority", "host"), [
    ("127.0.0.1", "127.0.0.1"), ("127.0.0.1:9337", "127.0.0.1"), ("LocalHost:3131", "localhost"),
    ("localhost.", "localhost"), ("localhost.:80", "localhost"), ("[::1]", "::1"),
    ("[::1]:9337", "::1"), ("[fe80::1%25eth0]:80", "fe80::1%25eth0"),
    ("Example.ORG", "example.org"), ("localhost:", "localhost"),
])
def test_split_host_takes_the_name_and_drops_the_port(authority: str, host: str) -> None:
    assert split_host(authority) == host


@pytest.mark.parametrize("authority", [
    "", " ", "::1", "::1:80", "[::1", "[::1]x", "[127.0.0.1]", "[evil]:80", "host:port",
    "host:99999999", "a b", "user@127.0.0.1", "127.0.0.1/x", "127.0.0.1?", "a,b", ":80",
    "x" * 300,
])
def test_split_host_refuses_what_is_no_authority(authority: str) -> None:
    assert split_host(authority) is None


@pytest.mark.parametrize("host", [
    None, "", "127.0.0.1", "127.0.0.1:9337", "localhost", "localhost:3131", "LOCALHOST:1",
    "[::1]:9337", "[::1]", "127.0.0.2:80", "127.255.255.254", "[::ffff:127.0.0.1]:80",
])
def test_loopback_forms_are_served(host: str | None) -> None:
    assert host_allowed(host, LOOPBACK)


@pytest.mark.parametrize("host", [
    "attacker.example", "attacker.example:9337", "localhost.attacker.example",
    "127.0.0.1.attacker.example", "192.168.1.20", "box", "0.0.0.0", "[::]", "10.0.0.1:80",
    "localhost:abc", "::1", "127.1", "[::2]",
])
def test_other_hosts_are_refused_on_loopback(host: str) -> None:
    assert not host_allowed(host, LOOPBACK)


def test_listen_all_adds_this_machines_addresses_names_and_advertised_hosts() -> None:
    for host in ("192.168.1.20:9337", "[fd00::2]:3131", "[fe80::1]", "box", "BOX.local:3131",
                 "mesh.example.org", "203.0.113.7:80", "127.0.0.1", "localhost"):
        assert host_allowed(host, LAN), host
    for host in ("attacker.example", "192.168.1.21", "[fd00::3]", "box.example"):
        assert not host_allowed(host, LAN), host


def test_without_listen_all_only_loopback_and_advertised_names() -> None:
    hosts = allowed_hosts(listen_all=False, advertise=["mesh.example.org:7842"],
                          local_addresses=["192.168.1.20"], hostnames=["box"])
    assert host_allowed("mesh.example.org:9337", hosts)
    assert not host_allowed("192.168.1.20", hosts)
    assert not host_allowed("box", hosts)


@pytest.mark.parametrize("origin", [
    None, "http://127.0.0.1:3131", "http://localhost:9337", "https://localhost",
    "http://[::1]:3131", "http://127.0.0.1:3131/",
])
def test_origins_of_our_own_pages_are_allowed(origin: str | None) -> None:
    assert origin_allowed(origin, LOOPBACK)


@pytest.mark.parametrize("origin", [
    "http://attacker.example", "http://attacker.example:3131", "null", "", "file://",
    "chrome-extension://abc", "http://127.0.0.1.attacker.example", "http://localhost/x",
    "http://user@attacker.example", "http://[::1", "ftp://127.0.0.1",
])
def test_other_origins_are_refused(origin: str) -> None:
    assert not origin_allowed(origin, LOOPBACK)


_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True)


@given(name=_NAME, port=st.one_of(st.none(), st.integers(0, 65535)))
def test_no_foreign_name_passes_with_any_port(name: str, port: int | None) -> None:
    header = name if port is None else f"{name}:{port}"
    assert host_allowed(header, LOOPBACK) is False
    assert origin_allowed(f"http://{header}", LOOPBACK) is False
    assert host_allowed(header, allowed_hosts(listen_all=False, advertise=[name]))


@given(st.text(max_size=80))
def test_any_header_text_gives_an_answer_not_an_exception(text: str) -> None:
    assert host_allowed(text, LAN) in (True, False)
    assert origin_allowed(text, LAN) in (True, False)
