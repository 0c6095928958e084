"""A backend that wraps another and records every frame, both directions, in a classic pcap
file (after smoltcp's ``phy/pcap_writer.rs``).

Received frames are recorded as read; transmitted frames as handed to the backend, before any
drop in the kernel, as tcpdump on the egress side would show them. Timestamps are wall-clock
seconds from an injectable ``clock`` (time.time by default: pcap readers expect the epoch).
A backend with offloads prefixes each frame with its virtio-net header; the pcap gets the
Ethernet frame without it (a GSO super-frame is recorded whole, as tcpdump shows one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

from components.netstack.wire.pcap import LINKTYPE_ETHERNET, PcapWriter

from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, MAX_FRAME_LEN, Backend, BackendWrapper


class PcapCapture(BackendWrapper):
    def __init__(self, inner: Backend, fileobj: BinaryIO, *, rx: bool = True, tx: bool = True,
                 clock: Callable[[], float] = time.time, flush_each_batch: bool = True) -> None:
        super().__init__(inner)
        self.writer = PcapWriter(fileobj, linktype=LINKTYPE_ETHERNET, snaplen=MAX_FRAME_LEN)
        self.rx = rx
        self.tx = tx
        self._clock = clock
        self._flush = flush_each_batch
        self._captured = 0

    def _record(self, frames: list[bytes]) -> None:
        ts = self._clock()
        write = self.writer.write
        skip = self.inner.frame_prefix_len
        for frame in frames:
            write(memoryview(frame)[skip:] if skip else frame, ts)
        self._captured += len(frames)
        if self._flush:
            self.writer.flush()

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        frames = self.inner.read_batch(max_frames, max_bytes)
        if self.rx and frames:
            self._record(frames)
        return frames

    def write_batch(self, frames: Iterable[bytes]) -> int:
        if self.tx:
            frames = list(frames)
            if frames:
                self._record(frames)
        return self.inner.write_batch(frames)

    def counters(self) -> dict[str, int]:
        out = self.inner.counters()
        out["captured_frames"] = self._captured
        return out
