"""The flat fast-path view agrees with the checked parsers, and its in-place patches
(RFC 1624 incremental checksums) give the bytes a full rebuild gives."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from components.netstack.wire import (ETHERTYPE_IPV4, PROTO_ICMP, EthernetFrame, Icmpv4Message,
                                      Ipv4Packet, ParseError, build_echo, build_ethernet,
                                      build_ipv4, internet_checksum)
from components.netstack.wire import PROTO_UDP, UdpDatagram, build_udp
from components.netstack.wire.flat import (build_udp_frame, echo_reply_in_place, forward_in_place,
                                           icmp_checksum_ok, icmp_head, parse_plain_ipv4,
                                           udp_checksum_ok, udp_head)
from components.netstack.wire.icmpv4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST

MAC_A = bytes.fromhex("0200000000aa")
MAC_B = bytes.fromhex("020000000001")
addrs = st.integers(0, 0xFFFFFFFF).map(IPv4Address)


def frame_of(packet: bytes, pad: bytes = b"") -> bytes:
    return build_ethernet(MAC_B, MAC_A, ETHERTYPE_IPV4, packet) + pad


@st.composite
def plain_packets(draw):
    """(frame, fields) of well-formed plain IPv4 frames with arbitrary header values."""
    src, dst = draw(addrs), draw(addrs)
    fields = dict(ttl=draw(st.integers(2, 255)), ident=draw(st.integers(0, 0xFFFF)),
                  dont_fragment=draw(st.booleans()), dscp=draw(st.integers(0, 63)),
                  ecn=draw(st.integers(0, 3)))
    proto = draw(st.integers(0, 255))
    payload = draw(st.binary(max_size=80))
    return frame_of(build_ipv4(src, dst, proto, payload, **fields),
                    draw(st.sampled_from([b"", b"\0" * 6]))), (src, dst, proto, fields)


@settings(max_examples=300, deadline=None)
@given(plain_packets())
def test_plain_view_reads_what_the_checked_parsers_read(case):
    frame, (src, dst, proto, f) = case
    for buf in (frame, memoryview(frame), bytearray(frame)):
        h = parse_plain_ipv4(buf)
        assert h is not None
        dmac, smac, tos, total, ident, flags, ttl, p, csum, s, d = h
        pkt = Ipv4Packet.parse(EthernetFrame.parse(frame).payload)
        assert (dmac, smac) == (MAC_B, MAC_A)
        assert (s, d, p, ttl, ident) == (int(pkt.src), int(pkt.dst), pkt.proto, pkt.ttl, pkt.ident)
        assert (tos, total, csum) == ((pkt.dscp << 2) | pkt.ecn, pkt.total_length, pkt.checksum)
        assert bool(flags & 0x4000) == pkt.dont_fragment == f["dont_fragment"]


@settings(max_examples=400, deadline=None)
@given(plain_packets(), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=3),
       st.integers(0, 120))
def test_plain_view_never_accepts_what_the_checked_parsers_refuse(case, edits, cut):
    frame, _ = case
    b = bytearray(frame)
    for pos, val in edits:
        b[pos % len(b)] = val
    b = bytes(b[:cut])
    h = parse_plain_ipv4(b)
    if h is None:
        return
    # Accepted: then it is untagged IPv4, IHL 5, not a fragment, and parses cleanly.
    eth = EthernetFrame.parse(b)
    assert eth.ethertype == ETHERTYPE_IPV4 and eth.vlan_id is None
    pkt = Ipv4Packet.parse(eth.payload)
    assert pkt.header_len == 20 and not pkt.is_fragment and pkt.total_length == h[3]


def test_plain_view_refuses_a_bad_header_checksum_options_and_fragments():
    good = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"x" * 12)
    assert parse_plain_ipv4(frame_of(good)) is not None
    bad = bytearray(good)
    bad[11] ^= 1
    assert parse_plain_ipv4(frame_of(bytes(bad))) is None
    with_opts = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"x",
                           options=b"\x94\x04\x00\x00")
    frag = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"x" * 8,
                      more_fragments=True)
    later = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"x" * 8,
                       frag_offset=8)
    for p in (with_opts, frag, later):
        assert parse_plain_ipv4(frame_of(p)) is None
    assert parse_plain_ipv4(frame_of(good)[:-1]) is None      # total length beyond the frame


@settings(max_examples=400, deadline=None)
@given(plain_packets())
def test_forward_patch_equals_rebuilding_the_header_with_ttl_minus_one(case):
    frame, (src, dst, proto, f) = case
    h = parse_plain_ipv4(frame)
    total, ttl, csum = h[3], h[6], h[8]
    buf = bytearray(frame[:14 + total])
    forward_in_place(buf, b"\x02" * 6, b"\x04" * 6, ttl, proto, csum)
    payload = frame[34:14 + total]
    rebuilt = build_ipv4(src, dst, proto, payload, **dict(f, ttl=f["ttl"] - 1))
    assert bytes(buf) == build_ethernet(b"\x02" * 6, b"\x04" * 6, ETHERTYPE_IPV4, rebuilt)
    assert internet_checksum(buf[14:34]) == 0


def test_forward_patch_across_the_checksum_wrap():
    # Headers whose checksum is 0x0000 or 0xFFFE before or after: the representations of
    # zero are where an incremental update can go wrong (RFC 1624 §3).
    seen = set()
    for ident in range(0x10000):
        pkt = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"", ttl=2,
                         ident=ident)
        csum = (pkt[10] << 8) | pkt[11]
        if csum not in (0, 1, 0xFEFF, 0xFFFE) or csum in seen:
            continue
        seen.add(csum)
        buf = bytearray(frame_of(pkt))
        forward_in_place(buf, MAC_B, MAC_A, 2, 17, csum)
        again = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), 17, b"", ttl=1,
                           ident=ident)
        assert bytes(buf[14:]) == again
    assert {0, 0xFFFE} <= seen


@settings(max_examples=300, deadline=None)
@given(addrs, addrs, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=200),
       st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(1, 255), st.integers(0, 255),
       st.booleans())
def test_echo_reply_patch_equals_building_the_reply(src, dst, ident, seq, data, code, new_ident,
                                                    ttl, tos, df):
    echo = bytearray(build_echo(ICMP_ECHO_REQUEST, ident, seq, data))
    if code:    # a request with a non-zero code; the reply's code is 0 all the same
        echo[1] = code
        echo[2:4] = b"\0\0"
        echo[2:4] = internet_checksum(bytes(echo)).to_bytes(2, "big")
    request = build_ipv4(src, dst, PROTO_ICMP, bytes(echo), ttl=9, dont_fragment=df,
                         dscp=tos >> 2, ecn=tos & 3)
    frame = frame_of(request)
    assert icmp_checksum_ok(frame, len(request))
    _, rcode, rcsum = icmp_head(frame)
    buf = bytearray(frame)
    echo_reply_in_place(buf, MAC_A, MAC_B, len(request), new_ident, ttl, int(dst), int(src),
                        rcode, rcsum)
    reply = build_ipv4(dst, src, PROTO_ICMP, build_echo(ICMP_ECHO_REPLY, ident, seq, data),
                       ttl=ttl, ident=new_ident)
    assert bytes(buf) == build_ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, reply)
    assert Icmpv4Message.parse(buf[34:]).type == ICMP_ECHO_REPLY


def test_icmp_checksum_covers_the_whole_message_and_only_it():
    request = build_ipv4(IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"), PROTO_ICMP,
                         build_echo(ICMP_ECHO_REQUEST, 1, 2, b"abc"))
    assert icmp_checksum_ok(frame_of(request, b"\xff" * 9), len(request))   # padding ignored
    bad = bytearray(frame_of(request))
    bad[-1] ^= 0x10
    assert not icmp_checksum_ok(bad, len(request))
    try:
        Icmpv4Message.parse(bad[34:])
        raise AssertionError("the checked parser accepted a bad checksum")
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(src=addrs, dst=addrs, sport=st.integers(0, 0xFFFF), dport=st.integers(0, 0xFFFF),
       ident=st.integers(0, 0xFFFF), ttl=st.integers(1, 255), payload=st.binary(max_size=90))
def test_udp_frame_in_one_buffer_equals_building_it_layer_by_layer(src, dst, sport, dport, ident,
                                                                    ttl, payload):
    layered = frame_of(build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, sport, dport, payload),
                                  ttl=ttl, ident=ident))
    flat = build_udp_frame(MAC_B, MAC_A, ident, ttl, int(src), int(dst), sport, dport,
                           memoryview(payload))
    assert flat == layered
    assert udp_head(flat) == (sport, dport, 8 + len(payload), int.from_bytes(flat[40:42], "big"))
    assert udp_checksum_ok(flat, int(src), int(dst), 8 + len(payload))


def test_udp_frame_sends_a_computed_zero_checksum_as_all_ones():
    # RFC 768: pick the payload word that makes the sum 0xFFFF, so the checksum computes 0.
    src, dst = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    base = build_udp(src, dst, 1, 2, b"\0\0")
    word = int.from_bytes(base[6:8], "big")     # the checksum with a zero word is ~sum
    payload = word.to_bytes(2, "big")
    flat = build_udp_frame(MAC_B, MAC_A, 0, 64, int(src), int(dst), 1, 2, payload)
    assert flat[40:42] == b"\xff\xff"
    assert flat == frame_of(build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, 1, 2, payload),
                                       ident=0))


@settings(max_examples=200, deadline=None)
@given(src=addrs, dst=addrs, payload=st.binary(max_size=40), flip=st.integers(0, 8 * 48 - 1))
def test_udp_checksum_check_agrees_with_the_checked_parser(src, dst, payload, flip):
    frame = bytearray(frame_of(build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, 5, 6, payload))))
    length = 8 + len(payload)
    bit = flip % (8 * length)
    frame[34 + bit // 8] ^= 1 << (bit % 8)
    try:
        UdpDatagram.parse(bytes(frame[34:34 + length]), src, dst)
        good = True
    except ParseError:
        good = False
    if frame[40:42] != b"\0\0" and int.from_bytes(frame[38:40], "big") == length:
        assert udp_checksum_ok(frame, int(src), int(dst), length) == good
