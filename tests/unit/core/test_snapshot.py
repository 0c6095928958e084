"""snapshot() -> restore() hands a working stack to a successor."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import msgpack
import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP

from components.netstack.core import Stack, StackConfig, StackError

from .util import (A, B, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, learn, make_stack, sent,
                   udp_frame)


def busy_stack():
    s = make_stack()
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    s.add_device("tun0", kind="ip", mtu=1280)
    s.set_forwarding("eth1", False)
    s.add_route(IPv4Network("172.16.0.0/12"), IPv4Address(B), None, metric=5)
    sid = s.udp_open()
    s.udp_bind(sid, None, 5353)
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1, 5353, b"queued"), 0.0)
    return s, sid


def roundtrip(s: Stack, now: float = 100.0) -> Stack:
    blob = msgpack.packb(s.snapshot(), use_bin_type=True)
    return Stack.restore(msgpack.unpackb(blob, raw=False), StackConfig(strict=True, ipv6=False), now=now)


def test_restored_stack_has_same_tables():
    s, _ = busy_stack()
    r = roundtrip(s)
    assert r.devices() == s.devices()
    assert r.addresses() == s.addresses()
    assert r.routes() == s.routes()
    assert {(n.device, n.address, n.mac) for n in r.neighbors()} == \
        {(n.device, n.address, n.mac) for n in s.neighbors()}
    assert all(n.state == "STALE" for n in r.neighbors())
    assert r.counters()["udp"] == s.counters()["udp"]


def test_restored_stack_forwards_without_asking_arp_again():
    s, _ = busy_stack()
    r = roundtrip(s)
    r.receive("eth0", udp_frame(HOST_A, MAC0, A, "172.16.1.1", 1, 2, b"fwd", ttl=9), 100.0)
    (f,) = sent(r, "eth1")
    assert not f.haslayer(ARP) and f.dst == HOST_B and f[IP].ttl == 8


def test_restored_sockets_keep_binding_queue_and_sid_sequence():
    s, sid = busy_stack()
    r = roundtrip(s)
    assert [d.payload for d in r.udp_recv(sid, 10)] == [b"queued"]
    r.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 2, 5353, b"after"), 100.0)
    assert [d.payload for d in r.udp_recv(sid, 10)] == [b"after"]
    other = r.udp_open()
    assert other > sid
    with pytest.raises(StackError):
        r.udp_bind(other, None, 5353)


def test_restored_forwarding_flag_and_unknown_snapshot_is_refused():
    s, _ = busy_stack()
    r = roundtrip(s)
    r.receive("eth1", udp_frame(HOST_B, MAC1, B, A, 1, 2), 100.0)
    assert sent(r) == [] and r.counters()["ipv4"]["forward_drop_disabled"] == 1
    with pytest.raises(StackError):
        Stack.restore({"format": 99}, StackConfig())


def test_restored_stack_answers_ping_and_keeps_counting():
    s, _ = busy_stack()
    before = s.counters()["dev:eth0"]["rx_frames"]
    r = roundtrip(s)
    r.receive("eth0", bytes(__import__("scapy.layers.l2", fromlist=["Ether"]).Ether(
        src=HOST_A, dst=MAC0) / IP(src=A, dst=IP0) / ICMP(type=8, id=1, seq=1)), 100.0)
    (f,) = sent(r, "eth0")
    assert f[ICMP].type == 0
    assert r.counters()["dev:eth0"]["rx_frames"] == before + 1
