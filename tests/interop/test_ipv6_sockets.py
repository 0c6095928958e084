"""Sockets over IPv6 against the Linux kernel (issue 12): a qnet port with an IPv4 and an IPv6
address, the kernel in a namespace behind its TAP with both too (IPv6 on, DAD off). TCP over
IPv6 both ways, sha256-exact (qnet.tcp directly and qnet.socket); UDP over IPv6 both ways;
a qnet.socket server on :: reached over IPv6 and over IPv4 (dual stack: the IPv4 peer shows as
::ffff:a.b.c.d); link-local addresses with their scope; Happy Eyeballs falling back to IPv4
when IPv6 is unreachable, a black hole or no route.

One graph per module; every wait is bounded."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time

import pytest

from components.netstack.tcp_client import TcpClient
from tests.interop.util import (NS_PYTHON, NsPort, QnetGraph, missing_prerequisite, run, stop_process, wait_for,
                                wait_line)

pytestmark = pytest.mark.interop

WAIT = 20.0
SIZE = 4 << 20          # bytes of each TCP transfer

# The kernel's side. "sink PORT": one connection on [::]:PORT (dual stack), prints its peer,
# length and sha256. "source PORT N SEED": sends N pseudo-random bytes to the first
# connection. "send HOST PORT N SEED": connects and sends N bytes, prints what came back
# (length, sha256). "udp PORT": a dual UDP socket echoing each datagram with
# {size, sha, src, hops} on stdout. Each prints "ready" first.
PEER6 = r"""
import hashlib, json, random, socket, sys
mode = sys.argv[1]
if mode in ("sink", "source"):
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", int(sys.argv[2]))); ls.listen(4); print("ready", flush=True)
    c, peer = ls.accept()
    if mode == "sink":
        h = hashlib.sha256(); n = 0
        while True:
            b = c.recv(1 << 20)
            if not b: break
            h.update(b); n += len(b)
        print(peer[0], n, h.hexdigest(), flush=True)
    else:
        c.sendall(random.Random(int(sys.argv[4])).randbytes(int(sys.argv[3])))
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536): pass
        print("sent", flush=True)
    c.close()
elif mode == "send":
    print("ready", flush=True)
    fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30)
    c.sendall(random.Random(int(sys.argv[5])).randbytes(int(sys.argv[4])))
    c.shutdown(socket.SHUT_WR)
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
elif mode == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("::", int(sys.argv[2]))); print("ready", flush=True)
    while True:
        data, anc, _f, src = s.recvmsg(65536, 256)
        hops = next((int.from_bytes(v[:4], sys.byteorder) for l, t, v in anc
                     if t == socket.IPV6_HOPLIMIT), None)
        print(json.dumps({"size": len(data), "sha": hashlib.sha256(data).hexdigest(),
                          "src": src[0], "sport": src[1], "hops": hops}), flush=True)
        if data == b"quit": break
        s.sendto(data, src)
"""


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Dual:
    """The port p0: qnet is 10.99.X.1 and fd00:98:X::1, Linux .2 and ::2."""

    def __init__(self, g: QnetGraph, x: int) -> None:
        self.g = g
        self.base = NsPort(port="p0", tap=f"qtap{g.tag}p0"[:15], ns=f"qn{g.tag}p0", x=x)
        self.prefix = f"fd00:98:{x:x}::"

    qnet6 = property(lambda self: self.prefix + "1")
    linux6 = property(lambda self: self.prefix + "2")
    qnet4 = property(lambda self: self.base.qnet_ip)
    linux4 = property(lambda self: self.base.linux_ip)

    def sh(self, cmd, **kw):
        return self.base.sh(cmd, **kw)

    def popen(self, *args) -> subprocess.Popen:
        p = self.base.popen([NS_PYTHON, "-c", PEER6, *map(str, args)], stdin=subprocess.PIPE)
        wait_line(p, "ready", 10.0)
        return p

    def linux_link_local(self) -> str:
        out = self.sh(["ip", "-6", "-o", "addr", "show", "dev", self.base.tap, "scope", "link"]).stdout
        m = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out)
        assert m, out
        return m.group(1)

    def qnet_link_local(self) -> str:
        return next(a["address"].split("/")[0] for a in self.g.port_row("p0")["addresses6"]
                    if a["address"].startswith("fe80:"))


def _seen(p: subprocess.Popen, timeout: float = 10.0) -> dict:
    """The next datagram the kernel's UDP peer reports (a JSON line), waited for at most timeout."""
    return json.loads(wait_line(p, "{", timeout))


def _finish(p: subprocess.Popen, timeout: float) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop_process(p)
    assert p.returncode == 0, err
    return out.strip()


@pytest.fixture(scope="module")
def dual():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start()
    old = os.environ.get("QNET_RUNTIME_DIR")
    os.environ["QNET_RUNTIME_DIR"] = g.run_dir
    try:
        d = Dual(g, random.randrange(16, 250))
        b = d.base
        g.ports["p0"] = b           # g.stop() deletes the namespace and a TAP left behind
        g.qnet("port", "add", "p0", "--tap", b.tap, "--addr", f"{d.qnet4}/24", "--addr", f"{d.qnet6}/64",
               timeout=30)
        g.remember_pids()
        run(["ip", "netns", "add", b.ns])
        # Before the TAP enters: a device takes the namespace's defaults when it arrives.
        b.sh(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
              "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
              "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
              "net.ipv6.conf.all.forwarding=0", "net.ipv4.ip_forward=0"])
        run(["ip", "link", "set", b.tap, "netns", b.ns])
        run(["ip", "-n", b.ns, "link", "set", "lo", "up"])
        run(["ip", "-n", b.ns, "addr", "add", f"{d.linux4}/24", "dev", b.tap])
        run(["ip", "-n", b.ns, "addr", "add", f"{d.linux6}/64", "dev", b.tap, "nodad"])
        run(["ip", "-n", b.ns, "link", "set", b.tap, "up"])
        wait_for(lambda: (r := g.port_row("p0"))["up"] and r["attached"], 5.0, 0.1, "p0 attached, up")
        wait_for(lambda: len(a := g.port_row("p0")["addresses6"]) == 2
                 and all(x["state"] == "PREFERRED" for x in a), 8.0, 0.2, "qnet's IPv6 addresses preferred")
        yield d
    finally:
        from qnet._session import session
        session().close()
        if old is None:
            os.environ.pop("QNET_RUNTIME_DIR", None)
        else:
            os.environ["QNET_RUNTIME_DIR"] = old
        g.stop()


@pytest.fixture
def qs(dual):
    from qnet import socket as qsocket
    return qsocket


@pytest.fixture
def closing():
    items: list = []
    yield items.append
    for s in reversed(items):
        try:
            s.close()
        except OSError:
            pass


def _recv_all(s, limit: int = 1 << 30) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while n < limit:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    return n, h.hexdigest()


# -- TCP ---------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_tcp_over_ipv6_both_ways_through_qnet_tcp_is_sha256_exact(dual):
    client = TcpClient(dual.g.run_dir)
    try:
        p = dual.popen("sink", 5601)
        try:
            s = client.connect(dual.linux6, 5601, timeout=10)
            assert s.remote == (dual.linux6, 5601) and s.local[0] == dual.qnet6
            s.sendall(_data(SIZE, 1))
            s.shutdown()
            s.settimeout(WAIT)
            assert s.recv(1) == b""
            s.close()
        finally:
            out = _finish(p, 60)
        peer, n, digest = out.split()
        assert (peer, int(n), digest) == (dual.qnet6, SIZE, hashlib.sha256(_data(SIZE, 1)).hexdigest())
        p = dual.popen("source", 5602, SIZE, 2)
        try:
            s = client.connect(dual.linux6, 5602, timeout=10)
            s.settimeout(WAIT)
            got = _recv_all(s)
            s.close()
        finally:
            _finish(p, 60)
        assert got == (SIZE, hashlib.sha256(_data(SIZE, 2)).hexdigest())
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_a_qnet_socket_server_on_any_is_reached_over_ipv6_and_over_ipv4(dual, qs, closing):
    srv = qs.socket(qs.AF_INET6, qs.SOCK_STREAM)
    closing(srv)
    srv.bind(("::", 5603))
    srv.listen()
    srv.settimeout(WAIT)
    assert srv.getsockopt(qs.IPPROTO_IPV6, qs.IPV6_V6ONLY) == 0
    for host, seed, expected in ((dual.qnet6, 3, dual.linux6), (dual.qnet4, 4, f"::ffff:{dual.linux4}")):
        p = dual.popen("send", host, 5603, SIZE, seed)
        try:
            conn, peer = srv.accept()
            closing(conn)
            conn.settimeout(WAIT)
            assert peer[0] == expected and peer[2:] == (0, 0)
            assert conn.getsockname()[:2] == ((dual.qnet6 if ":" in host else f"::ffff:{dual.qnet4}"), 5603)
            got = _recv_all(conn)
            conn.sendall(b"got " + got[1].encode())     # echo the digest back to Linux
            conn.close()
            n, digest = _finish(p, 60).split()
        finally:
            stop_process(p)
        assert got == (SIZE, hashlib.sha256(_data(SIZE, seed)).hexdigest())
        assert int(n) == 68 and digest == hashlib.sha256(b"got " + got[1].encode()).hexdigest()


@pytest.mark.timeout(60)
def test_link_local_tcp_with_a_scope_both_ways(dual, qs, closing):
    ll = dual.linux_link_local()
    (fam, _t, _p, _c, sa), = qs.getaddrinfo(f"{ll}%p0", 5604, qs.AF_INET6, qs.SOCK_STREAM)
    assert sa[3] >= 2                                   # p0's index (lo is 1)
    p = dual.popen("sink", 5604)
    try:
        c = qs.socket(qs.AF_INET6, qs.SOCK_STREAM)
        closing(c)
        c.settimeout(WAIT)
        c.connect(sa)
        assert c.getpeername() == (ll, 5604, 0, sa[3])
        assert c.getsockname()[0] == dual.qnet_link_local() and c.getsockname()[3] == sa[3]
        c.sendall(b"on the link")
        c.close()
        peer, n, _digest = _finish(p, 30).split()
    finally:
        stop_process(p)
    assert peer.split("%")[0] == dual.qnet_link_local() and int(n) == 11
    # Without a scope, a link-local destination is EINVAL (Linux's answer too).
    bare = qs.socket(qs.AF_INET6, qs.SOCK_STREAM)
    closing(bare)
    with pytest.raises(OSError) as e:
        bare.connect((ll, 5604))
    assert e.value.errno == 22


# -- UDP ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_udp_over_ipv6_both_ways_and_ipv4_to_the_same_dual_socket(dual, qs, closing):
    p = dual.popen("udp", 5605)
    try:
        u = qs.socket(qs.AF_INET6, qs.SOCK_DGRAM)
        closing(u)
        u.bind(("::", 0))
        u.settimeout(5)
        u.setsockopt(qs.IPPROTO_IPV6, qs.IPV6_UNICAST_HOPS, 33)
        for i, size in enumerate((0, 1, 1232, 8000, 65000)):
            u.sendto(_data(size, i), (dual.linux6, 5605))
            seen = _seen(p)
            assert (seen["size"], seen["src"], seen["sport"], seen["hops"]) == (
                size, dual.qnet6, u.getsockname()[1], 33), seen
            assert seen["sha"] == hashlib.sha256(_data(size, i)).hexdigest()
            data, src = u.recvfrom(70000)               # Linux echoes it
            assert data == _data(size, i) and src == (dual.linux6, 5605, 0, 0)
        # Over IPv4 to the same socket's port: it sees the mapped source, answers by it.
        v4 = qs.socket(qs.AF_INET, qs.SOCK_DGRAM)
        closing(v4)
        v4.settimeout(5)
        v4.sendto(b"ipv4 to linux", (dual.linux4, 5605))
        seen = _seen(p)
        assert seen["src"] == f"::ffff:{dual.qnet4}" and seen["size"] == 13
        assert v4.recvfrom(100) == (b"ipv4 to linux", (dual.linux4, 5605))
        u.sendto(b"mapped", (f"::ffff:{dual.linux4}", 5605))
        seen = _seen(p)
        assert seen["src"] == f"::ffff:{dual.qnet4}" and seen["size"] == 6
        assert u.recvfrom(100) == (b"mapped", (f"::ffff:{dual.linux4}", 5605, 0, 0))
        u.sendto(b"quit", (dual.linux6, 5605))
        _finish(p, 10)
    finally:
        stop_process(p)
    # Linux to qnet over both versions, to one dual socket.
    r = qs.socket(qs.AF_INET6, qs.SOCK_DGRAM)
    closing(r)
    r.bind(("::", 5606))
    r.settimeout(5)
    for host, expected in ((dual.qnet6, dual.linux6), (dual.qnet4, f"::ffff:{dual.linux4}")):
        fam = "AF_INET6" if ":" in host else "AF_INET"
        dual.sh([NS_PYTHON, "-c", f"import socket;s=socket.socket(socket.{fam},socket.SOCK_DGRAM);"
                                  f"s.bind(('', 5607));s.sendto(b'x'*3000,('{host}',5606))"])
        data, src = r.recvfrom(5000)
        assert data == b"x" * 3000 and src == (expected, 5607, 0, 0)


@pytest.mark.timeout(60)
def test_link_local_udp_with_a_scope(dual, qs, closing):
    ll = dual.linux_link_local()
    scope = qs.getaddrinfo(f"{ll}%p0", 0, qs.AF_INET6, qs.SOCK_DGRAM)[0][4][3]
    p = dual.popen("udp", 5608)
    try:
        u = qs.socket(qs.AF_INET6, qs.SOCK_DGRAM)
        closing(u)
        u.settimeout(5)
        u.sendto(b"link-local", (ll, 5608, 0, scope))
        seen = _seen(p)
        assert seen["src"].split("%")[0] == dual.qnet_link_local() and seen["size"] == 10
        data, src = u.recvfrom(100)
        assert data == b"link-local" and src == (ll, 5608, 0, scope)
        u.sendto(b"quit", (ll, 5608, 0, scope))
        _finish(p, 10)
    finally:
        stop_process(p)


# -- Happy Eyeballs ----------------------------------------------------------------------------
@pytest.fixture
def names(dual, tmp_path, monkeypatch):
    """A hosts file for qnet.socket: each name has an IPv6 address that cannot answer and the
    Linux peer's IPv4 address."""
    hosts = tmp_path / "hosts"
    silent = dual.prefix + "dead"       # on the link, owned by no one: ND never answers
    hosts.write_text(f"{silent} hole.qnet.test\n{dual.linux4} hole.qnet.test\n"
                     f"2001:db8:ffff::1 noroute.qnet.test\n{dual.linux4} noroute.qnet.test\n"
                     f"{dual.linux6} both.qnet.test\n{dual.linux4} both.qnet.test\n")
    monkeypatch.setenv("QNET_HOSTS", str(hosts))
    return hosts


@pytest.mark.timeout(90)
def test_happy_eyeballs_falls_back_to_ipv4_when_ipv6_is_unreachable(dual, qs, closing, names, monkeypatch):
    # A black hole costs the attempt delay (not ND's 3 s nor the SYN retries'); no route costs
    # nothing: a failed attempt starts the next at once, shown with a delay far too long to
    # have passed.
    for name, delay, least, most in (("hole.qnet.test", 0.25, 0.2, 2.0),
                                     ("noroute.qnet.test", 5.0, 0.0, 2.5)):
        monkeypatch.setattr(qs, "CONNECTION_ATTEMPT_DELAY", delay)
        assert [ai[0] for ai in qs.getaddrinfo(name, 0, 0, qs.SOCK_STREAM)] == [qs.AF_INET6, qs.AF_INET]
        p = dual.popen("sink", 5609)
        try:
            t0 = time.monotonic()
            c = qs.create_connection((name, 5609), timeout=WAIT)
            took = time.monotonic() - t0
            closing(c)
            assert c.family == qs.AF_INET and c.getpeername() == (dual.linux4, 5609)
            assert least <= took < most, (name, took)
            c.sendall(b"by ipv4")
            c.close()
            peer, n, _ = _finish(p, 30).split()
        finally:
            stop_process(p)
        assert peer == f"::ffff:{dual.qnet4}" and int(n) == 7
    # With both reachable, IPv6 wins.
    p = dual.popen("sink", 5610)
    try:
        c = qs.create_connection(("both.qnet.test", 5610), timeout=WAIT)
        closing(c)
        assert c.family == qs.AF_INET6 and c.getpeername()[0] == dual.linux6
        c.close()
        peer, _n, _ = _finish(p, 30).split()
    finally:
        stop_process(p)
    assert peer == dual.qnet6
    # The attempt that lost is gone from netstack, not left handshaking.
    client = TcpClient(dual.g.run_dir)
    try:
        wait_for(lambda: not any(cn.get("remote") == dual.prefix + "dead"
                                 for cn in client.connections()["connections"]),
                 5.0, 0.1, "the IPv6 attempt to the black hole aborted")
    finally:
        client.close()
    assert not [t for t in threading.enumerate() if t.name == "qnet-happy-eyeballs"]


# -- restarts ----------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_a_dual_listener_keeps_both_families_across_netstack_and_provider_restarts(dual, qs, closing):
    srv = qs.socket(qs.AF_INET6, qs.SOCK_STREAM)
    closing(srv)
    srv.bind(("::", 5611))
    srv.listen()
    srv.settimeout(WAIT)
    for component in ("netstack", "sockets"):
        res = dual.g.qnet_json("restart", component, timeout=60)
        assert res["handed_over"], res
        dual.g.remember_pids()
        for host, seed in ((dual.qnet6, 5), (dual.qnet4, 6)):
            p = dual.popen("send", host, 5611, 1000, seed)
            try:
                conn, peer = srv.accept()
                closing(conn)
                conn.settimeout(WAIT)
                assert peer[0] == (dual.linux6 if ":" in host else f"::ffff:{dual.linux4}"), (component, peer)
                got = _recv_all(conn)
                conn.close()
                _finish(p, 30)
            finally:
                stop_process(p)
            assert got == (1000, hashlib.sha256(_data(1000, seed)).hexdigest()), component
