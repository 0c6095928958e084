"""Router discovery in the stack (routerdisc.py): Router Solicitations on link up, SLAAC from
advertisements (RFC 4861 §6.3, RFC 4862 §5.5, RFC 7217, RFC 8981), our own advertisements on
devices configured as their link's router (RFC 4861 §6.2), and a host stack configuring
itself from a router stack (issue 12)."""

from ipaddress import IPv6Address, IPv6Network

import msgpack
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptMTU,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr,
                                IPv6)
from scapy.layers.l2 import Ether

from components.netstack.core import Stack, StackConfig
from components.netstack.core.radv import RaConfig, RaPrefix

from .test_ipv6 import LL0, MAC0, frame, mac, sent

LLR = "fe80::1"                          # the router's link-local address
ROUTER_MAC = "02:00:00:00:00:99"
PREFIX = "2001:db8:1::/64"


def host(**cfg) -> Stack:
    cfg.setdefault("strict", True)
    cfg.setdefault("random_seed", 1)
    s = Stack(StackConfig(**cfg))
    s.add_device("eth0", mac=mac(MAC0), now=0.0)
    return s


def ra(prefix: str = PREFIX, valid: int = 3600, preferred: int = 1800, lifetime: int = 1800,
       mtu: int | None = None, rdnss: list[str] | None = None) -> bytes:
    p = IPv6(src=LLR, dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=lifetime) \
        / ICMPv6NDOptSrcLLAddr(lladdr=ROUTER_MAC) \
        / ICMPv6NDOptPrefixInfo(prefix=prefix.split("/")[0], prefixlen=64, L=1, A=1,
                                validlifetime=valid, preferredlifetime=preferred)
    if mtu:
        p = p / ICMPv6NDOptMTU(mtu=mtu)
    if rdnss:
        p = p / ICMPv6NDOptRDNSS(dns=rdnss, lifetime=600)
    return frame(p, ROUTER_MAC, "33:33:00:00:00:01")


def until(s: Stack, t: float, now: float = 0.0) -> float:
    """Poll s at each of its deadlines up to t."""
    while True:
        d = s.next_deadline()
        if d is None or d > t:
            s.poll(t)
            return t
        now = max(d, now)
        s.poll(now)


def global_addresses(s: Stack) -> dict[str, str]:
    return {a.address: a.state for a in s.addresses6()
            if not a.address.startswith("fe80")}


# -- host side -------------------------------------------------------------------------------

def test_link_up_sends_router_solicitations_until_an_advertisement_comes():
    s = host()
    sent(s)                                        # the DAD probe
    until(s, 1.0)
    rs = [f for f in sent(s) if f.haslayer(ICMPv6ND_RS)]
    assert len(rs) == 1 and rs[0][IPv6].dst == "ff02::2" and rs[0][IPv6].hlim == 255
    assert rs[0][Ether].dst == "33:33:00:00:00:02"
    until(s, 5.5)
    (f,) = [f for f in sent(s) if f.haslayer(ICMPv6ND_RS)]
    # After DAD: from the link-local address with our link-layer address (RFC 4861 §6.3.7).
    assert f[IPv6].src == LL0 and f[ICMPv6NDOptSrcLLAddr].lladdr == MAC0
    s.receive("eth0", ra(), 5.6)
    until(s, 30.0)
    assert not [f for f in sent(s) if f.haslayer(ICMPv6ND_RS)]
    assert s.counters()["routers6"]["tx_rs"] == 2


def test_advertised_prefix_gives_stable_and_temporary_addresses_and_a_default_route():
    s = host(router_solicitations=0)
    until(s, 1.5)
    s.receive("eth0", ra(mtu=1400, rdnss=["2001:db8::53"]), 1.5)
    addrs = global_addresses(s)
    assert len(addrs) == 2 and set(addrs.values()) == {"TENTATIVE"}
    assert all(IPv6Address(a.split("/")[0]) in IPv6Network(PREFIX) for a in addrs)
    until(s, 3.0)
    assert set(global_addresses(s).values()) == {"PREFERRED"}
    routes = {(r.prefix, r.gateway, r.device) for r in s.routes6()}
    assert ("::/0", LLR, "eth0") in routes and (PREFIX, None, "eth0") in routes
    assert s.ip6.link_mtu["eth0"] == 1400
    assert s.dns6("eth0")[0] == [IPv6Address("2001:db8::53")]
    # Off-link traffic goes to the router's MAC (learned from the RA's SLLAO).
    s.ping6(IPv6Address("2001:db8:77::1"), 1, 1, b"", 3.0)
    (f,) = [f for f in sent(s) if f.haslayer(ICMPv6EchoRequest)]
    assert f[Ether].dst == ROUTER_MAC and IPv6Address(f[IPv6].src) in IPv6Network(PREFIX)


def test_lifetimes_deprecate_then_remove_and_router_lifetime_zero_drops_the_default_route():
    s = host(router_solicitations=0)
    until(s, 1.5)
    s.receive("eth0", ra(valid=30, preferred=10), 1.5)
    until(s, 3.0)
    assert set(global_addresses(s).values()) == {"PREFERRED"}
    until(s, 12.0)
    assert set(global_addresses(s).values()) == {"DEPRECATED"}
    until(s, 32.0)
    assert global_addresses(s) == {}
    s.receive("eth0", ra(lifetime=0), 33.0)
    assert all(r.prefix != "::/0" for r in s.routes6())


def test_a_stable_address_taken_by_another_node_is_replaced_by_a_new_one():
    s = host(router_solicitations=0)
    until(s, 1.5)
    s.receive("eth0", ra(), 1.5)
    first = sorted(global_addresses(s))
    sent(s)
    # Someone defends the first address during DAD: an NA for it.
    from .test_ipv6 import na
    target = first[0].split("/")[0]
    s.receive("eth0", na(target, src=target, dst="ff02::1", S=0, dst_mac="33:33:00:00:00:01"), 1.6)
    until(s, 4.0)
    addrs = global_addresses(s)
    # RFC 7217 §6: the taken one is given up and another identifier tried (DAD_Counter + 1).
    assert addrs.get(first[0]) in (None, "DUPLICATE")
    preferred = [a for a, st in addrs.items() if st == "PREFERRED"]
    assert len(preferred) == 2 and first[0] not in preferred


def test_slaac_addresses_routes_and_the_stable_key_survive_a_snapshot():
    s = host(router_solicitations=0)
    until(s, 1.5)
    s.receive("eth0", ra(), 1.5)
    until(s, 3.0)
    before = global_addresses(s)
    snap = msgpack.unpackb(msgpack.packb(s.snapshot(now=3.0)), raw=False)
    r = Stack.restore(snap, StackConfig(strict=True, router_solicitations=0), now=3.0)
    assert global_addresses(r) == before
    assert ("::/0", LLR, "eth0") in {(x.prefix, x.gateway, x.device) for x in r.routes6()}
    # The same key: a second prefix gets the same stable identifier in both stacks.
    for x in (s, r):
        x.receive("eth0", ra("2001:db8:2::/64"), 4.0)
    new = lambda x: {a for a in global_addresses(x) if a.startswith("2001:db8:2:")}
    assert new(s) & new(r)


# -- router side -----------------------------------------------------------------------------

def router(now: float = 0.0) -> Stack:
    s = host(router_solicitations=0)
    s.add_address6("eth0", "2001:db8:1::1/64", now)
    s.set_router_advertisements("eth0", RaConfig(prefixes=[RaPrefix(IPv6Network(PREFIX))],
                                                 mtu=1500, rdnss=[IPv6Address("2001:db8:1::1")]),
                                now)
    return s


def test_a_router_device_advertises_its_prefix_and_answers_solicitations():
    s = router()
    until(s, 1.5)
    ras = [f for f in sent(s) if f.haslayer(ICMPv6ND_RA)]
    assert len(ras) == 1
    f = ras[0]
    assert f[IPv6].src == LL0 and f[IPv6].dst == "ff02::1" and f[IPv6].hlim == 255
    assert f[ICMPv6NDOptPrefixInfo].prefix == "2001:db8:1::" and f[ICMPv6NDOptPrefixInfo].A == 1
    assert f[ICMPv6ND_RA].routerlifetime > 0
    # No SLAAC on a router device: its own advertisements and others' are not taken.
    s.receive("eth0", ra("2001:db8:9::/64"), 2.0)
    assert not any(a.startswith("2001:db8:9") for a in global_addresses(s))
    rs = IPv6(src="fe80::5", dst="ff02::2", hlim=255) / ICMPv6ND_RS() \
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:05")
    s.receive("eth0", frame(rs, "02:00:00:00:00:05", "33:33:00:00:00:02"), 20.0)
    until(s, 20.6)
    assert [f for f in sent(s) if f.haslayer(ICMPv6ND_RA)]
    s.set_router_advertisements("eth0", None, 21.0)
    (bye,) = [f for f in sent(s) if f.haslayer(ICMPv6ND_RA)]
    assert bye[ICMPv6ND_RA].routerlifetime == 0          # RFC 4861 §6.2.5


def test_a_host_stack_configures_itself_from_a_router_stack_and_reaches_it():
    r = router()
    h = Stack(StackConfig(strict=True, random_seed=7))
    h.add_device("eth0", mac=b"\x02\0\0\0\0\x07", now=0.0)
    now = 0.0
    while now < 12.0:
        for x, y in ((r, h), (h, r)):
            for frames in x.take_transmit().values():
                for f in frames:
                    y.receive("eth0", f, now)
        ds = [d for d in (r.next_deadline(), h.next_deadline()) if d is not None]
        now = min(max(min(ds) if ds else 12.0, now + 0.01), 12.0)
        r.poll(now)
        h.poll(now)
    got = global_addresses(h)
    assert got and set(got.values()) == {"PREFERRED"}
    assert all(IPv6Address(a.split("/")[0]) in IPv6Network(PREFIX) for a in got)
    assert h.dns6("eth0")[0] == [IPv6Address("2001:db8:1::1")]
    h.ping6(IPv6Address("2001:db8:1::1"), 3, 1, b"hi", now)
    for _ in range(4):
        for x, y in ((h, r), (r, h)):
            for frames in x.take_transmit().values():
                for f in frames:
                    y.receive("eth0", f, now)
    assert any(getattr(e, "seq", None) == 1 for e in h.take_events())
