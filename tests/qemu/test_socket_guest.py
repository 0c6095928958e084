"""A QEMU guest fetches a file from an unmodified Python program on qnet (issue 10): `qnet run --
python -m http.server` serves, the guest (`qnet vm start`, a DHCP lease from qnet's dhcpd) runs
busybox wget against the port's address, and the file arrives sha256-exact.

Every wait is bounded; the server, `qnet down` (which stops the guest) and leftovers in finally.
"""
from __future__ import annotations

import hashlib
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

from tests.interop.util import QNET, QnetGraph, stop_process

from .guest import guest_image

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 120
SIZE = 4_000_000            # the guest keeps it in its RAM (256 MB): a few MB are plenty
PORT = 8000


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


@pytest.mark.timeout(300)
def test_guest_wget_fetches_a_file_from_http_server_under_qnet_run_sha256_exact():
    guest_image()                       # built or up to date; skips when QEMU is missing
    g = QnetGraph()
    files = tempfile.mkdtemp(prefix="qnguest")
    srv = None
    try:
        g.qnet("up", "--detach", timeout=60)
        g.remember_pids()
        res = g.qnet("vm", "start", "w1", "--backend", "stream", "--timeout", str(BOOT_TIMEOUT),
                     timeout=BOOT_TIMEOUT + 30)
        assert re.search(r"lease eth0 10\.77\.\d+\.\d+/24", res.stdout), res.stdout
        g.remember_pids()
        vm = {v["name"]: v for v in json.loads(g.qnet("vm", "list", "--json").stdout)}["w1"]
        router, lease = vm["address"].split("/")[0], vm["lease"].split("/")[0]
        data = random.Random(42).randbytes(SIZE)
        with open(os.path.join(files, "blob.bin"), "wb") as f:
            f.write(data)
        srv = subprocess.Popen([QNET, "run", "--", "python", "-u", "-m", "http.server", str(PORT), "-d", files],
                               env=g.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        _wait_line(srv, "Serving HTTP", 30)
        t0 = time.monotonic()
        res = g.qnet("vm", "exec", "--timeout", "90", "w1",
                     f"wget -q -O /tmp/blob http://{router}:{PORT}/blob.bin && wc -c < /tmp/blob "
                     f"&& sha256sum /tmp/blob", timeout=120, check=False)
        took = time.monotonic() - t0
        assert res.returncode == 0, f"rc {res.returncode}: {res.stdout}{res.stderr}\nserver: " \
                                    f"{srv.stderr.read() if srv.poll() is not None else '(running)'}"
        lines = res.stdout.split()
        assert lines[0] == str(SIZE) and lines[1] == hashlib.sha256(data).hexdigest(), res.stdout
        print(f"\nguest {lease} fetched {SIZE} bytes from {router}:{PORT} in {took:.2f} s")
        assert srv.poll() is None, srv.stderr.read()
    finally:
        if srv is not None:
            stop_process(srv)
        g.stop()
        shutil.rmtree(files, ignore_errors=True)
