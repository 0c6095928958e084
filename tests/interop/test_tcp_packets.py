"""Packet-level TCP tests against a running netstack, in the style of packetdrill and gVisor's
packetimpact: a scapy-built peer (tests/interop/tcp_peer.py) in the TAP port's namespace sends
exactly the segments a test names and checks each segment qnet answers with; the qnet end is an
ordinary TcpClient connection or listener. The namespace kernel's own RSTs are dropped by an
nftables rule for the module's life (it knows none of these connections).

"Nothing came back" is never a sleep: a sentinel segment that does get an answer follows, and
the first segment qnet sends must be that answer (the TAP keeps order both ways).

One graph per module (socketpair data transport); every qnet port and peer port is this test's
own, so a TIME-WAIT left by one test never meets another.
"""
from __future__ import annotations

import concurrent.futures
import errno
import itertools
import random
import socket
import time
from dataclasses import dataclass

import pytest

from components.netstack.tcp_client import TcpClient, TcpListener, TcpStream
from ipc import errors
from tests.interop.tcp_peer import (TcpPeer, Seg, kernel_rsts_dropped, opt, option_names, qnet_mac,
                                    sack_blocks, seq_add, seq_diff)
from tests.interop.util import NsPort, QnetGraph, missing_prerequisite

pytestmark = pytest.mark.interop


@dataclass
class Net:
    g: QnetGraph
    port: NsPort
    client: TcpClient
    mac: str


_sports = itertools.count(random.randrange(20000, 40000, 1000))


@pytest.fixture(scope="module")
def net():
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start()
    try:
        port = g.add_ns_port("p0", random.randrange(1, 255))
        client = TcpClient(g.run_dir)
        try:
            with kernel_rsts_dropped(port):
                yield Net(g, port, client, qnet_mac(port))
        finally:
            client.close()
    finally:
        g.stop()


class Established:
    """A qnet listener on ``lport``, a peer that connected to it, and the accepted stream."""

    def __init__(self, net: Net, lport: int, backlog: int = 128, **peer_kw) -> None:
        self.net = net
        self.listener: TcpListener | None = None
        self.peer: TcpPeer | None = None
        self.stream: TcpStream | None = None
        try:
            self.listener = net.client.listen(lport, backlog=backlog)
            self.peer = TcpPeer(net.port, next(_sports), lport, mac=net.mac, **peer_kw)
            self.synack = self.peer.connect(window=peer_kw.get("window"))
            self.stream = self.listener.accept(timeout=5)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.stream is not None:
            self.stream.abort()
        if self.listener is not None:
            self.listener.close()
        if self.peer is not None:
            self.peer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_pure_ack(s: Seg) -> bool:
    return s.flags == "A" and not s.data


def _read_exactly(stream: TcpStream, n: int, timeout: float = 5.0) -> bytes:
    stream.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        b = stream.recv(n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


def _assemble(log: list[Seg], start: int, n: int) -> bytes:
    """The byte stream qnet sent from ``start``, from every data segment seen."""
    pieces = {x.seq: x.data for x in log if x.data}
    out = bytearray()
    nxt = start
    while len(out) < n and nxt in pieces:
        out += pieces[nxt]
        nxt = seq_add(nxt, len(pieces[nxt]))
    return bytes(out[:n])


def _state(stream: TcpStream) -> str:
    return stream.info()["state"]


def _wait_state(stream: TcpStream, state: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (st := _state(stream)) != state:
        if time.monotonic() >= deadline:
            raise AssertionError(f"connection is {st}, not {state}, after {timeout:g} s")
        time.sleep(0.02)


def _peer_proves_alive(e: Established, tag: bytes) -> None:
    """Data both ways on the connection: it survived."""
    p, s = e.peer, e.stream
    p.send("PA", data=tag)
    assert _read_exactly(s, len(tag)) == tag
    s.sendall(tag[::-1])
    got, _ = p.read(len(tag), 5.0)
    assert got == tag[::-1]


# -- the handshake and its options ---------------------------------------------------------------
@pytest.mark.timeout(60)
def test_syn_ack_carries_mss_wscale_sack_permitted_and_timestamps_when_the_syn_offers_them(net):
    with Established(net, 7101, mss=1460, wscale=7, sack=True, ts=True) as e:
        p, sa = e.peer, e.synack
        assert sa.flags == "SA" and sa.ack == seq_add(p.iss, 1)
        assert p.bad_checksums == 0
        names = option_names(sa.tcp)
        assert {"MSS", "WScale", "SAckOK", "Timestamp"} <= names, sa
        # RFC 9293 §3.7.1: qnet's MSS is its MTU (1500) less 40; RFC 7323 §2.3: shift <= 14.
        assert opt(sa.tcp, "MSS") == 1460, sa
        assert 0 <= opt(sa.tcp, "WScale") <= 14, sa
        tsval, tsecr = opt(sa.tcp, "Timestamp")
        assert tsecr == 100_000, f"RFC 7323 §3.2: the SYN,ACK echoes our TSval 100000 in TSecr: {sa}"
        info = e.stream.info()
        assert {"wscale", "timestamps", "sack"} <= set(info["options"]), info["options"]
        # RFC 7323 §3.2: once negotiated, every segment carries a timestamp.
        e.stream.sendall(b"hello")
        got, segs = p.read(5, 5.0)
        assert got == b"hello" and all(opt(s.tcp, "Timestamp") for s in segs), segs


@pytest.mark.timeout(60)
def test_syn_ack_carries_no_wscale_sack_or_timestamps_when_the_syn_offers_none(net):
    with Established(net, 7102, mss=None) as e:
        sa = e.synack
        assert sa.flags == "SA"
        names = option_names(sa.tcp)
        # RFC 7323 §1.3 (window scale) and §3.2 (timestamps), RFC 2018 §2 (SACK-permitted):
        # offered in the SYN,ACK only when the SYN offered them.
        assert not names & {"WScale", "SAckOK", "Timestamp"}, sa
        info = e.stream.info()
        assert not {"wscale", "timestamps", "sack"} & set(info["options"]), info["options"]


@pytest.mark.timeout(60)
def test_qnet_segments_fit_the_mss_the_peer_offered_and_536_without_one(net):
    for lport, mss, limit in ((7103, 700, 700), (7104, None, 536)):
        with Established(net, lport, mss=mss) as e:
            data = random.Random(lport).randbytes(4000)
            e.stream.sendall(data)
            got, segs = e.peer.read(len(data), 10.0)
            assert got == data
            biggest = max(len(s.data) for s in segs)
            # RFC 9293 §3.7.1: never more than the peer's MSS; 536 for IPv4 when it sent none.
            assert biggest <= limit, f"MSS {mss}: a {biggest}-byte segment"


@pytest.mark.timeout(60)
def test_connect_to_a_silent_peer_retransmits_its_syn_at_about_1_2_4_seconds(net):
    peer = TcpPeer(net.port, 7105, None, mac=net.mac)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        fut = pool.submit(net.client.connect, net.port.linux_ip, 7105, timeout=8.5)
        syns: list[Seg] = []
        deadline = time.monotonic() + 8.2
        while (seg := peer.recv(max(0.0, deadline - time.monotonic()))) is not None:
            if seg.has("S"):
                syns.append(seg)
        with pytest.raises(TimeoutError):
            fut.result(timeout=15)
    finally:
        pool.shutdown(wait=True)
        peer.close()
    assert len(syns) >= 4, f"{len(syns)} SYNs in 8 s: {list(map(str, syns))}"
    assert len({s.seq for s in syns}) == 1, "a retransmitted SYN keeps its ISS"
    assert all(option_names(s.tcp) == option_names(syns[0].tcp) for s in syns)
    gaps = [b.at - a.at for a, b in zip(syns, syns[1:])][:3]
    # RFC 6298 §2.1: RTO 1 s before any sample; §5.5: doubled on each expiry.
    lo_hi = [(0.7, 1.6), (1.5, 3.0), (3.0, 6.0)]
    assert all(lo <= g <= hi for g, (lo, hi) in zip(gaps, lo_hi)), f"SYN intervals {gaps}"


@pytest.mark.timeout(60)
def test_an_unanswered_syn_ack_is_retransmitted_after_about_a_second(net):
    lport = 7106
    lst = net.client.listen(lport)
    p = TcpPeer(net.port, next(_sports), lport, mac=net.mac)
    try:
        sa = p.syn()
        # RFC 6298 §2.1: 1 s before any RTT sample; the SYN,ACK is the same segment again.
        again = p.expect(lambda x: x.has("S") and x.has("A"), 3.0, "the retransmitted SYN,ACK")
        gap = again.at - sa.at
        assert 0.7 <= gap <= 1.6 and again.seq == sa.seq and again.ack == sa.ack, (gap, again)
        p.send("A")
        lst.accept(timeout=5).abort()
    finally:
        lst.close()
        p.close()


# -- RST and SYN on an established connection (RFC 5961) -----------------------------------------
@pytest.mark.timeout(60)
def test_rst_exactly_at_rcv_nxt_resets_the_connection(net):
    with Established(net, 7110) as e:
        p, s = e.peer, e.stream
        p.send("R", seq=p.snd_nxt, advance=False)
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            s.recv(100)
        assert s.status() == "reset"
        # RFC 9293 §3.10.7.4: a RST is never answered. Sentinel: an ACK to a connection that
        # is gone gets <SEQ=SEG.ACK><RST> (§3.10.7.1), and must be the first thing we see.
        p.send("A", data=b"?", advance=False)
        rst = p.expect(lambda x: x.has("R"), 3.0, "a RST for a segment of a closed connection")
        assert rst.seq == p.rcv_nxt, rst


@pytest.mark.timeout(60)
def test_rst_in_window_but_not_at_rcv_nxt_gets_a_challenge_ack_and_the_connection_survives(net):
    with Established(net, 7111) as e:
        p = e.peer
        off = min(1000, e.synack.window // 2)
        p.send("R", seq=seq_add(p.snd_nxt, off), advance=False)
        # RFC 5961 §3.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>.
        ack = p.expect(None, 3.0, "a challenge ACK")
        assert ack.flags == "A" and ack.seq == p.rcv_nxt and ack.ack == p.snd_nxt, ack
        assert e.stream.status() == "established"
        _peer_proves_alive(e, b"alive")


@pytest.mark.timeout(60)
def test_rst_outside_the_window_is_dropped_silently(net):
    with Established(net, 7112) as e:
        p = e.peer
        # RFC 5961 §3.2 / RFC 9293 §3.10.7.4: outside the window, a RST is dropped unanswered.
        p.send("R", seq=seq_add(p.snd_nxt, 1 << 24), advance=False)
        p.send("R", seq=seq_add(p.snd_nxt, -1), advance=False)
        p.send("PA", data=b"s")         # the sentinel: in-order data is ACKed at once
        first = p.expect(None, 3.0, "the ACK of the sentinel byte")
        assert first.flags == "A" and first.ack == p.snd_nxt, \
            f"the first answer after two out-of-window RSTs and a data byte: {first}"
        assert _read_exactly(e.stream, 1) == b"s"
        assert e.stream.status() == "established"


@pytest.mark.timeout(60)
def test_syn_on_an_established_connection_gets_a_challenge_ack(net):
    with Established(net, 7113, mss=1460) as e:
        p = e.peer
        p.send("S", seq=p.snd_nxt, options=[("MSS", 1460)], advance=False)
        # RFC 5961 §4.2 / RFC 9293 §3.10.7.4 fourth: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>.
        ack = p.expect(None, 3.0, "a challenge ACK for the SYN")
        assert ack.flags == "A" and ack.seq == p.rcv_nxt and ack.ack == p.snd_nxt, ack
        _peer_proves_alive(e, b"still here")


@pytest.mark.timeout(60)
def test_ack_of_data_never_sent_is_answered_with_an_ack_and_dropped(net):
    with Established(net, 7116) as e:
        p = e.peer
        # RFC 9293 §3.10.7.4 fifth / RFC 5961 §5.2: SEG.ACK > SND.NXT -> send an ACK, drop.
        p.send("PA", ack=seq_add(p.rcv_nxt, 5000), data=b"bogus", advance=False)
        ack = p.expect(None, 3.0, "an ACK for an ACK of unsent data")
        assert ack.flags == "A" and ack.seq == p.rcv_nxt and ack.ack == p.snd_nxt, ack
        _peer_proves_alive(e, b"fine")


@pytest.mark.timeout(60)
def test_data_outside_the_window_is_dropped_and_acked(net):
    with Established(net, 7114) as e:
        p, s = e.peer, e.stream
        p.send("PA", data=b"abc")
        p.expect(lambda x: x.ack == p.snd_nxt, 3.0, "the ACK of abc", skip=lambda x: x.ack != p.snd_nxt
                 and _is_pure_ack(x))
        # RFC 9293 §3.10.7.4 first: an unacceptable segment gets <SEQ=SND.NXT><ACK=RCV.NXT>
        # and is dropped: beyond the right edge ...
        p.send("PA", seq=seq_add(p.snd_nxt, 1 << 20), data=b"x" * 100, advance=False)
        a1 = p.expect(None, 3.0, "an ACK for data beyond the window")
        assert a1.flags == "A" and a1.ack == p.snd_nxt and not a1.data, a1
        # ... and entirely before RCV.NXT (an old duplicate).
        p.send("PA", seq=seq_add(p.snd_nxt, -3), data=b"abc", advance=False)
        a2 = p.expect(None, 3.0, "an ACK for an old duplicate")
        assert a2.flags == "A" and a2.ack == p.snd_nxt, a2
        p.send("PA", data=b"ok")
        assert _read_exactly(s, 5) == b"abcok"
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(1)                   # nothing of the dropped segments reached the client


@pytest.mark.timeout(60)
def test_paws_drops_a_segment_with_an_old_timestamp_and_acks_it(net):
    with Established(net, 7115, ts=True) as e:
        p, s = e.peer, e.stream
        assert p.ts_ok, e.synack
        t = p.tsval + 10_000
        p.send("PA", data=b"one", tsval=t)
        a0 = p.expect(lambda x: x.ack == p.snd_nxt, 3.0, "the ACK of one")
        assert opt(a0.tcp, "Timestamp")[1] == t, a0
        # RFC 7323 §5.3 R1: SEG.TSval < TS.Recent -> send an ACK and drop the segment.
        p.send("PA", data=b"two", tsval=t - 5000, advance=False)
        a1 = p.expect(None, 3.0, "an ACK for the segment with an old timestamp")
        assert a1.flags == "A" and a1.ack == p.snd_nxt, f"PAWS should drop 'two': {a1}"
        assert opt(a1.tcp, "Timestamp")[1] == t, f"TS.Recent must stay {t}: {a1}"
        p.send("PA", data=b"two", tsval=t + 1)
        a2 = p.expect(None, 3.0, "the ACK of two, fresh timestamp")
        assert a2.ack == p.snd_nxt, a2
        assert _read_exactly(s, 6) == b"onetwo"


# -- the peer's zero window and qnet's probes -----------------------------------------------------
@pytest.mark.timeout(60)
def test_zero_window_from_the_peer_gets_window_probes_then_data_when_it_opens(net):
    with Established(net, 7120, window=65535) as e:
        p, s = e.peer, e.stream
        p.send("A", window=0)            # the window closes
        data = random.Random(7120).randbytes(1000)
        s.sendall(data)
        t0 = time.monotonic()
        probes: list[Seg] = []
        while time.monotonic() - t0 < 4.0 and len(probes) < 4:
            seg = p.recv(max(0.0, 4.0 - (time.monotonic() - t0)))
            if seg is None:
                break
            # RFC 9293 §3.8.6.1: into a zero window at most one byte (a probe); Linux's probe
            # is <SEQ=SND.UNA-1> with no data.
            assert len(seg.data) <= 1, f"{len(seg.data)} bytes sent into a zero window: {seg}"
            una = p.rcv_nxt if not seg.data else seg.seq
            assert seg.seq in (seq_add(una, -1), una), seg
            probes.append(seg)
        assert len(probes) >= 3, f"{len(probes)} window probes in 4 s: {list(map(str, probes))}"
        gaps = [b.at - a.at for a, b in zip(probes, probes[1:])]
        # The persist timer backs off (RFC 9293 §3.8.6.1 "exponentially"): gaps do not shrink.
        assert all(b >= 0.8 * a for a, b in zip(gaps, gaps[1:])), f"probe intervals {gaps}"
        p.send("A", window=65535)        # the window opens
        pushed = 1 if any(x.data for x in probes) else 0
        got, _ = p.read(len(data) - pushed, 5.0)
        assert (data[:pushed] + got) == data


# -- closing -----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_fin_in_established_is_acked_the_client_reads_eof_and_closes_through_last_ack(net):
    with Established(net, 7130) as e:
        p, s = e.peer, e.stream
        p.send("FA")
        ack = p.expect(None, 3.0, "the ACK of our FIN")
        assert ack.flags == "A" and ack.ack == p.snd_nxt, ack
        s.settimeout(5)
        assert s.recv(10) == b""
        assert _state(s) == "CLOSE-WAIT"
        s.shutdown(socket.SHUT_WR)
        fin = p.expect(None, 3.0, "qnet's FIN")
        assert fin.has("F") and fin.seq == seq_add(p.rcv_nxt, -1) and fin.ack == p.snd_nxt, fin
        assert _state(s) == "LAST-ACK"
        cid = s.id
        p.send("A")
        deadline = time.monotonic() + 3
        while any(c["cid"] == cid for c in net.client.connections()["connections"]):
            assert time.monotonic() < deadline, "the connection outlived the ACK of its FIN in LAST-ACK"
            time.sleep(0.02)


@pytest.mark.timeout(60)
def test_simultaneous_close_goes_from_fin_wait_1_through_closing_to_time_wait(net):
    with Established(net, 7131) as e:
        p, s = e.peer, e.stream
        s.shutdown(socket.SHUT_WR)
        fin = p.expect(lambda x: x.has("F"), 3.0, "qnet's FIN")
        assert _state(s) == "FIN-WAIT-1"
        # Our FIN crosses theirs: it does not acknowledge qnet's FIN.
        p.send("FA", ack=fin.seq)
        ack = p.expect(None, 3.0, "the ACK of our FIN", skip=lambda x: x.has("F") and x.ack == fin.ack)
        assert ack.ack == p.snd_nxt and not ack.has("R"), ack
        assert _state(s) == "CLOSING"           # RFC 9293 §3.10.7.4 eighth (FIN-WAIT-1)
        p.send("A", ack=seq_add(fin.seq, 1))
        _wait_state(s, "TIME-WAIT")


@pytest.mark.timeout(60)
def test_time_wait_acks_a_retransmitted_fin(net):
    with Established(net, 7132) as e:
        p, s = e.peer, e.stream
        s.shutdown(socket.SHUT_WR)
        fin = p.expect(lambda x: x.has("F"), 3.0, "qnet's FIN")
        p.send("A", ack=seq_add(fin.seq, 1))
        _wait_state(s, "FIN-WAIT-2")
        p.send("FA")
        a1 = p.expect(None, 3.0, "the ACK of our FIN")
        assert a1.flags == "A" and a1.ack == p.snd_nxt, a1
        _wait_state(s, "TIME-WAIT")
        # RFC 9293 §3.10.7.4 eighth (TIME-WAIT): a retransmitted FIN is acknowledged and the
        # 2 MSL timeout restarts.
        p.send("FA", seq=seq_add(p.snd_nxt, -1), advance=False)
        a2 = p.expect(None, 3.0, "an ACK for the retransmitted FIN in TIME-WAIT")
        assert a2.flags == "A" and a2.ack == p.snd_nxt and a2.seq == a1.seq, a2
        assert _state(s) == "TIME-WAIT"


# -- SACK and loss recovery -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_sack_blocks_report_the_holes_the_peer_leaves(net):
    with Established(net, 7140, sack=True) as e:
        p, s = e.peer, e.stream
        base = p.snd_nxt
        data = random.Random(7140).randbytes(400)

        def piece(a: int, b: int) -> None:
            p.send("PA", seq=seq_add(base, a), data=data[a:b], advance=False)

        def block(a: int, b: int) -> tuple[int, int]:
            return seq_add(base, a), seq_add(base, b)

        # RFC 2018 §4: the first block holds the segment that arrived last.
        piece(100, 200)
        a1 = p.expect(None, 3.0, "a duplicate ACK with a SACK block")
        assert a1.ack == base and sack_blocks(a1.tcp) == [block(100, 200)], a1
        piece(300, 400)
        a2 = p.expect(None, 3.0, "a duplicate ACK with two SACK blocks")
        assert a2.ack == base and sack_blocks(a2.tcp) == [block(300, 400), block(100, 200)], a2
        piece(0, 100)
        a3 = p.expect(None, 3.0, "the ACK that fills the first hole")
        assert a3.ack == seq_add(base, 200) and sack_blocks(a3.tcp) == [block(300, 400)], a3
        piece(200, 300)
        a4 = p.expect(None, 3.0, "the ACK that fills the last hole")
        assert a4.ack == seq_add(base, 400) and not sack_blocks(a4.tcp), a4
        p.snd_nxt = seq_add(base, 400)
        assert _read_exactly(s, 400) == data


@pytest.mark.timeout(60)
def test_three_duplicate_acks_bring_a_fast_retransmit_well_before_the_rto(net):
    lport = 7141
    lst = net.client.listen(lport)
    p = TcpPeer(net.port, next(_sports), lport, mac=net.mac, mss=1000)
    s = None
    try:
        p.syn()
        time.sleep(0.5)                  # a slow handshake: qnet's RTO is well above 1 s
        p.send("A")
        s = lst.accept(timeout=5)
        rto = s.info()["rto"]
        assert rto >= 1.0, f"RTO {rto} after a 0.5 s RTT sample"
        data = random.Random(lport).randbytes(8000)
        s.sendall(data)
        first = p.expect(lambda x: len(x.data) > 0, 3.0, "the first data segment")
        flight = [first]
        while (seg := p.recv(0.3)) is not None:
            if seg.data:
                flight.append(seg)
        # RFC 5681 §3.1: an initial window of min(4*MSS, max(2*MSS, 4380)) = 4 segments.
        assert len(flight) >= 4, f"initial flight {list(map(str, flight))}"
        assert all(len(x.data) <= 1000 for x in flight)
        # The first segment is "lost": every later one draws a duplicate ACK of its start.
        for _ in range(3):
            p.send("A", ack=first.seq)
        t3 = time.monotonic()
        rtx = p.wait_for(lambda x: x.seq == first.seq and len(x.data) > 0, rto,
                         f"the retransmission of seq {first.seq}")
        took = rtx.at - t3
        # RFC 5681 §3.2: retransmit on the third duplicate ACK, not at the RTO.
        assert took < 0.3 and rtx.at - first.at < rto / 2, \
            f"retransmitted {took:.3f} s after the third duplicate ACK, " \
            f"{rtx.at - first.at:.3f} s after the original (RTO {rto})"
        # Then everything arrives whole.
        p.send("A")
        start = seq_add(p.irs, 1)
        p.read(len(data) - seq_diff(p.rcv_nxt, start), 10.0)
        assert _assemble(p.log, start, len(data)) == data
    finally:
        if s is not None:
            s.abort()
        lst.close()
        p.close()


# -- listen backlog and SYN cookies ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_full_backlog_listener_answers_syns_with_cookies_and_the_connections_complete(net):
    lport = 7150
    lst = net.client.listen(lport, backlog=1)
    peers: list[TcpPeer] = []
    streams: list[TcpStream] = []
    try:
        first = TcpPeer(net.port, next(_sports), lport, mac=net.mac)
        peers.append(first)
        # A handshake left half-open fills the SYN queue (as Linux, it holds min(backlog, 256)).
        first.send("S", options=first.syn_options())
        first.expect(lambda x: x.has("S") and x.has("A"), 3.0, "the first SYN,ACK")
        pending = [TcpPeer(net.port, next(_sports), lport, mac=net.mac, ts=True, sack=True, wscale=7)
                   for _ in range(3)]
        peers += pending
        for q in pending:                # several handshakes pending at once
            q.send("S", options=q.syn_options())
        for q in pending:
            # RFC 4987 §3.6: with its SYN queue full, a listener answers with a SYN cookie
            # rather than dropping the SYN.
            try:
                sa = q.expect(lambda x: x.has("S") and x.has("A"), 3.0,
                              f"a SYN,ACK (a cookie) from a backlog-1 listener with a full queue "
                              f"(peer port {q.sport})")
            except AssertionError as e:
                rows = [r for r in net.client.connections()["listeners"] if r["port"] == lport]
                raise AssertionError(f"{e}; the listener: {rows}") from None
            assert sa.ack == q.snd_nxt, sa
        first.send("PA", data=b"0")
        for i, q in enumerate(pending, 1):
            q.send("PA", data=str(i).encode())
        # Accept them all; a peer whose data is not yet ACKed sends it again (as its own
        # retransmission timer would), so a listener that drops an ACK it has no room for
        # still completes the connection once accept() makes room.
        want = {q.sport: str(i).encode() for i, q in enumerate(peers)}
        deadline = time.monotonic() + 15
        while len(streams) < len(peers):
            assert time.monotonic() < deadline, \
                f"accepted {len(streams)} of {len(peers)} connections on a backlog-1 listener"
            try:
                streams.append(lst.accept(timeout=0.5))
            except TimeoutError:
                for q in peers:
                    if not any(x.ack == q.snd_nxt for x in q.log):
                        q.send("PA", seq=seq_add(q.snd_nxt, -1), data=want[q.sport], advance=False)
        for st in streams:
            assert _read_exactly(st, 1) == want[st.remote[1]], st.remote
    finally:
        for st in streams:
            st.abort()
        lst.close()
        for q in peers:
            q.close()


# -- keepalive ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_keepalive_probes_every_idle_period_and_an_unanswered_peer_times_out(net):
    with Established(net, 7160) as e:
        p, s = e.peer, e.stream
        failed = []
        for name, value in (("keepidle", 1), ("keepintvl", 1), ("keepcnt", 2), ("keepalive", 1)):
            try:
                net.client.rpc.call("set_option", conn=s.id, name=name, value=value)
            except errors.IpcError as err:
                failed.append(f"{name}={value}: {err!r}")
        assert not failed, "qnet.tcp set_option failed: " + "; ".join(failed)
        t0 = time.monotonic()

        def is_probe(x: Seg) -> bool:
            # RFC 1122 §4.2.3.6: <SEQ=SND.NXT-1>, no data or one garbage byte.
            return x.has("A") and len(x.data) <= 1 and x.seq == seq_add(p.rcv_nxt, -1)
        k1 = p.expect(is_probe, 4.0, "a keepalive probe <SEQ=SND.NXT-1>")
        assert 0.5 <= k1.at - t0 <= 3.0, k1.at - t0
        p.send("A")                     # answered: the connection lives, the idle time restarts
        k2 = p.expect(is_probe, 4.0, "the next keepalive probe after an idle period")
        assert 0.7 <= k2.at - k1.at <= 3.0, k2.at - k1.at
        # Unanswered now: keepcnt probes keepintvl apart, then a RST and ETIMEDOUT.
        rst = p.wait_for(lambda x: x.has("R"), 6.0, "a RST after unanswered keepalive probes")
        assert rst.at - k2.at >= 1.5, f"RST {rst.at - k2.at:.2f} s after the first unanswered probe"
        assert sum(1 for x in p.log if is_probe(x) and x.at > k2.at) >= 1
        s.settimeout(5)
        with pytest.raises(OSError) as ei:
            while s.recv(100):
                pass
        assert ei.value.errno == errno.ETIMEDOUT, ei.value
