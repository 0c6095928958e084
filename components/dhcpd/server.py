"""DHCPv4 server core for one guest-facing port (RFC 2131 §4.3), sans-I/O.

`DhcpServer.handle(msg, now, ...)` takes a parsed request and returns actions: `Reply`
(a message and where RFC 2131 §4.1 says it goes) or `ProbeAddress` (check that an address
is unused before offering it; the binding answers with `probe_result`). The server never
reads a clock: every entry point takes `now` (monotonic seconds).

Leases are keyed by client identifier (option 61) when the client sends one, else by
chaddr (RFC 2131 §4.2: the pair is the client's unique identifier). Every table is bounded:
leases (`max_leases`), pending probes, rate buckets and the address history, each with a
counter of what it refused or dropped.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping

from .wire import (BROADCAST, HTYPE_ETHERNET, SERVER_PORT, CLIENT_PORT, BOOTREQUEST,
                   FLAG_BROADCAST, ZERO, DhcpMessage, DhcpParseError, MessageType, Option,
                   stored_peer_text)

BROADCAST_MAC = b"\xff" * 6
# RFC 2131 §2: a client MUST accept 576-byte IP datagrams; less the IP and UDP headers.
_MIN_MAX_MESSAGE = 576 - 28
# Options dropped, in this order, when a reply outgrows the client's maximum message size.
_SHEDDABLE = (Option.CLASSLESS_ROUTES, Option.DOMAIN_NAME, Option.BROADCAST_ADDRESS,
              Option.MTU, Option.MESSAGE, Option.DNS)
_SNAPSHOT_VERSION = 1


class LeaseState(str, Enum):
    OFFERED = "offered"
    BOUND = "bound"
    DECLINED = "declined"  # a client declined it or a probe found it in use: not allocatable


@dataclass(frozen=True, slots=True)
class Lease:
    mac: bytes                 # b"" for a declined address that belongs to nobody
    client_id: bytes | None
    address: IPv4Address
    expires: float             # monotonic seconds, the caller's clock
    state: LeaseState
    hostname: str | None = None

    @property
    def key(self) -> str | None:
        return None if self.state is LeaseState.DECLINED else _client_key(self.mac, self.client_id)


@dataclass(frozen=True, slots=True)
class Reply:
    msg: DhcpMessage
    dst_ip: IPv4Address
    dst_mac: bytes | None      # None: relay agent, resolve dst_ip as usual
    broadcast: bool
    dst_port: int = CLIENT_PORT


@dataclass(frozen=True, slots=True)
class ProbeAddress:
    """Check (ARP probe or ICMP echo) that `address` is unused, then call `probe_result`."""
    address: IPv4Address
    token: int


Action = Reply | ProbeAddress


def _client_key(mac: bytes, client_id: bytes | None) -> str:
    # RFC 2131 §4.2: client identifier if supplied, else chaddr.
    return "id:" + client_id.hex() if client_id else "mac:" + mac.hex()


def _normalise_reservation(who: bytes | str) -> tuple[str, bytes]:
    """A 6-byte value or "aa:bb:.." text is a MAC; any other bytes is a client identifier."""
    if isinstance(who, str):
        raw = bytes.fromhex(who.replace(":", "").replace("-", ""))
        if len(raw) != 6:
            raise ValueError(f"reservation key {who!r} is not a MAC address")
        return "mac", raw
    return ("mac", bytes(who)) if len(who) == 6 else ("id", bytes(who))


@dataclass(frozen=True)
class ServerConfig:
    server_ip: IPv4Address
    subnet: IPv4Network
    pool_start: IPv4Address
    pool_end: IPv4Address
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    mtu: int | None = None
    lease_time: int = 3600
    reservations: Mapping[bytes | str, IPv4Address] = field(default_factory=dict)
    classless_routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()
    max_leases: int = 1024
    per_client_rate: float = 2.0       # sustained requests per second per chaddr
    per_client_burst: int = 8
    offer_hold_time: float = 30.0
    decline_hold_time: float = 600.0   # RFC 2131 §4.3.3 leaves "for a while" to us
    probe: bool = True
    probe_timeout: float = 2.0         # no probe_result by then: the address counts as free
    max_probes: int = 64
    rate_table_size: int = 4096
    history_size: int = 1024
    # Answer INIT-REBOOT/RENEWING for a free pool address we have no record of (state lost)
    # instead of the silence RFC 2131 §4.3.2 asks of a non-authoritative server.
    authoritative: bool = False

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "server_ip", IPv4Address(self.server_ip))
        s(self, "subnet", IPv4Network(self.subnet))
        s(self, "pool_start", IPv4Address(self.pool_start))
        s(self, "pool_end", IPv4Address(self.pool_end))
        if self.router is not None:
            s(self, "router", IPv4Address(self.router))
        s(self, "dns", tuple(IPv4Address(a) for a in self.dns))
        s(self, "classless_routes", tuple((IPv4Network(n), IPv4Address(r))
                                          for n, r in self.classless_routes))
        s(self, "reservations", {k: IPv4Address(v) for k, v in self.reservations.items()})
        for name in ("server_ip", "pool_start", "pool_end"):
            if getattr(self, name) not in self.subnet:
                raise ValueError(f"{name} {getattr(self, name)} is not in {self.subnet}")
        if self.pool_start > self.pool_end:
            raise ValueError("pool_start is after pool_end")
        never = {self.server_ip, self.router, self.subnet.network_address,
                 self.subnet.broadcast_address}
        for who, addr in self.reservations.items():
            _normalise_reservation(who)
            if addr not in self.subnet or addr in never:
                raise ValueError(f"reservation {addr} is not a host address of {self.subnet} "
                                 f"other than the server's and the router's")
        if not 0 < self.lease_time < 0xFFFFFFFF:
            raise ValueError("lease_time must be positive and finite")
        if self.max_leases < 1 or self.per_client_rate <= 0 or self.per_client_burst < 1:
            raise ValueError("max_leases, per_client_rate and per_client_burst must be positive")


@dataclass(slots=True)
class _Probe:
    key: str
    address: IPv4Address
    request: DhcpMessage       # the latest DISCOVER of the client, answered after the probe
    deadline: float


class DhcpServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._by_address: dict[IPv4Address, Lease] = {}
        self._by_client: dict[str, IPv4Address] = {}
        self._history: OrderedDict[str, IPv4Address] = OrderedDict()  # key -> last address
        self._probes: dict[int, _Probe] = {}
        self._probe_by_client: dict[str, int] = {}
        self._probing: set[IPv4Address] = set()
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()
        self._counters: Counter[str] = Counter()
        self._exhausted = False
        self._next_token = 1
        self._cursor = 0
        self._reserved: dict[tuple[str, bytes], IPv4Address] = {
            _normalise_reservation(k): v for k, v in config.reservations.items()}
        self._reserved_addresses = set(self._reserved.values())
        net = config.subnet
        self._never = {config.server_ip, net.network_address, net.broadcast_address}
        if config.router is not None:
            self._never.add(config.router)

    # ------------------------------------------------------------------ entry points

    def handle_datagram(self, buf: bytes, now: float, *, src_ip: IPv4Address = ZERO,
                        src_port: int = CLIENT_PORT) -> list[Action]:
        """Parse and handle one UDP payload; malformed input is counted and dropped."""
        try:
            msg = DhcpMessage.parse(buf)
        except DhcpParseError:
            self._counters["malformed"] += 1
            return []
        return self.handle(msg, now, src_ip=src_ip, src_port=src_port)

    def handle(self, msg: DhcpMessage, now: float, *, src_ip: IPv4Address = ZERO,
               src_port: int = CLIENT_PORT) -> list[Action]:
        """`src_ip`/`src_port`: the datagram's source (a relay agent sends from port 67)."""
        actions = self.expire(now)
        self._counters["received"] += 1
        return actions + self._dispatch(msg, now)

    def _dispatch(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.op != BOOTREQUEST:
            return self._drop("not_a_request")
        if msg.htype != HTYPE_ETHERNET or msg.hlen != 6 or len(msg.chaddr) != 6:
            return self._drop("not_ethernet")
        mtype = msg.message_type
        if mtype is None:
            return self._drop("bootp_only")  # plain BOOTP (RFC 951) is not served
        if msg.giaddr != ZERO and msg.giaddr not in self.config.subnet:
            return self._drop("foreign_relay")  # we serve one subnet per port
        if not self._take_token(msg.chaddr, now):
            return self._drop("rate_limited")
        handler = {
            MessageType.DISCOVER: self._discover,
            MessageType.REQUEST: self._request,
            MessageType.DECLINE: self._decline,
            MessageType.RELEASE: self._release,
            MessageType.INFORM: self._inform,
        }.get(mtype)  # type: ignore[call-overload]
        if handler is None:
            return self._drop("unexpected_type")
        self._counters[f"rx_{MessageType(mtype).name.lower()}"] += 1
        return handler(msg, now)

    def probe_result(self, token: int, in_use: bool, now: float) -> list[Action]:
        probe = self._end_probe(token)
        if probe is None:
            self._counters["probe_stale"] += 1
            return []
        if in_use:
            self._counters["probe_conflicts"] += 1
            self._mark_declined(probe.address, now)
            return self._discover(probe.request, now)  # try the next address
        return self._offer_after_probe(probe, now)

    def expire(self, now: float) -> list[Action]:
        for lease in [l for l in self._by_address.values() if l.expires <= now]:
            self._remove(lease)
            self._counters[f"expired_{lease.state.value}"] += 1
        actions: list[Action] = []
        for token in [t for t, p in self._probes.items() if p.deadline <= now]:
            probe = self._end_probe(token)
            assert probe is not None
            self._counters["probe_timeouts"] += 1
            actions += self._offer_after_probe(probe, now)  # no answer: nobody uses it
        return actions

    def next_deadline(self) -> float | None:
        times = [l.expires for l in self._by_address.values()]
        times += [p.deadline for p in self._probes.values()]
        return min(times, default=None)

    def leases(self) -> list[Lease]:
        return sorted(self._by_address.values(), key=lambda l: l.address)

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        out.update(leases=len(self._by_address), probes_pending=len(self._probes),
                   exhausted=self._exhausted, max_leases=self.config.max_leases)
        return out

    def tables(self) -> dict[str, dict[str, int]]:
        """Every bounded table: occupancy, limit and what it lost (ipc/accounting.py)."""
        c, cfg = self._counters, self.config
        return {
            "leases": {"size": len(self._by_address), "limit": cfg.max_leases,
                       "drops": c["dropped_lease_table_full"] + c["restore_dropped"]},
            "probes": {"size": len(self._probes), "limit": cfg.max_probes,
                       "drops": c["dropped_probe_table_full"]},
            "rate_buckets": {"size": len(self._buckets), "limit": cfg.rate_table_size,
                             "drops": c["rate_table_evicted"] + c["dropped_rate_limited"]},
            "history": {"size": len(self._history), "limit": cfg.history_size,
                        "drops": c["history_dropped"]},
        }

    # ------------------------------------------------------------------ messages

    def _discover(self, msg: DhcpMessage, now: float) -> list[Action]:
        key = self._key(msg)
        token = self._probe_by_client.get(key)
        if token is not None:
            self._probes[token].request = msg  # answer the newest xid once the probe ends
            return []
        chosen = self._choose_address(msg, key, now)
        if chosen is None:
            self._exhausted = True
            self._counters["pool_exhausted"] += 1
            return []  # RFC 2131 §4.3.1: no address, no OFFER
        address, fresh = chosen
        if fresh and self.config.probe:
            if len(self._probes) >= self.config.max_probes:
                return self._drop("probe_table_full")
            token, self._next_token = self._next_token, self._next_token + 1
            self._probes[token] = _Probe(key, address, msg, now + self.config.probe_timeout)
            self._probe_by_client[key] = token
            self._probing.add(address)
            self._counters["probes_sent"] += 1
            return [ProbeAddress(address, token)]
        return self._offer(msg, key, address, now)

    def _offer_after_probe(self, probe: _Probe, now: float) -> list[Action]:
        holder = self._by_address.get(probe.address)
        if holder is not None and holder.key != probe.key:
            return self._discover(probe.request, now)  # taken meanwhile (e.g. restore)
        return self._offer(probe.request, probe.key, probe.address, now)

    def _offer(self, msg: DhcpMessage, key: str, address: IPv4Address,
               now: float) -> list[Action]:
        current = self._by_address.get(address)
        if current is None or current.state is not LeaseState.BOUND:
            expires = max(now + self.config.offer_hold_time,
                          current.expires if current is not None else 0.0)
            if not self._store(Lease(msg.chaddr, msg.client_id, address, expires,
                                     LeaseState.OFFERED, msg.hostname), key):
                return self._drop("lease_table_full")
        self._exhausted = False
        reply = DhcpMessage.reply_for(msg, MessageType.OFFER)
        reply.yiaddr = address
        self._fill_options(reply, msg, with_lease=True)
        self._counters["tx_offer"] += 1
        return [self._route(msg, reply)]

    def _request(self, msg: DhcpMessage, now: float) -> list[Action]:
        key = self._key(msg)
        server_id, requested = msg.server_id, msg.requested_ip
        if server_id is not None:
            # SELECTING (RFC 2131 §4.3.2): 'server identifier' names the chosen server.
            if server_id != self.config.server_ip:
                lease = self._lease_of(key)
                if lease is not None and lease.state is LeaseState.OFFERED:
                    self._remove(lease)  # the client took another server's offer
                self._counters["offer_not_chosen"] += 1
                return []
            if requested is None or msg.ciaddr != ZERO:
                return self._drop("malformed_request")  # §4.3.2: ciaddr MUST be zero
            lease = self._lease_of(key)
            if lease is not None and lease.address == requested:
                return self._ack(msg, key, requested, now)
            return self._nak(msg, "offer expired or address not offered")
        if requested is not None:
            # INIT-REBOOT: requested IP filled, ciaddr MUST be zero.
            if msg.ciaddr != ZERO:
                return self._drop("malformed_request")
            return self._verify(msg, key, requested, now)
        if msg.ciaddr != ZERO:
            return self._verify(msg, key, msg.ciaddr, now)  # RENEWING or REBINDING
        return self._drop("malformed_request")

    def _verify(self, msg: DhcpMessage, key: str, address: IPv4Address,
                now: float) -> list[Action]:
        # RFC 2131 §4.3.2: NAK an address on the wrong network or one that is not the client's.
        if address not in self.config.subnet or address in self._never:
            return self._nak(msg, "address not on this network")
        lease = self._lease_of(key)
        if lease is not None:
            if lease.address == address:
                return self._ack(msg, key, address, now)
            return self._nak(msg, "address is not leased to this client")
        holder = self._by_address.get(address)
        reserved = self._reservation(msg)
        if holder is not None or address in self._probing or (
                address in self._reserved_addresses and reserved != address):
            return self._nak(msg, "address is in use")
        if reserved == address or (self.config.authoritative and self._in_pool(address)):
            return self._ack(msg, key, address, now)
        # §4.3.2 INIT-REBOOT: "If the DHCP server has no record of this client, then it
        # MUST remain silent".
        self._counters["unknown_client_silent"] += 1
        return []

    def _ack(self, msg: DhcpMessage, key: str, address: IPv4Address,
             now: float) -> list[Action]:
        lease = Lease(msg.chaddr, msg.client_id, address, now + self.config.lease_time,
                      LeaseState.BOUND, msg.hostname)
        if not self._store(lease, key):
            return self._drop("lease_table_full")
        self._history.pop(key, None)
        reply = DhcpMessage.reply_for(msg, MessageType.ACK)
        reply.yiaddr = address
        reply.ciaddr = msg.ciaddr  # table 3: 'ciaddr' from DHCPREQUEST
        self._fill_options(reply, msg, with_lease=True)
        self._counters["tx_ack"] += 1
        return [self._route(msg, reply)]

    def _nak(self, msg: DhcpMessage, why: str) -> list[Action]:
        reply = DhcpMessage.reply_for(msg, MessageType.NAK)
        # Table 3: a NAK carries server id, message and (RFC 6842) client id, nothing else.
        reply.server_id = self.config.server_ip
        reply.message = why
        if msg.client_id is not None:
            reply.client_id = msg.client_id
        self._counters["tx_nak"] += 1
        return [self._route(msg, reply, nak=True)]

    def _decline(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.server_id not in (None, self.config.server_ip):
            return self._drop("decline_other_server")
        lease = self._lease_of(self._key(msg))
        if lease is None or lease.address != msg.requested_ip:
            # A DECLINE for an address this client does not hold would let anyone burn the pool.
            return self._drop("decline_not_leased")
        # RFC 2131 §4.3.3: the server MUST mark the address as not available.
        self._mark_declined(lease.address, now)
        self._counters["declined"] += 1
        return []

    def _release(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.server_id not in (None, self.config.server_ip):
            return self._drop("release_other_server")
        key = self._key(msg)
        lease = self._lease_of(key)
        if lease is None or lease.address != msg.ciaddr:
            return self._drop("release_not_leased")
        # RFC 2131 §4.3.4: mark not allocated; keep the client's record (the history) so it
        # gets the same address back.
        self._remove(lease)
        self._counters["released"] += 1
        return []

    def _inform(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.ciaddr != ZERO and msg.ciaddr not in self.config.subnet:
            return self._drop("inform_foreign")
        # RFC 2131 §4.3.5: ACK without yiaddr and lease time; MUST NOT check for a lease.
        reply = DhcpMessage.reply_for(msg, MessageType.ACK)
        reply.ciaddr = msg.ciaddr
        self._fill_options(reply, msg, with_lease=False)
        self._counters["tx_ack_inform"] += 1
        return [self._route(msg, reply)]

    # ------------------------------------------------------------------ replies

    def _fill_options(self, reply: DhcpMessage, request: DhcpMessage, *,
                      with_lease: bool) -> None:
        c = self.config
        prl = set(request.parameter_request_list or ())
        reply.server_id = c.server_ip  # table 3: MUST in OFFER, ACK and NAK
        if with_lease:
            reply.lease_time = c.lease_time
            reply.renewal_time = c.lease_time // 2           # RFC 2131 §4.4.5: 0.5
            reply.rebinding_time = c.lease_time * 7 // 8     # and 0.875 of the lease
        reply.subnet_mask = c.subnet.netmask
        if c.router is not None:
            reply.routers = [c.router]
        if c.dns:
            reply.dns_servers = c.dns
        if c.domain:
            reply.domain_name = c.domain
        if c.mtu is not None:
            reply.mtu = c.mtu
        if Option.BROADCAST_ADDRESS in prl:
            reply.broadcast_address = c.subnet.broadcast_address
        if c.classless_routes and Option.CLASSLESS_ROUTES in prl:
            routes = list(c.classless_routes)
            # RFC 3442 §2: a client receiving option 121 MUST ignore option 3, so the
            # default route has to travel inside option 121 as well.
            if c.router is not None and not any(n.prefixlen == 0 for n, _ in routes):
                routes.append((IPv4Network("0.0.0.0/0"), c.router))
            reply.classless_routes = routes
        if request.client_id is not None:
            reply.client_id = request.client_id  # RFC 6842 §3: echo option 61
        limit = max(_MIN_MAX_MESSAGE, (request.max_message_size or 0) - 28)
        for code in _SHEDDABLE:
            if len(reply.build()) <= limit:
                break
            if reply.options.pop(code, None) is not None:
                self._counters["options_shed"] += 1

    def _route(self, request: DhcpMessage, reply: DhcpMessage, *, nak: bool = False) -> Reply:
        """The destination rules of RFC 2131 §4.1 (and §4.3.2 for a NAK)."""
        if request.giaddr != ZERO:
            if nak:
                reply.flags |= FLAG_BROADCAST  # §4.1: relay must broadcast the NAK
            return Reply(reply, request.giaddr, None, False, SERVER_PORT)
        if nak:
            return Reply(reply, BROADCAST, BROADCAST_MAC, True)  # §4.1: NAKs are broadcast
        if request.ciaddr != ZERO:
            return Reply(reply, request.ciaddr, request.chaddr, False)
        if request.broadcast or reply.yiaddr == ZERO:
            return Reply(reply, BROADCAST, BROADCAST_MAC, True)
        # The client has no address yet: unicast to yiaddr at chaddr, without ARP.
        return Reply(reply, reply.yiaddr, request.chaddr, False)

    # ------------------------------------------------------------------ addresses

    def _choose_address(self, msg: DhcpMessage, key: str,
                        now: float) -> tuple[IPv4Address, bool] | None:
        """RFC 2131 §4.3.1 order; returns (address, needs a probe) or None."""
        reserved = self._reservation(msg)
        current = self._lease_of(key)
        if reserved is not None:
            holder = self._by_address.get(reserved)
            if holder is not None and holder.key != key:
                self._counters["reservation_in_use"] += 1
                return None
            if current is not None and current.address != reserved:
                self._remove(current)
            return reserved, holder is None
        if current is not None:
            return current.address, False
        if len(self._by_address) + len(self._probes) >= self.config.max_leases:
            self._counters["lease_table_full"] += 1
            return None
        for candidate in (self._history.get(key), msg.requested_ip):
            if candidate is not None and self._allocatable(candidate):
                return candidate, True
        address = self._scan_pool()
        return None if address is None else (address, True)

    def _scan_pool(self) -> IPv4Address | None:
        start, end = int(self.config.pool_start), int(self.config.pool_end)
        size = end - start + 1
        for i in range(size):
            address = IPv4Address(start + (self._cursor + i) % size)
            if self._allocatable(address):
                self._cursor = (self._cursor + i + 1) % size
                return address
        return None

    def _in_pool(self, address: IPv4Address) -> bool:
        return self.config.pool_start <= address <= self.config.pool_end

    def _allocatable(self, address: IPv4Address) -> bool:
        return (self._in_pool(address) and address not in self._never
                and address not in self._by_address and address not in self._probing
                and address not in self._reserved_addresses)

    def _reservation(self, msg: DhcpMessage) -> IPv4Address | None:
        if msg.client_id is not None:
            found = self._reserved.get(("id", msg.client_id))
            if found is not None:
                return found
        return self._reserved.get(("mac", msg.chaddr))

    # ------------------------------------------------------------------ tables

    def _key(self, msg: DhcpMessage) -> str:
        return _client_key(msg.chaddr, msg.client_id)

    def _lease_of(self, key: str) -> Lease | None:
        address = self._by_client.get(key)
        return None if address is None else self._by_address[address]

    def _store(self, lease: Lease, key: str) -> bool:
        old = self._lease_of(key)
        if old is not None and old.address != lease.address:
            self._remove(old)
        if lease.address not in self._by_address and \
                len(self._by_address) >= self.config.max_leases:
            return False
        self._by_address[lease.address] = lease
        self._by_client[key] = lease.address
        return True

    def _remove(self, lease: Lease) -> None:
        self._by_address.pop(lease.address, None)
        key = lease.key
        if key is not None and self._by_client.get(key) == lease.address:
            del self._by_client[key]
            if lease.state is LeaseState.BOUND:
                self._remember(key, lease.address)
        self._exhausted = False

    def _remember(self, key: str, address: IPv4Address) -> None:
        self._history[key] = address
        self._history.move_to_end(key)
        while len(self._history) > self.config.history_size:
            self._history.popitem(last=False)
            self._counters["history_dropped"] += 1

    def _mark_declined(self, address: IPv4Address, now: float) -> None:
        old = self._by_address.get(address)
        if old is not None:
            self._remove(old)
        self._by_address[address] = Lease(b"", None, address,
                                          now + self.config.decline_hold_time,
                                          LeaseState.DECLINED)

    def _end_probe(self, token: int) -> _Probe | None:
        probe = self._probes.pop(token, None)
        if probe is not None:
            self._probing.discard(probe.address)
            self._probe_by_client.pop(probe.key, None)
        return probe

    def _take_token(self, mac: bytes, now: float) -> bool:
        """Token bucket per chaddr: one client cannot starve the others (RFC 2131 §7)."""
        c = self.config
        bucket = self._buckets.get(mac)
        if bucket is None:
            if len(self._buckets) >= c.rate_table_size:
                self._buckets.popitem(last=False)
                self._counters["rate_table_evicted"] += 1
            bucket = self._buckets[mac] = [float(c.per_client_burst), now]
        else:
            self._buckets.move_to_end(mac)
        tokens = min(float(c.per_client_burst), bucket[0] + (now - bucket[1]) * c.per_client_rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _drop(self, why: str) -> list[Action]:
        self._counters["dropped"] += 1
        self._counters[f"dropped_{why}"] += 1
        return []

    # ------------------------------------------------------------------ persistence

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain msgpack-able state. Expiry is stored as time remaining, so a snapshot
        outlives the monotonic clock it was taken with (a lease only ever gets longer)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "leases": [{"mac": l.mac.hex(), "client_id": None if l.client_id is None
                        else l.client_id.hex(), "address": str(l.address),
                        "remaining": max(0.0, l.expires - now), "state": l.state.value,
                        "hostname": l.hostname} for l in self._by_address.values()],
            "history": [[k, str(a)] for k, a in self._history.items()],
        }

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Replace all lease state by a snapshot; entries that no longer fit the
        configuration (other subnet, duplicate address, full table) are counted and dropped."""
        if data.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"lease snapshot version {data.get('version')!r} "
                             f"is not {_SNAPSHOT_VERSION}")
        self._by_address.clear()
        self._by_client.clear()
        self._history.clear()
        for probe_token in list(self._probes):
            self._end_probe(probe_token)
        for item in data.get("leases", ()):
            try:
                lease = Lease(bytes.fromhex(item["mac"]),
                              None if item["client_id"] is None
                              else bytes.fromhex(item["client_id"]),
                              IPv4Address(item["address"]), now + float(item["remaining"]),
                              LeaseState(item["state"]), stored_peer_text(item.get("hostname")))
            except (KeyError, TypeError, ValueError):
                self._counters["restore_dropped"] += 1
                continue
            key = lease.key
            if (lease.address not in self.config.subnet or lease.address in self._by_address
                    or len(self._by_address) >= self.config.max_leases
                    or (key is not None and key in self._by_client)):
                self._counters["restore_dropped"] += 1
                continue
            self._by_address[lease.address] = lease
            if key is not None:
                self._by_client[key] = lease.address
        for entry in data.get("history", ()):
            try:
                key, address = entry
                self._remember(str(key), IPv4Address(address))
            except (TypeError, ValueError):
                self._counters["restore_dropped"] += 1
        self._exhausted = False
