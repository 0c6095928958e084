"""An in-memory backend for testing the wrappers: frames pushed in come out of read_batch,
frames written are kept in ``sent``."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable

from components.ethdriver.backends.base import Backend, new_counters


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self.inbox: deque[bytes] = deque()
        self.sent: list[bytes] = []
        self._r, self._w = os.pipe()
        self._counters = new_counters()

    def push(self, *frames: bytes) -> None:
        self.inbox.extend(frames)

    def fileno(self) -> int:
        return self._r

    def read_batch(self, max_frames: int = 256, max_bytes: int = 1 << 20) -> list[bytes]:
        out: list[bytes] = []
        while self.inbox and len(out) < max_frames:
            out.append(self.inbox.popleft())
        self._counters["rx_frames"] += len(out)
        return out

    def write_batch(self, frames: Iterable[bytes]) -> int:
        frames = list(frames)
        self.sent.extend(frames)
        self._counters["tx_frames"] += len(frames)
        return len(frames)

    def link_up(self) -> bool:
        return True

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1
