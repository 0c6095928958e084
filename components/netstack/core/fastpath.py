"""The per-frame fast path: the two commonest received frames, handled in one pass.

A frame qualifies when it is plain (wire/flat.py: untagged Ethernet II to our MAC, IPv4
without options or fragmentation, good checksum), arrives on an Ethernet port that is up,
its addresses are ordinary unicast ones, and it is either

- an ICMP echo request to one of our addresses (weak host: any device's), or
- a datagram to forward with TTL > 1,

and its outgoing frame fits the egress MTU and goes to a neighbor whose SEND would only
transmit (neighbor.SEND_ONLY_TRANSMITS). Everything else returns False before any side
effect, and the general path (stack._receive_one and the layers) handles the frame exactly
as it always did: every rule that can drop, answer with an ICMP error, fragment or resolve
lives only there. For the frames it takes, the fast path has exactly the general path's
effects — the same counters, neighbor use, IP ident, and byte-identical frames
(tests/unit/core/test_fastpath.py drives both side by side) — at a fraction of the cost:
addresses stay ints, tables are probed by int, and the outgoing frame is a copy of the
received one patched in place (RFC 1624 checksums) rather than parsed and rebuilt.
"""

from __future__ import annotations

import struct
from typing import Protocol

from ..wire.flat import (build_ipv4_frame, build_udp_frame, echo_reply_in_place, forward_in_place,
                         icmp_checksum_ok, icmp_head, parse_plain_ipv4, udp_checksum_ok, udp_head)
from .config import StackConfig
from .device import ETHERNET, Device
from .links import Links
from .neighbor import NeighborTable
from .route import RoutingTable
from .udp import Datagram, UdpSocket, UdpSockets

_ECHO_REQUEST = 8
_UDP_HEAD = struct.Struct("!HHHH")


class FastIp(Protocol):
    """What the fast path reads and writes of the IPv4 layer (Ipv4Layer is one)."""
    c: dict                         # its counter group
    local_ints: dict[int, str]      # our addresses; reindex() binds a new dict on each change
    broadcast_ints: dict[int, str]  # our directed broadcasts, alike
    next_ident: int                 # taken and advanced as send_via does
    routes: RoutingTable

    def usable(self, name: str) -> bool: ...


class FastPath:
    def __init__(self, cfg: StackConfig, links: Links, ip4: FastIp, neighbors: NeighborTable,
                 udp: UdpSockets, icmp_counters, tcp_established=None) -> None:
        """The tables of the layers whose work it does in one pass: the device layer's queues,
        IPv4's addresses, routes and ident, the neighbor table (read, and an entry's use
        noted), UDP's sockets, and ICMP's counters. Everything is bound here, once: none of
        these objects (counter groups included) is ever replaced in a stack's life."""
        self._devs = links.devices
        self._dev_counter = links.counters
        self._loopback = links.loopback
        self._ip4 = ip4
        self._ipc = ip4.c
        self._routes = ip4.routes
        self._usable = ip4.usable
        self._send_lladdr = neighbors.send_lladdr
        self._udp_match = udp.match
        self._udp_deliver = udp.deliver
        self._udp_c = udp.counters
        self._icmp_c = icmp_counters
        # TCP's own fast path for a segment of a known connection (tcp.layer.TcpLayer.
        # established): it declines (False) anything else, for the general path.
        self._tcp_established = tcp_established
        self._cfg = cfg
        # Device -> its counter group, so a counter name is not formatted per frame. Checked
        # by identity: a device removed and added again is a new Device with a new group.
        self._ctr: dict[str, tuple[Device, object]] = {}
        # Device -> its addresses as (address, network, mask) ints, for source selection.
        # Valid while ip4.local_ints is the dict it was built beside: reindex(), called on
        # every address change and device removal, binds a new one.
        self._sources: dict[str, list[tuple[int, int, int]]] = {}
        self._sources_of = None
        # The packet filter (filter.py), set by the Stack. While it is active the fast path
        # runs its hooks at the point where nothing is left to decline; while it translates
        # (NAT) or routes by `table N` rules, the fast path declines every packet.
        self._filter = None

    def _dev_counters(self, dev: Device):
        hit = self._ctr.get(dev.name)
        if hit is not None and hit[0] is dev:
            return hit[1]
        g = self._dev_counter(dev.name)
        self._ctr[dev.name] = (dev, g)
        return g

    def invalidate(self) -> None:
        """Forget the cached device counter groups and source addresses."""
        self._ctr.clear()
        self._sources_of = None

    def receive(self, dev: Device, frame, now: float) -> bool:
        """Handle frame if it is one of the common cases; False (and nothing done) if not."""
        if not dev.up or dev.kind != ETHERNET:
            return False
        h = parse_plain_ipv4(frame)
        if h is None:
            return False
        dmac, smac, tos, total, _ident, _flags, ttl, proto, csum, src, dst = h
        mac = dev.mac
        if dmac != mac or smac[0] & 1 or smac == mac:
            return False
        # The martian rules (RFC 1122 §3.2.1.3, RFC 1812 §5.3.7: 0/8, 127/8, 224/4, 240/4)
        # and our own or broadcast sources are the general path's to count.
        s1, d1 = src >> 24, dst >> 24
        if s1 == 0 or s1 == 127 or s1 >= 224 or d1 == 0 or d1 == 127 or d1 >= 224:
            return False
        ip4 = self._ip4
        local = ip4.local_ints
        broadcasts = ip4.broadcast_ints
        if src in local or src in broadcasts:
            return False
        filt = self._filter
        if filt is not None and not filt.active:
            filt = None
        elif filt is not None and (filt.nat or filt.tables):
            return False
        if dst in local:
            if proto == 17:
                return self._udp_local(dev, frame, total, src, dst, ttl, tos, filt, now)
            if proto == 6:
                tcp = self._tcp_established
                if tcp is None:
                    return False
                seg = memoryview(frame)[34:14 + total]
                if filt is not None:
                    m = self._filter_in(filt, dev, frame, src, dst, proto, total, now)
                    if m is None:
                        return True
                    if not tcp(src, dst, seg, now):
                        filt.carry = m      # the general path goes on after the input hook
                        return False
                elif not tcp(src, dst, seg, now):
                    return False
                self._delivered(dev, frame)
                return True
            if proto != 1 or total < 28:
                return False
            icmp_type, icmp_code, icmp_csum = icmp_head(frame)
            if icmp_type != _ECHO_REQUEST or not icmp_checksum_ok(frame, total):
                return False
            hop = self._egress(src, total)
            if hop is None:
                return False
            out, lladdr = hop
            # From here on the frame is ours: the general path's effects, in one pass.
            if filt is not None:
                if self._filter_in(filt, dev, frame, src, dst, proto, total, now) is None:
                    return True
                if not self._filter_out(filt, out, dst, src, 1, memoryview(frame)[34:14 + total],
                                        total, now, reply_type=0):
                    self._delivered(dev, frame)
                    return True
            self._delivered(dev, frame)
            c = self._ipc
            ic = self._icmp_c
            ic["rx_type_8"] += 1
            ident = self._next_ident()
            end = 14 + total
            buf = bytearray(frame) if len(frame) == end else bytearray(frame[:end])
            # RFC 1122 §3.2.2.6: the reply's source is the request's destination.
            echo_reply_in_place(buf, lladdr, out.mac, total, ident, self._cfg.default_ttl,
                                dst, src, icmp_code, icmp_csum)
            c["tx_packets"] += 1
            self._transmit(out, buf)
            ic["tx_echo_reply"] += 1
            return True
        if dst in broadcasts or not dev.forwarding or ttl <= 1:
            return False
        hop = self._egress(dst, total)
        if hop is None:
            return False
        out, lladdr = hop
        if filt is not None and not self._filter_forward(filt, dev, out, frame, src, dst, proto,
                                                         total, now):
            return True
        dc = self._dev_counters(dev)
        dc["rx_frames"] += 1
        dc["rx_bytes"] += len(frame)
        c = self._ipc
        c["rx_packets"] += 1
        end = 14 + total
        buf = bytearray(frame) if len(frame) == end else bytearray(frame[:end])
        forward_in_place(buf, lladdr, out.mac, ttl, proto, csum)
        c["forwarded"] += 1
        self._transmit(out, buf)
        return True

    # -- the filter's hooks, for the frames the fast path takes -----------------------------
    def _filter_in(self, filt, dev: Device, frame, src: int, dst: int, proto: int, total: int,
                   now: float):
        """Ingress and input hooks of a frame to us, and its connection's confirmation: its
        Meta, or None when the filter dropped it (counted as received, as the general path
        counts it)."""
        l4 = memoryview(frame)[34:14 + total]
        m = filt.meta(dev.name, src, dst, proto, l4, total, memoryview(frame)[14:14 + total])
        filt.track(m, l4, now)
        if filt.run(0, m, now) == 0 and filt.run(1, m, now) == 0 and filt.confirm(m, now):
            return m
        self._dropped_in(dev, frame)
        return None

    def _filter_forward(self, filt, dev: Device, out: Device, frame, src: int, dst: int,
                        proto: int, total: int, now: float) -> bool:
        """Ingress, forward and egress hooks of a frame to forward; False: dropped."""
        l4 = memoryview(frame)[34:14 + total]
        m = filt.meta(dev.name, src, dst, proto, l4, total, memoryview(frame)[14:14 + total])
        filt.track(m, l4, now)
        if filt.run(0, m, now) == 0:
            m.oif = out.name
            if filt.run(2, m, now) == 0 and filt.run(4, m, now) == 0 and filt.confirm(m, now):
                return True
        self._dropped_in(dev, frame)
        return False

    def _filter_out(self, filt, out: Device, src: int, dst: int, proto: int, l4, total: int,
                    now: float, reply_type: int = -1) -> bool:
        """Output and egress hooks of a packet we send (l4: its transport header and
        payload, or for an echo reply the request's, whose type byte is then reply_type);
        False: dropped (counted)."""
        if reply_type >= 0:
            l4 = bytes([reply_type]) + bytes(l4[1:])
        m = filt.meta(None, src, dst, proto, l4, total, None)
        filt.track(m, l4, now, True)
        if filt.run(3, m, now) == 0:
            m.oif = out.name
            if filt.run(4, m, now) == 0 and filt.confirm(m, now):
                return True
        self._ipc["tx_drop_filter"] += 1
        return False

    def _dropped_in(self, dev: Device, frame) -> None:
        dc = self._dev_counters(dev)
        dc["rx_frames"] += 1
        dc["rx_bytes"] += len(frame)
        self._ipc["rx_packets"] += 1

    def _udp_local(self, dev: Device, frame, total: int, src: int, dst: int, ttl: int,
                   tos: int, filt, now: float) -> bool:
        """A plain UDP datagram to one of our addresses, for a bound socket (the general
        path: ipv4.receive, Stack._udp_input). No socket (port unreachable), a bad length or
        checksum: declined, for the general path to answer and count."""
        if total < 28:
            return False
        sport, dport, length, csum = udp_head(frame)
        if length < 8 or length > total - 20:
            return False
        if csum and not udp_checksum_ok(frame, src, dst, length):
            return False
        socks = self._udp_match(src, sport, dst, dport, dev.name, False)
        if not socks:
            return False
        if filt is not None and self._filter_in(filt, dev, frame, src, dst, 17, total,
                                                now) is None:
            return True
        self._delivered(dev, frame)
        self._udp_c["rx_datagrams"] += 1
        # One socket: match() returns the best one for a unicast datagram.
        self._udp_deliver(socks[0], Datagram(src, sport, dst, dport, dev.name,
                                             bytes(frame[42:34 + length]), 4, ttl, tos))
        return True

    def udp_send(self, s: UdpSocket, payload, dst: int, port: int, device: str | None,
                 now: float = 0.0) -> bool:
        """Stack.udp_sendto of a bound socket's datagram to a unicast address reached whole
        through a resolved neighbor or to ourselves (looped back through lo), built in one
        buffer; False (and nothing done) otherwise: the general path then raises, binds,
        broadcasts, fragments or resolves.
        `device`: the call's or the socket's (SO_BINDTODEVICE)."""
        if not s.local_port:
            return False
        if dst >> 24 == 127 or dst in self._ip4.local_ints:
            # To ourselves, through lo. An unbound socket's source is the destination when
            # that is one of our addresses (else lo's, which the general path chooses).
            src = s.local_int
            if src is None and dst in self._ip4.local_ints:
                src = dst
            if src is None or device is not None or 28 + len(payload) > 0xFFFF:
                return False
            self._to_self(build_udp_frame(b"", b"", self._next_ident(), self._cfg.default_ttl,
                                          src, dst, s.local_port, port, payload))
            self._udp_c["tx_datagrams"] += 1
            return True
        filt = self._filter
        if filt is not None and filt.active and (filt.nat or filt.tables):
            return False
        hop = self._unicast_egress(dst, 28 + len(payload), device, False)
        if hop is None:
            return False
        out, nh, lladdr = hop
        src = s.local_int
        if src is None:
            src = self._source(out, nh)
            if src is None:
                return False
        if filt is not None and filt.active and not self._filter_out(
                filt, out, src, dst, 17, _UDP_HEAD.pack(s.local_port, port, 8 + len(payload), 0),
                28 + len(payload), now):
            self._udp_c["tx_datagrams"] += 1
            return True
        frame = build_udp_frame(lladdr, out.mac, self._next_ident(), self._cfg.default_ttl,
                                src, dst, s.local_port, port, payload)
        self._ipc["tx_packets"] += 1
        self._transmit(out, frame)
        self._udp_c["tx_datagrams"] += 1
        return True

    def receive_trusted_tcp(self, dev: Device, frame, now: float) -> bool:
        """A TCP super-frame to us whose checksum the sending device vouched for (offload
        ports, Stack.receive_batch's `trusted`): to its connection whole; False if it is not
        one of a known connection, or not a plain IPv4 frame."""
        tcp = self._tcp_established
        if tcp is None or not dev.up or dev.kind != ETHERNET:
            return False
        h = parse_plain_ipv4(frame)
        if h is None:
            return False
        dmac, smac, _tos, total, _ident, _flags, _ttl, proto, _csum, src, dst = h
        if proto != 6 or dmac != dev.mac or dst not in self._ip4.local_ints:
            return False
        if not tcp(src, dst, memoryview(frame)[34:14 + total], now, False):
            return False
        self._delivered(dev, frame)
        return True

    def ip_send(self, src: int, dst: int, proto: int, payload, ttl: int | None = None,
                tos: int = 0, now: float = 0.0) -> bool:
        """A transport's datagram (payload built, e.g. a TCP segment) from our address src to a
        unicast dst reached whole through a resolved neighbor, or to ourselves (127/8 and
        our own addresses: looped back through lo), in one buffer; False (and nothing done)
        otherwise, for the general path (Ipv4Layer.send_via). `ttl` (None: the default) and
        `tos` (the DSCP and ECN byte) are the sender's, checked by it."""
        if ttl is None:
            ttl = self._cfg.default_ttl
        if dst >> 24 == 127 or dst in self._ip4.local_ints:
            if 20 + len(payload) > 0xFFFF:
                return False
            self._to_self(build_ipv4_frame(b"", b"", self._next_ident(), ttl, src, dst, proto,
                                           payload, tos))
            return True
        filt = self._filter
        if filt is not None and filt.active and (filt.nat or filt.tables):
            return False
        # A TCP super-segment goes whole to a TSO device (its driver cuts it).
        hop = self._unicast_egress(dst, 20 + len(payload), None, proto == 6)
        if hop is None:
            return False
        out, _nh, lladdr = hop
        if filt is not None and filt.active and not self._filter_out(
                filt, out, src, dst, proto, payload, 20 + len(payload), now):
            return True
        frame = build_ipv4_frame(lladdr, out.mac, self._next_ident(), ttl, src, dst, proto,
                                 payload, tos)
        self._ipc["tx_packets"] += 1
        self._transmit(out, frame)
        return True

    def _to_self(self, frame: bytes) -> None:
        """The general path's loopback (Ipv4Layer.link_output to lo): the IPv4 packet of a
        frame built with blank MACs goes to the loopback queue, which Stack drains into our
        own input (never recursively)."""
        self._ipc["tx_packets"] += 1
        self._loopback(self._devs["lo"], memoryview(frame)[14:])

    def _delivered(self, dev: Device, frame) -> None:
        """The general path's counts for a frame delivered to us."""
        dc = self._dev_counters(dev)
        dc["rx_frames"] += 1
        dc["rx_bytes"] += len(frame)
        c = self._ipc
        c["rx_packets"] += 1
        c["rx_delivered"] += 1

    def _next_ident(self) -> int:
        ip4 = self._ip4
        ident = ip4.next_ident
        ip4.next_ident = (ident + 1) & 0xFFFF
        return ident

    def _unicast_egress(self, dst: int, total: int, device: str | None, tso: bool):
        """(device, next hop, its MAC) for an originated datagram of `total` bytes to a unicast
        dst that leaves whole (or, `tso`, as a super-segment for a TSO device) to a resolved
        neighbor; None when the general path must decide (it raises, routes to lo, broadcasts,
        fragments or resolves). `device`: the sender's SO_BINDTODEVICE, or None."""
        d1 = dst >> 24
        if not 0 < d1 < 224 or d1 == 127:
            return None
        ip4 = self._ip4
        if dst in ip4.local_ints or dst in ip4.broadcast_ints:
            return None
        hop = self._routes.cached_lookup(dst, self._usable)
        # lookup(device=D) answers the first usable route through D in preference order: the
        # cached best route when it leaves through D; otherwise the general path looks.
        if hop is None or (device is not None and hop.device != device):
            return None
        out = self._devs.get(hop.device)
        if out is None or out.kind != ETHERNET or not out.up or (
                total > out.mtu and not (tso and out.tso_max)):
            return None
        nh = hop.neighbor
        if nh >> 24 >= 224 or nh in ip4.broadcast_ints:
            return None
        lladdr = self._send_lladdr(out.name, nh)
        if lladdr is None:
            return None
        return out, nh, lladdr

    def _source(self, out: Device, next_hop: int) -> int | None:
        """Device.source_for by int: the address on the next hop's subnet, else the first."""
        if self._sources_of is not self._ip4.local_ints:
            self._sources = {}
            self._sources_of = self._ip4.local_ints
        srcs = self._sources.get(out.name)
        if srcs is None:
            srcs = self._sources[out.name] = [
                (int(i.ip), int(i.network.network_address), int(i.network.netmask))
                for i in out.addresses]
        for ip, net, mask in srcs:
            if next_hop & mask == net:
                return ip
        return srcs[0][0] if srcs else None

    def _egress(self, dst: int, total: int) -> tuple[Device, bytes] | None:
        """(device, neighbor's MAC) for a datagram of `total` bytes to dst, if the general
        path would send it there whole to a resolved neighbor; None otherwise."""
        hop = self._routes.cached_lookup(dst, self._usable)
        if hop is None:
            return None
        out = self._devs.get(hop.device)
        if out is None or out.kind != ETHERNET or not out.up or total > out.mtu:
            return None
        nh = hop.neighbor
        # Broadcast and multicast next hops take fixed link addresses (ipv4.link_output).
        if nh >> 24 >= 224 or nh in self._ip4.broadcast_ints:
            return None
        lladdr = self._send_lladdr(out.name, nh)
        if lladdr is None:
            return None
        return out, lladdr

    def _transmit(self, out: Device, frame: bytearray) -> None:
        # As Links.enqueue_tx, whose link-down case _egress has ruled out.
        c = self._dev_counters(out)
        if len(out.tx) >= self._cfg.tx_queue_frames:
            c["tx_drop_queue_full"] += 1
            return
        out.tx.append(frame)
        c["tx_frames"] += 1
        c["tx_bytes"] += len(frame)
