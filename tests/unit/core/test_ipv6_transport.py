"""IPv6 beyond the link: routes, forwarding, fragments, path MTU, ping6, UDP and TCP over
IPv6 and loopback (issue 12), driven frame by frame with scapy as the peers."""

import hashlib
import random
from ipaddress import IPv6Address

import msgpack
import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPerror6, IPv6,
                                IPv6ExtHdrFragment, fragment6)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from components.netstack.core import Stack, StackConfig, StackError
from components.netstack.core.events import EchoReply, IcmpErrorForSocket
from components.netstack.core.tcp import TcpEvent

from .test_ipv6 import LL0, LLA, frame, ns, sent
from .util import HOST_A, HOST_B, MAC0, MAC1, mac

G0, GA = "2001:db8::1", "2001:db8::2"          # eth0's global address, host A's
G1, GB = "2001:db8:1::1", "2001:db8:1::2"      # eth1's, host B's
LL1 = "fe80::ff:fe00:101"                      # eth1's link-local (MAC1 = 02:00:00:00:01:01)
LLB = "fe80::ff:fe00:bb"


def router(**cfg) -> Stack:
    """eth0 (host A's link) and eth1 (host B's), each with a global /64, DAD done, both
    neighbors known."""
    cfg.setdefault("strict", True)
    cfg.setdefault("random_seed", 1)
    cfg.setdefault("router_solicitations", 0)
    s = Stack(StackConfig(**cfg))
    s.add_device("eth0", mac=mac(MAC0), now=0.0)
    s.add_device("eth1", mac=mac(MAC1), now=0.0)
    s.add_address6("eth0", G0 + "/64", 0.0)
    s.add_address6("eth1", G1 + "/64", 0.0)
    s.poll(1.0)
    # Each host solicits us, which teaches us its link-layer address (RFC 4861 §7.2.3).
    s.receive("eth0", ns(G0, src=GA, dst="ff02::1:ff00:1"), 1.0)
    s.receive("eth0", ns(LL0), 1.0)
    s.receive("eth1", ns(G1, src=GB, dst="ff02::1:ff00:1", lladdr=HOST_B, src_mac=HOST_B), 1.0)
    s.receive("eth1", ns(LL1, src=LLB, dst="ff02::1:ff00:101", lladdr=HOST_B, src_mac=HOST_B,
                         dst_mac="33:33:ff:00:01:01"), 1.0)
    s.take_transmit()
    s.take_events()
    assert {a.state for a in s.addresses6()} == {"PREFERRED"}
    return s


def from_a(pkt) -> bytes:
    return frame(pkt)


def from_b(pkt) -> bytes:
    return frame(pkt, HOST_B, MAC1)


# -- forwarding ------------------------------------------------------------------------------

def test_forwarding_decrements_the_hop_limit_and_keeps_the_packet():
    s = router()
    p = IPv6(src=GA, dst=GB, hlim=9, fl=5) / UDP(sport=1, dport=2) / Raw(b"data")
    s.receive("eth0", from_a(p), 2.0)
    (f,) = sent(s, "eth1")
    assert f[Ether].dst == HOST_B and f[Ether].src == MAC1
    assert f[IPv6].hlim == 8 and f[IPv6].fl == 5 and bytes(f[UDP].payload) == b"data"
    assert f[UDP].chksum == IPv6(bytes(p))[UDP].chksum     # untouched: no header checksum
    assert s.counters()["ipv6"]["forwarded"] == 1


def test_hop_limit_one_no_route_and_too_big_get_their_icmpv6_errors():
    s = router()
    s.receive("eth0", from_a(IPv6(src=GA, dst=GB, hlim=1) / UDP() / Raw(b"x")), 2.0)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6TimeExceeded].code == 0 and f[IPv6].src == G0 and f[IPv6].dst == GA
    s.receive("eth0", from_a(IPv6(src=GA, dst="2001:db8:99::1") / UDP() / Raw(b"x")), 2.1)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6DestUnreach].code == 0 and f[IPerror6].dst == "2001:db8:99::1"
    s.set_mtu("eth1", 1280)
    s.receive("eth0", from_a(IPv6(src=GA, dst=GB) / UDP() / Raw(b"x" * 1400)), 2.2)
    (f,) = sent(s, "eth0")
    # RFC 8200 §5: a router does not fragment; the quote stays within 1280 bytes.
    assert f[ICMPv6PacketTooBig].mtu == 1280 and len(f[IPv6]) <= 1280
    assert sent(s, "eth1") == []
    c = s.counters()["ipv6"]
    assert (c["forward_drop_hop_limit"], c["forward_drop_no_route"], c["forward_drop_too_big"]) \
        == (1, 1, 1)


def test_no_forwarding_when_the_port_does_not_forward_and_errors_about_errors_are_not_sent():
    s = router()
    s.set_forwarding("eth0", False)
    s.receive("eth0", from_a(IPv6(src=GA, dst=GB) / UDP()), 2.0)
    assert sent(s) == [] and s.counters()["ipv6"]["rx_drop_not_ours"] == 1
    s.set_forwarding("eth0", True)
    err = IPv6(src=GA, dst="2001:db8:99::1", hlim=1) / ICMPv6DestUnreach() / IPerror6(dst=GA)
    s.receive("eth0", from_a(err), 2.1)
    assert sent(s) == [] and s.counters()["icmpv6"]["error_suppressed_icmp"] == 1


def test_static_routes_through_a_link_local_gateway_and_their_checks():
    s = router()
    s.add_route6("2001:db8:5::/48", "fe80::ff:fe00:bb", "eth1")
    s.receive("eth0", from_a(IPv6(src=GA, dst="2001:db8:5::9") / UDP() / Raw(b"r")), 2.0)
    (f,) = sent(s, "eth1")
    assert f[Ether].dst == HOST_B and f[IPv6].dst == "2001:db8:5::9"
    routes = {(r.prefix, r.gateway, r.device) for r in s.routes6()}
    assert ("2001:db8:5::/48", "fe80::ff:fe00:bb", "eth1") in routes
    assert ("2001:db8::/64", None, "eth0") in routes
    with pytest.raises(StackError):
        s.add_route6("2001:db8:6::/48", "fe80::1")           # link-local gateway, no device
    with pytest.raises(StackError):
        s.add_route6("2001:db8:6::1/48", GB)                 # host bits set
    with pytest.raises(StackError):
        s.add_route6("10.0.0.0/8", device="eth0")
    s.del_route6("2001:db8:5::/48", "fe80::ff:fe00:bb", "eth1")
    assert all(r.prefix != "2001:db8:5::/48" for r in s.routes6())


# -- ping6 -----------------------------------------------------------------------------------

def test_ping6_sends_an_echo_and_the_reply_becomes_an_event():
    s = router()
    s.ping6(IPv6Address(GA), 7, 1, b"abc", 2.0)
    (f,) = sent(s, "eth0")
    req = f[ICMPv6EchoRequest]
    assert f[IPv6].src == G0 and (req.id, req.seq, req.data) == (7, 1, b"abc")
    s.receive("eth0", from_a(IPv6(src=GA, dst=G0, hlim=61) / ICMPv6EchoReply(id=7, seq=1, data=b"abc")),
              2.1)
    assert s.take_events() == [EchoReply(IPv6Address(GA), 7, 1, 61, 3)]
    s.ping6(IPv6Address(LLA), 8, 1, b"", 2.2, device="eth0")
    (f,) = sent(s, "eth0")
    assert f[IPv6].src == LL0 and f[IPv6].dst == LLA
    with pytest.raises(StackError):
        s.ping6(IPv6Address(LLA), 8, 2, b"", 2.2)            # link-local needs its device


def test_ping6_to_our_own_address_and_to_loopback_is_answered_inside():
    s = router()
    for dst in (G1, "::1"):
        s.ping6(IPv6Address(dst), 9, 1, b"me", 2.0)
        (ev,) = s.take_events()
        assert isinstance(ev, EchoReply) and ev.src == IPv6Address(dst)
    assert sent(s) == []


# -- UDP -------------------------------------------------------------------------------------

def test_udp6_receive_reply_and_port_unreachable():
    s = router()
    sid = s.udp_open(6)
    assert s.udp_bind(sid, None, 5353) == (None, 5353)
    s.receive("eth0", from_a(IPv6(src=GA, dst=G0) / UDP(sport=999, dport=5353) / Raw(b"q")), 2.0)
    assert sid in s.udp_readable()
    (d,) = s.udp_recv(sid, 10)
    assert (d.src, d.src_port, d.dst, d.payload) == (IPv6Address(GA), 999, IPv6Address(G0), b"q")
    s.udp_sendto(sid, b"answer", IPv6Address(GA), 999, 2.1)
    (f,) = sent(s, "eth0")
    assert f[IPv6].src == G0 and f[UDP].dport == 999 and bytes(f[UDP].payload) == b"answer"
    assert IPv6(bytes(f[IPv6]))[UDP].chksum == UDP(bytes(f[UDP])).chksum
    s.receive("eth0", from_a(IPv6(src=GA, dst=G0) / UDP(sport=999, dport=5354) / Raw(b"q")), 2.2)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6DestUnreach].code == 4 and f[IPv6].src == G0
    # The IPv4 and IPv6 tables share no ids.
    assert not s.udp4.owns(sid) or s.udp6.owns(sid)
    v4 = s.udp_open()
    assert s.udp4.get(v4) and not s.udp6.owns(v4)
    with pytest.raises(StackError):
        s.udp_bind(v4, IPv6Address(G0), 1)


def test_udp6_large_datagram_leaves_in_fragments_that_scapy_reassembles():
    s = router()
    sid = s.udp_open(6)
    s.udp_bind(sid, None, 4000)
    data = random.Random(1).randbytes(4000)
    s.udp_sendto(sid, data, IPv6Address(GA), 4001, 2.0)
    frames = sent(s, "eth0")
    assert len(frames) == 3 and all(len(f[IPv6]) <= 1500 for f in frames)
    assert len({f[IPv6ExtHdrFragment].id for f in frames}) == 1
    parts = sorted((f[IPv6ExtHdrFragment].offset * 8, bytes(f[IPv6ExtHdrFragment].payload))
                   for f in frames)
    assert [m for m in (f[IPv6ExtHdrFragment].m for f in frames)] == [1, 1, 0]
    whole = b"".join(p for _, p in parts)
    assert parts[1][0] == len(parts[0][1]) and UDP(whole).len == 8 + len(data)
    assert whole[8:] == data


def test_fragments_from_a_peer_are_reassembled_and_overlaps_drop_the_datagram():
    s = router()
    sid = s.udp_open(6)
    s.udp_bind(sid, None, 4000)
    data = random.Random(2).randbytes(3000)
    pkt = IPv6(src=GA, dst=G0) / IPv6ExtHdrFragment(id=77) / UDP(sport=5, dport=4000) / Raw(data)
    frags = fragment6(pkt, 1280)
    for f in reversed(frags):                       # out of order
        s.receive("eth0", from_a(f), 2.0)
    (d,) = s.udp_recv(sid, 10)
    assert d.payload == data
    # RFC 5722: overlapping fragments discard the whole datagram.
    a = IPv6(src=GA, dst=G0) / IPv6ExtHdrFragment(id=78, offset=0, m=1) / Raw(bytes(UDP(sport=5, dport=4000, len=40))[:8] + b"a" * 24)
    b = IPv6(src=GA, dst=G0) / IPv6ExtHdrFragment(id=78, offset=2, m=0) / Raw(b"b" * 16)
    s.receive("eth0", from_a(a), 2.1)
    s.receive("eth0", from_a(b), 2.1)
    assert s.udp_recv(sid, 10) == []
    assert s.counters()["reassembly6"]["dropped_overlap"] == 1


def test_reassembly_timeout_sends_time_exceeded_code_1_when_the_first_fragment_came():
    s = router()
    pkt = IPv6(src=GA, dst=G0) / IPv6ExtHdrFragment(id=9) / UDP(sport=5, dport=4000) / Raw(b"z" * 2000)
    first = fragment6(pkt, 1280)[0]
    s.receive("eth0", from_a(first), 2.0)
    s.poll(2.0 + StackConfig().reassembly_timeout + 0.1)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6TimeExceeded].code == 1


def test_packet_too_big_lowers_the_path_mtu_and_reaches_the_udp_socket():
    s = router()
    sid = s.udp_open(6)
    s.udp_bind(sid, None, 4000)
    s.udp_sendto(sid, b"x" * 1400, IPv6Address(GB), 9, 2.0)
    (f,) = sent(s, "eth1")
    ptb = IPv6(src=GB, dst=G1) / ICMPv6PacketTooBig(mtu=1280) / bytes(f[IPv6])[:1000]
    s.receive("eth1", from_b(ptb), 2.1)
    (ev,) = s.take_events()
    assert isinstance(ev, IcmpErrorForSocket) and ev.sid == sid and ev.mtu == 1280
    s.udp_sendto(sid, b"x" * 1400, IPv6Address(GB), 9, 2.2)
    frames = sent(s, "eth1")
    assert len(frames) == 2 and all(len(f[IPv6]) <= 1280 for f in frames)
    # RFC 8201 §4: never below 1280 (RFC 8021: no atomic fragments for smaller MTUs).
    s.receive("eth1", from_b(IPv6(src=GB, dst=G1) / ICMPv6PacketTooBig(mtu=600)
                             / bytes(frames[0][IPv6])[:600]), 2.3)
    assert s.ip6.path_mtu(int(IPv6Address(GB)), 1500) == 1280


# -- TCP over IPv6 -----------------------------------------------------------------------------

def _pair():
    a, b = (Stack(StackConfig(strict=True, random_seed=n, router_solicitations=0)) for n in (1, 2))
    a.add_device("eth0", mac=b"\x02\0\0\0\0\x0a")
    b.add_device("eth0", mac=b"\x02\0\0\0\0\x0b")
    a.add_address6("eth0", "2001:db8::a/64")
    b.add_address6("eth0", "2001:db8::b/64")
    return a, b


def _run(a, b, now: float, until: float, pump=None) -> float:
    while now < until:
        moved = True
        while moved:
            moved = False
            for x, y in ((a, b), (b, a)):
                x.drain(now)
                for frames in x.take_transmit().values():
                    for f in frames:
                        moved = True
                        y.receive("eth0", f, now)
            if pump is not None:
                pump(now)
        ds = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        now = min(max(min(ds) if ds else until, now + 0.001), until)
        a.poll(now)
        b.poll(now)
    return now


def test_tcp_over_ipv6_between_two_stacks_with_an_mss_for_a_40_byte_header():
    a, b = _pair()
    now = _run(a, b, 0.0, 2.0)                      # DAD on both sides
    lid = b.tcp6.listen(None, 80)
    cid = a.tcp6.connect(IPv6Address("2001:db8::b"), 80, now)
    now = _run(a, b, now, 3.0)
    assert (cid, TcpEvent.CONNECTED) in a.tcp6.take_events()
    bcid = b.tcp6.accept(lid)
    assert bcid is not None and b.tcp6.info(bcid)["remote"] == "2001:db8::a"
    assert a.tcp6.conns[cid].send_mss <= 1500 - 40 - 20
    assert a.tcp6.owns(cid) and not a.tcp4.owns(cid)
    data = random.Random(3).randbytes(200_000)
    sent_n, got = 0, bytearray()

    def pump(t):
        nonlocal sent_n
        if sent_n < len(data):
            sent_n += a.tcp6.send(cid, data[sent_n:sent_n + 65536], t)
        got.extend(b.tcp6.recv(bcid, None, t))
    _run(a, b, now, 30.0, pump)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_tcp6_syn_to_a_closed_port_is_refused_and_loopback_connects():
    a, b = _pair()
    now = _run(a, b, 0.0, 2.0)
    cid = a.tcp6.connect(IPv6Address("2001:db8::b"), 81, now)
    _run(a, b, now, 3.0)
    assert (cid, TcpEvent.RESET) in a.tcp6.take_events()
    lid = a.tcp6.listen(IPv6Address("::1"), 7)
    c2 = a.tcp6.connect(IPv6Address("::1"), 7, now)
    _run(a, b, now, 4.0)
    assert (c2, TcpEvent.CONNECTED) in a.tcp6.take_events() and a.tcp6.accept(lid) is not None


# -- restart ---------------------------------------------------------------------------------

def test_snapshot_keeps_routes6_udp6_sockets_and_their_queues():
    s = router()
    s.add_route6("::/0", "fe80::ff:fe00:bb", "eth1")
    sid = s.udp_open(6)
    s.udp_bind(sid, None, 53)
    s.receive("eth0", from_a(IPv6(src=GA, dst=G0) / UDP(sport=9, dport=53) / Raw(b"held")), 2.0)
    snap = msgpack.unpackb(msgpack.packb(s.snapshot(now=2.0)), raw=False)
    r = Stack.restore(snap, StackConfig(strict=True), now=2.0)
    assert ("::/0", "fe80::ff:fe00:bb", "eth1") in {(x.prefix, x.gateway, x.device) for x in r.routes6()}
    (d,) = r.udp_recv(sid, 10)
    assert d.payload == b"held"
    assert r.udp_open(6) != sid and r.udp6.owns(sid)
    assert "::1" not in {a.address.split("/")[0] for a in r.addresses6()}


# -- fuzzing -----------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo,  # noqa: E402
                                ICMPv6NDOptSrcLLAddr)

FUZZ_LIMITS = dict(neighbor_table_size=8, neighbor_queue_packets=4, tx_queue_frames=64,
                   max_events=32, max_ipv6_addresses=24, max_routes=32,
                   reassembly_max_datagrams=4, reassembly_bytes_total=16384)
FUZZ_ADDRS = [G0, GA, G1, GB, LL0, LLA, LLB, "::", "ff02::1", "ff02::2", "2001:db8:7::7",
              "::1", "fe80::1"]


@st.composite
def routed_frames(draw):
    src, dst = draw(st.sampled_from(FUZZ_ADDRS)), draw(st.sampled_from(FUZZ_ADDRS))
    hlim = draw(st.sampled_from([255, 64, 2, 1]))
    kind = draw(st.integers(0, 5))
    if kind == 0:       # an RA with a random prefix: SLAAC must stay bounded
        net = draw(st.integers(0, 0xFFFF))
        body = ICMPv6ND_RA(routerlifetime=draw(st.sampled_from([0, 30, 1800]))) \
            / ICMPv6NDOptSrcLLAddr(lladdr=HOST_A) \
            / ICMPv6NDOptPrefixInfo(prefix=f"2001:db8:{net:x}::", prefixlen=64,
                                    validlifetime=draw(st.sampled_from([0, 10, 7200, 0xFFFFFFFF])),
                                    preferredlifetime=draw(st.sampled_from([0, 5, 3600])))
    elif kind == 1:
        body = ICMPv6ND_RS()
    elif kind == 2:
        body = UDP(sport=draw(st.integers(1, 3)), dport=draw(st.sampled_from([53, 54]))) \
            / Raw(draw(st.binary(max_size=40)))
    elif kind == 3:
        body = IPv6ExtHdrFragment(id=draw(st.integers(0, 3)), m=draw(st.integers(0, 1)),
                                  offset=draw(st.integers(0, 200))) / Raw(b"f" * 8 * draw(st.integers(0, 4)))
    elif kind == 4:
        quote = IPv6(src=draw(st.sampled_from([G0, G1, GA])), dst=GB) / UDP(sport=53, dport=9)
        body = (ICMPv6PacketTooBig(mtu=draw(st.integers(0, 2000))) if draw(st.booleans())
                else ICMPv6DestUnreach(code=draw(st.integers(0, 6)))) / bytes(quote)[:draw(st.integers(0, 48))]
    else:
        body = ICMPv6EchoRequest(data=draw(st.binary(max_size=32)))
    raw = bytearray(frame(IPv6(src=src, dst=dst, hlim=hlim) / body,
                          dst_mac=draw(st.sampled_from([MAC0, "33:33:00:00:00:01",
                                                        "33:33:00:00:00:02"]))))
    for pos, val in draw(st.lists(st.tuples(st.integers(14, 120), st.integers(0, 255)), max_size=3)):
        if pos < len(raw):
            raw[pos] = val
    return bytes(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(routed_frames(), st.floats(0, 40)), max_size=25))
def test_random_frames_to_a_routing_ipv6_stack_never_raise_and_tables_stay_bounded(frames):
    s = router(**FUZZ_LIMITS)
    sid = s.udp_open(6)
    s.udp_bind(sid, None, 53)
    now = 2.0
    for f, dt in frames:
        now += dt
        s.receive("eth0", f, now)       # strict: an internal error raises here
        s.poll(now)
        assert len(s.addresses6()) <= FUZZ_LIMITS["max_ipv6_addresses"]
        assert len(s.ip6.routes) <= FUZZ_LIMITS["max_routes"]
        assert len(s.neighbors6()) <= 2 * FUZZ_LIMITS["neighbor_table_size"]
        assert len(s.ip6.reassembly) <= FUZZ_LIMITS["reassembly_max_datagrams"]
        assert len(s.devs["eth0"].tx) <= FUZZ_LIMITS["tx_queue_frames"]
        assert len(s.take_events()) <= FUZZ_LIMITS["max_events"]
        s.udp_recv(sid, 100)
    s.poll(now + 100_000.0)
    assert all(a.state != "DEPRECATED" or a.address.startswith("2001:db8:") for a in s.addresses6())
