"""Data channels on one host: frame batches over launcher-held AF_UNIX SOCK_SEQPACKET socketpairs.

ZeroMQ carries every control protocol; the frames of a data stream (device
rx/tx, datagrams) travel here instead when both ends run on one host. The
launcher creates one socketpair per (provider, protocol, user) and keeps both
ends open for the life of the user, handing the ends to every incarnation of
each side like a TAP fd: a restart of either end finds whatever was queued
still in the socket, in order, and nothing is lost (docs/decisions.md,
"Same-host data plane").

Why SEQPACKET and not ZeroMQ here: one 100-byte round trip between two Python
processes cost 96 µs over ZeroMQ ipc (two extra thread wake-ups in libzmq's
I/O threads) against 58 µs over a socketpair across CPUs (docs/ipc-benchmark.md).

One message per batch, a fixed little-endian header, no MessagePack on the
hot path:

    header   "<2sBBHHII": magic b"QN", version 1, kind (b"B" batch | b"E" event),
             stream index in the protocol's declaration, reserved, seq, count
    batch    (count + 1) uint32 offsets, then the frames back to back
    event    uint16 name length, the name (UTF-8), the MessagePack body

Bounds: a message never exceeds ``max_message`` (batches are split by bytes
when they would); the socket's send buffer is the queue bound (SO_SNDBUF, set
by the launcher with SO_SNDBUFFORCE), and a send that finds it full is dropped
and counted, never blocking the loop. Every malformed message is counted in
``rx_bad`` and dropped by the receiver.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import sys
from array import array
from itertools import accumulate
from typing import Any, Callable

from . import errors
from .decl import Protocol, encode

MAGIC = b"QN"
VERSION = 1
KIND_BATCH, KIND_EVENT = ord("B"), ord("E")
HEADER = struct.Struct("<2sBBHHII")
_ONE = struct.Struct("<2sBBHHIIII")   # the header and the two offsets of a one-frame batch
_NAME_LEN = struct.Struct("<H")
_TWO = struct.Struct("<II")
_LITTLE = sys.byteorder == "little"
_PEEK = socket.MSG_PEEK
_SIOCOUTQ = 0x5411          # TIOCOUTQ / SIOCOUTQ

# The launcher sizes both ends' buffers (root: SO_SNDBUFFORCE). 4 MiB holds ten full
# batches of 256 x 1514 B, or a few batches of GSO super-frames.
CHANNEL_BUFFER = 4 << 20
# One message: at most this many bytes. A message must fit the sender's SO_SNDBUF
# (EMSGSIZE beyond it), so without the forced size the smaller default applies.
MAX_MESSAGE = 1 << 20
RECV_BUDGET = 64            # messages per wake-up per channel before yielding to the loop
FULLISH_BATCH = 16          # a batch this big suggests more are queued: read on without polling

COUNTER_NAMES = ("tx_batches", "tx_frames", "tx_dropped_batches", "tx_dropped_frames", "tx_split",
                 "rx_batches", "rx_frames", "rx_bad", "rx_events", "tx_events", "rx_refused")


def make_pair(buffer: int = CHANNEL_BUFFER) -> tuple[socket.socket, socket.socket]:
    """A socketpair for one data channel, both ends' buffers sized for whole batches."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        size_buffers(s, buffer)
        s.setblocking(False)
    return a, b


def size_buffers(s: socket.socket, size: int) -> None:
    for force, plain in ((getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
                         (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            # Not root: the kernel caps SO_SNDBUF at net.core.wmem_max; max_message follows.
            s.setsockopt(socket.SOL_SOCKET, plain, size)


class PacketCodec:
    """Encodes and checks the messages of one protocol, as seen from one end."""

    def __init__(self, protocol: Protocol, rx_direction: str):
        self.protocol = protocol
        self.rx_direction = rx_direction
        self.streams = list(protocol.streams)
        self.stream_index = {s.name: i for i, s in enumerate(self.streams)}
        self.tx_index = {s.name: i for i, s in enumerate(self.streams) if s.direction != rx_direction}

    def batch_parts(self, stream: str, seq: int, frames: list) -> list:
        i = self.tx_index.get(stream)
        if i is None:
            if stream not in self.stream_index:
                raise errors.InvalidArgument(f"{self.protocol.name} has no stream {stream!r}")
            raise errors.InvalidArgument(f"{self.protocol.name} stream {stream!r} flows "
                                         f"{self.streams[self.stream_index[stream]].direction}, not from here")
        if len(frames) == 1:
            f = frames[0]
            return [_ONE.pack(MAGIC, VERSION, KIND_BATCH, i, 0, seq, 1, 0, len(f)), f]
        offs = array("I", [0])
        offs.extend(accumulate(map(len, frames)))
        if not _LITTLE:
            offs.byteswap()
        return [HEADER.pack(MAGIC, VERSION, KIND_BATCH, i, 0, seq, len(frames)), offs, *frames]

    def event_message(self, name: str, fields: dict) -> bytes:
        ev = self.protocol.event_by_name.get(name)
        if ev is None:
            raise errors.InvalidArgument(f"{self.protocol.name} has no event {name!r}")
        body = encode(fields)
        ev.decode(body)  # the sender validates too
        raw = name.encode()
        return HEADER.pack(MAGIC, VERSION, KIND_EVENT, 0, 0, 0, 0) + _NAME_LEN.pack(len(raw)) + raw + body

    def parse(self, msg: memoryview) -> tuple[str, Any, Any]:
        """('batch', stream, frames) or ('event', name, struct); raises BadMessage."""
        if len(msg) < HEADER.size:
            raise errors.BadMessage(f"message of {len(msg)} bytes is shorter than the header")
        magic, version, kind, index, _res, _seq, count = HEADER.unpack_from(msg)
        if magic != MAGIC or version != VERSION:
            raise errors.BadMessage("not a qnet data message (magic or version)")
        if kind == KIND_BATCH:
            if index >= len(self.streams):
                raise errors.BadMessage(f"{self.protocol.name} has no stream #{index}")
            decl = self.streams[index]
            if decl.direction != self.rx_direction:
                raise errors.BadMessage(f"{self.protocol.name} stream {decl.name!r} flows {decl.direction}, not here")
            if count > decl.max_batch:
                raise errors.BadMessage(f"batch of {count} frames exceeds {decl.max_batch}")
            end_offs = HEADER.size + 4 * (count + 1)
            if len(msg) < end_offs:
                raise errors.BadMessage(f"batch of {count} frames is truncated")
            if count == 1:
                first, last = _TWO.unpack_from(msg, HEADER.size)
                if first != 0 or last != len(msg) - end_offs:
                    raise errors.BadMessage("batch: offsets do not cover the frames")
                if last > decl.max_frame:
                    raise errors.BadMessage(f"batch: a frame is larger than {decl.max_frame} bytes")
                return "batch", decl.name, [msg[end_offs:].tobytes()]
            offs = array("I")
            offs.frombytes(msg[HEADER.size:end_offs])
            if not _LITTLE:
                offs.byteswap()
            blob_len = len(msg) - end_offs
            if offs[0] != 0 or offs[-1] != blob_len:
                raise errors.BadMessage("batch: offsets do not cover the frames")
            listed = offs.tolist()
            if count > 1 and listed != sorted(listed):
                raise errors.BadMessage("batch: offsets go backwards")
            max_frame = decl.max_frame
            # One copy per frame, straight out of the receive buffer (which is reused).
            frames = [msg[end_offs + a:end_offs + b].tobytes() for a, b in zip(listed, listed[1:])]
            if blob_len > max_frame and any(len(f) > max_frame for f in frames):
                raise errors.BadMessage(f"batch: a frame is larger than {max_frame} bytes")
            return "batch", decl.name, frames
        if kind == KIND_EVENT:
            at = HEADER.size + _NAME_LEN.size
            if len(msg) < at:
                raise errors.BadMessage("event is truncated")
            (n,) = _NAME_LEN.unpack_from(msg, HEADER.size)
            try:
                name = msg[at:at + n].tobytes().decode()
            except UnicodeDecodeError:
                raise errors.BadMessage("event name is not UTF-8") from None
            ev = self.protocol.event_by_name.get(name)
            if ev is None:
                raise errors.BadMessage(f"{self.protocol.name} has no event {name!r}")
            try:
                return "event", name, ev.decode(msg[at + n:].tobytes())
            except RecursionError:
                raise errors.BadMessage("event body nested too deeply") from None
        raise errors.BadMessage(f"unknown data message kind {kind}")


class Endpoint:
    """One end of one socketpair, inherited from the launcher as an fd."""

    def __init__(self, fd: int, codec: PacketCodec, counters: dict[str, int]):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.codec = codec
        self.counters = counters
        self.seq = 0
        try:
            sndbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            sndbuf = 212992
        # The kernel charges a message's bytes plus its overhead against SO_SNDBUF.
        self.max_message = max(4096, min(MAX_MESSAGE, sndbuf - 4096))
        self._buf = bytearray(MAX_MESSAGE + 1)
        self._view = memoryview(self._buf)
        self._take = bytearray(1)
        self._out_poll = select.poll()      # asked before every read of a driver's backend
        self._out_poll.register(self.sock.fileno(), select.POLLOUT)
        self.dropped_frames = 0     # what this end could not send (its channel was full)
        self.sndbuf = sndbuf
        self.last_error: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ------------------------------------------------------------------------
    def send_batch(self, stream: str, frames: list) -> bool:
        """Send frames as one message, or as several when they exceed max_message. Never blocks."""
        if not frames:
            return True
        limit = self.max_message - HEADER.size
        if sum(map(len, frames)) + 4 * len(frames) + 4 <= limit:
            return self._send_chunk(stream, frames)  # the common case: one message, no Python loop
        total = 0
        start = 0
        ok = True
        for i, f in enumerate(frames):
            total += len(f) + 4
            if total + 4 > limit and i > start:
                self.counters["tx_split"] += 1
                ok &= self._send_chunk(stream, frames[start:i])
                start, total = i, len(f) + 4
        return self._send_chunk(stream, frames[start:] if start else frames) and ok

    def _send_chunk(self, stream: str, frames: list) -> bool:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        parts = self.codec.batch_parts(stream, self.seq, frames)
        try:
            self.sock.sendmsg(parts)
        except OSError as exc:
            # EAGAIN: the peer's queue is full. EMSGSIZE: one frame beyond max_message.
            # Anything else (the launcher closed the channel): also a counted drop.
            self.counters["tx_dropped_batches"] += 1
            self.counters["tx_dropped_frames"] += len(frames)
            self.dropped_frames += len(frames)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.last_error = f"send: {exc.strerror or exc}"
            return False
        self.counters["tx_batches"] += 1
        self.counters["tx_frames"] += len(frames)
        return True

    def send_event(self, name: str, fields: dict) -> bool:
        try:
            self.sock.send(self.codec.event_message(name, fields))
        except OSError:
            return False
        self.counters["tx_events"] += 1
        return True

    def queued_bytes(self) -> int:
        """Bytes this end sent that the other end has not read yet (SIOCOUTQ): the channel's
        occupancy, bounded by SO_SNDBUF (``sndbuf``)."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def writable(self) -> bool:
        """Whether a batch would be accepted now (poll(2), no data moved)."""
        return bool(self._out_poll.poll(0))

    # -- receiving ----------------------------------------------------------------------
    def receive(self, on_batch: Callable[[str, list], None], on_event: Callable[[str, Any], None],
                limit: int = RECV_BUDGET) -> int:
        """Read up to ``limit`` messages; malformed ones are counted and dropped.

        A message is read with MSG_PEEK and taken off the queue only after it was handled:
        a process killed while handling a batch leaves that batch to its successor, which
        handles it again (at least once), so a SIGKILL loses nothing that reached a channel.
        """
        n = 0
        sock, view, buf, size = self.sock, self._view, self._buf, len(self._buf)
        parse = self.codec.parse
        c = self.counters
        take = self._take
        while n < limit:
            try:
                got = sock.recv_into(buf, 0, _PEEK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.last_error = f"recv: {exc.strerror or exc}"
                break
            if got == 0:
                break  # the other end is closed (only when the launcher dropped the channel)
            n += 1
            try:
                if got >= size:
                    c["rx_bad"] += 1
                    self.last_error = "message larger than the channel's limit"
                    continue
                try:
                    kind, name, value = parse(view[:got])
                except errors.IpcError as exc:
                    c["rx_bad"] += 1
                    self.last_error = str(exc)
                    continue
                if kind == "batch":
                    c["rx_batches"] += 1
                    c["rx_frames"] += len(value)
                    on_batch(name, value)
                    small = len(value) < FULLISH_BATCH
                else:
                    c["rx_events"] += 1
                    on_event(name, value)
                    small = True
            finally:
                # Off the queue even when a handler raised: a poison message is never re-read.
                sock.recv_into(take, 1)
            if small:
                # A small message says the sender is not backlogged: rather than a read that
                # fails (a syscall and an exception), let the loop's poll say when more come.
                break
        return n

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def new_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)


class SeqpacketUser:
    """The user's end of its one channel to the provider (a driver, dhcpd)."""

    RX_DIRECTION = "to_user"

    def __init__(self, protocol: Protocol, fd: int, identity: bytes = b""):
        self.protocol = protocol
        self.identity = identity
        self.counters = new_counters()
        self.end = Endpoint(fd, PacketCodec(protocol, self.RX_DIRECTION), self.counters)
        self._loop = None

    @property
    def last_error(self) -> str | None:
        return self.end.last_error

    @property
    def socket(self) -> socket.socket:
        return self.end.sock

    def fileno(self) -> int:
        return self.end.fileno()

    @property
    def poll_key(self) -> int:
        """What a component's loop polls for this channel (add_reader / add_writer)."""
        return self.end.fileno()

    def send_batch(self, stream: str, frames: list) -> bool:
        return self.end.send_batch(stream, frames)

    def send_event(self, name: str, /, **fields: Any) -> bool:
        return self.end.send_event(name, fields)

    def writable(self) -> bool:
        return self.end.writable()

    def receive(self, on_batch, on_event, limit: int = RECV_BUDGET) -> int:
        return self.end.receive(on_batch, on_event, limit)

    def start(self, loop, on_batch, on_event, limit: int = RECV_BUDGET) -> None:
        self._loop = loop
        loop.add_reader(self.end.fileno(), lambda: self.end.receive(on_batch, on_event, limit))

    def stop(self) -> None:
        """Stop reading: what is queued stays in the socket for the next incarnation."""
        if self._loop is not None:
            self._loop.remove_reader(self.end.fileno())
            self._loop = None

    def close(self) -> None:
        self.stop()
        self.end.close()


class SeqpacketProvider:
    """The provider's ends, one per user, added and removed as the launcher says."""

    RX_DIRECTION = "to_provider"

    def __init__(self, protocol: Protocol, fds: dict[str, int] | None = None):
        self.protocol = protocol
        self.codec = PacketCodec(protocol, self.RX_DIRECTION)
        self.counters = new_counters()
        self.peers: dict[bytes, Endpoint] = {}
        self._loop = None
        self._handlers = None
        for name, fd in (fds or {}).items():
            self.add_peer(name.encode(), fd)

    def add_peer(self, identity: bytes, fd: int) -> None:
        old = self.peers.pop(identity, None)
        if old is not None:
            if self._loop is not None:
                self._loop.remove_reader(old.fileno())
            old.close()
        end = Endpoint(fd, self.codec, self.counters)
        self.peers[identity] = end
        if self._loop is not None:
            self._watch(identity, end)

    def remove_peer(self, identity: bytes) -> bool:
        end = self.peers.pop(identity, None)
        if end is None:
            return False
        if self._loop is not None:
            self._loop.remove_reader(end.fileno())
        end.close()
        return True

    def has_peer(self, identity: bytes) -> bool:
        return identity in self.peers

    def _watch(self, identity: bytes, end: Endpoint) -> None:
        on_batch, on_event, limit = self._handlers

        def batch(stream, frames):
            on_batch(identity, stream, frames)

        def event(name, ev):
            on_event(identity, name, ev)
        receive = end.receive
        self._loop.add_reader(end.fileno(), lambda: receive(batch, event, limit))

    def start(self, loop, on_batch, on_event, limit: int = RECV_BUDGET) -> None:
        self._loop = loop
        self._handlers = (on_batch, on_event, limit)
        for identity, end in self.peers.items():
            self._watch(identity, end)

    def stop(self) -> None:
        if self._loop is not None:
            for end in self.peers.values():
                self._loop.remove_reader(end.fileno())
            self._loop = None

    def send_batch(self, peer: bytes, stream: str, frames: list) -> bool:
        end = self.peers.get(peer)
        if end is None:
            self.counters["tx_dropped_batches"] += 1
            self.counters["tx_dropped_frames"] += len(frames)
            return False
        return end.send_batch(stream, frames)

    def send_event(self, peer: bytes, name: str, /, **fields: Any) -> bool:
        end = self.peers.get(peer)
        return end is not None and end.send_event(name, fields)

    def tables(self) -> dict[str, tuple[int, int, int]]:
        """Per user: (bytes queued toward it, the channel's bound, frames dropped because it was full)."""
        return {peer.decode("utf-8", "replace"): (end.queued_bytes(), end.sndbuf, end.dropped_frames)
                for peer, end in self.peers.items()}

    @property
    def last_error(self) -> str | None:
        for end in self.peers.values():
            if end.last_error:
                return end.last_error
        return None

    def close(self) -> None:
        self.stop()
        for end in self.peers.values():
            end.close()
        self.peers.clear()


# -- the launcher's hand-over of channel ends to a running provider ----------------------
def send_channel(ctl: socket.socket, op: str, protocol: str, peer: str, fd: int | None = None) -> None:
    """Launcher -> provider: a channel end added (with its fd) or removed."""
    msg = encode({"op": op, "protocol": protocol, "peer": peer})
    if fd is None:
        ctl.send(msg)
    else:
        socket.send_fds(ctl, [msg], [fd])


def recv_channel(ctl: socket.socket) -> tuple[dict, int | None] | None:
    """Provider side: one add/remove message, or None when nothing waits. Bad ones raise BadMessage."""
    from .decl import decode_raw
    try:
        msg, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 4)
    except (BlockingIOError, InterruptedError):
        return None
    if not msg:
        raise EOFError("the launcher closed the channel control socket")
    fd = fds[0] if fds else None
    for extra in fds[1:]:
        os.close(extra)
    m = decode_raw(msg)
    if (not isinstance(m, dict) or m.get("op") not in ("add", "remove")
            or not isinstance(m.get("protocol"), str) or not isinstance(m.get("peer"), str)):
        if fd is not None:
            os.close(fd)
        raise errors.BadMessage("channel control message must be {op, protocol, peer}")
    if m["op"] == "add" and fd is None:
        raise errors.BadMessage("channel add without an fd")
    return m, fd
