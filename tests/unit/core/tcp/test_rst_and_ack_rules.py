"""RST, SYN and ACK validation: RFC 9293 §3.10.7 with RFC 5961."""

from __future__ import annotations

from components.netstack.core.tcp import State, TcpEvent, rst_for
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, build_tcp

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Peer
from .peers import established

S = State


def test_rst_exactly_at_rcv_nxt_resets_the_connection():
    c, p = established()
    p.send(ACK | PSH, payload=b"unread")
    p.seq += 6
    out = p.send(RST, seq=p.seq)
    assert out == [] and c.state is S.CLOSED
    assert c.take_events() == [TcpEvent.READABLE, TcpEvent.RESET, TcpEvent.CLOSED]
    assert c.recv() == b""                     # the queues are flushed


def test_rst_in_window_but_not_exact_gets_challenge_ack():
    c, p = established()
    out = p.send(RST, seq=sq.add(p.seq, 1))
    assert c.state is S.ESTABLISHED
    assert [(s.flags, s.seq, s.ack) for s in out] == [(ACK, c.snd_nxt, p.seq)]
    assert c.stats["challenge_acks"] == 1 and c.take_events() == []


def test_rst_outside_the_window_is_dropped_silently():
    c, p = established()
    for seq in (sq.add(p.seq, 65535), sq.add(p.seq, -1), sq.add(p.seq, 1 << 31)):
        assert p.send(RST, seq=seq) == []
    assert c.state is S.ESTABLISHED and c.stats["rst_out_of_window"] == 3


def test_syn_on_an_established_connection_gets_a_challenge_ack_and_never_resets():
    c, p = established()
    out = p.send(SYN, seq=p.seq, ack=0)        # in window
    out += p.send(SYN, seq=sq.add(p.seq, 100000), ack=0)   # outside: the ordinary ACK
    assert c.state is S.ESTABLISHED
    assert [s.flags for s in out] == [ACK, ACK] and all(s.ack == p.seq for s in out)
    assert c.stats["challenge_acks"] == 1


def test_ack_for_data_never_sent_is_answered_with_an_ack_and_the_segment_dropped():
    c, p = established()
    out = p.send(ACK | PSH, ack=sq.add(c.snd_nxt, 1), payload=b"data")
    assert [(s.flags, s.ack) for s in out] == [(ACK, p.seq)]   # RCV.NXT did not move
    assert c.recv() == b"" and c.stats["ack_unacceptable"] == 1


def test_ack_older_than_the_largest_window_is_dropped_with_an_ack():
    c, p = established()
    c.send(b"x" * 1000, 1.0)
    p.send(ACK, now=1.1)
    out = p.send(ACK | PSH, ack=sq.add(c.snd_una, -70000), payload=b"old")   # RFC 5961 §5.2
    assert [s.flags for s in out] == [ACK] and c.recv() == b""
    out = p.send(ACK | PSH, ack=sq.add(c.snd_una, -10), payload=b"ok")      # old but in range
    assert c.recv() == b"ok"


def test_data_outside_the_receive_window_gets_an_ack_and_is_not_delivered():
    c, p = established()
    out = p.send(ACK | PSH, seq=sq.add(p.seq, 70000), payload=b"far")
    out += p.send(ACK | PSH, seq=sq.add(p.seq, -10), payload=b"old")
    assert [(s.flags, s.ack) for s in out] == [(ACK, p.seq), (ACK, p.seq)]
    assert c.recv() == b"" and c.stats["unacceptable"] == 2


def test_a_segment_overlapping_rcv_nxt_is_trimmed_to_the_new_part():
    c, p = established()
    p.send(ACK | PSH, payload=b"hello")
    p.send(ACK | PSH, payload=b"hello world")
    assert c.recv() == b"hello world"
    assert c.rcv_nxt == sq.add(p.seq, 11)


def test_out_of_order_data_is_held_with_a_duplicate_ack_until_the_hole_fills():
    c, p = established()
    out = p.send(ACK | PSH, seq=sq.add(p.seq, 10), payload=b"later")
    out += p.send(ACK | PSH | FIN, seq=sq.add(p.seq, 15), payload=b"!")
    out += p.send(ACK | PSH, seq=sq.add(p.seq, 10), payload=b"later")     # duplicated
    assert [(s.flags, s.ack) for s in out] == [(ACK, p.seq)] * 3
    assert c.recv() == b"" and c.stats["out_of_order"] == 3 and c.ooo_bytes == 6
    out = p.send(ACK | PSH, payload=b"0123456789")                          # the hole
    assert c.recv() == b"0123456789later!" and c.state is S.CLOSE_WAIT
    assert [(s.flags, s.ack) for s in out] == [(ACK, sq.add(p.seq, 17))]
    assert c.ooo == {} and c.ooo_bytes == 0


def test_out_of_order_data_is_bounded_by_the_window():
    from components.netstack.core.tcp import TcpConfig
    c, p = established(TcpConfig(recv_buffer=1000, recv_buffer_max=1000))
    p.send(ACK | PSH, seq=sq.add(p.seq, 100), payload=b"a" * 2000)          # trimmed to 900
    p.send(ACK | PSH, seq=sq.add(p.seq, 50), payload=b"b" * 200)            # would pass 1000
    assert c.ooo_bytes == 900 and c.stats["out_of_order_dropped"] == 1
    assert c.stats["rcv_beyond_window_bytes"] == 1100


def test_syn_sent_answers_a_bad_ack_with_rst_and_ignores_unacceptable_rsts():
    c = _conn()
    p = Peer(c)
    c.connect(0.0)
    c.take_segments()
    bad = sq.add(c.iss, 5)
    out = p.send(ACK, ack=bad)
    assert [(s.flags, s.seq) for s in out] == [(RST, bad)]
    assert p.send(RST, seq=0, ack=0) == [] and c.state is S.SYN_SENT      # no ACK: ignored
    assert p.send(RST | ACK, seq=0, ack=bad) == [] and c.state is S.SYN_SENT
    assert p.send(ACK, ack=sq.add(c.iss, 1)) == [] and c.state is S.SYN_SENT  # neither SYN nor RST


def test_listen_answers_an_ack_with_rst_and_ignores_rst_and_plain_data():
    c = _conn()
    p = Peer(c)
    c.listen()
    out = p.send(ACK, ack=1234)
    assert [(s.flags, s.seq) for s in out] == [(RST, 1234)]
    assert p.send(RST, seq=1) == [] and p.send(PSH, seq=1, ack=0, payload=b"x") == []
    assert c.state is S.LISTEN


def test_a_retransmitted_syn_in_syn_received_gets_the_syn_ack_again():
    c = _conn()
    p = Peer(c)
    c.listen()
    first = p.send(SYN, ack=0, mss=1400)
    again = p.send(SYN, ack=0, mss=1400)
    assert [s.flags for s in first] == [SYN | ACK] and again == first
    assert c.state is S.SYN_RECEIVED


def test_closed_answers_with_a_rst_the_sender_accepts():
    syn = TcpSegment.parse(build_tcp(B_IP, A_IP, 999, 80, 100, 0, SYN, 1000, b"ab"), B_IP, A_IP)
    r = rst_for(syn)
    assert (r.src_port, r.dst_port, r.flags, r.seq, r.ack) == (80, 999, RST | ACK, 0, 103)
    data = TcpSegment.parse(build_tcp(B_IP, A_IP, 999, 80, 100, 777, ACK | FIN, 1000), B_IP, A_IP)
    r = rst_for(data)
    assert (r.flags, r.seq) == (RST, 777)
    rst = TcpSegment.parse(build_tcp(B_IP, A_IP, 999, 80, 100, 777, RST, 0), B_IP, A_IP)
    assert rst_for(rst) is None


def test_a_finished_connection_answers_like_closed():
    c, p = established()
    c.abort(1.0)
    assert [s.flags for s in c.take_segments()] == [RST]
    out = p.send(ACK | PSH, payload=b"late", ack=777)
    assert [(s.flags, s.seq) for s in out] == [(RST, 777)]


def test_fin_is_acknowledged_and_data_before_it_delivered_in_one_segment():
    c, p = established()
    out = p.send(ACK | PSH | FIN, payload=b"last words")
    assert c.state is S.CLOSE_WAIT and c.recv() == b"last words"
    assert [(s.flags, s.ack) for s in out] == [(ACK, sq.add(p.seq, 11))]
    assert c.take_events() == [TcpEvent.READABLE, TcpEvent.PEER_CLOSED]


def _conn():
    from components.netstack.core.tcp import Connection
    return Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
