"""`qnet vm` end to end: real QEMU guests on a real graph, driven only through the CLI.

One graph for the module; the guests boot in parallel (TCG boots take seconds each) and the
tests share them, in file order. Every wait is bounded; `qnet down` and QEMU kills in finally.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

import pytest

from launcher.vm import tap_names

from .guest import REPO, booted_guest, guest_image

pytestmark = pytest.mark.qemu

BACKENDS = {"s1": "stream", "d1": "dgram", "t1": "tap"}
BOOT_TIMEOUT = 120.0
# Through launcher.cli.main, the same entry point as the installed `qnet` script.
QNET = [sys.executable, "-c", "import sys; from launcher.cli import main; sys.exit(main())"]


def run_qnet(run: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([*QNET, "--runtime-dir", run, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


class Graph:
    def __init__(self, run: str, bare) -> None:
        self.run = run
        self.bare = bare           # a QEMU started outside qnet (tests.qemu.guest.Guest)
        self.boot_output: dict[str, subprocess.CompletedProcess] = {}

    def qnet(self, *args: str, timeout: float = 60.0, ok: bool = True) -> subprocess.CompletedProcess:
        res = run_qnet(self.run, *args, timeout=timeout)
        if ok:
            assert res.returncode == 0, f"qnet {' '.join(args)}: rc {res.returncode}: {res.stderr or res.stdout}"
        return res

    def vms(self) -> dict[str, dict]:
        return {v["name"]: v for v in json.loads(self.qnet("vm", "list", "--json").stdout)}

    def ports(self) -> dict[str, dict]:
        return {p["name"]: p for p in json.loads(self.qnet("port", "list", "--json").stdout)}

    def exec(self, vm: str, cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return self.qnet("vm", "exec", "--timeout", str(timeout), vm, cmd, timeout=timeout + 30, ok=False)

    def lease(self, vm: str) -> str:
        lease = self.vms()[vm]["lease"]
        assert lease, f"{vm} has no lease: {self.vms()[vm]}"
        return lease.split("/")[0]

    def router(self, vm: str) -> str:
        return self.vms()[vm]["address"].split("/")[0]


def wait_until(what: str, predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def _manifest(run: str, data_transport: str) -> str:
    """The embedded default graph with the data plane this module runs on."""
    import launcher
    with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
        text = f.read()
    path = os.path.join(run, "graph.toml")
    with open(path, "w") as f:
        f.write(text.replace("[graph]\n", f'[graph]\ndata_transport = "{data_transport}"\n', 1))
    return path


@pytest.fixture(scope="module", params=["socketpair"])
def graph(request):
    """The guest tests run on the default data transport (launcher-held socketpairs). Which
    transport carries frames between a driver and netstack does not depend on the driver's
    backend; both transports are covered by the data-path tests of tests/interop (TAP ports),
    and this module once ran on both: ZeroMQ doubled its four minutes and found nothing the
    interop tests did not (docs/decisions.md, suite time)."""
    image = guest_image()
    # Unix socket paths are limited to 108 bytes: a short runtime dir of our own.
    run = tempfile.mkdtemp(prefix="qvm-", dir="/tmp")
    with ExitStack() as stack:
        try:
            res = run_qnet(run, "up", "-f", _manifest(run, request.param), "--detach", timeout=90)
            assert res.returncode == 0, f"qnet up: {res.stderr or res.stdout}"
            bare = stack.enter_context(booted_guest(image, netdevs=[], devices=[], hotplug_slots=2))
            g = Graph(run, bare)
            g.data_transport = request.param
            starts = {name: subprocess.Popen(
                [*QNET, "--runtime-dir", run, "vm", "start", name,
                 "--backend", backend, "--timeout", str(BOOT_TIMEOUT)],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name, backend in BACKENDS.items()}
            for name, proc in starts.items():
                try:
                    out, err = proc.communicate(timeout=BOOT_TIMEOUT + 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                g.boot_output[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            yield g
        finally:
            run_qnet(run, "down", timeout=30)
            for name in BACKENDS:
                for ifname in tap_names(name):
                    if os.path.exists(f"/sys/class/net/{ifname}"):
                        subprocess.run(["ip", "link", "del", ifname], capture_output=True)
            shutil.rmtree(run, ignore_errors=True)


def test_vm_start_on_each_backend_boots_and_gets_a_lease(graph):
    for name, res in graph.boot_output.items():
        assert res.returncode == 0, f"qnet vm start {name}: {res.stderr or res.stdout}"
        assert re.search(r"lease eth0 10\.77\.\d+\.\d+/24 router 10\.77\.\d+\.1", res.stdout), res.stdout
    vms = graph.vms()
    assert {n: v["backend"] for n, v in vms.items() if n in BACKENDS} == BACKENDS
    for name in BACKENDS:
        v = vms[name]
        assert v["state"] == "running" and v["pid"] > 0 and v["accel"] == "tcg" and v["port"] == name
        router = ipaddr(v["address"])
        assert v["lease"] and ipaddr(v["lease"]) != router and same_24(v["lease"], v["address"]), v
    assert len({v["mac"] for v in vms.values()}) == len(vms), "MACs must be unique"
    assert len({v["address"] for v in vms.values()}) == len(vms), "each VM has its own subnet"
    table = graph.qnet("vm", "list").stdout
    assert "LEASE" in table and "s1" in table and "tcg" in table


def ipaddr(cidr: str) -> str:
    return cidr.split("/")[0]


def same_24(a: str, b: str) -> bool:
    return ipaddr(a).rsplit(".", 1)[0] == ipaddr(b).rsplit(".", 1)[0]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_guest_and_qnet_ping_each_other(graph, name):
    res = graph.exec(name, f"ping -c 3 -W 2 {graph.router(name)}")
    # busybox ping exits 0 when replies came; under a loaded host's TCG one may come late.
    assert res.returncode == 0 and re.search(r"[23] packets received", res.stdout), res.stdout + res.stderr
    res = graph.qnet("ping", "-c", "2", graph.lease(name), ok=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_status_counts_the_vms_beside_the_components(graph):
    import json
    res = graph.qnet("status", "--json")
    vms = {v["name"]: v for v in json.loads(res.stdout)["vms"]}
    assert set(BACKENDS) <= set(vms) and all(vms[n]["state"] == "running" for n in BACKENDS)
    text = graph.qnet("status").stdout
    assert "vms:" in text and "running" in text.split("vms:")[1]


def test_exec_returns_the_guest_command_status(graph):
    res = graph.exec("s1", "echo hello; exit 7")
    assert res.returncode == 7 and res.stdout == "hello\n", res


def test_two_vms_reach_each_other_through_qnet_forwarding(graph):
    res = graph.exec("s1", f"ping -c 3 -W 2 {graph.lease('d1')}")
    assert res.returncode == 0, res.stdout + res.stderr
    res = graph.exec("t1", f"ping -c 3 -W 2 {graph.lease('s1')}")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("component", ["ethdriver.s1", "dhcpd"])
def test_restart_during_guest_ping_loses_nothing_on_socketpairs_and_the_guest_keeps_its_lease(graph, component):
    before = graph.lease("s1")
    leases_before = json.loads(graph.qnet("dhcp", "leases", "--json").stdout)["leases"]
    ping = subprocess.Popen([*QNET, "--runtime-dir", graph.run, "vm", "exec",
                             "--timeout", "40", "s1", f"ping -c 50 -i 0.1 {graph.router('s1')}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        res = graph.qnet("restart", component, "--json")
        assert json.loads(res.stdout)["new_pid"] != json.loads(res.stdout)["old_pid"]
        out, err = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.communicate()
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert m, out + err
    # A planned restart loses nothing on socketpairs; ZeroMQ makes no such promise.
    assert int(m.group(1)) == 50 and int(m.group(2)) >= (50 if graph.data_transport == "socketpair" else 47), out
    assert graph.lease("s1") == before
    res = graph.exec("s1", "ip -4 addr show dev eth0")
    assert f"inet {before}/24" in res.stdout, res.stdout
    # the server still holds every lease it gave out (a restarted dhcpd never forgets one)
    after = json.loads(graph.qnet("dhcp", "leases", "--json").stdout)["leases"]
    assert {(r["port"], r["address"], r["mac"]) for r in leases_before if r["role"] == "server"} <= \
        {(r["port"], r["address"], r["mac"]) for r in after if r["role"] == "server"}


def test_link_down_and_up_reaches_guest_and_tap_port(graph):
    graph.qnet("vm", "link", "t1", "down")
    assert graph.exec("t1", "cat /sys/class/net/eth0/carrier").stdout.strip() == "0"
    wait_until("port t1 down", lambda: not graph.ports()["t1"]["up"], 5)
    assert graph.exec("t1", f"ping -c 1 -W 1 {graph.router('t1')}").returncode != 0
    graph.qnet("vm", "link", "t1", "up")
    assert graph.exec("t1", "cat /sys/class/net/eth0/carrier").stdout.strip() == "1"
    wait_until("port t1 up", lambda: graph.ports()["t1"]["up"], 5)
    wait_until("t1 answers again",
               lambda: graph.exec("t1", f"ping -c 1 -W 1 {graph.router('t1')}").returncode == 0, 15, 0.5)


def test_link_down_and_up_on_a_stream_vm_reaches_the_guest_and_the_port(graph):
    res = graph.qnet("vm", "link", "s1", "down")
    assert "link down" in res.stdout
    assert graph.exec("s1", "cat /sys/class/net/eth0/carrier").stdout.strip() == "0"
    # A stream socket has no carrier: the launcher sets the port's administrative link in netstack.
    wait_until("port s1 down", lambda: not graph.ports()["s1"]["up"], 5)
    assert graph.exec("s1", f"ping -c 1 -W 1 {graph.router('s1')}").returncode != 0
    graph.qnet("vm", "link", "s1", "up")
    wait_until("port s1 up", lambda: graph.ports()["s1"]["up"], 5)
    wait_until("s1 answers again",
               lambda: graph.exec("s1", f"ping -c 1 -W 1 {graph.router('s1')}").returncode == 0, 15, 0.5)
    assert graph.vms()["s1"]["link"] is True


@pytest.mark.parametrize("backend", ["stream", "dgram"])
def test_attach_and_detach_a_nic_on_a_qemu_started_elsewhere(graph, backend):
    bare = graph.bare
    con = bare.console
    con.wait_for("QNET-GUEST: ready", timeout=BOOT_TIMEOUT, since=0)
    mark = con.mark()
    name = f"h{backend[0]}"
    res = graph.qnet("vm", "attach", name, "--qmp", str(bare.qmp_path), "--backend", backend, "--json")
    info = json.loads(res.stdout)
    assert info["state"] == "attached" and info["pid"] == bare.process.pid and info["bus"] == "rp1", info
    # Only the start of the line: console output of other writers may land inside it.
    m = con.wait_for(re.compile(rb"QNET-GUEST: lease (eth\d+) (10\.77\.\d+\.\d+)/24 "), timeout=30, since=mark)
    iface, addr = (x.decode() for x in m.groups())
    router = ipaddr(info["address"])
    status, out = con.run(f"ip route show default dev {iface}", timeout=10)
    assert f"via {router}" in out, out
    status, out = con.run(f"ping -c 2 -W 2 {router}", timeout=20)
    assert status == 0, out
    assert graph.qnet("ping", "-c", "1", addr, ok=False).returncode == 0
    wait_until("dhcpd lease in vm list", lambda: graph.vms()[name]["lease"] == f"{addr}/24", 5)
    assert name in graph.ports()
    graph.qnet("vm", "detach", name)
    con.wait_for(f"QNET-GUEST: link {iface} gone", timeout=15, since=mark)
    assert name not in graph.ports() and name not in graph.vms()


def test_killed_qemu_is_noticed_and_its_port_removed(graph):
    pid = graph.vms()["d1"]["pid"]
    os.kill(pid, 9)
    vm = wait_until("d1 exited", lambda: (v := graph.vms()["d1"])["state"] == "exited" and v, 5)
    assert "SIGKILL" in vm["exit"] and vm["lease"] is None
    wait_until("port d1 gone", lambda: "d1" not in graph.ports(), 5)
    status = json.loads(graph.qnet("status", "--json").stdout)["components"]
    assert "ethdriver.d1" not in {c["name"] for c in status}
    assert "exited" in graph.qnet("vm", "list").stdout
    # The others carry on.
    assert graph.exec("s1", f"ping -c 1 -W 2 {graph.router('s1')}").returncode == 0
    graph.qnet("vm", "stop", "d1")  # forgets the record
    assert "d1" not in graph.vms()


def test_stop_quits_qemu_and_removes_port_and_host_interfaces(graph):
    pid = graph.vms()["t1"]["pid"]
    res = graph.qnet("vm", "stop", "t1")
    assert "stopped" in res.stdout
    assert "t1" not in graph.vms() and "t1" not in graph.ports()
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    qemu_tap, port_tap, bridge = tap_names("t1")
    for ifname in (qemu_tap, bridge):
        assert not os.path.exists(f"/sys/class/net/{ifname}"), ifname
    # The port's TAP lives until the retiring driver (which holds a copy of its fd) has exited.
    wait_until(f"{port_tap} gone", lambda: not os.path.exists(f"/sys/class/net/{port_tap}"), 6)
    assert not any(f.startswith("vm-t1.") for f in os.listdir(graph.run))


def test_errors_are_one_clear_line(graph):
    for args, words in ((("vm", "start", "s1", "--no-wait"), "exists"),
                        (("vm", "stop", "nosuch"), "no VM named"),
                        (("vm", "attach", "x1", "--qmp", "/nonexistent.qmp"), "QMP socket"),
                        (("vm", "exec", "nosuch", "true"), "no VM named"),
                        (("vm", "start", "name-longer-than-15", "--no-wait"), "port name")):
        res = graph.qnet(*args, ok=False)
        assert res.returncode != 0 and words in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_attach_refuses_one_line_when_no_slot_is_free(graph):
    qmp = str(graph.bare.qmp_path)
    try:
        for name, bus in (("a1", "rp1"), ("a2", "rp2")):
            info = json.loads(graph.qnet("vm", "attach", name, "--qmp", qmp, "--json").stdout)
            assert info["bus"] == bus
        res = graph.qnet("vm", "attach", "a3", "--qmp", qmp, ok=False)
        assert res.returncode != 0 and "no free hot-plug slot" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "a3" not in graph.ports()
    finally:
        for name in ("a1", "a2"):
            graph.qnet("vm", "detach", name, ok=False)
    assert not {"a1", "a2"} & set(graph.vms())


def test_console_attaches_the_terminal_and_ctrl_bracket_leaves(graph):
    import pty
    import select as sel
    master, slave = pty.openpty()
    proc = subprocess.Popen([*QNET, "--runtime-dir", graph.run, "vm", "console", "s1"], cwd=REPO,
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"qnet-guest#" not in seen and time.monotonic() < deadline:
            if sel.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        os.write(master, b"echo con''sole-$((6*7))\r")
        while b"console-42" not in seen and time.monotonic() < deadline:
            if sel.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        assert b"console-42" in seen, seen[-500:]
        os.write(master, b"\x1d")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_down_stops_every_qemu_and_removes_host_interfaces(graph):
    graph.qnet("vm", "start", "t2", "--backend", "tap", "--no-wait")
    pids = [v["pid"] for v in graph.vms().values() if v["state"] == "running"]
    assert len(pids) >= 2
    graph.qnet("down", timeout=60)
    for pid in pids:
        wait_until(f"QEMU {pid} gone", lambda: not os.path.exists(f"/proc/{pid}"), 10)
    for ifname in tap_names("t2"):
        wait_until(f"{ifname} gone", lambda: not os.path.exists(f"/sys/class/net/{ifname}"), 6)
    assert not any(f.startswith("vm-") for f in os.listdir(graph.run))
