"""UDP sockets: bind, connect, ephemeral ports, broadcast, port unreachable, queue bounds."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from components.netstack.core import Datagram, IcmpErrorForSocket, StackError

from .util import (A, B, udp_checksum_ok, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, learn, make_stack, sent,
                   udp_frame)

ADDR = IPv4Address


def test_bound_socket_receives_datagram_with_addressing():
    s = make_stack()
    sid = s.udp_open()
    assert s.udp_bind(sid, None, 53) == (None, 53)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1111, 53, b"q"), 0.0)
    assert s.udp_readable() == {sid}
    assert s.udp_recv(sid, 8) == [Datagram(ADDR(A), 1111, ADDR(IP0), 53, "eth0", b"q")]
    assert s.udp_readable() == set()


def test_closed_port_gets_port_unreachable_quoting_the_datagram():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1111, 9), 0.0)
    (e,) = sent(s, "eth0")
    assert e[IP].src == IP0 and (e[ICMP].type, e[ICMP].code) == (3, 3)
    assert s.counters()["udp"]["rx_no_port"] == 1


def test_broadcast_to_closed_port_gets_no_error():
    s = make_stack()
    s.receive("eth0", udp_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "255.255.255.255", 68, 67), 0.0)
    s.receive("eth0", udp_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "10.0.0.255", 68, 67), 0.0)
    assert sent(s) == []


def test_bind_conflicts_and_specific_addresses():
    s = make_stack()
    a, b, c, d = (s.udp_open() for _ in range(4))
    s.udp_bind(a, ADDR(IP0), 7000)
    with pytest.raises(StackError) as e:
        s.udp_bind(b, None, 7000)             # wildcard overlaps a specific binding
    assert e.value.code == "address_in_use"
    s.udp_bind(b, ADDR(IP1), 7000)            # a different address is fine
    with pytest.raises(StackError) as e:
        s.udp_bind(c, ADDR("10.9.9.9"), 7001)
    assert e.value.code == "address_not_available"
    s.udp_bind(c, None, 7002, device="eth0")
    s.udp_bind(d, None, 7002, device="eth1")  # different devices may share a port
    s.receive("eth1", udp_frame(HOST_B, MAC1, B, IP1, 1, 7002), 0.0)
    assert s.udp_readable() == {d}
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP1, 1, 7000), 0.0)   # to IP1 via eth0
    assert s.udp_readable() == {b}


def test_ephemeral_ports_are_in_rfc6056_range_and_distinct():
    s = make_stack()
    ports = set()
    for _ in range(50):
        sid = s.udp_open()
        _, p = s.udp_bind(sid, None, 0)
        assert 49152 <= p <= 65535
        ports.add(p)
    assert len(ports) == 50


def test_ephemeral_exhaustion_is_an_error():
    s = make_stack(ephemeral_port_min=60000, ephemeral_port_max=60002)
    for _ in range(3):
        s.udp_bind(s.udp_open(), None, 0)
    with pytest.raises(StackError) as e:
        s.udp_bind(s.udp_open(), None, 0)
    assert e.value.code == "address_in_use"


def test_connected_socket_gets_only_its_peer():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    conn = s.udp_open()
    s.udp_bind(conn, ADDR(IP0), 8000)
    s.udp_connect(conn, ADDR(A), 9000)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 9000, 8000, b"peer"), 0.0)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 9001, 8000, b"other"), 0.0)
    assert [d.payload for d in s.udp_recv(conn, 10)] == [b"peer"]
    (err,) = sent(s, "eth0")                   # the stranger gets port unreachable
    assert (err[ICMP].type, err[ICMP].code) == (3, 3)


def test_most_specific_socket_wins_over_device_wildcard():
    s = make_stack()
    general, specific = s.udp_open(), s.udp_open()
    s.udp_bind(general, None, 8100, device="eth1")
    s.udp_bind(specific, ADDR(IP0), 8100, device="eth0")
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1, 8100), 0.0)
    assert s.udp_readable() == {specific}


def test_connect_autobinds_and_send_uses_connected_peer():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    sid = s.udp_open()
    s.udp_connect(sid, ADDR(A), 9)
    s.udp_sendto(sid, b"hi", None, None, 0.0)
    (f,) = sent(s, "eth0")
    assert f[IP].src == IP0 and f[UDP].dport == 9 and 49152 <= f[UDP].sport
    assert bytes(f[UDP].payload) == b"hi"
    assert udp_checksum_ok(f[IP])


def test_sendto_without_destination_or_route_raises():
    s = make_stack()
    sid = s.udp_open()
    with pytest.raises(StackError) as e:
        s.udp_sendto(sid, b"x", None, None, 0.0)
    assert e.value.code == "destination_required"
    with pytest.raises(StackError) as e:
        s.udp_sendto(sid, b"x", ADDR("8.8.8.8"), 53, 0.0)
    assert e.value.code == "no_route"
    with pytest.raises(StackError) as e:
        s.udp_sendto(sid, b"x" * 70000, ADDR(A), 53, 0.0)
    assert e.value.code == "message_too_long"


def test_broadcast_needs_so_broadcast():
    s = make_stack()
    sid = s.udp_open()
    with pytest.raises(StackError) as e:
        s.udp_sendto(sid, b"x", ADDR("255.255.255.255"), 67, 0.0, device="eth0")
    assert e.value.code == "permission_denied"
    s.udp_set_broadcast(sid, True)
    s.udp_sendto(sid, b"x", ADDR("10.0.0.255"), 67, 0.0)
    (f,) = sent(s, "eth0")
    assert f[Ether].dst == "ff:ff:ff:ff:ff:ff" and f[IP].dst == "10.0.0.255"


def test_dhcp_style_broadcast_from_unaddressed_device_uses_source_zero():
    s = make_stack()
    s.add_device("up0", mac=bytes.fromhex("020000000909"))
    sid = s.udp_open()
    s.udp_bind(sid, None, 68, device="up0")
    s.udp_set_broadcast(sid, True)
    s.udp_sendto(sid, b"DISCOVER", ADDR("255.255.255.255"), 67, 0.0, device="up0")
    (f,) = sent(s, "up0")
    assert f[Ether].dst == "ff:ff:ff:ff:ff:ff" and f[Ether].src == "02:00:00:00:09:09"
    assert f[IP].src == "0.0.0.0" and f[IP].dst == "255.255.255.255"
    assert (f[UDP].sport, f[UDP].dport) == (68, 67)
    # The server's broadcast answer reaches the socket although up0 has no address yet.
    offer = udp_frame("02:00:00:00:07:07", "ff:ff:ff:ff:ff:ff", "10.7.0.1", "255.255.255.255",
                      67, 68, b"OFFER")
    s.receive("up0", offer, 0.0)
    (d,) = s.udp_recv(sid, 4)
    assert d.payload == b"OFFER" and d.device == "up0"


def test_broadcast_is_delivered_to_every_matching_wildcard_socket():
    s = make_stack()
    a, b, c = s.udp_open(), s.udp_open(), s.udp_open()
    s.udp_bind(a, None, 5353, device="eth0")
    s.udp_bind(b, None, 5353, device="eth1")
    s.udp_bind(c, ADDR(IP0), 5354)
    s.receive("eth0", udp_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "255.255.255.255", 1, 5353), 0.0)
    s.receive("eth0", udp_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, "255.255.255.255", 1, 5354), 0.0)
    assert s.udp_readable() == {a}   # b is on eth1; c is bound to a unicast address


def test_receive_queue_is_bounded_with_drop_counter():
    s = make_stack(udp_recv_queue_datagrams=4)
    sid = s.udp_open()
    s.udp_bind(sid, None, 9999)
    for i in range(10):
        s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1, 9999, bytes([i])), 0.0)
    assert [d.payload for d in s.udp_recv(sid, 100)] == [bytes([i]) for i in range(4)]
    assert s.counters()["udp"]["rx_queue_full"] == 6
    assert {x["sid"]: x["dropped"] for x in s.sockets()}[sid] == 6


def test_socket_table_is_bounded():
    s = make_stack(max_sockets=3)
    for _ in range(3):
        s.udp_open()
    with pytest.raises(StackError) as e:
        s.udp_open()
    assert e.value.code == "limit"


def test_port_unreachable_to_own_socket_becomes_event():
    s = make_stack()
    sid = s.udp_open()
    s.udp_sendto(sid, b"x", ADDR("127.0.0.1"), 9, 0.0)
    ev = s.take_events()
    assert len(ev) == 1 and isinstance(ev[0], IcmpErrorForSocket)
    assert (ev[0].sid, ev[0].type, ev[0].code, ev[0].dst_port) == (sid, 3, 3, 9)


def test_loopback_udp_delivery_and_close():
    s = make_stack()
    rx, tx = s.udp_open(), s.udp_open()
    s.udp_bind(rx, ADDR("127.0.0.1"), 4444)
    s.udp_sendto(tx, b"loop", ADDR("127.0.0.1"), 4444, 0.0)
    (d,) = s.udp_recv(rx, 1)
    assert d.payload == b"loop" and d.device == "lo" and d.src == ADDR("127.0.0.1")
    s.udp_close(rx)
    with pytest.raises(StackError) as e:
        s.udp_recv(rx, 1)
    assert e.value.code == "not_found"
    again = s.udp_open()
    s.udp_bind(again, ADDR("127.0.0.1"), 4444)   # port free again after close


def test_bad_checksum_is_dropped_and_counted():
    s = make_stack()
    sid = s.udp_open()
    s.udp_bind(sid, None, 53)
    raw = bytearray(udp_frame(HOST_A, MAC0, A, IP0, 1, 53, b"abcd"))
    raw[-1] ^= 0xFF
    s.receive("eth0", bytes(raw), 0.0)
    assert s.udp_recv(sid, 1) == []
    assert s.counters()["udp"]["rx_bad"] == 1
