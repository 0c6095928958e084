"""Counters grouped by owner ("ipv4", "udp", "dev:eth0", ...)."""

from __future__ import annotations

from collections import Counter


class CounterSet:
    def __init__(self) -> None:
        self._groups: dict[str, Counter[str]] = {}

    def group(self, name: str) -> Counter[str]:
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = Counter()
        return g

    def inc(self, group: str, name: str, n: int = 1) -> None:
        self.group(group)[name] += n

    def drop_group(self, name: str) -> Counter[str] | None:
        return self._groups.pop(name, None)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {g: dict(c) for g, c in self._groups.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, int]]) -> "CounterSet":
        cs = cls()
        for g, c in data.items():
            cs._groups[str(g)] = Counter({str(k): int(v) for k, v in c.items()})
        return cs
