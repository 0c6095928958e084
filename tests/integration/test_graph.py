"""The test graph (counter + peer) as real processes: start, supervise, restart, hand over, stop."""
import os
import signal
import time

from ipc.protocols.lifecycle import LIFECYCLE
from tests.components.decls import COUNTER, PEER

from .conftest import alive, wait_until


def peer_stats(g) -> dict:
    return g.call("peer", PEER, "stats")


def wait_peer_ok_grows(g, by: int = 5, timeout: float = 10.0) -> dict:
    start = peer_stats(g)["ok"]
    return wait_until(lambda: (s := peer_stats(g))["ok"] >= start + by and s, timeout,
                      f"peer's successful calls to grow by {by}")


def test_the_graph_comes_up_and_status_lists_both_components_running(up_graph):
    rows = up_graph.status()
    assert set(rows) == {"counter", "peer"}
    for name, r in rows.items():
        assert r["state"] == "running", r
        assert r["pid"] > 0 and alive(r["pid"]), r
        assert r["incarnation"] == 1 and r["restarts"] == 0
    assert rows["counter"]["pid"] != rows["peer"]["pid"]
    assert up_graph.call("counter", COUNTER, "pid") == rows["counter"]["pid"]
    assert up_graph.call("counter", LIFECYCLE, "status")["state"] == "running"
    wait_peer_ok_grows(up_graph)


def test_kill_9_of_counter_respawns_it_with_its_checkpointed_state_and_the_peer_reconnects(up_graph):
    g = up_graph
    assert g.call("counter", COUNTER, "add", n=41) == 41
    assert g.call("counter", COUNTER, "add", n=1) == 42
    rows = g.status()
    before, peer_pid = rows["counter"], rows["peer"]["pid"]
    # the checkpoint and the heartbeats share one ordered PUSH pipe: a heartbeat showing 42
    # proves the launcher already holds the checkpoint of 42
    g.wait_state("counter", lambda r: r["details"].get("value") == 42, 5.0, "a heartbeat with value 42")
    os.kill(before["pid"], signal.SIGKILL)
    after = g.wait_state("counter", lambda r: r["state"] == "running" and r["pid"] not in (0, before["pid"]),
                         10.0, "respawned after SIGKILL")
    assert after["restarts"] == before["restarts"] + 1
    assert "SIGKILL" in after["last_exit"], after["last_exit"]
    assert after["incarnation"] > before["incarnation"]
    assert g.call("counter", COUNTER, "get") == 42
    assert g.call("counter", COUNTER, "pid") == after["pid"]
    assert g.status()["peer"]["pid"] == peer_pid  # the peer was not restarted with it
    stats = wait_peer_ok_grows(g)  # reconnected through the stable endpoint, nobody told it
    assert stats["last_value"] == 42


def test_qnet_restart_replaces_only_counter_and_hands_its_state_over(up_graph):
    g = up_graph
    assert g.call("counter", COUNTER, "add", n=7) == 7
    wait_peer_ok_grows(g, by=3)
    before = g.status()
    failed_before = peer_stats(g)["failed"]
    res = g.qnet("restart", "counter")
    assert res.returncode == 0, res.stderr
    assert "state handed over" in res.stdout and str(before["counter"]["pid"]) in res.stdout
    after = g.status()
    assert after["counter"]["pid"] != before["counter"]["pid"]
    assert after["peer"]["pid"] == before["peer"]["pid"]
    assert after["counter"]["state"] == "running" and after["counter"]["restarts"] == 1
    assert g.call("counter", COUNTER, "get") == 7  # the successor has its predecessor's value
    wait_until(lambda: not alive(before["counter"]["pid"]), 5.0, "the predecessor to exit")
    stats = wait_peer_ok_grows(g)
    assert stats["failed"] - failed_before <= 2, stats
    assert stats["last_value"] == 7


def test_a_launcher_held_handle_survives_restart_and_kill(up_graph):
    g = up_graph
    ino = g.call("counter", COUNTER, "handle_inode", name="state")
    assert ino == os.stat(g.state_path).st_ino
    # Move the file aside (it stays alive): a launcher that re-opened the path would now get a new
    # file with another inode; one that holds its handle keeps passing the same open file.
    os.rename(g.state_path, g.state_path + ".held")
    res = g.qnet("restart", "counter")
    assert res.returncode == 0, res.stderr
    assert g.call("counter", COUNTER, "handle_inode", name="state") == ino
    pid = g.status()["counter"]["pid"]
    os.kill(pid, signal.SIGKILL)
    g.wait_state("counter", lambda r: r["state"] == "running" and r["pid"] not in (0, pid), 10.0, "respawn")
    assert g.call("counter", COUNTER, "handle_inode", name="state") == ino
    assert not os.path.exists(g.state_path)


def test_a_component_that_crashes_on_every_respawn_ends_failed_and_a_restart_brings_it_back(graph):
    poison = os.path.join(graph.work, "poison")
    res = graph.up(max_restarts=2, counter_args={"crash_while_exists": poison})
    assert res.returncode == 0, res.stderr
    assert graph.call("counter", COUNTER, "add", n=9) == 9
    graph.wait_state("counter", lambda r: r["details"].get("value") == 9, 5.0, "a heartbeat with value 9")
    pid = graph.status()["counter"]["pid"]
    open(poison, "w").close()
    os.kill(pid, signal.SIGKILL)
    row = graph.wait_state("counter", lambda r: r["state"] == "failed", 15.0, "failed after repeated crashes")
    assert row["pid"] == 0
    assert "exit 5" in row["last_exit"], row
    problems = " ".join(row["details"].get("problems", []))
    assert "counter" in problems and ("crashed" in problems or "failed to start" in problems), row
    # It stays failed: no further respawns. The sentinel is a respawn the same supervision makes
    # after it: the launcher's watch finds the peer dead and respawns it, passing over the failed
    # counter on the way; a respawn of the counter would have been started by then.
    # The peer's calls to the failed counter block its loop for up to 1.5 s (timeout 0.5 s, two
    # retries), so between heartbeats it may be shown "unresponsive"; it is not restarted for it.
    alive_states = ("running", "unresponsive")
    peer = graph.status()["peer"]
    assert peer["state"] in alive_states and peer["restarts"] == 0, peer  # the counter's failure spared it
    os.kill(peer["pid"], signal.SIGKILL)
    graph.wait_state("peer", lambda r: r["state"] in alive_states and r["pid"] not in (0, peer["pid"]), 10.0,
                     "the peer respawned after SIGKILL")
    again = graph.status()["counter"]
    # a respawn attempt, even one that failed again at once, moves state, last exit or problems
    assert [again[k] for k in ("state", "restarts", "pid", "last_exit", "since")] == \
        [row[k] for k in ("state", "restarts", "pid", "last_exit", "since")], (row, again)
    assert again["details"].get("problems") == row["details"].get("problems"), (row, again)
    table = graph.qnet("status")
    assert table.returncode == 0 and "failed" in table.stdout
    # an operator's restart that fails again is one line, and the component stays "failed"
    res = graph.qnet("restart", "counter")
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "exit 5" in res.stderr
    assert graph.status()["counter"]["state"] == "failed"
    # once the cause is gone, a restart brings it back with its last checkpointed value
    os.unlink(poison)
    res = graph.qnet("restart", "counter")
    assert res.returncode == 0, res.stderr
    row = graph.status()["counter"]
    assert row["state"] == "running" and row["pid"] > 0
    assert graph.call("counter", COUNTER, "get") == 9
    wait_peer_ok_grows(graph)


def test_up_of_a_graph_whose_component_always_crashes_fails_with_one_line(graph):
    res = graph.up(counter_args={"crash_on_start": True})
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, res.stderr
    assert "counter" in err and "exit 5" in err, err
    assert "Traceback" not in res.stderr + res.stdout
    pid = graph.launcher_pid()
    wait_until(lambda: not pid or not alive(pid), 5.0, "the launcher to exit")
    assert not os.path.exists(os.path.join(graph.run, "launcher.ctl"))


def test_down_leaves_no_process_behind(up_graph):
    g = up_graph
    g.qnet("restart", "counter")  # a retired incarnation is one more process to account for
    pids = {r["pid"] for r in g.status().values()} | g.pids
    launcher = g.launcher_pid()
    assert launcher and alive(launcher)
    t0 = time.monotonic()
    res = g.qnet("down")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: not any(alive(p) for p in pids | {launcher}), 5.0,
               f"pids {sorted(p for p in pids | {launcher} if alive(p))} to exit")
    assert time.monotonic() - t0 < 8.0
    assert not os.path.exists(os.path.join(g.run, "launcher.ctl"))
    leftover = [e for e in os.listdir(g.run) if e.endswith((".rpc", ".data", ".pub", ".ctl", ".sup"))]
    assert leftover == [], leftover
    status = g.qnet("status")
    assert status.returncode != 0 and "not up" in status.stderr


def test_killing_the_launcher_leaves_no_orphan(up_graph):
    g = up_graph
    pids = {r["pid"] for r in g.status().values()}
    launcher = g.launcher_pid()
    os.kill(launcher, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in pids), 2.0, "every component to die with its launcher")
    # its socket is left behind, but the CLI does not wait on it: one line, at once
    t0 = time.monotonic()
    res = g.qnet("status", timeout=30)
    assert res.returncode != 0 and "not up" in res.stderr, res.stderr
    assert time.monotonic() - t0 < 5.0
    # a new graph can come up in the same runtime directory after the crash
    res = g.up()
    assert res.returncode == 0, res.stderr
    assert all(r["state"] == "running" for r in g.status().values())


def test_a_hung_component_is_killed_as_unresponsive_and_respawned_with_its_state(up_graph):
    g = up_graph
    assert g.call("counter", COUNTER, "add", n=5) == 5
    g.wait_state("counter", lambda r: r["details"].get("value") == 5, 5.0, "a heartbeat with value 5")
    pid = g.status()["counter"]["pid"]
    assert g.call("counter", COUNTER, "hang") is True
    # HEARTBEAT_DEADLINE (6 s) of silence, then a kill and a respawn
    row = g.wait_state("counter", lambda r: r["state"] == "running" and r["pid"] not in (0, pid), 15.0,
                       "respawn of the hung component")
    assert "unresponsive" in row["last_exit"], row
    assert not alive(pid)
    assert g.call("counter", COUNTER, "get") == 5


def test_restart_of_a_hung_component_falls_back_to_the_last_checkpoint(up_graph):
    g = up_graph
    assert g.call("counter", COUNTER, "add", n=3) == 3
    g.wait_state("counter", lambda r: r["details"].get("value") == 3, 5.0, "a heartbeat with value 3")
    pid = g.status()["counter"]["pid"]
    assert g.call("counter", COUNTER, "hang") is True
    time.sleep(0.1)
    res = g.qnet("restart", "counter", "--json")  # freeze times out: the checkpoint is handed over
    assert res.returncode == 0, res.stderr
    import json
    out = json.loads(res.stdout)
    assert out["old_pid"] == pid and out["new_pid"] != pid and out["handed_over"] is True
    assert g.call("counter", COUNTER, "get") == 3
    wait_until(lambda: not alive(pid), 6.0, "the hung predecessor to be killed")
