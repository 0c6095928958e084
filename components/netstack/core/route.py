"""The routing table, one per IP version (the code is the same for both: prefixes of up to
32 or 128 bits, indexed by address ints).

Lookup is longest-prefix match, then lowest metric, among routes whose device is usable
(present and link up). A route via a gateway without a device resolves its device by looking
the gateway up among the directly connected (gateway-less) routes.

The index is one dict per prefix length present (network int -> its routes in preference
order), probed longest first: a lookup costs one dict probe per distinct length, not one
test per route. cached_lookup() remembers answers per destination int for the per-frame
path; any change to the table, and invalidate() (the owner's call when a device comes, goes
or changes link state), forgets them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Callable, Union

from .errors import StackError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

CONNECTED = "connected"
STATIC = "static"

# Destinations remembered by cached_lookup; cleared when full (destinations come from the
# wire, so hostile input must not grow it without bound).
CACHE_LIMIT = 4096
_MISS = object()


@dataclass(frozen=True)
class Route:
    prefix: IPNetwork
    gateway: IPAddress | None
    device: str | None
    metric: int = 0
    kind: str = STATIC          # "connected" routes come and go with interface addresses

    def to_dict(self) -> dict:
        return {"prefix": str(self.prefix),
                "gateway": None if self.gateway is None else str(self.gateway),
                "device": self.device, "metric": self.metric, "kind": self.kind}


@dataclass(frozen=True)
class RouteInfo:
    prefix: str
    gateway: str | None
    device: str | None
    metric: int
    kind: str
    active: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NextHop:
    """The answer of a lookup: where to send a packet for `dst`."""
    route: Route
    device: str
    address: IPAddress          # the neighbor to resolve: the gateway, or dst itself
    neighbor: int               # the same address as an int (neighbor tables are keyed so)


class RoutingTable:
    def __init__(self, version: int, max_routes: int) -> None:
        if version not in (4, 6):
            raise ValueError(f"IP version {version!r}")
        self.version = version
        self.bits = 32 if version == 4 else 128
        self.max_routes = max_routes
        self._routes: list[Route] = []   # kept sorted: longest prefix first, then metric
        # The same routes by prefix length, longest first: (mask, {network: routes}), ints,
        # as `addr in network` costs several Python calls where `&` and a dict probe cost one.
        self._levels: list[tuple[int, dict[int, list[Route]]]] = []
        self._cache: dict[int, NextHop | None] = {}
        self._addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        self.dropped = 0                 # add_route refused because the table was full

    def _reindex(self) -> None:
        bits = self.bits
        levels: dict[int, dict[int, list[Route]]] = {}
        for r in self._routes:           # in preference order, which each list keeps
            levels.setdefault(r.prefix.prefixlen, {}).setdefault(
                int(r.prefix.network_address), []).append(r)
        self._levels = [(((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1), nets)
                        for plen, nets in sorted(levels.items(), reverse=True)]
        self._cache.clear()

    def invalidate(self) -> None:
        """Forget cached lookups: `usable` may now answer differently."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self):
        return iter(list(self._routes))

    def add(self, route: Route) -> None:
        if route.prefix.version != self.version:
            raise StackError("bad_argument", f"not an IPv{self.version} prefix: {route.prefix}")
        if route.gateway is not None and route.gateway.version != self.version:
            raise StackError("bad_argument", f"not an IPv{self.version} gateway: {route.gateway}")
        if route.gateway is None and route.device is None:
            raise StackError("bad_argument", "a route needs a gateway or a device")
        for r in self._routes:
            if (r.prefix, r.gateway, r.device, r.metric) == \
                    (route.prefix, route.gateway, route.device, route.metric):
                raise StackError("exists", f"route {route.prefix} exists")
        if len(self._routes) >= self.max_routes:
            self.dropped += 1
            raise StackError("limit", f"routing table full ({self.max_routes})")
        self._routes.append(route)
        self._routes.sort(key=lambda r: (-r.prefix.prefixlen, r.metric, r.kind != CONNECTED))
        self._reindex()

    def remove(self, prefix: IPNetwork, gateway: IPAddress | None = None,
               device: str | None = None, kind: str | None = None) -> list[Route]:
        """Remove routes matching prefix and whichever of gateway/device/kind are given."""
        gone = [r for r in self._routes if r.prefix == prefix
                and (gateway is None or r.gateway == gateway)
                and (device is None or r.device == device)
                and (kind is None or r.kind == kind)]
        if not gone:
            raise StackError("not_found", f"no route {prefix}")
        self._routes = [r for r in self._routes if r not in gone]
        self._reindex()
        return gone

    def remove_device(self, device: str) -> int:
        """Drop every route that names device (the device went away)."""
        before = len(self._routes)
        self._routes = [r for r in self._routes if r.device != device]
        self._reindex()
        return before - len(self._routes)

    def lookup(self, dst: IPAddress, usable: Callable[[str], bool],
               device: str | None = None) -> NextHop | None:
        """Best usable route to dst; with `device`, only routes leaving through it."""
        d = int(dst)
        for mask, nets in self._levels:
            for r in nets.get(d & mask, ()):
                hop = self._resolve(r, dst, usable)
                if hop is not None and (device is None or hop.device == device):
                    return hop
        return None

    def cached_lookup(self, d: int, usable: Callable[[str], bool]) -> NextHop | None:
        """lookup() of the destination int d, remembered until the table changes or
        invalidate() is called; the caller passes the same `usable` every time."""
        hop = self._cache.get(d, _MISS)
        if hop is _MISS:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            hop = self._cache[d] = self.lookup(self._addr(d), usable)
        return hop  # type: ignore[return-value]

    def _resolve(self, r: Route, dst: IPAddress, usable: Callable[[str], bool]) -> NextHop | None:
        if r.gateway is None:
            return NextHop(r, r.device, dst, int(dst)) if usable(r.device) else None  # type: ignore[arg-type]
        if r.device is not None:
            return NextHop(r, r.device, r.gateway, int(r.gateway)) if usable(r.device) else None
        # Gateway without device: one level of recursion, through on-link routes only.
        for c in self._routes:
            if c.gateway is None and r.gateway in c.prefix and usable(c.device):  # type: ignore[arg-type]
                return NextHop(r, c.device, r.gateway, int(r.gateway))  # type: ignore[arg-type]
        return None

    def snapshot(self) -> list[dict]:
        """The static routes (connected ones follow from the addresses)."""
        return [r.to_dict() for r in self._routes if r.kind == STATIC]

    def restore(self, snap: list[dict]) -> None:
        for r in snap:
            self.add(Route(ipaddress.ip_network(r["prefix"]),
                           None if r["gateway"] is None else ipaddress.ip_address(r["gateway"]),
                           r["device"], int(r["metric"]), STATIC))

    def info(self, usable: Callable[[str], bool]) -> list[RouteInfo]:
        out = []
        for r in self._routes:
            dst = r.prefix.network_address
            out.append(RouteInfo(str(r.prefix), None if r.gateway is None else str(r.gateway),
                                 r.device, r.metric, r.kind, self._resolve(r, dst, usable) is not None))
        return out
