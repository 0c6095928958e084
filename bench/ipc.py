"""The IPC benchmark: qnet's typed layer beside raw pyzmq, measured in the same run.

Three measurements, each printed beside its anchor with the ratio:

1. RPC round trip: ``RpcClient`` -> ``RpcServer`` calling a method with six
   typed fields, against a raw DEALER -> ROUTER loop carrying the same payload
   bytes (plain ``msgpack``, no validation) with the same poll-based structure.
2. Frame-batch throughput, one direction: ``UserChannel.send_batch`` ->
   ``ProviderChannel.receive`` against raw pyzmq sending one packed blob with an
   offsets array per batch, and one ZeroMQ part per frame. Flow control keeps
   the sender a bounded window ahead of the receiver's acks, so the figures are
   drop-free (drops are counted and reported anyway).
3. Codec, in-process: the ``msgpack`` package with hand-written validation
   against msgspec's typed decode as ``ipc/`` uses it.

The peer runs in a separate process; endpoints are ipc:// in a private temp
directory. Usage: ``python -m bench.ipc [--quick] [--json FILE]``; scripts call
``run(quick)``.
"""
from __future__ import annotations

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
from .common import Table, fmt_ratio, log, ratio

# -- what is exchanged --------------------------------------------------------------
ROUTE = Protocol(
    "bench.route", Version(1, 0),
    doc="A route update with six typed fields, the shape of a typical control call.",
    methods=(Method("set_route", args=(
        Field("port", NAME),
        Field("addr", IPV4),
        Field("prefix_len", Int(0, 32)),
        Field("metric", U32),
        Field("up", BOOL),
        Field("note", Str(max_len=64)),
    ), result=BOOL),),
)
SET_ROUTE = ROUTE.method_by_name["set_route"]
ROUTE_ARGS = {"port": "up0", "addr": ipaddress.IPv4Address("192.0.2.17"), "prefix_len": 24,
              "metric": 100, "up": True, "note": "learned from dhcp"}

FRAMES = Protocol(
    "bench.frames", Version(1, 0),
    events=(Event("ack", fields=(Field("batches", U64), Field("frames", U64), Field("bytes", U64))),),
    streams=(Stream("rx", "to_provider", max_batch=1024),),
)

AIM_RPC_RATIO = 1.5       # typed round trip within 1.5x of raw
AIM_BATCH_RATIO = 0.70    # typed batches at >= 70% of raw blob throughput
BATCH_FRAMES = 256
FRAME_SIZES = (64, 1500)
HWM = 256                 # the channel's default data HWM, used by every variant
ACK_EVERY = 8             # the receiver acks every N batches ...
WINDOW = 32               # ... and the sender stays at most N batches ahead (< HWM: no drops)
STALL_TIMEOUT = 5.0       # no ack for this long: the measurement is broken, stop it


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, ipaddress.IPv4Address):
        return str(obj)
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _raw_set_route(port, addr, prefix_len, metric, up, note):
    return True


class _RouteTable:
    def __init__(self) -> None:
        self.calls = 0

    def set_route(self, port, addr, prefix_len, metric, up, note):
        self.calls += 1
        return True


# -- 1. RPC round trip ----------------------------------------------------------------
def _raw_rpc_process(sock: zmq.Socket, limit: int = 256) -> int:
    """The raw server: the same drain-until-empty structure as RpcServer.process()."""
    handled = 0
    while handled < limit:
        try:
            peer, header, body = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        handled += 1
        h = msgpack.unpackb(header)
        result = _raw_set_route(**msgpack.unpackb(body))
        sock.send_multipart([peer, msgpack.packb([2, h[1]]), msgpack.packb(result)], zmq.NOBLOCK)
    return handled


def serve_rpc(conn, typed_ep: str, raw_ep: str) -> None:
    """Child process: the typed RpcServer and the raw ROUTER, on one poller."""
    impl = _RouteTable()
    server = RpcServer(typed_ep, {ROUTE: impl})
    raw = context().socket(zmq.ROUTER)
    configure_socket(raw)
    raw.setsockopt(zmq.ROUTER_MANDATORY, 0)
    raw.bind(raw_ep)
    poller = zmq.Poller()
    poller.register(server.socket, zmq.POLLIN)
    poller.register(raw, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    raw_calls = 0
    conn.send("ready")
    try:
        while True:
            for key, _ev in poller.poll():
                if key is server.socket:
                    server.process()
                elif key is raw:
                    raw_calls += _raw_rpc_process(raw)
                else:
                    try:
                        msg = conn.recv()
                    except EOFError:
                        return
                    if msg == "stop":
                        conn.send({"typed_calls": impl.calls, "raw_calls": raw_calls,
                                   "typed_counters": dict(server.counters)})
                        return
                    if msg == "profile":
                        conn.send(_profile_server_rpc(server, poller, conn))
    finally:
        server.close()
        raw.close(linger=0)


def _profile_server_rpc(server: RpcServer, poller: zmq.Poller, conn) -> str:
    """Serve typed calls under cProfile until the parent says 'done'; the top entries."""
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    try:
        while True:
            ready = dict(poller.poll())
            if server.socket in ready:
                server.process()
            if conn.fileno() in ready:
                conn.recv()
                break
    finally:
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


class RawRpcClient:
    """A raw DEALER client with RpcClient's loop: send, poll with a deadline, match req_id."""

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
            h = msgpack.unpackb(parts[0])
            if h[1] != req_id:
                continue
            return msgpack.unpackb(parts[1])

    def close(self) -> None:
        self.socket.close(linger=0)


def _check_same_payload() -> None:
    """The two clients must put the same bytes on the wire, or the comparison is void."""
    typed = encode(ROUTE_ARGS)
    raw = msgpack.packb(ROUTE_ARGS, default=_msgpack_default)
    if typed != raw:
        raise AssertionError(f"payloads differ: typed {typed!r} raw {raw!r}")


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
    rounds, calls, warmup = (3, 600, 200) if quick else (7, 2500, 500)
    _check_same_payload()
    typed_ep, raw_ep = common.endpoint(rundir, "rpc-typed"), common.endpoint(rundir, "rpc-raw")
    samples: dict[str, list[int]] = {"typed": [], "raw": []}
    round_medians: dict[str, list[float]] = {"typed": [], "raw": []}
    with common.ServerProcess(serve_rpc, typed_ep, raw_ep) as server:
        typed = RpcClient(typed_ep, ROUTE, timeout=5.0, retries=0)
        raw = RawRpcClient(raw_ep)
        try:
            clients = {"typed": typed.call, "raw": raw.call}
            for name, call in clients.items():
                _time_calls(call, warmup)
            for r in range(rounds):
                # Alternate which goes first so drift in the machine's load hits both alike.
                for name in (("typed", "raw") if r % 2 == 0 else ("raw", "typed")):
                    s = _time_calls(clients[name], calls)
                    samples[name] += s
                    round_medians[name].append(round(common.median(s) / 1000.0, 2))
        finally:
            typed.close()
            raw.close()
            report = server.stop()
    out: dict[str, Any] = {name: {**common.latency_summary(s), "round_medians_us": round_medians[name]}
                           for name, s in samples.items()}
    out["ratio_median"] = round(ratio(out["typed"]["median_us"], out["raw"]["median_us"]), 3)
    out["ratio_p99"] = round(ratio(out["typed"]["p99_us"], out["raw"]["p99_us"]), 3)
    out["aim"] = AIM_RPC_RATIO
    out["meets_aim"] = out["ratio_median"] <= AIM_RPC_RATIO
    out["payload_bytes"] = len(encode(ROUTE_ARGS))
    out["server"] = report
    return out


def profile_rpc(rundir: str, calls: int = 3000) -> dict:
    """cProfile of the typed client and of the typed server, each in its own process."""
    import cProfile
    import io
    import pstats
    typed_ep, raw_ep = common.endpoint(rundir, "prof-typed"), common.endpoint(rundir, "prof-raw")
    with common.ServerProcess(serve_rpc, typed_ep, raw_ep) as server:
        client = RpcClient(typed_ep, ROUTE, timeout=5.0, retries=0)
        try:
            _time_calls(client.call, 200)
            server._parent.send("profile")
            prof = cProfile.Profile()
            prof.enable()
            _time_calls(client.call, calls)
            prof.disable()
            server_text = server.request("done")
        finally:
            client.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return {"client": out.getvalue(), "server": server_text}


# -- 2. frame-batch throughput -----------------------------------------------------------
class _Tally:
    __slots__ = ("batches", "frames", "bytes")

    def __init__(self) -> None:
        self.batches = self.frames = self.bytes = 0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "frames": self.frames, "bytes": self.bytes}


def _raw_router(ep: str) -> zmq.Socket:
    sock = context().socket(zmq.ROUTER)
    configure_socket(sock, HWM)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(ep)
    return sock


def serve_frames(conn, ours_ep: str, blob_ep: str, multi_ep: str) -> None:
    """Child process: three receivers that touch every frame and ack every ACK_EVERY batches."""
    provider = ProviderChannel(FRAMES, ours_ep, hwm=HWM)
    blob, multi = _raw_router(blob_ep), _raw_router(multi_ep)
    tally = {"ours": _Tally(), "raw_blob": _Tally(), "raw_multipart": _Tally()}
    ours_t, blob_t, multi_t = tally["ours"], tally["raw_blob"], tally["raw_multipart"]

    def on_batch(peer: bytes, stream: str, frames: list[bytes]) -> None:
        n = 0
        for f in frames:
            n += len(f)
        ours_t.batches += 1
        ours_t.frames += len(frames)
        ours_t.bytes += n
        if ours_t.batches % ACK_EVERY == 0:
            provider.send_event(peer, "ack", batches=ours_t.batches, frames=ours_t.frames, bytes=ours_t.bytes)

    def on_event(peer: bytes, name: str, value: Any) -> None:
        pass

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
            blob_t.batches += 1
            blob_t.frames += len(offs) - 1
            blob_t.bytes += n
            if blob_t.batches % ACK_EVERY == 0:
                blob.send_multipart([peer, msgpack.packb([blob_t.batches, blob_t.frames, blob_t.bytes])])

    def drain_multi(limit: int = 64) -> None:
        for _ in range(limit):
            try:
                parts = multi.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            n = 0
            for f in parts[1:]:
                n += len(f)
            multi_t.batches += 1
            multi_t.frames += len(parts) - 1
            multi_t.bytes += n
            if multi_t.batches % ACK_EVERY == 0:
                multi.send_multipart([parts[0], msgpack.packb([multi_t.batches, multi_t.frames, multi_t.bytes])])

    poller = zmq.Poller()
    for s in (provider.socket, blob, multi):
        poller.register(s, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    conn.send("ready")
    try:
        while True:
            for key, _ev in poller.poll():
                if key is provider.socket:
                    provider.receive(on_batch, on_event, limit=64)
                elif key is blob:
                    drain_blob()
                elif key is multi:
                    drain_multi()
                else:
                    try:
                        msg = conn.recv()
                    except EOFError:
                        return
                    if msg == "counts":
                        conn.send({k: t.as_dict() for k, t in tally.items()}
                                  | {"ours_rx_bad": provider.counters["rx_bad"]})
                    elif msg == "stop":
                        conn.send({k: t.as_dict() for k, t in tally.items()} | {"ours_counters": dict(provider.counters)})
                        return
    finally:
        provider.close()
        blob.close(linger=0)
        multi.close(linger=0)


class _Sender:
    """One variant's sending side: send a batch, and read acks (cumulative batch counts)."""

    name = ""

    def __init__(self) -> None:
        self.acked = 0
        self.drops = 0

    def send(self, frames: list[bytes]) -> bool:
        raise NotImplementedError

    def read_acks(self, timeout_ms: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class OursSender(_Sender):
    name = "ours"

    def __init__(self, ep: str):
        super().__init__()
        self.channel = UserChannel(FRAMES, ep, b"bench-sender", hwm=HWM)
        self.poller = zmq.Poller()
        self.poller.register(self.channel.socket, zmq.POLLIN)

    def send(self, frames: list[bytes]) -> bool:
        return self.channel.send_batch("rx", frames)

    def _on_event(self, name: str, value: Any) -> None:
        self.acked = max(self.acked, value.batches)

    def _on_batch(self, stream: str, frames: list[bytes]) -> None:
        raise AssertionError("the receiver sends no batches")

    def read_acks(self, timeout_ms: float) -> None:
        if self.poller.poll(timeout_ms):
            self.channel.receive(self._on_batch, self._on_event)

    @property
    def dropped(self) -> int:
        return self.channel.counters["tx_dropped_batches"]

    def close(self) -> None:
        self.channel.close()


class _RawSender(_Sender):
    def __init__(self, ep: str):
        super().__init__()
        self.socket = context().socket(zmq.DEALER)
        configure_socket(self.socket, HWM)
        self.socket.connect(ep)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def _send_parts(self, parts: list) -> bool:
        try:
            self.socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.drops += 1
            return False
        return True

    def read_acks(self, timeout_ms: float) -> None:
        if self.poller.poll(timeout_ms):
            while True:
                try:
                    (ack,) = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self.acked = max(self.acked, msgpack.unpackb(ack)[0])

    @property
    def dropped(self) -> int:
        return self.drops

    def close(self) -> None:
        self.socket.close(linger=0)


class RawBlobSender(_RawSender):
    """One blob plus an offsets array per batch: the shape ipc.batch uses, without the layer."""

    name = "raw_blob"

    def send(self, frames: list[bytes]) -> bool:
        offsets = array("I", itertools.accumulate(map(len, frames), initial=0))
        return self._send_parts([offsets, b"".join(frames)])


class RawMultipartSender(_RawSender):
    """One ZeroMQ part per frame."""

    name = "raw_multipart"

    def send(self, frames: list[bytes]) -> bool:
        return self._send_parts(frames)


def _send_round(sender: _Sender, frames: list[bytes], duration: float) -> tuple[int, float]:
    """Send batches for about ``duration`` s, never more than WINDOW ahead of the acks.

    Returns (batches sent, seconds from the first send to the ack of the last).
    Sends go in groups of ACK_EVERY so the last batch is always acked.
    """
    base = sender.acked
    sent = 0
    clock = time.perf_counter
    t0 = clock()
    while True:
        for _ in range(ACK_EVERY):
            last_ack = clock()
            while sent - (sender.acked - base) >= WINDOW:
                sender.read_acks(100)
                if sender.acked - base > sent - WINDOW:
                    break
                if clock() - last_ack > STALL_TIMEOUT:
                    raise RuntimeError(f"{sender.name}: no ack for {STALL_TIMEOUT:g} s ({sent} sent)")
            if sender.send(frames):
                sent += 1
        if clock() - t0 >= duration:
            break
    last_ack = clock()
    while sender.acked - base < sent:
        sender.read_acks(100)
        if clock() - last_ack > STALL_TIMEOUT:
            raise RuntimeError(f"{sender.name}: last ack missing after {STALL_TIMEOUT:g} s "
                               f"(sent {sent}, acked {sender.acked - base}; drops?)")
    return sent, clock() - t0


def bench_batches(rundir: str, quick: bool) -> dict:
    rounds, duration = (3, 0.25) if quick else (9, 0.3)
    eps = {name: common.endpoint(rundir, f"frames-{name}") for name in ("ours", "raw_blob", "raw_multipart")}
    results: dict[str, Any] = {}
    with common.ServerProcess(serve_frames, eps["ours"], eps["raw_blob"], eps["raw_multipart"]) as server:
        senders: list[_Sender] = [OursSender(eps["ours"]), RawBlobSender(eps["raw_blob"]),
                                  RawMultipartSender(eps["raw_multipart"])]
        try:
            rates: dict[tuple[int, str], list[float]] = {}
            sent_frames: dict[str, int] = {s.name: 0 for s in senders}
            sent_bytes: dict[str, int] = {s.name: 0 for s in senders}
            for size in FRAME_SIZES:
                frames = [os.urandom(size) for _ in range(BATCH_FRAMES)]
                for s in senders:  # warm up: connections made, buffers allocated
                    n, _ = _send_round(s, frames, 0.05)
                    sent_frames[s.name] += n * BATCH_FRAMES
                    sent_bytes[s.name] += n * BATCH_FRAMES * size
                for r in range(rounds):
                    order = senders[r % 3:] + senders[:r % 3]
                    for s in order:
                        n, secs = _send_round(s, frames, duration)
                        sent_frames[s.name] += n * BATCH_FRAMES
                        sent_bytes[s.name] += n * BATCH_FRAMES * size
                        rates.setdefault((size, s.name), []).append(n * BATCH_FRAMES / secs)
            counts = server.request("counts")
            drops = {s.name: s.dropped for s in senders}
        finally:
            for s in senders:
                s.close()
    for s_name in sent_frames:
        got = counts[s_name]
        lost = sent_frames[s_name] - got["frames"]
        if lost or got["bytes"] != sent_bytes[s_name]:
            log(f"warning: {s_name}: sent {sent_frames[s_name]} frames / {sent_bytes[s_name]} B, "
                f"received {got['frames']} / {got['bytes']} B")
        drops[s_name] = {"sender_dropped_batches": drops[s_name], "frames_lost": lost}
    for size in FRAME_SIZES:
        row: dict[str, Any] = {}
        for name in ("ours", "raw_blob", "raw_multipart"):
            fps = common.median(rates[(size, name)])
            row[name] = {"frames_per_s": round(fps), "gbit_per_s": round(fps * size * 8 / 1e9, 3),
                         "round_frames_per_s": [round(x) for x in rates[(size, name)]]}
        row["ratio_ours_to_raw_blob"] = round(ratio(row["ours"]["frames_per_s"], row["raw_blob"]["frames_per_s"]), 3)
        row["ratio_raw_blob_to_multipart"] = round(
            ratio(row["raw_blob"]["frames_per_s"], row["raw_multipart"]["frames_per_s"]), 3)
        row["meets_aim"] = row["ratio_ours_to_raw_blob"] >= AIM_BATCH_RATIO
        results[str(size)] = row
    results["aim"] = AIM_BATCH_RATIO
    results["batch_frames"] = BATCH_FRAMES
    results["flow_control"] = {"ack_every": ACK_EVERY, "window": WINDOW, "hwm": HWM}
    results["drops"] = drops
    results["ours_rx_bad"] = counts["ours_rx_bad"]
    return results


def profile_batches(rundir: str, size: int = 64, duration: float = 1.0) -> dict:
    """cProfile of the typed sender; the receiver's unpack cost is profiled in-process."""
    import cProfile
    import io
    import pstats
    from ipc import batch as batchmod
    frames = [os.urandom(size) for _ in range(BATCH_FRAMES)]
    eps = {name: common.endpoint(rundir, f"prof-{name}") for name in ("ours", "blob", "multi")}
    with common.ServerProcess(serve_frames, eps["ours"], eps["blob"], eps["multi"]):
        sender = OursSender(eps["ours"])
        try:
            _send_round(sender, frames, 0.1)
            prof = cProfile.Profile()
            prof.enable()
            _send_round(sender, frames, duration)
            prof.disable()
        finally:
            sender.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    # The receiving side's per-batch work, in-process: unpack into frames vs. memoryview slices.
    parts = batchmod.encode_batch("rx", 1, frames)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        batchmod.unpack_frames(parts[1], parts[2], BATCH_FRAMES)
    unpack_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        offs = array("I")
        offs.frombytes(parts[1])
        mv = memoryview(parts[2])
        prev = 0
        for end in offs[1:]:
            mv[prev:end]
            prev = end
    views_us = (time.perf_counter() - t0) / n * 1e6
    return {"sender": out.getvalue(), "unpack_frames_us_per_batch": round(unpack_us, 1),
            "memoryview_slices_us_per_batch": round(views_us, 1), "frame_size": size}


# -- 3. codec ------------------------------------------------------------------------------
_NAME_RE = re.compile(NAME.pattern)
_ROUTE_FIELDS = frozenset(ROUTE_ARGS)


class RouteArgs:
    """What the hand-written validator returns: the checked fields, addr as an IPv4Address."""

    __slots__ = ("port", "addr", "prefix_len", "metric", "up", "note")

    def __init__(self, port, addr, prefix_len, metric, up, note):
        self.port, self.addr, self.prefix_len = port, addr, prefix_len
        self.metric, self.up, self.note = metric, up, note


def validate_route(d: Any) -> RouteArgs:
    """The checks the declaration implies, written by hand; raises ValueError."""
    if type(d) is not dict or d.keys() != _ROUTE_FIELDS:
        raise ValueError("expected a map of exactly the route fields")
    port = d["port"]
    if type(port) is not str or not 1 <= len(port) <= 64 or _NAME_RE.search(port) is None:
        raise ValueError("port: expected a name")
    addr = d["addr"]
    if type(addr) is not str or len(addr) > 64:
        raise ValueError("addr: expected an IPv4 address string")
    addr = ipaddress.IPv4Address(addr)  # AddressValueError is a ValueError
    prefix_len = d["prefix_len"]
    if type(prefix_len) is not int or not 0 <= prefix_len <= 32:
        raise ValueError("prefix_len: expected an int in 0..32")
    metric = d["metric"]
    if type(metric) is not int or not 0 <= metric <= 0xFFFFFFFF:
        raise ValueError("metric: expected an int in 0..2^32-1")
    up = d["up"]
    if type(up) is not bool:
        raise ValueError("up: expected a bool")
    note = d["note"]
    if type(note) is not str or len(note) > 64:
        raise ValueError("note: expected a string of at most 64 characters")
    return RouteArgs(port, addr, prefix_len, metric, up, note)


_BAD_ROUTES = [
    {"prefix_len": 33}, {"prefix_len": -1}, {"prefix_len": True}, {"metric": 1 << 32}, {"metric": -1},
    {"metric": 1.5}, {"up": 1}, {"addr": "300.1.1.1"}, {"addr": "10.0.0.0/24"}, {"addr": 167772161},
    {"port": ""}, {"port": "bad name"}, {"port": "x" * 65}, {"note": "x" * 65}, {"note": b"bytes"},
    {"extra": 1},
]


def _check_validators_agree() -> None:
    """Both validators accept the good route and refuse every bad one, or the race is unfair."""
    good = encode(ROUTE_ARGS)
    a, b = validate_route(msgpack.unpackb(good)), SET_ROUTE.decode_args(good)
    for name in ROUTE_ARGS:
        if getattr(a, name) != getattr(b, name):
            raise AssertionError(f"validators disagree on {name}")
    bad_cases = [{**ROUTE_ARGS, **patch} for patch in _BAD_ROUTES]
    bad_cases.append({k: v for k, v in ROUTE_ARGS.items() if k != "note"})
    for case in bad_cases:
        body = msgpack.packb(case, default=_msgpack_default)
        for name, check in (("hand", lambda: validate_route(msgpack.unpackb(body))),
                            ("msgspec", lambda: SET_ROUTE.decode_args(body))):
            try:
                check()
            except Exception:
                continue
            raise AssertionError(f"{name} validator accepted a bad route: {case}")


def bench_codec(quick: bool) -> dict:
    import msgspec
    _check_validators_agree()
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
    for _ in range(repeat):  # interleaved, one run of each per pass
        for name, op in ops.items():
            runs[name] += common.time_per_op(op, number, 1)
    med = {k: round(common.median(v), 3) for k, v in runs.items()}
    a = med["msgpack_pack"] + med["msgpack_unpack_validate"]
    b = med["msgspec_encode"] + med["msgspec_decode_typed"]
    return {"us_per_op": med, "msgpack_hand_total_us": round(a, 3), "msgspec_typed_total_us": round(b, 3),
            "ratio_msgpack_hand_to_msgspec": round(ratio(a, b), 3), "number": number, "repeat": repeat}


# -- the whole run --------------------------------------------------------------------------
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


def render(res: dict) -> str:
    lines = []
    m = res["machine"]
    lines.append(f"ipc benchmark{' (quick)' if res['quick'] else ''}: {m['cpus']} cpus, load {m['loadavg_1m']}, "
                 f"python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), msgspec {m['msgspec']}")
    rpc = res["rpc"]
    t = Table("rpc round trip (6 typed fields)", "median us", "p99 us", "calls")
    for name, label in (("typed", "ours: RpcClient -> RpcServer"), ("raw", "raw: DEALER -> ROUTER, msgpack")):
        t.add(label, f"{rpc[name]['median_us']:.1f}", f"{rpc[name]['p99_us']:.1f}", rpc[name]["n"])
    t.add("ratio ours/raw", fmt_ratio(rpc["ratio_median"]), fmt_ratio(rpc["ratio_p99"]),
          f"aim <= {fmt_ratio(rpc['aim'])}: {'met' if rpc['meets_aim'] else 'MISSED'}")
    lines += ["", t.render()]
    b = res["batch"]
    t = Table(f"frame batches ({b['batch_frames']} frames/batch)", "frames/s", "Gbit/s", "vs raw blob")
    for size in FRAME_SIZES:
        row = b[str(size)]
        for name, label in (("ours", "ours: send_batch -> receive"), ("raw_blob", "raw: blob + offsets"),
                            ("raw_multipart", "raw: one part per frame")):
            fig = row[name]
            vs = fmt_ratio(ratio(fig["frames_per_s"], row["raw_blob"]["frames_per_s"]))
            t.add(f"{size:>4} B  {label}", f"{fig['frames_per_s']:,}", f"{fig['gbit_per_s']:.2f}", vs)
        t.add(f"{size:>4} B  aim ours/raw blob >= {b['aim']:.0%}",
              "met" if row["meets_aim"] else "MISSED", "", f"blob/multipart {fmt_ratio(row['ratio_raw_blob_to_multipart'])}")
    lines += ["", t.render()]
    drops = ", ".join(f"{k}: {v['sender_dropped_batches']} batches dropped, {v['frames_lost']} frames lost"
                      for k, v in b["drops"].items())
    lines.append(f"drops ({b['flow_control']['window']}-batch window, ack every {b['flow_control']['ack_every']}): {drops}")
    c = res["codec"]
    t = Table("codec, in-process (6-field route)", "us/op")
    labels = {"msgpack_pack": "msgpack pack", "msgpack_unpack": "msgpack unpack (no checks)",
              "msgpack_unpack_validate": "msgpack unpack + hand validation",
              "msgspec_encode": "msgspec encode", "msgspec_decode_untyped": "msgspec decode (no checks)",
              "msgspec_decode_typed": "msgspec typed decode (Struct, bounds, ipaddress)"}
    for k, label in labels.items():
        t.add(label, f"{c['us_per_op'][k]:.2f}")
    t.add("(a) msgpack + hand validation, both ways", f"{c['msgpack_hand_total_us']:.2f}")
    t.add("(b) msgspec typed, both ways", f"{c['msgspec_typed_total_us']:.2f}")
    t.add("ratio (a)/(b)", fmt_ratio(c["ratio_msgpack_hand_to_msgspec"]))
    lines += ["", t.render(), "", f"took {res['seconds']} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser("IPC benchmark: typed RPC, frame batches and codec beside raw pyzmq/msgpack.")
    p.add_argument("--profile", action="store_true",
                   help="instead of the figures, print cProfile tables of the typed RPC and batch paths")
    args = p.parse_args(argv)
    if args.profile:
        with common.runtime_dir() as rundir:
            rpc = profile_rpc(rundir)
            print("== typed rpc client\n" + rpc["client"] + "\n== typed rpc server\n" + rpc["server"])
            bat = profile_batches(rundir)
            print("== typed batch sender (64 B)\n" + bat["sender"])
            print(f"receiver per batch of {BATCH_FRAMES} x {bat['frame_size']} B: unpack_frames "
                  f"{bat['unpack_frames_us_per_batch']} us, memoryview slices {bat['memoryview_slices_us_per_batch']} us")
        return 0
    res = run(args.quick)
    print(render(res))
    if args.json:
        common.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
