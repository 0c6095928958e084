"""The IPv4 layer: receive, local delivery, forwarding and output.

The tables it uses (routing, neighbors, reassembly, sockets) are version-independent; this
module holds what is IPv4's own: its address classes, header rebuild, RFC 791 fragmentation
and the RFC 1812 forwarding rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Callable, Protocol

from ..wire import (BROADCAST_MAC, ETHERTYPE_IPV4, PROTO_ICMP, ParseError, build_ethernet,
                    build_ipv4)
from ..wire.icmpv4 import (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, TIME_EXCEEDED_REASSEMBLY,
                           TIME_EXCEEDED_TTL, UNREACH_FRAG_NEEDED, UNREACH_HOST, UNREACH_NET,
                           UNREACH_PROTOCOL)
from ..wire.ipv4 import IPV4_HEADER_LEN, Ipv4Packet
from .config import StackConfig
from .device import ETHERNET, LOOPBACK, Device, multicast_mac
from .errors import StackError
from .filter import ACCEPT, EGRESS, FORWARD, INGRESS, INPUT, OUTPUT
from .fragment import Reassembler, fragment_ipv4
from .links import Links
from .route import CONNECTED, Route, RoutingTable, RoutingTables

UNSPECIFIED = IPv4Address("0.0.0.0")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
ALL_HOSTS = IPv4Address("224.0.0.1")   # RFC 1112 §7.2: every host is a member
_THIS_NET = IPv4Network("0.0.0.0/8")
_CLASS_E = IPv4Network("240.0.0.0/4")
MAX_PAYLOAD = 0xFFFF - IPV4_HEADER_LEN
# RFC 1122 §3.2.1.3: 127/8 is the host's own loopback network; lo has it from the start.
LO_ADDRESS = IPv4Interface("127.0.0.1/8")


def is_martian(a: IPv4Address) -> bool:
    """Addresses that never name a single remote host (RFC 1812 §5.3.7, §4.2.2.11):
    0/8 (this network), 127/8 (loopback), 224/4 (multicast) and 240/4 (class E)."""
    first = int(a) >> 24
    return first == 0 or first == 127 or first >= 224


@dataclass(frozen=True)
class Ipv4Datagram:
    """A datagram as received: the header of its (first) packet and its whole payload."""
    header: Ipv4Packet
    payload: bytes | memoryview
    device: str
    broadcast: bool          # sent to an IP broadcast/multicast or a link-layer broadcast

    @property
    def src(self) -> IPv4Address:
        return self.header.src

    @property
    def dst(self) -> IPv4Address:
        return self.header.dst


@dataclass(frozen=True)
class OutputPath:
    """The result of resolve(): egress device, next hop, and the chosen source address."""
    device: Device
    next_hop: IPv4Address
    src: IPv4Address
    dst: IPv4Address
    lladdr: bytes | None       # fixed link address for broadcast/multicast, else None
    pinned: bool = False       # the sender named the device (a re-route keeps to it)


class SendIcmpError(Protocol):
    """Icmpv4.send_error: an ICMP error about `orig`, unless RFC 1122/1812 forbid it."""
    def __call__(self, orig: "Ipv4Datagram", type: int, code: int, now: float,
                 mtu: int = 0) -> bool: ...


@dataclass(frozen=True)
class IpContext:
    """Everything outside itself that the IPv4 layer may touch."""
    # Devices (looked up and iterated, never added or removed), their transmit queues, lo.
    links: Links
    # The IPv4 neighbor table's send(device, address int, packet, now): ARP resolves.
    neighbor_send: Callable[[str, int, bytes, float], None]
    # ICMP errors about datagrams it drops (time exceeded, unreachable, fragmentation needed).
    send_error: SendIcmpError


class Ipv4Layer:
    version = 4

    def __init__(self, cfg: StackConfig, counters, reassembly_counters, ident: int,
                 ctx: IpContext) -> None:
        """`ident`: the first IP identification to use (random, so it does not restart at
        0 with every incarnation)."""
        self.cfg = cfg
        self.c = counters
        self._links = ctx.links
        self._devs = ctx.links.devices
        self._neighbor_send = ctx.neighbor_send
        self._send_error = ctx.send_error
        self.routes = RoutingTable(4, self.cfg.max_routes)    # main
        self.tables = RoutingTables(self.routes)              # main and tables 1-252
        self.reassembly = Reassembler(self.cfg, reassembly_counters)
        self.local: dict[IPv4Address, str] = {}        # our addresses -> their device
        self.broadcasts: dict[IPv4Address, str] = {}   # directed broadcasts -> device
        # The same two tables keyed by int, for the per-frame path (fastpath.py).
        self.local_ints: dict[int, str] = {}
        self.broadcast_ints: dict[int, str] = {}
        self.next_ident = ident
        self.protocols: dict[int, Callable[[Ipv4Datagram, float], None]] = {}
        # The packet filter (filter.py), set by the Stack; its hooks run while it is active.
        self.filter = None

    # -- addresses ---------------------------------------------------------------------------
    def add_address(self, dev: Device, iface: IPv4Interface) -> None:
        """Assign an address the caller has checked, with its connected route."""
        dev.addresses.append(iface)
        self.reindex()
        if not any(r.kind == CONNECTED and r.device == dev.name and r.prefix == iface.network
                   for r in self.routes):
            self.routes.add(Route(iface.network, None, dev.name, 0, CONNECTED))

    def remove_address(self, dev: Device, iface: IPv4Interface) -> None:
        """Withdraw an address of dev; its connected route goes with the last one on it."""
        dev.addresses.remove(iface)
        dev.last_defended.pop(iface.ip, None)
        self.reindex()
        if not any(a.network == iface.network for a in dev.addresses):
            try:
                self.routes.remove(iface.network, device=dev.name, kind=CONNECTED)
            except StackError:
                pass

    def reindex(self) -> None:
        # `local` and `broadcasts` change in place (ICMP holds broadcasts.__contains__);
        # the int tables are rebound, which tells the fast path its source cache is stale.
        self.local.clear()
        self.broadcasts.clear()
        for dev in self._devs.values():
            for iface in dev.addresses:
                self.local.setdefault(iface.ip, dev.name)
                if iface.network.prefixlen < 31:   # RFC 3021: /31 has no broadcast
                    self.broadcasts.setdefault(iface.network.broadcast_address, dev.name)
        self.local_ints = {int(a): d for a, d in self.local.items()}
        self.broadcast_ints = {int(a): d for a, d in self.broadcasts.items()}

    def is_local(self, a) -> bool:
        return a in self.local

    def usable(self, name: str) -> bool:
        d = self._devs.get(name)
        return d is not None and d.up

    def any_source(self) -> IPv4Address | None:
        for d in self._devs.values():
            if d.kind != LOOPBACK and d.addresses:
                return d.addresses[0].ip
        return None

    # -- receive -----------------------------------------------------------------------------
    def receive(self, dev: Device, buf, link_broadcast: bool, now: float) -> None:
        c = self.c
        try:
            pkt = Ipv4Packet.parse(buf)
        except ParseError:
            c["rx_bad_header"] += 1
            return
        c["rx_packets"] += 1
        src, dst = pkt.src, pkt.dst
        on_lo = dev.kind == LOOPBACK
        s1, d1 = int(src) >> 24, int(dst) >> 24   # first octets: the checks below are on every packet
        # RFC 1122 §3.2.1.3: 127/8 and broadcast/multicast never appear as a source on a wire
        # (224/4 multicast, 240/4 class E and 255.255.255.255 all have a first octet >= 224).
        if s1 >= 224 or src in self.broadcasts or (not on_lo and (s1 == 127 or d1 == 127)):
            c["rx_drop_martian"] += 1
            return
        if not on_lo and src in self.local:
            c["rx_drop_own_source"] += 1        # our own address from outside: spoofed or a loop
            return
        meta = None
        filt = self.filter
        if filt is not None and filt.active and not on_lo:
            meta = filt.carry
            if meta is not None:
                filt.carry = None               # the fast path ran ingress and input already
            else:
                meta, pkt = self._ingress(filt, dev, pkt, buf, now)
                if meta is None:
                    return
                dst, d1 = pkt.dst, int(pkt.dst) >> 24
        if dst in self.local or (on_lo and d1 == 127):
            self._local_in(dev, pkt, link_broadcast, now, meta)
        elif dst == LIMITED_BROADCAST or dst in self.broadcasts or dst == ALL_HOSTS:
            self._local_in(dev, pkt, True, now, meta)
        elif 224 <= d1 <= 239:
            c["rx_drop_multicast_not_joined"] += 1
        elif d1 == 0 or d1 >= 240:
            c["rx_drop_martian"] += 1
        else:
            self._forward(dev, pkt, link_broadcast, now, meta)

    def _ingress(self, filt, dev: Device, pkt: Ipv4Packet, buf, now: float):
        """The ingress hook: (meta, packet) to go on with, the packet translated when its
        connection's destination is; (None, pkt) when the rules dropped it. Connections are
        tracked on whole datagrams only; a fragment is matched on its addresses alone."""
        whole = not pkt.is_fragment
        m = filt.meta(dev.name, int(pkt.src), int(pkt.dst), pkt.proto, pkt.payload,
                      pkt.total_length, buf, pkt.frag_offset == 0)
        if whole:
            filt.track(m, pkt.payload, now)
        if filt.run(INGRESS, m, now) != ACCEPT:
            return None, pkt
        e = m.entry
        if e is not None and e.rewrite[m.dir] is not None:
            b = bytearray(buf[:pkt.total_length])
            if filt.translate(b, 0, m, True):
                pkt = Ipv4Packet.parse(b, verify_checksum=False)
                m.raw = b
        return m, pkt

    def _local_in(self, dev: Device, pkt: Ipv4Packet, broadcast: bool, now: float,
                  meta=None) -> None:
        if meta is not None:
            filt = self.filter
            if filt.run(INPUT, meta, now) != ACCEPT or not filt.confirm(meta, now):
                return
        payload = pkt.payload
        if pkt.is_fragment:
            done = self.reassembly.add((pkt.src, pkt.dst, pkt.proto, pkt.ident), pkt.src,
                                       pkt.frag_offset, pkt.payload, pkt.more_fragments,
                                       pkt if pkt.frag_offset == 0 else None, now,
                                       0xFFFF - pkt.header_len)
            if done is None:
                return
            pkt, payload = done
        rx = Ipv4Datagram(pkt, payload, dev.name, broadcast)
        handler = self.protocols.get(pkt.proto)
        self.c["rx_delivered"] += 1
        if handler is None:
            self.c["rx_unknown_protocol"] += 1
            self._send_error(rx, ICMP_DEST_UNREACH, UNREACH_PROTOCOL, now)
            return
        handler(rx, now)

    def expire_reassembly(self, now: float) -> None:
        for first in self.reassembly.poll(now):
            # RFC 792/1122 §3.3.2: time exceeded (code 1) only if fragment zero arrived.
            if first is not None:
                rx = Ipv4Datagram(first, first.payload, "", False)
                self._send_error(rx, ICMP_TIME_EXCEEDED, TIME_EXCEEDED_REASSEMBLY, now)

    # -- forwarding --------------------------------------------------------------------------
    def _forward(self, dev: Device, pkt: Ipv4Packet, link_broadcast: bool, now: float,
                 meta=None) -> None:
        c = self.c
        if not dev.forwarding:
            c["forward_drop_disabled"] += 1
            return
        if link_broadcast:
            c["forward_drop_link_broadcast"] += 1  # RFC 1812 §5.3.4
            return
        if is_martian(pkt.src) or is_martian(pkt.dst):
            c["forward_drop_martian"] += 1         # RFC 1812 §5.3.7
            return
        rx = Ipv4Datagram(pkt, pkt.payload, dev.name, False)
        if pkt.ttl <= 1:
            c["forward_drop_ttl"] += 1             # RFC 1812 §5.3.1
            self._send_error(rx, ICMP_TIME_EXCEEDED, TIME_EXCEEDED_TTL, now)
            return
        # Policy routing: the table an ingress `table N` rule picked, then main.
        hop = self.tables.lookup(pkt.dst, self.usable, None if meta is None else meta.table)
        if hop is None:
            c["forward_drop_no_route"] += 1
            self._send_error(rx, ICMP_DEST_UNREACH, UNREACH_NET, now)
            return
        out = self._devs[hop.device]
        if meta is not None:
            filt = self.filter
            meta.oif = out.name
            if filt.run(FORWARD, meta, now) != ACCEPT or filt.run(EGRESS, meta, now) != ACCEPT \
                    or not filt.confirm(meta, now):
                return
            e = meta.entry
            if e is not None and e.rewrite[meta.dir] is not None:
                # Source NAT, on the whole datagram (before any fragmenting).
                b = bytearray(pkt.header) + bytes(pkt.payload)
                b[2:4] = len(b).to_bytes(2, "big")
                if filt.translate(b, 0, meta, False):
                    pkt = Ipv4Packet.parse(b, verify_checksum=False)
        ttl = pkt.ttl - 1
        if pkt.header_len + len(pkt.payload) > out.mtu:
            if pkt.dont_fragment:
                c["forward_drop_frag_needed"] += 1  # RFC 1191: tell the sender our next-hop MTU
                self._send_error(rx, ICMP_DEST_UNREACH, UNREACH_FRAG_NEEDED, now, mtu=out.mtu)
                return
            packets = fragment_ipv4(pkt, out.mtu, ttl)
            if not packets:
                c["forward_drop_mtu_too_small"] += 1
                return
            c["tx_fragments"] += len(packets)
        else:
            packets = [build_ipv4(pkt.src, pkt.dst, pkt.proto, pkt.payload, ttl=ttl,
                                  ident=pkt.ident, dont_fragment=pkt.dont_fragment,
                                  more_fragments=pkt.more_fragments,
                                  frag_offset=pkt.frag_offset, dscp=pkt.dscp, ecn=pkt.ecn,
                                  options=pkt.options_bytes)]
        c["forwarded"] += 1
        for p in packets:
            self.link_output(out, hop.address, p, now)

    # -- output ------------------------------------------------------------------------------
    def resolve(self, dst: IPv4Address, *, src: IPv4Address | None = None,
                device: str | None = None, table: int | None = None) -> OutputPath:
        """Where a datagram from us to dst goes, and from which source address; routed in
        `table` (an output `table N` rule's choice) and, where it has no route, in main.

        Raises StackError (no_device, no_route, no_address, link_down) for a local sender.
        """
        devs = self._devs
        lladdr = None
        if device is not None and device not in devs:
            raise StackError("no_device", f"no device {device}")
        if dst == LIMITED_BROADCAST or dst in self.broadcasts or dst.is_multicast:
            if device is None:
                device = self.broadcasts.get(dst)
            if device is None:
                hop = self.tables.lookup(dst, self.usable, table)
                if hop is None:
                    raise StackError("no_route", f"no route to {dst}")
                device = hop.device
            out = devs[device]
            next_hop = dst
            lladdr = multicast_mac(dst) if dst.is_multicast else BROADCAST_MAC
            if src is None:
                # An unconfigured host broadcasts from 0.0.0.0 (RFC 2131 §4.1, DHCP).
                src = out.source_for(dst) or UNSPECIFIED
        elif dst in self.local or dst.is_loopback:
            # To ourselves (our own addresses, and all of 127/8, RFC 1122 §3.2.1.3): lo feeds
            # the datagram back to our own input (Links.loopback, drained by Stack), as
            # Linux's local routes do; it never reaches a device.
            out = devs["lo"]
            next_hop = dst
            if src is None:
                # As Linux: our own address answers as itself, the rest of 127/8 from lo's.
                src = dst if dst in self.local else out.source_for(dst) or dst
        else:
            hop = self.tables.lookup(dst, self.usable, table, device)
            if hop is None:
                raise StackError("no_route", f"no route to {dst}" +
                                 (f" via {device}" if device else ""))
            out = devs[hop.device]
            next_hop = hop.address
            if src is None:
                src = out.source_for(next_hop) or self.any_source()
            if src is None:
                raise StackError("no_address", f"no source address to reach {dst}")
        if not out.up:
            raise StackError("link_down", f"{out.name} is down")
        return OutputPath(out, next_hop, src, dst, lladdr, device is not None)

    def send(self, dst: IPv4Address, proto: int, payload: bytes, now: float, *,
             src: IPv4Address | None = None, ttl: int | None = None, device: str | None = None,
             dont_fragment: bool = False) -> None:
        """Originate one datagram. Raises StackError for what a local sender must hear."""
        path = self.resolve(dst, src=src, device=device)
        self.send_via(path, proto, payload, now, ttl=ttl, dont_fragment=dont_fragment)

    def send_via(self, path: OutputPath, proto: int, payload: bytes, now: float, *,
                 ttl: int | None = None, dont_fragment: bool = False, tos: int = 0) -> None:
        """`tos`: the DSCP and ECN byte (IP_TOS), checked by the caller."""
        if len(payload) > MAX_PAYLOAD:
            raise StackError("message_too_long", f"{len(payload)} bytes do not fit a datagram")
        out = path.device
        filt = self.filter
        meta = None
        if filt is not None and filt.active and out.kind != LOOPBACK and not filt.bypass:
            meta = filt.meta(None, int(path.src), int(path.dst), proto, payload,
                             20 + len(payload), None)
            filt.track(meta, payload, now, True)
            if filt.run(OUTPUT, meta, now) != ACCEPT:
                self.c["tx_drop_filter"] += 1
                return
            e = meta.entry
            rw = e.rewrite[meta.dir] if e is not None else None
            if rw is not None and rw[2] != int(path.dst):
                # Destination NAT of our own packet: routed anew to where it now goes.
                path = self.resolve(IPv4Address(rw[2]), src=path.src, table=meta.table)
                out = path.device
            elif meta.table is not None and path.lladdr is None:
                # A `table N` choice: routed anew in that table, from the source already
                # chosen (as Linux re-routes after its output hook, keeping the address).
                path = self.resolve(path.dst, src=path.src, table=meta.table,
                                    device=out.name if path.pinned else None)
                out = path.device
            meta.oif = out.name
            if filt.run(EGRESS, meta, now) != ACCEPT or not filt.confirm(meta, now):
                self.c["tx_drop_filter"] += 1
                return
        ttl = self.cfg.default_ttl if ttl is None else ttl
        ident = self.next_ident
        self.next_ident = (ident + 1) & 0xFFFF
        packet = build_ipv4(path.src, path.dst, proto, payload, ttl=ttl, ident=ident,
                            dont_fragment=dont_fragment, dscp=tos >> 2, ecn=tos & 3)
        if meta is not None and meta.entry is not None and meta.entry.rewrite[meta.dir] is not None:
            b = bytearray(packet)
            filt.translate(b, 0, meta, True)
            filt.translate(b, 0, meta, False)
            packet = bytes(b)
        if len(packet) > out.mtu:
            if dont_fragment:
                raise StackError("message_too_long", f"{len(packet)} bytes exceed MTU {out.mtu}")
            packets = fragment_ipv4(Ipv4Packet.parse(packet, verify_checksum=False), out.mtu)
            if not packets:
                raise StackError("message_too_long", f"MTU {out.mtu} too small")
            self.c["tx_fragments"] += len(packets)
        else:
            packets = [packet]
        self.c["tx_packets"] += 1
        for p in packets:
            self.link_output(out, path.next_hop, p, now, path.lladdr)

    def link_output(self, out: Device, next_hop: IPv4Address, packet: bytes, now: float,
                    lladdr: bytes | None = None) -> None:
        links = self._links
        if out.name not in self._devs:
            links.counters(out.name)["tx_drop_no_device"] += 1
            return
        if not out.up:
            links.counters(out.name)["tx_drop_link_down"] += 1
            return
        if out.kind == LOOPBACK:
            links.loopback(out, packet)
        elif out.kind != ETHERNET:
            links.enqueue_tx(out, packet)
        else:
            if lladdr is None:
                if next_hop == LIMITED_BROADCAST or self.broadcasts.get(next_hop) == out.name:
                    lladdr = BROADCAST_MAC
                elif next_hop.is_multicast:
                    lladdr = multicast_mac(next_hop)
            if lladdr is not None:
                links.enqueue_tx(out, build_ethernet(lladdr, out.mac, ETHERTYPE_IPV4, packet))
            else:
                self._neighbor_send(out.name, int(next_hop), packet, now)

    def neighbor_failed(self, device: str, packets: list[bytes], now: float) -> None:
        """Address resolution failed: host unreachable to each waiting packet's sender."""
        for p in packets:
            try:
                pkt = Ipv4Packet.parse(p, verify_checksum=False)
            except ParseError:
                continue
            self._send_error(Ipv4Datagram(pkt, pkt.payload, device, False),
                             ICMP_DEST_UNREACH, UNREACH_HOST, now)

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This layer's keys of Stack.snapshot(): addresses (not lo's own 127.0.0.1/8, which
        every stack starts with), static routes (connected ones follow from the addresses)
        with the numbered tables' (route_tables), and the IP ident, so a successor does not
        reuse recent idents (RFC 6864 §4)."""
        return {"addresses": [{"device": d.name, "address": str(a)}
                              for d in self._devs.values() for a in d.addresses
                              if not (d.kind == LOOPBACK and a == LO_ADDRESS)],
                "routes": self.routes.snapshot(),
                "route_tables": self.tables.snapshot(),
                "ip4_ident": self.next_ident}

    def restore(self, snap: dict) -> None:
        """Into a new layer whose devices Links has restored."""
        for a in snap["addresses"]:
            self.add_address(self._devs[a["device"]], IPv4Interface(a["address"]))
        self.routes.restore(snap["routes"])
        self.tables.restore(snap.get("route_tables", []))   # absent before policy routing
        self.next_ident = int(snap.get("ip4_ident", 0)) & 0xFFFF


class Ipv4ForTransport:
    """The IPv4 side of tcp.layer.TcpIp: all a transport protocol may ask of this layer."""
    version = 4
    header_len = 20
    default_send_mss = 536          # RFC 9293 §3.7.1 (RFC 879)

    def __init__(self, ip4: Ipv4Layer, proto: int) -> None:
        self._ip4 = ip4
        self._proto = proto
        # FastPath.ip_send, set by the Stack once the fast path exists: the common case (a
        # unicast to a resolved neighbor, whole) in one buffer; it declines the rest.
        self.fast_send = None

    def source_and_mtu(self, remote: IPv4Address, local: IPv4Address | None):
        path = self._ip4.resolve(remote, src=local)
        return path.src, path.device.mtu

    def output(self, local: IPv4Address, remote: IPv4Address, segment: bytes, now: float,
               ttl: int | None = None, tos: int = 0) -> None:
        fast = self.fast_send
        if fast is not None and fast(int(local), int(remote), self._proto, segment, ttl, tos, now):
            return
        ip4 = self._ip4
        ip4.send_via(ip4.resolve(remote, src=local), self._proto, segment, now, ttl=ttl, tos=tos)

    def is_local(self, addr: IPv4Address) -> bool:
        return self._ip4.is_local(addr)

    def tso_max(self, remote: IPv4Address, local: IPv4Address | None) -> int:
        """The TCP payload the egress device segments for us toward remote (0: none)."""
        try:
            return self._ip4.resolve(remote, src=local).device.tso_max
        except StackError:
            return 0


__all__ = ["Ipv4Layer", "Ipv4ForTransport", "Ipv4Datagram", "is_martian", "LIMITED_BROADCAST", "UNSPECIFIED",
           "PROTO_ICMP"]
