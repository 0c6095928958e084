"""RFC 8415 §15 retransmission arithmetic on its own, with a fake clock."""

from __future__ import annotations

import math
import random

import pytest

from components.dhcpd.dhcpv6_retransmit import Retransmission


def schedule(r: Retransmission, seed: int = 1, limit: int = 50) -> list[float]:
    """Transmission times until the exchange fails (or `limit` transmissions)."""
    rng = random.Random(seed)
    times = []
    now = r.next_at
    while len(times) < limit and not r.failed(now):
        r.transmitted(now, rng)
        times.append(now)
        now = r.next_at
    return times


@pytest.mark.parametrize("seed", range(20))
def test_first_rt_is_irt_randomised_by_ten_percent_and_doubles_after(seed):
    r = Retransmission(irt=10.0, mrt=600.0)
    times = schedule(r, seed, limit=12)
    rts = [b - a for a, b in zip(times, times[1:])]
    assert 9.0 <= rts[0] <= 11.0
    for prev, rt in zip(rts, rts[1:]):
        assert min(1.9 * prev, 540.0) - 1e-9 <= rt <= 2.1 * prev + 1e-9
        assert rt <= 660.0  # MRT + RAND*MRT at most


@pytest.mark.parametrize("seed", range(50))
def test_solicit_first_rt_is_strictly_above_irt(seed):
    r = Retransmission(irt=1.0, mrt=3600.0, positive_first=True)
    r.transmitted(0.0, random.Random(seed))
    assert 1.0 < r.rt <= 1.1


def test_mrc_ends_the_exchange_after_that_many_transmissions_and_its_last_rt():
    r = Retransmission(irt=1.0, mrc=4)
    times = schedule(r)
    assert len(times) == 4 and r.failed(r.next_at) and not r.failed(r.next_at - 1e-6)


def test_mrd_cuts_the_last_rt_short_and_ends_the_exchange():
    r = Retransmission(irt=10.0, mrt=600.0, deadline=100.0)
    times = schedule(r)
    assert times[-1] < 100.0 and r.next_at == 100.0 and r.failed(100.0)


def test_without_mrc_and_mrd_it_never_fails():
    r = Retransmission(irt=1.0, mrt=5.0)
    assert len(schedule(r, limit=30)) == 30 and r.deadline == math.inf


def test_elapsed_time_is_hundredths_since_the_first_transmission_capped():
    r = Retransmission(irt=1.0, next_at=5.0)
    assert r.elapsed_time(5.0) == 0
    r.transmitted(5.0, random.Random(0))
    assert r.elapsed_time(6.234) == 123
    assert r.elapsed_time(5.0 + 655.36) == 0xFFFF
