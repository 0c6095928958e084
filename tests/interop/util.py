"""Helpers for interop tests that put the Linux kernel, in a network namespace, on the far side of a
TAP port driven by a running qnet graph.

    g = QnetGraph.start()                              # qnet up --detach in a fresh runtime dir
    a = g.add_ns_port("p0", x=17)                      # TAP p0 <-> namespace: qnet 10.99.17.1, Linux .2
    out = a.sh(["ping", "-c", "1", a.qnet_ip])         # a command inside the namespace
    g.qnet("ping", "-c", "1", "--json", a.linux_ip)    # a CLI command against this graph
    g.stop()                                           # qnet down, leftovers killed, namespaces deleted

Every wait is bounded; every subprocess has a timeout.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QNET = os.path.join(REPO, ".venv", "bin", "qnet")
# The pyenv shim does not work inside `ip netns exec`; the system interpreter does.
NS_PYTHON = "/usr/bin/python3"


def missing_prerequisite() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (TAP devices and network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def run(cmd: list[str], timeout: float = 15.0, check: bool = True, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- iputils ping output ------------------------------------------------------------------------
_REPLY = re.compile(r"bytes from ([\d.]+): icmp_seq=(\d+) ttl=(\d+) time=([\d.]+) ms")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class PingResult:
    transmitted: int
    received: int
    replies: list[tuple[str, int, int, float]] = field(default_factory=list)  # (src, seq, ttl, rtt_ms)
    text: str = ""

    @property
    def lost(self) -> int:
        return self.transmitted - self.received

    @property
    def max_rtt_ms(self) -> float:
        return max((r[3] for r in self.replies), default=0.0)

    def missing(self) -> str:
        """The sequence numbers that got no reply, as ranges: '17-21,40'."""
        got = {r[1] for r in self.replies}
        miss = [q for q in range(1, self.transmitted + 1) if q not in got]
        runs: list[list[int]] = []
        for q in miss:
            if runs and q == runs[-1][1] + 1:
                runs[-1][1] = q
            else:
                runs.append([q, q])
        return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"

    def longest_gap(self) -> int:
        """The longest run of sequence numbers with no reply (missing, not late)."""
        seqs = sorted({r[1] for r in self.replies})
        if not seqs:
            return self.transmitted
        gaps = [seqs[0] - 1] + [b - a - 1 for a, b in zip(seqs, seqs[1:])] + [self.transmitted - seqs[-1]]
        return max(gaps)


def parse_ping(text: str) -> PingResult:
    m = _SUMMARY.search(text)
    if m is None:
        raise AssertionError(f"no ping summary in:\n{text}")
    replies = [(s, int(q), int(t), float(r)) for s, q, t, r in _REPLY.findall(text)]
    return PingResult(int(m.group(1)), int(m.group(2)), replies, text)


# -- namespaces -----------------------------------------------------------------------------------
@dataclass
class NsPort:
    """A qnet port whose TAP's kernel side lives in namespace ``ns``: qnet is 10.99.X.1, Linux 10.99.X.2."""
    port: str
    tap: str
    ns: str
    x: int

    @property
    def qnet_ip(self) -> str:
        return f"10.99.{self.x}.1"

    @property
    def linux_ip(self) -> str:
        return f"10.99.{self.x}.2"

    @property
    def subnet(self) -> str:
        return f"10.99.{self.x}.0/24"

    def sh(self, cmd: list[str], timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.ns, *cmd], timeout=timeout, check=check)

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)

    def ping(self, dst: str, *opts: str, timeout: float = 30.0) -> PingResult:
        p = self.sh(["ping", "-n", *opts, dst], timeout=timeout, check=False)
        return parse_ping(p.stdout + p.stderr)

    def python(self, code: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        return self.sh([NS_PYTHON, "-c", code], timeout=timeout)

    def mac(self) -> str:
        out = run(["ip", "-n", self.ns, "-j", "link", "show", self.tap]).stdout
        return json.loads(out)[0]["address"]

    def neigh(self, addr: str) -> dict | None:
        out = run(["ip", "-n", self.ns, "-j", "neigh", "show", addr, "dev", self.tap]).stdout
        rows = json.loads(out or "[]")
        return rows[0] if rows else None


IPV6_ON = ("net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
           "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")


def ipv6_namespace_port(g: "QnetGraph", port: str, x: int, ns_prefix: str, sysctls: tuple[str, ...],
                        addr: str | None = None) -> NsPort:
    """A TAP port of g (with qnet's address `addr`, if given) whose kernel side is moved into a
    new namespace with IPv6 on (DAD off: Linux's addresses usable at once) and `sysctls`, both
    set before the TAP arrives (a device takes the namespace's defaults when it enters it);
    lo and the TAP up; returns once qnet's port is attached and up and, with `addr`, its
    link-local address and `addr` have passed DAD. g.stop() removes the namespace."""
    base = NsPort(port=port, tap=f"qtap{g.tag}{port}"[:15], ns=f"{ns_prefix}{g.tag}{port}", x=x)
    g.ports[port] = base
    g.qnet("port", "add", port, "--tap", base.tap, *(("--addr", addr) if addr else ()), timeout=30)
    g.remember_pids()
    run(["ip", "netns", "add", base.ns])
    base.sh(["sysctl", "-qw", *IPV6_ON, *sysctls])
    run(["ip", "link", "set", base.tap, "netns", base.ns])
    run(["ip", "-n", base.ns, "link", "set", "lo", "up"])
    run(["ip", "-n", base.ns, "link", "set", base.tap, "up"])
    wait_for(lambda: (r := g.port_row(port))["up"] and r["attached"], 5.0, 0.1, f"port {port} attached, up")
    if addr:
        wait_for(lambda: len(a6 := g.port_row(port)["addresses6"]) == 2
                 and all(a["state"] == "PREFERRED" for a in a6), 8.0, 0.2,
                 f"qnet's addresses on {port} preferred")
    return base


def stop_process(p: subprocess.Popen, timeout: float = 3.0) -> None:
    """End a process group this test started (start_new_session=True), by its id."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout)


class QnetGraph:
    """A qnet graph in a private runtime directory, with TAP ports whose kernel side is in namespaces."""

    def __init__(self) -> None:
        # Short: ipc:// socket paths must fit in sun_path.
        self.run_dir = tempfile.mkdtemp(prefix="qn", dir="/tmp")
        self.env = dict(os.environ, QNET_RUNTIME_DIR=self.run_dir)
        self.ports: dict[str, NsPort] = {}
        self.pids: set[int] = set()
        self.tag = secrets.token_hex(3)

    @classmethod
    def start(cls, data_transport: str | None = None) -> "QnetGraph":
        """The embedded default graph; ``data_transport`` ("socketpair" or "zmq") overrides its data plane."""
        g = cls()
        try:
            if data_transport is None:
                g.qnet("up", "--detach", timeout=60)
            else:
                g.qnet("up", "-f", g.default_graph_with(data_transport=data_transport), "--detach", timeout=60)
            g.remember_pids()
        except BaseException:
            g.stop()
            raise
        return g

    def default_graph_with(self, **graph_keys) -> str:
        """A copy of the embedded default manifest with extra [graph] keys, in the runtime dir."""
        import launcher
        with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
            text = f.read()
        extra = "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in graph_keys.items())
        path = os.path.join(self.run_dir, "graph.toml")
        with open(path, "w") as f:
            f.write(text.replace("[graph]\n", "[graph]\n" + extra, 1))
        return path

    # -- CLI ---------------------------------------------------------------------------------
    def qnet(self, *args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess:
        return run([QNET, *args], timeout=timeout, check=check, env=self.env)

    def qnet_json(self, *args: str, timeout: float = 20.0) -> Any:
        return json.loads(self.qnet(*args, "--json", timeout=timeout).stdout)

    def components(self) -> dict[str, dict]:
        """The launcher's status rows by name, asked in-process (fast enough to poll)."""
        from ipc.decl import to_plain
        from ipc.protocols.launcher import LAUNCHER
        from ipc.rpc import RpcClient
        from launcher.service import control_endpoint
        with RpcClient(control_endpoint(self.run_dir), LAUNCHER, timeout=5.0, retries=1) as c:
            return {r["name"]: r for r in to_plain(c.call("status"))}

    def remember_pids(self) -> None:
        self.pids.update(c["pid"] for c in self.components().values() if c.get("pid"))
        try:
            with open(os.path.join(self.run_dir, "launcher.pid")) as f:
                self.pids.add(int(f.read().strip()))
        except (OSError, ValueError):
            pass

    def port_row(self, port: str) -> dict:
        return next(r for r in self.qnet_json("port", "list") if r["name"] == port)

    @property
    def peer(self) -> dict[str, str]:
        """The qnet.datagram endpoints, for DatagramClient."""
        return {"rpc": f"ipc://{self.run_dir}/netstack.rpc", "dgram": f"ipc://{self.run_dir}/netstack.dgram"}

    # -- ports -------------------------------------------------------------------------------
    def add_ns_port(self, port: str, x: int, *port_args: str) -> NsPort:
        """``port_args`` go to `qnet port add` as they are (e.g. "--offloads")."""
        p = NsPort(port=port, tap=f"qtap{self.tag}{port}"[:15], ns=f"qn{self.tag}{port}", x=x)
        self.ports[port] = p
        self.qnet("port", "add", port, "--tap", p.tap, "--addr", f"{p.qnet_ip}/24", *port_args, timeout=30)
        self.remember_pids()
        run(["ip", "netns", "add", p.ns])
        p.sh(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        run(["ip", "link", "set", p.tap, "netns", p.ns])  # the launcher's fd keeps working
        run(["ip", "-n", p.ns, "link", "set", "lo", "up"])
        run(["ip", "-n", p.ns, "addr", "add", f"{p.linux_ip}/24", "dev", p.tap])
        run(["ip", "-n", p.ns, "link", "set", p.tap, "up"])
        run(["ip", "-n", p.ns, "route", "add", "default", "via", p.qnet_ip])
        wait_for(lambda: (r := self.port_row(port))["up"] and r["attached"], 5.0, 0.1,
                 f"port {port} attached with its link up")
        return p

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        try:
            self.remember_pids()
        except Exception:
            pass
        try:
            self.qnet("down", timeout=20, check=False)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.pids:
            _kill_if_ours(pid, self.run_dir)
        for p in self.ports.values():
            run(["ip", "netns", "del", p.ns], check=False)
            run(["ip", "link", "del", p.tap], check=False)  # if it never left the root namespace
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _kill_if_ours(pid: int, run_dir: str) -> None:
    """SIGKILL ``pid`` if it still runs for this graph (its environment names our runtime dir)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return
    if run_dir.encode() in env or run_dir.encode() in cmd:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tshark_fields(pcap: str, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    """Rows of ``tshark -r PCAP -T fields -e F...``: an independent reading of our capture files."""
    if shutil.which("tshark") is None:
        raise AssertionError("tshark is not installed (apt-get install tshark)")
    cmd = ["tshark", "-n", "-r", pcap, "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    if display_filter:
        cmd += ["-Y", display_filter]
    out = run(cmd, timeout=30).stdout
    return [ln.split("\t") for ln in out.splitlines() if ln.strip()]


def capture_in_background(graph: QnetGraph, port: str, pcap: str, seconds: float) -> subprocess.Popen:
    """`qnet capture PORT -w PCAP -d SECONDS` as a child, returned once the pcap header is written."""
    p = subprocess.Popen([QNET, "capture", port, "-w", pcap, "-d", str(seconds)], env=graph.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(pcap) and os.path.getsize(pcap) >= 24, 5.0, 0.02, "the capture file")
    except BaseException:
        stop_process(p)
        raise
    return p


def wait_line(p: subprocess.Popen, word: str, timeout: float) -> str:
    """The first line of p's stdout that holds ``word``; AssertionError (with stderr) when p
    exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            line = p.stdout.readline()
            if word in line:
                return line
            if line == "":
                break
        elif p.poll() is not None:
            break
    stop_process(p)
    raise AssertionError(f"no {word!r} from {p.args} within {timeout:g} s; rc {p.returncode}, "
                         f"stderr: {p.stderr.read()[-2000:]}")
