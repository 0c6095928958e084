"""Every (state, event) of state.TRANSITIONS, driven through a real Connection: the event is
classified as the table expects, the state moves as the table says, and each action has
its visible effect."""

from __future__ import annotations

import pytest

from components.netstack.core.tcp import (TRANSITIONS, Act, Connection, Event, State, TcpConfig,
                                          TcpEvent)
from components.netstack.core.tcp import seq as sq
from components.netstack.wire.tcp import ACK, FIN, RST, SYN

from .net import A_IP, A_PORT, B_IP, B_PORT, KEY_A, Peer

S, E, A = State, Event, Act
NOW = 1.0


def new() -> tuple[Connection, Peer]:
    c = Connection(A_IP, A_PORT, B_IP, B_PORT, isn_key=KEY_A, config=TcpConfig())
    return c, Peer(c, now=NOW)


def reach(state: State, passive: bool = True) -> tuple[Connection, Peer]:
    """A connection in `state`, its outputs taken."""
    c, p = new()
    if state is S.LISTEN:
        c.listen()
    elif state is S.SYN_SENT:
        c.connect(NOW)
    elif state is S.SYN_RECEIVED:
        if passive:
            c.listen()
        else:
            c.connect(NOW)
        p.send(SYN, ack=0, mss=1000)
        p.seq += 1
    elif state is not S.CLOSED:
        c.connect(NOW)
        p.send(SYN | ACK, mss=1000)
        p.seq += 1
        if state in (S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.TIME_WAIT):
            c.close(NOW)
            if state is S.CLOSING:
                p.send(FIN | ACK, ack=c.snd_una)        # crosses our FIN: does not ack it
                p.seq += 1
            elif state in (S.FIN_WAIT_2, S.TIME_WAIT):
                p.send(ACK)
                if state is S.TIME_WAIT:
                    p.send(FIN | ACK)
                    p.seq += 1
        elif state in (S.CLOSE_WAIT, S.LAST_ACK):
            p.send(FIN | ACK)
            p.seq += 1
            if state is S.LAST_ACK:
                c.close(NOW)
    assert c.state is state
    c.take_segments()
    c.take_events()
    return c, p


def trigger(state: State, ev: Event, c: Connection, p: Peer) -> list[TcpEvent]:
    """Make `ev` happen to c in `state`; returns the application events it produced."""
    if ev is E.CONNECT:
        c.connect(NOW)
    elif ev is E.LISTEN:
        c.listen()
    elif ev is E.CLOSE:
        c.close(NOW)
    elif ev is E.ABORT:
        c.abort(NOW)
    elif ev is E.RCV_SYN and state in (S.LISTEN, S.SYN_SENT):
        p.send(SYN, ack=0, mss=1000)
    elif ev in (E.RCV_SYN, E.RCV_SYN_PASSIVE):
        p.send(SYN, seq=c.rcv_nxt, ack=0)                # in the window
    elif ev is E.RCV_SYN_ACK:
        p.send(SYN | ACK, mss=1000)
    elif ev is E.RCV_ACK_OF_SYN or ev is E.RCV_ACK_OF_FIN:
        p.send(ACK)
    elif ev is E.RCV_BAD_ACK:
        p.send(ACK, ack=sq.add(c.snd_nxt, 1000))
    elif ev is E.RCV_FIN:
        p.send(FIN | ACK, seq=sq.add(p.seq, -1) if state is S.TIME_WAIT else None,
               ack=c.snd_una if state is S.FIN_WAIT_1 else None)   # crossing FINs
    elif ev is E.RCV_RST and state is S.SYN_SENT:
        p.send(RST | ACK, seq=0)
    elif ev in (E.RCV_RST, E.RCV_RST_PASSIVE):
        p.send(RST, seq=c.rcv_nxt)
    elif ev is E.RCV_RST_IN_WINDOW:
        p.send(RST, seq=sq.add(c.rcv_nxt, 100))
    elif ev is E.GIVE_UP:
        if state in (S.ESTABLISHED, S.CLOSE_WAIT):
            c.send(b"unacknowledged", NOW)
        events = []
        for _ in range(100):
            d = c.next_deadline()
            if d is None:
                break
            c.poll(d)
            events += c.take_events()
        return events
    elif ev is E.TIME_WAIT_EXPIRED:
        c.poll(c.time_wait_deadline)
    elif ev is E.KEEPALIVE_DEAD:
        c.set_keepalive(True, NOW, idle=10, interval=1, count=2)
        events = []
        while c.state is state:
            c.take_segments()                   # the probes, unanswered
            c.poll(c.next_deadline())
            events += c.take_events()
        return events
    elif ev is E.FIN_WAIT_2_TIMEOUT:
        c.release(NOW)
        c.poll(c.fin_wait_2_deadline)
    else:
        raise AssertionError(f"no trigger for {ev}")
    return c.take_events()


def _passive_for(state: State, ev: Event) -> bool:
    return not (state is S.SYN_RECEIVED and ev in (E.RCV_RST, E.RCV_SYN))


@pytest.mark.parametrize("state,ev", list(TRANSITIONS), ids=lambda x: x.name)
def test_every_transition_of_the_table(state, ev, monkeypatch):
    nxt, actions = TRANSITIONS[(state, ev)]
    c, p = reach(state, passive=_passive_for(state, ev))
    steps = []
    real_step = Connection._step

    def spy(self, e, now, seg=None):
        steps.append((self.state, e))
        return real_step(self, e, now, seg)
    monkeypatch.setattr(Connection, "_step", spy)

    snd_nxt_before = c.snd_nxt
    challenges = c.stats["challenge_acks"]
    bad_ack = sq.add(c.snd_nxt, 1000)
    p.got.clear()
    events = trigger(state, ev, c, p)
    out = p.got + c.take_segments()

    assert (state, ev) in steps, f"classified as {steps}"
    assert c.state is nxt
    flags = [s.flags for s in out]
    if A.SEND_SYN in actions:
        assert out[0].flags == SYN and out[0].mss == 1460
    if A.SEND_SYN_ACK in actions:
        assert out[0].flags == SYN | ACK and out[0].ack == sq.add(p.iss, 1)
    if A.SEND_ACK in actions:
        assert any(f & ACK and not f & (RST | SYN) for f in flags)
    if A.CHALLENGE_ACK in actions:
        assert c.stats["challenge_acks"] == challenges + 1
        assert [s.flags for s in out] == [ACK] and out[0].ack == c.rcv_nxt
    if A.SEND_RST in actions:
        assert [(s.flags, s.seq) for s in out] == [(RST, snd_nxt_before)]
    if A.SEND_RST_FOR_ACK in actions:
        assert [(s.flags, s.seq) for s in out] == [(RST, bad_ack)]
    if not ({A.SEND_RST, A.SEND_RST_FOR_ACK} & set(actions)):
        assert not any(f & RST for f in flags)
    if A.QUEUE_FIN in actions:
        assert c.fin_queued
    if A.START_TIME_WAIT in actions:
        assert c.time_wait_deadline == pytest.approx(NOW + 60.0)
        assert c.rtx_deadline is None
    for act, tev in ((A.NOTIFY_CONNECTED, TcpEvent.CONNECTED), (A.NOTIFY_PEER_CLOSED, TcpEvent.PEER_CLOSED),
                     (A.NOTIFY_RESET, TcpEvent.RESET), (A.NOTIFY_TIMED_OUT, TcpEvent.TIMED_OUT),
                     (A.DELETE, TcpEvent.CLOSED)):
        assert (tev in events) == (act in actions), (act, events)


def test_every_state_has_a_way_out_and_every_state_is_reached():
    sources = {s for s, _ in TRANSITIONS}
    targets = {nxt for nxt, _ in TRANSITIONS.values()}
    assert sources == set(State)
    assert targets == set(State)


@pytest.mark.parametrize("state,ev,code", [
    (S.CLOSED, E.CLOSE, "not_connected"),
    (S.ESTABLISHED, E.CONNECT, "exists"),
    (S.FIN_WAIT_1, E.CLOSE, "connection_closing"),
    (S.TIME_WAIT, E.CLOSE, "connection_closing"),
])
def test_application_calls_outside_the_table_are_refused(state, ev, code):
    from components.netstack.core.errors import StackError
    c, p = reach(state)
    with pytest.raises(StackError) as err:
        trigger(state, ev, c, p)
    assert err.value.code == code and c.state is state


@pytest.mark.parametrize("state", [S.CLOSED, S.LISTEN, S.FIN_WAIT_1, S.LAST_ACK, S.TIME_WAIT])
def test_send_is_refused_once_closing_or_before_opening(state):
    from components.netstack.core.errors import StackError
    c, _ = reach(state)
    with pytest.raises(StackError):
        c.send(b"x", NOW)
