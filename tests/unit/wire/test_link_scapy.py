"""Ethernet, 802.1Q and ARP against scapy as an independent implementation."""

import pytest
from ipaddress import IPv4Address
from scapy.all import ARP, Dot1Q, Ether, Raw

from components.netstack.wire import (ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP,
                                      ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ArpPacket,
                                      EthernetFrame, MacAddr, ParseError, build_ethernet)

A = MacAddr.parse("02:00:00:00:00:0a")
B = MacAddr.parse("52:54:00:12:34:56")


def test_macaddr_validates_length_and_formats_lowercase():
    assert str(MacAddr.parse("AA:BB:CC:DD:EE:FF")) == "aa:bb:cc:dd:ee:ff"
    assert MacAddr.parse("aa-bb-cc-dd-ee-ff") == b"\xaa\xbb\xcc\xdd\xee\xff"
    for bad in (b"", b"\x01" * 5, b"\x01" * 7):
        with pytest.raises(ValueError):
            MacAddr(bad)
    for bad in ("", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:gg", "aaa:bb:cc:dd:ee:f", "aa:bb:cc:dd:ee:ff:00"):
        with pytest.raises(ValueError):
            MacAddr.parse(bad)
    with pytest.raises(TypeError):
        MacAddr("aa:bb:cc:dd:ee:ff")


def test_macaddr_classifies_broadcast_multicast_unicast():
    assert BROADCAST_MAC.is_broadcast and BROADCAST_MAC.is_multicast and not BROADCAST_MAC.is_unicast
    mcast = MacAddr.parse("01:00:5e:00:00:01")
    assert mcast.is_multicast and not mcast.is_broadcast and not mcast.is_unicast
    assert A.is_unicast and A.is_local and not B.is_multicast
    assert hash(A) == hash(bytes(A)) and A == bytes(A)


def test_macaddr_survives_pickling_as_a_macaddr():
    import pickle
    copy = pickle.loads(pickle.dumps(A))
    assert type(copy) is MacAddr and copy == A


@pytest.mark.parametrize("ethertype", [ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_IPV6, 0x88B5])
def test_untagged_frame_built_by_scapy_parses_to_same_fields(ethertype):
    payload = bytes(range(47))  # odd length
    raw = bytes(Ether(dst=str(A), src=str(B), type=ethertype) / Raw(payload))
    frame = EthernetFrame.parse(raw)
    assert (frame.dst, frame.src, frame.ethertype) == (A, B, ethertype)
    assert bytes(frame.payload) == payload and frame.vlan_id is None and frame.header_len == 14
    assert frame.build() == raw


def test_vlan_tagged_frame_built_by_scapy_parses_tag_and_inner_ethertype():
    raw = bytes(Ether(dst=str(BROADCAST_MAC), src=str(A)) / Dot1Q(vlan=1234, prio=5, type=ETHERTYPE_IPV4)
                / Raw(b"\x45" + b"x" * 30))
    frame = EthernetFrame.parse(raw)
    assert frame.vlan_id == 1234 and frame.vlan_pcp == 5 and frame.ethertype == ETHERTYPE_IPV4
    assert bytes(frame.payload) == b"\x45" + b"x" * 30 and frame.header_len == 18
    assert frame.build() == raw


def test_frames_we_build_parse_identically_in_scapy():
    raw = build_ethernet(A, B, ETHERTYPE_IPV6, b"abc")
    s = Ether(raw)
    assert (s.dst, s.src, s.type, bytes(s.payload)) == (str(A), str(B), ETHERTYPE_IPV6, b"abc")
    tagged = EthernetFrame(A, B, ETHERTYPE_ARP, b"q" * 28, vlan_id=7, vlan_pcp=6).build()
    s = Ether(tagged)
    assert s.type == ETHERTYPE_VLAN and s[Dot1Q].vlan == 7 and s[Dot1Q].prio == 6
    assert s[Dot1Q].type == ETHERTYPE_ARP


def test_short_frames_raise_parse_error():
    with pytest.raises(ParseError, match="ethernet"):
        EthernetFrame.parse(b"\0" * 13)
    with pytest.raises(ParseError, match="802.1Q"):
        EthernetFrame.parse(bytes(A) + bytes(B) + b"\x81\x00\x00")


def test_payload_is_a_view_not_a_copy():
    buf = bytearray(build_ethernet(A, B, ETHERTYPE_IPV4, b"abcd"))
    frame = EthernetFrame.parse(buf)
    buf[14] = ord("z")
    assert bytes(frame.payload) == b"zbcd"


@pytest.mark.parametrize("op", [ARP_REQUEST, ARP_REPLY])
def test_arp_built_by_scapy_parses_with_padding(op):
    raw = bytes(ARP(op=op, hwsrc=str(A), psrc="10.0.0.1", hwdst=str(B), pdst="10.0.0.2"))
    pkt = ArpPacket.parse(raw + b"\0" * 18)  # Ethernet minimum-size padding
    assert pkt == ArpPacket(op, A, IPv4Address("10.0.0.1"), B, IPv4Address("10.0.0.2"))
    assert pkt.build() == raw


def test_arp_we_build_parses_in_scapy():
    raw = ArpPacket(ARP_REPLY, B, IPv4Address("192.168.1.1"), A, IPv4Address("192.168.1.99")).build()
    assert len(raw) == 28
    s = ARP(raw)
    assert (s.hwtype, s.ptype, s.hwlen, s.plen, s.op) == (1, 0x0800, 6, 4, ARP_REPLY)
    assert (s.hwsrc, s.psrc, s.hwdst, s.pdst) == (str(B), "192.168.1.1", str(A), "192.168.1.99")


@pytest.mark.parametrize("fields", [dict(hwtype=6), dict(ptype=0x86DD), dict(hwlen=8), dict(plen=16)])
def test_arp_other_than_ethernet_ipv4_is_rejected(fields):
    raw = bytes(ARP(op=1, hwsrc=str(A), psrc="10.0.0.1", pdst="10.0.0.2", **fields))
    with pytest.raises(ParseError, match="arp"):
        ArpPacket.parse(raw.ljust(28, b"\0"))


def test_truncated_arp_is_rejected():
    with pytest.raises(ParseError, match="arp"):
        ArpPacket.parse(bytes(ARP())[:27])
