"""Frame batches: one blob plus an offsets array, checked on the way in."""
import struct as pystruct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc import errors
from ipc.batch import decode_header, encode_batch, pack_frames, unpack_frames
from ipc.decl import encode


def offsets(*values: int) -> bytes:
    return pystruct.pack(f"<{len(values)}I", *values)


@given(st.lists(st.binary(max_size=200), max_size=40))
@settings(max_examples=200, deadline=None)
def test_pack_then_unpack_returns_the_same_frames(frames):
    offs, blob = pack_frames(frames)
    assert len(offs) == 4 * (len(frames) + 1)
    assert blob == b"".join(frames)
    assert unpack_frames(offs, blob, len(frames)) == frames
    assert unpack_frames(memoryview(offs), memoryview(blob), len(frames)) == frames


def test_empty_batch_and_zero_length_frames_round_trip():
    assert pack_frames([]) == (offsets(0), b"")
    assert unpack_frames(offsets(0), b"", 0) == []
    frames = [b"", b"a", b"", b"", b"bc", b""]
    offs, blob = pack_frames(frames)
    assert unpack_frames(offs, blob, len(frames)) == frames


def test_encode_batch_makes_header_offsets_and_blob():
    parts = encode_batch("rx", 7, [b"ab", b"c"])
    assert len(parts) == 3
    assert decode_header(parts[0]) == ("rx", 7, 2)
    assert parts[1] == offsets(0, 2, 3) and parts[2] == b"abc"


@pytest.mark.parametrize("offs, blob, count, why", [
    (offsets(0, 2), b"abc", 1, "offsets end before the blob"),
    (offsets(0, 4), b"abc", 1, "offsets end past the blob"),
    (offsets(1, 3), b"abc", 1, "offsets start after 0"),
    (offsets(0, 2, 1, 3), b"abc", 3, "an offset goes backwards"),
    (offsets(0, 3), b"abc", 2, "count disagrees with the offsets"),
    (offsets(0, 3)[:-1], b"abc", 1, "a truncated offsets array"),
    (b"", b"", 0, "no offsets at all"),
    (offsets(0, 70000), b"x" * 70000, 1, "a frame longer than max_frame"),
    (offsets(0, 0xFFFFFFFF), b"abc", 1, "a huge offset"),
])
def test_bad_offsets_raise_bad_message(offs, blob, count, why):
    with pytest.raises(errors.BadMessage):
        unpack_frames(offs, blob, count)


def test_max_frame_is_the_callers_bound():
    assert unpack_frames(offsets(0, 10), b"x" * 10, 1, max_frame=10) == [b"x" * 10]
    with pytest.raises(errors.BadMessage):
        unpack_frames(offsets(0, 11), b"x" * 11, 1, max_frame=10)


@pytest.mark.parametrize("header", [
    b"\xc1", b"", encode(["rx", 1]), encode(["rx", 1, 2, 3]), encode([1, 1, 1]), encode(["rx", "1", 1]),
    encode(["rx", 1, -1]), encode({"stream": "rx"}), encode(["rx", 1, 1.0]),
])
def test_bad_batch_headers_raise_bad_message(header):
    with pytest.raises(errors.BadMessage):
        decode_header(header)
