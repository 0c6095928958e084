"""DHCPv6 wire format (RFC 8415 §8, §9, §21; RFC 3646 for DNS), parse and build.

`parse_message` turns a UDP payload into a `Dhcpv6Message` (client/server messages, §8) or a
`RelayMessage` (§9: header and top-level options only, so a server can count and drop it).
Every option whose meaning the client or server relies on is decoded into a typed field;
every other option is kept opaque, in order, in `unknown`, and is built back unchanged.
Anything malformed raises the one `Dhcpv6ParseError`. This module knows nothing of states,
leases or time.

Lifetimes and T1/T2 are plain seconds; `INFINITY` (0xffffffff) means "forever" (§7.7).
DUIDs are opaque bytes (§11: they MUST only be compared for equality); `duid_ll` and friends
build the well-known kinds.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv6Address, IPv6Network
from typing import Any, Callable

CLIENT_PORT = 546
SERVER_PORT = 547
# RFC 8415 §7.1: clients send to All_DHCP_Relay_Agents_and_Servers.
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = IPv6Address("ff02::1:2")
INFINITY = 0xFFFFFFFF
# Largest UDP payload over IPv6 without jumbograms.
MAX_MESSAGE_LEN = 65535 - 8
_OPT = struct.Struct("!HH")
_RELAY_HEADER_LEN = 34


class Dhcpv6ParseError(ValueError):
    """The one error the parsers raise; `reason` says what was malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"dhcpv6: {reason}")
        self.reason = reason


class MessageType(IntEnum):
    """RFC 8415 §7.3."""
    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


RELAY_TYPES = (MessageType.RELAY_FORW, MessageType.RELAY_REPL)


class Option(IntEnum):
    """RFC 8415 §21 (and RFC 3646 for 23/24)."""
    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    AUTH = 11
    UNICAST = 12
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    INTERFACE_ID = 18
    DNS_SERVERS = 23
    DOMAIN_LIST = 24
    IA_PD = 25
    IAPREFIX = 26
    INFORMATION_REFRESH_TIME = 32
    SOL_MAX_RT = 82
    INF_MAX_RT = 83


class StatusCode(IntEnum):
    """RFC 8415 §21.13."""
    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5
    NO_PREFIX_AVAIL = 6


class DuidType(IntEnum):
    """RFC 8415 §11.1 (and RFC 6355 for UUID)."""
    LLT = 1
    EN = 2
    LL = 3
    UUID = 4


HWTYPE_ETHERNET = 1
# RFC 8415 §11.1: after the 2-byte type, a DUID holds 1 to 128 octets.
DUID_MIN_LEN = 3
DUID_MAX_LEN = 130
_DUID_EPOCH = 946684800  # RFC 8415 §11.2: DUID-LLT time counts from 2000-01-01 00:00 UTC


# ---------------------------------------------------------------- DUIDs

def duid_ll(mac: bytes, hwtype: int = HWTYPE_ETHERNET) -> bytes:
    """DUID-LL (RFC 8415 §11.4): type 3, hardware type, link-layer address."""
    if not 1 <= len(mac) <= DUID_MAX_LEN - 4:
        raise ValueError("link-layer address length out of range")
    return struct.pack("!HH", DuidType.LL, hwtype) + bytes(mac)


def duid_llt(mac: bytes, unix_time: float, hwtype: int = HWTYPE_ETHERNET) -> bytes:
    """DUID-LLT (RFC 8415 §11.2): time in seconds since 2000-01-01 UTC, modulo 2^32."""
    if not 1 <= len(mac) <= DUID_MAX_LEN - 8:
        raise ValueError("link-layer address length out of range")
    seconds = int(unix_time - _DUID_EPOCH) & 0xFFFFFFFF
    return struct.pack("!HHI", DuidType.LLT, hwtype, seconds) + bytes(mac)


def duid_en(enterprise: int, identifier: bytes) -> bytes:
    """DUID-EN (RFC 8415 §11.3): IANA enterprise number and a vendor identifier."""
    if not 1 <= len(identifier) <= DUID_MAX_LEN - 6:
        raise ValueError("identifier length out of range")
    return struct.pack("!HI", DuidType.EN, enterprise) + bytes(identifier)


def duid_uuid(value: _uuid.UUID | bytes) -> bytes:
    """DUID-UUID (RFC 6355 §4): type 4 and the 16-byte UUID."""
    raw = value.bytes if isinstance(value, _uuid.UUID) else bytes(value)
    if len(raw) != 16:
        raise ValueError("a UUID is 16 bytes")
    return struct.pack("!H", DuidType.UUID) + raw


def duid_type(duid: bytes) -> DuidType | int:
    code = int.from_bytes(duid[:2], "big")
    try:
        return DuidType(code)
    except ValueError:
        return code


# ---------------------------------------------------------------- option values

@dataclass(frozen=True, slots=True)
class Status:
    """STATUS_CODE (§21.13); `message` is the UTF-8 text, undecodable bytes replaced."""
    code: StatusCode | int
    message: str = ""


Opaque = tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class IaAddress:
    """IAADDR (§21.6)."""
    address: IPv6Address
    preferred: int
    valid: int
    status: Status | None = None
    unknown: Opaque = ()


@dataclass(frozen=True, slots=True)
class IaPrefix:
    """IAPREFIX (§21.22); in a client's hint the prefix may be :: with only a length."""
    prefix: IPv6Network
    preferred: int
    valid: int
    status: Status | None = None
    unknown: Opaque = ()


@dataclass(frozen=True, slots=True)
class IaNa:
    """IA_NA (§21.4)."""
    iaid: int
    t1: int = 0
    t2: int = 0
    addresses: tuple[IaAddress, ...] = ()
    status: Status | None = None
    unknown: Opaque = ()


@dataclass(frozen=True, slots=True)
class IaPd:
    """IA_PD (§21.21)."""
    iaid: int
    t1: int = 0
    t2: int = 0
    prefixes: tuple[IaPrefix, ...] = ()
    status: Status | None = None
    unknown: Opaque = ()


# ---------------------------------------------------------------- decoding helpers

def _tlvs(buf: bytes, where: str) -> list[tuple[int, bytes]]:
    out = []
    i, n = 0, len(buf)
    while i < n:
        if i + 4 > n:
            raise Dhcpv6ParseError(f"{where}: option header truncated at offset {i}")
        code, length = _OPT.unpack_from(buf, i)
        if i + 4 + length > n:
            raise Dhcpv6ParseError(f"{where}: option {code} length {length} overruns "
                                   f"the {n - i - 4} bytes left")
        out.append((code, buf[i + 4:i + 4 + length]))
        i += 4 + length
    return out


def _fixed(n: int, code: int, v: bytes) -> bytes:
    if len(v) != n:
        raise Dhcpv6ParseError(f"option {code} has length {len(v)}, expected {n}")
    return v


def _dec_duid(code: int, v: bytes) -> bytes:
    if not DUID_MIN_LEN <= len(v) <= DUID_MAX_LEN:
        raise Dhcpv6ParseError(f"option {code} (DUID) has length {len(v)}, "
                               f"not {DUID_MIN_LEN}..{DUID_MAX_LEN}")
    return bytes(v)


def _dec_u8(code: int, v: bytes) -> int:
    return _fixed(1, code, v)[0]


def _dec_u16(code: int, v: bytes) -> int:
    return int.from_bytes(_fixed(2, code, v), "big")


def _dec_u32(code: int, v: bytes) -> int:
    return int.from_bytes(_fixed(4, code, v), "big")


def _dec_flag(code: int, v: bytes) -> bool:
    _fixed(0, code, v)
    return True


def _dec_oro(code: int, v: bytes) -> tuple[int, ...]:
    if len(v) % 2:
        raise Dhcpv6ParseError(f"option {code} (ORO) has odd length {len(v)}")
    return tuple(int.from_bytes(v[i:i + 2], "big") for i in range(0, len(v), 2))


def _dec_addresses(code: int, v: bytes) -> tuple[IPv6Address, ...]:
    if len(v) % 16:  # RFC 3646 §3: a multiple of 16
        raise Dhcpv6ParseError(f"option {code} (address list) has length {len(v)}")
    return tuple(IPv6Address(v[i:i + 16]) for i in range(0, len(v), 16))


def _dec_status(code: int, v: bytes) -> Status:
    if len(v) < 2:
        raise Dhcpv6ParseError(f"option {code} (status code) has length {len(v)} < 2")
    value = int.from_bytes(v[:2], "big")
    try:
        status: StatusCode | int = StatusCode(value)
    except ValueError:
        status = value
    return Status(status, v[2:].decode("utf-8", "replace"))


def _label_ok(label: bytes) -> bool:
    # Search-list names end up in resolv.conf-like files and logs: a label holding a dot,
    # a backslash, whitespace or control bytes could not be written back unambiguously.
    return all(0x21 <= b < 0x7F and b not in (0x2E, 0x5C) for b in label)


def _dec_domains(code: int, v: bytes) -> tuple[str, ...]:
    """RFC 8415 §10 / RFC 1035 §3.1: uncompressed names, each ending in a zero label."""
    names = []
    i, n = 0, len(v)
    while i < n:
        start, labels = i, []
        while True:
            if i >= n:
                raise Dhcpv6ParseError(f"option {code}: domain name not terminated")
            size = v[i]
            i += 1
            if size == 0:
                break
            if size > 63:  # 64..255 would be compression pointers, forbidden here
                raise Dhcpv6ParseError(f"option {code}: label length {size} > 63")
            if i + size > n:
                raise Dhcpv6ParseError(f"option {code}: label truncated")
            label = v[i:i + size]
            if not _label_ok(label):
                raise Dhcpv6ParseError(f"option {code}: label {label!r} has unusable bytes")
            labels.append(label.decode("ascii"))
            i += size
        if i - start > 255:
            raise Dhcpv6ParseError(f"option {code}: domain name longer than 255 bytes")
        names.append(".".join(labels))
    return tuple(names)


def _singletons(opts: list[tuple[int, bytes]], where: str,
                typed: dict[int, Callable[[int, bytes], Any]],
                repeated: frozenset[int] = frozenset()) -> tuple[dict[int, Any], Opaque]:
    """Decode the typed options; RFC 8415 §21.1: unless said otherwise an option appears
    once, so a second copy of a typed one is malformed. Untyped options stay opaque."""
    found: dict[int, Any] = {}
    unknown: list[tuple[int, bytes]] = []
    for code, value in opts:
        decode = typed.get(code)
        if decode is None:
            unknown.append((code, bytes(value)))
        elif code in repeated:
            found.setdefault(code, []).append(decode(code, value))
        elif code in found:
            raise Dhcpv6ParseError(f"{where}: option {code} appears more than once")
        else:
            found[code] = decode(code, value)
    return found, tuple(unknown)


def _dec_iaaddr(code: int, v: bytes) -> IaAddress:
    if len(v) < 24:
        raise Dhcpv6ParseError(f"option {code} (IAADDR) has length {len(v)} < 24")
    address, preferred, valid = IPv6Address(v[:16]), *struct.unpack_from("!II", v, 16)
    found, unknown = _singletons(_tlvs(v[24:], "IAADDR"), "IAADDR",
                                 {Option.STATUS_CODE: _dec_status})
    return IaAddress(address, preferred, valid, found.get(Option.STATUS_CODE), unknown)


def _dec_iaprefix(code: int, v: bytes) -> IaPrefix:
    if len(v) < 25:
        raise Dhcpv6ParseError(f"option {code} (IAPREFIX) has length {len(v)} < 25")
    preferred, valid, plen = struct.unpack_from("!IIB", v)
    if plen > 128:
        raise Dhcpv6ParseError(f"option {code} (IAPREFIX): prefix length {plen} > 128")
    # §21.22: bits past the prefix length are set to zero by the sender, ignored by us.
    prefix = IPv6Network((IPv6Address(v[9:25]), plen), strict=False)
    found, unknown = _singletons(_tlvs(v[25:], "IAPREFIX"), "IAPREFIX",
                                 {Option.STATUS_CODE: _dec_status})
    return IaPrefix(prefix, preferred, valid, found.get(Option.STATUS_CODE), unknown)


def _dec_ia_na(code: int, v: bytes) -> IaNa:
    if len(v) < 12:
        raise Dhcpv6ParseError(f"option {code} (IA_NA) has length {len(v)} < 12")
    iaid, t1, t2 = struct.unpack_from("!III", v)
    found, unknown = _singletons(_tlvs(v[12:], "IA_NA"), "IA_NA",
                                 {Option.IAADDR: _dec_iaaddr, Option.STATUS_CODE: _dec_status},
                                 frozenset({Option.IAADDR}))
    return IaNa(iaid, t1, t2, tuple(found.get(Option.IAADDR, ())),
                found.get(Option.STATUS_CODE), unknown)


def _dec_ia_pd(code: int, v: bytes) -> IaPd:
    if len(v) < 12:
        raise Dhcpv6ParseError(f"option {code} (IA_PD) has length {len(v)} < 12")
    iaid, t1, t2 = struct.unpack_from("!III", v)
    found, unknown = _singletons(_tlvs(v[12:], "IA_PD"), "IA_PD",
                                 {Option.IAPREFIX: _dec_iaprefix,
                                  Option.STATUS_CODE: _dec_status},
                                 frozenset({Option.IAPREFIX}))
    return IaPd(iaid, t1, t2, tuple(found.get(Option.IAPREFIX, ())),
                found.get(Option.STATUS_CODE), unknown)


# Top-level options: field name and decoder. IA_NA and IA_PD may repeat (one per IAID).
_TOP: dict[int, tuple[str, Callable[[int, bytes], Any]]] = {
    Option.CLIENTID: ("client_id", _dec_duid),
    Option.SERVERID: ("server_id", _dec_duid),
    Option.IA_NA: ("ia_na", _dec_ia_na),
    Option.IA_PD: ("ia_pd", _dec_ia_pd),
    Option.ORO: ("oro", _dec_oro),
    Option.PREFERENCE: ("preference", _dec_u8),
    Option.ELAPSED_TIME: ("elapsed_time", _dec_u16),
    Option.STATUS_CODE: ("status", _dec_status),
    Option.RAPID_COMMIT: ("rapid_commit", _dec_flag),
    Option.DNS_SERVERS: ("dns_servers", _dec_addresses),
    Option.DOMAIN_LIST: ("domain_list", _dec_domains),
    Option.SOL_MAX_RT: ("sol_max_rt", _dec_u32),
    Option.INF_MAX_RT: ("inf_max_rt", _dec_u32),
}
_REPEATED = frozenset({Option.IA_NA, Option.IA_PD})
_TOP_DECODERS = {code: decode for code, (_, decode) in _TOP.items()}


# ---------------------------------------------------------------- encoding helpers

def _opt(code: int, value: bytes) -> bytes:
    return _u16(code, "option code") + _u16(len(value), f"option {code} length") + value


def _u16(v: int, what: str) -> bytes:
    if not 0 <= v <= 0xFFFF:
        raise ValueError(f"{what} {v} is not a 16-bit value")
    return struct.pack("!H", v)


def _u32(v: int, what: str) -> bytes:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{what} {v} is not a 32-bit value")
    return struct.pack("!I", v)


def _enc_duid(duid: bytes) -> bytes:
    if not DUID_MIN_LEN <= len(duid) <= DUID_MAX_LEN:
        raise ValueError(f"DUID of {len(duid)} bytes, not {DUID_MIN_LEN}..{DUID_MAX_LEN}")
    return bytes(duid)


def _enc_status(status: Status) -> bytes:
    return _opt(Option.STATUS_CODE, _u16(int(status.code), "status code")
                + status.message.encode("utf-8"))


def _enc_unknown(unknown: Opaque) -> bytes:
    return b"".join(_opt(code, value) for code, value in unknown)


def encode_domains(names: tuple[str, ...] | list[str]) -> bytes:
    out = bytearray()
    for name in names:
        wire = bytearray()
        stripped = name[:-1] if name.endswith(".") else name
        for label in stripped.split(".") if stripped else ():
            raw = label.encode("ascii")
            if not 1 <= len(raw) <= 63 or not _label_ok(raw):
                raise ValueError(f"domain {name!r}: label {label!r} is not usable")
            wire += bytes([len(raw)]) + raw
        wire.append(0)
        if len(wire) > 255:
            raise ValueError(f"domain {name!r} is longer than 255 bytes")
        out += wire
    return bytes(out)


def _enc_iaaddr(a: IaAddress) -> bytes:
    body = (IPv6Address(a.address).packed + _u32(a.preferred, "preferred lifetime")
            + _u32(a.valid, "valid lifetime"))
    if a.status is not None:
        body += _enc_status(a.status)
    return _opt(Option.IAADDR, body + _enc_unknown(a.unknown))


def _enc_iaprefix(p: IaPrefix) -> bytes:
    net = IPv6Network(p.prefix)
    body = (_u32(p.preferred, "preferred lifetime") + _u32(p.valid, "valid lifetime")
            + bytes([net.prefixlen]) + net.network_address.packed)
    if p.status is not None:
        body += _enc_status(p.status)
    return _opt(Option.IAPREFIX, body + _enc_unknown(p.unknown))


def _enc_ia(code: int, ia: IaNa | IaPd) -> bytes:
    body = _u32(ia.iaid, "IAID") + _u32(ia.t1, "T1") + _u32(ia.t2, "T2")
    if isinstance(ia, IaNa):
        body += b"".join(_enc_iaaddr(a) for a in ia.addresses)
    else:
        body += b"".join(_enc_iaprefix(p) for p in ia.prefixes)
    if ia.status is not None:
        body += _enc_status(ia.status)
    return _opt(code, body + _enc_unknown(ia.unknown))


# ---------------------------------------------------------------- messages

@dataclass(slots=True)
class Dhcpv6Message:
    """A client/server message (§8). Absent options are None (or empty tuples)."""
    msg_type: MessageType | int
    transaction_id: int = 0
    client_id: bytes | None = None
    server_id: bytes | None = None
    ia_na: tuple[IaNa, ...] = ()
    ia_pd: tuple[IaPd, ...] = ()
    oro: tuple[int, ...] | None = None
    preference: int | None = None
    elapsed_time: int | None = None          # hundredths of a second (§21.9)
    status: Status | None = None
    rapid_commit: bool = False
    dns_servers: tuple[IPv6Address, ...] | None = None
    domain_list: tuple[str, ...] | None = None
    sol_max_rt: int | None = None
    inf_max_rt: int | None = None
    unknown: Opaque = field(default=())

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "Dhcpv6Message":
        msg = parse_message(buf)
        if isinstance(msg, RelayMessage):
            raise Dhcpv6ParseError(f"message type {msg.msg_type} is a relay message")
        return msg

    def build(self) -> bytes:
        mtype = int(self.msg_type)
        if not 0 <= mtype <= 255 or mtype in RELAY_TYPES:
            raise ValueError(f"message type {mtype} is not a client/server message type")
        if not 0 <= self.transaction_id <= 0xFFFFFF:
            raise ValueError("transaction id must fit in 24 bits")
        out = bytearray(struct.pack("!I", mtype << 24 | self.transaction_id))
        if self.client_id is not None:
            out += _opt(Option.CLIENTID, _enc_duid(self.client_id))
        if self.server_id is not None:
            out += _opt(Option.SERVERID, _enc_duid(self.server_id))
        for ia in self.ia_na:
            out += _enc_ia(Option.IA_NA, ia)
        for pd in self.ia_pd:
            out += _enc_ia(Option.IA_PD, pd)
        if self.oro is not None:
            out += _opt(Option.ORO, b"".join(_u16(c, "option code") for c in self.oro))
        if self.preference is not None:
            out += _opt(Option.PREFERENCE, bytes([self.preference]))  # ValueError if > 255
        if self.elapsed_time is not None:
            out += _opt(Option.ELAPSED_TIME, _u16(self.elapsed_time, "elapsed time"))
        if self.status is not None:
            out += _enc_status(self.status)
        if self.rapid_commit:
            out += _opt(Option.RAPID_COMMIT, b"")
        if self.dns_servers is not None:
            out += _opt(Option.DNS_SERVERS,
                        b"".join(IPv6Address(a).packed for a in self.dns_servers))
        if self.domain_list is not None:
            out += _opt(Option.DOMAIN_LIST, encode_domains(self.domain_list))
        if self.sol_max_rt is not None:
            out += _opt(Option.SOL_MAX_RT, _u32(self.sol_max_rt, "SOL_MAX_RT"))
        if self.inf_max_rt is not None:
            out += _opt(Option.INF_MAX_RT, _u32(self.inf_max_rt, "INF_MAX_RT"))
        out += _enc_unknown(self.unknown)
        if len(out) > MAX_MESSAGE_LEN:
            raise ValueError(f"message of {len(out)} bytes exceeds a UDP datagram")
        return bytes(out)


@dataclass(frozen=True, slots=True)
class RelayMessage:
    """RELAY-FORW / RELAY-REPL (§9): the header and top-level options, all opaque. qnet's
    server serves directly attached clients only; this is parsed so it can be refused."""
    msg_type: MessageType
    hop_count: int
    link_address: IPv6Address
    peer_address: IPv6Address
    options: Opaque = ()

    @property
    def relayed(self) -> bytes | None:
        """The RELAY_MSG option's payload (§21.10), unparsed."""
        return next((v for c, v in self.options if c == Option.RELAY_MSG), None)

    def build(self) -> bytes:
        return (bytes([int(self.msg_type), self.hop_count]) + self.link_address.packed
                + self.peer_address.packed + _enc_unknown(self.options))


def parse_message(buf: bytes | bytearray | memoryview) -> Dhcpv6Message | RelayMessage:
    buf = bytes(buf)
    if len(buf) < 4:
        raise Dhcpv6ParseError(f"message of {len(buf)} bytes is shorter than the 4-byte header")
    if len(buf) > MAX_MESSAGE_LEN:
        raise Dhcpv6ParseError(f"message of {len(buf)} bytes exceeds a UDP datagram")
    mtype = buf[0]
    if mtype in RELAY_TYPES:
        if len(buf) < _RELAY_HEADER_LEN:
            raise Dhcpv6ParseError(f"relay message of {len(buf)} bytes is shorter than "
                                   f"its {_RELAY_HEADER_LEN}-byte header")
        options = tuple((c, bytes(v)) for c, v in _tlvs(buf[_RELAY_HEADER_LEN:], "relay"))
        return RelayMessage(MessageType(mtype), buf[1], IPv6Address(buf[2:18]),
                            IPv6Address(buf[18:34]), options)
    found, unknown = _singletons(_tlvs(buf[4:], "message"), "message", _TOP_DECODERS,
                                 _REPEATED)
    fields = {_TOP[code][0]: tuple(v) if code in _REPEATED else v
              for code, v in found.items()}
    try:
        msg_type: MessageType | int = MessageType(mtype)
    except ValueError:
        msg_type = mtype  # §16: receivers discard unknown types; that is their decision
    return Dhcpv6Message(msg_type, int.from_bytes(buf[1:4], "big"), unknown=unknown, **fields)
