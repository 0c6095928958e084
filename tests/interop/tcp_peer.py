"""A packet-level TCP peer for interop tests, in the manner of packetdrill and gVisor's
packetimpact: segments are built and parsed by scapy (a packet builder no one here wrote) and
cross the TAP of a running qnet graph through an AF_PACKET socket opened inside the port's
network namespace, so the peer sends exactly the segment a test names and sees every segment
qnet sends.

    with kernel_rsts_dropped(ns):                      # the namespace kernel stays quiet
        peer = TcpPeer(ns, sport=40001, dport=7000, sack=True, ts=True)
        synack = peer.connect()                         # SYN -> SYN,ACK -> ACK (qnet listens)
        peer.send("PA", data=b"hi")
        ack = peer.expect(lambda s: s.ack == peer.snd_nxt, 2.0, "the ACK of our data")
        peer.close()

The namespace kernel owns the peer's address (the NsPort's 10.99.X.2) and answers ARP for it,
but it knows none of these connections: left alone it would answer qnet's segments with RSTs.
`kernel_rsts_dropped` drops the kernel's outgoing RSTs with an nftables table in the namespace;
the peer's own frames leave by the packet socket, below netfilter, so its RSTs still go out.

The namespace is entered only for the moment a socket is opened (setns(2) on the calling
thread, then back): a socket keeps the namespace it was made in.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.interop.util import NsPort

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
NFT_TABLE = "qnet_tcp_peer"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """The calling thread in network namespace ``ns`` (an `ip netns` name) for the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def packet_socket(ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on ``ifname`` inside namespace ``ns``: every frame in and out."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((ifname, ETH_P_ALL))
        except BaseException:
            s.close()
            raise
    return s


@contextlib.contextmanager
def kernel_rsts_dropped(port: NsPort) -> Iterator[None]:
    """The namespace kernel sends no TCP RST while the block runs (an nftables output rule)."""
    rules = (f"add table ip {NFT_TABLE}\n"
             f"add chain ip {NFT_TABLE} out {{ type filter hook output priority 0 ; policy accept ; }}\n"
             f"add rule ip {NFT_TABLE} out tcp flags & rst == rst counter drop\n")
    p = _nft(port, rules)
    if p.returncode != 0:
        raise AssertionError(f"nft rules in {port.ns} failed: {p.stderr}")
    try:
        yield
    finally:
        _nft(port, f"delete table ip {NFT_TABLE}\n")


def _nft(port: NsPort, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", port.ns, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=10)


def qnet_mac(port: NsPort) -> str:
    """qnet's MAC on the port, as the namespace kernel resolved it (one ping fills the entry)."""
    row = port.neigh(port.qnet_ip)
    if not row or "lladdr" not in row:
        res = port.ping(port.qnet_ip, "-c", "1", "-W", "2", timeout=10)
        assert res.received == 1, res.text
        row = port.neigh(port.qnet_ip)
    assert row and "lladdr" in row, f"no neighbor entry for {port.qnet_ip}: {row}"
    return row["lladdr"]


# -- TCP options as scapy spells them --------------------------------------------------------------
def opt(seg: TCP, name: str):
    """The value of option ``name`` ("MSS", "WScale", "SAckOK", "SAck", "Timestamp"), or None."""
    for k, v in seg.options:
        if k == name:
            return v if name != "SAckOK" else True
    return None


def option_names(seg: TCP) -> set[str]:
    return {k for k, _v in seg.options if k not in ("NOP", "EOL")}


def sack_blocks(seg: TCP) -> list[tuple[int, int]]:
    v = opt(seg, "SAck")
    if not v:
        return []
    return [(v[i], v[i + 1]) for i in range(0, len(v) - 1, 2)]


def flags(seg: TCP) -> str:
    return str(seg.flags)


def checksum_ok(frame: bytes) -> bool:
    """scapy recomputes the TCP checksum: an independent check of qnet's."""
    pkt = Ether(frame)
    got = pkt[TCP].chksum
    del pkt[TCP].chksum
    return Ether(bytes(pkt))[TCP].chksum == got


# -- the peer ----------------------------------------------------------------------------------------
@dataclass
class Seg:
    """A segment qnet sent: the scapy TCP layer, its payload and when it arrived (monotonic)."""
    tcp: TCP
    data: bytes
    at: float
    frame: bytes = field(repr=False, default=b"")

    @property
    def seq(self) -> int:
        return self.tcp.seq

    @property
    def ack(self) -> int:
        return self.tcp.ack

    @property
    def flags(self) -> str:
        return str(self.tcp.flags)

    @property
    def window(self) -> int:
        return self.tcp.window

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def __str__(self) -> str:
        o = ",".join(f"{k}={v}" for k, v in self.tcp.options if k not in ("NOP", "EOL"))
        return (f"[{self.flags} seq={self.seq} ack={self.ack} win={self.window} len={len(self.data)}"
                f"{' ' + o if o else ''}]")


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, signed."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= 1 << 31 else d


class TcpPeer:
    """One TCP connection's far end, driven segment by segment from the namespace.

    The peer keeps the bookkeeping a test would otherwise repeat: ``snd_nxt`` (its next
    sequence number, what qnet's RCV.NXT should be), ``rcv_nxt`` (qnet's next sequence number
    as far as the peer has seen), and with timestamps TS.Recent (qnet's last TSval) and its own
    TSval clock. Every segment qnet sends to this 4-tuple is kept in ``log``.
    """

    def __init__(self, port: NsPort, sport: int, dport: int | None, *, mac: str | None = None,
                 mss: int | None = 1460, window: int = 65535, wscale: int | None = None,
                 sack: bool = False, ts: bool = False, isn: int = 1_000_000) -> None:
        self.port = port
        self.sport, self.dport = sport, dport
        self.src_ip, self.dst_ip = port.linux_ip, port.qnet_ip
        self.dst_mac = mac or qnet_mac(port)
        self.src_mac = port.mac()
        self.mss, self.window, self.wscale = mss, window, wscale
        self.sack, self.ts = sack, ts
        self.iss = isn & 0xFFFFFFFF
        self.snd_nxt = self.iss
        self.rcv_nxt: int | None = None
        self.irs: int | None = None
        self.ts_ok = False              # both SYNs carried timestamps
        self.ts_recent = 0
        self.tsval = 100_000
        self.qnet_wscale = 0
        self.log: list[Seg] = []
        self.bad_checksums = 0
        self.sock = packet_socket(port.ns, port.tap)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "TcpPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------------------
    def syn_options(self) -> list:
        o: list = []
        if self.mss is not None:
            o.append(("MSS", self.mss))
        if self.sack:
            o.append(("SAckOK", b""))
        if self.ts:
            o.append(("Timestamp", (self.tsval, 0)))
        if self.wscale is not None:
            o += [("NOP", None), ("WScale", self.wscale)]
        return o

    def next_tsval(self) -> int:
        self.tsval = (self.tsval + 1) & 0xFFFFFFFF
        return self.tsval

    def send(self, flags: str, *, seq: int | None = None, ack: int | None = None, data: bytes = b"",
             window: int | None = None, options: list | None = None, tsval: int | None = None,
             advance: bool | None = None) -> TCP:
        """Send one segment; the sequence number is ``snd_nxt`` unless given, and ``snd_nxt``
        moves past SYN/data/FIN when the segment starts there (``advance`` overrides)."""
        s = self.snd_nxt if seq is None else seq & 0xFFFFFFFF
        if ack is None and "A" in flags:
            ack = self.rcv_nxt or 0
        if options is None:
            options = []
            if self.ts_ok and "R" not in flags:
                options = [("NOP", None), ("NOP", None),
                           ("Timestamp", (self.next_tsval() if tsval is None else tsval, self.ts_recent))]
        t = TCP(sport=self.sport, dport=self.dport, seq=s, ack=ack or 0, flags=flags,
                window=self.window if window is None else window, options=options)
        frame = bytes(Ether(src=self.src_mac, dst=self.dst_mac) /
                      IP(src=self.src_ip, dst=self.dst_ip, ttl=64, id=0, flags="DF") / t / data)
        self.sock.send(frame)
        if advance is None:
            advance = s == self.snd_nxt
        if advance:
            self.snd_nxt = seq_add(s, len(data) + ("S" in flags) + ("F" in flags))
        return t

    def ack_now(self, **kw) -> TCP:
        return self.send("A", **kw)

    # -- receiving -----------------------------------------------------------------------------
    def recv(self, timeout: float) -> Seg | None:
        """The next segment qnet sends to this 4-tuple within ``timeout`` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _w, _x = select.select([self.sock], [], [], left)
            if not r:
                return None
            frame, addr = self.sock.recvfrom(65535)
            at = time.monotonic()
            if addr[2] == PACKET_OUTGOING or len(frame) < 54:
                continue
            if int.from_bytes(frame[12:14], "big") != ETH_P_IP or frame[23] != 6:
                continue
            pkt = Ether(frame)
            ip = pkt[IP]
            if ip.src != self.dst_ip or ip.dst != self.src_ip or TCP not in pkt:
                continue
            t = pkt[TCP]
            if t.dport != self.sport or self.dport is not None and t.sport != self.dport:
                continue
            if self.dport is None:
                self.dport = t.sport        # qnet connected to us: its port is in its SYN
            if not checksum_ok(frame):
                self.bad_checksums += 1
            data = bytes(t.payload)[: ip.len - ip.ihl * 4 - t.dataofs * 4]
            seg = Seg(t, data, at, frame)
            self._saw(seg)
            return seg

    def _saw(self, seg: Seg) -> None:
        self.log.append(seg)
        ts = opt(seg.tcp, "Timestamp")
        if ts is not None and self.ts_ok:
            self.ts_recent = ts[0]
        if seg.has("S") and seg.has("A") or seg.has("S") and self.irs is None:
            self.irs = seg.seq
            self.rcv_nxt = seq_add(seg.seq, 1)
            ws = opt(seg.tcp, "WScale")
            self.qnet_wscale = ws if ws is not None and self.wscale is not None else 0
            if ts is not None and self.ts:
                self.ts_ok = True
                self.ts_recent = ts[0]
            return
        end = seq_add(seg.seq, len(seg.data) + seg.has("F"))
        if self.rcv_nxt is not None and seq_diff(seg.seq, self.rcv_nxt) <= 0 < seq_diff(end, self.rcv_nxt):
            self.rcv_nxt = end

    def expect(self, pred: Callable[[Seg], bool] | None, timeout: float, what: str,
               skip: Callable[[Seg], bool] | None = None) -> Seg:
        """The first segment within ``timeout``; it must satisfy ``pred``. Segments for which
        ``skip`` is true are passed over (e.g. pure window updates a test does not care for)."""
        deadline = time.monotonic() + timeout
        while True:
            seg = self.recv(max(0.0, deadline - time.monotonic()))
            if seg is None:
                raise AssertionError(f"no segment from qnet within {timeout:g} s: expected {what}; "
                                     f"log: {' '.join(map(str, self.log[-8:]))}")
            if skip is not None and skip(seg):
                continue
            if pred is not None and not pred(seg):
                raise AssertionError(f"expected {what}, qnet sent {seg}; log: "
                                     f"{' '.join(map(str, self.log[-8:]))}")
            return seg

    def wait_for(self, pred: Callable[[Seg], bool], timeout: float, what: str) -> Seg:
        """The first segment satisfying ``pred`` within ``timeout``, others passed over."""
        deadline = time.monotonic() + timeout
        while True:
            seg = self.recv(max(0.0, deadline - time.monotonic()))
            if seg is None:
                raise AssertionError(f"no segment from qnet within {timeout:g} s was {what}; log: "
                                     f"{' '.join(map(str, self.log[-8:]))}")
            if pred(seg):
                return seg

    def drain(self, quiet: float = 0.05) -> list[Seg]:
        """Everything qnet sends until it is quiet for ``quiet`` seconds."""
        out = []
        while (seg := self.recv(quiet)) is not None:
            out.append(seg)
        return out

    # -- handshakes ----------------------------------------------------------------------------
    def syn(self) -> Seg:
        """Send our SYN; the SYN,ACK that answers it."""
        self.send("S", options=self.syn_options())
        return self.expect(lambda s: s.has("S") and s.has("A"), 3.0, "a SYN,ACK")

    def connect(self, window: int | None = None) -> Seg:
        """The full active open against a qnet listener: SYN, SYN,ACK, ACK. Returns the SYN,ACK."""
        sa = self.syn()
        assert sa.ack == self.snd_nxt, f"SYN,ACK acks {sa.ack}, our ISS+1 is {self.snd_nxt}"
        self.send("A", window=window)
        return sa

    def answer_syn(self, syn: Seg) -> None:
        """qnet connected to us: answer its SYN with our SYN,ACK (the options we were made with)."""
        assert syn.has("S") and not syn.has("A"), f"not a SYN: {syn}"
        ts = opt(syn.tcp, "Timestamp")
        if self.ts and ts is not None:
            self.ts_ok = True
            self.ts_recent = ts[0]
        o = self.syn_options()
        if self.ts_ok:
            o = [(k, (v[0], self.ts_recent)) if k == "Timestamp" else (k, v) for k, v in o]
        else:
            o = [(k, v) for k, v in o if k != "Timestamp"]
        if opt(syn.tcp, "SAckOK") is None:
            o = [(k, v) for k, v in o if k != "SAckOK"]
        if opt(syn.tcp, "WScale") is None:
            o = [(k, v) for k, v in o if k not in ("WScale",)]
        self.send("SA", ack=self.rcv_nxt, options=o, seq=self.iss)

    def read(self, n: int, timeout: float) -> tuple[bytes, list[Seg]]:
        """Take ``n`` bytes of in-order data from qnet, ACKing every data segment at once."""
        got = bytearray()
        segs: list[Seg] = []
        nxt = self.rcv_nxt
        deadline = time.monotonic() + timeout
        while len(got) < n:
            seg = self.recv(max(0.0, deadline - time.monotonic()))
            if seg is None:
                raise AssertionError(f"{len(got)} of {n} bytes from qnet within {timeout:g} s; log: "
                                     f"{' '.join(map(str, self.log[-8:]))}")
            if not seg.data:
                continue
            segs.append(seg)
            if seg.seq == nxt:
                got += seg.data
                nxt = seq_add(nxt, len(seg.data))
            self.send("A")
        return bytes(got), segs

    def qnet_window(self, seg: Seg) -> int:
        """The window a non-SYN segment offers, scaled."""
        return seg.window << self.qnet_wscale
