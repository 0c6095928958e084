"""ARP (RFC 826), the neighbor state machine and RFC 5227 conflict detection."""

from __future__ import annotations

from ipaddress import IPv4Interface

from scapy.layers.inet import ICMP, IP, IPerror
from scapy.layers.l2 import ARP, Ether

from components.netstack.core import (AddressConflict, IcmpErrorForSocket, NeighborUnreachable,
                                      PingError)
from components.netstack.core.neighbor import TRANSITIONS, State

from .util import (A, B, BCAST, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, addr, arp_reply,
                   arp_request, learn, make_stack, ping_frame, sent)


def state(s, dev, ip):
    return {(n.device, n.address): n.state for n in s.neighbors()}.get((dev, ip))


def test_request_for_our_address_gets_reply_and_teaches_us_the_sender():
    s = make_stack()
    s.receive("eth0", arp_request(HOST_A, A, IP0), 1.0)
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == HOST_A and f[Ether].src == MAC0
    assert f[ARP].op == 2 and f[ARP].psrc == IP0 and f[ARP].hwsrc == MAC0
    assert f[ARP].pdst == A and f[ARP].hwdst == HOST_A
    assert state(s, "eth0", A) == "STALE"


def test_request_for_someone_else_is_not_answered_and_creates_no_entry():
    s = make_stack()
    s.receive("eth0", arp_request(HOST_A, A, "10.0.0.99"), 1.0)
    assert sent(s) == []
    assert s.neighbors() == []


def test_request_for_address_of_other_interface_is_not_answered():
    s = make_stack()
    s.receive("eth0", arp_request(HOST_A, A, IP1), 1.0)
    assert sent(s) == []


def test_outgoing_packet_triggers_request_then_reply_flushes_queue():
    s = make_stack()
    s.ping(addr(A), 1, 1, b"x", 0.0)
    (req,) = sent(s, "eth0")
    assert req[Ether].dst == BCAST and req[ARP].op == 1
    assert req[ARP].pdst == A and req[ARP].psrc == IP0 and req[ARP].hwsrc == MAC0
    assert state(s, "eth0", A) == "INCOMPLETE"
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 0.1)
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == HOST_A and f[IP].dst == A and f[ICMP].type == 8
    assert state(s, "eth0", A) == "REACHABLE"


def test_unsolicited_reply_creates_no_entry_but_gratuitous_updates_existing():
    s = make_stack()
    s.receive("eth0", arp_reply(HOST_A, A, BCAST, A), 0.0)
    assert s.neighbors() == []
    learn(s, "eth0", HOST_A, A, IP0)
    other = "02:00:00:00:00:cc"
    s.receive("eth0", arp_request(other, A, A), 1.0)   # gratuitous: A moved to another MAC
    (n,) = s.neighbors()
    assert n.mac == other and n.state == "STALE"


def test_incomplete_retries_then_fails_with_host_unreachable_to_local_pinger():
    s = make_stack(arp_retrans_time=1.0, arp_max_multicast_solicit=3)
    s.ping(addr(A), 9, 4, b"x", 0.0)
    assert len(sent(s, "eth0")) == 1
    assert s.next_deadline() == 1.0
    s.poll(1.0)
    s.poll(2.0)
    reqs = sent(s, "eth0")
    assert [f[ARP].op for f in reqs] == [1, 1]
    s.poll(3.0)
    assert sent(s) == []
    assert state(s, "eth0", A) == "FAILED"
    ev = s.take_events()
    assert NeighborUnreachable("eth0", addr(A), 1) in ev
    errs = [e for e in ev if isinstance(e, PingError)]
    assert errs and errs[0].type == 3 and errs[0].code == 1
    assert (errs[0].ident, errs[0].seq, errs[0].dst) == (9, 4, addr(A))
    # The FAILED entry is collected after failed_hold_time.
    s.poll(3.0 + s.cfg.failed_hold_time)
    assert state(s, "eth0", A) is None


def test_failed_resolution_for_udp_socket_reports_icmp_error_for_socket():
    s = make_stack()
    sid = s.udp_open()
    s.udp_sendto(sid, b"hello", addr(A), 53, 0.0)
    for t in (1.0, 2.0, 3.0):
        s.poll(t)
    ev = [e for e in s.take_events() if isinstance(e, IcmpErrorForSocket)]
    assert len(ev) == 1 and ev[0].sid == sid and ev[0].code == 1 and ev[0].dst_port == 53


def test_failed_resolution_for_forwarded_packet_sends_host_unreachable_to_source():
    s = make_stack()
    learn(s, "eth1", HOST_B, B, IP1)
    # B sends to 10.0.0.77 (no such host on eth0's LAN).
    s.receive("eth1", ping_frame(HOST_B, MAC1, B, "10.0.0.77"), 0.0)
    assert [f[ARP].pdst for f in sent(s, "eth0")] == ["10.0.0.77"]
    for t in (1.0, 2.0, 3.0):
        s.poll(t)
    (err,) = [f for f in sent(s, "eth1") if f.haslayer(ICMP)]
    assert err[IP].dst == B and err[IP].src == IP1
    assert err[ICMP].type == 3 and err[ICMP].code == 1
    assert err[IPerror].dst == "10.0.0.77"


def test_state_timeouts_reachable_stale_delay_probe_failed():
    s = make_stack(reachable_time=30.0, delay_first_probe_time=5.0, arp_retrans_time=1.0,
                   arp_max_unicast_solicit=3)
    s.ping(addr(A), 1, 1, b"", 0.0)
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 0.0)
    sent(s)
    assert state(s, "eth0", A) == "REACHABLE"
    s.poll(30.0)
    assert state(s, "eth0", A) == "STALE"
    s.ping(addr(A), 1, 2, b"", 31.0)       # use while STALE: send, then DELAY
    assert len(sent(s, "eth0")) == 1
    assert state(s, "eth0", A) == "DELAY"
    s.poll(36.0)
    assert state(s, "eth0", A) == "PROBE"
    (probe,) = sent(s, "eth0")
    assert probe[Ether].dst == HOST_A and probe[ARP].op == 1 and probe[ARP].pdst == A
    s.poll(37.0)
    s.poll(38.0)
    assert len(sent(s, "eth0")) == 2       # unicast probes 2 and 3
    s.poll(39.0)
    assert state(s, "eth0", A) == "FAILED"


def test_probe_answered_returns_to_reachable():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0, now=0.0)        # STALE
    s.ping(addr(A), 1, 1, b"", 1.0)                  # DELAY
    s.poll(1.0 + s.cfg.delay_first_probe_time)       # PROBE
    assert state(s, "eth0", A) == "PROBE"
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 7.0)
    assert state(s, "eth0", A) == "REACHABLE"


def test_every_transition_table_entry_names_known_states():
    for (st, ev), (nxt, acts) in TRANSITIONS.items():
        assert isinstance(st, State) and isinstance(nxt, State)
    # INCOMPLETE is never entered without asking the network.
    for (st, ev), (nxt, acts) in TRANSITIONS.items():
        if nxt is State.INCOMPLETE and st is not State.INCOMPLETE:
            assert any(a.name == "SOLICIT_BROADCAST" for a in acts)


def test_gratuitous_arp_on_address_add_is_announced_twice():
    s = make_stack(announce_num=2)
    s.poll(5.0)
    sent(s)
    s.add_address("eth0", IPv4Interface("10.0.5.1/24"), 10.0)
    (ann,) = sent(s, "eth0")
    assert ann[Ether].dst == BCAST and ann[ARP].op == 1
    assert ann[ARP].psrc == "10.0.5.1" and ann[ARP].pdst == "10.0.5.1"
    assert s.next_deadline() == 10.0 + s.cfg.announce_interval
    s.poll(12.0)
    assert len(sent(s, "eth0")) == 1
    s.poll(20.0)
    assert sent(s, "eth0") == []


def test_conflicting_arp_raises_event_counter_and_defends_once_per_interval():
    s = make_stack()
    intruder = "02:00:00:00:00:ee"
    s.receive("eth0", arp_request(intruder, IP0, IP0), 100.0)
    ev = s.take_events()
    assert ev == [AddressConflict("eth0", addr(IP0), intruder)]
    (defend,) = sent(s, "eth0")
    assert defend[ARP].psrc == IP0 and defend[ARP].hwsrc == MAC0
    s.receive("eth0", arp_reply(intruder, IP0, BCAST, IP0), 101.0)
    assert sent(s) == []                         # within DEFEND_INTERVAL: no second defense
    assert s.counters()["arp"]["conflicts"] == 2
    assert state(s, "eth0", IP0) is None         # never learn our own address as a neighbor


def test_probe_for_our_address_is_answered_not_learned():
    s = make_stack()
    s.receive("eth0", arp_request(HOST_A, "0.0.0.0", IP0), 0.0)
    (f,) = sent(s, "eth0")
    assert f[ARP].op == 2 and f[ARP].psrc == IP0 and f[Ether].dst == HOST_A
    assert s.neighbors() == []


def test_neighbor_table_is_bounded_and_counts_evictions():
    s = make_stack(neighbor_table_size=8)
    for i in range(20):
        s.receive("eth0", arp_request(f"02:00:00:00:10:{i:02x}", f"10.0.0.{100 + i}", IP0), 0.0)
    assert len(s.neighbors()) == 8
    assert s.counters()["neighbor"]["evicted"] == 12
    assert s.counters()["table:neighbor"]["entries"] == 8


def test_waiting_queue_is_bounded_per_entry():
    s = make_stack(neighbor_queue_packets=3)
    for i in range(10):
        s.ping(addr(A), 1, i, b"x", 0.0)
    (n,) = s.neighbors()
    assert n.queued == 3
    assert s.counters()["neighbor"]["queue_dropped_full"] == 7
    sent(s)
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 0.1)
    seqs = [f[ICMP].seq for f in sent(s, "eth0")]
    assert seqs == [7, 8, 9]                   # the oldest gave way


def test_arp_from_our_own_mac_is_ignored():
    s = make_stack()
    s.receive("eth0", arp_request(MAC0, A, IP0), 0.0)
    assert sent(s) == [] and s.neighbors() == []


def test_link_down_flushes_neighbors_and_counts_queued_packets():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    s.ping(addr("10.0.0.3"), 1, 1, b"", 0.0)
    sent(s)
    s.set_link("eth0", False, 1.0)
    assert s.neighbors() == []
    assert s.counters()["neighbor"]["queue_dropped_flush"] == 1
    s.receive("eth0", arp_request(HOST_A, A, IP0), 2.0)
    assert sent(s) == [] and s.counters()["dev:eth0"]["rx_drop_link_down"] == 1
