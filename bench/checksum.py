"""`./scripts/bench checksum`: the Internet checksum on every packet's path, beside its anchor.

qnet's checksum (the buffer as one big integer modulo 0xFFFF, computed in C by CPython) beside
the RFC 1071 loop in Python, on the same buffers in the same run.
"""
from __future__ import annotations

import sys
import time

from components.netstack.wire.checksum import internet_checksum, naive_checksum


def run(quick: bool = False) -> dict:
    rounds = 500 if quick else 5000
    out = {}
    for size in (64, 576, 1500, 9000):
        data = bytes((i * 7 + 3) & 0xFF for i in range(size))
        assert internet_checksum(data) == naive_checksum(data)
        res = {}
        for name, fn, n in (("qnet", internet_checksum, rounds), ("rfc1071_loop", naive_checksum, max(rounds // 20, 10))):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(data)
            res[name] = (time.perf_counter() - t0) / n * 1e6
        out[size] = res
    return out


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    res = run(quick)
    print(f"{'bytes':>6}  {'qnet us':>8}  {'RFC 1071 loop us':>16}  {'speed-up':>8}")
    for size, r in res.items():
        print(f"{size:>6}  {r['qnet']:>8.2f}  {r['rfc1071_loop']:>16.2f}  {r['rfc1071_loop'] / r['qnet']:>7.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
