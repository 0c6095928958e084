"""Bounded send and receive buffers, window advertisement, MSS."""

from __future__ import annotations

from components.netstack.core.tcp import State, TcpConfig, TcpEvent
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, PSH

from .peers import established

S = State


def test_send_takes_only_what_fits_in_the_send_buffer_and_counts_the_rest():
    c, p = established(TcpConfig(send_buffer=5000, send_buffer_max=5000), now=0.0)
    assert c.send(b"a" * 8000, 1.0) == 5000
    assert c.stats["send_buffer_full_bytes"] == 3000
    assert c.send(b"b", 1.0) == 0
    assert len(c.sndbuf) == 5000
    p.send(ACK, ack=sq.add(c.iss, 1461), now=1.1)      # one segment acknowledged
    assert TcpEvent.WRITABLE in c.take_events()
    assert c.send(b"c" * 3000, 1.2) == 1460


def test_the_advertised_window_is_the_free_receive_buffer_and_closes_when_full():
    c, p = established(TcpConfig(recv_buffer=3000, recv_buffer_max=3000), now=0.0)
    out = p.send(ACK | PSH, payload=b"x" * 1000)
    p.seq += 1000
    assert out[-1].window == 2000
    out = p.send(ACK | PSH, payload=b"y" * 2000)
    p.seq += 2000
    assert out[-1].window == 0
    # RFC 9293 §3.10.7.4: with a zero window only a segment without data at RCV.NXT fits.
    out = p.send(ACK | PSH, payload=b"z")
    assert [(s.ack, s.window) for s in out] == [(p.seq, 0)] and c.stats["unacceptable"] == 1
    assert len(c.rcvbuf) == 3000


def test_reading_opens_the_window_and_announces_it_once_it_is_worth_it():
    c, p = established(TcpConfig(recv_buffer=4000, recv_buffer_max=4000, mss=1000), now=0.0)
    p.send(ACK | PSH, payload=b"x" * 4000)
    assert c.recv(500) == b"x" * 500
    assert c.take_segments() == []                     # 500 < min(buffer/2, MSS): wait
    assert c.recv(600) == b"x" * 600
    [update] = c.take_segments()
    assert (update.flags, update.window) == (ACK, 1100) and c.stats["window_updates"] == 1


def test_data_beyond_the_advertised_window_is_trimmed_and_counted():
    c, p = established(TcpConfig(recv_buffer=2000, recv_buffer_max=2000), now=0.0)
    out = p.send(ACK | PSH, payload=b"w" * 3000)        # the peer ignores our window
    assert len(c.rcvbuf) == 2000 and c.stats["rcv_beyond_window_bytes"] == 1000
    assert out[-1].ack == sq.add(p.seq, 2000)


def test_the_advertised_window_never_exceeds_the_16_bit_field_without_window_scaling():
    c, p = established(TcpConfig(recv_buffer=1 << 20, window_scaling=False), now=0.0)
    out = p.send(ACK | PSH, payload=b"x")
    assert out[-1].window == 0xFFFF


def test_segments_respect_the_peers_mss_and_536_without_the_option():
    c, _ = established(now=0.0, peer_mss=1000)
    c.send(b"m" * 3000, 1.0)
    assert [len(s.payload) for s in c.take_segments()] == [1000, 1000, 1000]
    c, _ = established(now=0.0, peer_mss=None)
    c.send(b"m" * 3000, 1.0)
    assert max(len(s.payload) for s in c.take_segments()) == 536


def test_sending_stops_at_the_peers_window():
    c, p = established(now=0.0, window=2920)
    c.send(b"w" * 8000, 1.0)
    assert sum(len(s.payload) for s in c.take_segments()) == 2920
    out = p.send(ACK, ack=sq.add(c.iss, 2921), window=2920, now=1.1)
    assert sum(len(s.payload) for s in out) == 2920
