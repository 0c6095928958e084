"""DHCP client state machine (RFC 2131 §4.4) driven with a fake clock."""

from __future__ import annotations

import random
from ipaddress import IPv4Address as A, IPv4Interface, IPv4Network as N

import pytest

from components.dhcpd.client import (ANY_STATE, TRANSITIONS, CheckAddress, Configure,
                                     Deconfigure, DhcpClient, Lease, Send, State)
from components.dhcpd.wire import BOOTREPLY, BROADCAST, FLAG_BROADCAST, ZERO, DhcpMessage, \
    MessageType

MAC = bytes.fromhex("02000000c11e")
SERVER = A("192.168.7.1")
ADDR = A("192.168.7.50")


def client(**kw) -> DhcpClient:
    return DhcpClient(MAC, rng=random.Random(kw.pop("seed", 1)), hostname="up0", **kw)


def sends(actions) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def only_send(actions) -> Send:
    (send,) = sends(actions)
    return send


def reply(to: DhcpMessage, mtype, *, yiaddr=ADDR, server=SERVER, lease=1000, **opts):
    msg = DhcpMessage(op=BOOTREPLY, xid=to.xid, chaddr=MAC, yiaddr=yiaddr)
    msg.message_type = mtype
    msg.server_id = server
    if mtype is not MessageType.NAK:
        msg.lease_time = lease
        msg.subnet_mask = A("255.255.255.0")
        msg.routers = [SERVER]
        msg.dns_servers = [A("192.168.7.53")]
        msg.domain_name = "lan.test"
    for name, value in opts.items():
        setattr(msg, name, value)
    return msg


def bind(c: DhcpClient, now=0.0, lease=1000, **opts) -> Lease:
    discover = only_send(c.start(now)).msg
    request = only_send(c.receive(reply(discover, MessageType.OFFER, lease=lease), now)).msg
    (check,) = c.receive(reply(request, MessageType.ACK, lease=lease, **opts), now)
    assert check == CheckAddress(ADDR)
    (configure,) = c.address_checked(ok=True, now=now)
    assert isinstance(configure, Configure) and c.state is State.BOUND
    return configure.lease


def test_transition_table_names_every_state():
    assert set(TRANSITIONS) == set(State)
    for row in list(TRANSITIONS.values()) + [ANY_STATE]:
        assert set(row.values()) <= set(State)


def test_dora_sends_broadcast_discover_and_request_then_configures():
    c = client()
    discover = only_send(c.start(0.0))
    assert c.state is State.SELECTING
    assert discover.dst_ip == BROADCAST and discover.src_ip == ZERO and discover.dst_port == 67
    d = discover.msg
    assert d.message_type is MessageType.DISCOVER and d.chaddr == MAC
    assert d.flags == FLAG_BROADCAST and d.hostname == "up0"
    assert 121 in d.parameter_request_list and d.server_id is None
    request = only_send(c.receive(reply(d, MessageType.OFFER), 0.3))
    assert c.state is State.REQUESTING
    r = request.msg
    assert r.message_type is MessageType.REQUEST and r.xid == d.xid  # §4.4.1 same xid
    assert r.server_id == SERVER and r.requested_ip == ADDR and r.ciaddr == ZERO
    assert request.dst_ip == BROADCAST
    (check,) = c.receive(reply(r, MessageType.ACK, renewal_time=400, rebinding_time=800), 0.5)
    assert check == CheckAddress(ADDR) and c.state is State.CHECKING
    (configure,) = c.address_checked(ok=True, now=0.6)
    lease = configure.lease
    assert c.state is State.BOUND and c.lease == lease
    assert lease.interface == IPv4Interface("192.168.7.50/24")
    assert lease.routers == (SERVER,) and lease.dns == (A("192.168.7.53"),)
    assert lease.domain == "lan.test" and lease.server_id == SERVER
    # §4.4.1: times count from when the REQUEST was sent.
    assert (lease.t1_at, lease.t2_at, lease.expires_at) == (400.3, 800.3, 1000.3)
    assert lease.routes == ((N("0.0.0.0/0"), SERVER),)
    assert c.next_deadline() == 400.3


def test_check_timeout_without_answer_means_address_is_free():
    c = client(check_timeout=1.5)
    discover = only_send(c.start(0.0)).msg
    request = only_send(c.receive(reply(discover, MessageType.OFFER), 0.0)).msg
    c.receive(reply(request, MessageType.ACK), 0.0)
    assert c.next_deadline() == 1.5 and c.poll(1.4) == []
    (configure,) = c.poll(1.5)
    assert isinstance(configure, Configure) and c.state is State.BOUND


def test_address_in_use_sends_decline_and_waits_ten_seconds():
    c = client()
    discover = only_send(c.start(0.0)).msg
    request = only_send(c.receive(reply(discover, MessageType.OFFER), 0.0)).msg
    c.receive(reply(request, MessageType.ACK), 0.0)
    decline = only_send(c.address_checked(ok=False, now=1.0))
    assert decline.msg.message_type is MessageType.DECLINE
    assert decline.msg.requested_ip == ADDR and decline.msg.server_id == SERVER
    assert decline.msg.ciaddr == ZERO and decline.dst_ip == BROADCAST
    assert c.state is State.INIT and c.lease is None
    assert c.poll(10.9) == []
    assert only_send(c.poll(11.0)).msg.message_type is MessageType.DISCOVER


def test_discover_retransmission_follows_randomised_exponential_backoff():
    for seed in range(20):
        c = client(seed=seed)
        now = 0.0
        only_send(c.start(now))
        for base in (4, 8, 16, 32, 64, 64, 64):
            deadline = c.next_deadline()
            # RFC 2131 §4.1: 4 s, 8 s, ... 64 s, each randomised by -1..+1 s.
            assert base - 1 <= deadline - now <= base + 1
            assert c.poll(deadline - 0.001) == []
            now = deadline
            again = only_send(c.poll(now))
            assert again.msg.message_type is MessageType.DISCOVER
            assert again.msg.secs == int(now)
        assert c.state is State.SELECTING


def test_request_retransmits_then_gives_up_back_to_discover():
    c = client()
    discover = only_send(c.start(0.0)).msg
    only_send(c.receive(reply(discover, MessageType.OFFER), 0.0))
    requests = 1
    for _ in range(10):
        out = sends(c.poll(c.next_deadline()))
        if out[0].msg.message_type is MessageType.DISCOVER:
            break
        requests += 1
    assert requests == 4 and c.state is State.SELECTING


def test_t1_renews_unicast_to_server_and_ack_extends_lease():
    c = client()
    lease = bind(c)
    assert c.poll(499.0) == []
    renew = only_send(c.poll(500.0))
    assert c.state is State.RENEWING
    assert renew.dst_ip == SERVER and renew.src_ip == ADDR
    m = renew.msg
    assert m.ciaddr == ADDR and m.server_id is None and m.requested_ip is None
    assert m.flags == 0
    (configure,) = c.receive(reply(m, MessageType.ACK), 501.0)
    assert c.state is State.BOUND and configure.lease.expires_at == 1500.0
    assert lease.expires_at == 1000.0


def test_renew_retransmits_at_half_remaining_time_but_not_under_60s():
    c = client()
    bind(c, lease=10000)  # T1 5000, T2 8750
    c.poll(5000.0)
    assert c.next_deadline() == 5000.0 + (8750 - 5000) / 2
    again = only_send(c.poll(6875.0))
    assert again.msg.ciaddr == ADDR and c.state is State.RENEWING
    c.poll(8690.0)
    assert c.next_deadline() == 8750.0  # T2 comes before another 60 s


def test_t2_rebinds_with_broadcast_and_any_server_may_answer():
    c = client()
    bind(c)
    c.poll(500.0)
    rebind = only_send(c.poll(875.0))
    assert c.state is State.REBINDING and rebind.dst_ip == BROADCAST
    assert rebind.src_ip == ADDR and rebind.msg.ciaddr == ADDR
    (configure,) = c.receive(reply(rebind.msg, MessageType.ACK, server=A("192.168.7.2")), 876)
    assert c.state is State.BOUND and configure.lease.server_id == A("192.168.7.2")


def test_lease_expiry_deconfigures_and_restarts_discovery():
    c = client()
    lease = bind(c)
    c.poll(500.0)
    c.poll(875.0)
    actions = c.poll(1000.0)
    assert actions[0] == Deconfigure(lease, "lease expired")
    assert only_send(actions).msg.message_type is MessageType.DISCOVER
    assert c.state is State.SELECTING and c.lease is None


def test_nak_while_renewing_deconfigures_and_goes_to_init():
    c = client()
    lease = bind(c)
    renew = only_send(c.poll(500.0)).msg
    actions = c.receive(reply(renew, MessageType.NAK, yiaddr=ZERO), 501.0)
    assert actions == [Deconfigure(lease, "NAK")]
    assert c.state is State.INIT and c.lease is None
    assert only_send(c.poll(502.0)).msg.message_type is MessageType.DISCOVER


def test_nak_while_requesting_goes_to_init():
    c = client()
    discover = only_send(c.start(0.0)).msg
    request = only_send(c.receive(reply(discover, MessageType.OFFER), 0.0)).msg
    assert c.receive(reply(request, MessageType.NAK, yiaddr=ZERO), 0.1) == []
    assert c.state is State.INIT


def test_init_reboot_with_previous_lease_requests_same_address():
    old = bind(client())
    c = client(seed=5)
    request = only_send(c.start(100.0, previous_lease=old))
    assert c.state is State.REBOOTING
    m = request.msg
    assert m.requested_ip == ADDR and m.server_id is None and m.ciaddr == ZERO
    assert request.dst_ip == BROADCAST
    (configure,) = c.receive(reply(m, MessageType.ACK), 100.2)
    assert c.state is State.BOUND and configure.lease.address == ADDR
    assert configure.lease.expires_at == 1100.0


def test_init_reboot_with_expired_lease_starts_discovery():
    old = bind(client())
    c = client()
    assert only_send(c.start(1000.0, old)).msg.message_type is MessageType.DISCOVER


def test_reboot_without_answer_falls_back_to_discovery():
    old = bind(client())
    c = client()
    c.start(10.0, old)
    for _ in range(4):
        out = sends(c.poll(c.next_deadline()))
    assert out[0].msg.message_type is MessageType.DISCOVER and c.state is State.SELECTING


def test_release_unicasts_release_and_deconfigures():
    c = client()
    lease = bind(c)
    actions = c.release(10.0)
    release = only_send(actions)
    assert release.dst_ip == SERVER and release.src_ip == ADDR
    assert release.msg.message_type is MessageType.RELEASE
    assert release.msg.ciaddr == ADDR and release.msg.server_id == SERVER
    assert Deconfigure(lease, "released") in actions
    assert c.state is State.STOPPED and c.next_deadline() is None


def test_link_down_then_up_verifies_lease_with_init_reboot():
    c = client()
    bind(c)
    assert c.link_changed(False, 10.0) == []
    assert c.state is State.STOPPED and c.lease is not None
    request = only_send(c.link_changed(True, 20.0))
    assert c.state is State.REBOOTING and request.msg.requested_ip == ADDR
    # The binding never saw a Deconfigure; a NAK now removes the address.
    actions = c.receive(reply(request.msg, MessageType.NAK, yiaddr=ZERO), 20.1)
    assert [type(a) for a in actions] == [Deconfigure]


def test_lease_kept_over_link_down_still_expires():
    c = client()
    lease = bind(c)
    c.link_changed(False, 10.0)
    assert c.next_deadline() == 1000.0
    assert c.poll(1000.0) == [Deconfigure(lease, "lease expired")]
    assert c.state is State.STOPPED


def test_messages_for_other_transactions_are_ignored():
    c = client()
    discover = only_send(c.start(0.0)).msg
    stray = reply(discover, MessageType.OFFER)
    stray.xid ^= 1
    assert c.receive(stray, 0.1) == []
    no_server = reply(discover, MessageType.OFFER, server=None)
    assert c.receive(no_server, 0.1) == [] and c.state is State.SELECTING


def test_classless_routes_override_router_option():
    c = client()
    routes = ((N("10.0.0.0/8"), A("192.168.7.254")), (N("0.0.0.0/0"), SERVER))
    lease = bind(c, classless_routes=list(routes))
    assert lease.routes == routes  # RFC 3442: option 3 ignored


def test_lease_round_trips_through_a_plain_dict():
    lease = bind(client(), classless_routes=[(N("10.0.0.0/8"), A("192.168.7.254"))])
    assert Lease.from_dict(lease.to_dict()) == lease


@pytest.mark.parametrize("t1,t2,expect", [(None, None, (500, 875)), (900, 800, (500, 800)),
                                          (100, 2000, (100, 875))])
def test_t1_t2_fall_back_to_rfc_defaults_when_missing_or_inconsistent(t1, t2, expect):
    lease = bind(client(), renewal_time=t1, rebinding_time=t2)
    assert (lease.t1, lease.t2) == expect
