"""Python's `socket` module, with AF_INET sockets on qnet.

    from qnet import socket
    with socket.create_connection(("10.0.0.2", 80), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); print(s.recv(65536))

Everything the standard module has is here; `socket.socket` for AF_INET (TCP and UDP),
`create_connection`, `create_server`, `getaddrinfo`, `gethostbyname`... go through qnet's
socket provider (components/sockets) and netstack. AF_UNIX sockets and `socketpair()` stay the
kernel's: they are not networking. What qnet does not do (AF_INET6 for now, raw sockets, an
option it does not know) raises OSError naming the call; nothing falls back to the host's
network stack.

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
_ICMP_UNREACH_ERRNO = {2: _errno.ENOPROTOOPT, 3: _errno.ECONNREFUSED}
MAX_DATAGRAM = 65507
DEFAULT_BUFFER = 256 * 1024                     # a channel's kernel buffer (launcher/channels.py)
# Options kept here, read back by getsockopt; the provider hears of those that reach netstack.
_LOCAL = {(SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_RCVBUF),
          (SOL_SOCKET, SO_SNDBUF), (SOL_SOCKET, SO_LINGER), (IPPROTO_IP, IP_PKTINFO),
          (IPPROTO_IP, IP_RECVTTL), (IPPROTO_IP, IP_RECVTOS), (SOL_SOCKET, SO_RCVLOWAT),
          (SOL_SOCKET, SO_SNDLOWAT), (SOL_SOCKET, SO_OOBINLINE)}
_REMOTE = {(IPPROTO_TCP, TCP_NODELAY), (SOL_SOCKET, SO_KEEPALIVE), (IPPROTO_TCP, TCP_KEEPIDLE),
           (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT), (IPPROTO_IP, IP_TTL),
           (IPPROTO_IP, IP_TOS), (IPPROTO_TCP, TCP_CONGESTION), (SOL_SOCKET, SO_MARK),
           (SOL_SOCKET, SO_BROADCAST)}


def _unsupported(call: str, what: str, code: int = _errno.EOPNOTSUPP) -> OSError:
    return OSError(code, f"qnet: {call}: {what} is not supported on qnet")


class _State:
    """What a qnet socket is, shared by its dups."""
    __slots__ = ("sock", "kind", "state", "local", "peer", "options", "shut_rd", "connect_timeout",
                 "eof")

    def __init__(self, sock: str, kind: str) -> None:
        self.sock = sock
        self.kind = kind                # tcp | udp
        self.state = "new"              # new bound listening connecting connected closed
        self.local: tuple[str, int] | None = None
        self.peer: tuple[str, int] | None = None
        self.options: dict[tuple[int, int], object] = {}
        self.shut_rd = False
        self.connect_timeout = 0.0
        self.eof = False                # the channel's EOF was seen and its cause reported


def _host(call: str, address) -> tuple[str, int]:
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"{call}(): AF_INET address must be a tuple (host, port)")
    host, port = address
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 65535:
        raise OverflowError(f"{call}(): port must be 0-65535.")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    return _resolver.address_of(host), port


class socket(_STD_SOCKET):
    """socket.socket on qnet for AF_INET; the kernel's for AF_UNIX (and for a given fileno)."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        self._q: _State | None = None
        if fileno is not None or family not in (-1, AF_INET):
            if family == AF_INET6:
                raise _unsupported("socket.socket", "AF_INET6 (IPv6)", _errno.EAFNOSUPPORT)
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
        result, fds = _session().call("socket", {"kind": kind})
        _STD_SOCKET.__init__(self, AF_INET, kind_type, 0 if proto == -1 else proto, fds[0])
        for fd in fds[1:]:
            _os.close(fd)
        self._q = _State(result["sock"], kind)
        if type != -1 and type & getattr(_std, "SOCK_NONBLOCK", 0):
            self.setblocking(False)

    @classmethod
    def _adopt(cls, fd: int, sock: str, kind: str) -> "socket":
        s = cls.__new__(cls)
        _STD_SOCKET.__init__(s, AF_INET, SOCK_STREAM if kind == "tcp" else SOCK_DGRAM, 0, fd)
        s._q = _State(sock, kind)
        return s

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
        host, port = _host("bind", address)
        if q.state != "new":
            raise OSError(_errno.EINVAL, "Invalid argument")
        r, _ = self._call("bind", {"kind": q.kind, "address": host, "port": port,
                                   "reuse_address": bool(q.options.get((SOL_SOCKET, SO_REUSEADDR))),
                                   "reuse_port": bool(q.options.get((SOL_SOCKET, SO_REUSEPORT))),
                                   "broadcast": bool(q.options.get((SOL_SOCKET, SO_BROADCAST)))})
        q.local = (r["address"], r["port"])
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
            self.bind(("0.0.0.0", 0))
        if q.state not in ("bound", "listening"):
            raise OSError(_errno.EINVAL, "Invalid argument")
        r, _ = self._call("listen", {"address": q.local[0], "port": q.local[1],
                                     "backlog": max(0, min(int(backlog), 65535)),
                                     "options": self._remote_options()})
        q.local = (q.local[0], int(r["port"]))
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
        conn = type(self)._adopt(fds[0], r["sock"], "tcp")
        conn._q.state = "connected"
        conn._q.local = (r["local"], r["local_port"])
        conn._q.peer = (r["remote"], r["remote_port"])
        conn._q.options = {k: v for k, v in q.options.items()}
        if _std.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        return conn, conn._q.peer

    def connect(self, address):
        q = self._q
        if q is None:
            return _STD_SOCKET.connect(self, address)
        self._closed_check("connect")
        host, port = _host("connect", address)
        if q.kind == "udp":
            r, _ = self._call("connect", {"kind": "udp", "address": host, "port": port})
            q.local, q.peer, q.state = (r["local"], r["local_port"]), (host, port), "connected"
            return
        if q.state == "connected":
            raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
        if q.state == "listening":
            raise OSError(_errno.EISCONN, "Transport endpoint is already connected")
        timeout = self.gettimeout()
        args = {"kind": "tcp", "address": host, "port": port,
                "local_address": q.local[0] if q.local else None, "local_port": q.local[1] if q.local else 0,
                "options": self._remote_options()}
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
        q.local = (r["local"], r["local_port"])
        q.peer = (r["remote"], r["remote_port"])

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
        return q.local or ("0.0.0.0", 0)

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
            v = AF_INET
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
        elif key == (IPPROTO_IP, IP_TTL):
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
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if len(data) > MAX_DATAGRAM:
            raise OSError(_errno.EMSGSIZE, "Message too long")
        if address is None:
            if q.state != "connected":
                raise OSError(_errno.EDESTADDRREQ, "Destination address required")
            dst, port = b"\0\0\0\0", 0
        else:
            host, port = _host("sendto", address)
            if port == 0:
                raise OSError(_errno.EINVAL, "Invalid argument")
            dst = inet_aton(host)
            if dst == b"\xff\xff\xff\xff" and not q.options.get((SOL_SOCKET, SO_BROADCAST)):
                raise PermissionError(_errno.EACCES, "Permission denied")
        if q.state == "new":
            self.bind(("0.0.0.0", 0))
        _STD_SOCKET.send(self, UDP_SEND_HEAD.pack(dst, port, ttl, tos) + bytes(data), flags)
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
            self.bind(("0.0.0.0", 0))
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
            if (level, kind) == (IPPROTO_IP, IP_TTL):
                ttl = _struct.unpack("=i", bytes(value)[:4])[0]
            elif (level, kind) == (IPPROTO_IP, IP_TOS):
                tos = bytes(value)[0]
            else:
                raise _unsupported("sendmsg", f"ancillary data level {level} type {kind}")
        return self._send_datagram(data, address, flags, ttl, tos)

    def recv_many(self, count: int, bufsize: int = MAX_DATAGRAM) -> list[tuple[bytes, tuple[str, int]]]:
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
        s = f"<qnet.socket.socket fd={self.fileno()}, family=AF_INET, type={kind}, proto={self.proto}"
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


create_connection = _rebind(_std.create_connection)
create_server = _rebind(_std.create_server)
getfqdn = _rebind(_std.getfqdn)
fromfd = _std.fromfd
socketpair = _std.socketpair


def has_dualstack_ipv6():
    return False


getaddrinfo = _resolver.getaddrinfo
gethostbyname = _resolver.gethostbyname
gethostbyname_ex = _resolver.gethostbyname_ex
gethostbyaddr = _resolver.gethostbyaddr
getnameinfo = _resolver.getnameinfo
has_ipv6 = False
