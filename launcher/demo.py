"""`./scripts/demo`: the mission in two minutes, using only the `qnet` command line.

It brings up the default graph in a private runtime directory, boots two
guests on two ports (they get their addresses from qnet's DHCP server), has
each ping the stack and the other guest through qnet's forwarding, restarts
the first guest's driver, the DHCP component and netstack while a ping runs,
shows that nothing was lost, serves both guests from an unmodified `python -m http.server`
under `qnet run` (across a restart of the socket provider), blocks one guest with a firewall
rule that holds across a restart of the firewall, and prints `qnet status`. It leaves nothing running unless
asked (--keep).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

QNET = [sys.executable, "-m", "launcher.cli"]


class DemoError(Exception):
    pass


class Demo:
    def __init__(self, run_dir: str, verbose: bool):
        self.run = run_dir
        self.verbose = verbose
        self.env = dict(os.environ, QNET_RUNTIME_DIR=run_dir)

    def step(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def qnet(self, *args: str, timeout: float = 120.0, show: bool = True, check: bool = True) -> str:
        cmd = QNET + list(args)
        if show:
            print(f"$ qnet {' '.join(args)}", flush=True)
        try:
            res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"'qnet {' '.join(args)}' took longer than {timeout:g} s") from None
        out = res.stdout + (res.stderr if res.returncode else "")
        if show and out.strip():
            print(out.rstrip(), flush=True)
        if check and res.returncode != 0:
            raise DemoError(f"'qnet {' '.join(args)}' failed: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def start_bg(self, *args: str) -> subprocess.Popen:
        print(f"$ qnet {' '.join(args)} &", flush=True)
        return subprocess.Popen(QNET + list(args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)


def lease_of(demo: Demo, vm: str) -> str:
    rows = json.loads(demo.qnet("vm", "list", "--json", show=False))
    for r in rows:
        if r["name"] == vm and r.get("lease"):
            return str(r["lease"]).split("/")[0]
    raise DemoError(f"{vm} has no lease")


def ping_summary(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    if not m:
        raise DemoError(f"no ping summary in: {out[-300:]}")
    return int(m.group(1)), int(m.group(2))


def run(args) -> int:
    run_dir = args.runtime_dir or tempfile.mkdtemp(prefix="qdemo", dir="/tmp")
    demo = Demo(run_dir, args.verbose)
    up = False
    server = None
    try:
        demo.step("bring up qnet's default component graph")
        demo.qnet("up", "--detach")
        up = True
        demo.qnet("status")

        demo.step("boot two guests on two new ports (stream and dgram backends); each gets a lease from qnet")
        t0 = time.monotonic()
        a = demo.start_bg("vm", "start", "vm1", "--backend", "stream")
        b = demo.start_bg("vm", "start", "vm2", "--backend", "dgram")
        for name, p in (("vm1", a), ("vm2", b)):
            try:
                out, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                raise DemoError(f"{name} did not get a lease within 120 s") from None
            print(out.rstrip())
            if p.returncode != 0:
                raise DemoError(f"{name} did not start")
        print(f"(both guests booted and leased in {time.monotonic() - t0:.1f} s)")
        demo.qnet("vm", "list")
        demo.qnet("dhcp", "leases")

        vm1, vm2 = lease_of(demo, "vm1"), lease_of(demo, "vm2")
        gw1 = vm1.rsplit(".", 1)[0] + ".1"
        demo.step("each guest pings qnet, and the other guest through qnet's forwarding")
        demo.qnet("vm", "exec", "vm1", f"ping -c 3 -W 2 {gw1}")
        demo.qnet("vm", "exec", "vm1", f"ping -c 3 -W 2 {vm2}")
        demo.qnet("vm", "exec", "vm2", f"ping -c 3 -W 2 {vm1}")
        demo.qnet("ping", "-c", "3", "-i", "0.2", vm2)

        demo.step("an unmodified Python program serves both guests through qnet (qnet run -- python -m http.server)")
        site = tempfile.mkdtemp(prefix="qdemo-www", dir="/tmp")
        with open(os.path.join(site, "hello.txt"), "w") as f:
            f.write("hello from python -m http.server, running on qnet's sockets\n")
        server = demo.start_bg("run", "--", "python", "-m", "http.server", "8080", "-d", site)
        gw2 = vm2.rsplit(".", 1)[0] + ".1"
        deadline = time.monotonic() + 20
        while "8080" not in demo.qnet("ss", "-l", show=False):
            if time.monotonic() > deadline or server.poll() is not None:
                raise DemoError("the http.server under qnet run did not start listening")
            time.sleep(0.2)
        demo.qnet("vm", "exec", "vm1", f"wget -q -O - http://{gw1}:8080/hello.txt")
        demo.qnet("vm", "exec", "vm2", f"wget -q -O - http://{gw2}:8080/hello.txt")
        demo.qnet("ss", "-a")

        demo.step("restart vm1's driver, the DHCP component and netstack while vm1 pings vm2 (100 pings, 0.1 s apart)")
        pinger = demo.start_bg("vm", "exec", "--timeout", "60", "vm1", f"ping -c 100 -i 0.1 -W 1 {vm2}")
        time.sleep(2.0)
        demo.qnet("restart", "ethdriver.vm1")
        time.sleep(1.0)
        demo.qnet("restart", "dhcpd")
        time.sleep(1.0)
        demo.qnet("restart", "netstack")
        out, _ = pinger.communicate(timeout=90)
        lines = [ln for ln in out.splitlines() if "transmitted" in ln or "round-trip" in ln or "rtt" in ln]
        print("\n".join(lines))
        sent, got = ping_summary(out)
        print(f"result: {sent} sent, {got} received, {sent - got} lost across three restarts")
        demo.qnet("vm", "exec", "vm1", "ip -4 addr show eth0 | grep inet")

        demo.step("restart the socket provider; the program keeps its listening socket and serves on")
        demo.qnet("restart", "sockets")
        demo.qnet("vm", "exec", "vm2", f"wget -q -O - http://{gw2}:8080/hello.txt")

        demo.step("the firewall: vm2 may no longer reach the program; the rule holds while the firewall restarts")
        port2 = next(r["port"] for r in json.loads(demo.qnet("vm", "list", "--json", show=False))
                     if r["name"] == "vm2")
        demo.qnet("fw", "add", "input", "iif", port2, "proto", "tcp", "dport", "8080", "reject")
        demo.qnet("restart", "firewall")
        if "hello" in demo.qnet("vm", "exec", "vm2", f"wget -q -T 5 -O - http://{gw2}:8080/hello.txt",
                                check=False):
            raise DemoError("vm2 reached the program through the reject rule")
        demo.qnet("vm", "exec", "vm1", f"wget -q -O - http://{gw1}:8080/hello.txt")
        demo.qnet("fw", "list")
        demo.qnet("fw", "del", "1")
        demo.qnet("vm", "exec", "vm2", f"wget -q -O - http://{gw2}:8080/hello.txt")

        demo.step("the graph after all that")
        demo.qnet("status")
        demo.qnet("stats", show=False)
        if args.keep:
            print(f"\nqnet keeps running: export QNET_RUNTIME_DIR={run_dir}; qnet status; qnet down")
        return 0
    except DemoError as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        if up:
            print(f"(logs: {run_dir}/logs)", file=sys.stderr)
        return 1
    finally:
        if server is not None and not args.keep:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
        if up and not args.keep:
            demo.step("stop everything")
            try:
                demo.qnet("down", check=False, timeout=30)
            except DemoError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the graph and the guests running")
    ap.add_argument("--runtime-dir", help="default: a fresh directory under /tmp")
    ap.add_argument("-v", "--verbose", action="store_true")
    try:
        return run(ap.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
