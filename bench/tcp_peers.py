"""Traffic tools for the TCP benchmark: one server and one set of client loops for every stack.

Standard library only, like bench/ipv4_peers.py: ``ip netns exec`` runs it with
/usr/bin/python3, the PyTCP client runs it with pyenv's 3.13, and bench/tcp.py imports the
client loops to drive a qnet TcpStream in its own process. The loops take any object with
send/recv/shutdown/close/settimeout, so a kernel socket, a qnet TcpStream and a PyTCP
ClientTcpSocket are timed by the same code. Each subcommand prints one JSON line.

    serve --port P [--buf B]                      a kernel TCP server (thread per connection)
    client MODE DST PORT [--duration S] ...       one measurement from a kernel socket or PyTCP
                                                  (--socket-module M: through M, shaped like socket)
    relay --tap-a A --tap-b B --delay S           a user-space delay line between two TAPs

A connection to the server starts with one command line:

    sink SECONDS MAXBYTES   count what arrives for SECONDS from the first byte (or MAXBYTES),
                            send back {"bytes", "seconds"} as a JSON line, then discard until EOF
    source SECONDS MAXBYTES send for SECONDS (or MAXBYTES), then FIN
    echo                    echo until EOF
"""
from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque

CHUNK = 256 * 1024
IDLE_TIMEOUT = 30.0      # a server connection that hears nothing this long is dropped


def _set_buffers(sock: socket.socket, size: int) -> None:
    """SO_SNDBUF/SO_RCVBUF of ``size`` (the FORCE variants ignore rmem_max; we run as root).

    Linux doubles the value for its bookkeeping, and a fixed SO_RCVBUF turns receive
    auto-tuning off, as a fixed buffer should for an equal-buffers comparison.
    """
    for force, plain in ((32, socket.SO_SNDBUF), (33, socket.SO_RCVBUF)):  # SO_{SND,RCV}BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


# -- the server -------------------------------------------------------------------
def _read_line(conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\n" not in buf:
        b = conn.recv(4096)
        if not b:
            raise EOFError
        buf += b
        if len(buf) > 4096:
            raise ValueError("command line too long")
    line, rest = buf.split(b"\n", 1)
    return line, rest


def _serve_one(conn: socket.socket) -> None:
    conn.settimeout(IDLE_TIMEOUT)
    try:
        line, rest = _read_line(conn)
        cmd = line.decode().split()
        if cmd[0] == "echo":
            if rest:
                conn.sendall(rest)
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                conn.sendall(b)
        elif cmd[0] == "sink":
            seconds, max_bytes = float(cmd[1]), int(cmd[2])
            got = len(rest)
            first = time.perf_counter()  # the command arrives with or just before the first data
            end = first + seconds
            while got < max_bytes:
                left = end - time.perf_counter()
                if left <= 0:
                    break
                conn.settimeout(min(left, IDLE_TIMEOUT))
                try:
                    b = conn.recv(CHUNK)
                except socket.timeout:
                    continue
                if not b:
                    break
                got += len(b)
            took = time.perf_counter() - first
            conn.settimeout(IDLE_TIMEOUT)
            conn.sendall((json.dumps({"bytes": got, "seconds": took}) + "\n").encode())
            while conn.recv(CHUNK):  # what the sender had in flight: read and drop
                pass
        elif cmd[0] == "source":
            seconds, max_bytes = float(cmd[1]), int(cmd[2])
            data = bytes(range(256)) * (CHUNK // 256)
            sent = 0
            end = time.perf_counter() + seconds
            while sent < max_bytes and time.perf_counter() < end:
                n = min(CHUNK, max_bytes - sent)
                conn.sendall(data[:n])
                sent += n
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
    except (OSError, EOFError, ValueError, IndexError):
        pass
    finally:
        conn.close()


def serve(port: int, buf: int) -> None:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if buf:
        _set_buffers(ls, buf)  # accepted sockets inherit them (and the window scale they imply)
    ls.bind(("0.0.0.0", port))
    ls.listen(512)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        conn, _ = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# -- client loops (any socket-like object) -----------------------------------------
def _sendall(sock, data) -> None:
    view = memoryview(data)
    while view:
        n = sock.send(view)
        view = view[n:]


def _drain_to_eof(sock, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (OSError, socket.timeout):
        return False


def bulk_send(sock, seconds: float, max_bytes: int, report_timeout: float = 60.0) -> dict:
    """Stream to the server's sink until it reports; its figures (bytes, seconds from the first byte)."""
    _sendall(sock, f"sink {seconds} {max_bytes}\n".encode())
    data = bytes(range(256)) * (65536 // 256)
    sock.settimeout(report_timeout)
    report = b""
    fd = sock.fileno()
    sent = 0
    while b"\n" not in report:
        r, w, _ = select.select([fd], [fd] if sent < max_bytes else [], [], report_timeout)
        if not r and not w:
            raise TimeoutError(f"no report from the sink in {report_timeout:g} s (sent {sent})")
        if r:
            b = sock.recv(4096)
            if not b:
                raise ConnectionError(f"sink closed without a report (sent {sent})")
            report += b
        elif w:
            sent += sock.send(data)
    out = json.loads(report.split(b"\n", 1)[0])
    try:
        sock.shutdown(socket.SHUT_WR)
        out["closed_cleanly"] = _drain_to_eof(sock, 15.0)
    except OSError:
        out["closed_cleanly"] = False
    sock.close()
    out["mbit_s"] = out["bytes"] * 8 / out["seconds"] / 1e6 if out["seconds"] else 0.0
    return out


def bulk_recv(sock, seconds: float, max_bytes: int, timeout: float = 30.0) -> dict:
    """Ask the server's source for data; bytes and seconds from the first byte to its FIN."""
    _sendall(sock, f"source {seconds} {max_bytes}\n".encode())
    sock.settimeout(timeout)
    got = 0
    first = None
    buf = bytearray(CHUNK)
    while True:
        n = sock.recv_into(buf) if hasattr(sock, "recv_into") else len(sock.recv(CHUNK))
        if not n:
            break
        if first is None:
            first = time.perf_counter()
        got += n
    took = time.perf_counter() - (first or time.perf_counter())
    sock.close()
    return {"bytes": got, "seconds": took, "mbit_s": got * 8 / took / 1e6 if took else 0.0}


def _recv_exact(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise ConnectionError("EOF in the middle of a reply")
        out += b
    return out


def request_response(sock, seconds: float, size: int, timeout: float = 10.0) -> dict:
    """``size``-byte ping-pong on one connection; transactions per second and RTTs."""
    msg = bytes(size)
    sock.settimeout(timeout)
    _sendall(sock, b"echo\n")
    for _ in range(20):  # warm-up
        _sendall(sock, msg)
        _recv_exact(sock, size)
    done = 0
    rtts = []
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    while True:
        t0 = clock()
        if t0 >= end:
            break
        _sendall(sock, msg)
        _recv_exact(sock, size)
        rtts.append(clock() - t0)
        done += 1
    elapsed = clock() - start
    sock.shutdown(socket.SHUT_WR)
    _drain_to_eof(sock, 5.0)
    sock.close()
    rtts.sort()
    return {"transactions": done, "seconds": elapsed, "tps": done / elapsed,
            "rtt_median_us": rtts[len(rtts) // 2] * 1e6 if rtts else None}


def connection_rate(connect, seconds: float, size: int = 64, timeout: float = 10.0) -> dict:
    """connect + one ``size``-byte exchange + close, back to back; connections per second."""
    msg = b"echo\n" + bytes(size)
    done = 0
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    while clock() < end:
        sock = connect()
        try:
            sock.settimeout(timeout)
            _sendall(sock, msg)
            _recv_exact(sock, size)
        finally:
            sock.close()
        done += 1
    elapsed = clock() - start
    return {"connections": done, "seconds": elapsed, "cps": done / elapsed}


def run_client(mode: str, connect, seconds: float, max_bytes: int, size: int) -> dict:
    if mode == "send":
        return bulk_send(connect(), seconds, max_bytes)
    if mode == "recv":
        return bulk_recv(connect(), seconds, max_bytes)
    if mode == "rr":
        return request_response(connect(), seconds, size)
    if mode == "cps":
        return connection_rate(connect, seconds, size)
    raise ValueError(f"unknown mode {mode!r}")


def socket_connector(module, dst: str, port: int, buf: int = 0):
    """Connections made through ``module``, anything shaped like the socket module: the kernel's
    ``socket``, ``qnet.socket``, PyTCP's drop-in ``pytcp.socket``. The same calls for every one."""
    def connect():
        s = module.socket(module.AF_INET, module.SOCK_STREAM)
        if buf:
            _set_buffers(s, buf)  # before connect: the window scale is fixed by the SYN
        s.setsockopt(module.IPPROTO_TCP, module.TCP_NODELAY, 1)
        s.settimeout(10.0)
        s.connect((dst, port))
        return s
    return connect


def pytcp_connector(ipc_socket: str, dst: str, port: int):
    """PyTCP's own client API (ClientStack.socket), its tree already on sys.path."""
    from pytcp.client import connect as pytcp_connect
    from pytcp.socket import AddressFamily, SocketType
    client = pytcp_connect(socket_path=ipc_socket).__enter__()

    def connect():
        s = client.socket(AddressFamily.INET4, SocketType.STREAM)
        s.connect((dst, port))
        return s
    return connect


# -- a user-space delay line between two TAPs (the kernel's 600 ms path) ------------
def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    IFF_TAP, IFF_NO_PI, TUNSETIFF = 0x0002, 0x1000, 0x400454CA
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def relay(tap_a: str, tap_b: str, delay: float, limit: int, duration: float) -> None:
    """Frames from each TAP leave by the other ``delay`` s later, in order (bounded like qnet's
    delay line: ``limit`` frames a direction, the rest dropped and counted)."""
    fa, fb = _open_tap(tap_a), _open_tap(tap_b)
    lines = {fa: (fb, deque()), fb: (fa, deque())}
    counts = {"a_to_b": 0, "b_to_a": 0, "overflow": 0, "write_errors": 0}
    print(json.dumps({"ready": True}), flush=True)
    clock = time.monotonic
    end = clock() + duration
    while clock() < end:
        due = [q[0][0] for _o, q in lines.values() if q]
        wait = max(0.0, min(due) - clock()) if due else 0.5
        readable = select.select([fa, fb], [], [], min(wait, 0.5))[0]
        now = clock()
        for fd in readable:
            out, q = lines[fd]
            for _ in range(256):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(q) >= limit:
                    counts["overflow"] += 1
                    continue
                q.append((now + delay, frame))
                counts["a_to_b" if fd == fa else "b_to_a"] += 1
        now = clock()
        for _fd, (out, q) in lines.items():
            while q and q[0][0] <= now:
                try:
                    os.write(out, q.popleft()[1])
                except OSError:
                    counts["write_errors"] += 1
    print(json.dumps(counts), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("serve")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--buf", type=int, default=0, help="SO_SNDBUF/SO_RCVBUF (0: the kernel's auto-tuning)")
    a = sub.add_parser("client")
    a.add_argument("mode", choices=("send", "recv", "rr", "cps"))
    a.add_argument("dst")
    a.add_argument("port", type=int)
    a.add_argument("--duration", type=float, default=5.0)
    a.add_argument("--max-bytes", type=int, default=50_000_000)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--buf", type=int, default=0)
    a.add_argument("--pytcp-tree", help="measure PyTCP: its back-ported tree ...")
    a.add_argument("--ipc-socket", help="... and its daemon's socket")
    a.add_argument("--socket-module", help="connect through this module instead (socket, qnet.socket, "
                                           "pytcp.socket: PyTCP's drop-in)")
    a = sub.add_parser("relay")
    a.add_argument("--tap-a", required=True)
    a.add_argument("--tap-b", required=True)
    a.add_argument("--delay", type=float, required=True)
    a.add_argument("--limit", type=int, default=10_000)
    a.add_argument("--duration", type=float, default=600.0)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port, args.buf)
    elif args.cmd == "relay":
        relay(args.tap_a, args.tap_b, args.delay, args.limit, args.duration)
    else:
        if args.pytcp_tree:
            sys.path.insert(0, args.pytcp_tree)
        if args.socket_module:
            if args.ipc_socket:
                os.environ["PYTCP_DAEMON_SOCKET"] = args.ipc_socket  # where pytcp.socket finds its daemon
            connect = socket_connector(importlib.import_module(args.socket_module), args.dst, args.port, args.buf)
        elif args.pytcp_tree:
            connect = pytcp_connector(args.ipc_socket, args.dst, args.port)
        else:
            connect = socket_connector(socket, args.dst, args.port, args.buf)
        out = run_client(args.mode, connect, args.duration, args.max_bytes, args.size)
        print(json.dumps(out), flush=True)
        os._exit(0)  # PyTCP's client keeps threads; the figure is out


if __name__ == "__main__":
    main()
