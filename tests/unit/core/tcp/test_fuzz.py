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
