"""Traffic tools for the IPv4 benchmark, run inside network namespaces.

Standard library only: ``ip netns exec`` runs them with /usr/bin/python3
(the pyenv shim does not work there), and the PyTCP peers run them with
pyenv's 3.13. One tool measures every target, so the kernel, qnet and PyTCP
are timed by the same code. Each subcommand prints one JSON line.

    ping DST [--count N] [--interval S]           ICMP echo RTTs (raw socket)
    udp-echo --port P                             a kernel-socket UDP echo server (the kernel anchor)
    udp-rr DST PORT --outstanding N --duration S  request/response transactions per second
    udp-sink --port P --duration S                count what arrives
    udp-blast DST PORT --size B --duration S      send as fast as the socket takes them
    pytcp-daemon --tree T ...                     PyTCP's daemon with its console logging off
    pytcp-echo --tree T --ipc-socket S --port P   a UDP echo served through PyTCP's client API
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import struct
import sys
import time

_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY = 8, 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def ping(dst: str, count: int, interval: float, timeout: float, size: int) -> dict:
    """One echo outstanding at a time; an RTT per reply, in nanoseconds. An IPv6 dst is
    pinged with ICMPv6 (the kernel fills its checksum and hands replies without a header)."""
    v6 = ":" in dst
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6 else \
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    request, reply = (128, 129) if v6 else (_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY)
    ident = os.getpid() & 0xFFFF
    payload = bytes(range(size % 256)) + bytes(max(0, size - size % 256))
    rtts: list[int] = []
    lost = 0
    try:
        for seq in range(count):
            head = struct.pack("!BBHHH", request, 0, 0, ident, seq)
            csum = 0 if v6 else _checksum(head + payload)
            pkt = struct.pack("!BBHHH", request, 0, csum, ident, seq) + payload
            t0 = time.perf_counter_ns()
            sock.sendto(pkt, (dst, 0))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    lost += 1
                    break
                data = sock.recv(65535)
                t1 = time.perf_counter_ns()
                ihl = 0 if v6 else (data[0] & 0x0F) * 4
                if len(data) < ihl + 8:
                    continue
                typ, _code, _c, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if typ == reply and rid == ident and rseq == seq:
                    rtts.append(t1 - t0)
                    break
            if interval > 0:
                time.sleep(interval)
    finally:
        sock.close()
    return {"rtt_ns": rtts, "lost": lost}


def udp_echo(port: int) -> None:
    """Echo every datagram back until killed (the kernel anchor's server)."""
    # One dual-stack socket: IPv4 and IPv6 clients alike.
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("::", port))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(data, addr)


def udp_rr(dst: str, port: int, outstanding: int, duration: float, size: int, timeout: float) -> dict:
    """Keep ``outstanding`` requests in flight; count answered transactions.

    Each request carries a sequence number; a reply completes its request and
    releases the next. A request unanswered after ``timeout`` counts as lost
    and is replaced, so one drop does not stall the window.
    """
    sock = socket.socket(_family(dst), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((dst, port))
    pad = bytes(max(0, size - 8))
    inflight: dict[int, float] = {}
    seq = 0
    done = lost = late = 0
    rtts: list[int] = []

    def send_one(now: float) -> None:
        nonlocal seq
        sock.send(struct.pack("!Q", seq) + pad)
        inflight[seq] = now
        seq += 1

    # Warm-up: one answered request (ARP resolved, paths hot) before the clock starts.
    sock.settimeout(2.0)
    for _ in range(5):
        sock.send(struct.pack("!Q", 1 << 62) + pad)
        try:
            sock.recv(65535)
            break
        except socket.timeout:
            continue
    sock.setblocking(False)
    start = time.perf_counter()
    end = start + duration
    for _ in range(outstanding):
        send_one(time.perf_counter())
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        readable = select.select([sock], [], [], min(timeout, end - now))[0]
        now = time.perf_counter()
        if readable:
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                if len(data) < 8:
                    continue
                (rseq,) = struct.unpack_from("!Q", data)
                sent = inflight.pop(rseq, None)
                if sent is None:
                    late += 1  # a reply to a request already written off
                    continue
                done += 1
                if outstanding == 1:
                    rtts.append(int((now - sent) * 1e9))
                send_one(now)
        for s, t in list(inflight.items()):
            if now - t > timeout:
                del inflight[s]
                lost += 1
                send_one(now)
    elapsed = time.perf_counter() - start
    sock.close()
    return {"transactions": done, "elapsed": elapsed, "lost": lost, "late": late,
            "rtt_ns": rtts[:20000]}


def udp_sink(port: int, duration: float, idle: float, busy: float) -> dict:
    """Count datagrams for up to ``duration`` s; once ``busy`` s have passed, stop early ``idle`` s
    after the last arrival (a stack may pause for a while when the sender hogs the CPU)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)     # dual-stack
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("::", port))
    sock.setblocking(False)
    print(json.dumps({"ready": True}), flush=True)
    frames = nbytes = 0
    first = last = 0.0
    start = time.perf_counter()
    end = start + duration
    while True:
        now = time.perf_counter()
        if now >= end or (now - start > busy and now - max(last, start) > idle):
            break
        if not select.select([sock], [], [], min(0.05, end - now))[0]:
            continue
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            last = time.perf_counter()
            if not frames:
                first = last
            frames += 1
            nbytes += len(data)
    sock.close()
    return {"frames": frames, "bytes": nbytes, "first": first, "last": last}


def udp_blast(dst: str, port: int, size: int, duration: float, rate: float) -> dict:
    """Send ``size``-byte datagrams for ``duration`` s: back to back, or paced at ``rate`` per s."""
    sock = socket.socket(_family(dst), socket.SOCK_DGRAM)
    sock.connect((dst, port))
    payload = bytes(size)
    sent = nobufs = 0
    burst = 64 if rate <= 0 else max(1, min(64, int(rate / 1000)))  # paced: ~1 ms bursts
    start = time.perf_counter()
    end = start + duration
    while True:
        for _ in range(burst):  # check the clock once per burst
            try:
                sock.send(payload)
                sent += 1
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                nobufs += 1
        now = time.perf_counter()
        if now >= end:
            break
        if rate > 0:
            ahead = start + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.perf_counter() - start
    sock.close()
    return {"sent": sent, "start": start, "elapsed": elapsed, "nobufs": nobufs}


# -- PyTCP peers (run by pyenv's 3.13 with the back-ported tree first on sys.path) ---------
def pytcp_daemon(tree: str, argv: list[str]) -> None:
    sys.path.insert(0, tree)
    from pytcp import stack  # noqa: E402  (needs the tree on sys.path)
    stack.LOG__CHANNEL.clear()  # its default prints a console line per packet handled
    from pytcp.daemon.__main__ import main
    main(argv)


def pytcp_echo(tree: str, ipc_socket: str, port: int) -> None:
    sys.path.insert(0, tree)
    from pytcp.client import connect
    from pytcp.socket import AddressFamily, SocketType
    with connect(socket_path=ipc_socket) as client:
        sock = client.socket(AddressFamily.INET4, SocketType.DGRAM)
        sock.bind(("0.0.0.0", port))
        print(json.dumps({"ready": True}), flush=True)
        while True:
            data, addr = sock.recvfrom()
            sock.sendto(data, addr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ping")
    a.add_argument("dst")
    a.add_argument("--count", type=int, default=100)
    a.add_argument("--interval", type=float, default=0.002)
    a.add_argument("--timeout", type=float, default=1.0)
    a.add_argument("--size", type=int, default=56)
    a = sub.add_parser("udp-echo")
    a.add_argument("--port", type=int, default=7)
    a = sub.add_parser("udp-rr")
    a.add_argument("dst")
    a.add_argument("port", type=int)
    a.add_argument("--outstanding", type=int, default=1)
    a.add_argument("--duration", type=float, default=2.0)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--timeout", type=float, default=0.2)
    a = sub.add_parser("udp-sink")
    a.add_argument("--port", type=int, default=9)
    a.add_argument("--duration", type=float, default=10.0)
    a.add_argument("--idle", type=float, default=1.0)
    a.add_argument("--busy", type=float, default=0.0, help="no idle stop before this many seconds")
    a = sub.add_parser("udp-blast")
    a.add_argument("dst")
    a.add_argument("port", type=int)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--duration", type=float, default=2.0)
    a.add_argument("--rate", type=float, default=0.0, help="datagrams/s (0: as fast as possible)")
    a = sub.add_parser("pytcp-daemon")
    a.add_argument("--tree", required=True)
    a = sub.add_parser("pytcp-echo")
    a.add_argument("--tree", required=True)
    a.add_argument("--ipc-socket", required=True)
    a.add_argument("--port", type=int, default=7)
    args, rest = p.parse_known_args(argv)
    if args.cmd == "pytcp-daemon":
        pytcp_daemon(args.tree, rest)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "ping":
        out = ping(args.dst, args.count, args.interval, args.timeout, args.size)
    elif args.cmd == "udp-echo":
        udp_echo(args.port)
        return
    elif args.cmd == "udp-rr":
        out = udp_rr(args.dst, args.port, args.outstanding, args.duration, args.size, args.timeout)
    elif args.cmd == "udp-sink":
        out = udp_sink(args.port, args.duration, args.idle, args.busy)
    elif args.cmd == "udp-blast":
        out = udp_blast(args.dst, args.port, args.size, args.duration, args.rate)
    else:
        pytcp_echo(args.tree, args.ipc_socket, args.port)
        return
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
