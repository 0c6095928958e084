"""The firewall against Linux peers in namespaces (issue 11): nmap sees exactly the allowed
ports open and the others filtered (drop) or closed (reject); an established connection
carries on across a rule-set reload, `qnet restart firewall`, a SIGKILL of the firewall and
`qnet restart netstack`; a malformed rule file is refused with file, line and field, the old
rules staying in force; masquerade for a LAN namespace toward an uplink namespace, which
cannot reach the LAN until a port forward lets it, and then reaches it with its own address.

One graph per module (the embedded default graph: the firewall is in it), two TAP ports:
`lan` and `up`. Tests run in file order. Every wait is bounded.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess

import pytest

from tests.interop.util import (NS_PYTHON, QNET, QnetGraph, missing_prerequisite,
                                stop_process, wait_for, wait_line)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def fw():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    x = random.randrange(1, 120)
    g = QnetGraph.start()
    procs: list[subprocess.Popen] = []
    try:
        lan = g.add_ns_port("lan", x)
        up = g.add_ns_port("up", x + 120)
        yield g, lan, up, procs
    finally:
        for p in procs:
            stop_process(p)
        g.stop()


def qnet_run(g: QnetGraph, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([QNET, "run", "--", *argv], env=g.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def fw_load(g: QnetGraph, text: str, check: bool = True) -> subprocess.CompletedProcess:
    path = os.path.join(g.run_dir, f"rules-{random.randrange(1 << 30)}.conf")
    with open(path, "w") as f:
        f.write(text)
    return g.qnet("fw", "load", path, check=check, timeout=30)


LISTEN = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

ECHO = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4)
print("ready", flush=True)
def serve(c):
    while (d := c.recv(65536)):
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# A client that sends a line every 50 ms and reads its echo, for `seconds`; any error, a
# timeout or a wrong echo ends it with a message and exit 1.
PINGER = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((host, port), timeout=10)
c.settimeout(8)
print("connected", flush=True)
n = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    msg = f"line {n}\n".encode()
    c.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = c.recv(len(msg) - len(got))
        if not d:
            sys.exit(f"closed after {n} echoes")
        got += d
    if got != msg:
        sys.exit(f"wrong echo {got!r}")
    n += 1
    if n % 20 == 0:
        print("echoes", n, flush=True)
    time.sleep(0.05)
print("done", n, flush=True)
"""


def nmap(port_ns, target: str, ports: str) -> dict[int, str]:
    res = port_ns.sh(["nmap", "-Pn", "-sS", "-n", "--max-retries", "1", "--host-timeout", "60s",
                      "-T4", "-p", ports, "-oG", "-", target], timeout=90)
    states = {}
    for line in res.stdout.splitlines():
        if "Ports:" in line:
            for item in line.split("Ports:")[1].split(","):
                fields = item.strip().split("/")
                states[int(fields[0])] = fields[1]
    return states


@pytest.mark.timeout(150)
def test_nmap_sees_allowed_ports_open_and_the_rest_filtered_or_closed(fw):
    g, lan, up, procs = fw
    for port in ("2222", "8081"):
        p = qnet_run(g, "python", "-c", LISTEN, port)
        procs.append(p)
        wait_line(p, "ready", 30)
    before = nmap(lan, lan.qnet_ip, "2222,8081,8082")
    assert before == {2222: "open", 8081: "open", 8082: "closed"}, before
    fw_load(g, f"""# the test's rules
policy input drop
input ct state established,related accept
input iif lan proto tcp dport 2222 accept
input iif lan proto tcp dport 8082 reject
input proto icmp accept
""")
    after = nmap(lan, lan.qnet_ip, "2222,8081,8082")
    assert after == {2222: "open", 8081: "filtered", 8082: "closed"}, after
    listing = g.qnet("fw", "list").stdout
    assert "policy drop" in listing and "dport 2222" in listing
    assert lan.ping(lan.qnet_ip, "-c", "2", "-i", "0.2").lost == 0


@pytest.mark.timeout(120)
def test_a_malformed_rule_file_is_refused_and_the_old_rules_stay(fw):
    g, lan, up, procs = fw
    before = g.qnet("fw", "save", "-").stdout
    res = fw_load(g, "policy input drop\ninput proto tcp dport 70000 accept\n", check=False)
    assert res.returncode != 0
    assert ":2:" in res.stderr and "dport" in res.stderr and "Traceback" not in res.stderr
    assert g.qnet("fw", "save", "-").stdout == before
    res = g.qnet("fw", "add", "input", "proto", "tcp", "dport", "80", "frobnicate", check=False)
    assert res.returncode != 0 and "frobnicate" in res.stderr
    assert g.qnet("fw", "save", "-").stdout == before
    # Still enforced: 8081 filtered, 2222 open.
    assert nmap(lan, lan.qnet_ip, "2222,8081") == {2222: "open", 8081: "filtered"}


@pytest.mark.timeout(200)
def test_an_established_connection_survives_reloads_and_restarts(fw):
    g, lan, up, procs = fw
    echo = qnet_run(g, "python", "-c", ECHO, "2223")
    procs.append(echo)
    wait_line(echo, "ready", 30)
    g.qnet("fw", "add", "--before", "2", "input", "iif", "lan", "proto", "tcp", "dport", "2223",
           "ct", "state", "new", "accept")
    client = lan.popen([NS_PYTHON, "-c", PINGER, lan.qnet_ip, "2223", "40"])
    procs.append(client)
    wait_line(client, "connected", 20)
    wait_line(client, "echoes", 20)
    # Only an established connection gets through from here on: new ones are refused.
    g.qnet("fw", "del", "2")
    wait_line(client, "echoes", 20)
    fw_load(g, g.qnet("fw", "save", "-").stdout + "input proto udp dport 9 drop\n")
    wait_line(client, "echoes", 20)
    g.qnet("restart", "firewall", timeout=60)
    wait_line(client, "echoes", 20)
    pid = g.components()["firewall"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (r := g.components()["firewall"])["pid"] not in (pid, None)
             and r["state"] == "running", 30, 0.2, "the firewall respawned")
    wait_line(client, "echoes", 20)
    g.qnet("restart", "netstack", timeout=60)
    wait_line(client, "echoes", 20)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "done" in out
    # A new connection to it is dropped (no new rule for 2223 any more): nmap says filtered.
    assert nmap(lan, lan.qnet_ip, "2223") == {2223: "filtered"}
    ct = g.qnet_json("fw", "conntrack")
    assert ct["entries"] >= 1


HTTP_WHO = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


def curl(ns_port, url: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    return ns_port.sh(["curl", "-s", "--noproxy", "*", "-m", str(timeout), url],
                      timeout=timeout + 10, check=False)


@pytest.mark.timeout(150)
def test_masquerade_and_a_port_forward_between_lan_and_uplink(fw):
    g, lan, up, procs = fw
    for ns in (lan, up):
        p = ns.popen([NS_PYTHON, "-c", HTTP_WHO, "8000"])
        procs.append(p)
    fw_load(g, f"""policy forward drop
forward ct state established,related accept
forward iif lan oif up accept
egress oif up masquerade
""")
    who = wait_for(lambda: (r := curl(lan, f"http://{up.linux_ip}:8000/")).returncode == 0
                   and r.stdout, 20, 0.3, "the LAN reaching the uplink's server")
    assert who == up.qnet_ip        # masqueraded: the uplink sees qnet's uplink address
    res = curl(up, f"http://{lan.linux_ip}:8000/", timeout=3)
    assert res.returncode != 0      # the uplink cannot reach into the LAN
    g.qnet("fw", "add", "--before", "3", "forward", "iif", "up", "proto", "tcp", "dport", "8000",
           "daddr", lan.linux_ip, "accept")
    g.qnet("fw", "add", "--before", "1", "ingress", "iif", "up", "proto", "tcp", "dport", "8080",
           "dnat", f"{lan.linux_ip}:8000")
    who = wait_for(lambda: (r := curl(up, f"http://{up.qnet_ip}:8080/")).returncode == 0
                   and r.stdout, 20, 0.3, "the uplink reaching the LAN through the port forward")
    assert who == up.linux_ip       # the LAN's server sees the client's real address
    assert curl(lan, f"http://{up.linux_ip}:8000/").stdout == up.qnet_ip
    rows = g.qnet_json("fw", "conntrack")["connections"]
    assert any(r["dport"] == 8080 and r["reply_sport"] == 8000 for r in rows), rows


MARKED_CLIENT = r"""
import sys
from qnet import socket
dst = sys.argv[1]
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.set_mark(2, 9)
a.sendto(b"marked", (dst, 9999))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.sendto(b"plain", (dst, 9999))
t = socket.socket()
t.set_mark(2, 9)
t.settimeout(2)
try:
    t.connect((dst, 8001))
    print("marked tcp connected")
except (socket.timeout, TimeoutError):
    print("marked tcp timed out")
u = socket.create_connection((dst, 8001), timeout=10)
print("plain tcp connected", flush=True)
"""

UDP_SINK = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    print(s.recv(100).decode(), flush=True)
"""


@pytest.mark.timeout(90)
def test_socket_marks_set_with_qnet_socket_are_matched_by_rules(fw):
    import sys
    g, lan, up, procs = fw
    sink = up.popen([NS_PYTHON, "-c", UDP_SINK])
    procs.append(sink)
    wait_line(sink, "ready", 20)
    server = up.popen([NS_PYTHON, "-c", HTTP_WHO, "8001"])
    procs.append(server)
    fw_load(g, "output mark 2:9 drop\n")
    wait_for(lambda: up.sh(["ss", "-ltn", "sport = :8001"]).stdout.count("LISTEN") == 1, 10, 0.1,
             "the namespace's server listening")
    res = subprocess.run([sys.executable, "-c", MARKED_CLIENT, up.linux_ip], env=g.env,
                         capture_output=True, text=True, timeout=40)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["marked tcp timed out", "plain tcp connected"], res.stdout
    # The marked datagram went first: had it left, it would be the first line.
    assert wait_line(sink, "", 10).strip() == "plain"
    assert g.qnet_json("fw", "list")["rules"][0]["packets"] >= 2     # a datagram and SYNs
