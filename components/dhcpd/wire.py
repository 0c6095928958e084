"""DHCPv4 wire format: the BOOTP header (RFC 2131 §2) and DHCP options (RFC 2132, RFC 3442).

`DhcpMessage.parse` checks every option whose meaning the client or server relies on, so
the typed accessors (`msg.server_id`, `msg.lease_time`, ...) never fail on a parsed message;
anything malformed raises the one `DhcpParseError`. Setting an accessor to None removes the
option. This module knows nothing of states, leases or time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Callable

SERVER_PORT = 67
CLIENT_PORT = 68
BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
ZERO = IPv4Address(0)
BROADCAST = IPv4Address("255.255.255.255")

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_HEADER_LEN = _HEADER.size  # 236
_OPTIONS_AT = _HEADER_LEN + len(MAGIC_COOKIE)
# RFC 1542 §3.4 / RFC 951: a BOOTP message is at least 300 bytes; some relays drop less.
BOOTP_MIN_LEN = 300
# Largest UDP payload over IPv4; anything longer is not a datagram we could have received.
MAX_MESSAGE_LEN = 65507


class DhcpParseError(ValueError):
    """The one error `DhcpMessage.parse` raises; `reason` says what was malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"dhcp: {reason}")
        self.reason = reason


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 §9.6)."""
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    MTU = 26
    BROADCAST_ADDRESS = 28
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    CLIENT_ID = 61
    CLASSLESS_ROUTES = 121
    END = 255


# ---------------------------------------------------------------- option codecs

def _fixed(n: int, what: str, code: int, value: bytes) -> None:
    if len(value) != n:
        raise DhcpParseError(f"option {code} ({what}) has length {len(value)}, expected {n}")


def _dec_ip(code: int, v: bytes) -> IPv4Address:
    _fixed(4, "address", code, v)
    return IPv4Address(v)


def _dec_ips(code: int, v: bytes) -> tuple[IPv4Address, ...]:
    # RFC 2132 §3.5, §3.8: minimum length 4, always a multiple of 4.
    if not v or len(v) % 4:
        raise DhcpParseError(f"option {code} (address list) has length {len(v)}")
    return tuple(IPv4Address(v[i:i + 4]) for i in range(0, len(v), 4))


def _dec_u32(code: int, v: bytes) -> int:
    _fixed(4, "u32", code, v)
    return int.from_bytes(v, "big")


def _dec_u16(code: int, v: bytes) -> int:
    _fixed(2, "u16", code, v)
    return int.from_bytes(v, "big")


def _dec_u8(code: int, v: bytes) -> int:
    _fixed(1, "u8", code, v)
    return v[0]


# Text, client identifier and parameter list are taken as sent even below RFC 2132's minimum
# lengths: dropping a whole DISCOVER for an empty hostname would help nobody.
def _dec_text(code: int, v: bytes) -> str:
    # Peers NUL-terminate text options although RFC 2132 §2 says they should not.
    return peer_text(v.rstrip(b"\0"))


# A peer's text goes into lease files, logs and `qnet dhcp leases`: a hostname carrying a
# newline, ESC or BEL would forge table lines and terminal escapes there. What a peer sends is
# kept readable and exact: printable ASCII as is, every other byte as \xNN (and "\" as "\\").
PEER_TEXT_MAX = 255


def peer_text(raw: bytes | str) -> str:
    """Text from a peer, checked: printable ASCII only, at most PEER_TEXT_MAX characters."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    out = []
    for b in raw:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)[:PEER_TEXT_MAX]


def stored_peer_text(value: object) -> str | None:
    """Peer text read back from a lease file or snapshot: kept if it is already checked
    (a file written before the check existed may hold raw text), escaped otherwise."""
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isprintable() and len(value) <= PEER_TEXT_MAX:
        return value
    return peer_text(value)


def _dec_bytes(code: int, v: bytes) -> bytes:
    return bytes(v)


def _dec_prl(code: int, v: bytes) -> tuple[int, ...]:
    return tuple(v)


def encode_classless_routes(routes: list[tuple[IPv4Network, IPv4Address]]) -> bytes:
    """RFC 3442 §3: each route is width, significant octets of the destination, router."""
    out = bytearray()
    for dest, router in routes:
        width = dest.prefixlen
        out.append(width)
        out += dest.network_address.packed[:(width + 7) // 8]
        out += IPv4Address(router).packed
    return bytes(out)


def decode_classless_routes(v: bytes) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
    if len(v) < 5:  # RFC 3442 §3: minimum length 5
        raise DhcpParseError(f"option 121 (classless routes) has length {len(v)}")
    routes = []
    i = 0
    while i < len(v):
        width = v[i]
        if width > 32:
            raise DhcpParseError(f"option 121: prefix width {width} > 32")
        n = (width + 7) // 8
        if i + 1 + n + 4 > len(v):
            raise DhcpParseError("option 121: route truncated")
        dest = v[i + 1:i + 1 + n] + bytes(4 - n)
        router = IPv4Address(v[i + 1 + n:i + 5 + n])
        try:
            # RFC 3442 §3: bits past the width are zero; a set host bit is an encoding error.
            net = IPv4Network((IPv4Address(dest), width))
        except ValueError:
            raise DhcpParseError(f"option 121: destination has host bits set "
                                 f"beyond /{width}") from None
        routes.append((net, router))
        i += 5 + n
    return tuple(routes)


def _dec_routes(code: int, v: bytes) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
    return decode_classless_routes(v)


def _enc_ip(v: Any) -> bytes:
    return IPv4Address(v).packed


def _enc_ips(v: Any) -> bytes:
    return b"".join(IPv4Address(a).packed for a in v)


def _enc_text(v: str) -> bytes:
    return v.encode("ascii", errors="replace")


_CODECS: dict[int, tuple[Callable[[int, bytes], Any], Callable[[Any], bytes]]] = {
    Option.SUBNET_MASK: (_dec_ip, _enc_ip),
    Option.ROUTER: (_dec_ips, _enc_ips),
    Option.DNS: (_dec_ips, _enc_ips),
    Option.HOSTNAME: (_dec_text, _enc_text),
    Option.DOMAIN_NAME: (_dec_text, _enc_text),
    Option.MTU: (_dec_u16, lambda v: int(v).to_bytes(2, "big")),
    Option.BROADCAST_ADDRESS: (_dec_ip, _enc_ip),
    Option.REQUESTED_IP: (_dec_ip, _enc_ip),
    Option.LEASE_TIME: (_dec_u32, lambda v: int(v).to_bytes(4, "big")),
    Option.MESSAGE_TYPE: (_dec_u8, lambda v: bytes([int(v)])),
    Option.SERVER_ID: (_dec_ip, _enc_ip),
    Option.PARAMETER_REQUEST_LIST: (_dec_prl, bytes),
    Option.MESSAGE: (_dec_text, _enc_text),
    Option.MAX_MESSAGE_SIZE: (_dec_u16, lambda v: int(v).to_bytes(2, "big")),
    Option.RENEWAL_TIME: (_dec_u32, lambda v: int(v).to_bytes(4, "big")),
    Option.REBINDING_TIME: (_dec_u32, lambda v: int(v).to_bytes(4, "big")),
    Option.CLIENT_ID: (_dec_bytes, bytes),
    Option.CLASSLESS_ROUTES: (_dec_routes, encode_classless_routes),
}


class _OptionAccessor:
    """`msg.lease_time` reads/writes option 51 through its codec; None means absent."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.decode, self.encode = _CODECS[code]

    def __get__(self, msg: "DhcpMessage | None", owner: type) -> Any:
        if msg is None:
            return self
        raw = msg.options.get(self.code)
        return None if raw is None else self.decode(self.code, raw)

    def __set__(self, msg: "DhcpMessage", value: Any) -> None:
        if value is None:
            msg.options.pop(self.code, None)
        else:
            msg.options[self.code] = self.encode(value)


# ---------------------------------------------------------------- the message

def _decode_options(buf: bytes, where: str, into: dict[int, bytearray]) -> None:
    i = 0
    n = len(buf)
    while i < n:
        code = buf[i]
        if code == Option.PAD:
            i += 1
            continue
        if code == Option.END:
            return  # whatever follows END is padding
        if i + 1 >= n:
            raise DhcpParseError(f"{where}: option {code} truncated before its length")
        length = buf[i + 1]
        if i + 2 + length > n:
            raise DhcpParseError(f"{where}: option {code} length {length} overruns the field")
        # RFC 3396 §5: an option that appears more than once is one option, concatenated.
        into.setdefault(code, bytearray()).extend(buf[i + 2:i + 2 + length])
        i += 2 + length
    # Options reaching the end of the field without END are accepted (RFC 2131 §4.1 says
    # END MUST close the field, but senders omitting it exist and nothing is ambiguous).


@dataclass(slots=True)
class DhcpMessage:
    op: int = BOOTREQUEST
    xid: int = 0
    chaddr: bytes = b""
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    # Typed option accessors (RFC 2132 and RFC 3442 section per option).
    subnet_mask = _OptionAccessor(Option.SUBNET_MASK)
    routers = _OptionAccessor(Option.ROUTER)
    dns_servers = _OptionAccessor(Option.DNS)
    hostname = _OptionAccessor(Option.HOSTNAME)
    domain_name = _OptionAccessor(Option.DOMAIN_NAME)
    mtu = _OptionAccessor(Option.MTU)
    broadcast_address = _OptionAccessor(Option.BROADCAST_ADDRESS)
    requested_ip = _OptionAccessor(Option.REQUESTED_IP)
    lease_time = _OptionAccessor(Option.LEASE_TIME)
    server_id = _OptionAccessor(Option.SERVER_ID)
    parameter_request_list = _OptionAccessor(Option.PARAMETER_REQUEST_LIST)
    message = _OptionAccessor(Option.MESSAGE)
    max_message_size = _OptionAccessor(Option.MAX_MESSAGE_SIZE)
    renewal_time = _OptionAccessor(Option.RENEWAL_TIME)
    rebinding_time = _OptionAccessor(Option.REBINDING_TIME)
    client_id = _OptionAccessor(Option.CLIENT_ID)
    classless_routes = _OptionAccessor(Option.CLASSLESS_ROUTES)

    @property
    def message_type(self) -> MessageType | int | None:
        """Option 53; an unknown value (RFC 4388 lease query and later) stays an int."""
        raw = self.options.get(Option.MESSAGE_TYPE)
        if raw is None:
            return None
        v = _dec_u8(Option.MESSAGE_TYPE, raw)
        try:
            return MessageType(v)
        except ValueError:
            return v

    @message_type.setter
    def message_type(self, value: int | None) -> None:
        if value is None:
            self.options.pop(Option.MESSAGE_TYPE, None)
        else:
            self.options[Option.MESSAGE_TYPE] = bytes([int(value)])

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    # -------------------------------------------------------------- parse / build

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "DhcpMessage":
        buf = bytes(buf)
        if len(buf) < _OPTIONS_AT:
            raise DhcpParseError(f"message of {len(buf)} bytes is shorter than "
                                 f"{_OPTIONS_AT} (header + magic cookie)")
        if len(buf) > MAX_MESSAGE_LEN:
            raise DhcpParseError(f"message of {len(buf)} bytes exceeds a UDP datagram")
        (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
         chaddr, sname, file_) = _HEADER.unpack_from(buf)
        if op not in (BOOTREQUEST, BOOTREPLY):
            raise DhcpParseError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
        if hlen > 16:
            raise DhcpParseError(f"hlen {hlen} exceeds the 16-byte chaddr field")
        if buf[_HEADER_LEN:_OPTIONS_AT] != MAGIC_COOKIE:
            raise DhcpParseError(f"bad magic cookie {buf[_HEADER_LEN:_OPTIONS_AT].hex()}")
        raw: dict[int, bytearray] = {}
        _decode_options(buf[_OPTIONS_AT:], "options", raw)
        overload = raw.get(Option.OVERLOAD)
        if overload is not None:
            if len(overload) != 1 or overload[0] not in (1, 2, 3):
                raise DhcpParseError(f"option 52 (overload) value {bytes(overload).hex()}")
            which = overload[0]
            # RFC 3396 §5 / RFC 2131 §4.1: options field first, then 'file', then 'sname'.
            if which & 1:
                _decode_options(file_, "file field", raw)
                file_ = b""
            if which & 2:
                _decode_options(sname, "sname field", raw)
                sname = b""
            if bytes(raw[Option.OVERLOAD]) != bytes(overload):
                raise DhcpParseError("option 52 (overload) repeated inside an overloaded field")
        options = {code: bytes(v) for code, v in raw.items()}
        for code, value in options.items():
            codec = _CODECS.get(code)
            if codec is not None:
                codec[0](code, value)  # raises DhcpParseError on a malformed value
        return cls(op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs,
                   flags=flags, ciaddr=IPv4Address(ciaddr), yiaddr=IPv4Address(yiaddr),
                   siaddr=IPv4Address(siaddr), giaddr=IPv4Address(giaddr),
                   chaddr=chaddr[:hlen], sname=sname.split(b"\0", 1)[0],
                   file=file_.split(b"\0", 1)[0], options=options)

    def build(self) -> bytes:
        if len(self.chaddr) > 16 or len(self.sname) > 63 or len(self.file) > 127:
            raise ValueError("chaddr, sname or file too long for its field")
        out = bytearray(_HEADER.pack(
            self.op, self.htype, self.hlen, self.hops, self.xid & 0xFFFFFFFF,
            min(self.secs, 0xFFFF), self.flags & 0xFFFF, self.ciaddr.packed,
            self.yiaddr.packed, self.siaddr.packed, self.giaddr.packed, self.chaddr,
            self.sname, self.file))
        out += MAGIC_COOKIE
        for code, value in self.options.items():
            if code in (Option.PAD, Option.END):
                continue
            if not value:
                out += bytes((code, 0))
            # RFC 3396 §5: a value longer than 255 bytes is split into consecutive options.
            for i in range(0, len(value), 255):
                chunk = value[i:i + 255]
                out += bytes((code, len(chunk))) + chunk
        out.append(Option.END)
        if len(out) < BOOTP_MIN_LEN:
            out += bytes(BOOTP_MIN_LEN - len(out))
        return bytes(out)

    @classmethod
    def reply_for(cls, request: "DhcpMessage", message_type: MessageType) -> "DhcpMessage":
        """A reply carrying the fields RFC 2131 §4.3 table 3 copies from the request."""
        reply = cls(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr,
                    htype=request.htype, hlen=request.hlen, flags=request.flags,
                    giaddr=request.giaddr)
        reply.message_type = message_type
        return reply
