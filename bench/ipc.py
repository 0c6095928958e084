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
import sys
import time
from array import array
from typing import Any

import msgpack
import zmq

from ipc.channel import ProviderChannel, UserChannel
from ipc.decl import Event, Method, Protocol, Stream, Version, encode
from ipc.rpc import RpcClient, RpcServer, configure_socket, context
from ipc.types import BOOL, IPV4, NAME, U32, U64, Field, Int, Str

from . import common
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
BATCH_VARIANTS = ("ours", "raw_blob", "raw_multipart")


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


# -- 2. frame-batch throughput ------------------------------------------------------------
def serve_frames(conn, ours_ep: str, blob_ep: str, multi_ep: str) -> None:
    """Child process: three receivers that touch every frame and ack every ACK_EVERY batches."""
    provider = ProviderChannel(FRAMES, ours_ep, hwm=HWM)
    raw = {}
    for ep in (blob_ep, multi_ep):
        raw[ep] = context().socket(zmq.ROUTER)
        configure_socket(raw[ep], HWM)
        raw[ep].bind(ep)
    blob, multi = raw[blob_ep], raw[multi_ep]
    tally = {name: [0, 0, 0] for name in BATCH_VARIANTS}  # batches, frames, bytes
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

    def report() -> dict:
        return {"received": {k: dict(zip(("batches", "frames", "bytes"), v)) for k, v in tally.items()},
                "ours_counters": dict(provider.counters)}

    try:
        common.serve_peer(conn, {provider.socket: lambda: provider.receive(on_batch, lambda *a: None, limit=64),
                                 blob: drain_blob, multi: drain_multi}, report=report)
    finally:
        provider.close()
        blob.close(linger=0)
        multi.close(linger=0)


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


def bench_batches(rundir: str, quick: bool) -> dict:
    rounds, duration = (3, 0.25) if quick else (11, 0.3)
    eps = [common.endpoint(rundir, f"frames-{name}") for name in BATCH_VARIANTS]
    sent = {name: [0, 0] for name in BATCH_VARIANTS}  # frames, bytes
    per_round: dict[tuple[int, str], list[tuple[float, float, float]]] = {}  # (frames/s, tx ns/frame, rx ns/frame)
    with common.ServerProcess(serve_frames, *eps) as server:
        senders: list[WindowedSender] = [OursSender(eps[0]), RawBlobSender(eps[1]), RawMultipartSender(eps[2])]
        try:
            for size in FRAME_SIZES:
                frames = [os.urandom(size) for _ in range(BATCH_FRAMES)]
                for r in range(-1, rounds):  # round -1 warms up: connections made, buffers allocated
                    for s in senders[r % 3:] + senders[:r % 3]:
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
                           "flow_control": {"ack_every": ACK_EVERY, "window": WINDOW, "hwm": HWM}}
    out["drops"] = {}
    for name in BATCH_VARIANTS:
        got = report["received"][name]
        if [got["frames"], got["bytes"]] != sent[name]:
            log(f"warning: {name}: sent {sent[name][0]} frames / {sent[name][1]} B, "
                f"received {got['frames']} / {got['bytes']} B")
        out["drops"][name] = {"sends_refused": refused[name], "frames_lost": sent[name][0] - got["frames"]}
    out["drops"]["ours_channel"] = {k: report["ours_counters"][k] for k in ("rx_bad",)}
    for size in FRAME_SIZES:
        row: dict[str, Any] = {}
        for name in BATCH_VARIANTS:
            rs = per_round[(size, name)]
            fps = median([x[0] for x in rs])
            tx, rx = median([x[1] for x in rs]), median([x[2] for x in rs])
            row[name] = {"frames_per_s": round(fps), "gbit_per_s": round(fps * size * 8 / 1e9, 3),
                         "cpu_ns_per_frame": {"sender": round(tx, 1), "receiver": round(rx, 1)},
                         # What one core per side could carry: the busier side sets the pace.
                         "cpu_bound_frames_per_s": round(1e9 / max(tx, rx)),
                         "round_frames_per_s": [round(x[0]) for x in rs]}
        rr = [ratio(o[0], b[0]) for o, b in zip(per_round[(size, "ours")], per_round[(size, "raw_blob")])]
        row["ratio_ours_to_raw_blob"] = round(median(rr), 3)
        row["ratio_rounds_range"] = [round(min(rr), 3), round(max(rr), 3)]
        row["ratio_cpu_bound"] = round(ratio(row["ours"]["cpu_bound_frames_per_s"],
                                             row["raw_blob"]["cpu_bound_frames_per_s"]), 3)
        row["ratio_raw_blob_to_multipart"] = round(
            ratio(row["raw_blob"]["frames_per_s"], row["raw_multipart"]["frames_per_s"]), 3)
        row["meets_aim"] = row["ratio_ours_to_raw_blob"] >= AIM_BATCH_RATIO
        row["meets_aim_cpu_bound"] = row["ratio_cpu_bound"] >= AIM_BATCH_RATIO
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
    t = Table(f"frame batches of {b['batch_frames']}", "frames/s", "Gbit/s", "vs blob", "cpu ns/frame tx/rx",
              "cpu-bound frames/s")
    for size in FRAME_SIZES:
        row = b[str(size)]
        for name, label in (("ours", "ours: send_batch -> receive"), ("raw_blob", "raw: blob + offsets"),
                            ("raw_multipart", "raw: one part per frame")):
            fig, cpu = row[name], row[name]["cpu_ns_per_frame"]
            t.add(f"{size:>4} B  {label}", f"{fig['frames_per_s']:,}", f"{fig['gbit_per_s']:.2f}",
                  fmt_ratio(ratio(fig["frames_per_s"], row["raw_blob"]["frames_per_s"])),
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
    drops = ", ".join(f"{k} {v['sends_refused']} refused / {v['frames_lost']} lost"
                      for k, v in b["drops"].items() if k in BATCH_VARIANTS)
    fc = b["flow_control"]
    lines += [f"drops (window {fc['window']}, ack every {fc['ack_every']}, hwm {fc['hwm']}): {drops}", ""]
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
