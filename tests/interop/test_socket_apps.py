"""Applications on qnet.socket against the Linux kernel in a namespace (issue 10): unmodified
programs under `qnet run` (http.server served to curl, urllib, an asyncio echo server answering
100 concurrent busybox nc clients), http.client in-process on qnet.socket, UDP both ways, DNS
through qnet's UDP to dnsmasq, `qnet run`'s error paths, and restarts of the socket provider,
netstack and the port's driver during paced 30 MB transfers, a listening socket, a blocked
accept() and a blocked connect().

One graph per module (the embedded default graph, plus `dns` in the socket provider's args);
tests run in file order, the ones that replace components last. Every wait is bounded.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from tests.interop.tcp_linux import finish, random_bytes, start_peer
from tests.interop.util import (NS_PYTHON, QNET, NsPort, QnetGraph, missing_prerequisite, run,
                                stop_process, wait_for, wait_line)

pytestmark = pytest.mark.interop

BIG = 20_000_000
TRANSFER = 30_000_000
RATE = 4_000_000            # bytes/s of the paced transfers: 30 MB take ~7.5 s
RESTART_AT = 5_000_000      # bytes moved before the restart is asked for
TAIL = 3_000_000            # bytes that must still move after the restart has completed


def _env_without_proxies(env: dict) -> dict:
    # urllib and curl honour *_proxy: the tests talk to their peers directly.
    return {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}


@pytest.fixture(scope="module")
def apps():
    """(graph, ns port, files dir): the default graph with dns = [the namespace's address] in
    [components.sockets.args], started with `qnet up -f`, one TAP port whose far side is Linux."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    x = random.randrange(1, 255)
    g = QnetGraph()
    files = tempfile.mkdtemp(prefix="qnapps")
    try:
        manifest = g.default_graph_with()
        with open(manifest) as f:
            text = f.read()
        assert "[components.sockets]" in text and "[components.sockets.args]" not in text
        with open(manifest, "a") as f:
            f.write(f'\n[components.sockets.args]\ndns = ["10.99.{x}.2"]\n')
        g.env = _env_without_proxies(g.env)
        g.qnet("up", "-f", manifest, "--detach", timeout=60)
        g.remember_pids()
        a = g.add_ns_port("p0", x)
        with open(os.path.join(files, "big.bin"), "wb") as f:
            f.write(random_bytes(BIG, 10))
        with open(os.path.join(files, "small.bin"), "wb") as f:
            f.write(random_bytes(5_000_000, 11))
        yield g, a, files
    finally:
        g.stop()
        shutil.rmtree(files, ignore_errors=True)


@pytest.fixture
def qsocket(apps, monkeypatch):
    """qnet.socket in this process, on the module's graph."""
    monkeypatch.setenv("QNET_RUNTIME_DIR", apps[0].run_dir)
    from qnet import socket as qs
    return qs


# -- helpers -----------------------------------------------------------------------------------
def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def qnet_run(g: QnetGraph, *argv: str) -> subprocess.Popen:
    """`qnet run -- ARGV` in the background (its own session, so stop_process ends it)."""
    return subprocess.Popen([QNET, "run", "--", *argv], env=g.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def qnet_run_wait(g: QnetGraph, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run([QNET, "run", "--", *argv], timeout=timeout, check=False, env=g.env)


def wait_http(a: NsPort, url: str, timeout: float) -> None:
    """Until a curl in the namespace gets an answer from url."""
    wait_for(lambda: a.sh(["curl", "-sS", "--noproxy", "*", "--max-time", "2", "-o", "/dev/null", url],
                          check=False).returncode == 0, timeout, 0.2, f"an HTTP answer from {url}")


def restart(g: QnetGraph, component: str) -> dict:
    res = g.qnet_json("restart", component, timeout=60)
    assert res.get("new_pid") != res.get("old_pid"), res
    return res


class PacedSender(threading.Thread):
    """sendall() of data at about ``rate`` bytes/s, then SHUT_WR; ``sent`` counts what the
    socket took."""

    def __init__(self, sock, data: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.rate = sock, data, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import socket as std
        try:
            view = memoryview(self.data)
            t0 = time.monotonic()
            while self.sent < len(view):
                n = min(65536, len(view) - self.sent)
                self.sock.sendall(view[self.sent:self.sent + n])
                self.sent += n
                ahead = t0 + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            self.sock.shutdown(std.SHUT_WR)
        except BaseException as e:      # reported by the test
            self.error = e


class PacedReader(threading.Thread):
    """recv() until EOF at about ``rate`` bytes/s (a slow reader: flow control paces the
    sender); ``got`` and the sha256 of what arrived."""

    def __init__(self, sock, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.rate = sock, rate
        self.got = 0
        self.hash = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            while True:
                b = self.sock.recv(65536)
                if not b:
                    return
                self.hash.update(b)
                self.got += len(b)
                ahead = t0 + self.got / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as e:      # reported by the test
            self.error = e


def disrupt(g: QnetGraph, port: str, how: str) -> None:
    """`qnet restart sockets|netstack`, or SIGKILL of the port's ethdriver (then its successor)."""
    if how == "ethdriver-kill":
        name = f"ethdriver.{port}"
        pid = g.components()[name]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (c := g.components()[name])["pid"] not in (None, pid) and c["state"] == "running",
                 20, 0.1, "a new driver")
        return
    res = restart(g, how)
    if how == "netstack":
        assert res.get("handed_over"), res


# -- qnet run: servers and clients --------------------------------------------------------------
@pytest.mark.timeout(180)
def test_curl_in_the_namespace_fetches_20mb_from_http_server_under_qnet_run_sha256_exact(apps):
    g, a, files = apps
    srv = qnet_run(g, "python", "-m", "http.server", "8080", "-d", files)
    out = os.path.join(files, "curl.out")
    try:
        wait_http(a, f"http://{a.qnet_ip}:8080/small.bin", 30)
        t0 = time.monotonic()
        res = a.sh(["curl", "-sS", "--noproxy", "*", "--max-time", "120", "-o", out,
                    "-w", "%{http_code} %{size_download}", f"http://{a.qnet_ip}:8080/big.bin"], timeout=130)
        took = time.monotonic() - t0
        assert res.stdout.split() == ["200", str(BIG)], res.stdout + res.stderr
        assert _sha(out) == _sha(os.path.join(files, "big.bin"))
        print(f"\n20 MB over http.server under qnet run: {took:.2f} s")
        assert srv.poll() is None, srv.stderr.read()
    finally:
        stop_process(srv)
        if os.path.exists(out):
            os.unlink(out)


@pytest.fixture(scope="module")
def linux_http(apps):
    """`python3 -m http.server 8081` in the namespace, serving the files dir."""
    g, a, files = apps
    p = a.popen([NS_PYTHON, "-m", "http.server", "8081", "--bind", a.linux_ip, "-d", files])
    try:
        wait_http(a, f"http://{a.linux_ip}:8081/small.bin", 20)
        yield f"http://{a.linux_ip}:8081"
    finally:
        stop_process(p)


URLLIB = r"""
import hashlib, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    body = r.read()
print(len(body), hashlib.sha256(body).hexdigest(), urllib.request.socket.__name__)
"""


@pytest.mark.timeout(120)
def test_urllib_under_qnet_run_fetches_from_a_linux_http_server_sha256_exact(apps, linux_http):
    g, a, files = apps
    res = qnet_run_wait(g, "python", "-c", URLLIB, f"{linux_http}/big.bin", timeout=90)
    assert res.returncode == 0, res.stderr
    n, digest, module = res.stdout.split()
    # urllib's sockets were qnet's: the swap happened before the program's first import.
    assert module == "qnet.socket", res.stdout
    assert int(n) == BIG and digest == _sha(os.path.join(files, "big.bin"))


@pytest.mark.timeout(120)
def test_http_client_in_process_on_qnet_socket_fetches_from_a_linux_http_server_sha256_exact(
        apps, linux_http, qsocket, monkeypatch):
    g, a, files = apps
    monkeypatch.setattr(http.client, "socket", qsocket)
    conn = http.client.HTTPConnection(a.linux_ip, 8081, timeout=30)
    try:
        conn.request("GET", "/small.bin")
        assert isinstance(conn.sock, qsocket.socket) and conn.sock.getsockname()[0] == a.qnet_ip
        r = conn.getresponse()
        assert r.status == 200
        body = r.read()
        # http.server answers HTTP/1.0 and closes: the second request opens a new connection
        conn.request("GET", "/big.bin")
        body2 = conn.getresponse().read()
    finally:
        conn.close()
    assert hashlib.sha256(body).hexdigest() == _sha(os.path.join(files, "small.bin"))
    assert len(body2) == BIG and hashlib.sha256(body2).hexdigest() == _sha(os.path.join(files, "big.bin"))


ECHO_SERVER = r"""
import asyncio, sys
port, peak_file = int(sys.argv[1]), sys.argv[2]
live = peak = 0
async def handle(reader, writer):
    global live, peak
    live += 1
    peak = max(peak, live)
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    finally:
        live -= 1
        with open(peak_file, "w") as f:
            f.write(str(peak))
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=128)
    print("ready", type(server.sockets[0]._sock).__module__, flush=True)  # asyncio's TransportSocket wraps it
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


@pytest.mark.timeout(150)
def test_asyncio_echo_server_under_qnet_run_answers_100_concurrent_nc_clients(apps):
    g, a, files = apps
    work = tempfile.mkdtemp(prefix="qnecho")
    peak_file = os.path.join(work, "peak")
    srv = qnet_run(g, "python", "-c", ECHO_SERVER, "7070", peak_file)
    try:
        line = wait_line(srv, "ready", 30)
        assert "qnet.socket" in line, line
        # Each client sends its own line, holds the connection 3 s (so all 100 are open at
        # once), then half-closes; busybox nc exits when the server closes after the echo.
        script = (f"for i in $(seq 1 100); do "
                  f"(printf 'client-%03d-{g.tag}\\n' $i; sleep 3) | timeout 60 busybox nc {a.qnet_ip} 7070 "
                  f"> {work}/out.$i 2> {work}/err.$i & done; wait")
        t0 = time.monotonic()
        a.sh(["sh", "-c", script], timeout=90)
        took = time.monotonic() - t0
        wrong = {}
        for i in range(1, 101):
            with open(f"{work}/out.{i}") as f:
                got = f.read()
            if got != f"client-{i:03d}-{g.tag}\n":
                with open(f"{work}/err.{i}") as f:
                    wrong[i] = (got, f.read())
        assert not wrong, f"{len(wrong)} of 100 clients got a wrong answer: {dict(list(wrong.items())[:5])}"
        assert took < 60, took
        wait_for(lambda: os.path.exists(peak_file), 5, 0.05, "the server's peak count")
        wait_for(lambda: open(peak_file).read().strip() != "", 5, 0.05, "the server's peak count")
        assert int(open(peak_file).read()) >= 90, "the clients were not served concurrently"
        assert srv.poll() is None, srv.stderr.read()
    finally:
        stop_process(srv)
        shutil.rmtree(work, ignore_errors=True)


# -- qnet run: errors ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_qnet_run_refuses_a_program_that_is_not_python_in_one_clear_line(apps):
    g, a, files = apps
    res = qnet_run_wait(g, "/bin/ls", "/", timeout=20)
    assert res.returncode == 2, res
    assert "not a Python program" in res.stderr and "/bin/ls" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == "", res
    res = qnet_run_wait(g, "/nonexistent/prog", timeout=20)
    assert res.returncode == 2 and "no such program" in res.stderr, res


@pytest.mark.timeout(60)
def test_qnet_run_without_a_graph_exits_3_and_says_to_start_one(apps):
    empty = tempfile.mkdtemp(prefix="qnempty", dir="/tmp")
    try:
        env = dict(apps[0].env, QNET_RUNTIME_DIR=empty)
        res = run([QNET, "run", "--", "python", "-c", "print('ran')"], timeout=20, check=False, env=env)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    assert res.returncode == 3, res
    assert "ran" not in res.stdout
    assert "no socket provider" in res.stderr and "qnet up" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.timeout(60)
def test_ipv6_sockets_under_qnet_run_are_qnets_and_an_unknown_family_names_the_call(apps):
    g, a, files = apps
    # AF_INET6 is qnet's (issue 12): a server on ::1 and a client of it, inside the program.
    code = ("import socket\n"
            "s = socket.create_server(('::1', 0), family=socket.AF_INET6)\n"
            "c = socket.create_connection(s.getsockname()[:2])\n"
            "conn, peer = s.accept(); c.sendall(b'six')\n"
            "print(type(c).__module__, conn.recv(3).decode(), peer[0])\n")
    res = qnet_run_wait(g, "python", "-c", code, timeout=30)
    assert res.returncode == 0 and res.stdout.split() == ["qnet.socket", "six", "::1"], res
    # A family qnet does not have is an OSError naming the call, with Linux's errno for it.
    res = qnet_run_wait(g, "python", "-c", "import socket, errno\ntry:\n socket.socket(socket.AF_PACKET)\n"
                                           "except OSError as e:\n print(errno.errorcode[e.errno], "
                                           "'socket.socket' in str(e))\n", timeout=30)
    assert res.returncode == 0 and res.stdout.split() == ["EAFNOSUPPORT", "True"], res


# -- UDP and DNS ---------------------------------------------------------------------------------
UDP_PEER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
print("ready", flush=True)
got, src = [], None
while True:
    data, addr = s.recvfrom(2048)
    if data == b"end":
        src = addr
        break
    got.append(data)
for i in range(100):
    s.sendto(b"L-%03d" % i + b"y" * (i * 10), src)
s.sendto(b"end", src)
print(len(got), len(set(got)), all(g == b"Q-%03d" % i + b"x" * (i * 10) for i, g in enumerate(got)),
      "%s:%d" % src, flush=True)
"""


@pytest.mark.timeout(60)
def test_udp_100_datagrams_each_way_between_qnet_socket_and_linux(apps, qsocket):
    g, a, files = apps
    peer = a.popen([NS_PYTHON, "-c", UDP_PEER, a.linux_ip, "6060"])
    s = qsocket.socket(qsocket.AF_INET, qsocket.SOCK_DGRAM)
    try:
        wait_line(peer, "ready", 10)
        s.bind(("0.0.0.0", 0))
        s.settimeout(10)
        for i in range(100):
            assert s.sendto(b"Q-%03d" % i + b"x" * (i * 10), (a.linux_ip, 6060)) == 5 + i * 10
        s.sendto(b"end", (a.linux_ip, 6060))
        got = []
        while True:                         # the peer's "end" is the sentinel: nothing after it
            data, addr = s.recvfrom(2048)
            assert addr == (a.linux_ip, 6060), addr
            if data == b"end":
                break
            got.append(data)
        local_port = s.getsockname()[1]
        out = finish(peer, 15)
    finally:
        s.close()
        stop_process(peer)
    assert got == [b"L-%03d" % i + b"y" * (i * 10) for i in range(100)], f"{len(got)} of 100 arrived"
    n, distinct, in_order, src = out.split()
    assert (int(n), int(distinct), in_order) == (100, 100, "True"), out
    assert src == f"{a.qnet_ip}:{local_port}", out


RESOLVE = r"""
import socket, sys
print(socket.gethostbyname(sys.argv[1]))
print(sorted({ai[4][0] for ai in socket.getaddrinfo(sys.argv[2], 80, type=socket.SOCK_STREAM)}))
"""


@pytest.mark.timeout(90)
def test_getaddrinfo_and_gethostbyname_ask_dnsmasq_through_qnets_udp(apps, qsocket):
    g, a, files = apps
    assert shutil.which("dnsmasq"), "dnsmasq is not installed (apt-get install dnsmasq-base)"
    dns = a.popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                   "--user=root", "--pid-file=", "--bind-interfaces", f"--listen-address={a.linux_ip}",
                   f"--address=/test.qnet/{a.linux_ip}", "--log-queries", "--log-facility=-"])
    try:
        wait_for(lambda: "Address" in a.sh(["busybox", "nslookup", "ready.test.qnet", a.linux_ip],
                                           check=False).stdout, 10, 0.2, "dnsmasq answering")
        res = qnet_run_wait(g, "python", "-c", RESOLVE, "test.qnet", "www.test.qnet", timeout=30)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[:2] == [a.linux_ip, f"['{a.linux_ip}']"], res.stdout
        # in-process too, and a name dnsmasq does not know is gaierror, not the host's answer
        assert qsocket.gethostbyname("inproc.test.qnet") == a.linux_ip
        with pytest.raises(qsocket.gaierror):
            qsocket.getaddrinfo("nosuchname-qnet.invalid", 80)
    finally:
        stop_process(dns)
    log = dns.stderr.read()
    # The queries came from qnet's address: qnet's UDP carried them, not the host's resolver.
    for name in ("test.qnet", "www.test.qnet", "inproc.test.qnet"):
        assert f"query[A] {name} from {a.qnet_ip}" in log, log[-3000:]


@pytest.mark.timeout(60)
def test_create_server_on_qnet_socket_listens_and_a_linux_client_is_served(apps, qsocket):
    g, a, files = apps
    lst = qsocket.create_server(("0.0.0.0", 7103), reuse_port=False)
    try:
        assert isinstance(lst, qsocket.socket) and lst.getsockname() == ("0.0.0.0", 7103)
        lst.settimeout(20)
        _serve_one(lst, a, 7103, "via-create-server")
    finally:
        lst.close()


# -- restarts (last: they replace components) ---------------------------------------------------
def _linux_client_echo(a: NsPort, port: int, tag: str) -> subprocess.Popen:
    code = (f"import socket\ns=socket.create_connection(('{a.qnet_ip}',{port}),timeout=20)\n"
            f"s.sendall(b'{tag}');s.shutdown(socket.SHUT_WR);s.settimeout(20)\nb=b''\n"
            f"while (c:=s.recv(100)): b+=c\nprint(b.decode(),flush=True)\n")
    return a.popen([NS_PYTHON, "-c", code])


def _listener(qsocket, port: int):
    s = qsocket.socket(qsocket.AF_INET, qsocket.SOCK_STREAM)
    s.setsockopt(qsocket.SOL_SOCKET, qsocket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s


def _serve_one(lst, a: NsPort, port: int, tag: str) -> None:
    """A Linux client connects to the qnet listener; what it sends comes back to it."""
    p = _linux_client_echo(a, port, tag)
    try:
        conn, peer = lst.accept()
        with conn:
            assert peer[0] == a.linux_ip
            conn.settimeout(20)
            data = b""
            while (c := conn.recv(100)):
                data += c
            conn.sendall(data)
        assert finish(p, 20) == tag
    finally:
        stop_process(p)


def _keeps_accepting(apps, qsocket, component: str) -> None:
    g, a, files = apps
    port = 7100 if component == "sockets" else 7101
    lst = _listener(qsocket, port)
    try:
        lst.settimeout(20)
        _serve_one(lst, a, port, "before")
        restart(g, component)
        _serve_one(lst, a, port, f"after-{component}")
        _serve_one(lst, a, port, "and-again")
    finally:
        lst.close()


def _send_across(apps, qsocket, how: str) -> None:
    """30 MB, paced; disrupt(how) once RESTART_AT bytes have moved."""
    g, a, files = apps
    port = {"sockets": 5020, "netstack": 5021, "ethdriver-kill": 5022}[how]
    data = random_bytes(TRANSFER, port)
    peer = start_peer(a, "sink", port)
    try:
        s = qsocket.create_connection((a.linux_ip, port), timeout=10)
        s.settimeout(60)
        tx = PacedSender(s, data, RATE)
        tx.start()
        wait_for(lambda: tx.sent >= RESTART_AT or tx.error, 30, 0.02, f"{RESTART_AT} bytes sent")
        before = tx.sent
        disrupt(g, "p0", how)
        after = tx.sent
        tx.join(120)
        assert not tx.is_alive() and tx.error is None, repr(tx.error)
        assert s.recv(1) == b""             # the sink closes after our FIN
        s.close()
        out = finish(peer, 60)
    finally:
        stop_process(peer)
    n, digest = out.split()
    assert int(n) == TRANSFER and digest == hashlib.sha256(data).hexdigest()
    # The disruption landed mid-transfer: bytes moved before it and after it was over.
    assert before >= RESTART_AT and TRANSFER - after >= TAIL, (before, after)


def _receive_across(apps, qsocket, how: str) -> None:
    """30 MB, paced; disrupt(how) once RESTART_AT bytes have moved."""
    g, a, files = apps
    port = {"sockets": 5030, "netstack": 5031, "ethdriver-kill": 5032}[how]
    peer = start_peer(a, "source", port, TRANSFER, port)
    try:
        s = qsocket.create_connection((a.linux_ip, port), timeout=10)
        s.settimeout(60)
        rx = PacedReader(s, RATE)
        rx.start()
        wait_for(lambda: rx.got >= RESTART_AT or rx.error or not rx.is_alive(), 30, 0.02,
                 f"{RESTART_AT} bytes received")
        before = rx.got
        disrupt(g, "p0", how)
        after = rx.got
        rx.join(120)
        assert not rx.is_alive() and rx.error is None, repr(rx.error)
        s.close()
        assert finish(peer, 30) == "sent"
    finally:
        stop_process(peer)
    assert rx.got == TRANSFER and rx.hash.hexdigest() == hashlib.sha256(random_bytes(TRANSFER, port)).hexdigest()
    assert before >= RESTART_AT and TRANSFER - after >= TAIL, (before, after)


# netstack and the driver first; the sockets restarts last.
@pytest.mark.timeout(120)
def test_a_listening_qnet_socket_keeps_accepting_after_a_netstack_restart(apps, qsocket):
    _keeps_accepting(apps, qsocket, "netstack")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["netstack", "ethdriver-kill"])
def test_30mb_from_qnet_socket_to_linux_is_byte_exact_across_a_disruption(apps, qsocket, how):
    _send_across(apps, qsocket, how)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["netstack", "ethdriver-kill"])
def test_30mb_from_linux_to_a_slow_qnet_socket_reader_is_byte_exact_across_a_disruption(apps, qsocket, how):
    _receive_across(apps, qsocket, how)


@pytest.mark.timeout(120)
def test_a_listening_qnet_socket_keeps_accepting_after_a_sockets_restart(apps, qsocket):
    _keeps_accepting(apps, qsocket, "sockets")


@pytest.mark.timeout(120)
def test_a_client_blocked_in_accept_during_a_sockets_restart_gets_its_connection(apps, qsocket):
    g, a, files = apps
    lst = _listener(qsocket, 7102)
    lst.settimeout(60)
    result: dict = {}

    def accept():
        try:
            conn, peer = lst.accept()
            with conn:
                conn.settimeout(20)
                data = conn.recv(100)
                conn.sendall(data)
            result["peer"] = peer
        except BaseException as e:
            result["error"] = e
    t = threading.Thread(target=accept, daemon=True)
    p = None
    try:
        t.start()
        time.sleep(0.5)                 # the thread is in accept(), waiting on the listener's fd
        assert t.is_alive() and not result, result
        restart(g, "sockets")
        p = _linux_client_echo(a, 7102, "late")
        t.join(40)
        assert not t.is_alive(), "accept() never returned"
        assert "error" not in result, repr(result.get("error"))
        assert result["peer"][0] == a.linux_ip
        assert finish(p, 20) == "late"
    finally:
        if p is not None:
            stop_process(p)
        lst.close()


@pytest.mark.timeout(120)
def test_a_client_blocked_in_connect_during_a_sockets_restart_gets_connected(apps, qsocket):
    g, a, files = apps
    # The peer answers late: its SYNs are dropped until after the restart.
    table = f"qnapps{g.tag}"
    a.sh(["nft", f"add table inet {table}; add chain inet {table} in {{ type filter hook input priority 0; }}; "
                 f"add rule inet {table} in tcp dport 5010 drop"])
    peer = start_peer(a, "echo", 5010)
    result: dict = {}

    def connect():
        try:
            s = qsocket.socket(qsocket.AF_INET, qsocket.SOCK_STREAM)
            s.settimeout(60)
            s.connect((a.linux_ip, 5010))
            result["sock"] = s
        except BaseException as e:
            result["error"] = e
    t = threading.Thread(target=connect, daemon=True)
    try:
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not result, result       # still in connect(): no SYN-ACK yet
        restart(g, "sockets")
        time.sleep(0.5)
        assert t.is_alive() and not result, result
        a.sh(["nft", "delete", "table", "inet", table])
        t.join(40)
        assert not t.is_alive(), "connect() never returned"
        assert "error" not in result, repr(result.get("error"))
        s = result["sock"]
        with s:
            assert s.getpeername() == (a.linux_ip, 5010)
            s.settimeout(20)
            s.sendall(b"hello after the restart")
            assert s.recv(100) == b"hello after the restart"
            s.shutdown(qsocket.SHUT_WR)
            assert s.recv(100) == b""
        assert finish(peer, 20) == "done"
    finally:
        a.sh(["nft", "delete", "table", "inet", table], check=False)
        stop_process(peer)


@pytest.mark.timeout(180)
def test_30mb_from_qnet_socket_to_linux_is_byte_exact_across_a_sockets_restart(apps, qsocket):
    _send_across(apps, qsocket, "sockets")


@pytest.mark.timeout(180)
def test_30mb_from_linux_to_a_slow_qnet_socket_reader_is_byte_exact_across_a_sockets_restart(apps, qsocket):
    _receive_across(apps, qsocket, "sockets")
