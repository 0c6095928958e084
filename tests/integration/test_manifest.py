"""Broken manifests are refused before anything starts: one line naming file, line and field; exit 2."""
import os
import re

import pytest

from .conftest import REPO, graph_text

HEAD = f"""[graph]
name = "broken"
pythonpath = ["{REPO}"]
declarations = ["tests.components.decls", "tests.components.cycle_decls"]
"""
COUNTER = """
[components.counter]
module = "tests.components.counter"
provides = ["test.counter@1.2"]
"""
PEER = """
[components.peer]
module = "tests.components.peer"
provides = ["test.peer@1.0"]
uses = ["test.counter@1.0"]
"""

CASES = {
    "missing_provider": (HEAD + PEER, "peer", "uses", "no component provides"),
    "unknown_interface_provided": (HEAD + COUNTER.replace("test.counter@1.2", "test.nosuch@1.0") + PEER,
                                   "counter", "provides", "unknown interface 'test.nosuch'"),
    "unknown_interface_used": (HEAD + COUNTER + PEER.replace('uses = ["test.counter@1.0"]',
                                                             'uses = ["test.counter@1.0", "test.gone"]'),
                               "peer", "uses", "unknown interface 'test.gone'"),
    "version_mismatch": (HEAD + COUNTER + PEER.replace("test.counter@1.0", "test.counter@2.0"),
                         "peer", "uses", "test.counter@2.0 but counter provides version 1.2"),
    "provides_a_version_not_declared": (HEAD + COUNTER.replace("test.counter@1.2", "test.counter@1.5") + PEER,
                                        "counter", "provides", "1.5"),
    "dependency_cycle": (HEAD + """
[components.ping]
module = "tests.components.counter"
provides = ["test.ping@1.0"]
uses = ["test.pong@1.0"]

[components.pong]
module = "tests.components.counter"
provides = ["test.pong@1.0"]
uses = ["test.ping@1.0"]
""", "p", "uses", "dependency cycle"),
    "bad_restart_policy": (HEAD + COUNTER + 'restart = "sometimes"\n' + PEER,
                           "counter", "restart", "sometimes"),
    "bad_number": (HEAD + COUNTER + 'max_restarts = "three"\n' + PEER, "counter", "max_restarts", "three"),
    "unknown_field": (HEAD + COUNTER + 'colour = "red"\n' + PEER, "counter", "colour", "unknown field"),
    "missing_module": (HEAD + COUNTER.replace('module = "tests.components.counter"\n', "") + PEER,
                       "counter", "module", "missing"),
    "no_components": (HEAD, None, None, "no [components"),
    "invalid_toml": (HEAD + COUNTER + "restart = \n" + PEER, None, None, "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_manifest_is_refused_before_anything_starts(graph, case):
    text, component, field, words = CASES[case]
    manifest = graph.write(text)
    res = graph.qnet("up", "-f", manifest, "--detach", "--timeout", "10")
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert manifest in err, err
    assert words in err, err
    if component is not None:
        assert f"component {component}" in err, err
        assert f"field '{field}'" in err, err
        # file:line: the line shown holds the named field (or the component's table)
        m = re.search(re.escape(manifest) + r":(\d+):", err)
        assert m, err
        line = text.splitlines()[int(m.group(1)) - 1]
        assert field in line or f"components.{component}" in line, (line, err)
    assert not os.path.exists(os.path.join(graph.run, "launcher.ctl"))
    assert not os.path.exists(os.path.join(graph.run, "launcher.pid"))


def test_a_manifest_that_cannot_be_read_is_refused_with_exit_2(graph):
    res = graph.qnet("up", "-f", os.path.join(graph.work, "nosuch.toml"), "--detach")
    assert res.returncode == 2, res
    assert "nosuch.toml" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_the_test_graph_copy_is_itself_valid(graph):
    # guards the cases above: the unmodified copy passes validation (and needs no processes to check)
    from launcher.manifest import parse
    g = parse(graph_text(graph.work), os.path.join(graph.work, "graph.toml"))
    assert g.order == ["counter", "peer"]
    assert g.components["counter"].handles[0].options["path"].startswith(graph.work)
