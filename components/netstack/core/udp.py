"""UDP sockets (RFC 768), the same table for IPv4 and IPv6.

This module owns bindings, demultiplexing and receive queues; the IP layer of its version
hands it each datagram (`receive`) and answers "no port" with its own ICMP. Building and
routing datagrams is the IP layer's business (Stack.udp_sendto); this module never produces
a frame.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Union

from ..wire import ParseError, UdpDatagram
from .config import StackConfig
from .errors import StackError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


_ADDRESS = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


class Datagram:
    """A received datagram as queued to a socket.

    Addresses are kept as ints (`src_int`, `dst_int`): the per-frame path never builds an
    `ipaddress` object, and `src`/`dst` build one only when asked. The constructor takes
    either form; ints are IPv4 unless `version` says otherwise. `ttl` and `tos` are the IP
    header's (TTL or hop limit; the DSCP and ECN byte), for IP_RECVTTL and IP_RECVTOS.
    """
    __slots__ = ("version", "src_int", "src_port", "dst_int", "dst_port", "device", "payload",
                 "ttl", "tos")

    def __init__(self, src: IPAddress | int, src_port: int, dst: IPAddress | int,
                 dst_port: int, device: str, payload: bytes, version: int = 4,
                 ttl: int = 0, tos: int = 0) -> None:
        if src.__class__ is not int:
            version = src.version
            src, dst = int(src), int(dst)
        self.version = version
        self.src_int = src
        self.src_port = src_port
        self.dst_int = dst
        self.dst_port = dst_port
        self.device = device
        self.payload = payload
        self.ttl = ttl
        self.tos = tos

    @property
    def src(self) -> IPAddress:
        return _ADDRESS[self.version](self.src_int)

    @property
    def dst(self) -> IPAddress:
        return _ADDRESS[self.version](self.dst_int)

    def _key(self) -> tuple:
        return (self.version, self.src_int, self.src_port, self.dst_int, self.dst_port,
                self.device, self.payload)

    def __eq__(self, other) -> bool:
        return isinstance(other, Datagram) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Datagram(src={self.src}, src_port={self.src_port}, dst={self.dst}, "
                f"dst_port={self.dst_port}, device={self.device!r}, payload={self.payload!r})")

    def to_dict(self) -> dict:
        return {"src": str(self.src), "src_port": self.src_port, "dst": str(self.dst),
                "dst_port": self.dst_port, "device": self.device, "payload": self.payload,
                "ttl": self.ttl, "tos": self.tos}

    @classmethod
    def from_dict(cls, d: dict) -> "Datagram":
        return cls(ipaddress.ip_address(d["src"]), int(d["src_port"]),
                   ipaddress.ip_address(d["dst"]), int(d["dst_port"]), str(d["device"]),
                   bytes(d["payload"]), ttl=int(d.get("ttl", 0)), tos=int(d.get("tos", 0)))


@dataclass
class UdpSocket:
    sid: int
    local_addr: IPAddress | None = None     # None: any of our addresses
    local_port: int = 0                     # 0: not bound yet
    device: str | None = None               # SO_BINDTODEVICE
    remote_addr: IPAddress | None = None    # set by connect
    remote_port: int = 0
    broadcast: bool = False                 # SO_BROADCAST: may send to broadcast addresses
    marks: tuple = ()                       # socket marks by domain (1..4), for the filter
    queue: deque = field(default_factory=deque)
    queued_bytes: int = 0
    dropped: int = 0                        # datagrams lost to a full receive queue
    # local_addr and remote_addr as ints (None alike), for demultiplexing by int; set
    # together with them (bind, connect, restore).
    local_int: int | None = None
    remote_int: int | None = None

    def info(self) -> dict:
        return {"sid": self.sid,
                "local_addr": None if self.local_addr is None else str(self.local_addr),
                "local_port": self.local_port, "device": self.device,
                "remote_addr": None if self.remote_addr is None else str(self.remote_addr),
                "remote_port": self.remote_port, "broadcast": self.broadcast,
                "marks": list(self.marks),
                "queued": len(self.queue), "queued_bytes": self.queued_bytes,
                "dropped": self.dropped}


def _overlap(a, b) -> bool:
    return a is None or b is None or a == b


class UdpSockets:
    def __init__(self, version: int, cfg: StackConfig, counters, rng: random.Random,
                 first_sid: int = 1) -> None:
        """`first_sid`: where this table's socket ids start (one table per IP version,
        disjoint ranges, so a binding serving both tells them apart by id)."""
        self.version = version
        self.first_sid = first_sid
        self.cfg = cfg
        self.counters = counters
        self.rng = rng
        self._sockets: dict[int, UdpSocket] = {}
        self._by_port: dict[int, list[int]] = {}
        self._readable: set[int] = set()
        self.next_sid = first_sid

    def __len__(self) -> int:
        return len(self._sockets)

    def get(self, sid: int) -> UdpSocket:
        s = self._sockets.get(sid)
        if s is None:
            raise StackError("not_found", f"no UDP socket {sid}")
        return s

    def owns(self, sid: int) -> bool:
        """Whether a socket id is of this table's range (see first_sid)."""
        return sid >= self.first_sid

    def open(self) -> int:
        if len(self._sockets) >= self.cfg.max_sockets:
            self.counters["open_refused_limit"] += 1
            raise StackError("limit", f"socket table full ({self.cfg.max_sockets})")
        sid = self.next_sid
        self.next_sid += 1
        self._sockets[sid] = UdpSocket(sid)
        return sid

    def close(self, sid: int) -> None:
        s = self.get(sid)
        if s.local_port:
            self._by_port[s.local_port].remove(sid)
            if not self._by_port[s.local_port]:
                del self._by_port[s.local_port]
        del self._sockets[sid]
        self._readable.discard(sid)

    def bind(self, sid: int, addr: IPAddress | None, port: int, device: str | None,
             is_local: Callable[[IPAddress], bool]) -> tuple[IPAddress | None, int]:
        s = self.get(sid)
        if s.local_port:
            raise StackError("bad_argument", f"socket {sid} is already bound")
        if not 0 <= port <= 0xFFFF:
            raise StackError("bad_argument", f"bad port {port}")
        if addr is not None:
            if addr.version != self.version:
                raise StackError("bad_argument", f"not an IPv{self.version} address: {addr}")
            if addr.is_unspecified:
                addr = None
            elif not is_local(addr):
                raise StackError("address_not_available", f"{addr} is not one of our addresses")
        if port == 0:
            port = self._ephemeral(addr, device)
        elif self._in_use(port, addr, device):
            raise StackError("address_in_use", f"port {port} is in use")
        s.local_addr, s.local_port, s.device = addr, port, device
        s.local_int = None if addr is None else int(addr)
        self._by_port.setdefault(port, []).append(sid)
        return addr, port

    def bind_shared(self, sid: int, addr: IPAddress | None, port: int, device: str | None) -> None:
        """Bind without the in-use check: the binding has decided that the port may be
        shared (SO_REUSEADDR / SO_REUSEPORT, which this table does not model)."""
        s = self.get(sid)
        s.local_addr, s.local_port, s.device = addr, port, device
        s.local_int = None if addr is None else int(addr)
        self._by_port.setdefault(port, []).append(sid)

    def connect(self, sid: int, addr: IPAddress, port: int) -> None:
        s = self.get(sid)
        if addr.version != self.version or not 0 < port <= 0xFFFF or addr.is_unspecified:
            raise StackError("bad_argument", f"cannot connect to {addr}:{port}")
        s.remote_addr, s.remote_port = addr, port
        s.remote_int = int(addr)

    def _in_use(self, port: int, addr: IPAddress | None, device: str | None) -> bool:
        for other in self._by_port.get(port, ()):
            o = self._sockets[other]
            if _overlap(o.local_addr, addr) and _overlap(o.device, device):
                return True
        return False

    def _ephemeral(self, addr: IPAddress | None, device: str | None) -> int:
        # RFC 6056 §3.3.1, Algorithm 1: random start, then a linear search of the range.
        lo, hi = self.cfg.ephemeral_port_min, self.cfg.ephemeral_port_max
        count = hi - lo + 1
        start = self.rng.randrange(count)
        for i in range(count):
            port = lo + (start + i) % count
            if not self._in_use(port, addr, device):
                return port
        self.counters["ephemeral_exhausted"] += 1
        raise StackError("address_in_use", "no free ephemeral port")

    # -- receive path -----------------------------------------------------------------------
    def receive(self, src: IPAddress, dst: IPAddress, payload: bytes | memoryview, device: str,
                broadcast: bool, ttl: int = 0, tos: int = 0) -> bool:
        """A datagram from the IP layer of this version, for the sockets it is meant for.
        False: no socket has its port, and the caller answers with its version's port
        unreachable (RFC 1122 §4.1.3.1) unless the datagram was a broadcast."""
        c = self.counters
        try:
            d = UdpDatagram.parse(payload, src, dst)
        except ParseError:
            c["rx_bad"] += 1
            return True
        c["rx_datagrams"] += 1
        s, t = int(src), int(dst)
        socks = self.match(s, d.src_port, t, d.dst_port, device, broadcast)
        if not socks:
            c["rx_no_port"] += 1
            return False
        data = bytes(d.payload)
        for sock in socks:
            self.deliver(sock, Datagram(s, d.src_port, t, d.dst_port, device, data,
                                        self.version, ttl, tos))
        return True

    def match(self, src: int, src_port: int, dst: int, dst_port: int, device: str,
              broadcast: bool) -> list[UdpSocket]:
        """Sockets that should get a datagram: the best one for unicast, all for broadcast.
        Addresses are ints (the per-frame path has no ipaddress objects)."""
        best: list[UdpSocket] = []
        best_score = -1
        for sid in self._by_port.get(dst_port, ()):
            s = self._sockets[sid]
            score = 0
            if s.device is not None:
                if s.device != device:
                    continue
                score += 1
            if s.local_addr is not None:
                if s.local_int != dst:
                    continue
                score += 2
            if s.remote_int is not None:
                if s.remote_int != src or s.remote_port != src_port:
                    continue
                score += 4
            if broadcast:
                best.append(s)
            elif score > best_score:
                best, best_score = [s], score
        return best

    def deliver(self, s: UdpSocket, dgram: Datagram) -> bool:
        size = len(dgram.payload)
        if len(s.queue) >= self.cfg.udp_recv_queue_datagrams or \
                s.queued_bytes + size > self.cfg.udp_recv_queue_bytes:
            s.dropped += 1
            self.counters["rx_queue_full"] += 1
            return False
        s.queue.append(dgram)
        s.queued_bytes += size
        self._readable.add(s.sid)
        self.counters["rx_delivered"] += 1
        return True

    def recv(self, sid: int, max_count: int) -> list[Datagram]:
        s = self.get(sid)
        out = []
        while s.queue and len(out) < max_count:
            d = s.queue.popleft()
            s.queued_bytes -= len(d.payload)
            out.append(d)
        return out

    def take_readable(self) -> set[int]:
        r, self._readable = self._readable, set()
        return {sid for sid in r if sid in self._sockets}

    def find_sender(self, local: IPAddress, local_port: int, remote: IPAddress,
                    remote_port: int) -> UdpSocket | None:
        """The socket that sent local:local_port -> remote:remote_port (for ICMP errors)."""
        for sid in self._by_port.get(local_port, ()):
            s = self._sockets[sid]
            if s.local_addr not in (None, local):
                continue
            if s.remote_addr is not None and (s.remote_addr, s.remote_port) != (remote, remote_port):
                continue
            return s
        return None

    def sockets(self) -> list[UdpSocket]:
        return list(self._sockets.values())

    def stats(self) -> dict[str, int]:
        return {"sockets": len(self._sockets), "sockets_limit": self.cfg.max_sockets,
                "queued_datagrams": sum(len(s.queue) for s in self._sockets.values()),
                "queue_limit_datagrams": self.cfg.udp_recv_queue_datagrams,
                "queue_limit_bytes": self.cfg.udp_recv_queue_bytes}

    # -- restart ----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"next_sid": self.next_sid,
                "sockets": [dict(s.info(), queue=[d.to_dict() for d in s.queue])
                            for s in self._sockets.values()]}

    def restore(self, snap: dict) -> None:
        self.next_sid = max(int(snap.get("next_sid", 1)), self.first_sid)
        for d in snap.get("sockets", ()):
            s = UdpSocket(int(d["sid"]))
            s.local_addr = None if d["local_addr"] is None else ipaddress.ip_address(d["local_addr"])
            s.local_port = int(d["local_port"])
            s.device = d["device"]
            s.remote_addr = None if d["remote_addr"] is None else ipaddress.ip_address(d["remote_addr"])
            s.remote_port = int(d["remote_port"])
            s.local_int = None if s.local_addr is None else int(s.local_addr)
            s.remote_int = None if s.remote_addr is None else int(s.remote_addr)
            s.broadcast = bool(d["broadcast"])
            s.marks = tuple(int(x) for x in d.get("marks", ()))
            s.dropped = int(d.get("dropped", 0))
            for q in d.get("queue", ()):
                dg = Datagram.from_dict(q)
                s.queue.append(dg)
                s.queued_bytes += len(dg.payload)
            self._sockets[s.sid] = s
            if s.local_port:
                self._by_port.setdefault(s.local_port, []).append(s.sid)
            if s.queue:
                self._readable.add(s.sid)
            self.next_sid = max(self.next_sid, s.sid + 1)
