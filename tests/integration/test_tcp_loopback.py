"""TCP over qnet's own loopback (127.0.0.1 and the stack's own addresses) between two programs
on this host, and listeners' readiness channels (qnet.tcp 1.1): readable while a connection
waits, closed with the client, kept across `qnet restart netstack`."""
from __future__ import annotations

import hashlib
import json
import random
import select
import threading

import pytest

from components.netstack.tcp_client import TcpClient
from ipc.protocols.netstack import NETSTACK
from ipc.rpc import RpcClient

from .conftest import default_graph_up, run_qnet, wait_until


@pytest.fixture(scope="module")
def run():
    with default_graph_up("ql") as run:
        yield run


@pytest.fixture
def client(run):
    c = TcpClient(run)
    yield c
    c.close()


@pytest.fixture
def server(run):
    """The other program: its own client (an RpcClient is one thread's, as a zmq socket is)."""
    c = TcpClient(run)
    yield c
    c.close()


def _both_ways(a, b, size: int) -> None:
    """size bytes a -> b and b -> a at once, sha256-exact."""
    rng = random.Random(size)
    up, down = rng.randbytes(size), rng.randbytes(size)
    got = {}

    def pump(src, dst, data, key):
        def send():
            src.sendall(data)
            src.shutdown()
        t = threading.Thread(target=send)
        t.start()
        buf = bytearray()
        dst.settimeout(60)
        while True:
            chunk = dst.recv(1 << 20)
            if not chunk:
                break
            buf.extend(chunk)
        t.join(60)
        got[key] = buf

    t1 = threading.Thread(target=pump, args=(a, b, up, "up"))
    t1.start()
    pump(b, a, down, "down")
    t1.join(120)
    assert hashlib.sha256(got["up"]).hexdigest() == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(got["down"]).hexdigest() == hashlib.sha256(down).hexdigest()


@pytest.mark.parametrize("address", [None, "127.0.0.1"])
def test_5mb_each_way_over_127_0_0_1_sha256_exact(client, server, address):
    port = 7400 if address is None else 7401
    lst = server.listen(port, address=address)
    try:
        s = client.connect("127.0.0.1", port, timeout=10)
        peer = lst.accept(timeout=10)
        assert s.remote == ("127.0.0.1", port) and peer.remote == s.local
        _both_ways(s, peer, 5_000_000)
        s.close()
        peer.close()
    finally:
        lst.close()


def test_a_connect_to_one_of_the_stacks_own_addresses_loops_back(run, client, server):
    with RpcClient(f"ipc://{run}/netstack.rpc", NETSTACK, timeout=5) as ns:
        ns.call("port_add", name="lb0")
        ns.call("addr_add", port="lb0", address="10.77.0.1/24")
    lst = server.listen(7402)
    try:
        s = client.connect("10.77.0.1", 7402, timeout=10)
        peer = lst.accept(timeout=10)
        assert s.local[0] == s.remote[0] == "10.77.0.1"
        _both_ways(s, peer, 500_000)
        s.close()
        peer.close()
    finally:
        lst.close()


def _readable(lst, timeout: float) -> bool:
    return bool(select.select([lst], [], [], timeout)[0])


def test_a_listener_with_a_readiness_channel_is_readable_while_a_connection_waits(client):
    lst = client.listen(7403, readiness=True)
    assert lst.channel
    assert not _readable(lst, 0.3)
    a = client.connect("127.0.0.1", 7403, timeout=10)
    assert _readable(lst, 5)
    pa = lst.accept(timeout=0)
    assert pa.remote == a.local
    assert not _readable(lst, 0.3)                    # the queue is empty again
    b = client.connect("127.0.0.1", 7403, timeout=10)
    c = client.connect("127.0.0.1", 7403, timeout=10)
    assert _readable(lst, 5)
    first = lst.accept(timeout=0)
    assert _readable(lst, 5)                          # one still waits: readable again
    second = lst.accept(timeout=0)
    assert {first.remote, second.remote} == {b.local, c.local}
    with pytest.raises(BlockingIOError):
        lst.accept(timeout=0)
    rows = json.loads(run_qnet(client.run, "ss", "-l", "--json").stdout)
    mine = [r for r in rows if r.get("port") == 7403]
    assert mine and mine[0]["channel"] == lst.channel and mine[0]["owner"] == client.owner
    # The client closes its readiness fd (as its process exiting would): the listener goes.
    lst.ready.close()
    wait_until(lambda: not any(r.get("port") == 7403 for r in json.loads(
        run_qnet(client.run, "ss", "-l", "--json").stdout)), 10, "the listener to close")
    with pytest.raises(ConnectionRefusedError):
        client.connect("127.0.0.1", 7403, timeout=10)
    for s in (a, b, c, pa, first, second):
        s.close()


def test_close_listener_ends_the_readiness_channel(client):
    lst = client.listen(7404, readiness=True)
    lst.client.rpc.call("close_listener", listener=lst.id)
    assert _readable(lst, 5) and lst.ready.recv(16) == b""      # EOF
    lst.ready.close()


def test_listeners_with_readiness_channels_survive_a_planned_netstack_restart(run, client):
    waiting = client.listen(7405, readiness=True)
    idle = client.listen(7406, readiness=True)
    early = client.connect("127.0.0.1", 7405, timeout=10)
    assert _readable(waiting, 5)
    res = run_qnet(run, "restart", "netstack", "--json", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout).get("handed_over"), res.stdout
    # The connection queued before the restart is still there, and still signalled.
    assert _readable(waiting, 5)
    got = waiting.accept(timeout=0)
    assert got.remote == early.local
    got.sendall(b"after")
    early.settimeout(10)
    assert early.recv(5) == b"after"
    assert not _readable(idle, 0.3)
    late = client.connect("127.0.0.1", 7406, timeout=10)
    assert _readable(idle, 5)
    assert idle.accept(timeout=0).remote == late.local
    rows = json.loads(run_qnet(run, "ss", "-l", "--json").stdout)
    assert {r["channel"] for r in rows if r.get("port") in (7405, 7406)} == {waiting.channel,
                                                                            idle.channel}
    # And the pairing still works the other way: the client goes, the listener goes.
    idle.ready.close()
    wait_until(lambda: not any(r.get("port") == 7406 for r in json.loads(
        run_qnet(run, "ss", "-l", "--json").stdout)), 10, "the listener to close")
    waiting.close()
