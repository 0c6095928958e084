"""Segments a connection hands to its binding, and the RST answer for a segment no
connection owns (RFC 9293 §3.10.7.1)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ...wire._fast import trusted_constructor
from ...wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, build_tcp
from . import seq as sq


@dataclass(frozen=True, slots=True)
class OutSegment:
    """One segment to transmit; the binding adds the IP addresses (`build`)."""
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None                   # SYN only (RFC 7323 §2.2)
    sack_permitted: bool = False                # SYN only (RFC 2018 §2)
    timestamp: tuple[int, int] | None = None    # (TSval, TSecr), RFC 7323 §3
    sack_blocks: tuple[tuple[int, int], ...] = ()

    def build(self, src_ip: IPv4Address | IPv6Address, dst_ip: IPv4Address | IPv6Address) -> bytes:
        return build_tcp(src_ip, dst_ip, self.src_port, self.dst_port, self.seq, self.ack,
                         self.flags, self.window, self.payload, mss=self.mss, wscale=self.wscale,
                         sack_permitted=self.sack_permitted, timestamp=self.timestamp,
                         sack_blocks=self.sack_blocks)

    @property
    def seg_len(self) -> int:
        return len(self.payload) + bool(self.flags & SYN) + bool(self.flags & FIN)

    def __repr__(self) -> str:
        names = "".join(n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))
                        if self.flags & bit)
        return (f"<{self.src_port}>{self.dst_port} [{names}] seq={self.seq} ack={self.ack} "
                f"win={self.window} len={len(self.payload)}{f' mss={self.mss}' if self.mss else ''}"
                f"{f' ws={self.wscale}' if self.wscale is not None else ''}"
                f"{' sackOK' if self.sack_permitted else ''}"
                f"{f' ts={self.timestamp}' if self.timestamp else ''}"
                f"{f' sack={self.sack_blocks}' if self.sack_blocks else ''}>")


# Positional, all fields, for the per-segment path (a frozen dataclass's __init__ costs twice).
make_out_segment = trusted_constructor(OutSegment)


def rst_for(seg: TcpSegment) -> OutSegment | None:
    """The answer to a segment for a connection that does not exist (CLOSED)."""
    # RFC 9293 §3.10.7.1: an incoming RST is discarded; any other segment gets a RST whose
    # fields make it acceptable to the sender.
    if seg.rst:
        return None
    if seg.ack_flag:
        return OutSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return OutSegment(seg.dst_port, seg.src_port, 0, sq.add(seg.seq, seg.seg_len), RST | ACK, 0)
