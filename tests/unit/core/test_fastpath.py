"""The per-frame fast path takes the common frames and has exactly the general path's effects.

Every test runs the same frames through two routers, one with the fast path switched off,
and compares everything observable: transmitted bytes, counters, events, neighbors, ident.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from .test_fuzz import frames as fuzz_frames
from .util import (A, B, BCAST, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, ip_frame, learn, make_stack,
                   ping_frame, udp_frame)


def router(fast: bool, **cfg):
    s = make_stack(**cfg)
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    if not fast:
        s.fast.receive = lambda dev, frame, now: False
    return s


def observe(s) -> dict:
    return {"tx": {d: [bytes(f) for f in fs] for d, fs in s.take_transmit().items()},
            "counters": s.counters(), "events": s.take_events(), "neighbors": s.neighbors(),
            "ident": s.ip4.next_ident}


def run_both(frames, now: float = 0.0, setup=None, **cfg):
    """Feed (device, frame) pairs to a fast and a general router; both observations."""
    out = []
    for fast in (True, False):
        s = router(fast, **cfg)
        if setup:
            setup(s)
        for dev, f in frames:
            s.receive_batch(dev, [f], now)
        out.append(observe(s))
    return out


def taken(frames, **cfg) -> int:
    """How many of the frames the fast path takes (after the neighbors are in use)."""
    s = router(True, **cfg)
    s.receive_batch("eth0", [udp_frame(HOST_A, MAC0, A, B, 1, 2)], 0.0)   # B: STALE -> DELAY
    s.receive_batch("eth0", [ping_frame(HOST_A, MAC0, A, IP0)], 0.0)      # A: STALE -> DELAY
    calls = []
    real = s.fast.receive
    s.fast.receive = lambda dev, f, now: calls.append(real(dev, f, now)) or calls[-1]
    for dev, f in frames:
        s.receive_batch(dev, [f], 0.0)
    return sum(calls)


COMMON = [
    ("eth0", ping_frame(HOST_A, MAC0, A, IP0, seq=1)),
    ("eth0", ping_frame(HOST_A, MAC0, A, IP1, seq=2, payload=b"x" * 100)),   # weak host
    ("eth0", udp_frame(HOST_A, MAC0, A, B, 1000, 2000, b"payload", ttl=10)),
    ("eth0", udp_frame(HOST_A, MAC0, A, B, 1000, 2000, b"y" * 1400, ttl=2)),
    ("eth1", udp_frame(HOST_B, MAC1, B, A, 7, 9, b"back")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=B, tos=0xB8, flags="DF") / UDP() / b"q")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, flags="DF", tos=4) /
                      ICMP(type=8, code=3, id=0, seq=0))),            # odd code, DF, TOS
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / ICMP(id=0, seq=0))),  # all-zero reply
    ("eth0", ping_frame(HOST_A, MAC0, A, IP0) + b"\0" * 10),          # Ethernet padding
]

UNCOMMON = [
    ("eth0", ping_frame(HOST_A, MAC0, A, B, ttl=1)),                              # TTL
    ("eth0", ping_frame(HOST_A, MAC0, A, "8.8.8.8")),                             # no route
    ("eth0", ping_frame(HOST_A, "ff:ff:ff:ff:ff:ff", A, IP0)),                    # link bcast
    ("eth0", ping_frame(HOST_A, MAC0, A, "10.0.0.255")),                          # directed
    ("eth0", ping_frame(HOST_A, MAC0, A, "192.168.1.255")),
    ("eth0", ping_frame(HOST_A, MAC0, A, "255.255.255.255")),
    ("eth0", ping_frame(HOST_A, MAC0, A, "224.0.0.1")),
    ("eth0", ping_frame(HOST_A, MAC0, "0.0.0.0", B)),                             # martians
    ("eth0", ping_frame(HOST_A, MAC0, "127.0.0.1", IP0)),
    ("eth0", ping_frame(HOST_A, MAC0, A, "240.0.0.1")),
    ("eth0", ping_frame(HOST_A, MAC0, IP1, B)),                                   # own source
    ("eth0", ping_frame(HOST_A, MAC0, "10.0.0.255", IP0)),                        # bcast source
    ("eth0", ping_frame(HOST_A, MAC0, "10.0.0.9", IP0)),                          # unresolved
    ("eth0", ping_frame(HOST_A, MAC0, A, "192.168.1.9")),
    ("eth0", ping_frame(HOST_A, "02:00:00:00:00:99", A, IP0)),                    # not our MAC
    ("eth0", ping_frame(MAC0, MAC0, A, IP0)),                                     # own MAC
    ("eth0", ping_frame("01:00:5e:00:00:01", MAC0, A, IP0)),                      # group source
    ("eth0", bytes(Ether(src=HOST_A, dst=MAC0) / Dot1Q(vlan=5) / IP(src=A, dst=IP0) / ICMP())),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, options=b"\x94\x04\x00\x00") / ICMP())),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=B, flags="MF") / UDP() / (b"z" * 16))),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, chksum=0x1234) / ICMP())),   # bad IP sum
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / ICMP(chksum=0x1234))),     # bad ICMP
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / ICMP(type=0))),            # echo reply
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / UDP(dport=9) / b"u")),     # local UDP
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, len=60) / ICMP())),          # truncated
    ("eth0", ping_frame(HOST_A, MAC0, A, IP0)[:30]),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=B, flags="DF") / UDP() / (b"b" * 1600))),
]


def test_common_frames_take_the_fast_path_with_the_general_paths_effects():
    assert taken(COMMON) == len(COMMON)
    fast, general = run_both(COMMON)
    assert fast == general
    assert len(fast["tx"]["eth0"]) == 6 and len(fast["tx"]["eth1"]) == 3   # 5 replies + 1 back


def test_uncommon_frames_fall_back_and_behave_as_before():
    assert taken(UNCOMMON) == 0
    fast, general = run_both(COMMON + UNCOMMON + COMMON)
    assert fast == general


def test_fast_path_follows_configuration_changes():
    def churn(s):
        s.receive_batch("eth0", [c[1] for c in COMMON if c[0] == "eth0"], 0.0)
        s.set_mtu("eth1", 600)                     # bigger datagrams now fragment or fail
        s.add_route(IPv4Network("8.8.8.0/24"), IPv4Address(B), None)
        s.set_forwarding("eth0", False)
        s.receive_batch("eth0", [c[1] for c in COMMON if c[0] == "eth0"], 0.0)
        s.set_forwarding("eth0", True)
        s.set_link("eth1", False, 0.0)             # routes via eth1 no longer usable
        s.receive_batch("eth0", [c[1] for c in COMMON if c[0] == "eth0"], 0.0)
        s.set_link("eth1", True, 0.0)
        s.remove_device("eth1", 0.0)
        s.receive_batch("eth0", [c[1] for c in COMMON if c[0] == "eth0"], 0.0)
    fast, general = run_both([("eth0", ping_frame(HOST_A, MAC0, A, "8.8.8.8"))], setup=churn)
    assert fast == general


def test_full_transmit_queue_is_counted_alike():
    frames = [("eth0", udp_frame(HOST_A, MAC0, A, B, 1, i + 1)) for i in range(12)]
    fast, general = run_both(frames, tx_queue_frames=5)
    assert fast == general
    assert fast["counters"]["dev:eth1"]["tx_drop_queue_full"] > 0


def test_memoryviews_of_one_buffer_are_taken_like_bytes():
    blob = b"".join(f for _, f in COMMON if _ == "eth0")
    views, off = [], 0
    mv = memoryview(blob)
    for _, f in COMMON:
        if _ == "eth0":
            views.append(mv[off:off + len(f)])
            off += len(f)
    results = []
    for batch in (views, [bytes(v) for v in views]):
        s = router(True)
        s.receive_batch("eth0", batch, 0.0)
        results.append(observe(s))
    assert results[0] == results[1]
    assert sum(len(v) for v in results[0]["tx"].values()) == len(views)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(st.sampled_from(["eth0", "eth1"]), st.one_of(
    fuzz_frames, st.sampled_from([f for _, f in COMMON + UNCOMMON]))), max_size=20))
def test_random_frames_have_the_same_effects_with_and_without_the_fast_path(batch):
    fast, general = run_both(batch)
    assert fast == general


def test_many_destinations_through_a_default_route_match():
    frames = [("eth0", udp_frame(HOST_A, MAC0, A, f"172.16.{i // 250}.{i % 250 + 1}", 1, 2))
              for i in range(600)]

    def default(s):
        s.add_route(IPv4Network("0.0.0.0/0"), IPv4Address(B), None)
        s.add_route(IPv4Network("172.16.1.0/24"), IPv4Address("10.0.0.2"), "eth0")
    fast, general = run_both(frames, setup=default)
    assert fast == general
    assert len(fast["tx"]["eth1"]) == 350 and len(fast["tx"]["eth0"]) == 250


def test_counters_continue_through_the_fast_path_after_a_restore():
    s = router(True)
    fwd = [udp_frame(HOST_A, MAC0, A, B, 1, 2)] * 3
    s.receive_batch("eth0", fwd, 0.0)
    s.take_transmit()
    r = type(s).restore(s.snapshot(), s.cfg)
    r.receive_batch("eth0", fwd, 0.0)      # neighbor restored STALE: general path, then fast
    assert len(r.take_transmit()["eth1"]) == 3
    c = r.counters()
    before = s.counters()
    assert c["ipv4"]["forwarded"] == 6
    assert c["dev:eth1"]["tx_frames"] == before["dev:eth1"]["tx_frames"] + 3
    assert c["dev:eth0"]["rx_frames"] == before["dev:eth0"]["rx_frames"] + 3


# -- local UDP delivery and udp_sendto ---------------------------------------------------------

def sockets(s) -> dict:
    """Bound sockets: any address, one address, connected to A, bound to eth1."""
    out = {}
    for key, addr, port, dev in (("any", None, 53, None), ("ip1", IPv4Address(IP1), 54, None),
                                 ("conn", None, 55, None), ("dev", None, 56, "eth1")):
        sid = out[key] = s.udp_open()
        s.udp_bind(sid, addr, port, dev)
    s.udp_connect(out["conn"], IPv4Address(A), 1000)
    return out


def with_queues(s, socks) -> dict:
    o = observe(s)
    o["queued"] = {k: s.udp_recv(sid, 100) for k, sid in socks.items()}
    return o


UDP_LOCAL = [
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 53, b"q")),
    ("eth0", udp_frame(HOST_A, MAC0, A, IP1, 1000, 53, b"weak host" * 20)),
    ("eth0", udp_frame(HOST_A, MAC0, A, IP1, 1000, 54, b"odd")),
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 55, b"connected")),
    ("eth1", udp_frame(HOST_B, MAC1, B, IP1, 7, 56, b"on eth1")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / UDP(sport=9, dport=53, chksum=0) / b"n")),
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 53, b"")),
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 53, b"pad") + b"\0" * 12),
]

UDP_LOCAL_UNCOMMON = [
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 9)),                     # no socket
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 54)),                    # ip1 only
    ("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1001, 55)),                    # not the peer
    ("eth0", udp_frame(HOST_A, MAC0, A, IP1, 1000, 56)),                    # other device
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / UDP(dport=53, chksum=0x1234) / b"b")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / UDP(dport=53, len=30) / b"short")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0) / UDP(dport=53, len=4) / b"x")),
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, len=24) / b"\0\x35\0\x35")),
    ("eth0", udp_frame(HOST_A, BCAST, A, "10.0.0.255", 1000, 53)),           # broadcast
    ("eth0", ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, flags="MF") / UDP(dport=53) / (b"f" * 16))),
]


def run_both_udp(frames, setup=None, **cfg):
    out = []
    for fast in (True, False):
        s = router(fast, **cfg)
        socks = sockets(s)
        if setup:
            setup(s, socks)
        for dev, f in frames:
            s.receive_batch(dev, [f], 0.0)
        out.append(with_queues(s, socks))
    return out


def test_udp_to_a_bound_socket_takes_the_fast_path_and_queues_what_the_general_path_queues():
    s = router(True)
    socks = sockets(s)
    calls = []
    real = s.fast.receive
    s.fast.receive = lambda dev, f, now: calls.append(real(dev, f, now)) or calls[-1]
    for dev, f in UDP_LOCAL:
        s.receive_batch(dev, [f], 0.0)
    assert sum(calls) == len(UDP_LOCAL)
    calls.clear()
    for dev, f in UDP_LOCAL_UNCOMMON:
        s.receive_batch(dev, [f], 0.0)
    assert sum(calls) == 0
    fast, general = run_both_udp(UDP_LOCAL + UDP_LOCAL_UNCOMMON + UDP_LOCAL)
    assert fast == general
    assert [d.payload for d in fast["queued"]["ip1"]] == [b"odd", b"odd"]
    assert fast["queued"]["any"][0].src == IPv4Address(A)
    assert fast["queued"]["any"][0].dst == IPv4Address(IP0)
    assert fast["counters"]["udp"]["rx_no_port"] == 4


def test_received_datagram_records_ttl_and_tos_on_both_paths():
    # IP_RECVTTL and IP_RECVTOS: the core's Datagram keeps the IP header's TTL and TOS byte.
    frame = ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, ttl=33, tos=0x2A) / UDP(sport=1000, dport=53) / b"m")
    fast, general = run_both_udp([("eth0", frame)])
    for got in (fast, general):
        (d,) = got["queued"]["any"]
        assert (d.ttl, d.tos) == (33, 0x2A)


def test_full_socket_queue_is_counted_alike():
    frames = [("eth0", udp_frame(HOST_A, MAC0, A, IP0, 1000, 53, b"z" * 100))] * 12
    fast, general = run_both_udp(frames, udp_recv_queue_datagrams=5)
    assert fast == general
    assert fast["counters"]["udp"]["rx_queue_full"] == 7


class _Raised:
    def __init__(self, code):
        self.code = code

    def __eq__(self, other):
        return isinstance(other, _Raised) and other.code == self.code

    def __repr__(self):
        return f"raised {self.code}"


SENDS = [   # (socket key, payload, destination, port, device)
    ("any", b"reply", A, 1000, None),
    ("any", b"odd", B, 7, None),
    ("ip1", b"from ip1", A, 1000, None),                   # bound address is the source
    ("any", b"via gw", "8.8.8.8", 53, None),               # gateway route on eth1
    ("any", b"dev ok", B, 7, "eth1"),
    ("any", b"dev other", B, 7, "eth0"),                   # route not via that device
    ("dev", b"bound dev", B, 7, None),
    ("dev", b"bound dev other way", A, 7, None),
    ("any", b"x" * 1600, A, 1000, None),                   # fragments
    ("any", b"x" * 1472, A, 1000, None),                   # exactly the MTU
    ("any", b"unresolved", "10.0.0.77", 1000, None),       # ARP first
    ("any", b"own", IP1, 53, None),                        # to ourselves: lo
    ("any", b"lo", "127.0.0.1", 53, None),
    ("any", b"bcast", "10.0.0.255", 53, None),             # needs SO_BROADCAST
    ("any", b"limited", "255.255.255.255", 53, None),
    ("any", b"mcast", "224.0.0.9", 53, None),
    ("any", b"zero", "0.0.0.0", 53, None),
    ("any", b"no route", "172.16.0.1", 53, None),
    ("unbound", b"ephemeral", A, 1000, None),              # binds first (the same port)
    ("any", b"", A, 1000, None),
]


def run_sends(fast: bool, sends, setup=None):
    s = router(True)
    s.add_route(IPv4Network("8.8.8.0/24"), IPv4Address(B), None)
    # Both neighbors in use (DELAY), so that sends to them would only transmit.
    s.receive_batch("eth0", [udp_frame(HOST_A, MAC0, A, B, 1, 2)], 0.0)
    s.receive_batch("eth1", [udp_frame(HOST_B, MAC1, B, A, 1, 2)], 0.0)
    socks = sockets(s)
    socks["unbound"] = s.udp_open()
    if not fast:
        s.fast.udp_send = lambda *a: False
    if setup:
        setup(s)
    results = []
    for key, payload, dst, port, device in sends:
        try:
            s.udp_sendto(socks[key], payload, int(IPv4Address(dst)), port, 0.0, device=device)
            results.append(None)
        except Exception as e:   # StackError: the codes must agree
            results.append(_Raised(getattr(e, "code", type(e).__name__)))
    o = observe(s)
    o["results"] = results
    o["sockets"] = s.sockets()
    return o


def test_udp_sendto_builds_in_one_buffer_what_the_general_path_builds():
    fast, general = run_sends(True, SENDS), run_sends(False, SENDS)
    assert fast == general
    assert fast["results"].count(None) == 13
    assert fast["results"][13] == _Raised("permission_denied")


def test_udp_sendto_fast_path_is_taken_only_for_plain_unicast_to_a_resolved_neighbor():
    counts = []

    def spy(s):
        real = s.fast.udp_send
        s.fast.udp_send = lambda *a: counts.append(real(*a)) or counts[-1]
    run_sends(True, SENDS, setup=spy)
    took = [i for i, t in enumerate(counts) if t]
    # replies to A and B, bound source, via the gateway, device matching, bound device,
    # a full-MTU datagram, to our own address and to 127.0.0.1 (looped back), and an empty one
    assert took == [0, 1, 2, 3, 4, 6, 9, 11, 12, 19]


def test_udp_sendto_follows_configuration_changes():
    def churn(s):
        s.set_mtu("eth0", 600)
        s.del_address("eth1", IPv4Interface(f"{IP1}/24"))
        s.add_address("eth1", IPv4Interface("192.168.1.3/24"))
        s.add_address("eth1", IPv4Interface("172.31.0.1/16"))
    sends = [("any", b"y" * 700, A, 1000, None), ("any", b"y", A, 1000, None),
             ("any", b"z", B, 7, None), ("any", b"gw", "8.8.8.8", 1, None)]
    fast, general = run_sends(True, sends + sends, setup=churn), run_sends(False, sends + sends,
                                                                            setup=churn)
    assert fast == general


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(st.sampled_from(["eth0", "eth1"]), st.one_of(
    fuzz_frames, st.sampled_from([f for _, f in UDP_LOCAL + UDP_LOCAL_UNCOMMON]))), max_size=20),
    flips=st.lists(st.tuples(st.integers(0, 19), st.integers(14, 60)), max_size=4))
def test_random_frames_to_bound_sockets_have_the_same_effects_with_and_without_the_fast_path(
        batch, flips):
    batch = [list(x) for x in batch]
    for i, at in flips:      # damage a byte of a header or payload: length, ports, checksums
        if i < len(batch) and at < len(batch[i][1]):
            f = bytearray(batch[i][1])
            f[at] ^= 0x5A
            batch[i][1] = bytes(f)
    fast, general = run_both_udp([tuple(x) for x in batch])
    assert fast == general
