"""The heads of qnet.udp's datagram channels (ipc/protocols/udp.py), parsed and built: an IPv4
socket's (UDP_*) and an IPv6 socket's (UDP6_*), and the IPv4-mapped addresses (RFC 4291
§2.5.5.2) through which an IPv6 socket sees IPv4 (dual stack).

Addresses are ints here, as the core's Datagram holds them: a channel message never builds
an ipaddress object on the way through.
"""
from __future__ import annotations

from ipc.protocols.udp import (UDP6_ERROR_HEAD, UDP6_MAX_MESSAGE, UDP6_MAX_PAYLOAD, UDP6_RECV_HEAD,
                               UDP6_SEND_HEAD, UDP_ERROR_HEAD, UDP_MAX_MESSAGE, UDP_MAX_PAYLOAD,
                               UDP_RECV_HEAD, UDP_SEND_HEAD)

EPHEMERAL_MIN, EPHEMERAL_MAX = 32768, 60999   # Linux's ip_local_port_range, as TCP's
MAPPED = 0xFFFF << 32               # ::ffff:0.0.0.0, the IPv4-mapped prefix as an int
_MAPPED_MASK = ~0xFFFFFFFF & ((1 << 128) - 1)
_ZERO4 = bytes(4)
_ZERO16 = bytes(16)


def is_mapped(a: int) -> bool:
    """An IPv6 address (int) in ::ffff:0:0/96."""
    return a & _MAPPED_MASK == MAPPED


def mapped(a4: int) -> int:
    """IPv4 address a4 as the IPv6 socket sees it: ::ffff:a.b.c.d."""
    return MAPPED | a4


def parse_send(msg: bytes) -> tuple[int, int, int, int, memoryview]:
    """A client's message on an IPv4 socket's channel: (destination as an int, port, ttl, tos,
    payload); -1 for ttl or tos: the socket's. Destination 0 with port 0: the connected one.
    ValueError when malformed."""
    if len(msg) < UDP_SEND_HEAD.size:
        raise ValueError(f"{len(msg)} bytes: shorter than the send head")
    if len(msg) > UDP_MAX_MESSAGE:
        raise ValueError(f"{len(msg) - UDP_SEND_HEAD.size} bytes of payload exceed {UDP_MAX_PAYLOAD}")
    dst, port, ttl, tos = UDP_SEND_HEAD.unpack_from(msg)
    if not (ttl == -1 or 1 <= ttl <= 255) or not -1 <= tos <= 255:
        raise ValueError(f"ttl {ttl} or tos {tos} out of range")
    if (dst == _ZERO4) != (port == 0):
        raise ValueError("address 0.0.0.0 goes with port 0 (the connected destination) only")
    return int.from_bytes(dst, "big"), port, ttl, tos, memoryview(msg)[UDP_SEND_HEAD.size:]


def parse_send6(msg: bytes) -> tuple[int, int, int, int, int, memoryview]:
    """A client's message on an IPv6 socket's channel: (destination as an int, port, hop
    limit, traffic class, scope, payload); -1 for hop limit or traffic class: the socket's;
    scope 0: none. Destination :: with port 0: the connected one. ValueError when malformed."""
    if len(msg) < UDP6_SEND_HEAD.size:
        raise ValueError(f"{len(msg)} bytes: shorter than the IPv6 send head")
    if len(msg) > UDP6_MAX_MESSAGE:
        raise ValueError(f"{len(msg) - UDP6_SEND_HEAD.size} bytes of payload exceed {UDP6_MAX_PAYLOAD}")
    dst, port, hops, tclass, scope = UDP6_SEND_HEAD.unpack_from(msg)
    if not (hops == -1 or 1 <= hops <= 255) or not -1 <= tclass <= 255:
        raise ValueError(f"hop limit {hops} or traffic class {tclass} out of range")
    if (dst == _ZERO16) != (port == 0):
        raise ValueError("address :: goes with port 0 (the connected destination) only")
    return (int.from_bytes(dst, "big"), port, hops, tclass, scope,
            memoryview(msg)[UDP6_SEND_HEAD.size:])


def recv_head(src: int, sport: int, dst: int, ttl: int, tos: int, ifindex: int) -> bytes:
    return UDP_RECV_HEAD.pack(src.to_bytes(4, "big"), sport, dst.to_bytes(4, "big"), ttl, tos, ifindex)


def recv_head6(src: int, sport: int, dst: int, hops: int, tclass: int, ifindex: int) -> bytes:
    """An IPv6 socket's head; an IPv4 datagram's addresses are given mapped already."""
    return UDP6_RECV_HEAD.pack(src.to_bytes(16, "big"), sport, dst.to_bytes(16, "big"), hops,
                               tclass, ifindex)


def error_head(version: int, dst: int, port: int, icmp_type: int, code: int) -> bytes:
    """The notice of an ICMP error on a channel of IP `version` (its head layout)."""
    if version == 6:
        return UDP6_ERROR_HEAD.pack(dst.to_bytes(16, "big"), port, icmp_type, code)
    return UDP_ERROR_HEAD.pack(dst.to_bytes(4, "big"), port, icmp_type, code)


def pick_ephemeral(used: set[int], rng) -> int | None:
    """RFC 6056 §3.3.1 (Algorithm 1): a random start in the range, then a linear search."""
    count = EPHEMERAL_MAX - EPHEMERAL_MIN + 1
    start = rng.randrange(count)
    for i in range(count):
        port = EPHEMERAL_MIN + (start + i) % count
        if port not in used:
            return port
    return None
