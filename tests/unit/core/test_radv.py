"""Router Advertisements of guest-facing ports (core/radv.py, RFC 4861 §6.2): the schedule
with a fake clock, RS answers and their rate limit, the message as scapy reads it, and a host
(core/slaac.py) configuring itself from it."""

from __future__ import annotations

import random
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

import msgpack
import pytest
from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6NDOptDNSSL, ICMPv6NDOptMTU,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr,
                                IPv6, in6_chksum)

from components.netstack.core.radv import (MAX_INITIAL_RTR_ADVERT_INTERVAL, MAX_RA_DELAY_TIME,
                                           MIN_DELAY_BETWEEN_RAS, RaConfig, RaPrefix,
                                           RouterAdvertiser)
from components.netstack.core.slaac import (DEFAULT_ROUTE, ONLINK_METRIC, PREFERENCE_METRIC,
                                            AddAddress, AddRoute, DnsChanged, RemoveRoute,
                                            SetHopLimit, SetMtu, Slaac, stable_interface_id)
from components.netstack.wire import MacAddr, build_ipv6
from components.netstack.wire.icmpv6 import Icmpv6Message
from components.netstack.wire.ipv6 import NEXT_HEADER_ICMPV6
from components.netstack.wire.ndp import (ALL_NODES, RouterAdvertisement, link_local_from_mac,
                                          parse_ndp)

DEV = "guest0"
MAC = MacAddr(bytes.fromhex("020000000001"))
ROUTER_LL = link_local_from_mac(MAC)
HOST = IPv6Address("fe80::aa")
P = IPv6Network("2001:db8:7::/64")
DNS = IPv6Address("2001:db8:7::53")


def advertiser(cfg: RaConfig | None = None, seed: int = 1, now: float = 0.0) -> RouterAdvertiser:
    r = RouterAdvertiser(random.Random(seed))
    r.configure(DEV, MAC, cfg or RaConfig(prefixes=[P]), now)
    return r


def run(r: RouterAdvertiser, end: float, solicit_every: float | None = None) -> list[float]:
    """Poll at every deadline (and solicit every `solicit_every` s) until end; the RA times."""
    sent, next_rs = [], 0.0 if solicit_every else float("inf")
    while True:
        t = min(r.next_deadline(), next_rs)
        if t > end:
            return sent
        if t == next_rs:
            r.solicitation(DEV, HOST, t)
            next_rs += solicit_every
        else:
            sent += [t for _ in r.poll(t)]


def on_the_wire(ra: RouterAdvertisement) -> bytes:
    return ra.build(ROUTER_LL, ALL_NODES)


# Schedule (RFC 4861 §6.2.4)

def test_first_ra_goes_at_once_then_a_burst_at_most_16_s_apart_then_min_to_max():
    r = advertiser()
    assert r.next_deadline() == 0.0
    assert r.poll(0.0) == [(DEV, ALL_NODES, r.advertisement(DEV))]
    times = [0.0] + run(r, 20000.0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g <= MAX_INITIAL_RTR_ADVERT_INTERVAL for g in gaps[:2])
    assert all(200.0 <= g <= 600.0 for g in gaps[2:]) and len(gaps) > 30


def test_nothing_is_sent_before_the_deadline():
    r = advertiser()
    r.poll(0.0)
    deadline = r.next_deadline()
    assert 0.0 < deadline <= MAX_INITIAL_RTR_ADVERT_INTERVAL
    assert r.poll(deadline - 0.001) == [] and len(r.poll(deadline)) == 1


def test_solicitation_is_answered_within_max_ra_delay_time():
    r = advertiser()
    rs = run(r, 1000.0)[-1] + 10.0       # past the rate limit, well before the next RA
    assert r.next_deadline() > rs + MAX_RA_DELAY_TIME
    r.solicitation(DEV, HOST, rs)
    at = r.next_deadline()
    assert rs <= at <= rs + MAX_RA_DELAY_TIME
    assert len(r.poll(at)) == 1
    # The periodic timer restarts from the answer, as from any multicast RA.
    assert at + 200.0 <= r.next_deadline() <= at + 600.0


def test_solicitations_get_at_most_one_multicast_ra_per_min_delay_between_ras():
    r = advertiser()
    times = run(r, 60.0, solicit_every=0.1)
    assert len(times) >= 15
    assert all(b - a >= MIN_DELAY_BETWEEN_RAS for a, b in zip(times, times[1:]))


def test_solicitation_right_after_an_ra_waits_for_the_rate_limit_plus_the_delay():
    r = advertiser()
    r.poll(0.0)
    r.solicitation(DEV, HOST, 1.0)
    assert MIN_DELAY_BETWEEN_RAS <= r.next_deadline() <= MIN_DELAY_BETWEEN_RAS + MAX_RA_DELAY_TIME


def test_an_ra_already_due_sooner_answers_the_solicitation():
    r = advertiser()
    r.solicitation(DEV, HOST, 0.0)       # the first RA is due at 0 already
    assert r.next_deadline() == 0.0


def test_solicitation_on_a_device_that_does_not_advertise_is_counted():
    r = advertiser()
    r.solicitation("other", HOST, 0.0)
    assert r.counters["rs_not_advertising"] == 1 and r.counters["rs_received"] == 0


def test_unconfigure_sends_one_final_ra_with_router_lifetime_zero_and_stops():
    r = advertiser()
    r.poll(0.0)
    usual = r.advertisement(DEV)
    out = r.unconfigure(DEV, 5.0)
    assert [(d, dst, ra.router_lifetime) for d, dst, ra in out] == [(DEV, ALL_NODES, 0)]
    assert out[0][2].prefixes == usual.prefixes
    assert r.next_deadline() is None and r.unconfigure(DEV, 6.0) == []
    with pytest.raises(KeyError):
        r.advertisement(DEV)


def test_reconfiguring_restarts_the_burst_but_not_closer_than_the_rate_limit():
    r = advertiser()
    last = run(r, 1000.0)[-1]
    before = r.next_deadline()
    r.configure(DEV, MAC, RaConfig(prefixes=[P]), last + 1.0)       # unchanged: no new RA
    assert r.next_deadline() == before
    r.configure(DEV, MAC, RaConfig(prefixes=[P], mtu=1400), last + 1.0)
    assert r.next_deadline() == last + MIN_DELAY_BETWEEN_RAS
    assert r.poll(r.next_deadline())[0][2].mtu == 1400
    times = [last + MIN_DELAY_BETWEEN_RAS] + run(r, last + 100.0)
    assert len(times) == 3
    assert all(b - a <= MAX_INITIAL_RTR_ADVERT_INTERVAL for a, b in zip(times, times[1:]))


def test_invalid_configuration_is_refused_and_leaves_the_device_as_it_was():
    r = advertiser()
    before = r.advertisement(DEV)
    with pytest.raises(ValueError):
        r.configure(DEV, MAC, RaConfig(prefixes=[IPv6Network("2001:db8::/48")]), 1.0)
    assert r.advertisement(DEV) == before


def test_snapshot_and_restore_on_another_clock():
    rng = random.Random(4)
    r = RouterAdvertiser(rng)
    r.configure(DEV, MAC, RaConfig(prefixes=[RaPrefix(P, valid_lifetime=7200, preferred_lifetime=3600)],
                                   rdnss=[DNS], dnssl=["lab.example"], mtu=1500, managed=True), 0.0)
    r.poll(0.0)
    at = r.next_deadline()
    r.poll(at)       # mid-burst, and an RA one second ago
    snap = msgpack.unpackb(msgpack.packb(r.snapshot(at + 1.0)))
    twin = RouterAdvertiser(random.Random())
    twin._rng.setstate(rng.getstate())
    twin.restore(snap, at + 10001.0)
    assert twin.next_deadline() == pytest.approx(r.next_deadline() + 10000.0)
    assert twin.advertisement(DEV) == r.advertisement(DEV)
    # The rate limit, the rest of the burst and the schedule carry over.
    r.solicitation(DEV, HOST, at + 1.0)
    twin.solicitation(DEV, HOST, at + 10001.0)
    assert twin.next_deadline() == pytest.approx(r.next_deadline() + 10000.0)
    assert r.next_deadline() >= at + MIN_DELAY_BETWEEN_RAS
    assert run(twin, 20000.0) == pytest.approx([t + 10000.0 for t in run(r, 10000.0)])


# Configuration (RFC 4861 §6.2.1)

def test_default_configuration_is_valid_and_follows_rfc_4861_defaults():
    cfg = RaConfig(prefixes=[P])
    cfg.validate()
    assert (cfg.min_interval, cfg.max_interval, cfg.router_lifetime) == (200.0, 600.0, 1800)
    assert (cfg.prefixes[0].valid_lifetime, cfg.prefixes[0].preferred_lifetime) == (86400, 14400)
    RaConfig(prefixes=[RaPrefix(IPv6Network("2001:db8::/48"), autonomous=False)]).validate()
    RaConfig(router_lifetime=0).validate()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_interval": 3.0, "min_interval": 3.0}, "max_interval"),
    ({"min_interval": 2.0}, "min_interval"),
    ({"min_interval": 500.0}, "min_interval"),
    ({"router_lifetime": 100}, "router_lifetime"),
    ({"router_lifetime": 70000}, "router_lifetime"),
    ({"cur_hop_limit": 256}, "cur_hop_limit"),
    ({"reachable_time": 3_600_001}, "reachable_time"),
    ({"mtu": 1000}, "mtu"),
    ({"prefixes": [IPv6Network("2001:db8::/48")]}, "not a /64"),
    ({"prefixes": [IPv6Network("fe80::/64")]}, "not a global"),
    ({"prefixes": [IPv6Network("ff0e::/64")]}, "not a global"),
    ({"prefixes": [P, P]}, "twice"),
    ({"prefixes": [RaPrefix(P, valid_lifetime=100, preferred_lifetime=200)]}, "exceeds"),
    ({"prefixes": [RaPrefix(P, valid_lifetime=2**32)]}, "valid lifetime"),
    ({"rdnss": [IPv6Address("ff02::1")]}, "DNS server"),
    ({"rdnss": [IPv6Address("::")]}, "DNS server"),
    ({"dnssl": ["a" * 64 + ".example"]}, "label"),
    ({"prefixes": [IPv6Network(f"2001:db8:{i:x}::/64") for i in range(40)]}, "minimum MTU"),
])
def test_invalid_configuration_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RaConfig(**kwargs).validate()


# The message

def test_advertisement_parses_back_with_the_wire_parser_and_in_scapy():
    cfg = RaConfig(prefixes=[P, RaPrefix(IPv6Network("2001:db8:8::/56"), autonomous=False,
                                         valid_lifetime=0xFFFFFFFF, preferred_lifetime=0xFFFFFFFF)],
                   mtu=1492, rdnss=[DNS, IPv6Address("2001:db8:7::54")],
                   dnssl=["lab.example", "example.org"], dns_lifetime=1200, managed=True,
                   other=True, router_lifetime=9000, cur_hop_limit=32, reachable_time=30000,
                   retrans_timer=1000)
    ra = advertiser(cfg).advertisement(DEV)
    raw = on_the_wire(ra)
    assert parse_ndp(Icmpv6Message.parse(raw, ROUTER_LL, ALL_NODES), ROUTER_LL, ALL_NODES) == ra

    packet = IPv6(build_ipv6(ROUTER_LL, ALL_NODES, NEXT_HEADER_ICMPV6, raw, hop_limit=255))
    s = packet[ICMPv6ND_RA]
    assert s.cksum == in6_chksum(NEXT_HEADER_ICMPV6, packet, raw[:2] + b"\0\0" + raw[4:])
    assert (s.chlim, s.M, s.O, s.prf, s.routerlifetime, s.reachabletime, s.retranstimer) == (
        32, 1, 1, 0, 9000, 30000, 1000)
    assert s[ICMPv6NDOptSrcLLAddr].lladdr == str(MAC)
    prefixes = [(o.prefix, o.prefixlen, o.L, o.A, o.validlifetime, o.preferredlifetime)
                for o in _options(s, ICMPv6NDOptPrefixInfo)]
    assert prefixes == [("2001:db8:7::", 64, 1, 1, 86400, 14400),
                        ("2001:db8:8::", 56, 1, 0, 0xFFFFFFFF, 0xFFFFFFFF)]
    assert s[ICMPv6NDOptMTU].mtu == 1492
    assert (s[ICMPv6NDOptRDNSS].dns, s[ICMPv6NDOptRDNSS].lifetime) == (
        ["2001:db8:7::53", "2001:db8:7::54"], 1200)
    assert (s[ICMPv6NDOptDNSSL].searchlist, s[ICMPv6NDOptDNSSL].lifetime) == (
        ["lab.example.", "example.org."], 1200)


def _options(layer, cls) -> list:
    found, p = [], layer
    while p:
        if isinstance(p, cls):
            found.append(p)
        p = p.payload
    return found


def test_dns_lifetime_defaults_to_three_max_intervals():
    ra = RaConfig(rdnss=[DNS], dnssl=["lab.example"], max_interval=100.0, min_interval=30.0,
                  router_lifetime=300).message(MAC)
    assert ra.dns_servers[0].lifetime == ra.search_lists[0].lifetime == 300


# Router to host

def test_a_host_configures_itself_from_our_advertisement():
    r = advertiser(RaConfig(prefixes=[P], rdnss=[DNS], dnssl=["lab.example"], mtu=1500))
    [(device, dst, ra)] = r.poll(0.0)
    raw = on_the_wire(ra)
    heard = parse_ndp(Icmpv6Message.parse(raw, ROUTER_LL, dst), ROUTER_LL, dst)
    key = b"host secret key, 32 bytes long.."
    host = Slaac(key, random.Random(2), temporary=False)
    out = host.router_advertisement("up0", ROUTER_LL, heard, 0.0)
    iid = stable_interface_id(P, "up0", 0, key)
    assert out == [
        AddRoute("up0", DEFAULT_ROUTE, ROUTER_LL, PREFERENCE_METRIC[0]),
        SetHopLimit("up0", 64),
        SetMtu("up0", 1500),
        AddRoute("up0", P, None, ONLINK_METRIC),
        AddAddress("up0", IPv6Interface((IPv6Address(P.network_address.packed[:8] + iid), 64)),
                   False, 14400.0, 86400.0),
        DnsChanged("up0"),
    ]
    assert host.dns("up0") == ([DNS], ["lab.example"])
    # Our final RA takes the default route away at once; the prefix stays.
    [(_, _, final)] = r.unconfigure(DEV, 10.0)
    out = host.router_advertisement("up0", ROUTER_LL, final, 10.0)
    assert RemoveRoute("up0", DEFAULT_ROUTE, ROUTER_LL, PREFERENCE_METRIC[0]) in out
    assert host.routers("up0") == [] and len(host.prefixes("up0")) == 1
