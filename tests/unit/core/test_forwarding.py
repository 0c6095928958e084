"""Forwarding between interfaces (RFC 1812)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.packet import Raw

from .util import (A, B, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, ip_frame, learn, make_stack,
                   ping_frame, sent, udp_frame)


def router():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    return s


def test_forwarded_packet_has_ttl_decremented_once_and_payload_intact():
    s = router()
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, B, 1000, 2000, b"payload", ttl=10), 0.0)
    (f,) = sent(s, "eth1")
    assert f.src == MAC1 and f.dst == HOST_B
    assert f[IP].ttl == 9 and f[IP].src == A and f[IP].dst == B
    assert bytes(f[UDP].payload) == b"payload"
    chk = f[IP].chksum
    del f[IP].chksum
    assert IP(bytes(f[IP])).chksum == chk   # header checksum recomputed correctly
    assert s.counters()["ipv4"]["forwarded"] == 1


def test_ttl_one_gives_time_exceeded_and_no_forward():
    s = router()
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, B, ttl=1), 0.0)
    assert sent(s, "eth1") == []
    (err,) = sent(s, "eth0")
    assert err[IP].src == IP0 and err[IP].dst == A
    assert err[ICMP].type == 11 and err[ICMP].code == 0
    assert err[IPerror].dst == B


def test_no_route_gives_net_unreachable():
    s = router()
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, "8.8.8.8"), 0.0)
    (err,) = sent(s, "eth0")
    assert (err[ICMP].type, err[ICMP].code) == (3, 0)


def test_forwarding_via_gateway_resolves_the_gateway():
    s = router()
    s.add_route(IPv4Network("0.0.0.0/0"), IPv4Address(B), None)
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, "8.8.8.8"), 0.0)
    (f,) = sent(s, "eth1")
    assert f.dst == HOST_B and f[IP].dst == "8.8.8.8"


def test_forwarding_disabled_on_ingress_drops():
    s = router()
    s.set_forwarding("eth0", False)
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, B), 0.0)
    assert sent(s) == []
    assert s.counters()["ipv4"]["forward_drop_disabled"] == 1


def test_martians_and_link_broadcasts_are_not_forwarded():
    s = router()
    s.receive("eth0", ping_frame(HOST_A, MAC0, "0.0.0.0", B), 0.0)
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, "240.0.0.1"), 0.0)
    s.receive("eth0", ping_frame(HOST_A, MAC0, "127.0.0.1", B), 0.0)
    s.receive("eth0", ping_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, B), 0.0)
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, "192.168.1.255"), 0.0)  # directed bcast
    assert sent(s, "eth1") == []
    c = s.counters()["ipv4"]
    assert c["forward_drop_link_broadcast"] == 1
    assert c.get("forwarded", 0) == 0


def test_df_packet_bigger_than_egress_mtu_gets_frag_needed_with_mtu():
    s = router()
    s.set_mtu("eth1", 576)
    big = ip_frame(HOST_A, MAC0, IP(src=A, dst=B, flags="DF") / UDP(sport=1, dport=2) /
                   Raw(b"x" * 1000))
    s.receive("eth0", big, 0.0)
    assert sent(s, "eth1") == []
    (err,) = sent(s, "eth0")
    assert (err[ICMP].type, err[ICMP].code) == (3, 4)
    assert err[ICMP].nexthopmtu == 576


def test_packet_bigger_than_egress_mtu_is_fragmented_on_forward():
    s = router()
    s.set_mtu("eth1", 576)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, B, 1, 2, b"y" * 1400, ttl=5), 0.0)
    frags = [f[IP] for f in sent(s, "eth1")]
    assert len(frags) == 3
    assert all(len(bytes(f)) <= 576 and f.ttl == 4 for f in frags)
    assert [f.flags.MF for f in frags] == [1, 1, 0]
    data = b"".join(bytes(f.payload) for f in sorted(frags, key=lambda f: f.frag))
    assert data[8:] == b"y" * 1400


def test_forward_to_same_interface_works_without_redirect():
    s = router()
    learn(s, "eth0", "02:00:00:00:00:ab", "10.0.0.3", IP0)
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, "10.0.0.3"), 0.0)
    (f,) = sent(s, "eth0")
    assert f.dst == "02:00:00:00:00:ab" and f[ICMP].type == 8


def test_packet_spoofing_our_address_is_dropped():
    s = router()
    s.receive("eth0", ping_frame(HOST_A, MAC0, IP1, B), 0.0)
    assert sent(s) == []
    assert s.counters()["ipv4"]["rx_drop_own_source"] == 1
