"""SYN cookies, Linux style (RFC 4987 §3.6): a listener whose SYN queue is full answers a
SYN with a SYN,ACK whose ISN encodes the connection, and keeps nothing. The ACK that
completes the handshake brings it back (SEG.ACK - 1); `check` validates it, and
`Connection.from_cookie` builds the ESTABLISHED connection from that ACK.

    ISN = H0(4-tuple) + client ISN + (count << 24) + ((H1(4-tuple, count) + mss index) mod 2^24)

`count` is a slow counter (64 s); a cookie is good for the counter it was made in and the
next. H0 and H1 are keyed BLAKE2b. The low 24 bits carry an index into a small MSS table.

What a cookie cannot remember is lost: the peer's exact MSS (rounded down to the table),
window scaling and SACK-permitted - unless both ends do timestamps: then, as Linux does, they
ride in the low 6 bits of our SYN,ACK's TSval, which the peer echoes in TSecr
(`encode_options` / `decode_options`). Data on the SYN is lost too, and the SYN,ACK is
never retransmitted (the peer retransmits its SYN instead).
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from ...wire.tcp import ACK, SYN, TcpSegment
from .isn import timestamp_offset
from .segment import OutSegment

COUNTER_PERIOD = 64.0        # seconds per counter step (Linux: a minute)
MAX_AGE = 2                  # counter steps a cookie stays good (Linux MAX_SYNCOOKIE_AGE)
COOKIE_BITS = 24
_MASK24 = (1 << COOKIE_BITS) - 1
_MASK32 = (1 << 32) - 1
# Linux's tables (msstab): the common sizes, so rounding down costs little
MSS_V4 = (536, 1300, 1440, 1460)
MSS_V6 = (1220, 1420, 1440, 8940)
TS_OPT_BITS = 6              # TSval's low bits: wscale (4, 15 = none), SACK (1), ECN (1)


def _table(ip: IPv4Address | IPv6Address) -> tuple[int, ...]:
    return MSS_V4 if ip.version == 4 else MSS_V6


def _h(key: bytes, src, sport: int, dst, dport: int, count: int, c: int) -> int:
    d = hashlib.blake2b(src.packed + dst.packed + sport.to_bytes(2, "big")
                        + dport.to_bytes(2, "big") + (count & _MASK32).to_bytes(4, "big")
                        + bytes((c,)), key=key, digest_size=4, person=b"qnet-syncookie")
    return int.from_bytes(d.digest(), "big")


def _check_key(key: bytes) -> None:
    if not 16 <= len(key) <= 64:
        raise ValueError(f"tcp: SYN cookie key of {len(key)} bytes; give 16 to 64")


def make(key: bytes, now: float, src: IPv4Address | IPv6Address, sport: int,
         dst: IPv4Address | IPv6Address, dport: int, client_isn: int, mss: int) -> int:
    """Our ISN for a SYN from src:sport (the client) to dst:dport (us)."""
    _check_key(key)
    table = _table(src)
    idx = 0
    for i, m in enumerate(table):
        if m <= mss:
            idx = i
    count = int(now // COUNTER_PERIOD)
    return (_h(key, src, sport, dst, dport, 0, 0) + client_isn + (count << COOKIE_BITS)
            + ((_h(key, src, sport, dst, dport, count, 1) + idx) & _MASK24)) & _MASK32


def check(key: bytes, now: float, src: IPv4Address | IPv6Address, sport: int,
          dst: IPv4Address | IPv6Address, dport: int, seg_ack: int, seg_seq: int) -> int | None:
    """The MSS a cookie-bearing ACK (from the client src:sport) encodes, or None if it is
    not a cookie of ours, or too old."""
    _check_key(key)
    cookie = (seg_ack - 1) & _MASK32
    client_isn = (seg_seq - 1) & _MASK32
    count = int(now // COUNTER_PERIOD)
    c = (cookie - _h(key, src, sport, dst, dport, 0, 0) - client_isn) & _MASK32
    age = (count - (c >> COOKIE_BITS)) & (_MASK32 >> COOKIE_BITS)
    if age >= MAX_AGE:
        return None
    idx = (c - _h(key, src, sport, dst, dport, count - age, 1)) & _MASK24
    table = _table(src)
    return table[idx] if idx < len(table) else None


def encode_options(tsval: int, wscale: int | None, sack: bool) -> int:
    """Our SYN,ACK's TSval carrying the peer's window shift and SACK-permitted (Linux's
    cookie_init_timestamp); never ahead of the clock, so TSvals stay monotonic."""
    opts = (0xF if wscale is None else min(wscale, 14)) | (0x10 if sack else 0)
    ts = (tsval & ~((1 << TS_OPT_BITS) - 1) & _MASK32) | opts
    if ts > tsval:
        ts = (ts - (1 << TS_OPT_BITS)) & _MASK32
    return ts


def decode_options(tsecr: int) -> tuple[int | None, bool]:
    w = tsecr & 0xF
    return (None if w == 0xF else w), bool(tsecr & 0x10)


def syn_ack(seg: TcpSegment, key: bytes, now: float, local_ip: IPv4Address | IPv6Address,
            remote_ip: IPv4Address | IPv6Address, *, isn_key: bytes, config) -> OutSegment:
    """The SYN,ACK answering `seg` (a SYN to local_ip) with a cookie; nothing is kept.
    `isn_key` and `config` must be those `Connection.from_cookie` will get: they fix our
    timestamp clock and window shift."""
    from .conn import MAX_WINDOW, window_shift
    mss = seg.mss if seg.mss else config.default_send_mss
    isn = make(key, now, remote_ip, seg.src_port, local_ip, seg.dst_port, seg.seq, mss)
    ts = wscale = None
    sack = False
    if seg.timestamp is not None and config.timestamps:
        # only with timestamps can we remember the peer's shift and SACK-permitted
        peer_ws = seg.wscale if config.window_scaling else None
        peer_sack = seg.sack_permitted and config.sack
        tsval = (int(now * 1000) + timestamp_offset(isn_key, local_ip, seg.dst_port, remote_ip,
                                                    seg.src_port)) & _MASK32
        ts = (encode_options(tsval, peer_ws, peer_sack), seg.timestamp[0])
        wscale = window_shift(config) if peer_ws is not None else None
        sack = peer_sack
    window = min(config.recv_buffer, MAX_WINDOW)
    return OutSegment(seg.dst_port, seg.src_port, isn, (seg.seq + 1) & _MASK32, SYN | ACK,
                      window, b"", config.mss, wscale, sack, ts, ())
