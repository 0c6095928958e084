"""Ethernet II frames with an optional IEEE 802.1Q tag."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._fast import trusted_constructor, trusted_mac
from .addr import MacAddr
from .errors import ParseError

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100

ETHERNET_HEADER_LEN = 14
VLAN_TAG_LEN = 4

_ETHERTYPE = struct.Struct("!H")
_TAG = struct.Struct("!HH")  # TCI, inner ethertype
_pack_ethertype = _ETHERTYPE.pack
_unpack_ethertype = _ETHERTYPE.unpack_from
_unpack_tag = _TAG.unpack_from


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    dst: MacAddr
    src: MacAddr
    ethertype: int  # of the payload, i.e. the inner one when tagged
    payload: bytes | memoryview
    vlan_id: int | None = None
    vlan_pcp: int = 0

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> "EthernetFrame":
        n = len(buf)
        if n < ETHERNET_HEADER_LEN:
            raise ParseError(f"ethernet: frame of {n} bytes is shorter than the 14-byte header")
        mv = memoryview(buf)
        (ethertype,) = _unpack_ethertype(mv, 12)
        if ethertype == ETHERTYPE_VLAN:
            if n < ETHERNET_HEADER_LEN + VLAN_TAG_LEN:
                raise ParseError("ethernet: truncated 802.1Q tag")
            tci, ethertype = _unpack_tag(mv, 14)
            return _make_frame(trusted_mac(mv[0:6]), trusted_mac(mv[6:12]), ethertype, mv[18:],
                               tci & 0x0FFF, tci >> 13)
        return _make_frame(trusted_mac(mv[0:6]), trusted_mac(mv[6:12]), ethertype, mv[14:], None, 0)

    @property
    def header_len(self) -> int:
        return ETHERNET_HEADER_LEN + (VLAN_TAG_LEN if self.vlan_id is not None else 0)

    def build(self) -> bytes:
        if self.vlan_id is None:
            return build_ethernet(self.dst, self.src, self.ethertype, self.payload)
        return build_ethernet_vlan(self.dst, self.src, self.ethertype, self.payload,
                                   self.vlan_id, self.vlan_pcp)


_make_frame = trusted_constructor(EthernetFrame)


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes | memoryview) -> bytes:
    """An untagged Ethernet II frame; no minimum-length padding (the backends do not need it)."""
    return b"".join((dst, src, _pack_ethertype(ethertype), payload))


def build_ethernet_vlan(dst: bytes, src: bytes, ethertype: int, payload: bytes | memoryview,
                        vlan_id: int, vlan_pcp: int = 0) -> bytes:
    """An 802.1Q-tagged frame; `ethertype` is the inner one."""
    if not 0 <= vlan_id <= 0x0FFF or not 0 <= vlan_pcp <= 7:
        raise ValueError(f"bad VLAN tag: id {vlan_id}, pcp {vlan_pcp}")
    tag = _TAG.pack((vlan_pcp << 13) | vlan_id, ethertype)
    return b"".join((dst, src, _pack_ethertype(ETHERTYPE_VLAN), tag, payload))
