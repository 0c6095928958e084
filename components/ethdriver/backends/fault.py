"""A backend that wraps another and drops, corrupts or truncates frames (after smoltcp's
``phy/fault_injector.rs``), for chaos tests and for proving the stack survives a bad link.

Faults apply to both directions unless ``rx``/``tx`` say otherwise; a seed makes a run
repeatable. Delay is deliberately absent: a delayed frame must be released by a timer, and a
backend is driven by fd readiness; delay belongs in a netem qdisc on a TAP or in the driver.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, Backend, BackendWrapper


class FaultInjector(BackendWrapper):
    def __init__(self, inner: Backend, *, drop_rate: float = 0.0, corrupt_rate: float = 0.0,
                 max_frame_len: int | None = None, rx: bool = True, tx: bool = True,
                 seed: int | None = None) -> None:
        for name, rate in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        super().__init__(inner)
        self.drop_rate = drop_rate
        self.corrupt_rate = corrupt_rate
        self.max_frame_len = max_frame_len  # longer frames are dropped, like an MTU-limited link
        self.rx = rx
        self.tx = tx
        self._rng = random.Random(seed)
        self._faults = dict.fromkeys(
            ("rx_fault_dropped", "rx_fault_corrupted", "tx_fault_dropped", "tx_fault_corrupted"), 0)

    def _apply(self, frames: Iterable[bytes], direction: str) -> list[bytes]:
        rng = self._rng
        drop, corrupt, limit = self.drop_rate, self.corrupt_rate, self.max_frame_len
        out: list[bytes] = []
        dropped = corrupted = 0
        for frame in frames:
            if (limit is not None and len(frame) > limit) or (drop and rng.random() < drop):
                dropped += 1
                continue
            if corrupt and frame and rng.random() < corrupt:
                buf = bytearray(frame)
                # XOR with a non-zero byte: the frame always changes, as a bit error would.
                buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
                frame = bytes(buf)
                corrupted += 1
            out.append(frame)
        self._faults[f"{direction}_fault_dropped"] += dropped
        self._faults[f"{direction}_fault_corrupted"] += corrupted
        return out

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        frames = self.inner.read_batch(max_frames, max_bytes)
        return self._apply(frames, "rx") if self.rx else frames

    def write_batch(self, frames: Iterable[bytes]) -> int:
        if not self.tx:
            return self.inner.write_batch(frames)
        frames = list(frames)
        kept = self._apply(frames, "tx")
        # A frame lost on the wire was still accepted from the caller's point of view.
        return self.inner.write_batch(kept) + (len(frames) - len(kept))

    def counters(self) -> dict[str, int]:
        out = self.inner.counters()
        out.update(self._faults)
        return out
