"""Test helpers: a tiny lossy network between two Connections, and a hand-driven peer."""

from __future__ import annotations

import heapq
import itertools
import random
from ipaddress import IPv4Address

from components.netstack.core.tcp import Connection, OutSegment, TcpConfig, TcpEvent
from components.netstack.wire.tcp import TcpSegment, build_tcp

A_IP = IPv4Address("10.0.0.1")
B_IP = IPv4Address("10.0.0.2")
A_PORT = 40000
B_PORT = 80
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))


def on_wire(out: OutSegment, src_ip, dst_ip) -> TcpSegment:
    """Through real bytes and the real parser, checksum included."""
    return TcpSegment.parse(out.build(src_ip, dst_ip), src_ip, dst_ip)


def pair(config: TcpConfig = TcpConfig(), config_b: TcpConfig | None = None) -> tuple[Connection, Connection]:
    a = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=config)
    b = Connection(B_IP, B_PORT, A_IP, A_PORT, isn_key=KEY_B, config=config_b or config)
    return a, b


class Net:
    """Carries segments between a and b with a delay; drops, duplicates and reorders them
    (a seeded RNG) when asked. Time is a float in seconds, advanced only by run()."""

    def __init__(self, a: Connection, b: Connection, *, seed: int = 0, loss: float = 0.0,
                 dup: float = 0.0, reorder: float = 0.0, delay: float = 0.01,
                 now: float = 0.0) -> None:
        self.a, self.b = a, b
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder, self.delay = loss, dup, reorder, delay
        self.now = now
        self._flight: list = []
        self._tie = itertools.count()
        self.log: list[tuple[float, str, OutSegment]] = []   # everything sent
        self.events: dict[str, list[TcpEvent]] = {"a": [], "b": []}
        self.drop_next: dict[str, int] = {"a": 0, "b": 0}    # drop the next n segments of a side
        self.blackhole = False

    def _ends(self):
        return (("a", self.a, self.b, A_IP, B_IP), ("b", self.b, self.a, B_IP, A_IP))

    def collect(self) -> None:
        for name, src, dst, sip, dip in self._ends():
            for out in src.take_segments():
                self.log.append((self.now, name, out))
                if self.blackhole:
                    continue
                if self.drop_next[name]:
                    self.drop_next[name] -= 1
                    continue
                if self.rng.random() < self.loss:
                    continue
                copies = 2 if self.rng.random() < self.dup else 1
                for _ in range(copies):
                    t = self.now + self.delay
                    if self.rng.random() < self.reorder:
                        t += self.rng.uniform(0, 3 * self.delay)
                    heapq.heappush(self._flight, (t, next(self._tie), dst, on_wire(out, sip, dip)))
            self.events[name] += src.take_events()

    def run(self, until=lambda: False, max_time: float = 600.0) -> None:
        """Deliver and fire timers until `until()` holds or nothing is left to do."""
        end = self.now + max_time
        while True:
            self.collect()
            if until():
                return
            self.collect()      # what until() made the connections send
            times = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            if self._flight:
                times.append(self._flight[0][0])
            if not times:
                return
            t = min(times)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            while self._flight and self._flight[0][0] <= self.now:
                _, _, dst, seg = heapq.heappop(self._flight)
                dst.segment_arrives(seg, self.now)
                self.collect()
            for c in (self.a, self.b):
                c.poll(self.now)

    def sent(self, name: str) -> list[OutSegment]:
        return [s for _, n, s in self.log if n == name]


class Peer:
    """A remote end driven by hand against one Connection `c` (which is at A)."""

    def __init__(self, c: Connection, iss: int = 5000, now: float = 0.0) -> None:
        self.c = c
        self.iss = iss
        self.seq = iss          # the peer's next sequence number
        self.now = now
        self.got: list[OutSegment] = []    # everything c answered, in order

    def send(self, flags: int, *, seq: int | None = None, ack: int | None = None,
             payload: bytes = b"", window: int = 65535, mss: int | None = None,
             now: float | None = None) -> list[OutSegment]:
        if now is not None:
            self.now = now
        raw = build_tcp(B_IP, A_IP, B_PORT, A_PORT, self.seq if seq is None else seq,
                        (self.c.snd_nxt if ack is None else ack), flags, window, payload, mss=mss)
        self.c.segment_arrives(TcpSegment.parse(raw, B_IP, A_IP), self.now)
        out = self.c.take_segments()
        self.got += out
        return out
