"""qnet.tcp's calls (listen, accept, connect, options, list): a mixin of TcpService
(tcp_binding.py), whose channels and pump these calls set up. How IPv6, dual listeners and
IPv4-mapped connections work is told there.
"""
from __future__ import annotations

import ipaddress
import time
from collections import deque

from components.netstack.core import StackError
from ipc import errors

TWIN = "twin:"              # a dual listener's IPv4 twin: its Listener.channel is TWIN + the IPv6 lid
LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
MAPPED = 0xFFFF << 32       # ::ffff:0.0.0.0

_STACK_TO_TCP = {"address_in_use": "address_in_use", "address_not_available": "address_not_available",
                 "not_found": "not_found", "no_route": "no_route", "no_address": "no_route",
                 "link_down": "no_route", "no_device": "no_route", "limit": "limit",
                 "bad_argument": "bad_argument", "not_connected": "not_connected",
                 "connection_closing": "not_connected", "exists": "busy"}


def remote_error(e: StackError) -> errors.RemoteError:
    return errors.RemoteError(str(e), code=_STACK_TO_TCP.get(e.code, "failed"))


class TcpCalls:
    """The handlers of qnet.tcp. What they reach of TcpService: its channels
    (`_take_channel`, `_bind`, `_bind_listener`, `_watch_listener`, `_signal_ready`,
    `_close_listener`, `_close_channel`, `_client_readable`, `_client_eof`, `by_cid`,
    `connecting`, `accepting`), the layers by id (`_tcp`, `_conn`, `_listener`) and the dual
    listeners' tables (`twins`, `twin_of`, `mapped_lids`)."""

    def listen(self, port, address=None, backlog=128, owner="", channel=None, family="ipv4",
               v6only=False):
        stack = self.ns.stack
        fam = 6 if family == "ipv6" else 4
        if address is not None and address.version != fam:
            raise errors.RemoteError(f"{address} is not an IPv{fam} address", code="bad_argument")
        if address is not None and address.is_unspecified:
            address = None
        mapped = address.ipv4_mapped if fam == 6 and address is not None else None
        if mapped is not None and v6only:
            raise errors.RemoteError(f"{address}: an IPv4-mapped address on an IPV6_V6ONLY socket",
                                     code="bad_argument")
        ch = None if channel is None else self._take_channel(channel)
        if fam == 6 and not stack.cfg.ipv6:
            raise errors.RemoteError("IPv6 is off in this netstack", code="bad_argument")
        try:
            if mapped is not None:
                lid = stack.tcp4.listen(None if mapped.is_unspecified else mapped, port, backlog)
                self.mapped_lids.add(lid)
            else:
                lid = (stack.tcp6 if fam == 6 else stack.tcp4).listen(address, port, backlog)
        except StackError as e:
            raise remote_error(e) from None
        if fam == 6 and address is None and not v6only:
            # Dual stack: the same port on IPv4's side, or no listener at all (Linux refuses
            # the whole bind when the IPv4 port is taken).
            try:
                twin = stack.tcp4.listen(None, port, backlog)
            except StackError as e:
                stack.tcp6.close_listener(lid, time.monotonic())
                raise remote_error(e) from None
            stack.tcp4.listeners[twin].channel = f"{TWIN}{lid}"
            stack.tcp4.listeners[twin].owner = owner or None
            self.twins[lid], self.twin_of[twin] = twin, lid
        lst = self._listener(lid)
        lst.owner = owner or None
        if ch is not None:
            self._bind_listener(ch, lid)
            self._watch_listener(ch)
        self.ns.checkpoint()
        return {"listener": lid, "address": address, "port": port, "backlog": lst.backlog,
                "channel": channel, "family": family}

    def close_listener(self, listener):
        if self._listener(listener) is None or listener in self.twin_of:
            return False
        self._close_listener(listener)
        self.ns.checkpoint()
        return True

    def accept(self, listener, channel, wait=0.0, owner=""):
        if self._listener(listener) is None or listener in self.twin_of:
            raise errors.RemoteError(f"no listener {listener}", code="not_found")
        ch = self._take_channel(channel)
        ch.owner = owner
        got = self._accept_one(listener)
        if got is not None:
            cid, ch.mapped = got
            self._bind(ch, cid)
            self._signal_ready(listener)        # more wait: the client's fd stays readable
            return self._conn_result(cid, ch.mapped)
        if not wait or wait <= 0:
            raise errors.RemoteError("no connection waits", code="would_block")
        q = self.accepting.setdefault(listener, deque())
        if len(q) >= 1024:
            raise errors.RemoteError("too many accepts waiting", code="busy")
        token = self.rt.rpc.defer()
        timer = self.rt.loop.call_later(min(float(wait), 3600.0),
                                        lambda: self._accept_timeout(listener, token))
        q.append((token, ch, timer))
        return None

    def _endpoints(self, address, local_address, scope_id):
        """(layer, remote, local, mapped) of a connect: an IPv4-mapped destination is IPv4's;
        a link-local one leaves from its link's link-local address (the core routes it by
        that source's zone)."""
        stack = self.ns.stack
        local = None if local_address is None or local_address.is_unspecified else local_address
        if address.version == 4:
            if local is not None and local.version != 4:
                raise errors.RemoteError(f"{local} is not an IPv4 address", code="bad_argument")
            return stack.tcp4, address, local, False
        m = address.ipv4_mapped
        if m is not None:
            lm = None if local is None else local.ipv4_mapped
            if local is not None and lm is None:
                raise errors.RemoteError(f"{local} cannot reach IPv4 {m}", code="no_route")
            return stack.tcp4, m, (None if lm is None or lm.is_unspecified else lm), True
        if local is not None and (local.version != 6 or local.ipv4_mapped is not None):
            raise errors.RemoteError(f"{local} cannot reach IPv6 {address}", code="no_route")
        if not stack.cfg.ipv6:
            raise errors.RemoteError("IPv6 is off in this netstack", code="no_route")
        if address in LINK_LOCAL and local is None:
            if not scope_id:
                raise errors.RemoteError(f"{address} is link-local: it needs a scope (sin6_scope_id)",
                                         code="bad_argument")
            device = self.ns.udp.name_of(scope_id)
            local = stack.ip6_addresses.source_for(device, address)
            if local is None:
                raise errors.RemoteError(f"{device} has no usable link-local address", code="no_route")
        return stack.tcp6, address, local, False

    def connect(self, channel, address, port, local_address=None, local_port=0, timeout=0.0,
                owner="", marks=(), scope_id=0):
        ch = self._take_channel(channel)
        ch.owner = owner
        now = time.monotonic()
        tcp, remote, local, mapped = self._endpoints(address, local_address, scope_id)
        try:
            cid = tcp.connect(remote, port, now, local, local_port, tuple(marks))
        except StackError as e:
            raise remote_error(e) from None
        ch.mapped = mapped
        token = self.rt.rpc.defer()
        timer = None
        if timeout and timeout > 0:
            timer = self.rt.loop.call_later(min(float(timeout), 3600.0), lambda: self._connect_timeout(cid))
        self.connecting[cid] = (token, ch, timer)
        self.ns.stack.drain(now)
        return None

    def shutdown(self, conn, how):
        ch = self.by_cid.get(conn)
        if ch is None or self._conn(conn) is None:
            raise errors.RemoteError(f"no connection {conn}", code="not_connected")
        now = time.monotonic()
        if how in ("write", "both") and not ch.eof_in:
            # The client should shut its channel's write side (the FIN then follows every byte
            # it wrote); this call takes what the channel holds first.
            self._client_readable(ch)
            if not ch.eof_in:
                ch.eof_in = True
                self._pause_reading(ch)
                self._client_eof(ch, now)
        return True

    def abort(self, conn):
        ch = self.by_cid.get(conn)
        now = time.monotonic()
        if self._conn(conn) is not None:
            self._tcp(conn).abort(conn, now)
        if ch is not None:
            self._close_channel(ch, "closed")
        return True

    def set_option(self, conn, name, value):
        if self._conn(conn) is None:
            raise errors.RemoteError(f"no connection {conn}", code="not_connected")
        if name in ("keepidle", "keepintvl", "keepcnt") and value < 1:
            raise errors.RemoteError(f"{name} must be at least 1", code="bad_argument")
        kw = {"nodelay": {"nodelay": bool(value)}, "keepalive": {"keepalive": bool(value)},
              "keepidle": {"keepidle": float(value)}, "keepintvl": {"keepintvl": float(value)},
              "keepcnt": {"keepcnt": int(value)}, "ttl": {"ttl": int(value)},
              "tos": {"tos": int(value)}}[name]
        try:
            self._tcp(conn).configure(conn, time.monotonic(), **kw)
        except StackError as e:
            raise remote_error(e) from None
        return True

    def set_congestion(self, conn, name):
        if self._conn(conn) is None:
            raise errors.RemoteError(f"no connection {conn}", code="not_connected")
        self._tcp(conn).configure(conn, time.monotonic(), congestion=name)
        return True

    def info(self, conn):
        if self._conn(conn) is None:
            raise errors.RemoteError(f"no connection {conn}", code="not_connected")
        return _plain(self._info(conn))

    def _info(self, cid: int) -> dict:
        """Layer's info() as the channel's client sees it (mapped addresses for a dual socket)."""
        d = self._tcp(cid).info(cid)
        ch = self.by_cid.get(cid)
        d["channel"] = ch.id if ch else None
        d["family"] = "ipv6" if self.ns.stack.tcp6.owns(cid) or (ch and ch.mapped) else "ipv4"
        if ch is not None and ch.mapped:
            for k in ("local", "remote"):
                d[k] = str(ipaddress.IPv6Address(MAPPED | int(ipaddress.IPv4Address(d[k]))))
        return d

    def status(self, channel):
        ch = self.chans.get(channel)
        if ch is not None:
            if ch.cid is None:
                return "connecting" if channel in self._waiting_channels() else "unbound"
            return ch.status
        return self.ended.get(channel, "unknown")

    def list(self):
        stack = self.ns.stack
        conns = []
        for cid in list(stack.tcp4.conns) + list(stack.tcp6.conns):
            d = self._info(cid)
            ch = self.by_cid.get(cid)
            d["owner"] = ch.owner if ch else ""
            conns.append(_plain(d))
        listeners = []
        for tcp, family in ((stack.tcp4, "ipv4"), (stack.tcp6, "ipv6")):
            for d in tcp.listener_info():
                # family: the client socket's; version: the layer's (what addr None means)
                d["family"] = "ipv6" if int(d["lid"]) in self.mapped_lids else family
                d["version"] = tcp.version
                twin = self.twins.get(int(d["lid"]))
                if twin is not None:
                    d["twin"] = twin
                listeners.append(d)
        return {"connections": conns, "listeners": _plain(listeners)}


def _plain(obj):
    """info() dicts as msgpack-able values (enums and addresses as text)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    return str(getattr(obj, "value", obj))
