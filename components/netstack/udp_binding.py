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

IPv6 (qnet.udp 1.2): a socket bound with family "ipv6" is a core socket of the IPv6 table
(Stack.udp_open(6)) and its channel carries the UDP6_* heads (udp_heads.py). Dual stack, as
Linux with IPV6_V6ONLY off (its default): an IPv6 socket bound to :: gets a twin, an IPv4 core
socket on the same port (`sid4`), and what the twin receives reaches the same channel with
IPv4-mapped addresses (::ffff:a.b.c.d); a datagram to a mapped address leaves through the
twin. Bound to an IPv4-mapped address, an IPv6 socket is that IPv4 socket alone. Connected
over one version, a dual socket drops what the other side receives, as a connected socket
takes only its peer's. One TTL (IP_TTL or IPV6_UNICAST_HOPS) and one TOS serve both sides.

Scopes: a link-local address needs its link, given as an ifindex (sin6_scope_id) in bind,
connect and the send head; the numbering is the heads' (`ifindex`: 1-based, lo is 1, kept
for the graph's life), and every port has an index as soon as someone asks.

State: the channel <-> socket mapping and the options the core does not keep (TTL, TOS, the
recv_* flags, reuse flags, the family, the twin) travel in the hand-over state and in
checkpoints; the sockets and their queued datagrams travel in the core's snapshot. Datagrams
clients wrote while netstack was down wait in the channels and are read by the next
incarnation.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import time

from components.netstack.core import StackError
from components.netstack.udp_calls import LINK_LOCAL as _LINK_LOCAL
from components.netstack.udp_calls import UdpCalls, bad as _bad
from components.netstack.udp_heads import (EPHEMERAL_MAX, EPHEMERAL_MIN, error_head, is_mapped,  # noqa: F401
                                           mapped, parse_send, parse_send6, pick_ephemeral,
                                           recv_head, recv_head6)
from components.netstack.wire import PROTO_UDP, build_udp
from components.netstack.wire.ipv6 import NEXT_HEADER_UDP
from ipc import errors
from ipc.protocols.udp import UDP, UDP6_MAX_MESSAGE, UDP6_MAX_PAYLOAD, UDP_MAX_MESSAGE, UDP_MAX_PAYLOAD

READS_PER_WAKEUP = 64           # messages read from one channel before yielding to others
BYTES_PER_WAKEUP = 1 << 20      # ... or this many bytes (16 datagrams of 64 KiB, 720 fragments)
RECV_BATCH = 1024               # datagrams taken from a core socket per wake-up (its queue holds fewer)
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_HUP = select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000)

# Per-socket counters (also the sum over sockets in `stats`). rx_dropped_connected: a dual
# socket connected over one IP version, a datagram that came over the other.
SOCKET_COUNTERS = ("rx_datagrams", "rx_dropped_full", "tx_datagrams", "tx_errors", "rx_bad_messages",
                   "rx_icmp_errors", "rx_dropped_connected")


class DatagramChannel:
    __slots__ = ("id", "sock", "fd", "sid", "reading", "owner", "ttl", "tos", "flags",
                 "reuse_address", "reuse_port", "fixed_address", "c", "family", "sid4", "v6only",
                 "via")

    def __init__(self, chan_id: str, sock: socket.socket) -> None:
        self.id = chan_id
        self.sock = sock
        self.fd = sock.fileno()
        self.sid: int | None = None         # the socket bind answered with (`sock` in calls)
        self.reading = False
        self.owner = ""
        self.ttl: int | None = None         # IP_TTL; None: the stack's default
        self.tos = 0                        # IP_TOS
        self.flags = {"recv_pktinfo": False, "recv_ttl": False, "recv_tos": False}
        self.reuse_address = False
        self.reuse_port = False
        self.fixed_address = False          # the local address was bound, not set by connect
        self.c = dict.fromkeys(SOCKET_COUNTERS, 0)
        self.family = 4                     # the client's socket: which heads the channel carries
        self.sid4: int | None = None        # a dual IPv6 socket's IPv4 twin
        self.v6only = False
        self.via: int | None = None         # a dual socket connected over this IP version

    def sids(self) -> tuple[int, ...]:
        return (self.sid,) if self.sid4 is None else (self.sid, self.sid4)

    def saved(self) -> dict:
        return {"sid": self.sid, "owner": self.owner, "ttl": self.ttl, "tos": self.tos,
                "flags": dict(self.flags), "reuse_address": self.reuse_address,
                "reuse_port": self.reuse_port, "fixed_address": self.fixed_address,
                "counters": dict(self.c), "family": self.family, "sid4": self.sid4,
                "v6only": self.v6only, "via": self.via}

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
        self.family = 6 if d.get("family") == 6 else 4
        self.sid4 = None if d.get("sid4") is None else int(d["sid4"])
        self.v6only = bool(d.get("v6only"))
        self.via = d.get("via") if d.get("via") in (4, 6) else None


class UdpService(UdpCalls):
    """qnet.udp: the datagram channels' pump here, the calls in udp_calls.py. `ns` is the
    Netstack component."""

    def __init__(self, ns) -> None:
        self.ns = ns
        self.rt = ns.rt
        self.chans: dict[str, DatagramChannel] = {}
        self.by_sid: dict[int, DatagramChannel] = {}    # every core socket of a channel
        # ifindex of a port in the heads and in scopes: 1-based, stable while this graph runs
        # (kept in the state), never reused for another name; lo is 1 as in Linux.
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

    def _table(self, sid: int):
        stack = self.stack
        return stack.udp6 if stack.udp6.owns(sid) else stack.udp4

    # -- interface indexes (heads, scopes) --------------------------------------------------
    def index_of(self, name: str) -> int:
        idx = self.ifindex.get(name)
        if idx is None:
            idx = self.ifindex[name] = max(self.ifindex.values()) + 1
        return idx

    def name_of(self, index: int) -> str:
        """The port of a scope (an ifindex); RemoteError bad_argument when there is none."""
        for name in sorted(self.stack.devs):
            self.index_of(name)
        for name, idx in self.ifindex.items():
            if idx == index and name in self.stack.devs:
                return name
        raise _bad(f"no interface with index {index}")

    def scope_of(self, addr) -> int:
        """The ifindex of a link-local IPv6 address of ours (its zone), else 0."""
        if addr is None or addr.version != 6 or addr not in _LINK_LOCAL:
            return 0
        dev = self.stack.ip6_addresses.device_of(int(addr))
        return 0 if dev is None else self.index_of(dev)

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
        """The channel goes, and its sockets with it."""
        if self.chans.get(ch.id) is ch:
            del self.chans[ch.id]
        self._unwatch(ch)
        if ch.sid is not None:
            for sid in ch.sids():
                if self.by_sid.get(sid) is ch:
                    del self.by_sid[sid]
                try:
                    self.stack.udp_close(sid)
                except StackError:
                    pass
            for k, v in ch.c.items():
                self.counters["closed"][k] += v
            ch.sid = ch.sid4 = None
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
        if ch is None or ch.sid != sid:
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
        v6 = ch.family == 6
        limit = (UDP6_MAX_MESSAGE if v6 else UDP_MAX_MESSAGE) + 1
        for _ in range(READS_PER_WAKEUP):
            try:
                # One byte more than the largest valid message: a longer one shows as too long.
                msg = sock.recv(limit)
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
                if v6:
                    dst, port, ttl, tos, scope, payload = parse_send6(msg)
                else:
                    dst, port, ttl, tos, payload = parse_send(msg)
            except ValueError:
                c["rx_bad_messages"] += 1
                continue
            try:
                if v6:
                    self._send6(ch, dst, port, ttl, tos, scope, payload, now)
                else:
                    self._send(ch, ch.sid, dst, port, ttl, tos, payload, now)
                c["tx_datagrams"] += 1
            except (StackError, ValueError, errors.RemoteError):
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

    def _send(self, ch: DatagramChannel, sid: int, dst: int, port: int, ttl: int, tos: int,
              payload, now: float) -> None:
        """A datagram of IPv4 socket sid (a channel's own, or a dual socket's twin)."""
        stack = self.stack
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

    def _v4_sid(self, ch: DatagramChannel) -> int | None:
        """The IPv4 core socket of an IPv6 channel: its dual twin, or itself when bound to an
        IPv4-mapped address."""
        if ch.sid4 is not None:
            return ch.sid4
        return None if self.stack.udp6.owns(ch.sid) else ch.sid

    def _v6_sid(self, ch: DatagramChannel) -> int | None:
        return ch.sid if self.stack.udp6.owns(ch.sid) else None

    def _send6(self, ch: DatagramChannel, dst: int, port: int, hops: int, tclass: int, scope: int,
               payload, now: float) -> None:
        """A datagram from an IPv6 socket's channel: over IPv4 to a mapped address (through
        the twin), else over IPv6."""
        stack = self.stack
        if port == 0:
            via = ch.via if ch.via is not None else (6 if self._v6_sid(ch) else 4)
            if via == 4:
                sid4 = self._v4_sid(ch)
                if sid4 is None:
                    raise StackError("destination_required", f"socket {ch.sid} is not connected")
                self._send(ch, sid4, 0, 0, hops, tclass, payload, now)
                return
            s = stack.udp6.get(ch.sid)
            if s.remote_int is None:
                raise StackError("destination_required", f"socket {ch.sid} is not connected")
            dst, port = s.remote_int, s.remote_port
        elif is_mapped(dst):
            sid4 = self._v4_sid(ch)
            if sid4 is None:
                # Linux: ENETUNREACH for an IPV6_V6ONLY socket (or one bound to IPv6 alone).
                raise StackError("no_route", "an IPv6-only socket cannot reach IPv4")
            if len(payload) > UDP_MAX_PAYLOAD:
                raise StackError("message_too_long", f"{len(payload)} bytes exceed {UDP_MAX_PAYLOAD}")
            self._send(ch, sid4, dst & 0xFFFFFFFF, port, hops, tclass, payload, now)
            return
        sid = self._v6_sid(ch)
        if sid is None:
            raise StackError("no_route", "a socket bound to an IPv4-mapped address sends over IPv4 only")
        device = self.name_of(scope) if scope else None
        hops = ch.ttl if hops == -1 else hops
        tclass = ch.tos if tclass == -1 else tclass
        if hops is None and not tclass:
            stack.udp_sendto(sid, payload, dst, port, now, device=device)
            return
        self._send_marked6(sid, payload, ipaddress.IPv6Address(dst), port, hops, tclass, device, now)

    def _send_marked6(self, sid: int, payload, addr: ipaddress.IPv6Address, port: int,
                      hops: int | None, tclass: int, device: str | None, now: float) -> None:
        """An IPv6 datagram with the socket's hop limit or traffic class: the core's UDP6
        send (stack6.py) with the IPv6 header's fields set."""
        stack = self.stack
        s = stack.udp6.get(sid)
        if len(payload) > UDP6_MAX_PAYLOAD:
            raise StackError("message_too_long", f"{len(payload)} bytes exceed {UDP6_MAX_PAYLOAD}")
        if addr.is_unspecified:
            raise StackError("bad_argument", "cannot send to ::")
        device = device if device is not None else s.device
        out, _ = stack.ip6.resolve(addr, device, s.local_addr)
        src = s.local_addr or stack.source6(out.name, addr)
        link_scope = addr.is_multicast or addr in _LINK_LOCAL
        stack.ip6.send(addr, NEXT_HEADER_UDP, build_udp(src, addr, s.local_port, port, bytes(payload)),
                       now, src=src, device=out.name if link_scope else device, hop_limit=hops,
                       traffic_class=tclass)
        stack.ctr.inc("udp6", "tx_datagrams")
        stack.drain(now)

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
            ch = by_sid.get(sid)
            if ch is None:
                continue            # its channel closed while delivering another socket's
            try:
                dgrams = stack.udp_recv(sid, RECV_BATCH)
            except StackError:
                continue
            sock = ch.sock
            c = ch.c
            v6 = ch.family == 6
            if v6 and ch.via is not None and ch.via != (6 if stack.udp6.owns(sid) else 4):
                c["rx_dropped_connected"] += len(dgrams)
                continue
            for d in dgrams:
                idx = ifindex.get(d.device)
                if idx is None:
                    idx = self.index_of(d.device)
                if not v6:
                    head = recv_head(d.src_int, d.src_port, d.dst_int, d.ttl, d.tos, idx)
                elif d.version == 6:
                    head = recv_head6(d.src_int, d.src_port, d.dst_int, d.ttl, d.tos, idx)
                else:
                    head = recv_head6(mapped(d.src_int), d.src_port, mapped(d.dst_int), d.ttl,
                                      d.tos, idx)
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
        would report it (a connected socket, a hard error: udp_err and __udp6_lib_err without
        IP_RECVERR). ICMPv4: protocol or port unreachable; ICMPv6 (icmpv6_err_convert's fatal
        ones): administratively prohibited, port unreachable, parameter problem."""
        ch = self.by_sid.get(sid)
        if ch is None:
            return False
        v6 = self.stack.udp6.owns(sid)
        s = self._table(sid).get(sid)
        if v6:
            hard = (icmp_type == 1 and code in (1, 4)) or icmp_type == 4
        else:
            hard = icmp_type == 3 and code in (2, 3)
        if s.remote_int is None or not hard:
            return True
        a = int(dst)
        if ch.family == 6 and not v6:
            a = mapped(a)
        try:
            ch.sock.send(error_head(ch.family, a, dst_port, icmp_type, code))
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
        """Which sockets each channel serves and the options the core does not keep. Unlike a
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
        stack = self.stack
        have = {s.sid for s in stack.udp4.sockets()} | {s.sid for s in stack.udp6.sockets()}
        for chan_id, d in saved.items():
            ch = self.chans.get(chan_id)
            try:
                sids = [int(d["sid"])] + ([] if d.get("sid4") is None else [int(d["sid4"])])
            except (KeyError, TypeError, ValueError):
                continue
            if ch is None:
                for sid in sids:
                    if sid in have:
                        stack.udp_close(sid)
                continue
            if any(sid not in have for sid in sids):
                for sid in sids:
                    if sid in have:
                        stack.udp_close(sid)
                self._close_channel(ch)
                continue
            ch.load(d)
            for sid in ch.sids():
                self.by_sid[sid] = ch
