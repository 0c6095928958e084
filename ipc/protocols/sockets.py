"""The socket provider's interface (qnet.socket): the control plane of the socket API.

Applications (the `qnet.socket` library) reach the provider over an AF_UNIX SOCK_SEQPACKET
socket, RUN/sockets.sock, not over ZeroMQ: the provider must know each client by its
credentials (SO_PEERCRED) and must hand it file descriptors (SCM_RIGHTS), and neither
crosses a ZeroMQ socket. The calls and their arguments are declared here like every other
protocol and validated on arrival against this declaration.

One message each way per call:

    request  MessagePack [id, method, args]   args: the method's arguments as a map,
                                             encoded on its own (bin), validated here
    reply    MessagePack [id, 0, result]      with any fds attached (SCM_RIGHTS)
             MessagePack [id, 1, {"code": ERRNO NAME, "message": TEXT}]

A request with id 0 is not answered (close: the application does not wait for it). Errors
are Linux errno names ("ECONNREFUSED"), which the library raises as OSError with that errno.

No byte of payload crosses this socket: a TCP socket's fd is one end of a netstack byte
channel (qnet.tcp), a UDP socket's one end of a per-socket datagram channel (qnet.udp).
"""
from ..decl import Method, Protocol, Version
from ..types import ANY, BOOL, FLOAT, Enum, Field, Int, Optional, Str, U16

KIND = Enum("SocketKind", ("tcp", "udp"))
FAMILY = Enum("Family", ("ipv4", "ipv6"))
SOCK = Str(max_len=32, min_len=1, pattern=r"^[A-Za-z0-9_.\-]+$", label="socket")
HOST = Str(max_len=64, label="IP address")     # numeric, of the socket's family
SCOPE = Int(0, 0xFFFF)      # sin6_scope_id: netstack's ifindex of a link-local address's link

# Every errno a call may answer with (Linux's names).
ERRNOS = ("EACCES", "EPERM", "EADDRINUSE", "EADDRNOTAVAIL", "EAFNOSUPPORT", "EAGAIN", "EALREADY",
          "EBADF", "ECONNREFUSED", "ECONNRESET", "EDESTADDRREQ", "EHOSTUNREACH", "EINPROGRESS",
          "EINVAL", "EISCONN", "EMFILE", "ENETUNREACH", "ENOBUFS", "ENOPROTOOPT", "ENOTCONN",
          "EOPNOTSUPP", "EPIPE", "ETIMEDOUT", "EIO", "ENETDOWN")

OPTION_VALUE = Int(-(1 << 31), (1 << 31) - 1)

SOCKET = Protocol(
    "qnet.socket", Version(1, 1),
    doc="The socket API's control plane for applications (the qnet.socket library), served on "
        "RUN/sockets.sock (AF_UNIX SOCK_SEQPACKET, SO_PEERCRED identity, fds by SCM_RIGHTS). "
        "Sockets are named by their channel id; payload never travels here. 1.1: AF_INET6 "
        "sockets (socket's family; addresses of it, scopes, IPV6_V6ONLY as v6only).",
    methods=(
        Method("socket", args=(Field("kind", KIND), Field("family", FAMILY, default="ipv4")),
               result=ANY, errors=ERRNOS,
               doc="A new socket: {sock}, its fd attached (a byte channel for tcp, a datagram "
                   "channel for udp). Counted against the client's socket limit."),
        Method("bind", args=(Field("sock", SOCK), Field("kind", KIND), Field("address", HOST),
                             Field("port", U16), Field("reuse_address", BOOL, default=False),
                             Field("reuse_port", BOOL, default=False),
                             Field("broadcast", BOOL, default=False),
                             Field("scope_id", SCOPE, default=0), Field("v6only", BOOL, default=False)),
               result=ANY, errors=ERRNOS,
               doc="{address, port, scope_id}: port 0 picks an ephemeral port; below 1024 needs "
                   "the grant."),
        Method("listen", args=(Field("sock", SOCK), Field("address", HOST), Field("port", U16),
                               Field("backlog", Int(0, 65535), default=128),
                               Field("options", ANY, default=None),
                               Field("v6only", BOOL, default=False)),
               result=ANY, errors=ERRNOS,
               doc="{listener, address, port}; the socket's fd becomes readable while a "
                   "connection waits in the accept queue."),
        Method("accept", args=(Field("sock", SOCK),), result=ANY, errors=ERRNOS,
               doc="The next waiting connection, {sock, local, local_port, remote, remote_port} "
                   "with its fd attached; EAGAIN when none waits."),
        Method("connect", args=(Field("sock", SOCK), Field("kind", KIND), Field("address", HOST),
                                Field("port", U16), Field("local_address", Optional(HOST), default=None),
                                Field("local_port", U16, default=0),
                                Field("timeout", FLOAT, default=0.0,
                                      doc="seconds; 0: until the handshake succeeds or fails"),
                                Field("nonblocking", BOOL, default=False,
                                      doc="answer EINPROGRESS at once; connect_result tells the end"),
                                Field("options", ANY, default=None),
                                Field("scope_id", SCOPE, default=0), Field("v6only", BOOL, default=False)),
               result=ANY, errors=ERRNOS,
               doc="tcp: {local, local_port, remote, remote_port} once established; udp: sets "
                   "the default destination."),
        Method("connect_result", args=(Field("sock", SOCK), Field("wait", FLOAT, default=0.0)),
               result=ANY, errors=ERRNOS,
               doc="The end of a connect: its result, its errno, or EINPROGRESS when it is still "
                   "under way after `wait` seconds. Safe to repeat (after a provider restart too)."),
        Method("shutdown", args=(Field("sock", SOCK), Field("how", Enum("How", ("read", "write", "both")))),
               result=BOOL, errors=ERRNOS),
        Method("close", args=(Field("sock", SOCK), Field("abort", BOOL, default=False,
                                                          doc="SO_LINGER with a zero timeout: reset")),
               result=BOOL, errors=ERRNOS, idempotent=True),
        Method("setsockopt", args=(Field("sock", SOCK), Field("level", Int(0, 65535)),
                                   Field("name", Int(0, 65535)), Field("value", ANY)),
               result=BOOL, errors=ERRNOS,
               doc="The options that reach netstack (TCP_NODELAY, keepalive, IP_TTL, IP_TOS, "
                   "TCP_CONGESTION, SO_BROADCAST...) and the grants (SO_MARK)."),
        Method("getsockopt", args=(Field("sock", SOCK), Field("level", Int(0, 65535)),
                                   Field("name", Int(0, 65535))),
               result=ANY, errors=ERRNOS, idempotent=True,
               doc="The options netstack knows (TCP_INFO as Linux's struct tcp_info bytes, SO_ERROR)."),
        Method("status", result=ANY, idempotent=True,
               doc="This client: its credentials, grants, limits and sockets."),
        Method("resolver", result=ANY, idempotent=True,
               doc="DNS servers and search domain for the client's resolver: the manifest's, then "
                   "those of the uplinks' DHCP leases."),
    ),
)
