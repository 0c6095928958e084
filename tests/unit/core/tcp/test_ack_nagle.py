"""Delayed ACKs (RFC 9293 §3.8.6.3, RFC 5681 §4.2), Nagle and TCP_NODELAY, sender SWS
avoidance (RFC 9293 §3.8.6.2.1)."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import TcpConfig
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, FIN, PSH

from .peers import established

NO_QUICK = TcpConfig(quickack=0)


def data(p, n: int, now: float, gap: int = 0):
    out = p.send(ACK | PSH, seq=sq.add(p.seq, gap), payload=b"d" * n, now=now)
    if not gap:
        p.seq = sq.add(p.seq, n)
    return out


def test_a_lone_segment_is_acked_after_40_ms():
    c, p = established(NO_QUICK)
    assert data(p, 1460, 1.0) == []
    assert c.next_deadline() == pytest.approx(1.04)
    c.poll(1.039)
    assert c.take_segments() == []
    c.poll(1.04)
    [ack] = c.take_segments()
    assert ack.ack == p.seq and c.stats["delayed_acks"] == 1 and c.next_deadline() is None


def test_every_second_full_sized_segment_is_acked_at_once():
    c, p = established(NO_QUICK)
    assert data(p, 1460, 1.0) == []
    [ack] = data(p, 1460, 1.01)
    assert ack.ack == p.seq and c.next_deadline() is None


def test_the_first_segments_are_acked_at_once_quick_ack_mode():
    c, p = established(TcpConfig(quickack=3))
    for i in range(3):
        assert len(data(p, 100, 1.0 + i)) == 1
    assert data(p, 100, 5.0) == []


def test_out_of_order_and_hole_filling_segments_are_acked_at_once():
    c, p = established(NO_QUICK)
    [dup] = data(p, 500, 1.0, gap=1000)            # ahead of a hole
    assert dup.ack == p.seq
    [ack] = data(p, 1000, 1.01)                     # fills it
    assert ack.ack == sq.add(p.seq, 500)


def test_our_data_carries_the_delayed_ack():
    c, p = established(NO_QUICK)
    data(p, 100, 1.0)
    c.send(b"reply", 1.01)
    [seg] = c.take_segments()
    assert seg.payload == b"reply" and seg.ack == p.seq and c.delack_deadline is None


def test_nagle_holds_a_small_segment_while_one_is_in_flight():
    c, p = established()
    c.send(b"a", 1.0)
    c.send(b"b", 1.0)
    c.send(b"c", 1.0)
    assert [s.payload for s in c.take_segments()] == [b"a"]
    assert c.stats["nagle_deferred"] == 2
    out = p.send(ACK, ack=sq.add(c.iss, 2), now=1.1)
    assert [s.payload for s in out] == [b"bc"]


def test_nagle_sends_full_segments_and_a_fin():
    c, p = established()
    c.send(b"x" * 1000, 1.0)
    c.send(b"y" * 2000, 1.0)
    assert [len(s.payload) for s in c.take_segments()] == [1000, 1460]   # 540 held
    c.close(1.0)
    [last] = c.take_segments()
    assert len(last.payload) == 540 and last.flags & FIN


def test_nodelay_sends_small_segments_at_once_and_turning_it_on_flushes():
    c, p = established(TcpConfig(nodelay=True))
    c.send(b"a", 1.0)
    c.send(b"b", 1.0)
    assert [s.payload for s in c.take_segments()] == [b"a", b"b"]
    c, p = established()
    assert c.nodelay is False
    c.send(b"a", 1.0)
    c.send(b"b", 1.0)
    assert [s.payload for s in c.take_segments()] == [b"a"]
    c.set_nodelay(True, 1.0)
    assert [s.payload for s in c.take_segments()] == [b"b"]


def test_sender_sws_avoidance_does_not_fill_a_sliver_of_window():
    c, p = established(TcpConfig(nodelay=True), window=4000)
    c.send(b"s" * 20000, 1.0)
    # two full segments; the 1080 bytes left of the window are less than half of it: wait
    assert [len(s.payload) for s in c.take_segments()] == [1460, 1460]
    assert c.stats["sws_deferred"] == 1
    out = p.send(ACK, ack=sq.add(c.iss, 2921), window=4000, now=1.1)
    assert [len(s.payload) for s in out] == [1460, 1460]
    # a window of 1000, less than half the largest (4000): nothing until the override timer
    out = p.send(ACK, ack=sq.add(c.iss, 5841), window=1000, now=1.2)
    assert out == [] and c.next_deadline() is not None
    c.poll(c.next_deadline())
    assert [len(s.payload) for s in c.take_segments()] == [1000]
