"""A storm of random messages at a running server: one typed reply each, and it keeps serving."""
import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ipc import errors
from ipc.decl import encode
from ipc.rpc import KIND_CALL, KIND_ERR, KIND_OK, RpcClient
from tests.components.decls import COUNTER

SENTINEL = 987654321123
KNOWN_CODES = errors.TRANSPORT_CODES | {"not_found"}
REPLY_WAIT = 3.0

ints = st.integers(-(1 << 63), (1 << 64) - 1)  # what MessagePack can carry
scalars = (st.none() | st.booleans() | ints | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
methods = st.sampled_from([m.name for m in COUNTER.methods] + ["", "nosuch"]) | st.text(max_size=10)
headers = st.tuples(
    st.sampled_from([KIND_CALL, KIND_OK, KIND_ERR, 0, -1]) | ints,
    ints.filter(lambda i: i != SENTINEL),
    st.sampled_from(["test.counter", "qnet.lifecycle", ""]) | st.text(max_size=12),
    st.sampled_from(["1.2", "1.0", "1.3", "2.0", "x", ""]) | st.text(max_size=6),
    methods,
).map(lambda t: encode(list(t)))
plausible_headers = st.tuples(
    st.just(KIND_CALL), st.integers(1, 1 << 32), st.sampled_from(["test.counter", "qnet.lifecycle", "no.such"]),
    st.sampled_from(["1.2", "1.0", "1.3", "2.0"]), methods,
).map(lambda t: encode(list(t)))
arg_maps = st.fixed_dictionaries({}, optional={
    "n": st.integers(-2000, 2000) | values, "data": st.binary(max_size=40) | values,
    "items": st.lists(st.text(max_size=20), max_size=10) | values, "code": st.text(max_size=40),
    "name": st.text(max_size=10), "extra": values,
}).map(encode)
parts = st.one_of(st.binary(max_size=64), values.map(encode), headers, arg_maps)
messages = st.one_of(
    st.tuples(plausible_headers, arg_maps).map(list),       # calls, some of them valid
    st.tuples(plausible_headers, parts).map(list),
    st.tuples(headers, arg_maps).map(list),                 # shaped like calls
    st.tuples(headers, parts).map(list),
    st.lists(parts, min_size=1, max_size=6),                # any part count
)


@pytest.fixture(scope="module")
def storm_socket(safe_server):
    import zmq

    from ipc.rpc import context
    s = context().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(safe_server.endpoint)
    try:
        yield s
    finally:
        s.close(linger=0)


def replies_until_sentinel(sock) -> list[tuple[int, int, object]]:
    """Send the sentinel call and collect every reply up to and including its answer."""
    sock.send_multipart([encode([KIND_CALL, SENTINEL, "test.counter", "1.2", "pid"]), encode({})])
    out = []
    for _ in range(10):
        assert sock.poll(REPLY_WAIT * 1000), "the server stopped answering"
        reply = sock.recv_multipart()
        assert len(reply) == 2, reply
        h = msgpack.unpackb(reply[0])
        assert isinstance(h, list) and len(h) == 2 and h[0] in (KIND_OK, KIND_ERR), h
        out.append((h[0], h[1], msgpack.unpackb(reply[1], raw=False, strict_map_key=False)))
        if h[1] == SENTINEL:
            return out
    raise AssertionError(f"no answer to the sentinel among {out!r:.500}")


@given(msg=messages)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_every_message_gets_exactly_one_typed_reply(storm_socket, msg):
    storm_socket.send_multipart(msg)
    got = replies_until_sentinel(storm_socket)
    assert len(got) == 2, f"{len(got) - 1} replies to {msg!r:.300}"
    (kind, _rid, body), (skind, _sid, pid) = got
    assert skind == KIND_OK and isinstance(pid, int)
    event("ok" if kind == KIND_OK else f"error {body.get('code') if isinstance(body, dict) else body!r}")
    if kind == KIND_ERR:
        assert isinstance(body, dict), body
        assert body.get("code") in KNOWN_CODES, body
        assert isinstance(body.get("message"), str) and isinstance(body.get("details"), dict)


def test_after_the_storm_a_good_call_still_works(safe_server, storm_socket):
    # runs after the property test in file order; also stands alone
    with RpcClient(safe_server.endpoint, COUNTER, timeout=REPLY_WAIT) as c:
        assert c.call("echo", data=b"still here") == b"still here"
        assert c.call("pid") == safe_server.proc.pid
    assert safe_server.alive()
