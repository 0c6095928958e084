"""DHCPv6 client for an uplink (RFC 8415 §18.2), sans-I/O.

Every move between states goes through `TRANSITIONS`; read it top to bottom to see the
protocol. The client takes UDP payloads and `now` (monotonic seconds) and returns actions:
`Send` a message to ff02::1:2 port 547, `AddressBound`/`AddressLost` for IA_NA addresses,
`PrefixDelegated`/`PrefixLost` for IA_PD prefixes, `DnsServers` when the server's DNS
configuration changes. The binding owns the socket, the clock, duplicate address detection
(it answers a failed DAD with `dad_failed`) and the routes.

Leases are held per address and per prefix, each with its own lifetimes. A Reply adds and
refreshes leases and never shortens the life of one it does not mention (§18.2.10.1); T1 and
T2 are the earliest over the IAs the last Reply carried. One message exchange at a time is in
flight (`_Exchange`), retransmitted per §15.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Callable, Mapping

from .dhcpv6_retransmit import Retransmission
from .dhcpv6_wire import (ALL_DHCP_RELAY_AGENTS_AND_SERVERS, CLIENT_PORT, INFINITY,
                          SERVER_PORT, Dhcpv6Message, Dhcpv6ParseError, IaAddress, IaNa,
                          IaPd, IaPrefix, MessageType, Option, RelayMessage, Status,
                          StatusCode, parse_message)

# RFC 8415 §7.6: transmission and retransmission parameters (seconds).
SOL_MAX_DELAY = 1.0
SOL_TIMEOUT = 1.0
SOL_MAX_RT = 3600.0
REQ_TIMEOUT = 1.0
REQ_MAX_RT = 30.0
REQ_MAX_RC = 10
REN_TIMEOUT = 10.0
REN_MAX_RT = 600.0
REB_TIMEOUT = 10.0
REB_MAX_RT = 600.0
REL_TIMEOUT = 1.0
REL_MAX_RC = 4
DEC_TIMEOUT = 1.0
DEC_MAX_RC = 4
# RFC 8415 §21.24: a client MUST ignore SOL_MAX_RT values outside 60..86400.
SOL_MAX_RT_RANGE = (60, 86400)
_SNAPSHOT_VERSION = 1


class State(str, Enum):
    STOPPED = "STOPPED"
    SOLICITING = "SOLICITING"     # Solicit sent, collecting Advertises (§18.2.1, §18.2.9)
    REQUESTING = "REQUESTING"     # Request to the chosen server (§18.2.2)
    BOUND = "BOUND"
    RENEWING = "RENEWING"         # T1 passed: Renew to our server (§18.2.4)
    REBINDING = "REBINDING"       # T2 passed: Rebind to any server (§18.2.5)
    DECLINING = "DECLINING"       # DAD failed: Decline (§18.2.8), then solicit again
    RELEASING = "RELEASING"       # stopped with leases: Release (§18.2.7)


class Event(str, Enum):
    START = "start"
    RESUME = "resume"                   # start() with leases restored from a snapshot
    ADVERTISE_CHOSEN = "advertise-chosen"
    REPLY = "reply"                     # a Reply gave or refreshed leases
    REPLY_EMPTY = "reply-empty"         # a Reply to Request gave nothing usable
    NO_BINDING = "no-binding"           # Renew/Rebind answered NoBinding: Request again
    NOT_ON_LINK = "not-on-link"
    RETRANSMIT = "retransmit"
    GIVE_UP = "give-up"                 # MRC/MRD reached (§15)
    T1 = "t1"
    T2 = "t2"
    ALL_EXPIRED = "all-expired"
    DAD_FAILED = "dad-failed"
    RELEASE = "release"
    STOP = "stop"


S, E = State, Event
TRANSITIONS: dict[State, dict[Event, State]] = {
    S.STOPPED:    {E.START: S.SOLICITING, E.RESUME: S.BOUND},
    S.SOLICITING: {E.ADVERTISE_CHOSEN: S.REQUESTING, E.REPLY: S.BOUND,
                   E.REPLY_EMPTY: S.SOLICITING, E.NOT_ON_LINK: S.SOLICITING,
                   E.RETRANSMIT: S.SOLICITING},
    S.REQUESTING: {E.REPLY: S.BOUND, E.REPLY_EMPTY: S.SOLICITING,
                   E.NOT_ON_LINK: S.SOLICITING, E.RETRANSMIT: S.REQUESTING,
                   E.GIVE_UP: S.SOLICITING},
    S.BOUND:      {E.T1: S.RENEWING, E.T2: S.REBINDING, E.ALL_EXPIRED: S.SOLICITING},
    S.RENEWING:   {E.REPLY: S.BOUND, E.NO_BINDING: S.REQUESTING, E.RETRANSMIT: S.RENEWING,
                   E.T2: S.REBINDING, E.ALL_EXPIRED: S.SOLICITING},
    S.REBINDING:  {E.REPLY: S.BOUND, E.NO_BINDING: S.REQUESTING,
                   E.RETRANSMIT: S.REBINDING, E.ALL_EXPIRED: S.SOLICITING},
    S.DECLINING:  {E.REPLY: S.SOLICITING, E.GIVE_UP: S.SOLICITING,
                   E.RETRANSMIT: S.DECLINING},
    S.RELEASING:  {E.REPLY: S.STOPPED, E.GIVE_UP: S.STOPPED, E.RETRANSMIT: S.RELEASING,
                   E.START: S.SOLICITING},
}
# Accepted in every state but STOPPED.
ANY_STATE: dict[Event, State] = {E.DAD_FAILED: S.DECLINING, E.RELEASE: S.RELEASING,
                                 E.STOP: S.STOPPED}
del S, E


# ---------------------------------------------------------------- actions

@dataclass(frozen=True, slots=True)
class Send:
    payload: bytes
    dst: IPv6Address = ALL_DHCP_RELAY_AGENTS_AND_SERVERS
    dst_port: int = SERVER_PORT
    src_port: int = CLIENT_PORT


@dataclass(frozen=True, slots=True)
class AddressBound:
    """Configure (or refresh the lifetimes of) an address; times are the caller's clock,
    math.inf for an infinite lifetime. The interface is a /128: DHCPv6 says nothing about
    which prefixes are on-link, Router Advertisements do (RFC 5942 §4)."""
    iface: IPv6Interface
    preferred_until: float
    valid_until: float


@dataclass(frozen=True, slots=True)
class AddressLost:
    address: IPv6Address
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PrefixDelegated:
    prefix: IPv6Network
    preferred_until: float
    valid_until: float


@dataclass(frozen=True, slots=True)
class PrefixLost:
    prefix: IPv6Network
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DnsServers:
    """The DNS configuration of the last Reply (RFC 3646); empty when it is gone."""
    servers: tuple[IPv6Address, ...]
    domains: tuple[str, ...] = ()


Action = Send | AddressBound | AddressLost | PrefixDelegated | PrefixLost | DnsServers


def split_delegated(prefix: IPv6Network, count: int) -> list[IPv6Network]:
    """The first `count` /64s of a delegated prefix, one per guest-facing port."""
    prefix = IPv6Network(prefix)
    if prefix.prefixlen > 64:
        raise ValueError(f"{prefix} is longer than /64: no /64 fits in it")
    available = 1 << (64 - prefix.prefixlen)
    if not 0 <= count <= available:
        raise ValueError(f"{prefix} holds {available} /64s, not {count}")
    base = int(prefix.network_address)
    return [IPv6Network((base + (i << 64), 64)) for i in range(count)]


# ---------------------------------------------------------------- internals

@dataclass(slots=True)
class _Life:
    preferred_until: float
    valid_until: float


@dataclass(slots=True)
class _Exchange:
    """One message exchange: what to send and its §15 retransmission state."""
    kind: MessageType
    xid: int
    timer: Retransmission
    server_id: bytes | None = None
    declined: tuple[IPv6Address, ...] = ()
    offer: Dhcpv6Message | None = None  # the chosen Advertise (Request)
    released: tuple[tuple[IaNa, ...], tuple[IaPd, ...]] = ((), ())
    advertises: list[tuple[tuple[int, int], int, Dhcpv6Message]] = field(default_factory=list)


def _until(now: float, seconds: int) -> float:
    return math.inf if seconds == INFINITY else now + seconds


def _ok(status: Status | None) -> bool:
    return status is None or status.code == StatusCode.SUCCESS


def _usable_address(a: IaAddress) -> bool:
    # §21.6: a client discards addresses whose preferred lifetime exceeds the valid one.
    addr = a.address
    return (_ok(a.status) and a.preferred <= a.valid and not addr.is_multicast
            and not addr.is_link_local and not addr.is_unspecified and not addr.is_loopback)


def _usable_prefix(p: IaPrefix) -> bool:
    # §21.22: same rule for prefixes; a delegated ::/0 or link-local prefix is nonsense.
    net = p.prefix
    return (_ok(p.status) and p.preferred <= p.valid and net.prefixlen > 0
            and not net.is_multicast and not net.is_link_local)


def _renew_times(t1: int, t2: int, preferred: list[int], valid: list[int]) -> tuple[float, float]:
    """Seconds to T1 and T2 for one IA (math.inf: never)."""
    shortest = min(preferred) or min(valid)  # all deprecated: measure by validity instead
    # RFC 8415 §14.2: T1/T2 of 0 leave the time to the client: 0.5 and 0.8 of the shortest
    # preferred lifetime.
    r1 = (math.inf if shortest == INFINITY else 0.5 * shortest) if t1 == 0 else \
        (math.inf if t1 == INFINITY else float(t1))
    r2 = (math.inf if shortest == INFINITY else 0.8 * shortest) if t2 == 0 else \
        (math.inf if t2 == INFINITY else float(t2))
    return r1, max(r1, r2)


class Dhcpv6Client:
    def __init__(self, duid: bytes, *, iaid: int = 1, request_address: bool = True,
                 request_prefix: int | None = None, pd_iaid: int = 1,
                 rapid_commit: bool = False,
                 requested_options: tuple[int, ...] = (Option.DNS_SERVERS,
                                                       Option.DOMAIN_LIST),
                 rng: random.Random | None = None,
                 xid_source: Callable[[], int] | None = None,
                 start_delay: float = SOL_MAX_DELAY) -> None:
        """`request_prefix`: ask for an IA_PD with this prefix-length hint (0: no hint);
        None: no prefix delegation."""
        if not request_address and request_prefix is None:
            raise ValueError("ask for an address, a prefix or both")
        if request_prefix is not None and not 0 <= request_prefix <= 128:
            raise ValueError("prefix length hint must be 0..128")
        self.duid = bytes(duid)
        self.iaid = iaid
        self.pd_iaid = pd_iaid
        self.request_address = request_address
        self.request_prefix = request_prefix
        self.rapid_commit = rapid_commit
        # RFC 8415 §18.2.1: the ORO MUST ask for SOL_MAX_RT.
        self.oro = tuple(dict.fromkeys((*requested_options, Option.SOL_MAX_RT)))
        self._rng = rng or random.Random()
        self._next_xid = xid_source or (lambda: self._rng.getrandbits(24))
        self.start_delay = start_delay
        self.state = State.STOPPED
        self.server_id: bytes | None = None
        self.addresses: dict[IPv6Address, _Life] = {}
        self.prefixes: dict[IPv6Network, _Life] = {}
        self.dns: DnsServers = DnsServers(())
        self.sol_max_rt = SOL_MAX_RT
        self._t1_at = math.inf
        self._t2_at = math.inf
        self._exchange: _Exchange | None = None
        self._counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ the table

    def _fire(self, event: Event) -> None:
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None and self.state is not State.STOPPED:
            nxt = ANY_STATE.get(event)
        if nxt is None:
            raise RuntimeError(f"dhcpv6 client: no transition from {self.state.value} "
                               f"on {event.value}")
        self._counters[f"{self.state.value}--{event.value}"] += 1
        self.state = nxt

    # ------------------------------------------------------------------ API

    def start(self, now: float) -> list[Action]:
        if self.state not in (State.STOPPED, State.RELEASING):
            return self._ignore("already_started")
        if self.state is State.STOPPED and (self.addresses or self.prefixes):
            self._fire(Event.RESUME)  # leases restored from a snapshot
            actions: list[Action] = self._announce_all()
            return actions + ([self.dns] if self.dns.servers or self.dns.domains else []) \
                + self.poll(now)
        self._fire(Event.START)
        return self._begin_solicit(now, self._rng.uniform(0.0, self.start_delay))

    def stop(self, now: float) -> list[Action]:
        """Release every lease (§18.2.7) and stop; the Release is retransmitted by poll()
        until answered or REL_MAX_RC is reached, but nothing is in use any more."""
        if self.state is State.STOPPED:
            return []
        holding = bool(self.addresses or self.prefixes)
        leases = self._lease_ias()
        actions = self._drop_all("released")
        if self.server_id is None or not holding:
            self._fire(Event.STOP)
            self._exchange = None
            return actions
        self._fire(Event.RELEASE)
        self._exchange = _Exchange(MessageType.RELEASE, self._xid(),
                                   Retransmission(REL_TIMEOUT, mrc=REL_MAX_RC, next_at=now),
                                   server_id=self.server_id, released=leases)
        return actions + self._transmit(now)

    def dad_failed(self, address: IPv6Address, now: float) -> list[Action]:
        """The binding found `address` in use on the link: stop using it, Decline it."""
        address = IPv6Address(address)
        if self.state is State.STOPPED or address not in self.addresses \
                or self.server_id is None:
            return self._ignore("dad_unknown_address")
        # RFC 8415 §18.2.8: the client MUST NOT use a declined address.
        del self.addresses[address]
        declined = (address,)
        if self.state is State.DECLINING and self._exchange is not None:
            declined = self._exchange.declined + declined
        self._fire(Event.DAD_FAILED)
        self._counters["declined"] += 1
        self._exchange = _Exchange(MessageType.DECLINE, self._xid(),
                                   Retransmission(DEC_TIMEOUT, mrc=DEC_MAX_RC, next_at=now),
                                   server_id=self.server_id, declined=declined)
        return [AddressLost(address, "duplicate address")] + self._transmit(now)

    def feed(self, payload: bytes, src: IPv6Address, now: float) -> list[Action]:
        """A UDP payload received on port 546 from `src`."""
        actions = self.poll(now)
        try:
            msg = parse_message(payload)
        except Dhcpv6ParseError:
            self._counters["malformed"] += 1
            return actions
        if isinstance(msg, RelayMessage):
            return actions + self._ignore("relay")
        ex = self._exchange
        # RFC 8415 §16.3, §16.10: discard without a Server ID, without our Client ID, or
        # with another transaction id.
        if ex is None or ex.timer.count == 0 or msg.transaction_id != ex.xid:
            return actions + self._ignore("not_ours")
        if msg.client_id != self.duid or msg.server_id is None:
            return actions + self._ignore("bad_identifiers")
        self._take_sol_max_rt(msg)
        if msg.msg_type == MessageType.ADVERTISE and self.state is State.SOLICITING:
            return actions + self._on_advertise(msg, now)
        if msg.msg_type == MessageType.REPLY:
            return actions + self._on_reply(msg, now)
        return actions + self._ignore("unexpected")

    def poll(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for _ in range(16):  # each step moves time-driven state forward; a few suffice
            step = self._step(now)
            if step is None:
                break
            actions += step
        return actions

    def next_deadline(self) -> float | None:
        times = [life.valid_until for life in (*self.addresses.values(),
                                               *self.prefixes.values())]
        if self._exchange is not None:
            times.append(self._exchange.timer.next_at)
        if self.state is State.BOUND:
            times += [self._t1_at, self._t2_at]
        elif self.state is State.RENEWING:
            times.append(self._t2_at)
        return min((t for t in times if t != math.inf), default=None)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    # ------------------------------------------------------------------ time

    def _step(self, now: float) -> list[Action] | None:
        """The next time-driven step due at `now`, done; None when nothing is due."""
        lost = self._expire(now)
        if lost:
            if not (self.addresses or self.prefixes) and \
                    Event.ALL_EXPIRED in TRANSITIONS[self.state]:
                self._fire(Event.ALL_EXPIRED)
                self._t1_at = self._t2_at = math.inf
                return lost + self._clear_dns() + self._begin_solicit(now, 0.0)
            return lost
        if self.state in (State.BOUND, State.RENEWING) and now >= self._t2_at:
            self._fire(Event.T2)
            return self._begin_rebind(now)
        if self.state is State.BOUND and now >= self._t1_at:
            self._fire(Event.T1)
            return self._begin_renew(now)
        ex = self._exchange
        if ex is None or now < ex.timer.next_at:
            return None
        if ex.timer.count == 0:
            return self._transmit(now)  # the (delayed) first transmission
        if self.state is State.SOLICITING and ex.advertises:
            # RFC 8415 §18.2.9: once the first RT has passed, take the best Advertise.
            return self._choose(now)
        if ex.timer.failed(now):
            return self._give_up(now)
        self._fire(Event.RETRANSMIT)
        self._counters["retransmits"] += 1
        return self._transmit(now)

    def _expire(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for address in [a for a, life in self.addresses.items() if life.valid_until <= now]:
            del self.addresses[address]
            actions.append(AddressLost(address, "valid lifetime expired"))
        for prefix in [p for p, life in self.prefixes.items() if life.valid_until <= now]:
            del self.prefixes[prefix]
            actions.append(PrefixLost(prefix, "valid lifetime expired"))
        return actions

    def _give_up(self, now: float) -> list[Action]:
        self._counters[f"gave_up_{self.state.value}"] += 1
        self._fire(Event.GIVE_UP)
        if self.state is State.STOPPED:
            self._exchange = None
            return []
        return self._begin_solicit(now, 0.0)

    def _transmit(self, now: float) -> list[Action]:
        ex = self._exchange
        assert ex is not None
        ex.timer.transmitted(now, self._rng)
        return [Send(self._message(ex, now).build())]

    def _xid(self) -> int:
        return self._next_xid() & 0xFFFFFF

    # ------------------------------------------------------------------ exchanges

    def _begin_solicit(self, now: float, delay: float) -> list[Action]:
        self._exchange = _Exchange(MessageType.SOLICIT, self._xid(), Retransmission(
            SOL_TIMEOUT, self.sol_max_rt, next_at=now + delay, positive_first=True))
        # RFC 8415 §18.2.1: the first Solicit SHOULD be delayed by 0..SOL_MAX_DELAY.
        return self._transmit(now) if delay <= 0 else []

    def _begin_request(self, now: float, server_id: bytes,
                       offer: Dhcpv6Message | None) -> list[Action]:
        self._exchange = _Exchange(MessageType.REQUEST, self._xid(),
                                   Retransmission(REQ_TIMEOUT, REQ_MAX_RT, REQ_MAX_RC),
                                   server_id=server_id, offer=offer)
        return self._transmit(now)

    def _begin_renew(self, now: float) -> list[Action]:
        # §18.2.4: MRD is the time until T2.
        self._exchange = _Exchange(MessageType.RENEW, self._xid(), Retransmission(
            REN_TIMEOUT, REN_MAX_RT, deadline=self._t2_at), server_id=self.server_id)
        return self._transmit(now)

    def _begin_rebind(self, now: float) -> list[Action]:
        # §18.2.5: MRD is the time until the valid lifetimes of all leases end.
        lives = [life.valid_until for life in (*self.addresses.values(),
                                               *self.prefixes.values())]
        self._exchange = _Exchange(MessageType.REBIND, self._xid(), Retransmission(
            REB_TIMEOUT, REB_MAX_RT, deadline=max(lives, default=math.inf)))
        return self._transmit(now)

    # ------------------------------------------------------------------ messages in

    def _on_advertise(self, msg: Dhcpv6Message, now: float) -> list[Action]:
        ex = self._exchange
        assert ex is not None
        kinds = self._offered_kinds(msg)
        if not kinds:
            # §18.2.9: ignore an Advertise without addresses or prefixes (SOL_MAX_RT and
            # INF_MAX_RT in it were processed already).
            return self._ignore("advertise_empty")
        preference = msg.preference or 0
        ex.advertises.append(((preference, kinds), -len(ex.advertises), msg))
        # §18.2.9: preference 255 is taken at once; after the first RT, the first one is.
        if preference == 255 or ex.timer.count > 1:
            return self._choose(now)
        return []

    def _choose(self, now: float) -> list[Action]:
        ex = self._exchange
        assert ex is not None and ex.advertises
        _, _, best = max(ex.advertises, key=lambda a: (a[0], a[1]))
        self._fire(Event.ADVERTISE_CHOSEN)
        assert best.server_id is not None
        return self._begin_request(now, best.server_id, best)

    def _on_reply(self, msg: Dhcpv6Message, now: float) -> list[Action]:
        ex = self._exchange
        assert ex is not None
        if self.state in (State.RELEASING, State.DECLINING):
            # §18.2.10.1: the Release/Decline is done whatever status the Reply carries.
            self._exchange = None
            self._fire(Event.REPLY)
            return [] if self.state is State.STOPPED else self._begin_solicit(now, 0.0)
        if self.state is State.SOLICITING and not (self.rapid_commit and msg.rapid_commit):
            return self._ignore("reply_without_rapid_commit")
        if self.state in (State.REQUESTING, State.RENEWING) and msg.server_id != ex.server_id:
            return self._ignore("reply_other_server")
        code = None if msg.status is None else msg.status.code
        if code in (StatusCode.UNSPEC_FAIL, StatusCode.USE_MULTICAST):
            # §18.2.10: keep retransmitting, at the rate §15 already limits.
            return self._ignore("reply_unspec_fail")
        if code == StatusCode.NOT_ON_LINK and self.state in (State.SOLICITING,
                                                             State.REQUESTING):
            # §18.2.10.1: NotOnLink to a Request: restart server discovery.
            self._fire(Event.NOT_ON_LINK)
            return self._begin_solicit(now, 0.0)
        actions, refreshed, no_binding = self._apply(msg, now)
        if no_binding and self.state in (State.RENEWING, State.REBINDING):
            # §18.2.10.1: NoBinding for an IA: the client sends a Request to re-establish it.
            self._fire(Event.NO_BINDING)
            assert msg.server_id is not None
            return actions + self._begin_request(now, msg.server_id, None)
        if not refreshed:
            if self.state in (State.RENEWING, State.REBINDING):
                return actions + self._ignore("reply_without_leases")
            self._fire(Event.REPLY_EMPTY)
            return actions + self._begin_solicit(now, self._rng.uniform(0.0, SOL_TIMEOUT))
        self.server_id = msg.server_id
        self._exchange = None
        self._fire(Event.REPLY)
        dns = DnsServers(tuple(msg.dns_servers or ()), tuple(msg.domain_list or ()))
        if dns != self.dns:
            self.dns = dns
            actions.append(dns)
        return actions

    def _apply(self, msg: Dhcpv6Message, now: float) -> tuple[list[Action], bool, bool]:
        """Take the leases of a Reply (§18.2.10.1). Returns the actions, whether any lease
        was given or refreshed, and whether an IA of ours came back with NoBinding."""
        actions: list[Action] = []
        t1s: list[float] = []
        t2s: list[float] = []
        no_binding = False
        ours: list[IaNa | IaPd] = [ia for ia in msg.ia_na
                                   if self.request_address and ia.iaid == self.iaid]
        ours += [pd for pd in msg.ia_pd
                 if self.request_prefix is not None and pd.iaid == self.pd_iaid]
        for ia in ours:
            if ia.status is not None and ia.status.code == StatusCode.NO_BINDING:
                no_binding = True
                continue
            # §21.4/§21.21: an IA with T1 > T2 (both non-zero) is discarded.
            if not _ok(ia.status) or 0 < ia.t2 < ia.t1:
                self._counters["ia_discarded"] += 1
                continue
            preferred, valid = [], []
            if isinstance(ia, IaNa):
                for a in ia.addresses:
                    if not _usable_address(a):
                        self._counters["lease_discarded"] += 1
                    elif a.valid == 0:
                        if self.addresses.pop(a.address, None) is not None:
                            actions.append(AddressLost(a.address, "valid lifetime 0"))
                    else:
                        life = _Life(_until(now, a.preferred), _until(now, a.valid))
                        self.addresses[a.address] = life
                        actions.append(AddressBound(IPv6Interface((a.address, 128)),
                                                    life.preferred_until, life.valid_until))
                        preferred.append(a.preferred)
                        valid.append(a.valid)
            else:
                for p in ia.prefixes:
                    if not _usable_prefix(p):
                        self._counters["lease_discarded"] += 1
                    elif p.valid == 0:
                        if self.prefixes.pop(p.prefix, None) is not None:
                            actions.append(PrefixLost(p.prefix, "valid lifetime 0"))
                    else:
                        life = _Life(_until(now, p.preferred), _until(now, p.valid))
                        self.prefixes[p.prefix] = life
                        actions.append(PrefixDelegated(p.prefix, life.preferred_until,
                                                       life.valid_until))
                        preferred.append(p.preferred)
                        valid.append(p.valid)
            if preferred:
                r1, r2 = _renew_times(ia.t1, ia.t2, preferred, valid)
                t1s.append(now + r1)
                t2s.append(now + r2)
        if t1s:
            self._t1_at, self._t2_at = min(t1s), min(t2s)
        return actions, bool(t1s), no_binding

    def _offered_kinds(self, msg: Dhcpv6Message) -> int:
        """How many of the IA kinds we asked for the Advertise offers leases in."""
        na = self.request_address and any(
            ia.iaid == self.iaid and _ok(ia.status) and
            any(_usable_address(a) and a.valid > 0 for a in ia.addresses) for ia in msg.ia_na)
        pd = self.request_prefix is not None and any(
            ia.iaid == self.pd_iaid and _ok(ia.status) and
            any(_usable_prefix(p) and p.valid > 0 for p in ia.prefixes) for ia in msg.ia_pd)
        return int(na) + int(pd)

    def _take_sol_max_rt(self, msg: Dhcpv6Message) -> None:
        # §18.2.9/§18.2.10: the client MUST process SOL_MAX_RT, §21.24: within 60..86400.
        value = msg.sol_max_rt
        if value is None:
            return
        lo, hi = SOL_MAX_RT_RANGE
        if not lo <= value <= hi:
            self._counters["sol_max_rt_ignored"] += 1
            return
        self.sol_max_rt = float(value)
        if self._exchange is not None and self._exchange.kind is MessageType.SOLICIT:
            self._exchange.timer.mrt = self.sol_max_rt

    # ------------------------------------------------------------------ messages out

    def _lease_ias(self) -> tuple[tuple[IaNa, ...], tuple[IaPd, ...]]:
        """Our IAs holding the leases we have, lifetimes 0 (§18.2.4: the server decides)."""
        na = (IaNa(self.iaid, 0, 0, tuple(IaAddress(a, 0, 0) for a in self.addresses)),) \
            if self.request_address else ()
        pd = (IaPd(self.pd_iaid, 0, 0, tuple(IaPrefix(p, 0, 0) for p in self.prefixes)),) \
            if self.request_prefix is not None else ()
        return na, pd

    def _requested_ias(self, offer: Dhcpv6Message) -> tuple[tuple[IaNa, ...],
                                                              tuple[IaPd, ...]]:
        """§18.2.2: each IA we want, holding what the chosen server advertised in it."""
        na: tuple[IaNa, ...] = ()
        pd: tuple[IaPd, ...] = ()
        if self.request_address:
            addresses = next((ia.addresses for ia in offer.ia_na
                              if ia.iaid == self.iaid and _ok(ia.status)), ())
            na = (IaNa(self.iaid, 0, 0, tuple(IaAddress(a.address, 0, 0) for a in addresses
                                              if _usable_address(a))),)
        if self.request_prefix is not None:
            prefixes = next((ia.prefixes for ia in offer.ia_pd
                             if ia.iaid == self.pd_iaid and _ok(ia.status)), ())
            pd = (IaPd(self.pd_iaid, 0, 0, tuple(IaPrefix(p.prefix, 0, 0) for p in prefixes
                                                 if _usable_prefix(p))),)
        return na, pd

    def _message(self, ex: _Exchange, now: float) -> Dhcpv6Message:
        msg = Dhcpv6Message(ex.kind, ex.xid, client_id=self.duid,
                            elapsed_time=ex.timer.elapsed_time(now))
        kind = ex.kind
        if kind in (MessageType.REQUEST, MessageType.RENEW, MessageType.RELEASE,
                    MessageType.DECLINE):
            msg.server_id = ex.server_id  # §18.2.2, §18.2.4, §18.2.7, §18.2.8
        if kind is MessageType.SOLICIT:
            na = (IaNa(self.iaid),) if self.request_address else ()
            pd: tuple[IaPd, ...] = ()
            if self.request_prefix is not None:
                # §18.2.1: hint the prefix we hold, else the wanted length as ::/len.
                hints = tuple(IaPrefix(p, 0, 0) for p in self.prefixes) or (
                    (IaPrefix(IPv6Network(("::", self.request_prefix)), 0, 0),)
                    if self.request_prefix else ())
                pd = (IaPd(self.pd_iaid, 0, 0, hints),)
            msg.ia_na, msg.ia_pd = na, pd
            msg.rapid_commit = self.rapid_commit
        elif kind is MessageType.REQUEST and ex.offer is not None:
            msg.ia_na, msg.ia_pd = self._requested_ias(ex.offer)
        elif kind is MessageType.DECLINE:
            msg.ia_na = (IaNa(self.iaid, 0, 0, tuple(IaAddress(a, 0, 0)
                                                     for a in ex.declined)),)
        elif kind is MessageType.RELEASE:
            msg.ia_na, msg.ia_pd = ex.released
        else:  # Request after NoBinding, Renew, Rebind: the leases we hold
            msg.ia_na, msg.ia_pd = self._lease_ias()
        if kind not in (MessageType.RELEASE, MessageType.DECLINE):
            msg.oro = self.oro
        return msg

    # ------------------------------------------------------------------ leases

    def _announce_all(self) -> list[Action]:
        return ([AddressBound(IPv6Interface((a, 128)), life.preferred_until,
                              life.valid_until) for a, life in self.addresses.items()]
                + [PrefixDelegated(p, life.preferred_until, life.valid_until)
                   for p, life in self.prefixes.items()])

    def _drop_all(self, reason: str) -> list[Action]:
        # §18.2.7: the client MUST stop using the leases before it sends the Release.
        actions: list[Action] = [AddressLost(a, reason) for a in self.addresses]
        actions += [PrefixLost(p, reason) for p in self.prefixes]
        self.addresses.clear()
        self.prefixes.clear()
        self._t1_at = self._t2_at = math.inf
        return actions + self._clear_dns()

    def _clear_dns(self) -> list[Action]:
        if not (self.dns.servers or self.dns.domains):
            return []
        self.dns = DnsServers(())
        return [self.dns]

    def _ignore(self, why: str) -> list[Action]:
        self._counters[f"ignored_{why}"] += 1
        return []

    # ------------------------------------------------------------------ persistence

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain msgpack-able lease state; times are stored as seconds remaining (None:
        infinite) because the monotonic clock does not survive the process."""
        def left(t: float) -> float | None:
            return None if t == math.inf else max(0.0, t - now)
        return {
            "version": _SNAPSHOT_VERSION, "duid": self.duid.hex(),
            "server_id": None if self.server_id is None else self.server_id.hex(),
            "addresses": [[str(a), left(l.preferred_until), left(l.valid_until)]
                          for a, l in self.addresses.items()],
            "prefixes": [[str(p), left(l.preferred_until), left(l.valid_until)]
                         for p, l in self.prefixes.items()],
            "t1": left(self._t1_at), "t2": left(self._t2_at),
            "dns": [str(a) for a in self.dns.servers], "domains": list(self.dns.domains),
            "sol_max_rt": self.sol_max_rt,
        }

    def restore(self, data: Mapping[str, Any], now: float, *, downtime: float = 0.0) -> None:
        """Take the leases of a snapshot; `start` then announces them again and resumes.
        `downtime`: seconds known to have passed since the snapshot (wall clock), taken off
        every lifetime. A snapshot of another DUID is ignored (counted)."""
        if self.state is not State.STOPPED:
            raise RuntimeError("restore() before start()")
        if data.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"dhcpv6 client snapshot version {data.get('version')!r} "
                             f"is not {_SNAPSHOT_VERSION}")
        if data.get("duid") != self.duid.hex():
            self._counters["restore_other_duid"] += 1
            return

        def at(left: Any) -> float:
            return math.inf if left is None else now + float(left) - downtime
        try:
            addresses = {IPv6Address(a): _Life(at(p), at(v)) for a, p, v in data["addresses"]}
            prefixes = {IPv6Network(n): _Life(at(p), at(v)) for n, p, v in data["prefixes"]}
            server_id = None if data["server_id"] is None else bytes.fromhex(data["server_id"])
            t1, t2 = at(data["t1"]), at(data["t2"])
            dns = DnsServers(tuple(IPv6Address(a) for a in data.get("dns", ())),
                             tuple(str(d) for d in data.get("domains", ())))
            sol_max_rt = float(data.get("sol_max_rt", SOL_MAX_RT))
        except (KeyError, TypeError, ValueError):
            self._counters["restore_dropped"] += 1
            return
        self.addresses = {a: l for a, l in addresses.items() if l.valid_until > now}
        self.prefixes = {p: l for p, l in prefixes.items() if l.valid_until > now}
        self.server_id, self._t1_at, self._t2_at = server_id, t1, t2
        self.dns, self.sol_max_rt = dns, sol_max_rt
