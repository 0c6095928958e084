"""Layers stand on their narrow contexts alone, and the shared tables work for IPv6 too.

A layer is built here from its context and nothing else (no Stack), which is what its
constructor promises. The version-generic tables (routing, fragment spans, reassembly,
neighbors, UDP sockets) are driven with IPv6 addresses, which no IPv6 layer uses yet.
"""

from __future__ import annotations

import random
from collections import Counter
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Network

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from components.netstack.core import StackConfig
from components.netstack.core.arp import Arp, ArpContext
from components.netstack.core.device import ETHERNET, Device, multicast_mac
from components.netstack.core.events import NeighborUnreachable
from components.netstack.core.fragment import Reassembler, fragment_spans
from components.netstack.core.icmp import IcmpContext, Icmpv4
from components.netstack.core.ipv4 import Ipv4Datagram
from components.netstack.core.links import Links
from components.netstack.core.counters import CounterSet
from components.netstack.core.neighbor import NeighborTable, State
from components.netstack.core.route import Route, RoutingTable
from components.netstack.core.udp import UdpSockets
from components.netstack.wire import EthernetFrame, Ipv4Packet, MacAddr, build_udp
from components.netstack.wire.icmpv4 import ICMP_DEST_UNREACH, UNREACH_PORT

from .util import A, HOST_A, IP0, MAC0, arp_request, mac

CFG = StackConfig(strict=True, random_seed=1, announce_num=1)


def one_port_links() -> tuple[Links, Device]:
    links = Links(CFG, CounterSet())
    dev = links.devices["eth0"] = Device("eth0", ETHERNET, MacAddr(mac(MAC0)), 1500)
    dev.addresses.append(IPv4Interface(f"{IP0}/24"))
    return links, dev


def test_arp_answers_and_reports_failure_through_its_context_only():
    links, dev = one_port_links()
    events, failed = [], []
    arp = Arp(CFG, Counter(), Counter(), ArpContext(
        links=links, emit=events.append,
        unreachable=lambda device, packets, now: failed.append((device, packets))))
    arp.receive(dev, EthernetFrame.parse(arp_request(HOST_A, A, IP0)), 0.0)
    (reply,) = dev.tx
    assert Ether(bytes(reply))[ARP].op == 2
    assert arp.neighbors.state_of("eth0", int(IPv4Address(A))) is State.STALE
    dev.tx.clear()
    arp.neighbors.send("eth0", int(IPv4Address("10.0.0.9")), b"pkt", 0.0)
    for t in (1.0, 2.0, 3.0):
        arp.neighbors.poll(t)
    assert failed == [("eth0", [b"pkt"])]
    assert events == [NeighborUnreachable("eth0", IPv4Address("10.0.0.9"), 1)]


def test_icmp_port_unreachable_goes_out_through_the_send_it_was_given():
    _, dev = one_port_links()
    sent = []
    icmp = Icmpv4(CFG, Counter(), IcmpContext(
        send=lambda dst, proto, payload, now, src=None: sent.append((dst, src, payload)),
        is_local=lambda a: a == IPv4Address(IP0), is_directed_broadcast=lambda a: False,
        devices={"eth0": dev}, emit=lambda e: None, udp_sender=lambda *a: None,
        tcp_error=lambda *a: False))
    pkt = Ipv4Packet.parse(bytes(IP(src=A, dst=IP0) / ICMP(type=8)))
    assert icmp.send_error(Ipv4Datagram(pkt, pkt.payload, "eth0", False), ICMP_DEST_UNREACH,
                           UNREACH_PORT, 0.0)
    ((dst, src, body),) = sent
    assert (dst, src) == (IPv4Address(A), IPv4Address(IP0)) and body[:2] == b"\x03\x03"


def test_ipv6_routing_longest_prefix_metric_and_on_link_gateway():
    t = RoutingTable(6, 100)
    up = lambda d: d != "down"
    t.add(Route(IPv6Network("2001:db8::/64"), None, "lan", 0))
    t.add(Route(IPv6Network("2001:db8::5/128"), None, "host", 0))
    t.add(Route(IPv6Network("::/0"), IPv6Address("2001:db8::1"), None, 10))
    t.add(Route(IPv6Network("::/0"), IPv6Address("fe80::1"), "down", 0))
    assert t.lookup(IPv6Address("2001:db8::5"), up).device == "host"
    assert t.lookup(IPv6Address("2001:db8::6"), up).device == "lan"
    hop = t.cached_lookup(int(IPv6Address("2600::1")), up)
    assert (hop.device, hop.address, hop.neighbor) == \
        ("lan", IPv6Address("2001:db8::1"), int(IPv6Address("2001:db8::1")))
    again = RoutingTable(6, 100)
    again.restore(t.snapshot())
    assert [r.to_dict() for r in again] == [r.to_dict() for r in t]


def test_fragment_spans_are_8_byte_units_with_a_short_last():
    assert fragment_spans(100, 40, 32) == [(0, 40), (40, 32), (72, 28)]
    assert fragment_spans(0, 40, 40) == [(0, 0)]
    assert fragment_spans(100, 7, 40) == []
    assert fragment_spans(10, 16, 7) == [(0, 10)]      # a later room never needed


def test_reassembly_of_ipv6_keyed_fragments():
    r = Reassembler(CFG, Counter())
    src, dst = int(IPv6Address("2001:db8::2")), int(IPv6Address("2001:db8::1"))
    key = (6, src, dst, 0x12345678)
    assert r.add(key, (6, src), 8, b"b" * 8, False, None, 0.0, 65535) is None
    first, payload = r.add(key, (6, src), 0, b"a" * 8, True, "hdr", 0.0, 65535)
    assert (first, payload) == ("hdr", b"a" * 8 + b"b" * 8)


def test_neighbor_table_keyed_by_ipv6_ints():
    class Sink:
        def __init__(self):
            self.out = []

        def solicit(self, device, address, lladdr, now):
            self.out.append(("solicit", address))

        def transmit(self, device, lladdr, packet, now):
            self.out.append(("tx", lladdr, packet))

        def unreachable(self, device, address, packets, now):
            self.out.append(("unreachable", packets))

    sink = Sink()
    nt = NeighborTable(CFG, sink, Counter(), format_address=lambda a: str(IPv6Address(a)))
    a = int(IPv6Address("fe80::2"))
    nt.send("eth0", a, b"p", 0.0)
    nt.confirm("eth0", a, b"\x02" * 6, 0.1)
    assert sink.out == [("solicit", a), ("tx", b"\x02" * 6, b"p")]
    assert nt.info()[0].address == "fe80::2"


def test_udp_sockets_demultiplex_ipv6():
    u = UdpSockets(6, CFG, Counter(), random.Random(1))
    sid = u.open()
    ours, peer = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")
    u.bind(sid, ours, 53, None, lambda a: a == ours)
    assert u.receive(peer, ours, build_udp(peer, ours, 1000, 53, b"q"), "eth0", False)
    assert not u.receive(peer, ours, build_udp(peer, ours, 1000, 54, b"q"), "eth0", False)
    (d,) = u.recv(sid, 10)
    assert (d.src, d.dst, d.payload, d.version) == (peer, ours, b"q", 6)
    assert u.find_sender(ours, 53, peer, 1000).sid == sid


def test_ipv6_multicast_mac_is_33_33_and_the_low_32_bits():
    assert bytes(multicast_mac(IPv6Address("ff02::1:ff00:2"))) == bytes.fromhex("3333ff000002")
    assert bytes(multicast_mac(IPv4Address("224.0.0.251"))) == bytes.fromhex("01005e0000fb")
