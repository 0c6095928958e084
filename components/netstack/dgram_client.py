"""A client of netstack's datagram interface, for components inside the graph (dhcpd, tests).

    client = DatagramClient(peer, owner="dhcpd")     # peer: the spec.peers["qnet.datagram"] entry
    sid = client.open(67, device="p0", broadcast=True)
    client.sendto(sid, payload, "255.255.255.255", 68, device="p0")
    for d in client.recv(timeout=1.0): ...           # Received(sid, src, sport, dst, dport, device, payload)

The 'send' and 'recv' streams carry either IP version (qnet.datagram 1.3: the frame's family
byte says which, ipc/protocols/netstack.py).

Sockets belong to ``owner`` (the channel identity), so they survive a restart
of either side: netstack keeps them in its state, and a new incarnation of the
owner reconnects under the same identity and keeps receiving.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from typing import Any

import zmq

from ipc import errors
from ipc.channel import UserChannel, load_data_key
from ipc.decl import to_plain
from ipc.protocols.netstack import DATAGRAM, DATAGRAM_RECV_HEAD, DATAGRAM_SEND_HEAD
from ipc.rpc import RpcClient

_RECV_HEAD = DATAGRAM_RECV_HEAD
_RECV_LEN = DATAGRAM_RECV_HEAD.size
_SEND_HEAD = DATAGRAM_SEND_HEAD
_SEND_LEN = DATAGRAM_SEND_HEAD.size
_ADDR_LEN = {4: 4, 6: 16}       # the head's family byte -> bytes per address
_NAMES_LIMIT = 64       # device names remembered by a decoder (a sender controls the bytes)


class Received:
    """A datagram for one of our sockets. `src`/`dst` are IPv4Address or IPv6Address objects
    built when asked; `src_addr`/`dst_addr` are the address bytes in network order (4 or 16),
    which send_many takes."""
    __slots__ = ("sid", "src_addr", "src_port", "dst_addr", "dst_port", "device", "payload")

    def __init__(self, sid: int, src, src_port: int, dst, dst_port: int, device: str,
                 payload: bytes) -> None:
        self.sid = sid
        self.src_addr = src if src.__class__ is bytes else ipaddress.ip_address(src).packed
        self.src_port = src_port
        self.dst_addr = dst if dst.__class__ is bytes else ipaddress.ip_address(dst).packed
        self.dst_port = dst_port
        self.device = device
        self.payload = payload

    @property
    def src(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.src_addr)

    @property
    def dst(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.dst_addr)

    def _key(self) -> tuple:
        return (self.sid, self.src_addr, self.src_port, self.dst_addr, self.dst_port,
                self.device, self.payload)

    def __eq__(self, other) -> bool:
        return isinstance(other, Received) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Received(sid={self.sid}, src={self.src}, src_port={self.src_port}, "
                f"dst={self.dst}, dst_port={self.dst_port}, device={self.device!r}, "
                f"payload={self.payload!r})")


def _device_name(raw: bytes, names: dict[bytes, str]) -> str:
    name = names.get(raw)
    if name is None:
        name = raw.decode()                 # UnicodeDecodeError is a ValueError
        if len(names) < _NAMES_LIMIT:
            names[raw] = name
    return name


def _addr_len(family: int) -> int:
    n = _ADDR_LEN.get(family)
    if n is None:
        raise ValueError(f"family {family} is neither 4 nor 6")
    return n


_recv_names: dict[bytes, str] = {}


def decode_received(frame: bytes | memoryview) -> Received:
    """One frame of the 'recv' stream; raises BadMessage on a malformed one."""
    try:
        sid, family, sport, dport, n = _RECV_HEAD.unpack_from(frame, 0)
        size = _addr_len(family)
        a = _RECV_LEN + size
        b = a + size
        end = b + n
        if end > len(frame):
            raise ValueError(f"addresses and a device name of {n} bytes overrun the frame")
        device = _device_name(bytes(frame[b:end]), _recv_names)
        return Received(sid, bytes(frame[_RECV_LEN:a]), sport, bytes(frame[a:b]), dport, device,
                        bytes(frame[end:]))
    except (struct.error, ValueError) as exc:
        raise errors.BadMessage(f"datagram frame: {exc}") from None


def encode_received(sid: int, version: int, src: int, src_port: int, dst: int, dst_port: int,
                    device: bytes, payload: bytes) -> bytes:
    """One frame of the 'recv' stream (netstack's side): addresses as ints of IP `version`
    (core.udp.Datagram's form); device: the UTF-8 name."""
    size = _addr_len(version)
    return b"".join((_RECV_HEAD.pack(sid, version, src_port, dst_port, len(device)),
                     src.to_bytes(size, "big"), dst.to_bytes(size, "big"), device, payload))


def _packed(address) -> bytes:
    """An address as its 4 or 16 bytes: from its text, bytes, object or int (an int up to
    2**32-1 is IPv4's, a larger one IPv6's)."""
    cls = address.__class__
    if cls is bytes and len(address) in (4, 16):
        return address
    try:
        if cls is str:
            return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        if cls is int:
            return address.to_bytes(4 if 0 <= address < 1 << 32 else 16, "big")
        return ipaddress.ip_address(address).packed
    except (OSError, OverflowError, ValueError, TypeError):
        raise ValueError(f"not an IP address: {address!r}") from None


def encode_send(sid: int, payload: bytes, address, port: int, device: str | None) -> bytes:
    """One frame of the 'send' stream (the user's side)."""
    name = b"" if device is None else device.encode()
    if len(name) > 255:
        raise ValueError(f"device name too long: {device!r}")
    dst = _packed(address)
    try:
        head = _SEND_HEAD.pack(sid, 4 if len(dst) == 4 else 6, port, len(name))
    except struct.error as exc:
        raise ValueError(f"cannot send to socket {sid!r}, port {port!r}: {exc}") from None
    return b"".join((head, dst, name, payload))


_send_names: dict[bytes, str] = {}


def decode_send(frame: bytes | memoryview) -> tuple[int, int, int, int, str | None, bytes | memoryview]:
    """(sid, family, destination as an int, port, device or None, payload) of a 'send' frame
    (netstack's side); the payload is a slice of frame. Raises struct.error or ValueError if
    malformed."""
    sid, family, port, n = _SEND_HEAD.unpack_from(frame, 0)
    a = _SEND_LEN + _addr_len(family)
    end = a + n
    if end > len(frame):
        raise ValueError(f"a destination and a device name of {n} bytes overrun the frame")
    dst = int.from_bytes(frame[_SEND_LEN:a], "big")
    if not n:
        return sid, family, dst, port, None, frame[a:]
    return sid, family, dst, port, _device_name(bytes(frame[a:end]), _send_names), frame[end:]


class DatagramClient:
    def __init__(self, peer: dict[str, str], owner: str, *, timeout: float = 5.0, chan=None):
        """``chan``: the data channel the launcher gave a component (``Runtime.data_user``);
        without one (tests, tools outside the graph) the client connects over ZeroMQ."""
        self.owner = owner
        self.rpc = RpcClient(peer["rpc"], DATAGRAM, timeout=timeout, retries=3)
        self._grant = None
        if chan is None:
            chan = self._local_channel(peer, owner)
        if chan is None:
            # A ZeroMQ data endpoint: our name is proved with the graph's data key (readable
            # only by the launcher's user).
            ep = peer.get("rpc", "")
            key = load_data_key(os.path.dirname(ep[len("ipc://"):])) if ep.startswith("ipc://") else None
            chan = UserChannel(DATAGRAM, peer["dgram"], owner.encode(), key=key)
        self.chan = chan
        self.chan.send_event("hello", owner=owner)
        self._poller = zmq.Poller()
        self._poller.register(self.chan.poll_key, zmq.POLLIN)
        self.bad = 0

    @property
    def socket(self):
        """Readable when datagrams wait: register it in the component's loop."""
        return self.chan.poll_key

    def _local_channel(self, peer: dict[str, str], owner: str):
        """A socketpair channel from the launcher's broker when the graph runs on this host."""
        ep = peer.get("rpc", "")
        if not ep.startswith("ipc://"):
            return None
        from ipc.seqpacket import SeqpacketUser
        from launcher.channels import request_channel
        try:
            self._grant, fd = request_channel(os.path.dirname(ep[len("ipc://"):]), DATAGRAM.name, owner)
        except (OSError, LookupError):
            return None   # no broker (a ZeroMQ data graph): the ZeroMQ endpoint serves us
        return SeqpacketUser(DATAGRAM, fd, owner.encode())

    def hello(self) -> None:
        """Say hello again (after netstack restarted) so that it can route to us."""
        self.chan.send_event("hello", owner=self.owner)

    def open(self, port: int, address: str | None = None, device: str | None = None,
             broadcast: bool = False) -> int:
        return self.rpc.call("open", owner=self.owner, port=port, address=address, device=device,
                             broadcast=broadcast)

    def close_socket(self, sid: int) -> bool:
        return self.rpc.call("close", sid=sid)

    def sendto(self, sid: int, payload: bytes, address: str, port: int, device: str | None = None) -> bool:
        return self.rpc.call("sendto", sid=sid, payload=payload, address=str(address), port=port, device=device)

    def send(self, sid: int, payload: bytes, address: str, port: int, device: str | None = None) -> bool:
        """Send without waiting for an answer (the 'send' stream); failures are counted by netstack."""
        return self.send_many([(sid, payload, address, port, device)])

    def send_many(self, datagrams: list[tuple[int, bytes, Any, int, str | None]]) -> bool:
        """Each address: its text, an IPv4Address or IPv6Address, an int, or its 4 or 16
        bytes (Received.src_addr); of the socket's family."""
        return self.chan.send_batch("send", [encode_send(*d) for d in datagrams])

    def sockets(self) -> Any:
        return to_plain(self.rpc.call("sockets"))

    def drain(self) -> list[Received]:
        """Everything that has arrived, without waiting."""
        out: list[Received] = []

        def on_batch(stream: str, frames: list[bytes]) -> None:
            for f in frames:
                try:
                    out.append(decode_received(f))
                except errors.BadMessage:
                    self.bad += 1

        while self.chan.receive(on_batch, lambda name, ev: None, limit=256):
            pass
        return out

    def recv(self, timeout: float) -> list[Received]:
        """Wait up to ``timeout`` seconds for at least one datagram."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.drain()
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._poller.poll(remaining * 1000)

    def close(self) -> None:
        self.rpc.close()
        self.chan.close()
        if self._grant is not None:
            self._grant.close()   # the launcher closes our channel and tells netstack
