"""RA reception and SLAAC (core/slaac.py): RFC 4861 §6.3.4, RFC 4862 §5.5, RFC 7217,
RFC 8981, RFC 4191 and RFC 8106, driven with a fake clock."""

from __future__ import annotations

import math
import random
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.netstack.core.slaac import (DEFAULT_ROUTE, IDGEN_RETRIES, INFINITY,
                                            ONLINK_METRIC, PREFERENCE_METRIC, REGEN_ADVANCE,
                                            TEMP_IDGEN_RETRIES, TEMP_PREFERRED_LIFETIME,
                                            TEMP_VALID_LIFETIME, AddAddress, AddRoute,
                                            Deprecate, DnsChanged, RemoveAddress, RemoveRoute,
                                            SetHopLimit, SetMtu, SetNeighborTiming, Slaac,
                                            UpdateAddress, is_reserved_iid, stable_interface_id)
from components.netstack.wire.ndp import (DnsSearchList, MtuOption, PrefixInformation,
                                          RecursiveDnsServers, RouteInformation,
                                          RouterAdvertisement)

KEY = bytes(range(32))
DEV = "up0"
R1, R2 = IPv6Address("fe80::1"), IPv6Address("fe80::2")
P = IPv6Network("2001:db8:1::/64")
P2 = IPv6Network("2001:db8:2::/64")
HIGH, MEDIUM, LOW = 1, 0, 3


def make(temporary: bool = False, seed: int = 1, **kw) -> Slaac:
    return Slaac(KEY, random.Random(seed), temporary=temporary, **kw)


def pio(prefix: IPv6Network = P, valid: int = 86400, preferred: int = 14400, *,
        on_link: bool = True, autonomous: bool = True) -> PrefixInformation:
    return PrefixInformation(prefix.prefixlen, on_link, autonomous, valid, preferred,
                             prefix.network_address)


def ra(*options, lifetime: int = 1800, preference: int = MEDIUM, hop: int = 0,
       reachable: int = 0, retrans: int = 0) -> RouterAdvertisement:
    return RouterAdvertisement(hop, False, False, lifetime, reachable, retrans, tuple(options),
                               preference)


def of(actions, cls) -> list:
    return [a for a in actions if type(a) is cls]


def stable_address(prefix: IPv6Network = P, device: str = DEV, counter: int = 0,
                   key: bytes = KEY) -> IPv6Address:
    iid = stable_interface_id(prefix, device, counter, key)
    return IPv6Address(prefix.network_address.packed[:8] + iid)


# Routers and on-link prefixes (RFC 4861 §6.3.4)

def test_first_ra_gives_default_route_on_link_route_and_stable_address():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(pio()), 0.0)
    assert out == [
        AddRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[MEDIUM]),
        AddRoute(DEV, P, None, ONLINK_METRIC),
        AddAddress(DEV, IPv6Interface((stable_address(), 64)), False, 14400.0, 86400.0),
    ]
    assert s.routers(DEV) == [{"router": str(R1), "preference": "medium", "until": 1800.0}]
    assert s.next_deadline() == 1800.0


def test_router_lifetime_zero_removes_the_default_route_at_once():
    s = make()
    s.router_advertisement(DEV, R1, ra(), 0.0)
    out = s.router_advertisement(DEV, R1, ra(lifetime=0), 10.0)
    assert out == [RemoveRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[MEDIUM])]
    assert s.routers(DEV) == []


def test_router_lifetime_zero_from_an_unknown_router_adds_nothing():
    s = make()
    assert s.router_advertisement(DEV, R1, ra(lifetime=0), 0.0) == []
    assert s.next_deadline() is None


def test_router_expires_when_its_lifetime_runs_out_and_each_ra_restarts_it():
    s = make()
    s.router_advertisement(DEV, R1, ra(lifetime=600), 0.0)
    s.router_advertisement(DEV, R1, ra(lifetime=600), 500.0)
    assert s.poll(1099.9) == []
    assert s.poll(1100.0) == [RemoveRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[MEDIUM])]
    assert s.next_deadline() is None


def test_router_preference_orders_metrics_and_a_change_replaces_the_route():
    assert PREFERENCE_METRIC[HIGH] < PREFERENCE_METRIC[MEDIUM] < PREFERENCE_METRIC[LOW]
    s = make()
    s.router_advertisement(DEV, R1, ra(preference=LOW), 0.0)
    out = s.router_advertisement(DEV, R1, ra(preference=HIGH), 1.0)
    assert out == [RemoveRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[LOW]),
                   AddRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[HIGH])]
    assert s.routers(DEV)[0]["preference"] == "high"
    assert s.router_advertisement(DEV, R1, ra(preference=HIGH), 2.0) == []


def test_two_routers_get_two_default_routes():
    s = make()
    s.router_advertisement(DEV, R1, ra(preference=HIGH), 0.0)
    out = s.router_advertisement(DEV, R2, ra(preference=LOW), 0.0)
    assert out == [AddRoute(DEV, DEFAULT_ROUTE, R2, PREFERENCE_METRIC[LOW])]
    assert {r["router"] for r in s.routers(DEV)} == {str(R1), str(R2)}


def test_on_link_prefix_times_out_after_its_valid_lifetime_and_zero_removes_it_now():
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(P, 100, 50, autonomous=False), lifetime=0), 0.0)
    assert s.poll(100.0) == [RemoveRoute(DEV, P, None, ONLINK_METRIC)]
    assert s.prefixes(DEV) == []
    s.router_advertisement(DEV, R1, ra(pio(P, 100, 50, autonomous=False), lifetime=0), 200.0)
    out = s.router_advertisement(DEV, R1, ra(pio(P, 0, 0, autonomous=False), lifetime=0), 210.0)
    assert out == [RemoveRoute(DEV, P, None, ONLINK_METRIC)]


def test_unknown_prefix_with_zero_valid_lifetime_creates_nothing():
    s = make()
    assert s.router_advertisement(DEV, R1, ra(pio(P, 0, 0), lifetime=0), 0.0) == []
    assert s.prefixes(DEV) == []


@pytest.mark.parametrize("prefix", ["fe80::/64", "fe80::/10", "ff02::/64", "::/0"])
def test_link_local_and_multicast_prefixes_are_ignored(prefix):
    s = make()
    assert s.router_advertisement(DEV, R1, ra(pio(IPv6Network(prefix)), lifetime=0), 0.0) == []
    assert s.counters["prefix_ignored_scope"] == 1


def test_bits_after_the_prefix_length_are_ignored():
    s = make()
    messy = PrefixInformation(64, True, False, 100, 50, IPv6Address("2001:db8:1::dead"))
    assert s.router_advertisement(DEV, R1, ra(messy, lifetime=0), 0.0) == [
        AddRoute(DEV, P, None, ONLINK_METRIC)]


def test_mtu_option_at_least_1280_is_passed_on_and_a_smaller_one_counted():
    s = make()
    assert of(s.router_advertisement(DEV, R1, ra(MtuOption(1400)), 0.0), SetMtu) == [SetMtu(DEV, 1400)]
    assert of(s.router_advertisement(DEV, R1, ra(MtuOption(1279)), 1.0), SetMtu) == []
    assert s.counters["mtu_ignored"] == 1


def test_hop_limit_and_neighbor_timing_are_emitted_only_when_specified():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(hop=64, reachable=30000, retrans=0), 0.0)
    assert of(out, SetHopLimit) == [SetHopLimit(DEV, 64)]
    assert of(out, SetNeighborTiming) == [SetNeighborTiming(DEV, 30000, 0)]
    out = s.router_advertisement(DEV, R1, ra(), 1.0)
    assert of(out, SetHopLimit) == of(out, SetNeighborTiming) == []


# Stable addresses (RFC 4862 §5.5.3, RFC 7217)

def test_rfc7217_identifier_is_deterministic_and_depends_on_every_input():
    a = stable_interface_id(P, DEV, 0, KEY)
    assert a == stable_interface_id(P, DEV, 0, KEY) and len(a) == 8
    assert a != stable_interface_id(P, DEV, 0, b"another key of 16+ bytes")
    assert a != stable_interface_id(P2, DEV, 0, KEY)
    assert a != stable_interface_id(P, "up1", 0, KEY)
    assert a != stable_interface_id(P, DEV, 1, KEY)


def test_same_prefix_device_and_key_give_the_same_address_in_another_instance():
    first = of(make(seed=1).router_advertisement(DEV, R1, ra(pio()), 0.0), AddAddress)
    again = of(make(seed=2).router_advertisement(DEV, R1, ra(pio()), 50.0), AddAddress)
    other = of(Slaac(b"x" * 16, random.Random(1), temporary=False)
               .router_advertisement(DEV, R1, ra(pio()), 0.0), AddAddress)
    assert first[0].iface == again[0].iface != other[0].iface
    assert first[0].iface.network == P


def test_reserved_interface_identifiers_of_rfc5453():
    reserved = ["0000000000000000", "02005efffe000000", "02005efffe005213", "02005efffeffffff",
                "fdffffffffffff80", "fdffffffffffffff"]
    ordinary = ["0000000000000001", "02005efffdffffff", "02005effff000000", "fdffffffffffff7f"]
    assert all(is_reserved_iid(bytes.fromhex(h)) for h in reserved)
    assert not any(is_reserved_iid(bytes.fromhex(h)) for h in ordinary)


def test_stable_address_is_deprecated_at_its_preferred_lifetime_then_removed_at_valid():
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(P, 1000, 400), lifetime=0), 0.0)
    addr = stable_address()
    assert s.next_deadline() == 400.0
    assert s.poll(399.0) == []
    assert s.poll(400.0) == [Deprecate(DEV, addr)]
    assert s.next_deadline() == 1000.0
    assert s.poll(1000.0) == [RemoveRoute(DEV, P, None, ONLINK_METRIC), RemoveAddress(DEV, addr)]
    assert s.prefixes(DEV) == [] and s.next_deadline() is None


def test_address_created_with_zero_preferred_lifetime_is_deprecated_at_once():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(pio(P, 1000, 0, on_link=False), lifetime=0), 0.0)
    assert out == [AddAddress(DEV, IPv6Interface((stable_address(), 64)), False, 0.0, 1000.0),
                   Deprecate(DEV, stable_address())]


def test_a_later_ra_makes_a_deprecated_address_preferred_again():
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(P, 1000, 100, on_link=False), lifetime=0), 0.0)
    assert s.poll(100.0) == [Deprecate(DEV, stable_address())]
    out = s.router_advertisement(DEV, R1, ra(pio(P, 1000, 500, on_link=False), lifetime=0), 200.0)
    assert out == [UpdateAddress(DEV, stable_address(), 700.0, 1200.0)]
    assert s.prefixes(DEV)[0]["addresses"][0]["deprecated"] is False
    assert s.poll(700.0) == [Deprecate(DEV, stable_address())]


def _valid_until_after(first_valid: float, at: float, advertised: int) -> float:
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(P, int(first_valid) if first_valid != math.inf
                                           else INFINITY, 0, on_link=False), lifetime=0), 0.0)
    s.router_advertisement(DEV, R1, ra(pio(P, advertised, 0, on_link=False), lifetime=0), at)
    return s.prefixes(DEV)[0]["addresses"][0]["valid_until"]


def test_two_hour_rule_longer_or_above_two_hours_is_taken():
    # RFC 4862 §5.5.3 (e) 1: above two hours, or beyond what remains.
    assert _valid_until_after(86400, 100.0, 10000) == 10100.0
    assert _valid_until_after(3600, 100.0, 5000) == 5100.0
    assert _valid_until_after(86400, 100.0, INFINITY) == math.inf


def test_two_hour_rule_ignores_a_shorter_lifetime_when_two_hours_or_less_remain():
    # (e) 2: an unauthenticated RA cannot cut a short remaining lifetime.
    assert _valid_until_after(7200, 100.0, 60) == 7200.0
    assert _valid_until_after(3600, 100.0, 0) == 3600.0


def test_two_hour_rule_cuts_a_longer_remaining_lifetime_to_two_hours():
    # (e) 3
    assert _valid_until_after(86400, 100.0, 60) == 100.0 + 7200
    assert _valid_until_after(math.inf, 100.0, 0) == 100.0 + 7200


def test_preferred_above_valid_is_ignored_for_autoconfiguration_but_on_link_holds():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(pio(P, 100, 200), lifetime=0), 0.0)
    assert out == [AddRoute(DEV, P, None, ONLINK_METRIC)]
    assert s.counters["prefix_ignored_lifetimes"] == 1


def test_autonomous_prefix_that_is_not_64_bits_forms_no_address():
    s = make()
    p48 = IPv6Network("2001:db8::/48")
    out = s.router_advertisement(DEV, R1, ra(pio(p48), lifetime=0), 0.0)
    assert out == [AddRoute(DEV, p48, None, ONLINK_METRIC)]
    assert s.counters["prefix_ignored_length"] == 1


def test_autonomous_only_prefix_gives_an_address_without_an_on_link_route():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(pio(on_link=False), lifetime=0), 0.0)
    assert [type(a) for a in out] == [AddAddress]


# DAD failures (RFC 7217 §6, RFC 8981 §3.4)

def test_dad_failure_of_stable_address_retries_with_the_next_counter_then_gives_up():
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(on_link=False), lifetime=0), 0.0)
    for counter in range(1, IDGEN_RETRIES + 1):
        out = s.dad_failed(DEV, stable_address(counter=counter - 1), 1.0)
        assert out == [RemoveAddress(DEV, stable_address(counter=counter - 1)),
                       AddAddress(DEV, IPv6Interface((stable_address(counter=counter), 64)),
                                  False, 14400.0, 86400.0)]
    assert s.dad_failed(DEV, stable_address(counter=IDGEN_RETRIES), 2.0) == [
        RemoveAddress(DEV, stable_address(counter=IDGEN_RETRIES))]
    assert s.counters["stable_gave_up"] == 1
    # The prefix is remembered, so later RAs do not start over.
    assert s.router_advertisement(DEV, R1, ra(pio(on_link=False), lifetime=0), 3.0) == []


def test_dad_failure_of_an_unknown_address_is_counted():
    s = make()
    assert s.dad_failed(DEV, stable_address(), 0.0) == []
    s.router_advertisement(DEV, R1, ra(pio()), 0.0)
    assert s.dad_failed(DEV, IPv6Address("2001:db8:1::99"), 0.0) == []
    assert s.counters["dad_failed_unknown"] == 2


def test_dad_failure_of_temporary_regenerates_until_temp_idgen_retries_then_stops():
    s = make(temporary=True)
    out = s.router_advertisement(DEV, R1, ra(pio(P, INFINITY, INFINITY, on_link=False), lifetime=0), 0.0)
    temp = next(a for a in of(out, AddAddress) if a.temporary)
    for _ in range(TEMP_IDGEN_RETRIES):
        out = s.dad_failed(DEV, temp.iface.ip, 1.0)
        assert out[0] == RemoveAddress(DEV, temp.iface.ip)
        new = of(out, AddAddress)
        assert len(new) == 1 and new[0].temporary and new[0].iface != temp.iface
        temp = new[0]
    assert s.dad_failed(DEV, temp.iface.ip, 2.0) == [RemoveAddress(DEV, temp.iface.ip)]
    assert s.counters["temporary_gave_up"] == 1
    # No temporaries on this device any more, on any prefix.
    out = s.router_advertisement(DEV, R1, ra(pio(P2, on_link=False), lifetime=0), 3.0)
    assert [a.temporary for a in of(out, AddAddress)] == [False]


# Temporary addresses (RFC 8981)

def drive(s: Slaac, ras: RouterAdvertisement, end: float, every: float) -> list:
    """An RA from R1 every `every` seconds from 0, and a poll at each deadline, until end."""
    log, next_ra = [], 0.0
    while True:
        deadline = s.next_deadline()
        t = min(next_ra, math.inf if deadline is None else deadline)
        if t > end:
            return log
        if t == next_ra:
            log += [(t, a) for a in s.router_advertisement(DEV, R1, ras, t)]
            next_ra += every
        else:
            log += [(t, a) for a in s.poll(t)]


def test_temporary_address_lifetimes_and_regeneration_before_deprecation():
    s = make(temporary=True, seed=7)
    log = drive(s, ra(pio(P, INFINITY, INFINITY, on_link=False), lifetime=0), 5 * 86400.0, 600.0)
    temps = [(t, a) for t, a in log if type(a) is AddAddress and a.temporary]
    assert len(temps) >= 5
    deprecated = {a.address: t for t, a in log if type(a) is Deprecate}
    removed = {a.address: t for t, a in log if type(a) is RemoveAddress}
    for (created, add), (successor_at, _) in zip(temps, temps[1:]):
        addr = add.iface.ip
        assert add.iface.network == P
        assert add.valid_until == created + TEMP_VALID_LIFETIME
        # Preferred for TEMP_PREFERRED_LIFETIME - DESYNC_FACTOR, DESYNC_FACTOR <= 0.4 day.
        assert 0.6 * TEMP_PREFERRED_LIFETIME <= add.preferred_until - created <= TEMP_PREFERRED_LIFETIME
        assert deprecated[addr] == add.preferred_until
        assert successor_at == add.preferred_until - REGEN_ADVANCE
        if created + TEMP_VALID_LIFETIME <= 5 * 86400.0:
            assert removed[addr] == created + TEMP_VALID_LIFETIME
    # The stable address stays, preferred and valid forever.
    stable = [a for t, a in log if type(a) is AddAddress and not a.temporary]
    assert len(stable) == 1 and stable[0].valid_until == math.inf
    view = s.prefixes(DEV)[0]["addresses"]
    assert sum(1 for a in view if a["temporary"]) <= 3
    assert sum(1 for a in view if a["temporary"] and not a["deprecated"]) == 1


def test_temporary_lifetimes_never_exceed_the_prefix():
    s = make(temporary=True)
    out = s.router_advertisement(DEV, R1, ra(pio(P, 3000, 1000, on_link=False), lifetime=0), 0.0)
    temp = next(a for a in of(out, AddAddress) if a.temporary)
    assert (temp.preferred_until, temp.valid_until) == (1000.0, 3000.0)


def test_no_temporary_when_its_preferred_lifetime_would_not_exceed_regen_advance():
    s = make(temporary=True)
    short = pio(P, 3000, int(REGEN_ADVANCE), on_link=False)
    out = s.router_advertisement(DEV, R1, ra(short, lifetime=0), 0.0)
    assert [a.temporary for a in of(out, AddAddress)] == [False]


def test_a_prefix_whose_temporary_expired_gets_a_new_one_from_the_next_ra():
    s = make(temporary=True)
    s.router_advertisement(DEV, R1, ra(pio(P, 3000, 100, on_link=False), lifetime=0), 0.0)
    s.poll(95.0)     # the temporary's successor is due but the prefix is preferred too briefly
    s.poll(100.0)
    out = s.router_advertisement(DEV, R1, ra(pio(P, 3000, 1000, on_link=False), lifetime=0), 200.0)
    assert [a.preferred_until for a in of(out, AddAddress) if a.temporary] == [1200.0]


# Routes (RFC 4191) and DNS (RFC 8106)

def test_route_information_adds_a_route_with_its_preference_and_lifetime():
    s = make()
    net = IPv6Network("2001:db8:100::/48")
    out = s.router_advertisement(DEV, R1, ra(RouteInformation(48, HIGH, 300, net.network_address),
                                             lifetime=0), 0.0)
    assert out == [AddRoute(DEV, net, R1, PREFERENCE_METRIC[HIGH])]
    assert s.routes(DEV) == [{"prefix": str(net), "router": str(R1), "preference": "high",
                              "until": 300.0}]
    assert s.poll(300.0) == [RemoveRoute(DEV, net, R1, PREFERENCE_METRIC[HIGH])]
    s.router_advertisement(DEV, R1, ra(RouteInformation(48, HIGH, 300, net.network_address),
                                       lifetime=0), 400.0)
    out = s.router_advertisement(DEV, R1, ra(RouteInformation(48, HIGH, 0, net.network_address),
                                             lifetime=0), 401.0)
    assert out == [RemoveRoute(DEV, net, R1, PREFERENCE_METRIC[HIGH])]


def test_default_route_information_overrides_the_header_lifetime_and_preference():
    s = make()
    out = s.router_advertisement(DEV, R1, ra(RouteInformation(0, LOW, 5000, IPv6Address("::")),
                                             lifetime=0), 0.0)
    assert out == [AddRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[LOW])]
    assert s.routers(DEV)[0]["until"] == 5000.0


def test_rdnss_and_dnssl_are_kept_with_their_lifetimes():
    s = make()
    dns1, dns2 = IPv6Address("2001:db8::53"), IPv6Address("2001:db8::54")
    out = s.router_advertisement(DEV, R1, ra(RecursiveDnsServers(600, (dns1, dns2)),
                                             DnsSearchList(300, ("example.com",)), lifetime=0), 0.0)
    assert out == [DnsChanged(DEV)]
    assert s.dns(DEV) == ([dns1, dns2], ["example.com"])
    assert s.poll(300.0) == [DnsChanged(DEV)]
    assert s.dns(DEV) == ([dns1, dns2], [])
    # A refresh changes no member; lifetime 0 deletes.
    assert s.router_advertisement(DEV, R1, ra(RecursiveDnsServers(600, (dns1,)), lifetime=0), 400.0) == []
    out = s.router_advertisement(DEV, R1, ra(RecursiveDnsServers(0, (dns2,)), lifetime=0), 401.0)
    assert out == [DnsChanged(DEV)] and s.dns(DEV) == ([dns1], [])
    assert s.poll(1000.0) == [DnsChanged(DEV)] and s.dns(DEV) == ([], [])
    assert s.dns("nothing") == ([], [])


def test_a_full_dns_list_replaces_the_entry_that_expires_first():
    s = make(max_dns_per_device=2)
    a, b, c = (IPv6Address(f"2001:db8::{i}") for i in (1, 2, 3))
    s.router_advertisement(DEV, R1, ra(RecursiveDnsServers(900, (a,)), RecursiveDnsServers(100, (b,)),
                                       lifetime=0), 0.0)
    s.router_advertisement(DEV, R1, ra(RecursiveDnsServers(500, (c,)), lifetime=0), 1.0)
    assert s.dns(DEV)[0] == [a, c]
    assert s.counters["dns_replaced"] == 1


# Bounds, removal, hand-over

def test_a_flood_of_random_prefixes_and_routers_stays_within_the_bounds():
    s = make(temporary=True)
    rng = random.Random(3)
    for i in range(2000):
        prefix = IPv6Network(((0x2000 << 112) | rng.getrandbits(60) << 64, 64))
        router = IPv6Address((0xFE80 << 112) | rng.getrandbits(64))
        rio = RouteInformation(48, 0, 600, IPv6Address(rng.getrandbits(80) << 48))
        s.router_advertisement(DEV, router, ra(pio(prefix), rio, RecursiveDnsServers(
            600, (IPv6Address(rng.getrandbits(128)),))), i / 10)
    assert len(s.prefixes(DEV)) == 16 and len(s.routers(DEV)) == 8 and len(s.routes(DEV)) == 16
    assert len(s.dns(DEV)[0]) == 8
    assert all(len(p["addresses"]) <= 2 for p in s.prefixes(DEV))
    assert s.counters["prefix_table_full"] == 2000 - 16
    assert s.counters["router_table_full"] == 2000 - 8
    assert s.counters["route_table_full"] == 2000 - 16


def test_remove_device_returns_the_removal_of_everything_learned():
    s = make()
    s.router_advertisement(DEV, R1, ra(pio(), RecursiveDnsServers(600, (IPv6Address("2001:db8::53"),))), 0.0)
    out = s.remove_device(DEV)
    assert set(out) == {RemoveAddress(DEV, stable_address()), RemoveRoute(DEV, P, None, ONLINK_METRIC),
                        RemoveRoute(DEV, DEFAULT_ROUTE, R1, PREFERENCE_METRIC[MEDIUM]), DnsChanged(DEV)}
    assert s.prefixes(DEV) == [] and s.next_deadline() is None and s.remove_device(DEV) == []


def test_short_secret_key_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        Slaac(b"short", random.Random())


def _rounded(view):
    if isinstance(view, dict):
        return {k: _rounded(v) for k, v in view.items()}
    if isinstance(view, list):
        return [_rounded(v) for v in view]
    return round(view, 6) if isinstance(view, float) else view


def _shifted(view, by: float):
    if isinstance(view, dict):
        return {k: _shifted(v, by) for k, v in view.items()}
    if isinstance(view, list):
        return [_shifted(v, by) for v in view]
    return view + by if isinstance(view, float) else view


def test_snapshot_and_restore_mid_lifetime_on_another_clock():
    rng = random.Random(5)
    s = Slaac(KEY, rng)
    options = (pio(P, 20000, 10000), pio(P2, INFINITY, INFINITY),
               RouteInformation(48, LOW, 3000, IPv6Address("2001:db8:100::")),
               RecursiveDnsServers(900, (IPv6Address("2001:db8::53"),)),
               DnsSearchList(INFINITY, ("lab.example",)))
    s.router_advertisement(DEV, R1, ra(*options, preference=HIGH), 0.0)
    s.router_advertisement(DEV, R2, ra(pio(P, 20000, 10000)), 100.0)
    s.dad_failed(DEV, stable_address(P2), 150.0)
    s.poll(1800.0)
    snap = msgpack.unpackb(msgpack.packb(s.snapshot(2000.0)), strict_map_key=False)
    shift = 1_000_000.0
    twin = Slaac(KEY, random.Random())
    twin._rng.setstate(rng.getstate())
    twin.restore(snap, 2000.0 + shift)
    for view in (Slaac.prefixes, Slaac.routers, Slaac.routes):
        assert _rounded(view(twin, DEV)) == _rounded(_shifted(view(s, DEV), shift))
    assert twin.dns(DEV) == s.dns(DEV)
    assert twin.next_deadline() == pytest.approx(s.next_deadline() + shift)
    # Both go on alike: the same actions at the same (shifted) times.
    for _ in range(10):
        t = s.next_deadline()
        assert twin.next_deadline() == pytest.approx(t + shift)
        assert _untimed(twin.poll(twin.next_deadline())) == _untimed(s.poll(t))


def _untimed(actions) -> list:
    return [(type(a), a.iface, a.temporary) if type(a) is AddAddress else
            (type(a), a.address) if type(a) is UpdateAddress else a for a in actions]


# Random RAs with time running

class Applied:
    """What a caller holds after applying the actions; checks each one makes sense."""

    def __init__(self) -> None:
        self.addresses: dict[tuple[str, IPv6Address], bool] = {}     # -> deprecated
        self.routes: set[tuple] = set()

    def apply(self, actions, now: float) -> None:
        for a in actions:
            if type(a) is AddAddress:
                key = (a.device, a.iface.ip)
                assert key not in self.addresses
                self.addresses[key] = False
            elif type(a) is UpdateAddress:
                assert (a.device, a.address) in self.addresses
                if a.preferred_until > now:
                    self.addresses[(a.device, a.address)] = False
            elif type(a) is Deprecate:
                assert self.addresses[(a.device, a.address)] is False
                self.addresses[(a.device, a.address)] = True
            elif type(a) is RemoveAddress:
                del self.addresses[(a.device, a.address)]
            elif type(a) is AddRoute:
                key = (a.device, a.prefix, a.gateway, a.metric)
                assert key not in self.routes
                self.routes.add(key)
            elif type(a) is RemoveRoute:
                self.routes.remove((a.device, a.prefix, a.gateway, a.metric))


LIFETIMES = st.sampled_from([0, 1, 5, 60, 3600, 7200, 7201, 86400, INFINITY])
PREFIXES = st.sampled_from([P, P2, IPv6Network("2001:db8:3::/64"), IPv6Network("2001:db8::/48"),
                            IPv6Network("fe80::/64")])
PIOS = st.builds(lambda prefix, valid, preferred, on_link, auto: pio(prefix, valid, preferred,
                                                                     on_link=on_link, autonomous=auto),
                 PREFIXES, LIFETIMES, LIFETIMES, st.booleans(), st.booleans())
RIOS = st.builds(lambda n, pref, life: RouteInformation(n, pref, life, IPv6Address("2001:db8:100::")),
                 st.sampled_from([0, 48, 64]), st.sampled_from([0, 1, 3]), LIFETIMES)
DNS = st.builds(lambda life, n: RecursiveDnsServers(life, (IPv6Address(f"2001:db8::{n}"),)),
                LIFETIMES, st.integers(1, 12))
RAS = st.builds(lambda opts, life, pref: ra(*opts, lifetime=life, preference=pref),
                st.lists(st.one_of(PIOS, RIOS, DNS), max_size=5),
                st.sampled_from([0, 1, 600, 1800, 9000]), st.sampled_from([0, 1, 3]))
STEPS = st.lists(st.tuples(st.sampled_from(["up0", "up1"]), st.sampled_from([R1, R2]), RAS,
                           st.floats(0, 100000), st.integers(0, 3)), max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, st.integers(0, 2**32))
def test_random_ras_with_time_running_keep_tables_bounded_and_actions_consistent(steps, seed):
    s = Slaac(KEY, random.Random(seed), max_prefixes_per_device=3, max_routers_per_device=2,
              max_routes_per_device=2, max_dns_per_device=4, max_temporaries_per_prefix=3)
    applied = Applied()
    now = 0.0
    for device, router, message, wait, dad in steps:
        now += wait
        deadline = s.next_deadline()
        if deadline is not None and deadline <= now:
            applied.apply(s.poll(now), now)
        applied.apply(s.router_advertisement(device, router, message, now), now)
        ours = [(device, IPv6Address(a["address"])) for p in s.prefixes(device) for a in p["addresses"]]
        if dad and ours:
            applied.apply(s.dad_failed(device, ours[dad % len(ours)][1], now), now)
        assert s.next_deadline() is None or s.next_deadline() > now
        for dev in ("up0", "up1"):
            assert len(s.prefixes(dev)) <= 3 and len(s.routers(dev)) <= 2 and len(s.routes(dev)) <= 2
            assert len(s.dns(dev)[0]) <= 4
            assert all(len(p["addresses"]) <= 4 for p in s.prefixes(dev))
        held = {(dev, IPv6Address(a["address"])): a["deprecated"] for dev in ("up0", "up1")
                for p in s.prefixes(dev) for a in p["addresses"]}
        assert held == applied.addresses
        restored = Slaac(KEY, random.Random(0))
        restored.restore(msgpack.unpackb(msgpack.packb(s.snapshot(now)), strict_map_key=False), now)
        assert _rounded(restored.prefixes("up0")) == _rounded(s.prefixes("up0"))
    # Everything finite ends.
    applied.apply(s.poll(now + 10 * 86400), now + 10 * 86400)
    for dev in ("up0", "up1"):
        for p in s.prefixes(dev):
            assert math.inf in (p["valid_until"], p["on_link_until"])
        assert all(r["until"] == math.inf for r in s.routers(dev) + s.routes(dev))
