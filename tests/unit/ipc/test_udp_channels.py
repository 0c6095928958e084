"""Datagram channels (qnet.udp): the heads' helpers and the launcher's SEQPACKET pairs, kept
apart from stream byte channels in what a netstack incarnation inherits."""
from __future__ import annotations

import json
import random
import socket
from types import SimpleNamespace

import pytest

from components.netstack.udp_binding import (EPHEMERAL_MAX, EPHEMERAL_MIN, parse_send,
                                             pick_ephemeral, recv_head)
from components.netstack.udp_heads import error_head, is_mapped, mapped, parse_send6, recv_head6
from ipc.protocols.udp import (UDP, UDP6_ERROR_HEAD, UDP6_MAX_PAYLOAD, UDP6_RECV_HEAD, UDP6_SEND_HEAD,
                               UDP_ERROR_HEAD, UDP_MAX_PAYLOAD, UDP_RECV_HEAD, UDP_SEND_HEAD)
from launcher.channels import DataChannels, make_stream_pair


def test_the_heads_have_the_sizes_the_client_library_expects():
    assert UDP_RECV_HEAD.size == 14 and UDP_SEND_HEAD.size == 10
    assert UDP.channel_kind == "seqpacket"


def test_a_send_message_parses_into_destination_marks_and_payload():
    msg = UDP_SEND_HEAD.pack(bytes([10, 0, 0, 2]), 53, -1, 0x28) + b"query"
    dst, port, ttl, tos, payload = parse_send(msg)
    assert (dst, port, ttl, tos, bytes(payload)) == (0x0A000002, 53, -1, 0x28, b"query")
    assert parse_send(UDP_SEND_HEAD.pack(bytes(4), 0, 5, -1))[:4] == (0, 0, 5, -1)


@pytest.mark.parametrize("msg", [
    b"", b"short",
    UDP_SEND_HEAD.pack(bytes(4), 53, -1, -1),                    # 0.0.0.0 with a port
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 0, -1, -1),         # an address without a port
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, 0, -1),         # ttl 0
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, 256, -1),
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, 256),
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, -2),
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, -1) + bytes(UDP_MAX_PAYLOAD + 1),
])
def test_a_malformed_send_message_is_refused(msg):
    with pytest.raises(ValueError):
        parse_send(msg)


def test_the_largest_payload_is_accepted():
    msg = UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, -1) + bytes(UDP_MAX_PAYLOAD)
    assert len(parse_send(msg)[4]) == UDP_MAX_PAYLOAD


def test_a_recv_head_carries_addresses_in_network_order():
    head = recv_head(0x0A630102, 5353, 0x0A630101, 63, 0x10, 2)
    assert UDP_RECV_HEAD.unpack(head) == (bytes([10, 99, 1, 2]), 5353, bytes([10, 99, 1, 1]), 63, 0x10, 2)


# -- an IPv6 socket's heads (qnet.udp 1.2) -------------------------------------------------------
LL = bytes.fromhex("fe800000000000000000000000000001")


def test_the_ipv6_heads_have_their_sizes_and_errors_are_shorter_than_any_datagram():
    assert (UDP6_RECV_HEAD.size, UDP6_SEND_HEAD.size, UDP6_ERROR_HEAD.size) == (38, 24, 20)
    assert UDP6_ERROR_HEAD.size < UDP6_RECV_HEAD.size and UDP_ERROR_HEAD.size < UDP_RECV_HEAD.size


def test_an_ipv6_send_message_parses_with_its_scope():
    msg = UDP6_SEND_HEAD.pack(LL, 547, 9, 0x28, 2) + b"solicit"
    dst, port, hops, tclass, scope, payload = parse_send6(msg)
    assert (dst, port, hops, tclass, scope, bytes(payload)) == (int.from_bytes(LL, "big"), 547, 9, 0x28, 2,
                                                                 b"solicit")
    assert parse_send6(UDP6_SEND_HEAD.pack(bytes(16), 0, -1, -1, 0))[:5] == (0, 0, -1, -1, 0)
    assert len(parse_send6(UDP6_SEND_HEAD.pack(LL, 1, -1, -1, 0) + bytes(UDP6_MAX_PAYLOAD))[5]) == UDP6_MAX_PAYLOAD


@pytest.mark.parametrize("msg", [
    b"", bytes(23),
    UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, -1) + b"an IPv4 head",   # too short for IPv6's
    UDP6_SEND_HEAD.pack(bytes(16), 53, -1, -1, 0),                  # :: with a port
    UDP6_SEND_HEAD.pack(LL, 0, -1, -1, 0),                          # an address without a port
    UDP6_SEND_HEAD.pack(LL, 53, 0, -1, 0),                          # hop limit 0
    UDP6_SEND_HEAD.pack(LL, 53, 256, -1, 0),
    UDP6_SEND_HEAD.pack(LL, 53, -1, 256, 0),
    UDP6_SEND_HEAD.pack(LL, 53, -1, -1, 0) + bytes(UDP6_MAX_PAYLOAD + 1),
])
def test_a_malformed_ipv6_send_message_is_refused(msg):
    with pytest.raises(ValueError):
        parse_send6(msg)


def test_ipv4_reaches_an_ipv6_socket_as_mapped_addresses():
    a4 = 0x0A630102                                 # 10.99.1.2
    assert mapped(a4) == int.from_bytes(bytes(10) + b"\xff\xff" + bytes([10, 99, 1, 2]), "big")
    assert is_mapped(mapped(a4)) and not is_mapped(int.from_bytes(LL, "big")) and not is_mapped(a4)
    head = recv_head6(mapped(a4), 5353, mapped(0x0A630101), 63, 0, 2)
    src, sport, dst, hops, tclass, ifindex = UDP6_RECV_HEAD.unpack(head)
    assert src[:12] == bytes(10) + b"\xff\xff" and src[12:] == bytes([10, 99, 1, 2])
    assert (sport, hops, ifindex) == (5353, 63, 2)
    assert UDP6_ERROR_HEAD.unpack(error_head(6, mapped(a4), 9, 3, 3))[1:] == (9, 3, 3)
    assert UDP_ERROR_HEAD.unpack(error_head(4, a4, 9, 3, 3)) == (bytes([10, 99, 1, 2]), 9, 3, 3)


def test_an_ephemeral_port_is_in_linuxs_range_and_free():
    rng = random.Random(1)
    used = set(range(EPHEMERAL_MIN, EPHEMERAL_MAX))
    assert pick_ephemeral(used, rng) == EPHEMERAL_MAX
    used.add(EPHEMERAL_MAX)
    assert pick_ephemeral(used, rng) is None
    assert EPHEMERAL_MIN <= pick_ephemeral(set(), rng) <= EPHEMERAL_MAX


def test_a_datagram_channel_keeps_message_edges_and_has_room_for_big_datagrams():
    a, b = make_stream_pair("seqpacket")
    try:
        assert a.type == socket.SOCK_SEQPACKET
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 212992
        big = UDP_SEND_HEAD.pack(bytes(4), 0, -1, -1) + bytes(UDP_MAX_PAYLOAD)
        b.send(b"one")
        b.send(big)
        assert a.recv(70000) == b"one" and len(a.recv(70000)) == len(big)
    finally:
        a.close()
        b.close()


class _Graph:
    transport = {"data": "socketpair"}

    def provider_of(self, protocol):
        return "netstack"


def test_an_incarnation_inherits_datagram_channels_by_protocol_and_stream_ones_as_before():
    dc = DataChannels(_Graph())
    try:
        [(tcp_id, tcp_end)] = dc.new_streams("qnet.tcp", 1)
        [(udp_id, udp_end)] = dc.new_streams("qnet.udp", 1)
        assert tcp_end.type == socket.SOCK_STREAM and udp_end.type == socket.SOCK_SEQPACKET
        spec = SimpleNamespace(name="netstack", args={}, uses=[],
                               provides=[("qnet.tcp", None), ("qnet.udp", None)])
        env, fds, ctl = dc.for_spawn(SimpleNamespace(name="netstack", spec=spec))
        chans = json.loads(env["QNET_CHANNELS"])
        assert set(chans["streams"]) == {tcp_id}     # what tcp_binding adopts: stream channels only
        assert set(chans["streams_of"]["qnet.udp"]) == {udp_id}
        assert set(chans["streams_of"]["qnet.tcp"]) == {tcp_id}
        assert dc.status()["datagram_channels"] == 1 and dc.status()["byte_channels"] == 1
        for s in ctl:
            s.close()
        tcp_end.close()
        udp_end.close()
    finally:
        dc.close_all()
