"""IPv6 (RFC 8200): the fixed header (§3), extension headers (§4), fragments (§4.5) and the
upper-layer pseudo-header checksum (§8.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from ._fast import ipv6_address, trusted_constructor
from .checksum import internet_checksum, pseudo_header_sum
from .errors import ParseError

IPV6_HEADER_LEN = 40
NEXT_HEADER_HOP_BY_HOP = 0
NEXT_HEADER_TCP = 6
NEXT_HEADER_UDP = 17
NEXT_HEADER_ROUTING = 43
NEXT_HEADER_FRAGMENT = 44
NEXT_HEADER_ICMPV6 = 58
NEXT_HEADER_NONE = 59

_HEADER = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class Ipv6Packet:
    src: IPv6Address
    dst: IPv6Address
    next_header: int
    hop_limit: int
    flow_label: int
    traffic_class: int
    payload_length: int
    payload: bytes | memoryview  # trimmed to payload_length

    @classmethod
    def parse(cls, buf: bytes | memoryview, check_length: bool = True) -> "Ipv6Packet":
        """check_length=False reads a packet quoted in an ICMPv6 error, cut short: the
        payload is what the buffer holds."""
        n = len(buf)
        if n < IPV6_HEADER_LEN:
            raise ParseError(f"ipv6: packet of {n} bytes is shorter than the 40-byte header")
        word, payload_length, next_header, hop_limit, src, dst = _HEADER.unpack_from(buf)
        if word >> 28 != 6:
            raise ParseError(f"ipv6: version {word >> 28}, not 6")
        if not check_length:
            payload_length = min(payload_length, n - IPV6_HEADER_LEN)
        elif IPV6_HEADER_LEN + payload_length > n:
            # A zero length with a Jumbo Payload option (RFC 2675) is not supported.
            raise ParseError(f"ipv6: payload length {payload_length} exceeds the {n}-byte buffer")
        return _make_packet(ipv6_address(src), ipv6_address(dst), next_header, hop_limit, word & 0xFFFFF,
                            (word >> 20) & 0xFF, payload_length,
                            memoryview(buf)[IPV6_HEADER_LEN:IPV6_HEADER_LEN + payload_length])

    @property
    def dscp(self) -> int:
        return self.traffic_class >> 2

    @property
    def ecn(self) -> int:
        return self.traffic_class & 3


_make_packet = trusted_constructor(Ipv6Packet)


def build_ipv6(src: IPv6Address, dst: IPv6Address, next_header: int, payload: bytes | memoryview,
               *, hop_limit: int = 64, traffic_class: int = 0, flow_label: int = 0) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"ipv6: payload of {len(payload)} bytes needs a jumbogram")
    word = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _HEADER.pack(word, len(payload), next_header, hop_limit, src.packed, dst.packed) + payload


# Extension headers (RFC 8200 §4)

NEXT_HEADER_DEST_OPTIONS = 60

# RFC 8200 §4.1 lets a packet carry each header about once (Destination Options twice); eight
# covers every legal chain, and anything longer is a hostile packet built to make us loop.
MAX_EXTENSION_HEADERS = 8

OPT_PAD1 = 0
OPT_PADN = 1
OPT_ROUTER_ALERT = 5  # RFC 2711, Hop-by-Hop only

# RFC 8200 §4.2: the two high-order bits of an option type say what a node that does not
# recognise the option must do.
ACTION_SKIP = 0
ACTION_DISCARD = 1
ACTION_DISCARD_SEND_ICMP = 2
ACTION_DISCARD_SEND_ICMP_UNLESS_MULTICAST = 3

# ICMPv6 Parameter Problem codes (RFC 4443 §3.4, RFC 7112 §5) the walker asks the core to send.
PARAM_PROBLEM_HEADER_FIELD = 0
PARAM_PROBLEM_NEXT_HEADER = 1
PARAM_PROBLEM_OPTION = 2
PARAM_PROBLEM_INCOMPLETE_CHAIN = 3

_KNOWN_OPTIONS = {
    NEXT_HEADER_HOP_BY_HOP: frozenset((OPT_PAD1, OPT_PADN, OPT_ROUTER_ALERT)),
    NEXT_HEADER_DEST_OPTIONS: frozenset((OPT_PAD1, OPT_PADN)),
}
_FRAGMENT = struct.Struct("!BBHI")


class ExtensionHeaderProblem(ParseError):
    """A packet to discard for a reason RFC 8200 answers with an ICMPv6 Parameter Problem.

    Still a ParseError, so a caller that only drops keeps working; a caller that answers
    catches this first. `pointer` counts from the first byte of the IPv6 header (RFC 4443
    §3.4); `send_icmp` is False for the silent-discard option action, and
    `unless_multicast` says the error is owed only when the destination was not multicast.
    """

    def __init__(self, reason: str, code: int, pointer: int, *, send_icmp: bool = True,
                 unless_multicast: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.pointer = pointer
        self.send_icmp = send_icmp
        self.unless_multicast = unless_multicast


@dataclass(frozen=True, slots=True)
class Ipv6Option:
    """One TLV of a Hop-by-Hop or Destination Options header (padding is not kept)."""

    type: int
    data: bytes
    pointer: int = 0  # offset of the type byte from the start of the IPv6 header

    @property
    def action(self) -> int:
        return self.type >> 6

    @property
    def may_change(self) -> bool:
        # RFC 8200 §4.2: the third-highest bit says the data may change en route.
        return bool(self.type & 0x20)


@dataclass(frozen=True, slots=True)
class FragmentHeader:
    next_header: int
    offset: int  # in bytes, a multiple of 8
    more_fragments: bool
    identification: int

    @property
    def is_atomic(self) -> bool:
        """Offset 0 and M clear: a whole packet in a Fragment header (RFC 6946)."""
        return self.offset == 0 and not self.more_fragments

    def to_bytes(self) -> bytes:
        return build_fragment_header(self.next_header, self.offset, self.more_fragments,
                                     self.identification)


@dataclass(frozen=True, slots=True)
class RoutingHeader:
    next_header: int
    routing_type: int
    segments_left: int
    data: bytes  # the type-specific data after the first 4 bytes


@dataclass(frozen=True, slots=True)
class ExtensionHeaders:
    """What walk_extensions found before the upper-layer header."""

    hop_by_hop: tuple[Ipv6Option, ...] = ()
    destination_options: tuple[Ipv6Option, ...] = ()
    routing: RoutingHeader | None = None
    fragment: FragmentHeader | None = None
    fragment_offset: int = -1  # where the Fragment header starts in the payload; -1 if none
    next_header_pointer: int = 6  # offset (from the IPv6 header) of the field naming the upper protocol
    chain: tuple[int, ...] = ()  # the extension header types in order


def _parse_options(kind: int, header: memoryview, base: int) -> tuple[Ipv6Option, ...]:
    """The TLVs after the first two bytes of an options header; base is its packet offset."""
    known = _KNOWN_OPTIONS[kind]
    name = "hop-by-hop" if kind == NEXT_HEADER_HOP_BY_HOP else "destination"
    options: list[Ipv6Option] = []
    i, n = 2, len(header)
    while i < n:
        opt = header[i]
        if opt == OPT_PAD1:
            i += 1
            continue
        if i + 2 > n:
            raise ParseError(f"ipv6: {name} option {opt} at {base + i} has no length byte")
        end = i + 2 + header[i + 1]
        if end > n:
            raise ParseError(f"ipv6: {name} option {opt} length {header[i + 1]} runs past its header")
        if opt not in known:
            action = opt >> 6
            if action != ACTION_SKIP:
                # RFC 8200 §4.2: unrecognised option whose action bits say discard; code 2
                # and a pointer to the option type.
                raise ExtensionHeaderProblem(
                    f"ipv6: unrecognised {name} option {opt:#04x} (action {action})",
                    PARAM_PROBLEM_OPTION, base + i, send_icmp=action != ACTION_DISCARD,
                    unless_multicast=action == ACTION_DISCARD_SEND_ICMP_UNLESS_MULTICAST)
        if opt == OPT_ROUTER_ALERT and kind == NEXT_HEADER_HOP_BY_HOP and end - i != 4:
            raise ParseError(f"ipv6: router alert option length {header[i + 1]}, not 2")
        if opt != OPT_PADN:
            options.append(Ipv6Option(opt, bytes(header[i + 2:end]), base + i))
        i = end
    return tuple(options)


def _chain_fits(next_header: int, mv: memoryview, offset: int) -> bool:
    """Whether the extension headers from offset on all end inside mv (bounded like the walk)."""
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header not in (NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ROUTING,
                               NEXT_HEADER_DEST_OPTIONS):
            return True
        if offset + 2 > len(mv):
            return False
        next_header, offset = mv[offset], offset + (mv[offset + 1] + 1) * 8
        if offset > len(mv):
            return False
    return True


def walk_extensions(next_header: int, payload: bytes | memoryview
                    ) -> tuple[int, int, ExtensionHeaders]:
    """Walk the extension headers of a packet's payload: (upper protocol, its offset, info).

    Stops at the first header that is not an extension header (the upper protocol, which
    may be No Next Header, 59), and at the Fragment header of a fragment that must be
    reassembled first: then the upper protocol is the Fragment header's next header and the
    offset is the fragment's data. An atomic fragment (RFC 6946) is walked through.
    Raises ParseError for malformed chains and ExtensionHeaderProblem where RFC 8200 says
    to answer with a Parameter Problem.
    """
    mv = memoryview(payload)
    n = len(mv)
    offset = 0
    pointer = 6  # the fixed header's Next Header field
    hop_by_hop: tuple[Ipv6Option, ...] = ()
    dest: list[Ipv6Option] = []
    routing: RoutingHeader | None = None
    fragment: FragmentHeader | None = None
    fragment_offset = -1
    chain: list[int] = []
    while next_header in (NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ROUTING, NEXT_HEADER_FRAGMENT,
                          NEXT_HEADER_DEST_OPTIONS):
        if len(chain) >= MAX_EXTENSION_HEADERS:
            raise ParseError(f"ipv6: more than {MAX_EXTENSION_HEADERS} extension headers")
        if next_header == NEXT_HEADER_HOP_BY_HOP and chain:
            # RFC 8200 §4.1: Hop-by-Hop is only allowed right after the IPv6 header; elsewhere
            # it is an unrecognised Next Header (§4, code 1).
            raise ExtensionHeaderProblem("ipv6: hop-by-hop header not first in the chain",
                                         PARAM_PROBLEM_NEXT_HEADER, pointer)
        base = IPV6_HEADER_LEN + offset
        if offset + 8 > n:
            raise ParseError(f"ipv6: extension header {next_header} at {base} runs past the payload")
        kind = next_header
        chain.append(kind)
        if kind == NEXT_HEADER_FRAGMENT:
            if fragment is not None:
                raise ParseError("ipv6: second fragment header in one packet")
            nh, _reserved, off_flags, ident = _FRAGMENT.unpack_from(mv, offset)
            fragment = FragmentHeader(nh, off_flags & 0xFFF8, bool(off_flags & 1), ident)
            fragment_offset = offset
            data_len = n - offset - 8
            if fragment.more_fragments and data_len % 8:
                # RFC 8200 §4.5: a non-last fragment's length must be a multiple of 8;
                # Parameter Problem code 0 pointing at the Payload Length field.
                raise ExtensionHeaderProblem(
                    f"ipv6: fragment data of {data_len} bytes with M set is not a multiple of 8",
                    PARAM_PROBLEM_HEADER_FIELD, 4)
            if fragment.offset + data_len > 0xFFFF:
                # RFC 8200 §4.5: reassembly would exceed 65535; point at the Fragment Offset.
                raise ExtensionHeaderProblem(
                    f"ipv6: fragment offset {fragment.offset} + {data_len} bytes exceeds 65535",
                    PARAM_PROBLEM_HEADER_FIELD, base + 2)
            pointer = base
            next_header = nh
            offset += 8
            if not fragment.is_atomic:
                if fragment.offset == 0 and not _chain_fits(nh, mv, offset):
                    # RFC 8200 §4.5 / RFC 7112 §5: the first fragment must hold every
                    # extension header of the chain.
                    raise ExtensionHeaderProblem("ipv6: first fragment lacks the full header chain",
                                                 PARAM_PROBLEM_INCOMPLETE_CHAIN, 0)
                break  # the rest belongs to the reassembled packet
            continue
        length = (mv[offset + 1] + 1) * 8
        if offset + length > n:
            raise ParseError(f"ipv6: extension header {kind} length {length} runs past the payload")
        header = mv[offset:offset + length]
        if kind == NEXT_HEADER_ROUTING:
            routing = RoutingHeader(header[0], header[2], header[3], bytes(header[4:]))
        elif kind == NEXT_HEADER_HOP_BY_HOP:
            hop_by_hop = _parse_options(kind, header, base)
        else:
            dest.extend(_parse_options(kind, header, base))
        pointer = base
        next_header = header[0]
        offset += length
    return next_header, offset, ExtensionHeaders(hop_by_hop, tuple(dest), routing, fragment,
                                                 fragment_offset, pointer, tuple(chain))


def build_options_header(next_header: int, options: tuple[Ipv6Option, ...] | list[Ipv6Option] = ()
                         ) -> bytes:
    """A Hop-by-Hop or Destination Options header, padded with Pad1/PadN to 8n bytes (§4.2)."""
    if any(o.type in (OPT_PAD1, OPT_PADN) for o in options):
        raise ValueError("ipv6: padding options are added by the builder, not passed in")
    body = b"".join(bytes((o.type, len(o.data))) + o.data for o in options)
    pad = -(2 + len(body)) % 8
    if pad == 1:
        body += b"\0"
    elif pad:
        body += bytes((OPT_PADN, pad - 2)) + b"\0" * (pad - 2)
    length = (2 + len(body)) // 8 - 1
    if length > 0xFF:
        raise ValueError(f"ipv6: options of {len(body)} bytes exceed one header")
    return bytes((next_header, length)) + body


def build_routing_header(next_header: int, routing_type: int, segments_left: int,
                         data: bytes = b"\0\0\0\0") -> bytes:
    if (4 + len(data)) % 8:
        raise ValueError(f"ipv6: routing header data of {len(data)} bytes is not 8n + 4")
    return bytes((next_header, (4 + len(data)) // 8 - 1, routing_type, segments_left)) + data


def build_fragment_header(next_header: int, offset: int, more_fragments: bool,
                          identification: int) -> bytes:
    if offset & 7 or not 0 <= offset <= 0xFFF8:
        raise ValueError(f"ipv6: fragment offset {offset} is not a multiple of 8 in range")
    return _FRAGMENT.pack(next_header, 0, offset | int(more_fragments), identification & 0xFFFFFFFF)


IPV6_MIN_MTU = 1280


def build_fragments(src: IPv6Address, dst: IPv6Address, next_header: int,
                    payload: bytes | memoryview, *, mtu: int, identification: int,
                    hop_limit: int = 64, traffic_class: int = 0, flow_label: int = 0) -> list[bytes]:
    """Whole IPv6 packets carrying `payload` in fragments of at most `mtu` bytes (RFC 8200 §4.5).

    A payload that fits goes out unfragmented: RFC 8021 deprecates atomic fragments.
    """
    if mtu < IPV6_MIN_MTU:
        raise ValueError(f"ipv6: MTU {mtu} is below the minimum 1280 (RFC 8200 §5)")
    if IPV6_HEADER_LEN + len(payload) <= mtu:
        return [build_ipv6(src, dst, next_header, payload, hop_limit=hop_limit,
                           traffic_class=traffic_class, flow_label=flow_label)]
    chunk = (mtu - IPV6_HEADER_LEN - 8) & ~7
    if len(payload) > 0xFFF8 + chunk:
        raise ValueError(f"ipv6: payload of {len(payload)} bytes cannot be fragmented")
    packets = []
    for start in range(0, len(payload), chunk):
        piece = payload[start:start + chunk]
        more = start + chunk < len(payload)
        packets.append(build_ipv6(src, dst, NEXT_HEADER_FRAGMENT,
                                  build_fragment_header(next_header, start, more, identification) + piece,
                                  hop_limit=hop_limit, traffic_class=traffic_class,
                                  flow_label=flow_label))
    return packets


def upper_layer_checksum(src: IPv6Address, dst: IPv6Address, next_header: int,
                         data: bytes | memoryview) -> int:
    """The Internet checksum of data under the IPv6 pseudo-header (RFC 8200 §8.1).

    With a Routing header, dst must be the final destination, not the packet's current one.
    Over a message whose checksum field is filled, the result is 0 when it is right.
    """
    return internet_checksum(data, pseudo_header_sum(src.packed, dst.packed, next_header, len(data)))
