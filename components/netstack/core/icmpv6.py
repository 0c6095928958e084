"""ICMPv6 (RFC 4443): echo, the errors the stack sends, and the hand-off of ND to ndp.py.

The rules for *not* sending an error (RFC 4443 §2.4 (e)) and its rate limit (§2.4 (f)) live
in `send_error`, so every error the stack emits passes them. Errors received go to what sent
the quoted packet (RFC 4443 §2.4 (d)): a UDP socket, a TCP connection, a ping; a Packet Too
Big also lowers the destination's path MTU (RFC 8201).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Callable, Protocol

import struct

from ..wire import ParseError
from ..wire.icmpv6 import (ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
                           Icmpv6Message, build_echo6, build_icmpv6_error)
from ..wire.ipv6 import (NEXT_HEADER_ICMPV6, NEXT_HEADER_TCP, NEXT_HEADER_UDP, Ipv6Packet,
                         walk_extensions)
from ..wire.ndp import ND_REDIRECT
from .config import StackConfig
from .errors import StackError
from .events import EchoReply, IcmpErrorForSocket, PingError
from .icmp import TokenBucket
from .ipv6 import Ipv6Datagram
from .ndp import ND_TYPES

UNREACH_PORT6 = 4       # RFC 4443 §3.1 code 4
_RX_TYPE = tuple(f"rx_type_{t}" for t in range(256))    # counter names, formatted once


class Ipv6Send(Protocol):
    """Ipv6Layer.send: originate one datagram; StackError when it cannot leave."""
    def __call__(self, dst: IPv6Address, next_header: int, payload: bytes, now: float, *,
                 src: IPv6Address, device: str | None = None,
                 hop_limit: int | None = None) -> None: ...


@dataclass(frozen=True)
class Icmpv6Context:
    """Everything outside itself that ICMPv6 may touch."""
    send: Ipv6Send
    # Our preferred address on a device toward a destination (Ipv6Addresses.source_for).
    source_for: Callable[[str, IPv6Address], IPv6Address | None]
    # Neighbor Discovery's receive (Ndp.receive), for the ND types.
    nd_receive: Callable[[Ipv6Datagram, Icmpv6Message, float], None]
    # Whether an address (int) is ours and usable (Ipv6Addresses.is_preferred).
    is_local: Callable[[int], bool]
    # Events for the binding: EchoReply, PingError, IcmpErrorForSocket.
    emit: Callable[[object], None]
    # The UDP socket that sent local:port -> remote:port (UdpSockets.find_sender of udp6).
    udp_sender: Callable
    # TCP's icmp_error (tcp6): True when a connection took the error.
    tcp_error: Callable
    # Ipv6Layer.packet_too_big(dst, mtu, now): the path MTU cache.
    packet_too_big: Callable[[IPv6Address, int, float], None]


class Icmpv6:
    def __init__(self, cfg: StackConfig, counters, ctx: Icmpv6Context) -> None:
        self.cfg = cfg
        self.c = counters
        self._send = ctx.send
        self._source_for = ctx.source_for
        self._nd_receive = ctx.nd_receive
        self._is_local = ctx.is_local
        self._emit = ctx.emit
        self._udp_sender = ctx.udp_sender
        self._tcp_error = ctx.tcp_error
        self._packet_too_big = ctx.packet_too_big
        # §2.4 (f): a token bucket, the same figures as ICMPv4's.
        self.bucket = TokenBucket(cfg.icmp_error_rate, cfg.icmp_error_burst)

    # -- receive -----------------------------------------------------------------------------
    def receive(self, rx: Ipv6Datagram, now: float) -> None:
        c = self.c
        try:
            msg = Icmpv6Message.parse(rx.payload, rx.src, rx.dst)
        except ParseError:
            c["rx_bad"] += 1
            return
        c[_RX_TYPE[msg.type]] += 1
        if msg.type in ND_TYPES:
            self._nd_receive(rx, msg, now)
            return
        if rx.tentative:
            c["rx_drop_tentative"] += 1     # RFC 4862 §5.4: only ND reaches a tentative address
            return
        if msg.type == ICMPV6_ECHO_REQUEST:
            self._echo_request(rx, msg, now)
        elif msg.type == ICMPV6_ECHO_REPLY:
            c["rx_echo_reply"] += 1
            if not rx.multicast:
                self._emit(EchoReply(rx.src, msg.ident, msg.seq, rx.header.hop_limit,
                                     len(msg.payload)))
        elif msg.is_error:
            c["rx_error"] += 1
            self._error(rx, msg, now)
        else:
            c["rx_ignored"] += 1            # MLD queries and reports among them

    def _echo_request(self, rx: Ipv6Datagram, msg: Icmpv6Message, now: float) -> None:
        c = self.c
        if rx.src.is_unspecified:
            c["echo_drop_unspecified_source"] += 1
            return
        if rx.header.dst.is_multicast:
            if self.cfg.icmp6_echo_ignore_multicast:
                c["echo_ignored_multicast"] += 1
                return
            # RFC 4443 §4.2: to a multicast group, the reply comes from a unicast address of
            # the receiving interface.
            src = self._source_for(rx.device, rx.src)
            if src is None:
                c["echo_drop_no_source"] += 1
                return
        else:
            src = rx.dst    # §4.2: the reply's source is the request's destination
        reply = build_echo6(src, rx.src, ICMPV6_ECHO_REPLY, msg.ident, msg.seq, msg.payload)
        try:
            self._send(rx.src, NEXT_HEADER_ICMPV6, reply, now, src=src, device=rx.device)
            c["tx_echo_reply"] += 1
        except StackError:      # no route back
            c["tx_echo_reply_failed"] += 1

    def _error(self, rx: Ipv6Datagram, msg: Icmpv6Message, now: float) -> None:
        """An error quoting a packet of ours: to its sender (RFC 4443 §2.4 (d)), by the
        upper-layer header found behind the quote's extension headers."""
        c = self.c
        try:
            q = Ipv6Packet.parse(msg.payload, check_length=False)
            proto, offset, _ = walk_extensions(q.next_header, q.payload)
        except ParseError:
            c["rx_error_bad_quote"] += 1
            return
        if not self._is_local(int(q.src)):
            c["rx_error_not_ours"] += 1
            return
        mtu = msg.mtu if msg.type == ICMPV6_PACKET_TOO_BIG else 0
        if mtu:
            self._packet_too_big(q.dst, mtu, now)
        upper = q.payload[offset:]
        if proto in (NEXT_HEADER_UDP, NEXT_HEADER_TCP) and len(upper) >= 4:
            sport, dport = struct.unpack_from("!HH", upper)
            if proto == NEXT_HEADER_UDP:
                sock = self._udp_sender(q.src, sport, q.dst, dport)
                if sock is not None:
                    self._emit(IcmpErrorForSocket(sock.sid, rx.src, msg.type, msg.code, q.dst,
                                                  dport, mtu))
                    return
            else:
                seq = struct.unpack_from("!I", upper, 4)[0] if len(upper) >= 8 else None
                if self._tcp_error(q.src, sport, q.dst, dport, msg.type, msg.code, mtu, seq):
                    return
        elif proto == NEXT_HEADER_ICMPV6 and len(upper) >= 8 and upper[0] == ICMPV6_ECHO_REQUEST:
            ident, seq = struct.unpack_from("!HH", upper, 4)
            self._emit(PingError(rx.src, msg.type, msg.code, q.dst, ident, seq))
            return
        c["rx_error_unmatched"] += 1

    # -- send --------------------------------------------------------------------------------
    def send_error(self, orig: Ipv6Datagram, type: int, code: int, now: float, *,
                   pointer: int = 0, multicast_ok: bool = False, mtu: int = 0) -> bool:
        """An ICMPv6 error about orig unless RFC 4443 §2.4 (e) forbids it. True if sent.
        `multicast_ok`: one of (e.3)'s exceptions (Packet Too Big, or a Parameter Problem
        code 2 for an option whose action bits are 10)."""
        c = self.c
        # (e.1), (e.2): never about an ICMPv6 error or a Redirect.
        if orig.next_header == NEXT_HEADER_ICMPV6 and (
                len(orig.payload) < 1 or orig.payload[0] < 128 or orig.payload[0] == ND_REDIRECT):
            c["error_suppressed_icmp"] += 1
            return False
        # (e.3): never about a multicast datagram, with its exceptions.
        if orig.multicast and not (multicast_ok or type == ICMPV6_PACKET_TOO_BIG):
            c["error_suppressed_multicast"] += 1
            return False
        # (e.4): never to a source that is not one node.
        if orig.src.is_unspecified or orig.src.is_multicast:
            c["error_suppressed_source"] += 1
            return False
        if orig.tentative:
            c["error_suppressed_tentative"] += 1    # nothing is sent from a tentative address
            return False
        if not self.bucket.take(now):
            c["error_rate_limited"] += 1
            return False
        # About a datagram to one of our addresses: from that address, so the sender can
        # match it; otherwise (a multicast, a forwarded packet) the receiving interface's
        # address toward the sender.
        src = orig.dst if self._is_local(int(orig.dst)) else self._source_for(orig.device, orig.src)
        if src is None:
            c["error_no_source"] += 1
            return False
        body = build_icmpv6_error(src, orig.src, type, code, orig.packet, mtu=mtu,
                                  pointer=pointer)
        try:
            self._send(orig.src, NEXT_HEADER_ICMPV6, body, now, src=src, device=orig.device)
        except StackError:
            c["error_send_failed"] += 1
            return False
        c[f"tx_error_{type}_{code}"] += 1
        return True
