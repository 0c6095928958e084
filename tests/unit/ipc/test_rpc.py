"""RPC against a real server process: good calls work, every bad one gets one typed error reply.

After each refused message the same connection must still get exactly the
answer to the next good call (no extra reply queued, no crash, no hang).
"""
import time

import msgpack
import pytest

from ipc import errors
from ipc.decl import Method, Protocol, Version, encode
from ipc.rpc import DEFAULT_MAX_MESSAGE, KIND_CALL, KIND_ERR, KIND_OK, RpcClient, call_once
from ipc.types import Bytes, Int
from tests.components.decls import COUNTER

REPLY_WAIT = 3.0


def header(req_id=1, proto="test.counter", version="1.2", method="get"):
    return encode([KIND_CALL, req_id, proto, version, method])


def exchange(sock, parts, timeout=REPLY_WAIT):
    """Send raw parts, return (kind, req_id, body) of the one reply."""
    sock.send_multipart(parts)
    assert sock.poll(timeout * 1000), f"no reply within {timeout} s to {parts!r:.200}"
    reply = sock.recv_multipart()
    assert len(reply) == 2, reply
    h = msgpack.unpackb(reply[0])
    assert isinstance(h, list) and len(h) == 2, h
    return h[0], h[1], msgpack.unpackb(reply[1], raw=False)


def assert_error(sock, parts, code, req_id=None):
    kind, rid, body = exchange(sock, parts)
    assert kind == KIND_ERR, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    if req_id is not None:
        assert rid == req_id
    return body


def assert_still_serving(sock):
    """The next good call on this connection gets its own answer, and nothing else is queued."""
    kind, rid, body = exchange(sock, [header(req_id=424242, method="pid"), encode({})])
    assert (kind, rid) == (KIND_OK, 424242), body
    assert isinstance(body, int) and body > 0


@pytest.fixture
def raw(safe_server, dealer_factory):
    return dealer_factory(safe_server.endpoint)


@pytest.fixture
def client(safe_server):
    with RpcClient(safe_server.endpoint, COUNTER, timeout=REPLY_WAIT) as c:
        yield c


# -- good calls ---------------------------------------------------------------------------------
def test_good_calls_are_answered_with_validated_results(client):
    base = client.call("get")
    assert client.call("add", n=5) == base + 5
    assert client.call("add", n=-2) == base + 3
    assert client.call("get") == base + 3
    assert client.call("echo", data=b"\x00\xffpayload") == b"\x00\xffpayload"
    assert client.call("record", items=["a", "b"]) == {"count": 2}
    assert client.call("pid") > 1
    assert client.handshake() == {"protocol": "test.counter", "version": "1.2"}


def test_call_once_is_a_one_shot_client(safe_server):
    assert call_once(safe_server.endpoint, COUNTER, "echo", data=b"x") == b"x"


def test_a_large_but_allowed_body_is_served(client):
    data = b"\xab" * (1 << 20)
    assert client.call("echo", 10, data=data) == data


# -- typed errors -------------------------------------------------------------------------------
def test_unknown_protocol_gets_unknown_protocol_and_names_what_is_served(raw):
    body = assert_error(raw, [header(req_id=7, proto="no.such"), encode({})], "unknown_protocol", req_id=7)
    assert "test.counter" in body["message"]
    assert_still_serving(raw)


def test_unknown_method_gets_unknown_method(raw, safe_server):
    assert_error(raw, [header(req_id=8, method="nosuch"), encode({})], "unknown_method", req_id=8)
    assert_error(raw, [header(req_id=9, method="__init__"), encode({})], "unknown_method", req_id=9)
    assert_still_serving(raw)
    # a client whose declaration has a method the server's lacks hears it from the server
    newer = Protocol("test.counter", Version(1, 0), methods=(Method("bogus", result=Int()),))
    with RpcClient(safe_server.endpoint, newer, timeout=REPLY_WAIT) as c:
        with pytest.raises(errors.UnknownMethod, match="bogus"):
            c.call("bogus")
        with pytest.raises(errors.UnknownMethod):
            c.call("not_even_declared")  # refused locally, before sending


@pytest.mark.parametrize("method, args", [
    ("add", {}),                       # missing field
    ("add", {"n": 1, "extra": 2}),     # unknown field
    ("add", {"n": "1"}),               # wrong type
    ("add", {"n": 1.5}),
    ("add", {"n": None}),
    ("add", {"n": 1001}),              # out of bounds
    ("add", {"n": -1001}),
    ("add", {"n": 1 << 63}),
    ("add", [1]),                      # an array instead of a map
    ("add", 1),
    ("echo", {"data": "text"}),
    ("echo", {"data": b"x" * ((1 << 20) + 1)}),
    ("record", {"items": ["a"] * 9}),  # list bound
    ("record", {"items": ["x" * 17]}),  # item bound
    ("record", {"items": [1]}),
    ("get", {"n": 1}),                 # a method without arguments refuses one
])
def test_invalid_arguments_get_invalid_argument(raw, method, args):
    body = assert_error(raw, [header(req_id=11, method=method), encode(args)], "invalid_argument", req_id=11)
    assert method in body["message"]
    assert_still_serving(raw)


def test_the_client_validates_arguments_before_sending(client):
    before = client.call("get")
    with pytest.raises(errors.InvalidArgument):
        client.call("add", n=5000)
    with pytest.raises(errors.InvalidArgument):
        client.call("add", n=1, m=2)
    with pytest.raises(errors.InvalidArgument):
        client.call("add", n=object())
    assert client.call("get") == before


def test_an_oversized_body_gets_too_large(raw):
    body = b"\x00" * (DEFAULT_MAX_MESSAGE + 1)
    err = assert_error(raw, [header(req_id=12, method="echo"), body], "too_large", req_id=12)
    assert str(DEFAULT_MAX_MESSAGE) in err["message"]
    assert_still_serving(raw)


def test_a_body_that_is_not_messagepack_gets_bad_message(raw):
    assert_error(raw, [header(req_id=13, method="add"), b"\xc1"], "bad_message", req_id=13)
    assert_error(raw, [header(req_id=14, method="add"), b""], "bad_message", req_id=14)
    assert_error(raw, [header(req_id=15, method="add"), b"\x81\xa1n"], "bad_message", req_id=15)  # truncated
    assert_still_serving(raw)


def test_a_header_that_is_not_messagepack_gets_bad_message(raw):
    assert_error(raw, [b"\xc1", encode({})], "bad_message", req_id=0)
    assert_error(raw, [b"", encode({})], "bad_message", req_id=0)
    assert_still_serving(raw)


@pytest.mark.parametrize("nparts", [1, 3, 5])
def test_a_wrong_number_of_parts_gets_bad_message(raw, nparts):
    parts = [header(req_id=16)] + [encode({})] * (nparts - 1)
    body = assert_error(raw, parts, "bad_message", req_id=0)
    assert "parts" in body["message"]
    assert_still_serving(raw)


@pytest.mark.parametrize("h", [
    encode([KIND_CALL, 17, "test.counter", "1.2"]),              # too short
    encode([KIND_CALL, 17, "test.counter", "1.2", "get", "x"]),  # too long
    encode([KIND_OK, 17, "test.counter", "1.2", "get"]),         # a reply kind
    encode([KIND_CALL, "17", "test.counter", "1.2", "get"]),     # req_id not an int
    encode([KIND_CALL, 17, 5, "1.2", "get"]),                    # protocol not a string
    encode([KIND_CALL, 17, "test.counter", 1.2, "get"]),         # version not a string
    encode([KIND_CALL, 17, "test.counter", "1.2", None]),
    encode({"kind": 1}),
    encode("call"),
    encode(None),
    encode([]),
])
def test_a_header_of_the_wrong_shape_gets_bad_message(raw, h):
    assert_error(raw, [h, encode({})], "bad_message")
    assert_still_serving(raw)


def test_a_negative_req_id_or_bad_version_text_gets_bad_message(raw):
    assert_error(raw, [encode([KIND_CALL, -5, "test.counter", "1.2", "get"]), encode({})], "bad_message", req_id=0)
    assert_error(raw, [header(req_id=18, version="one"), encode({})], "bad_message", req_id=18)
    assert_still_serving(raw)


def test_version_mismatch_names_both_versions(safe_server):
    future = Protocol("test.counter", Version(2, 0), methods=(Method("get", result=Int(), idempotent=True),))
    with RpcClient(safe_server.endpoint, future, timeout=REPLY_WAIT) as c:
        with pytest.raises(errors.VersionMismatch) as ei:
            c.call("get")
        assert "2.0" in str(ei.value) and "1.2" in str(ei.value)
        assert ei.value.details == {"client": "2.0", "server": "1.2"}
        with pytest.raises(errors.VersionMismatch):
            c.handshake()
        assert c.counters["retries"] == 0  # a mismatch is not retried
    newer_minor = Protocol("test.counter", Version(1, 3), methods=(Method("get", result=Int()),))
    with RpcClient(safe_server.endpoint, newer_minor, timeout=REPLY_WAIT) as c:
        with pytest.raises(errors.VersionMismatch, match="1.3"):
            c.call("get")
    older_minor = Protocol("test.counter", Version(1, 0), methods=(Method("get", result=Int()),))
    with RpcClient(safe_server.endpoint, older_minor, timeout=REPLY_WAIT) as c:
        assert isinstance(c.call("get"), int)


def test_a_declared_application_error_arrives_as_remote_error_with_its_code(client):
    with pytest.raises(errors.RemoteError) as ei:
        client.call("fail", code="x")
    assert ei.value.code == "not_found" and "x" in str(ei.value)
    assert client.call("pid") > 0


def test_a_handler_bug_is_an_internal_error_and_the_server_stays_up(client):
    with pytest.raises(errors.Internal, match="RuntimeError"):
        client.call("fail", code="bug")
    assert client.call("pid") > 0


def test_a_result_that_breaks_the_declaration_is_refused_by_the_client(safe_server):
    # the client believes pid returns small bytes; the server answers an int
    liar = Protocol("test.counter", Version(1, 2), methods=(Method("pid", result=Bytes(max_len=4)),))
    with RpcClient(safe_server.endpoint, liar, timeout=REPLY_WAIT) as c:
        with pytest.raises(errors.InvalidResult):
            c.call("pid")


# -- timeouts and restarts ----------------------------------------------------------------------------
def test_a_call_to_an_endpoint_nobody_serves_times_out_in_bounded_time(tmp_run):
    with RpcClient(f"ipc://{tmp_run}/nobody.rpc", COUNTER, timeout=0.2, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.call("get")  # idempotent: 3 attempts
        assert time.monotonic() - t0 < 2.0
        assert c.counters["retries"] == 2
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.call("add", n=1)  # not idempotent: one attempt
        assert time.monotonic() - t0 < 1.0
        assert c.counters["retries"] == 2


def test_a_hung_server_gives_timeout_not_a_hang(server):
    with RpcClient(server.endpoint, COUNTER, timeout=0.3, retries=1) as c:
        assert c.call("hang") is True
        time.sleep(0.1)  # the hang starts 10 ms after the reply
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.call("get")
        assert time.monotonic() - t0 < 2.0


def test_idempotent_calls_are_retried_across_a_server_restart(server):
    with RpcClient(server.endpoint, COUNTER, timeout=1.0, retries=5) as c:
        assert c.call("add", n=3) == 3
        old_pid = c.call("pid")
        assert c.call("crash") is True
        server.proc.wait(5)
        server.start(wait=False)  # comes up while the next call is being retried
        try:
            new_pid = c.call("pid")
        finally:
            server.wait_ready()
        assert new_pid != old_pid and new_pid == server.proc.pid
        assert c.call("get") == 0  # a new server: the state was not this test's to keep
        assert c.call("add", n=1) == 1


def test_a_non_idempotent_call_is_not_retried_when_the_server_is_gone(server):
    with RpcClient(server.endpoint, COUNTER, timeout=0.3, retries=3) as c:
        assert c.call("pid") == server.proc.pid
        server.stop()
        with pytest.raises(errors.Timeout):
            c.call("add", n=1)
        assert c.counters["retries"] == 0
