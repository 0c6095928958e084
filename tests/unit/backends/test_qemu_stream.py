"""StreamBackend against real unix stream sockets; the test plays QEMU's client side."""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import tempfile
import time

import pytest

from components.ethdriver.backends.base import MAX_FRAME_LEN
from components.ethdriver.backends.qemu_stream import StreamBackend, listen_stream


def frame(i: int, size: int = 60) -> bytes:
    body = i.to_bytes(4, "big") * (size // 4 + 1)
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + body[: size - 14]


def encode(*frames: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in frames)


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="qnb", dir="/tmp")  # unix socket paths must stay under 108 bytes
    try:
        yield os.path.join(d, "s")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def backend(sock_path):
    b = StreamBackend(listen_stream(sock_path))
    try:
        yield b
    finally:
        b.close()


def connect(path: str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(2.0)
    c.connect(path)
    return c


def accept(backend: StreamBackend) -> None:
    assert readable(backend.fileno(), 2.0), "pending connection did not make fileno() readable"
    assert backend.read_batch() == []
    assert backend.link_up()


def recv_frames(c: socket.socket, n: int, timeout: float = 2.0) -> list[bytes]:
    """Read n length-prefixed frames as QEMU would."""
    buf = b""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        if len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if len(buf) >= 4 + length:
                out.append(buf[4:4 + length])
                buf = buf[4 + length:]
                continue
        assert time.monotonic() < deadline, f"got {len(out)} of {n} frames"
        c.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = c.recv(1 << 20)
        assert chunk, "peer closed"
        buf += chunk
    return out


def test_link_is_down_until_qemu_connects(backend, sock_path):
    assert not backend.link_up()
    assert not readable(backend.fileno())
    assert backend.read_batch() == []
    c = connect(sock_path)
    try:
        accept(backend)
        assert backend.counters()["connects"] == 1
        c.sendall(encode(frame(1)))
        assert readable(backend.fileno(), 2.0)
        assert backend.read_batch() == [frame(1)]
    finally:
        c.close()


def test_frames_split_at_every_byte_boundary_are_reassembled(backend, sock_path):
    frames = [frame(1, 60), frame(2, 75)]
    data = encode(*frames)
    c = connect(sock_path)
    try:
        accept(backend)
        for cut in range(1, len(data)):
            c.sendall(data[:cut])
            got = backend.read_batch()
            c.sendall(data[cut:])
            got += backend.read_batch()
            assert got == frames, f"split at byte {cut}"
            assert backend.rx_residue() == b""
        assert backend.counters()["rx_frames"] == 2 * (len(data) - 1)
        assert backend.counters()["protocol_errors"] == 0
    finally:
        c.close()


def test_several_frames_in_one_read_and_the_batch_bound_leaves_the_rest_readable(backend, sock_path):
    frames = [frame(i, 60 + i) for i in range(50)]
    c = connect(sock_path)
    try:
        accept(backend)
        c.sendall(encode(*frames))
        first = backend.read_batch(max_frames=20)
        assert first == frames[:20]
        assert readable(backend.fileno()), "frames left in the kernel must keep fileno() readable"
        rest = backend.read_batch()
        assert rest == frames[20:]
        assert not readable(backend.fileno())
        c.sendall(encode(*frames))
        assert backend.read_batch() == frames  # one call returns everything queued
    finally:
        c.close()


def test_byte_bound_is_respected_to_within_one_frame(backend, sock_path):
    frames = [frame(i, 1000) for i in range(10)]
    c = connect(sock_path)
    try:
        accept(backend)
        c.sendall(encode(*frames))
        got = backend.read_batch(max_bytes=2500)
        assert got == frames[:3]
        assert backend.read_batch() == frames[3:]
    finally:
        c.close()


@pytest.mark.parametrize("bad_length", [0, MAX_FRAME_LEN + 1, 0xFFFFFFFF])
def test_invalid_length_prefix_drops_connection_and_next_peer_is_accepted(backend, sock_path, bad_length):
    c = connect(sock_path)
    try:
        accept(backend)
        c.sendall(encode(frame(1)) + struct.pack(">I", bad_length) + b"junk")
        assert backend.read_batch() == [frame(1)]
        assert not backend.link_up()
        counters = backend.counters()
        assert counters["protocol_errors"] == 1
        assert counters["disconnects"] == 1
        try:
            end = c.recv(100)
        except ConnectionResetError:  # we closed with its bytes unread
            end = b""
        assert end == b"", "QEMU must see the connection end"
    finally:
        c.close()
    c2 = connect(sock_path)
    try:
        accept(backend)
        c2.sendall(encode(frame(2)))
        assert backend.read_batch() == [frame(2)]
    finally:
        c2.close()


def test_peer_disconnect_takes_link_down_and_drops_writes_until_reconnect(backend, sock_path):
    c = connect(sock_path)
    accept(backend)
    c.close()
    assert readable(backend.fileno(), 2.0)
    assert backend.read_batch() == []
    assert not backend.link_up()
    assert backend.counters()["disconnects"] == 1
    assert backend.write_batch([frame(1), frame(2)]) == 0
    assert backend.counters()["tx_dropped"] == 2
    c2 = connect(sock_path)
    try:
        accept(backend)
        assert backend.counters()["connects"] == 2
        assert backend.write_batch([frame(3)]) == 1
        assert recv_frames(c2, 1) == [frame(3)]
    finally:
        c2.close()


def test_partial_writes_are_completed_in_order_and_excess_is_dropped(sock_path):
    limit = 256 * 1024
    backend = StreamBackend(listen_stream(sock_path), tx_pending_limit=limit)
    c = connect(sock_path)
    try:
        accept(backend)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frames = [frame(i, 9000) for i in range(200)]  # ~1.8 MB: far more than both buffers
        accepted = backend.write_batch(frames)
        assert backend.want_write()
        assert accepted < len(frames)
        counters = backend.counters()
        assert counters["tx_dropped"] == len(frames) - accepted
        assert 0 < counters["tx_pending_bytes"] <= limit
        assert not readable(backend.fileno()), "nothing to do until QEMU reads"
        got: list[bytes] = []
        buf = b""
        c.setblocking(False)
        deadline = time.monotonic() + 5.0
        while backend.want_write() or len(got) < accepted:
            assert time.monotonic() < deadline
            try:
                buf += c.recv(1 << 20)
            except BlockingIOError:
                pass
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">I", buf)[0]:
                n = struct.unpack_from(">I", buf)[0]
                got.append(buf[4:4 + n])
                buf = buf[4 + n:]
            if readable(backend.fileno(), 0.01):
                backend.read_batch()  # completes pending writes as well
        assert got == frames[:accepted]
        assert backend.counters()["tx_frames"] == accepted
        assert backend.counters()["tx_pending_bytes"] == 0
    finally:
        c.close()
        backend.close()


def test_successor_continues_mid_frame_from_handed_over_handles(backend, sock_path):
    c = connect(sock_path)
    try:
        accept(backend)
        data = encode(frame(1), frame(2))
        c.sendall(data[:70])  # frame 1 and 2 bytes of frame 2's prefix... then some
        assert backend.read_batch() == [frame(1)]
        listen_fd, conn_fd = backend.handles()
        assert conn_fd is not None
        residue = backend.rx_residue()
        assert residue == data[64:70]
        # The launcher holds duplicates; the old incarnation closes its own copies.
        held = (os.dup(listen_fd), os.dup(conn_fd))
        backend.close()
        successor = StreamBackend.from_handles(held[0], held[1], partial_rx=residue)
        try:
            assert successor.link_up()
            c.sendall(data[70:])
            assert readable(successor.fileno(), 2.0)
            assert successor.read_batch() == [frame(2)]
            assert successor.write_batch([frame(3)]) == 1
            assert recv_frames(c, 1) == [frame(3)]
        finally:
            successor.close()
    finally:
        c.close()


def test_crashed_driver_leaves_unread_frames_whole_in_the_kernel(backend, sock_path):
    c = connect(sock_path)
    try:
        accept(backend)
        c.sendall(encode(frame(1), frame(2), frame(3)))
        assert backend.read_batch(max_frames=1) == [frame(1)]
        _, conn_fd = backend.handles()
        listen_fd = backend.handles()[0]
        held = (os.dup(listen_fd), os.dup(conn_fd))
        backend.close()  # no residue handed over, as after a crash
        successor = StreamBackend.from_handles(held[0], held[1])
        try:
            assert successor.read_batch() == [frame(2), frame(3)]
        finally:
            successor.close()
    finally:
        c.close()


def test_tx_residue_lets_successor_finish_a_partially_sent_frame(sock_path):
    backend = StreamBackend(listen_stream(sock_path))
    c = connect(sock_path)
    try:
        accept(backend)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = [frame(i, 60000) for i in range(12)]  # > 32 KiB: the kernel may split these
        accepted = backend.write_batch(big)
        assert backend.want_write()
        residue = backend.tx_residue()
        assert residue
        listen_fd, conn_fd = backend.handles()
        held = (os.dup(listen_fd), os.dup(conn_fd))
        backend.close()
        successor = StreamBackend.from_handles(held[0], held[1], partial_tx=residue)
        try:
            c.setblocking(False)
            buf = b""
            deadline = time.monotonic() + 5.0
            while successor.want_write() or len(buf) < sum(4 + len(f) for f in big[:accepted]):
                assert time.monotonic() < deadline
                try:
                    buf += c.recv(1 << 20)
                except BlockingIOError:
                    successor.flush()
            assert buf == encode(*big[:accepted])
        finally:
            successor.close()
    finally:
        c.close()


def test_listen_stream_replaces_stale_socket_and_refuses_live_or_regular_files(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)
    s.close()  # a stale socket file stays behind
    live = listen_stream(sock_path)
    try:
        with pytest.raises(FileExistsError, match="in use"):
            listen_stream(sock_path)
    finally:
        live.close()
    os.unlink(sock_path)
    with open(sock_path, "w") as f:
        f.write("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        listen_stream(sock_path)


def test_fileno_is_stable_across_connect_and_disconnect(backend, sock_path):
    fd = backend.fileno()
    c = connect(sock_path)
    accept(backend)
    assert backend.fileno() == fd
    c.close()
    assert readable(fd, 2.0)
    backend.read_batch()
    assert backend.fileno() == fd and not backend.link_up()
