"""`qnet port add --fault`: the driver's fault injector on a real TAP port, measured from Linux.

    ns A  <-TAP->  p0 (plain)  [qnet]  p1 (--fault delay=D,...)  <-TAP->  ns B

Each namespace pings qnet's address on its own port: the echo request and reply cross p1's
driver once each way, so B's round trip must grow by about 2 x D over A's. Losses, duplicates
and reordering must show in the driver's counters in `qnet status`, and a Linux TCP transfer
from A to B through the bad port must still arrive whole (the kernel's TCP is the reference;
this kernel has no netem).
"""
from __future__ import annotations

import hashlib
import random
import statistics

import pytest

from components.ethdriver.backends.fault import parse_fault_spec
from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, stop_process, wait_for

pytestmark = pytest.mark.interop

DELAY = 0.05
FAULT = f"delay={DELAY},loss=0.05,dup=0.02,reorder=0.05,seed=7"
PINGS = 20
TRANSFER = 300_000
TRANSFER_TIMEOUT = 60.0

# One TCP connection: prints "BYTES SHA256".
_SINK = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3]))
h, n = hashlib.sha256(), 0
while (b := c.recv(1 << 16)):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
_SOURCE = r"""
import random, socket, sys
data = random.Random(5).randbytes(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
s.settimeout(float(sys.argv[4])); s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1)
"""


@pytest.fixture(scope="module")
def fault_graph():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    xa, xb = random.sample(range(1, 255), 2)
    g = QnetGraph.start()
    try:
        a = g.add_ns_port("p0", xa)
        b = g.add_ns_port("p1", xb, "--fault", FAULT)
        yield g, a, b
    finally:
        g.stop()


def _driver(g: QnetGraph, port: str) -> dict:
    """The driver's figures from its last heartbeat, as `qnet status --json` shows them."""
    rows = g.qnet_json("status")["components"]
    row = next(r for r in rows if r["name"].endswith("." + port) and r["name"].startswith("ethdriver"))
    return row.get("details") or {}


def test_the_fault_port_adds_two_delays_to_the_round_trip(fault_graph):
    g, a, b = fault_graph
    plain = a.ping(a.qnet_ip, "-c", str(PINGS), "-i", "0.2", "-W", "2", timeout=30)
    faulty = b.ping(b.qnet_ip, "-c", str(PINGS), "-i", "0.2", "-W", "2", timeout=30)
    assert plain.received >= PINGS - 1, plain.text
    # 5 % loss each way: most replies still come back
    assert faulty.received >= PINGS // 2, faulty.text
    base = statistics.median(r[3] for r in plain.replies)
    rtts = sorted(r[3] for r in faulty.replies)
    print(f"\nplain median {base:.2f} ms; through --fault {FAULT}: min {rtts[0]:.2f}, "
          f"median {statistics.median(rtts):.2f} ms; lost {faulty.lost}/{faulty.transmitted}")
    assert rtts[0] >= 2 * DELAY * 1000, f"a reply faster than two delays: {rtts}"
    assert base < 2 * DELAY * 1000, f"the plain port is as slow as the faulty one: {plain.text}"
    # coarse: the delay line adds its delay, not several (a timer that misses its deadline would)
    assert statistics.median(rtts) < 2 * DELAY * 1000 + 150, rtts


def test_losses_and_the_other_faults_show_in_status(fault_graph):
    g, a, b = fault_graph
    b.ping(b.qnet_ip, "-c", "40", "-i", "0.05", "-W", "1", timeout=30)

    def counted():
        d = _driver(g, "p1")
        c = d.get("backend_counters") or {}
        return d if c.get("rx_fault_dropped", 0) + c.get("tx_fault_dropped", 0) > 0 else None
    d = wait_for(counted, 5.0, 0.3, "fault drops in the p1 driver's status")
    c = d["backend_counters"]
    assert parse_fault_spec(d["fault"]) == parse_fault_spec(FAULT)   # the canonical text of the same faults
    assert d["drops"] >= c["rx_fault_dropped"] + c["tx_fault_dropped"]
    assert c["rx_fault_delayed"] > 0 and c["tx_fault_delayed"] > 0
    assert {"fault_rx_line", "fault_tx_line"} <= set(d["tables"])
    plain = _driver(g, "p0")
    assert plain["fault"] is None and not any("fault" in k for k in plain.get("backend_counters") or {})


def test_linux_tcp_through_the_fault_port_arrives_whole(fault_graph):
    g, a, b = fault_graph
    sink = b.popen([NS_PYTHON, "-c", _SINK, b.linux_ip, "5301", str(TRANSFER_TIMEOUT)])
    try:
        assert sink.stdout.readline().strip() == "listening", sink.stderr.read()
        a.sh([NS_PYTHON, "-c", _SOURCE, b.linux_ip, "5301", str(TRANSFER), str(TRANSFER_TIMEOUT)],
             timeout=TRANSFER_TIMEOUT + 10)
        out, err = sink.communicate(timeout=TRANSFER_TIMEOUT)
    finally:
        stop_process(sink)
    want = hashlib.sha256(random.Random(5).randbytes(TRANSFER)).hexdigest()
    assert out.split() == [str(TRANSFER), want], err

    def faults():
        c = _driver(g, "p1").get("backend_counters") or {}
        return c if c.get("tx_fault_reordered", 0) and c.get("tx_fault_duplicated", 0) else None
    c = wait_for(faults, 5.0, 0.3, "reordered and duplicated frames counted on p1")
    print(f"\n{TRANSFER} B A->B through {FAULT}: " +
          ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if "fault" in k))


def test_a_bad_fault_value_is_a_usage_error_naming_the_key(fault_graph):
    g, a, b = fault_graph
    res = g.qnet("port", "add", "p9", "--tap", "qtapbad", "--fault", "loss=0.01,delay=20", check=False)
    assert res.returncode == 2
    assert "delay" in res.stderr and "0.0..10.0" in res.stderr, res.stderr
    assert not any(r["name"] == "p9" for r in g.qnet_json("port", "list"))
