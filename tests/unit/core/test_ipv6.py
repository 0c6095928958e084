"""IPv6 on Ethernet devices: link-local addresses with DAD (RFC 4862 §5.4), Neighbor Discovery
on the generic neighbor table (RFC 4861 §7), ICMPv6 echo and Parameter Problem (RFC 4443),
snapshot and restore. Peer frames are built, and ours checked, by scapy."""

from __future__ import annotations

from ipaddress import IPv6Address

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (HBHOptUnknown, ICMPv6DestUnreach, IPerror6, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, ICMPv6ParamProblem, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, in6_chksum)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from components.netstack.core import DuplicateAddress, Stack, StackConfig, StackError

from .util import HOST_A, MAC0, mac, sent, sent_raw

LL0 = "fe80::ff:fe00:1"            # eth0's link-local: modified EUI-64 of 02:00:00:00:00:01
SN0 = "ff02::1:ff00:1"             # its solicited-node group
SN0_MAC = "33:33:ff:00:00:01"
LLA = "fe80::ff:fe00:aa"           # HOST_A's link-local
SNA = "ff02::1:ff00:aa"
HOST_A2 = "02:00:00:00:00:ab"      # HOST_A's new NIC
G0, GA = "2001:db8::1", "2001:db8::2"


def v6_stack(now: float = 0.0, **cfg) -> Stack:
    cfg.setdefault("strict", True)
    cfg.setdefault("random_seed", 1)
    cfg.setdefault("ipv6", True)
    cfg.setdefault("router_solicitations", 0)   # test_router_discovery.py covers them
    s = Stack(StackConfig(**cfg))
    s.add_device("eth0", mac=mac(MAC0), now=now)
    return s


def ready_stack() -> Stack:
    """eth0 with its link-local address through DAD."""
    s = v6_stack()
    sent(s)
    s.poll(1.0)
    assert states(s) == {LL0: "PREFERRED"}
    return s


def states(s: Stack) -> dict[str, str]:
    return {a.address.split("/")[0]: a.state for a in s.addresses6()}


def neighbor_state(s: Stack, address: str) -> tuple[str, str | None] | None:
    return next(((n.state, n.mac) for n in s.neighbors6() if n.address == address), None)


def frame(pkt, src_mac: str = HOST_A, dst_mac: str = MAC0) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / pkt)


def ns(target: str, src: str = LLA, dst: str = SN0, lladdr: str | None = HOST_A,
       hlim: int = 255, dst_mac: str = SN0_MAC, src_mac: str = HOST_A) -> bytes:
    p = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if lladdr is not None:
        p = p / ICMPv6NDOptSrcLLAddr(lladdr=lladdr)
    return frame(p, src_mac, dst_mac)


def na(target: str, lladdr: str | None = HOST_A, src: str = LLA, dst: str = LL0,
       S: int = 1, O: int = 1, hlim: int = 255, src_mac: str = HOST_A,
       dst_mac: str = MAC0) -> bytes:
    p = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NA(tgt=target, R=0, S=S, O=O)
    if lladdr is not None:
        p = p / ICMPv6NDOptDstLLAddr(lladdr=lladdr)
    return frame(p, src_mac, dst_mac)


def echo(dst: str = LL0, src: str = LLA, ident: int = 7, seq: int = 1, data: bytes = b"ping",
         dst_mac: str = MAC0) -> bytes:
    return frame(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq, data=data),
                 dst_mac=dst_mac)


def checksum_ok(f) -> bool:
    ip = f[IPv6]
    return in6_chksum(58, ip, bytes(ip.payload)) == 0


# -- Duplicate Address Detection ---------------------------------------------------------------

def test_dad_probe_is_an_ns_from_unspecified_to_the_solicited_node_group():
    s = v6_stack()
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == SN0_MAC and f[Ether].src == MAC0
    assert f[IPv6].src == "::" and f[IPv6].dst == SN0 and f[IPv6].hlim == 255
    assert f[ICMPv6ND_NS].tgt == LL0 and f[ICMPv6ND_NS].code == 0
    assert not f.haslayer(ICMPv6NDOptSrcLLAddr)     # RFC 4861 §7.1.1: none from ::
    assert checksum_ok(f)
    assert states(s) == {LL0: "TENTATIVE"}
    assert s.next_deadline() == 1.0                 # RetransTimer


def test_tentative_address_answers_nothing_then_becomes_preferred_after_one_second():
    s = v6_stack()
    sent(s)
    s.receive("eth0", ns(LL0), 0.5)
    s.receive("eth0", echo(), 0.5)
    assert sent(s) == []
    assert s.counters()["ndp"]["rx_ns_for_tentative"] == 1
    assert s.counters()["icmpv6"]["rx_drop_tentative"] == 1
    s.poll(0.99)
    assert states(s) == {LL0: "TENTATIVE"}
    s.poll(1.0)
    assert states(s) == {LL0: "PREFERRED"} and sent(s) == []
    assert s.next_deadline() is None
    s.receive("eth0", ns(LL0), 1.5)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6ND_NA].tgt == LL0


def test_conflicting_na_during_dad_marks_duplicate_and_it_is_never_answered():
    s = v6_stack()
    sent(s)
    s.receive("eth0", na(LL0, src=LL0, dst="ff02::1", S=0, dst_mac="33:33:00:00:00:01"), 0.3)
    assert s.take_events() == [DuplicateAddress("eth0", IPv6Address(LL0))]
    assert states(s) == {LL0: "DUPLICATE"}
    s.poll(5.0)
    assert states(s) == {LL0: "DUPLICATE"}
    for t, f in ((5.1, ns(LL0)), (5.2, ns(LL0, src="::", lladdr=None)), (5.3, echo())):
        s.receive("eth0", f, t)
    assert sent(s) == []
    assert s.counters()["ndp"]["dad_failed"] == 1


def test_another_nodes_dad_probe_for_our_tentative_address_marks_it_duplicate():
    s = v6_stack()
    sent(s)
    s.receive("eth0", ns(LL0, src="::", lladdr=None), 0.2)
    assert states(s) == {LL0: "DUPLICATE"}
    assert [type(e) for e in s.take_events()] == [DuplicateAddress]


def test_link_down_stops_dad_and_link_up_probes_again():
    s = v6_stack()
    sent(s)
    s.set_link("eth0", False, 0.5)
    s.poll(2.0)
    assert states(s) == {LL0: "TENTATIVE"} and s.next_deadline() is None
    s.set_link("eth0", True, 3.0)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6ND_NS].tgt == LL0 and f[IPv6].src == "::"
    s.poll(4.0)
    assert states(s) == {LL0: "PREFERRED"}


def test_global_address_is_probed_listed_and_removed():
    s = ready_stack()
    s.add_address6("eth0", G0 + "/64", 2.0)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6ND_NS].tgt == G0 and f[IPv6].dst == "ff02::1:ff00:1" and f[IPv6].src == "::"
    assert states(s) == {LL0: "PREFERRED", G0: "TENTATIVE"}
    s.poll(3.0)
    assert states(s)[G0] == "PREFERRED"
    with pytest.raises(StackError):
        s.add_address6("eth0", G0 + "/64", 3.0)
    for bad in ("ff02::5/64", "::/0", "::1/128", "10.0.0.1/24"):
        with pytest.raises(StackError):
            s.add_address6("eth0", bad, 3.0)
    s.del_address6("eth0", G0 + "/64")
    assert states(s) == {LL0: "PREFERRED"}
    with pytest.raises(StackError):
        s.del_address6("eth0", G0 + "/64")


def test_ipv6_is_on_by_default():
    s = Stack(StackConfig(strict=True, random_seed=1, router_solicitations=0))
    s.add_device("eth0", mac=mac(MAC0))
    assert [a.state for a in s.addresses6()] == ["TENTATIVE"] and len(sent(s)) == 1


def test_with_ipv6_off_ipv4_stacks_see_no_ipv6_frames():
    s = Stack(StackConfig(strict=True, random_seed=1, ipv6=False))
    s.add_device("eth0", mac=mac(MAC0))
    assert sent(s) == [] and s.addresses6() == [] and s.next_deadline() is None
    s.receive("eth0", echo(), 0.0)
    assert s.counters()["dev:eth0"]["rx_drop_ipv6_unsupported"] == 1
    with pytest.raises(StackError):
        s.add_address6("eth0", G0 + "/64")


# -- Neighbor Discovery --------------------------------------------------------------------------

def test_ns_for_our_address_gets_a_solicited_na_and_teaches_us_the_sender():
    s = ready_stack()
    s.receive("eth0", ns(LL0), 2.0)
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == HOST_A and f[Ether].src == MAC0
    assert f[IPv6].src == LL0 and f[IPv6].dst == LLA and f[IPv6].hlim == 255
    a = f[ICMPv6ND_NA]
    # R: the device forwards (the default), so we are a router on it (RFC 4861 §4.4).
    assert (a.tgt, a.R, a.S, a.O, a.code) == (LL0, 1, 1, 1, 0)
    assert f[ICMPv6NDOptDstLLAddr].lladdr == MAC0
    s.set_forwarding("eth0", False)
    s.receive("eth0", ns(LL0), 3.0)
    (f,) = sent(s, "eth0")
    assert f[ICMPv6ND_NA].R == 0
    assert checksum_ok(f)
    assert neighbor_state(s, LLA) == ("STALE", HOST_A)


def test_dad_probe_for_our_preferred_address_is_answered_to_all_nodes():
    s = ready_stack()
    s.receive("eth0", ns(LL0, src="::", lladdr=None), 2.0)
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == "33:33:00:00:00:01" and f[IPv6].dst == "ff02::1"
    assert f[ICMPv6ND_NA].S == 0 and f[ICMPv6ND_NA].O == 1 and checksum_ok(f)
    assert s.neighbors6() == []


@pytest.mark.parametrize("hlim", [254, 64, 0])
def test_nd_messages_without_hop_limit_255_are_dropped(hlim):
    s = ready_stack()
    s.receive("eth0", ns(LL0, hlim=hlim), 2.0)
    s.receive("eth0", na(LL0, hlim=hlim), 2.0)
    assert sent(s) == [] and s.neighbors6() == []
    assert s.counters()["ndp"]["rx_drop_hop_limit"] == 2


def test_ns_for_someone_elses_address_is_not_answered():
    s = ready_stack()
    s.receive("eth0", ns("fe80::99", dst="ff02::1:ff00:99", dst_mac="33:33:ff:00:00:99"), 2.0)
    assert sent(s) == [] and s.neighbors6() == []
    # Not our group at all: dropped before ND looks at it.
    assert s.counters()["ipv6"]["rx_drop_multicast_not_joined"] == 1


def test_echo_reply_to_an_unknown_neighbor_waits_for_resolution():
    s = ready_stack()
    s.receive("eth0", echo(data=b"hello"), 2.0)
    (sol,) = sent(s, "eth0")
    assert sol[Ether].dst == "33:33:ff:00:00:aa" and sol[IPv6].dst == SNA
    assert sol[IPv6].src == LL0 and sol[IPv6].hlim == 255
    assert sol[ICMPv6ND_NS].tgt == LLA and sol[ICMPv6NDOptSrcLLAddr].lladdr == MAC0
    assert checksum_ok(sol)
    assert neighbor_state(s, LLA) == ("INCOMPLETE", None)
    s.receive("eth0", na(LLA, src=LLA, dst=LL0, S=1), 2.1)
    (reply,) = sent_raw(s, "eth0")
    assert reply == bytes(Ether(dst=HOST_A, src=MAC0) / IPv6(src=LL0, dst=LLA, hlim=64) /
                          ICMPv6EchoReply(id=7, seq=1, data=b"hello"))
    assert neighbor_state(s, LLA) == ("REACHABLE", HOST_A)


def test_unresolved_neighbor_fails_after_three_solicitations():
    s = ready_stack()
    s.receive("eth0", echo(), 2.0)
    for t in (3.0, 4.0, 5.0):
        s.poll(t)
    assert len(sent(s, "eth0")) == 3
    (ev,) = s.take_events()
    assert ev.address == IPv6Address(LLA) and ev.dropped == 1
    assert neighbor_state(s, LLA) == ("FAILED", None)


def test_echo_reply_to_a_known_neighbor_is_byte_exact():
    s = ready_stack()
    s.receive("eth0", ns(LL0), 2.0)
    sent(s)
    payload = bytes(range(256)) * 4
    s.receive("eth0", echo(ident=0xBEEF, seq=0xFFFF, data=payload), 2.1)
    (reply,) = sent_raw(s, "eth0")
    assert reply == bytes(Ether(dst=HOST_A, src=MAC0) / IPv6(src=LL0, dst=LLA, hlim=64) /
                          ICMPv6EchoReply(id=0xBEEF, seq=0xFFFF, data=payload))
    assert checksum_ok(Ether(reply))
    assert s.counters()["icmpv6"]["tx_echo_reply"] == 1


def test_echo_to_all_nodes_is_answered_from_our_link_local_address():
    s = ready_stack()
    s.receive("eth0", ns(LL0), 2.0)
    sent(s)
    s.receive("eth0", echo(dst="ff02::1", dst_mac="33:33:00:00:00:01"), 2.1)
    (f,) = sent(s, "eth0")
    assert f[IPv6].src == LL0 and f[IPv6].dst == LLA and f[ICMPv6EchoReply].id == 7
    assert checksum_ok(f)


def test_na_updates_follow_rfc4861_7_2_5():
    s = ready_stack()
    s.receive("eth0", echo(), 2.0)
    sent(s)
    s.receive("eth0", na(LLA, S=1), 2.1)
    sent(s)
    assert neighbor_state(s, LLA) == ("REACHABLE", HOST_A)
    # O clear and another address: keep ours, but REACHABLE becomes STALE.
    s.receive("eth0", na(LLA, lladdr=HOST_A2, S=0, O=0), 2.2)
    assert neighbor_state(s, LLA) == ("STALE", HOST_A)
    # Solicited, no target address option: confirms the one we have.
    s.receive("eth0", na(LLA, lladdr=None, S=1, O=0), 2.3)
    assert neighbor_state(s, LLA) == ("REACHABLE", HOST_A)
    # Unsolicited with O set and a new address: taken, STALE.
    s.receive("eth0", na(LLA, lladdr=HOST_A2, S=0, O=1, dst="ff02::1",
                         dst_mac="33:33:00:00:00:01"), 2.4)
    assert neighbor_state(s, LLA) == ("STALE", HOST_A2)
    # An NA for a neighbor we have no entry for creates none.
    s.receive("eth0", na("fe80::77", src="fe80::77", S=0, dst="ff02::1",
                         dst_mac="33:33:00:00:00:01"), 2.5)
    assert neighbor_state(s, "fe80::77") is None
    assert s.counters()["ndp"]["rx_na_no_entry"] == 1


def test_global_echo_reply_is_routed_on_link_and_resolved_from_a_global_source():
    s = ready_stack()
    s.add_address6("eth0", G0 + "/64", 2.0)
    s.poll(3.0)
    sent(s)
    s.receive("eth0", echo(dst=G0, src=GA), 3.1)
    (sol,) = sent(s, "eth0")
    assert sol[ICMPv6ND_NS].tgt == GA and sol[IPv6].src == G0
    s.receive("eth0", na(GA, src=GA, dst=G0), 3.2)
    (f,) = sent(s, "eth0")
    assert f[IPv6].src == G0 and f[IPv6].dst == GA and f[ICMPv6EchoReply].seq == 1
    s.receive("eth0", echo(dst=G0, src="2001:db9::5"), 3.3)     # no route back
    assert sent(s) == [] and s.counters()["icmpv6"]["tx_echo_reply_failed"] == 1


# -- Parameter Problem and drops -----------------------------------------------------------------

def known_a() -> Stack:
    s = ready_stack()
    s.receive("eth0", ns(LL0), 2.0)
    sent(s)
    return s


def test_unrecognised_option_with_action_10_gets_parameter_problem_code_2():
    s = known_a()
    pkt = IPv6(src=LLA, dst=LL0) / IPv6ExtHdrDestOpt(
        options=[HBHOptUnknown(otype=0x87, optdata=b"\0\0\0\0")]) / ICMPv6EchoRequest(id=1)
    s.receive("eth0", frame(pkt), 2.1)
    (f,) = sent(s, "eth0")
    pp = f[ICMPv6ParamProblem]
    assert (pp.code, pp.ptr) == (2, 42) and f[IPv6].src == LL0 and f[IPv6].dst == LLA
    assert bytes(pp.payload) == bytes(pkt) and checksum_ok(f)


def test_parameter_problem_to_multicast_only_for_action_10():
    s = known_a()
    for otype, expected in ((0x87, 1), (0xC7, 0), (0x47, 0)):
        pkt = IPv6(src=LLA, dst="ff02::1") / IPv6ExtHdrDestOpt(
            options=[HBHOptUnknown(otype=otype, optdata=b"\0\0\0\0")]) / ICMPv6EchoRequest()
        s.receive("eth0", frame(pkt, dst_mac="33:33:00:00:00:01"), 2.1)
        assert len(sent(s, "eth0")) == expected, hex(otype)
    c = s.counters()
    assert c["ipv6"]["rx_drop_extension_problem"] == 3
    assert c["icmpv6"]["error_suppressed_multicast"] == 1


def test_unknown_next_header_gets_parameter_problem_code_1_pointing_at_it():
    s = known_a()
    s.receive("eth0", frame(IPv6(src=LLA, dst=LL0, nh=253) / Raw(b"x" * 8)), 2.1)
    (f,) = sent(s, "eth0")
    assert (f[ICMPv6ParamProblem].code, f[ICMPv6ParamProblem].ptr) == (1, 6)


def test_bad_checksums_foreign_link_local_and_martians_are_counted_drops():
    s = known_a()
    frag = IPv6(src=LLA, dst=LL0) / IPv6ExtHdrFragment(m=1, id=5) / Raw(b"x" * 16)
    bad = Ether(echo())
    bad[ICMPv6EchoRequest].cksum = 0x1234
    for f in (frame(frag), bytes(bad), echo(dst="fe80::5"), echo(dst="2001:db8::77"),
              echo(src="ff02::1"), frame(IPv6(src=LLA, dst=LL0, nh=59))):
        s.receive("eth0", f, 2.1)
    # A link-local source is never forwarded: RFC 4443 §3.1 code 2 (beyond its scope).
    (f,) = sent(s)
    assert f[ICMPv6DestUnreach].code == 2 and f[IPerror6].dst == "2001:db8::77"
    c = s.counters()
    assert c["reassembly6"]["fragments"] == 1 and c["icmpv6"]["rx_bad"] == 1
    assert c["ipv6"]["forward_drop_link_local"] == 2 and c["ipv6"]["rx_drop_martian"] == 1
    assert c["ipv6"]["rx_no_next_header"] == 1


# -- snapshot ----------------------------------------------------------------------------------

def test_snapshot_restores_addresses_with_their_state_and_neighbors_stale():
    s = known_a()
    s.add_address6("eth0", G0 + "/64", 2.5)
    s.receive("eth0", echo(), 2.6)      # LLA is STALE: the reply goes straight out
    sent(s)
    snap = msgpack.unpackb(msgpack.packb(s.snapshot(), use_bin_type=True), raw=False)
    assert {"addresses", "neighbors", "routes", "devices"} <= snap.keys()
    r = Stack.restore(snap, StackConfig(strict=True, ipv6=True), now=100.0)
    assert states(r) == {LL0: "PREFERRED", G0: "TENTATIVE"}
    assert [(n.address, n.mac, n.state) for n in r.neighbors6()] == [(LLA, HOST_A, "STALE")]
    (probe,) = sent(r, "eth0")          # the tentative address is probed again
    assert probe[ICMPv6ND_NS].tgt == G0 and probe[IPv6].src == "::"
    assert r.next_deadline() == 101.0
    r.receive("eth0", echo(seq=9), 100.5)
    (f,) = sent(r, "eth0")
    assert f[ICMPv6EchoReply].seq == 9 and f[Ether].dst == HOST_A
    r.poll(101.0)
    assert states(r)[G0] == "PREFERRED"
    assert r.counters()["icmpv6"]["tx_echo_reply"] == 2     # counters continue


def test_snapshot_from_before_ipv6_gives_devices_their_link_local_address():
    s = known_a()
    snap = s.snapshot()
    del snap["ipv6_addresses"], snap["neighbors6"]
    r = Stack.restore(snap, StackConfig(strict=True, ipv6=True), now=10.0)
    assert states(r) == {LL0: "TENTATIVE"}
    (probe,) = sent(r, "eth0")
    assert probe[ICMPv6ND_NS].tgt == LL0


def test_device_removal_forgets_its_addresses_neighbors_and_timers():
    s = known_a()
    s.add_address6("eth0", G0 + "/64", 2.5)
    s.remove_device("eth0", 2.6)
    assert s.addresses6() == [] and s.neighbors6() == [] and s.next_deadline() is None
    s.poll(10.0)
    assert sent(s) == []


# -- fuzz --------------------------------------------------------------------------------------

LIMITS = dict(neighbor_table_size=8, neighbor_queue_packets=4, tx_queue_frames=64,
              max_events=32, max_ipv6_addresses=8)
ADDRS = [LL0, LLA, "::", "ff02::1", SN0, SNA, G0, GA, "::1", "fe80::5", "ff02::2",
         "2001:db8::77", "::ffff:10.0.0.1"]
MACS = [MAC0, SN0_MAC, "33:33:00:00:00:01", "33:33:ff:00:00:aa", "ff:ff:ff:ff:ff:ff"]


@st.composite
def v6_frames(draw):
    src, dst = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
    hlim = draw(st.sampled_from([255, 254, 64, 1, 0]))
    target = draw(st.sampled_from(ADDRS))
    lladdr = draw(st.sampled_from([HOST_A, HOST_A2, MAC0]))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        body = ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=lladdr)
    elif kind == 1:
        body = ICMPv6ND_NA(tgt=target, R=draw(st.integers(0, 1)), S=draw(st.integers(0, 1)),
                           O=draw(st.integers(0, 1))) / ICMPv6NDOptDstLLAddr(lladdr=lladdr)
    elif kind == 2:
        body = ICMPv6EchoRequest(id=draw(st.integers(0, 0xFFFF)),
                                 data=draw(st.binary(max_size=64)))
    elif kind == 3:
        body = IPv6ExtHdrDestOpt(options=[HBHOptUnknown(
            otype=draw(st.integers(0, 255)), optdata=draw(st.binary(max_size=6)))]) / \
            ICMPv6EchoRequest()
    elif kind == 4:
        body = IPv6ExtHdrFragment(m=draw(st.integers(0, 1)), offset=draw(st.integers(0, 3))) \
            / ICMPv6EchoRequest()
    else:
        body = Raw(draw(st.binary(max_size=80)))
    pkt = IPv6(src=src, dst=dst, hlim=hlim, nh=draw(st.sampled_from([58, 58, 0, 60, 44, 17, 6, 253]))
               if kind == 5 else None) / body
    raw = bytearray(frame(pkt, dst_mac=draw(st.sampled_from(MACS))))
    for pos, val in draw(st.lists(st.tuples(st.integers(14, 200), st.integers(0, 255)), max_size=4)):
        if pos < len(raw):
            raw[pos] = val
    cut = draw(st.none() | st.integers(14, 200))
    return bytes(raw if cut is None else raw[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(v6_frames(), st.binary(max_size=120).map(
    lambda b: bytes(Ether(src=HOST_A, dst=MAC0, type=0x86DD)) + b)), st.floats(0, 5)),
    max_size=20))
def test_random_ipv6_frames_never_raise_and_tables_stay_bounded(frames):
    s = v6_stack(**LIMITS)
    now = 0.0
    for f, dt in frames:
        now += dt
        s.receive("eth0", f, now)       # strict: an internal error raises here
        s.poll(now)
        assert len(s.neighbors6()) <= LIMITS["neighbor_table_size"]
        assert len(s.addresses6()) == 1
        assert len(s.devs["eth0"].tx) <= LIMITS["tx_queue_frames"]
        assert len(s.take_events()) <= LIMITS["max_events"]
    s.poll(now + 100.0)
    sent(s)


def test_ndp_answers_through_its_context_alone():
    from collections import Counter

    from components.netstack.core.counters import CounterSet
    from components.netstack.core.device import ETHERNET, Device
    from components.netstack.core.ipv6 import PREFERRED, Ipv6Addresses, Ipv6Datagram, link_local_for
    from components.netstack.core.links import Links
    from components.netstack.core.ndp import Ndp, NdpContext
    from components.netstack.wire import MacAddr
    from components.netstack.wire.icmpv6 import Icmpv6Message
    from components.netstack.wire.ipv6 import Ipv6Packet

    cfg = StackConfig(strict=True, ipv6=True)
    links = Links(cfg, CounterSet())
    dev = links.devices["eth0"] = Device("eth0", ETHERNET, MacAddr(mac(MAC0)), 1500)
    addrs = Ipv6Addresses(4)
    addrs.add("eth0", link_local_for(dev.mac), PREFERRED)
    ndp = Ndp(cfg, Counter(), Counter(), NdpContext(links=links, addresses=addrs,
                                                   emit=lambda e: None,
                                                   is_router=lambda d: True))
    pkt = Ipv6Packet.parse(bytes(Ether(ns(LL0))[IPv6]))
    msg = Icmpv6Message.parse(pkt.payload, pkt.src, pkt.dst)
    ndp.receive(Ipv6Datagram(pkt, pkt.payload, 58, "eth0", True, False, b""), msg, 0.0)
    (f,) = dev.tx
    assert Ether(bytes(f))[ICMPv6ND_NA].R == 1      # a router says so
    assert ndp.neighbors.state_of("eth0", int(IPv6Address(LLA))).value == "STALE"
