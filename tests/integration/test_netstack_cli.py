"""qnet's own ping on the default graph, no TAP needed: loopback, no route, and the -W/-i arguments."""
import json
import time

import pytest

from .conftest import default_graph_up, run_qnet




@pytest.fixture(scope="module")
def run():
    with default_graph_up("qp") as run:
        yield run


def test_ping_of_loopback_over_several_seconds_gets_every_reply(run):
    # three pings one second apart take longer than the per-reply wait: the call must wait for all
    t0 = time.monotonic()
    res = run_qnet(run, "ping", "-c", "3", "-W", "0.5", "--json", "127.0.0.1")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["sent"], out["received"]) == (3, 3)
    assert [r["seq"] for r in out["replies"]] == [0, 1, 2]
    assert time.monotonic() - t0 >= 2.0


def test_ping_without_a_route_says_so_per_packet_and_fails(run):
    res = run_qnet(run, "ping", "-c", "2", "-i", "0.2", "-W", "0.3", "10.99.123.1")
    assert res.returncode == 1
    assert res.stdout.count("no route") == 2, res.stdout + res.stderr
    assert "2 sent, 0 received" in res.stdout
