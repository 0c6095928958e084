"""qnet's IPv6 against the Linux kernel: two namespaces, each on the far side of a TAP port of one
running qnet graph (p0: fd00:99:A::/64, p1: fd00:99:B::/64; qnet is ::1, Linux ::2, and each
namespace routes everything else via qnet's address). Neighbor Discovery, echo both ways to
link-local and global addresses, Duplicate Address Detection against an address Linux holds,
forwarding with the hop limit decremented, Time Exceeded, a route via a link-local gateway.

The namespaces keep IPv6 on (tests/interop/util.py's ports turn it off) with DAD off on the Linux
side (its addresses usable at once; it still defends them). Tests share one graph and run in
file order."""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

import pytest

from ipc.events import Subscriber
from ipc.protocols.netstack import NETSTACK
from tests.interop.util import NsPort, QnetGraph, ipv6_namespace_port, missing_prerequisite, run, wait_for

pytestmark = pytest.mark.interop

RESOLVED = ("REACHABLE", "STALE", "DELAY", "PROBE")
_REPLY6 = re.compile(r"bytes from ([0-9a-fA-F:.%\w-]+): icmp_seq=(\d+) ttl=(\d+)")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Ping6:
    transmitted: int
    received: int
    replies: list[tuple[str, int, int]]     # (src, seq, hop limit)
    text: str


@dataclass
class Ns6Port:
    """A qnet port whose TAP's kernel side lives in a namespace with IPv6 on."""
    base: NsPort

    @property
    def port(self) -> str:
        return self.base.port

    @property
    def tap(self) -> str:
        return self.base.tap

    @property
    def prefix(self) -> str:
        return f"fd00:99:{self.base.x:x}::"

    @property
    def qnet6(self) -> str:
        return self.prefix + "1"

    @property
    def linux6(self) -> str:
        return self.prefix + "2"

    def sh(self, cmd: list[str], timeout: float = 15.0, check: bool = True):
        return self.base.sh(cmd, timeout=timeout, check=check)

    def ping6(self, dst: str, *opts: str, timeout: float = 30.0) -> Ping6:
        p = self.sh(["ping", "-6", "-n", *opts, dst], timeout=timeout, check=False)
        text = p.stdout + p.stderr
        m = _SUMMARY.search(text)
        assert m is not None, f"no ping summary in:\n{text}"
        return Ping6(int(m.group(1)), int(m.group(2)),
                     [(s, int(q), int(t)) for s, q, t in _REPLY6.findall(text)], text)

    def link_local(self) -> str:
        out = self.sh(["ip", "-6", "-o", "addr", "show", "dev", self.tap, "scope", "link"]).stdout
        m = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out)
        assert m, out
        return m.group(1)

    def mac(self) -> str:
        return self.base.mac().lower()

    def neigh(self, addr: str) -> str:
        return self.sh(["ip", "-6", "neigh", "show", addr, "dev", self.tap]).stdout.strip()


def _add_ns6_port(g: QnetGraph, port: str, x: int) -> Ns6Port:
    p = Ns6Port(ipv6_namespace_port(g, port, x, "qn", (
        "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
        "net.ipv6.conf.all.forwarding=0"), addr=f"fd00:99:{x:x}::1/64"))
    run(["ip", "-n", p.base.ns, "addr", "add", f"{p.linux6}/64", "dev", p.tap, "nodad"])
    run(["ip", "-n", p.base.ns, "-6", "route", "add", "default", "via", p.qnet6])
    return p


@pytest.fixture(scope="module")
def six():
    """(graph, a, b): ports p0 and p1, each with a namespace speaking IPv6 behind it."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    xa, xb = random.sample(range(16, 4000), 2)
    g = QnetGraph.start()
    try:
        a = _add_ns6_port(g, "p0", xa)
        b = _add_ns6_port(g, "p1", xb)
        yield g, a, b
    finally:
        g.stop()


def _states6(g: QnetGraph, port: str) -> dict[str, str]:
    return {a["address"]: a["state"] for a in g.port_row(port)["addresses6"]}


def _qnet_ll(g: QnetGraph, port: str) -> str:
    return next(a.split("/")[0] for a in _states6(g, port) if a.startswith("fe80:"))


# -- 1: echo both ways, to link-local and global addresses; neighbors learned both ways ------------
@pytest.mark.timeout(60)
def test_linux_and_qnet_ping6_each_others_link_local_and_global_addresses(six):
    g, a, _ = six
    r = a.ping6(a.qnet6, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3 and {s for s, *_ in r.replies} == {a.qnet6}, r.text
    ll = _qnet_ll(g, "p0")
    r = a.ping6(f"{ll}%{a.tap}", "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3 and all(s.startswith(ll) and t == 64 for s, _, t in r.replies), r.text

    res = g.qnet_json("ping", "-c", "3", "-i", "0.2", a.linux6)
    assert res["sent"] == 3 and res["received"] == 3, res
    assert all(x["ok"] and x["src"] == a.linux6 and x["ttl"] == 64 for x in res["replies"]), res
    linux_ll = a.link_local()
    res = g.qnet_json("ping", "-6", "-c", "2", "-i", "0.2", f"{linux_ll}%p0")
    assert res["received"] == 2 and all(x["src"] == linux_ll for x in res["replies"]), res
    res = g.qnet_json("ping", "-c", "1", "-I", "p0", linux_ll)
    assert res["received"] == 1, res

    mac = a.mac()
    rows = {n["address"]: n for n in g.qnet_json("neigh", "-6") if n["device"] == "p0"}
    for addr in (a.linux6, linux_ll):
        assert addr in rows and rows[addr]["mac"].lower() == mac and rows[addr]["state"] in RESOLVED, rows
    assert all(":" in n["address"] for n in g.qnet_json("neigh", "-6"))
    qmac = g.port_row("p0")["mac"].lower()
    for addr in (a.qnet6, ll):
        kn = a.neigh(addr)
        assert qmac in kn.lower() and any(s in kn for s in RESOLVED), kn


@pytest.mark.timeout(60)
def test_4000_byte_echoes_are_fragmented_and_reassembled_both_ways(six):
    g, a, _ = six
    # RFC 8200 §4.5: 4008 bytes of ICMPv6 in a 1500-byte link MTU travel as three fragments.
    r = a.ping6(a.qnet6, "-c", "2", "-i", "0.3", "-W", "2", "-s", "4000")
    assert r.received == 2 and "4008 bytes from" in r.text, r.text
    res = g.qnet_json("ping", "-c", "2", "-i", "0.3", "-s", "4000", a.linux6)
    assert res["received"] == 2 and all(x["size"] == 4000 for x in res["replies"]), res


# -- 2: Duplicate Address Detection against an address Linux holds ----------------------------------
@pytest.mark.timeout(60)
def test_an_address_linux_holds_is_duplicate_at_qnet_which_never_answers_for_it(six):
    g, a, _ = six
    dup = a.prefix + "5"
    a.sh(["ip", "-6", "addr", "add", f"{dup}/64", "dev", a.tap, "nodad"])
    seen: list[str] = []
    events = Subscriber([NETSTACK], [f"ipc://{g.run_dir}/netstack.pub"])
    try:
        time.sleep(0.3)     # the subscription reaches the publisher before the event is sent
        g.qnet("addr", "add", "p0", f"{dup}/64")

        def marked():
            events.receive(lambda _p, name, ev: seen.append(ev.state) if name == "address6"
                           and str(ev.address) == f"{dup}/64" else None)
            return "DUPLICATE" in seen
        wait_for(marked, 6.0, 0.1, "an address6 event saying DUPLICATE")
    finally:
        events.close()
    assert seen[0] == "TENTATIVE" and "PREFERRED" not in seen, seen
    assert _states6(g, "p0")[f"{dup}/64"] == "DUPLICATE"
    line = next(ln for ln in g.qnet("addr", "-6").stdout.splitlines() if f"{dup}/64" in ln)
    assert line.split()[-1] == "DUPLICATE", line
    # Linux stays the owner, and once it lets the address go nobody answers for it: qnet
    # neither answers Neighbor Solicitations for it nor echo requests to it.
    a.sh(["ip", "-6", "addr", "del", f"{dup}/64", "dev", a.tap])
    r = a.ping6(dup, "-c", "2", "-i", "0.3", "-W", "1")
    assert r.received == 0, r.text
    assert g.port_row("p0")["mac"].lower() not in a.neigh(dup).lower()
    # Re-added, it runs DAD again and, with nobody holding it now, becomes qnet's.
    g.qnet("addr", "del", "p0", f"{dup}/64")
    g.qnet("addr", "add", "p0", f"{dup}/64")
    wait_for(lambda: _states6(g, "p0").get(f"{dup}/64") == "PREFERRED", 6.0, 0.2, "the address preferred")
    r = a.ping6(dup, "-c", "2", "-i", "0.3", "-W", "2")
    assert r.received == 2 and {s for s, *_ in r.replies} == {dup}, r.text
    g.qnet("addr", "del", "p0", f"{dup}/64")


# -- 3: forwarding --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_qnet_forwards_ipv6_between_namespaces_decrementing_the_hop_limit(six):
    g, a, b = six
    r = a.ping6(b.linux6, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3, r.text
    # Linux answers with hop limit 64; one hop through qnet leaves 63.
    assert {(s, t) for s, _, t in r.replies} == {(b.linux6, 63)}, r.text
    r = b.ping6(a.linux6, "-c", "2", "-i", "0.2", "-W", "2")
    assert r.received == 2 and {t for *_, t in r.replies} == {63}, r.text
    # qnet's own address on the far port is delivered locally, not forwarded.
    r = a.ping6(b.qnet6, "-c", "1", "-W", "2")
    assert r.received == 1 and r.replies[0][2] == 64, r.text
    # Hop limit 1 ends at qnet: Time Exceeded from its address on the ingress port
    # (RFC 4443 §3.3), and 2 is enough for the one hop.
    r = a.ping6(b.linux6, "-c", "1", "-t", "1", "-W", "2")
    assert r.received == 0, r.text
    m = re.search(r"From (\S+) icmp_seq=1 Time exceeded: Hop limit", r.text)
    assert m is not None and m.group(1) in (a.qnet6, _qnet_ll(g, "p0")), r.text
    r = a.ping6(b.linux6, "-c", "1", "-t", "2", "-W", "2")
    assert r.received == 1 and r.replies[0][2] == 63, r.text


@pytest.mark.timeout(60)
def test_a_route_via_a_link_local_gateway_reaches_a_network_behind_linux(six):
    g, a, b = six
    behind = f"fd00:77:{b.base.x:x}::"
    b.sh(["ip", "-6", "addr", "add", f"{behind}1/128", "dev", "lo"])
    gw = b.link_local()
    g.qnet("route", "add", f"{behind}/64", "via", f"{gw}%p1")
    try:
        rows = g.qnet_json("route", "list", "-6")
        assert any(r["prefix"] == f"{behind}/64" and r["gateway"] == gw and r["device"] == "p1" for r in rows), rows
        r = a.ping6(f"{behind}1", "-c", "2", "-i", "0.2", "-W", "2")
        assert r.received == 2 and {(s, t) for s, _, t in r.replies} == {(f"{behind}1", 63)}, r.text
        res = g.qnet_json("ping", "-c", "1", f"{behind}1")
        assert res["received"] == 1 and res["replies"][0]["src"] == f"{behind}1", res
    finally:
        g.qnet("route", "del", f"{behind}/64", check=False)
    r = a.ping6(f"{behind}1", "-c", "1", "-W", "1")
    assert r.received == 0, r.text
