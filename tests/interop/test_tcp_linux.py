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
from tests.interop.tcp_linux import finish as _finish
from tests.interop.tcp_linux import random_bytes as _data
from tests.interop.tcp_linux import receive_from_linux
from tests.interop.tcp_linux import start_peer as _peer
from tests.interop.util import (NS_PYTHON, QnetGraph, capture_in_background, missing_prerequisite,
                                stop_process, tshark_fields, wait_for)

pytestmark = pytest.mark.interop



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
    got, digest = receive_from_linux(client, a, 5002, n, 2, 60)
    assert got == n and digest == hashlib.sha256(_data(n, 2)).hexdigest()


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


@pytest.mark.timeout(60)
def test_qnet_capture_shows_a_connection_segment_by_segment(tcp_graph, client, tmp_path):
    g, a = tcp_graph
    pcap = str(tmp_path / "tcp.pcap")
    p = _peer(a, "echo", 5010)
    cap = capture_in_background(g, "p0", pcap, 4.0)
    try:
        s = client.connect(a.linux_ip, 5010, timeout=10)
        s.sendall(b"captured")
        s.settimeout(10)
        assert s.recv(8) == b"captured"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""
        port = s.local[1]
        s.close()
    finally:
        stop_process(p)
        out, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    rows = tshark_fields(pcap, "ip.src", "tcp.flags.syn", "tcp.flags.fin", "tcp.len",
                         display_filter=f"tcp.port == {port}")
    ours = [r for r in rows if r[0] == a.qnet_ip]
    theirs = [r for r in rows if r[0] == a.linux_ip]
    assert any(r[1] in ("1", "True") for r in ours) and any(r[1] in ("1", "True") for r in theirs)
    assert any(r[2] in ("1", "True") for r in ours) and any(r[2] in ("1", "True") for r in theirs)
    assert any(r[3] == "8" for r in ours) and any(r[3] == "8" for r in theirs)


# -- restarts and crashes during transfers (last: they replace components) ----------------------
def _send_in_background(s, data: bytes) -> tuple[threading.Thread, list]:
    err: list = []

    def run():
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except BaseException as e:      # reported by the test
            err.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, err


@pytest.mark.timeout(180)
def test_netstack_restart_during_a_30mb_send_completes_byte_exact_on_the_same_connection(tcp_graph, client):
    g, a = tcp_graph
    data = _data(30_000_000, 4)
    p = _peer(a, "sink", 5004)
    try:
        s = client.connect(a.linux_ip, 5004, timeout=10)
        before = s.info()
        t, err = _send_in_background(s, data)
        wait_for(lambda: client.connections()["connections"][0]["bytes_acked"] > 3_000_000
                 if client.connections()["connections"] else False, 30, 0.05, "3 MB acknowledged")
        res = g.qnet_json("restart", "netstack", timeout=60)
        assert res["handed_over"], res
        t.join(90)
        assert not t.is_alive() and not err, err
        assert s.recv(1) == b""
        after_rows = [c for c in client.connections()["connections"] if c["local_port"] == s.local[1]]
        s.close()
    finally:
        out = _finish(p, 90)
    n, digest = out.split()
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()
    # The same connection: one accept at the peer (the sink took exactly one), same 4-tuple
    # and netstack id after the restart.
    assert before["local_port"] == s.local[1]
    assert not after_rows or after_rows[0]["cid"] == s.id


@pytest.mark.timeout(180)
def test_netstack_restart_during_a_30mb_receive_completes_byte_exact(tcp_graph, client):
    g, a = tcp_graph
    n = 30_000_000
    p = _peer(a, "source", 5005, n, 5)
    try:
        s = client.connect(a.linux_ip, 5005, timeout=10)
        s.settimeout(60)
        h = hashlib.sha256()
        got = 0
        restarted = None
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
            if restarted is None and got > 3_000_000:
                restarted = g.qnet_json("restart", "netstack", timeout=60)
        s.close()
    finally:
        _finish(p, 90)
    assert restarted and restarted["handed_over"], restarted
    assert got == n and h.hexdigest() == hashlib.sha256(_data(n, 5)).hexdigest()


@pytest.mark.timeout(180)
def test_ethdriver_sigkill_during_a_30mb_send_completes_byte_exact(tcp_graph, client):
    g, a = tcp_graph
    data = _data(30_000_000, 6)
    p = _peer(a, "sink", 5006)
    try:
        s = client.connect(a.linux_ip, 5006, timeout=10)
        t, err = _send_in_background(s, data)
        wait_for(lambda: any(c["bytes_acked"] > 3_000_000 for c in client.connections()["connections"]),
                 30, 0.05, "3 MB acknowledged")
        pid = g.components()["ethdriver.p0"]["pid"]
        os.kill(pid, signal.SIGKILL)
        t.join(120)
        assert not t.is_alive() and not err, err
        assert s.recv(1) == b""
        s.close()
    finally:
        out = _finish(p, 90)
    n, digest = out.split()
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()
    wait_for(lambda: g.components()["ethdriver.p0"]["pid"] != pid, 10, 0.1, "a new driver")


@pytest.mark.timeout(120)
def test_after_a_netstack_crash_the_client_sees_a_reset_promptly(tcp_graph, client):
    g, a = tcp_graph
    p = _peer(a, "echo", 5007)
    try:
        s = client.connect(a.linux_ip, 5007, timeout=10)
        s.sendall(b"ping")
        s.settimeout(10)
        assert s.recv(4) == b"ping"
        pid = g.components()["netstack"]["pid"]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ConnectionResetError):
            while s.recv(100):
                pass
        took = time.monotonic() - t0
        assert took < 10, took
        s.close()
        # The graph serves new connections afterwards.
        wait_for(lambda: g.components()["netstack"]["state"] == "running", 20, 0.1, "netstack back")
    finally:
        stop_process(p)
    p = _peer(a, "echo", 5008)
    try:
        s = client.connect(a.linux_ip, 5008, timeout=10)
        s.sendall(b"again")
        s.settimeout(10)
        assert s.recv(5) == b"again"
        s.close()
    finally:
        stop_process(p)


@pytest.mark.timeout(60)
def test_qnet_ss_shows_listeners_and_connections_with_owner(tcp_graph, client):
    g, a = tcp_graph
    lst = client.listen(7100)
    p = _peer(a, "echo", 5009)
    try:
        s = client.connect(a.linux_ip, 5009, timeout=10)
        s.sendall(b"x")
        s.settimeout(10)
        assert s.recv(1) == b"x"
        rows = g.qnet_json("ss", "-a", "-i")
        mine = [r for r in rows if r.get("local_port") == s.local[1] and r["kind"] == "connection"]
        assert len(mine) == 1, rows
        r = mine[0]
        assert r["state"] == "ESTAB" and r["peer"] == f"{a.linux_ip}:5009"
        assert r["owner"].endswith(f"[{os.getpid()}]") and r["rtt"] is not None and r["cwnd"] > 0
        assert any(x["kind"] == "listener" and x["local"] == "*:7100" for x in rows), rows
        text = g.qnet("ss", "-i").stdout
        assert "ESTAB" in text and f"{a.linux_ip}:5009" in text and "rtt(ms)" in text, text
        assert "LISTEN" not in text
        assert "LISTEN" in g.qnet("ss", "-l").stdout
        s.close()
    finally:
        stop_process(p)
        lst.close()
    stats = g.qnet_json("stats")
    tcp = stats["stack"]["tcp"]
    assert tcp["active_opens"] >= 1 and tcp["rx_segments"] > 0
    assert stats["binding"]["tcp_channels"]["bytes_to_clients"] > 0
    assert "tcp: " in g.qnet("stats").stdout
