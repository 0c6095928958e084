"""Fragmentation on send (RFC 791) and reassembly (RFC 815) with its limits."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, fragment
from scapy.packet import Raw

from components.netstack.core import StackError

from .util import udp_checksum_ok, A, HOST_A, IP0, MAC0, ip_frame, learn, make_stack, sent


def stack_with_peer(**cfg):
    s = make_stack(**cfg)
    learn(s, "eth0", HOST_A, A, IP0)
    return s


def frags_of(pkt, size=200):
    return [ip_frame(HOST_A, MAC0, f) for f in fragment(pkt, fragsize=size)]


def big_ping(n=3000, ident=0x4242, seq=1):
    return IP(src=A, dst=IP0, id=ident) / ICMP(type=8, id=7, seq=seq) / Raw(bytes(range(256)) * (n // 256) + b"z" * (n % 256))


def echo_replies(s):
    """Reassemble our reply fragments with scapy and return the ICMP layers."""
    frs = [f[IP] for f in sent(s, "eth0")]
    from scapy.layers.inet import defragment
    whole = defragment(frs)
    return [p[ICMP] for p in whole if p.haslayer(ICMP)]


def test_large_ping_in_order_is_reassembled_and_answered_fragmented():
    s = stack_with_peer()
    req = big_ping()
    for f in frags_of(req):
        s.receive("eth0", f, 0.0)
    frames = [f[IP] for f in sent(s, "eth0")]
    assert len(frames) == 3 and all(len(bytes(f)) <= 1500 for f in frames)
    assert len({f.id for f in frames}) == 1 and [f.flags.MF for f in frames] == [1, 1, 0]
    payload = b"".join(bytes(f.payload) for f in sorted(frames, key=lambda f: f.frag))
    assert payload[8:] == bytes(req[Raw])
    assert s.counters()["reassembly"]["reassembled"] == 1
    assert s.counters()["table:reassembly"]["datagrams"] == 0


def test_reversed_order_reassembles():
    s = stack_with_peer()
    for f in reversed(frags_of(big_ping())):
        s.receive("eth0", f, 0.0)
    assert s.counters()["reassembly"]["reassembled"] == 1
    assert len(sent(s, "eth0")) == 3


def test_duplicate_fragments_are_ignored():
    s = stack_with_peer()
    fr = frags_of(big_ping())
    for f in fr[:3] + fr[:3] + fr[3:]:
        s.receive("eth0", f, 0.0)
    c = s.counters()["reassembly"]
    assert c["reassembled"] == 1 and c["duplicates"] == 3


def test_overlapping_fragment_drops_the_whole_datagram():
    s = stack_with_peer()
    pkt = IP(src=A, dst=IP0, id=99, proto=17)
    data = b"a" * 64
    s.receive("eth0", ip_frame(HOST_A, MAC0, IP(bytes(pkt / Raw(data[:32])))), 0.0)  # unfragmented noise
    sent(s)
    f1 = pkt.copy(); f1.flags = "MF"; f1.frag = 0
    f2 = pkt.copy(); f2.flags = "MF"; f2.frag = 2      # bytes 16..
    f3 = pkt.copy(); f3.flags = 0; f3.frag = 4
    s.receive("eth0", ip_frame(HOST_A, MAC0, f1 / Raw(data[:24])), 0.0)   # 0..24 overlaps 16..
    s.receive("eth0", ip_frame(HOST_A, MAC0, f2 / Raw(data[:16])), 0.0)
    s.receive("eth0", ip_frame(HOST_A, MAC0, f3 / Raw(data[:8])), 0.0)
    c = s.counters()["reassembly"]
    assert c["dropped_overlap"] == 1 and c.get("reassembled", 0) == 0


def test_timeout_sends_time_exceeded_only_when_first_fragment_arrived():
    s = stack_with_peer(reassembly_timeout=30.0)
    fr = frags_of(big_ping(ident=1))
    s.receive("eth0", fr[0], 0.0)
    fr2 = frags_of(big_ping(ident=2))
    s.receive("eth0", fr2[-1], 0.0)           # no first fragment for ident 2
    assert s.next_deadline() == 30.0
    s.poll(29.9)
    assert sent(s) == []
    s.poll(30.0)
    (err,) = sent(s, "eth0")
    assert (err[ICMP].type, err[ICMP].code) == (11, 1)
    assert err[IPerror].id == 1
    assert s.counters()["reassembly"]["timeout"] == 2
    assert s.counters()["table:reassembly"]["bytes"] == 0


def test_memory_limit_per_source_drops_and_counts():
    s = stack_with_peer(reassembly_bytes_per_source=2000)
    for ident in range(10):
        s.receive("eth0", frags_of(big_ping(ident=ident))[0], 0.0)
    st = s.counters()["table:reassembly"]
    assert st["bytes"] <= 2000
    assert s.counters()["reassembly"]["dropped_source_limit"] > 0


def test_global_memory_limit_evicts_oldest():
    s = stack_with_peer(reassembly_bytes_total=1000)
    for ident in range(10):
        s.receive("eth0", frags_of(big_ping(ident=ident))[0], 0.0)
    assert s.counters()["table:reassembly"]["bytes"] <= 1000
    assert s.counters()["reassembly"]["evicted"] > 0


def test_datagram_count_limit():
    s = stack_with_peer(reassembly_max_datagrams=4)
    for ident in range(10):
        s.receive("eth0", frags_of(big_ping(ident=ident))[0], 0.0)
    assert s.counters()["table:reassembly"]["datagrams"] == 4


def test_oversized_reassembly_is_dropped():
    s = stack_with_peer()
    f = IP(src=A, dst=IP0, id=5, proto=17, flags=0, frag=8189) / Raw(b"x" * 64)  # ends > 65535
    s.receive("eth0", ip_frame(HOST_A, MAC0, f), 0.0)
    assert s.counters()["reassembly"]["dropped_too_big"] == 1


def test_udp_send_bigger_than_mtu_is_fragmented_and_scapy_reassembles_it():
    s = stack_with_peer()
    s.set_mtu("eth0", 600)
    sid = s.udp_open()
    s.udp_bind(sid, None, 4000)
    s.udp_sendto(sid, b"q" * 2000, IPv4Address(A), 53, 0.0)
    frames = [f[IP] for f in sent(s, "eth0")]
    assert len(frames) == 4 and all(len(bytes(f)) <= 600 for f in frames)
    from scapy.layers.inet import defragment
    (whole,) = defragment(frames)
    assert whole[UDP].sport == 4000 and bytes(whole[UDP].payload) == b"q" * 2000
    assert udp_checksum_ok(whole)


def test_fragmented_udp_reaches_a_socket():
    s = stack_with_peer()
    sid = s.udp_open()
    s.udp_bind(sid, None, 5000)
    dg = IP(src=A, dst=IP0, id=77) / UDP(sport=1234, dport=5000) / Raw(b"k" * 3000)
    for f in frags_of(dg, 500):
        s.receive("eth0", f, 0.0)
    (d,) = s.udp_recv(sid, 10)
    assert d.payload == b"k" * 3000 and d.src_port == 1234


def test_fragmentation_copies_only_copied_options():
    from components.netstack.core.fragment import fragment_ipv4
    from components.netstack.wire import Ipv4Packet, build_ipv4
    # Router alert (148, copied) and a record-route option (7, not copied).
    opts = bytes([148, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 0])
    p = Ipv4Packet.parse(build_ipv4(IPv4Address(A), IPv4Address(IP0), 17, b"d" * 1000,
                                    ident=3, options=opts))
    out = [IP(f) for f in fragment_ipv4(p, 300)]
    def kinds(f):
        return [o.option for o in f.options if o.option != 0]     # minus EOL padding
    assert kinds(out[0]) == [20, 7]
    assert all(kinds(f) == [20] for f in out[1:])
    assert b"".join(bytes(f.payload) for f in out) == b"d" * 1000


def test_dont_fragment_send_bigger_than_mtu_raises():
    s = stack_with_peer()
    with pytest.raises(StackError) as e:
        s.ip4.send(IPv4Address(A), 17, b"x" * 2000, 0.0, dont_fragment=True)
    assert e.value.code == "message_too_long"
