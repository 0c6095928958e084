"""IPv4 benchmark: qnet on TAP beside the Linux kernel on veth and PyTCP 3.0.9 on TAP.

    python -m bench.ipv4 [--quick] [--json FILE]

Three figures, each beside its anchors measured in the same run:

1. ping RTT (median, p99) from a Linux namespace to the stack under test;
   anchors: the kernel answering over a veth pair, PyTCP answering over a TAP.
2. UDP echo transactions/s with 1 and 8 requests outstanding; anchors: a
   kernel-socket echo server across a veth pair, PyTCP's UDP echo.
3. Forwarding between two ports (namespace A -> stack -> namespace B) of
   64-byte and 1400-byte UDP datagrams blasted for a few seconds: frames/s
   arriving in B, payload Mbit/s, loss; anchor: the kernel forwarding between
   two veth pairs through a router namespace. (PyTCP 3.0.9 does not forward:
   its `forward_or_deliver` is a stub.)

The traffic tools are the same code for every target (bench/ipv4_peers.py),
run in namespaces by /usr/bin/python3. Rounds are interleaved between targets
so that load from other work on the machine falls on all of them alike.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from typing import Any

from bench import common
from bench import pytcp_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "ipv4_peers.py")
SYS_PY = "/usr/bin/python3"  # `ip netns exec` cannot run the pyenv shim
QNET = os.path.join(ROOT, ".venv", "bin", "qnet")
ECHO_PORT, SINK_PORT = 7, 9

AIM_RTT_X_KERNEL = 5.0     # qnet's ping RTT within 5x the kernel's veth RTT
AIM_RATE_X_PYTCP = {1: 5.0, 8: 10.0}   # UDP echo rate vs PyTCP's, by transactions outstanding
AIM_FWD_64_FPS = 100_000   # forwarding 64 B frames with < 1 % loss
AIM_FWD_1400_MBIT = 1000   # forwarding 1400 B frames with < 1 % loss
# Offered loads of the loss-free search (datagrams/s): doubling, then finer past the aim.
PACED_RATES = (2000, 4000, 8000, 16000, 32000, 64000, 100000, 128000, 160000, 200000)


# -- plumbing ---------------------------------------------------------------------
def sh(*args: str, timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in output: {text[-300:]!r}")


class Lab:
    """Namespaces, veths and processes made for one run; ``close`` removes them all."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def netns(self, role: str) -> str:
        name = f"qb4{self.tag}{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        # No IPv6 chatter (RS, DAD, MLD) in the measured paths.
        self.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1")
        self.exec(name, "ip", "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, *cmd: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout)

    def move(self, ifname: str, ns: str, cidr: str) -> None:
        sh("ip", "link", "set", ifname, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def veth(self, ns_a: str, cidr_a: str, ns_b: str, cidr_b: str) -> None:
        a, b = f"qv{self.tag}{len(self.namespaces)}a", f"qv{self.tag}{len(self.namespaces)}b"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.move(a, ns_a, cidr_a)
        self.move(b, ns_b, cidr_b)

    def tool(self, ns: str, *args: str, timeout: float = 60.0) -> dict:
        """Run a peers subcommand in ``ns`` to completion; its JSON result."""
        return _last_json(self.exec(ns, SYS_PY, PEERS, *args, timeout=timeout).stdout)

    def spawn(self, cmd: list[str], ready: str, timeout: float = 20.0) -> subprocess.Popen:
        """Start a long-running peer; return once it printed a line containing ``ready``."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            left = deadline - time.monotonic()
            line = ""
            if left > 0 and select.select([proc.stdout], [], [], min(left, 0.2))[0]:
                line = proc.stdout.readline()  # ready lines are whole and flushed
            seen += line
            if ready in line:
                break
            if left <= 0 or (not line and proc.poll() is not None):
                raise RuntimeError(f"{' '.join(cmd[-8:])}: not ready (exit {proc.poll()}, output {seen[-200:]!r})")
        return proc

    def spawn_tool(self, ns: str, *args: str) -> subprocess.Popen:
        return self.spawn(["ip", "netns", "exec", ns, SYS_PY, PEERS, *args], '"ready"')

    def wait_ping(self, ns: str, dst: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sh("ip", "netns", "exec", ns, "ping", "-c1", "-W1", dst, check=False).returncode == 0:
                return
        raise RuntimeError(f"{dst} did not answer ping from {ns} within {timeout:g} s")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)  # our own session: the peer and its `ip netns exec`
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except (OSError, subprocess.SubprocessError):
                pass
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


# -- the three stacks ---------------------------------------------------------------
class Target:
    """One stack under test as the client namespace sees it."""

    def __init__(self, name: str, client_ns: str, addr: str):
        self.name, self.client_ns, self.addr = name, client_ns, addr
        self.sink_ns: str | None = None   # forwarding: where datagrams should arrive
        self.sink_addr: str | None = None


def setup_kernel(lab: Lab) -> Target:
    """KA --veth-- KR --veth-- KB; KR answers ping, runs a UDP echo, and forwards."""
    ka, kr, kb = lab.netns("ka"), lab.netns("kr"), lab.netns("kb")
    lab.veth(ka, "10.99.10.2/24", kr, "10.99.10.1/24")
    lab.veth(kr, "10.99.11.1/24", kb, "10.99.11.2/24")
    lab.exec(kr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "-n", ka, "route", "add", "10.99.11.0/24", "via", "10.99.10.1")
    sh("ip", "-n", kb, "route", "add", "10.99.10.0/24", "via", "10.99.11.1")
    lab.spawn_tool(kr, "udp-echo", "--port", str(ECHO_PORT))
    t = Target("kernel", ka, "10.99.10.1")
    t.sink_ns, t.sink_addr = kb, "10.99.11.2"
    return t


def _qnet_echo(conn: Any, run_dir: str, port: int) -> None:
    """qnet's UDP echo: a graph-internal datagram client in a process of its own."""
    import zmq
    from components.netstack.dgram_client import DatagramClient
    client = DatagramClient({"rpc": f"ipc://{run_dir}/netstack.rpc", "dgram": f"ipc://{run_dir}/netstack.dgram"},
                            owner="bench-echo")
    sid = client.open(port)
    conn.send({"sid": sid})
    poller = zmq.Poller()
    poller.register(client.socket, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    echoed = 0
    try:
        while True:
            got = client.drain()
            if got:
                # One batch back per batch received, on the one-way 'send' stream.
                client.send_many([(sid, d.payload, d.src_addr, d.src_port, None) for d in got])
                echoed += len(got)
            if conn.fileno() in dict(poller.poll(1000)):
                try:
                    msg = conn.recv()
                except EOFError:
                    return
                if msg == "stop":
                    conn.send({"echoed": echoed, "bad": client.bad})
                    return
    finally:
        client.close()


class Qnet:
    def __init__(self, lab: Lab, run_dir: str):
        self.lab, self.run_dir = lab, run_dir
        self.env = dict(os.environ, QNET_RUNTIME_DIR=run_dir)
        self.up = False
        self.echo: common.ServerProcess | None = None

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        proc = subprocess.run([QNET, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"qnet {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def setup(self, manifest: str | None = None) -> Target:
        """QA --tap-- [qnet p0 | p1] --tap-- QB; qnet answers ping, echoes UDP, forwards.
        `manifest`: a graph file instead of the embedded default graph."""
        lab = self.lab
        qa, qb = lab.netns("qa"), lab.netns("qb")
        self.cli("up", "--detach", *(("-f", manifest) if manifest else ()))
        self.up = True
        tap_a, tap_b = f"qtA{lab.tag}", f"qtB{lab.tag}"
        self.cli("port", "add", "p0", "--tap", tap_a, "--addr", "10.99.0.1/24")
        self.cli("port", "add", "p1", "--tap", tap_b, "--addr", "10.99.1.1/24")
        lab.move(tap_a, qa, "10.99.0.2/24")
        lab.move(tap_b, qb, "10.99.1.2/24")
        sh("ip", "-n", qa, "route", "add", "10.99.1.0/24", "via", "10.99.0.1")
        sh("ip", "-n", qb, "route", "add", "10.99.0.0/24", "via", "10.99.1.1")
        self.echo = common.ServerProcess(_qnet_echo, self.run_dir, ECHO_PORT)
        lab.wait_ping(qa, "10.99.0.1", 10.0)
        lab.wait_ping(qb, "10.99.1.1", 10.0)
        t = Target("qnet", qa, "10.99.0.1")
        t.sink_ns, t.sink_addr = qb, "10.99.1.2"
        return t

    def wait_quiet(self, timeout: float = 20.0) -> float:
        """Seconds until netstack's received-packet count stops moving (its queues drained)."""
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            count = self.stats().get("stack", {}).get("ipv4", {}).get("rx_packets")
            if count is not None and count == last:
                break
            last = count
            time.sleep(0.3)
        return round(time.monotonic() - start, 2)

    def stats(self) -> dict:
        try:
            return json.loads(self.cli("stats", "--json"))
        except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            return {"error": str(exc)}

    def close(self) -> dict | None:
        report = None
        try:
            if self.echo is not None:
                report = self.echo.stop()
        finally:
            if self.up:
                subprocess.run([QNET, "down"], capture_output=True, timeout=60, env=self.env, cwd=ROOT)
        return report


def setup_pytcp(lab: Lab, run_dir: str) -> Target:
    """PA --tap-- PyTCP 3.0.9 daemon (10.99.2.1) with a UDP echo client process."""
    tree = pytcp_setup.prepare()
    py = pytcp_setup.python()
    pa = lab.netns("pa")
    tap = f"tapP{lab.tag}"  # PyTCP picks its TAP/TUN driver by the name's first three letters
    sock = os.path.join(run_dir, "pytcp.sock")
    # -O drops its `__debug__ and log(...)` calls; the daemon tool also empties LOG__CHANNEL.
    lab.spawn([py, "-O", PEERS, "pytcp-daemon", "--tree", tree, "--ipc-socket", sock, "-i", tap,
               "--ip4-address", "10.99.2.1/24", "--no-ip6", "--mac-address", "02:99:02:00:00:01"],
              "listening", timeout=60)
    lab.move(tap, pa, "10.99.2.2/24")  # the daemon's fd keeps working across the move
    lab.wait_ping(pa, "10.99.2.1", 20.0)  # after its RFC 5227 address probes
    lab.spawn([py, "-O", PEERS, "pytcp-echo", "--tree", tree, "--ipc-socket", sock, "--port", str(ECHO_PORT)],
              '"ready"', timeout=30)
    return Target("pytcp", pa, "10.99.2.1")


# -- measurements -------------------------------------------------------------------
def measure_ping(lab: Lab, targets: list[Target], rounds: int, count: int) -> dict:
    samples: dict[str, list[int]] = {t.name: [] for t in targets}
    lost = dict.fromkeys(samples, 0)
    for t in targets:  # warm-up: ARP resolved, code paths hot
        lab.tool(t.client_ns, "ping", t.addr, "--count", "10", "--interval", "0")
    for _ in range(rounds):
        for t in targets:
            r = lab.tool(t.client_ns, "ping", t.addr, "--count", str(count), "--interval", "0.002")
            samples[t.name] += r["rtt_ns"]
            lost[t.name] += r["lost"]
    out = {}
    for name, s in samples.items():
        out[name] = common.latency_summary(s) if s else {"median_us": None, "p99_us": None, "n": 0}
        out[name]["lost"] = lost[name]
    return out


def measure_udp_rr(lab: Lab, targets: list[Target], outstanding: int, rounds: int, duration: float) -> dict:
    acc = {t.name: {"transactions": 0, "elapsed": 0.0, "lost": 0} for t in targets}
    for _ in range(rounds):
        for t in targets:
            r = lab.tool(t.client_ns, "udp-rr", t.addr, str(ECHO_PORT), "--outstanding", str(outstanding),
                         "--duration", str(duration))
            for k in ("transactions", "elapsed", "lost"):
                acc[t.name][k] += r[k]
    return {name: {"tps": round(a["transactions"] / a["elapsed"], 1), **a} for name, a in acc.items()}


def measure_forwarding(lab: Lab, targets: list[Target], size: int, duration: float, rate: float = 0.0) -> dict:
    out = {}
    for t in targets:
        sink = lab.spawn_tool(t.sink_ns, "udp-sink", "--port", str(SINK_PORT), "--duration", str(duration + 6),
                              "--busy", str(duration + 0.5), "--idle", "1.0")
        try:
            sent = lab.tool(t.client_ns, "udp-blast", t.sink_addr, str(SINK_PORT), "--size", str(size),
                            "--duration", str(duration), "--rate", str(rate))
            got = _last_json(sink.communicate(timeout=duration + 15)[0])
        finally:
            lab.stop(sink)
        # Over the time from the first send to the last arrival: frames still queued in the
        # stack when the sender stops count, and a stack that stalls is not flattered.
        span = max(got["last"] - sent["start"], sent["elapsed"])
        fps = got["frames"] / span
        out[t.name] = {
            "sent": sent["sent"], "offered_fps": round(sent["sent"] / sent["elapsed"], 1),
            "received": got["frames"], "fps": round(fps, 1), "span": round(span, 3),
            "mbit_s": round(fps * size * 8 / 1e6, 2),
            "loss": round(1 - got["frames"] / sent["sent"], 4) if sent["sent"] else None,
        }
    return out


def search_loss_free(lab: Lab, target: Target, size: int, duration: float, qnet: "Qnet",
                     max_loss: float = 0.01) -> dict:
    """Offered load stepped up from 2,000 datagrams/s until more than ``max_loss`` is lost.

    A blaster sending back to back takes a whole CPU of the two this machine has,
    so the blast figure measures qnet starved and overloaded; this one measures
    what it carries when the sender leaves it room.
    """
    steps = []
    best = None
    for rate in PACED_RATES:
        r = measure_forwarding(lab, [target], size, duration, rate)[target.name]
        qnet.wait_quiet()
        steps.append({"offered": rate, "fps": r["fps"], "loss": r["loss"]})
        if r["loss"] is None or r["loss"] > max_loss or r["offered_fps"] < 0.9 * rate:
            break  # lossy, or the sender itself could not keep the pace
        best = r["fps"]
    return {"loss_free_fps": best, "max_loss": max_loss, "steps": steps}


def run(quick: bool = False) -> dict:
    """Set up the three stacks, measure, tear everything down; the figures as a dict."""
    common.require_root_and("ip", SYS_PY, "ping")
    rounds = 1 if quick else 3
    ping_count = 100 if quick else 200
    rr_rounds, rr_duration = (1, 1.0) if quick else (2, 2.0)
    fwd_duration = 1.0 if quick else 3.0
    step_duration = 0.5 if quick else 1.0
    result: dict[str, Any] = {"machine": common.machine_info(), "quick": quick}
    lab = Lab()
    with common.runtime_dir("qnet-bench-ipv4-") as run_dir:
        qnet = Qnet(lab, run_dir)
        try:
            common.log("ipv4: setting up kernel anchor, qnet, PyTCP ...")
            targets = [setup_kernel(lab), qnet.setup()]
            try:
                targets.append(setup_pytcp(lab, run_dir))
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": True}
            except (pytcp_setup.PyTcpUnavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": False, "reason": str(exc)}
                common.log(f"ipv4: PyTCP unavailable: {exc}")
            common.log("ipv4: ping ...")
            result["ping"] = measure_ping(lab, targets, rounds, ping_count)
            result["udp_echo"] = {}
            for n in (1, 8):
                common.log(f"ipv4: UDP echo, {n} outstanding ...")
                result["udp_echo"][str(n)] = measure_udp_rr(lab, targets, n, rr_rounds, rr_duration)
            forwarders = [t for t in targets if t.sink_ns is not None]
            result["forwarding"] = {}
            for size in (64, 1400):
                common.log(f"ipv4: forwarding {size}-byte datagrams ...")
                # Paced first: a blast leaves qnet's queues full for seconds after it stops.
                paced = search_loss_free(lab, targets[1], size, step_duration, qnet)
                fw = measure_forwarding(lab, forwarders, size, fwd_duration)
                fw["qnet"]["paced"] = paced
                fw["qnet"]["drain_s"] = qnet.wait_quiet()
                result["forwarding"][str(size)] = fw
            result["qnet_stats"] = qnet.stats()
        finally:
            result["qnet_echo"] = qnet.close()
            lab.close()
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


# -- report -------------------------------------------------------------------------
def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def render(res: dict) -> str:
    pyt_ok = res.get("pytcp", {}).get("available", False)
    pyt_na = "n/a" if pyt_ok else "unavailable"
    t = common.Table("figure", "qnet", "kernel", "qnet/kernel", "PyTCP 3.0.9", "qnet/PyTCP", "aim")
    p = res["ping"]
    for key, label in (("median_us", "ping RTT median (µs)"), ("p99_us", "ping RTT p99 (µs)")):
        q, k = p["qnet"][key], p["kernel"][key]
        y = p["pytcp"][key] if pyt_ok else None
        x = common.ratio(q, k)
        aim = (f"<= {AIM_RTT_X_KERNEL:g}x kernel: {'met' if x <= AIM_RTT_X_KERNEL else 'MISSED'}"
               if key == "median_us" else "")
        t.add(label, _f(q), _f(k), common.fmt_ratio(x), _f(y) if pyt_ok else pyt_na,
              common.fmt_ratio(common.ratio(q, y)) if y else "-", aim)
    for n, rr in res["udp_echo"].items():
        q, k = rr["qnet"]["tps"], rr["kernel"]["tps"]
        y = rr["pytcp"]["tps"] if pyt_ok else None
        x = common.ratio(q, y) if y else None
        want = AIM_RATE_X_PYTCP.get(int(n), 10.0)
        aim = (f">= {want:g}x PyTCP: {'met' if x >= want else 'MISSED'}" if x is not None else "")
        t.add(f"UDP echo, {n} outstanding (trans/s)", _f(q), _f(k), common.fmt_ratio(common.ratio(q, k)),
              _f(y) if pyt_ok else pyt_na, common.fmt_ratio(x) if x is not None else "-", aim)
    for size, fw in res["forwarding"].items():
        q, k = fw["qnet"], fw["kernel"]
        t.add(f"forward {size} B: frames/s", _f(q["fps"]), _f(k["fps"]),
              common.fmt_ratio(common.ratio(q["fps"], k["fps"])), "no forwarding", "-", "")
        t.add(f"forward {size} B: payload Mbit/s", _f(q["mbit_s"], 1), _f(k["mbit_s"], 1),
              common.fmt_ratio(common.ratio(q["mbit_s"], k["mbit_s"])), "", "", "")
        t.add(f"forward {size} B: loss (offered/s)", f"{q['loss']:.1%} ({_f(q['offered_fps'])})",
              f"{k['loss']:.1%} ({_f(k['offered_fps'])})", "", "", "", "")
        paced = q.get("paced", {})
        lf = paced.get("loss_free_fps")
        if int(size) <= 64:
            aim = f">= {AIM_FWD_64_FPS:,} frames/s: {'met' if lf and lf >= AIM_FWD_64_FPS else 'MISSED'}"
        else:
            mbit = (lf or 0) * int(size) * 8 / 1e6
            aim = f">= {AIM_FWD_1400_MBIT:,} Mbit/s: {'met' if mbit >= AIM_FWD_1400_MBIT else 'MISSED'} ({mbit:,.0f})"
        t.add(f"forward {size} B: paced, <1% loss (frames/s)", _f(lf) if lf else "< 2,000",
              f"{_f(k['fps'])} (blast)", common.fmt_ratio(common.ratio(lf, k["fps"])) if lf else "-", "", "", aim)
        if lf:
            share = q["fps"] / lf
            t.add(f"forward {size} B: blasted / paced", f"{share:.0%}", "", "", "", "",
                  f">= 90%: {'met' if share >= 0.9 else 'MISSED'}")
    m = res["machine"]
    lines = [f"IPv4 benchmark{' (quick)' if res['quick'] else ''}: {m['cpus']} CPUs, "
             f"load {m['loadavg_1m']} -> {m.get('loadavg_1m_after', '?')}, Python {m['python']}", t.render()]
    if not pyt_ok:
        lines.append(f"PyTCP: unavailable ({res['pytcp'].get('reason', 'unknown')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.main("ipv4", __doc__.splitlines()[0], run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
