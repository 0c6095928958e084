"""Python's `socket` module, with AF_INET and AF_INET6 sockets on qnet.

    from qnet import socket
    with socket.create_connection(("10.0.0.2", 80), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); print(s.recv(65536))

Everything the standard module has is here; `socket.socket` for AF_INET and AF_INET6 (TCP and
UDP), `create_connection` (Happy Eyeballs v2 over the addresses of both families, RFC 8305),
`create_server`, `getaddrinfo`, `gethostbyname`... go through qnet's socket provider
(components/sockets) and netstack. AF_UNIX sockets and `socketpair()` stay the kernel's: they
are not networking. What qnet does not do (raw sockets, an option it does not know) raises
OSError naming the call; nothing falls back to the host's network stack.

AF_INET6 as Linux has it: sockaddrs are (host, port, flowinfo, scope_id), a link-local
address needs its scope (netstack's interface index; `fe80::1%p0` in getaddrinfo), and
IPV6_V6ONLY is off by default: a socket on :: is dual stack, IPv4 peers show as
::ffff:a.b.c.d.

A qnet socket is a real file descriptor: a TCP socket's fd is one end of an AF_UNIX stream
socketpair whose other end netstack serves (its bytes are the connection's), a UDP socket's
one end of a SEQPACKET pair carrying one datagram per message, a listening socket's fd is
readable while a connection waits. So recv/send are kernel calls, and select, selectors and
asyncio work unchanged.
"""
from __future__ import annotations

import _socket as _csocket
import errno as _errno
import os as _os
import select as _select
import socket as _std
import struct as _struct
import sys as _sys
import time as _time
import types as _types
from socket import *  # noqa: F401,F403 -- the constants, exceptions and helpers we do not replace

from qnet import _resolver
from qnet._session import os_error as _os_error
from qnet._session import session as _session

__all__ = list(_std.__all__)
_GLOBAL_DEFAULT_TIMEOUT = _std._GLOBAL_DEFAULT_TIMEOUT

_SocketType = _std.SocketType
_STD_SOCKET = _std.socket
_NB_FLAGS = getattr(_std, "SOCK_NONBLOCK", 0) | getattr(_std, "SOCK_CLOEXEC", 0)
SO_MARK = getattr(_std, "SO_MARK", 36)
IP_PKTINFO = getattr(_std, "IP_PKTINFO", 8)           # Linux's values, where Python lacks the name
IP_RECVTTL = getattr(_std, "IP_RECVTTL", 12)
IP_RECVTOS = getattr(_std, "IP_RECVTOS", 13)
TCP_INFO = getattr(_std, "TCP_INFO", 11)
TCP_CONGESTION = getattr(_std, "TCP_CONGESTION", 13)
UDP_RECV_HEAD = _struct.Struct("<4sH4sBBH")     # ipc/protocols/udp.py
UDP_SEND_HEAD = _struct.Struct("<4sHhh")
UDP_ERROR_HEAD = _struct.Struct("<4sHBB")       # an ICMP error for a connected socket
UDP6_RECV_HEAD = _struct.Struct("<16sH16sBBH")  # an AF_INET6 socket's (qnet.udp 1.2)
UDP6_SEND_HEAD = _struct.Struct("<16sHhhH")
UDP6_ERROR_HEAD = _struct.Struct("<16sHBB")
_ICMP_UNREACH_ERRNO = {2: _errno.ENOPROTOOPT, 3: _errno.ECONNREFUSED}
# icmpv6_err_convert's hard errors: administratively prohibited, port unreachable (type 1)
_ICMP6_UNREACH_ERRNO = {1: _errno.EACCES, 4: _errno.ECONNREFUSED}
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"       # ::ffff:0:0/96
MAX_DATAGRAM = 65507
MAX_DATAGRAM6 = 65527                           # IPv6: only the payload length bounds it
IPV6_V6ONLY = getattr(_std, "IPV6_V6ONLY", 26)
IPV6_UNICAST_HOPS = getattr(_std, "IPV6_UNICAST_HOPS", 16)
IPV6_TCLASS = getattr(_std, "IPV6_TCLASS", 67)
IPV6_RECVPKTINFO = getattr(_std, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(_std, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(_std, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(_std, "IPV6_HOPLIMIT", 52)
IPV6_RECVTCLASS = getattr(_std, "IPV6_RECVTCLASS", 66)
DEFAULT_BUFFER = 256 * 1024                     # a channel's kernel buffer (launcher/channels.py)
# Options kept here, read back by getsockopt; the provider hears of those that reach netstack.
_LOCAL = {(SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_RCVBUF),
          (SOL_SOCKET, SO_SNDBUF), (SOL_SOCKET, SO_LINGER), (IPPROTO_IP, IP_PKTINFO),
          (IPPROTO_IP, IP_RECVTTL), (IPPROTO_IP, IP_RECVTOS), (SOL_SOCKET, SO_RCVLOWAT),
          (SOL_SOCKET, SO_SNDLOWAT), (SOL_SOCKET, SO_OOBINLINE), (IPPROTO_IPV6, IPV6_V6ONLY),
          (IPPROTO_IPV6, IPV6_RECVPKTINFO), (IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
          (IPPROTO_IPV6, IPV6_RECVTCLASS)}
_REMOTE = {(IPPROTO_TCP, TCP_NODELAY), (SOL_SOCKET, SO_KEEPALIVE), (IPPROTO_TCP, TCP_KEEPIDLE),
           (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT), (IPPROTO_IP, IP_TTL),
           (IPPROTO_IP, IP_TOS), (IPPROTO_TCP, TCP_CONGESTION), (SOL_SOCKET, SO_MARK),
           (SOL_SOCKET, SO_BROADCAST), (IPPROTO_IPV6, IPV6_UNICAST_HOPS), (IPPROTO_IPV6, IPV6_TCLASS)}
# Options of one family only: the other's level on a socket is ENOPROTOOPT, as in Linux.
_V6_ONLY_OPTIONS = {k for k in _LOCAL | _REMOTE if k[0] == IPPROTO_IPV6}


def _unsupported(call: str, what: str, code: int = _errno.EOPNOTSUPP) -> OSError:
    return OSError(code, f"qnet: {call}: {what} is not supported on qnet")


class _State:
    """What a qnet socket is, shared by its dups."""
    __slots__ = ("sock", "kind", "state", "local", "peer", "options", "shut_rd", "connect_timeout",
                 "eof", "family")

    def __init__(self, sock: str, kind: str, family: int = AF_INET) -> None:
        self.sock = sock
        self.kind = kind                # tcp | udp
        self.family = family            # AF_INET | AF_INET6
        self.state = "new"              # new bound listening connecting connected closed
        self.local: tuple | None = None     # (host, port), or (host, port, flowinfo, scope_id)
        self.peer: tuple | None = None
        self.options: dict[tuple[int, int], object] = {}
        self.shut_rd = False
        self.connect_timeout = 0.0
        self.eof = False                # the channel's EOF was seen and its cause reported


def _int_arg(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"'{type(v).__name__}' object cannot be interpreted as an integer")
    return v


def _host(call: str, address, family: int = AF_INET) -> tuple:
    """A sockaddr as CPython's getsockaddrarg reads it: (host, port) for AF_INET, (host, port
    [, flowinfo[, scope_id]]) for AF_INET6 with its 4-tuple answered; the host resolved in the
    socket's family (gaierror EAI_ADDRFAMILY for the other's literal). As CPython, the scope is
    the tuple's: a %zone in the host text is not read."""
    six = family == AF_INET6
    if not isinstance(address, tuple) or not (2 <= len(address) <= 4 if six else len(address) == 2):
        raise TypeError(f"{call}(): AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])"
                        if six else f"{call}(): AF_INET address must be a tuple (host, port)")
    host, port = address[0], _int_arg(address[1])
    if not 0 <= port <= 65535:
        raise OverflowError(f"{call}(): port must be 0-65535.")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if not six:
        return _resolver.address_of(host, AF_INET), port
    flowinfo = _int_arg(address[2]) if len(address) > 2 else 0
    scope = _int_arg(address[3]) if len(address) > 3 else 0
    if not 0 <= flowinfo <= 0xFFFFF:
        raise OverflowError(f"{call}(): flowinfo must be 0-1048575.")
    return _resolver.address_of(host.partition("%")[0] if ":" in host else host, AF_INET6), port, flowinfo, scope


def _addr6(host: str, port: int, scope: int) -> tuple[str, int, int, int]:
    """An AF_INET6 sockaddr as Linux answers it: the address in inet_ntop's form (an
    IPv4-mapped one as ::ffff:a.b.c.d), the scope only with a link-local address."""
    try:
        host = inet_ntop(AF_INET6, inet_pton(AF_INET6, host))
    except (OSError, ValueError):
        pass
    return host, port, 0, scope if _link_local(host) else 0


def _link_local(host: str) -> bool:
    try:
        b = inet_pton(AF_INET6, host)
    except (OSError, ValueError):
        return False
    return b[0] == 0xFE and b[1] & 0xC0 == 0x80


class socket(_STD_SOCKET):
    """socket.socket on qnet for AF_INET and AF_INET6; the kernel's for AF_UNIX (and for a
    given fileno)."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        self._q: _State | None = None
        if fileno is not None or family not in (-1, AF_INET, AF_INET6):
            if family == getattr(_std, "AF_PACKET", -2):
                raise _unsupported("socket.socket", "AF_PACKET", _errno.EAFNOSUPPORT)
            _STD_SOCKET.__init__(self, family, type, proto, fileno)
            return
        kind_type = SOCK_STREAM if type == -1 else type & ~_NB_FLAGS
        if kind_type == SOCK_STREAM:
            kind = "tcp"
        elif kind_type == SOCK_DGRAM:
            kind = "udp"
        elif kind_type == SOCK_RAW:
            # As on Linux, a raw socket is a privilege first (the manifest's raw_icmp grant).
            status, _ = _session().call("status", {})
            if "raw_icmp" not in status.get("grants", ()):
                raise PermissionError(_errno.EPERM, "qnet: socket.socket(SOCK_RAW) needs the raw_icmp grant "
                                                    "(manifest: [components.sockets.args] grants)")
            raise _unsupported("socket.socket", "SOCK_RAW (raw ICMP sockets are not built yet)",
                               _errno.EPROTONOSUPPORT)
        else:
            raise _unsupported("socket.socket", f"socket type {kind_type} (only SOCK_STREAM and SOCK_DGRAM)",
                               _errno.EPROTONOSUPPORT)
        if proto not in (-1, 0, IPPROTO_TCP if kind == "tcp" else IPPROTO_UDP):
            raise _unsupported("socket.socket", f"protocol {proto}", _errno.EPROTONOSUPPORT)
        family = AF_INET if family == -1 else AddressFamily(family)
        args = {"kind": kind} if family == AF_INET else {"kind": kind, "family": "ipv6"}
        result, fds = _session().call("socket", args)
        _STD_SOCKET.__init__(self, family, kind_type, 0 if proto == -1 else proto, fds[0])
        for fd in fds[1:]:
            _os.close(fd)
        self._q = _State(result["sock"], kind, family)
        if type != -1 and type & getattr(_std, "SOCK_NONBLOCK", 0):
            self.setblocking(False)

    @classmethod
    def _adopt(cls, fd: int, sock: str, kind: str, family: int = AF_INET) -> "socket":
        s = cls.__new__(cls)
        _STD_SOCKET.__init__(s, family, SOCK_STREAM if kind == "tcp" else SOCK_DGRAM, 0, fd)
        s._q = _State(sock, kind, family)
        return s

    def _sockaddr(self, host: str, port: int, scope: int = 0) -> tuple:
        """An address in this socket's family's form."""
        if self._q.family == AF_INET6:
            return _addr6(host, port, scope)
        return host, port

    def _six(self) -> dict:
        """The IPv6 arguments of a provider call (none on an AF_INET socket)."""
        q = self._q
        if q.family != AF_INET6:
            return {}
        return {"v6only": bool(q.options.get((IPPROTO_IPV6, IPV6_V6ONLY)))}

    @property
    def _any(self) -> str:
        return "::" if self._q.family == AF_INET6 else "0.0.0.0"

    # -- the calls that go to the provider -------------------------------------------------
    def _call(self, method: str, args: dict, **kw):
        return _session().call(method, {"sock": self._q.sock, **args}, **kw)

    def _closed_check(self, call: str) -> _State:
        if self.fileno() < 0:
            raise OSError(_errno.EBADF, "Bad file descriptor")
        return self._q

    def bind(self, address):
        q = self._q
        if q is None:
            return _STD_SOCKET.bind(self, address)
        self._closed_check("bind")
        host, port, *six = _host("bind", address, q.family)
        if q.state != "new":
            raise OSError(_errno.EINVAL, "Invalid argument")
        args = {"kind": q.kind, "address": host, "port": port,
                "reuse_address": bool(q.options.get((SOL_SOCKET, SO_REUSEADDR))),
                "reuse_port": bool(q.options.get((SOL_SOCKET, SO_REUSEPORT))),
                "broadcast": bool(q.options.get((SOL_SOCKET, SO_BROADCAST)))}
        if six:
            args.update(self._six(), scope_id=six[1])
        r, _ = self._call("bind", args)
        q.local = self._sockaddr(r["address"], r["port"], r.get("scope_id", 0))
        q.state = "bound"

    def _remote_options(self) -> dict:
        return {f"{lv}:{nm}": v for (lv, nm), v in self._q.options.items() if (lv, nm) in _REMOTE}

    def listen(self, backlog: int = min(SOMAXCONN, 128)):
        q = self._q
        if q is None:
            return _STD_SOCKET.listen(self, backlog)
        self._closed_check("listen")
        if q.kind != "tcp":
            raise OSError(_errno.EOPNOTSUPP, "Operation not supported")
        if q.state == "new":
            self.bind((self._any, 0))
        if q.state not in ("bound", "listening"):
            raise OSError(_errno.EINVAL, "Invalid argument")
        r, _ = self._call("listen", {"address": q.local[0], "port": q.local[1],
                                     "backlog": max(0, min(int(backlog), 65535)),
                                     "options": self._remote_options(), **self._six()})
        q.local = (q.local[0], int(r["port"]), *q.local[2:])
        q.state = "listening"

    def _drain(self) -> None:
        """Empty the listener's readiness channel. A plain read after a zero-time poll: the
        socket's recv would first wait out its timeout, whatever the flags say."""
        fd = self.fileno()
        try:
            while _select.select([fd], [], [], 0)[0]:
                if not _os.read(fd, 4096):
                    return
        except (BlockingIOError, InterruptedError):
            pass

    def accept(self):
        q = self._q
        if q is None:
            return _STD_SOCKET.accept(self)
        self._closed_check("accept")
        if q.state != "listening":
            raise OSError(_errno.EINVAL, "Invalid argument")
        timeout = self.gettimeout()
        deadline = None if timeout is None else _time.monotonic() + timeout
        while True:
            self._drain()
            try:
                r, fds = self._call("accept", {})
                break
            except BlockingIOError:
                if timeout == 0.0:
                    raise BlockingIOError(_errno.EAGAIN, "Resource temporarily unavailable") from None
            # Wait for the listener's fd: a kernel wait, which outlives any provider restart.
            left = None if deadline is None else deadline - _time.monotonic()
            if left is not None and left <= 0:
                raise _std.timeout("timed out")
            _select.select([self.fileno()], [], [], left)
        conn = type(self)._adopt(fds[0], r["sock"], "tcp", q.family)
        conn._q.state = "connected"
        scope = r.get("scope_id", 0)
        conn._q.local = conn._sockaddr(r["local"], r["local_port"], scope)
        conn._q.peer = conn._sockaddr(r["remote"], r["remote_port"], scope)
        conn._q.options = {k: v for k, v in q.options.items()}
        if _std.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        return conn, conn._q.peer

    def connect(self, address):
        q = self._q
        if q is None:
            return _STD_SOCKET.connect(self, address)
        self._closed_check("connect")
        host, port, *six = _host("connect", address, q.family)
        scope = six[1] if six else 0
        extra = {**self._six(), "scope_id": scope} if six else {}
        if q.kind == "udp":
            r, _ = self._call("connect", {"kind": "udp", "address": host, "port": port, **extra})
            q.local = self._sockaddr(r["local"], r["local_port"], r.get("scope_id", 0))
            q.peer, q.state = self._sockaddr(host, port, scope), "connected"
            return
        if q.state == "connected":
            raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
        if q.state == "listening":
            raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
        timeout = self.gettimeout()
        args = {"kind": "tcp", "address": host, "port": port,
                "local_address": q.local[0] if q.local else None, "local_port": q.local[1] if q.local else 0,
                "options": self._remote_options(), **extra}
        if q.state == "connecting":
            r = self._connect_result(0.0 if timeout == 0.0 else (timeout or 3600.0), timeout)
        elif timeout == 0.0:
            q.state = "connecting"
            try:
                self._call("connect", {**args, "nonblocking": True})
            except BlockingIOError as e:
                raise BlockingIOError(_errno.EINPROGRESS, "Operation now in progress") from e
            except OSError:
                q.state = "new" if q.local is None else "bound"
                raise
            r = None
        else:
            q.state = "connecting"
            wait = timeout or 0.0
            try:
                r, _ = self._call("connect", {**args, "timeout": wait},
                                  retry=("connect_result", {"sock": q.sock, "wait": wait or 3600.0}))
            except (TimeoutError, BlockingIOError) as e:
                # ETIMEDOUT from netstack, or EINPROGRESS from the provider when the wait ended
                # first: either way the socket's timeout has passed.
                q.state = "new" if q.local is None else "bound"
                if timeout is not None:
                    raise _std.timeout("timed out") from e
                raise
            except OSError:
                q.state = "new" if q.local is None else "bound"
                raise
        self._connected(r)

    def _connected(self, r: dict) -> None:
        q = self._q
        q.state = "connected"
        scope = r.get("scope_id", 0)
        q.local = self._sockaddr(r["local"], r["local_port"], scope)
        q.peer = self._sockaddr(r["remote"], r["remote_port"], scope)

    def _connect_result(self, wait: float, timeout) -> dict:
        """The end of a connect under way (EALREADY while it lasts on a non-blocking socket)."""
        try:
            r, _ = self._call("connect_result", {"wait": wait})
        except BlockingIOError:
            raise BlockingIOError(_errno.EALREADY, "Operation already in progress") from None
        except OSError:
            self._q.state = "failed"
            raise
        self._connected(r)
        return r

    def connect_ex(self, address):
        try:
            self.connect(address)
        except _std.timeout:
            return _errno.EAGAIN
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def getsockname(self):
        q = self._q
        if q is None:
            return _STD_SOCKET.getsockname(self)
        self._closed_check("getsockname")
        return q.local or self._sockaddr(self._any, 0)

    def getpeername(self):
        q = self._q
        if q is None:
            return _STD_SOCKET.getpeername(self)
        self._closed_check("getpeername")
        if q.peer is None or q.state != "connected":
            raise OSError(_errno.ENOTCONN, "Transport endpoint is not connected")
        return q.peer

    # -- options ---------------------------------------------------------------------------
    def setsockopt(self, level, optname, value, optlen=None):
        q = self._q
        if q is None:
            if optlen is None:
                return _STD_SOCKET.setsockopt(self, level, optname, value)
            return _STD_SOCKET.setsockopt(self, level, optname, value, optlen)
        self._closed_check("setsockopt")
        key = (level, optname)
        if value is None:
            raise _unsupported("setsockopt", "a None value")
        if isinstance(value, bool):
            value = int(value)
        if key in _V6_ONLY_OPTIONS and q.family != AF_INET6:
            raise OSError(_errno.ENOPROTOOPT, "Protocol not available")
        if key == (IPPROTO_IPV6, IPV6_V6ONLY) and q.state != "new":
            raise OSError(_errno.EINVAL, "Invalid argument")    # Linux: not once bound
        if key == (SOL_SOCKET, SO_LINGER):
            if not isinstance(value, (bytes, bytearray)) or len(value) < 8:
                raise OSError(_errno.EINVAL, "Invalid argument")
            q.options[key] = bytes(value[:8])
            return
        if key in _LOCAL:
            if isinstance(value, (bytes, bytearray)):
                value = int.from_bytes(bytes(value[:4]).ljust(4, b"\0"), _sys.byteorder, signed=True)
            q.options[key] = int(value)
            return
        if key not in _REMOTE:
            raise OSError(_errno.ENOPROTOOPT, f"qnet: setsockopt(level {level}, option {optname}) is not "
                                              f"supported on qnet (Protocol not available)")
        if key == (IPPROTO_TCP, TCP_CONGESTION):
            value = bytes(value).rstrip(b"\0") if isinstance(value, (bytes, bytearray)) else str(value).encode()
        elif isinstance(value, (bytes, bytearray)):
            value = int.from_bytes(bytes(value[:4]).ljust(4, b"\0"), _sys.byteorder, signed=True)
        self._call("setsockopt", {"level": level, "name": optname, "value": value})
        q.options[key] = value

    def getsockopt(self, level, optname, buflen=None):
        q = self._q
        if q is None:
            if buflen is None:
                return _STD_SOCKET.getsockopt(self, level, optname)
            return _STD_SOCKET.getsockopt(self, level, optname, buflen)
        self._closed_check("getsockopt")
        key = (level, optname)
        if key == (SOL_SOCKET, SO_TYPE):
            v = SOCK_STREAM if q.kind == "tcp" else SOCK_DGRAM
        elif key == (SOL_SOCKET, SO_DOMAIN):
            v = q.family
        elif key in _V6_ONLY_OPTIONS and q.family != AF_INET6:
            raise OSError(_errno.EOPNOTSUPP, "Operation not supported")     # Linux's answer
        elif key == (SOL_SOCKET, SO_PROTOCOL):
            v = IPPROTO_TCP if q.kind == "tcp" else IPPROTO_UDP
        elif key == (SOL_SOCKET, SO_ACCEPTCONN):
            v = int(q.state == "listening")
        elif key == (SOL_SOCKET, SO_ERROR):
            v = self._so_error()
        elif key in ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF)):
            # Linux doubles what was set (bookkeeping overhead) and reports that.
            v = 2 * int(q.options[key]) if key in q.options else DEFAULT_BUFFER
        elif key == (SOL_SOCKET, SO_LINGER):
            v = q.options.get(key, b"\0" * 8)
        elif key in ((IPPROTO_TCP, TCP_INFO), (IPPROTO_TCP, TCP_CONGESTION)):
            r, _ = self._call("getsockopt", {"level": level, "name": optname})
            if optname == TCP_CONGESTION:
                name = q.options.get(key) or str(r.get("congestion") or "cubic").encode()
                v = bytes(name).ljust(16, b"\0")
            else:
                v = _tcp_info(r.get("info") or {})
            if buflen is None:
                raise OSError(_errno.EINVAL, "Invalid argument")
            return v[:buflen]
        elif key in ((IPPROTO_IP, IP_TTL), (IPPROTO_IPV6, IPV6_UNICAST_HOPS)):
            v = int(q.options.get(key, 64))
        elif key in q.options or key in _LOCAL or key in _REMOTE:
            v = q.options.get(key, 0)
        else:
            raise OSError(_errno.ENOPROTOOPT, f"qnet: getsockopt(level {level}, option {optname}) is not "
                                              f"supported on qnet (Protocol not available)")
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)[:buflen] if buflen else bytes(v)
        v = int(v)
        if buflen:
            return v.to_bytes(4, _sys.byteorder, signed=True).ljust(buflen, b"\0")[:buflen]
        return v

    def set_mark(self, domain: int, value: int) -> None:
        """Set the socket's mark in one of its independent mark domains (1..4; SO_MARK is
        domain 1), for firewall and routing rules to match. Needs the manifest's mark grant."""
        q = self._q
        if q is None:
            raise _unsupported("set_mark", "a kernel socket's mark domains")
        self._closed_check("set_mark")
        self._call("setsockopt", {"level": SOL_SOCKET, "name": SO_MARK, "value": [int(domain), int(value)]})
        q.options[("mark", int(domain))] = int(value)
        if domain == 1:
            q.options[(SOL_SOCKET, SO_MARK)] = int(value)

    def get_mark(self, domain: int) -> int:
        q = self._q
        if q is None:
            raise _unsupported("get_mark", "a kernel socket's mark domains")
        if domain == 1:
            return int(q.options.get((SOL_SOCKET, SO_MARK), 0))
        return int(q.options.get(("mark", int(domain)), 0))

    def _so_error(self) -> int:
        """SO_ERROR: after a non-blocking connect, its outcome (waiting for it if needed:
        asyncio asks as soon as the fd is writable, which a channel is from the start)."""
        q = self._q
        if q.state == "connecting":
            try:
                self._connect_result(3600.0, None)
            except OSError as e:
                q.state = "new" if q.local is None else "bound"
                return e.errno or _errno.EIO
            return 0
        return 0

    # -- data ------------------------------------------------------------------------------
    def _check_stream(self, sending: bool = False) -> None:
        q = self._q
        if q.state == "connecting":
            try:
                self._connect_result(0.0 if self.gettimeout() == 0.0 else 3600.0, None)
            except BlockingIOError:
                raise BlockingIOError(_errno.EAGAIN, "Resource temporarily unavailable") from None
        if q.state != "connected":
            if sending:
                # Linux's sk_stream_wait_connect: a send on a socket that is not connecting
                # (never connected, listening, failed) is EPIPE, not ENOTCONN.
                raise BrokenPipeError(_errno.EPIPE, "Broken pipe")
            raise OSError(_errno.ENOTCONN, "Transport endpoint is not connected")

    def _eof(self) -> None:
        """EOF on the channel: the peer's FIN, or an end that netstack names (reset), reported
        once as Linux reports sk_err once; later reads are plain EOF."""
        if self._q.eof:
            return
        self._q.eof = True
        try:
            r, _ = self._call("getsockopt", {"level": SOL_SOCKET, "name": SO_ERROR})
        except OSError:
            return
        if r.get("error") == "ECONNRESET":
            raise ConnectionResetError(_errno.ECONNRESET, "Connection reset by peer")
        if r.get("error") == "ETIMEDOUT":
            raise TimeoutError(_errno.ETIMEDOUT, "Connection timed out")

    def recv(self, bufsize, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.recv(self, bufsize, flags)
        if q.kind == "udp":
            return self.recvfrom(bufsize, flags)[0]
        if q.state != "connected":
            self._check_stream()
        if q.shut_rd:
            return b""
        data = _STD_SOCKET.recv(self, bufsize, flags)
        if not data and bufsize:
            self._eof()
        return data

    def recv_into(self, buffer, nbytes=0, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.recv_into(self, buffer, nbytes, flags)
        if q.kind == "udp":
            return self.recvfrom_into(buffer, nbytes, flags)[0]
        if q.state != "connected":
            self._check_stream()
        if q.shut_rd:
            return 0
        n = _STD_SOCKET.recv_into(self, buffer, nbytes, flags)
        if not n and (nbytes or len(buffer)):
            self._eof()
        return n

    def send(self, data, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.send(self, data, flags)
        if q.kind == "udp":
            return self._send_datagram(data, None, flags)
        if q.state != "connected":
            self._check_stream(sending=True)
        return _STD_SOCKET.send(self, data, flags)

    def sendall(self, data, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.sendall(self, data, flags)
        if q.kind == "udp":
            self._send_datagram(data, None, flags)
            return None
        if q.state != "connected":
            self._check_stream(sending=True)
        return _STD_SOCKET.sendall(self, data, flags)

    def shutdown(self, how):
        q = self._q
        if q is None:
            return _STD_SOCKET.shutdown(self, how)
        self._closed_check("shutdown")
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise OSError(_errno.EINVAL, "Invalid argument")
        if q.state != "connected":
            raise OSError(_errno.ENOTCONN, "Transport endpoint is not connected")
        if q.kind == "tcp" and how in (SHUT_WR, SHUT_RDWR):
            # The channel's write side closed: netstack sends the FIN after every byte written.
            _STD_SOCKET.shutdown(self, SHUT_WR)
        if how in (SHUT_RD, SHUT_RDWR):
            q.shut_rd = True

    # -- UDP -------------------------------------------------------------------------------
    def _send_datagram(self, data, address, flags=0, ttl: int = -1, tos: int = -1) -> int:
        q = self._q
        six = q.family == AF_INET6
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if address is None:
            if q.state != "connected":
                raise OSError(_errno.EDESTADDRREQ, "Destination address required")
            dst, port, scope = bytes(16 if six else 4), 0, 0
        else:
            host, port, *rest = _host("sendto", address, q.family)
            if port == 0:
                raise OSError(_errno.EINVAL, "Invalid argument")
            if six:
                dst, scope = inet_pton(AF_INET6, host), rest[1]
            else:
                dst, scope = inet_aton(host), 0
                if dst == b"\xff\xff\xff\xff" and not q.options.get((SOL_SOCKET, SO_BROADCAST)):
                    raise PermissionError(_errno.EACCES, "Permission denied")
        mapped = six and (dst[:12] == _MAPPED_PREFIX or (address is None and q.peer and
                                                         q.peer[0].startswith("::ffff:")))
        if len(data) > (MAX_DATAGRAM6 if six and not mapped else MAX_DATAGRAM):
            raise OSError(_errno.EMSGSIZE, "Message too long")
        if q.state == "new":
            self.bind((self._any, 0))
        if six:
            head = UDP6_SEND_HEAD.pack(dst, port, ttl, tos, scope)
        else:
            head = UDP_SEND_HEAD.pack(dst, port, ttl, tos)
        _STD_SOCKET.send(self, head + bytes(data), flags)
        return len(data)

    def sendto(self, data, flags_or_address, address=None):
        q = self._q
        if q is None:
            if address is None:
                return _STD_SOCKET.sendto(self, data, flags_or_address)
            return _STD_SOCKET.sendto(self, data, flags_or_address, address)
        flags, addr = (0, flags_or_address) if address is None else (flags_or_address, address)
        if q.kind == "tcp":
            if q.state == "connected":
                raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
            raise OSError(_errno.EPIPE if q.state != "new" else _errno.ENOTCONN, "Transport endpoint is not connected")
        return self._send_datagram(data, addr, flags)

    def _recv_datagram(self, bufsize: int, flags: int):
        q = self._q
        if q.state == "new":
            # Linux: recv on an unbound UDP socket binds it to an ephemeral port, then waits.
            self.bind((self._any, 0))
        if q.family == AF_INET6:
            return self._recv_datagram6(flags)
        msg = _STD_SOCKET.recv(self, UDP_RECV_HEAD.size + MAX_DATAGRAM, flags & ~MSG_TRUNC)
        if len(msg) == UDP_ERROR_HEAD.size and q.state == "connected":
            # Linux reports it once, on the next call (sk_err); the datagram is gone.
            code = _ICMP_UNREACH_ERRNO.get(UDP_ERROR_HEAD.unpack(msg)[3], _errno.EHOSTUNREACH)
            raise _os_error(_errno.errorcode[code], "")
        if len(msg) < UDP_RECV_HEAD.size:
            raise OSError(_errno.EIO, "qnet: malformed datagram from netstack")
        src, sport, dst, ttl, tos, ifindex = UDP_RECV_HEAD.unpack_from(msg)
        payload = msg[UDP_RECV_HEAD.size:]
        return payload, (inet_ntoa(src), sport), (dst, ttl, tos, ifindex)

    def _recv_datagram6(self, flags: int):
        q = self._q
        msg = _STD_SOCKET.recv(self, UDP6_RECV_HEAD.size + MAX_DATAGRAM6, flags & ~MSG_TRUNC)
        if len(msg) == UDP6_ERROR_HEAD.size and q.state == "connected":
            dst, _port, icmp_type, code = UDP6_ERROR_HEAD.unpack(msg)
            if dst[:12] == _MAPPED_PREFIX:      # about an IPv4 datagram: ICMPv4's codes
                n = _ICMP_UNREACH_ERRNO.get(code, _errno.EHOSTUNREACH)
            elif icmp_type == 4:
                n = _errno.EPROTO               # parameter problem
            else:
                n = _ICMP6_UNREACH_ERRNO.get(code, _errno.EHOSTUNREACH)
            raise _os_error(_errno.errorcode[n], "")
        if len(msg) < UDP6_RECV_HEAD.size:
            raise OSError(_errno.EIO, "qnet: malformed datagram from netstack")
        src, sport, dst, hops, tclass, ifindex = UDP6_RECV_HEAD.unpack_from(msg)
        payload = msg[UDP6_RECV_HEAD.size:]
        host = inet_ntop(AF_INET6, src)
        return payload, _addr6(host, sport, ifindex), (dst, hops, tclass, ifindex)

    def recvfrom(self, bufsize, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.recvfrom(self, bufsize, flags)
        if q.kind == "tcp":
            return self.recv(bufsize, flags), None
        payload, addr, _meta = self._recv_datagram(bufsize, flags)
        return payload[:bufsize], addr

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.recvfrom_into(self, buffer, nbytes, flags)
        if q.kind == "tcp":
            return self.recv_into(buffer, nbytes, flags), None
        payload, addr, _meta = self._recv_datagram(nbytes or len(buffer), flags)
        n = min(len(payload), nbytes or len(buffer))
        memoryview(buffer)[:n] = payload[:n]
        return n, addr

    def recvmsg(self, bufsize, ancbufsize=0, flags=0):
        q = self._q
        if q is None:
            return _STD_SOCKET.recvmsg(self, bufsize, ancbufsize, flags)
        if q.kind == "tcp":
            return self.recv(bufsize, flags), [], 0, None
        payload, addr, (dst, ttl, tos, ifindex) = self._recv_datagram(bufsize, flags)
        anc = []
        if q.family == AF_INET6:
            # Linux's order (ip6_datagram_recv_specific_ctl): PKTINFO, HOPLIMIT, TCLASS; an
            # IPv4 datagram of a dual socket reports them too, its destination mapped.
            if q.options.get((IPPROTO_IPV6, IPV6_RECVPKTINFO)):
                anc.append((IPPROTO_IPV6, IPV6_PKTINFO, _struct.pack("=16si", dst, ifindex)))
            if q.options.get((IPPROTO_IPV6, IPV6_RECVHOPLIMIT)):
                anc.append((IPPROTO_IPV6, IPV6_HOPLIMIT, _struct.pack("=i", ttl)))
            if q.options.get((IPPROTO_IPV6, IPV6_RECVTCLASS)):
                anc.append((IPPROTO_IPV6, IPV6_TCLASS, _struct.pack("=i", tos)))
            return payload[:bufsize], anc, MSG_TRUNC if len(payload) > bufsize else 0, addr
        if q.options.get((IPPROTO_IP, IP_PKTINFO)):
            anc.append((IPPROTO_IP, IP_PKTINFO, _struct.pack("=i4s4s", ifindex, dst, dst)))
        if q.options.get((IPPROTO_IP, IP_RECVTTL)):
            anc.append((IPPROTO_IP, IP_TTL, _struct.pack("=i", ttl)))
        if q.options.get((IPPROTO_IP, IP_RECVTOS)):
            anc.append((IPPROTO_IP, IP_TOS, bytes([tos])))
        msg_flags = MSG_TRUNC if len(payload) > bufsize else 0
        return payload[:bufsize], anc, msg_flags, addr

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        q = self._q
        if q is None:
            return _STD_SOCKET.sendmsg(self, buffers, ancdata, flags, *(() if address is None else (address,)))
        data = b"".join(bytes(b) for b in buffers)
        if q.kind == "tcp":
            if ancdata:
                raise _unsupported("sendmsg", "ancillary data on a TCP socket")
            if address is not None:
                raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
            return self.send(data, flags)
        ttl = tos = -1
        for level, kind, value in ancdata:
            if (level, kind) in ((IPPROTO_IP, IP_TTL), (IPPROTO_IPV6, IPV6_HOPLIMIT)):
                ttl = _struct.unpack("=i", bytes(value)[:4])[0]
            elif (level, kind) == (IPPROTO_IP, IP_TOS):
                tos = bytes(value)[0]
            elif (level, kind) == (IPPROTO_IPV6, IPV6_TCLASS):
                tos = _struct.unpack("=i", bytes(value)[:4])[0]
            else:
                raise _unsupported("sendmsg", f"ancillary data level {level} type {kind}")
        return self._send_datagram(data, address, flags, ttl, tos)

    def recv_many(self, count: int, bufsize: int = MAX_DATAGRAM6) -> list[tuple[bytes, tuple]]:
        """Like recvmmsg: up to `count` datagrams waiting now (at least one, waiting as recv would)."""
        out = [self.recvfrom(bufsize)]
        fd = self.fileno()
        # Polled first: with a timeout set, recv waits it out before reading, MSG_DONTWAIT or not.
        while len(out) < count and _select.select([fd], [], [], 0)[0]:
            try:
                out.append(self.recvfrom(bufsize, MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def send_many(self, datagrams) -> int:
        """Like sendmmsg: (data, address) pairs (address None on a connected socket); how many were sent."""
        n = 0
        for data, address in datagrams:
            self._send_datagram(data, address)
            n += 1
        return n

    # -- lifetime --------------------------------------------------------------------------
    def _real_close(self, _ss=_csocket.socket):
        q = self._q
        if q is not None and q.state != "closed" and self.fileno() >= 0:
            linger = q.options.get((SOL_SOCKET, SO_LINGER))
            abort = bool(linger) and _struct.unpack("ii", linger)[0] != 0 and _struct.unpack("ii", linger)[1] == 0
            q.state = "closed"
            if abort:
                try:
                    _session().call("close", {"sock": q.sock, "abort": True})
                except OSError:
                    pass
            else:
                _session().send_only("close", {"sock": q.sock})
        _ss.close(self)

    def dup(self):
        if self._q is None:
            return _STD_SOCKET.dup(self)
        raise _unsupported("socket.dup", "duplicating a qnet socket")

    def __repr__(self):
        if self._q is None:
            return _STD_SOCKET.__repr__(self)
        kind = "SOCK_STREAM" if self._q.kind == "tcp" else "SOCK_DGRAM"
        fam = "AF_INET6" if self._q.family == AF_INET6 else "AF_INET"
        s = f"<qnet.socket.socket fd={self.fileno()}, family={fam}, type={kind}, proto={self.proto}"
        if self._q.local:
            s += f", laddr={self._q.local}"
        if self._q.peer and self._q.state == "connected":
            s += f", raddr={self._q.peer}"
        return s + ">"

    def __getstate__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


SocketType = socket


def _tcp_info(d: dict) -> bytes:
    """Linux's struct tcp_info (include/uapi/linux/tcp.h), as far as total_retrans and the
    byte counters, from netstack's info(); times in microseconds."""
    states = {"ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RECEIVED": 3, "FIN_WAIT_1": 4, "FIN_WAIT_2": 5,
              "TIME_WAIT": 6, "CLOSED": 7, "CLOSE_WAIT": 8, "LAST_ACK": 9, "LISTEN": 10, "CLOSING": 11}
    st = str(d.get("state", "")).upper().replace("-", "_")
    us = lambda k: int(float(d.get(k) or 0) * 1e6)    # noqa: E731
    n = lambda k: int(d.get(k) or 0)                  # noqa: E731
    ca = {"open": 0, "recovery": 3, "loss": 4}.get(str(d.get("ca_state")), 0)
    opts = d.get("options") or []
    options = (1 if "timestamps" in opts else 0) | (2 if "sack" in opts else 0) | (4 if "wscale" in opts else 0)
    wscale = (n("snd_wscale") & 15) | ((n("rcv_wscale") & 15) << 4)
    mss = n("snd_mss") or 1
    head = _struct.pack("=8B", states.get(st, 0), ca, n("retransmits") & 255, n("probes") & 255,
                        n("backoff") & 255, options, wscale, 0)
    body = _struct.pack("=24I", us("rto"), 0, n("snd_mss"), n("rcv_mss"), n("flight") // mss, n("sacked") // mss,
                        n("lost") // mss, 0, 0, 0, 0, 0, 0, 0, 0, us("rtt"), us("rttvar"),
                        min(n("ssthresh") // mss, 0xFFFFFFFF), n("cwnd") // mss, n("rcv_mss"), 3,
                        us("rcv_rtt"), n("recv_buffer"), n("total_retrans"))
    tail = _struct.pack("=4Q", 0, 0, n("bytes_acked"), n("bytes_received"))
    return head + body + tail + b"\0" * (232 - len(head + body + tail))


# -- module functions that build on socket.socket / getaddrinfo: the standard module's own
# code, run against this module's names (so they make qnet sockets and resolve through qnet).
# The globals those functions read that this module names otherwise (create_server: os, _socket).
os = _os
_socket = _csocket


def _rebind(fn):
    f = _types.FunctionType(fn.__code__, globals(), fn.__name__, fn.__defaults__, fn.__closure__)
    f.__kwdefaults__ = fn.__kwdefaults__
    f.__doc__ = fn.__doc__
    return f


create_server = _rebind(_std.create_server)
_std_create_connection = _rebind(_std.create_connection)

# RFC 8305 §5: the Connection Attempt Delay (recommended 250 ms, never below 100 ms).
CONNECTION_ATTEMPT_DELAY = 0.25


def _interleave(infos: list) -> list:
    """RFC 8305 §4: the addresses in the order getaddrinfo gave them (RFC 6724's), IPv6 first
    (First Address Family Count 1), then alternating families."""
    six = [i for i in infos if i[0] == AF_INET6]
    four = [i for i in infos if i[0] != AF_INET6]
    out = []
    for pair in zip(six, four):
        out.extend(pair)
    return out + six[len(four):] + four[len(six):]


def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                      all_errors=False):
    """socket.create_connection with Happy Eyeballs v2 (RFC 8305 §§4-5): the host's addresses
    of both families interleaved, IPv6 first; an attempt starts every
    CONNECTION_ATTEMPT_DELAY seconds while none has succeeded, or at once when the previous
    one failed; the first to connect wins and the others are closed. With one address it is
    the standard function. A socket's timeout bounds each attempt, as in the standard."""
    host, port = address
    infos = getaddrinfo(host, port, 0, SOCK_STREAM)
    if not infos:
        raise error("getaddrinfo returns an empty list")
    infos = _interleave(infos)
    if len(infos) == 1:
        return _std_create_connection(address, timeout, source_address, all_errors=all_errors)
    return _happy_eyeballs(infos, timeout, source_address, all_errors)


def _happy_eyeballs(infos, timeout, source_address, all_errors):
    import queue
    import threading
    done = queue.Queue()
    lock = threading.Lock()
    over = [False]                  # a winner was taken (or we gave up): late ones close
    pending: list = []
    errors: list = []

    def attempt(sock, sa):
        try:
            sock.connect(sa)
        except BaseException as e:          # noqa: BLE001 -- handed to the waiting thread
            done.put((sock, e))
            return
        with lock:
            late = over[0]
        if late:
            sock.close()
        else:
            done.put((sock, None))

    i = 0
    next_start = _time.monotonic()
    winner = None
    try:
        while winner is None:
            now = _time.monotonic()
            if i < len(infos) and (not pending or now >= next_start):
                af, socktype, proto, _canon, sa = infos[i]
                i += 1
                sock = None
                try:
                    sock = socket(af, socktype, proto)
                    if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                        sock.settimeout(timeout)
                    if source_address:
                        sock.bind(source_address)
                except OSError as e:
                    errors.append(e)
                    if sock is not None:
                        sock.close()
                    continue
                pending.append(sock)
                threading.Thread(target=attempt, args=(sock, sa), daemon=True,
                                 name="qnet-happy-eyeballs").start()
                next_start = _time.monotonic() + CONNECTION_ATTEMPT_DELAY
                continue
            if not pending:
                break                       # every address tried, every attempt failed
            wait = max(0.0, next_start - now) if i < len(infos) else None
            try:
                sock, err = done.get(timeout=wait)
            except queue.Empty:
                continue                    # the delay passed: the next attempt starts
            pending.remove(sock)
            if err is None:
                winner = sock
                break
            errors.append(err)
            sock.close()
            next_start = _time.monotonic()  # RFC 8305 §5: a failure starts the next at once
    finally:
        with lock:
            over[0] = True
        for sock in pending:
            sock.close()                    # their attempts end (EBADF) and are dropped
        while True:
            try:
                sock, err = done.get_nowait()
            except queue.Empty:
                break
            if sock is not winner:
                sock.close()
    if winner is not None:
        return winner
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)
    raise errors[-1] if errors else error("getaddrinfo returns an empty list")
getfqdn = _rebind(_std.getfqdn)
fromfd = _std.fromfd
socketpair = _std.socketpair


def has_dualstack_ipv6():
    """qnet's AF_INET6 sockets are dual stack unless IPV6_V6ONLY (netstack's bindings)."""
    return True


getaddrinfo = _resolver.getaddrinfo
gethostbyname = _resolver.gethostbyname
gethostbyname_ex = _resolver.gethostbyname_ex
gethostbyaddr = _resolver.gethostbyaddr
getnameinfo = _resolver.getnameinfo
has_ipv6 = True
