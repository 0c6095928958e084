"""DHCPv4 client state machine (RFC 2131 §4.4, figure 5), sans-I/O.

Everything that moves the client between states is in this module, and every move goes
through `TRANSITIONS` below: read it top to bottom to see the protocol. The client takes
`now` (monotonic seconds) and received messages and returns actions: `Send` a message,
`Configure`/`Deconfigure` the interface, `CheckAddress` (ARP-probe a new address before
using it, RFC 2131 §4.4.1). The binding owns the sockets, the clock and the ARP probe.

States beyond RFC 2131 figure 5: STOPPED (not started, released, or link down; a lease kept
over a link-down still expires) and CHECKING (the ACKed address is being probed; a conflict
sends DECLINE and goes back to INIT).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Callable

from .wire import (BOOTREPLY, BROADCAST, FLAG_BROADCAST, SERVER_PORT, ZERO, DhcpMessage,
                   MessageType, Option)

INFINITE_LEASE = 0xFFFFFFFF
DEFAULT_PARAMS = (Option.SUBNET_MASK, Option.ROUTER, Option.DNS, Option.DOMAIN_NAME,
                  Option.MTU, Option.BROADCAST_ADDRESS, Option.LEASE_TIME,
                  Option.RENEWAL_TIME, Option.REBINDING_TIME, Option.CLASSLESS_ROUTES)
_REQUEST_ATTEMPTS = 4       # REQUESTING/REBOOTING: 4 + 8 + 16 + 32 s, then back to INIT
_DECLINE_WAIT = 10.0        # RFC 2131 §3.1.5: wait at least ten seconds after a DECLINE
_RESTART_AFTER_NAK = 1.0    # a server that NAKs everything must not drive a hot loop
_MIN_RENEW_RETRANSMIT = 60.0  # RFC 2131 §4.4.5: down to a minimum of 60 seconds


class State(str, Enum):
    STOPPED = "STOPPED"
    INIT = "INIT"
    SELECTING = "SELECTING"
    REQUESTING = "REQUESTING"
    CHECKING = "CHECKING"
    BOUND = "BOUND"
    RENEWING = "RENEWING"
    REBINDING = "REBINDING"
    INIT_REBOOT = "INIT-REBOOT"
    REBOOTING = "REBOOTING"


class Event(str, Enum):
    START = "start"                 # start() without a usable lease
    START_REBOOT = "start-reboot"   # start() with an unexpired lease, or link up
    DELAY_DONE = "delay-done"       # INIT/INIT-REBOOT wait over: send the first message
    OFFER = "offer"
    ACK = "ack"
    NAK = "nak"
    CHECK_OK = "check-ok"
    CHECK_CONFLICT = "check-conflict"
    RETRANSMIT = "retransmit"
    GIVE_UP = "give-up"
    T1 = "t1"
    T2 = "t2"
    LEASE_EXPIRED = "lease-expired"
    RELEASE = "release"
    LINK_DOWN = "link-down"


S, E = State, Event
TRANSITIONS: dict[State, dict[Event, State]] = {
    S.STOPPED:     {E.LEASE_EXPIRED: S.STOPPED},
    S.INIT:        {E.DELAY_DONE: S.SELECTING},
    S.SELECTING:   {E.OFFER: S.REQUESTING, E.RETRANSMIT: S.SELECTING},
    S.REQUESTING:  {E.ACK: S.CHECKING, E.NAK: S.INIT, E.RETRANSMIT: S.REQUESTING,
                    E.GIVE_UP: S.INIT},
    S.CHECKING:    {E.CHECK_OK: S.BOUND, E.CHECK_CONFLICT: S.INIT},
    S.BOUND:       {E.T1: S.RENEWING, E.LEASE_EXPIRED: S.INIT},
    S.RENEWING:    {E.ACK: S.BOUND, E.NAK: S.INIT, E.RETRANSMIT: S.RENEWING,
                    E.T2: S.REBINDING, E.LEASE_EXPIRED: S.INIT},
    S.REBINDING:   {E.ACK: S.BOUND, E.NAK: S.INIT, E.RETRANSMIT: S.REBINDING,
                    E.LEASE_EXPIRED: S.INIT},
    S.INIT_REBOOT: {E.DELAY_DONE: S.REBOOTING},
    S.REBOOTING:   {E.ACK: S.BOUND, E.NAK: S.INIT, E.RETRANSMIT: S.REBOOTING,
                    E.GIVE_UP: S.INIT, E.LEASE_EXPIRED: S.INIT},
}
# Events accepted in every state.
ANY_STATE: dict[Event, State] = {
    E.START: S.INIT, E.START_REBOOT: S.INIT_REBOOT, E.RELEASE: S.STOPPED,
    E.LINK_DOWN: S.STOPPED,
}
del S, E


@dataclass(frozen=True, slots=True)
class Lease:
    interface: IPv4Interface            # address/prefix
    server_id: IPv4Address
    acquired_at: float                  # when the REQUEST was first sent (RFC 2131 §4.4.1)
    lease_time: int                     # seconds; INFINITE_LEASE for no expiry
    t1: float                           # seconds after acquired_at
    t2: float
    routers: tuple[IPv4Address, ...] = ()
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    mtu: int | None = None
    classless_routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()

    @property
    def address(self) -> IPv4Address:
        return self.interface.ip

    @property
    def infinite(self) -> bool:
        return self.lease_time == INFINITE_LEASE

    @property
    def t1_at(self) -> float | None:
        return None if self.infinite else self.acquired_at + self.t1

    @property
    def t2_at(self) -> float | None:
        return None if self.infinite else self.acquired_at + self.t2

    @property
    def expires_at(self) -> float | None:
        return None if self.infinite else self.acquired_at + self.lease_time

    def expired(self, now: float) -> bool:
        return not self.infinite and now >= self.acquired_at + self.lease_time

    @property
    def routes(self) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
        """The routes to install: RFC 3442 §3 says a client that receives option 121 MUST
        ignore the Router option; otherwise the first router is the default gateway."""
        if self.classless_routes:
            return self.classless_routes
        if self.routers:
            return ((IPv4Network("0.0.0.0/0"), self.routers[0]),)
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {"interface": str(self.interface), "server_id": str(self.server_id),
                "acquired_at": self.acquired_at, "lease_time": self.lease_time,
                "t1": self.t1, "t2": self.t2, "routers": [str(r) for r in self.routers],
                "dns": [str(d) for d in self.dns], "domain": self.domain, "mtu": self.mtu,
                "classless_routes": [[str(n), str(g)] for n, g in self.classless_routes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Lease":
        return cls(IPv4Interface(d["interface"]), IPv4Address(d["server_id"]),
                   float(d["acquired_at"]), int(d["lease_time"]), float(d["t1"]),
                   float(d["t2"]), tuple(IPv4Address(r) for r in d.get("routers", ())),
                   tuple(IPv4Address(r) for r in d.get("dns", ())), d.get("domain"),
                   d.get("mtu"), tuple((IPv4Network(n), IPv4Address(g))
                                       for n, g in d.get("classless_routes", ())))

    @classmethod
    def from_ack(cls, ack: DhcpMessage, acquired_at: float) -> "Lease":
        lease_time = ack.lease_time
        assert lease_time is not None and ack.server_id is not None
        mask = ack.subnet_mask
        if mask is None:  # no option 1: fall back to the address's natural (classful) mask
            first = ack.yiaddr.packed[0]
            mask = "255.0.0.0" if first < 128 else "255.255.0.0" if first < 192 \
                else "255.255.255.0"
        try:
            interface = IPv4Interface(f"{ack.yiaddr}/{mask}")
        except ValueError:  # a non-contiguous mask
            interface = IPv4Interface(f"{ack.yiaddr}/32")
        # RFC 2131 §4.4.5: T1 defaults to 0.5 and T2 to 0.875 of the lease; ignore values
        # that break T1 <= T2 <= lease.
        t1, t2 = ack.renewal_time, ack.rebinding_time
        if t2 is None or not 0 < t2 <= lease_time:
            t2 = lease_time * 0.875
        if t1 is None or not 0 < t1 <= t2:
            t1 = min(lease_time * 0.5, t2)
        return cls(interface, ack.server_id, acquired_at, lease_time, float(t1), float(t2),
                   tuple(ack.routers or ()), tuple(ack.dns_servers or ()), ack.domain_name,
                   ack.mtu, tuple(ack.classless_routes or ()))


@dataclass(frozen=True, slots=True)
class Send:
    msg: DhcpMessage
    dst_ip: IPv4Address                 # BROADCAST or the server's unicast address
    src_ip: IPv4Address = ZERO          # ZERO until the client owns an address
    dst_port: int = SERVER_PORT


@dataclass(frozen=True, slots=True)
class Configure:
    lease: Lease


@dataclass(frozen=True, slots=True)
class Deconfigure:
    lease: Lease
    reason: str


@dataclass(frozen=True, slots=True)
class CheckAddress:
    """Probe `address` (ARP, RFC 5227) and answer with `address_checked`; no answer within
    the client's check timeout counts as "not in use"."""
    address: IPv4Address


Action = Send | Configure | Deconfigure | CheckAddress


class DhcpClient:
    def __init__(self, mac: bytes, *, client_id: bytes | None = None,
                 hostname: str | None = None,
                 xid_source: Callable[[], int] | random.Random | None = None,
                 rng: random.Random | None = None,
                 requested_params: tuple[int, ...] = DEFAULT_PARAMS,
                 broadcast_flag: bool = True, max_message_size: int | None = 1500,
                 start_delay: tuple[float, float] = (0.0, 0.0),
                 check_timeout: float = 2.0) -> None:
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self.mac = bytes(mac)
        self.client_id = client_id
        self.hostname = hostname
        if isinstance(xid_source, random.Random):
            rng = rng or xid_source
        self._rng = rng or random.Random()
        self._next_xid: Callable[[], int] = (
            xid_source if callable(xid_source) and not isinstance(xid_source, random.Random)
            else lambda: self._rng.getrandbits(32))
        self.requested_params = tuple(requested_params)
        self.broadcast_flag = broadcast_flag
        self.max_message_size = max_message_size
        self.start_delay = start_delay
        self.check_timeout = check_timeout
        self.state = State.STOPPED
        self.lease: Lease | None = None      # the lease in use, or the one being verified
        self._configured = False             # a Configure is in force at the binding
        self._offer: DhcpMessage | None = None
        self._pending: Lease | None = None   # ACKed, being checked
        self._xid = 0
        self._exchange_started = 0.0       # 'secs' counts from here
        self._request_sent_at = 0.0        # lease times count from here (§4.4.1)
        self._attempts = 0
        self._timer: float | None = None
        self._link_down = False
        self._counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ the table

    def _fire(self, event: Event) -> None:
        nxt = TRANSITIONS[self.state].get(event) or ANY_STATE.get(event)
        if nxt is None:
            raise RuntimeError(f"dhcp client: no transition from {self.state.value} "
                               f"on {event.value}")
        self._counters[f"{self.state.value}--{event.value}"] += 1
        self.state = nxt

    # ------------------------------------------------------------------ API

    def start(self, now: float, previous_lease: Lease | None = None) -> list[Action]:
        actions: list[Action] = []
        self._link_down = False
        if previous_lease is not None and not previous_lease.expired(now):
            if self.lease is not None and self.lease.address != previous_lease.address:
                actions += self._drop_lease("restarted with another lease")
            self.lease = previous_lease
            self._fire(Event.START_REBOOT)
            # RFC 2131 §4.4.2: INIT-REBOOT broadcasts a REQUEST for the previous address.
            return actions + self._send_reboot_request(now)
        actions += self._drop_lease("restarted")
        self._fire(Event.START)
        lo, hi = self.start_delay
        # RFC 2131 §4.4.1: MAY wait a random 1..10 s to desynchronise a mass start.
        return actions + self._enter_init(now, self._rng.uniform(lo, hi) if hi > 0 else 0.0)

    def receive(self, msg: DhcpMessage, now: float) -> list[Action]:
        actions = self.poll(now)
        if msg.op != BOOTREPLY or msg.xid != self._xid or msg.chaddr[:6] != self.mac:
            return actions + self._ignore("not_ours")
        mtype = msg.message_type
        if mtype == MessageType.OFFER and self.state is State.SELECTING:
            return actions + self._on_offer(msg, now)
        if mtype == MessageType.ACK and self.state in (State.REQUESTING, State.REBOOTING,
                                                      State.RENEWING, State.REBINDING):
            return actions + self._on_ack(msg, now)
        if mtype == MessageType.NAK and self.state in (State.REQUESTING, State.REBOOTING,
                                                      State.RENEWING, State.REBINDING):
            return actions + self._on_nak(msg, now)
        return actions + self._ignore("unexpected")

    def poll(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for _ in range(8):  # each step moves time-driven state forward; a few suffice
            event = self._due(now)
            if event is None:
                break
            actions += self._on_timer(event, now)
        return actions

    def next_deadline(self) -> float | None:
        times = [self._timer] if self._timer is not None else []
        lease = self.lease
        if lease is not None and self.state not in (State.INIT, State.SELECTING,
                                                     State.REQUESTING, State.CHECKING):
            times.append(lease.expires_at)  # type: ignore[arg-type]
            if self.state is State.BOUND:
                times.append(lease.t1_at)  # type: ignore[arg-type]
            elif self.state is State.RENEWING:
                times.append(lease.t2_at)  # type: ignore[arg-type]
        return min((t for t in times if t is not None), default=None)

    def address_checked(self, ok: bool, now: float) -> list[Action]:
        if self.state is not State.CHECKING:
            return self._ignore("late_check")
        return self._on_check(ok, now)

    def release(self, now: float) -> list[Action]:
        actions: list[Action] = []
        lease = self.lease
        if lease is not None and self.state in (State.BOUND, State.RENEWING, State.REBINDING):
            # RFC 2131 §4.4.6: RELEASE unicast to the server, ciaddr = the address.
            msg = self._message(MessageType.RELEASE, self._next_xid(), now, secs=False)
            msg.ciaddr = lease.address
            msg.server_id = lease.server_id
            msg.flags = 0
            actions.append(Send(msg, lease.server_id, lease.address))
        actions += self._drop_lease("released")
        self._fire(Event.RELEASE)
        self._timer = None
        return actions

    def link_changed(self, up: bool, now: float) -> list[Action]:
        if not up:
            if self.state is not State.STOPPED:
                self._fire(Event.LINK_DOWN)
                self._timer = None
                self._link_down = True
            return []
        if not self._link_down:
            return []
        # Link back: the network may have changed, verify the lease (RFC 2131 §3.2).
        return self.start(now, self.lease)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    # ------------------------------------------------------------------ timers

    def _due(self, now: float) -> Event | None:
        lease = self.lease
        if lease is not None and lease.expired(now) and \
                Event.LEASE_EXPIRED in TRANSITIONS[self.state]:
            return Event.LEASE_EXPIRED
        if self.state is State.BOUND and lease is not None and lease.t1_at is not None \
                and now >= lease.t1_at:
            return Event.T1
        if self.state is State.RENEWING and lease is not None and lease.t2_at is not None \
                and now >= lease.t2_at:
            return Event.T2
        if self._timer is None or now < self._timer:
            return None
        if self.state in (State.INIT, State.INIT_REBOOT):
            return Event.DELAY_DONE
        if self.state is State.CHECKING:
            return Event.CHECK_OK
        if self.state in (State.REQUESTING, State.REBOOTING) and \
                self._attempts >= _REQUEST_ATTEMPTS:
            return Event.GIVE_UP
        return Event.RETRANSMIT

    def _on_timer(self, event: Event, now: float) -> list[Action]:
        if event is Event.LEASE_EXPIRED:
            # RFC 2131 §4.4.5: at expiry the client MUST stop using the address.
            actions = self._drop_lease("lease expired")
            was_stopped = self.state is State.STOPPED
            self._fire(event)
            return actions if was_stopped else actions + self._enter_init(now, 0.0)
        if event in (Event.T1, Event.T2):
            self._fire(event)
            self._new_exchange(now)
            self._request_sent_at = now
            return self._send_renew(now)
        if event is Event.CHECK_OK:
            return self._on_check(True, now)
        if event is Event.GIVE_UP:
            self._counters["gave_up"] += 1
            actions = self._drop_lease("no answer to REQUEST")
            self._fire(event)
            return actions + self._enter_init(now, 0.0)
        if event is Event.DELAY_DONE:
            if self.state is State.INIT:
                self._fire(event)
                self._new_exchange(now)
                self._offer = None
                return self._send_discover(now)
            return self._send_reboot_request(now)  # fires DELAY_DONE itself
        self._fire(Event.RETRANSMIT)
        self._counters["retransmits"] += 1
        if self.state is State.SELECTING:
            return self._send_discover(now)
        if self.state is State.REQUESTING:
            return self._send_select_request(now)
        if self.state is State.REBOOTING:
            return self._send_reboot_request(now, retransmit=True)
        return self._send_renew(now)

    def _backoff(self, now: float) -> None:
        # RFC 2131 §4.1: 4 s, 8 s, ... up to 64 s, each randomised by uniform -1..+1 s.
        base = min(4.0 * 2 ** self._attempts, 64.0)
        self._timer = now + base + self._rng.uniform(-1.0, 1.0)
        self._attempts += 1

    def _new_exchange(self, now: float) -> None:
        self._xid = self._next_xid() & 0xFFFFFFFF
        self._exchange_started = now
        self._attempts = 0

    def _enter_init(self, now: float, delay: float) -> list[Action]:
        self._timer = now + delay
        self._pending = None
        return self.poll(now) if delay <= 0 else []

    # ------------------------------------------------------------------ messages in

    def _on_offer(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.server_id is None or not _usable(msg.yiaddr):
            return self._ignore("bad_offer")
        # First acceptable offer wins (RFC 2131 §4.4.1 lets the client choose).
        self._fire(Event.OFFER)
        self._offer = msg
        self._attempts = 0
        return self._send_select_request(now)

    def _on_ack(self, msg: DhcpMessage, now: float) -> list[Action]:
        if msg.server_id is None or msg.lease_time is None:
            return self._ignore("bad_ack")  # table 3: both MUST be in an ACK
        if self.state is State.REQUESTING:
            assert self._offer is not None
            if msg.server_id != self._offer.server_id or msg.yiaddr != self._offer.yiaddr:
                return self._ignore("ack_mismatch")
        else:
            assert self.lease is not None
            if msg.yiaddr != self.lease.address:
                return self._ignore("ack_mismatch")
            if self.state is State.RENEWING and msg.server_id != self.lease.server_id:
                return self._ignore("ack_mismatch")
        lease = Lease.from_ack(msg, self._request_sent_at)
        if lease.expired(now):
            return self._ignore("ack_expired")
        if self.state is State.REQUESTING:
            self._fire(Event.ACK)
            self._pending = lease
            # RFC 2131 §4.4.1: the client SHOULD check the address is not already in use.
            self._timer = now + self.check_timeout
            return [CheckAddress(lease.address)]
        self._fire(Event.ACK)
        return self._bind(lease)

    def _on_nak(self, msg: DhcpMessage, now: float) -> list[Action]:
        if self.state is State.REQUESTING and self._offer is not None and \
                msg.server_id not in (None, self._offer.server_id):
            return self._ignore("nak_other_server")
        if self.state is State.RENEWING and self.lease is not None and \
                msg.server_id not in (None, self.lease.server_id):
            return self._ignore("nak_other_server")
        # RFC 2131 §4.4.2/§4.4.5: on DHCPNAK the client stops using the address, restarts.
        self._counters["naks"] += 1
        actions = self._drop_lease("NAK")
        self._fire(Event.NAK)
        return actions + self._enter_init(now, _RESTART_AFTER_NAK)

    def _on_check(self, ok: bool, now: float) -> list[Action]:
        lease = self._pending
        assert lease is not None
        if ok:
            self._fire(Event.CHECK_OK)
            return self._bind(lease)
        # RFC 2131 §4.4.1: address in use -> the client MUST send DHCPDECLINE and restart.
        self._counters["declined"] += 1
        decline = self._message(MessageType.DECLINE, self._next_xid(), now, secs=False)
        decline.flags = 0
        decline.requested_ip = lease.address
        decline.server_id = lease.server_id
        self._fire(Event.CHECK_CONFLICT)
        return [Send(decline, BROADCAST)] + self._enter_init(now, _DECLINE_WAIT)

    def _bind(self, lease: Lease) -> list[Action]:
        self.lease = lease
        self._pending = None
        self._offer = None
        self._timer = None
        self._configured = True
        # Re-asserted on every ACK: the binding reconciles, renewals update the times.
        return [Configure(lease)]

    def _drop_lease(self, reason: str) -> list[Action]:
        lease, was_configured = self.lease, self._configured
        self.lease = None
        self._configured = False
        self._pending = None
        if lease is not None and was_configured:
            return [Deconfigure(lease, reason)]
        return []

    def _ignore(self, why: str) -> list[Action]:
        self._counters[f"ignored_{why}"] += 1
        return []

    # ------------------------------------------------------------------ messages out

    def _message(self, mtype: MessageType, xid: int, now: float, *,
                 secs: bool = True) -> DhcpMessage:
        msg = DhcpMessage(xid=xid, chaddr=self.mac,
                          flags=FLAG_BROADCAST if self.broadcast_flag else 0,
                          secs=int(max(0.0, now - self._exchange_started)) if secs else 0)
        msg.message_type = mtype
        if self.client_id is not None:
            msg.client_id = self.client_id
        return msg

    def _with_params(self, msg: DhcpMessage) -> DhcpMessage:
        if self.hostname:
            msg.hostname = self.hostname
        if self.requested_params:
            msg.parameter_request_list = bytes(self.requested_params)
        if self.max_message_size is not None:
            msg.max_message_size = self.max_message_size
        return msg

    def _send_discover(self, now: float) -> list[Action]:
        msg = self._with_params(self._message(MessageType.DISCOVER, self._xid, now))
        self._backoff(now)
        return [Send(msg, BROADCAST)]

    def _send_select_request(self, now: float) -> list[Action]:
        offer = self._offer
        assert offer is not None
        # RFC 2131 §4.4.1: same xid as the OFFER; 'server identifier' and 'requested IP'.
        msg = self._with_params(self._message(MessageType.REQUEST, self._xid, now))
        msg.requested_ip = offer.yiaddr
        msg.server_id = offer.server_id
        if self._attempts == 0:
            self._request_sent_at = now
        self._backoff(now)
        return [Send(msg, BROADCAST)]

    def _send_reboot_request(self, now: float, retransmit: bool = False) -> list[Action]:
        lease = self.lease
        assert lease is not None
        if self.state is State.INIT_REBOOT:
            self._fire(Event.DELAY_DONE)
        if not retransmit:
            self._new_exchange(now)
            self._request_sent_at = now
        # RFC 2131 §4.4.2: no server id, 'requested IP' = previous address, ciaddr zero.
        msg = self._with_params(self._message(MessageType.REQUEST, self._xid, now))
        msg.requested_ip = lease.address
        self._backoff(now)
        return [Send(msg, BROADCAST)]

    def _send_renew(self, now: float) -> list[Action]:
        lease = self.lease
        assert lease is not None
        msg = self._with_params(self._message(MessageType.REQUEST, self._xid, now))
        msg.flags = 0  # the client owns its address: unicast replies reach it
        msg.ciaddr = lease.address  # §4.4.5: ciaddr filled, no server id / requested IP
        # §4.4.5: retransmit after half the time to T2 (RENEWING) or to expiry
        # (REBINDING), but not more often than every 60 s.
        if self.state is State.RENEWING:
            dst, until = lease.server_id, lease.t2_at
        else:
            dst, until = BROADCAST, lease.expires_at
        assert until is not None
        self._timer = now + max(_MIN_RENEW_RETRANSMIT, (until - now) / 2)
        return [Send(msg, dst, lease.address)]


def _usable(address: IPv4Address) -> bool:
    return not (address == ZERO or address == BROADCAST or address.is_multicast
                or address.is_loopback)
