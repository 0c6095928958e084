"""qnet.udp's calls (bind, connect, options, list): a mixin of UdpService (udp_binding.py),
whose channels and pump these calls set up. How IPv6, dual stack and scopes work is told
there.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

from components.netstack.core import StackError
from components.netstack.udp_heads import mapped, pick_ephemeral
from ipc import errors

if TYPE_CHECKING:
    from components.netstack.udp_binding import DatagramChannel

LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
_SIOCOUTQ = 0x5411

_STACK_TO_UDP = {"address_in_use": "address_in_use", "address_not_available": "address_not_available",
                 "not_found": "not_found", "no_route": "no_route", "no_address": "no_route",
                 "link_down": "no_route", "no_device": "bad_argument", "limit": "limit",
                 "bad_argument": "bad_argument"}


def remote_error(e: StackError) -> errors.RemoteError:
    return errors.RemoteError(str(e), code=_STACK_TO_UDP.get(e.code, "failed"))


def bad(message: str) -> errors.RemoteError:
    return errors.RemoteError(message, code="bad_argument")


def _overlap(a, b) -> bool:
    return a is None or b is None or a == b


class UdpCalls:
    """The handlers of qnet.udp. What they reach of UdpService: its channels (`_take_channel`,
    `_sock`, `_watch`, `_close_channel`, `by_sid`), the interface numbering (`name_of`,
    `index_of`, `scope_of`) and the per-version helpers (`_table`, `_v4_sid`, `_v6_sid`)."""

    def bind(self, channel, address=None, port=0, device=None, reuse_address=False,
             reuse_port=False, broadcast=False, owner="", family="ipv4", v6only=False, scope_id=0):
        ch = self._take_channel(channel)
        fam = 6 if family == "ipv6" else 4
        stack = self.stack
        if address is not None and address.version != fam:
            raise bad(f"{address} is not an IPv{fam} address")
        plan, device = self._plan(fam, address, device, v6only, scope_id)
        sids: list[int] = []
        try:
            for version, _a in plan:
                sids.append(stack.udp_open(version))
            if port == 0:
                port = self._ephemeral(plan, device)
            for sid, (_v, a) in zip(sids, plan):
                self._bind_port(sid, a, port, device, reuse_address, reuse_port)
                if broadcast and not stack.udp6.owns(sid):
                    stack.udp_set_broadcast(sid, True)
        except StackError as e:
            for sid in sids:
                stack.udp_close(sid)
            raise remote_error(e) from None
        ch.sid = sids[0]
        ch.sid4 = sids[1] if len(sids) > 1 else None
        ch.family, ch.v6only, ch.via = fam, bool(v6only), None
        ch.owner = owner
        ch.reuse_address, ch.reuse_port = bool(reuse_address), bool(reuse_port)
        ch.fixed_address = plan[0][1] is not None
        for sid in sids:
            self.by_sid[sid] = ch
        if self.active:
            self._watch(ch)
        self.ns.checkpoint()
        local = self._local_view(ch)
        return {"sock": ch.sid, "address": local, "port": port, "scope_id": self.scope_of(local)}

    def _plan(self, fam: int, address, device, v6only: bool, scope_id: int):
        """The core sockets a bind makes, [(version, address or None)], the first the
        socket's own; and the device (SO_BINDTODEVICE, or a link-local address's scope)."""
        if fam == 4:
            return [(4, None if address is None or address.is_unspecified else address)], device
        if address is None or address.is_unspecified:
            return [(6, None)] + ([] if v6only else [(4, None)]), device
        m = address.ipv4_mapped
        if m is not None:
            if v6only:
                raise bad(f"{address}: an IPv4-mapped address on an IPV6_V6ONLY socket")
            return [(4, None if m.is_unspecified else m)], device
        if address in LINK_LOCAL:
            # Linux (inet6_bind): a link-local address needs its link, which binds the socket
            # to that device.
            if scope_id:
                zone = self.name_of(scope_id)
                if device is not None and device != zone:
                    raise bad(f"scope {scope_id} is {zone}, the socket is bound to {device}")
                device = zone
            elif device is None:
                raise bad(f"{address} is link-local: it needs a scope (sin6_scope_id)")
        return [(6, address)], device

    def _local_view(self, ch: DatagramChannel):
        """The socket's local address as its client sees it (IPv4-mapped on an IPv6 socket
        when its own core socket is IPv4's)."""
        s = self._table(ch.sid).get(ch.sid)
        if ch.family == 4:
            return s.local_addr or ipaddress.IPv4Address(0)
        if self.stack.udp6.owns(ch.sid):
            if s.local_addr is None and ch.via == 4 and ch.sid4 is not None:
                s4 = self.stack.udp4.get(ch.sid4)
                if s4.local_addr is not None:
                    return ipaddress.IPv6Address(mapped(int(s4.local_addr)))
            return s.local_addr or ipaddress.IPv6Address(0)
        return ipaddress.IPv6Address(mapped(int(s.local_addr or 0)))

    def _ephemeral(self, plan, device) -> int:
        used: set[int] = set()
        for version, addr in plan:
            table = self.stack.udp6 if version == 6 else self.stack.udp4
            used |= {s.local_port for s in table.sockets()
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
        table = self._table(sid)
        for o in table.sockets():
            if o.sid == sid or o.local_port != port or not _overlap(o.local_addr, addr) \
                    or not _overlap(o.device, device):
                continue
            other = self.by_sid.get(o.sid)
            if other is None or not ((reuse_port and other.reuse_port) or
                                     (reuse_address and other.reuse_address)):
                raise StackError("address_in_use", f"port {port} is in use")
        local = stack.is_local6 if table is stack.udp6 else stack.ip4.is_local
        if addr is not None and not local(addr):
            raise StackError("address_not_available", f"{addr} is not one of our addresses")
        # The core's bind has no SO_REUSEADDR: the binding enters the shared port itself.
        table.bind_shared(sid, addr, port, device)

    def connect(self, sock, address=None, port=0, scope_id=0):
        ch = self._sock(sock)
        if address is None or (address.is_unspecified and port == 0):
            # AF_UNSPEC: disconnect; an address that connect chose is forgotten (Linux).
            for sid in ch.sids():
                s = self._table(sid).get(sid)
                s.remote_addr, s.remote_int, s.remote_port = None, None, 0
                if not ch.fixed_address:
                    s.local_addr = s.local_int = None
            ch.via = None
        else:
            if port == 0:
                raise errors.RemoteError("connect needs a port", code="bad_argument")
            if address.version != ch.family:
                raise bad(f"{address} is not an IPv{ch.family} address")
            m = address.ipv4_mapped if ch.family == 6 else None
            try:
                if ch.family == 4:
                    self._connect4(ch.sid, address, port)
                elif m is not None:
                    sid4 = self._v4_sid(ch)
                    if sid4 is None:
                        raise StackError("no_route", "an IPv6-only socket cannot reach IPv4")
                    self._connect4(sid4, m, port)
                    ch.via = 4
                else:
                    sid6 = self._v6_sid(ch)
                    if sid6 is None:
                        raise StackError("no_route", "a socket bound to an IPv4-mapped address "
                                                     "reaches IPv4 only")
                    self._connect6(sid6, address, port, scope_id)
                    ch.via = 6
            except StackError as e:
                raise remote_error(e) from None
        self.ns.checkpoint()
        return self._connected_view(ch)

    def _connect4(self, sid: int, addr: ipaddress.IPv4Address, port: int) -> None:
        stack = self.stack
        s = stack.udp4.get(sid)
        if s.local_addr is None:
            # Linux ip4_datagram_connect: a wildcard socket takes the route's source.
            path = stack.ip4.resolve(addr, device=s.device)
            if not path.src.is_unspecified:
                s.local_addr, s.local_int = path.src, int(path.src)
        stack.udp_connect(sid, addr, port)

    def _connect6(self, sid: int, addr: ipaddress.IPv6Address, port: int, scope_id: int) -> None:
        stack = self.stack
        s = stack.udp6.get(sid)
        if addr in LINK_LOCAL and scope_id:
            zone = self.name_of(scope_id)
            if s.device is not None and s.device != zone:
                raise StackError("bad_argument", f"scope {scope_id} is {zone}, the socket is bound to "
                                                 f"{s.device}")
            s.device = zone     # Linux (__ip6_datagram_connect): the scope binds the socket
        if s.local_addr is None:
            # Linux ip6_datagram_connect: a wildcard socket takes the route's source.
            out, _ = stack.ip6.resolve(addr, s.device)
            src = stack.source6(out.name, addr)
            s.local_addr, s.local_int = src, int(src)
        stack.udp_connect(sid, addr, port)

    def _connected_view(self, ch: DatagramChannel) -> dict:
        if ch.family == 6 and ch.via == 4:
            s = self.stack.udp4.get(self._v4_sid(ch))
            remote = None if s.remote_addr is None else ipaddress.IPv6Address(mapped(s.remote_int))
            local = self._local_view(ch)
            return {"address": local, "port": s.local_port, "remote": remote,
                    "remote_port": s.remote_port, "scope_id": 0}
        s = self._table(ch.sid).get(ch.sid)
        if ch.family == 6 and not self.stack.udp6.owns(ch.sid):
            remote = None if s.remote_addr is None else ipaddress.IPv6Address(mapped(s.remote_int))
        else:
            remote = s.remote_addr
        # A link-local peer's scope is the link the socket is bound to (connect set it).
        scope = self.index_of(s.device) if remote is not None and remote.version == 6 \
            and remote in LINK_LOCAL and s.device is not None else 0
        return {"address": self._local_view(ch), "port": s.local_port, "remote": remote,
                "remote_port": s.remote_port, "scope_id": scope}

    def set_option(self, sock, name, value):
        ch = self._sock(sock)
        if name == "broadcast":
            for sid in ch.sids():
                if not self.stack.udp6.owns(sid):
                    self.stack.udp_set_broadcast(sid, bool(value))
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
        ch = self._sock(sock)
        try:
            for sid in ch.sids():
                self.stack.udp_set_mark(sid, domain, value)
        except StackError as e:
            raise remote_error(e) from None
        self.ns.checkpoint()
        return True

    def get_option(self, sock, name):
        ch = self._sock(sock)
        if name == "broadcast":
            sid4 = self._v4_sid(ch) if ch.family == 6 else ch.sid
            return 0 if sid4 is None else int(self.stack.udp4.get(sid4).broadcast)
        if name == "ttl":
            return ch.ttl if ch.ttl is not None else self.stack.cfg.default_ttl
        if name == "tos":
            return ch.tos
        return int(ch.flags[name])

    def close(self, sock):
        ch = self.by_sid.get(sock)
        if ch is None or ch.sid != sock:
            return False
        self._close_channel(ch)
        self.ns.checkpoint()
        return True

    def list(self):
        out = []
        for ch in {id(c): c for c in self.by_sid.values()}.values():
            try:
                socks = [self._table(sid).get(sid) for sid in ch.sids()]
                view = self._connected_view(ch)
            except StackError:
                continue
            s = socks[0]
            out.append({"sock": ch.sid, "address": str(view["address"]), "port": s.local_port,
                        "remote": None if view["remote"] is None else str(view["remote"]),
                        "remote_port": view["remote_port"], "device": s.device, "owner": ch.owner,
                        "channel": ch.id, "family": f"ipv{ch.family}", "v6only": ch.v6only,
                        "dual": ch.sid4 is not None,
                        "queued": sum(len(x.queue) for x in socks), "channel_bytes": _outq(ch.sock),
                        "dropped": sum(x.dropped for x in socks) + ch.c["rx_dropped_full"], **ch.c})
        return out

    def stats(self):
        totals = dict(self.counters["closed"])
        for ch in {id(c): c for c in self.by_sid.values()}.values():
            for k, v in ch.c.items():
                totals[k] += v
        for name in sorted(self.stack.devs):
            self.index_of(name)
        return {"sockets": len({id(c) for c in self.by_sid.values()}), "channels": len(self.chans),
                "ifindex": dict(self.ifindex),
                **{k: v for k, v in self.counters.items() if k != "closed"}, **totals}


def _outq(sock: socket.socket) -> int:
    """Bytes we wrote to a channel that its client has not read (SIOCOUTQ)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0
