"""IPv4 headers with options (RFC 791)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._fast import ipv4_address, trusted_constructor
from .checksum import internet_checksum
from .errors import ParseError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

IPV4_HEADER_LEN = 20
IPV4_MAX_HEADER_LEN = 60

OPT_EOL = 0
OPT_NOP = 1
OPT_RECORD_ROUTE = 7
OPT_TIMESTAMP = 68
OPT_LSRR = 131
OPT_SSRR = 137
OPT_ROUTER_ALERT = 148

# version/IHL, TOS, total length, ident, flags/fragment offset, TTL, proto, checksum, src, dst
_HEADER = struct.Struct("!BBHHHBBH4s4s")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_pack_u16 = struct.Struct("!H").pack

_FLAG_DF = 0x4000
_FLAG_MF = 0x2000


@dataclass(frozen=True, slots=True)
class Ipv4Option:
    type: int
    data: bytes  # the bytes after type and length (empty for NOP)

    @property
    def copied(self) -> bool:
        # RFC 791: the copied flag says the option goes into every fragment.
        return bool(self.type & 0x80)

    @property
    def number(self) -> int:
        return self.type & 0x1F

    def to_bytes(self) -> bytes:
        if self.type in (OPT_EOL, OPT_NOP):
            return bytes((self.type,))
        return bytes((self.type, len(self.data) + 2)) + self.data


def parse_options(raw: bytes | memoryview) -> tuple[Ipv4Option, ...]:
    """Validate and split the options area; EOL ends the list, padding after it is ignored."""
    options: list[Ipv4Option] = []
    i = 0
    n = len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            options.append(Ipv4Option(OPT_NOP, b""))
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError(f"ipv4: option {kind} has no length byte")
        length = raw[i + 1]
        if length < 2 or i + length > n:
            raise ParseError(f"ipv4: option {kind} has bad length {length}")
        data = bytes(raw[i + 2:i + length])
        if kind in (OPT_RECORD_ROUTE, OPT_LSRR, OPT_SSRR):
            # RFC 791: pointer byte then a route of 4-byte addresses; pointer >= 4.
            if length < 3 or (length - 3) % 4 or data[0] < 4:
                raise ParseError(f"ipv4: route option {kind} malformed (length {length})")
        elif kind == OPT_TIMESTAMP:
            # RFC 791: length, pointer (>= 5), overflow/flags byte.
            if length < 4 or data[0] < 5:
                raise ParseError(f"ipv4: timestamp option malformed (length {length})")
        elif kind == OPT_ROUTER_ALERT:
            # RFC 2113: always 4 bytes.
            if length != 4:
                raise ParseError(f"ipv4: router alert option has length {length}, not 4")
        options.append(Ipv4Option(kind, data))
        i += length
    return tuple(options)


def options_for_fragment(options_bytes: bytes | memoryview) -> bytes:
    """The options a non-first fragment carries: only those with the copied flag (RFC 791).

    The input must be a valid options area (as in Ipv4Packet.header[20:]); the result is
    padded with EOL to a multiple of 4 bytes.
    """
    kept = b"".join(o.to_bytes() for o in parse_options(options_bytes) if o.copied)
    return kept + b"\0" * (-len(kept) % 4)


@dataclass(frozen=True, slots=True)
class Ipv4Packet:
    src: IPv4Address
    dst: IPv4Address
    proto: int
    ttl: int
    ident: int
    dont_fragment: bool
    more_fragments: bool
    frag_offset: int  # in bytes
    dscp: int
    ecn: int
    options: tuple[Ipv4Option, ...]
    header_len: int
    total_length: int
    payload: memoryview | bytes  # trimmed to total_length
    header: bytes  # raw header bytes incl. options

    @classmethod
    def parse(cls, buf: bytes | memoryview, verify_checksum: bool = True) -> "Ipv4Packet":
        n = len(buf)
        if n < IPV4_HEADER_LEN:
            raise ParseError(f"ipv4: packet of {n} bytes is shorter than the 20-byte header")
        (ver_ihl, tos, total_length, ident, frag, ttl, proto, _csum,
         src, dst) = _unpack_header(buf)
        if ver_ihl >> 4 != 4:
            raise ParseError(f"ipv4: version {ver_ihl >> 4}, not 4")
        header_len = (ver_ihl & 0x0F) * 4
        if header_len < IPV4_HEADER_LEN:
            raise ParseError(f"ipv4: IHL {header_len // 4} is below 5")
        if header_len > n:
            raise ParseError(f"ipv4: header length {header_len} exceeds the {n}-byte buffer")
        if total_length < header_len:
            raise ParseError(f"ipv4: total length {total_length} is below the header length {header_len}")
        if total_length > n:
            raise ParseError(f"ipv4: total length {total_length} exceeds the {n}-byte buffer")
        mv = memoryview(buf)
        header = bytes(mv[:header_len])
        # RFC 1122 §3.2.1.2: a datagram whose header checksum fails is silently discarded.
        if verify_checksum and internet_checksum(header) != 0:
            raise ParseError("ipv4: header checksum mismatch")
        options = parse_options(header[IPV4_HEADER_LEN:]) if header_len > IPV4_HEADER_LEN else ()
        return _make_packet(ipv4_address(src), ipv4_address(dst), proto, ttl, ident,
                            bool(frag & _FLAG_DF), bool(frag & _FLAG_MF), (frag & 0x1FFF) << 3,
                            tos >> 2, tos & 3, options, header_len, total_length,
                            mv[header_len:total_length], header)

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0

    @property
    def checksum(self) -> int:
        return (self.header[10] << 8) | self.header[11]

    @property
    def options_bytes(self) -> bytes:
        return self.header[IPV4_HEADER_LEN:]


_make_packet = trusted_constructor(Ipv4Packet)


def build_ipv4(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes | memoryview, *,
               ttl: int = 64, ident: int = 0, dont_fragment: bool = False,
               more_fragments: bool = False, frag_offset: int = 0, dscp: int = 0, ecn: int = 0,
               options: bytes = b"") -> bytes:
    """A complete IPv4 packet: total length and header checksum filled, options EOL-padded."""
    if options:
        options = bytes(options) + b"\0" * (-len(options) % 4)
    header_len = IPV4_HEADER_LEN + len(options)
    if header_len > IPV4_MAX_HEADER_LEN:
        raise ValueError(f"ipv4: {len(options)} bytes of options exceed the 40-byte limit")
    total_length = header_len + len(payload)
    if total_length > 0xFFFF:
        raise ValueError(f"ipv4: total length {total_length} exceeds 65535")
    if frag_offset & 7 or not 0 <= frag_offset <= 0xFFF8:
        raise ValueError(f"ipv4: fragment offset {frag_offset} is not a multiple of 8 in range")
    frag = (frag_offset >> 3) | (_FLAG_DF if dont_fragment else 0) | (_FLAG_MF if more_fragments else 0)
    header = _pack_header(0x40 | (header_len >> 2), (dscp << 2) | ecn, total_length, ident, frag,
                          ttl, proto, 0, src.packed, dst.packed)
    if options:
        header += options
    csum = internet_checksum(header)
    return b"".join((header[:10], _pack_u16(csum), header[12:], payload))
