"""The virtio-net header (struct virtio_net_hdr_v1, virtio 1.x §5.1.6) that a TAP opened with
IFF_VNET_HDR puts before every frame, and that QEMU exchanges with a virtio-net guest.

It says what the sender left undone: a partial checksum to complete (NEEDS_CSUM), a checksum the
sender already verified (DATA_VALID), or a super-frame to cut into gso_size segments (gso_type).

qnet uses the 12-byte form (TUNSETVNETHDRSZ 12): with VIRTIO_F_VERSION_1 the header always
carries num_buffers, so 12 bytes is the layout a modern virtio-net guest and QEMU's vhost/TAP
path use, and one prefix layout serves every backend that may carry offloads. The 10-byte legacy
form parses and builds too (``size=10``). Fields are little-endian: virtio 1.x mandates it and
the TAP driver uses it unless TUNSETVNETBE was called (never, here).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._fast import trusted_constructor
from .errors import ParseError

VNET_HDR_LEN = 12          # what qnet negotiates: struct virtio_net_hdr_v1 / _mrg_rxbuf
VNET_HDR_LEN_LEGACY = 10   # struct virtio_net_hdr, the kernel's default size
VNET_HDR_SIZES = (VNET_HDR_LEN_LEGACY, VNET_HDR_LEN)

# flags
F_NEEDS_CSUM = 1   # checksum of [csum_start, end) goes at csum_start + csum_offset; the field
                   # holds the pseudo-header sum (not inverted)
F_DATA_VALID = 2   # the sender verified the checksum (receive side only)
F_RSC_INFO = 4     # coalesced by the device (VIRTIO_NET_F_RSC_EXT); treated as informational
_KNOWN_FLAGS = F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO

# gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3        # UFO (IP-fragmented UDP), removed from Linux 4.14: refused
GSO_TCPV6 = 4
GSO_UDP_L4 = 5     # USO: one UDP datagram per gso_size piece (Linux 6.2, TUN_F_USO4/6)
GSO_ECN = 0x80     # TCP only: the super-frame carries CWR, which goes on the first segment
_GSO_TYPES = (GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4)
_TCP_GSO = (GSO_TCPV4, GSO_TCPV6)

# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset [, num_buffers]
_HDR10 = struct.Struct("<BBHHHH")
_HDR12 = struct.Struct("<BBHHHHH")

# The header of a frame with nothing pending; compare a prefix with it to skip parsing.
VNET_HDR_NONE = bytes(VNET_HDR_LEN)
VNET_HDR_NONE_LEGACY = bytes(VNET_HDR_LEN_LEGACY)


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """A checked virtio-net header. Offsets are from the start of the Ethernet frame.

    Checked here: known flags and gso types, ECN only with TCP, a non-zero gso_size for a GSO
    frame, a checksum field that lies at or after csum_start. Checks that need the frame
    (offsets inside it, headers matching gso_type) are core/offload.py's.
    """

    flags: int
    gso_type: int      # including the ECN bit
    hdr_len: int       # a hint only: Linux's TAP fills in skb_headlen(), not the header length
    gso_size: int      # payload bytes per segment (the MSS for TCP)
    csum_start: int
    csum_offset: int
    num_buffers: int = 0  # 12-byte form only; a TAP reader has no use for it

    @classmethod
    def parse(cls, buf: bytes | memoryview, size: int = VNET_HDR_LEN) -> "VirtioNetHdr":
        """The header at the start of ``buf`` (a prefixed frame); ``size`` is 10 or 12."""
        if size == VNET_HDR_LEN:
            if len(buf) < VNET_HDR_LEN:
                raise ParseError(f"virtio_net: {len(buf)} bytes, shorter than the 12-byte header")
            flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers = \
                _HDR12.unpack_from(buf)
        elif size == VNET_HDR_LEN_LEGACY:
            if len(buf) < VNET_HDR_LEN_LEGACY:
                raise ParseError(f"virtio_net: {len(buf)} bytes, shorter than the 10-byte header")
            flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR10.unpack_from(buf)
            num_buffers = 0
        else:
            raise ParseError(f"virtio_net: header size {size}, not 10 or 12")
        if flags & ~_KNOWN_FLAGS:
            raise ParseError(f"virtio_net: unknown flags 0x{flags:02x}")
        base = gso_type & ~GSO_ECN
        if base not in _GSO_TYPES:
            raise ParseError("virtio_net: gso_type UDP (UFO) is not supported" if base == GSO_UDP
                             else f"virtio_net: unknown gso_type 0x{gso_type:02x}")
        if gso_type & GSO_ECN and base not in _TCP_GSO:
            raise ParseError(f"virtio_net: ECN bit on non-TCP gso_type 0x{gso_type:02x}")
        if base != GSO_NONE and gso_size == 0:
            raise ParseError("virtio_net: GSO frame with gso_size 0")
        if flags & F_NEEDS_CSUM and csum_offset & 1:
            # Every Internet checksum field (TCP 16, UDP 6, ICMP 2) is a word at an even offset.
            raise ParseError(f"virtio_net: odd csum_offset {csum_offset}")
        return _make_hdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)

    def build(self, size: int = VNET_HDR_LEN) -> bytes:
        if size == VNET_HDR_LEN:
            return _HDR12.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                               self.csum_start, self.csum_offset, self.num_buffers)
        if size == VNET_HDR_LEN_LEGACY:
            return _HDR10.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                               self.csum_start, self.csum_offset)
        raise ValueError(f"virtio_net: header size {size}, not 10 or 12")

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def data_valid(self) -> bool:
        return bool(self.flags & F_DATA_VALID)

    @property
    def gso_protocol(self) -> int:
        """gso_type without the ECN bit: GSO_NONE, GSO_TCPV4, GSO_TCPV6 or GSO_UDP_L4."""
        return self.gso_type & ~GSO_ECN

    @property
    def is_gso(self) -> bool:
        return self.gso_type != GSO_NONE

    @property
    def ecn(self) -> bool:
        return bool(self.gso_type & GSO_ECN)

    @property
    def checksum_trusted(self) -> bool:
        """The transport checksum need not be verified: the sender computed it from memory
        (partial, to be completed) or verified it (DATA_VALID)."""
        return bool(self.flags & (F_NEEDS_CSUM | F_DATA_VALID))


_make_hdr = trusted_constructor(VirtioNetHdr)

HDR_NONE = VirtioNetHdr(0, GSO_NONE, 0, 0, 0, 0)


def build_vnet_hdr(*, flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0,
                   gso_size: int = 0, csum_start: int = 0, csum_offset: int = 0,
                   num_buffers: int = 0, size: int = VNET_HDR_LEN) -> bytes:
    return VirtioNetHdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
                        num_buffers).build(size)


def split_prefixed(buf: bytes | memoryview, size: int = VNET_HDR_LEN
                   ) -> tuple[VirtioNetHdr, memoryview]:
    """A prefixed frame as (header, Ethernet frame view); the all-zero header skips parsing."""
    mv = memoryview(buf)
    if len(buf) >= size and mv[:size] == (VNET_HDR_NONE if size == VNET_HDR_LEN
                                          else VNET_HDR_NONE_LEGACY):
        return HDR_NONE, mv[size:]
    return VirtioNetHdr.parse(buf, size), mv[size:]
