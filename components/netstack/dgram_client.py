"""A client of netstack's datagram interface, for components inside the graph (dhcpd, tests).

    client = DatagramClient(peer, owner="dhcpd")     # peer: the spec.peers["qnet.datagram"] entry
    sid = client.open(67, device="p0", broadcast=True)
    client.sendto(sid, payload, "255.255.255.255", 68, device="p0")
    for d in client.recv(timeout=1.0): ...           # Received(sid, src, sport, dst, dport, device, payload)

Sockets belong to ``owner`` (the channel identity), so they survive a restart
of either side: netstack keeps them in its state, and a new incarnation of the
owner reconnects under the same identity and keeps receiving.
"""
from __future__ import annotations

import ipaddress
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from ipc import errors
from ipc.channel import UserChannel, load_data_key
from ipc.decl import to_plain
from ipc.protocols.netstack import DATAGRAM
from ipc.rpc import RpcClient

_META = struct.Struct("!H")
_raw = msgspec.msgpack.Decoder()


@dataclass(frozen=True)
class Received:
    sid: int
    src: ipaddress.IPv4Address
    src_port: int
    dst: ipaddress.IPv4Address
    dst_port: int
    device: str
    payload: bytes


def decode_received(frame: bytes) -> Received:
    """One frame of the 'recv' stream; raises BadMessage on a malformed one."""
    try:
        (n,) = _META.unpack_from(frame, 0)
        meta = _raw.decode(frame[2:2 + n])
        sid, src, sport, dst, dport, device = meta
        return Received(int(sid), ipaddress.IPv4Address(src), int(sport), ipaddress.IPv4Address(dst), int(dport),
                        str(device), bytes(frame[2 + n:]))
    except (struct.error, msgspec.DecodeError, ValueError, TypeError) as exc:
        raise errors.BadMessage(f"datagram frame: {exc}") from None


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

    def send_many(self, datagrams: list[tuple[int, bytes, str, int, str | None]]) -> bool:
        frames = []
        for sid, payload, address, port, device in datagrams:
            meta = msgspec.msgpack.encode([sid, str(address), port, device])
            frames.append(_META.pack(len(meta)) + meta + bytes(payload))
        return self.chan.send_batch("send", frames)

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
