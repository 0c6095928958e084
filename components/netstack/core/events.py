"""Events the core hands to its binding through `Stack.take_events()`.

Each is a frozen dataclass whose `to_dict()` gives msgpack-friendly values (addresses as str,
MACs as "aa:bb:cc:dd:ee:ff") plus an "event" key naming the type.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Interface, ipaddress.IPv6Interface,
                          ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    return value


class _Event:
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        d["event"] = type(self).__name__
        return d


@dataclass(frozen=True)
class EchoReply(_Event):
    """An ICMP echo reply arrived for us (answers `Stack.ping`)."""
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    ident: int
    seq: int
    ttl: int
    size: int


@dataclass(frozen=True)
class PingError(_Event):
    """An ICMP error arrived about one of our echo requests."""
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    type: int
    code: int
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    ident: int
    seq: int


@dataclass(frozen=True)
class AddressConflict(_Event):
    """RFC 5227: another host (mac) uses one of our addresses on device."""
    device: str
    address: ipaddress.IPv4Address
    mac: str


@dataclass(frozen=True)
class NeighborUnreachable(_Event):
    """Address resolution of address on device failed (entry went FAILED)."""
    device: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    dropped: int


@dataclass(frozen=True)
class DuplicateAddress(_Event):
    """RFC 4862 §5.4.5: Duplicate Address Detection found `address` in use on device (an NA
    for it, or another node's DAD probe); the stack does not use it."""
    device: str
    address: ipaddress.IPv6Address


@dataclass(frozen=True)
class LinkChanged(_Event):
    device: str
    up: bool


@dataclass(frozen=True)
class DeviceRemoved(_Event):
    device: str
    dropped: int


@dataclass(frozen=True)
class IcmpErrorForSocket(_Event):
    """An ICMP error quoting a datagram sent by UDP socket sid (ECONNREFUSED and friends)."""
    sid: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    type: int
    code: int
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_port: int
    mtu: int


Event = EchoReply | PingError | AddressConflict | NeighborUnreachable | LinkChanged | \
    DeviceRemoved | IcmpErrorForSocket | DuplicateAddress
