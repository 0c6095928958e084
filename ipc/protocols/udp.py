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

A send that fails (no route, too long, not connected) or a malformed message is counted
per socket, never answered; a datagram for a socket whose channel is full is dropped and
counted, as a full SO_RCVBUF drops it in Linux. The client closing every copy of its end
(EOF on netstack's) closes the socket. The channel is the socket's fd: readable when a
datagram waits.
"""
import struct as struct_

from ..decl import Method, Protocol, Version
from ..types import ANY, BOOL, IPV4, NAME, Enum, Field, Int, Optional, Str, U16, U32, struct

UDP_RECV_HEAD = struct_.Struct("<4sH4sBBH")     # 14 bytes: src, sport, dst, ttl, tos, ifindex
UDP_SEND_HEAD = struct_.Struct("<4sHhh")        # 10 bytes: dst, dport, ttl, tos
UDP_ERROR_HEAD = struct_.Struct("<4sHBB")       # 8 bytes: dst, dport, ICMP type, ICMP code
UDP_MAX_PAYLOAD = 65507                         # 65535 - 20 (IPv4 header) - 8 (UDP header)
UDP_MAX_MESSAGE = UDP_SEND_HEAD.size + UDP_MAX_PAYLOAD

CHANNEL = Str(max_len=32, min_len=1, pattern=r"^[A-Za-z0-9_.\-]+$", label="channel")

UDP_ERRORS = ("address_in_use", "address_not_available", "not_found", "bad_argument", "no_route",
              "limit", "no_channel", "busy", "failed")

UDP_BOUND = struct(
    "UdpBound",
    Field("sock", U32, doc="the socket's id at netstack"),
    Field("address", IPV4, doc="0.0.0.0: every local address"),
    Field("port", U16),
)

UDP_CONNECTED = struct(
    "UdpConnected",
    Field("address", IPV4, doc="the local address (fixed by connect when it was the wildcard)"),
    Field("port", U16),
    Field("remote", Optional(IPV4), doc="None after a disconnect"),
    Field("remote_port", U16),
)

UDP_OPTION = Enum("UdpOption", ("broadcast", "ttl", "tos", "recv_pktinfo", "recv_ttl", "recv_tos"))

UDP = Protocol(
    "qnet.udp", Version(1, 1),
    doc="UDP sockets for clients. Datagrams never travel here: each socket has a datagram "
        "channel, an AF_UNIX SOCK_SEQPACKET socket whose one end the client holds (asked of the "
        "launcher's broker, RUN/channels.sock, as {\"streams\": \"qnet.udp\", \"count\": N}), one "
        "message per datagram with a fixed head (ipc/protocols/udp.py: UDP_RECV_HEAD, "
        "UDP_SEND_HEAD). Closing every copy of the client's end closes the socket.",
    methods=(
        Method("bind", args=(Field("channel", CHANNEL),
                             Field("address", Optional(IPV4), default=None,
                                   doc="None or 0.0.0.0: every local address"),
                             Field("port", U16, default=0, doc="0: an ephemeral port (32768-60999)"),
                             Field("device", Optional(NAME), default=None, doc="SO_BINDTODEVICE"),
                             Field("reuse_address", BOOL, default=False, doc="SO_REUSEADDR"),
                             Field("reuse_port", BOOL, default=False, doc="SO_REUSEPORT"),
                             Field("broadcast", BOOL, default=False, doc="SO_BROADCAST"),
                             Field("owner", Str(max_len=64), default="",
                                   doc="who holds the channel (shown by `list`)")),
               result=UDP_BOUND, errors=UDP_ERRORS,
               doc="A socket served on the given (fresh) datagram channel. Two sockets share an "
                   "address and port only if both set reuse_port, or both reuse_address (Linux)."),
        Method("connect", args=(Field("sock", U32), Field("address", Optional(IPV4), default=None),
                                Field("port", U16, default=0)),
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
