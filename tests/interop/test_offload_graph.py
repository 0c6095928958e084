"""TAP offloads end to end through a running qnet graph, against Linux on both sides.

    ns A: kernel, TSO/GSO on  <-TAP, vnet_hdr->  p0 (--offloads) [qnet] p1 (plain)  <-TAP->  ns B

A's kernel hands p0 64 KiB TCP super-frames and frames with partial checksums (its TAP takes
TSO and checksum offload once our driver sets TUNSETOFFLOAD). netstack must cut them into
MTU-sized frames with valid checksums before they leave p1; tcpdump in B records what left p1
and scapy (nobody's code here) checks every frame. The reverse direction sends to the offload
port, each frame behind a zero virtio-net header.
"""
from __future__ import annotations

import os
import re
import random
import tempfile

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap
from tests.scapy_checks import checksums_agree

from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, stop_process, wait_for

pytestmark = pytest.mark.interop

MTU = 1500
BULK = 4_000_000          # bytes A -> B
REVERSE = 2_000_000       # bytes B -> A
TRANSFER_TIMEOUT = 90.0   # seconds for one bulk transfer (two shared cores, Python forwarding)

# Receives one TCP connection, prints "BYTES SHA256 SECONDS" (first byte to EOF).
_SINK = r"""
import hashlib, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3]))
h, n, t0 = hashlib.sha256(), 0, None
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    if t0 is None:
        t0 = time.monotonic()
    h.update(b); n += len(b)
print(n, h.hexdigest(), round(time.monotonic() - (t0 or time.monotonic()), 3), flush=True)
"""
# Sends SIZE seeded random bytes, prints their SHA256.
_SOURCE = r"""
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[4])).randbytes(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[5]))
s.sendall(data); s.shutdown(socket.SHUT_WR)
s.settimeout(float(sys.argv[5])); s.recv(1)  # the sink's close: everything was read
print(hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.fixture(scope="module", params=["socketpair", "zmq"])
def offload_graph(request):
    """(graph, a, b): p0 with --offloads (A behind it), p1 plain (B behind it), on each data
    transport (a super-frame and its header must fit both)."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    xa, xb = random.sample(range(1, 255), 2)
    g = QnetGraph.start(data_transport=request.param)
    try:
        a = g.add_ns_port("p0", xa, "--offloads")
        b = g.add_ns_port("p1", xb)
        yield g, a, b
    finally:
        g.stop()


def _offload_counters(g: QnetGraph, port: str) -> dict:
    return g.qnet_json("stats")["binding"]["offloads"].get(port, {})


def _valid_checksums(p: Ether, layer) -> bool:
    """Whether the IPv4 header and transport checksums are what scapy computes."""
    return IP in p and all(checksums_agree(p, layer))


class Tcpdump:
    """tcpdump on a namespace's TAP, every frame both ways, into a pcap this test reads."""

    def __init__(self, ns, path: str) -> None:
        self.path = path
        # --immediate-mode: frames reach the file as they come, not in ring blocks that a
        # stopped tcpdump would never write out.
        self.proc = ns.popen(["tcpdump", "-i", ns.tap, "-n", "-s", "0", "-U", "-B", "16384",
                              "--immediate-mode", "-w", path, "ip"])
        try:
            wait_for(lambda: os.path.exists(path) and os.path.getsize(path) >= 24, 10.0, 0.05,
                     "tcpdump's pcap header")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> str:
        """Stop once the file has stopped growing (bounded); tcpdump's summary lines."""
        sizes = [-1]

        def settled() -> bool:
            sizes.append(os.path.getsize(self.path))
            return sizes[-1] == sizes[-2]
        try:
            wait_for(settled, 5.0, 0.3, "the capture to settle")
        finally:
            stop_process(self.proc)
        return self.proc.stderr.read() if self.proc.stderr else ""


def _bulk(src, dst, nbytes: int, port: int) -> tuple[int, str, str, float]:
    """A TCP transfer of ``nbytes`` from ``src``'s namespace to ``dst``'s:
    (bytes received, sha256 received, sha256 sent, seconds first byte to EOF)."""
    sink = dst.popen([NS_PYTHON, "-c", _SINK, dst.linux_ip, str(port), str(TRANSFER_TIMEOUT)])
    try:
        line = sink.stdout.readline()
        assert line.strip() == "listening", sink.stderr.read()
        sent = src.sh([NS_PYTHON, "-c", _SOURCE, dst.linux_ip, str(port), str(nbytes), "7",
                       str(TRANSFER_TIMEOUT)], timeout=TRANSFER_TIMEOUT + 10).stdout.strip()
        out, err = sink.communicate(timeout=TRANSFER_TIMEOUT)
        assert sink.returncode == 0, err
        n, digest, secs = out.split()
        return int(n), digest, sent, float(secs)
    finally:
        stop_process(sink)


def test_port_list_shows_what_each_port_took(offload_graph):
    g, a, b = offload_graph
    rows = {r["name"]: r for r in g.qnet_json("port", "list")}
    assert {"csum", "tso4"} <= set(rows["p0"]["offloads"]), rows["p0"]
    assert rows["p1"]["offloads"] == []
    table = g.qnet("port", "list").stdout
    assert "OFFLOADS" in table and "csum,tso4" in table


def test_tcp_super_frames_from_an_offload_port_leave_a_plain_port_as_valid_mtu_segments(offload_graph):
    g, a, b = offload_graph
    before = _offload_counters(g, "p0")
    with tempfile.TemporaryDirectory(prefix="qoff") as tmp:
        pcap = os.path.join(tmp, "b.pcap")
        dump = Tcpdump(b, pcap)
        try:
            n, got, sent, secs = _bulk(a, b, BULK, 5201)
        finally:
            err = dump.stop()
        assert n == BULK and got == sent, f"B received {n} bytes, sha {got} (sent {sent})"
        after = _offload_counters(g, "p0")
        super_frames = after["rx_gso_frames"] - before.get("rx_gso_frames", 0)
        segments = after["rx_gso_segments"] - before.get("rx_gso_segments", 0)
        assert super_frames > 0, after
        assert after.get("rx_bad_offload", 0) == 0, after
        line = next((ln for ln in g.qnet("stats").stdout.splitlines() if ln.startswith("offload:p0:")), "")
        assert f"rx_gso_frames={after['rx_gso_frames']}" in line, line
        # tcpdump itself may miss frames on a loaded machine (its own buffer, not qnet: the
        # transfer's hash above proves every byte crossed). Every frame it did see is checked,
        # and it must have seen nearly all of them.
        m = re.search(r"(\d+) packets dropped by kernel", err)
        missed = int(m.group(1)) if m else 0

        data = [p for p in rdpcap(pcap) if IP in p and TCP in p and p[IP].src == a.linux_ip]
        payload = sum(len(p[TCP].payload) for p in data)
        assert payload >= BULK * 0.9 and (missed or payload >= BULK), \
            f"{len(data)} frames from A in the capture with {payload} bytes (tcpdump missed {missed})"
        too_big = [len(p) for p in data if len(p) > MTU + 14]
        assert not too_big, f"{len(too_big)} frames longer than the MTU left p1: {too_big[:5]}"
        bad = [i for i, p in enumerate(data) if not _valid_checksums(p, TCP)]
        assert not bad, f"{len(bad)} of {len(data)} frames with wrong checksums, first at {bad[:5]}"
        sizes = sorted({len(p[TCP].payload) for p in data})
        print(f"\nA->B {BULK} B in {secs:.2f} s ({BULK * 8 / secs / 1e6:.1f} Mbit/s); "
              f"{super_frames} super-frames cut into {segments} segments; {len(data)} frames "
              f"from A at p1, TCP payload sizes {sizes[0]}..{sizes[-1]}")


def test_tcp_to_an_offload_port_arrives_whole(offload_graph):
    g, a, b = offload_graph
    n, got, sent, secs = _bulk(b, a, REVERSE, 5202)
    assert n == REVERSE and got == sent, f"A received {n} bytes, sha {got} (sent {sent})"
    print(f"\nB->A {REVERSE} B in {secs:.2f} s ({REVERSE * 8 / secs / 1e6:.1f} Mbit/s)")


def test_udp_with_partial_checksums_leaves_the_plain_port_with_correct_ones(offload_graph):
    g, a, b = offload_graph
    before = _offload_counters(g, "p0").get("rx_csum_partial", 0)
    count, port = 20, 5203
    recv = b.popen([NS_PYTHON, "-c", r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10.0); print("ready", flush=True)
got = set()
try:
    while len(got) < int(sys.argv[3]):
        got.add(s.recv(2048))
finally:
    print(len(got), flush=True)
""", b.linux_ip, str(port), str(count)])
    with tempfile.TemporaryDirectory(prefix="qoff") as tmp:
        pcap = os.path.join(tmp, "b.pcap")
        dump = Tcpdump(b, pcap)
        try:
            assert recv.stdout.readline().strip() == "ready"
            a.python(f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({count}):
    s.sendto(b"%04d" % i + bytes(range(256)) * 4, ("{b.linux_ip}", {port}))
""")
            out, err = recv.communicate(timeout=15)
        finally:
            stop_process(recv)
            dump.stop()
        # B's kernel drops a UDP datagram with a wrong checksum: all of them arriving says it too.
        assert out.strip() == str(count), err
        udp = [p for p in rdpcap(pcap) if UDP in p and p[IP].src == a.linux_ip and p[UDP].dport == port]
        assert len(udp) == count
        assert all(_valid_checksums(p, UDP) for p in udp)
    assert _offload_counters(g, "p0")["rx_csum_partial"] - before >= count



@pytest.mark.parametrize("component", ["netstack", "ethdriver.p0"])
def test_offloads_survive_a_restart_of_either_end(offload_graph, component):
    g, a, b = offload_graph
    before = _offload_counters(g, "p0").get("rx_gso_frames", 0)
    g.qnet("restart", component, timeout=30)
    g.remember_pids()
    wait_for(lambda: (r := g.port_row("p0"))["attached"] and "tso4" in r["offloads"], 10.0, 0.1,
             "p0 attached again with its offloads")
    assert _offload_counters(g, "p0")["rx_gso_frames"] >= before  # handed over with the state
    n, got, sent, _secs = _bulk(a, b, 1_000_000, 5204 if component == "netstack" else 5205)
    assert n == 1_000_000 and got == sent
    assert _offload_counters(g, "p0")["rx_gso_frames"] > before
