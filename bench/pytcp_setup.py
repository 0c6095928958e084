"""Fetch PyTCP 3.0.9 and back-port it to Python 3.13, for the IPv4 benchmark's anchor.

PyTCP 3.0.9 declares ``Requires-Python >=3.14``. Two 3.14 language features
are all that stand between it and 3.13:

* PEP 758 ``except A, B:`` without parentheses -> rewritten ``except (A, B):``;
* PEP 649 lazily evaluated annotations (forward references to names defined
  later in a module) -> ``from __future__ import annotations`` in every module.

The wheels are fetched with pip (``pip download --python-version 3.14``, the
ordinary client), unpacked into a cache directory, and rewritten there; the
project's own code is never touched. ``python -m bench.pytcp_setup`` prepares
the tree and prints its path.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

VERSION = "3.0.9"
DISTS = ("pytcp", "pytcp-net_addr", "pytcp-net_proto")
CACHE = os.environ.get("QNET_PYTCP_CACHE", "/tmp/qnet-pytcp")
PY313 = os.environ.get("QNET_PYTCP_PYTHON", "/root/.pyenv/versions/3.13.0/bin/python3")

# PEP 758: `except A, B:` (no `as`); a parenthesised tuple is the 3.13 spelling.
_EXCEPT_BARE_TUPLE = re.compile(r"^(?P<indent>\s*)except (?P<types>[^():\n]+,[^():\n]+):", re.MULTILINE)


class PyTcpUnavailable(RuntimeError):
    """PyTCP could not be fetched, back-ported or imported; the message says why."""


def backport_source(text: str) -> str:
    """One module's source, rewritten to parse and import on Python 3.13."""
    text = _EXCEPT_BARE_TUPLE.sub(lambda m: f"{m['indent']}except ({m['types'].strip()}):", text)
    if "from __future__ import annotations" in text:
        return text
    tree = ast.parse(text)  # raises SyntaxError if a 3.14-only construct remains
    insert_at = 0  # line index after which the future import goes
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None),
                                                                      ast.Constant) \
            and isinstance(tree.body[0].value.value, str):
        insert_at = tree.body[0].end_lineno or 0  # a __future__ import must follow the docstring
    lines = text.splitlines(keepends=True)
    lines.insert(insert_at, "\nfrom __future__ import annotations\n")
    return "".join(lines)


def _fetch_wheels(dest: str) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.14", "-d", dest, *(f"{d}=={VERSION}" for d in DISTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wheels = [os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".whl")]
    if proc.returncode != 0 or len(wheels) != len(DISTS):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PyTcpUnavailable(f"pip download failed: {tail[0]}")
    return wheels


def prepare(cache: str = CACHE) -> str:
    """The path of a back-ported PyTCP tree (put it first on sys.path of a 3.13 interpreter)."""
    tree = os.path.join(cache, f"pytcp-{VERSION}-py313")
    stamp = os.path.join(tree, ".backported")
    if os.path.exists(stamp):
        return tree
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=cache)
    try:
        wheel_dir = os.path.join(work, "wheels")
        src = os.path.join(work, "src")
        os.makedirs(wheel_dir)
        for wheel in _fetch_wheels(wheel_dir):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(src)
        # The rewrite runs on 3.13 itself: PyTCP also uses 3.12 syntax (PEP 695 generics) that
        # this interpreter's ast cannot parse.
        rw = subprocess.run([python(), os.path.abspath(__file__), "--rewrite", src], capture_output=True,
                            text=True, timeout=300)
        if rw.returncode != 0:
            last = (rw.stderr or rw.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PyTcpUnavailable(last[0])
        check = subprocess.run([python(), "-c", "import pytcp.daemon.daemon, pytcp.client"], cwd=src,
                               capture_output=True, text=True, timeout=120)
        if check.returncode != 0:
            last = check.stderr.strip().splitlines()[-1:] or ["no output"]
            raise PyTcpUnavailable(f"import on {os.path.basename(PY313)} failed: {last[0]}")
        open(os.path.join(src, ".backported"), "w").close()
        shutil.rmtree(tree, ignore_errors=True)
        os.replace(src, tree)
        return tree
    finally:
        shutil.rmtree(work, ignore_errors=True)


def python() -> str:
    if not os.access(PY313, os.X_OK):
        raise PyTcpUnavailable(f"no Python 3.13 at {PY313}")
    return PY313


def rewrite_tree(src: str) -> None:
    """Back-port every module under ``src`` in place (run on the 3.13 interpreter)."""
    failures = []
    for root, _dirs, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            try:
                new = backport_source(text)
            except SyntaxError as exc:
                failures.append(f"{os.path.relpath(path, src)}:{exc.lineno}: {exc.msg}")
                continue
            if new != text:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    if failures:
        raise PyTcpUnavailable(f"back-port left {len(failures)} unparsable modules, first: {failures[0]}")


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["--rewrite"]:
            rewrite_tree(sys.argv[2])
        else:
            print(prepare())
    except PyTcpUnavailable as exc:
        print(f"PyTCP: unavailable ({exc})", file=sys.stderr)
        sys.exit(1)
