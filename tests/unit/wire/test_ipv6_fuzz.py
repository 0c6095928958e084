"""Hostile input for the IPv6 extension-header, ICMPv6, NDP and MLDv2 parsers (issue 12):
only ParseError escapes, and valid messages survive build(parse(x))."""

from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.netstack.wire import MacAddr, ParseError, build_ipv6
from components.netstack.wire.icmpv6 import (ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAM_PROBLEM,
                                             Icmpv6Message, build_echo6, build_icmpv6,
                                             build_icmpv6_error)
from components.netstack.wire.ipv6 import (NEXT_HEADER_DEST_OPTIONS, NEXT_HEADER_FRAGMENT,
                                           NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ROUTING,
                                           NEXT_HEADER_UDP, ExtensionHeaderProblem, Ipv6Option,
                                           Ipv6Packet, build_fragment_header,
                                           build_options_header, build_routing_header,
                                           walk_extensions)
from components.netstack.wire.ndp import (DnsSearchList, MldV2Report, MtuOption,
                                          MulticastAddressRecord, NeighborAdvertisement,
                                          NeighborSolicitation, PrefixInformation,
                                          RecursiveDnsServers, Redirect, RedirectedHeader,
                                          RouteInformation, RouterAdvertisement,
                                          RouterSolicitation, SourceLinkLayerAddress,
                                          TargetLinkLayerAddress, parse_ndp)

SRC = IPv6Address("fe80::1")
DST = IPv6Address("fe80::2")
MAC = MacAddr(b"\x02\0\0\0\0\x01")
A = IPv6Address("2001:db8::53")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _touch(parsed) -> None:
    """Read every field and property, as the core would: none may raise."""
    for name in dir(parsed):
        if not name.startswith("_"):
            value = getattr(parsed, name)
            if isinstance(value, memoryview):
                bytes(value)


def _expect_parse_error_only(parse, buf):
    try:
        result = parse(buf)
    except ExtensionHeaderProblem as e:
        assert e.reason.startswith("ipv6:") and 0 <= e.code <= 3 and e.pointer >= 0
        return None
    except ParseError as e:
        assert e.reason and ":" in e.reason
        return None
    _touch(result)
    return result


def _nd(buf):
    return parse_ndp(Icmpv6Message.parse(buf, SRC, DST, verify_checksum=False), SRC, DST)


PARSERS = [
    lambda b: walk_extensions(NEXT_HEADER_HOP_BY_HOP, b)[2],
    lambda b: walk_extensions(NEXT_HEADER_DEST_OPTIONS, b)[2],
    lambda b: walk_extensions(NEXT_HEADER_ROUTING, b)[2],
    lambda b: walk_extensions(NEXT_HEADER_FRAGMENT, b)[2],
    lambda b: Ipv6Packet.parse(b),
    lambda b: Icmpv6Message.parse(b, SRC, DST),
    lambda b: Icmpv6Message.parse(b, SRC, DST, verify_checksum=False),
    _nd,
]


def _valid() -> list[tuple[str, bytes]]:
    """(kind, bytes) of valid messages: 'ext' payloads walked from Hop-by-Hop, 'icmp' messages."""
    ra = RouterAdvertisement(64, True, True, 1800, 1, 2, (
        SourceLinkLayerAddress(MAC), PrefixInformation(64, True, True, 9, 8, IPv6Address("2001:db8::")),
        MtuOption(1500), RecursiveDnsServers(5, (A,)), DnsSearchList(5, ("a.example", "b")),
        RouteInformation(96, 3, 7, IPv6Address("2001:db8::1:0:0"))))
    hbh = build_options_header(NEXT_HEADER_DEST_OPTIONS, [Ipv6Option(5, b"\0\0"), Ipv6Option(0x1E, b"x")])
    return [
        ("ext", hbh + build_options_header(NEXT_HEADER_ROUTING)
         + build_routing_header(NEXT_HEADER_FRAGMENT, 0, 0)
         + build_fragment_header(NEXT_HEADER_UDP, 0, False, 9) + b"udp!udp!"),
        ("ext", build_options_header(NEXT_HEADER_FRAGMENT) + build_fragment_header(NEXT_HEADER_UDP, 16, True, 3)
         + bytes(16)),
        ("icmp", ra.build(SRC, DST)),
        ("icmp", RouterSolicitation((SourceLinkLayerAddress(MAC),)).build(SRC, DST)),
        ("icmp", NeighborSolicitation(A, (SourceLinkLayerAddress(MAC),)).build(SRC, DST)),
        ("icmp", NeighborAdvertisement(A, True, True, False, (TargetLinkLayerAddress(MAC),)).build(SRC, DST)),
        ("icmp", Redirect(SRC, A, (RedirectedHeader(build_ipv6(SRC, A, 17, b"12345678")),)).build(SRC, DST)),
        ("icmp", MldV2Report((MulticastAddressRecord(1, IPv6Address("ff3e::1"), (A,), b"1234"),
                              MulticastAddressRecord(4, IPv6Address("ff02::fb")))).build(SRC, DST)),
        ("icmp", build_echo6(SRC, DST, 128, 1, 2, b"ping")),
        ("icmp", build_icmpv6_error(SRC, DST, ICMPV6_PACKET_TOO_BIG, 0, bytes(60), mtu=1280)),
        ("icmp", build_icmpv6_error(SRC, DST, ICMPV6_PARAM_PROBLEM, 1, bytes(60), pointer=6)),
    ]


VALID = _valid()


@st.composite
def mutated(draw):
    kind, raw = draw(st.sampled_from(VALID))
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "extend"]))
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=24))
    if kind == "icmp" and len(data) >= 8:
        # re-checksum so the mutation reaches the body parsers, not just the checksum check
        data = bytearray(build_icmpv6(SRC, DST, data[0], data[1], bytes(data[4:8]), bytes(data[8:])))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=160))
def test_random_bytes_raise_only_parse_error(data):
    for parse in PARSERS:
        _expect_parse_error_only(parse, data)
        _expect_parse_error_only(parse, memoryview(data))


@FUZZ
@given(mutated())
def test_mutated_valid_messages_raise_only_parse_error(data):
    for parse in PARSERS:
        _expect_parse_error_only(parse, data)


@FUZZ
@given(st.sampled_from([0x85, 0x86, 0x87, 0x88, 0x89, 0x8F]), st.binary(max_size=96))
def test_random_nd_bodies_with_good_checksums_raise_only_parse_error(typ, body):
    raw = build_icmpv6(SRC, DST, typ, 0, body[:4].ljust(4, b"\0"), body[4:])
    result = _expect_parse_error_only(_nd, raw)
    if result is not None:
        # whatever parsed builds back into something that parses the same
        assert _nd(result.build(SRC, DST)) == result


def test_valid_messages_round_trip_exactly():
    for kind, raw in VALID:
        if kind == "icmp" and raw[0] >= 133:
            assert _nd(raw).build(SRC, DST) == raw


@FUZZ
@given(st.lists(st.tuples(st.integers(2, 255), st.binary(max_size=20)), max_size=5),
       st.integers(0, 255))
def test_options_headers_we_build_walk_back_to_the_same_options(options, next_header):
    opts = [Ipv6Option(t & 0x3F, d) for t, d in options if (t & 0x3F) not in (0, 1, 5)]
    hdr = build_options_header(next_header, opts)
    assert len(hdr) % 8 == 0
    if next_header in (0, 43, 44, 60):
        next_header = 59  # another extension header would be expected after this one
        hdr = bytes((59,)) + hdr[1:]
    proto, offset, info = walk_extensions(NEXT_HEADER_DEST_OPTIONS, hdr)
    assert (proto, offset) == (next_header, len(hdr))
    assert [(o.type, o.data) for o in info.destination_options] == [(o.type, o.data) for o in opts]
