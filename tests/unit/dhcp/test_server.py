"""DHCP server core (RFC 2131 §4.3) driven with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

import msgpack
import pytest
from hypothesis import given, settings, strategies as st
from scapy.all import BOOTP, DHCP

from components.dhcpd.server import (BROADCAST_MAC, DhcpServer, LeaseState, ProbeAddress,
                                     Reply, ServerConfig)
from components.dhcpd.wire import (BOOTREPLY, FLAG_BROADCAST, ZERO, DhcpMessage, MessageType,
                                   Option)

SERVER = A("10.1.0.1")
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
MAC3 = bytes.fromhex("020000000003")


def config(**kw) -> ServerConfig:
    base = dict(server_ip=SERVER, subnet=N("10.1.0.0/24"), pool_start=A("10.1.0.100"),
                pool_end=A("10.1.0.109"), router=SERVER, dns=[A("10.1.0.53")],
                domain="guests.test", mtu=1500, lease_time=600, probe=False)
    base.update(kw)
    return ServerConfig(**base)


def request(mtype, mac=MAC1, *, xid=1, flags=FLAG_BROADCAST, ciaddr=ZERO, giaddr=ZERO,
            **opts) -> DhcpMessage:
    msg = DhcpMessage(xid=xid, chaddr=mac, flags=flags, ciaddr=ciaddr, giaddr=giaddr)
    msg.message_type = mtype
    for name, value in opts.items():
        setattr(msg, name, value)
    return msg


def only_reply(actions) -> Reply:
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    return actions[0]


def dora(server: DhcpServer, mac=MAC1, now=0.0, **opts) -> A:
    offer = only_reply(server.handle(request(MessageType.DISCOVER, mac, **opts), now)).msg
    assert offer.message_type is MessageType.OFFER
    ack = only_reply(server.handle(request(MessageType.REQUEST, mac, server_id=SERVER,
                                           requested_ip=offer.yiaddr, **opts), now)).msg
    assert ack.message_type is MessageType.ACK and ack.yiaddr == offer.yiaddr
    return ack.yiaddr


def test_full_dora_offers_probed_address_and_acks_with_table3_fields():
    server = DhcpServer(config(probe=True))
    discover = request(MessageType.DISCOVER, xid=0xABC, parameter_request_list=bytes(
        [1, 3, 6, 15, 28, 121]))
    (probe,) = server.handle(discover, 0.0)
    assert isinstance(probe, ProbeAddress) and probe.address == A("10.1.0.100")
    reply = only_reply(server.probe_result(probe.token, False, 0.1))
    offer = reply.msg
    assert reply.broadcast and reply.dst_ip == A("255.255.255.255")
    assert reply.dst_mac == BROADCAST_MAC and reply.dst_port == 68
    assert (offer.op, offer.xid, offer.chaddr) == (BOOTREPLY, 0xABC, MAC1)
    assert offer.yiaddr == A("10.1.0.100") and offer.server_id == SERVER
    assert offer.lease_time == 600 and offer.renewal_time == 300
    assert offer.rebinding_time == 525
    assert offer.subnet_mask == A("255.255.255.0") and offer.routers == (SERVER,)
    assert offer.dns_servers == (A("10.1.0.53"),) and offer.domain_name == "guests.test"
    assert offer.broadcast_address == A("10.1.0.255")
    # Table 3: MUST NOT in an OFFER.
    assert offer.requested_ip is None and offer.parameter_request_list is None
    assert server.leases()[0].state is LeaseState.OFFERED

    req = request(MessageType.REQUEST, xid=0xABC, server_id=SERVER,
                  requested_ip=offer.yiaddr, hostname="vm1")
    ack = only_reply(server.handle(req, 1.0)).msg
    assert ack.message_type is MessageType.ACK and ack.yiaddr == offer.yiaddr
    assert ack.lease_time == 600
    (lease,) = server.leases()
    assert lease.state is LeaseState.BOUND and lease.mac == MAC1
    assert lease.address == offer.yiaddr and lease.expires == 601.0
    assert lease.hostname == "vm1"
    # The parsed ACK also reads back in scapy.
    assert BOOTP(ack.build())[DHCP].options[0] == ("message-type", 5)


def test_reply_goes_unicast_to_yiaddr_and_chaddr_without_broadcast_bit():
    server = DhcpServer(config())
    reply = only_reply(server.handle(request(MessageType.DISCOVER, flags=0), 0.0))
    assert not reply.broadcast
    assert (reply.dst_ip, reply.dst_mac) == (reply.msg.yiaddr, MAC1)


def test_relayed_discover_is_answered_to_the_relay_on_port_67():
    server = DhcpServer(config())
    reply = only_reply(server.handle(
        request(MessageType.DISCOVER, giaddr=A("10.1.0.2")), 0.0, src_port=67))
    assert (reply.dst_ip, reply.dst_port, reply.dst_mac) == (A("10.1.0.2"), 67, None)
    assert reply.msg.giaddr == A("10.1.0.2")


def test_reservation_by_mac_is_offered_and_never_given_to_others():
    server = DhcpServer(config(reservations={"02:00:00:00:00:02": A("10.1.0.7")},
                               pool_start=A("10.1.0.7"), pool_end=A("10.1.0.8")))
    assert dora(server, MAC1) == A("10.1.0.8")  # .7 is reserved for MAC2
    assert dora(server, MAC2) == A("10.1.0.7")
    assert not server.handle(request(MessageType.DISCOVER, MAC3), 0.0)
    assert server.exhausted


def test_reservation_by_client_id_outside_the_pool():
    cid = b"\x00guest-a"
    server = DhcpServer(config(reservations={cid: A("10.1.0.20")}))
    assert dora(server, MAC1, client_id=cid) == A("10.1.0.20")
    ack = only_reply(server.handle(request(MessageType.REQUEST, MAC1, ciaddr=A("10.1.0.20"),
                                           client_id=cid, flags=0), 5.0))
    assert ack.msg.client_id == cid  # RFC 6842 echo
    assert ack.dst_ip == A("10.1.0.20")


def test_discover_from_leased_client_reuses_its_address_without_a_probe():
    server = DhcpServer(config())
    first = dora(server, MAC1)
    dora(server, MAC2)
    probing = DhcpServer(config(probe=True))
    probing.restore(server.snapshot(0.0), 0.0)
    reply = only_reply(probing.handle(request(MessageType.DISCOVER, MAC1, xid=9), 2.0))
    assert reply.msg.yiaddr == first and reply.msg.xid == 9
    assert probing.leases()[0].state is LeaseState.BOUND  # a rediscover keeps the binding


def test_released_client_gets_its_address_back():
    server = DhcpServer(config())
    first = dora(server, MAC1)
    assert not server.handle(request(MessageType.RELEASE, MAC1, ciaddr=first, flags=0,
                                     server_id=SERVER), 1.0)
    assert server.leases() == []
    assert dora(server, MAC2, now=2.0) != first
    assert dora(server, MAC1, now=3.0) == first


def test_release_for_someone_elses_address_is_ignored():
    server = DhcpServer(config())
    first = dora(server, MAC1)
    server.handle(request(MessageType.RELEASE, MAC2, ciaddr=first, server_id=SERVER), 1.0)
    assert [l.address for l in server.leases()] == [first]
    assert server.counters()["dropped_release_not_leased"] == 1


def test_decline_marks_address_unusable_until_hold_time_passes():
    server = DhcpServer(config(pool_end=A("10.1.0.101"), decline_hold_time=100.0))
    first = dora(server, MAC1)
    assert not server.handle(request(MessageType.DECLINE, MAC1, requested_ip=first,
                                     server_id=SERVER), 1.0)
    (lease,) = server.leases()
    assert lease.state is LeaseState.DECLINED and lease.mac == b""
    assert dora(server, MAC1, now=2.0) == A("10.1.0.101")
    assert not server.handle(request(MessageType.DISCOVER, MAC2), 3.0)  # .100 declined
    assert server.next_deadline() == 101.0
    assert dora(server, MAC2, now=101.5) == first


def test_decline_of_an_address_the_client_does_not_hold_is_ignored():
    server = DhcpServer(config())
    first = dora(server, MAC1)
    server.handle(request(MessageType.DECLINE, MAC2, requested_ip=first, server_id=SERVER), 1)
    assert server.leases()[0].state is LeaseState.BOUND


def test_inform_gets_ack_without_yiaddr_or_lease_unicast_to_ciaddr():
    server = DhcpServer(config())
    reply = only_reply(server.handle(request(MessageType.INFORM, ciaddr=A("10.1.0.33"),
                                             flags=0), 0.0))
    ack = reply.msg
    assert ack.message_type is MessageType.ACK and ack.yiaddr == ZERO
    assert ack.lease_time is None and ack.renewal_time is None
    assert ack.dns_servers == (A("10.1.0.53"),)
    assert reply.dst_ip == A("10.1.0.33") and not reply.broadcast
    assert server.leases() == []


def test_request_for_address_on_wrong_network_gets_broadcast_nak():
    server = DhcpServer(config())
    reply = only_reply(server.handle(request(MessageType.REQUEST, flags=0,
                                             requested_ip=A("192.168.9.9")), 0.0))
    assert reply.msg.message_type is MessageType.NAK
    assert reply.broadcast and reply.dst_ip == A("255.255.255.255")
    nak = reply.msg
    assert nak.yiaddr == ZERO and nak.server_id == SERVER and nak.lease_time is None


def test_selecting_request_for_an_address_not_offered_gets_nak():
    server = DhcpServer(config())
    only_reply(server.handle(request(MessageType.DISCOVER), 0.0))
    reply = only_reply(server.handle(request(MessageType.REQUEST, server_id=SERVER,
                                             requested_ip=A("10.1.0.105")), 0.5))
    assert reply.msg.message_type is MessageType.NAK


def test_init_reboot_for_another_clients_address_gets_nak_unknown_client_silence():
    server = DhcpServer(config())
    first = dora(server, MAC1)
    nak = only_reply(server.handle(request(MessageType.REQUEST, MAC2, requested_ip=first), 1))
    assert nak.msg.message_type is MessageType.NAK
    # RFC 2131 §4.3.2: no record of the client -> MUST remain silent.
    assert server.handle(request(MessageType.REQUEST, MAC3, requested_ip=A("10.1.0.104")),
                         1.0) == []
    assert server.counters()["unknown_client_silent"] == 1
    ack = only_reply(server.handle(request(MessageType.REQUEST, MAC1, requested_ip=first), 2))
    assert ack.msg.message_type is MessageType.ACK and ack.msg.yiaddr == first


def test_request_naming_another_server_withdraws_our_offer():
    server = DhcpServer(config())
    only_reply(server.handle(request(MessageType.DISCOVER), 0.0))
    assert server.handle(request(MessageType.REQUEST, server_id=A("10.1.0.250"),
                                 requested_ip=A("10.1.0.100")), 0.5) == []
    assert server.leases() == []


def test_renewing_request_extends_lease_and_replies_to_ciaddr():
    server = DhcpServer(config())
    address = dora(server, MAC1)
    reply = only_reply(server.handle(request(MessageType.REQUEST, ciaddr=address, flags=0),
                                     300.0, src_ip=address))
    assert reply.msg.message_type is MessageType.ACK and reply.msg.ciaddr == address
    assert (reply.dst_ip, reply.dst_mac, reply.broadcast) == (address, MAC1, False)
    assert server.leases()[0].expires == 900.0


def test_pool_exhaustion_is_silent_sets_flag_and_clears_when_freed():
    server = DhcpServer(config(pool_end=A("10.1.0.101")))
    a1, _ = dora(server, MAC1), dora(server, MAC2)
    assert server.handle(request(MessageType.DISCOVER, MAC3), 1.0) == []
    counters = server.counters()
    assert counters["pool_exhausted"] == 1 and counters["exhausted"] is True
    server.handle(request(MessageType.RELEASE, MAC1, ciaddr=a1, server_id=SERVER), 2.0)
    assert not server.exhausted
    assert dora(server, MAC3, now=3.0) == a1


def test_probe_conflict_marks_address_and_offers_the_next_one():
    server = DhcpServer(config(probe=True))
    (probe,) = server.handle(request(MessageType.DISCOVER), 0.0)
    (probe2,) = server.probe_result(probe.token, True, 0.5)
    assert isinstance(probe2, ProbeAddress) and probe2.address == A("10.1.0.101")
    offer = only_reply(server.probe_result(probe2.token, False, 0.6)).msg
    assert offer.yiaddr == A("10.1.0.101")
    states = {l.address: l.state for l in server.leases()}
    assert states == {A("10.1.0.100"): LeaseState.DECLINED,
                      A("10.1.0.101"): LeaseState.OFFERED}
    assert server.counters()["probe_conflicts"] == 1
    assert server.probe_result(probe.token, False, 0.7) == []  # stale token


def test_unanswered_probe_times_out_into_an_offer_and_retransmits_do_not_reprobe():
    server = DhcpServer(config(probe=True, probe_timeout=1.0))
    (probe,) = server.handle(request(MessageType.DISCOVER, xid=1), 0.0)
    assert server.handle(request(MessageType.DISCOVER, xid=2), 0.5) == []
    assert server.next_deadline() == 1.0
    reply = only_reply(server.expire(1.0))
    assert reply.msg.yiaddr == probe.address and reply.msg.xid == 2


def test_rate_limit_drops_a_flooding_client_but_serves_others():
    server = DhcpServer(config(per_client_rate=1.0, per_client_burst=3))
    answered = sum(bool(server.handle(request(MessageType.DISCOVER, MAC1, xid=i), 0.0))
                   for i in range(20))
    assert answered == 3
    assert server.counters()["dropped_rate_limited"] == 17
    assert server.handle(request(MessageType.DISCOVER, MAC2), 0.0)
    assert server.handle(request(MessageType.DISCOVER, MAC1, xid=99), 1.5)


def test_offers_and_leases_expire():
    server = DhcpServer(config(offer_hold_time=30.0, lease_time=600))
    only_reply(server.handle(request(MessageType.DISCOVER, MAC1), 0.0))
    assert server.next_deadline() == 30.0
    server.expire(30.0)
    assert server.leases() == []
    address = dora(server, MAC2, now=40.0)
    assert server.next_deadline() == 640.0
    server.expire(639.9)
    assert len(server.leases()) == 1
    server.expire(640.0)
    assert server.leases() == [] and server.counters()["expired_bound"] == 1
    assert server.next_deadline() is None
    assert dora(server, MAC2, now=700.0) == address  # remembered


def test_snapshot_restore_keeps_leases_and_never_hands_an_address_out_twice():
    server = DhcpServer(config(pool_end=A("10.1.0.102")))
    a1, a2 = dora(server, MAC1, now=10.0), dora(server, MAC2, now=10.0)
    only_reply(server.handle(request(MessageType.DISCOVER, MAC3), 10.0))  # offered
    snap = server.snapshot(20.0)
    snap = msgpack.unpackb(msgpack.packb(snap))  # plain msgpack data
    fresh = DhcpServer(config(pool_end=A("10.1.0.102")))
    fresh.restore(snap, 5000.0)  # a new monotonic epoch
    assert {l.address for l in fresh.leases()} == {a1, a2, A("10.1.0.102")}
    assert fresh.handle(request(MessageType.DISCOVER, bytes.fromhex("020000000009")),
                        5001.0) == []
    assert fresh.exhausted
    ack = only_reply(fresh.handle(request(MessageType.REQUEST, MAC1, ciaddr=a1, flags=0),
                                  5002.0))
    assert ack.msg.message_type is MessageType.ACK and ack.msg.yiaddr == a1
    bound = {l.mac: l.expires for l in fresh.leases()}
    assert bound[MAC2] == 5000.0 + 590.0


def test_restore_drops_entries_that_do_not_fit_the_config():
    server = DhcpServer(config())
    dora(server, MAC1)
    snap = server.snapshot(0.0)
    snap["leases"].append({"mac": "zz", "client_id": None, "address": "10.1.0.5",
                           "remaining": 1, "state": "bound"})
    snap["leases"].append(dict(snap["leases"][0], address="10.9.9.9", mac="020000000005"))
    other = DhcpServer(config())
    other.restore(snap, 0.0)
    assert len(other.leases()) == 1 and other.counters()["restore_dropped"] == 2


def test_lease_table_is_bounded():
    server = DhcpServer(config(max_leases=2))
    dora(server, MAC1)
    dora(server, MAC2)
    assert server.handle(request(MessageType.DISCOVER, MAC3), 0.0) == []
    assert server.counters()["lease_table_full"] == 1


def test_non_ethernet_bootreply_and_bootp_only_are_dropped():
    server = DhcpServer(config())
    assert server.handle(DhcpMessage(op=BOOTREPLY, chaddr=MAC1, options={53: b"\x01"}), 0) == []
    assert server.handle(DhcpMessage(chaddr=MAC1), 0.0) == []
    assert server.handle(DhcpMessage(chaddr=MAC1, htype=6, options={53: b"\x01"}), 0) == []
    c = server.counters()
    assert c["dropped_not_a_request"] == c["dropped_bootp_only"] == c["dropped_not_ethernet"] == 1


def test_offer_sheds_options_to_fit_the_minimum_message_size():
    routes = [(N(f"172.{16 + i}.0.0/16"), A("10.1.0.254")) for i in range(60)]
    server = DhcpServer(config(classless_routes=routes))
    offer = only_reply(server.handle(request(
        MessageType.DISCOVER, parameter_request_list=bytes([1, 3, 121])), 0.0)).msg
    assert len(offer.build()) <= 548 and Option.CLASSLESS_ROUTES not in offer.options
    assert offer.lease_time == 600 and offer.server_id == SERVER


def test_classless_routes_include_the_default_route_when_requested():
    server = DhcpServer(config(classless_routes=[(N("192.168.0.0/16"), A("10.1.0.254"))]))
    offer = only_reply(server.handle(request(
        MessageType.DISCOVER, parameter_request_list=bytes([121])), 0.0)).msg
    assert offer.classless_routes == ((N("192.168.0.0/16"), A("10.1.0.254")),
                                      (N("0.0.0.0/0"), SERVER))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=20),
       st.lists(st.tuples(st.sampled_from(list(MessageType)), st.binary(min_size=6, max_size=6),
                          st.integers(0, 2 ** 32 - 1), st.integers(0, 255)), max_size=20))
def test_server_fed_garbage_keeps_serving_a_good_client(blobs, messages):
    server = DhcpServer(config(probe=True, pool_end=A("10.1.0.250")))
    now = 0.0
    for blob in blobs:
        server.handle_datagram(bytes(240) + blob, now)
        server.handle_datagram(blob, now)
    for mtype, mac, addr, tail in messages:
        now += 0.01
        msg = request(mtype, mac, ciaddr=A(addr), requested_ip=A(addr ^ tail))
        for action in server.handle(msg, now):
            if isinstance(action, ProbeAddress):
                server.probe_result(action.token, bool(tail & 1), now)
    good = bytes.fromhex("02aabbccddee")
    actions = server.handle(request(MessageType.DISCOVER, good), 1000.0)
    if actions and isinstance(actions[-1], ProbeAddress):
        actions = server.probe_result(actions[-1].token, False, 1000.0)
    offer = [a for a in actions if isinstance(a, Reply)][-1].msg
    assert offer.yiaddr in server.config.subnet
    ack = only_reply(server.handle(request(MessageType.REQUEST, good, server_id=SERVER,
                                           requested_ip=offer.yiaddr), 1000.5)).msg
    assert ack.message_type is MessageType.ACK


def test_nak_to_a_renewing_client_is_broadcast_not_sent_to_ciaddr():
    server = DhcpServer(config())
    taken = dora(server, MAC1)
    reply = only_reply(server.handle(request(MessageType.REQUEST, MAC2, ciaddr=taken, flags=0),
                                     1.0, src_ip=taken))
    assert reply.msg.message_type is MessageType.NAK
    assert reply.broadcast and reply.dst_ip == A("255.255.255.255")  # RFC 2131 §4.1
    assert reply.msg.ciaddr == ZERO


def test_relayed_nak_goes_to_the_relay_with_broadcast_bit_set():
    server = DhcpServer(config())
    reply = only_reply(server.handle(request(MessageType.REQUEST, flags=0, giaddr=A("10.1.0.2"),
                                             requested_ip=A("10.7.0.1")), 0.0, src_port=67))
    assert reply.msg.message_type is MessageType.NAK
    assert (reply.dst_ip, reply.dst_port) == (A("10.1.0.2"), 67) and reply.msg.broadcast


def test_config_rejects_inconsistent_pools_and_reservations():
    for bad in (dict(pool_start=A("10.2.0.1")), dict(pool_start=A("10.1.0.120")),
                dict(reservations={MAC1: SERVER}), dict(reservations={MAC1: A("10.5.0.1")}),
                dict(lease_time=0)):
        with pytest.raises(ValueError):
            config(**bad)
