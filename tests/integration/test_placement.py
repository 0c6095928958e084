"""CPU placement from the manifest: `cpus` per component or for the whole graph, checked before start."""
from __future__ import annotations

import os

import pytest

from .conftest import graph_text

ONLINE = sorted(os.sched_getaffinity(0))


def _threads_affinity(pid: int) -> set[tuple[int, ...]]:
    """The affinity of every thread of a process (libzmq's I/O threads included)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        out.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
    return out


def test_the_default_packs_every_component_on_the_last_cpu(up_graph):
    rows = up_graph.status()
    assert rows, "no components"
    for name, row in rows.items():
        assert _threads_affinity(row["pid"]) == {(ONLINE[-1],)}, name


def test_a_component_runs_on_the_cpus_its_manifest_names_and_none_leaves_it_free(graph):
    text = graph_text(graph.work).replace("[graph]\n", '[graph]\ncpus = "none"\n', 1)
    text = text.replace('[components.counter]\n', f'[components.counter]\ncpus = [{ONLINE[0]}]\n', 1)
    graph.write(text)
    res = graph.up()
    assert res.returncode == 0, res.stdout + res.stderr
    rows = graph.status()
    assert _threads_affinity(rows["counter"]["pid"]) == {(ONLINE[0],)}
    assert _threads_affinity(rows["peer"]["pid"]) == {tuple(ONLINE)}


@pytest.mark.parametrize("value, message", [
    ("[99999]", "CPU 99999 is not available here"),
    ('"fast"', 'cpus must be "pack", "none" or a list of CPU numbers'),
    ("[]", 'cpus must be "pack", "none" or a list of CPU numbers'),
    ("[-1]", 'cpus must be "pack", "none" or a list of CPU numbers'),
])
def test_bad_cpus_are_refused_before_anything_starts(graph, value, message):
    text = graph_text(graph.work).replace('[components.counter]\n', f'[components.counter]\ncpus = {value}\n', 1)
    graph.write(text)
    res = graph.up()
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "component counter" in res.stderr and "cpus" in res.stderr, res.stderr
    assert not os.path.exists(os.path.join(graph.run, "launcher.pid")) or not graph.launcher_pid()
