"""Fixtures for interop tests: a running qnet graph with TAP ports whose kernel side sits in network
namespaces of their own. Everything is torn down in finalizers: `qnet down`, leftover processes of
the graph killed by pid, namespaces deleted."""
from __future__ import annotations

import random

import pytest

from tests.interop.util import NsPort, QnetGraph, missing_prerequisite


def _require_prerequisites() -> None:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module", params=["socketpair", "zmq"])
def two_port_graph(request):
    """(graph, a, b): ports p0 and p1 on two distinct random 10.99.X.0/24 subnets, each with a
    namespace whose default route points at qnet. Every data-path test runs on both data
    transports: launcher-held socketpairs (the default) and ZeroMQ."""
    _require_prerequisites()
    xa, xb = random.sample(range(1, 255), 2)
    g = QnetGraph.start(data_transport=request.param)
    g.data_transport = request.param
    try:
        a = g.add_ns_port("p0", xa)
        b = g.add_ns_port("p1", xb)
        yield g, a, b
    finally:
        g.stop()


@pytest.fixture
def graph(two_port_graph) -> QnetGraph:
    return two_port_graph[0]


@pytest.fixture
def ns_a(two_port_graph) -> NsPort:
    return two_port_graph[1]


@pytest.fixture
def ns_b(two_port_graph) -> NsPort:
    return two_port_graph[2]
