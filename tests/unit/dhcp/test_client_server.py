"""Our client against our server: every message goes through build() and parse(), and the
server restarts from a snapshot saved in a LeaseStore in the middle of a lease."""

from __future__ import annotations

import random
from ipaddress import IPv4Address as A, IPv4Network as N

from components.dhcpd.client import (CheckAddress, Configure, Deconfigure, DhcpClient, Send,
                                     State)
from components.dhcpd.leases import LeaseStore
from components.dhcpd.server import DhcpServer, LeaseState, ProbeAddress, Reply, ServerConfig
from components.dhcpd.wire import DhcpMessage, MessageType

MAC1 = bytes.fromhex("020000000101")
MAC2 = bytes.fromhex("020000000102")


def server_config() -> ServerConfig:
    return ServerConfig(server_ip=A("10.9.0.1"), subnet=N("10.9.0.0/24"),
                        pool_start=A("10.9.0.10"), pool_end=A("10.9.0.20"),
                        router=A("10.9.0.1"), dns=[A("10.9.0.1")], lease_time=600,
                        classless_routes=[(N("172.16.0.0/12"), A("10.9.0.254"))])


class Wire:
    """Carries actions between clients and one server; records what the binding would do."""

    def __init__(self, server: DhcpServer, *clients: DhcpClient) -> None:
        self.server = server
        self.clients = {c.mac: c for c in clients}
        self.sent: list[tuple[bytes, Send]] = []
        self.configured: dict[bytes, list] = {c.mac: [] for c in clients}
        self.in_use: set[A] = set()

    def run(self, actions, now: float, owner: bytes | None = None) -> None:
        queue = [(owner, a) for a in actions]
        for _ in range(200):
            if not queue:
                return
            owner, action = queue.pop(0)
            if isinstance(action, Send):
                self.sent.append((owner, action))
                msg = DhcpMessage.parse(action.msg.build())
                queue += [(None, a) for a in self.server.handle(msg, now, src_ip=action.src_ip)]
            elif isinstance(action, Reply):
                msg = DhcpMessage.parse(action.msg.build())
                c = self.clients.get(msg.chaddr)
                if c is not None:
                    queue += [(c.mac, a) for a in c.receive(msg, now)]
            elif isinstance(action, ProbeAddress):
                queue += [(None, a) for a in self.server.probe_result(
                    action.token, action.address in self.in_use, now)]
            elif isinstance(action, CheckAddress):
                queue += [(owner, a) for a in self.clients[owner].address_checked(
                    ok=action.address not in self.in_use, now=now)]
            elif isinstance(action, (Configure, Deconfigure)):
                self.configured[owner].append(action)
        raise AssertionError("message storm")

    def advance(self, until: float) -> float:
        """Fire every deadline up to `until`, in order; returns `until`."""
        for _ in range(1000):
            deadlines = [c.next_deadline() for c in self.clients.values()]
            deadlines.append(self.server.next_deadline())
            due = min((d for d in deadlines if d is not None and d <= until), default=None)
            if due is None:
                return until
            for c in self.clients.values():
                self.run(c.poll(due), due, c.mac)
            self.run(self.server.expire(due), due)
        raise AssertionError("timer storm")


def test_client_and_server_through_lease_renewal_and_server_restart(tmp_path):
    server = DhcpServer(server_config())
    c1 = DhcpClient(MAC1, rng=random.Random(7), hostname="vm-a")
    wire = Wire(server, c1)
    wire.in_use.add(A("10.9.0.10"))  # a squatter: the server's probe must skip it
    wire.run(c1.start(0.0), 0.0, MAC1)
    assert c1.state is State.BOUND
    lease = c1.lease
    assert lease.address == A("10.9.0.11")
    assert lease.routes == ((N("172.16.0.0/12"), A("10.9.0.254")),
                            (N("0.0.0.0/0"), A("10.9.0.1")))
    (bound,) = [l for l in server.leases() if l.state is LeaseState.BOUND]
    assert (bound.mac, bound.address, bound.hostname) == (MAC1, lease.address, "vm-a")

    # T1: unicast renewal to the server, lease extended.
    wire.advance(300.0)
    renew = wire.sent[-1][1]
    assert renew.dst_ip == A("10.9.0.1") and renew.msg.ciaddr == lease.address
    assert c1.state is State.BOUND and c1.lease.expires_at == 900.0

    # The server process dies; its successor restores the saved snapshot.
    store = LeaseStore(tmp_path / "guest0.leases")
    store.save(server.snapshot(350.0))
    server = DhcpServer(server_config())
    server.restore(store.load(), 350.0)
    c2 = DhcpClient(MAC2, rng=random.Random(8))
    wire = Wire(server, c1, c2)
    wire.in_use.add(A("10.9.0.10"))
    wire.run(c2.start(351.0), 351.0, MAC2)
    assert c2.state is State.BOUND
    assert c2.lease.address not in (c1.lease.address, A("10.9.0.10"))

    # Next renewal of the first client is answered by the new server.
    wire.advance(700.0)
    assert c1.state is State.BOUND and c1.lease.address == lease.address
    assert c1.lease.expires_at == 600.0 + 600.0
    assert wire.configured[MAC1] and isinstance(wire.configured[MAC1][-1], Configure)

    # The client host reboots too: INIT-REBOOT gets the same address back.
    c1b = DhcpClient(MAC1, rng=random.Random(9))
    wire.clients[MAC1] = c1b
    wire.run(c1b.start(710.0, previous_lease=c1.lease), 710.0, MAC1)
    assert c1b.state is State.BOUND and c1b.lease.address == lease.address

    # Release: the server frees the address.
    wire.run(c1b.release(720.0), 720.0, MAC1)
    assert lease.address not in {l.address for l in server.leases()
                                 if l.state is LeaseState.BOUND}
    assert not any(isinstance(a, Deconfigure) for a in wire.configured[MAC2])


def test_client_declines_an_address_it_finds_in_use_and_gets_another():
    server = DhcpServer(ServerConfig(server_ip=A("10.9.0.1"), subnet=N("10.9.0.0/24"),
                                     pool_start=A("10.9.0.10"), pool_end=A("10.9.0.20"),
                                     probe=False))
    c = DhcpClient(MAC1, rng=random.Random(3))
    wire = Wire(server, c)
    wire.in_use.add(A("10.9.0.10"))  # the server does not probe; the client's ARP check does
    wire.run(c.start(0.0), 0.0, MAC1)
    assert c.state is State.INIT
    assert [s.msg.message_type for _, s in wire.sent][-1] is MessageType.DECLINE
    assert {l.address: l.state for l in server.leases()} == {
        A("10.9.0.10"): LeaseState.DECLINED}
    wire.advance(10.0)
    assert c.state is State.BOUND and c.lease.address == A("10.9.0.11")


def test_client_recovers_after_expiry_while_server_was_silent():
    server = DhcpServer(server_config())
    c = DhcpClient(MAC1, rng=random.Random(4))
    wire = Wire(server, c)
    wire.run(c.start(0.0), 0.0, MAC1)
    first = c.lease
    # The server vanishes (no wire): renew and rebind go unanswered until expiry.
    for t in range(1, 601):
        for a in c.poll(float(t)):
            if isinstance(a, Deconfigure):
                wire.configured[MAC1].append(a)
    assert wire.configured[MAC1][-1] == Deconfigure(first, "lease expired")
    assert c.state is State.SELECTING
    wire.advance(700.0)
    assert c.state is State.BOUND and c.lease.address == first.address
