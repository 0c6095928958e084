"""A backend that wraps another and makes its link bad (after smoltcp's ``phy/fault_injector.rs``
and Linux netem), for chaos tests and for TCP tests on this kernel, which has no netem.

Per frame, in this order, as netem does: loss (and frames over ``max_frame_len``), corruption
(one byte changed), duplication (the copy follows the original), reordering (the frame is held
back until ``reorder_gap`` later frames have passed it, or ``reorder_hold`` seconds if none
come), then the delay line: a fixed one-way ``delay`` with optional ``jitter``, behind an
optional ``rate_limit`` that serialises frames as a link of that many bits per second would.
The delay line keeps the order (jitter never reorders; reordering is ``reorder_rate``'s job)
and is bounded in frames and bytes; what does not fit is dropped and counted as overflow, as
netem's ``limit`` does.

Faults apply to both directions unless ``rx``/``tx`` say otherwise, each direction with its own
delay line, so ``delay=0.3`` makes a 600 ms round trip. A seed makes a run repeatable.

Held frames need a timer: the driver asks ``next_deadline()`` after every wake-up and calls
``poll(now)`` then (base.py). Received frames that came due are returned by the next
``read_batch``; frames to send are written to the inner backend by ``poll``. What the delay
line holds when the driver stops or hands over is lost, as frames on a cable that is unplugged.

``parse_fault_spec`` reads the text form used by ``qnet port add --fault`` and the manifest
(docs/fault-injection.md): ``loss=0.01,reorder=0.05,dup=0.01,delay=0.3,seed=1``.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from ipc.accounting import table

from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, Backend, BackendWrapper

DEFAULT_REORDER_HOLD = 0.02
# Enough for the bandwidth-delay product of what a Python stack moves over a long path
# (~20 000 frames/s x 0.3 s), small enough that a flood cannot take the driver's memory.
DEFAULT_MAX_HELD_FRAMES = 10_000
DEFAULT_MAX_HELD_BYTES = 32 << 20
# Frames held for reordering at once: each waits for a few later frames, so a handful is
# the most a sane rate gives; past it the oldest goes on at once.
MAX_REORDER_HELD = 64
DIRECTIONS = ("rx", "tx")


class _Path:
    """One direction after the per-frame coin tosses: frames held for reordering, then the
    delay line of (due, frame) in order of due time."""

    __slots__ = ("held", "line", "line_bytes", "last_due", "link_free", "counters", "name")

    def __init__(self, name: str, counters: dict[str, int]) -> None:
        self.name = name
        self.counters = counters
        self.held: list[list] = []            # [frame, frames still to pass it, deadline]
        self.line: deque[tuple[float, bytes]] = deque()
        self.line_bytes = 0
        self.last_due = -math.inf
        self.link_free = -math.inf

    def next_deadline(self) -> float | None:
        when = self.line[0][0] if self.line else None
        for h in self.held:
            if when is None or h[2] < when:
                when = h[2]
        return when

    def take_due(self, now: float, max_frames: int, max_bytes: int) -> list[bytes]:
        line, out, nbytes = self.line, [], 0
        while line and line[0][0] <= now and len(out) < max_frames and nbytes < max_bytes:
            frame = line.popleft()[1]
            out.append(frame)
            nbytes += len(frame)
        self.line_bytes -= nbytes
        return out


class FaultInjector(BackendWrapper):
    def __init__(self, inner: Backend, *, drop_rate: float = 0.0, corrupt_rate: float = 0.0,
                 dup_rate: float = 0.0, reorder_rate: float = 0.0, reorder_gap: int = 1,
                 reorder_hold: float = DEFAULT_REORDER_HOLD, delay: float = 0.0, jitter: float = 0.0,
                 rate_limit: float | None = None, max_held_frames: int = DEFAULT_MAX_HELD_FRAMES,
                 max_held_bytes: int = DEFAULT_MAX_HELD_BYTES, max_frame_len: int | None = None,
                 rx: bool = True, tx: bool = True, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, rate in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate), ("dup_rate", dup_rate),
                           ("reorder_rate", reorder_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if not 0.0 <= delay or not 0.0 <= jitter <= delay:
            raise ValueError(f"delay must be >= 0 and jitter within [0, delay], got {delay}, {jitter}")
        if reorder_gap < 1 or reorder_hold <= 0:
            raise ValueError(f"reorder_gap must be >= 1 and reorder_hold > 0, got {reorder_gap}, {reorder_hold}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be > 0 bits per second, got {rate_limit}")
        if max_held_frames < 1 or max_held_bytes < 1:
            raise ValueError("max_held_frames and max_held_bytes must be >= 1")
        super().__init__(inner)
        self.drop_rate = drop_rate
        self.corrupt_rate = corrupt_rate
        self.dup_rate = dup_rate
        self.reorder_rate = reorder_rate
        self.reorder_gap = reorder_gap
        self.reorder_hold = reorder_hold
        self.delay = delay
        self.jitter = jitter
        self.rate_limit = rate_limit
        self.max_held_frames = max_held_frames
        self.max_held_bytes = max_held_bytes
        self.max_frame_len = max_frame_len  # longer frames are dropped, like an MTU-limited link
        self.rx = rx
        self.tx = tx
        self._clock = clock
        self._rng = random.Random(seed)
        # Frames take the held path only when something can hold them; otherwise a batch
        # goes straight through, as it did before delay existed.
        self._timed = bool(reorder_rate or delay or rate_limit)
        kinds = ("dropped", "corrupted", "duplicated", "reordered", "delayed", "rate_waited", "overflow")
        self._faults = {f"{d}_fault_{k}": 0 for d in DIRECTIONS for k in kinds}
        self._paths = {d: _Path(d, self._faults) for d in DIRECTIONS}

    @classmethod
    def from_spec(cls, inner: Backend, spec: "FaultSpec", **kw) -> "FaultInjector":
        return cls(inner, **spec.injector_args(), **kw)

    # -- the coin tosses --------------------------------------------------------------------
    def _toss(self, frames: Iterable[bytes], direction: str) -> list[bytes]:
        """Loss, corruption, duplication: the frames that go on, in order."""
        rng = self._rng
        drop, corrupt, dup, limit = self.drop_rate, self.corrupt_rate, self.dup_rate, self.max_frame_len
        # A virtio-net header is not on the wire: a bit error cannot hit it.
        skip = self.inner.frame_prefix_len
        out: list[bytes] = []
        dropped = corrupted = duplicated = 0
        for frame in frames:
            if (limit is not None and len(frame) > limit) or (drop and rng.random() < drop):
                dropped += 1
                continue
            if corrupt and len(frame) > skip and rng.random() < corrupt:
                buf = bytearray(frame)
                # XOR with a non-zero byte: the frame always changes, as a bit error would.
                buf[rng.randrange(skip, len(buf))] ^= rng.randrange(1, 256)
                frame = bytes(buf)
                corrupted += 1
            out.append(frame)
            if dup and rng.random() < dup:
                out.append(frame)
                duplicated += 1
        f = self._faults
        f[f"{direction}_fault_dropped"] += dropped
        f[f"{direction}_fault_corrupted"] += corrupted
        f[f"{direction}_fault_duplicated"] += duplicated
        return out

    # -- reordering and the delay line ------------------------------------------------------
    def _admit(self, path: _Path, frames: list[bytes], now: float) -> None:
        rng, reorder = self._rng, self.reorder_rate
        for frame in frames:
            if not isinstance(frame, bytes):
                # A held view would see its buffer reused by the next batch.
                frame = bytes(frame)
            if reorder and rng.random() < reorder:
                if len(path.held) >= MAX_REORDER_HELD:
                    self._release_held(path, path.held.pop(0), now)
                path.held.append([frame, self.reorder_gap, now + self.reorder_hold])
                continue
            self._enter_line(path, frame, now)
            if path.held:
                # This frame passed every held one: those it was the last to wait for follow it.
                for h in path.held:
                    h[1] -= 1
                while path.held and path.held[0][1] <= 0:
                    self._release_held(path, path.held.pop(0), now)

    def _expire_holds(self, path: _Path, now: float) -> None:
        """Held frames whose hold ran out go on, in the order they were held."""
        if not path.held:
            return
        expired = [h for h in path.held if h[2] <= now]
        if expired:
            path.held = [h for h in path.held if h[2] > now]
            for h in expired:
                self._release_held(path, h, now)

    def _release_held(self, path: _Path, entry: list, now: float) -> None:
        if entry[1] < self.reorder_gap:
            # Counted only when a later frame did pass it: a hold that ran out with nothing
            # behind it delayed the frame but reordered nothing.
            self._faults[f"{path.name}_fault_reordered"] += 1
        self._enter_line(path, entry[0], now)

    def _enter_line(self, path: _Path, frame: bytes, now: float) -> None:
        f, d = self._faults, path.name
        if len(path.line) >= self.max_held_frames or path.line_bytes + len(frame) > self.max_held_bytes:
            f[f"{d}_fault_overflow"] += 1
            return
        due = now
        if self.rate_limit:
            # Serialisation on a link of rate_limit bit/s: a frame starts when the one before
            # it has left, so a burst waits in the line as it would in a router's queue.
            wire = len(frame) - self.inner.frame_prefix_len
            start = max(now, path.link_free)
            if start > now:
                f[f"{d}_fault_rate_waited"] += 1
            path.link_free = due = start + wire * 8.0 / self.rate_limit
        if self.delay:
            due += self.delay + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            f[f"{d}_fault_delayed"] += 1
        # Order kept: a frame never leaves before the one in front of it.
        if due < path.last_due:
            due = path.last_due
        path.last_due = due
        path.line.append((due, frame))
        path.line_bytes += len(frame)

    # -- the device -------------------------------------------------------------------------
    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        frames = self.inner.read_batch(max_frames, max_bytes)
        if not self.rx:
            return frames
        frames = self._toss(frames, "rx")
        if not self._timed:
            return frames
        now = self._clock()
        path = self._paths["rx"]
        self._admit(path, frames, now)
        self._expire_holds(path, now)
        return path.take_due(now, max_frames, max_bytes)

    def write_batch(self, frames: Iterable[bytes]) -> int:
        if not self.tx:
            return self.inner.write_batch(frames)
        frames = list(frames)
        kept = self._toss(frames, "tx")
        if self._timed:
            now = self._clock()
            self._admit(self._paths["tx"], kept, now)
            self._release_tx(now)
            # Held frames were accepted; what the line had no room for is counted as overflow.
            return len(frames)
        written = self.inner.write_batch(kept)
        # A frame lost on the wire was still accepted from the caller's point of view; one the
        # inner backend refused was not (a duplicate refused stands for its original).
        return len(frames) - min(len(frames), len(kept) - written)

    def _release_tx(self, now: float) -> None:
        path = self._paths["tx"]
        self._expire_holds(path, now)
        while path.line and path.line[0][0] <= now:
            # The inner backend counts what it cannot take (tx_dropped): nobody waits for it.
            self.inner.write_batch(path.take_due(now, DEFAULT_MAX_FRAMES, DEFAULT_MAX_BYTES))

    def next_deadline(self) -> float | None:
        if not self._timed:
            return self.inner.next_deadline()
        whens = [w for w in (self._paths["rx"].next_deadline(), self._paths["tx"].next_deadline(),
                             self.inner.next_deadline()) if w is not None]
        return min(whens) if whens else None

    def poll(self, now: float) -> None:
        self.inner.poll(now)
        if not self._timed:
            return
        if self.tx:
            self._release_tx(now)
        # Received frames that came due wait for read_batch, which the driver calls after poll.
        self._expire_holds(self._paths["rx"], now)

    def held(self, direction: str) -> tuple[int, int]:
        """(frames, bytes) waiting in one direction: reorder holds and the delay line."""
        p = self._paths[direction]
        return len(p.line) + len(p.held), p.line_bytes + sum(len(h[0]) for h in p.held)

    def counters(self) -> dict[str, int]:
        out = self.inner.counters()
        out.update(self._faults)
        return out

    def tables(self) -> dict[str, dict]:
        out = self.inner.tables()
        if self._timed:
            for d in DIRECTIONS:
                out[f"fault_{d}_line"] = table(self.held(d)[0], self.max_held_frames,
                                               self._faults[f"{d}_fault_overflow"])
        return out


# -- the text form: qnet port add --fault, the manifest's fault = "..." --------------------------
@dataclass(frozen=True)
class FaultSpec:
    """A checked set of faults; ``str()`` gives the canonical text (defaults left out)."""

    loss: float = 0.0
    corrupt: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    reorder_gap: int = 1
    reorder_hold: float = DEFAULT_REORDER_HOLD
    delay: float = 0.0
    jitter: float = 0.0
    rate: int = 0                   # bits per second; 0: no limit
    limit: int = DEFAULT_MAX_HELD_FRAMES
    limit_bytes: int = DEFAULT_MAX_HELD_BYTES
    max_len: int = 0                # 0: no limit
    seed: int | None = None
    dir: str = "both"

    def __str__(self) -> str:
        return ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self)
                        if getattr(self, f.name) != f.default)

    def injector_args(self) -> dict:
        return {"drop_rate": self.loss, "corrupt_rate": self.corrupt, "dup_rate": self.dup,
                "reorder_rate": self.reorder, "reorder_gap": self.reorder_gap, "reorder_hold": self.reorder_hold,
                "delay": self.delay, "jitter": self.jitter, "rate_limit": self.rate or None,
                "max_held_frames": self.limit, "max_held_bytes": self.limit_bytes,
                "max_frame_len": self.max_len or None, "seed": self.seed,
                "rx": self.dir in ("both", "rx"), "tx": self.dir in ("both", "tx")}


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


_SUFFIX = {"k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6, "g": 10**9, "G": 10**9}


def _probability(text: str) -> float:
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    return float(text)


def _seconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000.0
    return float(text[:-1] if text.endswith("s") else text)


def _count(text: str) -> int:
    for suffix in ("bit", "b", "B"):       # "10Mbit", "64kB": the unit word is optional
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[:-len(suffix)]
            break
    mult = _SUFFIX.get(text[-1:], 1)
    value = float(text[:-1] if mult != 1 else text)
    if value != int(value * mult) / mult:
        raise ValueError("not a whole number")
    return int(value * mult)


def _direction(text: str) -> str:
    if text not in ("both", "rx", "tx"):
        raise ValueError("not a direction")
    return text


# key: (reader, low, high, what the value is): the one place the ranges are written.
FAULT_KEYS: dict[str, tuple[Callable[[str], object], float, float, str]] = {
    "loss": (_probability, 0.0, 1.0, "probability a frame is lost"),
    "corrupt": (_probability, 0.0, 1.0, "probability one byte of a frame is changed"),
    "dup": (_probability, 0.0, 1.0, "probability a frame is sent twice"),
    "reorder": (_probability, 0.0, 1.0, "probability a frame is held back and overtaken"),
    "reorder_gap": (_count, 1, MAX_REORDER_HELD, "frames that overtake a held one"),
    "reorder_hold": (_seconds, 0.001, 1.0, "seconds a held frame waits for them at most"),
    "delay": (_seconds, 0.0, 10.0, "one-way delay in seconds, each direction"),
    "jitter": (_seconds, 0.0, 10.0, "seconds of uniform variation around delay, at most delay"),
    "rate": (_count, 1000, 100 * 10**9, "bits per second each direction, k, M, G suffixes"),
    "limit": (_count, 1, 1_000_000, "frames the delay line holds, each direction"),
    "limit_bytes": (_count, 2048, 1 << 30, "bytes the delay line holds, each direction"),
    "max_len": (_count, 14, 65535 + 4096, "longer frames are lost"),
    "seed": (_count, 0, 2**63 - 1, "the same seed repeats the same faults"),
    "dir": (_direction, 0, 0, "rx: toward netstack, tx: toward the device"),
}


def fault_help() -> str:
    """One line per key, for --help and error messages."""
    out = []
    for key, (reader, lo, hi, what) in FAULT_KEYS.items():
        rng = "both|rx|tx" if reader is _direction else f"{_fmt(lo)}..{_fmt(hi)}"
        out.append(f"{key}={rng}: {what}")
    return "; ".join(out)


def parse_fault_spec(text: str | dict) -> FaultSpec:
    """``KEY=VALUE[,KEY=VALUE...]`` (or a manifest table of the same keys) as a FaultSpec;
    ValueError naming the key and its allowed range."""
    if isinstance(text, dict):
        items = [(str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in text.items()]
    else:
        items = []
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq or not key or not value:
                raise ValueError(f"fault: {part!r} is not KEY=VALUE (keys: {', '.join(FAULT_KEYS)})")
            items.append((key, value))
    if not items:
        raise ValueError(f"fault: no faults given; say KEY=VALUE[,KEY=VALUE...] with keys {', '.join(FAULT_KEYS)}")
    values: dict[str, object] = {}
    for key, raw in items:
        if key not in FAULT_KEYS:
            raise ValueError(f"fault: unknown key {key!r} (keys: {', '.join(FAULT_KEYS)})")
        if key in values:
            raise ValueError(f"fault: {key} given twice")
        reader, lo, hi, what = FAULT_KEYS[key]
        try:
            v = reader(raw)
        except (ValueError, OverflowError, IndexError):
            v = None
        if reader is _direction:
            if v is None:
                raise ValueError(f"fault: dir must be both, rx or tx, got {raw!r}")
        elif v is None or not (lo <= v <= hi) or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(f"fault: {key} must be within {_fmt(lo)}..{_fmt(hi)} ({what}), got {raw!r}")
        values[key] = v
    spec = FaultSpec(**values)
    if spec.jitter > spec.delay:
        raise ValueError(f"fault: jitter ({_fmt(spec.jitter)}) must not exceed delay ({_fmt(spec.delay)})")
    return spec
