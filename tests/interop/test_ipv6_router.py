"""qnet as the IPv6 router of a Linux link (issue 12, router mode): two namespaces, each behind a
TAP port of one running graph, configure themselves from qnet's Router Advertisements (`qnet ra
set`): the kernel's own SLAAC address in the advertised /64, a default route via qnet's
link-local address, the advertised DNS server in the RA it took; then each pings qnet's global
address and, forwarded by qnet, the other namespace's SLAAC address. `qnet ra del` sends a
final RA with router lifetime 0 (RFC 4861 §6.2.5) and the namespace's default route goes.

The namespaces are hosts: accept_ra=1, forwarding=0, autoconf=1, with DAD off so that their
addresses are usable at once; the sysctls are set before the TAP moves in, since a device takes
the namespace's defaults when it enters. Tests share one graph and run in file order."""
from __future__ import annotations

import ipaddress
import json
import random
import re
import subprocess
from dataclasses import dataclass

import pytest

from tests.interop.util import NS_PYTHON, NsPort, QnetGraph, ipv6_namespace_port, missing_prerequisite, run, wait_for

pytestmark = pytest.mark.interop

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")

# Runs in a namespace: waits for one Router Advertisement and prints what it carried as JSON
# (RFC 4861 §4.2, options §4.6; RDNSS RFC 8106 §5.1). The kernel keeps no RDNSS of its own.
RA_LISTENER = r"""
import json, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    if not select.select([s], [], [], max(0.0, end - time.monotonic()))[0]:
        break
    data, src = s.recvfrom(2048)
    if data[0] != 134:
        continue
    out = {"src": src[0].split("%")[0], "lifetime": struct.unpack("!H", data[6:8])[0], "rdnss": [], "prefixes": []}
    opts = data[16:]
    while len(opts) >= 8 and opts[1]:
        kind, size = opts[0], opts[1] * 8
        body = opts[:size]
        if kind == 25:
            out["rdnss"] += [socket.inet_ntop(socket.AF_INET6, body[i:i + 16]) for i in range(8, size, 16)]
        elif kind == 3:
            out["prefixes"].append(socket.inet_ntop(socket.AF_INET6, body[16:32]) + "/" + str(body[2]))
        opts = opts[size:]
    print(json.dumps(out), flush=True)
    break
"""


@dataclass
class RaLink:
    """A qnet port in router mode's view: its namespace, qnet's addresses on it."""
    base: NsPort
    prefix: ipaddress.IPv6Network

    @property
    def port(self) -> str:
        return self.base.port

    @property
    def tap(self) -> str:
        return self.base.tap

    @property
    def qnet6(self) -> str:
        return str(self.prefix[1])

    def sh(self, cmd: list[str], timeout: float = 15.0, check: bool = True):
        return self.base.sh(cmd, timeout=timeout, check=check)

    def slaac(self) -> list[str]:
        """The namespace's global addresses that the kernel formed from RAs (dynamic ones)."""
        out = json.loads(self.sh(["ip", "-6", "-j", "addr", "show", "dev", self.tap, "scope", "global"]).stdout)
        return [a["local"] for a in (out[0].get("addr_info", []) if out else [])
                if a.get("dynamic") or a.get("valid_life_time", 0xFFFFFFFF) != 0xFFFFFFFF]

    def default_route(self) -> str:
        return self.sh(["ip", "-6", "route", "show", "default"]).stdout.strip()

    def ping6(self, dst: str) -> tuple[int, int, str]:
        p = self.sh(["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst], timeout=20, check=False)
        text = p.stdout + p.stderr
        m = _SUMMARY.search(text)
        assert m is not None, f"no ping summary in:\n{text}"
        return int(m.group(1)), int(m.group(2)), text


def _add_host_port(g: QnetGraph, port: str, x: int) -> RaLink:
    prefix = ipaddress.IPv6Network(f"fd00:97:{x:x}::/64")
    base = ipv6_namespace_port(g, port, x, "qa", (
        "net.ipv6.conf.all.forwarding=0", "net.ipv6.conf.default.forwarding=0",
        "net.ipv6.conf.all.accept_ra=1", "net.ipv6.conf.default.accept_ra=1",
        "net.ipv6.conf.all.autoconf=1", "net.ipv6.conf.default.autoconf=1"),
        addr=f"{prefix[1]}/64")
    link = RaLink(base, prefix)
    return link


@pytest.fixture(scope="module")
def router():
    """(graph, a, b): ports p0 and p1 with a host namespace behind each, nothing advertised yet."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    xa, xb = random.sample(range(16, 4000), 2)
    g = QnetGraph.start()
    try:
        a = _add_host_port(g, "p0", xa)
        b = _add_host_port(g, "p1", xb)
        yield g, a, b
    finally:
        g.stop()


def _qnet_ll(g: QnetGraph, port: str) -> str:
    return next(a["address"].split("/")[0] for a in g.port_row(port)["addresses6"]
                if a["address"].startswith("fe80:"))


@pytest.mark.timeout(90)
def test_linux_hosts_configure_themselves_from_qnet_and_reach_each_other_through_it(router):
    g, a, b = router
    assert a.slaac() == [] and a.default_route() == ""
    listener = a.base.popen([NS_PYTHON, "-c", RA_LISTENER, "10"])
    try:
        assert listener.stdout.readline().strip() == "ready"
        dns = str(a.prefix[0x53])
        out = g.qnet("ra", "set", "p0", "--rdnss", dns, "--dnssl", "lab.example").stdout
        assert "p0: advertising" in out and str(a.prefix) in out, out
        seen = json.loads(listener.communicate(timeout=15)[0].splitlines()[-1])
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    ll = _qnet_ll(g, "p0")
    assert seen == {"src": ll, "lifetime": 1800, "rdnss": [dns], "prefixes": [str(a.prefix)]}, seen
    g.qnet("ra", "set", "p1")      # the /64 of p1's address, found by netstack

    for link in (a, b):
        wait_for(lambda: link.slaac(), 10.0, 0.2, f"a SLAAC address in {link.prefix} behind {link.port}")
        addrs = link.slaac()
        assert all(ipaddress.IPv6Address(x) in link.prefix for x in addrs), addrs
        route = wait_for(lambda: link.default_route(), 10.0, 0.2, f"a default route behind {link.port}")
        assert f"via {_qnet_ll(g, link.port)} dev {link.tap}" in route and "proto ra" in route, route

    rows = {r["port"]: r for r in g.qnet_json("ra", "list")}
    assert rows["p1"]["prefixes"] == [str(b.prefix)] and rows["p0"]["rdnss"] == [dns], rows
    assert all(r["advertising"] for r in rows.values()), rows

    sent, got, text = a.ping6(a.qnet6)
    assert got == sent == 3, text
    # forwarded by qnet: SLAAC address to SLAAC address, both ways via the RA's default routes
    sent, got, text = a.ping6(b.slaac()[0])
    assert got == sent == 3, text
    sent, got, text = b.ping6(a.slaac()[0])
    assert got == sent == 3, text


@pytest.mark.timeout(60)
def test_ra_del_sends_a_final_advertisement_and_the_default_route_goes(router):
    g, a, b = router
    for link in (a, b):
        if not link.default_route():
            g.qnet("ra", "set", link.port)
        wait_for(lambda: link.default_route(), 10.0, 0.2, f"a default route behind {link.port}")
    out = g.qnet("ra", "del", "p0").stdout
    assert "router mode off" in out, out
    # RFC 4861 §6.3.4: a router lifetime of 0 removes the router from the default router list.
    wait_for(lambda: a.default_route() == "", 5.0, 0.1, "the default route behind p0 gone")
    assert {r["port"] for r in g.qnet_json("ra", "list")} == {"p1"}
    assert b.default_route(), "p1's namespace keeps its default route"
    res = g.qnet("ra", "del", "p0", check=False)
    assert res.returncode == 1 and "not in router mode" in res.stderr, res.stderr
