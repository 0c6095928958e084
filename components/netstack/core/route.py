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

Policy routing (as Linux's `ip rule` + `ip route ... table N`): beside main, numbered tables
(1-252) that the firewall's `table N` action picks for a packet. RoutingTables holds them: a
lookup in a picked table that finds no route falls back to main, as Linux's rule list ends in
main's rule. A numbered table holds static routes only (connected routes follow addresses, in
main); a gateway without a device resolves through the table's own on-link routes, then
main's, as Linux checks a gateway in the route's table and then by a full lookup.
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
# Numbered tables are 1-252, Linux's numbers: 253-255 are its default, main and local tables.
MAX_TABLE = 252


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
    table: int | None = None    # None: main

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NextHop:
    """The answer of a lookup: where to send a packet for `dst`."""
    route: Route
    device: str
    address: IPAddress          # the neighbor to resolve: the gateway, or dst itself
    neighbor: int               # the same address as an int (neighbor tables are keyed so)


def route_from_dict(d: dict) -> Route:
    """A route as snapshot() (or Route.to_dict) wrote it; its kind when one is given."""
    return Route(ipaddress.ip_network(d["prefix"]),
                 None if d["gateway"] is None else ipaddress.ip_address(d["gateway"]),
                 d["device"], int(d["metric"]), str(d.get("kind", STATIC)))


class RoutingTable:
    def __init__(self, version: int, max_routes: int, onlink: "RoutingTable | None" = None) -> None:
        """`onlink`: where a gateway none of this table's on-link routes holds is looked
        for next (main, for a numbered table)."""
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
        self._onlink = onlink

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
        # A numbered table looks in main's too (its `onlink`).
        for table in (self, self._onlink):
            for c in table._routes if table is not None else ():
                if c.gateway is None and r.gateway in c.prefix and usable(c.device):  # type: ignore[arg-type]
                    return NextHop(r, c.device, r.gateway, int(r.gateway))  # type: ignore[arg-type]
        return None

    def snapshot(self) -> list[dict]:
        """The static routes (connected ones follow from the addresses)."""
        return [r.to_dict() for r in self._routes if r.kind == STATIC]

    def restore(self, snap: list[dict]) -> None:
        for r in snap:
            self.add(route_from_dict(r))

    def info(self, usable: Callable[[str], bool], table: int | None = None) -> list[RouteInfo]:
        out = []
        for r in self._routes:
            dst = r.prefix.network_address
            active = self._resolve(r, dst, usable) is not None
            out.append(RouteInfo(str(r.prefix), None if r.gateway is None else str(r.gateway),
                                 r.device, r.metric, r.kind, active, table))
        return out


class RoutingTables:
    """Main and the numbered tables. A numbered table exists while it holds a route; their
    routes together are bounded by main's max_routes (a second bound, not one per table, so
    252 tables cannot hold 252 times the routes). Numbered tables are looked up uncached: only
    the general path reads them (the fast path declines while `table N` rules exist)."""

    def __init__(self, main: RoutingTable) -> None:
        self.main = main
        self._numbered: dict[int, RoutingTable] = {}
        self.dropped = 0                 # routes refused because the numbered tables were full

    def numbers(self) -> list[int]:
        return sorted(self._numbered)

    def routes(self) -> int:
        """Routes in the numbered tables."""
        return sum(len(t) for t in self._numbered.values())

    def get(self, table: int | None) -> RoutingTable | None:
        return self.main if table is None else self._numbered.get(table)

    def add(self, route: Route, table: int | None = None) -> None:
        if table is None:
            self.main.add(route)
            return
        if not isinstance(table, int) or not 1 <= table <= MAX_TABLE:
            raise StackError("bad_argument", f"routing table {table!r} is not 1-{MAX_TABLE}")
        t = self._numbered.get(table)
        if t is None:
            t = RoutingTable(self.main.version, self.main.max_routes, onlink=self.main)
        if self.routes() >= self.main.max_routes:
            self.dropped += 1
            raise StackError("limit", f"routing tables 1-{MAX_TABLE} full ({self.main.max_routes})")
        t.add(route)
        self._numbered[table] = t

    def remove(self, prefix: IPNetwork, gateway: IPAddress | None = None, device: str | None = None,
               kind: str | None = None, table: int | None = None) -> list[Route]:
        t = self.get(table)
        if t is None:
            raise StackError("not_found", f"no route {prefix} in table {table}")
        gone = t.remove(prefix, gateway, device, kind)
        if table is not None and not len(t):
            del self._numbered[table]
        return gone

    def remove_device(self, device: str) -> int:
        n = self.main.remove_device(device)
        for number, t in list(self._numbered.items()):
            n += t.remove_device(device)
            if not len(t):
                del self._numbered[number]
        return n

    def invalidate(self) -> None:
        self.main.invalidate()

    def lookup(self, dst: IPAddress, usable: Callable[[str], bool], table: int | None = None,
               device: str | None = None) -> NextHop | None:
        """The best route in `table` (a `table N` choice) and, when it has none, in main."""
        if table is not None:
            t = self._numbered.get(table)
            hop = t.lookup(dst, usable, device) if t is not None else None
            if hop is not None:
                return hop
        return self.main.lookup(dst, usable, device)

    def info(self, usable: Callable[[str], bool], table: int | None = None,
             every: bool = False) -> list[RouteInfo]:
        """Main's routes or table N's; with `every`, main's then each numbered table's."""
        if every:
            out = self.main.info(usable)
            for number in self.numbers():
                out += self._numbered[number].info(usable, number)
            return out
        t = self.get(table)
        return [] if t is None else t.info(usable, table)

    def snapshot(self) -> list[dict]:
        """The numbered tables (main's routes are under their own key)."""
        return [{"table": n, "routes": self._numbered[n].snapshot()} for n in self.numbers()]

    def restore(self, snap: list[dict]) -> None:
        for t in snap:
            for r in t["routes"]:
                self.add(route_from_dict(r), int(t["table"]))
