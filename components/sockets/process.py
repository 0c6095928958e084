"""The socket provider: the socket API's control plane for applications (qnet.socket).

Applications (the `qnet.socket` library, `qnet run`) connect to RUN/sockets.sock, an AF_UNIX
SOCK_SEQPACKET socket; the kernel tells us who they are (SO_PEERCRED), and we hand them file
descriptors (SCM_RIGHTS). A socket's fd is the client's end of a netstack channel: a byte
channel (qnet.tcp) for TCP, a datagram channel (qnet.udp) for UDP. Payload never passes
through this process; it brokers channels, checks grants and limits, and translates the
socket calls into netstack's qnet.tcp and qnet.udp calls, without ever blocking its loop.

IPv6 (qnet.socket 1.1): a socket's family is given at `socket` and every address it takes
must be of it; an AF_INET6 socket's link-local addresses come with a scope (an ifindex of
netstack's numbering), and IPV6_V6ONLY (off by default, as Linux) decides whether one on ::
is dual stack, which netstack's bindings carry out (qnet.tcp 1.3, qnet.udp 1.2).

State and what survives a restart: nothing here has to. Every netstack resource a socket
holds (listener, connection, UDP socket) is found again by its channel id in netstack's own
tables, whose owner field names the client (`prog[pid]`); a new incarnation rebuilds its
table from them on demand, and the library reconnects and repeats the call it was in (every
call is safe to repeat). What lives only here — sockets bound but not yet listening or
connected, options set before connect — the library repeats with its next call.
"""
from __future__ import annotations

import errno as errno_
import ipaddress
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from components.runtime import Component, run_component
from ipc import errors
from ipc.accounting import drops_of, table
from ipc.decl import decode_raw, encode, to_plain
from ipc.protocols.dhcpd import DHCPD
from ipc.protocols.netstack import NETSTACK, TCP
from ipc.protocols.sockets import SOCKET
from ipc.rpc import AsyncRpcClient
from launcher.channels import request_streams

try:
    from ipc.protocols.udp import UDP
except ImportError:             # netstack's per-socket UDP channels (qnet.udp) not built in
    UDP = None

SOCKET_NAME = "sockets.sock"
MAX_CLIENTS = 256               # sessions at once (a program has one per thread that calls)
MAX_SOCKETS = 1024              # per client process, unless the manifest says otherwise
CHANNEL_BYTES = 512 * 1024      # kernel buffer of one channel, both directions (launcher/channels.py)
MAX_BUFFERED = 256 << 20        # per client process: sockets x CHANNEL_BYTES may not exceed it
POOL = 16                       # channels asked of the launcher at once
NETSTACK_CALL_TIMEOUT = 5.0
EPHEMERAL = (32768, 60999)      # RFC 6056, as netstack's TCP
GRANTS = ("low_ports", "mark", "raw_icmp")
MARK_DOMAINS = 4                # independent marks per socket (netstack3 has two)
IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
TCP_OPTIONS = {  # (level, name) -> qnet.tcp set_option name
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "nodelay",
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "keepalive",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "keepidle",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "keepintvl",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "keepcnt",
    (socket.IPPROTO_IP, socket.IP_TTL): "ttl",
    (socket.IPPROTO_IP, socket.IP_TOS): "tos",
    (socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS): "ttl",      # the hop limit: IPv6's TTL
    (socket.IPPROTO_IPV6, IPV6_TCLASS): "tos",            # the traffic class: IPv6's TOS
}
UDP_OPTIONS = {
    (socket.SOL_SOCKET, socket.SO_BROADCAST): "broadcast",
    (socket.IPPROTO_IP, socket.IP_TTL): "ttl",
    (socket.IPPROTO_IP, socket.IP_TOS): "tos",
    (socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS): "ttl",
    (socket.IPPROTO_IPV6, IPV6_TCLASS): "tos",
}
FAMILIES = {"ipv4": 4, "ipv6": 6}
SO_MARK = getattr(socket, "SO_MARK", 36)
TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
_NETSTACK_ERRNO = {"refused": "ECONNREFUSED", "reset": "ECONNRESET", "timed_out": "ETIMEDOUT",
                   "address_in_use": "EADDRINUSE", "address_not_available": "EADDRNOTAVAIL",
                   "would_block": "EAGAIN", "no_route": "ENETUNREACH", "not_connected": "ENOTCONN",
                   "bad_argument": "EINVAL", "limit": "ENOBUFS", "busy": "EBUSY", "not_found": "EBADF",
                   "no_channel": "EBADF", "message_too_long": "EMSGSIZE", "failed": "EIO"}


class SockError(Exception):
    def __init__(self, name: str, message: str = ""):
        super().__init__(message or os.strerror(getattr(errno_, name, errno_.EIO)))
        self.name = name


def _errno_of(e: errors.IpcError) -> SockError:
    if isinstance(e, errors.RemoteError) and e.code in _NETSTACK_ERRNO:
        return SockError(_NETSTACK_ERRNO[e.code], e.message)
    if isinstance(e, (errors.Timeout, errors.Unavailable)):
        return SockError("ENETDOWN", f"netstack did not answer ({e.message})")
    if isinstance(e, errors.InvalidArgument):
        return SockError("EINVAL", e.message)
    return SockError("EIO", str(e))


@dataclass
class Client:
    """One session: a connection to RUN/sockets.sock (a program has one per calling thread)."""
    conn: socket.socket
    pid: int
    uid: int
    gid: int
    owner: str
    grants: frozenset


@dataclass
class Sock:
    chan: str
    kind: str
    pid: int
    state: str = "new"          # new bound listening connecting connected closed
    address: str = "0.0.0.0"
    port: int = 0
    family: int = 4             # AF_INET or AF_INET6 (6): the addresses it takes
    v6only: bool = False        # IPV6_V6ONLY as it was at bind
    scope: int = 0              # the scope of a link-local address it is bound to
    reuse_address: bool = False
    reuse_port: bool = False
    listener: int | None = None
    conn: int | None = None
    udp: int | None = None
    result: dict | None = None
    error: str | None = None
    options: dict = field(default_factory=dict)     # "level:name" -> value, applied on connect
    waiters: list = field(default_factory=list)     # (client, req_id, timer) of connect_result
    marks: dict = field(default_factory=dict)       # mark domain -> value (SO_MARK is domain 1)


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()[:32] or "?"
    except OSError:
        return "?"


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie has gone for our purposes: its fds are closed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class SocketProvider(Component):
    def __init__(self, rt):
        super().__init__(rt)
        tcp_peer = rt.spec.peers.get(TCP.name)
        if tcp_peer is None:
            raise SystemExit("sockets: the graph must give it qnet.tcp (netstack)")
        self.tcp = AsyncRpcClient(tcp_peer["rpc"], TCP)
        udp_peer = rt.spec.peers.get(UDP.name) if UDP is not None else None
        self.udp = AsyncRpcClient(udp_peer["rpc"], UDP) if udp_peer else None
        ns_peer = rt.spec.peers.get(NETSTACK.name)
        self.ns = AsyncRpcClient(ns_peer["rpc"], NETSTACK) if ns_peer else None
        dhcp_peer = rt.spec.peers.get(DHCPD.name)
        self.dhcpd = AsyncRpcClient(dhcp_peer["rpc"], DHCPD) if dhcp_peer else None
        a = rt.args
        self.max_sockets = int(a.get("max_sockets", MAX_SOCKETS))
        self.max_sockets = min(self.max_sockets, int(a.get("max_buffered", MAX_BUFFERED)) // CHANNEL_BYTES)
        self.grants = self._parse_grants(a.get("grants", {}))
        self.dns = [str(ipaddress.ip_address(d)) for d in a.get("dns", [])]
        self.search = [str(s) for s in a.get("search", [])]
        self.path = os.path.join(rt.spec.runtime_dir, a.get("socket", SOCKET_NAME))
        self.mode = int(str(a.get("mode", "0666")), 8)
        self.clients: dict[int, Client] = {}                # fd -> session
        self.socks: dict[str, Sock] = {}
        self.pids: dict[int, int] = {}                       # pid -> sessions open
        self.pool: dict[str, list] = {"tcp": [], "udp": []}
        self.pending: dict[tuple[int, int], tuple[float, Callable]] = {}
        self.local_addresses: set[str] = set()
        self.counters = {"sessions": 0, "calls": 0, "bad_requests": 0, "errno_replies": 0, "refused_clients": 0,
                         "limit_hits": 0, "denied": 0, "clients_gone": 0, "netstack_timeouts": 0,
                         "handler_bugs": 0}
        self.listener = None
        self.bound_file: tuple[int, int] | None = None

    @staticmethod
    def _parse_grants(spec: Any) -> dict[int | str, frozenset]:
        """args.grants = {"0": ["low_ports", ...], "1000": [...], "*": [...]}; root has all
        unless the manifest gives uid 0 its own list."""
        out: dict[int | str, frozenset] = {0: frozenset(GRANTS)}
        if not isinstance(spec, dict):
            raise SystemExit("sockets: args.grants must be a table of uid -> list of grants")
        for k, v in spec.items():
            bad = [g for g in v if g not in GRANTS] if isinstance(v, list) else [v]
            if bad:
                raise SystemExit(f"sockets: args.grants[{k!r}]: unknown grant {bad[0]!r} "
                                 f"(known: {', '.join(GRANTS)})")
            out["*" if k == "*" else int(k)] = frozenset(v)
        return out

    def implementations(self):
        return {}     # served on RUN/sockets.sock, not on ZeroMQ (see ipc/protocols/sockets.py)

    # -- lifecycle ----------------------------------------------------------------------------
    def activate(self, state):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        os.chmod(self.path, self.mode)
        st = os.stat(self.path)
        self.bound_file = (st.st_dev, st.st_ino)
        self.listener.listen(64)
        self.listener.setblocking(False)
        loop = self.rt.loop
        loop.add_reader(self.listener.fileno(), self._accept)
        for rpc in (self.tcp, self.udp, self.ns, self.dhcpd):
            if rpc is not None:
                loop.add_reader(rpc.socket, lambda rpc=rpc: self._replies(rpc))
        loop.call_every(0.25, self._expire_calls)
        loop.call_every(5.0, self._refresh_addresses)
        self._refresh_addresses()

    def freeze(self):
        return {}

    def status(self):
        by_kind: dict[str, int] = {}
        for s in self.socks.values():
            by_kind[s.kind] = by_kind.get(s.kind, 0) + 1
        return {"clients": len(self.clients), "processes": len(self.pids), "sockets": by_kind,
                "pool": {k: len(v) for k, v in self.pool.items()},
                "tables": {"sessions": table(len(self.clients), MAX_CLIENTS, self.counters["refused_clients"]),
                           "sockets": table(len(self.socks), self.max_sockets * MAX_CLIENTS,
                                            self.counters["limit_hits"])},
                "drops": drops_of(self.counters),
                "internal_errors": self.counters["handler_bugs"] + self.rt.loop.errors,
                **self.counters}

    def close(self):
        if self.listener is not None:
            self.listener.close()
            # A successor started before we stop (make-before-break) has bound the path anew:
            # the file is ours to remove only if it is still the one we bound.
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self.bound_file:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        for c in list(self.clients.values()):
            c.conn.close()
        for chans in self.pool.values():
            for _c, s in chans:
                s.close()
        for rpc in (self.tcp, self.udp, self.ns, self.dhcpd):
            if rpc is not None:
                rpc.close()

    # -- sessions -----------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(32):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            except OSError:
                conn.close()
                continue
            if len(self.clients) >= MAX_CLIENTS:
                self.counters["refused_clients"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            grants = self.grants.get(uid, self.grants.get("*", frozenset()))
            c = Client(conn, pid, uid, gid, f"{_proc_name(pid)}[{pid}]", grants)
            self.clients[conn.fileno()] = c
            self.pids[pid] = self.pids.get(pid, 0) + 1
            self.counters["sessions"] += 1
            self.rt.loop.add_reader(conn.fileno(), lambda fd=conn.fileno(): self._on_client(fd))

    def _drop_client(self, c: Client) -> None:
        fd = c.conn.fileno()
        if self.clients.pop(fd, None) is None:
            return
        self.rt.loop.remove_reader(fd)
        c.conn.close()
        left = self.pids.get(c.pid, 1) - 1
        if left > 0:
            self.pids[c.pid] = left
            return
        self.pids.pop(c.pid, None)
        if not _alive(c.pid):
            # The program went away: its sockets go with it (its fds are closed already, so
            # netstack has seen EOF on their channels; this also drops what only we knew).
            self.counters["clients_gone"] += 1
            for s in [s for s in self.socks.values() if s.pid == c.pid]:
                self._close_sock(s, abort=False)

    def _on_client(self, fd: int) -> None:
        c = self.clients.get(fd)
        if c is None:
            return
        for _ in range(64):
            try:
                msg = c.conn.recv(70000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self._drop_client(c)
                return
            self._request(c, msg)
            if c.conn.fileno() < 0:
                return

    def _request(self, c: Client, msg: bytes) -> None:
        self.counters["calls"] += 1
        try:
            req = decode_raw(msg)
            if not (isinstance(req, list) and len(req) == 3 and isinstance(req[0], int)
                    and isinstance(req[1], str) and isinstance(req[2], bytes)):
                raise errors.BadMessage("a request is [id, method, args (MessagePack bin)]")
        except errors.IpcError as e:
            self.counters["bad_requests"] += 1
            self._send(c, [0, 1, {"code": "EINVAL", "message": f"bad request: {e.message}"}])
            return
        req_id, name, body = req
        method = SOCKET.method_by_name.get(name)
        try:
            if method is None:
                raise SockError("EOPNOTSUPP", f"qnet.socket has no call {name!r}")
            try:
                args = to_plain(method.decode_args(body))
            except errors.IpcError as e:
                raise SockError("EINVAL", e.message) from None
            handler = getattr(self, "do_" + name)
            handler(c, req_id, **args)
        except SockError as e:
            self.counters["errno_replies"] += 1
            self._fail(c, req_id, e)
        except Exception as e:      # a bug here must cost one call, never the provider
            self.counters["handler_bugs"] += 1
            self.log.exception("qnet.socket %s failed", name)
            self._fail(c, req_id, SockError("EIO", f"internal error in the socket provider: {e}"))

    def _send(self, c: Client, reply: list, fds: list[int] = ()) -> None:
        if c.conn.fileno() < 0:
            return
        try:
            if fds:
                socket.send_fds(c.conn, [encode(reply)], list(fds))
            else:
                c.conn.send(encode(reply))
        except (BlockingIOError, OSError):
            # A client that does not read its answers loses its session, nobody else's.
            self._drop_client(c)

    def _ok(self, c: Client, req_id: int, result: Any, fds: list[int] = ()) -> None:
        if req_id:
            self._send(c, [req_id, 0, result], fds)

    def _fail(self, c: Client, req_id: int, e: SockError) -> None:
        if req_id:
            self._send(c, [req_id, 1, {"code": e.name, "message": str(e)}])

    # -- netstack calls (never blocking the loop) ----------------------------------------------
    def _call(self, rpc, method: str, done: Callable[[Any], None], call_timeout: float = NETSTACK_CALL_TIMEOUT,
              **kw) -> None:
        """done(result or IpcError) later."""
        if rpc is None:
            done(errors.Unavailable(f"this graph has no provider for {method}"))
            return
        try:
            rid = rpc.start(method, **kw)
        except errors.IpcError as e:
            done(e)
            return
        self.pending[(id(rpc), rid)] = (time.monotonic() + call_timeout, done, rpc)

    def _replies(self, rpc) -> None:
        for rid, res in rpc.replies():
            got = self.pending.pop((id(rpc), rid), None)
            if got is not None:
                got[1](to_plain(res) if not isinstance(res, errors.IpcError) else res)

    def _expire_calls(self) -> None:
        now = time.monotonic()
        for key, (deadline, done, rpc) in list(self.pending.items()):
            if now >= deadline:
                del self.pending[key]
                rpc.forget(key[1])
                self.counters["netstack_timeouts"] += 1
                done(errors.Timeout("netstack did not answer in time"))

    def _reap(self) -> None:
        """Sockets of programs that went away without a word (their sessions closed while a
        predecessor ran, or never opened one): dropped from the table."""
        for pid in {s.pid for s in self.socks.values()} - set(self.pids):
            if not _alive(pid):
                self.counters["clients_gone"] += 1
                for s in [s for s in self.socks.values() if s.pid == pid]:
                    self._close_sock(s, abort=False)

    def _refresh_addresses(self) -> None:
        self._reap()
        def got(r):
            if isinstance(r, errors.IpcError):
                return
            mine = {str(ipaddress.IPv4Interface(a).ip) for p in r for a in p.get("addresses", [])}
            # qnet.netstack 1.3: IPv6 addresses with their DAD state; a tentative or duplicate
            # one cannot be bound (Linux: EADDRNOTAVAIL).
            mine |= {str(ipaddress.IPv6Interface(a["address"]).ip) for p in r
                     for a in p.get("addresses6", []) if a.get("state") in ("PREFERRED", "DEPRECATED")}
            self.local_addresses = mine
        self._call(self.ns, "port_list", got)

    def _channel(self, kind: str) -> tuple[str, socket.socket]:
        pool = self.pool[kind]
        if not pool:
            proto = TCP.name if kind == "tcp" else (UDP.name if UDP is not None else None)
            if proto is None:
                raise SockError("EAFNOSUPPORT", "this netstack has no UDP channels (qnet.udp)")
            try:
                pool.extend(request_streams(self.rt.spec.runtime_dir, proto, POOL, timeout=3.0))
            except (LookupError, OSError) as e:
                raise SockError("ENOBUFS", f"no channel from the launcher: {e}") from None
        return pool.pop()

    def _sock(self, c: Client, chan: str) -> Sock:
        s = self.socks.get(chan)
        if s is None:
            # Not ours (yet): a socket made by a predecessor. Adopt it for its caller; netstack
            # checks the channel itself on every use, and its tables name the owner.
            # Its family is learnt from what names it in netstack, or from its next address.
            s = self.socks[chan] = Sock(chan, "tcp", c.pid, family=0)
            s.state = "unknown"
        elif s.pid != c.pid:
            self.counters["denied"] += 1
            raise SockError("EBADF", f"socket {chan} is not this process's")
        return s

    def _count(self, pid: int) -> int:
        return sum(1 for s in self.socks.values() if s.pid == pid)

    # -- calls -----------------------------------------------------------------------------------
    def do_socket(self, c: Client, req_id: int, kind: str, family: str = "ipv4") -> None:
        if self._count(c.pid) >= self.max_sockets:
            self.counters["limit_hits"] += 1
            raise SockError("EMFILE", f"this process has {self.max_sockets} qnet sockets (the limit)")
        chan, end = self._channel(kind)
        fam = FAMILIES[family]
        self.socks[chan] = Sock(chan, kind, c.pid, family=fam, address="::" if fam == 6 else "0.0.0.0")
        try:
            self._ok(c, req_id, {"sock": chan}, [end.fileno()])
        finally:
            end.close()

    def _check_port(self, c: Client, port: int) -> None:
        if 0 < port < 1024 and "low_ports" not in c.grants:
            self.counters["denied"] += 1
            raise SockError("EACCES", f"binding port {port} needs the low_ports grant (manifest: "
                                      f"[components.sockets.args] grants)")

    @staticmethod
    def _parse(address: str, family: int):
        """An address of the socket's family (AF_INET6's may be IPv4-mapped); EINVAL else.
        Family 0: a socket adopted after a restart, whose family is not known yet."""
        try:
            a = ipaddress.ip_address(address)
        except ValueError:
            a = None
        if a is None or (family and a.version != family):
            raise SockError("EINVAL", f"not an IPv{family or ''} address: {address!r}")
        return a

    def _address(self, s: Sock, address: str):
        """_parse for socket s, which learns its family from it if it did not know it."""
        a = self._parse(address, s.family)
        if not s.family:
            s.family = a.version
        return a

    def _check_address(self, address: str, family: int = 4) -> None:
        a = self._parse(address, family)
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        if not (a.is_unspecified or a.is_loopback or str(a) in self.local_addresses):
            raise SockError("EADDRNOTAVAIL", f"{address} is not an address of this stack")

    @staticmethod
    def _wildcard(s: Sock, address: str | None) -> str | None:
        """None for the unspecified address (netstack's "every local address")."""
        return None if address in (None, "0.0.0.0", "::") else address

    def do_bind(self, c: Client, req_id: int, sock: str, kind: str, address: str, port: int,
                reuse_address: bool = False, reuse_port: bool = False, broadcast: bool = False,
                scope_id: int = 0, v6only: bool = False) -> None:
        s = self._sock(c, sock)
        s.kind = kind
        if s.state not in ("new", "unknown"):
            raise SockError("EINVAL", "the socket is already bound")
        self._check_port(c, port)
        a = self._address(s, address)
        if s.family == 6 and a.ipv4_mapped is not None and v6only:
            raise SockError("EINVAL", f"{address}: an IPv4-mapped address on an IPV6_V6ONLY socket")
        if s.family == 6 and a.is_link_local and not scope_id:
            raise SockError("EINVAL", f"{address} is link-local: it needs a scope (sin6_scope_id)")
        self._check_address(address, s.family)
        s.v6only = bool(v6only)
        if kind == "udp":
            def bound(r):
                if isinstance(r, errors.IpcError):
                    return self._fail(c, req_id, _errno_of(r))
                s.udp, s.state = int(r["sock"]), "bound"
                s.address, s.port, s.scope = str(r["address"]), int(r["port"]), int(r.get("scope_id", 0))
                self._push_marks(s, lambda: self._ok(c, req_id, {"address": s.address, "port": s.port,
                                                                 "scope_id": s.scope}))
            self._call(self.udp, "bind", bound, channel=sock, address=self._wildcard(s, address),
                       port=port, reuse_address=reuse_address, reuse_port=reuse_port, broadcast=broadcast,
                       owner=c.owner, **self._udp_family(s, scope_id if a.is_link_local else 0))
            return

        def listed(r):
            if isinstance(r, errors.IpcError):
                return self._fail(c, req_id, _errno_of(r))
            try:
                chosen = self._tcp_port(r, address, port, reuse_address, reuse_port, s)
            except SockError as e:
                return self._fail(c, req_id, e)
            s.state, s.address, s.port = "bound", str(a), chosen
            s.scope = scope_id if a.is_link_local else 0
            s.reuse_address, s.reuse_port = reuse_address, reuse_port
            self._ok(c, req_id, {"address": s.address, "port": chosen, "scope_id": s.scope})
        self._call(self.tcp, "list", listed)

    @staticmethod
    def _udp_family(s: Sock, scope_id: int = 0) -> dict:
        """qnet.udp bind's IPv6 arguments (none for an IPv4 socket: an older netstack takes those)."""
        if s.family != 6:
            return {}
        return {"family": "ipv6", "v6only": s.v6only, "scope_id": scope_id}

    @staticmethod
    def _claims(address, family: int, v6only: bool) -> set[tuple[int, str | None]]:
        """What a socket's local address holds of a port, as (IP version, address or None
        for all): an AF_INET6 socket on :: holds IPv4's side too unless v6only; an
        IPv4-mapped address is IPv4's."""
        a = ipaddress.ip_address("0.0.0.0" if address in (None, "") else str(address))
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        if not a.is_unspecified:
            return {(a.version, str(a))}
        if a.version == 6 and family == 6 and not v6only:
            return {(6, None), (4, None)}
        return {(a.version, None)}

    @staticmethod
    def _conflict(x: set, y: set) -> bool:
        return any(vx == vy and (ax is None or ay is None or ax == ay) for vx, ax in x for vy, ay in y)

    def _tcp_port(self, listing: dict, address: str, port: int, reuse_address: bool, reuse_port: bool,
                  me: Sock) -> int:
        """The port a TCP bind gets, with Linux's rules: a port held by a listener is in use
        whatever the options; one held by a connection (TIME-WAIT too) needs SO_REUSEADDR.
        Addresses of both versions: a dual-stack bind on :: needs the port on both sides."""
        mine = self._claims(address, me.family, me.v6only)

        def overlaps(a) -> bool:
            return self._conflict(mine, self._claims(a, 4, True))
        # netstack lists a dual listener's IPv4 side as a listener of its own (its twin); a
        # listener's addr None is every address of its layer's version.
        used_listen = {int(lst["port"]) for lst in listing.get("listeners", [])
                       if overlaps(lst.get("address", lst.get("addr"))
                                   or ("::" if lst.get("version") == 6 else "0.0.0.0"))}
        used_conn = {int(cn.get("local_port", 0)) for cn in listing.get("connections", [])
                     if overlaps(cn.get("local"))}
        # Listeners are netstack's to report; only binds not yet listening live here alone.
        bound = [o for o in self.socks.values() if o is not me and o.kind == "tcp"
                 and o.state == "bound" and self._conflict(mine, self._claims(o.address, o.family, o.v6only))]

        def free(p: int) -> bool:
            if p in used_listen:
                return False
            if p in used_conn and not reuse_address:
                return False
            return not any(o.port == p and not (reuse_address and o.reuse_address)
                           and not (reuse_port and o.reuse_port) for o in bound if o.state == "bound")
        if port:
            if not free(port):
                raise SockError("EADDRINUSE", f"port {port} is in use")
            return port
        lo, hi = EPHEMERAL
        start = random.randint(lo, hi)
        for i in range(hi - lo + 1):
            p = lo + (start - lo + i) % (hi - lo + 1)
            if free(p):
                return p
        raise SockError("EADDRINUSE", "no ephemeral port is free")

    def do_listen(self, c: Client, req_id: int, sock: str, address: str, port: int, backlog: int = 128,
                  options: Any = None, v6only: bool = False) -> None:
        s = self._sock(c, sock)
        if s.state == "listening":
            return self._ok(c, req_id, {"listener": s.listener, "address": s.address, "port": s.port})
        if s.state in ("connecting", "connected"):
            raise SockError("EINVAL", "the socket is connected")
        self._check_port(c, port)
        self._address(s, address)
        if s.state == "new":
            s.v6only = bool(v6only)
        s.kind = "tcp"
        if isinstance(options, dict):
            s.options.update(options)

        def done(r):
            if isinstance(r, errors.IpcError):
                if isinstance(r, errors.RemoteError) and r.code == "busy":
                    return self._relisten(c, req_id, s)     # a repeated call after a restart
                return self._fail(c, req_id, _errno_of(r))
            s.state, s.listener = "listening", int(r["listener"])
            s.address, s.port = address, int(r["port"])
            self._ok(c, req_id, {"listener": s.listener, "address": address, "port": s.port})
        six = {"family": "ipv6", "v6only": s.v6only} if s.family == 6 else {}
        self._call(self.tcp, "listen", done, port=port, address=self._wildcard(s, address),
                   backlog=max(1, backlog), owner=c.owner, channel=sock, **six)

    def _relisten(self, c: Client, req_id: int, s: Sock) -> None:
        def listed(r):
            if isinstance(r, errors.IpcError):
                return self._fail(c, req_id, _errno_of(r))
            for lst in r.get("listeners", []):
                if lst.get("channel") == s.chan:
                    s.state, s.listener, s.port = "listening", _lid(lst), int(lst["port"])
                    return self._ok(c, req_id, {"listener": s.listener, "address": s.address, "port": s.port})
            self._fail(c, req_id, SockError("EBADF", "the socket's channel is in use"))
        self._call(self.tcp, "list", listed)

    def _find_tcp(self, c: Client, s: Sock, then: Callable[[], None], fail: Callable[[SockError], None]) -> None:
        """A socket a predecessor knew: find its listener or connection in netstack by channel."""
        def listed(r):
            if isinstance(r, errors.IpcError):
                return fail(_errno_of(r))
            for lst in r.get("listeners", []):
                if lst.get("channel") == s.chan:
                    if lst.get("owner") and not str(lst["owner"]).endswith(f"[{c.pid}]"):
                        return fail(SockError("EBADF", "not this process's socket"))
                    s.state, s.listener = "listening", _lid(lst)
                    s.family = 6 if lst.get("family") == "ipv6" else 4
                    s.port = int(lst["port"])
                    return then()
            for cn in r.get("connections", []):
                if cn.get("channel") == s.chan:
                    if cn.get("owner") and not str(cn["owner"]).endswith(f"[{c.pid}]"):
                        return fail(SockError("EBADF", "not this process's socket"))
                    s.state, s.conn = "connected", _cid(cn)
                    s.family = 6 if cn.get("family") == "ipv6" else 4
                    s.result = _conn_result(cn)
                    return then()
            s.state = "new"
            then()
        self._call(self.tcp, "list", listed)

    def do_accept(self, c: Client, req_id: int, sock: str) -> None:
        s = self._sock(c, sock)
        if s.state == "unknown":
            return self._find_tcp(c, s, lambda: self.do_accept(c, req_id, sock),
                                  lambda e: self._fail(c, req_id, e))
        if s.state != "listening":
            raise SockError("EINVAL", "the socket is not listening")
        if self._count(c.pid) >= self.max_sockets:
            self.counters["limit_hits"] += 1
            raise SockError("EMFILE", f"this process has {self.max_sockets} qnet sockets (the limit)")
        chan, end = self._channel("tcp")

        def done(r):
            if isinstance(r, errors.IpcError):
                if isinstance(r, errors.RemoteError) and r.code == "would_block":
                    self.pool["tcp"].append((chan, end))       # still fresh: netstack did not bind it
                else:
                    end.close()
                return self._fail(c, req_id, _errno_of(r))
            n = self.socks[chan] = Sock(chan, "tcp", c.pid, state="connected", conn=int(r["conn"]))
            n.result = _conn_result(r)
            n.options = dict(s.options)
            self._apply_options(n)
            try:
                self._ok(c, req_id, {"sock": chan, **n.result}, [end.fileno()])
            finally:
                end.close()
        self._call(self.tcp, "accept", done, listener=s.listener, channel=chan, wait=0.0, owner=c.owner)

    def do_connect(self, c: Client, req_id: int, sock: str, kind: str, address: str, port: int,
                   local_address: str | None = None, local_port: int = 0, timeout: float = 0.0,
                   nonblocking: bool = False, options: Any = None, scope_id: int = 0,
                   v6only: bool = False) -> None:
        s = self._sock(c, sock)
        a = self._address(s, address)
        if s.state in ("new", "unknown"):
            s.v6only = bool(v6only)
        if s.family == 6 and a.ipv4_mapped is not None and s.v6only:
            raise SockError("ENETUNREACH", f"{address}: IPv4 from an IPV6_V6ONLY socket")
        if s.family == 6 and a.is_link_local and not scope_id:
            raise SockError("EINVAL", f"{address} is link-local: it needs a scope (sin6_scope_id)")
        if isinstance(options, dict):
            s.options.update(options)
        if kind == "udp":
            return self._udp_connect(c, req_id, s, address, port, scope_id)
        if s.state == "unknown":
            return self._find_tcp(c, s, lambda: self.do_connect(c, req_id, sock, kind, address, port, local_address,
                                                                 local_port, timeout, nonblocking, options,
                                                                 scope_id, v6only),
                                  lambda e: self._fail(c, req_id, e))
        if s.state == "connected":
            raise SockError("EISCONN", "the socket is already connected")
        if s.state == "connecting":
            if nonblocking:
                raise SockError("EALREADY", "a connect is under way")
            return self.do_connect_result(c, req_id, sock, wait=timeout or 3600.0)
        if s.state == "listening":
            raise SockError("EINVAL", "the socket is listening")
        if port == 0:
            raise SockError("ECONNREFUSED", "port 0")
        if local_port:
            self._check_port(c, local_port)
        s.state, s.kind, s.error, s.result = "connecting", "tcp", None, None

        def done(r):
            if isinstance(r, errors.Timeout):
                return self._poll_connect(s)        # netstack restarted under the call: ask it
            if isinstance(r, errors.IpcError):
                self._connect_ended(s, None, _errno_of(r).name)
            else:
                s.conn = int(r["conn"])
                self._connect_ended(s, _conn_result(r), None)
        extra = {"marks": [s.marks.get(d, 0) for d in range(1, MARK_DOMAINS + 1)]} if any(s.marks.values()) else {}
        if scope_id:
            extra["scope_id"] = scope_id
        self._call(self.tcp, "connect", done, call_timeout=(timeout or 140.0) + 10.0, channel=sock, address=address,
                   port=port, local_address=local_address or self._wildcard(s, s.address),
                   local_port=local_port or s.port, timeout=timeout, owner=c.owner, **extra)
        if nonblocking:
            raise SockError("EINPROGRESS", "the connection is under way")
        self.do_connect_result(c, req_id, sock, wait=(timeout or 3600.0))

    def _connect_ended(self, s: Sock, result: dict | None, err: str | None) -> None:
        s.result, s.error = result, err
        s.state = "connected" if result is not None else "failed"
        if result is not None:
            self._apply_options(s)
        for c, req_id, timer in s.waiters:
            if timer is not None:
                timer.cancel()
            if result is not None:
                self._ok(c, req_id, result)
            else:
                self._fail(c, req_id, SockError(err))
        s.waiters = []

    def _poll_connect(self, s: Sock) -> None:
        """Where a connect stands, asked of netstack by channel (after a restart of either side)."""
        def st(r):
            if s.state != "connecting":
                return
            if isinstance(r, errors.IpcError) or r in ("connecting", "unbound"):
                self.rt.loop.call_later(0.1, lambda: self._poll_connect(s))
                return
            if r in ("established", "peer_closed"):
                def listed(lr):
                    if isinstance(lr, errors.IpcError):
                        return self.rt.loop.call_later(0.1, lambda: self._poll_connect(s))
                    for cn in lr.get("connections", []):
                        if cn.get("channel") == s.chan:
                            s.conn = _cid(cn)
                            return self._connect_ended(s, _conn_result(cn), None)
                    self._connect_ended(s, None, "ECONNRESET")
                return self._call(self.tcp, "list", listed)
            self._connect_ended(s, None, {"refused": "ECONNREFUSED", "timed_out": "ETIMEDOUT"}.get(r, "ECONNRESET"))
        self._call(self.tcp, "status", st, channel=s.chan)

    def do_connect_result(self, c: Client, req_id: int, sock: str, wait: float = 0.0) -> None:
        s = self._sock(c, sock)
        if s.state == "unknown":
            # A predecessor started it: netstack knows where it stands.
            s.state, s.kind = "connecting", "tcp"
            self._poll_connect(s)
        if s.state == "connected":
            return self._ok(c, req_id, s.result)
        if s.state == "failed":
            raise SockError(s.error or "ECONNREFUSED")
        if s.state != "connecting":
            raise SockError("ENOTCONN", "no connect was made")
        if wait <= 0:
            raise SockError("EINPROGRESS", "the connection is under way")
        timer = None
        if wait < 3600.0:
            def expire():
                for w in list(s.waiters):
                    if w[0] is c and w[1] == req_id:
                        s.waiters.remove(w)
                        self._fail(c, req_id, SockError("EINPROGRESS", "the connection is under way"))
            timer = self.rt.loop.call_later(wait, expire)
        s.waiters.append((c, req_id, timer))

    def _udp_connect(self, c: Client, req_id: int, s: Sock, address: str, port: int, scope_id: int = 0) -> None:
        scope = {"scope_id": scope_id} if scope_id else {}

        def connected(r):
            if isinstance(r, errors.IpcError):
                return self._fail(c, req_id, _errno_of(r))
            s.state = "connected"
            s.result = {"local": str(r["address"]), "local_port": int(r["port"]),
                        "remote": address, "remote_port": port, "scope_id": int(r.get("scope_id", 0))}
            self._ok(c, req_id, s.result)

        def bound(r):
            if isinstance(r, errors.IpcError):
                return self._fail(c, req_id, _errno_of(r))
            s.udp, s.address, s.port, s.state = int(r["sock"]), str(r["address"]), int(r["port"]), "bound"
            self._push_marks(s, lambda: self._call(self.udp, "connect", connected, sock=s.udp,
                                                   address=address, port=port, **scope))
        s.kind = "udp"
        if s.udp is None:
            self._call(self.udp, "bind", bound, channel=s.chan, address=None, port=0, owner=c.owner,
                       **self._udp_family(s))
        else:
            self._call(self.udp, "connect", connected, sock=s.udp, address=address, port=port, **scope)

    def do_shutdown(self, c: Client, req_id: int, sock: str, how: str) -> None:
        s = self._sock(c, sock)
        if s.conn is None:
            raise SockError("ENOTCONN", "the socket is not connected")
        self._call(self.tcp, "shutdown", lambda r: self._ok(c, req_id, True) if not isinstance(r, errors.IpcError)
                   else self._fail(c, req_id, _errno_of(r)), conn=s.conn, how=how)

    def do_close(self, c: Client, req_id: int, sock: str, abort: bool = False) -> None:
        s = self.socks.get(sock)
        if s is None or s.pid != c.pid:
            return self._ok(c, req_id, False)
        self._close_sock(s, abort)
        self._ok(c, req_id, True)

    def _close_sock(self, s: Sock, abort: bool) -> None:
        self.socks.pop(s.chan, None)
        ignore = lambda r: None      # noqa: E731 -- netstack also closes it when the fd goes
        if s.listener is not None:
            self._call(self.tcp, "close_listener", ignore, listener=s.listener)
        if s.conn is not None and abort:
            self._call(self.tcp, "abort", ignore, conn=s.conn)
        if s.udp is not None:
            self._call(self.udp, "close", ignore, sock=s.udp)
        for c, req_id, timer in s.waiters:
            if timer is not None:
                timer.cancel()
            self._fail(c, req_id, SockError("EBADF", "the socket was closed"))

    # -- options ---------------------------------------------------------------------------------
    def _push_marks(self, s: Sock, then: Callable[[], None]) -> None:
        """Give a freshly bound UDP socket's marks to netstack, then go on (`then`): the
        datagrams it sends from then on carry them."""
        todo = [(d, v) for d, v in sorted(s.marks.items()) if v]

        def step(r=None):
            if not todo or s.udp is None:
                return then()
            d, v = todo.pop(0)
            self._call(self.udp, "set_mark", step, sock=s.udp, domain=d, value=v)
        step()

    def _apply_options(self, s: Sock) -> None:
        for key, value in s.options.items():
            level, name = (int(x) for x in key.split(":"))
            self._set_option(s, level, name, value, lambda r: None)

    def _set_option(self, s: Sock, level: int, name: int, value: Any, done: Callable[[Any], None]) -> None:
        if s.kind == "udp":
            opt = UDP_OPTIONS.get((level, name))
            if opt is None or s.udp is None:
                return done(True)
            return self._call(self.udp, "set_option", done, sock=s.udp, name=opt, value=int(value))
        if (level, name) == (socket.IPPROTO_TCP, TCP_CONGESTION):
            algo = value.decode("ascii", "replace").rstrip("\0") if isinstance(value, bytes) else str(value)
            if algo not in ("cubic", "newreno", "reno"):
                return done(errors.RemoteError(f"no congestion control {algo!r}", code="not_found"))
            return self._call(self.tcp, "set_congestion", done, conn=s.conn,
                              name="newreno" if algo == "reno" else algo)
        opt = TCP_OPTIONS.get((level, name))
        if opt is None or s.conn is None:
            return done(True)
        self._call(self.tcp, "set_option", done, conn=s.conn, name=opt, value=int(value))

    def do_setsockopt(self, c: Client, req_id: int, sock: str, level: int, name: int, value: Any) -> None:
        s = self._sock(c, sock)
        if (level, name) == (socket.SOL_SOCKET, SO_MARK):
            if "mark" not in c.grants:
                self.counters["denied"] += 1
                raise SockError("EPERM", "SO_MARK needs the mark grant (manifest: [components.sockets.args] grants)")
            # Marks live in independent domains, as netstack3's do: SO_MARK sets domain 1;
            # [domain, value] sets any of them. Firewall and routing rules match them.
            domain, mark = (1, value) if isinstance(value, int) else (value if isinstance(value, list) and
                                                                      len(value) == 2 else (0, -1))
            if not (isinstance(domain, int) and 1 <= domain <= MARK_DOMAINS and isinstance(mark, int)
                    and 0 <= mark <= 0xFFFFFFFF):
                raise SockError("EINVAL", f"a mark is [domain 1..{MARK_DOMAINS}, value 0..2**32-1]")
            s = self._sock(c, sock)
            s.marks[domain] = mark
            if s.kind == "udp" and s.udp is not None:
                return self._call(self.udp, "set_mark", lambda r: self._ok(c, req_id, True)
                                  if not isinstance(r, errors.IpcError) else self._fail(c, req_id, _errno_of(r)),
                                  sock=s.udp, domain=domain, value=mark)
            return self._ok(c, req_id, True)
        if s.state == "unknown":
            return self._find_tcp(c, s, lambda: self.do_setsockopt(c, req_id, sock, level, name, value),
                                  lambda e: self._fail(c, req_id, e))
        s.options[f"{level}:{name}"] = value if not isinstance(value, bytes) else value
        if s.state not in ("connected", "bound") or (s.kind == "tcp" and s.conn is None):
            return self._ok(c, req_id, True)     # applied when the connection exists
        self._set_option(s, level, name, value, lambda r: self._ok(c, req_id, True)
                         if not isinstance(r, errors.IpcError) else self._fail(c, req_id, _errno_of(r)))

    def do_getsockopt(self, c: Client, req_id: int, sock: str, level: int, name: int) -> None:
        s = self._sock(c, sock)
        if s.state == "unknown":
            return self._find_tcp(c, s, lambda: self.do_getsockopt(c, req_id, sock, level, name),
                                  lambda e: self._fail(c, req_id, e))
        if (level, name) in ((socket.IPPROTO_TCP, TCP_INFO), (socket.IPPROTO_TCP, TCP_CONGESTION)):
            if s.conn is None:
                if name == TCP_CONGESTION:
                    return self._ok(c, req_id, {"info": None, "congestion": "cubic"})
                return self._ok(c, req_id, {"info": None})

            def got(r):
                if isinstance(r, errors.IpcError):
                    return self._fail(c, req_id, _errno_of(r))
                self._ok(c, req_id, {"info": r, "congestion": str(r.get("congestion", "cubic"))})
            return self._call(self.tcp, "info", got, conn=s.conn)
        if (level, name) == (socket.SOL_SOCKET, socket.SO_ERROR):
            if s.state == "connected" and s.kind == "tcp":
                # After EOF on the channel: was it the peer's FIN or an end netstack names?
                def st(r):
                    ended = {"reset": "ECONNRESET", "unknown": "ECONNRESET", "timed_out": "ETIMEDOUT"}
                    err = None if isinstance(r, errors.IpcError) else ended.get(r)
                    self._ok(c, req_id, {"error": err})
                return self._call(self.tcp, "status", st, channel=s.chan)
            err, s.error = s.error, (None if s.state != "failed" else s.error)
            return self._ok(c, req_id, {"error": err})
        if (level, name) == (socket.SOL_SOCKET, SO_MARK):
            return self._ok(c, req_id, {"value": s.marks.get(1, 0), "marks": s.marks})
        self._ok(c, req_id, {"value": s.options.get(f"{level}:{name}")})

    def do_status(self, c: Client, req_id: int) -> None:
        mine = [{"sock": s.chan, "kind": s.kind, "state": s.state, "marks": s.marks}
                for s in self.socks.values() if s.pid == c.pid]
        self._ok(c, req_id, {"pid": c.pid, "uid": c.uid, "owner": c.owner, "grants": sorted(c.grants),
                             "limit": self.max_sockets, "sockets": mine})

    def do_resolver(self, c: Client, req_id: int) -> None:
        """The manifest's DNS servers; without them, those of the uplinks' DHCP leases. And
        netstack's interface indexes, which name the zones of link-local addresses
        (fe80::1%p0: the scope of p0)."""
        def answer(result: dict) -> None:
            def got(r):
                if not isinstance(r, errors.IpcError) and isinstance(r, dict):
                    result["interfaces"] = {str(k): int(v) for k, v in (r.get("ifindex") or {}).items()}
                self._ok(c, req_id, result)
            if self.udp is None:
                return self._ok(c, req_id, result)
            self._call(self.udp, "stats", got)

        if self.dns or self.dhcpd is None:
            return answer({"nameservers": self.dns, "search": self.search})

        def got(r):
            servers, search = [], list(self.search)
            if not isinstance(r, errors.IpcError):
                for lease in r:
                    if lease.get("role") == "client":
                        servers += [str(d) for d in lease.get("dns") or [] if str(d) not in servers]
                        if lease.get("domain") and lease["domain"] not in search:
                            search.append(str(lease["domain"]))
            answer({"nameservers": servers[:3], "search": search})
        self._call(self.dhcpd, "leases", got)


def _cid(d: dict) -> int:
    return int(d["conn"] if "conn" in d else d["cid"])


def _lid(d: dict) -> int:
    return int(d["listener"] if "listener" in d else d["lid"])


def _conn_result(r: dict) -> dict:
    return {"local": str(r.get("local")), "local_port": int(r.get("local_port", 0)),
            "remote": str(r.get("remote")), "remote_port": int(r.get("remote_port", 0)),
            "scope_id": int(r.get("scope_id", 0))}


def main():
    run_component(SocketProvider)


if __name__ == "__main__":
    main()
