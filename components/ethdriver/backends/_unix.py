"""Small helpers shared by the unix-socket backends (launcher side and driver side)."""

from __future__ import annotations

import os
import socket
import stat


def remove_stale_socket(path: str, sock_type: int) -> None:
    """Unlink a socket file nobody serves any more; refuse to steal a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to remove it")
    with socket.socket(socket.AF_UNIX, sock_type) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: the process that bound it is gone
        except OSError:
            pass  # EPROTOTYPE etc.: not ours to talk to, and not served as our type
        else:
            raise FileExistsError(f"{path} is in use by another process")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def as_socket(handle: socket.socket | int) -> socket.socket:
    """A socket object for a handle passed as an fd number (takes ownership of the fd)."""
    if isinstance(handle, socket.socket):
        return handle
    return socket.socket(fileno=handle)
