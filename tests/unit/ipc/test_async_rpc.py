"""AsyncRpcClient: calls that do not block the caller's loop, answered out of the loop's poll."""
import time

import pytest

from ipc import errors
from ipc.rpc import AsyncRpcClient
from tests.components.decls import COUNTER


def _collect(client, want, timeout=3.0):
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        if client.socket.poll(100):
            got.update(client.replies())
    return got


def test_many_outstanding_calls_are_answered_by_request_id(safe_server):
    with AsyncRpcClient(safe_server.endpoint, COUNTER) as c:
        ids = {c.start("echo", data=bytes([i])): bytes([i]) for i in range(20)}
        got = _collect(c, 20)
    assert got == ids


def test_errors_arrive_as_typed_exceptions_not_raised(safe_server):
    with AsyncRpcClient(safe_server.endpoint, COUNTER) as c:
        req = c.start("fail", code="nothing")
        got = _collect(c, 1)
    assert isinstance(got[req], errors.RemoteError) and got[req].code == "not_found"


def test_bad_arguments_are_refused_before_sending(safe_server):
    with AsyncRpcClient(safe_server.endpoint, COUNTER) as c:
        with pytest.raises(errors.InvalidArgument):
            c.start("add", n=10**9)
        with pytest.raises(errors.UnknownMethod):
            c.start("nosuch")


def test_a_forgotten_call_is_counted_stale_when_its_reply_comes(safe_server):
    with AsyncRpcClient(safe_server.endpoint, COUNTER) as c:
        req = c.start("get")
        c.forget(req)
        time.sleep(0.3)
        assert c.replies() == []
        assert c.counters["stale_replies"] == 1
