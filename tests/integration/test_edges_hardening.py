"""Edges found by hostile input (issue 7), each reproduced against the running components.

One default graph (netstack, dhcpd, launcher) serves the whole module; tests that change it
use port names of their own and remove what they add.
"""
import json
import os
import shutil
import tempfile
import time

import msgpack
import pytest
import zmq

from .conftest import run_qnet, wait_until

DEEP = b"\x91" * 100_000 + b"\xc0"   # [[[[...nil...]]]] 100,000 levels


@pytest.fixture(scope="module")
def run():
    work = tempfile.mkdtemp(prefix="qh", dir="/tmp")
    run = os.path.join(work, "r")
    try:
        res = run_qnet(run, "up", "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        yield run
    finally:
        run_qnet(run, "down", timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def _status(run) -> dict:
    res = run_qnet(run, "status", "--json")
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)["components"]}


def _raw_call(run, endpoint: str, parts: list[bytes], timeout: float = 3.0) -> tuple[list, dict]:
    """Send raw parts to RUN/ENDPOINT; the (header, body) of the answer, decoded."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(f"ipc://{run}/{endpoint}")
        s.send_multipart(parts)
        assert s.poll(timeout * 1000), f"{endpoint}: no answer within {timeout} s"
        hdr, body = s.recv_multipart()
        return msgpack.unpackb(hdr), msgpack.unpackb(body)
    finally:
        s.close(0)


# -- 6: deeply nested MessagePack gets the typed bad_message answer ----------------------------
@pytest.mark.parametrize("endpoint,proto,method", [("netstack.rpc", "qnet.netstack", "port_list"),
                                                    ("dhcpd.rpc", "qnet.dhcpd", "leases")])
def test_deeply_nested_header_and_body_get_a_bad_message_reply(run, endpoint, proto, method):
    pid = _status(run)[endpoint.split(".")[0]]["pid"]
    hdr, body = _raw_call(run, endpoint, [DEEP, msgpack.packb({})])
    assert hdr[0] == 3 and body["code"] == "bad_message", (hdr, body)
    good_header = msgpack.packb([1, 77, proto, "1.0", method])
    hdr, body = _raw_call(run, endpoint, [good_header, b"\x81\xa1x" + DEEP])
    assert hdr == [3, 77] and body["code"] in ("bad_message", "invalid_argument"), (hdr, body)
    # and the component is the same process, still answering
    hdr, _ = _raw_call(run, endpoint, [good_header, msgpack.packb({})])
    assert hdr == [2, 77]
    assert _status(run)[endpoint.split(".")[0]]["pid"] == pid
