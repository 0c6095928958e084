"""TCP benchmark: qnet's TCP over a TAP beside the Linux kernel on veth and PyTCP 3.0.9 on TAP.

    python -m bench.tcp [--quick] [--json FILE]

Four figures, each beside its anchors measured in the same run:

1. Bulk throughput, Linux -> stack and stack -> Linux, MTU 1500 (time-bounded, 50 MB at
   most), Mbit/s; qnet with and without TAP offloads (`qnet port add --offloads`). Anchors: the
   kernel between two namespaces over a veth pair, PyTCP on a TAP.
2. Request/response: 64-byte ping-pong on one connection, transactions/s; kernel, PyTCP.
3. Connections per second: connect + one 64-byte exchange + close; kernel.
4. A 600 ms round trip: a qnet port with `--fault delay=0.3`; the kernel anchor gets the same
   delay from a user-space relay between two TAPs (bench/tcp_peers.py `relay`) and 4 MiB
   SO_SNDBUF/SO_RCVBUF, what qnet's buffers grow to. Goodput over a bounded time.

The measured stack is always the client; the far end is the same kernel server
(bench/tcp_peers.py `serve`, /usr/bin/python3 in a namespace) for every target, and the same
client loops drive a kernel socket, qnet's TcpStream (in this process, through TcpClient) and
PyTCP's client socket. Throughput is timed at the receiver. Rounds are interleaved between the
targets so that load from other work on the machine falls on all of them alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from bench import common
from bench import pytcp_setup
from bench import tcp_peers
from bench.ipv4 import QNET, ROOT, SYS_PY, Lab, _last_json

PEERS = os.path.join(ROOT, "bench", "tcp_peers.py")
PORT = 5201
MAX_BYTES = 50_000_000
DELAY = 0.3                   # one way: a 600 ms round trip
EQUAL_BUF = 4 << 20           # qnet's send_buffer_max / recv_buffer_max (core/tcp/conn.py)

AIM_X_PYTCP = 10.0            # bulk throughput each way vs PyTCP
AIM_MBIT = 300.0              # bulk throughput each way, no offloads
AIM_DELAY_SHARE = 0.70        # 600 ms path: goodput vs the kernel with equal buffers


class Target:
    """One stack as a client: ``run(mode, seconds, size, max_bytes)`` -> the client loop's figures."""

    def __init__(self, name: str, run: Callable[[str, float, int, int], dict]):
        self.name, self.run = name, run


def kernel_target(lab: Lab, name: str, ns: str, dst: str, buf: int = 0, port: int = PORT) -> Target:
    def run(mode: str, seconds: float, size: int, max_bytes: int) -> dict:
        args = [SYS_PY, PEERS, "client", mode, dst, str(port), "--duration", str(seconds),
                "--max-bytes", str(max_bytes), "--size", str(size), "--buf", str(buf)]
        return _last_json(lab.exec(ns, *args, timeout=seconds + 90).stdout)
    return Target(name, run)


def serve(lab: Lab, ns: str, buf: int = 0, port: int = PORT) -> None:
    lab.spawn(["ip", "netns", "exec", ns, SYS_PY, PEERS, "serve", "--port", str(port), "--buf", str(buf)],
              '"ready"')


# -- qnet -------------------------------------------------------------------------------
class Qnet:
    """One graph with a port per case; the client is a TcpClient in this process."""

    def __init__(self, lab: Lab, run_dir: str):
        self.lab, self.run_dir = lab, run_dir
        self.env = dict(os.environ, QNET_RUNTIME_DIR=run_dir)
        self.up = False
        self.client = None

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run([QNET, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"qnet {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def start(self) -> None:
        self.cli("up", "--detach")
        self.up = True
        from components.netstack.tcp_client import TcpClient
        self.client = TcpClient(self.run_dir)

    def port(self, name: str, x: int, *port_args: str, buf: int = 0) -> str:
        """Port ``name`` (qnet 10.99.X.1) to a new namespace (Linux 10.99.X.2) running the server."""
        lab = self.lab
        ns = lab.netns(name)
        tap = f"qT{lab.tag}{name}"[:15]
        self.cli("port", "add", name, "--tap", tap, "--addr", f"10.99.{x}.1/24", *port_args)
        lab.move(tap, ns, f"10.99.{x}.2/24")
        lab.wait_ping(ns, f"10.99.{x}.1", 10.0)
        serve(lab, ns, buf)
        return f"10.99.{x}.2"

    def target(self, name: str, dst: str) -> Target:
        client = self.client

        def connect():
            s = client.connect(dst, PORT, timeout=10)
            try:
                client.rpc.call("set_option", conn=s.id, name="nodelay", value=True)
            except Exception:  # noqa: BLE001 - an option it lacks changes no figure here
                pass
            return s

        def run(mode: str, seconds: float, size: int, max_bytes: int) -> dict:
            return tcp_peers.run_client(mode, connect, seconds, max_bytes, size)
        return Target(name, run)

    def connections(self) -> list[dict]:
        try:
            return self.client.connections()["connections"]
        except Exception:  # noqa: BLE001 - diagnostics only
            return []

    def stats(self) -> dict:
        try:
            return json.loads(self.cli("stats", "--json"))
        except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            return {"error": str(exc)}

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.up:
                subprocess.run([QNET, "down"], capture_output=True, timeout=60, env=self.env, cwd=ROOT)


class ConnectionWatch:
    """Samples qnet's connection table once a second during a transfer (cwnd, buffers, RTT,
    retransmissions), from a TcpClient of its own: what limited the goodput, if the aim is missed."""

    def __init__(self, run_dir: str):
        from components.netstack.tcp_client import TcpClient
        self.client = TcpClient(run_dir)
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                rows = self.client.connections()["connections"]
            except Exception:  # noqa: BLE001 - diagnostics only
                continue
            busy = [r for r in rows if r.get("state") == "ESTABLISHED"]
            if busy:
                self.samples.append(max(busy, key=lambda r: r.get("bytes_acked", 0) + r.get("bytes_received", 0)))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(5)
        self.client.close()
        keep = ("cwnd", "ssthresh", "send_buffer", "recv_buffer", "rtt", "total_retrans", "bytes_retrans",
                "flight", "snd_wnd", "rcv_wnd", "ca_state", "congestion", "out_of_order")
        last = self.samples[-1] if self.samples else {}
        return {k: last[k] for k in keep if k in last} | {"samples": len(self.samples),
                                                           "max_cwnd": max((s.get("cwnd", 0) for s in self.samples),
                                                                           default=None)}


# -- PyTCP ------------------------------------------------------------------------------
def pytcp_target(lab: Lab, run_dir: str, x: int, socket_module: str | None = None) -> Target:
    """PyTCP's daemon on TAP 10.99.X.1, the server in a namespace at .2, its client in a process
    (through PyTCP's client API, or through ``socket_module``: "pytcp.socket", its drop-in)."""
    tree = pytcp_setup.prepare()
    py = pytcp_setup.python()
    ns = lab.netns("pa")
    tap = f"tapP{lab.tag}"  # PyTCP picks its TAP/TUN driver by the name's first three letters
    sock = os.path.join(run_dir, "pytcp.sock")
    # -O drops its `__debug__ and log(...)` calls; the daemon tool also empties LOG__CHANNEL.
    lab.spawn([py, "-O", os.path.join(ROOT, "bench", "ipv4_peers.py"), "pytcp-daemon", "--tree", tree,
               "--ipc-socket", sock, "-i", tap, "--ip4-address", f"10.99.{x}.1/24", "--no-ip6",
               "--mac-address", f"02:99:{x:02x}:00:00:01"], "listening", timeout=60)
    lab.move(tap, ns, f"10.99.{x}.2/24")
    lab.wait_ping(ns, f"10.99.{x}.1", 20.0)  # after its RFC 5227 address probes
    serve(lab, ns)

    def run(mode: str, seconds: float, size: int, max_bytes: int) -> dict:
        cmd = [py, "-O", PEERS, "client", mode, f"10.99.{x}.2", str(PORT), "--duration", str(seconds),
               "--max-bytes", str(max_bytes), "--size", str(size), "--pytcp-tree", tree, "--ipc-socket", sock]
        if socket_module:
            cmd += ["--socket-module", socket_module]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"PyTCP client {mode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return _last_json(proc.stdout)
    return Target("pytcp", run)


# -- the kernel's 600 ms path -------------------------------------------------------------
def kernel_delay_targets(lab: Lab, x: int) -> list[Target]:
    """Namespaces KD (client, 10.99.X.1) and KS (server, .2), each behind a TAP; a relay in this
    namespace moves frames between the TAPs DELAY s late each way. Two anchors: both ends with
    EQUAL_BUF fixed buffers (the comparison), and both left to the kernel's auto-tuning (Linux's
    tcp_rmem/tcp_wmem, which grow with the transfer as qnet's do)."""
    kd, ks = lab.netns("kd"), lab.netns("ks")
    tap_a, tap_b = f"qR{lab.tag}a", f"qR{lab.tag}b"
    # The relay creates the TAPs (TUNSETIFF); they keep working once moved to the namespaces.
    lab.spawn([SYS_PY, PEERS, "relay", "--tap-a", tap_a, "--tap-b", tap_b, "--delay", str(DELAY)], '"ready"')
    lab.move(tap_a, kd, f"10.99.{x}.1/24")
    lab.move(tap_b, ks, f"10.99.{x}.2/24")
    lab.wait_ping(kd, f"10.99.{x}.2", 10.0)
    serve(lab, ks, EQUAL_BUF)
    serve(lab, ks, 0, PORT + 1)
    return [kernel_target(lab, "kernel", kd, f"10.99.{x}.2", EQUAL_BUF),
            kernel_target(lab, "kernel auto-tuned", kd, f"10.99.{x}.2", 0, PORT + 1)]


# -- measurements ---------------------------------------------------------------------------
def measure(targets: list[Target], mode: str, rounds: int, seconds: float, size: int, key: str,
            label: str, max_bytes: int = MAX_BYTES, bench: str = "tcp") -> dict:
    """``rounds`` interleaved rounds per target; the median of ``key`` and every round's figures."""
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for t in targets:
            if t.name in errors:
                continue
            common.log(f"{bench}: {label}: {t.name}, round {r + 1}/{rounds} ...")
            t0 = time.monotonic()
            try:
                got = t.run(mode, seconds, size, max_bytes)
                runs[t.name].append(got)
                common.log(f"{bench}:   {key} {got[key]:,.2f} ({time.monotonic() - t0:.1f} s)")
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                errors[t.name] = f"{type(exc).__name__}: {exc}"
                common.log(f"{bench}: {label}: {t.name} failed: {errors[t.name]}")
    out = {}
    for name, rs in runs.items():
        vals = [r[key] for r in rs]
        out[name] = {key: round(common.median(vals), 2) if vals else None, "rounds": rs}
        if name in errors:
            out[name]["error"] = errors[name]
    return out


def offload_check(qnet: Qnet, port: str) -> dict:
    """Whether super-frames reached netstack on ``port`` (else the offload figure is plain TCP)."""
    st = qnet.stats()
    found: dict = {}

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("rx_gso_frames", "rx_gso_segments", "rx_gso_whole", "rx_csum_partial",
                         "rx_bad_offload", "tx_tso_frames") \
                        and port in path:
                    found[k] = v
                walk(v, f"{path}/{k}")
    walk(st, "")
    return found


def run(quick: bool = False) -> dict:
    """Set up the stacks, measure, tear everything down; the figures as a dict."""
    common.require_root_and("ip", SYS_PY)
    rounds = 1 if quick else 3
    bulk_s = 2.0 if quick else 5.0
    rr_s = 1.0 if quick else 3.0
    delay_s = 8.0 if quick else 25.0
    result: dict[str, Any] = {"machine": common.machine_info(), "quick": quick,
                              "seconds": {"bulk": bulk_s, "rr": rr_s, "cps": rr_s, "delay": delay_s}}
    lab = Lab()
    with common.runtime_dir("qnet-bench-tcp-") as run_dir:
        qnet = Qnet(lab, run_dir)
        try:
            common.log("tcp: setting up the kernel anchor (veth), qnet (TAP), PyTCP (TAP) ...")
            ka, kb = lab.netns("ka"), lab.netns("kb")
            lab.veth(ka, "10.99.50.1/24", kb, "10.99.50.2/24")
            serve(lab, kb)
            kernel = kernel_target(lab, "kernel", ka, "10.99.50.2")
            qnet.start()
            plain = qnet.target("qnet", qnet.port("p0", 51))
            targets = [kernel, plain]
            try:
                targets.append(qnet.target("qnet offloads", qnet.port("p1", 52, "--offloads")))
                result["offloads"] = {"port": "p1", "error": None}
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result["offloads"] = {"port": "p1", "error": str(exc)}
                common.log(f"tcp: qnet port with --offloads failed: {exc}")
            try:
                pyt = pytcp_target(lab, run_dir, 53)
                targets.append(pyt)
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": True}
            except (pytcp_setup.PyTcpUnavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": False, "reason": str(exc)}
                common.log(f"tcp: PyTCP unavailable: {exc}")
            with_pytcp = [t for t in targets if t.name != "qnet offloads"]
            no_pytcp = [t for t in targets if t.name in ("kernel", "qnet")]

            result["bulk_recv"] = measure(targets, "recv", rounds, bulk_s, 0, "mbit_s", "Linux -> stack")
            result["bulk_send"] = measure(targets, "send", rounds, bulk_s, 0, "mbit_s", "stack -> Linux")
            if result["offloads"]["error"] is None:
                result["offloads"]["counters"] = offload_check(qnet, "p1")
            result["rr"] = measure(with_pytcp, "rr", rounds, rr_s, 64, "tps", "64 B ping-pong")
            result["cps"] = measure(no_pytcp, "cps", rounds, rr_s, 64, "cps", "connections")

            common.log("tcp: setting up the 600 ms paths (qnet --fault delay=0.3, kernel via a delay relay) ...")
            kdelay = kernel_delay_targets(lab, 54)
            qdelay = qnet.target("qnet", qnet.port("p2", 55, "--fault", f"delay={DELAY}", buf=EQUAL_BUF))
            result["delay"] = {}
            for mode, label in (("recv", "Linux -> stack"), ("send", "stack -> Linux")):
                watch = ConnectionWatch(run_dir)
                try:
                    # One round each: 25 s transfers, the kernel's then qnet's, back to back.
                    # No byte cap: every target runs the same time (the kernel moves 50 MB in ~10 s).
                    fig = measure([*kdelay, qdelay], mode, 1, delay_s, 0, "mbit_s", f"600 ms RTT, {label}",
                                  max_bytes=1 << 40)
                finally:
                    fig["qnet"]["watch"] = watch.stop()
                result["delay"][mode] = fig
            result["qnet_stats"] = qnet.stats()
        finally:
            qnet.close()
            lab.close()
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


# -- report ---------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _x(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    x = common.ratio(a, b)
    return f"{x:.2g}x" if x < 0.1 else common.fmt_ratio(x)  # the kernel on veth is 100-1000x


def render(res: dict) -> str:
    pyt_ok = res.get("pytcp", {}).get("available", False)
    t = common.Table("figure", "qnet", "kernel", "qnet/kernel", "PyTCP 3.0.9", "qnet/PyTCP", "aim")

    def fig(block: dict, name: str, key: str) -> float | None:
        return block.get(name, {}).get(key)

    for key, label in (("bulk_recv", "Linux -> stack"), ("bulk_send", "stack -> Linux")):
        b = res[key]
        q, k, y = fig(b, "qnet", "mbit_s"), fig(b, "kernel", "mbit_s"), fig(b, "pytcp", "mbit_s")
        aims = []
        if q is not None:
            aims.append(f">= {AIM_MBIT:g} Mbit/s: {'met' if q >= AIM_MBIT else 'MISSED'}")
            if y:
                aims.append(f">= {AIM_X_PYTCP:g}x PyTCP: {'met' if q / y >= AIM_X_PYTCP else 'MISSED'}")
        t.add(f"bulk {label} (Mbit/s)", _f(q, 1), _f(k, 1), _x(q, k), _f(y, 2) if pyt_ok else "unavailable",
              _x(q, y), "; ".join(aims))
        o = fig(b, "qnet offloads", "mbit_s")
        if res["offloads"]["error"] is None:
            t.add("  same, port with --offloads", _f(o, 1), "", _x(o, k), "", _x(o, y), "")
    off = res["offloads"]
    r = res["rr"]
    q, k, y = fig(r, "qnet", "tps"), fig(r, "kernel", "tps"), fig(r, "pytcp", "tps")
    t.add("64 B ping-pong, 1 connection (trans/s)", _f(q), _f(k), _x(q, k), _f(y) if pyt_ok else "unavailable",
          _x(q, y), "")
    c = res["cps"]
    q, k = fig(c, "qnet", "cps"), fig(c, "kernel", "cps")
    t.add("connect + 64 B exchange + close (conn/s)", _f(q), _f(k), _x(q, k), "not measured", "", "")
    for mode, label in (("recv", "Linux -> stack"), ("send", "stack -> Linux")):
        d = res["delay"][mode]
        q, k = fig(d, "qnet", "mbit_s"), fig(d, "kernel", "mbit_s")
        aim = (f">= {AIM_DELAY_SHARE:.0%} kernel: {'met' if q / k >= AIM_DELAY_SHARE else 'MISSED'}"
               if q is not None and k else "")
        t.add(f"600 ms RTT {label}, {res['seconds']['delay']:g} s (Mbit/s)", _f(q, 1), _f(k, 1), _x(q, k),
              "", "", aim)
        a = fig(d, "kernel auto-tuned", "mbit_s")
        t.add("  kernel with auto-tuned buffers instead", "", _f(a, 1), _x(q, a), "", "", "")
    m = res["machine"]
    lines = [f"TCP benchmark{' (quick)' if res['quick'] else ''}: {m['cpus']} CPUs, "
             f"load {m['loadavg_1m']} -> {m.get('loadavg_1m_after', '?')}, Python {m['python']}; "
             f"kernel anchors: veth (bulk, ping-pong, connections), TAPs + user-space delay relay with "
             f"{EQUAL_BUF >> 20} MiB buffers (600 ms)", t.render()]
    if off["error"] is not None:
        lines.append(f"offloads: not measured: `qnet port add --offloads` failed: {off['error']}")
    else:
        cnt = off.get("counters", {})
        if not cnt.get("rx_gso_frames") and not cnt.get("rx_gso_whole"):
            lines.append(f"offloads: the --offloads port received no super-frames (counters {cnt}): "
                         f"its figure is plain TCP on an offload-capable port")
        else:
            lines.append(f"offloads: TCP rides them: {cnt.get('rx_gso_whole', 0)} super-frames from Linux went "
                         f"whole to TCP ({cnt.get('rx_gso_frames', 0)} others cut into "
                         f"{cnt.get('rx_gso_segments', 0)}); qnet sent {cnt.get('tx_tso_frames', 0)} TSO "
                         f"super-segments for the TAP driver to cut")
    if not pyt_ok:
        lines.append(f"PyTCP: unavailable ({res['pytcp'].get('reason', 'unknown')})")
    for key in ("bulk_recv", "bulk_send", "rr", "cps"):
        for name, v in res[key].items():
            if v.get("error"):
                lines.append(f"{key} {name}: {v['error']}")
    for mode in ("recv", "send"):
        for name, v in res["delay"][mode].items():
            if v.get("error"):
                lines.append(f"600 ms {mode} {name}: {v['error']}")
        w = res["delay"][mode].get("qnet", {}).get("watch")
        if w:
            lines.append(f"600 ms {mode}: qnet's connection near the end: {json.dumps(w, sort_keys=True)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.main("tcp", __doc__.splitlines()[0], run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
