"""IPv6 from the command line, in the idiom of `ip -6` and `ping -6`: addresses with their DAD
state, routes (link-local gateways need their port), neighbors, qnet's own ping6; the launcher
keeps IPv6 addresses and routes and re-asserts them to a netstack that restarted, crashed, or
came back under a launcher that died. Bad input gets one clear line, never a traceback.

The graph tests use a TAP port with nothing behind it (DAD passes: nobody answers);
tests/interop/test_ipv6_linux.py puts the Linux kernel on the far side."""
import ipaddress
import json
import os
import random
import signal
import time

import pytest

from ipc.events import Subscriber
from ipc.protocols.netstack import NETSTACK

from .conftest import QnetGraph, qnet_json, qnet_ok, run_qnet, wait_until

needs_tap = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                               reason="needs root and /dev/net/tun (TAP ports)")


def one_clean_line(res) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert len(err.splitlines()) == 1, res.stderr
    return err


# -- refused before anything is asked of a graph ---------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["addr", "add", "p0", "2001:db8::zz/64"], ["not an address", "2001:db8::zz/64"]),
    (["addr", "add", "p0", "ff02::1/64"], ["cannot be an interface address"]),
    (["addr", "add", "-4", "p0", "2001:db8::1/64"], ["not an IPv4 address"]),
    (["addr", "-4", "-6"], ["-4 or -6"]),
    (["route", "add", "2001:db8::/64", "via", "fe80::1"], ["link-local gateway", "dev PORT"]),
    (["route", "add", "2001:db8::/64", "via", "fe80::1%p0", "dev", "p1"], ["names port p0", "p1"]),
    (["route", "add", "2001:db8::/64", "via", "10.0.0.1"], ["not an IPv6 gateway"]),
    (["route", "add", "2001:db8::/64", "via", "2001:db8::1", "table", "5"], ["no numbered tables"]),
    (["route", "add", "2001:db8::1/64", "dev", "p0"], ["not a prefix", "host bits"]),
    (["route", "add", "-6", "10.0.0.0/8", "dev", "p0"], ["not an IPv6 prefix"]),
    (["route", "add", "2001:db8::/64"], ["via GATEWAY", "dev PORT"]),
    (["route", "list", "-6", "table", "5"], ["no numbered tables"]),
    (["ping", "fe80::1"], ["link-local", "%PORT", "-I PORT"]),
    (["ping", "fe80::1%"], ["empty zone"]),
    (["ping", "-I", "p1", "fe80::1%p0"], ["names port p0", "p1"]),
    (["ping", "-4", "2001:db8::1"], ["not an IPv4 address"]),
    (["ping", "-6", "10.0.0.1"], ["not an IPv6 address"]),
    (["ping", "-I", "p0", "10.0.0.1"], ["-I PORT is for IPv6"]),
    (["ping", "2001:db8::g"], ["not an IPv6 address"]),
])
def test_bad_ipv6_input_is_one_usage_line(graph, args, words):
    res = graph.qnet(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    line = one_clean_line(res)
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("args", [["addr", "--help"], ["route", "--help"], ["neigh", "--help"],
                                  ["ping", "--help"], ["addr", "list", "--help"]])
def test_ipv6_commands_have_help(graph, args):
    res = graph.qnet(*args)
    assert res.returncode == 0, res.stderr
    assert "-6" in res.stdout


BAD_MANIFEST = """
[graph]
name = "bad6"

[components.netstack]
module = "components.netstack.process"
provides = ["qnet.netstack@1.0", "qnet.device@1.0", "qnet.datagram@1.0"]

[components.ethdriver]
module = "components.ethdriver.driver"
uses = ["qnet.device@1.0"]
per_port = true

[ports.p0]
tap = "qt6bad0"
addresses = [{addresses}]

[[routes]]
prefix = "10.0.0.0/8"
dev = "p0"

[[routes]]
{route}
"""


@pytest.mark.parametrize("addresses, route, where, words", [
    ('"2001:db8::1"', 'prefix = "::/0"\nvia = "2001:db8::fffe"', "[ports.p0]", ["2001:db8::1", "/LEN"]),
    ('"ff02::1/64"', 'prefix = "::/0"\nvia = "2001:db8::fffe"', "[ports.p0]", ["cannot be an interface"]),
    ('"2001:db8::1/64"', 'prefix = "2001:db8:1::/48"\nvia = "fe80::1"', "2", ["link-local", "dev"]),
    ('"2001:db8::1/64"', 'prefix = "2001:db8:1::/48"\nvia = "10.0.0.1"', "2", ["not an IPv6 address"]),
    ('"2001:db8::1/64"', 'prefix = "::/0"\nvia = "2001:db8::fffe"\ntable = 7', "2", ["no numbered tables"]),
])
def test_a_bad_ipv6_address_or_route_in_a_manifest_names_its_file_and_line(graph, addresses, route, where, words):
    path = graph.write(BAD_MANIFEST.format(addresses=addresses, route=route))
    res = graph.qnet("up", "-f", path, "--detach")
    assert res.returncode == 2, res.stdout + res.stderr
    line = one_clean_line(res)
    lines = open(path).read().splitlines()
    if where == "2":   # the second [[routes]] table, not the first
        want = [i for i, ln in enumerate(lines, 1) if ln.strip() == "[[routes]]"][1]
    else:
        want = lines.index(where) + 1
    assert f"{path}:{want}:" in line, line
    for w in words:
        assert w in line, line
    assert not os.path.exists(os.path.join(graph.run, "launcher.ctl"))


# -- on a graph with a TAP port ---------------------------------------------------------------------
def _states6(run) -> dict[str, str]:
    return {r["address"]: r["state"] for r in qnet_json(run, "addr", "-6")}


def _routes6(run) -> set[tuple]:
    return {(r["prefix"], r["gateway"], r["device"], r["metric"]) for r in qnet_json(run, "route", "list", "-6")
            if r["origin"].startswith("static")}


@pytest.fixture(scope="module")
def tap_graph():
    """The default graph up with port p0 on a TAP nobody answers on: (run dir, x, tap). Torn
    down by `qnet down`, and whatever of it still runs is killed (QnetGraph.cleanup)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun (TAP ports)")
    g = QnetGraph()
    x = random.randrange(16, 250)
    tap = f"qt6c{random.randrange(10000, 99999)}"
    try:
        res = g.qnet("up", "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        qnet_ok(g.run, "port", "add", "p0", "--tap", tap, "--addr", f"10.96.{x}.1/24", "--addr", f"2001:db8:{x:x}::1/64")
        yield g.run, x, tap
    finally:
        g.cleanup()


@needs_tap
def test_port_ipv6_addresses_become_preferred_beside_the_link_local_one(tap_graph):
    run, x, _ = tap_graph
    glob = f"2001:db8:{x:x}::1/64"
    states = wait_until(lambda: (s := _states6(run)) and all(v == "PREFERRED" for v in s.values()) and s,
                        8.0, "DAD to pass on p0's addresses", interval=0.3)
    assert glob in states
    mac = next(p for p in qnet_json(run, "port", "list") if p["name"] == "p0")["mac"]
    b = [int(h, 16) for h in mac.split(":")]
    # the modified EUI-64 link-local address of the port's MAC (RFC 4291 appendix A)
    ll = str(ipaddress.IPv6Interface(f"fe80::{(b[0] ^ 2) << 8 | b[1]:x}:{b[2] << 8 | 0xff:x}:"
                                     f"{0xfe00 | b[3]:x}:{b[4] << 8 | b[5]:x}/64"))
    assert ll in states, states
    port = next(p for p in qnet_json(run, "port", "list") if p["name"] == "p0")
    assert port["addresses"] == [f"10.96.{x}.1/24"]
    assert {a["address"] for a in port["addresses6"]} == {ll, glob}
    rows = qnet_json(run, "addr")
    assert {"port": "p0", "address": f"10.96.{x}.1/24"} in rows      # IPv4's rows as before
    assert {"port": "p0", "address": glob, "state": "PREFERRED"} in rows
    assert qnet_json(run, "addr", "-4") == [{"port": "p0", "address": f"10.96.{x}.1/24"}]
    text = qnet_ok(run, "port", "list")
    assert glob in text and ll in text
    text = qnet_ok(run, "addr", "list", "-6")
    assert text.splitlines()[0].split() == ["PORT", "ADDRESS", "STATE"] and "PREFERRED" in text
    # IPv6's tables are bounded and shown with the others (qnet status --tables)
    ns = next(c for c in qnet_json(run, "status")["components"] if c["name"] == "netstack")
    tables = ns["details"]["tables"]
    assert tables["ipv6_addresses"]["size"] >= 2 and tables["ipv6_addresses"]["limit"] > 0, tables
    for name in ("neighbors6", "routes6", "reassembly6"):
        assert tables[name]["limit"] > 0, tables


@needs_tap
def test_qnet_pings_its_own_ipv6_address_and_says_no_route_per_packet(tap_graph):
    run, x, _ = tap_graph
    wait_until(lambda: _states6(run).get(f"2001:db8:{x:x}::1/64") == "PREFERRED", 8.0, "DAD to pass")
    out = qnet_json(run, "ping", "-c", "2", "-i", "0.2", f"2001:db8:{x:x}::1")
    assert (out["sent"], out["received"]) == (2, 2), out
    assert all(r["src"] == f"2001:db8:{x:x}::1" for r in out["replies"]), out
    res = run_qnet(run, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "0.3", "2001:db8:dead::1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.count("no route") == 2 and "2 sent, 0 received" in res.stdout, res.stdout
    res = run_qnet(run, "ping", "-c", "1", "-W", "0.3", "fe80::1%nosuch")
    assert res.returncode == 1 and "nosuch" in one_clean_line(res)


@needs_tap
def test_ipv6_addresses_and_routes_are_added_announced_listed_and_removed(tap_graph):
    run, x, _ = tap_graph
    extra = f"2001:db8:{x:x}:1::1/64"
    seen: list[tuple[str, bool]] = []
    events = Subscriber([NETSTACK], [f"ipc://{run}/netstack.pub"])
    try:
        time.sleep(0.3)     # the subscription reaches the publisher before the event is sent
        assert "tentative" in qnet_ok(run, "addr", "add", "p0", extra)
        assert qnet_ok(run, "addr", "add", "p0", extra)        # idempotent

        def dad_passed():
            events.receive(lambda _p, name, ev: seen.append((ev.state, ev.present)) if name == "address6"
                           and str(ev.address) == extra else None)
            return ("PREFERRED", True) in seen
        wait_until(dad_passed, 8.0, "an address6 event saying DAD passed", interval=0.1)
    finally:
        events.close()
    assert seen[0] == ("TENTATIVE", True) and seen[-1] == ("PREFERRED", True), seen
    assert _states6(run)[extra] == "PREFERRED"
    qnet_ok(run, "route", "add", f"2001:db8:{x + 1:x}::/48", "via", f"2001:db8:{x:x}::fffe")
    qnet_ok(run, "route", "add", f"2001:db8:{x + 2:x}::/64", "via", "fe80::1%p0", "metric", "7")
    qnet_ok(run, "route", "add", "default", "via", f"2001:db8:{x:x}::fffe")
    assert _routes6(run) == {(f"2001:db8:{x + 1:x}::/48", f"2001:db8:{x:x}::fffe", None, 0),
                             (f"2001:db8:{x + 2:x}::/64", "fe80::1", "p0", 7),
                             ("::/0", f"2001:db8:{x:x}::fffe", None, 0)}
    # a second add with another metric replaces the route, as the launcher keeps it
    qnet_ok(run, "route", "add", f"2001:db8:{x + 2:x}::/64", "via", "fe80::1", "dev", "p0", "metric", "9")
    assert (f"2001:db8:{x + 2:x}::/64", "fe80::1", "p0", 9) in _routes6(run)
    assert (f"2001:db8:{x + 2:x}::/64", "fe80::1", "p0", 7) not in _routes6(run)
    # IPv4's list is IPv4's alone
    assert all(":" not in r["prefix"] for r in qnet_json(run, "route", "list"))

    qnet_ok(run, "route", "del", "default", "via", f"2001:db8:{x:x}::fffe")
    qnet_ok(run, "route", "del", f"2001:db8:{x + 2:x}::/64", "via", "fe80::1%p0")
    qnet_ok(run, "route", "del", f"2001:db8:{x + 1:x}::/48")
    assert _routes6(run) == set()
    res = run_qnet(run, "route", "del", f"2001:db8:{x + 1:x}::/48")
    assert res.returncode == 1 and "no route" in one_clean_line(res)
    assert "removed" in qnet_ok(run, "addr", "del", "p0", extra)
    assert extra not in _states6(run)
    res = run_qnet(run, "addr", "del", "p0", extra)
    assert res.returncode == 1 and "not on the port" in one_clean_line(res)
    res = run_qnet(run, "addr", "add", "nosuch", extra)
    assert res.returncode == 1 and "nosuch" in one_clean_line(res)
    res = run_qnet(run, "route", "add", "2001:db8:77::/64", "dev", "nosuch")
    assert res.returncode == 1 and "nosuch" in one_clean_line(res)
    # the same address on another length is refused, not silently changed
    res = run_qnet(run, "addr", "add", "p0", f"2001:db8:{x:x}::1/80")
    assert res.returncode == 1 and "already assigned" in one_clean_line(res)


@needs_tap
def test_neigh_shows_both_tables_by_default_and_each_alone(tap_graph):
    run, x, _ = tap_graph
    # pings toward on-link addresses nobody holds make neighbor entries in both tables
    run_qnet(run, "ping", "-c", "1", "-W", "0.3", f"2001:db8:{x:x}::99")
    run_qnet(run, "ping", "-c", "1", "-W", "0.3", f"10.96.{x}.99")
    v6 = qnet_json(run, "neigh", "-6")
    v4 = qnet_json(run, "neigh", "list", "-4")
    both = qnet_json(run, "neigh")
    assert all(":" in r["address"] for r in v6) and all(":" not in r["address"] for r in v4)
    assert {":" in r["address"] for r in both} == {True, False}, both
    text = qnet_ok(run, "neigh")
    assert text.splitlines()[0].split()[:3] == ["PORT", "ADDRESS", "MAC"]


@needs_tap
def test_ipv6_configuration_survives_netstack_restarts_and_a_launcher_that_died(tap_graph):
    run, x, tap = tap_graph
    addr = f"2001:db8:{x:x}:2::1/64"
    route = (f"2001:db8:{x + 3:x}::/48", f"2001:db8:{x:x}:2::fffe", None, 0)
    ll_route = (f"2001:db8:{x + 4:x}::/64", "fe80::5", "p0", 3)
    qnet_ok(run, "addr", "add", "p0", addr)
    qnet_ok(run, "route", "add", route[0], "via", route[1])
    qnet_ok(run, "route", "add", ll_route[0], "via", f"{ll_route[1]}%p0", "metric", "3")

    def configured() -> bool:
        return addr in _states6(run) and {route, ll_route} <= _routes6(run)

    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    assert addr in cfg["ports"]["p0"]["addresses"]
    assert {"prefix": ll_route[0], "via": "fe80::5", "dev": "p0", "metric": 3, "table": None} in cfg["routes"]

    # a planned restart (hand-over) and a cold one
    qnet_ok(run, "restart", "netstack")
    assert configured()
    qnet_ok(run, "restart", "netstack", "--cold")
    assert configured()

    # a crash: respawned, the launcher re-asserts
    def pid(name):
        return {c["name"]: c["pid"] for c in qnet_json(run, "status")["components"]}[name]
    old = pid("netstack")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (p := pid("netstack")) and p != old, 15.0, "netstack respawned", interval=0.2)
    wait_until(configured, 10.0, "IPv6 configuration back after a crash", interval=0.3)

    # the launcher itself dies (its components with it): the next `qnet up` brings back what
    # it held (RUN/config.json) into a netstack that starts from nothing
    with open(os.path.join(run, "launcher.pid")) as f:
        lpid = int(f.read().strip())
    os.kill(lpid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{lpid}"), 10.0, "the launcher gone")
    wait_until(lambda: not os.path.exists(f"/proc/{old}") and
               run_qnet(run, "status").returncode != 0, 15.0, "the graph down")
    res = run_qnet(run, "up", "--detach", "--timeout", "40")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(configured, 10.0, "IPv6 configuration restored by a new launcher", interval=0.3)
    assert f"2001:db8:{x:x}::1/64" in _states6(run)
    port = next(p for p in qnet_json(run, "port", "list") if p["name"] == "p0")
    assert port["addresses"] == [f"10.96.{x}.1/24"]


@needs_tap
def test_ipv6_addresses_and_routes_declared_in_a_manifest_come_up_with_the_graph():
    import launcher
    g = QnetGraph()
    x = random.randrange(16, 250)
    tap = f"qt6m{random.randrange(10000, 99999)}"
    with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
        text = f.read()
    text += f"""
[ports.m0]
tap = "{tap}"
addresses = ["10.95.{x}.1/24", "2001:db8:{x:x}:9::1/64"]

[[routes]]
prefix = "2001:db8:{x:x}:a::/64"
via = "fe80::9%m0"
metric = 4

[[routes]]
prefix = "::/0"
via = "2001:db8:{x:x}:9::fffe"
"""
    try:
        res = g.qnet("up", "-f", g.write(text), "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        port = next(p for p in qnet_json(g.run, "port", "list") if p["name"] == "m0")
        assert port["addresses"] == [f"10.95.{x}.1/24"]
        assert f"2001:db8:{x:x}:9::1/64" in {a["address"] for a in port["addresses6"]}
        assert _routes6(g.run) == {(f"2001:db8:{x:x}:a::/64", "fe80::9", "m0", 4),
                                   ("::/0", f"2001:db8:{x:x}:9::fffe", None, 0)}
    finally:
        g.cleanup()
