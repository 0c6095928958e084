"""Router discovery on each Ethernet device: a host's side (Router Solicitations on link up,
SLAAC from Router Advertisements; slaac.py decides) or a router's (our advertisements;
radv.py schedules), never both on one device.

A device is a router on its link when it has an advertising configuration (`configure`):
guest-facing ports, where qnet is the guests' router. Every other device is a host toward
its link (Linux's accept_ra=2: it takes RAs even though qnet forwards), which is what an
uplink needs. This module applies slaac.py's actions to the IPv6 layer's addresses and
routes through a narrow context, and sends RS and RA frames itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface
from typing import Callable

from ..wire import ETHERTYPE_IPV6, build_ethernet, build_ipv6
from ..wire.ipv6 import NEXT_HEADER_ICMPV6
from ..wire.ndp import (ALL_NODES, ALL_ROUTERS, RouterAdvertisement, RouterSolicitation,
                        SourceLinkLayerAddress, multicast_mac)
from .device import ETHERNET, Device
from .ipv6 import DEPRECATED, LINK_LOCAL, PREFERRED, TENTATIVE, Ipv6Addresses
from .links import Links
from .radv import RaConfig, RouterAdvertiser
from .route import RoutingTable, Route
from .slaac import (AddAddress, AddRoute, Deprecate, DnsChanged, RemoveAddress, RemoveRoute,
                    SetHopLimit, SetMtu, SetNeighborTiming, Slaac, UpdateAddress)
from .timers import Deadlines

ND_HOP_LIMIT = 255
# RFC 4861 §10 host constants.
MAX_RTR_SOLICITATION_DELAY = 1.0
RTR_SOLICITATION_INTERVAL = 4.0
MAX_RTR_SOLICITATIONS = 3
RA_ROUTE = "ra"         # the kind of routes learned from advertisements


@dataclass(frozen=True)
class RouterDiscoveryContext:
    """Everything outside itself that router discovery may touch."""
    links: Links
    addresses: Ipv6Addresses
    # A SLAAC address, tentative, with DAD started; no connected route (RFC 5942).
    add_address: Callable[[Device, IPv6Interface, float], None]
    remove_address: Callable[[Device, IPv6Interface], None]
    set_state: Callable[[str, IPv6Address, str], None]
    routes: RoutingTable
    # Per-device IPv6 values the RA sets: link MTU and hop limit (Ipv6Layer's dicts).
    link_mtu: dict
    hop_limit: dict


class RouterDiscovery:
    def __init__(self, counters, slaac_counters, radv_counters, key: bytes,
                 rng: random.Random, ctx: RouterDiscoveryContext,
                 solicitations: int = MAX_RTR_SOLICITATIONS) -> None:
        self.c = counters
        self.solicitations = solicitations
        self.rng = rng
        self._devs = ctx.links.devices
        self._enqueue_tx = ctx.links.enqueue_tx
        self._ctx = ctx
        self._key, self._slaac_counters = key, slaac_counters
        self.slaac = Slaac(key, rng, counters=slaac_counters)
        self._dad_failures: list[tuple[str, IPv6Address]] = []
        self.radv = RouterAdvertiser(rng, counters=radv_counters)
        self._routers: set[str] = set()
        # Router devices whose link-local address is still tentative: their advertising
        # starts when it is preferred (RFC 4861 §6.2.2, an RA's source is link-local).
        self._waiting: dict[str, RaConfig] = {}
        # RS schedule of host devices: device -> solicitations left; times in _rs_timers.
        self._rs_left: dict[str, int] = {}
        self._rs_timers = Deadlines()

    # -- which side ------------------------------------------------------------------------
    def is_router(self, device: str) -> bool:
        return device in self._routers

    def configure(self, dev: Device, cfg: RaConfig | None, now: float) -> None:
        """Advertise cfg on dev (router mode), or stop (None: back to a host). Raises
        ValueError (RaConfig.validate) for a bad configuration."""
        if cfg is None:
            if dev.name in self._routers:
                self._routers.discard(dev.name)
                self._waiting.pop(dev.name, None)
                self._send_all(self.radv.unconfigure(dev.name, now))
                self.link_up(dev, now)
            return
        cfg.validate()
        if self._link_local(dev.name) is None:
            self._waiting[dev.name] = cfg
        else:
            self.radv.configure(dev.name, dev.mac, cfg, now)
        self._routers.add(dev.name)
        self._stop_solicit(dev.name)
        self._apply(self.slaac.remove_device(dev.name), now)

    def config_of(self, device: str) -> RaConfig | None:
        if device in self._waiting:
            return self._waiting[device]
        return self.radv.config(device) if device in self._routers else None

    def advertising(self, device: str) -> bool:
        return device in self._routers and device not in self._waiting

    def _link_local(self, device: str) -> IPv6Address | None:
        return next((a.ip for a in self._ctx.addresses.of_device(device)
                     if a.ip in LINK_LOCAL and a.state == PREFERRED), None)

    # -- host side ---------------------------------------------------------------------------
    def link_up(self, dev: Device, now: float) -> None:
        """RFC 4861 §6.3.7: a host solicits routers after a random delay of up to 1 s."""
        if dev.kind != ETHERNET or dev.name in self._routers or self.solicitations <= 0:
            return
        self._rs_left[dev.name] = self.solicitations
        self._rs_timers.set(dev.name, now + self.rng.uniform(0, MAX_RTR_SOLICITATION_DELAY))

    def _stop_solicit(self, name: str) -> None:
        self._rs_left.pop(name, None)
        self._rs_timers.cancel(name)

    def _solicit(self, name: str, now: float) -> None:
        dev = self._devs.get(name)
        left = self._rs_left.get(name, 0)
        if dev is None or not dev.up or left <= 0:
            self._stop_solicit(name)
            return
        # §6.3.7: from a preferred link-local address with our link-layer address, or from
        # :: without it (while the link-local address is tentative).
        src = self._link_local(name) or IPv6Address("::")
        opts = () if src.is_unspecified else (SourceLinkLayerAddress(dev.mac),)
        packet = build_ipv6(src, ALL_ROUTERS, NEXT_HEADER_ICMPV6,
                            RouterSolicitation(opts).build(src, ALL_ROUTERS),
                            hop_limit=ND_HOP_LIMIT)
        self._enqueue_tx(dev, build_ethernet(multicast_mac(ALL_ROUTERS), dev.mac,
                                             ETHERTYPE_IPV6, packet))
        self.c["tx_rs"] += 1
        self._rs_left[name] = left - 1
        if left > 1:
            self._rs_timers.set(name, now + RTR_SOLICITATION_INTERVAL)
        else:
            self._stop_solicit(name)

    def router_advertisement(self, dev: Device, src: IPv6Address, ra: RouterAdvertisement,
                             now: float) -> None:
        """A valid RA (NDP checked hop limit 255, a link-local source, code, options)."""
        if dev.name in self._routers:
            self.c["rx_ra_on_router_port"] += 1    # §6.2.7: another router's; not ours to use
            return
        self._stop_solicit(dev.name)
        self._apply(self.slaac.router_advertisement(dev.name, src, ra, now), now)

    def dad_failed(self, device: str, address: IPv6Address) -> None:
        """DAD found address taken: SLAAC picks another at the next poll (due at once)."""
        if len(self._dad_failures) < 64:
            self._dad_failures.append((device, address))

    def dns(self, device: str):
        return self.slaac.dns(device)

    # -- router side -------------------------------------------------------------------------
    def router_solicitation(self, dev: Device, src: IPv6Address, now: float) -> None:
        if dev.name in self._routers:
            self.radv.solicitation(dev.name, src, now)
        else:
            self.c["rx_rs_on_host_port"] += 1      # §6.2.6: hosts discard solicitations

    def _send_all(self, ras) -> None:
        for device, dst, ra in ras:
            dev = self._devs.get(device)
            if dev is None or not dev.up:
                continue
            # §6.1.2 / §6.2.3: from our link-local address, which must not be tentative.
            src = self._link_local(device)
            if src is None:
                self.c["tx_ra_no_link_local"] += 1
                continue
            packet = build_ipv6(src, dst, NEXT_HEADER_ICMPV6, ra.build(src, dst),
                                hop_limit=ND_HOP_LIMIT)
            self._enqueue_tx(dev, build_ethernet(multicast_mac(dst), dev.mac, ETHERTYPE_IPV6,
                                                 packet))
            self.c["tx_ra"] += 1

    # -- slaac.py's actions ------------------------------------------------------------------
    def _apply(self, actions, now: float) -> None:
        ctx = self._ctx
        for act in actions:
            dev = self._devs.get(act.device)
            if dev is None:
                continue
            t = type(act)
            if t is AddAddress:
                try:
                    ctx.add_address(dev, act.iface, now)
                except Exception as e:          # StackError: exists, limit
                    self.c[f"slaac_add_refused_{getattr(e, 'code', 'error')}"] += 1
            elif t is UpdateAddress:
                a = ctx.addresses.get(act.device, int(act.address))
                if a is not None and a.state == DEPRECATED and act.preferred_until > now:
                    ctx.set_state(act.device, act.address, PREFERRED)
            elif t is Deprecate:
                a = ctx.addresses.get(act.device, int(act.address))
                if a is not None and a.state == PREFERRED:
                    ctx.set_state(act.device, act.address, DEPRECATED)
            elif t is RemoveAddress:
                a = ctx.addresses.get(act.device, int(act.address))
                if a is not None:
                    ctx.remove_address(dev, a.iface)
            elif t is AddRoute:
                if not any(r.prefix == act.prefix and r.gateway == act.gateway
                           and r.device == act.device and r.kind == RA_ROUTE for r in ctx.routes):
                    try:
                        ctx.routes.add(Route(act.prefix, act.gateway, act.device, act.metric,
                                             RA_ROUTE))
                    except Exception:
                        self.c["slaac_route_refused"] += 1
            elif t is RemoveRoute:
                try:
                    ctx.routes.remove(act.prefix, act.gateway, act.device, kind=RA_ROUTE)
                except Exception:
                    pass
            elif t is SetMtu:
                if act.mtu <= dev.mtu:
                    ctx.link_mtu[act.device] = act.mtu
            elif t is SetHopLimit:
                ctx.hop_limit[act.device] = act.hop_limit
            elif t in (SetNeighborTiming, DnsChanged):
                self.c["slaac_" + t.__name__] += 1

    # -- timers, devices, restart ------------------------------------------------------------
    def poll(self, now: float) -> None:
        failures, self._dad_failures = self._dad_failures, []
        for device, address in failures:
            self._apply(self.slaac.dad_failed(device, address, now), now)
        for name in self._rs_timers.pop_due(now):
            self._solicit(name, now)
        for name, cfg in list(self._waiting.items()):
            dev = self._devs.get(name)
            if dev is None:
                del self._waiting[name]
            elif self._link_local(name) is not None:
                del self._waiting[name]
                self.radv.configure(name, dev.mac, cfg, now)
        self._apply(self.slaac.poll(now), now)
        self._send_all(self.radv.poll(now))

    def next_deadline(self) -> float | None:
        if self._dad_failures:
            return 0.0
        ds = [d for d in (self._rs_timers.next(), self.slaac.next_deadline(),
                          self.radv.next_deadline()) if d is not None and d != math.inf]
        return min(ds) if ds else None

    def remove_device(self, name: str, now: float) -> None:
        self._stop_solicit(name)
        self._waiting.pop(name, None)
        if name in self._routers:
            self._routers.discard(name)
            self.radv.unconfigure(name, now)
        self.slaac.remove_device(name)      # the device's addresses and routes go with it
        self._ctx.link_mtu.pop(name, None)
        self._ctx.hop_limit.pop(name, None)

    def snapshot(self, now: float) -> dict:
        return {"key": self._key, "slaac": self.slaac.snapshot(now),
                "radv": self.radv.snapshot(now),
                "routers": sorted(self._routers),
                "waiting": {d: c.to_dict() for d, c in self._waiting.items()},
                "link_mtu6": dict(self._ctx.link_mtu),
                "hop_limit6": dict(self._ctx.hop_limit)}

    def restore(self, snap: dict, now: float) -> None:
        if not snap:
            return
        # RFC 7217: the same key, so the stable addresses stay the same.
        self._key = bytes(snap["key"])
        self.slaac = Slaac(self._key, self.rng, counters=self._slaac_counters)
        self.slaac.restore(snap["slaac"], now)
        self.radv.restore(snap["radv"], now)
        self._routers = {str(d) for d in snap.get("routers", ()) if d in self._devs}
        self._waiting = {str(d): RaConfig.from_dict(c) for d, c in snap.get("waiting", {}).items()
                         if d in self._devs}
        self._ctx.link_mtu.update({str(k): int(v) for k, v in snap.get("link_mtu6", {}).items()})
        self._ctx.hop_limit.update({str(k): int(v) for k, v in snap.get("hop_limit6", {}).items()})


__all__ = ["RA_ROUTE", "RouterDiscovery", "RouterDiscoveryContext"]
