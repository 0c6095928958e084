"""TapBackend against the Linux kernel: a TAP moved into a network namespace of its own, whose
kernel side ARPs and pings an address that only this test answers, with scapy-built frames."""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from components.ethdriver.backends.tap import TapBackend, TapError, open_tap, set_link_up

from .util import missing_prerequisite

pytestmark = pytest.mark.interop

OUR_MAC = "02:99:00:00:00:02"


PING = (["ping"] if shutil.which("ping")
        else ["busybox", "ping"] if shutil.which("busybox") else None)


def _missing() -> str | None:
    if missing_prerequisite() is not None:
        return missing_prerequisite()
    if PING is None:
        return "needs ping (iputils-ping or busybox)"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)


class Port:
    """A TAP whose fd is ours and whose interface lives in namespace ``ns`` as 10.99.X.1/24."""

    def __init__(self, vnet_hdr: bool) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"qnt-{tag}"
        self.ifname = f"qtap{tag}"
        self.x = secrets.randbelow(254) + 1
        self.kernel_ip = f"10.99.{self.x}.1"
        self.our_ip = f"10.99.{self.x}.2"
        self.static_ip = f"10.99.{self.x}.3"  # a neighbor the kernel need not resolve
        self.backend: TapBackend | None = None
        self.ns_made = False
        self.vnet_hdr = vnet_hdr

    def setup(self) -> None:
        fd = open_tap(self.ifname, vnet_hdr=self.vnet_hdr)
        self.backend = TapBackend(fd, self.ifname)
        assert not self.backend.link_up(), "a new TAP is administratively down"
        set_link_up(self.ifname)
        assert self.backend.link_up()
        assert self.backend.mtu == 1500
        kernel_mac = self.backend.mac
        assert kernel_mac is not None and len(kernel_mac) == 6
        ip("netns", "add", self.ns)
        self.ns_made = True
        self.ns_exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1")
        ip("link", "set", self.ifname, "netns", self.ns)  # the fd keeps working
        ip("-n", self.ns, "addr", "add", f"{self.kernel_ip}/24", "dev", self.ifname)
        ip("-n", self.ns, "link", "set", self.ifname, "up")
        ip("-n", self.ns, "neigh", "add", self.static_ip, "lladdr", OUR_MAC,
           "dev", self.ifname, "nud", "permanent")
        # The interface is now out of our namespace: only the fd reaches it.
        assert self.backend.link_up()

    def ns_exec(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], check=True, timeout=10,
                              capture_output=True, **kw)

    def send_udp_from_kernel(self, count: int, marker: bytes) -> None:
        code = ("import socket,sys\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"for i in range({count}): s.sendto({marker!r}+bytes([i]),('{self.static_ip}',9))\n")
        self.ns_exec(sys.executable, "-c", code)

    def cleanup(self) -> None:
        try:
            if self.backend is not None:
                self.backend.close()  # the last fd: the kernel removes the TAP
        finally:
            if self.ns_made:
                subprocess.run(["ip", "netns", "del", self.ns], timeout=10, capture_output=True)


@pytest.fixture(params=[False, True], ids=["plain", "vnet_hdr"])
def port(request):
    p = Port(vnet_hdr=request.param)
    try:
        p.setup()
        yield p
    finally:
        p.cleanup()


def answer(frame: bytes, port: Port) -> list[bytes]:
    """Replies a host at port.our_ip would send: ARP is-at and ICMP echo reply."""
    pkt = Ether(frame)
    if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == port.our_ip:
        return [bytes(Ether(src=OUR_MAC, dst=pkt.src)
                      / ARP(op=2, hwsrc=OUR_MAC, psrc=port.our_ip, hwdst=pkt[ARP].hwsrc,
                            pdst=pkt[ARP].psrc))]
    if IP in pkt and ICMP in pkt and pkt[IP].dst == port.our_ip and pkt[ICMP].type == 8:
        return [bytes(Ether(src=OUR_MAC, dst=pkt.src)
                      / IP(src=port.our_ip, dst=pkt[IP].src)
                      / ICMP(type=0, id=pkt[ICMP].id, seq=pkt[ICMP].seq) / bytes(pkt[ICMP].payload))]
    return []


def test_kernel_pings_an_address_answered_through_the_backend(port):
    backend = port.backend
    ping = subprocess.Popen(["ip", "netns", "exec", port.ns, *PING, "-c1", "-W2", port.our_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen_arp = seen_echo = False
    try:
        deadline = time.monotonic() + 5.0
        while ping.poll() is None and time.monotonic() < deadline:
            if not select.select([backend.fileno()], [], [], 0.1)[0]:
                continue
            for frame in backend.read_batch():
                replies = answer(frame, port)
                if replies:
                    seen_arp |= ARP in Ether(frame)
                    seen_echo |= ICMP in Ether(frame)
                    assert backend.write_batch(replies) == len(replies)
        out, _ = ping.communicate(timeout=5)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait(5)
    assert seen_arp, "the kernel's ARP request never arrived"
    assert seen_echo, "the echo request never arrived"
    assert ping.returncode == 0, out.decode()
    assert re.search(rb"1 (packets )?received", out), out.decode()
    c = backend.counters()
    assert c["tx_frames"] >= 2 and c["tx_dropped"] == 0 and c["rx_short"] == 0


def _udp_with(frames: list[bytes], marker: bytes) -> list[bytes]:
    return [f for f in frames if UDP in Ether(f) and bytes(Ether(f)[UDP].payload).startswith(marker)]


def test_read_batch_returns_all_queued_frames_in_one_call(port):
    backend = port.backend
    backend.read_batch()  # whatever the kernel sent while the port came up
    marker = b"qnet-batch"
    port.send_udp_from_kernel(12, marker)  # returns once all 12 are queued on the TAP
    assert select.select([backend.fileno()], [], [], 2.0)[0]
    got = _udp_with(backend.read_batch(), marker)
    assert [bytes(Ether(f)[UDP].payload)[-1] for f in got] == list(range(12))
    port.send_udp_from_kernel(12, marker)
    assert select.select([backend.fileno()], [], [], 2.0)[0]
    first = backend.read_batch(max_frames=5)
    assert len(first) == 5
    rest = backend.read_batch()
    assert len(_udp_with(first + rest, marker)) == 12


def test_fd_passed_to_a_child_reads_the_same_tap(port):
    backend = port.backend
    fd = backend.fileno()
    hdr = backend.vnet_hdr_len
    marker = b"qnet-child"
    child_code = (
        "import os, select, sys, time\n"
        "fd, hdr, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()\n"
        "print(os.fstat(fd).st_ino, flush=True)\n"
        "deadline = time.monotonic() + 5\n"
        "while time.monotonic() < deadline:\n"
        "    if not select.select([fd], [], [], 0.1)[0]:\n"
        "        continue\n"
        "    try:\n"
        "        frame = os.read(fd, 70000)[hdr:]\n"
        "    except BlockingIOError:\n"
        "        continue\n"
        "    if marker in frame:\n"
        "        print('got', frame.hex(), flush=True)\n"
        "        sys.exit(0)\n"
        "sys.exit(1)\n")
    child = subprocess.Popen([sys.executable, "-c", child_code, str(fd), str(hdr), marker.decode()],
                             pass_fds=[fd], stdout=subprocess.PIPE, text=True)
    try:
        inode = int(child.stdout.readline())
        assert inode == os.fstat(fd).st_ino
        port.send_udp_from_kernel(1, marker)
        out, _ = child.communicate(timeout=10)
        assert child.returncode == 0, "the child never read the frame from the shared TAP fd"
        frame = bytes.fromhex(out.split()[1])
        assert bytes(Ether(frame)[UDP].payload) == marker + b"\x00"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    # The parent's backend still works on the same fd afterwards.
    port.send_udp_from_kernel(1, marker)
    assert select.select([fd], [], [], 2.0)[0]
    assert _udp_with(backend.read_batch(), marker)


def test_attaching_to_a_missing_tap_without_create_names_the_device():
    name = f"qtap{secrets.token_hex(3)}"
    with pytest.raises(TapError, match=name):
        open_tap(name, create=False)
