"""Malformed IPC messages thrown at the real netstack and dhcpd: typed errors, counted drops, no crash."""
import json
import random
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from ipc.protocols.netstack import NETSTACK
from ipc.rpc import RpcClient

from .conftest import default_graph_up, run_qnet, wait_until




_BASELINE: dict = {}


@pytest.fixture(scope="module")
def default_graph():
    with default_graph_up("qf") as run:
        # the baseline is taken before any garbage is sent: a crash and respawn during the
        # fuzzing must show as a changed pid or a restart, not become the new normal
        _BASELINE.update(_rows(run))
        yield run


def _rows(run):
    res = run_qnet(run, "status", "--json")
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)["components"]}


def _bad_messages(row) -> int:
    """Garbage netstack read and refused: on its RPC endpoint and on its data endpoints (where a
    routing id that does not prove its name is refused before parsing)."""
    d = row.get("details") or {}
    n = int((d.get("ipc") or {}).get("bad_messages", 0))
    for chan in ("device_channel", "datagram_channel"):
        c = d.get(chan) or {}
        n += int(c.get("rx_bad", 0)) + int(c.get("rx_refused", 0))
    return n


_parts = st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda v: msgpack.packb(v), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=20),
                  st.binary(max_size=20)),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=10)),
    st.sampled_from([b"B", b"E", msgpack.packb(["rx", 1, 2]), msgpack.packb(["attach"]),
                     msgpack.packb([1, 1, "qnet.netstack", "1.0", "port_add"]),
                     msgpack.packb([1, 2, "qnet.datagram", "1.1", "open"])]),
), min_size=0, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(st.sampled_from(["netstack.rpc", "netstack.data", "netstack.dgram",
                                                    "dhcpd.rpc"]), _parts), min_size=1, max_size=4))
def test_garbage_on_every_endpoint_never_crashes_a_component(default_graph, messages):
    ctx = zmq.Context.instance()
    socks = {}
    try:
        for endpoint, parts in messages:
            s = socks.get(endpoint)
            if s is None:
                s = ctx.socket(zmq.DEALER)
                # Linger: a connect is asynchronous, and closing with linger 0 would throw away
                # whatever was not on the wire yet — the garbage must reach the component.
                s.setsockopt(zmq.LINGER, 2000)
                s.setsockopt(zmq.IDENTITY, f"fuzz{random.randrange(1 << 30)}".encode())
                s.connect(f"ipc://{default_graph}/{endpoint}")
                socks[endpoint] = s
            if parts:
                s.send_multipart(parts, zmq.NOBLOCK)
    finally:
        for s in socks.values():
            s.close()


def test_components_survived_the_fuzzing_and_still_answer(default_graph):
    assert _BASELINE, "the graph fixture took no baseline"
    after_fuzz = _rows(default_graph)
    for name in ("netstack", "dhcpd"):
        assert after_fuzz[name]["pid"] == _BASELINE[name]["pid"], f"{name} was replaced during the fuzzing"
        assert after_fuzz[name]["restarts"] == _BASELINE[name]["restarts"], f"{name} restarted"
        assert after_fuzz[name]["state"] == "running", after_fuzz[name]
    # the garbage was read and refused (counted), not silently lost on the way
    # (status details travel with heartbeats, once a second: wait for the one after the fuzzing)
    wait_until(lambda: _bad_messages(_rows(default_graph)["netstack"]) > _bad_messages(_BASELINE["netstack"]),
               5.0, "netstack's count of refused garbage to rise")
    # more garbage, then check the same processes answer good requests
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{default_graph}/netstack.rpc")
    for parts in ([b"\xc1"], [b"x", b"y", b"z"], [msgpack.packb([1, 7, "qnet.netstack", "1.0", "port_add"]),
                                                  msgpack.packb({"name": 5})]):
        s.send_multipart(parts)
    replies = 0
    deadline = time.monotonic() + 5
    while replies < 3 and time.monotonic() < deadline:
        if s.poll(200):
            hdr, body = s.recv_multipart()
            assert msgpack.unpackb(hdr)[0] == 3  # an error reply
            assert msgpack.unpackb(body)["code"] in ("bad_message", "invalid_argument")
            replies += 1
    s.close(0)
    assert replies == 3
    with RpcClient(f"ipc://{default_graph}/netstack.rpc", NETSTACK, timeout=5) as c:
        assert c.call("port_list") == []
        assert "stack" in c.call("stats")
    # the three messages above were counted as refused
    # (status details come with the next heartbeat, once a second)
    end = wait_until(lambda: (lambda rows: rows if _bad_messages(rows["netstack"]) >=
                              _bad_messages(after_fuzz["netstack"]) + 2 else None)(_rows(default_graph)),
                     5, "netstack's heartbeat counting the refused messages", interval=0.2)
    assert {n: r["pid"] for n, r in end.items()} == {n: r["pid"] for n, r in _BASELINE.items()}
    assert all(end[n]["restarts"] == _BASELINE[n]["restarts"] for n in end)
