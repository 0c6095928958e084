"""UDP, TCP and the IPv6 fixed header against scapy as an independent implementation."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.all import IP, TCP, UDP, IPv6, Raw

from components.netstack.wire import (ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Ipv4Packet,
                                      Ipv6Packet, ParseError, TcpSegment, UdpDatagram, build_ipv4,
                                      build_ipv6, build_tcp, build_udp, internet_checksum,
                                      pseudo_header_sum)

V4 = (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
V6 = (IPv6Address("2001:db8::1"), IPv6Address("fe80::abcd:1"))
PAYLOADS = [b"", b"z", b"hello, odd world", bytes(range(256)) * 6]


def _ip_layer(src, dst, proto):
    if src.version == 4:
        return IP(src=str(src), dst=str(dst), proto=proto)
    return IPv6(src=str(src), dst=str(dst), nh=proto)


def _wrap(src, dst, proto, segment):
    if src.version == 4:
        return build_ipv4(src, dst, proto, segment)
    return build_ipv6(src, dst, proto, segment)


def _scapy_recomputed(packet: bytes, version: int, layer):
    """scapy's own checksum for the transport layer of `packet` (ours has been deleted)."""
    cls = IP if version == 4 else IPv6
    s = cls(packet)
    del s[layer].chksum
    return cls(bytes(s))[layer].chksum


# UDP

@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
def test_udp_built_by_scapy_parses_to_same_fields(addrs, payload):
    src, dst = addrs
    raw = bytes((_ip_layer(src, dst, 17) / UDP(sport=5353, dport=53) / Raw(payload))[UDP])
    d = UdpDatagram.parse(raw, src, dst)
    s = UDP(raw)
    assert (d.src_port, d.dst_port, d.length, d.checksum) == (5353, 53, s.len, s.chksum)
    assert bytes(d.payload) == payload


@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
def test_udp_we_build_has_the_checksum_scapy_computes(addrs, payload):
    src, dst = addrs
    seg = build_udp(src, dst, 40000, 7, payload)
    packet = _wrap(src, dst, 17, seg)
    s = (IP if src.version == 4 else IPv6)(packet)
    assert (s[UDP].sport, s[UDP].dport, s[UDP].len, bytes(s[UDP].payload)) == (40000, 7, len(seg), payload)
    assert s[UDP].chksum == _scapy_recomputed(packet, src.version, UDP)


@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
def test_udp_computed_zero_checksum_is_sent_as_0xffff(addrs):
    src, dst = addrs
    # With payload word w = checksum-of-(payload 0), the folded sum becomes 0xFFFF: checksum 0.
    probe = build_udp(src, dst, 1000, 2000, b"\0\0")
    word = probe[6:8]
    seg = build_udp(src, dst, 1000, 2000, word)
    assert seg[6:8] == b"\xff\xff"
    assert UdpDatagram.parse(seg, src, dst).checksum == 0xFFFF
    packet = _wrap(src, dst, 17, seg)
    assert _scapy_recomputed(packet, src.version, UDP) == 0xFFFF  # scapy agrees


def test_udp_zero_checksum_means_none_over_ipv4_but_is_invalid_over_ipv6():
    seg = bytearray(build_udp(*V4, 1, 2, b"data"))
    seg[6:8] = b"\0\0"
    assert UdpDatagram.parse(seg, *V4).checksum == 0
    seg6 = bytearray(build_udp(*V6, 1, 2, b"data"))
    seg6[6:8] = b"\0\0"
    with pytest.raises(ParseError, match="udp: zero checksum over IPv6"):
        UdpDatagram.parse(seg6, *V6)


def test_udp_length_field_trims_payload_and_is_checked_against_buffer():
    seg = build_udp(*V4, 1, 2, b"abc")
    assert bytes(UdpDatagram.parse(seg + b"\0\0\0", *V4).payload) == b"abc"
    for bad_len in (7, len(seg) + 1):
        mutated = seg[:4] + bad_len.to_bytes(2, "big") + seg[6:]
        with pytest.raises(ParseError, match="udp: length"):
            UdpDatagram.parse(mutated, *V4)


def test_udp_checksum_mismatch_and_wrong_pseudo_header_are_rejected():
    seg = build_udp(*V4, 1, 2, b"abc")
    with pytest.raises(ParseError, match="udp: checksum"):
        UdpDatagram.parse(seg[:-1] + b"d", *V4)
    with pytest.raises(ParseError, match="udp: checksum"):
        UdpDatagram.parse(seg, V4[0], IPv4Address("10.0.0.3"))


# TCP

SCAPY_OPTION_SETS = [
    [],
    [("MSS", 1460)],
    [("MSS", 536), ("SAckOK", b""), ("Timestamp", (123456789, 0)), ("NOP", None), ("WScale", 14)],
    [("NOP", None), ("NOP", None), ("Timestamp", (0xFFFFFFFF, 42))],
    [("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000, 5000, 6000))],
    [("MSS", 1400), ("WScale", 0), ("EOL", None)],
    [(254, b"\x12\x34"), ("MSS", 9000)],  # unknown (experimental) option is skipped
]


@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("options", SCAPY_OPTION_SETS)
@pytest.mark.parametrize("payload", [b"", b"GET / HTTP/1.1\r\n\r"], ids=len)
def test_tcp_built_by_scapy_parses_to_same_fields(addrs, options, payload):
    src, dst = addrs
    s = _ip_layer(src, dst, 6) / TCP(sport=43210, dport=80, seq=0xFFFFFFF0, ack=17,
                                     flags="SAPU", window=29200, urgptr=3, options=options) / Raw(payload)
    raw = bytes(s[TCP])
    seg = TcpSegment.parse(raw, src, dst)
    t = TCP(raw)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (43210, 80, 0xFFFFFFF0, 17)
    assert (seg.data_offset, seg.flags, seg.window, seg.urgent, seg.checksum) == (
        t.dataofs * 4, int(t.flags), 29200, 3, t.chksum)
    assert seg.syn and seg.ack_flag and seg.psh and seg.urg and not (seg.fin or seg.rst or seg.ece or seg.cwr)
    assert bytes(seg.payload) == payload
    opts = dict((k, v) for k, v in options if isinstance(k, str))
    assert seg.mss == opts.get("MSS")
    assert seg.wscale == opts.get("WScale")
    assert seg.sack_permitted == ("SAckOK" in opts)
    assert seg.timestamp == opts.get("Timestamp")
    blocks = opts.get("SAck", ())
    assert seg.sack_blocks == tuple(zip(blocks[::2], blocks[1::2]))


@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 0)),
    dict(mss=1460, sack_permitted=True),
    dict(timestamp=(0xDEADBEEF, 0xCAFEBABE), sack_blocks=((10, 20), (30, 40), (50, 60))),
    dict(wscale=14),
    dict(sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),
    dict(urgent=5),
])
@pytest.mark.parametrize("payload", [b"", b"x", b"odd-length-payload!"], ids=len)
def test_tcp_we_build_parses_in_scapy_with_the_same_checksum(addrs, kwargs, payload):
    src, dst = addrs
    flags = SYN | ACK | (URG if kwargs.get("urgent") else 0)
    seg = build_tcp(src, dst, 50000, 443, 0x12345678, 0x9ABCDEF0, flags, 65535, payload, **kwargs)
    packet = _wrap(src, dst, 6, seg)
    s = (IP if src.version == 4 else IPv6)(packet)[TCP]
    assert (s.sport, s.dport, s.seq, s.ack, int(s.flags), s.window) == (
        50000, 443, 0x12345678, 0x9ABCDEF0, flags, 65535)
    assert s.urgptr == kwargs.get("urgent", 0) and bytes(s.payload) == payload
    opts = dict(s.options)
    assert opts.get("MSS") == kwargs.get("mss")
    assert opts.get("WScale") == kwargs.get("wscale")
    assert ("SAckOK" in opts) == kwargs.get("sack_permitted", False)
    assert opts.get("Timestamp") == kwargs.get("timestamp")
    assert opts.get("SAck", ()) == tuple(v for block in kwargs.get("sack_blocks", ()) for v in block)
    assert s.chksum == _scapy_recomputed(packet, src.version, TCP)
    ours = TcpSegment.parse(seg, src, dst)
    assert ours.sack_blocks == tuple(kwargs.get("sack_blocks", ()))


def test_tcp_flag_properties_follow_the_flag_bits():
    for bit, name in ((FIN, "fin"), (SYN, "syn"), (RST, "rst"), (PSH, "psh"), (ACK, "ack_flag"),
                      (URG, "urg"), (ECE, "ece"), (CWR, "cwr")):
        seg = TcpSegment.parse(build_tcp(*V4, 1, 2, 0, 0, bit, 0), *V4)
        assert getattr(seg, name) and seg.flags == bit
        assert int(TCP(build_tcp(*V4, 1, 2, 0, 0, bit, 0)).flags) == bit


def test_tcp_seg_len_counts_syn_and_fin():
    assert TcpSegment.parse(build_tcp(*V4, 1, 2, 0, 0, SYN | FIN, 0, b"abc"), *V4).seg_len == 5
    assert TcpSegment.parse(build_tcp(*V4, 1, 2, 0, 0, ACK, 0, b"abc"), *V4).seg_len == 3


def test_tcp_options_over_40_bytes_are_refused():
    with pytest.raises(ValueError):
        build_tcp(*V4, 1, 2, 0, 0, ACK, 0, mss=1460, timestamp=(1, 2),
                  sack_blocks=((1, 2), (3, 4), (5, 6)))


def _with_options(options: bytes) -> bytes:
    """A v4 segment carrying raw `options`, with a correct checksum."""
    header = bytearray(build_tcp(*V4, 1, 2, 0, 0, ACK, 0)[:20] + options)
    header[12] = (len(header) // 4) << 4
    header[16:18] = b"\0\0"
    csum = internet_checksum(bytes(header), pseudo_header_sum(V4[0].packed, V4[1].packed, 6, len(header)))
    header[16:18] = csum.to_bytes(2, "big")
    return bytes(header)


@pytest.mark.parametrize("options, reason", [
    (b"\x02\x03\x05\x00", "MSS"),
    (b"\x03\x04\x07\x00", "window scale"),
    (b"\x04\x03\x00\x00", "SACK-permitted"),
    (b"\x05\x06\x00\x00\x00\x00\x00\x00", "SACK"),
    (b"\x08\x08" + b"\0" * 6, "timestamp"),
    (b"\x01\x01\x01\x02", "no length byte"),
    (b"\x02\x01\x00\x00", "bad length"),
    (b"\x02\x08\x00\x00", "bad length"),
])
def test_tcp_malformed_options_raise_parse_error(options, reason):
    with pytest.raises(ParseError, match=f"tcp: .*{reason}"):
        TcpSegment.parse(_with_options(options), *V4)


def test_tcp_bad_data_offset_and_checksum_are_rejected():
    seg = bytearray(build_tcp(*V4, 1, 2, 0, 0, ACK, 0, b"data"))
    with pytest.raises(ParseError, match="tcp: checksum"):
        TcpSegment.parse(bytes(seg[:-1]) + b"x", *V4)
    for offset_byte, reason in ((0x40, "below 5"), (0xF0, "exceeds")):
        mutated = bytearray(seg)
        mutated[12] = offset_byte
        with pytest.raises(ParseError, match=f"tcp: data offset .*{reason}"):
            TcpSegment.parse(mutated, *V4)
    with pytest.raises(ParseError, match="tcp: segment"):
        TcpSegment.parse(seg[:19], *V4)


# IPv6 fixed header

@pytest.mark.parametrize("payload", [b"", b"\x01", b"some payload bytes"], ids=len)
def test_ipv6_built_by_scapy_parses_to_same_fields(payload):
    raw = bytes(IPv6(src=str(V6[0]), dst=str(V6[1]), nh=59, hlim=3, fl=0xABCDE, tc=0xB8) / Raw(payload))
    p = Ipv6Packet.parse(raw + b"\0" * 7)  # trailing link padding ignored
    assert (p.src, p.dst, p.next_header, p.hop_limit, p.flow_label, p.traffic_class) == (
        V6[0], V6[1], 59, 3, 0xABCDE, 0xB8)
    assert p.payload_length == len(payload) and bytes(p.payload) == payload
    assert (p.dscp, p.ecn) == (0x2E, 0)


def test_ipv6_we_build_parses_in_scapy():
    raw = build_ipv6(V6[0], V6[1], 17, b"abc", hop_limit=255, traffic_class=0x01, flow_label=0x12345)
    s = IPv6(raw)
    assert (s.version, s.src, s.dst, s.nh, s.hlim, s.tc, s.fl, s.plen) == (
        6, str(V6[0]), str(V6[1]), 17, 255, 1, 0x12345, 3)


def test_ipv6_bad_version_and_truncation_are_rejected():
    raw = build_ipv6(V6[0], V6[1], 59, b"abcd")
    with pytest.raises(ParseError, match="ipv6: version"):
        Ipv6Packet.parse(b"\x40" + raw[1:])
    with pytest.raises(ParseError, match="ipv6: payload length"):
        Ipv6Packet.parse(raw[:-1])
    with pytest.raises(ParseError, match="ipv6: packet"):
        Ipv6Packet.parse(raw[:39])


def test_full_stack_udp_in_ipv4_roundtrip_shares_the_buffer():
    packet = bytearray(build_ipv4(*V4, 17, build_udp(*V4, 9, 10, b"payload")))
    ip = Ipv4Packet.parse(packet)
    udp = UdpDatagram.parse(ip.payload, ip.src, ip.dst)
    assert bytes(udp.payload) == b"payload"
    packet[-1] = ord("X")
    assert bytes(udp.payload) == b"payloaX"  # a view over the frame, not a copy


def test_checksum_verification_can_be_skipped_for_offloaded_segments():
    seg = bytearray(build_tcp(*V4, 1, 2, 0, 0, ACK, 0, b"data"))
    seg[16] ^= 0xFF
    assert bytes(TcpSegment.parse(seg, *V4, verify_checksum=False).payload) == b"data"
    dgram = bytearray(build_udp(*V6, 1, 2, b"data"))
    dgram[6] ^= 0xFF
    assert bytes(UdpDatagram.parse(dgram, *V6, verify_checksum=False).payload) == b"data"
