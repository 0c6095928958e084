"""DHCP wire format against scapy (an independent builder/parser) and against garbage."""

from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import BOOTP, DHCP

from components.dhcpd.wire import (BOOTP_MIN_LEN, BOOTREPLY, FLAG_BROADCAST, DhcpMessage,
                                   DhcpParseError, MessageType, Option,
                                   decode_classless_routes, encode_classless_routes)

MAC = bytes.fromhex("020000aabbcc")


def scapy_discover() -> bytes:
    pkt = BOOTP(op=1, xid=0x12345678, secs=3, flags=0x8000, chaddr=MAC,
                giaddr="10.0.0.1") / DHCP(options=[
                    ("message-type", "discover"),
                    ("requested_addr", "10.0.0.50"),
                    ("hostname", b"guest1"),
                    ("client_id", b"\x01" + MAC),
                    ("param_req_list", [1, 3, 6, 15, 121]),
                    ("max_dhcp_size", 1500),
                    "end"])
    return bytes(pkt)


def test_scapy_discover_parses_to_same_fields_and_options():
    msg = DhcpMessage.parse(scapy_discover())
    assert (msg.op, msg.htype, msg.hlen, msg.xid, msg.secs) == (1, 1, 6, 0x12345678, 3)
    assert msg.broadcast and msg.flags == FLAG_BROADCAST
    assert msg.chaddr == MAC and msg.giaddr == A("10.0.0.1") and msg.ciaddr == A(0)
    assert msg.message_type is MessageType.DISCOVER
    assert msg.requested_ip == A("10.0.0.50")
    assert msg.hostname == "guest1"
    assert msg.client_id == b"\x01" + MAC
    assert msg.parameter_request_list == (1, 3, 6, 15, 121)
    assert msg.max_message_size == 1500
    assert list(msg.options) == [53, 50, 12, 61, 55, 57]


def test_our_ack_parses_in_scapy():
    msg = DhcpMessage(op=BOOTREPLY, xid=7, chaddr=MAC, yiaddr=A("192.168.5.20"),
                      siaddr=A("192.168.5.1"), sname=b"srv", file=b"boot.img")
    msg.message_type = MessageType.ACK
    msg.server_id = A("192.168.5.1")
    msg.lease_time = 3600
    msg.renewal_time = 1800
    msg.rebinding_time = 3150
    msg.subnet_mask = A("255.255.255.0")
    msg.routers = [A("192.168.5.1")]
    msg.dns_servers = [A("1.1.1.1"), A("8.8.8.8")]
    msg.domain_name = "example.test"
    msg.mtu = 1400
    msg.broadcast_address = A("192.168.5.255")
    msg.message = "hello"
    msg.classless_routes = [(N("10.0.0.0/8"), A("192.168.5.254"))]
    raw = msg.build()
    assert len(raw) >= BOOTP_MIN_LEN
    pkt = BOOTP(raw)
    assert pkt.op == 2 and pkt.xid == 7 and pkt.yiaddr == "192.168.5.20"
    assert pkt.siaddr == "192.168.5.1" and pkt.chaddr[:6] == MAC
    assert pkt.sname.rstrip(b"\0") == b"srv" and pkt.file.rstrip(b"\0") == b"boot.img"
    opts = {o[0]: o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == (5,)
    assert opts["server_id"] == ("192.168.5.1",)
    assert opts["lease_time"] == (3600,)
    assert opts["renewal_time"] == (1800,) and opts["rebinding_time"] == (3150,)
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["router"] == ("192.168.5.1",)
    assert opts["name_server"] == ("1.1.1.1", "8.8.8.8")
    assert opts["domain"] == (b"example.test",)
    assert opts["interface-mtu"] == (1400,)
    assert opts["broadcast_address"] == ("192.168.5.255",)
    assert opts["error_message"] == (b"hello",)
    assert opts["classless_static_routes"] == (["10.0.0.0/8:192.168.5.254"],)
    assert pkt[DHCP].options[-1] == "end"


# RFC 3442 §3: the table of destination descriptors.
RFC3442_EXAMPLES = [
    ("0.0.0.0/0", bytes([0])),
    ("10.0.0.0/8", bytes([8, 10])),
    ("10.0.0.0/24", bytes([24, 10, 0, 0])),
    ("10.17.0.0/16", bytes([16, 10, 17])),
    ("10.27.129.0/24", bytes([24, 10, 27, 129])),
    ("10.229.0.128/25", bytes([25, 10, 229, 0, 128])),
    ("10.198.122.47/32", bytes([32, 10, 198, 122, 47])),
]


@pytest.mark.parametrize("net,descriptor", RFC3442_EXAMPLES)
def test_classless_route_descriptors_match_rfc3442_table(net, descriptor):
    router = A("10.0.0.1")
    encoded = encode_classless_routes([(N(net), router)])
    assert encoded == descriptor + router.packed
    assert decode_classless_routes(encoded) == ((N(net), router),)


def test_classless_routes_agree_with_scapy_both_ways():
    routes = [(N(n), A("192.168.1.1")) for n, _ in RFC3442_EXAMPLES]
    text = [f"{n}:192.168.1.1" for n, _ in RFC3442_EXAMPLES]
    raw = bytes(BOOTP(chaddr=MAC) / DHCP(options=[("message-type", "offer"),
                                                    ("classless_static_routes", text), "end"]))
    assert DhcpMessage.parse(raw).classless_routes == tuple(routes)
    ours = DhcpMessage(chaddr=MAC)
    ours.message_type = MessageType.OFFER
    ours.classless_routes = routes
    parsed = BOOTP(ours.build())[DHCP].options
    assert ("classless_static_routes", text) in parsed


def test_classless_route_truncated_or_with_host_bits_beyond_width_is_rejected():
    with pytest.raises(DhcpParseError, match="truncated"):
        decode_classless_routes(bytes([8, 10, 1, 2, 3]))  # router cut short
    with pytest.raises(DhcpParseError, match="host bits"):
        decode_classless_routes(bytes([9, 10, 0xFF, 1, 2, 3, 4]))


def test_long_option_is_split_and_concatenated_per_rfc3396():
    msg = DhcpMessage(chaddr=MAC)
    msg.message_type = MessageType.ACK
    msg.dns_servers = [A(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(100)]  # 400 bytes
    raw = msg.build()
    back = DhcpMessage.parse(raw)
    assert back.dns_servers == tuple(msg.dns_servers)
    assert raw.count(bytes([Option.DNS, 255])) == 1


def test_overloaded_file_and_sname_fields_carry_options():
    base = bytearray(DhcpMessage(chaddr=MAC).build())
    # options field: type + overload=3; file (offset 108) then sname (offset 44).
    opts = bytes([53, 1, 2, 52, 1, 3, 255])
    base[240:240 + len(opts)] = opts
    file_opts = bytes([51, 4, 0, 0, 14, 16, 255])
    base[108:108 + len(file_opts)] = file_opts
    sname_opts = bytes([54, 4, 10, 0, 0, 1, 255])
    base[44:44 + len(sname_opts)] = sname_opts
    msg = DhcpMessage.parse(bytes(base))
    assert msg.message_type is MessageType.OFFER
    assert msg.lease_time == 3600 and msg.server_id == A("10.0.0.1")
    assert msg.sname == b"" and msg.file == b""


def test_missing_end_option_is_tolerated_and_pads_are_skipped():
    raw = bytes(DhcpMessage(chaddr=MAC).build()[:240]) + bytes([0, 0, 53, 1, 1, 0])
    assert DhcpMessage.parse(raw).message_type is MessageType.DISCOVER


def test_short_text_client_id_and_parameter_list_are_accepted_as_sent():
    raw = bytes(DhcpMessage(chaddr=MAC).build()[:240]) + bytes([53, 1, 1, 12, 0, 55, 0,
                                                                 61, 1, 7, 255])
    msg = DhcpMessage.parse(raw)
    assert (msg.hostname, msg.parameter_request_list, msg.client_id) == ("", (), b"\x07")


def good() -> bytearray:
    msg = DhcpMessage(chaddr=MAC, xid=1)
    msg.message_type = MessageType.DISCOVER
    return bytearray(msg.build())


def _corrupt(offset, value):
    buf = good()
    buf[offset:offset + len(value)] = value
    return bytes(buf)


@pytest.mark.parametrize("raw,reason", [
    (bytes(239), "shorter"),
    (_corrupt(236, b"\x63\x82\x53\x64"), "magic cookie"),
    (_corrupt(0, b"\x07"), "op"),
    (_corrupt(2, b"\x11"), "hlen"),
    (bytes(good()[:240]) + bytes([53]), "truncated"),
    (bytes(good()[:240]) + bytes([53, 5, 1]), "overruns"),
    (bytes(good()[:240]) + bytes([53, 2, 1, 1, 255]), "option 53"),
    (bytes(good()[:240]) + bytes([54, 3, 1, 2, 3, 255]), "option 54"),
    (bytes(good()[:240]) + bytes([52, 1, 4, 255]), "overload"),
    (bytes(good()[:240]) + bytes([121, 5, 33, 0, 0, 0, 0, 255]), "width"),
    (bytes(70000), "exceeds"),
])
def test_malformed_messages_raise_dhcp_parse_error_with_reason(raw, reason):
    with pytest.raises(DhcpParseError) as info:
        DhcpMessage.parse(raw)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def _exercise(msg: DhcpMessage) -> None:
    for name in ("message_type", "subnet_mask", "routers", "dns_servers", "hostname",
                 "domain_name", "mtu", "broadcast_address", "requested_ip", "lease_time",
                 "server_id", "parameter_request_list", "message", "max_message_size",
                 "renewal_time", "rebinding_time", "client_id", "classless_routes"):
        getattr(msg, name)  # a parsed message's accessors never raise
    again = DhcpMessage.parse(msg.build())
    assert again == msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=700))
def test_random_bytes_raise_only_dhcp_parse_error(raw):
    try:
        msg = DhcpMessage.parse(raw)
    except DhcpParseError:
        return
    _exercise(msg)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(240, 420))
def test_mutated_valid_packets_raise_only_dhcp_parse_error(mutations, cut):
    buf = bytearray(scapy_discover())
    buf += bytes(max(0, 420 - len(buf)))
    for offset, value in mutations:
        buf[offset] = value
    try:
        msg = DhcpMessage.parse(bytes(buf[:cut]))
    except DhcpParseError:
        return
    _exercise(msg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=300)), max_size=12))
def test_random_option_sets_raise_only_dhcp_parse_error(options):
    body = bytes(good()[:240])
    for code, value in options:
        for i in range(0, max(len(value), 1), 255):
            chunk = value[i:i + 255]
            body += bytes([code, len(chunk)]) + chunk
    try:
        msg = DhcpMessage.parse(body + b"\xff")
    except DhcpParseError:
        return
    _exercise(msg)
