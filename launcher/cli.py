"""`qnet`: the command line. An ordinary client of the launcher's control interface.

Every command answers in a line or a table, fails with one clear line and a
non-zero exit, and has --help. `--json` output is for scripts and tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import stat
import sys
import time
from typing import Any, Callable

from ipc import errors, registry
from ipc.decl import to_plain
from ipc.protocols.launcher import LAUNCHER
from ipc.rpc import RpcClient

from .manifest import ManifestError, default_runtime_dir, load
from .service import control_endpoint

EXIT_USAGE, EXIT_FAIL, EXIT_NOT_UP = 2, 1, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


# -- talking to the launcher ----------------------------------------------------------------
def launcher_client(args, timeout: float = 10.0) -> RpcClient:
    run = args.runtime_dir
    sock = os.path.join(run, "launcher.ctl")
    # A launcher killed hard leaves its socket behind: check its pid too, or every command would
    # wait out its whole timeout on a socket nobody serves.
    if not os.path.exists(sock) or not _alive(_launcher_pid(run)):
        raise CliError(f"not up (no launcher in {run}); start it with 'qnet up'", EXIT_NOT_UP)
    return RpcClient(control_endpoint(run), LAUNCHER, timeout=timeout, retries=1)


def answer(client: RpcClient, who: str, wait: float, method: str, /, **kw) -> Any:
    """One call as plain values; its errors become the CLI's one-line errors. Positional-only
    parameters: a method's own arguments (netstack.ping's ``timeout``) pass through ``kw``."""
    try:
        return to_plain(client.call(method, **kw))
    except errors.Timeout:
        raise CliError(f"{who} did not answer within {wait:g} s") from None
    except errors.IpcError as exc:
        raise CliError(str(exc)) from None


def call(args, method: str, timeout: float = 10.0, **kw) -> Any:
    with launcher_client(args, timeout) as c:
        return answer(c, f"the launcher in {args.runtime_dir}", timeout, method, **kw)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    cells = [[h for _, h in cols]] + [[_cell(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ",".join(printable(str(x)) for x in v) or "-"
    return printable(str(v))


def printable(text: str) -> str:
    """Text as it may reach a terminal: control characters, escapes and line breaks from a
    peer (a guest's DHCP hostname) shown as \\xNN, never interpreted by the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def out_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- commands ---------------------------------------------------------------------------------
def cmd_up(args) -> int:
    try:
        graph = load(args.file)  # refuse a broken manifest before anything starts
    except ManifestError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    run = args.runtime_dir
    if os.path.exists(os.path.join(run, "launcher.ctl")):
        try:
            with RpcClient(control_endpoint(run), LAUNCHER, timeout=1.0, retries=0) as c:
                c.call("status")
            raise CliError(f"already up in {run}; 'qnet down' stops it")
        except errors.IpcError:
            pass  # a stale socket from a launcher that died
    if not args.detach:
        from .daemon import run as run_foreground

        def on_up(launcher):
            print(f"qnet: graph '{graph.name}' is up ({len(graph.order)} components, runtime dir {run}); "
                  f"Ctrl-C stops it", flush=True)
        return run_foreground(args.file, run, console=True, on_up=on_up)
    os.makedirs(run, mode=0o700, exist_ok=True)
    logpath = os.path.join(run, "launcher.out")
    cmd = [sys.executable, "-m", "launcher.daemon", "--runtime-dir", run]
    if args.file:
        cmd += ["-f", os.path.abspath(args.file)]
    with open(logpath, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    print(f"qnet: starting graph '{graph.name}' ({len(graph.order)} components) ...", flush=True)
    deadline = time.monotonic() + args.timeout
    shown: dict[str, str] = {}
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise CliError(_last_error(logpath) or f"the launcher exited ({code}); see {logpath}")
        if os.path.exists(os.path.join(run, "launcher.ctl")):
            try:
                with RpcClient(control_endpoint(run), LAUNCHER, timeout=1.0, retries=0) as c:
                    rows = to_plain(c.call("status"))
            except errors.IpcError:
                rows = []
            for r in rows:
                if shown.get(r["name"]) != r["state"] and r["state"] in ("running", "failed"):
                    print(f"  {r['name']}: {r['state']}" + (f" (pid {r['pid']})" if r["pid"] else ""), flush=True)
                    shown[r["name"]] = r["state"]
            if rows and all(r["state"] == "running" for r in rows):
                print(f"qnet: up (launcher pid {proc.pid}, runtime dir {run})")
                return 0
        time.sleep(0.1)
    raise CliError(f"the graph did not come up within {args.timeout:g} s; see 'qnet status' and {logpath}")


def _last_error(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return None
    for ln in reversed(lines):
        if ln.startswith("qnet: "):
            return ln[len("qnet: "):]
    return lines[-1] if lines else None


def cmd_down(args) -> int:
    run = args.runtime_dir
    if not os.path.exists(os.path.join(run, "launcher.ctl")):
        print(f"qnet: not up (nothing to stop in {run})")
        return 0
    pid = _launcher_pid(run)
    try:
        call(args, "shutdown", timeout=3.0)
    except CliError:
        if pid:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not pid or not _alive(pid):
            _remove_endpoints(run)
            print("qnet: down")
            return 0
        time.sleep(0.05)
    if pid:
        os.kill(pid, 9)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    _remove_endpoints(run)
    raise CliError(f"the launcher (pid {pid}) did not stop within {args.timeout:g} s; killed it")


_ENDPOINT_NAME = re.compile(r"^(launcher\.(ctl|sup)|channels\.sock|sockets\.sock|[A-Za-z0-9_.-]+?(\.\d+)?\.(rpc|data|pub|dgram))$")


def _remove_endpoints(run: str) -> None:
    """Socket files and stable-name symlinks of a graph whose launcher is gone: a launcher
    stopped by force (or one that died) must not leave them behind. Other files stay."""
    try:
        names = os.listdir(run)
    except OSError:
        return
    for name in names:
        path = os.path.join(run, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if _ENDPOINT_NAME.match(name) and (stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            try:
                os.unlink(path)
            except OSError:
                pass


def _launcher_pid(run: str) -> int:
    try:
        with open(os.path.join(run, "launcher.pid")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _vm_summary(args) -> list[dict] | None:
    """The VMs the launcher manages, if this build has the VM manager."""
    try:
        from ipc.protocols.vm import VM
    except ImportError:
        return None
    with RpcClient(control_endpoint(args.runtime_dir), VM, timeout=5.0, retries=1) as c:
        try:
            return to_plain(c.call("list"))
        except errors.IpcError:
            return None


def cmd_status(args) -> int:
    rows = call(args, "status")
    vms = _vm_summary(args)
    if args.json:
        out = {"components": rows, "runtime_dir": args.runtime_dir}
        if vms is not None:
            out["vms"] = vms
        out_json(out)
        return 0
    if getattr(args, "tables", False):
        return _print_tables(rows)
    for r in rows:
        d = r.get("details") or {}
        if not isinstance(d, dict):
            d = {}
        # "drops" and "internal_errors" follow one convention in every component (ipc/accounting.py)
        r["drops"] = d.get("drops", "-")
        notes = d.get("problems", [])[-1:]
        silent = d.get("silent_ports") or {}
        if isinstance(silent, dict) and silent:
            notes = [f"port {p}: driver silent {t} s" for p, t in sorted(silent.items())] + notes
        internal = d.get("internal_errors", 0)
        if isinstance(internal, int) and internal > 0:
            notes = [f"{internal} internal errors (qnet logs {r['name']})"] + notes
        r["note"] = "; ".join(notes)
    print(table(rows, [("name", "NAME"), ("state", "STATE"), ("pid", "PID"), ("restarts", "RESTARTS"),
                       ("last_exit", "LAST EXIT"), ("since", "SINCE"), ("drops", "DROPS"), ("note", "NOTE")]))
    if vms:
        states: dict[str, int] = {}
        for v in vms:
            states[v["state"]] = states.get(v["state"], 0) + 1
        print("vms: " + ", ".join(f"{n} {st}" for st, n in sorted(states.items())) + "  (qnet vm list)")
    return 0


def _print_tables(rows: list[dict]) -> int:
    """Every bounded table of every component: occupancy, limit, drops (`qnet status --tables`)."""
    out = []
    for r in rows:
        d = r.get("details") or {}
        tables = d.get("tables") if isinstance(d, dict) else None
        for name, t in sorted((tables or {}).items()):
            if isinstance(t, dict):
                out.append({"component": r["name"], "table": name, "size": t.get("size"),
                            "limit": t.get("limit"), "drops": t.get("drops")})
    print(table(out, [("component", "COMPONENT"), ("table", "TABLE"), ("size", "SIZE"), ("limit", "LIMIT"),
                      ("drops", "DROPS")]))
    return 0


def cmd_restart(args) -> int:
    res = call(args, "restart", timeout=60.0, name=args.name, mode="cold" if args.cold else "handover")
    if args.json:
        out_json(res)
        return 0
    how = "state handed over" if res["handed_over"] else "no state handed over"
    print(f"{res['name']}: pid {res['old_pid']} -> {res['new_pid']} ({how}, {res['seconds']} s)")
    return 0


def cmd_logs(args) -> int:
    chunk = call(args, "logs", name=args.name, offset=-1, max_bytes=args.bytes)
    sys.stdout.write(chunk["text"])
    sys.stdout.flush()
    if not args.follow:
        return 0
    offset = chunk["offset"]
    try:
        while True:
            time.sleep(0.3)
            chunk = call(args, "logs", name=args.name, offset=offset, max_bytes=65536)
            if chunk["text"]:
                sys.stdout.write(chunk["text"])
                sys.stdout.flush()
            offset = chunk["offset"]
    except KeyboardInterrupt:
        return 0


def cmd_ipc(args) -> int:
    if args.ipc_cmd == "list":
        protos = registry.all_protocols()
        if args.json:
            out_json([{"name": p.name, "version": str(p.version), "methods": [m.name for m in p.methods],
                       "events": [e.name for e in p.events], "streams": [s.name for s in p.streams]}
                      for p in protos])
            return 0
        rows = [{"name": p.name, "version": str(p.version), "methods": len(p.methods), "events": len(p.events),
                 "streams": len(p.streams), "doc": p.doc} for p in protos]
        print(table(rows, [("name", "PROTOCOL"), ("version", "VERSION"), ("methods", "METHODS"),
                           ("events", "EVENTS"), ("streams", "STREAMS"), ("doc", "PURPOSE")]))
        return 0
    proto = registry.get(args.name)
    if proto is None:
        names = ", ".join(p.name for p in registry.all_protocols())
        raise CliError(f"no protocol named {args.name!r} (known: {names})")
    print(proto.describe())
    return 0


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise CliError(f"{self.prog}: {message} (see '{self.prog} --help')", EXIT_USAGE)


COMMAND_MODULES: list[Callable[[argparse._SubParsersAction], None]] = []


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="qnet", description="qnet: a microkernel-style user-space network stack for QEMU VMs.")
    try:
        from importlib.metadata import version as _version
        ver = _version("qnet")
    except Exception:
        ver = "unknown"
    ap.add_argument("--version", action="version", version=f"qnet {ver}")
    ap.add_argument("--runtime-dir", default=default_runtime_dir(),
                    help="where the graph's sockets, logs and state live (default: $QNET_RUNTIME_DIR or %(default)s)")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("up", help="start the component graph")
    p.add_argument("-f", "--file", help="graph manifest (TOML); the embedded default graph without it")
    p.add_argument("--detach", action="store_true", help="run the launcher in the background")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the graph (with --detach)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop every component and the launcher")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="every component: pid, state, restarts, drops")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tables", action="store_true",
                   help="every bounded table of every component: occupancy, limit, drops")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restart", help="replace one component (make-before-break, state handed over)")
    p.add_argument("name")
    p.add_argument("--cold", action="store_true", help="stop first, then start (no hand-over)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("logs", help="a component's log")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--bytes", type=int, default=16384, help="how much of the tail to show")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("ipc", help="the declared interfaces")
    isub = p.add_subparsers(dest="ipc_cmd", metavar="list|describe", parser_class=_Parser)
    ip = isub.add_parser("list", help="every declared protocol")
    ip.add_argument("--json", action="store_true")
    ip = isub.add_parser("describe", help="one protocol as a person would read it")
    ip.add_argument("name")
    p.set_defaults(func=cmd_ipc)

    for add in COMMAND_MODULES:
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    import importlib
    from . import cli_net  # noqa: F401  (registers the network commands)
    from . import cli_ra  # noqa: F401  (registers qnet ra)
    from . import cli_run  # noqa: F401  (registers qnet run)
    from . import cli_fw  # noqa: F401  (registers qnet fw)
    try:
        importlib.import_module("launcher.cli_vm")  # registers the VM commands
    except ModuleNotFoundError as exc:
        if exc.name != "launcher.cli_vm":
            raise
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
        if not getattr(args, "cmd", None):
            ap.print_help()
            return EXIT_USAGE
        if args.cmd == "ipc" and not getattr(args, "ipc_cmd", None):
            raise CliError("qnet ipc: say 'list' or 'describe NAME'", EXIT_USAGE)
        return args.func(args) or 0
    except CliError as exc:
        msg = str(exc)
        print(msg if msg.startswith("qnet ") or msg.startswith("qnet:") else f"qnet: {msg}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # never a traceback to a user
        print(f"qnet: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    # Run through the imported module: command modules register into launcher.cli, not __main__.
    from launcher.cli import main as _main
    sys.exit(_main())
