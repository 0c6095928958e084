"""A Connection at A brought to ESTABLISHED by a hand-driven Peer at B."""

from __future__ import annotations

from components.netstack.core.tcp import Connection, State, TcpConfig
from components.netstack.wire.tcp import ACK, SYN

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Peer


def established(config: TcpConfig = TcpConfig(), now: float = 0.0, rtt: float = 0.1,
                peer_mss: int | None = 1460, window: int = 65535) -> tuple[Connection, Peer]:
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=config)
    p = Peer(c, now=now)
    c.connect(now)
    p.send(SYN | ACK, mss=peer_mss, window=window, now=now + rtt)
    p.seq += 1
    assert c.state is State.ESTABLISHED
    c.take_segments()
    c.take_events()
    p.got.clear()
    return c, p
