"""A graph on tcp:// endpoints with CURVE: components talk, strangers get nothing, restarts hand state over."""
import random

import pytest

from ipc import errors
from ipc.curve import ClientCurve, CurveKeys
from ipc.rpc import RpcClient
from tests.components.decls import COUNTER, PEER

from .conftest import graph_text, wait_until


def _tcp_graph(graph, base: int) -> None:
    text = graph_text(graph.work)
    text = text.replace('[graph]\n', f'[graph]\ntransport = "tcp"\ntcp_host = "127.0.0.1"\n'
                                     f'tcp_base_port = {base}\ncurve = true\n', 1)
    graph.write(text)


def _endpoints(graph) -> dict:
    from ipc.protocols.launcher import LAUNCHER
    with RpcClient(f"ipc://{graph.run}/launcher.ctl", LAUNCHER, timeout=5) as c:
        return c.call("endpoints")


@pytest.fixture
def tcp_graph(graph):
    base = random.randrange(40000, 50000, 20)
    _tcp_graph(graph, base)
    res = graph.up()
    assert res.returncode == 0, f"qnet up failed: {res.stdout}{res.stderr}"
    return graph


def test_tcp_graph_comes_up_and_its_components_talk_over_curve(tcp_graph):
    rows = tcp_graph.status()
    assert {rows["counter"]["state"], rows["peer"]["state"]} == {"running"}
    eps = _endpoints(tcp_graph)
    assert eps["counter"]["rpc"].startswith("tcp://127.0.0.1:")
    keys = CurveKeys.load(f"{tcp_graph.run}/keys/graph.key_secret")
    with RpcClient(eps["counter"]["rpc"], COUNTER, curve=ClientCurve(keys, keys.public), timeout=3) as c:
        assert c.call("add", n=7) == 7
    # the peer component reaches the counter over tcp+CURVE by itself
    with RpcClient(eps["peer"]["rpc"], PEER, curve=ClientCurve(keys, keys.public), timeout=3) as p:
        wait_until(lambda: p.call("stats")["last_value"] == 7, 10, "peer sees the counter's value over tcp")


def test_a_client_without_the_graph_key_gets_no_answer(tcp_graph):
    eps = _endpoints(tcp_graph)
    stranger = CurveKeys.generate()
    graph_public = CurveKeys.load(f"{tcp_graph.run}/keys/graph.key_secret").public
    with RpcClient(eps["counter"]["rpc"], COUNTER, curve=ClientCurve(stranger, graph_public),
                   timeout=1, retries=0) as c:
        with pytest.raises((errors.Timeout, errors.Unavailable)):
            c.call("get")
    with RpcClient(eps["counter"]["rpc"], COUNTER, timeout=1, retries=0) as c:
        with pytest.raises((errors.Timeout, errors.Unavailable)):
            c.call("get")


def test_restart_on_tcp_hands_state_over(tcp_graph):
    eps = _endpoints(tcp_graph)
    keys = CurveKeys.load(f"{tcp_graph.run}/keys/graph.key_secret")
    with RpcClient(eps["counter"]["rpc"], COUNTER, curve=ClientCurve(keys, keys.public), timeout=3) as c:
        c.call("add", n=5)
        old_pid = c.call("pid")
    res = tcp_graph.qnet("restart", "counter", "--json")
    assert res.returncode == 0, res.stderr
    with RpcClient(eps["counter"]["rpc"], COUNTER, curve=ClientCurve(keys, keys.public), timeout=3) as c:
        assert c.call("pid") != old_pid
        assert c.call("get") == 5
