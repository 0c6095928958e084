"""netstack's TCP binding: qnet.tcp for clients, and the byte channels that carry their bytes.

A client asks the launcher's broker for byte channels (AF_UNIX SOCK_STREAM socketpairs; the
launcher keeps our end and hands it to every incarnation of netstack) and names one in
`connect` or `accept`. From then on the connection's bytes move between the channel and the
core's TCP connection here, in chunks:

- client -> peer: read the channel while the connection's send buffer takes data; a chunk
  that does not fit waits (`from_client`) and reading pauses until the core says WRITABLE.
  EOF on the channel is the client's shutdown(SHUT_WR) or close: our FIN follows the data.
- peer -> client: take what the core received, at most one chunk at a time (`to_client`), and
  write it to the channel; what the channel does not take waits, and nothing more is taken
  from the core until it drains, so the window we advertise is what the connection's receive
  buffer has free (the channel's kernel buffer, STREAM_BUFFER, is the rest of the budget).
  The peer's FIN, once all its data is in the channel, becomes shutdown(SHUT_WR) of our end:
  the client reads EOF.
- The end: a reset or a time-out closes the channel (the client reads EOF, or ECONNRESET if
  it had written bytes we had not read) and `status` names the reason; a normal close closes
  it once both directions are done, while the TCB lingers in TIME-WAIT without it.

A listener may have a readiness channel too (qnet.tcp 1.1, listen's `channel`): no bytes of
any connection travel on it; we write one byte (b"!") whenever its accept queue is non-empty
and the client has no unread byte (SIOCOUTQ of our end is 0) — on every ACCEPTABLE from the
core, after every accept, and when a successor starts — so the client's fd is readable while
a connection waits, with at most one byte queued. The client reads the bytes away, then
accepts with wait=0 until would_block. EOF on it (the client closed every copy of its fd)
closes the listener and releases the channel; close_listener does the same from our side
(the client reads EOF). The listener names its channel in the core (Listener.channel), so
the pairing travels in every snapshot and checkpoint, and survives a crash as well as a
hand-over.

IPv6 (qnet.tcp 1.3): connections and listeners of either layer, tcp4 or tcp6 (the core's,
told apart by id: `_tcp`). Dual stack, as Linux with IPV6_V6ONLY off (its default): an IPv6
listener on :: gets a twin, an IPv4 listener on the same port, and one accept serves both
queues; a connection that came over the twin, or that a client opened to an IPv4-mapped
address (::ffff:a.b.c.d), is an IPv4 connection of tcp4 that the client sees with mapped
addresses (`ByteChannel.mapped`). The twin names its IPv6 listener in the core (its
Listener.channel is "twin:LID", which no channel can be called), so the pair survives a
crash as well as a hand-over. A link-local destination needs its link (connect's scope_id):
the connection leaves from that port's link-local address.

Across a planned restart the hand-over state keeps each channel's binding and the bytes
waiting in `to_client`/`from_client`; the core's snapshot keeps the connections. After a
crash, channels whose connection is not known are closed and reported `reset`.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import termios
import time
from collections import OrderedDict, deque
from typing import Any

from components.netstack.core import StackError
from components.netstack.core.tcp import TcpEvent
from components.netstack.core.tcp.layer import ACCEPTABLE
from components.netstack.core.tcp.state import State
from components.netstack.tcp_calls import MAPPED as _MAPPED
from components.netstack.tcp_calls import TWIN, TcpCalls
from ipc import errors
from ipc.protocols.netstack import TCP

CHUNK = 256 * 1024          # bytes moved per read or write of a channel
READS_PER_WAKEUP = 16       # chunks read from one channel before yielding to others
SERVICE_ROUNDS = 64         # loopback drains and event rounds in one service() call
READY = b"!"                # what a readiness channel carries
_OUTQ = struct.Struct("i")
ENDED_KEPT = 4096           # ended channels whose reason `status` still answers

# States in which the peer's FIN has been received (RFC 9293 §3.3.2).
_PEER_FIN = frozenset((State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK, State.TIME_WAIT))

class ByteChannel:
    __slots__ = ("id", "sock", "fd", "cid", "lid", "to_client", "from_client", "reading",
                 "writing", "eof_in", "shut_out", "status", "owner", "tcb_closed", "mapped")

    def __init__(self, chan_id: str, sock: socket.socket) -> None:
        self.id = chan_id
        self.sock = sock
        self.fd = sock.fileno()
        self.cid: int | None = None
        self.lid: int | None = None         # a listener's readiness channel: its listener
        self.to_client = memoryview(b"")    # taken from the core, not yet in the channel
        self.from_client = memoryview(b"")  # read from the channel, not yet taken by the core
        self.reading = False
        self.writing = False
        self.eof_in = False                 # the client shut its write side (we sent FIN)
        self.shut_out = False               # we shut ours (the peer's FIN reached the client)
        self.tcb_closed = False             # the core said CLOSED: the TCB is gone
        self.status = "unbound"
        self.owner = ""
        self.mapped = False                 # an IPv4 connection of an IPv6 socket (dual stack)


class TcpService(TcpCalls):
    """qnet.tcp: the byte channels' pump here, the calls in tcp_calls.py. `ns` is the Netstack
    component."""

    def __init__(self, ns) -> None:
        self.ns = ns
        self.rt = ns.rt
        self.chans: dict[str, ByteChannel] = {}
        self.by_cid: dict[int, ByteChannel] = {}
        self.by_lid: dict[int, ByteChannel] = {}   # listeners' readiness channels
        self.connecting: dict[int, tuple[Any, ByteChannel, Any]] = {}   # cid -> (token, chan, timer)
        self.accepting: dict[int, deque] = {}      # lid -> waiters (token, chan, timer)
        self.ended: OrderedDict[str, str] = OrderedDict()
        self.twins: dict[int, int] = {}            # dual IPv6 listener -> its IPv4 twin
        self.twin_of: dict[int, int] = {}          # IPv4 twin -> its IPv6 listener
        self.mapped_lids: set[int] = set()         # IPv4 listeners of IPv6 sockets (::ffff:a.b.c.d)
        self.active = False
        self.counters = {"channels_released": 0, "channel_errors": 0, "client_gone_resets": 0,
                         "bytes_from_clients": 0, "bytes_to_clients": 0,
                         "readiness_signals": 0, "listeners_client_gone": 0}
        self._service_soon = None
        inherited = self.rt.byte_channels(TCP, self)
        for chan_id, fd in inherited.items():
            self._adopt(chan_id, fd)

    def _tcp(self, ident: int):
        """The TCP layer a connection or listener id is of (disjoint ranges: core/stack.py)."""
        stack = self.ns.stack
        return stack.tcp6 if stack.tcp6.owns(ident) else stack.tcp4

    def _conn(self, cid: int):
        return self._tcp(cid).conns.get(cid)

    def _listener(self, lid: int):
        return self._tcp(lid).listeners.get(lid)

    def _all_listeners(self) -> dict:
        stack = self.ns.stack
        return {**stack.tcp4.listeners, **stack.tcp6.listeners}

    # -- channels coming and going (the runtime calls add_peer/remove_peer) ------------------
    def _adopt(self, chan_id: str, fd: int) -> ByteChannel:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        ch = self.chans[chan_id] = ByteChannel(chan_id, sock)
        return ch

    def add_peer(self, peer: bytes, fd: int) -> None:
        chan_id = peer.decode("ascii", "replace")
        old = self.chans.get(chan_id)
        if old is not None:
            self._close_channel(old, "unknown", release=False)
        ch = self._adopt(chan_id, fd)
        if self.active:
            self._watch_unbound(ch)

    def remove_peer(self, peer: bytes) -> None:
        ch = self.chans.get(peer.decode("ascii", "replace"))
        if ch is not None:
            if ch.lid is not None:
                self._listener_gone(ch, release=False)
                return
            self._close_channel(ch, "closed", release=False)

    def _watch_unbound(self, ch: ByteChannel) -> None:
        # Until a connect/accept names it, a channel is watched only for its client going away.
        self.rt.loop.add_reader(ch.fd, lambda: self._unbound_readable(ch))
        ch.reading = True

    def _unbound_readable(self, ch: ByteChannel) -> None:
        try:
            peek = ch.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        self.rt.loop.remove_reader(ch.fd)
        ch.reading = False
        if not peek:
            self._close_channel(ch, "closed")     # the client dropped it unused
        # else: bytes before the connection exists wait in the channel until it is bound

    def _close_channel(self, ch: ByteChannel, status: str, release: bool = True) -> None:
        if self.chans.get(ch.id) is ch:
            del self.chans[ch.id]
        if ch.cid is not None and self.by_cid.get(ch.cid) is ch:
            del self.by_cid[ch.cid]
        if ch.lid is not None and self.by_lid.get(ch.lid) is ch:
            del self.by_lid[ch.lid]
        loop = self.rt.loop
        if ch.reading:
            loop.remove_reader(ch.fd)
        if ch.writing:
            loop.remove_writer(ch.fd)
        ch.reading = ch.writing = False
        ch.status = status
        try:
            ch.sock.close()
        except OSError:
            pass
        if release:
            self.rt.release_channel(TCP, ch.id)
            self.counters["channels_released"] += 1
        for cid, (token, waiting, timer) in list(self.connecting.items()):
            if waiting is ch:
                # The client gave up on a connect under way (it closed the fd, as Happy
                # Eyeballs closes the attempts that lost): the handshake ends here.
                del self.connecting[cid]
                if timer is not None:
                    timer.cancel()
                self._tcp(cid).abort(cid, time.monotonic())
                self.rt.rpc.reply_error(token, errors.RemoteError("the channel was closed", code="reset"))
        self.ended[ch.id] = status
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    def _take_channel(self, chan_id: str) -> ByteChannel:
        self.rt._on_channel_ctl()       # a channel granted just now may still be in the queue
        ch = self.chans.get(chan_id)
        if ch is None:
            raise errors.RemoteError(f"no byte channel {chan_id!r} (ask the launcher's broker)",
                                     code="no_channel")
        if ch.cid is not None or ch.lid is not None or ch.id in self._waiting_channels():
            raise errors.RemoteError(f"byte channel {chan_id!r} is in use", code="busy")
        return ch

    def _waiting_channels(self) -> set[str]:
        out = {c.id for _t, c, _tm in self.connecting.values()}
        for q in self.accepting.values():
            out.update(c.id for _t, c, _tm in q)
        return out

    # -- binding a channel to a connection -----------------------------------------------
    def _bind(self, ch: ByteChannel, cid: int) -> None:
        loop = self.rt.loop
        if ch.reading:
            loop.remove_reader(ch.fd)
            ch.reading = False
        ch.cid = cid
        ch.status = "established"
        self.by_cid[cid] = ch
        self._resume_reading(ch)
        self._push(ch)

    def _resume_reading(self, ch: ByteChannel) -> None:
        if not ch.reading and not ch.eof_in and not ch.from_client and self.active:
            self.rt.loop.add_reader(ch.fd, lambda: self._client_readable(ch))
            ch.reading = True

    def _pause_reading(self, ch: ByteChannel) -> None:
        if ch.reading:
            self.rt.loop.remove_reader(ch.fd)
            ch.reading = False

    def _client_readable(self, ch: ByteChannel) -> None:
        """Bytes from the client: into the connection's send buffer while it takes them."""
        now = time.monotonic()
        tcp = self._tcp(ch.cid)
        for _ in range(READS_PER_WAKEUP):
            try:
                data = ch.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                ch.eof_in = True
                self._pause_reading(ch)
                self._client_eof(ch, now)
                return
            self.counters["bytes_from_clients"] += len(data)
            try:
                n = tcp.send(ch.cid, data, now)
            except StackError:
                # The connection cannot send any more (closing or gone): what the client
                # writes now is lost, as on a socket after the peer reset it.
                self._pause_reading(ch)
                return
            if n < len(data):
                ch.from_client = memoryview(data)[n:]
                self._pause_reading(ch)
                return

    def _client_eof(self, ch: ByteChannel, now: float) -> None:
        if ch.from_client:
            return                  # the FIN follows once the rest is taken (_writable)
        tcp = self._tcp(ch.cid)
        conn = tcp.conns.get(ch.cid)
        if conn is not None and conn.state in _PEER_FIN and conn.rcvbuf:
            # The peer sent all it will (its FIN is in), so flow control is over: our FIN
            # may end the connection within this very drain (LAST-ACK -> CLOSED, at once
            # over loopback), and the core forgets a closed connection with its receive
            # buffer. What the client has not read yet waits here instead.
            rest = tcp.recv(ch.cid, None, now)
            ch.to_client = memoryview(bytes(ch.to_client) + rest)
        try:
            tcp.close(ch.cid, now)
        except StackError:
            pass
        self._maybe_finished(ch)

    def _writable(self, ch: ByteChannel, now: float) -> None:
        """The connection's send buffer has room again."""
        if ch.from_client:
            try:
                n = self._tcp(ch.cid).send(ch.cid, ch.from_client, now)
            except StackError:
                ch.from_client = memoryview(b"")
                return
            ch.from_client = ch.from_client[n:]
            if ch.from_client:
                return
            if ch.eof_in:
                self._client_eof(ch, now)
                return
        self._resume_reading(ch)

    def _push(self, ch: ByteChannel) -> None:
        """Bytes for the client: from the connection into the channel while it takes them."""
        if ch.cid is None or not self.active:
            return
        tcp = self._tcp(ch.cid)
        now = time.monotonic()
        sock = ch.sock
        while True:
            if not ch.to_client:
                conn = tcp.conns.get(ch.cid)
                if conn is None:
                    break
                data = tcp.recv(ch.cid, CHUNK, now)
                if not data:
                    break
                ch.to_client = memoryview(data)
            try:
                n = sock.send(ch.to_client)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                # The client closed its end for good: like a close() with data arriving,
                # the connection is reset (RFC 9293 §3.10.4, Linux's behaviour).
                self.counters["client_gone_resets"] += 1
                tcp.abort(ch.cid, now)
                self._close_channel(ch, "closed")
                return
            self.counters["bytes_to_clients"] += n
            ch.to_client = ch.to_client[n:]
            if ch.to_client:
                if not ch.writing:
                    self.rt.loop.add_writer(ch.fd, lambda: self._channel_writable(ch))
                    ch.writing = True
                return
        if ch.writing:
            self.rt.loop.remove_writer(ch.fd)
            ch.writing = False
        conn = tcp.conns.get(ch.cid)
        if not ch.shut_out and (conn is None or conn.state in _PEER_FIN) and \
                (conn is None or not conn.rcvbuf):
            ch.shut_out = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if ch.status == "established":
                ch.status = "peer_closed"
        if ch.tcb_closed and self.chans.get(ch.id) is ch:
            self._close_channel(ch, "closed")       # the TCB is gone, every byte delivered
            return
        self._maybe_finished(ch)

    def _channel_writable(self, ch: ByteChannel) -> None:
        self._push(ch)
        self.ns._flush_transmit()

    def _maybe_finished(self, ch: ByteChannel) -> None:
        if ch.eof_in and ch.shut_out and not ch.to_client and not ch.from_client:
            self._close_channel(ch, "closed")

    # -- listeners' readiness channels ----------------------------------------------------
    def _bind_listener(self, ch: ByteChannel, lid: int) -> None:
        if ch.reading:
            self.rt.loop.remove_reader(ch.fd)
            ch.reading = False
        lst = self._listener(lid)
        ch.lid = lid
        ch.status = "listening"
        ch.owner = lst.owner or ""
        self.by_lid[lid] = ch
        lst.channel = ch.id

    def _watch_listener(self, ch: ByteChannel) -> None:
        if not ch.reading and self.active:
            self.rt.loop.add_reader(ch.fd, lambda: self._listener_channel_readable(ch))
            ch.reading = True

    def _listener_channel_readable(self, ch: ByteChannel) -> None:
        # The client has nothing to say here: what it writes is read away unseen; only EOF
        # (every copy of its fd closed: it is gone) means something.
        for _ in range(READS_PER_WAKEUP):
            try:
                data = ch.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._listener_gone(ch)
                return

    def _signal_ready(self, lid: int) -> None:
        """A byte on lid's readiness channel if a connection waits and the client has read
        every byte we wrote (so its fd is readable again, and at most one byte is queued)."""
        ch = self.by_lid.get(lid)
        lst = self._listener(lid)
        twin = self._listener(self.twins[lid]) if lid in self.twins else None
        if ch is None or lst is None or not (lst.accept or (twin is not None and twin.accept)) \
                or not self.active:
            return
        try:
            unread = _OUTQ.unpack(fcntl.ioctl(ch.fd, termios.TIOCOUTQ, bytes(_OUTQ.size)))[0]
            if unread:
                return
            ch.sock.send(READY, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            self.counters["readiness_signals"] += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._listener_gone(ch)         # EPIPE: the client closed its end

    def _listener_gone(self, ch: ByteChannel, release: bool = True) -> None:
        """The client of a readiness channel went away: its listener closes with it."""
        lid = ch.lid
        self._close_channel(ch, "closed", release=release)
        if lid is not None and self._listener(lid) is not None:
            self.counters["listeners_client_gone"] += 1
            self._close_listener(lid)
            self.ns.checkpoint()

    def _close_listener(self, lid: int) -> None:
        now = time.monotonic()
        self._tcp(lid).close_listener(lid, now)
        twin = self.twins.pop(lid, None)
        if twin is not None:
            self.twin_of.pop(twin, None)
            if self._listener(twin) is not None:
                self.ns.stack.tcp4.close_listener(twin, now)
        self.mapped_lids.discard(lid)
        for token, ch, timer in self.accepting.pop(lid, ()):
            if timer is not None:
                timer.cancel()
            self.rt.rpc.reply_error(token, errors.RemoteError("the listener was closed",
                                                              code="not_found"))
        ready = self.by_lid.get(lid)
        if ready is not None:
            self._close_channel(ready, "closed")    # the client reads EOF

    # -- events from the core --------------------------------------------------------------
    def service(self) -> None:
        """After every wake-up: what the stack looped back to itself, and the core's TCP
        events. A connection to ourselves (127/8, our own addresses) makes its other end's
        events in the same drain, and handling them (bytes into a channel, more taken from
        one, a window update) sends again: rounds until quiet, at most SERVICE_ROUNDS, then
        a zero-delay timer brings the loop (and this) back after the other I/O had its turn."""
        stack = self.ns.stack
        for _ in range(SERVICE_ROUNDS):
            now = time.monotonic()
            stack.drain(now)
            evs = stack.tcp4.take_events()
            if stack.tcp6._events:
                evs += stack.tcp6.take_events()
            if not evs:
                return
            self._handle_events(evs, now)
        stack.drain(time.monotonic())
        if self._service_soon is None or self._service_soon.cancelled:
            self._service_soon = self.rt.loop.call_later(0.0, self._service_due)

    def _service_due(self) -> None:
        self._service_soon = None       # the idle hook that follows every wake-up services

    def _handle_events(self, evs: list, now: float) -> None:
        for ident, ev in evs:
            if ev == ACCEPTABLE:
                lid = self.twin_of.get(ident, ident)
                self._serve_acceptors(lid, now)
                self._signal_ready(lid)
                continue
            pending = self.connecting.get(ident)
            if pending is not None:
                self._connect_event(ident, ev, pending, now)
                continue
            ch = self.by_cid.get(ident)
            if ch is None:
                continue
            if ev is TcpEvent.READABLE or ev is TcpEvent.PEER_CLOSED:
                self._push(ch)
            elif ev is TcpEvent.WRITABLE:
                self._writable(ch, now)
            elif ev is TcpEvent.RESET or ev is TcpEvent.TIMED_OUT:
                self._close_channel(ch, "reset" if ev is TcpEvent.RESET else "timed_out")
            elif ev is TcpEvent.CLOSED:
                ch.tcb_closed = True
                self._push(ch)      # closes the channel once the client has every byte

    def _connect_event(self, cid: int, ev, pending, now: float) -> None:
        token, ch, timer = pending
        if ev is TcpEvent.CONNECTED:
            del self.connecting[cid]
            if timer is not None:
                timer.cancel()
            self._bind(ch, cid)
            self.rt.rpc.reply(token, self._conn_result(cid, ch.mapped))
        elif ev in (TcpEvent.RESET, TcpEvent.TIMED_OUT, TcpEvent.CLOSED):
            del self.connecting[cid]
            if timer is not None:
                timer.cancel()
            code = "refused" if ev is TcpEvent.RESET else "timed_out"
            self._close_channel(ch, code)
            self.rt.rpc.reply_error(token, errors.RemoteError(
                "connection refused" if code == "refused" else "connection timed out", code=code))

    def _connect_timeout(self, cid: int) -> None:
        pending = self.connecting.pop(cid, None)
        if pending is None:
            return
        token, ch, _timer = pending
        self._tcp(cid).abort(cid, time.monotonic())
        self._close_channel(ch, "timed_out")
        self.rt.rpc.reply_error(token, errors.RemoteError("connection timed out", code="timed_out"))
        self.ns._flush_transmit()

    def _accept_one(self, lid: int) -> tuple[int, bool] | None:
        """The next established connection of a listener or of its IPv4 twin, and whether
        its client sees it IPv4-mapped; None when none waits."""
        tcp = self._tcp(lid)
        cid = tcp.accept(lid) if lid in tcp.listeners else None
        if cid is not None:
            return cid, lid in self.mapped_lids
        twin = self.twins.get(lid)
        if twin is not None and twin in self.ns.stack.tcp4.listeners:
            cid = self.ns.stack.tcp4.accept(twin)
            if cid is not None:
                return cid, True
        return None

    def _serve_acceptors(self, lid: int, now: float) -> None:
        q = self.accepting.get(lid)
        while q:
            got = self._accept_one(lid)
            if got is None:
                return
            cid, mapped = got
            token, ch, timer = q.popleft()
            if timer is not None:
                timer.cancel()
            ch.mapped = mapped
            self._bind(ch, cid)
            self.rt.rpc.reply(token, self._conn_result(cid, mapped))
        self.accepting.pop(lid, None)

    def _accept_timeout(self, lid: int, token) -> None:
        q = self.accepting.get(lid)
        if not q:
            return
        for item in list(q):
            if item[0] is token:
                q.remove(item)
                self.rt.rpc.reply_error(token, errors.RemoteError("no connection arrived in time",
                                                                  code="would_block"))
        if not q:
            self.accepting.pop(lid, None)

    def _conn_result(self, cid: int, mapped: bool = False) -> dict:
        conn = self._conn(cid)
        local, remote = conn.local_ip, conn.remote_ip
        if mapped:
            local = ipaddress.IPv6Address(_MAPPED | int(local))
            remote = ipaddress.IPv6Address(_MAPPED | int(remote))
        return {"conn": cid, "local": local, "local_port": conn.local_port,
                "remote": remote, "remote_port": conn.remote_port,
                "scope_id": self.ns.udp.scope_of(conn.local_ip)}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.active = True
        for ch in list(self.chans.values()):
            if ch.lid is not None:
                self._watch_listener(ch)
                # A byte the predecessor wrote may have been read meanwhile, or never written.
                self._signal_ready(ch.lid)
            elif ch.cid is None:
                if not ch.reading:
                    self._watch_unbound(ch)
            else:
                if ch.from_client:
                    self._writable(ch, time.monotonic())
                self._resume_reading(ch)
                self._push(ch)

    def stop(self) -> None:
        """Stop moving bytes (freeze): what is in the channels stays there for the successor."""
        self.active = False
        loop = self.rt.loop
        for ch in self.chans.values():
            if ch.reading:
                loop.remove_reader(ch.fd)
                ch.reading = False
            if ch.writing:
                loop.remove_writer(ch.fd)
                ch.writing = False

    def state(self) -> dict:
        """The binding of every channel and the bytes in flight through us (hand-over only)."""
        return {"channels": {ch.id: {"cid": ch.cid, "to_client": bytes(ch.to_client),
                                     "from_client": bytes(ch.from_client), "eof_in": ch.eof_in,
                                     "shut_out": ch.shut_out, "status": ch.status,
                                     "tcb_closed": ch.tcb_closed,
                                     "owner": ch.owner, "mapped": ch.mapped}
                             for ch in self.chans.values()},
                "ended": dict(self.ended), "mapped_lids": sorted(self.mapped_lids)}

    def restore(self, state: dict | None, handover: bool) -> None:
        """After activate: bind inherited channels again. After a hand-over, channels the
        predecessor did not know are new and unbound; after a crash every connection is lost,
        so every inherited channel is closed and reported reset (a client whose connect
        finds its channel gone asks for a fresh one)."""
        state = state or {}
        known = state.get("channels", {}) if handover else {}
        self.ended.update({str(k): str(v) for k, v in state.get("ended", {}).items()})
        self.mapped_lids = {int(x) for x in state.get("mapped_lids", ())} if handover else set()
        now = time.monotonic()
        stack = self.ns.stack
        # Dual listeners: each twin names its IPv6 listener (checkpoints keep both).
        for lid, lst in list(stack.tcp4.listeners.items()):
            if lst.channel and lst.channel.startswith(TWIN):
                try:
                    lid6 = int(lst.channel[len(TWIN):])
                except ValueError:
                    lid6 = -1
                if lid6 in stack.tcp6.listeners:
                    self.twins[lid6], self.twin_of[lid] = lid, lid6
                else:
                    stack.tcp4.close_listener(lid, now)
        # Listeners survive a crash too (checkpoints keep them), and with them the channels
        # they name; a listener whose channel the launcher no longer holds lost its client.
        ready = {lst.channel: lid for lid, lst in self._all_listeners().items()
                 if lst.channel and not lst.channel.startswith(TWIN)}
        for chan_id, lid in ready.items():
            ch = self.chans.get(chan_id)
            if ch is None:
                self._close_listener(lid)
                self.counters["listeners_client_gone"] += 1
            else:
                self._bind_listener(ch, lid)
        for ch in list(self.chans.values()):
            if ch.lid is not None:
                continue
            d = known.get(ch.id)
            if d is None:
                if not handover:
                    self._close_channel(ch, "reset")
                continue
            cid = d.get("cid")
            if cid is None:
                continue
            closed = bool(d.get("tcb_closed"))     # only bytes for the client are left
            if self._conn(int(cid)) is None and not closed:
                self._close_channel(ch, "reset")
                continue
            ch.tcb_closed = closed
            ch.cid = int(cid)
            ch.to_client = memoryview(bytes(d.get("to_client", b"")))
            ch.from_client = memoryview(bytes(d.get("from_client", b"")))
            ch.eof_in = bool(d.get("eof_in"))
            ch.shut_out = bool(d.get("shut_out"))
            ch.status = str(d.get("status", "established"))
            ch.owner = str(d.get("owner", ""))
            ch.mapped = bool(d.get("mapped"))
            self.by_cid[ch.cid] = ch
