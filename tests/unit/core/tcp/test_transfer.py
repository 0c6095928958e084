"""Two Connections back to back through the test network: whole conversations."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import State, TcpConfig, TcpEvent
from components.netstack.wire.tcp import RST

from .net import A_IP, B_IP, Net, pair

S = State


def payload(n: int, salt: int) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def converse(net: Net, a_data: bytes, b_data: bytes, max_time: float = 3000.0) -> tuple[bytes, bytes]:
    """Both ends send all their data, then close; returns what each received."""
    a, b = net.a, net.b
    sent = {"a": 0, "b": 0}
    got = {"a": bytearray(), "b": bytearray()}
    closed = {"a": False, "b": False}

    def pump() -> bool:
        for name, c, data in (("a", a, a_data), ("b", b, b_data)):
            if c.state in (S.ESTABLISHED, S.CLOSE_WAIT):
                if sent[name] < len(data):
                    sent[name] += c.send(data[sent[name]:], net.now)
                elif not closed[name]:
                    c.close(net.now)
                    closed[name] = True
            got[name] += c.recv()
        return a.state is S.CLOSED and b.state is S.CLOSED

    net.run(pump, max_time=max_time)
    return bytes(got["a"]), bytes(got["b"])


def test_handshake_transfer_both_ways_and_close_on_a_clean_network():
    a, b = pair()
    b.listen()
    net = Net(a, b)
    a.connect(net.now)
    a_data, b_data = payload(200_000, 1), payload(150_000, 2)
    got_a, got_b = converse(net, a_data, b_data)
    assert got_b == a_data and got_a == b_data
    assert TcpEvent.CONNECTED in net.events["a"] and TcpEvent.CONNECTED in net.events["b"]
    assert TcpEvent.PEER_CLOSED in net.events["a"] and TcpEvent.PEER_CLOSED in net.events["b"]
    assert net.events["a"][-1] is TcpEvent.CLOSED and net.events["b"][-1] is TcpEvent.CLOSED
    assert a.stats["rto_expired"] == b.stats["rto_expired"] == 0
    assert not any(s.flags & RST for _, _, s in net.log)
    # The segments respect the MSS and the windows.
    # RFC 6691 §3: the MSS counts data only; with timestamps on every segment 12 bytes of it
    # go to the option (1448, as Linux), so a full segment is still 1480 bytes of TCP.
    assert max(len(s.payload) for _, _, s in net.log) == 1448
    assert max(len(s.build(A_IP, B_IP)) for _, _, s in net.log) == 1480


@pytest.mark.parametrize("seed", range(10))
def test_transfer_survives_loss_duplication_and_reordering(seed):
    a, b = pair(TcpConfig(send_buffer=16384, recv_buffer=8192, send_buffer_max=16384, recv_buffer_max=8192))
    b.listen()
    net = Net(a, b, seed=seed, loss=0.1, dup=0.05, reorder=0.2, delay=0.02)
    a.connect(net.now)
    a_data, b_data = payload(60_000, seed), payload(40_000, seed + 9)
    got_a, got_b = converse(net, a_data, b_data)
    assert got_b == a_data and got_a == b_data
    assert a.state is S.CLOSED and b.state is S.CLOSED
    assert sum(c.stats["rto_expired"] + c.stats["fast_retransmits"] for c in (a, b)) > 0
    assert TcpEvent.RESET not in net.events["a"] + net.events["b"]
    assert TcpEvent.TIMED_OUT not in net.events["a"] + net.events["b"]
    # no ACK war: an ACK answered only what was really unacceptable
    assert a.stats["unacceptable"] + b.stats["unacceptable"] < 60


def test_simultaneous_open_then_transfer_and_close():
    a, b = pair()
    net = Net(a, b, delay=0.05)
    a.connect(net.now)
    b.connect(net.now)                       # both active: the SYNs cross
    net.run(lambda: a.state is S.ESTABLISHED and b.state is S.ESTABLISHED, max_time=10)
    assert a.state is S.ESTABLISHED and b.state is S.ESTABLISHED
    assert a.stats["to_syn-received"] == b.stats["to_syn-received"] == 1
    assert a.stats["rto_expired"] == b.stats["rto_expired"] == 0
    got_a, got_b = converse(net, b"from a" * 100, b"from b" * 100)
    assert got_b == b"from a" * 100 and got_a == b"from b" * 100


def test_simultaneous_close_goes_through_closing_to_time_wait_on_both_sides():
    a, b = pair()
    b.listen()
    net = Net(a, b, delay=0.05)
    a.connect(net.now)
    net.run(lambda: a.state is S.ESTABLISHED and b.state is S.ESTABLISHED)
    a.close(net.now)
    b.close(net.now)                         # the FINs cross
    net.run(lambda: a.state is S.TIME_WAIT and b.state is S.TIME_WAIT, max_time=5)
    assert a.stats["to_closing"] == b.stats["to_closing"] == 1
    assert a.state is S.TIME_WAIT and b.state is S.TIME_WAIT
    start = net.now
    net.run(lambda: a.state is S.CLOSED and b.state is S.CLOSED)
    assert net.now - start == pytest.approx(60.0, abs=0.2)


def test_half_close_the_closer_keeps_receiving_until_the_peer_closes():
    a, b = pair()
    b.listen()
    net = Net(a, b)
    a.connect(net.now)
    net.run(lambda: b.state is S.ESTABLISHED)
    a.send(b"request", net.now)
    a.close(net.now)
    net.run(lambda: a.state is S.FIN_WAIT_2 and b.state is S.CLOSE_WAIT)
    assert b.recv() == b"request" and TcpEvent.PEER_CLOSED in net.events["b"]
    reply = payload(50_000, 3)
    got = bytearray()
    sent = 0

    def pump():
        nonlocal sent
        if sent < len(reply):
            sent += b.send(reply[sent:], net.now)   # CLOSE-WAIT still sends
        got.extend(a.recv())                        # FIN-WAIT-2 still receives
        return len(got) == len(reply)
    net.run(pump)
    assert bytes(got) == reply and a.state is S.FIN_WAIT_2
    b.close(net.now)
    net.run(lambda: b.state is S.CLOSED)
    assert a.state is S.TIME_WAIT


def test_connect_to_a_closed_port_is_refused_by_its_rst():
    a, b = pair()                            # b never listens: it answers as CLOSED
    net = Net(a, b)
    a.connect(net.now)
    net.run(lambda: a.state is S.CLOSED)
    assert net.events["a"] == [TcpEvent.RESET, TcpEvent.CLOSED]
    assert [s.flags for s in net.sent("b")] == [RST | 0x10]    # <SEQ=0><ACK=ISS+1><RST,ACK>
    assert net.sent("b")[0].ack == (net.sent("a")[0].seq + 1) & 0xFFFFFFFF


def test_info_reports_tcp_info_like_figures_in_plain_types():
    import msgpack
    a, b = pair()
    b.listen()
    net = Net(a, b, delay=0.02, loss=0.02, seed=1)
    a.connect(net.now)
    data = payload(300_000, 4)
    sent = 0

    def pump():
        nonlocal sent
        if a.state is S.ESTABLISHED and sent < len(data):
            sent += a.send(data[sent:], net.now)
        b.recv()
        return b.stats["bytes_received"] >= 200_000
    net.run(pump)
    i = a.info()
    msgpack.packb(i)
    assert i["state"] == "ESTABLISHED" and i["congestion"] == "cubic"
    assert set(i["options"]) >= {"wscale", "timestamps", "sack"}
    assert i["rtt"] > 0.03 and i["cwnd"] > 0 and i["snd_wscale"] == 7
    assert i["bytes_acked"] > 100_000 and i["delivery_rate"] > 0
    assert i["total_retrans"] >= 1 and i["send_queue"] == len(a.sndbuf)
    assert b.info()["bytes_received"] >= 200_000
