"""Stack: the one object a binding talks to.

It builds the layers and wires them together: each layer gets, at construction, a narrow
context naming what it may touch (ipv4.IpContext, arp.ArpContext, icmp.IcmpContext, the
tables FastPath reads, tcp.layer.TcpIp; ipv6.Ipv6Context, ndp.NdpContext,
icmpv6.Icmpv6Context), never the Stack. Ethernet demux, the loopback
drain and the control calls' argument checks live here. Every entry point takes `now`;
frames come out of take_transmit(), events out of take_events(), and the next timer out of
next_deadline().
"""

from __future__ import annotations

import random
import secrets
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ..wire import (ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
                    EthernetFrame, MacAddr, ParseError, build_echo, build_udp)
from ..wire.icmpv4 import ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST, UNREACH_PORT
from . import snapshot as _snapshot
from .arp import Arp, ArpContext
from .config import StackConfig
from .counters import CounterSet
from .device import (ETHERNET, IP, LOOPBACK, MAX_MTU, MIN_MTU, AddressInfo, Device,
                     DeviceInfo)
from .errors import StackError
from .events import DeviceRemoved, LinkChanged
from .fastpath import FastPath
from .filter import Filter, FilterContext
from .icmp import IcmpContext, Icmpv4
from .icmpv6 import UNREACH_PORT6, Icmpv6, Icmpv6Context
from .ipv6 import (LOOPBACK_IFACE, PREFERRED, Ipv6Addresses, Ipv6Context, Ipv6ForTransport,
                   Ipv6Layer, link_local_for)
from .ndp import Ndp, NdpContext
from .routerdisc import RouterDiscovery, RouterDiscoveryContext
from .stack6 import Ipv6Api
from ..wire.icmpv6 import ICMPV6_DEST_UNREACH
from ..wire.ipv6 import NEXT_HEADER_ICMPV6, NEXT_HEADER_TCP, NEXT_HEADER_UDP
from .ipv4 import (LIMITED_BROADCAST, LO_ADDRESS, IpContext, Ipv4Datagram, Ipv4ForTransport,
                   Ipv4Layer)
from .links import Links
from .neighbor import NeighborInfo
from .route import STATIC, Route, RouteInfo
from .tcp.layer import TcpLayer
from .tcp.segment import rst_for
from ..wire.ipv4 import Ipv4Packet
from ..wire.tcp import TcpSegment
from .udp import Datagram, UdpSockets

UDP_MAX_PAYLOAD = 65507     # 65535 - 20 (IPv4 header) - 8 (UDP header)


def _addr(a, what: str = "address") -> IPv4Address:
    try:
        a = a if isinstance(a, IPv4Address) else IPv4Address(a)
    except (ValueError, TypeError):
        raise StackError("bad_argument", f"not an IPv4 {what}: {a!r}") from None
    return a


def _port(p, allow_zero: bool) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not (0 if allow_zero else 1) <= p <= 0xFFFF:
        raise StackError("bad_argument", f"bad port {p!r}")
    return p


# Socket and connection ids of the IPv6 tables start here (the IPv4 ones below), so the
# bindings serve both versions through one id space.
UDP6_FIRST_SID = 1 << 30
TCP4_IDS, TCP6_IDS = (1, (1 << 30) - 1), (1 << 30, 0x7FFFFFFF)


class Stack(Ipv6Api):
    def __init__(self, config: StackConfig | None = None) -> None:
        cfg = self.cfg = config or StackConfig()
        rng = self.rng = random.Random(cfg.random_seed)
        self.ctr = CounterSet()
        # Counter groups are made once and never replaced (restore loads values into them),
        # so a layer may hold its own.
        g = self.ctr.group
        self._c = g("stack")
        ip_c, reassembly_c, icmp_c, arp_c = g("ipv4"), g("reassembly"), g("icmp"), g("arp")
        neighbor_c, udp_c, tcp_c = g("neighbor"), g("udp"), g("tcp")
        self.links = Links(cfg, self.ctr)
        self.devs = self.links.devices
        self._events: list = []
        self._draining = False
        # ARP and IPv4 need each other (IPv4 sends through ARP's neighbor table; a failed
        # resolution ends in IPv4's ICMP errors), and so do IPv4 and ICMP: the layer built
        # first reaches the later one through a lambda, on those error paths only.
        self.arp = Arp(cfg, arp_c, neighbor_c, ArpContext(
            links=self.links, emit=self.emit,
            unreachable=lambda device, packets, now: self.ip4.neighbor_failed(device, packets,
                                                                              now)))
        self.arp_neighbors = self.arp.neighbors
        self.ip4 = Ipv4Layer(cfg, ip_c, reassembly_c, rng.randrange(0x10000), IpContext(
            links=self.links, neighbor_send=self.arp_neighbors.send,
            send_error=lambda orig, type, code, now, mtu=0: self.icmp.send_error(
                orig, type, code, now, mtu)))
        ip4 = self.ip4
        self.udp4 = UdpSockets(4, cfg, udp_c, rng)
        # RFC 6528: the ISN key is secret and random; a seeded stack (tests) derives it.
        isn_key = rng.randbytes(16) if cfg.random_seed is not None else secrets.token_bytes(16)
        self.tcp4 = TcpLayer(Ipv4ForTransport(ip4, PROTO_TCP), tcp_c, rng, isn_key, ids=TCP4_IDS)
        self.icmp = Icmpv4(cfg, icmp_c, IcmpContext(
            send=ip4.send, is_local=ip4.is_local,
            is_directed_broadcast=ip4.broadcasts.__contains__, devices=self.devs,
            emit=self.emit, udp_sender=self.udp4.find_sender, tcp_error=self.tcp4.icmp_error))
        self.fast = FastPath(cfg, self.links, ip4, self.arp_neighbors, self.udp4, icmp_c,
                             self.tcp4.established)
        self.tcp4.ip.fast_send = self.fast.ip_send
        # The packet filter and connection tracking (filter.py): idle until a rule set is
        # installed, then run by IPv4's receive, forward and output and by the fast path.
        self.filter = Filter(g("filter"), g("conntrack"), FilterContext(
            source_of=self._filter_source, address_of=self._filter_address,
            reject=self._filter_reject, socket_marks=self._socket_marks), cfg.conntrack_max)
        ip4.filter = self.filter
        self.fast._filter = self.filter
        # The transports, by IP protocol number.
        ip4.protocols[PROTO_ICMP] = self.icmp.receive
        udp4_receive, send_error = self.udp4.receive, self.icmp.send_error

        def udp4_input(rx: Ipv4Datagram, now: float) -> None:
            h = rx.header
            if not udp4_receive(rx.src, rx.dst, rx.payload, rx.device, rx.broadcast, h.ttl,
                                h.dscp << 2 | h.ecn):
                # RFC 1122 §4.1.3.1: port unreachable, never for a broadcast (send_error checks).
                send_error(rx, ICMP_DEST_UNREACH, UNREACH_PORT, now)
        ip4.protocols[PROTO_UDP] = udp4_input
        tcp4_receive = self.tcp4.receive
        ip4.protocols[PROTO_TCP] = lambda rx, now: tcp4_receive(
            rx.src, rx.dst, rx.payload, rx.broadcast, now)
        # IPv6 on Ethernet devices (ipv6.py): the address table is shared by IPv6 (what is
        # ours, which source) and NDP (which targets it answers, DAD's verdicts). IPv6 sends
        # through NDP's neighbor table, and ICMPv6 through IPv6: as for IPv4, the layer
        # built first reaches ICMPv6 through a lambda, on error paths only.
        # UDP and TCP over IPv6 are the same layers as IPv4's, one table per version.
        self.ip6_addresses = Ipv6Addresses(cfg.max_ipv6_addresses)
        self.ndp = Ndp(cfg, g("ndp"), g("neighbor6"), NdpContext(
            links=self.links, addresses=self.ip6_addresses, emit=self._ndp_event,
            is_router=lambda device: self.devs[device].forwarding if device in self.devs
            else False,
            unreachable=lambda device, packets, now: self.ip6.neighbor_failed(device, packets,
                                                                              now),
            router_advertisement=lambda dev, src, ra, now: self.routers6.router_advertisement(
                dev, src, ra, now),
            router_solicitation=lambda dev, src, now: self.routers6.router_solicitation(
                dev, src, now)))
        self.ip6_neighbors = self.ndp.neighbors
        self.ip6 = Ipv6Layer(cfg, g("ipv6"), g("reassembly6"), rng.randrange(1 << 32), Ipv6Context(
            links=self.links, addresses=self.ip6_addresses,
            neighbor_send=self.ip6_neighbors.send,
            send_error=lambda orig, type, code, now, **kw: self.icmp6.send_error(
                orig, type, code, now, **kw)))
        ip6 = self.ip6
        self.udp6 = UdpSockets(6, cfg, g("udp6"), rng, first_sid=UDP6_FIRST_SID)
        self.tcp6 = TcpLayer(Ipv6ForTransport(ip6, NEXT_HEADER_TCP), g("tcp6"), rng, isn_key,
                             ids=TCP6_IDS)
        self.icmp6 = Icmpv6(cfg, g("icmpv6"), Icmpv6Context(
            send=ip6.send, source_for=self.ip6_addresses.source_for,
            nd_receive=self.ndp.receive, is_local=self.ip6_addresses.is_preferred,
            emit=self.emit, udp_sender=self.udp6.find_sender, tcp_error=self.tcp6.icmp_error,
            packet_too_big=ip6.packet_too_big))
        ip6.protocols[NEXT_HEADER_ICMPV6] = self.icmp6.receive
        udp6_receive, send_error6 = self.udp6.receive, self.icmp6.send_error

        def udp6_input(rx, now: float) -> None:
            h = rx.header
            if not udp6_receive(rx.src, rx.dst, rx.payload, rx.device, rx.multicast,
                                h.hop_limit, h.traffic_class):
                # RFC 4443 §3.1: port unreachable (never for a multicast; send_error checks).
                send_error6(rx, ICMPV6_DEST_UNREACH, UNREACH_PORT6, now)
        ip6.protocols[NEXT_HEADER_UDP] = udp6_input
        tcp6_receive = self.tcp6.receive
        ip6.protocols[NEXT_HEADER_TCP] = lambda rx, now: tcp6_receive(
            rx.src, rx.dst, rx.payload, rx.multicast, now)
        # Router discovery (routerdisc.py): SLAAC on host devices, advertisements on the
        # devices configured as the link's router. RFC 7217's key: secret, random; a seeded
        # stack (tests) derives it; a successor gets it in the snapshot.
        slaac_key = rng.randbytes(32) if cfg.random_seed is not None else secrets.token_bytes(32)
        self.routers6 = RouterDiscovery(g("routers6"), g("slaac"), g("radv"), slaac_key, rng,
                                        RouterDiscoveryContext(
            links=self.links, addresses=self.ip6_addresses, add_address=self._add_slaac_address,
            remove_address=lambda dev, iface: self._remove_ipv6(dev, iface),
            set_state=lambda device, address, state: self.ip6_addresses.set_state(
                self.ip6_addresses.get(device, int(address)), state),
            routes=ip6.routes, link_mtu=ip6.link_mtu, hop_limit=ip6.hop_limits),
            cfg.router_solicitations)
        self.devs["lo"] = Device("lo", LOOPBACK, None, MAX_MTU)
        ip4.add_address(self.devs["lo"], LO_ADDRESS)
        if cfg.ipv6:
            ip6.add_address(self.devs["lo"], LOOPBACK_IFACE, PREFERRED)

    # -- the filter's context ----------------------------------------------------------------
    def _socket_marks(self, proto: int, src: int, sport: int, dst: int,
                      dport: int) -> tuple | None:
        if proto == 6:
            return self.tcp4.marks_of(src, sport, dst, dport)
        if proto == 17:
            s = self.udp4.find_sender(IPv4Address(src), sport, IPv4Address(dst), dport)
            return s.marks if s is not None else None
        return None

    def _filter_source(self, device: str | None, dst: int) -> int | None:
        dev = self.devs.get(device) if device is not None else None
        if dev is None:
            return None
        a = dev.source_for(IPv4Address(dst))
        return None if a is None else int(a)

    def _filter_address(self, device: str | None) -> int | None:
        dev = self.devs.get(device) if device is not None else None
        if dev is None or not dev.addresses:
            return None
        return int(dev.addresses[0].ip)

    def _filter_reject(self, m, now: float) -> None:
        """A rejected packet's answer: a TCP RST (RFC 9293 §3.10.7.1's fields) for a TCP
        segment, ICMP port unreachable for anything else (send_error's rules apply: never
        about an ICMP error, a broadcast or a non-first fragment)."""
        if m.raw is None:
            return
        try:
            pkt = Ipv4Packet.parse(bytes(m.raw), verify_checksum=False)
        except ParseError:
            return
        if pkt.proto == PROTO_TCP and pkt.frag_offset == 0 and not pkt.more_fragments:
            try:
                seg = TcpSegment.parse(pkt.payload, pkt.src, pkt.dst, verify_checksum=False)
            except ParseError:
                return
            reply = rst_for(seg)
            if reply is None:
                return
            try:
                self.ip4.send(pkt.src, PROTO_TCP, reply.build(pkt.dst, pkt.src), now, src=pkt.dst)
            except StackError:
                pass
            return
        self.icmp.send_error(Ipv4Datagram(pkt, pkt.payload, m.iif or "", False),
                             ICMP_DEST_UNREACH, UNREACH_PORT, now)

    # -- plumbing ----------------------------------------------------------------------------
    def emit(self, event) -> None:
        if len(self._events) >= self.cfg.max_events:
            self._c["events_dropped"] += 1
            return
        self._events.append(event)

    def _drain_loopback(self, now: float) -> None:
        if self._draining:
            return
        self._draining = True
        lo_queue = self.links.lo_queue
        try:
            # Bounded: each looped packet may loop at most a reply back (echo, ICMP error).
            budget = 4 * self.cfg.loopback_queue_frames
            while lo_queue and budget > 0:
                budget -= 1
                self._receive_one(self.devs["lo"], lo_queue.popleft(), now)
            if lo_queue:
                self._c["loopback_dropped_budget"] += len(lo_queue)
                lo_queue.clear()
        finally:
            self._draining = False

    def _dev(self, name: str) -> Device:
        d = self.devs.get(name)
        if d is None:
            raise StackError("no_device", f"no device {name!r}")
        return d

    # -- devices -----------------------------------------------------------------------------
    def add_device(self, name: str, kind: str = ETHERNET, mac: bytes | None = None,
                   mtu: int = 1500, now: float = 0.0, up: bool = True) -> DeviceInfo:
        if not isinstance(name, str) or not name or len(name) > 64:
            raise StackError("bad_argument", f"bad device name {name!r}")
        if name in self.devs:
            raise StackError("exists", f"device {name} exists")
        if kind not in (ETHERNET, IP):
            raise StackError("bad_argument", f"device kind must be ethernet or ip, not {kind!r}")
        if len(self.devs) >= self.cfg.max_devices:
            self._c["add_device_refused_limit"] += 1
            raise StackError("limit", f"too many devices ({self.cfg.max_devices})")
        self._check_mtu(mtu)
        if kind == ETHERNET:
            if mac is None:
                # A locally administered unicast address (IEEE 802: U/L bit set, I/G clear).
                mac = bytes([0x02]) + self.rng.randbytes(5)
            try:
                mac = MacAddr(mac)
            except (ValueError, TypeError):
                raise StackError("bad_argument", f"bad MAC {mac!r}") from None
            if mac.is_multicast or mac == bytes(6):
                raise StackError("bad_argument", f"MAC {mac} is not a unicast address")
        else:
            mac = None
        dev = self.devs[name] = Device(name, kind, mac, mtu, up=up)
        self.links.counters(name)
        if kind == ETHERNET and self.cfg.ipv6:
            # RFC 4862 §5.3: a link-local address from the MAC, tentative until DAD passes.
            try:
                self._add_ipv6(dev, link_local_for(mac), now)
            except StackError:
                self._c["link_local_refused"] += 1      # the address table is full
            if up:
                self.routers6.link_up(dev, now)
        return dev.info()

    def remove_device(self, name: str, now: float = 0.0) -> None:
        dev = self._dev(name)
        if dev.kind == LOOPBACK:
            raise StackError("bad_argument", "lo cannot be removed")
        # Device churn is ordinary: everything that named the device lets go of it here.
        dropped = len(dev.tx) + self.arp_neighbors.flush_device(name) \
            + self.ip6_neighbors.flush_device(name)
        dev.tx.clear()
        del self.devs[name]
        self.ndp.link_down(name)
        self.routers6.remove_device(name, now)
        self.ip6.remove_device(name)
        self.ip4.tables.remove_device(name)
        self.ip4.reindex()
        self.arp.cancel_announcements(name)
        self._c["device_removed_frames_dropped"] += dropped
        self.links.drop_counters(name)
        self.emit(DeviceRemoved(name, dropped))

    def set_link(self, name: str, up: bool, now: float = 0.0) -> None:
        dev = self._dev(name)
        if dev.kind == LOOPBACK or dev.up == bool(up):
            return
        dev.up = bool(up)
        self.ip4.tables.invalidate()    # cached lookups skipped or chose this device
        self.ip6.routes.invalidate()
        if not up:
            dropped = len(dev.tx) + self.arp_neighbors.flush_device(name) \
                + self.ip6_neighbors.flush_device(name)
            dev.tx.clear()
            self.links.counters(name)["tx_drop_link_down"] += dropped
            self.arp.cancel_announcements(name)
            self.ndp.link_down(name)
        else:
            # RFC 5227 §2.3: announce our addresses again when the link comes back.
            for iface in dev.addresses:
                self.arp.announce(dev, iface.ip, now)
            if self.cfg.ipv6 and dev.kind == ETHERNET:
                self.ndp.link_up(dev, now)  # RFC 4862 §5.4: and probe the IPv6 ones again
                self.routers6.link_up(dev, now)     # RFC 4861 §6.3.7: solicit routers
        self.emit(LinkChanged(name, dev.up))

    def set_tso(self, name: str, max_payload: int) -> None:
        """The device segments TCP super-segments of up to max_payload bytes (0: it does not)."""
        if not isinstance(max_payload, int) or not 0 <= max_payload <= 0xFFFF - 120:
            raise StackError("bad_argument", f"bad TSO size {max_payload!r}")
        self._dev(name).tso_max = max_payload

    def set_forwarding(self, name: str, on: bool) -> None:
        self._dev(name).forwarding = bool(on)

    def set_mtu(self, name: str, mtu: int) -> None:
        dev = self._dev(name)
        self._check_mtu(mtu)
        dev.mtu = mtu

    @staticmethod
    def _check_mtu(mtu) -> None:
        if not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
            raise StackError("bad_argument", f"MTU must be {MIN_MTU}..{MAX_MTU}, not {mtu!r}")

    # -- addresses and routes ----------------------------------------------------------------
    def add_address(self, name: str, iface: IPv4Interface, now: float = 0.0) -> None:
        dev = self._dev(name)
        try:
            iface = IPv4Interface(iface)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv4 interface address: {iface!r}") from None
        ip = iface.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved or ip == LIMITED_BROADCAST \
                or (ip.is_loopback and dev.kind != LOOPBACK):
            raise StackError("bad_argument", f"{ip} cannot be an interface address")
        if iface.network.prefixlen < 31 and ip in (iface.network.network_address,
                                                    iface.network.broadcast_address):
            raise StackError("bad_argument", f"{iface} is a network or broadcast address")
        if ip in self.ip4.local:
            raise StackError("exists", f"{ip} is already assigned")
        self.ip4.add_address(dev, iface)
        self.arp_neighbors.flush_address(name, int(ip))
        self.arp.announce(dev, ip, now)

    def del_address(self, name: str, iface: IPv4Interface) -> None:
        dev = self._dev(name)
        try:
            iface = IPv4Interface(iface)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv4 interface address: {iface!r}") from None
        if iface not in dev.addresses:
            raise StackError("not_found", f"{iface} is not on {name}")
        self.ip4.remove_address(dev, iface)
        self.arp.cancel_announcements(name, iface.ip)

    def add_route(self, prefix: IPv4Network, gateway: IPv4Address | None = None,
                  device: str | None = None, metric: int = 0, table: int | None = None) -> None:
        """`table`: 1-252, created by its first route (route.py RoutingTables); None: main."""
        try:
            prefix = IPv4Network(prefix)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv4 prefix: {prefix!r}") from None
        if gateway is not None:
            gateway = _addr(gateway, "gateway")
        if device is not None:
            self._dev(device)
        if not isinstance(metric, int) or not 0 <= metric <= 0xFFFFFFFF:
            raise StackError("bad_argument", f"bad metric {metric!r}")
        self.ip4.tables.add(Route(prefix, gateway, device, metric, STATIC), table)

    def del_route(self, prefix: IPv4Network, gateway: IPv4Address | None = None,
                  device: str | None = None, table: int | None = None) -> None:
        try:
            prefix = IPv4Network(prefix)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv4 prefix: {prefix!r}") from None
        self.ip4.tables.remove(prefix, None if gateway is None else _addr(gateway, "gateway"),
                               device, kind=STATIC, table=table)

    # -- views -------------------------------------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        return [d.info() for d in self.devs.values()]

    def addresses(self) -> list[AddressInfo]:
        return [AddressInfo(d.name, str(a)) for d in self.devs.values() for a in d.addresses]

    def routes(self, table: int | None = None, every: bool = False) -> list[RouteInfo]:
        """Main's routes, or table N's; with `every`, main's then each numbered table's."""
        return self.ip4.tables.info(self.ip4.usable, table, every)

    def neighbors(self) -> list[NeighborInfo]:
        return self.arp_neighbors.info()

    def sockets(self) -> list[dict]:
        return [s.info() for s in self.udp4.sockets() + self.udp6.sockets()]

    def counters(self) -> dict[str, dict[str, int]]:
        out = self.ctr.to_dict()
        # Connections fold their counters into the group when they end; live ones count too.
        tcp = out.setdefault("tcp", {})
        for k, v in self.tcp4.live_counters().items():
            tcp[k] = tcp.get(k, 0) + v
        tcp6 = out.setdefault("tcp6", {})
        for k, v in self.tcp6.live_counters().items():
            tcp6[k] = tcp6.get(k, 0) + v
        for d in self.devs.values():
            g = out.setdefault(f"dev:{d.name}", {})
            g["tx_queued"] = len(d.tx)
            g["tx_queue_limit"] = self.cfg.tx_queue_frames
        routes = self.ip4.routes
        out["table:neighbor"] = self.arp_neighbors.stats()
        out["table:neighbor6"] = self.ip6_neighbors.stats()
        out["table:ipv6_addresses"] = {"addresses": len(self.addresses6()),
                                       "limit": self.ip6_addresses.limit,
                                       "dropped": self.ip6_addresses.dropped}
        out["table:reassembly"] = self.ip4.reassembly.stats()
        out["table:reassembly6"] = self.ip6.reassembly.stats()
        out["table:udp"] = self.udp4.stats()
        out["table:udp6"] = self.udp6.stats()
        out["table:tcp"] = self.tcp4.stats()
        out["table:tcp6"] = self.tcp6.stats()
        out["table:routes6"] = {"routes": len(self.ip6.routes), "limit": self.ip6.routes.max_routes,
                                "dropped": self.ip6.routes.dropped}
        out["table:pmtu6"] = {"entries": len(self.ip6.pmtu)}
        tables = self.ip4.tables
        out["table:routes"] = {"routes": len(routes), "limit": routes.max_routes,
                               "dropped": routes.dropped, "tables": len(tables.numbers()),
                               "table_routes": tables.routes(), "table_dropped": tables.dropped}
        out["table:devices"] = {"devices": len(self.devs), "limit": self.cfg.max_devices}
        out["table:events"] = {"queued": len(self._events), "limit": self.cfg.max_events}
        out["table:loopback"] = {"queued": len(self.links.lo_queue),
                                 "limit": self.cfg.loopback_queue_frames}
        return out

    # -- data path ---------------------------------------------------------------------------
    def receive(self, device: str, frame: bytes, now: float) -> None:
        """One frame from device; bad input is counted and dropped, never raised."""
        dev = self.devs.get(device)
        if dev is None:
            self._c["rx_drop_no_device"] += 1
            return
        if dev.kind == LOOPBACK:
            self._c["rx_drop_loopback_external"] += 1   # lo is fed only by the stack itself
            return
        self._guarded(dev, frame, now)
        self._drain_loopback(now)

    def receive_batch(self, device: str, frames: list[bytes | memoryview], now: float,
                      trusted: set[int] | None = None) -> None:
        """Frames from device, each bytes or a memoryview (e.g. of one received buffer).
        `trusted`: indices of frames whose TCP checksum the sending device vouched for and
        which may be longer than the MTU (an offload port's TCP super-frames to us); TCP of
        a known connection takes them whole, anything else drops them (counted)."""
        dev = self.devs.get(device)
        if dev is None or dev.kind == LOOPBACK:
            if frames:      # lo is fed only by the stack itself
                self._c["rx_drop_no_device" if dev is None else "rx_drop_loopback_external"] \
                    += len(frames)
            return
        # Handling a frame never adds or removes a device (nothing here calls out), so dev
        # holds for the whole batch. Common frames take the fast path (fastpath.py); it
        # declines before doing anything, and the general path takes the rest.
        fast = self.fast.receive
        tcp4, tcp6 = self.tcp4, self.tcp6
        tcp4.begin_batch()
        tcp6.begin_batch()
        try:
            for i, frame in enumerate(frames):
                try:
                    if trusted and i in trusted:
                        if not self.fast.receive_trusted_tcp(dev, frame, now):
                            self.links.counters(device)["rx_drop_offload_unmatched"] += 1
                    elif not fast(dev, frame, now):
                        self._receive_one(dev, frame, now)
                        self.filter.carry = None
                except Exception as e:
                    self._internal_error(e)
        finally:
            tcp4.end_batch(now)
            tcp6.end_batch(now)
        self._drain_loopback(now)

    def _guarded(self, dev: Device, frame: bytes, now: float) -> None:
        try:
            if not self.fast.receive(dev, frame, now):
                self._receive_one(dev, frame, now)
                self.filter.carry = None
        except Exception as e:
            self._internal_error(e)

    def _internal_error(self, e: Exception) -> None:
        # A bug, not bad input (the wire layer raises only ParseError, handled below);
        # count it so it shows in `qnet status`, and keep the stack alive.
        if self.cfg.strict:
            raise e
        self._c["internal_errors"] += 1
        self._c[f"internal_error_{type(e).__name__}"] += 1

    def _receive_one(self, dev: Device, frame: bytes, now: float) -> None:
        c = self.links.counters(dev.name)
        c["rx_frames"] += 1
        c["rx_bytes"] += len(frame)
        if not dev.up:
            c["rx_drop_link_down"] += 1
            return
        if dev.kind != ETHERNET:
            if frame[:1] and frame[0] >> 4 == 6:
                if self.cfg.ipv6 and dev.kind == LOOPBACK:
                    self.ip6.receive(dev, frame, False, now)
                else:
                    c["rx_drop_ipv6_unsupported"] += 1
                return
            self.ip4.receive(dev, frame, False, now)
            return
        try:
            eth = EthernetFrame.parse(frame)
        except ParseError:
            c["rx_drop_bad_frame"] += 1
            return
        if eth.vlan_id is not None:
            c["rx_drop_vlan"] += 1
            return
        if eth.dst != dev.mac and not eth.dst.is_multicast:
            c["rx_drop_not_for_us"] += 1
            return
        if eth.src.is_multicast:
            c["rx_drop_bad_source_mac"] += 1
            return
        if eth.src == dev.mac:
            c["rx_drop_own_mac"] += 1        # our own frame reflected by a loop or a hub
            return
        if eth.ethertype == ETHERTYPE_IPV4:
            self.ip4.receive(dev, eth.payload, eth.dst.is_multicast, now)
        elif eth.ethertype == ETHERTYPE_ARP:
            self.arp.receive(dev, eth, now)
        elif eth.ethertype == ETHERTYPE_IPV6:
            if self.cfg.ipv6:
                self.ip6.receive(dev, eth.payload, eth.dst.is_multicast, now)
            else:
                c["rx_drop_ipv6_unsupported"] += 1
        else:
            c["rx_drop_unknown_ethertype"] += 1

    def take_transmit(self) -> dict[str, list[bytes]]:
        out = {}
        for d in self.devs.values():
            if d.tx:
                out[d.name] = list(d.tx)
                d.tx.clear()
        return out

    def take_events(self) -> list:
        ev, self._events = self._events, []
        return ev

    def poll(self, now: float) -> None:
        self.arp_neighbors.poll(now)
        self.arp.poll(now)
        self.ip6_neighbors.poll(now)
        self.ndp.poll(now)
        self.routers6.poll(now)
        self.ip4.expire_reassembly(now)
        self.ip6.expire_reassembly(now)
        self.tcp4.poll(now)
        self.tcp6.poll(now)
        self.filter.poll(now)
        self._drain_loopback(now)

    def drain(self, now: float) -> None:
        """Deliver what calls into a transport layer (tcp4) looped back to ourselves."""
        self._drain_loopback(now)

    def next_deadline(self) -> float | None:
        ds = [d for d in (self.arp_neighbors.next_deadline(), self.arp.next_deadline(),
                          self.ip6_neighbors.next_deadline(), self.ndp.next_deadline(),
                          self.routers6.next_deadline(),
                          self.ip4.reassembly.next_deadline(), self.tcp4.next_deadline(),
                          self.ip6.reassembly.next_deadline(), self.tcp6.next_deadline())
              if d is not None]
        return min(ds) if ds else None

    # -- ICMP echo ---------------------------------------------------------------------------
    def ping(self, dst: IPv4Address, ident: int, seq: int, payload: bytes, now: float,
             ttl: int = 64) -> None:
        dst = _addr(dst)
        if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF and 1 <= ttl <= 255):
            raise StackError("bad_argument", "ident/seq must be 16-bit, ttl 1..255")
        self.ip4.send(dst, PROTO_ICMP, build_echo(ICMP_ECHO_REQUEST, ident, seq, payload), now,
                      ttl=ttl)
        self.ctr.inc("icmp", "tx_echo_request")
        self._drain_loopback(now)

    # -- UDP ---------------------------------------------------------------------------------
    def udp_open(self, version: int = 4) -> int:
        """A UDP socket of IPv4 or IPv6; its id says which (UDP6_FIRST_SID and above: 6)."""
        if version == 6:
            if not self.cfg.ipv6:
                raise StackError("bad_argument", "IPv6 is off (StackConfig.ipv6)")
            return self.udp6.open()
        return self.udp4.open()

    def _udp(self, sid: int) -> UdpSockets:
        return self.udp6 if self.udp6.owns(sid) else self.udp4

    def udp_bind(self, sid: int, addr: IPv4Address | None, port: int,
                 device: str | None = None) -> tuple[IPv4Address | None, int]:
        if device is not None:
            self._dev(device)
        if self.udp6.owns(sid):
            return self.udp6.bind(sid, None if addr is None else self._addr6(addr),
                                  _port(port, True), device, self.is_local6)
        return self.udp4.bind(sid, None if addr is None else _addr(addr), _port(port, True),
                              device, self.ip4.is_local)

    def udp_connect(self, sid: int, addr: IPv4Address, port: int) -> None:
        table = self._udp(sid)
        s = table.get(sid)
        addr = self._addr6(addr) if table is self.udp6 else _addr(addr)
        port = _port(port, False)
        if not s.local_port:
            self.udp_bind(sid, None, 0, s.device)
        table.connect(sid, addr, port)

    def udp_set_broadcast(self, sid: int, on: bool) -> None:
        self._udp(sid).get(sid).broadcast = bool(on)

    def udp_set_mark(self, sid: int, domain: int, value: int) -> None:
        """A socket mark (domain 1..4) for the filter's `mark` matches of the flows it opens."""
        if not 1 <= domain <= 4 or not 0 <= value <= 0xFFFFFFFF:
            raise StackError("bad_argument", "a mark is domain 1..4, value 0..2**32-1")
        s = self._udp(sid).get(sid)
        marks = list(s.marks) + [0] * (4 - len(s.marks))
        marks[domain - 1] = value
        s.marks = tuple(marks) if any(marks) else ()

    def udp_sendto(self, sid: int, payload: bytes, addr: IPv4Address | None, port: int | None,
                   now: float, device: str | None = None) -> None:
        """addr: an IPv4Address, its text or its int (the binding's form, which can take
        the fast path: fastpath.py `udp_send`); an IPv6 socket's, an IPv6Address or text."""
        if self.udp6.owns(sid):
            self._udp6_sendto(sid, payload, addr, port, now, device)
            return
        s = self.udp4.get(sid)
        if addr.__class__ is int and port.__class__ is int and 0 < port <= 0xFFFF and \
                self.fast.udp_send(s, payload, addr, port, device if device is not None
                                   else s.device, now):
            if self.links.lo_queue:
                self._drain_loopback(now)       # it went to ourselves
            return
        if addr is None:
            if s.remote_addr is None:
                raise StackError("destination_required", f"socket {sid} is not connected")
            addr, port = s.remote_addr, s.remote_port
        addr = _addr(addr)
        port = _port(port, False)
        if len(payload) > UDP_MAX_PAYLOAD:
            raise StackError("message_too_long", f"{len(payload)} bytes exceed {UDP_MAX_PAYLOAD}")
        if (addr == LIMITED_BROADCAST or addr in self.ip4.broadcasts) and not s.broadcast:
            raise StackError("permission_denied", "broadcast needs udp_set_broadcast")  # EACCES
        if addr.is_unspecified:
            raise StackError("bad_argument", "cannot send to 0.0.0.0")
        device = device if device is not None else s.device
        if not s.local_port:
            self.udp_bind(sid, None, 0, s.device)
        path = self.ip4.resolve(addr, src=s.local_addr, device=device)
        dgram = build_udp(path.src, addr, s.local_port, port, payload)
        self.ip4.send_via(path, PROTO_UDP, dgram, now)
        self.ctr.inc("udp", "tx_datagrams")
        self._drain_loopback(now)

    def udp_recv(self, sid: int, max_count: int) -> list[Datagram]:
        return self._udp(sid).recv(sid, max_count)

    def udp_readable(self) -> set[int]:
        r = self.udp4.take_readable()
        return r | self.udp6.take_readable() if self.udp6._readable else r

    def udp_close(self, sid: int) -> None:
        self._udp(sid).close(sid)

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self, connections: bool = True, now: float = 0.0) -> dict:
        """connections=False for a checkpoint: TCP connections travel only in a hand-over.
        `now`: the clock that conntrack's deadlines are taken against."""
        return _snapshot.take(self, connections, now)

    @classmethod
    def restore(cls, snapshot: dict, config: StackConfig | None = None,
                now: float = 0.0) -> "Stack":
        return _snapshot.restore(cls, snapshot, config, now)

