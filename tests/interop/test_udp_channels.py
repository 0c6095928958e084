"""UDP sockets on per-socket datagram channels (qnet.udp) against the Linux kernel over a TAP:
a client takes SOCK_SEQPACKET channels from the launcher's broker, binds them through
qnet.udp and exchanges datagrams with Linux sockets in a namespace, both ways; the heads, TTL
and TOS seen by Linux, connected-UDP filtering, EADDRINUSE, EOF closing a socket, malformed
messages, and a netstack restart. One graph per module; tests run in file order."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from ipc import errors
from ipc.decl import to_plain
from ipc.protocols.udp import UDP, UDP_RECV_HEAD, UDP_SEND_HEAD
from ipc.rpc import RpcClient
from launcher.channels import request_streams
from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, stop_process, wait_for

pytestmark = pytest.mark.interop

# Linux sockets in the namespace, driven by JSON lines on stdin; one JSON line answers each.
#   {"op": "open", "name": N, "port": P}                   a UDP socket with IP_RECVTTL/TOS
#   {"op": "send", "name": N, "to": [ip, port], "size": S, "seed": X}
#   {"op": "recv", "name": N, "timeout": T}  -> {size, sha, src, ttl, tos} or {"timeout": true}
PEER = r"""
import hashlib, json, random, select, socket, sys
socks = {}
print("ready", flush=True)
for line in sys.stdin:
    m = json.loads(line)
    s = socks.get(m.get("name"))
    if m["op"] == "open":
        s = socks[m["name"]] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_IP, getattr(socket, "IP_RECVTTL", 12), 1)
        s.setsockopt(socket.SOL_IP, socket.IP_RECVTOS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", m["port"]))
        out = {"port": s.getsockname()[1]}
    elif m["op"] == "send":
        s.sendto(random.Random(m["seed"]).randbytes(m["size"]), tuple(m["to"]))
        out = {"ok": True}
    elif m["op"] == "recv":
        if not select.select([s], [], [], m["timeout"])[0]:
            out = {"timeout": True}
        else:
            data, anc, _f, src = s.recvmsg(65536, 256)
            ttl = tos = None
            for lvl, typ, val in anc:
                if typ == socket.IP_TTL:
                    ttl = int.from_bytes(val[:4], sys.byteorder)
                elif typ == socket.IP_TOS:
                    tos = val[0]
            out = {"size": len(data), "sha": hashlib.sha256(data).hexdigest(), "src": list(src),
                   "ttl": ttl, "tos": tos}
    print(json.dumps(out), flush=True)
"""


GRAPH = """
[graph]
name = "udp-channels"

[components.netstack]
module = "components.netstack.process"
provides = ["qnet.netstack@1.0", "qnet.device@1.0", "qnet.datagram@1.0", "qnet.tcp@1.0", "qnet.udp@1.0"]
restart = "always"

[components.ethdriver]
module = "components.ethdriver.driver"
uses = ["qnet.device@1.0"]
per_port = true
restart = "always"
"""


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


class LinuxPeer:
    def __init__(self, ns) -> None:
        self.p = ns.popen([NS_PYTHON, "-c", PEER], stdin=subprocess.PIPE)
        line = self.p.stdout.readline()
        assert line.strip() == "ready", (line, self.p.stderr.read() if self.p.poll() is not None else "")

    def ask(self, **m) -> dict:
        self.p.stdin.write(json.dumps(m) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, self.p.stderr.read()
        return json.loads(line)

    def open(self, name: str, port: int) -> int:
        return self.ask(op="open", name=name, port=port)["port"]

    def send(self, name: str, to: tuple[str, int], size: int, seed: int) -> None:
        self.ask(op="send", name=name, to=list(to), size=size, seed=seed)

    def recv(self, name: str, timeout: float = 5.0) -> dict:
        return self.ask(op="recv", name=name, timeout=timeout)

    def close(self) -> None:
        stop_process(self.p)


class UdpTestClient:
    """qnet.udp as a socket library would use it: channels from the broker, calls to netstack."""

    def __init__(self, run_dir: str) -> None:
        self.run = run_dir
        self.rpc = RpcClient(f"ipc://{os.path.join(run_dir, 'netstack.rpc')}", UDP, timeout=10, retries=3)

    def channel(self) -> tuple[str, socket.socket]:
        [(chan, sock)] = request_streams(self.run, UDP.name, 1)
        return chan, sock

    def bind(self, **kw) -> tuple[dict, socket.socket]:
        chan, sock = self.channel()
        try:
            return to_plain(self.rpc.call("bind", channel=chan, owner="test", **kw)), sock
        except BaseException:
            sock.close()
            raise

    def call(self, method: str, **kw):
        return to_plain(self.rpc.call(method, **kw))

    def row(self, sid: int) -> dict | None:
        return next((r for r in self.call("list") if r["sock"] == sid), None)

    def close(self) -> None:
        self.rpc.close()


def send(sock: socket.socket, dst: str, port: int, payload: bytes, ttl: int = -1, tos: int = -1) -> None:
    sock.send(UDP_SEND_HEAD.pack(ipaddress.IPv4Address(dst).packed, port, ttl, tos) + payload)


def recv(sock: socket.socket, timeout: float = 5.0) -> tuple[tuple, bytes] | None:
    """(head fields, payload) of the next datagram, or None after timeout; the fd is what
    select waits on."""
    if not select.select([sock], [], [], timeout)[0]:
        return None
    msg = sock.recv(70000)
    src, sport, dst, ttl, tos, ifindex = UDP_RECV_HEAD.unpack_from(msg)
    return ((str(ipaddress.IPv4Address(src)), sport, str(ipaddress.IPv4Address(dst)), ttl, tos, ifindex),
            msg[UDP_RECV_HEAD.size:])


@pytest.fixture(scope="module")
def udp_graph():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph()
    peer = None
    try:
        # netstack and the drivers only: what qnet.udp needs, whatever else the default runs.
        path = os.path.join(g.run_dir, "graph.toml")
        with open(path, "w") as f:
            f.write(GRAPH)
        g.qnet("up", "-f", path, "--detach", timeout=60)
        g.remember_pids()
        a = g.add_ns_port("p0", random.randrange(1, 255))
        peer = LinuxPeer(a)
        yield g, a, peer
    finally:
        if peer is not None:
            peer.close()
        g.stop()


@pytest.fixture
def client(udp_graph):
    c = UdpTestClient(udp_graph[0].run_dir)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.timeout(90)
def test_datagrams_of_every_size_cross_both_ways_with_their_heads(udp_graph, client):
    g, a, peer = udp_graph
    lport = peer.open("main", 6001)
    bound, s = client.bind()
    assert s.type == socket.SOCK_SEQPACKET
    assert bound["address"] == "0.0.0.0" and 32768 <= bound["port"] <= 60999
    sizes = (0, 1, 1472, 8000, 65507)
    for i, size in enumerate(sizes):
        send(s, a.linux_ip, lport, _data(size, i))
        got = peer.recv("main")
        assert got.get("size") == size, (size, got)
        assert got["sha"] == hashlib.sha256(_data(size, i)).hexdigest()
        assert got["src"] == [a.qnet_ip, bound["port"]] and got["ttl"] == 64 and got["tos"] == 0
    for i, size in enumerate(sizes):
        peer.send("main", (a.qnet_ip, bound["port"]), size, 100 + i)
        got = recv(s)
        assert got is not None, f"{size}-byte datagram from Linux not delivered"
        (src, sport, dst, ttl, tos, ifindex), payload = got
        assert (src, sport, dst) == (a.linux_ip, lport, a.qnet_ip)
        assert payload == _data(size, 100 + i)
        assert ifindex >= 2                 # a port (lo is 1)
        assert ttl in (0, 64) and tos == 0  # 0: the core does not record TTL yet
    row = client.row(bound["sock"])
    assert row["tx_datagrams"] == len(sizes) and row["rx_datagrams"] == len(sizes)
    assert row["owner"] == "test" and row["port"] == bound["port"]
    s.close()


@pytest.mark.timeout(60)
def test_ttl_and_tos_set_on_the_socket_or_per_message_reach_linux(udp_graph, client):
    g, a, peer = udp_graph
    lport = peer.open("ttl", 6002)
    bound, s = client.bind(port=40123)
    assert bound["port"] == 40123
    sid = bound["sock"]
    assert client.call("set_option", sock=sid, name="ttl", value=7)
    assert client.call("set_option", sock=sid, name="tos", value=0x28)
    assert client.call("get_option", sock=sid, name="ttl") == 7
    send(s, a.linux_ip, lport, b"marked")
    got = peer.recv("ttl")
    assert (got["size"], got["ttl"], got["tos"]) == (6, 7, 0x28), got
    send(s, a.linux_ip, lport, b"per-message", ttl=9, tos=0x10)
    got = peer.recv("ttl")
    assert (got["size"], got["ttl"], got["tos"]) == (11, 9, 0x10), got
    # Fragmented with its marks: every fragment carries them; Linux reports the first's.
    send(s, a.linux_ip, lport, _data(8000, 5))
    got = peer.recv("ttl")
    assert (got["size"], got["ttl"], got["tos"]) == (8000, 7, 0x28), got
    with pytest.raises(errors.RemoteError) as e:
        client.call("set_option", sock=sid, name="ttl", value=0)
    assert e.value.code == "bad_argument"
    assert client.call("set_option", sock=sid, name="recv_ttl", value=1)
    assert client.call("get_option", sock=sid, name="recv_ttl") == 1
    s.close()


@pytest.mark.timeout(60)
def test_a_connected_socket_gets_only_its_peer_and_a_disconnect_opens_it_again(udp_graph, client):
    g, a, peer = udp_graph
    pa, pb = peer.open("ca", 6003), peer.open("cb", 6004)
    bound, s = client.bind()
    sid, lport = bound["sock"], bound["port"]
    c = client.call("connect", sock=sid, address=a.linux_ip, port=pa)
    # A wildcard socket takes the route's source address (Linux ip4_datagram_connect).
    assert c == {"address": a.qnet_ip, "port": lport, "remote": a.linux_ip, "remote_port": pa,
                 "scope_id": 0}     # 1.2: a link-local remote's link
    send(s, "0.0.0.0", 0, b"to the connected one")
    got = peer.recv("ca")
    assert got["size"] == 20 and got["src"] == [a.qnet_ip, lport]
    peer.send("cb", (a.qnet_ip, lport), 10, 1)      # not the connected peer: filtered
    peer.send("ca", (a.qnet_ip, lport), 11, 2)
    (src, sport, *_), payload = recv(s)
    assert (src, sport, payload) == (a.linux_ip, pa, _data(11, 2))
    assert recv(s, 0.5) is None
    d = client.call("connect", sock=sid, address=None)
    assert d["remote"] is None and d["address"] == "0.0.0.0"
    peer.send("cb", (a.qnet_ip, lport), 12, 3)
    (src, sport, *_), payload = recv(s)
    assert (sport, payload) == (pb, _data(12, 3))
    # Not connected any more: a send to "the connected destination" fails, counted.
    send(s, "0.0.0.0", 0, b"nowhere")
    wait_for(lambda: client.row(sid)["tx_errors"] == 1, 5, 0.05, "the failed send counted")
    s.close()


@pytest.mark.timeout(60)
def test_address_in_use_follows_linux_reuse_rules(udp_graph, client):
    g, a, peer = udp_graph
    held = []

    def bind(**kw):
        r, s = client.bind(**kw)
        held.append(s)
        return r

    def refused(**kw):
        with pytest.raises(errors.RemoteError) as e:
            bind(**kw)
        return e.value.code

    try:
        bind(address=a.qnet_ip, port=41000)
        assert refused(address=a.qnet_ip, port=41000) == "address_in_use"
        assert refused(port=41000) == "address_in_use"          # wildcard vs specific
        bind(port=41001, reuse_port=True)
        bind(port=41001, reuse_port=True)
        bind(address=a.qnet_ip, port=41001, reuse_port=True)
        assert refused(port=41001) == "address_in_use"          # one without reuse
        bind(port=41002, reuse_address=True)
        bind(port=41002, reuse_address=True)
        assert refused(port=41002, reuse_port=True) == "address_in_use"   # different kinds
        assert refused(address="10.200.0.1", port=41003) == "address_not_available"
        ports = {bind()["port"] for _ in range(5)}
        assert len(ports) == 5 and all(32768 <= p <= 60999 for p in ports)
    finally:
        for s in held:
            s.close()


@pytest.mark.timeout(60)
def test_closing_the_client_fd_closes_the_socket(udp_graph, client):
    g, a, peer = udp_graph
    peer.open("eof", 6005)
    bound, s = client.bind(port=42000)
    sid = bound["sock"]
    released = client.call("stats")["channels_released"]
    dup = os.dup(s.fileno())
    s.close()
    time.sleep(0.3)
    assert client.row(sid) is not None          # one copy of the fd is still open
    os.close(dup)
    wait_for(lambda: client.row(sid) is None, 5, 0.05, "the socket gone after EOF")
    assert client.call("stats")["channels_released"] == released + 1
    # The port is free again, and a datagram to the old socket finds no one.
    bound2, s2 = client.bind(port=42000)
    peer.send("eof", (a.qnet_ip, 42000), 8, 9)
    (_h, payload) = recv(s2)
    assert payload == _data(8, 9)
    s2.close()


@pytest.mark.timeout(60)
def test_malformed_channel_messages_are_counted_and_the_socket_still_works(udp_graph, client):
    g, a, peer = udp_graph
    lport = peer.open("bad", 6006)
    bound, s = client.bind()
    sid = bound["sock"]
    s.send(b"")                                                   # empty
    s.send(b"short")                                              # shorter than the head
    s.send(UDP_SEND_HEAD.pack(bytes(4), 53, -1, -1) + b"x")       # 0.0.0.0 with a port
    s.send(UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, 300, -1))  # ttl out of range
    s.send(UDP_SEND_HEAD.pack(bytes([10, 0, 0, 1]), 53, -1, -1) + bytes(65508))  # too long
    send(s, a.linux_ip, lport, b"still fine")
    got = peer.recv("bad")
    assert got["size"] == 10, got
    row = client.row(sid)
    assert row["rx_bad_messages"] == 5 and row["tx_datagrams"] == 1, row
    assert g.components()["netstack"]["state"] == "running"
    s.close()


@pytest.mark.timeout(120)
def test_sockets_survive_a_netstack_restart_and_what_waited_is_delivered(udp_graph, client):
    g, a, peer = udp_graph
    lport = peer.open("rs", 6007)
    bound, s = client.bind(port=43000)
    sid = bound["sock"]
    client.call("connect", sock=sid, address=a.linux_ip, port=lport)
    client.call("set_option", sock=sid, name="ttl", value=33)
    pid = g.components()["netstack"]["pid"]
    # netstack stopped: what the client writes waits in the channel.
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(20):
            send(s, "0.0.0.0", 0, i.to_bytes(2, "big") * 50)
    finally:
        os.kill(pid, signal.SIGCONT)
    seen = set()
    for _ in range(20):
        got = peer.recv("rs")
        assert got.get("size") == 100 and got["ttl"] == 33, got
        seen.add(got["sha"])
    assert len(seen) == 20
    # A planned restart while the client keeps sending: nothing the channel took is lost.
    n = 300
    err: list = []

    def sender():
        try:
            for i in range(n):
                send(s, "0.0.0.0", 0, i.to_bytes(4, "big"))
                time.sleep(0.005)
        except Exception as e:  # pragma: no cover - reported below
            err.append(e)

    t = threading.Thread(target=sender)
    t.start()
    res = g.qnet_json("restart", "netstack", timeout=60)
    t.join(30)
    assert res["handed_over"] and not err, (res, err)
    got = 0
    while peer.recv("rs", 3.0).get("size") == 4:
        got += 1
    assert got == n, f"{got} of {n} datagrams arrived across the restart"
    assert g.components()["netstack"]["pid"] != pid
    row = client.row(sid)
    assert row is not None and row["port"] == 43000 and row["remote"] == a.linux_ip
    assert client.call("get_option", sock=sid, name="ttl") == 33
    peer.send("rs", (a.qnet_ip, 43000), 5, 77)
    (_h, payload) = recv(s)
    assert payload == _data(5, 77)
    s.close()
    wait_for(lambda: client.row(sid) is None, 5, 0.05, "the socket closed after the restart")


@pytest.mark.timeout(90)
def test_sockets_survive_a_netstack_crash(udp_graph, client):
    g, a, peer = udp_graph
    lport = peer.open("crash", 6008)
    bound, s = client.bind(port=43001)
    sid = bound["sock"]
    client.call("set_option", sock=sid, name="tos", value=0x20)
    pid = g.components()["netstack"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (c := g.components()["netstack"])["state"] == "running" and c["pid"] != pid,
             30, 0.1, "netstack back after the crash")
    # The socket came back from the checkpoint, on the same channel.
    wait_for(lambda: client.row(sid) is not None, 10, 0.1, "the socket listed again")
    send(s, a.linux_ip, lport, b"after the crash")
    got = peer.recv("crash")
    assert got["size"] == 15 and got["tos"] == 0x20 and got["src"] == [a.qnet_ip, 43001], got
    peer.send("crash", (a.qnet_ip, 43001), 6, 8)
    (_h, payload) = recv(s)
    assert payload == _data(6, 8)
    s.close()
