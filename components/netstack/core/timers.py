"""Keyed deadlines: one pending deadline per key, earliest first.

A heap with lazy deletion; the heap is rebuilt when stale items outnumber live ones, so its
size stays bounded by a small multiple of the live keys.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Hashable


class Deadlines:
    def __init__(self) -> None:
        self._when: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._tie = itertools.count()

    def __len__(self) -> int:
        return len(self._when)

    def set(self, key: Hashable, when: float | None) -> None:
        if when is None:
            self.cancel(key)
            return
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._tie), key))
        if len(self._heap) > 4 * len(self._when) + 64:
            self._heap = [(w, next(self._tie), k) for k, w in self._when.items()]
            heapq.heapify(self._heap)

    def cancel(self, key: Hashable) -> None:
        self._when.pop(key, None)

    def get(self, key: Hashable) -> float | None:
        return self._when.get(key)

    def _clean_top(self) -> None:
        while self._heap:
            when, _, key = self._heap[0]
            if self._when.get(key) == when:
                return
            heapq.heappop(self._heap)

    def next(self) -> float | None:
        self._clean_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Keys whose deadline is <= now, earliest first; they are removed."""
        due = []
        while True:
            self._clean_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._when[key]
            due.append(key)
