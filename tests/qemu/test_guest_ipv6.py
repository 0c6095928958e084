"""A QEMU guest on a guest port forms a global address from qnet's Router Advertisements and
reaches a qnet.socket server over IPv6 (issue 12).

`qnet vm start` attaches the guest (Debian's kernel, busybox) on port w1; the port gets
fd00:NN::1/64 (`qnet addr add`) and is made the link's router (`qnet ra set w1`, advertising
that /64). The guest's kernel, a host (accept_ra=1, forwarding=0), does SLAAC by itself: it
must show a global address in the prefix and a default route via qnet's link-local address
(read from /proc/net/if_inet6 and /proc/net/ipv6_route, which need nothing of busybox). Then
`qnet run -- python -m http.server --bind ::` serves on an AF_INET6 (dual-stack) socket, the
guest's busybox wget fetches a file from http://[fd00:NN::1]:PORT/ and the server's log names
the guest's SLAAC address as the client; and the guest pings qnet's global address over IPv6.

Every wait is bounded; the server, `qnet down` (which stops the guest) and leftovers in finally.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.interop.util import QNET, QnetGraph, stop_process, wait_for

from .guest import guest_image

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 120
PORT = 8006
_PING = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def _wait_line(p: subprocess.Popen, word: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 0.2)[0]:
            line = p.stdout.readline()
            if word in line:
                return line
            if line == "":
                break
        elif p.poll() is not None:
            break
    stop_process(p)
    raise AssertionError(f"no {word!r} from {p.args} within {timeout:g} s; rc {p.returncode}, "
                         f"stderr: {p.stderr.read()[-2000:]}")


def _read_available(stream, timeout: float, until: str) -> str:
    """What ``stream`` gives within ``timeout`` s, stopping early once ``until`` is in it."""
    text = ""
    deadline = time.monotonic() + timeout
    while until not in text and time.monotonic() < deadline:
        if not select.select([stream], [], [], 0.2)[0]:
            continue
        line = stream.readline()
        if line == "":
            break
        text += line
    return text


def _hex6(h: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(bytes.fromhex(h))


def _guest_exec(g: QnetGraph, cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return g.qnet("vm", "exec", "--timeout", str(int(timeout)), "w1", cmd, timeout=timeout + 20, check=False)


def _guest_addresses(g: QnetGraph) -> list[tuple[ipaddress.IPv6Address, int, int, int]]:
    """eth0's (address, prefix length, scope, flags) from the guest's /proc/net/if_inet6."""
    res = _guest_exec(g, "cat /proc/net/if_inet6")
    assert res.returncode == 0, f"rc {res.returncode}: {res.stdout}{res.stderr}"
    rows = []
    for line in res.stdout.splitlines():
        f = line.split()
        if len(f) == 6 and f[5] == "eth0" and re.fullmatch(r"[0-9a-f]{32}", f[0]):
            rows.append((_hex6(f[0]), int(f[2], 16), int(f[3], 16), int(f[4], 16)))
    return rows


def _guest_slaac(g: QnetGraph, prefix: ipaddress.IPv6Network) -> list[str]:
    """eth0's global addresses in ``prefix`` that passed DAD (not IFA_F_TENTATIVE 0x40)."""
    return [str(a) for a, plen, scope, flags in _guest_addresses(g)
            if scope == 0 and a in prefix and plen == 64 and not flags & 0x40]


def _guest_default_routes(g: QnetGraph) -> list[tuple[str, str]]:
    """(next hop, device) of every ::/0 route in the guest's /proc/net/ipv6_route."""
    res = _guest_exec(g, "cat /proc/net/ipv6_route")
    assert res.returncode == 0, f"rc {res.returncode}: {res.stdout}{res.stderr}"
    routes = []
    for line in res.stdout.splitlines():
        f = line.split()
        if len(f) == 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] == "eth0":
            routes.append((str(_hex6(f[4])), f[9]))
    return routes


@pytest.mark.timeout(300)
def test_guest_forms_a_slaac_address_from_qnet_ra_and_reaches_a_qnet_socket_server_over_ipv6():
    guest_image()                       # built or up to date; skips when QEMU is missing
    nn = random.randrange(0x10, 0xfff)
    prefix = ipaddress.IPv6Network(f"fd00:{nn:x}::/64")
    qnet6 = str(prefix[1])
    g = QnetGraph()
    files = tempfile.mkdtemp(prefix="qnguest6")
    srv = None
    t_start = time.monotonic()
    try:
        g.qnet("up", "--detach", timeout=60)
        g.remember_pids()
        res = g.qnet("vm", "start", "w1", "--backend", "stream", "--timeout", str(BOOT_TIMEOUT),
                     timeout=BOOT_TIMEOUT + 30)
        assert re.search(r"lease eth0 10\.77\.\d+\.\d+/24", res.stdout), res.stdout
        g.remember_pids()
        vm = {v["name"]: v for v in json.loads(g.qnet("vm", "list", "--json").stdout)}["w1"]
        port = vm["port"]

        # qnet's global address on the guest port, then router mode advertising its /64
        g.qnet("addr", "add", port, f"{qnet6}/64")
        wait_for(lambda: any(a["address"] == f"{qnet6}/64" and a["state"] == "PREFERRED"
                             for a in g.port_row(port)["addresses6"]),
                 10.0, 0.2, f"qnet's {qnet6} on {port} preferred")
        ll = next(a["address"].split("/")[0] for a in g.port_row(port)["addresses6"]
                  if a["address"].startswith("fe80:"))
        out = g.qnet("ra", "set", port).stdout
        assert f"{port}: advertising" in out and str(prefix) in out, out
        rows = {r["port"]: r for r in g.qnet_json("ra", "list")}
        assert rows[port]["prefixes"] == [str(prefix)] and rows[port]["advertising"], rows

        # the guest's kernel: a SLAAC address in the prefix (DAD passed), default route via qnet
        t0 = time.monotonic()
        slaac = wait_for(lambda: _guest_slaac(g, prefix), 30.0, 0.5,
                         f"a SLAAC address in {prefix} on the guest's eth0")
        took_slaac = time.monotonic() - t0
        routes = wait_for(lambda: _guest_default_routes(g), 15.0, 0.5, "a default IPv6 route in the guest")
        assert (ll, "eth0") in routes, f"default routes {routes}, qnet's link-local {ll}"

        # a qnet.socket server on :: (AF_INET6, dual stack), reached by the guest over IPv6
        body = f"qnet ipv6 hello {nn:x}\n"
        with open(os.path.join(files, "hello.txt"), "w") as f:
            f.write(body)
        srv = subprocess.Popen([QNET, "run", "--", "python", "-u", "-m", "http.server", str(PORT),
                                "--bind", "::", "-d", files],
                               env=g.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        line = _wait_line(srv, "Serving HTTP", 30)
        assert "on :: port" in line, line
        res = _guest_exec(g, f"wget -q -O - 'http://[{qnet6}]:{PORT}/hello.txt'", timeout=60)
        assert res.returncode == 0, f"rc {res.returncode}: {res.stdout}{res.stderr}\nserver: " \
                                    f"{srv.stderr.read() if srv.poll() is not None else '(running)'}"
        assert body in res.stdout, res.stdout
        log = _read_available(srv.stderr, 10.0, "GET /hello.txt")
        m = re.search(r"^(\S+) - - \[[^\]]*\] \"GET /hello\.txt HTTP/1\.[01]\" 200", log, re.M)
        assert m is not None, f"no request line in the server's log:\n{log}"
        client = m.group(1)
        guest_globals = _guest_slaac(g, prefix)
        assert client in guest_globals, f"server saw {client}, the guest has {guest_globals}"

        # the guest pings qnet's global address over IPv6
        res = _guest_exec(g, f"ping -6 -c 3 -i 0.2 -W 5 {qnet6}", timeout=30)
        text = res.stdout + res.stderr
        m = _PING.search(text)
        assert res.returncode == 0 and m is not None and m.group(1) == m.group(2) == "3", text
        assert f"bytes from {qnet6}" in text, text
        assert srv.poll() is None, srv.stderr.read()
        print(f"\nguest took {slaac} in {took_slaac:.1f} s, default via {ll}; "
              f"fetched from [{qnet6}]:{PORT} as {client}; whole test {time.monotonic() - t_start:.1f} s")
    finally:
        if srv is not None:
            stop_process(srv)
        g.stop()
        shutil.rmtree(files, ignore_errors=True)
