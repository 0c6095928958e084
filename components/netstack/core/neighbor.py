"""Neighbor table and its state machine, the same for ARP (IPv4) and NDP (IPv6).

Everything that decides a neighbor entry's state lives in this module: TRANSITIONS below is the
whole machine, read top to bottom (state, event) -> (next state, actions). The states are those
of RFC 4861 §7.3.2, which Linux also applies to ARP; RFC 826 itself only says "merge and
answer". The table knows nothing of frames: it asks its sink to solicit, transmit or report
failure, so the ARP module (arp.py) and the NDP module (ndp.py) plug in the same way.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Protocol

from .config import StackConfig
from .timers import Deadlines


class State(enum.Enum):
    NONE = "NONE"               # no entry (only ever a "from" state)
    INCOMPLETE = "INCOMPLETE"   # resolution in progress, packets wait in a bounded queue
    REACHABLE = "REACHABLE"     # confirmed within reachable_time
    STALE = "STALE"             # link address known but unconfirmed; used as is
    DELAY = "DELAY"             # used while STALE: wait for upper-layer hints, then probe
    PROBE = "PROBE"             # unicast solicitations outstanding
    FAILED = "FAILED"           # resolution failed; kept briefly so `qnet status` shows it


class Ev(enum.Enum):
    SEND = "send"                   # a packet wants to go to this neighbor
    TIMEOUT = "timeout"             # the entry's timer fired, retries left
    TIMEOUT_LAST = "timeout_last"   # the timer fired and the retries are used up
    CONFIRM = "confirm"             # solicited reply: proof of two-way reachability
    LEARN_SAME = "learn_same"       # unsolicited sighting carrying the link address we have
    LEARN_NEW = "learn_new"         # unsolicited sighting with a different (or first) address
    # A different link address that may not replace ours (RFC 4861 §7.2.5: an NA with the
    # Override flag clear); only NDP sends it.
    CONTRADICT = "contradict"


class Act(enum.Enum):
    QUEUE = "queue"                   # hold the packet until resolved
    TRANSMIT = "transmit"             # send the packet to the known link address
    SOLICIT_BROADCAST = "solicit_bc"  # broadcast request (ARP who-has to ff:ff:..)
    SOLICIT_UNICAST = "solicit_uc"    # unicast request to the known link address
    SET_LLADDR = "set_lladdr"         # take the link address from the event
    FLUSH_QUEUE = "flush"             # transmit everything queued
    FAIL_QUEUE = "fail"               # drop the queue, report unreachable
    RESTART_TIMER = "restart"         # re-arm the timer of an unchanged state
    DELETE = "delete"                 # forget the entry


S, E, A = State, Ev, Act
TRANSITIONS: dict[tuple[State, Ev], tuple[State, tuple[Act, ...]]] = {
    (S.NONE, E.SEND):               (S.INCOMPLETE, (A.QUEUE, A.SOLICIT_BROADCAST)),
    (S.NONE, E.CONFIRM):            (S.STALE, (A.SET_LLADDR,)),     # unsolicited: no proof
    (S.NONE, E.LEARN_NEW):          (S.STALE, (A.SET_LLADDR,)),

    (S.INCOMPLETE, E.SEND):         (S.INCOMPLETE, (A.QUEUE,)),
    (S.INCOMPLETE, E.TIMEOUT):      (S.INCOMPLETE, (A.SOLICIT_BROADCAST,)),
    (S.INCOMPLETE, E.TIMEOUT_LAST): (S.FAILED, (A.FAIL_QUEUE,)),
    (S.INCOMPLETE, E.CONFIRM):      (S.REACHABLE, (A.SET_LLADDR, A.FLUSH_QUEUE)),
    (S.INCOMPLETE, E.LEARN_NEW):    (S.STALE, (A.SET_LLADDR, A.FLUSH_QUEUE)),
    (S.INCOMPLETE, E.LEARN_SAME):   (S.STALE, (A.SET_LLADDR, A.FLUSH_QUEUE)),

    (S.REACHABLE, E.SEND):          (S.REACHABLE, (A.TRANSMIT,)),
    (S.REACHABLE, E.TIMEOUT):       (S.STALE, ()),
    (S.REACHABLE, E.CONFIRM):       (S.REACHABLE, (A.SET_LLADDR, A.RESTART_TIMER)),
    (S.REACHABLE, E.LEARN_SAME):    (S.REACHABLE, ()),
    (S.REACHABLE, E.LEARN_NEW):     (S.STALE, (A.SET_LLADDR,)),
    (S.REACHABLE, E.CONTRADICT):    (S.STALE, ()),                  # keep the address, doubt it

    (S.STALE, E.SEND):              (S.DELAY, (A.TRANSMIT,)),
    (S.STALE, E.TIMEOUT):           (S.NONE, (A.DELETE,)),          # unused for stale_gc_time
    (S.STALE, E.CONFIRM):           (S.REACHABLE, (A.SET_LLADDR,)),
    (S.STALE, E.LEARN_SAME):        (S.STALE, ()),
    (S.STALE, E.LEARN_NEW):         (S.STALE, (A.SET_LLADDR, A.RESTART_TIMER)),

    (S.DELAY, E.SEND):              (S.DELAY, (A.TRANSMIT,)),
    (S.DELAY, E.TIMEOUT):           (S.PROBE, (A.SOLICIT_UNICAST,)),
    (S.DELAY, E.CONFIRM):           (S.REACHABLE, (A.SET_LLADDR,)),
    (S.DELAY, E.LEARN_SAME):        (S.DELAY, ()),
    (S.DELAY, E.LEARN_NEW):         (S.STALE, (A.SET_LLADDR,)),

    (S.PROBE, E.SEND):              (S.PROBE, (A.TRANSMIT,)),
    (S.PROBE, E.TIMEOUT):           (S.PROBE, (A.SOLICIT_UNICAST,)),
    (S.PROBE, E.TIMEOUT_LAST):      (S.FAILED, (A.FAIL_QUEUE,)),
    (S.PROBE, E.CONFIRM):           (S.REACHABLE, (A.SET_LLADDR,)),
    (S.PROBE, E.LEARN_SAME):        (S.PROBE, ()),
    (S.PROBE, E.LEARN_NEW):         (S.STALE, (A.SET_LLADDR,)),

    (S.FAILED, E.SEND):             (S.INCOMPLETE, (A.QUEUE, A.SOLICIT_BROADCAST)),
    (S.FAILED, E.TIMEOUT):          (S.NONE, (A.DELETE,)),
    (S.FAILED, E.CONFIRM):          (S.REACHABLE, (A.SET_LLADDR,)),
    (S.FAILED, E.LEARN_NEW):        (S.STALE, (A.SET_LLADDR,)),
    (S.FAILED, E.LEARN_SAME):       (S.STALE, (A.SET_LLADDR,)),
}
# Anything not in the table is ignored (e.g. CONFIRM-less sightings of entries we never made).

# The states in which SEND stays put and only transmits: there a sender may take the link
# address (send_lladdr) instead of stepping the machine, and the outcome is the same.
SEND_ONLY_TRANSMITS = tuple(s for (s, ev), (nxt, acts) in TRANSITIONS.items()
                            if ev is E.SEND and nxt is s and acts == (A.TRANSMIT,))


def state_timer(state: State, cfg: StackConfig) -> float | None:
    """How long an entry may stay in `state` before TIMEOUT."""
    return {
        S.INCOMPLETE: cfg.arp_retrans_time,
        S.REACHABLE: cfg.reachable_time,
        S.STALE: cfg.stale_gc_time,
        S.DELAY: cfg.delay_first_probe_time,
        S.PROBE: cfg.arp_retrans_time,
        S.FAILED: cfg.failed_hold_time,
    }.get(state)


def max_solicits(state: State, cfg: StackConfig) -> int:
    if state is S.INCOMPLETE:
        return cfg.arp_max_multicast_solicit
    if state is S.PROBE:
        return cfg.arp_max_unicast_solicit
    return 0


class NeighborSink(Protocol):
    """What the table asks of the protocol (ARP or NDP) and the link layer."""
    def solicit(self, device: str, address: Hashable, lladdr: bytes | None, now: float) -> None: ...
    def transmit(self, device: str, lladdr: bytes, packet: bytes, now: float) -> None: ...
    def unreachable(self, device: str, address: Hashable, packets: list[bytes], now: float) -> None: ...


@dataclass
class Entry:
    state: State = S.NONE
    lladdr: bytes | None = None
    queue: deque = field(default_factory=deque)
    queued_bytes: int = 0
    solicits: int = 0        # requests sent in the current INCOMPLETE/PROBE episode


@dataclass(frozen=True)
class NeighborInfo:
    device: str
    address: str
    mac: str | None
    state: str
    queued: int

    def to_dict(self) -> dict:
        return asdict(self)


def mac_str(mac: bytes | None) -> str | None:
    return None if mac is None else ":".join(f"{b:02x}" for b in mac)


class NeighborTable:
    """Entries keyed by (device, address). Bounded; least recently used entries go first."""

    def __init__(self, cfg: StackConfig, sink: NeighborSink, counters,
                 format_address: Callable[[Hashable], str] = str) -> None:
        self.cfg = cfg
        self.sink = sink
        self.counters = counters            # a Counter for this table's group
        # Addresses are whatever the protocol keys them by (ARP: ints, cheap to hash on
        # every packet); this turns one into text for info().
        self.format_address = format_address
        self._entries: OrderedDict[tuple[str, Hashable], Entry] = OrderedDict()
        self._timers = Deadlines()
        self.queued_bytes_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def state_of(self, device: str, address: Hashable) -> State:
        e = self._entries.get((device, address))
        return S.NONE if e is None else e.state

    # -- the four inputs -------------------------------------------------------------------
    def lladdr_of(self, device: str, address: Hashable) -> bytes | None:
        e = self._entries.get((device, address))
        return None if e is None else e.lladdr

    def send(self, device: str, address: Hashable, packet: bytes, now: float) -> None:
        """Transmit packet to a neighbor, resolving its link address first if needed."""
        key = (device, address)
        e = self._entries.get(key)
        if e is None:
            e = self._create(key)
        else:
            self._entries.move_to_end(key)
        self._step(key, e, Ev.SEND, None, packet, now)

    def send_lladdr(self, device: str, address: Hashable) -> bytes | None:
        """The link address to transmit to when a SEND would do nothing else (an entry in
        SEND_ONLY_TRANSMITS), the entry then counting as used; None: call send() instead."""
        key = (device, address)
        e = self._entries.get(key)
        if e is None or e.state not in SEND_ONLY_TRANSMITS:
            return None
        self._entries.move_to_end(key)
        return e.lladdr

    def confirm(self, device: str, address: Hashable, lladdr: bytes, now: float) -> None:
        """A solicited reply: the neighbor answered us."""
        self._sighting(device, address, lladdr, Ev.CONFIRM, now, create=False)

    def learn(self, device: str, address: Hashable, lladdr: bytes, now: float,
              create: bool) -> None:
        """An unsolicited sighting (RFC 826 merge); create=True when we were the target."""
        self._sighting(device, address, lladdr, None, now, create=create)

    def contradict(self, device: str, address: Hashable, now: float) -> None:
        """A sighting with another link address that may not override the one we have
        (an NA with O clear): a REACHABLE entry goes STALE, keeping its address."""
        e = self._entries.get((device, address))
        if e is not None:
            self._step((device, address), e, Ev.CONTRADICT, None, None, now)

    def poll(self, now: float) -> None:
        for key in self._timers.pop_due(now):
            e = self._entries.get(key)
            if e is None:
                continue
            last = e.solicits >= max_solicits(e.state, self.cfg)
            ev = Ev.TIMEOUT_LAST if last and (e.state, Ev.TIMEOUT_LAST) in TRANSITIONS else Ev.TIMEOUT
            self._step(key, e, ev, None, None, now)

    def next_deadline(self) -> float | None:
        return self._timers.next()

    # -- churn -----------------------------------------------------------------------------
    def flush_device(self, device: str) -> int:
        """Forget every entry of device (link down, device removed). Returns packets dropped."""
        dropped = 0
        for key in [k for k in self._entries if k[0] == device]:
            dropped += self._delete(key)
        if dropped:
            self.counters["queue_dropped_flush"] += dropped
        return dropped

    def flush_address(self, device: str, address: Hashable) -> int:
        key = (device, address)
        return self._delete(key) if key in self._entries else 0

    # -- internals -------------------------------------------------------------------------
    def _sighting(self, device, address, lladdr, ev, now, create) -> None:
        key = (device, address)
        e = self._entries.get(key)
        if e is None:
            if not create:
                return
            e = self._create(key)
        if ev is None:
            ev = Ev.LEARN_SAME if e.lladdr == lladdr else Ev.LEARN_NEW
        self._step(key, e, ev, lladdr, None, now)

    def _create(self, key) -> Entry:
        if len(self._entries) >= self.cfg.neighbor_table_size:
            self._evict()
        e = Entry()
        self._entries[key] = e
        return e

    def _evict(self) -> None:
        # LRU, but prefer entries nobody is waiting on: an INCOMPLETE entry holds packets.
        victim = next((k for k, e in self._entries.items() if e.state is not S.INCOMPLETE),
                      next(iter(self._entries)))
        self.counters["evicted"] += 1
        dropped = self._delete(victim)
        if dropped:
            self.counters["queue_dropped_evicted"] += dropped

    def _delete(self, key) -> int:
        e = self._entries.pop(key)
        self._timers.cancel(key)
        dropped = len(e.queue)
        self.queued_bytes_total -= e.queued_bytes
        e.queue.clear()
        e.queued_bytes = 0
        return dropped

    def _step(self, key, e: Entry, ev: Ev, lladdr: bytes | None, packet: bytes | None,
              now: float) -> None:
        rule = TRANSITIONS.get((e.state, ev))
        if rule is None:
            if e.state is S.NONE:               # created for an event that makes no entry
                self._entries.pop(key, None)
            return
        nxt, actions = rule
        device, address = key
        old = e.state
        if nxt is not old:
            self.counters[f"to_{nxt.value.lower()}"] += 1
        for act in actions:
            if act is A.SET_LLADDR:
                e.lladdr = lladdr
            elif act is A.QUEUE:
                self._enqueue(e, packet)  # type: ignore[arg-type]
            elif act is A.TRANSMIT:
                self.sink.transmit(device, e.lladdr, packet, now)  # type: ignore[arg-type]
            elif act is A.SOLICIT_BROADCAST:
                if nxt is not old:
                    e.solicits = 0
                e.solicits += 1
                self.sink.solicit(device, address, None, now)
            elif act is A.SOLICIT_UNICAST:
                if nxt is not old:
                    e.solicits = 0
                e.solicits += 1
                self.sink.solicit(device, address, e.lladdr, now)
            elif act is A.FLUSH_QUEUE:
                queued = list(e.queue)
                self.queued_bytes_total -= e.queued_bytes
                e.queue.clear()
                e.queued_bytes = 0
                e.state = nxt
                for p in queued:
                    self.sink.transmit(device, e.lladdr, p, now)  # type: ignore[arg-type]
            elif act is A.FAIL_QUEUE:
                queued = list(e.queue)
                self.queued_bytes_total -= e.queued_bytes
                e.queue.clear()
                e.queued_bytes = 0
                self.counters["resolution_failed"] += 1
                self.counters["queue_dropped_failed"] += len(queued)
                e.state = nxt
                self.sink.unreachable(device, address, queued, now)
            elif act is A.DELETE:
                self._delete(key)
                return
        if key not in self._entries:            # a sink callback flushed the device
            return
        e.state = nxt
        if nxt is not old or A.RESTART_TIMER in actions or ev in (Ev.TIMEOUT, Ev.TIMEOUT_LAST):
            t = state_timer(nxt, self.cfg)
            self._timers.set(key, None if t is None else now + t)

    def _enqueue(self, e: Entry, packet: bytes) -> None:
        # Bounded per entry and in total; the oldest waiting packet gives way.
        e.queue.append(packet)
        e.queued_bytes += len(packet)
        self.queued_bytes_total += len(packet)
        while e.queue and (len(e.queue) > self.cfg.neighbor_queue_packets
                           or e.queued_bytes > self.cfg.neighbor_queue_bytes
                           or self.queued_bytes_total > self.cfg.neighbor_queue_total_bytes):
            old = e.queue.popleft()
            e.queued_bytes -= len(old)
            self.queued_bytes_total -= len(old)
            self.counters["queue_dropped_full"] += 1

    # -- views and restart -----------------------------------------------------------------
    def info(self) -> list[NeighborInfo]:
        fmt = self.format_address
        return [NeighborInfo(d, fmt(a), mac_str(e.lladdr), e.state.value, len(e.queue))
                for (d, a), e in self._entries.items()]

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "limit": self.cfg.neighbor_table_size,
                "queued_bytes": self.queued_bytes_total,
                "queued_bytes_limit": self.cfg.neighbor_queue_total_bytes}

    def snapshot(self) -> list[tuple[str, Hashable, bytes]]:
        return [(d, a, e.lladdr) for (d, a), e in self._entries.items()
                if e.lladdr is not None and e.state not in (S.INCOMPLETE, S.FAILED)]

    def restore_entry(self, device: str, address: Hashable, lladdr: bytes, now: float) -> None:
        """A resolved entry from a predecessor: unconfirmed by us, so STALE (RFC 4861 §7.3.3)."""
        key = (device, address)
        e = self._create(key)
        e.state = S.STALE
        e.lladdr = lladdr
        self._timers.set(key, now + self.cfg.stale_gc_time)
