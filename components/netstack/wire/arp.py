"""ARP for Ethernet/IPv4 only (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._fast import ipv4_address, trusted_mac
from .addr import MacAddr
from .errors import ParseError

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28

_HTYPE_ETHERNET = 1
_PTYPE_IPV4 = 0x0800
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sha: MacAddr
    spa: IPv4Address
    tha: MacAddr
    tpa: IPv4Address

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> "ArpPacket":
        # Trailing bytes are Ethernet padding (a 28-byte ARP rides in a 60-byte frame).
        if len(buf) < ARP_LEN:
            raise ParseError(f"arp: packet of {len(buf)} bytes is shorter than 28")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf)
        # RFC 826: a packet whose hardware/protocol type we do not speak is discarded.
        if htype != _HTYPE_ETHERNET or ptype != _PTYPE_IPV4 or hlen != 6 or plen != 4:
            raise ParseError(f"arp: not Ethernet/IPv4 (htype {htype}, ptype {ptype:#06x}, "
                             f"hlen {hlen}, plen {plen})")
        return cls(op, trusted_mac(sha), ipv4_address(spa), trusted_mac(tha), ipv4_address(tpa))

    def build(self) -> bytes:
        return _ARP.pack(_HTYPE_ETHERNET, _PTYPE_IPV4, 6, 4, self.op, self.sha,
                         self.spa.packed, self.tha, self.tpa.packed)
