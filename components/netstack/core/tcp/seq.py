"""Sequence numbers: 32-bit, compared modulo 2**32 (RFC 9293 §3.4).

`a < b` means "b is ahead of a by less than half the space": the comparison is the sign of
the 32-bit difference. It is not transitive over more than 2**31, which is why TCP keeps its
windows far below that (no more than 2**30 even with window scaling, RFC 7323 §2.3).
"""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
_HALF = 1 << 31


def add(a: int, n: int) -> int:
    """a + n in sequence space (n may be negative)."""
    return (a + n) & MASK


def diff(a: int, b: int) -> int:
    """The signed distance a - b, in [-2**31, 2**31)."""
    return ((a - b + _HALF) & MASK) - _HALF


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def in_window(x: int, start: int, size: int) -> bool:
    """start <= x < start + size, modulo 2**32 (an empty window holds nothing)."""
    return 0 <= ((x - start) & MASK) < size


def between(lo: int, x: int, hi: int) -> bool:
    """lo <= x <= hi, modulo 2**32, for a range shorter than 2**31."""
    return ((x - lo) & MASK) <= ((hi - lo) & MASK)
