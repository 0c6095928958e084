"""TCP segments and their options (RFC 9293, RFC 7323, RFC 2018)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ._fast import trusted_constructor
from .checksum import internet_checksum
from .errors import ParseError

PROTO_TCP = 6
TCP_HEADER_LEN = 20
TCP_MAX_OPTIONS_LEN = 40

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

# ports, seq, ack, data offset (high nibble), flags, window, checksum, urgent
_HEADER = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TS = struct.Struct("!II")
_SACK_BLOCK = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int  # the acknowledgment number; the ACK flag is `ack_flag`
    data_offset: int  # header length in bytes (the field times 4)
    flags: int
    window: int  # raw, unscaled
    checksum: int
    urgent: int
    mss: int | None
    wscale: int | None  # raw shift count; RFC 7323 §2.3 clamping to 14 is the receiver's job
    sack_permitted: bool
    sack_blocks: tuple[tuple[int, int], ...]
    timestamp: tuple[int, int] | None  # (TSval, TSecr)
    payload: bytes | memoryview

    @classmethod
    def parse(cls, buf: bytes | memoryview, src_ip: IPv4Address | IPv6Address,
              dst_ip: IPv4Address | IPv6Address, *, verify_checksum: bool = True) -> "TcpSegment":
        """Parse a segment; `verify_checksum=False` when the device validated it (offload)."""
        n = len(buf)
        if n < TCP_HEADER_LEN:
            raise ParseError(f"tcp: segment of {n} bytes is shorter than 20")
        (src_port, dst_port, seq, ack, offset_byte, flags, window, checksum,
         urgent) = _HEADER.unpack_from(buf)
        data_offset = (offset_byte >> 4) * 4
        if data_offset < TCP_HEADER_LEN:
            raise ParseError(f"tcp: data offset {data_offset // 4} is below 5")
        if data_offset > n:
            raise ParseError(f"tcp: data offset {data_offset} exceeds the {n}-byte segment")
        # RFC 9293 §3.1: the checksum covers pseudo-header, header and data.
        # int(addr) is congruent to the packed address's word sum: the pseudo-header sum.
        if verify_checksum and internet_checksum(buf, int(src_ip) + int(dst_ip) + PROTO_TCP + n) != 0:
            raise ParseError("tcp: checksum mismatch")
        mv = memoryview(buf)
        if data_offset == TCP_HEADER_LEN:
            return _make_segment(src_port, dst_port, seq, ack, data_offset, flags, window, checksum,
                                 urgent, None, None, False, (), None, mv[TCP_HEADER_LEN:])
        mss, wscale, sack_permitted, sack_blocks, timestamp = _parse_options(
            bytes(mv[TCP_HEADER_LEN:data_offset]))
        return _make_segment(src_port, dst_port, seq, ack, data_offset, flags, window, checksum,
                             urgent, mss, wscale, sack_permitted, sack_blocks, timestamp,
                             mv[data_offset:])

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def psh(self) -> bool:
        return bool(self.flags & PSH)

    @property
    def ack_flag(self) -> bool:
        return bool(self.flags & ACK)

    has_ack = ack_flag

    @property
    def urg(self) -> bool:
        return bool(self.flags & URG)

    @property
    def ece(self) -> bool:
        return bool(self.flags & ECE)

    @property
    def cwr(self) -> bool:
        return bool(self.flags & CWR)

    @property
    def ack_number(self) -> int:
        return self.ack

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: data plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN) // SYN + (self.flags & FIN)


_make_segment = trusted_constructor(TcpSegment)


def _parse_options(raw: bytes) -> tuple[int | None, int | None, bool, tuple[tuple[int, int], ...],
                                         tuple[int, int] | None]:
    mss = wscale = timestamp = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    i = 0
    n = len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError(f"tcp: option {kind} has no length byte")
        length = raw[i + 1]
        if length < 2 or i + length > n:
            raise ParseError(f"tcp: option {kind} has bad length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise ParseError(f"tcp: MSS option has length {length}, not 4")
            mss = _U16.unpack_from(raw, i + 2)[0]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise ParseError(f"tcp: window scale option has length {length}, not 3")
            wscale = raw[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise ParseError(f"tcp: SACK-permitted option has length {length}, not 2")
            sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise ParseError(f"tcp: SACK option has length {length}, not 2 + 8n")
            sack_blocks = tuple(_SACK_BLOCK.iter_unpack(raw[i + 2:i + length]))
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                raise ParseError(f"tcp: timestamp option has length {length}, not 10")
            timestamp = _TS.unpack_from(raw, i + 2)
        # RFC 9293 §3.1: unknown options are skipped by their length.
        i += length
    return mss, wscale, sack_permitted, sack_blocks, timestamp


def build_tcp_options(*, mss: int | None = None, wscale: int | None = None,
                      sack_permitted: bool = False, timestamp: tuple[int, int] | None = None,
                      sack_blocks: tuple[tuple[int, int], ...] = ()) -> bytes:
    """The options area, NOP-aligned like Linux emits it, padded to a multiple of 4."""
    parts: list[bytes] = []
    if mss is not None:
        parts.append(b"\x02\x04" + _U16.pack(mss))
    if timestamp is not None:
        ts = b"\x08\x0a" + _TS.pack(*timestamp)
        parts.append((b"\x04\x02" if sack_permitted else b"\x01\x01") + ts)
    elif sack_permitted:
        parts.append(b"\x01\x01\x04\x02")
    if wscale is not None:
        parts.append(b"\x01\x03\x03" + bytes((wscale,)))
    if sack_blocks:
        parts.append(b"\x01\x01\x05" + bytes((2 + 8 * len(sack_blocks),))
                     + b"".join(_SACK_BLOCK.pack(left, right) for left, right in sack_blocks))
    options = b"".join(parts)
    options += b"\0" * (-len(options) % 4)
    if len(options) > TCP_MAX_OPTIONS_LEN:
        raise ValueError(f"tcp: {len(options)} bytes of options exceed the 40-byte limit")
    return options


def build_tcp(src_ip: IPv4Address | IPv6Address, dst_ip: IPv4Address | IPv6Address,
              src_port: int, dst_port: int, seq: int, ack: int, flags: int, window: int,
              payload: bytes | memoryview = b"", *, mss: int | None = None,
              wscale: int | None = None, sack_permitted: bool = False,
              timestamp: tuple[int, int] | None = None,
              sack_blocks: tuple[tuple[int, int], ...] = (), urgent: int = 0) -> bytes:
    """A complete TCP segment with its checksum."""
    if mss is None and wscale is None and not sack_permitted and timestamp is None and not sack_blocks:
        options = b""
    else:
        options = build_tcp_options(mss=mss, wscale=wscale, sack_permitted=sack_permitted,
                                    timestamp=timestamp, sack_blocks=sack_blocks)
    data_offset = TCP_HEADER_LEN + len(options)
    header = _HEADER.pack(src_port, dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          (data_offset >> 2) << 4, flags, window, 0, urgent) + options
    length = data_offset + len(payload)
    csum = internet_checksum(b"".join((header, payload)),
                             int(src_ip) + int(dst_ip) + PROTO_TCP + length)
    return b"".join((header[:16], _U16.pack(csum), header[18:], payload))
