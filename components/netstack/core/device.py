"""Devices: the links the stack sends and receives on.

Kinds: "ethernet" (frames, ARP), "ip" (bare IP packets, e.g. a TUN-like link) and
"loopback" (the automatic `lo`; its frames never leave the stack). Devices come and go at any
moment; everything else refers to them by name and checks that they still exist.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import asdict, dataclass, field

from ..wire import MacAddr

ETHERNET = "ethernet"
IP = "ip"
LOOPBACK = "loopback"
KINDS = (ETHERNET, IP, LOOPBACK)

MIN_MTU = 68            # RFC 791: every internet module must forward a 68-octet datagram
MAX_MTU = 65535


@dataclass
class Device:
    name: str
    kind: str
    mac: MacAddr | None
    mtu: int
    up: bool = True
    forwarding: bool = True
    addresses: list[ipaddress.IPv4Interface] = field(default_factory=list)
    tx: deque = field(default_factory=deque)
    # TCP segmentation offload: the largest TCP payload the device cuts into MTU-sized
    # segments for us (its driver took tso4 with checksum offload); 0: none.
    tso_max: int = 0
    # RFC 5227 §2.4: when we last defended each address against a conflicting claim.
    last_defended: dict[ipaddress.IPv4Address, float] = field(default_factory=dict)

    def source_for(self, dst: ipaddress.IPv4Address) -> ipaddress.IPv4Address | None:
        """Our address to use toward dst on this device: same subnet first, then the first."""
        for iface in self.addresses:
            if dst in iface.network:
                return iface.ip
        return self.addresses[0].ip if self.addresses else None

    def info(self) -> "DeviceInfo":
        return DeviceInfo(self.name, self.kind, None if self.mac is None else str(self.mac),
                          self.mtu, self.up, self.forwarding,
                          tuple(str(a) for a in self.addresses), len(self.tx))


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: str
    mac: str | None
    mtu: int
    up: bool
    forwarding: bool
    addresses: tuple[str, ...]
    tx_queued: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["addresses"] = list(self.addresses)
        return d


@dataclass(frozen=True)
class AddressInfo:
    device: str
    address: str        # "10.0.0.1/24"

    def to_dict(self) -> dict:
        return asdict(self)


def multicast_mac(group: ipaddress.IPv4Address | ipaddress.IPv6Address) -> MacAddr:
    if group.version == 6:
        # RFC 2464 §7: 33-33 followed by the low-order 32 bits of the group address.
        return MacAddr(b"\x33\x33" + (int(group) & 0xFFFFFFFF).to_bytes(4, "big"))
    # RFC 1112 §6.4: 01-00-5E followed by the low-order 23 bits of the group address.
    low = int(group) & 0x7FFFFF
    return MacAddr(b"\x01\x00\x5e" + low.to_bytes(3, "big"))
