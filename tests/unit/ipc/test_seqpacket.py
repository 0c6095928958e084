"""The same-host data channel (ipc.seqpacket): framing, bounds, counters, hand-over of queued batches."""
from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ipc import errors
from ipc.protocols.device import DEVICE
from ipc.seqpacket import (HEADER, KIND_BATCH, MAGIC, VERSION, PacketCodec, SeqpacketProvider, SeqpacketUser,
                           make_pair, recv_channel, send_channel)


@pytest.fixture
def pair():
    a, b = make_pair()
    prov = SeqpacketProvider(DEVICE, {"p0": os.dup(a.fileno())})
    user = SeqpacketUser(DEVICE, os.dup(b.fileno()), b"p0")
    yield a, b, prov, user
    prov.close()
    user.close()
    a.close()
    b.close()


def _drain_user(user):
    got = []
    while user.receive(lambda stream, frames: got.append((stream, frames)), lambda n, e: got.append((n, e))):
        pass
    return got


def _drain_provider(prov):
    got = []
    end = prov.peers[b"p0"]
    while end.receive(lambda stream, frames: got.append((stream, frames)), lambda n, e: got.append((n, e))):
        pass
    return got


def test_batch_travels_whole_and_in_order(pair):
    _a, _b, prov, user = pair
    frames = [bytes([i]) * (60 + i) for i in range(200)]
    assert user.send_batch("rx", frames)
    assert user.send_batch("rx", [b"second"])
    got = _drain_provider(prov)
    assert got == [("rx", frames), ("rx", [b"second"])]
    assert prov.counters["rx_batches"] == 2 and prov.counters["rx_frames"] == 201


def test_events_and_batches_keep_their_order(pair):
    _a, _b, prov, user = pair
    user.send_event("link", port="p0", up=True, mtu=1500)
    user.send_batch("rx", [b"x" * 64])
    got = _drain_provider(prov)
    assert got[0][0] == "link" and got[0][1].up is True
    assert got[1] == ("rx", [b"x" * 64])


def test_a_stream_flowing_the_other_way_is_refused_at_the_sender(pair):
    _a, _b, prov, user = pair
    with pytest.raises(errors.InvalidArgument):
        user.send_batch("tx", [b"x"])
    with pytest.raises(errors.InvalidArgument):
        prov.send_batch(b"p0", "rx", [b"x"])


def test_a_batch_larger_than_one_message_is_split_not_lost(pair):
    _a, _b, prov, user = pair
    end = user.end
    end.max_message = 20000
    frames = [bytes([i % 256]) * 1500 for i in range(40)]
    assert user.send_batch("rx", frames)
    got = _drain_provider(prov)
    assert len(got) > 1 and user.counters["tx_split"] == len(got) - 1
    assert [f for _s, fs in got for f in fs] == frames


def test_a_full_channel_drops_and_counts_without_blocking(pair):
    _a, _b, prov, user = pair
    frames = [b"z" * 1400] * 256
    sent = 0
    for _ in range(200):
        if not user.send_batch("rx", frames):
            break
        sent += 1
    else:
        pytest.fail("the channel never filled up: its queue is not bounded")
    assert user.counters["tx_dropped_batches"] == 1 and user.counters["tx_dropped_frames"] == 256
    assert not user.writable()
    got = _drain_provider(prov)
    assert len(got) == sent  # everything accepted was delivered
    assert user.writable()


def test_queued_batches_wait_for_the_next_incarnation(pair):
    """The launcher holds the socket: a reader that goes away leaves the queue to its successor."""
    a, _b, prov, user = pair
    for i in range(5):
        user.send_batch("rx", [b"frame-%d" % i])
    first = SeqpacketProvider(DEVICE, {"p0": os.dup(a.fileno())})
    got = []
    for _ in range(2):
        first.peers[b"p0"].receive(lambda s, f: got.append(f), lambda n, e: None, limit=1)
    first.close()      # the predecessor exits after reading two batches
    successor = SeqpacketProvider(DEVICE, {"p0": os.dup(a.fileno())})
    while successor.peers[b"p0"].receive(lambda s, f: got.append(f), lambda n, e: None):
        pass
    successor.close()
    assert got == [[b"frame-%d" % i] for i in range(5)]


def _raw_send(sock: socket.socket, data: bytes):
    sock.send(data)


def _header(kind=KIND_BATCH, stream=0, count=1, magic=MAGIC, version=VERSION):
    return HEADER.pack(magic, version, kind, stream, 0, 1, count)


MALFORMED = {
    "empty-ish": b"Q",
    "garbage": b"\xff" * 40,
    "bad magic": _header(magic=b"ZZ") + struct.pack("<II", 0, 1) + b"x",
    "bad version": _header(version=9) + struct.pack("<II", 0, 1) + b"x",
    "unknown kind": _header(kind=ord("Z")),
    "unknown stream": _header(stream=7) + struct.pack("<II", 0, 1) + b"x",
    "wrong direction": _header(stream=1) + struct.pack("<II", 0, 1) + b"x",
    "truncated offsets": _header(count=3) + struct.pack("<II", 0, 1),
    "offsets past the end": _header(count=1) + struct.pack("<II", 0, 99) + b"x",
    "offsets backwards": _header(count=2) + struct.pack("<III", 0, 5, 2) + b"abcde"[:2],
    "too many frames": _header(count=5000) + b"\0" * (4 * 5001),
    "oversized frame": _header(count=1) + struct.pack("<II", 0, 70000) + b"x" * 70000,
    "event without name": HEADER.pack(MAGIC, VERSION, ord("E"), 0, 0, 0, 0) + b"\x05",
    "unknown event": HEADER.pack(MAGIC, VERSION, ord("E"), 0, 0, 0, 0) + b"\x03\x00abc\x80",
    "event body wrong": HEADER.pack(MAGIC, VERSION, ord("E"), 0, 0, 0, 0) + b"\x04\x00link\x01",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_counted_and_dropped(pair, name):
    _a, b, prov, _user = pair
    _raw_send(b, MALFORMED[name])
    _raw_send(b, _header(count=1) + struct.pack("<II", 0, 4) + b"good")
    got = _drain_provider(prov)
    assert got == [("rx", [b"good"])], name
    assert prov.counters["rx_bad"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_parsed_or_refused_never_raise_otherwise(data):
    codec = PacketCodec(DEVICE, "to_provider")
    try:
        kind, _name, value = codec.parse(memoryview(data))
    except errors.BadMessage:
        return
    assert kind in ("batch", "event")


def test_channel_control_message_carries_the_fd():
    ctl_a, ctl_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctl_b.setblocking(False)
    a, b = make_pair()
    try:
        assert recv_channel(ctl_b) is None
        send_channel(ctl_a, "add", "qnet.device", "p7", a.fileno())
        m, fd = recv_channel(ctl_b)
        assert m == {"op": "add", "protocol": "qnet.device", "peer": "p7"}
        assert os.fstat(fd).st_ino == os.fstat(a.fileno()).st_ino
        os.close(fd)
        ctl_a.send(b"\x91\x01")   # MessagePack, but not a channel message
        with pytest.raises(errors.BadMessage):
            recv_channel(ctl_b)
    finally:
        for s in (ctl_a, ctl_b, a, b):
            s.close()


def test_a_receiver_killed_while_handling_a_batch_leaves_it_to_its_successor(pair):
    """MSG_PEEK, then take: SIGKILL in the middle of a batch loses nothing that reached the channel."""
    a, _b, _prov, user = pair
    user.send_batch("rx", [b"in-flight"])
    user.send_batch("rx", [b"next"])
    pid = os.fork()
    if pid == 0:  # the doomed incarnation: dies inside the handler, before the batch is taken
        doomed = SeqpacketProvider(DEVICE, {"p0": os.dup(a.fileno())})
        doomed.peers[b"p0"].receive(lambda s, f: os._exit(9), lambda n, e: None)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    successor = SeqpacketProvider(DEVICE, {"p0": os.dup(a.fileno())})
    got = []
    while successor.peers[b"p0"].receive(lambda s, f: got.append(f), lambda n, e: None):
        pass
    successor.close()
    assert got == [[b"in-flight"], [b"next"]]


def test_a_handler_that_raises_does_not_leave_its_batch_to_be_read_again(pair):
    _a, _b, prov, user = pair
    user.send_batch("rx", [b"poison"])
    user.send_batch("rx", [b"good"])
    end = prov.peers[b"p0"]
    with pytest.raises(RuntimeError):
        end.receive(lambda s, f: (_ for _ in ()).throw(RuntimeError("bug")), lambda n, e: None)
    got = []
    end.receive(lambda s, f: got.append(f), lambda n, e: None)
    assert got == [[b"good"]]


def test_a_channels_occupancy_and_drops_are_reported_per_user(pair):
    _a, _b, prov, user = pair
    assert prov.tables() == {"p0": (0, prov.peers[b"p0"].sndbuf, 0)}
    prov.send_batch(b"p0", "tx", [b"x" * 1000] * 4)
    queued, bound, dropped = prov.tables()["p0"]
    assert 4000 <= queued <= bound and dropped == 0
    while prov.send_batch(b"p0", "tx", [b"y" * 1400] * 256):
        pass
    queued, bound, dropped = prov.tables()["p0"]
    assert dropped == 256 and queued > bound // 2
    while user.receive(lambda s, f: None, lambda n, e: None):
        pass
    assert prov.tables()["p0"][0] == 0
