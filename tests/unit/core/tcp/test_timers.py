"""Retransmission (RFC 6298, Karn), give-up, TIME-WAIT and the window probe, on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from components.netstack.core.tcp import Connection, State, TcpConfig, TcpEvent
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, FIN, SYN

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Net, Peer, pair
from .peers import established

S = State


def fire(c: Connection) -> float:
    t = c.next_deadline()
    c.poll(t)
    return t


def test_syn_is_retransmitted_with_exponential_backoff_then_the_connect_times_out():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    c.connect(0.0)
    times = []
    while c.state is S.SYN_SENT:
        c.take_segments()
        times.append(fire(c))
    # RFC 6298: 1 s, then doubling; Linux's tcp_syn_retries = 6 retransmissions.
    assert times == [1, 3, 7, 15, 31, 63, 127]
    assert c.stats["rto_expired"] == 6
    assert c.take_events() == [TcpEvent.TIMED_OUT, TcpEvent.CLOSED]
    assert c.next_deadline() is None


def test_each_syn_retransmission_is_the_same_syn():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    c.connect(0.0)
    first = c.take_segments()
    fire(c)
    # the same SYN; only the timestamp clock moved on
    same = [dataclasses.replace(s, timestamp=(0, 0)) for s in c.take_segments()]
    assert same == [dataclasses.replace(s, timestamp=(0, 0)) for s in first]


def test_rto_comes_from_the_measured_round_trip():
    c, p = established(now=0.0, rtt=0.1)
    assert c.rto.srtt == pytest.approx(0.1)              # the SYN was timed
    c.send(b"a" * 100, 1.0)
    p.send(ACK, now=1.5)
    assert c.rto.samples == 2
    assert c.rto.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.5)
    assert c.rto.rto == pytest.approx(c.rto.srtt + 4 * c.rto.rttvar)


def test_karn_no_sample_from_a_retransmitted_segment_and_the_backoff_stays():
    c, p = established(now=0.0, rtt=0.1)
    rto = c.rto.rto
    c.send(b"a" * 100, 1.0)
    c.take_segments()
    t1 = fire(c)
    assert t1 == pytest.approx(1.0 + rto)
    assert [s.seq for s in c.take_segments()] == [sq.add(c.iss, 1)]     # the same bytes again
    assert c.rto.rto == pytest.approx(2 * rto)
    p.send(ACK, now=t1 + 0.05)                 # acks the retransmission (or the original?)
    assert c.rto.samples == 1                  # Karn: ambiguous, not sampled
    assert c.rto.rto == pytest.approx(2 * rto)  # backed-off RTO kept until a fresh sample
    c.send(b"b" * 100, 5.0)
    p.send(ACK, now=5.1)
    assert c.rto.samples == 2 and c.rto.rto < 2 * rto


def test_data_retransmissions_back_off_until_the_connection_gives_up():
    c, p = established(TcpConfig(data_retries=4), now=0.0, rtt=0.1)
    c.send(b"lost" * 10, 1.0)
    c.take_segments()
    rto = c.rto.rto
    assert rto == pytest.approx(0.3)         # SRTT 0.1 + 4 * RTTVAR 0.05
    times = []
    while c.state is S.ESTABLISHED:
        times.append(fire(c))
        assert all(s.seq == sq.add(c.iss, 1) for s in c.take_segments())
    gaps = [b - a for a, b in zip([1.0] + times, times)]
    assert gaps == pytest.approx([rto, 2 * rto, 4 * rto, 8 * rto, 16 * rto])
    assert c.take_events() == [TcpEvent.TIMED_OUT, TcpEvent.CLOSED]


def test_a_timeout_resends_from_snd_una_one_segment_then_acks_clock_out_the_rest():
    c, p = established(TcpConfig(nodelay=True, congestion="newreno"), now=0.0, rtt=0.1)
    c.send(b"x" * 4000, 1.0)
    assert [len(s.payload) for s in c.take_segments()] == [1460, 1460, 1080]
    fire(c)
    again = c.take_segments()
    assert [(s.seq, len(s.payload)) for s in again] == [(sq.add(c.iss, 1), 1460)]
    assert c.cwnd == 1460 and c.ssthresh == 2920
    out = p.send(ACK, ack=sq.add(c.iss, 1461), now=2.0)
    assert [len(s.payload) for s in out] == [1460, 1080]     # slow start: cwnd 2 segments


def test_syn_timeout_makes_the_rto_three_seconds_for_the_data():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    p = Peer(c)
    c.connect(0.0)
    fire(c)                                    # the SYN was lost once
    p.send(SYN | ACK, mss=1460, now=1.2)
    p.seq += 1
    assert c.state is S.ESTABLISHED and c.rto.samples == 0
    assert c.rto.rto == 3.0                    # RFC 6298 §5.7


def test_time_wait_ends_exactly_at_two_msl_and_a_retransmitted_fin_restarts_it():
    c, p = established(now=0.0)
    c.close(1.0)
    p.send(ACK | FIN, now=1.1)
    p.seq += 1
    assert c.state is S.TIME_WAIT and c.time_wait_deadline == pytest.approx(61.1)
    c.poll(61.0)
    assert c.state is S.TIME_WAIT
    out = p.send(ACK | FIN, seq=sq.add(p.seq, -1), now=30.0)   # our last ACK was lost
    assert [(s.flags, s.ack) for s in out] == [(ACK, p.seq)]
    assert c.next_deadline() == pytest.approx(90.0)
    c.poll(89.999)
    assert c.state is S.TIME_WAIT
    c.poll(90.0)
    assert c.state is S.CLOSED and c.next_deadline() is None
    assert c.take_events()[-1] is TcpEvent.CLOSED


def test_a_zero_window_is_probed_with_back_off_until_it_opens():
    c, p = established(TcpConfig(nodelay=True), now=0.0, window=0)
    c.send(b"z" * 3000, 1.0)
    assert c.take_segments() == []             # nothing fits
    assert c.persist_deadline is not None and c.rtx_deadline is None
    t = fire(c)
    # Linux's probe: an old sequence number, no data, which the peer must answer
    [probe] = c.take_segments()
    assert (probe.seq, probe.payload) == (c.iss, b"") and c.stats["window_probes"] == 1
    p.send(ACK, ack=sq.add(c.iss, 1), window=0, now=t + 0.1)   # still closed
    assert c.probes_out == 0                                     # but the peer is alive
    t2 = fire(c)
    [probe] = c.take_segments()
    assert probe.payload == b""
    assert t2 - t == pytest.approx(2 * (t - 1.0))              # backed off
    assert c.cwnd == 4380                                       # probes are not losses
    out = p.send(ACK, ack=sq.add(c.iss, 1), window=65535, now=t2 + 0.1)
    assert sum(len(s.payload) for s in out) == 3000 and c.persist_deadline is None


def test_a_peer_that_stops_answering_probes_times_out():
    c, p = established(TcpConfig(data_retries=3), now=0.0, window=0)
    c.send(b"z" * 100, 1.0)
    for _ in range(10):
        if c.state is not S.ESTABLISHED:
            break
        fire(c)
    assert c.stats["window_probes"] == 3
    assert c.take_events()[-2:] == [TcpEvent.TIMED_OUT, TcpEvent.CLOSED]


def test_lost_window_update_does_not_stall_the_transfer():
    a, b = pair(TcpConfig(recv_buffer=4000, recv_buffer_max=4000))
    b.listen()
    net = Net(a, b)
    a.connect(net.now)
    net.run(lambda: b.state is S.ESTABLISHED)
    a.send(b"q" * 10000, net.now)
    net.run(lambda: b._rcv_wnd() == 0)
    net.drop_next["b"] = 1                       # the window update
    got = bytearray(b.recv())                    # the window opens; b's update is lost
    net.collect()
    assert net.sent("b")[-1].window == 4000

    def drain():
        got.extend(b.recv())
        return len(got) == 10000
    net.run(drain, max_time=60)
    assert bytes(got) == b"q" * 10000
    assert a.stats["window_probes"] >= 1        # a's timer found the open window
