"""qnet.socket's names come through qnet: an uplink's DHCP lease (dnsmasq in a namespace) names
the DNS server and domain, and getaddrinfo/gethostbyname/create_connection send their queries
over qnet's own UDP to it."""
from __future__ import annotations

import os
import random
import socket as std
import subprocess

import pytest

from tests.interop.dhcp_util import DNSMASQ, DhcpLab, lease_rows, missing_peer
from tests.interop.util import NS_PYTHON, QnetGraph, missing_prerequisite, wait_for


@pytest.fixture
def lab(tmp_path):
    reason = missing_prerequisite() or missing_peer(DNSMASQ)
    if reason:
        pytest.skip(reason)
    g = QnetGraph.start()
    lab = DhcpLab(g, str(tmp_path))
    old = os.environ.get("QNET_RUNTIME_DIR")
    os.environ["QNET_RUNTIME_DIR"] = g.run_dir
    try:
        yield lab
    finally:
        if old is None:
            os.environ.pop("QNET_RUNTIME_DIR", None)
        else:
            os.environ["QNET_RUNTIME_DIR"] = old
        lab.cleanup()
        g.stop()


def test_names_resolve_through_the_dns_server_of_the_uplinks_lease(lab):
    from qnet import socket as qs
    x = random.randrange(1, 255)
    peer = f"10.99.{x}.1"
    up = lab.uplink_port("u1", x)
    log = lab.dnsmasq(up, f"10.99.{x}.50", f"10.99.{x}.60", "--log-queries",
                      f"--address=/web.qnet.test/{peer}", f"--dhcp-option=option:dns-server,{peer}",
                      "--dhcp-option=option:domain-name,qnet.test", "--no-resolv", "--no-hosts",
                      tag="dns", dns=True)
    lab.link_up(up, "u1")
    wait_for(lambda: any(r["state"] == "BOUND" for r in lease_rows(lab.leases(), "u1", role="client")),
             15.0, 0.2, "our client to bind a lease from dnsmasq")
    srv = up.popen([NS_PYTHON, "-c",
                    "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                    f"s.bind(('{peer}',8053));s.listen()\nc,_=s.accept();c.sendall(b'hello by name');c.close()"])
    try:
        assert qs.gethostbyname("web.qnet.test") == peer
        # A short name takes the lease's domain.
        infos = qs.getaddrinfo("web", 80, type=qs.SOCK_STREAM)
        assert [i[4] for i in infos] == [(peer, 80)]
        with open(log) as f:
            seen = f.read()
        assert "query[A] web.qnet.test" in seen
        with pytest.raises(std.gaierror):
            qs.gethostbyname("nothing.qnet.test")
        wait_for(lambda: f"{peer}:8053" in up.sh(["ss", "-ltn"]).stdout, 5.0, 0.05, "the peer's listener")
        with qs.create_connection(("web.qnet.test", 8053), timeout=5) as s:
            got = b""
            while len(got) < 13:
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
        assert got == b"hello by name"
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(5)
