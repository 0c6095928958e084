"""RUN/channels.sock: data channels for programs outside the graph, bounded and released."""
from __future__ import annotations

import json
import socket
import time

import pytest

from launcher.channels import ASK_TIMEOUT, broker_path, request_channel

from .conftest import default_graph_up, run_qnet, wait_until


@pytest.fixture(scope="module")
def run():
    with default_graph_up("qc") as run:
        yield run


def _dgram_tables(run) -> dict:
    res = run_qnet(run, "status", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)["components"]}
    tables = (rows["netstack"].get("details") or {}).get("tables") or {}
    return {k: v for k, v in tables.items() if k.startswith("dgram_channel:")}


def test_a_channel_is_granted_served_and_released_when_its_program_goes(run):
    conn, fd = request_channel(run, "qnet.datagram", "tool-a")
    try:
        wait_until(lambda: "dgram_channel:tool-a" in _dgram_tables(run), 5.0, "netstack to hold tool-a's channel")
    finally:
        socket.socket(fileno=fd).close()
        conn.close()
    wait_until(lambda: "dgram_channel:tool-a" not in _dgram_tables(run), 5.0, "tool-a's channel to be released")


@pytest.mark.parametrize("protocol, user, why", [
    ("qnet.datagram", "dhcpd", "already has a channel"),      # a component of the graph holds it
    ("qnet.netstack", "tool-b", "no data protocol"),          # control protocols have no data channel
    ("qnet.nosuch", "tool-b", "no data protocol"),
    ("qnet.datagram", "", "request must be"),
])
def test_a_name_in_use_or_a_protocol_without_data_is_refused(run, protocol, user, why):
    with pytest.raises(LookupError, match=why):
        request_channel(run, protocol, user)


def test_the_same_name_twice_is_refused_while_the_first_holds_it(run):
    conn, fd = request_channel(run, "qnet.datagram", "tool-c")
    try:
        with pytest.raises(LookupError, match="already has a channel"):
            request_channel(run, "qnet.datagram", "tool-c")
    finally:
        socket.socket(fileno=fd).close()
        conn.close()


def test_a_connection_that_never_asks_is_closed(run):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(ASK_TIMEOUT + 5)
    try:
        s.connect(broker_path(run))
        t0 = time.monotonic()
        got = s.recv(4096)   # the launcher's refusal, then EOF — never a hang
        assert time.monotonic() - t0 < ASK_TIMEOUT + 3
        assert got == b"" or b"ok" in got
    finally:
        s.close()
