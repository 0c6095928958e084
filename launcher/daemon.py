"""The launcher as a process: `qnet up` runs this in the foreground or detached."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .manifest import ManifestError, load
from .service import AlreadyRunning, Launcher
from .supervisor import StartFailed


def setup_launcher_logging(runtime_dir: str, console: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    os.makedirs(os.path.join(runtime_dir, "logs"), mode=0o700, exist_ok=True)
    fh = logging.FileHandler(os.path.join(runtime_dir, "logs", "launcher.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s launcher %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(fh)
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(logging.Formatter("qnet: %(message)s"))
        ch.setLevel(logging.WARNING)
        root.addHandler(ch)


def run(manifest: str | None, runtime_dir: str, *, console: bool, on_up=None) -> int:
    """Load, validate, start and serve a graph. Returns the process exit code."""
    try:
        graph = load(manifest)
    except ManifestError as exc:
        print(f"qnet: {exc}", file=sys.stderr)
        return 2
    try:
        launcher = Launcher(graph, runtime_dir, progress=(lambda m: print(m, flush=True)) if console else None)
    except AlreadyRunning as exc:
        print(f"qnet: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qnet: cannot use runtime dir {runtime_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    setup_launcher_logging(runtime_dir, console)
    logging.getLogger("qnet.launcher").info("graph %s from %s, runtime dir %s", graph.name, graph.source, runtime_dir)
    try:
        launcher.start_all()
    except (StartFailed, ManifestError) as exc:
        logging.getLogger("qnet.launcher").error("%s", exc)
        print(f"qnet: {exc}", file=sys.stderr, flush=True)
        launcher.close()
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback in the log
        logging.getLogger("qnet.launcher").exception("starting the graph failed")
        print(f"qnet: internal error while starting the graph: {type(exc).__name__}: {exc} "
              f"(see {runtime_dir}/logs/launcher.log)", file=sys.stderr, flush=True)
        launcher.close()
        return 70
    if on_up is not None:
        on_up(launcher)
    launcher.serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qnet-launcher")
    ap.add_argument("-f", "--file", default=None)
    ap.add_argument("--runtime-dir", required=True)
    a = ap.parse_args(argv)
    return run(a.file, a.runtime_dir, console=False)


if __name__ == "__main__":
    sys.exit(main())
