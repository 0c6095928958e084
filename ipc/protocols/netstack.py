"""netstack's interfaces: control (ports, addresses, routes, neighbors, ping, capture)
and datagrams (UDP sockets for components inside the graph, e.g. dhcpd)."""
import struct as struct_

from ..decl import Event, Method, Protocol, Stream, Version
from ..types import IP
from ..types import (ANY, BOOL, FLOAT, IPV4, IPV4_IFACE, IPV4_PREFIX, IPV6, IPV6_IFACE, IPV6_PREFIX, MAC, NAME,
                     Bytes, Enum, Field, Int, List, Optional, Str, U16, U32, struct)

PORT_KIND = Enum("PortKind", ("ethernet", "ip"))
# Policy routing (1.2): numbered routing tables beside main, picked by the firewall's `table N`
# (ipc/protocols/filter.py). Linux's numbers: 253-255 are its default, main and local tables.
ROUTE_TABLE = Int(1, 252)

# 1.3: IPv6. An address's Duplicate Address Detection state (RFC 4862 §5.4): TENTATIVE while
# DAD runs (nothing is sent from it), PREFERRED once it passed, DEPRECATED (still ours, not
# chosen for new traffic; RFC 4862 §5.5.4), DUPLICATE when another node holds it (kept, unused).
ADDRESS6_STATE = Enum("Address6State", ("TENTATIVE", "PREFERRED", "DEPRECATED", "DUPLICATE"))

ADDRESS6 = struct(
    "Address6",
    Field("address", IPV6_IFACE),
    Field("state", ADDRESS6_STATE),
)

PORT = struct(
    "Port",
    Field("name", NAME),
    Field("kind", PORT_KIND),
    Field("mac", Optional(MAC)),
    Field("mtu", Int(68, 65535)),
    Field("up", BOOL, doc="link state reported by the driver"),
    Field("attached", BOOL, doc="a driver is connected"),
    Field("forwarding", BOOL),
    Field("addresses", List(IPV4_IFACE, max_len=64)),
    Field("offloads", List(Str(max_len=16), max_len=16), default=[],
          doc="1.1: what the port's driver takes and may hand over (csum tso4 tso6 tso_ecn uso)"),
    Field("addresses6", List(ADDRESS6, max_len=64), default=[],
          doc="1.3: its IPv6 addresses (the link-local one made from its MAC too), with their state"),
)

ROUTE = struct(
    "Route",
    Field("prefix", IPV4_PREFIX),
    Field("gateway", Optional(IPV4)),
    Field("device", Optional(NAME)),
    Field("metric", U32),
    Field("origin", Str(max_len=32), doc="connected | static, with ' (inactive)' while its port is down"),
    Field("table", Optional(ROUTE_TABLE), default=None, doc="1.2: its routing table; absent: main"),
)

NEIGHBOR = struct(
    "Neighbor",
    Field("device", NAME),
    Field("address", IPV4),
    Field("mac", Optional(MAC)),
    Field("state", Str(max_len=16)),
    Field("queued", U32),
)

ROUTE6 = struct(
    "Route6",
    Field("prefix", IPV6_PREFIX),
    Field("gateway", Optional(IPV6)),
    Field("device", Optional(NAME)),
    Field("metric", U32),
    Field("origin", Str(max_len=32), doc="connected | static, with ' (inactive)' while its port is down"),
)

NEIGHBOR6 = struct(
    "Neighbor6",
    Field("device", NAME),
    Field("address", IPV6),
    Field("mac", Optional(MAC)),
    Field("state", Str(max_len=16)),
    Field("queued", U32),
)

PING_REPLY = struct(
    "PingReply",
    Field("seq", U16),
    Field("ok", BOOL),
    Field("rtt_ms", Optional(FLOAT)),
    Field("ttl", Optional(Int(0, 255))),
    Field("size", Optional(U32)),
    Field("error", Optional(Str(max_len=128))),
    Field("src", Optional(IPV4)),
)

PING_RESULT = struct(
    "PingResult",
    Field("dst", IPV4),
    Field("sent", U32),
    Field("received", U32),
    Field("replies", List(PING_REPLY, max_len=10000)),
)

PING6_REPLY = struct(
    "Ping6Reply",
    Field("seq", U16),
    Field("ok", BOOL),
    Field("rtt_ms", Optional(FLOAT)),
    Field("ttl", Optional(Int(0, 255)), doc="the reply's hop limit (named as in IPv4's, as iputils prints it)"),
    Field("size", Optional(U32)),
    Field("error", Optional(Str(max_len=128))),
    Field("src", Optional(IPV6)),
)

PING6_RESULT = struct(
    "Ping6Result",
    Field("dst", IPV6),
    Field("sent", U32),
    Field("received", U32),
    Field("replies", List(PING6_REPLY, max_len=10000)),
)

# 1.4: router mode. What a port advertises in its Router Advertisements (RFC 4861 §6.2.1):
# hosts on its link form addresses in the /64 prefixes (SLAAC) and take the port's link-local
# address as their default router; the port itself no longer takes RAs.
RA_CONFIG = struct(
    "RaConfig",
    Field("port", NAME),
    Field("prefixes", List(IPV6_PREFIX, max_len=16), doc="on-link, autonomous /64s"),
    Field("mtu", Optional(Int(1280, 65535)), doc="the MTU option; absent: none sent"),
    Field("rdnss", List(IPV6, max_len=8), doc="DNS servers (RFC 8106)"),
    Field("dnssl", List(Str(max_len=253), max_len=8), doc="DNS search domains (RFC 8106)"),
    Field("managed", BOOL, doc="M: addresses from DHCPv6"),
    Field("other", BOOL, doc="O: other configuration from DHCPv6"),
    Field("router_lifetime", U16, doc="s; 0: not a default router"),
    Field("advertising", BOOL, doc="false while the port's link-local address is tentative "
                                   "(RAs start once it is preferred)"),
)

STACK_ERRORS = ("not_found", "exists", "no_route", "bad_argument", "no_device", "address_in_use",
                "message_too_long", "busy", "failed")

NETSTACK = Protocol(
    "qnet.netstack", Version(1, 4),
    doc="Control of the network stack: ports, addresses, routes, neighbors, diagnostics. "
        "1.3: IPv6 (addr6_*, route6_*, neigh6_list, ping6, the address6 event, Port.addresses6). "
        "1.4: router mode (ra_set, ra_del, ra_list).",
    methods=(
        Method("port_add", args=(Field("name", NAME), Field("kind", PORT_KIND, default="ethernet"),
                                 Field("mac", Optional(MAC), default=None), Field("mtu", Int(68, 65535), default=1500),
                                 Field("forwarding", BOOL, default=True)),
               result=PORT, errors=STACK_ERRORS, idempotent=True,
               doc="Create a port (or confirm an identical one): its driver attaches by name."),
        Method("port_del", args=(Field("name", NAME),), result=BOOL, errors=STACK_ERRORS, idempotent=True),
        Method("port_set", args=(Field("name", NAME), Field("forwarding", Optional(BOOL), default=None),
                                 Field("mtu", Optional(Int(68, 65535)), default=None),
                                 Field("link", Optional(BOOL), default=None,
                                       doc="administrative link: down keeps the port down whatever the driver reports")),
               result=PORT, errors=STACK_ERRORS, idempotent=True),
        Method("port_list", result=List(PORT, max_len=1024), idempotent=True),
        Method("addr_add", args=(Field("port", NAME), Field("address", IPV4_IFACE)), result=BOOL,
               errors=STACK_ERRORS, idempotent=True, doc="Idempotent: adding a present address is not an error."),
        Method("addr_del", args=(Field("port", NAME), Field("address", IPV4_IFACE)), result=BOOL,
               errors=STACK_ERRORS, idempotent=True),
        Method("route_add", args=(Field("prefix", IPV4_PREFIX), Field("gateway", Optional(IPV4), default=None),
                                  Field("device", Optional(NAME), default=None), Field("metric", U32, default=0),
                                  Field("table", Optional(ROUTE_TABLE), default=None,
                                        doc="1.2: created by its first route; absent: main")),
               result=BOOL, errors=STACK_ERRORS, idempotent=True),
        Method("route_del", args=(Field("prefix", IPV4_PREFIX), Field("gateway", Optional(IPV4), default=None),
                                  Field("device", Optional(NAME), default=None),
                                  Field("table", Optional(ROUTE_TABLE), default=None, doc="1.2: absent: main")),
               result=BOOL, errors=STACK_ERRORS, idempotent=True),
        Method("route_list", args=(Field("table", Optional(Int(0, 252)), default=None,
                                         doc="1.2: absent: main's routes; 0: every table's (Linux's "
                                             "`table all`)"),),
               result=List(ROUTE, max_len=65536), idempotent=True),
        Method("neigh_list", result=List(NEIGHBOR, max_len=65536), idempotent=True),
        Method("stats", result=ANY, idempotent=True, doc="Per-interface and per-protocol counters, table sizes and drops."),
        Method("ping", args=(Field("dst", IPV4), Field("count", Int(1, 10000), default=3),
                             Field("interval", FLOAT, default=1.0), Field("timeout", FLOAT, default=2.0),
                             Field("size", Int(0, 65000), default=56), Field("ttl", Int(1, 255), default=64)),
               result=PING_RESULT, errors=STACK_ERRORS,
               doc="ICMP echo sent by the stack itself; answers when every reply arrived or timed out."),
        Method("addr6_add", args=(Field("port", NAME), Field("address", IPV6_IFACE)), result=BOOL,
               errors=STACK_ERRORS, idempotent=True,
               doc="1.3: an IPv6 address, TENTATIVE until Duplicate Address Detection passes (address6 "
                   "events tell); adding a present address is not an error."),
        Method("addr6_del", args=(Field("port", NAME), Field("address", IPV6_IFACE)), result=BOOL,
               errors=STACK_ERRORS, idempotent=True, doc="1.3: false when it was not there."),
        Method("route6_add", args=(Field("prefix", IPV6_PREFIX), Field("gateway", Optional(IPV6), default=None),
                                   Field("device", Optional(NAME), default=None,
                                         doc="needed with a link-local gateway (its zone)"),
                                   Field("metric", U32, default=0)),
               result=BOOL, errors=STACK_ERRORS, idempotent=True,
               doc="1.3: an IPv6 route; the same route with another metric is replaced."),
        Method("route6_del", args=(Field("prefix", IPV6_PREFIX), Field("gateway", Optional(IPV6), default=None),
                                   Field("device", Optional(NAME), default=None)),
               result=BOOL, errors=STACK_ERRORS, idempotent=True, doc="1.3: false when there was no such route."),
        Method("route6_list", result=List(ROUTE6, max_len=65536), idempotent=True),
        Method("neigh6_list", result=List(NEIGHBOR6, max_len=65536), idempotent=True,
               doc="1.3: the IPv6 neighbor table (Neighbor Discovery, RFC 4861)."),
        Method("ping6", args=(Field("dst", IPV6), Field("count", Int(1, 10000), default=3),
                              Field("interval", FLOAT, default=1.0), Field("timeout", FLOAT, default=2.0),
                              Field("size", Int(0, 65000), default=56), Field("hop_limit", Int(1, 255), default=64),
                              Field("port", Optional(NAME), default=None,
                                    doc="the port to leave by: needed for a link-local destination")),
               result=PING6_RESULT, errors=STACK_ERRORS,
               doc="1.3: ICMPv6 echo sent by the stack itself; answers when every reply arrived or timed out."),
        Method("ra_set", args=(Field("port", NAME),
                               Field("prefixes", List(IPV6_PREFIX, max_len=16), default=[],
                                     doc="/64s; empty: the /64s of the port's global IPv6 addresses now"),
                               Field("mtu", Optional(Int(1280, 65535)), default=None,
                                     doc="at most the port's MTU"),
                               Field("rdnss", List(IPV6, max_len=8), default=[]),
                               Field("dnssl", List(Str(max_len=253), max_len=8), default=[]),
                               Field("managed", BOOL, default=False), Field("other", BOOL, default=False),
                               Field("router_lifetime", U16, default=1800,
                                     doc="0 or 600..65535 s (at least the 600 s between RAs)")),
               result=RA_CONFIG, errors=STACK_ERRORS, idempotent=True,
               doc="1.4: router mode on an Ethernet port: it advertises (RFC 4861 §6.2), answers "
                   "Router Solicitations and takes no RAs; the same configuration again changes "
                   "nothing, another restarts the initial advertisements. Answers what it applied."),
        Method("ra_del", args=(Field("port", NAME),), result=BOOL, errors=STACK_ERRORS, idempotent=True,
               doc="1.4: a final RA with router lifetime 0 (RFC 4861 §6.2.5), then a host again "
                   "(SLAAC from others' RAs); false when the port was not advertising."),
        Method("ra_list", result=List(RA_CONFIG, max_len=1024), idempotent=True,
               doc="1.4: every port in router mode."),
        Method("capture_start", args=(Field("port", NAME), Field("path", Str(max_len=4096)),
                                      Field("max_frames", U32, default=0)),
               result=BOOL, errors=STACK_ERRORS, doc="Write every frame crossing the port to a pcap file."),
        Method("capture_stop", args=(Field("port", NAME),), result=U32, errors=STACK_ERRORS,
               doc="Stop a capture; returns the number of frames written."),
    ),
    events=(
        Event("port", (Field("port", NAME), Field("up", BOOL), Field("attached", BOOL)),
              doc="A port's link or driver changed."),
        Event("address", (Field("port", NAME), Field("address", IPV4_IFACE), Field("present", BOOL))),
        Event("conflict", (Field("port", NAME), Field("address", IPV4), Field("mac", MAC))),
        Event("address6", (Field("port", NAME), Field("address", IPV6_IFACE), Field("state", ADDRESS6_STATE),
                           Field("present", BOOL)),
              doc="1.3: an IPv6 address came, went (present false, its last state) or changed state: "
                  "DAD passed (PREFERRED) or found another node holding it (DUPLICATE)."),
        Event("started", (Field("incarnation", U32), Field("restored", BOOL)),
              doc="A netstack incarnation became active; owners of configuration re-assert theirs."),
    ),
)

# One received or sent datagram in a frame of the datagram streams (layout since 1.3, for
# either IP version): a fixed little-endian head, the addresses (4 bytes each for IPv4, 16 for
# IPv6, in network order as on the wire; the head's family byte says which), the device name
# (UTF-8, its length in the head), then the payload. Frames carry no layout mark: the 1.2
# layout (4-byte addresses in the head) is no longer read, because both ends are netstack and
# components/netstack/dgram_client.py, run from one tree and restarted together. A frame too
# short for its head, addresses or device name, whose family is neither 4 nor 6, or (send)
# whose family is not its socket's, is counted and dropped.
#   recv: sid u32, family u8, src port u16, dst port u16, device length u8; src, dst, device
#   send: sid u32, family u8, dst port u16, device length u8 (0: no device); dst, device
DATAGRAM_RECV_HEAD = struct_.Struct("<IBHHB")        # 10 bytes, then the two addresses
DATAGRAM_SEND_HEAD = struct_.Struct("<IBHB")         # 8 bytes, then the destination

DATAGRAM = Protocol(
    "qnet.datagram", Version(1, 3),
    doc="UDP sockets for components inside the graph (dhcpd). Data arrives on the 'recv' stream.",
    methods=(
        Method("open", args=(Field("owner", NAME, doc="channel identity that receives the datagrams"),
                             Field("port", U16), Field("address", Optional(IPV4), default=None),
                             Field("device", Optional(NAME), default=None), Field("broadcast", BOOL, default=False)),
               result=U32, errors=STACK_ERRORS,
               doc="Bind a socket (port 0: ephemeral); its datagrams go to the caller's channel identity."),
        Method("close", args=(Field("sid", U32),), result=BOOL, errors=STACK_ERRORS, idempotent=True),
        Method("sendto", args=(Field("sid", U32), Field("payload", Bytes(max_len=65507)),
                               Field("address", IPV4), Field("port", U16),
                               Field("device", Optional(NAME), default=None)),
               result=BOOL, errors=STACK_ERRORS),
        Method("sockets", result=ANY, idempotent=True),
    ),
    streams=(
        Stream("recv", "to_user", max_batch=1024, max_frame=65535 + 512,
               doc="datagrams for the user's sockets (layout since 1.3): head <IBHHB (sid, family 4|6, "
                   "sport, dport, device name length), src and dst (4 or 16 bytes each, network "
                   "order), device name, payload"),
        Stream("send", "to_provider", max_batch=1024, max_frame=65535 + 512,
               doc="datagrams to send without waiting for an answer (since 1.1; layout since 1.3): "
                   "head <IBHB (sid, family 4|6, dport, device name length, 0 for none), dst (4 or "
                   "16 bytes), device name, payload; failures are counted, not answered"),
    ),
    events=(
        Event("hello", (Field("owner", NAME),),
              doc="user -> netstack on connect, so that datagrams can be routed to this identity."),
    ),
)


# -- TCP for clients: control here, payload bytes on byte channels (real file descriptors) --
CHANNEL = Str(max_len=32, min_len=1, pattern=r"^[A-Za-z0-9_.\-]+$", label="channel")

TCP_ERRORS = ("refused", "reset", "timed_out", "address_in_use", "address_not_available",
              "not_found", "would_block", "bad_argument", "no_route", "limit", "not_connected",
              "busy", "failed", "no_channel")

# 1.3: IPv6. Addresses of either version; a connection accepted by an IPv6 listener over
# IPv4 (dual stack), or opened to an IPv4-mapped address, shows IPv4-mapped addresses
# (::ffff:a.b.c.d), as Linux shows it to an AF_INET6 socket.
TCP_FAMILY = Enum("Family", ("ipv4", "ipv6"))
TCP_SCOPE = Int(0, 0xFFFF)      # an ifindex (qnet.udp's numbering: 1-based, lo is 1); 0: none

TCP_CONN = struct(
    "TcpConn",
    Field("conn", U32, doc="the connection's id at netstack"),
    Field("local", IP), Field("local_port", U16),
    Field("remote", IP), Field("remote_port", U16),
    Field("scope_id", TCP_SCOPE, default=0, doc="1.3: the link of link-local addresses"),
)

TCP_LISTENER = struct(
    "TcpListener",
    Field("listener", U32), Field("address", Optional(IP)), Field("port", U16),
    Field("backlog", U32),
    Field("channel", Optional(CHANNEL), default=None, doc="1.1: its readiness channel, if any"),
    Field("family", TCP_FAMILY, default="ipv4", doc="1.3"),
)

# 1.1: ttl (IP_TTL, 1..255) and tos (IP_TOS, 0..255; the ECN bits stay TCP's and are cleared).
TCP_OPTION = Enum("TcpOption", ("nodelay", "keepalive", "keepidle", "keepintvl", "keepcnt",
                                "ttl", "tos"))

TCP = Protocol(
    "qnet.tcp", Version(1, 3),
    doc="TCP for clients. A connection's bytes never travel here: each connection has a byte "
        "channel, an AF_UNIX stream socket whose one end the client holds (asked of the "
        "launcher's broker, RUN/channels.sock, as {\"streams\": \"qnet.tcp\", \"count\": N}) and whose "
        "other end netstack serves. A client's read is a kernel read; EOF on it means the "
        "peer's FIN, or an end that `status` names (reset, timed_out). 1.1: a listener may "
        "have a readiness channel (listen's `channel`): netstack writes a byte to it when "
        "its accept queue becomes non-empty and after an accept that leaves it non-empty, "
        "keeping at most one unread; the client reads the bytes away before accept(wait=0). "
        "EOF from the client on it closes the listener; close_listener closes it (EOF). "
        "1.3: IPv6 (listen's family; dual stack on :: unless v6only), IPv4-mapped addresses, "
        "scopes of link-local addresses.",
    methods=(
        Method("listen", args=(Field("port", U16), Field("address", Optional(IP), default=None),
                               Field("backlog", Int(1, 65535), default=128),
                               Field("owner", Str(max_len=64), default=""),
                               Field("channel", Optional(CHANNEL), default=None,
                                     doc="1.1: a fresh byte channel made the listener's readiness "
                                         "channel (readable while a connection waits)"),
                               Field("family", TCP_FAMILY, default="ipv4",
                                     doc="1.3: ipv6: an IPv6 listener (address None: ::)"),
                               Field("v6only", BOOL, default=False,
                                     doc="1.3: IPV6_V6ONLY; off, an IPv6 listener on :: also "
                                         "accepts IPv4 (shown IPv4-mapped), as Linux's default")),
               result=TCP_LISTENER, errors=TCP_ERRORS,
               doc="Listen on address:port (every local address without one)."),
        Method("accept", args=(Field("listener", U32), Field("channel", CHANNEL),
                               Field("wait", FLOAT, default=0.0,
                                     doc="seconds to wait for a connection; 0: would_block at once"),
                               Field("owner", Str(max_len=64), default="",
                                     doc="who holds the channel (shown by `qnet ss`)")),
               result=TCP_CONN, errors=TCP_ERRORS,
               doc="The next established connection, served on the given (fresh) byte channel."),
        Method("connect", args=(Field("channel", CHANNEL),
                                Field("address", IP, doc="1.3: either version; an IPv4-mapped "
                                                         "one connects over IPv4"),
                                Field("port", U16),
                                Field("local_address", Optional(IP), default=None),
                                Field("local_port", U16, default=0),
                                Field("timeout", FLOAT, default=0.0,
                                      doc="seconds; 0: until the handshake succeeds or fails (SYN retries)"),
                                Field("owner", Str(max_len=64), default="",
                                      doc="who holds the channel (shown by `qnet ss`)"),
                                Field("marks", List(U32, max_len=4), default=(),
                                      doc="1.2: the socket's marks, domains 1..4 in order: the "
                                          "connection's conntrack entry takes them with its SYN"),
                                Field("scope_id", TCP_SCOPE, default=0,
                                      doc="1.3: a link-local destination's link (sin6_scope_id)")),
               result=TCP_CONN, errors=TCP_ERRORS,
               doc="Open a connection served on the given (fresh) byte channel; answers once established."),
        Method("close_listener", args=(Field("listener", U32),), result=BOOL, errors=TCP_ERRORS,
               idempotent=True),
        Method("shutdown", args=(Field("conn", U32), Field("how", Enum("Shut", ("read", "write", "both")))),
               result=BOOL, errors=TCP_ERRORS,
               doc="write: FIN after what the channel holds (as closing the channel's write side does)."),
        Method("abort", args=(Field("conn", U32),), result=BOOL, errors=TCP_ERRORS, idempotent=True,
               doc="Reset the connection at once (SO_LINGER 0 then close)."),
        Method("set_option", args=(Field("conn", U32), Field("name", TCP_OPTION), Field("value", Int(0, 1 << 31))),
               result=BOOL, errors=TCP_ERRORS),
        Method("set_congestion", args=(Field("conn", U32), Field("name", Enum("Congestion", ("cubic", "newreno")))),
               result=BOOL, errors=TCP_ERRORS, doc="TCP_CONGESTION: CUBIC (the default) or NewReno."),
        Method("info", args=(Field("conn", U32),), result=ANY, errors=TCP_ERRORS, idempotent=True,
               doc="Like Linux's TCP_INFO: state, rtt, rttvar, cwnd, ssthresh, retransmits, queues..."),
        Method("status", args=(Field("channel", CHANNEL),), result=Str(max_len=32), errors=TCP_ERRORS,
               idempotent=True,
               doc="What a byte channel's connection is: connecting, established, peer_closed, closed, "
                   "reset, refused, timed_out, or unknown (never bound, or lost in a crash: reset)."),
        Method("list", result=ANY, idempotent=True,
               doc="Every connection and listener, for `qnet ss`."),
    ),
    byte_channels=True,
)
