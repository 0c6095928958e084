"""Fixtures of the integration tests: a real launcher and real component processes, driven by `qnet`.

Each graph lives in its own short temp directory (unix socket paths are
limited to 107 bytes): ``WORK/graph.toml`` (a copy of tests/components/graph.toml
with absolute paths), ``WORK/state`` (the counter's launcher-held handle) and
``WORK/r`` (the runtime dir). Teardown runs `qnet down`, then kills every
process of the graph that is still alive, checked by its environment so that a
recycled pid is never touched.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from ipc.decl import Protocol, to_plain
from ipc.rpc import RpcClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO, "tests", "components", "graph.toml")
CLI_TIMEOUT = 60.0


def run_qnet(run_dir: str, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """`qnet --runtime-dir RUN ARGS...` as a real subprocess."""
    env = dict(os.environ)
    env.pop("QNET_RUNTIME_DIR", None)
    return subprocess.run([sys.executable, "-m", "launcher.cli", "--runtime-dir", run_dir, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def qnet_ok(run_dir: str, *args: str) -> str:
    """A command that must succeed, cleanly: its stdout."""
    res = run_qnet(run_dir, *args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    return res.stdout


def qnet_json(run_dir: str, *args: str):
    """A command's --json answer, which must succeed."""
    res = run_qnet(run_dir, *args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def graph_text(work: str, *, max_restarts: int = 3, counter_args: dict | None = None, extra: str = "") -> str:
    """tests/components/graph.toml with absolute paths and a few knobs turned."""
    with open(TEMPLATE, encoding="utf-8") as f:
        text = f.read()
    subs = [('pythonpath = ["../.."]', f'pythonpath = ["{REPO}"]'),
            ('path = "/tmp/qnet-test-handle"', f'path = "{os.path.join(work, "state")}"'),
            ("max_restarts = 3", f"max_restarts = {max_restarts}")]
    for old, new in subs:
        assert old in text, f"{TEMPLATE} changed: {old!r} not found"
        text = text.replace(old, new)
    if counter_args:
        body = "\n".join(f"{k} = {_toml(v)}" for k, v in counter_args.items())
        text += f"\n[components.counter.args]\n{body}\n"
    return text + extra


@contextmanager
def default_graph_up(prefix: str) -> Iterator[str]:
    """The embedded default graph, up in a runtime dir of its own; yields the dir, always downs it."""
    work = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    run = os.path.join(work, "r")
    try:
        res = run_qnet(run, "up", "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        yield run
    finally:
        run_qnet(run, "down", timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _belongs(pid: int, marker: str) -> bool:
    """Whether pid is alive and one of ours (its environment or command line names our directory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except (OSError, IndexError):
        return False
    return marker.encode() in env or marker.encode() in cmd


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class QnetGraph:
    """One graph under test: its directories, its CLI, its processes."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="qn", dir="/tmp")
        self.run = os.path.join(self.work, "r")
        self.manifest = os.path.join(self.work, "graph.toml")
        self.state_path = os.path.join(self.work, "state")
        self.pids: set[int] = set()
        self.launcher_pids: set[int] = set()

    def write(self, text: str | None = None, **knobs) -> str:
        with open(self.manifest, "w", encoding="utf-8") as f:
            f.write(text if text is not None else graph_text(self.work, **knobs))
        return self.manifest

    def qnet(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        return run_qnet(self.run, *args, timeout=timeout)

    def up(self, **knobs) -> subprocess.CompletedProcess:
        if not os.path.exists(self.manifest) or knobs:
            self.write(**knobs)
        res = self.qnet("up", "-f", self.manifest, "--detach", "--timeout", "30")
        pid = self.launcher_pid()
        if pid:
            self.launcher_pids.add(pid)
        return res

    def launcher_pid(self) -> int:
        try:
            with open(os.path.join(self.run, "launcher.pid")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def status(self) -> dict[str, dict]:
        import json
        res = self.qnet("status", "--json", timeout=20)
        assert res.returncode == 0, f"qnet status failed: {res.stderr}"
        rows = {r["name"]: r for r in json.loads(res.stdout)["components"]}
        self.pids |= {r["pid"] for r in rows.values() if r["pid"]}
        return rows

    def client(self, component: str, protocol: Protocol, timeout: float = 3.0) -> RpcClient:
        """A client at the component's stable endpoint (RUN/NAME.rpc)."""
        return RpcClient(f"ipc://{self.run}/{component}.rpc", protocol, timeout=timeout)

    def call(self, component: str, protocol: Protocol, method: str, **kw) -> Any:
        with self.client(component, protocol) as c:
            return to_plain(c.call(method, **kw))

    def wait_state(self, name: str, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        def check():
            row = self.status().get(name)
            return row if row is not None and pred(row) else None
        return wait_until(check, timeout, f"{name}: {what}", interval=0.1)

    def all_pids(self) -> set[int]:
        return set(self.pids) | set(self.launcher_pids) | ({self.launcher_pid()} - {0})

    def cleanup(self) -> None:
        try:
            if os.path.exists(os.path.join(self.run, "launcher.ctl")):
                try:
                    self.qnet("down", "--timeout", "10", timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            for pid in self.all_pids():
                if _belongs(pid, self.work):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            # components of this graph we never saw in a status (a start that failed half-way)
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != os.getpid() and _belongs(int(entry), self.work):
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def graph():
    """A fresh, not yet started graph; torn down whatever the test did."""
    g = QnetGraph()
    try:
        yield g
    finally:
        g.cleanup()


@pytest.fixture
def up_graph(graph):
    """The test graph (counter + peer), up."""
    res = graph.up()
    assert res.returncode == 0, f"qnet up failed ({res.returncode}): {res.stdout}{res.stderr}"
    graph.status()
    return graph


@pytest.fixture(scope="module")
def shared_graph():
    """One graph up for a whole module of tests that only look (status, logs, errors)."""
    g = QnetGraph()
    try:
        res = g.up()
        assert res.returncode == 0, f"qnet up failed ({res.returncode}): {res.stdout}{res.stderr}"
        g.status()
        yield g
    finally:
        g.cleanup()
