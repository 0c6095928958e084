"""The launcher's VM interface: QEMU guests on qnet ports (`qnet vm ...`).

A VM is either started by the launcher (a child process, one NIC on a new
guest-facing port) or attached: a NIC hot-plugged over QMP into a QEMU that
someone else runs. Either way its port gets qnet's address 10.77.K.1/24 and a
DHCP server.
"""
from ..decl import Method, Protocol, Version
from ..types import BOOL, FLOAT, IPV4_IFACE, MAC, NAME, Enum, Field, Int, List, Optional, Str, struct

VM_ERRORS = ("not_found", "exists", "bad_argument", "failed", "qmp_failed", "no_slot", "limit")

VM_BACKEND = Enum("VmBackend", ("stream", "dgram", "tap"))
ATTACH_BACKEND = Enum("AttachBackend", ("stream", "dgram"))

VM_INFO = struct(
    "VmInfo",
    Field("name", NAME, doc="the VM's name; also the name of its port"),
    Field("kind", Str(max_len=16), doc="started (a child of the launcher) | attached (a NIC in someone's QEMU)"),
    Field("state", Str(max_len=16), doc="running | exited | attached | gone"),
    Field("pid", Int(0, 1 << 32), doc="QEMU's pid (0 when unknown)"),
    Field("port", NAME),
    Field("mac", MAC, doc="the guest NIC's MAC"),
    Field("backend", Str(max_len=16)),
    Field("accel", Optional(Str(max_len=16)), doc="tcg for VMs we start; None for attached ones"),
    Field("address", Optional(IPV4_IFACE), doc="qnet's address on the port (the guest's router)"),
    Field("lease", Optional(Str(max_len=64)), doc="the guest's address: console log or dhcpd's leases"),
    Field("uptime", FLOAT, doc="seconds since start or attach (until exit)"),
    Field("exit", Optional(Str(max_len=128)), doc="how QEMU ended, once it has"),
    Field("qmp", Str(max_len=4096)),
    Field("serial", Optional(Str(max_len=4096)), doc="the serial console socket (started VMs)"),
    Field("console_log", Optional(Str(max_len=4096)), doc="everything the guest printed on its console"),
    Field("log", Optional(Str(max_len=4096)), doc="QEMU's own output"),
    Field("device", Optional(Str(max_len=64)), doc="QEMU's id of the NIC (attached NICs)"),
    Field("bus", Optional(Str(max_len=64)), doc="the PCI bus the NIC was hot-plugged into"),
    Field("link", BOOL, doc="the NIC's link as last set with 'qnet vm link'"),
)

LINK_RESULT = struct(
    "VmLinkResult",
    Field("name", NAME),
    Field("up", BOOL),
    Field("port_told", BOOL, doc="netstack learnt the link change too (not only the guest)"),
    Field("note", Optional(Str(max_len=256))),
)

CONSOLE = struct(
    "VmConsole",
    Field("serial", Str(max_len=4096), doc="QEMU's serial chardev socket: one client at a time"),
    Field("console_log", Optional(Str(max_len=4096))),
)

VM = Protocol(
    "qnet.vm", Version(1, 0),
    doc="QEMU guests on qnet ports: start, stop, hot-plug NICs, link state, consoles.",
    methods=(
        Method("start", args=(Field("name", NAME), Field("mem_mb", Int(64, 65536), default=256),
                              Field("backend", VM_BACKEND, default="stream"),
                              Field("image", Optional(Str(max_len=4096)), default=None,
                                    doc="a directory with vmlinuz and initramfs.gz (default images/out)"),
                              Field("mac", Optional(MAC), default=None),
                              Field("smp", Int(1, 64), default=1)),
               result=VM_INFO, errors=VM_ERRORS,
               doc="Create port NAME (10.77.K.1/24, DHCP server) and boot QEMU on it; returns at once."),
        Method("stop", args=(Field("name", NAME), Field("timeout", FLOAT, default=5.0)), result=VM_INFO,
               errors=VM_ERRORS,
               doc="QMP quit (then SIGTERM, SIGKILL), remove the port, clean up; forgets an exited VM."),
        Method("list", result=List(VM_INFO, max_len=1024), idempotent=True),
        Method("attach", args=(Field("name", NAME), Field("qmp", Str(max_len=107)),
                               Field("backend", ATTACH_BACKEND, default="stream"),
                               Field("bus", Optional(Str(max_len=64)), default=None),
                               Field("mac", Optional(MAC), default=None)),
               result=VM_INFO, errors=VM_ERRORS,
               doc="Hot-plug a virtio-net NIC into a running QEMU (its QMP socket) on a new port NAME."),
        Method("detach", args=(Field("name", NAME),), result=BOOL, errors=VM_ERRORS,
               doc="device_del (wait for DEVICE_DELETED), netdev_del, remove the port."),
        Method("link", args=(Field("name", NAME), Field("up", BOOL)), result=LINK_RESULT, errors=VM_ERRORS,
               doc="Set the NIC's link (QMP set_link) and tell the port."),
        Method("console_path", args=(Field("name", NAME),), result=CONSOLE, errors=VM_ERRORS, idempotent=True,
               doc="Where the VM's serial console is, so the CLI can drive it itself."),
    ),
)
