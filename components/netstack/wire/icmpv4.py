"""ICMPv4 messages (RFC 792)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._fast import trusted_constructor
from .checksum import internet_checksum
from .errors import ParseError

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_REDIRECT = 5
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAM_PROBLEM = 12

UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_ADMIN_PROHIBITED = 13

TIME_EXCEEDED_TTL = 0
TIME_EXCEEDED_REASSEMBLY = 1

ICMPV4_HEADER_LEN = 8

_HEADER = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_ECHO = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Icmpv4Message:
    type: int
    code: int
    rest: bytes  # the 4 bytes after the checksum
    payload: bytes | memoryview

    @classmethod
    def parse(cls, buf: bytes | memoryview, verify_checksum: bool = True) -> "Icmpv4Message":
        n = len(buf)
        if n < ICMPV4_HEADER_LEN:
            raise ParseError(f"icmpv4: message of {n} bytes is shorter than 8")
        # RFC 792: the checksum covers the whole ICMP message.
        if verify_checksum and internet_checksum(buf) != 0:
            raise ParseError("icmpv4: checksum mismatch")
        mv = memoryview(buf)
        return _make_message(buf[0], buf[1], bytes(mv[4:8]), mv[8:])

    @property
    def ident(self) -> int:
        return _ECHO.unpack(self.rest)[0]

    @property
    def seq(self) -> int:
        return _ECHO.unpack(self.rest)[1]

    @property
    def mtu(self) -> int:
        """Next-hop MTU of a fragmentation-needed message (RFC 1191); 0 from old routers."""
        return _U16.unpack_from(self.rest, 2)[0]

    @property
    def pointer(self) -> int:
        """Octet pointer of a parameter-problem message."""
        return self.rest[0]

    @property
    def is_error(self) -> bool:
        return self.type in (ICMP_DEST_UNREACH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAM_PROBLEM)


_make_message = trusted_constructor(Icmpv4Message)


def build_icmpv4(type: int, code: int, rest: bytes, payload: bytes | memoryview) -> bytes:
    if len(rest) != 4:
        raise ValueError(f"icmpv4: rest of header must be 4 bytes, got {len(rest)}")
    body = b"".join((_HEADER.pack(type, code, 0), rest, payload))
    return b"".join((body[:2], _U16.pack(internet_checksum(body)), body[4:]))


def build_echo(type: int, ident: int, seq: int, payload: bytes | memoryview) -> bytes:
    return build_icmpv4(type, 0, _ECHO.pack(ident, seq), payload)


def build_frag_needed(mtu: int, original: bytes | memoryview) -> bytes:
    """Destination unreachable / fragmentation needed carrying the next-hop MTU (RFC 1191)."""
    return build_icmpv4(ICMP_DEST_UNREACH, UNREACH_FRAG_NEEDED, _ECHO.pack(0, mtu), original)
