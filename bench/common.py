"""Shared helpers for the benchmarks: timing, percentiles, ratios, tables, server processes.

The machines are small (2 cores) and shared with other work, so every benchmark
reports medians over several interleaved rounds, prints each figure beside the
anchor it is compared with, and gives the ratio rather than the absolute number
the weight.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

# "spawn": a child starts from a clean interpreter, with no ZeroMQ context or
# sockets inherited from the parent (ZeroMQ contexts do not survive a fork).
_MP = multiprocessing.get_context("spawn")


# -- statistics -----------------------------------------------------------------
def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0..100), linearly interpolated between ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    xs = sorted(samples)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def latency_summary(samples_ns: list[int]) -> dict:
    """Median, p99 and count of round-trip samples given in nanoseconds, in µs."""
    us = [s / 1000.0 for s in samples_ns]
    return {"median_us": round(median(us), 2), "p99_us": round(percentile(us, 99), 2), "n": len(us)}


def ratio(ours: float, anchor: float) -> float:
    return ours / anchor if anchor else float("inf")


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def profile_text(prof: Any, top: int = 14) -> str:
    """The ``top`` entries of a cProfile.Profile by own time, as text."""
    import io
    import pstats
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def time_per_op(op: Callable[[], Any], number: int, repeat: int) -> list[float]:
    """µs per call of ``op``, one figure per repeat (the loop's own cost is included)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            op()
        runs.append((time.perf_counter_ns() - t0) / number / 1000.0)
    return runs


# -- output ---------------------------------------------------------------------
class Table:
    """A plain text table: a header row, then rows of strings, columns aligned."""

    def __init__(self, *columns: str):
        self.columns = columns
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append(tuple(str(c) for c in cells))

    def render(self) -> str:
        widths = [max(len(r[i]) for r in [self.columns, *self.rows]) for i in range(len(self.columns))]

        def line(cells: tuple[str, ...]) -> str:
            # First column left-aligned (a label), figures right-aligned.
            out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
            return "  ".join(out).rstrip()

        sep = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.columns), sep] + [line(r) for r in self.rows])


def machine_info() -> dict:
    import msgpack
    import msgspec
    import zmq
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m": round(load[0], 2),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "platform": platform.platform(terse=True),
    }


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def arg_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="fewer rounds and iterations (a smoke run)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return p


def main(name: str, description: str, run: Callable[[bool], dict], render: Callable[[dict], str],
         argv: list[str] | None = None) -> int:
    """A benchmark's command line: --quick, --json FILE; its table on stdout, a RuntimeError
    (a missing peer, a failed set-up) as one line on stderr and exit 1."""
    args = arg_parser(description).parse_args(argv)
    try:
        res = run(args.quick)
    except RuntimeError as exc:
        print(f"bench.{name}: {exc}", file=sys.stderr)
        return 1
    print(render(res))
    if args.json:
        write_json(args.json, res)
    return 0


# -- endpoints and processes ------------------------------------------------------
def require_root_and(*tools: str) -> None:
    """RuntimeError unless this runs as root with every one of ``tools`` on PATH (the benchmarks
    with peers in network namespaces)."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise RuntimeError(f"needs {tool}")
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces and TAP devices)")


@contextlib.contextmanager
def runtime_dir(prefix: str = "qnet-bench-") -> Iterator[str]:
    """A private (0700) temporary directory for ipc:// endpoints, removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def endpoint(directory: str, name: str) -> str:
    return f"ipc://{os.path.join(directory, name)}"


class ServerProcess:
    """A benchmark peer in its own process, driven over a control pipe.

    ``target(conn, *args)`` runs in a fresh interpreter. It must send one
    message on ``conn`` once its sockets are bound (the ready message), answer
    requests the parent sends, and return when it receives ``"stop"`` (after
    sending its final report) or when the pipe reaches EOF (the parent is
    gone), so no child outlives the benchmark.
    """

    def __init__(self, target: Callable[..., None], *args: Any, ready_timeout: float = 30.0):
        self._parent, child = _MP.Pipe()
        self.process = _MP.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()
        try:
            if not self._parent.poll(ready_timeout):
                raise EOFError
            self.ready = self._parent.recv()
        except (EOFError, OSError):
            self.close()
            code = self.process.exitcode
            why = f"exited with code {code}" if code is not None and code >= 0 else f"not ready in {ready_timeout:g} s"
            raise RuntimeError(f"{target.__name__}: {why} before it was ready") from None

    def request(self, msg: Any, timeout: float = 30.0) -> Any:
        self._parent.send(msg)
        if not self._parent.poll(timeout):
            raise RuntimeError(f"server process did not answer {msg!r} within {timeout:g} s")
        return self._parent.recv()

    def receive(self, timeout: float = 30.0) -> Any:
        """A further message the child sends unasked (after answering a request that starts work)."""
        if not self._parent.poll(timeout):
            raise RuntimeError(f"server process sent nothing within {timeout:g} s")
        return self._parent.recv()

    def stop(self, timeout: float = 10.0) -> Any:
        """Ask the child to stop; its final report, or None if it did not give one."""
        report = None
        try:
            report = self.request("stop", timeout)
        except (RuntimeError, OSError, EOFError):
            pass
        self.close()
        return report

    def close(self) -> None:
        self.process.join(2.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self._parent.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process.is_alive():
            self.stop()
        else:
            self.close()


def serve_peer(conn: Any, readers: dict, report: Callable[[], Any] | None = None) -> None:
    """A benchmark peer's loop (the child side of ServerProcess).

    Polls ``readers`` (ZeroMQ socket -> callback that drains it) and the
    control pipe; sends the ready message, then answers "cpu" (its process
    time, ZeroMQ's I/O thread included), "profile" / "profile_stop" (a
    cProfile table of what ran in between) and "stop" (``report()``, then return).
    """
    import cProfile

    import zmq
    poller = zmq.Poller()
    for sock in readers:
        poller.register(sock, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    prof = None
    conn.send("ready")
    while True:
        for key, _ev in poller.poll():
            if key in readers:
                readers[key]()
                continue
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                return
            if msg == "cpu":
                conn.send(time.process_time())
            elif msg == "profile":
                prof = cProfile.Profile()
                prof.enable()
                conn.send("ok")
            elif msg == "profile_stop" and prof is not None:
                prof.disable()
                conn.send(profile_text(prof))
            elif msg == "stop":
                conn.send(report() if report is not None else None)
                return
            else:
                conn.send(f"unknown request {msg!r}")


def log(msg: str) -> None:
    """Progress lines go to stderr so the table on stdout stays clean."""
    print(msg, file=sys.stderr, flush=True)


# -- flow-controlled one-way streams ---------------------------------------------
class WindowedSender:
    """The sending side of a one-way throughput measurement with flow control.

    The receiver acks every ``ack_every`` messages with its cumulative count;
    the sender stays at most ``window`` messages ahead of the last ack. With a
    window below ZeroMQ's HWM nothing is dropped, so a throughput figure is
    never flattered by messages that were sent and lost. Subclasses give
    ``send(item) -> bool`` and ``read_acks(timeout_ms)`` (which updates ``acked``).
    """

    name = ""

    def __init__(self, ack_every: int, window: int, stall_timeout: float = 5.0):
        self.ack_every, self.window, self.stall_timeout = ack_every, window, stall_timeout
        self.acked = 0
        self.refused = 0

    def send(self, item: Any) -> bool:
        raise NotImplementedError

    def read_acks(self, timeout_ms: float) -> None:
        raise NotImplementedError

    def _wait_acked(self, target: int) -> None:
        since = time.perf_counter()
        while self.acked < target:
            self.read_acks(100)
            if time.perf_counter() - since > self.stall_timeout:
                raise RuntimeError(f"{self.name}: no ack for {self.stall_timeout:g} s "
                                   f"(acked {self.acked}, waiting for {target}; a drop?)")

    def run_round(self, item: Any, duration: float) -> tuple[int, float]:
        """Send ``item`` repeatedly for about ``duration`` s; (messages sent, seconds to the last ack).

        Messages go in groups of ``ack_every`` so the last one is always acked.
        A send refused by a full queue is counted in ``refused`` and retried after
        reading acks, so a drop shows in the report and never stalls the round.
        """
        base = self.acked
        sent = 0
        clock = time.perf_counter
        t0 = clock()
        while True:
            for _ in range(self.ack_every):
                if sent - (self.acked - base) >= self.window:
                    self._wait_acked(base + sent - self.window + 1)
                refused_at = None
                while not self.send(item):
                    self.refused += 1
                    refused_at = refused_at or clock()
                    if clock() - refused_at > self.stall_timeout:
                        raise RuntimeError(f"{self.name}: sends refused for {self.stall_timeout:g} s")
                    self.read_acks(1)
                sent += 1
            if clock() - t0 >= duration:
                break
        self._wait_acked(base + sent)
        return sent, clock() - t0


# -- CPU placement ------------------------------------------------------------------
def pin_process(cpus: set[int] | list[int]) -> list[int]:
    """Set the CPU affinity of every thread of this process (ZeroMQ's I/O threads too).

    ``os.sched_setaffinity(0, ...)`` moves only the calling thread on Linux, and
    threads started before it keep their old mask. Returns the new mask.
    """
    cpus = set(cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that just ended
    os.sched_setaffinity(0, cpus)
    return sorted(os.sched_getaffinity(0))
