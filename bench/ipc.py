"""The IPC benchmark: qnet's typed layer beside raw pyzmq, measured in the same run.

1. RPC round trip: ``RpcClient`` -> ``RpcServer`` calling a method with six
   typed fields, beside a raw DEALER -> ROUTER loop carrying the same payload
   bytes (the ``msgpack`` package, no validation) with the same poll-based loop.
2. Frame-batch throughput, one direction: ``UserChannel.send_batch`` ->
   ``ProviderChannel.receive`` beside raw pyzmq sending one packed blob with an
   offsets array per batch, and one ZeroMQ part per frame. The sender stays a
   bounded window ahead of the receiver's acks, so the figures are drop-free.
3. Codec, in-process: the ``msgpack`` package plus hand-written validation
   beside msgspec's typed decode as ``ipc/`` uses it.
4. Same-host data plane (docs/ipc-benchmark.md, "Same-host data plane"):
   - round trip of one 100-byte frame: our seqpacket channel
     (``SeqpacketUser`` <-> ``SeqpacketProvider``) beside a raw SOCK_SEQPACKET
     socketpair (blocking send / recv, the anchor), our ZeroMQ channel, raw
     DEALER <-> ROUTER and a shared-memory ring with eventfd doorbells
     (``bench.shm_ring``), with both processes free, both pinned to one CPU,
     and pinned to different CPUs;
   - one-way batches (2. above) also over our seqpacket channel, a raw
     socketpair sending the same packed bytes (the anchor) and the ring.

Besides wall-clock figures it reports CPU time per call and per frame on each
side (process time, ZeroMQ's I/O thread included), which moves much less than
wall time when other work shares the machine's two cores.

Usage: ``python -m bench.ipc [--quick] [--json FILE] [--profile]``; scripts call ``run(quick)``.
"""
from __future__ import annotations

import cProfile
import ipaddress
import itertools
import os
import re
import select
import socket
import struct
import sys
import time
from array import array
from typing import Any

import msgpack
import zmq

from ipc.channel import ProviderChannel, UserChannel
from ipc.decl import Event, Method, Protocol, Stream, Version, encode
from ipc.rpc import RpcClient, RpcServer, configure_socket, context
from ipc.seqpacket import HEADER as SEQ_HEADER, MAGIC as SEQ_MAGIC, VERSION as SEQ_VERSION
from ipc.seqpacket import KIND_BATCH as SEQ_KIND_BATCH, SeqpacketProvider, SeqpacketUser, make_pair
from ipc.types import BOOL, IPV4, NAME, U32, U64, Field, Int, Str

from . import common
from .shm_ring import ShmRing
from .common import Table, WindowedSender, fmt_ratio, log, median, ratio

ROUTE = Protocol(
    "bench.route", Version(1, 0),
    doc="A route update with six typed fields, the shape of a typical control call.",
    methods=(Method("set_route", args=(
        Field("port", NAME), Field("addr", IPV4), Field("prefix_len", Int(0, 32)),
        Field("metric", U32), Field("up", BOOL), Field("note", Str(max_len=64)),
    ), result=BOOL),),
)
SET_ROUTE = ROUTE.method_by_name["set_route"]
ROUTE_ARGS = {"port": "up0", "addr": ipaddress.IPv4Address("192.0.2.17"), "prefix_len": 24,
              "metric": 100, "up": True, "note": "learned from dhcp"}

FRAMES = Protocol(
    "bench.frames", Version(1, 0),
    events=(Event("ack", fields=(Field("batches", U64),)),),
    streams=(Stream("rx", "to_provider", max_batch=1024),),
)

AIM_RPC_RATIO = 1.5       # typed round trip within 1.5x of raw
AIM_BATCH_RATIO = 0.70    # typed batches at >= 70% of raw blob throughput
BATCH_FRAMES = 256
FRAME_SIZES = (64, 1500)
HWM = 256                 # the channel's default data HWM, used by every variant
ACK_EVERY = 8             # the receiver acks every 8 batches; the sender stays
WINDOW = 32               # at most 32 ahead (< HWM, so nothing is dropped)
BATCH_VARIANTS = ("ours", "raw_blob", "raw_multipart")      # over ZeroMQ
SAME_HOST_VARIANTS = ("seq_ours", "seq_raw", "shm")           # socketpair and shared memory
ALL_BATCH_VARIANTS = BATCH_VARIANTS + SAME_HOST_VARIANTS
# The socketpairs of the throughput test: a window of 32 batches of 256 x 1500 B (12.4 MB)
# must fit the send buffer, or sends are refused; the launcher's channels use 4 MiB.
SOCKPAIR_BUFFER = 16 << 20
RING_SLOT = 400 * 1024    # one batch of 256 x 1500 B with its header and offsets


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, ipaddress.IPv4Address):
        return str(obj)
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _set_route(port, addr, prefix_len, metric, up, note):
    return True


class _RouteTable:
    set_route = staticmethod(_set_route)


# -- 1. RPC round trip -----------------------------------------------------------------
def _raw_rpc_process(sock: zmq.Socket, limit: int = 256) -> None:
    """The raw server: RpcServer.process()'s drain-until-empty structure, no checks."""
    for _ in range(limit):
        try:
            peer, header, body = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        req_id = msgpack.unpackb(header)[1]
        result = _set_route(**msgpack.unpackb(body))
        sock.send_multipart([peer, msgpack.packb([2, req_id]), msgpack.packb(result)], zmq.NOBLOCK)


def serve_rpc(conn, typed_ep: str, raw_ep: str) -> None:
    """Child process: the typed RpcServer and the raw ROUTER on one poller."""
    server = RpcServer(typed_ep, {ROUTE: _RouteTable()})
    raw = context().socket(zmq.ROUTER)
    configure_socket(raw)
    raw.setsockopt(zmq.ROUTER_MANDATORY, 0)
    raw.bind(raw_ep)
    try:
        common.serve_peer(conn, {server.socket: server.process, raw: lambda: _raw_rpc_process(raw)},
                          report=lambda: dict(server.counters))
    finally:
        server.close()
        raw.close(linger=0)


class RawRpcClient:
    """A raw DEALER client with RpcClient's loop: send, poll to a deadline, match req_id."""

    _ids = itertools.count(1)

    def __init__(self, ep: str, timeout: float = 5.0):
        self.socket = context().socket(zmq.DEALER)
        configure_socket(self.socket)
        self.socket.connect(ep)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.timeout = timeout

    def call(self, method: str, **kwargs: Any) -> Any:
        req_id = next(self._ids)
        header = msgpack.packb([1, req_id, "bench.route", "1.0", method])
        self.socket.send_multipart([header, msgpack.packb(kwargs, default=_msgpack_default)], zmq.NOBLOCK)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.poller.poll(remaining * 1000):
                raise TimeoutError(f"raw {method}: no answer in {self.timeout:g} s")
            parts = self.socket.recv_multipart()
            if msgpack.unpackb(parts[0])[1] == req_id:
                return msgpack.unpackb(parts[1])

    def close(self) -> None:
        self.socket.close(linger=0)


def _time_calls(call, n: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        if call("set_route", **ROUTE_ARGS) is not True:
            raise AssertionError("set_route did not answer True")
        samples.append(clock() - t0)
    return samples


def bench_rpc(rundir: str, quick: bool) -> dict:
    rounds, calls, warmup = (4, 500, 200) if quick else (10, 2000, 500)
    typed_body, raw_body = encode(ROUTE_ARGS), msgpack.packb(ROUTE_ARGS, default=_msgpack_default)
    if typed_body != raw_body:  # the comparison is void unless both carry the same bytes
        raise AssertionError(f"payloads differ: typed {typed_body!r} raw {raw_body!r}")
    typed_ep, raw_ep = common.endpoint(rundir, "rpc-typed"), common.endpoint(rundir, "rpc-raw")
    samples: dict[str, list[int]] = {"typed": [], "raw": []}
    medians: dict[str, list[float]] = {"typed": [], "raw": []}
    cpu: dict[str, list[float]] = {"typed": [], "raw": []}
    with common.ServerProcess(serve_rpc, typed_ep, raw_ep) as server:
        typed, raw = RpcClient(typed_ep, ROUTE, timeout=5.0, retries=0), RawRpcClient(raw_ep)
        try:
            clients = {"typed": typed.call, "raw": raw.call}
            for call in clients.values():
                _time_calls(call, warmup)
            for r in range(rounds):
                # Alternate who goes first so drift in the machine's load hits both alike.
                for name in (("typed", "raw") if r % 2 == 0 else ("raw", "typed")):
                    c0, s0 = time.process_time(), server.request("cpu")
                    s = _time_calls(clients[name], calls)
                    c1, s1 = time.process_time(), server.request("cpu")
                    samples[name] += s
                    medians[name].append(median(s) / 1000.0)
                    cpu[name].append(((c1 - c0) + (s1 - s0)) / calls * 1e6)
            report = server.stop()
        finally:
            typed.close()
            raw.close()
    out: dict[str, Any] = {}
    for name in samples:
        out[name] = {**common.latency_summary(samples[name]), "cpu_us_per_call": round(median(cpu[name]), 1),
                     "round_medians_us": [round(x, 1) for x in medians[name]]}
    round_ratios = [ratio(t, r) for t, r in zip(medians["typed"], medians["raw"])]
    out["ratio_median"] = round(median(round_ratios), 3)
    out["ratio_rounds_range"] = [round(min(round_ratios), 3), round(max(round_ratios), 3)]
    out["ratio_p99"] = round(ratio(out["typed"]["p99_us"], out["raw"]["p99_us"]), 3)
    out["ratio_cpu"] = round(ratio(out["typed"]["cpu_us_per_call"], out["raw"]["cpu_us_per_call"]), 3)
    out.update(aim=AIM_RPC_RATIO, meets_aim=out["ratio_median"] <= AIM_RPC_RATIO,
               payload_bytes=len(typed_body), server_counters=report)
    return out


# -- 1b. same-host round trip of one small frame -------------------------------------------
ECHO = Protocol(
    "bench.echo", Version(1, 0),
    doc="One-frame batches bounced back: the data plane's round trip.",
    streams=(Stream("up", "to_provider", max_batch=1024), Stream("down", "to_user", max_batch=1024)),
)
RTT_PAYLOAD = 100
RTT_VARIANTS = ("seq_ours", "seq_raw", "zmq_ours", "zmq_raw", "shm")
RTT_LABELS = {
    "seq_ours": "seqpacket ours: SeqpacketUser <-> SeqpacketProvider",
    "seq_raw": "raw socketpair: send / recv (anchor)",
    "zmq_ours": "zmq ours: UserChannel <-> ProviderChannel",
    "zmq_raw": "zmq raw: DEALER <-> ROUTER send / recv",
    "shm": "shm ring + eventfd doorbell (bench-only)",
}
AIM_RTT_RATIO = 1.5       # the chosen transport's round trip within 1.5x of a raw socketpair
RTT_TIMEOUT_MS = 5000
_TIMEVAL = struct.Struct("ll")


class _Loop:
    """The part of a component's loop a channel uses: add_reader / remove_reader, one poll."""

    def __init__(self):
        self.readers: dict[Any, Any] = {}
        self._zpoll = zmq.Poller()

    def add_reader(self, key: Any, cb: Any) -> None:
        self.readers[key] = cb
        self._zpoll.register(key, zmq.POLLIN)

    def remove_reader(self, key: Any) -> None:
        self.readers.pop(key, None)
        self._zpoll.unregister(key)

    def run_once(self, timeout_ms: float) -> None:
        events = self._zpoll.poll(timeout_ms)
        if not events:
            raise TimeoutError(f"no message in {timeout_ms:g} ms")
        for key, _ev in events:
            self.readers[key]()


class _FdLoop(_Loop):
    """The same over select.poll, for loops that watch only file descriptors."""

    def __init__(self):
        self.readers = {}
        self._poll = select.poll()

    def add_reader(self, key: int, cb: Any) -> None:
        self.readers[key] = cb
        self._poll.register(key, select.POLLIN)

    def remove_reader(self, key: int) -> None:
        self.readers.pop(key, None)
        self._poll.unregister(key)

    def run_once(self, timeout_ms: float) -> None:
        events = self._poll.poll(timeout_ms)
        if not events:
            raise TimeoutError(f"no message in {timeout_ms:g} ms")
        for fd, _ev in events:
            self.readers[fd]()


def _blocking_with_timeout(sock: socket.socket) -> None:
    """Blocking recv with a kernel-side timeout: one syscall per recv, and a dead peer cannot hang us."""
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(RTT_TIMEOUT_MS // 1000, 0))


def serve_rtt(conn, seq_sock: socket.socket, raw_sock: socket.socket, zours_ep: str, zraw_ep: str,
              up_spec: tuple, down_spec: tuple) -> None:
    """Child process: echoes on one variant at a time, as the parent asks ("echo", variant, n)."""
    provider = SeqpacketProvider(ECHO, {"rtt": seq_sock.detach()})
    seq_loop = _FdLoop()
    seq_count = [0]

    def seq_batch(peer: bytes, stream: str, frames: list) -> None:
        provider.send_batch(peer, "down", frames)
        seq_count[0] += 1

    provider.start(seq_loop, seq_batch, lambda *a: None)
    _blocking_with_timeout(raw_sock)
    zprov = ProviderChannel(ECHO, zours_ep)
    z_loop = _Loop()
    z_count = [0]

    def z_batch(peer: bytes, stream: str, frames: list) -> None:
        zprov.send_batch(peer, "down", frames)
        z_count[0] += 1

    zprov.start(z_loop, z_batch, lambda *a: None)
    zraw = context().socket(zmq.ROUTER)
    configure_socket(zraw)
    zraw.setsockopt(zmq.RCVTIMEO, RTT_TIMEOUT_MS)
    zraw.bind(zraw_ep)
    up, down = ShmRing(*up_spec), ShmRing(*down_spec)

    def echo_loop(loop: _Loop, count: list, n: int) -> None:
        count[0] = 0
        while count[0] < n:
            loop.run_once(RTT_TIMEOUT_MS)

    def echo_seq_raw(n: int) -> None:
        recv, send = raw_sock.recv, raw_sock.send
        for _ in range(n):
            send(recv(2048))

    def echo_zmq_raw(n: int) -> None:
        recv, send = zraw.recv_multipart, zraw.send_multipart
        for _ in range(n):
            send(recv())

    def echo_shm(n: int) -> None:
        for _ in range(n):
            while (m := up.peek()) is None:
                if not up.wait_data(RTT_TIMEOUT_MS):
                    raise TimeoutError("shm: no message")
            down.put(m)
            up.release(ring_space=False)

    echo = {"seq_ours": lambda n: echo_loop(seq_loop, seq_count, n), "seq_raw": echo_seq_raw,
            "zmq_ours": lambda n: echo_loop(z_loop, z_count, n), "zmq_raw": echo_zmq_raw, "shm": echo_shm}
    conn.send("ready")
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg == "stop":
                conn.send({"seq": dict(provider.counters), "zmq": dict(zprov.counters)})
                return
            if msg[0] == "pin":
                conn.send(common.pin_process(msg[1]))
            elif msg[0] == "echo":
                conn.send("go")
                c0 = time.process_time()
                try:
                    echo[msg[1]](msg[2])
                except Exception as exc:  # reported, not hung on
                    conn.send(f"error: {exc!r}")
                    continue
                conn.send(time.process_time() - c0)
    finally:
        provider.close()
        zprov.close()
        zraw.close(linger=0)
        up.close(fds=False)
        down.close(fds=False)


class _RttClients:
    """The parent's side of every round-trip variant: name -> one round trip."""

    def __init__(self, seq_sock: socket.socket, raw_sock: socket.socket, zours_ep: str, zraw_ep: str,
                 up: ShmRing, down: ShmRing):
        payload = os.urandom(RTT_PAYLOAD)
        self.payload = payload
        one = [payload]
        self.user = SeqpacketUser(ECHO, seq_sock.detach())
        seq_loop, seq_got = _FdLoop(), []
        self.user.start(seq_loop, lambda stream, frames: seq_got.append(frames), lambda *a: None)
        user_send = self.user.send_batch

        def seq_ours() -> bytes:
            user_send("up", one)
            while not seq_got:
                seq_loop.run_once(RTT_TIMEOUT_MS)
            return seq_got.pop()[0]

        self.raw = raw_sock
        _blocking_with_timeout(raw_sock)
        rsend, rrecv = raw_sock.send, raw_sock.recv

        def seq_raw() -> bytes:
            rsend(payload)
            return rrecv(2048)

        self.zuser = UserChannel(ECHO, zours_ep, b"rtt-user")
        z_loop, z_got = _Loop(), []
        self.zuser.start(z_loop, lambda stream, frames: z_got.append(frames), lambda *a: None)
        zsend = self.zuser.send_batch

        def zmq_ours() -> bytes:
            zsend("up", one)
            while not z_got:
                z_loop.run_once(RTT_TIMEOUT_MS)
            return z_got.pop()[0]

        self.zraw = context().socket(zmq.DEALER)
        configure_socket(self.zraw)
        self.zraw.setsockopt(zmq.RCVTIMEO, RTT_TIMEOUT_MS)
        self.zraw.connect(zraw_ep)
        zrsend, zrrecv = self.zraw.send, self.zraw.recv

        def zmq_raw() -> bytes:
            zrsend(payload)
            return zrrecv()

        self.up, self.down = up, down

        def shm() -> bytes:
            up.put(payload)
            while (m := down.peek()) is None:
                if not down.wait_data(RTT_TIMEOUT_MS):
                    raise TimeoutError("shm: no answer")
            out = bytes(m)
            down.release(ring_space=False)
            return out

        self.calls = {"seq_ours": seq_ours, "seq_raw": seq_raw, "zmq_ours": zmq_ours, "zmq_raw": zmq_raw, "shm": shm}

    def close(self) -> None:
        self.user.close()
        self.raw.close()
        self.zuser.close()
        self.zraw.close(linger=0)


def _time_round_trips(call, n: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return samples


def _echo_round(server: common.ServerProcess, clients: _RttClients, name: str, n: int) -> tuple[list[int], float]:
    """n round trips of one variant; (samples in ns, CPU µs per round trip on both sides)."""
    if server.request(("echo", name, n)) != "go":
        raise RuntimeError(f"rtt {name}: the echo peer did not start")
    c0 = time.process_time()
    try:
        samples = _time_round_trips(clients.calls[name], n)
    except (TimeoutError, OSError, zmq.ZMQError) as exc:
        raise RuntimeError(f"rtt {name}: {exc!r}") from None
    c1 = time.process_time()
    peer = server.receive(RTT_TIMEOUT_MS / 1000 + 5)
    if not isinstance(peer, float):
        raise RuntimeError(f"rtt {name}: the echo peer answered {peer!r}")
    return samples, ((c1 - c0) + peer) / n * 1e6


def bench_rtt(quick: bool) -> dict:
    rounds, calls, warmup = (3, 300, 100) if quick else (8, 2000, 300)
    with common.runtime_dir() as rundir:
        zours_ep, zraw_ep = common.endpoint(rundir, "rtt-ours"), common.endpoint(rundir, "rtt-raw")
        seq_user, seq_prov = make_pair()
        raw_a, raw_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        up, down = ShmRing.create(4, 4096), ShmRing.create(4, 4096)
        all_cpus = sorted(os.sched_getaffinity(0))
        one_cpu = [all_cpus[-1]]
        out: dict[str, Any] = {"payload_bytes": RTT_PAYLOAD, "aim": AIM_RTT_RATIO, "calls_per_round": calls,
                               "rounds": rounds}
        with common.ServerProcess(serve_rtt, seq_prov, raw_b, zours_ep, zraw_ep, up.spec(), down.spec()) as server:
            seq_prov.close()
            raw_b.close()
            clients = _RttClients(seq_user, raw_a, zours_ep, zraw_ep, up, down)
            try:
                for name, call in clients.calls.items():  # the echo must be the payload, or nothing is measured
                    server.request(("echo", name, 1))
                    got = call()
                    server.receive()
                    if bytes(got) != clients.payload:
                        raise AssertionError(f"rtt {name}: the echo differs from the payload")
                placements = [("free", all_cpus, all_cpus), ("one_cpu", one_cpu, one_cpu)]
                if len(all_cpus) > 1:  # every wake-up crosses CPUs
                    placements.append(("apart", all_cpus[:1], one_cpu))
                for placement, cpus, peer_cpus in placements:
                    mine, theirs = common.pin_process(cpus), server.request(("pin", peer_cpus))
                    samples: dict[str, list[int]] = {v: [] for v in RTT_VARIANTS}
                    medians: dict[str, list[float]] = {v: [] for v in RTT_VARIANTS}
                    cpu: dict[str, list[float]] = {v: [] for v in RTT_VARIANTS}
                    for name in RTT_VARIANTS:
                        _echo_round(server, clients, name, warmup)
                    for r in range(rounds):
                        k = r % len(RTT_VARIANTS)
                        for name in RTT_VARIANTS[k:] + RTT_VARIANTS[:k]:
                            s, c = _echo_round(server, clients, name, calls)
                            samples[name] += s
                            medians[name].append(median(s) / 1000.0)
                            cpu[name].append(c)
                    res: dict[str, Any] = {"cpus": {"bench": mine, "peer": theirs}}
                    for name in RTT_VARIANTS:
                        res[name] = {**common.latency_summary(samples[name]), "cpu_us_per_rt": round(median(cpu[name]), 1),
                                     "round_medians_us": [round(x, 1) for x in medians[name]]}

                    def in_round(a: str, b: str) -> dict:
                        rr = [ratio(x, y) for x, y in zip(medians[a], medians[b])]
                        return {"median": round(median(rr), 3), "range": [round(min(rr), 3), round(max(rr), 3)],
                                "p99": round(ratio(res[a]["p99_us"], res[b]["p99_us"]), 3)}

                    res["ratios"] = {"seq_ours/seq_raw": in_round("seq_ours", "seq_raw"),
                                     "zmq_ours/seq_ours": in_round("zmq_ours", "seq_ours"),
                                     "zmq_raw/seq_raw": in_round("zmq_raw", "seq_raw"),
                                     "zmq_ours/zmq_raw": in_round("zmq_ours", "zmq_raw"),
                                     "shm/seq_raw": in_round("shm", "seq_raw")}
                    res["meets_aim"] = res["ratios"]["seq_ours/seq_raw"]["median"] <= AIM_RTT_RATIO
                    out[placement] = res
                common.pin_process(all_cpus)
                out["peer_counters"] = server.stop()
            finally:
                clients.close()
                up.close()
                down.close()
    return out


# -- 2. frame-batch throughput ------------------------------------------------------------
def serve_frames(conn, ours_ep: str, blob_ep: str, multi_ep: str, seq_sock: socket.socket | None = None,
                 raw_sock: socket.socket | None = None, ring_spec: tuple | None = None) -> None:
    """Child process: receivers that touch every frame and ack every ACK_EVERY batches.

    Three over ZeroMQ; with the optional arguments, three more on one host: our
    seqpacket channel, a raw socketpair and the shared-memory ring.
    """
    provider = ProviderChannel(FRAMES, ours_ep, hwm=HWM)
    raw = {}
    for ep in (blob_ep, multi_ep):
        raw[ep] = context().socket(zmq.ROUTER)
        configure_socket(raw[ep], HWM)
        raw[ep].bind(ep)
    blob, multi = raw[blob_ep], raw[multi_ep]
    tally = {name: [0, 0, 0] for name in ALL_BATCH_VARIANTS}  # batches, frames, bytes
    ours_t, blob_t, multi_t = tally["ours"], tally["raw_blob"], tally["raw_multipart"]

    def on_batch(peer: bytes, stream: str, frames: list[bytes]) -> None:
        n = 0
        for f in frames:
            n += len(f)
        ours_t[0] += 1
        ours_t[1] += len(frames)
        ours_t[2] += n
        if ours_t[0] % ACK_EVERY == 0:
            provider.send_event(peer, "ack", batches=ours_t[0])

    def drain_blob(limit: int = 64) -> None:
        for _ in range(limit):
            try:
                peer, offsets, data = blob.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            offs = array("I")
            offs.frombytes(offsets)
            mv = memoryview(data)
            n = prev = 0
            for end in offs[1:]:
                n += len(mv[prev:end])  # a zero-copy view of each frame
                prev = end
            blob_t[0] += 1
            blob_t[1] += len(offs) - 1
            blob_t[2] += n
            if blob_t[0] % ACK_EVERY == 0:
                blob.send_multipart([peer, msgpack.packb(blob_t[0])])

    def drain_multi(limit: int = 64) -> None:
        for _ in range(limit):
            try:
                parts = multi.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            n = 0
            for f in parts[1:]:
                n += len(f)
            multi_t[0] += 1
            multi_t[1] += len(parts) - 1
            multi_t[2] += n
            if multi_t[0] % ACK_EVERY == 0:
                multi.send_multipart([parts[0], msgpack.packb(multi_t[0])])

    readers: dict[Any, Any] = {provider.socket: lambda: provider.receive(on_batch, lambda *a: None, limit=64),
                               blob: drain_blob, multi: drain_multi}
    seq_provider = ring = None
    if seq_sock is not None:
        seq_provider = SeqpacketProvider(FRAMES, {"tput": seq_sock.detach()})
        seq_t = tally["seq_ours"]

        def on_seq_batch(peer: bytes, stream: str, frames: list[bytes]) -> None:
            n = 0
            for f in frames:
                n += len(f)
            seq_t[0] += 1
            seq_t[1] += len(frames)
            seq_t[2] += n
            if seq_t[0] % ACK_EVERY == 0:
                seq_provider.send_event(peer, "ack", batches=seq_t[0])

        loop = _FdLoop()
        seq_provider.start(loop, on_seq_batch, lambda *a: None, limit=64)
        readers.update(loop.readers)
    if raw_sock is not None:
        raw_sock.setblocking(False)
        raw_t, buf = tally["seq_raw"], bytearray(SOCKPAIR_BUFFER)
        view = memoryview(buf)

        def drain_sockpair(limit: int = 64) -> None:
            for _ in range(limit):
                try:
                    got = raw_sock.recv_into(buf)
                except BlockingIOError:
                    return
                _consume_packed(view[:got], raw_t)
                if raw_t[0] % ACK_EVERY == 0:
                    raw_sock.send(_ACK.pack(raw_t[0]))

        readers[raw_sock.fileno()] = drain_sockpair
    if ring_spec is not None:
        ring = ShmRing(*ring_spec)
        shm_t = tally["shm"]

        def drain_ring() -> None:
            try:
                os.eventfd_read(ring.data_fd)  # reset the doorbell first: a later message rings again
            except BlockingIOError:
                pass
            while (m := ring.peek()) is not None:
                _consume_packed(m, shm_t)
                del m
                ring.release(ring_space=shm_t[0] % ACK_EVERY == 0)

        readers[ring.data_fd] = drain_ring

    def report() -> dict:
        return {"received": {k: dict(zip(("batches", "frames", "bytes"), v)) for k, v in tally.items()},
                "ours_counters": dict(provider.counters),
                "seq_ours_counters": dict(seq_provider.counters) if seq_provider else {}}

    try:
        common.serve_peer(conn, readers, report=report)
    finally:
        provider.close()
        blob.close(linger=0)
        multi.close(linger=0)
        if seq_provider is not None:
            seq_provider.close()
        if ring is not None:
            ring.close(fds=False)


_ACK = struct.Struct("<Q")


def _consume_packed(msg: memoryview, t: list) -> None:
    """The raw receivers on one host: header, offsets, a zero-copy view of each frame (no checks)."""
    count = SEQ_HEADER.unpack_from(msg)[6]
    end_offs = SEQ_HEADER.size + 4 * (count + 1)
    offs = array("I")
    offs.frombytes(msg[SEQ_HEADER.size:end_offs])
    blob = msg[end_offs:]
    n = prev = 0
    for end in offs[1:]:
        n += len(blob[prev:end])
        prev = end
    t[0] += 1
    t[1] += count
    t[2] += n


class OursSender(WindowedSender):
    name = "ours"

    def __init__(self, ep: str):
        super().__init__(ACK_EVERY, WINDOW)
        self.channel = UserChannel(FRAMES, ep, b"bench-sender", hwm=HWM)
        self.poller = zmq.Poller()
        self.poller.register(self.channel.socket, zmq.POLLIN)

    def send(self, frames: list[bytes]) -> bool:
        return self.channel.send_batch("rx", frames)

    def _on_event(self, name: str, value: Any) -> None:
        self.acked = max(self.acked, value.batches)

    def read_acks(self, timeout_ms: float) -> None:
        if self.poller.poll(timeout_ms):
            self.channel.receive(lambda *a: None, self._on_event)

    def close(self) -> None:
        self.channel.close()


class _RawSender(WindowedSender):
    def __init__(self, ep: str):
        super().__init__(ACK_EVERY, WINDOW)
        self.socket = context().socket(zmq.DEALER)
        configure_socket(self.socket, HWM)
        self.socket.connect(ep)

    def _send_parts(self, parts: list) -> bool:
        try:
            self.socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def read_acks(self, timeout_ms: float) -> None:
        if self.socket.poll(timeout_ms):
            while True:
                try:
                    (ack,) = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self.acked = max(self.acked, msgpack.unpackb(ack))

    def close(self) -> None:
        self.socket.close(linger=0)


class RawBlobSender(_RawSender):
    """One blob plus an offsets array per batch: ipc.batch's shape without the layer."""

    name = "raw_blob"

    def send(self, frames: list[bytes]) -> bool:
        offsets = array("I", itertools.accumulate(map(len, frames), initial=0))
        return self._send_parts([offsets, b"".join(frames)])


class RawMultipartSender(_RawSender):
    """One ZeroMQ part per frame."""

    name = "raw_multipart"

    def send(self, frames: list[bytes]) -> bool:
        return self._send_parts(frames)


class SeqOursSender(WindowedSender):
    """Our seqpacket channel: SeqpacketUser.send_batch; acks are the protocol's typed event."""

    name = "seq_ours"

    def __init__(self, sock: socket.socket):
        super().__init__(ACK_EVERY, WINDOW)
        self.user = SeqpacketUser(FRAMES, sock.detach())
        self.poll = select.poll()
        self.poll.register(self.user.fileno(), select.POLLIN)

    def send(self, frames: list[bytes]) -> bool:
        return self.user.send_batch("rx", frames)

    def _on_event(self, name: str, value: Any) -> None:
        self.acked = max(self.acked, value.batches)

    def read_acks(self, timeout_ms: float) -> None:
        if self.poll.poll(timeout_ms):
            self.user.receive(lambda *a: None, self._on_event)

    def close(self) -> None:
        self.user.close()


class RawSockpairSender(WindowedSender):
    """The anchor: the same packed bytes (header, offsets, frames) by sendmsg on a plain socketpair."""

    name = "seq_raw"

    def __init__(self, sock: socket.socket):
        super().__init__(ACK_EVERY, WINDOW)
        self.sock = sock
        sock.setblocking(False)
        self.poll = select.poll()
        self.poll.register(sock.fileno(), select.POLLIN)
        self.seq = 0

    def send(self, frames: list[bytes]) -> bool:
        self.seq += 1
        offs = array("I", itertools.accumulate(map(len, frames), initial=0))
        try:
            self.sock.sendmsg([SEQ_HEADER.pack(SEQ_MAGIC, SEQ_VERSION, SEQ_KIND_BATCH, 0, 0, self.seq, len(frames)),
                               offs, *frames])
        except BlockingIOError:
            return False
        return True

    def read_acks(self, timeout_ms: float) -> None:
        if self.poll.poll(timeout_ms):
            while True:
                try:
                    ack = self.sock.recv(64)
                except BlockingIOError:
                    return
                self.acked = max(self.acked, _ACK.unpack(ack)[0])

    def close(self) -> None:
        self.sock.close()


class ShmSender(WindowedSender):
    """The shared-memory ring: the same packed bytes joined and copied into a slot, one doorbell per batch.

    The ring has WINDOW slots, so the window and the ring's capacity are the same bound.
    """

    name = "shm"

    def __init__(self, ring: ShmRing):
        super().__init__(ACK_EVERY, WINDOW)
        self.ring = ring
        self.seq = 0

    def send(self, frames: list[bytes]) -> bool:
        self.seq += 1
        offs = array("I", itertools.accumulate(map(len, frames), initial=0))
        # One join and one copy into the slot: faster here than copying part by part (a Python loop).
        return self.ring.put(b"".join([SEQ_HEADER.pack(SEQ_MAGIC, SEQ_VERSION, SEQ_KIND_BATCH, 0, 0, self.seq,
                                                       len(frames)), offs, *frames]))

    def read_acks(self, timeout_ms: float) -> None:
        self.ring.wait_space(timeout_ms)
        self.acked = self.ring.consumed()

    def close(self) -> None:
        self.ring.close()


def _in_round_ratio(per_round: dict, size: int, a: str, b: str) -> tuple[float, list[float]]:
    rr = [ratio(x[0], y[0]) for x, y in zip(per_round[(size, a)], per_round[(size, b)])]
    return round(median(rr), 3), [round(min(rr), 3), round(max(rr), 3)]


def bench_batches(rundir: str, quick: bool) -> dict:
    rounds, duration = (3, 0.25) if quick else (11, 0.3)
    eps = [common.endpoint(rundir, f"frames-{name}") for name in BATCH_VARIANTS]
    sent = {name: [0, 0] for name in ALL_BATCH_VARIANTS}  # frames, bytes
    per_round: dict[tuple[int, str], list[tuple[float, float, float]]] = {}  # (frames/s, tx ns/frame, rx ns/frame)
    seq_user, seq_prov = make_pair(SOCKPAIR_BUFFER)
    raw_a, raw_b = make_pair(SOCKPAIR_BUFFER)
    ring = ShmRing.create(WINDOW, RING_SLOT)
    with common.ServerProcess(serve_frames, *eps, seq_prov, raw_b, ring.spec()) as server:
        seq_prov.close()
        raw_b.close()
        senders: list[WindowedSender] = [OursSender(eps[0]), RawBlobSender(eps[1]), RawMultipartSender(eps[2]),
                                         SeqOursSender(seq_user), RawSockpairSender(raw_a), ShmSender(ring)]
        k = len(senders)
        try:
            for size in FRAME_SIZES:
                frames = [os.urandom(size) for _ in range(BATCH_FRAMES)]
                for r in range(-1, rounds):  # round -1 warms up: connections made, buffers allocated
                    for s in senders[r % k:] + senders[:r % k]:
                        c0, s0 = time.process_time(), server.request("cpu")
                        n, secs = s.run_round(frames, 0.05 if r < 0 else duration)
                        c1, s1 = time.process_time(), server.request("cpu")
                        sent[s.name][0] += n * BATCH_FRAMES
                        sent[s.name][1] += n * BATCH_FRAMES * size
                        nf = n * BATCH_FRAMES
                        if r >= 0:
                            per_round.setdefault((size, s.name), []).append(
                                (nf / secs, (c1 - c0) / nf * 1e9, (s1 - s0) / nf * 1e9))
            refused = {s.name: s.refused for s in senders}
            report = server.stop()
        finally:
            for s in senders:
                s.close()
    out: dict[str, Any] = {"aim": AIM_BATCH_RATIO, "batch_frames": BATCH_FRAMES,
                           "flow_control": {"ack_every": ACK_EVERY, "window": WINDOW, "hwm": HWM,
                                            "socketpair_buffer": SOCKPAIR_BUFFER, "ring_slots": WINDOW}}
    out["drops"] = {}
    for name in ALL_BATCH_VARIANTS:
        got = report["received"][name]
        if [got["frames"], got["bytes"]] != sent[name]:
            log(f"warning: {name}: sent {sent[name][0]} frames / {sent[name][1]} B, "
                f"received {got['frames']} / {got['bytes']} B")
        out["drops"][name] = {"sends_refused": refused[name], "frames_lost": sent[name][0] - got["frames"]}
    out["drops"]["ours_channel"] = {k: report["ours_counters"][k] for k in ("rx_bad",)}
    out["drops"]["seq_ours_channel"] = {k: report["seq_ours_counters"].get(k, 0)
                                        for k in ("rx_bad", "tx_split")}
    for size in FRAME_SIZES:
        row: dict[str, Any] = {}
        for name in ALL_BATCH_VARIANTS:
            rs = per_round[(size, name)]
            fps = median([x[0] for x in rs])
            tx, rx = median([x[1] for x in rs]), median([x[2] for x in rs])
            row[name] = {"frames_per_s": round(fps), "gbit_per_s": round(fps * size * 8 / 1e9, 3),
                         "cpu_ns_per_frame": {"sender": round(tx, 1), "receiver": round(rx, 1)},
                         # What one core per side could carry: the busier side sets the pace.
                         "cpu_bound_frames_per_s": round(1e9 / max(tx, rx)),
                         "round_frames_per_s": [round(x[0]) for x in rs]}
        row["ratio_ours_to_raw_blob"], row["ratio_rounds_range"] = _in_round_ratio(per_round, size, "ours", "raw_blob")
        row["ratio_cpu_bound"] = round(ratio(row["ours"]["cpu_bound_frames_per_s"],
                                             row["raw_blob"]["cpu_bound_frames_per_s"]), 3)
        row["ratio_raw_blob_to_multipart"] = round(
            ratio(row["raw_blob"]["frames_per_s"], row["raw_multipart"]["frames_per_s"]), 3)
        row["meets_aim"] = row["ratio_ours_to_raw_blob"] >= AIM_BATCH_RATIO
        row["meets_aim_cpu_bound"] = row["ratio_cpu_bound"] >= AIM_BATCH_RATIO
        # One host: our seqpacket channel against the raw socketpair (its anchor), ZeroMQ and the ring.
        same: dict[str, Any] = {}
        for key, (a, b) in {"seq_ours/seq_raw": ("seq_ours", "seq_raw"), "seq_ours/zmq_ours": ("seq_ours", "ours"),
                            "seq_raw/zmq_raw_blob": ("seq_raw", "raw_blob"), "shm/seq_raw": ("shm", "seq_raw"),
                            "shm/seq_ours": ("shm", "seq_ours")}.items():
            med, rng = _in_round_ratio(per_round, size, a, b)
            same[key] = {"median": med, "range": rng,
                         "cpu_bound": round(ratio(row[a]["cpu_bound_frames_per_s"], row[b]["cpu_bound_frames_per_s"]), 3)}
        same["meets_aim"] = same["seq_ours/seq_raw"]["median"] >= AIM_BATCH_RATIO
        same["meets_aim_cpu_bound"] = same["seq_ours/seq_raw"]["cpu_bound"] >= AIM_BATCH_RATIO
        row["same_host"] = same
        out[str(size)] = row
    return out


# -- 3. codec --------------------------------------------------------------------------------
_NAME_RE = re.compile(NAME.pattern)


class RouteArgs:
    """What the hand-written validator returns: the checked fields, addr as an IPv4Address."""

    __slots__ = tuple(ROUTE_ARGS)

    def __init__(self, port, addr, prefix_len, metric, up, note):
        self.port, self.addr, self.prefix_len = port, addr, prefix_len
        self.metric, self.up, self.note = metric, up, note


def validate_route(d: Any) -> RouteArgs:
    """The checks the declaration implies, written by hand; raises ValueError."""
    if type(d) is not dict or d.keys() != ROUTE_ARGS.keys():
        raise ValueError("expected a map of exactly the route fields")
    port, addr, prefix_len, metric, up, note = (d[k] for k in RouteArgs.__slots__)
    if type(port) is not str or not 1 <= len(port) <= 64 or _NAME_RE.search(port) is None:
        raise ValueError("port: expected a name")
    if type(addr) is not str or len(addr) > 64:
        raise ValueError("addr: expected an IPv4 address string")
    addr = ipaddress.IPv4Address(addr)  # AddressValueError is a ValueError
    if type(prefix_len) is not int or not 0 <= prefix_len <= 32:
        raise ValueError("prefix_len: expected an int in 0..32")
    if type(metric) is not int or not 0 <= metric <= 0xFFFFFFFF:
        raise ValueError("metric: expected an int in 0..2^32-1")
    if type(up) is not bool:
        raise ValueError("up: expected a bool")
    if type(note) is not str or len(note) > 64:
        raise ValueError("note: expected a string of at most 64 characters")
    return RouteArgs(port, addr, prefix_len, metric, up, note)


_BAD_ROUTES = [
    {"prefix_len": 33}, {"prefix_len": -1}, {"prefix_len": True}, {"metric": 1 << 32}, {"metric": -1},
    {"metric": 1.5}, {"up": 1}, {"addr": "300.1.1.1"}, {"addr": "10.0.0.0/24"}, {"addr": 167772161},
    {"port": ""}, {"port": "bad name"}, {"port": "x" * 65}, {"note": "x" * 65}, {"note": b"bytes"},
    {"extra": 1},
]


def check_validators_agree() -> None:
    """Both validators accept the good route and refuse every bad one, or the race is unfair."""
    good = encode(ROUTE_ARGS)
    a, b = validate_route(msgpack.unpackb(good)), SET_ROUTE.decode_args(good)
    if any(getattr(a, k) != getattr(b, k) for k in ROUTE_ARGS):
        raise AssertionError("the validators decode the good route differently")
    cases = [{**ROUTE_ARGS, **patch} for patch in _BAD_ROUTES]
    cases.append({k: v for k, v in ROUTE_ARGS.items() if k != "note"})
    for case in cases:
        body = msgpack.packb(case, default=_msgpack_default)
        for name, check in (("hand", lambda: validate_route(msgpack.unpackb(body))),
                            ("msgspec", lambda: SET_ROUTE.decode_args(body))):
            try:
                check()
            except Exception:
                continue
            raise AssertionError(f"the {name} validator accepted a bad route: {case}")


def bench_codec(quick: bool) -> dict:
    import msgspec
    check_validators_agree()
    number, repeat = (5000, 5) if quick else (20000, 9)
    body = encode(ROUTE_ARGS)
    untyped = msgspec.msgpack.Decoder()
    ops = {
        "msgpack_pack": lambda: msgpack.packb(ROUTE_ARGS, default=_msgpack_default),
        "msgpack_unpack": lambda: msgpack.unpackb(body),
        "msgpack_unpack_validate": lambda: validate_route(msgpack.unpackb(body)),
        "msgspec_encode": lambda: encode(ROUTE_ARGS),
        "msgspec_decode_untyped": lambda: untyped.decode(body),
        "msgspec_decode_typed": lambda: SET_ROUTE.decode_args(body),
    }
    runs: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(repeat):  # interleaved: one run of each per pass
        for name, op in ops.items():
            runs[name] += common.time_per_op(op, number, 1)
    med = {k: round(median(v), 3) for k, v in runs.items()}
    a = med["msgpack_pack"] + med["msgpack_unpack_validate"]
    b = med["msgspec_encode"] + med["msgspec_decode_typed"]
    return {"us_per_op": med, "msgpack_hand_total_us": round(a, 3), "msgspec_typed_total_us": round(b, 3),
            "ratio_msgpack_hand_to_msgspec": round(ratio(a, b), 3), "number": number, "repeat": repeat}


# -- the whole run ---------------------------------------------------------------------------
def run(quick: bool = False) -> dict:
    """Every figure of this benchmark, measured in one run."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"benchmark": "ipc", "quick": quick, "machine": common.machine_info()}
    with common.runtime_dir() as rundir:
        log("ipc: codec ...")
        out["codec"] = bench_codec(quick)
        log("ipc: rpc round trip ...")
        out["rpc"] = bench_rpc(rundir, quick)
        log("ipc: same-host round trip (free and on one cpu) ...")
        out["rtt"] = bench_rtt(quick)
        log("ipc: frame batches ...")
        out["batch"] = bench_batches(rundir, quick)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def render(res: dict) -> str:
    m, rpc, b, c = res["machine"], res["rpc"], res["batch"], res["codec"]
    lines = [f"ipc benchmark{' (quick)' if res['quick'] else ''}: {m['cpus']} cpus, load {m['loadavg_1m']}, "
             f"python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), msgspec {m['msgspec']}, msgpack {m.get('msgpack', '?')}", ""]
    t = Table("rpc round trip, 6 typed fields", "median us", "p99 us", "cpu us/call")
    t.add("ours: RpcClient -> RpcServer", rpc["typed"]["median_us"], rpc["typed"]["p99_us"],
          rpc["typed"]["cpu_us_per_call"])
    t.add("raw: DEALER -> ROUTER, msgpack", rpc["raw"]["median_us"], rpc["raw"]["p99_us"],
          rpc["raw"]["cpu_us_per_call"])
    t.add("ratio ours/raw", fmt_ratio(rpc["ratio_median"]), fmt_ratio(rpc["ratio_p99"]), fmt_ratio(rpc["ratio_cpu"]))
    lo, hi = rpc["ratio_rounds_range"]
    lines += [t.render(), f"aim: median ratio <= {fmt_ratio(rpc['aim'])}: {_verdict(rpc['meets_aim'])} "
              f"(rounds {fmt_ratio(lo)}..{fmt_ratio(hi)}, {rpc['typed']['n']} calls each)", ""]
    lines += _render_rtt(res["rtt"])
    t = Table(f"frame batches of {b['batch_frames']}", "frames/s", "Gbit/s", "vs blob", "vs sockpair",
              "cpu ns/frame tx/rx", "cpu-bound frames/s")
    for size in FRAME_SIZES:
        row = b[str(size)]
        for name, label in BATCH_LABELS:
            fig, cpu = row[name], row[name]["cpu_ns_per_frame"]
            t.add(f"{size:>4} B  {label}", f"{fig['frames_per_s']:,}", f"{fig['gbit_per_s']:.2f}",
                  fmt_ratio(ratio(fig["frames_per_s"], row["raw_blob"]["frames_per_s"])),
                  fmt_ratio(ratio(fig["frames_per_s"], row["seq_raw"]["frames_per_s"])),
                  f"{cpu['sender']:.0f} / {cpu['receiver']:.0f}", f"{fig['cpu_bound_frames_per_s']:,}")
    lines.append(t.render())
    for size in FRAME_SIZES:
        row = b[str(size)]
        lo, hi = row["ratio_rounds_range"]
        lines.append(f"{size:>4} B: ours/raw blob {fmt_ratio(row['ratio_ours_to_raw_blob'])} "
                     f"(rounds {fmt_ratio(lo)}..{fmt_ratio(hi)}), cpu-bound {fmt_ratio(row['ratio_cpu_bound'])}; "
                     f"aim >= {b['aim']:.0%}: {_verdict(row['meets_aim'])} (wall), "
                     f"{_verdict(row['meets_aim_cpu_bound'])} (cpu); "
                     f"blob/multipart {fmt_ratio(row['ratio_raw_blob_to_multipart'])}")
    for size in FRAME_SIZES:
        sh = b[str(size)]["same_host"]
        so, sz, ss = sh["seq_ours/seq_raw"], sh["seq_ours/zmq_ours"], sh["shm/seq_raw"]
        lines.append(f"{size:>4} B: seqpacket ours/raw socketpair {fmt_ratio(so['median'])} "
                     f"(rounds {fmt_ratio(so['range'][0])}..{fmt_ratio(so['range'][1])}), cpu-bound "
                     f"{fmt_ratio(so['cpu_bound'])}; aim >= {b['aim']:.0%}: {_verdict(sh['meets_aim'])} (wall), "
                     f"{_verdict(sh['meets_aim_cpu_bound'])} (cpu); seqpacket ours/zmq ours {fmt_ratio(sz['median'])}; "
                     f"shm ring/raw socketpair {fmt_ratio(ss['median'])} (cpu-bound {fmt_ratio(ss['cpu_bound'])})")
    drops = ", ".join(f"{k} {v['sends_refused']} refused / {v['frames_lost']} lost"
                      for k, v in b["drops"].items() if k in ALL_BATCH_VARIANTS)
    fc = b["flow_control"]
    lines += [f"drops (window {fc['window']}, ack every {fc['ack_every']}, hwm {fc['hwm']}, socketpair buffers "
              f"{fc['socketpair_buffer'] >> 20} MiB, ring {fc['ring_slots']} slots): {drops}; seqpacket ours "
              f"rx_bad {b['drops']['seq_ours_channel']['rx_bad']}, tx_split {b['drops']['seq_ours_channel']['tx_split']}", ""]
    t = Table("codec, in-process, 6-field route", "us/op")
    for k, label in (("msgpack_pack", "msgpack pack"), ("msgpack_unpack", "msgpack unpack (no checks)"),
                     ("msgpack_unpack_validate", "msgpack unpack + hand validation"),
                     ("msgspec_encode", "msgspec encode"), ("msgspec_decode_untyped", "msgspec decode (no checks)"),
                     ("msgspec_decode_typed", "msgspec typed decode (Struct, bounds, ipaddress)")):
        t.add(label, f"{c['us_per_op'][k]:.2f}")
    t.add("(a) msgpack + hand validation, both ways", f"{c['msgpack_hand_total_us']:.2f}")
    t.add("(b) msgspec typed, both ways", f"{c['msgspec_typed_total_us']:.2f}")
    t.add("ratio (a)/(b)", fmt_ratio(c["ratio_msgpack_hand_to_msgspec"]))
    lines += [t.render(), "", f"took {res['seconds']} s"]
    return "\n".join(lines)


BATCH_LABELS = (("ours", "zmq ours: send_batch -> receive"), ("raw_blob", "zmq raw: blob + offsets"),
                ("raw_multipart", "zmq raw: one part per frame"),
                ("seq_ours", "seqpacket ours: SeqpacketUser -> Provider"),
                ("seq_raw", "raw socketpair: sendmsg -> recv_into"),
                ("shm", "shm ring + eventfd (bench-only)"))


def _render_rtt(r: dict) -> list[str]:
    lines = []
    for placement, title in (("free", "both free on cpus"), ("one_cpu", "both pinned to cpu"),
                             ("apart", "pinned apart, bench/peer on cpus")):
        if placement not in r:
            continue
        p = r[placement]
        cpus = p["cpus"]["bench"] if placement != "apart" else [p["cpus"]["bench"], p["cpus"]["peer"]]
        t = Table(f"round trip, {r['payload_bytes']} B frame, {title} {cpus}", "median us", "p99 us",
                  "vs sockpair", "cpu us/rt")
        for name in RTT_VARIANTS:
            f = p[name]
            t.add(RTT_LABELS[name], f["median_us"], f["p99_us"], fmt_ratio(ratio(f["median_us"], p["seq_raw"]["median_us"])),
                  f["cpu_us_per_rt"])
        q = p["ratios"]
        so = q["seq_ours/seq_raw"]
        lines += [t.render(),
                  f"seqpacket ours/raw socketpair {fmt_ratio(so['median'])} (rounds {fmt_ratio(so['range'][0])}.."
                  f"{fmt_ratio(so['range'][1])}); aim <= {fmt_ratio(r['aim'])}: {_verdict(p['meets_aim'])}; "
                  f"zmq ours/seqpacket ours {fmt_ratio(q['zmq_ours/seq_ours']['median'])}; "
                  f"zmq raw/raw socketpair {fmt_ratio(q['zmq_raw/seq_raw']['median'])}; "
                  f"shm/raw socketpair {fmt_ratio(q['shm/seq_raw']['median'])} "
                  f"({r['rounds']} rounds of {r['calls_per_round']})", ""]
    return lines


def profile(rundir: str) -> str:
    """cProfile tables of the typed paths: RPC client and server, batch sender and receiver."""
    out = []
    with common.ServerProcess(serve_rpc, common.endpoint(rundir, "p-typed"), common.endpoint(rundir, "p-raw")) as srv:
        client = RpcClient(common.endpoint(rundir, "p-typed"), ROUTE, retries=0)
        try:
            _time_calls(client.call, 200)
            prof = cProfile.Profile()
            srv.request("profile")
            prof.runcall(_time_calls, client.call, 3000)
            out += ["== typed rpc server, 3000 calls", srv.request("profile_stop")]
            out += ["== typed rpc client, 3000 calls", common.profile_text(prof)]
        finally:
            client.close()
    eps = [common.endpoint(rundir, f"p-{name}") for name in BATCH_VARIANTS]
    with common.ServerProcess(serve_frames, *eps) as srv:
        sender = OursSender(eps[0])
        try:
            for size in FRAME_SIZES:
                frames = [os.urandom(size) for _ in range(BATCH_FRAMES)]
                sender.run_round(frames, 0.1)
                prof = cProfile.Profile()
                srv.request("profile")
                prof.runcall(sender.run_round, frames, 1.0)
                out += [f"== batch receiver, {size} B frames, 1 s", srv.request("profile_stop")]
                out += [f"== batch sender, {size} B frames, 1 s", common.profile_text(prof)]
        finally:
            sender.close()
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser("IPC benchmark: typed RPC, frame batches and codec beside raw pyzmq and msgpack.",
                          prog="python -m bench.ipc")
    p.add_argument("--profile", action="store_true", help="print cProfile tables of the typed paths instead")
    args = p.parse_args(argv)
    if args.profile:
        with common.runtime_dir() as rundir:
            print(profile(rundir))
        return 0
    res = run(args.quick)
    print(render(res))
    if args.json:
        common.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
