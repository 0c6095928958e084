"""IPv6 benchmark: qnet's ping and forwarding over IPv6 beside the same figures over IPv4 (the
same qnet graph, the same namespaces) and the Linux kernel's over IPv6, measured in one run.

    python -m bench.ipv6 [--quick] [--json FILE]        (./scripts/bench ipv6)

The lab is bench/ipv4.py's with IPv6 left on in the namespaces (DAD and router advertisements
off, so nothing but the measured traffic moves): namespace QA -> qnet (two TAP ports, each
with an IPv4 and an IPv6 address) -> QB, and KA -> a kernel router namespace (veths) -> KB.
The traffic tools are bench/ipv4_peers.py's, which pick the family from the address: ping
over a raw ICMPv6 socket, 64-byte UDP datagrams blasted for the forwarding rate (frames/s
arriving over the time from the first send to the last arrival). Rounds alternate between
targets; figures are medians.
"""
from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from bench import common
from bench.ipv4 import Lab, Qnet, Target, measure_forwarding, measure_ping, sh

KERNEL = ("fd00:99:10::", "fd00:99:11::")     # KA-KR and KR-KB links
QNET = ("fd00:99:0::", "fd00:99:1::")         # QA-qnet and qnet-QB links


class Lab6(Lab):
    """bench/ipv4.py's Lab with IPv6 on in every namespace it makes."""

    def netns(self, role: str) -> str:
        name = super().netns(role)
        self.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
                  "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.accept_dad=0",
                  "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_ra=0",
                  "net.ipv6.conf.default.accept_ra=0")
        return name

    def wait_ping6(self, ns: str, dst: str, timeout: float) -> None:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sh("ip", "netns", "exec", ns, "ping", "-6", "-c1", "-W1", dst, check=False).returncode == 0:
                return
        raise RuntimeError(f"{dst} did not answer ping -6 from {ns} within {timeout:g} s")


def setup_kernel6(lab: Lab6) -> Target:
    ka, kr, kb = lab.netns("ka"), lab.netns("kr"), lab.netns("kb")
    lab.exec(kr, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    lab.veth(ka, KERNEL[0] + "2/64", kr, KERNEL[0] + "1/64")
    lab.veth(kr, KERNEL[1] + "1/64", kb, KERNEL[1] + "2/64")
    sh("ip", "-n", ka, "-6", "route", "add", KERNEL[1] + "/64", "via", KERNEL[0] + "1")
    sh("ip", "-n", kb, "-6", "route", "add", KERNEL[0] + "/64", "via", KERNEL[1] + "1")
    lab.wait_ping6(ka, KERNEL[1] + "2", 10.0)
    t = Target("kernel6", ka, KERNEL[0] + "1")
    t.sink_ns, t.sink_addr = kb, KERNEL[1] + "2"
    return t


def setup_qnet(lab: Lab6, qnet: Qnet) -> tuple[Target, Target]:
    """(qnet over IPv4, qnet over IPv6): one graph, both versions on each port."""
    t4 = qnet.setup()
    qa, qb = t4.client_ns, t4.sink_ns
    taps = {"p0": qa, "p1": qb}
    for (port, ns), prefix in zip(taps.items(), QNET):
        qnet.cli("addr", "add", port, prefix + "1/64")
        tap = next(line.split(":")[1].strip().split("@")[0]
                   for line in sh("ip", "-n", ns, "-o", "link").stdout.splitlines()
                   if line.split(":")[1].strip().startswith("qt"))
        sh("ip", "-n", ns, "addr", "add", prefix + "2/64", "dev", tap, "nodad")
    sh("ip", "-n", qa, "-6", "route", "add", QNET[1] + "/64", "via", QNET[0] + "1")
    sh("ip", "-n", qb, "-6", "route", "add", QNET[0] + "/64", "via", QNET[1] + "1")
    lab.wait_ping6(qa, QNET[0] + "1", 15.0)     # qnet's DAD takes about a second
    lab.wait_ping6(qa, QNET[1] + "2", 15.0)
    t4.name = "qnet4"
    t6 = Target("qnet6", qa, QNET[0] + "1")
    t6.sink_ns, t6.sink_addr = qb, QNET[1] + "2"
    return t4, t6


def run(quick: bool = False) -> dict:
    common.require_root_and("ip", "ping")
    rounds = 1 if quick else 3
    ping_count = 100 if quick else 200
    fwd_duration = 1.0 if quick else 3.0
    result: dict[str, Any] = {"machine": common.machine_info(), "quick": quick}
    lab = Lab6()
    with common.runtime_dir("qnet-bench-ipv6-") as run_dir:
        qnet = Qnet(lab, run_dir)
        try:
            common.log("ipv6: setting up the kernel anchor and qnet ...")
            kernel = setup_kernel6(lab)
            q4, q6 = setup_qnet(lab, qnet)
            targets = [kernel, q4, q6]
            common.log("ipv6: ping ...")
            result["ping"] = measure_ping(lab, targets, rounds, ping_count)
            fw: dict[str, list[dict]] = {t.name: [] for t in targets}
            for i in range(rounds):
                common.log(f"ipv6: forwarding 64-byte datagrams, round {i + 1} ...")
                for name, r in measure_forwarding(lab, targets, 64, fwd_duration).items():
                    fw[name].append(r)
                qnet.wait_quiet()
            result["forwarding"] = {
                name: {"fps": statistics.median(r["fps"] for r in rs),
                       "loss": statistics.median(r["loss"] or 0 for r in rs), "rounds": rs}
                for name, rs in fw.items()}
            result["qnet_stats"] = {k: v for k, v in qnet.stats().get("stack", {}).items()
                                    if k in ("ipv6", "icmpv6", "ndp", "ipv4")}
        finally:
            qnet.close()
            lab.close()
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def render(res: dict) -> str:
    p, f = res["ping"], res["forwarding"]

    def us(name):
        return p[name]["median_us"]

    rows = [
        ("ping RTT median (µs)", us("qnet6"), us("qnet4"), us("kernel6"),
         f"{us('qnet6') / us('kernel6'):.1f}× kernel; {us('qnet6') / us('qnet4'):.2f}× qnet IPv4"),
        ("forwarding 64 B blasted (frames/s)", f["qnet6"]["fps"], f["qnet4"]["fps"], f["kernel6"]["fps"],
         f"{f['qnet6']['fps'] / f['kernel6']['fps']:.2f}× kernel; "
         f"{f['qnet6']['fps'] / f['qnet4']['fps']:.2f}× qnet IPv4"),
    ]
    out = ["| figure | qnet IPv6 | qnet IPv4 | kernel IPv6 | ratio |", "|---|---:|---:|---:|---|"]
    for name, a, b, c, r in rows:
        out.append(f"| {name} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {r} |")
    out.append(f"\nload after: {res['machine']['loadavg_1m_after']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return common.main("ipv6", __doc__.splitlines()[0], run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
