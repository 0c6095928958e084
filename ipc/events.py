"""Typed events: fan-out (PUB/SUB) and one-way reports (PUSH/PULL).

A message is two frames: the topic ``b"<protocol>/<event>"`` and the
MessagePack body. Subscribers filter by topic prefix inside ZeroMQ; every
received body is validated against the event's declaration, and bad ones are
counted and dropped.
"""
from __future__ import annotations

from typing import Any, Callable

import zmq

from . import errors, transport
from .decl import Protocol, encode
from .rpc import configure_socket, context


def _topic(protocol: Protocol, name: str) -> bytes:
    return f"{protocol.name}/{name}".encode()


class _Sender:
    def __init__(self, protocol: Protocol, sock: zmq.Socket):
        self.protocol = protocol
        self.socket = sock
        self.counters = {"sent": 0, "dropped": 0}

    def emit(self, name: str, /, **fields: Any) -> bool:
        ev = self.protocol.event_by_name.get(name)
        if ev is None:
            raise errors.InvalidArgument(f"{self.protocol.name} has no event {name!r}")
        body = encode(fields)
        ev.decode(body)
        try:
            self.socket.send_multipart([_topic(self.protocol, name), body], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["dropped"] += 1
            return False
        self.counters["sent"] += 1
        return True

    def close(self) -> None:
        self.socket.close(linger=0)


class _Receiver:
    def __init__(self, protocols: list[Protocol], sock: zmq.Socket):
        self.protocols = {p.name: p for p in protocols}
        self.socket = sock
        self.counters = {"received": 0, "bad": 0}
        self.last_error: str | None = None

    def receive(self, on_event: Callable[[str, str, Any], None], limit: int = 64) -> int:
        """Drain up to ``limit`` events, calling on_event(protocol, name, value)."""
        n = 0
        while n < limit:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            try:
                if len(parts) != 2:
                    raise errors.BadMessage(f"event needs 2 parts, got {len(parts)}")
                proto_name, _, name = parts[0].decode("utf-8", "replace").partition("/")
                proto = self.protocols.get(proto_name)
                ev = proto.event_by_name.get(name) if proto else None
                if ev is None:
                    raise errors.BadMessage(f"unknown event {parts[0][:80]!r}")
                value = ev.decode(parts[1])
            except errors.IpcError as exc:
                self.counters["bad"] += 1
                self.last_error = str(exc)
                continue
            self.counters["received"] += 1
            on_event(proto_name, name, value)
        return n

    def close(self) -> None:
        self.socket.close(linger=0)


class Publisher(_Sender):
    def __init__(self, protocol: Protocol, endpoint: str):
        sock = context().socket(zmq.PUB)
        configure_socket(sock)
        transport.bind(sock, endpoint)
        super().__init__(protocol, sock)


class Subscriber(_Receiver):
    def __init__(self, protocols: list[Protocol], endpoints: list[str]):
        sock = context().socket(zmq.SUB)
        configure_socket(sock)
        for p in protocols:
            sock.setsockopt(zmq.SUBSCRIBE, f"{p.name}/".encode())
        for ep in endpoints:
            transport.connect(sock, ep)
        super().__init__(protocols, sock)


class Reporter(_Sender):
    """One-way reports to a collector (a component's heartbeats to the launcher)."""

    def __init__(self, protocol: Protocol, endpoint: str):
        sock = context().socket(zmq.PUSH)
        configure_socket(sock, hwm=100)
        transport.connect(sock, endpoint)
        super().__init__(protocol, sock)


class Collector(_Receiver):
    def __init__(self, protocols: list[Protocol], endpoint: str):
        sock = context().socket(zmq.PULL)
        configure_socket(sock)
        transport.bind(sock, endpoint)
        super().__init__(protocols, sock)
