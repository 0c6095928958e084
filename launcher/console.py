"""A guest's serial console, driven by a program: wait for output, run shell commands.

QEMU exposes the guest's ttyS0 as a unix socket
(`-chardev socket,id=s0,path=PATH,server=on,wait=off -serial chardev:s0`); the qnet guest
image (images/) runs an interactive busybox shell there and announces events as lines
starting with "QNET-GUEST: ".

The console connects lazily and reads only inside `wait_for` and `run`, so the serial
output may also be logged elsewhere (`logfile=` on the chardev) and nobody needs to drain
the socket in the background. Output the guest writes while no client is connected is
lost to this class (QEMU drops it); what it writes while connected but not being read
waits in the socket buffers, and the guest stalls if those fill.

Standard library only: the launcher and the tests use it before anything else is up.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shlex
import socket
import time

# ash's line editor keeps at most 1024 bytes of a line (busybox FEATURE_EDITING_MAX_LEN);
# a longer command line would be cut without an error, so run() refuses one.
MAX_COMMAND_LINE = 1000
# Guest event lines the image prints asynchronously; run() keeps them out of a command's output.
GUEST_EVENT_PREFIX = "QNET-GUEST: "
DEFAULT_TRANSCRIPT_LIMIT = 1 << 20
_PROBE_INTERVAL = 1.0


class ConsoleClosed(ConnectionError):
    """The guest's serial socket closed: QEMU exited or dropped the client."""


class SerialConsole:
    """The serial console of one guest, reached through QEMU's chardev socket at `path`.

    Keeps a transcript of everything read, bounded to `transcript_limit` bytes (older output
    is dropped and counted in `transcript_dropped`).
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 transcript_limit: int = DEFAULT_TRANSCRIPT_LIMIT) -> None:
        self.path = os.fspath(path)
        self.transcript_limit = transcript_limit
        self.transcript_dropped = 0
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0] in everything ever read
        self._cursor = 0  # absolute offset where the next wait_for starts searching
        self._synced = False  # a shell answered on this connection

    # --- connection -------------------------------------------------------------------

    @classmethod
    def connect(cls, path: str | os.PathLike[str], timeout: float = 10.0,
                **kwargs: int) -> SerialConsole:
        """Connect now, retrying until QEMU has created the socket (bounded by timeout)."""
        console = cls(path, **kwargs)
        console._connect(time.monotonic() + timeout)
        return console

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"serial socket {self.path}: {error.strerror}") from None
                time.sleep(0.05)
                continue
            sock.setblocking(False)
            self._sock = sock
            self._synced = False
            return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SerialConsole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transcript -------------------------------------------------------------------

    def transcript(self) -> str:
        """Everything read so far (bounded), CR characters removed."""
        return self._buf.decode("utf-8", "replace").replace("\r", "")

    def mark(self) -> int:
        """The transcript offset now; pass it as `since` to wait for output after this point."""
        return self._base + len(self._buf)

    def _append(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.transcript_limit
        if excess > 0:
            del self._buf[:excess]
            self._base += excess
            self.transcript_dropped += excess

    def _read_some(self, deadline: float) -> bool:
        """Read what the guest sent, waiting until deadline; False if nothing came."""
        sock = self._connect(deadline)
        remaining = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            return False
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            self.close()
            raise ConsoleClosed(f"serial socket {self.path} closed (did QEMU exit?)")
        self._append(data)
        return True

    def _search(self, pattern: re.Pattern[bytes], since: int, deadline: float) -> re.Match[bytes] | None:
        while True:
            start = max(0, since - self._base)
            found = pattern.search(self._buf, start)
            if found:
                return found
            if time.monotonic() >= deadline:
                return None
            self._read_some(deadline)


    # --- waiting and writing ------------------------------------------------------------

    def wait_for(self, pattern: bytes | str | re.Pattern[bytes], timeout: float, *,
                 since: int | None = None) -> re.Match[bytes]:
        """Wait until the output matches `pattern` (a literal or a compiled bytes regex).

        The search starts where the previous wait_for match ended (or at `since`, an offset
        from mark()); run() does not move that point, so an event printed during a command
        can still be waited for afterwards. Raises TimeoutError, with the transcript's tail.
        """
        regex = _compile(pattern)
        deadline = time.monotonic() + timeout
        found = self._search(regex, self._cursor if since is None else since, deadline)
        if found is None:
            raise TimeoutError(f"no {regex.pattern!r} on the serial console within {timeout:g} s;"
                               f" last output: {self._tail()!r}")
        self._cursor = self._base + found.end()
        # A match over the bytearray reads it lazily and would change as the transcript is
        # trimmed: hand out one over an immutable copy.
        return regex.search(bytes(self._buf), found.start())  # type: ignore[return-value]

    def write(self, data: bytes) -> None:
        """Send raw bytes to the guest (keystrokes)."""
        sock = self._connect(time.monotonic() + 5.0)
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"serial socket {self.path} does not take input") from None
                select.select([], [sock], [], 0.1)

    def _tail(self, size: int = 300) -> str:
        return self._buf[-size:].decode("utf-8", "replace")

    # --- shell commands -------------------------------------------------------------------

    def sync(self, timeout: float) -> None:
        """Wait until a shell answers on the console (probing once a second)."""
        nonce = secrets.token_hex(6)
        # The quotes split the marker in what the terminal echoes back, so only the
        # shell's output of the echo command matches.
        probe = f'echo "__QP_""{nonce}"\n'.encode()
        pattern = re.compile(b"__QP_" + nonce.encode() + b"\r?\n")
        since = self.mark()
        deadline = time.monotonic() + timeout
        while True:
            self.write(probe)
            found = self._search(pattern, since, min(deadline, time.monotonic() + _PROBE_INTERVAL))
            if found:
                self._synced = True
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no shell answered on {self.path} within {timeout:g} s;"
                                   f" last output: {self._tail()!r}")

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, output).

        The command runs in a subshell with stdin from /dev/null, so `exit`, syntax errors
        and programs that read stdin cannot take the console down, and shell state (cd,
        variables) does not carry over between calls. Output is stdout and stderr together,
        as the terminal shows them, without CR characters and without "QNET-GUEST:" event
        lines; output beyond `transcript_limit` loses its beginning (said in its first
        line). On timeout the command is interrupted (Ctrl-C) and TimeoutError raised.
        """
        deadline = time.monotonic() + timeout
        if not self._synced:
            self.sync(timeout)
        nonce = secrets.token_hex(6)
        line = (f'echo "__QS_""{nonce}"; ( eval {shlex.quote(cmd)} ) </dev/null; '
                f'echo "__QE_""{nonce}_$?"\n')
        if len(line.encode()) > MAX_COMMAND_LINE:
            raise ValueError(f"command too long for the serial shell ({len(cmd)} bytes)")
        since = self.mark()
        self.write(line.encode())
        # Wait for the end marker first: a burst of output can push the start marker out of
        # the bounded transcript before we look for it.
        end = self._search(re.compile(b"__QE_" + nonce.encode() + rb"_(\d+)\r?\n"), since, deadline)
        if end is None:
            self.write(b"\x03")
            self._synced = False
            raise TimeoutError(f"guest command did not finish within {timeout:g} s: {cmd!r};"
                               f" last output: {self._tail()!r}")
        begin = re.compile(b"__QS_" + nonce.encode() + b"\r?\n").search(self._buf, 0, end.start())
        # Absolute offsets: the transcript may have been trimmed under the start marker.
        output_start = self._base + begin.end() if begin is not None else self._base
        if begin is None and self._base <= since:
            self._synced = False
            raise TimeoutError(f"guest command output lost its start marker: {cmd!r}")
        status = int(end.group(1))
        lost = max(0, self._base - output_start) if begin is not None else max(1, self._base - since)
        raw = self._buf[max(0, output_start - self._base):end.start()]
        text = raw.decode("utf-8", "replace").replace("\r", "")
        output = "".join(ln for ln in text.splitlines(keepends=True)
                         if not ln.startswith(GUEST_EVENT_PREFIX))
        if lost:
            output = f"[{lost} bytes of output dropped: more than the transcript limit]\n" + output
        return status, output


def _compile(pattern: bytes | str | re.Pattern[bytes]) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, bytes):
            raise TypeError("wait_for needs a bytes regex")
        return pattern
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return re.compile(re.escape(pattern))


# --- the console log file --------------------------------------------------------------------

GUEST_EVENT = re.compile(r"QNET-GUEST: (\S+) ?(.*)")


class ConsoleLogTail:
    """Follows a guest's console log file (QEMU's chardev ``logfile=``) as it grows.

    ``events()`` returns the QNET-GUEST events of the lines completed since the last call, as
    ``(event, rest)`` pairs: ("lease", "eth0 10.77.1.10/24 router 10.77.1.1 dns none").
    A file that does not exist yet reads as empty.
    """

    def __init__(self, path: str, chunk: int = 1 << 20):
        self.path = path
        self.chunk = chunk
        self._offset = 0
        self._pending = b""

    def events(self) -> list[tuple[str, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(self.chunk)
        except OSError:
            data = b""
        self._offset += len(data)
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        out = []
        for raw in lines:
            m = GUEST_EVENT.search(raw.decode("utf-8", "replace").replace("\r", ""))
            if m is not None:
                out.append((m.group(1), m.group(2).strip()))
        return out


def tail_text(path: str | None, size: int = 300) -> str:
    """The last ``size`` bytes of a log file on one line, for an error message."""
    if not path:
        return "(no log)"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return " ".join(f.read().decode("utf-8", "replace").split()) or "(empty)"
    except OSError:
        return "(no log)"


# --- QEMU command line ----------------------------------------------------------------------

DEFAULT_APPEND = "console=ttyS0 quiet panic=-1"


def hotplug_bus(machine: str, index: int) -> str | None:
    """The bus a NIC hot-plugged into slot `index` (1-based) names in device_add.

    q35 has no hot-pluggable root bus: qemu_command adds `pcie-root-port`s rp1..rpN for
    `hotplug_slots=N`. On pc, devices hot-plug into the root bus and need no bus argument.
    """
    return f"rp{index}" if "q35" in machine else None


def qemu_command(kernel: str | os.PathLike[str], initrd: str | os.PathLike[str], *,
                 serial_path: str | os.PathLike[str],
                 netdevs: list[str] | tuple[str, ...] = (),
                 devices: list[str] | tuple[str, ...] = (),
                 mem_mb: int = 256,
                 qmp_path: str | os.PathLike[str] | None = None,
                 machine: str = "q35",
                 hotplug_slots: int = 0,
                 serial_log: str | os.PathLike[str] | None = None,
                 append: str = DEFAULT_APPEND,
                 smp: int = 1,
                 qemu: str = "qemu-system-x86_64") -> list[str]:
    """The argv that boots the qnet guest image under TCG, console on a unix socket.

    `netdevs` are `-netdev` values ("user,id=n0"), `devices` are `-device` values
    ("virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"). `serial_log` also writes the
    console to a file, whether or not a SerialConsole is connected.
    """
    if hotplug_slots < 0 or hotplug_slots > 32:
        raise ValueError("hotplug_slots must be between 0 and 32")
    chardev = f"socket,id=s0,path={os.fspath(serial_path)},server=on,wait=off"
    if serial_log is not None:
        chardev += f",logfile={os.fspath(serial_log)},logappend=on"
    # /dev/kvm exists on these hosts but is nested paravirtual KVM that hangs the guest.
    argv = [qemu, "-accel", "tcg", "-machine", machine, "-nodefaults", "-nographic",
            "-display", "none", "-no-reboot", "-m", str(mem_mb), "-smp", str(smp),
            "-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd), "-append", append,
            "-chardev", chardev, "-serial", "chardev:s0"]
    if qmp_path is not None:
        argv += ["-qmp", f"unix:{os.fspath(qmp_path)},server=on,wait=off"]
    if "q35" in machine:
        for index in range(1, hotplug_slots + 1):
            argv += ["-device", f"pcie-root-port,id=rp{index},bus=pcie.0,"
                                f"chassis={index},slot={index}"]
    for netdev in netdevs:
        argv += ["-netdev", netdev]
    for device in devices:
        argv += ["-device", device]
    return argv
