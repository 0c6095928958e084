"""Device churn, link state, pure-IP devices and Ethernet demux."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from components.netstack.core import DeviceRemoved, LinkChanged, StackError

from .util import (A, HOST_A, IP0, MAC0, arp_reply, make_stack, ping_frame, sent, sent_raw,
                   udp_frame)


def test_device_removed_while_packets_wait_for_arp():
    s = make_stack()
    for i in range(5):
        s.ping(IPv4Address(A), 1, i, b"x", 0.0)
    s.remove_device("eth0", 0.5)
    ev = s.take_events()
    assert DeviceRemoved("eth0", 6) in ev        # 5 queued packets + 1 untaken ARP request
    assert s.counters()["stack"]["device_removed_frames_dropped"] == 6
    assert s.neighbors() == [] and "eth0" not in {d.name for d in s.devices()}
    # Timers, late frames and sends for the gone device are harmless.
    s.poll(5.0)
    s.receive("eth0", arp_reply(HOST_A, A, MAC0, IP0), 5.0)
    assert s.counters()["stack"]["rx_drop_no_device"] == 1
    with pytest.raises(StackError) as e:
        s.ping(IPv4Address(A), 1, 9, b"", 6.0)
    assert e.value.code == "no_route"
    assert sent_raw(s) == []


def test_readding_a_removed_device_starts_clean():
    s = make_stack()
    s.remove_device("eth0", 0.0)
    s.add_device("eth0", mac=bytes.fromhex("020000000001"))
    assert s.addresses() == [a for a in s.addresses() if a.device != "eth0"]
    s.add_address("eth0", IPv4Interface("10.0.0.1/24"), 1.0)
    assert len(sent(s, "eth0")) == 1   # announcement


def test_link_down_stops_tx_and_rx_and_up_reannounces():
    s = make_stack()
    s.set_link("eth0", False, 1.0)
    assert s.take_events() == [LinkChanged("eth0", False)]
    s.receive("eth0", ping_frame(HOST_A, MAC0, A, IP0), 1.0)
    with pytest.raises(StackError) as e:
        s.ping(IPv4Address(A), 1, 1, b"", 1.0)
    assert e.value.code == "no_route"
    assert sent(s) == []
    s.set_link("eth0", True, 2.0)
    assert s.take_events() == [LinkChanged("eth0", True)]
    (ann,) = sent(s, "eth0")
    assert ann.type == 0x0806


def test_ip_device_carries_bare_packets_without_arp():
    s = make_stack()
    s.add_device("tun0", kind="ip", mtu=1400)
    s.add_address("tun0", IPv4Interface("172.16.0.1/30"), 0.0)
    s.add_route(IPv4Network("0.0.0.0/0"), None, "tun0")
    assert sent_raw(s, "tun0") == []                   # no gratuitous ARP on an IP link
    s.ping(IPv4Address("1.1.1.1"), 3, 4, b"p", 0.0)
    (raw,) = sent_raw(s, "tun0")
    p = IP(raw)
    assert p.src == "172.16.0.1" and p.dst == "1.1.1.1" and p[ICMP].id == 3
    s.receive("tun0", bytes(IP(src="1.1.1.1", dst="172.16.0.1") / ICMP(type=0, id=3, seq=4)), 0.1)
    assert [e.src for e in s.take_events()] == [IPv4Address("1.1.1.1")]


def test_frames_for_other_macs_and_unknown_ethertypes_are_dropped_and_counted():
    s = make_stack()
    s.receive("eth0", ping_frame(HOST_A, "02:99:99:99:99:99", A, IP0), 0.0)
    s.receive("eth0", bytes(Ether(src=HOST_A, dst=MAC0, type=0x88B5) / (b"x" * 50)), 0.0)
    s.receive("eth0", bytes(Ether(src=HOST_A, dst=MAC0, type=0x86DD) / (b"x" * 50)), 0.0)
    s.receive("eth0", b"\x01\x02", 0.0)
    c = s.counters()["dev:eth0"]
    assert c["rx_drop_not_for_us"] == 1 and c["rx_drop_unknown_ethertype"] == 1
    assert c["rx_drop_ipv6_unsupported"] == 1 and c["rx_drop_bad_frame"] == 1
    assert c["rx_frames"] == 4
    assert sent(s) == []


def test_device_and_address_validation():
    s = make_stack()
    for bad in [lambda: s.add_device("eth0"), lambda: s.add_device("x", kind="wifi"),
                lambda: s.add_device("y", mac=b"\x01" * 6), lambda: s.set_mtu("eth0", 20),
                lambda: s.add_address("eth0", "10.0.0.255/24", 0.0),
                lambda: s.add_address("eth1", IPv4Interface("10.0.0.1/24"), 0.0),
                lambda: s.add_address("nope", IPv4Interface("10.5.0.1/24"), 0.0),
                lambda: s.remove_device("lo", 0.0),
                lambda: s.del_address("eth0", IPv4Interface("10.9.0.1/24"))]:
        with pytest.raises(StackError):
            bad()


def test_del_address_removes_connected_route_and_local_delivery():
    s = make_stack()
    s.del_address("eth0", IPv4Interface("10.0.0.1/24"))
    assert all(r.prefix != "10.0.0.0/24" for r in s.routes())
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1, 2), 0.0)
    assert s.counters()["ipv4"].get("rx_delivered", 0) == 0


def test_tx_queue_is_bounded():
    s = make_stack(tx_queue_frames=5)
    s.set_link("eth0", True, 0.0)
    for i in range(10):
        s.ping(IPv4Address("10.0.0.%d" % (50 + i)), 1, 1, b"", 0.0)   # 10 ARP requests
    assert len(sent_raw(s, "eth0")) == 5
    assert s.counters()["dev:eth0"]["tx_drop_queue_full"] == 5


def test_views_are_msgpack_friendly():
    import msgpack
    s = make_stack()
    blob = msgpack.packb({"devices": [d.to_dict() for d in s.devices()],
                          "addresses": [a.to_dict() for a in s.addresses()],
                          "routes": [r.to_dict() for r in s.routes()],
                          "neighbors": [n.to_dict() for n in s.neighbors()],
                          "counters": s.counters(), "sockets": s.sockets()})
    assert msgpack.unpackb(blob)["devices"][1]["mac"] == "02:00:00:00:00:01"
