"""DHCPv6 stateful server for one guest-facing port (RFC 8415 §18.3), sans-I/O.

`Dhcpv6Server.handle(payload, src, now)` takes one UDP payload received on port 547 and
returns the reply to send back to `src` port 546, or None. Clients are directly attached:
relay messages are counted and dropped. The server hands out addresses (IA_NA) from a pool
inside the port's prefix, one address per IA, keyed by (DUID, IAID); it delegates no
prefixes (every IA_PD is answered NoPrefixAvail). It never reads a clock: every entry point
takes `now` (monotonic seconds).

Addresses are picked by hashing the client's (DUID, IAID) into the pool, so a client gets the
same address back after its lease expired or the server lost its state. Every table is
bounded (`max_leases`, `max_ias_per_message`) with a counter of what it refused.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv6Address, IPv6Network
from typing import Any, Callable, Mapping

from .dhcpv6_wire import (CLIENT_PORT, DUID_MAX_LEN, DUID_MIN_LEN, INFINITY, Dhcpv6Message,
                          Dhcpv6ParseError, IaAddress, IaNa, IaPd, MessageType, Option,
                          RelayMessage, Status, StatusCode, encode_domains, parse_message)

REPLY_PORT = CLIENT_PORT
_SNAPSHOT_VERSION = 1
_HASH_PROBES = 32            # hashed candidates tried before a linear scan
_LINEAR_SCAN_LIMIT = 65536   # pools up to this size are scanned when hashing misses


class LeaseState(str, Enum):
    ADVERTISED = "advertised"   # offered in an Advertise, held briefly for the Request
    BOUND = "bound"
    DECLINED = "declined"       # a client found it in use: quarantined, belongs to nobody


@dataclass(frozen=True, slots=True)
class Lease:
    duid: bytes                 # b"" for a declined address
    iaid: int
    address: IPv6Address
    state: LeaseState
    expires: float              # end of the valid lifetime, of the hold or of the quarantine

    @property
    def key(self) -> tuple[bytes, int] | None:
        return None if self.state is LeaseState.DECLINED else (self.duid, self.iaid)


@dataclass(frozen=True)
class Dhcpv6ServerConfig:
    server_duid: bytes
    prefix: IPv6Network                     # the port's on-link prefix, normally a /64
    # The pool: pool_start..pool_end, or pool_size addresses from pool_start; pool_start
    # defaults to prefix::1000, the size to 65536.
    pool_start: IPv6Address | None = None
    pool_end: IPv6Address | None = None
    pool_size: int | None = None
    exclude: tuple[IPv6Address, ...] = ()   # e.g. the gateway's own address on the port
    dns_servers: tuple[IPv6Address, ...] = ()
    domain_list: tuple[str, ...] = ()
    preferred_lifetime: int = 1800
    valid_lifetime: int = 3600
    preference: int | None = None           # Preference option (§21.8); 255: "take me now"
    rapid_commit: bool = True               # answer a Rapid Commit Solicit with a Reply
    sol_max_rt: int | None = None
    inf_max_rt: int | None = None
    max_leases: int = 1024
    max_ias_per_message: int = 4            # one client cannot drain the pool in one go
    advertise_hold_time: float = 60.0
    decline_hold_time: float = 600.0        # RFC 8415 §18.3.8 leaves the duration to us

    def __post_init__(self) -> None:
        s = object.__setattr__
        prefix = IPv6Network(self.prefix)
        s(self, "prefix", prefix)
        start = IPv6Address(self.pool_start) if self.pool_start is not None \
            else prefix.network_address + 0x1000
        if self.pool_end is not None:
            end = IPv6Address(self.pool_end)
        else:
            size = self.pool_size if self.pool_size is not None else 65536
            if size < 1:
                raise ValueError("pool_size must be positive")
            end = IPv6Address(min(int(start) + size - 1, int(prefix.broadcast_address)))
        s(self, "pool_start", start)
        s(self, "pool_end", end)
        s(self, "exclude", tuple(IPv6Address(a) for a in self.exclude))
        s(self, "dns_servers", tuple(IPv6Address(a) for a in self.dns_servers))
        s(self, "domain_list", tuple(self.domain_list))
        if start not in prefix or end not in prefix or start > end:
            raise ValueError(f"pool {start}..{end} is not a range inside {prefix}")
        if not DUID_MIN_LEN <= len(self.server_duid) <= DUID_MAX_LEN:
            raise ValueError("server_duid length out of range")
        if not 0 < self.preferred_lifetime <= self.valid_lifetime < INFINITY:
            raise ValueError("lifetimes must satisfy 0 < preferred <= valid < infinity")
        if self.max_leases < 1 or self.max_ias_per_message < 1:
            raise ValueError("max_leases and max_ias_per_message must be positive")
        encode_domains(self.domain_list)  # raises on an unusable name

    @property
    def pool_len(self) -> int:
        assert self.pool_start is not None and self.pool_end is not None
        return int(self.pool_end) - int(self.pool_start) + 1


def _status(code: StatusCode, text: str) -> Status:
    return Status(code, text)


class Dhcpv6Server:
    def __init__(self, config: Dhcpv6ServerConfig) -> None:
        self.config = config
        self._by_address: dict[IPv6Address, Lease] = {}
        self._by_key: dict[tuple[bytes, int], IPv6Address] = {}
        self._counters: Counter[str] = Counter()
        self._exhausted = False

    # ------------------------------------------------------------------ entry points

    def handle(self, payload: bytes, src: IPv6Address, now: float) -> bytes | None:
        """One UDP payload from `src`; the reply to send to `src` port 546, or None."""
        self.poll(now)
        self._counters["received"] += 1
        try:
            msg = parse_message(payload)
        except Dhcpv6ParseError:
            self._counters["malformed"] += 1
            return None
        if isinstance(msg, RelayMessage):
            return self._drop("relay")  # directly attached clients only
        handler = self._HANDLERS.get(msg.msg_type)
        if handler is None:
            return self._drop("unexpected_type")
        name = MessageType(msg.msg_type).name.lower()
        reason = self._invalid(msg)
        if reason is not None:
            return self._drop(f"{name}_{reason}")
        self._counters[f"rx_{name}"] += 1
        reply = handler(self, msg, now)
        if reply is None:
            return None
        self._counters[f"tx_{MessageType(reply.msg_type).name.lower()}"] += 1
        return reply.build()

    def poll(self, now: float) -> None:
        """Expire leases, Advertise holds and quarantines that ended by `now`."""
        for lease in [l for l in self._by_address.values() if l.expires <= now]:
            self._remove(lease)
            self._counters[f"expired_{lease.state.value}"] += 1

    def next_deadline(self) -> float | None:
        return min((l.expires for l in self._by_address.values()), default=None)

    def leases(self) -> list[Lease]:
        return sorted(self._by_address.values(), key=lambda l: l.address)

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        out.update(leases=len(self._by_address), max_leases=self.config.max_leases,
                   exhausted=self._exhausted)
        return out

    def tables(self) -> dict[str, dict[str, int]]:
        c = self._counters
        return {"leases": {"size": len(self._by_address), "limit": self.config.max_leases,
                           "drops": c["lease_table_full"] + c["restore_dropped"]}}

    # ------------------------------------------------------------------ validation

    def _invalid(self, msg: Dhcpv6Message) -> str | None:
        """RFC 8415 §16: the conditions under which a server MUST discard a message."""
        mtype = msg.msg_type
        if mtype == MessageType.INFORMATION_REQUEST:
            # §16.12: another server's Server ID, or any IA option.
            if msg.server_id is not None and msg.server_id != self.config.server_duid:
                return "other_server"
            return "has_ia" if msg.ia_na or msg.ia_pd else None
        if msg.client_id is None:
            return "no_client_id"
        if mtype in (MessageType.SOLICIT, MessageType.CONFIRM, MessageType.REBIND):
            # §16.2, §16.5, §16.7: these go to every server and MUST NOT name one.
            return "has_server_id" if msg.server_id is not None else None
        # §16.4, §16.6, §16.8, §16.9: Request, Renew, Decline, Release name their server.
        return None if msg.server_id == self.config.server_duid else "other_server"

    # ------------------------------------------------------------------ messages

    def _solicit(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        c = self.config
        # §18.3.1: a Rapid Commit Solicit is answered with a committed Reply if allowed.
        commit = msg.rapid_commit and c.rapid_commit
        reply = self._reply_to(msg, MessageType.REPLY if commit else MessageType.ADVERTISE)
        reply.rapid_commit = commit
        if c.preference is not None:
            reply.preference = c.preference
        assigned = 0
        ia_na = []
        for i, ia in enumerate(msg.ia_na):
            lease = self._assign(msg, ia, now, bind=commit) \
                if i < c.max_ias_per_message else None
            if lease is None:
                ia_na.append(IaNa(ia.iaid, status=_status(StatusCode.NO_ADDRS_AVAIL,
                                                          "no addresses available")))
            else:
                assigned += 1
                ia_na.append(self._ia_with(ia.iaid, lease.address))
        if not assigned:
            # §18.3.9: nothing for any IA: an Advertise with only a NoAddrsAvail status (and
            # SOL_MAX_RT), also to a Rapid Commit Solicit, since nothing was committed.
            reply.msg_type = MessageType.ADVERTISE
            reply.status = _status(StatusCode.NO_ADDRS_AVAIL, "no addresses available")
            reply.preference = reply.dns_servers = reply.domain_list = None
            reply.rapid_commit = False
            return reply
        reply.ia_na = tuple(ia_na)
        reply.ia_pd = self._no_prefixes(msg)
        return reply

    def _request(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        c = self.config
        reply = self._reply_to(msg, MessageType.REPLY)
        ia_na = []
        for i, ia in enumerate(msg.ia_na):
            if any(a.address not in c.prefix for a in ia.addresses):
                # §18.3.2: an address not appropriate for the link: the IA gets NotOnLink.
                ia_na.append(IaNa(ia.iaid, status=_status(StatusCode.NOT_ON_LINK,
                                                          "address not on this link")))
                continue
            lease = self._assign(msg, ia, now, bind=True) \
                if i < c.max_ias_per_message else None
            if lease is None:
                # §18.3.2: an IA the server cannot serve comes back with NoAddrsAvail.
                ia_na.append(IaNa(ia.iaid, status=_status(StatusCode.NO_ADDRS_AVAIL,
                                                          "no addresses available")))
            else:
                ia_na.append(self._ia_with(ia.iaid, lease.address))
        reply.ia_na = tuple(ia_na)
        reply.ia_pd = self._no_prefixes(msg)
        return reply

    def _renew(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        """Renew (§18.3.4) and Rebind (§18.3.5): extend what is bound, nothing else."""
        c = self.config
        assert msg.client_id is not None
        reply = self._reply_to(msg, MessageType.REPLY)
        ia_na = []
        for ia in msg.ia_na:
            lease = self._lease_of((msg.client_id, ia.iaid))
            if lease is None or lease.state is not LeaseState.BOUND:
                off_link = [a for a in ia.addresses if a.address not in c.prefix]
                if off_link and msg.msg_type == MessageType.REBIND:
                    # §18.3.5: addresses not appropriate for the link: lifetimes 0.
                    ia_na.append(IaNa(ia.iaid, addresses=tuple(
                        IaAddress(a.address, 0, 0) for a in ia.addresses)))
                else:
                    # §18.3.4/§18.3.5: no binding: NoBinding, and the client will Request.
                    ia_na.append(IaNa(ia.iaid, status=_status(StatusCode.NO_BINDING,
                                                              "no binding for this IA")))
                continue
            self._bind(lease.duid, lease.iaid, lease.address, now)
            # §18.3.4: addresses of the IA that are not the client's go back with 0 lifetimes.
            stale = tuple(IaAddress(a.address, 0, 0) for a in ia.addresses
                          if a.address != lease.address)
            ia_na.append(self._ia_with(ia.iaid, lease.address, stale))
        reply.ia_na = tuple(ia_na)
        reply.ia_pd = self._no_prefixes(msg)
        return reply

    def _release(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        return self._give_back(msg, now, decline=False)

    def _decline(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        return self._give_back(msg, now, decline=True)

    def _give_back(self, msg: Dhcpv6Message, now: float, *, decline: bool) -> Dhcpv6Message:
        """Release (§18.3.7) and Decline (§18.3.8): Success, with NoBinding for each IA
        the client does not hold. A declined address is quarantined, not freed."""
        assert msg.client_id is not None
        reply = self._reply_to(msg, MessageType.REPLY, options=False)
        reply.status = _status(StatusCode.SUCCESS, "")
        unknown = []
        for ia in msg.ia_na:
            lease = self._lease_of((msg.client_id, ia.iaid))
            named = {a.address for a in ia.addresses}
            if lease is None or lease.state is not LeaseState.BOUND or \
                    lease.address not in named:
                unknown.append(IaNa(ia.iaid, status=_status(StatusCode.NO_BINDING,
                                                            "no binding for this IA")))
                continue
            self._remove(lease)
            if decline:
                self._counters["declined"] += 1
                # §18.3.8: the server MUST make a declined address unavailable to others.
                self._by_address[lease.address] = Lease(
                    b"", 0, lease.address, LeaseState.DECLINED, now + self.config.decline_hold_time)
            else:
                self._counters["released"] += 1
        reply.ia_na = tuple(unknown)
        return reply

    def _confirm(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message | None:
        addresses = [a.address for ia in msg.ia_na for a in ia.addresses]
        if not addresses:
            self._counters["confirm_without_addresses"] += 1
            return None  # §18.3.3: no addresses to check: the server MUST NOT reply
        reply = self._reply_to(msg, MessageType.REPLY, options=False)
        # §18.3.3: all addresses on this link: Success, else NotOnLink.
        if all(a in self.config.prefix for a in addresses):
            reply.status = _status(StatusCode.SUCCESS, "all addresses on link")
        else:
            reply.status = _status(StatusCode.NOT_ON_LINK, "address not on this link")
        return reply

    def _information_request(self, msg: Dhcpv6Message, now: float) -> Dhcpv6Message:
        # §18.3.6: configuration only; the Client ID is echoed if the client sent one.
        reply = self._reply_to(msg, MessageType.REPLY)
        if self.config.inf_max_rt is not None and Option.INF_MAX_RT in (msg.oro or ()):
            reply.inf_max_rt = self.config.inf_max_rt
        reply.sol_max_rt = None
        return reply

    _HANDLERS: dict[int, Callable[["Dhcpv6Server", Dhcpv6Message, float],
                                  Dhcpv6Message | None]] = {
        MessageType.SOLICIT: _solicit,
        MessageType.REQUEST: _request,
        MessageType.CONFIRM: _confirm,
        MessageType.RENEW: _renew,
        MessageType.REBIND: _renew,
        MessageType.RELEASE: _release,
        MessageType.DECLINE: _decline,
        MessageType.INFORMATION_REQUEST: _information_request,
    }

    # ------------------------------------------------------------------ building replies

    def _reply_to(self, msg: Dhcpv6Message, mtype: MessageType, *,
                  options: bool = True) -> Dhcpv6Message:
        c = self.config
        reply = Dhcpv6Message(mtype, msg.transaction_id, client_id=msg.client_id,
                              server_id=c.server_duid)
        if options:
            # RFC 3646 §3 / RFC 8415 §21.7: configuration options the client asked for.
            oro = set(msg.oro or ())
            if c.dns_servers and Option.DNS_SERVERS in oro:
                reply.dns_servers = c.dns_servers
            if c.domain_list and Option.DOMAIN_LIST in oro:
                reply.domain_list = c.domain_list
            if c.sol_max_rt is not None and Option.SOL_MAX_RT in oro:
                reply.sol_max_rt = c.sol_max_rt
        return reply

    def _ia_with(self, iaid: int, address: IPv6Address,
                 extra: tuple[IaAddress, ...] = ()) -> IaNa:
        c = self.config
        # RFC 8415 §21.4: T1 0.5 and T2 0.8 times the shortest preferred lifetime.
        return IaNa(iaid, c.preferred_lifetime // 2, c.preferred_lifetime * 4 // 5,
                    (IaAddress(address, c.preferred_lifetime, c.valid_lifetime), *extra))

    def _no_prefixes(self, msg: Dhcpv6Message) -> tuple[IaPd, ...]:
        # §18.3.9/§18.3.2: an IA_PD the server will not serve carries NoPrefixAvail.
        return tuple(IaPd(pd.iaid, status=_status(StatusCode.NO_PREFIX_AVAIL,
                                                  "no prefix delegation on this link"))
                     for pd in msg.ia_pd)

    # ------------------------------------------------------------------ addresses

    def _assign(self, msg: Dhcpv6Message, ia: IaNa, now: float, *,
                bind: bool) -> Lease | None:
        """The address for this IA (held for an Advertise, or bound), or None."""
        assert msg.client_id is not None
        key = (msg.client_id, ia.iaid)
        current = self._lease_of(key)
        if current is not None:
            address = current.address
        else:
            if len(self._by_address) >= self.config.max_leases:
                self._counters["lease_table_full"] += 1
                self._exhausted = True
                return None
            address = self._choose(key, [a.address for a in ia.addresses])
            if address is None:
                self._counters["pool_exhausted"] += 1
                self._exhausted = True
                return None
        self._exhausted = False
        if bind:
            return self._bind(key[0], key[1], address, now)
        if current is not None and current.state is LeaseState.BOUND:
            return current
        lease = Lease(key[0], key[1], address, LeaseState.ADVERTISED,
                      now + self.config.advertise_hold_time)
        self._store(lease)
        return lease

    def _bind(self, duid: bytes, iaid: int, address: IPv6Address, now: float) -> Lease:
        lease = Lease(duid, iaid, address, LeaseState.BOUND, now + self.config.valid_lifetime)
        self._store(lease)
        return lease

    def _choose(self, key: tuple[bytes, int], hints: list[IPv6Address]) -> IPv6Address | None:
        for hint in hints:  # §18.3.2: the server MAY honour the client's hint
            if self._allocatable(hint):
                return hint
        c = self.config
        assert c.pool_start is not None
        start, size = int(c.pool_start), c.pool_len
        seed = key[0] + key[1].to_bytes(4, "big")
        first: IPv6Address | None = None
        for i in range(_HASH_PROBES):
            digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
            candidate = IPv6Address(start + int.from_bytes(digest[:16], "big") % size)
            if first is None:
                first = candidate
            if self._allocatable(candidate):
                return candidate
        if size <= _LINEAR_SCAN_LIMIT:
            assert first is not None
            offset = int(first) - start
            for i in range(size):
                candidate = IPv6Address(start + (offset + i) % size)
                if self._allocatable(candidate):
                    return candidate
        return None

    def _allocatable(self, address: IPv6Address) -> bool:
        c = self.config
        if not c.pool_start <= address <= c.pool_end:  # type: ignore[operator]
            return False
        if address in self._by_address or address in c.exclude:
            return False
        iid = int(address) & ((1 << 64) - 1)
        # The Subnet-Router anycast address (RFC 4291 §2.6.1) and, in a /64, the reserved
        # subnet anycast addresses (RFC 2526 §2) are never assigned.
        if address == c.prefix.network_address:
            return False
        return not (c.prefix.prefixlen == 64 and iid >= 0xFDFF_FFFF_FFFF_FF80)

    # ------------------------------------------------------------------ tables

    def _lease_of(self, key: tuple[bytes, int]) -> Lease | None:
        address = self._by_key.get(key)
        return None if address is None else self._by_address[address]

    def _store(self, lease: Lease) -> None:
        key = lease.key
        assert key is not None
        old = self._lease_of(key)
        if old is not None and old.address != lease.address:
            self._remove(old)
        self._by_address[lease.address] = lease
        self._by_key[key] = lease.address

    def _remove(self, lease: Lease) -> None:
        self._by_address.pop(lease.address, None)
        key = lease.key
        if key is not None and self._by_key.get(key) == lease.address:
            del self._by_key[key]
        self._exhausted = False

    def _drop(self, why: str) -> None:
        self._counters["dropped"] += 1
        self._counters[f"dropped_{why}"] += 1
        return None

    # ------------------------------------------------------------------ persistence

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain msgpack-able state; expiry as time remaining (the monotonic clock does not
        outlive the process)."""
        return {"version": _SNAPSHOT_VERSION,
                "leases": [{"duid": l.duid.hex(), "iaid": l.iaid, "address": str(l.address),
                            "state": l.state.value, "remaining": max(0.0, l.expires - now)}
                           for l in self._by_address.values()]}

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Replace all lease state by a snapshot; entries that no longer fit the
        configuration (outside the prefix, duplicates, full table) are counted and dropped."""
        if data.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"dhcpv6 lease snapshot version {data.get('version')!r} "
                             f"is not {_SNAPSHOT_VERSION}")
        self._by_address.clear()
        self._by_key.clear()
        for item in data.get("leases", ()):
            try:
                lease = Lease(bytes.fromhex(item["duid"]), int(item["iaid"]),
                              IPv6Address(item["address"]), LeaseState(item["state"]),
                              now + float(item["remaining"]))
            except (KeyError, TypeError, ValueError):
                self._counters["restore_dropped"] += 1
                continue
            key = lease.key
            if (lease.address not in self.config.prefix or lease.address in self._by_address
                    or len(self._by_address) >= self.config.max_leases
                    or (key is not None and key in self._by_key)):
                self._counters["restore_dropped"] += 1
                continue
            self._by_address[lease.address] = lease
            if key is not None:
                self._by_key[key] = lease.address
        self._exhausted = False
