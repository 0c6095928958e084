"""UDP sockets for clients (qnet.udp): control here, every datagram on the socket's own
datagram channel.

A client asks the launcher's broker for datagram channels (``{"streams": "qnet.udp",
"count": N}``): AF_UNIX SOCK_SEQPACKET socketpairs whose one end the client holds and whose
other end the launcher keeps and hands to every netstack incarnation. `bind` names one; from
then on one SEQPACKET message is one datagram, both ways, with a small fixed head:

    netstack -> client  UDP_RECV_HEAD, then the payload
        source address (4 bytes, network order), source port, destination address (the
        packet's IP destination, for IP_PKTINFO), TTL, TOS (0 when not known), the receiving
        port's ifindex (1-based, 0 unknown)
    netstack -> client  UDP_ERROR_HEAD alone (8 bytes, shorter than any datagram's head):
        an ICMP error for a connected socket's datagram, Linux's rule without IP_RECVERR
        (udp_err): the quoted destination address and port, ICMP type and code. Only
        protocol and port unreachable are sent (ENOPROTOOPT, ECONNREFUSED on the next call).
    client -> netstack  UDP_SEND_HEAD, then the payload (0..65507 bytes)
        destination address (4 bytes; 0.0.0.0 with port 0: the connected destination),
        destination port, ttl (-1: the socket's), tos (-1: the socket's)

An IPv6 socket (1.2: bind's family "ipv6") has heads of its own, the same fields with
16-byte addresses, and what IPv6 adds:

    netstack -> client  UDP6_RECV_HEAD: source, source port, destination, hop limit,
        traffic class, ifindex; a link-local source's scope is that ifindex
    netstack -> client  UDP6_ERROR_HEAD alone (20 bytes): ICMPv6 destination unreachable
        (type 1) code 4 (port) or ICMPv4's protocol/port unreachable about an IPv4-mapped
        destination (the quoted address says which: ::ffff:a.b.c.d is ICMPv4's)
    client -> netstack  UDP6_SEND_HEAD, then the payload (0..65527 bytes)
        destination (16 bytes; :: with port 0: the connected destination), destination port,
        hop limit, traffic class (-1: the socket's), scope: the ifindex of a link-local
        destination's link (sin6_scope_id), 0 for none

Dual stack (Linux's IPV6_V6ONLY off, its default): an IPv6 socket bound to :: also
receives IPv4, as IPv4-mapped addresses (::ffff:a.b.c.d), and sends to them over IPv4:
netstack binds the same port on IPv4's side for it. With v6only, or bound to a specific IPv6
address, it is IPv6 only; bound to an IPv4-mapped address, IPv4 only.

A send that fails (no route, too long, not connected) or a malformed message is counted
per socket, never answered; a datagram for a socket whose channel is full is dropped and
counted, as a full SO_RCVBUF drops it in Linux. The client closing every copy of its end
(EOF on netstack's) closes the socket. The channel is the socket's fd: readable when a
datagram waits.
"""
import struct as struct_

from ..decl import Method, Protocol, Version
from ..types import ANY, BOOL, IP, NAME, Enum, Field, Int, Optional, Str, U16, U32, struct

UDP_RECV_HEAD = struct_.Struct("<4sH4sBBH")     # 14 bytes: src, sport, dst, ttl, tos, ifindex
UDP_SEND_HEAD = struct_.Struct("<4sHhh")        # 10 bytes: dst, dport, ttl, tos
UDP_ERROR_HEAD = struct_.Struct("<4sHBB")       # 8 bytes: dst, dport, ICMP type, ICMP code
UDP_MAX_PAYLOAD = 65507                         # 65535 - 20 (IPv4 header) - 8 (UDP header)
UDP_MAX_MESSAGE = UDP_SEND_HEAD.size + UDP_MAX_PAYLOAD
# 1.2: an IPv6 socket's heads
UDP6_RECV_HEAD = struct_.Struct("<16sH16sBBH")  # 38 bytes: src, sport, dst, hop limit, tclass, ifindex
UDP6_SEND_HEAD = struct_.Struct("<16sHhhH")     # 24 bytes: dst, dport, hop limit, tclass, scope
UDP6_ERROR_HEAD = struct_.Struct("<16sHBB")     # 20 bytes: dst, dport, ICMP type, ICMP code
UDP6_MAX_PAYLOAD = 65527                        # 65535 - 8 (UDP header): the payload length's bound
UDP6_MAX_MESSAGE = UDP6_SEND_HEAD.size + UDP6_MAX_PAYLOAD

FAMILY = Enum("Family", ("ipv4", "ipv6"))
SCOPE = Int(0, 0xFFFF)      # an ifindex as the heads carry it (1-based; lo is 1); 0: none

CHANNEL = Str(max_len=32, min_len=1, pattern=r"^[A-Za-z0-9_.\-]+$", label="channel")

UDP_ERRORS = ("address_in_use", "address_not_available", "not_found", "bad_argument", "no_route",
              "limit", "no_channel", "busy", "failed")

UDP_BOUND = struct(
    "UdpBound",
    Field("sock", U32, doc="the socket's id at netstack"),
    Field("address", IP, doc="0.0.0.0 or ::: every local address"),
    Field("port", U16),
    Field("scope_id", SCOPE, default=0, doc="1.2: a link-local address's link (its ifindex)"),
)

UDP_CONNECTED = struct(
    "UdpConnected",
    Field("address", IP, doc="the local address (fixed by connect when it was the wildcard)"),
    Field("port", U16),
    Field("remote", Optional(IP), doc="None after a disconnect"),
    Field("remote_port", U16),
    Field("scope_id", SCOPE, default=0, doc="1.2: a link-local remote's link (its ifindex)"),
)

UDP_OPTION = Enum("UdpOption", ("broadcast", "ttl", "tos", "recv_pktinfo", "recv_ttl", "recv_tos"))

UDP = Protocol(
    "qnet.udp", Version(1, 2),
    doc="UDP sockets for clients. Datagrams never travel here: each socket has a datagram "
        "channel, an AF_UNIX SOCK_SEQPACKET socket whose one end the client holds (asked of the "
        "launcher's broker, RUN/channels.sock, as {\"streams\": \"qnet.udp\", \"count\": N}), one "
        "message per datagram with a fixed head (ipc/protocols/udp.py: UDP_RECV_HEAD, "
        "UDP_SEND_HEAD; an IPv6 socket's UDP6_*). Closing every copy of the client's end closes the "
        "socket. 1.2: IPv6 sockets (bind's family), dual stack unless v6only, scopes.",
    methods=(
        Method("bind", args=(Field("channel", CHANNEL),
                             Field("address", Optional(IP), default=None,
                                   doc="None, 0.0.0.0 or ::: every local address; an IPv6 "
                                       "socket's may be IPv4-mapped (then it is IPv4's only)"),
                             Field("port", U16, default=0, doc="0: an ephemeral port (32768-60999)"),
                             Field("device", Optional(NAME), default=None, doc="SO_BINDTODEVICE"),
                             Field("reuse_address", BOOL, default=False, doc="SO_REUSEADDR"),
                             Field("reuse_port", BOOL, default=False, doc="SO_REUSEPORT"),
                             Field("broadcast", BOOL, default=False, doc="SO_BROADCAST"),
                             Field("owner", Str(max_len=64), default="",
                                   doc="who holds the channel (shown by `list`)"),
                             Field("family", FAMILY, default="ipv4",
                                   doc="1.2: ipv6: an IPv6 socket, its channel with UDP6_* heads"),
                             Field("v6only", BOOL, default=False,
                                   doc="1.2: IPV6_V6ONLY: off, an IPv6 socket on :: takes IPv4 too"),
                             Field("scope_id", SCOPE, default=0,
                                   doc="1.2: the link of a link-local address (needed, as Linux "
                                       "asks sin6_scope_id)")),
               result=UDP_BOUND, errors=UDP_ERRORS,
               doc="A socket served on the given (fresh) datagram channel. Two sockets share an "
                   "address and port only if both set reuse_port, or both reuse_address (Linux)."),
        Method("connect", args=(Field("sock", U32), Field("address", Optional(IP), default=None),
                                Field("port", U16, default=0),
                                Field("scope_id", SCOPE, default=0,
                                      doc="1.2: a link-local destination's link")),
               result=UDP_CONNECTED, errors=UDP_ERRORS,
               doc="The default destination; from then on only datagrams from it are delivered. "
                   "A wildcard local address becomes the route's source. address None: disconnect."),
        Method("set_option", args=(Field("sock", U32), Field("name", UDP_OPTION),
                                   Field("value", Int(0, 255))),
               result=BOOL, errors=UDP_ERRORS,
               doc="broadcast (SO_BROADCAST), ttl (IP_TTL, 1..255), tos (IP_TOS); recv_pktinfo, "
                   "recv_ttl, recv_tos only record the client's choice (every head carries them)."),
        Method("set_mark", args=(Field("sock", U32), Field("domain", Int(1, 4)), Field("value", U32)),
               result=BOOL, errors=UDP_ERRORS,
               doc="1.1: a socket mark (SO_MARK is domain 1): the flows the socket opens from "
                   "now on carry it, for the firewall's `mark` matches."),
        Method("get_option", args=(Field("sock", U32), Field("name", UDP_OPTION)),
               result=Int(0, 255), errors=UDP_ERRORS, idempotent=True),
        Method("close", args=(Field("sock", U32),), result=BOOL, errors=UDP_ERRORS, idempotent=True,
               doc="Close the socket and its channel (closing the client's end does the same)."),
        Method("list", result=ANY, idempotent=True,
               doc="Every socket: sock, address, port, remote, remote_port, owner, channel, its "
                   "counters and what its channel holds."),
        Method("stats", result=ANY, idempotent=True, doc="The binding's counters."),
    ),
    byte_channels="seqpacket",
)
