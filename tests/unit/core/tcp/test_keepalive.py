"""Keepalive (RFC 1122 §4.2.3.6, Linux's TCP_KEEPIDLE/INTVL/CNT) and the FIN-WAIT-2 timeout
of an orphaned connection (Linux's tcp_fin_timeout)."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import State, TcpConfig, TcpEvent
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, PSH, RST

from .peers import established

S = State


def test_keepalive_is_off_by_default():
    c, p = established()
    assert not c.keepalive and c.next_deadline() is None


def test_an_idle_peer_is_probed_then_declared_dead():
    c, p = established(now=0.0)
    c.set_keepalive(True, 0.1, idle=10, interval=2, count=3)
    times = []
    while c.state is S.ESTABLISHED:
        t = c.next_deadline()
        c.poll(t)
        out = c.take_segments()
        times.append(t)
        if c.state is S.ESTABLISHED:
            [probe] = out
            assert (probe.flags, probe.seq, probe.payload) == (ACK, sq.add(c.snd_una, -1), b"")
        else:
            assert [s.flags for s in out] == [RST]
    assert times == pytest.approx([0.1 + 10, 12.1, 14.1, 16.1])   # probes at idle, +intvl...
    assert c.take_events() == [TcpEvent.TIMED_OUT, TcpEvent.CLOSED]
    assert c.stats["keepalive_probes"] == 3


def test_an_answer_to_a_probe_or_any_traffic_restarts_the_idle_time():
    c, p = established(now=0.0)
    c.set_keepalive(True, 0.0, idle=10, interval=2, count=3)
    p.send(ACK | PSH, payload=b"hi", now=5.0)
    p.seq += 2
    c.poll(10.1)                                             # idle since 5.0 only
    assert c.take_segments() == [] and c.next_deadline() == pytest.approx(15.0)
    c.poll(15.0)
    assert len(c.take_segments()) == 1                       # first probe
    p.send(ACK, now=15.1)                                    # the peer answers
    c.poll(c.next_deadline())
    assert c.take_segments() == []
    assert c.next_deadline() == pytest.approx(25.1) and c.keepalive_probes == 0


def test_keepalive_from_the_config_and_kept_by_a_snapshot():
    from components.netstack.core.tcp import Connection
    c, p = established(TcpConfig(keepalive=True, keepalive_idle=30), now=0.0)
    assert c.next_deadline() == pytest.approx(30.1)
    c2 = Connection.from_snapshot(c.snapshot(), 100.0)
    assert c2.next_deadline() == pytest.approx(130.1) and c2.keepalive_idle == 30


def test_an_orphan_in_fin_wait_2_is_reset_after_fin_timeout():
    c, p = established(TcpConfig(fin_timeout=20), now=0.0)
    c.release(1.0)                                            # close(2): FIN and orphan
    p.send(ACK, now=1.1)
    assert c.state is S.FIN_WAIT_2 and c.next_deadline() == pytest.approx(21.1)
    p.send(ACK | PSH, payload=b"nobody reads this", now=2.0)  # discarded, ACKed
    assert c.rcvbuf == b"" and c.stats["orphan_discarded_bytes"] == 17
    c.poll(21.1)
    assert c.state is S.CLOSED and [s.flags for s in c.take_segments()][-1] == RST


def test_a_half_closed_connection_waits_in_fin_wait_2_as_long_as_it_likes():
    c, p = established(now=0.0)
    c.close(1.0)
    p.send(ACK, now=1.1)
    assert c.state is S.FIN_WAIT_2 and c.next_deadline() is None
