"""The virtio-net header against an independent layout: ctypes structures transcribed from
linux/virtio_net.h (struct virtio_net_hdr and virtio_net_hdr_v1, little-endian)."""

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.netstack.wire import ParseError
from components.netstack.wire.virtio_net import (F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE,
                                                 GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
                                                 HDR_NONE, VNET_HDR_LEN, VNET_HDR_LEN_LEGACY,
                                                 VirtioNetHdr, build_vnet_hdr, split_prefixed)


class CHdr(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("flags", ctypes.c_uint8), ("gso_type", ctypes.c_uint8),
                ("hdr_len", ctypes.c_uint16), ("gso_size", ctypes.c_uint16),
                ("csum_start", ctypes.c_uint16), ("csum_offset", ctypes.c_uint16)]


class CHdrV1(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = CHdr._fields_ + [("num_buffers", ctypes.c_uint16)]


TSO_FIELDS = dict(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4 | GSO_ECN, hdr_len=66, gso_size=1448,
                  csum_start=34, csum_offset=16)


def test_struct_sizes_are_the_kernels():
    assert ctypes.sizeof(CHdr) == VNET_HDR_LEN_LEGACY == 10
    assert ctypes.sizeof(CHdrV1) == VNET_HDR_LEN == 12


@pytest.mark.parametrize("cls,size", [(CHdr, 10), (CHdrV1, 12)], ids=["legacy", "v1"])
def test_header_laid_out_by_c_struct_parses_to_same_fields(cls, size):
    extra = {"num_buffers": 1} if size == 12 else {}
    raw = bytes(cls(**TSO_FIELDS, **extra)) + b"frame"
    h = VirtioNetHdr.parse(raw, size)
    assert (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == \
        tuple(TSO_FIELDS.values())
    assert h.num_buffers == (1 if size == 12 else 0)
    assert h.needs_csum and not h.data_valid and h.is_gso and h.ecn
    assert h.gso_protocol == GSO_TCPV4
    assert h.build(size) == raw[:size]


def test_build_matches_c_struct_bytes():
    assert build_vnet_hdr(**TSO_FIELDS) == bytes(CHdrV1(**TSO_FIELDS))
    assert build_vnet_hdr(**TSO_FIELDS, size=10) == bytes(CHdr(**TSO_FIELDS))


def test_data_valid_header_is_trusted_but_not_gso():
    h = VirtioNetHdr.parse(build_vnet_hdr(flags=F_DATA_VALID))
    assert h.data_valid and h.checksum_trusted and not h.is_gso and not h.needs_csum


@pytest.mark.parametrize("fields,match", [
    (dict(flags=0x08), "unknown flags"),
    (dict(gso_type=GSO_UDP, gso_size=1000), "UFO"),
    (dict(gso_type=2, gso_size=1000), "unknown gso_type"),
    (dict(gso_type=GSO_UDP_L4 | GSO_ECN, gso_size=1000), "ECN"),
    (dict(gso_type=GSO_TCPV6), "gso_size 0"),
    (dict(flags=F_NEEDS_CSUM, csum_start=34, csum_offset=17), "odd csum_offset"),
], ids=["flags", "ufo", "type", "ecn-udp", "size0", "odd-offset"])
def test_nonsense_header_raises_parse_error(fields, match):
    with pytest.raises(ParseError, match=match):
        VirtioNetHdr.parse(build_vnet_hdr(**fields))


@pytest.mark.parametrize("size", [10, 12])
def test_short_buffer_raises_parse_error(size):
    with pytest.raises(ParseError, match="shorter"):
        VirtioNetHdr.parse(bytes(size - 1), size)


def test_header_size_other_than_10_or_12_raises_parse_error():
    with pytest.raises(ParseError, match="size 11"):
        VirtioNetHdr.parse(bytes(12), 11)


def test_split_prefixed_zero_header_skips_parsing_and_keeps_a_view():
    buf = bytes(12) + b"\xff" * 20
    h, frame = split_prefixed(buf)
    assert h is HDR_NONE and not h.is_gso and not h.checksum_trusted
    assert isinstance(frame, memoryview) and bytes(frame) == b"\xff" * 20
    h, frame = split_prefixed(build_vnet_hdr(**TSO_FIELDS) + b"abc")
    assert h.gso_size == 1448 and bytes(frame) == b"abc"
    h, frame = split_prefixed(bytes(10) + b"x", size=10)
    assert h is HDR_NONE and bytes(frame) == b"x"


@given(st.binary(min_size=0, max_size=16), st.sampled_from([10, 12]))
def test_random_bytes_raise_only_parse_error(raw, size):
    try:
        h = VirtioNetHdr.parse(raw, size)
    except ParseError:
        return
    assert h.build(size) == raw[:size]


@given(st.sampled_from([F_NEEDS_CSUM, F_DATA_VALID, 0]),
       st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_TCPV4 | GSO_ECN]),
       st.integers(0, 0xFFFF), st.integers(1, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 0x7FFF).map(lambda x: 2 * x))
def test_valid_headers_round_trip(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    h = VirtioNetHdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    assert VirtioNetHdr.parse(h.build()) == h
    assert VirtioNetHdr.parse(h.build(10), 10) == h
