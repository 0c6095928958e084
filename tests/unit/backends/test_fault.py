"""FaultInjector: seeded drops and corruption, in both directions."""

from __future__ import annotations

import pytest

from components.ethdriver.backends.fault import FaultInjector

from ._memory import MemoryBackend


def frames(n: int, size: int = 64) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def test_drop_rate_is_statistically_close_on_both_directions():
    inner = MemoryBackend()
    f = FaultInjector(inner, drop_rate=0.3, seed=1)
    try:
        sent = frames(10000)
        assert f.write_batch(sent) == 10000  # lost on the wire, still accepted
        assert 6700 <= len(inner.sent) <= 7300
        assert set(inner.sent) <= set(sent)
        inner.push(*sent)
        got = []
        while batch := f.read_batch():
            got += batch
        assert 6700 <= len(got) <= 7300
        c = f.counters()
        assert c["tx_fault_dropped"] == 10000 - len(inner.sent)
        assert c["rx_fault_dropped"] == 10000 - len(got)
    finally:
        f.close()


def test_same_seed_gives_the_same_faults():
    def run() -> list[bytes]:
        inner = MemoryBackend()
        f = FaultInjector(inner, drop_rate=0.2, corrupt_rate=0.2, seed=42)
        f.write_batch(frames(500))
        f.close()
        return inner.sent
    assert run() == run()


def test_corruption_changes_exactly_one_byte_and_keeps_length():
    inner = MemoryBackend()
    f = FaultInjector(inner, corrupt_rate=1.0, seed=7)
    try:
        sent = frames(200)
        f.write_batch(sent)
        assert len(inner.sent) == 200
        for before, after in zip(sent, inner.sent):
            assert len(before) == len(after)
            assert sum(a != b for a, b in zip(before, after)) == 1
        assert f.counters()["tx_fault_corrupted"] == 200
    finally:
        f.close()


def test_direction_flags_and_size_limit():
    inner = MemoryBackend()
    f = FaultInjector(inner, drop_rate=1.0, tx=False, seed=3)
    try:
        assert f.write_batch(frames(5)) == 5 and len(inner.sent) == 5
        inner.push(*frames(5))
        assert f.read_batch() == []
    finally:
        f.close()
    inner = MemoryBackend()
    f = FaultInjector(inner, max_frame_len=100)
    try:
        f.write_batch([b"x" * 100, b"y" * 101])
        assert inner.sent == [b"x" * 100]
    finally:
        f.close()


def test_rates_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError):
        FaultInjector(MemoryBackend(), drop_rate=1.5)
