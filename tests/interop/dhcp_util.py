"""Helpers for DHCP interop tests: real DHCP peers (ISC dhclient, busybox udhcpc, dnsmasq) in
network namespaces on the far side of a qnet TAP port, and scapy-built junk for the server.

    lab = DhcpLab(QnetGraph.start(), tmp_dir)
    g0 = lab.guest_port("g0", x=17)           # qnet serves DHCP on 10.99.17.0/24 (it is .1)
    lab.dhclient(g0)                          # ISC dhclient in g0's namespace gets a lease from us
    up = lab.uplink_port("up0", x=18)         # qnet's DHCP client; the namespace is 10.99.18.1
    log = lab.dnsmasq(up, "10.99.18.50", "10.99.18.60")
    lab.link_up(up, "up0")                    # the client's DISCOVER goes out now
    lab.cleanup()                             # peers killed by pid, ports deleted, namespaces gone

Peers only ever configure their own namespace: the dhclient and udhcpc scripts below apply the
address to the interface and nothing else (no resolv.conf, no hostname). Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, run, stop_process, wait_for

DHCLIENT = shutil.which("dhclient") or "/usr/sbin/dhclient"
BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def missing_peer(*binaries: str) -> str | None:
    """Why a test with these peers cannot run here, or None."""
    reason = missing_prerequisite()
    if reason is not None:
        return reason
    for b in binaries:
        if not os.access(b, os.X_OK):
            return f"needs {b} (apt-get install isc-dhcp-client busybox-static dnsmasq-base)"
    if BUSYBOX in binaries and "udhcpc" not in run([BUSYBOX, "--list"], check=False).stdout.split():
        return f"{BUSYBOX} has no udhcpc applet"
    return None


# dhclient-script(8) contract: $reason, $interface, $new_*/$old_* variables.
DHCLIENT_SCRIPT = """#!/bin/sh
# Test script: apply the lease to the interface, touch nothing else on the host.
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      ip addr del "$old_ip_address/$old_subnet_mask" dev "$interface"
    fi
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    [ -n "$old_ip_address" ] && ip addr del "$old_ip_address/$old_subnet_mask" dev "$interface" ;;
esac
exit 0
"""
# Short timers: a test cannot wait dhclient's default 60 s.
DHCLIENT_CONF = "timeout 15;\ninitial-interval 1;\nrequest subnet-mask, broadcast-address, routers;\n"

# udhcpc's contract: $1 is deconfig|bound|renew|leasefail|nak; $interface, $ip, $subnet, $router.
UDHCPC_SCRIPT = """#!/bin/sh
echo "udhcpc-script $1 ip=$ip subnet=$subnet router=$router serverid=$serverid lease=$lease"
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface" ;;
esac
exit 0
"""


@dataclass
class Netns:
    """A namespace of ours holding one interface that faces qnet (a TAP or a macvlan on one)."""
    name: str
    iface: str

    def sh(self, cmd: list[str], timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.name, *cmd], timeout=timeout, check=check)

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)

    def mac(self) -> str:
        out = run(["ip", "-n", self.name, "-j", "link", "show", self.iface]).stdout
        return json.loads(out)[0]["address"].lower()

    def ipv4(self) -> list[str]:
        """The interface's IPv4 addresses as 'a.b.c.d/len'."""
        out = run(["ip", "-n", self.name, "-j", "-4", "addr", "show", "dev", self.iface]).stdout
        rows = json.loads(out or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for r in rows for a in r.get("addr_info", [])]


class DhcpLab:
    """A running qnet graph plus everything a DHCP test attaches to it, all removed by cleanup()."""

    def __init__(self, graph: QnetGraph, work_dir: str) -> None:
        self.g = graph
        self.dir = work_dir
        self.namespaces: list[str] = []
        self.ports: list[tuple[str, str]] = []      # (qnet port, tap)
        self.procs: list[subprocess.Popen] = []
        self.pidfiles: list[str] = []
        self.dnsmasqs: dict[tuple[str, str], subprocess.Popen] = {}
        self.dhclient_script = self._write("dhclient-script", DHCLIENT_SCRIPT, 0o755)
        self.dhclient_conf = self._write("dhclient.conf", DHCLIENT_CONF, 0o644)
        self.udhcpc_script = self._write("udhcpc-script", UDHCPC_SCRIPT, 0o755)

    def _write(self, name: str, text: str, mode: int) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def _names(self, port: str) -> tuple[str, str]:
        return f"qd{self.g.tag}{port}"[:15], f"qd{self.g.tag}{port}"

    def _netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
             "net.ipv6.conf.default.disable_ipv6=1"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _tap_into_netns(self, port: str, tap: str, ns: str, up: bool = True) -> Netns:
        self._netns(ns)
        run(["ip", "link", "set", tap, "netns", ns])  # the launcher's fd keeps working
        n = Netns(ns, tap)
        if up:
            self.link_up(n, port)
        return n

    def link_up(self, n: Netns, port: str) -> None:
        run(["ip", "-n", n.name, "link", "set", n.iface, "up"])
        wait_for(lambda: (r := self.g.port_row(port))["up"] and r["attached"], 5.0, 0.1,
                 f"port {port} attached with its link up")

    # -- ports ---------------------------------------------------------------------------------
    def guest_port(self, port: str, x: int) -> Netns:
        """A guest-facing port with our DHCP server on 10.99.X.1/24; the namespace side has no address."""
        tap, ns = self._names(port)
        self.g.qnet("port", "add", port, "--tap", tap, "--addr", f"10.99.{x}.1/24", "--dhcp-server", timeout=30)
        self.ports.append((port, tap))
        self.g.remember_pids()
        return self._tap_into_netns(port, tap, ns)

    def uplink_port(self, port: str, x: int) -> Netns:
        """An uplink port run by our DHCP client; the namespace side is 10.99.X.1/24 (the peer server)
        and stays down until link_up(): start the server first, and the client's first DISCOVER
        (sent when the link comes up) finds it instead of waiting out a retransmission."""
        tap, ns = self._names(port)
        self.g.qnet("port", "add", port, "--tap", tap, "--dhcp", timeout=30)
        self.ports.append((port, tap))
        self.g.remember_pids()
        n = self._tap_into_netns(port, tap, ns, up=False)
        run(["ip", "-n", ns, "addr", "add", f"10.99.{x}.1/24", "dev", tap])
        return n

    def macvlan_netns(self, parent: Netns, suffix: str) -> Netns:
        """Another client on the same wire: a macvlan (own MAC) of parent's TAP, in a namespace of its own."""
        ns = f"{parent.name}{suffix}"
        dev = f"mv{suffix}"
        self._netns(ns)
        run(["ip", "-n", parent.name, "link", "add", "link", parent.iface, "name", dev, "type", "macvlan",
             "mode", "bridge"])
        run(["ip", "-n", parent.name, "link", "set", dev, "netns", ns])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        return Netns(ns, dev)

    # -- peers ---------------------------------------------------------------------------------
    def dhclient(self, n: Netns, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """`dhclient -1`: one attempt; it daemonizes once bound (killed in release() or cleanup())."""
        pf, lf = self._dhclient_files(n)
        self.pidfiles.append(pf)
        r = n.sh([DHCLIENT, "-1", "-v", "-cf", self.dhclient_conf, "-sf", self.dhclient_script,
                  "-pf", pf, "-lf", lf, n.iface], timeout=timeout, check=False)
        if r.returncode == 0:
            # The daemon writes its pid file after the parent has exited: know it before going on,
            # or a quick cleanup would miss it.
            wait_for(lambda: _our_pid(pf) is not None, 3.0, 0.02, "dhclient's pid file")
        return r

    def dhclient_release(self, n: Netns) -> subprocess.CompletedProcess:
        pf, lf = self._dhclient_files(n)
        return n.sh([DHCLIENT, "-r", "-v", "-cf", self.dhclient_conf, "-sf", self.dhclient_script,
                     "-pf", pf, "-lf", lf, n.iface], timeout=15.0, check=False)

    def _dhclient_files(self, n: Netns) -> tuple[str, str]:
        return os.path.join(self.dir, f"{n.name}.dhclient.pid"), os.path.join(self.dir, f"{n.name}.dhclient.leases")

    def udhcpc(self, n: Netns, *extra: str, tries: int = 3, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """busybox udhcpc in the foreground: quit once bound (-q), fail if no lease after `tries` (-n)."""
        return n.sh([BUSYBOX, "udhcpc", "-f", "-q", "-n", "-i", n.iface, "-t", str(tries), "-T", "1",
                     "-s", self.udhcpc_script, *extra], timeout=timeout, check=False)

    def udhcpc_daemon(self, n: Netns, *extra: str) -> subprocess.Popen:
        """busybox udhcpc staying in the foreground of a child of ours; with "-R" it releases on SIGTERM
        (-q would quit before the lease counts as bound, and release nothing)."""
        p = n.popen([BUSYBOX, "udhcpc", "-f", "-i", n.iface, "-T", "1", "-s", self.udhcpc_script, *extra])
        self.procs.append(p)
        return p

    def dnsmasq(self, n: Netns, first: str, last: str, *options: str, tag: str = "", dns: bool = False) -> str:
        """dnsmasq serving DHCP (and DNS on port 53 with `dns`) on n's interface, with a lease file
        and log of its own per `tag`; returns the path of its log."""
        base = os.path.join(self.dir, f"{n.name}{tag}.dnsmasq")
        log = base + ".log"
        p = n.popen([DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=53" if dns else "--port=0", f"--interface={n.iface}",
                     "--bind-interfaces", f"--dhcp-range={first},{last},2m", "--log-dhcp",
                     # No ICMP check before an offer: it costs 3 s and tests dnsmasq, not us.
                     "--no-ping",
                     f"--log-facility={log}", f"--dhcp-leasefile={base}.leases", f"--pid-file={base}.pid",
                     *options])
        self.procs.append(p)
        self.dnsmasqs[(n.name, tag)] = p
        wait_for(lambda: p.poll() is not None or "started" in _read(log), 5.0, 0.05, "dnsmasq to start")
        if p.poll() is not None:
            raise AssertionError(f"dnsmasq exited {p.returncode}: {p.stdout.read() if p.stdout else ''}")
        return log

    def stop_dnsmasq(self, n: Netns, tag: str = "") -> None:
        stop_process(self.dnsmasqs.pop((n.name, tag)))

    # -- qnet ----------------------------------------------------------------------------------
    def leases(self) -> dict:
        return self.g.qnet_json("dhcp", "leases")

    def dhcpd_status(self) -> dict:
        """dhcpd's own status, asked directly (the launcher's copy is up to a heartbeat old)."""
        from ipc.decl import to_plain
        from ipc.protocols.dhcpd import DHCPD
        from ipc.rpc import RpcClient
        with RpcClient(f"ipc://{self.g.run_dir}/dhcpd.rpc", DHCPD, timeout=5.0, retries=1) as c:
            return to_plain(c.call("status"))

    def server_counters(self, port: str) -> dict:
        return self.dhcpd_status()["servers"].get(port, {})

    # -- teardown ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        for p in self.procs:
            stop_process(p)
        for pf in self.pidfiles:
            _kill_from_pidfile(pf)
        for port, _tap in self.ports:
            self.g.qnet("port", "del", port, check=False)
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        for _port, tap in self.ports:
            if os.path.exists(f"/sys/class/net/{tap}"):
                run(["ip", "link", "del", tap], check=False)
        self.procs, self.pidfiles, self.ports, self.namespaces = [], [], [], []


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _our_pid(pidfile: str) -> int | None:
    """The pid a pid file of ours names, if that process runs with the pid file on its command line."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if pidfile.encode() in f.read() else None
    except (OSError, ValueError):
        return None


def _kill_from_pidfile(pidfile: str) -> None:
    """SIGTERM the daemon a pid file of ours names (then SIGKILL if it lingers)."""
    pid = _our_pid(pidfile)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and _our_pid(pidfile) == pid:
        time.sleep(0.05)
    if _our_pid(pidfile) == pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- dnsmasq's log ----------------------------------------------------------------------------------
_DNSMASQ_LINE = re.compile(r"dnsmasq-dhcp\[\d+\]: (\d+) (DHCP[A-Z]+)\(([^)]*)\) (\S+)(?: (\S+))?")


@dataclass(frozen=True)
class DnsmasqEvent:
    xid: int
    kind: str          # DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DHCPACK, DHCPNAK, ...
    address: str
    mac: str


def dnsmasq_events(log: str) -> list[DnsmasqEvent]:
    out = []
    for m in _DNSMASQ_LINE.finditer(_read(log)):
        xid, kind, _iface, a, b = m.groups()
        # DISCOVER has no address: "DHCPDISCOVER(if) MAC"; the others "DHCPACK(if) ADDR MAC".
        address, mac = (a, b) if b else ("", a)
        out.append(DnsmasqEvent(int(xid), kind, address, mac.lower()))
    return out


# -- junk for the server, built with scapy (an independent packet builder) -----------------------------
def well_formed_discover(rng: random.Random) -> tuple[bytes, bytes]:
    """A well-formed DISCOVER (scapy's BOOTP/DHCP) and its chaddr."""
    from scapy.layers.dhcp import BOOTP, DHCP
    mac = bytes([0x02, 0x99]) + rng.randbytes(4)
    pkt = BOOTP(op=1, xid=rng.getrandbits(32), chaddr=mac + bytes(10), flags=0x8000) / \
        DHCP(options=[("message-type", "discover"), "end"])
    return bytes(pkt), mac


_HEADER_AND_COOKIE = 240
# Options our parser checks (fixed lengths or shapes), with a length that breaks the rule; a
# fuzzed message already holds 53 = DISCOVER, and RFC 3396 concatenates repeats (1 + 1 = 2 bytes).
_BAD_LENGTHS = {1: (0, 3, 5), 3: (0, 3, 6), 6: (0, 2, 7), 26: (1, 3), 28: (3, 8), 50: (0, 3, 5),
                51: (0, 2, 8), 53: (1, 2), 54: (3, 5), 57: (1, 3), 58: (3,), 59: (5,)}


def malformed_dhcp_payloads(seed: int = 2131, fuzzed: int = 40) -> list[tuple[str, bytes]]:
    """UDP payloads no DHCP parser may accept, each with a label: truncations, a bad cookie, options
    whose lengths overrun the field or break RFC 2132, and `fuzzed` seeded random option soups that
    each end in one such break. Every chaddr is random, so no client's rate limit is involved."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    good, _ = well_formed_discover(rng)
    for cut in (0, 1, 4, 44, 100, 235, 236, 239):
        out.append((f"truncated to {cut} bytes", good[:cut]))
    base, _ = well_formed_discover(rng)
    out.append(("bad magic cookie", base[:236] + b"\x63\x82\x53\x64" + base[240:]))
    head = base[:_HEADER_AND_COOKIE]
    out.append(("option length 255 overruns the field", head + b"\x35\x01\x01\x0c\xff" + b"abc"))
    out.append(("option code without a length byte", head + b"\x35\x01\x01\x0c"))
    out.append(("absurd option lengths chained past 1400 bytes",
                head + b"\x35\x01\x01" + (b"\xfa\xff" + bytes(255)) * 4 + b"\xfb\xff" + bytes(100)))
    out.append(("message type with length 2", head + b"\x35\x02\x01\x01\xff"))
    out.append(("requested IP with length 3", head + b"\x35\x01\x01\x32\x03\x0a\x63\x01\xff"))
    out.append(("classless route /33", head + b"\x35\x01\x01\x79\x05\x21\x0a\x63\x01\x01\xff"))
    out.append(("classless route truncated", head + b"\x35\x01\x01\x79\x06\x18\x0a\x63\x01\x0a\x63\xff"))
    out.append(("overload value 7", head + b"\x35\x01\x01\x34\x01\x07\xff"))
    out.append(("op 7", b"\x07" + base[1:]))
    out.append(("hlen 200", base[:2] + b"\xc8" + base[3:]))
    for i in range(fuzzed):
        msg, _ = well_formed_discover(rng)
        body = bytearray(msg[:_HEADER_AND_COOKIE])
        body += b"\x35\x01\x01"
        for _ in range(rng.randrange(0, 6)):  # options nobody here interprets: any length is fine
            code = rng.randrange(128, 255)
            n = rng.randrange(0, 40)
            body += bytes((code, n)) + rng.randbytes(n)
        code = rng.choice(sorted(_BAD_LENGTHS))
        n = rng.choice(_BAD_LENGTHS[code])
        body += bytes((code, n)) + rng.randbytes(n)
        for _ in range(rng.randrange(0, 3)):
            c = rng.randrange(128, 255)
            body += bytes((c, 4)) + rng.randbytes(4)
        body += b"\xff" + bytes(rng.randrange(0, 60))
        out.append((f"fuzzed #{i}: option {code} with length {n}", bytes(body)))
    return out


def dhcp_frame(payload: bytes, src_mac: str, *, udp_len: int | None = None, ip_len: int | None = None) -> bytes:
    """Ethernet/IPv4/UDP 0.0.0.0:68 -> 255.255.255.255:67 around `payload`; udp_len/ip_len override
    the header length fields (scapy keeps a set field as given)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    ip = IP(src="0.0.0.0", dst="255.255.255.255", ttl=64) if ip_len is None else \
        IP(src="0.0.0.0", dst="255.255.255.255", ttl=64, len=ip_len)
    udp = UDP(sport=68, dport=67) if udp_len is None else UDP(sport=68, dport=67, len=udp_len)
    return bytes(Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ip / udp / Raw(payload))


_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = 0
for line in sys.stdin:
    if line.strip():
        s.send(bytes.fromhex(line.strip()))
        n += 1
        time.sleep(0.002)
print(n)
"""


def send_frames(n: Netns, frames: list[bytes]) -> int:
    """Write raw Ethernet frames out of n's interface (an AF_PACKET socket in the namespace)."""
    p = subprocess.run(["ip", "netns", "exec", n.name, NS_PYTHON, "-c", _SENDER, n.iface],
                       input="\n".join(f.hex() for f in frames) + "\n", capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise AssertionError(f"sending frames failed: {p.stderr}")
    return int(p.stdout.strip())


def lease_rows(leases: dict, port: str, role: str = "server") -> list[dict[str, Any]]:
    return [r for r in leases["leases"] if r["port"] == port and r["role"] == role]
