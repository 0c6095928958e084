"""IPv4 (with options and fragments) and ICMPv4 against scapy as an independent implementation."""

from ipaddress import IPv4Address

import pytest
from scapy.all import (ICMP, IP, UDP, IPOption_LSRR, IPOption_NOP, IPOption_Router_Alert,
                       IPOption_RR, IPOption_Timestamp, Raw, fragment)

from components.netstack.wire import (ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                                      ICMP_TIME_EXCEEDED, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
                                      TIME_EXCEEDED_TTL, UNREACH_FRAG_NEEDED, UNREACH_PORT,
                                      Icmpv4Message, Ipv4Option, Ipv4Packet, ParseError,
                                      build_echo, build_icmpv4, build_ipv4, options_for_fragment)
from components.netstack.wire.ipv4 import OPT_LSRR, OPT_NOP, OPT_ROUTER_ALERT, OPT_RECORD_ROUTE

SRC = IPv4Address("10.1.2.3")
DST = IPv4Address("192.168.77.200")


def _scapy_checksum(raw: bytes) -> int:
    """What scapy computes for the header when the checksum field is left for it to fill."""
    pkt = IP(raw)
    del pkt.chksum
    return IP(bytes(pkt)).chksum


def _assert_same_fields(ours: Ipv4Packet, s: IP) -> None:
    assert (str(ours.src), str(ours.dst)) == (s.src, s.dst)
    assert (ours.proto, ours.ttl, ours.ident) == (s.proto, s.ttl, s.id)
    assert ours.dont_fragment == bool(s.flags.DF) and ours.more_fragments == bool(s.flags.MF)
    assert ours.frag_offset == s.frag * 8
    assert (ours.dscp << 2) | ours.ecn == s.tos
    assert (ours.header_len, ours.total_length, ours.checksum) == (s.ihl * 4, s.len, s.chksum)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(ttl=1, id=0xBEEF, flags="DF", tos=0xB9),
    dict(flags="MF", frag=185, id=7),
    dict(frag=8191, id=1),
    dict(options=[IPOption_Router_Alert()]),
    dict(options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"]), IPOption_NOP()]),
    dict(options=[IPOption_LSRR(routers=["3.3.3.3"]), IPOption_Timestamp(flg=0, timestamp=1234)]),
])
@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(255))])
def test_packet_built_by_scapy_parses_to_same_fields(kwargs, payload):
    s = IP(src=str(SRC), dst=str(DST), proto=253, **kwargs) / Raw(payload)
    raw = bytes(s)
    ours = Ipv4Packet.parse(raw)
    _assert_same_fields(ours, IP(raw))
    assert bytes(ours.payload) == payload and ours.header == raw[:ours.header_len]


def test_options_parsed_into_type_and_data():
    raw = bytes(IP(src=str(SRC), dst=str(DST), options=[
        IPOption_NOP(), IPOption_RR(routers=["1.1.1.1"]), IPOption_Router_Alert()]))
    ours = Ipv4Packet.parse(raw)
    assert [o.type for o in ours.options] == [OPT_NOP, OPT_RECORD_ROUTE, OPT_ROUTER_ALERT]
    assert ours.options[1].data == b"\x04" + IPv4Address("1.1.1.1").packed
    assert ours.options[2].data == b"\0\0" and ours.options[2].copied
    assert not ours.options[1].copied


def test_ethernet_padding_after_total_length_is_ignored():
    raw = bytes(IP(src=str(SRC), dst=str(DST), proto=PROTO_ICMP) / Raw(b"hi"))
    ours = Ipv4Packet.parse(raw + b"\0" * 24)
    assert bytes(ours.payload) == b"hi" and ours.total_length == 22


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(ttl=255, ident=0xFFFF, dont_fragment=True, dscp=46, ecn=1),
    dict(more_fragments=True, frag_offset=1480, ident=99),
    dict(frag_offset=0xFFF8),
    dict(options=bytes(IPOption_Router_Alert())),
    dict(options=bytes(IPOption_RR(routers=["9.9.9.9"]))),  # 7 bytes: padded to 8
    dict(options=b"\x01" * 40),
])
@pytest.mark.parametrize("payload", [b"", b"\x01", b"odd-length payload"])
def test_packet_we_build_parses_in_scapy_with_the_same_checksum(kwargs, payload):
    raw = build_ipv4(SRC, DST, PROTO_UDP, payload, **kwargs)
    s = IP(raw)
    assert s.version == 4 and s.len == len(raw) and bytes(s.payload) == payload
    assert s.chksum == _scapy_checksum(raw)
    ours = Ipv4Packet.parse(raw)
    _assert_same_fields(ours, s)
    for name in ("ttl", "ident", "dont_fragment", "more_fragments", "frag_offset", "dscp", "ecn"):
        if name in kwargs:
            assert getattr(ours, name) == kwargs[name]


def test_build_rejects_bad_fragment_offset_and_oversized_options():
    with pytest.raises(ValueError):
        build_ipv4(SRC, DST, PROTO_UDP, b"", frag_offset=12)
    with pytest.raises(ValueError):
        build_ipv4(SRC, DST, PROTO_UDP, b"", options=b"\x01" * 41)


def test_fragments_made_by_scapy_parse_with_byte_offsets_and_reassemble():
    payload = bytes(i & 0xFF for i in range(3001))
    original = IP(src=str(SRC), dst=str(DST), id=4242) / UDP(sport=1, dport=2) / Raw(payload)
    frags = [Ipv4Packet.parse(bytes(f)) for f in fragment(original, fragsize=1000)]
    assert len(frags) == 4 and all(f.is_fragment and f.ident == 4242 for f in frags)
    assert [f.more_fragments for f in frags] == [True, True, True, False]
    assert [f.frag_offset for f in frags] == [0, 1000, 2000, 3000]
    assert b"".join(bytes(f.payload) for f in frags) == bytes(original[UDP])
    assert not Ipv4Packet.parse(build_ipv4(SRC, DST, PROTO_TCP, b"x")).is_fragment


def test_non_first_fragments_keep_only_copied_options():
    options = bytes(IPOption_RR(routers=["1.1.1.1"])) + b"\x01" + bytes(IPOption_LSRR(
        routers=["2.2.2.2"])) + bytes(IPOption_Router_Alert())
    first = Ipv4Packet.parse(build_ipv4(SRC, DST, PROTO_UDP, b"data", options=options,
                                        more_fragments=True))
    kept = options_for_fragment(first.options_bytes)
    assert len(kept) % 4 == 0
    later = Ipv4Packet.parse(build_ipv4(SRC, DST, PROTO_UDP, b"more", options=kept, frag_offset=8))
    assert [o.type for o in later.options] == [OPT_LSRR, OPT_ROUTER_ALERT]
    assert all(o.copied for o in later.options)
    s = IP(build_ipv4(SRC, DST, PROTO_UDP, b"more", options=kept, frag_offset=8))
    assert [o.option for o in s.options][:2] == [3, 20]  # LSRR and router alert numbers


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b"\x65" + b[1:], "version"),
    (lambda b: b"\x44" + b[1:], "IHL"),
    (lambda b: b[:2] + b"\x00\x13" + b[4:], "total length"),
    (lambda b: b[:2] + b"\x01\x00" + b[4:], "total length"),
    (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "checksum"),
    (lambda b: b[:19], "shorter"),
])
def test_malformed_headers_raise_parse_error_naming_the_fault(mutate, reason):
    raw = build_ipv4(SRC, DST, PROTO_UDP, b"payload")
    with pytest.raises(ParseError, match=reason) as exc:
        Ipv4Packet.parse(mutate(raw))
    assert exc.value.reason.startswith("ipv4:")


def test_checksum_verification_can_be_skipped():
    raw = bytearray(build_ipv4(SRC, DST, PROTO_UDP, b"payload"))
    raw[10] ^= 0xFF
    assert Ipv4Packet.parse(raw, verify_checksum=False).src == SRC


@pytest.mark.parametrize("options", [
    b"\x07\x02\x04\x00",   # record route too short for its pointer
    b"\x07\x08\x04\x00\x00\x00\x00\x00",  # route length not 3 + 4n
    b"\x94\x03\x00\x00",   # router alert with length 3
    b"\x44\x03\x05\x00",   # timestamp shorter than 4
    b"\x83\x01\x00\x00",   # length below 2
    b"\x01\x01\x01\x83",   # no length byte
    b"\x83\x09\x04\x00",   # length past the options area
])
def test_bad_option_lengths_raise_parse_error(options):
    raw = build_ipv4(SRC, DST, PROTO_UDP, b"", options=options)
    with pytest.raises(ParseError, match="ipv4: .*option"):
        Ipv4Packet.parse(raw)


def test_eol_ends_option_parsing():
    raw = build_ipv4(SRC, DST, PROTO_UDP, b"", options=b"\x01\x00\xff\xff")
    assert Ipv4Packet.parse(raw).options == (Ipv4Option(OPT_NOP, b""),)


# ICMPv4

@pytest.mark.parametrize("typ", [ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY])
@pytest.mark.parametrize("payload", [b"", b"a", b"abcdefghijklmnopqrstuvwxyz0"])
def test_echo_built_by_scapy_parses_and_ours_matches_scapy_bytes(typ, payload):
    raw = bytes(ICMP(type=typ, id=0x1234, seq=0xFEDC) / Raw(payload))
    msg = Icmpv4Message.parse(raw)
    assert (msg.type, msg.code, msg.ident, msg.seq, bytes(msg.payload)) == (typ, 0, 0x1234, 0xFEDC, payload)
    ours = build_echo(typ, 0x1234, 0xFEDC, payload)
    assert ours == raw
    s = ICMP(ours)
    del s.chksum
    assert ICMP(bytes(s)).chksum == ICMP(ours).chksum


def test_frag_needed_carries_next_hop_mtu():
    inner = build_ipv4(SRC, DST, PROTO_UDP, b"12345678", dont_fragment=True)
    raw = bytes(ICMP(type=ICMP_DEST_UNREACH, code=UNREACH_FRAG_NEEDED, nexthopmtu=1400) / Raw(inner))
    msg = Icmpv4Message.parse(raw)
    assert msg.mtu == 1400 and msg.is_error and bytes(msg.payload) == inner
    ours = build_icmpv4(ICMP_DEST_UNREACH, UNREACH_FRAG_NEEDED, b"\0\0\x05\x78", inner)
    s = ICMP(ours)
    assert (s.type, s.code, s.nexthopmtu) == (3, 4, 1400)
    assert ours == raw


@pytest.mark.parametrize("typ, code", [(ICMP_DEST_UNREACH, UNREACH_PORT), (ICMP_TIME_EXCEEDED, TIME_EXCEEDED_TTL)])
def test_error_messages_we_build_parse_in_scapy(typ, code):
    inner = build_ipv4(SRC, DST, PROTO_UDP, b"12345678")
    ours = build_icmpv4(typ, code, b"\0\0\0\0", inner)
    packet = build_ipv4(DST, SRC, PROTO_ICMP, ours)
    s = IP(packet)
    assert (s[ICMP].type, s[ICMP].code) == (typ, code)
    copy = ICMP(ours)
    del copy.chksum
    assert ICMP(bytes(copy)).chksum == s[ICMP].chksum
    assert Icmpv4Message.parse(Ipv4Packet.parse(packet).payload).is_error


def test_icmp_bad_checksum_and_truncation_are_parse_errors():
    raw = bytearray(build_echo(ICMP_ECHO_REQUEST, 1, 2, b"odd"))
    raw[-1] ^= 0x40
    with pytest.raises(ParseError, match="icmpv4: checksum"):
        Icmpv4Message.parse(raw)
    with pytest.raises(ParseError, match="icmpv4"):
        Icmpv4Message.parse(b"\x08\x00\xf7\xff\x00\x00\x00")


def test_address_cache_stays_bounded_under_a_flood_of_distinct_sources():
    from components.netstack.wire import _fast
    for i in range(_fast._CACHE_LIMIT + 500):
        src = IPv4Address(0x0A000000 + i)
        assert Ipv4Packet.parse(build_ipv4(src, DST, PROTO_UDP, b"")).src == src
    assert 0 < len(_fast._v4_cache) <= _fast._CACHE_LIMIT
