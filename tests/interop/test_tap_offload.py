"""TAP offloads against Linux: the kernel in namespace A sends TCP (and UDP with UDP_SEGMENT)
through a TAP whose fd we opened with IFF_VNET_HDR and TUNSETOFFLOAD; this test forwards every
frame to a plain TAP whose kernel side sits in namespace B, as netstack will forward to a port
without offloads. A's super-frames and partial checksums must arrive as such; what leaves for B
must be MTU-sized with checksums scapy accepts, and B's kernel must receive every byte.

    ns A: tapA 10.97.X.1/24  <-fd, offloads->  [this test: segment_gso / complete_checksum]
                                                       <-fd, plain->  ns B: tapB 10.97.X.2/24
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import subprocess
import time

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from tests.scapy_checks import checksums_agree

from components.ethdriver.backends.tap import TapBackend, open_tap, set_link_up
from components.netstack.core.offload import (PortOffloads, Treatment, complete_checksum,
                                              to_plain_frames, treatment)
from components.netstack.wire.virtio_net import (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, HDR_NONE,
                                                 VNET_HDR_LEN, VNET_HDR_NONE, split_prefixed)

from .util import NS_PYTHON, missing_prerequisite

pytestmark = pytest.mark.interop

if (_reason := missing_prerequisite()) is not None:
    pytest.skip(_reason, allow_module_level=True)

MTU = 1500
PORT = 5001
SEND_BYTES = 3_000_000
SCAPY_SAMPLE = 120  # frames checked with scapy per direction (scapy parses ~2k frames/s)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)


def _valid(frame: bytes, layer) -> bool:
    """Whether scapy computes the checksums the frame carries (IPv4 header and transport)."""
    return all(checksums_agree(Ether(frame), layer))


class Link:
    """Two namespaces joined through this process by two TAPs: A's with offloads, B's plain."""

    def __init__(self, v6: bool, b_offloads: bool = False) -> None:
        tag = secrets.token_hex(3)
        x = secrets.randbelow(254) + 1
        self.ns_a, self.ns_b = f"qoa-{tag}", f"qob-{tag}"
        self.if_a, self.if_b = f"qoa{tag}", f"qob{tag}"
        self.v6 = v6
        self.b_offloads = b_offloads
        self.addr_a, self.addr_b, plen = ((f"fd00:97:{x:x}::1", f"fd00:97:{x:x}::2", 64) if v6
                                          else (f"10.97.{x}.1", f"10.97.{x}.2", 24))
        self.plen = plen
        self.a: TapBackend | None = None
        self.b: TapBackend | None = None
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        # what the forwarder saw
        self.from_a: list[tuple] = []      # (hdr, frame) of every frame A's kernel sent
        self.to_b: list[bytes] = []
        self.partial_fixed: list[tuple[bytes, bytes]] = []  # (as received, completed)
        self.treatments: dict[Treatment, int] = {}

    def setup(self) -> None:
        self.a = TapBackend(open_tap(self.if_a, vnet_hdr=True), self.if_a, offloads=True)
        self.b = TapBackend(open_tap(self.if_b, vnet_hdr=self.b_offloads), self.if_b,
                            offloads=self.b_offloads)
        for ns, ifname, addr in ((self.ns_a, self.if_a, self.addr_a),
                                 (self.ns_b, self.if_b, self.addr_b)):
            ip("netns", "add", ns)
            self.made.append(ns)
            set_link_up(ifname)
            ip("link", "set", ifname, "netns", ns)  # our fds keep working
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{addr}/{self.plen}", "dev", ifname,
               *(["nodad"] if self.v6 else []))
            ip("-n", ns, "link", "set", ifname, "mtu", str(MTU), "up")

    def run(self, ns: str, code: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, NS_PYTHON, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def forward(self, until: callable, timeout: float) -> None:
        """Move frames both ways until ``until()`` is true, as netstack forwards between ports:
        each frame is treated by what the out-port takes (core/offload.treatment)."""
        a, b = self.a, self.b
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"traffic did not finish within {timeout} s")
            ready = select.select([a.fileno(), b.fileno()], [], [], 0.05)[0]
            if a.fileno() in ready:
                out = self._treat(a.read_batch(), a, b, record=True)
                self.to_b += out
                b.write_batch(out)
            if b.fileno() in ready:
                a.write_batch(self._treat(b.read_batch(), b, a, record=False))

    def _treat(self, batch: list[bytes], src: TapBackend, dst: TapBackend, record: bool
               ) -> list[bytes]:
        to = PortOffloads.from_names(dst.offloads())
        out: list[bytes] = []
        for raw in batch:
            if not src.frame_prefix_len:
                hdr, frame = HDR_NONE, memoryview(raw)
            else:
                hdr, frame = split_prefixed(raw, src.frame_prefix_len)
            t = treatment(hdr, to)
            if record:
                self.from_a.append((hdr, bytes(frame)))
                self.treatments[t] = self.treatments.get(t, 0) + 1
            if t is Treatment.PASS_THROUGH or t is Treatment.PLAIN and dst.frame_prefix_len:
                # The out-port finishes the work: hand the frame on, header and all, uncopied.
                out.append(raw if src.frame_prefix_len else VNET_HDR_NONE + raw)
                continue
            plain = to_plain_frames(frame, hdr, MTU)
            if t is Treatment.COMPLETE_CHECKSUM and record:
                self.partial_fixed.append((bytes(frame), plain[0]))
            out += [VNET_HDR_NONE + f for f in plain] if dst.frame_prefix_len else plain
        return out

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for be in (self.a, self.b):
            if be is not None:
                be.close()  # the last fd: the kernel removes the TAP
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)


@pytest.fixture(params=[False, True], ids=["v4", "v6"])
def link(request):
    lk = Link(v6=request.param)
    try:
        lk.setup()
        yield lk
    finally:
        lk.cleanup()


RECEIVER = """
import hashlib, socket, sys
s = socket.socket(socket.{fam}, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('{addr}', {port})); s.listen(1)
print('listening', flush=True)
s.settimeout(20)
c, _ = s.accept(); c.settimeout(20)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

SENDER = """
import socket
data = bytes((i * 31 + 7) & 0xFF for i in range(65536)) * ({total} // 65536 + 1)
data = data[:{total}]
s = socket.create_connection(('{addr}', {port}), timeout=20)
s.sendall(data)
s.close()
print('sent', flush=True)
"""


def _payload_digest(total: int) -> str:
    data = bytes((i * 31 + 7) & 0xFF for i in range(65536)) * (total // 65536 + 1)
    return hashlib.sha256(data[:total]).hexdigest()


def test_kernel_tso_super_frames_are_segmented_for_a_port_without_offloads(link):
    assert set(link.a.offloads()) >= {"csum", "tso4", "tso6"}, link.a.offloads()
    assert link.a.frame_prefix_len == VNET_HDR_LEN and link.b.frame_prefix_len == 0
    fam = "AF_INET6" if link.v6 else "AF_INET"
    receiver = link.run(link.ns_b, RECEIVER.format(fam=fam, addr=link.addr_b, port=PORT))
    assert receiver.stdout.readline().strip() == "listening"
    sender = link.run(link.ns_a, SENDER.format(total=SEND_BYTES, addr=link.addr_b, port=PORT))
    link.forward(lambda: sender.poll() is not None and receiver.poll() is not None, timeout=60)
    assert sender.returncode == 0, sender.stderr.read()
    assert receiver.returncode == 0, receiver.stderr.read()
    n, digest = receiver.stdout.readline().split()
    assert int(n) == SEND_BYTES and digest == _payload_digest(SEND_BYTES)

    layer = TCP
    gso_type = GSO_TCPV6 if link.v6 else GSO_TCPV4
    supers = [(h, f) for h, f in link.from_a if h.is_gso]
    assert supers, "the kernel sent no GSO super-frames through the offload TAP"
    assert all(h.gso_protocol == gso_type and h.needs_csum for h, _ in supers)
    assert max(len(f) for _, f in supers) > MTU + 14, "no super-frame was larger than the MTU"
    assert sum(1 for h, _ in link.from_a if h.needs_csum and not h.is_gso) > 0
    assert link.treatments[Treatment.SEGMENT] == len(supers)

    # Everything B got fits the MTU; a sample of it, super-frame pieces first, passes scapy.
    assert max(len(f) for f in link.to_b) <= MTU + 14
    tcp_out = [f for f in link.to_b if layer in Ether(f[:80])]
    for frame in tcp_out[:SCAPY_SAMPLE] + tcp_out[-SCAPY_SAMPLE:]:
        assert _valid(frame, layer)

    # Partial checksums arrived unfinished (scapy rejects them) and left correct.
    assert link.partial_fixed
    for before, after in link.partial_fixed[:SCAPY_SAMPLE]:
        if layer in Ether(before):
            assert not _valid(before, layer) or before == after
            assert _valid(after, layer)
    assert link.a.counters()["rx_gso_frames"] == len(supers)


UDP_RECEIVER = """
import socket
s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)
s.bind(('{addr}', {port})); s.settimeout(5)
print('listening', flush=True)
sizes = []
try:
    while len(sizes) < {count}:
        sizes.append(len(s.recv(65536)))
except socket.timeout:
    pass
print(' '.join(map(str, sizes)), flush=True)
"""

UDP_SENDER = """
import socket
s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)
s.setsockopt(17, 103, {gso})  # SOL_UDP, UDP_SEGMENT
s.sendto(bytes(range(256)) * 20 + b'tail', ('{addr}', {port}))  # 5124 bytes
print('sent', flush=True)
"""


def test_kernel_udp_segment_super_frame_becomes_datagrams_of_gso_size(link):
    if "uso" not in link.a.offloads():
        pytest.skip("this kernel does not accept TUN_F_USO4/6")
    fam = "AF_INET6" if link.v6 else "AF_INET"
    count = 5  # 5124 bytes cut at 1200: 4 x 1200 + 324
    receiver = link.run(link.ns_b, UDP_RECEIVER.format(fam=fam, addr=link.addr_b, port=PORT,
                                                        count=count))
    assert receiver.stdout.readline().strip() == "listening"
    sender = link.run(link.ns_a, UDP_SENDER.format(fam=fam, addr=link.addr_b, port=PORT, gso=1200))
    link.forward(lambda: sender.poll() is not None and receiver.poll() is not None, timeout=30)
    assert sender.returncode == 0, sender.stderr.read()
    assert receiver.stdout.readline().split() == ["1200"] * 4 + ["324"]
    supers = [(h, f) for h, f in link.from_a if h.gso_protocol == GSO_UDP_L4]
    assert len(supers) == 1 and supers[0][0].gso_size == 1200 and supers[0][0].needs_csum
    udp_out = [f for f in link.to_b if UDP in Ether(f) and Ether(f)[UDP].dport == PORT]
    assert len(udp_out) == count
    for frame in udp_out:
        assert _valid(frame, UDP)


def test_complete_checksum_of_a_kernel_partial_frame_matches_scapy(link):
    """A single UDP datagram from A's kernel: partial checksum in, scapy-valid checksum out."""
    fam = "AF_INET6" if link.v6 else "AF_INET"
    code = (f"import socket\ns = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'offload-check' * 9, ('{link.addr_b}', 9))\n")
    sender = link.run(link.ns_a, code)
    # B may never answer (port 9 is closed: an ICMP error goes back, which is fine).
    deadline = time.monotonic() + 5
    link.forward(lambda: sender.poll() is not None and any(
        UDP in Ether(f) and Ether(f)[UDP].dport == 9 for _, f in link.from_a)
        or time.monotonic() > deadline, timeout=10)
    got = [(h, f) for h, f in link.from_a if UDP in Ether(f) and Ether(f)[UDP].dport == 9]
    assert got, "the datagram never came out of A's TAP"
    hdr, frame = got[0]
    assert hdr.needs_csum and not hdr.is_gso
    assert not _valid(frame, UDP), "the kernel completed the checksum itself"
    done = complete_checksum(frame, hdr.csum_start, hdr.csum_offset)
    assert _valid(done, UDP)
    assert bytes(Ether(done)[UDP].payload) == b"offload-check" * 9


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_super_frames_pass_whole_to_a_port_that_takes_them(v6):
    """B's TAP has offloads too: A's super-frames go to B's kernel whole, header and all."""
    lk = Link(v6=v6, b_offloads=True)
    try:
        lk.setup()
        fam = "AF_INET6" if v6 else "AF_INET"
        receiver = lk.run(lk.ns_b, RECEIVER.format(fam=fam, addr=lk.addr_b, port=PORT))
        assert receiver.stdout.readline().strip() == "listening"
        sender = lk.run(lk.ns_a, SENDER.format(total=SEND_BYTES, addr=lk.addr_b, port=PORT))
        lk.forward(lambda: sender.poll() is not None and receiver.poll() is not None, timeout=60)
        assert sender.returncode == 0, sender.stderr.read()
        n, digest = receiver.stdout.readline().split()
        assert int(n) == SEND_BYTES and digest == _payload_digest(SEND_BYTES)
        assert lk.treatments.get(Treatment.SEGMENT, 0) == 0
        assert lk.treatments[Treatment.PASS_THROUGH] > 0
        assert lk.b.counters()["tx_gso_frames"] > 0
        assert max(len(f) for f in lk.to_b) > MTU + 14 + VNET_HDR_LEN
    finally:
        lk.cleanup()


def test_plain_successor_switches_off_the_offloads_its_predecessor_enabled():
    """A driver incarnation without offloads, on the fd an offload incarnation left: the kernel
    must go back to finished, MTU-sized frames, or the plain reader would lose its work."""
    lk = Link(v6=False)
    try:
        lk.setup()
        assert lk.a.offloads()
        successor = TapBackend(os.dup(lk.a.fileno()), lk.if_a)  # plain mode on the same device
        lk.a.close()
        lk.a = successor
        assert successor.offloads() == () and successor.frame_prefix_len == 0
        receiver = lk.run(lk.ns_b, RECEIVER.format(fam="AF_INET", addr=lk.addr_b, port=PORT))
        assert receiver.stdout.readline().strip() == "listening"
        sender = lk.run(lk.ns_a, SENDER.format(total=300_000, addr=lk.addr_b, port=PORT))
        lk.forward(lambda: sender.poll() is not None and receiver.poll() is not None, timeout=60)
        n, digest = receiver.stdout.readline().split()
        assert int(n) == 300_000 and digest == _payload_digest(300_000)
        assert max(len(f) for _, f in lk.from_a) <= MTU + 14
        tcp = [f for _, f in lk.from_a if TCP in Ether(f[:80])]
        assert tcp and all(_valid(f, TCP) for f in tcp[:SCAPY_SAMPLE])
    finally:
        lk.cleanup()
