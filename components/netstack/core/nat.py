"""NAT: rewriting an IPv4 packet's addresses and ports in place, checksums updated.

Every checksum is updated from the words that changed (RFC 1624 eqn. 3), never recomputed
over the payload: the IPv4 header's for the addresses; TCP's and UDP's for the addresses
(their pseudo-header) and ports; ICMP's for a query's identifier (ICMP has no
pseudo-header). An incremental update of a good checksum gives what a full computation
gives (both land in 0..0xFFFE for a sum that cannot be zero); the exceptions are handled
where they occur: UDP's "no checksum" 0 stays 0 and a computed 0 is sent as 0xFFFF (RFC
768), and an all-zero echo reply's checksum is 0xFFFF.

What to write comes from the connection's conntrack entry: `entry.rewrite[direction]` is
(new_src, new_sport, new_dst, new_dport) for a packet of that direction. For ICMP queries
the identifier plays both ports (conntrack keys them (src, id, dst, id, 1), so a rewrite's
sport and dport are equal).
"""

from __future__ import annotations

import struct

from ..wire.checksum import checksum_adjust, ones_complement_sum
from .conntrack import ICMP_ERRORS, ICMP_QUERIES, ICMP_QUERY_REPLIES

# version/IHL, TOS, total length, ident, flags/fragment offset, TTL, protocol, checksum, src, dst
_IPV4 = struct.Struct("!BBHHHBBHII")
_ADDRS = struct.Struct("!II")
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_u16 = _U16.unpack_from
_put16 = _U16.pack_into


def _update(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for several changed words at once: `old` and
    `new` are plain sums of the changed words before and after. A 32-bit address goes in
    whole (an int is congruent mod 0xFFFF to the sum of its 16-bit words), and the one's
    complement of a sum is the sum of the complements, so each side folds into one word."""
    return checksum_adjust(checksum, ones_complement_sum(b"", old), ones_complement_sum(b"", new))


def _ipv4_head(buf, off: int) -> tuple | None:
    """(header length, end, flags/offset, protocol, checksum, src, dst) of a whole IPv4
    packet at buf[off:] (its total length within the buffer); None if it is not one."""
    if off < 0 or len(buf) - off < 20:
        return None
    ver_ihl, _tos, total, _ident, frag, _ttl, proto, csum, src, dst = _IPV4.unpack_from(buf, off)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl or off + total > len(buf):
        return None
    return ihl, off + total, frag, proto, csum, src, dst


def _readdress(buf: bytearray, off: int, csum: int, src: int, dst: int, new_src: int,
               new_dst: int) -> None:
    _put16(buf, off + 10, _update(csum, src + dst, new_src + new_dst))
    _ADDRS.pack_into(buf, off + 12, new_src, new_dst)


def rewrite_ipv4(buf: bytearray, off: int, new_src: int, new_sport: int, new_dst: int,
                 new_dport: int) -> bool:
    """Give the IPv4 packet at buf[off:] (options allowed) new addresses and ports.

    - TCP, UDP: the ports become new_sport and new_dport.
    - ICMP queries: the identifier becomes new_sport in a request (echo, timestamp,
      information, address mask: types 8, 13, 15, 17), new_dport in a reply (0, 14, 16, 18).
      Other ICMP messages: only the IP header (errors: see rewrite_icmp_error).
    - Other protocols, and fragments past the first (they carry no transport header): only
      the IP header. A first fragment is rewritten whole; its transport checksum covers the
      whole datagram and an incremental update stays right.
    False, and the buffer untouched, if the packet is truncated: not a whole IPv4 header,
    a total length beyond the buffer, or too short to hold the ports and checksum to change.
    """
    head = _ipv4_head(buf, off)
    if head is None:
        return False
    ihl, end, frag, proto, ip_csum, src, dst = head
    at = off + ihl
    if not frag & 0x1FFF:
        if proto == 6:
            if at + 18 > end:
                return False
            sport, dport = _PORTS.unpack_from(buf, at)
            # the pseudo-header's addresses and the ports are covered (RFC 9293 §3.1)
            _put16(buf, at + 16, _update(_u16(buf, at + 16)[0], src + dst + sport + dport,
                                         new_src + new_dst + new_sport + new_dport))
            _PORTS.pack_into(buf, at, new_sport, new_dport)
        elif proto == 17:
            if at + 8 > end:
                return False
            sport, dport = _PORTS.unpack_from(buf, at)
            csum = _u16(buf, at + 6)[0]
            if csum:    # RFC 768: 0 is "no checksum" and stays so; a computed 0 goes as 0xFFFF
                csum = _update(csum, src + dst + sport + dport,
                               new_src + new_dst + new_sport + new_dport) or 0xFFFF
            _PORTS.pack_into(buf, at, new_sport, new_dport)
            _put16(buf, at + 6, csum)
        elif proto == 1:
            if at + 8 > end:
                return False
            itype = buf[at]
            ident = new_sport if itype in ICMP_QUERIES else (
                new_dport if itype in ICMP_QUERY_REPLIES else None)
            if ident is not None:
                _set_query_ident(buf, at, end, ident)
    _readdress(buf, off, ip_csum, src, dst, new_src, new_dst)
    return True


def _set_query_ident(buf: bytearray, at: int, end: int, ident: int) -> tuple[int, int]:
    """Set the identifier of the ICMP query at buf[at:end] and update its checksum. Returns
    the sums of the two words (identifier, checksum) before and after, for a checksum that
    covers them too (an ICMP error's, over its quote)."""
    old_ident, = _u16(buf, at + 4)
    old_csum, = _u16(buf, at + 2)
    csum = _update(old_csum, old_ident, ident)
    _put16(buf, at + 4, ident)
    if csum == 0 and not any(buf[at:at + 2]) and not any(buf[at + 4:end]):
        # An all-zero echo reply (type, code, identifier, sequence, data) has checksum 0xFFFF
        # computed in full; the update cannot tell it from 0. Rare enough to look.
        csum = 0xFFFF
    _put16(buf, at + 2, csum)
    return old_ident + old_csum, ident + csum


def rewrite_icmp_error(buf: bytearray, off: int, outer_src: int | None = None,
                       outer_dst: int | None = None, inner_src: int | None = None,
                       inner_sport: int | None = None, inner_dst: int | None = None,
                       inner_dport: int | None = None) -> bool:
    """Translate an ICMP error (types 3, 4, 5, 11, 12) at buf[off:], RELATED to a flow.

    The outer header's addresses become outer_src/outer_dst; the quoted packet's addresses
    and ports become inner_*: the quoted IP header (its checksum updated), the quoted
    transport ports (an ICMP query's identifier: inner_sport in a request, inner_dport in a
    reply) and the quoted TCP/UDP checksum when the quote holds it (a TCP quote of only 8
    bytes does not; Linux adjusts it the same way), then the ICMP checksum over all of the
    changed quoted words. None leaves a field as it is. `error_translation` computes the
    arguments from the flow's entry.

    False, and the buffer untouched, if it is not a whole first-fragment ICMP error quoting
    an IPv4 header and 8 bytes (RFC 792).
    """
    head = _ipv4_head(buf, off)
    if head is None:
        return False
    ihl, end, frag, proto, ip_csum, src, dst = head
    icmp = off + ihl
    inner = icmp + 8
    if proto != 1 or frag & 0x1FFF or inner + 20 > end or buf[icmp] not in ICMP_ERRORS:
        return False
    ver_ihl = buf[inner]
    iihl = (ver_ihl & 0x0F) * 4
    at = inner + iihl
    if ver_ihl >> 4 != 4 or iihl < 20 or at + 8 > end:
        return False
    iproto = buf[inner + 9]
    ifrag, = _u16(buf, inner + 6)
    icsum, = _u16(buf, inner + 10)
    isrc, idst = _ADDRS.unpack_from(buf, inner + 12)
    nsrc = isrc if inner_src is None else inner_src
    ndst = idst if inner_dst is None else inner_dst
    # From here on nothing can fail. `old`/`new`: the sums of the quoted words that change,
    # for the ICMP checksum, which covers the whole quote.
    new_icsum = _update(icsum, isrc + idst, nsrc + ndst)
    old = isrc + idst + icsum
    new = nsrc + ndst + new_icsum
    _ADDRS.pack_into(buf, inner + 12, nsrc, ndst)
    _put16(buf, inner + 10, new_icsum)
    if not ifrag & 0x1FFF and (iproto == 6 or iproto == 17):
        sport, dport = _PORTS.unpack_from(buf, at)
        nsport = sport if inner_sport is None else inner_sport
        ndport = dport if inner_dport is None else inner_dport
        _PORTS.pack_into(buf, at, nsport, ndport)
        old += sport + dport
        new += nsport + ndport
        csum_at = at + (16 if iproto == 6 else 6)
        if csum_at + 2 <= end:
            csum, = _u16(buf, csum_at)
            if csum or iproto == 6:
                ncsum = _update(csum, isrc + idst + sport + dport, nsrc + ndst + nsport + ndport)
                if iproto == 17 and ncsum == 0:
                    ncsum = 0xFFFF
                _put16(buf, csum_at, ncsum)
                old += csum
                new += ncsum
    elif not ifrag & 0x1FFF and iproto == 1:
        itype = buf[at]
        ident = inner_sport if itype in ICMP_QUERIES else (
            inner_dport if itype in ICMP_QUERY_REPLIES else None)
        if ident is not None:
            was, now = _set_query_ident(buf, at, end, ident)
            old += was
            new += now
    _put16(buf, icmp + 2, _update(_u16(buf, icmp + 2)[0], old, new))
    _readdress(buf, off, ip_csum, src, dst, src if outer_src is None else outer_src,
               dst if outer_dst is None else outer_dst)
    return True


def error_translation(flow_tuple: tuple, rewrite: tuple | None,
                      dst_side: bool) -> tuple | None:
    """The arguments (outer_src, outer_dst, inner_src, inner_sport, inner_dst, inner_dport)
    of rewrite_icmp_error for an error RELATED to a flow, as Linux's
    nf_nat_icmp_reply_translation does it; None when there is nothing to change.

    `flow_tuple` is the tuple of the error's direction d (entry.orig or entry.reply, as
    conntrack.track answered d) and `rewrite` is entry.rewrite[d]. The quoted packet went
    the other way: on the wire it is the inverse of flow_tuple, and it is made to look as
    its sender sent it, the inverse of `rewrite`.
    - dst_side (where destination NAT happens, before routing: ingress, output): the outer
      destination becomes rewrite's destination, the quoted source and source port too;
    - otherwise (egress): if the flow's source is translated in direction d, the outer
      source becomes rewrite's source (a router's error about a DNATed flow then comes from
      the public address, as with Linux), the quoted destination and port too.
    """
    if rewrite is None:
        return None
    src, sport, dst, dport = flow_tuple[:4]
    nsrc, nsport, ndst, ndport = rewrite
    if dst_side:
        if (dst, dport) == (ndst, ndport):
            return None
        return None, ndst, ndst, ndport, None, None
    if (src, sport) == (nsrc, nsport):
        return None
    return nsrc, None, None, None, nsrc, nsport


__all__ = ["rewrite_ipv4", "rewrite_icmp_error", "error_translation"]
