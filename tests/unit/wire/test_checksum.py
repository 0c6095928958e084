"""The fast Internet checksum equals the RFC 1071 word loop, including its corner cases."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from components.netstack.wire.checksum import (checksum_adjust, internet_checksum, naive_checksum,
                                               ones_complement_sum, pseudo_header_sum)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=2000), st.integers(min_value=0, max_value=0x3FFFF))
def test_fast_checksum_equals_naive_loop_on_random_data(data, initial):
    assert internet_checksum(data, initial) == naive_checksum(data, initial)
    assert internet_checksum(memoryview(data), initial) == naive_checksum(data, initial)
    assert ones_complement_sum(data, initial) ^ 0xFFFF == naive_checksum(data, initial)


@given(st.integers(min_value=0, max_value=700), st.sampled_from([0x00, 0xFF]))
def test_all_zero_and_all_ones_buffers_match_naive(size, fill):
    data = bytes([fill]) * size
    assert internet_checksum(data) == naive_checksum(data)


def test_nonzero_sum_that_is_a_multiple_of_0xffff_gives_checksum_zero_not_0xffff():
    # 0xFFFF alone, and 0x0001 + 0xFFFE: the folded sums are 0xFFFF ("negative zero").
    for data in (b"\xff\xff", b"\x00\x01\xff\xfe", b"\xff\xff" * 7):
        assert ones_complement_sum(data) == 0xFFFF
        assert internet_checksum(data) == 0 == naive_checksum(data)


def test_all_zero_data_gives_checksum_0xffff():
    assert internet_checksum(b"") == 0xFFFF == naive_checksum(b"")
    assert internet_checksum(b"\0" * 20) == 0xFFFF


def test_odd_length_is_padded_on_the_right():
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00") == 0xFEFF


def test_rfc1071_worked_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (with end-around carry).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0xDDF2 ^ 0xFFFF


def _naive_pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + b"\0\0\0" + bytes((proto,))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
                 st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))),
       st.integers(0, 255), st.binary(max_size=300))
def test_pseudo_header_sum_matches_the_explicit_pseudo_header(addrs, proto, body):
    src, dst = addrs
    expected = naive_checksum(_naive_pseudo(src, dst, proto, len(body)) + body)
    assert internet_checksum(body, pseudo_header_sum(src, dst, proto, len(body))) == expected


def test_pseudo_header_sum_takes_packed_stdlib_addresses():
    v4 = pseudo_header_sum(IPv4Address("10.0.0.1").packed, IPv4Address("10.0.0.2").packed, 17, 8)
    v6 = pseudo_header_sum(IPv6Address("fe80::1").packed, IPv6Address("fe80::2").packed, 17, 8)
    assert internet_checksum(b"", v4) == naive_checksum(_naive_pseudo(
        IPv4Address("10.0.0.1").packed, IPv4Address("10.0.0.2").packed, 17, 8))
    assert internet_checksum(b"", v6) == naive_checksum(_naive_pseudo(
        IPv6Address("fe80::1").packed, IPv6Address("fe80::2").packed, 17, 8))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=60).filter(lambda d: len(d) % 2 == 0), st.data())
def test_incremental_update_equals_recomputing_the_checksum(data, draw):
    # RFC 1624: the incremental result may differ from a full recompute only in the
    # 0x0000/0xFFFF representation of zero, which cannot occur for a non-zero sum.
    i = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    new_word = draw.draw(st.integers(0, 0xFFFF))
    changed = data[:i] + new_word.to_bytes(2, "big") + data[i + 2:]
    adjusted = checksum_adjust(internet_checksum(data), int.from_bytes(data[i:i + 2], "big"), new_word)
    full = internet_checksum(changed)
    assert adjusted == full or {adjusted, full} == {0, 0xFFFF}
