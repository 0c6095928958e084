"""IPv6 and dual stack in netstack's bindings (qnet.udp 1.2, qnet.tcp 1.3), driven in-process:
the real core Stack (its loopback: 127.0.0.1, ::1), the real event loop, the bindings'
channels as socketpairs whose client ends the test holds. An IPv6 socket or listener on ::
with v6only off also takes IPv4, shown IPv4-mapped (::ffff:a.b.c.d), and sends to mapped
addresses over IPv4; with v6only it does not; a connected dual socket takes only its peer's
version; the pairs survive a restore."""
from __future__ import annotations

import ipaddress
import itertools
import random
import select
import socket
from types import SimpleNamespace

import pytest

from components.netstack.core import Stack, StackConfig
from components.netstack.core.events import IcmpErrorForSocket
from components.netstack.tcp_binding import TWIN, TcpService
from components.netstack.udp_binding import UdpService
from components.runtime import Loop
from ipc import errors
from ipc.protocols.udp import (UDP6_ERROR_HEAD, UDP6_RECV_HEAD, UDP6_SEND_HEAD, UDP_RECV_HEAD,
                               UDP_SEND_HEAD)

A = ipaddress.ip_address
LO4, LO6 = A("127.0.0.1"), A("::1")
MAPPED_LO = A("::ffff:127.0.0.1")
_names = itertools.count(1)     # channel ids, unique across the incarnations of a test


class _Rpc:
    def __init__(self):
        self.replies: list = []

    def defer(self):
        return object()

    def reply(self, token, result):
        self.replies.append(result)

    def reply_error(self, token, error):
        self.replies.append(error)


class Netstack:
    """What the bindings ask of the netstack component, around a real Stack."""

    def __init__(self, stack: Stack | None = None):
        self.stack = stack or Stack(StackConfig(strict=True, random_seed=1))
        self.rng = random.Random(1)
        self.loop = Loop()
        self.rt = SimpleNamespace(loop=self.loop, rpc=_Rpc(), spec=SimpleNamespace(channels={}),
                                  byte_channels=lambda proto, sink: {},
                                  release_channel=lambda proto, chan: True,
                                  _on_channel_ctl=lambda: None)
        self.tcp = TcpService(self)
        self.udp = UdpService(self)
        self.ends: list[socket.socket] = []

    def checkpoint(self):
        pass

    def _flush_transmit(self):
        self.stack.take_transmit()

    def start(self):
        self.tcp.start()
        self.udp.start()
        return self

    def channel(self, service, kind=socket.SOCK_SEQPACKET) -> tuple[str, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        name = f"c{next(_names)}"
        service.add_peer(name.encode(), ours.detach())
        theirs.settimeout(2.0)
        self.ends.append(theirs)
        return name, theirs

    def pump(self, rounds: int = 5):
        for _ in range(rounds):
            self.loop.run_once(0.0)
            self.tcp.service()
            for ev in self.stack.take_events():
                if isinstance(ev, IcmpErrorForSocket):
                    self.udp.icmp_error(ev.sid, ev.type, ev.code, ev.dst, ev.dst_port)
            readable = self.stack.udp_readable()
            if readable:
                self.udp.deliver(readable)

    def close(self):
        for s in self.ends:
            s.close()


@pytest.fixture
def ns():
    n = Netstack().start()
    yield n
    n.close()


def _recv6(ns, sock) -> tuple[tuple, bytes]:
    ns.pump()
    msg = sock.recv(70000)
    src, sport, dst, hops, tclass, ifindex = UDP6_RECV_HEAD.unpack_from(msg)
    return (A(src), sport, A(dst), ifindex), msg[UDP6_RECV_HEAD.size:]


def _recv4(ns, sock) -> tuple[tuple, bytes]:
    ns.pump()
    msg = sock.recv(70000)
    src, sport, dst, _ttl, _tos, ifindex = UDP_RECV_HEAD.unpack_from(msg)
    return (A(src), sport, A(dst), ifindex), msg[UDP_RECV_HEAD.size:]


def _nothing(ns, sock) -> bool:
    ns.pump()
    return not select.select([sock], [], [], 0.05)[0]


def send6(sock, dst, port, payload, scope=0):
    sock.send(UDP6_SEND_HEAD.pack(A(dst).packed, port, -1, -1, scope) + payload)


def send4(sock, dst, port, payload):
    sock.send(UDP_SEND_HEAD.pack(A(dst).packed, port, -1, -1) + payload)


def bind(ns, **kw):
    name, end = ns.channel(ns.udp)
    return ns.udp.bind(name, **kw), end


# -- UDP ---------------------------------------------------------------------------------------
def test_a_dual_udp_socket_receives_ipv4_as_mapped_and_answers_over_ipv4(ns):
    r, dual = bind(ns, family="ipv6", port=5000)
    assert r["address"] == A("::") and r["port"] == 5000
    s4, end4 = bind(ns, address=LO4)
    send4(end4, "127.0.0.1", 5000, b"over ipv4")
    (src, sport, dst, ifindex), payload = _recv6(ns, dual)
    assert (src, sport, dst, payload) == (MAPPED_LO, s4["port"], MAPPED_LO, b"over ipv4")
    assert ifindex == 1                                    # lo
    send6(dual, MAPPED_LO, s4["port"], b"answer")
    (src, sport, dst, _), payload = _recv4(ns, end4)
    assert (src, sport, payload) == (LO4, 5000, b"answer")
    # ...and IPv6 as it is.
    s6, end6 = bind(ns, family="ipv6", address=LO6, v6only=True)
    send6(end6, "::1", 5000, b"over ipv6")
    (src, sport, dst, _), payload = _recv6(ns, dual)
    assert (src, sport, dst, payload) == (LO6, s6["port"], LO6, b"over ipv6")
    row = next(x for x in ns.udp.list() if x["sock"] == r["sock"])
    assert row["dual"] and row["family"] == "ipv6" and row["rx_datagrams"] == 2


def test_v6only_takes_no_ipv4_and_leaves_the_ipv4_port_free(ns):
    r, only6 = bind(ns, family="ipv6", port=5001, v6only=True)
    assert not next(x for x in ns.udp.list() if x["sock"] == r["sock"])["dual"]
    r4, end4 = bind(ns, port=5001)                         # no conflict on IPv4's side
    _s, sender = bind(ns)
    send4(sender, "127.0.0.1", 5001, b"v4")
    assert _recv4(ns, end4)[1] == b"v4"
    assert _nothing(ns, only6)
    # A mapped destination from an IPv6-only socket cannot leave (Linux: ENETUNREACH).
    send6(only6, MAPPED_LO, 5001, b"nowhere")
    ns.pump()
    assert next(x for x in ns.udp.list() if x["sock"] == r["sock"])["tx_errors"] == 1
    # Dual on a port IPv4 holds: the whole bind is refused, nothing is left behind.
    with pytest.raises(errors.RemoteError) as e:
        bind(ns, family="ipv6", port=5001)
    assert e.value.code == "address_in_use"
    with pytest.raises(errors.RemoteError):
        bind(ns, port=5002, address=LO6)                   # an IPv6 address on an IPv4 socket


def test_a_socket_bound_to_a_mapped_address_is_ipv4_only(ns):
    r, end = bind(ns, family="ipv6", address=MAPPED_LO)
    assert r["address"] == MAPPED_LO
    _s, sender = bind(ns)
    send4(sender, "127.0.0.1", r["port"], b"mapped bind")
    (src, _sp, dst, _), payload = _recv6(ns, end)
    assert (src, dst, payload) == (MAPPED_LO, MAPPED_LO, b"mapped bind")
    with pytest.raises(errors.RemoteError):
        bind(ns, family="ipv6", address=MAPPED_LO, v6only=True)


def test_a_dual_socket_connected_over_ipv4_drops_ipv6_and_errors_come_mapped(ns):
    r, dual = bind(ns, family="ipv6")
    peer, peer_end = bind(ns, address=LO4)
    c = ns.udp.connect(r["sock"], MAPPED_LO, peer["port"])
    assert c["remote"] == MAPPED_LO and c["address"] == MAPPED_LO
    _s6, other = bind(ns, family="ipv6", v6only=True)
    send6(other, "::1", r["port"], b"not the peer")
    send4(peer_end, "127.0.0.1", r["port"], b"the peer")
    (src, *_), payload = _recv6(ns, dual)
    assert (src, payload) == (MAPPED_LO, b"the peer")
    assert _nothing(ns, dual)
    row = next(x for x in ns.udp.list() if x["sock"] == r["sock"])
    assert row["rx_dropped_connected"] == 1 and row["remote"] == str(MAPPED_LO)
    # The peer goes: the port unreachable is reported once, in the IPv6 socket's error head
    # with the mapped destination and ICMPv4's type and code.
    ns.udp.close(peer["sock"])
    send6(dual, "::", 0, b"anyone?")
    ns.pump()
    msg = dual.recv(100)
    assert len(msg) == UDP6_ERROR_HEAD.size
    assert UDP6_ERROR_HEAD.unpack(msg) == (MAPPED_LO.packed, peer["port"], 3, 3)
    # A disconnect makes it dual again.
    d = ns.udp.connect(r["sock"], None)
    assert d["remote"] is None and d["address"] == A("::")
    send6(other, "::1", r["port"], b"welcome back")
    assert _recv6(ns, dual)[1] == b"welcome back"


def test_ipv6_port_unreachable_on_a_connected_socket_is_reported(ns):
    r, end = bind(ns, family="ipv6", v6only=True)
    ns.udp.connect(r["sock"], LO6, 9)
    send6(end, "::", 0, b"x")
    ns.pump()
    assert UDP6_ERROR_HEAD.unpack(end.recv(100)) == (LO6.packed, 9, 1, 4)


def test_link_local_needs_a_scope_and_scopes_name_ports():
    stack = Stack(StackConfig(strict=True, random_seed=1))
    stack.add_device("eth0", mac=b"\x02\0\0\0\0\x01", now=0.0)
    stack.poll(2.0)                                        # DAD of the link-local address
    ll = next(ipaddress.ip_interface(a.address).ip for a in stack.addresses6())
    ns = Netstack(stack).start()
    try:
        with pytest.raises(errors.RemoteError):
            bind(ns, family="ipv6", address=ll)            # no scope: EINVAL in Linux
        idx = ns.udp.index_of("eth0")
        assert idx == 2 and ns.udp.name_of(idx) == "eth0" and ns.udp.name_of(1) == "lo"
        r, _end = bind(ns, family="ipv6", address=ll, scope_id=idx)
        assert r["scope_id"] == idx
        with pytest.raises(errors.RemoteError):
            bind(ns, family="ipv6", address=ll, scope_id=99)
    finally:
        ns.close()


def test_dual_sockets_survive_a_restore_of_the_stack_and_the_binding(ns):
    r, dual = bind(ns, family="ipv6", port=5005)
    snap = ns.stack.snapshot()
    state = ns.udp.state()
    # The successor inherits the channel (same fd) and restores both halves of the pair.
    chan = next(iter(ns.udp.chans))
    fd = ns.udp.chans[chan].fd
    new = Netstack(Stack.restore(snap, StackConfig(strict=True)))
    new.udp.add_peer(chan.encode(), fd)
    new.udp.restore(state)
    new.start()
    try:
        _s, sender = bind(new, address=LO4)
        send4(sender, "127.0.0.1", 5005, b"after restore")
        (src, *_), payload = _recv6(new, dual)
        assert (src, payload) == (MAPPED_LO, b"after restore")
    finally:
        new.close()


# -- TCP ---------------------------------------------------------------------------------------
def _connect(ns, address, port, **kw):
    name, end = ns.channel(ns.tcp, socket.SOCK_STREAM)
    ns.rt.rpc.replies.clear()
    ns.tcp.connect(name, address, port, **kw)
    ns.pump()
    (r,) = ns.rt.rpc.replies
    if isinstance(r, errors.IpcError):
        raise r
    return r, end


def _accept(ns, lid):
    name, end = ns.channel(ns.tcp, socket.SOCK_STREAM)
    return ns.tcp.accept(lid, name), end


def test_a_dual_listener_accepts_ipv4_as_mapped_and_ipv6_as_it_is(ns):
    name, ready = ns.channel(ns.tcp, socket.SOCK_STREAM)
    lst = ns.tcp.listen(8080, None, family="ipv6", channel=name)
    lid = lst["listener"]
    twin = ns.tcp.twins[lid]
    assert ns.stack.tcp6.owns(lid) and ns.stack.tcp4.owns(twin)
    assert ns.stack.tcp4.listeners[twin].channel == f"{TWIN}{lid}"
    c4, c4_end = _connect(ns, LO4, 8080)
    assert ready.recv(1) == b"!"                           # the readiness channel: one byte
    a4, a4_end = _accept(ns, lid)
    assert (a4["remote"], a4["remote_port"], a4["local"]) == (MAPPED_LO, c4["local_port"], MAPPED_LO)
    c6, _ = _connect(ns, LO6, 8080)
    a6, a6_end = _accept(ns, lid)
    assert (a6["remote"], a6["local"]) == (LO6, LO6) and ns.stack.tcp6.owns(a6["conn"])
    c4_end.sendall(b"ping over ipv4")
    ns.pump()
    assert a4_end.recv(100) == b"ping over ipv4"
    listed = ns.tcp.list()
    row = next(c for c in listed["connections"] if c["cid"] == a4["conn"])
    assert row["family"] == "ipv6" and row["remote"] == str(MAPPED_LO)
    assert {x["lid"]: x["family"] for x in listed["listeners"]} == {lid: "ipv6", twin: "ipv4"}
    # The IPv4 port is the listener's: a plain IPv4 listener cannot have it.
    with pytest.raises(errors.RemoteError) as e:
        ns.tcp.listen(8080, None)
    assert e.value.code == "address_in_use"
    assert ns.tcp.close_listener(twin) is False            # the twin is not the client's to close
    assert ns.tcp.close_listener(lid) is True
    assert twin not in ns.stack.tcp4.listeners and not ns.tcp.twins


def test_a_v6only_listener_leaves_ipv4_alone(ns):
    lid = ns.tcp.listen(8081, None, family="ipv6", v6only=True)["listener"]
    assert lid not in ns.tcp.twins
    with pytest.raises(errors.RemoteError) as e:
        _connect(ns, LO4, 8081)
    assert e.value.code == "refused"
    v4 = ns.tcp.listen(8081, None)["listener"]             # the IPv4 port is free
    assert ns.stack.tcp4.owns(v4)


def test_a_connect_to_a_mapped_address_goes_over_ipv4_and_shows_mapped(ns):
    ns.tcp.listen(8082, LO4)
    r, _end = _connect(ns, MAPPED_LO, 8082)
    assert ns.stack.tcp4.owns(r["conn"])
    assert (r["remote"], r["local"]) == (MAPPED_LO, MAPPED_LO)
    assert ns.tcp.info(r["conn"])["remote"] == str(MAPPED_LO)
    with pytest.raises(errors.RemoteError) as e:
        ns.tcp.connect(ns.channel(ns.tcp, socket.SOCK_STREAM)[0], MAPPED_LO, 8082,
                       local_address=LO6)
    assert e.value.code == "no_route"


def test_the_twin_pairing_survives_a_crash_restore_from_a_checkpoint(ns):
    lid = ns.tcp.listen(8083, None, family="ipv6")["listener"]
    twin = ns.tcp.twins[lid]
    snap = ns.stack.snapshot(connections=False)
    new = Netstack(Stack.restore(snap, StackConfig(strict=True)))
    new.tcp.restore(None, handover=False)
    new.start()
    try:
        assert new.tcp.twins == {lid: twin}
        _connect(new, LO4, 8083)
        a, _ = _accept(new, lid)
        assert a["remote"] == MAPPED_LO
    finally:
        new.close()
