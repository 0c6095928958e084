"""netstack's UDP binding for clients: qnet.udp, and the datagram channels of its sockets.

A client asks the launcher's broker for datagram channels (AF_UNIX SOCK_SEQPACKET pairs; the
launcher keeps our end and hands it to every incarnation of netstack) and names one in `bind`.
The socket is then a core UDP socket (core/udp.py) whose datagrams move here, one channel
message per datagram (heads in ipc/protocols/udp.py):

- client -> peer: when the channel is readable, up to READS_PER_WAKEUP messages or
  BYTES_PER_WAKEUP bytes (so one busy socket cannot starve the others), each sent through
  Stack.udp_sendto (its fast path when the socket's TTL and TOS are the defaults). A send that
  fails, or a malformed message, is counted on the socket and never answered.
- peer -> client: after every wake-up the datagrams the core queued for our sockets are
  written to their channels; a channel that is full drops the datagram (counted), as a full
  SO_RCVBUF does: the loop never waits on a client.
- EOF on a channel (the client closed every copy of its end) closes the socket and releases
  the channel.

State: the channel <-> socket mapping and the options the core does not keep (TTL, TOS, the
recv_* flags, reuse flags) travel in the hand-over state and in checkpoints; the sockets and
their queued datagrams travel in the core's snapshot. Datagrams clients wrote while netstack
was down wait in the channels and are read by the next incarnation.
"""
from __future__ import annotations

import fcntl
import ipaddress
import select
import socket
import struct
import time

from components.netstack.core import StackError
from components.netstack.wire import PROTO_UDP, build_udp
from ipc import errors
from ipc.protocols.udp import (UDP, UDP_ERROR_HEAD, UDP_MAX_MESSAGE, UDP_MAX_PAYLOAD, UDP_RECV_HEAD,
                               UDP_SEND_HEAD)

READS_PER_WAKEUP = 64           # messages read from one channel before yielding to others
BYTES_PER_WAKEUP = 1 << 20      # ... or this many bytes (16 datagrams of 64 KiB, 720 fragments)
RECV_BATCH = 1024               # datagrams taken from a core socket per wake-up (its queue holds fewer)
EPHEMERAL_MIN, EPHEMERAL_MAX = 32768, 60999   # Linux's ip_local_port_range, as TCP's
_ZERO4 = bytes(4)
_SIOCOUTQ = 0x5411
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_HUP = select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000)

_STACK_TO_UDP = {"address_in_use": "address_in_use", "address_not_available": "address_not_available",
                 "not_found": "not_found", "no_route": "no_route", "no_address": "no_route",
                 "link_down": "no_route", "no_device": "bad_argument", "limit": "limit",
                 "bad_argument": "bad_argument"}

# Per-socket counters (also the sum over sockets in `stats`).
SOCKET_COUNTERS = ("rx_datagrams", "rx_dropped_full", "tx_datagrams", "tx_errors", "rx_bad_messages",
                   "rx_icmp_errors")


def _remote_error(e: StackError) -> errors.RemoteError:
    return errors.RemoteError(str(e), code=_STACK_TO_UDP.get(e.code, "failed"))


def parse_send(msg: bytes) -> tuple[int, int, int, int, memoryview]:
    """A client's message: (destination as an int, port, ttl, tos, payload); -1 for ttl or tos:
    the socket's. Destination 0 with port 0: the connected one. ValueError when malformed."""
    if len(msg) < UDP_SEND_HEAD.size:
        raise ValueError(f"{len(msg)} bytes: shorter than the send head")
    if len(msg) > UDP_MAX_MESSAGE:
        raise ValueError(f"{len(msg) - UDP_SEND_HEAD.size} bytes of payload exceed {UDP_MAX_PAYLOAD}")
    dst, port, ttl, tos = UDP_SEND_HEAD.unpack_from(msg)
    if not (ttl == -1 or 1 <= ttl <= 255) or not -1 <= tos <= 255:
        raise ValueError(f"ttl {ttl} or tos {tos} out of range")
    if (dst == _ZERO4) != (port == 0):
        raise ValueError("address 0.0.0.0 goes with port 0 (the connected destination) only")
    return int.from_bytes(dst, "big"), port, ttl, tos, memoryview(msg)[UDP_SEND_HEAD.size:]


def recv_head(src: int, sport: int, dst: int, ttl: int, tos: int, ifindex: int) -> bytes:
    return UDP_RECV_HEAD.pack(src.to_bytes(4, "big"), sport, dst.to_bytes(4, "big"), ttl, tos, ifindex)


def pick_ephemeral(used: set[int], rng) -> int | None:
    """RFC 6056 §3.3.1 (Algorithm 1): a random start in the range, then a linear search."""
    count = EPHEMERAL_MAX - EPHEMERAL_MIN + 1
    start = rng.randrange(count)
    for i in range(count):
        port = EPHEMERAL_MIN + (start + i) % count
        if port not in used:
            return port
    return None


def _overlap(a, b) -> bool:
    return a is None or b is None or a == b


class DatagramChannel:
    __slots__ = ("id", "sock", "fd", "sid", "reading", "owner", "ttl", "tos", "flags",
                 "reuse_address", "reuse_port", "fixed_address", "c")

    def __init__(self, chan_id: str, sock: socket.socket) -> None:
        self.id = chan_id
        self.sock = sock
        self.fd = sock.fileno()
        self.sid: int | None = None
        self.reading = False
        self.owner = ""
        self.ttl: int | None = None         # IP_TTL; None: the stack's default
        self.tos = 0                        # IP_TOS
        self.flags = {"recv_pktinfo": False, "recv_ttl": False, "recv_tos": False}
        self.reuse_address = False
        self.reuse_port = False
        self.fixed_address = False          # the local address was bound, not set by connect
        self.c = dict.fromkeys(SOCKET_COUNTERS, 0)

    def saved(self) -> dict:
        return {"sid": self.sid, "owner": self.owner, "ttl": self.ttl, "tos": self.tos,
                "flags": dict(self.flags), "reuse_address": self.reuse_address,
                "reuse_port": self.reuse_port, "fixed_address": self.fixed_address,
                "counters": dict(self.c)}

    def load(self, d: dict) -> None:
        self.sid = int(d["sid"])
        self.owner = str(d.get("owner", ""))
        self.ttl = None if d.get("ttl") is None else int(d["ttl"])
        self.tos = int(d.get("tos", 0))
        self.flags.update({k: bool(v) for k, v in d.get("flags", {}).items() if k in self.flags})
        self.reuse_address = bool(d.get("reuse_address"))
        self.reuse_port = bool(d.get("reuse_port"))
        self.fixed_address = bool(d.get("fixed_address"))
        self.c.update({k: int(v) for k, v in d.get("counters", {}).items() if k in self.c})


class UdpService:
    """The handlers of qnet.udp and the datagram channels' pump. `ns` is the Netstack component."""

    def __init__(self, ns) -> None:
        self.ns = ns
        self.rt = ns.rt
        self.chans: dict[str, DatagramChannel] = {}
        self.by_sid: dict[int, DatagramChannel] = {}
        # ifindex of a port in the heads: 1-based, stable while this graph runs (kept in the
        # state), never reused for another name; lo is 1 as in Linux.
        self.ifindex: dict[str, int] = {"lo": 1}
        self.active = False
        self.counters = {"channels_released": 0, "channel_errors": 0, "sockets_closed_by_eof": 0,
                         "closed": dict.fromkeys(SOCKET_COUNTERS, 0)}
        # Channels added later reach add_peer (the launcher's "add" over the control socket);
        # the inherited ones are in QNET_CHANNELS "streams_of" under our protocol.
        self.rt.byte_channels(UDP, self)
        for chan_id, fd in self.rt.spec.channels.get("streams_of", {}).get(UDP.name, {}).items():
            self._adopt(str(chan_id), int(fd))

    @property
    def stack(self):
        return self.ns.stack

    # -- channels coming and going (the runtime calls add_peer/remove_peer) ------------------
    def _adopt(self, chan_id: str, fd: int) -> DatagramChannel:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        ch = self.chans[chan_id] = DatagramChannel(chan_id, sock)
        return ch

    def add_peer(self, peer: bytes, fd: int) -> None:
        chan_id = peer.decode("ascii", "replace")
        old = self.chans.get(chan_id)
        if old is not None:
            self._close_channel(old, release=False)
        ch = self._adopt(chan_id, fd)
        if self.active:
            self._watch(ch)

    def remove_peer(self, peer: bytes) -> None:
        ch = self.chans.get(peer.decode("ascii", "replace"))
        if ch is not None:
            self._close_channel(ch, release=False)

    def _watch(self, ch: DatagramChannel) -> None:
        if not ch.reading:
            self.rt.loop.add_reader(ch.fd, lambda: self._readable(ch))
            ch.reading = True

    def _unwatch(self, ch: DatagramChannel) -> None:
        if ch.reading:
            self.rt.loop.remove_reader(ch.fd)
            ch.reading = False

    def _hung_up(self, ch: DatagramChannel) -> bool:
        """After recv gave 0 bytes: the client's end is gone, or it sent an empty message
        (which SEQPACKET allows and recv cannot tell apart)."""
        p = select.poll()
        p.register(ch.fd, _HUP)
        return bool(p.poll(0))

    def _close_channel(self, ch: DatagramChannel, release: bool = True) -> None:
        """The channel goes, and its socket with it."""
        if self.chans.get(ch.id) is ch:
            del self.chans[ch.id]
        self._unwatch(ch)
        if ch.sid is not None:
            if self.by_sid.get(ch.sid) is ch:
                del self.by_sid[ch.sid]
            try:
                self.stack.udp_close(ch.sid)
            except StackError:
                pass
            for k, v in ch.c.items():
                self.counters["closed"][k] += v
            ch.sid = None
        try:
            ch.sock.close()
        except OSError:
            pass
        if release:
            self.rt.release_channel(UDP, ch.id)
            self.counters["channels_released"] += 1

    def _take_channel(self, chan_id: str) -> DatagramChannel:
        self.rt._on_channel_ctl()       # a channel granted just now may still be in the queue
        ch = self.chans.get(chan_id)
        if ch is None:
            raise errors.RemoteError(f"no datagram channel {chan_id!r} (ask the launcher's broker)",
                                     code="no_channel")
        if ch.sid is not None:
            raise errors.RemoteError(f"datagram channel {chan_id!r} is in use", code="busy")
        return ch

    def _sock(self, sid: int) -> DatagramChannel:
        ch = self.by_sid.get(sid)
        if ch is None:
            raise errors.RemoteError(f"no UDP socket {sid}", code="not_found")
        return ch

    # -- client -> peer --------------------------------------------------------------------
    def _readable(self, ch: DatagramChannel) -> None:
        if ch.sid is None:
            self._unbound_readable(ch)
            return
        sock = ch.sock
        c = ch.c
        now = time.monotonic()
        budget = BYTES_PER_WAKEUP
        for _ in range(READS_PER_WAKEUP):
            try:
                # One byte more than the largest valid message: a longer one shows as too long.
                msg = sock.recv(UDP_MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                if self._hung_up(ch):
                    self.counters["sockets_closed_by_eof"] += 1
                    self._close_channel(ch)
                    return
                c["rx_bad_messages"] += 1
                continue
            try:
                dst, port, ttl, tos, payload = parse_send(msg)
            except ValueError:
                c["rx_bad_messages"] += 1
                continue
            try:
                self._send(ch, dst, port, ttl, tos, payload, now)
                c["tx_datagrams"] += 1
            except (StackError, ValueError):
                c["tx_errors"] += 1
            budget -= len(msg)
            if budget <= 0:
                return

    def _unbound_readable(self, ch: DatagramChannel) -> None:
        # Until bind names it, a channel is watched only for its client going away; a message
        # before bind waits in the channel.
        try:
            peek = ch.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        if not peek and self._hung_up(ch):
            self._close_channel(ch)
            return
        self._unwatch(ch)

    def _send(self, ch: DatagramChannel, dst: int, port: int, ttl: int, tos: int, payload,
              now: float) -> None:
        stack = self.stack
        sid = ch.sid
        if port == 0:
            s = stack.udp4.get(sid)
            if s.remote_int is None:
                raise StackError("destination_required", f"socket {sid} is not connected")
            dst, port = s.remote_int, s.remote_port
        ttl = ch.ttl if ttl == -1 else ttl
        tos = ch.tos if tos == -1 else tos
        if ttl is None and not tos:
            # The core's fast path (a resolved unicast neighbour, no fragments), else its
            # general path: the same as a qnet.datagram "send".
            stack.udp_sendto(sid, payload, dst, port, now)
            return
        self._send_marked(sid, payload, ipaddress.IPv4Address(dst), port, ttl, tos, now)

    def _send_marked(self, sid: int, payload, addr: ipaddress.IPv4Address, port: int,
                     ttl: int | None, tos: int, now: float) -> None:
        """A datagram with the socket's IP_TTL or IP_TOS: Stack.udp_sendto's general path
        (whose fast path builds TTL 64 and TOS 0 only), with the IP header's fields set."""
        stack = self.stack
        s = stack.udp4.get(sid)
        if len(payload) > UDP_MAX_PAYLOAD:
            raise StackError("message_too_long", f"{len(payload)} bytes exceed {UDP_MAX_PAYLOAD}")
        if (addr == _BROADCAST or addr in stack.ip4.broadcasts) and not s.broadcast:
            raise StackError("permission_denied", "broadcast needs SO_BROADCAST")
        if addr.is_unspecified:
            raise StackError("bad_argument", "cannot send to 0.0.0.0")
        path = stack.ip4.resolve(addr, src=s.local_addr, device=s.device)
        dgram = build_udp(path.src, addr, s.local_port, port, bytes(payload))
        kw = {"tos": tos} if tos else {}
        stack.ip4.send_via(path, PROTO_UDP, dgram, now, ttl=ttl, **kw)
        stack.ctr.inc("udp", "tx_datagrams")
        stack.drain(now)        # what went to lo (our own addresses) is delivered now

    # -- peer -> client --------------------------------------------------------------------
    def deliver(self, sids: set[int]) -> set[int]:
        """After every wake-up: the datagrams the core queued for our sockets go to their
        channels. Returns the sockets that are not ours (qnet.datagram's)."""
        by_sid = self.by_sid
        ours = [sid for sid in sids if sid in by_sid]
        if not ours:
            return sids
        stack = self.stack
        ifindex = self.ifindex
        for sid in ours:
            ch = by_sid[sid]
            try:
                dgrams = stack.udp_recv(sid, RECV_BATCH)
            except StackError:
                continue
            sock = ch.sock
            c = ch.c
            for d in dgrams:
                idx = ifindex.get(d.device)
                if idx is None:
                    idx = ifindex[d.device] = max(ifindex.values()) + 1
                head = recv_head(d.src_int, d.src_port, d.dst_int, d.ttl, d.tos, idx)
                try:
                    sock.sendmsg((head, d.payload))
                    c["rx_datagrams"] += 1
                except (BlockingIOError, InterruptedError):
                    c["rx_dropped_full"] += 1
                except OSError:
                    # The client's end is gone (EPIPE): the socket closes, as on EOF.
                    self.counters["sockets_closed_by_eof"] += 1
                    self._close_channel(ch)
                    break
        return sids.difference(ours)

    def icmp_error(self, sid: int, icmp_type: int, code: int, dst, dst_port: int) -> bool:
        """An ICMP error quoting a datagram of socket sid: a notice on its channel when Linux
        would report it (a connected socket, a hard error: protocol or port unreachable)."""
        ch = self.by_sid.get(sid)
        if ch is None:
            return False
        s = self.stack.udp4.get(sid)
        if s.remote_int is None or icmp_type != 3 or code not in (2, 3):
            return True
        try:
            ch.sock.send(UDP_ERROR_HEAD.pack(int(dst).to_bytes(4, "big"), dst_port, icmp_type, code))
            ch.c["rx_icmp_errors"] += 1
        except OSError:
            ch.c["rx_dropped_full"] += 1
        return True

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.active = True
        for ch in list(self.chans.values()):
            self._watch(ch)

    def stop(self) -> None:
        """Stop reading (freeze): what the clients wrote stays in the channels for the successor."""
        self.active = False
        for ch in self.chans.values():
            self._unwatch(ch)

    def state(self) -> dict:
        """Which socket each channel serves and the options the core does not keep. Unlike a
        TCP connection, a UDP socket resumed from a checkpoint is not stale, so this goes into
        checkpoints too."""
        return {"channels": {ch.id: ch.saved() for ch in self.chans.values() if ch.sid is not None},
                "ifindex": dict(self.ifindex),
                "closed": dict(self.counters["closed"])}

    def restore(self, state: dict | None) -> None:
        """After activate: our inherited channels serve their sockets again. A socket whose
        channel is gone (released meanwhile) closes; a channel whose socket the core does not
        have (lost in a crash) is closed, so its client reads EOF."""
        state = state or {}
        saved = state.get("channels", {})
        for name, idx in state.get("ifindex", {}).items():
            self.ifindex[str(name)] = int(idx)
        for k, v in state.get("closed", {}).items():
            if k in self.counters["closed"]:
                self.counters["closed"][k] = int(v)
        have = {s.sid for s in self.stack.udp4.sockets()}
        for chan_id, d in saved.items():
            ch = self.chans.get(chan_id)
            try:
                sid = int(d["sid"])
            except (KeyError, TypeError, ValueError):
                continue
            if ch is None:
                if sid in have:
                    self.stack.udp_close(sid)
                continue
            if sid not in have:
                self._close_channel(ch)
                continue
            ch.load(d)
            self.by_sid[sid] = ch

    # -- qnet.udp handlers ------------------------------------------------------------------
    def bind(self, channel, address=None, port=0, device=None, reuse_address=False,
             reuse_port=False, broadcast=False, owner=""):
        ch = self._take_channel(channel)
        addr = None if address is None or address.is_unspecified else ipaddress.IPv4Address(address)
        stack = self.stack
        try:
            sid = stack.udp_open()
        except StackError as e:
            raise _remote_error(e) from None
        try:
            if port == 0:
                port = self._ephemeral(addr, device)
            self._bind_port(sid, addr, port, device, reuse_address, reuse_port)
            if broadcast:
                stack.udp_set_broadcast(sid, True)
        except StackError as e:
            stack.udp_close(sid)
            raise _remote_error(e) from None
        ch.sid = sid
        ch.owner = owner
        ch.reuse_address, ch.reuse_port = bool(reuse_address), bool(reuse_port)
        ch.fixed_address = addr is not None
        self.by_sid[sid] = ch
        if self.active:
            self._watch(ch)
        self.ns.checkpoint()
        return {"sock": sid, "address": str(addr or "0.0.0.0"), "port": port}

    def _ephemeral(self, addr, device) -> int:
        used = {s.local_port for s in self.stack.udp4.sockets()
                if s.local_port and _overlap(s.local_addr, addr) and _overlap(s.device, device)}
        port = pick_ephemeral(used, self.ns.rng)
        if port is None:
            raise StackError("address_in_use", "no free ephemeral port")
        return port

    def _bind_port(self, sid: int, addr, port: int, device, reuse_address: bool,
                   reuse_port: bool) -> None:
        stack = self.stack
        try:
            stack.udp_bind(sid, addr, port, device)
            return
        except StackError as e:
            if e.code != "address_in_use" or not (reuse_address or reuse_port):
                raise
        # Linux (inet_csk_bind_conflict for UDP): sockets may share an address and port when
        # every one of them set SO_REUSEPORT, or every one SO_REUSEADDR. Unicast datagrams then
        # go to the first bound (the core's best match).
        for o in stack.udp4.sockets():
            if o.sid == sid or o.local_port != port or not _overlap(o.local_addr, addr) \
                    or not _overlap(o.device, device):
                continue
            other = self.by_sid.get(o.sid)
            if other is None or not ((reuse_port and other.reuse_port) or
                                     (reuse_address and other.reuse_address)):
                raise StackError("address_in_use", f"port {port} is in use")
        if addr is not None and not stack.ip4.is_local(addr):
            raise StackError("address_not_available", f"{addr} is not one of our addresses")
        # The core's bind has no SO_REUSEADDR: the binding enters the shared port itself.
        udp4 = stack.udp4
        s = udp4.get(sid)
        s.local_addr, s.local_port, s.device = addr, port, device
        s.local_int = None if addr is None else int(addr)
        udp4._by_port.setdefault(port, []).append(sid)

    def connect(self, sock, address=None, port=0):
        ch = self._sock(sock)
        stack = self.stack
        s = stack.udp4.get(sock)
        if address is None or (address.is_unspecified and port == 0):
            # AF_UNSPEC: disconnect; an address that connect chose is forgotten (Linux).
            s.remote_addr, s.remote_int, s.remote_port = None, None, 0
            if not ch.fixed_address:
                s.local_addr = s.local_int = None
        else:
            if port == 0:
                raise errors.RemoteError("connect needs a port", code="bad_argument")
            addr = ipaddress.IPv4Address(address)
            try:
                if s.local_addr is None:
                    # Linux ip4_datagram_connect: a wildcard socket takes the route's source.
                    path = stack.ip4.resolve(addr, device=s.device)
                    if not path.src.is_unspecified:
                        s.local_addr, s.local_int = path.src, int(path.src)
                stack.udp_connect(sock, addr, port)
            except StackError as e:
                raise _remote_error(e) from None
        self.ns.checkpoint()
        return {"address": str(s.local_addr or "0.0.0.0"), "port": s.local_port,
                "remote": None if s.remote_addr is None else str(s.remote_addr),
                "remote_port": s.remote_port}

    def set_option(self, sock, name, value):
        ch = self._sock(sock)
        if name == "broadcast":
            self.stack.udp_set_broadcast(sock, bool(value))
        elif name == "ttl":
            if not 1 <= value <= 255:
                raise errors.RemoteError("ttl must be 1..255", code="bad_argument")
            ch.ttl = None if value == self.stack.cfg.default_ttl else value
        elif name == "tos":
            ch.tos = value
        else:
            ch.flags[name] = bool(value)
        self.ns.checkpoint()
        return True

    def set_mark(self, sock, domain, value):
        self._sock(sock)
        try:
            self.stack.udp_set_mark(sock, domain, value)
        except StackError as e:
            raise _remote_error(e) from None
        self.ns.checkpoint()
        return True

    def get_option(self, sock, name):
        ch = self._sock(sock)
        if name == "broadcast":
            return int(self.stack.udp4.get(sock).broadcast)
        if name == "ttl":
            return ch.ttl if ch.ttl is not None else self.stack.cfg.default_ttl
        if name == "tos":
            return ch.tos
        return int(ch.flags[name])

    def close(self, sock):
        ch = self.by_sid.get(sock)
        if ch is None:
            return False
        self._close_channel(ch)
        self.ns.checkpoint()
        return True

    def list(self):
        out = []
        for sid, ch in self.by_sid.items():
            try:
                s = self.stack.udp4.get(sid)
            except StackError:
                continue
            out.append({"sock": sid, "address": str(s.local_addr or "0.0.0.0"), "port": s.local_port,
                        "remote": None if s.remote_addr is None else str(s.remote_addr),
                        "remote_port": s.remote_port, "device": s.device, "owner": ch.owner,
                        "channel": ch.id, "queued": len(s.queue), "channel_bytes": _outq(ch.sock),
                        "dropped": s.dropped + ch.c["rx_dropped_full"], **ch.c})
        return out

    def stats(self):
        totals = dict(self.counters["closed"])
        for ch in self.by_sid.values():
            for k, v in ch.c.items():
                totals[k] += v
        return {"sockets": len(self.by_sid), "channels": len(self.chans), "ifindex": dict(self.ifindex),
                **{k: v for k, v in self.counters.items() if k != "closed"}, **totals}


def _outq(sock: socket.socket) -> int:
    """Bytes we wrote to a channel that its client has not read (SIOCOUTQ)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0
