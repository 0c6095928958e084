"""The component runtime in-process: the event loop, the lifecycle protocol, reports to the launcher."""
import threading
import time

import msgspec
import pytest

from components.runtime import Loop, Runtime, Spec
from ipc import errors
from ipc.events import Collector
from ipc.protocols.lifecycle import LIFECYCLE, SUPERVISOR
from ipc.rpc import RpcClient
from tests.components.counter import Counter
from tests.components.decls import COUNTER

WAIT = 3.0


# -- the loop -----------------------------------------------------------------------------------
def test_timers_fire_in_deadline_order_and_cancelled_ones_do_not():
    loop = Loop()
    fired = []
    now = time.monotonic()
    loop.call_at(now + 0.03, lambda: fired.append("c"))
    loop.call_at(now + 0.01, lambda: fired.append("a"))
    t = loop.call_at(now + 0.02, lambda: fired.append("x"))
    loop.call_at(now + 0.02, lambda: fired.append("b"))
    t.cancel()
    deadline = time.monotonic() + WAIT
    while len(fired) < 3 and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert fired == ["a", "b", "c"]


def test_a_failing_callback_is_counted_and_the_loop_goes_on():
    loop = Loop()
    ran = []
    loop.call_later(0, lambda: 1 / 0)
    loop.call_later(0, lambda: ran.append(1))
    loop.call_every(0.01, lambda: ran.append(2))
    deadline = time.monotonic() + WAIT
    while ran.count(2) < 3 and time.monotonic() < deadline:
        loop.run_once(0.02)
    assert loop.errors == 1 and 1 in ran and ran.count(2) >= 3


def test_run_once_waits_no_longer_than_the_next_timer():
    loop = Loop()
    loop.call_later(0.05, lambda: None)
    t0 = time.monotonic()
    loop.run_once(5.0)
    assert time.monotonic() - t0 < 1.0


# -- a runtime with the counter component, served from a thread ---------------------------------------
class Running:
    def __init__(self, tmp_run, name="counter"):
        self.spec = Spec(name=name, incarnation=1, runtime_dir=tmp_run, supervisor=f"ipc://{tmp_run}/sup",
                         endpoints={"rpc": f"ipc://{tmp_run}/c.rpc"}, peers={}, args={}, handles={})
        self.collector = Collector([SUPERVISOR], self.spec.supervisor)
        self.rt = Runtime(self.spec, Counter)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.reports = []

    def _run(self):
        while not self._stop:
            self.rt.loop.run_once(0.02)

    def client(self, proto):
        return RpcClient(self.spec.endpoints["rpc"], proto, timeout=WAIT, retries=0)

    def collect(self, until, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while not until(self.reports):
            assert time.monotonic() < deadline, f"no such report among {self.reports!r:.300}"
            self.collector.socket.poll(20)
            self.collector.receive(lambda p, n, v: self.reports.append((n, v)))

    def close(self):
        self._stop = True
        self.thread.join(5)
        self.rt.rpc.close()
        self.rt.reporter.close()
        self.collector.close()


@pytest.fixture
def running(tmp_run):
    r = Running(tmp_run)
    try:
        yield r
    finally:
        r.close()


def snapshot(value, component="counter", schema=1, data=None):
    return {"component": component, "schema": schema,
            "data": data if data is not None else msgspec.msgpack.encode({"value": value})}


def test_an_idle_component_answers_lifecycle_but_its_own_protocol_is_unavailable(running):
    with running.client(LIFECYCLE) as lc, running.client(COUNTER) as c:
        assert lc.call("status")["state"] == "starting"
        with pytest.raises(errors.Unavailable, match="starting"):
            c.call("add", n=1)
        assert lc.call("activate", snapshot=snapshot(40)) is True
        assert c.call("add", n=2) == 42
        assert lc.call("status")["state"] == "running"


def test_freeze_returns_the_state_and_stops_service_until_thaw(running):
    with running.client(LIFECYCLE) as lc, running.client(COUNTER) as c:
        lc.call("activate", snapshot=None)
        c.call("add", n=7)
        snap = lc.call("freeze")
        assert snap.component == "counter" and snap.schema == 1
        assert msgspec.msgpack.decode(snap.data) == {"value": 7}
        with pytest.raises(errors.Unavailable):
            c.call("get")
        assert lc.call("status")["state"] == "frozen"
        assert lc.call("thaw") is True
        assert c.call("get") == 7


@pytest.mark.parametrize("snap", [
    snapshot(1, component="peer"), snapshot(1, schema=2), snapshot(1, data=b"\xc1"),
])
def test_a_snapshot_it_cannot_use_is_refused_as_bad_snapshot(running, snap):
    with running.client(LIFECYCLE) as lc, running.client(COUNTER) as c:
        with pytest.raises(errors.RemoteError) as ei:
            lc.call("activate", snapshot=snap)
        assert ei.value.code == "bad_snapshot"
        assert lc.call("activate", snapshot=None) is True  # what the launcher does next
        assert c.call("get") == 0


def test_heartbeats_and_checkpoints_reach_the_supervisor(running):
    with running.client(LIFECYCLE) as lc, running.client(COUNTER) as c:
        lc.call("activate", snapshot=None)
        c.call("add", n=3)
    running.collect(lambda rs: any(n == "checkpoint" for n, _ in rs))
    running.collect(lambda rs: any(n == "heartbeat" and v.state == "running" for n, v in rs))
    cp = next(v for n, v in running.reports if n == "checkpoint")
    assert cp.name == "counter" and cp.incarnation == 1
    assert msgspec.msgpack.decode(cp.snapshot.data) == {"value": 3}
    hb = [v for n, v in running.reports if n == "heartbeat"][-1]
    assert hb.pid > 0 and hb.status["ipc"]["calls"] >= 1


def test_a_rate_limited_checkpoint_is_sent_later_not_lost(running):
    with running.client(LIFECYCLE) as lc:
        lc.call("activate", snapshot=None)
    running.rt.loop.call_later(0, lambda: running.rt.checkpoint({"value": 1}, min_interval=0.2))
    running.rt.loop.call_later(0.01, lambda: running.rt.checkpoint({"value": 2}, min_interval=0.2))

    def last_checkpoint_is_2(rs):
        cps = [v for n, v in rs if n == "checkpoint"]
        return cps and msgspec.msgpack.decode(cps[-1].snapshot.data) == {"value": 2}
    running.collect(last_checkpoint_is_2, timeout=1.5)
