"""One TCP connection (one TCB, RFC 9293 §3.3.1), sans-I/O.

A Connection takes parsed segments (`segment_arrives`), application calls (`connect`,
`listen`, `send`, `recv`, `close`, `abort`) and timer ticks (`poll`), each with `now` in
seconds. It hands back segments to transmit (`take_segments`), events for the application
(`take_events`) and the time it next needs `poll` (`next_deadline`). The state changes only
through state.TRANSITIONS; this module classifies what arrived into one of its events, in
the order of RFC 9293 §3.10.7, and keeps the sequence-number bookkeeping.

Scope of this piece: the handshake, data both ways with bounded buffers and an out-of-order
queue, cumulative ACKs, window advertisement, RFC 6298 retransmission with go-back-N after a timeout, a simple
slow start, FIN in every state, TIME-WAIT, the RST rules with RFC 5961. See README.md for what
is missing.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ...wire.tcp import ACK, RST, SYN, TcpSegment
from ..errors import StackError
from . import seq as sq
from . import snapshot as _snapshot
from .isn import initial_sequence_number, timestamp_offset
from .rto import RtoEstimator
from .congestion import make as make_congestion
from .sack import Scoreboard, receiver_blocks
from .segment import OutSegment, make_out_segment, rst_for
from .sender import Sender
from .state import KEEPALIVE as KEEPALIVE_STATES
from .state import RECEIVING, SENDING, TRANSITIONS, Act, Event, State

S, E, A = State, Event, Act

TS_OPTION_SPACE = 12    # the timestamp option with its two NOPs (RFC 7323 Appendix A)
MAX_WINDOW = 0xFFFF    # the 16-bit window field
MAX_WSCALE = 14        # RFC 7323 §2.3
TS_VALID = 24 * 86400  # RFC 7323 §5.5: TS.Recent older than 24 days is no longer valid


@dataclass(frozen=True)
class TcpConfig:
    mss: int = 1460                 # the MSS we advertise: MTU - IP header - TCP header
    default_send_mss: int = 536     # RFC 9293 §3.7.1: without an MSS option (1220 for IPv6)
    send_buffer: int = 64 * 1024    # bytes the application may queue unacknowledged, at first
    recv_buffer: int = 128 * 1024   # bytes received and not yet read, at first (the window)
    send_buffer_max: int = 4 << 20  # auto-tuning grows the send buffer up to here (~2*cwnd)
    recv_buffer_max: int = 6 << 20  # and the receive buffer (DRS); Linux tcp_rmem max; sets our shift
    window_scaling: bool = True     # RFC 7323 §2
    delayed_ack: float = 0.04       # RFC 9293 §3.8.6.3: <= 0.5 s; Linux's 40 ms; 0: ACK at once
    quickack: int = 16              # ACK the first segments at once (Linux's quick-ACK mode)
    nodelay: bool = False           # TCP_NODELAY: no Nagle (each connection's `nodelay`)
    timestamps: bool = True         # RFC 7323 §3-§5 (RTTM, PAWS)
    sack: bool = True               # RFC 2018, with RFC 6675 loss recovery
    congestion: str = "cubic"       # "cubic" (RFC 9438) or "newreno" (RFC 5681, RFC 6582)
    rto_initial: float = 1.0        # RFC 6298 §2.1
    rto_min: float = 0.2            # Linux's TCP_RTO_MIN; RFC 6298 §2.4's SHOULD is 1 s
    rto_max: float = 120.0          # Linux's TCP_RTO_MAX; RFC 6298 §2.5: at least 60 s
    msl: float = 30.0               # TIME-WAIT lasts 2*MSL = 60 s, Linux's TCP_TIMEWAIT_LEN
    syn_retries: int = 6            # Linux tcp_syn_retries
    data_retries: int = 15          # Linux tcp_retries2 (RFC 9293 §3.8.3 R2 >= 100 s)
    keepalive: bool = False         # SO_KEEPALIVE (RFC 1122 §4.2.3.6: MUST default to off)
    keepalive_idle: float = 7200.0  # TCP_KEEPIDLE (RFC 1122: >= 2 hours by default)
    keepalive_interval: float = 75.0  # TCP_KEEPINTVL
    keepalive_count: int = 9        # TCP_KEEPCNT: unanswered probes before giving up
    fin_timeout: float = 60.0       # Linux tcp_fin_timeout: an orphaned FIN-WAIT-2's life


def window_shift(config: TcpConfig) -> int:
    """RFC 7323 §2.3: the smallest shift that lets the window cover the largest buffer."""
    shift = 0
    while shift < MAX_WSCALE and MAX_WINDOW << shift < max(config.recv_buffer_max,
                                                           config.recv_buffer):
        shift += 1
    return shift


class TcpEvent(enum.Enum):
    CONNECTED = "connected"       # the handshake completed
    READABLE = "readable"         # new data waits in the receive buffer
    WRITABLE = "writable"         # send-buffer space freed after a send was cut short
    PEER_CLOSED = "peer_closed"   # the peer's FIN: all its data has arrived
    RESET = "reset"               # reset by the peer (refused, if before CONNECTED)
    TIMED_OUT = "timed_out"       # retransmissions exhausted
    CLOSED = "closed"             # the TCB is finished: remove it from the demux table


class Connection(Sender):
    def __init__(self, local_ip: IPv4Address | IPv6Address, local_port: int,
                 remote_ip: IPv4Address | IPv6Address, remote_port: int, *,
                 isn_key: bytes, config: TcpConfig = TcpConfig(),
                 congestion: str | None = None) -> None:
        self.local_ip, self.local_port = local_ip, local_port
        self.remote_ip, self.remote_port = remote_ip, remote_port
        self.isn_key = isn_key
        self.cfg = config
        self.congestion = congestion or config.congestion
        make_congestion(self.congestion)            # ValueError now for an unknown name
        self._now = 0.0                  # the latest `now` we were given (recv() has none)
        self._our_wscale = window_shift(config)
        self.keepalive = config.keepalive
        self.keepalive_idle = config.keepalive_idle
        self.keepalive_interval = config.keepalive_interval
        self.keepalive_count = config.keepalive_count
        self.orphaned = False            # the application let go (`release`)
        self._last_ts: tuple[int, int] | None = None   # the timestamp of the segment at hand
        # RFC 7323 §5.4 and §7.1: our TSval clock, offset per connection; it outlives
        # _reset_tcb so that the clock stays monotonic for the 4-tuple.
        self.ts_offset = (timestamp_offset(isn_key, local_ip, local_port, remote_ip, remote_port)
                          if len(isn_key) >= 16 else 0)
        self.state = S.CLOSED
        self.stats: Counter[str] = Counter()
        self._out: list[OutSegment] = []
        self._events: list[TcpEvent] = []
        self._reset_tcb()

    def _reset_tcb(self) -> None:
        self.passive = False             # reached SYN-RECEIVED from LISTEN
        self.iss: int | None = None
        self.irs: int | None = None
        self.snd_una = self.snd_nxt = self.snd_max = 0   # snd_max: the highest SND.NXT so far
        self.snd_wnd = self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0                 # right edge of the window we last advertised
        self.send_mss = self.cfg.default_send_mss
        self.sndbuf = bytearray()        # unacknowledged and unsent data, from snd_buf_seq
        self.snd_buf_seq = 0
        self.fin_queued = False
        self.rcvbuf = bytearray()
        self.ooo: dict[int, tuple[bytes, bool]] = {}   # out-of-order segments by SEG.SEQ
        self.ooo_bytes = 0
        self.rto = RtoEstimator(self.cfg.rto_initial, self.cfg.rto_min, self.cfg.rto_max)
        # options negotiated on the SYNs (RFC 7323, RFC 2018)
        self.ws_ok = self.ts_ok = False
        self.snd_wscale = self.rcv_wscale = 0    # shift of the peer's windows, of ours
        self.ts_recent = 0               # RFC 7323 §4.3: the TSval to echo
        self.ts_recent_time = 0.0        # when it was recorded (§5.5: valid 24 days)
        self.last_ack_sent = 0           # RFC 7323 §4.3: Last.ACK.sent
        # buffers, auto-tuned between the configured start and maximum
        self.rcvbuf_limit = self.cfg.recv_buffer
        self.sndbuf_limit = self.cfg.send_buffer
        self.rcv_space = 0               # bytes the application read in the last RTT (DRS)
        self.rcv_space_copied = 0        # bytes read since rcv_space_time
        self.rcv_space_time = 0.0
        self.rcv_rtt: float | None = None   # the receiver's RTT estimate (from timestamps)
        self.rtx_deadline: float | None = None
        self.time_wait_deadline: float | None = None
        self.retries = 0
        self.rtt_seq: int | None = None  # the one segment being timed: its end...
        self.rtt_time = 0.0              # ...and when it was first sent
        self.syn_sent = False
        self.syn_retransmitted = False
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.cc = make_congestion(self.congestion)
        # loss recovery (sender.py): RFC 6675 with SACK, RFC 6582 without
        self.sack_ok = False
        self.sb = Scoreboard()
        self.recovery = 0                # 0 open, 1 fast recovery, 2 after a timeout
        self.recover = 0                 # RFC 6582 "recover": snd_max when it began
        self.high_rxt = 0                # RFC 6675 HighRxt: retransmitted up to here
        self.dupacks = 0
        self.reno_sacked = 0             # without SACK: a segment per duplicate ACK
        self._force_rtx = False
        self.rto_backoff = 0
        # the persist timer (RFC 9293 §3.8.6.1), apart from retransmissions
        self.persist_deadline: float | None = None
        self.persist_backoff = 0
        self.probes_out = 0              # probes unanswered
        self._sack_recent: list[int] = []   # out-of-order arrivals, newest first (RFC 2018 §4)
        # keepalive (RFC 1122 §4.2.3.6): checked lazily against the last segment heard
        self.last_heard = 0.0
        self.keepalive_deadline: float | None = None
        self.keepalive_probes = 0
        self._keepalive_sent = 0.0
        self.fin_wait_2_deadline: float | None = None
        # delivery rate (info): bytes acknowledged over about one RTT
        self.delivery_rate = 0.0
        self._rate_time = 0.0
        self._rate_bytes = 0
        self._ack_pending = False        # an ACK is owed now
        # Set by the binding while it feeds one receive batch: in-order data is acknowledged
        # once at the batch's end (release_acks), as Linux's GRO does; out-of-order data
        # still gets its duplicate ACK at once.
        self.hold_acks = False
        # TSO: the egress device cuts super-segments of up to this many bytes into segments
        # of the path's MSS (layer.py sets it); 0, or a peer MSS below the path's: none.
        self.tso_max = 0
        self._writable_wanted = False
        self.delack_deadline: float | None = None   # a delayed ACK is owed by then
        self.quickack = self.cfg.quickack
        self.rcv_mss = min(536, self.cfg.mss)       # the peer's segment size, as seen
        self.nodelay = self.cfg.nodelay
        # IP_TTL and IP_TOS of this connection's segments (None: the IP layer's default TTL).
        # The layer hands them to IP with every segment; the TCB itself never reads them.
        self.ip_ttl: int | None = None
        self.ip_tos = 0

    # -- outputs ---------------------------------------------------------------------------
    def take_segments(self) -> list[OutSegment]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[TcpEvent]:
        ev, self._events = self._events, []
        return ev

    def next_deadline(self) -> float | None:
        ds = [d for d in (self.rtx_deadline, self.time_wait_deadline, self.delack_deadline,
                          self.persist_deadline, self.keepalive_deadline,
                          self.fin_wait_2_deadline) if d is not None]
        return min(ds) if ds else None

    def set_keepalive(self, on: bool, now: float, *, idle: float | None = None,
                      interval: float | None = None, count: int | None = None) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT (seconds, probes)."""
        if idle is not None:
            self.keepalive_idle = float(idle)
        if interval is not None:
            self.keepalive_interval = float(interval)
        if count is not None:
            self.keepalive_count = int(count)
        if min(self.keepalive_idle, self.keepalive_interval) <= 0 or self.keepalive_count < 1:
            raise ValueError("tcp: keepalive idle and interval must be > 0, count >= 1")
        self.keepalive = bool(on)
        self._now = now
        self.keepalive_probes = 0
        self._arm_keepalive(now)

    def release(self, now: float) -> None:
        """The application let go of the connection (close(2), not shutdown): close it if it
        is still open, then it is an orphan: what arrives is discarded (nobody will read it)
        and FIN-WAIT-2 lasts at most `fin_timeout` (Linux's tcp_fin_timeout)."""
        self._now = now
        if (self.state, E.CLOSE) in TRANSITIONS and self.state not in (S.CLOSED, S.LISTEN):
            self.close(now)
        elif self.state is S.LISTEN:
            self._app(E.CLOSE, now)
        self.orphaned = True
        self.rcvbuf.clear()
        if self.state is S.FIN_WAIT_2 and self.fin_wait_2_deadline is None:
            self.fin_wait_2_deadline = now + self.cfg.fin_timeout

    def set_ip_options(self, *, ttl: int | None = None, tos: int | None = None) -> None:
        """IP_TTL (1..255) and IP_TOS (0..255) of the segments sent from now on."""
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 255:
                raise ValueError(f"tcp: ttl must be 1..255, not {ttl!r}")
            self.ip_ttl = ttl
        if tos is not None:
            if isinstance(tos, bool) or not isinstance(tos, int) or not 0 <= tos <= 255:
                raise ValueError(f"tcp: tos must be 0..255, not {tos!r}")
            # RFC 3168 §6.1.1: ECT goes only on the packets of a connection that negotiated
            # ECN, which ours never do; the ECN bits stay TCP's (Linux masks them alike).
            self.ip_tos = tos & 0xFC

    def _arm_keepalive(self, now: float) -> None:
        if self.keepalive and self.state in KEEPALIVE_STATES:
            self.keepalive_deadline = (self.last_heard + self.keepalive_idle
                                       if not self.keepalive_probes
                                       else now + self.keepalive_interval)
            if self.keepalive_deadline < now:
                self.keepalive_deadline = now
        else:
            self.keepalive_deadline = None

    def _keepalive_timeout(self, now: float) -> None:
        self.keepalive_deadline = None
        if not self.keepalive or self.state not in KEEPALIVE_STATES:
            return
        if self.snd_una != self.snd_max or self.persist_deadline is not None:
            # data in flight or a zero window: the retransmission or persist timer watches
            self.keepalive_probes = 0
            self.keepalive_deadline = now + self.keepalive_idle
            return
        if self.keepalive_probes and self.last_heard > self._keepalive_sent:
            self.keepalive_probes = 0           # the peer answered
        idle = now - self.last_heard
        if not self.keepalive_probes and idle < self.keepalive_idle:
            self.keepalive_deadline = self.last_heard + self.keepalive_idle
            return
        if self.keepalive_probes >= self.keepalive_count:
            self.stats["keepalive_timeouts"] += 1
            self._step(E.KEEPALIVE_DEAD, now)
            return
        # RFC 1122 §4.2.3.6: a probe the peer must ACK: <SEQ=SND.UNA-1>, no data (Linux's)
        self.keepalive_probes += 1
        self._keepalive_sent = now
        self.stats["keepalive_probes"] += 1
        self._emit(sq.add(self.snd_una, -1), ACK)
        self.keepalive_deadline = now + self.keepalive_interval

    def release_acks(self, now: float) -> None:
        """The end of a receive batch: send the ACK that hold_acks kept back."""
        self.hold_acks = False
        if self._ack_pending and self.state is not S.CLOSED:
            self._output(now)

    def set_congestion(self, name: str) -> None:
        """Switch the congestion control ("cubic" or "newreno"), as TCP_CONGESTION does:
        cwnd and ssthresh stay, the algorithm's own state starts afresh."""
        self.cc = make_congestion(name)
        self.congestion = name

    def set_nodelay(self, on: bool, now: float | None = None) -> None:
        """TCP_NODELAY: with it on, small segments go out at once (no Nagle); turning it on
        sends what Nagle was holding back, as Linux does."""
        self.nodelay = bool(on)
        if on:
            self._output(self._now if now is None else now)

    # -- application calls (RFC 9293 §3.10.1 - §3.10.5) ------------------------------------
    def connect(self, now: float) -> None:
        self._app(E.CONNECT, now)

    def listen(self) -> None:
        """Wait for a SYN from this connection's remote end (the binding creates one
        Connection per SYN its listener accepts, and feeds that SYN to it)."""
        self._app(E.LISTEN, 0.0)

    def send(self, data: bytes | memoryview, now: float) -> int:
        """Queue data; returns how much fit in the send buffer."""
        if self.state not in SENDING or self.fin_queued:
            # RFC 9293 §3.10.2: "connection closing" / "connection does not exist"
            code = "not_connected" if self.state in (S.CLOSED, S.LISTEN) else "connection_closing"
            raise StackError(code, f"tcp: send in {self.state.value}")
        self._now = now
        room = self.sndbuf_limit - len(self.sndbuf)
        n = min(len(data), max(room, 0))
        if n < len(data):
            self.stats["send_buffer_full_bytes"] += len(data) - n
            self._writable_wanted = True
        self.sndbuf += data if n == len(data) else memoryview(data)[:n]   # one copy, not two
        self._output(now)
        return n

    def recv(self, max_bytes: int | None = None) -> bytes:
        """Take up to max_bytes of received data (all of it when None)."""
        n = len(self.rcvbuf) if max_bytes is None else min(max_bytes, len(self.rcvbuf))
        data = bytes(self.rcvbuf[:n])
        del self.rcvbuf[:n]
        if n and self.state in RECEIVING:
            self._tune_rcvbuf(n)
            # RFC 9293 §3.8.6.2.2 (receiver SWS avoidance): announce a window that opened by
            # at least min(half the buffer, one MSS); smaller openings wait for the next ACK.
            if sq.diff(sq.add(self.rcv_nxt, self._free_window()), self.rcv_adv) >= min(
                    self.rcvbuf_limit // 2, self.cfg.mss):
                self.stats["window_updates"] += 1
                self._emit(self.snd_max, ACK)
        return data

    def _tune_rcvbuf(self, n: int) -> None:
        """Dynamic right-sizing (Linux's tcp_rcv_space_adjust): once per RTT, let the buffer
        (and so the window) grow to twice what the application read in that RTT, so that a
        reader fast enough to drain a window per RTT is never the limit."""
        self.rcv_space_copied += n
        rtt = self.rcv_rtt or self.rto.srtt
        now = self._now
        if rtt is None or now - self.rcv_space_time < rtt:
            return
        copied = self.rcv_space_copied
        self.rcv_space_copied = 0
        self.rcv_space_time = now
        if copied <= self.rcv_space:
            return
        want = 2 * copied + 16 * self.cfg.mss
        if self.rcv_space:
            # As Linux: a sender still in slow start doubles per RTT, so the window must grow
            # by the rate it grew in the last RTT too, or it lags one step behind for good.
            want += 2 * want * (copied - self.rcv_space) // self.rcv_space
        self.rcv_space = copied
        want = min(want, self.cfg.recv_buffer_max)
        if want > self.rcvbuf_limit:
            self.stats["rcvbuf_grown"] += 1
            self.rcvbuf_limit = want

    def close(self, now: float) -> None:
        """No more data from us; a FIN follows what is queued (the receive side stays open)."""
        self._app(E.CLOSE, now)
        self._output(now)

    def abort(self, now: float) -> None:
        self._app(E.ABORT, now)
        self.rcvbuf.clear()

    def _app(self, ev: Event, now: float) -> None:
        self._now = now
        if (self.state, ev) not in TRANSITIONS:
            if self.state is S.CLOSED:
                code = "not_connected"
            elif ev in (E.CONNECT, E.LISTEN):
                code = "exists"         # RFC 9293 §3.10.1: "connection already exists"
            else:
                code = "connection_closing"
            raise StackError(code, f"tcp: {ev.value} in {self.state.value}")
        self._step(ev, now)

    # -- timers ----------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        self._now = now
        if self.delack_deadline is not None and now >= self.delack_deadline:
            self.delack_deadline = None
            self.stats["delayed_acks"] += 1
            self._ack_pending = True
            self._output(now)
        if self.time_wait_deadline is not None and now >= self.time_wait_deadline:
            self.time_wait_deadline = None
            self._step(E.TIME_WAIT_EXPIRED, now)
        if self.rtx_deadline is not None and now >= self.rtx_deadline:
            self._retransmit_timeout(now)
        if self.persist_deadline is not None and now >= self.persist_deadline:
            self._persist_timeout(now)
        if self.keepalive_deadline is not None and now >= self.keepalive_deadline:
            self._keepalive_timeout(now)
        if self.fin_wait_2_deadline is not None and now >= self.fin_wait_2_deadline:
            self.fin_wait_2_deadline = None
            if self.state is S.FIN_WAIT_2:
                self.stats["fin_wait_2_timeouts"] += 1
                self._step(E.FIN_WAIT_2_TIMEOUT, now)

    # -- segments --------------------------------------------------------------------------
    def segment_arrives(self, seg: TcpSegment, now: float) -> None:
        self.stats["segments_in"] += 1
        self._now = now
        self._last_ts = seg.timestamp
        st = self.state
        if st is S.CLOSED:
            reply = rst_for(seg)
            if reply is not None:
                self.stats["rst_sent"] += 1
                self._out.append(reply)
        elif st is S.LISTEN:
            self._listen_arrives(seg, now)
        elif st is S.SYN_SENT:
            self._syn_sent_arrives(seg, now)
        else:
            self._synchronized_arrives(seg, now)
        self._output(now)

    def _listen_arrives(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 §3.10.7.2
        if seg.rst:
            return                                  # first: an incoming RST is ignored
        if seg.ack_flag:
            self._send_rst_for_ack(seg)             # second: <SEQ=SEG.ACK><CTL=RST>
            return
        if not seg.syn:
            return                                  # fourth: anything else is dropped
        self._take_syn(seg, now)
        self.passive = True
        # Data or a FIN riding on the SYN is not queued: we do not acknowledge it, so the
        # peer sends it again once the connection is established.
        self._step(E.RCV_SYN, now)

    def _syn_sent_arrives(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 §3.10.7.3
        acks_syn = False
        if seg.ack_flag:
            # first: an ACK outside (ISS, SND.NXT] is answered by <SEQ=SEG.ACK><CTL=RST>
            if sq.le(seg.ack, self.iss) or sq.gt(seg.ack, self.snd_nxt):  # type: ignore[arg-type]
                if not seg.rst:
                    self._send_rst_for_ack(seg)
                return
            acks_syn = True
        if seg.rst:
            # second (RFC 5961 §3.2 too): a RST counts only if it acknowledges our SYN
            if acks_syn:
                self._step(E.RCV_RST, now)
            return
        if not seg.syn:
            return                                  # fifth: neither SYN nor RST: drop
        self._take_syn(seg, now)
        self.snd_wl2 = seg.ack
        if not acks_syn:
            self._step(E.RCV_SYN, now)              # simultaneous open
            return
        self._ack_advance(seg.ack, now)
        self._step(E.RCV_SYN_ACK, now)
        # "If there are other controls or text in the segment, then continue processing at
        # the sixth step": data and a FIN may ride on the SYN,ACK.
        self._receive_text(sq.add(seg.seq, 1), seg.payload, seg.fin, now)

    def _take_syn(self, seg: TcpSegment, now: float) -> None:
        self.irs = seg.seq
        self.rcv_nxt = sq.add(seg.seq, 1)
        self.rcv_adv = self.rcv_nxt
        if seg.mss:
            # RFC 9293 §3.7.1: send no segment larger than the peer's MSS option (nor ours,
            # which stands for our MTU).
            self.send_mss = min(seg.mss, self.cfg.mss)
        else:
            self.send_mss = min(self.cfg.default_send_mss, self.cfg.mss)
        # The window of a SYN is never scaled (RFC 7323 §2.2).
        self.snd_wnd = self.max_snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        # RFC 7323 §2.2: scaling is on only if both SYNs carry the option (we sent ours on
        # our SYN if configured; a SYN,ACK carries it only in answer to one).
        if self.cfg.window_scaling and seg.wscale is not None:
            self.ws_ok = True
            if seg.wscale > MAX_WSCALE:
                self.stats["wscale_clamped"] += 1   # RFC 7323 §2.3: MUST use 14 instead
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            self.rcv_wscale = self._our_wscale
        else:
            self.ws_ok = False
            self.snd_wscale = self.rcv_wscale = 0
        # RFC 2018 §2: SACK only if both SYNs carry SACK-permitted.
        self.sack_ok = self.cfg.sack and seg.sack_permitted
        # RFC 7323 §3.2: timestamps only if both SYNs carry them.
        if self.cfg.timestamps and seg.timestamp is not None:
            self.ts_ok = True
            self.ts_recent, self.ts_recent_time = seg.timestamp[0], now
            # RFC 6691 §3 (and RFC 9293 §3.7.1): the MSS counts data only, so the option
            # bytes every segment now carries come out of it, or full segments overrun the MTU.
            self.send_mss -= TS_OPTION_SPACE
        else:
            self.ts_ok = False

    def _acceptable(self, seg: TcpSegment) -> bool:
        # RFC 9293 §3.10.7.4 first: the four cases of the segment acceptability test.
        wnd = self._rcv_wnd()
        n = seg.seg_len
        if n == 0:
            return seg.seq == self.rcv_nxt if wnd == 0 else sq.in_window(seg.seq, self.rcv_nxt, wnd)
        if wnd == 0:
            return False
        return (sq.in_window(seg.seq, self.rcv_nxt, wnd)
                or sq.in_window(sq.add(seg.seq, n - 1), self.rcv_nxt, wnd))

    def _synchronized_arrives(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 §3.10.7.4, for SYN-RECEIVED and the synchronized states.
        st = self.state
        ts = seg.timestamp
        if self.ts_ok and not seg.rst:
            if ts is None:
                # RFC 7323 §3.2: once negotiated, a non-RST segment without the option
                # SHOULD be dropped silently.
                self.stats["ts_missing_dropped"] += 1
                return
            # RFC 7323 §5.3 R1 (PAWS): a TSval older than TS.Recent, while TS.Recent is
            # valid, marks an old duplicate: not acceptable; ACK it and drop it.
            if sq.lt(ts[0], self.ts_recent) and now - self.ts_recent_time <= TS_VALID:
                self.stats["paws_rejected"] += 1
                self._ack_pending = True
                return
        if not self._acceptable(seg):
            if seg.rst:
                # RFC 5961 §3.2: a RST outside the window is dropped silently.
                self.stats["rst_out_of_window"] += 1
                return
            if st is S.SYN_RECEIVED and seg.syn and not seg.ack_flag and seg.seq == self.irs:
                # The peer sent its SYN again: our SYN,ACK was lost. Answer with the SYN,ACK
                # (as Linux does) rather than a bare ACK the peer in SYN-SENT would drop.
                self._send_syn(now)
                return
            if st is S.TIME_WAIT and seg.fin and sq.add(seg.seq, seg.seg_len) == self.rcv_nxt:
                self._step(E.RCV_FIN, now)          # the peer's FIN again: our ACK was lost
                return
            # "If an incoming segment is not acceptable, an acknowledgment should be sent"
            self.stats["unacceptable"] += 1
            self._ack_pending = True
            return

        self.last_heard = now
        if ts is not None and self.ts_ok and sq.ge(ts[0], self.ts_recent) and sq.le(
                seg.seq, self.last_ack_sent):
            # RFC 7323 §4.3 (2) and §5.3 R3: remember the TSval to echo.
            self.ts_recent, self.ts_recent_time = ts[0], now
        if seg.rst:
            # second, RFC 5961 §3.2: only a RST exactly at RCV.NXT resets; one elsewhere in
            # the window gets a challenge ACK, so a blind attacker must hit RCV.NXT.
            if seg.seq != self.rcv_nxt:
                self._step(E.RCV_RST_IN_WINDOW, now)
            elif st is S.SYN_RECEIVED and self.passive:
                self._step(E.RCV_RST_PASSIVE, now)
            else:
                self._step(E.RCV_RST, now)
            return

        if seg.syn:
            # fourth, RFC 5961 §4.2: a SYN in a synchronized state gets a challenge ACK and
            # never resets; in SYN-RECEIVED after a passive open, we return to LISTEN.
            self._step(E.RCV_SYN_PASSIVE if st is S.SYN_RECEIVED and self.passive else E.RCV_SYN, now)
            return

        if not seg.ack_flag:
            return                                  # fifth: "if the ACK bit is off, drop"

        if st is S.SYN_RECEIVED:
            if not (sq.lt(self.snd_una, seg.ack) and sq.le(seg.ack, self.snd_nxt)):
                self._step(E.RCV_BAD_ACK, now, seg)
                return
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self._ack_advance(seg.ack, now, seg)
            self._step(E.RCV_ACK_OF_SYN, now)
        elif not self._process_ack(seg, now):
            return

        if self._fin_acked() and self.state in (S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
            self._step(E.RCV_ACK_OF_FIN, now)
            if self.state is S.CLOSED:
                return
        # sixth (URG) is not implemented: RFC 6093 advises against its use.
        self._receive_text(seg.seq, seg.payload, seg.fin, now)

    def _receive_text(self, seq: int, payload: bytes | memoryview, fin: bool, now: float) -> None:
        # RFC 9293 §3.10.7.4 seventh and eighth. In CLOSE-WAIT, CLOSING, LAST-ACK and
        # TIME-WAIT the peer's FIN has come: text is ignored.
        if self.state not in RECEIVING or not (payload or fin):
            return
        skip = sq.diff(self.rcv_nxt, seq)
        if skip > 0:                                # already have the start: trim it
            payload = payload[skip:]
            seq = self.rcv_nxt
        wnd = self._rcv_wnd()
        end = sq.diff(seq, self.rcv_nxt) + len(payload)
        if end > wnd:
            # Beyond the window we advertised: trimmed (and its FIN with it), counted.
            self.stats["rcv_beyond_window_bytes"] += end - wnd
            payload = payload[:max(0, len(payload) - (end - wnd))]
            fin = False
        if seq != self.rcv_nxt:
            if payload or fin:
                self._hold_out_of_order(seq, bytes(payload), fin, wnd)
                self.quickack = self.cfg.quickack   # loss: ACK at once for a while (Linux)
            else:
                self._ack_pending = True
            return
        filling = bool(self.ooo)
        if payload:
            n = len(payload)
            if n > self.rcv_mss:
                self.rcv_mss = min(n, self.cfg.mss)
            self._deliver(payload)
            if self.ts_ok:
                self._sample_rcv_rtt(now)
            # RFC 9293 §3.8.6.3 / RFC 5681 §4.2: ACK at least every second full-sized
            # segment and within 0.5 s; a segment that fills a hole is ACKed at once (the
            # sender is recovering). Otherwise the ACK waits (40 ms) for data to ride on.
            if (filling or self.quickack > 0 or not self.cfg.delayed_ack
                    or sq.diff(self.rcv_nxt, self.last_ack_sent) >= 2 * self.rcv_mss):
                if self.quickack > 0:
                    self.quickack -= 1
                self._ack_pending = True
            elif self.delack_deadline is None:
                self.delack_deadline = now + self.cfg.delayed_ack
        # What was held out of order may follow on now.
        while not fin and self.ooo:
            first = min(self.ooo, key=lambda s: sq.diff(s, self.rcv_nxt))
            if sq.gt(first, self.rcv_nxt):
                break
            data, fin = self.ooo.pop(first)
            self.ooo_bytes -= len(data)
            skip = sq.diff(self.rcv_nxt, first)
            if skip > len(data) or (skip == len(data) and not fin):
                fin = False
                continue                        # wholly old
            if data[skip:]:
                self._deliver(data[skip:])
        if fin:
            self.ooo.clear()
            self.ooo_bytes = 0
            self.rcv_nxt = sq.add(self.rcv_nxt, 1)  # eighth: advance RCV.NXT over the FIN
            self._step(E.RCV_FIN, now)

    def _sample_rcv_rtt(self, now: float) -> None:
        """The receiver's RTT (for buffer tuning), from the TSecr of in-order data: the time
        since we sent the TSval the peer echoes (Linux's tcp_rcv_rtt_measure_ts)."""
        ts = self._last_ts
        if ts is None or not ts[1]:
            return
        rtt = sq.diff(self._tsval(now), ts[1]) / 1000
        if 0 <= rtt < 120:
            r = max(rtt, 0.001)
            self.rcv_rtt = r if self.rcv_rtt is None else min(r, 0.875 * self.rcv_rtt + 0.125 * r)

    def _deliver(self, payload: bytes | memoryview) -> None:
        if self.orphaned:
            # nobody will read it: acknowledge and forget (the window stays open)
            self.rcv_nxt = sq.add(self.rcv_nxt, len(payload))
            self.stats["orphan_discarded_bytes"] += len(payload)
            return
        self.rcvbuf += payload
        self.rcv_nxt = sq.add(self.rcv_nxt, len(payload))
        self.stats["bytes_received"] += len(payload)
        if TcpEvent.READABLE not in self._events:
            self._events.append(TcpEvent.READABLE)

    def _hold_out_of_order(self, seq: int, data: bytes, fin: bool, wnd: int) -> None:
        """Keep a segment that arrived ahead of a hole, within the window. The bytes held
        never exceed the window (so the receive buffer's bound holds once they are in
        order); a segment that would pass it is dropped and counted."""
        self.stats["out_of_order"] += 1
        # RFC 5681 §4.2: an out-of-order segment SHOULD be acknowledged at once (the
        # duplicate ACK tells the sender where the hole is).
        self._ack_pending = True
        if seq in self.ooo and len(self.ooo[seq][0]) >= len(data) and self.ooo[seq][1] >= fin:
            return                              # a duplicate of what we hold
        old = self.ooo.pop(seq, (b"", False))
        self.ooo_bytes -= len(old[0])
        if self.ooo_bytes + len(data) > wnd:
            self.ooo[seq] = old
            self.ooo_bytes += len(old[0])
            self.stats["out_of_order_dropped"] += 1
            return
        self.ooo[seq] = (data, fin)
        self.ooo_bytes += len(data)
        recent = self._sack_recent
        if seq in recent:
            recent.remove(seq)
        recent.insert(0, seq)
        del recent[4:]

    # -- the table -------------------------------------------------------------------------
    def _step(self, ev: Event, now: float, seg: TcpSegment | None = None) -> None:
        rule = TRANSITIONS.get((self.state, ev))
        if rule is None:
            self.stats["ignored_" + ev.value] += 1
            return
        nxt, actions = rule
        if nxt is not self.state:
            self.stats["to_" + nxt.value.lower()] += 1
            if nxt is S.FIN_WAIT_2 and self.orphaned and self.fin_wait_2_deadline is None:
                self.fin_wait_2_deadline = now + self.cfg.fin_timeout
        self.state = nxt
        for act in actions:
            if act is A.SEND_SYN:
                self.iss = initial_sequence_number(self.isn_key, self.local_ip, self.local_port,
                                                   self.remote_ip, self.remote_port, now)
                self._send_syn(now)
            elif act is A.SEND_SYN_ACK:
                if self.iss is None:                # from LISTEN; in SYN-SENT we have one
                    self.iss = initial_sequence_number(self.isn_key, self.local_ip,
                                                       self.local_port, self.remote_ip,
                                                       self.remote_port, now)
                self._send_syn(now)
            elif act is A.SEND_ACK:
                self._ack_pending = True
            elif act is A.CHALLENGE_ACK:
                self.stats["challenge_acks"] += 1
                self._ack_pending = True
            elif act is A.SEND_RST:
                self.stats["rst_sent"] += 1
                self._emit(self.snd_nxt, RST)       # RFC 9293 §3.10.5: <SEQ=SND.NXT><CTL=RST>
            elif act is A.SEND_RST_FOR_ACK:
                assert seg is not None
                self._send_rst_for_ack(seg)
            elif act is A.QUEUE_FIN:
                self.fin_queued = True
            elif act is A.START_TIME_WAIT:
                self.rtx_deadline = None
                self.time_wait_deadline = now + 2 * self.cfg.msl
            elif act is A.NOTIFY_CONNECTED:
                self.last_heard = now
                self._arm_keepalive(now)
                self._events.append(TcpEvent.CONNECTED)
            elif act is A.NOTIFY_PEER_CLOSED:
                self._events.append(TcpEvent.PEER_CLOSED)
            elif act is A.NOTIFY_RESET:
                self.stats["reset_by_peer"] += 1
                self.rcvbuf.clear()                 # RFC 9293 §3.10.7.4: flush the queues
                self._events.append(TcpEvent.RESET)
            elif act is A.NOTIFY_TIMED_OUT:
                self._events.append(TcpEvent.TIMED_OUT)
            elif act is A.DELETE:
                rcvbuf = self.rcvbuf                # unread data stays readable after a close
                self._reset_tcb()
                self.rcvbuf = rcvbuf
                self._events.append(TcpEvent.CLOSED)

    # -- sending ---------------------------------------------------------------------------
    def _syn_acked(self) -> bool:
        return self.iss is not None and self.snd_una != self.iss

    def _fin_acked(self) -> bool:
        return (self.fin_queued and not self.sndbuf
                and self.snd_una == sq.add(self.snd_buf_seq, 1))

    def _send_syn(self, now: float) -> None:
        """(Re)send our SYN, or our SYN,ACK once we know the peer's ISN."""
        iss = self.iss
        assert iss is not None
        if not self.syn_sent:
            self.syn_sent = True
            self.snd_una = iss
            self.snd_nxt = self.snd_max = self.snd_buf_seq = sq.add(iss, 1)
            self.rtt_seq, self.rtt_time = self.snd_nxt, now
        else:
            self.rtt_seq = None                     # Karn: the SYN went out more than once
        if self.irs is None:
            # our SYN offers what is configured
            cfg = self.cfg
            self._emit(iss, SYN, syn=(cfg.mss, self._our_wscale if cfg.window_scaling else None,
                                      cfg.timestamps, cfg.sack))
        else:
            # a SYN,ACK answers only what the peer's SYN offered (RFC 7323 §2.2, §3.2)
            self._emit(iss, SYN | ACK, syn=(self.cfg.mss, self.rcv_wscale if self.ws_ok else None,
                                            self.ts_ok, self.sack_ok))
        if self.rtx_deadline is None:
            self.rtx_deadline = now + self.rto.rto

    def _send_rst_for_ack(self, seg: TcpSegment) -> None:
        self.stats["rst_sent"] += 1
        self._out.append(OutSegment(self.local_port, self.remote_port, seg.ack, 0, RST, 0))

    def _free_window(self) -> int:
        """What the receive buffer can still take (the window we would like to offer)."""
        return max(0, min(self.rcvbuf_limit - len(self.rcvbuf), MAX_WINDOW << self.rcv_wscale))

    def _rcv_wnd(self) -> int:
        """RCV.WND: what we offered (a window once offered is honoured) or more."""
        return max(self._free_window(), sq.diff(self.rcv_adv, self.rcv_nxt))

    def _tsval(self, now: float) -> int:
        # RFC 7323 §5.4: a millisecond clock, offset at random per connection (§7.1)
        return (int(now * 1000) + self.ts_offset) & sq.MASK

    def _emit(self, seq: int, flags: int, payload: bytes = b"",
              syn: tuple[int, int | None, bool, bool] | None = None) -> None:
        """One segment out. `syn`: (MSS, our window shift or None, timestamps, SACK-permitted)
        for a SYN."""
        if flags & RST:
            self._out.append(OutSegment(self.local_port, self.remote_port, seq, 0, flags, 0))
            return
        free = self._free_window()
        blocks: tuple = ()
        if syn is not None:
            mss, wscale, ts_on, sack_perm = syn
            field = min(free, MAX_WINDOW)           # RFC 7323 §2.2: a SYN's window is unscaled
            wnd = field
        else:
            mss, wscale, ts_on, sack_perm = None, None, self.ts_ok, False
            if self.ooo and self.sack_ok and flags & ACK:
                # RFC 2018 §4: what we hold out of order; 3 blocks fit beside timestamps.
                # On a data segment only as many as the MSS leaves room for (RFC 6691 §3).
                n_blocks = 3 if ts_on else 4
                if payload:
                    n_blocks = min(n_blocks, max(0, (self.send_mss - len(payload) - 4) // 8))
                blocks = receiver_blocks(self.ooo, self.rcv_nxt, self._sack_recent,
                                         n_blocks) if n_blocks else ()
            shift = self.rcv_wscale
            field = free >> shift
            wnd = field << shift
            offered = sq.diff(self.rcv_adv, self.rcv_nxt)
            if wnd < offered and flags & ACK:
                # RFC 9293 §3.8.6.2.2: the right edge does not move back; we offer the old edge
                # again, rounded *down* to the shift's granularity. Rounded up, every ACK could
                # push the edge up to 2**shift - 1 bytes further, and over thousands of ACKs the
                # peer may send far past the buffer (RFC 7323 Appendix F; Linux lets the window
                # shrink by the rounding since b650d953, for the same reason).
                field = min(offered >> shift, MAX_WINDOW)
                wnd = field << shift
        if flags & ACK:
            self.rcv_adv = sq.add(self.rcv_nxt, wnd)
            self.last_ack_sent = self.rcv_nxt
            self._ack_pending = False
            self.delack_deadline = None
        self.stats["segments_out"] += 1
        if ts_on:
            # RFC 7323 §3.2: with timestamps on, every non-RST segment carries them; TSecr is
            # TS.Recent when ACK is set (0 on our first SYN).
            ts = (self._tsval(self._now), self.ts_recent if flags & ACK else 0)
        else:
            ts = None
        self._out.append(make_out_segment(self.local_port, self.remote_port, seq,
                                          self.rcv_nxt if flags & ACK else 0, flags, field,
                                          payload, mss, wscale, sack_perm, ts, blocks))

    # -- hand-over -------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The whole TCB as plain msgpack types (see snapshot.py)."""
        return _snapshot.take(self)

    @classmethod
    def from_snapshot(cls, d: dict, clock_shift: float = 0.0, *, now_offset: float | None = None,
                      isn_key: bytes | None = None, config: TcpConfig | None = None) -> "Connection":
        """Rebuild the connection `snapshot()` described. Its deadlines were absolute in the
        old process's clock: `clock_shift` (new_now - old_now; `now_offset` is another name
        for it) is added to each. A malformed snapshot raises ValueError."""
        if now_offset is not None:
            clock_shift = now_offset
        return _snapshot.restore(cls, d, clock_shift, isn_key=isn_key, config=config)

    @classmethod
    def from_cookie(cls, local_ip: IPv4Address | IPv6Address, local_port: int,
                    remote_ip: IPv4Address | IPv6Address, remote_port: int, seg: TcpSegment,
                    mss: int, now: float, *, isn_key: bytes, config: TcpConfig = TcpConfig(),
                    congestion: str | None = None) -> "Connection":
        """The ESTABLISHED connection a valid cookie-bearing ACK stands for (`mss` is what
        syncookie.check returned). Window scaling and SACK come back only from the options
        encoded in the echoed timestamp (syncookie.syn_ack); without timestamps they are
        off. The ACK's data, if any, is taken in."""
        c = cls(local_ip, local_port, remote_ip, remote_port, isn_key=isn_key, config=config,
                congestion=congestion)
        c._now = now
        c.passive = True
        c.syn_sent = True
        c.iss = sq.add(seg.ack, -1)
        c.irs = sq.add(seg.seq, -1)
        c.snd_una = c.snd_nxt = c.snd_max = c.snd_buf_seq = seg.ack
        c.rcv_nxt = seg.seq
        c.rcv_adv = sq.add(seg.seq, min(config.recv_buffer, MAX_WINDOW))  # the SYN,ACK's offer
        c.last_ack_sent = seg.seq
        c.send_mss = min(mss, config.mss)
        if seg.timestamp is not None and config.timestamps:
            from .syncookie import decode_options
            wscale, sack = decode_options(seg.timestamp[1])
            c.ts_ok = True
            c.ts_recent, c.ts_recent_time = seg.timestamp[0], now
            c.send_mss -= TS_OPTION_SPACE       # RFC 6691 §3, as in _take_syn
            if wscale is not None and config.window_scaling:
                c.ws_ok = True
                c.snd_wscale, c.rcv_wscale = min(wscale, MAX_WSCALE), c._our_wscale
            c.sack_ok = sack and config.sack
            rtt_ms = sq.diff(c._tsval(now), seg.timestamp[1])
            if 0 <= rtt_ms < 120_000:
                c.rto.sample(rtt_ms / 1000)     # RFC 7323 §4.1, from the SYN,ACK's TSval
        c.snd_wnd = c.max_snd_wnd = seg.window << c.snd_wscale
        c.snd_wl1, c.snd_wl2 = seg.seq, seg.ack
        c.cwnd = min(4 * c.send_mss, max(2 * c.send_mss, 4380))   # RFC 5681 §3.1 eq. 1
        c.recover = c.iss
        c.state = S.ESTABLISHED
        c.stats["to_established"] += 1
        c.stats["from_syn_cookie"] += 1
        c.last_heard = now
        c._events.append(TcpEvent.CONNECTED)
        c._arm_keepalive(now)
        c._receive_text(seg.seq, seg.payload, seg.fin, now)
        c._output(now)
        return c

    def _snapshot_extra(self) -> dict:
        return {"congestion": {"name": self.congestion, "state": self.cc.snapshot()},
                "sack_scoreboard": [list(b) for b in self.sb.blocks],
                "sack_recent": list(self._sack_recent),
                "ip": [self.ip_ttl, self.ip_tos]}

    def _restore_extra(self, d: dict, shift: float, check) -> None:
        cc = d["congestion"]
        if not isinstance(cc, dict) or not isinstance(cc.get("name"), str):
            raise ValueError("tcp snapshot: congestion")
        self.congestion = cc["name"]
        self.cc = make_congestion(self.congestion)
        if not isinstance(cc.get("state"), dict):
            raise ValueError("tcp snapshot: congestion state")
        self.cc.restore(cc["state"], shift)
        blocks = d["sack_scoreboard"]
        if not isinstance(blocks, list) or len(blocks) > Scoreboard.MAX_BLOCKS:
            raise ValueError("tcp snapshot: sack_scoreboard")
        self.sb.clear()
        prev = self.snd_una
        for b in blocks:
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ValueError("tcp snapshot: SACK block")
            lo, hi = (check("seq", x, "sack block", 0) for x in b)
            if not (sq.le(prev, lo) and sq.lt(lo, hi) and sq.le(hi, self.snd_max)):
                raise ValueError("tcp snapshot: SACK blocks out of order or outside the flight")
            self.sb.blocks.append([lo, hi])
            self.sb.sacked += sq.diff(hi, lo)
            prev = hi
        recent = d["sack_recent"]
        if not isinstance(recent, list) or len(recent) > 4:
            raise ValueError("tcp snapshot: sack_recent")
        self._sack_recent = [check("seq", x, "sack_recent", 0) for x in recent]
        ip = d.get("ip", [None, 0])        # absent in a predecessor without IP options
        if not isinstance(ip, (list, tuple)) or len(ip) != 2:
            raise ValueError("tcp snapshot: ip")
        self.set_ip_options(ttl=ip[0], tos=ip[1])
        # TSval = ms clock + offset must not jump with the new process's clock (RFC 7323 §5.4)
        self.ts_offset = (self.ts_offset - round(shift * 1000)) & sq.MASK

    def _check_invariants(self) -> None:
        """What a restored TCB must satisfy for the code above to hold its bounds."""
        una, nxt, mx = self.snd_una, self.snd_nxt, self.snd_max
        if not (sq.le(una, nxt) and sq.le(nxt, mx)):
            raise ValueError("tcp snapshot: SND.UNA <= SND.NXT <= snd_max does not hold")
        if self.state not in (S.CLOSED, S.LISTEN, S.SYN_SENT) and (self.iss is None or self.irs is None):
            raise ValueError(f"tcp snapshot: {self.state.value} without ISS/IRS")
        if self.state is S.SYN_SENT and self.iss is None:
            raise ValueError("tcp snapshot: SYN-SENT without ISS")
        if not -1 <= sq.diff(self.snd_buf_seq, una) <= 1:
            raise ValueError("tcp snapshot: send buffer does not start at SND.UNA")
        if sq.diff(mx, self.snd_buf_seq) > len(self.sndbuf) + 1:
            raise ValueError("tcp snapshot: more in flight than the send buffer holds")
        cfg = self.cfg
        rmax = max(cfg.recv_buffer, cfg.recv_buffer_max)
        smax = max(cfg.send_buffer, cfg.send_buffer_max)
        if not (cfg.recv_buffer <= self.rcvbuf_limit <= rmax
                and cfg.send_buffer <= self.sndbuf_limit <= smax):
            raise ValueError("tcp snapshot: buffer limits out of range")
        slack = 2 << self.rcv_wscale         # rounding of a scaled window (see _emit)
        # A window once offered is honoured (RFC 9293 §3.8.6.2.2), so the receive buffer may
        # run past its current limit by what was offered; the hard bound is recv_buffer_max.
        if len(self.sndbuf) > self.sndbuf_limit or len(self.rcvbuf) > rmax + slack:
            raise ValueError(f"tcp snapshot: a buffer exceeds its bound (send {len(self.sndbuf)} of "
                             f"{self.sndbuf_limit}, receive {len(self.rcvbuf)} of {rmax} + {slack})")
        if self.snd_wscale > MAX_WSCALE or self.rcv_wscale > MAX_WSCALE:
            raise ValueError("tcp snapshot: window shift above 14")
        for s, (data, _) in self.ooo.items():
            if not sq.in_window(s, self.rcv_nxt, self.rcvbuf_limit + slack + 1):
                raise ValueError("tcp snapshot: out-of-order segment outside the window")
        if self.send_mss <= 0 or self.ooo_bytes > self.rcvbuf_limit + slack:
            raise ValueError("tcp snapshot: MSS or out-of-order bytes out of range")

    # -- observation -----------------------------------------------------------------------
    def info(self) -> dict:
        """Per-connection figures in the spirit of Linux's TCP_INFO (for `qnet ss`): the
        counters of `stats`, then these (which win on a name clash). Plain types only."""
        st = self.stats
        lost = 0
        if self.recovery:
            lost = sum(sq.diff(e, s) for s, e in self._lost_ranges())
        options = [name for name, on in (("wscale", self.ws_ok), ("timestamps", self.ts_ok),
                                         ("sack", self.sack_ok), ("nodelay", self.nodelay),
                                         ("keepalive", self.keepalive)) if on]
        return {
            **st,
            "state": self.state.value,
            "local": f"{self.local_ip}:{self.local_port}",
            "remote": f"{self.remote_ip}:{self.remote_port}",
            "send_queue": len(self.sndbuf),          # unacknowledged + unsent (SIOCOUTQ)
            "unsent": len(self.sndbuf) - max(0, sq.diff(self.snd_max, self.snd_buf_seq)),
            "recv_queue": len(self.rcvbuf),          # SIOCINQ
            "send_buffer": self.sndbuf_limit,
            "recv_buffer": self.rcvbuf_limit,
            "snd_mss": self.send_mss,
            "rcv_mss": self.rcv_mss,
            "rtt": self.rto.srtt,
            "rttvar": self.rto.rttvar,
            "rto": self.rto.rto,
            "rcv_rtt": self.rcv_rtt,
            "cwnd": self.cwnd,
            "ssthresh": self.ssthresh,
            "congestion": self.congestion,
            "ca_state": ("open", "recovery", "loss")[self.recovery],
            "flight": self.flight_size() if self._syn_acked() else 0,
            "pipe": self._pipe() if self._syn_acked() else 0,
            "sacked": self._sacked_bytes(),
            "lost": lost,
            "retransmits": self.retries,             # of the current segment (tcpi_retransmits)
            "total_retrans": st["segments_retransmitted"],
            "backoff": self.rto_backoff,
            "probes": self.probes_out + self.keepalive_probes,
            "delivery_rate": self.delivery_rate,     # bytes/s acknowledged over the last RTT
            "bytes_acked": st["bytes_acked"],
            "bytes_received": st["bytes_received"],
            "bytes_retrans": st["bytes_retransmitted"],
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": self._rcv_wnd(),
            "snd_wscale": self.snd_wscale,
            "rcv_wscale": self.rcv_wscale,
            "options": options,
            "ooo_bytes": self.ooo_bytes,
        }
