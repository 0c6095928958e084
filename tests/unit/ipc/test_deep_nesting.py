"""MessagePack nested deeper than the decoder's recursion limit is a bad message, never a RecursionError."""
import pytest

from ipc import errors
from ipc.decl import decode_raw, encode
from ipc.protocols.netstack import NETSTACK

DEEP = b"\x91" * 100_000 + b"\xc0"   # [[[[...nil...]]]] 100,000 levels


def test_decode_raw_of_a_deep_array_raises_bad_message():
    with pytest.raises(errors.BadMessage):
        decode_raw(DEEP)


def test_decode_raw_of_garbage_raises_bad_message():
    with pytest.raises(errors.BadMessage):
        decode_raw(b"\xc1")


def test_decode_raw_of_a_good_message_returns_it():
    assert decode_raw(encode([1, {"a": [2]}])) == [1, {"a": [2]}]


def test_deep_arguments_of_a_method_are_bad_message_not_recursion_error():
    method = NETSTACK.method_by_name["port_add"]
    # a map whose one value is the deep array: the typed decoder recurses into it
    body = b"\x81\xa4name" + DEEP
    with pytest.raises(errors.IpcError) as info:
        method.decode_args(body)
    assert info.value.code in ("bad_message", "invalid_argument")
