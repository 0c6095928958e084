"""Data channels: frame batches and typed events between a provider and its users.

The provider binds a ROUTER; each user connects a DEALER whose routing id
names it (a port name, a component name). ``ROUTER_HANDOVER`` lets a new
incarnation of a user take over its name while the old one is still
connected: that is what makes a driver's make-before-break restart work.

Messages:   [b"B", batch header, offsets, blob]    a frame batch (ipc.batch)
            [b"E", msgpack [event], body]          a typed event of the protocol

Sends never block: when ZeroMQ's queue toward a peer is full the batch is
dropped and counted (DESIGN.md principle 4), and a stalled peer cannot stall
the sender's loop.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

import msgspec
import zmq

from . import batch as batchmod
from . import errors, transport
from .decl import Protocol, decode_raw, encode
from .rpc import configure_socket, context

_raw = msgspec.msgpack.Decoder()

KIND_BATCH, KIND_EVENT = b"B", b"E"


def keyed_identity(name: bytes, key: bytes | None) -> bytes:
    """The ZeroMQ routing id that proves a user's name: NAME~HMAC(graph data key, NAME).

    Without the graph's data key (RUN/keys/data.key, handed to every component) nobody can
    speak for a port or a datagram owner on a provider's ZeroMQ endpoint, and the id is the
    same for every incarnation, so ROUTER_HANDOVER still gives a successor its name.
    """
    if key is None:
        return name
    return name + b"~" + hmac.new(key, name, hashlib.sha256).hexdigest()[:32].encode()


def load_data_key(runtime_dir: str) -> bytes | None:
    """The graph's data key, for a program of the launcher's user outside the graph (tests, tools)."""
    import os
    try:
        with open(os.path.join(runtime_dir, "keys", "data.key"), "rb") as f:
            return bytes.fromhex(f.read().decode().strip())
    except (OSError, ValueError):
        return None
# Plain ints: pyzmq wraps its constants in enums, and enum arithmetic on the data path adds up.
_EVENTS, _POLLIN, _POLLOUT, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)
DEFAULT_DATA_HWM = 256  # batches queued per peer before drops
ZERO_COPY_MIN = 32768


class _Channel:
    # The stream direction this end may receive; it sends the other one.
    RX_DIRECTION = ""

    def __init__(self, protocol: Protocol, sock: zmq.Socket):
        self.protocol = protocol
        self.socket = sock
        self._seq = 0
        self.counters = {
            "tx_batches": 0, "tx_frames": 0, "tx_dropped_batches": 0, "tx_dropped_frames": 0,
            "rx_batches": 0, "rx_frames": 0, "rx_bad": 0, "rx_events": 0, "tx_events": 0, "rx_refused": 0,
        }
        self.last_error: str | None = None

    def _send(self, parts: list[bytes], nframes: int, prefix: list[bytes]) -> bool:
        # Zero-copy pays only for large blobs; for small ones the Frame objects cost more.
        copy = len(parts[-1]) < ZERO_COPY_MIN
        try:
            self.socket.send_multipart(prefix + parts, _NOBLOCK, copy=copy)
        except (zmq.Again, zmq.ZMQError):
            if nframes:
                self.counters["tx_dropped_batches"] += 1
                self.counters["tx_dropped_frames"] += nframes
            return False
        return True

    def _batch_parts(self, stream: str, frames: list[bytes]) -> list[bytes]:
        decl = self.protocol.stream_by_name.get(stream)
        if decl is None:
            raise errors.InvalidArgument(f"{self.protocol.name} has no stream {stream!r}")
        if decl.direction == self.RX_DIRECTION:
            raise errors.InvalidArgument(f"{self.protocol.name} stream {stream!r} flows {decl.direction}, not from here")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return [KIND_BATCH] + batchmod.encode_batch(stream, self._seq, frames)

    def _event_parts(self, name: str, fields: dict) -> list[bytes]:
        ev = self.protocol.event_by_name.get(name)
        if ev is None:
            raise errors.InvalidArgument(f"{self.protocol.name} has no event {name!r}")
        body = encode(fields)
        ev.decode(body)  # the sender validates too
        return [KIND_EVENT, encode([name]), body]

    def _parse(self, parts: list) -> tuple[str, Any, Any]:
        """('batch', stream, frames) or ('event', name, struct); raises BadMessage."""
        kind = bytes(parts[0]) if parts else b""
        if kind == KIND_BATCH:
            if len(parts) != 4:
                raise errors.BadMessage(f"batch needs 4 parts, got {len(parts)}")
            stream, _seq, count = batchmod.decode_header(parts[1])
            decl = self.protocol.stream_by_name.get(stream)
            if decl is None:
                raise errors.BadMessage(f"{self.protocol.name} has no stream {stream!r}")
            if decl.direction != self.RX_DIRECTION:
                raise errors.BadMessage(f"{self.protocol.name} stream {stream!r} flows {decl.direction}, not here")
            if count > decl.max_batch:
                raise errors.BadMessage(f"batch of {count} frames exceeds {decl.max_batch}")
            frames = batchmod.unpack_frames(parts[2], parts[3], count, decl.max_frame)
            self.counters["rx_batches"] += 1
            self.counters["rx_frames"] += count
            return "batch", stream, frames
        if kind == KIND_EVENT:
            if len(parts) != 3:
                raise errors.BadMessage(f"event needs 3 parts, got {len(parts)}")
            h = decode_raw(parts[1])
            if not isinstance(h, list) or len(h) != 1 or not isinstance(h[0], str):
                raise errors.BadMessage("event header must be [name]")
            ev = self.protocol.event_by_name.get(h[0])
            if ev is None:
                raise errors.BadMessage(f"{self.protocol.name} has no event {h[0]!r}")
            self.counters["rx_events"] += 1
            try:
                return "event", h[0], ev.decode(parts[2])
            except RecursionError:
                raise errors.BadMessage("event body nested too deeply") from None
        raise errors.BadMessage(f"unknown data message kind {kind[:8]!r}")

    def close(self) -> None:
        self.stop()
        self.socket.close(linger=0)

    # -- in a component's loop (the same calls as ipc.seqpacket's channels) --------------
    _loop = None

    def start(self, loop, on_batch: Callable, on_event: Callable, limit: int = 64) -> None:
        self._loop = loop
        loop.add_reader(self.socket, lambda: self.receive(on_batch, on_event, limit))

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.socket)
            self._loop = None

    @property
    def poll_key(self):
        """What a component's loop polls for this channel (add_reader / add_writer)."""
        return self.socket


class ProviderChannel(_Channel):
    """The bound side: talks to many users, each addressed by its routing id."""

    RX_DIRECTION = "to_provider"

    def __init__(self, protocol: Protocol, endpoints: list[str] | str, *, hwm: int = DEFAULT_DATA_HWM,
                 key: bytes | None = None):
        self.key = key
        self._names: dict[bytes, bytes] = {}    # routing id -> the name it proved
        self._ids: dict[bytes, bytes] = {}      # name -> routing id
        sock = context().socket(zmq.ROUTER)
        configure_socket(sock, hwm)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown peer raises: counted as a drop
        for ep in [endpoints] if isinstance(endpoints, str) else endpoints:
            transport.bind(sock, ep)
        super().__init__(protocol, sock)

    def _routing_id(self, peer: bytes) -> bytes:
        if self.key is None:
            return peer
        rid = self._ids.get(peer)
        if rid is None:
            rid = self._ids[peer] = keyed_identity(peer, self.key)
        return rid

    def _name_of(self, rid: bytes) -> bytes | None:
        """The name a routing id proves, or None (refused)."""
        if self.key is None:
            return rid
        name = self._names.get(rid)
        if name is None:
            base, sep, _mac = rid.rpartition(b"~")
            if not sep or not hmac.compare_digest(keyed_identity(base, self.key), rid):
                return None
            if len(self._names) >= 4096:
                self._names.clear()
            name = self._names[rid] = base
        return name

    def send_batch(self, peer: bytes, stream: str, frames: list[bytes]) -> bool:
        ok = self._send(self._batch_parts(stream, frames), len(frames), [self._routing_id(peer)])
        if ok:
            self.counters["tx_batches"] += 1
            self.counters["tx_frames"] += len(frames)
        return ok

    def send_event(self, peer: bytes, name: str, /, **fields: Any) -> bool:
        ok = self._send(self._event_parts(name, fields), 0, [self._routing_id(peer)])
        self.counters["tx_events"] += ok
        return ok

    def receive(self, on_batch: Callable[[bytes, str, list[bytes]], None],
                on_event: Callable[[bytes, str, Any], None], limit: int = 64) -> int:
        """Drain up to ``limit`` messages; bad ones are counted and dropped."""
        n = 0
        sock = self.socket
        while n < limit and sock.get(_EVENTS) & _POLLIN:
            parts = sock.recv_multipart(_NOBLOCK)
            n += 1
            peer, body = self._name_of(parts[0]), parts[1:]
            if peer is None:
                # A routing id that does not prove its name: nobody speaks for a port or an
                # owner without the graph's data key.
                self.counters["rx_refused"] += 1
                self.last_error = f"refused: routing id {parts[0][:40]!r} does not prove its name"
                continue
            try:
                kind, name, value = self._parse(body)
            except errors.IpcError as exc:
                self.counters["rx_bad"] += 1
                self.last_error = f"{peer!r}: {exc}"
                continue
            if kind == "batch":
                on_batch(peer, name, value)
            else:
                on_event(peer, name, value)
        return n


class UserChannel(_Channel):
    """The connecting side, named by its routing id."""

    RX_DIRECTION = "to_user"

    def __init__(self, protocol: Protocol, endpoint: str, identity: bytes, *, hwm: int = DEFAULT_DATA_HWM,
                 key: bytes | None = None):
        sock = context().socket(zmq.DEALER)
        configure_socket(sock, hwm)
        sock.setsockopt(zmq.IDENTITY, keyed_identity(identity, key))
        transport.connect(sock, endpoint)
        self.identity = identity
        super().__init__(protocol, sock)

    def writable(self) -> bool:
        return bool(self.socket.get(_EVENTS) & _POLLOUT)

    def send_batch(self, stream: str, frames: list[bytes]) -> bool:
        ok = self._send(self._batch_parts(stream, frames), len(frames), [])
        if ok:
            self.counters["tx_batches"] += 1
            self.counters["tx_frames"] += len(frames)
        return ok

    def send_event(self, name: str, /, **fields: Any) -> bool:
        ok = self._send(self._event_parts(name, fields), 0, [])
        self.counters["tx_events"] += ok
        return ok

    def receive(self, on_batch: Callable[[str, list[bytes]], None],
                on_event: Callable[[str, Any], None], limit: int = 64) -> int:
        n = 0
        sock = self.socket
        while n < limit and sock.get(_EVENTS) & _POLLIN:
            parts = sock.recv_multipart(_NOBLOCK)
            n += 1
            try:
                kind, name, value = self._parse(parts)
            except errors.IpcError as exc:
                self.counters["rx_bad"] += 1
                self.last_error = str(exc)
                continue
            if kind == "batch":
                on_batch(name, value)
            else:
                on_event(name, value)
        return n


class DataProvider:
    """All of a provider's data channels for one protocol.

    In-graph users (a port's driver, dhcpd) reach the provider over the
    socketpairs the launcher made for them (``ipc.seqpacket``); the ZeroMQ
    endpoint stays bound for users outside the graph (tests, benchmarks, the
    ``data_transport = "zmq"`` and tcp graphs). A name that has a socketpair
    can never be spoken for over ZeroMQ: such messages, and every message on a
    protocol whose ZeroMQ users are refused (``zmq_users=False``), are counted
    in ``rx_refused`` and dropped.
    """

    def __init__(self, protocol: Protocol, endpoints: list[str] | str, fds: dict[str, int] | None = None,
                 *, zmq_users: bool = True, hwm: int = DEFAULT_DATA_HWM, key: bytes | None = None):
        from .seqpacket import SeqpacketProvider
        self.protocol = protocol
        self.zmq = ProviderChannel(protocol, endpoints, hwm=hwm, key=key)
        self.local = SeqpacketProvider(protocol, fds) if fds is not None else None
        self.zmq_users = zmq_users

    @property
    def socket(self):
        return self.zmq.socket

    @property
    def counters(self) -> dict[str, int]:
        if self.local is None:
            return dict(self.zmq.counters)
        out = dict(self.local.counters)
        for k, v in self.zmq.counters.items():
            out[k] = out.get(k, 0) + v
        return out

    @property
    def last_error(self) -> str | None:
        return (self.local.last_error if self.local is not None else None) or self.zmq.last_error

    def tables(self) -> dict[str, tuple[int, int, int]]:
        """The socketpair channels' occupancy: {user: (queued bytes, bound, frames dropped)}."""
        return self.local.tables() if self.local is not None else {}

    def add_peer(self, identity: bytes, fd: int) -> None:
        if self.local is None:
            from .seqpacket import SeqpacketProvider
            self.local = SeqpacketProvider(self.protocol)
            if self._handlers is not None:
                self.local.start(*self._handlers)
        self.local.add_peer(identity, fd)

    def remove_peer(self, identity: bytes) -> bool:
        return self.local is not None and self.local.remove_peer(identity)

    def local_peer(self, identity: bytes) -> bool:
        return self.local is not None and self.local.has_peer(identity)

    _handlers = None

    def start(self, loop, on_batch: Callable, on_event: Callable, limit: int = 64) -> None:
        def zmq_batch(peer, stream, frames):
            if self._refused(peer):
                self.zmq.counters["rx_refused"] += 1
                return
            on_batch(peer, stream, frames)

        def zmq_event(peer, name, ev):
            if self._refused(peer):
                self.zmq.counters["rx_refused"] += 1
                return
            on_event(peer, name, ev)
        self._handlers = (loop, on_batch, on_event, limit)
        self.zmq.start(loop, zmq_batch, zmq_event, limit)
        if self.local is not None:
            self.local.start(loop, on_batch, on_event, limit)

    def _refused(self, peer: bytes) -> bool:
        return not self.zmq_users or self.local_peer(peer)

    def stop(self) -> None:
        self._handlers = None
        self.zmq.stop()
        if self.local is not None:
            self.local.stop()

    def send_batch(self, peer: bytes, stream: str, frames: list) -> bool:
        if self.local is not None and peer in self.local.peers:
            return self.local.send_batch(peer, stream, frames)
        return self.zmq.send_batch(peer, stream, frames)

    def send_event(self, peer: bytes, name: str, /, **fields: Any) -> bool:
        if self.local is not None and peer in self.local.peers:
            return self.local.send_event(peer, name, **fields)
        return self.zmq.send_event(peer, name, **fields)

    def close(self) -> None:
        self.zmq.close()
        if self.local is not None:
            self.local.close()


def open_user(protocol: Protocol, endpoint: str, identity: bytes, fd: int | None = None,
              *, hwm: int = DEFAULT_DATA_HWM, key: bytes | None = None):
    """The user's data channel: the launcher's socketpair when it gave one, else ZeroMQ."""
    if fd is not None:
        from .seqpacket import SeqpacketUser
        return SeqpacketUser(protocol, fd, identity)
    return UserChannel(protocol, endpoint, identity, hwm=hwm, key=key)
