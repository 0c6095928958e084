"""The qnet command line: one line per answer or failure, no tracebacks, --help everywhere."""
import json
import os

import pytest

from .conftest import run_qnet


def one_clean_line(res) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert len(err.splitlines()) == 1, res.stderr
    return err


# -- without a graph ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--help"], ["up", "--help"], ["status", "--help"], ["restart", "--help"],
                                  ["down", "--help"], ["logs", "--help"], ["ipc", "--help"]])
def test_help_is_offered_everywhere(graph, args):
    res = graph.qnet(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: qnet")


def test_help_lists_the_commands(graph):
    out = graph.qnet("--help").stdout
    for cmd in ("up", "down", "status", "restart", "logs", "ipc"):
        assert cmd in out


def test_status_when_not_up_is_one_line_and_fails(graph):
    res = graph.qnet("status")
    assert res.returncode != 0
    assert "not up" in one_clean_line(res)
    assert not os.path.exists(graph.run) or not os.path.exists(os.path.join(graph.run, "launcher.ctl"))


def test_down_when_not_up_says_so_and_succeeds(graph):
    res = graph.qnet("down")
    assert res.returncode == 0 and "not up" in res.stdout


def test_an_unknown_command_is_a_usage_error(graph):
    res = graph.qnet("bogus")
    assert res.returncode == 2
    assert "bogus" in one_clean_line(res)


def test_a_missing_argument_is_a_usage_error(graph):
    res = graph.qnet("restart")
    assert res.returncode == 2
    one_clean_line(res)


def test_ipc_list_shows_every_builtin_protocol(graph):
    res = graph.qnet("ipc", "list")
    assert res.returncode == 0, res.stderr
    for name in ("qnet.launcher", "qnet.lifecycle", "qnet.supervisor", "qnet.device"):
        assert name in res.stdout
    as_json = json.loads(graph.qnet("ipc", "list", "--json").stdout)
    launcher = next(p for p in as_json if p["name"] == "qnet.launcher")
    assert launcher["version"] == "1.5" and "restart" in launcher["methods"]


def test_ipc_describe_prints_a_declaration(graph):
    res = graph.qnet("ipc", "describe", "qnet.launcher")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("protocol qnet.launcher version 1.5")
    for word in ("status()", "restart(name: name", "logs(", "shutdown()", "ComponentStatus:", "not_found"):
        assert word in res.stdout


def test_ipc_describe_of_an_unknown_protocol_is_one_line(graph):
    res = graph.qnet("ipc", "describe", "no.such")
    assert res.returncode != 0
    assert "no.such" in one_clean_line(res)


def test_ipc_without_a_subcommand_is_a_usage_error(graph):
    res = graph.qnet("ipc")
    assert res.returncode == 2
    one_clean_line(res)


def test_the_qnet_console_script_runs(graph):
    script = os.path.join(os.path.dirname(os.path.realpath(os.sys.executable)), "qnet")
    if not os.path.exists(script):
        script = os.path.join(os.path.dirname(os.sys.executable), "qnet")
    if not os.path.exists(script):
        pytest.skip("the qnet console script is not installed in this interpreter's bin/")
    import subprocess
    res = subprocess.run([script, "--runtime-dir", graph.run, "status"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "not up" in res.stderr


# -- with the test graph up -----------------------------------------------------------------------
def test_status_table_shows_every_component(shared_graph):
    res = shared_graph.qnet("status")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "PID", "RESTARTS"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["counter"][1] == "running" and rows["peer"][1] == "running"
    assert int(rows["counter"][2]) == shared_graph.status()["counter"]["pid"]


def test_status_json_is_for_scripts(shared_graph):
    res = shared_graph.qnet("status", "--json")
    doc = json.loads(res.stdout)
    assert doc["runtime_dir"] == shared_graph.run
    names = [c["name"] for c in doc["components"]]
    assert names == ["counter", "peer"]  # start order: the provider first
    for c in doc["components"]:
        assert {"name", "pid", "state", "restarts", "last_exit", "incarnation", "since", "details"} <= set(c)


def test_restart_of_an_unknown_component_is_one_line(shared_graph):
    res = shared_graph.qnet("restart", "nosuch")
    assert res.returncode != 0
    assert "nosuch" in one_clean_line(res)


def test_restart_with_a_bad_name_is_one_line(shared_graph):
    res = shared_graph.qnet("restart", "no such!")
    assert res.returncode != 0
    one_clean_line(res)


def test_logs_shows_a_components_log(shared_graph):
    res = shared_graph.qnet("logs", "counter")
    assert res.returncode == 0, res.stderr
    assert "counter" in res.stdout and "running (incarnation 1)" in res.stdout


def test_logs_of_an_unknown_component_is_one_line(shared_graph):
    res = shared_graph.qnet("logs", "nosuch")
    assert res.returncode != 0
    assert "nosuch" in one_clean_line(res)


def test_up_when_already_up_is_refused(shared_graph):
    res = shared_graph.qnet("up", "-f", shared_graph.manifest, "--detach")
    assert res.returncode != 0
    assert "already up" in one_clean_line(res)
    assert all(r["state"] == "running" for r in shared_graph.status().values())


def test_a_second_cli_in_another_runtime_dir_sees_nothing(shared_graph, graph):
    res = run_qnet(graph.run, "status")
    assert res.returncode != 0 and "not up" in res.stderr
