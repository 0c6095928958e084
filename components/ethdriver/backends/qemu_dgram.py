"""QEMU ``-netdev dgram`` over unix datagram sockets: one frame per datagram, no prefix.

QEMU is started with ``local.path=A`` (its socket) and ``remote.path=B`` (ours): the launcher
binds B with ``open_dgram(B)``, and the driver sends to A. Either side may restart: a send while
QEMU's socket is missing is dropped and counted, and the link is down until QEMU is heard from
or takes a frame.

A unix datagram receiver queues at most net.unix.max_dgram_qlen (10 by default) datagrams, so a
burst of frames meets EAGAIN long before any buffer is full. The socket is therefore connected
to QEMU's path whenever it exists: only then does the kernel report writability for the peer's
queue, and the backend keeps a bounded pending queue that ``flush()`` drains when it is
writable. (Connecting also makes the kernel refuse datagrams from anyone else.)

``fileno()`` is an epoll fd, stable for the life of the object, like the stream backend's.
"""

from __future__ import annotations

import errno
import select
import socket
from collections import deque
from collections.abc import Iterable

from ._unix import as_socket, remove_stale_socket
from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, MAX_FRAME_LEN, Backend, new_counters

# Room for a few hundred full-size frames in each direction; the kernel caps it at
# net.core.[rw]mem_max unless we may force it (CAP_NET_ADMIN).
SOCKET_BUFFER_BYTES = 4 << 20
DEFAULT_TX_PENDING_LIMIT = 1 << 20
# QEMU's socket file is missing, or nobody is bound to it any more.
_PEER_GONE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN)
_SENT, _FULL, _MISSING, _FAILED = range(4)


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


def open_dgram(path: str, buffer_bytes: int = SOCKET_BUFFER_BYTES) -> socket.socket:
    """The launcher's datagram socket bound at QEMU's ``remote.path``; a stale file is removed."""
    remove_stale_socket(path, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        _set_buffer(sock, getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, buffer_bytes)
        _set_buffer(sock, getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, buffer_bytes)
        sock.bind(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DgramBackend(Backend):
    """Drives a bound unix datagram socket; ``peer_path`` is QEMU's ``local.path``.

    Datagrams from any address but ``peer_path`` are dropped (``rx_foreign``): anyone with
    write access to our socket file could otherwise inject frames while we are unconnected.
    The kernel reports a sender by the exact string it bound, so pass the path spelled as it
    was given to QEMU's ``local.path``.
    """

    def __init__(self, sock: socket.socket | int, peer_path: str, *, mtu: int = 1500,
                 tx_pending_limit: int = DEFAULT_TX_PENDING_LIMIT) -> None:
        self._sock = as_socket(sock)
        self._sock.setblocking(False)
        self.peer_path = peer_path
        self._mtu = mtu
        self._link = False
        self._connected = False
        self._tx: deque[bytes] = deque()
        self._tx_pending_bytes = 0
        self._tx_pending_limit = tx_pending_limit
        self._epoll = select.epoll()
        self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        self._counters = new_counters("rx_foreign", "rx_truncated", "tx_peer_missing")
        self._closed = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    def handles(self) -> tuple[int]:
        return (self._sock.fileno(),)

    def _connect(self) -> bool:
        """(Re)associate with QEMU's socket; a datagram socket may be re-connected at will."""
        try:
            self._sock.connect(self.peer_path)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._connected = self._link = False
            return False
        self._connected = True
        return True

    def _drop_pending(self) -> None:
        self._counters["tx_dropped"] += len(self._tx)
        self._tx.clear()
        self._tx_pending_bytes = 0
        self._epoll.modify(self._sock.fileno(), select.EPOLLIN)

    # -- rx ----------------------------------------------------------------------------------

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        if self._tx:
            self.flush()
        frames: list[bytes] = []
        total = 0
        c = self._counters
        recvmsg, peer = self._sock.recvmsg, self.peer_path
        while len(frames) < max_frames and total < max_bytes:
            try:
                data, _, flags, addr = recvmsg(MAX_FRAME_LEN)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                c["rx_errors"] += 1
                break
            if addr != peer:
                c["rx_foreign"] += 1
                c["rx_dropped"] += 1
                continue
            if flags & socket.MSG_TRUNC:
                c["rx_truncated"] += 1
                c["rx_errors"] += 1
                continue
            if not data:
                c["rx_errors"] += 1
                continue
            frames.append(data)
            total += len(data)
        if frames:
            self._link = True
            if not self._connected:
                self._connect()
        c["rx_frames"] += len(frames)
        c["rx_bytes"] += total
        return frames

    # -- tx ----------------------------------------------------------------------------------

    def want_write(self) -> bool:
        return bool(self._tx)

    def _send(self, frame: bytes) -> int:
        """One frame to QEMU: _SENT, _FULL (try again when writable), or _MISSING / _FAILED
        (dropped; the caller counts)."""
        if not self._connected and not self._connect():
            return _MISSING
        for retry in (False, True):
            try:
                self._sock.send(frame)
                return _SENT
            except (BlockingIOError, InterruptedError):
                return _FULL
            except OSError as e:
                if e.errno not in _PEER_GONE:
                    return _FAILED  # EMSGSIZE and the like
            # QEMU restarted: the kernel dissolved the association with its dead socket, and
            # a new one may be bound at the same path.
            self._connected = False
            if retry or not self._connect():
                break
        return _MISSING

    def _count_drop(self, result: int) -> None:
        c = self._counters
        c["tx_dropped"] += 1
        if result == _MISSING:
            c["tx_peer_missing"] += 1
            self._link = False
        else:
            c["tx_errors"] += 1

    def write_batch(self, frames: Iterable[bytes]) -> int:
        c = self._counters
        accepted = sent = nbytes = 0
        for frame in frames:
            if self._tx:  # keep order behind what is already waiting
                if self._tx_pending_bytes + len(frame) > self._tx_pending_limit:
                    c["tx_dropped"] += 1
                    continue
                self._tx.append(frame)
                self._tx_pending_bytes += len(frame)
                accepted += 1
                continue
            result = self._send(frame)
            if result == _SENT:
                accepted += 1
                sent += 1
                nbytes += len(frame)
            elif result == _FULL:
                accepted += 1
                self._tx.append(frame)
                self._tx_pending_bytes += len(frame)
                self._epoll.modify(self._sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
            else:
                self._count_drop(result)
        if sent:
            self._link = True
        c["tx_frames"] += sent
        c["tx_bytes"] += nbytes
        return accepted

    def flush(self) -> int:
        c = self._counters
        done = 0
        while self._tx:
            frame = self._tx[0]
            result = self._send(frame)
            if result == _FULL:
                break
            if result == _MISSING:
                self._link = False
                c["tx_peer_missing"] += len(self._tx)
                self._drop_pending()
                break
            self._tx.popleft()
            self._tx_pending_bytes -= len(frame)
            if result == _SENT:
                done += 1
                c["tx_frames"] += 1
                c["tx_bytes"] += len(frame)
            else:
                self._count_drop(result)
        if not self._tx:
            self._epoll.modify(self._sock.fileno(), select.EPOLLIN)
        if done:
            self._link = True
        return done

    def link_up(self) -> bool:
        """Up once QEMU was heard from or took a frame; down while its socket is missing."""
        return self._link

    @property
    def mtu(self) -> int:
        return self._mtu

    def counters(self) -> dict[str, int]:
        out = dict(self._counters)
        out["tx_pending_frames"] = len(self._tx)
        out["tx_pending_bytes"] = self._tx_pending_bytes
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        self._sock.close()
