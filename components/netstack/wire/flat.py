"""Flat access to the commonest frame shape: Ethernet II carrying IPv4 without options.

The per-frame fast path reads every field of both headers with one struct call, addresses
as ints (building `ipaddress` objects costs more than the rest of the parse), and writes a
forwarded frame or an echo reply by patching a copy of the received frame in place, with
the checksums adjusted incrementally (RFC 1624) rather than recomputed. Frames of any other
shape (VLAN tags, options, fragments, bad lengths or checksums) are not "plain": the checked
parsers (EthernetFrame, Ipv4Packet) take them.
"""

from __future__ import annotations

import struct

from .checksum import checksum_adjust, internet_checksum

ETH_IPV4_LEN = 34           # 14 bytes of Ethernet, 20 of IPv4

# dst MAC, src MAC, ethertype | version/IHL, TOS, total length, ident, flags/fragment offset,
# TTL, protocol, header checksum, src, dst
_ETH_IPV4 = struct.Struct("!6s6sHBBHHHBBHII")
_unpack = _ETH_IPV4.unpack_from
_pack_eth_ipv4 = _ETH_IPV4.pack_into
_pack_macs = struct.Struct("!6s6s").pack_into
_TTL_PROTO_CSUM = struct.Struct("!BBH")
_pack_ttl = _TTL_PROTO_CSUM.pack_into
_ICMP_HEAD = struct.Struct("!BBH")      # type, code, checksum
_pack_icmp_head = _ICMP_HEAD.pack_into
_unpack_icmp_head = _ICMP_HEAD.unpack_from


def parse_plain_ipv4(buf: bytes | bytearray | memoryview) -> tuple | None:
    """(dst MAC, src MAC, TOS, total length, ident, flags, TTL, protocol, header checksum,
    src, dst) of an untagged Ethernet II frame carrying an option-less, unfragmented IPv4
    header with a good checksum and a total length that fits the frame; None otherwise.
    MACs are bytes, addresses ints; `flags` holds DF (the offset and MF are zero)."""
    n = len(buf)
    if n < ETH_IPV4_LEN:
        return None
    dmac, smac, ethertype, ver_ihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _unpack(buf)
    if ethertype != 0x0800 or ver_ihl != 0x45 or frag & 0x3FFF or total < 20 or total + 14 > n:
        return None
    # RFC 1071: a good header's words, checksum included, sum to 0xFFFF (one's complement).
    # An int is congruent mod 0xFFFF to the sum of its 16-bit words (2**16 == 1), so the
    # 32-bit addresses go in whole, and the header is good iff the total is 0 mod 0xFFFF
    # (it is never 0 itself: version/IHL alone adds 0x4500).
    if (0x4500 + tos + total + ident + frag + (ttl << 8) + proto + csum + src + dst) % 0xFFFF:
        return None
    return dmac, smac, tos, total, ident, frag, ttl, proto, csum, src, dst


def icmp_head(buf: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(type, code, checksum) of the ICMP message after a plain Ethernet + IPv4 header."""
    return _unpack_icmp_head(buf, ETH_IPV4_LEN)


def icmp_checksum_ok(buf: bytes | bytearray | memoryview, total_length: int) -> bool:
    """RFC 792: the checksum covers the whole ICMP message (to the IPv4 total length)."""
    return internet_checksum(buf[ETH_IPV4_LEN:14 + total_length]) == 0


def forward_in_place(buf: bytearray, dst_mac: bytes, src_mac: bytes, ttl: int, proto: int,
                     checksum: int) -> None:
    """Readdress a plain frame to the next hop and decrement its TTL (RFC 1812 §5.3.1).

    `ttl`, `proto` and `checksum` are the received values. The header checksum is updated
    by RFC 1624 eqn. 3 from the one changed word (TTL, protocol), which gives the same value
    as a full recomputation (both land in 0..0xFFFE) when the received checksum was good.
    """
    _pack_macs(buf, 0, dst_mac, src_mac)
    word = (ttl << 8) | proto
    _pack_ttl(buf, 22, ttl - 1, proto, checksum_adjust(checksum, word, word - 0x100))


def echo_reply_in_place(buf: bytearray, dst_mac: bytes, src_mac: bytes, total_length: int,
                        ident: int, ttl: int, src: int, dst: int, request_code: int,
                        request_checksum: int) -> None:
    """Turn a copy of a plain echo request into its reply (RFC 792), request data kept.

    A fresh IPv4 header (TOS 0, no flags, `ident`, `ttl`, our `src`, the requester's `dst`),
    as an originated datagram has; the ICMP type/code word becomes 0/0 and its checksum is
    adjusted for that one word (RFC 1624 eqn. 3).
    """
    total = 0x4500 + total_length + ident + (ttl << 8) + 1 + src + dst
    folded = total % 0xFFFF   # as internet_checksum: a multiple of 0xFFFF has checksum 0
    _pack_eth_ipv4(buf, 0, dst_mac, src_mac, 0x0800, 0x45, 0, total_length, ident, 0, ttl, 1,
                   0xFFFF - folded if folded else 0, src, dst)
    csum = checksum_adjust(request_checksum, 0x0800 | request_code, 0)
    if csum == 0:
        # Zero has two forms: a full computation gives 0xFFFF for an all-zero message (zero
        # ident, sequence and data) and 0 otherwise; the update cannot tell which. Rare
        # enough to settle by computing it.
        _pack_icmp_head(buf, ETH_IPV4_LEN, 0, 0, 0)
        csum = internet_checksum(buf[ETH_IPV4_LEN:14 + total_length])
    _pack_icmp_head(buf, ETH_IPV4_LEN, 0, 0, csum)


_UDP_HEAD = struct.Struct("!HHHH")     # source port, destination port, length, checksum
_unpack_udp_head = _UDP_HEAD.unpack_from
# The whole header stack of an originated datagram: Ethernet, IPv4 (no options), UDP.
_ETH_IPV4_UDP = struct.Struct("!6s6sHBBHHHBBHIIHHHH")
_pack_eth_ipv4_udp = _ETH_IPV4_UDP.pack
_from_bytes = int.from_bytes


def udp_head(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """(source port, destination port, length, checksum) after a plain Ethernet + IPv4 header."""
    return _unpack_udp_head(buf, ETH_IPV4_LEN)


def udp_checksum_ok(buf: bytes | bytearray | memoryview, src: int, dst: int,
                    length: int) -> bool:
    """RFC 768: the checksum over the pseudo-header and the datagram's `length` bytes is good.
    (A zero checksum, none sent, is the caller's to accept: IPv4 allows it.)"""
    return internet_checksum(buf[ETH_IPV4_LEN:ETH_IPV4_LEN + length],
                             src + dst + 17 + length) == 0


_pack_eth_ipv4_head = _ETH_IPV4.pack


def build_ipv4_frame(dst_mac: bytes, src_mac: bytes, ident: int, ttl: int, src: int, dst: int,
                     proto: int, payload: bytes | memoryview, tos: int = 0) -> bytes:
    """An Ethernet frame carrying one originated, unfragmented IPv4 datagram whose payload is
    built already (a TCP segment with its checksum), as build_ipv4 (no flags; `tos` the
    DSCP and ECN byte) and build_ethernet make it, in one buffer."""
    total = 20 + len(payload)
    folded = (0x4500 + tos + total + ident + (ttl << 8) + proto + src + dst) % 0xFFFF
    return _pack_eth_ipv4_head(dst_mac, src_mac, 0x0800, 0x45, tos, total, ident, 0, ttl, proto,
                               0xFFFF - folded if folded else 0, src, dst) + payload


def build_udp_frame(dst_mac: bytes, src_mac: bytes, ident: int, ttl: int, src: int, dst: int,
                    src_port: int, dst_port: int, payload: bytes | memoryview) -> bytes:
    """An Ethernet frame carrying one originated UDP datagram, as the general path builds it
    (build_udp, build_ipv4 with TOS 0 and no flags, build_ethernet), in one buffer.

    Both checksums are computed from sums of ints: an int is congruent mod 0xFFFF to the sum
    of its 16-bit words, so the addresses go in whole and the payload as one big integer.
    """
    n = len(payload)
    length = 8 + n
    total = 20 + length
    folded = (0x4500 + total + ident + (ttl << 8) + 17 + src + dst) % 0xFFFF
    ip_csum = 0xFFFF - folded if folded else 0
    body = _from_bytes(payload, "big")
    if n & 1:
        body <<= 8      # RFC 1071: an odd byte is padded with a zero byte on the right
    # Pseudo-header (src, dst, protocol, length) + header words (ports, length) + payload.
    folded = (src + dst + 17 + length + src_port + dst_port + length + body) % 0xFFFF
    # RFC 768: a computed zero is sent as all ones. The sum is never 0 (length >= 8), so a
    # fold to 0 means the sum is 0xFFFF and the checksum 0, sent as 0xFFFF.
    udp_csum = 0xFFFF - folded if folded else 0xFFFF
    return _pack_eth_ipv4_udp(dst_mac, src_mac, 0x0800, 0x45, 0, total, ident, 0, ttl, 17,
                              ip_csum, src, dst, src_port, dst_port, length, udp_csum) + payload
