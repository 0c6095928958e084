"""Sockets benchmark: one program through qnet.socket beside the TCP core, the kernel and PyTCP.

    python -m bench.sockets [--quick] [--json FILE]

The program is the TCP benchmark's client body (bench/tcp_peers.py: connections made by
``socket_connector(module, ...)`` -- socket(AF_INET, SOCK_STREAM), TCP_NODELAY, settimeout,
connect -- then the bulk, ping-pong and connection loops), given a socket module:

- ``qnet.socket``, in this process, through a qnet graph's TAP port to a Linux namespace;
- the TCP core: qnet's TcpClient (components/netstack/tcp_client.py) over the same port, in
  this process, the same loops (bench/tcp.py's qnet target). The socket layer's cost is
  1 - qnet.socket / TcpClient; the aim is at most 20 % on the bulk figures;
- the kernel's ``socket`` between two namespaces over a veth pair (/usr/bin/python3);
- PyTCP 3.0.9's drop-in ``pytcp.socket`` on a TAP (bench/pytcp_setup.py, pyenv's 3.13), one
  round a figure: its shutdown(SHUT_WR) brings no EOF back, so each of its runs waits out the
  loops' drain timeout.

Figures, each beside its anchors measured in the same run, rounds interleaved:

1. Bulk, Linux -> stack and stack -> Linux (time-bounded, MAX_BYTES at most), Mbit/s, timed at
   the receiver; every round's byte count is checked (a transfer that ends short of its bound
   before its time is up lost bytes).
2. Request/response: 64-byte ping-pong on one connection, transactions/s.
3. Connection setup: connect + close, back to back, connections/s (the kernel, TcpClient).

The far end is the same kernel server (tcp_peers.py `serve` in a namespace) for every target.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from bench import common
from bench import pytcp_setup
from bench import tcp_peers
from bench.ipv4 import SYS_PY, Lab
from bench.tcp import MAX_BYTES, PORT, Qnet, Target, _f, _x, kernel_target, measure, pytcp_target, serve

AIM_LAYER_COST = 0.20         # qnet.socket's bulk figures at most 20 % below the TCP core's

TARGETS = ("tcp_client", "kernel", "pytcp")   # the anchors, in the table's order
ANCHOR_LABEL = {"tcp_client": "TCP core (TcpClient)", "kernel": "kernel, veth",
                "pytcp": f"PyTCP {pytcp_setup.VERSION} drop-in"}


def qnet_socket_target(run_dir: str, dst: str) -> Target:
    """The program with ``qnet.socket``, in this process: its calls go to RUN_DIR's provider."""
    os.environ["QNET_RUNTIME_DIR"] = run_dir  # read by qnet.socket's session at each (re)connect
    from qnet import socket as qnet_socket
    connect = tcp_peers.socket_connector(qnet_socket, dst, PORT)

    def run(mode: str, seconds: float, size: int, max_bytes: int) -> dict:
        return tcp_peers.run_client(mode, connect, seconds, max_bytes, size)
    return Target("qnet.socket", run)


def measure_all(targets: list[Target], mode: str, rounds: int, seconds: float, size: int, key: str,
                label: str, max_bytes: int = MAX_BYTES) -> dict:
    """bench/tcp.py's interleaved rounds for qnet and the kernel, then one round of PyTCP: its
    client's close waits out the loops' drain timeouts (5 s, 15 s after bulk), which three rounds
    would spend again and again."""
    out = measure([t for t in targets if t.name != "pytcp"], mode, rounds, seconds, size, key, label,
                  max_bytes, "sockets")
    slow = [t for t in targets if t.name == "pytcp"]
    if slow:
        out |= measure(slow, mode, 1, seconds, size, key, label, max_bytes, "sockets")
    return out


def byte_count_check(block: dict, seconds: float, max_bytes: int) -> None:
    """Every bulk round moved MAX_BYTES, or ran out of time: else bytes were lost on the way
    (an early EOF, a sink that saw less than was sent). Failures go in the target's "check"."""
    for fig in block.values():
        bad = []
        for r in fig.get("rounds", []):
            if r["bytes"] < max_bytes and r["seconds"] < 0.95 * seconds:
                bad.append(f"{r['bytes']:,} of {max_bytes:,} B in {r['seconds']:.2f} s of {seconds:g}")
            elif r.get("closed_cleanly") is False:
                bad.append("no EOF back after its shutdown(SHUT_WR) (the loop's drain timed out)")
        fig["check"] = "; ".join(bad) if bad else "ok"


def run(quick: bool = False) -> dict:
    """Set up the stacks, measure, tear everything down; the figures as a dict."""
    common.require_root_and("ip", SYS_PY)
    rounds = 1 if quick else 3
    bulk_s = 1.0 if quick else 3.0
    rr_s = 0.5 if quick else 2.0
    max_bytes = MAX_BYTES // 2 if quick else MAX_BYTES
    result: dict[str, Any] = {"machine": common.machine_info(), "quick": quick, "max_bytes": max_bytes,
                              "rounds": rounds,
                              "seconds": {"bulk": bulk_s, "rr": rr_s, "cps": rr_s}}
    lab = Lab()
    saved_env = os.environ.get("QNET_RUNTIME_DIR")
    with common.runtime_dir("qnet-bench-sockets-") as run_dir:
        qnet = Qnet(lab, run_dir)
        try:
            common.log("sockets: setting up the kernel anchor (veth), qnet (TAP), PyTCP (TAP) ...")
            ka, kb = lab.netns("ka"), lab.netns("kb")
            lab.veth(ka, "10.99.60.1/24", kb, "10.99.60.2/24")
            serve(lab, kb)
            kernel = kernel_target(lab, "kernel", ka, "10.99.60.2")
            qnet.start()
            dst = qnet.port("p0", 61)
            targets = [qnet_socket_target(run_dir, dst), qnet.target("tcp_client", dst), kernel]
            try:
                targets.append(pytcp_target(lab, run_dir, 63, socket_module="pytcp.socket"))
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": True}
            except (pytcp_setup.PyTcpUnavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result["pytcp"] = {"version": pytcp_setup.VERSION, "available": False, "reason": str(exc)}
                common.log(f"sockets: PyTCP unavailable: {exc}")
            no_pytcp = [t for t in targets if t.name != "pytcp"]

            for key, mode, label in (("bulk_recv", "recv", "Linux -> stack"),
                                     ("bulk_send", "send", "stack -> Linux")):
                result[key] = measure_all(targets, mode, rounds, bulk_s, 0, "mbit_s", label, max_bytes)
                byte_count_check(result[key], bulk_s, max_bytes)
            result["rr"] = measure_all(targets, "rr", rounds, rr_s, 64, "tps", "64 B ping-pong")
            # size 0: the server's one command line, then close -- connection setup and teardown.
            result["cps"] = measure_all(no_pytcp, "cps", rounds, rr_s, 0, "cps", "connect + close")
            result["qnet_stats"] = qnet.stats()
        finally:
            qnet.close()
            lab.close()
            if saved_env is None:
                os.environ.pop("QNET_RUNTIME_DIR", None)
            else:
                os.environ["QNET_RUNTIME_DIR"] = saved_env
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


# -- report (figures and ratios formatted as bench tcp's) -------------------------------------
def render(res: dict) -> str:
    pyt_ok = res.get("pytcp", {}).get("available", False)
    t = common.Table("figure", "qnet.socket", "anchor", "anchor's figure", "ratio", "aim")
    rows = (("bulk_recv", "bulk Linux -> stack (Mbit/s)", "mbit_s", 1),
            ("bulk_send", "bulk stack -> Linux (Mbit/s)", "mbit_s", 1),
            ("rr", "64 B ping-pong, 1 connection (trans/s)", "tps", 0),
            ("cps", "connect + close (conn/s)", "cps", 0))
    for key, label, unit, digits in rows:
        block = res[key]
        q = block.get("qnet.socket", {}).get(unit)
        first = True
        for name in TARGETS:
            if name == "pytcp" and key == "cps":
                continue
            a = block.get(name, {}).get(unit)
            aim = ""
            if name == "tcp_client" and key.startswith("bulk") and q is not None and a:
                cost = 1 - q / a
                aim = (f"layer cost <= {AIM_LAYER_COST:.0%}: {'met' if cost <= AIM_LAYER_COST else 'MISSED'} "
                       f"({cost:+.0%})")
            if name == "pytcp" and not pyt_ok:
                shown = "unavailable"
            elif name == "pytcp" and a is None and block.get(name, {}).get("error"):
                shown = "cannot run"
            else:
                shown = _f(a, digits + 1 if name == "pytcp" else digits)
            t.add(label if first else "", _f(q, digits) if first else "", ANCHOR_LABEL[name], shown,
                  _x(q, a), aim)
            first = False
    m = res["machine"]
    lines = [f"Sockets benchmark{' (quick)' if res['quick'] else ''}: {m['cpus']} CPUs, "
             f"load {m['loadavg_1m']} -> {m.get('loadavg_1m_after', '?')}, Python {m['python']}; one program "
             f"body (bench/tcp_peers.py) per socket module; bulk {res['seconds']['bulk']:g} s or "
             f"{res['max_bytes'] / 1e6:g} MB a round; "
             + (f"medians of {res['rounds']} interleaved rounds (PyTCP: 1)" if res["rounds"] > 1 else "one round"),
             t.render()]
    for key in ("bulk_recv", "bulk_send"):
        checks = {n: v["check"] for n, v in res[key].items() if v.get("check") not in (None, "ok")}
        lines.append(f"{key} byte counts: " + ("; ".join(f"{n}: {c}" for n, c in checks.items())
                                               if checks else "every round complete"))
    if not pyt_ok:
        lines.append(f"PyTCP: unavailable ({res['pytcp'].get('reason', 'unknown')})")
    for key in ("bulk_recv", "bulk_send", "rr", "cps"):
        for name, v in res[key].items():
            if v.get("error"):
                lines.append(f"{key} {name}: cannot run: {v['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.main("sockets", __doc__.splitlines()[0], run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
