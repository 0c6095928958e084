"""launcher.log follows the components' logging rules: a flood of one kind of line stays a
handful of lines and a suppressed count, and the file rotates at its bound."""
import logging

import pytest

from launcher.daemon import setup_launcher_logging


@pytest.fixture
def launcher_logging(tmp_path):
    """setup_launcher_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    made = []

    def setup(**kw):
        limit = setup_launcher_logging(str(tmp_path), console=False, **kw)
        made.extend(root.handlers)
        return limit

    try:
        yield setup
    finally:
        for h in made:
            root.removeHandler(h)
            h.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _lines(tmp_path, name="launcher.log"):
    path = tmp_path / "logs" / name
    return path.read_text().splitlines() if path.exists() else []


def test_a_flood_of_identical_warnings_writes_a_burst_then_a_suppressed_count(tmp_path, launcher_logging):
    limit = launcher_logging()
    log = logging.getLogger("qnet.launcher")
    for i in range(20_000):
        log.warning("netstack: checkpoint refused: incarnation %d is not in service", i % 7)
    flooded = [ln for ln in _lines(tmp_path) if "checkpoint refused" in ln]
    assert 1 <= len(flooded) <= 10
    assert limit.suppressed_total == 20_000 - len(flooded)
    assert not (tmp_path / "logs" / "launcher.log.1").exists()
    log.info("port %s attached", "p1")                 # another kind still passes
    assert _lines(tmp_path)[-1].endswith("port p1 attached")
    now = limit.clock()
    limit.clock = lambda: now + limit.window + 1       # the window has passed
    log.warning("netstack: checkpoint refused: incarnation %d is not in service", 3)
    assert _lines(tmp_path)[-1].endswith(f"({limit.suppressed_total} similar suppressed)")


def test_launcher_log_rotates_at_the_bound_and_keeps_one_old_file(tmp_path, launcher_logging):
    launcher_logging(max_bytes=10_000)
    log = logging.getLogger("qnet.launcher")
    # distinct kinds (words, not numbers, differ), so the rate limit lets every line through
    words = [f"{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrstuvwx"]
    for w in words:
        log.warning("component %s reported a problem", w)
    current, old = tmp_path / "logs" / "launcher.log", tmp_path / "logs" / "launcher.log.1"
    assert current.stat().st_size <= 10_000
    assert old.stat().st_size <= 10_000
    assert not (tmp_path / "logs" / "launcher.log.2").exists()
    assert _lines(tmp_path)[-1].endswith(f"component {words[-1]} reported a problem")
