"""Neighbor Discovery (RFC 4861) and Duplicate Address Detection (RFC 4862 §5.4).

This module owns the IPv6 neighbor table and is its NeighborSink, as arp.py is IPv4's: it
turns Neighbor Solicitations and Advertisements into the table's inputs and the table's
requests into solicitations; the state machine itself lives in neighbor.py. It also runs DAD
for the addresses of Ipv6Addresses (ipv6.py), which decides whether one is ever used.
Router Solicitation/Advertisement and Redirect are counted and ignored in this step.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Callable

from ..wire import ETHERTYPE_IPV6, MacAddr, ParseError, build_ethernet, build_ipv6
from ..wire.icmpv6 import Icmpv6Message
from ..wire.ipv6 import NEXT_HEADER_ICMPV6
from ..wire.ndp import (ALL_NODES, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_REDIRECT,
                        ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT, NeighborAdvertisement,
                        NeighborSolicitation, RouterAdvertisement, RouterSolicitation,
                        SourceLinkLayerAddress, TargetLinkLayerAddress,
                        multicast_mac, parse_ndp, solicited_node_address)
from .config import StackConfig
from .device import ETHERNET, Device
from .events import DuplicateAddress, NeighborUnreachable
from .ipv6 import (DUPLICATE, LINK_LOCAL, PREFERRED, TENTATIVE, Ipv6Addr, Ipv6Addresses,
                   Ipv6Datagram)
from .links import Links
from .neighbor import NeighborTable, State
from .timers import Deadlines

ND_TYPES = frozenset((ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT, ND_NEIGHBOR_SOLICIT,
                      ND_NEIGHBOR_ADVERT, ND_REDIRECT))
# RFC 4861 §7.1.1, §7.1.2 (and §6.1 for RS/RA, §8.1 for Redirect): an ND message arrives
# with hop limit 255, which proves it was sent on this link; anything else is discarded.
ND_HOP_LIMIT = 255
UNSPECIFIED = IPv6Address("::")


@dataclass(frozen=True)
class NdpContext:
    """Everything outside itself that NDP may touch."""
    # Devices (looked up, never added or removed) and their transmit queues.
    links: Links
    # Our addresses: the targets we answer for, and the DAD states this module sets.
    addresses: Ipv6Addresses
    # Events for the binding: DuplicateAddress, NeighborUnreachable.
    emit: Callable[[object], None]
    # Whether we act as a router on a device (the R flag of our advertisements).
    is_router: Callable[[str], bool]
    # IPv6's answer to a failed resolution: address unreachable to the packets' senders.
    unreachable: Callable[[str, list[bytes], float], None] | None = None
    # Router discovery (routerdisc.py): valid RAs (device, source, message, now) and RSs.
    router_advertisement: Callable | None = None
    router_solicitation: Callable | None = None


class Ndp:
    """NS/NA rx/tx, DAD, and the IPv6 neighbor table it drives, as that table's NeighborSink."""

    def __init__(self, cfg: StackConfig, counters, neighbor_counters, ctx: NdpContext) -> None:
        self.cfg = cfg
        self.c = counters
        self._devs = ctx.links.devices
        self._enqueue_tx = ctx.links.enqueue_tx
        self.addresses = ctx.addresses
        self._emit = ctx.emit
        self._is_router = ctx.is_router
        self._unreachable = ctx.unreachable
        self._router_advertisement = ctx.router_advertisement
        self._router_solicitation = ctx.router_solicitation
        self.neighbors = NeighborTable(cfg, self, neighbor_counters,
                                       format_address=lambda a: str(IPv6Address(a)))
        # DAD's retransmissions, keyed (device, address int).
        self._dad_timers = Deadlines()

    # -- receive -----------------------------------------------------------------------------
    def receive(self, rx: Ipv6Datagram, msg: Icmpv6Message, now: float) -> None:
        """An ND message (type in ND_TYPES) whose ICMPv6 checksum was good."""
        c = self.c
        dev = self._devs.get(rx.device)
        if dev is None or dev.kind != ETHERNET:
            c["rx_drop_not_ethernet"] += 1
            return
        if rx.header.hop_limit != ND_HOP_LIMIT:
            c["rx_drop_hop_limit"] += 1
            return
        try:
            nd = parse_ndp(msg, rx.src, rx.dst)
        except ParseError:
            c["rx_bad"] += 1
            return
        if type(nd) is NeighborSolicitation:
            c["rx_ns"] += 1
            self._solicitation(dev, rx, nd, now)
        elif type(nd) is NeighborAdvertisement:
            c["rx_na"] += 1
            self._advertisement(dev, rx, nd, now)
        elif type(nd) is RouterAdvertisement:
            c["rx_ra"] += 1
            if rx.src not in LINK_LOCAL:
                c["rx_ra_not_link_local"] += 1      # RFC 4861 §6.1.2: silently discarded
                return
            self._learn_router_lladdr(dev, rx.src, nd.source_lladdr, now)
            if self._router_advertisement is not None:
                self._router_advertisement(dev, rx.src, nd, now)
        elif type(nd) is RouterSolicitation:
            c["rx_rs"] += 1
            if not rx.src.is_unspecified:
                self._learn_router_lladdr(dev, rx.src, nd.source_lladdr, now)
            if self._router_solicitation is not None:
                self._router_solicitation(dev, rx.src, now)
        else:
            c["rx_ignored_redirect"] += 1

    def _learn_router_lladdr(self, dev: Device, src: IPv6Address, lladdr, now: float) -> None:
        # RFC 4861 §6.2.6 (RS at a router), §6.3.4 (RA at a host): a source link-layer
        # address creates or updates the sender's entry, STALE when new or changed.
        if lladdr is not None:
            self.neighbors.learn(dev.name, int(src), lladdr, now, create=True)

    def _solicitation(self, dev: Device, rx: Ipv6Datagram, ns: NeighborSolicitation,
                      now: float) -> None:
        c = self.c
        src = rx.src
        # RFC 4861 §7.2.3: only for an address of the receiving interface.
        a = self.addresses.get(dev.name, int(ns.target))
        if a is None or a.state == DUPLICATE:
            c["rx_ns_not_our_target"] += 1
            return
        if a.state == TENTATIVE:
            if src.is_unspecified:
                # RFC 4862 §5.4.3: another node's DAD probe for the address we are probing.
                # (Our own probe, looped back, never gets here: Stack drops our own MAC.)
                self._duplicate(a)
            else:
                c["rx_ns_for_tentative"] += 1   # §5.4.3: not answered, not learned from
            return
        lladdr = ns.source_lladdr
        if not src.is_unspecified and lladdr is not None:
            # RFC 4861 §7.2.3: create or update the sender's entry (STALE when new or changed).
            self.neighbors.learn(dev.name, int(src), lladdr, now, create=True)
        # RFC 4861 §7.2.4: to a DAD probe (source ::), answer all-nodes with S clear;
        # otherwise unicast to the sender, S set. O set: the address is not anycast.
        solicited = not src.is_unspecified
        dst = src if solicited else ALL_NODES
        na = NeighborAdvertisement(ns.target, router=self._is_router(dev.name),
                                   solicited=solicited, override=True,
                                   options=(TargetLinkLayerAddress(dev.mac),))
        packet = build_ipv6(ns.target, dst, NEXT_HEADER_ICMPV6, na.build(ns.target, dst),
                            hop_limit=ND_HOP_LIMIT)
        c["tx_na"] += 1
        if not solicited:
            self._enqueue_tx(dev, build_ethernet(multicast_mac(dst), dev.mac, ETHERTYPE_IPV6,
                                                 packet))
        elif lladdr is not None:
            self._enqueue_tx(dev, build_ethernet(lladdr, dev.mac, ETHERTYPE_IPV6, packet))
        else:
            # A unicast probe without SLLAO: §7.2.4 says resolve the sender as for any packet.
            self.neighbors.send(dev.name, int(src), packet, now)

    def _advertisement(self, dev: Device, rx: Ipv6Datagram, na: NeighborAdvertisement,
                       now: float) -> None:
        c = self.c
        t = int(na.target)
        a = self.addresses.get(dev.name, t)
        if a is not None:
            if a.state == TENTATIVE:
                self._duplicate(a)              # RFC 4862 §5.4.4: someone has it
            else:
                c["rx_na_for_our_address"] += 1  # §5.4.4: a duplicate found late; only noted
            return
        table, name = self.neighbors, dev.name
        state = table.state_of(name, t)
        if state is State.NONE:
            c["rx_na_no_entry"] += 1            # RFC 4861 §7.2.5: silently discarded
            return
        lladdr = na.target_lladdr
        cached = table.lladdr_of(name, t)
        if cached is None:
            # INCOMPLETE (or FAILED): §7.2.5 needs the target's link-layer address.
            if lladdr is None:
                c["rx_na_no_lladdr"] += 1
                return
            if na.solicited:
                table.confirm(name, t, lladdr, now)         # -> REACHABLE, queue sent
            else:
                table.learn(name, t, lladdr, now, create=False)  # -> STALE, queue sent
            return
        if not na.override and lladdr is not None and lladdr != cached:
            # §7.2.5: O clear and a different address: keep ours, but REACHABLE becomes STALE.
            table.contradict(name, t, now)
            return
        if na.solicited:
            table.confirm(name, t, lladdr if lladdr is not None else cached, now)
        elif lladdr is not None:
            table.learn(name, t, lladdr, now, create=False)  # a new address: STALE

    # -- NeighborSink ------------------------------------------------------------------------
    def solicit(self, device: str, address: int, lladdr: bytes | None, now: float) -> None:
        dev = self._devs.get(device)
        if dev is None or not dev.up or dev.kind != ETHERNET:
            return
        target = IPv6Address(address)
        src = self.addresses.source_for(device, target)
        if src is None:
            # §7.2.2 wants one of our addresses as the source; a tentative one may not be used.
            self.c["tx_ns_no_source"] += 1
            return
        # §7.2.2: multicast to the target's solicited-node group, or unicast to the cached
        # address when probing (NUD); with our link-layer address either way.
        dst = target if lladdr is not None else solicited_node_address(target)
        ns = NeighborSolicitation(target, (SourceLinkLayerAddress(dev.mac),))
        packet = build_ipv6(src, dst, NEXT_HEADER_ICMPV6, ns.build(src, dst),
                            hop_limit=ND_HOP_LIMIT)
        self._enqueue_tx(dev, build_ethernet(lladdr or multicast_mac(dst), dev.mac,
                                             ETHERTYPE_IPV6, packet))
        self.c["tx_ns"] += 1

    def transmit(self, device: str, lladdr: bytes, packet: bytes, now: float) -> None:
        dev = self._devs.get(device)
        if dev is None:
            self.c["tx_drop_no_device"] += 1
            return
        self._enqueue_tx(dev, build_ethernet(lladdr, dev.mac, ETHERTYPE_IPV6, packet))

    def unreachable(self, device: str, address: int, packets: list[bytes], now: float) -> None:
        self._emit(NeighborUnreachable(device, IPv6Address(address), len(packets)))
        if self._unreachable is not None and packets:
            self._unreachable(device, packets, now)

    # -- Duplicate Address Detection (RFC 4862 §5.4) -----------------------------------------
    def start_dad(self, dev: Device, a: Ipv6Addr, now: float) -> None:
        """Make a TENTATIVE and probe it; on a link that is down, probing waits for link_up."""
        self.addresses.set_state(a, TENTATIVE)      # joins its solicited-node group
        self._dad_timers.cancel((dev.name, int(a.ip)))
        a.probes_left = self.cfg.dup_addr_detect_transmits
        if a.probes_left <= 0:
            self._preferred(a)                      # §5.4: DupAddrDetectTransmits 0: no DAD
            return
        if dev.up:
            self._probe(dev, a, now)

    def _probe(self, dev: Device, a: Ipv6Addr, now: float) -> None:
        # §5.4.2: an NS for the address from ::, to its solicited-node group, no SLLAO.
        dst = solicited_node_address(a.ip)
        ns = NeighborSolicitation(a.ip)
        packet = build_ipv6(UNSPECIFIED, dst, NEXT_HEADER_ICMPV6, ns.build(UNSPECIFIED, dst),
                            hop_limit=ND_HOP_LIMIT)
        self._enqueue_tx(dev, build_ethernet(multicast_mac(dst), dev.mac, ETHERTYPE_IPV6, packet))
        a.probes_left -= 1
        self.c["tx_dad_ns"] += 1
        # §5.4: RetransTimer after each probe; the last one's expiry ends DAD.
        self._dad_timers.set((dev.name, int(a.ip)), now + self.cfg.arp_retrans_time)

    def _preferred(self, a: Ipv6Addr) -> None:
        self.addresses.set_state(a, PREFERRED)
        self.c["dad_succeeded"] += 1

    def _duplicate(self, a: Ipv6Addr) -> None:
        # §5.4.5: the address is not assigned to the interface. (Disabling IPv6 on the
        # interface when it was the MAC-derived link-local one, its SHOULD, comes later.)
        self._dad_timers.cancel((a.device, int(a.ip)))
        self.addresses.set_state(a, DUPLICATE)
        self.c["dad_failed"] += 1
        self._emit(DuplicateAddress(a.device, a.ip))

    def link_up(self, dev: Device, now: float) -> None:
        """§5.4: DAD again for every address of an interface that comes back up."""
        for a in self.addresses.of_device(dev.name):
            if a.state != DUPLICATE:
                self.start_dad(dev, a, now)

    def link_down(self, name: str) -> None:
        for a in self.addresses.of_device(name):
            self._dad_timers.cancel((name, int(a.ip)))

    def forget(self, device: str, address: int) -> None:
        """An address withdrawn: its probing stops."""
        self._dad_timers.cancel((device, address))

    def poll(self, now: float) -> None:
        for key in self._dad_timers.pop_due(now):
            a = self.addresses.get(*key)
            dev = self._devs.get(key[0])
            if a is None or dev is None or a.state != TENTATIVE:
                continue
            if a.probes_left > 0 and dev.up:
                self._probe(dev, a, now)
            elif dev.up:
                self._preferred(a)

    def next_deadline(self) -> float | None:
        return self._dad_timers.next()

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        """Resolved IPv6 neighbors for a successor (Stack.snapshot's "neighbors6")."""
        return [{"device": dev, "address": str(IPv6Address(a)), "mac": bytes(mac)}
                for dev, a, mac in self.neighbors.snapshot()]

    def restore(self, snap: list[dict], now: float) -> None:
        """Neighbors come back STALE; addresses restored TENTATIVE are probed from `now`."""
        for n in snap:
            if n["device"] in self._devs:
                self.neighbors.restore_entry(n["device"], int(IPv6Address(n["address"])),
                                             MacAddr(bytes(n["mac"])), now)
        for a in self.addresses:
            dev = self._devs.get(a.device)
            if dev is not None and a.state == TENTATIVE:
                self.start_dad(dev, a, now)
