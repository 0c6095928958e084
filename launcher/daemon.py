"""The launcher as a process: `qnet up` runs this in the foreground or detached."""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

from components.runtime import LOG_FILE_MAX, LogRateLimit

from .manifest import ManifestError, load
from .service import AlreadyRunning, Launcher
from .supervisor import StartFailed


def setup_launcher_logging(runtime_dir: str, console: bool, max_bytes: int = LOG_FILE_MAX) -> LogRateLimit:
    """launcher.log under the components' rules (components/runtime.py): one LogRateLimit judges
    every line once for all handlers, and the file is rotated at the same bound, one old file
    (launcher.log.1) kept. The launcher logs what components report and what the CLI asks, so a
    misbehaving peer must not be able to fill the disk through it either."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    os.makedirs(os.path.join(runtime_dir, "logs"), mode=0o700, exist_ok=True)
    limit = LogRateLimit()
    # The text format stays (people read this file); runtime.py's own handlers write JSON
    # lines or rotate fd 2, so the standard rotating handler carries its bound here.
    fh = logging.handlers.RotatingFileHandler(os.path.join(runtime_dir, "logs", "launcher.log"),
                                              maxBytes=max_bytes, backupCount=1)
    fh.setFormatter(logging.Formatter("%(asctime)s launcher %(levelname)s %(message)s", "%H:%M:%S"))
    fh.addFilter(limit)
    root.addHandler(fh)
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(logging.Formatter("qnet: %(message)s"))
        ch.setLevel(logging.WARNING)
        ch.addFilter(limit)
        root.addHandler(ch)
    return limit


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
