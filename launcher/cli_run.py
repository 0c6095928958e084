"""`qnet run [--] PROGRAM [ARGS]`: an unmodified Python program with its sockets on qnet.

The program runs in this project's interpreter with qnet/_shim first on PYTHONPATH; its
sitecustomize swaps the socket module for qnet.socket before the program's first import, so
socket.socket, socketserver, http.server, asyncio, urllib and http.client all use qnet. What
qnet does not support raises OSError naming the call; nothing falls back to the host's stack.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from .cli import COMMAND_MODULES, EXIT_NOT_UP, EXIT_USAGE, CliError

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
SHIM = os.path.join(ROOT, "qnet", "_shim")


def _python_argv(argv: list[str]) -> list[str]:
    """The command line to exec: this interpreter, then the program's arguments."""
    prog, rest = argv[0], argv[1:]
    base = os.path.basename(prog)
    if base.startswith("python") and (base[6:] == "" or base[6:].replace(".", "").isdigit()):
        return [sys.executable, *rest]
    path = prog if os.sep in prog else next(
        (os.path.join(d, prog) for d in os.environ.get("PATH", "").split(os.pathsep)
         if os.path.isfile(os.path.join(d, prog))), prog)
    if prog.endswith(".py") and os.path.isfile(prog):
        return [sys.executable, prog, *rest]
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        raise CliError(f"qnet run: {prog}: no such program", EXIT_USAGE) from None
    if first.startswith(b"#!") and b"python" in first:
        return [sys.executable, path, *rest]
    raise CliError(f"qnet run: {prog} is not a Python program; qnet run puts a Python program's sockets "
                   f"on qnet (python ARGS, a .py file, or a script with a python #! line)", EXIT_USAGE)


def cmd_run(args) -> int:
    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("qnet run: say which program to run (qnet run [--] PROGRAM [ARGS])", EXIT_USAGE)
    exec_argv = _python_argv(argv)
    path = os.path.join(args.runtime_dir, "sockets.sock")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError as e:
        raise CliError(f"qnet run: no socket provider at {path} ({e.strerror}); start the graph with "
                       f"'qnet up' (its sockets component serves qnet.socket)", EXIT_NOT_UP) from None
    finally:
        probe.close()
    env = dict(os.environ, QNET_RUNTIME_DIR=args.runtime_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SHIM, ROOT, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(exec_argv[0], exec_argv, env)
    except OSError as e:
        raise CliError(f"qnet run: cannot start {exec_argv[0]}: {e.strerror}", EXIT_USAGE) from None
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="run a Python program with its sockets on qnet",
                       description="Run an unmodified Python program (python -m http.server, a script) "
                                   "with its AF_INET sockets on qnet's stack.")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="[--] PROGRAM [ARGS]")
    p.set_defaults(func=cmd_run)


COMMAND_MODULES.append(add_commands)
