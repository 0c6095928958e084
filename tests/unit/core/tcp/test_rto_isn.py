from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.netstack.core.tcp.isn import initial_sequence_number
from components.netstack.core.tcp.rto import RtoEstimator

KEY = b"0123456789abcdef"
L, R = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")


def test_rto_is_one_second_before_any_sample():
    assert RtoEstimator().rto == 1.0


def test_first_sample_sets_srtt_and_half_of_it_as_rttvar():
    e = RtoEstimator()
    e.sample(0.5)
    assert (e.srtt, e.rttvar, e.rto) == (0.5, 0.25, 1.5)     # RFC 6298 §2.2


def test_later_samples_smooth_with_alpha_one_eighth_and_beta_one_quarter():
    e = RtoEstimator()
    e.sample(0.5)
    e.sample(1.0)
    assert e.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 0.5)
    assert e.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 1.0)
    assert e.rto == pytest.approx(e.srtt + 4 * e.rttvar)


def test_rto_is_at_least_200ms_like_linux():
    e = RtoEstimator()
    for _ in range(20):
        e.sample(0.001)
    assert e.rto == pytest.approx(0.201)


def test_a_steady_long_path_keeps_200ms_of_slack_above_srtt():
    # With timestamps RTTVAR decays to almost nothing on a steady 600 ms path; the RTO must
    # still leave room for a delayed ACK, or every one of them is a spurious time-out.
    e = RtoEstimator()
    for _ in range(200):
        e.sample(0.600)
    assert e.rttvar < 0.001
    assert e.rto == pytest.approx(0.8)


def test_back_off_doubles_up_to_the_maximum_and_a_sample_recomputes():
    e = RtoEstimator(maximum=60.0)
    rtos = []
    for _ in range(8):
        e.back_off()
        rtos.append(e.rto)
    assert rtos == [2, 4, 8, 16, 32, 60, 60, 60]
    e.sample(0.1)
    assert e.rto == pytest.approx(0.3)


def test_isn_is_the_same_for_the_same_inputs_and_differs_per_four_tuple():
    a = initial_sequence_number(KEY, L, 1000, R, 80, 5.0)
    assert a == initial_sequence_number(KEY, L, 1000, R, 80, 5.0)
    others = {initial_sequence_number(KEY, L, p, R, 80, 5.0) for p in range(1001, 1101)}
    assert a not in others and len(others) == 100
    assert a != initial_sequence_number(b"another key 16 b", L, 1000, R, 80, 5.0)


@given(st.floats(0, 1e5), st.floats(0, 1000))
def test_isn_of_one_four_tuple_advances_with_a_4_microsecond_clock(t, dt):
    a = initial_sequence_number(KEY, L, 1000, R, 80, t)
    b = initial_sequence_number(KEY, L, 1000, R, 80, t + dt)
    assert (b - a) % (1 << 32) == (int((t + dt) * 250_000) - int(t * 250_000)) % (1 << 32)


def test_isn_works_for_ipv6_and_refuses_a_short_key():
    v6 = IPv6Address("2001:db8::1")
    assert 0 <= initial_sequence_number(KEY, v6, 1, v6, 2, 0.0) < 1 << 32
    with pytest.raises(ValueError):
        initial_sequence_number(b"short", L, 1, R, 2, 0.0)
