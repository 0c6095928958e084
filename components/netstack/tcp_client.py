"""A client of netstack's TCP (qnet.tcp) for programs on this host: tests, tools, the socket
provider.

    client = TcpClient(runtime_dir)
    s = client.connect("10.0.0.2", 80, timeout=5)       # a TcpStream
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); s.recv(65536)
    lst = client.listen(8080); peer = lst.accept(timeout=10)
    lst = client.listen(8081, readiness=True)           # lst.fileno() is readable while
    select.select([lst], [], [], 5); peer = lst.accept(timeout=0)   # a connection waits

A stream's bytes never pass through an RPC: `fileno()` is one end of an AF_UNIX stream
socketpair whose other end netstack serves, so select/selectors/asyncio work on it and
`recv` is a kernel read. Errors are OSError subclasses with Linux's errno, as a socket's are.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Any

from ipc import errors
from ipc.decl import to_plain
from ipc.protocols.netstack import TCP
from ipc.rpc import RpcClient
from launcher.channels import request_streams

_ERRNO = {"refused": errno.ECONNREFUSED, "reset": errno.ECONNRESET, "timed_out": errno.ETIMEDOUT,
          "address_in_use": errno.EADDRINUSE, "address_not_available": errno.EADDRNOTAVAIL,
          "would_block": errno.EAGAIN, "no_route": errno.EHOSTUNREACH, "not_connected": errno.ENOTCONN,
          "bad_argument": errno.EINVAL, "limit": errno.EMFILE, "busy": errno.EBUSY,
          "not_found": errno.EBADF, "no_channel": errno.EBADF}
_EXC = {errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
        errno.ETIMEDOUT: TimeoutError, errno.EAGAIN: BlockingIOError}


def os_error(e: errors.IpcError) -> OSError:
    if isinstance(e, errors.RemoteError) and e.code in _ERRNO:
        n = _ERRNO[e.code]
    elif isinstance(e, (errors.Timeout, errors.Unavailable)):
        n = errno.ETIMEDOUT if isinstance(e, errors.Timeout) else errno.ENETDOWN
    else:
        n = errno.EIO
    return _EXC.get(n, OSError)(n, f"{os.strerror(n)} ({e})")


class TcpClient:
    POOL = 8        # byte channels asked of the launcher at once

    def __init__(self, runtime_dir: str, *, timeout: float = 10.0) -> None:
        self.run = runtime_dir
        self.timeout = timeout
        self.rpc = RpcClient(f"ipc://{os.path.join(runtime_dir, 'netstack.rpc')}", TCP,
                             timeout=timeout, retries=3)
        self._spare: list[tuple[str, socket.socket]] = []
        self.owner = f"{os.path.basename(sys.argv[0] or 'python')[:40]}[{os.getpid()}]"

    def _channel(self) -> tuple[str, socket.socket]:
        if not self._spare:
            try:
                self._spare = request_streams(self.run, TCP.name, self.POOL, timeout=self.timeout)
            except LookupError as e:
                raise OSError(errno.EMFILE, f"no byte channel from the launcher: {e}") from None
            self._spare.reverse()
        return self._spare.pop()

    def _with_channel(self, call) -> "TcpStream":
        for attempt in range(3):
            chan, sock = self._channel()
            try:
                r = call(chan)
            except errors.RemoteError as e:
                sock.close()
                if e.code == "no_channel" and attempt < 2:
                    # netstack restarted after a crash and dropped its channels: fresh ones.
                    self._drop_spares()
                    continue
                raise os_error(e) from None
            except errors.IpcError as e:
                sock.close()
                raise os_error(e) from None
            return TcpStream(self, chan, sock, r)
        raise OSError(errno.EBADF, "no usable byte channel")

    def _drop_spares(self) -> None:
        for _c, s in self._spare:
            s.close()
        self._spare = []

    def connect(self, address: str, port: int, *, timeout: float | None = None,
                local_address: str | None = None, local_port: int = 0) -> "TcpStream":
        # Without a timeout, the handshake ends when SYN retries are exhausted (about 127 s).
        wait = 0.0 if timeout is None else float(timeout)
        rpc_wait = (wait or 140.0) + 5.0
        return self._with_channel(lambda chan: self.rpc.call(
            "connect", rpc_wait, channel=chan, address=str(address), port=int(port),
            local_address=local_address, local_port=local_port, timeout=wait, owner=self.owner))

    def listen(self, port: int, address: str | None = None, backlog: int = 128,
               owner: str = "", readiness: bool = False) -> "TcpListener":
        """readiness: the listener gets a readiness channel (qnet.tcp 1.1), and fileno():
        readable while a connection waits; closing it (or exiting) closes the listener."""
        chan, sock = self._channel() if readiness else (None, None)
        try:
            r = self.rpc.call("listen", port=int(port), address=address, backlog=backlog,
                              owner=owner or self.owner, channel=chan)
        except errors.IpcError as e:
            if sock is not None:
                sock.close()
            raise os_error(e) from None
        return TcpListener(self, to_plain(r), sock)

    def connections(self) -> Any:
        return to_plain(self.rpc.call("list"))

    def close(self) -> None:
        self._drop_spares()
        self.rpc.close()


class TcpListener:
    def __init__(self, client: TcpClient, r: dict, ready: socket.socket | None = None) -> None:
        self.client = client
        self.id = int(r["listener"])
        self.port = int(r["port"])
        self.address = r.get("address")
        self.channel = r.get("channel")
        self.ready = ready          # the readiness channel's end, if any

    def fileno(self) -> int:
        """The readiness channel: readable while a connection waits (or when netstack closed
        the listener: EOF). Only for a listener made with readiness=True."""
        if self.ready is None:
            raise ValueError("this listener has no readiness channel (listen(readiness=True))")
        return self.ready.fileno()

    def _drain_ready(self) -> None:
        # Read the readiness bytes away before asking, so that netstack writes the next one
        # (it keeps at most one unread) and a later select waits for a new connection.
        while True:
            try:
                if not self.ready.recv(256, socket.MSG_DONTWAIT):
                    return              # EOF: the listener is gone; accept says not_found
            except (BlockingIOError, InterruptedError):
                return

    def accept(self, timeout: float | None = None) -> "TcpStream":
        """The next connection; BlockingIOError at once with timeout=0, TimeoutError after one."""
        wait = 3600.0 if timeout is None else float(timeout)
        if self.ready is not None:
            self._drain_ready()

        def call(chan: str):
            try:
                return self.client.rpc.call("accept", wait + 5.0, listener=self.id, channel=chan,
                                            wait=wait, owner=self.client.owner)
            except errors.RemoteError as e:
                if e.code == "would_block" and wait > 0:
                    raise errors.RemoteError("accept timed out", code="timed_out") from None
                raise
        return self.client._with_channel(call)

    def close(self) -> None:
        try:
            self.client.rpc.call("close_listener", listener=self.id)
        except errors.IpcError:
            pass
        if self.ready is not None:
            self.ready.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TcpStream:
    """One connection. Reads and writes are the byte channel's; the rest goes to netstack."""

    def __init__(self, client: TcpClient, chan: str, sock: socket.socket, r: Any) -> None:
        r = to_plain(r)
        self.client = client
        self.channel = chan
        self.sock = sock
        self.id = int(r["conn"])
        self.local = (str(ipaddress.ip_address(r["local"])), int(r["local_port"]))
        self.remote = (str(ipaddress.ip_address(r["remote"])), int(r["remote_port"]))

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        if not data and n:
            self._raise_if_failed()
        return data

    def recv_into(self, buf, n: int = 0) -> int:
        got = self.sock.recv_into(buf, n)
        if not got:
            self._raise_if_failed()
        return got

    def _raise_if_failed(self) -> None:
        """EOF on the channel: the peer's FIN, or an end that netstack names."""
        try:
            st = self.client.rpc.call("status", channel=self.channel)
        except errors.IpcError:
            return
        if st in ("reset", "unknown"):
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if st == "timed_out":
            raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    def send(self, data) -> int:
        return self.sock.send(data)

    def sendall(self, data) -> None:
        self.sock.sendall(data)

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        self.sock.shutdown(how)

    def abort(self) -> None:
        """Reset the connection (SO_LINGER 0, then close)."""
        try:
            self.client.rpc.call("abort", conn=self.id)
        except errors.IpcError:
            pass
        self.sock.close()

    def info(self) -> dict:
        return to_plain(self.client.rpc.call("info", conn=self.id))

    def set_option(self, name: str, value: int) -> None:
        """nodelay, keepalive, keepidle, keepintvl (seconds), keepcnt, ttl (IP_TTL), tos
        (IP_TOS; its ECN bits are TCP's and cleared)."""
        try:
            self.client.rpc.call("set_option", conn=self.id, name=name, value=int(value))
        except errors.IpcError as e:
            raise os_error(e) from None

    def set_congestion(self, name: str) -> None:
        try:
            self.client.rpc.call("set_congestion", conn=self.id, name=name)
        except errors.IpcError as e:
            raise os_error(e) from None

    def status(self) -> str:
        return self.client.rpc.call("status", channel=self.channel)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
