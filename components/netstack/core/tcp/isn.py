"""Initial sequence numbers per RFC 6528.

ISN = M + F(localip, localport, remoteip, remoteport, secretkey), where M is a timer ticking
every 4 microseconds and F a pseudo-random function keyed by a secret. Connections of one
4-tuple then start at increasing ISNs (so old duplicates do not fall into a new incarnation's
window), while an off-path attacker cannot guess another 4-tuple's ISN.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from .seq import MASK

MIN_KEY_BYTES = 16   # RFC 6528 §3: the secret key SHOULD be at least 128 bits long


def initial_sequence_number(key: bytes, local_ip: IPv4Address | IPv6Address, local_port: int,
                            remote_ip: IPv4Address | IPv6Address, remote_port: int,
                            now: float) -> int:
    if not MIN_KEY_BYTES <= len(key) <= 64:
        raise ValueError(f"tcp: ISN key of {len(key)} bytes; give 16 to 64")
    # F: keyed BLAKE2b stands in for the MD5 the RFC suggests; any keyed PRF will do.
    f = hashlib.blake2b(local_ip.packed + local_port.to_bytes(2, "big") + remote_ip.packed
                        + remote_port.to_bytes(2, "big"), key=key, digest_size=4).digest()
    m = int(now * 250_000)   # RFC 6528 §3: M, a 4-microsecond timer
    return (m + int.from_bytes(f, "big")) & MASK


def timestamp_offset(key: bytes, local_ip: IPv4Address | IPv6Address, local_port: int,
                     remote_ip: IPv4Address | IPv6Address, remote_port: int) -> int:
    """A per-connection offset for our TSval clock (RFC 7323 §7.1: a random offset per
    connection keeps the clock from leaking across connections)."""
    f = hashlib.blake2b(local_ip.packed + local_port.to_bytes(2, "big") + remote_ip.packed
                        + remote_port.to_bytes(2, "big"), key=key, digest_size=4,
                        person=b"qnet-tcp-ts").digest()
    return int.from_bytes(f, "big")
