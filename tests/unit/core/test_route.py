"""Routing table: longest prefix, metric, default, gateways, removal, inactive devices."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from components.netstack.core import StackError
from components.netstack.core.route import CONNECTED, Route, RoutingTable

N = IPv4Network
ADDR = IPv4Address


def table(*routes, down=()):
    t = RoutingTable(4, 100)
    for r in routes:
        t.add(r)
    return t, (lambda d: d not in down)


def test_longest_prefix_wins_over_metric():
    t, up = table(Route(N("10.0.0.0/8"), None, "a", 0), Route(N("10.1.0.0/16"), None, "b", 100))
    assert t.lookup(ADDR("10.1.2.3"), up).device == "b"
    assert t.lookup(ADDR("10.2.0.1"), up).device == "a"


def test_equal_prefix_lowest_metric_wins():
    t, up = table(Route(N("0.0.0.0/0"), ADDR("1.1.1.1"), "a", 20),
                  Route(N("0.0.0.0/0"), ADDR("2.2.2.2"), "b", 10))
    hop = t.lookup(ADDR("8.8.8.8"), up)
    assert (hop.device, hop.address) == ("b", ADDR("2.2.2.2"))


def test_default_route_catches_everything_else_and_no_route_is_none():
    t, up = table(Route(N("10.0.0.0/24"), None, "a", 0, CONNECTED))
    assert t.lookup(ADDR("8.8.8.8"), up) is None
    t.add(Route(N("0.0.0.0/0"), ADDR("10.0.0.254"), None, 0))
    hop = t.lookup(ADDR("8.8.8.8"), up)
    assert (hop.device, hop.address) == ("a", ADDR("10.0.0.254"))   # device via the gateway
    assert t.lookup(ADDR("10.0.0.9"), up).address == ADDR("10.0.0.9")  # on-link: dst itself


def test_route_on_down_device_is_skipped_for_the_next_best():
    t, up = table(Route(N("10.0.0.0/24"), None, "a", 0), Route(N("0.0.0.0/0"), ADDR("9.9.9.9"), "b", 0),
                  down=("a",))
    assert t.lookup(ADDR("10.0.0.5"), up).device == "b"


def test_removed_route_no_longer_matches():
    t, up = table(Route(N("10.0.0.0/8"), None, "a", 0), Route(N("10.1.0.0/16"), None, "b", 0))
    t.remove(N("10.1.0.0/16"))
    assert t.lookup(ADDR("10.1.0.1"), up).device == "a"
    with pytest.raises(StackError) as e:
        t.remove(N("10.1.0.0/16"))
    assert e.value.code == "not_found"


def test_duplicate_route_is_refused_and_table_is_bounded():
    t = RoutingTable(4, 2)
    t.add(Route(N("10.0.0.0/8"), None, "a"))
    with pytest.raises(StackError) as e:
        t.add(Route(N("10.0.0.0/8"), None, "a"))
    assert e.value.code == "exists"
    t.add(Route(N("10.0.0.0/9"), None, "a"))
    with pytest.raises(StackError) as e:
        t.add(Route(N("10.0.0.0/10"), None, "a"))
    assert e.value.code == "limit" and t.dropped == 1


def test_lookup_restricted_to_a_device():
    t, up = table(Route(N("0.0.0.0/0"), ADDR("10.0.0.254"), "a", 0),
                  Route(N("0.0.0.0/0"), ADDR("10.1.0.254"), "b", 50))
    assert t.lookup(ADDR("8.8.8.8"), up, device="b").address == ADDR("10.1.0.254")


def test_stack_routes_follow_addresses_and_devices():
    from .util import make_stack
    s = make_stack()
    s.add_route(N("0.0.0.0/0"), ADDR("10.0.0.254"), None)
    kinds = {(r.prefix, r.kind, r.active) for r in s.routes()}
    assert ("10.0.0.0/24", "connected", True) in kinds
    assert ("0.0.0.0/0", "static", True) in kinds
    s.set_link("eth0", False, 0.0)
    assert {r.prefix: r.active for r in s.routes()}["0.0.0.0/0"] is False
    with pytest.raises(StackError) as e:
        s.ping(ADDR("8.8.8.8"), 1, 1, b"", 0.0)
    assert e.value.code == "no_route"
    s.remove_device("eth0", 1.0)
    assert all(r.device != "eth0" for r in s.routes())
    with pytest.raises(StackError) as e:
        s.add_route(N("1.0.0.0/8"), None, "nope")
    assert e.value.code == "no_device"
