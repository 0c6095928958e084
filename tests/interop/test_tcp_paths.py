"""TCP with the Linux kernel over hard paths and at scale: through qnet's fault-injecting port
wrapper (1 % loss, 5 % reordering, 1 % duplication), over a 600 ms RTT path, with 1000
concurrent connections, and under a SYN flood from spoofed sources.

One graph per module (socketpair data transport) with three TAP ports, each with a Linux
namespace behind it: p0 lossy, p1 long (300 ms each way), p2 plain."""
from __future__ import annotations

import hashlib
import random
import socket
import threading
import time

import pytest

from components.netstack.tcp_client import TcpClient
from tests.interop.tcp_linux import finish as _finish
from tests.interop.tcp_linux import random_bytes as _data
from tests.interop.tcp_linux import receive_from_linux as _receive
from tests.interop.tcp_linux import send_to_linux as _send
from tests.interop.tcp_linux import start_peer as _peer
from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, stop_process, wait_for

pytestmark = pytest.mark.interop

VENV_PYTHON = __import__("sys").executable     # has scapy; works inside `ip netns exec`
LOSSY = "loss=0.01,reorder=0.05,dup=0.01,seed=11"
LONG = "delay=0.3"


@pytest.fixture(scope="module")
def paths():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start()
    try:
        xs = random.sample(range(1, 255), 4)
        lossy = g.add_ns_port("p0", xs[0], "--fault", LOSSY)
        long = g.add_ns_port("p1", xs[1], "--fault", LONG)
        plain = g.add_ns_port("p2", xs[2])
        g.offload_port = g.add_ns_port("p3", xs[3], "--offloads")
        yield g, lossy, long, plain
    finally:
        g.stop()


@pytest.fixture
def client(paths):
    c = TcpClient(paths[0].run_dir)
    try:
        yield c
    finally:
        c.close()


def _tcp_counters(g) -> dict:
    return g.qnet_json("stats")["stack"]["tcp"]


# -- 1 % loss, 5 % reordering, 1 % duplication ----------------------------------------------------
@pytest.mark.timeout(300)
def test_50mb_to_linux_through_loss_reordering_and_duplication(paths, client):
    g, lossy, _long, _plain = paths
    data = _data(50_000_000, 21)
    out = _send(client, lossy, 6001, data, 200)
    assert out == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    drv = g.components()["ethdriver.p0"]["details"]["backend_counters"]
    assert drv["rx_fault_dropped"] + drv["tx_fault_dropped"] > 0 and drv["tx_fault_reordered"] > 0
    c = _tcp_counters(g)
    # The faults were met by recovery, not by time-outs alone.
    assert c.get("conn_fast_retransmits", 0) > 0 and c.get("conn_sacked_bytes", 0) > 0, c


@pytest.mark.timeout(300)
def test_50mb_from_linux_through_loss_reordering_and_duplication(paths, client):
    g, lossy, _long, _plain = paths
    n = 50_000_000
    got, digest = _receive(client, lossy, 6002, n, 22, 200)
    assert got == n and digest == hashlib.sha256(_data(n, 22)).hexdigest()


# -- a satellite-length path ------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_600ms_rtt_path_completes_and_fills_its_window(paths, client):
    g, _lossy, long, _plain = paths
    data = _data(60_000_000, 23)     # long enough for slow start to reach the 4 MiB window
    p = _peer(long, "sink", 6003)
    flights: list[tuple[int, int]] = []
    try:
        t0 = time.monotonic()
        s = client.connect(long.linux_ip, 6003, timeout=20)
        assert time.monotonic() - t0 >= 0.6            # the handshake took one RTT
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)),
                                  daemon=True)
        sender.start()
        while sender.is_alive() and time.monotonic() - t0 < 150:
            info = s.info()
            flights.append((info["flight"], info["snd_wnd"]))
            time.sleep(0.1)
        sender.join(5)
        assert not sender.is_alive()
        s.settimeout(60)
        assert s.recv(1) == b""
        s.close()
    finally:
        out = _finish(p, 150)
    assert out == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    best = max(f for f, _w in flights)
    # Filled: at some point what was in flight reached the window Linux offered, or the
    # 4 MiB our send buffer allows (RTT x rate = window is the most a path can carry).
    assert any(f >= 0.8 * min(w, 4 << 20) for f, w in flights if w), (best, flights[::5])


@pytest.mark.timeout(300)
def test_600ms_rtt_path_from_linux_opens_our_window_wide(paths, client):
    g, _lossy, long, _plain = paths
    n = 16_000_000
    windows: list[int] = []
    last = [0.0]

    def sample(s) -> None:
        if time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            windows.append(s.info()["recv_buffer"])
    got, digest = _receive(client, long, 6004, n, 24, 150, on_chunk=sample)
    assert got == n and digest == hashlib.sha256(_data(n, 24)).hexdigest()
    # Receive-buffer auto-tuning let the buffer, and so the window, grow well past its
    # 128 KiB start.
    assert max(windows) >= 1 << 20, max(windows)


# -- TAP offloads --------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_tcp_super_frames_from_linux_are_taken_whole_on_an_offload_port(paths, client):
    g = paths[0]
    port = g.offload_port
    n = 30_000_000
    got, digest = _receive(client, port, 6010, n, 26, 120)
    assert got == n and digest == hashlib.sha256(_data(n, 26)).hexdigest()
    off = g.qnet_json("stats")["binding"]["offloads"]["p3"]
    # Linux's TSO super-frames went to TCP whole (as its GRO would), not cut into 1500s.
    assert off["rx_gso_whole"] > 0, off
    data = _data(10_000_000, 27)
    out = _send(client, port, 6011, data, 120)
    assert out == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    # ... and ours went out as super-segments that Linux's TAP driver cut (TSO).
    off = g.qnet_json("stats")["binding"]["offloads"]["p3"]
    assert off["tx_tso_frames"] > 0, off


# -- scale --------------------------------------------------------------------------------------------
ECHO_MANY = r"""
import selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(4096); ls.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(ls, selectors.EVENT_READ)
print("ready", flush=True)
done = 0
while done < n:
    for key, _ in sel.select(30):
        if key.fileobj is ls:
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    break
                c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            c = key.fileobj
            try:
                b = c.recv(65536)
            except ConnectionError:
                b = b""
            if b:
                c.sendall(b)
            else:
                sel.unregister(c); c.close(); done += 1
print("done", done, flush=True)
"""


@pytest.mark.timeout(300)
def test_1000_concurrent_connections(paths, client):
    g, _lossy, _long, plain = paths
    n = 1000
    p = plain.popen([NS_PYTHON, "-c", ECHO_MANY, "6005", str(n)])
    streams = []
    try:
        assert p.stdout.readline().strip() == "ready"
        for i in range(n):
            streams.append(client.connect(plain.linux_ip, 6005, timeout=20))
        established = [r for r in g.qnet_json("ss") if r["peer"] == f"{plain.linux_ip}:6005"]
        assert len(established) == n and all(r["state"] == "ESTAB" for r in established)
        for i, s in enumerate(streams):
            s.sendall(b"%06d" % i)
        for i, s in enumerate(streams):
            s.settimeout(30)
            got = b""
            while len(got) < 6:
                b = s.recv(6 - len(got))
                assert b, f"connection {i} closed early"
                got += b
            assert got == b"%06d" % i
        for s in streams:
            s.close()
        out = _finish(p, 60)
        assert out == f"done {n}"
    finally:
        for s in streams:
            s.close()
        stop_process(p)
    # Every connection ends and its byte channel is released.
    wait_for(lambda: g.qnet_json("stats")["binding"]["tcp_channels"]["bound"] == 0, 30, 0.2,
             "every byte channel released")


SYN_FLOOD = r"""
import random, sys
from scapy.all import IP, TCP, Ether, sendp, conf
conf.verb = 0
dst, dport, iface, mac, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
rng = random.Random(5)
frames = [Ether(dst=mac) / IP(src=f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}", dst=dst) /
          TCP(sport=rng.randrange(1024, 65535), dport=dport, seq=rng.randrange(1 << 32), flags="S",
              options=[("MSS", 1460)]) for _ in range(count)]
sendp(frames, iface=iface)
print("sent", count, flush=True)
"""


@pytest.mark.timeout(300)
def test_syn_flood_from_spoofed_sources_while_transfers_continue(paths, client):
    g, _lossy, _long, plain = paths
    lst = client.listen(6006, backlog=64)
    qnet_mac = g.port_row("p2")["mac"]
    # Replies to the spoofed sources go back toward the namespace, which drops them.
    g.qnet("route", "add", "198.18.0.0/15", "via", plain.linux_ip)
    data = _data(20_000_000, 25)
    sink = _peer(plain, "sink", 6007)
    flood = None
    try:
        s = client.connect(plain.linux_ip, 6007, timeout=20)
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        flood = plain.popen([VENV_PYTHON, "-c", SYN_FLOOD, plain.qnet_ip, "6006", plain.tap, qnet_mac, "5000"])
        # While the flood arrives, legitimate clients connect from Linux and are served.
        served = 0
        for i in range(5):
            code = (f"import socket\ns=socket.create_connection(('{plain.qnet_ip}',6006),timeout=20)\n"
                    f"s.sendall(b'hi{i}');s.shutdown(socket.SHUT_WR)\nprint(s.recv(10).decode())\n")
            cli = plain.popen([NS_PYTHON, "-c", code])
            try:
                conn = lst.accept(timeout=30)
                conn.settimeout(10)
                msg = b""
                while len(msg) < 3:
                    b = conn.recv(10)
                    if not b:
                        break
                    msg += b
                conn.sendall(msg.upper())
                conn.close()
                out, err = cli.communicate(timeout=30)
                assert cli.returncode == 0, err
                assert out.strip() == f"HI{i}"
                served += 1
            finally:
                stop_process(cli)
        out, err = flood.communicate(timeout=120)
        assert "sent 5000" in out, err
        sender.join(120)
        assert not sender.is_alive()
        s.settimeout(60)
        assert s.recv(1) == b""
        s.close()
    finally:
        if flood is not None:
            stop_process(flood)
        got = _finish(sink, 120)
        lst.close()
        g.qnet("route", "del", "198.18.0.0/15", "via", plain.linux_ip, check=False)
    assert served == 5
    assert got == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    c = _tcp_counters(g)
    assert c.get("syncookies_sent", 0) > 0, c          # the SYN queue overflowed into cookies
    # 5000 SYNs left at most a SYN queue's worth of state (the rest are cookies or TIME-WAIT
    # entries of earlier tests).
    t = g.qnet_json("stats")["stack"]["table:tcp"]
    assert t["connections"] - t["time_wait"] <= 64 + 2, t
