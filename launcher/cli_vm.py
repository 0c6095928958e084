"""`qnet vm ...`: QEMU guests on qnet ports.

The launcher starts and stops QEMU, hot-plugs NICs and owns the ports
(``qnet.vm``); this module waits and shows progress, and drives a guest's
serial console itself (`exec`, `console`): the launcher only says where it is.
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time

from ipc import errors
from ipc.decl import to_plain
from ipc.protocols.vm import VM
from ipc.rpc import RpcClient

from .cli import COMMAND_MODULES, CliError, EXIT_NOT_UP, EXIT_USAGE, call, out_json, table
from .console import ConsoleClosed, ConsoleLogTail, SerialConsole, tail_text
from .service import control_endpoint

ESCAPE = b"\x1d"  # Ctrl-]


def vm_call(args, method: str, wait: float = 10.0, **kw):
    """One call of qnet.vm; ``wait`` bounds the answer (``timeout`` is an argument of stop)."""
    run = args.runtime_dir
    if not os.path.exists(os.path.join(run, "launcher.ctl")):
        raise CliError(f"not up (no launcher in {run}); start it with 'qnet up'", EXIT_NOT_UP)
    with RpcClient(control_endpoint(run), VM, timeout=wait, retries=1) as c:
        try:
            return to_plain(c.call(method, **kw))
        except errors.Timeout:
            raise CliError(f"the launcher did not answer within {wait:g} s") from None
        except errors.UnknownProtocol:
            raise CliError("this launcher has no VM support (qnet.vm)") from None
        except errors.IpcError as exc:
            raise CliError(str(exc)) from None


def _has_dhcp_server(args) -> bool:
    graph = call(args, "graph")
    return any(p.startswith("qnet.dhcpd@") for c in graph["components"] for p in c["provides"])


def _find(args, name: str) -> dict | None:
    return next((v for v in vm_call(args, "list") if v["name"] == name), None)


# -- start: wait for the guest, showing its progress -----------------------------------------------
def _nat_rules(port: str, uplink: str) -> list[list[str]]:
    """What `--nat UPLINK` asks of the firewall for a guest port: its connections leave on the
    uplink masqueraded, and the uplink side cannot open connections to it (a port forward
    needs its own `forward ... accept` before these rules, as with Linux)."""
    return [["forward", "iif", uplink, "oif", port, "ct", "state", "new,invalid", "drop"],
            ["egress", "iif", port, "oif", uplink, "masquerade"]]


def _check_nat(args) -> None:
    from .cli_fw import fw_call
    from .cli_net import netstack_call
    ports = [p["name"] for p in netstack_call(args, "port_list")]
    if args.nat not in ports:
        raise CliError(f"qnet vm start --nat: there is no port {args.nat!r} "
                       f"(ports: {', '.join(ports) or 'none'})", EXIT_USAGE)
    fw_call(args, "list")       # says so now if the graph has no firewall, before QEMU starts


def _add_nat(args, port: str) -> None:
    from .cli_fw import fw_call
    for tokens in _nat_rules(port, args.nat):
        try:
            row = fw_call(args, "add", tokens=tokens, position=None)
        except CliError as e:
            raise CliError(f"vm {args.name} runs on port {port} without NAT: {e}") from None
        if not args.json:
            print(f"  firewall rule {row['number']}: {row['text']}", flush=True)


def _remove_nat(args, port: str) -> None:
    """Delete the rules `--nat` added for a guest port (a graph without firewall has none)."""
    from .cli_fw import fw_call
    graph = call(args, "graph")
    if not any(p.startswith("qnet.firewall@") for c in graph["components"] for p in c["provides"]):
        return
    for number, text in sorted(_nat_rows(fw_call(args, "list")["rules"], port), reverse=True):
        fw_call(args, "delete", number=number)
        print(f"  firewall rule {number} removed: {text}")


def _nat_rows(rows: list[dict], port: str) -> list[tuple[int, str]]:
    found = []
    for r in rows:
        w = r["text"].split()
        if (w[:3] == ["egress", "iif", port] and w[3:4] == ["oif"] and w[5:] == ["masquerade"]) \
                or (w[:2] == ["forward", "iif"] and w[3:5] == ["oif", port]
                    and w[5:] == ["ct", "state", "new,invalid", "drop"]):
            found.append((r["number"], r["text"]))
    return found


def cmd_start(args) -> int:
    t0 = time.monotonic()
    if args.nat:
        _check_nat(args)
    info = vm_call(args, "start", wait=60.0, name=args.name, mem_mb=args.mem, backend=args.backend,
                   image=os.path.abspath(args.image) if args.image else None, mac=args.mac.lower() if args.mac else None, smp=args.smp)
    if not args.json:
        print(f"vm {info['name']}: QEMU pid {info['pid']}, {info['backend']} port {info['port']} "
              f"({info['address']}), MAC {info['mac']}", flush=True)
    if args.nat:
        _add_nat(args, info["port"])
    if args.no_wait:
        if args.json:
            out_json(info)
        return 0
    dhcp = _has_dhcp_server(args)
    want = "lease" if dhcp else "ready"
    lease = _follow_boot(args, info, want, t0)
    if not dhcp and not args.json:
        print(f"  no DHCP server in this graph: give the guest an address with "
              f"qnet vm exec {info['name']} 'ip addr add ... dev eth0'")
    if args.json:
        info = _find(args, info["name"]) or info
        if lease and not info.get("lease"):
            info["lease"] = lease
        out_json(info)
    return 0


def _follow_boot(args, info: dict, want: str, t0: float) -> str | None:
    """Print the guest's QNET-GUEST events from its console log until ``want`` (lease | ready)."""
    path = info["console_log"]
    deadline = time.monotonic() + args.timeout
    log, next_check = ConsoleLogTail(path), 0.0
    while time.monotonic() < deadline:
        for event, rest in log.events():
            if not args.json:
                print(f"  {time.monotonic() - t0:5.1f} s  {event} {rest}".rstrip(), flush=True)
            if event == want == "ready":
                return None
            if event == want == "lease":
                return rest.split()[1] if len(rest.split()) > 1 else None
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 0.5
            vm = _find(args, info["name"])
            if vm is None or vm["state"] != "running":
                how = vm["exit"] if vm else "it was removed"
                raise CliError(f"vm {info['name']}: QEMU exited ({how}); see {info['log']}: {tail_text(info['log'])}")
        time.sleep(0.1)
    raise CliError(f"vm {info['name']}: no {want} from the guest within {args.timeout:g} s "
                   f"(it keeps running; see {path}, or --no-wait)")


# -- list, stop, attach, detach, link ------------------------------------------------------------------
def cmd_list(args) -> int:
    rows = vm_call(args, "list")
    if args.json:
        out_json(rows)
        return 0
    for r in rows:
        r["pid"] = r["pid"] or "-"
        r["uptime"] = _duration(r["uptime"])
        if r["exit"] and r["state"] != "running":
            r["state"] = f"{r['state']} ({r['exit']})"
    print(table(rows, [("name", "NAME"), ("state", "STATE"), ("pid", "PID"), ("port", "PORT"), ("mac", "MAC"),
                       ("backend", "BACKEND"), ("accel", "ACCEL"), ("lease", "LEASE"), ("uptime", "UPTIME")]))
    return 0


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def cmd_stop(args) -> int:
    info = vm_call(args, "stop", wait=args.timeout + 15.0, name=args.name, timeout=args.timeout)
    print(f"vm {info['name']}: {info['exit'] or info['state']}")
    if info.get("port"):
        _remove_nat(args, info["port"])
    return 0


def cmd_attach(args) -> int:
    info = vm_call(args, "attach", wait=30.0, name=args.name, qmp=os.path.abspath(args.qmp),
                   backend=args.backend, bus=args.bus, mac=args.mac.lower() if args.mac else None)
    if args.json:
        out_json(info)
        return 0
    print(f"vm {info['name']}: NIC {info['device']} ({info['mac']}) hot-plugged into QEMU pid {info['pid'] or '?'}"
          f" on bus {info['bus'] or 'root'}; {info['backend']} port {info['port']} ({info['address']})")
    return 0


def cmd_detach(args) -> int:
    vm_call(args, "detach", wait=30.0, name=args.name)
    print(f"vm {args.name}: NIC removed, port {args.name} removed")
    return 0


def cmd_link(args) -> int:
    res = vm_call(args, "link", wait=15.0, name=args.name, up=args.state == "up")
    print(f"vm {res['name']}: link {'up' if res['up'] else 'down'}" + (f" ({res['note']})" if res["note"] else ""))
    return 0


# -- the serial console -------------------------------------------------------------------------------------
def cmd_exec(args) -> int:
    where = vm_call(args, "console_path", name=args.name)
    cmd = " ".join(args.command)
    if not cmd.strip():
        raise CliError("qnet vm exec: say which command to run", EXIT_USAGE)
    console = SerialConsole(where["serial"])
    try:
        status, output = console.run(cmd, timeout=args.timeout)
    except TimeoutError as exc:
        raise CliError(f"vm {args.name}: {str(exc).split(';')[0]}") from None
    except (ConsoleClosed, OSError) as exc:
        raise CliError(f"vm {args.name}: console: {exc}") from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        console.close()
    sys.stdout.write(output)
    sys.stdout.flush()
    return status


def cmd_console(args) -> int:
    where = vm_call(args, "console_path", name=args.name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(where["serial"])
    except OSError as exc:
        raise CliError(f"vm {args.name}: console {where['serial']}: {exc.strerror}") from None
    tty = sys.stdin.isatty()
    print(f"vm {args.name}: serial console; Ctrl-] leaves", file=sys.stderr, flush=True)
    saved = None
    if tty:
        import termios
        import tty as ttymod
        saved = termios.tcgetattr(sys.stdin.fileno())
        ttymod.setraw(sys.stdin.fileno(), termios.TCSANOW)  # keep what was typed ahead
    try:
        sock.sendall(b"\n")
        _relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        if saved is not None:
            import termios
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        sock.close()
    print("\r\nqnet: console closed", file=sys.stderr)
    return 0


def _relay(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    while True:
        ready, _, _ = select.select([sock, fd_in], [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(fd_out, data)
        if fd_in in ready:
            data = os.read(fd_in, 1024)
            if not data or ESCAPE in data:
                data = data.split(ESCAPE)[0]
                if data:
                    sock.sendall(data)
                return
            sock.sendall(data)


# -- parser -------------------------------------------------------------------------------------------------
def cmd_vm(args) -> int:
    if not getattr(args, "vm_func", None):
        raise CliError("qnet vm: say start, stop, list, attach, detach, link, exec or console", EXIT_USAGE)
    return args.vm_func(args)


def add_commands(sub) -> None:
    from .cli import _Parser
    p = sub.add_parser("vm", help="QEMU guests on qnet ports: start, stop, list, attach, exec, console")
    vs = p.add_subparsers(dest="vm_cmd", metavar="start|stop|list|attach|detach|link|exec|console",
                          parser_class=_Parser)

    a = vs.add_parser("start", help="boot the guest image on a new port (it gets a lease from us)")
    a.add_argument("name")
    a.add_argument("--mem", type=int, default=256, metavar="MB")
    a.add_argument("--smp", type=int, default=1)
    a.add_argument("--backend", choices=("stream", "dgram", "tap"), default="stream")
    a.add_argument("--image", metavar="DIR", help="vmlinuz and initramfs.gz (default: images/out)")
    a.add_argument("--mac", help="the guest NIC's MAC (default: 52:54:00:xx:xx:xx from the name)")
    a.add_argument("--nat", metavar="UPLINK", help="NAT router for the guest: masquerade its connections "
                   "leaving on port UPLINK, refuse new ones from there (firewall rules, removed "
                   "with the VM)")
    a.add_argument("--no-wait", action="store_true", help="return once QEMU runs; do not wait for the lease")
    a.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the lease")
    a.add_argument("--json", action="store_true")
    a.set_defaults(vm_func=cmd_start)

    a = vs.add_parser("stop", help="quit QEMU, remove its port (forgets an exited VM)")
    a.add_argument("name")
    a.add_argument("--timeout", type=float, default=5.0, help="seconds before QEMU is killed")
    a.set_defaults(vm_func=cmd_stop)

    a = vs.add_parser("list", help="every VM: state, pid, port, MAC, backend, lease, uptime")
    a.add_argument("--json", action="store_true")
    a.set_defaults(vm_func=cmd_list)

    a = vs.add_parser("attach", help="hot-plug a NIC into a running QEMU on a new port")
    a.add_argument("name")
    a.add_argument("--qmp", required=True, metavar="PATH", help="the QEMU's QMP unix socket")
    a.add_argument("--backend", choices=("stream", "dgram"), default="stream")
    a.add_argument("--bus", help="the PCI bus to plug into (default: a free pcie-root-port)")
    a.add_argument("--mac")
    a.add_argument("--json", action="store_true")
    a.set_defaults(vm_func=cmd_attach)

    a = vs.add_parser("detach", help="unplug an attached NIC and remove its port")
    a.add_argument("name")
    a.set_defaults(vm_func=cmd_detach)

    a = vs.add_parser("link", help="set the guest NIC's link up or down")
    a.add_argument("name")
    a.add_argument("state", choices=("up", "down"))
    a.set_defaults(vm_func=cmd_link)

    a = vs.add_parser("exec", help="run a shell command on the guest's serial console")
    a.add_argument("name")
    a.add_argument("--timeout", type=float, default=30.0, help="seconds (give it before NAME)")
    a.add_argument("command", nargs=argparse.REMAINDER, help="the shell command (one argument or several)")
    a.set_defaults(vm_func=cmd_exec)

    a = vs.add_parser("console", help="the guest's serial console on this terminal (Ctrl-] leaves)")
    a.add_argument("name")
    a.set_defaults(vm_func=cmd_console)
    p.set_defaults(func=cmd_vm, vm_func=None)


COMMAND_MODULES.append(add_commands)
