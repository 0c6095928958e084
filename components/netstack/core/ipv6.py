"""The IPv6 layer (RFC 8200) on Ethernet devices: our addresses with their DAD state, receive
and local delivery, and output.

Link-local and global unicast addresses (RFC 4291), each TENTATIVE until Duplicate Address
Detection (ndp.py, RFC 4862 §5.4) makes it PREFERRED or DUPLICATE, and DEPRECATED when SLAAC
says so; reception for our unicast addresses, ff02::1 and our solicited-node groups; the
extension-header walk (wire/ipv6.py) with its Parameter Problems; reassembly (RFC 8200 §4.5,
overlaps drop the datagram, RFC 5722); forwarding between devices (hop limit, Packet Too
Big, no fragmenting on the way, RFC 8200 §5); output through the routing table with
fragmentation at the path MTU (RFC 8201). Not yet: loopback (our own addresses as
destinations), the firewall's hooks, Redirects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Callable, Protocol

from ..wire import ETHERTYPE_IPV6, ParseError, build_ethernet, build_ipv6
from ..wire.ipv6 import (IPV6_MIN_MTU, NEXT_HEADER_ICMPV6, NEXT_HEADER_NONE, PARAM_PROBLEM_NEXT_HEADER,
                         PARAM_PROBLEM_OPTION, ExtensionHeaderProblem, Ipv6Packet, build_fragments,
                         walk_extensions)
from ..wire.icmpv6 import (ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAM_PROBLEM,
                           ICMPV6_TIME_EXCEEDED)
from ..wire.ndp import ALL_NODES, link_local_from_mac, multicast_mac, solicited_node_address
from .config import StackConfig
from .device import ETHERNET, LOOPBACK, Device
from .errors import StackError
from .fragment import Reassembler
from .links import Links
from .route import CONNECTED, STATIC, Route, RoutingTable, route_from_dict

TENTATIVE = "TENTATIVE"     # DAD running: only ND for it is received, nothing is sent from it
PREFERRED = "PREFERRED"     # usable
DEPRECATED = "DEPRECATED"   # RFC 4862 §5.5.4: still ours and answered, not chosen for new traffic
DUPLICATE = "DUPLICATE"     # DAD failed: kept so `qnet status` shows it, never used
STATES = (TENTATIVE, PREFERRED, DEPRECATED, DUPLICATE)
USABLE = (PREFERRED, DEPRECATED)

# ICMPv6 codes (RFC 4443 §3.1, §3.3).
UNREACH_NO_ROUTE = 0
UNREACH_BEYOND_SCOPE = 2
UNREACH_ADDRESS = 3
UNREACH_PORT = 4
TIME_EXCEEDED_HOP_LIMIT = 0
TIME_EXCEEDED_REASSEMBLY = 1
# RFC 8201 §4: a learned path MTU is kept at least 5 minutes (10 is the suggested value),
# then tried at the link's MTU again. The cache is bounded.
PMTU_TIMEOUT = 600.0
PMTU_CACHE_LIMIT = 4096

LINK_LOCAL = IPv6Network("fe80::/10")
ALL_NODES_INT = int(ALL_NODES)
LOOPBACK_IFACE = IPv6Interface("::1/128")    # lo's, in every stack (not in snapshots)


def link_local_for(mac: bytes) -> IPv6Interface:
    """RFC 4862 §5.3: fe80::/64 and the modified EUI-64 interface identifier (RFC 4291 App. A)."""
    return IPv6Interface(f"{link_local_from_mac(mac)}/64")


@dataclass
class Ipv6Addr:
    device: str
    iface: IPv6Interface
    state: str
    probes_left: int = 0        # DAD solicitations still to send
    connected: bool = True      # made its prefix's connected route (SLAAC's do not)

    @property
    def ip(self) -> IPv6Address:
        return self.iface.ip


@dataclass(frozen=True)
class Ipv6AddressInfo:
    device: str
    address: str        # "fe80::1/64"
    state: str

    def to_dict(self) -> dict:
        return asdict(self)


class Ipv6Addresses:
    """Our IPv6 addresses, keyed (device, address int), bounded by max_ipv6_addresses.

    Shared by the IPv6 layer (what is local, which source to use) and NDP (which targets to
    answer, DAD's state changes). Link-local addresses are scoped to their device (RFC 4007);
    global ones are local on every device (the weak host model, as IPv4).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_key: dict[tuple[str, int], Ipv6Addr] = {}
        # Rebuilt by reindex(): the preferred global addresses -> device, and each device's
        # multicast groups (ff02::1 and the solicited-node groups of its tentative and
        # preferred addresses, RFC 4861 §7.2.1, RFC 4862 §5.4.2).
        self.global_ints: dict[int, str] = {}
        self.preferred_ints: frozenset[int] = frozenset()
        self.groups: dict[str, frozenset[int]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(list(self._by_key.values()))

    def add(self, device: str, iface: IPv6Interface, state: str) -> Ipv6Addr:
        ip = int(iface.ip)
        if (device, ip) in self._by_key or (not iface.ip in LINK_LOCAL and any(
                k[1] == ip for k in self._by_key)):
            raise StackError("exists", f"{iface.ip} is already assigned")
        if len(self._by_key) >= self.limit:
            self.dropped += 1
            raise StackError("limit", f"too many IPv6 addresses ({self.limit})")
        a = self._by_key[(device, ip)] = Ipv6Addr(device, iface, state)
        self.reindex()
        return a

    def remove(self, device: str, ip: int) -> Ipv6Addr | None:
        a = self._by_key.pop((device, ip), None)
        self.reindex()
        return a

    def remove_device(self, device: str) -> None:
        for key in [k for k in self._by_key if k[0] == device]:
            del self._by_key[key]
        self.reindex()

    def get(self, device: str, ip: int) -> Ipv6Addr | None:
        return self._by_key.get((device, ip))

    def device_of(self, ip: int) -> str | None:
        """The device holding address ip (for a link-local one, its zone)."""
        for (device, a) in self._by_key:
            if a == ip:
                return device
        return None

    def of_device(self, device: str) -> list[Ipv6Addr]:
        return [a for a in self._by_key.values() if a.device == device]

    def set_state(self, a: Ipv6Addr, state: str) -> None:
        a.state = state
        self.reindex()

    def reindex(self) -> None:
        self.global_ints = {int(a.ip): a.device for a in self._by_key.values()
                            if a.state in USABLE and a.ip not in LINK_LOCAL}
        self.preferred_ints = frozenset(k[1] for k, a in self._by_key.items()
                                        if a.state in USABLE)
        groups: dict[str, set[int]] = {}
        for a in self._by_key.values():
            g = groups.setdefault(a.device, {ALL_NODES_INT})
            if a.state != DUPLICATE:
                g.add(int(solicited_node_address(a.ip)))
        self.groups = {d: frozenset(g) for d, g in groups.items()}

    def local(self, device: str, ip: int) -> Ipv6Addr | None:
        """Ours as a destination arriving on device: its own addresses (any state; the
        caller looks at it), or a preferred global address of another device."""
        a = self._by_key.get((device, ip))
        if a is None and ip in self.global_ints:
            a = self._by_key.get((self.global_ints[ip], ip))
        return a

    def is_preferred(self, ip: int) -> bool:
        """Ours and usable (PREFERRED or DEPRECATED): answered, and a valid source."""
        return ip in self.preferred_ints

    def source_for(self, device: str, dst: IPv6Address) -> IPv6Address | None:
        """RFC 6724 §5, cut to what qnet needs: an address of device of the destination's
        scope (link-local for link-local and link-scope multicast; rule 2), preferred over
        deprecated (rule 3), then the longest prefix shared with the destination (rule 8);
        a global destination takes another device's global address when device has none
        (the weak host model, as IPv4)."""
        if dst.is_loopback:
            return dst
        link_scope = dst in LINK_LOCAL or (dst.is_multicast and (dst.packed[1] & 0x0F) <= 2)
        mine = [a for a in self._by_key.values() if a.state in USABLE
                and (a.ip in LINK_LOCAL) == link_scope and not a.ip.is_loopback
                and (a.device == device or (not link_scope and device is None))]
        if not mine and not link_scope:
            mine = [a for a in self._by_key.values() if a.state in USABLE
                    and a.ip not in LINK_LOCAL and not a.ip.is_loopback]
        if not mine:
            return None
        d = int(dst)
        best = max(mine, key=lambda a: (a.device == device, a.state == PREFERRED,
                                        128 - (int(a.ip) ^ d).bit_length()))
        return best.ip

    def info(self) -> list[Ipv6AddressInfo]:
        return [Ipv6AddressInfo(a.device, str(a.iface), a.state) for a in self._by_key.values()]


@dataclass(frozen=True)
class Ipv6Datagram:
    """A datagram for us as received: its header, its upper-layer payload (after the
    extension headers) and what the ICMPv6 rules need to know about it."""
    header: Ipv6Packet
    payload: bytes | memoryview     # the upper-layer message
    next_header: int                # its protocol
    device: str
    multicast: bool                 # to a group, or in a link-layer multicast frame
    tentative: bool                 # to one of our addresses still under DAD
    packet: bytes | memoryview      # the whole IPv6 packet, for an error's quote

    @property
    def src(self) -> IPv6Address:
        return self.header.src

    @property
    def dst(self) -> IPv6Address:
        return self.header.dst


class SendIcmpv6Error(Protocol):
    """Icmpv6.send_error: an ICMPv6 error about `orig`, unless RFC 4443 §2.4 forbids it."""
    def __call__(self, orig: Ipv6Datagram, type: int, code: int, now: float, *,
                 pointer: int = 0, multicast_ok: bool = False) -> bool: ...


@dataclass(frozen=True)
class Ipv6Context:
    """Everything outside itself that the IPv6 layer may touch."""
    # Devices (looked up, never added or removed) and their transmit queues.
    links: Links
    # Our addresses and their DAD state, shared with NDP.
    addresses: Ipv6Addresses
    # The IPv6 neighbor table's send(device, address int, packet, now): NDP resolves.
    neighbor_send: Callable[[str, int, bytes, float], None]
    # ICMPv6 errors about datagrams it drops (Parameter Problem).
    send_error: SendIcmpv6Error


class Ipv6Layer:
    version = 6

    def __init__(self, cfg: StackConfig, counters, reassembly_counters, ident: int,
                 ctx: Ipv6Context) -> None:
        self.cfg = cfg
        self.c = counters
        self._links = ctx.links
        self._devs = ctx.links.devices
        self.addresses = ctx.addresses
        self._neighbor_send = ctx.neighbor_send
        self._send_error = ctx.send_error
        self.routes = RoutingTable(6, cfg.max_routes)
        self.protocols: dict[int, Callable[[Ipv6Datagram, float], None]] = {}
        self.reassembly = Reassembler(cfg, reassembly_counters)
        self.next_ident = ident
        # RFC 8201: destination int -> (path MTU, when it is forgotten).
        self.pmtu: dict[int, tuple[int, float]] = {}
        # What Router Advertisements set per device (RFC 4861 §6.3.4): the link's MTU for
        # IPv6 (at most the device's) and the hop limit of what we originate.
        self.link_mtu: dict[str, int] = {}
        self.hop_limits: dict[str, int] = {}

    # -- addresses ---------------------------------------------------------------------------
    def add_address(self, dev: Device, iface: IPv6Interface, state: str = TENTATIVE,
                    connected: bool = True) -> Ipv6Addr:
        """Assign an address the caller has checked; a global one gets its connected route
        unless `connected` is False (SLAAC's: RFC 5942, only an RA makes a prefix on-link)."""
        a = self.addresses.add(dev.name, iface, state)
        a.connected = connected
        net = iface.network
        if connected and net.prefixlen < 128 and iface.ip not in LINK_LOCAL and not any(
                r.kind == CONNECTED and r.device == dev.name and r.prefix == net
                for r in self.routes):
            self.routes.add(Route(net, None, dev.name, 0, CONNECTED))
        return a

    def remove_address(self, dev: Device, iface: IPv6Interface) -> None:
        if self.addresses.remove(dev.name, int(iface.ip)) is None:
            raise StackError("not_found", f"{iface} is not on {dev.name}")
        if not any(a.iface.network == iface.network for a in self.addresses.of_device(dev.name)):
            try:
                self.routes.remove(iface.network, device=dev.name, kind=CONNECTED)
            except StackError:
                pass

    def remove_device(self, name: str) -> None:
        self.addresses.remove_device(name)
        self.routes.remove_device(name)

    def add_route(self, prefix: IPv6Network, gateway: IPv6Address | None, device: str | None,
                  metric: int = 0, kind: str = STATIC) -> None:
        """A route the caller has checked. A link-local gateway needs its device (its zone)."""
        if gateway is not None and gateway in LINK_LOCAL and device is None:
            raise StackError("bad_argument", f"a link-local gateway ({gateway}) needs a device")
        if device is not None and device not in self._devs:
            raise StackError("no_device", f"no device {device}")
        self.routes.add(Route(prefix, gateway, device, metric, kind))

    def remove_route(self, prefix: IPv6Network, gateway: IPv6Address | None = None,
                     device: str | None = None, kind: str = STATIC) -> None:
        self.routes.remove(prefix, gateway, device, kind=kind)

    def usable(self, name: str) -> bool:
        d = self._devs.get(name)
        return d is not None and d.up

    # -- receive -----------------------------------------------------------------------------
    def receive(self, dev: Device, buf, link_multicast: bool, now: float) -> None:
        c = self.c
        try:
            pkt = Ipv6Packet.parse(buf)
        except ParseError:
            c["rx_bad_header"] += 1
            return
        c["rx_packets"] += 1
        src, dst = pkt.src, pkt.dst
        addrs = self.addresses
        on_lo = dev.kind == LOOPBACK
        if on_lo:
            # Our own datagram, looped back by link_output: to one of our addresses, any zone.
            a = addrs.get("lo", int(dst)) or addrs.get(addrs.device_of(int(dst)) or "", int(dst))
            if a is None:
                c["rx_drop_not_ours"] += 1
                return
            self._deliver(dev, pkt, memoryview(buf)[:40 + pkt.payload_length], False, False, now)
            return
        # RFC 4291 §2.5.2, §2.5.3, §2.7: no multicast or loopback source, no unspecified or
        # loopback destination, on a wire.
        if src.is_multicast or src.is_loopback or dst.is_unspecified or dst.is_loopback:
            c["rx_drop_martian"] += 1
            return
        d = int(dst)
        tentative = False
        a = None
        if dst.is_multicast:
            if d not in addrs.groups.get(dev.name, ()):
                c["rx_drop_multicast_not_joined"] += 1
                return
        else:
            a = addrs.local(dev.name, d)
            if a is not None:
                if a.state == DUPLICATE:
                    c["rx_drop_duplicate_address"] += 1
                    return
                tentative = a.state == TENTATIVE
        if not src.is_unspecified and addrs.is_preferred(int(src)):
            c["rx_drop_own_source"] += 1        # our own address from outside: spoofed or a loop
            return
        packet = memoryview(buf)[:40 + pkt.payload_length]
        if a is None and not dst.is_multicast:
            self._forward(dev, pkt, packet, link_multicast, now)
            return
        self._deliver(dev, pkt, packet, dst.is_multicast or link_multicast, tentative, now)

    def _deliver(self, dev: Device, pkt: Ipv6Packet, packet: memoryview, multicast: bool,
                 tentative: bool, now: float) -> None:
        """A datagram for us: the extension headers, reassembly, the upper protocol."""
        c = self.c
        try:
            proto, offset, ext = walk_extensions(pkt.next_header, pkt.payload)
        except ExtensionHeaderProblem as e:
            c["rx_drop_extension_problem"] += 1
            if e.send_icmp and not tentative:
                # RFC 4443 §2.4 (e.3): to a multicast destination, only an unrecognised
                # option whose action bits are 10 is answered.
                self._send_error(Ipv6Datagram(pkt, b"", -1, dev.name, multicast, False, packet),
                                 ICMPV6_PARAM_PROBLEM, e.code, now, pointer=e.pointer,
                                 multicast_ok=e.code == PARAM_PROBLEM_OPTION
                                 and not e.unless_multicast)
            return
        except ParseError:
            c["rx_bad_extension"] += 1
            return
        payload = pkt.payload[offset:]
        if ext.fragment is not None and not ext.fragment.is_atomic:
            if tentative:
                c["rx_drop_tentative"] += 1
                return
            done = self._reassemble(dev, pkt, packet, ext.fragment, payload, multicast, now)
            if done is None:
                return
            pkt, packet, proto, payload = done
        if proto == NEXT_HEADER_NONE:
            c["rx_no_next_header"] += 1
            return
        if tentative and proto != NEXT_HEADER_ICMPV6:
            c["rx_drop_tentative"] += 1     # RFC 4862 §5.4: only ND reaches a tentative address
            return
        rx = Ipv6Datagram(pkt, payload, proto, dev.name, multicast, tentative, packet)
        handler = self.protocols.get(proto)
        if handler is None:
            c["rx_unknown_next_header"] += 1
            # RFC 8200 §4: Parameter Problem code 1 pointing at the unrecognised Next Header.
            self._send_error(rx, ICMPV6_PARAM_PROBLEM, PARAM_PROBLEM_NEXT_HEADER, now,
                             pointer=ext.next_header_pointer)
            return
        c["rx_delivered"] += 1
        handler(rx, now)

    def _reassemble(self, dev: Device, pkt: Ipv6Packet, packet, frag, data, multicast: bool,
                    now: float):
        """RFC 8200 §4.5: fragments are kept per (source, destination, identification) until
        the datagram is whole; the Reassembler drops a datagram with overlapping fragments
        (RFC 5722) and bounds memory. Returns (header, packet, protocol, payload) of the
        whole datagram, walked anew past the headers that followed the Fragment header."""
        key = (int(pkt.src), int(pkt.dst), frag.identification)
        first = (bytes(packet), dev.name, multicast) if frag.offset == 0 else None
        done = self.reassembly.add(key, int(pkt.src), frag.offset, bytes(data),
                                   frag.more_fragments, first, now, 0xFFFF)
        if done is None:
            return None
        (first_packet, _, _), payload = done
        header = Ipv6Packet.parse(first_packet)
        try:
            # The unfragmentable part was walked with the first fragment; what follows the
            # Fragment header (destination options, the upper layer) is walked now.
            proto, offset, _ = walk_extensions(frag.next_header, payload)
        except ParseError:
            self.c["rx_bad_extension"] += 1
            return None
        self.c["rx_reassembled"] += 1
        return header, memoryview(first_packet), proto, memoryview(payload)[offset:]

    def expire_reassembly(self, now: float) -> None:
        for first in self.reassembly.poll(now):
            # RFC 8200 §4.5: Time Exceeded code 1, only if the first fragment arrived.
            if first is not None:
                packet, device, multicast = first
                pkt = Ipv6Packet.parse(packet)
                self._send_error(Ipv6Datagram(pkt, pkt.payload, pkt.next_header, device,
                                              multicast, False, packet),
                                 ICMPV6_TIME_EXCEEDED, TIME_EXCEEDED_REASSEMBLY, now)

    # -- forwarding --------------------------------------------------------------------------
    def _forward(self, dev: Device, pkt: Ipv6Packet, packet: memoryview, link_multicast: bool,
                 now: float) -> None:
        c = self.c
        if not dev.forwarding:
            c["rx_drop_not_ours"] += 1
            return
        if link_multicast:
            c["forward_drop_link_multicast"] += 1
            return
        src, dst = pkt.src, pkt.dst
        if src.is_unspecified:
            c["forward_drop_unspecified_source"] += 1
            return
        if dst in LINK_LOCAL:
            c["forward_drop_link_local"] += 1   # RFC 4291 §2.5.6: never forwarded
            return
        if src in LINK_LOCAL:
            # RFC 4291 §2.5.6 and RFC 4443 §3.1: beyond the scope of the source address.
            c["forward_drop_link_local"] += 1
            self._send_error(self._about(dev, pkt, packet), ICMPV6_DEST_UNREACH,
                             UNREACH_BEYOND_SCOPE, now)
            return
        if pkt.hop_limit <= 1:
            c["forward_drop_hop_limit"] += 1    # RFC 8200 §3, RFC 4443 §3.3
            self._send_error(self._about(dev, pkt, packet), ICMPV6_TIME_EXCEEDED,
                             TIME_EXCEEDED_HOP_LIMIT, now)
            return
        hop = self.routes.lookup(dst, self.usable)
        if hop is None:
            c["forward_drop_no_route"] += 1
            self._send_error(self._about(dev, pkt, packet), ICMPV6_DEST_UNREACH,
                             UNREACH_NO_ROUTE, now)
            return
        out = self._devs[hop.device]
        if len(packet) > out.mtu:
            # RFC 8200 §5: routers do not fragment; the source learns the MTU (RFC 8201).
            c["forward_drop_too_big"] += 1
            self._send_error(self._about(dev, pkt, packet), ICMPV6_PACKET_TOO_BIG, 0, now,
                             mtu=out.mtu)
            return
        b = bytearray(packet)
        b[7] -= 1                               # the hop limit; IPv6 has no header checksum
        c["forwarded"] += 1
        self.link_output(out, hop.address, bytes(b), now)

    def _about(self, dev: Device, pkt: Ipv6Packet, packet) -> Ipv6Datagram:
        """A forwarded packet as an error's subject: its upper protocol found by walking its
        headers, so that RFC 4443 §2.4 (e.1) sees an ICMPv6 error behind extension headers."""
        try:
            proto, offset, _ = walk_extensions(pkt.next_header, pkt.payload)
            payload = pkt.payload[offset:]
        except ParseError:
            proto, payload = -1, b""
        return Ipv6Datagram(pkt, payload, proto, dev.name, False, False, packet)

    def neighbor_failed(self, device: str, packets: list[bytes], now: float) -> None:
        """Address resolution failed: address unreachable (RFC 4443 §3.1 code 3) to each
        waiting packet's sender, ourselves excepted."""
        for p in packets:
            try:
                pkt = Ipv6Packet.parse(p)
            except ParseError:
                continue
            if self.addresses.is_preferred(int(pkt.src)):
                continue
            dev = self._devs.get(device)
            if dev is not None:
                self._send_error(self._about(dev, pkt, memoryview(p)), ICMPV6_DEST_UNREACH,
                                 UNREACH_ADDRESS, now)

    # -- path MTU (RFC 8201) -----------------------------------------------------------------
    def path_mtu(self, dst: int, link_mtu: int, now: float | None = None) -> int:
        """The MTU toward dst: the link's, or less where a Packet Too Big said so."""
        e = self.pmtu.get(dst)
        if e is None:
            return link_mtu
        if now is not None and e[1] <= now:
            del self.pmtu[dst]
            return link_mtu
        return min(e[0], link_mtu)

    def packet_too_big(self, dst: IPv6Address, mtu: int, now: float) -> None:
        """A Packet Too Big about a packet of ours: RFC 8201 §4, never below 1280 (RFC 8200
        §5; RFC 8021: no atomic fragments when a smaller MTU is reported)."""
        mtu = max(mtu, IPV6_MIN_MTU)
        d = int(dst)
        if d not in self.pmtu and len(self.pmtu) >= PMTU_CACHE_LIMIT:
            self.pmtu.pop(next(iter(self.pmtu)))
        old = self.pmtu.get(d)
        if old is None or mtu < old[0] or old[1] <= now:
            self.pmtu[d] = (mtu, now + PMTU_TIMEOUT)
            self.c["pmtu_updates"] += 1

    # -- output ------------------------------------------------------------------------------
    def resolve(self, dst: IPv6Address, device: str | None = None,
                src: IPv6Address | None = None):
        """(device, next hop) for a datagram from us; StackError no_route when none. Our
        own addresses (and ::1) go to lo; a link-local destination leaves through `device`,
        or the zone of a link-local `src`."""
        if dst.is_loopback or self.addresses.is_preferred(int(dst)):
            return self._devs["lo"], dst
        if dst in LINK_LOCAL or dst.is_multicast:
            if device is None and src is not None and src in LINK_LOCAL:
                device = self.addresses.device_of(int(src))
            dev = self._devs.get(device) if device is not None else None
            if dev is None or not dev.up or dev.kind != ETHERNET:
                raise StackError("no_route", f"no device for {dst}" if device is None
                                 else f"no route to {dst} via {device}")
            return dev, dst
        hop = self.routes.lookup(dst, self.usable, device)
        if hop is None:
            raise StackError("no_route", f"no route to {dst}" + (f" via {device}" if device else ""))
        return self._devs[hop.device], hop.address

    def send(self, dst: IPv6Address, next_header: int, payload: bytes, now: float, *,
             src: IPv6Address, device: str | None = None, hop_limit: int | None = None,
             traffic_class: int = 0) -> None:
        """One datagram from us. Link-local and link-scope multicast destinations need the
        device (their zone); global ones are routed (through `device` only, when given).
        Raises StackError (no_route, message_too_long) when it cannot leave."""
        try:
            dev, next_hop = self.resolve(dst, device, src)
        except StackError:
            self.c["tx_drop_no_route"] += 1
            raise
        hop_limit = hop_limit or self.hop_limits.get(dev.name) or self.cfg.default_ttl
        mtu = self.path_mtu(int(dst), self.link_mtu.get(dev.name, dev.mtu), now)
        if 40 + len(payload) <= mtu:
            packets = [build_ipv6(src, dst, next_header, payload, hop_limit=hop_limit,
                                  traffic_class=traffic_class)]
        else:
            # RFC 8200 §4.5: the source fragments, at the path MTU.
            ident = self.next_ident
            self.next_ident = (ident + 1) & 0xFFFFFFFF
            try:
                packets = build_fragments(src, dst, next_header, payload, mtu=max(mtu, IPV6_MIN_MTU),
                                          identification=ident, hop_limit=hop_limit,
                                          traffic_class=traffic_class)
            except ValueError as e:
                self.c["tx_drop_too_big"] += 1
                raise StackError("message_too_long", str(e)) from None
            self.c["tx_fragments"] += len(packets)
        self.c["tx_packets"] += 1
        for p in packets:
            self.link_output(dev, next_hop, p, now)

    def link_output(self, out: Device, next_hop: IPv6Address, packet: bytes, now: float) -> None:
        if out.kind == LOOPBACK:
            self._links.loopback(out, packet)
        elif next_hop.is_multicast:
            # RFC 2464 §7: a group's frames go to 33:33 and its low 32 bits.
            self._links.enqueue_tx(out, build_ethernet(multicast_mac(next_hop), out.mac,
                                                       ETHERTYPE_IPV6, packet))
        else:
            self._neighbor_send(out.name, int(next_hop), packet, now)

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This layer's keys of Stack.snapshot(): every IPv6 address with its DAD state,
        the static routes (connected ones follow from the addresses) and the fragment
        identification (so a successor does not reuse recent ones)."""
        return {"ipv6_addresses": [{"device": a.device, "address": str(a.iface),
                                    "state": a.state, "connected": a.connected}
                                   for a in self.addresses if a.device != "lo"],
                "routes6": [r.to_dict() for r in self.routes if r.kind != CONNECTED],
                "ip6_ident": self.next_ident}

    def restore(self, snap: dict) -> None:
        """Into a new layer whose devices Links has restored. A snapshot from before IPv6
        gives every Ethernet device its link-local address, tentative (ndp.restore runs DAD)."""
        if "ipv6_addresses" not in snap:
            for dev in self._devs.values():
                if dev.kind == ETHERNET and dev.mac is not None:
                    self.add_address(dev, link_local_for(dev.mac), TENTATIVE)
            return
        for a in snap["ipv6_addresses"]:
            state = str(a["state"])
            if state not in STATES:
                raise ValueError(f"bad IPv6 address state {state!r}")
            self.add_address(self._devs[a["device"]], IPv6Interface(a["address"]), state,
                             bool(a.get("connected", True)))
        for r in snap.get("routes6", []):
            self.routes.add(route_from_dict(r))
        self.next_ident = int(snap.get("ip6_ident", 0)) & 0xFFFFFFFF


class Ipv6ForTransport:
    """The IPv6 side of tcp.layer.TcpIp: all a transport protocol may ask of this layer."""
    version = 6
    header_len = 40
    default_send_mss = 1220         # RFC 9293 §3.7.1: 1280 - 40 - 20

    def __init__(self, ip6: Ipv6Layer, proto: int) -> None:
        self._ip6 = ip6
        self._proto = proto

    def source_and_mtu(self, remote: IPv6Address, local: IPv6Address | None):
        ip6 = self._ip6
        dev, _ = ip6.resolve(remote, src=local)
        if local is None:
            local = remote if dev.kind == LOOPBACK else ip6.addresses.source_for(dev.name, remote)
            if local is None:
                raise StackError("no_address", f"no source address to reach {remote}")
        return local, ip6.path_mtu(int(remote), dev.mtu)

    def output(self, local: IPv6Address, remote: IPv6Address, segment: bytes, now: float,
               ttl: int | None = None, tos: int = 0) -> None:
        self._ip6.send(remote, self._proto, segment, now, src=local, hop_limit=ttl,
                       traffic_class=tos)

    def is_local(self, addr: IPv6Address) -> bool:
        return addr.is_loopback or self._ip6.addresses.is_preferred(int(addr))

    def tso_max(self, remote: IPv6Address, local: IPv6Address | None) -> int:
        return 0        # TSO for IPv6 segments: not yet


__all__ = ["DEPRECATED", "DUPLICATE", "Ipv6Addr", "Ipv6AddressInfo", "Ipv6Addresses", "Ipv6Context",
           "Ipv6Datagram", "Ipv6ForTransport", "Ipv6Layer", "LOOPBACK_IFACE", "PREFERRED", "TENTATIVE", "link_local_for"]
