"""UDP datagrams (RFC 768) over IPv4 or IPv6."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ._fast import trusted_constructor
from .checksum import internet_checksum
from .errors import ParseError

PROTO_UDP = 17
UDP_HEADER_LEN = 8

_HEADER = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src_port: int
    dst_port: int
    length: int
    checksum: int
    payload: bytes | memoryview

    @classmethod
    def parse(cls, buf: bytes | memoryview, src_ip: IPv4Address | IPv6Address,
              dst_ip: IPv4Address | IPv6Address, *, verify_checksum: bool = True) -> "UdpDatagram":
        """Parse a datagram; `verify_checksum=False` when the device validated it (offload)."""
        n = len(buf)
        if n < UDP_HEADER_LEN:
            raise ParseError(f"udp: datagram of {n} bytes is shorter than 8")
        src_port, dst_port, length, checksum = _HEADER.unpack_from(buf)
        if length < UDP_HEADER_LEN or length > n:
            raise ParseError(f"udp: length field {length} does not fit the {n}-byte buffer")
        mv = memoryview(buf)[:length]
        if checksum == 0:
            # RFC 768: zero means no checksum was sent (IPv4 only).
            # RFC 8200 §8.1: over IPv6 a zero UDP checksum is invalid and is discarded.
            if src_ip.version == 6:
                raise ParseError("udp: zero checksum over IPv6")
        # int(addr) is congruent to the packed address's word sum: the pseudo-header sum.
        elif verify_checksum and internet_checksum(mv, int(src_ip) + int(dst_ip) + PROTO_UDP + length) != 0:
            raise ParseError("udp: checksum mismatch")
        return _make_datagram(src_port, dst_port, length, checksum, mv[UDP_HEADER_LEN:])


_make_datagram = trusted_constructor(UdpDatagram)


def build_udp(src_ip: IPv4Address | IPv6Address, dst_ip: IPv4Address | IPv6Address,
              src_port: int, dst_port: int, payload: bytes | memoryview) -> bytes:
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"udp: length {length} exceeds 65535")
    header = _HEADER.pack(src_port, dst_port, length, 0)
    csum = internet_checksum(b"".join((header, payload)),
                             int(src_ip) + int(dst_ip) + PROTO_UDP + length)
    # RFC 768: a computed zero is transmitted as all ones (zero means "no checksum").
    return b"".join((header[:6], _U16.pack(csum or 0xFFFF), payload))
