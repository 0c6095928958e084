from hypothesis import given
from hypothesis import strategies as st

from components.netstack.core.tcp import seq as sq

u32 = st.integers(0, sq.MASK)
near = st.integers(-(1 << 31) + 1, (1 << 31) - 1)     # distances the comparisons can see
ahead = st.integers(1, (1 << 31) - 1)


@given(u32, near)
def test_add_then_diff_gives_back_the_distance(a, d):
    assert sq.diff(sq.add(a, d), a) == d


@given(u32, ahead)
def test_a_number_ahead_by_less_than_half_the_space_is_greater(a, d):
    b = sq.add(a, d)
    assert sq.lt(a, b) and sq.le(a, b) and sq.gt(b, a) and sq.ge(b, a)
    assert not (sq.gt(a, b) or sq.ge(a, b) or sq.lt(b, a) or sq.le(b, a))


@given(u32)
def test_equal_numbers_are_le_and_ge_but_not_lt_or_gt(a):
    assert sq.le(a, a) and sq.ge(a, a) and not sq.lt(a, a) and not sq.gt(a, a)


@given(u32, u32)
def test_exactly_one_of_lt_eq_gt_holds(a, b):
    assert [sq.lt(a, b), a == b, sq.gt(a, b)].count(True) == 1 or sq.diff(a, b) == -(1 << 31)


@given(u32, st.integers(0, 1 << 30), st.integers(-(1 << 30), 1 << 30))
def test_in_window_is_the_linear_check_shifted_by_the_start(start, size, off):
    x = sq.add(start, off)
    assert sq.in_window(x, start, size) == (0 <= off < size)


@given(u32, st.integers(0, 1 << 30), st.integers(-(1 << 30), 1 << 30))
def test_between_is_inclusive_at_both_ends(lo, length, off):
    hi = sq.add(lo, length)
    assert sq.between(lo, sq.add(lo, off), hi) == (0 <= off <= length)


def test_comparisons_wrap_at_2_to_the_32():
    assert sq.lt(0xFFFFFFF0, 0x10)
    assert sq.add(0xFFFFFFFF, 1) == 0
    assert sq.in_window(2, 0xFFFFFFFE, 10) and not sq.in_window(8, 0xFFFFFFFE, 10)
    assert not sq.in_window(0, 0, 0)
