"""Ports, addresses, routes and DHCP pools declared in a manifest: created at `qnet up`, re-asserted
to a netstack that crashed, removed with the graph."""
import json
import os
import random
import shutil
import signal
import tempfile
import time

import pytest

from .conftest import run_qnet

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun (TAP ports)")




def _json(run, *args):
    res = run_qnet(run, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


MANIFEST = """
[graph]
name = "ports"

[components.netstack]
module = "components.netstack.process"
provides = ["qnet.netstack@1.0", "qnet.device@1.0", "qnet.datagram@1.0"]
backoff_initial = 0.1

[components.dhcpd]
module = "components.dhcpd.process"
provides = ["qnet.dhcpd@1.0"]
uses = ["qnet.datagram@1.0", "qnet.netstack@1.0"]

[components.ethdriver]
module = "components.ethdriver.driver"
uses = ["qnet.device@1.0"]
per_port = true

[ports.up0]
tap = "{tap0}"
addresses = ["10.99.{a}.1/24"]

[ports.g0]
tap = "{tap1}"
addresses = ["10.99.{b}.1/24"]
dhcp = "server"
pool = {{ start = "10.99.{b}.100", end = "10.99.{b}.110" }}

[[routes]]
prefix = "0.0.0.0/0"
via = "10.99.{a}.254"
"""


def test_declared_ports_come_up_survive_a_netstack_crash_and_go_with_the_graph():
    work = tempfile.mkdtemp(prefix="qm", dir="/tmp")
    run = os.path.join(work, "r")
    sfx = random.randrange(1000, 9999)
    tap0, tap1 = f"qtm{sfx}a", f"qtm{sfx}b"
    a, b = random.randrange(50, 100), random.randrange(100, 150)
    path = os.path.join(work, "g.toml")
    with open(path, "w") as f:
        f.write(MANIFEST.format(tap0=tap0, tap1=tap1, a=a, b=b))
    try:
        res = run_qnet(run, "up", "-f", path, "--detach")
        assert res.returncode == 0, res.stdout + res.stderr
        ports = {p["name"]: p for p in _json(run, "port", "list")}
        assert ports["up0"]["addresses"] == [f"10.99.{a}.1/24"] and ports["g0"]["attached"]
        routes = {(r["prefix"], r["gateway"]) for r in _json(run, "route", "list")}
        assert ("0.0.0.0/0", f"10.99.{a}.254") in routes
        pools = _json(run, "dhcp", "leases")["pools"]
        assert pools["g0"]["pool_start"] == f"10.99.{b}.100" and pools["g0"]["pool_end"] == f"10.99.{b}.110"
        assert os.path.exists(f"/sys/class/net/{tap0}") and os.path.exists(f"/sys/class/net/{tap1}")

        ns_pid = {c["name"]: c["pid"] for c in _json(run, "status")["components"]}["netstack"]
        os.kill(ns_pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = {c["name"]: c for c in _json(run, "status")["components"]}
            if rows["netstack"]["state"] == "running" and rows["netstack"]["pid"] != ns_pid:
                break
            time.sleep(0.2)
        else:
            pytest.fail("netstack was not respawned")
        routes = {(r["prefix"], r["gateway"]) for r in _json(run, "route", "list")}
        assert ("0.0.0.0/0", f"10.99.{a}.254") in routes
        assert {p["name"] for p in _json(run, "port", "list")} == {"up0", "g0"}
    finally:
        run_qnet(run, "down", timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (os.path.exists(f"/sys/class/net/{tap0}")
                                           or os.path.exists(f"/sys/class/net/{tap1}")):
        time.sleep(0.1)
    assert not os.path.exists(f"/sys/class/net/{tap0}"), "the launcher's TAP outlived the graph"


def test_a_bad_port_in_the_manifest_is_refused_before_anything_starts():
    work = tempfile.mkdtemp(prefix="qm", dir="/tmp")
    run = os.path.join(work, "r")
    path = os.path.join(work, "g.toml")
    with open(path, "w") as f:
        f.write(MANIFEST.format(tap0="qtmx0", tap1="qtmx1", a=60, b=61).replace('dhcp = "server"', 'dhcp = "maybe"'))
    try:
        res = run_qnet(run, "up", "-f", path, "--detach")
        assert res.returncode == 2, res.stdout + res.stderr
        assert "g0" in res.stderr and "dhcp" in res.stderr and "Traceback" not in res.stderr
        assert not os.path.exists(os.path.join(run, "launcher.ctl"))
    finally:
        run_qnet(run, "down", timeout=30)
        shutil.rmtree(work, ignore_errors=True)
