"""Segments built by scapy (an independent builder) as the peer: handshake and RST."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP

from components.netstack.core.tcp import Connection, State, TcpEvent
from components.netstack.wire.tcp import TcpSegment

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A

S = State


def scapy_to_us(payload: bytes = b"", **fields) -> TcpSegment:
    raw = bytes(IP(src=str(B_IP), dst=str(A_IP)) / TCP(sport=B_PORT, dport=A_PORT, **fields) / payload)
    return TcpSegment.parse(raw[20:], B_IP, A_IP)


def to_scapy(out) -> TCP:
    return IP(bytes(IP(src=str(A_IP), dst=str(B_IP), proto=6) / out.build(A_IP, B_IP)))[TCP]


def test_passive_open_from_a_scapy_syn_then_rst_exactly_at_rcv_nxt():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    c.listen()
    c.segment_arrives(scapy_to_us(flags="S", seq=1000, window=29200,
                                  options=[("MSS", 1400), ("SAckOK", b""), ("WScale", 7)]), 0.0)
    [synack] = [to_scapy(s) for s in c.take_segments()]
    assert synack.flags == "SA" and synack.ack == 1001
    opts = dict(synack.options)
    # what the SYN offered and we do; no timestamps, which it did not offer (RFC 7323 §3.2)
    assert opts["MSS"] == 1460 and opts["WScale"] == 7 and "Timestamp" not in opts
    iss = synack.seq
    c.segment_arrives(scapy_to_us(flags="A", seq=1001, ack=iss + 1, window=29200), 0.05)
    assert c.state is S.ESTABLISHED and c.send_mss == 1400
    c.segment_arrives(scapy_to_us(b"hi", flags="PA", seq=1001, ack=iss + 1, window=29200), 0.06)
    [ack] = [to_scapy(s) for s in c.take_segments()]
    assert (ack.flags, ack.seq, ack.ack) == ("A", iss + 1, 1003) and c.recv() == b"hi"

    # RST in the window but not at RCV.NXT: a challenge ACK (RFC 5961 §3.2)
    c.segment_arrives(scapy_to_us(flags="R", seq=1500), 0.07)
    [challenge] = [to_scapy(s) for s in c.take_segments()]
    assert (challenge.flags, challenge.ack) == ("A", 1003) and c.state is S.ESTABLISHED
    c.segment_arrives(scapy_to_us(flags="R", seq=1003), 0.08)
    assert c.state is S.CLOSED and c.take_segments() == []
    assert c.take_events() == [TcpEvent.CONNECTED, TcpEvent.READABLE, TcpEvent.RESET, TcpEvent.CLOSED]


def test_active_open_answered_by_a_scapy_syn_ack_and_our_abort_rst_parses_in_scapy():
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A)
    c.connect(0.0)
    [syn] = [to_scapy(s) for s in c.take_segments()]
    assert syn.flags == "S" and dict(syn.options)["MSS"] == 1460
    c.segment_arrives(scapy_to_us(flags="SA", seq=7000, ack=syn.seq + 1, window=1000,
                                  options=[("MSS", 536)]), 0.1)
    [ack] = [to_scapy(s) for s in c.take_segments()]
    assert (ack.flags, ack.seq, ack.ack) == ("A", syn.seq + 1, 7001)
    c.abort(0.2)
    [rst] = [to_scapy(s) for s in c.take_segments()]
    assert (rst.flags, rst.seq) == ("R", syn.seq + 1)
