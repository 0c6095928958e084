"""The sending half of a Connection: ACK processing, loss recovery, output, the
retransmission and persist timers. A mixin of conn.Connection (it shares its TCB).

Loss recovery is one machine for three cases, after RFC 6675: the scoreboard says which
bytes above SND.UNA the peer holds (SACK blocks, or without SACK one segment per duplicate
ACK, as Linux's Reno emulation), which unSACKed bytes are lost, and `pipe` estimates what
is still in the network:

    pipe = (snd_max - SND.UNA) - SACKed - lost but not yet retransmitted

New data and retransmissions go out while cwnd - pipe allows a segment. Lost bytes are
retransmitted once per episode, in order, from `high_rxt` up (NextSeg, RFC 6675 §4).

    recovery 0  open: nothing is lost; duplicate ACKs let new data out (limited transmit,
                RFC 3042, falls out of the pipe: SACKed bytes left the network)
    recovery 1  fast recovery (RFC 6675 §5, RFC 6582 without SACK), entered on the third
                duplicate ACK or when IsLost(SND.UNA); cwnd = ssthresh; left when SND.UNA
                passes `recover` (snd_max at entry)
    recovery 2  after a retransmission timeout: everything unSACKed below `recover` is
                lost, cwnd restarts at one segment and slow start clocks the rest out
"""

from __future__ import annotations

from ...wire.tcp import ACK, FIN, PSH, TcpSegment
from . import seq as sq
from .state import Event, State

S, E = State, Event
TS_SPACE = 12           # the timestamp option with its NOPs (conn.TS_OPTION_SPACE)

DUPTHRESH = 3              # RFC 5681 §3.2, RFC 6675 §2
NO_SEND = frozenset((S.CLOSED, S.LISTEN, S.SYN_SENT, S.SYN_RECEIVED, S.TIME_WAIT))


class Sender:
    # -- what the peer has ------------------------------------------------------------------
    def flight_size(self) -> int:
        """RFC 5681's FlightSize: sent and not cumulatively acknowledged."""
        return sq.diff(self.snd_max, self.snd_una)

    def _sacked_bytes(self) -> int:
        return self.sb.sacked if self.sack_ok else self.reno_sacked

    def _lost_ranges(self):
        """(start, end) of the bytes taken as lost, lowest first (only in recovery)."""
        una, mss = self.snd_una, self.send_mss
        if self.recovery == 2:
            # after a timeout, everything unSACKed that was sent before it
            top = self.recover
            start = una
            for s, e in self.sb.blocks:
                if sq.ge(s, top):
                    break
                if sq.lt(start, s):
                    yield start, s
                start = e
            if sq.lt(start, top):
                yield start, top
            return
        if not self.sack_ok:
            yield una, sq.add(una, min(mss, self.flight_size()))   # RFC 6582: the first one
            return
        first = True
        for s, e, above, blocks in self.sb.holes(una):
            if first or above > (DUPTHRESH - 1) * mss or blocks >= DUPTHRESH:
                # RFC 6675 §4 IsLost: DupThresh discontiguous SACKed ranges, or more than
                # (DupThresh - 1) * SMSS bytes SACKed above it. The first hole is the one the
                # entry retransmits (§5 (4.3)).
                yield s, e
            first = False

    def _next_lost(self) -> tuple[int, int] | None:
        """RFC 6675 NextSeg rule 1: the first lost byte not yet retransmitted, and how much."""
        hr = self.high_rxt
        for s, e in self._lost_ranges():
            if sq.le(e, hr):
                continue
            if sq.lt(s, hr):
                s = hr
            return s, min(sq.diff(e, s), self.send_mss)
        return None

    def _pipe(self) -> int:
        pipe = self.flight_size() - self._sacked_bytes()
        if self.recovery:
            hr = self.high_rxt
            for s, e in self._lost_ranges():
                if sq.lt(s, hr):
                    s = hr
                if sq.lt(s, e):
                    pipe -= sq.diff(e, s)       # lost and not retransmitted: not in the network
        return max(pipe, 0)

    # -- ACKs -------------------------------------------------------------------------------
    def _process_ack(self, seg: TcpSegment, now: float) -> bool:
        """The ACK step in a synchronized state. False: drop the segment."""
        ack = seg.ack
        una = self.snd_una
        # RFC 5961 §5.2: the ACK is acceptable only in [SND.UNA - MAX.SND.WND, SND.NXT];
        # anything else MUST be discarded and an ACK sent back.
        if sq.gt(ack, self.snd_max) or sq.lt(ack, sq.add(una, -self.max_snd_wnd)):
            self.stats["ack_unacceptable"] += 1
            self._ack_pending = True
            return False
        self.probes_out = 0                   # the peer answers: it is alive
        wnd = seg.window << self.snd_wscale   # RFC 7323 §2.3
        if self.sack_ok and seg.sack_blocks:
            self.stats["sacked_bytes"] += self.sb.update(seg.sack_blocks, una, self.snd_max)
        if sq.gt(ack, una):
            self._ack_advance(ack, now, seg)
        elif (ack == una and not seg.payload and not seg.flags & FIN and wnd == self.snd_wnd
              and una != self.snd_max):
            # RFC 5681 §2: a duplicate ACK
            self.stats["dup_acks"] += 1
            self.dupacks += 1
            if not self.sack_ok:
                # no SACK: each duplicate ACK says one segment left the network (Linux)
                self.reno_sacked = min(self.reno_sacked + self.send_mss,
                                       max(self.flight_size() - self.send_mss, 0))
        # RFC 9293 §3.10.7.4 fifth: update the window only from a segment no older than the
        # one that last set it.
        if sq.le(self.snd_una, ack) and (sq.lt(self.snd_wl1, seg.seq) or (
                self.snd_wl1 == seg.seq and sq.le(self.snd_wl2, ack))):
            self.snd_wnd = wnd
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            if wnd and self.persist_deadline is not None:
                self.persist_deadline = None  # the window opened: _output sends
                self.persist_backoff = 0
        if not self.recovery and self.snd_una != self.snd_max and sq.gt(ack, self.recover) and (
                self.dupacks >= DUPTHRESH
                or (self.sack_ok and self.sb.blocks and self._first_hole_lost())):
            self._enter_recovery(now)
        return True

    def _first_hole_lost(self) -> bool:
        for _, _, above, blocks in self.sb.holes(self.snd_una):
            return above > (DUPTHRESH - 1) * self.send_mss or blocks >= DUPTHRESH
        return False

    def _enter_recovery(self, now: float) -> None:
        # RFC 6675 §5 (4) / RFC 6582 §3.2 (2), (3): fast retransmit and enter recovery.
        self.stats["fast_retransmits"] += 1
        self.cc.on_congestion(self, now)
        self.cwnd = self.ssthresh
        self.recovery = 1
        self.recover = self.snd_max
        self.high_rxt = self.snd_una
        self._force_rtx = True                # (4.3): the first segment goes regardless

    def _ack_advance(self, ack: int, now: float, seg: TcpSegment | None = None) -> None:
        """SND.UNA moves to ack: free the acknowledged data, sample the RTT, grow cwnd."""
        acked = sq.diff(ack, self.snd_una)
        if sq.gt(ack, self.snd_buf_seq):
            n = min(len(self.sndbuf), sq.diff(ack, self.snd_buf_seq))
            del self.sndbuf[:n]
            self.snd_buf_seq = sq.add(self.snd_buf_seq, n)
        was_syn = self.snd_una == self.iss
        self.snd_una = ack
        if sq.lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        if sq.lt(self.high_rxt, ack):
            self.high_rxt = ack
        self.sb.advance(ack)
        st = self.stats
        st["bytes_acked"] += acked
        if now - self._rate_time >= (self.rto.srtt or 0.1):
            if self._rate_time:
                self.delivery_rate = (st["bytes_acked"] - self._rate_bytes) / (now - self._rate_time)
            self._rate_time, self._rate_bytes = now, st["bytes_acked"]
        ts = seg.timestamp if seg is not None and self.ts_ok else None
        if ts is not None and ts[1] and not was_syn:
            # RFC 7323 §4.1: an ACK that advances the left edge gives an RTT sample from the
            # TSecr it echoes (and a retransmission carries a fresh TSval: no ambiguity).
            rtt_ms = sq.diff(self._tsval(now), ts[1])
            if 0 <= rtt_ms < 120_000:
                self.rto.sample(rtt_ms / 1000)
                self.rtt_seq = None
        elif self.rtt_seq is not None and sq.ge(ack, self.rtt_seq):
            self.rto.sample(now - self.rtt_time)    # Karn-safe: rtt_seq is cleared on retransmit
            self.rtt_seq = None
        self.retries = 0
        self.rto_backoff = 0
        if was_syn:
            if self.syn_retransmitted and self.rto.samples == 0:
                # RFC 6298 §5.7: the SYN timed out and gave no sample: "the RTO MUST be
                # re-initialized to 3 seconds when data transmission begins".
                self.rto.rto = max(3.0, self.rto.minimum)
            # RFC 5681 §3.1 eq. 1: the initial window.
            self.cwnd = min(4 * self.send_mss, max(2 * self.send_mss, 4380))
            self.recover = sq.add(ack, -1)   # RFC 6582 §3.2: recover starts at the ISS
        elif self.recovery:
            if sq.ge(ack, self.recover):
                # RFC 6582 §3.2 (3) full acknowledgment: leave recovery, cwnd =
                # min(ssthresh, max(FlightSize, SMSS) + SMSS) (option 1)
                if self.recovery == 1:
                    self.cwnd = min(self.ssthresh, max(self.flight_size(), self.send_mss)
                                    + self.send_mss)
                self.recovery = 0
                self.dupacks = 0
                self.reno_sacked = 0
            else:
                # a partial ACK: the next hole is lost too (RFC 6582 §3.2 (4), RFC 6675)
                self.stats["partial_acks"] += 1
                if not self.sack_ok:
                    self.reno_sacked = max(0, self.reno_sacked - acked)
                    # RFC 6582 §3.2 (5): retransmit the first unacknowledged segment now
                    self._force_rtx = self.recovery == 1
                if self.recovery == 2:
                    self.cc.on_ack(self, acked, now)   # slow start after the timeout
        else:
            self.dupacks = 0
            self.reno_sacked = 0
            self.cc.on_ack(self, acked, now)
        # RFC 6298 §5.2 and §5.3: stop the timer when nothing is outstanding, otherwise
        # restart it for the current RTO.
        self.rtx_deadline = None if self.snd_una == self.snd_max else now + self.rto.rto
        if self.sndbuf_limit < self.cfg.send_buffer_max and 2 * self.cwnd > self.sndbuf_limit:
            # send-buffer auto-tuning: room for about two congestion windows (Linux's
            # tcp_sndbuf_expand), so the application can keep the pipe full.
            self.sndbuf_limit = min(2 * self.cwnd, self.cfg.send_buffer_max)
        if self._writable_wanted and len(self.sndbuf) < self.sndbuf_limit:
            self._writable_wanted = False
            from .conn import TcpEvent
            self._events.append(TcpEvent.WRITABLE)

    # -- timers -----------------------------------------------------------------------------
    def _retransmit_timeout(self, now: float) -> None:
        syn_phase = not self._syn_acked()
        limit = self.cfg.syn_retries if syn_phase else self.cfg.data_retries
        if self.retries >= limit:
            self.rtx_deadline = None
            self._step(E.GIVE_UP, now)
            return
        self.retries += 1
        self.stats["rto_expired"] += 1
        self.rto.back_off()             # RFC 6298 §5.5
        self.rto_backoff += 1
        self.rtt_seq = None             # RFC 6298 §3 (Karn): no sample from a retransmission
        if syn_phase:
            self.syn_retransmitted = True
            self._send_syn(now)
        elif self.snd_una != self.snd_max:
            # RFC 5681 §3.1 eq. 4 via the algorithm (once per episode: a second timeout of
            # the same data does not halve ssthresh again, as Linux)
            if self.recovery != 2 or self.retries == 1:
                self.cc.on_rto(self, now)
            else:
                self.cwnd = self.send_mss
            if self.retries >= 2:
                # the receiver may have reneged on what it SACKed (RFC 2018 §8): forget it
                self.sb.clear()
            self.recovery = 2
            self.recover = self.snd_max
            self.high_rxt = self.snd_una
            self.dupacks = 0
            self.reno_sacked = 0
            # RFC 6298 §5.4: retransmit the earliest unacknowledged segment
            self._force_rtx = True
            self._output(now)
        self.rtx_deadline = now + self.rto.rto   # RFC 6298 §5.6

    def _persist_timeout(self, now: float) -> None:
        """RFC 9293 §3.8.6.1: data waits behind a zero (or useless) window with nothing in
        flight. Send what the window allows if anything (the SWS override timer, §3.8.6.2.1),
        else a zero-window probe, and back off."""
        self.persist_deadline = None
        if self.state in NO_SEND or self.snd_una != self.snd_max or not self._data_waiting():
            self.persist_backoff = 0
            return
        if self.probes_out >= self.cfg.data_retries:
            # RFC 9293 §3.8.6.1: the peer has stopped answering the probes
            self._step(E.GIVE_UP, now)
            return
        self.probes_out += 1
        self.persist_backoff += 1
        if self.snd_wnd:
            self.stats["sws_override"] += 1
            self._output(now, force=True)
        else:
            # Like Linux: <SEQ=SND.UNA-1><ACK=RCV.NXT>, an old sequence number, which the
            # peer must answer with an ACK carrying its window (no byte is pushed into it).
            self.stats["window_probes"] += 1
            self._emit(sq.add(self.snd_una, -1), ACK)
        if self.snd_una == self.snd_max and self.persist_deadline is None:
            self._arm_persist(now)

    def _arm_persist(self, now: float) -> None:
        rto = self.rto.rto * (1 << min(self.persist_backoff, 16))
        self.persist_deadline = now + min(max(rto, self.rto.minimum), self.cfg.rto_max)

    def _data_waiting(self) -> bool:
        return (len(self.sndbuf) > sq.diff(self.snd_max, self.snd_buf_seq)
                or (self.fin_queued and not self._fin_sent()))

    def _fin_sent(self) -> bool:
        return self.fin_queued and sq.diff(self.snd_max, self.snd_buf_seq) > len(self.sndbuf)

    # -- output -----------------------------------------------------------------------------
    def _send_range(self, seq: int, n: int, now: float, *, rtx: bool) -> int:
        """Emit one segment of up to n bytes from seq (with the FIN if it reaches it);
        returns the sequence space it took."""
        off = sq.diff(seq, self.snd_buf_seq)
        buf = self.sndbuf
        plen = max(0, min(n, len(buf) - off))
        fin = self.fin_queued and off + plen == len(buf) and (
            not rtx or sq.gt(self.snd_max, sq.add(self.snd_buf_seq, len(buf))))
        if plen == 0 and not fin:
            return 0
        payload = bytes(memoryview(buf)[off:off + plen]) if plen else b""
        flags = ACK | (PSH if off + plen == len(buf) and plen else 0) | (FIN if fin else 0)
        self._emit(seq, flags, payload)
        used = plen + fin
        end = sq.add(seq, used)
        if rtx:
            self.stats["segments_retransmitted"] += 1
            self.stats["bytes_retransmitted"] += plen
            self.rtt_seq = None            # Karn (RFC 6298 §3)
            if sq.gt(end, self.high_rxt):
                self.high_rxt = end
        else:
            self.snd_nxt = self.snd_max = end
            if self.rtt_seq is None and not self.ts_ok:
                self.rtt_seq, self.rtt_time = end, now
        if self.rtx_deadline is None:
            self.rtx_deadline = now + self.rto.rto   # RFC 6298 §5.1
        return used

    def _output(self, now: float, force: bool = False) -> None:
        """Send what the windows allow, then a bare ACK if one is owed and nothing carried it.
        `force`: the persist timer's override of SWS avoidance and Nagle."""
        if self._syn_acked() and self.state not in NO_SEND and self.state is not S.FIN_WAIT_2:
            mss = self.send_mss
            pipe = self._pipe()
            while True:
                room = self.cwnd - pipe
                # 1. retransmit what recovery takes as lost (RFC 6675 NextSeg rule 1)
                if self.recovery and (room >= mss or self._force_rtx):
                    nxt = self._next_lost()
                    if nxt is not None:
                        self._force_rtx = False
                        used = self._send_range(nxt[0], nxt[1], now, rtx=True)
                        if used:
                            pipe += used
                            continue
                self._force_rtx = False
                # 2. new data (rule 2), within the peer's window and the congestion window
                off = sq.diff(self.snd_max, self.snd_buf_seq)
                avail = len(self.sndbuf) - off
                fin_left = self.fin_queued and not self._fin_sent()
                if avail <= 0 and not fin_left:
                    break
                wnd_room = sq.diff(sq.add(self.snd_una, self.snd_wnd), self.snd_max)
                want = min(avail, mss) if avail > 0 else 0
                if want == mss and self.tso_max and not self.recovery and avail > mss \
                        and mss == self.cfg.mss - (TS_SPACE if self.ts_ok else 0):
                    # TSO: whole MSS-sized segments in one super-segment, within what cwnd
                    # and the peer's window allow now (the device cuts it at the same MSS).
                    fit = min(avail, self.tso_max, room, wnd_room)
                    if fit >= 2 * mss:
                        want = fit - fit % mss
                n = 0
                if want:
                    if room < want and not force:
                        break               # cwnd: the returning ACKs clock out the rest
                    n = max(0, min(want, wnd_room))
                    if n < want and not force:
                        # RFC 9293 §3.8.6.2.1 (sender SWS avoidance): the peer's window cuts
                        # the segment short: send it only if it is at least half the largest
                        # window the peer offered (the persist timer overrides a stall).
                        if n == 0 or n < self.max_snd_wnd // 2:
                            self.stats["sws_deferred"] += n > 0
                            break
                    elif (n < mss and not force and not self.nodelay and n == avail
                          and not fin_left and self.snd_una != self.snd_max):
                        # Nagle (RFC 896, RFC 9293 §3.7.4): one small segment in flight at
                        # a time. A FIN is never held back (as Linux).
                        self.stats["nagle_deferred"] += 1
                        break
                fin = fin_left and n == avail
                if n == 0 and not fin:
                    break
                used = self._send_range(self.snd_max, n, now, rtx=False)
                if not used:
                    break
                pipe += used
                force = False
                if fin:
                    break
            if (self.snd_una == self.snd_max and self.persist_deadline is None
                    and self._data_waiting()):
                # Data waits behind a closed (or too small) window with nothing in flight:
                # without a timer a lost window update would stall us for good.
                self._arm_persist(now)
        if self._ack_pending and self.state is not S.CLOSED:
            if self.hold_acks and not self.ooo:
                return      # one ACK for the batch's in-order data (Connection.release_acks)
            self._emit(self.snd_max, ACK)
