"""A LAN in network namespaces for the --mdns tests: machines on one bridge (multicast
flows on it as on a home switch), an nftables counter of the mDNS packets it carries, and
a machine's address changed as a DHCP server would. Built on NatLab (tests/natlab.py): the
same prefix rule, the same cleanup, the same LabNode."""

from __future__ import annotations

import json
import subprocess

from natlab import NatLab

SUBNET = "10.53.0"
GATEWAY = f"{SUBNET}.1"

COUNTER = """
table bridge mdnslab {
  counter mdns { }
  chain forward { type filter hook forward priority 0; policy accept;
    udp dport 5353 counter name "mdns"; }
  chain input { type filter hook input priority 0; policy accept;
    udp dport 5353 counter name "mdns"; }
}
"""


class LanLab(NatLab):
    """`{prefix}-lan` holds the bridge (and the gateway address every default route
    names); each machine has `eth0` on it at 10.53.0.N."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._machine("lan")
        self._ip("lan", "link", "add", "br0", "type", "bridge")
        self._ip("lan", "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        self._ip("lan", "link", "set", "br0", "up")
        self._sh("ip", "netns", "exec", self.ns("lan"), "nft", "-f", "-", stdin=COUNTER)

    def machine(self, machine: str, host: int) -> str:
        """`machine` on the LAN at 10.53.0.`host`; returns its address."""
        self._machine(machine)
        port = f"l-{machine}"[:15]
        self._ip(machine, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                 "netns", self.ns("lan"))
        self._ip("lan", "link", "set", port, "master", "br0", "up")
        self._ip(machine, "link", "set", "eth0", "up")
        return self.readdress(machine, host)

    def readdress(self, machine: str, host: int) -> str:
        """Give `machine` the address 10.53.0.`host` instead of the one it had (DHCP)."""
        ip = f"{SUBNET}.{host}"
        self._ip(machine, "addr", "flush", "dev", "eth0")
        self._ip(machine, "addr", "add", f"{ip}/24", "dev", "eth0")
        self._ip(machine, "route", "replace", "default", "via", GATEWAY)
        return ip

    def mdns_packets(self) -> int:
        """mDNS packets (UDP port 5353) the LAN has carried so far."""
        out = subprocess.run(["ip", "netns", "exec", self.ns("lan"), "nft", "-j", "list",
                              "counter", "bridge", "mdnslab", "mdns"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError(f"no mdns counter in {out!r}")
