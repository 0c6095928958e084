"""DgramBackend against real unix datagram sockets; the test plays QEMU's side."""

from __future__ import annotations

import os
import select
import shutil
import socket
import tempfile
import time

import pytest

from components.ethdriver.backends.qemu_dgram import DgramBackend, open_dgram


def frame(i: int, size: int = 60) -> bytes:
    return (b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x88\xb5" + i.to_bytes(4, "big") * size)[:size]


@pytest.fixture
def paths():
    d = tempfile.mkdtemp(prefix="qnb", dir="/tmp")
    try:
        yield os.path.join(d, "qemu"), os.path.join(d, "ours")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def qemu_socket(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    return s


def test_send_while_qemu_is_missing_is_dropped_then_works_once_it_appears(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path)
    try:
        assert not b.link_up()
        assert b.write_batch([frame(1), frame(2)]) == 0
        c = b.counters()
        assert c["tx_dropped"] == 2 and c["tx_peer_missing"] == 2 and c["tx_frames"] == 0
        assert not b.link_up()
        q = qemu_socket(qemu_path)
        try:
            assert b.write_batch([frame(3), frame(4)]) == 2
            assert b.link_up()
            assert q.recv(2048) == frame(3)
            assert q.recv(2048) == frame(4)
            q.close()  # QEMU exits, leaving its socket file behind
            assert b.write_batch([frame(5)]) == 0
            assert not b.link_up()
            assert b.counters()["tx_peer_missing"] == 3
        finally:
            q.close()
    finally:
        b.close()


def test_receiving_from_qemu_brings_link_up_and_batches_all_queued_frames(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path)
    q = qemu_socket(qemu_path)
    try:
        assert not select.select([b.fileno()], [], [], 0)[0]
        # A unix datagram queue holds net.unix.max_dgram_qlen (10 by default) datagrams.
        frames = [frame(i, 60 + i) for i in range(10)]
        for f in frames:
            q.sendto(f, ours)
        assert select.select([b.fileno()], [], [], 2.0)[0]
        assert b.read_batch(max_frames=4) == frames[:4]
        assert b.link_up()
        assert select.select([b.fileno()], [], [], 0)[0]
        assert b.read_batch() == frames[4:]
        assert b.read_batch() == []
        assert not select.select([b.fileno()], [], [], 0)[0]
        assert b.counters()["rx_frames"] == 10
    finally:
        q.close()
        b.close()


def test_burst_beyond_qemus_queue_is_held_and_flushed_in_order_when_writable(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path, tx_pending_limit=100 * 1000)
    q = qemu_socket(qemu_path)
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            qlen = int(f.read())
        total = qlen + 1 + 150
        frames = [frame(i, 1000) for i in range(total)]
        accepted = b.write_batch(frames)
        counters = b.counters()
        assert counters["tx_pending_frames"] == 100  # the pending bound, in bytes, holds 100
        assert counters["tx_frames"] == qlen + 1  # what fit in QEMU's queue
        assert accepted == counters["tx_frames"] + 100
        assert counters["tx_dropped"] == total - accepted
        assert b.want_write()
        assert not select.select([b.fileno()], [], [], 0)[0], "QEMU's queue is still full"
        got: list[bytes] = []
        q.setblocking(False)
        deadline = time.monotonic() + 5.0
        while len(got) < accepted:
            assert time.monotonic() < deadline
            try:
                while True:
                    got.append(q.recv(2048))
            except BlockingIOError:
                pass
            if select.select([b.fileno()], [], [], 0.01)[0]:
                b.read_batch()  # flushes the pending queue
        assert got == frames[:accepted]
        assert not b.want_write()
        assert b.counters()["tx_frames"] == accepted
    finally:
        q.close()
        b.close()


def test_qemu_restart_at_the_same_path_is_followed(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path)
    q = qemu_socket(qemu_path)
    try:
        assert b.write_batch([frame(1)]) == 1
        assert q.recv(2048) == frame(1)
        q.close()
        os.unlink(qemu_path)
        q = qemu_socket(qemu_path)  # the new QEMU binds the same path
        assert b.write_batch([frame(2)]) == 1
        assert q.recv(2048) == frame(2)
        q.sendto(frame(3), ours)
        assert b.read_batch() == [frame(3)]
        assert b.link_up()
    finally:
        q.close()
        b.close()


def test_datagrams_from_anyone_but_qemu_are_dropped_and_counted(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path)
    intruder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        intruder.bind(qemu_path + "x")
        intruder.sendto(frame(1), ours)
        assert b.read_batch() == []
        assert b.counters()["rx_foreign"] == 1
        assert not b.link_up()
    finally:
        intruder.close()
        b.close()


def test_full_size_frame_passes_and_buffers_are_enlarged(paths):
    qemu_path, ours = paths
    sock = open_dgram(ours)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 212992
    b = DgramBackend(sock, qemu_path)
    q = qemu_socket(qemu_path)
    try:
        big = frame(7, 65000)
        q.sendto(big, ours)
        assert b.read_batch() == [big]
    finally:
        q.close()
        b.close()


def test_open_dgram_replaces_stale_file_and_refuses_a_live_socket(paths):
    _, ours = paths
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(ours)
    stale.close()
    s = open_dgram(ours)
    try:
        with pytest.raises(FileExistsError):
            open_dgram(ours)
    finally:
        s.close()


def test_successor_built_from_the_same_fd_keeps_receiving(paths):
    qemu_path, ours = paths
    b = DgramBackend(open_dgram(ours), qemu_path)
    q = qemu_socket(qemu_path)
    try:
        held = os.dup(b.handles()[0])  # the launcher's copy
        b.close()
        q.sendto(frame(9), ours)
        successor = DgramBackend(held, qemu_path)
        try:
            assert successor.read_batch() == [frame(9)]
        finally:
            successor.close()
    finally:
        q.close()
