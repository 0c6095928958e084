"""Routing table: longest prefix, metric, default, gateways, removal, inactive devices."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _reference_lookup(routes, dst, up):
    """The rule, spelled out: longest prefix, then metric, then connected before static, then
    the order added; among routes whose device (or gateway's on-link device) is usable."""
    ranked = [r for _, r in sorted(enumerate(routes), key=lambda ir: (
        -ir[1].prefix.prefixlen, ir[1].metric, ir[1].kind != CONNECTED, ir[0]))]

    def device_of(r):   # a gateway without a device: the first usable on-link route to it
        if r.gateway is None or r.device is not None:
            return r.device if up(r.device) else None
        return next((c.device for c in ranked if c.gateway is None and r.gateway in c.prefix
                     and up(c.device)), None)
    for r in ranked:
        if dst in r.prefix and device_of(r) is not None:
            return r, device_of(r)
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 32), st.sampled_from([0x0A000000, 0x0A010000, 0x0A010200,
                                                               0x0A0102FF, 0xC0A80000, 0]),
                          st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.booleans(),
                          st.booleans()), max_size=25),
       st.lists(st.sampled_from([0x0A010203, 0x0A0102FF, 0x0A000001, 0xC0A80101, 0x08080808,
                                 0x0A010200]), min_size=1, max_size=6),
       st.sets(st.sampled_from(["a", "b", "c"])))
def test_lookup_over_overlapping_prefixes_matches_the_spelled_out_rule(specs, dsts, down):
    t = RoutingTable(4, 100)
    added = []
    for plen, net, metric, dev, via_gw, connected in specs:
        prefix = N((net, plen), strict=False)
        r = Route(prefix, ADDR(net | 1) if via_gw else None, dev if not (via_gw and connected) else None,
                  metric, CONNECTED if connected and not via_gw else "static")
        try:
            t.add(r)
        except StackError:
            continue
        added.append(r)
    up = lambda d: d not in down
    for d in dsts:
        want = _reference_lookup(added, ADDR(d), up)
        for hop in (t.lookup(ADDR(d), up), t.cached_lookup(d, up), t.cached_lookup(d, up)):
            assert (None if hop is None else (hop.route, hop.device)) == want
            assert hop is None or hop.neighbor == int(hop.address)


def test_cached_lookup_forgets_on_route_changes_and_invalidate():
    down = set()
    up = lambda d: d not in down
    t = RoutingTable(4, 100)
    t.add(Route(N("0.0.0.0/0"), ADDR("10.0.0.254"), "a"))
    d = int(ADDR("10.1.2.3"))
    assert t.cached_lookup(d, up).device == "a"
    t.add(Route(N("10.1.0.0/16"), None, "b"))
    assert t.cached_lookup(d, up).device == "b"
    down.add("b")
    assert t.cached_lookup(d, up).device == "b"      # remembered until told
    t.invalidate()
    assert t.cached_lookup(d, up).device == "a"
    t.remove(N("0.0.0.0/0"))
    assert t.cached_lookup(d, up) is None
