"""Data channels: frame batches and events between a provider (ROUTER) and its users (DEALER)."""
import time

import pytest
import zmq

from ipc import errors
from ipc.batch import encode_batch
from ipc.channel import ProviderChannel, UserChannel
from ipc.decl import encode
from ipc.protocols.device import DEVICE
from ipc.rpc import context

WAIT = 3.0


def pump(channel, until, timeout=WAIT, **callbacks):
    """Call channel.receive until ``until()`` holds; bounded."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for the channel"
        channel.socket.poll(20)
        channel.receive(**callbacks)


@pytest.fixture
def provider(tmp_run):
    ch = ProviderChannel(DEVICE, f"ipc://{tmp_run}/dev.data")
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def users(tmp_run):
    made = []

    def make(identity=b"p0", **kw):
        u = UserChannel(DEVICE, f"ipc://{tmp_run}/dev.data", identity, **kw)
        made.append(u)
        return u

    try:
        yield make
    finally:
        for u in made:
            u.close()


class Inbox:
    def __init__(self):
        self.batches, self.events = [], []

    def on_batch(self, *a):
        self.batches.append(a)

    def on_event(self, *a):
        self.events.append(a)


def test_batches_arrive_intact_in_both_directions(provider, users):
    user = users(b"p0")
    frames = [b"", b"\x00" * 60, bytes(range(256)) * 5, b"x"]
    inbox = Inbox()
    assert user.send_batch("rx", frames)
    pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
    assert inbox.batches == [(b"p0", "rx", frames)]
    assert provider.counters["rx_batches"] == 1 and provider.counters["rx_frames"] == 4

    back = Inbox()
    assert provider.send_batch(b"p0", "tx", frames[::-1])
    assert provider.send_batch(b"p0", "tx", [])
    pump(user, lambda: len(back.batches) == 2, on_batch=back.on_batch, on_event=back.on_event)
    assert back.batches == [("tx", frames[::-1]), ("tx", [])]
    assert user.counters["rx_bad"] == 0


def test_events_are_validated_by_sender_and_receiver(provider, users):
    user = users(b"p0")
    inbox = Inbox()
    assert user.send_event("link", port="p0", up=True, mtu=1500)
    pump(provider, lambda: inbox.events, on_batch=inbox.on_batch, on_event=inbox.on_event)
    peer, name, value = inbox.events[0]
    assert (peer, name, value.port, value.up, value.mtu) == (b"p0", "link", "p0", True, 1500)
    with pytest.raises(errors.InvalidArgument):
        user.send_event("link", port="p0", up=True, mtu=10)       # below the declared minimum
    with pytest.raises(errors.InvalidArgument):
        user.send_event("nosuch")
    with pytest.raises(errors.InvalidArgument):
        user.send_batch("nosuch", [b"x"])
    back = Inbox()
    assert provider.send_event(b"p0", "resync")
    pump(user, lambda: back.events, on_batch=back.on_batch, on_event=back.on_event)
    assert back.events[0][0] == "resync"


def test_sending_to_an_unknown_user_is_a_counted_drop(provider):
    assert provider.send_batch(b"nobody", "tx", [b"a", b"b"]) is False
    assert provider.counters["tx_dropped_batches"] == 1 and provider.counters["tx_dropped_frames"] == 2


def test_a_full_queue_counts_drops_instead_of_blocking(provider, users):
    user = users(b"p0", hwm=4)
    inbox = Inbox()
    assert user.send_batch("rx", [b"hello"])  # let the provider learn the user's routing id
    pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
    frame = b"\xee" * 1500
    t0 = time.monotonic()
    sent = dropped = 0
    for _ in range(20000):  # the user never reads: its queue and the socket buffers fill up
        if provider.send_batch(b"p0", "tx", [frame] * 8):
            sent += 1
        else:
            dropped += 1
            if dropped >= 50:
                break
    assert time.monotonic() - t0 < 10.0, "the sender blocked"
    assert dropped >= 50, f"no drops after {sent} batches"
    assert provider.counters["tx_dropped_batches"] == dropped
    assert provider.counters["tx_dropped_frames"] == 8 * dropped
    assert provider.counters["tx_batches"] == sent


def test_a_user_with_no_provider_counts_drops_instead_of_blocking(tmp_run):
    user = UserChannel(DEVICE, f"ipc://{tmp_run}/nobody.data", b"p0", hwm=2)
    try:
        t0 = time.monotonic()
        results = [user.send_batch("rx", [b"x" * 100]) for _ in range(100)]
        assert time.monotonic() - t0 < 5.0
        assert results.count(False) > 0
        assert user.counters["tx_dropped_batches"] == results.count(False)
    finally:
        user.close()


@pytest.mark.parametrize("parts", [
    [b"B"],                                                            # too few parts
    [b"B", encode(["rx", 1, 1]), b"\0\0\0\0", b"x"],                   # offsets do not cover the blob
    [b"B", b"\xc1", b"\0\0\0\0", b""],                                 # header not MessagePack
    [b"B", encode(["nosuch", 1, 0]), b"\0\0\0\0", b""],                # undeclared stream
    [b"B", encode(["rx", 1, 2000]), b"\0" * 8004, b""],                # more frames than max_batch
    [b"E", encode(["link"]), encode({"port": "p0"})],                  # event missing fields
    [b"E", encode(["nosuch"]), encode({})],                            # undeclared event
    [b"E", encode("link"), encode({})],                                # event header of the wrong shape
    [b"E", encode(["link"])],                                          # event with too few parts
    [b"Z", b"whatever"],                                               # unknown kind
    [b""],
])
def test_malformed_data_messages_are_counted_in_rx_bad(provider, tmp_run, parts):
    raw = context().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.IDENTITY, b"evil")
    raw.connect(f"ipc://{tmp_run}/dev.data")
    try:
        raw.send_multipart(parts)
        raw.send_multipart([b"B"] + encode_batch("rx", 2, [b"good"]))  # then a good one
        inbox = Inbox()
        pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
        assert provider.counters["rx_bad"] == 1
        assert provider.last_error and "evil" in provider.last_error
        assert inbox.batches == [(b"evil", "rx", [b"good"])] and inbox.events == []
    finally:
        raw.close(linger=0)


def test_malformed_messages_to_a_user_are_counted_in_rx_bad(provider, users):
    user = users(b"p0")
    inbox = Inbox()
    user.send_batch("rx", [b"hi"])
    pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
    provider.socket.send_multipart([b"p0", b"B", encode(["tx", 1, 1]), b"\0\0\0\0\xff\0\0\0", b"x"])
    provider.socket.send_multipart([b"p0", b"nonsense"])
    provider.send_batch(b"p0", "tx", [b"ok"])
    back = Inbox()
    pump(user, lambda: back.batches, on_batch=back.on_batch, on_event=back.on_event)
    assert back.batches == [("tx", [b"ok"])]
    assert user.counters["rx_bad"] == 2


def test_a_batch_on_a_stream_of_the_other_direction_is_refused_by_both_ends(provider, users, tmp_run):
    user = users(b"p0")
    with pytest.raises(errors.InvalidArgument, match="tx"):
        user.send_batch("tx", [b"wrong way"])       # tx is declared provider -> user
    with pytest.raises(errors.InvalidArgument, match="rx"):
        provider.send_batch(b"p0", "rx", [b"wrong way"])
    raw = context().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"ipc://{tmp_run}/dev.data")
    try:
        raw.send_multipart([b"B"] + encode_batch("tx", 1, [b"wrong way"]))
        raw.send_multipart([b"B"] + encode_batch("rx", 2, [b"right way"]))
        inbox = Inbox()
        pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
        assert [b[1:] for b in inbox.batches] == [("rx", [b"right way"])]
        assert provider.counters["rx_bad"] == 1
    finally:
        raw.close(linger=0)


def test_router_handover_lets_a_new_user_take_over_the_name(provider, users):
    old = users(b"p0")
    inbox = Inbox()
    old.send_batch("rx", [b"from old"])
    pump(provider, lambda: inbox.batches, on_batch=inbox.on_batch, on_event=inbox.on_event)
    new = users(b"p0")  # the successor connects while the predecessor is still there
    new.send_batch("rx", [b"from new"])
    pump(provider, lambda: len(inbox.batches) == 2, on_batch=inbox.on_batch, on_event=inbox.on_event)
    assert inbox.batches[1] == (b"p0", "rx", [b"from new"])
    assert provider.send_batch(b"p0", "tx", [b"to whoever holds p0"])
    got = Inbox()
    pump(new, lambda: got.batches, on_batch=got.on_batch, on_event=got.on_event)
    assert got.batches == [("tx", [b"to whoever holds p0"])]
    time.sleep(0.05)
    stale = Inbox()
    old.receive(stale.on_batch, stale.on_event)
    assert stale.batches == []
