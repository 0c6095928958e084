"""IPv6 fixed header (RFC 8200 §3). Extension headers are left to the caller for now."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from ._fast import ipv6_address, trusted_constructor
from .errors import ParseError

IPV6_HEADER_LEN = 40
NEXT_HEADER_HOP_BY_HOP = 0
NEXT_HEADER_TCP = 6
NEXT_HEADER_UDP = 17
NEXT_HEADER_ROUTING = 43
NEXT_HEADER_FRAGMENT = 44
NEXT_HEADER_ICMPV6 = 58
NEXT_HEADER_NONE = 59

_HEADER = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class Ipv6Packet:
    src: IPv6Address
    dst: IPv6Address
    next_header: int
    hop_limit: int
    flow_label: int
    traffic_class: int
    payload_length: int
    payload: bytes | memoryview  # trimmed to payload_length

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> "Ipv6Packet":
        n = len(buf)
        if n < IPV6_HEADER_LEN:
            raise ParseError(f"ipv6: packet of {n} bytes is shorter than the 40-byte header")
        word, payload_length, next_header, hop_limit, src, dst = _HEADER.unpack_from(buf)
        if word >> 28 != 6:
            raise ParseError(f"ipv6: version {word >> 28}, not 6")
        if IPV6_HEADER_LEN + payload_length > n:
            # A zero length with a Jumbo Payload option (RFC 2675) is not supported.
            raise ParseError(f"ipv6: payload length {payload_length} exceeds the {n}-byte buffer")
        return _make_packet(ipv6_address(src), ipv6_address(dst), next_header, hop_limit, word & 0xFFFFF,
                            (word >> 20) & 0xFF, payload_length,
                            memoryview(buf)[IPV6_HEADER_LEN:IPV6_HEADER_LEN + payload_length])

    @property
    def dscp(self) -> int:
        return self.traffic_class >> 2

    @property
    def ecn(self) -> int:
        return self.traffic_class & 3


_make_packet = trusted_constructor(Ipv6Packet)


def build_ipv6(src: IPv6Address, dst: IPv6Address, next_header: int, payload: bytes | memoryview,
               *, hop_limit: int = 64, traffic_class: int = 0, flow_label: int = 0) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"ipv6: payload of {len(payload)} bytes needs a jumbogram")
    word = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _HEADER.pack(word, len(payload), next_header, hop_limit, src.packed, dst.packed) + payload
