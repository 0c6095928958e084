"""The host side of Router Advertisements on uplink ports: the default router and prefix
lists (RFC 4861 §6.3.4), stateless address autoconfiguration (RFC 4862 §5.5) with stable
(RFC 7217) and temporary (RFC 8981) interface identifiers, router preferences and
more-specific routes (RFC 4191), and DNS servers and search lists (RFC 8106).

Sans-I/O. The caller validates an RA (RFC 4861 §6.1.2: hop limit 255, link-local source,
checksum), hands it to `router_advertisement` with `now`, and applies the actions it gets
back. An AddAddress is a new address: the caller adds it tentative, runs DAD, and reports a
duplicate with `dad_failed`. `poll(now)` at `next_deadline()` does what time does:
deprecation, removal, expiry of routers and routes, regeneration of temporary addresses.

Every table is bounded per device; what does not fit is counted in `counters` and ignored,
so a flood of RAs with random prefixes cannot grow them.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Iterator, Union

from ..wire.ipv6 import IPV6_MIN_MTU
from ..wire.ndp import PrefixInformation, RouterAdvertisement

INFINITY = 0xFFFFFFFF            # RFC 4861 §4.6.2: a lifetime of all one bits never ends
TWO_HOURS = 7200.0               # RFC 4862 §5.5.3 (e)
IDGEN_RETRIES = 3                # RFC 7217 §7
TEMP_IDGEN_RETRIES = 3           # RFC 8981 §3.8
TEMP_VALID_LIFETIME = 2 * 86400.0
TEMP_PREFERRED_LIFETIME = 86400.0
MAX_DESYNC_FACTOR = 0.4 * TEMP_PREFERRED_LIFETIME
# RFC 8981 §3.8: 2 + TEMP_IDGEN_RETRIES * DupAddrDetectTransmits (1) * RetransTimer (1 s).
REGEN_ADVANCE = 2.0 + TEMP_IDGEN_RETRIES * 1 * 1.0

DEFAULT_ROUTE = IPv6Network("::/0")
LINK_LOCAL = IPv6Network("fe80::/10")
MULTICAST = IPv6Network("ff00::/8")
ONLINK_METRIC = 256              # Linux's metric for prefix routes
# RFC 4191 §2.1 preferences (1 high, 0 medium, 3 low) around Linux's RA metric 1024, so the
# route table's lowest-metric rule prefers high over medium over low.
PREFERENCE_METRIC = {1: 1023, 0: 1024, 3: 1025}
PREFERENCE_NAMES = {1: "high", 0: "medium", 3: "low"}


# Actions the caller applies

@dataclass(frozen=True, slots=True)
class AddAddress:
    """A new address: add it tentative and run DAD (RFC 4862 §5.4). Not on-link by itself
    (RFC 5942): only AddRoute makes its prefix on-link."""
    device: str
    iface: IPv6Interface
    temporary: bool
    preferred_until: float       # math.inf: never
    valid_until: float


@dataclass(frozen=True, slots=True)
class UpdateAddress:
    """New lifetimes from an RA; preferred_until > now makes a deprecated address preferred
    again (RFC 4862 §5.5.3 (e) resets the preferred lifetime)."""
    device: str
    address: IPv6Address
    preferred_until: float
    valid_until: float


@dataclass(frozen=True, slots=True)
class Deprecate:
    """Preferred lifetime over: keep the address for existing traffic, not for new (§5.5.4)."""
    device: str
    address: IPv6Address


@dataclass(frozen=True, slots=True)
class RemoveAddress:
    device: str
    address: IPv6Address


@dataclass(frozen=True, slots=True)
class AddRoute:
    """gateway None: the prefix is on-link. A default router is prefix ::/0."""
    device: str
    prefix: IPv6Network
    gateway: IPv6Address | None
    metric: int


@dataclass(frozen=True, slots=True)
class RemoveRoute:
    device: str
    prefix: IPv6Network
    gateway: IPv6Address | None
    metric: int


@dataclass(frozen=True, slots=True)
class SetMtu:
    """The link's MTU from the RA (>= 1280); the caller ignores it above the link's maximum."""
    device: str
    mtu: int


@dataclass(frozen=True, slots=True)
class SetHopLimit:
    device: str
    hop_limit: int


@dataclass(frozen=True, slots=True)
class SetNeighborTiming:
    """BaseReachableTime and RetransTimer in ms; 0 leaves that value as it is (RFC 4861 §6.3.4)."""
    device: str
    reachable_ms: int
    retrans_ms: int


@dataclass(frozen=True, slots=True)
class DnsChanged:
    """The device's DNS servers or search list changed: read them with Slaac.dns(device)."""
    device: str


Action = Union[AddAddress, UpdateAddress, Deprecate, RemoveAddress, AddRoute, RemoveRoute,
               SetMtu, SetHopLimit, SetNeighborTiming, DnsChanged]


# Interface identifiers

def stable_interface_id(prefix: IPv6Network, device: str, dad_counter: int, secret_key: bytes) -> bytes:
    """RFC 7217 §5: F(Prefix, Net_Iface, Network_ID, DAD_Counter, secret_key) with SHA-256,
    its first 64 bits. Network_ID is not used; the device name is length-prefixed so that
    no two inputs concatenate alike."""
    name = device.encode()
    data = b"".join((prefix.network_address.packed[:8], len(name).to_bytes(2, "big"), name,
                     dad_counter.to_bytes(4, "big"), secret_key))
    return hashlib.sha256(data).digest()[:8]


def is_reserved_iid(iid: bytes) -> bool:
    """The reserved interface identifiers of RFC 5453 (and the IANA registry it set up)."""
    v = int.from_bytes(iid, "big")
    return (v == 0                                              # subnet-router anycast
            or 0x02005EFFFE000000 <= v <= 0x02005EFFFEFFFFFF    # IANA Ethernet block
            or 0xFDFFFFFFFFFFFF80 <= v <= 0xFDFFFFFFFFFFFFFF)   # subnet anycast (RFC 2526)


def _address(prefix: IPv6Network, iid: bytes) -> IPv6Address:
    return IPv6Address(prefix.network_address.packed[:8] + iid)


def _until(now: float, lifetime: int) -> float:
    return math.inf if lifetime == INFINITY else now + lifetime


def _two_hour_rule(valid_until: float, lifetime: int, now: float) -> float:
    """RFC 4862 §5.5.3 (e): the new end of an autoconfigured prefix's valid lifetime."""
    received = _until(now, lifetime)
    if lifetime > TWO_HOURS or received > valid_until:
        return received                      # (e.1)
    if valid_until - now <= TWO_HOURS:
        return valid_until                   # (e.2): an unauthenticated RA may not shorten it
    return now + TWO_HOURS                   # (e.3)


# State

@dataclass
class _Address:
    address: IPv6Address
    temporary: bool
    created: float
    preferred_until: float
    valid_until: float
    deprecated: bool = False
    desync: float = 0.0          # RFC 8981 §3.8 DESYNC_FACTOR (temporary only)
    superseded: bool = False     # temporary only: its successor's turn has come


@dataclass
class _Prefix:
    network: IPv6Network
    onlink_until: float | None = None    # None: not on-link
    valid_until: float | None = None     # autoconfiguration's lifetimes; None: not autoconfigured
    preferred_until: float = 0.0
    dad_counter: int = 0                 # RFC 7217 §5 DAD_Counter
    temp_failures: int = 0               # consecutive DAD failures of temporaries
    stable: _Address | None = None
    temporaries: list[_Address] = field(default_factory=list)   # oldest first

    def addresses(self) -> list[_Address]:
        return ([self.stable] if self.stable else []) + self.temporaries

    def current_temporary(self) -> _Address | None:
        t = self.temporaries[-1] if self.temporaries else None
        return None if t is None or t.superseded else t


@dataclass
class _Route:
    """A default router (prefix ::/0) or a more-specific route (RFC 4191) through a router."""
    prefix: IPv6Network
    router: IPv6Address
    preference: int
    until: float


@dataclass
class _Device:
    prefixes: dict[IPv6Network, _Prefix] = field(default_factory=dict)
    routes: dict[tuple[IPv6Network, IPv6Address], _Route] = field(default_factory=dict)
    servers: dict[IPv6Address, float] = field(default_factory=dict)   # RDNSS -> until
    domains: dict[str, float] = field(default_factory=dict)           # DNSSL -> until
    temporaries_failed: bool = False     # RFC 8981 §3.4: no more temporaries here


class Slaac:
    """RA reception and address autoconfiguration for every uplink device."""

    def __init__(self, secret_key: bytes, rng: random.Random, *, temporary: bool = True,
                 max_prefixes_per_device: int = 16, max_routers_per_device: int = 8,
                 max_routes_per_device: int = 16, max_dns_per_device: int = 8,
                 max_temporaries_per_prefix: int = 5, counters: Counter | None = None) -> None:
        if len(secret_key) < 16:
            # RFC 7217 §5: the secret key is at least 128 bits.
            raise ValueError(f"slaac: secret key of {len(secret_key)} bytes, at least 16 needed")
        self._key = secret_key
        self._rng = rng
        self.temporary = temporary
        self.max_prefixes = max_prefixes_per_device
        self.max_routers = max_routers_per_device
        self.max_routes = max_routes_per_device
        self.max_dns = max_dns_per_device
        # RFC 8981 §3.8: with its defaults at most three temporaries coexist per prefix;
        # only RAs that keep cutting the preferred lifetime short could make more.
        self.max_temporaries = max_temporaries_per_prefix
        self.counters: Counter = Counter() if counters is None else counters
        self._devices: dict[str, _Device] = {}
        self._deadline: float | None = None
        self._deadline_stale = False

    # -- input -------------------------------------------------------------------------------
    def router_advertisement(self, device: str, src: IPv6Address, ra: RouterAdvertisement,
                             now: float) -> list[Action]:
        """Process a valid RA from the router whose link-local address is src."""
        self.counters["ra_received"] += 1
        dev = self._devices.setdefault(device, _Device())
        out: list[Action] = []
        self._learn_route(device, dev, DEFAULT_ROUTE, src, ra.preference, ra.router_lifetime, now, out)
        self._parameters(device, ra, out)
        for pio in ra.prefixes:
            self._prefix(device, dev, pio, now, out)
        # After the header: RFC 4191 §3.1, a ::/0 route's lifetime and preference override it.
        for rio in ra.routes:
            prefix = IPv6Network((rio.prefix, rio.prefix_length), strict=False)
            self._learn_route(device, dev, prefix, src, rio.preference, rio.lifetime, now, out)
        for rdnss in ra.dns_servers:
            for server in rdnss.servers:
                self._learn_dns(device, dev.servers, server, rdnss.lifetime, now, out)
        for dnssl in ra.search_lists:
            for domain in dnssl.domains:
                self._learn_dns(device, dev.domains, domain, dnssl.lifetime, now, out)
        self._expire(device, dev, now, out)     # lifetimes of 0 take effect now
        self._deadline_stale = True
        return out

    def dad_failed(self, device: str, address: IPv6Address, now: float) -> list[Action]:
        """DAD found `address` (one of ours) in use: remove it and generate another."""
        dev = self._devices.get(device)
        p = dev.prefixes.get(IPv6Network((address, 64), strict=False)) if dev else None
        a = next((a for a in p.addresses() if a.address == address), None) if p else None
        if dev is None or p is None or a is None:
            self.counters["dad_failed_unknown"] += 1
            return []
        out: list[Action] = [RemoveAddress(device, address)]
        if a is p.stable:
            p.stable = None
            # RFC 7217 §6: increment DAD_Counter and try again, up to IDGEN_RETRIES times.
            p.dad_counter += 1
            self._new_stable(device, p, now, out)
        else:
            was_current = a is p.current_temporary()
            p.temporaries.remove(a)
            p.temp_failures += 1
            if p.temp_failures > TEMP_IDGEN_RETRIES:
                # RFC 8981 §3.4: after TEMP_IDGEN_RETRIES, no more temporaries on the interface.
                dev.temporaries_failed = True
                self.counters["temporary_gave_up"] += 1
            elif was_current:
                self._new_temporary(device, dev, p, now, out)
        self._expire(device, dev, now, out)
        self._deadline_stale = True
        return out

    def remove_device(self, device: str) -> list[Action]:
        """Forget a device: the removals of everything learned on it, for a caller that keeps it."""
        dev = self._devices.pop(device, None)
        out: list[Action] = []
        if dev is None:
            return out
        for p in dev.prefixes.values():
            out += [RemoveAddress(device, a.address) for a in p.addresses()]
            if p.onlink_until is not None:
                out.append(RemoveRoute(device, p.network, None, ONLINK_METRIC))
        out += [RemoveRoute(device, r.prefix, r.router, PREFERENCE_METRIC[r.preference])
                for r in dev.routes.values()]
        if dev.servers or dev.domains:
            out.append(DnsChanged(device))
        self._deadline_stale = True
        return out

    # -- time --------------------------------------------------------------------------------
    def poll(self, now: float) -> list[Action]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        out: list[Action] = []
        for device, dev in self._devices.items():
            self._expire(device, dev, now, out)
        self._deadline_stale = True
        return out

    def next_deadline(self) -> float | None:
        if self._deadline_stale:
            soonest = min((t for dev in self._devices.values() for t in _deadlines(dev)),
                          default=math.inf)
            self._deadline = None if soonest == math.inf else soonest
            self._deadline_stale = False
        return self._deadline

    # -- views -------------------------------------------------------------------------------
    def dns(self, device: str) -> tuple[list[IPv6Address], list[str]]:
        """The device's DNS servers and search domains (RFC 8106), as of the last call."""
        dev = self._devices.get(device)
        return (list(dev.servers), list(dev.domains)) if dev else ([], [])

    def routers(self, device: str) -> list[dict]:
        """The default router list, for display; `until` is on the caller's clock."""
        return [{"router": str(r.router), "preference": PREFERENCE_NAMES[r.preference],
                 "until": r.until} for r in self._routes_of(device) if r.prefix.prefixlen == 0]

    def routes(self, device: str) -> list[dict]:
        """The more-specific routes of RFC 4191, for display."""
        return [{"prefix": str(r.prefix), "router": str(r.router),
                 "preference": PREFERENCE_NAMES[r.preference], "until": r.until}
                for r in self._routes_of(device) if r.prefix.prefixlen]

    def prefixes(self, device: str) -> list[dict]:
        """The prefix list and the addresses formed from each prefix, for display."""
        dev = self._devices.get(device)
        return [] if dev is None else [
            {"prefix": str(p.network), "on_link_until": p.onlink_until,
             "valid_until": p.valid_until,
             "preferred_until": None if p.valid_until is None else p.preferred_until,
             "addresses": [{"address": str(a.address), "temporary": a.temporary,
                            "deprecated": a.deprecated, "preferred_until": a.preferred_until,
                            "valid_until": a.valid_until} for a in p.addresses()]}
            for p in dev.prefixes.values()]

    def _routes_of(self, device: str) -> list[_Route]:
        dev = self._devices.get(device)
        return list(dev.routes.values()) if dev else []

    # -- RA options --------------------------------------------------------------------------
    def _parameters(self, device: str, ra: RouterAdvertisement, out: list[Action]) -> None:
        # RFC 4861 §6.3.4: zero means unspecified; a host SHOULD take every specified value.
        if ra.cur_hop_limit:
            out.append(SetHopLimit(device, ra.cur_hop_limit))
        if ra.reachable_time or ra.retrans_timer:
            out.append(SetNeighborTiming(device, ra.reachable_time, ra.retrans_timer))
        mtu = ra.mtu
        if mtu is not None:
            # RFC 4861 §6.3.4: only an MTU of at least the IPv6 minimum is taken.
            if mtu >= IPV6_MIN_MTU:
                out.append(SetMtu(device, mtu))
            else:
                self.counters["mtu_ignored"] += 1

    def _learn_route(self, device: str, dev: _Device, prefix: IPv6Network, router: IPv6Address,
                     preference: int, lifetime: int, now: float, out: list[Action]) -> None:
        """A default router (RFC 4861 §6.3.4) or a route (RFC 4191 §3.1) with its lifetime."""
        r = dev.routes.get((prefix, router))
        if r is None:
            if lifetime == 0:
                return
            default = prefix.prefixlen == 0
            limit = self.max_routers if default else self.max_routes
            if sum((k[0].prefixlen == 0) == default for k in dev.routes) >= limit:
                self.counters["router_table_full" if default else "route_table_full"] += 1
                return
            r = dev.routes[(prefix, router)] = _Route(prefix, router, preference, now)
            out.append(AddRoute(device, prefix, router, PREFERENCE_METRIC[preference]))
        elif lifetime and r.preference != preference:
            # RFC 4191 §2.2: the preference of a zero lifetime is ignored.
            out.append(RemoveRoute(device, prefix, router, PREFERENCE_METRIC[r.preference]))
            r.preference = preference
            out.append(AddRoute(device, prefix, router, PREFERENCE_METRIC[preference]))
        # RFC 4861 §6.3.4, RFC 4191 §3.1: reset the timer; a zero lifetime times it out now.
        r.until = _until(now, lifetime)

    def _prefix(self, device: str, dev: _Device, pio: PrefixInformation, now: float,
                out: list[Action]) -> None:
        # RFC 4861 §4.6.2: the bits after the prefix length are ignored.
        network = IPv6Network((pio.prefix, pio.prefix_length), strict=False)
        if network.overlaps(LINK_LOCAL) or network.overlaps(MULTICAST):
            # RFC 4861 §6.3.4, RFC 4862 §5.5.3 (b): the link-local prefix is ignored.
            self.counters["prefix_ignored_scope"] += 1
            return
        p = dev.prefixes.get(network)
        if p is None:
            # A zero valid lifetime creates nothing (RFC 4861 §6.3.4, RFC 4862 §5.5.3 (d)).
            if pio.valid_lifetime == 0 or not (pio.on_link or pio.autonomous):
                return
            if len(dev.prefixes) >= self.max_prefixes:
                self.counters["prefix_table_full"] += 1
                return
            p = dev.prefixes[network] = _Prefix(network)
        if pio.on_link:
            if p.onlink_until is None and pio.valid_lifetime:
                out.append(AddRoute(device, network, None, ONLINK_METRIC))
            if p.onlink_until is not None or pio.valid_lifetime:
                # RFC 4861 §6.3.4: reset the invalidation timer; zero times the prefix out now.
                p.onlink_until = _until(now, pio.valid_lifetime)
        if pio.autonomous:
            self._autoconfigure(device, dev, p, pio, now, out)

    def _autoconfigure(self, device: str, dev: _Device, p: _Prefix, pio: PrefixInformation,
                       now: float, out: list[Action]) -> None:
        """RFC 4862 §5.5.3 for a prefix with the A flag."""
        if p.network.prefixlen != 64:
            # RFC 4862 §5.5.3 (d): prefix and interface identifier (64 bits) must make 128.
            self.counters["prefix_ignored_length"] += 1
            return
        if pio.preferred_lifetime > pio.valid_lifetime:
            # RFC 4862 §5.5.3 (c)
            self.counters["prefix_ignored_lifetimes"] += 1
            return
        if p.valid_until is None:
            if pio.valid_lifetime == 0:
                return
            p.valid_until = _until(now, pio.valid_lifetime)
            p.preferred_until = _until(now, pio.preferred_lifetime)
            self._new_stable(device, p, now, out)
        else:
            p.valid_until = _two_hour_rule(p.valid_until, pio.valid_lifetime, now)
            p.preferred_until = _until(now, pio.preferred_lifetime)
            self._refresh(device, p, now, out)
        # RFC 8981 §3.4 (3): a prefix without a temporary address gets one.
        if self.temporary and not dev.temporaries_failed and p.current_temporary() is None:
            self._new_temporary(device, dev, p, now, out)

    def _refresh(self, device: str, p: _Prefix, now: float, out: list[Action]) -> None:
        """Give the prefix's new lifetimes to its addresses."""
        for a in p.addresses():
            valid, preferred = p.valid_until, p.preferred_until
            if a.temporary:
                # RFC 8981 §3.4: a temporary is never valid longer than TEMP_VALID_LIFETIME,
                # nor preferred longer than TEMP_PREFERRED_LIFETIME - DESYNC_FACTOR, from its
                # creation; once superseded, its preferred lifetime is not extended.
                valid = min(valid, a.created + TEMP_VALID_LIFETIME)
                preferred = a.preferred_until if a.superseded else min(
                    preferred, a.created + TEMP_PREFERRED_LIFETIME - a.desync)
            preferred = min(preferred, valid)
            if (preferred, valid) != (a.preferred_until, a.valid_until):
                a.preferred_until, a.valid_until = preferred, valid
                if preferred > now:
                    a.deprecated = False
                out.append(UpdateAddress(device, a.address, preferred, valid))

    def _new_stable(self, device: str, p: _Prefix, now: float, out: list[Action]) -> None:
        """RFC 7217 §5: the first acceptable identifier from DAD_Counter on."""
        taken = {a.address for a in p.temporaries}
        while p.dad_counter <= IDGEN_RETRIES:
            iid = stable_interface_id(p.network, device, p.dad_counter, self._key)
            address = _address(p.network, iid)
            if not is_reserved_iid(iid) and address not in taken:
                p.stable = _Address(address, False, now, p.preferred_until, p.valid_until)
                out.append(AddAddress(device, IPv6Interface((address, 64)), False,
                                      p.preferred_until, p.valid_until))
                return
            # RFC 7217 §5: an unacceptable identifier is handled as a DAD conflict.
            p.dad_counter += 1
        self.counters["stable_gave_up"] += 1

    def _new_temporary(self, device: str, dev: _Device, p: _Prefix, now: float,
                       out: list[Action]) -> None:
        """RFC 8981 §3.4: a random identifier, lifetimes capped from now."""
        desync = self._rng.uniform(0, MAX_DESYNC_FACTOR)
        preferred = min(p.preferred_until, now + TEMP_PREFERRED_LIFETIME - desync)
        if preferred - now <= REGEN_ADVANCE:
            return       # RFC 8981 §3.4 (5): too short to be worth a temporary address
        if len(p.temporaries) >= self.max_temporaries:
            self.counters["temporary_table_full"] += 1
            return
        taken = {a.address for a in p.addresses()}
        while True:
            # RFC 8981 §3.3.1: not reserved (RFC 5453) and not one the interface already has.
            iid = self._rng.getrandbits(64).to_bytes(8, "big")
            address = _address(p.network, iid)
            if not is_reserved_iid(iid) and address not in taken:
                break
        valid = min(p.valid_until, now + TEMP_VALID_LIFETIME)
        p.temporaries.append(_Address(address, True, now, preferred, valid, desync=desync))
        out.append(AddAddress(device, IPv6Interface((address, 64)), True, preferred, valid))

    def _learn_dns(self, device: str, table: dict, key, lifetime: int, now: float,
                   out: list[Action]) -> None:
        """RFC 8106 §5.3.1: a known entry's lifetime is reset (zero deletes it); a new one
        replaces, in a full list, the entry that expires first."""
        if key in table:
            table[key] = _until(now, lifetime)
            return
        if lifetime == 0:
            return
        if len(table) >= self.max_dns:
            del table[min(table, key=table.__getitem__)]
            self.counters["dns_replaced"] += 1
        table[key] = _until(now, lifetime)
        _dns_changed(device, out)

    # -- expiry ------------------------------------------------------------------------------
    def _expire(self, device: str, dev: _Device, now: float, out: list[Action]) -> None:
        for key, r in list(dev.routes.items()):
            if r.until <= now:
                del dev.routes[key]
                out.append(RemoveRoute(device, r.prefix, r.router, PREFERENCE_METRIC[r.preference]))
        for p in list(dev.prefixes.values()):
            self._expire_prefix(device, dev, p, now, out)
        for table in (dev.servers, dev.domains):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
                _dns_changed(device, out)

    def _expire_prefix(self, device: str, dev: _Device, p: _Prefix, now: float,
                       out: list[Action]) -> None:
        if p.onlink_until is not None and p.onlink_until <= now:
            p.onlink_until = None
            out.append(RemoveRoute(device, p.network, None, ONLINK_METRIC))
        for a in p.addresses():
            if a.valid_until <= now:
                if a is p.stable:
                    p.stable = None
                else:
                    p.temporaries.remove(a)
                out.append(RemoveAddress(device, a.address))
            elif not a.deprecated and a.preferred_until <= now:
                a.deprecated = True
                out.append(Deprecate(device, a.address))
        current = p.current_temporary()
        if current is not None and now >= current.preferred_until - REGEN_ADVANCE:
            # RFC 8981 §3.6: the successor comes REGEN_ADVANCE before deprecation; the one
            # before it lived, so the count of consecutive DAD failures starts again.
            current.superseded = True
            p.temp_failures = 0
            if self.temporary and not dev.temporaries_failed:
                self._new_temporary(device, dev, p, now, out)
        if p.valid_until is not None and p.valid_until <= now:
            p.valid_until = None
        if p.onlink_until is None and p.valid_until is None:
            del dev.prefixes[p.network]

    # -- hand-over ---------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        """Plain msgpack types; times as seconds from now (inf: never), so the successor's
        clock need not be this one's."""
        return {"devices": {name: {
            "prefixes": [_prefix_row(p, now) for p in dev.prefixes.values()],
            "routes": [{"prefix": str(r.prefix), "router": str(r.router),
                        "preference": r.preference, "left": r.until - now}
                       for r in dev.routes.values()],
            "servers": [[str(s), until - now] for s, until in dev.servers.items()],
            "domains": [[d, until - now] for d, until in dev.domains.items()],
            "temporaries_failed": dev.temporaries_failed,
        } for name, dev in self._devices.items()}}

    def restore(self, snap: dict, now: float) -> None:
        """Replace the state with a snapshot's (as far as this instance's bounds allow). The
        caller's addresses and routes come from its own snapshot; no actions are emitted."""
        self._devices = {}
        for name, d in snap["devices"].items():
            dev = self._devices[str(name)] = _Device(temporaries_failed=bool(d["temporaries_failed"]))
            for row in d["prefixes"][:self.max_prefixes]:
                p = _prefix_from(row, now)
                dev.prefixes[p.network] = p
            defaults = [r for r in d["routes"] if IPv6Network(r["prefix"]).prefixlen == 0]
            others = [r for r in d["routes"] if IPv6Network(r["prefix"]).prefixlen]
            for row in defaults[:self.max_routers] + others[:self.max_routes]:
                r = _Route(IPv6Network(row["prefix"]), IPv6Address(row["router"]),
                           _preference(row["preference"]), now + float(row["left"]))
                dev.routes[(r.prefix, r.router)] = r
            dev.servers = {IPv6Address(s): now + float(left) for s, left in d["servers"][:self.max_dns]}
            dev.domains = {str(n): now + float(left) for n, left in d["domains"][:self.max_dns]}
        self._deadline_stale = True


def _dns_changed(device: str, out: list[Action]) -> None:
    if DnsChanged(device) not in out:
        out.append(DnsChanged(device))


def _deadlines(dev: _Device) -> Iterator[float]:
    yield from (r.until for r in dev.routes.values())
    yield from dev.servers.values()
    yield from dev.domains.values()
    for p in dev.prefixes.values():
        if p.onlink_until is not None:
            yield p.onlink_until
        if p.valid_until is not None:
            yield p.valid_until
        for a in p.addresses():
            yield a.valid_until
            if not a.deprecated:
                yield a.preferred_until
        current = p.current_temporary()
        if current is not None:
            yield current.preferred_until - REGEN_ADVANCE


def _preference(value) -> int:
    if int(value) not in PREFERENCE_METRIC:
        raise ValueError(f"slaac: bad router preference {value!r}")
    return int(value)


def _prefix_row(p: _Prefix, now: float) -> dict:
    row = {"prefix": str(p.network), "dad_counter": p.dad_counter,
           "temp_failures": p.temp_failures,
           "addresses": [{"address": str(a.address), "temporary": a.temporary,
                          "age": now - a.created, "preferred": a.preferred_until - now,
                          "valid": a.valid_until - now, "deprecated": a.deprecated,
                          "desync": a.desync, "superseded": a.superseded}
                         for a in p.addresses()]}
    if p.onlink_until is not None:
        row["on_link"] = p.onlink_until - now
    if p.valid_until is not None:
        row["valid"] = p.valid_until - now
        row["preferred"] = p.preferred_until - now
    return row


def _prefix_from(row: dict, now: float) -> _Prefix:
    p = _Prefix(IPv6Network(row["prefix"]), dad_counter=int(row["dad_counter"]),
                temp_failures=int(row["temp_failures"]))
    if "on_link" in row:
        p.onlink_until = now + float(row["on_link"])
    if "valid" in row:
        p.valid_until = now + float(row["valid"])
        p.preferred_until = now + float(row["preferred"])
    for a in row["addresses"]:
        address = _Address(IPv6Address(a["address"]), bool(a["temporary"]), now - float(a["age"]),
                           now + float(a["preferred"]), now + float(a["valid"]),
                           bool(a["deprecated"]), float(a["desync"]), bool(a["superseded"]))
        if address.temporary:
            p.temporaries.append(address)
        else:
            p.stable = address
    return p
