"""TcpLayer inside a Stack: demux, listeners, ephemeral ports, RST for strangers, loopback,
and two stacks talking over one Ethernet wire."""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Address, IPv4Interface

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from components.netstack.core import Stack, StackConfig, StackError
from components.netstack.core.tcp import TcpEvent
from components.netstack.core.tcp.layer import ACCEPTABLE

LO = IPv4Address("127.0.0.1")


def stack(name: str, mac: bytes, ip: str, seed: int) -> Stack:
    s = Stack(StackConfig(strict=True, random_seed=seed, announce_num=1))
    s.add_device("eth0", mac=mac, now=0.0)
    s.add_address("eth0", IPv4Interface(ip), 0.0)
    s.take_transmit()
    return s


class Wire:
    """Two stacks on one Ethernet segment; time advances only in run()."""

    def __init__(self, loss: float = 0.0, seed: int = 0) -> None:
        self.a = stack("a", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
        self.b = stack("b", b"\x02\0\0\0\0\x0b", "10.0.0.2/24", 2)
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.frames = 0

    def step(self) -> bool:
        moved = False
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            src.drain(self.now)
            for frames in src.take_transmit().values():
                for f in frames:
                    self.frames += 1
                    moved = True
                    if self.loss and self.rng.random() < self.loss and f[12:14] == b"\x08\x00":
                        continue
                    dst.receive("eth0", f, self.now)
        return moved

    def run(self, until: float, on_step=None) -> None:
        while self.now < until:
            while self.step():
                if on_step:
                    on_step()
            if on_step:
                on_step()
                if self.step():
                    continue
            dls = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            nxt = min(dls) if dls else until
            self.now = min(max(nxt, self.now + 0.001), until)
            self.a.poll(self.now)
            self.b.poll(self.now)


def transfer(w: Wire, cid: int, bcid: int, data: bytes, until: float) -> bytearray:
    """a's connection cid sends data, b's bcid reads it, until `until`; what b read."""
    sent = 0
    got = bytearray()

    def pump():
        nonlocal sent
        if sent < len(data):
            sent += w.a.tcp4.send(cid, data[sent:sent + 65536], w.now)
        got.extend(w.b.tcp4.recv(bcid, None, w.now))

    w.run(until, pump)
    return got


def test_handshake_transfer_and_close_between_two_stacks():
    w = Wire()
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(1.0)
    assert (cid, TcpEvent.CONNECTED) in w.a.tcp4.take_events()
    bcid = w.b.tcp4.accept(lid)
    assert bcid is not None
    info = w.b.tcp4.info(bcid)
    assert info["remote"] == "10.0.0.1" and info["local_port"] == 80
    assert 32768 <= info["remote_port"] <= 60999       # the client's ephemeral port
    data = random.Random(7).randbytes(300_000)
    got = transfer(w, cid, bcid, data, 30.0)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    w.a.tcp4.close(cid, w.now)
    w.run(31.0)
    assert (bcid, TcpEvent.PEER_CLOSED) in w.b.tcp4.take_events()
    w.b.tcp4.close(bcid, w.now)
    w.run(32.0)
    assert bcid not in w.b.tcp4.conns                   # LAST-ACK -> CLOSED: gone
    assert w.a.tcp4.conns[cid].state.value == "TIME-WAIT"
    w.run(95.0)                                          # 2*MSL later
    assert cid not in w.a.tcp4.conns and not w.a.tcp4.demux


def test_lossy_transfer_completes():
    w = Wire(loss=0.05, seed=3)
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(5.0)
    bcid = w.b.tcp4.accept(lid)
    assert bcid is not None
    data = random.Random(8).randbytes(100_000)
    got = transfer(w, cid, bcid, data, 300.0)
    assert bytes(got) == data


def test_syn_to_closed_port_is_answered_with_rst():
    w = Wire()
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 81, w.now)
    w.run(1.0)
    assert (cid, TcpEvent.RESET) in w.a.tcp4.take_events()   # refused
    assert cid not in w.a.tcp4.conns
    assert w.b.counters()["tcp"]["tx_rst"] == 1


def test_loopback_connection():
    s = Stack(StackConfig(strict=True, random_seed=5))
    lid = s.tcp4.listen(LO, 7)
    cid = s.tcp4.connect(LO, 7, 0.0)
    s.drain(0.0)
    assert (cid, TcpEvent.CONNECTED) in s.tcp4.take_events()
    bcid = s.tcp4.accept(lid)
    assert s.tcp4.send(cid, b"hello", 0.0) == 5
    s.drain(0.0)
    assert s.tcp4.recv(bcid, None, 0.0) == b"hello"


def test_listen_conflicts_and_unknown_ids():
    s = Stack(StackConfig(strict=True, random_seed=5))
    s.tcp4.listen(None, 80)
    with pytest.raises(StackError) as e:
        s.tcp4.listen(LO, 80)
    assert e.value.code == "address_in_use"
    with pytest.raises(StackError) as e:
        s.tcp4.listen(IPv4Address("10.9.9.9"), 81)
    assert e.value.code == "address_not_available"
    with pytest.raises(StackError):
        s.tcp4.send(999, b"x", 0.0)
    with pytest.raises(StackError):
        s.tcp4.accept(999)


def test_full_syn_queue_answers_with_cookies_and_the_connections_complete():
    w = Wire()
    lid = w.b.tcp4.listen(None, 80, backlog=2)
    cids = [w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now) for _ in range(4)]
    w.run(0.5)
    lst = w.b.tcp4.listeners[lid]
    assert w.b.counters()["tcp"]["syncookies_sent"] == 2     # the SYN queue held 2
    assert len(lst.accept) == 2 and not lst.embryonic
    assert all(w.a.tcp4.conns[c].state.value == "ESTABLISHED" for c in cids)
    assert ACCEPTABLE in [e for _i, e in w.b.tcp4.take_events()]
    first = [w.b.tcp4.accept(lid), w.b.tcp4.accept(lid)]
    assert None not in first and w.b.tcp4.accept(lid) is None
    # The cookie connections' final ACKs met a full accept queue and were dropped; their
    # data brings the cookie again, now with room.
    for i, c in enumerate(cids):
        w.a.tcp4.send(c, b"hello %d" % i, w.now)
    w.run(5.0)
    more = [w.b.tcp4.accept(lid), w.b.tcp4.accept(lid)]
    assert None not in more
    got = sorted(w.b.tcp4.recv(c, None, w.now) for c in first + more)
    assert got == [b"hello 0", b"hello 1", b"hello 2", b"hello 3"]
    assert w.b.counters()["tcp"]["syncookies_recv"] == 2


def test_accept_queue_full_drops_syns():
    w = Wire()
    lid = w.b.tcp4.listen(None, 80, backlog=1)
    w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(0.5)
    late = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(0.6)
    assert w.b.tcp4.listeners[lid].dropped >= 1
    assert w.a.tcp4.conns[late].state.value == "SYN-SENT"
    assert w.b.tcp4.accept(lid) is not None
    w.run(5.0)                                   # the SYN's retransmission finds room
    assert w.a.tcp4.conns[late].state.value == "ESTABLISHED"


def test_a_guessed_cookie_opens_nothing():
    w = Wire()
    w.b.tcp4.listen(None, 80)
    s = w.b
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    ack = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") /
                IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=4444, dport=80, seq=5, ack=12345, flags="A"))
    s.receive("eth0", ack, 0.0)
    assert not s.tcp4.conns and s.counters()["tcp"].get("syncookies_recv", 0) == 0


def test_rst_to_scapy_syn_without_listener():
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    peer_mac = "02:00:00:00:00:bb"
    syn = bytes(Ether(src=peer_mac, dst="02:00:00:00:00:0a") /
                IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=1234, dport=9, seq=1000, flags="S"))
    s.receive("eth0", syn, 0.0)
    # The reply waits for ARP; answer it and look at the RST.
    from tests.unit.core.util import arp_reply
    s.receive("eth0", arp_reply(peer_mac, "10.0.0.2", "02:00:00:00:00:0a", "10.0.0.1"), 0.0)
    out = [Ether(f) for f in s.take_transmit()["eth0"]]
    rst = [p for p in out if TCP in p]
    assert len(rst) == 1
    t = rst[0][TCP]
    assert t.flags == "RA" and t.ack == 1001 and t.seq == 0 and t.sport == 9 and t.dport == 1234


def _transfer_frames(fast: bool) -> tuple[list[bytes], dict]:
    w = Wire()
    if not fast:
        for s in (w.a, w.b):
            s.tcp4.ip.fast_send = None
            s.fast._tcp_established = None
    sent: list[bytes] = []
    real_step = w.step

    def step() -> bool:
        for st in (w.a, w.b):
            for dev in st.devs.values():
                sent.extend(bytes(f) for f in dev.tx)
        return real_step()
    w.step = step
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(1.0)
    bcid = w.b.tcp4.accept(lid)
    data = random.Random(9).randbytes(200_000)
    got = transfer(w, cid, bcid, data, 20.0)
    assert bytes(got) == data
    return sent, w.b.counters()["ipv4"]


def test_the_fast_paths_send_and_take_exactly_what_the_general_path_does():
    fast_frames, fast_ip = _transfer_frames(True)
    slow_frames, slow_ip = _transfer_frames(False)
    assert len(fast_frames) == len(slow_frames) > 100
    assert fast_frames == slow_frames
    assert fast_ip["rx_packets"] == slow_ip["rx_packets"] and fast_ip["rx_delivered"] == slow_ip["rx_delivered"]


def test_a_trusted_super_frame_goes_whole_to_its_connection_and_nothing_else_does():
    w = Wire()
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(1.0)
    bcid = w.b.tcp4.accept(lid)
    conn_a, conn_b = w.a.tcp4.conns[cid], w.b.tcp4.conns[bcid]
    big = random.Random(3).randbytes(6000)          # four MTUs' worth in one segment
    # As a TSO sender leaves it: the TCP checksum only partial (here: zero), IP header good.
    seg = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") /
                IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") /
                TCP(sport=conn_a.local_port, dport=80, seq=conn_a.snd_nxt, ack=conn_a.rcv_nxt,
                    flags="PA", window=1000, chksum=0,
                    options=[("Timestamp", (conn_b.ts_recent + 1, 0))]) / big)
    w.b.receive_batch("eth0", [seg], w.now)                       # untrusted: bad checksum
    assert w.b.tcp4.recv(bcid, None, w.now) == b""
    w.b.receive_batch("eth0", [seg], w.now, trusted={0})
    assert w.b.tcp4.recv(bcid, None, w.now) == big
    assert conn_b.rcv_nxt == (conn_a.snd_nxt + len(big)) & 0xFFFFFFFF
    stranger = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") /
                     IP(src="10.0.0.1", dst="10.0.0.2") /
                     TCP(sport=999, dport=80, seq=1, flags="PA", chksum=0) / big)
    w.b.receive_batch("eth0", [stranger], w.now, trusted={0})
    assert w.b.counters()["dev:eth0"]["rx_drop_offload_unmatched"] == 1
