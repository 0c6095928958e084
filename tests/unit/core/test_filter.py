"""The packet filter in the core: hooks, verdicts, conntrack states, NAT, sets, atomic
install, snapshot. Each test runs on both the fast path and the general path (the fast path
switched off), which must agree."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from components.netstack.core import Stack, StackError
from tests.unit.core.util import (A, B, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, ip_frame, learn,
                                  make_stack, ping_frame, sent_raw, udp_frame)


def rule(hook, action, **kw):
    d = {"hook": hook, "action": action}
    d.update(kw)
    return d


def ports(lo, hi=None):
    return {"lo": lo, "hi": lo if hi is None else hi}


@pytest.fixture(params=["fast", "general"])
def stack(request):
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    s.set_forwarding("eth0", True)
    s.set_forwarding("eth1", True)
    if request.param == "general":
        s.fast.receive = lambda dev, frame, now: False
        s.fast.ip_send = lambda *a, **k: False
        s.tcp4.ip.fast_send = None
    return s


def out(s, dev):
    return [IP(f[14:]) for f in sent_raw(s, dev)]


def a_to_b_udp(dport=53, sport=4000, payload=b"q"):
    return udp_frame(HOST_A, MAC0, A, B, sport, dport, payload)


def b_to_a_udp(sport=53, dport=4000, payload=b"r"):
    return udp_frame(HOST_B, MAC1, B, A, sport, dport, payload)


def test_no_rule_set_leaves_the_filter_idle(stack):
    assert not stack.filter.active
    stack.receive("eth0", a_to_b_udp(), 1.0)
    assert len(out(stack, "eth1")) == 1
    assert len(stack.filter.conntrack) == 0


def test_forward_policy_drop_with_a_port_rule(stack):
    stack.filter.install({"policies": {"forward": "drop"},
                          "rules": [rule("forward", "accept", proto="udp", dport=ports(53))]})
    stack.receive("eth0", a_to_b_udp(53), 1.0)
    stack.receive("eth0", a_to_b_udp(54), 1.0)
    got = out(stack, "eth1")
    assert [p[UDP].dport for p in got] == [53]
    assert stack.filter.policy_drops[2] == 1
    assert stack.filter.rule_counters()[0][1] == 1


def test_stateful_forwarding_lets_replies_in_and_nothing_else(stack):
    stack.filter.install({"policies": {"forward": "drop"}, "rules": [
        rule("forward", "accept", ct_state=["established", "related"]),
        rule("forward", "accept", iif="eth0")]})
    stack.receive("eth1", b_to_a_udp(), 1.0)          # unsolicited: dropped
    assert out(stack, "eth0") == []
    stack.receive("eth0", a_to_b_udp(), 1.1)
    assert len(out(stack, "eth1")) == 1
    stack.receive("eth1", b_to_a_udp(), 1.2)          # the reply: established
    got = out(stack, "eth0")
    assert len(got) == 1 and got[0][UDP].dport == 4000
    assert len(stack.filter.conntrack) == 1


def test_a_tcp_segment_of_no_connection_is_invalid_and_dropped(stack):
    stack.filter.install({"rules": [rule("forward", "drop", ct_state=["invalid"])]})
    ack = ip_frame(HOST_A, MAC0, IP(src=A, dst=B) / TCP(sport=5000, dport=80, flags="A", seq=1, ack=1))
    stack.receive("eth0", ack, 1.0)
    assert out(stack, "eth1") == []
    syn = ip_frame(HOST_A, MAC0, IP(src=A, dst=B) / TCP(sport=5000, dport=80, flags="S", seq=1))
    stack.receive("eth0", syn, 1.0)
    assert len(out(stack, "eth1")) == 1


def test_reject_answers_tcp_with_a_rst_and_udp_with_port_unreachable(stack):
    stack.filter.install({"rules": [rule("input", "reject", proto="tcp", dport=ports(22)),
                                    rule("input", "reject", proto="udp")]})
    syn = ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / TCP(sport=5000, dport=22, flags="S", seq=100))
    stack.receive("eth0", syn, 1.0)
    got = out(stack, "eth0")
    assert len(got) == 1 and got[0][TCP].flags == "RA" and got[0][TCP].ack == 101
    assert got[0].src == IP0 and got[0][TCP].sport == 22
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 4000, 9999), 1.0)
    got = out(stack, "eth0")
    assert len(got) == 1 and got[0][ICMP].type == 3 and got[0][ICMP].code == 3


def test_input_drop_policy_with_an_accepted_ping(stack):
    stack.filter.install({"policies": {"input": "drop"},
                          "rules": [rule("input", "accept", proto="icmp", icmp_type=8)]})
    stack.receive("eth0", ping_frame(HOST_A, MAC0, A, IP0), 1.0)
    got = out(stack, "eth0")
    assert len(got) == 1 and got[0][ICMP].type == 0
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 4000, 9999), 1.0)
    assert out(stack, "eth0") == []        # no port unreachable: dropped before delivery


def test_a_set_of_ten_thousand_addresses(stack):
    members = [f"172.16.{i >> 8}.{i & 255}" for i in range(10000)] + [A]
    stack.filter.install({"policies": {"forward": "drop"}, "sets": {"ok": members},
                          "rules": [rule("forward", "accept", saddr_set="ok")]})
    stack.receive("eth0", a_to_b_udp(), 1.0)
    assert len(out(stack, "eth1")) == 1
    stack.filter.install({"policies": {"forward": "drop"}, "sets": {"ok": members[:-1]},
                          "rules": [rule("forward", "accept", saddr_set="ok")]})
    stack.receive("eth0", a_to_b_udp(sport=4001), 1.0)
    assert out(stack, "eth1") == []


def test_masquerade_translates_both_ways(stack):
    stack.filter.install({"rules": [rule("egress", "masquerade", oif="eth1")]})
    stack.receive("eth0", a_to_b_udp(53, 4000), 1.0)
    [p] = out(stack, "eth1")
    assert p.src == IP1 and p[UDP].dport == 53
    port = p[UDP].sport
    check = IP(bytes(p))
    del check.chksum
    del check[UDP].chksum
    assert IP(bytes(check)).chksum == p.chksum and IP(bytes(check))[UDP].chksum == p[UDP].chksum
    stack.receive("eth1", udp_frame(HOST_B, MAC1, B, IP1, 53, port, b"r"), 1.1)
    [r] = out(stack, "eth0")
    assert r.dst == A and r[UDP].dport == 4000 and r.src == B
    check = IP(bytes(r))
    del check.chksum
    del check[UDP].chksum
    assert IP(bytes(check))[UDP].chksum == r[UDP].chksum


def test_a_port_forward_keeps_the_clients_address(stack):
    stack.filter.install({"rules": [rule("ingress", "dnat", iif="eth1", proto="tcp",
                                         dport=ports(8080), to_address=A, to_port=80)]})
    syn = ip_frame(HOST_B, MAC1, IP(src=B, dst=IP1) / TCP(sport=6000, dport=8080, flags="S", seq=7))
    stack.receive("eth1", syn, 1.0)
    [p] = out(stack, "eth0")
    assert (p.src, p.dst, p[TCP].dport) == (B, A, 80)
    synack = ip_frame(HOST_A, MAC0, IP(src=A, dst=B) / TCP(sport=80, dport=6000, flags="SA",
                                                           seq=50, ack=8))
    stack.receive("eth0", synack, 1.1)
    [r] = out(stack, "eth1")
    assert (r.src, r[TCP].sport, r.dst) == (IP1, 8080, B)
    check = IP(bytes(r))
    del check.chksum
    del check[TCP].chksum
    assert IP(bytes(check))[TCP].chksum == r[TCP].chksum


def test_a_bad_rule_set_is_refused_whole_and_the_old_one_stays(stack):
    stack.filter.install({"policies": {"forward": "drop"}, "rules": [rule("forward", "accept",
                                                                          proto="udp", dport=ports(53))]})
    gen = stack.filter.generation
    for bad in ({"rules": [rule("forward", "masquerade")]},
                {"rules": [rule("input", "accept", saddr_set="nope")]},
                {"rules": [rule("input", "accept", dport=ports(1))]},
                {"policies": {"forward": "maybe"}},
                {"rules": [rule("input", "accept", oif="eth0")]}):
        with pytest.raises(StackError):
            stack.filter.install(bad)
    assert stack.filter.generation == gen
    stack.receive("eth0", a_to_b_udp(54), 1.0)
    assert out(stack, "eth1") == []


def test_log_and_mark_go_on_to_the_next_rule(stack):
    stack.filter.install({"rules": [rule("forward", "log", proto="udp"),
                                    rule("forward", "mark", set_mark={"domain": 2, "value": 9}),
                                    rule("forward", "drop", mark={"domain": 2, "value": 9},
                                         proto="udp", dport=ports(54))]})
    stack.receive("eth0", a_to_b_udp(53), 1.0)
    stack.receive("eth0", a_to_b_udp(54, 4001), 1.0)
    assert [p[UDP].dport for p in out(stack, "eth1")] == [53]
    lines = stack.filter.take_log(0, 10)
    assert len(lines) == 2 and "dport=53" in lines[0][2] and "ct=new" in lines[0][2]


def test_limit_matches_at_most_its_rate(stack):
    stack.filter.install({"policies": {"input": "drop"}, "rules": [
        rule("input", "accept", proto="icmp", limit_rate=1, limit_per=1, limit_burst=2)]})
    for i in range(5):
        stack.receive("eth0", ping_frame(HOST_A, MAC0, A, IP0, seq=i), 1.0)
    assert len(out(stack, "eth0")) == 2
    stack.receive("eth0", ping_frame(HOST_A, MAC0, A, IP0, seq=9), 2.5)
    assert len(out(stack, "eth0")) == 1


def test_a_full_table_refuses_new_flows_and_keeps_established_ones():
    s = make_stack(conntrack_max=2)
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    s.set_forwarding("eth0", True)
    s.set_forwarding("eth1", True)
    s.filter.install({"rules": [rule("forward", "accept")]})
    for sp in (4000, 4001):                    # two flows, both answered (assured)
        s.receive("eth0", a_to_b_udp(53, sp), 1.0)
        s.receive("eth1", b_to_a_udp(53, sp), 1.0)
        s.receive("eth0", a_to_b_udp(53, sp), 1.0)
    sent_raw(s)
    s.receive("eth0", a_to_b_udp(53, 4002), 1.0)
    assert out(s, "eth1") == []
    assert s.ctr.group("conntrack")["refused_full"] >= 1
    s.receive("eth0", a_to_b_udp(53, 4000), 1.0)
    assert len(out(s, "eth1")) == 1


def test_rules_and_connections_survive_a_snapshot(stack):
    stack.filter.install({"policies": {"forward": "drop"}, "rules": [
        rule("forward", "accept", ct_state=["established"]),
        rule("forward", "accept", iif="eth0")]})
    stack.receive("eth0", a_to_b_udp(), 1.0)
    sent_raw(stack)
    snap = stack.snapshot(True, now=1.0)
    s2 = Stack.restore(snap, stack.cfg, now=2.0)
    assert s2.filter.generation == stack.filter.generation and len(s2.filter.conntrack) == 1
    s2.receive("eth1", b_to_a_udp(), 2.0)
    assert len(out(s2, "eth0")) == 1
    s2.receive("eth1", b_to_a_udp(sport=54), 2.0)
    assert out(s2, "eth0") == []


# -- socket marks (qnet.socket set_mark / SO_MARK) ---------------------------------------------
def test_a_udp_sockets_marks_reach_its_flows_and_their_replies(stack):
    from ipaddress import IPv4Address
    stack.filter.install({"policies": {"input": "drop"}, "rules": [
        rule("output", "drop", mark={"domain": 2, "value": 9}),
        rule("input", "accept", mark={"domain": 2, "value": 7})]})
    marked, plain, blocked = stack.udp_open(), stack.udp_open(), stack.udp_open()
    for sid, port in ((marked, 5001), (plain, 5002), (blocked, 5003)):
        stack.udp_bind(sid, None, port)
    stack.udp_set_mark(marked, 2, 7)
    stack.udp_set_mark(blocked, 2, 9)
    for sid in (marked, plain, blocked):
        stack.udp_sendto(sid, b"q", IPv4Address(B), 53, 1.0)
    sent = out(stack, "eth1")
    assert sorted(p[UDP].sport for p in sent) == [5001, 5002]     # mark 2:9 dropped at output
    # The replies: only the marked socket's flow carries mark 2:7 and passes input.
    for port in (5001, 5002):
        stack.receive("eth1", udp_frame(HOST_B, MAC1, B, IP1, 53, port, b"r"), 1.1)
    assert len(stack.udp_recv(marked, 8)) == 1
    assert stack.udp_recv(plain, 8) == []
    entry = next(e for e in stack.filter.conntrack._entries if e.orig[1] == 5001)
    assert entry.marks[1] == 7


def test_a_tcp_connections_marks_are_its_syns(stack):
    from ipaddress import IPv4Address
    stack.filter.install({"rules": [rule("output", "drop", mark={"domain": 1, "value": 5})]})
    stack.tcp4.connect(IPv4Address(B), 80, 1.0, marks=(5, 0, 0, 0))
    stack.tcp4.connect(IPv4Address(B), 81, 1.0)
    stack.drain(1.0)
    syns = [p for p in out(stack, "eth1") if TCP in p]
    assert [p[TCP].dport for p in syns] == [81]
