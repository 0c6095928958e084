"""Router Advertisements on guest-facing ports: the router side of RFC 4861 §6.2.

Each advertising device has one timer, the time of its next multicast RA. After
(re)configuration it fires at once, then MAX_INITIAL_RTR_ADVERTISEMENTS RAs go out at most
MAX_INITIAL_RTR_ADVERT_INTERVAL apart, then one every uniform [MinRtrAdvInterval,
MaxRtrAdvInterval] (§6.2.4). A Router Solicitation brings the timer forward to a random
delay of at most MAX_RA_DELAY_TIME, never closer than MIN_DELAY_BETWEEN_RAS to the previous
multicast RA (§6.2.6); answers are always multicast, to ff02::1.

Sans-I/O: `poll(now)` hands out (device, destination, message) and the caller builds the
packet from the device's link-local address with hop limit 255 (§6.1.2).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from ipaddress import IPv6Address, IPv6Network

from ..wire import MacAddr
from ..wire.ipv6 import IPV6_HEADER_LEN, IPV6_MIN_MTU
from ..wire.ndp import (ALL_NODES, DnsSearchList, MtuOption, PrefixInformation,
                        RecursiveDnsServers, RouterAdvertisement, SourceLinkLayerAddress,
                        build_options)

# RFC 4861 §10: router constants.
MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MIN_DELAY_BETWEEN_RAS = 3.0
MAX_RA_DELAY_TIME = 0.5

U32_MAX = 0xFFFFFFFF             # a prefix or DNS lifetime of all ones is infinity
LINK_LOCAL = IPv6Network("fe80::/10")
MULTICAST = IPv6Network("ff00::/8")
RA_FIXED_LEN = 16                # ICMPv6 header, hop limit, flags, lifetime, two timers


@dataclass(frozen=True)
class RaPrefix:
    """One Prefix Information option (RFC 4861 §4.6.2)."""
    network: IPv6Network
    on_link: bool = True
    autonomous: bool = True
    valid_lifetime: int = 86400
    preferred_lifetime: int = 14400


@dataclass(frozen=True)
class RaConfig:
    """What a device advertises (the AdvXxx variables of RFC 4861 §6.2.1). Sequences may be
    given as lists; a bare IPv6Network among the prefixes is RaPrefix(network)."""
    prefixes: tuple[RaPrefix, ...] = ()
    mtu: int | None = None
    rdnss: tuple[IPv6Address, ...] = ()
    dnssl: tuple[str, ...] = ()
    dns_lifetime: int | None = None      # None: 3 x max_interval, RFC 8106 §5.1's default
    managed: bool = False                # M: addresses from DHCPv6
    other: bool = False                  # O: other configuration from DHCPv6
    router_lifetime: int = 1800          # 0: not a default router
    min_interval: float = 200.0
    max_interval: float = 600.0
    cur_hop_limit: int = 64
    reachable_time: int = 0              # ms; 0: unspecified
    retrans_timer: int = 0               # ms; 0: unspecified

    def __post_init__(self) -> None:
        prefixes = tuple(p if isinstance(p, RaPrefix) else RaPrefix(p) for p in self.prefixes)
        object.__setattr__(self, "prefixes", prefixes)
        object.__setattr__(self, "rdnss", tuple(self.rdnss))
        object.__setattr__(self, "dnssl", tuple(self.dnssl))

    def validate(self) -> None:
        """ValueError naming the first setting that RFC 4861 §6.2.1 (and the RFCs it
        points to) does not allow."""
        # RFC 4861 §6.2.1 with RFC 8319 §4's larger maximum.
        if not 4 <= self.max_interval <= 65535:
            raise ValueError(f"radv: max_interval {self.max_interval} is outside 4-65535 s")
        if not 3 <= self.min_interval <= 0.75 * self.max_interval:
            raise ValueError(f"radv: min_interval {self.min_interval} is outside 3 s to "
                             f"0.75 x max_interval ({0.75 * self.max_interval:g} s)")
        if self.router_lifetime and not self.max_interval <= self.router_lifetime <= 65535:
            raise ValueError(f"radv: router_lifetime {self.router_lifetime} must be 0 or "
                             f"between max_interval ({self.max_interval:g}) and 65535 s")
        _check_range("cur_hop_limit", self.cur_hop_limit, 0, 255)
        _check_range("reachable_time", self.reachable_time, 0, 3_600_000)
        _check_range("retrans_timer", self.retrans_timer, 0, U32_MAX)
        if self.mtu is not None:
            _check_range("mtu", self.mtu, IPV6_MIN_MTU, U32_MAX)
        seen = set()
        for p in self.prefixes:
            net = p.network
            if not isinstance(net, IPv6Network) or net.overlaps(LINK_LOCAL) or net.overlaps(MULTICAST):
                raise ValueError(f"radv: prefix {net} is not a global or unique-local IPv6 prefix")
            if p.autonomous and net.prefixlen != 64:
                # RFC 4862 §5.5.3 (d): hosts form addresses only from /64 prefixes.
                raise ValueError(f"radv: autonomous prefix {net} is not a /64")
            if net in seen:
                raise ValueError(f"radv: prefix {net} is listed twice")
            seen.add(net)
            _check_range(f"valid lifetime of {net}", p.valid_lifetime, 0, U32_MAX)
            if not 0 <= p.preferred_lifetime <= p.valid_lifetime:
                raise ValueError(f"radv: preferred lifetime of {net} ({p.preferred_lifetime}) "
                                 f"exceeds its valid lifetime ({p.valid_lifetime})")
        for server in self.rdnss:
            if not isinstance(server, IPv6Address) or server.is_multicast or server.is_unspecified:
                raise ValueError(f"radv: DNS server {server} is not a unicast IPv6 address")
        if self.dns_lifetime is not None:
            _check_range("dns_lifetime", self.dns_lifetime, 0, U32_MAX)
        try:
            options = build_options(self.message(MacAddr(bytes(6))).options)
        except ValueError as e:     # a search domain that DNS cannot encode
            raise ValueError(f"radv: {e}") from None
        size = RA_FIXED_LEN + len(options)
        if IPV6_HEADER_LEN + size > IPV6_MIN_MTU:
            # One RA carries everything, so it must fit any IPv6 link.
            raise ValueError(f"radv: the advertisement would be {size} bytes, more than the "
                             f"{IPV6_MIN_MTU - IPV6_HEADER_LEN} that fit in the minimum MTU")

    def message(self, mac: MacAddr, router_lifetime: int | None = None) -> RouterAdvertisement:
        """The RA for a device with this MAC (RFC 4861 §4.2, §6.2.3)."""
        dns_lifetime = (3 * int(self.max_interval) if self.dns_lifetime is None
                        else self.dns_lifetime)
        options: list = [SourceLinkLayerAddress(MacAddr(mac))]
        options += [PrefixInformation(p.network.prefixlen, p.on_link, p.autonomous,
                                      p.valid_lifetime, p.preferred_lifetime,
                                      p.network.network_address) for p in self.prefixes]
        if self.mtu is not None:
            options.append(MtuOption(self.mtu))
        if self.rdnss:
            options.append(RecursiveDnsServers(dns_lifetime, self.rdnss))
        if self.dnssl:
            options.append(DnsSearchList(dns_lifetime, self.dnssl))
        lifetime = self.router_lifetime if router_lifetime is None else router_lifetime
        return RouterAdvertisement(self.cur_hop_limit, self.managed, self.other, lifetime,
                                   self.reachable_time, self.retrans_timer, tuple(options))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefixes"] = [dict(p, network=str(p["network"])) for p in d["prefixes"]]
        d["rdnss"] = [str(s) for s in self.rdnss]
        d["dnssl"] = list(self.dnssl)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RaConfig":
        values = dict(d)
        values["prefixes"] = [RaPrefix(**dict(p, network=IPv6Network(p["network"])))
                              for p in d["prefixes"]]
        values["rdnss"] = [IPv6Address(s) for s in d["rdnss"]]
        return cls(**values)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"radv: {name} {value} is outside {low}-{high}")


@dataclass
class _Advertising:
    mac: MacAddr
    cfg: RaConfig
    due: float                           # the next multicast RA
    sent: int = 0                        # multicast RAs since (re)configuration
    last_sent: float | None = None


class RouterAdvertiser:
    """The RA schedule and messages of every advertising device."""

    def __init__(self, rng: random.Random, counters: Counter | None = None) -> None:
        self._rng = rng
        self.counters: Counter = Counter() if counters is None else counters
        self._devices: dict[str, _Advertising] = {}

    def configure(self, device: str, mac: bytes, cfg: RaConfig, now: float) -> None:
        """Start advertising on device, or change what it advertises; ValueError from
        cfg.validate() leaves the device as it was."""
        cfg.validate()
        a = self._devices.get(device)
        if a is None:
            self._devices[device] = _Advertising(MacAddr(mac), cfg, now)
        elif (a.mac, a.cfg) != (mac, cfg):
            # RFC 4861 §6.2.4: changed information restarts the initial burst (within the
            # rate limit of multicast RAs).
            a.mac, a.cfg, a.sent = MacAddr(mac), cfg, 0
            a.due = now if a.last_sent is None else max(now, a.last_sent + MIN_DELAY_BETWEEN_RAS)

    def config(self, device: str) -> RaConfig | None:
        a = self._devices.get(device)
        return a.cfg if a is not None else None

    def unconfigure(self, device: str, now: float) -> list[tuple[str, IPv6Address, RouterAdvertisement]]:
        """Stop advertising: the final RA, router lifetime 0, to send now (RFC 4861 §6.2.5)."""
        a = self._devices.pop(device, None)
        if a is None:
            return []
        self.counters["ra_sent"] += 1
        return [(device, ALL_NODES, a.cfg.message(a.mac, router_lifetime=0))]

    def solicitation(self, device: str, src: IPv6Address, now: float) -> None:
        """A valid Router Solicitation arrived on device (from src; the answer is multicast)."""
        a = self._devices.get(device)
        if a is None:
            self.counters["rs_not_advertising"] += 1
            return
        self.counters["rs_received"] += 1
        # RFC 4861 §6.2.6: a random delay of at most MAX_RA_DELAY_TIME, and no sooner than
        # MIN_DELAY_BETWEEN_RAS after the previous multicast RA.
        delay = self._rng.uniform(0, MAX_RA_DELAY_TIME)
        at = now + delay
        if a.last_sent is not None and now - a.last_sent < MIN_DELAY_BETWEEN_RAS:
            at = a.last_sent + MIN_DELAY_BETWEEN_RAS + delay
        # An RA already due sooner answers this solicitation too (§6.2.6).
        a.due = min(a.due, at)

    def poll(self, now: float) -> list[tuple[str, IPv6Address, RouterAdvertisement]]:
        out = []
        for device, a in self._devices.items():
            if a.due > now:
                continue
            out.append((device, ALL_NODES, a.cfg.message(a.mac)))
            self.counters["ra_sent"] += 1
            a.sent += 1
            a.last_sent = now
            interval = self._rng.uniform(a.cfg.min_interval, a.cfg.max_interval)
            if a.sent < MAX_INITIAL_RTR_ADVERTISEMENTS:
                # RFC 4861 §6.2.4: the first advertisements go out at most 16 s apart.
                interval = min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL)
            a.due = now + interval
        return out

    def next_deadline(self) -> float | None:
        return min((a.due for a in self._devices.values()), default=None)

    def advertisement(self, device: str) -> RouterAdvertisement:
        """The RA the device sends now; KeyError if it does not advertise."""
        a = self._devices[device]
        return a.cfg.message(a.mac)

    def snapshot(self, now: float) -> dict:
        """Plain msgpack types; times relative to now."""
        return {"devices": {name: {"mac": a.mac.hex(), "config": a.cfg.to_dict(),
                                   "due_in": a.due - now, "sent": a.sent,
                                   **({} if a.last_sent is None else {"sent_ago": now - a.last_sent})}
                            for name, a in self._devices.items()}}

    def restore(self, snap: dict, now: float) -> None:
        self._devices = {}
        for name, d in snap["devices"].items():
            cfg = RaConfig.from_dict(d["config"])
            cfg.validate()
            last = now - float(d["sent_ago"]) if "sent_ago" in d else None
            self._devices[str(name)] = _Advertising(MacAddr(bytes.fromhex(d["mac"])), cfg,
                                                    now + float(d["due_in"]), int(d["sent"]), last)
