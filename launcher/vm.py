"""QEMU guests on qnet ports: the launcher's ``qnet.vm`` interface.

A VM is either *started*: QEMU as a child of the launcher (dies with it:
PR_SET_PDEATHSIG), booting the guest image with one virtio-net NIC on a new
guest-facing port; or *attached*: a NIC hot-plugged over QMP into a QEMU that
someone else runs. Either way the VM's port is named after it, qnet's address
on it is 10.77.K.1/24 (K: the first free subnet) and the port has a DHCP
server (``dhcp = "server"``: the pool is the rest of the /24).

Backends and who holds what (DESIGN.md principle 5: a driver restart must not
disconnect QEMU):

* stream: the launcher holds an already connected socket and passes it to every
  ethdriver incarnation as handle ``conn`` (beside the port's listener, which
  stays idle). For a started VM it is one end of a socketpair whose other end
  QEMU inherits (``-netdev stream,addr.type=fd``). For an attached NIC QEMU
  7.2 cannot use a getfd name (its stream connect runs in a worker thread that
  has no monitor to look the name up in), so the launcher listens on a private
  path, has QEMU connect there (netdev_add, server=false), accepts once and
  removes the listener.
* dgram: the port's socket is RUN/vm-NAME.dg, QEMU's local.path RUN/vm-NAME.qemu.dg.
* tap: QEMU's TAP qvNAMEq and the port's TAP qpNAME joined by a bridge qbNAME,
  all created here and removed when the VM stops.

Every QMP operation is one short session on a private event loop, bounded by
QMP_TIMEOUT, so a wedged QEMU costs the launcher a few seconds, not its loop.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipc import errors
from ipc.decl import to_plain
from ipc.protocols.vm import VM_ERRORS

from .console import qemu_command
from .ports import validate_port
from .supervisor import Instance, die_with_parent, describe_exit, run_blocking, terminate_all
from .vmhost import (fail as _fail, free_root_port, iface_exists, ip, is_i440fx, no_ipv6, pid_alive, qemu_pid,
                     qmp_session, tap_names)

log = logging.getLogger("qnet.launcher")

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "images" / "out"
QEMU = "qemu-system-x86_64"
UNPLUG_TIMEOUT = 5.0          # device_del until DEVICE_DELETED (the guest must release the NIC)
ACCEPT_TIMEOUT = 2.0          # an attached QEMU connecting to our stream listener
HOTPLUG_SLOTS = 2             # pcie-root-ports of a started VM, free for `qnet vm attach`
MAX_VMS = 64                  # live VMs (started + attached); more are refused ("limit")
MAX_GONE = 16                 # exited records kept for `qnet vm list`; older ones are dropped
ATTACHED_CHECK = 1.0          # how often an attached QEMU's pid is checked
LEASE_TAIL = 256 * 1024       # how much of a console log is searched for the lease
_QEMU_DEFAULT_MACS = re.compile(r"^52:54:00:12:34:5[0-9a-f]$")
_GUEST_EVENT = re.compile(rb"QNET-GUEST: (lease|renew|deconfig|link) (\S+) ?(\S*)")


@dataclass
class Vm:
    name: str
    kind: str                     # started | attached
    backend: str
    mac: str
    subnet: int                   # K of 10.77.K.0/24
    qmp: str
    netdev: str                   # QEMU's netdev id
    device: str                   # QEMU's NIC id
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    proc: subprocess.Popen | None = None
    pid: int = 0
    state: str = "running"        # running | attached | exited | gone
    exit: str | None = None
    serial: str | None = None
    console_log: str | None = None
    log: str | None = None
    bus: str | None = None
    link: bool = True
    files: list[str] = field(default_factory=list)      # removed when the VM ends
    ifaces: list[str] = field(default_factory=list)     # host interfaces we created
    port_tap: str | None = None
    next_check: float = 0.0
    definition: dict = field(default_factory=dict)     # how it was started: kept in RUN/config.json

    @property
    def address(self) -> str:
        return f"10.77.{self.subnet}.1/24"

    @property
    def live(self) -> bool:
        return self.state in ("running", "attached")


def parse_console_lease(text: bytes) -> str | None:
    """The guest's current address from its console log ("QNET-GUEST: lease eth0 A/P ...")."""
    current: dict[str, str | None] = {}
    for m in _GUEST_EVENT.finditer(text):
        event, iface, arg = m.group(1).decode(), m.group(2).decode(), m.group(3).decode()
        if event in ("lease", "renew"):
            current[iface] = arg
        elif event == "deconfig" or (event == "link" and arg == "gone"):
            current[iface] = None
    if current.get("eth0"):
        return current["eth0"]
    return next((a for a in current.values() if a), None)


class VmManager:
    """Handlers of ``qnet.vm``; ``watch()`` runs every 50 ms in the launcher's loop."""

    def __init__(self, launcher) -> None:
        self.l = launcher
        self.run = launcher.run_dir
        self.logdir = os.path.join(self.run, "logs")
        self.vms: dict[str, Vm] = {}
        self.counters = {"started": 0, "attached": 0, "exited": 0, "records_dropped": 0}
        self._ifaces_file = os.path.join(self.run, "host-interfaces")
        self._remove_stale_interfaces()

    def _remove_stale_interfaces(self) -> None:
        """Host interfaces a previous launcher made for TAP VMs and could not remove (it was killed)."""
        try:
            with open(self._ifaces_file) as f:
                names = [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError:
            names = []
        for ifname in names:
            if iface_exists(ifname):
                log.warning("removing host interface %s left by a previous launcher", ifname)
                with contextlib.suppress(Exception):
                    ip("link", "del", ifname)
        with open(self._ifaces_file, "w"):
            pass

    def _record_interface(self, ifname: str) -> None:
        with open(self._ifaces_file, "a") as f:
            f.write(ifname + "\n")

    # -- allocation -----------------------------------------------------------------------------
    def _free_subnet(self) -> int:
        used = {vm.subnet for vm in self.vms.values() if vm.live}
        for cfg in self.l.ports.ports.values():
            for a in cfg.get("addresses", []):
                if ":" in a:
                    continue    # IPv6: no guest subnet of 10.77.0.0/16
                net = ipaddress.IPv4Interface(a).network
                if net.overlaps(ipaddress.IPv4Network("10.77.0.0/16")):
                    used.add(int(net.network_address) >> 8 & 0xFF)
        for k in range(1, 255):
            if k not in used:
                return k
        raise _fail("no free guest subnet left in 10.77.0.0/16", "limit")

    def _mac(self, name: str, wanted: str | None) -> str:
        taken = {vm.mac for vm in self.vms.values() if vm.live}
        if wanted is not None:
            wanted = wanted.lower()
            if wanted in taken:
                raise _fail(f"MAC {wanted} is in use by another VM", "exists")
            return wanted
        for attempt in range(1000):
            h = hashlib.sha256(f"{self.run}/{name}/{attempt}".encode()).digest()
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])
            # QEMU numbers its default MACs 52:54:00:12:34:5x: never collide with an unnamed NIC.
            if mac not in taken and not _QEMU_DEFAULT_MACS.match(mac):
                return mac
        raise _fail("no free MAC", "limit")

    def _check_new(self, name: str) -> None:
        old = self.vms.get(name)
        if old is not None and old.live:
            raise _fail(f"VM {name} exists ({old.state}); 'qnet vm stop {name}' first", "exists")
        if name in self.l.ports.ports:
            raise _fail(f"a port named {name} exists; pick another VM name or 'qnet port del {name}'", "exists")
        if sum(1 for vm in self.vms.values() if vm.live) >= MAX_VMS:
            raise _fail(f"at most {MAX_VMS} VMs", "limit")
        self.vms.pop(name, None)  # an exited record of the same name

    def _path(self, name: str, suffix: str) -> str:
        path = os.path.join(self.run, f"vm-{name}.{suffix}")
        if len(path.encode()) > 107:
            raise _fail(f"runtime dir {self.run} is too long for unix socket paths (108 bytes)", "bad_argument")
        return path

    # -- ports ------------------------------------------------------------------------------------
    def _add_port(self, name: str, cfg: dict, conn: socket.socket | None = None) -> None:
        """Create the VM's port; with ``conn`` its drivers use that connected stream socket.

        PortManager.add starts a driver instance it finds already registered, so the
        connection goes in as an extra handle of an instance registered here first.
        """
        ports, sup = self.l.ports, self.l.supervisor
        try:
            checked = validate_port(name, cfg)
        except ValueError as exc:
            raise _fail(str(exc), "bad_argument") from None
        inst = None
        if conn is not None:
            inst = Instance(ports.driver_spec(name, checked))
            inst.fds["conn"] = conn.detach()
            sup.instances[inst.name] = inst
            self.l.graph.order.append(inst.name)
        try:
            run_blocking(ports.add(name, cfg))
        except BaseException as exc:
            if inst is not None and name not in ports.ports:
                sup.close_handles(inst)
                if sup.instances.get(inst.name) is inst:
                    del sup.instances[inst.name]
                if inst.name in self.l.graph.order:
                    self.l.graph.order.remove(inst.name)
            if isinstance(exc, errors.IpcError) and getattr(exc, "code", None) not in VM_ERRORS:
                raise _fail(f"port {name}: {exc}") from None
            if isinstance(exc, ValueError):
                raise _fail(str(exc), "bad_argument") from None
            raise

    def _port_cfg(self, vm: Vm) -> dict[str, Any]:
        # Without a dhcpd in the graph the guest gets no lease; `qnet vm start` says so.
        dhcp = "server" if self.l.graph.provider_of("qnet.dhcpd") else None
        return {"backend": vm.backend, "addresses": [vm.address], "dhcp": dhcp}

    def _remove_port(self, vm: Vm) -> None:
        if vm.name in self.l.ports.ports:
            try:
                run_blocking(self.l.ports.delete(vm.name))
            except errors.IpcError as exc:
                log.warning("vm %s: removing port: %s", vm.name, exc)

    def _cleanup_host(self, vm: Vm) -> None:
        for ifname in vm.ifaces:
            if iface_exists(ifname):
                try:
                    ip("link", "del", ifname)
                except errors.RemoteError as exc:
                    log.warning("vm %s: %s", vm.name, exc)
        vm.ifaces.clear()
        for path in vm.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        vm.files.clear()

    def _ended(self, vm: Vm, how: str) -> None:
        """QEMU is gone (stopped, crashed, killed): the port goes, the record stays for `list`."""
        vm.state = "exited" if vm.kind == "started" else "gone"
        vm.exit = how[:128]
        vm.ended = time.monotonic()
        self.counters["exited"] += 1
        self._remove_port(vm)
        self._cleanup_host(vm)
        gone = [v for v in self.vms.values() if not v.live]
        while len(gone) > MAX_GONE:
            oldest = min(gone, key=lambda v: v.ended or 0.0)
            del self.vms[oldest.name]
            gone.remove(oldest)
            self.counters["records_dropped"] += 1

    # -- start --------------------------------------------------------------------------------------
    def start(self, name: str, mem_mb: int, backend: str, image: str | None, mac: str | None, smp: int):
        self._check_new(name)
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise _fail(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
        img = Path(image) if image else DEFAULT_IMAGE
        kernel, initrd = img / "vmlinuz", img / "initramfs.gz"
        if not kernel.is_file() or not initrd.is_file():
            hint = " (build it with images/build)" if image is None else ""
            raise _fail(f"no guest image in {img}: needs vmlinuz and initramfs.gz{hint}", "bad_argument")
        k = self._free_subnet()
        vm = Vm(name=name, kind="started", backend=backend, mac=self._mac(name, mac), subnet=k,
                qmp=self._path(name, "qmp"), netdev="n0", device="nic0", serial=self._path(name, "serial"),
                console_log=os.path.join(self.logdir, f"vm-{name}.console"),
                log=os.path.join(self.logdir, f"vm-{name}.log"))
        vm.files += [vm.qmp, vm.serial]
        for path in vm.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        cfg = self._port_cfg(vm)
        pass_fds: list[int] = []
        qemu_end: socket.socket | None = None
        try:
            if backend == "stream":
                ours, qemu_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                cfg["path"] = self._path(name, "sock")  # the port's listener; idle, QEMU uses the pair
                vm.files.append(cfg["path"])
                netdev = f"stream,id=n0,server=off,addr.type=fd,addr.str={qemu_end.fileno()}"
                pass_fds.append(qemu_end.fileno())
                self._add_port(name, cfg, conn=ours)
            elif backend == "dgram":
                cfg["path"], cfg["peer_path"] = self._path(name, "dg"), self._path(name, "qemu.dg")
                vm.files += [cfg["path"], cfg["peer_path"]]
                for path in (cfg["path"], cfg["peer_path"]):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                netdev = (f"dgram,id=n0,local.type=unix,local.path={cfg['peer_path']},"
                          f"remote.type=unix,remote.path={cfg['path']}")
                self._add_port(name, cfg)
            else:
                qv, qp, qb = tap_names(name)
                self._make_bridge(vm, qv, qb)
                cfg.update(tap=qp, create=True)
                vm.port_tap = qp
                self._add_port(name, cfg)
                ip("link", "set", qp, "master", qb, "up")
                no_ipv6(qp)
                # vnet_hdr=on: the guest's virtio-net negotiates checksum and TSO offloads with
                # QEMU's TAP, so its super-frames cross the bridge whole; the kernel segments them
                # for the port's TAP unless that port was opened with offloads (docs/offloads.md).
                netdev = f"tap,id=n0,ifname={qv},script=no,downscript=no,vnet_hdr=on"
            device = f"virtio-net-pci,id=nic0,netdev=n0,mac={vm.mac},romfile="
            argv = qemu_command(kernel, initrd, serial_path=vm.serial, netdevs=[netdev], devices=[device],
                                mem_mb=mem_mb, qmp_path=vm.qmp, machine="q35", hotplug_slots=HOTPLUG_SLOTS,
                                serial_log=vm.console_log, smp=smp, qemu=qemu)
            argv[1:1] = ["-name", f"qnet-{name}"]
            open(vm.console_log, "wb").close()  # the lease in it must be from this boot
            with open(vm.log, "wb") as logf:
                # A file, not a pipe: a pipe nobody drains can keep a dead run alive.
                vm.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                           pass_fds=pass_fds, preexec_fn=die_with_parent, close_fds=True)
        except BaseException as exc:
            self._remove_port(vm)
            self._cleanup_host(vm)
            if isinstance(exc, OSError):
                raise _fail(f"vm {name}: cannot start QEMU: {exc.strerror or exc}") from None
            raise
        finally:
            if qemu_end is not None:
                qemu_end.close()  # QEMU has its copy; ours would keep the stream open after QEMU dies
        vm.pid = vm.proc.pid
        vm.definition = {"name": name, "kind": "started", "backend": backend, "mac": vm.mac, "subnet": k,
                         "mem_mb": mem_mb, "smp": smp, "image": image, "pid": vm.pid}
        self.vms[name] = vm
        self.l.ports.save()
        self.counters["started"] += 1
        log.info("vm %s: QEMU pid %d on port %s (%s, %s)", name, vm.pid, name, backend, vm.mac)
        return self._info(vm, with_lease=False)

    def _make_bridge(self, vm: Vm, qv: str, qb: str) -> None:
        for ifname in (qv, qb):
            if iface_exists(ifname):
                raise _fail(f"host interface {ifname} exists already (left by another VM?)", "exists")
        self._record_interface(qb)
        ip("link", "add", qb, "type", "bridge")
        vm.ifaces.append(qb)
        self._record_interface(qv)
        ip("tuntap", "add", "dev", qv, "mode", "tap")
        vm.ifaces.insert(0, qv)
        ip("link", "set", qv, "master", qb, "up")
        ip("link", "set", qb, "up")
        no_ipv6(qv)
        no_ipv6(qb)

    # -- stop ---------------------------------------------------------------------------------------
    def stop(self, name: str, timeout: float):
        vm = self._get(name)
        if vm.kind == "attached" and vm.live:
            raise _fail(f"VM {name} is a NIC attached to a QEMU qnet did not start; 'qnet vm detach {name}'",
                        "bad_argument")
        if vm.live:
            self._terminate(vm, max(0.5, min(timeout, 10.0)))  # the launcher loop waits meanwhile
        info = self._info(vm)
        del self.vms[name]
        return info

    def _terminate(self, vm: Vm, timeout: float) -> None:
        proc = vm.proc
        assert proc is not None
        if proc.poll() is None:
            try:
                qmp_session(vm.qmp, lambda c: c.execute("quit"), timeout=min(2.0, timeout))
            except errors.RemoteError as exc:
                log.info("vm %s: %s; sending SIGTERM", vm.name, exc)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        code = proc.returncode
        self._ended(vm, "stopped" if code == 0 else f"stopped ({describe_exit(code)})")

    # -- attach / detach ----------------------------------------------------------------------------
    def attach(self, name: str, qmp: str, backend: str, bus: str | None, mac: str | None):
        self._check_new(name)
        try:
            if not stat.S_ISSOCK(os.stat(qmp).st_mode):
                raise _fail(f"{qmp} is not a socket", "bad_argument")
        except OSError as exc:
            raise _fail(f"QMP socket {qmp}: {exc.strerror}", "bad_argument") from None
        qmp = os.path.abspath(qmp)
        k = self._free_subnet()
        vm = Vm(name=name, kind="attached", backend=backend, mac=self._mac(name, mac), subnet=k, qmp=qmp,
                netdev=f"qnet-{name}", device=f"qnet-{name}-nic", state="attached")
        vm.pid = qemu_pid(qmp)
        taken = {v.bus for v in self.vms.values() if v.live and v.qmp == qmp and v.bus}
        pci = qmp_session(qmp, lambda c: c.execute("query-pci"))
        if bus is None:
            bus = free_root_port(pci, taken)
            if bus is None and not is_i440fx(pci):
                raise _fail("no free hot-plug slot in that QEMU: start it with "
                            "-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 (or name one with --bus)",
                            "no_slot")
        vm.bus = bus
        cfg = self._port_cfg(vm)
        netdev: dict[str, Any]
        try:
            if backend == "stream":
                cfg["path"] = self._path(name, "sock")
                vm.files.append(cfg["path"])
                conn = self._stream_from_qemu(vm)
                self._add_port(name, cfg, conn=conn)
            else:
                cfg["path"], cfg["peer_path"] = self._path(name, "dg"), self._path(name, "qemu.dg")
                vm.files += [cfg["path"], cfg["peer_path"]]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(cfg["peer_path"])
                self._add_port(name, cfg)
                netdev = {"type": "dgram", "id": vm.netdev,
                          "local": {"type": "unix", "path": cfg["peer_path"]},
                          "remote": {"type": "unix", "path": cfg["path"]}}
                qmp_session(qmp, lambda c: c.execute("netdev_add", netdev))
            dev = {"driver": "virtio-net-pci", "id": vm.device, "netdev": vm.netdev, "mac": vm.mac, "romfile": ""}
            if bus is not None:
                dev["bus"] = bus
            qmp_session(qmp, lambda c: c.execute("device_add", dev))
        except BaseException:
            with contextlib.suppress(errors.RemoteError):
                qmp_session(qmp, lambda c: c.execute("netdev_del", {"id": vm.netdev}), timeout=1.0)
            self._remove_port(vm)
            self._cleanup_host(vm)
            raise
        vm.definition = {"name": name, "kind": "attached", "backend": backend, "mac": vm.mac, "subnet": k,
                         "qmp": qmp, "bus": bus, "pid": vm.pid}
        self.vms[name] = vm
        self.l.ports.save()
        self.counters["attached"] += 1
        log.info("vm %s: NIC %s (%s) hot-plugged into QEMU pid %d on bus %s", name, vm.device, vm.mac, vm.pid,
                 bus or "(root)")
        return self._info(vm, with_lease=False)

    def _stream_from_qemu(self, vm: Vm) -> socket.socket:
        """Have the attached QEMU connect a stream netdev to a one-shot listener of ours."""
        path = self._path(vm.name, "attach")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)  # QEMU 7.2 never retries: the listener must exist first
            listener.listen(1)
            qmp_session(vm.qmp, lambda c: c.execute("netdev_add", {
                "type": "stream", "id": vm.netdev, "server": False, "addr": {"type": "unix", "path": path}}))
            ready, _, _ = select.select([listener], [], [], ACCEPT_TIMEOUT)
            if not ready:
                raise _fail(f"QEMU did not connect its stream netdev within {ACCEPT_TIMEOUT:g} s", "qmp_failed")
            conn, _ = listener.accept()
            return conn
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def detach(self, name: str):
        vm = self._get(name)
        if vm.kind != "attached":
            raise _fail(f"VM {name} was started by qnet: 'qnet vm stop {name}'", "bad_argument")
        if vm.live:
            self._unplug(vm)
            self._ended(vm, "detached")
        del self.vms[name]
        return True

    def _unplug(self, vm: Vm) -> None:
        from qemu.qmp import EventListener, ExecuteError

        async def steps(c) -> None:
            listener = EventListener("DEVICE_DELETED",
                                     event_filter=lambda ev: ev.get("data", {}).get("device") == vm.device)
            with c.listen(listener):
                try:
                    await c.execute("device_del", {"id": vm.device})
                except ExecuteError as exc:
                    if "not found" not in str(exc).lower():
                        raise
                else:
                    await listener.get()
            try:
                await c.execute("netdev_del", {"id": vm.netdev})
            except ExecuteError as exc:
                if "not found" not in str(exc).lower():
                    raise

        if vm.pid and not pid_alive(vm.pid):
            return  # QEMU is gone: nothing to unplug
        try:
            qmp_session(vm.qmp, steps, timeout=UNPLUG_TIMEOUT)
        except errors.RemoteError as exc:
            if "no answer within" in str(exc):
                raise _fail(f"the guest did not release NIC {vm.device} within {UNPLUG_TIMEOUT:g} s "
                            f"(no DEVICE_DELETED); try again", "qmp_failed") from None
            raise

    # -- link and console --------------------------------------------------------------------------------
    def link(self, name: str, up: bool):
        vm = self._get(name)
        if not vm.live:
            raise _fail(f"VM {name} has {vm.state}", "failed")
        # On a netdev id set_link also sets the NIC's link: the guest sees its carrier change.
        qmp_session(vm.qmp, lambda c: c.execute("set_link", {"name": vm.netdev, "up": up}))
        vm.link = up
        told, note = False, None
        hook = getattr(self.l.ports, "link", None)
        if hook is not None:
            hook(name, up)
            told = True
        elif vm.port_tap is not None and iface_exists(vm.port_tap):
            # The port's TAP follows the guest's link; its driver reports the carrier change.
            ip("link", "set", vm.port_tap, "up" if up else "down")
            told = True
        else:
            note = ("the guest's link changed; the port's own link did not "
                    f"(a {vm.backend} socket has no carrier, and the launcher has no port link hook yet)")
        return {"name": name, "up": up, "port_told": told, "note": note}

    def console_path(self, name: str):
        vm = self._get(name)
        if vm.serial is None:
            raise _fail(f"VM {name} was attached: its console is wherever its owner put it", "bad_argument")
        if not vm.live:
            raise _fail(f"VM {name} has exited ({vm.exit})", "failed")
        return {"serial": vm.serial, "console_log": vm.console_log}

    # -- views -------------------------------------------------------------------------------------------
    def _get(self, name: str) -> Vm:
        vm = self.vms.get(name)
        if vm is None:
            raise _fail(f"no VM named {name!r} (see 'qnet vm list')", "not_found")
        return vm

    def list(self):
        leases = self._dhcp_leases()
        return [self._info(vm, leases=leases) for vm in sorted(self.vms.values(), key=lambda v: v.name)]

    def _dhcp_leases(self) -> dict[str, str]:
        name = self.l.graph.provider_of("qnet.dhcpd")
        if name is None:
            return {}
        from ipc.protocols.dhcpd import DHCPD
        from ipc.rpc import RpcClient
        try:
            with RpcClient(self.l.supervisor.stable_endpoint(name, "rpc"), DHCPD, timeout=1.0, retries=0) as c:
                rows = to_plain(c.call("leases"))
        except errors.IpcError:
            return {}
        return {r["mac"].lower(): r["address"] for r in rows
                if r.get("role") == "server" and r.get("state") in ("bound", "renewing", "rebinding", None)}

    def _info(self, vm: Vm, *, with_lease: bool = True, leases: dict[str, str] | None = None) -> dict:
        lease = None
        if with_lease and vm.live:
            lease = self._console_lease(vm)
            if lease is None and leases and vm.mac in leases:
                lease = f"{leases[vm.mac]}/24"
        end = vm.ended if vm.ended is not None else time.monotonic()
        return {"name": vm.name, "kind": vm.kind, "state": vm.state, "pid": vm.pid, "port": vm.name,
                "mac": vm.mac, "backend": vm.backend, "accel": "tcg" if vm.kind == "started" else None,
                "address": vm.address, "lease": lease, "uptime": round(end - vm.started, 1), "exit": vm.exit,
                "qmp": vm.qmp, "serial": vm.serial, "console_log": vm.console_log, "log": vm.log,
                "device": vm.device, "bus": vm.bus, "link": vm.link}

    def _console_lease(self, vm: Vm) -> str | None:
        if not vm.console_log:
            return None
        try:
            with open(vm.console_log, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - LEASE_TAIL))
                return parse_console_lease(f.read())
        except OSError:
            return None

    # -- across a launcher crash -----------------------------------------------------------------------------
    def definitions(self) -> list[dict]:
        """The live VMs, as RUN/config.json keeps them."""
        out = []
        for vm in self.vms.values():
            if vm.live:
                out.append(vm.definition or {"name": vm.name, "kind": vm.kind, "backend": vm.backend,
                                             "mac": vm.mac, "subnet": vm.subnet, "qmp": vm.qmp, "pid": vm.pid})
        return out

    def died_with_launcher(self, definitions: list[dict]) -> None:
        """VMs a launcher that died held: their QEMUs died with it (PR_SET_PDEATHSIG) or, attached
        ones, lost their NIC's backend. They are listed as exited with the reason; `qnet vm start`
        starts one again."""
        for d in definitions:
            name = str(d["name"])
            if name in self.vms:
                continue
            try:
                subnet = int(d.get("subnet", 0))
            except (TypeError, ValueError):
                subnet = 0
            vm = Vm(name=name, kind=str(d.get("kind", "started")), backend=str(d.get("backend", "?")),
                    mac=str(d.get("mac", "")), subnet=subnet, qmp=str(d.get("qmp", "")), netdev="", device="",
                    state="exited" if d.get("kind", "started") == "started" else "gone",
                    exit=f"died with the launcher (QEMU pid {d.get('pid', '?')}); 'qnet vm start {name}' "
                         f"starts it again"[:128],
                    ended=time.monotonic(), pid=0, definition=dict(d))
            self.vms[name] = vm
            log.warning("vm %s: %s", name, vm.exit)

    # -- supervision -------------------------------------------------------------------------------------
    def watch(self) -> None:
        now = time.monotonic()
        for vm in list(self.vms.values()):
            if vm.state == "running" and vm.proc is not None:
                code = vm.proc.poll()
                if code is not None:
                    log.warning("vm %s: QEMU (pid %d) exited: %s", vm.name, vm.pid, describe_exit(code))
                    self._ended(vm, describe_exit(code))
            elif vm.state == "attached" and vm.pid and now >= vm.next_check:
                vm.next_check = now + ATTACHED_CHECK
                if not pid_alive(vm.pid):
                    log.warning("vm %s: the QEMU it was attached to (pid %d) is gone", vm.name, vm.pid)
                    self._ended(vm, "QEMU exited")

    def close(self) -> None:
        """Launcher shutdown: our QEMUs get SIGTERM (then SIGKILL); host interfaces go."""
        terminate_all([vm.proc for vm in self.vms.values() if vm.state == "running" and vm.proc is not None], 3.0)
        for vm in self.vms.values():
            if vm.state == "attached":
                # Leave the foreign QEMU without a dangling NIC when it still answers quickly.
                with contextlib.suppress(errors.RemoteError):
                    qmp_session(vm.qmp, lambda c, d=vm.device: c.execute("device_del", {"id": d}), timeout=1.0)
            self._cleanup_host(vm)
        # Everything we made is gone: nothing for the next launcher to clean up.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._ifaces_file)
