"""TCP's place in the stack: demultiplexing, listeners, ports, timers — one layer per IP version.

The layer owns the table of connections (`Connection`, one TCB each) and the listeners, and
turns what they produce into IP output. It reaches the IP layer only through `TcpIp`, a
narrow context: where a segment to an address would leave from (source address and MTU), how
to send one, and whether an address is ours. Nothing here knows IPv4 from IPv6 beyond the
header sizes in `TcpIp`; Stack builds one layer per version.

Connections and listeners are named by small ints (`cid`, `lid`) that the binding uses in its
interface; the demux table maps the 4-tuple (addresses as ints) to a cid.

What comes out, besides segments: `take_events()` gives `(cid, TcpEvent)` for connections and
`(lid, ACCEPTABLE)` when a listener's accept queue gains an entry.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
from collections import deque
from typing import Protocol, Union

from ...wire.errors import ParseError
from ...wire.tcp import TcpSegment
from ..errors import StackError
from ..timers import Deadlines
from . import seq as sq
from . import syncookie
from .conn import TS_OPTION_SPACE, Connection, TcpConfig, TcpEvent
from .segment import rst_for
from .state import State

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_PORTS = struct.Struct("!HH")
ACCEPTABLE = "acceptable"       # a listener event: accept() will return a connection


class TcpIp(Protocol):
    """What TCP may ask of the IP layer of its version."""
    version: int
    header_len: int                 # IP header bytes without options (20 / 40)
    default_send_mss: int           # RFC 9293 §3.7.1: 536 for IPv4, 1220 for IPv6

    def source_and_mtu(self, remote: IPAddress, local: IPAddress | None) -> tuple[IPAddress, int]:
        """The source address and the egress MTU toward remote; StackError if unreachable."""

    def output(self, local: IPAddress, remote: IPAddress, segment: bytes, now: float,
               ttl: int | None = None, tos: int = 0) -> None:
        """Send one segment (StackError when it cannot leave: no route, link down), with the
        connection's IP_TTL (None: the IP layer's default) and IP_TOS byte."""

    def is_local(self, addr: IPAddress) -> bool: ...

    def tso_max(self, remote: IPAddress, local: IPAddress | None) -> int:
        """The TCP payload the egress device segments itself (TSO), or 0."""


@dataclasses.dataclass(frozen=True)
class TcpLayerConfig:
    max_connections: int = 16384        # TCBs in all states, TIME-WAIT included
    max_time_wait: int = 4096           # beyond it the oldest TIME-WAIT entry is dropped
    max_listeners: int = 1024
    max_backlog: int = 4096             # a listener's accept queue (SOMAXCONN)
    max_syn_backlog: int = 256          # SYN-RECEIVED connections per listener
    ephemeral_min: int = 32768          # Linux's ip_local_port_range
    ephemeral_max: int = 60999


class Listener:
    __slots__ = ("lid", "addr", "port", "backlog", "accept", "embryonic", "closed", "owner",
                 "channel", "accepted", "dropped", "cookie_time")

    def __init__(self, lid: int, addr: int | None, port: int, backlog: int) -> None:
        self.lid = lid
        self.addr = addr                # None: every local address
        self.port = port
        self.backlog = backlog
        self.accept: deque[int] = deque()   # established, not yet accepted (cids)
        self.embryonic: set[int] = set()    # SYN-RECEIVED (cids)
        self.closed = False
        self.owner: str | None = None
        # The binding's names for who listens and for the listener's readiness channel: kept
        # here so that they travel in every snapshot and checkpoint with the listener.
        self.channel: str | None = None
        self.accepted = 0
        self.dropped = 0
        self.cookie_time: float | None = None   # when it last answered a SYN with a cookie

    def info(self) -> dict:
        return {"lid": self.lid, "addr": self.addr, "port": self.port, "backlog": self.backlog,
                "owner": self.owner or "", "channel": self.channel,
                "accept_queue": len(self.accept), "syn_recv": len(self.embryonic),
                "accepted": self.accepted, "dropped": self.dropped}


class TcpLayer:
    def __init__(self, ip: TcpIp, counters, rng: random.Random, isn_key: bytes,
                 config: TcpConfig | None = None,
                 limits: TcpLayerConfig | None = None,
                 ids: tuple[int, int] = (1, 0x7FFFFFFF)) -> None:
        """`ids`: the range of connection and listener ids (one per IP version, disjoint,
        so a binding serving both layers tells them apart by id)."""
        self.ip = ip
        self.version = ip.version
        self._addr = ipaddress.IPv4Address if ip.version == 4 else ipaddress.IPv6Address
        self.c = counters
        self.rng = rng
        self.isn_key = isn_key
        self.cfg = config or TcpConfig(default_send_mss=ip.default_send_mss)
        self.limits = limits or TcpLayerConfig()
        self.conns: dict[int, Connection] = {}
        self.demux: dict[tuple[int, int, int, int], int] = {}
        self.listeners: dict[int, Listener] = {}
        self.by_port: dict[tuple[int | None, int], int] = {}   # (addr or None, port) -> lid
        self.parent: dict[int, int] = {}            # passive cid -> its listener's lid
        self.time_wait: dict[int, None] = {}        # cids that entered TIME-WAIT, oldest first
        self.deadlines = Deadlines()
        self._events: list[tuple[int, object]] = []
        self._ids = ids
        self._next_id = ids[0]
        self._held: set[int] | None = None       # cids holding ACKs for the batch's end
        # Socket marks of connections we open (qnet.socket set_mark / SO_MARK), by cid: the
        # filter gives them to the connection's conntrack entry when its SYN leaves
        # (`marks_of`); from then on the entry carries them.
        self.marks: dict[int, tuple[int, ...]] = {}

    # -- ids ---------------------------------------------------------------------------------
    def _new_id(self) -> int:
        lo, hi = self._ids
        i = self._next_id
        self._next_id = i + 1 if i < hi else lo
        while i in self.conns or i in self.listeners:
            i = self._next_id
            self._next_id = i + 1 if i < hi else lo
        return i

    def owns(self, cid: int) -> bool:
        """Whether an id is of this layer's range."""
        return self._ids[0] <= cid <= self._ids[1]

    def marks_of(self, src: int, sport: int, dst: int, dport: int) -> tuple[int, ...] | None:
        """The socket marks of the connection that sends src:sport -> dst:dport, if any."""
        cid = self.demux.get((src, sport, dst, dport))
        return None if cid is None else self.marks.get(cid)

    def get(self, cid: int) -> Connection:
        conn = self.conns.get(cid)
        if conn is None:
            raise StackError("not_found", f"no TCP connection {cid}")
        return conn

    @staticmethod
    def key(conn: Connection) -> tuple[int, int, int, int]:
        return (int(conn.local_ip), conn.local_port, int(conn.remote_ip), conn.remote_port)

    # -- application calls -------------------------------------------------------------------
    def listen(self, addr: IPAddress | None, port: int, backlog: int = 128) -> int:
        a = None if addr is None or addr.is_unspecified else int(addr)
        if a is not None and not self.ip.is_local(addr):
            raise StackError("address_not_available", f"{addr} is not a local address")
        if not 0 < port <= 0xFFFF:
            raise StackError("bad_argument", f"bad port {port}")
        if (a, port) in self.by_port or (a is not None and (None, port) in self.by_port) or \
                (a is None and any(p == port for (_x, p) in self.by_port)):
            raise StackError("address_in_use", f"port {port} is already listened on")
        if len(self.listeners) >= self.limits.max_listeners:
            self.c["listen_refused_limit"] += 1
            raise StackError("limit", f"too many listeners ({self.limits.max_listeners})")
        lid = self._new_id()
        lst = Listener(lid, a, port, max(1, min(int(backlog), self.limits.max_backlog)))
        self.listeners[lid] = lst
        self.by_port[(a, port)] = lid
        return lid

    def accept(self, lid: int) -> int | None:
        """The next established connection of a listener, or None if none waits."""
        lst = self.listeners.get(lid)
        if lst is None:
            raise StackError("not_found", f"no TCP listener {lid}")
        while lst.accept:
            cid = lst.accept.popleft()
            self.parent.pop(cid, None)
            if cid in self.conns:
                lst.accepted += 1
                return cid
        return None

    def close_listener(self, lid: int, now: float) -> None:
        lst = self.listeners.pop(lid, None)
        if lst is None:
            raise StackError("not_found", f"no TCP listener {lid}")
        del self.by_port[(lst.addr, lst.port)]
        # Connections nobody accepted are reset (as Linux does when a listener closes).
        for cid in list(lst.accept) + list(lst.embryonic):
            conn = self.conns.get(cid)
            self.parent.pop(cid, None)
            if conn is not None and conn.state is not State.CLOSED:
                conn.abort(now)
                self._after(cid, conn, now)
                self._forget(cid)

    def connect(self, remote: IPAddress, rport: int, now: float, local: IPAddress | None = None,
                lport: int = 0, marks: tuple[int, ...] | None = None) -> int:
        if not 0 < rport <= 0xFFFF or remote.is_unspecified or remote.is_multicast:
            raise StackError("bad_argument", f"cannot connect to {remote}:{rport}")
        src, mtu = self.ip.source_and_mtu(remote, local)
        if len(self.conns) >= self.limits.max_connections:
            self.c["connect_refused_limit"] += 1
            raise StackError("limit", f"too many TCP connections ({self.limits.max_connections})")
        la, ra = int(src), int(remote)
        if lport:
            if (la, lport, ra, rport) in self.demux:
                raise StackError("address_in_use", f"{src}:{lport} -> {remote}:{rport} exists")
        else:
            lport = self._ephemeral(la, ra, rport)
        cid = self._new_id()
        conn = Connection(src, lport, remote, rport, isn_key=self.isn_key, config=self._conn_cfg(mtu))
        conn.tso_max = self.ip.tso_max(remote, src)
        self.conns[cid] = conn
        self.demux[(la, lport, ra, rport)] = cid
        if marks and any(marks):
            self.marks[cid] = tuple(marks)
        conn.connect(now)
        self._after(cid, conn, now)
        self.c["active_opens"] += 1
        return cid

    def _ephemeral(self, la: int, ra: int, rport: int) -> int:
        # RFC 6056 §3.3.1 (Algorithm 1): a random start, then the next free port.
        lo, hi = self.limits.ephemeral_min, self.limits.ephemeral_max
        n = hi - lo + 1
        start = self.rng.randrange(n)
        listening = {p for (_a, p) in self.by_port}
        for i in range(n):
            p = lo + (start + i) % n
            if (la, p, ra, rport) not in self.demux and p not in listening:
                return p
        self.c["ephemeral_exhausted"] += 1
        raise StackError("address_not_available", "no free ephemeral port")

    def _conn_cfg(self, mtu: int) -> TcpConfig:
        mss = max(mtu - self.ip.header_len - 20, 64)
        return self.cfg if mss == self.cfg.mss else dataclasses.replace(self.cfg, mss=mss)

    def send(self, cid: int, data, now: float) -> int:
        conn = self.get(cid)
        n = conn.send(data, now)
        self._after(cid, conn, now)
        return n

    def recv(self, cid: int, max_bytes: int | None, now: float) -> bytes:
        conn = self.get(cid)
        data = conn.recv(max_bytes)
        self._after(cid, conn, now)
        return data

    def close(self, cid: int, now: float) -> None:
        """Our side is done sending (FIN after the queued data); the other side may go on."""
        conn = self.get(cid)
        conn.close(now)
        self._after(cid, conn, now)

    def configure(self, cid: int, now: float, *, nodelay: bool | None = None,
                  keepalive: bool | None = None, keepidle: float | None = None,
                  keepintvl: float | None = None, keepcnt: int | None = None,
                  congestion: str | None = None, ttl: int | None = None,
                  tos: int | None = None) -> None:
        """Socket options of one connection (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT,
        TCP_CONGESTION, IP_TTL, IP_TOS). StackError bad_argument for a value out of range."""
        conn = self.get(cid)
        try:
            if ttl is not None or tos is not None:
                conn.set_ip_options(ttl=ttl, tos=tos)
            if congestion is not None:
                conn.set_congestion(congestion)
            if nodelay is not None:
                conn.set_nodelay(nodelay, now)
            if keepalive is not None or keepidle is not None or keepintvl is not None \
                    or keepcnt is not None:
                conn.set_keepalive(conn.keepalive if keepalive is None else keepalive, now,
                                   idle=keepidle, interval=keepintvl, count=keepcnt)
        except ValueError as e:
            raise StackError("bad_argument", str(e)) from None
        self._after(cid, conn, now)

    def abort(self, cid: int, now: float) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return
        if conn.state is not State.CLOSED:
            conn.abort(now)
            self._after(cid, conn, now)
        self._forget(cid)

    # -- segments from IP --------------------------------------------------------------------
    def receive(self, src: IPAddress, dst: IPAddress, payload, broadcast: bool, now: float,
                verify_checksum: bool = True) -> None:
        c = self.c
        if broadcast:
            c["rx_drop_broadcast"] += 1        # RFC 9293 §3.9.1.1: TCP is unicast only
            return
        try:
            seg = TcpSegment.parse(payload, src, dst, verify_checksum=verify_checksum)
        except ParseError:
            c["rx_bad"] += 1
            return
        c["rx_segments"] += 1
        la, ra = int(dst), int(src)
        cid = self.demux.get((la, seg.dst_port, ra, seg.src_port))
        if cid is not None:
            conn = self.conns[cid]
            conn.segment_arrives(seg, now)
            self._after(cid, conn, now)
            return
        lid = self.by_port.get((la, seg.dst_port))
        if lid is None:
            lid = self.by_port.get((None, seg.dst_port))
        if lid is not None and seg.syn and not seg.ack_flag and not seg.rst:
            self._syn_to_listener(self.listeners[lid], seg, src, dst, now)
            return
        if lid is not None and seg.rst:
            return
        if lid is not None and seg.ack_flag and not seg.syn and \
                self._cookie_ack(self.listeners[lid], seg, src, dst, now):
            return
        # RFC 9293 §3.10.7.1 (CLOSED) and §3.10.7.2 (LISTEN: an ACK gets a RST): the answer
        # is the same, <SEQ=SEG.ACK><CTL=RST> or <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
        reply = rst_for(seg)
        if reply is None:
            return
        c["rx_no_connection"] += 1
        c["tx_rst"] += 1
        try:
            self.ip.output(dst, src, reply.build(dst, src), now)
        except StackError:
            c["tx_failed"] += 1

    def established(self, src: int, dst: int, segment, now: float,
                    verify_checksum: bool = True) -> bool:
        """The fast path's entry (core/fastpath.py): a segment, addresses as ints, for a
        connection in the table is handled and True returned; anything else (no connection,
        bad checksum, too short) is declined with False and nothing done, for `receive`."""
        if len(segment) < 20:
            return False
        sport, dport = _PORTS.unpack_from(segment)
        cid = self.demux.get((dst, dport, src, sport))
        if cid is None:
            return False
        try:
            seg = TcpSegment.parse(segment, src, dst, verify_checksum=verify_checksum)
        except ParseError:
            return False
        c = self.c
        c["rx_segments"] += 1
        conn = self.conns[cid]
        if self._held is not None:
            conn.hold_acks = True
            self._held.add(cid)
        conn.segment_arrives(seg, now)
        self._after(cid, conn, now)
        return True

    def begin_batch(self) -> None:
        """Segments of one receive batch follow: their connections acknowledge in-order data
        once, at end_batch (RFC 9293 §3.8.6.3 lets a receiver delay ACKs; this stretches them
        over a batch the way Linux's GRO does)."""
        self._held = set()

    def end_batch(self, now: float) -> None:
        held, self._held = self._held, None
        if not held:
            return
        for cid in held:
            conn = self.conns.get(cid)
            if conn is not None:
                conn.release_acks(now)
                self._after(cid, conn, now)

    def _syn_to_listener(self, lst: Listener, seg: TcpSegment, src, dst, now: float) -> None:
        c = self.c
        if len(lst.accept) >= lst.backlog or len(self.conns) >= self.limits.max_connections:
            # The accept queue is full: a completed handshake would have nowhere to go, so the
            # SYN is dropped and the peer retransmits it (as Linux does).
            lst.dropped += 1
            c["listen_overflow"] += 1
            return
        try:
            _src, mtu = self.ip.source_and_mtu(src, dst)
        except StackError:
            c["rx_syn_no_route"] += 1
            return
        if len(lst.embryonic) >= min(lst.backlog, self.limits.max_syn_backlog):
            # The SYN queue is full (a flood, or a burst): answer with a SYN cookie and keep
            # nothing (RFC 4987 §3.6); the ACK that completes the handshake brings it back.
            out = syncookie.syn_ack(seg, self.isn_key, now, dst, src, isn_key=self.isn_key,
                                    config=self._conn_cfg(mtu))
            lst.cookie_time = now
            c["syncookies_sent"] += 1
            try:
                self.ip.output(dst, src, out.build(dst, src), now)
            except StackError:
                c["tx_failed"] += 1
            return
        cid = self._new_id()
        conn = Connection(dst, seg.dst_port, src, seg.src_port, isn_key=self.isn_key,
                          config=self._conn_cfg(mtu))
        conn.tso_max = self.ip.tso_max(src, dst)
        conn.listen()
        self.conns[cid] = conn
        self.demux[(int(dst), seg.dst_port, int(src), seg.src_port)] = cid
        self.parent[cid] = lst.lid
        lst.embryonic.add(cid)
        c["passive_opens"] += 1
        conn.segment_arrives(seg, now)
        self._after(cid, conn, now)

    def icmp_error(self, local: IPAddress, lport: int, remote: IPAddress, rport: int,
                   icmp_type: int, code: int, mtu: int, seq: int | None) -> bool:
        """An ICMP error quoting one of our segments; True if a connection took it."""
        cid = self.demux.get((int(local), lport, int(remote), rport))
        if cid is None:
            return False
        conn = self.conns[cid]
        # RFC 5927 §4.1: believe only an error that quotes a sequence number in flight.
        if seq is None or not (seq == conn.snd_una or
                               (sq.le(conn.snd_una, seq) and sq.lt(seq, conn.snd_max))):
            self.c["icmp_error_out_of_window"] += 1
            return True
        if mtu and (icmp_type, code) == ((3, 4) if self.version == 4 else (2, 0)):
            # RFC 1191 §6.1, RFC 8201 §4 / RFC 9293 §3.7.3: "fragmentation needed" (IPv4) or
            # Packet Too Big (IPv6) lowers the segment size.
            mss = max(mtu - self.ip.header_len - 20 - (TS_OPTION_SPACE if conn.ts_ok else 0), 88)
            if mss < conn.send_mss:
                conn.send_mss = mss
                self.c["pmtu_lowered"] += 1
        else:
            # Soft errors (RFC 1122 §4.2.3.9): a connection does not abort on them.
            self.c["icmp_soft_errors"] += 1
        return True

    def _cookie_ack(self, lst: Listener, seg: TcpSegment, src, dst, now: float) -> bool:
        """An ACK to a listener: True if it completed a SYN-cookie handshake (taken, or dropped
        because the accept queue is full). Cookies are checked only while the listener has
        sent some lately, so a guessed cookie cannot open a connection at other times."""
        if lst.cookie_time is None or now - lst.cookie_time > syncookie.COUNTER_PERIOD * syncookie.MAX_AGE:
            return False
        mss = syncookie.check(self.isn_key, now, src, seg.src_port, dst, seg.dst_port,
                              seg.ack, seg.seq)
        if mss is None:
            self.c["syncookies_failed"] += 1
            return False
        if len(lst.accept) >= lst.backlog or len(self.conns) >= self.limits.max_connections:
            lst.dropped += 1
            self.c["listen_overflow"] += 1
            return True         # the peer retransmits; a later ACK may find room
        try:
            _src, mtu = self.ip.source_and_mtu(src, dst)
        except StackError:
            return True
        conn = Connection.from_cookie(dst, seg.dst_port, src, seg.src_port, seg, mss, now,
                                      isn_key=self.isn_key, config=self._conn_cfg(mtu))
        conn.tso_max = self.ip.tso_max(src, dst)
        cid = self._new_id()
        self.conns[cid] = conn
        self.demux[(int(dst), seg.dst_port, int(src), seg.src_port)] = cid
        self.parent[cid] = lst.lid
        lst.accept.append(cid)
        self._events.append((lst.lid, ACCEPTABLE))
        self.c["syncookies_recv"] += 1
        self.c["passive_opens"] += 1
        conn.take_events()      # CONNECTED: the acceptor learns of it by accept()
        self._after(cid, conn, now)
        return True

    # -- timers ------------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        for cid in self.deadlines.pop_due(now):
            conn = self.conns.get(cid)
            if conn is not None:
                conn.poll(now)
                self._after(cid, conn, now)

    def next_deadline(self) -> float | None:
        return self.deadlines.next()

    # -- plumbing ----------------------------------------------------------------------------
    def _after(self, cid: int, conn: Connection, now: float) -> None:
        """Everything a call into conn produced: segments out, events, its next timer."""
        segs = conn.take_segments()
        if segs:
            local, remote = conn.local_ip, conn.remote_ip
            out = self.ip.output
            ttl, tos = conn.ip_ttl, conn.ip_tos
            for s in segs:
                try:
                    out(local, remote, s.build(local, remote), now, ttl, tos)
                except StackError:
                    self.c["tx_failed"] += 1
            self.c["tx_segments"] += len(segs)
        evs = conn.take_events()
        closed = False
        for ev in evs:
            if ev is TcpEvent.CLOSED:
                closed = True
            elif ev is TcpEvent.CONNECTED and cid in self.parent:
                lid = self.parent[cid]
                lst = self.listeners.get(lid)
                if lst is not None:
                    lst.embryonic.discard(cid)
                    lst.accept.append(cid)
                    self._events.append((lid, ACCEPTABLE))
                continue     # the acceptor learns of it by accept(), not by an event
            if cid not in self.parent:
                self._events.append((cid, ev))
        if conn.state is State.LISTEN:
            # RFC 9293 §3.10.7.4: a passive SYN-RECEIVED reset returns to LISTEN; the
            # listener is still there, so this TCB goes.
            closed = True
        elif conn.state is State.TIME_WAIT and cid not in self.time_wait:
            self._enter_time_wait(cid)
        if closed:
            self._forget(cid)
        else:
            self.deadlines.set(cid, conn.next_deadline())

    def _enter_time_wait(self, cid: int) -> None:
        self.time_wait[cid] = None
        while len(self.time_wait) > self.limits.max_time_wait:
            old = next(iter(self.time_wait))
            del self.time_wait[old]
            if old in self.conns:
                self.c["time_wait_dropped"] += 1
                self._forget(old)

    def _forget(self, cid: int) -> None:
        conn = self.conns.pop(cid, None)
        if conn is None:
            return
        self.marks.pop(cid, None)
        self.demux.pop(self.key(conn), None)
        self.deadlines.cancel(cid)
        lid = self.parent.pop(cid, None)
        if lid is not None and lid in self.listeners:
            lst = self.listeners[lid]
            lst.embryonic.discard(cid)
            try:
                lst.accept.remove(cid)
            except ValueError:
                pass
        self.time_wait.pop(cid, None)
        for k, v in conn.stats.items():
            self.c[f"conn_{k}"] += v

    def live_counters(self) -> dict[str, int]:
        """The counters of the connections still in the table, as `conn_*` (those that ended
        are in the layer's group already)."""
        out: dict[str, int] = {}
        for conn in self.conns.values():
            for k, v in conn.stats.items():
                out[f"conn_{k}"] = out.get(f"conn_{k}", 0) + v
        return out

    def take_events(self) -> list[tuple[int, object]]:
        ev, self._events = self._events, []
        return ev

    # -- restart ------------------------------------------------------------------------------
    def snapshot(self, connections: bool = True) -> dict:
        """Plain msgpack types. The ISN key always travels (a successor's ISNs stay monotonic
        per 4-tuple, RFC 6528); connections only when asked (a hand-over, not a checkpoint:
        a TCB restored from a stale checkpoint would send sequence numbers the peer has
        moved past)."""
        d: dict = {"isn_key": self.isn_key, "next_id": self._next_id,
                   "listeners": [{"lid": l.lid, "addr": l.addr, "port": l.port,
                                  "backlog": l.backlog, "owner": l.owner, "channel": l.channel,
                                  "accept": list(l.accept), "embryonic": sorted(l.embryonic)}
                                 for l in self.listeners.values()],
                   "conns": []}
        if connections:
            d["conns"] = [{"cid": cid, "parent": self.parent.get(cid),
                           "time_wait": cid in self.time_wait, "tcb": conn.snapshot()}
                          for cid, conn in self.conns.items()]
        return d

    def restore(self, d: dict, clock_shift: float = 0.0) -> None:
        """Into an empty layer; ValueError/KeyError/TypeError on a malformed snapshot."""
        key = bytes(d["isn_key"])
        if not 16 <= len(key) <= 64:
            raise ValueError("isn_key must be 16..64 bytes")
        self.isn_key = key
        self._next_id = min(max(int(d["next_id"]), self._ids[0]), self._ids[1])
        for ld in d["listeners"]:
            lst = Listener(int(ld["lid"]), None if ld["addr"] is None else int(ld["addr"]),
                           int(ld["port"]), int(ld["backlog"]))
            lst.owner = ld.get("owner")
            channel = ld.get("channel")
            lst.channel = None if channel is None else str(channel)
            self.listeners[lst.lid] = lst
            self.by_port[(lst.addr, lst.port)] = lst.lid
        for cd in d["conns"]:
            cid = int(cd["cid"])
            conn = Connection.from_snapshot(cd["tcb"], clock_shift=clock_shift, isn_key=self.isn_key)
            self.conns[cid] = conn
            self.demux[self.key(conn)] = cid
            if cd.get("time_wait"):
                self.time_wait[cid] = None
            self.deadlines.set(cid, conn.next_deadline())
        for ld in d["listeners"]:
            lst = self.listeners[int(ld["lid"])]
            for cid in ld["accept"]:
                if int(cid) in self.conns:
                    lst.accept.append(int(cid))
                    self.parent[int(cid)] = lst.lid
            for cid in ld["embryonic"]:
                if int(cid) in self.conns:
                    lst.embryonic.add(int(cid))
                    self.parent[int(cid)] = lst.lid

    # -- views -------------------------------------------------------------------------------
    def info(self, cid: int) -> dict:
        conn = self.get(cid)
        d = conn.info()
        d.update(cid=cid, local=str(conn.local_ip), local_port=conn.local_port,
                 remote=str(conn.remote_ip), remote_port=conn.remote_port, tso_max=conn.tso_max,
                 ttl=conn.ip_ttl, tos=conn.ip_tos)
        if conn.iss is not None:
            d.setdefault("bytes_acked", max(sq.diff(conn.snd_una, conn.iss) - 1, 0))
        if conn.irs is not None:
            d.setdefault("bytes_received", max(sq.diff(conn.rcv_nxt, conn.irs) - 1, 0))
        return d

    def connections(self) -> list[dict]:
        return [self.info(cid) for cid in self.conns]

    def listener_info(self) -> list[dict]:
        out = []
        for lst in self.listeners.values():
            d = lst.info()
            d["addr"] = None if lst.addr is None else str(self._addr(lst.addr))
            out.append(d)
        return out

    def stats(self) -> dict:
        return {"connections": len(self.conns), "limit": self.limits.max_connections,
                "time_wait": len(self.time_wait), "time_wait_limit": self.limits.max_time_wait,
                "listeners": len(self.listeners)}
