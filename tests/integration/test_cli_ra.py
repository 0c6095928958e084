"""Router mode from the command line (issue 12): `qnet ra set|del|list`. The launcher keeps a port's
RA settings with its addresses (RUN/config.json, the manifest's `ra`), and re-asserts them to a
netstack that restarted (hand-over or cold) or crashed and to the netstack of a launcher that
came back after dying. Bad input gets one clear line, never a traceback.

The graph tests use a TAP port with nothing behind it; tests/interop/test_ipv6_router.py puts
Linux hosts behind qnet's advertisements."""
import json
import os
import random
import signal

import pytest

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
    (["ra", "set", "p0", "2001:db8::/48"], ["not a /64"]),
    (["ra", "set", "p0", "2001:db8::1/64"], ["not a prefix", "host bits"]),
    (["ra", "set", "p0", "10.0.0.0/24"], ["not an IPv6 prefix"]),
    (["ra", "set", "p0", "--rdnss", "10.0.0.53"], ["--rdnss", "not an IPv6 address"]),
    (["ra", "set", "p0", "--rdnss", "fe80::53%p0"], ["no %zone"]),
    (["ra", "set", "p0", "--mtu", "1000"], ["--mtu", "1280..65535"]),
    (["ra", "set", "p0", "--lifetime", "30"], ["--lifetime 30", "600..65535"]),
    (["ra", "set", "p0", "--lifetime", "x"], ["--lifetime", "not an integer"]),
    (["ra", "set"], ["required", "port"]),
    (["ra", "del"], ["required", "port"]),
    (["ra", "flush"], ["invalid choice", "set"]),
])
def test_bad_ra_input_is_one_usage_line(graph, args, words):
    res = graph.qnet(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    line = one_clean_line(res)
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("args, words", [(["ra", "--help"], ["set|del|list", "Router Solicitations"]),
                                         (["ra", "set", "--help"], ["--rdnss", "--dnssl", "--mtu", "--managed",
                                                                    "--other", "--lifetime", "/64"]),
                                         (["--help"], ["ra"])])
def test_ra_has_help(graph, args, words):
    res = graph.qnet(*args)
    assert res.returncode == 0, res.stderr
    for w in words:
        assert w in res.stdout, res.stdout


BAD_MANIFEST = """
[graph]
name = "badra"

[components.netstack]
module = "components.netstack.process"
provides = ["qnet.netstack@1.0", "qnet.device@1.0", "qnet.datagram@1.0"]

[components.ethdriver]
module = "components.ethdriver.driver"
uses = ["qnet.device@1.0"]
per_port = true

[ports.p0]
tap = "qtrabad0"
addresses = ["10.0.0.1/24", "2001:db8:1::1/64"]

[ports.p1]
tap = "qtrabad1"
addresses = [{addresses}]
ra = {ra}
"""


@pytest.mark.parametrize("addresses, ra, words", [
    ('"10.0.1.1/24"', "true", ["no prefix to advertise"]),
    ('"2001:db8:2::1/48"', "true", ["no prefix to advertise"]),
    ('"2001:db8:2::1/64"', '{ prefixes = ["2001:db8:3::/48"] }', ["2001:db8:3::/48", "not a /64"]),
    ('"2001:db8:2::1/64"', '{ prefixes = ["fe80::/64"] }', ["fe80::/64", "not a global"]),
    ('"2001:db8:2::1/64"', '{ rdnss = ["2001:db8::zz"] }', ["bad DNS server"]),
    ('"2001:db8:2::1/64"', '{ router_lifetime = 60 }', ["router_lifetime 60"]),
    ('"2001:db8:2::1/64"', '{ mtu = 9000 }', ["mtu 9000", "port's MTU"]),
    ('"2001:db8:2::1/64"', '{ rdns = ["2001:db8::53"] }', ["unknown field", "rdns"]),
    ('"2001:db8:2::1/64"', '"yes"', ["ra must be true or a table"]),
])
def test_a_bad_ra_in_a_manifest_names_its_file_and_line(graph, addresses, ra, words):
    path = graph.write(BAD_MANIFEST.format(addresses=addresses, ra=ra))
    res = graph.qnet("up", "-f", path, "--detach")
    assert res.returncode == 2, res.stdout + res.stderr
    line = one_clean_line(res)
    want = open(path).read().splitlines().index("[ports.p1]") + 1
    assert f"{path}:{want}:" in line and "port p1: ra" in line, line
    for w in words:
        assert w in line, line
    assert not os.path.exists(os.path.join(graph.run, "launcher.ctl"))


# -- on a graph with a TAP port ---------------------------------------------------------------------
def _ra(run) -> dict[str, dict]:
    return {r["port"]: r for r in qnet_json(run, "ra")}


@pytest.fixture(scope="module")
def tap_graph():
    """The default graph up with port p0 (IPv4 and an IPv6 /64) and p1 (IPv4 only), each on a
    TAP nobody answers on: (run dir, x)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun (TAP ports)")
    g = QnetGraph()
    x = random.randrange(16, 250)
    try:
        res = g.qnet("up", "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        qnet_ok(g.run, "port", "add", "p0", "--tap", f"qtra{random.randrange(10000, 99999)}",
            "--addr", f"10.94.{x}.1/24", "--addr", f"2001:db8:{x:x}::1/64")
        qnet_ok(g.run, "port", "add", "p1", "--tap", f"qtrb{random.randrange(10000, 99999)}", "--addr", f"10.93.{x}.1/24")
        yield g.run, x
    finally:
        g.cleanup()


@needs_tap
def test_ra_set_list_and_del(tap_graph):
    run, x = tap_graph
    prefix = f"2001:db8:{x:x}::/64"
    assert _ra(run) == {}
    assert qnet_ok(run, "ra").splitlines()[0].split() == ["PORT", "PREFIXES", "RDNSS", "DNSSL", "MTU", "FLAGS",
                                                      "LIFETIME", "STATE"]
    # no prefix given: the /64 of p0's global address
    out = qnet_ok(run, "ra", "set", "p0", "--rdnss", f"2001:db8:{x:x}::53", "--dnssl", "lab.example")
    assert out.startswith("p0: ") and prefix in out and "rdnss 2001:db8" in out, out
    got = _ra(run)["p0"]
    assert got == {"port": "p0", "prefixes": [prefix], "mtu": None, "rdnss": [f"2001:db8:{x:x}::53"],
                   "dnssl": ["lab.example"], "managed": False, "other": False, "router_lifetime": 1800,
                   "advertising": got["advertising"]}, got
    wait_until(lambda: _ra(run)["p0"]["advertising"], 8.0, "p0 advertising", interval=0.3)

    # set again: replaced, not added to
    other = f"2001:db8:{x + 1:x}::/64"
    applied = qnet_json(run, "ra", "set", "p0", prefix, other, "--mtu", "1400", "--managed", "--other",
                    "--lifetime", "0")
    assert applied["prefixes"] == [prefix, other] and applied["rdnss"] == [] and applied["mtu"] == 1400, applied
    assert (applied["managed"], applied["other"], applied["router_lifetime"]) == (True, True, 0), applied
    assert _ra(run)["p0"] == applied
    text = qnet_ok(run, "ra", "list")
    assert "MO" in text and "advertising" in text and other in text, text

    # refused by the launcher or netstack: one clear line, exit 1
    for args, words in ((["ra", "set", "p1"], ["no prefix to advertise"]),
                        (["ra", "set", "nosuch"], ["nosuch"]),
                        (["ra", "set", "p0", "--mtu", "9000"], ["mtu 9000", "port's MTU"])):
        res = run_qnet(run, *args)
        assert res.returncode == 1, res.stdout + res.stderr
        line = one_clean_line(res)
        assert all(w in line for w in words), line
    assert _ra(run)["p0"] == applied        # unchanged by the refusals

    # p1 has no IPv6 address of its own but may advertise a named prefix
    assert f"2001:db8:{x + 2:x}::/64" in qnet_ok(run, "ra", "set", "p1", f"2001:db8:{x + 2:x}::/64")
    assert set(_ra(run)) == {"p0", "p1"}
    assert "router mode off" in qnet_ok(run, "ra", "del", "p1")
    assert set(_ra(run)) == {"p0"}
    res = run_qnet(run, "ra", "del", "p1")
    assert res.returncode == 1 and "not in router mode" in one_clean_line(res)
    qnet_ok(run, "ra", "del", "p0")
    assert _ra(run) == {}


@needs_tap
def test_ra_survives_netstack_restarts_and_a_launcher_that_died(tap_graph):
    run, x = tap_graph
    prefix = f"2001:db8:{x:x}::/64"
    qnet_ok(run, "ra", "set", "p0", "--rdnss", f"2001:db8:{x:x}::53")
    want = _ra(run)["p0"]
    with open(os.path.join(run, "config.json")) as f:
        kept = json.load(f)["ports"]["p0"]["ra"]
    # the launcher keeps what was asked (no prefixes: the port's /64s each time it is asserted)
    assert kept == {"prefixes": [], "mtu": None, "rdnss": [f"2001:db8:{x:x}::53"], "dnssl": [],
                    "managed": False, "other": False, "router_lifetime": 1800}, kept

    def same() -> bool:
        got = _ra(run).get("p0")
        return got is not None and {**got, "advertising": True} == {**want, "advertising": True}

    qnet_ok(run, "restart", "netstack")
    assert same()
    qnet_ok(run, "restart", "netstack", "--cold")
    wait_until(same, 10.0, "router mode back after a cold restart", interval=0.3)
    wait_until(lambda: _ra(run)["p0"]["advertising"], 8.0, "p0 advertising again", interval=0.3)

    def pid(name):
        return {c["name"]: c["pid"] for c in qnet_json(run, "status")["components"]}[name]
    old = pid("netstack")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (p := pid("netstack")) and p != old, 15.0, "netstack respawned", interval=0.2)
    wait_until(same, 10.0, "router mode back after a crash", interval=0.3)

    # the launcher dies with its components; a new one brings the port and its RA back
    with open(os.path.join(run, "launcher.pid")) as f:
        lpid = int(f.read().strip())
    os.kill(lpid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{lpid}"), 10.0, "the launcher gone")
    wait_until(lambda: run_qnet(run, "status").returncode != 0, 15.0, "the graph down")
    res = run_qnet(run, "up", "--detach", "--timeout", "40")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(same, 10.0, "router mode restored by a new launcher", interval=0.3)
    assert _ra(run)["p0"]["prefixes"] == [prefix]
    qnet_ok(run, "ra", "del", "p0")
    with open(os.path.join(run, "config.json")) as f:
        assert "ra" not in json.load(f)["ports"]["p0"]
    qnet_ok(run, "restart", "netstack")
    assert _ra(run) == {}


@needs_tap
def test_ra_declared_in_a_manifest_comes_up_with_the_graph():
    import launcher
    g = QnetGraph()
    x = random.randrange(16, 250)
    with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
        text = f.read()
    text += f"""
[ports.m0]
tap = "qtrm{random.randrange(10000, 99999)}"
addresses = ["2001:db8:{x:x}:9::1/64"]
ra = true

[ports.m1]
tap = "qtrm{random.randrange(10000, 99999)}"
ra = {{ prefixes = ["2001:db8:{x:x}:a::/64"], rdnss = ["2001:db8:{x:x}:9::53"], dnssl = ["lab.example"], other = true }}
"""
    try:
        res = g.qnet("up", "-f", g.write(text), "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        rows = _ra(g.run)
        assert rows["m0"]["prefixes"] == [f"2001:db8:{x:x}:9::/64"] and rows["m0"]["rdnss"] == [], rows
        assert rows["m1"]["prefixes"] == [f"2001:db8:{x:x}:a::/64"], rows
        assert (rows["m1"]["rdnss"], rows["m1"]["dnssl"], rows["m1"]["other"]) == \
            ([f"2001:db8:{x:x}:9::53"], ["lab.example"], True), rows
    finally:
        g.cleanup()
