"""ARP (RFC 826) and IPv4 address conflict detection (RFC 5227).

This module turns ARP packets into neighbor-table inputs and table requests into ARP packets;
the neighbor state machine itself lives in neighbor.py. The table keys IPv4 neighbors by the
address as an int: the forwarding path looks one up per packet, and an int hashes in C where
an IPv4Address hashes in Python.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from ..wire import (ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4,
                    ZERO_MAC, ArpPacket, EthernetFrame, ParseError, build_ethernet)
from .device import ETHERNET, Device
from .events import AddressConflict, NeighborUnreachable
from .ipv4 import LIMITED_BROADCAST, UNSPECIFIED
from .neighbor import State
from .timers import Deadlines

if TYPE_CHECKING:
    from .stack import Stack


class Arp:
    """The NeighborSink of the IPv4 neighbor table, plus the ARP receive path."""

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack
        self.cfg = stack.cfg
        self.c = stack.ctr.group("arp")
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
        neighbors = self.stack.arp_neighbors
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
            self.stack.enqueue_tx(dev, build_ethernet(arp.sha, dev.mac, ETHERTYPE_ARP,
                                                      reply.build()))
            c["tx_reply"] += 1

    def _conflict(self, dev: Device, arp: ArpPacket, now: float) -> None:
        self.c["conflicts"] += 1
        self.stack.emit(AddressConflict(dev.name, arp.spa, str(arp.sha)))
        # RFC 5227 §2.4 (b): defend once with an announcement, then not again within
        # DEFEND_INTERVAL, so two hosts do not fight forever.
        last = dev.last_defended.get(arp.spa)
        if last is None or now - last >= self.cfg.defend_interval:
            dev.last_defended[arp.spa] = now
            self._send_announcement(dev, arp.spa)
            self.c["defended"] += 1

    # -- NeighborSink ------------------------------------------------------------------------
    def solicit(self, device: str, address: int, lladdr: bytes | None, now: float) -> None:
        dev = self.stack.devs.get(device)
        if dev is None or not dev.up or dev.kind != ETHERNET:
            return
        address = IPv4Address(address)
        spa = dev.source_for(address) or UNSPECIFIED
        req = ArpPacket(ARP_REQUEST, dev.mac, spa, ZERO_MAC, address)
        self.stack.enqueue_tx(dev, build_ethernet(lladdr or BROADCAST_MAC, dev.mac,
                                                  ETHERTYPE_ARP, req.build()))
        self.c["tx_request"] += 1

    def transmit(self, device: str, lladdr: bytes, packet: bytes, now: float) -> None:
        dev = self.stack.devs.get(device)
        if dev is None:
            return
        self.stack.enqueue_tx(dev, build_ethernet(lladdr, dev.mac, ETHERTYPE_IPV4, packet))

    def unreachable(self, device: str, address: int, packets: list[bytes], now: float) -> None:
        self.stack.emit(NeighborUnreachable(device, IPv4Address(address), len(packets)))
        self.stack.ip4.neighbor_failed(device, packets, now)

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
        self.stack.enqueue_tx(dev, build_ethernet(BROADCAST_MAC, dev.mac, ETHERTYPE_ARP,
                                                  ann.build()))
        self.c["tx_announcement"] += 1

    def cancel_announcements(self, device: str, address: IPv4Address | None = None) -> None:
        for key in [k for k in self._announce_left
                    if k[0] == device and (address is None or k[1] == address)]:
            del self._announce_left[key]
            self._announce_timers.cancel(key)

    def poll(self, now: float) -> None:
        for key in self._announce_timers.pop_due(now):
            left = self._announce_left.pop(key, 0)
            dev = self.stack.devs.get(key[0])
            if dev is None or not dev.up or not any(a.ip == key[1] for a in dev.addresses):
                continue
            self._send_announcement(dev, key[1])
            if left > 1:
                self._announce_left[key] = left - 1
                self._announce_timers.set(key, now + self.cfg.announce_interval)

    def next_deadline(self) -> float | None:
        return self._announce_timers.next()
