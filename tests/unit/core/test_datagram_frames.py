"""The datagram streams' frames (qnet.datagram 1.2): a fixed little-endian head, the device
name, the payload; both directions round-trip, and malformed frames are refused."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from components.netstack.dgram_client import (Received, decode_received, decode_send,
                                               encode_received, encode_send)
from ipc.errors import BadMessage


def test_received_frame_round_trips_with_addresses_built_only_when_asked():
    f = encode_received(7, int(IPv4Address("10.0.0.2")), 40000, int(IPv4Address("10.0.0.1")), 7,
                        "p0".encode(), b"hello")
    assert f[:4] == (7).to_bytes(4, "little") and f[4:8] == bytes([10, 0, 0, 2])
    d = decode_received(memoryview(f))
    assert d == Received(7, IPv4Address("10.0.0.2"), 40000, IPv4Address("10.0.0.1"), 7, "p0",
                         b"hello")
    assert (d.src, d.dst, d.src_addr) == (IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"),
                                          bytes([10, 0, 0, 2]))
    assert type(d.payload) is bytes


@pytest.mark.parametrize("address", ["10.1.2.3", IPv4Address("10.1.2.3"), 0x0A010203,
                                     bytes([10, 1, 2, 3])])
def test_send_frame_takes_every_address_form(address):
    f = encode_send(3, b"data", address, 53, "eth0")
    assert decode_send(f) == (3, 0x0A010203, 53, "eth0", b"data")
    assert decode_send(encode_send(3, b"", address, 53, None)) == (3, 0x0A010203, 53, None, b"")


@pytest.mark.parametrize("address", ["10.1.2", "127.1", "::1", "x", -1, 1 << 32, b"abc"])
def test_send_refuses_what_is_not_an_ipv4_address(address):
    with pytest.raises(ValueError):
        encode_send(1, b"", address, 53, None)


def test_malformed_frames_are_refused():
    good = encode_received(1, 1, 2, 3, 4, b"dev", b"p")
    for bad in (good[:10], good[:17] + b"de", b"\x00\x0c" + b"\x96" * 20):
        with pytest.raises(BadMessage):
            decode_received(bad)
    for bad in (b"\0" * 10, encode_send(1, b"", 1, 2, None)[:10] + b"\x09ab"):
        with pytest.raises((ValueError, struct.error)):
            decode_send(bad)
    with pytest.raises(ValueError):
        decode_send(encode_send(1, b"", 1, 2, None)[:10] + b"\x02\xff\xfe")   # not UTF-8
