"""The DHCPv6 client state machine against hand-made server messages and a fake clock."""

from __future__ import annotations

import math
import random
from ipaddress import IPv6Address as A, IPv6Interface as I, IPv6Network as N

import msgpack
import pytest

from components.dhcpd.dhcpv6_client import (ANY_STATE, DEC_MAX_RC, REL_MAX_RC, REQ_MAX_RC,
                                            TRANSITIONS, AddressBound, AddressLost,
                                            Dhcpv6Client, DnsServers, PrefixDelegated,
                                            PrefixLost, Send, State, split_delegated)
from components.dhcpd.dhcpv6_wire import (ALL_DHCP_RELAY_AGENTS_AND_SERVERS, INFINITY,
                                          SERVER_PORT, Dhcpv6Message, IaAddress, IaNa, IaPd,
                                          IaPrefix, MessageType, Option, Status, StatusCode,
                                          duid_ll)

CLIENT = duid_ll(bytes.fromhex("020000000002"))
SRV1 = duid_ll(bytes.fromhex("020000000101"))
SRV2 = duid_ll(bytes.fromhex("020000000102"))
ROUTER = A("fe80::1")
ADDR = A("2001:db8:1::10")
PREFIX = N("2001:db8:ff00::/56")


def client(**kw) -> Dhcpv6Client:
    kw.setdefault("rng", random.Random(5))
    kw.setdefault("start_delay", 0.0)
    return Dhcpv6Client(CLIENT, **kw)


def sent(actions) -> list[Dhcpv6Message]:
    return [Dhcpv6Message.parse(a.payload) for a in actions if isinstance(a, Send)]


def only(actions) -> Dhcpv6Message:
    msgs = sent(actions)
    assert len(msgs) == 1, actions
    return msgs[0]


def answer(request: Dhcpv6Message, mtype=MessageType.REPLY, *, server=SRV1,
           address=ADDR, prefix: N | None = None, t1=300, t2=480, preferred=600, valid=900,
           **fields) -> bytes:
    """A server's answer to `request`: IA_NA with `address` (None: no IA), IA_PD with
    `prefix` if given; extra message fields as keyword arguments."""
    ia_na = () if address is None else (IaNa(1, t1, t2, (IaAddress(address, preferred, valid),)),)
    ia_pd = () if prefix is None else (IaPd(1, t1, t2, (IaPrefix(prefix, preferred, valid),)),)
    fields.setdefault("ia_na", ia_na)
    fields.setdefault("ia_pd", ia_pd)
    return Dhcpv6Message(mtype, request.transaction_id, client_id=request.client_id,
                         server_id=server, **fields).build()


def bound(c: Dhcpv6Client, now: float = 0.0, **kw) -> tuple[list, float]:
    """Start `c` and take it to BOUND through Solicit/Advertise(255)/Request/Reply."""
    solicit = only(c.start(now))
    actions = c.feed(answer(solicit, MessageType.ADVERTISE, preference=255, **kw), ROUTER, now)
    request = only(actions)
    actions = c.feed(answer(request, **kw), ROUTER, now)
    assert c.state is State.BOUND
    return actions, now


def run_until(c: Dhcpv6Client, until: float) -> list[tuple[float, list]]:
    """Fire every deadline up to `until`; returns (time, actions) per step."""
    out = []
    for _ in range(10000):
        d = c.next_deadline()
        if d is None or d > until:
            return out
        out.append((d, c.poll(d)))
    raise AssertionError("timer storm")


def test_transition_table_names_every_state_and_every_state_is_reachable():
    assert set(TRANSITIONS) == set(State)
    targets = {s for row in TRANSITIONS.values() for s in row.values()} | set(ANY_STATE.values())
    assert targets == set(State)


def test_first_solicit_waits_up_to_sol_max_delay_then_goes_to_all_servers_multicast():
    c = client(start_delay=1.0, request_prefix=56)
    assert c.start(0.0) == []
    delay = c.next_deadline()
    assert 0.0 <= delay <= 1.0
    actions = c.poll(delay)
    send = actions[0]
    assert send.dst == ALL_DHCP_RELAY_AGENTS_AND_SERVERS == A("ff02::1:2")
    assert send.dst_port == SERVER_PORT == 547
    msg = only(actions)
    assert msg.msg_type is MessageType.SOLICIT and msg.client_id == CLIENT
    assert msg.server_id is None and msg.elapsed_time == 0
    assert msg.ia_na == (IaNa(1),)
    # RFC 8415 §18.2.1: the prefix-length hint is ::/56 in an IAPREFIX.
    assert msg.ia_pd == (IaPd(1, 0, 0, (IaPrefix(N("::/56"), 0, 0),)),)
    assert Option.SOL_MAX_RT in msg.oro and Option.DNS_SERVERS in msg.oro


@pytest.mark.parametrize("seed", range(5))
def test_solicit_retransmission_follows_rfc8415_section15(seed):
    c = client(rng=random.Random(seed))
    times = [0.0]
    c.start(0.0)
    while times[-1] < 40000:
        now = c.next_deadline()
        msg = only(c.poll(now))
        assert msg.msg_type is MessageType.SOLICIT
        times.append(now)
    rts = [b - a for a, b in zip(times, times[1:])]
    # First RT: IRT + RAND*IRT with RAND strictly positive for Solicit.
    assert 1.0 < rts[0] <= 1.1
    for prev, rt in zip(rts, rts[1:]):
        if rt < 0.9 * 3600:
            assert 1.9 * prev - 1e-9 <= rt <= 2.1 * prev + 1e-9
        else:  # capped at SOL_MAX_RT 3600 s, randomised again
            assert 0.9 * 3600 <= rt <= 1.1 * 3600
    assert max(rts) > 0.9 * 3600


def test_elapsed_time_counts_hundredths_since_the_first_transmission():
    c = client()
    first = only(c.start(10.0))
    assert first.elapsed_time == 0
    t = c.next_deadline()
    second = only(c.poll(t))
    assert second.transaction_id == first.transaction_id  # same exchange, same xid
    assert second.elapsed_time == round((t - 10.0) * 100)
    while c.next_deadline() < 10.0 + 700:
        c.poll(c.next_deadline())
    late = only(c.poll(c.next_deadline()))
    assert late.elapsed_time == 0xFFFF  # more than 655.35 s


def test_sol_max_rt_from_a_server_caps_the_solicit_backoff_and_bad_values_are_ignored():
    c = client()
    solicit = only(c.start(0.0))
    # An Advertise without addresses is ignored (§18.2.9) but its SOL_MAX_RT is taken.
    assert c.feed(answer(solicit, MessageType.ADVERTISE, address=None, sol_max_rt=100,
                         status=Status(StatusCode.NO_ADDRS_AVAIL)), ROUTER, 0.5) == []
    assert c.sol_max_rt == 100
    c.feed(answer(solicit, MessageType.ADVERTISE, address=None, sol_max_rt=30), ROUTER, 0.6)
    assert c.sol_max_rt == 100  # §21.24: below 60 is ignored
    last, rts = 0.0, []
    for _ in range(12):
        now = c.next_deadline()
        only(c.poll(now))
        rts.append(now - last)
        last = now
    assert max(rts) <= 110.0 and rts[-1] >= 90.0


def test_advertise_with_preference_255_is_requested_at_once():
    c = client()
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0.2))
    assert request.msg_type is MessageType.REQUEST and request.server_id == SRV1
    assert request.ia_na == (IaNa(1, 0, 0, (IaAddress(ADDR, 0, 0),)),)
    assert c.state is State.REQUESTING


def test_highest_preference_wins_once_the_first_rt_has_passed():
    c = client()
    solicit = only(c.start(0.0))
    assert c.feed(answer(solicit, MessageType.ADVERTISE, server=SRV1, preference=10),
                  ROUTER, 0.1) == []
    assert c.feed(answer(solicit, MessageType.ADVERTISE, server=SRV2, preference=50,
                         address=A("2001:db8:2::5")), ROUTER, 0.2) == []
    first_rt = c.next_deadline()
    assert 1.0 < first_rt <= 1.1
    request = only(c.poll(first_rt))
    assert request.msg_type is MessageType.REQUEST and request.server_id == SRV2
    assert request.ia_na[0].addresses[0].address == A("2001:db8:2::5")


def test_server_offering_address_and_prefix_beats_equal_preference_with_address_only():
    c = client(request_prefix=56)
    solicit = only(c.start(0.0))
    c.feed(answer(solicit, MessageType.ADVERTISE, server=SRV1), ROUTER, 0.1)
    c.feed(answer(solicit, MessageType.ADVERTISE, server=SRV2, prefix=PREFIX), ROUTER, 0.2)
    request = only(c.poll(c.next_deadline()))
    assert request.server_id == SRV2
    assert request.ia_pd == (IaPd(1, 0, 0, (IaPrefix(PREFIX, 0, 0),)),)


def test_first_advertise_after_the_first_rt_is_taken_without_waiting():
    c = client()
    solicit = only(c.start(0.0))
    second = only(c.poll(c.next_deadline()))  # retransmitted: the first RT is over
    assert second.transaction_id == solicit.transaction_id
    request = only(c.feed(answer(second, MessageType.ADVERTISE, preference=0), ROUTER, 1.5))
    assert request.msg_type is MessageType.REQUEST


def test_request_retransmits_req_max_rc_times_with_rt_capped_at_30s_then_solicits():
    c = client()
    solicit = only(c.start(0.0))
    first = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0.0))
    times, xids = [0.0], {first.transaction_id}
    while True:
        now = c.next_deadline()
        msg = only(c.poll(now))
        if msg.msg_type is MessageType.SOLICIT:
            break
        xids.add(msg.transaction_id)
        times.append(now)
    assert len(times) == REQ_MAX_RC == 10 and len(xids) == 1
    rts = [b - a for a, b in zip(times, times[1:])]
    assert 0.9 <= rts[0] <= 2 * 1.1 * 1.1
    assert all(rt <= 33.0 for rt in rts) and rts[-1] >= 27.0
    assert c.state is State.SOLICITING and msg.transaction_id not in xids


def test_reply_binds_address_and_prefix_and_reports_dns():
    c = client(request_prefix=56)
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255,
                                 prefix=PREFIX), ROUTER, 1.0))
    actions = c.feed(answer(request, prefix=PREFIX, dns_servers=(A("2001:db8::53"),),
                            domain_list=("example.test",)), ROUTER, 2.0)
    assert actions == [AddressBound(I("2001:db8:1::10/128"), 602.0, 902.0),
                       PrefixDelegated(PREFIX, 602.0, 902.0),
                       DnsServers((A("2001:db8::53"),), ("example.test",))]
    assert c.state is State.BOUND and c.server_id == SRV1
    assert c.next_deadline() == 302.0  # T1


def test_renew_at_t1_names_the_server_and_a_reply_extends_the_lifetimes():
    c = client()
    bound(c)
    renew = only(c.poll(300.0))
    assert renew.msg_type is MessageType.RENEW and renew.server_id == SRV1
    assert renew.ia_na == (IaNa(1, 0, 0, (IaAddress(ADDR, 0, 0),)),)
    assert c.state is State.RENEWING
    # §18.2.4: REN_TIMEOUT 10 s, randomised by ±10 %.
    assert 309.0 <= c.next_deadline() <= 311.0
    actions = c.feed(answer(renew), ROUTER, 305.0)
    assert actions == [AddressBound(I("2001:db8:1::10/128"), 905.0, 1205.0)]
    assert c.state is State.BOUND and c.next_deadline() == 605.0


def test_renew_retransmits_until_t2_then_rebinds_to_any_server():
    c = client()
    bound(c)
    c.poll(300.0)
    steps = run_until(c, 480.0)
    renews = [only(a) for t, a in steps if t < 480.0]
    assert renews and all(m.msg_type is MessageType.RENEW for m in renews)
    rebind = only(steps[-1][1])
    assert steps[-1][0] == 480.0 and c.state is State.REBINDING
    assert rebind.msg_type is MessageType.REBIND and rebind.server_id is None
    actions = c.feed(answer(rebind, server=SRV2), ROUTER, 481.0)
    assert c.state is State.BOUND and c.server_id == SRV2
    assert actions == [AddressBound(I("2001:db8:1::10/128"), 1081.0, 1381.0)]


def test_without_any_answer_the_lease_expires_at_valid_lifetime_and_discovery_restarts():
    c = client()
    bound(c)
    steps = run_until(c, 900.0)
    rebinds = [m for t, a in steps for m in sent(a) if m.msg_type is MessageType.REBIND]
    assert rebinds and all(t < 900.0 for t, a in steps if any(
        m.msg_type is MessageType.REBIND for m in sent(a)))
    last_t, last = steps[-1]
    assert last_t == 900.0
    assert last[0] == AddressLost(ADDR, "valid lifetime expired")
    assert only(last).msg_type is MessageType.SOLICIT
    assert c.state is State.SOLICITING and c.addresses == {}


def test_zero_t1_t2_mean_half_and_four_fifths_of_the_shortest_preferred_lifetime():
    c = client()
    bound(c, t1=0, t2=0, preferred=1000, valid=2000)
    assert c.next_deadline() == 500.0
    assert only(c.poll(500.0)).msg_type is MessageType.RENEW
    assert run_until(c, 800.0)[-1][0] == 800.0 and c.state is State.REBINDING


def test_infinite_lifetimes_never_renew_nor_expire():
    c = client()
    actions, _ = bound(c, t1=INFINITY, t2=INFINITY, preferred=INFINITY, valid=INFINITY)
    assert actions[0] == AddressBound(I("2001:db8:1::10/128"), math.inf, math.inf)
    assert c.next_deadline() is None


@pytest.mark.parametrize("bad,counter", [({"t1": 500, "t2": 400}, "ia_discarded"),
                                         ({"preferred": 1000, "valid": 900}, "lease_discarded")])
def test_ia_with_t1_above_t2_and_address_with_preferred_above_valid_are_discarded(bad, counter):
    c = client()
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0))
    assert sent(c.feed(answer(request, **bad), ROUTER, 1.0)) == []
    # §21.4, §21.6: nothing usable is left in the Reply: discovery again, after a pause.
    assert c.state is State.SOLICITING and c.addresses == {}
    assert c.counters()[counter] == 1
    assert only(c.poll(c.next_deadline())).msg_type is MessageType.SOLICIT


def test_valid_lifetime_zero_in_a_reply_withdraws_the_address():
    c = client()
    bound(c)
    renew = only(c.poll(300.0))
    other = A("2001:db8:1::99")
    reply = Dhcpv6Message(MessageType.REPLY, renew.transaction_id, client_id=CLIENT,
                          server_id=SRV1, ia_na=(IaNa(1, 300, 480, (
                              IaAddress(ADDR, 0, 0), IaAddress(other, 600, 900))),)).build()
    actions = c.feed(reply, ROUTER, 301.0)
    assert AddressLost(ADDR, "valid lifetime 0") in actions
    assert AddressBound(I(f"{other}/128"), 901.0, 1201.0) in actions
    assert set(c.addresses) == {other}


def test_no_binding_in_a_renew_reply_makes_the_client_request_again():
    c = client()
    bound(c)
    renew = only(c.poll(300.0))
    nobind = answer(renew, ia_na=(IaNa(1, status=Status(StatusCode.NO_BINDING, "")),))
    request = only(c.feed(nobind, ROUTER, 301.0))
    assert request.msg_type is MessageType.REQUEST and request.server_id == SRV1
    assert request.ia_na == (IaNa(1, 0, 0, (IaAddress(ADDR, 0, 0),)),)
    assert c.state is State.REQUESTING and ADDR in c.addresses  # kept until it expires
    c.feed(answer(request), ROUTER, 302.0)
    assert c.state is State.BOUND


def test_replies_of_other_transactions_clients_or_without_server_id_are_ignored():
    c = client()
    solicit = only(c.start(0.0))
    adv = Dhcpv6Message.parse(answer(solicit, MessageType.ADVERTISE, preference=255))
    for bad in (Dhcpv6Message(**{**_fields(adv), "transaction_id": adv.transaction_id ^ 1}),
                Dhcpv6Message(**{**_fields(adv), "client_id": SRV2}),
                Dhcpv6Message(**{**_fields(adv), "client_id": None}),
                Dhcpv6Message(**{**_fields(adv), "server_id": None})):
        assert c.feed(bad.build(), ROUTER, 0.1) == []
    assert c.feed(b"\x02garbage", ROUTER, 0.1) == []
    counters = c.counters()
    assert counters["ignored_not_ours"] == 1 and counters["ignored_bad_identifiers"] == 3
    assert counters["malformed"] == 1 and c.state is State.SOLICITING


def _fields(msg: Dhcpv6Message) -> dict:
    return {name: getattr(msg, name) for name in Dhcpv6Message.__slots__}


def test_unspec_fail_reply_is_ignored_and_the_request_is_retransmitted():
    c = client()
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0))
    assert c.feed(answer(request, address=None, status=Status(StatusCode.UNSPEC_FAIL)),
                  ROUTER, 0.5) == []
    assert c.state is State.REQUESTING
    assert only(c.poll(c.next_deadline())).transaction_id == request.transaction_id


def test_not_on_link_reply_to_request_restarts_discovery():
    c = client()
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0))
    again = only(c.feed(answer(request, address=None,
                               status=Status(StatusCode.NOT_ON_LINK)), ROUTER, 0.5))
    assert again.msg_type is MessageType.SOLICIT and c.state is State.SOLICITING
    assert again.transaction_id != solicit.transaction_id


def test_rapid_commit_reply_to_solicit_binds_directly():
    c = client(rapid_commit=True)
    solicit = only(c.start(0.0))
    assert solicit.rapid_commit
    actions = c.feed(answer(solicit, rapid_commit=True), ROUTER, 0.1)
    assert actions[0] == AddressBound(I("2001:db8:1::10/128"), 600.1, 900.1)
    assert c.state is State.BOUND
    # A Reply without the Rapid Commit option to a Solicit is not a commitment.
    c2 = client(rapid_commit=True)
    s2 = only(c2.start(0.0))
    assert c2.feed(answer(s2), ROUTER, 0.1) == [] and c2.state is State.SOLICITING


def test_dad_failure_declines_the_address_and_solicits_after_the_reply():
    c = client()
    bound(c)
    actions = c.dad_failed(ADDR, 5.0)
    assert actions[0] == AddressLost(ADDR, "duplicate address")
    decline = only(actions)
    assert decline.msg_type is MessageType.DECLINE and decline.server_id == SRV1
    assert decline.ia_na == (IaNa(1, 0, 0, (IaAddress(ADDR, 0, 0),)),)
    assert decline.oro is None and c.state is State.DECLINING
    solicit = only(c.feed(answer(decline, address=None, status=Status(StatusCode.SUCCESS)),
                          ROUTER, 5.5))
    assert solicit.msg_type is MessageType.SOLICIT and c.state is State.SOLICITING
    assert c.dad_failed(ADDR, 6.0) == []  # not ours any more


def test_decline_without_answer_is_sent_dec_max_rc_times_then_discovery_restarts():
    c = client()
    bound(c)
    decline = only(c.dad_failed(ADDR, 5.0))
    times = [5.0]
    while True:
        now = c.next_deadline()
        msg = only(c.poll(now))
        if msg.msg_type is not MessageType.DECLINE:
            break
        assert msg.transaction_id == decline.transaction_id
        times.append(now)
    assert len(times) == DEC_MAX_RC == 4
    assert 0.9 <= times[1] - times[0] <= 1.1  # DEC_TIMEOUT 1 s
    assert msg.msg_type is MessageType.SOLICIT


def test_stop_stops_using_leases_before_it_sends_release_and_retransmits_it():
    c = client(request_prefix=56)
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255,
                                 prefix=PREFIX), ROUTER, 0.0))
    c.feed(answer(request, prefix=PREFIX, dns_servers=(A("2001:db8::53"),)), ROUTER, 0.0)
    actions = c.stop(10.0)
    assert actions[:3] == [AddressLost(ADDR, "released"), PrefixLost(PREFIX, "released"),
                           DnsServers(())]
    release = only(actions)
    assert release.msg_type is MessageType.RELEASE and release.server_id == SRV1
    assert release.ia_na[0].addresses[0].address == ADDR
    assert release.ia_pd[0].prefixes[0].prefix == PREFIX
    count = 1
    while c.next_deadline() is not None:
        count += len(sent(c.poll(c.next_deadline())))
    assert count == REL_MAX_RC == 4 and c.state is State.STOPPED


def test_reply_to_release_stops_the_client_and_stop_without_lease_sends_nothing():
    c = client()
    bound(c)
    release = only(c.stop(1.0))
    assert c.feed(answer(release, address=None), ROUTER, 1.1) == []
    assert c.state is State.STOPPED and c.next_deadline() is None
    c2 = client()
    c2.start(0.0)
    assert c2.stop(0.5) == [] and c2.state is State.STOPPED


def test_snapshot_survives_msgpack_and_a_restart_resumes_the_lease():
    c = client(request_prefix=56)
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255,
                                 prefix=PREFIX), ROUTER, 0.0))
    c.feed(answer(request, prefix=PREFIX, dns_servers=(A("2001:db8::53"),)), ROUTER, 0.0)
    blob = msgpack.packb(c.snapshot(100.0))
    # The new process has another monotonic clock: 5000 at restart, 20 s of downtime.
    c2 = client(request_prefix=56)
    c2.restore(msgpack.unpackb(blob), 5000.0, downtime=20.0)
    actions = c2.start(5000.0)
    assert actions == [AddressBound(I("2001:db8:1::10/128"), 5480.0, 5780.0),
                       PrefixDelegated(PREFIX, 5480.0, 5780.0),
                       DnsServers((A("2001:db8::53"),))]
    assert c2.state is State.BOUND and c2.next_deadline() == 5180.0  # T1: 300 - 100 - 20
    renew = only(c2.poll(5180.0))
    assert renew.msg_type is MessageType.RENEW and renew.server_id == SRV1


def test_restore_of_an_expired_or_foreign_snapshot_starts_from_solicit():
    c = client()
    bound(c)
    snap = c.snapshot(0.0)
    late = client()
    late.restore(snap, 0.0, downtime=1000.0)  # longer than the valid lifetime
    assert only(late.start(0.0)).msg_type is MessageType.SOLICIT
    other = Dhcpv6Client(duid_ll(bytes.fromhex("020000000777")), start_delay=0.0)
    other.restore(snap, 0.0)
    assert other.counters()["restore_other_duid"] == 1
    assert only(other.start(0.0)).msg_type is MessageType.SOLICIT
    with pytest.raises(ValueError):
        client().restore({"version": 99}, 0.0)


def test_transaction_ids_come_from_the_source_and_change_per_exchange():
    ids = iter([0x111111, 0x222222, 0x333333, 0x1444444])
    c = client(xid_source=lambda: next(ids))
    solicit = only(c.start(0.0))
    request = only(c.feed(answer(solicit, MessageType.ADVERTISE, preference=255), ROUTER, 0))
    c.feed(answer(request), ROUTER, 0.0)
    renew = only(c.poll(300.0))
    assert [solicit.transaction_id, request.transaction_id, renew.transaction_id] == \
        [0x111111, 0x222222, 0x333333]


def test_split_delegated_gives_consecutive_64s():
    assert split_delegated(PREFIX, 3) == [N("2001:db8:ff00::/64"), N("2001:db8:ff00:1::/64"),
                                          N("2001:db8:ff00:2::/64")]
    assert len(split_delegated(N("2001:db8:ff00::/60"), 16)) == 16
    assert split_delegated(N("2001:db8::/64"), 1) == [N("2001:db8::/64")]
    with pytest.raises(ValueError):
        split_delegated(N("2001:db8::/60"), 17)
    with pytest.raises(ValueError):
        split_delegated(N("2001:db8::/80"), 1)


def test_client_must_ask_for_something():
    with pytest.raises(ValueError):
        Dhcpv6Client(CLIENT, request_address=False)
    c = Dhcpv6Client(CLIENT, request_address=False, request_prefix=0, start_delay=0.0)
    solicit = only(c.start(0.0))
    assert solicit.ia_na == () and solicit.ia_pd == (IaPd(1),)
