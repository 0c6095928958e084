"""Our DHCPv6 client against our DHCPv6 server, in-process with a fake clock: every message
goes through build() and parse(), servers come and go, restart from snapshots and lose state."""

from __future__ import annotations

import random
from ipaddress import IPv6Address as A, IPv6Network as N

import msgpack

from components.dhcpd.dhcpv6_client import (AddressBound, AddressLost, Dhcpv6Client,
                                            DnsServers, Send, State)
from components.dhcpd.dhcpv6_server import Dhcpv6Server, Dhcpv6ServerConfig, LeaseState
from components.dhcpd.dhcpv6_wire import Dhcpv6Message, MessageType, duid_ll

NET = N("2001:db8:42::/64")
DNS = A("2001:db8:42::1")


def server_config(duid_byte: int = 1, **kw) -> Dhcpv6ServerConfig:
    base = dict(server_duid=duid_ll(bytes([2, 0, 0, 0, 0, duid_byte])), prefix=NET,
                pool_size=64, dns_servers=(DNS,), domain_list=("lab.test",),
                preferred_lifetime=600, valid_lifetime=1000)
    base.update(kw)
    return Dhcpv6ServerConfig(**base)


class Link:
    """One link: clients' multicast reaches every server that is up; replies come back."""

    def __init__(self, *servers: Dhcpv6Server) -> None:
        self.servers = list(servers)
        self.clients: dict[str, Dhcpv6Client] = {}
        self.events: dict[str, list] = {}
        self.log: list[tuple[float, str, MessageType]] = []

    def add(self, name: str, c: Dhcpv6Client) -> None:
        self.clients[name] = c
        self.events[name] = []

    def run(self, name: str, actions, now: float) -> None:
        c = self.clients[name]
        queue = list(actions)
        for _ in range(200):
            if not queue:
                return
            action = queue.pop(0)
            if not isinstance(action, Send):
                self.events[name].append((now, action))
                continue
            self.log.append((now, name, Dhcpv6Message.parse(action.payload).msg_type))
            for server in self.servers:
                reply = server.handle(action.payload, A(f"fe80::{len(name)}"), now)
                if reply is not None:
                    self.log.append((now, "server", Dhcpv6Message.parse(reply).msg_type))
                    queue += c.feed(reply, A("fe80::1"), now)
        raise AssertionError("message storm")

    def advance(self, until: float) -> None:
        for _ in range(10000):
            due = [(d, n) for n, c in self.clients.items()
                   if (d := c.next_deadline()) is not None and d <= until]
            due += [(d, None) for s in self.servers
                    if (d := s.next_deadline()) is not None and d <= until]
            if not due:
                return
            now, name = min(due, key=lambda x: x[0])
            if name is None:
                for s in self.servers:
                    s.poll(now)
            else:
                self.run(name, self.clients[name].poll(now), now)
        raise AssertionError("timer storm")

    def bound_addresses(self, name: str) -> list[A]:
        return [a.iface.ip for _, a in self.events[name] if isinstance(a, AddressBound)]

    def sent(self, name: str, mtype: MessageType) -> list[float]:
        return [t for t, who, m in self.log if who == name and m is mtype]


def new_client(mac_byte: int = 0x21, **kw) -> Dhcpv6Client:
    kw.setdefault("rng", random.Random(mac_byte))
    return Dhcpv6Client(duid_ll(bytes([2, 0, 0, 0, 0, mac_byte])), **kw)


def test_client_obtains_an_address_and_renews_it_at_t1_for_hours_of_fake_time():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(5.0)
    assert c.state is State.BOUND
    (address,) = c.addresses
    assert address in NET
    assert all(0.0 < t <= 2.2 for t in link.sent("vm", MessageType.REQUEST))
    assert any(isinstance(e, DnsServers) and e.servers == (DNS,) for _, e in link.events["vm"])
    bound_at = link.sent("vm", MessageType.REQUEST)[0]
    link.advance(4 * 3600.0)
    renews = link.sent("vm", MessageType.RENEW)
    # T1 = 300 s after each Reply; every Renew answered at once.
    assert len(renews) == int((4 * 3600.0 - bound_at) // 300)
    assert all(abs((b - a) - 300.0) < 1e-6 for a, b in zip(renews, renews[1:]))
    assert link.sent("vm", MessageType.REBIND) == []
    assert set(link.bound_addresses("vm")) == {address}
    assert not any(isinstance(e, AddressLost) for _, e in link.events["vm"])
    lease = server.leases()[0]
    assert lease.state is LeaseState.BOUND and lease.expires == renews[-1] + 1000.0


def test_server_restarted_from_a_snapshot_keeps_renewing_the_same_lease():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(500.0)
    (address,) = c.addresses
    blob = msgpack.packb(server.snapshot(500.0))
    restarted = Dhcpv6Server(server_config())
    restarted.restore(msgpack.unpackb(blob), 500.0)
    link.servers = [restarted]
    link.advance(3000.0)
    assert c.state is State.BOUND and set(c.addresses) == {address}
    assert link.sent("vm", MessageType.REQUEST)[1:] == []  # no new Request was needed


def test_server_that_lost_its_state_answers_no_binding_and_the_client_gets_its_address_back():
    link = Link(Dhcpv6Server(server_config()))
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(100.0)
    (address,) = c.addresses
    link.servers = [Dhcpv6Server(server_config())]  # same DUID, empty lease table
    link.advance(400.0)
    # Renew -> NoBinding -> Request with the address as a hint -> same address.
    assert len(link.sent("vm", MessageType.REQUEST)) == 2
    assert c.state is State.BOUND and set(c.addresses) == {address}
    assert not any(isinstance(e, AddressLost) for _, e in link.events["vm"])


def test_when_the_server_goes_away_the_client_rebinds_and_another_server_takes_over():
    first = Dhcpv6Server(server_config(1))
    link = Link(first)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(10.0)
    (address,) = c.addresses
    snapshot = first.snapshot(10.0)
    link.servers = []
    link.advance(600.0)  # T1 passed, no answer: Renew retransmitted up to T2, then Rebind
    assert c.state is State.REBINDING and link.sent("vm", MessageType.RENEW)
    second = Dhcpv6Server(server_config(2))  # another server that knows the bindings
    second.restore(snapshot, 600.0)
    link.servers = [second]
    link.advance(1500.0)
    assert c.state is State.BOUND and set(c.addresses) == {address}
    assert c.server_id == second.config.server_duid
    assert link.sent("vm", MessageType.RENEW)[-1] > 600.0  # renewing with the new server


def test_lease_ends_at_valid_lifetime_without_any_server_and_comes_back_with_one():
    link = Link(Dhcpv6Server(server_config()))
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(10.0)
    (address,) = c.addresses
    got_at = link.sent("vm", MessageType.REQUEST)[0]
    link.servers = []
    link.advance(got_at + 1000.0)
    assert (got_at + 1000.0, AddressLost(address, "valid lifetime expired")) in link.events["vm"]
    assert c.state is State.SOLICITING
    link.servers = [Dhcpv6Server(server_config())]
    link.advance(got_at + 1000.0 + 3700.0)  # the Solicit backoff is at most ~1.1 h
    assert c.state is State.BOUND and set(c.addresses) == {address}


def test_duplicate_address_is_declined_quarantined_and_replaced():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(10.0)
    (address,) = c.addresses
    link.run("vm", c.dad_failed(address, 20.0), 20.0)
    link.advance(30.0)
    assert link.sent("vm", MessageType.DECLINE) == [20.0]
    (replacement,) = c.addresses
    assert replacement != address and c.state is State.BOUND
    states = {l.address: l.state for l in server.leases()}
    assert states == {address: LeaseState.DECLINED, replacement: LeaseState.BOUND}


def test_stop_releases_the_lease_on_the_server():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(10.0)
    link.run("vm", c.stop(50.0), 50.0)
    assert c.state is State.STOPPED and server.leases() == []
    assert link.sent("vm", MessageType.RELEASE) == [50.0]


def test_two_clients_get_different_addresses_and_rapid_commit_skips_advertise():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    a, b = new_client(0x21), new_client(0x22, rapid_commit=True)
    link.add("a", a)
    link.add("b", b)
    link.run("a", a.start(0.0), 0.0)
    link.run("b", b.start(0.0), 0.0)
    link.advance(5.0)
    assert a.state is b.state is State.BOUND
    assert set(a.addresses).isdisjoint(b.addresses)
    assert link.sent("b", MessageType.REQUEST) == []  # Solicit -> Reply (rapid commit)


def test_client_restarted_from_a_snapshot_keeps_its_address_and_renews_with_the_server():
    server = Dhcpv6Server(server_config())
    link = Link(server)
    c = new_client()
    link.add("vm", c)
    link.run("vm", c.start(0.0), 0.0)
    link.advance(100.0)
    (address,) = c.addresses
    blob = msgpack.packb(c.snapshot(100.0))
    fresh = new_client()
    fresh.restore(msgpack.unpackb(blob), 100.0)
    link.clients["vm"] = fresh
    link.run("vm", fresh.start(100.0), 100.0)
    assert fresh.state is State.BOUND and set(fresh.addresses) == {address}
    link.advance(2000.0)
    assert fresh.state is State.BOUND and set(fresh.addresses) == {address}
    assert link.sent("vm", MessageType.SOLICIT)[-1] < 100.0  # never solicited again
