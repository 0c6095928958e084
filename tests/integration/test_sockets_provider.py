"""The socket provider (components/sockets) against bad and hostile clients: malformed requests
get typed errors and cost nobody else anything, limits and grants hold per client, a client that
dies in the middle of a call takes its sockets with it."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket as std
import subprocess
import sys
import tempfile
import time

import msgspec
import pytest

import launcher
from .conftest import REPO, run_qnet, wait_until

LIMIT = 8


def _manifest(work: str) -> str:
    with open(os.path.join(os.path.dirname(launcher.__file__), "default_graph.toml")) as f:
        text = f.read()
    assert "[components.sockets]" in text
    text += f'\n[components.sockets.args]\nmax_sockets = {LIMIT}\ngrants = {{ "65533" = ["low_ports"] }}\n'
    path = os.path.join(work, "graph.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def run():
    work = tempfile.mkdtemp(prefix="qs", dir="/tmp")
    os.chmod(work, 0o755)           # the unprivileged clients below must reach RUN/sockets.sock
    run = os.path.join(work, "r")
    old = os.environ.get("QNET_RUNTIME_DIR")
    try:
        res = run_qnet(run, "up", "-f", _manifest(work), "--detach", "--timeout", "40")
        assert res.returncode == 0, res.stdout + res.stderr
        os.chmod(run, 0o755)
        os.environ["QNET_RUNTIME_DIR"] = run
        yield run
    finally:
        if old is None:
            os.environ.pop("QNET_RUNTIME_DIR", None)
        else:
            os.environ["QNET_RUNTIME_DIR"] = old
        run_qnet(run, "down", timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def _raw(run: str) -> std.socket:
    s = std.socket(std.AF_UNIX, std.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(os.path.join(run, "sockets.sock"))
    return s


def _ask(s: std.socket, payload: bytes) -> list:
    s.send(payload)
    msg, fds, _f, _a = std.recv_fds(s, 65536, 4)
    for fd in fds:
        os.close(fd)
    return msgspec.msgpack.decode(msg)


def _call(method: str, args, req_id: int = 7) -> bytes:
    body = args if isinstance(args, bytes) else msgspec.msgpack.encode(args)
    return msgspec.msgpack.encode([req_id, method, body])


def _ss(run: str) -> list[dict]:
    res = run_qnet(run, "ss", "-a", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _child(run: str, code: str, uid: int | None = None) -> subprocess.Popen:
    """A separate program using qnet.socket (optionally as another user)."""
    env = dict(os.environ, QNET_RUNTIME_DIR=run, PYTHONPATH=REPO)
    # Everything is imported as root (the interpreter's tree may be closed to others); the
    # connection to the provider is made after setuid, so the provider sees the other user.
    pre = (f"import os, errno, msgspec\nfrom qnet import socket as _q\nos.setgid({uid}); os.setuid({uid})\n"
           if uid is not None else "")
    return subprocess.Popen([sys.executable, "-c", pre + code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_malformed_requests_get_typed_errors_and_the_session_goes_on(run):
    s = _raw(run)
    try:
        cases = [
            (b"\xc1\xc1garbage", "EINVAL"),                                   # not MessagePack
            (msgspec.msgpack.encode({"a": 1}), "EINVAL"),                     # wrong shape
            (msgspec.msgpack.encode([1, "socket"]), "EINVAL"),                # too short
            (_call("no_such_call", {}), "EOPNOTSUPP"),                        # unknown call
            (_call("socket", {"kind": "sctp"}), "EINVAL"),                    # bad enum
            (_call("socket", b"\x92\x01"), "EINVAL"),                         # args not a map
            (_call("bind", {"sock": "../../etc", "kind": "tcp", "address": "0.0.0.0", "port": 1}), "EINVAL"),
            (_call("bind", {"sock": "b1", "kind": "tcp", "address": "0.0.0.0", "port": 70000}), "EINVAL"),
            (_call("connect", {"sock": "b1", "kind": "tcp", "address": "not-an-ip", "port": 80}), "EINVAL"),
            (msgspec.msgpack.encode([3, "status", b"\x91" * 2000 + b"\x90"]), "EINVAL"),   # deeply nested
        ]
        for payload, code in cases:
            rep = _ask(s, payload)
            assert rep[1] == 1, (payload[:40], rep)
            assert rep[2]["code"] == code, (payload[:40], rep)
            assert rep[2]["message"]
        # The same session still works.
        rep = _ask(s, _call("status", {}, req_id=99))
        assert rep[0] == 99 and rep[1] == 0 and rep[2]["pid"] == os.getpid()
    finally:
        s.close()


def test_a_client_that_sends_garbage_and_vanishes_costs_other_clients_nothing(run):
    from qnet import socket as qs
    lst = qs.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    try:
        for _ in range(20):
            s = _raw(run)
            s.send(os.urandom(3000))
            s.close()
        # A half-sent call whose client dies before reading the answer.
        s = _raw(run)
        s.send(_call("socket", {"kind": "tcp"}))
        s.close()
        with qs.create_connection(lst.getsockname(), timeout=5) as c:
            conn, _ = lst.accept()
            with conn:
                c.sendall(b"still fine")
                assert conn.recv(100) == b"still fine"
    finally:
        lst.close()


def test_socket_limit_per_client_and_other_clients_unaffected(run):
    from qnet import socket as qs
    before = _count_mine(run)       # a raw session of this process may have left one
    held = []
    try:
        with pytest.raises(OSError) as e:
            for _ in range(LIMIT + 1):
                held.append(qs.socket())
        assert e.value.errno == errno.EMFILE
        assert len(held) == LIMIT - before and _count_mine(run) == LIMIT
        # Another program has its own budget.
        p = _child(run, "from qnet import socket as s\nx=[s.socket() for _ in range(3)]\nprint('ok', len(x))")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and "ok 3" in out, err
    finally:
        for s in held:
            s.close()
    # Closed sockets give the budget back.
    wait_until(lambda: _count_mine(run) == before, 5, "the provider to see the sockets closed")
    qs.socket().close()


def _count_mine(run: str) -> int:
    s = _raw(run)
    try:
        return len(_ask(s, _call("status", {}))[2]["sockets"])
    finally:
        s.close()


def test_a_client_killed_in_a_blocking_call_takes_its_sockets_with_it(run):
    code = ("from qnet import socket as s\nimport sys\n"
            "l=s.socket(); l.bind(('127.0.0.1',0)); l.listen()\n"
            "u=s.socket(s.AF_INET, s.SOCK_DGRAM); u.bind(('127.0.0.1',0))\n"
            "print(l.getsockname()[1], u.getsockname()[1], flush=True)\n"
            "l.accept()\n")
    p = _child(run, code)
    try:
        line = p.stdout.readline()
        tport, uport = (int(x) for x in line.split())
        owner = f"[{p.pid}]"
        wait_until(lambda: sum(1 for r in _ss(run) if owner in r.get("owner", "")) == 2, 10,
                   "the child's listener and UDP socket in qnet ss, with their owner")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        wait_until(lambda: not any(owner in r.get("owner", "") for r in _ss(run)), 10,
                   "the dead child's sockets to go")
        # Its ports are free again.
        from qnet import socket as qs
        with qs.socket() as s:
            s.bind(("127.0.0.1", tport))
            s.listen()
        with qs.socket(qs.AF_INET, qs.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", uport))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_a_client_cannot_use_another_clients_socket(run):
    from qnet import socket as qs
    lst = qs.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    try:
        code = (f"import msgspec, socket, os\n"
                f"s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect({os.path.join(run, 'sockets.sock')!r})\n"
                f"out=[]\n"
                f"for m,a in (('accept',{{'sock':{lst._q.sock!r}}}),('setsockopt',{{'sock':{lst._q.sock!r},'level':6,'name':1,'value':1}})):\n"
                f"    s.send(msgspec.msgpack.encode([1,m,msgspec.msgpack.encode(a)]))\n"
                f"    out.append(msgspec.msgpack.decode(s.recv(65536))[2].get('code'))\n"
                f"print(out)\n")
        p = _child(run, code)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        assert out.strip() == "['EBADF', 'EBADF']"
        with qs.create_connection(lst.getsockname(), timeout=5) as c:
            conn, _ = lst.accept()
            conn.close()
            assert c
    finally:
        lst.close()


def test_grants_low_ports_and_marks(run):
    from qnet import socket as qs
    # root holds every grant
    with qs.socket() as s:
        s.setsockopt(qs.SOL_SOCKET, qs.SO_MARK, 7)
        s.bind(("127.0.0.1", 81))
    code = ("from qnet import socket as s\nimport errno\nr=[]\n"
            "a=s.socket()\ntry:\n    a.bind(('127.0.0.1', 80)); r.append('bound')\n"
            "except OSError as e: r.append(errno.errorcode[e.errno])\n"
            "try:\n    a.setsockopt(s.SOL_SOCKET, s.SO_MARK, 1); r.append('marked')\n"
            "except OSError as e: r.append(errno.errorcode[e.errno])\n"
            "b=s.socket()\nb.bind(('127.0.0.1', 0)); r.append('high ok')\nprint(r)\n")
    p = _child(run, code, uid=65534)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.strip() == "['EACCES', 'EPERM', 'high ok']"
    # The manifest grants uid 65533 low ports (and nothing else).
    p = _child(run, code, uid=65533)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.strip() == "['bound', 'EPERM', 'high ok']"


def test_marks_in_independent_domains_and_raw_sockets_need_their_grant(run):
    from qnet import socket as qs
    with qs.socket() as s:
        s.set_mark(1, 10)
        s.set_mark(2, 20)
        s.setsockopt(qs.SOL_SOCKET, qs.SO_MARK, 11)      # SO_MARK is domain 1
        assert (s.get_mark(1), s.get_mark(2), s.get_mark(3)) == (11, 20, 0)
        assert s.getsockopt(qs.SOL_SOCKET, qs.SO_MARK) == 11
        mine = _status_sockets(run, s._q.sock)
        assert mine["marks"] == {1: 11, 2: 20}
        with pytest.raises(OSError) as e:
            s.set_mark(9, 1)
        assert e.value.errno == errno.EINVAL
    # root holds raw_icmp: the socket type itself is what is missing
    with pytest.raises(OSError) as e:
        qs.socket(qs.AF_INET, qs.SOCK_RAW, qs.IPPROTO_ICMP)
    assert e.value.errno == errno.EPROTONOSUPPORT and "SOCK_RAW" in str(e.value)
    code = ("from qnet import socket as s\nimport errno\n"
            "try:\n    s.socket(s.AF_INET, s.SOCK_RAW, s.IPPROTO_ICMP)\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n")
    p = _child(run, code, uid=65534)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.strip() == "EPERM"


def _status_sockets(run: str, sock: str) -> dict:
    """This process's socket `sock` as the provider sees it (asked over a session of our own)."""
    from qnet._session import session
    r, _ = session().call("status", {})
    return next(x for x in r["sockets"] if x["sock"] == sock)
