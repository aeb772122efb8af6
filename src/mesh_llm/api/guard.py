"""Which `Host` and `Origin` a node answers: the rule against DNS rebinding, as pure functions.

A web page can point a name it controls at 127.0.0.1 and then talk to a local server as
if it were its own origin. The browser still sends that name in `Host`, so a server that
answers only the names it really serves cannot be reached that way. An IP literal in
`Host` is no such risk by itself, but we still accept only our own addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_NAMES = frozenset({"localhost"})
# The whole of 127/8 is this machine's (Linux answers on every address of it).
LOOPBACK_NETS: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                      ipaddress.ip_network("::1/128"))
MAX_HOST_LEN = 255


@dataclass(frozen=True)
class AllowedHosts:
    """Host names (lower case, no trailing dot) and address ranges a node serves."""

    names: frozenset[str] = LOOPBACK_NAMES
    nets: tuple[Network, ...] = LOOPBACK_NETS

    def allows(self, hostname: str) -> bool:
        """`hostname` as returned by `split_host` (no port, no brackets)."""
        address = parse_ip(hostname)
        if address is None:
            return hostname in self.names
        return any(address in net for net in self.nets if address.version == net.version)


LOOPBACK = AllowedHosts()


def parse_ip(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def split_host(authority: str) -> str | None:
    """The host name of `host[:port]` / `[v6][:port]`, lower case without a trailing dot;
    None when it is not a well-formed authority."""
    text = authority.strip()
    if not text or len(text) > MAX_HOST_LEN or any(c in text for c in "/\\@?#, \t"):
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or ":" not in host or parse_ip(host) is None:
            return None
    elif text.count(":") > 1:
        return None  # a bare IPv6 address must be bracketed
    else:
        host, sep, port = text.partition(":")
        rest = sep + port
    if rest and not (rest[0] == ":" and (rest[1:].isdigit() or rest == ":")
                     and len(rest) <= 6):
        return None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    return host or None


def host_allowed(host_header: str | None, allowed: AllowedHosts) -> bool:
    """A request without `Host` comes from a tool, not a browser: allowed. Otherwise the
    name in it (port ignored, case-insensitive) must be one we serve."""
    if host_header is None or host_header == "":
        return True
    hostname = split_host(host_header)
    return hostname is not None and allowed.allows(hostname)


def origin_allowed(origin_header: str | None, allowed: AllowedHosts) -> bool:
    """For state-changing requests: no `Origin` (a tool) is fine; a browser's must be a
    page of a host we serve. `Origin: null` (sandboxed frames, files) is refused."""
    if origin_header is None:
        return True
    try:
        parts = urlsplit(origin_header.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
        return False
    hostname = split_host(parts.netloc)
    return hostname is not None and allowed.allows(hostname)


def allowed_hosts(*, listen_all: bool, advertise: Iterable[str] = (),
                  local_addresses: Iterable[str] = (),
                  hostnames: Iterable[str] = ()) -> AllowedHosts:
    """The loopback names always; with `listen_all` also this machine's addresses and
    names; and the host of every `--advertise HOST:PORT` (a name others use for us)."""
    names = set(LOOPBACK_NAMES)
    nets: list[Network] = list(LOOPBACK_NETS)
    extra = [*advertise]
    if listen_all:
        extra += [*local_addresses, *hostnames]
    for item in extra:
        address = parse_ip(item)  # a bare address (an IPv6 one has no brackets)
        host = None if address is not None else split_host(item)
        if address is None and host is not None:
            address = parse_ip(host)
        if address is not None:
            nets.append(ipaddress.ip_network(address))
        elif host is not None:
            names.add(host)
    return AllowedHosts(frozenset(names), tuple(dict.fromkeys(nets)))
