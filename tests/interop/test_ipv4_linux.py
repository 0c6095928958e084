"""qnet's IPv4 stack against the Linux kernel: two namespaces, each on the far side of a TAP port of
one running qnet graph (p0: 10.99.A.0/24, p1: 10.99.B.0/24; qnet is .1, Linux is .2, and each
namespace routes everything else via qnet).

Tests share one graph (module fixture) and run in file order; the ones that restart or kill
components come last. Figures measured under restarts are printed (pytest -s shows them)."""
from __future__ import annotations

import os
import secrets
import signal
import time

import pytest

from components.netstack.dgram_client import DatagramClient
from tests.interop.util import NS_PYTHON, capture_in_background, parse_ping, stop_process, tshark_fields, wait_for

pytestmark = pytest.mark.interop

RESOLVED = ("REACHABLE", "STALE", "DELAY", "PROBE")


def _qnet_ping(graph, dst: str, *opts: str, timeout: float = 30.0) -> dict:
    return graph.qnet_json("ping", *opts, dst, timeout=timeout)


# -- 1: ICMP echo and ARP both ways --------------------------------------------------------------
@pytest.mark.timeout(60)
def test_linux_and_qnet_ping_each_other_and_resolve_each_others_mac(graph, ns_a):
    r = ns_a.ping(ns_a.qnet_ip, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3, r.text
    assert {src for src, *_ in r.replies} == {ns_a.qnet_ip}

    res = _qnet_ping(graph, ns_a.linux_ip, "-c", "3", "-i", "0.2")
    assert res["sent"] == 3 and res["received"] == 3, res
    assert all(x["ok"] and x["src"] == ns_a.linux_ip and x["ttl"] == 64 for x in res["replies"]), res

    linux_mac = ns_a.mac().lower()
    entry = next((n for n in graph.qnet_json("neigh", "list")
                  if n["device"] == "p0" and n["address"] == ns_a.linux_ip), None)
    assert entry is not None, "qnet has no neighbor entry for Linux"
    assert entry["mac"].lower() == linux_mac and entry["state"] in RESOLVED, entry

    qnet_mac = graph.port_row("p0")["mac"].lower()
    assert qnet_mac.startswith("02:71:6e:")
    kn = ns_a.neigh(ns_a.qnet_ip)
    assert kn is not None and kn.get("lladdr", "").lower() == qnet_mac, kn
    assert any(s in RESOLVED for s in kn.get("state", [])), kn


# -- 2: fragmentation and reassembly -----------------------------------------------------------
@pytest.mark.timeout(60)
def test_8000_byte_pings_are_fragmented_and_reassembled_both_ways(graph, ns_a, tmp_path):
    pcap = str(tmp_path / "frag.pcap")
    graph.qnet_json("port", "list")  # the graph answers before the capture starts
    cap = capture_in_background(graph, "p0", pcap, 4.0)
    try:
        r = ns_a.ping(ns_a.qnet_ip, "-c", "2", "-i", "0.3", "-W", "2", "-s", "8000")
        assert r.received == 2, r.text
        assert "8008 bytes from" in r.text  # 8000 data + 8 ICMP header came back whole
        res = _qnet_ping(graph, ns_a.linux_ip, "-c", "2", "-i", "0.3", "-s", "8000")
        assert res["received"] == 2, res
        assert all(x["size"] == 8000 for x in res["replies"]), res
    finally:
        out, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    rows = tshark_fields(pcap, "ip.src", "ip.flags.mf", "ip.frag_offset", "ip.id")
    # 8008 bytes of ICMP in a 1500-byte MTU: 6 fragments at offsets 0, 1480, ..., 7400 bytes
    # (tshark shows the header field, in 8-byte units); all but the last with More Fragments.
    want = {(0, "1"), (185, "1"), (370, "1"), (555, "1"), (740, "1"), (925, "0")}
    for src in (ns_a.linux_ip, ns_a.qnet_ip):
        frags: dict[str, set[tuple[int, str]]] = {}
        for s, mf, off, ident in rows:
            if s == src:
                frags.setdefault(ident, set()).add((int(off), "1" if mf in ("1", "True") else "0"))
        whole = [i for i, f in frags.items() if f == want]
        # Each side sent 4 such datagrams: its 2 echo requests and its 2 replies to the other's.
        assert len(whole) >= 4, f"fragments from {src}: {frags}"


# -- 3: UDP both ways -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_udp_echo_from_linux_to_a_qnet_socket_and_from_qnet_to_a_linux_server(graph, ns_a):
    c = DatagramClient(graph.peer, owner=f"tester-{secrets.token_hex(3)}")
    try:
        sid = c.open(7007)
        # Linux -> qnet: a socket in the namespace sends, our socket echoes, Linux checks the reply.
        linux = ns_a.popen([NS_PYTHON, "-c", f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b'hello-qnet', ('{ns_a.qnet_ip}', 7007))
data, addr = s.recvfrom(2000)
print(data.decode(), addr[0], addr[1])
"""])
        try:
            got = c.recv(5.0)
            assert len(got) == 1, got
            d = got[0]
            assert d.payload == b"hello-qnet" and str(d.src) == ns_a.linux_ip and str(d.dst) == ns_a.qnet_ip
            assert d.dst_port == 7007 and d.device == "p0"
            assert c.sendto(sid, d.payload.upper(), str(d.src), d.src_port)
            out, err = linux.communicate(timeout=10)
        finally:
            stop_process(linux)
        assert linux.returncode == 0, err
        assert out.split() == ["HELLO-QNET", ns_a.qnet_ip, "7007"]

        # qnet -> Linux: a UDP echo server in the namespace; retry until it is bound.
        server = ns_a.popen([NS_PYTHON, "-c", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{ns_a.linux_ip}', 7777)); s.settimeout(10)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b'echo:' + data, addr)
"""])
        try:
            reply = None
            deadline = time.monotonic() + 8.0
            while reply is None and time.monotonic() < deadline:
                c.sendto(sid, b"from-qnet", ns_a.linux_ip, 7777)
                for d in c.recv(0.3):
                    if d.src_port == 7777:
                        reply = d
            assert reply is not None, "no echo from the Linux server"
            assert reply.payload == b"echo:from-qnet" and str(reply.src) == ns_a.linux_ip
            assert reply.dst_port == 7007
            # Larger than the MTU: fragmented by qnet, reassembled by Linux, and back.
            big = bytes(range(256)) * 16
            assert c.sendto(sid, big, ns_a.linux_ip, 7777)
            got = c.recv(3.0)
            assert [d.payload for d in got] == [b"echo:" + big], got
        finally:
            stop_process(server)
        c.close_socket(sid)
    finally:
        c.close()


# -- 4: ICMP port unreachable ---------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_closed_udp_port_answers_icmp_port_unreachable(graph, ns_a):
    before = graph.qnet_json("stats")["stack"]["icmp"]
    out = ns_a.python(f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect(('{ns_a.qnet_ip}', 9))
for i in range(2):
    s.send(b'anyone?')
    try:
        s.recv(100)
        print('data')
    except ConnectionRefusedError:
        print('refused')
    except socket.timeout:
        print('timeout')
""").stdout.split()
    # Linux reports the ICMP error on the socket: each send's error surfaces at the next recv.
    assert out == ["refused", "refused"], out
    after = graph.qnet_json("stats")["stack"]["icmp"]
    # tx_error_TYPE_CODE: type 3 code 3 is port unreachable (RFC 1122 §4.1.3.1: SHOULD send it).
    assert after.get("tx_error_3_3", 0) - before.get("tx_error_3_3", 0) == 2, (before, after)


# -- 5: forwarding ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_forwarding_between_two_namespaces_decrements_ttl_once_and_follows_the_port_switch(graph, ns_a, ns_b):
    r = ns_a.ping(ns_b.linux_ip, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3, r.text
    # Linux answers with TTL 64; one hop through qnet leaves 63.
    assert {(src, ttl) for src, _, ttl, _ in r.replies} == {(ns_b.linux_ip, 63)}, r.text
    r = ns_b.ping(ns_a.linux_ip, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3 and {ttl for _, _, ttl, _ in r.replies} == {63}, r.text
    # qnet's own address on the far port is delivered locally: not forwarded, not decremented.
    r = ns_a.ping(ns_b.qnet_ip, "-c", "1", "-W", "2")
    assert r.received == 1 and r.replies[0][2] == 64, r.text
    try:
        graph.qnet("port", "set", "p1", "forwarding", "off")
        r = ns_a.ping(ns_b.linux_ip, "-c", "3", "-i", "0.2", "-W", "1")
        assert r.received == 0, f"forwarding off on p1, yet:\n{r.text}"
        r = ns_b.ping(ns_a.linux_ip, "-c", "2", "-i", "0.2", "-W", "1")
        assert r.received == 0, f"forwarding off on p1, yet:\n{r.text}"
    finally:
        graph.qnet("port", "set", "p1", "forwarding", "on")
    r = ns_a.ping(ns_b.linux_ip, "-c", "3", "-i", "0.2", "-W", "2")
    assert r.received == 3, r.text


# -- 8: TTL expiry ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_ttl_1_through_qnet_gets_time_exceeded_from_the_ingress_address(graph, ns_a, ns_b):
    r = ns_a.ping(ns_b.linux_ip, "-c", "1", "-t", "1", "-W", "2")
    assert r.received == 0, r.text
    assert f"From {ns_a.qnet_ip}" in r.text and "Time to live exceeded" in r.text, r.text
    # TTL 2 is enough for one hop.
    r = ns_a.ping(ns_b.linux_ip, "-c", "1", "-t", "2", "-W", "2")
    assert r.received == 1 and r.replies[0][2] == 63, r.text


# -- 7: capture read by tshark ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_capture_during_pings_is_read_by_tshark_with_requests_and_replies(graph, ns_a, tmp_path):
    pcap = str(tmp_path / "p0.pcap")
    cap = capture_in_background(graph, "p0", pcap, 3.0)
    try:
        r = ns_a.ping(ns_a.qnet_ip, "-c", "10", "-i", "0.1", "-W", "2")
        assert r.received == 10, r.text
        res = _qnet_ping(graph, ns_a.linux_ip, "-c", "3", "-i", "0.1")
        assert res["received"] == 3, res
    finally:
        out, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    assert "frames written" in out
    rows = [tuple(r) for r in tshark_fields(pcap, "ip.src", "icmp.type") if len(r) == 2 and r[1]]
    count = {k: rows.count(k) for k in set(rows)}
    assert count.get((ns_a.linux_ip, "8"), 0) >= 10, count   # Linux's requests
    assert count.get((ns_a.qnet_ip, "0"), 0) >= 10, count    # qnet's replies
    assert count.get((ns_a.qnet_ip, "8"), 0) >= 3, count     # qnet's requests
    assert count.get((ns_a.linux_ip, "0"), 0) >= 3, count    # Linux's replies


# -- 6: driver restarts under load ---------------------------------------------------------------
def _ping_flood(ns, dst: str, count: int = 300):
    return ns.popen(["ping", "-n", "-i", "0.01", "-c", str(count), "-W", "2", dst])


def _finish(p, timeout: float = 30.0):
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop_process(p)
    return parse_ping(out + err)


@pytest.mark.timeout(60)
def test_planned_driver_restart_during_100_pings_per_second_loses_nothing_on_socketpairs(graph, ns_a):
    old = graph.components()["ethdriver.p0"]["pid"]
    p = _ping_flood(ns_a, ns_a.qnet_ip)
    try:
        time.sleep(1.0)
        res = graph.qnet_json("restart", "ethdriver.p0")
    finally:
        r = _finish(p)
    print(f"\nethdriver.p0 planned restart: {res['seconds']} s, handed over={res['handed_over']}; "
          f"ping lost {r.lost}/{r.transmitted} (seq {r.missing()}), max rtt {r.max_rtt_ms:.1f} ms")
    assert res["old_pid"] == old and res["new_pid"] != old
    assert r.transmitted == 300
    if graph.data_transport == "socketpair":
        # The promise of a planned restart: nothing lost (unread frames wait in the TAP queue
        # and in the launcher's channel for the successor).
        assert r.lost == 0, f"lost seq {r.missing()}"
    else:
        # ZeroMQ: the successor's DEALER takes the port's name over (ROUTER_HANDOVER); a batch the
        # predecessor sends after that is dropped by libzmq. No zero-loss promise on this transport.
        assert r.lost <= 3, f"lost seq {r.missing()}"


@pytest.mark.timeout(60)
def test_killed_driver_is_respawned_within_a_second_and_ping_resumes_within_2s(graph, ns_a):
    old = graph.components()["ethdriver.p0"]["pid"]
    p = _ping_flood(ns_a, ns_a.qnet_ip)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        row = wait_for(lambda: (c := graph.components()["ethdriver.p0"])["pid"] not in (old, None)
                       and c["state"] == "running" and c, 5.0, 0.01, "a new ethdriver.p0")
        respawn = time.monotonic() - t0
        graph.pids.add(row["pid"])
    finally:
        r = _finish(p)
    # Requests sent while no driver ran wait in the TAP's kernel queue; the oldest one's round trip
    # is the data-plane outage.
    print(f"\nethdriver.p0 kill -9: respawned in {respawn:.3f} s; ping lost {r.lost}/{r.transmitted} "
          f"(seq {r.missing()}), "
          f"longest gap {r.longest_gap()} pings, max rtt {r.max_rtt_ms:.1f} ms")
    assert respawn < 1.0, f"respawn took {respawn:.3f} s"
    assert r.transmitted == 300
    outage_s = max(r.max_rtt_ms / 1000.0, r.longest_gap() * 0.01)
    assert outage_s < 2.0, r.missing()
    # Requests wait in the TAP's queue while no driver runs and are answered late, not lost
    # (ping waits 2 s for each, and the driver is back in < 1 s). At most what the killed
    # driver had read and not yet handed on is lost: one batch, here one ping.
    assert r.lost <= 1, r.missing()


# -- netstack restart ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_netstack_restart_under_ping_loop_hands_over_state_and_ping_continues(graph, ns_a, ns_b):
    p = _ping_flood(ns_a, ns_b.linux_ip)  # forwarded: neighbors on both ports must survive
    try:
        time.sleep(1.0)
        res = graph.qnet_json("restart", "netstack")
        graph.pids.add(res["new_pid"])
    finally:
        r = _finish(p)
    print(f"\nnetstack planned restart: {res['seconds']} s, handed over={res['handed_over']}; "
          f"forwarded ping lost {r.lost}/{r.transmitted} (seq {r.missing()}), max rtt {r.max_rtt_ms:.1f} ms")
    assert res["handed_over"], res
    assert r.transmitted == 300
    if graph.data_transport == "socketpair":
        assert r.lost == 0, f"lost seq {r.missing()}: a planned restart loses nothing"
    else:
        # ZeroMQ: frames queued toward the frozen predecessor are lost with it (the socketpair
        # transport exists for this); measured 0-2, bound at 10 %.
        assert r.lost <= 30, f"lost seq {r.missing()} (> 10 %)"
    assert {ttl for _, _, ttl, _ in r.replies} == {63}
    # Still a working stack afterwards: local delivery and qnet's own pings.
    assert ns_a.ping(ns_a.qnet_ip, "-c", "1", "-W", "2").received == 1
    assert _qnet_ping(graph, ns_b.linux_ip, "-c", "1")["received"] == 1

