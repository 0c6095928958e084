"""Random segments, with time advancing, against connections in several states: no
exception escapes and the buffers stay within their bounds."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.netstack.core.tcp import TcpConfig
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import FIN

from .peers import established

CFG = TcpConfig(send_buffer=3000, recv_buffer=2000, send_buffer_max=3000, recv_buffer_max=2000)

segment = st.tuples(
    st.integers(0, 0x3F),                    # flags: FIN SYN RST PSH ACK URG
    st.integers(-3000, 3000),                # seq, relative to the peer's next
    st.integers(-3000, 3000),                # ack, relative to our SND.UNA
    st.integers(0, 0xFFFF),                  # window
    st.binary(max_size=1600),
    st.floats(0, 5),                         # time that passes first
    st.booleans(),                           # the application reads
    st.integers(0, 4000),                    # the application writes this much
    st.sampled_from([None, "close", "abort"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(segment, max_size=30))
def test_random_segments_never_raise_and_buffers_stay_bounded(steps):
    c, p = established(CFG, now=0.0)
    now = 0.0
    for flags, dseq, dack, window, payload, dt, read, write, call in steps:
        now += dt
        c.poll(now)
        p.send(flags, seq=sq.add(p.seq, dseq), ack=sq.add(c.snd_una, dack), window=window,
               payload=payload, now=now)
        if flags & FIN == 0 and dseq == 0:
            p.seq = sq.add(p.seq, len(payload))
        if read:
            c.recv()
        try:
            if write:
                c.send(b"w" * write, now)
            if call == "close":
                c.close(now)
            elif call == "abort":
                c.abort(now)
        except Exception as e:          # refused calls are the one error type
            assert type(e).__name__ == "StackError"
        c.take_segments()
        c.take_events()
        assert len(c.sndbuf) <= CFG.send_buffer and len(c.rcvbuf) <= CFG.recv_buffer
        assert c.ooo_bytes <= CFG.recv_buffer and c.ooo_bytes == sum(len(d) for d, _ in c.ooo.values())
        d = c.next_deadline()
        assert d is None or d >= now - 5


OPT_CFG = TcpConfig(send_buffer=3000, recv_buffer=2000, send_buffer_max=20000,
                    recv_buffer_max=20000, quickack=2)

opt_segment = st.tuples(
    st.integers(0, 0x3F),                    # flags
    st.integers(-3000, 3000),                # seq, relative to the peer's next
    st.integers(-3000, 3000),                # ack, relative to our SND.UNA
    st.integers(0, 0xFFFF),                  # window (scaled by the peer's shift)
    st.binary(max_size=1600),
    st.floats(0, 5),                         # time that passes first
    st.booleans(),                           # the application reads
    st.integers(0, 4000),                    # the application writes this much
    st.sampled_from([None, "close", "abort", "snapshot", "nodelay"]),
    st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    st.lists(st.tuples(st.integers(-4000, 8000), st.integers(0, 3000)), max_size=4),  # SACK
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(opt_segment, max_size=30), st.sampled_from(["cubic", "newreno"]))
def test_random_segments_with_options_never_raise_and_every_queue_stays_bounded(steps, cc):
    from components.netstack.core.tcp import Connection
    from components.netstack.wire.tcp import ACK, SYN

    from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Peer
    from .test_options import send_opts

    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=OPT_CFG, congestion=cc)
    p = Peer(c)
    c.connect(0.0)
    send_opts(p, SYN | ACK, mss=1000, wscale=2, sack_permitted=True, timestamp=(100, 0), now=0.1)
    p.seq += 1
    assert c.ws_ok and c.ts_ok and c.sack_ok
    now = 0.1
    tsval = 100
    for (flags, dseq, dack, window, payload, dt, read, write, call, ts, sack) in steps:
        now += dt
        tsval += int(dt * 1000)
        c.poll(now)
        blocks = tuple((sq.add(c.snd_una, l), sq.add(c.snd_una, l + n)) for l, n in sack)
        send_opts(p, flags, seq=sq.add(p.seq, dseq), ack=sq.add(c.snd_una, dack), window=window,
                  payload=payload, now=now, timestamp=ts if ts is not None else (tsval, 0),
                  sack_blocks=blocks[:3])
        if flags & FIN == 0 and dseq == 0:
            p.seq = sq.add(p.seq, len(payload))
        if read:
            c.recv()
        try:
            if write:
                c.send(b"w" * write, now)
            if call == "close":
                c.close(now)
            elif call == "abort":
                c.abort(now)
            elif call == "nodelay":
                c.set_nodelay(not c.nodelay, now)
        except Exception as e:          # refused calls are the one error type
            assert type(e).__name__ == "StackError"
        if call == "snapshot":
            c = Connection.from_snapshot(c.snapshot(), 0.0)
            p.c = c
        c.take_segments()
        c.take_events()
        slack = 2 << c.rcv_wscale
        assert len(c.sndbuf) <= c.sndbuf_limit <= OPT_CFG.send_buffer_max
        assert len(c.rcvbuf) <= c.rcvbuf_limit + slack and c.rcvbuf_limit <= OPT_CFG.recv_buffer_max
        assert c.ooo_bytes <= c.rcvbuf_limit + slack
        assert c.ooo_bytes == sum(len(d) for d, _ in c.ooo.values())
        assert len(c.sb.blocks) <= c.sb.MAX_BLOCKS and 0 <= c.sb.sacked <= max(c.flight_size(), 0)
        assert len(c._sack_recent) <= 4 and c.cwnd >= 0
        d = c.next_deadline()
        assert d is None or d >= now - 5
