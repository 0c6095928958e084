"""Connection tracking (Linux's nf_conntrack, IPv4, sans-I/O): a bounded table of flows.

A flow is keyed by tuples of ints `(src, sport, dst, dport, proto)`; for ICMP queries both
"ports" are the identifier. Each confirmed `Entry` is in the table twice: under its `orig`
tuple (what its first packet looked like) and its `reply` tuple (what an answer looks like on
the wire, after NAT), so one dict probe tells a packet's flow and direction.

How a packet is answered (`track`), as Linux answers it:
- a packet of a known flow: REPLY-direction packets are ESTABLISHED; ORIGINAL-direction ones
  are NEW until a reply was seen (a retransmitted SYN of an unanswered flow is NEW), then
  ESTABLISHED. TCP segments go through the state machine (`TCP_TRANSITIONS`) and the window
  check; a segment either rejects is INVALID and changes nothing.
- a packet of no flow: a TCP SYN (no ACK/RST/FIN), any UDP datagram, an ICMP query request
  are NEW with a fresh *unconfirmed* entry, which the caller `confirm`s once the packet is
  accepted (after the last hook) or simply forgets. Any other TCP segment is INVALID (no
  pickup of mid-stream connections: nf_conntrack_tcp_loose=0), and so is a query reply.
- an ICMP error (RFC 792/1812: destination unreachable, source quench, redirect, time
  exceeded, parameter problem) quotes a packet of a flow: RELATED with that flow's entry and
  the direction the error travels. If it quotes none, INVALID.
- other protocols are not tracked: (None, ORIGINAL, NEW). Fragments past the first carry no
  ports and are the caller's to keep away from here.

Simplified relative to Linux (nf_conntrack_proto_tcp.c):
- no simultaneous open (a SYN answering a SYN is INVALID; Linux has state syn_sent2), no
  TCP checksum check (the receiving TCP checks), no retransmission counting (Linux's
  300 s "retrans" timeout), no resynchronisation after ignored packets, no td_maxack check
  of RSTs; "ignore" packets pass without refreshing anything.
- A SYN in time_wait/close re-opens: the old entry is deleted and the SYN starts a new flow
  (Linux also asks that a FIN or RST closed it, which is always so in those states).
- UDP becomes assured and gets the 120 s stream timeout with the first packet after a
  reply was seen (Linux also waits 2 s from the first packet).
- ICMP queries are keyed without the type: a request matching a flow's reply tuple (or an
  answer matching its original tuple) is INVALID rather than a flow of its own.
- NAT clashes: `dnat` moves the source port when the translated reply tuple is taken (what
  Linux's implicit source NAT does later); `confirm` refuses a clash (counted `clash`).
- Port allocation: the current port first, then a random start and a linear search of at
  most 128 ports of `port_range` (Linux keeps privileged ports privileged; this does not).
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from typing import Iterator

from ..wire.errors import ParseError
from ..wire.icmpv4 import (ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                           ICMP_PARAM_PROBLEM, ICMP_REDIRECT, ICMP_TIME_EXCEEDED)
from ..wire.tcp import ACK, FIN, RST, SYN, URG, TcpSegment
from .tcp.seq import MASK, add, gt, lt

NEW, ESTABLISHED, RELATED, INVALID = 0, 1, 2, 3
ORIGINAL, REPLY = 0, 1

PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp"}

# ICMP queries (RFC 792, 950): request type -> its reply's type. A flow starts only with a
# request. Timestamp, information and address mask as Linux's valid_new[].
ICMP_QUERIES = {ICMP_ECHO_REQUEST: ICMP_ECHO_REPLY, 13: 14, 15: 16, 17: 18}
ICMP_QUERY_REPLIES = frozenset(ICMP_QUERIES.values())
ICMP_SOURCE_QUENCH = 4
ICMP_ERRORS = frozenset({ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT,
                         ICMP_TIME_EXCEEDED, ICMP_PARAM_PROBLEM})

# Seconds (Linux's defaults, net.netfilter.nf_conntrack_*_timeout*). "unacknowledged" caps a
# TCP state's timeout while either side has data not yet acknowledged (a dead peer).
DEFAULT_TIMEOUTS = {
    "syn_sent": 120, "syn_recv": 60, "established": 432000, "fin_wait": 120,
    "close_wait": 60, "last_ack": 30, "time_wait": 120, "close": 10, "unacknowledged": 300,
    "udp": 30, "udp_stream": 120, "icmp": 30,
}

COUNTER_NAMES = ("entries", "inserted", "refused_full", "early_drop", "invalid", "expired",
                 "deleted", "clash", "nat_no_port")

# -- TCP: the state machine --------------------------------------------------------------------
SYN_SENT, SYN_RECV, ESTABLISHED_TCP, FIN_WAIT = "syn_sent", "syn_recv", "established", "fin_wait"
CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE = "close_wait", "last_ack", "time_wait", "close"
TCP_STATES = (SYN_SENT, SYN_RECV, ESTABLISHED_TCP, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT,
              CLOSE)
_IG = "ignore"      # out of sync, perhaps: let it pass, change nothing (Linux's sIG)
_IV = None          # invalid here (Linux's sIV)
_SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL = TCP_STATES

# direction -> segment kind -> next state, by current state (columns: TCP_STATES' order).
# Linux's tcp_conntracks[][][] without its sNO and sS2 columns. The kind of a segment:
# RST if set, else SYN or SYN/ACK, else FIN, else ACK (flags checked valid before).
#                syn_sent syn_recv estab  fin_wait close_w last_ack time_w close
TCP_TRANSITIONS = {
    ORIGINAL: {
        "syn":    (_SS,     _IG,     _IG,   _IG,     _IG,    _IG,     _SS,   _SS),
        "synack": (_IV,     _SR,     _IV,   _IV,     _IV,    _IV,     _IV,   _IV),
        "fin":    (_IV,     _FW,     _FW,   _LA,     _LA,    _LA,     _TW,   _CL),
        "ack":    (_IV,     _ES,     _ES,   _CW,     _CW,    _TW,     _TW,   _CL),
        "rst":    (_CL,     _CL,     _CL,   _CL,     _CL,    _CL,     _CL,   _CL),
    },
    REPLY: {
        "syn":    (_IV,     _IV,     _IV,   _IV,     _IV,    _IV,     _SS,   _IV),
        "synack": (_SR,     _IG,     _IG,   _IG,     _IG,    _IG,     _IG,   _IG),
        "fin":    (_IV,     _FW,     _FW,   _LA,     _LA,    _LA,     _TW,   _CL),
        "ack":    (_IG,     _SR,     _ES,   _CW,     _CW,    _TW,     _TW,   _CL),
        "rst":    (_CL,     _CL,     _CL,   _CL,     _CL,    _CL,     _CL,   _CL),
    },
}
_COLUMN = {s: i for i, s in enumerate(TCP_STATES)}
_TABLE = {(d, kind, state): row[_COLUMN[state]]
          for d, kinds in TCP_TRANSITIONS.items() for kind, row in kinds.items()
          for state in TCP_STATES}

# Linux's tcp_valid_flags: the combinations of FIN, SYN, RST, ACK, URG a segment may carry
# (PSH, ECE and CWR aside). A null segment, SYN+FIN, FIN without ACK... are invalid.
_FLAG_MASK = FIN | SYN | RST | ACK | URG
_VALID_FLAGS = frozenset({SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG,
                          ACK, ACK | URG})

# -- TCP: window tracking ----------------------------------------------------------------------
# Per direction, as Linux's ip_ct_tcp_state: the highest sequence number sent + 1 (td_end),
# the highest the receiver's window allows (td_maxend), the largest window seen (td_maxwin),
# the window scale the sender uses (td_scale), flags.
END, MAXEND, MAXWIN, SCALE, FLAGS = range(5)
F_WINDOW_SCALE = 0x01   # the sender offered window scaling in its SYN
F_SACK_PERM = 0x02      # the sender permitted SACK
F_UNACKED = 0x10        # the sender has data the receiver has not acknowledged
_MAXACKWINCONST = 66000  # Linux: the least span below td_end that an ACK may fall in
_MAX_WSCALE = 14         # RFC 7323 §2.3

_TCP = struct.Struct("!HHIIBBH")    # ports, seq, ack, data offset, flags, window
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_INNER_IP = struct.Struct("!BxxxxxHxBxxII")   # version/IHL, flags/offset, protocol, src, dst

_PORT_TRIES = 128


class Entry:
    """One tracked flow. `orig`/`reply` are (src, sport, dst, dport, proto) tuples;
    `rewrite[d]` is None or (new_src, new_sport, new_dst, new_dport): what NAT makes of a
    packet travelling in direction d (exactly the inverse of the other direction's tuple)."""
    __slots__ = ("orig", "reply", "tcp_state", "seen_reply", "assured", "deadline", "packets",
                 "bytes", "rewrite", "marks", "win", "confirmed", "heap_key")

    def __init__(self, orig: tuple, tcp_state: str | None, deadline: float) -> None:
        self.orig = orig
        self.reply = (orig[2], orig[3], orig[0], orig[1], orig[4])
        self.tcp_state = tcp_state
        self.seen_reply = False
        self.assured = False
        self.deadline = deadline
        self.packets = [0, 0]
        self.bytes = [0, 0]
        self.rewrite: list = [None, None]
        self.marks = [0, 0, 0, 0]
        # TCP window tracking, per direction: [END, MAXEND, MAXWIN, SCALE, FLAGS]
        self.win = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]] if tcp_state else None
        self.confirmed = False
        # the key of its live expiry-heap item; None: not in the table
        self.heap_key: float | None = None

    def tuple_of(self, direction: int) -> tuple:
        return self.reply if direction else self.orig

    def __repr__(self) -> str:
        return f"Entry({self.orig} / {self.reply} {self.tcp_state} dl={self.deadline})"


def _invalid(counters) -> tuple[None, int, int]:
    """A packet that is no flow's (Linux takes the connection off it too: no NAT, no marks)."""
    counters["invalid"] += 1
    return None, ORIGINAL, INVALID


def _kind(f: int) -> str:
    """The column of TCP_TRANSITIONS a segment with valid flags f takes."""
    if f & RST:
        return "rst"
    if f & SYN:
        return "synack" if f & ACK else "syn"
    return "fin" if f & FIN else "ack"


class Conntrack:
    def __init__(self, max_entries: int = 65536, timeouts: dict | None = None,
                 counters: dict | None = None, *, rng: random.Random | None = None) -> None:
        self.max_entries = max_entries
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        for k, v in (timeouts or {}).items():
            if k not in DEFAULT_TIMEOUTS:
                raise ValueError(f"conntrack: no timeout called {k!r}")
            self.timeouts[k] = v
        self.c = counters if counters is not None else {}
        for name in COUNTER_NAMES:
            self.c.setdefault(name, 0)
        self.rng = rng if rng is not None else random.Random()
        self._table: dict[tuple, tuple[Entry, int]] = {}
        self._entries: dict[Entry, None] = {}       # confirmed, in insertion order
        self._unassured: dict[Entry, None] = {}     # early-drop candidates, oldest first
        # Expiry: a heap of (key, seq, entry), one live item per entry (key == heap_key).
        # A refresh that moves a deadline later pushes nothing (the item is re-pushed when it
        # comes due); one that moves it earlier pushes a new item, leaving a stale one.
        self._heap: list = []
        self._seq = itertools.count()

    # -- the table ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries))

    def lookup(self, key: tuple) -> tuple[Entry, int] | None:
        """(entry, direction) of a confirmed flow with this tuple, expired or not."""
        return self._table.get(key)

    def _get(self, key: tuple, now: float) -> tuple[Entry, int] | None:
        hit = self._table.get(key)
        if hit is not None and hit[0].deadline <= now:
            self._remove(hit[0])
            self.c["expired"] += 1
            return None
        return hit

    def _remove(self, e: Entry) -> None:
        if e.heap_key is None:
            return
        t = self._table
        t.pop(e.orig, None)
        t.pop(e.reply, None)
        del self._entries[e]
        self._unassured.pop(e, None)
        e.heap_key = None
        self.c["entries"] = len(self._entries)

    def _insert(self, e: Entry) -> None:
        # reply first: a flow whose two tuples are equal (to itself) is found as ORIGINAL
        self._table[e.reply] = (e, REPLY)
        self._table[e.orig] = (e, ORIGINAL)
        self._entries[e] = None
        if not e.assured:
            self._unassured[e] = None
        e.confirmed = True
        e.heap_key = e.deadline
        heapq.heappush(self._heap, (e.deadline, next(self._seq), e))
        self.c["entries"] = len(self._entries)
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._compact()

    def _compact(self) -> None:
        self._heap = [(e.heap_key, next(self._seq), e) for e in self._entries]
        heapq.heapify(self._heap)

    def _refresh(self, e: Entry, deadline: float) -> None:
        e.deadline = deadline
        if e.heap_key is not None and deadline < e.heap_key:
            e.heap_key = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), e))
            if len(self._heap) > 2 * len(self._entries) + 1024:
                self._compact()

    def _assure(self, e: Entry) -> None:
        e.assured = True
        self._unassured.pop(e, None)

    def confirm(self, entry: Entry, now: float) -> bool:
        """Enter a NEW entry in the table once its packet was accepted. False when the table
        is full of assured flows (counted refused_full) or a flow holds one of its tuples
        (counted clash): the caller drops the packet. Confirming twice does nothing."""
        if entry.confirmed:
            return True
        if len(self._entries) >= self.max_entries:
            self.expire(now)
            if len(self._entries) >= self.max_entries:
                # Linux's early_drop: an unassured flow (no reply, or a half-open TCP) makes
                # room; an assured one is never evicted for a newcomer.
                victim = next(iter(self._unassured), None)
                if victim is None:
                    self.c["refused_full"] += 1
                    return False
                self._remove(victim)
                self.c["early_drop"] += 1
        if entry.orig in self._table or entry.reply in self._table:
            self.c["clash"] += 1
            return False
        self._insert(entry)
        self.c["inserted"] += 1
        return True

    def expire(self, now: float, budget: int = 256) -> int:
        """Remove up to `budget` flows whose deadline passed; cheap when none did."""
        heap = self._heap
        removed = 0
        while heap and budget > 0 and heap[0][0] <= now:
            key, _, e = heapq.heappop(heap)
            budget -= 1
            if e.heap_key != key:
                continue                    # stale: removed, or an earlier item superseded it
            if e.deadline <= now:
                self._remove(e)
                removed += 1
            else:
                e.heap_key = e.deadline
                heapq.heappush(heap, (e.deadline, next(self._seq), e))
        self.c["expired"] += removed
        return removed

    def next_deadline(self) -> float | None:
        """A time at or before which some flow may expire (None: the table is empty)."""
        return self._heap[0][0] if self._heap else None

    def delete(self, entry: Entry) -> None:
        if entry.heap_key is not None:
            self._remove(entry)
            self.c["deleted"] += 1

    def flush(self) -> int:
        n = len(self._entries)
        self._clear()
        self.c["deleted"] += n
        return n

    def _clear(self) -> None:
        for e in self._entries:
            e.heap_key = None
        self._table.clear()
        self._entries.clear()
        self._unassured.clear()
        self._heap = []
        self.c["entries"] = 0

    # -- tracking ----------------------------------------------------------------------------
    def track(self, src: int, dst: int, proto: int, l4, length: int,
              now: float) -> tuple[Entry | None, int, int]:
        """(entry, direction, ct state) of one IPv4 packet. `l4` is its payload (exactly: the
        TCP segment length is taken from it), `length` its total length (byte counters)."""
        if proto == PROTO_TCP:
            return self._track_tcp(src, dst, l4, length, now)
        if proto == PROTO_UDP:
            return self._track_udp(src, dst, l4, length, now)
        if proto == PROTO_ICMP:
            return self._track_icmp(src, dst, l4, length, now)
        return None, ORIGINAL, NEW      # not tracked: every packet is a flow's first

    @staticmethod
    def _account(e: Entry, d: int, length: int) -> int:
        e.packets[d] += 1
        e.bytes[d] += length
        return ESTABLISHED if d or e.seen_reply else NEW

    def _new(self, key: tuple, tcp_state: str | None, timeout: int, length: int,
             now: float) -> Entry:
        e = Entry(key, tcp_state, now + timeout)
        e.packets[ORIGINAL] = 1
        e.bytes[ORIGINAL] = length
        return e

    def _track_udp(self, src, dst, l4, length, now):
        if len(l4) < 8:
            return _invalid(self.c)
        ulen = _U16.unpack_from(l4, 4)[0]
        if ulen < 8 or ulen > len(l4):      # RFC 768: the length covers header and data
            return _invalid(self.c)
        sport, dport = _PORTS.unpack_from(l4)
        key = (src, sport, dst, dport, PROTO_UDP)
        hit = self._get(key, now)
        if hit is None:
            return self._new(key, None, self.timeouts["udp"], length, now), ORIGINAL, NEW
        e, d = hit
        state = self._account(e, d, length)
        if e.seen_reply:
            self._refresh(e, now + self.timeouts["udp_stream"])
            if not e.assured:
                self._assure(e)
        else:
            self._refresh(e, now + self.timeouts["udp"])
            if d == REPLY:
                e.seen_reply = True
        return e, d, state

    def _track_icmp(self, src, dst, l4, length, now):
        if len(l4) < 8:
            return _invalid(self.c)
        itype = l4[0]
        if itype in ICMP_ERRORS:
            return self._related(dst, l4, now)
        request = itype in ICMP_QUERIES
        if not request and itype not in ICMP_QUERY_REPLIES:
            return _invalid(self.c)        # no flow starts with it (Linux's icmp_new)
        ident = _U16.unpack_from(l4, 4)[0]
        key = (src, ident, dst, ident, PROTO_ICMP)
        hit = self._get(key, now)
        if hit is None:
            if not request:
                return _invalid(self.c)
            return self._new(key, None, self.timeouts["icmp"], length, now), ORIGINAL, NEW
        e, d = hit
        if (d == ORIGINAL) != request:
            return _invalid(self.c)        # a request from the answering side, or vice versa
        state = self._account(e, d, length)
        self._refresh(e, now + self.timeouts["icmp"])
        if d == REPLY:
            e.seen_reply = True
        return e, d, state

    def _related(self, dst: int, l4, now: float) -> tuple[Entry | None, int, int]:
        """An ICMP error quotes the IP header and at least 8 bytes of a packet (RFC 792) that
        was sent in some direction of a flow; the error travels the other way, toward that
        packet's source. So the quoted tuple, inverted, is the tuple of the error's direction."""
        if len(l4) < 8 + 20 + 8:
            return _invalid(self.c)
        ver_ihl, frag, iproto, isrc, idst = _INNER_IP.unpack_from(l4, 8)
        ihl = (ver_ihl & 0x0F) * 4
        l4_at = 8 + ihl
        if ver_ihl >> 4 != 4 or ihl < 20 or len(l4) < l4_at + 8 or frag & 0x1FFF:
            return _invalid(self.c)
        if iproto == PROTO_TCP or iproto == PROTO_UDP:
            isport, idport = _PORTS.unpack_from(l4, l4_at)
        elif iproto == PROTO_ICMP and (l4[l4_at] in ICMP_QUERIES
                                       or l4[l4_at] in ICMP_QUERY_REPLIES):
            isport = idport = _U16.unpack_from(l4, l4_at + 4)[0]
        else:
            return _invalid(self.c)
        hit = self._get((idst, idport, isrc, isport, iproto), now)
        if hit is None:
            return _invalid(self.c)
        e, d = hit
        # Linux checks this too: the error goes where that direction's packets go, or it
        # would make a stranger's packet RELATED to our flow.
        if e.tuple_of(d)[2] != dst:
            return _invalid(self.c)
        return e, d, RELATED

    # -- TCP ---------------------------------------------------------------------------------
    def _track_tcp(self, src, dst, l4, length, now):
        n = len(l4)
        if n < 20:
            return _invalid(self.c)
        sport, dport, seq, ack, off, flags, win = _TCP.unpack_from(l4)
        doff = (off >> 4) * 4
        f = flags & _FLAG_MASK
        if doff < 20 or doff > n or f not in _VALID_FLAGS:
            return _invalid(self.c)
        # RFC 9293 §3.4: SYN and FIN each take one sequence number
        end = (seq + n - doff + (1 if f & SYN else 0) + (f & FIN)) & MASK
        key = (src, sport, dst, dport, PROTO_TCP)
        hit = self._get(key, now)
        if hit is None:
            if f & (SYN | ACK | RST | FIN) != SYN:
                return _invalid(self.c)    # no pickup of a connection in the middle
            return self._new_tcp(key, end, win, l4, doff, length, now), ORIGINAL, NEW
        e, d = hit
        old = e.tcp_state
        new = _TABLE[d, _kind(f), old]
        if new is _IV:
            return _invalid(self.c)
        if new is _IG:
            return e, d, ESTABLISHED if d or e.seen_reply else NEW
        if new == SYN_SENT and (old == TIME_WAIT or old == CLOSE):
            # RFC 1122 §4.2.2.13: a SYN may reopen a closed connection; it is a new flow
            # (from whichever side sends it).
            self.delete(e)
            return self._new_tcp(key, end, win, l4, doff, length, now), ORIGINAL, NEW
        if not self._in_window(e, d, seq, ack, end, win, f, l4, doff):
            return _invalid(self.c)
        e.tcp_state = new
        state = self._account(e, d, length)
        if not e.seen_reply and f & RST:
            # Linux: a connection answered (or abandoned) with only a RST never was one;
            # forget it at once.
            self.delete(e)
            return e, d, state
        t = self.timeouts
        if f & RST:
            timeout = t["close"]
        else:
            timeout = t[new]
            if (e.win[0][FLAGS] | e.win[1][FLAGS]) & F_UNACKED and timeout > t["unacknowledged"]:
                timeout = t["unacknowledged"]
        self._refresh(e, now + timeout)
        if d == REPLY:
            e.seen_reply = True
        elif e.seen_reply and not e.assured and new == _ES and (old == _SR or old == _ES):
            self._assure(e)         # the handshake's last ACK: a real connection
        return e, d, state

    def _new_tcp(self, key, end, win, l4, doff, length, now) -> Entry:
        e = self._new(key, SYN_SENT, self.timeouts[SYN_SENT], length, now)
        w = e.win[ORIGINAL]
        w[END] = w[MAXEND] = end
        w[MAXWIN] = win or 1
        self._syn_options(w, l4, doff)
        return e

    @staticmethod
    def _syn_options(w: list, l4, doff: int) -> None:
        """The window scale and SACK-permitted options of a SYN (Linux's tcp_options); a
        malformed option list counts as none."""
        w[SCALE] = w[FLAGS] = 0
        if doff == 20:
            return
        try:
            seg = TcpSegment.parse(l4, 0, 0, verify_checksum=False)   # addresses: unused
        except ParseError:
            return
        if seg.wscale is not None:
            w[SCALE] = min(seg.wscale, _MAX_WSCALE)
            w[FLAGS] |= F_WINDOW_SCALE
        if seg.sack_permitted:
            w[FLAGS] |= F_SACK_PERM

    @staticmethod
    def _highest_sack(l4, ack: int) -> int:
        """The highest right edge of the SACK blocks above `ack` (Linux's tcp_sack)."""
        try:
            blocks = TcpSegment.parse(l4, 0, 0, verify_checksum=False).sack_blocks
        except ParseError:
            return ack
        for _left, right in blocks:
            if gt(right, ack):
                ack = right
        return ack

    def _in_window(self, e: Entry, d: int, seq: int, ack: int, end: int, win: int, f: int,
                   l4, doff: int) -> bool:
        """Linux's tcp_in_window: Guido van Rooij's "Real Stateful TCP Packet Filtering in IP
        Filter". A segment is acceptable when (I) it starts at or below the highest end the
        receiver's window allowed, (II) it ends above what the sender sent minus the
        receiver's largest window, (III) it acknowledges nothing the receiver has not sent,
        (IV) nor less than a window below that. Then both sides' bounds move."""
        sender, receiver = e.win[d], e.win[1 - d]
        sack = ack
        if receiver[FLAGS] & F_SACK_PERM and doff > 20:
            sack = self._highest_sack(l4, ack)
        if sender[MAXWIN] == 0:
            # The first segment of this direction.
            if f & SYN:     # SYN/ACK: RFC 7323 §2.2, scaling only if both sides offered it
                sender[END] = sender[MAXEND] = end
                sender[MAXWIN] = win or 1
                self._syn_options(sender, l4, doff)
                if not (sender[FLAGS] & receiver[FLAGS] & F_WINDOW_SCALE):
                    sender[SCALE] = receiver[SCALE] = 0
            else:           # a RST answering the SYN: take what it says
                sender[END] = end
                sender[MAXWIN] = (win << sender[SCALE]) or 1
                sender[MAXEND] = add(end, sender[MAXWIN])
                if receiver[MAXWIN] == 0:
                    receiver[END] = receiver[MAXEND] = sack
                elif sack == add(receiver[END], 1):
                    receiver[END] = sack        # likely answering a keepalive
        elif f & SYN and gt(end, sender[END]) and (
                (e.tcp_state == SYN_SENT and d == ORIGINAL)
                or (e.tcp_state == SYN_RECV and d == REPLY)):
            # RFC 9293 §3.4.1: a reinitialised peer may use a new ISN above the old ones.
            sender[END] = sender[MAXEND] = end
            sender[MAXWIN] = win or 1
            self._syn_options(sender, l4, doff)
        if not f & ACK or (f & RST and ack == 0):
            ack = sack = receiver[END]   # no ACK (or a broken stack's zero one): passes III/IV
        if f & RST and seq == 0 and e.tcp_state == SYN_SENT:
            seq = end = sender[END]     # a RST answering our SYN, without a sequence number
        in_recv_win = receiver[MAXWIN] == 0 or gt(end, add(sender[END], -receiver[MAXWIN] - 1))
        maxackwin = max(sender[MAXWIN], _MAXACKWINCONST)
        if not (lt(seq, add(sender[MAXEND], 1)) and in_recv_win
                and lt(sack, add(receiver[END], 1))
                and gt(sack, add(receiver[END], -maxackwin - 1))):
            return False
        if not f & SYN:
            win <<= sender[SCALE]       # RFC 7323 §2.2: never scaled in a SYN
        swin = win + ((sack - ack) & MASK)
        if sender[MAXWIN] < swin:
            sender[MAXWIN] = swin
        if gt(end, sender[END]):
            sender[END] = end
            sender[FLAGS] |= F_UNACKED
        if receiver[MAXWIN] != 0 and gt(end, sender[MAXEND]):
            receiver[MAXWIN] += (end - sender[MAXEND]) & MASK
        if gt(add(sack, win), add(receiver[MAXEND], -1)):
            receiver[MAXEND] = add(sack, win if win else 1)
        if ack == receiver[END]:
            receiver[FLAGS] &= ~F_UNACKED
        return True

    # -- NAT bindings ------------------------------------------------------------------------
    def snat(self, entry: Entry, address: int, port: int | None,
             port_range: tuple[int, int] = (1024, 65535)) -> bool:
        """Translate the source of a NEW, unconfirmed flow's packets to `address` and `port`
        (None: keep the current source port if the reply tuple is free, else the first free
        one of port_range). For ICMP queries the identifier is the port. Composes with an
        earlier `dnat`. False (counted nat_no_port) when every port tried makes a reply tuple
        the table holds. On a confirmed entry the binding made with its first packet stands:
        nothing changes (True)."""
        if entry.confirmed:
            return True
        _src, sport, dst, dport = entry.rewrite[ORIGINAL] or entry.orig[:4]
        ports = [sport] if port is None else [port]
        return self._bind(entry, address, ports, port is None, port_range, dst, dport)

    def dnat(self, entry: Entry, address: int, port: int | None) -> bool:
        """Translate the destination of a NEW, unconfirmed flow's packets to `address` and
        `port` (None, and always for ICMP queries: keep it). If the reply tuple that makes
        is held by another flow, the source port moves, as snat would move it."""
        if entry.confirmed:
            return True
        src, sport, _dst, dport = entry.rewrite[ORIGINAL] or entry.orig[:4]
        if port is not None and entry.orig[4] != PROTO_ICMP:
            dport = port
        return self._bind(entry, src, [sport], True, (1024, 65535), address, dport)

    def _bind(self, e: Entry, src: int, ports: list, search: bool, port_range: tuple,
              dst: int, dport: int) -> bool:
        proto = e.orig[4]
        icmp = proto == PROTO_ICMP
        table = self._table
        for p in self._candidates(ports, search, port_range):
            reply = (dst, p, src, p, proto) if icmp else (dst, dport, src, p, proto)
            if reply not in table:
                o = e.orig
                e.reply = reply
                e.rewrite = ([None, None] if reply == (o[2], o[3], o[0], o[1], proto) else
                             [(src, p, dst, reply[1]), (o[2], o[3], o[0], o[1])])
                return True
        self.c["nat_no_port"] += 1
        return False

    def _candidates(self, first: list, search: bool, port_range: tuple) -> Iterator[int]:
        yield from first
        if not search:
            return
        # RFC 6056 §3.3.1, Algorithm 1: a random start, then a linear search (bounded).
        lo, hi = port_range
        count = hi - lo + 1
        if count <= 0:
            return
        start = self.rng.randrange(count)
        for i in range(min(count, _PORT_TRIES)):
            yield lo + (start + i) % count

    # -- listing and hand-over ---------------------------------------------------------------
    def describe(self, now: float) -> Iterator[dict]:
        for e in list(self._entries):
            o, r = e.orig, e.reply
            yield {"proto": PROTO_NAMES.get(o[4], o[4]), "src": o[0], "sport": o[1],
                   "dst": o[2], "dport": o[3], "reply_src": r[0], "reply_sport": r[1],
                   "reply_dst": r[2], "reply_dport": r[3],
                   "state": e.tcp_state or ("established" if e.seen_reply else "new"),
                   "assured": e.assured, "expires_in": max(0, int(e.deadline - now)),
                   "packets": e.packets[0] + e.packets[1], "bytes": e.bytes[0] + e.bytes[1]}

    def to_snapshot(self, now: float) -> list:
        """Every confirmed flow as a plain list (msgpack-able); deadlines as seconds left."""
        return [[list(e.orig), list(e.reply), e.tcp_state, e.seen_reply, e.assured,
                 round(max(0.0, e.deadline - now), 3), list(e.packets), list(e.bytes),
                 [None if rw is None else list(rw) for rw in e.rewrite], list(e.marks),
                 None if e.win is None else [list(w) for w in e.win]]
                for e in self._entries]

    def restore(self, data: list, now: float) -> int:
        """Replace the table with a snapshot's flows (the first max_entries of them; expired,
        malformed or clashing ones are skipped). Returns how many were restored."""
        self._clear()
        for item in data:
            if len(self._entries) >= self.max_entries:
                break
            e = _entry_from(item, now)
            if e is None or e.orig in self._table or e.reply in self._table:
                continue
            self._insert(e)
        return len(self._entries)


def _ints(x, n: int) -> tuple:
    t = tuple(int(v) for v in x)
    if len(t) != n:
        raise ValueError("wrong length")
    return t


def _entry_from(item, now: float) -> Entry | None:
    try:
        (orig, reply, tcp_state, seen_reply, assured, left, packets, nbytes, rewrite, marks,
         win) = item
        orig = _ints(orig, 5)
        if not (tcp_state in TCP_STATES if orig[4] == PROTO_TCP else tcp_state is None):
            return None
        left = float(left)
        if left <= 0:
            return None
        e = Entry(orig, tcp_state, now + left)
        e.reply = _ints(reply, 5)
        e.seen_reply, e.assured = bool(seen_reply), bool(assured)
        e.packets, e.bytes = list(_ints(packets, 2)), list(_ints(nbytes, 2))
        e.rewrite = [None if rw is None else _ints(rw, 4) for rw in rewrite]
        e.marks = list(_ints(marks, 4))
        if tcp_state is not None:
            e.win = [list(_ints(w, 5)) for w in win]
        if len(e.rewrite) != 2 or (e.win is not None and len(e.win) != 2):
            return None
        return e
    except (TypeError, ValueError):
        return None


__all__ = ["Conntrack", "Entry", "NEW", "ESTABLISHED", "RELATED", "INVALID", "ORIGINAL",
           "REPLY", "DEFAULT_TIMEOUTS", "TCP_TRANSITIONS", "TCP_STATES", "ICMP_QUERIES",
           "ICMP_QUERY_REPLIES", "ICMP_ERRORS"]
