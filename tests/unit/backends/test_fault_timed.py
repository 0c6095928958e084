"""FaultInjector's timed faults (delay, jitter, rate, reordering) and duplication, on a fake clock:
frames are held until ``poll``/``read_batch`` at the right time, in order, within the bounds."""

from __future__ import annotations

import pytest

from components.ethdriver.backends.fault import FaultInjector, FaultSpec, parse_fault_spec

from ._memory import MemoryBackend


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def frames(n: int, size: int = 64) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def index(frame: bytes) -> int:
    return int.from_bytes(frame[:4], "big")


@pytest.fixture
def inner():
    b = MemoryBackend()
    yield b
    b.close()


def test_sent_frames_leave_after_the_delay_in_order_by_poll(inner):
    clock = Clock()
    f = FaultInjector(inner, delay=0.3, clock=clock)
    sent = frames(5)
    assert f.write_batch(sent[:3]) == 3
    clock.t += 0.1
    f.write_batch(sent[3:])
    assert inner.sent == []
    assert f.next_deadline() == pytest.approx(1000.3)
    f.poll(1000.299)
    assert inner.sent == []
    f.poll(1000.3)
    assert inner.sent == sent[:3]
    assert f.next_deadline() == pytest.approx(1000.4)
    f.poll(1000.4)
    assert inner.sent == sent
    assert f.next_deadline() is None
    assert f.counters()["tx_fault_delayed"] == 5


def test_received_frames_come_out_of_read_batch_once_due(inner):
    clock = Clock()
    f = FaultInjector(inner, delay=0.05, clock=clock)
    got = frames(4)
    inner.push(*got)
    assert f.read_batch() == []
    assert f.next_deadline() == pytest.approx(1000.05)
    clock.t = 1000.049
    assert f.read_batch() == []
    clock.t = 1000.05
    # a deadline already reached: read_batch has frames now
    assert f.next_deadline() <= clock.t
    assert f.read_batch(max_frames=3) == got[:3]
    assert f.read_batch() == got[3:]
    assert f.next_deadline() is None
    assert f.counters()["rx_fault_delayed"] == 4


def test_jitter_varies_the_delay_but_never_the_order(inner):
    clock = Clock()
    release: list[float] = []
    write = inner.write_batch

    def timed_write(batch):
        batch = list(batch)
        release.extend([clock.t] * len(batch))
        return write(batch)
    inner.write_batch = timed_write
    f = FaultInjector(inner, delay=0.1, jitter=0.05, seed=5, clock=clock)
    sent = frames(300)
    for i, fr in enumerate(sent):
        clock.t = 1000.0 + i * 0.001
        if f.next_deadline() is not None and f.next_deadline() <= clock.t:
            f.poll(clock.t)
        f.write_batch([fr])
    while f.next_deadline() is not None:
        clock.t = f.next_deadline()
        f.poll(clock.t)
    assert inner.sent == sent
    delays = [release[i] - (1000.0 + i * 0.001) for i in range(300)]
    assert min(delays) >= 0.05 - 1e-9 and max(delays) <= 0.15 + 1e-9
    assert max(delays) - min(delays) > 0.03  # jitter did vary it


def test_the_delay_line_is_bounded_and_counts_what_overflows(inner):
    clock = Clock()
    f = FaultInjector(inner, delay=1.0, max_held_frames=5, clock=clock)
    assert f.write_batch(frames(8)) == 8
    assert f.counters()["tx_fault_overflow"] == 3
    assert f.tables()["fault_tx_line"] == {"size": 5, "limit": 5, "drops": 3}
    f.poll(1001.0)
    assert inner.sent == frames(5)
    g = FaultInjector(inner, delay=1.0, max_held_bytes=200, clock=clock)
    inner.push(*frames(4))       # 64 bytes each: the fourth does not fit in 200
    g.read_batch()
    assert g.counters()["rx_fault_overflow"] == 1
    assert g.held("rx") == (3, 192)


def test_duplicates_follow_their_original(inner):
    f = FaultInjector(inner, dup_rate=1.0)
    sent = frames(3)
    assert f.write_batch(sent) == 3
    assert inner.sent == [sent[0], sent[0], sent[1], sent[1], sent[2], sent[2]]
    assert f.counters()["tx_fault_duplicated"] == 3
    inner.push(*sent)
    assert len(f.read_batch()) == 6


def test_dup_rate_is_statistically_close(inner):
    f = FaultInjector(inner, dup_rate=0.05, seed=2)
    f.write_batch(frames(10000))
    extra = len(inner.sent) - 10000
    assert 400 <= extra <= 600
    assert f.counters()["tx_fault_duplicated"] == extra


def test_a_reordered_frame_arrives_after_the_next_one(inner):
    clock = Clock()
    f = FaultInjector(inner, reorder_rate=0.2, seed=11, clock=clock)
    sent = frames(2000)
    for fr in sent:
        f.write_batch([fr])
    clock.t += 1.0
    f.poll(clock.t)
    out = [index(x) for x in inner.sent]
    assert sorted(out) == list(range(2000))          # nothing lost, nothing added
    late = [v for pos, v in enumerate(out) if any(w > v for w in out[:pos])]
    assert 300 <= len(late) <= 500                    # about 20 % held, each overtaken
    assert f.counters()["tx_fault_reordered"] == len(late)
    # a held frame waits for one frame to pass it (gap 1), or for the next that is not held
    assert max(out.index(v) - v for v in range(2000)) <= 8


def test_a_held_frame_with_nothing_behind_it_goes_after_the_hold(inner):
    clock = Clock()
    f = FaultInjector(inner, reorder_rate=1.0, reorder_hold=0.02, clock=clock)
    f.write_batch(frames(1))
    assert inner.sent == []
    assert f.next_deadline() == pytest.approx(1000.02)
    f.poll(1000.02)
    assert inner.sent == frames(1)
    assert f.counters()["tx_fault_reordered"] == 0   # delayed, but nothing overtook it


class ScriptedRandom:
    """Coin tosses in a given order (then 0.99: no fault), for a test that needs one exact case."""

    def __init__(self, *tosses: float) -> None:
        self.tosses = list(tosses)

    def random(self) -> float:
        return self.tosses.pop(0) if self.tosses else 0.99


def test_reorder_gap_lets_that_many_frames_pass(inner):
    f = FaultInjector(inner, reorder_rate=0.5, reorder_gap=3, clock=Clock())
    f._rng = ScriptedRandom(0.0)                      # hold the first frame only
    for fr in frames(5):
        f.write_batch([fr])
    assert [index(x) for x in inner.sent] == [1, 2, 3, 0, 4]
    assert f.counters()["tx_fault_reordered"] == 1


def test_rate_limit_serialises_frames(inner):
    clock = Clock()
    f = FaultInjector(inner, rate_limit=8000, clock=clock)   # 100-byte frames: 0.1 s each
    f.write_batch(frames(3, size=100))
    assert f.next_deadline() == pytest.approx(1000.1)
    for k in (1, 2, 3):
        f.poll(1000.0 + 0.1 * k + 1e-9)
        assert len(inner.sent) == k
    assert f.counters()["tx_fault_rate_waited"] == 2


def test_delay_on_one_direction_only(inner):
    clock = Clock()
    f = FaultInjector.from_spec(inner, parse_fault_spec("delay=0.5,dir=rx"), clock=clock)
    f.write_batch(frames(2))
    assert inner.sent == frames(2)
    inner.push(*frames(2))
    assert f.read_batch() == []
    clock.t += 0.5
    assert f.read_batch() == frames(2)


def test_no_timed_fault_means_no_deadline_and_no_holding(inner):
    f = FaultInjector(inner, drop_rate=0.0, dup_rate=0.0, corrupt_rate=0.0)
    f.write_batch(frames(3))
    assert inner.sent == frames(3)
    assert f.next_deadline() is None
    assert "fault_tx_line" not in f.tables()


def test_same_seed_gives_the_same_timed_faults():
    def run() -> list[bytes]:
        inner, clock = MemoryBackend(), Clock()
        f = FaultInjector(inner, drop_rate=0.05, dup_rate=0.05, reorder_rate=0.1, delay=0.1, jitter=0.05,
                          seed=9, clock=clock)
        for i, fr in enumerate(frames(500)):
            clock.t = 1000.0 + i * 0.002
            f.write_batch([fr])
        f.poll(1010.0)
        f.close()
        return inner.sent
    assert run() == run()


# -- the text form ---------------------------------------------------------------------------
def test_spec_text_round_trips_and_maps_to_the_injector():
    spec = parse_fault_spec("loss=0.01,reorder=0.05,dup=0.01,delay=0.3,seed=1")
    assert parse_fault_spec(str(spec)) == spec
    args = spec.injector_args()
    assert args["drop_rate"] == 0.01 and args["reorder_rate"] == 0.05 and args["dup_rate"] == 0.01
    assert args["delay"] == 0.3 and args["seed"] == 1 and args["rx"] and args["tx"]
    assert parse_fault_spec("delay=300ms,loss=1%,rate=10Mbit,jitter=5ms") == \
        FaultSpec(delay=0.3, loss=0.01, rate=10_000_000, jitter=0.005)
    assert parse_fault_spec({"loss": 0.01, "delay": 0.3}) == FaultSpec(loss=0.01, delay=0.3)


@pytest.mark.parametrize("text, words", [
    ("loss=1.5", ["loss", "0.0..1.0", "'1.5'"]),
    ("delay=11", ["delay", "0.0..10.0"]),
    ("rate=10", ["rate", "1000.."]),
    ("reorder_gap=0", ["reorder_gap", "1..64"]),
    ("lose=0.1", ["unknown key 'lose'", "loss"]),
    ("loss", ["'loss' is not KEY=VALUE"]),
    ("loss=0.1,loss=0.2", ["loss given twice"]),
    ("delay=0.1,jitter=0.2", ["jitter", "must not exceed delay"]),
    ("dir=up", ["dir", "both, rx or tx"]),
    ("seed=x", ["seed"]),
    ("", ["no faults given"]),
])
def test_bad_spec_names_the_key_and_its_range(text, words):
    with pytest.raises(ValueError) as exc:
        parse_fault_spec(text)
    for w in words:
        assert w in str(exc.value)


def test_bad_constructor_values_are_rejected():
    for kw in ({"dup_rate": -0.1}, {"reorder_rate": 2}, {"delay": 0.1, "jitter": 0.2}, {"rate_limit": 0},
               {"reorder_gap": 0}, {"max_held_frames": 0}):
        with pytest.raises(ValueError):
            FaultInjector(MemoryBackend(), **kw)


def test_a_port_config_keeps_the_canonical_fault_text_and_refuses_a_bad_one():
    from launcher.ports import validate_port
    a = validate_port("p0", {"tap": "t0", "fault": "delay=300ms, loss=1%"})
    b = validate_port("p0", {"tap": "t0", "fault": {"loss": 0.01, "delay": 0.3}})
    assert a["fault"] == b["fault"] == "loss=0.01,delay=0.3"
    with pytest.raises(ValueError, match=r"port p0: fault: loss must be within 0.0..1.0"):
        validate_port("p0", {"tap": "t0", "fault": "loss=2"})
