"""TCP to ourselves (127/8 and our own addresses, looped back through lo in the same drain),
127/8 from outside dropped as martians, and a connection's IP_TTL / IP_TOS on its segments."""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from components.netstack.core import StackError
from components.netstack.core.tcp import TcpEvent

from .test_layer import Wire, stack

OWN = IPv4Address("10.0.0.1")


def _both_ways(s, lid: int, cid: int, size: int) -> None:
    """Moves `size` bytes each way between cid and the connection lid accepts, driven only
    by Stack.drain (what a binding calls after each wake-up), and checks them."""
    s.drain(0.0)
    assert (cid, TcpEvent.CONNECTED) in s.tcp4.take_events()
    acid = s.tcp4.accept(lid)
    assert acid is not None
    rng = random.Random(size)
    up, down = rng.randbytes(size), rng.randbytes(size)
    sent = {cid: 0, acid: 0}
    got = {cid: bytearray(), acid: bytearray()}
    data = {cid: up, acid: down}
    now = 0.0
    for _ in range(5000):
        for c in (cid, acid):
            if sent[c] < size:
                sent[c] += s.tcp4.send(c, data[c][sent[c]:sent[c] + 65536], now)
            got[c].extend(s.tcp4.recv(c, None, now))
        s.drain(now)
        if len(got[acid]) == size and len(got[cid]) == size:
            break
        # A millisecond per round, as the binding's wake-ups go (delayed ACKs fall due).
        d = s.next_deadline()
        now = d if d is not None and d <= now + 0.001 else now + 0.001
        s.poll(now)
    assert hashlib.sha256(got[acid]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got[cid]).digest() == hashlib.sha256(down).digest()
    # Nothing waited on a retransmission: every segment went round within the drains.
    assert s.tcp4.conns[cid].stats.get("retransmits", 0) == 0


@pytest.mark.parametrize("listen_on", [None, "127.0.0.1"])
def test_connect_to_127_0_0_1_moves_data_both_ways_within_drains(listen_on):
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    lid = s.tcp4.listen(None if listen_on is None else IPv4Address(listen_on), 5000)
    cid = s.tcp4.connect(IPv4Address("127.0.0.1"), 5000, 0.0)
    info = s.tcp4.info(cid)
    assert info["local"] == "127.0.0.1" and info["remote"] == "127.0.0.1"
    _both_ways(s, lid, cid, 1_000_000)
    assert not any(s.take_transmit().values())      # nothing ever reached a device


def test_connect_to_our_own_port_address_loops_back_through_the_fast_path():
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    took = []
    real = s.fast.ip_send
    s.tcp4.ip.fast_send = lambda *a: took.append(real(*a)) or took[-1]
    lid = s.tcp4.listen(None, 6000)
    cid = s.tcp4.connect(OWN, 6000, 0.0)
    assert s.tcp4.info(cid)["local"] == "10.0.0.1"      # our own address answers as itself
    _both_ways(s, lid, cid, 300_000)
    assert took and all(took)                           # every segment, in one buffer
    assert not any(s.take_transmit().values())
    assert s.counters()["dev:lo"]["tx_frames"] == len(took)


def test_the_rest_of_127_8_is_ours_too_and_answers_from_127_0_0_1():
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    lid = s.tcp4.listen(None, 7000)
    cid = s.tcp4.connect(IPv4Address("127.3.2.1"), 7000, 0.0)
    assert s.tcp4.info(cid)["local"] == "127.0.0.1"
    _both_ways(s, lid, cid, 10_000)


def test_a_loopback_connect_to_a_closed_port_is_refused_at_once():
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    cid = s.tcp4.connect(IPv4Address("127.0.0.1"), 9, 0.0)
    s.drain(0.0)
    assert (cid, TcpEvent.RESET) in s.tcp4.take_events()


@pytest.mark.parametrize("src, dst", [("127.0.0.1", "10.0.0.1"), ("10.0.0.2", "127.0.0.1")])
def test_127_8_from_outside_is_a_martian_and_gets_nothing(src, dst):
    # RFC 1122 §3.2.1.3: 127/8 must not appear outside a host, as source or destination.
    s = stack("s", b"\x02\0\0\0\0\x0a", "10.0.0.1/24", 1)
    s.tcp4.listen(None, 80)
    syn = bytes(Ether(src="02:00:00:00:00:bb", dst="02:00:00:00:00:0a") /
                IP(src=src, dst=dst) / TCP(sport=1234, dport=80, seq=1, flags="S"))
    s.receive_batch("eth0", [syn], 0.0)
    s.drain(0.0)
    assert s.counters()["ipv4"]["rx_drop_martian"] == 1
    assert not s.tcp4.conns and not any(s.take_transmit().values())


def _sent_ip_headers(w: Wire) -> list:
    return [Ether(bytes(f))[IP] for frames in w.a.take_transmit().values() for f in frames
            if bytes(f)[12:14] == b"\x08\x00"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_segment_leaves_with_the_connections_ttl_and_tos(fast):
    w = Wire()
    if not fast:
        w.a.tcp4.ip.fast_send = None
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(1.0)
    assert w.b.tcp4.accept(lid) is not None
    w.a.tcp4.configure(cid, w.now, nodelay=True)
    w.a.tcp4.send(cid, b"default", w.now)
    (h,) = _sent_ip_headers(w)
    assert (h.ttl, h.tos) == (64, 0)
    # DSCP EF (46) with both ECN bits asked: the ECN bits stay TCP's (RFC 3168 §6.1.1).
    w.a.tcp4.configure(cid, w.now, ttl=7, tos=0xBB)
    w.a.tcp4.send(cid, b"marked", w.now)
    (h,) = _sent_ip_headers(w)
    assert (h.ttl, h.tos) == (7, 0xB8)
    again = IP(bytes(h))
    del again.chksum                     # scapy computes it afresh: the header sum is good
    assert IP(bytes(again)).chksum == h.chksum
    info = w.a.tcp4.info(cid)
    assert (info["ttl"], info["tos"]) == (7, 0xB8)


def test_ttl_and_tos_are_checked_and_survive_a_snapshot():
    w = Wire()
    lid = w.b.tcp4.listen(None, 80)
    cid = w.a.tcp4.connect(IPv4Address("10.0.0.2"), 80, w.now)
    w.run(1.0)
    w.b.tcp4.accept(lid)
    for bad in ({"ttl": 0}, {"ttl": 256}, {"tos": -1}, {"tos": 256}):
        with pytest.raises(StackError) as e:
            w.a.tcp4.configure(cid, w.now, **bad)
        assert e.value.code == "bad_argument"
    w.a.tcp4.configure(cid, w.now, ttl=200, tos=0x20)
    snap = w.a.snapshot()
    restored = type(w.a).restore(snap)
    conn = restored.tcp4.conns[cid]
    assert (conn.ip_ttl, conn.ip_tos) == (200, 0x20)
