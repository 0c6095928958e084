"""ARP (RFC 826) and IPv4 address conflict detection (RFC 5227).

This module owns the IPv4 neighbor table, turns ARP packets into its inputs and its requests
into ARP packets; the neighbor state machine itself lives in neighbor.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable

from ..wire import (ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4,
                    ZERO_MAC, ArpPacket, EthernetFrame, MacAddr, ParseError, build_ethernet)
from .config import StackConfig
from .device import ETHERNET, Device
from .events import AddressConflict, NeighborUnreachable
from .ipv4 import LIMITED_BROADCAST, UNSPECIFIED
from .links import Links
from .neighbor import NeighborTable, State
from .timers import Deadlines


@dataclass(frozen=True)
class ArpContext:
    """Everything outside itself that ARP may touch."""
    # Devices (looked up, never added or removed) and their transmit queues.
    links: Links
    # Events for the binding: AddressConflict, NeighborUnreachable.
    emit: Callable[[object], None]
    # The IPv4 layer's answer to failed resolution (device, waiting packets, now): ICMP
    # host unreachable to their senders.
    unreachable: Callable[[str, list[bytes], float], None]


class Arp:
    """ARP rx/tx and the IPv4 neighbor table it drives, as that table's NeighborSink."""

    def __init__(self, cfg: StackConfig, counters, neighbor_counters, ctx: ArpContext) -> None:
        self.cfg = cfg
        self.c = counters
        self._devs = ctx.links.devices
        self._enqueue_tx = ctx.links.enqueue_tx
        self._emit = ctx.emit
        self._unreachable = ctx.unreachable
        # Keyed (device, address int): the forwarding path looks one up per packet, and an
        # int hashes in C where an IPv4Address hashes in Python.
        self.neighbors = NeighborTable(cfg, self, neighbor_counters,
                                       format_address=lambda a: str(IPv4Address(a)))
        # RFC 5227 §2.3: announcements still to send, keyed (device, address) -> count left.
        self._announce_left: dict[tuple[str, IPv4Address], int] = {}
        self._announce_timers = Deadlines()

    # -- receive -----------------------------------------------------------------------------
    def receive(self, dev: Device, frame: EthernetFrame, now: float) -> None:
        c = self.c
        try:
            arp = ArpPacket.parse(frame.payload)
        except ParseError:
            c["rx_bad"] += 1
            return
        c["rx_packets"] += 1
        if arp.sha == dev.mac:
            c["rx_own"] += 1                     # our own broadcast reflected back
            return
        if arp.sha.is_multicast:
            c["rx_drop_bad_sender"] += 1         # no host owns a group MAC
            return
        mine = {iface.ip for iface in dev.addresses}
        if arp.spa in mine:
            # RFC 5227 §2.4: someone else claims our address.
            self._conflict(dev, arp, now)
            return
        neighbors = self.neighbors
        for_us = arp.tpa in mine
        if arp.spa != UNSPECIFIED and not (arp.spa.is_multicast or arp.spa.is_loopback
                                           or arp.spa == LIMITED_BROADCAST):
            # RFC 826 "merge": update an existing entry; create one only when we are the target.
            spa = int(arp.spa)
            if arp.op == ARP_REPLY and for_us:
                if neighbors.state_of(dev.name, spa) is State.NONE:
                    neighbors.learn(dev.name, spa, arp.sha, now, create=True)
                else:
                    neighbors.confirm(dev.name, spa, arp.sha, now)
            else:
                neighbors.learn(dev.name, spa, arp.sha, now,
                                create=for_us and arp.op == ARP_REQUEST)
        if arp.op == ARP_REQUEST and for_us:
            # RFC 826: answer with our hardware address, to the asker directly.
            # A probe (sender 0.0.0.0, RFC 5227 §2.1.1) gets the same answer: that is how the
            # prober learns the address is taken.
            reply = ArpPacket(ARP_REPLY, dev.mac, arp.tpa, arp.sha, arp.spa)
            self._enqueue_tx(dev, build_ethernet(arp.sha, dev.mac, ETHERTYPE_ARP, reply.build()))
            c["tx_reply"] += 1

    def _conflict(self, dev: Device, arp: ArpPacket, now: float) -> None:
        self.c["conflicts"] += 1
        self._emit(AddressConflict(dev.name, arp.spa, str(arp.sha)))
        # RFC 5227 §2.4 (b): defend once with an announcement, then not again within
        # DEFEND_INTERVAL, so two hosts do not fight forever.
        last = dev.last_defended.get(arp.spa)
        if last is None or now - last >= self.cfg.defend_interval:
            dev.last_defended[arp.spa] = now
            self._send_announcement(dev, arp.spa)
            self.c["defended"] += 1

    # -- NeighborSink ------------------------------------------------------------------------
    def solicit(self, device: str, address: int, lladdr: bytes | None, now: float) -> None:
        dev = self._devs.get(device)
        if dev is None or not dev.up or dev.kind != ETHERNET:
            return
        address = IPv4Address(address)
        spa = dev.source_for(address) or UNSPECIFIED
        req = ArpPacket(ARP_REQUEST, dev.mac, spa, ZERO_MAC, address)
        self._enqueue_tx(dev, build_ethernet(lladdr or BROADCAST_MAC, dev.mac, ETHERTYPE_ARP,
                                             req.build()))
        self.c["tx_request"] += 1

    def transmit(self, device: str, lladdr: bytes, packet: bytes, now: float) -> None:
        dev = self._devs.get(device)
        if dev is None:
            return
        self._enqueue_tx(dev, build_ethernet(lladdr, dev.mac, ETHERTYPE_IPV4, packet))

    def unreachable(self, device: str, address: int, packets: list[bytes], now: float) -> None:
        self._emit(NeighborUnreachable(device, IPv4Address(address), len(packets)))
        self._unreachable(device, packets, now)

    # -- announcements -----------------------------------------------------------------------
    def announce(self, dev: Device, address: IPv4Address, now: float) -> None:
        """RFC 5227 §2.3: ANNOUNCE_NUM gratuitous requests, ANNOUNCE_INTERVAL apart."""
        if dev.kind != ETHERNET or not dev.up:
            return
        self._send_announcement(dev, address)
        if self.cfg.announce_num > 1:
            key = (dev.name, address)
            self._announce_left[key] = self.cfg.announce_num - 1
            self._announce_timers.set(key, now + self.cfg.announce_interval)

    def _send_announcement(self, dev: Device, address: IPv4Address) -> None:
        # RFC 5227 §3: an ARP request with sender and target both set to our address.
        ann = ArpPacket(ARP_REQUEST, dev.mac, address, ZERO_MAC, address)
        self._enqueue_tx(dev, build_ethernet(BROADCAST_MAC, dev.mac, ETHERTYPE_ARP, ann.build()))
        self.c["tx_announcement"] += 1

    def cancel_announcements(self, device: str, address: IPv4Address | None = None) -> None:
        for key in [k for k in self._announce_left
                    if k[0] == device and (address is None or k[1] == address)]:
            del self._announce_left[key]
            self._announce_timers.cancel(key)

    def poll(self, now: float) -> None:
        for key in self._announce_timers.pop_due(now):
            left = self._announce_left.pop(key, 0)
            dev = self._devs.get(key[0])
            if dev is None or not dev.up or not any(a.ip == key[1] for a in dev.addresses):
                continue
            self._send_announcement(dev, key[1])
            if left > 1:
                self._announce_left[key] = left - 1
                self._announce_timers.set(key, now + self.cfg.announce_interval)

    def next_deadline(self) -> float | None:
        return self._announce_timers.next()

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        """Resolved neighbors for a successor (Stack.snapshot's "neighbors")."""
        return [{"device": dev, "address": str(IPv4Address(a)), "mac": bytes(mac)}
                for dev, a, mac in self.neighbors.snapshot()]

    def restore(self, snap: list[dict], now: float) -> None:
        """Into a new table, on the devices Links has restored: each entry STALE."""
        for n in snap:
            if n["device"] in self._devs:
                self.neighbors.restore_entry(n["device"], int(IPv4Address(n["address"])),
                                             MacAddr(bytes(n["mac"])), now)
