"""Offloads a port may hand us or take from us: partial checksums and GSO super-frames.

A port with offloads (a TAP opened with IFF_VNET_HDR and TUNSETOFFLOAD, a virtio-net guest)
prefixes every frame with a virtio-net header (wire/virtio_net.py) that says what its sender
left undone. This module finishes that work when a frame goes where it cannot be left undone:

* ``complete_checksum`` fills in a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM);
* ``segment_gso`` cuts a TCP (v4/v6) or UDP_L4 super-frame into frames that fit an MTU, the way
  Linux's tcp_gso_segment / __udp_gso_segment do (net/ipv4/tcp_offload.c, udp_offload.c);
* ``treatment`` says, from the header and the destination, which of these a frame needs.

Pure functions over bytes: no state, no I/O. Malformed input raises ``OffloadError``, a
``ParseError``, so a caller that counts and drops on ParseError drops these too.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Iterable

from ..wire.checksum import internet_checksum, ones_complement_sum, pseudo_header_sum
from ..wire.errors import ParseError
from ..wire.ethernet import (ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
                             ETHERTYPE_VLAN, VLAN_TAG_LEN)
from ..wire.ipv4 import IPV4_HEADER_LEN, PROTO_TCP, PROTO_UDP
from ..wire.ipv6 import IPV6_HEADER_LEN
from ..wire.tcp import CWR, FIN, PSH, RST, SYN, TCP_HEADER_LEN, URG
from ..wire.udp import UDP_HEADER_LEN
from ..wire.virtio_net import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VirtioNetHdr

# The largest super-frame: a 65535-byte IP packet (the IPv4 total length and IPv6 payload
# length are 16 bits; RFC 2675 jumbograms / Linux BIG TCP are refused) behind a tagged header.
MAX_SUPER_FRAME = ETHERNET_HEADER_LEN + VLAN_TAG_LEN + IPV6_HEADER_LEN + 0xFFFF
# Bound on the work one frame can cause. 64 KiB cut at the RFC 9293 §3.7.1 default MSS of 536
# is 123 segments, so 128 admits every super-frame an ordinary TCP sender produces, and a
# hostile gso_size of 1 is refused instead of producing 65000 frames.
MAX_SEGMENTS = 128

# Names of the offloads a port can take, as the device interface carries them (the TAP
# backend reports the same names; TUN_F_* in linux/if_tun.h, VIRTIO_NET_F_GUEST_* in virtio).
OFFLOAD_NAMES = ("csum", "tso4", "tso6", "tso_ecn", "uso")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_pack_u16_into = _U16.pack_into
_pack_u32_into = _U32.pack_into

# Where each protocol keeps its checksum, from the start of its header.
_CSUM_OFFSET = {PROTO_TCP: 16, PROTO_UDP: 6}


class OffloadError(ParseError):
    """A virtio-net header and its frame do not agree, or exceed a bound; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"offload: {reason}")


# -- what a port accepts -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PortOffloads:
    """The offloads a port takes on transmit (what its peer will finish for us)."""

    csum: bool = False
    tso4: bool = False
    tso6: bool = False
    tso_ecn: bool = False
    uso: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "PortOffloads":
        """From the names a backend reports; names this version does not know are ignored."""
        have = set(names)
        return cls(*(n in have for n in OFFLOAD_NAMES))

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in OFFLOAD_NAMES if getattr(self, n))

    def takes(self, hdr: VirtioNetHdr) -> bool:
        """Whether a frame with this header may be sent to the port with the header unchanged."""
        if not self.csum:
            # TSO and USO need checksum offload (the TAP driver refuses them without TUN_F_CSUM).
            return not hdr.needs_csum and not hdr.is_gso
        proto = hdr.gso_protocol
        if proto == GSO_NONE:
            return True
        if proto == GSO_TCPV4:
            return self.tso4 and (self.tso_ecn or not hdr.ecn)
        if proto == GSO_TCPV6:
            return self.tso6 and (self.tso_ecn or not hdr.ecn)
        return proto == GSO_UDP_L4 and self.uso


NO_OFFLOADS = PortOffloads()


class Treatment(enum.Enum):
    PLAIN = "plain"                  # nothing pending: an ordinary frame
    DELIVER_WHOLE = "deliver-whole"  # local delivery takes it as one segment, checksum trusted
    PASS_THROUGH = "pass-through"    # the out-port takes it as it is, header and all
    COMPLETE_CHECKSUM = "complete-checksum"  # complete_checksum(), then send without a header
    SEGMENT = "segment"              # segment_gso(), then send the pieces without a header


def treatment(hdr: VirtioNetHdr, to: PortOffloads | None) -> Treatment:
    """How a frame that arrived with ``hdr`` must be handled; ``to`` is the out-port's offloads,
    or None for local delivery.

    Local delivery takes a TCP super-frame whole (it is one run of in-order bytes, as a GRO'd
    segment is in Linux) and trusts a partial or DATA_VALID checksum, because the sender
    computed it from memory (Linux: CHECKSUM_PARTIAL / CHECKSUM_UNNECESSARY). A UDP_L4
    super-frame is cut even for local delivery: each piece is a datagram of its own.
    """
    proto = hdr.gso_protocol
    if to is None:
        if proto == GSO_UDP_L4:
            return Treatment.SEGMENT
        return Treatment.DELIVER_WHOLE if (proto != GSO_NONE or hdr.checksum_trusted) \
            else Treatment.PLAIN
    if proto == GSO_NONE and not hdr.needs_csum:
        return Treatment.PLAIN
    if to.takes(hdr):
        return Treatment.PASS_THROUGH
    return Treatment.SEGMENT if proto != GSO_NONE else Treatment.COMPLETE_CHECKSUM


def tso_frame(frame: bytes, mtu: int, size: int) -> bytes:
    """A TCPv4 super-frame of ours (longer than the MTU, a plain Ethernet + option-less IPv4
    header) prefixed with the virtio-net header (of `size` bytes) that has the device cut it:
    GSO_TCPV4 at gso_size = what fits the MTU beside its headers, NEEDS_CSUM, and the TCP
    checksum field holding the pseudo-header sum the device completes per segment (as Linux's
    own TSO frames carry it, __tcp_v4_send_check). Raises OffloadError if it is not one."""
    if len(frame) < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN or \
            frame[12:14] != b"\x08\x00" or frame[14] != 0x45 or frame[23] != PROTO_TCP:
        raise OffloadError("not a plain TCPv4 frame")
    l4 = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN
    thl = (frame[l4 + 12] >> 4) * 4
    tcp_len = len(frame) - l4
    gso_size = mtu - IPV4_HEADER_LEN - thl
    if thl < TCP_HEADER_LEN or gso_size <= 0 or tcp_len - thl > MAX_SEGMENTS * gso_size:
        raise OffloadError("TCP header or size out of range")
    buf = bytearray(frame)
    psum = ones_complement_sum(bytes(buf[26:34]), PROTO_TCP + tcp_len)
    _pack_u16_into(buf, l4 + 16, psum)
    from ..wire.virtio_net import F_NEEDS_CSUM, build_vnet_hdr
    hdr = build_vnet_hdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4, hdr_len=l4 + thl,
                         gso_size=gso_size, csum_start=l4, csum_offset=16, size=size)
    return hdr + bytes(buf)


# -- partial checksums ----------------------------------------------------------------------

def complete_checksum(frame: bytes | memoryview, csum_start: int, csum_offset: int,
                      end: int | None = None) -> bytes:
    """``frame`` with the checksum at csum_start + csum_offset completed (NEEDS_CSUM).

    The sender stored the pseudo-header sum in the field, so the Internet checksum of
    frame[csum_start:end] is the final value (virtio 1.x §5.1.6.2; Linux skb_checksum_help).
    ``end`` defaults to the frame's end: zero Ethernet padding does not change the sum.
    """
    n = len(frame)
    if end is None:
        end = n
    pos = csum_start + csum_offset
    if not (0 <= csum_start and pos + 2 <= end <= n):
        raise OffloadError(f"checksum field at {csum_start}+{csum_offset} outside the "
                           f"{end}-byte frame")
    if csum_offset & 1:
        raise OffloadError(f"odd csum_offset {csum_offset}")
    mv = memoryview(frame)
    # skb_checksum_help: a result of 0 is sent as 0xFFFF (CSUM_MANGLED_0); for TCP they are the
    # same one's complement value, for UDP 0 would mean "no checksum" (RFC 768).
    csum = internet_checksum(mv[csum_start:end]) or 0xFFFF
    return b"".join((mv[:pos], _U16.pack(csum), mv[pos + 2:]))


# -- GSO ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Layout:
    l3: int          # offset of the IP header
    l4: int          # offset of the TCP/UDP header
    payload: int     # offset of the transport payload
    end: int         # end of the IP packet (any bytes after it are dropped)
    version: int
    proto: int
    src: bytes
    dst: bytes


def _layout(frame: memoryview, hdr: VirtioNetHdr) -> _Layout:
    """Locate and check the headers of a GSO super-frame against its virtio-net header."""
    n = len(frame)
    if n > MAX_SUPER_FRAME:
        raise OffloadError(f"super-frame of {n} bytes exceeds {MAX_SUPER_FRAME}")
    if hdr.hdr_len > n:
        raise OffloadError(f"hdr_len {hdr.hdr_len} exceeds the {n}-byte frame")
    if n < ETHERNET_HEADER_LEN:
        raise OffloadError(f"frame of {n} bytes has no Ethernet header")
    l3 = ETHERNET_HEADER_LEN
    ethertype = _U16.unpack_from(frame, 12)[0]
    if ethertype == ETHERTYPE_VLAN:
        if n < l3 + VLAN_TAG_LEN:
            raise OffloadError("truncated 802.1Q tag")
        ethertype = _U16.unpack_from(frame, 16)[0]
        l3 += VLAN_TAG_LEN
    proto_gso = hdr.gso_protocol
    want = PROTO_UDP if proto_gso == GSO_UDP_L4 else PROTO_TCP
    if ethertype == ETHERTYPE_IPV4 and proto_gso in (GSO_TCPV4, GSO_UDP_L4):
        if n < l3 + IPV4_HEADER_LEN:
            raise OffloadError("truncated IPv4 header")
        ver_ihl = frame[l3]
        ihl = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4 or ihl < IPV4_HEADER_LEN:
            raise OffloadError(f"bad IPv4 version/IHL byte 0x{ver_ihl:02x}")
        total = _U16.unpack_from(frame, l3 + 2)[0]
        if total < ihl or l3 + total > n:
            raise OffloadError(f"IPv4 total length {total} does not fit the {n}-byte frame")
        if _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            raise OffloadError("a fragment cannot be a GSO super-frame")
        proto = frame[l3 + 9]
        version, l4, end = 4, l3 + ihl, l3 + total
        src, dst = bytes(frame[l3 + 12:l3 + 16]), bytes(frame[l3 + 16:l3 + 20])
    elif ethertype == ETHERTYPE_IPV6 and proto_gso in (GSO_TCPV6, GSO_UDP_L4):
        if n < l3 + IPV6_HEADER_LEN:
            raise OffloadError("truncated IPv6 header")
        if frame[l3] >> 4 != 6:
            raise OffloadError(f"IPv6 version {frame[l3] >> 4}")
        plen = _U16.unpack_from(frame, l3 + 4)[0]
        if plen == 0 or l3 + IPV6_HEADER_LEN + plen > n:
            raise OffloadError(f"IPv6 payload length {plen} does not fit the {n}-byte frame")
        proto = frame[l3 + 6]  # extension headers are refused below, as not TCP/UDP
        version, l4, end = 6, l3 + IPV6_HEADER_LEN, l3 + IPV6_HEADER_LEN + plen
        src, dst = bytes(frame[l3 + 8:l3 + 24]), bytes(frame[l3 + 24:l3 + 40])
    else:
        raise OffloadError(f"gso_type 0x{hdr.gso_type:02x} on ethertype 0x{ethertype:04x}")
    if proto != want:
        raise OffloadError(f"gso_type 0x{hdr.gso_type:02x} on IP protocol {proto}")
    if want == PROTO_TCP:
        if l4 + TCP_HEADER_LEN > end:
            raise OffloadError("truncated TCP header")
        doff = (frame[l4 + 12] >> 4) * 4
        if doff < TCP_HEADER_LEN or l4 + doff > end:
            raise OffloadError(f"bad TCP data offset {doff}")
        payload = l4 + doff
    else:
        if l4 + UDP_HEADER_LEN > end:
            raise OffloadError("truncated UDP header")
        payload = l4 + UDP_HEADER_LEN
    if hdr.needs_csum and (hdr.csum_start != l4 or hdr.csum_offset != _CSUM_OFFSET[want]):
        raise OffloadError(f"csum_start/offset {hdr.csum_start}/{hdr.csum_offset} do not "
                           f"point at the {'TCP' if want == PROTO_TCP else 'UDP'} checksum")
    return _Layout(l3, l4, payload, end, version, proto, src, dst)


def segment_gso(frame: bytes | memoryview, hdr: VirtioNetHdr, mtu: int | None,
                max_segments: int = MAX_SEGMENTS) -> list[bytes]:
    """Cut a GSO super-frame (Ethernet, without its virtio-net header) into plain frames.

    Every piece carries the super-frame's Ethernet and IP headers (options included) with
    the IPv4 total length / IPv6 payload length of the piece, an IPv4 ident incremented per
    piece (virtio has no fixed-ident flag, so Linux increments too) and a fresh IPv4 header
    checksum, and a complete transport checksum whatever state the input's was in.

    TCP (RFC 9293): piece i starts at seq + i * size; FIN and PSH stay on the last piece
    only, CWR on the first only (tcp_gso_segment). ``size`` is gso_size, lowered so that the
    IP packet fits ``mtu``: smaller segments than the sender's MSS are valid TCP, where
    Linux's forwarding would instead drop and send "fragmentation needed".
    UDP_L4: each gso_size piece is a datagram of its own, so its size cannot change; if one
    does not fit ``mtu`` the frame is refused (``mtu=None`` cuts at gso_size regardless, for
    local delivery or for a caller that fragments afterwards).
    """
    if not hdr.is_gso:
        raise OffloadError("segment_gso on a frame with gso_type NONE")
    mv = memoryview(frame)
    lay = _layout(mv, hdr)
    is_tcp = lay.proto == PROTO_TCP
    l3_len = lay.l4 - lay.l3
    l4_len = lay.payload - lay.l4
    size = hdr.gso_size
    if mtu is not None:
        room = mtu - l3_len - l4_len
        if room < 1:
            raise OffloadError(f"MTU {mtu} leaves no room for payload after "
                               f"{l3_len + l4_len} bytes of headers")
        if size > room:
            if not is_tcp:
                raise OffloadError(f"UDP gso_size {size} does not fit MTU {mtu}")
            size = room
    data_len = lay.end - lay.payload
    count = max(1, -(-data_len // size))
    if count > max_segments:
        raise OffloadError(f"{count} segments of {size} bytes exceed the limit of {max_segments}")

    l2 = bytes(mv[:lay.l3])
    ip = bytearray(mv[lay.l3:lay.l4])
    l4 = bytearray(mv[lay.l4:lay.payload])
    v4 = lay.version == 4
    if v4:
        ident = _U16.unpack_from(ip, 4)[0]
        ip[10:12] = b"\0\0"
    pseudo = pseudo_header_sum(lay.src, lay.dst, lay.proto, 0)
    if is_tcp:
        seq = _U32.unpack_from(l4, 4)[0]
        flags = l4[13]
        if flags & (SYN | RST | URG):
            # SYN takes sequence space and URG's pointer is relative to one segment: neither
            # can be copied into every piece, and no TSO sender produces them.
            raise OffloadError(f"TCP flags 0x{flags:02x} cannot be segmented")
        csum_at = 16
    else:
        csum_at = 6
    out: list[bytes] = []
    start = lay.payload
    for i in range(count):
        stop = min(start + size, lay.end)
        chunk = mv[start:stop]
        seg_l4_len = l4_len + (stop - start)
        if v4:
            _pack_u16_into(ip, 2, l3_len + seg_l4_len)
            _pack_u16_into(ip, 4, (ident + i) & 0xFFFF)
            _pack_u16_into(ip, 10, 0)
            _pack_u16_into(ip, 10, internet_checksum(ip))
        else:
            _pack_u16_into(ip, 4, seg_l4_len)
        if is_tcp:
            _pack_u32_into(l4, 4, (seq + i * size) & 0xFFFFFFFF)
            f = flags
            if i:
                f &= ~CWR
            if i != count - 1:
                f &= ~(FIN | PSH)
            l4[13] = f
        else:
            _pack_u16_into(l4, 4, seg_l4_len)
        _pack_u16_into(l4, csum_at, 0)
        # The header is a whole number of 16-bit words, so the payload's sum can follow it.
        csum = internet_checksum(chunk, ones_complement_sum(l4, pseudo + seg_l4_len))
        if not is_tcp and csum == 0:
            csum = 0xFFFF  # RFC 768: zero would mean "no checksum"
        _pack_u16_into(l4, csum_at, csum)
        out.append(b"".join((l2, ip, l4, chunk)))
        start = stop
    return out


def to_plain_frames(frame: bytes | memoryview, hdr: VirtioNetHdr, mtu: int | None
                    ) -> list[bytes]:
    """The frames a port without offloads must get for ``frame``: segmented, or with its
    checksum completed, or the frame itself."""
    if hdr.is_gso:
        return segment_gso(frame, hdr, mtu)
    if hdr.needs_csum:
        return [complete_checksum(frame, hdr.csum_start, hdr.csum_offset)]
    return [bytes(frame)]
