"""ICMPv4 (RFC 792): echo, and the errors the stack sends and receives.

The rules for *not* sending an error (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7) and the rate limit
(RFC 1812 §4.3.2.8) live in `send_error`, so every error the stack emits passes them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable, Mapping, Protocol

from ..wire import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Icmpv4Message, ParseError, build_echo, build_icmpv4
from ..wire.icmpv4 import (ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                           ICMP_PARAM_PROBLEM, ICMP_REDIRECT, ICMP_TIME_EXCEEDED)
from ..wire.ipv4 import IPV4_HEADER_LEN
from .config import StackConfig
from .device import Device
from .errors import StackError
from .events import EchoReply, IcmpErrorForSocket, PingError
from .ipv4 import LIMITED_BROADCAST, Ipv4Datagram, is_martian
from .udp import UdpSocket

ERROR_TYPES = (ICMP_DEST_UNREACH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAM_PROBLEM)
# RFC 1812 §4.3.2.3: quote as much of the original as fits a 576-byte error datagram.
MAX_ERROR_DATAGRAM = 576
_RX_TYPE = tuple(f"rx_type_{t}" for t in range(256))    # counter names, formatted once


class TokenBucket:
    """rate tokens per second up to burst; refilled lazily from `now`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class QuotedIpv4:
    """The IPv4 header quoted inside an ICMP error.

    Wire's Ipv4Packet.parse insists on a complete packet, but an error quotes only the header
    and the first 8 bytes of data, so this reads the few fields error handling needs.
    """
    _HDR = struct.Struct("!BBHHHBBH4s4s")

    def __init__(self, buf: bytes | memoryview) -> None:
        if len(buf) < IPV4_HEADER_LEN:
            raise ParseError("icmp: quoted header truncated")
        ver_ihl, _, _, _, frag, _, proto, _, src, dst = self._HDR.unpack_from(buf)
        self.header_len = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4 or self.header_len < IPV4_HEADER_LEN or self.header_len > len(buf):
            raise ParseError("icmp: quoted header malformed")
        self.proto = proto
        self.src = IPv4Address(src)
        self.dst = IPv4Address(dst)
        self.frag_offset = (frag & 0x1FFF) << 3
        self.data = bytes(buf[self.header_len:self.header_len + 8])

    def ports(self) -> tuple[int, int] | None:
        """(src port, dst port) of a quoted UDP/TCP header, if quoted."""
        if self.frag_offset or len(self.data) < 4:
            return None
        return struct.unpack_from("!HH", self.data)

    def echo(self) -> tuple[int, int, int] | None:
        """(type, ident, seq) of a quoted ICMP echo."""
        if self.frag_offset or len(self.data) < 8:
            return None
        t, _, _, ident, seq = struct.unpack_from("!BBHHH", self.data)
        return t, ident, seq


class IpSend(Protocol):
    """Ipv4Layer.send: originate one datagram; StackError when it cannot leave."""
    def __call__(self, dst: IPv4Address, proto: int, payload: bytes, now: float, *,
                 src: IPv4Address | None = None) -> None: ...


@dataclass(frozen=True)
class IcmpContext:
    """Everything outside itself that ICMPv4 may touch."""
    send: IpSend
    is_local: Callable[[IPv4Address], bool]                 # one of our addresses
    is_directed_broadcast: Callable[[IPv4Address], bool]    # a broadcast of one of our subnets
    # Devices, looked up for the source of an answer to a broadcast echo.
    devices: Mapping[str, Device]
    # Events for the binding: EchoReply, IcmpErrorForSocket, PingError.
    emit: Callable[[object], None]
    # The UDP socket that sent local:port -> remote:port (UdpSockets.find_sender).
    udp_sender: Callable[[IPv4Address, int, IPv4Address, int], UdpSocket | None]
    # An error quoting a TCP segment, for its connection (TcpLayer.icmp_error); True if
    # one took it.
    tcp_error: Callable[[IPv4Address, int, IPv4Address, int, int, int, int, int | None], bool]


class Icmpv4:
    def __init__(self, cfg: StackConfig, counters, ctx: IcmpContext) -> None:
        self.cfg = cfg
        self.c = counters
        self._send = ctx.send
        self._is_local = ctx.is_local
        self._is_directed_broadcast = ctx.is_directed_broadcast
        self._devs = ctx.devices
        self._emit = ctx.emit
        self._udp_sender = ctx.udp_sender
        self._tcp_error = ctx.tcp_error
        self.bucket = TokenBucket(self.cfg.icmp_error_rate, self.cfg.icmp_error_burst)

    # -- receive -----------------------------------------------------------------------------
    def receive(self, rx: Ipv4Datagram, now: float) -> None:
        c = self.c
        try:
            msg = Icmpv4Message.parse(rx.payload)
        except ParseError:
            c["rx_bad"] += 1
            return
        c[_RX_TYPE[msg.type]] += 1
        if msg.type == ICMP_ECHO_REQUEST:
            self._echo_request(rx, msg, now)
        elif msg.type == ICMP_ECHO_REPLY:
            if not rx.broadcast:
                self._emit(EchoReply(rx.src, msg.ident, msg.seq, rx.header.ttl,
                                     len(msg.payload)))
        elif msg.type in ERROR_TYPES:
            self._error(rx, msg)
        else:
            c["rx_ignored"] += 1

    def _echo_request(self, rx: Ipv4Datagram, msg: Icmpv4Message, now: float) -> None:
        if rx.broadcast:
            if self.cfg.icmp_echo_ignore_broadcasts:
                self.c["echo_ignored_broadcast"] += 1   # RFC 1122 §3.2.2.6 MAY
                return
            dev = self._devs.get(rx.device)
            src = dev.source_for(rx.src) if dev else None
            if src is None:
                return
        else:
            src = rx.dst   # RFC 1122 §3.2.2.6: the reply's source is the request's destination
        if is_martian(rx.src) and not rx.src.is_loopback:
            self.c["echo_drop_martian_source"] += 1
            return
        reply = build_echo(ICMP_ECHO_REPLY, msg.ident, msg.seq, msg.payload)
        try:
            self._send(rx.src, PROTO_ICMP, reply, now, src=src)
            self.c["tx_echo_reply"] += 1
        except StackError:      # no route back
            self.c["tx_echo_reply_failed"] += 1

    def _error(self, rx: Ipv4Datagram, msg: Icmpv4Message) -> None:
        try:
            q = QuotedIpv4(msg.payload)
        except ParseError:
            self.c["rx_error_bad_quote"] += 1
            return
        if not self._is_local(q.src):
            self.c["rx_error_not_ours"] += 1
            return
        mtu = msg.mtu if msg.type == ICMP_DEST_UNREACH else 0
        if q.proto == PROTO_UDP:
            ports = q.ports()
            sock = ports and self._udp_sender(q.src, ports[0], q.dst, ports[1])
            if sock:
                self._emit(IcmpErrorForSocket(sock.sid, rx.src, msg.type, msg.code,
                                              q.dst, ports[1], mtu))  # type: ignore[index]
                return
        elif q.proto == PROTO_TCP:
            ports = q.ports()
            seq = struct.unpack_from("!I", q.data, 4)[0] if ports and len(q.data) >= 8 else None
            if ports and self._tcp_error(q.src, ports[0], q.dst, ports[1], msg.type, msg.code,
                                         mtu, seq):
                return
        elif q.proto == PROTO_ICMP:
            echo = q.echo()
            if echo and echo[0] == ICMP_ECHO_REQUEST:
                self._emit(PingError(rx.src, msg.type, msg.code, q.dst, echo[1], echo[2]))
                return
        self.c["rx_error_unmatched"] += 1

    # -- send --------------------------------------------------------------------------------
    def send_error(self, orig: Ipv4Datagram, type: int, code: int, now: float,
                   mtu: int = 0) -> bool:
        """Send an ICMP error about orig unless the rules forbid it. True if sent."""
        c = self.c
        h = orig.header
        # RFC 1122 §3.2.2: never about an ICMP error, a broadcast/multicast, a non-first
        # fragment, or a datagram whose source is not a single host.
        if h.proto == PROTO_ICMP and (len(orig.payload) < 1 or orig.payload[0] in ERROR_TYPES
                                      or h.frag_offset):
            c["error_suppressed_icmp"] += 1
            return False
        if orig.broadcast or h.dst == LIMITED_BROADCAST or h.dst.is_multicast \
                or self._is_directed_broadcast(h.dst):
            c["error_suppressed_broadcast"] += 1
            return False
        if h.frag_offset:
            c["error_suppressed_fragment"] += 1
            return False
        src = h.src
        if (is_martian(src) and not src.is_loopback) or src == LIMITED_BROADCAST \
                or self._is_directed_broadcast(src):
            c["error_suppressed_source"] += 1
            return False
        if not self.bucket.take(now):
            c["error_rate_limited"] += 1     # RFC 1812 §4.3.2.8
            return False
        room = MAX_ERROR_DATAGRAM - IPV4_HEADER_LEN - 8 - h.header_len
        quote = h.header + bytes(orig.payload[:max(0, room)])
        rest = struct.pack("!HH", 0, mtu) if mtu else b"\0\0\0\0"
        body = build_icmpv4(type, code, rest, quote)
        # About a datagram for us: answer from the address it was sent to, so the sender can
        # match the error; otherwise the egress interface's address (RFC 1812 §4.3.2.4).
        err_src = h.dst if self._is_local(h.dst) else None
        try:
            self._send(src, PROTO_ICMP, body, now, src=err_src)
        except StackError:
            c["error_send_failed"] += 1
            return False
        c[f"tx_error_{type}_{code}"] += 1
        return True
