"""Loss recovery and congestion control: fast retransmit and NewReno (RFC 5681, RFC 6582),
SACK (RFC 2018) with RFC 6675 recovery, CUBIC (RFC 9438), the pluggable interface."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import Connection, State, TcpConfig
from components.netstack.core.tcp import seq as sq
from components.netstack.core.tcp.congestion import Cubic
from components.netstack.wire.tcp import ACK, PSH, SYN

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Net, Peer, pair
from .test_options import send_opts
from .test_transfer import converse, payload

S = State
MSS = 1000


def sender(cc: str = "newreno", sack: bool = False, window: int = 65535) -> tuple[Connection, Peer]:
    """An established connection at A (nodelay, MSS 1000) whose peer offered SACK or not."""
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A,
                   config=TcpConfig(nodelay=True, congestion=cc, timestamps=False))
    p = Peer(c)
    c.connect(0.0)
    c.take_segments()
    send_opts(p, SYN | ACK, mss=MSS, window=window, sack_permitted=sack, now=0.1)
    p.seq += 1
    assert c.state is S.ESTABLISHED and c.sack_ok is sack
    c.take_events()
    c.cwnd = 10 * MSS
    return c, p


def at(c: Connection, k: int) -> int:
    """Sequence number of the k-th segment we sent."""
    return sq.add(c.iss, 1 + k * MSS)


def test_the_third_duplicate_ack_retransmits_the_first_segment_newreno():
    c, p = sender()
    c.send(b"x" * 10 * MSS, 1.0)
    assert len(c.take_segments()) == 10
    for i in range(2):
        out = p.send(ACK, ack=at(c, 0), now=1.1)
        assert out == []
    [rtx] = p.send(ACK, ack=at(c, 0), now=1.12)
    assert rtx.seq == at(c, 0) and len(rtx.payload) == MSS
    assert c.recovery == 1 and c.ssthresh == 5 * MSS and c.cwnd == 5 * MSS
    assert c.stats["fast_retransmits"] == 1 and c.stats["rto_expired"] == 0
    # a partial ACK (RFC 6582): the next hole goes out at once
    out = p.send(ACK, ack=at(c, 4), now=1.2)
    assert out[0].seq == at(c, 4) and c.recovery == 1
    # the full ACK ends recovery
    p.send(ACK, ack=at(c, 10), now=1.3)
    assert c.recovery == 0 and c.cwnd <= c.ssthresh


def test_duplicate_acks_release_new_data_limited_transmit():
    c, p = sender()
    c.cwnd = 4 * MSS
    c.send(b"x" * 10 * MSS, 1.0)
    assert len(c.take_segments()) == 4
    out = p.send(ACK, ack=at(c, 0), now=1.1)
    assert [s.seq for s in out] == [at(c, 4)]          # RFC 3042


def test_sack_is_negotiated_and_out_of_order_data_is_reported_most_recent_first():
    a = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=TcpConfig(quickack=0))
    a.connect(0.0)
    [syn] = a.take_segments()
    assert syn.sack_permitted
    p = Peer(a)
    send_opts(p, SYN | ACK, mss=1460, sack_permitted=True, now=0.1)
    p.seq += 1
    base = p.seq
    out = p.send(ACK | PSH, seq=sq.add(base, 1000), payload=b"b" * 100, now=0.2)
    assert out[-1].sack_blocks == ((sq.add(base, 1000), sq.add(base, 1100)),)
    out = p.send(ACK | PSH, seq=sq.add(base, 2000), payload=b"c" * 100, now=0.3)
    assert out[-1].sack_blocks == ((sq.add(base, 2000), sq.add(base, 2100)),
                                   (sq.add(base, 1000), sq.add(base, 1100)))
    out = p.send(ACK | PSH, seq=sq.add(base, 1100), payload=b"b" * 100, now=0.4)   # extends
    assert out[-1].sack_blocks == ((sq.add(base, 1000), sq.add(base, 1200)),
                                   (sq.add(base, 2000), sq.add(base, 2100)))
    out = p.send(ACK | PSH, seq=base, payload=b"a" * 1000, now=0.5)              # fills
    assert out[-1].sack_blocks == ((sq.add(base, 2000), sq.add(base, 2100)),)
    assert out[-1].ack == sq.add(base, 1200)


def test_sack_recovery_retransmits_only_the_holes():
    c, p = sender(sack=True)
    c.send(b"x" * 10 * MSS, 1.0)
    c.take_segments()
    # segments 0 and 3 lost: the peer SACKs 1-2 and 4-9
    out = []
    blocks = [(at(c, 1), at(c, 3))]
    out += send_opts(p, ACK, ack=at(c, 0), sack_blocks=tuple(blocks), now=1.1)
    blocks.insert(0, (at(c, 4), at(c, 6)))
    out += send_opts(p, ACK, ack=at(c, 0), sack_blocks=tuple(blocks), now=1.11)
    assert c.recovery == 1                  # IsLost(SND.UNA): > 2 SMSS SACKed above it
    blocks[0] = (at(c, 4), at(c, 10))
    out += send_opts(p, ACK, ack=at(c, 0), sack_blocks=tuple(blocks), now=1.12)
    rtx = [s.seq for s in out if sq.lt(s.seq, at(c, 10))]
    assert rtx == [at(c, 0), at(c, 3)]      # the two holes, once each
    assert c.sb.sacked == 8 * MSS
    send_opts(p, ACK, ack=at(c, 3), sack_blocks=((at(c, 4), at(c, 10)),), now=1.2)
    assert c.sb.blocks == [[at(c, 4), at(c, 10)]]
    send_opts(p, ACK, ack=at(c, 10), now=1.3)
    assert c.recovery == 0 and c.sb.sacked == 0 and c.stats["rto_expired"] == 0


def test_a_timeout_keeps_the_scoreboard_and_resends_only_unsacked_data():
    c, p = sender(sack=True)
    c.send(b"x" * 6 * MSS, 1.0)
    c.take_segments()
    send_opts(p, ACK, ack=at(c, 0), sack_blocks=((at(c, 2), at(c, 3)),), now=1.1)
    c.poll(c.rtx_deadline)
    assert c.recovery == 2 and c.cwnd == MSS
    assert [s.seq for s in c.take_segments()] == [at(c, 0)]
    out = send_opts(p, ACK, ack=at(c, 1), sack_blocks=((at(c, 2), at(c, 3)),), now=5.0)
    assert [s.seq for s in out] == [at(c, 1), at(c, 3)]      # 2 is SACKed: skipped


def test_cubic_reduces_to_seven_tenths_and_grows_back_toward_the_old_maximum():
    c, p = sender(cc="cubic")
    assert isinstance(c.cc, Cubic)
    c.send(b"x" * 10 * MSS, 1.0)
    c.take_segments()
    for _ in range(3):
        p.send(ACK, ack=at(c, 0), now=1.1)
    assert c.ssthresh == 7 * MSS and c.cc.w_max == 10
    p.send(ACK, ack=at(c, 10), now=1.2)
    start = c.cwnd
    # a minute of ACKs clocked one RTT apart: cwnd passes w_max (the convex region)
    t, k = 1.3, 10
    sizes = []
    while t < 40:
        n = max(c.cwnd // MSS, 1)
        c.send(b"y" * n * MSS, t)
        c.take_segments()
        k += n
        p.send(ACK, ack=at(c, k), now=t + 0.1)
        sizes.append(c.cwnd)
        t += 0.1
    assert start < 10 * MSS < max(sizes)
    # K: the time back to w_max from where congestion avoidance started (<= 7 segments)
    assert 0 < c.cc.k <= ((10 - 7) / 0.4) ** (1 / 3) + 1e-9


def test_congestion_control_is_chosen_per_connection_and_checked():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, congestion="newreno")
    assert c.congestion == "newreno" and type(c.cc).__name__ == "NewReno"
    assert Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A).congestion == "cubic"
    c.set_congestion("cubic")
    assert type(c.cc).__name__ == "Cubic"
    with pytest.raises(ValueError):
        Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, congestion="vegas")


@pytest.mark.parametrize("sack", [True, False])
@pytest.mark.parametrize("cc", ["cubic", "newreno"])
@pytest.mark.parametrize("seed", range(4))
def test_a_lossy_reordering_transfer_completes_byte_exact(cc, sack, seed):
    cfg = TcpConfig(congestion=cc, sack=sack)
    a, b = pair(cfg)
    b.listen()
    net = Net(a, b, seed=seed, loss=0.03, dup=0.02, reorder=0.1, delay=0.02)
    a.connect(net.now)
    a_data, b_data = payload(400_000, seed), payload(100_000, seed + 1)
    got_a, got_b = converse(net, a_data, b_data)
    assert got_b == a_data and got_a == b_data
    assert a.state is S.CLOSED and b.state is S.CLOSED
    assert a.stats["fast_retransmits"] > 0
    assert a.stats["fast_retransmits"] > a.stats["rto_expired"]
