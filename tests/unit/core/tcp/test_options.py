"""RFC 7323 (window scaling, timestamps, PAWS) and buffer auto-tuning."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import Connection, State, TcpConfig
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, PSH, RST, SYN, TcpSegment, build_tcp

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Net, Peer, pair
from .test_transfer import converse, payload

S = State


def send_opts(p: Peer, flags: int, *, seq=None, ack=None, payload=b"", window=65535,
              now=None, **opts):
    """Peer.send with options (wscale, timestamp, sack_permitted, sack_blocks)."""
    if now is not None:
        p.now = now
    raw = build_tcp(B_IP, A_IP, B_PORT, A_PORT, p.seq if seq is None else seq,
                    p.c.snd_nxt if ack is None else ack, flags, window, payload, **opts)
    p.c.segment_arrives(TcpSegment.parse(raw, B_IP, A_IP), p.now)
    out = p.c.take_segments()
    p.got += out
    return out


def handshake(cfg: TcpConfig = TcpConfig(), **syn_ack_opts) -> tuple[Connection, Peer]:
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=cfg)
    p = Peer(c)
    c.connect(0.0)
    [syn] = c.take_segments()
    p.syn = syn
    send_opts(p, SYN | ACK, mss=1460, now=0.1, **syn_ack_opts)
    p.seq += 1
    assert c.state is S.ESTABLISHED
    c.take_events()
    return c, p


def test_our_syn_offers_window_scale_from_the_largest_buffer_and_timestamps():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=TcpConfig())
    c.connect(5.0)
    [syn] = c.take_segments()
    assert syn.wscale == 7                    # 65535 << 7 >= 4 MiB (recv_buffer_max)
    assert syn.timestamp[1] == 0 and syn.window == 65535
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A,
                   config=TcpConfig(recv_buffer_max=65535, window_scaling=False, timestamps=False))
    c.connect(5.0)
    [syn] = c.take_segments()
    assert syn.wscale is None and syn.timestamp is None


def test_scaling_is_on_only_when_both_syns_carry_the_option():
    c, p = handshake(wscale=3)
    assert c.ws_ok and c.snd_wscale == 3 and c.rcv_wscale == 7
    p.send(ACK, window=1000)
    assert c.snd_wnd == 8000                  # RFC 7323 §2.3: SEG.WND << Snd.Wind.Shift
    c, p = handshake()                        # the SYN,ACK had no option
    assert not c.ws_ok and c.rcv_wscale == 0
    p.send(ACK, window=1000)
    assert c.snd_wnd == 1000


def test_a_shift_above_14_is_taken_as_14():
    c, _ = handshake(wscale=15)
    assert c.snd_wscale == 14 and c.stats["wscale_clamped"] == 1


def test_the_advertised_window_is_scaled_down_by_our_shift():
    c, p = handshake(TcpConfig(recv_buffer=1 << 20), wscale=2)
    out = send_opts(p, ACK | PSH, payload=b"x" * 1000, timestamp=None)
    free = (1 << 20) - 1000
    # The old edge is offered again rounded down by the shift (RFC 7323 Appendix F): the edge
    # may recede by less than 2**shift bytes, and never creeps past the buffer.
    assert out[-1].window == free >> 7 and c.rcv_adv == sq.add(c.rcv_nxt, (free >> 7) << 7)
    c.recv()
    out = send_opts(p, ACK | PSH, seq=sq.add(p.seq, 1000), payload=b"x" * 1000, timestamp=None)
    assert out[-1].window == (1 << 20) - 1000 >> 7


def test_the_syn_ack_answers_only_the_options_the_syn_offered():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    c.listen()
    p = Peer(c)
    send_opts(p, SYN, ack=0, mss=1400, timestamp=(777, 0))
    [synack] = p.got
    assert synack.wscale is None and synack.timestamp[1] == 777
    assert c.ts_ok and not c.ws_ok


def test_every_segment_carries_timestamps_and_echoes_ts_recent():
    c, p = handshake(timestamp=(1000, 0))
    assert c.ts_ok and c.ts_recent == 1000
    out = send_opts(p, ACK | PSH, payload=b"abc", timestamp=(1010, 0), now=0.2)
    assert out[-1].timestamp[1] == 1010
    c.send(b"d" * 100, 0.3)
    [data] = c.take_segments()
    assert data.timestamp[1] == 1010 and data.timestamp[0] == c._tsval(0.3)


def test_rtt_is_measured_from_the_echoed_timestamp():
    c, p = handshake(timestamp=(1000, 0))
    c.send(b"d" * 100, 1.0)
    [data] = c.take_segments()
    samples = c.rto.samples
    send_opts(p, ACK, timestamp=(1100, data.timestamp[0]), now=1.25)
    assert c.rto.samples == samples + 1
    assert c.rto.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.25)


def test_paws_drops_an_old_timestamp_and_acks_it():
    c, p = handshake(timestamp=(1000, 0))
    send_opts(p, ACK | PSH, payload=b"new", timestamp=(2000, 0), now=0.2)
    p.seq += 3
    out = send_opts(p, ACK | PSH, payload=b"old", timestamp=(1500, 0), now=0.3)
    assert c.stats["paws_rejected"] == 1 and c.recv() == b"new"
    assert [(s.flags, s.ack) for s in out] == [(ACK, p.seq)]
    # a RST is not subject to PAWS (RFC 7323 §5.3 R1)
    send_opts(p, RST, timestamp=(1, 0), now=0.4)
    assert c.state is S.CLOSED


def test_without_its_timestamp_a_segment_is_dropped_once_negotiated():
    c, p = handshake(timestamp=(1000, 0))
    p.send(ACK | PSH, payload=b"nots")
    assert c.recv() == b"" and c.stats["ts_missing_dropped"] == 1


def test_two_connections_negotiate_everything_and_move_4_mib_with_a_growing_window():
    a, b = pair()
    b.listen()
    net = Net(a, b, delay=0.025)
    a.connect(net.now)
    net.run(lambda: b.state is S.ESTABLISHED)
    assert a.ws_ok and b.ws_ok and a.ts_ok and b.ts_ok
    data = payload(4 << 20, 5)
    limits = []
    net.run(lambda: limits.append((a.sndbuf_limit, b.rcvbuf_limit)) and False, max_time=0)
    orig = b.recv

    done = []

    def recv(n=None):
        limits.append((a.sndbuf_limit, b.rcvbuf_limit))
        got = orig(n)
        if got:
            done.append(net.now)
        return got
    b.recv = recv
    got_a, got_b = converse(net, data, b"")
    assert got_b == data
    # 50 ms RTT: a 128 KiB window alone would need 1.6 s; the window grows past it
    assert done[-1] < 1.6
    assert max(l for _, l in limits) > TcpConfig().recv_buffer and b.stats["rcvbuf_grown"] > 0
    assert max(l for l, _ in limits) > TcpConfig().send_buffer
    assert max(s.window << 7 for _, n, s in net.log if n == "b" and not s.flags & SYN) > 65535
    assert a.stats["rto_expired"] == 0


def test_a_restored_connection_keeps_its_timestamp_clock_monotonic():
    c, p = handshake(timestamp=(1000, 0))
    before = c._tsval(10.0)
    c2 = Connection.from_snapshot(c.snapshot(), clock_shift=-9.0)   # new clock is behind
    assert c2._tsval(1.0) == before


def test_a_receiver_that_stops_reading_never_holds_more_than_its_buffer():
    # Thousands of ACKs while the buffer fills: rounding each offered edge up would let the
    # edge creep past the buffer (it ran 178 KB past a 6 MiB buffer before the fix).
    from .net import Net, pair
    a, b = pair()
    net = Net(a, b, delay=0.005)
    b.listen()
    a.connect(net.now)
    net.run(max_time=1.0)
    data = memoryview(bytes(12_000_000))
    sent = 0
    while net.now < 20 and sent < len(data):
        sent += a.send(data[sent:sent + (1 << 20)], net.now)
        if b.rcvbuf_limit < b.cfg.recv_buffer_max:
            b.recv()                        # read until the buffer has grown to its maximum
        net.run(max_time=0.01)
        assert len(b.rcvbuf) <= b.rcvbuf_limit + (1 << b.rcv_wscale)
    assert b.rcvbuf_limit == b.cfg.recv_buffer_max and len(b.rcvbuf) > b.rcvbuf_limit - 65536
