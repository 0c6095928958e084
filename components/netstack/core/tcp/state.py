"""The TCP connection state machine of RFC 9293 §3.3.2 and §3.10, as one table.

Everything that decides a connection's state lives here: TRANSITIONS is the whole machine,
read top to bottom, (state, event) -> (next state, actions). conn.py classifies what happened
(an application call, a segment that passed the checks of RFC 9293 §3.10.7, a timer) into one
Event, looks it up here and performs the actions; it keeps the sequence-number bookkeeping
the RFC spells out beside each step, and never changes the state on its own.

An application call (CONNECT, LISTEN, CLOSE, ABORT) missing from the table is refused with
an error ("connection closing", "connection does not exist"). A segment event missing from
the table is dropped: that is what the RFC asks for every combination left out.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class Event(enum.Enum):
    # application calls (RFC 9293 §3.10.1 - §3.10.5)
    CONNECT = "connect"                  # active OPEN
    LISTEN = "listen"                    # passive OPEN
    CLOSE = "close"                      # no more data from us: queue a FIN behind the data
    ABORT = "abort"
    # segments, after the checks of RFC 9293 §3.10.7
    RCV_SYN = "rcv_syn"                  # a SYN without ACK (LISTEN, SYN-SENT); in a
                                         # synchronized state any in-window SYN (RFC 5961 §4)
    RCV_SYN_PASSIVE = "rcv_syn_passive"  # the same in SYN-RECEIVED reached from LISTEN
    RCV_SYN_ACK = "rcv_syn_ack"          # SYN-SENT: a SYN whose ACK covers our SYN
    RCV_ACK_OF_SYN = "rcv_ack_of_syn"    # SYN-RECEIVED: SND.UNA < SEG.ACK =< SND.NXT
    RCV_BAD_ACK = "rcv_bad_ack"          # SYN-RECEIVED: any other ACK
    RCV_ACK_OF_FIN = "rcv_ack_of_fin"    # an ACK that covers our FIN
    RCV_FIN = "rcv_fin"                  # the peer's FIN, in order (or its retransmission
                                         # in TIME-WAIT)
    RCV_RST = "rcv_rst"                  # a RST that may reset us (exactly at RCV.NXT; in
                                         # SYN-SENT: acknowledging our SYN)
    RCV_RST_PASSIVE = "rcv_rst_passive"  # the same in SYN-RECEIVED reached from LISTEN
    RCV_RST_IN_WINDOW = "rcv_rst_in_window"  # in the window, not at RCV.NXT (RFC 5961 §3)
    # timers
    GIVE_UP = "give_up"                  # retransmissions exhausted (RFC 9293 §3.8.3 R2)
    TIME_WAIT_EXPIRED = "time_wait_expired"  # 2*MSL passed in TIME-WAIT
    KEEPALIVE_DEAD = "keepalive_dead"    # keepalive probes went unanswered (RFC 1122 §4.2.3.6)
    FIN_WAIT_2_TIMEOUT = "fin_wait_2_timeout"  # an orphaned FIN-WAIT-2 waited long enough


class Act(enum.Enum):
    SEND_SYN = "send_syn"            # choose the ISN (RFC 6528), send <SYN> with our MSS
    SEND_SYN_ACK = "send_syn_ack"    # <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK> with our MSS
    SEND_ACK = "send_ack"            # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> (or data carrying it)
    CHALLENGE_ACK = "challenge_ack"  # the same ACK, counted apart (RFC 5961 §3.2, §4.2)
    SEND_RST = "send_rst"            # abort: <SEQ=SND.NXT><CTL=RST> (RFC 9293 §3.10.5)
    SEND_RST_FOR_ACK = "send_rst_for_ack"  # <SEQ=SEG.ACK><CTL=RST> (RFC 9293 §3.10.7.4 fifth)
    QUEUE_FIN = "queue_fin"          # a FIN goes out after the queued data
    START_TIME_WAIT = "time_wait"    # (re)start the 2*MSL timer, stop the others
    NOTIFY_CONNECTED = "connected"
    NOTIFY_PEER_CLOSED = "peer_closed"   # the peer's FIN: no more data will arrive
    NOTIFY_RESET = "reset"           # "connection reset" / "connection refused"
    NOTIFY_TIMED_OUT = "timed_out"
    DELETE = "delete"                # drop buffers and timers; the TCB is finished


S, E, A = State, Event, Act

# The states where a RST, a SYN, CLOSE, ABORT and a retransmission timeout behave the same
# way are spelled out one line each, so every (state, event) pair can be read and tested.
TRANSITIONS: dict[tuple[State, Event], tuple[State, tuple[Act, ...]]] = {
    # -- CLOSED and LISTEN (RFC 9293 §3.10.1, §3.10.7.1, §3.10.7.2) -----------------------
    (S.CLOSED, E.CONNECT):              (S.SYN_SENT, (A.SEND_SYN,)),
    (S.CLOSED, E.LISTEN):               (S.LISTEN, ()),
    (S.LISTEN, E.RCV_SYN):              (S.SYN_RECEIVED, (A.SEND_SYN_ACK,)),
    (S.LISTEN, E.CLOSE):                (S.CLOSED, (A.DELETE,)),
    (S.LISTEN, E.ABORT):                (S.CLOSED, (A.DELETE,)),

    # -- SYN-SENT (RFC 9293 §3.10.7.3) ----------------------------------------------------
    (S.SYN_SENT, E.RCV_SYN_ACK):        (S.ESTABLISHED, (A.SEND_ACK, A.NOTIFY_CONNECTED)),
    (S.SYN_SENT, E.RCV_SYN):            (S.SYN_RECEIVED, (A.SEND_SYN_ACK,)),  # simultaneous open
    (S.SYN_SENT, E.RCV_RST):            (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),  # refused
    (S.SYN_SENT, E.CLOSE):              (S.CLOSED, (A.DELETE,)),
    (S.SYN_SENT, E.ABORT):              (S.CLOSED, (A.DELETE,)),
    (S.SYN_SENT, E.GIVE_UP):            (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),

    # -- SYN-RECEIVED ---------------------------------------------------------------------
    # A FIN here is never seen: the ACK step before it has moved us to ESTABLISHED, or
    # dropped the segment.
    (S.SYN_RECEIVED, E.RCV_ACK_OF_SYN): (S.ESTABLISHED, (A.NOTIFY_CONNECTED,)),
    (S.SYN_RECEIVED, E.RCV_BAD_ACK):    (S.SYN_RECEIVED, (A.SEND_RST_FOR_ACK,)),
    (S.SYN_RECEIVED, E.RCV_RST):        (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),  # active: refused
    (S.SYN_RECEIVED, E.RCV_RST_PASSIVE): (S.LISTEN, (A.DELETE,)),     # user never knew of it
    (S.SYN_RECEIVED, E.RCV_RST_IN_WINDOW): (S.SYN_RECEIVED, (A.CHALLENGE_ACK,)),
    (S.SYN_RECEIVED, E.RCV_SYN):        (S.SYN_RECEIVED, (A.CHALLENGE_ACK,)),
    (S.SYN_RECEIVED, E.RCV_SYN_PASSIVE): (S.LISTEN, (A.DELETE,)),
    (S.SYN_RECEIVED, E.CLOSE):          (S.FIN_WAIT_1, (A.QUEUE_FIN,)),
    (S.SYN_RECEIVED, E.ABORT):          (S.CLOSED, (A.SEND_RST, A.DELETE)),
    (S.SYN_RECEIVED, E.GIVE_UP):        (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),

    # -- ESTABLISHED ----------------------------------------------------------------------
    (S.ESTABLISHED, E.RCV_FIN):         (S.CLOSE_WAIT, (A.SEND_ACK, A.NOTIFY_PEER_CLOSED)),
    (S.ESTABLISHED, E.CLOSE):           (S.FIN_WAIT_1, (A.QUEUE_FIN,)),
    (S.ESTABLISHED, E.RCV_RST):         (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),
    (S.ESTABLISHED, E.RCV_RST_IN_WINDOW): (S.ESTABLISHED, (A.CHALLENGE_ACK,)),
    (S.ESTABLISHED, E.RCV_SYN):         (S.ESTABLISHED, (A.CHALLENGE_ACK,)),
    (S.ESTABLISHED, E.ABORT):           (S.CLOSED, (A.SEND_RST, A.DELETE)),
    (S.ESTABLISHED, E.GIVE_UP):         (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),
    # A dead peer found by keepalive: like Linux, a RST in case it is only silent.
    (S.ESTABLISHED, E.KEEPALIVE_DEAD):  (S.CLOSED, (A.SEND_RST, A.NOTIFY_TIMED_OUT, A.DELETE)),

    # -- we closed first: FIN-WAIT-1, FIN-WAIT-2, then TIME-WAIT --------------------------
    (S.FIN_WAIT_1, E.RCV_ACK_OF_FIN):   (S.FIN_WAIT_2, ()),
    (S.FIN_WAIT_1, E.RCV_FIN):          (S.CLOSING, (A.SEND_ACK, A.NOTIFY_PEER_CLOSED)),  # simultaneous close
    (S.FIN_WAIT_1, E.RCV_RST):          (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),
    (S.FIN_WAIT_1, E.RCV_RST_IN_WINDOW): (S.FIN_WAIT_1, (A.CHALLENGE_ACK,)),
    (S.FIN_WAIT_1, E.RCV_SYN):          (S.FIN_WAIT_1, (A.CHALLENGE_ACK,)),
    (S.FIN_WAIT_1, E.ABORT):            (S.CLOSED, (A.SEND_RST, A.DELETE)),
    (S.FIN_WAIT_1, E.GIVE_UP):          (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),

    # Half-close: FIN-WAIT-2 still receives data until the peer's FIN.
    (S.FIN_WAIT_2, E.RCV_FIN):          (S.TIME_WAIT, (A.SEND_ACK, A.NOTIFY_PEER_CLOSED, A.START_TIME_WAIT)),
    (S.FIN_WAIT_2, E.RCV_RST):          (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),
    (S.FIN_WAIT_2, E.RCV_RST_IN_WINDOW): (S.FIN_WAIT_2, (A.CHALLENGE_ACK,)),
    (S.FIN_WAIT_2, E.RCV_SYN):          (S.FIN_WAIT_2, (A.CHALLENGE_ACK,)),
    (S.FIN_WAIT_2, E.ABORT):            (S.CLOSED, (A.SEND_RST, A.DELETE)),
    (S.FIN_WAIT_2, E.KEEPALIVE_DEAD):   (S.CLOSED, (A.SEND_RST, A.NOTIFY_TIMED_OUT, A.DELETE)),
    # The application has let go and the peer never sends its FIN: Linux's tcp_fin_timeout
    # (RFC 9293 leaves FIN-WAIT-2 unbounded; an orphan would otherwise live forever).
    (S.FIN_WAIT_2, E.FIN_WAIT_2_TIMEOUT): (S.CLOSED, (A.SEND_RST, A.DELETE)),

    (S.CLOSING, E.RCV_ACK_OF_FIN):      (S.TIME_WAIT, (A.START_TIME_WAIT,)),
    (S.CLOSING, E.RCV_RST):             (S.CLOSED, (A.DELETE,)),
    (S.CLOSING, E.RCV_RST_IN_WINDOW):   (S.CLOSING, (A.CHALLENGE_ACK,)),
    (S.CLOSING, E.RCV_SYN):             (S.CLOSING, (A.CHALLENGE_ACK,)),
    (S.CLOSING, E.ABORT):               (S.CLOSED, (A.DELETE,)),
    (S.CLOSING, E.GIVE_UP):             (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),

    # RFC 9293 §3.10.7.4: in TIME-WAIT the only thing that can arrive is a retransmission
    # of the remote FIN: acknowledge it and restart the 2*MSL timeout. A RST ends it (the
    # RFC's rule; RFC 1337's protection is left to a later piece, as Linux leaves it off).
    (S.TIME_WAIT, E.RCV_FIN):           (S.TIME_WAIT, (A.SEND_ACK, A.START_TIME_WAIT)),
    (S.TIME_WAIT, E.TIME_WAIT_EXPIRED): (S.CLOSED, (A.DELETE,)),
    (S.TIME_WAIT, E.RCV_RST):           (S.CLOSED, (A.DELETE,)),
    (S.TIME_WAIT, E.RCV_RST_IN_WINDOW): (S.TIME_WAIT, (A.CHALLENGE_ACK,)),
    (S.TIME_WAIT, E.RCV_SYN):           (S.TIME_WAIT, (A.CHALLENGE_ACK,)),
    (S.TIME_WAIT, E.ABORT):             (S.CLOSED, (A.DELETE,)),

    # -- the peer closed first: CLOSE-WAIT, then LAST-ACK ---------------------------------
    # Half-close: CLOSE-WAIT still sends until the application closes.
    (S.CLOSE_WAIT, E.CLOSE):            (S.LAST_ACK, (A.QUEUE_FIN,)),
    (S.CLOSE_WAIT, E.RCV_RST):          (S.CLOSED, (A.NOTIFY_RESET, A.DELETE)),
    (S.CLOSE_WAIT, E.RCV_RST_IN_WINDOW): (S.CLOSE_WAIT, (A.CHALLENGE_ACK,)),
    (S.CLOSE_WAIT, E.RCV_SYN):          (S.CLOSE_WAIT, (A.CHALLENGE_ACK,)),
    (S.CLOSE_WAIT, E.ABORT):            (S.CLOSED, (A.SEND_RST, A.DELETE)),
    (S.CLOSE_WAIT, E.GIVE_UP):          (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),
    (S.CLOSE_WAIT, E.KEEPALIVE_DEAD):   (S.CLOSED, (A.SEND_RST, A.NOTIFY_TIMED_OUT, A.DELETE)),

    (S.LAST_ACK, E.RCV_ACK_OF_FIN):     (S.CLOSED, (A.DELETE,)),
    (S.LAST_ACK, E.RCV_RST):            (S.CLOSED, (A.DELETE,)),
    (S.LAST_ACK, E.RCV_RST_IN_WINDOW):  (S.LAST_ACK, (A.CHALLENGE_ACK,)),
    (S.LAST_ACK, E.RCV_SYN):            (S.LAST_ACK, (A.CHALLENGE_ACK,)),
    (S.LAST_ACK, E.ABORT):              (S.CLOSED, (A.DELETE,)),
    (S.LAST_ACK, E.GIVE_UP):            (S.CLOSED, (A.NOTIFY_TIMED_OUT, A.DELETE)),
}

APP_EVENTS = frozenset((E.CONNECT, E.LISTEN, E.CLOSE, E.ABORT))

# RFC 9293 §3.3.2: the synchronized states, where a SYN or an out-of-window segment is
# answered with an ACK and never changes the state.
SYNCHRONIZED = frozenset((S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
                          S.LAST_ACK, S.TIME_WAIT))
# States in which the peer's data is still taken in (RFC 9293 §3.10.7.4 seventh).
RECEIVING = frozenset((S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2))
# States in which keepalive probes an idle peer (RFC 1122 §4.2.3.6); elsewhere either
# something is in flight (a FIN) and the retransmission timer watches, or nothing is left.
KEEPALIVE = frozenset((S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_2))
# States in which the application may still queue data (RFC 9293 §3.10.2).
SENDING = frozenset((S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT))


def transition(state: State, event: Event) -> tuple[State, tuple[Act, ...]] | None:
    return TRANSITIONS.get((state, event))
