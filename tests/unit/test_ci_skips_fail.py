"""tests/conftest.py: under CI=true a skip fails the run and says why; without CI a skip stays a skip."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = '''
import pytest
def test_skipped_in_the_body():
    pytest.skip("no tool xyz")
@pytest.mark.skipif(True, reason="needs root")
def test_skipped_by_a_marker():
    pass
def test_that_runs():
    pass
'''


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(os.path.join(os.path.dirname(HERE), "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_under_ci_every_skip_fails_the_run_with_its_reason(tmp_path):
    res = _run(tmp_path, "true")
    assert res.returncode != 0, res.stdout
    assert "no tool xyz" in res.stdout and "needs root" in res.stdout, res.stdout
    assert "skipped" not in res.stdout.splitlines()[-1], res.stdout


def test_without_ci_a_skip_stays_a_skip(tmp_path):
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stdout
    assert "2 skipped" in res.stdout
