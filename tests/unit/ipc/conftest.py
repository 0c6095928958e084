"""Fixtures of the IPC unit tests: a test.counter server in a child process, raw ZeroMQ peers."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import zmq

from ipc.rpc import context

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class ServerProcess:
    """One `python -m tests.unit.ipc._serve` child bound at ``endpoint``."""

    def __init__(self, endpoint: str, safe: bool = False):
        self.endpoint = endpoint
        self.safe = safe
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        cmd = [sys.executable, "-m", "tests.unit.ipc._serve", self.endpoint] + (["--safe"] if self.safe else [])
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the test server did not start within {timeout} s"
        assert self.proc.stdout.readline().strip() == "ready"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def tmp_run():
    """A short runtime directory: unix socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="qn", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _server_fixture(tmp_run, safe):
    srv = ServerProcess(f"ipc://{tmp_run}/c.rpc", safe=safe)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(tmp_run):
    """A fresh test.counter server for one test (crash and hang are live)."""
    yield from _server_fixture(tmp_run, safe=False)


@pytest.fixture(scope="module")
def safe_server():
    """One test.counter server shared by a module; crash and hang do nothing."""
    d = tempfile.mkdtemp(prefix="qn", dir="/tmp")
    try:
        yield from _server_fixture(d, safe=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dealer_factory():
    """Raw DEALER sockets connected to an endpoint, closed after the test."""
    socks = []

    def make(endpoint: str) -> zmq.Socket:
        s = context().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
        return s

    try:
        yield make
    finally:
        for s in socks:
            s.close(linger=0)
