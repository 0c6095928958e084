"""SACK (RFC 2018): the sender's scoreboard, and the blocks a receiver reports.

The scoreboard holds what the peer SACKed above SND.UNA as sorted, disjoint [start, end)
ranges of sequence numbers; RFC 6675's loss recovery reads it through `holes()`.
"""

from __future__ import annotations

from . import seq as sq


class Scoreboard:
    __slots__ = ("blocks", "sacked")
    MAX_BLOCKS = 64     # a bound: a peer cannot make us keep more ranges than this

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []   # [start, end), sorted from SND.UNA up
        self.sacked = 0                     # bytes in them

    def clear(self) -> None:
        self.blocks.clear()
        self.sacked = 0

    def update(self, sack_blocks, una: int, snd_max: int) -> int:
        """Take the blocks of one ACK; returns how many bytes were newly SACKed."""
        before = self.sacked
        for left, right in sack_blocks:
            # RFC 2018 §4: blocks below SND.UNA (a D-SACK) or beyond what we sent are not ours
            if not (sq.lt(left, right) and sq.lt(una, right) and sq.le(right, snd_max)):
                continue
            if sq.lt(left, una):
                left = una
            self._add(left, right, una)
        return self.sacked - before

    def _add(self, left: int, right: int, una: int) -> None:
        lo, hi = sq.diff(left, una), sq.diff(right, una)
        out: list[list[int]] = []
        placed = False
        for b in self.blocks:
            bl, bh = sq.diff(b[0], una), sq.diff(b[1], una)
            if bh < lo or bl > hi:
                if bl > hi and not placed:
                    out.append([sq.add(una, lo), sq.add(una, hi)])
                    placed = True
                out.append(b)
            else:
                lo, hi = min(lo, bl), max(hi, bh)      # overlaps or touches: merge
        if not placed:
            out.append([sq.add(una, lo), sq.add(una, hi)])
        if len(out) > self.MAX_BLOCKS:
            out = out[:self.MAX_BLOCKS]                # keep the lowest: they matter first
        self.blocks = out
        self.sacked = sum(sq.diff(e, s) for s, e in out)

    def advance(self, una: int) -> None:
        """SND.UNA moved: forget what is now cumulatively acknowledged."""
        if not self.blocks:
            return
        keep = []
        for s, e in self.blocks:
            if sq.le(e, una):
                continue
            keep.append([una, e] if sq.lt(s, una) else [s, e])
        self.blocks = keep
        self.sacked = sum(sq.diff(e, s) for s, e in keep)

    def holes(self, una: int):
        """(start, end, sacked_above, blocks_above) for each unSACKed range below the
        highest SACKed byte, lowest first."""
        above = self.sacked
        n = len(self.blocks)
        start = una
        for i, (s, e) in enumerate(self.blocks):
            if sq.lt(start, s):
                yield start, s, above, n - i
            above -= sq.diff(e, s)
            start = e

    def highest(self, una: int) -> int:
        return self.blocks[-1][1] if self.blocks else una

    def is_sacked(self, seq: int) -> bool:
        for s, e in self.blocks:
            if sq.le(s, seq) and sq.lt(seq, e):
                return True
        return False


def receiver_blocks(ooo: dict, rcv_nxt: int, recent: list[int], limit: int) -> tuple:
    """The SACK blocks for an ACK (RFC 2018 §4): the out-of-order queue merged into ranges;
    first the one holding the most recently received segment, then the others in the order
    they were last received (`recent`, newest first), up to `limit` blocks."""
    ranges: list[list[int]] = []
    for s in sorted(ooo, key=lambda x: sq.diff(x, rcv_nxt)):
        e = sq.add(s, len(ooo[s][0]))
        if s == e:
            continue
        if ranges and sq.le(s, ranges[-1][1]):
            if sq.gt(e, ranges[-1][1]):
                ranges[-1][1] = e
        else:
            ranges.append([s, e])
    out: list[tuple[int, int]] = []
    for r in recent:
        for s, e in ranges:
            if sq.le(s, r) and sq.lt(r, e) and (s, e) not in out:
                out.append((s, e))
                break
        if len(out) >= limit:
            return tuple(out)
    for s, e in ranges:
        if (s, e) not in out:
            out.append((s, e))
            if len(out) >= limit:
                break
    return tuple(out)
