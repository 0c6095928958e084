"""Linux TAP devices: open one (launcher side) and drive an open fd (driver side).

``open_tap`` returns a plain fd the launcher keeps and passes to every driver incarnation; the fd,
not a persistent flag, keeps a device we created alive. ``TapBackend`` only reads and writes it.

Offloads: IFF_VNET_HDR can only be chosen when the fd is attached (TUNSETIFF), so the launcher
opens the TAP with ``vnet_hdr = true``; the header size (TUNSETVNETHDRSZ) and the offloads
(TUNSETOFFLOAD) belong to the device and are (re)set by each driver incarnation with
``TapBackend(fd, offloads=True)``. In that mode every frame in a batch, read or written, starts
with the 12-byte virtio-net header (components/netstack/wire/virtio_net.py), kept as a prefix
so a batch travels to netstack and back without a copy to add or strip it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable

from .base import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES, MAX_FRAME_LEN, Backend, new_counters

TUN_PATH = "/dev/net/tun"

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNGETVNETHDRSZ = 0x800454D7
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# TUNSETOFFLOAD flags: what we let the kernel leave undone in frames it hands us.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20  # Linux 6.2; accepted only together with TUN_F_USO6
TUN_F_USO6 = 0x40

# linux/sockios.h, linux/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFNAMSIZ = 16

# virtio 1.0 header with num_buffers is 12 bytes; the legacy header is 10 (the kernel default).
VNET_HDR_LEN_DEFAULT = 10
# What offload mode sets: the virtio 1.x layout (see wire/virtio_net.py for why 12).
VNET_HDR_LEN_OFFLOAD = 12

# Offload names as the device interface carries them (core/offload.py OFFLOAD_NAMES) and the
# TUNSETOFFLOAD bits behind each; what the kernel accepts here it also takes from us on write.
OFFLOAD_FLAGS = {
    "csum": TUN_F_CSUM,
    "tso4": TUN_F_TSO4,
    "tso6": TUN_F_TSO6,
    "tso_ecn": TUN_F_TSO_ECN,
    "uso": TUN_F_USO4 | TUN_F_USO6,
}
# The kernel ignores TSO without CSUM (tun_set_offload), so every set includes csum.
_NEEDS_CSUM = ("tso4", "tso6", "tso_ecn", "uso")

_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")
_IFREQ_HWADDR = struct.Struct("16sH6s16x")


class TapError(OSError):
    """A TAP device could not be opened or configured; the message names device and cause."""


def _ifname(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise TapError(errno.EINVAL, f"invalid interface name {name!r} (1-15 bytes)")
    return raw


def open_tap(name: str, *, create: bool = True, vnet_hdr: bool = False,
             multi_queue: bool = False) -> int:
    """Attach a new fd to TAP ``name``; returns the fd (close-on-exec, blocking mode unset).

    With ``create`` false the device must already exist in this network namespace. The device
    is not made persistent: a device created here lives as long as some process holds the fd.
    """
    raw = _ifname(name)
    if not create:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise TapError(errno.ENODEV, f"TAP device {name!r} does not exist "
                                         "(create it with `ip tuntap add dev NAME mode tap`)") from None
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(e.errno, f"cannot open {TUN_PATH}: {e.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(raw, flags))
    except OSError as e:
        os.close(fd)
        hint = " (is it a TUN device, or a TAP opened with other flags?)" if e.errno == errno.EINVAL else ""
        raise TapError(e.errno, f"TUNSETIFF {name!r}: {e.strerror}{hint}") from None
    set_txqueuelen(name, TAP_QUEUE_LEN)
    return fd


# The kernel's queue of frames for us to read (the TAP's txqueuelen, 500 for a new TAP) is
# where frames wait while the driver is descheduled or netstack is behind: on two busy
# cores a 500-frame queue overflowed at 30,000 frames/s (1.2 % lost, none of it in qnet).
# A deeper queue absorbs the scheduling jitter (8192 frames: 400 ms at 20,000 frames/s, a
# driver hand-over takes about 6 ms); frames still wait in the kernel, bounded.
TAP_QUEUE_LEN = 8192
SIOCGIFTXQLEN, SIOCSIFTXQLEN = 0x8942, 0x8943
_IFREQ_INT = struct.Struct("16si20x")


def set_txqueuelen(name: str, qlen: int) -> bool:
    """Deepen the TAP's queue (never shortens one an administrator made longer)."""
    raw = _ifname(name)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _n, cur = _IFREQ_INT.unpack(fcntl.ioctl(s, SIOCGIFTXQLEN, _IFREQ_INT.pack(raw, 0)))
            if cur < qlen:
                fcntl.ioctl(s, SIOCSIFTXQLEN, _IFREQ_INT.pack(raw, qlen))
        return True
    except OSError:
        return False


def tap_name(fd: int) -> str:
    """The current name of the TAP behind ``fd`` (follows renames and netns moves)."""
    res = fcntl.ioctl(fd, TUNGETIFF, _IFREQ_FLAGS.pack(b"", 0))
    raw, _ = _IFREQ_FLAGS.unpack(res)
    return raw.rstrip(b"\0").decode()


def tap_flags(fd: int) -> int:
    """The IFF_TAP / IFF_NO_PI / IFF_VNET_HDR flags the fd was attached with."""
    res = fcntl.ioctl(fd, TUNGETIFF, _IFREQ_FLAGS.pack(b"", 0))
    return _IFREQ_FLAGS.unpack(res)[1]


def set_vnet_hdr_size(fd: int, size: int) -> None:
    """TUNSETVNETHDRSZ: 10 (legacy) or 12 (virtio 1.0 / mergeable buffers)."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", size))


def get_vnet_hdr_size(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, struct.pack("i", 0)))[0]


def set_offload(fd: int, flags: int) -> None:
    """TUNSETOFFLOAD with TUN_F_* flags: the hook for checksum/TSO offload (needs IFF_VNET_HDR)."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def negotiate_offloads(fd: int, wanted: tuple[str, ...] = tuple(OFFLOAD_FLAGS)) -> tuple[str, ...]:
    """Enable as many of ``wanted`` as this kernel knows; returns the names it accepted.

    tun_set_offload answers EINVAL to any bit it does not know, which is how new flags are
    probed: drop the newest (USO, then TSO_ECN, ...) until the kernel takes the rest.
    There is no TUNGETOFFLOAD, so what was accepted is known only from here.
    """
    names = [n for n in OFFLOAD_FLAGS if n in wanted]
    if any(n in names for n in _NEEDS_CSUM) and "csum" not in names:
        names.insert(0, "csum")
    while True:
        flags = 0
        for n in names:
            flags |= OFFLOAD_FLAGS[n]
        try:
            set_offload(fd, flags)
        except OSError as e:
            if e.errno != errno.EINVAL or not names:
                raise TapError(e.errno, f"TUNSETOFFLOAD 0x{flags:x}: {e.strerror}") from None
            names.pop()
            continue
        return tuple(names)


def _get_flags(ctl: socket.socket, raw: bytes) -> int:
    res = fcntl.ioctl(ctl, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw, 0))
    return _IFREQ_FLAGS.unpack(res)[1]


def set_link_up(name: str, up: bool = True) -> None:
    """Set or clear IFF_UP on ``name`` in this network namespace (what `ip link set up` does)."""
    raw = _ifname(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
        flags = _get_flags(ctl, raw)
        flags = (flags | IFF_UP) if up else (flags & ~IFF_UP)
        fcntl.ioctl(ctl, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(raw, flags & 0xFFFF))


class TapBackend(Backend):
    """Drives an open TAP fd. ``vnet_hdr=None`` reads the fd's own IFF_VNET_HDR flag.

    Two modes. Plain (the default): frames in batches are bare Ethernet frames; on a vnet_hdr
    fd the header is stripped on read and a zero one added on write, and the device's offloads
    are switched off so the kernel never hands over work that would then be lost.
    Offloads (``offloads=True`` or a tuple of names): the fd must have IFF_VNET_HDR; the header
    size is set to 12 and the offloads are negotiated (``offloads()`` says which the kernel
    took); every frame read or written carries its 12-byte virtio-net header as a prefix
    (``frame_prefix_len``), and the kernel may hand over GSO super-frames up to 64 KiB and
    frames with partial checksums.

    Interface state (link, MTU, MAC) is looked up by name in the driver's network namespace;
    when the interface lives elsewhere (moved with `ip link set NAME netns NS`) only the fd is
    reachable, and link_up() reports True because an attached TAP has carrier.
    """

    def __init__(self, fd: int, name: str | None = None, vnet_hdr: bool | None = None,
                 offloads: bool | tuple[str, ...] = False) -> None:
        self._fd = fd
        self.name = name if name is not None else tap_name(fd)
        has_vnet = bool(tap_flags(fd) & IFF_VNET_HDR)
        if vnet_hdr is None:
            vnet_hdr = has_vnet
        self._offloads: tuple[str, ...] = ()
        self._prefix = 0
        if offloads:
            if not has_vnet:
                raise TapError(errno.EINVAL, f"TAP {self.name!r}: offloads need a TAP opened with "
                                             "IFF_VNET_HDR (handle option vnet_hdr = true)")
            try:
                set_vnet_hdr_size(fd, VNET_HDR_LEN_OFFLOAD)
            except OSError as e:
                raise TapError(e.errno, f"TUNSETVNETHDRSZ {self.name!r}: {e.strerror}") from None
            wanted = tuple(OFFLOAD_FLAGS) if offloads is True else tuple(offloads)
            self._offloads = negotiate_offloads(fd, wanted)
            self._prefix = VNET_HDR_LEN_OFFLOAD
            vnet_hdr = True
        elif has_vnet:
            # A predecessor may have enabled offloads on the device; a plain reader strips the
            # header and could not finish what the kernel left undone.
            try:
                set_offload(fd, 0)
            except OSError:
                pass
        self._hdr_len = get_vnet_hdr_size(fd) if vnet_hdr else 0
        # In offload mode the header stays on the frame: nothing to strip or to add.
        self._strip = 0 if self._prefix else self._hdr_len
        self._zero_hdr = bytes(self._strip)
        self._read_size = self._hdr_len + MAX_FRAME_LEN
        os.set_blocking(fd, False)
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._counters = new_counters("rx_short", "rx_gso_frames", "rx_csum_partial",
                                      "tx_gso_frames")
        self._closed = False

    @property
    def vnet_hdr_len(self) -> int:
        return self._hdr_len

    @property
    def frame_prefix_len(self) -> int:
        """Bytes of virtio-net header before each frame in a batch: 12 with offloads, else 0."""
        return self._prefix

    def offloads(self) -> tuple[str, ...]:
        """The offloads the kernel accepted (core/offload.py OFFLOAD_NAMES); () in plain mode.

        They hold both ways: the kernel may hand us such frames, and takes them from us.
        """
        return self._offloads

    def fileno(self) -> int:
        return self._fd

    def handles(self) -> tuple[int]:
        return (self._fd,)

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        frames: list[bytes] = []
        total = 0
        hdr, keep = self._strip, self._prefix
        read, fd, size = os.read, self._fd, self._read_size
        c = self._counters
        while len(frames) < max_frames and total < max_bytes:
            try:
                buf = read(fd, size)
            except BlockingIOError:
                break
            except OSError:
                c["rx_errors"] += 1
                break
            if hdr:
                if len(buf) <= hdr:
                    c["rx_short"] += 1
                    continue
                # Plain mode: no offloads are enabled, so the header carries nothing we need.
                buf = buf[hdr:]
            elif keep:
                if len(buf) <= keep:
                    c["rx_short"] += 1
                    continue
                # virtio_net_hdr: flags is byte 0, gso_type byte 1.
                if buf[1]:
                    c["rx_gso_frames"] += 1
                elif buf[0] & 1:
                    c["rx_csum_partial"] += 1
            frames.append(buf)
            total += len(buf)
        c["rx_frames"] += len(frames)
        c["rx_bytes"] += total
        return frames

    def write_batch(self, frames: Iterable[bytes]) -> int:
        c = self._counters
        fd, hdr, keep = self._fd, self._zero_hdr, self._prefix
        sent = nbytes = gso = 0
        for frame in frames:
            try:
                if hdr:
                    os.writev(fd, (hdr, frame))
                else:
                    os.write(fd, frame)
                    if keep and frame[1]:
                        gso += 1
            except BlockingIOError:
                c["tx_dropped"] += 1
                continue
            except OSError:
                # EIO while the interface is down, EINVAL for a malformed frame: drop, count.
                c["tx_errors"] += 1
                c["tx_dropped"] += 1
                continue
            sent += 1
            nbytes += len(frame)
        c["tx_frames"] += sent
        c["tx_bytes"] += nbytes
        c["tx_gso_frames"] += gso
        return sent

    def _ifreq(self, request: int, fmt: struct.Struct, *fields: object) -> tuple | None:
        try:
            return fmt.unpack(fcntl.ioctl(self._ctl, request, fmt.pack(self.name.encode(), *fields)))
        except OSError:
            return None  # ENODEV: the interface is in another namespace or gone

    def link_up(self) -> bool:
        res = self._ifreq(SIOCGIFFLAGS, _IFREQ_FLAGS, 0)
        if res is None:
            return not self._closed
        return (res[1] & (IFF_UP | IFF_RUNNING)) == (IFF_UP | IFF_RUNNING)

    @property
    def mtu(self) -> int:
        res = self._ifreq(SIOCGIFMTU, _IFREQ_INT, 0)
        return res[1] if res is not None else 1500

    @property
    def mac(self) -> bytes | None:
        res = self._ifreq(SIOCGIFHWADDR, _IFREQ_HWADDR, 0, b"")
        return res[2] if res is not None else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctl.close()
        os.close(self._fd)
