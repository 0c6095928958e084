"""A QEMU guest behind qnet's NAT (issue 11): `qnet vm start NAME --nat up` gives the guest's
port masquerade toward the uplink port `up` (a Linux namespace). The guest reaches an HTTP
server there, which sees qnet's uplink address; the uplink cannot open a connection to the
guest until a port forward allows it, and through the port forward the guest sees the
client's real address. `qnet vm stop` removes the rules `--nat` added.

Every wait is bounded; `qnet down` (which stops the guest), the namespace and the server in
finally.
"""
from __future__ import annotations

import json
import random
import re

import pytest

from tests.interop.test_firewall import HTTP_WHO
from tests.interop.util import NS_PYTHON, QnetGraph, stop_process, wait_for

from .guest import guest_image

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 120

CONNECT = r"""
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except socket.timeout:
    print("timeout")
    sys.exit(0)
except OSError as e:
    print("error", e.errno)
    sys.exit(0)
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("connected")
print(data.decode(errors="replace"))
"""


@pytest.mark.timeout(360)
def test_guest_behind_nat_reaches_the_uplink_and_is_reached_only_through_a_port_forward():
    guest_image()                       # built or up to date; skips when QEMU is missing
    g = QnetGraph.start()
    server = None
    try:
        up = g.add_ns_port("up", random.randrange(1, 250))
        server = up.popen([NS_PYTHON, "-c", HTTP_WHO, "8000"])
        # An uplink that is not a port: said at once, no guest started.
        res = g.qnet("vm", "start", "n0", "--nat", "nope", check=False)
        assert res.returncode == 2 and "no port 'nope'" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and json.loads(g.qnet("vm", "list", "--json").stdout) == []
        res = g.qnet("vm", "start", "n1", "--nat", "up", "--timeout", str(BOOT_TIMEOUT),
                     timeout=BOOT_TIMEOUT + 30)
        assert re.search(r"lease eth0 10\.77\.\d+\.\d+/24", res.stdout), res.stdout
        assert "masquerade" in res.stdout, res.stdout
        g.remember_pids()
        vm = {v["name"]: v for v in json.loads(g.qnet("vm", "list", "--json").stdout)}["n1"]
        port, lease = vm["port"], vm["lease"].split("/")[0]

        # Out through masquerade: the uplink's server sees qnet's uplink address.
        res = g.qnet("vm", "exec", "--timeout", "60", "n1",
                     f"wget -q -O - http://{up.linux_ip}:8000/who", timeout=90, check=False)
        assert res.returncode == 0 and up.qnet_ip in res.stdout, f"{res.stdout}{res.stderr}"
        assert up.linux_ip not in res.stdout.replace(up.qnet_ip, "")

        # A listener in the guest that tells its client what the guest sees of it.
        res = g.qnet("vm", "exec", "--timeout", "30", "n1",
                     "printf '#!/bin/sh\\nnetstat -tn\\n' > /tmp/peer && chmod +x /tmp/peer && "
                     "(nc -l -p 8080 -e /tmp/peer >/dev/null 2>&1 &) && echo listening",
                     timeout=60, check=False)
        assert "listening" in res.stdout, f"{res.stdout}{res.stderr}"

        # The uplink (its default route goes through qnet) cannot open a connection to it.
        got = up.sh([NS_PYTHON, "-c", CONNECT, lease, "8080", "3"], timeout=20).stdout
        assert got.split()[0] == "timeout", got

        # A port forward lets it, and the guest sees the client's own address. That the
        # listener is still there to answer shows that the first attempt never reached it.
        g.qnet("fw", "add", "--before", "1", "forward", "iif", "up", "oif", port, "proto", "tcp",
               "dport", "8080", "accept")
        g.qnet("fw", "add", "--before", "1", "ingress", "iif", "up", "proto", "tcp", "dport",
               "8080", "dnat", f"{lease}:8080")
        got = up.sh([NS_PYTHON, "-c", CONNECT, up.qnet_ip, "8080", "10"], timeout=30).stdout
        assert got.startswith("connected"), got
        # (busybox nc listens on IPv6 and shows IPv4 peers as ::ffff:a.b.c.d)
        assert re.search(rf"(::ffff:)?{re.escape(lease)}:8080\s+(::ffff:)?{re.escape(up.linux_ip)}"
                         rf":\d+\s+ESTABLISHED", got), got

        # Stopping the guest removes the two rules --nat added; the port forward stays.
        res = g.qnet("vm", "stop", "n1", timeout=60)
        assert res.stdout.count("removed") == 2, res.stdout
        rules = g.qnet_json("fw", "list")["rules"]
        assert [r for r in rules if "masquerade" in r["text"]] == [], rules
        assert any("dnat" in r["text"] for r in rules), rules
    finally:
        if server is not None:
            stop_process(server)
        g.stop()
