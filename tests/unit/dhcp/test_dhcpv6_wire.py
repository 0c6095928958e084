"""DHCPv6 wire format against scapy's DHCP6 layers (an independent builder/parser) both ways,
and against garbage: only Dhcpv6ParseError ever escapes the parser."""

from __future__ import annotations

import uuid
from ipaddress import IPv6Address as A, IPv6Network as N

import pytest
import scapy.layers.dhcp6 as d6
from hypothesis import HealthCheck, given, settings, strategies as st

from components.dhcpd.dhcpv6_wire import (DUID_MAX_LEN, INFINITY, Dhcpv6Message,
                                          Dhcpv6ParseError, DuidType, IaAddress, IaNa, IaPd,
                                          IaPrefix, MessageType, RelayMessage, Status,
                                          StatusCode, duid_en, duid_ll, duid_llt, duid_type,
                                          duid_uuid, encode_domains, parse_message)

MAC = bytes.fromhex("020000aabbcc")
MAC_TEXT = "02:00:00:aa:bb:cc"
CLIENT_DUID = duid_ll(MAC)
SERVER_DUID = duid_llt(bytes.fromhex("020000000001"), 946684800 + 1000)


def scapy_parse(raw: bytes):
    return getattr(d6, d6.dhcp6_cls_by_type[raw[0]])(raw)


# ---------------------------------------------------------------- DUIDs

def test_duid_builders_match_scapy_duid_layers():
    assert duid_ll(MAC) == bytes(d6.DUID_LL(lladdr=MAC_TEXT))
    assert duid_llt(MAC, 946684800 + 12345) == bytes(d6.DUID_LLT(lladdr=MAC_TEXT, timeval=12345))
    assert duid_en(311, b"\x01\x02\x03") == bytes(d6.DUID_EN(enterprisenum=311, id=b"\x01\x02\x03"))
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert duid_uuid(u) == bytes(d6.DUID_UUID(uuid=u))
    assert [duid_type(x) for x in (duid_llt(MAC, 0), duid_en(9, b"x"), duid_ll(MAC),
                                   duid_uuid(u))] == [DuidType.LLT, DuidType.EN, DuidType.LL,
                                                      DuidType.UUID]
    assert duid_type(b"\x00\x09abc") == 9  # unknown DUID types are still opaque DUIDs


@pytest.mark.parametrize("kind", ["ll", "llt", "en", "uuid"])
def test_every_duid_kind_round_trips_as_opaque_bytes(kind):
    duid = {"ll": duid_ll(MAC), "llt": duid_llt(MAC, 1e9), "en": duid_en(2, b"vendor-id"),
            "uuid": duid_uuid(uuid.uuid4())}[kind]
    msg = Dhcpv6Message(MessageType.SOLICIT, 1, client_id=duid)
    assert Dhcpv6Message.parse(msg.build()).client_id == duid


# ---------------------------------------------------------------- scapy -> us

def test_scapy_solicit_parses_to_the_same_fields():
    pkt = (d6.DHCP6_Solicit(trid=0xABCDEF)
           / d6.DHCP6OptClientId(duid=d6.DUID_LL(lladdr=MAC_TEXT))
           / d6.DHCP6OptIA_NA(iaid=7, T1=0, T2=0)
           / d6.DHCP6OptIA_PD(iaid=8, T1=0, T2=0,
                              iapdopt=[d6.DHCP6OptIAPrefix(plen=56, prefix="::")])
           / d6.DHCP6OptOptReq(reqopts=[23, 24, 82])
           / d6.DHCP6OptElapsedTime(elapsedtime=150)
           / d6.DHCP6OptRapidCommit()
           / d6.DHCP6OptVendorClass(enterprisenum=311))
    msg = parse_message(bytes(pkt))
    assert msg.msg_type is MessageType.SOLICIT and msg.transaction_id == 0xABCDEF
    assert msg.client_id == CLIENT_DUID and msg.server_id is None
    assert msg.ia_na == (IaNa(7),)
    assert msg.ia_pd == (IaPd(8, prefixes=(IaPrefix(N("::/56"), 0, 0),)),)
    assert msg.oro == (23, 24, 82) and msg.elapsed_time == 150 and msg.rapid_commit
    assert [code for code, _ in msg.unknown] == [16]  # VENDOR_CLASS: kept opaque


def test_scapy_reply_with_nested_status_dns_and_domains_parses():
    pkt = (d6.DHCP6_Reply(trid=42)
           / d6.DHCP6OptServerId(duid=d6.DUID_LLT(lladdr="02:00:00:00:00:01", timeval=1000))
           / d6.DHCP6OptClientId(duid=d6.DUID_LL(lladdr=MAC_TEXT))
           / d6.DHCP6OptIA_NA(iaid=1, T1=300, T2=480, ianaopts=[
               d6.DHCP6OptIAAddress(addr="2001:db8::10", preflft=600, validlft=900),
               d6.DHCP6OptIAAddress(addr="2001:db8::11", preflft=0, validlft=0, iaaddropts=[
                   d6.DHCP6OptStatusCode(statuscode=4, statusmsg=b"moved")])])
           / d6.DHCP6OptIA_PD(iaid=2, T1=1000, T2=1600, iapdopt=[
               d6.DHCP6OptIAPrefix(preflft=2000, validlft=4000, plen=56,
                                   prefix="2001:db8:ff00::")])
           / d6.DHCP6OptIA_NA(iaid=3, T1=0, T2=0, ianaopts=[
               d6.DHCP6OptStatusCode(statuscode=2, statusmsg=b"none left")])
           / d6.DHCP6OptPref(prefval=200)
           / d6.DHCP6OptStatusCode(statuscode=0, statusmsg=b"ok")
           / d6.DHCP6OptDNSServers(dnsservers=["2001:db8::53", "2001:db8::54"])
           / d6.DHCP6OptDNSDomains(dnsdomains=["example.test.", "lab.example."])
           / d6.DHCP6OptUnknown(optcode=82, data=(7200).to_bytes(4, "big"))
           / d6.DHCP6OptUnknown(optcode=83, data=(600).to_bytes(4, "big")))
    msg = parse_message(bytes(pkt))
    assert msg.msg_type is MessageType.REPLY and msg.transaction_id == 42
    assert msg.server_id == SERVER_DUID and msg.client_id == CLIENT_DUID
    assert msg.ia_na[0] == IaNa(1, 300, 480, (
        IaAddress(A("2001:db8::10"), 600, 900),
        IaAddress(A("2001:db8::11"), 0, 0, Status(StatusCode.NOT_ON_LINK, "moved"))))
    assert msg.ia_na[1] == IaNa(3, status=Status(StatusCode.NO_ADDRS_AVAIL, "none left"))
    assert msg.ia_pd == (IaPd(2, 1000, 1600, (IaPrefix(N("2001:db8:ff00::/56"), 2000, 4000),)),)
    assert msg.preference == 200 and msg.status == Status(StatusCode.SUCCESS, "ok")
    assert msg.dns_servers == (A("2001:db8::53"), A("2001:db8::54"))
    assert msg.domain_list == ("example.test", "lab.example")
    assert (msg.sol_max_rt, msg.inf_max_rt) == (7200, 600)


@pytest.mark.parametrize("cls,mtype", [
    (d6.DHCP6_Solicit, MessageType.SOLICIT), (d6.DHCP6_Advertise, MessageType.ADVERTISE),
    (d6.DHCP6_Request, MessageType.REQUEST), (d6.DHCP6_Confirm, MessageType.CONFIRM),
    (d6.DHCP6_Renew, MessageType.RENEW), (d6.DHCP6_Rebind, MessageType.REBIND),
    (d6.DHCP6_Reply, MessageType.REPLY), (d6.DHCP6_Release, MessageType.RELEASE),
    (d6.DHCP6_Decline, MessageType.DECLINE),
    (d6.DHCP6_InfoRequest, MessageType.INFORMATION_REQUEST),
])
def test_every_scapy_message_type_parses_with_its_type_and_transaction_id(cls, mtype):
    raw = bytes(cls(trid=0x010203) / d6.DHCP6OptClientId(duid=d6.DUID_LL(lladdr=MAC_TEXT)))
    msg = Dhcpv6Message.parse(raw)
    assert msg.msg_type is mtype and msg.transaction_id == 0x010203
    assert msg.client_id == CLIENT_DUID


def test_relay_forward_parses_header_only_and_is_refused_as_a_client_message():
    inner = bytes(d6.DHCP6_Solicit(trid=1) / d6.DHCP6OptClientId(duid=d6.DUID_LL()))
    raw = bytes(d6.DHCP6_RelayForward(hopcount=1, linkaddr="2001:db8::1",
                                      peeraddr="fe80::2") / d6.DHCP6OptRelayMsg(message=inner))
    relay = parse_message(raw)
    assert isinstance(relay, RelayMessage)
    assert relay.msg_type is MessageType.RELAY_FORW and relay.hop_count == 1
    assert relay.link_address == A("2001:db8::1") and relay.peer_address == A("fe80::2")
    assert relay.relayed == inner and relay.build() == raw
    with pytest.raises(Dhcpv6ParseError, match="relay"):
        Dhcpv6Message.parse(raw)
    with pytest.raises(Dhcpv6ParseError, match="relay message of 20 bytes"):
        parse_message(raw[:20])


# ---------------------------------------------------------------- us -> scapy

def full_reply() -> Dhcpv6Message:
    return Dhcpv6Message(
        MessageType.REPLY, 0x00BEEF, client_id=CLIENT_DUID, server_id=SERVER_DUID,
        ia_na=(IaNa(1, 300, 480, (IaAddress(A("2001:db8::10"), 600, 900),
                                  IaAddress(A("2001:db8::11"), 0, 0,
                                            Status(StatusCode.NOT_ON_LINK, "moved")))),
               IaNa(9, status=Status(StatusCode.NO_ADDRS_AVAIL, "none"))),
        ia_pd=(IaPd(2, 1000, 1600, (IaPrefix(N("2001:db8:ff00::/56"), 2000, INFINITY),)),),
        preference=255, status=Status(StatusCode.SUCCESS, "all good"), rapid_commit=True,
        dns_servers=(A("2001:db8::53"),), domain_list=("example.test", "b.example"),
        sol_max_rt=7200, inf_max_rt=600, unknown=((32, (86400).to_bytes(4, "big")),))


def test_our_reply_dissects_in_scapy_with_every_field():
    pkt = scapy_parse(full_reply().build())
    assert isinstance(pkt, d6.DHCP6_Reply) and pkt.trid == 0xBEEF
    assert bytes(pkt[d6.DHCP6OptClientId].duid) == CLIENT_DUID
    assert bytes(pkt[d6.DHCP6OptServerId].duid) == SERVER_DUID
    ia = pkt[d6.DHCP6OptIA_NA]
    assert (ia.iaid, ia.T1, ia.T2) == (1, 300, 480)
    addr = ia.ianaopts[0]
    assert (addr.addr, addr.preflft, addr.validlft) == ("2001:db8::10", 600, 900)
    status = ia.ianaopts[1].iaaddropts[0]
    assert (status.statuscode, status.statusmsg) == (4, b"moved")
    pd = pkt[d6.DHCP6OptIA_PD]
    prefix = pd.iapdopt[0]
    assert (pd.iaid, prefix.plen, prefix.prefix, prefix.validlft) == \
        (2, 56, "2001:db8:ff00::", INFINITY)
    assert pkt[d6.DHCP6OptPref].prefval == 255
    assert pkt[d6.DHCP6OptRapidCommit].optlen == 0
    assert pkt[d6.DHCP6OptDNSServers].dnsservers == ["2001:db8::53"]
    assert pkt[d6.DHCP6OptDNSDomains].dnsdomains == ["example.test.", "b.example."]
    statuses = [(s.statuscode, s.statusmsg) for s in _layers(pkt, d6.DHCP6OptStatusCode)]
    assert (0, b"all good") in statuses
    unknown = {o.optcode: o.data for o in _layers(pkt, d6.DHCP6OptUnknown)}
    assert unknown[82] == (7200).to_bytes(4, "big") and unknown[83] == (600).to_bytes(4, "big")
    refresh = _layers(pkt, d6.DHCP6OptInfoRefreshTime)
    assert refresh and refresh[0].reftime == 86400


def _layers(pkt, cls) -> list:
    out, i = [], 1
    while (layer := pkt.getlayer(cls, nb=i)) is not None:
        out.append(layer)
        i += 1
    return out


@pytest.mark.parametrize("mtype", [t for t in MessageType if t not in
                                   (MessageType.RELAY_FORW, MessageType.RELAY_REPL)])
def test_every_message_type_we_build_dissects_in_scapy_as_that_type(mtype):
    raw = Dhcpv6Message(mtype, 77, client_id=CLIENT_DUID, elapsed_time=12).build()
    pkt = scapy_parse(raw)
    assert pkt.msgtype == mtype and pkt.trid == 77
    assert pkt[d6.DHCP6OptElapsedTime].elapsedtime == 12


def test_build_then_parse_is_identity():
    msg = full_reply()
    assert Dhcpv6Message.parse(msg.build()) == msg


def test_prefix_bits_beyond_the_length_are_ignored():
    raw = bytes(d6.DHCP6_Reply(trid=1) / d6.DHCP6OptIA_PD(iaid=1, iapdopt=[
        d6.DHCP6OptIAPrefix(plen=48, prefix="2001:db8:1:ff::", preflft=1, validlft=2)]))
    assert parse_message(raw).ia_pd[0].prefixes[0].prefix == N("2001:db8:1::/48")


def test_unknown_options_are_kept_in_order_also_inside_ias():
    ia = IaNa(5, unknown=((999, b"x"), (998, b"")))
    msg = Dhcpv6Message(MessageType.REQUEST, 3, client_id=CLIENT_DUID, ia_na=(ia,),
                        unknown=((1000, b"abc"), (1000, b"def")))
    back = parse_message(msg.build())
    assert back.ia_na[0].unknown == ((999, b"x"), (998, b""))
    assert back.unknown == ((1000, b"abc"), (1000, b"def"))


def test_unknown_message_and_status_types_stay_integers():
    raw = bytes([200, 0, 0, 1]) + bytes.fromhex("000d0002" "0063")
    msg = parse_message(raw)
    assert msg.msg_type == 200 and msg.status == Status(99, "")


def test_domain_names_encode_as_uncompressed_rfc1035_names():
    assert encode_domains(["example.test", "a."]) == \
        b"\x07example\x04test\x00\x01a\x00"
    with pytest.raises(ValueError):
        encode_domains(["bad..name"])
    with pytest.raises(ValueError):
        encode_domains(["sp ace.test"])


@pytest.mark.parametrize("fields", [
    {"elapsed_time": 0x10000}, {"preference": 256}, {"oro": (0x10000,)},
    {"transaction_id": 1 << 24}, {"client_id": b"\x00\x01"}, {"status": Status(0x10000)},
    {"msg_type": MessageType.RELAY_FORW}, {"ia_na": (IaNa(1 << 32),)},
    {"ia_pd": (IaPd(1, prefixes=(IaPrefix(N("::/0"), -1, 0),)),)},
    {"domain_list": ("a..b",)}, {"unknown": ((1 << 16, b""),)},
    {"unknown": ((7777, bytes(0x10000)),)},
])
def test_building_out_of_range_values_raises_value_error(fields):
    msg = Dhcpv6Message(fields.pop("msg_type", MessageType.SOLICIT), 1, client_id=CLIENT_DUID)
    for name, value in fields.items():
        setattr(msg, name, value)
    with pytest.raises(ValueError):
        msg.build()


# ---------------------------------------------------------------- malformed input

def _with_option(code: int, value: bytes) -> bytes:
    return bytes([1, 0, 0, 1]) + code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


@pytest.mark.parametrize("raw,reason", [
    (b"\x01\x00\x00", "shorter"),
    (bytes([1, 0, 0, 1, 0, 1, 0]), "header truncated"),
    (bytes([1, 0, 0, 1, 0, 1, 0, 9, 1]), "overruns"),
    (_with_option(1, b"\x00\x03"), "DUID"),
    (_with_option(1, bytes(DUID_MAX_LEN + 1)), "DUID"),
    (_with_option(1, CLIENT_DUID) + _with_option(1, CLIENT_DUID)[4:], "more than once"),
    (_with_option(3, bytes(11)), "IA_NA"),
    (_with_option(25, bytes(11)), "IA_PD"),
    (_with_option(3, bytes(12) + bytes.fromhex("00050004") + bytes(4)), "IAADDR"),
    (_with_option(25, bytes(12) + bytes.fromhex("001a0019") + bytes(8) + b"\x81"
                  + bytes(16)), "prefix length 129"),
    (_with_option(3, bytes(12) + bytes.fromhex("000d0001") + b"\x00"), "status code"),
    (_with_option(3, bytes(12) + bytes.fromhex("000d0002") + b"\x00\x00"
                  + bytes.fromhex("000d0002") + b"\x00\x00"), "more than once"),
    (_with_option(6, b"\x00\x17\x00"), "odd length"),
    (_with_option(7, b""), "expected 1"),
    (_with_option(8, b"\x00"), "expected 2"),
    (_with_option(14, b"\x00"), "expected 0"),
    (_with_option(23, bytes(17)), "address list"),
    (_with_option(24, b"\x03abc"), "not terminated"),
    (_with_option(24, b"\xc0\x0c"), "label length"),
    (_with_option(24, b"\x05ab"), "label truncated"),
    (_with_option(24, b"\x03a.b\x00"), "unusable"),
    (_with_option(24, (b"\x3f" + b"a" * 63) * 4 + b"\x00"), "longer than 255"),
    (_with_option(82, b"\x00\x00\x0e"), "expected 4"),
    (bytes(70000), "exceeds"),
])
def test_malformed_messages_raise_dhcpv6_parse_error_with_reason(raw, reason):
    with pytest.raises(Dhcpv6ParseError) as info:
        parse_message(raw)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- fuzz

def _check(raw: bytes) -> None:
    try:
        msg = parse_message(raw)
    except Dhcpv6ParseError:
        return
    # A parsed message always builds, and building then parsing changes nothing.
    again = parse_message(msg.build())
    assert again == msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_parse_error(raw):
    _check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=4, max_size=8).map(lambda b: bytes([b[0] % 14]) + b[1:]),
       st.lists(st.tuples(st.sampled_from([1, 2, 3, 5, 6, 7, 8, 13, 14, 23, 24, 25, 26,
                                           82, 83, 9999]),
                          st.binary(max_size=40)), max_size=6))
def test_fuzz_options_of_every_known_code_with_random_values(header, options):
    raw = header[:4] + b"".join(code.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v
                                for code, v in options)
    _check(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_messages_only_raise_parse_error(data):
    raw = bytearray(full_reply().build())
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        i = data.draw(st.integers(0, len(raw)))
        if op == "flip" and i < len(raw):
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[i:]
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and i < len(raw):
            del raw[i:i + data.draw(st.integers(1, 8))]
    _check(bytes(raw))
