"""TCP between qnet and the Linux kernel over a TAP port: a qnet client (tcp_client.TcpClient,
bytes on byte channels) and a Linux peer in a namespace, both directions, sha256-exact; a netstack
restart and a driver kill during a transfer; resets, refusals and the channel's status.

One graph per module (socketpair data transport); tests run in file order."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time

import pytest

from components.netstack.tcp_client import TcpClient
from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, stop_process, wait_for

pytestmark = pytest.mark.interop

# A Linux-side peer: "sink PORT" counts and hashes what arrives, then prints "len sha256";
# "source PORT N SEED" sends N pseudo-random bytes to the first connection and closes;
# "echo PORT" echoes one connection. Each prints "ready" once listening.
PEER = r"""
import hashlib, random, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(16); print("ready", flush=True)
c, _ = ls.accept()
if mode == "sink":
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
elif mode == "source":
    n, seed = int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(seed).randbytes(n)
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    while c.recv(65536): pass
    print("sent", flush=True)
elif mode == "echo":
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    print("done", flush=True)
c.close()
"""


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def tcp_graph():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start()
    try:
        a = g.add_ns_port("p0", random.randrange(1, 255))
        yield g, a
    finally:
        g.stop()


@pytest.fixture
def client(tcp_graph):
    c = TcpClient(tcp_graph[0].run_dir)
    try:
        yield c
    finally:
        c.close()


def _peer(ns, *args) -> "subprocess.Popen":  # noqa: F821
    p = ns.popen([NS_PYTHON, "-c", PEER, *map(str, args)])
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def _finish(p, timeout: float) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop_process(p)
    assert p.returncode == 0, err
    return out.strip()


@pytest.mark.timeout(120)
def test_qnet_client_sends_to_linux_sha256_exact(tcp_graph, client):
    g, a = tcp_graph
    data = _data(20_000_000, 1)
    p = _peer(a, "sink", 5001)
    try:
        s = client.connect(a.linux_ip, 5001, timeout=10)
        assert s.remote == (a.linux_ip, 5001) and s.local[0] == a.qnet_ip
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""                 # Linux closes after our FIN: its FIN reaches us
        s.close()
    finally:
        out = _finish(p, 60)
    n, digest = out.split()
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(120)
def test_linux_sends_to_qnet_client_sha256_exact(tcp_graph, client):
    g, a = tcp_graph
    n = 20_000_000
    p = _peer(a, "source", 5002, n, 2)
    try:
        s = client.connect(a.linux_ip, 5002, timeout=10)
        h = hashlib.sha256()
        got = 0
        s.settimeout(30)
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
        s.close()
    finally:
        _finish(p, 60)
    assert got == n and h.hexdigest() == hashlib.sha256(_data(n, 2)).hexdigest()


@pytest.mark.timeout(120)
def test_linux_connects_to_a_qnet_listener_and_gets_its_bytes_echoed(tcp_graph, client):
    g, a = tcp_graph
    lst = client.listen(7007)
    n = 5_000_000
    code = (f"import socket,hashlib,random,threading\n"
            f"d=random.Random(3).randbytes({n})\n"
            f"s=socket.create_connection(('{a.qnet_ip}',7007),timeout=30)\n"
            f"t=threading.Thread(target=lambda:(s.sendall(d),s.shutdown(socket.SHUT_WR)));t.start()\n"
            f"h=hashlib.sha256();n=0\n"
            f"while True:\n b=s.recv(1<<20)\n if not b: break\n h.update(b);n+=len(b)\n"
            f"t.join();print(n,h.hexdigest())\n")
    p = a.popen([NS_PYTHON, "-c", code])
    try:
        s = lst.accept(timeout=20)
        assert s.remote[0] == a.linux_ip and s.local == (a.qnet_ip, 7007)
        s.settimeout(30)
        while True:
            b = s.recv(65536)
            if not b:
                break
            s.sendall(b)
        s.shutdown(socket.SHUT_WR)
        s.close()
        out = _finish(p, 30)
    finally:
        stop_process(p)
        lst.close()
    got, digest = out.split()
    assert int(got) == n and digest == hashlib.sha256(_data(n, 3)).hexdigest()


@pytest.mark.timeout(60)
def test_connect_to_a_closed_port_is_refused(tcp_graph, client):
    g, a = tcp_graph
    with pytest.raises(ConnectionRefusedError):
        client.connect(a.linux_ip, 5999, timeout=10)


@pytest.mark.timeout(60)
def test_a_reset_from_linux_reaches_the_client_as_econnreset(tcp_graph, client):
    g, a = tcp_graph
    code = ("import socket,struct\n"
            "ls=socket.socket();ls.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "ls.bind(('0.0.0.0',5003));ls.listen(1);print('ready',flush=True)\n"
            "c,_=ls.accept();c.recv(5)\n"
            "c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0));c.close()\n"
            "print('reset',flush=True)\n")
    p = a.popen([NS_PYTHON, "-c", code])
    try:
        assert p.stdout.readline().strip() == "ready"
        s = client.connect(a.linux_ip, 5003, timeout=10)
        s.sendall(b"hello")
        assert p.stdout.readline().strip() == "reset"
        s.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while s.recv(100):
                pass
        assert s.status() == "reset"
    finally:
        stop_process(p)
