"""The socket API against the standard library's behaviour on the kernel: every test body runs
twice, on Python's `socket` (the Linux kernel's loopback) and on `qnet.socket` (qnet's own
loopback, through the socket provider and netstack of a real graph), and both must agree —
errno values, timeouts, non-blocking calls, readiness with select/selectors/asyncio,
SO_REUSEADDR rules, half-close, makefile(), UDP with its ancillary data, names.

What only qnet has (recv_many/send_many, QNET_HOSTS) or where qnet legitimately differs is
tested apart, with the reason beside it. Every wait is bounded; "nothing arrived" is proven
by a sentinel that arrives after it, never by a sleep.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import select
import selectors
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from tests.interop.util import QnetGraph, missing_prerequisite, run, wait_for

pytestmark = pytest.mark.interop

WAIT = 10.0                         # the bound of every blocking call in these tests
LO = "127.0.0.1"
SILENT = "198.51.100.77"            # TEST-NET-2: routed into a namespace that drops it
NON_LOCAL = "203.0.113.9"           # TEST-NET-3: no address of either stack


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qgraph():
    """A real qnet graph (the default one, with the sockets component); the in-process
    qnet.socket finds it through QNET_RUNTIME_DIR."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start()
    old = os.environ.get("QNET_RUNTIME_DIR")
    os.environ["QNET_RUNTIME_DIR"] = g.run_dir
    try:
        yield g
    finally:
        from qnet._session import session
        session().close()
        if old is None:
            os.environ.pop("QNET_RUNTIME_DIR", None)
        else:
            os.environ["QNET_RUNTIME_DIR"] = old
        g.stop()


@pytest.fixture(params=["kernel", "qnet"])
def api(request):
    """The module under test: the standard library's `socket` or `qnet.socket`."""
    if request.param == "kernel":
        return socket
    request.getfixturevalue("qgraph")
    from qnet import socket as qsocket
    return qsocket


@pytest.fixture
def qapi(qgraph):
    """qnet.socket alone, for what the standard module has no counterpart of."""
    from qnet import socket as qsocket
    return qsocket


@pytest.fixture
def closing():
    """Sockets (or anything with close()) a test opens, closed after it whatever happened."""
    items: list = []
    yield items.append
    for s in reversed(items):
        try:
            s.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def kernel_silent():
    """SILENT routed by the kernel through a veth into a namespace that does not forward:
    a SYN to it is dropped without an answer."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000:04d}"
    ns, a, b = f"qnsil{tag}", f"qsa{tag}", f"qsb{tag}"
    x = random.randrange(1, 250)
    try:
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        run(["ip", "link", "set", b, "netns", ns])
        run(["ip", "addr", "add", f"10.98.{x}.1/30", "dev", a])
        run(["ip", "link", "set", a, "up"])
        run(["ip", "-n", ns, "addr", "add", f"10.98.{x}.2/30", "dev", b])
        run(["ip", "-n", ns, "link", "set", b, "up"])
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        run(["ip", "route", "add", f"{SILENT}/32", "via", f"10.98.{x}.2"])
        yield SILENT
    finally:
        run(["ip", "route", "del", f"{SILENT}/32"], check=False)
        run(["ip", "link", "del", a], check=False)
        run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def qnet_silent(qgraph):
    """SILENT routed by qnet through a TAP port into a namespace that does not forward."""
    p = qgraph.add_ns_port("p0", random.randrange(1, 250))
    p.sh(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    qgraph.qnet("route", "add", f"{SILENT}/32", "via", p.linux_ip)
    return SILENT


@pytest.fixture
def silent(api, request):
    return request.getfixturevalue("kernel_silent" if api is socket else "qnet_silent")


# -- helpers ----------------------------------------------------------------------------------
def listener(api, closing, reuse: bool = False, backlog: int = 16):
    s = api.socket(api.AF_INET, api.SOCK_STREAM)
    closing(s)
    if reuse:
        s.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
    s.bind((LO, 0))
    s.listen(backlog)
    s.settimeout(WAIT)
    return s


def connected_pair(api, closing):
    """(listener, client, server): a TCP connection over 127.0.0.1, both ends with timeouts."""
    lst = listener(api, closing)
    c = api.create_connection(lst.getsockname(), timeout=WAIT)
    closing(c)
    srv, _ = lst.accept()
    closing(srv)
    srv.settimeout(WAIT)
    return lst, c, srv


def free_port(api) -> int:
    """A port nothing listens on (bound once, then released)."""
    s = api.socket(api.AF_INET, api.SOCK_STREAM)
    try:
        s.bind((LO, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def recv_exactly(s, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def udp(api, closing, addr=(LO, 0)):
    s = api.socket(api.AF_INET, api.SOCK_DGRAM)
    closing(s)
    s.settimeout(WAIT)
    if addr is not None:
        s.bind(addr)
    return s


class Thread(threading.Thread):
    """A thread whose exception is raised again by join()."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error, self.result = fn, args, None, None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:      # noqa: BLE001 -- handed to join()
            self.error = e

    def join(self, timeout=WAIT * 3):
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"{self.fn.__name__} did not finish in {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


# -- connect ----------------------------------------------------------------------------------
def test_connect_to_a_closed_port_is_refused(api, closing):
    port = free_port(api)
    s = api.socket(api.AF_INET, api.SOCK_STREAM)
    closing(s)
    s.settimeout(WAIT)
    with pytest.raises(ConnectionRefusedError) as e:
        s.connect((LO, port))
    assert e.value.errno == errno.ECONNREFUSED
    s2 = api.socket()
    closing(s2)
    assert s2.connect_ex((LO, port)) == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        api.create_connection((LO, port), timeout=WAIT)


def test_connect_to_a_silent_address_times_out(api, closing, silent):
    s = api.socket()
    closing(s)
    s.settimeout(0.5)
    t0 = time.monotonic()
    with pytest.raises(api.timeout) as e:
        s.connect((silent, 9))
    assert isinstance(e.value, TimeoutError)
    assert 0.4 <= time.monotonic() - t0 < 5.0
    with pytest.raises(TimeoutError):
        api.create_connection((silent, 9), timeout=0.5)


def test_nonblocking_connect_is_in_progress_then_writable_with_so_error_0(api, closing):
    lst = listener(api, closing)
    c = api.socket()
    closing(c)
    c.setblocking(False)
    assert c.connect_ex(lst.getsockname()) == errno.EINPROGRESS
    _, w, _ = select.select([], [c], [], WAIT)
    assert w == [c]
    assert c.getsockopt(api.SOL_SOCKET, api.SO_ERROR) == 0
    srv, peer = lst.accept()
    closing(srv)
    assert peer == c.getsockname()
    assert c.getpeername() == lst.getsockname()
    c.send(b"ping")
    srv.settimeout(WAIT)
    assert srv.recv(10) == b"ping"


def test_nonblocking_connect_to_a_closed_port_reports_econnrefused_in_so_error(api, closing):
    port = free_port(api)
    c = api.socket()
    closing(c)
    c.setblocking(False)
    assert c.connect_ex((LO, port)) == errno.EINPROGRESS
    _, w, _ = select.select([], [c], [], WAIT)
    assert w == [c]
    assert c.getsockopt(api.SOL_SOCKET, api.SO_ERROR) == errno.ECONNREFUSED
    # The error is read once; the socket stays unconnected.
    assert c.getsockopt(api.SOL_SOCKET, api.SO_ERROR) == 0
    with pytest.raises(OSError) as e:
        c.getpeername()
    assert e.value.errno == errno.ENOTCONN


# -- accept and recv without waiting ----------------------------------------------------------
def test_accept_on_a_nonblocking_listener_with_nothing_waiting_is_eagain(api, closing):
    lst = listener(api, closing)
    lst.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        lst.accept()
    assert e.value.errno == errno.EAGAIN
    lst.settimeout(0.2)
    with pytest.raises(api.timeout):
        lst.accept()


def test_recv_with_no_data_is_eagain_when_nonblocking_and_times_out_with_a_timeout(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    c.setblocking(False)
    assert c.gettimeout() == 0.0 and not c.getblocking()
    with pytest.raises(BlockingIOError) as e:
        c.recv(100)
    assert e.value.errno == errno.EAGAIN
    c.settimeout(0.2)
    assert c.getblocking()
    t0 = time.monotonic()
    with pytest.raises(api.timeout) as e2:
        c.recv(100)
    assert str(e2.value) == "timed out"
    assert time.monotonic() - t0 >= 0.15
    c.settimeout(None)
    assert c.gettimeout() is None
    with pytest.raises(BlockingIOError):
        c.recv(100, api.MSG_DONTWAIT)
    srv.sendall(b"x")
    assert c.recv(100) == b"x"


# -- readiness --------------------------------------------------------------------------------
def test_select_and_selectors_see_a_waiting_connection_and_data(api, closing):
    lst = listener(api, closing)
    assert select.select([lst], [], [], 0) == ([], [], [])
    c = api.create_connection(lst.getsockname(), timeout=WAIT)
    closing(c)
    with selectors.DefaultSelector() as sel:
        sel.register(lst, selectors.EVENT_READ, "listener")
        ready = sel.select(WAIT)
        assert [(k.data, ev) for k, ev in ready] == [("listener", selectors.EVENT_READ)]
        srv, _ = lst.accept()
        closing(srv)
        # Accepted: the listener is no longer readable.
        assert select.select([lst], [], [], 0)[0] == []
        sel.unregister(lst)
        sel.register(srv, selectors.EVENT_READ | selectors.EVENT_WRITE, "conn")
        ready = sel.select(WAIT)
        assert [(k.data, ev) for k, ev in ready] == [("conn", selectors.EVENT_WRITE)]
        sel.modify(srv, selectors.EVENT_READ, "conn")
        c.sendall(b"hello")
        ready = sel.select(WAIT)
        assert [(k.data, ev) for k, ev in ready] == [("conn", selectors.EVENT_READ)]
    assert srv.recv(100) == b"hello"
    c.close()
    assert select.select([srv], [], [], WAIT)[0] == [srv]
    assert srv.recv(100) == b""


def test_fileno_is_a_real_socket_fd(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    for s in (c, srv):
        assert stat.S_ISSOCK(os.fstat(s.fileno()).st_mode)
    p = select.poll()
    p.register(c.fileno(), select.POLLIN)
    srv.sendall(b"!")
    assert p.poll(WAIT * 1000) == [(c.fileno(), select.POLLIN)]
    assert c.recv(1) == b"!"
    u = udp(api, closing)
    assert stat.S_ISSOCK(os.fstat(u.fileno()).st_mode)


def test_asyncio_echo_server_and_clients(api, closing):
    # asyncio's create_server(host, port) and open_connection(host, port) make their sockets
    # with the standard module (`qnet run` swaps it); here the module under test makes them
    # and asyncio drives them: accept, connect, recv and send through readiness of their fds.
    lst = listener(api, closing, backlog=64)
    lst.setblocking(False)
    addr = lst.getsockname()

    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(i: int) -> bytes:
        s = api.socket()
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, addr)
        reader, writer = await asyncio.open_connection(sock=s)
        writer.write(f"hello {i}\n".encode() * 3)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got

    async def main():
        server = await asyncio.start_server(handle, sock=lst)
        async with server:
            return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(20))), WAIT * 2)

    results = asyncio.run(main())
    assert results == [f"HELLO {i}\n".encode() * 3 for i in range(20)]


# -- bind and SO_REUSEADDR --------------------------------------------------------------------
def test_bind_to_a_listening_port_is_eaddrinuse_with_or_without_so_reuseaddr(api, closing):
    lst = listener(api, closing, reuse=True)
    for reuse in (False, True):
        s = api.socket()
        closing(s)
        if reuse:
            s.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as e:
            s.bind(lst.getsockname())
        assert e.value.errno == errno.EADDRINUSE
    wild = api.socket()
    closing(wild)
    wild.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
    with pytest.raises(OSError) as e:
        wild.bind(("0.0.0.0", lst.getsockname()[1]))
    assert e.value.errno == errno.EADDRINUSE


def test_two_binds_with_so_reuseaddr_share_a_port_until_one_listens(api, closing):
    a = api.socket()
    closing(a)
    a.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
    a.bind((LO, 0))
    b = api.socket()
    closing(b)
    b.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
    b.bind(a.getsockname())
    a.listen()
    with pytest.raises(OSError) as e:
        b.listen()
    assert e.value.errno == errno.EADDRINUSE
    plain = api.socket()
    closing(plain)
    with pytest.raises(OSError) as e:
        plain.bind(a.getsockname())
    assert e.value.errno == errno.EADDRINUSE


def test_bind_to_a_time_wait_port_needs_so_reuseaddr(api, closing):
    lst = listener(api, closing, reuse=True)
    addr = lst.getsockname()
    c = api.create_connection(addr, timeout=WAIT)
    closing(c)
    srv, _ = lst.accept()
    srv.settimeout(WAIT)
    lst.close()
    srv.close()                           # the server closes first: its end goes to TIME-WAIT
    assert c.recv(10) == b""
    c.close()
    plain = api.socket()
    closing(plain)
    with pytest.raises(OSError) as e:
        plain.bind(addr)
    assert e.value.errno == errno.EADDRINUSE
    again = api.socket()
    closing(again)
    again.setsockopt(api.SOL_SOCKET, api.SO_REUSEADDR, 1)
    again.bind(addr)
    again.listen()
    again.settimeout(WAIT)
    c2 = api.create_connection(addr, timeout=WAIT)
    closing(c2)
    s2, _ = again.accept()
    closing(s2)
    c2.sendall(b"again")
    s2.settimeout(WAIT)
    assert s2.recv(10) == b"again"


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_bind_to_an_address_not_of_this_host_is_eaddrnotavail(api, closing, kind):
    s = api.socket(api.AF_INET, api.SOCK_STREAM if kind == "tcp" else api.SOCK_DGRAM)
    closing(s)
    with pytest.raises(OSError) as e:
        s.bind((NON_LOCAL, 0))
    assert e.value.errno == errno.EADDRNOTAVAIL


def test_bind_twice_is_einval_and_listen_on_udp_is_eopnotsupp(api, closing):
    s = api.socket()
    closing(s)
    s.bind((LO, 0))
    with pytest.raises(OSError) as e:
        s.bind((LO, 0))
    assert e.value.errno == errno.EINVAL
    u = udp(api, closing)
    with pytest.raises(OSError) as e:
        u.listen()
    assert e.value.errno == errno.EOPNOTSUPP


# -- names of the ends ------------------------------------------------------------------------
def test_getsockname_and_getpeername_of_both_ends(api, closing):
    fresh = api.socket()
    closing(fresh)
    assert fresh.getsockname() == ("0.0.0.0", 0)
    lst, c, srv = connected_pair(api, closing)
    assert lst.getsockname()[0] == LO and lst.getsockname()[1] > 0
    assert c.getpeername() == lst.getsockname()
    assert srv.getsockname() == lst.getsockname()
    assert srv.getpeername() == c.getsockname()
    assert c.getsockname()[0] == LO
    assert c.family == api.AF_INET and c.type == api.SOCK_STREAM
    assert c.getsockopt(api.SOL_SOCKET, api.SO_TYPE) == api.SOCK_STREAM
    assert lst.getsockopt(api.SOL_SOCKET, api.SO_ACCEPTCONN) == 1
    assert c.getsockopt(api.SOL_SOCKET, api.SO_ERROR) == 0


def test_unconnected_tcp_socket_is_enotconn(api, closing):
    s = api.socket()
    closing(s)
    for call in (s.getpeername, lambda: s.recv(10), lambda: s.shutdown(api.SHUT_RDWR)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.ENOTCONN
    # Linux answers a send on a TCP socket that never connected with EPIPE (tcp_sendmsg).
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EPIPE


# -- closing ----------------------------------------------------------------------------------
def test_half_close_peer_reads_eof_and_can_still_send(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    c.sendall(b"request")
    c.shutdown(api.SHUT_WR)
    assert recv_exactly(srv, 7) == b"request"
    assert srv.recv(100) == b""
    srv.sendall(b"answer after EOF")
    srv.shutdown(api.SHUT_WR)
    assert recv_exactly(c, 16) == b"answer after EOF"
    assert c.recv(100) == b""


def test_reset_by_peer_with_so_linger_0_is_econnreset(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    srv.setsockopt(api.SOL_SOCKET, api.SO_LINGER, struct.pack("ii", 1, 0))
    assert struct.unpack("ii", srv.getsockopt(api.SOL_SOCKET, api.SO_LINGER, 8)) == (1, 0)
    srv.close()
    with pytest.raises(ConnectionResetError) as e:
        c.recv(100)
    assert e.value.errno == errno.ECONNRESET


def test_send_after_the_peer_closed_is_epipe(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    srv.close()
    assert c.recv(100) == b""              # the peer's FIN
    deadline = time.monotonic() + WAIT
    with pytest.raises(BrokenPipeError) as e:
        # The first send is accepted and answered by a reset; a later one fails.
        while time.monotonic() < deadline:
            c.send(b"x" * 100)
            time.sleep(0.01)
    assert e.value.errno == errno.EPIPE


def test_context_manager_closes_the_fd(api, closing):
    with api.socket() as s:
        fd = s.fileno()
        assert fd >= 0
        s.bind((LO, 0))
        s.listen()
        port = s.getsockname()[1]
    assert s.fileno() == -1
    with pytest.raises(OSError) as e:
        s.getsockname()
    assert e.value.errno == errno.EBADF
    with api.create_server((LO, port)) as srv:       # the port is free again
        assert srv.getsockname() == (LO, port)
    assert srv.fileno() == -1


# -- bytes ------------------------------------------------------------------------------------
def test_makefile_line_protocol(api, closing):
    lst = listener(api, closing)

    def serve():
        conn, _ = lst.accept()
        with conn, conn.makefile("rb") as rf, conn.makefile("wb") as wf:
            for line in rf:
                if line == b"QUIT\n":
                    break
                wf.write(b"echo: " + line)
                wf.flush()
            wf.write(b"bye\n")

    t = Thread(serve)
    t.start()
    c = api.create_connection(lst.getsockname(), timeout=WAIT)
    closing(c)
    rf, wf = c.makefile("rb"), c.makefile("wb", buffering=0)
    closing(rf)
    closing(wf)
    for i in range(50):
        wf.write(f"line {i}\n".encode())
        assert rf.readline() == f"echo: line {i}\n".encode()
    wf.write(b"QUIT\n")
    assert rf.readline() == b"bye\n"
    assert rf.readline() == b""
    t.join()
    text = c.makefile("r", encoding="ascii")
    closing(text)
    assert text.read() == ""


def test_sendall_5mb_both_ways_is_sha256_exact(api, closing):
    size = 5 << 20
    up, down = random.Random(1).randbytes(size), random.Random(2).randbytes(size)
    _lst, c, srv = connected_pair(api, closing)
    c.settimeout(60)
    srv.settimeout(60)

    def server():
        got = recv_exactly(srv, size)
        return hashlib.sha256(got).hexdigest()

    def server_send():
        srv.sendall(down)

    t1, t2 = Thread(server), Thread(server_send)
    t1.start()
    t2.start()
    c.sendall(up)
    got = recv_exactly(c, size)
    assert t1.join(60) == hashlib.sha256(up).hexdigest()
    t2.join(60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()


# -- UDP --------------------------------------------------------------------------------------
def test_udp_sendto_and_recvfrom_to_itself(api, closing):
    s = udp(api, closing)
    addr = s.getsockname()
    assert addr[0] == LO and addr[1] > 0
    assert s.sendto(b"to myself", addr) == 9
    assert s.recvfrom(100) == (b"to myself", addr)
    # An unbound socket gets an ephemeral port on its first send.
    u = udp(api, closing, addr=None)
    assert u.getsockname() == ("0.0.0.0", 0)
    u.sendto(b"from elsewhere", addr)
    data, src = s.recvfrom(100)
    assert data == b"from elsewhere" and src[1] == u.getsockname()[1] and src[1] > 0
    # recvfrom truncates to the buffer and drops the rest, as the kernel does.
    s.sendto(b"0123456789", addr)
    assert s.recvfrom(4) == (b"0123", addr)
    s.sendto(b"next", addr)
    assert s.recv(100) == b"next"


def test_udp_recv_without_data(api, closing):
    s = udp(api, closing)
    s.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        s.recvfrom(100)
    assert e.value.errno == errno.EAGAIN
    s.settimeout(0.2)
    with pytest.raises(api.timeout):
        s.recvfrom(100)
    assert select.select([s], [], [], 0)[0] == []
    s.sendto(b"now", s.getsockname())
    assert select.select([s], [], [], WAIT)[0] == [s]


def test_connected_udp_socket_takes_datagrams_only_from_its_peer(api, closing):
    r, peer, other = udp(api, closing), udp(api, closing), udp(api, closing)
    r.connect(peer.getsockname())
    assert r.getpeername() == peer.getsockname()
    other.sendto(b"not for you", r.getsockname())
    peer.sendto(b"sentinel", r.getsockname())
    assert r.recvfrom(100) == (b"sentinel", peer.getsockname())
    r.send(b"back")                        # to the connected peer
    assert peer.recvfrom(100) == (b"back", r.getsockname())
    assert other.getsockname() != peer.getsockname()


def _cmsgs(anc) -> dict:
    return {(lvl, typ): data for lvl, typ, data in anc}


def test_recvmsg_reports_pktinfo_ttl_and_tos(api, closing):
    ip_pktinfo = getattr(api, "IP_PKTINFO", 8)       # Python 3.11's socket lacks the name
    ip_recvttl = getattr(api, "IP_RECVTTL", 12)
    r, s = udp(api, closing), udp(api, closing)
    r.setsockopt(api.IPPROTO_IP, ip_pktinfo, 1)
    r.setsockopt(api.IPPROTO_IP, ip_recvttl, 1)
    r.setsockopt(api.IPPROTO_IP, api.IP_RECVTOS, 1)
    s.setsockopt(api.IPPROTO_IP, api.IP_TTL, 33)
    s.setsockopt(api.IPPROTO_IP, api.IP_TOS, 0x28)
    assert s.getsockopt(api.IPPROTO_IP, api.IP_TTL) == 33
    assert s.getsockopt(api.IPPROTO_IP, api.IP_TOS) == 0x28
    s.sendto(b"marked", r.getsockname())
    data, anc, flags, src = r.recvmsg(100, 256)
    assert (data, flags, src) == (b"marked", 0, s.getsockname())
    assert [(lvl, typ) for lvl, typ, _ in anc] == [(api.IPPROTO_IP, ip_pktinfo), (api.IPPROTO_IP, api.IP_TTL),
                                                   (api.IPPROTO_IP, api.IP_TOS)]
    cm = _cmsgs(anc)
    ifindex, spec_dst, dst = struct.unpack("=i4s4s", cm[(api.IPPROTO_IP, ip_pktinfo)])
    assert ifindex > 0
    assert socket.inet_ntoa(spec_dst) == LO and socket.inet_ntoa(dst) == LO
    assert struct.unpack("=i", cm[(api.IPPROTO_IP, api.IP_TTL)])[0] == 33
    assert cm[(api.IPPROTO_IP, api.IP_TOS)] == bytes([0x28])
    # Without the options, no ancillary data; a short buffer is MSG_TRUNC.
    plain = udp(api, closing)
    s.sendto(b"0123456789", plain.getsockname())
    data, anc, flags, _ = plain.recvmsg(4, 256)
    assert (data, anc, flags & api.MSG_TRUNC) == (b"0123", [], api.MSG_TRUNC)


def test_sendmsg_with_ip_ttl_and_ip_tos_ancillary_data(api, closing):
    ip_recvttl = getattr(api, "IP_RECVTTL", 12)
    r, s = udp(api, closing), udp(api, closing)
    r.setsockopt(api.IPPROTO_IP, ip_recvttl, 1)
    r.setsockopt(api.IPPROTO_IP, api.IP_RECVTOS, 1)
    n = s.sendmsg([b"two ", b"parts"], [(api.IPPROTO_IP, api.IP_TTL, struct.pack("=i", 7)),
                                         (api.IPPROTO_IP, api.IP_TOS, struct.pack("=i", 0x10))],
                  0, r.getsockname())
    assert n == 9
    s.sendto(b"default", r.getsockname())
    data, anc, _f, src = r.recvmsg(100, 256)
    cm = _cmsgs(anc)
    assert (data, src) == (b"two parts", s.getsockname())
    assert struct.unpack("=i", cm[(api.IPPROTO_IP, api.IP_TTL)])[0] == 7
    assert cm[(api.IPPROTO_IP, api.IP_TOS)] == b"\x10"
    data, anc, _f, _ = r.recvmsg(100, 256)
    cm = _cmsgs(anc)
    assert data == b"default"
    assert struct.unpack("=i", cm[(api.IPPROTO_IP, api.IP_TTL)])[0] == 64
    assert cm[(api.IPPROTO_IP, api.IP_TOS)] == b"\x00"


def test_udp_largest_datagram_crosses_and_a_larger_one_is_emsgsize(api, closing):
    r, s = udp(api, closing), udp(api, closing)
    big = random.Random(3).randbytes(65507)
    with pytest.raises(OSError) as e:
        s.sendto(big + b"!", r.getsockname())
    assert e.value.errno == errno.EMSGSIZE
    s.sendto(big, r.getsockname())
    assert r.recvfrom(70000) == (big, s.getsockname())


def test_udp_broadcast_without_so_broadcast_is_eacces(api, closing):
    s = udp(api, closing)
    with pytest.raises(PermissionError) as e:
        s.sendto(b"x", ("255.255.255.255", 9))
    assert e.value.errno == errno.EACCES


def test_udp_send_on_unconnected_socket_is_edestaddrreq(api, closing):
    s = udp(api, closing)
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EDESTADDRREQ
    with pytest.raises(OSError) as e:
        s.getpeername()
    assert e.value.errno == errno.ENOTCONN


def test_recv_many_and_send_many_move_batches(qapi, closing):
    # qnet's batched calls (like recvmmsg/sendmmsg); the standard module has none.
    r, s = udp(qapi, closing), udp(qapi, closing)
    batch = [(f"d{i}".encode() * (i + 1), r.getsockname()) for i in range(40)]
    assert s.send_many(batch) == 40
    got: list = []
    deadline = time.monotonic() + WAIT
    while len(got) < 40 and time.monotonic() < deadline:
        got += r.recv_many(64)
    assert got == [(d, s.getsockname()) for d, _ in batch]
    s.connect(r.getsockname())
    assert s.send_many([(b"a", None), (b"b", None)]) == 2
    out = r.recv_many(1)
    assert out == [(b"a", s.getsockname())]
    assert r.recv_many(8) == [(b"b", s.getsockname())]


# -- names ------------------------------------------------------------------------------------
def test_getaddrinfo_of_numeric_hosts_and_localhost(api):
    assert api.getaddrinfo(LO, 80, api.AF_INET, api.SOCK_STREAM) == [
        (api.AF_INET, api.SOCK_STREAM, api.IPPROTO_TCP, "", (LO, 80))]
    assert api.getaddrinfo(LO, "http", api.AF_INET, api.SOCK_STREAM)[0][4] == (LO, 80)
    assert [(f, t, p) for f, t, p, _c, _a in api.getaddrinfo("10.1.2.3", 53)] == [
        (api.AF_INET, api.SOCK_STREAM, api.IPPROTO_TCP), (api.AF_INET, api.SOCK_DGRAM, api.IPPROTO_UDP),
        (api.AF_INET, api.SOCK_RAW, 0)]
    assert {ai[4] for ai in api.getaddrinfo("localhost", 8080, api.AF_INET, api.SOCK_STREAM)} == {(LO, 8080)}
    assert api.gethostbyname("localhost") == LO
    assert api.gethostbyname("10.1.2.3") == "10.1.2.3"
    assert api.getaddrinfo(None, 0, api.AF_INET, api.SOCK_STREAM, 0, api.AI_PASSIVE)[0][4] == ("0.0.0.0", 0)


def test_unknown_names_are_gaierror(api):
    with pytest.raises(api.gaierror) as e:
        api.getaddrinfo("no-such-host.invalid", 80)
    assert e.value.errno == api.EAI_NONAME
    with pytest.raises(api.gaierror) as e:
        api.getaddrinfo("localhost", 80, api.AF_INET, api.SOCK_STREAM, 0, api.AI_NUMERICHOST)
    assert e.value.errno == api.EAI_NONAME
    with pytest.raises(api.gaierror):
        api.gethostbyname("no-such-host.invalid")


def test_names_from_the_hosts_file(api):
    # Both read /etc/hosts (qnet: QNET_HOSTS, by default /etc/hosts).
    with open("/etc/hosts") as f:
        entries = [ln.split("#")[0].split() for ln in f]
    name, addr = next((e[1], e[0]) for e in entries if len(e) >= 2 and "." in e[0] and e[1] != "localhost")
    assert api.gethostbyname(name) == addr


def test_qnet_hosts_names_a_hosts_file_of_its_own(qapi, tmp_path, monkeypatch):
    # The kernel's resolver reads /etc/hosts only; QNET_HOSTS is qnet's.
    hosts = tmp_path / "hosts"
    hosts.write_text("# test\n10.9.8.7  web.qnet.test web  # a comment\n10.9.8.8 db.qnet.test\n")
    monkeypatch.setenv("QNET_HOSTS", str(hosts))
    assert qapi.gethostbyname("web.qnet.test") == "10.9.8.7"
    assert qapi.gethostbyname("WEB") == "10.9.8.7"
    assert qapi.getaddrinfo("db.qnet.test", 5432, qapi.AF_INET, qapi.SOCK_STREAM)[0][4] == ("10.9.8.8", 5432)
    assert qapi.gethostbyname_ex("web.qnet.test")[2] == ["10.9.8.7"]
    with pytest.raises(qapi.gaierror):
        qapi.gethostbyname("mail.qnet.test")


# -- module helpers ---------------------------------------------------------------------------
def test_create_server_and_create_connection(api, closing):
    srv = api.create_server((LO, 0), backlog=8)
    closing(srv)
    assert srv.getsockopt(api.SOL_SOCKET, api.SO_REUSEADDR) != 0
    srv.settimeout(WAIT)
    c = api.create_connection(srv.getsockname(), timeout=WAIT, source_address=(LO, 0))
    closing(c)
    assert c.gettimeout() == WAIT
    conn, peer = srv.accept()
    closing(conn)
    assert peer == c.getsockname()
    conn.sendall(b"welcome")
    assert c.recv(100) == b"welcome"
    if api is not socket:
        assert isinstance(c, api.socket) and c._q is not None


def test_socketpair_is_a_connected_pair(api, closing):
    a, b = api.socketpair()
    closing(a)
    closing(b)
    a.sendall(b"over the pair")
    b.settimeout(WAIT)
    assert b.recv(100) == b"over the pair"
    assert a.family == api.AF_UNIX


def test_reset_is_reported_once_then_eof_and_epipe(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    srv.setsockopt(api.SOL_SOCKET, api.SO_LINGER, struct.pack("ii", 1, 0))
    srv.close()
    with pytest.raises(ConnectionResetError):
        c.recv(100)
    # Linux reports a socket's error once (sk_err); the connection is then closed.
    assert c.recv(100) == b""
    with pytest.raises(BrokenPipeError):
        c.send(b"x")


def test_nonblocking_send_fills_up_to_eagain_then_becomes_writable(api, closing):
    _lst, c, srv = connected_pair(api, closing)
    c.setblocking(False)
    chunk = b"z" * 65536
    sent = 0
    with pytest.raises(BlockingIOError) as e:
        while sent < 256 << 20:
            sent += c.send(chunk)
    assert e.value.errno == errno.EAGAIN
    assert select.select([], [c], [], 0)[1] == []
    got = 0
    while got < sent:
        got += len(srv.recv(1 << 20))
        if select.select([], [c], [], 0)[1]:
            break
    assert select.select([], [c], [], WAIT)[1] == [c]


def test_connected_udp_to_a_closed_port_is_refused_on_the_next_call(api, closing):
    port = free_port(api)
    s = udp(api, closing)
    s.connect((LO, port))
    s.send(b"anyone?")
    # The port unreachable comes back; Linux reports it on the next call of a connected socket.
    with pytest.raises(ConnectionRefusedError):
        s.recv(100)


# -- IPv6 (issue 12): AF_INET6 over ::1, dual stack, IPV6_V6ONLY, 4-tuple names ---------------
LO6 = "::1"
MAPPED_LO = "::ffff:127.0.0.1"


def listener6(api, closing, host=LO6, v6only=None, backlog: int = 16):
    s = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(s)
    if v6only is not None:
        s.setsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    s.listen(backlog)
    s.settimeout(WAIT)
    return s


def udp6(api, closing, addr=(LO6, 0), v6only=None):
    s = api.socket(api.AF_INET6, api.SOCK_DGRAM)
    closing(s)
    s.settimeout(WAIT)
    if v6only is not None:
        s.setsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY, int(v6only))
    if addr is not None:
        s.bind(addr)
    return s


def test_ipv6_tcp_over_loopback_has_4_tuple_names(api, closing):
    fresh = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(fresh)
    assert fresh.getsockname() == ("::", 0, 0, 0)
    assert fresh.family == api.AF_INET6 and fresh.getsockopt(api.SOL_SOCKET, api.SO_DOMAIN) == api.AF_INET6
    lst = listener6(api, closing)
    host, port, flowinfo, scope = lst.getsockname()
    assert (host, flowinfo, scope) == (LO6, 0, 0) and port > 0
    c = api.create_connection((LO6, port), timeout=WAIT)
    closing(c)
    srv, peer = lst.accept()
    closing(srv)
    srv.settimeout(WAIT)
    assert peer == c.getsockname() and c.getpeername() == lst.getsockname()
    assert srv.getsockname() == (LO6, port, 0, 0) and c.family == api.AF_INET6
    c.sendall(b"over ipv6")
    assert recv_exactly(srv, 9) == b"over ipv6"
    # A 3-tuple is a sockaddr too; the flow label's range is checked.
    c3 = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(c3)
    c3.settimeout(WAIT)
    c3.connect((LO6, port, 0))
    s3, _ = lst.accept()
    closing(s3)
    with pytest.raises(OverflowError):
        api.socket(api.AF_INET6).connect((LO6, port, 1 << 20))
    with pytest.raises(TypeError):
        api.socket(api.AF_INET6).connect((LO6,))


def test_an_ipv4_literal_on_an_ipv6_socket_and_the_reverse_are_gaierror(api, closing):
    s6 = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(s6)
    with pytest.raises(api.gaierror) as e:
        s6.bind((LO, 0))
    assert e.value.errno == api.EAI_ADDRFAMILY
    s4 = api.socket(api.AF_INET, api.SOCK_STREAM)
    closing(s4)
    with pytest.raises(api.gaierror) as e:
        s4.connect((LO6, 80))
    assert e.value.errno == api.EAI_ADDRFAMILY


def test_a_dual_stack_listener_takes_ipv4_as_mapped_addresses(api, closing):
    lst = listener6(api, closing, host="::")
    assert lst.getsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY) == 0       # Linux's default
    port = lst.getsockname()[1]
    c4 = api.create_connection((LO, port), timeout=WAIT)
    closing(c4)
    srv, peer = lst.accept()
    closing(srv)
    srv.settimeout(WAIT)
    assert peer == (MAPPED_LO, c4.getsockname()[1], 0, 0)
    assert srv.getsockname() == (MAPPED_LO, port, 0, 0) and c4.getpeername() == (LO, port)
    c4.sendall(b"ipv4 in")
    assert recv_exactly(srv, 7) == b"ipv4 in"
    srv.sendall(b"mapped out")
    assert recv_exactly(c4, 10) == b"mapped out"
    c6 = api.create_connection((LO6, port), timeout=WAIT)
    closing(c6)
    s6, peer6 = lst.accept()
    closing(s6)
    assert peer6 == c6.getsockname() and peer6[0] == LO6
    # The port is held on IPv4's side too.
    taken = api.socket(api.AF_INET, api.SOCK_STREAM)
    closing(taken)
    with pytest.raises(OSError) as e:
        taken.bind(("0.0.0.0", port))
    assert e.value.errno == errno.EADDRINUSE


def test_a_v6only_listener_refuses_ipv4_and_leaves_its_port_free(api, closing):
    lst = listener6(api, closing, host="::", v6only=True)
    assert lst.getsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY) == 1
    port = lst.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        api.create_connection((LO, port), timeout=WAIT)
    four = api.socket(api.AF_INET, api.SOCK_STREAM)
    closing(four)
    four.bind((LO, port))
    # IPV6_V6ONLY is set before bind or not at all (Linux: EINVAL once bound).
    with pytest.raises(OSError) as e:
        lst.setsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY, 0)
    assert e.value.errno == errno.EINVAL


def test_a_dual_bind_needs_the_port_on_both_sides(api, closing):
    four = listener(api, closing)
    port = four.getsockname()[1]
    dual = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(dual)
    with pytest.raises(OSError) as e:
        dual.bind(("::", port))
        dual.listen()                       # qnet learns of the IPv4 listener's port here at the latest
    assert e.value.errno == errno.EADDRINUSE
    only6 = listener6(api, closing, host="::", v6only=True)
    assert only6.getsockname()[1] > 0


def test_an_ipv6_socket_reaches_ipv4_through_a_mapped_address_unless_v6only(api, closing):
    four = listener(api, closing)
    port = four.getsockname()[1]
    s = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(s)
    s.settimeout(WAIT)
    s.connect((MAPPED_LO, port))
    assert s.getpeername() == (MAPPED_LO, port, 0, 0) and s.getsockname()[0] == MAPPED_LO
    srv, peer = four.accept()
    closing(srv)
    assert peer == (LO, s.getsockname()[1])
    only6 = api.socket(api.AF_INET6, api.SOCK_STREAM)
    closing(only6)
    only6.setsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY, 1)
    with pytest.raises(OSError) as e:
        only6.connect((MAPPED_LO, port))
    assert e.value.errno == errno.ENETUNREACH


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_ipv6_bind_to_an_address_not_ours_or_link_local_without_a_scope(api, closing, kind):
    t = api.SOCK_STREAM if kind == "tcp" else api.SOCK_DGRAM
    s = api.socket(api.AF_INET6, t)
    closing(s)
    with pytest.raises(OSError) as e:
        s.bind(("2001:db8::99", 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    s2 = api.socket(api.AF_INET6, t)
    closing(s2)
    with pytest.raises(OSError) as e:
        s2.bind(("fe80::1", 0))
    assert e.value.errno == errno.EINVAL


def test_ipv6_options_belong_to_ipv6_sockets(api, closing):
    s4 = api.socket(api.AF_INET, api.SOCK_DGRAM)
    closing(s4)
    with pytest.raises(OSError) as e:
        s4.setsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY, 1)
    assert e.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as e:
        s4.getsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY)
    assert e.value.errno == errno.EOPNOTSUPP
    s6 = api.socket(api.AF_INET6, api.SOCK_DGRAM)
    closing(s6)
    assert s6.getsockopt(api.IPPROTO_IPV6, api.IPV6_UNICAST_HOPS) == 64


def test_ipv6_udp_and_dual_stack_datagrams(api, closing):
    r = udp6(api, closing, addr=("::", 0))
    port = r.getsockname()[1]
    assert r.getsockname() == ("::", port, 0, 0)
    s6 = udp6(api, closing)
    s6.sendto(b"from ::1", (LO6, port))
    assert r.recvfrom(100) == (b"from ::1", s6.getsockname())
    s4 = udp(api, closing)
    s4.sendto(b"from 127.0.0.1", (LO, port))
    data, src = r.recvfrom(100)
    assert (data, src) == (b"from 127.0.0.1", (MAPPED_LO, s4.getsockname()[1], 0, 0))
    r.sendto(b"back over ipv4", src)
    assert s4.recvfrom(100) == (b"back over ipv4", (LO, port))
    r.sendto(b"back over ipv6", s6.getsockname())
    assert s6.recvfrom(100) == (b"back over ipv6", (LO6, port, 0, 0))
    # An IPv6-only socket takes nothing over IPv4 (the sentinel proves it).
    only6 = udp6(api, closing, addr=("::", 0), v6only=True)
    s4.sendto(b"lost", (LO, only6.getsockname()[1]))
    s6.sendto(b"sentinel", (LO6, only6.getsockname()[1]))
    assert only6.recvfrom(100)[0] == b"sentinel"
    big = random.Random(6).randbytes(65507)
    s6.sendto(big, (LO6, port))
    assert r.recvfrom(70000) == (big, s6.getsockname())


def test_ipv6_recvmsg_reports_pktinfo_hoplimit_and_tclass(api, closing):
    r, s = udp6(api, closing), udp6(api, closing)
    for opt in (api.IPV6_RECVPKTINFO, api.IPV6_RECVHOPLIMIT, api.IPV6_RECVTCLASS):
        r.setsockopt(api.IPPROTO_IPV6, opt, 1)
    s.setsockopt(api.IPPROTO_IPV6, api.IPV6_UNICAST_HOPS, 33)
    s.setsockopt(api.IPPROTO_IPV6, api.IPV6_TCLASS, 0x28)
    assert s.getsockopt(api.IPPROTO_IPV6, api.IPV6_UNICAST_HOPS) == 33
    assert s.getsockopt(api.IPPROTO_IPV6, api.IPV6_TCLASS) == 0x28
    s.sendto(b"marked", r.getsockname())
    data, anc, flags, src = r.recvmsg(100, 256)
    assert (data, flags, src) == (b"marked", 0, s.getsockname())
    assert [(lvl, typ) for lvl, typ, _ in anc] == [(api.IPPROTO_IPV6, api.IPV6_PKTINFO),
                                                   (api.IPPROTO_IPV6, api.IPV6_HOPLIMIT),
                                                   (api.IPPROTO_IPV6, api.IPV6_TCLASS)]
    cm = _cmsgs(anc)
    dst, ifindex = struct.unpack("=16si", cm[(api.IPPROTO_IPV6, api.IPV6_PKTINFO)])
    assert socket.inet_ntop(socket.AF_INET6, dst) == LO6 and ifindex == 1      # lo is 1 in both
    assert struct.unpack("=i", cm[(api.IPPROTO_IPV6, api.IPV6_HOPLIMIT)])[0] == 33
    assert struct.unpack("=i", cm[(api.IPPROTO_IPV6, api.IPV6_TCLASS)])[0] == 0x28
    # Per message, by ancillary data.
    s.sendmsg([b"per ", b"message"], [(api.IPPROTO_IPV6, api.IPV6_HOPLIMIT, struct.pack("=i", 7))], 0,
              r.getsockname())
    data, anc, _f, _src = r.recvmsg(100, 256)
    assert data == b"per message"
    assert struct.unpack("=i", _cmsgs(anc)[(api.IPPROTO_IPV6, api.IPV6_HOPLIMIT)])[0] == 7


def test_connected_ipv6_udp_to_a_closed_port_is_refused_on_the_next_call(api, closing):
    dead = udp6(api, closing)
    dead_port = dead.getsockname()[1]
    dead.close()
    s = udp6(api, closing)
    s.connect((LO6, dead_port))
    assert s.getpeername() == (LO6, dead_port, 0, 0)
    s.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        s.recv(100)


def test_getaddrinfo_of_ipv6_literals(api):
    assert api.getaddrinfo(LO6, 80, api.AF_INET6, api.SOCK_STREAM) == [
        (api.AF_INET6, api.SOCK_STREAM, api.IPPROTO_TCP, "", (LO6, 80, 0, 0))]
    assert api.getaddrinfo(LO6, 80, 0, api.SOCK_STREAM)[0][4] == (LO6, 80, 0, 0)
    assert api.getaddrinfo("fe80::1%lo", 80, api.AF_INET6, api.SOCK_STREAM)[0][4] == ("fe80::1", 80, 0, 1)
    assert api.getaddrinfo("fe80::1%1", 80, api.AF_INET6, api.SOCK_DGRAM)[0][4] == ("fe80::1", 80, 0, 1)
    assert api.getaddrinfo("::ffff:1.2.3.4", 80, 0, api.SOCK_STREAM)[0][4] == ("::ffff:1.2.3.4", 80, 0, 0)
    assert api.getaddrinfo(LO6, 80, 0, api.SOCK_STREAM, 0, api.AI_NUMERICHOST)[0][0] == api.AF_INET6
    assert api.getaddrinfo(None, 80, api.AF_INET6, api.SOCK_STREAM, 0, api.AI_PASSIVE)[0][4] == ("::", 80, 0, 0)
    assert [ai[4] for ai in api.getaddrinfo(None, 80, 0, api.SOCK_STREAM)] == [(LO6, 80, 0, 0), (LO, 80)]
    assert [ai[4] for ai in api.getaddrinfo(None, 80, 0, api.SOCK_STREAM, 0, api.AI_PASSIVE)] == [
        ("0.0.0.0", 80), ("::", 80, 0, 0)]
    for host, fam in ((LO6, api.AF_INET), (LO, api.AF_INET6)):
        with pytest.raises(api.gaierror) as e:
            api.getaddrinfo(host, 80, fam)
        assert e.value.errno == api.EAI_ADDRFAMILY
    for bad in ("2001:db8::1%lo", "fe80::1%no-such-port", "[::1]"):
        with pytest.raises(api.gaierror) as e:
            api.getaddrinfo(bad, 80, api.AF_INET6)
        assert e.value.errno == api.EAI_NONAME
    with pytest.raises(api.gaierror) as e:
        api.gethostbyname(LO6)
    assert e.value.errno == api.EAI_ADDRFAMILY
    assert api.getnameinfo((LO6, 80, 0, 0), api.NI_NUMERICHOST | api.NI_NUMERICSERV) == (LO6, "80")
    assert api.getnameinfo(("fe80::1", 80, 0, 1), api.NI_NUMERICHOST | api.NI_NUMERICSERV) == ("fe80::1%lo", "80")


def test_create_server_dual_stack_and_create_connection_over_ipv6(api, closing):
    assert api.has_ipv6 and api.has_dualstack_ipv6()
    srv = api.create_server(("", 0), family=api.AF_INET6, dualstack_ipv6=True)
    closing(srv)
    srv.settimeout(WAIT)
    port = srv.getsockname()[1]
    for host in (LO, LO6):
        c = api.create_connection((host, port), timeout=WAIT)
        closing(c)
        conn, peer = srv.accept()
        closing(conn)
        assert peer[0] == (MAPPED_LO if host == LO else LO6)
    # Without dualstack_ipv6, create_server sets IPV6_V6ONLY.
    only6 = api.create_server((LO6, 0), family=api.AF_INET6)
    closing(only6)
    assert only6.getsockopt(api.IPPROTO_IPV6, api.IPV6_V6ONLY) == 1


def test_sendall_5mb_both_ways_over_ipv6_is_sha256_exact(api, closing):
    size = 5 << 20
    up, down = random.Random(11).randbytes(size), random.Random(12).randbytes(size)
    lst = listener6(api, closing)
    c = api.create_connection(lst.getsockname()[:2], timeout=60)
    closing(c)
    srv, _ = lst.accept()
    closing(srv)
    srv.settimeout(60)
    t1 = Thread(lambda: hashlib.sha256(recv_exactly(srv, size)).hexdigest())
    t2 = Thread(lambda: srv.sendall(down))
    t1.start()
    t2.start()
    c.sendall(up)
    got = recv_exactly(c, size)
    assert t1.join(60) == hashlib.sha256(up).hexdigest()
    t2.join(60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()


def test_happy_eyeballs_falls_back_to_ipv4_at_once_when_ipv6_is_refused(qapi, closing, tmp_path,
                                                                        monkeypatch):
    # qnet's create_connection is Happy Eyeballs v2 (the standard module's tries in turn):
    # a name with both loopbacks, a server on IPv4 only: IPv6 first, refused, IPv4 at once
    # (an attempt delay far too long to have passed shows that the refusal started it).
    monkeypatch.setattr(qapi, "CONNECTION_ATTEMPT_DELAY", 5.0)
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 both.qnet.test\n127.0.0.1 both.qnet.test\n")
    monkeypatch.setenv("QNET_HOSTS", str(hosts))
    assert [ai[0] for ai in qapi.getaddrinfo("both.qnet.test", 80, 0, qapi.SOCK_STREAM)] == [
        qapi.AF_INET6, qapi.AF_INET]
    four = listener(qapi, closing)
    port = four.getsockname()[1]
    t0 = time.monotonic()
    c = qapi.create_connection(("both.qnet.test", port), timeout=WAIT)
    closing(c)
    assert c.family == qapi.AF_INET and c.getpeername() == (LO, port)
    assert time.monotonic() - t0 < 2.5
    six = listener6(qapi, closing, host="::")
    c6 = qapi.create_connection(("both.qnet.test", six.getsockname()[1]), timeout=WAIT)
    closing(c6)
    assert c6.family == qapi.AF_INET6                 # IPv6 preferred when it answers
