"""QEMU ``-netdev stream`` (unix socket, QEMU connects): qnet listens, QEMU is the client.

Framing (QEMU net/stream.c): each frame is a 4-byte big-endian length followed by the bare
Ethernet frame. QEMU 7.2 never reconnects, so the listener must exist before QEMU starts and the
accepted connection must outlive a driver restart: the launcher holds both, and a successor
driver continues with ``StreamBackend.from_handles``.

Restart safety, by construction rather than by hand-over where possible:

* rx: bytes are peeked (MSG_PEEK) and only whole frames are consumed from the kernel, so the
  kernel queue almost always starts at a frame boundary and a driver killed at any moment leaves
  nothing behind. Only a frame that has not fully arrived is moved into process memory
  (``rx_residue()``), which a planned restart hands to the successor.
* tx: one frame per send(). For frames up to 32 KiB the kernel queues a unix stream send as one
  skb, all or nothing, so a partial frame on the wire needs a frame larger than that; its tail,
  and every frame queued behind it, is ``tx_residue()``.

``fileno()`` is an epoll fd that stays the same for the life of the object: it watches the
listening socket while no peer is connected and the connection afterwards (plus writability
while a partial write is pending). Poll it for POLLIN; on readiness call ``read_batch()``.
"""

from __future__ import annotations

import select
import socket
import struct
from collections import deque
from collections.abc import Iterable

from ._unix import as_socket, remove_stale_socket
from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, MAX_FRAME_LEN, Backend, new_counters

_LEN = struct.Struct(">I")
_pack_len = _LEN.pack
_unpack_len = _LEN.unpack_from
# Larger than one maximal frame plus its prefix, so a full peek always holds a complete frame.
PEEK_SIZE = 256 * 1024
DEFAULT_TX_PENDING_LIMIT = 1 << 20

_EP_CONN = select.EPOLLIN | select.EPOLLRDHUP


def listen_stream(path: str, backlog: int = 1) -> socket.socket:
    """The launcher's listening socket for QEMU's ``addr.path=PATH``; removes a stale file first."""
    remove_stale_socket(path, socket.SOCK_STREAM)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class StreamBackend(Backend):
    """Accepts one QEMU connection at a time and moves length-prefixed frames over it."""

    def __init__(self, listen_sock: socket.socket | int, *, mtu: int = 1500,
                 tx_pending_limit: int = DEFAULT_TX_PENDING_LIMIT) -> None:
        self._listen = as_socket(listen_sock)
        self._listen.setblocking(False)
        self._conn: socket.socket | None = None
        self._mtu = mtu
        self._rx_residue = b""
        # Pending tx: (bytes still to send, frames that complete when it is sent).
        self._tx: deque[tuple[memoryview, int]] = deque()
        self._tx_pending_bytes = 0
        self._tx_pending_limit = tx_pending_limit
        self._scratch = bytearray(PEEK_SIZE)
        self._epoll = select.epoll()
        self._epoll.register(self._listen.fileno(), select.EPOLLIN)
        self._counters = new_counters("connects", "disconnects", "protocol_errors")
        self._closed = False

    @classmethod
    def from_handles(cls, listen_sock: socket.socket | int, conn_sock: socket.socket | int | None,
                     partial_rx: bytes = b"", partial_tx: bytes = b"", **kw: object) -> "StreamBackend":
        """Continue where a predecessor stopped: its connection and its rx/tx residues."""
        backend = cls(listen_sock, **kw)  # type: ignore[arg-type]
        if conn_sock is not None:
            backend._attach(as_socket(conn_sock))
            backend._rx_residue = bytes(partial_rx)
            if partial_tx:
                backend._queue_tx(memoryview(bytes(partial_tx)), 0)
        return backend

    # -- handles for the launcher ------------------------------------------------------------

    def handles(self) -> tuple[int, int | None]:
        """(listening fd, connection fd or None): what the launcher should hold right now."""
        return self._listen.fileno(), (self._conn.fileno() if self._conn is not None else None)

    def rx_residue(self) -> bytes:
        """Bytes of a frame that has not fully arrived; give them to the successor."""
        return self._rx_residue

    def tx_residue(self) -> bytes:
        """Unsent bytes, starting with the tail of a partially sent frame; the successor sends
        them first, or the stream loses its framing."""
        return b"".join(bytes(v) for v, _ in self._tx)

    # -- connection state --------------------------------------------------------------------

    def _attach(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._epoll.unregister(self._listen.fileno())
        self._conn = conn
        self._epoll.register(conn.fileno(), _EP_CONN)
        self._counters["connects"] += 1

    def _accept(self) -> None:
        try:
            conn, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._counters["rx_errors"] += 1
            return
        self._attach(conn)

    def _drop_connection(self, reason: str) -> None:
        """Forget the peer and accept the next one. shutdown() ends the connection even though
        the launcher holds a copy of the fd; QEMU sees the hang-up."""
        conn = self._conn
        assert conn is not None
        self._counters[reason] += 1
        self._epoll.unregister(conn.fileno())
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()
        self._conn = None
        self._rx_residue = b""
        self._counters["tx_dropped"] += sum(n for _, n in self._tx)
        self._tx.clear()
        self._tx_pending_bytes = 0
        self._epoll.register(self._listen.fileno(), select.EPOLLIN)

    def link_up(self) -> bool:
        return self._conn is not None

    @property
    def mtu(self) -> int:
        return self._mtu

    def fileno(self) -> int:
        return self._epoll.fileno()

    # -- rx ----------------------------------------------------------------------------------

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        if self._conn is None:
            self._accept()
        if self._tx:
            self.flush()
        frames: list[bytes] = []
        total = 0
        c = self._counters
        while self._conn is not None and len(frames) < max_frames and total < max_bytes:
            conn = self._conn
            try:
                data = conn.recv(PEEK_SIZE, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                c["rx_errors"] += 1
                self._drop_connection("disconnects")
                break
            if not data:
                self._drop_connection("disconnects")
                break
            residue = self._rx_residue
            buf = residue + data if residue else data
            end = len(buf)
            off = 0
            bad = False
            while len(frames) < max_frames and total < max_bytes and end - off >= 4:
                (length,) = _unpack_len(buf, off)
                if length == 0 or length > MAX_FRAME_LEN:
                    bad = True
                    break
                stop = off + 4 + length
                if stop > end:
                    break
                frames.append(buf[off + 4:stop])
                total += length
                off = stop
            if bad:
                # Frames before the bad prefix are good; after it the stream has no framing left.
                c["protocol_errors"] += 1
                self._drop_connection("disconnects")
                break
            limited = len(frames) >= max_frames or total >= max_bytes
            if limited or len(data) == PEEK_SIZE:
                # Take only whole frames; the rest stays in the kernel, which keeps the fd
                # readable for the next batch.
                take = off - len(residue) if off else 0
                self._rx_residue = b"" if off else residue
            else:
                # Everything available was peeked: keep a partial tail in memory (rare: it
                # means the peer is in the middle of writing a frame).
                take = len(data)
                self._rx_residue = buf[off:]
            if not take:
                break
            if not self._consume(take):
                break
        c["rx_frames"] += len(frames)
        c["rx_bytes"] += total
        return frames

    def _consume(self, n: int) -> bool:
        """Remove ``n`` already-peeked bytes from the kernel queue."""
        assert self._conn is not None
        view = memoryview(self._scratch)
        while n:
            try:
                got = self._conn.recv_into(view, min(n, PEEK_SIZE))
            except OSError:
                got = 0
            if got == 0:
                self._counters["rx_errors"] += 1
                self._drop_connection("disconnects")
                return False
            n -= got
        return True

    # -- tx ----------------------------------------------------------------------------------

    def want_write(self) -> bool:
        return bool(self._tx)

    def _queue_tx(self, view: memoryview, frames: int) -> None:
        was_empty = not self._tx
        self._tx.append((view, frames))
        self._tx_pending_bytes += len(view)
        if was_empty and self._conn is not None:
            self._epoll.modify(self._conn.fileno(), _EP_CONN | select.EPOLLOUT)

    def write_batch(self, frames: Iterable[bytes]) -> int:
        c = self._counters
        if self._conn is None:
            c["tx_dropped"] += sum(1 for _ in frames)
            return 0
        accepted = 0
        for frame in frames:
            length = len(frame)
            if length == 0 or length > MAX_FRAME_LEN:
                c["tx_errors"] += 1
                c["tx_dropped"] += 1
                continue
            if self._conn is None:  # dropped while writing this batch
                c["tx_dropped"] += 1
                continue
            data = _pack_len(length) + frame
            if self._tx:  # keep order behind what is already waiting
                if self._tx_pending_bytes + len(data) > self._tx_pending_limit:
                    c["tx_dropped"] += 1
                    continue
                self._queue_tx(memoryview(data), 1)
                accepted += 1
                continue
            try:
                sent = self._conn.send(data, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                c["tx_dropped"] += 1
                self._drop_connection("disconnects")
                continue
            accepted += 1
            if sent == len(data):
                c["tx_frames"] += 1
                c["tx_bytes"] += length
            else:
                self._queue_tx(memoryview(data)[sent:], 1)
        return accepted

    def flush(self) -> int:
        c = self._counters
        done = 0
        while self._tx and self._conn is not None:
            view, nframes = self._tx[0]
            try:
                sent = self._conn.send(view, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop_connection("disconnects")
                return done
            self._tx_pending_bytes -= sent
            if sent < len(view):
                self._tx[0] = (view[sent:], nframes)
                break
            self._tx.popleft()
            if nframes:
                done += nframes
                c["tx_frames"] += nframes
                c["tx_bytes"] += len(view.obj) - 4
        if not self._tx and self._conn is not None:
            self._epoll.modify(self._conn.fileno(), _EP_CONN)
        return done

    def counters(self) -> dict[str, int]:
        out = dict(self._counters)
        out["tx_pending_bytes"] = self._tx_pending_bytes
        out["tx_pending_frames"] = sum(n for _, n in self._tx)
        return out

    def close(self) -> None:
        """Close this process's copies; the connection itself lives on in the launcher's copy
        (no shutdown here: a successor driver continues on it)."""
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._listen.close()
