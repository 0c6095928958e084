"""ICMP echo, errors, the rules against sending them and their rate limit."""

from __future__ import annotations

from ipaddress import IPv4Address

from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from components.netstack.core import EchoReply
from components.netstack.core.icmp import TokenBucket

from .util import (A, HOST_A, IP0, IP1, MAC0, arp_reply, ip_frame, learn, make_stack,
                   ping_frame, sent, udp_frame)


def test_echo_request_to_each_of_our_addresses_is_answered_from_that_address():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    for dst in (IP0, IP1):          # IP1 lives on eth1: weak host model
        s.receive("eth0", ping_frame(HOST_A, MAC0, A, dst, ident=5, seq=9, payload=b"abc"), 0.0)
        (r,) = sent(s, "eth0")
        assert r[IP].src == dst and r[IP].dst == A
        assert (r[ICMP].type, r[ICMP].id, r[ICMP].seq) == (0, 5, 9)
        assert bytes(r[ICMP].payload) == b"abc"


def test_ping_from_stack_yields_echo_reply_event():
    s = make_stack()
    s.ping(IPv4Address(A), 33, 2, b"hello", 0.0)
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 0.0)
    (req,) = [f for f in sent(s, "eth0") if f.haslayer(ICMP)]
    assert req[IP].src == IP0 and req[ICMP].id == 33
    reply = IP(src=A, dst=IP0, ttl=61) / ICMP(type=0, id=33, seq=2) / Raw(b"hello")
    s.receive("eth0", ip_frame(HOST_A, MAC0, reply), 0.1)
    assert s.take_events() == [EchoReply(IPv4Address(A), 33, 2, 61, 5)]


def test_ping_to_own_address_loops_back():
    s = make_stack()
    s.ping(IPv4Address(IP1), 1, 1, b"me", 0.0)
    assert s.take_events() == [EchoReply(IPv4Address(IP1), 1, 1, 64, 2)]
    assert sent(s) == []


def test_broadcast_ping_is_ignored():
    s = make_stack()
    s.receive("eth0", ping_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "10.0.0.255"), 0.0)
    s.receive("eth0", ping_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "255.255.255.255"), 0.0)
    assert sent(s) == []
    assert s.counters()["icmp"]["echo_ignored_broadcast"] == 2


def test_unknown_protocol_gets_protocol_unreachable():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    s.receive("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, proto=253) / Raw(b"x" * 20)), 0.0)
    (e,) = sent(s, "eth0")
    assert (e[ICMP].type, e[ICMP].code) == (3, 2)


def test_no_error_about_an_icmp_error():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    inner = IP(src=IP0, dst=A) / UDP(sport=1, dport=2)
    err = IP(src=A, dst=IP0, ttl=1) / ICMP(type=3, code=3) / bytes(inner)[:28]
    # Routed through us with TTL 1 to someone else: must not produce time exceeded.
    fwd = IP(src=A, dst="192.168.1.50", ttl=1) / ICMP(type=3, code=3) / bytes(inner)[:28]
    s.receive("eth0", ip_frame(HOST_A, MAC0, fwd), 0.0)
    assert sent(s) == []
    assert s.counters()["icmp"]["error_suppressed_icmp"] == 1
    s.receive("eth0", ip_frame(HOST_A, MAC0, err), 0.0)
    assert sent(s) == []


def test_no_error_about_a_non_first_fragment():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    frag = IP(src=A, dst="192.168.1.50", ttl=1, proto=17, frag=10) / Raw(b"x" * 16)
    s.receive("eth0", ip_frame(HOST_A, MAC0, frag), 0.0)
    assert sent(s) == []
    assert s.counters()["icmp"]["error_suppressed_fragment"] == 1


def test_errors_are_rate_limited_by_token_bucket():
    s = make_stack(icmp_error_rate=10.0, icmp_error_burst=5)
    learn(s, "eth0", HOST_A, A, IP0)
    for i in range(20):
        s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 9 + i), 0.0)
    assert len(sent(s, "eth0")) == 5
    assert s.counters()["icmp"]["error_rate_limited"] == 15
    for i in range(20):
        s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 9 + i), 0.5)  # +5 tokens
    assert len(sent(s, "eth0")) == 5


def test_token_bucket_refills_up_to_burst():
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_error_quotes_at_most_576_bytes():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1, 7, b"z" * 1400), 0.0)
    (e,) = sent(s, "eth0")
    assert e[IP].len <= 576 and e[IP].len > 500
