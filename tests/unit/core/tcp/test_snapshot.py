"""Snapshot and restore of a Connection: plain msgpack types, identical behaviour after the
hand-over (byte-exact transfers under loss), deadlines moved by the clock shift, and a
malformed snapshot refused with ValueError only."""

from __future__ import annotations

import heapq

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.netstack.core.tcp import Connection, State, TcpConfig
from components.netstack.wire.tcp import ACK, PSH

from .net import Net, pair
from .peers import established
from .test_transfer import payload

S = State


def through_msgpack(c: Connection) -> dict:
    return msgpack.unpackb(msgpack.packb(c.snapshot(), use_bin_type=True), raw=False,
                           strict_map_key=True)


def plain(v) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x) for k, x in v.items())
    if isinstance(v, list):
        return all(plain(x) for x in v)
    return v is None or isinstance(v, (str, int, float, bool, bytes))


def hand_over(net: Net, name: str, shift: float = 0.0) -> Connection:
    """Replace one end by its restored copy; segments in flight go to the copy."""
    old = getattr(net, name)
    new = Connection.from_snapshot(through_msgpack(old), shift)
    setattr(net, name, new)
    net._flight = [(t, tie, new if dst is old else dst, seg) for t, tie, dst, seg in net._flight]
    heapq.heapify(net._flight)
    return new


def test_the_snapshot_holds_only_msgpack_types_and_restores_to_the_same_snapshot():
    c, p = established(now=0.0)
    c.send(b"x" * 5000, 1.0)
    p.send(ACK | PSH, payload=b"hello", ack=c.snd_una)
    p.send(ACK | PSH, seq=p.seq + 100, payload=b"later", ack=c.snd_una)   # out of order
    snap = c.snapshot()
    assert plain(snap)
    c2 = Connection.from_snapshot(through_msgpack(c))
    assert c2.snapshot() == snap
    assert c2.state is S.ESTABLISHED and c2.recv() == b"hello" and c2.ooo == c.ooo


@pytest.mark.parametrize("seed", range(6))
def test_a_mid_transfer_hand_over_of_both_ends_completes_byte_exact_under_loss(seed):
    from .test_transfer import converse
    a, b = pair(TcpConfig(send_buffer=16384, recv_buffer=8192, send_buffer_max=16384, recv_buffer_max=8192))
    b.listen()
    net = Net(a, b, seed=seed, loss=0.1, dup=0.05, reorder=0.2, delay=0.02)
    a.connect(net.now)
    a_data, b_data = payload(80_000, seed), payload(50_000, seed + 3)
    # run part of the way, hand both ends over, then let converse() finish the job
    sent = {"a": 0, "b": 0}
    got = {"a": bytearray(), "b": bytearray()}

    def part() -> bool:
        for name, data in (("a", a_data), ("b", b_data)):
            c = getattr(net, name)
            if c.state is S.ESTABLISHED and sent[name] < len(data):
                sent[name] += c.send(data[sent[name]:sent[name] + 3000], net.now)
            got[name] += c.recv()
        return sent["a"] > 30_000 and sent["b"] > 20_000
    net.run(part, max_time=300)
    assert net.a.state is S.ESTABLISHED
    hand_over(net, "a")
    hand_over(net, "b")
    rest_a, rest_b = converse(net, a_data[sent["a"]:], b_data[sent["b"]:])
    assert bytes(got["b"]) + rest_b == a_data and bytes(got["a"]) + rest_a == b_data
    assert net.a.state is S.CLOSED and net.b.state is S.CLOSED


def test_segments_in_flight_lost_at_the_hand_over_are_recovered():
    from .test_transfer import converse
    a, b = pair()
    b.listen()
    net = Net(a, b, delay=0.05)
    a.connect(net.now)
    data = payload(100_000, 7)
    net.run(lambda: a.state is S.ESTABLISHED)
    sent = a.send(data, net.now)
    net.run(lambda: len(net._flight) > 10)
    net._flight.clear()                      # the old process died with them
    hand_over(net, "a")
    hand_over(net, "b")
    got_a, got_b = converse(net, data[sent:], b"")
    # nobody read b before the hand-over: its buffer moved with it
    assert got_b == data and got_a == b""
    assert net.a.stats["rto_expired"] > 0


def test_deadlines_move_by_the_clock_shift():
    c, p = established(now=0.0)
    c.send(b"x" * 100, 1.0)
    d = c.next_deadline()
    c2 = Connection.from_snapshot(through_msgpack(c), 1000.0)
    assert c2.next_deadline() == pytest.approx(d + 1000.0)
    assert c2.rtt_time == pytest.approx(c.rtt_time + 1000.0)
    c3 = Connection.from_snapshot(through_msgpack(c), now_offset=-0.5)
    assert c3.next_deadline() == pytest.approx(d - 0.5)


def test_a_closed_or_listening_connection_restores_too():
    c, _ = established()
    c.abort(1.0)
    assert Connection.from_snapshot(c.snapshot()).state is S.CLOSED
    a, b = pair()
    b.listen()
    assert Connection.from_snapshot(b.snapshot()).state is S.LISTEN


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("tcb"),
    lambda d: d.__setitem__("format", 99),
    lambda d: d["tcb"].__setitem__("snd_una", -1),
    lambda d: d["tcb"].__setitem__("snd_una", 1 << 40),
    lambda d: d["tcb"].__setitem__("rtx_deadline", "soon"),
    lambda d: d["tcb"].__setitem__("rtx_deadline", float("nan")),
    lambda d: d.__setitem__("state", "LIMBO"),
    lambda d: d.__setitem__("sndbuf", "text"),
    lambda d: d.__setitem__("sndbuf", b"x" * (1 << 20)),
    lambda d: d.__setitem__("ooo", [[1, 2]]),
    lambda d: d.__setitem__("ooo", {"a": 1}),
    lambda d: d.__setitem__("local", ["not an address", 1]),
    lambda d: d.__setitem__("remote", ["::1", 80]),
    lambda d: d["config"].__setitem__("mss", "big"),
    lambda d: d["config"].__setitem__("colour", 3),
    lambda d: d.__setitem__("isn_key", b"short"),
    lambda d: d["rto"].__setitem__("rto", 0),
    lambda d: d.__setitem__("events", ["EXPLODED"]),
    lambda d: d.__setitem__("out", [[1, 2]]),
    lambda d: d.__setitem__("stats", {"x": "y"}),
])
def test_a_malformed_snapshot_raises_value_error(mutate):
    c, p = established(now=0.0)
    c.send(b"x" * 3000, 1.0)
    d = through_msgpack(c)
    mutate(d)
    with pytest.raises(ValueError):
        Connection.from_snapshot(d)


json_like = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats()
                         | st.text(max_size=5) | st.binary(max_size=8),
                         lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch,
                                                                               max_size=4),
                         max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_damage_to_a_snapshot_gives_value_error_or_a_connection(data):
    c, p = established(now=0.0)
    c.send(b"x" * 3000, 1.0)
    d = through_msgpack(c)
    section = data.draw(st.sampled_from(sorted(d)))
    if isinstance(d[section], dict) and d[section] and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(d[section])))
        d[section][key] = data.draw(json_like)
    else:
        d[section] = data.draw(json_like)
    try:
        c2 = Connection.from_snapshot(d)
    except ValueError:
        return
    c2.poll(5.0)
    c2.send(b"y" * 10, 5.0) if c2.state is S.ESTABLISHED else None
    c2.take_segments()
