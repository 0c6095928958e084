"""Retransmission of a DHCPv6 client's message exchange (RFC 8415 §15), sans-I/O.

A `Retransmission` is told when its message went out and says when the next transmission is
due and whether the exchange has failed; it knows nothing of messages. The client keeps one
per exchange and owns the randomness (any `random.Random`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

RAND_RANGE = 0.1  # §15: RAND is uniform in -0.1..+0.1


@dataclass(slots=True)
class Retransmission:
    """IRT, MRT (0: no cap), MRC (0: no count limit) as in §15; MRD as the absolute time
    `deadline` (math.inf: none). `next_at` starts as the time of the first transmission,
    which may be delayed (§18.2.1 SOL_MAX_DELAY)."""
    irt: float
    mrt: float = 0.0
    mrc: int = 0
    deadline: float = math.inf
    next_at: float = 0.0
    # §15: for the first Solicit, RAND MUST be strictly greater than 0 so that the client
    # waits at least IRT for Advertises.
    positive_first: bool = False
    started: float = 0.0
    rt: float = 0.0
    count: int = 0

    def transmitted(self, now: float, rng: random.Random) -> None:
        """The message went out at `now`: compute the next RT (§15)."""
        if self.count == 0:
            self.started = now
            rand = RAND_RANGE * (1.0 - rng.random()) if self.positive_first \
                else rng.uniform(-RAND_RANGE, RAND_RANGE)
            self.rt = self.irt + rand * self.irt
        else:
            self.rt = 2 * self.rt + rng.uniform(-RAND_RANGE, RAND_RANGE) * self.rt
        if self.mrt and self.rt > self.mrt:
            self.rt = self.mrt + rng.uniform(-RAND_RANGE, RAND_RANGE) * self.mrt
        self.count += 1
        # §15: the exchange ends at MRD even if an RT would reach past it.
        self.next_at = min(now + self.rt, self.deadline)

    def failed(self, now: float) -> bool:
        """§15: the exchange fails once the message went out MRC times and its last RT ran
        out, or once MRD has passed."""
        if self.count == 0:
            return False
        return now >= self.deadline or (0 < self.mrc <= self.count and now >= self.next_at)

    def elapsed_time(self, now: float) -> int:
        """The Elapsed Time option value (§21.9): hundredths of a second since the first
        transmission, 0xffff for anything longer."""
        if self.count == 0:
            return 0
        return min(0xFFFF, int(round((now - self.started) * 100)))
