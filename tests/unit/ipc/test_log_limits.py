"""components/runtime.py logging: network-caused lines are rate-limited with a count; files rotate."""
import json
import logging

from components.runtime import LogRateLimit, _JsonLines


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _records(n, mac_of=lambda i: f"52:54:00:00:{i // 256 % 256:02x}:{i % 256:02x}"):
    for i in range(n):
        yield logging.LogRecord("qnet.netstack", logging.WARNING, __file__, 1,
                                "address conflict on p0: 10.0.0.1 is used by %s", (mac_of(i),), None)


def test_a_flood_of_one_kind_passes_a_burst_then_says_how_many_were_suppressed():
    clock = _Clock()
    lim = LogRateLimit(burst=5, window=10.0, clock=clock)
    passed = [r for r in _records(20_000) if lim.filter(r)]
    assert len(passed) == 5                      # random MACs are one kind
    assert lim.suppressed_total == 19_995
    clock.t = 10.5
    late = next(_records(1))
    assert lim.filter(late)
    assert late.getMessage().endswith("(19995 similar suppressed)")


def test_other_kinds_are_not_suppressed_by_a_flood():
    lim = LogRateLimit(burst=2, window=10.0, clock=_Clock())
    for r in _records(100):
        lim.filter(r)
    other = logging.LogRecord("qnet.netstack", logging.INFO, __file__, 1, "port %s attached", ("p1",), None)
    assert lim.filter(other)


def test_a_record_is_judged_once_for_every_handler():
    lim = LogRateLimit(burst=1, window=10.0, clock=_Clock())
    r = next(_records(1))
    assert lim.filter(r) and lim.filter(r)       # the second handler sees the same verdict


def test_json_lines_rotate_at_the_bound(tmp_path):
    path = tmp_path / "x.jsonl"
    h = _JsonLines(str(path), "x", max_bytes=10_000)
    for i in range(2_000):
        h.emit(logging.LogRecord("qnet.x", logging.WARNING, __file__, 1, "line %d", (i,), None))
    assert path.stat().st_size <= 10_000 + 200
    assert (tmp_path / "x.jsonl.1").stat().st_size <= 10_000 + 200
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["msg"] == "line 1999"
