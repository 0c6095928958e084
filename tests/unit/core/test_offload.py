"""Partial checksums and GSO segmentation, checked with scapy as the independent implementation:
every piece parses in scapy, scapy recomputes the same IP and transport checksums, and the
payloads put back together are the super-frame's."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from tests.scapy_checks import checksums_agree

from components.netstack.core.offload import (MAX_SEGMENTS, MAX_SUPER_FRAME, NO_OFFLOADS,
                                              OffloadError, PortOffloads, Treatment,
                                              complete_checksum, segment_gso, to_plain_frames,
                                              treatment)
from components.netstack.wire import ParseError, internet_checksum, pseudo_header_sum
from components.netstack.wire.virtio_net import (F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE,
                                                 GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, HDR_NONE,
                                                 VirtioNetHdr)

L2 = Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:01")
V4 = dict(src="10.0.0.2", dst="192.168.1.2")
V6 = dict(src="2001:db8::2", dst="2001:db8:1::2")
PAYLOAD = bytes((i * 7 + 3) & 0xFF for i in range(10_001))  # odd length, no repeating 2-byte words
ALL = PortOffloads(csum=True, tso4=True, tso6=True, tso_ecn=True, uso=True)


def _partial(pkt, layer) -> bytes:
    """pkt's bytes as a sender with checksum offload emits them: the transport checksum field
    holds the pseudo-header sum, not inverted (what Linux puts there for CHECKSUM_PARTIAL)."""
    raw = bytearray(bytes(pkt))
    l4 = len(raw) - len(pkt[layer])
    pos = l4 + (16 if layer is TCP else 6)
    full = int.from_bytes(raw[pos:pos + 2], "big")
    raw[pos:pos + 2] = b"\0\0"
    # The pseudo-header sum is what is left when the segment's own words are taken out.
    segment_sum = (~internet_checksum(bytes(raw[l4:]))) & 0xFFFF
    total = (~full & 0xFFFF) + (~segment_sum & 0xFFFF)  # pseudo = total - segment (mod 0xFFFF)
    pseudo = (total % 0xFFFF) or 0xFFFF
    raw[pos:pos + 2] = pseudo.to_bytes(2, "big")
    return bytes(raw)


def _tso_hdr(frame: bytes, gso_type: int, gso_size: int, layer=TCP) -> VirtioNetHdr:
    e = Ether(frame)
    l4 = len(frame) - len(e[layer])
    hdr_len = l4 + (len(e[TCP]) - len(e[TCP].payload) if layer is TCP else 8)
    return VirtioNetHdr(F_NEEDS_CSUM, gso_type, hdr_len, gso_size, l4,
                        16 if layer is TCP else 6)


def _scapy_agrees(frame: bytes, layer) -> Ether:
    """The frame parsed by scapy, asserting that scapy computes the same checksums."""
    p = Ether(frame)
    header_ok, l4_ok = checksums_agree(p, layer)
    assert header_ok, "IPv4 header checksum"
    assert l4_ok, f"{layer.__name__} checksum"
    return p


def _ip_len(p: Ether) -> int:
    return p[IP].len if IP in p else 40 + p[IPv6].plen


def _super_tcp(ip, flags="PA", payload=PAYLOAD, vlan=False, **tcp):
    l2 = L2 / Dot1Q(vlan=7) if vlan else L2
    return bytes(l2 / ip / TCP(sport=40000, dport=5001, seq=0xFFFFF000, ack=77, flags=flags,
                               window=512, **tcp) / Raw(payload))


# -- complete_checksum ------------------------------------------------------------------------

@pytest.mark.parametrize("ip", [IP(**V4), IPv6(**V6)], ids=["v4", "v6"])
@pytest.mark.parametrize("layer", [TCP, UDP])
@pytest.mark.parametrize("size", [0, 1, 2, 1447])
def test_partial_checksum_completed_is_the_one_scapy_computes(ip, layer, size):
    l4 = TCP(sport=1, dport=2, flags="A") if layer is TCP else UDP(sport=1, dport=2)
    pkt = L2 / ip / l4 / Raw(PAYLOAD[:size])
    frame = _partial(pkt, layer)
    assert frame != bytes(pkt)
    start = len(frame) - len(pkt[layer])
    done = complete_checksum(frame, start, 16 if layer is TCP else 6)
    assert done == bytes(pkt)
    _scapy_agrees(done, layer)


def test_complete_checksum_ignores_zero_ethernet_padding():
    pkt = L2 / IP(**V4) / UDP(sport=1, dport=2) / Raw(b"x")
    frame = _partial(pkt, UDP) + bytes(60 - len(pkt))
    done = complete_checksum(frame, 34, 6)
    assert done[:len(pkt)] == bytes(pkt) and len(done) == 60


def test_udp_checksum_that_computes_to_zero_is_sent_as_all_ones():
    # Choose the last payload word so that the datagram's checksum comes out 0.
    base = L2 / IP(**V4) / UDP(sport=1, dport=2) / Raw(b"ab\0\0")
    c = Ether(bytes(base))[UDP].chksum
    pkt = L2 / IP(**V4) / UDP(sport=1, dport=2) / Raw(b"ab" + c.to_bytes(2, "big"))
    frame = _partial(pkt, UDP)
    done = complete_checksum(frame, 34, 6)
    assert done[40:42] == b"\xff\xff"
    pseudo = pseudo_header_sum(bytes([10, 0, 0, 2]), bytes([192, 168, 1, 2]), 17, len(done) - 34)
    assert internet_checksum(done[34:], pseudo) == 0  # still a valid checksum
    assert Ether(done)[UDP].chksum == 0xFFFF


@pytest.mark.parametrize("start,offset", [(60, 16), (34, 100), (-1, 16), (34, 7)])
def test_checksum_field_outside_the_frame_is_refused(start, offset):
    frame = bytes(L2 / IP(**V4) / TCP() / Raw(b"abc"))
    with pytest.raises(OffloadError):
        complete_checksum(frame, start, offset)


# -- segment_gso: TCP -------------------------------------------------------------------------

@pytest.mark.parametrize("ip,gso", [(IP(id=65530, flags="DF", **V4), GSO_TCPV4),
                                    (IPv6(**V6), GSO_TCPV6)], ids=["v4", "v6"])
@pytest.mark.parametrize("vlan", [False, True], ids=["untagged", "vlan"])
def test_tcp_super_frame_becomes_mtu_sized_segments_scapy_accepts(ip, gso, vlan):
    sup = _super_tcp(ip, flags="FPA", vlan=vlan, options=[("NOP", None), ("NOP", None),
                                                         ("Timestamp", (1, 2))])
    frame = _partial(Ether(sup), TCP)
    mss = 1500 - (20 if gso == GSO_TCPV4 else 40) - 32
    segs = segment_gso(frame, _tso_hdr(frame, gso, mss), 1500)
    assert len(segs) == -(-len(PAYLOAD) // mss)
    data = b""
    for i, seg in enumerate(segs):
        p = _scapy_agrees(seg, TCP)
        assert _ip_len(p) <= 1500
        assert (Dot1Q in p) == vlan
        assert p[TCP].seq == (0xFFFFF000 + len(data)) & 0xFFFFFFFF  # wraps past 2**32
        assert p[TCP].ack == 77 and p[TCP].window == 512
        assert dict(p[TCP].options)["Timestamp"] == (1, 2)
        last = i == len(segs) - 1
        assert str(p[TCP].flags) == ("FPA" if last else "A")
        if IP in p:
            assert p[IP].id == (65530 + i) & 0xFFFF and p[IP].flags == "DF"
        data += bytes(p[TCP].payload)
    assert data == PAYLOAD


def test_cwr_stays_on_the_first_segment_only():
    frame = _super_tcp(IP(**V4), flags="PAC")  # C = CWR
    segs = segment_gso(frame, _tso_hdr(frame, GSO_TCPV4 | GSO_ECN, 1448), 1500)
    flags = [str(Ether(s)[TCP].flags) for s in segs]
    assert flags[0] == "AC" and flags[-1] == "PA" and set(flags[1:-1]) == {"A"}


def test_ipv4_options_are_copied_into_every_segment():
    frame = _super_tcp(IP(options=b"\x94\x04\x00\x00", **V4))  # router alert
    segs = segment_gso(frame, _tso_hdr(frame, GSO_TCPV4, 1000), 1500)
    for s in segs:
        p = _scapy_agrees(s, TCP)
        assert p[IP].ihl == 6 and bytes(p[IP].options[0]) == b"\x94\x04\x00\x00"


def test_tcp_gso_size_larger_than_the_mtu_is_recut_to_fit():
    frame = _super_tcp(IP(**V4))
    segs = segment_gso(frame, _tso_hdr(frame, GSO_TCPV4, 8000), 1280)
    assert all(len(Ether(s)[IP]) <= 1280 for s in segs)
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == PAYLOAD
    assert len(segs) == -(-len(PAYLOAD) // 1240)


def test_super_frame_no_longer_than_gso_size_is_one_segment_with_full_checksum():
    frame = _partial(Ether(_super_tcp(IP(**V4), payload=b"short")), TCP)
    (seg,) = segment_gso(frame, _tso_hdr(frame, GSO_TCPV4, 1448), 1500)
    assert seg == _super_tcp(IP(**V4), payload=b"short")


def test_gso_without_needs_csum_is_segmented_too():
    frame = _super_tcp(IP(**V4))
    hdr = VirtioNetHdr(0, GSO_TCPV4, 0, 1448, 0, 0)
    segs = segment_gso(frame, hdr, 1500)
    for s in segs:
        _scapy_agrees(s, TCP)


def test_sixty_four_kib_super_frame_segments_within_bounds():
    payload = bytes(range(256)) * 255 + b"x" * (65535 - 20 - 20 - 65280)
    frame = _partial(Ether(_super_tcp(IP(**V4), payload=payload)), TCP)
    assert len(Ether(frame)[IP]) == 65535
    segs = segment_gso(frame, _tso_hdr(frame, GSO_TCPV4, 1460), 1500)
    assert len(segs) == 45
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload
    for s in segs[::11]:
        _scapy_agrees(s, TCP)


# -- segment_gso: UDP_L4 -------------------------------------------------------------------

@pytest.mark.parametrize("ip", [IP(id=9, **V4), IPv6(**V6)], ids=["v4", "v6"])
def test_udp_l4_super_frame_becomes_datagrams_of_gso_size(ip):
    payload = PAYLOAD[:4000]
    frame = _partial(L2 / ip / UDP(sport=4000, dport=53) / Raw(payload), UDP)
    segs = segment_gso(frame, _tso_hdr(frame, GSO_UDP_L4, 1200, UDP), 1500)
    assert [len(Ether(s)[UDP].payload) for s in segs] == [1200, 1200, 1200, 400]
    for i, s in enumerate(segs):
        p = _scapy_agrees(s, UDP)
        assert p[UDP].len == 8 + len(p[UDP].payload) and p[UDP].sport == 4000
        assert bytes(p[UDP].payload) == payload[1200 * i:1200 * (i + 1)]
        if IP in p:
            assert p[IP].id == 9 + i


def test_udp_l4_datagram_larger_than_the_mtu_is_refused_unless_mtu_is_none():
    frame = bytes(L2 / IP(**V4) / UDP(sport=1, dport=2) / Raw(PAYLOAD[:5000]))
    hdr = _tso_hdr(frame, GSO_UDP_L4, 2000, UDP)
    with pytest.raises(OffloadError, match="does not fit"):
        segment_gso(frame, hdr, 1500)
    segs = segment_gso(frame, hdr, None)
    assert [len(Ether(s)[UDP].payload) for s in segs] == [2000, 2000, 1000]


# -- segment_gso: refusals ---------------------------------------------------------------

def _good():
    frame = _super_tcp(IP(**V4))
    return frame, _tso_hdr(frame, GSO_TCPV4, 1448)


def _with(hdr: VirtioNetHdr, **kw) -> VirtioNetHdr:
    f = {k: getattr(hdr, k) for k in ("flags", "gso_type", "hdr_len", "gso_size", "csum_start",
                                      "csum_offset")}
    f.update(kw)
    return VirtioNetHdr(**f)


@pytest.mark.parametrize("change,match", [
    (dict(hdr_len=70000), "hdr_len"),
    (dict(csum_start=30), "csum_start"),
    (dict(csum_offset=6), "csum_start"),
    (dict(gso_size=50), "exceed the limit"),
    (dict(gso_type=GSO_TCPV6), "ethertype"),
    (dict(gso_type=GSO_UDP_L4), "IP protocol 6"),
    (dict(gso_type=GSO_NONE, gso_size=0), "gso_type NONE"),
], ids=["hdr_len", "csum_start", "csum_offset", "segments", "v6-on-v4", "udp-on-tcp", "none"])
def test_super_frame_with_nonsense_header_is_refused(change, match):
    frame, hdr = _good()
    with pytest.raises(OffloadError, match=match):
        segment_gso(frame, _with(hdr, **change), 1500)


@pytest.mark.parametrize("mangle,match", [
    (lambda f: f[:40], "hdr_len"),
    (lambda f: f[:12], "hdr_len"),
    (lambda f: f[:20] + b"\x20\x00" + f[22:], "fragment"),                # MF set
    (lambda f: f[:14] + b"\x46" + f[15:], "data offset|TCP"),           # IHL 6 shifts TCP
    (lambda f: f[:16] + b"\xff\xff" + f[18:], "total length"),
    (lambda f: f[:47] + bytes([f[47] | 0x02]) + f[48:], "flags"),       # SYN
    (lambda f: f[:47] + bytes([f[47] | 0x20]) + f[48:], "flags"),       # URG
], ids=["truncated", "no-l2", "fragment", "ihl", "length", "syn", "urg"])
def test_malformed_super_frame_is_refused(mangle, match):
    frame, hdr = _good()
    with pytest.raises(OffloadError, match=match):
        segment_gso(mangle(frame), hdr, 1500)


def test_super_frame_beyond_64_kib_is_refused():
    frame, hdr = _good()
    with pytest.raises(OffloadError, match="exceeds"):
        segment_gso(frame + bytes(MAX_SUPER_FRAME), hdr, 1500)


def test_mtu_too_small_for_the_headers_is_refused():
    frame, hdr = _good()
    with pytest.raises(OffloadError, match="no room"):
        segment_gso(frame, hdr, 40)


def test_offload_error_is_a_parse_error_so_count_and_drop_catches_it():
    assert issubclass(OffloadError, ParseError)
    assert MAX_SEGMENTS >= 123  # 64 KiB at the default MSS of 536


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_headers_and_mangled_frames_raise_only_offload_error(data):
    frame, _ = _good()
    frame = bytearray(frame[:data.draw(st.integers(0, len(frame)))])
    for _ in range(data.draw(st.integers(0, 4))):
        if frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    hdr = VirtioNetHdr(data.draw(st.sampled_from([0, F_NEEDS_CSUM])),
                       data.draw(st.sampled_from([GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
                                                  GSO_TCPV4 | GSO_ECN])),
                       data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(1, 0xFFFF)),
                       data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(0, 40)) * 2)
    mtu = data.draw(st.sampled_from([None, 68, 576, 1500, 9000]))
    try:
        segs = segment_gso(bytes(frame), hdr, mtu)
    except OffloadError:
        return
    assert 1 <= len(segs) <= MAX_SEGMENTS


# -- treatment -----------------------------------------------------------------------------

TCP4 = VirtioNetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16)
TCP4_ECN = VirtioNetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 54, 1448, 34, 16)
TCP6 = VirtioNetHdr(F_NEEDS_CSUM, GSO_TCPV6, 74, 1428, 54, 16)
USO = VirtioNetHdr(F_NEEDS_CSUM, GSO_UDP_L4, 42, 1200, 34, 6)
PARTIAL = VirtioNetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16)
VALID = VirtioNetHdr(F_DATA_VALID, GSO_NONE, 0, 0, 0, 0)


@pytest.mark.parametrize("hdr,to,expected", [
    (HDR_NONE, None, Treatment.PLAIN),
    (VALID, None, Treatment.DELIVER_WHOLE),
    (PARTIAL, None, Treatment.DELIVER_WHOLE),
    (TCP4, None, Treatment.DELIVER_WHOLE),
    (TCP6, None, Treatment.DELIVER_WHOLE),
    (USO, None, Treatment.SEGMENT),           # each piece is a datagram of its own
    (HDR_NONE, ALL, Treatment.PLAIN),
    (VALID, NO_OFFLOADS, Treatment.PLAIN),
    (PARTIAL, NO_OFFLOADS, Treatment.COMPLETE_CHECKSUM),
    (PARTIAL, PortOffloads(csum=True), Treatment.PASS_THROUGH),
    (TCP4, NO_OFFLOADS, Treatment.SEGMENT),
    (TCP4, PortOffloads(csum=True, tso6=True), Treatment.SEGMENT),
    (TCP4, PortOffloads(tso4=True), Treatment.SEGMENT),   # TSO needs checksum offload
    (TCP4, PortOffloads(csum=True, tso4=True), Treatment.PASS_THROUGH),
    (TCP4_ECN, PortOffloads(csum=True, tso4=True), Treatment.SEGMENT),
    (TCP4_ECN, ALL, Treatment.PASS_THROUGH),
    (TCP6, PortOffloads(csum=True, tso6=True), Treatment.PASS_THROUGH),
    (USO, PortOffloads(csum=True, tso4=True, tso6=True), Treatment.SEGMENT),
    (USO, ALL, Treatment.PASS_THROUGH),
])
def test_treatment_of_each_header_for_each_destination(hdr, to, expected):
    assert treatment(hdr, to) is expected


def test_port_offloads_round_trip_through_names_and_ignore_unknown_ones():
    assert PortOffloads.from_names(["csum", "tso4", "gro_hw"]) == PortOffloads(csum=True, tso4=True)
    assert PortOffloads.from_names(ALL.names()) == ALL
    assert NO_OFFLOADS.names() == ()


def test_to_plain_frames_segments_completes_or_copies():
    frame, hdr = _good()
    assert len(to_plain_frames(frame, hdr, 1500)) == 7
    pkt = L2 / IP(**V4) / TCP(flags="A") / Raw(b"abc")
    assert to_plain_frames(_partial(pkt, TCP), PARTIAL, 1500) == [bytes(pkt)]
    assert to_plain_frames(bytes(pkt), HDR_NONE, 1500) == [bytes(pkt)]


def test_truncated_frame_is_refused_whatever_hdr_len_says():
    frame, hdr = _good()
    for cut in (12, 30, 40, 60):
        with pytest.raises(OffloadError):
            segment_gso(frame[:cut], _with(hdr, hdr_len=0), 1500)


def test_our_tcp_super_frame_gets_the_header_that_has_the_device_cut_it_right():
    from components.netstack.core.offload import tso_frame
    from components.netstack.wire.virtio_net import split_prefixed
    payload = bytes(range(256)) * 40                    # 10240 bytes
    pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
           IP(src="10.0.0.1", dst="10.0.0.2", id=7) /
           TCP(sport=40000, dport=80, seq=1000, ack=5, flags="PA",
               options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload)
    out = tso_frame(bytes(pkt), 1500, 12)
    hdr, frame = split_prefixed(out, 12)
    assert hdr.gso_protocol == GSO_TCPV4 and hdr.needs_csum
    assert hdr.gso_size == 1448 and hdr.hdr_len == 14 + 20 + 32          # 1500 - 20 - 32
    assert (hdr.csum_start, hdr.csum_offset) == (34, 16)
    # Cut as the kernel would (segment_gso mirrors tcp_gso_segment): every piece fits the MTU,
    # carries a valid checksum, and together they are the payload.
    pieces = segment_gso(frame, hdr, 1500)
    assert all(len(p) - 14 <= 1500 for p in pieces)
    got = b"".join(bytes(Ether(p)[TCP].payload) for p in pieces)
    assert got == payload
    assert all(checksums_agree(Ether(p), TCP) == (True, True) for p in pieces)
    with pytest.raises(ParseError):
        tso_frame(bytes(Ether() / IP() / UDP() / Raw(b"x" * 3000)), 1500, 12)
