"""The sans-I/O network core: devices, ARP, IPv4, ICMP, UDP, TCP; IPv6 with NDP and ICMPv6. No I/O, no clock, no ipc/."""

from .config import StackConfig
from .device import AddressInfo, DeviceInfo
from .errors import StackError
from .events import (AddressConflict, DeviceRemoved, DuplicateAddress, EchoReply, Event,
                     IcmpErrorForSocket, LinkChanged, NeighborUnreachable, PingError)
from .neighbor import NeighborInfo
from .route import RouteInfo
from .stack import Stack
from .udp import Datagram

__all__ = [
    "AddressConflict", "AddressInfo", "Datagram", "DeviceInfo", "DeviceRemoved",
    "DuplicateAddress", "EchoReply",
    "Event", "IcmpErrorForSocket", "LinkChanged", "NeighborInfo", "NeighborUnreachable",
    "PingError", "RouteInfo", "Stack", "StackConfig", "StackError",
]
