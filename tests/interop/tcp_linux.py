"""A Linux peer in a namespace for TCP tests with a qnet client: a sink, a source and an echo
server (`PEER`, run with the namespace's /usr/bin/python3), and whole transfers both ways."""
from __future__ import annotations

import hashlib
import random
import socket
import subprocess

from tests.interop.util import NS_PYTHON, stop_process

# A Linux-side peer: "sink PORT" counts and hashes what arrives, then prints "len sha256";
# "source PORT N SEED" sends N pseudo-random bytes to the first connection and closes;
# "echo PORT" echoes one connection. Each prints "ready" once listening.
PEER = r"""
import hashlib, random, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(16); print("ready", flush=True)
c, _ = ls.accept()
if mode == "sink":
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
elif mode == "source":
    n, seed = int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(seed).randbytes(n)
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    while c.recv(65536): pass
    print("sent", flush=True)
elif mode == "echo":
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    print("done", flush=True)
c.close()
"""


def random_bytes(n: int, seed: int) -> bytes:
    """What PEER's source sends for (n, seed)."""
    return random.Random(seed).randbytes(n)


def start_peer(ns, *args) -> subprocess.Popen:
    """PEER in the namespace, once it listens."""
    p = ns.popen([NS_PYTHON, "-c", PEER, *map(str, args)])
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def finish(p, timeout: float) -> str:
    """PEER's output once it exits (it must exit 0)."""
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop_process(p)
    assert p.returncode == 0, err
    return out.strip()


def send_to_linux(client, ns, port: int, data: bytes, timeout: float) -> str:
    """data from a qnet client to a sink; the sink's "length sha256" line."""
    p = start_peer(ns, "sink", port)
    try:
        s = client.connect(ns.linux_ip, port, timeout=20)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(timeout)
        assert s.recv(1) == b""
        s.close()
    finally:
        out = finish(p, timeout)
    return out


def receive_from_linux(client, ns, port: int, n: int, seed: int, timeout: float,
                       on_chunk=None) -> tuple[int, str]:
    """n bytes from a source to a qnet client: (bytes received, their sha256).
    `on_chunk(stream)` after every read."""
    p = start_peer(ns, "source", port, n, seed)
    try:
        s = client.connect(ns.linux_ip, port, timeout=20)
        s.settimeout(timeout)
        h = hashlib.sha256()
        got = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
            if on_chunk:
                on_chunk(s)
        s.close()
    finally:
        finish(p, timeout)
    return got, h.hexdigest()
