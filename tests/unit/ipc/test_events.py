"""Typed events: PUB/SUB fan-out and PUSH/PULL reports deliver validated events, count bad ones."""
import time

import pytest
import zmq

from ipc import errors
from ipc.decl import encode
from ipc.events import Collector, Publisher, Reporter, Subscriber
from ipc.protocols.device import DEVICE
from ipc.protocols.lifecycle import SUPERVISOR
from ipc.rpc import context

WAIT = 3.0


def drain(receiver, until, timeout=WAIT, on_each=None):
    got = []

    def on_event(proto, name, value):
        got.append((proto, name, value))

    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out; got {got!r}"
        if on_each:
            on_each()
        receiver.socket.poll(20)
        receiver.receive(on_event)
    return got


@pytest.fixture
def closing():
    things = []
    try:
        yield things.append
    finally:
        for t in things:
            t.close()


def test_reporter_delivers_validated_events_to_the_collector(tmp_run, closing):
    ep = f"ipc://{tmp_run}/sup"
    col = Collector([SUPERVISOR], ep)
    closing(col)
    rep = Reporter(SUPERVISOR, ep)
    closing(rep)
    assert rep.emit("heartbeat", name="counter", incarnation=2, pid=1234, state="running", status={"drops": 0})
    assert rep.emit("problem", name="counter", incarnation=2, message="disk full")
    got = drain(col, lambda g: len(g) == 2)
    assert [(p, n) for p, n, _ in got] == [("qnet.supervisor", "heartbeat"), ("qnet.supervisor", "problem")]
    hb = got[0][2]
    assert (hb.name, hb.incarnation, hb.pid, hb.state, hb.status) == ("counter", 2, 1234, "running", {"drops": 0})
    assert col.counters == {"received": 2, "bad": 0} and rep.counters["sent"] == 2


def test_the_sender_refuses_events_that_break_the_declaration(tmp_run, closing):
    rep = Reporter(SUPERVISOR, f"ipc://{tmp_run}/sup")
    closing(rep)
    with pytest.raises(errors.InvalidArgument):
        rep.emit("heartbeat", name="counter")                     # missing fields
    with pytest.raises(errors.InvalidArgument):
        rep.emit("problem", name="bad name!", incarnation=1, message="x")
    with pytest.raises(errors.InvalidArgument):
        rep.emit("nosuch")
    assert rep.counters["sent"] == 0


@pytest.mark.parametrize("parts", [
    [b"qnet.supervisor/heartbeat", encode({"name": "x"})],             # missing fields
    [b"qnet.supervisor/heartbeat", b"\xc1"],                           # not MessagePack
    [b"qnet.supervisor/nosuch", encode({})],                           # undeclared event
    [b"no.such/heartbeat", encode({})],                                # undeclared protocol
    [b"\xff\xfe", encode({})],                                         # topic not UTF-8
    [b"qnet.supervisor/problem"],                                      # too few parts
    [b"qnet.supervisor/problem", encode({"name": "a", "incarnation": 1, "message": "m"}), b"extra"],
])
def test_the_collector_counts_and_drops_bad_reports(tmp_run, closing, parts):
    ep = f"ipc://{tmp_run}/sup"
    col = Collector([SUPERVISOR], ep)
    closing(col)
    raw = context().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(ep)
    closing(raw)
    raw.send_multipart(parts)
    raw.send_multipart([b"qnet.supervisor/problem", encode({"name": "a", "incarnation": 1, "message": "good"})])
    got = drain(col, lambda g: len(g) == 1)
    assert got[0][2].message == "good"
    assert col.counters == {"received": 1, "bad": 1}
    assert col.last_error


def test_publisher_fans_out_validated_events_to_subscribers(tmp_run, closing):
    ep = f"ipc://{tmp_run}/pub"
    pub = Publisher(DEVICE, ep)
    closing(pub)
    subs = [Subscriber([DEVICE], [ep]) for _ in range(2)]
    for s in subs:
        closing(s)
    # a subscription takes a moment to reach the publisher: publish until each subscriber hears
    for s in subs:
        got = drain(s, lambda g: g, on_each=lambda: pub.emit("link", port="p0", up=False, mtu=1500))
        proto, name, value = got[0]
        assert (proto, name, value.port, value.up, value.mtu) == ("qnet.device", "link", "p0", False, 1500)
    with pytest.raises(errors.InvalidArgument):
        pub.emit("link", port="p0", up="yes", mtu=1500)


def test_a_subscriber_counts_bad_events_and_keeps_good_ones(tmp_run, closing):
    ep = f"ipc://{tmp_run}/pub"
    raw = context().socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(ep)
    closing(raw)
    sub = Subscriber([DEVICE], [ep])
    closing(sub)
    good = [b"qnet.device/link", encode({"port": "p0", "up": True, "mtu": 9000})]
    drain(sub, lambda g: g, on_each=lambda: raw.send_multipart(good))  # subscribed now
    sub.counters.update(received=0, bad=0)
    time.sleep(0.05)
    sub.receive(lambda *a: None)  # flush what the warm-up left queued
    sub.counters.update(received=0, bad=0)
    raw.send_multipart([b"qnet.device/link", encode({"port": "p0", "up": True, "mtu": 10})])  # out of bounds
    raw.send_multipart([b"qnet.device/nosuch", encode({})])
    raw.send_multipart([b"qnet.device/link"])
    raw.send_multipart([b"other.proto/link", encode({})])  # not subscribed: filtered inside ZeroMQ
    raw.send_multipart(good)
    got = drain(sub, lambda g: g)
    assert got[0][2].mtu == 9000
    assert sub.counters == {"received": 1, "bad": 3}
