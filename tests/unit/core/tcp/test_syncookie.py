"""SYN cookies (syncookie.py) and Connection.from_cookie."""

from __future__ import annotations

from ipaddress import IPv6Address

from components.netstack.core.tcp import Connection, State, TcpConfig, TcpEvent, syncookie
from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_B, Net, on_wire, pair
from .test_transfer import converse, payload

S = State
CK = bytes(range(100, 132))


def test_a_cookie_checks_out_with_its_mss_rounded_down_to_the_table():
    isn = syncookie.make(CK, 1000.0, B_IP, B_PORT, A_IP, A_PORT, 777, 1400)
    assert syncookie.check(CK, 1000.0, B_IP, B_PORT, A_IP, A_PORT, isn + 1, 778) == 1300
    assert syncookie.check(CK, 1000.0, B_IP, B_PORT, A_IP, A_PORT, isn + 1, 778 + 5) is None
    assert syncookie.check(CK, 1000.0, B_IP, B_PORT + 1, A_IP, A_PORT, isn + 1, 778) is None
    assert syncookie.check(bytes(32), 1000.0, B_IP, B_PORT, A_IP, A_PORT, isn + 1, 778) is None
    v6a, v6b = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")
    isn = syncookie.make(CK, 5.0, v6b, 1, v6a, 2, 0xFFFFFFFF, 1440)
    assert syncookie.check(CK, 5.0, v6b, 1, v6a, 2, (isn + 1) & 0xFFFFFFFF, 0) == 1440


def test_a_cookie_is_good_for_one_to_two_counter_periods():
    isn = syncookie.make(CK, 64.0 * 10, B_IP, B_PORT, A_IP, A_PORT, 1, 1460)
    for t, ok in ((64.0 * 10 + 63, True), (64.0 * 11 + 63, True), (64.0 * 12, False),
                  (64.0 * 9, False)):
        assert (syncookie.check(CK, t, B_IP, B_PORT, A_IP, A_PORT, isn + 1, 2) == 1460) is ok


def test_options_ride_in_the_timestamp():
    for ws, sack in ((7, True), (None, False), (0, True), (14, False)):
        ts = syncookie.encode_options(123456789, ws, sack)
        assert ts <= 123456789 and syncookie.decode_options(ts) == (ws, sack)


def test_a_handshake_through_a_cookie_then_a_transfer_both_ways():
    cfg = TcpConfig()
    a, _ = pair(cfg)
    a.connect(0.0)
    [syn] = a.take_segments()
    syn_in = on_wire(syn, A_IP, B_IP)
    synack = syncookie.syn_ack(syn_in, CK, 0.05, B_IP, A_IP, isn_key=KEY_B, config=cfg)
    assert synack.wscale == 7 and synack.sack_permitted and synack.timestamp is not None
    a.segment_arrives(on_wire(synack, B_IP, A_IP), 0.1)
    assert a.state is S.ESTABLISHED
    a.send(b"first words", 0.1)
    ack, data = a.take_segments()
    ack_in = on_wire(data, A_IP, B_IP)          # the bare ACK was lost: the data brings it
    mss = syncookie.check(CK, 0.15, A_IP, A_PORT, B_IP, B_PORT, ack_in.ack, ack_in.seq)
    assert mss == 1460
    b = Connection.from_cookie(B_IP, B_PORT, A_IP, A_PORT, ack_in, mss, 0.15, isn_key=KEY_B,
                               config=cfg)
    assert b.state is S.ESTABLISHED and b.take_events()[:2] == [TcpEvent.CONNECTED, TcpEvent.READABLE]
    assert b.recv() == b"first words"
    assert b.ws_ok and b.sack_ok and b.ts_ok and b.snd_wscale == 7 and b.rto.samples == 1
    net = Net(a, b, now=0.15, loss=0.02, seed=3)
    for seg in b.take_segments():
        a.segment_arrives(on_wire(seg, B_IP, A_IP), 0.2)
    a_data, b_data = payload(200_000, 1), payload(100_000, 2)
    got_a, got_b = converse(net, a_data, b_data)
    assert got_b == a_data and got_a == b_data


def test_without_timestamps_a_cookie_connection_does_without_scaling_and_sack():
    cfg = TcpConfig(timestamps=False)
    a, _ = pair(cfg)
    a.connect(0.0)
    syn_in = on_wire(a.take_segments()[0], A_IP, B_IP)
    synack = syncookie.syn_ack(syn_in, CK, 0.0, B_IP, A_IP, isn_key=KEY_B, config=cfg)
    assert synack.wscale is None and not synack.sack_permitted and synack.timestamp is None
    a.segment_arrives(on_wire(synack, B_IP, A_IP), 0.1)
    [ack] = a.take_segments()
    ack_in = on_wire(ack, A_IP, B_IP)
    b = Connection.from_cookie(B_IP, B_PORT, A_IP, A_PORT, ack_in, 1460, 0.1, isn_key=KEY_B,
                               config=cfg)
    assert not (b.ws_ok or b.sack_ok or b.ts_ok) and a.ws_ok is False
