"""The library's side of qnet.socket (ipc/protocols/sockets.py): one connection to the socket
provider per thread, RUN/sockets.sock, AF_UNIX SOCK_SEQPACKET.

A call is one message each way. When the provider goes away in the middle of a call (a
restart), the call is sent again to its successor: every call of the protocol is safe to
repeat, and a caller in a blocking call sees it complete, not an error.
"""
from __future__ import annotations

import errno
import itertools
import os
import socket as _std
import threading
import time
from typing import Any

import msgspec

# How long a call waits for a provider that is restarting before it gives up (ENETDOWN).
RECONNECT_WAIT = float(os.environ.get("QNET_SOCKET_RECONNECT_WAIT", "30"))
MAX_REPLY = 1 << 16

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode
_EXC = {errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
        errno.ETIMEDOUT: TimeoutError, errno.EAGAIN: BlockingIOError, errno.EINPROGRESS: BlockingIOError,
        errno.EALREADY: BlockingIOError, errno.EPIPE: BrokenPipeError, errno.EACCES: PermissionError,
        errno.EPERM: PermissionError}


def runtime_dir() -> str:
    env = os.environ.get("QNET_RUNTIME_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/qnet"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "qnet") if xdg else f"/tmp/qnet-{os.getuid()}"


def provider_path() -> str:
    return os.environ.get("QNET_SOCKET_PATH") or os.path.join(runtime_dir(), "sockets.sock")


def os_error(code: str, message: str) -> OSError:
    n = getattr(errno, code, errno.EIO)
    return _EXC.get(n, OSError)(n, message or os.strerror(n))


class Session:
    """One thread's connection to the provider (a new one after fork, or after a restart)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.sock: _std.socket | None = None
        self.ids = itertools.count(1)

    def _connect(self, deadline: float) -> _std.socket:
        path = provider_path()
        delay = 0.02
        while True:
            s = _std.socket(_std.AF_UNIX, _std.SOCK_SEQPACKET)
            try:
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                if time.monotonic() >= deadline:
                    raise OSError(errno.ENETDOWN, f"qnet: no socket provider at {path} ({e.strerror}); "
                                  f"is a qnet graph with the sockets component up "
                                  f"(QNET_RUNTIME_DIR={runtime_dir()})?") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except BaseException:
                s.close()
                raise

    def call(self, method: str, args: dict, *, wait: float | None = None,
             retry: tuple[str, dict] | None = None) -> tuple[Any, list[int]]:
        """(result, fds) of one call; OSError with the provider's errno. `wait`: the longest
        the call may take at the provider (None: no bound). `retry`: the call to send instead
        when the first went to a provider that went away (connect -> connect_result)."""
        deadline_gone = None
        while True:
            if self.sock is None:
                self.sock = self._connect(time.monotonic() + RECONNECT_WAIT)
            req_id = next(self.ids)
            try:
                self.sock.send(_encode([req_id, method, _encode(args)]))
                while True:
                    msg, fds, _flags, _addr = _std.recv_fds(self.sock, MAX_REPLY, 8)
                    if not msg:
                        raise ConnectionResetError("the socket provider went away")
                    rep = _decode(msg)
                    if isinstance(rep, list) and len(rep) == 3 and rep[0] == req_id:
                        break
                    for fd in fds:          # an answer to a call we gave up on
                        os.close(fd)
            except (ConnectionError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in (None, errno.EPIPE, errno.ECONNRESET,
                                                              errno.ECONNREFUSED, errno.ENOTCONN):
                    raise
                # The provider restarted under the call: ask its successor.
                self.close()
                now = time.monotonic()
                deadline_gone = deadline_gone or now + RECONNECT_WAIT
                if now >= deadline_gone:
                    raise OSError(errno.ENETDOWN, "qnet: the socket provider went away") from None
                if retry is not None:
                    method, args = retry
                continue
            if rep[1] == 0:
                return rep[2], fds
            for fd in fds:
                os.close(fd)
            err = rep[2] if isinstance(rep[2], dict) else {}
            raise os_error(str(err.get("code", "EIO")), str(err.get("message", "")))

    def send_only(self, method: str, args: dict) -> None:
        """A call nobody waits for (close): id 0, no answer."""
        try:
            if self.sock is None:
                self.sock = self._connect(time.monotonic() + 1.0)
            self.sock.send(_encode([0, method, _encode(args)]))
        except OSError:
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_local = threading.local()


def session() -> Session:
    s = getattr(_local, "session", None)
    if s is None or s.pid != os.getpid():
        s = _local.session = Session()
    return s
