"""Congestion control, pluggable: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438).

The connection owns `cwnd` and `ssthresh` (bytes) and the loss-recovery machinery (fast
retransmit, SACK, the RTO); an algorithm only decides how the window grows on an ACK and
how far it falls on a congestion event. Each keeps its own small state, which `snapshot()`
and `restore()` carry across a hand-over.

    on_ack(c, acked, now)      new data acknowledged outside fast recovery
    on_congestion(c, now)      fast retransmit: set c.ssthresh (the caller sets cwnd)
    on_rto(c, now)             retransmission timeout: set c.ssthresh and c.cwnd
"""

from __future__ import annotations

from typing import Any


class NewReno:
    name = "newreno"

    def __init__(self) -> None:
        self.acked_bytes = 0            # RFC 5681 §3.1: byte counting in congestion avoidance

    def on_ack(self, c: Any, acked: int, now: float) -> None:
        mss = c.send_mss
        if c.cwnd < c.ssthresh:
            # RFC 5681 §3.1 slow start, with RFC 3465's L = 2*SMSS (a delayed ACK covers two)
            c.cwnd += min(acked, 2 * mss)
        else:
            # congestion avoidance: one SMSS per cwnd of data acknowledged
            self.acked_bytes += acked
            if self.acked_bytes >= c.cwnd:
                self.acked_bytes -= c.cwnd
                c.cwnd += mss

    def on_congestion(self, c: Any, now: float) -> None:
        # RFC 5681 §3.2 eq. 4 (RFC 6582 §3.2 step 2): ssthresh = max(FlightSize / 2, 2*SMSS)
        c.ssthresh = max(c.flight_size() // 2, 2 * c.send_mss)
        self.acked_bytes = 0

    def on_rto(self, c: Any, now: float) -> None:
        # RFC 5681 §3.1 eq. 4, and cwnd = 1 segment (the loss window)
        c.ssthresh = max(c.flight_size() // 2, 2 * c.send_mss)
        c.cwnd = c.send_mss
        self.acked_bytes = 0

    def snapshot(self) -> dict:
        return {"acked_bytes": self.acked_bytes}

    def restore(self, d: dict, shift: float = 0.0) -> None:
        v = d["acked_bytes"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"newreno: acked_bytes {v!r}")
        self.acked_bytes = v


class Cubic:
    """RFC 9438. Window arithmetic in segments (floats), as the RFC writes it."""
    name = "cubic"
    C = 0.4                              # RFC 9438 §5.1
    BETA = 0.7                           # §4.6: multiplicative decrease factor
    ALPHA = 3 * (1 - BETA) / (1 + BETA)  # §4.3: the Reno-friendly additive increase

    def __init__(self) -> None:
        self.w_max = 0.0                 # window (segments) just before the last reduction
        self.k = 0.0                     # seconds the cubic takes back to w_max
        self.epoch_start: float | None = None   # start of this congestion-avoidance stage
        self.w_est = 0.0                 # §4.3: the Reno-friendly estimate (segments)
        self.cwnd_frac = 0.0             # sub-byte growth carried between ACKs
        self.ss_acked = 0                # slow start, as NewReno

    def on_ack(self, c: Any, acked: int, now: float) -> None:
        mss = c.send_mss
        if c.cwnd < c.ssthresh:
            c.cwnd += min(acked, 2 * mss)            # §4.10: slow start as RFC 5681
            return
        cwnd = c.cwnd / mss
        if self.epoch_start is None:
            # §4.2: a new congestion-avoidance stage starts
            self.epoch_start = now
            if cwnd < self.w_max:
                self.k = ((self.w_max - cwnd) / self.C) ** (1 / 3)
            else:
                self.k = 0.0
                self.w_max = cwnd
            self.w_est = cwnd
        t = now - self.epoch_start
        rtt = c.rto.srtt or 0.1
        # §4.2 eq. 1 at t + RTT, kept within [cwnd, 1.5 cwnd] (§4.4)
        target = self.C * (t + rtt - self.k) ** 3 + self.w_max
        target = min(max(target, cwnd), 1.5 * cwnd)
        segs = acked / mss
        # §4.3 eq. 4: the estimate of what Reno would have by now
        self.w_est += self.ALPHA * segs / cwnd
        w_cubic_now = self.C * (t - self.k) ** 3 + self.w_max
        if w_cubic_now < self.w_est:
            grow = (self.w_est - cwnd) * mss          # Reno-friendly region (§4.3)
        else:
            grow = (target - cwnd) / cwnd * segs * mss   # concave/convex regions (§4.4, §4.5)
        self.cwnd_frac += max(grow, 0.0)
        whole = int(self.cwnd_frac)
        if whole:
            c.cwnd += whole
            self.cwnd_frac -= whole

    def _reduce(self, c: Any) -> None:
        mss = c.send_mss
        cwnd = c.cwnd / mss
        # §4.7 fast convergence: a flow that lost before reaching its old maximum yields
        if cwnd < self.w_max:
            self.w_max = cwnd * (1 + self.BETA) / 2
        else:
            self.w_max = cwnd
        # §4.6: ssthresh = cwnd * beta_cubic, at least 2 segments
        c.ssthresh = max(int(c.cwnd * self.BETA), 2 * mss)
        self.epoch_start = None
        self.cwnd_frac = 0.0

    def on_congestion(self, c: Any, now: float) -> None:
        self._reduce(c)

    def on_rto(self, c: Any, now: float) -> None:
        # §4.8: on a timeout, ssthresh as for a loss and cwnd = 1 segment
        self._reduce(c)
        c.cwnd = c.send_mss

    def snapshot(self) -> dict:
        return {"w_max": self.w_max, "k": self.k, "epoch_start": self.epoch_start,
                "w_est": self.w_est, "cwnd_frac": self.cwnd_frac}

    def restore(self, d: dict, shift: float = 0.0) -> None:
        for k in ("w_max", "k", "w_est", "cwnd_frac"):
            v = d[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1e12:
                raise ValueError(f"cubic: {k} {v!r}")
            setattr(self, k, float(v))
        e = d["epoch_start"]
        if e is not None and (not isinstance(e, (int, float)) or isinstance(e, bool)
                              or not -1e15 < e < 1e15):
            raise ValueError(f"cubic: epoch_start {e!r}")
        self.epoch_start = None if e is None else float(e) + shift


ALGORITHMS = {"newreno": NewReno, "cubic": Cubic}


def make(name: str) -> NewReno | Cubic:
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise ValueError(f"tcp: congestion control {name!r}; one of {sorted(ALGORITHMS)}") from None
