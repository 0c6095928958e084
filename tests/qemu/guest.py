"""Boot the qnet guest image under QEMU for a test; used by the tests in tests/qemu/."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.console import SerialConsole, qemu_command

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def guest_image() -> GuestImage:
    """images/out/, built (or found up to date) by images/build."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    proc = subprocess.run([str(IMAGES / "build")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"images/build failed: {proc.stderr.strip() or proc.stdout.strip()}")
    image = GuestImage(IMAGES / "out" / "vmlinuz", IMAGES / "out" / "initramfs.gz")
    assert image.kernel.is_file() and image.initrd.is_file()
    return image


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    console: SerialConsole
    qmp_path: Path
    log_path: Path
    started: float  # monotonic time QEMU was started
    machine: str

    def qemu_log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def booted_guest(image: GuestImage, *, machine: str = "q35", netdevs: list[str],
                 devices: list[str], hotplug_slots: int = 0) -> Iterator[Guest]:
    """A running QEMU with the guest image; killed (and waited for) on exit."""
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    workdir = Path(tempfile.mkdtemp(prefix="qnet-guest-"))
    serial, qmp, log_path = workdir / "serial.sock", workdir / "qmp.sock", workdir / "qemu.log"
    argv = qemu_command(image.kernel, image.initrd, serial_path=serial, qmp_path=qmp,
                        netdevs=netdevs, devices=devices, machine=machine,
                        hotplug_slots=hotplug_slots, serial_log=workdir / "serial.log")
    process = None
    console = None
    try:
        with open(log_path, "wb") as log:
            # Output to a file: a pipe nobody drains can keep a dead run alive.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            console = SerialConsole.connect(serial, timeout=10.0)
        except TimeoutError:
            process.poll()
            pytest.fail(f"QEMU exited ({process.returncode}) or made no serial socket: "
                        f"{log_path.read_text(errors='replace')}")
        yield Guest(process, console, qmp, log_path, started, machine)
    finally:
        if console is not None:
            console.close()
        if process is not None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
