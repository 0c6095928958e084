"""qnet's SLAAC against radvd (issue 12): a namespace behind a TAP port of a running graph runs
radvd, the Linux router daemon, advertising a /64 with RDNSS. qnet's port is a host toward that
link: it solicits routers, forms a stable (RFC 7217) and a temporary (RFC 8981) address in the
prefix, takes radvd's link-local address as its default router, and the namespace reaches
both addresses; radvd's final advertisement (router lifetime 0) removes the default route
(RFC 4861 §6.3.4)."""
from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile

import pytest

from tests.interop.util import QnetGraph, ipv6_namespace_port, missing_prerequisite, run, wait_for

pytestmark = pytest.mark.interop


def _states6(g: QnetGraph, port: str) -> dict[str, str]:
    return {a["address"]: a["state"] for a in g.port_row(port)["addresses6"]}


def _in_prefix(states: dict[str, str], prefix: ipaddress.IPv6Network) -> dict[str, str]:
    return {a: s for a, s in states.items()
            if ipaddress.IPv6Interface(a).ip in prefix}


@pytest.fixture
def radvd_link():
    """(graph, port, namespace, prefix, radvd process) with radvd running behind p0."""
    reason = missing_prerequisite() or (None if shutil.which("radvd") else "needs radvd (scripts/setup installs it)")
    if reason is not None:
        pytest.skip(reason)
    x = random.randrange(16, 4000)
    prefix = ipaddress.IPv6Network(f"2001:db8:{x:x}::/64")
    g = QnetGraph.start()
    proc = None
    tmp = tempfile.mkdtemp(prefix="qnet-radvd-")
    try:
        base = ipv6_namespace_port(g, "p0", x, "qr", ("net.ipv6.conf.all.forwarding=1",))
        run(["ip", "-n", base.ns, "addr", "add", f"{prefix[1]}/64", "dev", base.tap, "nodad"])
        conf = os.path.join(tmp, "radvd.conf")
        with open(conf, "w") as f:
            f.write(f"""interface {base.tap} {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    AdvDefaultLifetime 600;
    prefix {prefix} {{ AdvOnLink on; AdvAutonomous on; AdvValidLifetime 3600; AdvPreferredLifetime 1800; }};
    RDNSS {prefix[0x53]} {{ }};
}};
""")
        proc = subprocess.Popen(["ip", "netns", "exec", base.ns, "radvd", "-n", "-C", conf,
                                 "-p", os.path.join(tmp, "radvd.pid"), "-m", "stderr", "-d", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        yield g, base, prefix, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        g.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(90)
def test_qnet_forms_stable_and_temporary_addresses_from_radvd_and_is_reached_by_them(radvd_link):
    g, base, prefix, proc = radvd_link
    # Two addresses in radvd's prefix, through DAD: the stable one and a temporary one.
    wait_for(lambda: len([s for s in _in_prefix(_states6(g, "p0"), prefix).values()
                          if s == "PREFERRED"]) == 2, 20.0, 0.3,
             "qnet's stable and temporary SLAAC addresses preferred")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    addrs = [ipaddress.IPv6Interface(a) for a in _in_prefix(_states6(g, "p0"), prefix)]
    assert all(a.network == prefix for a in addrs)
    # Neither carries the MAC-derived (modified EUI-64) identifier of the link-local address:
    # RFC 7217 and RFC 8981 both keep the MAC out of global addresses.
    ll_iid = next(int(ipaddress.IPv6Interface(a).ip) & (2**64 - 1)
                  for a in _states6(g, "p0") if a.startswith("fe80:"))
    assert len({int(a.ip) & (2**64 - 1) for a in addrs} | {ll_iid}) == 3
    # radvd's link-local address is qnet's default router.
    radvd_ll = base.sh(["ip", "-6", "-o", "addr", "show", "dev", base.tap, "scope", "link"]).stdout
    ll = radvd_ll.split("inet6 ")[1].split("/")[0]
    routes = g.qnet_json("route", "list", "-6")
    assert any(r["prefix"] == "::/0" and r["gateway"] == ll and r["device"] == "p0" for r in routes), routes
    for a in addrs:
        p = base.sh(["ping", "-6", "-n", "-c", "2", "-i", "0.3", "-W", "2", str(a.ip)],
                    timeout=20, check=False)
        assert " 0% packet loss" in p.stdout, p.stdout + p.stderr


@pytest.mark.timeout(90)
def test_radvd_stopping_withdraws_the_default_route(radvd_link):
    g, base, prefix, proc = radvd_link
    wait_for(lambda: any(r["prefix"] == "::/0" for r in g.qnet_json("route", "list", "-6")),
             20.0, 0.3, "a default route from radvd")
    # radvd's last advertisement on SIGTERM has router lifetime 0 (RFC 4861 §6.2.5).
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    wait_for(lambda: not any(r["prefix"] == "::/0" for r in g.qnet_json("route", "list", "-6")),
             10.0, 0.3, "the default route withdrawn")
    # The addresses stay: their lifetimes were not touched.
    assert len(_in_prefix(_states6(g, "p0"), prefix)) == 2
