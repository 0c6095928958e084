"""Fragmentation on send and reassembly on receive.

The reassembler is the same for IPv4 and IPv6: it is keyed by whatever tuple the version
uses to name a datagram ((src, dst, proto, ident) for IPv4, RFC 791; (src, dst, ident) for
IPv6, RFC 8200), and holds byte ranges with the hole logic of RFC 815. How a payload is cut
(`fragment_spans`) is the same for both too; only the headers put on each piece differ
(`fragment_ipv4` here; IPv6 puts a Fragment header after the unfragmentable part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

from ..wire import build_ipv4, options_for_fragment
from ..wire.ipv4 import IPV4_HEADER_LEN, Ipv4Packet
from .config import StackConfig
from .timers import Deadlines

# Bytes charged per held fragment beyond its payload, so that floods of tiny fragments are
# accounted for what they cost, not just for their payload.
FRAGMENT_OVERHEAD = 64


# -- fragmentation ---------------------------------------------------------------------------

def fragment_spans(length: int, first_room: int, later_room: int) -> list[tuple[int, int]]:
    """(offset, size) of each piece of a `length`-byte payload, in order.

    Every piece but the last carries a multiple of 8 bytes (offsets count 8-byte units: RFC
    791 §3.1, RFC 8200 §4.5); the first holds at most `first_room` bytes, the others at most
    `later_room` (IPv4 copies only some options into later fragments). [] when a piece that
    is needed would hold fewer than 8 bytes. An empty payload is one empty piece.
    """
    spans = []
    off = 0
    while True:
        room = (first_room if off == 0 else later_room) & ~7
        if room <= 0:
            return []
        size = min(room, length - off)
        spans.append((off, size))
        off += size
        if off >= length:
            return spans


def fragment_ipv4(pkt: Ipv4Packet, mtu: int, ttl: int | None = None) -> list[bytes]:
    """Split pkt into fragments that fit mtu (RFC 791 §3.2, "fragmentation procedure").

    pkt may itself be a fragment (forwarding); offsets and the MF flag of its last piece are
    kept. The caller has checked DF. Returns [] when mtu cannot carry 8 payload bytes.
    """
    ttl = pkt.ttl if ttl is None else ttl
    payload = bytes(pkt.payload)
    first_opts = pkt.options_bytes
    later_opts = options_for_fragment(first_opts) if first_opts else b""
    spans = fragment_spans(len(payload), mtu - IPV4_HEADER_LEN - len(first_opts),
                           mtu - IPV4_HEADER_LEN - len(later_opts))
    last = len(spans) - 1
    return [build_ipv4(pkt.src, pkt.dst, pkt.proto, payload[off:off + size], ttl=ttl,
                       ident=pkt.ident, more_fragments=pkt.more_fragments if i == last else True,
                       frag_offset=pkt.frag_offset + off, dscp=pkt.dscp, ecn=pkt.ecn,
                       options=first_opts if off == 0 else later_opts)
            for i, (off, size) in enumerate(spans)]


# -- reassembly (any version) ---------------------------------------------------------------

@dataclass
class _Datagram:
    source: Hashable
    parts: list[tuple[int, int, bytes]] = field(default_factory=list)  # (start, end, data)
    total: int | None = None        # payload length, known once the last fragment arrived
    first: Any = None               # the offset-0 fragment (for its header and ICMP quoting)
    charged: int = 0


class Reassembler:
    """Bounded by datagram count, bytes per source and bytes in total; each has a counter."""

    def __init__(self, cfg: StackConfig, counters) -> None:
        self.cfg = cfg
        self.counters = counters
        self._held: dict[Hashable, _Datagram] = {}   # insertion order = age
        self._timers = Deadlines()
        self._by_source: dict[Hashable, int] = {}
        self.bytes_total = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, key: Hashable, source: Hashable, offset: int, data: bytes, more: bool,
            first: Any, now: float, max_payload: int) -> tuple[Any, bytes] | None:
        """Take one fragment; returns (first fragment, whole payload) when complete.

        `first` is the fragment itself when offset == 0 (kept for its header), else None.
        `max_payload` bounds the reassembled payload (65535 minus the header for IPv4).
        """
        c = self.counters
        c["fragments"] += 1
        end = offset + len(data)
        if end > max_payload:
            c["dropped_too_big"] += 1          # "ping of death"
            self._drop(key)
            return None
        if more and len(data) % 8:
            c["dropped_bad_length"] += 1       # RFC 791: all but the last carry 8-byte units
            return None
        dg = self._held.get(key)
        if dg is None:
            if len(self._held) >= self.cfg.reassembly_max_datagrams:
                self._evict_oldest()
            dg = self._held[key] = _Datagram(source)
            self._timers.set(key, now + self.cfg.reassembly_timeout)
        # Overlap: any overlap other than an exact duplicate kills the datagram (RFC 5722's
        # rule for IPv6, applied to IPv4 too: overlapping fragments are an attack, not a need).
        for s, e, d in dg.parts:
            if offset < e and s < end:
                if (s, e) == (offset, end) and d == data:
                    c["duplicates"] += 1
                    return None
                c["dropped_overlap"] += 1
                self._drop(key)
                return None
        if not more:
            if dg.total is not None and dg.total != end:
                c["dropped_inconsistent"] += 1
                self._drop(key)
                return None
            dg.total = end
        if dg.total is not None and any(e > dg.total for _, e, _ in dg.parts + [(0, end, b"")]):
            c["dropped_inconsistent"] += 1
            self._drop(key)
            return None
        if len(dg.parts) >= self.cfg.reassembly_max_fragments:
            c["dropped_too_many_fragments"] += 1
            self._drop(key)
            return None
        cost = len(data) + FRAGMENT_OVERHEAD
        if self._by_source.get(source, 0) + cost > self.cfg.reassembly_bytes_per_source:
            c["dropped_source_limit"] += 1     # one source cannot starve the others
            if not dg.parts:
                self._drop(key)
            return None
        while self.bytes_total + cost > self.cfg.reassembly_bytes_total:
            if not self._evict_oldest(keep=key):
                c["dropped_memory_limit"] += 1
                self._drop(key)
                return None
        dg.parts.append((offset, end, bytes(data)))
        dg.charged += cost
        self.bytes_total += cost
        self._by_source[source] = self._by_source.get(source, 0) + cost
        if offset == 0:
            dg.first = first
        if dg.total is None or sum(e - s for s, e, _ in dg.parts) != dg.total:
            return None
        # No overlaps and every part within total: equal length means no holes (RFC 815).
        dg.parts.sort()
        payload = b"".join(d for _, _, d in dg.parts)
        first_frag = dg.first
        self._drop(key)
        c["reassembled"] += 1
        return first_frag, payload

    def poll(self, now: float) -> list[Any]:
        """Expire datagrams; returns their first fragments (None where it never came)."""
        expired = []
        for key in self._timers.pop_due(now):
            dg = self._held.get(key)
            if dg is None:
                continue
            self.counters["timeout"] += 1
            expired.append(dg.first)
            self._drop(key)
        return expired

    def next_deadline(self) -> float | None:
        return self._timers.next()

    def clear(self) -> None:
        for key in list(self._held):
            self._drop(key)

    def stats(self) -> dict[str, int]:
        return {"datagrams": len(self._held), "datagrams_limit": self.cfg.reassembly_max_datagrams,
                "bytes": self.bytes_total, "bytes_limit": self.cfg.reassembly_bytes_total,
                "sources": len(self._by_source)}

    def _evict_oldest(self, keep: Hashable = None) -> bool:
        for key in self._held:
            if key != keep:
                self.counters["evicted"] += 1
                self._drop(key)
                return True
        return False

    def _drop(self, key: Hashable) -> None:
        dg = self._held.pop(key, None)
        if dg is None:
            return
        self._timers.cancel(key)
        self.bytes_total -= dg.charged
        left = self._by_source.get(dg.source, 0) - dg.charged
        if left > 0:
            self._by_source[dg.source] = left
        else:
            self._by_source.pop(dg.source, None)
