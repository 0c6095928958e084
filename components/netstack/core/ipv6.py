"""The IPv6 layer (RFC 8200) on Ethernet devices: our addresses with their DAD state, receive
and local delivery, and output.

What this first step does: link-local and global unicast addresses (RFC 4291), each
TENTATIVE until Duplicate Address Detection (ndp.py, RFC 4862 §5.4) makes it PREFERRED or
DUPLICATE; reception for our unicast addresses, ff02::1 and our solicited-node groups; the
extension-header walk (wire/ipv6.py) with its Parameter Problems; output to on-link
destinations through NDP's neighbor table. Not yet: forwarding, fragmentation and
reassembly, routes other than the connected ones, transports (UDP, TCP) and loopback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Callable, Protocol

from ..wire import ETHERTYPE_IPV6, ParseError, build_ethernet, build_ipv6
from ..wire.ipv6 import (NEXT_HEADER_ICMPV6, NEXT_HEADER_NONE, PARAM_PROBLEM_NEXT_HEADER, PARAM_PROBLEM_OPTION,
                         ExtensionHeaderProblem, Ipv6Packet, walk_extensions)
from ..wire.icmpv6 import ICMPV6_PARAM_PROBLEM
from ..wire.ndp import ALL_NODES, link_local_from_mac, multicast_mac, solicited_node_address
from .config import StackConfig
from .device import ETHERNET, Device
from .errors import StackError
from .links import Links
from .route import CONNECTED, Route, RoutingTable

TENTATIVE = "TENTATIVE"     # DAD running: only ND for it is received, nothing is sent from it
PREFERRED = "PREFERRED"     # usable (no lifetimes yet, so never DEPRECATED)
DUPLICATE = "DUPLICATE"     # DAD failed: kept so `qnet status` shows it, never used
STATES = (TENTATIVE, PREFERRED, DUPLICATE)

LINK_LOCAL = IPv6Network("fe80::/10")
ALL_NODES_INT = int(ALL_NODES)


def link_local_for(mac: bytes) -> IPv6Interface:
    """RFC 4862 §5.3: fe80::/64 and the modified EUI-64 interface identifier (RFC 4291 App. A)."""
    return IPv6Interface(f"{link_local_from_mac(mac)}/64")


@dataclass
class Ipv6Addr:
    device: str
    iface: IPv6Interface
    state: str
    probes_left: int = 0        # DAD solicitations still to send

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

    def of_device(self, device: str) -> list[Ipv6Addr]:
        return [a for a in self._by_key.values() if a.device == device]

    def set_state(self, a: Ipv6Addr, state: str) -> None:
        a.state = state
        self.reindex()

    def reindex(self) -> None:
        self.global_ints = {int(a.ip): a.device for a in self._by_key.values()
                            if a.state == PREFERRED and a.ip not in LINK_LOCAL}
        self.preferred_ints = frozenset(k[1] for k, a in self._by_key.items()
                                        if a.state == PREFERRED)
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
        return ip in self.preferred_ints

    def source_for(self, device: str, dst: IPv6Address) -> IPv6Address | None:
        """RFC 6724 §5, cut to what this step needs: a preferred address of device, of the
        destination's scope (link-local for link-local and link-scope multicast), in the
        destination's prefix first."""
        mine = [a for a in self._by_key.values() if a.device == device and a.state == PREFERRED]
        if dst in LINK_LOCAL or (dst.is_multicast and (dst.packed[1] & 0x0F) <= 2):
            scoped = [a for a in mine if a.ip in LINK_LOCAL]
        else:
            scoped = [a for a in mine if a.ip not in LINK_LOCAL]
        for a in scoped:
            if dst in a.iface.network:
                return a.ip
        return scoped[0].ip if scoped else None

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

    def __init__(self, cfg: StackConfig, counters, ctx: Ipv6Context) -> None:
        self.cfg = cfg
        self.c = counters
        self._links = ctx.links
        self._devs = ctx.links.devices
        self.addresses = ctx.addresses
        self._neighbor_send = ctx.neighbor_send
        self._send_error = ctx.send_error
        self.routes = RoutingTable(6, cfg.max_routes)     # connected routes of global addresses
        self.protocols: dict[int, Callable[[Ipv6Datagram, float], None]] = {}

    # -- addresses ---------------------------------------------------------------------------
    def add_address(self, dev: Device, iface: IPv6Interface, state: str = TENTATIVE) -> Ipv6Addr:
        """Assign an address the caller has checked; a global one gets its connected route."""
        a = self.addresses.add(dev.name, iface, state)
        net = iface.network
        if net.prefixlen < 128 and iface.ip not in LINK_LOCAL and not any(
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
        # RFC 4291 §2.5.2, §2.5.3, §2.7: no multicast or loopback source, no unspecified or
        # loopback destination, on a wire.
        if src.is_multicast or src.is_loopback or dst.is_unspecified or dst.is_loopback:
            c["rx_drop_martian"] += 1
            return
        d = int(dst)
        tentative = False
        if dst.is_multicast:
            if d not in addrs.groups.get(dev.name, ()):
                c["rx_drop_multicast_not_joined"] += 1
                return
        else:
            a = addrs.local(dev.name, d)
            if a is None:
                c["rx_drop_not_ours"] += 1      # no IPv6 forwarding yet
                return
            if a.state == DUPLICATE:
                c["rx_drop_duplicate_address"] += 1
                return
            tentative = a.state == TENTATIVE
        if not src.is_unspecified and addrs.is_preferred(int(src)):
            c["rx_drop_own_source"] += 1        # our own address from outside: spoofed or a loop
            return
        packet = memoryview(buf)[:40 + pkt.payload_length]
        multicast = dst.is_multicast or link_multicast
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
        if ext.fragment is not None and not ext.fragment.is_atomic:
            c["rx_drop_fragment"] += 1          # reassembly comes with the next step
            return
        if proto == NEXT_HEADER_NONE:
            c["rx_no_next_header"] += 1
            return
        if tentative and proto != NEXT_HEADER_ICMPV6:
            c["rx_drop_tentative"] += 1     # RFC 4862 §5.4: only ND reaches a tentative address
            return
        rx = Ipv6Datagram(pkt, pkt.payload[offset:], proto, dev.name, multicast, tentative,
                          packet)
        handler = self.protocols.get(proto)
        if handler is None:
            c["rx_unknown_next_header"] += 1
            # RFC 8200 §4: Parameter Problem code 1 pointing at the unrecognised Next Header.
            self._send_error(rx, ICMPV6_PARAM_PROBLEM, PARAM_PROBLEM_NEXT_HEADER, now,
                             pointer=ext.next_header_pointer)
            return
        c["rx_delivered"] += 1
        handler(rx, now)

    # -- output ------------------------------------------------------------------------------
    def send(self, dst: IPv6Address, next_header: int, payload: bytes, now: float, *,
             src: IPv6Address, device: str | None = None, hop_limit: int | None = None) -> None:
        """One datagram from us. Link-local and link-scope multicast destinations need the
        device (their zone); global ones are routed. Raises StackError (no_route, no_device,
        message_too_long) when it cannot leave."""
        if dst in LINK_LOCAL or dst.is_multicast:
            dev = self._devs.get(device) if device is not None else None
            if dev is None or not dev.up or dev.kind != ETHERNET:
                self.c["tx_drop_no_route"] += 1
                raise StackError("no_route", f"no device for {dst}")
            next_hop = dst
        else:
            hop = self.routes.lookup(dst, self.usable)
            if hop is None:
                self.c["tx_drop_no_route"] += 1
                raise StackError("no_route", f"no route to {dst}")
            dev = self._devs[hop.device]
            next_hop = hop.address
        packet = build_ipv6(src, dst, next_header, payload,
                            hop_limit=hop_limit or self.cfg.default_ttl)
        if len(packet) > dev.mtu:
            self.c["tx_drop_too_big"] += 1      # fragmentation comes with the next step
            raise StackError("message_too_long", f"{len(packet)} bytes exceed the MTU {dev.mtu}")
        self.c["tx_packets"] += 1
        self.link_output(dev, next_hop, packet, now)

    def link_output(self, out: Device, next_hop: IPv6Address, packet: bytes, now: float) -> None:
        if next_hop.is_multicast:
            # RFC 2464 §7: a group's frames go to 33:33 and its low 32 bits.
            self._links.enqueue_tx(out, build_ethernet(multicast_mac(next_hop), out.mac,
                                                       ETHERTYPE_IPV6, packet))
        else:
            self._neighbor_send(out.name, int(next_hop), packet, now)

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This layer's key of Stack.snapshot(): every IPv6 address with its DAD state."""
        return {"ipv6_addresses": [{"device": a.device, "address": str(a.iface),
                                    "state": a.state} for a in self.addresses]}

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
            self.add_address(self._devs[a["device"]], IPv6Interface(a["address"]), state)


__all__ = ["DUPLICATE", "Ipv6Addr", "Ipv6AddressInfo", "Ipv6Addresses", "Ipv6Context",
           "Ipv6Datagram", "Ipv6Layer", "PREFERRED", "TENTATIVE", "link_local_for"]
