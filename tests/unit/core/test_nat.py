"""NAT packet rewriting: every checksum after an in-place rewrite equals the one a full
computation gives (scapy rebuilds the packet with its checksums deleted), and the word-loop
reference (`naive_checksum`) verifies what scapy does not rebuild (a quoted packet)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.packet import Raw

from components.netstack.core.nat import error_translation, rewrite_icmp_error, rewrite_ipv4
from components.netstack.wire.checksum import naive_checksum


def ip(s: str) -> int:
    return int(IPv4Address(s))


def a(n: int) -> str:
    return str(IPv4Address(n))


PRIV, PUB, SRV, ROUTER = ip("10.0.0.2"), ip("203.0.113.1"), ip("192.168.1.2"), ip("198.51.100.9")


def rebuilt(buf: bytes) -> bytes:
    """The packet with every checksum scapy knows computed afresh."""
    p = IP(bytes(buf))
    del p.chksum
    for layer in (TCP, UDP, ICMP):
        if p.haslayer(layer) and not isinstance(p[layer].underlayer, (IPerror,)):
            del p[layer].chksum
    return bytes(IP(bytes(p)))


def fields(buf: bytes):
    p = IP(bytes(buf))
    l4 = p.payload
    return p.src, p.dst, getattr(l4, "sport", None), getattr(l4, "dport", None)


def test_tcp_addresses_ports_and_both_checksums():
    pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV), ttl=63) /
                          TCP(sport=40000, dport=80, seq=7, flags="PA") / Raw(b"hello" * 33)))
    assert rewrite_ipv4(pkt, 0, PUB, 61000, SRV, 8080)
    assert fields(pkt) == (a(PUB), a(SRV), 61000, 8080)
    assert bytes(pkt) == rebuilt(pkt)


def test_ip_options_and_an_offset_into_a_frame():
    inner = bytes(IP(src=a(PRIV), dst=a(SRV), options=b"\x94\x04\x00\x00") /
                  UDP(sport=5000, dport=53) / Raw(b"q" * 11))
    frame = bytearray(b"\xee" * 14 + inner)
    assert rewrite_ipv4(frame, 14, PUB, 5000, SRV, 53)
    assert frame[:14] == b"\xee" * 14
    assert fields(frame[14:]) == (a(PUB), a(SRV), 5000, 53)
    assert bytes(frame[14:]) == rebuilt(frame[14:])


def test_udp_checksum_zero_stays_zero():
    pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=5000, dport=53) / Raw(b"x")))
    struct.pack_into("!H", pkt, 26, 0)
    assert rewrite_ipv4(pkt, 0, PUB, 7000, SRV, 53)
    assert struct.unpack_from("!H", pkt, 26)[0] == 0
    assert naive_checksum(pkt[:20]) == 0


def test_udp_checksum_that_comes_out_zero_is_sent_as_all_ones():
    # Choose a new source port that makes the one's complement sum 0xFFFF: checksum 0.
    pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=5000, dport=53) / Raw(b"ab")))
    csum = struct.unpack_from("!H", pkt, 26)[0]
    # the sum without the source port; the port that completes it to 0xFFFF
    rest = (0xFFFF - csum - 5000) % 0xFFFF
    # keep the addresses, change only the source port
    port = (0xFFFF - rest) % 0xFFFF or 0xFFFF
    assert rewrite_ipv4(pkt, 0, PRIV, port, SRV, 53)
    assert struct.unpack_from("!H", pkt, 26)[0] == 0xFFFF
    assert bytes(pkt) == rebuilt(pkt)


@pytest.mark.parametrize("itype,ident_from", [(8, "sport"), (0, "dport"), (13, "sport"),
                                              (14, "dport")])
def test_icmp_query_identifier(itype, ident_from):
    msg = ICMP(type=itype, id=1234, seq=9)
    if itype in (13, 14):
        msg = msg / Raw(b"\0" * 12)
    else:
        msg = msg / Raw(b"ping data")
    pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV)) / msg))
    assert rewrite_ipv4(pkt, 0, PUB, 4444, SRV, 5555)
    p = IP(bytes(pkt))
    assert p.src == a(PUB) and p[ICMP].id == (4444 if ident_from == "sport" else 5555)
    assert bytes(pkt) == rebuilt(pkt)


def test_an_all_zero_echo_reply_gets_checksum_all_ones():
    pkt = bytearray(bytes(IP(src=a(SRV), dst=a(PUB)) / ICMP(type=0, id=77, seq=0)))
    assert rewrite_ipv4(pkt, 0, SRV, 0, PRIV, 0)
    assert struct.unpack_from("!H", pkt, 22)[0] == 0xFFFF
    assert naive_checksum(pkt[20:]) == 0


def test_other_icmp_and_other_protocols_change_only_the_ip_header():
    for payload in (ICMP(type=9) / Raw(b"x" * 8), Raw(b"gre packet")):
        proto = 1 if isinstance(payload, ICMP) else 47
        pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV), proto=proto) / payload))
        tail = bytes(pkt[20:])
        assert rewrite_ipv4(pkt, 0, PUB, 1, SRV, 2)
        assert bytes(pkt[20:]) == tail and naive_checksum(pkt[:20]) == 0


def test_later_fragment_changes_only_the_ip_header():
    pkt = bytearray(bytes(IP(src=a(PRIV), dst=a(SRV), proto=6, frag=100) / Raw(b"x" * 40)))
    assert rewrite_ipv4(pkt, 0, PUB, 1, SRV, 2)
    assert bytes(pkt[20:]) == b"x" * 40
    assert IP(bytes(pkt)).src == a(PUB) and naive_checksum(pkt[:20]) == 0


def test_first_fragment_updates_the_transport_checksum():
    whole = bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=1, dport=2) / Raw(b"y" * 100))
    first = bytearray(whole[:20 + 48])
    struct.pack_into("!HH", first, 2, len(first), 0x2000)     # MF, offset 0
    struct.pack_into("!H", first, 10, 0)
    struct.pack_into("!H", first, 10, naive_checksum(first[:20]))
    assert rewrite_ipv4(first, 0, PUB, 7, SRV, 2)
    # the datagram reassembled from the rewritten first fragment checks out
    reassembled = bytes(first[20:]) + whole[20 + 48:]
    pseudo = struct.pack("!IIBBH", PUB, SRV, 0, 17, len(reassembled))
    assert naive_checksum(pseudo + reassembled) == 0


@pytest.mark.parametrize("cut", [0, 10, 19, 30, 37])
def test_truncated_packets_are_refused_untouched(cut):
    pkt = bytes(IP(src=a(PRIV), dst=a(SRV)) / TCP(sport=1, dport=2) / Raw(b"z" * 4))
    short = bytearray(pkt[:cut])
    assert not rewrite_ipv4(short, 0, PUB, 3, SRV, 4)
    assert short == pkt[:cut]


def test_refuses_bad_headers_untouched():
    pkt = bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=1, dport=2))
    for bad in (b"\x65" + pkt[1:], b"\x44" + pkt[1:],
                pkt[:2] + struct.pack("!H", 200) + pkt[4:],
                pkt[:2] + struct.pack("!H", 24) + pkt[4:]):
        buf = bytearray(bad)
        assert not rewrite_ipv4(buf, 0, PUB, 3, SRV, 4) and buf == bad


# -- ICMP errors -------------------------------------------------------------------------------

def quoted_error(quoted: bytes, src: int, dst: int, itype=3, code=3) -> bytearray:
    return bytearray(bytes(IP(src=a(src), dst=a(dst)) / ICMP(type=itype, code=code) /
                           Raw(quoted)))


def test_icmp_error_quoting_udp_is_translated_outer_and_inner():
    # SNAT: PRIV:5000 -> SRV:53 left as PUB:61000. SRV answers port unreachable to PUB.
    sent = bytes(IP(src=a(PUB), dst=a(SRV)) / UDP(sport=61000, dport=53) / Raw(b"query"))
    err = quoted_error(sent, SRV, PUB)
    assert rewrite_icmp_error(err, 0, outer_dst=PRIV, inner_src=PRIV, inner_sport=5000)
    p = IP(bytes(err))
    assert (p.src, p.dst) == (a(SRV), a(PRIV))
    assert (p[IPerror].src, p[IPerror].dst) == (a(PRIV), a(SRV))
    assert (p[UDPerror].sport, p[UDPerror].dport) == (5000, 53)
    assert naive_checksum(err[:20]) == 0                # outer header
    assert naive_checksum(err[20:]) == 0                # ICMP message
    quote = bytes(err[28:])
    assert naive_checksum(quote[:20]) == 0              # quoted header
    # the whole datagram was quoted: its UDP checksum is verifiable, and it is the original's
    original = bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=5000, dport=53) / Raw(b"query"))
    assert quote == original


def test_icmp_error_quoting_tcp_with_its_checksum():
    sent = bytes(IP(src=a(PUB), dst=a(SRV), ttl=1) / TCP(sport=61000, dport=80, flags="S"))
    err = quoted_error(sent, ROUTER, PUB, 11, 0)
    assert rewrite_icmp_error(err, 0, outer_dst=PRIV, inner_src=PRIV, inner_sport=40000)
    original = bytes(IP(src=a(PRIV), dst=a(SRV), ttl=1) / TCP(sport=40000, dport=80, flags="S"))
    assert bytes(err[28:]) == original and naive_checksum(err[20:]) == 0
    assert naive_checksum(err[:20]) == 0


def test_icmp_error_quoting_only_eight_bytes_of_tcp():
    sent = bytes(IP(src=a(PUB), dst=a(SRV)) / TCP(sport=61000, dport=80, flags="S"))
    err = quoted_error(sent[:28], ROUTER, PUB, 11, 0)
    assert rewrite_icmp_error(err, 0, ROUTER, PRIV, PRIV, 40000, None, None)
    p = IP(bytes(err))
    assert p[TCPerror].sport == 40000 and p[IPerror].src == a(PRIV)
    assert naive_checksum(err[20:]) == 0 and naive_checksum(err[28:48]) == 0


def test_icmp_error_quoting_an_echo_request():
    sent = bytes(IP(src=a(PUB), dst=a(SRV)) / ICMP(type=8, id=999, seq=1) / Raw(b"p" * 20))
    err = quoted_error(sent, ROUTER, PUB, 11, 0)
    assert rewrite_icmp_error(err, 0, None, PRIV, PRIV, 17, None, 17)
    original = bytes(IP(src=a(PRIV), dst=a(SRV)) / ICMP(type=8, id=17, seq=1) / Raw(b"p" * 20))
    assert bytes(err[28:]) == original and naive_checksum(err[20:]) == 0


def test_icmp_error_with_translated_outer_source():
    # DNAT: client PRIV -> PUB:80 went to SRV:8080; a router near SRV reports it. The
    # error leaves from the public address, quoting what the client sent.
    sent = bytes(IP(src=a(PRIV), dst=a(SRV)) / UDP(sport=7, dport=8080) / Raw(b"r"))
    err = quoted_error(sent, ROUTER, PRIV)
    flow_reply = (SRV, 8080, PRIV, 7, 17)
    rewrite_reply = (PUB, 80, PRIV, 7)
    assert error_translation(flow_reply, rewrite_reply, True) is None
    args = error_translation(flow_reply, rewrite_reply, False)
    assert args == (PUB, None, None, None, PUB, 80)
    assert rewrite_icmp_error(err, 0, *args)
    p = IP(bytes(err))
    assert (p.src, p.dst, p[IPerror].dst, p[UDPerror].dport) == (a(PUB), a(PRIV), a(PUB), 80)
    original = bytes(IP(src=a(PRIV), dst=a(PUB)) / UDP(sport=7, dport=80) / Raw(b"r"))
    assert bytes(err[28:]) == original
    assert naive_checksum(err[:20]) == 0 and naive_checksum(err[20:]) == 0


def test_error_translation_for_a_snat_flow():
    flow_reply = (SRV, 53, PUB, 61000, 17)
    rewrite_reply = (SRV, 53, PRIV, 5000)
    assert error_translation(flow_reply, rewrite_reply, True) == (None, PRIV, PRIV, 5000,
                                                                  None, None)
    assert error_translation(flow_reply, rewrite_reply, False) is None
    assert error_translation(flow_reply, None, True) is None


def test_icmp_error_refusals_leave_the_buffer_untouched():
    sent = bytes(IP(src=a(PUB), dst=a(SRV)) / UDP(sport=1, dport=2))
    for bad in (quoted_error(sent[:27], SRV, PUB),                     # 7 bytes of UDP
                bytearray(bytes(IP(src=a(SRV), dst=a(PUB)) / ICMP(type=8))),  # not an error
                quoted_error(b"\x65" + sent[1:], SRV, PUB)):           # quoted version 6
        before = bytes(bad)
        assert not rewrite_icmp_error(bad, 0, None, PRIV, PRIV, 5, None, None)
        assert bytes(bad) == before


# -- random addresses and ports ----------------------------------------------------------------

addrs = st.integers(1, 2**32 - 1)
ports = st.integers(0, 65535)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["tcp", "udp", "echo", "echoreply"]), addrs, addrs, ports, ports,
       addrs, addrs, ports, ports, st.binary(max_size=40))
def test_random_rewrites_keep_every_checksum_right(kind, src, dst, sport, dport, nsrc, ndst,
                                                   nsport, ndport, data):
    l4 = {"tcp": lambda: TCP(sport=sport, dport=dport, flags="A"),
          "udp": lambda: UDP(sport=sport, dport=dport),
          "echo": lambda: ICMP(type=8, id=sport),
          "echoreply": lambda: ICMP(type=0, id=dport)}[kind]()
    pkt = bytearray(bytes(IP(src=a(src), dst=a(dst)) / l4 / Raw(data)))
    assert rewrite_ipv4(pkt, 0, nsrc, nsport, ndst, ndport)
    assert bytes(pkt) == rebuilt(pkt)
    assert naive_checksum(pkt[:20]) == 0


@settings(max_examples=100, deadline=None)
@given(addrs, addrs, ports, ports, addrs, addrs, ports, ports, st.booleans(),
       st.integers(0, 30))
def test_random_icmp_error_rewrites_keep_checksums_right(src, dst, sport, dport, nsrc, ndst,
                                                         nsport, ndport, tcp, extra):
    l4 = TCP(sport=sport, dport=dport) if tcp else UDP(sport=sport, dport=dport)
    sent = bytes(IP(src=a(src), dst=a(dst)) / l4 / Raw(b"d" * extra))
    err = quoted_error(sent, ROUTER, src)
    assert rewrite_icmp_error(err, 0, nsrc, ndst, nsrc, nsport, ndst, ndport)
    assert naive_checksum(err[:20]) == 0 and naive_checksum(err[20:]) == 0
    quote = bytes(err[28:])
    assert naive_checksum(quote[:20]) == 0
    # the quote is the whole datagram: its transport checksum verifies with the pseudo-header
    pseudo = struct.pack("!IIBBH", nsrc, ndst, 0, 6 if tcp else 17, len(quote) - 20)
    assert naive_checksum(pseudo + quote[20:]) == 0
