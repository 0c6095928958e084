"""A launcher killed with SIGKILL leaves its TAP VMs' bridge and TAP behind; the next `qnet up` removes them."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from launcher.vm import tap_names

from .guest import REPO, guest_image

pytestmark = pytest.mark.qemu
QNET = [sys.executable, "-c", "import sys; from launcher.cli import main; sys.exit(main())"]


def _qnet(run, *args, timeout=90.0):
    return subprocess.run([*QNET, "--runtime-dir", run, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def test_next_up_removes_interfaces_a_killed_launcher_left(tmp_path):
    guest_image()
    run = tempfile.mkdtemp(prefix="qst-", dir="/tmp")
    name = f"k{os.getpid() % 1000}"
    qv, _qp, qb = tap_names(name)
    try:
        assert _qnet(run, "up", "--detach").returncode == 0
        res = _qnet(run, "vm", "start", name, "--backend", "tap", "--no-wait")
        assert res.returncode == 0, res.stderr
        assert _exists(qv) and _exists(qb)
        with open(os.path.join(run, "launcher.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while os.path.exists(os.path.join(run, "launcher.ctl")) and time.monotonic() < deadline:
            # the socket file stays; wait until nothing answers on it
            if _qnet(run, "status", timeout=10).returncode != 0:
                break
            time.sleep(0.2)
        assert _exists(qv) and _exists(qb), "the killed launcher could not clean up (the case under test)"
        res = _qnet(run, "up", "--detach")
        assert res.returncode == 0, res.stderr
        assert not _exists(qv) and not _exists(qb)
        res = _qnet(run, "vm", "start", name, "--backend", "tap", "--no-wait")
        assert res.returncode == 0, res.stderr
    finally:
        _qnet(run, "down", timeout=30)
        for ifname in tap_names(name):
            if _exists(ifname):
                subprocess.run(["ip", "link", "del", ifname], capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
