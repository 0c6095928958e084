"""IPv6 extension headers, ICMPv6, NDP and MLDv2 (issue 12) against scapy as an independent implementation."""

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6MLDMultAddrRec,
                                ICMPv6MLReport2, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA,
                                ICMPv6ND_Redirect, ICMPv6ND_RS, ICMPv6NDOptDNSSL, ICMPv6NDOptMTU,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptRouteInfo,
                                ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr, ICMPv6PacketTooBig,
                                ICMPv6ParamProblem, ICMPv6DestUnreach, ICMPv6TimeExceeded,
                                IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting, PadN, RouterAlert, fragment6, in6_chksum)
from scapy.packet import Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from components.netstack.wire import MacAddr, ParseError, build_ipv6
from components.netstack.wire.icmpv6 import (ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY,
                                             ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
                                             ICMPV6_PARAM_PROBLEM, ICMPV6_TIME_EXCEEDED,
                                             MAX_QUOTED, UNREACH_PORT, Icmpv6Message,
                                             build_echo6, build_icmpv6_error)
from components.netstack.wire.ipv6 import (ACTION_DISCARD, ACTION_DISCARD_SEND_ICMP,
                                           ACTION_DISCARD_SEND_ICMP_UNLESS_MULTICAST,
                                           NEXT_HEADER_DEST_OPTIONS, NEXT_HEADER_FRAGMENT,
                                           NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ICMPV6,
                                           NEXT_HEADER_NONE, NEXT_HEADER_ROUTING,
                                           NEXT_HEADER_UDP, OPT_ROUTER_ALERT,
                                           PARAM_PROBLEM_HEADER_FIELD,
                                           PARAM_PROBLEM_INCOMPLETE_CHAIN,
                                           PARAM_PROBLEM_NEXT_HEADER, PARAM_PROBLEM_OPTION,
                                           ExtensionHeaderProblem, FragmentHeader, Ipv6Option,
                                           Ipv6Packet, build_fragment_header, build_fragments,
                                           build_options_header, build_routing_header,
                                           upper_layer_checksum, walk_extensions)
from components.netstack.wire.ndp import (ALL_MLDV2_ROUTERS, ALL_NODES, CHANGE_TO_EXCLUDE_MODE,
                                          MODE_IS_INCLUDE, DnsSearchList, MldV2Report, MtuOption,
                                          MulticastAddressRecord, NeighborAdvertisement,
                                          NeighborSolicitation, PrefixInformation,
                                          RecursiveDnsServers, Redirect, RedirectedHeader,
                                          RouteInformation, RouterAdvertisement,
                                          RouterSolicitation, SourceLinkLayerAddress,
                                          TargetLinkLayerAddress, link_local_from_mac,
                                          multicast_mac, parse_ndp, solicited_node_address)

SRC = IPv6Address("fe80::5054:ff:fe12:3456")
DST = IPv6Address("2001:db8::2")
GLOBAL = IPv6Address("2001:db8::1")
MAC = MacAddr(bytes.fromhex("525400123456"))


def _icmp(raw: bytes, src=SRC, dst=DST):
    return Icmpv6Message.parse(raw, src, dst)


def _ours_in_scapy(icmp_bytes: bytes, src=SRC, dst=DST):
    """Our ICMPv6 message inside our IPv6 header, dissected by scapy; checksums must agree."""
    raw = build_ipv6(src, dst, NEXT_HEADER_ICMPV6, icmp_bytes, hop_limit=255)
    s = IPv6(raw)
    zeroed = icmp_bytes[:2] + b"\0\0" + icmp_bytes[4:]
    # scapy's own pseudo-header checksum over our bytes (re-serialising would re-encode quotes)
    assert s.payload.cksum == in6_chksum(NEXT_HEADER_ICMPV6, s, zeroed)
    return s.payload


# Fixed header and extension headers

@pytest.mark.parametrize("tc, fl, hl", [(0, 0, 64), (0xB8, 0xFFFFF, 1), (3, 0x12345, 255)])
def test_fixed_header_we_build_parses_in_scapy(tc, fl, hl):
    raw = build_ipv6(GLOBAL, DST, NEXT_HEADER_NONE, b"abc", hop_limit=hl, traffic_class=tc, flow_label=fl)
    s = IPv6(raw)
    assert (s.tc, s.fl, s.hlim, s.nh, s.plen) == (tc, fl, hl, 59, 3)
    p = Ipv6Packet.parse(raw)
    assert (p.traffic_class, p.flow_label, p.hop_limit) == (tc, fl, hl)


def test_scapy_chain_walks_to_the_upper_protocol_with_options_reported():
    s = (IPv6(src=str(GLOBAL), dst=str(DST)) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
         / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0\0\0")]) / IPv6ExtHdrRouting()
         / IPv6ExtHdrDestOpt() / Raw(b"\x00\x35\x00\x35\x00\x08\x00\x00"))
    s[IPv6ExtHdrDestOpt:2].nh = NEXT_HEADER_UDP
    raw = bytes(s)
    p = Ipv6Packet.parse(raw)
    proto, offset, info = walk_extensions(p.next_header, p.payload)
    assert proto == NEXT_HEADER_UDP and bytes(p.payload[offset:]) == raw[-8:]
    assert info.chain == (NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_DEST_OPTIONS, NEXT_HEADER_ROUTING,
                          NEXT_HEADER_DEST_OPTIONS)
    assert [o.type for o in info.hop_by_hop] == [OPT_ROUTER_ALERT]
    assert info.hop_by_hop[0].pointer == 42 and info.hop_by_hop[0].data == b"\0\0"
    assert info.routing.routing_type == 0 and info.routing.segments_left == 0
    assert info.destination_options == () and info.fragment is None
    assert raw[info.next_header_pointer] == NEXT_HEADER_UDP


def test_options_header_we_build_parses_in_scapy_padded_to_8():
    for options in ([], [Ipv6Option(OPT_ROUTER_ALERT, b"\0\0")], [Ipv6Option(0x1E, b"abcdefghi")]):
        hdr = build_options_header(NEXT_HEADER_NONE, options)
        assert len(hdr) % 8 == 0
        s = IPv6(build_ipv6(GLOBAL, DST, NEXT_HEADER_HOP_BY_HOP, hdr))
        assert IPv6ExtHdrHopByHop in s and s[IPv6ExtHdrHopByHop].nh == NEXT_HEADER_NONE
        proto, offset, info = walk_extensions(NEXT_HEADER_HOP_BY_HOP, hdr)
        assert (proto, offset) == (NEXT_HEADER_NONE, len(hdr))
        assert [(o.type, o.data) for o in info.hop_by_hop] == [(o.type, o.data) for o in options]


@pytest.mark.parametrize("action, send, unless", [
    (ACTION_DISCARD, False, False),
    (ACTION_DISCARD_SEND_ICMP, True, False),
    (ACTION_DISCARD_SEND_ICMP_UNLESS_MULTICAST, True, True),
])
def test_unknown_option_action_bits_say_how_to_answer(action, send, unless):
    opt_type = (action << 6) | 0x1E
    payload = build_options_header(NEXT_HEADER_NONE, [Ipv6Option(0x1E, b""), Ipv6Option(opt_type, b"xy")])
    with pytest.raises(ExtensionHeaderProblem, match="option") as exc:
        walk_extensions(NEXT_HEADER_DEST_OPTIONS, payload)
    p = exc.value
    assert (p.code, p.send_icmp, p.unless_multicast) == (PARAM_PROBLEM_OPTION, send, unless)
    assert p.pointer == 40 + 4  # after next header, length and the 2-byte skip option


def test_unknown_option_with_skip_action_is_kept_and_walk_goes_on():
    payload = build_options_header(NEXT_HEADER_NONE, [Ipv6Option(0x1E, b"z")])
    _, _, info = walk_extensions(NEXT_HEADER_DEST_OPTIONS, payload)
    assert info.destination_options[0].action == 0 and info.destination_options[0].data == b"z"


def test_hop_by_hop_after_another_header_is_an_unrecognised_next_header():
    payload = (build_options_header(NEXT_HEADER_HOP_BY_HOP)
               + build_options_header(NEXT_HEADER_NONE))
    with pytest.raises(ExtensionHeaderProblem, match="hop-by-hop") as exc:
        walk_extensions(NEXT_HEADER_DEST_OPTIONS, payload)
    assert (exc.value.code, exc.value.pointer) == (PARAM_PROBLEM_NEXT_HEADER, 40)


def test_scapy_fragments_stop_the_walk_at_the_fragment_header():
    original = IPv6(src=str(GLOBAL), dst=str(DST)) / IPv6ExtHdrFragment(id=0xABCDEF01) / Raw(bytes(3000))
    frags = [bytes(f) for f in fragment6(original, 1280)]
    assert len(frags) == 3
    seen = []
    for raw in frags:
        p = Ipv6Packet.parse(raw)
        proto, offset, info = walk_extensions(p.next_header, p.payload)
        assert proto == NEXT_HEADER_NONE and offset == 8 and info.fragment_offset == 0
        seen.append((info.fragment.offset, info.fragment.more_fragments, info.fragment.identification))
        s = IPv6(raw)[IPv6ExtHdrFragment]
        assert (s.offset * 8, bool(s.m), s.id) == seen[-1]
    assert [m for _, m, _ in seen] == [True, True, False]


def test_fragments_we_build_parse_in_scapy_and_reassemble():
    payload = bytes(i & 0xFF for i in range(4000))
    packets = build_fragments(GLOBAL, DST, NEXT_HEADER_UDP, payload, mtu=1280, identification=77)
    assert all(len(p) <= 1280 for p in packets) and len(packets) == 4
    data = b""
    for raw in packets:
        s = IPv6(raw)
        frag = s[IPv6ExtHdrFragment]
        assert frag.id == 77 and frag.nh == NEXT_HEADER_UDP and frag.offset * 8 == len(data)
        data += bytes(frag.payload)
    assert data == payload
    assert build_fragments(GLOBAL, DST, NEXT_HEADER_UDP, b"x", mtu=1500, identification=1) == [
        build_ipv6(GLOBAL, DST, NEXT_HEADER_UDP, b"x")]
    with pytest.raises(ValueError):
        build_fragments(GLOBAL, DST, NEXT_HEADER_UDP, payload, mtu=1000, identification=1)


def test_atomic_fragment_is_walked_through():
    payload = build_fragment_header(NEXT_HEADER_UDP, 0, False, 5) + b"udp-data"
    assert IPv6(build_ipv6(GLOBAL, DST, NEXT_HEADER_FRAGMENT, payload))[IPv6ExtHdrFragment].m == 0
    proto, offset, info = walk_extensions(NEXT_HEADER_FRAGMENT, payload)
    assert (proto, offset) == (NEXT_HEADER_UDP, 8) and info.fragment.is_atomic
    assert info.fragment == FragmentHeader(NEXT_HEADER_UDP, 0, False, 5)


@pytest.mark.parametrize("payload, code, pointer", [
    # M set and 7 data bytes: not a multiple of 8, point at Payload Length (RFC 8200 §4.5)
    (build_fragment_header(NEXT_HEADER_UDP, 8, True, 1) + b"1234567", PARAM_PROBLEM_HEADER_FIELD, 4),
    # reassembly past 65535: point at the Fragment Offset field
    (build_fragment_header(NEXT_HEADER_UDP, 0xFFF8, False, 1) + b"123456789", PARAM_PROBLEM_HEADER_FIELD, 42),
    # a first fragment whose chain ends outside it (RFC 7112)
    (build_fragment_header(NEXT_HEADER_DEST_OPTIONS, 0, True, 1) + b"\x11\x04" + bytes(6), PARAM_PROBLEM_INCOMPLETE_CHAIN, 0),
])
def test_bad_fragments_ask_for_parameter_problem(payload, code, pointer):
    with pytest.raises(ExtensionHeaderProblem, match="fragment") as exc:
        walk_extensions(NEXT_HEADER_FRAGMENT, payload)
    assert (exc.value.code, exc.value.pointer, exc.value.send_icmp) == (code, pointer, True)


@pytest.mark.parametrize("next_header, payload, field", [
    (NEXT_HEADER_HOP_BY_HOP, b"\x3b\x00\x00\x00", "runs past"),
    (NEXT_HEADER_HOP_BY_HOP, b"\x3b\x01" + bytes(6), "length 16 runs past"),
    (NEXT_HEADER_DEST_OPTIONS, b"\x3b\x00\x1e\x09" + bytes(4), "option 30 length 9"),
    (NEXT_HEADER_DEST_OPTIONS, b"\x3b\x00\x00\x00\x00\x00\x00\x1e", "no length byte"),
    (NEXT_HEADER_HOP_BY_HOP, b"\x3b\x00\x05\x01\x00\x01\x00\x00", "router alert"),
    (NEXT_HEADER_FRAGMENT, b"\x2c\x00\x00\x00\x00\x00\x00\x01" * 2, "second fragment"),
    (NEXT_HEADER_DEST_OPTIONS, b"\x3c\x00\x01\x04\x00\x00\x00\x00" * 9, "more than 8"),
    (NEXT_HEADER_ROUTING, b"\x3b\x00\x00", "runs past"),
])
def test_malformed_chains_raise_parse_error_naming_the_field(next_header, payload, field):
    with pytest.raises(ParseError, match=field) as exc:
        walk_extensions(next_header, payload)
    assert exc.value.reason.startswith("ipv6:")


def test_routing_header_we_build_is_scapy_routing():
    hdr = build_routing_header(NEXT_HEADER_NONE, 0, 0, bytes(4) + GLOBAL.packed)
    s = IPv6(build_ipv6(GLOBAL, DST, NEXT_HEADER_ROUTING, hdr))
    assert s[IPv6ExtHdrRouting].addresses == [str(GLOBAL)]
    _, _, info = walk_extensions(NEXT_HEADER_ROUTING, hdr)
    assert info.routing.data[4:] == GLOBAL.packed


def test_pseudo_header_checksum_matches_scapy_udp():
    from scapy.layers.inet import UDP
    raw = bytes(IPv6(src=str(GLOBAL), dst=str(DST)) / UDP(sport=1, dport=2) / Raw(b"odd"))
    udp = raw[40:]
    assert upper_layer_checksum(GLOBAL, DST, NEXT_HEADER_UDP, udp) == 0
    zeroed = udp[:6] + b"\0\0" + udp[8:]
    assert upper_layer_checksum(GLOBAL, DST, NEXT_HEADER_UDP, zeroed) == int.from_bytes(udp[6:8], "big")


# ICMPv6 (RFC 4443)

@pytest.mark.parametrize("typ, cls", [(ICMPV6_ECHO_REQUEST, ICMPv6EchoRequest), (ICMPV6_ECHO_REPLY, ICMPv6EchoReply)])
@pytest.mark.parametrize("payload", [b"", b"a", bytes(range(57))])
def test_echo_we_build_equals_scapy_bytes_both_ways(typ, cls, payload):
    ours = build_echo6(GLOBAL, DST, typ, 0x1234, 0xFEDC, payload)
    theirs = bytes(IPv6(src=str(GLOBAL), dst=str(DST)) / cls(id=0x1234, seq=0xFEDC, data=payload))[40:]
    assert ours == theirs
    msg = _icmp(theirs, GLOBAL, DST)
    assert (msg.type, msg.ident, msg.seq, bytes(msg.payload), msg.is_error) == (typ, 0x1234, 0xFEDC, payload, False)


@pytest.mark.parametrize("typ, code, cls, field, kwargs", [
    (ICMPV6_DEST_UNREACH, UNREACH_PORT, ICMPv6DestUnreach, None, {}),
    (ICMPV6_PACKET_TOO_BIG, 0, ICMPv6PacketTooBig, "mtu", {"mtu": 1400}),
    (ICMPV6_TIME_EXCEEDED, 1, ICMPv6TimeExceeded, None, {}),
    (ICMPV6_PARAM_PROBLEM, 2, ICMPv6ParamProblem, "ptr", {"pointer": 42}),
])
def test_errors_we_build_parse_in_scapy_and_quote_up_to_1280(typ, code, cls, field, kwargs):
    invoking = build_ipv6(DST, GLOBAL, NEXT_HEADER_UDP, bytes(2000))
    ours = build_icmpv6_error(GLOBAL, DST, typ, code, invoking, **kwargs)
    assert 40 + len(ours) == 1280 and len(ours) - 8 == MAX_QUOTED
    s = _ours_in_scapy(ours, GLOBAL, DST)
    assert isinstance(s, cls) and (s.type, s.code) == (typ, code)
    msg = _icmp(ours, GLOBAL, DST)
    assert msg.is_error and bytes(msg.payload) == invoking[:MAX_QUOTED]
    if field:
        assert getattr(s, field) == next(iter(kwargs.values()))
        assert (msg.mtu if field == "mtu" else msg.pointer) == getattr(s, field)
    short = build_icmpv6_error(GLOBAL, DST, typ, code, invoking[:100], **kwargs)
    assert bytes(_icmp(short, GLOBAL, DST).payload) == invoking[:100]


def test_scapy_packet_too_big_parses_with_mtu():
    raw = bytes(IPv6(src=str(GLOBAL), dst=str(DST)) / ICMPv6PacketTooBig(mtu=1337) / Raw(b"x" * 48))[40:]
    msg = _icmp(raw, GLOBAL, DST)
    assert (msg.type, msg.mtu, len(msg.payload)) == (ICMPV6_PACKET_TOO_BIG, 1337, 48)


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b[:2] + bytes([b[2] ^ 1]) + b[3:], "checksum"),
    (lambda b: b[:7], "shorter than 8"),
])
def test_malformed_icmpv6_raises_parse_error_naming_the_field(mutate, field):
    raw = build_echo6(GLOBAL, DST, ICMPV6_ECHO_REQUEST, 1, 2, b"data")
    with pytest.raises(ParseError, match=field):
        _icmp(mutate(raw), GLOBAL, DST)
    with pytest.raises(ParseError, match="checksum"):
        _icmp(raw, GLOBAL, IPv6Address("2001:db8::3"))  # pseudo-header counts


# Neighbor Discovery (RFC 4861) and options

def test_router_advertisement_we_build_is_scapys_with_every_option():
    ra = RouterAdvertisement(64, True, False, 1800, 30000, 1000, (
        SourceLinkLayerAddress(MAC),
        PrefixInformation(64, True, True, 2592000, 604800, IPv6Address("2001:db8::")),
        MtuOption(1500),
        RecursiveDnsServers(600, (IPv6Address("2001:db8::53"), IPv6Address("2001:db8::54"))),
        DnsSearchList(600, ("example.com", "lab.example.org")),
        RouteInformation(48, 1, 300, IPv6Address("2001:db8:1::")),
    ), preference=3)
    raw = ra.build(SRC, ALL_NODES)
    s = _ours_in_scapy(raw, SRC, ALL_NODES)
    assert (s.chlim, s.M, s.O, s.prf, s.routerlifetime, s.reachabletime, s.retranstimer) == (
        64, 1, 0, 3, 1800, 30000, 1000)
    assert s[ICMPv6NDOptSrcLLAddr].lladdr == str(MAC)
    pi = s[ICMPv6NDOptPrefixInfo]
    assert (pi.prefixlen, pi.L, pi.A, pi.validlifetime, pi.preferredlifetime, pi.prefix) == (
        64, 1, 1, 2592000, 604800, "2001:db8::")
    assert s[ICMPv6NDOptMTU].mtu == 1500
    assert s[ICMPv6NDOptRDNSS].dns == ["2001:db8::53", "2001:db8::54"] and s[ICMPv6NDOptRDNSS].lifetime == 600
    assert s[ICMPv6NDOptDNSSL].searchlist == ["example.com.", "lab.example.org."]
    ri = s[ICMPv6NDOptRouteInfo]
    assert (ri.plen, ri.prf, ri.rtlifetime, ri.prefix) == (48, 1, 300, "2001:db8:1::")
    parsed = parse_ndp(_icmp(raw, SRC, ALL_NODES), SRC, ALL_NODES)
    assert parsed == ra and parsed.source_lladdr == MAC and parsed.mtu == 1500
    assert parsed.prefixes[0].autonomous and parsed.routes[0].lifetime == 300


def test_router_advertisement_built_by_scapy_parses_to_the_same_fields():
    s = (IPv6(src=str(SRC), dst="ff02::1") / ICMPv6ND_RA(chlim=255, M=0, O=1, routerlifetime=0, reachabletime=7,
                                                          retranstimer=8, prf=2)
         / ICMPv6NDOptSrcLLAddr(lladdr=str(MAC))
         / ICMPv6NDOptPrefixInfo(prefixlen=56, L=0, A=1, validlifetime=10, preferredlifetime=5, prefix="2001:db8:aa00::")
         / ICMPv6NDOptRDNSS(lifetime=9, dns=["2001:db8::1"])
         / ICMPv6NDOptDNSSL(lifetime=9, searchlist=["corp.example."])
         / ICMPv6NDOptRouteInfo(plen=0, prf=3, rtlifetime=4)
         / ICMPv6NDOptRouteInfo(plen=96, rtlifetime=4, prefix="2001:db8::ab:0:0"))
    raw = bytes(s)[40:]
    ra = parse_ndp(_icmp(raw, SRC, ALL_NODES), SRC, ALL_NODES)
    assert (ra.cur_hop_limit, ra.managed, ra.other, ra.router_lifetime, ra.reachable_time,
            ra.retrans_timer) == (255, False, True, 0, 7, 8)
    assert ra.preference == 0  # RFC 4191 §2.2: the reserved value 10 reads as medium
    assert ra.prefixes == (PrefixInformation(56, False, True, 10, 5, IPv6Address("2001:db8:aa00::")),)
    assert ra.dns_servers[0].servers == (IPv6Address("2001:db8::1"),)
    assert ra.search_lists[0].domains == ("corp.example",)
    assert [(r.prefix_length, r.preference, str(r.prefix)) for r in ra.routes] == [
        (0, 3, "::"), (96, 0, "2001:db8::ab:0:0")]


def test_router_solicitation_both_ways():
    ours = RouterSolicitation((SourceLinkLayerAddress(MAC),)).build(SRC, IPv6Address("ff02::2"))
    s = _ours_in_scapy(ours, SRC, IPv6Address("ff02::2"))
    assert isinstance(s, ICMPv6ND_RS) and s[ICMPv6NDOptSrcLLAddr].lladdr == str(MAC)
    theirs = bytes(IPv6(src=str(SRC), dst="ff02::2") / ICMPv6ND_RS())[40:]
    rs = parse_ndp(_icmp(theirs, SRC, IPv6Address("ff02::2")), SRC, IPv6Address("ff02::2"))
    assert rs == RouterSolicitation(())


def test_neighbor_solicitation_both_ways_and_dad_from_unspecified():
    group = solicited_node_address(DST)
    ours = NeighborSolicitation(DST, (SourceLinkLayerAddress(MAC),)).build(SRC, group)
    s = _ours_in_scapy(ours, SRC, group)
    assert isinstance(s, ICMPv6ND_NS) and s.tgt == str(DST) and s[ICMPv6NDOptSrcLLAddr].lladdr == str(MAC)
    unspec = IPv6Address("::")
    theirs = bytes(IPv6(src="::", dst=str(group)) / ICMPv6ND_NS(tgt=str(DST)))[40:]
    ns = parse_ndp(_icmp(theirs, unspec, group), unspec, group)
    assert ns == NeighborSolicitation(DST) and ns.source_lladdr is None
    bad = NeighborSolicitation(DST, (SourceLinkLayerAddress(MAC),)).build(unspec, group)
    with pytest.raises(ParseError, match="source link-layer"):
        parse_ndp(_icmp(bad, unspec, group), unspec, group)


@pytest.mark.parametrize("r, s_flag, o", [(0, 0, 0), (1, 1, 1), (0, 1, 0), (1, 0, 1)])
def test_neighbor_advertisement_flags_both_ways(r, s_flag, o):
    na = NeighborAdvertisement(DST, bool(r), bool(s_flag), bool(o), (TargetLinkLayerAddress(MAC),))
    ours = na.build(DST, SRC)
    s = _ours_in_scapy(ours, DST, SRC)
    assert isinstance(s, ICMPv6ND_NA) and (s.R, s.S, s.O, s.tgt) == (r, s_flag, o, str(DST))
    assert s[ICMPv6NDOptDstLLAddr].lladdr == str(MAC)
    theirs = bytes(IPv6(src=str(DST), dst=str(SRC)) / ICMPv6ND_NA(R=r, S=s_flag, O=o, tgt=str(DST))
                   / ICMPv6NDOptDstLLAddr(lladdr=str(MAC)))[40:]
    assert theirs == ours
    assert parse_ndp(_icmp(theirs, DST, SRC), DST, SRC) == na


def test_redirect_both_ways_with_redirected_header():
    inner = build_ipv6(GLOBAL, DST, NEXT_HEADER_UDP, b"12345678")
    rd = Redirect(SRC, DST, (TargetLinkLayerAddress(MAC), RedirectedHeader(inner)))
    ours = rd.build(SRC, GLOBAL)
    s = _ours_in_scapy(ours, SRC, GLOBAL)
    assert isinstance(s, ICMPv6ND_Redirect) and (s.tgt, s.dst) == (str(SRC), str(DST))
    parsed = parse_ndp(_icmp(ours, SRC, GLOBAL), SRC, GLOBAL)
    assert parsed == rd and parsed.redirected_header == inner and parsed.target_lladdr == MAC


def test_unknown_and_foreign_link_options_are_skipped():
    ns = NeighborSolicitation(DST).build(SRC, DST)
    extra = b"\x0e\x01" + bytes(6) + b"\x01\x02" + bytes(14)  # nonce; 14-byte link-layer address
    raw = Icmpv6Message.parse(ns, SRC, DST)
    from components.netstack.wire.icmpv6 import build_icmpv6
    again = build_icmpv6(SRC, DST, raw.type, 0, raw.rest, bytes(raw.payload) + extra)
    assert parse_ndp(_icmp(again), SRC, DST) == NeighborSolicitation(DST)


def _ns_with(options: bytes, target=DST, code=0, dst=DST):
    from components.netstack.wire.icmpv6 import build_icmpv6
    return build_icmpv6(SRC, dst, 135, code, bytes(4), target.packed + options)


@pytest.mark.parametrize("raw, dst, field", [
    (_ns_with(b"\x01\x00" + bytes(6)), DST, "option 1 has length 0"),
    (_ns_with(b"\x01\x02" + bytes(6)), DST, "option 1 length 2 runs past"),
    (_ns_with(b"\x05"), DST, "no length byte"),
    (_ns_with(b"\x03\x03" + bytes(22)), DST, "prefix information option length 3"),
    (_ns_with(b"\x03\x04\x81" + bytes(29)), DST, "prefix length 129"),
    (_ns_with(b"\x05\x02" + bytes(14)), DST, "mtu option length 2"),
    (_ns_with(b"\x19\x02" + bytes(14)), DST, "rdnss option length 2"),
    (_ns_with(b"\x1f\x01" + bytes(6)), DST, "dnssl option length 1"),
    (_ns_with(b"\x1f\x02" + bytes(6) + b"\x40" + bytes(7)), DST, "label length 64"),
    (_ns_with(b"\x1f\x02" + bytes(6) + b"\x06abcdef\x01"), DST, "label runs past"),
    (_ns_with(b"\x1f\x02" + bytes(6) + b"\x02\xff\xfe\x00" + bytes(4)), DST, "not ASCII"),
    (_ns_with(b"\x18\x01\x41" + bytes(5)), DST, "route information option length 1"),
    (_ns_with(b""), DST, None),  # valid: the baseline
    (_ns_with(b"", target=IPv6Address("ff02::1")), DST, "target ff02::1 is multicast"),
    (_ns_with(b"", code=1), DST, "code 1"),
    (_ns_with(b"")[:20], DST, "shorter than 24"),
])
def test_malformed_nd_messages_raise_parse_error_naming_the_field(raw, dst, field):
    msg = Icmpv6Message.parse(raw, SRC, dst, verify_checksum=False)
    if field is None:
        assert isinstance(parse_ndp(msg, SRC, dst), NeighborSolicitation)
        return
    with pytest.raises(ParseError, match=field) as exc:
        parse_ndp(msg, SRC, dst)
    assert exc.value.reason.startswith("ndp:")


def test_multicast_neighbor_advertisement_with_solicited_flag_is_rejected():
    raw = NeighborAdvertisement(DST, solicited=True).build(DST, ALL_NODES)
    with pytest.raises(ParseError, match="solicited flag"):
        parse_ndp(_icmp(raw, DST, ALL_NODES), DST, ALL_NODES)


# MLDv2 (RFC 3810)

def _scapy_records(report):
    """scapy dissects each record after the first as the payload of the one before it."""
    records, layer = [], report.records[0] if report.records else None
    while isinstance(layer, ICMPv6MLDMultAddrRec):
        records.append(layer)
        layer = layer.payload
    return records


def test_mldv2_report_both_ways():
    report = MldV2Report((
        MulticastAddressRecord(CHANGE_TO_EXCLUDE_MODE, IPv6Address("ff02::1:ff12:3456")),
        MulticastAddressRecord(MODE_IS_INCLUDE, IPv6Address("ff3e::1234"),
                               (IPv6Address("2001:db8::a"), IPv6Address("2001:db8::b"))),
    ))
    ours = report.build(SRC)
    s = _ours_in_scapy(ours, SRC, ALL_MLDV2_ROUTERS)
    assert isinstance(s, ICMPv6MLReport2) and s.records_number == 2
    assert [(r.rtype, r.dst, r.sources) for r in _scapy_records(s)] == [
        (4, "ff02::1:ff12:3456", []), (1, "ff3e::1234", ["2001:db8::a", "2001:db8::b"])]
    theirs = bytes(IPv6(src=str(SRC), dst="ff02::16") / ICMPv6MLReport2(records=[
        ICMPv6MLDMultAddrRec(rtype=4, dst="ff02::1:ff12:3456"),
        ICMPv6MLDMultAddrRec(rtype=1, dst="ff3e::1234", sources=["2001:db8::a", "2001:db8::b"])]))[40:]
    assert theirs == ours
    assert parse_ndp(_icmp(theirs, SRC, ALL_MLDV2_ROUTERS), SRC, ALL_MLDV2_ROUTERS) == report


def test_mldv2_aux_data_length_counts_32_bit_words():
    # RFC 3810 §5.2.6: Aux Data Len is in 32-bit words (scapy 2.6 writes bytes, so no scapy here).
    report = MldV2Report((MulticastAddressRecord(MODE_IS_INCLUDE, IPv6Address("ff3e::1"), (), b"auxdata!"),))
    raw = report.build(SRC)
    assert raw[7] == 1 and raw[9] == 2  # record count 1, aux data len 2 words
    assert parse_ndp(_icmp(raw, SRC, ALL_MLDV2_ROUTERS), SRC, ALL_MLDV2_ROUTERS) == report


@pytest.mark.parametrize("cut, field", [(28, "record 0 with 1 sources"), (10, "record 0 of 1")])
def test_truncated_mldv2_report_raises_parse_error(cut, field):
    report = MldV2Report((MulticastAddressRecord(1, IPv6Address("ff3e::1"), (IPv6Address("2001:db8::a"),)),))
    msg = Icmpv6Message.parse(report.build(SRC)[:cut], SRC, ALL_MLDV2_ROUTERS, verify_checksum=False)
    with pytest.raises(ParseError, match=field):
        parse_ndp(msg, SRC, ALL_MLDV2_ROUTERS)


# Address helpers

@pytest.mark.parametrize("addr", ["2001:db8::12:3456", "fe80::5054:ff:fe12:3456", "::1"])
def test_solicited_node_address_and_its_mac_match_scapy(addr):
    a = IPv6Address(addr)
    group = solicited_node_address(a)
    assert group.packed == in6_getnsma(a.packed)
    assert str(multicast_mac(group)) == in6_getnsmac(group.packed)
    with pytest.raises(ValueError):
        multicast_mac(a)


@pytest.mark.parametrize("mac", ["52:54:00:12:34:56", "02:00:00:00:00:01", "ff:ff:ff:ff:ff:fe"])
def test_link_local_from_mac_is_modified_eui64_as_scapy(mac):
    ll = link_local_from_mac(MacAddr.parse(mac))
    assert ll.is_link_local
    assert ll == IPv6Address("fe80::" + in6_mactoifaceid(mac).lower())
