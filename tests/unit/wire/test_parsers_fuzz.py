"""Hostile input: random and mutated packets fed to every parser let only ParseError escape."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.netstack.wire import (ACK, ARP_REQUEST, ETHERTYPE_IPV4, PSH, SYN, ArpPacket,
                                      EthernetFrame, Icmpv4Message, Ipv4Packet, Ipv6Packet,
                                      MacAddr, ParseError, TcpSegment, UdpDatagram, build_echo,
                                      build_ethernet, build_ipv4, build_ipv6, build_tcp,
                                      build_udp, internet_checksum, options_for_fragment,
                                      pseudo_header_sum)
from components.netstack.wire.ethernet import build_ethernet_vlan

V4 = (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
V6 = (IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"))
MAC = MacAddr(b"\x02\0\0\0\0\x01")

RR_OPTION = b"\x07\x07\x04\x01\x02\x03\x04"
ROUTER_ALERT = b"\x94\x04\x00\x00"
TIMESTAMP = b"\x44\x0c\x05\x00" + b"\0" * 8


def _touch(parsed) -> None:
    """Read every field and property, as the core would: none may raise."""
    for name in dir(parsed):
        if not name.startswith("_"):
            value = getattr(parsed, name)
            if isinstance(value, memoryview):
                bytes(value)


def _parse_all(buf) -> None:
    """Every parser on the same bytes; anything but ParseError fails the test."""
    parsers = [
        EthernetFrame.parse, ArpPacket.parse, Ipv6Packet.parse, Icmpv4Message.parse,
        Ipv4Packet.parse, lambda b: Ipv4Packet.parse(b, verify_checksum=False),
        lambda b: UdpDatagram.parse(b, *V4), lambda b: UdpDatagram.parse(b, *V6),
        lambda b: TcpSegment.parse(b, *V4), lambda b: TcpSegment.parse(b, *V6),
        lambda b: Icmpv4Message.parse(b, verify_checksum=False),
        lambda b: UdpDatagram.parse(b, *V4, verify_checksum=False),
        lambda b: TcpSegment.parse(b, *V4, verify_checksum=False),
    ]
    for parse in parsers:
        try:
            _touch(parse(buf))
        except ParseError as e:
            assert e.reason and ":" in e.reason


def _valid_packets() -> list[bytes]:
    tcp = build_tcp(*V4, 1234, 80, 1, 2, SYN | ACK, 1000, b"data", mss=1460, wscale=7,
                    sack_permitted=True, timestamp=(5, 6))
    tcp_sack = build_tcp(*V6, 1, 2, 3, 4, ACK | PSH, 5, b"x" * 33, sack_blocks=((1, 2), (3, 4)))
    return [
        build_ethernet(MAC, MAC, ETHERTYPE_IPV4, build_ipv4(*V4, 6, tcp)),
        build_ethernet_vlan(MAC, MAC, ETHERTYPE_IPV4, b"x" * 20, 100, 3),
        ArpPacket(ARP_REQUEST, MAC, V4[0], MAC, V4[1]).build(),
        build_ipv4(*V4, 17, build_udp(*V4, 5, 6, b"odd"), options=RR_OPTION + ROUTER_ALERT),
        build_ipv4(*V4, 1, build_echo(8, 1, 2, b"ping"), options=TIMESTAMP, more_fragments=True),
        build_echo(8, 7, 9, b"abcdefg"),
        build_udp(*V4, 53, 5353, b"query"),
        build_udp(*V6, 53, 5353, b"query6"),
        tcp,
        tcp_sack,
        build_ipv6(*V6, 6, tcp_sack),
    ]


VALID = _valid_packets()


@st.composite
def mutated_packets(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "extend"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


def _fix_transport_checksum(data: bytearray, offset: int, src, dst, proto: int) -> None:
    """Re-checksum a mutated segment so the parser gets past the checksum into the fields."""
    if len(data) >= offset + 2:
        data[offset:offset + 2] = b"\0\0"
        csum = internet_checksum(bytes(data), pseudo_header_sum(src.packed, dst.packed, proto, len(data)))
        data[offset:offset + 2] = csum.to_bytes(2, "big")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_parse_error(data):
    _parse_all(data)
    _parse_all(memoryview(data))
    _parse_all(bytearray(data))


@FUZZ
@given(mutated_packets())
def test_mutated_valid_packets_raise_only_parse_error(data):
    _parse_all(data)


@FUZZ
@given(mutated_packets(), st.sampled_from([4, 6]))
def test_mutated_segments_with_fixed_checksums_reach_option_parsing(data, version):
    src, dst = V4 if version == 4 else V6
    tcp = bytearray(data)
    _fix_transport_checksum(tcp, 16, src, dst, 6)
    try:
        _touch(TcpSegment.parse(bytes(tcp), src, dst))
    except ParseError:
        pass
    icmp = bytearray(data)
    if len(icmp) >= 4:
        icmp[2:4] = b"\0\0"
        icmp[2:4] = internet_checksum(bytes(icmp)).to_bytes(2, "big")
    try:
        _touch(Icmpv4Message.parse(bytes(icmp)))
    except ParseError:
        pass


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=30))
def test_ipv4_random_options_raise_only_parse_error_and_fragment_options_stay_valid(options, payload):
    try:
        packet = build_ipv4(*V4, 17, payload, options=options)
    except ValueError:
        return
    try:
        parsed = Ipv4Packet.parse(packet)
    except ParseError as e:
        assert e.reason.startswith("ipv4:")
        return
    kept = options_for_fragment(parsed.options_bytes)
    again = Ipv4Packet.parse(build_ipv4(*V4, 17, payload, options=kept, frag_offset=8))
    assert all(o.copied for o in again.options)
    assert [o for o in parsed.options if o.copied] == list(again.options)
