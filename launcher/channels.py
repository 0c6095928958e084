"""The data channels the launcher creates and owns (ipc.seqpacket), and the byte channels
of client connections and sockets (TCP: SOCK_STREAM pairs, UDP: SOCK_SEQPACKET pairs).

One AF_UNIX SOCK_SEQPACKET socketpair per (provider, protocol, user) for every
protocol that declares data streams (qnet.device, qnet.datagram): the user's
end goes to every incarnation of the user (a port's driver, dhcpd), the
provider's end to every incarnation of the provider (netstack). The launcher
keeps both ends open until the user is removed, so whatever is queued in a
channel survives a restart or a crash of either side and is read, in order, by
the next incarnation. A provider that is already running learns of a new
channel over its control socket (an fd passed with SCM_RIGHTS); a provider
that starts later gets every channel at spawn.

Identity is the channel itself: netstack knows which port a batch comes from
by the socket it arrived on, so no other process can speak for a port.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import struct
from typing import Any

from ipc import errors, registry
from ipc.decl import decode_raw, encode
from ipc.seqpacket import make_pair, send_channel, size_buffers

log = logging.getLogger("qnet.launcher")


def _data_protocols(refs) -> list[str]:
    out = []
    for name, _ver in refs:
        proto = registry.get(name)
        if proto is not None and proto.streams:
            out.append(name)
    return out


def _channel_kind(protocol: str) -> str | None:
    proto = registry.get(protocol)
    return proto.channel_kind if proto is not None else None


def _stream_protocols(refs) -> list[str]:
    out = []
    for name, _ver in refs:
        proto = registry.get(name)
        if proto is not None and proto.byte_channels:
            out.append(name)
    return out


MAX_STREAMS = 8192          # byte channels held for one provider (each is one fd here and there)
STREAM_BUFFER = 256 * 1024  # each end's kernel buffer: part of the connection's buffer budget
# A datagram channel's buffers are the UDP socket's SO_RCVBUF and SO_SNDBUF: 1 MiB holds
# 16 datagrams of 64 KiB or about 500 of 1,472 B (each message costs its skb's truesize).
# As root forced past net.core.[rw]mem_max (SO_*BUFFORCE); otherwise capped there.
DATAGRAM_BUFFER = 1 << 20


def make_stream_pair(kind: str = "stream") -> tuple[socket.socket, socket.socket]:
    """One byte channel: (provider end, client end), both non-blocking. kind "seqpacket":
    a datagram channel (one message per datagram)."""
    if kind == "seqpacket":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (a, b):
            s.setblocking(False)
            size_buffers(s, DATAGRAM_BUFFER)
        return a, b
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        s.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, STREAM_BUFFER)
    return a, b


def user_identity(spec) -> str:
    """The name a user's channel has at its provider: the port of a driver, else the component's name."""
    return str(spec.args.get("instance") or spec.name)


def data_key(runtime_dir: str) -> str:
    """The graph's data key (hex), made once per runtime dir (RUN/keys/data.key, 0600).

    Every component gets it (QNET_DATA_KEY); a user of a ZeroMQ data endpoint proves its
    name with it (ipc.channel.keyed_identity). It survives a launcher crash like the rest of RUN.
    """
    keydir = os.path.join(runtime_dir, "keys")
    path = os.path.join(keydir, "data.key")
    try:
        with open(path) as f:
            key = f.read().strip()
        bytes.fromhex(key)
        if len(key) >= 32:
            return key
    except (OSError, ValueError):
        pass
    os.makedirs(keydir, mode=0o700, exist_ok=True)
    key = secrets.token_hex(32)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


class DataChannels:
    def __init__(self, graph, runtime_dir: str | None = None):
        self.graph = graph
        self.key = data_key(runtime_dir) if runtime_dir else None
        # (provider, protocol, user) -> (provider end, user end); the launcher holds both.
        self.pairs: dict[tuple[str, str, str], tuple[socket.socket, socket.socket]] = {}
        self.owner: dict[tuple[str, str, str], str] = {}      # pair -> user instance name
        # provider instance name -> {incarnation number: launcher's end of its control socket}
        self.ctl: dict[str, dict[int, socket.socket]] = {}
        self.errors = 0
        # Byte channels (TCP connections): provider -> {channel id: the provider's end}. The
        # client's end is handed out at once and not kept; the provider's end is kept until
        # the provider releases it, and handed to every incarnation, so a restart keeps them.
        self.streams: dict[str, dict[str, socket.socket]] = {}
        self.stream_protocol: dict[str, str] = {}   # channel id -> its protocol's name
        self._stream_seq = 0
        self.loop = None            # the launcher's loop, to read providers' control sockets

    @property
    def enabled(self) -> bool:
        return self.graph.transport.get("data", "zmq") == "socketpair"

    # -- spawn -------------------------------------------------------------------------
    def for_spawn(self, inst) -> tuple[dict[str, str], list[int], tuple | None]:
        """(environment, fds to pass, the control socketpair (ours, the child's)) for a new incarnation."""
        key_env = {"QNET_DATA_KEY": self.key} if self.key else {}
        spec = inst.spec
        streamed = _stream_protocols(spec.provides)
        if not self.enabled and not streamed:
            return key_env, [], None
        use: dict[str, int] = {}
        provide: dict[str, dict[str, int]] = {}
        fds: list[int] = []
        for proto in (_data_protocols(spec.uses) if self.enabled else ()):
            prov = self.graph.provider_of(proto)
            if prov is None:
                continue
            key = (prov, proto, user_identity(spec))
            if key not in self.pairs:
                self.pairs[key] = make_pair()
                self.owner[key] = inst.name
                self._tell_provider(prov, "add", proto, key[2], self.pairs[key][0].fileno())
            use[proto] = self.pairs[key][1].fileno()
            fds.append(use[proto])
        ctl = None
        provided = _data_protocols(spec.provides) if self.enabled else []
        streams: dict[str, int] = {}
        streams_of: dict[str, dict[str, int]] = {}
        if provided or streamed:
            for proto in provided:
                provide[proto] = {}
            for (prov, proto, user), (pend, _uend) in self.pairs.items():
                if prov == inst.name and proto in provide:
                    provide[proto][user] = pend.fileno()
                    fds.append(pend.fileno())
            for chan, pend in self.streams.get(inst.name, {}).items():
                proto = self.stream_protocol.get(chan, "")
                streams_of.setdefault(proto, {})[chan] = pend.fileno()
                if _channel_kind(proto) == "stream":
                    streams[chan] = pend.fileno()
                fds.append(pend.fileno())
            ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ctl[0].setblocking(False)
            fds.append(ctl[1].fileno())
        # "streams": the SOCK_STREAM byte channels, as readers before datagram channels know
        # it; "streams_of": every byte channel under its protocol's name.
        env: dict[str, Any] = {"use": use, "provide": provide, "streams": streams,
                               "streams_of": streams_of}
        if ctl is not None:
            env["ctl"] = ctl[1].fileno()
        return {"QNET_CHANNELS": json.dumps(env), **key_env}, fds, ctl

    def spawned(self, inst, number: int, ctl: tuple | None) -> None:
        """After the child started (or failed to): keep our end of its control socket, close the child's."""
        if ctl is None:
            return
        ctl[1].close()
        self.ctl.setdefault(inst.name, {})[number] = ctl[0]
        if self.loop is not None:
            name = inst.name
            self.loop.add_reader(ctl[0].fileno(), lambda: self._on_provider_ctl(name, number))

    def ended(self, name: str, number: int) -> None:
        """An incarnation exited: its control socket goes."""
        s = self.ctl.get(name, {}).pop(number, None)
        if s is not None:
            if self.loop is not None:
                self.loop.remove_reader(s.fileno())
            s.close()

    def _on_provider_ctl(self, name: str, number: int) -> None:
        """A provider releases byte channels it is done with: {"op": "release", "protocol",
        "peer": channel id}. Anything else is counted and ignored."""
        s = self.ctl.get(name, {}).get(number)
        if s is None:
            return
        for _ in range(256):
            try:
                msg = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self.ended(name, number)
                return
            try:
                m = decode_raw(msg)
                ok = isinstance(m, dict) and m.get("op") == "release" and isinstance(m.get("peer"), str)
            except errors.IpcError:
                ok = False
            if not ok:
                self.errors += 1
                continue
            pend = self.streams.get(name, {}).pop(m["peer"], None)
            if pend is not None:
                pend.close()
                self.stream_protocol.pop(m["peer"], None)

    # -- byte channels -------------------------------------------------------------------
    def new_streams(self, protocol: str, count: int) -> list[tuple[str, socket.socket]]:
        """count fresh byte channels of protocol: (id, the client's end) each; the provider
        has been told of its ends. SOCK_SEQPACKET pairs for a protocol that declares
        byte_channels="seqpacket" (datagram channels). Raises LookupError."""
        proto = registry.get(protocol)
        if proto is None or not proto.byte_channels:
            raise LookupError(f"no byte-channel protocol {protocol!r}")
        kind = proto.channel_kind
        provider = self.graph.provider_of(protocol)
        if provider is None:
            raise LookupError(f"no component of this graph provides {protocol}")
        held = self.streams.setdefault(provider, {})
        if len(held) + count > MAX_STREAMS:
            raise LookupError(f"too many byte channels open at {provider} (limit {MAX_STREAMS})")
        out = []
        for _ in range(count):
            self._stream_seq += 1
            chan = f"{'d' if kind == 'seqpacket' else 'b'}{self._stream_seq}"
            pend, cend = make_stream_pair(kind)
            held[chan] = pend
            self.stream_protocol[chan] = protocol
            self._tell_provider(provider, "add", protocol, chan, pend.fileno())
            out.append((chan, cend))
        return out

    # -- users coming and going ----------------------------------------------------------
    def release_user(self, inst) -> None:
        """The user instance is gone for good (port deleted): its channels close."""
        for key in [k for k, owner in self.owner.items() if owner == inst.name]:
            prov, proto, user = key
            self._tell_provider(prov, "remove", proto, user, None)
            for s in self.pairs.pop(key):
                s.close()
            del self.owner[key]

    def _tell_provider(self, provider: str, op: str, proto: str, user: str, fd: int | None) -> None:
        for number, ctl in list(self.ctl.get(provider, {}).items()):
            try:
                send_channel(ctl, op, proto, user, fd)
            except BlockingIOError:
                # A provider that does not read (stopped): its control queue is full. It gets the
                # channel at its next start; until then this user is not served by it (counted).
                self.errors += 1
                log.warning("channel %s %s/%s: %s.%d is not reading its control socket",
                            op, proto, user, provider, number)
            except OSError as exc:
                # A provider that died: its successor gets every channel at spawn.
                self.ended(provider, number)
                if not isinstance(exc, (BrokenPipeError, ConnectionError)):
                    self.errors += 1
                log.info("channel %s %s/%s not sent to %s.%d: %s", op, proto, user, provider, number, exc)

    def close_all(self) -> None:
        for pair in self.pairs.values():
            for s in pair:
                s.close()
        self.pairs.clear()
        for held in self.streams.values():
            for s in held.values():
                s.close()
        self.streams.clear()
        self.stream_protocol.clear()
        self.owner.clear()
        for by_number in self.ctl.values():
            for s in by_number.values():
                s.close()
        self.ctl.clear()

    def status(self) -> dict[str, Any]:
        held = [c for h in self.streams.values() for c in h]
        datagram = sum(1 for c in held if _channel_kind(self.stream_protocol.get(c, "")) == "seqpacket")
        return {"transport": "socketpair" if self.enabled else "zmq", "channels": len(self.pairs),
                "byte_channels": len(held) - datagram, "datagram_channels": datagram,
                "errors": self.errors}


# -- channels for programs outside the graph ----------------------------------------------
BROKER_NAME = "channels.sock"
MAX_EXTERNAL = 64           # channels handed to programs outside the graph at once
MAX_ASKING = 16             # connections that have not asked yet
ASK_TIMEOUT = 5.0           # seconds a connection may take to ask
MAX_STREAMS_PER_ASK = 64    # byte channels handed out in one answer


def broker_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, BROKER_NAME)


class ChannelBroker:
    """RUN/channels.sock: a program outside the graph (a test, a benchmark, a tool) asks for a
    data channel to a provider and gets its end as an fd (SCM_RIGHTS).

    The request is one message, ``{"protocol": NAME, "user": IDENTITY}``; the answer is
    ``{"ok": true}`` with the fd, or ``{"ok": false, "error": TEXT}``. The channel lives as long
    as the asking connection stays open: when the program exits, its channel is closed and the
    provider told. Only the launcher's own user (or root) may ask (SO_PEERCRED), a name held by a
    component of the graph or by another program is refused, and at most MAX_EXTERNAL channels
    exist at once.
    """

    def __init__(self, channels: DataChannels, runtime_dir: str, loop):
        self.channels = channels
        self.loop = loop
        self.path = broker_path(runtime_dir)
        self.counters = {"granted": 0, "refused": 0, "released": 0}
        self.clients: dict[int, tuple[socket.socket, tuple | None]] = {}
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            try:
                _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            except OSError:
                uid = -1
            if uid not in (0, os.getuid()):
                self._refuse(conn, "permission denied")
                continue
            if len(self.clients) >= MAX_EXTERNAL + MAX_ASKING:
                self._refuse(conn, f"too many connections (limit {MAX_EXTERNAL + MAX_ASKING})")
                continue
            fd = conn.fileno()
            self.clients[fd] = (conn, None)
            self.loop.add_reader(fd, lambda fd=fd: self._on_client(fd))
            # A connection that never asks is closed: nobody holds a launcher fd for nothing.
            self.loop.call_later(ASK_TIMEOUT, lambda fd=fd, c=conn: self._expire(fd, c))

    def _expire(self, fd: int, conn: socket.socket) -> None:
        got = self.clients.get(fd)
        if got is not None and got[0] is conn and got[1] is None:
            self.counters["refused"] += 1
            self._drop(fd)

    def _refuse(self, conn: socket.socket, why: str) -> None:
        self.counters["refused"] += 1
        try:
            conn.send(encode({"ok": False, "error": why}))
        except OSError:
            pass
        conn.close()

    def _on_client(self, fd: int) -> None:
        conn, key = self.clients[fd]
        try:
            msg = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if not msg or key is not None:
            # The program went away (or spoke again, which it must not): its channel closes.
            self._drop(fd)
            return
        try:
            req = decode_raw(msg)
            if isinstance(req, dict) and "streams" in req:
                self._grant_streams(fd, conn, req)
                return
            if not isinstance(req, dict) or not isinstance(req.get("protocol"), str) \
                    or not isinstance(req.get("user"), str) or not 0 < len(req["user"]) <= 64:
                raise errors.BadMessage("request must be {protocol, user} or {streams, count}")
            if not self.channels.enabled:
                raise LookupError('this graph carries data over ZeroMQ (data_transport = "zmq")')
            key = self._grant(req["protocol"], req["user"])
        except (errors.IpcError, LookupError) as exc:
            self.loop.remove_reader(fd)
            del self.clients[fd]
            self._refuse(conn, str(exc))
            return
        try:
            socket.send_fds(conn, [encode({"ok": True})], [self.channels.pairs[key][1].fileno()])
        except OSError:
            self.clients[fd] = (conn, key)
            self._drop(fd)
            return
        self.clients[fd] = (conn, key)
        self.counters["granted"] += 1

    def _grant_streams(self, fd: int, conn: socket.socket, req: dict) -> None:
        """{"streams": PROTOCOL, "count": N}: N byte channels (datagram channels for qnet.udp),
        ids in the answer and the client ends as fds in its order. They do not depend on this
        connection, which closes."""
        self.loop.remove_reader(fd)
        del self.clients[fd]
        count = req.get("count", 1)
        if not isinstance(req["streams"], str) or not isinstance(count, int) or \
                isinstance(count, bool) or not 1 <= count <= MAX_STREAMS_PER_ASK:
            self._refuse(conn, f"request must be {{streams: PROTOCOL, count: 1..{MAX_STREAMS_PER_ASK}}}")
            return
        try:
            got = self.channels.new_streams(req["streams"], count)
        except LookupError as exc:
            self._refuse(conn, str(exc))
            return
        try:
            socket.send_fds(conn, [encode({"ok": True, "channels": [c for c, _ in got]})],
                            [s.fileno() for _, s in got])
            self.counters["granted"] += count
        except OSError:
            self.counters["refused"] += 1   # the provider releases them when it sees EOF
        finally:
            for _, s in got:
                s.close()
            conn.close()

    def _grant(self, protocol: str, user: str) -> tuple[str, str, str]:
        proto = registry.get(protocol)
        if proto is None or not proto.streams:
            raise LookupError(f"no data protocol {protocol!r}")
        provider = self.channels.graph.provider_of(protocol)
        if provider is None:
            raise LookupError(f"no component of this graph provides {protocol}")
        key = (provider, protocol, user)
        if key in self.channels.pairs:
            raise LookupError(f"{protocol} user {user!r} already has a channel")
        if sum(1 for c, k in self.clients.values() if k is not None) >= MAX_EXTERNAL:
            raise LookupError(f"too many channels for programs outside the graph (limit {MAX_EXTERNAL})")
        self.channels.pairs[key] = make_pair()
        self.channels.owner[key] = f"external:{user}"
        self.channels._tell_provider(provider, "add", protocol, user, self.channels.pairs[key][0].fileno())
        return key

    def _drop(self, fd: int) -> None:
        conn, key = self.clients.pop(fd)
        self.loop.remove_reader(fd)
        conn.close()
        if key is not None and key in self.channels.pairs:
            prov, proto, user = key
            self.channels._tell_provider(prov, "remove", proto, user, None)
            for s in self.channels.pairs.pop(key):
                s.close()
            self.channels.owner.pop(key, None)
            self.counters["released"] += 1

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def request_streams(runtime_dir: str, protocol: str, count: int = 1,
                    timeout: float = 5.0) -> list[tuple[str, socket.socket]]:
    """Client side: count byte channels of protocol, (id, our end as a blocking socket) each:
    SOCK_STREAM for qnet.tcp, SOCK_SEQPACKET for qnet.udp. Raises OSError or LookupError."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(timeout)
    try:
        conn.connect(broker_path(runtime_dir))
        conn.send(encode({"streams": protocol, "count": count}))
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, count)
    finally:
        conn.close()
    answer = decode_raw(msg) if msg else {"ok": False, "error": "the launcher closed the connection"}
    ids = answer.get("channels") if isinstance(answer, dict) and answer.get("ok") else None
    if not isinstance(ids, list) or len(ids) != len(fds) or not all(isinstance(i, str) for i in ids):
        for fd in fds:
            os.close(fd)
        raise LookupError(answer.get("error", "refused") if isinstance(answer, dict) else "refused")
    out = [(i, socket.socket(fileno=fd)) for i, fd in zip(ids, fds)]
    for _i, s in out:
        s.setblocking(True)     # the launcher made the pair non-blocking; the flag travels
    return out


def request_channel(runtime_dir: str, protocol: str, user: str, timeout: float = 5.0) -> tuple[socket.socket, int]:
    """Client side: (the connection to keep open, the channel's fd). Raises OSError or LookupError."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(timeout)
    try:
        conn.connect(broker_path(runtime_dir))
        conn.send(encode({"protocol": protocol, "user": user}))
        msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    except BaseException:
        conn.close()
        raise
    answer = decode_raw(msg) if msg else {"ok": False, "error": "the launcher closed the connection"}
    if not isinstance(answer, dict) or not answer.get("ok") or not fds:
        for fd in fds:
            os.close(fd)
        conn.close()
        raise LookupError(answer.get("error", "refused") if isinstance(answer, dict) else "refused")
    return conn, fds[0]
