"""Random and mutated frames never raise out of Stack.receive and never overgrow a table."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.packet import Raw

from components.netstack.core import StackError

from .util import (A, B, HOST_A, IP0, IP1, MAC0, arp_reply, arp_request, ip_frame, make_stack,
                   ping_frame, udp_frame)

LIMITS = dict(neighbor_table_size=16, neighbor_queue_packets=4, reassembly_max_datagrams=8,
              reassembly_bytes_total=20000, reassembly_bytes_per_source=8000,
              udp_recv_queue_datagrams=4, tx_queue_frames=64, max_events=32)

SEEDS = [
    ping_frame(HOST_A, MAC0, A, IP0),
    ping_frame(HOST_A, MAC0, A, B, ttl=1),
    ping_frame(HOST_A, MAC0, A, "8.8.8.8"),
    udp_frame(HOST_A, MAC0, A, IP0, 68, 67, b"x" * 40),
    udp_frame(HOST_A, "ff:ff:ff:ff:ff:ff", "0.0.0.0", "255.255.255.255", 68, 67),
    arp_request(HOST_A, A, IP0),
    arp_reply(HOST_A, A, MAC0, IP0),
    arp_request(HOST_A, IP0, IP0),
    ip_frame(HOST_A, MAC0, IP(src=A, dst=IP0, options=b"\x94\x04\x00\x00") / UDP(dport=9)),
] + [ip_frame(HOST_A, MAC0, f) for f in fragment(
    IP(src=A, dst=IP0, id=3) / ICMP() / Raw(b"f" * 600), fragsize=128)]


def mutate(frame: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(frame)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    if cut is not None and b:
        b = b[: cut % (len(b) + 1)]
    return bytes(b)


POOL = [A, B, IP0, IP1, "10.0.0.255", "255.255.255.255", "0.0.0.0", "127.0.0.1", "224.0.0.1",
        "8.8.8.8", "192.168.1.7", "10.0.0.9", "240.1.2.3"]
MACS = [MAC0, "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "02:00:00:00:00:99"]


@st.composite
def structured(draw):
    """Well-formed (checksummed) packets with hostile field values, so parsing succeeds and
    the deeper paths (forwarding, reassembly, ICMP errors, sockets) get exercised."""
    src, dst = draw(st.sampled_from(POOL)), draw(st.sampled_from(POOL))
    proto = draw(st.sampled_from([1, 17, 6, 253]))
    payload = draw(st.binary(max_size=300))
    if proto == 17:
        l4 = UDP(sport=draw(st.integers(0, 65535)), dport=draw(st.sampled_from([67, 68, 9, 5353]))) / payload
    elif proto == 1:
        inner = bytes(IP(src=draw(st.sampled_from(POOL)), dst=draw(st.sampled_from(POOL)),
                         proto=draw(st.sampled_from([1, 17]))) / payload[:8])
        l4 = ICMP(type=draw(st.sampled_from([0, 3, 5, 8, 11, 12, 13])),
                  code=draw(st.integers(0, 15))) / (inner if draw(st.booleans()) else payload)
    else:
        l4 = Raw(payload)
    ip = IP(src=src, dst=dst, ttl=draw(st.integers(0, 255)), id=draw(st.integers(0, 3)),
            flags=draw(st.sampled_from([0, 1, 2])), frag=draw(st.sampled_from([0, 0, 1, 2, 8, 8189])),
            proto=proto) / l4
    return ip_frame(HOST_A, draw(st.sampled_from(MACS)), ip)


frames = st.one_of(
    structured(),
    st.binary(max_size=200),
    st.builds(mutate, st.sampled_from(SEEDS),
              st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
              st.none() | st.integers(0, 2000)),
    st.sampled_from(SEEDS),
)


def check_limits(s):
    c = s.counters()
    assert len(s.neighbors()) <= LIMITS["neighbor_table_size"]
    assert all(n.queued <= LIMITS["neighbor_queue_packets"] for n in s.neighbors())
    assert c["table:reassembly"]["datagrams"] <= LIMITS["reassembly_max_datagrams"]
    assert c["table:reassembly"]["bytes"] <= LIMITS["reassembly_bytes_total"]
    assert all(d.tx_queued <= LIMITS["tx_queue_frames"] for d in s.devices())
    assert c["table:events"]["queued"] <= LIMITS["max_events"]
    assert c["stack"].get("internal_errors", 0) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(st.sampled_from(["eth0", "eth1", "tun0"]), frames,
                                st.floats(0, 5)), max_size=30))
def test_random_and_mutated_frames_never_raise_and_tables_stay_bounded(batch):
    s = make_stack(**LIMITS)
    s.add_device("tun0", kind="ip")
    sid = s.udp_open()
    s.udp_bind(sid, None, 67)
    now = 0.0
    for dev, frame, dt in batch:
        now += dt
        # strict config: any internal error raises out of receive and fails the test
        s.receive(dev, frame[14:] if dev == "tun0" else frame, now)
        if dev == "eth0" and now < 2:
            try:
                s.ping(IPv4Address(B if dt < 2 else "10.0.0.%d" % int(dt * 40)), 1, 1, b"p", now)
            except StackError:
                pass
        s.poll(now)
        check_limits(s)
    s.take_transmit()
    s.poll(now + 100.0)
    check_limits(s)
    assert s.counters()["table:reassembly"]["datagrams"] == 0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), peers=st.integers(1, 40))
def test_many_sources_and_destinations_keep_neighbor_table_bounded(n, peers):
    s = make_stack(**LIMITS)
    for i in range(n):
        p = i % peers
        mac = f"02:00:00:00:20:{p:02x}"
        s.receive("eth0", arp_request(mac, f"10.0.0.{10 + p}", IP0), i * 0.01)
        s.receive("eth0", ping_frame(HOST_A, MAC0, A, f"192.168.1.{10 + p}"), i * 0.01)
        check_limits(s)
