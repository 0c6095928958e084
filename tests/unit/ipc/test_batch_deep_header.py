"""A batch header nested deeper than the decoder's recursion limit is a bad message.

Before the header went through ``decode_raw``, msgspec's RecursionError escaped
``decode_header`` and, in a data channel, the receive loop it ran in.
"""
import time

import pytest
import zmq

from ipc import errors
from ipc.batch import decode_header, encode_batch
from ipc.channel import ProviderChannel
from ipc.protocols.device import DEVICE
from ipc.rpc import context

DEEP = b"\x91" * 100_000 + b"\xc0"                   # [[[[...nil...]]]] 100,000 levels
DEEP_FIRST = b"\x93" + DEEP + b"\x01\x00"            # [<deep>, 1, 0]: the right length, a deep element


@pytest.mark.parametrize("header", [DEEP, DEEP_FIRST], ids=["deep-array", "deep-first-element"])
def test_a_deeply_nested_batch_header_raises_bad_message(header):
    with pytest.raises(errors.BadMessage, match="nested too deeply"):
        decode_header(header)


def test_a_deeply_nested_batch_header_is_counted_in_rx_bad_and_the_next_batch_passes(tmp_run):
    provider = ProviderChannel(DEVICE, f"ipc://{tmp_run}/dev.data")
    raw = context().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.IDENTITY, b"evil")
    raw.connect(f"ipc://{tmp_run}/dev.data")
    try:
        raw.send_multipart([b"B", DEEP, b"\0\0\0\0", b""])
        raw.send_multipart([b"B"] + encode_batch("rx", 2, [b"good"]))   # ordered after the deep one
        batches = []
        deadline = time.monotonic() + 3.0
        while not batches:
            assert time.monotonic() < deadline, "the good batch never arrived"
            provider.socket.poll(20)
            provider.receive(on_batch=lambda *a: batches.append(a), on_event=lambda *a: None)
        assert batches == [(b"evil", "rx", [b"good"])]
        assert provider.counters["rx_bad"] == 1
        assert "nested too deeply" in provider.last_error
    finally:
        raw.close(linger=0)
        provider.close()
