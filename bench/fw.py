"""Firewall benchmark: qnet's forwarding rate with rule sets and a full conntrack table, beside
the Linux kernel with the same rules in nftables on a veth router, measured in the same run.

    python -m bench.fw [--quick] [--json FILE]        (./scripts/bench fw)

The lab is bench/ipv4.py's, imported, not copied: namespace A -> qnet (two TAP ports) ->
namespace B, and namespace A -> a kernel router namespace (two veth pairs) -> namespace B.
Each configuration is installed in both (qnet: `qnet fw load FILE`, the kernel: `nft -f FILE`
in the router namespace), then 64-byte UDP datagrams are blasted from A to B for a few seconds
(bench/ipv4.py's measure_forwarding: one sender back to back, frames/s arriving in B over the
time from the first send to the last arrival). A blast, not the paced loss-free search: the
search costs ten steps per figure, and qnet's blasted rate is within ~10 % of its paced rate
(docs/ipv4-benchmark.md). The configurations:

  none           no rules (qnet's filter is off: nothing evaluated, nothing tracked)
  dport 100/10k  `forward proto udp dport N drop` for N distinct ports the traffic does not
                 use, then `forward accept` (qnet: its (proto, dport) index; nft: a linear chain)
  saddr 100/1k   `forward saddr A drop` for A distinct addresses the traffic does not come
                 from, then `forward accept` (linear in both; not 10,000: qnet then forwards
                 so few frames/s that the backlog a blast leaves takes minutes to drain)
  set 10k        `set blocked` of 10,000 addresses, `forward saddr @blocked drop` (nft: a named
                 set of type ipv4_addr)
  conntrack      `forward ct state established,related accept`, with the table first filled
                 with 100,000 one-way UDP flows (distinct source address and port) sent paced
                 from A through a raw socket; the table's size is read back (qnet: `qnet fw
                 conntrack --json`, the kernel: nf_conntrack_count of the router namespace)
                 before and after the measurement. qnet's netstack runs with conntrack_max
                 131,072 (the default graph with [components.netstack.args] conntrack_max),
                 the kernel's nf_conntrack_max is read back.

With any rule qnet tracks every packet (its hooks run connection tracking first); the kernel
tracks only with a `ct` expression (the conntrack row). Rounds are interleaved between
configurations and targets; each figure is the median over rounds.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench import common
from bench.ipv4 import SINK_PORT, SYS_PY, Lab, Qnet, Target, measure_forwarding, setup_kernel, sh

FRAME = 64                 # UDP payload bytes, as bench ipv4's "forward 64 B" figure
FLOWS = 100_000            # the conntrack configuration's flows
FILL_RATE = 25_000         # flows/s offered while filling (below qnet's forwarding rate)
AIM_SET_SHARE = 0.90       # qnet with 10,000 addresses in a set within 10 % of no rules

# The flow filler, run in the client namespace by /usr/bin/python3 (standard library only):
# one UDP datagram per flow through a raw socket, flow i from source address srcs[i // 64000]
# and source port 1024 + i % 64000, paced at RATE in bursts of 64.
FLOOD = r"""
import errno, json, socket, struct, sys, time
dst, dport, srcs, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
d = socket.inet_aton(dst)
per, payload = 64000, bytes(18)
heads = [struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, socket.inet_aton(a), d)
         for a in srcs]
sent = nobufs = 0
start = time.perf_counter()
while sent < n:
    for _ in range(64):
        if sent >= n:
            break
        pkt = heads[sent // per] + struct.pack("!HHHH", 1024 + sent % per, dport, 8 + len(payload), 0) + payload
        try:
            s.sendto(pkt, (dst, 0))
            sent += 1
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            nobufs += 1
            time.sleep(0.0005)
    ahead = start + sent / rate - time.perf_counter()
    if ahead > 0:
        time.sleep(ahead)
print(json.dumps({"sent": sent, "elapsed": time.perf_counter() - start, "nobufs": nobufs}))
"""


# -- the configurations --------------------------------------------------------------------
def _addr(i: int) -> str:
    """The i-th address of 198.18.0.0/15 (RFC 2544's benchmarking range): never the traffic's."""
    return f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def _nft(rules: list[str], sets: str = "") -> str:
    return ("flush ruleset\ntable ip qbench {\n" + sets
            + "  chain qforward {\n    type filter hook forward priority 0; policy accept;\n"
            + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")


def config_texts(key: str, n: int) -> tuple[str, str]:
    """(qnet rules file, nft -f file) of one configuration."""
    if key == "none":
        return "# no rules\n", "flush ruleset\n"
    if key == "one":
        return "forward accept\n", _nft(["accept"])
    if key == "dport":
        ports = [20000 + i for i in range(n)]
        return ("".join(f"forward proto udp dport {p} drop\n" for p in ports) + "forward accept\n",
                _nft([f"udp dport {p} drop" for p in ports] + ["accept"]))
    if key == "saddr":
        addrs = [_addr(i + 1) for i in range(n)]
        return ("".join(f"forward saddr {a} drop\n" for a in addrs) + "forward accept\n",
                _nft([f"ip saddr {a} drop" for a in addrs] + ["accept"]))
    if key == "set":
        addrs = [_addr(i + 1) for i in range(n)]
        lines = "".join(f"set blocked {' '.join(addrs[i:i + 128])}\n" for i in range(0, n, 128))
        nft_set = f"  set blocked {{\n    type ipv4_addr;\n    elements = {{ {', '.join(addrs)} }}\n  }}\n"
        return lines + "forward saddr @blocked drop\n", _nft(["ip saddr @blocked drop"], nft_set)
    if key == "conntrack":
        return ("forward ct state established,related accept\n",
                _nft(["ct state established,related accept"]))
    raise ValueError(key)


CONFIGS = (  # (name, kind, rules or elements)
    ("none", "none", 0),
    ("one rule", "one", 1),
    ("dport 100", "dport", 100),
    ("dport 10,000", "dport", 10_000),
    ("saddr 100", "saddr", 100),
    ("saddr 1,000", "saddr", 1_000),
    ("set of 10,000", "set", 10_000),
    ("conntrack 100,000", "conntrack", FLOWS),
)
LABELS = {
    "none": "no rules",
    "one rule": "1 rule `forward accept` (the filter on)",
    "dport 100": "100 rules `proto udp dport N drop` + accept",
    "dport 10,000": "10,000 rules `proto udp dport N drop` + accept",
    "saddr 100": "100 rules `saddr A drop` + accept",
    "saddr 1,000": "1,000 rules `saddr A drop` + accept",
    "set of 10,000": "1 rule `saddr @blocked drop`, set of 10,000",
    "conntrack 100,000": "ct state rule, 100,000 flows offered",
}


# -- installing and filling ----------------------------------------------------------------
class Rig:
    def __init__(self, lab: Lab, qnet: Qnet, kernel: Target, qtarget: Target, run_dir: str):
        self.lab, self.qnet, self.kernel, self.qtarget, self.run_dir = lab, qnet, kernel, qtarget, run_dir
        self.router_ns = next(ns for ns in lab.namespaces if ns.endswith("kr"))
        self.extra: dict[str, list[str]] = {}   # target name -> source addresses for the flows

    def install(self, name: str, kind: str, n: int) -> dict:
        """The configuration into both; seconds each took."""
        qtext, ntext = config_texts(kind, n)
        qpath, npath = os.path.join(self.run_dir, "fw.rules"), os.path.join(self.run_dir, "fw.nft")
        with open(qpath, "w", encoding="utf-8") as f:
            f.write(qtext)
        with open(npath, "w", encoding="utf-8") as f:
            f.write(ntext)
        # A slow rule set leaves netstack a backlog of blasted frames: let it drain first, or
        # the firewall's install waits on netstack long enough to look unresponsive.
        drain = self.qnet.wait_quiet(90.0)
        t0 = time.monotonic()
        for attempt in range(4):
            try:
                self.qnet.cli("fw", "load", qpath, timeout=120)
                break
            except RuntimeError as exc:
                if attempt == 3 or "unresponsive" not in str(exc):
                    raise
                common.log(f"fw: {exc}; retrying")
                time.sleep(3.0)
                self.qnet.wait_quiet(60.0)
        t1 = time.monotonic()
        self.lab.exec(self.router_ns, "nft", "-f", npath, timeout=120)
        t2 = time.monotonic()
        return {"qnet_drain_s": drain, "qnet_load_s": round(t1 - t0, 2), "nft_load_s": round(t2 - t1, 2)}

    def second_address(self, t: Target, addr: str) -> list[str]:
        """The client's own address and a second one on the same link (64,000 ports each)."""
        if t.name not in self.extra:
            out = sh("ip", "-n", t.client_ns, "-o", "-4", "addr", "show").stdout
            dev = own = None
            for line in out.splitlines():
                words = line.split()
                if "inet" in words:
                    cidr = words[words.index("inet") + 1]
                    if cidr.rsplit(".", 1)[0] == t.addr.rsplit(".", 1)[0]:
                        dev, own = words[1].split("@")[0], cidr.split("/")[0]
            if dev is None:
                raise RuntimeError(f"no interface toward {t.addr} in {t.client_ns}")
            sh("ip", "-n", t.client_ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.extra[t.name] = [own, addr]
        return self.extra[t.name]

    def count(self, t: Target) -> dict:
        if t.name == "qnet":
            r = json.loads(self.qnet.cli("fw", "conntrack", "--json", "--limit", "1"))
            return {"entries": r["entries"], "max_entries": r["max_entries"],
                    "refused_full": r["counters"].get("refused_full", 0),
                    "early_drop": r["counters"].get("early_drop", 0)}
        n = int(self.lab.exec(self.router_ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
        mx = int(self.lab.exec(self.router_ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_max").stdout)
        return {"entries": n, "max_entries": mx}

    def fill(self, t: Target, flows: int) -> dict:
        """``flows`` one-way UDP flows from the client namespace to the sink, counted."""
        prefix = t.addr.rsplit(".", 1)[0]
        srcs = self.second_address(t, f"{prefix}.3")
        want = None
        passes = []
        t0 = time.monotonic()
        # A sink on the port, so the sink namespace answers no ICMP port unreachable.
        sink = self.lab.spawn_tool(t.sink_ns, "udp-sink", "--port", str(SINK_PORT), "--duration", "120",
                                   "--busy", "120")
        try:
            for _ in range(2):
                r = json.loads(self.lab.exec(t.client_ns, SYS_PY, "-c", FLOOD, t.sink_addr, str(SINK_PORT),
                                             ",".join(srcs), str(flows), str(FILL_RATE),
                                             timeout=flows / FILL_RATE * 3 + 30).stdout.strip().splitlines()[-1])
                if t.name == "qnet":
                    self.qnet.wait_quiet()
                else:
                    time.sleep(0.3)
                c = self.count(t)
                passes.append({"sent": r["sent"], "elapsed": round(r["elapsed"], 2), "nobufs": r["nobufs"],
                               **c})
                want = min(flows, c["max_entries"])
                if c["entries"] >= 0.98 * want:
                    break
        finally:
            self.lab.stop(sink)
        return {"passes": passes, "wanted": want, "fill_s": round(time.monotonic() - t0, 2)}


def measure(rig: Rig, t: Target, duration: float) -> dict:
    if t.name == "qnet":
        rig.qnet.wait_quiet()
    r = measure_forwarding(rig.lab, [t], FRAME, duration)[t.name]
    if t.name == "qnet":
        r["drain_s"] = rig.qnet.wait_quiet(60.0)
    return r


def _graph_with_conntrack_max(run_dir: str, n: int) -> str:
    """The embedded default graph with netstack's conntrack table raised to n."""
    import launcher
    with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
        text = f.read()
    path = os.path.join(run_dir, "bench-fw-graph.toml")
    with open(path, "w") as f:
        f.write(text + f"\n[components.netstack.args]\nconntrack_max = {n}\n")
    return path


def run(quick: bool = False) -> dict:
    common.require_root_and("ip", SYS_PY, "ping", "nft")
    rounds = 1 if quick else 3
    duration = 1.0 if quick else 2.0
    result: dict[str, Any] = {"machine": common.machine_info(), "quick": quick,
                              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "frame_payload": FRAME,
                              "duration_s": duration, "rounds": rounds, "method": "blast",
                              "nft": sh("nft", "--version").stdout.strip(), "kernel": os.uname().release}
    raw: dict[str, dict[str, list]] = {name: {"qnet": [], "kernel": []} for name, _, _ in CONFIGS}
    loads: dict[str, list] = {name: [] for name, _, _ in CONFIGS}
    fills: dict[str, list] = {"qnet": [], "kernel": []}
    lab = Lab()
    t_start = time.monotonic()
    with common.runtime_dir("qnet-bench-fw-") as run_dir:
        qnet = Qnet(lab, run_dir)
        try:
            common.log("fw: setting up the kernel router and qnet ...")
            kernel = setup_kernel(lab)
            qt = qnet.setup(_graph_with_conntrack_max(run_dir, 131072))
            rig = Rig(lab, qnet, kernel, qt, run_dir)
            for t in (kernel, qt):  # warm-up: ARP resolved, paths hot
                measure_forwarding(lab, [t], FRAME, 0.5)
            for rnd in range(rounds):
                for name, kind, n in CONFIGS:
                    common.log(f"fw: round {rnd + 1}/{rounds}: {name} ...")
                    loads[name].append(rig.install(name, kind, n))
                    order = (kernel, qt) if rnd % 2 == 0 else (qt, kernel)
                    for t in order:
                        entry: dict[str, Any] = {}
                        if kind == "conntrack":
                            fill = rig.fill(t, n)
                            fills[t.name].append(fill)
                            entry["table_before"] = fill["passes"][-1]["entries"]
                        entry.update(measure(rig, t, duration))
                        if kind == "conntrack":
                            entry["table_after"] = rig.count(t)["entries"]
                        raw[name][t.name].append(entry)
                        common.log(f"fw:   {t.name}: {entry['fps']:,.0f} frames/s (loss {entry['loss']}, "
                                   f"offered {entry['offered_fps']:,.0f}/s)"
                                   + (f", table {entry['table_before']:,} -> {entry['table_after']:,}"
                                      if "table_before" in entry else ""))
                rig.install("none", "none", 0)
            result["qnet_stats"] = qnet.stats()
        finally:
            result["qnet_echo"] = qnet.close()
            lab.close()
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result["raw"], result["loads"], result["fills"] = raw, loads, fills
    result["figures"] = {}
    for name, _, _ in CONFIGS:
        fig = {}
        for who in ("qnet", "kernel"):
            xs = raw[name][who]
            fig[who] = {"fps": round(common.median([x["fps"] for x in xs]), 1),
                        "loss": round(common.median([x["loss"] or 0.0 for x in xs]), 4),
                        "offered_fps": round(common.median([x["offered_fps"] for x in xs]), 1)}
            if "table_before" in xs[0]:
                fig[who]["table_before"] = min(x["table_before"] for x in xs)
                fig[who]["table_after"] = min(x["table_after"] for x in xs)
        result["figures"][name] = fig
    if fills["qnet"]:
        result["qnet_conntrack_max"] = fills["qnet"][0]["passes"][-1]["max_entries"]
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


# -- report -------------------------------------------------------------------------
def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def render(res: dict) -> str:
    figs = res["figures"]
    q0, k0 = figs["none"]["qnet"]["fps"], figs["none"]["kernel"]["fps"]
    t = common.Table("configuration", "qnet frames/s", "kernel frames/s", "qnet/kernel", "qnet/qnet none",
                     "kernel/kernel none", "qnet loss", "aim")
    for name, fig in figs.items():
        q, k = fig["qnet"]["fps"], fig["kernel"]["fps"]
        label = LABELS.get(name, name)
        if "table_before" in fig["qnet"]:
            label = (f"ct rule, table {fig['qnet']['table_before']:,} (qnet) / "
                     f"{fig['kernel']['table_before']:,} (kernel)")
        aim = ""
        if name == "set of 10,000":
            share = q / q0 if q0 else 0.0
            q1 = figs.get("one rule", {}).get("qnet", {}).get("fps") or 0.0
            aim = (f">= {AIM_SET_SHARE:.0%} of none: {'met' if share >= AIM_SET_SHARE else 'MISSED'}"
                   + (f" ({q / q1:.0%} of one rule)" if q1 else ""))
        t.add(label, _f(q), _f(k), common.fmt_ratio(common.ratio(q, k)), f"{q / q0:.0%}" if q0 else "-",
              f"{k / k0:.0%}" if k0 else "-", f"{fig['qnet']['loss']:.1%}", aim)
    m = res["machine"]
    lines = [f"Firewall benchmark{' (quick)' if res['quick'] else ''}: {res['date']}, {m['cpus']} CPUs, "
             f"load {m['loadavg_1m']} -> {m.get('loadavg_1m_after', '?')}, kernel {res['kernel']}, "
             f"{res['nft']}, Python {m['python']}",
             f"{res['frame_payload']}-byte UDP payloads blasted {res['duration_s']:g} s per figure, "
             f"median of {res['rounds']} round(s); run took {res['elapsed_s']:.0f} s", t.render()]
    if "qnet_conntrack_max" in res:
        held = res["figures"].get("conntrack 100,000", {}).get("qnet", {}).get("table_before")
        lines.append(f"qnet conntrack_max {res['qnet_conntrack_max']:,} ([components.netstack.args]); "
                     f"{FLOWS:,} flows offered, qnet's table held {held:,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.main("fw", __doc__.splitlines()[0], run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
