"""SerialConsole against a real shell on a pseudo-terminal behind a unix socket (no QEMU),
and the QEMU command line qemu_command builds."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest

from launcher.console import ConsoleClosed, SerialConsole, hotplug_bus, qemu_command

SHELL = shutil.which("busybox") or "/bin/sh"


class PtyShell:
    """Listens on a unix socket like QEMU's serial chardev; a busybox shell on a pty behind it."""

    def __init__(self, path: Path, greeting: bytes = b"") -> None:
        self.path = path
        self.greeting = greeting
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.shell: subprocess.Popen[bytes] | None = None

    def start(self) -> PtyShell:
        self.thread.start()
        return self

    def _serve(self) -> None:
        self.listener.settimeout(10)
        conn, _ = self.listener.accept()
        master, slave = pty.openpty()

        def controlling_tty() -> None:  # Ctrl-C must reach the shell's foreground job
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        argv = [SHELL, "sh", "-i"] if SHELL.endswith("busybox") else [SHELL, "-i"]
        self.shell = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                      start_new_session=True, preexec_fn=controlling_tty,
                                      env={"PATH": os.environ["PATH"], "PS1": "fake# "})
        os.close(slave)
        conn.sendall(self.greeting)
        try:
            while not self.stop.is_set():
                readable, _, _ = select.select([conn, master], [], [], 0.1)
                try:
                    if conn in readable:
                        data = conn.recv(4096)
                        if not data:
                            break
                        os.write(master, data)
                    if master in readable:
                        conn.sendall(os.read(master, 4096))
                except OSError:  # the client went away, or the shell did
                    break
        finally:
            conn.close()
            os.close(master)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        if self.shell is not None:
            self.shell.kill()
            self.shell.wait(timeout=5)
        self.listener.close()


@pytest.fixture
def sockdir():
    path = Path(tempfile.mkdtemp(prefix="qnet-console-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shell(sockdir):
    fake = PtyShell(sockdir / "serial.sock", greeting=b"boot...\r\nQNET-GUEST: ready\r\n").start()
    try:
        yield fake
    finally:
        fake.close()


def test_run_returns_status_and_output_without_echo_or_cr(shell):
    with SerialConsole.connect(shell.path, timeout=5) as console:
        assert console.run("echo hello; echo err >&2", timeout=10) == (0, "hello\nerr\n")
        assert console.run("exit 4", timeout=10) == (4, "")
        status, output = console.run("if then", timeout=10)
        assert status == 2 and "syntax error" in output
        # A quote-heavy command survives the trip through the shell's quoting.
        assert console.run("""printf '%s|' "a b" 'c'"'"'d'; echo""", timeout=10) == (0, "a b|c'd|\n")
        assert "\r" not in console.transcript()


def test_guest_event_lines_are_kept_out_of_command_output_but_can_be_waited_for(shell):
    console = SerialConsole(shell.path)  # lazy: connects on first use
    assert console.run("echo 'QNET-GUEST: lease eth9 1.2.3.4/24'; echo after", 10) == (0, "after\n")
    assert console.wait_for(b"QNET-GUEST: ready", 5)
    found = console.wait_for(re.compile(rb"QNET-GUEST: lease (\S+) "), 5)
    assert found.group(1) == b"eth9"
    console.close()


def test_wait_for_times_out_with_the_tail_of_the_output(shell):
    with SerialConsole.connect(shell.path, timeout=5) as console:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="QNET-GUEST: ready"):
            console.wait_for(b"never printed", 0.5)
        assert time.monotonic() - started < 2


def test_timed_out_command_is_interrupted_and_console_recovers(shell):
    with SerialConsole.connect(shell.path, timeout=5) as console:
        with pytest.raises(TimeoutError):
            console.run("sleep 20", timeout=1)
        assert console.run("echo back", timeout=10) == (0, "back\n")


def test_since_mark_skips_earlier_output(shell):
    with SerialConsole.connect(shell.path, timeout=5) as console:
        console.run("echo token-1", 10)
        mark = console.mark()
        console.write(b"echo token-2\n")
        found = console.wait_for(re.compile(rb"^token-(\d)", re.M), 10, since=mark)
        assert found.group(1) == b"2"


def test_transcript_is_bounded_and_counts_what_it_dropped(shell):
    with SerialConsole.connect(shell.path, timeout=5, transcript_limit=2048) as console:
        assert console.wait_for(re.compile(rb"QNET-GUEST: (\w+)"), 5).group(1) == b"ready"
        status, output = console.run("i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done",
                                     timeout=10)
        assert status == 0
        lines = output.splitlines()
        assert lines[0].startswith("[") and "dropped" in lines[0]
        assert lines[-1] == "line-499" and "line-0" not in lines
        assert len(console.transcript()) <= 2048 and console.transcript_dropped > 0
        assert console.run("echo small", timeout=10) == (0, "small\n")


def test_connect_times_out_when_no_socket_appears(sockdir):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        SerialConsole.connect(sockdir / "missing.sock", timeout=0.3)
    assert time.monotonic() - started < 2


def test_closed_socket_is_reported(sockdir):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sockdir / "s"))
    listener.listen(1)
    try:
        console = SerialConsole.connect(sockdir / "s", timeout=5)
        conn, _ = listener.accept()
        conn.close()
        with pytest.raises(ConsoleClosed):
            console.wait_for(b"anything", 5)
    finally:
        listener.close()


def test_qemu_command_q35_with_hotplug_slots_qmp_and_serial_log():
    argv = qemu_command("/img/vmlinuz", "/img/initramfs.gz", serial_path="/r/s.sock",
                        qmp_path="/r/q.sock", netdevs=["user,id=n0"],
                        devices=["virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"],
                        hotplug_slots=2, serial_log="/r/serial.log")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-accel tcg" in joined and "-machine q35" in joined
    for flag in ("-nodefaults", "-nographic", "-no-reboot"):
        assert flag in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet panic=-1"
    assert argv[argv.index("-chardev") + 1] == (
        "socket,id=s0,path=/r/s.sock,server=on,wait=off,logfile=/r/serial.log,logappend=on")
    assert argv[argv.index("-serial") + 1] == "chardev:s0"
    assert argv[argv.index("-qmp") + 1] == "unix:/r/q.sock,server=on,wait=off"
    assert "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2" in argv
    assert argv[argv.index("-netdev") + 1] == "user,id=n0"
    assert hotplug_bus("q35", 2) == "rp2"


def test_qemu_command_pc_needs_no_root_ports_or_qmp():
    argv = qemu_command("k", "i", serial_path="s", machine="pc", hotplug_slots=2)
    assert "-qmp" not in argv and not any("pcie-root-port" in a for a in argv)
    assert hotplug_bus("pc", 1) is None
