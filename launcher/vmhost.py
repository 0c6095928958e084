"""What a VM needs from the host: QMP sessions, PCI hot-plug slots, processes, TAPs and bridges.

Used by launcher/vm.py. Every QMP operation is one short session on a private event loop,
bounded by a timeout, and every failure is one line (a ``qmp_failed`` RemoteError).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
import subprocess
from typing import Any, Awaitable, Callable

from ipc import errors

logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # failures become one RemoteError line

QMP_TIMEOUT = 3.0


def fail(message: str, code: str = "failed") -> errors.RemoteError:
    return errors.RemoteError(message, code=code)


# -- QMP ---------------------------------------------------------------------------------------
def qmp_session(path: str, steps: Callable[[Any], Awaitable[Any]], timeout: float = QMP_TIMEOUT) -> Any:
    """Run ``steps(client)`` in one QMP session; every failure is one ``qmp_failed`` line."""
    from qemu.qmp import QMPClient, QMPError

    async def session() -> Any:
        client = QMPClient("qnet")
        try:
            await client.connect(path)
            return await steps(client)
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def bounded() -> Any:
        return await asyncio.wait_for(session(), timeout)

    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        raise fail(f"QMP {path}: no answer within {timeout:g} s (is another client connected?)",
                   "qmp_failed") from None
    except (QMPError, OSError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise fail(f"QMP {path}: {text}", "qmp_failed") from None


def qemu_pid(qmp_path: str) -> int:
    """The pid of the QEMU serving a QMP socket (SO_PEERCRED of a throw-away connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(qmp_path)
            pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return pid
        except OSError:
            return 0


def free_root_port(pci: list[dict], taken: set[str]) -> str | None:
    """A pcie-root-port (or other bridge) with an id and nothing plugged in, from query-pci."""
    for bus in pci:
        for dev in bus.get("devices", []):
            bridge = dev.get("pci_bridge")
            qdev = dev.get("qdev_id") or ""
            if bridge is not None and qdev and qdev not in taken and not bridge.get("devices"):
                return qdev
    return None


def is_i440fx(pci: list[dict]) -> bool:
    # The pc machine's root bus hot-plugs through ACPI; q35's pcie.0 cannot hot-plug at all.
    return any(d.get("id", {}).get("device") == 0x1237 for b in pci for d in b.get("devices", []))


# -- host interfaces (tap backend) ------------------------------------------------------------
def ip(*args: str) -> None:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise fail(f"ip {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        raise fail(f"ip {' '.join(args)}: {proc.stderr.strip() or 'failed'}")


def no_ipv6(ifname: str) -> None:
    # The host's own IPv6 chatter (RS, MLD) has no business on a guest's wire.
    with contextlib.suppress(OSError):
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")


def tap_names(vm_name: str) -> tuple[str, str, str]:
    """(QEMU's TAP, the port's TAP, the bridge): at most 15 bytes each (IFNAMSIZ)."""
    base = vm_name if len(vm_name) <= 12 else vm_name[:8] + hashlib.sha256(vm_name.encode()).hexdigest()[:4]
    return f"qv{base}q", f"qp{base}", f"qb{base}"


def iface_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
