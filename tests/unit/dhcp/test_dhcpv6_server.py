"""The DHCPv6 server for a guest-facing port: one message in, one reply (or None) out."""

from __future__ import annotations

from ipaddress import IPv6Address as A, IPv6Network as N

import msgpack
import pytest
import scapy.layers.dhcp6 as d6

from components.dhcpd.dhcpv6_server import Dhcpv6Server, Dhcpv6ServerConfig, LeaseState
from components.dhcpd.dhcpv6_wire import (Dhcpv6Message, IaAddress, IaNa, IaPd, IaPrefix,
                                          MessageType as M, Option, StatusCode,
                                          duid_ll, duid_uuid)

SERVER = duid_ll(bytes.fromhex("020000000001"))
C1 = duid_ll(bytes.fromhex("020000000011"))
C2 = duid_ll(bytes.fromhex("020000000012"))
LL = A("fe80::11")
NET = N("2001:db8:5::/64")
ORO = (Option.DNS_SERVERS, Option.DOMAIN_LIST, Option.SOL_MAX_RT)


def config(**kw) -> Dhcpv6ServerConfig:
    base = dict(server_duid=SERVER, prefix=NET, pool_size=16,
                dns_servers=(A("2001:db8:5::1"),), domain_list=("guests.test",),
                preferred_lifetime=600, valid_lifetime=1000, exclude=(A("2001:db8:5::1001"),))
    base.update(kw)
    return Dhcpv6ServerConfig(**base)


def ask(server: Dhcpv6Server, mtype, now: float = 0.0, *, duid=C1, xid=1, iaids=(1,),
        addresses=(), **fields) -> Dhcpv6Message | None:
    fields.setdefault("client_id", duid)
    if mtype in (M.REQUEST, M.RENEW, M.RELEASE, M.DECLINE):
        fields.setdefault("server_id", SERVER)
    if mtype is not M.INFORMATION_REQUEST:
        fields.setdefault("ia_na", tuple(IaNa(i, 0, 0, tuple(IaAddress(a, 0, 0)
                                                             for a in addresses))
                                         for i in iaids))
    fields.setdefault("oro", ORO)
    raw = server.handle(Dhcpv6Message(mtype, xid, **fields).build(), LL, now)
    return None if raw is None else Dhcpv6Message.parse(raw)


def addr_of(reply: Dhcpv6Message, i: int = 0) -> A:
    return reply.ia_na[i].addresses[0].address


def bind(server, now=0.0, duid=C1) -> A:
    adv = ask(server, M.SOLICIT, now, duid=duid)
    reply = ask(server, M.REQUEST, now, duid=duid, addresses=[addr_of(adv)])
    return addr_of(reply)


def test_solicit_gets_an_advertise_with_an_address_from_the_pool_and_requested_options():
    s = Dhcpv6Server(config(preference=200, sol_max_rt=600))
    adv = ask(s, M.SOLICIT, xid=0x123)
    assert adv.msg_type is M.ADVERTISE and adv.transaction_id == 0x123
    assert adv.client_id == C1 and adv.server_id == SERVER and adv.preference == 200
    ia = adv.ia_na[0]
    assert ia.iaid == 1 and (ia.t1, ia.t2) == (300, 480)
    a = ia.addresses[0]
    assert A("2001:db8:5::1000") <= a.address <= A("2001:db8:5::100f")
    assert (a.preferred, a.valid) == (600, 1000)
    assert adv.dns_servers == (A("2001:db8:5::1"),) and adv.domain_list == ("guests.test",)
    assert adv.sol_max_rt == 600
    assert s.leases()[0].state is LeaseState.ADVERTISED


def test_options_not_in_the_oro_are_not_sent():
    s = Dhcpv6Server(config())
    adv = ask(s, M.SOLICIT, oro=None)
    assert adv.dns_servers is None and adv.domain_list is None


def test_the_same_client_gets_the_same_address_every_time_even_after_expiry():
    s = Dhcpv6Server(config(pool_size=65536))
    first = bind(s)
    assert addr_of(ask(s, M.SOLICIT, 10.0)) == first
    s.poll(2000.0)
    assert s.leases() == []
    assert bind(s, 2000.0) == first  # hashed from (DUID, IAID), not from a cursor


def test_request_binds_and_a_second_request_keeps_the_address():
    s = Dhcpv6Server(config())
    address = bind(s)
    lease = s.leases()[0]
    assert lease.state is LeaseState.BOUND and lease.expires == 1000.0
    reply = ask(s, M.REQUEST, 50.0, addresses=[address])
    assert addr_of(reply) == address and s.leases()[0].expires == 1050.0


def test_rapid_commit_solicit_is_answered_with_a_committed_reply():
    s = Dhcpv6Server(config())
    reply = ask(s, M.SOLICIT, rapid_commit=True)
    assert reply.msg_type is M.REPLY and reply.rapid_commit
    assert s.leases()[0].state is LeaseState.BOUND
    s2 = Dhcpv6Server(config(rapid_commit=False))
    assert ask(s2, M.SOLICIT, rapid_commit=True).msg_type is M.ADVERTISE


def test_pool_exhaustion_advertises_only_no_addrs_avail():
    s = Dhcpv6Server(config(pool_size=2, exclude=()))
    bind(s, duid=C1)
    bind(s, duid=C2)
    adv = ask(s, M.SOLICIT, duid=duid_ll(bytes.fromhex("020000000013")))
    # RFC 8415 §18.3.9: only Client ID, Server ID and the NoAddrsAvail status.
    assert adv.status.code == StatusCode.NO_ADDRS_AVAIL and adv.ia_na == ()
    assert adv.dns_servers is None and adv.preference is None
    reply = ask(s, M.REQUEST, duid=duid_ll(bytes.fromhex("020000000013")))
    assert reply.ia_na[0].status.code == StatusCode.NO_ADDRS_AVAIL
    assert s.counters()["exhausted"] and s.counters()["pool_exhausted"] == 2


def test_excluded_and_reserved_addresses_are_never_assigned():
    cfg = config(pool_start=A("2001:db8:5::"), pool_end=A("2001:db8:5::1"),
                 exclude=(A("2001:db8:5::1"),))
    s = Dhcpv6Server(cfg)
    assert ask(s, M.SOLICIT).status.code == StatusCode.NO_ADDRS_AVAIL  # ::0 is anycast
    top = Dhcpv6Server(config(pool_start=A("2001:db8:5::fdff:ffff:ffff:ff80"), pool_size=128))
    assert ask(top, M.SOLICIT).status.code == StatusCode.NO_ADDRS_AVAIL  # RFC 2526


def test_ia_pd_is_answered_no_prefix_avail_next_to_the_address():
    s = Dhcpv6Server(config())
    adv = ask(s, M.SOLICIT, ia_pd=(IaPd(7, prefixes=(IaPrefix(N("::/56"), 0, 0),)),))
    assert adv.ia_na[0].addresses and adv.ia_pd[0].iaid == 7
    assert adv.ia_pd[0].status.code == StatusCode.NO_PREFIX_AVAIL


def test_one_message_cannot_take_more_than_max_ias_per_message_addresses():
    s = Dhcpv6Server(config(max_ias_per_message=2))
    reply = ask(s, M.REQUEST, iaids=(1, 2, 3))
    assert [bool(ia.addresses) for ia in reply.ia_na] == [True, True, False]
    assert reply.ia_na[2].status.code == StatusCode.NO_ADDRS_AVAIL
    assert len({addr_of(reply, 0), addr_of(reply, 1)}) == 2


def test_request_with_an_address_off_this_link_gets_not_on_link():
    s = Dhcpv6Server(config())
    reply = ask(s, M.REQUEST, addresses=[A("2001:db8:99::5")])
    assert reply.ia_na[0].status.code == StatusCode.NOT_ON_LINK and s.leases() == []


def test_request_hint_inside_the_pool_is_honoured_when_free():
    s = Dhcpv6Server(config())
    reply = ask(s, M.REQUEST, addresses=[A("2001:db8:5::100a")])
    assert addr_of(reply) == A("2001:db8:5::100a")


def test_renew_extends_the_binding_and_zeroes_addresses_that_are_not_the_clients():
    s = Dhcpv6Server(config())
    address = bind(s)
    reply = ask(s, M.RENEW, 300.0, addresses=[address, A("2001:db8:5::100e")])
    a = reply.ia_na[0].addresses
    assert (a[0].address, a[0].valid) == (address, 1000)
    assert (a[1].address, a[1].preferred, a[1].valid) == (A("2001:db8:5::100e"), 0, 0)
    assert s.leases()[0].expires == 1300.0


def test_renew_or_rebind_without_binding_gets_no_binding():
    s = Dhcpv6Server(config())
    for mtype in (M.RENEW, M.REBIND):
        reply = ask(s, mtype, addresses=[A("2001:db8:5::1003")])
        assert reply.ia_na[0].status.code == StatusCode.NO_BINDING


def test_rebind_for_an_address_off_link_returns_it_with_zero_lifetimes():
    s = Dhcpv6Server(config())
    reply = ask(s, M.REBIND, addresses=[A("2001:db8:99::5")])
    a = reply.ia_na[0].addresses[0]
    assert (a.address, a.preferred, a.valid) == (A("2001:db8:99::5"), 0, 0)


def test_rebind_extends_an_existing_binding():
    s = Dhcpv6Server(config())
    address = bind(s)
    reply = ask(s, M.REBIND, 700.0, addresses=[address])
    assert addr_of(reply) == address and s.leases()[0].expires == 1700.0


def test_release_frees_the_address_and_unknown_ias_get_no_binding():
    s = Dhcpv6Server(config())
    address = bind(s)
    reply = ask(s, M.RELEASE, 10.0, iaids=(1,), addresses=[address])
    assert reply.status.code == StatusCode.SUCCESS and reply.ia_na == ()
    assert s.leases() == []
    again = ask(s, M.RELEASE, 11.0, iaids=(1,), addresses=[address])
    assert again.status.code == StatusCode.SUCCESS
    assert again.ia_na[0].status.code == StatusCode.NO_BINDING


def test_declined_address_is_quarantined_then_freed():
    s = Dhcpv6Server(config(pool_size=2, exclude=(), decline_hold_time=600))
    address = bind(s)
    reply = ask(s, M.DECLINE, 5.0, addresses=[address])
    assert reply.status.code == StatusCode.SUCCESS
    assert [(l.address, l.state) for l in s.leases()] == [(address, LeaseState.DECLINED)]
    # Neither the decliner nor anyone else gets it while it is quarantined.
    assert bind(s, 6.0) != address
    assert ask(s, M.SOLICIT, 7.0, duid=C2).status.code == StatusCode.NO_ADDRS_AVAIL
    assert addr_of(ask(s, M.SOLICIT, 606.0, duid=C2)) == address


def test_confirm_says_success_on_link_not_on_link_off_it_and_nothing_without_addresses():
    s = Dhcpv6Server(config())
    ok = ask(s, M.CONFIRM, addresses=[A("2001:db8:5::77")])
    assert ok.msg_type is M.REPLY and ok.status.code == StatusCode.SUCCESS
    bad = ask(s, M.CONFIRM, addresses=[A("2001:db8:5::77"), A("2001:db8:6::1")])
    assert bad.status.code == StatusCode.NOT_ON_LINK
    assert ask(s, M.CONFIRM) is None  # §18.3.3: MUST NOT reply


def test_information_request_gets_dns_and_inf_max_rt_without_leases():
    s = Dhcpv6Server(config(inf_max_rt=7200))
    reply = ask(s, M.INFORMATION_REQUEST, client_id=None,
                oro=(Option.DNS_SERVERS, Option.DOMAIN_LIST, Option.INF_MAX_RT))
    assert reply.msg_type is M.REPLY and reply.client_id is None
    assert reply.dns_servers == (A("2001:db8:5::1"),) and reply.inf_max_rt == 7200
    assert reply.ia_na == () and s.leases() == []


@pytest.mark.parametrize("mtype,fields,why", [
    (M.SOLICIT, {"client_id": None}, "solicit_no_client_id"),
    (M.SOLICIT, {"server_id": SERVER}, "solicit_has_server_id"),
    (M.REQUEST, {"server_id": C2}, "request_other_server"),
    (M.REQUEST, {"server_id": None}, "request_other_server"),
    (M.RENEW, {"server_id": C2}, "renew_other_server"),
    (M.REBIND, {"server_id": SERVER}, "rebind_has_server_id"),
    (M.CONFIRM, {"server_id": SERVER}, "confirm_has_server_id"),
    (M.RELEASE, {"client_id": None}, "release_no_client_id"),
    (M.DECLINE, {"server_id": C2}, "decline_other_server"),
    (M.INFORMATION_REQUEST, {"server_id": C2}, "information_request_other_server"),
    (M.INFORMATION_REQUEST, {"ia_na": (IaNa(1),)}, "information_request_has_ia"),
    (M.ADVERTISE, {}, "unexpected_type"),
    (M.REPLY, {}, "unexpected_type"),
])
def test_messages_rfc8415_section16_says_to_discard_are_dropped_and_counted(mtype, fields, why):
    s = Dhcpv6Server(config())
    assert ask(s, mtype, **fields) is None
    assert s.counters()[f"dropped_{why}"] == 1 and s.leases() == []


def test_malformed_and_relayed_messages_are_counted_and_dropped():
    s = Dhcpv6Server(config())
    assert s.handle(b"\x01\x00", LL, 0.0) is None
    relay = bytes(d6.DHCP6_RelayForward(linkaddr="2001:db8:5::1", peeraddr="fe80::2")
                  / d6.DHCP6OptRelayMsg(message=d6.DHCP6_Solicit()))
    assert s.handle(relay, LL, 0.0) is None
    assert s.counters()["malformed"] == 1 and s.counters()["dropped_relay"] == 1


def test_a_scapy_built_solicit_gets_an_advertise_scapy_can_read():
    s = Dhcpv6Server(config())
    solicit = (d6.DHCP6_Solicit(trid=0x424242)
               / d6.DHCP6OptClientId(duid=d6.DUID_LLT(lladdr="02:00:00:00:00:33", timeval=5))
               / d6.DHCP6OptIA_NA(iaid=0xCAFE, T1=0, T2=0)
               / d6.DHCP6OptOptReq(reqopts=[23, 24])
               / d6.DHCP6OptElapsedTime())
    raw = s.handle(bytes(solicit), LL, 0.0)
    adv = d6.DHCP6_Advertise(raw)
    assert adv.trid == 0x424242 and adv[d6.DHCP6OptIA_NA].iaid == 0xCAFE
    assert adv[d6.DHCP6OptIAAddress].addr.startswith("2001:db8:5::")
    assert adv[d6.DHCP6OptDNSServers].dnsservers == ["2001:db8:5::1"]
    assert bytes(adv[d6.DHCP6OptClientId].duid) == bytes(solicit[d6.DHCP6OptClientId].duid)


def test_leases_are_keyed_by_duid_and_iaid():
    s = Dhcpv6Server(config())
    reply = ask(s, M.REQUEST, iaids=(1, 2))
    other = ask(s, M.REQUEST, duid=duid_uuid(bytes(range(16))), iaids=(1,))
    addresses = {addr_of(reply, 0), addr_of(reply, 1), addr_of(other)}
    assert len(addresses) == 3 and len(s.leases()) == 3


def test_lease_table_is_bounded():
    s = Dhcpv6Server(config(max_leases=2, pool_size=100))
    bind(s, duid=C1)
    bind(s, duid=C2)
    adv = ask(s, M.SOLICIT, duid=duid_ll(bytes.fromhex("020000000099")))
    assert adv.status.code == StatusCode.NO_ADDRS_AVAIL
    assert s.counters()["lease_table_full"] == 1
    assert s.tables()["leases"] == {"size": 2, "limit": 2, "drops": 1}


def test_bound_leases_expire_with_poll_and_advertise_holds_sooner():
    s = Dhcpv6Server(config(advertise_hold_time=60))
    bind(s, duid=C1)
    ask(s, M.SOLICIT, duid=C2)
    assert s.next_deadline() == 60.0
    s.poll(60.0)
    assert [l.duid for l in s.leases()] == [C1]
    assert s.next_deadline() == 1000.0
    s.poll(1000.0)
    assert s.leases() == [] and s.counters()["expired_bound"] == 1


def test_snapshot_survives_msgpack_and_restores_leases_with_remaining_time():
    s = Dhcpv6Server(config())
    address = bind(s)
    blob = msgpack.packb(s.snapshot(400.0))
    s2 = Dhcpv6Server(config())
    s2.restore(msgpack.unpackb(blob), 10.0)
    lease = s2.leases()[0]
    assert (lease.address, lease.state, lease.expires) == (address, LeaseState.BOUND, 610.0)
    assert addr_of(ask(s2, M.RENEW, 20.0, addresses=[address])) == address
    s3 = Dhcpv6Server(config(prefix=N("2001:db8:7::/64")))
    s3.restore(msgpack.unpackb(blob), 10.0)
    assert s3.leases() == [] and s3.counters()["restore_dropped"] == 1
    with pytest.raises(ValueError):
        s3.restore({"version": 2}, 0.0)


def test_config_rejects_a_pool_outside_the_prefix_and_bad_lifetimes():
    with pytest.raises(ValueError):
        config(pool_start=A("2001:db8:6::1"))
    with pytest.raises(ValueError):
        config(preferred_lifetime=2000, valid_lifetime=1000)
    with pytest.raises(ValueError):
        config(domain_list=("bad name",))


def test_rapid_commit_solicit_with_the_pool_empty_gets_an_uncommitted_advertise():
    s = Dhcpv6Server(config(pool_size=1, exclude=()))
    bind(s, duid=C1)
    adv = ask(s, M.SOLICIT, duid=C2, rapid_commit=True)
    assert adv.msg_type is M.ADVERTISE and not adv.rapid_commit
    assert adv.status.code == StatusCode.NO_ADDRS_AVAIL
