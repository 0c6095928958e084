"""The retransmission timeout estimator of RFC 6298.

The caller feeds it only Karn-safe samples (RFC 6298 §3: never from a segment that was
retransmitted) and asks it to back off when the timer expires.
"""

from __future__ import annotations

ALPHA = 1 / 8
BETA = 1 / 4
K = 4


class RtoEstimator:
    def __init__(self, initial: float = 1.0, minimum: float = 0.2, maximum: float = 60.0,
                 granularity: float = 0.001) -> None:
        # RFC 6298 §2.4 says the RTO SHOULD be rounded up to 1 s; like Linux (TCP_RTO_MIN)
        # we take 200 ms, which the RFC itself expects to be revisited and which a LAN needs.
        self.minimum = minimum
        # RFC 6298 §2.5: a maximum MAY be placed on the RTO provided it is at least 60 s.
        self.maximum = maximum
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = initial                   # RFC 6298 §2.1: 1 s before any sample
        self.samples = 0

    def sample(self, r: float) -> None:
        """Take one round-trip measurement R (seconds)."""
        r = max(r, 0.0)
        if self.srtt is None:
            # RFC 6298 §2.2
            self.srtt = r
            self.rttvar = r / 2
        else:
            # RFC 6298 §2.3: RTTVAR first, with the old SRTT.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - r)  # type: ignore[operator]
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * r
        self.samples += 1
        # The minimum bounds the variance term, not the whole RTO (as Linux's tcp_rto_min
        # bounds mdev): with timestamps RTTVAR falls to a fraction of a millisecond, and an
        # RTO of SRTT + 1 ms would fire on every ACK the peer delays, a spurious time-out
        # that collapses cwnd on a long path. A larger RTO is always within RFC 6298 §2.
        self.rto = self._clamp(self.srtt + max(self.granularity, K * self.rttvar,  # type: ignore[operator]
                                               self.minimum))

    def back_off(self) -> None:
        # RFC 6298 §5.5: the host MUST set RTO <- RTO * 2 ("back off the timer").
        self.rto = self._clamp(self.rto * 2)

    def _clamp(self, rto: float) -> float:
        return min(max(rto, self.minimum), self.maximum)
