"""ICMPv6 messages (RFC 4443): echo, the four error types, and the pseudo-header checksum.

Neighbor Discovery and MLD ride on ICMPv6 too; their bodies are parsed in ndp.py from the
Icmpv6Message this module returns.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from ._fast import trusted_constructor
from .errors import ParseError
from .ipv6 import IPV6_HEADER_LEN, IPV6_MIN_MTU, NEXT_HEADER_ICMPV6, upper_layer_checksum

ICMPV6_DEST_UNREACH = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_PARAM_PROBLEM = 4
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

# Destination unreachable codes (RFC 4443 §3.1)
UNREACH_NO_ROUTE = 0
UNREACH_ADMIN_PROHIBITED = 1
UNREACH_BEYOND_SCOPE = 2
UNREACH_ADDRESS = 3
UNREACH_PORT = 4
UNREACH_POLICY_FAILED = 5
UNREACH_REJECT_ROUTE = 6

# Time exceeded codes (RFC 4443 §3.3)
TIME_EXCEEDED_HOP_LIMIT = 0
TIME_EXCEEDED_REASSEMBLY = 1

# Parameter problem codes (RFC 4443 §3.4, RFC 7112)
PARAM_PROBLEM_HEADER_FIELD = 0
PARAM_PROBLEM_NEXT_HEADER = 1
PARAM_PROBLEM_OPTION = 2
PARAM_PROBLEM_INCOMPLETE_CHAIN = 3

ICMPV6_HEADER_LEN = 8
# RFC 4443 §2.4 (c): an error carries as much of the invoking packet as fits without the
# error itself exceeding the minimum IPv6 MTU.
MAX_QUOTED = IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMPV6_HEADER_LEN

_HEADER = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_ECHO = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Icmpv6Message:
    type: int
    code: int
    checksum: int
    rest: bytes  # the 4 bytes after the checksum
    payload: bytes | memoryview  # everything after the first 8 bytes

    @classmethod
    def parse(cls, buf: bytes | memoryview, src: IPv6Address, dst: IPv6Address,
              verify_checksum: bool = True) -> "Icmpv6Message":
        n = len(buf)
        if n < ICMPV6_HEADER_LEN:
            # RFC 4861 messages may be shorter than 8 only if malformed; every ICMPv6 type has
            # at least type, code, checksum and 4 bytes of body.
            raise ParseError(f"icmpv6: message of {n} bytes is shorter than 8")
        # RFC 4443 §2.3: the checksum covers the message and the IPv6 pseudo-header.
        if verify_checksum and upper_layer_checksum(src, dst, NEXT_HEADER_ICMPV6, buf) != 0:
            raise ParseError("icmpv6: checksum mismatch")
        mv = memoryview(buf)
        return _make_message(buf[0], buf[1], (buf[2] << 8) | buf[3], bytes(mv[4:8]), mv[8:])

    @property
    def body(self) -> bytes:
        """The message after type, code and checksum (rest + payload)."""
        return self.rest + bytes(self.payload)

    @property
    def ident(self) -> int:
        return _ECHO.unpack(self.rest)[0]

    @property
    def seq(self) -> int:
        return _ECHO.unpack(self.rest)[1]

    @property
    def mtu(self) -> int:
        """The MTU of a Packet Too Big message (RFC 4443 §3.2)."""
        return _U32.unpack(self.rest)[0]

    @property
    def pointer(self) -> int:
        """The octet offset into the invoking packet of a Parameter Problem (RFC 4443 §3.4)."""
        return _U32.unpack(self.rest)[0]

    @property
    def is_error(self) -> bool:
        # RFC 4443 §2.1: error messages have types 0-127, informational ones 128-255.
        return self.type < 128


_make_message = trusted_constructor(Icmpv6Message)


def build_icmpv6(src: IPv6Address, dst: IPv6Address, type: int, code: int, rest: bytes,
                 payload: bytes | memoryview = b"") -> bytes:
    """An ICMPv6 message with its checksum over the pseudo-header of src and dst."""
    if len(rest) != 4:
        raise ValueError(f"icmpv6: rest of header must be 4 bytes, got {len(rest)}")
    body = b"".join((_HEADER.pack(type, code, 0), rest, payload))
    csum = upper_layer_checksum(src, dst, NEXT_HEADER_ICMPV6, body)
    return b"".join((body[:2], _U16.pack(csum), body[4:]))


def build_echo6(src: IPv6Address, dst: IPv6Address, type: int, ident: int, seq: int,
                payload: bytes | memoryview = b"") -> bytes:
    if type not in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
        raise ValueError(f"icmpv6: type {type} is not an echo")
    return build_icmpv6(src, dst, type, 0, _ECHO.pack(ident, seq), payload)


def build_icmpv6_error(src: IPv6Address, dst: IPv6Address, type: int, code: int,
                       invoking: bytes | memoryview, *, mtu: int = 0, pointer: int = 0) -> bytes:
    """An error message quoting the invoking packet, cut so the whole fits in 1280 bytes.

    `mtu` fills Packet Too Big, `pointer` Parameter Problem; the other types carry zeros.
    """
    if not 0 <= type < 128:
        raise ValueError(f"icmpv6: type {type} is not an error")
    if type == ICMPV6_PACKET_TOO_BIG:
        rest = _U32.pack(mtu)
    elif type == ICMPV6_PARAM_PROBLEM:
        rest = _U32.pack(pointer)
    else:
        rest = b"\0\0\0\0"  # RFC 4443 §3.1, §3.3: unused, zero on send
    return build_icmpv6(src, dst, type, code, rest, invoking[:MAX_QUOTED])
