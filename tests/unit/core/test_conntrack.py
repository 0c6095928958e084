"""Connection tracking: TCP states and window tracking, UDP, ICMP queries and RELATED errors,
timeouts, the bounded table, NAT bindings, snapshot. Driven with packets built by hand and a
fake clock."""

from __future__ import annotations

import random
import struct
from collections import Counter
from ipaddress import IPv4Address

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.netstack.core.conntrack import (ESTABLISHED, INVALID, NEW, ORIGINAL, RELATED,
                                                REPLY, Conntrack)
from components.netstack.core.nat import rewrite_ipv4
from components.netstack.wire.tcp import ACK, FIN, PSH, RST, SYN


def ip(s: str) -> int:
    return int(IPv4Address(s))


C = ip("10.0.0.2")          # client
S = ip("192.168.1.2")       # server
PUB = ip("203.0.113.1")     # our public address
R = ip("198.51.100.9")      # a router on the way
CP, SP = 40000, 80
CISN, SISN = 1000, 500000


def tcp(sport, dport, seq, ack, flags, win=65535, payload=b"", options=b""):
    options += b"\x00" * (-len(options) % 4)
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       (20 + len(options)) // 4 << 4, flags, win, 0, 0) + options + payload


def wscale(n):
    return bytes([1, 3, 3, n])


def udp(sport, dport, payload=b"x"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(itype, ident, seq=1, code=0, payload=b""):
    return struct.pack("!BBHHH", itype, code, 0, ident, seq) + payload


def ipv4(src, dst, proto, payload, ttl=64):
    return struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                       src, dst) + payload


def icmp_error(quoted_ip_packet, itype=3, code=3):
    """An ICMP error quoting an IP header and the first 8 bytes after it (RFC 792)."""
    return struct.pack("!BBHI", itype, code, 0, 0) + quoted_ip_packet[:28]


class Flow:
    """A TCP connection C:CP -> S:SP through a Conntrack, tracking each side's next
    sequence number so tests can send in-window segments."""

    def __init__(self, ct, now=0.0):
        self.ct = ct
        self.now = now
        self.snd = {ORIGINAL: CISN, REPLY: SISN}

    def send(self, d, flags, payload=b"", seq=None, ack=None, win=65535, options=b""):
        seq = self.snd[d] if seq is None else seq
        ack = self.snd[1 - d] if ack is None else ack
        seg = tcp(*((CP, SP) if d == ORIGINAL else (SP, CP)), seq, ack, flags, win, payload,
                  options)
        src, dst = (C, S) if d == ORIGINAL else (S, C)
        r = self.ct.track(src, dst, 6, seg, 20 + len(seg), self.now)
        if r[2] != INVALID and seq == self.snd[d]:
            self.snd[d] += len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        return r

    def open(self, copts=b"", sopts=b"", cwin=65535, swin=65535):
        e, d, state = self.send(ORIGINAL, SYN, win=cwin, options=copts)
        assert self.ct.confirm(e, self.now)
        self.send(REPLY, SYN | ACK, win=swin, options=sopts)
        self.send(ORIGINAL, ACK, win=cwin)
        return e


@pytest.fixture
def ct():
    return Conntrack(1024, counters=Counter(), rng=random.Random(7))


# -- TCP ---------------------------------------------------------------------------------------

def test_three_way_handshake_goes_syn_sent_syn_recv_established_and_assures(ct):
    f = Flow(ct, 5.0)
    e, d, state = f.send(ORIGINAL, SYN)
    assert (d, state, e.tcp_state, e.confirmed) == (ORIGINAL, NEW, "syn_sent", False)
    assert e.orig == (C, CP, S, SP, 6) and e.reply == (S, SP, C, CP, 6)
    assert len(ct) == 0
    assert ct.confirm(e, f.now)
    assert len(ct) == 1 and ct.c["entries"] == 1 and ct.c["inserted"] == 1
    assert e.deadline == 5.0 + 120
    e2, d, state = f.send(REPLY, SYN | ACK)
    assert (e2, d, state, e.tcp_state) == (e, REPLY, ESTABLISHED, "syn_recv")
    assert e.seen_reply and not e.assured and e.deadline == 5.0 + 60
    e3, d, state = f.send(ORIGINAL, ACK)
    assert (e3, d, state, e.tcp_state) == (e, ORIGINAL, ESTABLISHED, "established")
    assert e.assured and e.deadline == 5.0 + 432000
    assert e.packets == [2, 1] and e.bytes == [80, 40]


def test_syn_retransmit_and_data_of_an_unanswered_flow_are_new(ct):
    f = Flow(ct)
    e, _, _ = f.send(ORIGINAL, SYN)
    ct.confirm(e, 0.0)
    e2, d, state = f.send(ORIGINAL, SYN, seq=CISN)
    assert (e2, d, state, e.tcp_state) == (e, ORIGINAL, NEW, "syn_sent")
    assert e.packets[ORIGINAL] == 2


def test_established_connection_carries_data_both_ways(ct):
    f = Flow(ct)
    e = f.open()
    assert f.send(ORIGINAL, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n")[1:] == (ORIGINAL, ESTABLISHED)
    # data not yet acknowledged: the timeout is capped (a dead peer)
    assert e.deadline == 300
    assert f.send(REPLY, ACK | PSH, b"x" * 1000)[1:] == (REPLY, ESTABLISHED)
    assert f.send(ORIGINAL, ACK)[1:] == (ORIGINAL, ESTABLISHED)
    assert e.deadline == 432000
    assert e.tcp_state == "established" and e.packets == [4, 2]


def test_fin_handshake_goes_to_time_wait(ct):
    f = Flow(ct)
    e = f.open()
    f.now = 10.0
    assert f.send(ORIGINAL, FIN | ACK)[2] == ESTABLISHED and e.tcp_state == "fin_wait"
    assert f.send(REPLY, ACK)[2] == ESTABLISHED and e.tcp_state == "close_wait"
    assert e.deadline == 10.0 + 60
    assert f.send(REPLY, FIN | ACK)[2] == ESTABLISHED and e.tcp_state == "last_ack"
    assert e.deadline == 10.0 + 30
    assert f.send(ORIGINAL, ACK)[2] == ESTABLISHED and e.tcp_state == "time_wait"
    assert e.deadline == 10.0 + 120
    assert ct.expire(10.0 + 121) == 1 and len(ct) == 0 and ct.c["expired"] == 1


def test_rst_closes_an_established_connection(ct):
    f = Flow(ct)
    e = f.open()
    f.now = 50.0
    assert f.send(REPLY, RST | ACK)[2] == ESTABLISHED
    assert e.tcp_state == "close" and e.deadline == 60.0 and len(ct) == 1


def test_rst_answering_a_syn_forgets_the_flow(ct):
    f = Flow(ct)
    e, _, _ = f.send(ORIGINAL, SYN)
    ct.confirm(e, 0.0)
    _, d, state = f.send(REPLY, RST | ACK, seq=0, win=0)
    assert (d, state) == (REPLY, ESTABLISHED)
    assert len(ct) == 0 and ct.c["deleted"] == 1


def test_mid_stream_segments_of_no_flow_are_invalid(ct):
    for flags in (ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK):
        seg = tcp(CP, SP, 1, 1, flags)
        assert ct.track(C, S, 6, seg, 40, 0.0) == (None, ORIGINAL, INVALID)
    assert ct.c["invalid"] == 5 and len(ct) == 0


@pytest.mark.parametrize("flags", [0, SYN | FIN, SYN | RST, FIN, FIN | SYN | ACK, PSH])
def test_bad_flag_combinations_are_invalid(ct, flags):
    f = Flow(ct)
    f.open()
    assert f.send(ORIGINAL, flags)[2] == INVALID


def test_out_of_window_segment_is_invalid_and_changes_nothing(ct):
    f = Flow(ct)
    e = f.open()
    before = ([list(w) for w in e.win], e.tcp_state, e.deadline, list(e.packets))
    # beyond the server's advertised window (65535)
    assert f.send(ORIGINAL, ACK, b"x" * 100, seq=CISN + 1 + 70000)[2] == INVALID
    # far below anything sent: older than the receiver's largest window
    assert f.send(ORIGINAL, ACK, b"x", seq=CISN - 200000)[2] == INVALID
    # acknowledging data the server never sent
    assert f.send(ORIGINAL, ACK, ack=SISN + 1 + 5000)[2] == INVALID
    assert ([list(w) for w in e.win], e.tcp_state, e.deadline, list(e.packets)) == before
    assert ct.c["invalid"] == 3
    # a FIN out of the window does not close anything
    assert f.send(ORIGINAL, FIN | ACK, seq=CISN + 1 + 70000)[2] == INVALID
    assert e.tcp_state == "established"
    assert f.send(ORIGINAL, ACK, b"y" * 100)[2] == ESTABLISHED


def test_window_scaling_when_both_sides_offer_it(ct):
    f = Flow(ct)
    e = f.open(copts=wscale(7), sopts=wscale(7), swin=1000)
    assert e.win[ORIGINAL][3] == 7 and e.win[REPLY][3] == 7
    f.send(REPLY, ACK, win=1000)    # 1000 << 7 = 128000 bytes of window
    assert f.send(ORIGINAL, ACK, b"x" * 100, seq=CISN + 1 + 100000)[2] == ESTABLISHED


def test_window_scaling_offered_by_one_side_only_is_off(ct):
    f = Flow(ct)
    e = f.open(copts=wscale(7), swin=1000)
    assert e.win[ORIGINAL][3] == 0 and e.win[REPLY][3] == 0
    f.send(REPLY, ACK, win=1000)
    assert f.send(ORIGINAL, ACK, b"x" * 100, seq=CISN + 1 + 100000)[2] == INVALID


def test_a_syn_in_time_wait_reopens_the_connection(ct):
    f = Flow(ct)
    old = f.open()
    f.send(ORIGINAL, FIN | ACK)
    f.send(REPLY, FIN | ACK)
    f.send(ORIGINAL, ACK)
    assert old.tcp_state == "time_wait"
    e, d, state = f.send(ORIGINAL, SYN, seq=CISN + 100000)
    assert (d, state, e.tcp_state) == (ORIGINAL, NEW, "syn_sent") and e is not old
    assert len(ct) == 0 and ct.confirm(e, 0.0)


def test_sequence_numbers_wrap(ct):
    f = Flow(ct)
    f.snd[ORIGINAL] = 0xFFFFFFF0
    e = f.open()
    for _ in range(5):
        assert f.send(ORIGINAL, ACK | PSH, b"z" * 10)[2] == ESTABLISHED
        f.snd[ORIGINAL] &= 0xFFFFFFFF
        assert f.send(REPLY, ACK)[2] == ESTABLISHED
    assert e.win[ORIGINAL][0] < 0x100


@pytest.mark.parametrize("seg", [b"", b"\0" * 19, tcp(1, 2, 0, 0, SYN)[:12] + b"\x40" + bytes(7),
                                 tcp(1, 2, 0, 0, SYN)[:12] + b"\xf0" + bytes(7)])
def test_malformed_tcp_is_invalid(ct, seg):
    assert ct.track(C, S, 6, seg, 20 + len(seg), 0.0) == (None, ORIGINAL, INVALID)


# -- UDP and ICMP ------------------------------------------------------------------------------

def test_udp_is_new_until_a_reply_then_established_and_assured(ct):
    e, d, state = ct.track(C, S, 17, udp(5000, 53), 29, 1.0)
    assert (d, state, e.tcp_state) == (ORIGINAL, NEW, None) and e.deadline == 31.0
    ct.confirm(e, 1.0)
    assert ct.track(C, S, 17, udp(5000, 53), 29, 2.0)[1:] == (ORIGINAL, NEW)
    assert ct.track(S, C, 17, udp(53, 5000), 29, 3.0) == (e, REPLY, ESTABLISHED)
    assert e.seen_reply and not e.assured and e.deadline == 33.0
    assert ct.track(C, S, 17, udp(5000, 53), 29, 4.0) == (e, ORIGINAL, ESTABLISHED)
    assert e.assured and e.deadline == 124.0


@pytest.mark.parametrize("payload", [b"\0" * 7, struct.pack("!HHHH", 1, 2, 7, 0),
                                     struct.pack("!HHHH", 1, 2, 30, 0) + b"x"])
def test_malformed_udp_is_invalid(ct, payload):
    assert ct.track(C, S, 17, payload, 20 + len(payload), 0.0)[2] == INVALID


def test_icmp_echo_is_keyed_by_identifier(ct):
    e, d, state = ct.track(C, S, 1, icmp(8, 77), 28, 0.0)
    assert (d, state) == (ORIGINAL, NEW) and e.orig == (C, 77, S, 77, 1)
    ct.confirm(e, 0.0)
    assert ct.track(S, C, 1, icmp(0, 77), 28, 0.5) == (e, REPLY, ESTABLISHED)
    assert ct.track(C, S, 1, icmp(8, 77, seq=2), 28, 1.0) == (e, ORIGINAL, ESTABLISHED)
    assert e.deadline == 31.0
    # another identifier is another flow; a reply of no flow, an echo request from the
    # answering side with the flow's identifier, unknown types: invalid
    assert ct.track(C, S, 1, icmp(8, 78), 28, 1.0)[2] == NEW
    assert ct.track(S, C, 1, icmp(0, 99), 28, 1.0)[2] == INVALID
    assert ct.track(S, C, 1, icmp(8, 77), 28, 1.0)[2] == INVALID
    assert ct.track(C, S, 1, icmp(9, 0), 28, 1.0)[2] == INVALID
    assert ct.track(C, S, 1, icmp(13, 5), 28, 1.0)[2] == NEW     # timestamp request


def test_icmp_error_quoting_a_tcp_flow_is_related_in_the_errors_direction(ct):
    f = Flow(ct)
    e = f.open()
    # a router toward S answers a packet C sent: the error travels to C, the reply direction
    quoted = ipv4(C, S, 6, tcp(CP, SP, CISN + 1, SISN + 1, ACK))
    assert ct.track(R, C, 1, icmp_error(quoted, 11, 0), 56, 1.0) == (e, REPLY, RELATED)
    # an unreachable from C's side about a packet S sent: the original direction
    quoted = ipv4(S, C, 6, tcp(SP, CP, SISN + 1, CISN + 1, ACK))
    assert ct.track(R, S, 1, icmp_error(quoted), 56, 1.0) == (e, ORIGINAL, RELATED)
    assert e.packets == [2, 1]      # errors are not the flow's packets


def test_icmp_error_quoting_a_udp_flow_is_related(ct):
    e, _, _ = ct.track(C, S, 17, udp(5000, 53), 29, 0.0)
    ct.confirm(e, 0.0)
    quoted = ipv4(C, S, 17, udp(5000, 53, b"query" * 10))
    assert ct.track(S, C, 1, icmp_error(quoted), 56, 1.0) == (e, REPLY, RELATED)


def test_icmp_error_quoting_an_echo_request_is_related(ct):
    e, _, _ = ct.track(C, S, 1, icmp(8, 4242), 28, 0.0)
    ct.confirm(e, 0.0)
    quoted = ipv4(C, S, 1, icmp(8, 4242))
    assert ct.track(R, C, 1, icmp_error(quoted, 11, 0), 56, 1.0) == (e, REPLY, RELATED)


def test_unmatched_or_misdirected_icmp_errors_are_invalid(ct):
    e, _, _ = ct.track(C, S, 17, udp(5000, 53), 29, 0.0)
    ct.confirm(e, 0.0)
    other_port = ipv4(C, S, 17, udp(5001, 53))
    assert ct.track(S, C, 1, icmp_error(other_port), 56, 1.0) == (None, ORIGINAL, INVALID)
    # quotes the flow, but is sent to a third host: not the flow's
    quoted = ipv4(C, S, 17, udp(5000, 53))
    assert ct.track(S, R, 1, icmp_error(quoted), 56, 1.0)[2] == INVALID
    # too short to quote 8 bytes of transport header
    assert ct.track(S, C, 1, icmp_error(quoted)[:30], 50, 1.0)[2] == INVALID
    assert ct.c["invalid"] == 3


def test_other_protocols_are_untracked_and_new(ct):
    assert ct.track(C, S, 47, b"gre", 23, 0.0) == (None, ORIGINAL, NEW)


# -- timeouts and the bounded table ------------------------------------------------------------

def test_flows_expire_lazily_and_by_expire(ct):
    a, _, _ = ct.track(C, S, 17, udp(1, 2), 29, 0.0)
    b, _, _ = ct.track(C, S, 17, udp(3, 4), 29, 10.0)
    ct.confirm(a, 0.0)
    ct.confirm(b, 10.0)
    assert ct.next_deadline() == 30.0
    # a lookup at 30 finds a's flow gone and starts a new one
    e, _, state = ct.track(C, S, 17, udp(1, 2), 29, 30.0)
    assert state == NEW and e is not a and ct.c["expired"] == 1 and len(ct) == 1
    assert ct.expire(39.9) == 0
    assert ct.expire(40.0) == 1 and len(ct) == 0 and ct.c["expired"] == 2
    assert ct.c["entries"] == 0


def test_expire_follows_refreshed_and_shortened_deadlines(ct):
    f = Flow(ct)
    e = f.open()                # established: 432000 s
    assert ct.expire(200.0) == 0 and len(ct) == 1
    f.now = 200.0
    f.send(ORIGINAL, RST | ACK)  # close: 10 s from now
    assert ct.expire(209.0) == 0
    assert ct.expire(210.0) == 1 and e.tcp_state == "close"


def test_expire_works_within_its_budget(ct):
    for port in range(10):
        e, _, _ = ct.track(C, S, 17, udp(port, 53), 29, 0.0)
        ct.confirm(e, 0.0)
    assert ct.expire(100.0, budget=4) == 4
    assert ct.expire(100.0) == 6 and len(ct) == 0


def test_custom_timeouts_and_unknown_names():
    ct = Conntrack(timeouts={"udp": 5})
    e, _, _ = ct.track(C, S, 17, udp(1, 2), 29, 0.0)
    assert e.deadline == 5.0
    with pytest.raises(ValueError):
        Conntrack(timeouts={"udp_forever": 1})


def test_full_table_drops_an_unassured_flow_then_refuses_new_ones():
    ct = Conntrack(2, counters={})
    f = Flow(ct)
    assured = f.open()
    udp_flow, _, _ = ct.track(C, S, 17, udp(1, 2), 29, 0.0)
    assert ct.confirm(udp_flow, 0.0)
    e, _, _ = ct.track(C, S, 17, udp(3, 4), 29, 0.0)
    assert ct.confirm(e, 0.0) and ct.c["early_drop"] == 1
    assert ct.lookup(udp_flow.orig) is None
    ct.track(S, C, 17, udp(4, 3), 29, 0.5)
    ct.track(C, S, 17, udp(3, 4), 29, 0.5)     # answered, and on: assured
    assert e.assured
    late, _, _ = ct.track(C, S, 17, udp(5, 6), 29, 1.0)
    assert not ct.confirm(late, 1.0) and ct.c["refused_full"] == 1 and len(ct) == 2
    # the established flow still tracks
    assert f.send(ORIGINAL, ACK, b"data")[0] is assured
    assert f.send(REPLY, ACK)[2] == ESTABLISHED


def test_a_full_table_expires_before_dropping():
    ct = Conntrack(1, counters={})
    a, _, _ = ct.track(C, S, 17, udp(1, 2), 29, 0.0)
    ct.confirm(a, 0.0)
    b, _, _ = ct.track(C, S, 17, udp(3, 4), 29, 100.0)
    assert ct.confirm(b, 100.0)
    assert ct.c["expired"] == 1 and ct.c["early_drop"] == 0


def test_delete_and_flush_count(ct):
    flows = []
    for port in range(3):
        e, _, _ = ct.track(C, S, 17, udp(port, 53), 29, 0.0)
        ct.confirm(e, 0.0)
        flows.append(e)
    ct.delete(flows[0])
    ct.delete(flows[0])
    assert len(ct) == 2 and ct.c["deleted"] == 1
    assert ct.flush() == 2 and len(ct) == 0 and ct.c["deleted"] == 3 and ct.c["entries"] == 0
    assert list(ct.entries()) == []


# -- NAT bindings ------------------------------------------------------------------------------

def test_snat_keeps_the_source_port_when_free(ct):
    e, _, _ = ct.track(C, S, 6, tcp(CP, SP, CISN, 0, SYN), 40, 0.0)
    assert ct.snat(e, PUB, None)
    assert e.reply == (S, SP, PUB, CP, 6)
    assert e.rewrite == [(PUB, CP, S, SP), (S, SP, C, CP)]
    assert ct.confirm(e, 0.0)
    assert ct.lookup((S, SP, PUB, CP, 6)) == (e, REPLY)


def test_snat_allocates_another_port_on_a_collision(ct):
    first, _, _ = ct.track(C, S, 6, tcp(CP, SP, CISN, 0, SYN), 40, 0.0)
    ct.snat(first, PUB, None)
    ct.confirm(first, 0.0)
    other = ip("10.0.0.3")      # another client with the same source port
    e, _, _ = ct.track(other, S, 6, tcp(CP, SP, 7, 0, SYN), 40, 0.0)
    assert ct.snat(e, PUB, None, (2000, 2010))
    port = e.reply[3]
    assert 2000 <= port <= 2010 and e.reply == (S, SP, PUB, port, 6)
    assert e.rewrite == [(PUB, port, S, SP), (S, SP, other, CP)]
    assert ct.confirm(e, 0.0)


def test_snat_fails_when_every_port_is_taken(ct):
    for i, port in enumerate((CP, 2000, 2001)):
        e, _, _ = ct.track(ip("10.0.0.9") + i, S, 17, udp(CP, 53), 29, 0.0)
        assert ct.snat(e, PUB, port) and ct.confirm(e, 0.0)
    e, _, _ = ct.track(C, S, 17, udp(CP, 53), 29, 0.0)
    assert not ct.snat(e, PUB, None, (2000, 2001)) and ct.c["nat_no_port"] == 1
    assert not ct.snat(e, PUB, 2000) and ct.c["nat_no_port"] == 2
    assert ct.snat(e, PUB, 2002) and e.reply == (S, 53, PUB, 2002, 17)


def test_dnat_then_snat_compose(ct):
    backend = ip("172.16.0.5")
    e, _, _ = ct.track(C, PUB, 6, tcp(CP, 443, CISN, 0, SYN), 40, 0.0)
    assert ct.dnat(e, backend, 8443)
    assert e.reply == (backend, 8443, C, CP, 6)
    assert e.rewrite == [(C, CP, backend, 8443), (PUB, 443, C, CP)]
    gateway = ip("172.16.0.1")
    assert ct.snat(e, gateway, None)
    assert e.reply == (backend, 8443, gateway, CP, 6)
    assert e.rewrite == [(gateway, CP, backend, 8443), (PUB, 443, C, CP)]
    assert ct.confirm(e, 0.0)
    # the packets themselves: the SYN as it leaves, the backend's answer as it comes back
    syn = bytearray(ipv4(C, PUB, 6, tcp(CP, 443, CISN, 0, SYN)))
    assert rewrite_ipv4(syn, 0, *e.rewrite[ORIGINAL])
    assert struct.unpack_from("!II", syn, 12) == (gateway, backend)
    synack = bytearray(ipv4(backend, gateway, 6, tcp(8443, CP, 9, CISN + 1, SYN | ACK)))
    assert ct.track(backend, gateway, 6, synack[20:], 40, 0.0) == (e, REPLY, ESTABLISHED)
    assert rewrite_ipv4(synack, 0, *e.rewrite[REPLY])
    assert struct.unpack_from("!IIHH", synack, 12) == (PUB, C, 443, CP)


def test_dnat_moves_the_source_port_when_its_reply_tuple_is_taken(ct):
    backend = ip("172.16.0.5")
    a, _, _ = ct.track(C, PUB, 6, tcp(CP, 80, CISN, 0, SYN), 40, 0.0)
    ct.dnat(a, backend, 80)
    ct.confirm(a, 0.0)
    other_public = ip("203.0.113.2")
    b, _, _ = ct.track(C, other_public, 6, tcp(CP, 80, CISN, 0, SYN), 40, 0.0)
    assert ct.dnat(b, backend, 80)
    assert b.reply[:3] == (backend, 80, C) and b.reply[3] != CP
    assert b.rewrite[ORIGINAL] == (C, b.reply[3], backend, 80)
    assert ct.confirm(b, 0.0)


def test_icmp_snat_translates_the_identifier(ct):
    e, _, _ = ct.track(C, S, 1, icmp(8, 5), 28, 0.0)
    assert ct.snat(e, PUB, None)
    assert e.reply == (S, 5, PUB, 5, 1)
    ct.confirm(e, 0.0)
    other = ip("10.0.0.3")
    e2, _, _ = ct.track(other, S, 1, icmp(8, 5), 28, 0.0)
    assert ct.snat(e2, PUB, None)
    ident = e2.reply[1]
    assert ident != 5 and e2.reply == (S, ident, PUB, ident, 1)
    assert e2.rewrite == [(PUB, ident, S, ident), (S, 5, other, 5)]
    ct.confirm(e2, 0.0)
    assert ct.track(S, PUB, 1, icmp(0, ident), 28, 0.1) == (e2, REPLY, ESTABLISHED)


def test_nat_on_a_confirmed_flow_changes_nothing(ct):
    e, _, _ = ct.track(C, S, 17, udp(1, 2), 29, 0.0)
    ct.confirm(e, 0.0)
    assert ct.snat(e, PUB, None) and ct.dnat(e, PUB, 9)
    assert e.rewrite == [None, None] and e.reply == (S, 2, C, 1, 17)


def test_related_error_of_a_snat_flow_matches_the_translated_tuple(ct):
    e, _, _ = ct.track(C, S, 17, udp(5000, 53), 29, 0.0)
    ct.snat(e, PUB, None)
    ct.confirm(e, 0.0)
    quoted = ipv4(PUB, S, 17, udp(5000, 53))     # as it left us
    assert ct.track(R, PUB, 1, icmp_error(quoted), 56, 1.0) == (e, REPLY, RELATED)


# -- listing and snapshot ----------------------------------------------------------------------

def test_describe_lists_flows(ct):
    f = Flow(ct)
    f.open()
    e, _, _ = ct.track(C, S, 17, udp(5, 6), 29, 0.0)
    ct.snat(e, PUB, None)
    ct.confirm(e, 0.0)
    rows = list(ct.describe(10.5))
    assert rows[0] == {"proto": "tcp", "src": C, "sport": CP, "dst": S, "dport": SP,
                       "reply_src": S, "reply_sport": SP, "reply_dst": C, "reply_dport": CP,
                       "state": "established", "assured": True, "expires_in": 431989,
                       "packets": 3, "bytes": 120}
    assert rows[1]["state"] == "new" and rows[1]["reply_dst"] == PUB
    assert rows[1]["expires_in"] == 19


def test_snapshot_restores_a_connection_mid_stream(ct):
    f = Flow(ct)
    e = f.open(copts=wscale(2), sopts=wscale(3))
    f.send(ORIGINAL, ACK | PSH, b"a" * 500)
    e.marks[1] = 7
    u, _, _ = ct.track(C, S, 17, udp(5000, 53), 29, 0.0)
    ct.snat(u, PUB, 6000)
    ct.confirm(u, 0.0)
    snap = msgpack.unpackb(msgpack.packb(ct.to_snapshot(10.0)))

    ct2 = Conntrack(1024, counters={})
    assert ct2.restore(snap, 1000.0) == 2 and ct2.c["entries"] == 2
    f.ct, f.now = ct2, 1000.0
    e2, d, state = f.send(REPLY, ACK)
    assert (d, state, e2.tcp_state, e2.assured, e2.marks) == (
        REPLY, ESTABLISHED, "established", True, [0, 7, 0, 0])
    assert e2.win[ORIGINAL][3] == 2 and e2.win[REPLY][3] == 3
    assert e2.packets == [3, 2]
    # the window state came along: out of window is still invalid
    assert f.send(ORIGINAL, ACK, b"x", seq=CISN + 1 + 10**6)[2] == INVALID
    # the translation came along: the reply to the NATed datagram finds its flow
    u2, d, state = ct2.track(S, PUB, 17, udp(53, 6000), 29, 1000.0)
    assert (d, state) == (REPLY, ESTABLISHED) and u2.rewrite[REPLY] == (S, 53, C, 5000)
    assert u2.deadline == 1000.0 + 30       # a reply's refresh, from the restored clock
    # deadlines are carried relative: the TCP flow had 300 - 10 s left (data unacknowledged)
    assert [x[5] for x in snap] == [290.0, 20.0]


def test_snapshot_skips_expired_and_keeps_the_first_max_entries(ct):
    for port in range(5):
        e, _, _ = ct.track(C, S, 17, udp(port, 53), 29, float(port))
        ct.confirm(e, float(port))
    snap = ct.to_snapshot(31.5)     # the flows of ports 0 and 1 are past their deadline
    assert [x[0][1] for x in snap if x[5] > 0] == [2, 3, 4]
    small = Conntrack(2)
    assert small.restore(snap, 0.0) == 2
    assert [e.orig[1] for e in small.entries()] == [2, 3]
    assert small.restore([["junk"], None, [1, 2]], 0.0) == 0


# -- never an exception ------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.sampled_from([1, 6, 17, 47]), st.binary(max_size=80), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1))
def test_random_payloads_never_raise(proto, l4, src, dst):
    ct = Conntrack(4)
    entry, d, state = ct.track(src, dst, proto, l4, 20 + len(l4), 0.0)
    assert state in (NEW, ESTABLISHED, RELATED, INVALID) and d in (ORIGINAL, REPLY)
    if entry is not None and state == NEW:
        ct.snat(entry, 1, None)
        ct.confirm(entry, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([SYN, SYN | ACK, ACK, FIN | ACK, RST,
                                                            RST | ACK, ACK | PSH]),
                          st.integers(-70000, 70000), st.integers(-70000, 70000),
                          st.integers(0, 200), st.integers(0, 65535)), max_size=30))
def test_random_segment_sequences_never_raise(steps):
    ct = Conntrack(8)
    f = Flow(ct)
    for reply, flags, dseq, dack, n, win in steps:
        d = REPLY if reply else ORIGINAL
        e, _, state = f.send(d, flags, b"p" * n, seq=f.snd[d] + dseq, ack=f.snd[1 - d] + dack,
                             win=win)
        if state == NEW:
            ct.confirm(e, f.now)
        f.now += 1.0
    ct.expire(f.now + 10**6)
    assert len(ct) == 0
