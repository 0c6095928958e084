"""Policy routing: numbered routing tables picked by the firewall's `table N` (route.py
RoutingTables, filter.py A_TABLE, ipv4.py forward and send_via). A three-port router: A's LAN on
eth0, main's default via B on eth1, table 10's route to 198.51.100.0/24 via C on eth2. Each
test runs with the fast path on and off: with a `table` rule it must decline, so both agree."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import msgspec
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from components.firewall.rules import parse_text
from components.netstack.core import Stack, StackError
from tests.unit.core.util import (A, B, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, learn, mac,
                                  make_stack, sent_raw, udp_frame)

MAC2 = "02:00:00:00:02:01"      # our eth2
HOST_C = "02:00:00:00:02:cc"    # table 10's gateway, on eth2
IP2 = "172.16.0.1"
C = "172.16.0.2"
A2 = "10.0.0.3"                 # a second host on eth0's LAN
HOST_A2 = "02:00:00:00:00:a2"
D = "198.51.100.7"              # in table 10 and, by the default route, in main
E = "203.0.113.9"               # in main only
OURS = {"eth0": MAC0, "eth1": MAC1, "eth2": MAC2}


def router(fast: bool) -> Stack:
    s = make_stack()
    s.add_device("eth2", mac=mac(MAC2))
    s.add_address("eth2", IPv4Interface(f"{IP2}/24"))
    for dev in ("eth0", "eth1", "eth2"):
        s.set_forwarding(dev, True)
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth0", HOST_A2, A2, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    learn(s, "eth2", HOST_C, C, IP2)
    # Each neighbor in use (STALE -> DELAY), so that the fast path could take what follows.
    for dev, peer, src, dst in (("eth0", HOST_A, A, C), ("eth2", HOST_C, C, A),
                                ("eth1", HOST_B, B, A2), ("eth0", HOST_A, A, B)):
        s.receive(dev, udp_frame(peer, OURS[dev], src, dst, 1, 2), 0.5)
    sent_raw(s)
    s.add_route("0.0.0.0/0", gateway=B)
    # No device: the gateway resolves through main's on-link route (eth2's connected one).
    s.add_route("198.51.100.0/24", gateway=C, table=10)
    if not fast:
        s.fast.receive = lambda dev, frame, now: False
        s.fast.udp_send = lambda *a, **k: False
        s.fast.ip_send = lambda *a, **k: False
        s.tcp4.ip.fast_send = None
    return s


@pytest.fixture(params=["fast", "general"])
def stack(request):
    return router(request.param == "fast")


def install(s: Stack, text: str) -> None:
    s.filter.install(parse_text(text).to_wire())


def leaving(s: Stack) -> list[tuple[str, str, str, str]]:
    """(port, destination MAC, source address, destination address) of each frame sent."""
    out = []
    for dev in ("eth0", "eth1", "eth2"):
        for f in sent_raw(s, dev):
            e = Ether(f)
            out.append((dev, e.dst, e[IP].src, e[IP].dst))
    return out


def test_a_port_picks_table_10_while_another_port_routes_by_main(stack):
    install(stack, "ingress iif eth0 table 10")
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 53), 1.0)
    assert leaving(stack) == [("eth2", HOST_C, A, D)]
    stack.receive("eth2", udp_frame(HOST_C, MAC2, C, D, 4000, 53), 1.0)
    assert leaving(stack) == [("eth1", HOST_B, C, D)]


def test_a_source_address_picks_table_10(stack):
    install(stack, "ingress saddr 10.0.0.2 table 10")
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 53), 1.0)
    stack.receive("eth0", udp_frame(HOST_A2, MAC0, A2, D, 4000, 53), 1.0)
    assert leaving(stack) == [("eth1", HOST_B, A2, D), ("eth2", HOST_C, A, D)]


def test_a_mark_set_by_an_earlier_rule_picks_table_10(stack):
    install(stack, "ingress iif eth0 proto udp dport 53 mark 7\n"
                   "ingress mark 7 table 10\n")
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 53), 1.0)
    assert leaving(stack) == [("eth2", HOST_C, A, D)]
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 54), 1.0)
    assert leaving(stack) == [("eth1", HOST_B, A, D)]


def test_a_destination_table_10_has_no_route_for_falls_back_to_main(stack):
    install(stack, "ingress iif eth0 table 10\ningress iif eth2 table 20")
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, E, 4000, 53), 1.0)
    stack.receive("eth2", udp_frame(HOST_C, MAC2, C, D, 4000, 53), 1.0)   # table 20: none
    assert leaving(stack) == [("eth1", HOST_B, A, E), ("eth1", HOST_B, C, D)]


def test_the_reply_of_a_marked_connection_falls_back_to_main_for_its_lan(stack):
    # Marks are the connection's: the reply carries mark 7 too, and table 10 has no route
    # back to A's LAN, so main's connected route takes it.
    install(stack, "ingress iif eth0 mark 7\ningress mark 7 table 10")
    stack.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 53), 1.0)
    stack.receive("eth2", udp_frame(HOST_C, MAC2, D, A, 53, 4000), 1.1)
    assert leaving(stack) == [("eth0", HOST_A, D, A), ("eth2", HOST_C, A, D)]


@pytest.mark.parametrize("as_int", [False, True], ids=["address", "int"])
def test_our_own_datagrams_pick_table_10_by_source_and_keep_it(stack, as_int):
    install(stack, f"output saddr {IP0} table 10")
    for src in (IP0, IP1):
        sid = stack.udp_open()
        stack.udp_bind(sid, IPv4Address(src), 5000)
        dst = IPv4Address(D)
        stack.udp_sendto(sid, b"x", int(dst) if as_int else dst, 9, 1.0)
    assert leaving(stack) == [("eth1", HOST_B, IP1, D), ("eth2", HOST_C, IP0, D)]


def test_the_fast_path_declines_while_a_table_rule_is_installed():
    s = router(True)
    install(s, "ingress iif eth0 mark 7")
    frame = udp_frame(HOST_A, MAC0, A, D, 4000, 53)
    assert s.fast.receive(s.devs["eth0"], frame, 1.0)
    install(s, "ingress iif eth0 mark 7\ningress mark 99 table 10")
    assert not s.fast.receive(s.devs["eth0"], frame, 1.0)
    install(s, "ingress iif eth0 mark 7")
    assert s.fast.receive(s.devs["eth0"], frame, 1.0)


def test_tables_and_the_rules_picking_them_survive_snapshot_and_restore(stack):
    stack.add_route("192.0.2.0/24", device="eth2", metric=5, table=252)
    install(stack, "ingress iif eth0 table 10")
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(stack.snapshot(now=1.0)))
    s = Stack.restore(snap, stack.cfg, now=1.0)
    assert [r.to_dict() for r in s.routes(every=True)] == \
        [r.to_dict() for r in stack.routes(every=True)]
    assert {r.table for r in s.routes(every=True)} == {None, 10, 252}
    s.receive("eth0", udp_frame(HOST_A, MAC0, A, D, 4000, 53), 2.0)
    assert leaving(s) == [("eth2", HOST_C, A, D)]


def test_route_add_del_and_list_with_a_table():
    s = router(True)
    assert s.routes(10)[0].to_dict() == {"prefix": "198.51.100.0/24", "gateway": C, "device": None,
                                         "metric": 0, "kind": "static", "active": True,
                                         "table": 10}
    assert all(r.table is None for r in s.routes())          # main's, as before
    with pytest.raises(StackError) as e:
        s.add_route("198.51.100.0/24", gateway=C, table=10)
    assert e.value.code == "exists"
    s.add_route("198.51.100.0/24", gateway=C)                # the same route in main is another
    for bad in (0, 253, "10"):
        with pytest.raises(StackError) as e:
            s.add_route("192.0.2.0/24", device="eth2", table=bad)
        assert e.value.code == "bad_argument"
    s.add_route("192.0.2.0/24", device="eth2", table=20)
    assert s.ip4.tables.numbers() == [10, 20]
    assert [(r.prefix, r.table) for r in s.routes(every=True) if r.kind == "static"] == [
        ("198.51.100.0/24", None), ("0.0.0.0/0", None),
        ("198.51.100.0/24", 10), ("192.0.2.0/24", 20)]
    s.del_route("192.0.2.0/24", device="eth2", table=20)
    assert s.ip4.tables.numbers() == [10] and s.routes(20) == []   # gone with its last route
    with pytest.raises(StackError) as e:
        s.del_route("192.0.2.0/24", table=20)
    assert e.value.code == "not_found"
    s.del_route("198.51.100.0/24", table=10)
    assert s.ip4.tables.numbers() == []
    assert any(r.prefix == "198.51.100.0/24" for r in s.routes())    # main's stays


def test_a_table_route_through_a_removed_port_goes_with_it():
    s = router(True)
    s.add_route("192.0.2.0/24", device="eth2", table=20)
    s.remove_device("eth2")
    assert s.ip4.tables.numbers() == [10]       # its gateway route names no device
    assert s.routes(10)[0].active is False      # and resolves through nothing now


def test_the_numbered_tables_share_one_bound_counted_in_stats():
    s = make_stack(max_routes=3)
    for i in range(3):
        s.add_route(f"192.0.{i}.0/24", device="eth1", table=1 + i)
    with pytest.raises(StackError) as e:
        s.add_route("192.0.9.0/24", device="eth1", table=200)
    assert e.value.code == "limit"
    assert s.counters()["table:routes"] | {"routes": 0} == {
        "routes": 0, "limit": 3, "dropped": 0, "tables": 3, "table_routes": 3, "table_dropped": 1}
