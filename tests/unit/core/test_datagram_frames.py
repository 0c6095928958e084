"""The datagram streams' frames (qnet.datagram 1.3): a fixed little-endian head with a family
byte, the addresses (4 or 16 bytes each), the device name, the payload; both directions
round-trip for both IP versions, and malformed frames are refused."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from components.netstack.dgram_client import (Received, decode_received, decode_send,
                                               encode_received, encode_send)
from ipc.errors import BadMessage
from ipc.protocols.netstack import DATAGRAM_RECV_HEAD, DATAGRAM_SEND_HEAD

G, P = IPv6Address("2001:db8::2"), IPv6Address("2001:db8::1")


def test_the_heads_are_fixed_little_endian_with_a_family_byte():
    assert DATAGRAM_RECV_HEAD.size == 10 and DATAGRAM_SEND_HEAD.size == 8
    f = encode_received(7, 4, int(IPv4Address("10.0.0.2")), 40000, int(IPv4Address("10.0.0.1")), 7,
                        b"p0", b"hello")
    assert f[:4] == (7).to_bytes(4, "little") and f[4] == 4
    assert f[10:14] == bytes([10, 0, 0, 2]) and f[14:18] == bytes([10, 0, 0, 1])
    assert f[18:20] == b"p0" and f[20:] == b"hello"


def test_received_frame_round_trips_with_addresses_built_only_when_asked():
    f = encode_received(7, 4, int(IPv4Address("10.0.0.2")), 40000, int(IPv4Address("10.0.0.1")), 7,
                        "p0".encode(), b"hello")
    d = decode_received(memoryview(f))
    assert d == Received(7, IPv4Address("10.0.0.2"), 40000, IPv4Address("10.0.0.1"), 7, "p0",
                         b"hello")
    assert (d.src, d.dst, d.src_addr) == (IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"),
                                          bytes([10, 0, 0, 2]))
    assert type(d.payload) is bytes


def test_an_ipv6_datagram_carries_16_byte_addresses_both_ways():
    f = encode_received(1 << 30, 6, int(G), 546, int(P), 547, b"p1", b"solicit")
    assert f[4] == 6 and f[10:26] == G.packed and f[26:42] == P.packed
    d = decode_received(f)
    assert (d.sid, d.src, d.src_port, d.dst, d.dst_port, d.device, d.payload) == (
        1 << 30, G, 546, P, 547, "p1", b"solicit")
    # The reply goes to the source as received: its 16 bytes, its text, its object or its int.
    for address in (d.src_addr, str(G), G, int(G)):
        s = encode_send(1 << 30, b"advertise", address, 546, "p1")
        assert decode_send(s) == (1 << 30, 6, int(G), 546, "p1", b"advertise")
    assert decode_send(encode_send(5, b"", "fe80::1", 546, None)) == (
        5, 6, int(IPv6Address("fe80::1")), 546, None, b"")


@pytest.mark.parametrize("address", ["10.1.2.3", IPv4Address("10.1.2.3"), 0x0A010203,
                                     bytes([10, 1, 2, 3])])
def test_send_frame_takes_every_address_form(address):
    f = encode_send(3, b"data", address, 53, "eth0")
    assert decode_send(f) == (3, 4, 0x0A010203, 53, "eth0", b"data")
    assert decode_send(encode_send(3, b"", address, 53, None)) == (3, 4, 0x0A010203, 53, None, b"")


@pytest.mark.parametrize("address", ["10.1.2", "127.1", "::1::", "x", -1, 1 << 128, b"abc",
                                     "fe80::1%eth0"])
def test_send_refuses_what_is_not_an_ip_address(address):
    with pytest.raises(ValueError):
        encode_send(1, b"", address, 53, None)


def test_malformed_frames_are_refused():
    good = encode_received(1, 4, 1, 2, 3, 4, b"dev", b"p")
    good6 = encode_received(1, 6, 1, 2, 3, 4, b"dev", b"p")
    for bad in (good[:9],                                   # shorter than the head
                good[:15],                                  # the addresses cut
                good[:19],                                  # the device name cut
                good6[:30],                                 # IPv6 addresses cut
                good[:4] + b"\x05" + good[5:],              # family 5
                good[:4] + b"\x06" + good[5:20],            # IPv4's bytes read as IPv6's
                b"\x00\x0c" + b"\x96" * 20):
        with pytest.raises(BadMessage):
            decode_received(bad)
    send4 = encode_send(1, b"", 1, 2, None)
    for bad in (b"\0" * 7,                                  # shorter than the head
                send4[:10],                                 # the destination cut
                send4[:4] + b"\x00" + send4[5:],            # family 0
                send4[:4] + b"\x06" + send4[5:],            # 4 bytes where 16 belong
                send4[:7] + b"\x09" + send4[8:] + b"ab"):   # the device name overruns
        with pytest.raises((ValueError, struct.error)):
            decode_send(bad)
    with pytest.raises(ValueError):
        decode_send(send4[:7] + b"\x02" + send4[8:] + b"\xff\xfe")   # not UTF-8


def test_netstack_sends_good_frames_of_both_versions_and_counts_the_rest():
    from types import SimpleNamespace

    from components.netstack.core import Stack, StackConfig
    from components.netstack.process import Netstack
    stack = Stack(StackConfig(strict=True, random_seed=1))
    sid4, sid6 = stack.udp_open(), stack.udp_open(6)
    stack.udp_bind(sid4, None, 0)
    stack.udp_bind(sid6, None, 0)
    r4, r6 = stack.udp_open(), stack.udp_open(6)
    stack.udp_bind(r4, None, 5000)
    stack.udp_bind(r6, None, 5000)
    me = SimpleNamespace(stack=stack, owners={sid4: "dhcpd", sid6: "dhcpd", r4: "other"},
                         counters={"dg_send_errors": 0})
    good = [encode_send(sid4, b"four", "127.0.0.1", 5000, None),
            encode_send(sid6, b"six", "::1", 5000, None)]
    bad = [encode_send(sid4, b"x", "::1", 5000, None),           # an IPv6 destination, IPv4 socket
           encode_send(sid6, b"x", "127.0.0.1", 5000, None),     # and the reverse
           encode_send(r4, b"x", "127.0.0.1", 5000, None),       # not the sender's socket
           good[0][:4] + b"\x05" + good[0][5:],                  # family 5
           good[1][:20],                                         # the destination cut
           b"\0" * 5]                                            # shorter than the head
    Netstack._on_dgram_batch(me, b"dhcpd", "send", good + bad)
    assert me.counters["dg_send_errors"] == len(bad)
    assert [d.payload for d in stack.udp_recv(r4, 10)] == [b"four"]
    # What reaches an owner's socket leaves in frames of its own version.
    sent = []
    me.owners[r6] = "dhcpd"
    me.dg_chan = SimpleNamespace(send_batch=lambda peer, stream, frames: sent.extend(frames) or True)
    me.counters["dg_undeliverable"] = 0
    Netstack._deliver_datagrams(me, {r6})
    (d,) = [decode_received(f) for f in sent]
    assert (d.sid, d.src, d.dst, d.dst_port, d.device, d.payload) == (
        r6, IPv6Address("::1"), IPv6Address("::1"), 5000, "lo", b"six")
