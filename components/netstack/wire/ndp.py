"""Neighbor Discovery (RFC 4861 §4) with RDNSS/DNSSL (RFC 8106) and Route Information
(RFC 4191) options, MLDv2 Listener Reports (RFC 3810 §5.2), and the IPv6 address helpers
they need: solicited-node groups, multicast MACs and modified EUI-64 link-local addresses.

Messages are parsed from an Icmpv6Message (so the checksum is checked once, in icmpv6.py)
and built back into whole ICMPv6 messages with `build(src, dst)`. What needs the IPv6 header
(hop limit 255, a link-local source) is the core's to check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Union

from ._fast import ipv6_address, trusted_mac
from .addr import MacAddr
from .errors import ParseError
from .icmpv6 import Icmpv6Message, build_icmpv6

ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_REDIRECT = 137
MLDV2_REPORT = 143

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_REDIRECTED_HEADER = 4
OPT_MTU = 5
OPT_ROUTE_INFO = 24  # RFC 4191
OPT_RDNSS = 25  # RFC 8106
OPT_DNSSL = 31  # RFC 8106

# MLDv2 multicast address record types (RFC 3810 §5.2.12)
MODE_IS_INCLUDE = 1
MODE_IS_EXCLUDE = 2
CHANGE_TO_INCLUDE_MODE = 3
CHANGE_TO_EXCLUDE_MODE = 4
ALLOW_NEW_SOURCES = 5
BLOCK_OLD_SOURCES = 6

ALL_NODES = IPv6Address("ff02::1")
ALL_ROUTERS = IPv6Address("ff02::2")
ALL_MLDV2_ROUTERS = IPv6Address("ff02::16")

_U32 = struct.Struct("!I")
_PREFIX = struct.Struct("!BBIII16s")  # prefix length, flags, valid, preferred, reserved, prefix
_RA = struct.Struct("!BBH")
_RA_TIMERS = struct.Struct("!II")
_ROUTE = struct.Struct("!BBI")
_MLD_RECORD = struct.Struct("!BBH16s")


# Options (RFC 4861 §4.6)

@dataclass(frozen=True, slots=True)
class SourceLinkLayerAddress:
    address: MacAddr

    def to_bytes(self) -> bytes:
        return bytes((OPT_SOURCE_LLADDR, 1)) + self.address


@dataclass(frozen=True, slots=True)
class TargetLinkLayerAddress:
    address: MacAddr

    def to_bytes(self) -> bytes:
        return bytes((OPT_TARGET_LLADDR, 1)) + self.address


@dataclass(frozen=True, slots=True)
class PrefixInformation:
    prefix_length: int
    on_link: bool  # L
    autonomous: bool  # A
    valid_lifetime: int  # seconds; 0xFFFFFFFF is infinity
    preferred_lifetime: int
    prefix: IPv6Address

    def to_bytes(self) -> bytes:
        flags = (0x80 if self.on_link else 0) | (0x40 if self.autonomous else 0)
        return bytes((OPT_PREFIX_INFO, 4)) + _PREFIX.pack(
            self.prefix_length, flags, self.valid_lifetime, self.preferred_lifetime, 0,
            self.prefix.packed)


@dataclass(frozen=True, slots=True)
class RedirectedHeader:
    packet: bytes  # the start of the redirected packet, from its IPv6 header on

    def to_bytes(self) -> bytes:
        data = self.packet + b"\0" * (-(8 + len(self.packet)) % 8)
        return bytes((OPT_REDIRECTED_HEADER, (8 + len(data)) // 8)) + b"\0" * 6 + data


@dataclass(frozen=True, slots=True)
class MtuOption:
    mtu: int

    def to_bytes(self) -> bytes:
        return bytes((OPT_MTU, 1, 0, 0)) + _U32.pack(self.mtu)


@dataclass(frozen=True, slots=True)
class RouteInformation:
    prefix_length: int
    preference: int  # 2-bit signed: 1 high, 0 medium, 3 low
    lifetime: int
    prefix: IPv6Address

    def to_bytes(self) -> bytes:
        size = 0 if self.prefix_length == 0 else 8 if self.prefix_length <= 64 else 16
        return bytes((OPT_ROUTE_INFO, 1 + size // 8)) + _ROUTE.pack(
            self.prefix_length, (self.preference & 3) << 3, self.lifetime) + self.prefix.packed[:size]


@dataclass(frozen=True, slots=True)
class RecursiveDnsServers:
    lifetime: int
    servers: tuple[IPv6Address, ...]

    def to_bytes(self) -> bytes:
        return (bytes((OPT_RDNSS, 1 + 2 * len(self.servers), 0, 0)) + _U32.pack(self.lifetime)
                + b"".join(a.packed for a in self.servers))


@dataclass(frozen=True, slots=True)
class DnsSearchList:
    lifetime: int
    domains: tuple[str, ...]  # without the trailing dot

    def to_bytes(self) -> bytes:
        names = b"".join(_encode_name(d) for d in self.domains)
        names += b"\0" * (-(8 + len(names)) % 8)
        return bytes((OPT_DNSSL, (8 + len(names)) // 8, 0, 0)) + _U32.pack(self.lifetime) + names


NdpOption = Union[SourceLinkLayerAddress, TargetLinkLayerAddress, PrefixInformation,
                  RedirectedHeader, MtuOption, RouteInformation, RecursiveDnsServers,
                  DnsSearchList]


def _encode_name(domain: str) -> bytes:
    out = bytearray()
    for label in domain.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 1 <= len(raw) <= 63:
            raise ValueError(f"ndp: DNS label {label!r} must be 1 to 63 bytes")
        out += bytes((len(raw),)) + raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"ndp: domain {domain!r} is longer than 255 bytes")
    return bytes(out)


def _decode_names(data: memoryview) -> tuple[str, ...]:
    """RFC 8106 §5.2: names in DNS wire format without compression, then zero padding."""
    names = []
    i, n = 0, len(data)
    while i < n and data[i]:
        labels = []
        start = i
        while True:
            if i >= n:
                raise ParseError("ndp: dnssl domain name runs past the option")
            size = data[i]
            if size == 0:
                i += 1
                break
            if size > 63:
                raise ParseError(f"ndp: dnssl label length {size} exceeds 63")
            if i + 1 + size > n:
                raise ParseError("ndp: dnssl label runs past the option")
            try:
                labels.append(bytes(data[i + 1:i + 1 + size]).decode("ascii"))
            except UnicodeDecodeError:
                raise ParseError("ndp: dnssl label is not ASCII") from None
            i += 1 + size
        if i - start > 255:
            raise ParseError(f"ndp: dnssl domain name of {i - start} bytes exceeds 255")
        names.append(".".join(labels))
    return tuple(names)


def _parse_option(kind: int, opt: memoryview) -> NdpOption | None:
    """One option's value (opt includes type and length), or None for one we skip."""
    length = len(opt)
    if kind in (OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR):
        if length != 8:
            return None  # another link type's address; this stack speaks Ethernet
        cls = SourceLinkLayerAddress if kind == OPT_SOURCE_LLADDR else TargetLinkLayerAddress
        return cls(trusted_mac(opt[2:8]))
    if kind == OPT_PREFIX_INFO:
        if length != 32:
            raise ParseError(f"ndp: prefix information option length {length // 8}, not 4")
        plen, flags, valid, preferred, _res, prefix = _PREFIX.unpack_from(opt, 2)
        if plen > 128:
            raise ParseError(f"ndp: prefix information prefix length {plen} exceeds 128")
        return PrefixInformation(plen, bool(flags & 0x80), bool(flags & 0x40), valid, preferred,
                                 ipv6_address(prefix))
    if kind == OPT_MTU:
        if length != 8:
            raise ParseError(f"ndp: mtu option length {length // 8}, not 1")
        return MtuOption(_U32.unpack_from(opt, 4)[0])
    if kind == OPT_REDIRECTED_HEADER:
        return RedirectedHeader(bytes(opt[8:]))
    if kind == OPT_ROUTE_INFO:
        plen, flags, lifetime = _ROUTE.unpack_from(opt, 2) if length >= 8 else (0, 0, 0)
        # RFC 4191 §2.3: length 1 to 3, and long enough for the prefix length.
        if length > 24 or plen > 128 or (plen > 64 and length < 24) or (plen > 0 and length < 16):
            raise ParseError(f"ndp: route information option length {length // 8} "
                             f"for prefix length {plen}")
        prefix = bytes(opt[8:length]) + b"\0" * (24 - length)
        pref = (flags >> 3) & 3
        # RFC 4191 §2.1: the reserved preference 10 is treated as medium (00).
        return RouteInformation(plen, 0 if pref == 2 else pref, lifetime, ipv6_address(prefix))
    if kind == OPT_RDNSS:
        # RFC 8106 §5.1: length is 1 + 2 per address, at least one address.
        if length < 24 or (length // 8) % 2 == 0:
            raise ParseError(f"ndp: rdnss option length {length // 8} is not 3, 5, 7, ...")
        servers = tuple(ipv6_address(bytes(opt[i:i + 16])) for i in range(8, length, 16))
        return RecursiveDnsServers(_U32.unpack_from(opt, 4)[0], servers)
    if kind == OPT_DNSSL:
        # RFC 8106 §5.2: minimum length 2 (one name).
        if length < 16:
            raise ParseError(f"ndp: dnssl option length {length // 8} is below 2")
        return DnsSearchList(_U32.unpack_from(opt, 4)[0], _decode_names(opt[8:]))
    return None


def parse_options(buf: bytes | memoryview) -> tuple[NdpOption, ...]:
    mv = memoryview(buf)
    options = []
    i, n = 0, len(mv)
    while i < n:
        if i + 2 > n:
            raise ParseError(f"ndp: option at {i} has no length byte")
        kind, units = mv[i], mv[i + 1]
        if units == 0:
            # RFC 4861 §4.6: nodes MUST silently discard an ND packet with a zero-length option.
            raise ParseError(f"ndp: option {kind} has length 0")
        end = i + units * 8
        if end > n:
            raise ParseError(f"ndp: option {kind} length {units} runs past the message")
        option = _parse_option(kind, mv[i:end])
        if option is not None:
            options.append(option)
        # RFC 4861 §4.6: unrecognised options are skipped (and the rest processed).
        i = end
    return tuple(options)


def build_options(options: tuple[NdpOption, ...] | list[NdpOption]) -> bytes:
    return b"".join(o.to_bytes() for o in options)


class _Options:
    """Lookups on a message's options tuple, shared by every ND message."""

    __slots__ = ()
    options: tuple[NdpOption, ...]

    @property
    def source_lladdr(self) -> MacAddr | None:
        return next((o.address for o in self.options if type(o) is SourceLinkLayerAddress), None)

    @property
    def target_lladdr(self) -> MacAddr | None:
        return next((o.address for o in self.options if type(o) is TargetLinkLayerAddress), None)

    @property
    def mtu(self) -> int | None:
        return next((o.mtu for o in self.options if type(o) is MtuOption), None)

    @property
    def prefixes(self) -> tuple[PrefixInformation, ...]:
        return tuple(o for o in self.options if type(o) is PrefixInformation)

    @property
    def routes(self) -> tuple[RouteInformation, ...]:
        return tuple(o for o in self.options if type(o) is RouteInformation)

    @property
    def dns_servers(self) -> tuple[RecursiveDnsServers, ...]:
        return tuple(o for o in self.options if type(o) is RecursiveDnsServers)

    @property
    def search_lists(self) -> tuple[DnsSearchList, ...]:
        return tuple(o for o in self.options if type(o) is DnsSearchList)


def _check(msg: Icmpv6Message, name: str, min_len: int) -> None:
    # RFC 4861 §6.1.1, §6.1.2, §7.1.1, §7.1.2, §8.1: the ICMP code is 0 and the message is
    # at least the fixed part long.
    if msg.code != 0:
        raise ParseError(f"ndp: {name} with code {msg.code}, not 0")
    if 8 + len(msg.payload) < min_len:
        raise ParseError(f"ndp: {name} of {8 + len(msg.payload)} bytes is shorter than {min_len}")


def _no_lladdr_from_unspecified(src: IPv6Address, options: tuple[NdpOption, ...], name: str) -> None:
    # RFC 4861 §6.1.1, §7.1.1: from the unspecified address, no source link-layer address.
    if src.is_unspecified and any(type(o) is SourceLinkLayerAddress for o in options):
        raise ParseError(f"ndp: {name} from :: carries a source link-layer address option")


# Messages (RFC 4861 §4.1-§4.5)

@dataclass(frozen=True, slots=True)
class RouterSolicitation(_Options):
    options: tuple[NdpOption, ...] = ()

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "RouterSolicitation":
        _check(msg, "router solicitation", 8)
        options = parse_options(msg.payload)
        _no_lladdr_from_unspecified(src, options, "router solicitation")
        return cls(options)

    def build(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        return build_icmpv6(src, dst, ND_ROUTER_SOLICIT, 0, b"\0\0\0\0", build_options(self.options))


@dataclass(frozen=True, slots=True)
class RouterAdvertisement(_Options):
    cur_hop_limit: int = 0  # 0: unspecified
    managed: bool = False  # M
    other: bool = False  # O
    router_lifetime: int = 0  # seconds; 0: not a default router
    reachable_time: int = 0  # milliseconds; 0: unspecified
    retrans_timer: int = 0  # milliseconds; 0: unspecified
    options: tuple[NdpOption, ...] = ()
    preference: int = 0  # RFC 4191 default router preference: 1 high, 0 medium, 3 low

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "RouterAdvertisement":
        _check(msg, "router advertisement", 16)
        hop_limit, flags, lifetime = _RA.unpack(msg.rest)
        reachable, retrans = _RA_TIMERS.unpack_from(msg.payload)
        pref = (flags >> 3) & 3
        # RFC 4191 §2.2: a reserved preference (10) is treated as medium.
        return cls(hop_limit, bool(flags & 0x80), bool(flags & 0x40), lifetime, reachable, retrans,
                   parse_options(msg.payload[8:]), 0 if pref == 2 else pref)

    def build(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        flags = (0x80 if self.managed else 0) | (0x40 if self.other else 0) | ((self.preference & 3) << 3)
        return build_icmpv6(src, dst, ND_ROUTER_ADVERT, 0,
                            _RA.pack(self.cur_hop_limit, flags, self.router_lifetime),
                            _RA_TIMERS.pack(self.reachable_time, self.retrans_timer)
                            + build_options(self.options))


@dataclass(frozen=True, slots=True)
class NeighborSolicitation(_Options):
    target: IPv6Address
    options: tuple[NdpOption, ...] = ()

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "NeighborSolicitation":
        _check(msg, "neighbor solicitation", 24)
        target = ipv6_address(bytes(msg.payload[:16]))
        if target.is_multicast:
            # RFC 4861 §7.1.1: the target address is not a multicast address.
            raise ParseError(f"ndp: neighbor solicitation target {target} is multicast")
        if src.is_unspecified and not (dst.is_multicast and dst.packed[:13] == _SOLICITED_PREFIX):
            # RFC 4861 §7.1.1: from :: (DAD), the destination is a solicited-node address.
            raise ParseError(f"ndp: neighbor solicitation from :: to {dst}, not a solicited-node group")
        options = parse_options(msg.payload[16:])
        _no_lladdr_from_unspecified(src, options, "neighbor solicitation")
        return cls(target, options)

    def build(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        return build_icmpv6(src, dst, ND_NEIGHBOR_SOLICIT, 0, b"\0\0\0\0",
                            self.target.packed + build_options(self.options))


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement(_Options):
    target: IPv6Address
    router: bool = False  # R
    solicited: bool = False  # S
    override: bool = False  # O
    options: tuple[NdpOption, ...] = ()

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "NeighborAdvertisement":
        _check(msg, "neighbor advertisement", 24)
        flags = msg.rest[0]
        target = ipv6_address(bytes(msg.payload[:16]))
        if target.is_multicast:
            # RFC 4861 §7.1.2: the target address is not a multicast address.
            raise ParseError(f"ndp: neighbor advertisement target {target} is multicast")
        if dst.is_multicast and flags & 0x40:
            # RFC 4861 §7.1.2: to a multicast destination the Solicited flag is zero.
            raise ParseError("ndp: neighbor advertisement to a multicast group has the solicited flag")
        return cls(target, bool(flags & 0x80), bool(flags & 0x40), bool(flags & 0x20),
                   parse_options(msg.payload[16:]))

    def build(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        flags = (0x80 if self.router else 0) | (0x40 if self.solicited else 0) | (0x20 if self.override else 0)
        return build_icmpv6(src, dst, ND_NEIGHBOR_ADVERT, 0, bytes((flags, 0, 0, 0)),
                            self.target.packed + build_options(self.options))


@dataclass(frozen=True, slots=True)
class Redirect(_Options):
    target: IPv6Address  # the better first hop
    destination: IPv6Address  # the address redirected
    options: tuple[NdpOption, ...] = ()

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "Redirect":
        _check(msg, "redirect", 40)
        destination = ipv6_address(bytes(msg.payload[16:32]))
        if destination.is_multicast:
            # RFC 4861 §8.1: the Destination Address field is not a multicast address.
            raise ParseError(f"ndp: redirect destination {destination} is multicast")
        return cls(ipv6_address(bytes(msg.payload[:16])), destination, parse_options(msg.payload[32:]))

    def build(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        return build_icmpv6(src, dst, ND_REDIRECT, 0, b"\0\0\0\0", self.target.packed
                            + self.destination.packed + build_options(self.options))

    @property
    def redirected_header(self) -> bytes | None:
        return next((o.packet for o in self.options if type(o) is RedirectedHeader), None)


# MLDv2 (RFC 3810 §5.2)

@dataclass(frozen=True, slots=True)
class MulticastAddressRecord:
    record_type: int
    multicast_address: IPv6Address
    sources: tuple[IPv6Address, ...] = ()
    aux_data: bytes = b""  # a multiple of 4 bytes

    def to_bytes(self) -> bytes:
        if len(self.aux_data) % 4:
            raise ValueError(f"mldv2: aux data of {len(self.aux_data)} bytes is not 4n")
        return (_MLD_RECORD.pack(self.record_type, len(self.aux_data) // 4, len(self.sources),
                                 self.multicast_address.packed)
                + b"".join(s.packed for s in self.sources) + self.aux_data)


@dataclass(frozen=True, slots=True)
class MldV2Report:
    records: tuple[MulticastAddressRecord, ...] = ()

    @classmethod
    def from_icmpv6(cls, msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> "MldV2Report":
        if msg.type != MLDV2_REPORT:
            raise ParseError(f"mldv2: type {msg.type}, not a report (143)")
        count = (msg.rest[2] << 8) | msg.rest[3]
        mv = memoryview(msg.payload)
        n = len(mv)
        records = []
        i = 0
        for index in range(count):  # bounded: each record takes at least 20 bytes of n
            if i + 20 > n:
                raise ParseError(f"mldv2: record {index} of {count} runs past the message")
            rtype, aux_words, nsrc, group = _MLD_RECORD.unpack_from(mv, i)
            end = i + 20 + 16 * nsrc + 4 * aux_words
            if end > n:
                raise ParseError(f"mldv2: record {index} with {nsrc} sources runs past the message")
            sources = tuple(ipv6_address(bytes(mv[j:j + 16])) for j in range(i + 20, i + 20 + 16 * nsrc, 16))
            records.append(MulticastAddressRecord(rtype, ipv6_address(group), sources,
                                                  bytes(mv[end - 4 * aux_words:end])))
            i = end
        return cls(tuple(records))

    def build(self, src: IPv6Address, dst: IPv6Address = ALL_MLDV2_ROUTERS) -> bytes:
        if len(self.records) > 0xFFFF:
            raise ValueError(f"mldv2: {len(self.records)} records exceed 65535")
        return build_icmpv6(src, dst, MLDV2_REPORT, 0, struct.pack("!HH", 0, len(self.records)),
                            b"".join(r.to_bytes() for r in self.records))


NdpMessage = Union[RouterSolicitation, RouterAdvertisement, NeighborSolicitation,
                   NeighborAdvertisement, Redirect, MldV2Report]

_BY_TYPE = {
    ND_ROUTER_SOLICIT: RouterSolicitation,
    ND_ROUTER_ADVERT: RouterAdvertisement,
    ND_NEIGHBOR_SOLICIT: NeighborSolicitation,
    ND_NEIGHBOR_ADVERT: NeighborAdvertisement,
    ND_REDIRECT: Redirect,
    MLDV2_REPORT: MldV2Report,
}


def parse_ndp(msg: Icmpv6Message, src: IPv6Address, dst: IPv6Address) -> NdpMessage:
    """The ND or MLDv2 message an ICMPv6 message carries; ParseError for other types."""
    cls = _BY_TYPE.get(msg.type)
    if cls is None:
        raise ParseError(f"ndp: icmpv6 type {msg.type} is not a neighbor discovery message")
    return cls.from_icmpv6(msg, src, dst)


# Address helpers

_SOLICITED_PREFIX = IPv6Address("ff02::1:ff00:0").packed[:13]


def solicited_node_address(addr: IPv6Address) -> IPv6Address:
    """ff02::1:ffXX:XXXX from the low 24 bits of addr (RFC 4291 §2.7.1)."""
    return IPv6Address(_SOLICITED_PREFIX + addr.packed[13:])


def multicast_mac(group: IPv6Address) -> MacAddr:
    """33:33 and the low 32 bits of an IPv6 multicast address (RFC 2464 §7)."""
    if not group.is_multicast:
        raise ValueError(f"{group} is not a multicast address")
    return MacAddr(b"\x33\x33" + group.packed[12:])


def interface_identifier(mac: MacAddr) -> bytes:
    """The modified EUI-64 identifier of a MAC: ff:fe in the middle, U/L bit flipped (RFC 4291 App. A)."""
    return bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def link_local_from_mac(mac: MacAddr) -> IPv6Address:
    return IPv6Address(b"\xfe\x80" + b"\0" * 6 + interface_identifier(mac))
